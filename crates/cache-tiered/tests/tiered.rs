//! Behaviour of the composer over real memory layers.

use std::sync::Arc;
use std::time::Duration;

use cache_core::{CacheLayer, Clock, Entry, FailClosed, ManualClock, Pattern};
use cache_core::{CallContext, Operation};
use cache_memory::MemoryLayer;
use cache_test_support::ctx;
use cache_test_support::layers::{Fault, FaultyLayer, HoldableLayer, SharedLayer};
use cache_tiered::{Error, Removal, Tier, TieredCache};
use futures::FutureExt;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Offer {
    id: u64,
    title: String,
}

fn offer(id: u64) -> Offer {
    Offer {
        id,
        title: format!("offer {id}"),
    }
}

fn memory(name: &str, clock: &Arc<ManualClock>) -> MemoryLayer {
    MemoryLayer::builder()
        .name(name)
        .clock(clock.clone())
        .sweep_interval(None)
        .build()
        .unwrap()
}

/// Two memory tiers on one manual clock; the layers are handed back too.
fn two_tiers(clock: &Arc<ManualClock>) -> (TieredCache, MemoryLayer, MemoryLayer) {
    let (l1, l2) = (memory("l1", clock), memory("l2", clock));
    let cache = TieredCache::builder()
        .layer(l1.clone())
        .layer(l2.clone())
        .clock(clock.clone())
        .build()
        .unwrap();
    (cache, l1, l2)
}

const TTL: Duration = Duration::from_secs(300);

#[tokio::test]
async fn a_lower_hit_fills_upward_with_the_remaining_expiry_never_more() {
    let clock = ManualClock::shared();
    let (cache, l1, l2) = two_tiers(&clock);
    cache.set("offer:1", &offer(1), TTL).await.unwrap();
    l1.delete(&ctx::remove(), "offer:1").await.unwrap();
    clock.advance(Duration::from_secs(100));

    assert_eq!(cache.get::<Offer>("offer:1").await.unwrap(), Some(offer(1)));
    let in_l1 = l1
        .get(&ctx::read(), "offer:1")
        .await
        .unwrap()
        .expect("filled into L1");
    let in_l2 = l2.get(&ctx::read(), "offer:1").await.unwrap().unwrap();
    assert_eq!(in_l1.expiry(), in_l2.expiry());
    assert_eq!(in_l1.remaining(clock.now()), Some(Duration::from_secs(200)));

    clock.advance(Duration::from_secs(200));
    assert_eq!(
        cache.get::<Offer>("offer:1").await.unwrap(),
        None,
        "expired in both"
    );
    let stats = cache.stats();
    assert_eq!((stats.hits, stats.misses), (1, 1));
    assert_eq!(stats.tiers[0].fills, 1);
    assert_eq!(stats.tiers[1].hits, 1);
}

#[tokio::test]
async fn ttl_caps_bound_each_tier() {
    let clock = ManualClock::shared();
    let (l1, l2) = (memory("l1", &clock), memory("l2", &clock));
    let cache = TieredCache::builder()
        .tier(Tier::new(l1.clone()).ttl_cap(Duration::from_secs(10)))
        .layer(l2.clone())
        .clock(clock.clone())
        .build()
        .unwrap();
    cache.set("k", &1u32, TTL).await.unwrap();
    let now = clock.now();
    assert_eq!(
        l1.get(&ctx::read(), "k")
            .await
            .unwrap()
            .unwrap()
            .remaining(now),
        Some(Duration::from_secs(10))
    );
    assert_eq!(
        l2.get(&ctx::read(), "k")
            .await
            .unwrap()
            .unwrap()
            .remaining(now),
        Some(TTL)
    );
    clock.advance(Duration::from_secs(11));
    let read = CallContext::new(&*clock, Operation::Read);
    assert!(l1.get(&read, "k").await.unwrap().is_none());
    assert_eq!(
        cache.get::<u32>("k").await.unwrap(),
        Some(1),
        "L2 still has it"
    );
    assert_eq!(
        l1.get(&ctx::read(), "k")
            .await
            .unwrap()
            .unwrap()
            .remaining(clock.now()),
        Some(Duration::from_secs(10)),
        "refilled, capped again"
    );
}

#[tokio::test]
async fn with_the_degraded_ttl_off_a_failing_lower_tier_keeps_upper_tiers_from_holding_the_value() {
    let clock = ManualClock::shared();
    let l1 = memory("l1", &clock);
    let l2 = Arc::new(FaultyLayer::new(Arc::new(memory("l2", &clock))));
    let cache = TieredCache::builder()
        .layer(l1.clone())
        .tier(Tier::shared(l2.clone()))
        .clock(clock.clone())
        .degraded_ttl(Duration::ZERO) // off
        .build()
        .unwrap();
    cache.set("k", &1u32, TTL).await.unwrap();
    l2.set_fault(Fault::Fail);
    // Fail open: no error, but L1 must not keep a value L2 could not take.
    cache.set("k", &2u32, TTL).await.unwrap();
    assert!(l1.get(&ctx::read(), "k").await.unwrap().is_none());
    assert_eq!(
        cache.get::<u32>("k").await.unwrap(),
        None,
        "L2 failing reads as a miss"
    );
    assert_eq!(cache.stats().tiers[1].errors, 2, "the write and the read");
}

#[tokio::test]
async fn by_default_upper_tiers_hold_a_value_a_failing_lower_tier_lacks_for_5_s_only() {
    let clock = ManualClock::shared();
    let l1 = memory("l1", &clock);
    let l2 = Arc::new(FaultyLayer::new(Arc::new(memory("l2", &clock))));
    let cache = TieredCache::builder()
        .layer(l1.clone())
        .tier(Tier::shared(l2.clone()))
        .clock(clock.clone())
        .build()
        .unwrap();
    cache.set("k", &1u32, TTL).await.unwrap();
    l2.set_fault(Fault::Fail);
    // Fail open: no error, and L1 takes the value L2 could not, briefly.
    cache.set("k", &2u32, TTL).await.unwrap();
    let in_l1 = l1.get(&ctx::read(), "k").await.unwrap().unwrap();
    assert_eq!(in_l1.remaining(clock.now()), Some(Duration::from_secs(5)));
    assert_eq!(cache.get::<u32>("k").await.unwrap(), Some(2), "from L1");

    clock.advance(Duration::from_secs(5));
    assert_eq!(
        cache.get::<u32>("k").await.unwrap(),
        None,
        "gone from L1 after 5 s; L2 failing reads as a miss"
    );
}

#[tokio::test]
async fn with_a_degraded_ttl_l1_keeps_serving_while_l2_is_down() {
    let clock = ManualClock::shared();
    let l1 = memory("l1", &clock);
    let l2 = Arc::new(FaultyLayer::new(Arc::new(memory("l2", &clock))));
    let cache = TieredCache::builder()
        .layer(l1.clone())
        .tier(Tier::shared(l2.clone()))
        .clock(clock.clone())
        .degraded_ttl(Duration::from_secs(5))
        .build()
        .unwrap();
    l2.set_fault(Fault::Fail);
    let loads = std::sync::atomic::AtomicU32::new(0);
    let load = || async {
        loads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok::<_, std::io::Error>(7u32)
    };
    assert_eq!(cache.get_or_compute("k", TTL, load).await.unwrap(), 7);
    assert_eq!(cache.get_or_compute("k", TTL, load).await.unwrap(), 7);
    assert_eq!(
        loads.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "served from L1"
    );
    let in_l1 = l1.get(&ctx::read(), "k").await.unwrap().unwrap();
    assert_eq!(
        in_l1.remaining(clock.now()),
        Some(Duration::from_secs(5)),
        "for the degraded TTL only"
    );

    clock.advance(Duration::from_secs(5));
    assert_eq!(cache.get_or_compute("k", TTL, load).await.unwrap(), 7);
    assert_eq!(
        loads.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "reloaded after the degraded TTL"
    );

    // Once L2 is back, writes are whole again.
    l2.set_fault(Fault::None);
    cache.set("k", &8u32, TTL).await.unwrap();
    assert_eq!(
        l1.get(&ctx::read(), "k")
            .await
            .unwrap()
            .unwrap()
            .remaining(clock.now()),
        Some(TTL)
    );
}

#[tokio::test]
async fn fail_closed_returns_the_error() {
    let clock = ManualClock::shared();
    let l2 = Arc::new(FaultyLayer::new(Arc::new(memory("l2", &clock))));
    let cache = TieredCache::builder()
        .layer(memory("l1", &clock))
        .tier(Tier::shared(l2.clone()).policy(FailClosed))
        .build()
        .unwrap();
    l2.set_fault(Fault::Fail);
    let error = cache.get::<u32>("k").await.unwrap_err();
    assert!(
        matches!(&error, Error::Cache(e) if e.layer() == Some("l2")),
        "{error}"
    );
    assert!(cache.set("k", &1u32, TTL).await.is_err());
    assert!(cache.delete("k").await.is_err());
    let loaded = cache
        .get_or_compute("k", TTL, || async { Ok::<_, std::io::Error>(1u32) })
        .await;
    assert!(loaded.is_err(), "fail closed also on the loader's write");
}

#[tokio::test(start_paused = true)]
async fn a_hung_tier_costs_at_most_its_timeout() {
    let clock = ManualClock::shared();
    let l2 = Arc::new(FaultyLayer::new(Arc::new(memory("l2", &clock))));
    let cache = TieredCache::builder()
        .layer(memory("l1", &clock))
        .tier(Tier::shared(l2.clone()).timeout(Duration::from_millis(50)))
        .build()
        .unwrap();
    l2.set_fault(Fault::Hang);
    let started = tokio::time::Instant::now();
    let value = cache
        .get_or_compute("k", TTL, || async { Ok::<_, std::io::Error>(7u32) })
        .await
        .unwrap();
    assert_eq!(value, 7);
    // One timed-out read; the loaded value is not written to the tier that
    // just failed, so the caller pays for it once.
    assert_eq!(started.elapsed(), Duration::from_millis(50));
    assert_eq!(cache.stats().tiers[1].errors, 1);
    assert_eq!(l2.calls(), 1);

    // A later call tries the tier again (it may have recovered).
    l2.set_fault(Fault::None);
    cache.set("k2", &1u32, TTL).await.unwrap();
    assert_eq!(l2.calls(), 2);
}

#[tokio::test]
async fn delete_and_invalidate_reach_every_tier() {
    let clock = ManualClock::shared();
    let (cache, l1, l2) = two_tiers(&clock);
    for key in [
        "reviews:offer:1:page:0",
        "reviews:offer:1:page:1",
        "reviews:offer:2:page:0",
    ] {
        cache.set(key, &0u8, TTL).await.unwrap();
    }
    assert!(
        cache
            .delete("reviews:offer:2:page:0")
            .await
            .unwrap()
            .found()
    );
    assert!(
        !cache
            .delete("reviews:offer:2:page:0")
            .await
            .unwrap()
            .found()
    );
    let removed = cache
        .invalidate(&Pattern::new("reviews:offer:1:*"))
        .await
        .unwrap();
    assert_eq!(removed.removed, 2);
    assert!(removed.is_complete(), "{removed}");
    assert!(l1.is_empty() && l2.is_empty());
}

#[tokio::test]
async fn schema_bumps_serializer_changes_and_garbage_read_as_misses() {
    let clock = ManualClock::shared();
    let (l1, l2) = (memory("l1", &clock), memory("l2", &clock));
    let v1 = TieredCache::builder()
        .layer(l1.clone())
        .layer(l2.clone())
        .schema_version::<Offer>(1)
        .build()
        .unwrap();
    v1.set("offer:1", &offer(1), TTL).await.unwrap();

    // The next deploy changed Offer's shape and bumped its schema version.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    struct OfferV2 {
        id: u64,
        title: String,
        price_cents: u64,
    }
    let v2 = TieredCache::builder()
        .layer(l1.clone())
        .layer(l2.clone())
        .schema_version::<OfferV2>(2)
        .build()
        .unwrap();
    assert!(v2.get::<OfferV2>("offer:1").await.unwrap().is_none());
    // Foreign, not garbage: the old version of the service may still be
    // reading it (a rolling deploy), so it stays where it is.
    assert_eq!((l1.len(), l2.len()), (1, 1));
    let stats = v2.stats();
    assert_eq!((stats.tiers[0].foreign, stats.tiers[1].foreign), (1, 1));
    assert_eq!(stats.tiers[0].undecodable + stats.tiers[1].undecodable, 0);
    assert_eq!(v1.get::<Offer>("offer:1").await.unwrap(), Some(offer(1)));

    // Garbage under a key (another writer, a bug): a miss, never a panic,
    // and removed.
    let mut garbage = vec![3u8, 1, 1, 0, 0, 0];
    garbage.extend_from_slice(&[0xFF; 12]);
    l2.set(&ctx::write(), "offer:2", Entry::new(garbage))
        .await
        .unwrap();
    assert!(v1.get::<Offer>("offer:2").await.unwrap().is_none());
    l2.set(&ctx::write(), "offer:3", Entry::new(vec![]))
        .await
        .unwrap();
    assert!(v1.get::<Offer>("offer:3").await.unwrap().is_none());
    // The first is foreign (its fingerprint is not Offer's), the second
    // does not parse at all.
    assert_eq!(v1.stats().tiers[1].foreign, 1);
    assert_eq!(v1.stats().tiers[1].undecodable, 1);
    assert!(
        l2.get(&ctx::read(), "offer:3").await.unwrap().is_none(),
        "removed"
    );
}

#[tokio::test]
async fn a_value_of_one_type_never_reads_as_another() {
    let clock = ManualClock::shared();
    let (cache, _, _) = two_tiers(&clock);
    cache.set("n", &7u64, TTL).await.unwrap();
    assert_eq!(cache.get::<i64>("n").await.unwrap(), None, "not -4");
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Counter {
        hits: u64,
        enabled: bool,
    }
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Pair {
        a: u64,
        b: u8,
    }
    cache.set("p", &Pair { a: 9, b: 1 }, TTL).await.unwrap();
    assert_eq!(cache.get::<Counter>("p").await.unwrap(), None);
    // In L2 too, where no decoded value is remembered.
    let fresh = TieredCache::builder()
        .tier(Tier::shared(cache.layers().nth(1).unwrap().clone()))
        .build()
        .unwrap();
    assert_eq!(fresh.get::<Counter>("p").await.unwrap(), None);
    assert_eq!(
        fresh.get::<Pair>("p").await.unwrap(),
        Some(Pair { a: 9, b: 1 })
    );
    // What serializes alike still reads alike.
    cache.set("s", "lamp", TTL).await.unwrap();
    assert_eq!(
        cache.get::<String>("s").await.unwrap().as_deref(),
        Some("lamp")
    );
}

#[cfg(feature = "json")]
#[tokio::test]
async fn json_and_postcard_entries_do_not_mix() {
    let clock = ManualClock::shared();
    let l1 = memory("l1", &clock);
    let json = TieredCache::builder()
        .layer(l1.clone())
        .serializer(cache_core::Json)
        .build()
        .unwrap();
    json.set("k", &offer(1), TTL).await.unwrap();
    assert!(
        l1.get(&ctx::read(), "k")
            .await
            .unwrap()
            .unwrap()
            .value()
            .windows(5)
            .any(|w| w == b"offer")
    );
    let postcard = TieredCache::builder().layer(l1.clone()).build().unwrap();
    assert!(postcard.get::<Offer>("k").await.unwrap().is_none());
}

#[tokio::test]
async fn batch_reads_and_writes_keep_per_key_results_apart() {
    let clock = ManualClock::shared();
    let (cache, l1, l2) = two_tiers(&clock);
    let written = cache
        .set_many(&[("a", offer(1)), ("b", offer(2)), ("c", offer(3))], TTL)
        .await;
    assert!(written.iter().all(Result::is_ok));
    l1.delete(&ctx::remove(), "b").await.unwrap();
    l1.delete(&ctx::remove(), "c").await.unwrap();
    l2.delete(&ctx::remove(), "c").await.unwrap();

    let found = cache.get_many::<Offer>(&["a", "b", "c", "d"]).await;
    let found: Vec<_> = found.into_iter().map(Result::unwrap).collect();
    assert_eq!(found, vec![Some(offer(1)), Some(offer(2)), None, None]);
    assert!(
        l1.get(&ctx::read(), "b").await.unwrap().is_some(),
        "the L2 hit was filled into L1"
    );
    let stats = cache.stats();
    assert_eq!((stats.hits, stats.misses), (2, 2));
    assert_eq!(stats.tiers[1].hits, 1);
}

#[tokio::test]
async fn an_l1_refusing_an_oversized_value_is_not_an_error() {
    let clock = ManualClock::shared();
    let small = MemoryLayer::builder()
        .max_bytes(4096)
        .max_entries(16)
        .sweep_interval(None)
        .build()
        .unwrap();
    let l2 = memory("l2", &clock);
    let cache = TieredCache::builder()
        .layer(small.clone())
        .layer(l2.clone())
        .build()
        .unwrap();
    let big = vec![7u8; 10_000];
    cache.set("big", &big, TTL).await.unwrap();
    assert!(small.get(&ctx::read(), "big").await.unwrap().is_none());
    assert_eq!(cache.get::<Vec<u8>>("big").await.unwrap(), Some(big));
    assert_eq!(
        small.stats().rejections,
        2,
        "the write and the fill were refused"
    );
}

/// A `get` reads when it is first polled, as an `async fn` would, not
/// when it is made: what it answers is what the tiers held at that poll.
#[tokio::test]
async fn a_get_reads_at_its_first_poll_not_when_it_is_made() {
    let clock = ManualClock::shared();
    let (cache, _, _) = two_tiers(&clock);
    let early = cache.get::<u32>("k");
    cache.set("k", &1u32, TTL).await.unwrap();
    assert_eq!(early.await.unwrap(), Some(1), "made before the write");

    let early = cache.get::<u32>("k");
    drop(cache.delete("k").await.unwrap());
    assert_eq!(early.await.unwrap(), None, "made before the delete");
    assert_eq!(
        cache.stats().tiers[0].hits,
        1,
        "only the polled reads count"
    );
}

/// An L1 over a shared L2 that can hold a read, with `1u32` under `k` in
/// the L2 only.
async fn one_below_a_holdable_l2() -> (TieredCache, MemoryLayer, Arc<HoldableLayer>) {
    let clock = ManualClock::shared();
    let l1 = memory("l1", &clock);
    let l2 = Arc::new(HoldableLayer::new(Arc::new(memory("l2", &clock))));
    let cache = TieredCache::builder()
        .layer(l1.clone())
        .tier(Tier::shared(l2.clone()))
        .build()
        .unwrap();
    cache.set("k", &1u32, TTL).await.unwrap();
    l1.delete(&ctx::remove(), "k").await.unwrap();
    (cache, l1, l2)
}

/// A `get` dropped while it waits on a lower tier leaves nothing behind:
/// no fill of the upper tier, and the next `get` reads and fills as usual.
#[tokio::test]
async fn a_get_dropped_while_it_waits_below_leaves_nothing_behind() {
    let (cache, l1, l2) = one_below_a_holdable_l2().await;

    l2.hold_next_get();
    let mut dropped = Box::pin(cache.get::<u32>("k"));
    assert!((&mut dropped).now_or_never().is_none(), "held below L1");
    assert_eq!(l2.held(), 1);
    drop(dropped);
    assert!(
        l1.get(&ctx::read(), "k").await.unwrap().is_none(),
        "no fill"
    );

    assert_eq!(cache.get::<u32>("k").await.unwrap(), Some(1));
    assert!(l1.get(&ctx::read(), "k").await.unwrap().is_some(), "filled");
    assert_eq!(cache.stats().tiers[0].fills_discarded, 0);
}

/// A fire-and-forget L1 population (filling L1 after an L2 hit with no
/// check) would let an L2 read that raced with a delete write the deleted
/// value back into L1. Here the read is held
/// between reading L2 and filling L1 while the delete runs.
#[tokio::test]
async fn a_fill_racing_with_a_delete_does_not_resurrect_the_value() {
    for mutation in ["delete", "set", "invalidate"] {
        let (cache, _, l2) = one_below_a_holdable_l2().await;

        l2.hold_next_get();
        let mut racing_get = Box::pin(cache.get::<u32>("k"));
        assert!(
            (&mut racing_get).now_or_never().is_none(),
            "held after reading L2"
        );
        assert_eq!(l2.held(), 1);
        match mutation {
            "delete" => drop(cache.delete("k").await.unwrap()),
            "set" => cache.set("k", &2u32, TTL).await.unwrap(),
            _ => drop(cache.invalidate(&Pattern::new("*")).await.unwrap()),
        }
        l2.release();
        assert_eq!(
            racing_get.await.unwrap(),
            Some(1),
            "the read itself saw the old value"
        );
        let expected = if mutation == "set" { Some(2) } else { None };
        assert_eq!(
            cache.get::<u32>("k").await.unwrap(),
            expected,
            "after a racing {mutation}"
        );
        assert_eq!(cache.stats().tiers[0].fills_discarded, 1);
    }
}

#[tokio::test]
async fn a_loader_racing_with_a_delete_is_returned_but_not_cached() {
    let clock = ManualClock::shared();
    let l1 = memory("l1", &clock);
    let cache = TieredCache::builder().layer(l1.clone()).build().unwrap();
    let value = cache
        .get_or_compute("k", TTL, || async {
            // The data changes and is invalidated while we load the old copy.
            cache.delete("k").await.unwrap();
            Ok::<_, std::io::Error>(1u32)
        })
        .await
        .unwrap();
    assert_eq!(value, 1);
    assert!(l1.get(&ctx::read(), "k").await.unwrap().is_none());
}

#[tokio::test]
async fn stats_report_each_tier_and_the_hit_ratio() {
    let clock = ManualClock::shared();
    let cache = TieredCache::builder()
        .layer(memory("l1", &clock))
        .layer(memory("l2", &clock))
        .build()
        .unwrap();
    cache.set("k", &1u8, TTL).await.unwrap();
    for _ in 0..3 {
        cache.get::<u8>("k").await.unwrap();
    }
    cache.get::<u8>("missing").await.unwrap();
    let stats = cache.stats();
    assert_eq!(stats.hit_ratio(), 0.75);
    assert_eq!(stats.tiers.len(), 2);
    assert_eq!(stats.tiers[0].name, "l1");
    assert_eq!(stats.tiers[0].layer.hits, 3);
    assert_eq!(stats.tiers[1].misses, 1);
}

#[test]
fn building_without_tiers_is_an_error() {
    assert!(TieredCache::builder().build().is_err());
    let clock: Arc<dyn Clock> = ManualClock::shared();
    assert!(
        TieredCache::builder()
            .clock(clock)
            .layer(MemoryLayer::new())
            .hard_timeout(Duration::ZERO)
            .build()
            .is_err()
    );
}

/// L1 memory over a memory L2 marked shared, as for instances sharing Redis.
fn local_over_shared(clock: &Arc<ManualClock>) -> (TieredCache, MemoryLayer, MemoryLayer) {
    let (l1, l2) = (memory("l1", clock), memory("l2", clock));
    let cache = TieredCache::builder()
        .layer(l1.clone())
        .layer(SharedLayer(Arc::new(l2.clone())))
        .clock(clock.clone())
        .build()
        .unwrap();
    (cache, l1, l2)
}

#[tokio::test]
async fn local_removals_leave_shared_tiers_alone() {
    let clock = Arc::new(ManualClock::new());
    let (cache, l1, l2) = local_over_shared(&clock);
    let ttl = Duration::from_secs(60);
    for id in 1..=3 {
        cache
            .set(&format!("offer:{id}"), &offer(id), ttl)
            .await
            .unwrap();
    }

    assert!(
        cache
            .remove(Removal::key("offer:1").local())
            .await
            .unwrap()
            .found()
    );
    assert!(l1.get(&ctx::read(), "offer:1").await.unwrap().is_none());
    assert!(l2.get(&ctx::read(), "offer:1").await.unwrap().is_some());

    let local = cache
        .remove(Removal::pattern(&Pattern::new("offer:*")).local())
        .await
        .unwrap();
    assert_eq!(local.removed, 2);
    assert_eq!(local.tiers.len(), 1, "only the local tier: {local}");
    for id in 1..=3 {
        let key = format!("offer:{id}");
        assert!(l1.get(&ctx::read(), &key).await.unwrap().is_none(), "{key}");
        assert!(l2.get(&ctx::read(), &key).await.unwrap().is_some(), "{key}");
        // The shared copy is still there to read (and refill L1 from).
        assert_eq!(cache.get::<Offer>(&key).await.unwrap(), Some(offer(id)));
    }

    // The everywhere variants reach the shared tier.
    assert!(cache.delete("offer:1").await.unwrap().found());
    assert!(l2.get(&ctx::read(), "offer:1").await.unwrap().is_none());
}

#[tokio::test]
async fn a_local_removal_stops_a_racing_fill_from_the_shared_tier() {
    // Another instance changed offer:1 and told this one, while this one
    // was reading the old value from the shared tier: the fill must not put
    // the old value back into L1 after the local removal.
    let clock = Arc::new(ManualClock::new());
    let l1 = memory("l1", &clock);
    let l2 = memory("l2", &clock);
    let held = Arc::new(HoldableLayer::new(Arc::new(SharedLayer(Arc::new(
        l2.clone(),
    )))));
    let cache = TieredCache::builder()
        .layer(l1.clone())
        .tier(Tier::shared(held.clone()))
        .clock(clock.clone())
        .build()
        .unwrap();
    cache.set("offer:1", &offer(1), TTL).await.unwrap();
    l1.delete(&ctx::remove(), "offer:1").await.unwrap();

    held.hold_next_get();
    let mut read = Box::pin(cache.get::<Offer>("offer:1"));
    assert!(
        (&mut read).now_or_never().is_none(),
        "the read waits inside L2"
    );
    cache.remove(Removal::key("offer:1").local()).await.unwrap();
    held.release();
    // The read itself may answer with what it read; L1 must not keep it.
    assert_eq!(read.await.unwrap(), Some(offer(1)));
    assert!(l1.get(&ctx::read(), "offer:1").await.unwrap().is_none());
    assert!(l2.get(&ctx::read(), "offer:1").await.unwrap().is_some());
}

#[tokio::test]
async fn removals_report_a_tier_that_failed_open() {
    let clock = Arc::new(ManualClock::new());
    let faulty = Arc::new(FaultyLayer::new(Arc::new(memory("l2", &clock))));
    let cache = TieredCache::builder()
        .layer(memory("l1", &clock))
        .tier(Tier::shared(faulty.clone()))
        .clock(clock.clone())
        .build()
        .unwrap();
    cache
        .set("k", &1u32, Duration::from_secs(60))
        .await
        .unwrap();
    faulty.set_fault(Fault::Fail);
    // The default policy fails open: the calls carry on, and say that the
    // shared tier was skipped (the value is still there, and would come
    // back from it).
    for removed in [
        cache.delete("k").await.unwrap(),
        cache.invalidate(&Pattern::new("*")).await.unwrap(),
    ] {
        assert!(!removed.is_complete(), "{removed}");
        assert_eq!(removed.skipped().collect::<Vec<_>>(), ["l2"]);
        assert!(
            removed.tiers[0].removed.is_some(),
            "L1 did its part: {removed}"
        );
    }
    faulty.set_fault(Fault::None);
    let removed = cache.delete("k").await.unwrap();
    assert!(
        removed.is_complete() && removed.found(),
        "still there below: {removed}"
    );
}

#[tokio::test]
async fn the_first_hit_stores_the_l1_entry_again_with_its_decoded_value() {
    let clock = ManualClock::shared();
    let (cache, l1, l2) = two_tiers(&clock);
    cache.set("offer:1", &offer(1), TTL).await.unwrap();
    let written = l1.get(&ctx::read(), "offer:1").await.unwrap().unwrap();
    assert!(!written.carries_decoded(), "a write stores bytes");

    // The first hit decodes, and stores the same bytes and expiry again,
    // made with the value; the next hits clone it from there.
    assert_eq!(cache.get::<Offer>("offer:1").await.unwrap(), Some(offer(1)));
    let held = l1.get(&ctx::read(), "offer:1").await.unwrap().unwrap();
    assert!(held.carries_decoded());
    assert!(!held.ptr_eq(&written));
    assert_eq!(held, written, "the same bytes and expiry");
    for _ in 0..3 {
        assert_eq!(cache.get::<Offer>("offer:1").await.unwrap(), Some(offer(1)));
    }
    let again = l1.get(&ctx::read(), "offer:1").await.unwrap().unwrap();
    assert!(again.ptr_eq(&held), "stored once, not on every hit");

    // A value filled from below is stored again the same way, once.
    l1.delete(&ctx::remove(), "offer:1").await.unwrap();
    assert_eq!(cache.get::<Offer>("offer:1").await.unwrap(), Some(offer(1)));
    assert_eq!(cache.get::<Offer>("offer:1").await.unwrap(), Some(offer(1)));
    let filled = l1.get(&ctx::read(), "offer:1").await.unwrap().unwrap();
    assert!(filled.carries_decoded());
    assert_eq!(
        Some(filled.expiry()),
        Some(
            l2.get(&ctx::read(), "offer:1")
                .await
                .unwrap()
                .unwrap()
                .expiry()
        )
    );

    // Not a write: the L1 counted one set (the write) and one fill, no more.
    let l1_stats = l1.stats();
    assert_eq!((l1_stats.sets, l1_stats.entries), (2, 1));
    // And it expires as the bytes do.
    clock.advance(TTL);
    assert_eq!(cache.get::<Offer>("offer:1").await.unwrap(), None);
}

/// Readers racing a writer over an L1 whose entries are stored again with
/// their decoded value on their first hit: a swap must never put back an
/// older version, so each reader sees versions that never go down, and the
/// last one in the end.
#[test]
fn storing_an_entry_again_never_brings_back_an_older_version() {
    const VERSIONS: u64 = 20_000;
    let cache = TieredCache::builder()
        .layer(MemoryLayer::builder().sweep_interval(None).build().unwrap())
        .build()
        .unwrap();
    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
    };
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        for _ in 0..3 {
            scope.spawn(|| {
                runtime().block_on(async {
                    let mut seen = 0;
                    let mut reads = 0u64;
                    while !done.load(std::sync::atomic::Ordering::Acquire) || reads == 0 {
                        if let Some(version) = cache.get::<Arc<u64>>("version").await.unwrap() {
                            assert!(*version >= seen, "read {version} after {seen}");
                            seen = *version;
                        }
                        reads += 1;
                    }
                    let last = cache.get::<Arc<u64>>("version").await.unwrap();
                    assert_eq!(last.as_deref(), Some(&VERSIONS));
                });
            });
        }
        runtime().block_on(async {
            for version in 1..=VERSIONS {
                cache.set("version", &Arc::new(version), TTL).await.unwrap();
                // Let readers hit (and store again) each version now and then.
                if version % 4 == 0 {
                    tokio::task::yield_now().await;
                    std::thread::yield_now();
                }
            }
        });
        done.store(true, std::sync::atomic::Ordering::Release);
    });
}

/// A shared tier that always holds something newer than a fill: it takes
/// writes of new data and refuses every fill as superseded, as Redis with
/// markers does when a removal or a newer value came after the read.
#[derive(Debug)]
struct AlwaysNewer(MemoryLayer);

#[cache_core::async_trait]
impl CacheLayer for AlwaysNewer {
    fn name(&self) -> &str {
        self.0.name()
    }

    async fn get(&self, ctx: &CallContext<'_>, key: &str) -> cache_core::Result<Option<Entry>> {
        self.0.get(ctx, key).await
    }

    async fn set(&self, ctx: &CallContext<'_>, key: &str, entry: Entry) -> cache_core::Result<()> {
        if ctx.fill_since().is_some() {
            return Err(cache_core::Error::Superseded {
                layer: self.name().into(),
            });
        }
        self.0.set(ctx, key, entry).await
    }

    async fn delete(&self, ctx: &CallContext<'_>, key: &str) -> cache_core::Result<bool> {
        self.0.delete(ctx, key).await
    }

    async fn get_many(
        &self,
        ctx: &CallContext<'_>,
        keys: &[&str],
    ) -> cache_core::Result<cache_core::Lookups> {
        self.0.get_many(ctx, keys).await
    }

    async fn set_many(
        &self,
        ctx: &CallContext<'_>,
        entries: &[(&str, Entry)],
    ) -> cache_core::Result<cache_core::Writes> {
        let mut written = cache_core::Writes::new();
        for (key, entry) in entries {
            written.push(self.set(ctx, key, entry.clone()).await);
        }
        Ok(written)
    }

    async fn delete_many(&self, ctx: &CallContext<'_>, keys: &[&str]) -> cache_core::Result<u64> {
        self.0.delete_many(ctx, keys).await
    }

    async fn invalidate(
        &self,
        ctx: &CallContext<'_>,
        pattern: &Pattern,
    ) -> cache_core::Result<u64> {
        self.0.invalidate(ctx, pattern).await
    }

    fn is_shared(&self) -> bool {
        true
    }
}

#[tokio::test]
async fn a_fill_a_shared_tier_refuses_as_superseded_goes_no_further_up() {
    let clock = ManualClock::shared();
    let (l1, l3) = (memory("l1", &clock), memory("l3", &clock));
    let cache = TieredCache::builder()
        .layer(l1.clone())
        .layer(AlwaysNewer(memory("l2", &clock)))
        .layer(l3.clone())
        .clock(clock.clone())
        .build()
        .unwrap();
    // Only the lowest tier holds the value: written by a cache over it alone.
    let below = TieredCache::builder()
        .layer(l3.clone())
        .clock(clock.clone())
        .build()
        .unwrap();
    below.set("offer:1", &offer(1), TTL).await.unwrap();

    // One key and several: the one-key walk and the batch walk alike.
    assert_eq!(cache.get::<Offer>("offer:1").await.unwrap(), Some(offer(1)));
    let many = cache.get_many::<Offer>(&["offer:1", "offer:2"]).await;
    assert_eq!(many[0].as_ref().unwrap(), &Some(offer(1)));

    let stats = cache.stats();
    assert_eq!(stats.tiers[1].fills_discarded, 2, "refused twice in L2");
    assert_eq!(
        stats.tiers[0].fills, 0,
        "L1 is never filled past the refusal"
    );
    assert!(l1.get(&ctx::read(), "offer:1").await.unwrap().is_none());
}
