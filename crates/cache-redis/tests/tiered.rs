//! The common stack end to end: `TieredCache` of `MemoryLayer` (L1) over
//! `RedisLayer` (L2), two instances sharing one real `redis-server`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cache_core::{CacheLayer, Pattern};
use cache_memory::MemoryLayer;
use cache_redis::RedisLayer;
use cache_test_support::ctx;
use cache_test_support::redis::RedisServer;
use cache_tiered::{Tier, TieredCache};

struct Instance {
    cache: TieredCache,
    l1: Arc<MemoryLayer>,
}

async fn instance(server: &RedisServer) -> Instance {
    let l1 = Arc::new(MemoryLayer::new());
    let l2 = RedisLayer::builder(server.url())
        .namespace("offers:")
        .build()
        .await
        .unwrap();
    let cache = TieredCache::builder()
        .tier(Tier::shared(l1.clone()))
        .tier(Tier::new(l2))
        .build()
        .unwrap();
    Instance { cache, l1 }
}

#[tokio::test]
async fn l1_filled_from_redis_keeps_the_remaining_expiry() {
    let server = RedisServer::start();
    let a = instance(&server).await;
    let b = instance(&server).await;

    let ttl = Duration::from_millis(1500);
    let written = Instant::now();
    a.cache
        .set("offer:1", &"lamp".to_string(), ttl)
        .await
        .unwrap();
    // PX starts when the SET arrives, so Redis may hold the key past
    // `written + ttl` by as long as the set took (plus a millisecond).
    let redis_expiry_at_most = written + ttl + written.elapsed() + Duration::from_millis(1);
    // Let some of the TTL pass before the other instance reads.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let got: Option<String> = b.cache.get("offer:1").await.unwrap();
    assert_eq!(got.as_deref(), Some("lamp"));
    // B's L1 now holds the value, with what Redis had left, not a fresh TTL.
    let filled =
        b.l1.get(&ctx::read(), "offer:1")
            .await
            .unwrap()
            .expect("L1 was filled");
    let expiry = filled.expiry().expect("the fill carries an expiry");
    assert!(
        expiry <= redis_expiry_at_most,
        "L1 outlives L2 by {:?}",
        expiry.saturating_duration_since(redis_expiry_at_most)
    );
    assert!(expiry > written + ttl - Duration::from_millis(500));

    // Once the Redis copy expires, neither tier answers.
    let deadline = written + ttl + Duration::from_secs(2);
    loop {
        let got: Option<String> = b.cache.get("offer:1").await.unwrap();
        if got.is_none() {
            assert!(Instant::now() + Duration::from_millis(5) >= written + ttl);
            break;
        }
        assert!(Instant::now() < deadline, "the value outlived its TTL");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn writes_deletes_and_invalidations_reach_the_other_instance_through_l2() {
    let server = RedisServer::start();
    let a = instance(&server).await;
    let b = instance(&server).await;
    let ttl = Duration::from_secs(60);

    a.cache
        .set("reviews:offer:7:page:0", &vec![1u32, 2], ttl)
        .await
        .unwrap();
    a.cache
        .set("reviews:offer:7:page:1", &vec![3u32], ttl)
        .await
        .unwrap();
    a.cache
        .set("reviews:offer:8:page:0", &vec![4u32], ttl)
        .await
        .unwrap();
    let got: Option<Vec<u32>> = b.cache.get("reviews:offer:7:page:0").await.unwrap();
    assert_eq!(got, Some(vec![1, 2]));
    assert_eq!(server.cli(&["DBSIZE"]).trim(), "3");

    // get_or_compute on B finds A's value in L2 and never calls the loader.
    let got: Vec<u32> = b
        .cache
        .get_or_compute("reviews:offer:8:page:0", ttl, || async {
            Err::<Vec<u32>, std::io::Error>(std::io::Error::other("loader must not run"))
        })
        .await
        .unwrap();
    assert_eq!(got, vec![4]);

    // A invalidates offer 7 in its tiers (its L1 and the shared L2).
    let removed = a
        .cache
        .invalidate(&Pattern::new("reviews:offer:7:*"))
        .await
        .unwrap();
    assert!(removed.removed >= 2 && removed.is_complete(), "{removed}");
    assert_eq!(server.values(), ["offers:reviews:offer:8:page:0"]);
    // A new instance (empty L1) sees only what is left in Redis.
    let c = instance(&server).await;
    let gone: Option<Vec<u32>> = c.cache.get("reviews:offer:7:page:1").await.unwrap();
    assert_eq!(gone, None);
    assert!(
        a.cache
            .delete("reviews:offer:8:page:0")
            .await
            .unwrap()
            .found()
    );
    let gone: Option<Vec<u32>> = c.cache.get("reviews:offer:8:page:0").await.unwrap();
    assert_eq!(gone, None);
    assert!(server.values().is_empty());
}
