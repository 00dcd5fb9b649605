//! Instances kept in step by a backplane, and the invalidation queue: what
//! is published (writes and removals, not fills), what a receiver does with
//! messages and gaps, what is retried while a tier or the backplane fails,
//! and the tasks stopping with the cache.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cache_core::{
    Backplane, BackplaneEvent, BackplaneMessage, CacheLayer, Error as CoreError, Invalidation,
    Pattern, Subscription, async_trait,
};
use cache_memory::MemoryLayer;
use cache_test_support::ctx;
use cache_test_support::layers::{Fault, FaultyLayer, SharedLayer};
use cache_tiered::{Broadcast, MemoryBackplane, Removal, Tier, TieredCache, TieredStats};

const TTL: Duration = Duration::from_secs(300);

fn memory() -> MemoryLayer {
    MemoryLayer::builder().sweep_interval(None).build().unwrap()
}

/// A memory layer that says it is shared: Redis, for in-process instances.
fn shared_l2() -> Arc<dyn CacheLayer> {
    Arc::new(SharedLayer(Arc::new(memory())))
}

/// An instance: its cache, and its L1 to look at directly.
struct Instance {
    cache: TieredCache,
    l1: MemoryLayer,
}

async fn instance(l2: &Arc<dyn CacheLayer>, backplane: Arc<dyn Backplane>) -> Instance {
    let l1 = memory();
    let cache = TieredCache::builder()
        .layer(l1.clone())
        .tier(Tier::shared(l2.clone()))
        .shared_backplane(backplane)
        .build_async()
        .await
        .unwrap();
    Instance { cache, l1 }
}

impl Instance {
    async fn in_l1(&self, key: &str) -> bool {
        self.l1.get(&ctx::read(), key).await.unwrap().is_some()
    }

    /// `other` writes `key`; once this instance has heard of it, it reads
    /// the key through, so its L1 holds a copy.
    async fn copy(&self, other: &Instance, key: &str) {
        let received = self.stats().backplane.received;
        other.cache.set(key, &key.to_owned(), TTL).await.unwrap();
        self.applied(received + 1).await;
        self.cache.get::<String>(key).await.unwrap();
        assert!(self.in_l1(key).await, "{key}");
    }

    fn stats(&self) -> TieredStats {
        self.cache.stats()
    }

    /// Yields until the listener has applied `count` messages from others
    /// (on a current-thread runtime it runs whenever this task yields).
    async fn applied(&self, count: u64) {
        for _ in 0..10_000 {
            if self.stats().backplane.received >= count {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!(
            "only {} of {count} messages applied",
            self.stats().backplane.received
        );
    }
}

#[tokio::test]
async fn a_set_on_one_instance_drops_the_others_local_copy() {
    let (l2, backplane) = (shared_l2(), Arc::new(MemoryBackplane::default()));
    let a = instance(&l2, backplane.clone()).await;
    let b = instance(&l2, backplane).await;
    a.cache.set("offer:1", &"v1".to_owned(), TTL).await.unwrap();
    b.applied(1).await;
    // b reads it through: a fill, not news.
    assert_eq!(
        b.cache.get::<String>("offer:1").await.unwrap().as_deref(),
        Some("v1")
    );
    assert!(b.in_l1("offer:1").await);
    assert_eq!(b.stats().backplane.published, 0, "fills are not published");

    a.cache.set("offer:1", &"v2".to_owned(), TTL).await.unwrap();
    b.applied(2).await;
    assert!(!b.in_l1("offer:1").await, "b dropped its copy");
    assert_eq!(
        b.cache.get::<String>("offer:1").await.unwrap().as_deref(),
        Some("v2"),
        "b reads the new value"
    );

    // set_many and set_tagged too, set_many as one message.
    for key in ["offer:2", "offer:3", "card:1"] {
        b.copy(&a, key).await;
    }
    let received = b.stats().backplane.received;
    let written = a
        .cache
        .set_many(
            &[("offer:2", "v2".to_owned()), ("offer:3", "v2".to_owned())],
            TTL,
        )
        .await;
    assert!(written.iter().all(Result::is_ok));
    b.applied(received + 1).await;
    assert!(!b.in_l1("offer:2").await && !b.in_l1("offer:3").await);
    a.cache
        .set_tagged("card:1", &"v2".to_owned(), &["offer:1"], TTL)
        .await
        .unwrap();
    b.applied(received + 2).await;
    assert!(!b.in_l1("card:1").await);
    assert_eq!(
        b.cache.get::<String>("card:1").await.unwrap().as_deref(),
        Some("v2")
    );

    let a_stats = a.stats().backplane;
    assert_eq!(a_stats.received, 0, "a skips its own messages");
    assert_eq!(a_stats.published, b.stats().backplane.received);
}

#[tokio::test]
async fn what_is_published_after_build_returns_reaches_the_instance() {
    let (l2, backplane) = (shared_l2(), Arc::new(MemoryBackplane::default()));
    let a = instance(&l2, backplane.clone()).await;
    a.cache.set("k", &1u8, TTL).await.unwrap();
    a.cache.get::<u8>("k").await.unwrap();
    let b = instance(&l2, backplane).await;
    b.cache.get::<u8>("k").await.unwrap();
    // Published the moment b's build returned, before its listener ran.
    a.cache.delete("k").await.unwrap();
    b.applied(1).await;
    assert!(!b.in_l1("k").await);
}

#[tokio::test]
async fn removals_are_published_and_local_ones_are_not() {
    let (l2, backplane) = (shared_l2(), Arc::new(MemoryBackplane::default()));
    let a = instance(&l2, backplane.clone()).await;
    let b = instance(&l2, backplane).await;
    let keys = [
        "offer:1",
        "reviews:offer:1:page:0",
        "rating:offer:1",
        "offer:2",
    ];
    let fill_b = async || {
        for key in keys {
            b.copy(&a, key).await;
        }
    };

    fill_b().await;
    let removed = a.cache.delete("offer:1").await.unwrap();
    assert_eq!(removed.broadcast, Broadcast::Sent, "{removed}");
    assert!(removed.is_complete() && !removed.is_deferred(), "{removed}");
    b.applied(5).await; // 4 sets, then the delete
    assert!(!b.in_l1("offer:1").await);
    assert!(b.in_l1("offer:2").await);

    fill_b().await;
    a.cache
        .invalidate(&Pattern::new("reviews:offer:1:*"))
        .await
        .unwrap();
    b.applied(10).await;
    assert!(!b.in_l1("reviews:offer:1:page:0").await);
    assert!(b.in_l1("rating:offer:1").await);

    // Several patterns, one message.
    fill_b().await;
    let patterns = [
        Pattern::new("reviews:offer:1:*"),
        Pattern::exact("rating:offer:1"),
    ];
    let removed = a.cache.remove(Removal::patterns(&patterns)).await.unwrap();
    assert_eq!(removed.removed, 2, "{removed}");
    b.applied(15).await;
    assert!(!b.in_l1("reviews:offer:1:page:0").await && !b.in_l1("rating:offer:1").await);
    assert!(b.in_l1("offer:2").await);

    // A local removal tells nobody.
    let published = a.stats().backplane.published;
    let removed = a
        .cache
        .remove(Removal::key("offer:2").local())
        .await
        .unwrap();
    assert_eq!(removed.broadcast, Broadcast::Off);
    assert_eq!(a.stats().backplane.published, published);
    assert!(b.in_l1("offer:2").await);
}

#[tokio::test]
async fn a_tag_invalidated_on_one_instance_misses_on_the_others() {
    let (l2, backplane) = (shared_l2(), Arc::new(MemoryBackplane::default()));
    let a = instance(&l2, backplane.clone()).await;
    let b = instance(&l2, backplane).await;
    let card = || async { Ok::<_, std::io::Error>("Lamp".to_owned()) };
    a.cache
        .get_or_compute_tagged("card:7", &["offer:7"], TTL, card)
        .await
        .unwrap();
    assert_eq!(a.stats().backplane.published, 0, "loads are not published");
    assert!(b.cache.get::<String>("card:7").await.unwrap().is_some());
    assert!(b.in_l1(&b.cache.tag_key("offer:7")).await);

    a.cache.invalidate_tag("offer:7").await.unwrap();
    b.applied(1).await;
    assert!(!b.in_l1(&b.cache.tag_key("offer:7")).await);
    assert_eq!(b.cache.get::<String>("card:7").await.unwrap(), None);
}

#[tokio::test]
async fn a_receiver_that_may_have_missed_messages_clears_its_local_tiers() {
    let (l2, backplane) = (shared_l2(), Arc::new(MemoryBackplane::new(1)));
    let a = instance(&l2, backplane.clone()).await;
    let b = instance(&l2, backplane).await;
    b.cache.set("unrelated", &1u32, TTL).await.unwrap();
    assert!(b.in_l1("unrelated").await);

    // Three messages into a one-message buffer before b's listener runs
    // (b's own set is one of them).
    for key in ["x", "y"] {
        a.cache.delete(key).await.unwrap();
    }
    for _ in 0..10_000 {
        if b.stats().backplane.gaps > 0 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(b.stats().backplane.gaps, 1);
    assert!(!b.in_l1("unrelated").await, "L1 cleared");
    // The shared tier is untouched and serves the value again.
    assert_eq!(b.cache.get::<u32>("unrelated").await.unwrap(), Some(1));
}

#[tokio::test]
async fn a_message_for_everything_clears_the_local_tiers() {
    // `Invalidation::All` is what an operator would send to flush every L1.
    let (l2, backplane) = (shared_l2(), Arc::new(MemoryBackplane::default()));
    let a = instance(&l2, backplane.clone()).await;
    a.cache.set("k", &1u8, TTL).await.unwrap();
    let operator = BackplaneMessage {
        origin: 1,
        invalidations: vec![Invalidation::All],
    };
    backplane.publish(&operator).await.unwrap();
    a.applied(1).await;
    assert!(!a.in_l1("k").await);
    assert!(l2.get(&ctx::read(), "k").await.unwrap().is_some());
}

/// A backplane whose publishing a test switches off and on; messages go
/// through an in-process backplane.
#[derive(Debug, Default)]
struct FlakyBackplane {
    inner: MemoryBackplane,
    down: AtomicBool,
}

impl FlakyBackplane {
    fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }
}

#[async_trait]
impl Backplane for FlakyBackplane {
    async fn publish(&self, message: &BackplaneMessage) -> cache_core::Result<()> {
        if self.down.load(Ordering::SeqCst) {
            return Err(CoreError::unavailable("backplane", "down for the test"));
        }
        self.inner.publish(message).await
    }

    async fn subscribe(&self) -> cache_core::Result<Box<dyn Subscription>> {
        self.inner.subscribe().await
    }
}

#[tokio::test]
async fn without_a_queue_a_failed_publish_is_reported_and_counted() {
    let (l2, backplane) = (shared_l2(), Arc::new(FlakyBackplane::default()));
    let a = instance(&l2, backplane.clone()).await;
    a.cache.set("k", &1u8, TTL).await.unwrap();
    backplane.set_down(true);
    // A write stores its value all the same.
    a.cache.set("k", &2u8, TTL).await.unwrap();
    assert_eq!(a.cache.get::<u8>("k").await.unwrap(), Some(2));
    let removed = a.cache.delete("k").await.unwrap();
    assert_eq!(removed.broadcast, Broadcast::Failed, "{removed}");
    assert!(
        !removed.is_complete() && !removed.is_deferred(),
        "{removed}"
    );
    assert_eq!(removed.skipped().count(), 0, "every tier did it");
    assert_eq!(a.cache.get::<u8>("k").await.unwrap(), None);
    let stats = a.stats();
    assert_eq!(
        (stats.backplane.published, stats.backplane.publish_errors),
        (1, 2)
    );
    assert_eq!(stats.queue.deferred, 0);
}

/// Two instances over a shared tier that a test can break (failing open),
/// on a backplane that can fail too; `a` has an invalidation queue.
struct Outage {
    a: Instance,
    b: Instance,
    /// The shared tier's storage, read around the fault.
    storage: MemoryLayer,
    faulty: Arc<FaultyLayer>,
    backplane: Arc<FlakyBackplane>,
}

async fn outage(queue_limit: usize) -> Outage {
    let storage = memory();
    let faulty = Arc::new(FaultyLayer::new(Arc::new(SharedLayer(Arc::new(
        storage.clone(),
    )))));
    let l2: Arc<dyn CacheLayer> = faulty.clone();
    let backplane = Arc::new(FlakyBackplane::default());
    let l1 = memory();
    let cache = TieredCache::builder()
        .layer(l1.clone())
        .tier(Tier::shared(l2.clone()))
        .shared_backplane(backplane.clone())
        .invalidation_queue(queue_limit)
        .build_async()
        .await
        .unwrap();
    let a = Instance { cache, l1 };
    let b = instance(&l2, backplane.clone()).await;
    Outage {
        a,
        b,
        storage,
        faulty,
        backplane,
    }
}

/// Lets paused time run until `instance` has retried `count` calls.
async fn retried(instance: &TieredCache, count: u64) {
    for _ in 0..1_000 {
        if instance.stats().queue.retried >= count {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "only {} of {count} calls retried",
        instance.stats().queue.retried
    );
}

async fn stored(storage: &MemoryLayer, key: &str) -> bool {
    storage.get(&ctx::read(), key).await.unwrap().is_some()
}

#[tokio::test(start_paused = true)]
async fn a_delete_a_failing_shared_tier_skipped_is_retried_until_it_lands() {
    // A plain cache, no backplane: the queue alone.
    let storage = memory();
    let faulty = Arc::new(FaultyLayer::new(Arc::new(SharedLayer(Arc::new(
        storage.clone(),
    )))));
    let cache = TieredCache::builder()
        .layer(memory())
        .tier(Tier::shared(faulty.clone()))
        .invalidation_queue(100)
        .build()
        .unwrap();
    cache.set("offer:1", &1u32, TTL).await.unwrap();

    // Redis goes down; the tier fails open, so the delete carries on.
    faulty.set_fault(Fault::Fail);
    let removed = cache.delete("offer:1").await.unwrap();
    assert!(removed.is_deferred(), "{removed}");
    assert!(!removed.is_complete(), "{removed}");
    assert_eq!(removed.skipped().collect::<Vec<_>>(), [storage.name()]);
    assert_eq!(removed.broadcast, Broadcast::Off);
    assert!(
        stored(&storage, "offer:1").await,
        "the shared tier missed it"
    );
    assert_eq!(cache.get::<u32>("offer:1").await.unwrap(), None);

    // The queue keeps trying while it is down...
    tokio::time::sleep(Duration::from_secs(10)).await;
    let queue = cache.stats().queue;
    assert_eq!((queue.deferred, queue.pending, queue.retried), (1, 1, 0));
    assert!(stored(&storage, "offer:1").await);
    // ...and lands once it is back: the value does not come back.
    faulty.set_fault(Fault::None);
    retried(&cache, 1).await;
    assert_eq!(cache.stats().queue.pending, 0);
    assert!(!stored(&storage, "offer:1").await);
    assert_eq!(cache.get::<u32>("offer:1").await.unwrap(), None);
}

#[tokio::test(start_paused = true)]
async fn a_removal_that_missed_the_shared_tier_is_removed_and_published_again() {
    let Outage {
        a,
        b,
        storage,
        faulty,
        ..
    } = outage(100).await;
    b.copy(&a, "offer:1").await;

    faulty.set_fault(Fault::Fail);
    let removed = a.cache.delete("offer:1").await.unwrap();
    assert!(
        removed.is_deferred() && removed.broadcast == Broadcast::Sent,
        "{removed}"
    );
    b.applied(2).await; // the set, then the delete
    assert!(!b.in_l1("offer:1").await);
    assert!(stored(&storage, "offer:1").await);

    faulty.set_fault(Fault::None);
    retried(&a.cache, 1).await;
    assert!(!stored(&storage, "offer:1").await);
    // Told again: b may have refilled from the shared tier meanwhile.
    b.applied(3).await;
    assert_eq!(b.cache.get::<String>("offer:1").await.unwrap(), None);
}

#[tokio::test(start_paused = true)]
async fn a_write_whose_message_failed_is_published_again() {
    let Outage {
        a, b, backplane, ..
    } = outage(100).await;
    b.copy(&a, "offer:1").await;

    backplane.set_down(true);
    a.cache.set("offer:1", &"v2".to_owned(), TTL).await.unwrap();
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(
        b.cache.get::<String>("offer:1").await.unwrap().as_deref(),
        Some("offer:1"),
        "b missed the message"
    );
    assert_eq!(a.stats().queue.pending, 1);

    backplane.set_down(false);
    retried(&a.cache, 1).await;
    b.applied(2).await;
    assert_eq!(
        b.cache.get::<String>("offer:1").await.unwrap().as_deref(),
        Some("v2")
    );
    // The write was not undone: only the message was retried.
    assert!(a.in_l1("offer:1").await);
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_becomes_one_remove_everything() {
    let Outage {
        a, storage, faulty, ..
    } = outage(2).await;
    for key in ["k1", "k2", "k3", "other"] {
        a.cache.set(key, &1u8, TTL).await.unwrap();
    }
    faulty.set_fault(Fault::Fail);
    for key in ["k1", "k2", "k3"] {
        assert!(a.cache.delete(key).await.unwrap().is_deferred());
    }
    let queue = a.stats().queue;
    assert_eq!((queue.deferred, queue.overflows, queue.pending), (3, 1, 1));
    faulty.set_fault(Fault::None);
    retried(&a.cache, 1).await;
    for key in ["k1", "k2", "k3", "other"] {
        assert!(!stored(&storage, key).await, "{key}");
    }
}

#[tokio::test(start_paused = true)]
async fn an_error_is_returned_not_queued() {
    let faulty = Arc::new(FaultyLayer::new(Arc::new(memory())));
    let cache = TieredCache::builder()
        .layer(memory())
        .tier(Tier::shared(faulty.clone()).policy(cache_core::FailClosed))
        .invalidation_queue(100)
        .build()
        .unwrap();
    faulty.set_fault(Fault::Fail);
    assert!(cache.delete("k").await.is_err());
    assert_eq!(cache.stats().queue.deferred, 0);
}

#[tokio::test(start_paused = true)]
async fn dropping_the_cache_stops_its_retries() {
    let Outage { a, b, faulty, .. } = outage(100).await;
    drop(b);
    faulty.set_fault(Fault::Fail);
    assert!(a.cache.delete("k").await.unwrap().is_deferred());
    tokio::time::sleep(Duration::from_secs(5)).await;
    let before_drop = faulty.calls();
    assert!(before_drop > 2, "retrying: {before_drop} calls");
    drop(a);
    tokio::task::yield_now().await;
    let after_drop = faulty.calls();
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(faulty.calls(), after_drop, "no retry after the drop");
}

#[tokio::test]
async fn dropping_the_last_clone_stops_the_listener() {
    let backplane = MemoryBackplane::default();
    let cache = TieredCache::builder()
        .layer(memory())
        .backplane(backplane.clone())
        .build_async()
        .await
        .unwrap();
    assert_eq!(backplane.subscribers(), 1);
    let clone = cache.clone();
    drop(cache);
    tokio::task::yield_now().await;
    assert_eq!(backplane.subscribers(), 1, "a clone still lives");
    drop(clone);
    for _ in 0..100 {
        if backplane.subscribers() == 0 {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("the listener outlived its cache");
}

#[test]
fn a_backplane_is_built_async_inside_a_runtime_and_errors_say_so() {
    let with_backplane = || {
        TieredCache::builder()
            .layer(memory())
            .backplane(MemoryBackplane::default())
    };
    let error = with_backplane().build().unwrap_err();
    assert!(error.to_string().contains("build_async"), "{error}");
    let error = futures::executor::block_on(with_backplane().build_async()).unwrap_err();
    assert!(error.to_string().contains("tokio runtime"), "{error}");

    let with_queue = |limit| {
        TieredCache::builder()
            .layer(memory())
            .invalidation_queue(limit)
    };
    let error = with_queue(100).build().unwrap_err();
    assert!(error.to_string().contains("tokio runtime"), "{error}");
    let error = with_queue(0).build().unwrap_err();
    assert!(error.to_string().contains("at least one"), "{error}");
}

/// A subscription whose events a test sends by hand.
struct Scripted(tokio::sync::mpsc::UnboundedReceiver<BackplaneEvent>);

#[async_trait]
impl Subscription for Scripted {
    async fn next(&mut self) -> Option<BackplaneEvent> {
        self.0.recv().await
    }
}

#[derive(Debug)]
struct ScriptedBackplane(std::sync::Mutex<Option<Scripted>>);

impl std::fmt::Debug for Scripted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Scripted")
    }
}

#[async_trait]
impl Backplane for ScriptedBackplane {
    async fn publish(&self, _: &BackplaneMessage) -> cache_core::Result<()> {
        Ok(())
    }

    async fn subscribe(&self) -> cache_core::Result<Box<dyn Subscription>> {
        let subscription = self.0.lock().unwrap().take().expect("one subscriber");
        Ok(Box::new(subscription))
    }
}

#[tokio::test]
async fn a_local_tier_that_fails_to_apply_a_message_is_counted() {
    let (events, receiver) = tokio::sync::mpsc::unbounded_channel();
    let faulty = Arc::new(FaultyLayer::new(Arc::new(memory())));
    let cache = TieredCache::builder()
        .tier(Tier::shared(faulty.clone()))
        .backplane(ScriptedBackplane(std::sync::Mutex::new(Some(Scripted(
            receiver,
        )))))
        .build_async()
        .await
        .unwrap();
    faulty.set_fault(Fault::Fail);
    let message = BackplaneMessage {
        origin: 1,
        invalidations: vec![Invalidation::Key("k".into())],
    };
    events.send(BackplaneEvent::Message(message)).unwrap();
    events.send(BackplaneEvent::Gap).unwrap();
    for _ in 0..10_000 {
        if cache.stats().backplane.gaps == 1 {
            break;
        }
        tokio::task::yield_now().await;
    }
    let stats = cache.stats().backplane;
    assert_eq!((stats.received, stats.gaps, stats.local_errors), (1, 1, 2));
}
