//! Throwaway redis-server processes (standalone, primary + replica, cluster).
