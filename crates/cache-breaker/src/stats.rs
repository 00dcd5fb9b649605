//! The breaker's counters.

use cache_core::Counter;

use crate::StateKind;

/// A snapshot of a breaker's counters, from
/// [`CircuitBreaker::stats`](crate::CircuitBreaker::stats).
///
/// Every counter counts from the breaker's creation. An admitted call ends
/// as exactly one of a success, a failure, a refusal or an abandonment, and
/// is counted when it ends: `calls == successes + failures + refusals +
/// abandoned`, and calls still in flight are in none of them.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BreakerStats {
    /// The state when the snapshot was taken.
    pub state: StateKind,
    /// Admitted calls that have ended (the sum of the next four counters;
    /// calls still in flight are not counted yet).
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
    pub(crate) successes: Counter,
    pub(crate) failures: Counter,
    pub(crate) slow_calls: Counter,
    pub(crate) refusals: Counter,
    pub(crate) abandoned: Counter,
    pub(crate) rejections: Counter,
    pub(crate) state_changes: Counter,
    pub(crate) opens: Counter,
}

impl Counters {
    pub(crate) fn snapshot(&self, state: StateKind) -> BreakerStats {
        // One counter bump per call on the hot path: `calls` is derived.
        let successes = self.successes.get();
        let failures = self.failures.get();
        let refusals = self.refusals.get();
        let abandoned = self.abandoned.get();
        BreakerStats {
            state,
            calls: successes + failures + refusals + abandoned,
            successes,
            failures,
            slow_calls: self.slow_calls.get(),
            refusals,
            abandoned,
            rejections: self.rejections.get(),
            state_changes: self.state_changes.get(),
        }
    }
}
