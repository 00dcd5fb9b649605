//! Test helpers shared by the workspace's tests. Never published.
//!
//! - [`model`]: the reference model property tests compare caches against;
//! - [`layers`]: layers whose timing a test controls;
//! - [`redis`]: throwaway `redis-server` processes on free ports;
//! - [`ctx`]: call contexts for calling a layer directly;
//! - [`policy`]: driving a failure policy by hand;
//! - [`trace`]: a `tracing` subscriber that keeps spans and warnings;
//! - [`bench`](mod@bench): the value the benchmarks cache, and where results go.

pub mod bench;
pub mod layers;
pub mod model;
pub mod policy;
pub mod redis;
pub mod trace;

/// Contexts for calling a layer directly in a test, on the system clock.
pub mod ctx {
    use cache_core::{CallContext, Operation};

    /// A read's context.
    pub fn read() -> CallContext<'static> {
        CallContext::system(Operation::Read)
    }

    /// A write's context.
    pub fn write() -> CallContext<'static> {
        CallContext::system(Operation::Write)
    }

    /// A removal's context.
    pub fn remove() -> CallContext<'static> {
        CallContext::system(Operation::Remove)
    }
}
