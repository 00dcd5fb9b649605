//! Options for one key's call: `cache.entry(key).ttl(..).tags(..)` and
//! then what to do with it, instead of one method per combination.

use std::cell::Cell;
use std::future::Future;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::time::Duration;

use cache_core::Serializer;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::cache::LoadOptions;
use crate::error::Typed;
use crate::{Error, LoadError, Result, TieredCache};

/// One key's call, with its options; start it with [`TieredCache::entry`].
///
/// Options left unset take the cache's defaults
/// ([`default_ttl`](crate::TieredCacheBuilder::default_ttl),
/// [`negative_ttl`](crate::TieredCacheBuilder::negative_ttl); every TTL is
/// spread by the cache's [`ttl_jitter`](crate::TieredCacheBuilder::ttl_jitter)),
/// or, for a key that a [`ttl_policy`](crate::TieredCacheBuilder::ttl_policy)
/// rule matches, the rule's.
///
/// ```
/// use std::time::Duration;
/// use cache_memory::MemoryLayer;
/// use cache_tiered::TieredCache;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), cache_tiered::Error> {
/// let cache = TieredCache::builder()
///     .layer(MemoryLayer::new())
///     .default_ttl(Duration::from_secs(60))
///     .build()?;
///
/// // The default TTL, then one of its own.
/// let name = cache
///     .entry("offer:7:name")
///     .get_or_compute(|| async { Ok::<_, std::io::Error>("Lamp".to_string()) })
///     .await?;
/// cache.entry("offer:7:price").ttl(Duration::from_secs(5)).set(&1999u32).await?;
///
/// // "Not found" is cached too, for the negative TTL: the database is
/// // asked once, not on every request for a missing offer.
/// let missing: Option<String> = cache
///     .entry("offer:404:name")
///     .negative_ttl(Duration::from_secs(10))
///     .get_or_compute_optional(|| async { Ok::<_, std::io::Error>(None) })
///     .await?;
/// assert_eq!(missing, None);
///
/// // The loader chooses the TTL from what it loaded.
/// let rating: f32 = cache
///     .entry("offer:7:rating")
///     .get_or_compute_with_ttl(|| async {
///         let rating = 4.5f32;
///         let ttl = if rating > 4.0 { Duration::from_secs(600) } else { Duration::from_secs(60) };
///         Ok::<_, std::io::Error>((rating, ttl))
///     })
///     .await?;
/// # let _ = (name, rating);
/// # Ok(())
/// # }
/// ```
#[must_use = "an entry call does nothing until one of its actions is awaited"]
pub struct EntryCall<'a, S: Serializer> {
    cache: &'a TieredCache<S>,
    key: &'a str,
    ttl: Option<Duration>,
    negative_ttl: Option<Duration>,
    tags: &'a [&'a str],
    options: LoadOptions,
    /// The key's default TTL and negative TTL (its TTL policy's, else the
    /// cache's).
    default_ttl: Duration,
    default_negative_ttl: Duration,
}

impl<S: Serializer> TieredCache<S> {
    /// A call on `key` whose options (TTL, tags, negative TTL, fail-safe,
    /// timeouts, eager refresh) are set one by one, the others taking the
    /// cache's defaults, or those of the key's
    /// [`TtlPolicy`](crate::TtlPolicy). See [`EntryCall`].
    pub fn entry<'a>(&'a self, key: &'a str) -> EntryCall<'a, S> {
        let defaults = self.defaults_for(key);
        EntryCall {
            cache: self,
            key,
            ttl: None,
            negative_ttl: None,
            tags: &[],
            options: defaults.load,
            default_ttl: defaults.ttl,
            default_negative_ttl: defaults.negative_ttl,
        }
    }
}

impl<'a, S: Serializer + 'static> EntryCall<'a, S> {
    /// How long the value lives. Default: the TTL of the key's
    /// [`ttl_policy`](crate::TieredCacheBuilder::ttl_policy), else the cache's
    /// [`default_ttl`](crate::TieredCacheBuilder::default_ttl).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// How long a loader's "not found" is cached by
    /// [`get_or_compute_optional`](Self::get_or_compute_optional). Default:
    /// the key's [`ttl_policy`](crate::TieredCacheBuilder::ttl_policy)'s,
    /// else the cache's [`negative_ttl`](crate::TieredCacheBuilder::negative_ttl).
    pub fn negative_ttl(mut self, ttl: Duration) -> Self {
        self.negative_ttl = Some(ttl);
        self
    }

    /// Tags the value, so that [`TieredCache::invalidate_tag`] of any of
    /// them makes it a miss (see [`TieredCache::set_tagged`]).
    pub fn tags(mut self, tags: &'a [&'a str]) -> Self {
        self.tags = tags;
        self
    }

    /// Keeps the value for `grace` past its TTL, as a fallback for a
    /// loader that fails or times out (`Duration::ZERO`: off for this
    /// call). See [`TieredCacheBuilder::fail_safe`](crate::TieredCacheBuilder::fail_safe).
    pub fn fail_safe(mut self, grace: Duration) -> Self {
        self.options.fail_safe = (!grace.is_zero()).then_some(grace);
        self
    }

    /// How long a stale value served after a failure is served again
    /// without calling the loader. See
    /// [`TieredCacheBuilder::fail_safe_throttle`](crate::TieredCacheBuilder::fail_safe_throttle).
    pub fn fail_safe_throttle(mut self, throttle: Duration) -> Self {
        self.options.throttle = throttle;
        self
    }

    /// After this long, a caller with a stale value gets it and the load
    /// goes on in the background. See
    /// [`TieredCacheBuilder::soft_timeout`](crate::TieredCacheBuilder::soft_timeout).
    pub fn soft_timeout(mut self, timeout: Duration) -> Self {
        self.options.soft_timeout = Some(timeout);
        self
    }

    /// The longest the loader may run. See
    /// [`TieredCacheBuilder::hard_timeout`](crate::TieredCacheBuilder::hard_timeout).
    pub fn hard_timeout(mut self, timeout: Duration) -> Self {
        self.options.hard_timeout = Some(timeout);
        self
    }

    /// Takes up to this fraction off the TTL, at random. See
    /// [`TieredCacheBuilder::ttl_jitter`](crate::TieredCacheBuilder::ttl_jitter).
    pub fn ttl_jitter(mut self, fraction: f64) -> Self {
        self.options.jitter = fraction;
        self
    }

    /// A read past this fraction of the value's TTL refreshes it in the
    /// background (`0.8`: in its last fifth). See
    /// [`TieredCacheBuilder::eager_refresh`](crate::TieredCacheBuilder::eager_refresh).
    pub fn eager_refresh(mut self, fraction: f64) -> Self {
        self.options.eager_refresh = Some(fraction);
        self
    }

    /// Neither reads nor writes this instance's local tiers (those whose
    /// layer is not [shared](cache_core::CacheLayer::is_shared), such as
    /// the memory L1): for a value too big or too rarely read to keep in
    /// memory, or to read what the shared tier holds right now.
    pub fn skip_local(mut self) -> Self {
        self.options.skip_local = true;
        self
    }

    /// Neither reads nor writes the shared tiers (such as Redis): a value
    /// for this instance only. A call that skips every tier of the cache
    /// is an error.
    pub fn skip_shared(mut self) -> Self {
        self.options.skip_shared = true;
        self
    }

    fn chosen_ttl(&self) -> Duration {
        self.ttl.unwrap_or(self.default_ttl)
    }

    /// The value under the key, if any ([`TieredCache::get`]), from the
    /// tiers the call does not skip.
    pub async fn get<T>(self) -> Result<Option<T>>
    where
        T: DeserializeOwned + Clone + Send + Sync + 'static,
    {
        let excluded = self.cache.excluded(&self.options)?;
        self.cache.get_except(self.key, excluded).await
    }

    /// Stores `value` under the key in every tier, with the call's tags
    /// and life (TTL, fail-safe grace, eager refresh) ([`TieredCache::set`],
    /// [`TieredCache::set_tagged`]).
    pub async fn set<T>(self, value: &T) -> Result<()>
    where
        T: Serialize + ?Sized + 'static,
    {
        self.options.validate()?;
        let excluded = self.cache.excluded(&self.options)?;
        let stamps = self.cache.stamp(self.key, self.tags).await?;
        let entry = self
            .cache
            .encode_stamped(value, &stamps, self.chosen_ttl(), &self.options)?;
        let written = self
            .cache
            .write_mutating_except(&[(self.key, entry)], excluded)
            .await
            .pop();
        self.cache.announce_write([self.key]).await;
        written.unwrap_or(Ok(()))
    }

    /// The value under the key; on a miss, runs `loader` and caches its
    /// value ([`TieredCache::get_or_compute`]: one loader per key at a
    /// time), with the call's options. A stale value served in place of a
    /// failed or slow load is returned like a fresh one; use
    /// [`fetch`](Self::fetch) to tell them apart.
    ///
    /// The loader is `'static` and `Send` so that it can run in the
    /// background (a soft timeout, an eager refresh): move what it needs
    /// into it. For a loader that borrows, use
    /// [`TieredCache::get_or_compute`].
    pub async fn get_or_compute<T, F, Fut, E>(self, loader: F) -> Result<T>
    where
        T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
    {
        self.fetch(loader).await.map(Fetched::into_value)
    }

    /// [`get_or_compute`](Self::get_or_compute), saying whether the value
    /// is fresh or a stale fallback, and why.
    ///
    /// ```
    /// use std::time::Duration;
    /// use cache_memory::MemoryLayer;
    /// use cache_tiered::{Stale, TieredCache};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), cache_tiered::Error> {
    /// # let clock = cache_core::ManualClock::shared();
    /// let cache = TieredCache::builder()
    ///     .layer(MemoryLayer::new())
    /// #   .clock(clock.clone())
    ///     .default_ttl(Duration::from_secs(60))
    ///     .fail_safe(Duration::from_secs(3600)) // stale values kept an hour
    ///     .build()?;
    ///
    /// let price = cache.entry("price:7").fetch(|| async { Ok::<_, std::io::Error>(1999u32) }).await?;
    /// assert!(!price.is_stale());
    ///
    /// // A minute later the database is down: the last price, flagged stale.
    /// # clock.advance(Duration::from_secs(61));
    /// let price = cache
    ///     .entry("price:7")
    ///     .fetch(|| async { Err::<u32, _>(std::io::Error::other("database down")) })
    ///     .await?;
    /// assert_eq!(price.value, 1999);
    /// assert!(matches!(price.stale, Some(Stale::LoaderFailed(_))));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn fetch<T, F, Fut, E>(self, loader: F) -> Result<Fetched<T>>
    where
        T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
    {
        let ttl = self.chosen_ttl();
        self.cache
            .compute_detached(
                self.key,
                self.tags,
                Arc::new(move |_: &T| ttl),
                self.options,
                loader,
            )
            .await
    }

    /// [`get_or_compute`](Self::get_or_compute) with the loader's error
    /// typed ([`TieredCache::try_get_or_compute`]).
    pub async fn try_get_or_compute<T, F, Fut, E>(self, loader: F) -> Result<T, LoadError<E>>
    where
        T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
        E: std::error::Error + Send + Sync + 'static,
    {
        let ttl = self.chosen_ttl();
        let typed = || async move { loader().await.map_err(|error| Typed(Arc::new(error))) };
        self.cache
            .compute_detached(
                self.key,
                self.tags,
                Arc::new(move |_: &T| ttl),
                self.options,
                typed,
            )
            .await
            .map(Fetched::into_value)
            .map_err(LoadError::sort)
    }

    /// Negative caching: the loader answers `None` for "there is no such
    /// thing", and that answer is cached for the negative TTL (a found
    /// value for the TTL), so a missing record costs one loader call per
    /// negative TTL rather than one per request.
    ///
    /// Values are stored as `Option<T>`: read them back with this call (or
    /// `get::<Option<T>>`); a plain `get::<T>` of the key is a miss.
    pub async fn get_or_compute_optional<T, F, Fut, E>(self, loader: F) -> Result<Option<T>>
    where
        T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Option<T>, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
    {
        let (found, absent) = (
            self.chosen_ttl(),
            self.negative_ttl.unwrap_or(self.default_negative_ttl),
        );
        let ttl = move |value: &Option<T>| if value.is_some() { found } else { absent };
        self.cache
            .compute_detached(self.key, self.tags, Arc::new(ttl), self.options, loader)
            .await
            .map(Fetched::into_value)
    }

    /// Adaptive TTL: the loader returns the value with the TTL it should
    /// be cached for (a finished auction for a day, a live one for
    /// seconds). The call's own TTL is not used.
    ///
    /// Stored as the pair `(T, Duration)`, so that whoever waits on the
    /// load gets the same: read it back with this call; a plain
    /// `get::<T>` of the key is a miss.
    pub async fn get_or_compute_with_ttl<T, F, Fut, E>(self, loader: F) -> Result<T>
    where
        T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<(T, Duration), E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
    {
        // Cached as the pair, so that the TTL travels with the value to
        // whoever waited on this load; callers get the value.
        let ttl = |loaded: &(T, Duration)| loaded.1;
        self.cache
            .compute_detached(self.key, self.tags, Arc::new(ttl), self.options, loader)
            .await
            .map(|fetched| fetched.value.0)
    }
}

impl<S: Serializer> std::fmt::Debug for EntryCall<'_, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EntryCall")
            .field("key", &self.key)
            .field("ttl", &self.ttl)
            .field("negative_ttl", &self.negative_ttl)
            .field("tags", &self.tags)
            .field("options", &self.options)
            .finish()
    }
}

/// A value from [`EntryCall::fetch`], and whether it is a stale fallback.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Fetched<T> {
    /// The value.
    pub value: T,
    /// Why the value is stale, if it is: `None` for a fresh value (a hit,
    /// or a successful load).
    pub stale: Option<Stale>,
}

impl<T> Fetched<T> {
    pub(crate) fn fresh(value: T) -> Self {
        Fetched { value, stale: None }
    }

    /// Whether the value is past its TTL, served by fail-safe.
    pub fn is_stale(&self) -> bool {
        self.stale.is_some()
    }

    /// The value.
    pub fn into_value(self) -> T {
        self.value
    }
}

/// Why [fail-safe](crate::TieredCacheBuilder::fail_safe) served a stale value.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Stale {
    /// The loader failed or passed the hard timeout (the error says which);
    /// the value is now served without calling it for the throttle.
    LoaderFailed(Error),
    /// The loader was still running at the soft timeout; it goes on in the
    /// background, and its value lands when it finishes.
    SoftTimeout,
    /// A recent load of the key failed: the stale value is served without
    /// calling the loader until the throttle ends.
    Throttled,
}

/// A random number in `[0, 1)`, for TTL jitter: xorshift64* per thread,
/// seeded from std's randomly keyed hasher (no random-number dependency;
/// spreading expiries needs no cryptographic quality).
pub(crate) fn random_unit() -> f64 {
    thread_local! {
        static STATE: Cell<u64> = const { Cell::new(0) };
    }
    STATE.with(|state| {
        let mut x = state.get();
        if x == 0 {
            x = RandomState::new().hash_one(std::thread::current().id()) | 1;
        }
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        state.set(x);
        // The top 53 bits, as a fraction.
        (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    })
}
