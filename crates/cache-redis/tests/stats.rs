//! Exact counts of `TieredStats` for the common stack, `MemoryLayer` (L1)
//! over `RedisLayer` (L2) on a real `redis-server`: the scripted sequences
//! of `crates/cache-tiered/tests/stats.rs`, the Redis tier counted the same
//! way as a memory one.
//!
//! Needs `redis-server` and `redis-cli` on PATH (`apt-get install -y redis-server`).

use std::sync::Arc;
use std::time::Duration;

use cache_core::CacheLayer;
use cache_memory::MemoryLayer;
use cache_redis::RedisLayer;
use cache_test_support::ctx;
use cache_test_support::redis::RedisServer;
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
    redis: TierCounts,
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
        redis: tier_counts(&stats.tiers[1]),
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
fn assert_counts(step: &str, cache: &TieredCache, want: Counts) {
    let stats = cache.stats();
    assert_eq!(counts(&stats), want, "{step}: {stats:#?}");
}

fn zero() -> TierCounts {
    TierCounts::default()
}

/// L1 (as configured) over Redis in a namespace of its own, on one server.
async fn stack(server: &RedisServer, namespace: &str, l1: MemoryLayer) -> TieredCache {
    let redis = RedisLayer::builder(server.url())
        .namespace(namespace)
        .timeout(Duration::from_secs(2))
        .max_value_size(16 * 1024)
        .build()
        .await
        .unwrap();
    TieredCache::builder()
        .tier(Tier::new(l1))
        .tier(Tier::new(redis))
        .build()
        .unwrap()
}

fn l1() -> MemoryLayer {
    MemoryLayer::builder().name("l1").build().unwrap()
}

#[tokio::test]
async fn memory_over_redis_counts_exactly() {
    let server = RedisServer::start();

    // A cold get_or_compute, then a warm one.
    let cache = stack(&server, "cold:", l1()).await;
    let load = |value: u64| {
        cache.get_or_compute(
            "k",
            TTL,
            move || async move { Ok::<_, std::io::Error>(value) },
        )
    };
    assert_eq!(load(1).await.unwrap(), 1);
    let tier = TierCounts {
        misses: 1,
        fills: 1,
        ..zero()
    };
    let mut want = Counts {
        l1: tier,
        redis: tier,
        misses: 1,
        loads: 1,
        ..Counts::default()
    };
    assert_counts("cold", &cache, want);
    assert_eq!(load(2).await.unwrap(), 1);
    want.l1.hits = 1;
    want.hits = 1;
    assert_counts("warm", &cache, want);

    // 20 callers on one load.
    let cache = stack(&server, "waiters:", l1()).await;
    let release = Arc::new(Notify::new());
    let callers: Vec<_> = (0..20u64)
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
    // One thread: a caller joins the flight right after counting its miss.
    while cache.stats().misses < 20 {
        tokio::task::yield_now().await;
    }
    release.notify_one();
    for caller in callers {
        caller.await.unwrap();
    }
    let tier = TierCounts {
        misses: 20,
        fills: 1,
        ..zero()
    };
    let want = Counts {
        l1: tier,
        redis: tier,
        misses: 20,
        loads: 1,
        coalesced: 19,
        ..Counts::default()
    };
    assert_counts("20 waiters", &cache, want);

    // A tagged value with two tags: one read, not three.
    let cache = stack(&server, "tagged:", l1()).await;
    let tags = ["offer:7", "shop:2"];
    cache
        .set_tagged("card:7", &"lamp".to_owned(), &tags, TTL)
        .await
        .unwrap();
    let created = TierCounts { fills: 2, ..zero() };
    let mut want = Counts {
        l1: created,
        redis: created,
        ..Counts::default()
    };
    assert_counts("set_tagged", &cache, want);
    let got: Option<String> = cache.get("card:7").await.unwrap();
    assert_eq!(got.as_deref(), Some("lamp"));
    want.l1.hits = 1;
    want.hits = 1;
    assert_counts("tagged get", &cache, want);
    cache.invalidate_tag("shop:2").await.unwrap();
    assert_eq!(cache.get::<String>("card:7").await.unwrap(), None);
    want.l1.misses = 1;
    want.l1.tag_stale = 1;
    want.redis.misses = 1;
    want.redis.tag_stale = 1;
    want.misses = 1;
    assert_counts("tag invalidated", &cache, want);

    // A fill from Redis into L1.
    let l1_layer = l1();
    let cache = stack(&server, "fill:", l1_layer.clone()).await;
    cache.set("k", &1u64, TTL).await.unwrap();
    l1_layer.delete(&ctx::remove(), "k").await.unwrap();
    assert_eq!(cache.get::<u64>("k").await.unwrap(), Some(1));
    let mut want = Counts {
        l1: TierCounts {
            misses: 1,
            fills: 1,
            ..zero()
        },
        redis: TierCounts { hits: 1, ..zero() },
        hits: 1,
        ..Counts::default()
    };
    assert_counts("fill", &cache, want);
    assert_eq!(cache.get::<u64>("k").await.unwrap(), Some(1));
    want.l1.hits = 1;
    want.hits = 2;
    assert_counts("filled", &cache, want);

    // An eviction from L1: answered by Redis.
    let small = MemoryLayer::builder()
        .name("l1")
        .max_entries(2)
        .shards(1)
        .build()
        .unwrap();
    let cache = stack(&server, "evict:", small.clone()).await;
    for key in ["a", "b", "c"] {
        cache.set(key, &1u64, TTL).await.unwrap();
    }
    assert_eq!(small.stats().evictions, 1);
    let found = cache.get_many::<u64>(&["a", "b", "c"]).await;
    assert!(found.iter().all(|found| matches!(found, Ok(Some(1)))));
    let want = Counts {
        l1: TierCounts {
            hits: 2,
            misses: 1,
            fills: 1,
            ..zero()
        },
        redis: TierCounts { hits: 1, ..zero() },
        hits: 3,
        ..Counts::default()
    };
    assert_counts("eviction", &cache, want);

    // Expiry, in real time: L1 keeps values 300 ms, Redis 900 ms.
    let redis = RedisLayer::builder(server.url())
        .namespace("expiry:")
        .build()
        .await
        .unwrap();
    let cache = TieredCache::builder()
        .tier(Tier::new(l1()).ttl_cap(Duration::from_millis(300)))
        .tier(Tier::new(redis))
        .build()
        .unwrap();
    cache
        .set("k", &1u64, Duration::from_millis(900))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(cache.get::<u64>("k").await.unwrap(), Some(1));
    let mut want = Counts {
        l1: TierCounts {
            misses: 1,
            fills: 1,
            ..zero()
        },
        redis: TierCounts { hits: 1, ..zero() },
        hits: 1,
        ..Counts::default()
    };
    assert_counts("expired in L1", &cache, want);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(cache.get::<u64>("k").await.unwrap(), None);
    want.l1.misses += 1;
    want.redis.misses = 1;
    want.misses = 1;
    assert_counts("expired everywhere", &cache, want);

    // Refusals: L1 takes 1 KiB at most, Redis 16 KiB.
    let small = MemoryLayer::builder()
        .name("l1")
        .max_bytes(1024)
        .shards(1)
        .build()
        .unwrap();
    let cache = stack(&server, "refused:", small).await;
    let big = vec![7u8; 4 * 1024];
    cache.set("big", &big, TTL).await.unwrap();
    let mut want = Counts {
        l1: TierCounts {
            refused: 1,
            ..zero()
        },
        ..Counts::default()
    };
    assert_counts("refused by L1", &cache, want);
    assert_eq!(cache.get::<Vec<u8>>("big").await.unwrap(), Some(big));
    want.l1.misses = 1;
    want.l1.refused = 2;
    want.redis.hits = 1;
    want.hits = 1;
    assert_counts("fill refused by L1", &cache, want);
    let refused = cache
        .set("huge", &vec![7u8; 32 * 1024], TTL)
        .await
        .unwrap_err();
    assert!(refused.is_refusal(), "{refused}");
    want.redis.refused = 1;
    assert_counts("refused by Redis", &cache, want);

    // get_many: two L1 hits, one Redis hit, one miss.
    let l1_layer = l1();
    let cache = stack(&server, "many:", l1_layer.clone()).await;
    let written = cache
        .set_many(&[("a", 1u64), ("b", 2), ("c", 3)], TTL)
        .await;
    assert!(written.iter().all(Result::is_ok));
    l1_layer.delete(&ctx::remove(), "c").await.unwrap();
    let found = cache.get_many::<u64>(&["a", "b", "c", "d"]).await;
    let found: Vec<_> = found.into_iter().map(Result::unwrap).collect();
    assert_eq!(found, vec![Some(1), Some(2), Some(3), None]);
    let want = Counts {
        l1: TierCounts {
            hits: 2,
            misses: 2,
            fills: 1,
            ..zero()
        },
        redis: TierCounts {
            hits: 1,
            misses: 1,
            ..zero()
        },
        hits: 3,
        misses: 1,
        ..Counts::default()
    };
    assert_counts("get_many", &cache, want);
}
