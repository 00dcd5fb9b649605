//! An in-process cache layer on [quick_cache], bounded by both an entry count
//! and a byte budget, with per-entry expiry.
//!
//! [`MemoryLayer`] implements [`CacheLayer`], so it stacks under
//! `cache-tiered` as the L1 above a shared tier, or serves alone.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use cache_core::{CacheLayer, CallContext, Entry, Operation};
//! use cache_memory::MemoryLayer;
//!
//! # futures::executor::block_on(async {
//! let l1 = MemoryLayer::builder()
//!     .max_entries(10_000)
//!     .max_bytes(64 << 20)
//!     .build()?;
//! // A composer passes its own context; alone, a layer is called with one
//! // on the system clock.
//! let (write, read) = (CallContext::system(Operation::Write), CallContext::system(Operation::Read));
//! let entry = Entry::new(&b"4.5"[..]).expires_at(Instant::now() + Duration::from_secs(300));
//! l1.set(&write, "rating:offer:7", entry).await?;
//! assert!(l1.get(&read, "rating:offer:7").await?.is_some());
//! # Ok::<(), cache_core::Error>(())
//! # }).unwrap();
//! ```
//!
//! # How it works
//! - **Two bounds, one weight.** quick_cache evicts by a single weight. Each
//!   entry weighs its key and value bytes, but never less than
//!   `max_bytes / max_entries`, so the byte budget also caps the number of
//!   entries. The `bytes` statistic reports the true key + value bytes.
//! - **Oversized values are refused, not lost.** quick_cache splits the
//!   budget across shards and silently drops an item heavier than about one
//!   shard's share. This layer checks the weight first and refuses such a
//!   value with [`Error::ValueTooLarge`] (counted in `rejections`), removing
//!   any older value under the key. Fewer [`shards`](MemoryLayerBuilder::shards)
//!   allow larger values.
//! - **Expiry.** quick_cache has no TTL. An expired entry is never returned:
//!   `get` checks the expiry against the clock of the call's
//!   [`CallContext`] (the composer's clock) and removes the entry. A
//!   background thread sweeps expired entries (by the builder's
//!   [`clock`](MemoryLayerBuilder::clock)) every
//!   [`sweep_interval`](MemoryLayerBuilder::sweep_interval) and stops when the
//!   layer is dropped.
//! - **No stalls.** A sweep, and a removal by pattern, visit the entries one
//!   at a time under a read lock that reads share, and write-lock a shard
//!   only to remove one entry: reads never wait behind a walk of a whole
//!   shard (at a million entries, quick_cache's `retain` holds each shard
//!   for milliseconds).
//!
//! [quick_cache]: https://docs.rs/quick_cache
#![forbid(unsafe_code)]

use std::cell::Cell;
use std::fmt;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::thread::Thread;
use std::time::Duration;

use cache_core::{
    CacheLayer, CallContext, Clock, Counter, Entry, Error, LayerStats, Lookups, Pattern, ReadNow,
    Result, WriteNow, Writes, async_trait, system_clock,
};
use quick_cache::sync::{Cache, EntryAction};
use quick_cache::{DefaultHashBuilder, Lifecycle, OptionsBuilder, Weighter};
use smallvec::SmallVec;

/// The share of each shard quick_cache lets one item take (its "hot
/// allocation"); set explicitly so the oversize limit is known exactly.
const HOT_ALLOCATION: f64 = 0.97;

/// Keys are `Arc<str>`: one allocation on insert, as a `String` would be,
/// and a reference count (not a copy) when a sweep walks the entries.
type Store = Cache<Arc<str>, Entry, EntryWeighter, DefaultHashBuilder, EvictionLog>;

/// An in-process cache layer. Cheap to clone: clones share the same store.
#[derive(Clone)]
pub struct MemoryLayer {
    inner: Arc<Inner>,
}

struct Inner {
    name: Arc<str>,
    store: Store,
    clock: Arc<dyn Clock>,
    /// The heaviest entry (key + value) the store admits. Build checks that
    /// the weighter's minimum weight is below it.
    max_weight: u64,
    /// Key + value bytes held now (may dip below zero transiently under races).
    bytes: AtomicI64,
    counters: Counters,
    sweeper: OnceLock<Thread>,
    /// Set by the sweeper thread as it exits, so tests can see it stop.
    #[cfg(test)]
    sweeper_exited: Arc<std::sync::atomic::AtomicBool>,
}

struct Counters {
    hits: Counter,
    misses: Counter,
    sets: Counter,
    removals: Counter,
    evictions: Counter,
    expirations: Counter,
    rejections: Counter,
}

impl Counters {
    /// Counters that count, or (`on == false`) read zero and cost a branch.
    fn new(on: bool) -> Self {
        Counters {
            hits: Counter::on_if(on),
            misses: Counter::on_if(on),
            sets: Counter::on_if(on),
            removals: Counter::on_if(on),
            evictions: Counter::on_if(on),
            expirations: Counter::on_if(on),
            rejections: Counter::on_if(on),
        }
    }
}

impl MemoryLayer {
    /// A layer with default bounds (100,000 entries, 128 MiB).
    ///
    /// # Panics
    /// If the operating system cannot start the sweeper thread; use
    /// [`builder`](MemoryLayer::builder) to get that as an error instead.
    pub fn new() -> Self {
        Self::builder()
            .build()
            .expect("the default configuration is valid, and a sweeper thread could be started")
    }

    /// Starts a builder.
    pub fn builder() -> MemoryLayerBuilder {
        MemoryLayerBuilder::default()
    }

    /// The largest entry, key and value bytes together, this layer accepts.
    pub fn max_entry_bytes(&self) -> u64 {
        self.inner.max_weight
    }

    /// Removes every expired entry now; returns how many were removed.
    ///
    /// The background sweeper calls this periodically; tests driving a
    /// [`ManualClock`](cache_core::ManualClock) can call it directly.
    pub fn sweep_expired(&self) -> u64 {
        self.inner.sweep_expired()
    }

    /// The number of entries held now.
    pub fn len(&self) -> usize {
        self.inner.store.len()
    }

    /// Whether the layer holds no entries.
    pub fn is_empty(&self) -> bool {
        self.inner.store.is_empty()
    }

    /// Removes every entry.
    pub fn clear(&self) {
        let removed = self.inner.remove_all();
        self.inner.counters.removals.add(removed);
    }

    #[inline(always)]
    fn lookup(&self, clock: &dyn Clock, key: &str) -> Option<Entry> {
        let inner = &*self.inner;
        let Some(entry) = inner.store.get(key) else {
            inner.counters.misses.incr();
            return None;
        };
        // Read the clock only for entries that can expire: the hit path is hot.
        if entry.has_expired(clock) {
            inner.expired(key, &entry);
            return None;
        }
        inner.counters.hits.incr();
        Some(entry)
    }

    fn store(&self, clock: &dyn Clock, key: &str, entry: Entry) -> Result<()> {
        let inner = &*self.inner;
        if entry.is_expired(clock.now()) {
            // Storing a dead entry is the same as removing the key.
            self.delete_now(key);
            return Ok(());
        }
        let size = weigh(key, &entry);
        if size > inner.max_weight {
            // quick_cache would drop it silently; refuse it out loud, and make
            // sure the previous value under the key is not left readable.
            self.delete_now(key);
            inner.counters.rejections.incr();
            return Err(Error::ValueTooLarge {
                layer: inner.name.clone(),
                size,
                limit: inner.max_weight,
            });
        }
        let mut evicted = SmallVec::new();
        inner
            .store
            .insert_with_lifecycle(Arc::from(key), entry, &mut evicted);
        inner.bytes.fetch_add(size as i64, Ordering::Relaxed);
        inner.counters.sets.incr();
        let now = (!evicted.is_empty()).then(|| clock.now());
        for (evicted_key, evicted_entry) in evicted {
            inner.forget_bytes(&evicted_key, &evicted_entry);
            if &*evicted_key == key {
                // The value this insert replaced: neither evicted nor expired.
                continue;
            }
            match now {
                Some(now) if evicted_entry.is_expired(now) => inner.counters.expirations.incr(),
                _ => inner.counters.evictions.incr(),
            }
        }
        Ok(())
    }

    fn delete_now(&self, key: &str) -> bool {
        let inner = &*self.inner;
        match inner.store.remove(key) {
            Some((_, removed)) => {
                inner.forget_bytes(key, &removed);
                inner.counters.removals.incr();
                true
            }
            None => false,
        }
    }
}

impl Inner {
    /// A read found `entry` under `key` past its expiry: a miss, and the
    /// entry goes (unless a newer one replaced it meanwhile).
    #[cold]
    fn expired(&self, key: &str, entry: &Entry) {
        if let Some((_, removed)) = self.store.remove_if(key, |stored| stored.ptr_eq(entry)) {
            self.forget_bytes(key, &removed);
            self.counters.expirations.incr();
        }
        self.counters.misses.incr();
    }

    fn forget_bytes(&self, key: &str, entry: &Entry) {
        self.bytes
            .fetch_sub(weigh(key, entry) as i64, Ordering::Relaxed);
    }

    /// Removes the entries `doomed` selects, one at a time; returns how many.
    ///
    /// quick_cache's `retain` would hold each shard's write lock while it
    /// visits every entry of the shard: at a million entries, milliseconds
    /// in which no read of that shard gets through. This walks the entries
    /// under a read lock taken per entry (which reads share), and takes the
    /// write lock only to remove one entry, and only if it is still the
    /// entry that was judged (a newer value written meanwhile stays).
    fn remove_where(&self, doomed: impl Fn(&str, &Entry) -> bool) -> u64 {
        let mut removed = 0;
        for (key, entry) in self.store.iter() {
            if !doomed(&key, &entry) {
                continue;
            }
            if let Some((key, gone)) = self.store.remove_if(&*key, |stored| stored.ptr_eq(&entry)) {
                self.forget_bytes(&key, &gone);
                removed += 1;
            }
        }
        removed
    }

    /// Removes every entry, shard by shard under its write lock: for
    /// [`MemoryLayer::clear`], where readers have nothing left to find.
    fn remove_all(&self) -> u64 {
        let removed = Cell::new(0u64);
        let freed = Cell::new(0u64);
        self.store.retain(|key, entry| {
            removed.set(removed.get() + 1);
            freed.set(freed.get() + weigh(key, entry));
            false
        });
        self.bytes.fetch_sub(freed.get() as i64, Ordering::Relaxed);
        removed.get()
    }

    fn sweep_expired(&self) -> u64 {
        let now = self.clock.now();
        let removed = self.remove_where(|_, entry| entry.is_expired(now));
        self.counters.expirations.add(removed);
        removed
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Wake the sweeper so it notices its owner is gone and exits now.
        if let Some(thread) = self.sweeper.get() {
            thread.unpark();
        }
    }
}

/// Key and value bytes: what the byte budget and the `bytes` statistic count.
fn weigh(key: &str, entry: &Entry) -> u64 {
    (key.len() + entry.len()) as u64
}

#[derive(Clone)]
struct EntryWeighter {
    /// `max_bytes / max_entries`, so that the byte budget also bounds the count.
    min_weight: Arc<AtomicU64>,
}

impl Weighter<Arc<str>, Entry> for EntryWeighter {
    fn weight(&self, key: &Arc<str>, entry: &Entry) -> u64 {
        weigh(key, entry).max(self.min_weight.load(Ordering::Relaxed))
    }
}

/// Collects what an insert pushed out, so the caller can count it.
#[derive(Clone, Default)]
struct EvictionLog;

impl Lifecycle<Arc<str>, Entry> for EvictionLog {
    /// An insert into a full L1 evicts one entry or two (more only for a
    /// heavy value): kept inline, so that a fill allocates no list.
    type RequestState = SmallVec<[(Arc<str>, Entry); 2]>;

    fn on_evict(&self, evicted: &mut Self::RequestState, key: Arc<str>, entry: Entry) {
        evicted.push((key, entry));
    }
}

#[async_trait]
impl CacheLayer for MemoryLayer {
    fn name(&self) -> &str {
        &self.inner.name
    }

    async fn get_many(&self, ctx: &CallContext<'_>, keys: &[&str]) -> Result<Lookups> {
        Ok(keys
            .iter()
            .map(|key| Ok(self.lookup(ctx.clock(), key)))
            .collect())
    }

    async fn set_many(&self, ctx: &CallContext<'_>, entries: &[(&str, Entry)]) -> Result<Writes> {
        Ok(entries
            .iter()
            .map(|(key, entry)| self.store(ctx.clock(), key, entry.clone()))
            .collect())
    }

    async fn delete_many(&self, _ctx: &CallContext<'_>, keys: &[&str]) -> Result<u64> {
        Ok(keys.iter().filter(|key| self.delete_now(key)).count() as u64)
    }

    async fn invalidate(&self, _ctx: &CallContext<'_>, pattern: &Pattern) -> Result<u64> {
        if let Some(key) = pattern.literal() {
            return Ok(u64::from(self.delete_now(key)));
        }
        let removed = self.inner.remove_where(|key, _| pattern.matches(key));
        self.inner.counters.removals.add(removed);
        Ok(removed)
    }

    // The single-key calls skip the batch's Vec: an L1 is all hot path.
    async fn get(&self, ctx: &CallContext<'_>, key: &str) -> Result<Option<Entry>> {
        Ok(self.lookup(ctx.clock(), key))
    }

    async fn set(&self, ctx: &CallContext<'_>, key: &str, entry: Entry) -> Result<()> {
        self.store(ctx.clock(), key, entry)
    }

    async fn delete(&self, _ctx: &CallContext<'_>, key: &str) -> Result<bool> {
        Ok(self.delete_now(key))
    }

    fn get_now(&self, clock: &dyn Clock, key: &str) -> ReadNow {
        match self.lookup(clock, key) {
            Some(entry) => ReadNow::Hit(entry),
            None => ReadNow::Miss,
        }
    }

    fn set_now(&self, ctx: &CallContext<'_>, key: &str, entry: Entry) -> WriteNow {
        WriteNow::Done(self.store(ctx.clock(), key, entry))
    }

    fn replace_now(&self, key: &str, current: &Entry, replacement: &dyn Fn() -> Entry) -> bool {
        let replacement = replacement();
        let (new, old) = (replacement.value(), current.value());
        // The same buffer (a copy made from the entry) spares comparing bytes.
        let same_bytes = (new.as_ptr() == old.as_ptr() && new.len() == old.len()) || new == old;
        if !same_bytes || replacement.expiry() != current.expiry() {
            return false;
        }
        let mut replaced = false;
        // quick_cache's `entry` swaps the value under the shard's write lock
        // (weighing it again: the same weight), and it asks for the key as
        // stored. On a key that holds nothing it leaves a placeholder for
        // an instant (dropped at once, unfilled); `Duration::ZERO`: a swap
        // never waits on another's.
        let key: Arc<str> = Arc::from(key);
        let _ = self
            .inner
            .store
            .entry(&key, Some(Duration::ZERO), |_, stored| {
                if stored.ptr_eq(current) {
                    *stored = replacement;
                    replaced = true;
                }
                EntryAction::Retain(())
            });
        replaced
    }

    fn stats(&self) -> LayerStats {
        let inner = &*self.inner;
        let counters = &inner.counters;
        let mut stats = LayerStats::default();
        stats.hits = counters.hits.get();
        stats.misses = counters.misses.get();
        stats.sets = counters.sets.get();
        stats.removals = counters.removals.get();
        stats.evictions = counters.evictions.get();
        stats.expirations = counters.expirations.get();
        stats.rejections = counters.rejections.get();
        stats.entries = inner.store.len() as u64;
        stats.bytes = inner.bytes.load(Ordering::Relaxed).max(0) as u64;
        stats
    }
}

impl Default for MemoryLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for MemoryLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryLayer")
            .field("name", &self.inner.name)
            .field("entries", &self.inner.store.len())
            .field("capacity", &self.inner.store.capacity())
            .field("max_entry_bytes", &self.inner.max_weight)
            .finish()
    }
}

/// Configures a [`MemoryLayer`].
///
/// ```
/// # use std::time::Duration;
/// use cache_memory::MemoryLayer;
///
/// let l1 = MemoryLayer::builder()
///     .name("l1")
///     .max_entries(50_000)
///     .max_bytes(32 << 20)
///     .sweep_interval(Some(Duration::from_secs(10)))
///     .build()
///     .unwrap();
/// assert!(l1.max_entry_bytes() > 1 << 20);
/// ```
#[must_use]
pub struct MemoryLayerBuilder {
    name: Arc<str>,
    max_entries: u64,
    max_bytes: u64,
    shards: Option<usize>,
    clock: Arc<dyn Clock>,
    sweep_interval: Option<Duration>,
    stats: bool,
}

impl Default for MemoryLayerBuilder {
    fn default() -> Self {
        MemoryLayerBuilder {
            name: Arc::from("memory"),
            max_entries: 100_000,
            max_bytes: 128 << 20,
            shards: None,
            clock: system_clock(),
            sweep_interval: Some(Duration::from_secs(5)),
            stats: true,
        }
    }
}

impl MemoryLayerBuilder {
    /// The layer's name in stats and errors. Default: `"memory"`.
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = name.into();
        self
    }

    /// The most entries held at once (at least 2). Default: 100,000.
    pub fn max_entries(mut self, max_entries: u64) -> Self {
        self.max_entries = max_entries;
        self
    }

    /// The byte budget for keys and values. Default: 128 MiB.
    pub fn max_bytes(mut self, max_bytes: u64) -> Self {
        self.max_bytes = max_bytes;
        self
    }

    /// The number of internal shards (rounded up to a power of two). More
    /// shards mean less lock contention; fewer mean a larger largest value,
    /// since one value may take at most 97% of one shard's share of the
    /// budget. Default: quick_cache's choice (4 per core, fewer for small
    /// caches).
    pub fn shards(mut self, shards: usize) -> Self {
        self.shards = Some(shards);
        self
    }

    /// The clock the background sweeper (and [`MemoryLayer::sweep_expired`])
    /// judges expiry by. Calls judge it by the clock of their
    /// [`CallContext`]: give both the composer's clock. Default: the system
    /// clock.
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// How often a background thread removes expired entries; `None` turns
    /// it off (expired entries are still never returned, only reclaimed
    /// later). Default: every 5 seconds.
    pub fn sweep_interval(mut self, interval: Option<Duration>) -> Self {
        self.sweep_interval = interval;
        self
    }

    /// Whether the layer counts hits, misses, sets and the rest
    /// ([`CacheLayer::stats`]; entries and bytes are always known).
    /// Default: on. Off spares each call a counter increment, for the
    /// last few percent of an L1 hit (with the composer's own
    /// `TieredCacheBuilder::stats(false)`).
    pub fn stats(mut self, on: bool) -> Self {
        self.stats = on;
        self
    }

    /// Builds the layer, starting the sweeper thread if one is configured.
    pub fn build(self) -> Result<MemoryLayer> {
        if self.max_entries < 2 {
            return Err(Error::config(
                "memory layer: max_entries must be at least 2",
            ));
        }
        if self.max_bytes == 0 {
            return Err(Error::config("memory layer: max_bytes must be above zero"));
        }
        if self
            .sweep_interval
            .is_some_and(|interval| interval.is_zero())
        {
            return Err(Error::config(
                "memory layer: sweep_interval must be above zero (or None to turn it off)",
            ));
        }
        let mut options = OptionsBuilder::new();
        options
            .estimated_items_capacity(usize::try_from(self.max_entries).unwrap_or(usize::MAX))
            .weight_capacity(self.max_bytes)
            .hot_allocation(HOT_ALLOCATION);
        if let Some(shards) = self.shards {
            options.shards(shards.max(1));
        }
        let options = options
            .build()
            .map_err(|error| Error::config(format!("memory layer: {error:?}")))?;
        let weighter = EntryWeighter {
            min_weight: Arc::new(AtomicU64::new(0)),
        };
        let store = Cache::with_options(
            options,
            weighter.clone(),
            DefaultHashBuilder::default(),
            EvictionLog,
        );
        // Now that the shard geometry is known: the heaviest admissible item
        // (quick_cache's own rule), and the minimum weight that turns the
        // byte budget into an entry bound as well.
        let shard_capacity = store.shard_capacity();
        let max_weight = ((shard_capacity as f64 * HOT_ALLOCATION) as u64)
            .clamp(shard_capacity.min(1), shard_capacity);
        let total_capacity = shard_capacity * store.num_shards() as u64;
        let min_weight = total_capacity.div_ceil(self.max_entries);
        if min_weight > max_weight {
            return Err(Error::config(format!(
                "memory layer: max_bytes {} is too small for max_entries {} over {} shards",
                self.max_bytes,
                self.max_entries,
                store.num_shards()
            )));
        }
        weighter.min_weight.store(min_weight, Ordering::Relaxed);
        let inner = Arc::new(Inner {
            name: self.name,
            store,
            clock: self.clock,
            max_weight,
            bytes: AtomicI64::new(0),
            counters: Counters::new(self.stats),
            sweeper: OnceLock::new(),
            #[cfg(test)]
            sweeper_exited: Arc::default(),
        });
        if let Some(interval) = self.sweep_interval {
            spawn_sweeper(&inner, interval)?;
        }
        Ok(MemoryLayer { inner })
    }
}

impl fmt::Debug for MemoryLayerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryLayerBuilder")
            .field("name", &self.name)
            .field("max_entries", &self.max_entries)
            .field("max_bytes", &self.max_bytes)
            .field("shards", &self.shards)
            .field("sweep_interval", &self.sweep_interval)
            .field("stats", &self.stats)
            .finish()
    }
}

/// Starts the thread that reclaims expired entries. It holds only a weak
/// reference, so it never keeps the layer alive, and exits as soon as the
/// layer is dropped (the drop wakes it).
fn spawn_sweeper(inner: &Arc<Inner>, interval: Duration) -> Result<()> {
    let weak: Weak<Inner> = Arc::downgrade(inner);
    #[cfg(test)]
    let exited = inner.sweeper_exited.clone();
    let handle = std::thread::Builder::new()
        .name(format!("{}-sweeper", inner.name))
        .spawn(move || {
            #[cfg(test)]
            let _exit_signal = ExitSignal(exited);
            loop {
                std::thread::park_timeout(interval);
                let Some(inner) = weak.upgrade() else { break };
                let removed = inner.sweep_expired();
                if removed > 0 {
                    tracing::trace!(layer = %inner.name, removed, "swept expired entries");
                }
            }
        })
        .map_err(|error| Error::config(format!("memory layer: cannot start sweeper: {error}")))?;
    let _ = inner.sweeper.set(handle.thread().clone());
    Ok(())
}

/// Raises the sweeper's exit flag when its thread ends, however it ends.
#[cfg(test)]
struct ExitSignal(Arc<std::sync::atomic::AtomicBool>);

#[cfg(test)]
impl Drop for ExitSignal {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests;
