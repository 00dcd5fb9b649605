//! Model-based property test: random operations against `MemoryLayer`,
//! checked after every step against a plain reference model.

use std::sync::Arc;
use std::time::Duration;

use cache_core::Operation;
use cache_core::{CacheLayer, Clock, Entry, ManualClock, Pattern};
use cache_memory::MemoryLayer;
use cache_test_support::model::Model;
use futures::executor::block_on;
use proptest::prelude::*;

/// A context on the test's clock: the layer judges expiry by it.
fn at(
    clock: &dyn cache_core::Clock,
    operation: cache_core::Operation,
) -> cache_core::CallContext<'_> {
    cache_core::CallContext::new(clock, operation)
}

const KEYS: &[&str] = &["a:1", "a:2", "a:10", "b:1", "b:[x]", "b:*", "c"];
const PATTERNS: &[&str] = &["a:*", "a:?", "b:\\[x]", "b:\\*", "*1*", "[ab]:1", "c", "*"];

#[derive(Debug, Clone)]
enum Op {
    Set {
        key: usize,
        value: u8,
        size: usize,
        ttl_ms: Option<u64>,
    },
    Get {
        key: usize,
    },
    Delete {
        key: usize,
    },
    Invalidate {
        pattern: usize,
    },
    Advance {
        ms: u64,
    },
    Sweep,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..KEYS.len(), any::<u8>(), 0usize..64, proptest::option::of(1u64..500))
            .prop_map(|(key, value, size, ttl_ms)| Op::Set { key, value, size, ttl_ms }),
        4 => (0..KEYS.len()).prop_map(|key| Op::Get { key }),
        1 => (0..KEYS.len()).prop_map(|key| Op::Delete { key }),
        1 => (0..PATTERNS.len()).prop_map(|pattern| Op::Invalidate { pattern }),
        2 => (0u64..300).prop_map(|ms| Op::Advance { ms }),
        1 => Just(Op::Sweep),
    ]
}

fn payload(value: u8, size: usize) -> Vec<u8> {
    vec![value; size]
}

proptest! {
    #[test]
    fn memory_layer_agrees_with_the_model(
        small in any::<bool>(),
        ops in proptest::collection::vec(op(), 1..80),
    ) {
        let clock = ManualClock::shared();
        // A small budget exercises eviction, which the lossy model allows; a
        // large one evicts nothing, so a miss of a live entry fails.
        let (max_entries, max_bytes) = if small { (4, 200) } else { (1000, 1 << 20) };
        let layer = MemoryLayer::builder()
            .max_entries(max_entries)
            .max_bytes(max_bytes)
            .clock(clock.clone() as Arc<dyn Clock>)
            .sweep_interval(None)
            .build()
            .unwrap();
        let mut model = if small { Model::lossy() } else { Model::new() };
        for op in ops {
            match op {
                Op::Set { key, value, size, ttl_ms } => {
                    let key = KEYS[key];
                    let expires_at = ttl_ms.map(|ms| clock.now() + Duration::from_millis(ms));
                    let entry = Entry::new(payload(value, size)).expires_at(expires_at);
                    match block_on(layer.set(&at(&*clock, Operation::Write), key, entry)) {
                        Ok(()) => model.set(key, &payload(value, size), expires_at),
                        // A refused value must not leave the old one behind.
                        Err(error) => {
                            prop_assert!(error.is_refusal(), "{error}");
                            model.delete(key);
                        }
                    }
                }
                Op::Get { key } => {
                    let key = KEYS[key];
                    let found = block_on(layer.get(&at(&*clock, Operation::Read), key)).unwrap();
                    if let Some(entry) = &found {
                        prop_assert_eq!(Some(entry.expiry()), model.expiry(key, clock.now()));
                    }
                    let found = found.map(|entry| entry.value().to_vec());
                    model.check(key, clock.now(), found.as_deref()).map_err(TestCaseError::fail)?;
                }
                Op::Delete { key } => {
                    block_on(layer.delete(&at(&*clock, Operation::Remove), KEYS[key])).unwrap();
                    model.delete(KEYS[key]);
                }
                Op::Invalidate { pattern } => {
                    let pattern = Pattern::new(PATTERNS[pattern]);
                    block_on(layer.invalidate(&at(&*clock, Operation::Remove), &pattern)).unwrap();
                    model.invalidate(&pattern);
                }
                Op::Advance { ms } => clock.advance(Duration::from_millis(ms)),
                Op::Sweep => {
                    layer.sweep_expired();
                }
            }
            // After every step: every key reads as the model says (or as forgotten),
            // and the bounds hold.
            for key in KEYS {
                let found = block_on(layer.get(&at(&*clock, Operation::Read), key)).unwrap().map(|entry| entry.value().to_vec());
                model.check(key, clock.now(), found.as_deref()).map_err(TestCaseError::fail)?;
            }
            let stats = layer.stats();
            prop_assert!(stats.entries <= max_entries, "{stats:?}");
            prop_assert!(stats.bytes <= max_bytes, "{stats:?}");
        }
    }
}
