//! The breaker's counters.

use cache_core::Counter;

use crate::StateKind;

/// A snapshot of a breaker's counters, from
/// [`CircuitBreaker::stats`](crate::CircuitBreaker::stats).
///
/// Every counter counts from the breaker's creation. An admitted call ends
/// as exactly one of a success, a failure, a refusal or an abandonment, so
/// once no call is in flight
/// `calls == successes + failures + refusals + abandoned`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BreakerStats {
    /// The state when the snapshot was taken.
    pub state: StateKind,
    /// Calls admitted (let through to the guarded call).
    pub calls: u64,
    /// Admitted calls that succeeded in time.
    pub successes: u64,
    /// Admitted calls that failed, slow calls included.
    pub failures: u64,
    /// Of the failures, calls that answered but took longer than the slow-call
    /// duration.
    pub slow_calls: u64,
    /// Admitted calls that ended in a refusal ([`cache_core::Error::is_refusal`]
    /// or an error the call's classifier did not count): neither a success
    /// nor a failure.
    pub refusals: u64,
    /// Admitted calls whose caller went away before they ended.
    pub abandoned: u64,
    /// Calls refused because the breaker was open or out of trial slots.
    pub rejections: u64,
    /// State changes (closed to open, open to half-open, ...).
    pub state_changes: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) calls: Counter,
    pub(crate) successes: Counter,
    pub(crate) failures: Counter,
    pub(crate) slow_calls: Counter,
    pub(crate) refusals: Counter,
    pub(crate) abandoned: Counter,
    pub(crate) rejections: Counter,
    pub(crate) state_changes: Counter,
}

impl Counters {
    pub(crate) fn snapshot(&self, state: StateKind) -> BreakerStats {
        BreakerStats {
            state,
            calls: self.calls.get(),
            successes: self.successes.get(),
            failures: self.failures.get(),
            slow_calls: self.slow_calls.get(),
            refusals: self.refusals.get(),
            abandoned: self.abandoned.get(),
            rejections: self.rejections.get(),
            state_changes: self.state_changes.get(),
        }
    }
}
