//! Removing: keys and patterns, from every tier or the local ones, with a
//! report of what each tier did; then the news to the other instances, and
//! what did not land to the invalidation queue.

use std::fmt;
use std::sync::LazyLock;
use std::time::Duration;

use cache_core::{Invalidation, Pattern, Serializer};
use tracing::Instrument;

use crate::observe::key_field;
use crate::queue::Retry;
use crate::tier::Call;
use crate::{Result, Tier, TieredCache};

/// What a removal removes, and from which tiers. Build it with
/// [`Removal::key`], [`Removal::keys`], [`Removal::pattern`] or
/// [`Removal::patterns`], then narrow it with [`local`](Removal::local).
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
    Patterns(&'a [Pattern]),
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

    /// Removes every key matching any of `patterns`, as one removal: one
    /// backplane message names them all, so another instance never applies
    /// half of them. A pattern without wildcards is removed as a key (one
    /// batched delete per tier for all of them).
    ///
    /// ```
    /// use cache_core::{Pattern, escape};
    /// use cache_tiered::Removal;
    ///
    /// let id = escape("42");
    /// let patterns = [
    ///     Pattern::new(format!("reviews:offer:{id}:*")),
    ///     Pattern::exact(&format!("rating:offer:{id}")),
    /// ];
    /// let removal = Removal::patterns(&patterns);
    /// # let _ = removal;
    /// ```
    pub fn patterns(patterns: &'a [Pattern]) -> Self {
        Removal {
            target: Target::Patterns(patterns),
            local: false,
        }
    }

    /// What the removal names, for its span: keys hashed unless `raw`
    /// (patterns too: they hold the same user data).
    fn describe(&self, raw: bool) -> String {
        match self.target {
            Target::Key(key) => format!("key {}", key_field(key, raw)),
            Target::Keys(keys) => format!("{} keys", keys.len()),
            Target::Pattern(pattern) => format!("pattern {}", key_field(pattern.as_str(), raw)),
            Target::Patterns(patterns) => format!("{} patterns", patterns.len()),
        }
    }

    /// Only from the tiers this process alone sees: those whose layer is
    /// not [shared](cache_core::CacheLayer::is_shared), and without telling
    /// the other instances. For an instance that learns of another
    /// instance's removal, which cleared the shared tiers already.
    pub fn local(mut self) -> Self {
        self.local = true;
        self
    }
}

/// What a removal did.
///
/// A tier that failed and fails open was *skipped*: the call still
/// succeeds (the other tiers were cleared), but the value may still be in
/// the skipped tier, and may come back from it. With a
/// [backplane](crate::TieredCacheBuilder::backplane), [`broadcast`](Removed::broadcast)
/// says whether the other instances were told. Without the
/// [invalidation queue](crate::TieredCacheBuilder::invalidation_queue),
/// check [`is_complete`](Removed::is_complete) when that matters and retry
/// until it is; with it, what did not land is retried in the background
/// and the report [`is_deferred`](Removed::is_deferred).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Removed {
    /// The most keys one tier removed (for one key: 1 if any tier held it).
    pub removed: u64,
    /// Per tier reached, top first: what it removed and how long it took.
    pub tiers: Vec<TierRemoved>,
    /// Whether the other instances were told.
    pub broadcast: Broadcast,
    /// How long the whole removal took: the tiers, then the publish.
    pub elapsed: Duration,
    deferred: bool,
}

/// What one tier did in a removal.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TierRemoved {
    /// The layer's name.
    pub name: String,
    /// How many keys it removed; `None` if it was skipped (it failed).
    pub removed: Option<u64>,
    /// How long its calls took (a scan of a large Redis, for a pattern).
    pub elapsed: Duration,
}

/// Whether a call's message reached the [backplane](crate::TieredCacheBuilder::backplane).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Broadcast {
    /// Nobody to tell: the cache has no backplane, or the removal was
    /// [`local`](Removal::local).
    #[default]
    Off,
    /// Published: every other instance drops its local copies when the
    /// message reaches it.
    Sent,
    /// The backplane failed: other instances may keep their local copies
    /// until those expire (or until the invalidation queue publishes it).
    Failed,
}

impl Removed {
    /// Whether any tier held what was removed.
    pub fn found(&self) -> bool {
        self.removed > 0
    }

    /// Whether every tier reached did the removal (none was skipped), and
    /// the other instances were told if there is a backplane.
    pub fn is_complete(&self) -> bool {
        self.tiers.iter().all(|tier| tier.removed.is_some()) && self.broadcast != Broadcast::Failed
    }

    /// Whether what did not land (a skipped tier, a failed publish) was
    /// queued, to be retried in the background until it does (see
    /// [`TieredCacheBuilder::invalidation_queue`](crate::TieredCacheBuilder::invalidation_queue)).
    /// Nothing to call again: this instance's local tiers are clean already.
    pub fn is_deferred(&self) -> bool {
        self.deferred
    }

    /// The names of the tiers that were skipped.
    pub fn skipped(&self) -> impl Iterator<Item = &str> {
        self.tiers
            .iter()
            .filter(|tier| tier.removed.is_none())
            .map(|tier| tier.name.as_str())
    }
}

impl fmt::Display for Removed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "removed {} in {:?}", self.removed, self.elapsed)?;
        for tier in &self.tiers {
            match tier.removed {
                Some(count) => write!(f, "; {}: {count} in {:?}", tier.name, tier.elapsed)?,
                None => write!(f, "; {}: skipped after {:?}", tier.name, tier.elapsed)?,
            }
        }
        match self.broadcast {
            Broadcast::Off => {}
            Broadcast::Sent => f.write_str("; published")?,
            Broadcast::Failed => f.write_str("; publish failed")?,
        }
        if self.deferred {
            f.write_str("; deferred")?;
        }
        Ok(())
    }
}

/// What a removal names, as tiers take it: keys (one batch call per tier,
/// each key's stripe of the fill guard) and patterns (one call each, the
/// guard's global stripe).
#[derive(Debug, Default)]
pub(crate) struct Targets<'a> {
    keys: Vec<&'a str>,
    patterns: Vec<&'a Pattern>,
}

/// `*`, what [`Invalidation::All`] removes.
static EVERYTHING: LazyLock<Pattern> = LazyLock::new(|| Pattern::new("*"));

impl<'a> Targets<'a> {
    fn of(removal: &Removal<'a>) -> Self {
        let mut targets = Targets::default();
        match removal.target {
            Target::Key(key) => targets.keys.push(key),
            Target::Keys(keys) => targets.keys.extend_from_slice(keys),
            Target::Pattern(pattern) => targets.patterns.push(pattern),
            Target::Patterns(patterns) => {
                for pattern in patterns {
                    // A key and its dependents: most are keys, deleted in
                    // one batch instead of a scan each.
                    match pattern.literal() {
                        Some(key) => targets.keys.push(key),
                        None => targets.patterns.push(pattern),
                    }
                }
            }
        }
        targets
    }

    pub(crate) fn from_invalidations(invalidations: &'a [Invalidation]) -> Self {
        let mut targets = Targets::default();
        for invalidation in invalidations {
            match invalidation {
                Invalidation::Key(key) => targets.keys.push(key),
                Invalidation::Pattern(pattern) => targets.patterns.push(pattern),
                Invalidation::All => targets.patterns.push(&EVERYTHING),
            }
        }
        targets
    }

    /// The message that tells the other instances.
    fn to_invalidations(&self) -> Vec<Invalidation> {
        let keys = self
            .keys
            .iter()
            .map(|key| Invalidation::Key((*key).to_owned()));
        let patterns = self
            .patterns
            .iter()
            .map(|p| Invalidation::Pattern((*p).clone()));
        keys.chain(patterns).collect()
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

    /// Removes keys or patterns from the tiers `removal` names, lowest
    /// (shared) tier first, so no upper tier can refill from a copy about
    /// to go; and, while it runs, no fill of an affected key in this
    /// process can put an old value back.
    ///
    /// With a [backplane](crate::TieredCacheBuilder::backplane), a removal
    /// that is not [`local`](Removal::local) then publishes one message
    /// naming what it removed, so that every other instance drops it from
    /// its local tiers ([`Removed::broadcast`]); even if a tier failed, as
    /// the other instances' copies must go all the same.
    ///
    /// Fails if a tier that fails closed fails (after every tier was
    /// tried); a tier that fails open is skipped and reported in
    /// [`Removed::tiers`]. With the
    /// [invalidation queue](crate::TieredCacheBuilder::invalidation_queue),
    /// a skipped tier or a failed publish is retried in the background
    /// until it lands, and the call succeeds with
    /// [`Removed::is_deferred`]; an error (a tier that fails closed) is
    /// returned to the caller, not queued.
    pub async fn remove(&self, removal: Removal<'_>) -> Result<Removed> {
        let span = tracing::debug_span!(
            "cache.remove",
            cache = &*self.shared.observe.name,
            target = %removal.describe(self.shared.observe.trace_keys),
            local = removal.local,
            removed = tracing::field::Empty,
            outcome = tracing::field::Empty,
        );
        let started = tokio::time::Instant::now();
        let removed = self.remove_in_span(removal).instrument(span.clone()).await;
        match &removed {
            Ok(report) => {
                span.record("removed", report.removed);
                span.record(
                    "outcome",
                    match (report.is_complete(), report.is_deferred()) {
                        (true, _) => "complete",
                        (false, true) => "deferred",
                        (false, false) => "incomplete",
                    },
                );
            }
            Err(_) => _ = span.record("outcome", "error"),
        }
        removed.map(|mut report| {
            report.elapsed = started.elapsed();
            report
        })
    }

    async fn remove_in_span(&self, removal: Removal<'_>) -> Result<Removed> {
        let shared = &*self.shared;
        let targets = Targets::of(&removal);
        let (mut report, error) = self.remove_from_tiers(&targets, removal.local).await;
        // A removal that a tier skipped is done again, tiers and message.
        let redo = shared.queue.is_some() && !report.is_complete();
        if removal.local || (shared.backplane.is_none() && !redo) {
            return match error {
                Some(error) => Err(error.into()),
                None => Ok(report),
            };
        }
        let invalidations = targets.to_invalidations();
        let mut retry = redo.then(|| Retry::Remove(invalidations.clone()));
        match self.publish(invalidations).await {
            Ok(broadcast) => report.broadcast = broadcast,
            Err(unsent) => {
                report.broadcast = Broadcast::Failed;
                retry.get_or_insert(Retry::Publish(unsent));
            }
        }
        if let Some(error) = error {
            return Err(error.into());
        }
        if let (Some(queue), Some(retry)) = (&shared.queue, retry) {
            queue.push(retry);
            report.deferred = true;
        }
        Ok(report)
    }

    /// Removes `targets` from every tier (or only the local ones), lowest
    /// first, under the fill guard; the first error of a tier that fails
    /// closed comes back beside the report.
    pub(crate) async fn remove_from_tiers(
        &self,
        targets: &Targets<'_>,
        local: bool,
    ) -> (Removed, Option<cache_core::Error>) {
        let shared = &*self.shared;
        let clock = &*shared.clock;
        let mut mutations: Vec<_> = targets
            .keys
            .iter()
            .map(|key| shared.guard.mutate(key))
            .collect();
        if !targets.patterns.is_empty() {
            mutations.push(shared.guard.mutate_all());
        }
        let mut report = Removed::default();
        let mut first_error = None;
        let tiers = shared
            .tiers
            .iter()
            .rev()
            .filter(|tier: &&Tier| !local || !tier.layer.is_shared());
        for tier in tiers {
            let started = tokio::time::Instant::now();
            let mut removed = Some(0);
            if !targets.keys.is_empty() {
                let outcome = tier.delete_many(clock, &targets.keys).await;
                removed = tally(removed, outcome, &mut first_error);
            }
            for pattern in &targets.patterns {
                // A failing tier is skipped anyway: the other patterns would
                // fail too, each costing a timeout, perhaps.
                if removed.is_none() {
                    break;
                }
                let outcome = tier.invalidate(clock, pattern).await;
                removed = tally(removed, outcome, &mut first_error);
            }
            report.removed = report.removed.max(removed.unwrap_or(0));
            report.tiers.push(TierRemoved {
                name: tier.name().to_owned(),
                removed,
                elapsed: started.elapsed(),
            });
        }
        report.tiers.reverse();
        // Before any publishing: fills here need not wait for a round trip.
        drop(mutations);
        (report, first_error)
    }
}

/// Adds one call's outcome to a tier's count: `None` once the tier skipped
/// a call (failed open, or failed with the error kept in `first_error`).
fn tally(
    removed: Option<u64>,
    outcome: Call<u64>,
    first_error: &mut Option<cache_core::Error>,
) -> Option<u64> {
    match outcome {
        Call::Done(count) => removed.map(|sum| sum + count),
        Call::FailedOpen => None,
        Call::Failed(error) => {
            first_error.get_or_insert(error);
            None
        }
    }
}
