//! Exact counts: after scripted sequences over two memory tiers, every
//! counter of `TieredStats` and of each tier, as its doc defines it.
//!
//! Per user read of a key: one hit in the tier that answered, one miss in
//! each tier above it; overall, one hit or one miss. The composer's own
//! reads (tag versions, a leader's recheck of the top tier) count nothing.

use std::sync::Arc;
use std::time::Duration;

use cache_core::{CacheLayer, ManualClock};
use cache_memory::MemoryLayer;
use cache_test_support::ctx;
use cache_tiered::{Tier, TierStats, TieredCache, TieredStats};
use tokio::sync::Notify;

const TTL: Duration = Duration::from_secs(300);

/// The composer's counters of one tier (the layer's own left out).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct TierCounts {
    hits: u64,
    misses: u64,
    fills: u64,
    fills_discarded: u64,
    undecodable: u64,
    foreign: u64,
    tag_stale: u64,
    errors: u64,
    refused: u64,
    rejected: u64,
}

/// Every read, load and tier counter of a two-tier cache.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Counts {
    l1: TierCounts,
    l2: TierCounts,
    hits: u64,
    misses: u64,
    loads: u64,
    load_errors: u64,
    coalesced: u64,
    stale_served: u64,
    eager_refreshes: u64,
}

fn tier_counts(tier: &TierStats) -> TierCounts {
    TierCounts {
        hits: tier.hits,
        misses: tier.misses,
        fills: tier.fills,
        fills_discarded: tier.fills_discarded,
        undecodable: tier.undecodable,
        foreign: tier.foreign,
        tag_stale: tier.tag_stale,
        errors: tier.errors,
        refused: tier.refused,
        rejected: tier.rejected,
    }
}

fn counts(stats: &TieredStats) -> Counts {
    assert_eq!(stats.tiers.len(), 2);
    Counts {
        l1: tier_counts(&stats.tiers[0]),
        l2: tier_counts(&stats.tiers[1]),
        hits: stats.hits,
        misses: stats.misses,
        loads: stats.loads,
        load_errors: stats.load_errors,
        coalesced: stats.coalesced,
        stale_served: stats.stale_served,
        eager_refreshes: stats.eager_refreshes,
    }
}

/// Asserts every counter of `cache` at once (all those not named are zero).
#[track_caller]
fn assert_counts(cache: &TieredCache, want: Counts) {
    let stats = cache.stats();
    assert_eq!(counts(&stats), want, "{stats:#?}");
    // The definitions tie the overall hits to the tiers'.
    assert_eq!(stats.hits, stats.tiers.iter().map(|t| t.hits).sum::<u64>());
}

fn zero() -> TierCounts {
    TierCounts::default()
}

fn memory(name: &str, clock: &Arc<ManualClock>) -> MemoryLayer {
    MemoryLayer::builder()
        .name(name)
        .clock(clock.clone())
        .sweep_interval(None)
        .build()
        .unwrap()
}

fn stack(l1: Tier, l2: &MemoryLayer, clock: &Arc<ManualClock>) -> TieredCache {
    TieredCache::builder()
        .tier(l1)
        .layer(l2.clone())
        .clock(clock.clone())
        .build()
        .unwrap()
}

/// Two memory tiers on one manual clock; the layers are handed back too.
fn two_tiers() -> (TieredCache, MemoryLayer, MemoryLayer, Arc<ManualClock>) {
    let clock = ManualClock::shared();
    let (l1, l2) = (memory("l1", &clock), memory("l2", &clock));
    let cache = stack(Tier::new(l1.clone()), &l2, &clock);
    (cache, l1, l2, clock)
}

async fn load(cache: &TieredCache, key: &str, value: u64) -> u64 {
    cache
        .get_or_compute(key, TTL, || async move { Ok::<_, std::io::Error>(value) })
        .await
        .unwrap()
}

#[tokio::test]
async fn a_cold_get_or_compute_is_one_miss_per_tier_and_one_load() {
    let (cache, ..) = two_tiers();
    assert_eq!(load(&cache, "k", 1).await, 1);
    // The leader's second look at L1 before loading is no read of its own.
    // The loaded value is written through both tiers: a fill in each.
    let cold = Counts {
        l1: TierCounts {
            misses: 1,
            fills: 1,
            ..zero()
        },
        l2: TierCounts {
            misses: 1,
            fills: 1,
            ..zero()
        },
        misses: 1,
        loads: 1,
        ..Counts::default()
    };
    assert_counts(&cache, cold);

    assert_eq!(load(&cache, "k", 2).await, 1, "warm: no load");
    let mut warm = cold;
    warm.l1.hits = 1;
    warm.hits = 1;
    assert_counts(&cache, warm);
}

#[tokio::test]
async fn twenty_callers_on_one_load_are_twenty_misses_one_load_nineteen_coalesced() {
    let (cache, ..) = two_tiers();
    let release = Arc::new(Notify::new());
    let callers: Vec<_> = (0..20)
        .map(|i| {
            let (cache, release) = (cache.clone(), release.clone());
            tokio::spawn(async move {
                cache
                    .get_or_compute("k", TTL, || async move {
                        release.notified().await;
                        Ok::<_, std::io::Error>(i)
                    })
                    .await
                    .unwrap()
            })
        })
        .collect();
    // One thread: a caller joins the flight right after counting its
    // miss, with no await between, so all 20 have joined once 20 are counted.
    while cache.stats().misses < 20 {
        tokio::task::yield_now().await;
    }
    release.notify_one();
    let mut values = Vec::new();
    for caller in callers {
        values.push(caller.await.unwrap());
    }
    assert!(values.iter().all(|value| *value == values[0]), "{values:?}");
    let tier = TierCounts {
        misses: 20,
        fills: 1,
        ..zero()
    };
    assert_counts(
        &cache,
        Counts {
            l1: tier,
            l2: tier,
            misses: 20,
            loads: 1,
            coalesced: 19,
            ..Counts::default()
        },
    );
}

#[tokio::test]
async fn a_tagged_get_is_one_read_whatever_its_tags() {
    let (cache, ..) = two_tiers();
    cache
        .set_tagged("card:7", &"lamp".to_owned(), &["offer:7", "shop:2"], TTL)
        .await
        .unwrap();
    // Reading the two tags' versions (none yet) is no user read; creating
    // them is a fill in each tier per version.
    let created = TierCounts { fills: 2, ..zero() };
    let mut want = Counts {
        l1: created,
        l2: created,
        ..Counts::default()
    };
    assert_counts(&cache, want);

    let got: Option<String> = cache.get("card:7").await.unwrap();
    assert_eq!(got.as_deref(), Some("lamp"));
    // One hit, not three: the versions checked are not counted.
    want.l1.hits = 1;
    want.hits = 1;
    assert_counts(&cache, want);

    // Once a tag is invalidated: one miss per tier, each copy tag-stale.
    cache.invalidate_tag("shop:2").await.unwrap();
    assert_eq!(cache.get::<String>("card:7").await.unwrap(), None);
    want.l1.misses = 1;
    want.l1.tag_stale = 1;
    want.l2.misses = 1;
    want.l2.tag_stale = 1;
    want.misses = 1;
    assert_counts(&cache, want);

    // A tagged get_or_compute: the versions read before the loader, and
    // the one it creates again, count no read either.
    let value = cache
        .get_or_compute_tagged("card:7", &["offer:7", "shop:2"], TTL, || async {
            Ok::<_, std::io::Error>("desk".to_owned())
        })
        .await
        .unwrap();
    assert_eq!(value, "desk");
    want.l1.misses += 1;
    want.l2.misses += 1;
    want.misses += 1;
    want.loads = 1;
    // The new version of "shop:2" and the loaded value, in each tier.
    want.l1.fills += 2;
    want.l2.fills += 2;
    assert_counts(&cache, want);
}

#[tokio::test]
async fn a_fill_from_l2_is_an_l2_hit_an_l1_miss_and_one_fill() {
    let (cache, l1, ..) = two_tiers();
    cache.set("k", &1u64, TTL).await.unwrap();
    l1.delete(&ctx::remove(), "k").await.unwrap();
    assert_counts(&cache, Counts::default());

    assert_eq!(cache.get::<u64>("k").await.unwrap(), Some(1));
    let mut want = Counts {
        l1: TierCounts {
            misses: 1,
            fills: 1,
            ..zero()
        },
        l2: TierCounts { hits: 1, ..zero() },
        hits: 1,
        ..Counts::default()
    };
    assert_counts(&cache, want);

    // Filled: the next read stops at L1.
    assert_eq!(cache.get::<u64>("k").await.unwrap(), Some(1));
    want.l1.hits = 1;
    want.hits = 2;
    assert_counts(&cache, want);
}

#[tokio::test]
async fn an_evicted_value_reads_as_a_miss_in_its_tier() {
    let clock = ManualClock::shared();
    let l1 = MemoryLayer::builder()
        .name("l1")
        .max_entries(2)
        .shards(1)
        .clock(clock.clone())
        .sweep_interval(None)
        .build()
        .unwrap();
    let l2 = memory("l2", &clock);
    let cache = stack(Tier::new(l1.clone()), &l2, &clock);
    for key in ["a", "b", "c"] {
        cache.set(key, &1u64, TTL).await.unwrap();
    }
    assert_eq!(l1.stats().evictions, 1, "L1 holds two of the three");
    assert_counts(&cache, Counts::default());

    let found = cache.get_many::<u64>(&["a", "b", "c"]).await;
    assert!(found.iter().all(|found| matches!(found, Ok(Some(1)))));
    // Whichever was evicted: a miss in L1, a hit in L2, filled back.
    assert_counts(
        &cache,
        Counts {
            l1: TierCounts {
                hits: 2,
                misses: 1,
                fills: 1,
                ..zero()
            },
            l2: TierCounts { hits: 1, ..zero() },
            hits: 3,
            ..Counts::default()
        },
    );
}

#[tokio::test]
async fn an_expired_value_reads_as_a_miss() {
    let clock = ManualClock::shared();
    let (l1, l2) = (memory("l1", &clock), memory("l2", &clock));
    // L1 keeps values 10 s at most, L2 their full TTL.
    let cache = stack(
        Tier::new(l1.clone()).ttl_cap(Duration::from_secs(10)),
        &l2,
        &clock,
    );
    cache
        .set("k", &1u64, Duration::from_secs(60))
        .await
        .unwrap();

    // Expired in L1 only: an L1 miss, answered and filled from L2.
    clock.advance(Duration::from_secs(11));
    assert_eq!(cache.get::<u64>("k").await.unwrap(), Some(1));
    let mut want = Counts {
        l1: TierCounts {
            misses: 1,
            fills: 1,
            ..zero()
        },
        l2: TierCounts { hits: 1, ..zero() },
        hits: 1,
        ..Counts::default()
    };
    assert_counts(&cache, want);

    // Expired everywhere: a miss in each tier and overall.
    clock.advance(Duration::from_secs(60));
    assert_eq!(cache.get::<u64>("k").await.unwrap(), None);
    want.l1.misses += 1;
    want.l2.misses = 1;
    want.misses = 1;
    assert_counts(&cache, want);
    assert_eq!(l1.stats().expirations, 2);
    assert_eq!(l2.stats().expirations, 1);
}

#[tokio::test]
async fn a_refused_value_counts_once_per_refusal_in_the_tier_that_refused() {
    let clock = ManualClock::shared();
    let small = |name: &str, max_bytes: u64| {
        MemoryLayer::builder()
            .name(name)
            .max_bytes(max_bytes)
            .shards(1)
            .clock(clock.clone())
            .sweep_interval(None)
            .build()
            .unwrap()
    };
    let (l1, l2) = (small("l1", 1024), small("l2", 16 * 1024));
    let cache = stack(Tier::new(l1.clone()), &l2, &clock);
    let big = vec![7u8; 4 * 1024];

    // Too large for L1 only: stored in L2, no error.
    cache.set("big", &big, TTL).await.unwrap();
    let mut want = Counts {
        l1: TierCounts {
            refused: 1,
            ..zero()
        },
        ..Counts::default()
    };
    assert_counts(&cache, want);

    // Read from L2; the fill into L1 is refused again, and counted.
    assert_eq!(cache.get::<Vec<u8>>("big").await.unwrap(), Some(big));
    want.l1.misses = 1;
    want.l1.refused = 2;
    want.l2.hits = 1;
    want.hits = 1;
    assert_counts(&cache, want);

    // Too large for both: an error, refused by L2, and L1 not asked.
    let huge = vec![7u8; 32 * 1024];
    let refused = cache.set("huge", &huge, TTL).await.unwrap_err();
    assert!(refused.is_refusal(), "{refused}");
    want.l2.refused = 1;
    assert_counts(&cache, want);
}

#[tokio::test]
async fn get_many_counts_one_read_per_key() {
    let (cache, l1, l2, _clock) = two_tiers();
    let written = cache
        .set_many(&[("a", 1u64), ("b", 2), ("c", 3)], TTL)
        .await;
    assert!(written.iter().all(Result::is_ok));
    l1.delete(&ctx::remove(), "c").await.unwrap();
    assert!(l2.get(&ctx::read(), "c").await.unwrap().is_some());

    let found = cache.get_many::<u64>(&["a", "b", "c", "d"]).await;
    let found: Vec<_> = found.into_iter().map(Result::unwrap).collect();
    assert_eq!(found, vec![Some(1), Some(2), Some(3), None]);
    assert_counts(
        &cache,
        Counts {
            l1: TierCounts {
                hits: 2,
                misses: 2,
                fills: 1,
                ..zero()
            },
            l2: TierCounts {
                hits: 1,
                misses: 1,
                ..zero()
            },
            hits: 3,
            misses: 1,
            ..Counts::default()
        },
    );
}
