//! `TierBreaker`: one breaker for a tier's reads, one for its writes.

use std::fmt;
use std::sync::Arc;

use cache_core::{
    Admission, CallOutcome, CircuitStatus, Error, FailureAction, FailurePolicy, Operation, Ticket,
};

use crate::CircuitBreaker;

/// The guard of one cache tier: a [`CircuitBreaker`] for its reads and one
/// for its writes and removals, built with the same settings by
/// [`Builder::build_for_tier`](crate::Builder::build_for_tier).
///
/// Reads and writes fail apart more often than one would think: a Redis
/// whose primary died still answers reads from its replicas, and a full
/// one still answers reads while refusing writes. With one breaker for
/// both, failing writes would open it and turn every read into a miss;
/// with a `TierBreaker` only the writes are skipped.
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use cache_breaker::CircuitBreaker;
/// use cache_core::{Admission, CallOutcome, Error, FailurePolicy, Operation};
///
/// let breaker = CircuitBreaker::builder().name("redis").failure_threshold(2).build_for_tier()?;
/// let down = Error::timeout("redis", Duration::from_millis(50));
/// for _ in 0..2 {
///     let Admission::Allow(ticket) = breaker.admit(Operation::Write) else { unreachable!() };
///     breaker.record(Operation::Write, ticket, CallOutcome::Failure { elapsed: Duration::ZERO, error: &down });
/// }
/// assert_eq!(breaker.admit(Operation::Write), Admission::Reject);
/// assert!(matches!(breaker.admit(Operation::Read), Admission::Allow(_)));
/// # Ok::<(), cache_core::Error>(())
/// ```
pub struct TierBreaker {
    name: Arc<str>,
    reads: CircuitBreaker,
    writes: CircuitBreaker,
}

impl TierBreaker {
    pub(crate) fn from_parts(
        name: Arc<str>,
        reads: CircuitBreaker,
        writes: CircuitBreaker,
    ) -> Self {
        TierBreaker {
            name,
            reads,
            writes,
        }
    }

    /// The name given with [`Builder::name`](crate::Builder::name).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The breaker of the tier's reads.
    pub fn reads(&self) -> &CircuitBreaker {
        &self.reads
    }

    /// The breaker of the tier's writes and removals.
    pub fn writes(&self) -> &CircuitBreaker {
        &self.writes
    }

    /// The breaker that judges calls of kind `operation`.
    pub fn for_operation(&self, operation: Operation) -> &CircuitBreaker {
        match operation {
            Operation::Read => &self.reads,
            Operation::Write | Operation::Remove => &self.writes,
        }
    }

    /// Closes both breakers at once (see [`CircuitBreaker::reset`]).
    pub fn reset(&self) {
        self.reads.reset();
        self.writes.reset();
    }
}

impl FailurePolicy for TierBreaker {
    #[inline]
    fn admit(&self, operation: Operation) -> Admission {
        self.for_operation(operation).admit(operation)
    }

    #[inline]
    fn record(&self, operation: Operation, ticket: Ticket, outcome: CallOutcome<'_>) {
        self.for_operation(operation)
            .record(operation, ticket, outcome);
    }

    fn on_failure(&self, operation: Operation, error: &Error) -> FailureAction {
        self.for_operation(operation).on_failure(operation, error)
    }

    /// Two circuits: `<name>/reads` and `<name>/writes`.
    fn circuits(&self) -> Vec<CircuitStatus> {
        vec![self.reads.status(), self.writes.status()]
    }
}

impl fmt::Debug for TierBreaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TierBreaker")
            .field("name", &self.name)
            .field("reads", &self.reads.state())
            .field("writes", &self.writes.state())
            .finish()
    }
}
