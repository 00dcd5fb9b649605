//! Two instances of the common stack (`MemoryLayer` L1 over a shared
//! `RedisLayer` L2) kept in step by `RedisBackplane`, the cache's own
//! backplane, over one real `redis-server`: a write on one instance makes
//! the other drop its L1 copy. Also measures how long that takes, to the
//! other instance's L1 no longer holding the key from the writer's `set`
//! returning (the delay a caller of `set` observes) and from its start (the
//! whole trip: the write to Redis, `PUBLISH`, delivery, the listener), and
//! prints it (`-- --nocapture`); `docs/redis.md` quotes the figures.
//!
//! Needs `redis-server` and `redis-cli` on PATH (`apt-get install -y redis-server`).

use std::time::{Duration, Instant};

use cache_core::CacheLayer;
use cache_memory::MemoryLayer;
use cache_redis::{RedisBackplane, RedisLayer};
use cache_test_support::ctx;
use cache_test_support::redis::RedisServer;
use cache_tiered::{Tier, TieredCache};

const TTL: Duration = Duration::from_secs(300);
/// Writes measured.
const WRITES: u64 = 300;
/// Far above any propagation delay: only a lost message takes this long.
const PATIENCE: Duration = Duration::from_secs(5);

struct Instance {
    cache: TieredCache,
    l1: MemoryLayer,
}

async fn instance(server: &RedisServer) -> Instance {
    let l1 = MemoryLayer::builder().sweep_interval(None).build().unwrap();
    let l2 = RedisLayer::builder(server.url())
        .namespace("offers:")
        .build()
        .await
        .unwrap();
    let backplane = RedisBackplane::builder(server.url())
        .channel("offers:invalidation")
        .build()
        .await
        .unwrap();
    let cache = TieredCache::builder()
        .layer(l1.clone())
        .tier(Tier::new(l2))
        .backplane(backplane)
        .build_async()
        .await
        .unwrap();
    Instance { cache, l1 }
}

impl Instance {
    async fn in_l1(&self, key: &str) -> bool {
        self.l1.get(&ctx::read(), key).await.unwrap().is_some()
    }

    /// Spins (yielding) until the listener has applied `count` messages.
    async fn applied(&self, count: u64) {
        let deadline = Instant::now() + PATIENCE;
        while self.cache.stats().backplane.received < count {
            assert!(Instant::now() < deadline, "message {count} never arrived");
            tokio::task::yield_now().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_on_one_instance_drops_the_others_l1_copy() {
    let server = RedisServer::start();
    let a = instance(&server).await;
    let b = instance(&server).await;
    let key = "rating:offer:1";
    a.cache.set(key, &0u64, TTL).await.unwrap();
    b.applied(1).await;

    let (mut after_return, mut whole_trip) = (Vec::new(), Vec::new());
    for version in 1..=WRITES {
        // b holds the previous version in its L1.
        assert_eq!(b.cache.get::<u64>(key).await.unwrap(), Some(version - 1));
        assert!(b.in_l1(key).await);

        let started = Instant::now();
        a.cache.set(key, &version, TTL).await.unwrap();
        let returned = Instant::now();
        // What a reader on b would see: the L1 copy gone.
        while b.in_l1(key).await {
            assert!(
                returned.elapsed() < PATIENCE,
                "b kept write {version}'s old value"
            );
            tokio::task::yield_now().await;
        }
        let gone = Instant::now();
        after_return.push(gone - returned);
        whole_trip.push(gone - started);
        b.applied(version + 1).await;
        assert_eq!(
            b.cache.get::<u64>(key).await.unwrap(),
            Some(version),
            "b reads the new value from Redis"
        );
    }
    assert_eq!(a.cache.stats().backplane.received, 0, "a skips its own");
    assert_eq!(b.cache.stats().backplane.gaps, 0);

    println!("key gone from B's L1, {WRITES} writes on A over Redis pub/sub:");
    for (from, mut delays) in [("set returned", after_return), ("set started", whole_trip)] {
        delays.sort();
        let at = |quantile: f64| delays[((delays.len() - 1) as f64 * quantile) as usize];
        println!(
            "  after {from}: median {:?}, p90 {:?}, p99 {:?}, max {:?}",
            at(0.5),
            at(0.9),
            at(0.99),
            at(1.0),
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_on_one_instance_drops_the_others_l1_copy() {
    let server = RedisServer::start();
    let a = instance(&server).await;
    let b = instance(&server).await;
    a.cache
        .set("offer:1", &"lamp".to_owned(), TTL)
        .await
        .unwrap();
    b.applied(1).await;
    assert!(b.cache.get::<String>("offer:1").await.unwrap().is_some());
    assert!(b.in_l1("offer:1").await);

    let removed = a.cache.delete("offer:1").await.unwrap();
    assert!(removed.is_complete() && removed.found(), "{removed}");
    b.applied(2).await;
    assert!(!b.in_l1("offer:1").await);
    assert_eq!(b.cache.get::<String>("offer:1").await.unwrap(), None);
}
