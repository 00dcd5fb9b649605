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
use cache_test_support::ctx;
use cache_test_support::layers::{Fault, FaultyLayer, SharedLayer};
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
        assert!(b.l1.get(&ctx::read(), key).await.unwrap().is_some());
    }

    let invalidated = a.invalidator.invalidate_key("user:7").await.unwrap();
    assert_eq!(invalidated.patterns.len(), 2);
    assert_eq!(invalidated.removed, 2);
    applied(&b, 1).await;
    for key in ["user:7", "reviews:author:7:page:0"] {
        assert!(
            b.l1.get(&ctx::read(), key).await.unwrap().is_none(),
            "{key}"
        );
        assert!(b.cache.get::<String>(key).await.unwrap().is_none(), "{key}");
    }
    assert!(
        b.l1.get(&ctx::read(), "reviews:author:8:page:0")
            .await
            .unwrap()
            .is_some()
    );

    // A pattern from the other side.
    b.invalidator
        .invalidate(&Pattern::new("reviews:author:8:*"))
        .await
        .unwrap();
    applied(&a, 1).await;
    assert!(
        a.l1.get(&ctx::read(), "reviews:author:8:page:0")
            .await
            .unwrap()
            .is_none()
    );

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
    assert!(b.l1.get(&ctx::read(), "unrelated").await.unwrap().is_some());

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
    assert!(
        b.l1.get(&ctx::read(), "unrelated").await.unwrap().is_none(),
        "L1 cleared"
    );
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
async fn a_failed_publish_is_reported_and_queued_and_the_keys_are_removed() {
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
    assert!(
        matches!(&error, Error::Deferred(cause) if matches!(**cause, Error::Backplane(_))),
        "{error}"
    );
    assert_eq!(cache.get::<u8>("a:1").await.unwrap(), None);
    assert_eq!(cache.get::<u8>("b:1").await.unwrap(), None);
    let stats = invalidator.stats();
    assert_eq!((stats.patterns, stats.publish_errors), (2, 1));
    assert_eq!((stats.deferred, stats.pending), (1, 1));
}

/// Two instances over a shared L2 that a test can break, failing open.
struct Outage {
    a: Instance,
    b: Instance,
    /// The shared tier's storage, read around the fault.
    storage: MemoryLayer,
    faulty: Arc<FaultyLayer>,
}

async fn outage(retry_limit: usize) -> Outage {
    let storage = memory();
    let faulty = Arc::new(FaultyLayer::new(Arc::new(SharedLayer(Arc::new(
        storage.clone(),
    )))));
    let l2: Arc<dyn CacheLayer> = faulty.clone();
    let backplane = MemoryBackplane::default();
    let mut a = instance(&l2, &backplane, Rules::default()).await;
    a.invalidator = Invalidator::builder(a.cache.clone())
        .backplane(backplane.clone())
        .retry_limit(retry_limit)
        .build()
        .await
        .unwrap();
    let b = instance(&l2, &backplane, Rules::default()).await;
    Outage {
        a,
        b,
        storage,
        faulty,
    }
}

/// Lets paused time run until `instance` has retried `count` calls.
async fn retried(instance: &Instance, count: u64) {
    for _ in 0..1_000 {
        if instance.invalidator.stats().retried >= count {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "only {} of {count} calls retried",
        instance.invalidator.stats().retried
    );
}

#[tokio::test(start_paused = true)]
async fn an_invalidation_that_missed_the_shared_tier_is_retried_until_it_lands() {
    let Outage {
        a,
        b,
        storage,
        faulty,
    } = outage(100).await;
    a.cache.set("offer:1", &1u32, TTL).await.unwrap();
    assert_eq!(b.cache.get::<u32>("offer:1").await.unwrap(), Some(1));

    // Redis goes down; the tier fails open, so reads and writes carry on.
    faulty.set_fault(Fault::Fail);
    let error = a.invalidator.invalidate_key("offer:1").await.unwrap_err();
    assert!(error.is_deferred(), "{error}");
    assert!(a.l1.get(&ctx::read(), "offer:1").await.unwrap().is_none());
    applied(&b, 1).await;
    assert!(b.l1.get(&ctx::read(), "offer:1").await.unwrap().is_none());
    assert!(
        storage
            .get(&ctx::read(), "offer:1")
            .await
            .unwrap()
            .is_some(),
        "the shared tier missed the removal"
    );

    // The queue keeps trying while it is down...
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(a.invalidator.stats().pending, 1);
    assert!(
        storage
            .get(&ctx::read(), "offer:1")
            .await
            .unwrap()
            .is_some()
    );
    // ...and lands once it is back, telling the others again.
    faulty.set_fault(Fault::None);
    retried(&a, 1).await;
    assert_eq!(a.invalidator.stats().pending, 0);
    assert!(
        storage
            .get(&ctx::read(), "offer:1")
            .await
            .unwrap()
            .is_none()
    );
    applied(&b, 2).await;
    assert_eq!(b.cache.get::<u32>("offer:1").await.unwrap(), None);
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_becomes_one_invalidate_everything() {
    let Outage {
        a, storage, faulty, ..
    } = outage(2).await;
    for key in ["k1", "k2", "k3", "other"] {
        a.cache.set(key, &1u8, TTL).await.unwrap();
    }
    faulty.set_fault(Fault::Fail);
    for key in ["k1", "k2", "k3"] {
        assert!(
            a.invalidator
                .invalidate_key(key)
                .await
                .unwrap_err()
                .is_deferred()
        );
    }
    let stats = a.invalidator.stats();
    assert_eq!((stats.deferred, stats.overflows, stats.pending), (3, 1, 1));
    faulty.set_fault(Fault::None);
    retried(&a, 1).await;
    for key in ["k1", "k2", "k3", "other"] {
        assert!(
            storage.get(&ctx::read(), key).await.unwrap().is_none(),
            "{key}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn dropping_the_invalidator_stops_its_retries() {
    let Outage { a, faulty, .. } = outage(100).await;
    faulty.set_fault(Fault::Fail);
    assert!(
        a.invalidator
            .invalidate_key("k")
            .await
            .unwrap_err()
            .is_deferred()
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    let before_drop = faulty.calls();
    assert!(before_drop > 2, "retrying: {before_drop} calls");
    drop(a.invalidator);
    tokio::task::yield_now().await;
    let after_drop = faulty.calls();
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(faulty.calls(), after_drop, "no retry after the drop");
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
            assert!(a.l1.get(&ctx::read(), "k").await.unwrap().is_none());
            assert!(l2.get(&ctx::read(), "k").await.unwrap().is_some());
        });
}
