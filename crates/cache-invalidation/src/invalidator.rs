//! `Invalidator`: dependency rules applied across the tiers of a cache.

use std::fmt;
use std::sync::{Arc, Weak};

use cache_core::{Counter, Pattern, Postcard, Serializer};
use cache_tiered::{Removal, Removed, TieredCache};
use tracing::Instrument;

use crate::queue::{Job, Queue};
use crate::rules::Expansion;
use crate::{Error, Priority, PriorityQueue, Result, Rules};

/// The capacity of a priority queue that
/// [`InvalidatorBuilder::defer_dependents`] asks for without a size.
const DEFAULT_QUEUE_CAPACITY: usize = 10_000;

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
    /// The priority queue, if built with one; its worker holds only a
    /// `Weak` on this, so that dropping the last handle ends it.
    queue: Option<PriorityQueue>,
    /// Whether a key's dependents go to the queue rather than inline.
    defer_dependents: bool,
}

impl<S: Serializer> Inner<S> {
    fn new(
        cache: TieredCache<S>,
        rules: Rules,
        queue: Option<PriorityQueue>,
        defer_dependents: bool,
    ) -> Self {
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
        Inner {
            cache,
            rules,
            families: stamped,
            invalidations: Counter::default(),
            patterns: Counter::default(),
            by_family: Counter::default(),
            scans: Counter::default(),
            queue,
            defer_dependents,
        }
    }
}

impl<S: Serializer> Drop for Inner<S> {
    fn drop(&mut self) {
        if let Some(queue) = &self.queue {
            queue.queue.close();
        }
    }
}

/// Builds an [`Invalidator`] with a [`PriorityQueue`]: see
/// [`Invalidator::builder`].
#[must_use]
pub struct InvalidatorBuilder<S: Serializer = Postcard> {
    cache: TieredCache<S>,
    rules: Rules,
    queue: Option<usize>,
    defer_dependents: bool,
}

impl<S: Serializer> fmt::Debug for InvalidatorBuilder<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InvalidatorBuilder")
            .field("rules", &self.rules)
            .field("queue", &self.queue)
            .field("defer_dependents", &self.defer_dependents)
            .finish_non_exhaustive()
    }
}

impl<S: Serializer> InvalidatorBuilder<S> {
    /// Gives the invalidator a [`PriorityQueue`] holding up to `capacity`
    /// invalidations (at least 1), and a worker task applying them.
    /// Without this call, or [`defer_dependents`](Self::defer_dependents),
    /// there is no queue and every invalidation is applied inline.
    pub fn queue(mut self, capacity: usize) -> Self {
        self.queue = Some(capacity.max(1));
        self
    }

    /// Whether [`invalidate_key`](Invalidator::invalidate_key) removes only
    /// the key inline and queues its dependents (by the rules) at
    /// [`Priority::Low`], as the original design did: the call returns
    /// after one removal however many dependents there are, and those go
    /// when nothing more urgent waits. Default: `false` (dependents
    /// removed inline, with the key, as one removal). Implies a queue
    /// (of 10,000 unless [`queue`](Self::queue) says otherwise).
    ///
    /// Until the worker gets to them, the dependents stay readable on
    /// every instance; and if the queue is full when they are queued, they
    /// may be [dropped](crate::Enqueued::Dropped) (counted in
    /// [`QueueStats::dropped`](crate::QueueStats::dropped)) and stay until
    /// they expire. Choose it where a dependent a little stale is
    /// harmless (a rating, a count), not where it would be wrong.
    pub fn defer_dependents(mut self, defer: bool) -> Self {
        self.defer_dependents = defer;
        if defer && self.queue.is_none() {
            self.queue = Some(DEFAULT_QUEUE_CAPACITY);
        }
        self
    }

    /// The invalidator. With a queue, its worker task is spawned on the
    /// current Tokio runtime: call this within one (else an
    /// [`Error::Config`]).
    pub fn build(self) -> Result<Invalidator<S>> {
        let runtime = match self.queue {
            Some(_) => Some(tokio::runtime::Handle::try_current().map_err(|_| {
                Error::config(
                    "an invalidator with a queue spawns its worker on the current Tokio \
                     runtime: build it within one",
                )
            })?),
            None => None,
        };
        let queue = self.queue.map(|capacity| PriorityQueue {
            queue: Arc::new(Queue::new(capacity)),
        });
        let inner = Arc::new(Inner::new(
            self.cache,
            self.rules,
            queue.clone(),
            self.defer_dependents,
        ));
        if let (Some(queue), Some(runtime)) = (queue, runtime) {
            runtime.spawn(work(Arc::downgrade(&inner), queue.queue));
        }
        Ok(Invalidator { inner })
    }
}

/// The queue's worker: applies what it takes off the queue, one at a time,
/// until the invalidator is gone.
async fn work<S: Serializer>(invalidator: Weak<Inner<S>>, queue: Arc<Queue>) {
    while let Some(waiting) = queue.next().await {
        // Held only while applying: an idle worker keeps nothing alive.
        let Some(inner) = invalidator.upgrade() else {
            break;
        };
        let invalidator = Invalidator { inner };
        let applied = match &waiting.job {
            Job::Key(key) => invalidator.invalidate_key(key).await.map(drop),
            Job::Pattern(pattern) => invalidator.invalidate(pattern).await.map(drop),
            Job::Family(family) => invalidator
                .remove(Expansion {
                    patterns: vec![family.clone()],
                    by_family: vec![true],
                })
                .await
                .map(drop),
        };
        if let Err(error) = &applied {
            tracing::warn!(
                class = ?error.class(),
                error = %error,
                "a queued invalidation failed; the values it would remove stay until they expire"
            );
        }
        queue.settle(&waiting, applied.is_ok());
    }
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
    /// The key (or pattern) itself, then its dependents: what was removed.
    pub patterns: Vec<Pattern>,
    /// The dependents (among `patterns`) that went by removing their
    /// family's version instead of a scan.
    pub by_family: Vec<Pattern>,
    /// Dependents handed to the [`PriorityQueue`] at [`Priority::Low`]
    /// rather than removed ([`InvalidatorBuilder::defer_dependents`]);
    /// those the queue dropped, full, are not here.
    pub queued: Vec<Pattern>,
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
        Invalidator {
            inner: Arc::new(Inner::new(cache, rules, None, false)),
        }
    }

    /// An invalidator of `cache` following `rules`, with options: a
    /// [`PriorityQueue`] of invalidations applied in the background, and
    /// whether a key's dependents go to it.
    ///
    /// ```
    /// use cache_invalidation::{Invalidator, Rules};
    /// use cache_memory::MemoryLayer;
    /// use cache_tiered::TieredCache;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cache = TieredCache::builder().layer(MemoryLayer::new()).build()?;
    /// let rules = Rules::builder()
    ///     .rule("reviews:offer:{id}", ["reviews:offer:{id}:*", "rating:offer:{id}"])
    ///     .build()?;
    /// let invalidator = Invalidator::builder(cache, rules)
    ///     .defer_dependents(true) // the key now, its dependents in the background
    ///     .build()?;
    /// let invalidated = invalidator.invalidate_key("reviews:offer:7").await?;
    /// assert_eq!(invalidated.patterns.len(), 1);
    /// assert_eq!(invalidated.queued.len(), 2);
    /// invalidator.queue().unwrap().flush().await;
    /// # Ok(())
    /// # }
    /// ```
    pub fn builder(cache: TieredCache<S>, rules: Rules) -> InvalidatorBuilder<S> {
        InvalidatorBuilder {
            cache,
            rules,
            queue: None,
            defer_dependents: false,
        }
    }

    /// The priority queue, if the invalidator was built with one.
    pub fn queue(&self) -> Option<&PriorityQueue> {
        self.inner.queue.as_ref()
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
    ///
    /// With [`InvalidatorBuilder::defer_dependents`], only the key goes
    /// inline; its dependents are queued at [`Priority::Low`]
    /// ([`Invalidated::queued`]), a family still by its version.
    pub async fn invalidate_key(&self, key: &str) -> Result<Invalidated> {
        let mut expansion = self.inner.rules.expansion(key)?;
        let queue = match &self.inner.queue {
            Some(queue) if self.inner.defer_dependents && expansion.patterns.len() > 1 => queue,
            _ => return self.remove(expansion).await,
        };
        // The key first (the expansion starts with it), then the rest.
        let dependents = expansion.patterns.split_off(1);
        let families = expansion.by_family.split_off(1);
        let mut invalidated = self.remove(expansion).await?;
        for (pattern, family) in dependents.into_iter().zip(families) {
            let job = match family && self.inner.families {
                true => Job::Family(pattern.clone()),
                false => Job::Pattern(pattern.clone()),
            };
            if queue.queue.push(job, Priority::Low) != crate::Enqueued::Dropped {
                invalidated.queued.push(pattern);
            }
        }
        Ok(invalidated)
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
            queued: Vec::new(),
            report,
        })
    }

    fn count(&self, patterns: usize) {
        self.inner.invalidations.incr();
        self.inner.patterns.add(patterns as u64);
    }
}
