use std::any::{Any, TypeId};
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cache_core::{CacheLayer, Clock, Entry, Pattern, Postcard, Serializer, system_clock};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::envelope::{Envelope, Opened};
use crate::flight::{Flights, Role};
use crate::guard::{FillGuard, Ticket};
use crate::stats::{CacheCounters, TieredStats};
use crate::tags::TagSettings;
use crate::tier::TierRead;
use crate::{Error, Result, Tier};

/// A cache made of stacked tiers, fastest first.
///
/// - **get** asks the tiers top-down; a hit in a lower tier is copied into
///   the tiers above it with the expiry it has left (capped by each tier's
///   [`ttl_cap`](Tier::ttl_cap)), never more.
/// - **set** writes through every tier, lowest (shared) first, so that no
///   upper tier holds a value the shared tier lacks: if a lower tier fails,
///   the tiers above it drop the key instead of taking the value (or take
///   it briefly, see [`degraded_ttl`](TieredCacheBuilder::degraded_ttl)).
/// - **delete** and **invalidate** reach every tier.
/// - **get_or_compute** runs one loader call per key however many callers
///   miss at once (single-flight).
/// - A fill that races with a delete, an invalidation or a write of the same
///   key never puts the old value back.
///
/// Values are typed (any serde type) and serialized with `S`
/// ([`Postcard`] by default) behind a small header that holds a format
/// version, the serializer and a per-type schema version
/// ([`schema_version`](TieredCacheBuilder::schema_version)): bytes written
/// by another schema, serializer or type read as misses and are removed.
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
    flights: Flights,
    loader_timeout: Option<Duration>,
    degraded_ttl: Option<Duration>,
    counters: CacheCounters,
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
    /// The value under `key`, if a tier holds a live, decodable one.
    ///
    /// Fails only if a tier that fails closed fails.
    pub async fn get<T>(&self, key: &str) -> Result<Option<T>>
    where
        T: DeserializeOwned + Clone + Send + Sync + 'static,
    {
        self.get_noting_failures(key, &mut 0).await
    }

    /// [`get`](TieredCache::get), adding to `failed` the tiers whose read
    /// failed open.
    async fn get_noting_failures<T>(&self, key: &str, failed: &mut TierSet) -> Result<Option<T>>
    where
        T: DeserializeOwned + Clone + Send + Sync + 'static,
    {
        let envelope = self.envelope::<T>();
        // The hottest path there is, an L1 hit, answered without entering
        // the general walk (and its futures).
        let top = self.shared.tiers[0].read_now(key);
        if let Some(Ok(Some(Some(entry)))) = &top
            && let Some(Opened {
                value,
                stamps: None,
            }) = envelope.decode::<S, T>(&self.shared.serializer, entry)
        {
            self.shared.tiers[0].counters.hits.incr();
            return Ok(Some(value));
        }
        self.lookup::<T>(key, envelope, None, top, failed).await
    }

    /// Stores `value` under `key` in every tier for `ttl` (each tier's cap
    /// permitting).
    pub async fn set<T>(&self, key: &str, value: &T, ttl: Duration) -> Result<()>
    where
        T: Serialize + ?Sized + 'static,
    {
        let entry = self.encode(value, ttl)?;
        let _mutation = self.shared.guard.mutate(key);
        self.write_through(&[(key, entry)], None, 0)
            .await
            .pop()
            .unwrap_or(Ok(()))
    }

    /// The value under `key`; on a miss, runs `loader`, caches its value for
    /// `ttl` and returns it.
    ///
    /// However many callers miss the same key at once, one of them runs its
    /// loader and the others wait for that result. A loader error reaches
    /// every waiter and is not cached. If the caller running the loader is
    /// cancelled, a waiting caller runs its own loader; nobody hangs.
    ///
    /// If the key is deleted, invalidated or written while the loader runs,
    /// the loaded value is returned but not cached: it may already be stale.
    ///
    /// A tier whose read failed open in this call (a dead or hung Redis, an
    /// open breaker) is not written in it either, and counts as a failed
    /// write: a caller pays for a failing tier once, never a timeout on the
    /// read and another on the write.
    pub async fn get_or_compute<T, F, Fut, E>(
        &self,
        key: &str,
        ttl: Duration,
        loader: F,
    ) -> Result<T>
    where
        T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        self.compute(key, &[], ttl, loader).await
    }

    /// [`get_or_compute`](Self::get_or_compute) for a tagged value (see
    /// [`set_tagged`](Self::set_tagged)): the tag versions are read before
    /// the loader runs, so a tag invalidated while it runs leaves the loaded
    /// value stale from the start.
    pub async fn get_or_compute_tagged<T, F, Fut, E>(
        &self,
        key: &str,
        tags: &[&str],
        ttl: Duration,
        loader: F,
    ) -> Result<T>
    where
        T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        self.compute(key, tags, ttl, loader).await
    }

    async fn compute<T, F, Fut, E>(
        &self,
        key: &str,
        tags: &[&str],
        ttl: Duration,
        loader: F,
    ) -> Result<T>
    where
        T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        // Tiers whose read failed (a dead or hung Redis) are not written in
        // this call either: a caller pays for a failing tier once, not twice.
        let mut failed = 0;
        if let Some(value) = self.get_noting_failures::<T>(key, &mut failed).await? {
            return Ok(value);
        }
        let envelope = self.envelope::<T>();
        let counters = &self.shared.counters;
        let mut loader = Some(loader);
        loop {
            let leader = match self.shared.flights.join(key) {
                Role::Leader(leader) => leader,
                Role::Follower(follower) => match follower.wait().await {
                    // The leader went away without a result: try again, and
                    // perhaps lead this time.
                    None => continue,
                    Some(Err(error)) => {
                        counters.coalesced.incr();
                        return Err(error);
                    }
                    Some(Ok(shared)) => match shared.downcast::<T>() {
                        Ok(value) => {
                            counters.coalesced.incr();
                            return Ok(T::clone(&value));
                        }
                        // Another type was loaded under this key: load ours alone.
                        Err(_) => {
                            let loader = loader.take().expect("a follower never used its loader");
                            return self
                                .load(key, tags, ttl, envelope, loader, failed)
                                .await
                                .map(|v| T::clone(&v));
                        }
                    },
                },
            };
            // A flight that ended between our miss and our joining has filled
            // the top tier; look there before loading again.
            if let Some(value) = self
                .lookup::<T>(key, envelope, Some(1), None, &mut failed)
                .await?
            {
                counters.coalesced.incr();
                leader.finish(Ok(Arc::new(value.clone())));
                return Ok(value);
            }
            let loader = loader.take().expect("a caller leads at most once");
            let outcome = self.load(key, tags, ttl, envelope, loader, failed).await;
            leader.finish(
                outcome
                    .clone()
                    .map(|value| value as Arc<dyn Any + Send + Sync>),
            );
            return outcome.map(|value| T::clone(&value));
        }
    }

    /// Removes `key` from every tier; returns whether any tier held it.
    pub async fn delete(&self, key: &str) -> Result<bool> {
        self.delete_in(key, Reach::Everywhere).await
    }

    /// Removes every key matching `pattern` from every tier. Returns the
    /// largest number of keys one tier removed.
    ///
    /// Build patterns from user input with [`cache_core::escape`].
    pub async fn invalidate(&self, pattern: &Pattern) -> Result<u64> {
        self.invalidate_in(pattern, Reach::Everywhere).await
    }

    /// [`delete`](Self::delete), where a tier that fails is an error even
    /// when its policy fails open (or rejects the call): for callers that
    /// must know the removal reached every tier, such as an invalidation
    /// queue that retries until it has.
    pub async fn delete_strict(&self, key: &str) -> Result<bool> {
        self.delete_in(key, Reach::EverywhereStrict).await
    }

    /// [`invalidate`](Self::invalidate), where a tier that fails is an
    /// error even when its policy fails open (see
    /// [`delete_strict`](Self::delete_strict)).
    pub async fn invalidate_strict(&self, pattern: &Pattern) -> Result<u64> {
        self.invalidate_in(pattern, Reach::EverywhereStrict).await
    }

    /// Removes `key` from the tiers this process alone sees: those whose
    /// layer is not [shared](CacheLayer::is_shared). For an instance that
    /// learns of another instance's delete: that one has cleared the shared
    /// tiers already.
    pub async fn delete_local(&self, key: &str) -> Result<bool> {
        self.delete_in(key, Reach::Local).await
    }

    /// Removes every key matching `pattern` from the tiers this process
    /// alone sees (see [`delete_local`](Self::delete_local)).
    pub async fn invalidate_local(&self, pattern: &Pattern) -> Result<u64> {
        self.invalidate_in(pattern, Reach::Local).await
    }

    async fn delete_in(&self, key: &str, reach: Reach) -> Result<bool> {
        let _mutation = self.shared.guard.mutate(key);
        let mut existed = false;
        let mut first_error = None;
        for tier in self.tiers_in(reach) {
            match reach.outcome(tier, tier.call(tier.layer.delete(key)).await) {
                Ok(found) => existed |= found == Some(true),
                Err(error) => {
                    first_error.get_or_insert(error);
                }
            }
        }
        first_error.map_or(Ok(existed), |error| Err(error.into()))
    }

    async fn invalidate_in(&self, pattern: &Pattern, reach: Reach) -> Result<u64> {
        let _mutation = self.shared.guard.mutate_all();
        let mut removed = 0;
        let mut first_error = None;
        for tier in self.tiers_in(reach) {
            match reach.outcome(tier, tier.call(tier.layer.invalidate(pattern)).await) {
                Ok(count) => removed = removed.max(count.unwrap_or(0)),
                Err(error) => {
                    first_error.get_or_insert(error);
                }
            }
        }
        first_error.map_or(Ok(removed), |error| Err(error.into()))
    }

    /// The tiers `reach` covers, bottom (shared) first: removing there first
    /// means no upper tier can refill from a copy about to go.
    fn tiers_in(&self, reach: Reach) -> impl Iterator<Item = &Tier> {
        self.shared
            .tiers
            .iter()
            .rev()
            .filter(move |tier| reach != Reach::Local || !tier.layer.is_shared())
    }

    /// Reads several keys with one call per tier for the keys still missing.
    ///
    /// One result per key, in order: hits, misses and per-key failures stay
    /// apart. Hits from lower tiers are filled upward.
    pub async fn get_many<T>(&self, keys: &[&str]) -> Vec<Result<Option<T>>>
    where
        T: DeserializeOwned + Clone + Send + Sync + 'static,
    {
        let envelope = self.envelope::<T>();
        let shared = &*self.shared;
        let mut results: Vec<Result<Option<T>>> = keys.iter().map(|_| Ok(None)).collect();
        let mut missing: Vec<usize> = (0..keys.len()).collect();
        let mut tickets: Vec<Option<Ticket>> = vec![None; keys.len()];
        // (key index, depth found at, entry) for the fills.
        let mut found_below = Vec::new();
        for (depth, tier) in shared.tiers.iter().enumerate() {
            if missing.is_empty() {
                break;
            }
            if depth == 1 {
                for &i in &missing {
                    tickets[i] = Some(shared.guard.ticket(keys[i]));
                }
            }
            let batch: Vec<&str> = missing.iter().map(|&i| keys[i]).collect();
            let answers = match tier.call(batch_get(&*tier.layer, &batch)).await {
                Ok(Some(answers)) => answers,
                Ok(None) => continue,
                Err(error) => {
                    for &i in &missing {
                        results[i] = Err(error.clone().into());
                    }
                    missing.clear();
                    break;
                }
            };
            let mut answers = answers.into_iter();
            let mut still_missing = Vec::new();
            for &i in &missing {
                match answers.next().unwrap_or(Ok(None)) {
                    Ok(Some(entry)) => match envelope.decode::<S, T>(&shared.serializer, &entry) {
                        Some(Opened {
                            stamps: Some(stamps),
                            ..
                        }) if !self.tags_current(&stamps).await => {
                            self.discard_stale(tier, keys[i]).await;
                            still_missing.push(i);
                        }
                        Some(Opened { value, .. }) => {
                            tier.counters.hits.incr();
                            results[i] = Ok(Some(value));
                            if depth > 0 {
                                found_below.push((i, depth, entry));
                            }
                        }
                        None => {
                            self.discard_undecodable(tier, keys[i]).await;
                            still_missing.push(i);
                        }
                    },
                    Ok(None) => {
                        tier.counters.misses.incr();
                        still_missing.push(i);
                    }
                    Err(error) => match tier.on_key_failure(error) {
                        None => still_missing.push(i),
                        Some(error) => results[i] = Err(error.into()),
                    },
                }
            }
            missing = still_missing;
        }
        let hits = results.iter().filter(|r| matches!(r, Ok(Some(_)))).count();
        shared.counters.misses.add((keys.len() - hits) as u64);
        if !found_below.is_empty() {
            self.fill_many(keys, &found_below, &tickets).await;
        }
        results
    }

    /// Stores several values for `ttl`, with one call per tier. One result
    /// per value, in order.
    pub async fn set_many<T>(&self, items: &[(&str, T)], ttl: Duration) -> Vec<Result<()>>
    where
        T: Serialize + 'static,
    {
        let mut results: Vec<Result<()>> = Vec::with_capacity(items.len());
        let mut entries = Vec::with_capacity(items.len());
        let mut slots = Vec::with_capacity(items.len());
        for (key, value) in items {
            match self.encode(value, ttl) {
                Ok(entry) => {
                    slots.push(results.len());
                    entries.push((*key, entry));
                    results.push(Ok(()));
                }
                Err(error) => results.push(Err(error)),
            }
        }
        let _mutations: Vec<_> = entries
            .iter()
            .map(|(key, _)| self.shared.guard.mutate(key))
            .collect();
        let written = self.write_through(&entries, None, 0).await;
        for (slot, result) in slots.into_iter().zip(written) {
            results[slot] = result;
        }
        results
    }

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

    /// The clock every expiry is computed on.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.shared.clock
    }

    /// The layers, top first.
    pub fn layers(&self) -> impl Iterator<Item = &Arc<dyn CacheLayer>> {
        self.shared.tiers.iter().map(|tier| &tier.layer)
    }

    fn envelope<T: 'static + ?Sized>(&self) -> Envelope {
        let type_id = TypeId::of::<T>();
        // A linear scan: few types register a schema, and none is the norm.
        let schema = self
            .shared
            .schemas
            .iter()
            .find(|(id, _)| *id == type_id)
            .map_or(0, |(_, version)| *version);
        Envelope::new::<S>(schema)
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

    fn expiry(&self, ttl: Duration) -> Option<Instant> {
        self.shared.clock.now().checked_add(ttl)
    }

    /// Walks the tiers top-down (the first `depth_limit` of them, if set);
    /// fills the tiers above a lower hit. `top` is the top tier's answer if
    /// the caller already has it.
    async fn lookup<T>(
        &self,
        key: &str,
        envelope: Envelope,
        depth_limit: Option<usize>,
        mut top: Option<TierRead>,
        failed: &mut TierSet,
    ) -> Result<Option<T>>
    where
        T: DeserializeOwned + Clone + Send + Sync + 'static,
    {
        let shared = &*self.shared;
        let tiers = &shared.tiers[..depth_limit
            .unwrap_or(shared.tiers.len())
            .min(shared.tiers.len())];
        let mut ticket = None;
        for (depth, tier) in tiers.iter().enumerate() {
            if depth == 1 {
                // Before reading anything that may be copied upward.
                ticket = Some(shared.guard.ticket(key));
            }
            let answer = match top.take() {
                Some(answer) => answer,
                None => tier.read(key).await,
            };
            let Some(found) = answer? else {
                *failed |= 1 << depth;
                continue;
            };
            let Some(entry) = found else {
                tier.counters.misses.incr();
                continue;
            };
            let Some(opened) = envelope.decode::<S, T>(&shared.serializer, &entry) else {
                self.discard_undecodable(tier, key).await;
                continue;
            };
            if let Some(stamps) = &opened.stamps
                && !self.tags_current(stamps).await
            {
                self.discard_stale(tier, key).await;
                continue;
            }
            let value = opened.value;
            // The overall hit count is the sum of the tiers' (see `stats`);
            // a partial walk is get_or_compute re-checking, counted as coalesced.
            if depth_limit.is_none() {
                tier.counters.hits.incr();
            }
            if let Some(ticket) = ticket {
                self.fill(key, &entry, depth, &ticket).await;
            }
            return Ok(Some(value));
        }
        // A partial walk is get_or_compute re-checking the top tier: not a read of its own.
        if depth_limit.is_none() {
            shared.counters.misses.incr();
        }
        Ok(None)
    }

    /// A tagged value one of whose tags was invalidated since it was
    /// written: a miss, and removed from the tier.
    async fn discard_stale(&self, tier: &Tier, key: &str) {
        tier.counters.tag_stale.incr();
        tier.counters.misses.incr();
        let _ = tier.call(tier.layer.delete(key)).await;
    }

    async fn discard_undecodable(&self, tier: &Tier, key: &str) {
        tier.counters.undecodable.incr();
        tier.counters.misses.incr();
        // Failures are already counted by the tier; the read is a miss either way.
        let _ = tier.call(tier.layer.delete(key)).await;
    }

    /// Copies `entry`, found at `depth`, into the tiers above it, nearest
    /// first, as long as `ticket` says no mutation of the key intervened.
    async fn fill(&self, key: &str, entry: &Entry, depth: usize, ticket: &Ticket) {
        let shared = &*self.shared;
        let now = shared.clock.now();
        for tier in shared.tiers[..depth].iter().rev() {
            if !shared.guard.still_valid(ticket) {
                tier.counters.fills_discarded.incr();
                return;
            }
            let capped = tier.cap(entry.clone(), now);
            if !matches!(tier.call(tier.layer.set(key, capped)).await, Ok(Some(()))) {
                continue;
            }
            if !self.keep_fill(tier, key, ticket).await {
                return;
            }
        }
    }

    /// After writing a fill into `tier`: keeps it if the ticket still
    /// holds, removes it otherwise. Returns whether it was kept.
    async fn keep_fill(&self, tier: &Tier, key: &str, ticket: &Ticket) -> bool {
        if self.shared.guard.still_valid(ticket) {
            tier.counters.fills.incr();
            return true;
        }
        tier.counters.fills_discarded.incr();
        let _ = tier.call(tier.layer.delete(key)).await;
        false
    }

    async fn fill_many(
        &self,
        keys: &[&str],
        found_below: &[(usize, usize, Entry)],
        tickets: &[Option<Ticket>],
    ) {
        let shared = &*self.shared;
        let now = shared.clock.now();
        for (depth, tier) in shared.tiers.iter().enumerate().rev() {
            let fills: Vec<(usize, Entry)> = found_below
                .iter()
                .filter(|(i, found_at, _)| {
                    *found_at > depth && tickets[*i].is_some_and(|t| shared.guard.still_valid(&t))
                })
                .map(|(i, _, entry)| (*i, tier.cap(entry.clone(), now)))
                .collect();
            if fills.is_empty() {
                continue;
            }
            let batch: Vec<(&str, Entry)> = fills
                .iter()
                .map(|(i, entry)| (keys[*i], entry.clone()))
                .collect();
            let Ok(Some(written)) = tier.call(batch_set(&*tier.layer, &batch)).await else {
                continue;
            };
            for ((i, _), result) in fills.iter().zip(written) {
                if result.is_ok() {
                    let ticket = tickets[*i].expect("filled keys have tickets");
                    self.keep_fill(tier, keys[*i], &ticket).await;
                }
            }
        }
    }

    /// Writes entries through every tier, lowest first. When a tier fails
    /// for a key, the tiers above it drop that key rather than take a value
    /// the lower tier lacks (or, with a degraded TTL and a failure the
    /// policy ignores, take it for that long). With a ticket (loader
    /// results), a write that a concurrent mutation overtook is undone and
    /// goes no further up.
    pub(crate) async fn write_through(
        &self,
        entries: &[(&str, Entry)],
        ticket: Option<&Ticket>,
        skip: TierSet,
    ) -> Vec<Result<()>> {
        let shared = &*self.shared;
        let now = shared.clock.now();
        let mut results: Vec<Result<()>> = entries.iter().map(|_| Ok(())).collect();
        let mut state = vec![Written::Fully; entries.len()];
        for (depth, tier) in shared.tiers.iter().enumerate().rev() {
            let batch: Vec<(usize, (&str, Entry))> = entries
                .iter()
                .enumerate()
                .filter_map(|(i, (key, entry))| {
                    let entry = tier.cap(entry.clone(), now);
                    match (state[i], shared.degraded_ttl) {
                        (Written::Fully, _) => Some((i, (*key, entry))),
                        (Written::Degraded, Some(ttl)) => Some((i, (*key, entry.capped(now, ttl)))),
                        _ => None,
                    }
                })
                .collect();
            let dead: Vec<&str> = entries
                .iter()
                .enumerate()
                .filter(|(i, _)| state[*i] == Written::Stopped)
                .map(|(_, (key, _))| *key)
                .collect();
            for key in dead {
                let _ = tier.call(tier.layer.delete(key)).await;
            }
            if batch.is_empty() {
                continue;
            }
            if skip & (1 << depth) != 0 {
                // Failed open earlier in this call: a failed write, not retried.
                for (i, _) in &batch {
                    state[*i] = match shared.degraded_ttl {
                        Some(_) => Written::Degraded,
                        None => Written::Stopped,
                    };
                }
                continue;
            }
            let outcomes: Vec<Result<Option<()>, cache_core::Error>> =
                if let [(_, (key, entry))] = &batch[..] {
                    vec![tier.call(tier.layer.set(key, entry.clone())).await]
                } else {
                    let pairs: Vec<(&str, Entry)> =
                        batch.iter().map(|(_, pair)| pair.clone()).collect();
                    match tier.call(batch_set(&*tier.layer, &pairs)).await {
                        Ok(Some(per_key)) => per_key
                            .into_iter()
                            .map(|result| match result {
                                Ok(()) => Ok(Some(())),
                                Err(error) => tier.on_key_failure(error).map_or(Ok(None), Err),
                            })
                            .collect(),
                        other => batch.iter().map(|_| other.clone().map(|_| None)).collect(),
                    }
                };
            for ((i, (key, _)), outcome) in batch.iter().zip(outcomes) {
                match outcome {
                    Ok(Some(())) => {
                        if let Some(ticket) = ticket
                            && !self.keep_fill(tier, key, ticket).await
                        {
                            state[*i] = Written::Stopped;
                        }
                    }
                    // Failed and ignored: the tiers above drop the key, or
                    // hold the value briefly if degraded writes are on.
                    Ok(None) if shared.degraded_ttl.is_some() => state[*i] = Written::Degraded,
                    Ok(None) => state[*i] = Written::Stopped,
                    Err(error) => {
                        state[*i] = Written::Stopped;
                        results[*i] = Err(error.into());
                    }
                }
            }
        }
        results
    }

    /// Runs a loader and caches its value (unless the key changed
    /// meanwhile), skipping the tiers in `failed`.
    async fn load<T, F, Fut, E>(
        &self,
        key: &str,
        tags: &[&str],
        ttl: Duration,
        envelope: Envelope,
        loader: F,
        failed: TierSet,
    ) -> Result<Arc<T>>
    where
        T: Serialize + Send + Sync + 'static,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let shared = &*self.shared;
        shared.counters.loads.incr();
        let ticket = shared.guard.ticket(key);
        // Before the loader: what it reads is at least as new as these.
        let stamps = self.stamp(tags).await?;
        let loaded = match shared.loader_timeout {
            None => loader().await,
            Some(limit) => match tokio::time::timeout(limit, loader()).await {
                Ok(loaded) => loaded,
                Err(_elapsed) => {
                    shared.counters.load_errors.incr();
                    return Err(Error::LoaderTimeout(limit));
                }
            },
        };
        let value = match loaded {
            Ok(value) => Arc::new(value),
            Err(error) => {
                shared.counters.load_errors.incr();
                return Err(Error::Loader(Arc::from(error.into())));
            }
        };
        let entry = Entry::new(envelope.encode_tagged(&shared.serializer, &*value, &stamps)?)
            .expires_at(self.expiry(ttl));
        envelope.remember(&entry, value.clone());
        if shared.guard.still_valid(&ticket) {
            for result in self
                .write_through(&[(key, entry)], Some(&ticket), failed)
                .await
            {
                result?;
            }
        }
        Ok(value)
    }
}

/// A set of tiers by depth, one bit each (a cache has at most 64 tiers).
type TierSet = u64;

/// How far a write-through got, per entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Written {
    /// Every tier so far took it.
    Fully,
    /// A lower tier failed and fails open; the tiers above take the value
    /// for at most the degraded TTL.
    Degraded,
    /// A lower tier failed (or a racing mutation overtook the write); the
    /// tiers above drop the key.
    Stopped,
}

/// `get_many` as one tier call: a batch in which every key failed counts as
/// a failed call, so that the failure policy sees it.
async fn batch_get(
    layer: &dyn CacheLayer,
    keys: &[&str],
) -> cache_core::Result<Vec<cache_core::Result<Option<Entry>>>> {
    let answers = layer.get_many(keys).await;
    all_failed(&answers).map_or(Ok(answers), Err)
}

async fn batch_set(
    layer: &dyn CacheLayer,
    entries: &[(&str, Entry)],
) -> cache_core::Result<Vec<cache_core::Result<()>>> {
    let answers = layer.set_many(entries).await;
    all_failed(&answers).map_or(Ok(answers), Err)
}

fn all_failed<T>(answers: &[cache_core::Result<T>]) -> Option<cache_core::Error> {
    match answers.first() {
        Some(Err(first)) if answers.iter().all(Result::is_err) => Some(first.clone()),
        _ => None,
    }
}

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
    /// waiting on it get [`Error::LoaderTimeout`]. Needs tokio's time
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

/// Which tiers a removal reaches, and what counts as failing.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Reach {
    /// Every tier; a failure the tier's policy ignores is ignored.
    Everywhere,
    /// Every tier; any failure is an error.
    EverywhereStrict,
    /// Only the tiers whose layer is not shared with other processes.
    Local,
}

impl Reach {
    /// A tier call's outcome as this reach sees it: strict turns a failure
    /// the policy ignored (`Ok(None)`) into an error.
    fn outcome<T>(
        self,
        tier: &Tier,
        outcome: Result<Option<T>, cache_core::Error>,
    ) -> Result<Option<T>, cache_core::Error> {
        match outcome {
            Ok(None) if self == Reach::EverywhereStrict => Err(cache_core::Error::unavailable(
                tier.layer.name().to_owned(),
                "failed (its policy fails open)",
            )),
            outcome => outcome,
        }
    }
}
