//! `Invalidator`: rules applied across tiers, and news of it sent to the
//! other instances.

use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use cache_core::{
    Backplane, BackplaneEvent, BackplaneMessage, Counter, Invalidation, Pattern, Postcard,
    Serializer, Subscription,
};
use cache_tiered::TieredCache;
use tokio::task::AbortHandle;

use crate::{Error, Result, Rules};

/// Invalidates keys with their dependents in every tier of a
/// [`TieredCache`], and keeps the local tiers of other instances in step
/// through a [`Backplane`].
///
/// - [`invalidate_key`](Self::invalidate_key) removes a key and, following
///   the [`Rules`], every key that depends on it, from every tier; then
///   publishes them all in one message on the backplane.
/// - With a backplane, a listener task receives what other instances
///   publish and removes it from this instance's local tiers (those whose
///   layer is not [shared](cache_core::CacheLayer::is_shared): the sender
///   has cleared the shared ones). When messages may have been lost (the
///   backplane reconnected, or this instance fell behind), it clears the
///   local tiers entirely: a cold L1 is slower, a stale one is wrong.
///   The task stops when the last clone of the `Invalidator` is dropped.
///
/// ```
/// use std::time::Duration;
/// use cache_invalidation::{Invalidator, MemoryBackplane, Rules};
/// use cache_memory::MemoryLayer;
/// use cache_tiered::TieredCache;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let cache = TieredCache::builder().layer(MemoryLayer::new()).build()?;
/// let rules = Rules::builder()
///     .rule("reviews:offer:{id}", ["reviews:offer:{id}:*", "rating:offer:{id}"])
///     .build()?;
/// let invalidator = Invalidator::builder(cache.clone())
///     .rules(rules)
///     .backplane(MemoryBackplane::default())
///     .build()
///     .await?;
///
/// let ttl = Duration::from_secs(300);
/// cache.set("reviews:offer:7:page:0", &vec!["great"], ttl).await?;
/// cache.set("rating:offer:7", &4.5f32, ttl).await?;
/// cache.set("rating:offer:8", &3.0f32, ttl).await?;
///
/// invalidator.invalidate_key("reviews:offer:7").await?;
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
    backplane: Option<Arc<dyn Backplane>>,
    origin: u64,
    counters: Arc<Counters>,
    listener: Option<AbortHandle>,
}

impl<S: Serializer> Drop for Inner<S> {
    fn drop(&mut self) {
        if let Some(listener) = &self.listener {
            listener.abort();
        }
    }
}

impl<S: Serializer> fmt::Debug for Invalidator<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Invalidator")
            .field("rules", &self.inner.rules)
            .field("backplane", &self.inner.backplane)
            .field("origin", &self.inner.origin)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Counters {
    invalidations: Counter,
    patterns: Counter,
    published: Counter,
    publish_errors: Counter,
    received: Counter,
    gaps: Counter,
    local_errors: Counter,
}

/// Counters of an [`Invalidator`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct InvalidatorStats {
    /// Calls to `invalidate_key`, `invalidate` and `invalidate_tag`.
    pub invalidations: u64,
    /// Keys, patterns and tags those calls removed (dependents included).
    pub patterns: u64,
    /// Messages published on the backplane (one per call).
    pub published: u64,
    /// Messages the backplane failed to publish.
    pub publish_errors: u64,
    /// Messages from other instances applied to the local tiers (counted
    /// once applied).
    pub received: u64,
    /// Times messages may have been lost, so the local tiers were cleared
    /// (counted once cleared).
    pub gaps: u64,
    /// Local tiers that failed to apply a received message (the failure is
    /// also logged).
    pub local_errors: u64,
}

/// What one invalidation removed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Invalidated {
    /// The key (or pattern) itself, then its dependents.
    pub patterns: Vec<Pattern>,
    /// Keys removed, summed over the patterns (for each pattern, the most
    /// any one tier removed).
    pub removed: u64,
}

impl<S: Serializer> Invalidator<S> {
    /// Starts a builder over `cache` (no rules, no backplane yet).
    pub fn builder(cache: TieredCache<S>) -> InvalidatorBuilder<S> {
        InvalidatorBuilder {
            cache,
            rules: Rules::default(),
            backplane: None,
        }
    }

    /// Removes `key` and every key that depends on it (by the rules) from
    /// every tier, then tells the other instances.
    ///
    /// Every pattern is tried, and all are published, even if one fails;
    /// the first failure is returned. Retrying is safe.
    pub async fn invalidate_key(&self, key: &str) -> Result<Invalidated> {
        let patterns = self.inner.rules.expand(key)?;
        self.remove(patterns).await
    }

    /// Removes every key matching `pattern` from every tier, then tells the
    /// other instances. Rules are not applied: they follow keys, and a
    /// pattern names no key.
    pub async fn invalidate(&self, pattern: &Pattern) -> Result<Invalidated> {
        self.remove(vec![pattern.clone()]).await
    }

    /// Makes every value tagged with `tag` (see
    /// [`TieredCache::set_tagged`] and
    /// [`get_or_compute_tagged`](TieredCache::get_or_compute_tagged)) a
    /// miss: the tag gets a new version in every tier here, and the other
    /// instances drop their local copy of the old version, so they read the
    /// new one from the shared tier.
    pub async fn invalidate_tag(&self, tag: &str) -> Result<()> {
        let inner = &*self.inner;
        inner.counters.invalidations.incr();
        let mut first_error = inner
            .cache
            .invalidate_tag(tag)
            .await
            .err()
            .map(Error::Cache);
        inner.counters.patterns.incr();
        let version_key = inner.cache.tag_key(tag);
        if let Err(error) = self
            .publish(vec![Invalidation::Key(version_key)], tag)
            .await
        {
            first_error.get_or_insert(error);
        }
        first_error.map_or(Ok(()), Err)
    }

    /// The rules this invalidator follows.
    pub fn rules(&self) -> &Rules {
        &self.inner.rules
    }

    /// The id this instance's messages carry.
    pub fn origin(&self) -> u64 {
        self.inner.origin
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> InvalidatorStats {
        let c = &self.inner.counters;
        InvalidatorStats {
            invalidations: c.invalidations.get(),
            patterns: c.patterns.get(),
            published: c.published.get(),
            publish_errors: c.publish_errors.get(),
            received: c.received.get(),
            gaps: c.gaps.get(),
            local_errors: c.local_errors.get(),
        }
    }

    async fn remove(&self, patterns: Vec<Pattern>) -> Result<Invalidated> {
        let inner = &*self.inner;
        inner.counters.invalidations.incr();
        let mut removed = 0;
        let mut first_error = None;
        // Shared tiers first (the cache removes bottom-up), then the news:
        // an instance that drops its copy and reads again finds the shared
        // tier already clean.
        for pattern in &patterns {
            let outcome = match pattern.literal() {
                Some(key) => inner.cache.delete(key).await.map(u64::from),
                None => inner.cache.invalidate(pattern).await,
            };
            match outcome {
                Ok(count) => removed += count,
                Err(error) => {
                    first_error.get_or_insert(Error::Cache(error));
                }
            }
            inner.counters.patterns.incr();
        }
        // Published even if a tier failed: the other instances' local
        // copies must go all the same.
        let invalidations = patterns
            .iter()
            .map(|pattern| match pattern.literal() {
                Some(key) => Invalidation::Key(key.to_owned()),
                None => Invalidation::Pattern(pattern.clone()),
            })
            .collect();
        let first = patterns.first().map_or("", Pattern::as_str);
        if let Err(error) = self.publish(invalidations, first).await {
            first_error.get_or_insert(error);
        }
        match first_error {
            Some(error) => Err(error),
            None => Ok(Invalidated { patterns, removed }),
        }
    }

    /// Tells the other instances, if there is a backplane. `what` names the
    /// call in the log.
    async fn publish(&self, invalidations: Vec<Invalidation>, what: &str) -> Result<()> {
        let inner = &*self.inner;
        let Some(backplane) = &inner.backplane else {
            return Ok(());
        };
        let message = BackplaneMessage {
            origin: inner.origin,
            invalidations,
        };
        match backplane.publish(&message).await {
            Ok(()) => {
                inner.counters.published.incr();
                Ok(())
            }
            Err(error) => {
                inner.counters.publish_errors.incr();
                tracing::warn!(%error, what, "backplane publish failed; other instances keep their local copies until they expire");
                Err(Error::Backplane(error))
            }
        }
    }
}

/// Builds an [`Invalidator`].
#[must_use]
pub struct InvalidatorBuilder<S: Serializer = Postcard> {
    cache: TieredCache<S>,
    rules: Rules,
    backplane: Option<Arc<dyn Backplane>>,
}

impl<S: Serializer> fmt::Debug for InvalidatorBuilder<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InvalidatorBuilder")
            .field("rules", &self.rules)
            .field("backplane", &self.backplane)
            .finish_non_exhaustive()
    }
}

impl<S: Serializer> InvalidatorBuilder<S> {
    /// The dependency rules to follow. Default: none.
    pub fn rules(mut self, rules: Rules) -> Self {
        self.rules = rules;
        self
    }

    /// The backplane shared with the other instances. Default: none (this
    /// instance alone).
    pub fn backplane(self, backplane: impl Backplane + 'static) -> Self {
        self.shared_backplane(Arc::new(backplane))
    }

    /// A backplane that is already shared (`Arc<dyn Backplane>`).
    pub fn shared_backplane(mut self, backplane: Arc<dyn Backplane>) -> Self {
        self.backplane = Some(backplane);
        self
    }

    /// Subscribes to the backplane, if any, and starts the listener task on
    /// the current tokio runtime. Returns once subscribed: what any instance
    /// publishes from then on reaches this one.
    pub async fn build(self) -> Result<Invalidator<S>> {
        let origin = new_origin();
        let counters = Arc::new(Counters::default());
        let listener = match &self.backplane {
            None => None,
            Some(backplane) => {
                let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                    return Err(Error::Backplane(cache_core::Error::config(
                        "an Invalidator with a backplane must be built inside a tokio runtime",
                    )));
                };
                let subscription = backplane.subscribe().await.map_err(Error::Backplane)?;
                let task = runtime.spawn(listen(
                    self.cache.clone(),
                    subscription,
                    origin,
                    counters.clone(),
                ));
                Some(task.abort_handle())
            }
        };
        Ok(Invalidator {
            inner: Arc::new(Inner {
                cache: self.cache,
                rules: self.rules,
                backplane: self.backplane,
                origin,
                counters,
                listener,
            }),
        })
    }
}

/// Applies what other instances publish to this instance's local tiers.
async fn listen<S: Serializer>(
    cache: TieredCache<S>,
    mut subscription: Box<dyn Subscription>,
    origin: u64,
    counters: Arc<Counters>,
) {
    while let Some(event) = subscription.next().await {
        let outcome = match event {
            BackplaneEvent::Message(message) if message.origin == origin => continue,
            BackplaneEvent::Message(message) => {
                let mut outcome = Ok(());
                for invalidation in &message.invalidations {
                    let applied = match invalidation {
                        Invalidation::Key(key) => cache.delete_local(key).await.map(drop),
                        Invalidation::Pattern(pattern) => {
                            cache.invalidate_local(pattern).await.map(drop)
                        }
                        Invalidation::All => cache.invalidate_local(&everything()).await.map(drop),
                    };
                    // Every invalidation is applied; the first failure is kept.
                    outcome = outcome.and(applied);
                }
                counters.received.incr();
                outcome
            }
            BackplaneEvent::Gap => {
                tracing::info!("backplane messages may have been lost; clearing the local tiers");
                let outcome = cache.invalidate_local(&everything()).await.map(drop);
                counters.gaps.incr();
                outcome
            }
        };
        if let Err(error) = outcome {
            counters.local_errors.incr();
            tracing::warn!(%error, "a local tier failed to apply a backplane message");
        }
    }
    tracing::debug!("backplane closed; the invalidation listener stops");
}

fn everything() -> Pattern {
    Pattern::new("*")
}

/// A fresh id for this instance's messages: unique across processes with
/// overwhelming probability (std's randomly keyed hasher over the process
/// id, the time and a counter), without a random-number dependency.
fn new_origin() -> u64 {
    static SEQUENCE: AtomicU64 = AtomicU64::new(0);
    RandomState::new().hash_one((
        std::process::id(),
        Instant::now(),
        std::time::SystemTime::now(),
        SEQUENCE.fetch_add(1, Ordering::Relaxed),
    ))
}
