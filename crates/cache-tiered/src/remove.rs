//! Removing: keys and patterns, from every tier or the local ones, with a
//! report of what each tier did.

use std::fmt;

use cache_core::{Pattern, Serializer};

use crate::tier::Call;
use crate::{Result, Tier, TieredCache};

/// What a removal removes, and from which tiers. Build it with
/// [`Removal::key`], [`Removal::keys`] or [`Removal::pattern`], then narrow
/// it with [`local`](Removal::local).
///
/// ```
/// use cache_core::{Pattern, escape};
/// use cache_tiered::Removal;
///
/// let one = Removal::key("offer:7");
/// let pages = Pattern::new(format!("reviews:offer:{}:*", escape("7")));
/// // What an instance does when another one tells it of a removal: the
/// // sender has already cleared the shared tiers.
/// let local = Removal::pattern(&pages).local();
/// # let _ = (one, local);
/// ```
#[derive(Debug, Clone, Copy)]
#[must_use]
pub struct Removal<'a> {
    target: Target<'a>,
    local: bool,
}

#[derive(Debug, Clone, Copy)]
enum Target<'a> {
    Keys(&'a [&'a str]),
    Key(&'a str),
    Pattern(&'a Pattern),
}

impl<'a> Removal<'a> {
    /// Removes `key`.
    pub fn key(key: &'a str) -> Self {
        Removal {
            target: Target::Key(key),
            local: false,
        }
    }

    /// Removes every key of `keys`, with one call per tier.
    pub fn keys(keys: &'a [&'a str]) -> Self {
        Removal {
            target: Target::Keys(keys),
            local: false,
        }
    }

    /// Removes every key matching `pattern`. Build patterns from user input
    /// with [`cache_core::escape`].
    pub fn pattern(pattern: &'a Pattern) -> Self {
        Removal {
            target: Target::Pattern(pattern),
            local: false,
        }
    }

    /// Only from the tiers this process alone sees: those whose layer is
    /// not [shared](cache_core::CacheLayer::is_shared). For an instance that
    /// learns of another instance's removal, which cleared the shared tiers
    /// already.
    pub fn local(mut self) -> Self {
        self.local = true;
        self
    }
}

/// What a removal did.
///
/// A tier that failed and fails open was *skipped*: the call still
/// succeeds (the other tiers were cleared), but the value may still be in
/// the skipped tier, and may come back from it. Check
/// [`is_complete`](Removed::is_complete) when that matters, and retry (as
/// `cache-invalidation`'s queue does) until it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Removed {
    /// The most keys one tier removed (for one key: 1 if any tier held it).
    pub removed: u64,
    /// Per tier reached, top first: its name and how many keys it removed,
    /// `None` if it was skipped.
    pub tiers: Vec<(String, Option<u64>)>,
}

impl Removed {
    /// Whether any tier held what was removed.
    pub fn found(&self) -> bool {
        self.removed > 0
    }

    /// Whether every tier reached did the removal (none was skipped).
    pub fn is_complete(&self) -> bool {
        self.tiers.iter().all(|(_, removed)| removed.is_some())
    }

    /// The names of the tiers that were skipped.
    pub fn skipped(&self) -> impl Iterator<Item = &str> {
        self.tiers
            .iter()
            .filter(|(_, removed)| removed.is_none())
            .map(|(name, _)| name.as_str())
    }
}

impl fmt::Display for Removed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "removed {}", self.removed)?;
        for (name, removed) in &self.tiers {
            match removed {
                Some(count) => write!(f, "; {name}: {count}")?,
                None => write!(f, "; {name}: skipped")?,
            }
        }
        Ok(())
    }
}

impl<S: Serializer> TieredCache<S> {
    /// Removes `key` from every tier. Shorthand for
    /// [`remove(Removal::key(key))`](Self::remove).
    pub async fn delete(&self, key: &str) -> Result<Removed> {
        self.remove(Removal::key(key)).await
    }

    /// Removes every key matching `pattern` from every tier. Shorthand for
    /// [`remove(Removal::pattern(pattern))`](Self::remove).
    ///
    /// Build patterns from user input with [`cache_core::escape`].
    pub async fn invalidate(&self, pattern: &Pattern) -> Result<Removed> {
        self.remove(Removal::pattern(pattern)).await
    }

    /// Removes keys or a pattern from the tiers `removal` names, lowest
    /// (shared) tier first, so no upper tier can refill from a copy about
    /// to go; and, while it runs, no fill of an affected key in this
    /// process can put an old value back.
    ///
    /// Fails if a tier that fails closed fails (after every tier was
    /// tried); a tier that fails open is skipped and reported in
    /// [`Removed::tiers`].
    pub async fn remove(&self, removal: Removal<'_>) -> Result<Removed> {
        let shared = &*self.shared;
        let clock = &*shared.clock;
        let _mutations: Vec<_> = match removal.target {
            Target::Key(key) => vec![shared.guard.mutate(key)],
            Target::Keys(keys) => keys.iter().map(|key| shared.guard.mutate(key)).collect(),
            Target::Pattern(_) => vec![shared.guard.mutate_all()],
        };
        let mut report = Removed::default();
        let mut first_error = None;
        let tiers = shared
            .tiers
            .iter()
            .rev()
            .filter(|tier: &&Tier| !removal.local || !tier.layer.is_shared());
        for tier in tiers {
            let outcome = match removal.target {
                Target::Key(key) => tier.delete_many(clock, &[key]).await,
                Target::Keys([]) => Call::Done(0),
                Target::Keys(keys) => tier.delete_many(clock, keys).await,
                Target::Pattern(pattern) => tier.invalidate(clock, pattern).await,
            };
            let removed = match outcome {
                Call::Done(count) => Some(count),
                Call::FailedOpen => None,
                Call::Failed(error) => {
                    first_error.get_or_insert(error);
                    None
                }
            };
            report.removed = report.removed.max(removed.unwrap_or(0));
            report.tiers.push((tier.name().to_owned(), removed));
        }
        report.tiers.reverse();
        match first_error {
            Some(error) => Err(error.into()),
            None => Ok(report),
        }
    }
}
