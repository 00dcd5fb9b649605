//! The invalidator's priority queue through a real cache: the order the
//! worker applies invalidations in, `flush`, deferred dependents, a full
//! queue, shutdown; and the offers service's case over a real
//! `redis-server` with two instances.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use cache_core::{CacheLayer, CallContext, Entry, LayerStats, Lookups, Pattern, Result, Writes};
use cache_invalidation::{Enqueued, Error, Invalidator, Priority, Rules};
use cache_memory::MemoryLayer;
use cache_redis::{RedisBackplane, RedisLayer};
use cache_test_support::redis::RedisServer;
use cache_tiered::{Tier, TieredCache};

const TTL: Duration = Duration::from_secs(300);

/// The offers service's rules.
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
        .build()
        .unwrap()
}

/// A memory layer that writes down every removal it is asked for, in order.
#[derive(Debug, Clone, Default)]
struct Recording {
    inner: MemoryLayer,
    removed: Arc<Mutex<Vec<String>>>,
}

impl Recording {
    fn removed(&self) -> Vec<String> {
        self.removed.lock().unwrap().clone()
    }
}

#[async_trait]
impl CacheLayer for Recording {
    fn name(&self) -> &str {
        "recording"
    }

    async fn get_many(&self, ctx: &CallContext<'_>, keys: &[&str]) -> Result<Lookups> {
        self.inner.get_many(ctx, keys).await
    }

    async fn set_many(&self, ctx: &CallContext<'_>, entries: &[(&str, Entry)]) -> Result<Writes> {
        self.inner.set_many(ctx, entries).await
    }

    async fn delete_many(&self, ctx: &CallContext<'_>, keys: &[&str]) -> Result<u64> {
        self.removed
            .lock()
            .unwrap()
            .extend(keys.iter().map(|key| (*key).to_owned()));
        self.inner.delete_many(ctx, keys).await
    }

    async fn invalidate(&self, ctx: &CallContext<'_>, pattern: &Pattern) -> Result<u64> {
        self.removed
            .lock()
            .unwrap()
            .push(pattern.as_str().to_owned());
        self.inner.invalidate(ctx, pattern).await
    }

    fn stats(&self) -> LayerStats {
        self.inner.stats()
    }
}

fn cache_over(layer: Recording) -> TieredCache {
    TieredCache::builder().layer(layer).build().unwrap()
}

// One thread: the worker runs only when the test awaits, so everything
// queued without awaiting is waiting together when it starts.
#[tokio::test(flavor = "current_thread")]
async fn the_worker_applies_high_then_normal_then_low() {
    let layer = Recording::default();
    let invalidator =
        Invalidator::builder(cache_over(layer.clone()), Rules::builder().build().unwrap())
            .queue(100)
            .build()
            .unwrap();
    let queue = invalidator.queue().unwrap();
    for (key, priority) in [
        ("low:1", Priority::Low),
        ("normal:1", Priority::Normal),
        ("low:2", Priority::Low),
        ("high:1", Priority::High),
        ("normal:2", Priority::Normal),
        ("high:2", Priority::High),
    ] {
        assert_eq!(queue.enqueue(key, priority), Enqueued::Queued);
    }
    assert_eq!(queue.stats().depth_by_priority, [2, 2, 2]);
    assert!(queue.stats().oldest.is_some());
    queue.flush().await;
    assert_eq!(
        layer.removed(),
        ["high:1", "high:2", "normal:1", "normal:2", "low:1", "low:2"]
    );
    let stats = queue.stats();
    assert_eq!((stats.depth, stats.applied, stats.failed), (0, 6, 0));
    assert_eq!(stats.oldest, None);
    assert_eq!(invalidator.stats().invalidations, 6);
}

#[tokio::test(flavor = "current_thread")]
async fn a_queued_key_brings_its_dependents_and_asking_twice_merges() {
    let layer = Recording::default();
    let cache = cache_over(layer.clone());
    let invalidator = Invalidator::builder(cache.clone(), rules())
        .queue(100)
        .build()
        .unwrap();
    for key in ["rating:offer:42", "offer_stats:42", "rating:offer:43"] {
        cache.set(key, &1u32, TTL).await.unwrap();
    }
    let queue = invalidator.queue().unwrap();
    assert_eq!(
        queue.enqueue("reviews:offer:42", Priority::Low),
        Enqueued::Queued
    );
    assert_eq!(
        queue.enqueue("reviews:offer:42", Priority::High),
        Enqueued::Merged
    );
    queue.flush().await;
    assert_eq!(cache.get::<u32>("rating:offer:42").await.unwrap(), None);
    assert_eq!(cache.get::<u32>("offer_stats:42").await.unwrap(), None);
    assert_eq!(cache.get::<u32>("rating:offer:43").await.unwrap(), Some(1));
    let stats = queue.stats();
    assert_eq!((stats.enqueued, stats.merged, stats.applied), (1, 1, 1));
}

#[tokio::test(flavor = "current_thread")]
async fn deferred_dependents_go_after_the_key_and_after_anything_more_urgent() {
    let layer = Recording::default();
    let cache = cache_over(layer.clone());
    let invalidator = Invalidator::builder(cache.clone(), rules())
        .defer_dependents(true)
        .build()
        .unwrap();
    for key in ["reviews:offer:42", "rating:offer:42", "offer_stats:42"] {
        cache.set(key, &1u32, TTL).await.unwrap();
    }
    let invalidated = invalidator
        .invalidate_key("reviews:offer:42")
        .await
        .unwrap();
    // The key at once...
    assert_eq!(invalidated.patterns.len(), 1);
    assert_eq!(cache.get::<u32>("reviews:offer:42").await.unwrap(), None);
    // ...its three dependents queued at low priority, behind a normal one.
    let queued: Vec<&str> = invalidated.queued.iter().map(Pattern::as_str).collect();
    assert_eq!(
        queued,
        ["reviews:offer:42:*", "rating:offer:42", "offer_stats:42"]
    );
    let queue = invalidator.queue().unwrap();
    assert_eq!(queue.stats().depth_by_priority, [0, 0, 3]);
    assert_eq!(queue.enqueue("user:9", Priority::Normal), Enqueued::Queued);
    queue.flush().await;
    assert_eq!(
        layer.removed(),
        [
            "reviews:offer:42",
            "user:9",
            "reviews:offer:42:*",
            "rating:offer:42",
            "offer_stats:42"
        ]
    );
    assert_eq!(cache.get::<u32>("rating:offer:42").await.unwrap(), None);
    assert_eq!(cache.get::<u32>("offer_stats:42").await.unwrap(), None);
}

#[tokio::test(flavor = "current_thread")]
async fn a_full_queue_refuses_and_counts_what_it_cannot_hold() {
    let invalidator = Invalidator::builder(cache_over(Recording::default()), rules())
        .queue(2)
        .build()
        .unwrap();
    let queue = invalidator.queue().unwrap();
    assert_eq!(queue.enqueue("a", Priority::Normal), Enqueued::Queued);
    assert_eq!(queue.enqueue("b", Priority::Normal), Enqueued::Queued);
    assert_eq!(queue.enqueue("c", Priority::Normal), Enqueued::Dropped);
    assert_eq!(queue.enqueue("d", Priority::Low), Enqueued::Dropped);
    assert_eq!(queue.stats().dropped, 2);
    queue.flush().await;
    assert_eq!(queue.stats().applied, 2);
}

#[tokio::test(flavor = "current_thread")]
async fn dropping_the_invalidator_stops_the_worker_and_releases_flush() {
    let layer = Recording::default();
    let invalidator = Invalidator::builder(cache_over(layer.clone()), rules())
        .queue(10)
        .build()
        .unwrap();
    let queue = invalidator.queue().unwrap().clone();
    assert_eq!(queue.enqueue("a", Priority::Normal), Enqueued::Queued);
    drop(invalidator);
    // What still waited is lost (and counted), and nothing hangs.
    tokio::time::timeout(Duration::from_secs(5), queue.flush())
        .await
        .expect("flush returns once the invalidator is gone");
    assert_eq!(queue.enqueue("b", Priority::High), Enqueued::Dropped);
    assert_eq!(queue.stats().dropped, 2);
    assert!(layer.removed().is_empty());
}

#[test]
fn a_queue_outside_a_runtime_is_a_config_error() {
    let error = Invalidator::builder(cache_over(Recording::default()), rules())
        .queue(10)
        .build()
        .unwrap_err();
    assert!(matches!(error, Error::Config(_)), "{error}");
    assert_eq!(error.class(), cache_core::ErrorClass::Config);
    // Without a queue there is nothing to spawn.
    assert!(
        Invalidator::builder(cache_over(Recording::default()), rules())
            .build()
            .is_ok()
    );
}

/// An L1 over the Redis of `server`, with the Redis backplane.
async fn instance(server: &RedisServer) -> TieredCache {
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
    TieredCache::builder()
        .layer(MemoryLayer::new())
        .tier(Tier::new(l2))
        .backplane(backplane)
        .build_async()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_review_queued_on_one_instance_reaches_the_other() {
    let server = RedisServer::start();
    let (a, b) = (instance(&server).await, instance(&server).await);
    let keys = [
        "reviews:offer:42:page::limit:10",
        "rating:offer:42",
        "offer_stats:42",
        "rating:offer:43",
    ];
    for key in keys {
        a.set(key, &format!("{key} v1"), TTL).await.unwrap();
        // b reads each through its own L1 from now on.
        assert!(b.get::<String>(key).await.unwrap().is_some());
    }
    let invalidator = Invalidator::builder(a.clone(), rules())
        .defer_dependents(true)
        .build()
        .unwrap();
    let queue = invalidator.queue().unwrap();
    assert_eq!(
        queue.enqueue("reviews:offer:42", Priority::High),
        Enqueued::Queued
    );
    queue.flush().await;
    // One message for the key, one per dependent.
    let deadline = Instant::now() + Duration::from_secs(20);
    let gone = |key| {
        let b = b.clone();
        async move { b.get::<String>(key).await.unwrap().is_none() }
    };
    for key in &keys[..3] {
        while !gone(key).await {
            assert!(Instant::now() < deadline, "{key} still on b");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    assert!(!gone("rating:offer:43").await, "offer 43 untouched");
    assert_eq!(queue.stats().applied, 4);
}

#[tokio::test(flavor = "current_thread")]
async fn a_deferred_family_dependent_still_goes_by_its_version() {
    let rules = Rules::builder()
        .rule(
            "reviews:offer:{id:digits}",
            ["reviews:offer:{id}:*", "rating:offer:{id}"],
        )
        .family("reviews:offer:{id:digits}:*")
        .build()
        .unwrap();
    let layer = Recording::default();
    let cache = TieredCache::builder()
        .layer(layer.clone())
        .key_families(rules.families())
        .build()
        .unwrap();
    let invalidator = Invalidator::builder(cache.clone(), rules)
        .defer_dependents(true)
        .build()
        .unwrap();
    assert!(invalidator.uses_families());
    for key in ["reviews:offer:42:page:1", "reviews:offer:43:page:1"] {
        cache.set(key, &1u32, TTL).await.unwrap();
    }
    let invalidated = invalidator
        .invalidate_key("reviews:offer:42")
        .await
        .unwrap();
    assert_eq!(invalidated.queued.len(), 2);
    invalidator.queue().unwrap().flush().await;
    assert_eq!(
        cache.get::<u32>("reviews:offer:42:page:1").await.unwrap(),
        None
    );
    assert_eq!(
        cache.get::<u32>("reviews:offer:43:page:1").await.unwrap(),
        Some(1)
    );
    let stats = invalidator.stats();
    assert_eq!((stats.by_family, stats.scans), (1, 0), "{stats:?}");
    // The family went as the removal of one key (its version), not as
    // the pattern (a scan).
    let removed = layer.removed();
    assert!(
        removed.contains(&cache.tag_key("reviews:offer:42:*")),
        "{removed:?}"
    );
    assert!(
        !removed.contains(&"reviews:offer:42:*".to_owned()),
        "{removed:?}"
    );
}
