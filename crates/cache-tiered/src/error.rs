use std::sync::Arc;
use std::time::Duration;

/// What a [`TieredCache`](crate::TieredCache) call can fail with.
///
/// Cheap to clone, so a loader failure reaches every caller that waited on it.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A tier failed and its [`FailurePolicy`](cache_core::FailurePolicy)
    /// chose to fail closed, or a value could not be serialized.
    ///
    /// Fail open (`FailOpen`, or a circuit breaker) to treat an unhealthy
    /// tier as a miss instead.
    #[error(transparent)]
    Cache(#[from] cache_core::Error),
    /// The loader of [`get_or_compute`](crate::TieredCache::get_or_compute)
    /// failed. Nothing was cached; the next call runs the loader again.
    #[error("loader failed: {0}")]
    Loader(Arc<dyn std::error::Error + Send + Sync>),
    /// The loader did not finish within the configured
    /// [`loader_timeout`](crate::TieredCacheBuilder::loader_timeout).
    #[error("loader did not finish within {0:?}")]
    LoaderTimeout(Duration),
    /// The loader panicked. The callers that waited on it get this error at
    /// once; the panic itself resumes in the caller that ran the loader.
    #[error("loader panicked")]
    LoaderPanicked,
}

impl Error {
    /// Whether the loader failed or timed out (as opposed to a tier).
    pub fn is_loader(&self) -> bool {
        matches!(
            self,
            Error::Loader(_) | Error::LoaderTimeout(_) | Error::LoaderPanicked
        )
    }

    /// The class of a tier's failure (timeout, unavailable, refused input,
    /// ...); `None` for a loader's failure.
    pub fn class(&self) -> Option<cache_core::ErrorClass> {
        match self {
            Error::Cache(error) => Some(error.class()),
            _ => None,
        }
    }

    /// Whether a tier refused the input (a value over its size limit, a
    /// value that would not serialize): returned whatever the tier's
    /// failure policy, since it says nothing about the tier's health.
    pub fn is_refusal(&self) -> bool {
        matches!(self, Error::Cache(error) if error.is_refusal())
    }
}

/// A convenient alias for results of [`TieredCache`](crate::TieredCache) calls.
pub type Result<T, E = Error> = std::result::Result<T, E>;
