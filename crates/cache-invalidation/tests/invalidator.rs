//! Invalidator behaviour over in-process instances: a key and its
//! dependents go everywhere as one removal, and what a failing shared tier
//! missed is deferred by the cache's queue, not returned as an error.
//! (The backplane and the queue themselves are the cache's, and tested in
//! `cache-tiered`.)

use std::sync::Arc;
use std::time::Duration;

use cache_core::{CacheLayer, Pattern};
use cache_invalidation::{Error, Invalidator, Rules};
use cache_memory::MemoryLayer;
use cache_test_support::ctx;
use cache_test_support::layers::{Fault, FaultyLayer, SharedLayer};
use cache_tiered::{Broadcast, MemoryBackplane, Tier, TieredCache};

const TTL: Duration = Duration::from_secs(300);

fn memory() -> MemoryLayer {
    MemoryLayer::builder().sweep_interval(None).build().unwrap()
}

/// An instance: its cache, its L1 (to look at directly) and its invalidator.
struct Instance {
    cache: TieredCache,
    l1: MemoryLayer,
    invalidator: Invalidator,
}

async fn instance(l2: &Arc<dyn CacheLayer>, backplane: &MemoryBackplane, rules: Rules) -> Instance {
    let l1 = memory();
    let cache = TieredCache::builder()
        .layer(l1.clone())
        .tier(Tier::shared(l2.clone()))
        .backplane(backplane.clone())
        .invalidation_queue(100)
        .build_async()
        .await
        .unwrap();
    Instance {
        invalidator: Invalidator::new(cache.clone(), rules),
        cache,
        l1,
    }
}

impl Instance {
    async fn in_l1(&self, key: &str) -> bool {
        self.l1.get(&ctx::read(), key).await.unwrap().is_some()
    }

    /// Yields until this instance has applied `count` messages from others.
    async fn applied(&self, count: u64) {
        for _ in 0..10_000 {
            if self.cache.stats().backplane.received >= count {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!(
            "only {} of {count} messages applied",
            self.cache.stats().backplane.received
        );
    }
}

fn shared_l2() -> Arc<dyn CacheLayer> {
    Arc::new(SharedLayer(Arc::new(memory())))
}

#[tokio::test]
async fn a_key_and_its_dependents_leave_every_instance_in_one_message() {
    let (l2, backplane) = (shared_l2(), MemoryBackplane::default());
    let rules = Rules::builder()
        .rule("user:{id}", ["reviews:author:{id}:*"])
        .build()
        .unwrap();
    let a = instance(&l2, &backplane, rules.clone()).await;
    let b = instance(&l2, &backplane, rules).await;
    let keys = [
        "user:7",
        "reviews:author:7:page:0",
        "reviews:author:8:page:0",
    ];
    for key in keys {
        a.cache.set(key, &key.to_owned(), TTL).await.unwrap();
    }
    b.applied(3).await;
    for key in keys {
        // b reads through, so its L1 holds a copy too.
        assert!(b.cache.get::<String>(key).await.unwrap().is_some());
        assert!(b.in_l1(key).await, "{key}");
    }

    let invalidated = a.invalidator.invalidate_key("user:7").await.unwrap();
    assert_eq!(invalidated.patterns.len(), 2);
    assert_eq!(invalidated.report.removed, 2, "{}", invalidated.report);
    assert_eq!(invalidated.report.broadcast, Broadcast::Sent);
    b.applied(4).await;
    for key in &keys[..2] {
        assert!(!b.in_l1(key).await, "{key}");
        assert!(b.cache.get::<String>(key).await.unwrap().is_none(), "{key}");
    }
    assert!(b.in_l1("reviews:author:8:page:0").await);

    // A pattern from the other side.
    b.invalidator
        .invalidate(&Pattern::new("reviews:author:8:*"))
        .await
        .unwrap();
    a.applied(1).await;
    assert!(!a.in_l1("reviews:author:8:page:0").await);

    assert_eq!(a.invalidator.stats().patterns, 2);
    assert_eq!(b.invalidator.stats().invalidations, 1);
    assert_eq!(a.cache.stats().backplane.published, 4, "3 sets, 1 removal");
}

#[tokio::test(start_paused = true)]
async fn what_a_failing_shared_tier_missed_is_deferred_then_lands() {
    let storage = memory();
    let faulty = Arc::new(FaultyLayer::new(Arc::new(SharedLayer(Arc::new(
        storage.clone(),
    )))));
    let l2: Arc<dyn CacheLayer> = faulty.clone();
    let rules = Rules::builder()
        .rule(
            "reviews:offer:{id}",
            ["rating:offer:{id}", "offer_stats:{id}"],
        )
        .build()
        .unwrap();
    let a = instance(&l2, &MemoryBackplane::default(), rules).await;
    for key in ["reviews:offer:1", "rating:offer:1", "offer_stats:1"] {
        a.cache.set(key, &1u32, TTL).await.unwrap();
    }

    faulty.set_fault(Fault::Fail);
    let invalidated = a
        .invalidator
        .invalidate_key("reviews:offer:1")
        .await
        .expect("deferred is not an error");
    assert!(invalidated.report.is_deferred(), "{}", invalidated.report);
    for key in ["reviews:offer:1", "rating:offer:1", "offer_stats:1"] {
        assert!(!a.in_l1(key).await, "{key}: the local tiers are clean");
    }

    faulty.set_fault(Fault::None);
    for _ in 0..1_000 {
        if a.cache.stats().queue.retried == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(a.cache.stats().queue.pending, 0);
    for key in ["reviews:offer:1", "rating:offer:1", "offer_stats:1"] {
        assert!(
            storage.get(&ctx::read(), key).await.unwrap().is_none(),
            "{key} left the shared tier"
        );
    }
}

#[tokio::test]
async fn too_many_patterns_remove_nothing() {
    let cache = TieredCache::builder().layer(memory()).build().unwrap();
    let rules = Rules::builder()
        .rule("a:{id}", ["b:{id}", "c:{id}"])
        .max_patterns(2)
        .build()
        .unwrap();
    let invalidator = Invalidator::new(cache.clone(), rules);
    cache.set("a:1", &1u8, TTL).await.unwrap();
    let error = invalidator.invalidate_key("a:1").await.unwrap_err();
    assert!(matches!(error, Error::TooManyPatterns { .. }), "{error}");
    assert_eq!(cache.get::<u8>("a:1").await.unwrap(), Some(1));
}
