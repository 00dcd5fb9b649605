//! Test helpers shared by the workspace's tests. Never published.
//!
//! - [`model`]: the reference model property tests compare caches against;
//! - [`layers`]: layers whose timing a test controls;
//! - [`redis`]: throwaway `redis-server` processes on free ports.

pub mod layers;
pub mod model;
pub mod redis;
