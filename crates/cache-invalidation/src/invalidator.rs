//! `Invalidator`: dependency rules applied across the tiers of a cache.

use std::fmt;
use std::sync::Arc;

use cache_core::{Counter, Pattern, Postcard, Serializer};
use cache_tiered::{Removal, Removed, TieredCache};
use tracing::Instrument;

use crate::rules::Expansion;
use crate::{Result, Rules};

/// Invalidates keys with their dependents in every tier of a
/// [`TieredCache`], and, through the cache's
/// [backplane](cache_tiered::TieredCacheBuilder::backplane), in the local
/// tiers of every other instance.
///
/// [`invalidate_key`](Self::invalidate_key) removes a key and, following
/// the [`Rules`], every key that depends on it, as one removal: from every
/// tier, then in one backplane message, so that another instance never
/// applies half of it. What the cache does with a removal applies: with
/// its [invalidation queue](cache_tiered::TieredCacheBuilder::invalidation_queue),
/// what a failing tier or backplane missed is retried in the background,
/// and the report says so ([`Removed::is_deferred`]).
///
/// A wildcard dependent goes by a scan of the shared tier for matching
/// keys (Redis `SCAN`), unless it is written as one of the rules'
/// [families](crate::RulesBuilder::family) and the cache stamps them
/// ([`TieredCacheBuilder::key_families`](cache_tiered::TieredCacheBuilder::key_families)
/// with [`Rules::families`]): then it goes by removing the family's
/// version, a single key, in the same removal and the same message. On a
/// cache that does not stamp the rules' families, every wildcard dependent
/// is scanned (and [`new`](Self::new) logs a warning).
///
/// ```
/// use std::time::Duration;
/// use cache_invalidation::{Invalidator, Rules};
/// use cache_memory::MemoryLayer;
/// use cache_tiered::{MemoryBackplane, TieredCache};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let cache = TieredCache::builder()
///     .layer(MemoryLayer::new())
///     .backplane(MemoryBackplane::default()) // RedisBackplane across processes
///     .invalidation_queue(10_000)
///     .build_async()
///     .await?;
/// let rules = Rules::builder()
///     .rule("reviews:offer:{id}", ["reviews:offer:{id}:*", "rating:offer:{id}"])
///     .build()?;
/// let invalidator = Invalidator::new(cache.clone(), rules);
///
/// let ttl = Duration::from_secs(300);
/// cache.set("reviews:offer:7:page:0", &vec!["great"], ttl).await?;
/// cache.set("rating:offer:7", &4.5f32, ttl).await?;
/// cache.set("rating:offer:8", &3.0f32, ttl).await?;
///
/// let invalidated = invalidator.invalidate_key("reviews:offer:7").await?;
/// assert!(invalidated.report.is_complete());
/// assert_eq!(cache.get::<Vec<String>>("reviews:offer:7:page:0").await?, None);
/// assert_eq!(cache.get::<f32>("rating:offer:7").await?, None);
/// assert_eq!(cache.get::<f32>("rating:offer:8").await?, Some(3.0));
/// # Ok(())
/// # }
/// ```
pub struct Invalidator<S: Serializer = Postcard> {
    inner: Arc<Inner<S>>,
}

impl<S: Serializer> Clone for Invalidator<S> {
    fn clone(&self) -> Self {
        Invalidator {
            inner: self.inner.clone(),
        }
    }
}

struct Inner<S: Serializer> {
    cache: TieredCache<S>,
    rules: Rules,
    /// Whether the cache stamps the rules' families: only then may a
    /// dependent go by its family's version.
    families: bool,
    invalidations: Counter,
    patterns: Counter,
    by_family: Counter,
    scans: Counter,
}

impl<S: Serializer> fmt::Debug for Invalidator<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Invalidator")
            .field("cache", &self.inner.cache)
            .field("rules", &self.inner.rules)
            .field("families", &self.inner.families)
            .finish_non_exhaustive()
    }
}

/// Counters of an [`Invalidator`]. What its removals did to the backplane
/// and the invalidation queue is counted by the cache
/// ([`TieredStats::backplane`](cache_tiered::TieredStats::backplane),
/// [`TieredStats::queue`](cache_tiered::TieredStats::queue)).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct InvalidatorStats {
    /// Calls to `invalidate_key`, `invalidate` and `invalidate_tag`.
    pub invalidations: u64,
    /// Keys, patterns and tags those calls removed (dependents included).
    pub patterns: u64,
    /// Wildcard dependents removed by removing their family's version
    /// (one key each, no scan).
    pub by_family: u64,
    /// Wildcard patterns removed by scanning the tiers for matching keys
    /// (dependents not written as a family, and [`Invalidator::invalidate`]).
    pub scans: u64,
}

/// What one invalidation removed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Invalidated {
    /// The key (or pattern) itself, then its dependents.
    pub patterns: Vec<Pattern>,
    /// The dependents (among `patterns`) that went by removing their
    /// family's version instead of a scan.
    pub by_family: Vec<Pattern>,
    /// What the cache did: per tier, whether the other instances were
    /// told, and whether what did not land was
    /// [deferred](Removed::is_deferred).
    pub report: Removed,
}

impl<S: Serializer> Invalidator<S> {
    /// Applies `rules` to `cache`. Keep one per cache for the life of the
    /// process (it is cheap to clone).
    ///
    /// The rules' families are used only if the cache stamps them (it was
    /// built with [`Rules::families`] of the same declarations): a family
    /// whose values are not stamped would leave them in place.
    pub fn new(cache: TieredCache<S>, rules: Rules) -> Self {
        let families = rules.families();
        let stamped = !families.is_empty()
            && cache
                .key_families()
                .is_some_and(|installed| families.same_as(&**installed));
        if !families.is_empty() && !stamped {
            tracing::warn!(
                ?families,
                "the cache does not stamp these rules' key families \
                 (TieredCacheBuilder::key_families(rules.families())): \
                 their dependents are scanned instead"
            );
        }
        Invalidator {
            inner: Arc::new(Inner {
                cache,
                rules,
                families: stamped,
                invalidations: Counter::default(),
                patterns: Counter::default(),
                by_family: Counter::default(),
                scans: Counter::default(),
            }),
        }
    }

    /// Whether wildcard dependents written as a family go by it (the cache
    /// stamps the rules' families), rather than by a scan.
    pub fn uses_families(&self) -> bool {
        self.inner.families
    }

    /// Removes `key` and every key that depends on it (by the rules) from
    /// every tier, as one removal (see [`TieredCache::remove`]); with a
    /// backplane, one message tells the other instances.
    ///
    /// Fails, before removing anything, when the rules reach more than
    /// their limit of patterns; and as the cache's removal fails (a tier
    /// that fails closed).
    pub async fn invalidate_key(&self, key: &str) -> Result<Invalidated> {
        let expansion = self.inner.rules.expansion(key)?;
        self.remove(expansion).await
    }

    /// Removes every key matching `pattern` from every tier, and tells the
    /// other instances. Rules are not applied: they follow keys, and a
    /// pattern names no key.
    pub async fn invalidate(&self, pattern: &Pattern) -> Result<Invalidated> {
        let expansion = Expansion {
            patterns: vec![pattern.clone()],
            by_family: vec![false],
        };
        self.remove(expansion).await
    }

    /// Makes every value tagged with `tag` a miss, on every instance:
    /// [`TieredCache::invalidate_tag`], counted here.
    pub async fn invalidate_tag(&self, tag: &str) -> Result<Removed> {
        self.count(1);
        Ok(self.inner.cache.invalidate_tag(tag).await?)
    }

    /// The rules this invalidator follows.
    pub fn rules(&self) -> &Rules {
        &self.inner.rules
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> InvalidatorStats {
        InvalidatorStats {
            invalidations: self.inner.invalidations.get(),
            patterns: self.inner.patterns.get(),
            by_family: self.inner.by_family.get(),
            scans: self.inner.scans.get(),
        }
    }

    async fn remove(&self, expansion: Expansion) -> Result<Invalidated> {
        let Expansion {
            patterns,
            by_family,
        } = expansion;
        self.count(patterns.len());
        // What the cache removes: keys and scanned patterns as they are, a
        // family by its version (named by the family's pattern).
        let cache = &self.inner.cache;
        let mut targets = Vec::with_capacity(patterns.len());
        let mut families = Vec::new();
        for (pattern, family) in patterns.iter().zip(by_family) {
            if family && self.inner.families {
                targets.push(Pattern::exact(&cache.tag_key(pattern.as_str())));
                families.push(pattern.clone());
            } else {
                if pattern.literal().is_none() {
                    self.inner.scans.incr();
                }
                targets.push(pattern.clone());
            }
        }
        self.inner.by_family.add(families.len() as u64);
        // Patterns are not recorded: built from keys, they hold user data.
        let span = tracing::debug_span!(
            "cache.invalidate",
            patterns = patterns.len(),
            removed = tracing::field::Empty,
        );
        let report = self
            .inner
            .cache
            .remove(Removal::patterns(&targets))
            .instrument(span.clone())
            .await?;
        span.record("removed", report.removed);
        Ok(Invalidated {
            patterns,
            by_family: families,
            report,
        })
    }

    fn count(&self, patterns: usize) {
        self.inner.invalidations.incr();
        self.inner.patterns.add(patterns as u64);
    }
}
