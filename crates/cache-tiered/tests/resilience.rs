//! Resilient loading: fail-safe (a stale value in place of a failed or slow
//! load, throttled), soft and hard loader timeouts, and eager refresh.
//!
//! Expiries run on a `ManualClock`; loader timeouts on tokio's paused time.
//! Loaders are controllable: they fail, hang, or wait on a gate.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cache_core::{CacheLayer, CallContext, ManualClock, Operation};
use cache_memory::MemoryLayer;
use cache_tiered::{Error, Fetched, Stale, Tier, TieredCache, TieredCacheBuilder};
use tokio::sync::Semaphore;

const TTL: Duration = Duration::from_secs(60);
const GRACE: Duration = Duration::from_secs(3600);

fn memory(clock: &Arc<ManualClock>) -> MemoryLayer {
    MemoryLayer::builder()
        .clock(clock.clone())
        .sweep_interval(None)
        .build()
        .unwrap()
}

/// L1 over L2, both in memory, fail-safe on with the default throttle.
fn builder(clock: &Arc<ManualClock>) -> TieredCacheBuilder {
    TieredCache::builder()
        .layer(memory(clock))
        .layer(memory(clock))
        .clock(clock.clone())
        .default_ttl(TTL)
        .fail_safe(GRACE)
}

/// A loader and how often it ran.
#[derive(Clone, Default)]
struct Db {
    calls: Arc<AtomicUsize>,
}

impl Db {
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn ok(
        &self,
        value: u32,
    ) -> impl FnOnce() -> std::future::Ready<Result<u32, std::io::Error>> + use<> {
        let calls = self.calls.clone();
        move || {
            calls.fetch_add(1, Ordering::SeqCst);
            std::future::ready(Ok(value))
        }
    }

    fn failing(&self) -> impl FnOnce() -> std::future::Ready<Result<u32, std::io::Error>> + use<> {
        let calls = self.calls.clone();
        move || {
            calls.fetch_add(1, Ordering::SeqCst);
            std::future::ready(Err(std::io::Error::other("database down")))
        }
    }
}

/// Waits until `done` holds, failing the test after 10 s (a condition that
/// never comes is a failure, not a hang).
async fn until(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let waited = tokio::time::timeout(Duration::from_secs(10), async {
        while !done().await {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(waited.is_ok(), "never happened: {what}");
}

fn stale_reason(fetched: &Fetched<u32>) -> &str {
    match &fetched.stale {
        None => "fresh",
        Some(Stale::LoaderFailed(Error::LoaderTimeout(_))) => "hard timeout",
        Some(Stale::LoaderFailed(_)) => "loader failed",
        Some(Stale::SoftTimeout) => "soft timeout",
        Some(Stale::Throttled) => "throttled",
        Some(_) => "other",
    }
}

#[tokio::test]
async fn a_failing_loader_gets_the_stale_value_then_a_throttle() {
    let clock = ManualClock::shared();
    let cache = builder(&clock).build().unwrap();
    let db = Db::default();
    let first = cache.entry("price:7").fetch(db.ok(1999)).await.unwrap();
    assert_eq!((first.value, stale_reason(&first)), (1999, "fresh"));

    clock.advance(TTL);
    // Past its TTL the value is no longer live: `get` does not return it.
    assert_eq!(cache.get::<u32>("price:7").await.unwrap(), None);
    let failed = cache.entry("price:7").fetch(db.failing()).await.unwrap();
    assert_eq!(
        (failed.value, stale_reason(&failed)),
        (1999, "loader failed")
    );
    assert_eq!(db.calls(), 2);

    // Within the throttle the loader is not called again.
    clock.advance(Duration::from_secs(4));
    let throttled = cache.entry("price:7").fetch(db.failing()).await.unwrap();
    assert_eq!(
        (throttled.value, stale_reason(&throttled)),
        (1999, "throttled")
    );
    assert_eq!(db.calls(), 2, "the throttle spared the failing back end");
    assert_eq!(
        cache.get::<u32>("price:7").await.unwrap(),
        None,
        "stale to a read"
    );
    assert_eq!(
        cache.get_many::<u32>(&["price:7"]).await[0]
            .as_ref()
            .unwrap(),
        &None
    );

    // After it, the loader is tried again; once it works, values are fresh.
    clock.advance(Duration::from_secs(1));
    let again = cache.entry("price:7").fetch(db.failing()).await.unwrap();
    assert_eq!(stale_reason(&again), "loader failed");
    clock.advance(Duration::from_secs(5));
    let healed = cache.entry("price:7").fetch(db.ok(2099)).await.unwrap();
    assert_eq!((healed.value, stale_reason(&healed)), (2099, "fresh"));
    assert_eq!(db.calls(), 4);
    let stats = cache.stats();
    assert_eq!((stats.stale_served, stats.load_errors), (3, 2));
}

#[tokio::test]
async fn the_shorthand_and_followers_get_the_stale_value_too() {
    let clock = ManualClock::shared();
    let cache = builder(&clock).build().unwrap();
    let db = Db::default();
    cache.entry("k").get_or_compute(db.ok(1)).await.unwrap();
    clock.advance(TTL);
    // `TieredCache::get_or_compute` follows the cache's fail-safe default.
    let value: u32 = cache
        .get_or_compute("k", TTL, || async {
            Err::<u32, _>(std::io::Error::other("down"))
        })
        .await
        .unwrap();
    assert_eq!(value, 1);

    // Many callers at once past the throttle: one loader call, every
    // caller served the stale value.
    clock.advance(Duration::from_secs(5));
    let gate = Arc::new(Semaphore::new(0));
    let calls = Arc::new(AtomicUsize::new(0));
    let callers: Vec<_> = (0..20)
        .map(|_| {
            let (cache, gate, calls) = (cache.clone(), gate.clone(), calls.clone());
            tokio::spawn(async move {
                cache
                    .entry("k")
                    .fetch(move || async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        let _ = gate.acquire().await;
                        Err::<u32, _>(std::io::Error::other("down"))
                    })
                    .await
            })
        })
        .collect();
    until("the loader runs", async || calls.load(Ordering::SeqCst) > 0).await;
    gate.add_permits(1);
    for caller in callers {
        let fetched = caller.await.unwrap().unwrap();
        assert_eq!(fetched.value, 1);
        assert!(fetched.is_stale());
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_stale_value_is_never_served_past_its_grace_or_after_a_delete() {
    let clock = ManualClock::shared();
    let cache = builder(&clock).build().unwrap();
    let db = Db::default();
    cache.entry("a").fetch(db.ok(1)).await.unwrap();

    clock.advance(TTL + GRACE);
    let past_grace = cache.entry("a").fetch(db.failing()).await;
    assert!(
        matches!(past_grace, Err(Error::Loader(_))),
        "{past_grace:?}"
    );

    cache.entry("c").fetch(db.ok(3)).await.unwrap();
    clock.advance(TTL);
    cache.delete("c").await.unwrap();
    let deleted = cache.entry("c").fetch(db.failing()).await;
    assert!(
        matches!(deleted, Err(Error::Loader(_))),
        "a deleted value is no fallback: {deleted:?}"
    );
    // Deleted while its loader ran: the stale value read before the delete
    // is no fallback either.
    cache.entry("e").fetch(db.ok(5)).await.unwrap();
    clock.advance(TTL);
    let deleter = cache.clone();
    let racing = cache
        .entry("e")
        .fetch(move || async move {
            deleter.delete("e").await.unwrap();
            Err::<u32, _>(std::io::Error::other("down"))
        })
        .await;
    assert!(
        matches!(racing, Err(Error::Loader(_))),
        "deleted during the load: {racing:?}"
    );
    let after = cache.entry("e").fetch(db.failing()).await;
    assert!(
        after.is_err(),
        "nothing throttled after the delete: {after:?}"
    );
    // Fail-safe off for one call: the error.
    cache.entry("d").fetch(db.ok(4)).await.unwrap();
    clock.advance(TTL);
    let off = cache
        .entry("d")
        .fail_safe(Duration::ZERO)
        .fetch(db.failing())
        .await;
    assert!(off.is_err());
}

#[tokio::test]
async fn a_capped_tier_keeps_its_copy_stale_for_the_grace() {
    let clock = ManualClock::shared();
    // One tier whose cap (10 s) is shorter than the TTL: without fail-safe
    // its copy would be gone after 10 s; with it, the copy turns stale then
    // and stays a fallback.
    let cache = TieredCache::builder()
        .tier(Tier::new(memory(&clock)).ttl_cap(Duration::from_secs(10)))
        .clock(clock.clone())
        .default_ttl(TTL)
        .fail_safe(GRACE)
        .build()
        .unwrap();
    let db = Db::default();
    cache.entry("k").fetch(db.ok(7)).await.unwrap();
    clock.advance(Duration::from_secs(9));
    assert_eq!(cache.get::<u32>("k").await.unwrap(), Some(7));
    clock.advance(Duration::from_secs(1));
    assert_eq!(
        cache.get::<u32>("k").await.unwrap(),
        None,
        "stale at the cap"
    );
    let fetched = cache.entry("k").fetch(db.failing()).await.unwrap();
    assert_eq!(
        (fetched.value, stale_reason(&fetched)),
        (7, "loader failed")
    );
}

#[tokio::test]
async fn values_without_fail_safe_are_gone_at_their_ttl() {
    let clock = ManualClock::shared();
    let cache = TieredCache::builder()
        .layer(memory(&clock))
        .clock(clock.clone())
        .build()
        .unwrap();
    let db = Db::default();
    cache.entry("k").ttl(TTL).fetch(db.ok(7)).await.unwrap();
    clock.advance(TTL);
    assert!(cache.entry("k").fetch(db.failing()).await.is_err());
    // And stored as before this release's formats: no life in the bytes.
    let layer = cache.layers().next().unwrap();
    cache.entry("k2").ttl(TTL).set(&1u32).await.unwrap();
    let ctx = CallContext::new(&**cache.clock(), Operation::Read);
    let entry = layer.get(&ctx, "k2").await.unwrap().unwrap();
    assert_eq!(entry.value()[0], 3, "format 3: plain, no life");
}

#[tokio::test(start_paused = true)]
async fn a_hung_loader_gives_the_stale_value_at_the_hard_timeout() {
    let clock = ManualClock::shared();
    let cache = builder(&clock)
        .hard_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    cache.entry("k").fetch(Db::default().ok(1)).await.unwrap();
    clock.advance(TTL);
    let started = tokio::time::Instant::now();
    let fetched = cache
        .entry("k")
        .fetch(std::future::pending::<Result<u32, std::io::Error>>)
        .await
        .unwrap();
    assert_eq!((fetched.value, stale_reason(&fetched)), (1, "hard timeout"));
    assert_eq!(started.elapsed(), Duration::from_secs(2));

    // Nothing stale: the hard timeout is an error.
    let missing = cache
        .entry("nothing")
        .fetch(std::future::pending::<Result<u32, std::io::Error>>)
        .await;
    assert!(
        matches!(missing, Err(Error::LoaderTimeout(_))),
        "{missing:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn at_the_soft_timeout_the_stale_value_returns_and_the_load_lands_later() {
    let clock = ManualClock::shared();
    let cache = builder(&clock)
        .soft_timeout(Duration::from_millis(100))
        .hard_timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let db = Db::default();
    cache.entry("k").fetch(db.ok(1)).await.unwrap();
    clock.advance(TTL);

    let slow = |value: u32, calls: Arc<AtomicUsize>| {
        move || async move {
            calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok::<_, std::io::Error>(value)
        }
    };
    let started = tokio::time::Instant::now();
    let fetched = cache
        .entry("k")
        .fetch(slow(2, db.calls.clone()))
        .await
        .unwrap();
    assert_eq!((fetched.value, stale_reason(&fetched)), (1, "soft timeout"));
    assert_eq!(started.elapsed(), Duration::from_millis(100));
    // A second caller meanwhile joins the running load, and leaves at its
    // own soft timeout with the stale value too: no second loader call.
    let second = cache
        .entry("k")
        .fetch(slow(3, db.calls.clone()))
        .await
        .unwrap();
    assert_eq!((second.value, stale_reason(&second)), (1, "soft timeout"));
    assert_eq!(db.calls(), 2);

    // The background load finishes and lands in every tier.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(cache.get::<u32>("k").await.unwrap(), Some(2));
    let fresh = cache.entry("k").fetch(db.failing()).await.unwrap();
    assert_eq!((fresh.value, stale_reason(&fresh)), (2, "fresh"));
    assert_eq!(db.calls(), 2);

    // Without a stale value, a caller waits for its load, soft timeout or not.
    let started = tokio::time::Instant::now();
    let cold = cache
        .entry("cold")
        .fetch(slow(9, db.calls.clone()))
        .await
        .unwrap();
    assert_eq!((cold.value, started.elapsed()), (9, Duration::from_secs(5)));
}

#[tokio::test]
async fn many_readers_in_the_refresh_window_start_exactly_one_refresh() {
    let clock = ManualClock::shared();
    let cache = builder(&clock).eager_refresh(0.8).build().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Semaphore::new(0));
    let loader = |value: u32| {
        let (calls, gate) = (calls.clone(), gate.clone());
        move || async move {
            calls.fetch_add(1, Ordering::SeqCst);
            if value > 1 {
                let _ = gate.acquire().await;
            }
            Ok::<_, std::io::Error>(value)
        }
    };
    cache.entry("hot").get_or_compute(loader(1)).await.unwrap();
    clock.advance(TTL.mul_f64(0.7));
    for _ in 0..10 {
        cache.entry("hot").get_or_compute(loader(2)).await.unwrap();
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "before the window: no refresh"
    );

    clock.advance(TTL.mul_f64(0.15));
    let readers: Vec<_> = (0..100)
        .map(|_| {
            let (cache, loader) = (cache.clone(), loader(2));
            tokio::spawn(async move { cache.entry("hot").get_or_compute(loader).await })
        })
        .collect();
    for reader in readers {
        // Every reader is answered at once with the current value.
        assert_eq!(reader.await.unwrap().unwrap(), 1);
    }
    until("a refresh starts", async || {
        calls.load(Ordering::SeqCst) >= 2
    })
    .await;
    gate.add_permits(100);
    until("the refresh lands", async || {
        cache.get::<u32>("hot").await.unwrap() == Some(2)
    })
    .await;
    for _ in 0..10 {
        assert_eq!(
            cache.entry("hot").get_or_compute(loader(3)).await.unwrap(),
            2
        );
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2, "exactly one refresh");
    assert_eq!(cache.stats().eager_refreshes, 1);

    // The refreshed value lives a whole TTL from its refresh: the key never
    // expired under its readers.
    clock.advance(TTL.mul_f64(0.5));
    assert_eq!(cache.get::<u32>("hot").await.unwrap(), Some(2));
}

#[tokio::test]
async fn bad_resilience_options_are_config_errors() {
    let bad = [
        TieredCache::builder()
            .layer(MemoryLayer::new())
            .eager_refresh(1.0)
            .build(),
        TieredCache::builder()
            .layer(MemoryLayer::new())
            .eager_refresh(0.0)
            .build(),
        TieredCache::builder()
            .layer(MemoryLayer::new())
            .hard_timeout(Duration::ZERO)
            .build(),
        TieredCache::builder()
            .layer(MemoryLayer::new())
            .fail_safe_throttle(Duration::ZERO)
            .build(),
    ];
    for built in bad {
        let error = built.unwrap_err();
        assert!(error.to_string().contains("must be"), "{error}");
    }
    let cache = TieredCache::builder()
        .layer(MemoryLayer::new())
        .build()
        .unwrap();
    let per_call = cache
        .entry("k")
        .eager_refresh(f64::NAN)
        .fetch(|| async { Ok::<_, std::io::Error>(1u32) })
        .await;
    assert!(matches!(per_call, Err(Error::Cache(_))), "{per_call:?}");
}

#[tokio::test]
async fn a_call_can_skip_the_local_or_the_shared_tiers() {
    let clock = ManualClock::shared();
    let (l1, l2) = (memory(&clock), memory(&clock));
    let cache = TieredCache::builder()
        .layer(l1.clone())
        .layer(cache_test_support::layers::SharedLayer(Arc::new(
            l2.clone(),
        )))
        .clock(clock.clone())
        .default_ttl(TTL)
        .build()
        .unwrap();
    let ctx = CallContext::new(&*clock, Operation::Read);
    let held = async |layer: &MemoryLayer, key: &str| layer.get(&ctx, key).await.unwrap().is_some();
    let db = Db::default();

    // This instance only: L1 takes it, Redis does not.
    cache.entry("mine").skip_shared().set(&1u32).await.unwrap();
    assert!(held(&l1, "mine").await && !held(&l2, "mine").await);
    assert_eq!(
        cache.entry("mine").skip_local().get::<u32>().await.unwrap(),
        None
    );

    // Loaded into the shared tier only, and read from it without a fill.
    let loaded = cache
        .entry("big")
        .skip_local()
        .get_or_compute(db.ok(2))
        .await
        .unwrap();
    assert_eq!(loaded, 2);
    assert!(!held(&l1, "big").await && held(&l2, "big").await);
    let again = cache
        .entry("big")
        .skip_local()
        .get_or_compute(db.ok(3))
        .await
        .unwrap();
    assert_eq!((again, db.calls()), (2, 1));
    assert!(!held(&l1, "big").await, "no fill into a skipped tier");
    // A plain read fills L1 as usual.
    assert_eq!(cache.get::<u32>("big").await.unwrap(), Some(2));
    assert!(held(&l1, "big").await);

    let nothing = cache
        .entry("k")
        .skip_local()
        .skip_shared()
        .get::<u32>()
        .await;
    assert!(matches!(nothing, Err(Error::Cache(_))), "{nothing:?}");
}
