//! Fleet-wide single-flight inside one process: two `TieredCache`
//! instances, each with its own L1, over one shared layer, electing one
//! loader through a `MemoryLoadLock`. Time is tokio's, paused: waits of
//! seconds cost nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cache_core::{CacheLayer, Error, LoadLock, LockToken, async_trait};
use cache_memory::MemoryLayer;
use cache_test_support::ctx;
use cache_test_support::layers::{Fault, FaultyLayer, SharedLayer};
use cache_tiered::{FleetLock, MemoryLoadLock, Tier, TieredCache};
use tokio::time::Instant;

const TTL: Duration = Duration::from_secs(300);
const MAX_WAIT: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(50);
const KEY: &str = "rating:offer:7";

struct Instance {
    cache: TieredCache,
    l1: Arc<MemoryLayer>,
}

fn instance(l2: &Arc<dyn CacheLayer>, lock: Arc<dyn LoadLock>) -> Instance {
    let l1 = Arc::new(MemoryLayer::new());
    let cache = TieredCache::builder()
        .tier(Tier::shared(l1.clone()))
        .tier(Tier::shared(l2.clone()))
        .fleet_lock(FleetLock::shared(lock).max_wait(MAX_WAIT).poll(POLL))
        .build()
        .unwrap();
    Instance { cache, l1 }
}

/// Two instances over one shared L2 and one lock.
fn fleet() -> (Instance, Instance, MemoryLoadLock) {
    let l2: Arc<dyn CacheLayer> = Arc::new(SharedLayer(Arc::new(MemoryLayer::new())));
    let lock = MemoryLoadLock::new();
    let a = instance(&l2, Arc::new(lock.clone()));
    let b = instance(&l2, Arc::new(lock.clone()));
    (a, b, lock)
}

/// Waits (a bounded number of turns) until the holder has the lock.
async fn until_locked(lock: &MemoryLoadLock) {
    for _ in 0..10_000 {
        if lock.is_locked(KEY) {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("the holder never took the lock");
}

/// Lets spawned tasks (a background release) run.
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn two_instances_missing_one_key_run_the_loader_once() {
    let (a, b, lock) = fleet();
    let calls = AtomicUsize::new(0);
    let load = |name: &'static str| {
        let calls = &calls;
        move || async move {
            calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_secs(1)).await; // a slow query
            Ok::<_, std::io::Error>(name.to_string())
        }
    };
    let started = Instant::now();
    let (from_a, from_b) = tokio::join!(
        a.cache.get_or_compute(KEY, TTL, load("a")),
        b.cache.get_or_compute(KEY, TTL, load("b")),
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1, "one loader for the fleet");
    assert_eq!(from_a.unwrap(), "a");
    assert_eq!(from_b.unwrap(), "a", "the waiter gets the holder's value");
    // Within a poll of the holder's write.
    assert!(started.elapsed() <= Duration::from_secs(1) + POLL * 2);

    let (sa, sb) = (a.cache.stats(), b.cache.stats());
    assert_eq!((sa.fleet.acquired, sa.loads), (1, 1), "{sa:?}");
    assert_eq!((sb.fleet.waited_found, sb.loads), (1, 0), "{sb:?}");
    assert_eq!(sb.fleet.waited_then_loaded + sb.fleet.lock_errors, 0);
    // The waiter filled its L1 as a read does.
    let filled = b.l1.get(&ctx::read(), KEY).await.unwrap();
    assert!(filled.is_some(), "b's L1 holds the value it waited for");
    // Polls are not reads: the shared tier counted no miss for them.
    assert_eq!(sb.tiers[1].misses, 1, "{sb:?}");

    settle().await;
    assert!(!lock.is_locked(KEY), "the holder released the lock");
}

#[tokio::test(start_paused = true)]
async fn a_holder_that_never_finishes_leaves_the_waiter_to_load_after_max_wait() {
    let (a, b, lock) = fleet();
    let stuck = tokio::spawn(async move {
        a.cache
            .get_or_compute(KEY, TTL, || {
                std::future::pending::<Result<String, std::io::Error>>()
            })
            .await
    });
    until_locked(&lock).await;
    let started = Instant::now();
    let value: String = b
        .cache
        .get_or_compute(KEY, TTL, || async { Ok::<_, std::io::Error>("b".into()) })
        .await
        .unwrap();
    let waited = started.elapsed();
    assert_eq!(value, "b");
    assert!(
        waited >= MAX_WAIT,
        "loaded after {waited:?}, before max_wait"
    );
    assert!(waited <= MAX_WAIT + POLL, "waited {waited:?}");
    let stats = b.cache.stats();
    assert_eq!(
        (stats.fleet.waited_then_loaded, stats.loads),
        (1, 1),
        "{stats:?}"
    );

    // Cancelling the stuck holder releases its lock (in the background).
    assert!(lock.is_locked(KEY));
    stuck.abort();
    assert!(stuck.await.unwrap_err().is_cancelled());
    settle().await;
    assert!(!lock.is_locked(KEY), "a cancelled holder releases the lock");
}

#[tokio::test(start_paused = true)]
async fn a_waiter_takes_over_when_the_holder_is_cancelled_or_its_loader_fails() {
    for cancel in [true, false] {
        let (a, b, lock) = fleet();
        let holder = tokio::spawn(async move {
            a.cache
                .get_or_compute(KEY, TTL, move || async move {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    if cancel {
                        std::future::pending::<()>().await;
                    }
                    Err::<String, _>(std::io::Error::other("database down"))
                })
                .await
        });
        until_locked(&lock).await;
        if cancel {
            let holder = holder.abort_handle();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(1)).await;
                holder.abort();
            });
        }
        let started = Instant::now();
        let value: String = b
            .cache
            .get_or_compute(KEY, TTL, || async { Ok::<_, std::io::Error>("b".into()) })
            .await
            .unwrap();
        let waited = started.elapsed();
        assert_eq!(value, "b");
        // The lock came free after a second, long before max_wait.
        assert!(
            waited < Duration::from_secs(2),
            "cancel {cancel}: {waited:?}"
        );
        let stats = b.cache.stats();
        assert_eq!(stats.fleet.acquired, 1, "cancel {cancel}: {stats:?}");
        assert_eq!(stats.fleet.waited_then_loaded, 0, "cancel {cancel}");
    }
}

/// A lock service that is down, or hangs.
#[derive(Debug)]
struct BrokenLock {
    hang: bool,
}

#[async_trait]
impl LoadLock for BrokenLock {
    async fn try_lock(&self, _: &str, _: Duration) -> cache_core::Result<Option<LockToken>> {
        if self.hang {
            std::future::pending::<()>().await;
        }
        Err(Error::unavailable("lock", "connection refused"))
    }

    async fn unlock(&self, _: &str, _: &LockToken) -> cache_core::Result<bool> {
        Err(Error::unavailable("lock", "connection refused"))
    }
}

#[tokio::test(start_paused = true)]
async fn lock_errors_fall_back_to_a_local_load() {
    for hang in [false, true] {
        let l2: Arc<dyn CacheLayer> = Arc::new(SharedLayer(Arc::new(MemoryLayer::new())));
        let one = instance(&l2, Arc::new(BrokenLock { hang }));
        let started = Instant::now();
        let value: String = one
            .cache
            .get_or_compute(KEY, TTL, || async { Ok::<_, std::io::Error>("v".into()) })
            .await
            .expect("a lock error never fails the call");
        assert_eq!(value, "v");
        // A hung lock costs at most the wait.
        assert!(started.elapsed() <= MAX_WAIT + POLL, "hang {hang}");
        let stats = one.cache.stats();
        assert_eq!(stats.fleet.lock_errors, 1, "hang {hang}: {stats:?}");
        assert_eq!((stats.loads, stats.fleet.acquired), (1, 0));
        // Cached through every tier as usual.
        assert!(l2.get(&ctx::read(), KEY).await.unwrap().is_some());
    }
}

#[tokio::test(start_paused = true)]
async fn a_failing_shared_tier_skips_the_lock() {
    let faulty = Arc::new(FaultyLayer::new(Arc::new(SharedLayer(Arc::new(
        MemoryLayer::new(),
    )))));
    faulty.set_fault(Fault::Fail);
    let lock = MemoryLoadLock::new();
    let one = instance(&(faulty.clone() as Arc<dyn CacheLayer>), Arc::new(lock));
    let value: u32 = one
        .cache
        .get_or_compute(KEY, TTL, || async { Ok::<_, std::io::Error>(7) })
        .await
        .unwrap();
    assert_eq!(value, 7);
    let stats = one.cache.stats();
    // Nobody can hand it a value through a failing tier: no lock, no wait.
    assert_eq!(stats.fleet, Default::default(), "{stats:?}");
    assert_eq!(stats.loads, 1);
}

#[test]
fn a_fleet_lock_needs_a_shared_tier_and_a_lease() {
    let lock = MemoryLoadLock::new();
    let local_only = TieredCache::builder()
        .layer(MemoryLayer::new())
        .fleet_lock(FleetLock::new(lock.clone()))
        .build();
    assert!(
        matches!(&local_only, Err(Error::Config(m)) if m.contains("shared tier")),
        "{local_only:?}"
    );
    let shared = || SharedLayer(Arc::new(MemoryLayer::new()));
    for bad in [
        FleetLock::new(lock.clone()).lease(Duration::ZERO),
        FleetLock::new(lock.clone()).poll(Duration::ZERO),
    ] {
        let built = TieredCache::builder()
            .layer(shared())
            .fleet_lock(bad)
            .build();
        assert!(matches!(built, Err(Error::Config(_))), "{built:?}");
    }
    assert!(
        TieredCache::builder()
            .layer(shared())
            .fleet_lock(FleetLock::new(lock))
            .build()
            .is_ok()
    );
}
