//! The error every layer returns.

use std::sync::Arc;
use std::time::Duration;

/// A convenient alias for results of layer calls.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong in a cache layer.
///
/// Cheap to clone (sources sit behind `Arc`), so one failure can be handed to
/// every caller waiting on it. A [`FailurePolicy`](crate::FailurePolicy)
/// decides from the classifiers ([`is_timeout`](Error::is_timeout),
/// [`is_refusal`](Error::is_refusal), ...) rather than from backend types.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The backend failed (connection refused or dropped, server error, I/O).
    ///
    /// Check that the server is reachable; a `FailurePolicy` that fails open
    /// turns these into misses.
    #[error("cache layer `{layer}` failed: {source}")]
    Backend {
        /// The layer that failed.
        layer: Arc<str>,
        /// What the backend reported.
        #[source]
        source: Arc<dyn std::error::Error + Send + Sync>,
    },
    /// The layer did not answer in time.
    ///
    /// Raise the layer's operation timeout if the backend is slow but healthy.
    #[error("cache layer `{layer}` did not answer within {after:?}")]
    Timeout {
        /// The layer that timed out.
        layer: Arc<str>,
        /// The timeout that ran out.
        after: Duration,
    },
    /// The call was not attempted: the layer is known to be down
    /// (an open circuit breaker, an exhausted pool).
    #[error("cache layer `{layer}` is unavailable: {reason}")]
    Unavailable {
        /// The layer that refused the call.
        layer: Arc<str>,
        /// Why it is unavailable.
        reason: Arc<str>,
    },
    /// The value is larger than the layer accepts; it was not stored.
    ///
    /// Raise the layer's size limit, or cache smaller values.
    #[error("cache layer `{layer}` refused a value of {size} bytes (limit {limit} bytes)")]
    ValueTooLarge {
        /// The layer that refused the value.
        layer: Arc<str>,
        /// The size of the value, as the layer weighs it.
        size: u64,
        /// The largest value the layer accepts.
        limit: u64,
    },
    /// A value could not be turned into bytes.
    ///
    /// The type's `Serialize` implementation failed (postcard, for example,
    /// cannot encode sequences of unknown length).
    #[error("could not serialize a value as {format}: {message}")]
    Serialize {
        /// The serializer's format name.
        format: &'static str,
        /// The serializer's message.
        message: Arc<str>,
    },
    /// A configuration value is invalid; the message says which and why.
    #[error("invalid cache configuration: {0}")]
    Config(Arc<str>),
}

impl Error {
    /// Wraps a backend error for `layer`.
    pub fn backend(
        layer: impl Into<Arc<str>>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Error::Backend {
            layer: layer.into(),
            source: Arc::from(source.into()),
        }
    }

    /// A timeout of `layer` after `after`.
    pub fn timeout(layer: impl Into<Arc<str>>, after: Duration) -> Self {
        Error::Timeout {
            layer: layer.into(),
            after,
        }
    }

    /// `layer` refused the call without trying it.
    pub fn unavailable(layer: impl Into<Arc<str>>, reason: impl Into<Arc<str>>) -> Self {
        Error::Unavailable {
            layer: layer.into(),
            reason: reason.into(),
        }
    }

    /// A configuration error.
    pub fn config(message: impl Into<Arc<str>>) -> Self {
        Error::Config(message.into())
    }

    /// The layer the error comes from, if it comes from one.
    pub fn layer(&self) -> Option<&str> {
        match self {
            Error::Backend { layer, .. }
            | Error::Timeout { layer, .. }
            | Error::Unavailable { layer, .. }
            | Error::ValueTooLarge { layer, .. } => Some(layer),
            Error::Serialize { .. } | Error::Config(_) => None,
        }
    }

    /// Whether the layer ran out of time.
    pub fn is_timeout(&self) -> bool {
        matches!(self, Error::Timeout { .. })
    }

    /// Whether the call was refused without being tried (open breaker).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Error::Unavailable { .. })
    }

    /// Whether the layer is healthy but refused this input (a value too
    /// large, a value that cannot be serialized). Such errors say nothing
    /// about the health of the backend, so circuit breakers ignore them.
    pub fn is_refusal(&self) -> bool {
        matches!(self, Error::ValueTooLarge { .. } | Error::Serialize { .. })
    }
}
