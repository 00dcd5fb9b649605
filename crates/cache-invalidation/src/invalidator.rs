//! `Invalidator`: rules applied across tiers, and news of it sent to the
//! other instances.

use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use cache_core::{
    Backplane, BackplaneEvent, Counter, Invalidation, Pattern, Postcard, Serializer, Subscription,
};
use cache_tiered::{Removal, TieredCache};
use tokio::task::AbortHandle;

use crate::retry::{self, Retries};
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
/// - What did not reach every tier or the backplane (Redis down) is queued
///   and retried by another task until it lands, so Redis does not come
///   back from an outage with the values invalidated during it.
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
    /// The invalidation queue, when there is a runtime to retry it on.
    retries: Option<Arc<Retries>>,
    /// The listener and the retry task.
    tasks: Vec<AbortHandle>,
}

impl<S: Serializer> Drop for Inner<S> {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
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
    deferred: Counter,
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
    /// Calls that did not reach every tier or the backplane at once, and
    /// were queued to be retried.
    pub deferred: u64,
    /// Queued calls that have since reached everything.
    pub retried: u64,
    /// Queued calls still waiting.
    pub pending: u64,
    /// Times the queue was full and became one "invalidate everything".
    pub overflows: u64,
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
            retry_limit: 10_000,
        }
    }

    /// Removes `key` and every key that depends on it (by the rules) from
    /// every tier, then tells the other instances.
    ///
    /// Every pattern is tried, and all are published, even if one fails.
    /// What did not reach every tier (a shared tier failing open counts)
    /// or the backplane is queued and retried in the background:
    /// [`Error::Deferred`] says so, and there is nothing to call again.
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
    /// miss: its version is removed from every tier here, and the other
    /// instances drop their local copy of it.
    pub async fn invalidate_tag(&self, tag: &str) -> Result<()> {
        // Removing the version is what `TieredCache::invalidate_tag` does;
        // as a key, it goes through the same removal, queue and backplane.
        let version_key = self.inner.cache.tag_key(tag);
        self.remove(vec![Pattern::exact(&version_key)])
            .await
            .map(drop)
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
            deferred: c.deferred.get(),
            retried: self.inner.retries.as_ref().map_or(0, |r| r.retried.get()),
            pending: self.inner.retries.as_ref().map_or(0, |r| r.len() as u64),
            overflows: self.inner.retries.as_ref().map_or(0, |r| r.overflows.get()),
        }
    }

    async fn remove(&self, patterns: Vec<Pattern>) -> Result<Invalidated> {
        let inner = &*self.inner;
        inner.counters.invalidations.incr();
        inner.counters.patterns.add(patterns.len() as u64);
        let invalidations: Vec<Invalidation> = patterns
            .iter()
            .map(|pattern| match pattern.literal() {
                Some(key) => Invalidation::Key(key.to_owned()),
                None => Invalidation::Pattern(pattern.clone()),
            })
            .collect();
        // Shared tiers first (the cache removes bottom-up), then the news:
        // an instance that drops its copy and reads again finds the shared
        // tier already clean. Strict: a shared tier that failed open did
        // not remove anything, and must be tried again.
        let (removed, mut first_error) =
            retry::remove_everywhere(&inner.cache, &invalidations).await;
        if let Some(backplane) = &inner.backplane {
            // Published even if a tier failed: the other instances' local
            // copies must go all the same.
            match retry::publish(&**backplane, inner.origin, invalidations.clone()).await {
                Ok(()) => inner.counters.published.incr(),
                Err(error) => {
                    inner.counters.publish_errors.incr();
                    tracing::warn!(%error, "backplane publish failed");
                    first_error.get_or_insert(error);
                }
            }
        }
        match (first_error, &inner.retries) {
            (None, _) => Ok(Invalidated { patterns, removed }),
            (Some(error), Some(retries)) => {
                retries.push(invalidations);
                inner.counters.deferred.incr();
                Err(Error::Deferred(Box::new(error)))
            }
            (Some(error), None) => Err(error),
        }
    }
}

/// Builds an [`Invalidator`].
#[must_use]
pub struct InvalidatorBuilder<S: Serializer = Postcard> {
    cache: TieredCache<S>,
    rules: Rules,
    backplane: Option<Arc<dyn Backplane>>,
    retry_limit: usize,
}

impl<S: Serializer> fmt::Debug for InvalidatorBuilder<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InvalidatorBuilder")
            .field("rules", &self.rules)
            .field("backplane", &self.backplane)
            .field("retry_limit", &self.retry_limit)
            .finish_non_exhaustive()
    }
}

impl<S: Serializer> InvalidatorBuilder<S> {
    /// The most calls the invalidation queue holds; past it, the queue
    /// becomes one "invalidate everything", retried like the rest.
    /// Default: 10,000.
    pub fn retry_limit(mut self, calls: usize) -> Self {
        self.retry_limit = calls;
        self
    }

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

    /// Subscribes to the backplane, if any, and starts the listener and
    /// retry tasks on the current tokio runtime. Returns once subscribed:
    /// what any instance publishes from then on reaches this one.
    ///
    /// Outside a tokio runtime there is no invalidation queue (failures are
    /// only returned), and a backplane is an error.
    pub async fn build(self) -> Result<Invalidator<S>> {
        let origin = new_origin();
        let counters = Arc::new(Counters::default());
        let runtime = tokio::runtime::Handle::try_current().ok();
        let mut tasks = Vec::new();
        if let Some(backplane) = &self.backplane {
            let Some(runtime) = &runtime else {
                return Err(Error::Backplane(cache_core::Error::config(
                    "an Invalidator with a backplane must be built inside a tokio runtime",
                )));
            };
            let subscription = backplane.subscribe().await.map_err(Error::Backplane)?;
            let listener = runtime.spawn(listen(
                self.cache.clone(),
                subscription,
                origin,
                counters.clone(),
            ));
            tasks.push(listener.abort_handle());
        }
        let retries = runtime.map(|runtime| {
            let retries = Arc::new(Retries::new(self.retry_limit));
            let retrier = runtime.spawn(retry::run(
                self.cache.clone(),
                self.backplane.clone(),
                origin,
                retries.clone(),
            ));
            tasks.push(retrier.abort_handle());
            retries
        });
        Ok(Invalidator {
            inner: Arc::new(Inner {
                cache: self.cache,
                rules: self.rules,
                backplane: self.backplane,
                origin,
                counters,
                retries,
                tasks,
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
                    let all = everything();
                    let removal = match invalidation {
                        Invalidation::Key(key) => Removal::key(key),
                        Invalidation::Pattern(pattern) => Removal::pattern(pattern),
                        Invalidation::All => Removal::pattern(&all),
                    };
                    let applied = cache.remove(removal.local()).await.map(drop);
                    // Every invalidation is applied; the first failure is kept.
                    outcome = outcome.and(applied);
                }
                counters.received.incr();
                outcome
            }
            BackplaneEvent::Gap => {
                tracing::info!("backplane messages may have been lost; clearing the local tiers");
                let all = everything();
                let outcome = cache.remove(Removal::pattern(&all).local()).await.map(drop);
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
