use std::sync::Arc;

/// What building rules or invalidating can fail with.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A rule's or a family's template does not parse or contradicts
    /// another declaration: a dependent uses a hole its trigger does not
    /// have, or constrains it otherwise; a family has not exactly one
    /// hole, leaves its id ambiguous (the reason says which constraint to
    /// add), is declared twice, or cannot take the ids a rule gives it.
    /// The reason says what to change.
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
    /// The invalidator cannot be built as configured (see the message).
    #[error("invalid invalidator configuration: {0}")]
    Config(Arc<str>),
    /// A tier that fails closed failed. Whatever the other tiers could do
    /// was done, and the other instances were told; calling again is safe.
    #[error(transparent)]
    Cache(#[from] cache_tiered::Error),
}

impl Error {
    /// What kind of failure this is: [`Config`](cache_core::ErrorClass::Config)
    /// for a bad rule, [`RefusedInput`](cache_core::ErrorClass::RefusedInput)
    /// for a key whose rules reach too far, else the cache's class.
    pub fn class(&self) -> cache_core::ErrorClass {
        match self {
            Error::Template { .. } | Error::Config(_) => cache_core::ErrorClass::Config,
            Error::TooManyPatterns { .. } => cache_core::ErrorClass::RefusedInput,
            Error::Cache(error) => error.class(),
        }
    }
}

impl Error {
    pub(crate) fn config(reason: &str) -> Error {
        Error::Config(reason.into())
    }
}

/// A convenient alias for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
