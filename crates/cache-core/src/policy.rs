//! What a composer does when a layer fails.

use std::fmt;
use std::time::Duration;

use crate::Error;

/// Whether a call may go to a layer now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Make the call.
    Allow,
    /// Do not call the layer; the composer treats the call as failed with
    /// [`Error::Unavailable`] and then asks [`FailurePolicy::on_failure`].
    Reject,
}

/// How an admitted call ended, reported back to the policy.
#[derive(Debug, Clone, Copy)]
pub enum CallOutcome<'a> {
    /// The layer answered (a hit, a miss or a completed write).
    Success {
        /// How long the call took.
        elapsed: Duration,
    },
    /// The layer failed or timed out.
    Failure {
        /// How long the call took.
        elapsed: Duration,
        /// What went wrong.
        error: &'a Error,
    },
    /// The caller went away before the call finished (its future was
    /// dropped). Nothing is known about the layer's health.
    Abandoned,
}

/// What to do with a failed call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureAction {
    /// Fail open: a failed read is a miss, a failed write is skipped.
    /// The failure is still counted in the tier's stats.
    Ignore,
    /// Fail closed: return the error to the caller.
    Propagate,
}

/// Decides what a composer does when a call to one tier fails or times out.
///
/// The composer asks [`admit`](FailurePolicy::admit) before each call,
/// reports how the call ended through [`record`](FailurePolicy::record)
/// (exactly once for every admitted call, even when the caller is cancelled),
/// and asks [`on_failure`](FailurePolicy::on_failure) what to do with an
/// error. Every method but `on_failure` has a default, so a plain policy is
/// one method; [`FailOpen`] and [`FailClosed`] are the two simple ones, and
/// the `cache-breaker` crate provides a circuit breaker.
///
/// The policy sits on the hot path of every tier call: keep `admit` and
/// `record` cheap (no locks when healthy).
pub trait FailurePolicy: Send + Sync + fmt::Debug {
    /// Whether a call may go to the layer now. Default: always.
    fn admit(&self) -> Admission {
        Admission::Allow
    }

    /// How an admitted call ended. Default: ignored.
    fn record(&self, outcome: CallOutcome<'_>) {
        let _ = outcome;
    }

    /// What to do with a failed or rejected call.
    fn on_failure(&self, error: &Error) -> FailureAction;

    /// Whether this policy uses [`admit`](FailurePolicy::admit) and
    /// [`record`](FailurePolicy::record). A policy that returns `false` is
    /// only asked `on_failure`, which spares every call two clock reads.
    /// Default: `true`.
    fn observes_calls(&self) -> bool {
        true
    }
}

/// Treat a failing tier as a miss and skip writes to it: the cache keeps
/// answering from the other tiers and the loader. The usual choice for a
/// shared remote tier.
#[derive(Debug, Clone, Copy, Default)]
pub struct FailOpen;

impl FailurePolicy for FailOpen {
    fn observes_calls(&self) -> bool {
        false
    }

    fn on_failure(&self, _error: &Error) -> FailureAction {
        FailureAction::Ignore
    }
}

/// Return every failure of the tier to the caller.
#[derive(Debug, Clone, Copy, Default)]
pub struct FailClosed;

impl FailurePolicy for FailClosed {
    fn observes_calls(&self) -> bool {
        false
    }

    fn on_failure(&self, _error: &Error) -> FailureAction {
        FailureAction::Propagate
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn _object_safe(_: Arc<dyn FailurePolicy>) {}

    #[test]
    fn simple_policies() {
        let error = Error::timeout("l2", Duration::from_millis(5));
        assert_eq!(FailOpen.on_failure(&error), FailureAction::Ignore);
        assert_eq!(FailClosed.on_failure(&error), FailureAction::Propagate);
        assert_eq!(FailOpen.admit(), Admission::Allow);
    }
}
