//! What a composer does when a layer fails.

use std::fmt;
use std::time::Duration;

use crate::{Error, LastError, Operation};

/// The policy's mark on an admitted call, handed back to it with the
/// call's outcome.
///
/// What it holds is the policy's business (a circuit breaker keeps the state
/// generation it admitted the call under, so that a late outcome is never
/// credited to a later state, as tower keeps readiness with the call).
/// Policies that keep no state use [`Ticket::NONE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Ticket(u64);

impl Ticket {
    /// The ticket of a policy that keeps no per-call state.
    pub const NONE: Ticket = Ticket(0);

    /// A ticket holding `value`, for a policy's own use.
    pub const fn new(value: u64) -> Self {
        Ticket(value)
    }

    /// The value the policy put in.
    pub const fn get(self) -> u64 {
        self.0
    }
}

/// Whether a call may go to a layer now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Make the call, and hand the ticket back with its outcome.
    Allow(Ticket),
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
    /// The layer failed or timed out. The error's
    /// [`class`](Error::class) says whether it tells anything about the
    /// layer's health ([`ErrorClass::affects_health`](crate::ErrorClass::affects_health)).
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
    /// Fail open: a failed read is a miss, a failed write is skipped (and
    /// reported as skipped). The failure is still counted in the tier's stats.
    Ignore,
    /// Fail closed: return the error to the caller.
    Propagate,
}

/// Decides what a composer does when a call to one tier fails or times out.
///
/// The composer asks [`admit`](FailurePolicy::admit) before each call with
/// the call's [`Operation`], reports how the call ended through
/// [`record`](FailurePolicy::record) with the ticket it was admitted with
/// (exactly once for every admitted call, even when the caller is
/// cancelled), and asks [`on_failure`](FailurePolicy::on_failure) what to
/// do with an error. Every method but `on_failure` has a default, so a
/// plain policy is one method; [`FailOpen`] and [`FailClosed`] are the two
/// simple ones, and the `cache-breaker` crate provides a circuit breaker.
///
/// A refused input ([`ErrorClass::RefusedInput`](crate::ErrorClass::RefusedInput):
/// a value too large) is returned to the caller whatever `on_failure` says:
/// it describes the input, not the tier's health.
///
/// The policy sits on the hot path of every tier call: keep `admit` and
/// `record` cheap (no locks when healthy).
pub trait FailurePolicy: Send + Sync + fmt::Debug {
    /// Whether a call of kind `operation` may go to the layer now.
    /// Default: always, with [`Ticket::NONE`].
    fn admit(&self, operation: Operation) -> Admission {
        let _ = operation;
        Admission::Allow(Ticket::NONE)
    }

    /// How a call admitted with `ticket` ended. Default: ignored.
    fn record(&self, operation: Operation, ticket: Ticket, outcome: CallOutcome<'_>) {
        let _ = (operation, ticket, outcome);
    }

    /// What to do with a failed or rejected call of kind `operation`.
    fn on_failure(&self, operation: Operation, error: &Error) -> FailureAction;

    /// Whether this policy uses [`admit`](FailurePolicy::admit) and
    /// [`record`](FailurePolicy::record). A policy that returns `false` is
    /// only asked `on_failure`, which spares every call two clock reads.
    /// Default: `true`.
    fn observes_calls(&self) -> bool {
        true
    }

    /// The state of the policy's circuits, for stats and health checks: a
    /// circuit breaker reports itself, a tier's breaker pair reports two.
    /// Default: none (a policy without state).
    fn circuits(&self) -> Vec<CircuitStatus> {
        Vec::new()
    }
}

/// Where a circuit breaker is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CircuitState {
    /// Calls go through.
    Closed,
    /// Calls are rejected without being tried.
    Open,
    /// A few trial calls go through.
    HalfOpen,
}

impl CircuitState {
    /// A lowercase name for logs and metrics: `closed`, `open`, `half_open`.
    pub fn as_str(self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::Open => "open",
            CircuitState::HalfOpen => "half_open",
        }
    }
}

impl fmt::Display for CircuitState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One circuit of a [`FailurePolicy`], as [`FailurePolicy::circuits`]
/// reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CircuitStatus {
    /// The circuit's name (a tier breaker's two are `<name>/reads` and
    /// `<name>/writes`).
    pub name: String,
    /// Where it is now.
    pub state: CircuitState,
    /// Times it opened since it was made.
    pub opened: u64,
    /// Calls it rejected.
    pub rejections: u64,
    /// The last failure it counted, if any: why it opened, when it is open.
    pub last_error: Option<LastError>,
}

impl CircuitStatus {
    /// A circuit named `name` in `state`, with nothing counted yet.
    pub fn new(name: impl Into<String>, state: CircuitState) -> Self {
        CircuitStatus {
            name: name.into(),
            state,
            opened: 0,
            rejections: 0,
            last_error: None,
        }
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

    fn on_failure(&self, _operation: Operation, _error: &Error) -> FailureAction {
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

    fn on_failure(&self, _operation: Operation, _error: &Error) -> FailureAction {
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
        let read = Operation::Read;
        assert_eq!(FailOpen.on_failure(read, &error), FailureAction::Ignore);
        assert_eq!(
            FailClosed.on_failure(read, &error),
            FailureAction::Propagate
        );
        assert_eq!(FailOpen.admit(read), Admission::Allow(Ticket::NONE));
    }
}
