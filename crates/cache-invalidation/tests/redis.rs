//! End to end over a real `redis-server`: instances, each an L1 memory tier
//! over a shared `RedisLayer`, kept in step by the cache's `RedisBackplane`,
//! invalidating by the offers service's dependency rules.
//!
//! Needs `redis-server` and `redis-cli` on PATH (`apt-get install -y redis-server`).

use std::time::{Duration, Instant};

use cache_core::CacheLayer;
use cache_invalidation::{Invalidator, Rules};
use cache_memory::MemoryLayer;
use cache_redis::{RedisBackplane, RedisLayer};
use cache_test_support::ctx;
use cache_test_support::redis::RedisServer;
use cache_tiered::{Tier, TieredCache};

const TTL: Duration = Duration::from_secs(300);

/// The offers service's dependency rules (as in `examples/offers.rs`).
fn rules() -> Rules {
    Rules::builder()
        .rule(
            "reviews:offer:{id}",
            [
                "reviews:offer:{id}:*",
                "rating:offer:{id}",
                "offer_stats:{id}",
            ],
        )
        .rule("user:{id}", ["reviews:author:{id}", "user_activity:{id}"])
        .build()
        .unwrap()
}

struct Instance {
    cache: TieredCache,
    l1: MemoryLayer,
    invalidator: Invalidator,
}

async fn instance(server: &RedisServer) -> Instance {
    instance_with_timeout(server, Duration::from_secs(2)).await
}

/// An instance whose Redis calls give up after `timeout`.
async fn instance_with_timeout(server: &RedisServer, timeout: Duration) -> Instance {
    let l1 = MemoryLayer::new();
    let l2 = RedisLayer::builder(server.url())
        .namespace("offers:")
        .timeout(timeout)
        .build()
        .await
        .unwrap();
    let backplane = RedisBackplane::builder(server.url())
        .channel("offers:invalidation")
        .timeout(timeout)
        .build()
        .await
        .unwrap();
    let cache = TieredCache::builder()
        .layer(l1.clone())
        .tier(Tier::new(l2))
        .backplane(backplane)
        .invalidation_queue(1_000)
        .build_async()
        .await
        .unwrap();
    let invalidator = Invalidator::new(cache.clone(), rules());
    Instance {
        cache,
        l1,
        invalidator,
    }
}

/// Waits (up to 5 s of real time: the messages cross a real server) until
/// `done` holds.
async fn eventually(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_on_one_instance_empties_the_others_l1() {
    let server = RedisServer::start();
    let a = instance(&server).await;
    let b = instance(&server).await;
    let keys = [
        "reviews:offer:7:page:0:limit:10",
        "rating:offer:7",
        "offer_stats:7",
        "rating:offer:8",
    ];
    for (written, key) in (1..).zip(keys) {
        a.cache.set(key, &format!("{key} v1"), TTL).await.unwrap();
        // Once b has heard of the write, it reads the key through its L1.
        eventually("b to apply the write's message", || {
            b.cache.stats().backplane.received == written
        })
        .await;
        assert!(b.cache.get::<String>(key).await.unwrap().is_some());
        assert!(
            b.l1.get(&ctx::read(), key).await.unwrap().is_some(),
            "{key} in b's L1"
        );
    }

    let invalidated = a
        .invalidator
        .invalidate_key("reviews:offer:7")
        .await
        .unwrap();
    assert_eq!(invalidated.patterns.len(), 4);
    eventually("b to apply the message", || {
        b.cache.stats().backplane.received == 5
    })
    .await;
    for key in &keys[..3] {
        assert!(
            b.l1.get(&ctx::read(), key).await.unwrap().is_none(),
            "{key} left b's L1"
        );
        assert!(
            b.cache.get::<String>(key).await.unwrap().is_none(),
            "{key} left Redis"
        );
    }
    assert_eq!(
        b.cache
            .get::<String>("rating:offer:8")
            .await
            .unwrap()
            .as_deref(),
        Some("rating:offer:8 v1"),
        "an unrelated key stays"
    );
    assert_eq!(
        a.cache.stats().backplane.received,
        0,
        "a skips its own messages"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_redis_restart_every_instance_clears_its_l1() {
    let mut server = RedisServer::start();
    let a = instance(&server).await;
    a.cache.set("offer_stats:1", &1u32, TTL).await.unwrap();
    assert!(
        a.l1.get(&ctx::read(), "offer_stats:1")
            .await
            .unwrap()
            .is_some()
    );

    // Invalidations published while a's subscription is down are lost; a
    // cannot know which, so it clears its L1 once it has resubscribed.
    server.restart();
    eventually("a to notice the gap", || {
        a.cache.stats().backplane.gaps == 1
    })
    .await;
    assert!(
        a.l1.get(&ctx::read(), "offer_stats:1")
            .await
            .unwrap()
            .is_none()
    );

    // And the backplane works again: a second instance's invalidation arrives.
    let b = instance(&server).await;
    a.cache.set("rating:offer:1", &2u32, TTL).await.unwrap();
    b.invalidator
        .invalidate_key("rating:offer:1")
        .await
        .unwrap();
    eventually("a to apply b's message", || {
        a.cache.stats().backplane.received == 1
    })
    .await;
    assert!(
        a.l1.get(&ctx::read(), "rating:offer:1")
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_invalidated_on_one_instance_misses_on_the_others() {
    let server = RedisServer::start();
    let a = instance(&server).await;
    let b = instance(&server).await;
    let card = || async { Ok::<_, std::io::Error>("Lamp, 4.5 stars".to_owned()) };
    a.cache
        .get_or_compute_tagged("offer_card:7", &["offer:7"], TTL, card)
        .await
        .unwrap();
    // b reads it through its L1 (the value and the tag's version).
    assert!(
        b.cache
            .get::<String>("offer_card:7")
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        b.l1.get(&ctx::read(), &b.cache.tag_key("offer:7"))
            .await
            .unwrap()
            .is_some()
    );

    a.invalidator.invalidate_tag("offer:7").await.unwrap();
    eventually("b to apply the message", || {
        b.cache.stats().backplane.received == 1
    })
    .await;
    assert!(
        b.l1.get(&ctx::read(), &b.cache.tag_key("offer:7"))
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(b.cache.get::<String>("offer_card:7").await.unwrap(), None);
    assert_eq!(a.cache.get::<String>("offer_card:7").await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_during_an_outage_lands_when_redis_is_back() {
    let mut server = RedisServer::start();
    let a = instance_with_timeout(&server, Duration::from_millis(200)).await;
    a.cache.set("rating:offer:3", &4.5f32, TTL).await.unwrap();

    // A frozen Redis: calls time out, the tier fails open.
    server.pause();
    let invalidated = a
        .invalidator
        .invalidate_key("rating:offer:3")
        .await
        .expect("deferred, not an error");
    assert!(invalidated.report.is_deferred(), "{}", invalidated.report);
    assert!(
        a.l1.get(&ctx::read(), "rating:offer:3")
            .await
            .unwrap()
            .is_none()
    );
    server.resume();

    eventually("the queued invalidation to land", || {
        a.cache.stats().queue.retried == 1
    })
    .await;
    assert!(
        !server
            .values()
            .contains(&"offers:rating:offer:3".to_owned()),
        "Redis no longer holds the old value"
    );
    assert_eq!(a.cache.get::<f32>("rating:offer:3").await.unwrap(), None);
}
