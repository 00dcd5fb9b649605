//! The error of [`CircuitBreaker::call`](crate::CircuitBreaker::call).

/// Why a call through [`CircuitBreaker::call`](crate::CircuitBreaker::call)
/// returned no value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BreakerError<E> {
    /// The breaker is open (or half-open with every trial slot taken): the
    /// call was not made.
    ///
    /// Serve a fallback, or retry after the breaker's recovery timeout.
    #[error("the circuit breaker is open; the call was not made")]
    Rejected,
    /// The call was made and failed with this error.
    #[error(transparent)]
    Inner(E),
}

impl<E> BreakerError<E> {
    /// Whether the breaker refused the call without making it.
    pub fn is_rejected(&self) -> bool {
        matches!(self, BreakerError::Rejected)
    }

    /// The inner error, if the call was made.
    pub fn into_inner(self) -> Option<E> {
        match self {
            BreakerError::Rejected => None,
            BreakerError::Inner(error) => Some(error),
        }
    }
}

impl BreakerError<cache_core::Error> {
    /// What kind of failure this is: [`Unavailable`](cache_core::ErrorClass::Unavailable)
    /// for a rejected call, else the call's error's class.
    pub fn class(&self) -> cache_core::ErrorClass {
        match self {
            BreakerError::Rejected => cache_core::ErrorClass::Unavailable,
            BreakerError::Inner(error) => error.class(),
        }
    }
}
