//! The error every layer returns.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::Operation;

/// A convenient alias for results of layer calls.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What kind of failure an [`Error`] is, whatever crate or backend it came
/// from. Policies, breakers, logs and stats decide from the class rather
/// than from backend types: a full server ([`OutOfMemory`](ErrorClass::OutOfMemory))
/// or a refused input is not a dead one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorClass {
    /// The call ran out of time (a hung or overloaded backend).
    Timeout,
    /// The backend could not be reached, or the call was not attempted
    /// (connection refused or dropped, an open breaker, a closed pool).
    Unavailable,
    /// The backend is healthy but refused this input (a value over the size
    /// limit, a value that would not serialize). Always returned to the
    /// caller, whatever the tier's failure policy.
    RefusedInput,
    /// The backend is full and refuses writes (Redis `OOM` at `maxmemory`);
    /// reads still work.
    OutOfMemory,
    /// The backend only accepts reads (a Redis replica, or a primary that
    /// was demoted).
    ReadOnly,
    /// The backend refused the credentials or the permission (Redis
    /// `NOAUTH`, `WRONGPASS`, `NOPERM`): a configuration problem.
    Auth,
    /// Stored bytes did not parse.
    Corrupt,
    /// The cache is misconfigured.
    Config,
    /// A fill the layer did not store because the key was written or
    /// removed after the value was read or loaded ([`Error::Superseded`]).
    /// Not a failure.
    Superseded,
    /// The caller's loader failed or panicked (a `get_or_compute` whose
    /// source of truth failed): not a cache failure at all.
    Loader,
    /// Any other backend failure (an unexpected server error, I/O).
    Other,
}

impl ErrorClass {
    /// Every class, in declaration order.
    pub const ALL: [ErrorClass; 11] = [
        ErrorClass::Timeout,
        ErrorClass::Unavailable,
        ErrorClass::RefusedInput,
        ErrorClass::OutOfMemory,
        ErrorClass::ReadOnly,
        ErrorClass::Auth,
        ErrorClass::Corrupt,
        ErrorClass::Config,
        ErrorClass::Superseded,
        ErrorClass::Loader,
        ErrorClass::Other,
    ];

    /// The class's position in [`ALL`](Self::ALL).
    pub(crate) const fn index(self) -> usize {
        self as usize
    }

    /// Whether an error of this class says the backend is unhealthy, so a
    /// circuit breaker should count it. Refused input, a full or read-only
    /// server and corrupt bytes do not: the same backend answers other
    /// calls (reads, smaller values) fine.
    pub fn affects_health(self) -> bool {
        matches!(
            self,
            ErrorClass::Timeout | ErrorClass::Unavailable | ErrorClass::Auth | ErrorClass::Other
        )
    }

    /// A short lowercase name for logs and metrics labels (`"timeout"`).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Timeout => "timeout",
            ErrorClass::Unavailable => "unavailable",
            ErrorClass::RefusedInput => "refused_input",
            ErrorClass::OutOfMemory => "out_of_memory",
            ErrorClass::ReadOnly => "read_only",
            ErrorClass::Auth => "auth",
            ErrorClass::Corrupt => "corrupt",
            ErrorClass::Config => "config",
            ErrorClass::Superseded => "superseded",
            ErrorClass::Loader => "loader",
            ErrorClass::Other => "other",
        }
    }
}

impl std::fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What went wrong in a cache layer.
///
/// Cheap to clone (sources sit behind `Arc`), so one failure can be handed to
/// every caller waiting on it. Every error has an [`ErrorClass`]
/// ([`class`](Error::class)); a [`FailurePolicy`](crate::FailurePolicy)
/// decides from it rather than from backend types.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The backend failed (connection refused or dropped, server error, I/O,
    /// a full or read-only server, refused credentials); `class` says which.
    ///
    /// Check that the server is reachable and the credentials are right; a
    /// `FailurePolicy` that fails open turns these into misses.
    #[error("cache layer `{layer}` failed ({class}): {source}")]
    Backend {
        /// The layer that failed.
        layer: Arc<str>,
        /// What kind of failure it is.
        class: ErrorClass,
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
    /// A fill ([`CallContext::with_fill_since`](crate::CallContext::with_fill_since))
    /// that the layer did not store: the key was written or removed after
    /// the read or load the value came from began, possibly by another
    /// process. Not a failure of the layer: a composer stops filling the
    /// tiers above, so the superseded value is cached nowhere.
    #[error("cache layer `{layer}` kept a newer write or removal instead of a fill")]
    Superseded {
        /// The layer that refused the fill.
        layer: Arc<str>,
    },
}

impl Error {
    /// Wraps a backend error for `layer`, of class [`ErrorClass::Other`].
    pub fn backend(
        layer: impl Into<Arc<str>>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self::classified(layer, ErrorClass::Other, source)
    }

    /// Wraps a backend error for `layer` whose class the backend knows
    /// (for example [`ErrorClass::OutOfMemory`] for a Redis `OOM` reply).
    pub fn classified(
        layer: impl Into<Arc<str>>,
        class: ErrorClass,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Error::Backend {
            layer: layer.into(),
            class,
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
            | Error::ValueTooLarge { layer, .. }
            | Error::Superseded { layer } => Some(layer),
            Error::Serialize { .. } | Error::Config(_) => None,
        }
    }

    /// What kind of failure this is.
    pub fn class(&self) -> ErrorClass {
        match self {
            Error::Backend { class, .. } => *class,
            Error::Timeout { .. } => ErrorClass::Timeout,
            Error::Unavailable { .. } => ErrorClass::Unavailable,
            Error::ValueTooLarge { .. } | Error::Serialize { .. } => ErrorClass::RefusedInput,
            Error::Config(_) => ErrorClass::Config,
            Error::Superseded { .. } => ErrorClass::Superseded,
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
        self.class() == ErrorClass::RefusedInput
    }

    /// Whether this is a fill the layer did not store because something
    /// newer is under the key ([`Error::Superseded`]).
    pub fn is_superseded(&self) -> bool {
        matches!(self, Error::Superseded { .. })
    }
}

/// The last failure a tier or a circuit breaker saw: for stats, health
/// checks and the operator reading them.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LastError {
    /// What kind of failure it was.
    pub class: ErrorClass,
    /// The error as displayed (the backend's words and the node, never a
    /// password).
    pub message: String,
    /// The kind of call that failed, where the recorder knew it.
    pub operation: Option<Operation>,
    /// When it failed, by the system clock.
    pub at: SystemTime,
}

impl LastError {
    /// `error`, from a call of kind `operation` if known, failing now.
    pub fn new(operation: Option<Operation>, error: &Error) -> Self {
        Self::at(operation, error, SystemTime::now())
    }

    fn at(operation: Option<Operation>, error: &Error, at: SystemTime) -> Self {
        LastError {
            class: error.class(),
            message: error.to_string(),
            operation,
            at,
        }
    }
}

impl std::fmt::Display for LastError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.operation {
            Some(operation) => write!(f, "{} ({}, {operation})", self.message, self.class),
            None => write!(f, "{} ({})", self.message, self.class),
        }
    }
}

/// Keeps the last error seen, for [`LastError`] snapshots. Setting it takes
/// a lock and clones an `Arc`: for failure paths, not for every call.
#[derive(Debug, Default)]
pub struct LastErrorCell(Mutex<Option<(Error, Option<Operation>, SystemTime)>>);

impl LastErrorCell {
    /// Keeps `error`, from a call of kind `operation` if known, as the
    /// last one.
    pub fn set(&self, operation: Option<Operation>, error: &Error) {
        let entry = (error.clone(), operation, SystemTime::now());
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(entry);
    }

    /// The last error kept, if any.
    pub fn get(&self) -> Option<LastError> {
        let guard = self.0.lock().unwrap_or_else(|p| p.into_inner());
        guard
            .as_ref()
            .map(|(error, operation, at)| LastError::at(*operation, error, *at))
    }
}
