//! Model-based property tests of the composer: random operations on
//! `TieredCache`s over memory tiers, checked after every step against two
//! reference models.
//!
//! - The *contract* (`Harness::contract`): the value each key has, by the
//!   book. Every value a read returns and every value a tier holds must be
//!   it, never one that was deleted, invalidated, overwritten or has
//!   expired; the one exception is documented by [`Stale`].
//! - The *stores* (`Store::model`): what each memory layer holds by the
//!   rules of the composer (write-through, fills capped by each tier's
//!   `ttl_cap`, removals). After every step every layer is compared with its
//!   model, value and expiry; a read must return what the topmost tier
//!   holding the key holds. So a miss is accepted only where something
//!   dropped the key from every tier: an `Evict`, expiry, a ttl cap, the size
//!   bound of the one small tier, or a fill that a racing mutation cancelled.
//!   The other tiers are sized so that nothing is evicted by size, and that
//!   is asserted.
//!
//! Races are staged deterministically, on one thread: a read held in a lower
//! tier (`HoldableLayer`) while a mutation runs; a loader that runs a
//! mutation; a loader paused on a oneshot while a mutation completes and
//! later callers come. The nondeterminism left is the fill guard's striping:
//! a mutation of another key may share the key's stripe and cancel its fill.
//! The model allows either outcome ([`Fate::Maybe`]) and learns which one
//! happened from the next comparison with the layers.
//!
//! Loaders read a "database": the key's value by the contract if it has a
//! live one, a fresh value otherwise. Written values are below [`LOADED`],
//! fresh loaded ones at or above it.

use std::cell::Cell;
use std::future::Ready;
use std::io;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cache_core::{CacheLayer, CallContext, Clock, ManualClock, Operation, Pattern};
use cache_memory::MemoryLayer;
use cache_test_support::ctx;
use cache_test_support::layers::{HoldableLayer, SharedLayer};
use cache_test_support::model::Model;
use cache_tiered::{Removal, Tier, TieredCache};
use futures::FutureExt;
use futures::executor::block_on;
use proptest::prelude::*;
use proptest::test_runner::TestCaseResult;
use tokio::sync::oneshot;

const KEYS: &[&str] = &["offer:1", "offer:2", "offer:[3]", "user:1", "user:*"];
const PATTERNS: &[&str] = &["offer:*", "offer:\\[3]", "user:\\*", "*:1", "user:?", "*"];
/// Values written with `set` are below it; fresh values loaders read are at
/// or above it.
const LOADED: u32 = 1 << 31;
/// How long the loads of the staged races cache their value.
const LOAD_TTL: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
enum Mutation {
    Set { key: usize, value: u32, ttl_ms: u64 },
    Delete { key: usize },
    Invalidate { pattern: usize },
}

impl Mutation {
    /// Whether it changes the value of `key`.
    fn touches(&self, key: &str) -> bool {
        match *self {
            Mutation::Set { key: k, .. } | Mutation::Delete { key: k } => KEYS[k] == key,
            Mutation::Invalidate { pattern } => Pattern::new(PATTERNS[pattern]).matches(key),
        }
    }
}

/// What comes after a load paused in flight.
#[derive(Debug, Clone, Copy)]
enum Second {
    Get,
    GetOrCompute,
}

#[derive(Debug, Clone)]
enum Op {
    /// A set, delete or invalidation on instance `by`.
    Apply {
        by: usize,
        mutation: Mutation,
    },
    Get {
        on: usize,
        key: usize,
    },
    GetMany {
        on: usize,
    },
    GetOrCompute {
        on: usize,
        key: usize,
        fresh: u32,
        ttl_ms: u64,
    },
    /// A read on `on`, held in tier `depth` after reading, while `mutation`
    /// runs on `by`.
    RacingGet {
        on: usize,
        key: usize,
        depth: usize,
        by: usize,
        mutation: Mutation,
    },
    /// A load of a key cold on `on` whose loader reads the database, then
    /// runs `mutation` on `by`.
    RacingLoad {
        on: usize,
        key: usize,
        fresh: u32,
        by: usize,
        mutation: Mutation,
    },
    /// A load of a key cold on `on` (A), paused in its loader after reading
    /// the database, perhaps with a caller waiting on it (F); `mutation`
    /// runs on `by` and returns; then a `second` call starts (B), before or
    /// after A is released; then F resumes.
    LoadInFlight {
        on: usize,
        key: usize,
        fresh: u32,
        by: usize,
        mutation: Mutation,
        follower: bool,
        second: Second,
        release_first: bool,
        /// The top tier drops the key before F resumes.
        top_evicted: bool,
    },
    /// Drops a key from one store only, as eviction would.
    Evict {
        store: usize,
        key: usize,
    },
    Advance {
        ms: u64,
    },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (0..KEYS.len(), 0..LOADED, 1u64..1000).prop_map(|(key, value, ttl_ms)| Mutation::Set {
            key,
            value,
            ttl_ms
        }),
        (0..KEYS.len()).prop_map(|key| Mutation::Delete { key }),
        (0..PATTERNS.len()).prop_map(|pattern| Mutation::Invalidate { pattern }),
    ]
}

fn fresh() -> impl Strategy<Value = u32> {
    // A staged race derives its loaders' fresh values from one: `fresh ^ 1`
    // and `fresh ^ 2` are distinct and in range.
    LOADED..=u32::MAX
}

/// Operations on `instances` caches of `tiers` tiers each, over `stores`
/// memory layers in all.
fn op(instances: usize, tiers: usize, stores: usize) -> impl Strategy<Value = Op> {
    let on = 0..instances;
    let key = 0..KEYS.len();
    let second = prop_oneof![Just(Second::Get), Just(Second::GetOrCompute)];
    prop_oneof![
        4 => (on.clone(), mutation()).prop_map(|(by, mutation)| Op::Apply { by, mutation }),
        4 => (on.clone(), key.clone()).prop_map(|(on, key)| Op::Get { on, key }),
        1 => on.clone().prop_map(|on| Op::GetMany { on }),
        2 => (on.clone(), key.clone(), fresh(), 1u64..1000)
            .prop_map(|(on, key, fresh, ttl_ms)| Op::GetOrCompute { on, key, fresh, ttl_ms }),
        3 => (on.clone(), key.clone(), 1..tiers, on.clone(), mutation())
            .prop_map(|(on, key, depth, by, mutation)| Op::RacingGet { on, key, depth, by, mutation }),
        2 => (on.clone(), key.clone(), fresh(), on.clone(), mutation())
            .prop_map(|(on, key, fresh, by, mutation)| Op::RacingLoad { on, key, fresh, by, mutation }),
        3 => (
            (on.clone(), key.clone(), fresh(), on, mutation()),
            (any::<bool>(), second, any::<bool>(), any::<bool>()),
        )
            .prop_map(|((on, key, fresh, by, mutation), (follower, second, release_first, top_evicted))| {
                Op::LoadInFlight {
                    on, key, fresh, by, mutation, follower, second, release_first, top_evicted,
                }
            }),
        2 => (0..stores, key).prop_map(|(store, key)| Op::Evict { store, key }),
        2 => (0u64..400).prop_map(|ms| Op::Advance { ms }),
    ]
}

/// One memory layer, wherever it sits in the stacks, and what it should hold.
struct Store {
    name: String,
    layer: MemoryLayer,
    /// A one-tier cache over the same layer, to decode what it holds.
    view: TieredCache,
    model: Model,
    cap: Option<Duration>,
    /// Seen by every instance, as a Redis would be.
    shared: bool,
    /// Small enough to evict by size.
    small: bool,
}

impl Store {
    fn new(
        clock: &Arc<ManualClock>,
        name: &str,
        small: bool,
        cap: Option<u64>,
        shared: bool,
    ) -> Self {
        let (max_entries, max_bytes, model) = if small {
            (2, 100, Model::lossy())
        } else {
            (1000, 1 << 20, Model::new())
        };
        let layer = MemoryLayer::builder()
            .name(name)
            .max_entries(max_entries)
            .max_bytes(max_bytes)
            .clock(clock.clone() as Arc<dyn Clock>)
            .sweep_interval(None)
            .build()
            .unwrap();
        let view = TieredCache::builder()
            .clock(clock.clone())
            .tier(Tier::new(layer.clone()))
            .build()
            .unwrap();
        Store {
            name: name.to_owned(),
            layer,
            view,
            model,
            cap: cap.map(Duration::from_millis),
            shared,
            small,
        }
    }

    /// What the layer holds under `key` now: the value and its expiry.
    fn peek(&self, clock: &dyn Clock, key: &str) -> Option<(u32, Option<Instant>)> {
        let entry = block_on(
            self.layer
                .get(&CallContext::new(clock, Operation::Read), key),
        )
        .unwrap()?;
        let value = block_on(self.view.get::<u32>(key)).unwrap();
        Some((value.expect("a live entry decodes"), entry.expiry()))
    }
}

/// One `TieredCache` over some of the stores.
struct Instance {
    cache: TieredCache,
    /// Its tiers, top first, as indices into `Harness::stores`.
    tiers: Vec<usize>,
    /// The tiers below the top, wrapped so that a read can be held there:
    /// `holdable[depth - 1]`.
    holdable: Vec<Arc<HoldableLayer>>,
}

impl Instance {
    fn new(clock: &Arc<ManualClock>, stores: &[Store], tiers: Vec<usize>) -> Self {
        let mut builder = TieredCache::builder().clock(clock.clone());
        let mut holdable = Vec::new();
        for (depth, &index) in tiers.iter().enumerate() {
            let store = &stores[index];
            let layer: Arc<dyn CacheLayer> = if store.shared {
                Arc::new(SharedLayer(Arc::new(store.layer.clone())))
            } else {
                Arc::new(store.layer.clone())
            };
            let mut tier = if depth == 0 {
                Tier::shared(layer)
            } else {
                let wrapped = Arc::new(HoldableLayer::new(layer));
                holdable.push(wrapped.clone());
                Tier::shared(wrapped)
            };
            if let Some(cap) = store.cap {
                tier = tier.ttl_cap(cap);
            }
            builder = builder.tier(tier);
        }
        Instance {
            cache: builder.build().unwrap(),
            tiers,
            holdable,
        }
    }
}

/// What became of a write (a fill, or a loader's result) made under a fill
/// guard ticket that an instance took before a mutation ran. The same
/// answer says whether a caller on that instance after the mutation may
/// join a load that began before it (`Kept`: it does; `Discarded`: never).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// Written and kept: no mutation the instance knows of intervened.
    Kept,
    /// Kept or discarded: a mutation of another key, whose stripe in the
    /// guard may be this key's.
    Maybe,
    /// Never written, or undone.
    Discarded,
}

/// Where the topmost tier holding a key is, and what it holds.
#[derive(Debug, Clone, Copy)]
struct Hit {
    depth: usize,
    value: u32,
    expires: Option<Instant>,
}

/// A value that may be read under `key` until `until` although the key no
/// longer has it: what holds between instances *without* a backplane, and
/// nowhere else (asserted).
///
/// - An instance's L1 keeps its copy when another instance removes or
///   overwrites the key: for at most its L1's `ttl_cap` after the mutation
///   (the copy was taken before it, and lives at most the cap).
///   Asserted against the expiry the layer holds.
/// - A fill on an instance that began before another instance's mutation
///   lands after it (its fill guard saw nothing): in its L1, for at most the
///   cap again.
/// - A load on an instance that began before another instance's mutation
///   writes its (older) value after it, in its L1 and in the shared tier, for
///   the loader's TTL. A shared layer that honours
///   `CallContext::fill_since` refuses such a write (cache-redis does);
///   `MemoryLayer` does not, so here it lands and every instance may read it.
///
/// With a backplane (modelled as delivered at once: every set, delete and
/// invalidation is followed by the same removal from the other instances'
/// local tiers), each instance's fill guard sees every mutation and none of
/// these happens.
#[derive(Debug)]
struct Stale {
    key: &'static str,
    value: u32,
    until: Instant,
}

struct Harness {
    clock: Arc<ManualClock>,
    stores: Vec<Store>,
    instances: Vec<Instance>,
    /// What each key's value is. Consulted for the values a read may
    /// return; which misses are fine is the stores' business.
    contract: Model,
    /// The stale copies a read may return, and until when.
    stale: Vec<Stale>,
    backplane: bool,
}

/// A loader for the staged races: returns what the database held when its
/// caller read it, and counts its runs.
#[derive(Default)]
struct Loader {
    read: Rc<Cell<u32>>,
    runs: Rc<Cell<u32>>,
}

impl Loader {
    fn reading(value: u32) -> Self {
        let loader = Loader::default();
        loader.read.set(value);
        loader
    }

    fn call(&self) -> impl FnOnce() -> Ready<io::Result<u32>> + use<> {
        let (read, runs) = (self.read.clone(), self.runs.clone());
        move || {
            runs.set(runs.get() + 1);
            std::future::ready(Ok(read.get()))
        }
    }
}

fn bytes(value: u32) -> [u8; 4] {
    value.to_le_bytes()
}

fn decode(bytes: &[u8]) -> u32 {
    u32::from_le_bytes(bytes.try_into().expect("the model holds u32s"))
}

/// `expires` as a tier with `cap` stores it at `now`: capped, never extended.
fn capped(expires: Option<Instant>, cap: Option<Duration>, now: Instant) -> Option<Instant> {
    match (expires, cap) {
        (Some(at), Some(cap)) => Some(at.min(now + cap)),
        (None, Some(cap)) => Some(now + cap),
        (expires, None) => expires,
    }
}

/// Whether an expiry is no later than a bound (`None`: never).
fn no_later(expires: Option<Instant>, bound: Option<Instant>) -> bool {
    match (expires, bound) {
        (_, None) => true,
        (None, Some(_)) => false,
        (Some(at), Some(bound)) => at <= bound,
    }
}

impl Harness {
    /// One instance over `tiers` tiers, the top one small (it evicts by
    /// size) if `small`.
    fn single(tiers: usize, small: bool, caps: &[Option<u64>]) -> Self {
        let clock = ManualClock::shared();
        let stores: Vec<Store> = (0..tiers)
            .map(|depth| {
                let name = format!("l{}", depth + 1);
                Store::new(&clock, &name, small && depth == 0, caps[depth], false)
            })
            .collect();
        let instance = Instance::new(&clock, &stores, (0..tiers).collect());
        Harness::new(clock, stores, vec![instance], false)
    }

    /// Two instances, each over its own L1 (capped at `l1_caps`), sharing
    /// one L2.
    fn pair(l1_caps: [u64; 2], l2_cap: Option<u64>, backplane: bool) -> Self {
        let clock = ManualClock::shared();
        let stores = vec![
            Store::new(&clock, "a.l1", false, Some(l1_caps[0]), false),
            Store::new(&clock, "b.l1", false, Some(l1_caps[1]), false),
            Store::new(&clock, "l2", false, l2_cap, true),
        ];
        let instances = vec![
            Instance::new(&clock, &stores, vec![0, 2]),
            Instance::new(&clock, &stores, vec![1, 2]),
        ];
        Harness::new(clock, stores, instances, backplane)
    }

    fn new(
        clock: Arc<ManualClock>,
        stores: Vec<Store>,
        instances: Vec<Instance>,
        backplane: bool,
    ) -> Self {
        Harness {
            clock,
            stores,
            instances,
            contract: Model::new(),
            stale: Vec::new(),
            backplane,
        }
    }

    fn now(&self) -> Instant {
        self.clock.now()
    }

    fn run(&mut self, op: Op) -> TestCaseResult {
        match op {
            Op::Apply { by, mutation } => block_on(self.apply(by, &mutation)),
            Op::Get { on, key } => self.get(on, KEYS[key]).map(drop),
            Op::GetMany { on } => self.get_many(on),
            Op::GetOrCompute {
                on,
                key,
                fresh,
                ttl_ms,
            } => self
                .get_or_compute(on, KEYS[key], fresh, Duration::from_millis(ttl_ms))
                .map(drop),
            Op::RacingGet {
                on,
                key,
                depth,
                by,
                mutation,
            } => self.racing_get(on, KEYS[key], depth, by, &mutation),
            Op::RacingLoad {
                on,
                key,
                fresh,
                by,
                mutation,
            } => self.racing_load(on, KEYS[key], fresh, by, &mutation),
            Op::LoadInFlight {
                on,
                key,
                fresh,
                by,
                mutation,
                follower,
                second,
                release_first,
                top_evicted,
            } => self.load_in_flight(
                on,
                KEYS[key],
                fresh,
                (by, &mutation),
                follower,
                (second, release_first, top_evicted),
            ),
            Op::Evict { store, key } => {
                self.evict(store, KEYS[key]);
                Ok(())
            }
            Op::Advance { ms } => {
                self.clock.advance(Duration::from_millis(ms));
                Ok(())
            }
        }
    }

    // The model's side.

    /// What a loader reads for `key` now: its value, or a fresh one if it
    /// has none (the data changed while nothing cached it).
    fn read_database(&self, key: &str, fresh: u32) -> u32 {
        self.contract.get(key, self.now()).map_or(fresh, decode)
    }

    /// Whether a read may return `value`, which expires at `expires`, under
    /// `key` now: the key's value (with no later expiry), or a [`Stale`]
    /// copy within its window.
    fn may_read(&self, key: &str, value: u32, expires: Option<Instant>) -> bool {
        let now = self.now();
        let current = self.contract.get(key, now) == Some(&bytes(value)[..])
            && no_later(expires, self.contract.expiry(key, now).flatten());
        current
            || self.stale.iter().any(|stale| {
                stale.key == key
                    && stale.value == value
                    && now < stale.until
                    && no_later(expires, Some(stale.until))
            })
    }

    /// The topmost of `on`'s tiers from `depth` down holding `key`, by the
    /// model.
    fn lookup(&self, on: usize, key: &str, depth: usize) -> Option<Hit> {
        let now = self.now();
        let tiers = &self.instances[on].tiers;
        (depth..tiers.len()).find_map(|depth| {
            let model = &self.stores[tiers[depth]].model;
            Some(Hit {
                depth,
                value: decode(model.get(key, now)?),
                expires: model.expiry(key, now).flatten(),
            })
        })
    }

    /// How instance `on`'s fill guard saw `mutation` on `by`, for a ticket
    /// for `key` taken before it.
    fn fate(&self, on: usize, (by, mutation): (usize, &Mutation), key: &str) -> Fate {
        if by != on && !self.backplane {
            // Only `by`'s guard saw it.
            return Fate::Kept;
        }
        // A backplane delivers a removal of the same keys or pattern, which
        // goes through this instance's guard like a mutation of its own.
        match *mutation {
            // Pattern invalidations share one stripe, which every ticket checks.
            Mutation::Invalidate { .. } => Fate::Discarded,
            Mutation::Set { key: k, .. } | Mutation::Delete { key: k } if KEYS[k] == key => {
                Fate::Discarded
            }
            Mutation::Set { .. } | Mutation::Delete { .. } => Fate::Maybe,
        }
    }

    /// Records a write of `value` into one store, as `fate` says.
    fn write(&mut self, store: usize, key: &str, value: u32, expires: Option<Instant>, fate: Fate) {
        let now = self.now();
        let store = &mut self.stores[store];
        let expires = capped(expires, store.cap, now);
        match fate {
            Fate::Kept => store.model.set(key, &bytes(value), expires),
            Fate::Maybe => store.model.may_set(key, &bytes(value), expires),
            Fate::Discarded => {}
        }
    }

    /// Records the fills of a read on `on` that found `hit`: the tiers above
    /// it. `stale`: the value is from before a mutation of the key.
    fn fill(&mut self, on: usize, key: &'static str, hit: &Hit, fate: Fate, stale: bool) {
        let now = self.now();
        for depth in 0..hit.depth {
            let store = self.instances[on].tiers[depth];
            if stale && fate != Fate::Discarded {
                let cap = self.stores[store].cap;
                let cap = cap.expect("stale fills happen only in the pair's L1s, which are capped");
                self.stale.push(Stale {
                    key,
                    value: hit.value,
                    until: now + cap,
                });
            }
            self.write(store, key, hit.value, hit.expires, fate);
        }
    }

    /// Records a loader's value written through `on`'s tiers. `stale`: the
    /// loader read the database before a mutation of the key.
    fn loaded(
        &mut self,
        on: usize,
        key: &'static str,
        value: u32,
        ttl: Duration,
        fate: Fate,
        stale: bool,
    ) {
        let expires = Some(self.now() + ttl);
        if fate != Fate::Discarded {
            if stale {
                // Only where the instance could not see the mutation (a
                // same-instance or delivered one discards the write).
                self.stale.push(Stale {
                    key,
                    value,
                    until: self.now() + ttl,
                });
            } else {
                // Loading the value the key has (the database did not
                // change) leaves the copies cached before as good as they
                // were, expiry included.
                let now = self.now();
                let held = (self.contract.get(key, now) == Some(&bytes(value)[..]))
                    .then(|| self.contract.expiry(key, now).flatten())
                    .flatten();
                let until = expires.max(held);
                self.contract.set(key, &bytes(value), until);
            }
        }
        for depth in 0..self.instances[on].tiers.len() {
            let store = self.instances[on].tiers[depth];
            self.write(store, key, value, expires, fate);
        }
    }

    /// Records `mutation` in the models of `stores`.
    fn remove_from(&mut self, stores: &[usize], mutation: &Mutation) {
        for &store in stores {
            let model = &mut self.stores[store].model;
            match *mutation {
                Mutation::Set { key, .. } | Mutation::Delete { key } => model.delete(KEYS[key]),
                Mutation::Invalidate { pattern } => {
                    model.invalidate(&Pattern::new(PATTERNS[pattern]));
                }
            }
        }
    }

    // Driving the caches.

    /// A set, delete or invalidation on instance `by`, then what the other
    /// instances do about it.
    async fn apply(&mut self, by: usize, mutation: &Mutation) -> TestCaseResult {
        let now = self.now();
        let cache = self.instances[by].cache.clone();
        let tiers = self.instances[by].tiers.clone();
        match *mutation {
            Mutation::Set { key, value, ttl_ms } => {
                let ttl = Duration::from_millis(ttl_ms);
                cache.set(KEYS[key], &value, ttl).await.unwrap();
                let expires = Some(now + ttl);
                self.contract.set(KEYS[key], &bytes(value), expires);
                for store in tiers {
                    self.write(store, KEYS[key], value, expires, Fate::Kept);
                }
            }
            Mutation::Delete { key } => {
                let removed = cache.delete(KEYS[key]).await.unwrap();
                prop_assert!(removed.is_complete(), "{}", removed);
                self.contract.delete(KEYS[key]);
                self.remove_from(&tiers, mutation);
            }
            Mutation::Invalidate { pattern } => {
                let pattern = Pattern::new(PATTERNS[pattern]);
                let removed = cache.invalidate(&pattern).await.unwrap();
                prop_assert!(removed.is_complete(), "{}", removed);
                self.contract.invalidate(&pattern);
                self.remove_from(&tiers, mutation);
            }
        }
        for other in (0..self.instances.len()).filter(|&other| other != by) {
            let local: Vec<usize> = (self.instances[other].tiers.iter())
                .copied()
                .filter(|&store| !self.stores[store].shared)
                .collect();
            if self.backplane {
                // What a backplane receiver does (for a write as for a
                // removal): the sender has cleared the shared tier already.
                let other_cache = self.instances[other].cache.clone();
                let removed = match *mutation {
                    Mutation::Set { key, .. } | Mutation::Delete { key } => {
                        other_cache.remove(Removal::key(KEYS[key]).local()).await
                    }
                    Mutation::Invalidate { pattern } => {
                        let pattern = Pattern::new(PATTERNS[pattern]);
                        other_cache.remove(Removal::pattern(&pattern).local()).await
                    }
                }
                .unwrap();
                prop_assert!(removed.is_complete(), "{}", removed);
                self.remove_from(&local, mutation);
            } else {
                // Nothing tells the other instance: its L1 keeps its copies.
                for &store in &local {
                    let cap = self.stores[store].cap.expect("the pair's L1s are capped");
                    for &key in KEYS.iter().filter(|key| mutation.touches(key)) {
                        let Some(held) = self.stores[store].model.get(key, now) else {
                            continue;
                        };
                        let value = decode(held);
                        let expires = self.stores[store].model.expiry(key, now).flatten();
                        if !self.may_read(key, value, expires) {
                            self.stale.push(Stale {
                                key,
                                value,
                                until: now + cap,
                            });
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Compares every store with its model: the same values, the same
    /// expiries, no more; and every value held is one a read may return.
    /// Settles what the models left open.
    fn sync(&mut self) -> TestCaseResult {
        let now = self.now();
        self.stale.retain(|stale| stale.until > now);
        prop_assert!(
            self.stale.is_empty() || (self.instances.len() > 1 && !self.backplane),
            "only instances without a backplane may read stale values: {:?}",
            self.stale
        );
        for index in 0..self.stores.len() {
            for &key in KEYS {
                self.observe(index, key)?;
            }
            // A small L1 evicts by size; nothing else may.
            let store = &self.stores[index];
            if !store.small {
                let stats = store.layer.stats();
                prop_assert_eq!(stats.evictions, 0, "{}: {:?}", &store.name, stats);
            }
            for &key in KEYS {
                if let Some(value) = store.model.get(key, now) {
                    let expires = store.model.expiry(key, now).flatten();
                    prop_assert!(
                        self.may_read(key, decode(value), expires),
                        "{} holds {} under {:?} (expiring {:?}), which no read may return",
                        store.name,
                        decode(value),
                        key,
                        expires
                    );
                }
            }
        }
        Ok(())
    }

    /// Compares what one store holds under `key` with its model.
    fn observe(&mut self, index: usize, key: &str) -> TestCaseResult {
        let now = self.now();
        let store = &mut self.stores[index];
        let seen = store.peek(&*self.clock, key);
        let observed = seen.map(|(value, _)| bytes(value));
        store
            .model
            .observe(key, now, observed.as_ref().map(|b| &b[..]))
            .map_err(|e| TestCaseError::fail(format!("{}: {e}", store.name)))?;
        if let Some((_, expires)) = seen {
            prop_assert_eq!(
                Some(expires),
                store.model.expiry(key, now),
                "{}: expiry of {}",
                &store.name,
                key
            );
        }
        Ok(())
    }

    /// Learns what the small store (if any) still holds under `key`: it may
    /// have evicted it since the last look, as a side effect of any write.
    /// Call before predicting a read of `key`.
    fn settle(&mut self, key: &str) -> TestCaseResult {
        for index in 0..self.stores.len() {
            if self.stores[index].small {
                self.observe(index, key)?;
            }
        }
        Ok(())
    }

    /// Checks a read's answer: what the topmost tier holding the key holds,
    /// a miss only if none does.
    fn check_answer(
        &self,
        on: usize,
        key: &str,
        seen: Option<u32>,
        hit: Option<&Hit>,
    ) -> TestCaseResult {
        prop_assert_eq!(
            seen,
            hit.map(|hit| hit.value),
            "instance {}, key {:?}: the topmost tier holding it has {:?}",
            on,
            key,
            hit
        );
        Ok(())
    }

    /// Checks that a read may return what it found now.
    fn legal(&self, key: &str, hit: Option<&Hit>) -> TestCaseResult {
        if let Some(hit) = hit {
            prop_assert!(
                self.may_read(key, hit.value, hit.expires),
                "{:?}: {:?} is not its value",
                key,
                hit
            );
        }
        Ok(())
    }

    fn get(&mut self, on: usize, key: &'static str) -> Result<Option<u32>, TestCaseError> {
        self.settle(key)?;
        let hit = self.lookup(on, key, 0);
        let seen = block_on(self.instances[on].cache.get::<u32>(key)).unwrap();
        self.check_answer(on, key, seen, hit.as_ref())?;
        self.legal(key, hit.as_ref())?;
        if let Some(hit) = hit {
            self.fill(on, key, &hit, Fate::Kept, false);
        }
        Ok(seen)
    }

    fn get_many(&mut self, on: usize) -> TestCaseResult {
        for key in KEYS {
            self.settle(key)?;
        }
        let hits: Vec<Option<Hit>> = KEYS.iter().map(|key| self.lookup(on, key, 0)).collect();
        let seen = block_on(self.instances[on].cache.get_many::<u32>(KEYS));
        for ((key, hit), seen) in KEYS.iter().zip(&hits).zip(seen) {
            self.check_answer(on, key, seen.unwrap(), hit.as_ref())?;
            self.legal(key, hit.as_ref())?;
        }
        for (key, hit) in KEYS.iter().zip(&hits) {
            if let Some(hit) = hit {
                self.fill(on, key, hit, Fate::Kept, false);
            }
        }
        Ok(())
    }

    fn get_or_compute(
        &mut self,
        on: usize,
        key: &'static str,
        fresh: u32,
        ttl: Duration,
    ) -> Result<u32, TestCaseError> {
        self.settle(key)?;
        let hit = self.lookup(on, key, 0);
        let loader = Loader::reading(self.read_database(key, fresh));
        let cache = self.instances[on].cache.clone();
        let got = block_on(cache.get_or_compute(key, ttl, loader.call())).unwrap();
        match hit {
            Some(hit) => {
                self.check_answer(on, key, Some(got), Some(&hit))?;
                self.legal(key, Some(&hit))?;
                prop_assert_eq!(loader.runs.get(), 0, "the loader ran on a hit");
                self.fill(on, key, &hit, Fate::Kept, false);
            }
            None => {
                prop_assert_eq!(loader.runs.get(), 1, "a miss runs the loader once");
                prop_assert_eq!(got, loader.read.get());
                self.loaded(on, key, got, ttl, Fate::Kept, false);
            }
        }
        Ok(got)
    }

    /// Drops `key` from one store.
    fn evict(&mut self, store: usize, key: &str) {
        let store = &mut self.stores[store];
        block_on(store.layer.delete(&ctx::remove(), key)).unwrap();
        store.model.delete(key);
    }

    /// Drops `key` from every tier of `on`, so that its next read misses.
    fn make_cold(&mut self, on: usize, key: &str) {
        for depth in 0..self.instances[on].tiers.len() {
            self.evict(self.instances[on].tiers[depth], key);
        }
    }

    /// Every key on every instance reads as the models say.
    fn check_all(&mut self) -> TestCaseResult {
        for on in 0..self.instances.len() {
            for &key in KEYS {
                self.get(on, key)?;
            }
        }
        Ok(())
    }

    // The staged races.

    /// A fill racing a mutation: a read that found the key in tier
    /// `depth` (or went on below it after the mutation) must not copy a
    /// value from before the mutation upward.
    fn racing_get(
        &mut self,
        on: usize,
        key: &'static str,
        depth: usize,
        by: usize,
        mutation: &Mutation,
    ) -> TestCaseResult {
        // Evicted above, so that the read gets as far as the held tier.
        for above in 0..depth {
            self.evict(self.instances[on].tiers[above], key);
        }
        let layer = self.instances[on].holdable[depth - 1].clone();
        let cache = self.instances[on].cache.clone();
        let held = self.lookup(on, key, depth).filter(|hit| hit.depth == depth);
        // What the read finds before the mutation may be returned.
        self.legal(key, held.as_ref())?;
        layer.hold_next_get();
        let mut read = Box::pin(cache.get::<u32>(key));
        prop_assert!(
            read.as_mut().now_or_never().is_none(),
            "the read waits in the held tier"
        );
        // The held tier has been read, the tiers below it are read after the
        // mutation; the read took its fill ticket before either.
        block_on(self.apply(by, mutation))?;
        layer.release();
        let seen = block_on(read).unwrap();
        let fate = self.fate(on, (by, mutation), key);
        match held {
            Some(hit) => {
                // Read before the mutation, so returning it is fine; filling
                // it upward is not, unless the instance cannot know.
                self.check_answer(on, key, seen, Some(&hit))?;
                self.fill(on, key, &hit, fate, mutation.touches(key));
            }
            None => {
                let hit = self.lookup(on, key, depth + 1);
                self.check_answer(on, key, seen, hit.as_ref())?;
                self.legal(key, hit.as_ref())?;
                if let Some(hit) = hit {
                    self.fill(on, key, &hit, fate, false);
                }
            }
        }
        Ok(())
    }

    fn racing_load(
        &mut self,
        on: usize,
        key: &'static str,
        fresh: u32,
        by: usize,
        mutation: &Mutation,
    ) -> TestCaseResult {
        self.make_cold(on, key);
        let read = self.read_database(key, fresh);
        let cache = self.instances[on].cache.clone();
        let mut applied = Ok(());
        let got = {
            let (this, applied) = (&mut *self, &mut applied);
            block_on(cache.get_or_compute(key, LOAD_TTL, move || async move {
                *applied = this.apply(by, mutation).await;
                Ok::<_, io::Error>(read)
            }))
            .unwrap()
        };
        applied?;
        prop_assert_eq!(got, read, "the caller gets its own loader's value");
        let fate = self.fate(on, (by, mutation), key);
        self.loaded(on, key, read, LOAD_TTL, fate, mutation.touches(key));
        Ok(())
    }

    /// Deletes (and writes, and invalidations) racing a load in flight.
    ///
    /// The property: a call that starts after the mutation returned is
    /// never answered by the load that began before it, and that load's
    /// value is not left readable in any tier, unless the instance could
    /// not know of the mutation (another instance's, without a backplane:
    /// see [`Stale`]).
    fn load_in_flight(
        &mut self,
        on: usize,
        key: &'static str,
        fresh: u32,
        racing: (usize, &Mutation),
        follower: bool,
        (second, release_first, top_evicted): (Second, bool, bool),
    ) -> TestCaseResult {
        let (by, mutation) = racing;
        self.make_cold(on, key);
        let cache = self.instances[on].cache.clone();
        // A reads the database, then waits for `release`.
        let a_read = self.read_database(key, fresh);
        let (release, released) = oneshot::channel::<()>();
        let mut a = Box::pin(cache.get_or_compute(key, LOAD_TTL, move || async move {
            let _ = released.await;
            Ok::<_, io::Error>(a_read)
        }));
        prop_assert!(a.as_mut().now_or_never().is_none(), "A waits in its loader");
        // F comes before the mutation and waits on A.
        let f_loader = Loader::default();
        let mut f =
            follower.then(|| Box::pin(cache.get_or_compute(key, LOAD_TTL, f_loader.call())));
        if let Some(f) = &mut f {
            prop_assert!(f.as_mut().now_or_never().is_none(), "F waits on A's load");
        }

        block_on(self.apply(by, mutation))?;
        let stale = mutation.touches(key);
        // Whether A's value may be cached, and whether B may join A.
        let mut fate = self.fate(on, racing, key);
        // Whether B replaced A's flight, so that F tries again.
        let mut f_retries = false;
        // Lets A finish; records its write.
        let finish_a = move |this: &mut Self, fate: Fate| -> TestCaseResult {
            release.send(()).expect("A is waiting");
            let got = block_on(a).unwrap();
            prop_assert_eq!(got, a_read, "A gets its own loader's value");
            this.loaded(on, key, a_read, LOAD_TTL, fate, stale);
            Ok(())
        };
        self.sync()?;
        if release_first {
            finish_a(self, fate)?;
            self.sync()?;
            match second {
                Second::Get => self.get(on, key).map(drop)?,
                Second::GetOrCompute => self
                    .get_or_compute(on, key, fresh ^ 1, LOAD_TTL)
                    .map(drop)?,
            }
        } else {
            match second {
                Second::Get => {
                    self.get(on, key)?;
                    finish_a(self, fate)?;
                }
                Second::GetOrCompute => {
                    self.settle(key)?;
                    let hit = self.lookup(on, key, 0);
                    let b_loader = Loader::reading(self.read_database(key, fresh ^ 1));
                    let mut b = Box::pin(cache.get_or_compute(key, LOAD_TTL, b_loader.call()));
                    match b.as_mut().now_or_never() {
                        None => {
                            prop_assert!(
                                hit.is_none() && fate != Fate::Discarded,
                                "B, which started after the mutation of {:?} returned, waits on \
                                 the load that began before it",
                                key
                            );
                            // It joined A, so no mutation of the stripe came
                            // between: A's ticket holds.
                            fate = Fate::Kept;
                            finish_a(self, fate)?;
                            let got = block_on(b).unwrap();
                            prop_assert_eq!(got, a_read, "B gets the load it joined");
                            prop_assert_eq!(b_loader.runs.get(), 0);
                            prop_assert!(
                                self.may_read(key, got, Some(self.now() + LOAD_TTL)),
                                "B, joining A, got a value the key no longer has"
                            );
                        }
                        Some(got) => {
                            let got = got.unwrap();
                            match hit {
                                Some(hit) => {
                                    self.check_answer(on, key, Some(got), Some(&hit))?;
                                    self.legal(key, Some(&hit))?;
                                    prop_assert_eq!(b_loader.runs.get(), 0);
                                    self.fill(on, key, &hit, Fate::Kept, false);
                                }
                                None => {
                                    prop_assert!(
                                        fate != Fate::Kept,
                                        "B loads afresh although nothing separates it from A"
                                    );
                                    prop_assert_eq!(b_loader.runs.get(), 1);
                                    prop_assert_eq!(got, b_loader.read.get());
                                    // B left A's flight behind: the stripe
                                    // moved, so A's ticket is void.
                                    fate = Fate::Discarded;
                                    f_retries = true;
                                    self.loaded(on, key, got, LOAD_TTL, Fate::Kept, false);
                                }
                            }
                            finish_a(self, fate)?;
                        }
                    }
                }
            }
        }
        self.sync()?;
        let current = self.contract.get(key, self.now()).map(decode);
        if fate == Fate::Discarded && stale && current != Some(a_read) {
            for &store in &self.instances[on].tiers {
                let store = &self.stores[store];
                let held = store.peek(&*self.clock, key).map(|(value, _)| value);
                prop_assert_ne!(
                    held,
                    Some(a_read),
                    "{} holds the value of the load from before the mutation",
                    &store.name
                );
            }
        }

        if let Some(f) = f {
            if top_evicted {
                self.evict(self.instances[on].tiers[0], key);
            }
            // F's loader, if it runs, runs now.
            f_loader.read.set(self.read_database(key, fresh ^ 2));
            // After its flight went stale, F looks in the top tier, then loads.
            self.settle(key)?;
            let top = self.lookup(on, key, 0).filter(|hit| hit.depth == 0);
            let got = block_on(f).unwrap();
            match (f_retries, top) {
                (false, _) => {
                    // F started before the mutation: A's value is fine.
                    prop_assert_eq!(got, a_read, "F gets the result of the load it joined");
                    prop_assert_eq!(f_loader.runs.get(), 0);
                }
                (true, Some(hit)) => {
                    self.check_answer(on, key, Some(got), Some(&hit))?;
                    prop_assert_eq!(f_loader.runs.get(), 0);
                }
                (true, None) => {
                    prop_assert_eq!(f_loader.runs.get(), 1);
                    prop_assert_eq!(got, f_loader.read.get());
                    self.loaded(on, key, got, LOAD_TTL, Fate::Kept, false);
                }
            }
        }
        Ok(())
    }
}

proptest! {
    /// One instance over two or three tiers.
    #[test]
    fn tiered_cache_agrees_with_the_model(
        (tiers, small, caps, ops) in (2usize..=3, any::<bool>(), proptest::collection::vec(proptest::option::of(50u64..600), 3))
            .prop_flat_map(|(tiers, small, caps)| {
                let ops = proptest::collection::vec(op(1, tiers, tiers), 1..60);
                (Just(tiers), Just(small), Just(caps), ops)
            }),
    ) {
        let mut h = Harness::single(tiers, small, &caps);
        for op in ops {
            h.run(op)?;
            h.sync()?;
            h.check_all()?;
            h.sync()?;
        }
    }

    /// Two instances, each with its own L1 (with a small `ttl_cap`), over
    /// one shared L2, on one clock, with or without a backplane.
    ///
    /// The model stays exact either way. With a backplane (delivered at
    /// once, as `remove(...local())` on the other instance) the contract is
    /// as strict as for one instance. Without one, it allows exactly the
    /// stale copies that [`Stale`] lists, each until a bound the model
    /// computes (an L1's cap after the mutation, or a load's TTL), and
    /// nothing else: see there for what holds across instances and why.
    #[test]
    fn two_instances_over_a_shared_tier_agree_with_the_model(
        l1_caps in [20u64..300, 20u64..300],
        l2_cap in proptest::option::of(100u64..1000),
        backplane in any::<bool>(),
        ops in proptest::collection::vec(op(2, 2, 3), 1..60),
    ) {
        let mut h = Harness::pair(l1_caps, l2_cap, backplane);
        for op in ops {
            h.run(op)?;
            h.sync()?;
            h.check_all()?;
            h.sync()?;
        }
    }
}
