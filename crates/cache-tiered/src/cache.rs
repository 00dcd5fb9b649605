use std::any::TypeId;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cache_core::{CacheLayer, Clock, Entry, Postcard, Serializer, system_clock};
use serde::Serialize;

use crate::envelope::Envelope;
use crate::flight::Flights;
use crate::guard::FillGuard;
use crate::stats::{CacheCounters, TieredStats};
use crate::tags::TagSettings;
use crate::{Result, Tier};

/// A cache made of stacked tiers, fastest first.
///
/// - **get** asks the tiers top-down; a hit in a lower tier is copied into
///   the tiers above it with the expiry it has left (capped by each tier's
///   [`ttl_cap`](Tier::ttl_cap)), never more.
/// - **set** writes through every tier, lowest (shared) first, so that no
///   upper tier holds a value the shared tier lacks: if a lower tier fails,
///   the tiers above it drop the key instead of taking the value (or take
///   it briefly, see [`degraded_ttl`](TieredCacheBuilder::degraded_ttl)).
/// - **delete** and **invalidate** reach every tier, lowest first, and
///   report which tiers they skipped ([`Removed`](crate::Removed)).
/// - **get_or_compute** runs one loader call per key however many callers
///   miss at once (single-flight); a caller that starts after a delete,
///   invalidation or write of the key returned never gets a value loaded
///   before it.
/// - A fill that races with a delete, an invalidation or a write of the same
///   key never puts the old value back.
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
    pub(crate) flights: Flights,
    pub(crate) loader_timeout: Option<Duration>,
    pub(crate) degraded_ttl: Option<Duration>,
    pub(crate) counters: CacheCounters,
    pub(crate) tags: TagSettings,
}

impl TieredCache<Postcard> {
    /// Starts a builder (postcard serializer, system clock, no tiers yet).
    pub fn builder() -> TieredCacheBuilder<Postcard> {
        TieredCacheBuilder {
            tiers: Vec::new(),
            serializer: Postcard,
            clock: system_clock(),
            schemas: Vec::new(),
            loader_timeout: None,
            degraded_ttl: None,
            tags: TagSettings::default(),
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

    pub(crate) fn encode<T: Serialize + ?Sized + 'static>(
        &self,
        value: &T,
        ttl: Duration,
    ) -> Result<Entry> {
        self.encode_stamped(value, &[], ttl)
    }

    /// [`encode`](Self::encode) with tag stamps (plain without any).
    pub(crate) fn encode_stamped<T: Serialize + ?Sized + 'static>(
        &self,
        value: &T,
        stamps: &[(String, u64)],
        ttl: Duration,
    ) -> Result<Entry> {
        let bytes = self
            .envelope::<T>()
            .encode_tagged(&self.shared.serializer, value, stamps)?;
        Ok(Entry::new(bytes).expires_at(self.expiry(ttl)))
    }

    pub(crate) fn expiry(&self, ttl: Duration) -> Option<Instant> {
        self.shared.clock.now().checked_add(ttl)
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
    loader_timeout: Option<Duration>,
    degraded_ttl: Option<Duration>,
    tags: TagSettings,
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
            loader_timeout: self.loader_timeout,
            degraded_ttl: self.degraded_ttl,
            tags: self.tags,
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

    /// The longest a `get_or_compute` loader may run; after it, the callers
    /// waiting on it get [`Error::LoaderTimeout`](crate::Error::LoaderTimeout). Needs tokio's time
    /// driver, like [`Tier::timeout`]. Default: no limit.
    pub fn loader_timeout(mut self, timeout: Duration) -> Self {
        self.loader_timeout = Some(timeout);
        self
    }

    /// Keeps the upper tiers useful while a lower one is down.
    ///
    /// By default, when a lower tier fails a write and its policy fails
    /// open (a dead Redis, an open breaker), the tiers above it drop the key
    /// rather than hold a value the shared tier lacks. During an outage that
    /// leaves L1 empty of anything new, and every request goes to the
    /// loader. With a degraded TTL the tiers above take the value anyway,
    /// for at most this long: the service keeps answering from L1, and the
    /// instances converge again within the TTL once the shared tier is back.
    /// Default: off.
    pub fn degraded_ttl(mut self, ttl: Duration) -> Self {
        self.degraded_ttl = Some(ttl);
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

    /// Builds the cache.
    pub fn build(self) -> Result<TieredCache<S>, cache_core::Error> {
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
        if self.loader_timeout.is_some_and(|t| t.is_zero()) {
            return Err(cache_core::Error::config(
                "loader_timeout must be above zero",
            ));
        }
        if self.tags.ttl.is_zero() {
            return Err(cache_core::Error::config("tag_ttl must be above zero"));
        }
        Ok(TieredCache {
            shared: Arc::new(Shared {
                tiers: self.tiers.into_boxed_slice(),
                serializer: self.serializer,
                clock: self.clock,
                schemas: self.schemas.into_boxed_slice(),
                guard: FillGuard::new(),
                flights: Flights::default(),
                loader_timeout: self.loader_timeout,
                degraded_ttl: self.degraded_ttl,
                counters: CacheCounters::default(),
                tags: self.tags,
            }),
        })
    }
}

impl<S: fmt::Debug> fmt::Debug for TieredCacheBuilder<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TieredCacheBuilder")
            .field("tiers", &self.tiers)
            .field("serializer", &self.serializer)
            .field("loader_timeout", &self.loader_timeout)
            .field("degraded_ttl", &self.degraded_ttl)
            .field("tags", &self.tags)
            .finish()
    }
}
