//! Invalidator behaviour over in-process instances: what a receiver does
//! with messages, gaps and its own messages, failures, and shutdown.

use std::sync::Arc;
use std::time::Duration;

use cache_core::{
    Backplane, BackplaneMessage, CacheLayer, Error as CoreError, Invalidation, Pattern,
    Subscription, async_trait,
};
use cache_invalidation::{Error, Invalidator, MemoryBackplane, Rules};
use cache_memory::MemoryLayer;
use cache_test_support::layers::SharedLayer;
use cache_tiered::{Tier, TieredCache};

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
        .build()
        .unwrap();
    let invalidator = Invalidator::builder(cache.clone())
        .rules(rules)
        .backplane(backplane.clone())
        .build()
        .await
        .unwrap();
    Instance {
        cache,
        l1,
        invalidator,
    }
}

fn shared_l2() -> Arc<dyn CacheLayer> {
    Arc::new(SharedLayer(Arc::new(memory())))
}

/// Yields until `instance` has applied `count` messages from others.
async fn applied(instance: &Instance, count: u64) {
    for _ in 0..10_000 {
        if instance.invalidator.stats().received >= count {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!(
        "only {} of {count} messages applied",
        instance.invalidator.stats().received
    );
}

#[tokio::test]
async fn other_instances_drop_their_local_copies_and_the_sender_skips_its_own() {
    let (l2, backplane) = (shared_l2(), MemoryBackplane::default());
    let rules = Rules::builder()
        .rule("user:{id}", ["reviews:author:{id}:*"])
        .build()
        .unwrap();
    let a = instance(&l2, &backplane, rules.clone()).await;
    let b = instance(&l2, &backplane, rules).await;
    for key in [
        "user:7",
        "reviews:author:7:page:0",
        "reviews:author:8:page:0",
    ] {
        a.cache.set(key, &key.to_owned(), TTL).await.unwrap();
        // b reads through, so its L1 holds a copy too.
        assert_eq!(
            b.cache.get::<String>(key).await.unwrap().as_deref(),
            Some(key)
        );
        assert!(b.l1.get(key).await.unwrap().is_some());
    }

    let invalidated = a.invalidator.invalidate_key("user:7").await.unwrap();
    assert_eq!(invalidated.patterns.len(), 2);
    assert_eq!(invalidated.removed, 2);
    applied(&b, 1).await;
    for key in ["user:7", "reviews:author:7:page:0"] {
        assert!(b.l1.get(key).await.unwrap().is_none(), "{key}");
        assert!(b.cache.get::<String>(key).await.unwrap().is_none(), "{key}");
    }
    assert!(b.l1.get("reviews:author:8:page:0").await.unwrap().is_some());

    // A pattern from the other side.
    b.invalidator
        .invalidate(&Pattern::new("reviews:author:8:*"))
        .await
        .unwrap();
    applied(&a, 1).await;
    assert!(a.l1.get("reviews:author:8:page:0").await.unwrap().is_none());

    let a_stats = a.invalidator.stats();
    assert_eq!((a_stats.published, a_stats.received), (1, 1));
    assert_eq!(a_stats.patterns, 2);
    let b_stats = b.invalidator.stats();
    assert_eq!((b_stats.published, b_stats.received), (1, 1));
}

#[tokio::test]
async fn a_receiver_that_may_have_missed_messages_clears_its_local_tiers() {
    let (l2, backplane) = (shared_l2(), MemoryBackplane::new(1));
    let a = instance(&l2, &backplane, Rules::default()).await;
    let b = instance(&l2, &backplane, Rules::default()).await;
    b.cache.set("unrelated", &1u32, TTL).await.unwrap();
    assert!(b.l1.get("unrelated").await.unwrap().is_some());

    // Three messages into a one-message buffer before b's listener runs.
    for key in ["x", "y", "z"] {
        a.invalidator.invalidate_key(key).await.unwrap();
    }
    for _ in 0..10_000 {
        if b.invalidator.stats().gaps > 0 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(b.invalidator.stats().gaps, 1);
    assert!(b.l1.get("unrelated").await.unwrap().is_none(), "L1 cleared");
    // The shared tier is untouched and serves the value again.
    assert_eq!(b.cache.get::<u32>("unrelated").await.unwrap(), Some(1));
}

#[derive(Debug)]
struct DownBackplane;

#[async_trait]
impl Backplane for DownBackplane {
    async fn publish(&self, _: &BackplaneMessage) -> cache_core::Result<()> {
        Err(CoreError::unavailable("backplane", "down for the test"))
    }

    async fn subscribe(&self) -> cache_core::Result<Box<dyn Subscription>> {
        Ok(Box::new(Silent))
    }
}

struct Silent;

#[async_trait]
impl Subscription for Silent {
    async fn next(&mut self) -> Option<cache_core::BackplaneEvent> {
        std::future::pending().await
    }
}

#[tokio::test]
async fn a_failed_publish_is_an_error_but_the_keys_are_removed() {
    let cache = TieredCache::builder().layer(memory()).build().unwrap();
    let invalidator = Invalidator::builder(cache.clone())
        .rules(Rules::builder().rule("a:{id}", ["b:{id}"]).build().unwrap())
        .backplane(DownBackplane)
        .build()
        .await
        .unwrap();
    cache.set("a:1", &1u8, TTL).await.unwrap();
    cache.set("b:1", &1u8, TTL).await.unwrap();
    let error = invalidator.invalidate_key("a:1").await.unwrap_err();
    assert!(matches!(error, Error::Backplane(_)), "{error}");
    assert_eq!(cache.get::<u8>("a:1").await.unwrap(), None);
    assert_eq!(cache.get::<u8>("b:1").await.unwrap(), None);
    // Both patterns were removed; their one message failed.
    assert_eq!(invalidator.stats().patterns, 2);
    assert_eq!(invalidator.stats().publish_errors, 1);
}

#[tokio::test]
async fn dropping_the_last_clone_stops_the_listener() {
    let backplane = MemoryBackplane::default();
    let cache = TieredCache::builder().layer(memory()).build().unwrap();
    let invalidator = Invalidator::builder(cache)
        .backplane(backplane.clone())
        .build()
        .await
        .unwrap();
    assert_eq!(backplane.subscribers(), 1);
    let clone = invalidator.clone();
    drop(invalidator);
    tokio::task::yield_now().await;
    assert_eq!(backplane.subscribers(), 1, "a clone still lives");
    drop(clone);
    for _ in 0..100 {
        if backplane.subscribers() == 0 {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("the listener outlived its invalidator");
}

#[test]
fn a_backplane_needs_a_runtime_and_says_so() {
    let cache = TieredCache::builder().layer(memory()).build().unwrap();
    let built = futures::executor::block_on(
        Invalidator::builder(cache)
            .backplane(MemoryBackplane::default())
            .build(),
    );
    let error = built.unwrap_err();
    assert!(error.to_string().contains("tokio runtime"), "{error}");
}

#[test]
fn messages_for_everything_are_applied_too() {
    // `Invalidation::All` is what an operator would send to flush every L1.
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(async {
            let (l2, backplane) = (shared_l2(), MemoryBackplane::default());
            let a = instance(&l2, &backplane, Rules::default()).await;
            a.cache.set("k", &1u8, TTL).await.unwrap();
            backplane
                .publish(&BackplaneMessage {
                    origin: a.invalidator.origin().wrapping_add(1),
                    invalidations: vec![Invalidation::All],
                })
                .await
                .unwrap();
            applied(&a, 1).await;
            assert!(a.l1.get("k").await.unwrap().is_none());
            assert!(l2.get("k").await.unwrap().is_some());
        });
}
