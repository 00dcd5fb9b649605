use std::time::{Duration, Instant};

use cache_core::{CacheLayer, Entry, Error, ManualClock, Pattern};
use futures::executor::block_on;

use super::*;
use cache_core::Operation;
use cache_test_support::ctx;

/// A context on the test's clock: the layer judges expiry by it.
fn at(
    clock: &dyn cache_core::Clock,
    operation: cache_core::Operation,
) -> cache_core::CallContext<'_> {
    cache_core::CallContext::new(clock, operation)
}

fn layer_with_clock(clock: &Arc<ManualClock>) -> MemoryLayer {
    MemoryLayer::builder()
        .clock(clock.clone())
        .sweep_interval(None)
        .build()
        .unwrap()
}

fn value(entry: Option<Entry>) -> Option<Vec<u8>> {
    entry.map(|entry| entry.value().to_vec())
}

#[test]
fn set_get_delete() {
    block_on(async {
        let layer = MemoryLayer::new();
        layer
            .set(&ctx::write(), "a", Entry::new(&b"1"[..]))
            .await
            .unwrap();
        assert_eq!(
            value(layer.get(&ctx::read(), "a").await.unwrap()),
            Some(b"1".to_vec())
        );
        assert!(layer.delete(&ctx::remove(), "a").await.unwrap());
        assert!(!layer.delete(&ctx::remove(), "a").await.unwrap());
        assert_eq!(layer.get(&ctx::read(), "a").await.unwrap(), None);
        let stats = layer.stats();
        assert_eq!(
            (stats.hits, stats.misses, stats.sets, stats.removals),
            (1, 1, 1, 1)
        );
        assert_eq!(stats.bytes, 0);
    });
}

#[test]
fn expired_entries_are_never_returned_and_are_counted() {
    block_on(async {
        let clock = ManualClock::shared();
        let layer = layer_with_clock(&clock);
        let expires = clock.now() + Duration::from_millis(100);
        layer
            .set(
                &at(&*clock, Operation::Write),
                "k",
                Entry::new(&b"v"[..]).expires_at(expires),
            )
            .await
            .unwrap();
        clock.advance(Duration::from_millis(99));
        assert!(
            layer
                .get(&at(&*clock, Operation::Read), "k")
                .await
                .unwrap()
                .is_some()
        );
        clock.advance(Duration::from_millis(1));
        assert!(
            layer
                .get(&at(&*clock, Operation::Read), "k")
                .await
                .unwrap()
                .is_none(),
            "dead at its expiry instant"
        );
        let stats = layer.stats();
        assert_eq!(stats.expirations, 1);
        assert_eq!(stats.entries, 0);
        assert_eq!(stats.bytes, 0);
    });
}

#[test]
fn an_already_expired_write_removes_the_old_value() {
    block_on(async {
        let clock = ManualClock::shared();
        let layer = layer_with_clock(&clock);
        layer
            .set(&at(&*clock, Operation::Write), "k", Entry::new(&b"old"[..]))
            .await
            .unwrap();
        layer
            .set(
                &at(&*clock, Operation::Write),
                "k",
                Entry::new(&b"new"[..]).expires_at(clock.now()),
            )
            .await
            .unwrap();
        assert_eq!(
            layer.get(&at(&*clock, Operation::Read), "k").await.unwrap(),
            None
        );
    });
}

#[test]
fn sweep_reclaims_expired_entries() {
    block_on(async {
        let clock = ManualClock::shared();
        let layer = layer_with_clock(&clock);
        for i in 0..50 {
            let ttl = Duration::from_secs(if i % 2 == 0 { 1 } else { 100 });
            let entry = Entry::new(vec![0u8; 10]).expires_at(clock.now() + ttl);
            layer
                .set(&at(&*clock, Operation::Write), &format!("k{i}"), entry)
                .await
                .unwrap();
        }
        clock.advance(Duration::from_secs(2));
        assert_eq!(layer.sweep_expired(), 25);
        assert_eq!(layer.len(), 25);
        let stats = layer.stats();
        assert_eq!(stats.expirations, 25);
        // Odd keys survive: k1..k9 (2 bytes each), k11..k49 (3 bytes each), 10-byte values.
        assert_eq!(stats.bytes, 5 * 2 + 20 * 3 + 25 * 10);
    });
}

#[test]
fn sweeper_thread_reclaims_in_the_background_and_stops_on_drop() {
    let layer = MemoryLayer::builder()
        .sweep_interval(Some(Duration::from_millis(5)))
        .build()
        .unwrap();
    let exited = layer.inner.sweeper_exited.clone();
    let expires = Instant::now() + Duration::from_millis(20);
    block_on(layer.set(
        &ctx::write(),
        "k",
        Entry::new(&b"v"[..]).expires_at(expires),
    ))
    .unwrap();
    // Generous deadlines: they only matter if something hangs.
    let deadline = Instant::now() + Duration::from_secs(10);
    while layer.stats().expirations == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(
        layer.stats().expirations,
        1,
        "the sweeper removed the entry without a read"
    );
    assert!(!exited.load(std::sync::atomic::Ordering::SeqCst));

    drop(layer);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !exited.load(std::sync::atomic::Ordering::SeqCst) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(
        exited.load(std::sync::atomic::Ordering::SeqCst),
        "the sweeper outlived its layer"
    );
}

#[test]
fn oversized_values_are_refused_loudly_and_the_old_value_is_removed() {
    block_on(async {
        let layer = MemoryLayer::builder()
            .max_entries(1000)
            .max_bytes(64 * 1024)
            .shards(4)
            .sweep_interval(None)
            .build()
            .unwrap();
        let limit = layer.max_entry_bytes();
        assert!(limit > 1024 && limit < 64 * 1024, "limit {limit}");
        let key = "big";
        let fits = vec![7u8; (limit - key.len() as u64) as usize];
        layer
            .set(&ctx::write(), key, Entry::new(fits.clone()))
            .await
            .unwrap();
        assert_eq!(
            value(layer.get(&ctx::read(), key).await.unwrap()),
            Some(fits),
            "a value at the limit is kept"
        );

        let too_big = vec![7u8; (limit - key.len() as u64 + 1) as usize];
        let error = layer
            .set(&ctx::write(), key, Entry::new(too_big))
            .await
            .unwrap_err();
        assert!(
            matches!(error, Error::ValueTooLarge { size, limit: l, .. } if size == limit + 1 && l == limit)
        );
        assert!(error.is_refusal());
        assert_eq!(
            layer.get(&ctx::read(), key).await.unwrap(),
            None,
            "no stale value after a refused write"
        );
        let stats = layer.stats();
        assert_eq!(stats.rejections, 1);
        assert_eq!(stats.bytes, 0);
    });
}

#[test]
fn entry_and_byte_bounds_both_hold() {
    block_on(async {
        let layer = MemoryLayer::builder()
            .max_entries(100)
            .max_bytes(1_000_000)
            .sweep_interval(None)
            .build()
            .unwrap();
        for i in 0..1000 {
            layer
                .set(
                    &ctx::write(),
                    &format!("key:{i}"),
                    Entry::new(vec![1u8; 16]),
                )
                .await
                .unwrap();
            assert!(layer.len() <= 100, "{} entries", layer.len());
        }
        let stats = layer.stats();
        assert!(stats.evictions >= 900, "{stats:?}");
        assert_eq!(stats.entries, layer.len() as u64);

        let layer = MemoryLayer::builder()
            .max_entries(10_000)
            .max_bytes(10_000)
            .sweep_interval(None)
            .build()
            .unwrap();
        for i in 0..1000 {
            layer
                .set(
                    &ctx::write(),
                    &format!("key:{i:04}"),
                    Entry::new(vec![1u8; 92]),
                )
                .await
                .unwrap();
            assert!(layer.stats().bytes <= 10_000);
        }
        assert!(layer.len() <= 100);
    });
}

#[test]
fn replacing_a_value_is_not_an_eviction() {
    block_on(async {
        let layer = MemoryLayer::new();
        layer
            .set(&ctx::write(), "k", Entry::new(vec![0u8; 10]))
            .await
            .unwrap();
        layer
            .set(&ctx::write(), "k", Entry::new(vec![0u8; 30]))
            .await
            .unwrap();
        let stats = layer.stats();
        assert_eq!(stats.evictions, 0);
        assert_eq!(stats.bytes, 31);
        assert_eq!(stats.entries, 1);
    });
}

#[test]
fn invalidate_by_pattern_and_literal() {
    block_on(async {
        let layer = MemoryLayer::new();
        for key in [
            "reviews:offer:1:page:0",
            "reviews:offer:1:page:1",
            "reviews:offer:12:page:0",
            "rating:offer:1",
            "weird*key",
        ] {
            layer
                .set(&ctx::write(), key, Entry::new(&b"x"[..]))
                .await
                .unwrap();
        }
        let removed = layer
            .invalidate(&ctx::remove(), &Pattern::new("reviews:offer:1:*"))
            .await
            .unwrap();
        assert_eq!(removed, 2);
        assert!(
            layer
                .get(&ctx::read(), "reviews:offer:12:page:0")
                .await
                .unwrap()
                .is_some()
        );
        assert_eq!(
            layer
                .invalidate(&ctx::remove(), &Pattern::exact("weird*key"))
                .await
                .unwrap(),
            1
        );
        assert!(
            layer
                .get(&ctx::read(), "rating:offer:1")
                .await
                .unwrap()
                .is_some()
        );
        assert_eq!(layer.stats().removals, 3);
    });
}

#[test]
fn bad_configurations_are_errors() {
    assert!(MemoryLayer::builder().max_entries(1).build().is_err());
    assert!(MemoryLayer::builder().max_bytes(0).build().is_err());
    assert!(
        MemoryLayer::builder()
            .sweep_interval(Some(Duration::ZERO))
            .build()
            .is_err()
    );
    let error = MemoryLayer::builder().max_entries(0).build().unwrap_err();
    assert!(error.to_string().contains("max_entries"), "{error}");
}

#[test]
fn the_layer_passes_the_conformance_suite() {
    let clock = ManualClock::new();
    let layer = MemoryLayer::builder()
        .max_bytes(1 << 20)
        .max_entries(64)
        .shards(1)
        .sweep_interval(None)
        .build()
        .unwrap();
    let limit = layer.max_entry_bytes() as usize;
    block_on(
        cache_core::testing::Conformance::new(&layer)
            .manual_clock(&clock)
            // The limit weighs key and value; leave room for the key.
            .max_value_size(limit - "conformance:a".len())
            .run(),
    );
}

/// Sweeps and removals by pattern walk the entries one at a time while
/// writers replace them: a value written after the walk judged the old one
/// is never removed in its place, and the byte count stays exact.
#[test]
fn sweeps_and_removals_racing_writes_keep_the_newest_values_and_the_byte_count() {
    let clock = ManualClock::shared();
    let layer = layer_with_clock(&clock);
    let write = |key: &str, len: usize, ttl: Duration| {
        let entry = Entry::new(vec![1u8; len]).expires_at(clock.now() + ttl);
        block_on(layer.set(&at(&*clock, Operation::Write), key, entry)).unwrap();
    };
    let keys: Vec<String> = (0..2_000).map(|i| format!("race:{i}")).collect();
    for round in 0..20usize {
        // Every key expires; then writers give each a new, live value while
        // a sweep and a removal by pattern (of keys no writer touches) run.
        for key in &keys {
            write(key, 5 + round % 7, Duration::from_secs(1));
        }
        for i in 0..100 {
            write(&format!("other:{i}"), 3, Duration::from_secs(3600));
        }
        clock.advance(Duration::from_secs(2));
        std::thread::scope(|scope| {
            scope.spawn(|| {
                for key in keys.iter().rev() {
                    write(key, 9, Duration::from_secs(3600));
                }
            });
            scope.spawn(|| layer.sweep_expired());
            scope.spawn(|| {
                block_on(layer.invalidate(&ctx::remove(), &Pattern::new("other:*"))).unwrap()
            });
        });
        // Whatever the interleaving: every key holds its new value, no
        // `other:` key is left, and the bytes are those of what is held.
        for key in &keys {
            let found = block_on(layer.get(&at(&*clock, Operation::Read), key)).unwrap();
            assert_eq!(
                found.map(|entry| entry.len()),
                Some(9),
                "{key} in round {round}"
            );
        }
        assert_eq!(layer.len(), keys.len(), "round {round}");
        let expected: usize = keys.iter().map(|key| key.len() + 9).sum();
        assert_eq!(layer.stats().bytes, expected as u64, "round {round}");
    }
}

#[test]
fn replace_now_swaps_only_the_entry_it_was_given_for_an_equal_one() {
    block_on(async {
        let layer = MemoryLayer::new();
        let expiry = Instant::now() + Duration::from_secs(60);
        let plain = Entry::new(&b"42"[..]).expires_at(expiry);
        layer.set(&ctx::write(), "a", plain.clone()).await.unwrap();
        let held = layer.get(&ctx::read(), "a").await.unwrap().unwrap();
        let before = layer.stats();

        // Not the same value: refused, whatever is held.
        let other = Entry::with_decoded(&b"43"[..], 1, 43u32).expires_at(expiry);
        assert!(!layer.replace_now("a", &held, &|| other.clone()));
        let later =
            Entry::with_decoded(&b"42"[..], 1, 42u32).expires_at(expiry + Duration::from_secs(1));
        assert!(!layer.replace_now("a", &held, &|| later.clone()));

        // The same value, made with its decoded form: swapped in.
        let typed = Entry::with_decoded(&b"42"[..], 1, 42u32).expires_at(expiry);
        assert!(layer.replace_now("a", &held, &|| typed.clone()));
        let now_held = layer.get(&ctx::read(), "a").await.unwrap().unwrap();
        assert!(now_held.ptr_eq(&typed));
        assert_eq!(now_held.decoded_ref::<u32>(1), Some(&42));

        // The old entry is no longer held: a second swap from it is refused.
        let again = Entry::with_decoded(&b"42"[..], 2, 42u64).expires_at(expiry);
        assert!(!layer.replace_now("a", &held, &|| again.clone()));
        // Nor is a key that holds nothing.
        assert!(!layer.replace_now("b", &held, &|| again.clone()));
        assert_eq!(layer.get(&ctx::read(), "b").await.unwrap(), None);

        // Not a write: the bytes, the entry count and the write counters stay.
        let after = layer.stats();
        assert_eq!(
            (
                after.bytes,
                after.entries,
                after.sets,
                after.removals,
                after.evictions
            ),
            (
                before.bytes,
                before.entries,
                before.sets,
                before.removals,
                before.evictions
            )
        );
    });
}
