use std::sync::Arc;

/// What building rules or invalidating can fail with.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A rule's template does not parse, or a dependent uses a hole its
    /// trigger does not have.
    #[error("rule template {template:?}: {reason}")]
    Template {
        /// The template as written.
        template: Arc<str>,
        /// What is wrong with it.
        reason: Arc<str>,
    },
    /// Following the rules from `key` reached more patterns than the limit
    /// ([`RulesBuilder::max_patterns`](crate::RulesBuilder::max_patterns)):
    /// nothing was removed.
    #[error("invalidating {key:?} reaches more than {limit} patterns")]
    TooManyPatterns {
        /// The key whose invalidation was asked for.
        key: Arc<str>,
        /// The limit.
        limit: usize,
    },
    /// A tier failed (without an invalidation queue: outside a tokio
    /// runtime). The other patterns were still removed and published.
    #[error(transparent)]
    Cache(#[from] cache_tiered::Error),
    /// The backplane failed (without an invalidation queue): this instance
    /// and the shared tiers dropped the keys, other instances may still hold
    /// them in their local tiers until they expire. Retrying the call is
    /// safe.
    #[error("backplane: {0}")]
    Backplane(cache_core::Error),
    /// The call did not reach every tier or the other instances at once
    /// (`cause` says what failed): this instance's local tiers are clean,
    /// and the rest is queued and retried in the background until it
    /// succeeds (see `InvalidatorStats::pending`). No need to call again.
    #[error("not everywhere yet, retrying in the background: {0}")]
    Deferred(Box<Error>),
}

impl Error {
    /// Whether the invalidation was queued to be retried (see
    /// [`Error::Deferred`]).
    pub fn is_deferred(&self) -> bool {
        matches!(self, Error::Deferred(_))
    }
}

/// A convenient alias for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
