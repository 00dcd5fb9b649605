use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use cache_core::ErrorClass;

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
    /// [`hard_timeout`](crate::TieredCacheBuilder::hard_timeout).
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

    /// What kind of failure this is: a tier's class (timeout, unavailable,
    /// out of memory, auth, ...), [`Timeout`](ErrorClass::Timeout) for a
    /// loader that ran out of time, [`Loader`](ErrorClass::Loader) for one
    /// that failed or panicked.
    pub fn class(&self) -> ErrorClass {
        match self {
            Error::Cache(error) => error.class(),
            Error::LoaderTimeout(_) => ErrorClass::Timeout,
            Error::Loader(_) | Error::LoaderPanicked => ErrorClass::Loader,
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

/// What [`try_get_or_compute`](crate::TieredCache::try_get_or_compute) fails
/// with: the loader's own error, typed, or the cache's.
#[derive(Debug, thiserror::Error)]
pub enum LoadError<E> {
    /// The loader failed. Every caller that waited on the same load gets
    /// the same `Arc` (as moka's `try_get_with` hands out). Nothing was cached.
    #[error("loader failed: {0}")]
    Loader(Arc<E>),
    /// Anything else: a tier that fails closed, the loader timing out or
    /// panicking, or a load shared with a caller whose loader has another
    /// error type (its error then arrives as [`Error::Loader`]).
    #[error(transparent)]
    Cache(Error),
}

impl<E> LoadError<E> {
    /// What kind of failure this is: [`Loader`](ErrorClass::Loader) for
    /// the loader's own error, else the cache error's class.
    pub fn class(&self) -> ErrorClass {
        match self {
            LoadError::Loader(_) => ErrorClass::Loader,
            LoadError::Cache(error) => error.class(),
        }
    }
}

impl<E> Clone for LoadError<E> {
    fn clone(&self) -> Self {
        match self {
            LoadError::Loader(error) => LoadError::Loader(error.clone()),
            LoadError::Cache(error) => LoadError::Cache(error.clone()),
        }
    }
}

/// A typed loader's error on its way through the untyped flight: found
/// again by type on the other side.
pub(crate) struct Typed<E>(pub(crate) Arc<E>);

impl<E: fmt::Debug> fmt::Debug for Typed<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<E: fmt::Display> fmt::Display for Typed<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<E: std::error::Error> std::error::Error for Typed<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

impl<E: std::error::Error + Send + Sync + 'static> LoadError<E> {
    /// Sorts a cache error: a loader error of type `E` becomes typed.
    pub(crate) fn sort(error: Error) -> Self {
        if let Error::Loader(source) = &error
            && let Some(typed) = source.downcast_ref::<Typed<E>>()
        {
            return LoadError::Loader(typed.0.clone());
        }
        LoadError::Cache(error)
    }
}
