//! Model-based property test of the composer: random operations on a
//! `TieredCache` of two or three memory tiers, checked after every step
//! against a plain reference model. Includes deterministic interleavings of
//! a read that fills upward with a racing delete, write or invalidation, and
//! of a loader that runs while its key changes.
//!
//! A cache may forget (evict) anything; it must never return a value the
//! model says is absent, expired, or different.

use std::sync::Arc;
use std::time::Duration;

use cache_core::{CacheLayer, Clock, ManualClock, Pattern};
use cache_memory::MemoryLayer;
use cache_test_support::ctx;
use cache_test_support::layers::HoldableLayer;
use cache_test_support::model::Model;
use cache_tiered::{Tier, TieredCache};
use futures::FutureExt;
use futures::executor::block_on;
use proptest::prelude::*;

const KEYS: &[&str] = &["offer:1", "offer:2", "offer:[3]", "user:1", "user:*"];
const PATTERNS: &[&str] = &["offer:*", "offer:\\[3]", "user:\\*", "*:1", "user:?", "*"];

#[derive(Debug, Clone)]
enum Mutation {
    Set { key: usize, value: u32, ttl_ms: u64 },
    Delete { key: usize },
    Invalidate { pattern: usize },
}

#[derive(Debug, Clone)]
enum Op {
    Apply(Mutation),
    Get {
        key: usize,
    },
    GetMany,
    GetOrCompute {
        key: usize,
        value: u32,
        ttl_ms: u64,
    },
    /// A read held in tier `depth` after reading, while `mutation` runs.
    RacingGet {
        key: usize,
        depth: usize,
        mutation: Mutation,
    },
    /// A loader during which `mutation` runs.
    RacingLoad {
        key: usize,
        value: u32,
        mutation: Mutation,
    },
    /// Drops a key from one tier only, as eviction would.
    Evict {
        key: usize,
        depth: usize,
    },
    Advance {
        ms: u64,
    },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (0..KEYS.len(), any::<u32>(), 1u64..1000).prop_map(|(key, value, ttl_ms)| Mutation::Set {
            key,
            value,
            ttl_ms
        }),
        (0..KEYS.len()).prop_map(|key| Mutation::Delete { key }),
        (0..PATTERNS.len()).prop_map(|pattern| Mutation::Invalidate { pattern }),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => mutation().prop_map(Op::Apply),
        4 => (0..KEYS.len()).prop_map(|key| Op::Get { key }),
        1 => Just(Op::GetMany),
        2 => (0..KEYS.len(), any::<u32>(), 1u64..1000)
            .prop_map(|(key, value, ttl_ms)| Op::GetOrCompute { key, value, ttl_ms }),
        3 => (0..KEYS.len(), 1usize..3, mutation())
            .prop_map(|(key, depth, mutation)| Op::RacingGet { key, depth, mutation }),
        2 => (0..KEYS.len(), any::<u32>(), mutation())
            .prop_map(|(key, value, mutation)| Op::RacingLoad { key, value, mutation }),
        2 => (0..KEYS.len(), 0usize..3).prop_map(|(key, depth)| Op::Evict { key, depth }),
        2 => (0u64..400).prop_map(|ms| Op::Advance { ms }),
    ]
}

struct Harness {
    clock: Arc<ManualClock>,
    cache: TieredCache,
    layers: Vec<MemoryLayer>,
    /// The tiers below the top, wrapped so a read can be held.
    holdable: Vec<Arc<HoldableLayer>>,
    model: Model,
}

impl Harness {
    fn new(tiers: usize, small: bool, caps: &[Option<u64>]) -> Self {
        let clock = ManualClock::shared();
        let layers: Vec<MemoryLayer> = (0..tiers)
            .map(|depth| {
                let (max_entries, max_bytes) = if small && depth == 0 {
                    (2, 100)
                } else {
                    (1000, 1 << 20)
                };
                MemoryLayer::builder()
                    .name(format!("l{}", depth + 1))
                    .max_entries(max_entries)
                    .max_bytes(max_bytes)
                    .clock(clock.clone() as Arc<dyn Clock>)
                    .sweep_interval(None)
                    .build()
                    .unwrap()
            })
            .collect();
        let mut builder = TieredCache::builder().clock(clock.clone());
        let mut holdable = Vec::new();
        for (depth, layer) in layers.iter().enumerate() {
            let mut tier = if depth == 0 {
                Tier::new(layer.clone())
            } else {
                let wrapped = Arc::new(HoldableLayer::new(Arc::new(layer.clone())));
                holdable.push(wrapped.clone());
                Tier::shared(wrapped)
            };
            if let Some(cap) = caps.get(depth).copied().flatten() {
                tier = tier.ttl_cap(Duration::from_millis(cap));
            }
            builder = builder.tier(tier);
        }
        Harness {
            cache: builder.build().unwrap(),
            clock,
            layers,
            holdable,
            model: Model::new(),
        }
    }

    async fn apply(&mut self, mutation: &Mutation) {
        match *mutation {
            Mutation::Set { key, value, ttl_ms } => {
                let ttl = Duration::from_millis(ttl_ms);
                self.cache.set(KEYS[key], &value, ttl).await.unwrap();
                let expires = self.clock.now() + ttl;
                self.model
                    .set(KEYS[key], &value.to_le_bytes(), Some(expires));
            }
            Mutation::Delete { key } => {
                self.cache.delete(KEYS[key]).await.unwrap();
                self.model.delete(KEYS[key]);
            }
            Mutation::Invalidate { pattern } => {
                let pattern = Pattern::new(PATTERNS[pattern]);
                self.cache.invalidate(&pattern).await.unwrap();
                self.model.invalidate(&pattern);
            }
        }
    }

    fn check(&self, key: &str, model: &Model, seen: Option<u32>) -> Result<(), TestCaseError> {
        let bytes = seen.map(u32::to_le_bytes);
        model
            .check(key, self.clock.now(), bytes.as_ref().map(|b| &b[..]))
            .map_err(TestCaseError::fail)
    }

    fn check_all(&self) -> Result<(), TestCaseError> {
        for key in KEYS {
            let seen = block_on(self.cache.get::<u32>(key)).unwrap();
            self.check(key, &self.model, seen)?;
        }
        Ok(())
    }
}

fn touches(mutation: &Mutation, key: &str) -> bool {
    match *mutation {
        Mutation::Set { key: k, .. } | Mutation::Delete { key: k } => KEYS[k] == key,
        Mutation::Invalidate { pattern } => Pattern::new(PATTERNS[pattern]).matches(key),
    }
}

proptest! {
    #[test]
    fn tiered_cache_agrees_with_the_model(
        tiers in 2usize..=3,
        small in any::<bool>(),
        caps in proptest::collection::vec(proptest::option::of(50u64..600), 3),
        ops in proptest::collection::vec(op(), 1..60),
    ) {
        let mut h = Harness::new(tiers, small, &caps);
        for op in ops {
            match op {
                Op::Apply(mutation) => block_on(h.apply(&mutation)),
                Op::Get { key } => {
                    let seen = block_on(h.cache.get::<u32>(KEYS[key])).unwrap();
                    h.check(KEYS[key], &h.model, seen)?;
                }
                Op::GetMany => {
                    let seen = block_on(h.cache.get_many::<u32>(KEYS));
                    for (key, seen) in KEYS.iter().zip(seen) {
                        h.check(key, &h.model, seen.unwrap())?;
                    }
                }
                Op::GetOrCompute { key, value, ttl_ms } => {
                    let key = KEYS[key];
                    let before = h.model.clone();
                    let ttl = Duration::from_millis(ttl_ms);
                    let got = block_on(h.cache.get_or_compute(key, ttl, || async {
                        Ok::<_, std::io::Error>(value)
                    }))
                    .unwrap();
                    if before.get(key, h.clock.now()) != Some(&got.to_le_bytes()[..]) {
                        // Not the cached value, so the loader's.
                        prop_assert_eq!(got, value);
                        h.model.set(key, &value.to_le_bytes(), Some(h.clock.now() + ttl));
                    }
                }
                Op::RacingGet { key, depth, mutation } => {
                    let key = KEYS[key];
                    let Some(layer) = h.holdable.get(depth - 1).cloned() else { continue };
                    let before = h.model.clone();
                    layer.hold_next_get();
                    let cache = h.cache.clone();
                    let mut read = Box::pin(async move { cache.get::<u32>(key).await });
                    let finished = (&mut read).now_or_never();
                    layer.disarm();
                    block_on(h.apply(&mutation));
                    let seen = match finished {
                        Some(seen) => seen.unwrap(),
                        None => {
                            layer.release();
                            block_on(read).unwrap()
                        }
                    };
                    // The read may linearize before or after the mutation.
                    if h.check(key, &before, seen).is_err() {
                        h.check(key, &h.model, seen)?;
                    }
                }
                Op::RacingLoad { key, value, mutation } => {
                    let key = KEYS[key];
                    let before = h.model.clone();
                    let cache = h.cache.clone();
                    let cached = block_on(h.cache.get::<u32>(key)).unwrap();
                    h.check(key, &before, cached)?;
                    if cached.is_some() {
                        continue;
                    }
                    let got = block_on(cache.get_or_compute(key, Duration::from_secs(1), || async {
                        h.apply(&mutation).await;
                        Ok::<_, std::io::Error>(value)
                    }))
                    .unwrap();
                    prop_assert_eq!(got, value);
                    if !touches(&mutation, key) {
                        // Cached (or, on a stripe collision, skipped): both fine.
                        h.model.set(key, &value.to_le_bytes(), Some(h.clock.now() + Duration::from_secs(1)));
                    }
                }
                Op::Evict { key, depth } => {
                    if let Some(layer) = h.layers.get(depth) {
                        block_on(layer.delete(&ctx::remove(), KEYS[key])).unwrap();
                    }
                }
                Op::Advance { ms } => h.clock.advance(Duration::from_millis(ms)),
            }
            h.check_all()?;
        }
    }
}
