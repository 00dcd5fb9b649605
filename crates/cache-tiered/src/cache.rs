use std::any::TypeId;
use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use cache_core::{
    Backplane, CacheLayer, Clock, Entry, LatencyRecorder, Postcard, Serializer, Subscription,
    system_clock,
};
use serde::Serialize;
use tokio::task::AbortHandle;

use crate::backplane::{listen, new_origin};
use crate::envelope::{Envelope, Life};
use crate::fleet::{FleetCounters, FleetLock};
use crate::flight::Flights;
use crate::guard::FillGuard;
use crate::observe::Observe;
use crate::policy::{self, TtlPolicies, TtlPolicy};
use crate::queue::{self, Queue};
use crate::stats::{BackplaneStats, CacheCounters, FleetStats, QueueStats, TieredStats};
use crate::tags::{KeyFamilies, TagSettings};
use crate::{Result, Tier};

/// A cache made of stacked tiers, fastest first.
///
/// - **get** asks the tiers top-down; a hit in a lower tier is copied into
///   the tiers above it with the expiry it has left (capped by each tier's
///   [`ttl_cap`](Tier::ttl_cap)), never more.
/// - **set** writes through every tier, lowest (shared) first, so that no
///   upper tier holds a value the shared tier lacks: if a lower tier fails,
///   the tiers above it drop the key instead of taking the value, or, when
///   its policy fails open, take it for a few seconds only (see
///   [`degraded_ttl`](TieredCacheBuilder::degraded_ttl)).
/// - **delete** and **invalidate** reach every tier, lowest first, and
///   report which tiers they skipped ([`Removed`](crate::Removed)).
/// - **get_or_compute** runs one loader call per key however many callers
///   miss at once (single-flight); a caller that starts after a delete,
///   invalidation or write of the key returned never gets a value loaded
///   before it.
/// - A fill that races with a delete, an invalidation or a write of the same
///   key never puts the old value back.
/// - With a [backplane](TieredCacheBuilder::backplane), every write and
///   removal tells the other instances to drop their local copies of what
///   it changed, and this instance drops what the others tell it.
/// - With the [invalidation queue](TieredCacheBuilder::invalidation_queue),
///   a removal that a failing tier skipped, or a message the backplane
///   could not take, is retried in the background until it lands.
///
/// Values are typed (any serde type) and serialized with `S`
/// ([`Postcard`] by default) behind a small header that holds a format
/// version, the serializer, a per-type schema version
/// ([`schema_version`](TieredCacheBuilder::schema_version)) and a
/// fingerprint of the type: bytes written by another schema, serializer or
/// type read as misses (and stay where they are, for the other version of
/// the service that wrote them); bytes that do not parse are misses and
/// are removed.
/// The decoded value is remembered on in-memory entries, so an L1 hit does
/// not deserialize; it clones. Cache `Arc<T>` (serde's `rc` feature) to make
/// that clone one reference count.
///
/// Cheap to clone; clones share everything.
///
/// # Example
/// ```
/// use std::time::Duration;
/// use cache_memory::MemoryLayer;
/// use cache_tiered::TieredCache;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let cache = TieredCache::builder()
///     .layer(MemoryLayer::new())
///     .build()?;
///
/// let rating: f32 = cache
///     .get_or_compute("rating:offer:7", Duration::from_secs(300), || async {
///         Ok::<_, std::io::Error>(4.5) // a slow query, in real life
///     })
///     .await?;
/// assert_eq!(rating, 4.5);
/// assert_eq!(cache.get::<f32>("rating:offer:7").await?, Some(4.5));
/// # Ok(())
/// # }
/// ```
pub struct TieredCache<S: Serializer = Postcard> {
    pub(crate) shared: Arc<Shared<S>>,
}

pub(crate) struct Shared<S> {
    pub(crate) tiers: Box<[Tier]>,
    pub(crate) serializer: S,
    pub(crate) clock: Arc<dyn Clock>,
    schemas: Box<[(TypeId, u32)]>,
    pub(crate) guard: FillGuard,
    pub(crate) flights: Arc<Flights>,
    /// Fleet-wide single-flight (`fleet.rs`), if configured.
    pub(crate) fleet: Option<FleetLock>,
    pub(crate) fleet_counters: Arc<FleetCounters>,
    pub(crate) degraded_ttl: Option<Duration>,
    pub(crate) defaults: Defaults,
    /// The TTL policy table (`policy.rs`).
    pub(crate) ttl_policies: Arc<TtlPolicies>,
    pub(crate) counters: CacheCounters,
    pub(crate) tags: TagSettings,
    /// Tags values get from their keys (`tags.rs`), if installed.
    pub(crate) families: Option<Arc<dyn KeyFamilies>>,
    pub(crate) backplane: Option<Arc<dyn Backplane>>,
    /// The id this instance's backplane messages carry.
    pub(crate) origin: u64,
    pub(crate) queue: Option<Arc<Queue>>,
    pub(crate) observe: Observe,
    /// How long loaders take; `None` with stats off.
    pub(crate) load_latency: Option<LatencyRecorder>,
    #[cfg(feature = "metrics")]
    pub(crate) load_histogram: Option<::metrics::Histogram>,
    background: Background,
}

/// The cache's tasks (the backplane listener, the retry task), aborted when
/// the last clone of the cache is dropped. They hold the cache only while
/// they work on it, so they never keep it alive.
#[derive(Default)]
struct Background(OnceLock<Box<[AbortHandle]>>);

impl Drop for Background {
    fn drop(&mut self) {
        for task in self.0.get().into_iter().flatten() {
            task.abort();
        }
    }
}

/// The default of [`TieredCacheBuilder::degraded_ttl`]; its doc says why.
const DEFAULT_DEGRADED_TTL: Duration = Duration::from_secs(5);

impl TieredCache<Postcard> {
    /// Starts a builder (postcard serializer, system clock, no tiers yet).
    pub fn builder() -> TieredCacheBuilder<Postcard> {
        TieredCacheBuilder {
            tiers: Vec::new(),
            serializer: Postcard,
            clock: system_clock(),
            schemas: Vec::new(),
            degraded_ttl: Some(DEFAULT_DEGRADED_TTL),
            defaults: Defaults::default(),
            ttl_policies: Vec::new(),
            tags: TagSettings::default(),
            families: None,
            backplane: None,
            queue_limit: None,
            fleet: None,
            observe: Observe::default(),
            #[cfg(feature = "metrics")]
            metrics_every: None,
        }
    }
}

impl<S: Serializer> TieredCache<S> {
    /// Counters per tier and overall.
    pub fn stats(&self) -> TieredStats {
        let shared = &*self.shared;
        let c = &shared.counters;
        let mut stats = TieredStats::default();
        stats.tiers = shared.tiers.iter().map(Tier::stats).collect();
        stats.hits = stats.tiers.iter().map(|tier| tier.hits).sum();
        stats.misses = c.misses.get();
        stats.loads = c.loads.get();
        stats.load_errors = c.load_errors.get();
        stats.coalesced = c.coalesced.get();
        stats.stale_served = c.stale_served.get();
        stats.eager_refreshes = c.eager_refreshes.get();
        if let Some(latency) = &shared.load_latency {
            stats.load_latency = latency.summary();
        }
        let fleet = &shared.fleet_counters;
        stats.fleet = FleetStats {
            acquired: fleet.acquired.get(),
            waited_found: fleet.waited_found.get(),
            waited_then_loaded: fleet.waited_then_loaded.get(),
            lock_errors: fleet.lock_errors.get(),
        };
        stats.backplane = BackplaneStats {
            published: c.published.get(),
            publish_errors: c.publish_errors.get(),
            received: c.received.get(),
            gaps: c.gaps.get(),
            local_errors: c.local_errors.get(),
            subscribed: None,
            reconnects: 0,
        };
        if let Some(backplane) = &shared.backplane {
            let status = backplane.status();
            stats.backplane.subscribed = status.subscribed;
            stats.backplane.reconnects = status.reconnects;
        }
        if let Some(queue) = &shared.queue {
            stats.queue = QueueStats {
                deferred: queue.deferred.get(),
                retried: queue.retried.get(),
                pending: queue.len() as u64,
                overflows: queue.overflows.get(),
            };
        }
        stats
    }

    /// The clock every expiry is computed on; every tier call carries it.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.shared.clock
    }

    /// The layers, top first.
    pub fn layers(&self) -> impl Iterator<Item = &Arc<dyn CacheLayer>> {
        self.shared.tiers.iter().map(|tier| &tier.layer)
    }

    pub(crate) fn envelope<T: 'static + ?Sized>(&self) -> Envelope {
        let type_id = TypeId::of::<T>();
        // A linear scan: few types register a schema, and none is the norm.
        let schema = self
            .shared
            .schemas
            .iter()
            .find(|(id, _)| *id == type_id)
            .map_or(0, |(_, version)| *version);
        Envelope::new::<S, T>(schema)
    }

    /// Encodes `value` with tag stamps (plain without any) and the life
    /// `options` give it (see [`lifetime`](Self::lifetime)).
    pub(crate) fn encode_stamped<T: Serialize + ?Sized + 'static>(
        &self,
        value: &T,
        stamps: &[(String, u64)],
        ttl: Duration,
        options: &LoadOptions,
    ) -> Result<Entry> {
        let (expiry, life) = self.lifetime(ttl, options);
        let bytes = self
            .envelope::<T>()
            .encode(&self.shared.serializer, value, stamps, life)?;
        Ok(Entry::new(bytes).expires_at(expiry))
    }

    /// `ttl` from now, exactly.
    pub(crate) fn expiry(&self, ttl: Duration) -> Option<Instant> {
        self.shared.clock.now().checked_add(ttl)
    }

    /// When a value written now for `ttl` expires, and its life.
    ///
    /// The TTL is made up to the options' jitter shorter (never longer), so
    /// that values written together do not all expire, and send their
    /// readers to the loader, at once. With fail-safe, the value is stored
    /// for the grace longer, its life saying when it turned stale; with
    /// eager refresh, its life says when a read should refresh it.
    pub(crate) fn lifetime(
        &self,
        ttl: Duration,
        options: &LoadOptions,
    ) -> (Option<Instant>, Option<Life>) {
        let jitter = options.jitter;
        let ttl = if jitter == 0.0 {
            ttl
        } else {
            ttl.mul_f64(1.0 - jitter * crate::entry::random_unit())
        };
        let grace = options.fail_safe.unwrap_or(Duration::ZERO);
        let refresh_for = options
            .eager_refresh
            .map(|fraction| ttl.mul_f64(1.0 - fraction).saturating_add(grace));
        if grace.is_zero() && refresh_for.is_none() {
            return (self.expiry(ttl), None);
        }
        let life = Life {
            stale_for: grace,
            refresh_for,
            throttled: false,
        };
        (self.expiry(ttl.saturating_add(grace)), Some(life))
    }

    /// The tiers a call with `options` skips, one bit per depth; an error
    /// if it skips them all.
    pub(crate) fn excluded(&self, options: &LoadOptions) -> Result<TierSet> {
        if !options.skip_local && !options.skip_shared {
            return Ok(0);
        }
        let mut excluded: TierSet = 0;
        for (depth, tier) in self.shared.tiers.iter().enumerate() {
            let skip = match tier.layer.is_shared() {
                true => options.skip_shared,
                false => options.skip_local,
            };
            if skip {
                excluded |= 1 << depth;
            }
        }
        if excluded.count_ones() as usize == self.shared.tiers.len() {
            return Err(cache_core::Error::config(
                "this call skips every tier of the cache: keep at least one",
            )
            .into());
        }
        Ok(excluded)
    }

    /// The cache-wide default TTL ([`TieredCacheBuilder::default_ttl`]).
    pub fn default_ttl(&self) -> Duration {
        self.shared.defaults.ttl
    }
}

/// Cache-wide defaults of the entry options.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Defaults {
    pub(crate) ttl: Duration,
    pub(crate) negative_ttl: Duration,
    pub(crate) load: LoadOptions,
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            ttl: Duration::from_secs(300),
            negative_ttl: Duration::from_secs(30),
            load: LoadOptions::default(),
        }
    }
}

/// How one load behaves when its loader is slow or fails, and around
/// its value's expiry: the cache's defaults, overridden per call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct LoadOptions {
    /// Fail-safe grace past the TTL; `None`: off.
    pub(crate) fail_safe: Option<Duration>,
    /// How long a stale value served after a failure is served again
    /// without calling the loader.
    pub(crate) throttle: Duration,
    pub(crate) soft_timeout: Option<Duration>,
    pub(crate) hard_timeout: Option<Duration>,
    /// The fraction of the TTL after which a read refreshes; `None`: off.
    pub(crate) eager_refresh: Option<f64>,
    /// Up to this fraction of a TTL is taken off it, at random.
    pub(crate) jitter: f64,
    /// The call neither reads nor writes the local (not shared) tiers.
    pub(crate) skip_local: bool,
    /// The call neither reads nor writes the shared tiers.
    pub(crate) skip_shared: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            fail_safe: None,
            throttle: Duration::from_secs(5),
            soft_timeout: None,
            hard_timeout: None,
            eager_refresh: None,
            jitter: 0.0,
            skip_local: false,
            skip_shared: false,
        }
    }
}

impl LoadOptions {
    pub(crate) fn validate(&self) -> Result<(), cache_core::Error> {
        if self.hard_timeout.is_some_and(|t| t.is_zero()) {
            return Err(cache_core::Error::config("hard_timeout must be above zero"));
        }
        if self.throttle.is_zero() {
            return Err(cache_core::Error::config(
                "fail_safe_throttle must be above zero",
            ));
        }
        if !(0.0..1.0).contains(&self.jitter) {
            return Err(cache_core::Error::config(format!(
                "ttl_jitter must be at least 0 and below 1 (got {})",
                self.jitter
            )));
        }
        if let Some(fraction) = self.eager_refresh
            && !(fraction > 0.0 && fraction < 1.0)
        {
            return Err(cache_core::Error::config(format!(
                "eager_refresh must be above 0 and below 1 (got {fraction})"
            )));
        }
        Ok(())
    }
}

/// A set of tiers by depth, one bit each (a cache has at most 64 tiers).
pub(crate) type TierSet = u64;

impl<S: Serializer> Clone for TieredCache<S> {
    fn clone(&self) -> Self {
        TieredCache {
            shared: self.shared.clone(),
        }
    }
}

impl<S: Serializer> fmt::Debug for TieredCache<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TieredCache")
            .field("tiers", &self.shared.tiers)
            .field("serializer", &self.shared.serializer)
            .field("key_families", &self.shared.families)
            .field("backplane", &self.shared.backplane)
            .field("origin", &self.shared.origin)
            .field("invalidation_queue", &self.shared.queue.is_some())
            .field("fleet_lock", &self.shared.fleet)
            .finish()
    }
}

/// Configures a [`TieredCache`].
///
/// # Order
/// Tiers are listed top (fastest, consulted first) to bottom (shared,
/// written first):
///
/// ```
/// # use std::time::Duration;
/// use cache_memory::MemoryLayer;
/// use cache_tiered::{Tier, TieredCache};
///
/// # struct Offer;
/// let cache = TieredCache::builder()
///     .tier(Tier::new(MemoryLayer::new()).ttl_cap(Duration::from_secs(30))) // L1
///     // .tier(Tier::new(redis_layer).policy(breaker))                      // L2
///     .schema_version::<Offer>(2)
///     .build()
///     .unwrap();
/// ```
#[must_use]
pub struct TieredCacheBuilder<S = Postcard> {
    tiers: Vec<Tier>,
    serializer: S,
    clock: Arc<dyn Clock>,
    schemas: Vec<(TypeId, u32)>,
    degraded_ttl: Option<Duration>,
    defaults: Defaults,
    /// The TTL policy rules, in order (`policy.rs`).
    pub(crate) ttl_policies: Vec<(cache_core::Pattern, TtlPolicy)>,
    tags: TagSettings,
    families: Option<Arc<dyn KeyFamilies>>,
    backplane: Option<Arc<dyn Backplane>>,
    queue_limit: Option<usize>,
    fleet: Option<FleetLock>,
    observe: Observe,
    #[cfg(feature = "metrics")]
    metrics_every: Option<Duration>,
}

impl<S: Serializer> TieredCacheBuilder<S> {
    /// Adds a tier below the ones added so far.
    pub fn tier(mut self, tier: Tier) -> Self {
        self.tiers.push(tier);
        self
    }

    /// Adds a layer with the default tier settings (fail open, no cap, no
    /// timeout) below the ones added so far.
    pub fn layer(self, layer: impl CacheLayer + 'static) -> Self {
        self.tier(Tier::new(layer))
    }

    /// The serializer for typed values. Default: [`Postcard`].
    pub fn serializer<S2: Serializer>(self, serializer: S2) -> TieredCacheBuilder<S2> {
        TieredCacheBuilder {
            tiers: self.tiers,
            serializer,
            clock: self.clock,
            schemas: self.schemas,
            degraded_ttl: self.degraded_ttl,
            defaults: self.defaults,
            ttl_policies: self.ttl_policies,
            tags: self.tags,
            families: self.families,
            backplane: self.backplane,
            queue_limit: self.queue_limit,
            fleet: self.fleet,
            observe: self.observe,
            #[cfg(feature = "metrics")]
            metrics_every: self.metrics_every,
        }
    }

    /// The clock expiries are computed on; give the layers the same one.
    /// Default: the system clock.
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The schema version of values of type `T`. Bump it whenever `T`
    /// changes shape: entries written under another version then read as
    /// misses (and are removed) instead of decoding into garbage.
    /// Default: 0 for every type.
    pub fn schema_version<T: ?Sized + 'static>(mut self, version: u32) -> Self {
        let type_id = TypeId::of::<T>();
        self.schemas.retain(|(id, _)| *id != type_id);
        self.schemas.push((type_id, version));
        self
    }

    /// The longest a loader may run (the hard timeout): after it, the load
    /// is cancelled and its callers get
    /// [`Error::LoaderTimeout`](crate::Error::LoaderTimeout), or the stale
    /// value with [`fail_safe`](Self::fail_safe). Needs tokio's time driver,
    /// like [`Tier::timeout`]. Per call:
    /// [`EntryCall::hard_timeout`](crate::EntryCall::hard_timeout).
    /// Default: no limit.
    pub fn hard_timeout(mut self, timeout: Duration) -> Self {
        self.defaults.load.hard_timeout = Some(timeout);
        self
    }

    /// How long a caller that has a stale value waits for its loader (the
    /// soft timeout): after it, the caller gets the stale value at once,
    /// and the load goes on in the background (up to the hard timeout)
    /// and lands when it finishes. Applies to loads with a fallback (see
    /// [`fail_safe`](Self::fail_safe)) started through
    /// [`TieredCache::entry`]; a caller with nothing stale waits for the
    /// load. Per call: [`EntryCall::soft_timeout`](crate::EntryCall::soft_timeout).
    /// Default: none (wait for the load).
    pub fn soft_timeout(mut self, timeout: Duration) -> Self {
        self.defaults.load.soft_timeout = Some(timeout);
        self
    }

    /// Fail-safe: every value is kept for `grace` past its TTL, as stale.
    ///
    /// A stale value is never returned by [`get`](TieredCache::get). A
    /// `get_or_compute` that finds one runs the loader as for a miss; if
    /// the loader fails or times out (or the
    /// [soft timeout](Self::soft_timeout) passes), the caller gets the
    /// stale value instead of the error, and can tell
    /// ([`EntryCall::fetch`](crate::EntryCall::fetch) says why). The stale
    /// value is then served without calling the loader for the
    /// [throttle](Self::fail_safe_throttle), so a failing back end is not
    /// hammered.
    ///
    /// A value is never served more than `ttl + grace` after it was
    /// loaded. Stale values take room in every tier for the grace (a
    /// memory tier evicts them like any entry when it fills up). A tier's
    /// [`ttl_cap`](Tier::ttl_cap) caps how long its copy is *fresh*; it is
    /// kept, stale, for the grace. Per call:
    /// [`EntryCall::fail_safe`](crate::EntryCall::fail_safe). Default: off.
    pub fn fail_safe(mut self, grace: Duration) -> Self {
        self.defaults.load.fail_safe = Some(grace);
        self
    }

    /// After a failed load served a stale value, how long that value is
    /// served without calling the loader again (written to this instance's
    /// local tiers, marked stale). Default: 5 s.
    pub fn fail_safe_throttle(mut self, throttle: Duration) -> Self {
        self.defaults.load.throttle = throttle;
        self
    }

    /// Eager refresh: a `get_or_compute` through [`TieredCache::entry`]
    /// that finds a value past this fraction of its TTL (`0.8`: in its last
    /// fifth) returns it at once and starts one background load of the key
    /// (one per key at a time, however many callers read it), so a hot key
    /// is reloaded before it expires and its readers never wait for the
    /// loader. Between 0 and 1 (exclusive). Per call:
    /// [`EntryCall::eager_refresh`](crate::EntryCall::eager_refresh).
    /// Default: off.
    pub fn eager_refresh(mut self, fraction: f64) -> Self {
        self.defaults.load.eager_refresh = Some(fraction);
        self
    }

    /// How long the upper tiers may hold a value that a failed lower tier
    /// lacks, so that they stay useful while it is down.
    ///
    /// When a lower tier fails a write and its policy fails open (a dead
    /// Redis, an open breaker), the tiers above it still take the value,
    /// for at most this long (and never longer than their own
    /// [`ttl_cap`](Tier::ttl_cap) or the value's TTL). During an outage L1
    /// then keeps answering with what the loader returned: a key costs the
    /// loader about one call per `degraded_ttl` per instance, not one per
    /// request.
    ///
    /// **Consistency between instances.** An L1 may hold a value the
    /// shared tier lacks, for at most this long. While the shared tier is
    /// down, other instances cannot read that value, and cannot tell this
    /// one that they changed the key (neither through the shared tier nor
    /// through a backplane over the same server), so instances may answer
    /// differently for up to `degraded_ttl`; once the shared tier is back,
    /// they agree again within it. What L1 held before the outage is kept
    /// up to its `ttl_cap` in any case, so a `degraded_ttl` at or below the
    /// L1 cap adds no longer divergence than the outage already brings.
    ///
    /// `Duration::ZERO` turns it off: the tiers above a failed tier then
    /// drop the key instead of taking the value, so no tier ever holds a
    /// value the shared tier lacks, and during an outage every request for
    /// a key L1 does not already hold runs the loader.
    ///
    /// Measured by `crates/cache-redis/tests/outage.rs` (1,000 keys read in
    /// zipf order at 4,000 requests/s, an L1 of 250 entries capped at 2 s,
    /// Redis killed for 5 s, no caller error in any case): once the L1 cap
    /// had passed, the loader took about 3,300 calls/s with it off (83% of
    /// the requests), 1,150/s with 500 ms, and 940/s with 2 s (the cap),
    /// which is the load Redis took off the loader while healthy (about 930
    /// L2 hits/s: the keys L1 cannot hold either way). Longer settings add
    /// little: the reloads they save are about the keys L1 holds divided by
    /// the setting (50 calls/s for 250 keys at 5 s). The default keeps the
    /// divergence short, well under a typical L1 cap (30 s in the README).
    ///
    /// Default: 5 s.
    pub fn degraded_ttl(mut self, ttl: Duration) -> Self {
        self.degraded_ttl = (!ttl.is_zero()).then_some(ttl);
        self
    }

    /// The TTL of values written through [`TieredCache::entry`] without one
    /// of their own, for keys that no [`ttl_policy`](Self::ttl_policy)
    /// rule matches. Default: 5 minutes.
    pub fn default_ttl(mut self, ttl: Duration) -> Self {
        self.defaults.ttl = ttl;
        self
    }

    /// How long a "not found" from a loader is cached by
    /// [`get_or_compute_optional`](crate::EntryCall::get_or_compute_optional)
    /// (negative caching), unless the call sets its own. Default: 30 s.
    pub fn negative_ttl(mut self, ttl: Duration) -> Self {
        self.defaults.negative_ttl = ttl;
        self
    }

    /// Spreads expiries: every value written is given a TTL up to this
    /// fraction shorter than asked, at random (`0.1`: between 90% and 100%
    /// of it; never longer). Values written together (a warm-up, a burst
    /// of misses) then do not all expire at once and stampede the loader.
    /// Between 0 and 1. Default: 0 (exact TTLs).
    pub fn ttl_jitter(mut self, fraction: f64) -> Self {
        self.defaults.load.jitter = fraction;
        self
    }

    /// The prefix of the keys that hold tag versions (see
    /// [`TieredCache::set_tagged`]): the version of tag `t` lives under
    /// `prefix + t`, in every tier. Default: `"tag-version:"`.
    pub fn tag_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.tags.prefix = prefix.into();
        self
    }

    /// How long a tag version is kept. Keep it longer than the TTL of any
    /// tagged value: a value whose tag version is gone reads as a miss.
    /// Default: one day.
    pub fn tag_ttl(mut self, ttl: Duration) -> Self {
        self.tags.ttl = ttl;
        self
    }

    /// Stamps every value with the versions of its key's families, as if
    /// the families had been passed as tags (see [`KeyFamilies`]), so that
    /// invalidating a family ([`TieredCache::invalidate_tag`] of its name)
    /// makes every value of it a miss, on every instance, with one removal
    /// and no scan. `cache_invalidation::Rules::families` makes them from
    /// dependency rules.
    ///
    /// A value of a family costs what a tagged value costs: its write
    /// reads (and, the first time, creates) the family's version, and its
    /// reads check it (an L1 hit reads the version from L1 too). A key in
    /// no family costs the [`families_of`](KeyFamilies::families_of) call
    /// on writes, nothing on reads. Install the same families on every
    /// instance sharing the cache. Default: none.
    pub fn key_families(self, families: impl KeyFamilies + 'static) -> Self {
        self.shared_key_families(Arc::new(families))
    }

    /// [`key_families`](Self::key_families), for families already in an `Arc`.
    pub fn shared_key_families(mut self, families: Arc<dyn KeyFamilies>) -> Self {
        self.families = Some(families);
        self
    }

    /// Keeps this instance's local tiers in step with other instances'
    /// through `backplane` (`cache_redis::RedisBackplane` across processes,
    /// [`MemoryBackplane`](crate::MemoryBackplane) inside one).
    ///
    /// - Every [`set`](TieredCache::set), [`set_many`](TieredCache::set_many),
    ///   [`set_tagged`](TieredCache::set_tagged) and every removal
    ///   ([`remove`](TieredCache::remove) unless
    ///   [`local`](crate::Removal::local), [`delete`](TieredCache::delete),
    ///   [`invalidate`](TieredCache::invalidate),
    ///   [`invalidate_tag`](TieredCache::invalidate_tag)) publishes one
    ///   message naming its keys or patterns once the tiers are written,
    ///   and returns once it is published (bound the backplane's calls:
    ///   `RedisBackplane` has a timeout). Fills (loader results, copies
    ///   from lower tiers) are not published.
    /// - A listener task removes what the other instances publish from this
    ///   instance's local tiers (whose layer is not
    ///   [shared](cache_core::CacheLayer::is_shared): the sender has written
    ///   the shared ones), and clears them when messages may have been lost
    ///   ([`BackplaneEvent::Gap`](cache_core::BackplaneEvent::Gap)). It
    ///   stops when the last clone of the cache is dropped.
    ///
    /// The cache subscribes before it is used, so it must be built with
    /// [`build_async`](Self::build_async), inside a tokio runtime.
    /// [`TieredStats::backplane`] counts messages. Default: none.
    ///
    /// ```
    /// use cache_memory::MemoryLayer;
    /// use cache_tiered::{MemoryBackplane, TieredCache};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> cache_core::Result<()> {
    /// let backplane = MemoryBackplane::default(); // RedisBackplane across processes
    /// let cache = TieredCache::builder()
    ///     .layer(MemoryLayer::new())
    ///     // .tier(Tier::new(redis_layer)) for the shared L2
    ///     .backplane(backplane.clone())
    ///     .build_async()
    ///     .await?;
    /// assert_eq!(backplane.subscribers(), 1);
    /// # Ok(())
    /// # }
    /// ```
    pub fn backplane(self, backplane: impl Backplane + 'static) -> Self {
        self.shared_backplane(Arc::new(backplane))
    }

    /// [`backplane`](Self::backplane), for one that is already in an `Arc`.
    pub fn shared_backplane(mut self, backplane: Arc<dyn Backplane>) -> Self {
        self.backplane = Some(backplane);
        self
    }

    /// Retries what did not land, in the background, until it does: a
    /// removal that a tier skipped (a failing tier whose policy fails
    /// open: a dead Redis, an open breaker) and a message the backplane
    /// failed to publish (a write's or a removal's).
    ///
    /// One task retries the queue in order, pausing 100 ms doubling to 5 s
    /// between failed attempts; a queued removal is done again in every
    /// tier (this instance may have refilled its L1 from the shared tier
    /// meanwhile) and published again. Such a removal returns `Ok` at once,
    /// its report [deferred](crate::Removed::is_deferred): there is nothing
    /// to call again. So Redis does not come back from an outage with the
    /// values deleted during it.
    ///
    /// The queue holds up to `limit` calls; past that it becomes one
    /// "remove everything, everywhere", retried like the rest: coarser,
    /// never less. It lives in the process: what is queued is lost if the
    /// process exits first. [`TieredStats::queue`] counts it. Needs a tokio
    /// runtime at build time; the task stops when the last clone of the
    /// cache is dropped. Default: off (a skipped tier is only reported,
    /// [`Removed::skipped`](crate::Removed::skipped)).
    pub fn invalidation_queue(mut self, limit: usize) -> Self {
        self.queue_limit = Some(limit);
        self
    }

    /// Runs one loader per key across instances, not only per process
    /// (fleet-wide single-flight), through a lock they share
    /// (`cache_redis::RedisLoadLock` across processes,
    /// [`MemoryLoadLock`](crate::MemoryLoadLock) inside one).
    ///
    /// When `get_or_compute` misses, the caller that leads the load in this
    /// process tries the lock on the key. If it gets it, it loads as usual
    /// and releases the lock when done (in the background; the lease ends
    /// a lock nobody released: a killed process, a cancelled caller). If
    /// another instance holds it, it reads the shared tiers every
    /// [`poll`](FleetLock::poll) until that instance's value is there (and
    /// fills the tiers above with it, as a read does), takes the lock if it
    /// becomes free, and after [`max_wait`](FleetLock::max_wait) loads
    /// without it. A failing lock (Redis down) or a shared tier that
    /// fails in the call never fails the call, nor makes it wait: the
    /// caller loads alone. [`TieredStats::fleet`] counts what happened.
    ///
    /// Needs a shared tier ([`CacheLayer::is_shared`]), where the waiting
    /// instances find the value: `build()` refuses a fleet lock without
    /// one. Default: off (one loader per key per process).
    ///
    /// [`FleetLock`] has an example and the settings (lease, wait, poll).
    pub fn fleet_lock(mut self, fleet: FleetLock) -> Self {
        self.fleet = Some(fleet);
        self
    }

    /// The cache's name in spans, logs and metrics (the `cache` label), to
    /// tell several caches of one process apart. Default: `"cache"`.
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.observe.name = name.into();
        self
    }

    /// Whether the cache keeps its read and load counters and its
    /// latencies ([`TieredCache::stats`]). Default: on. Off, those read
    /// zero and an L1 hit skips its counter increments (the L1 benchmark
    /// measures the difference, `stats_cost` in its JSON); errors, the
    /// last error, breakers and the backplane's counters are kept either
    /// way (they cost nothing until something fails).
    pub fn stats(mut self, on: bool) -> Self {
        self.observe.stats = on;
        self
    }

    /// Whether spans show keys as given. Default: off: keys often hold user
    /// data (an email, a user id), so spans show a keyed hash of the key
    /// instead (`#` and 16 hex digits, the same for one key throughout a
    /// process's life), enough to follow a key through the logs.
    pub fn trace_keys(mut self, raw: bool) -> Self {
        self.observe.trace_keys = raw;
        self
    }

    /// Calls [`TieredCache::export_metrics`] every `interval` in a task of
    /// the cache's (stopped when the last clone of the cache is dropped),
    /// so that the `metrics` recorder always has figures at most that old.
    /// Build the cache inside a tokio runtime. Feature `metrics`.
    #[cfg(feature = "metrics")]
    pub fn export_metrics_every(mut self, interval: Duration) -> Self {
        self.metrics_every = Some(interval);
        self
    }

    /// The longest [`TieredCache::health`] waits for one tier's ping
    /// (less if the tier's own timeout is shorter). Default: 1 s.
    pub fn health_timeout(mut self, timeout: Duration) -> Self {
        self.observe.health_timeout = timeout;
        self
    }

    /// Builds the cache.
    ///
    /// Fails on an invalid configuration, and with a
    /// [`backplane`](Self::backplane), which needs
    /// [`build_async`](Self::build_async). With an
    /// [`invalidation_queue`](Self::invalidation_queue), call it inside a
    /// tokio runtime (it spawns the retry task there).
    pub fn build(self) -> Result<TieredCache<S>, cache_core::Error> {
        self.validate()?;
        if self.backplane.is_some() {
            return Err(cache_core::Error::config(
                "a cache with a backplane subscribes to it before it is used: \
                 build it with `build_async().await`",
            ));
        }
        self.finish(None)
    }

    /// Builds the cache, subscribing to its [`backplane`](Self::backplane)
    /// first, if it has one: once this returns, whatever any instance
    /// publishes reaches this one. Spawns the cache's tasks on the current
    /// tokio runtime; outside one, a backplane or an invalidation queue is
    /// an error.
    ///
    /// A backplane whose server is down fails this, unless it subscribes
    /// lazily (`cache_redis::RedisBackplaneBuilder::lazy`): the cache is then
    /// built and serves from its tiers and loaders, and the listener's
    /// subscription connects in the background. Until it does, what other
    /// instances publish does not reach this one; its first event is a
    /// [`Gap`](cache_core::BackplaneEvent::Gap), which clears the local
    /// tiers.
    pub async fn build_async(self) -> Result<TieredCache<S>, cache_core::Error> {
        self.validate()?;
        let subscription = match &self.backplane {
            Some(backplane) => {
                runtime("a backplane")?;
                Some(backplane.subscribe().await?)
            }
            None => None,
        };
        self.finish(subscription)
    }

    fn validate(&self) -> Result<(), cache_core::Error> {
        if self.tiers.is_empty() {
            return Err(cache_core::Error::config(
                "a tiered cache needs at least one tier",
            ));
        }
        if self.tiers.len() > TierSet::BITS as usize {
            return Err(cache_core::Error::config(
                "a tiered cache has at most 64 tiers",
            ));
        }
        self.defaults.load.validate()?;
        TtlPolicies::new(self.ttl_policies.clone())?;
        if self.defaults.ttl.is_zero() || self.defaults.negative_ttl.is_zero() {
            return Err(cache_core::Error::config(
                "default_ttl and negative_ttl must be above zero",
            ));
        }
        if self.tags.ttl.is_zero() {
            return Err(cache_core::Error::config("tag_ttl must be above zero"));
        }
        if let Some(fleet) = &self.fleet {
            fleet.validate()?;
            if !self.tiers.iter().any(|tier| tier.layer.is_shared()) {
                return Err(cache_core::Error::config(
                    "a fleet lock needs a shared tier (a layer whose is_shared() is true, \
                     such as a RedisLayer): that is where waiting instances find the value",
                ));
            }
        }
        #[cfg(feature = "metrics")]
        if self
            .metrics_every
            .is_some_and(|interval| interval.is_zero())
        {
            return Err(cache_core::Error::config(
                "export_metrics_every needs an interval above zero",
            ));
        }
        if self.observe.health_timeout.is_zero() {
            return Err(cache_core::Error::config(
                "health_timeout must be above zero",
            ));
        }
        if self.queue_limit == Some(0) {
            return Err(cache_core::Error::config(
                "invalidation_queue must hold at least one call",
            ));
        }
        Ok(())
    }

    /// The cache, and its tasks on the current runtime.
    fn finish(
        mut self,
        subscription: Option<Box<dyn Subscription>>,
    ) -> Result<TieredCache<S>, cache_core::Error> {
        for tier in &mut self.tiers {
            tier.configure(&self.observe);
        }
        let ttl_policies = Arc::new(TtlPolicies::new(self.ttl_policies)?);
        policy::attach(&mut self.tiers, &ttl_policies);
        #[cfg(feature = "metrics")]
        let metrics_every = self.metrics_every;
        #[cfg(not(feature = "metrics"))]
        let metrics_every: Option<Duration> = None;
        let runtime = match (&subscription, self.queue_limit, metrics_every) {
            (None, None, None) => None,
            (Some(_), _, _) => Some(runtime("a backplane")?),
            (None, Some(_), _) => Some(runtime("an invalidation queue")?),
            (None, None, Some(_)) => Some(runtime("a metrics export")?),
        };
        let queue = self.queue_limit.map(|limit| Arc::new(Queue::new(limit)));
        let origin = new_origin();
        let shared = Arc::new(Shared {
            tiers: self.tiers.into_boxed_slice(),
            serializer: self.serializer,
            clock: self.clock,
            schemas: self.schemas.into_boxed_slice(),
            guard: FillGuard::new(),
            flights: Arc::default(),
            fleet: self.fleet,
            fleet_counters: Arc::default(),
            degraded_ttl: self.degraded_ttl,
            defaults: self.defaults,
            ttl_policies,
            counters: CacheCounters::new(self.observe.stats),
            load_latency: self.observe.stats.then(LatencyRecorder::new),
            #[cfg(feature = "metrics")]
            load_histogram: (self.observe.stats)
                .then(|| crate::metrics::load_histogram(&self.observe.name)),
            tags: self.tags,
            families: self.families,
            backplane: self.backplane,
            origin,
            queue: queue.clone(),
            observe: self.observe,
            background: Background::default(),
        });
        if let Some(runtime) = runtime {
            let mut tasks = Vec::new();
            if let Some(subscription) = subscription {
                let listener = listen(Arc::downgrade(&shared), subscription, origin);
                tasks.push(runtime.spawn(listener).abort_handle());
            }
            if let Some(queue) = queue {
                let retrier = queue::run(Arc::downgrade(&shared), queue);
                tasks.push(runtime.spawn(retrier).abort_handle());
            }
            #[cfg(feature = "metrics")]
            if let Some(interval) = metrics_every {
                let exporter = crate::metrics::run(Arc::downgrade(&shared), interval);
                tasks.push(runtime.spawn(exporter).abort_handle());
            }
            // Set once, here: nothing else can have set it.
            let _ = shared.background.0.set(tasks.into_boxed_slice());
        }
        Ok(TieredCache { shared })
    }
}

/// The current tokio runtime, which `what` needs for its task.
fn runtime(what: &str) -> Result<tokio::runtime::Handle, cache_core::Error> {
    tokio::runtime::Handle::try_current().map_err(|_| {
        cache_core::Error::config(format!(
            "a cache with {what} must be built inside a tokio runtime (it runs a task there)"
        ))
    })
}

impl<S: fmt::Debug> fmt::Debug for TieredCacheBuilder<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TieredCacheBuilder")
            .field("tiers", &self.tiers)
            .field("serializer", &self.serializer)
            .field("degraded_ttl", &self.degraded_ttl)
            .field("defaults", &self.defaults)
            .field("ttl_policies", &self.ttl_policies)
            .field("tags", &self.tags)
            .field("key_families", &self.families)
            .field("backplane", &self.backplane)
            .field("invalidation_queue", &self.queue_limit)
            .field("fleet_lock", &self.fleet)
            .field("observe", &self.observe)
            .finish()
    }
}
