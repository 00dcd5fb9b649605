//! Cache warming (`CacheWarmer`): bounded concurrency, progress,
//! priorities, skipping what is cached, failures, cancellation, periodic
//! re-warming, copying from the shared tier into L1, and how a warm-up
//! shares loads with requests.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cache_core::{CacheLayer, CallContext, Clock, ErrorClass, ManualClock, Operation};
use cache_memory::MemoryLayer;
use cache_test_support::layers::SharedLayer;
use cache_tiered::{CancellationToken, Error, Tier, TieredCache, WarmJob, WarmProgress, WarmTiers};
use tokio::sync::Semaphore;

const TTL: Duration = Duration::from_secs(300);

/// A fake back end that counts its calls and how many run at once.
#[derive(Default)]
struct Source {
    calls: AtomicU64,
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
    order: Mutex<Vec<String>>,
}

/// Marks one call in flight until dropped (also when the warm-up drops the
/// loader's future mid-call).
struct InFlight(Arc<Source>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Source {
    fn enter(self: &Arc<Self>, key: &str) -> InFlight {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        self.order.lock().unwrap().push(key.to_owned());
        InFlight(self.clone())
    }

    fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::SeqCst)
    }

    fn order(&self) -> Vec<String> {
        self.order.lock().unwrap().clone()
    }
}

/// What the test loaders return.
type Loading = Pin<Box<dyn Future<Output = Result<Option<String>, std::io::Error>> + Send>>;

/// A loader over `source` that takes `latency` (tokio time) and answers
/// `value:<key>`.
fn slow(
    source: &Arc<Source>,
    latency: Duration,
) -> impl Fn(String) -> Loading + Send + Sync + 'static {
    let source = source.clone();
    move |key: String| {
        let source = source.clone();
        Box::pin(async move {
            let _in_flight = source.enter(&key);
            tokio::time::sleep(latency).await;
            Ok(Some(format!("value:{key}")))
        })
    }
}

fn keys(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}:{i}")).collect()
}

/// L1 memory over an L2 that reports itself shared (Redis's stand-in).
struct TwoTiers {
    cache: TieredCache,
    l1: Arc<MemoryLayer>,
    l2: Arc<MemoryLayer>,
}

fn two_tiers(clock: Option<Arc<ManualClock>>) -> TwoTiers {
    two_tiers_over(clock, None, None)
}

fn two_tiers_over(
    clock: Option<Arc<ManualClock>>,
    l2: Option<Arc<MemoryLayer>>,
    l1_cap: Option<Duration>,
) -> TwoTiers {
    let memory = || {
        let mut builder = MemoryLayer::builder();
        if let Some(clock) = &clock {
            builder = builder.clock(clock.clone());
        }
        Arc::new(builder.build().unwrap())
    };
    let l1 = memory();
    let l2 = l2.unwrap_or_else(memory);
    let mut top = Tier::shared(l1.clone());
    if let Some(cap) = l1_cap {
        top = top.ttl_cap(cap);
    }
    let mut builder = TieredCache::builder()
        .tier(top)
        .tier(Tier::new(SharedLayer(l2.clone())))
        .default_ttl(TTL);
    if let Some(clock) = clock {
        builder = builder.clock(clock);
    }
    TwoTiers {
        cache: builder.build().unwrap(),
        l1,
        l2,
    }
}

/// Whether `layer` holds `key` (expired entries are not returned).
async fn holds(layer: &MemoryLayer, clock: &dyn Clock, key: &str) -> bool {
    let ctx = CallContext::new(clock, Operation::Read);
    layer.get(&ctx, key).await.unwrap().is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_keys_at_concurrency_32_report_progress_and_keep_the_bound() {
    let TwoTiers { cache, l1, l2 } = two_tiers(None);
    let source = Arc::new(Source::default());
    let seen: Arc<Mutex<Vec<u64>>> = Arc::default();
    let warmer = cache
        .warmer()
        .concurrency(32)
        .keys(
            keys("offer", 10_000),
            slow(&source, Duration::from_millis(1)),
        )
        .on_progress({
            let seen = seen.clone();
            move |progress: &WarmProgress| seen.lock().unwrap().push(progress.done())
        });
    let progress = warmer.progress();
    let summary = warmer.run().await.unwrap();

    assert_eq!(summary.total, 10_000);
    assert_eq!(summary.loaded, 10_000, "{summary}");
    assert_eq!(summary.done(), 10_000);
    assert!(!summary.cancelled);
    assert!(summary.errors.is_empty());
    assert_eq!(source.calls(), 10_000, "one loader call per key");

    let max = source.max_in_flight.load(Ordering::SeqCst);
    assert!(max <= 32, "{max} loaders ran at once, above the bound");
    assert!(max > 1, "the loaders never overlapped (max {max})");
    assert_eq!(source.in_flight(), 0);

    // The callback: once at the start and once per key, in order.
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 10_001);
    assert_eq!(seen.first(), Some(&0));
    assert!(
        seen.windows(2).all(|w| w[1] == w[0] + 1),
        "in order, one by one"
    );
    assert_eq!(seen.last(), Some(&10_000));
    assert_eq!(progress.borrow().done(), 10_000, "the watch saw the end");
    assert_eq!(progress.borrow().total, 10_000);

    // In both tiers; and warming counted no user read, and no load.
    assert_eq!((l1.len(), l2.len()), (10_000, 10_000));
    let stats = cache.stats();
    assert_eq!((stats.hits, stats.misses, stats.loads), (0, 0, 0));
    assert_eq!(stats.tiers[0].fills, 10_000);
    assert_eq!(stats.tiers[1].fills, 10_000);
    assert_eq!(
        cache.get::<String>("offer:9999").await.unwrap().as_deref(),
        Some("value:offer:9999")
    );
    assert_eq!(cache.stats().tiers[0].hits, 1);
}

#[tokio::test(start_paused = true)]
async fn higher_priorities_start_first() {
    let TwoTiers { cache, .. } = two_tiers(None);
    let source = Arc::new(Source::default());
    let load = slow(&source, Duration::from_millis(5));
    let load = Arc::new(load);
    let job = |prefix: &str, priority: i32| {
        let load = load.clone();
        WarmJob::new(keys(prefix, 3), move |key| load(key)).priority(priority)
    };
    let summary = cache
        .warmer()
        .concurrency(1)
        .job(job("low", 0))
        .job(job("high", 10))
        .job(job("mid", 5))
        .job(job("also-high", 10))
        .run()
        .await
        .unwrap();
    assert_eq!(summary.loaded, 12);
    let want: Vec<String> = ["high", "also-high", "mid", "low"]
        .iter()
        .flat_map(|prefix| keys(prefix, 3))
        .collect();
    assert_eq!(source.order(), want);
}

#[tokio::test(start_paused = true)]
async fn keys_already_cached_are_skipped_and_count_no_read() {
    let clock = ManualClock::shared();
    let TwoTiers { cache, l1, .. } = two_tiers(Some(clock.clone()));
    let all = keys("k", 10);
    for key in &all[..4] {
        cache.set(key, &format!("old:{key}"), TTL).await.unwrap();
    }
    // In the shared tier only: cached, and copied up into L1 by the check.
    cache
        .entry(&all[4])
        .skip_local()
        .set(&"old:k:4".to_owned())
        .await
        .unwrap();
    assert!(!holds(&l1, &*clock, &all[4]).await);

    let source = Arc::new(Source::default());
    let summary = cache
        .warmer()
        .keys(all.clone(), slow(&source, Duration::from_millis(1)))
        .run()
        .await
        .unwrap();
    assert_eq!((summary.skipped, summary.loaded), (5, 5), "{summary}");
    assert_eq!(source.order(), all[5..].to_vec(), "only the missing keys");
    assert!(holds(&l1, &*clock, &all[4]).await, "copied up by the check");
    let stats = cache.stats();
    assert_eq!(
        (stats.hits, stats.misses),
        (0, 0),
        "warming is no user read"
    );
    assert_eq!(
        cache.get::<String>(&all[0]).await.unwrap().as_deref(),
        Some("old:k:0")
    );

    // Turned off: every key is loaded again, and the values replaced.
    let summary = cache
        .warmer()
        .skip_cached(false)
        .keys(all.clone(), slow(&source, Duration::from_millis(1)))
        .run()
        .await
        .unwrap();
    assert_eq!((summary.skipped, summary.loaded), (0, 10));
    assert_eq!(source.calls(), 15);
    assert_eq!(
        cache.get::<String>(&all[0]).await.unwrap().as_deref(),
        Some("value:k:0")
    );
}

#[tokio::test(start_paused = true)]
async fn failures_timeouts_panics_and_missing_values_are_counted() {
    let TwoTiers { cache, l1, l2 } = two_tiers(None);
    let calls = Arc::new(AtomicU64::new(0));
    let loader = {
        let calls = calls.clone();
        move |key: String| {
            calls.fetch_add(1, Ordering::SeqCst);
            async move {
                let i: u64 = key.trim_start_matches("k:").parse().unwrap();
                match i % 10 {
                    0 => Err(std::io::Error::other(format!("no row for {key}"))),
                    1 => Ok(None),
                    2 => {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                        Ok(Some(i))
                    }
                    3 if i == 3 => panic!("a loader bug"),
                    _ => Ok(Some(i)),
                }
            }
        }
    };
    let summary = cache
        .warmer()
        .concurrency(8)
        .load_timeout(Duration::from_secs(1))
        .keys(keys("k", 100), loader)
        .run()
        .await
        .unwrap();
    // 10 errors, 10 timeouts, 1 panic; 10 missing; the other 69 loaded.
    assert_eq!(summary.failed, 21, "{summary}");
    assert_eq!(summary.missing, 10);
    assert_eq!(summary.loaded, 69);
    assert_eq!(summary.done(), 100);
    assert_eq!(calls.load(Ordering::SeqCst), 100);
    assert_eq!(summary.errors.len(), 16, "the first 16 are kept");
    let errors = &summary.errors;
    assert!(
        errors
            .iter()
            .any(|(key, error)| key == "k:0" && matches!(error, Error::Loader(_)))
    );
    assert!(
        errors
            .iter()
            .any(|(key, error)| key == "k:2" && matches!(error, Error::LoaderTimeout(_)))
    );
    assert!(
        errors
            .iter()
            .any(|(key, error)| key == "k:3" && matches!(error, Error::LoaderPanicked))
    );
    assert!(summary.to_string().contains("21 failed"));
    // Only values are cached: no error, no "not found".
    assert_eq!((l1.len(), l2.len()), (69, 69));
    assert_eq!(cache.get::<u64>("k:0").await.unwrap(), None);
    assert_eq!(cache.get::<u64>("k:4").await.unwrap(), Some(4));
    assert_eq!(cache.stats().load_errors, 0, "not the cache's loads");
}

#[tokio::test(start_paused = true)]
async fn cancelling_mid_way_stops_cleanly() {
    let TwoTiers { cache, l1, .. } = two_tiers(None);
    let source = Arc::new(Source::default());
    let handle = cache
        .warmer()
        .concurrency(8)
        .keys(keys("k", 1000), slow(&source, Duration::from_millis(10)))
        .start()
        .unwrap();
    let mut progress = handle.progress();
    progress.wait_for(|p| p.done() >= 200).await.unwrap();

    handle.cancel();
    let calls_at_cancel = source.calls();
    let summary = handle.join().await.unwrap();

    assert!(summary.cancelled, "{summary}");
    assert!(summary.done() >= 200 && summary.done() < 1000, "{summary}");
    assert_eq!(summary.loaded, summary.done(), "nothing failed");
    assert_eq!(
        source.calls(),
        calls_at_cancel,
        "no loader call after cancel"
    );
    assert!(
        calls_at_cancel <= summary.done() + 8,
        "at most 8 were in flight"
    );
    assert_eq!(source.in_flight(), 0, "the loaders in flight were dropped");
    assert_eq!(l1.len() as u64, summary.loaded, "what it says it loaded");
    // Its task is over and holds nothing of the warm-up any more.
    assert_eq!(Arc::strong_count(&source), 1);
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert_eq!(source.calls(), calls_at_cancel);
}

#[tokio::test(start_paused = true)]
async fn cancelling_drops_loaders_that_hang_instead_of_waiting_for_them() {
    let TwoTiers { cache, l1, .. } = two_tiers(None);
    let source = Arc::new(Source::default());
    let never = Arc::new(Semaphore::new(0));
    let handle = cache
        .warmer()
        .concurrency(4)
        .keys(keys("k", 100), gated(&source, &never))
        .start()
        .unwrap();
    until(|| source.in_flight() == 4).await;
    handle.cancel();
    let summary = tokio::time::timeout(Duration::from_secs(10), handle.join())
        .await
        .expect("join waited for loaders that never finish")
        .unwrap();
    assert!(summary.cancelled);
    assert_eq!((summary.done(), source.calls()), (0, 4));
    assert_eq!(source.in_flight(), 0, "dropped");
    assert_eq!(l1.len(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_token_cancels_a_run_and_so_does_dropping_it_or_its_handle() {
    let TwoTiers { cache, .. } = two_tiers(None);
    let source = Arc::new(Source::default());

    // Cancelled before it starts: nothing is loaded.
    let token = CancellationToken::new();
    token.cancel();
    let summary = cache
        .warmer()
        .cancel_on(token)
        .keys(keys("a", 10), slow(&source, Duration::from_millis(10)))
        .run()
        .await
        .unwrap();
    assert!(summary.cancelled);
    assert_eq!((summary.done(), source.calls()), (0, 0));

    // Cancelled by a token from another task while `run` runs in this one.
    let token = CancellationToken::new();
    let warmer = cache
        .warmer()
        .cancel_on(token.clone())
        .concurrency(4)
        .keys(keys("b", 1000), slow(&source, Duration::from_millis(10)));
    let mut progress = warmer.progress();
    let canceller = tokio::spawn(async move {
        progress.wait_for(|p| p.done() >= 100).await.unwrap();
        token.cancel();
    });
    let summary = warmer.run().await.unwrap();
    canceller.await.unwrap();
    assert!(summary.cancelled && summary.done() >= 100 && summary.done() < 1000);
    assert_eq!(source.in_flight(), 0);
    drop(warmer);

    // A dropped `run` future: its tasks stop by themselves.
    let before = source.calls();
    let warmer = cache
        .warmer()
        .keys(keys("d", 1000), slow(&source, Duration::from_millis(10)));
    let mut progress = warmer.progress();
    tokio::select! {
        _ = warmer.run() => panic!("the run ended before it was dropped"),
        _ = progress.wait_for(|p| p.done() >= 50) => {}
    }
    drop(warmer);
    for _ in 0..100 {
        if source.in_flight() == 0 && Arc::strong_count(&source) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(source.in_flight(), 0, "its loaders were dropped");
    assert_eq!(Arc::strong_count(&source), 1, "its tasks ended");
    let after = source.calls();
    assert!(after - before < 1000);
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert_eq!(source.calls(), after);

    // Dropped handle: the task stops by itself.
    let before = source.calls();
    let handle = cache
        .warmer()
        .keys(keys("c", 1000), slow(&source, Duration::from_millis(10)))
        .start()
        .unwrap();
    handle
        .progress()
        .wait_for(|p| p.done() >= 50)
        .await
        .unwrap();
    drop(handle);
    for _ in 0..100 {
        if Arc::strong_count(&source) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(Arc::strong_count(&source), 1, "the task ended");
    let after = source.calls();
    assert!(after - before < 1000);
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert_eq!(source.calls(), after);
}

#[tokio::test(start_paused = true)]
async fn periodic_rewarming_reloads_what_expired_and_stops_with_its_handle() {
    let clock = ManualClock::shared();
    let TwoTiers { cache, .. } = two_tiers(Some(clock.clone()));
    let source = Arc::new(Source::default());
    let schedule = cache
        .warmer()
        .ttl(Duration::from_secs(30))
        .keys(keys("k", 10), slow(&source, Duration::from_millis(1)))
        .every(Duration::from_secs(60))
        .unwrap();
    let mut summaries = schedule.summaries();

    let first = summaries.wait_for(Option::is_some).await.unwrap().clone();
    assert_eq!(first.unwrap().loaded, 10);
    assert_eq!(source.calls(), 10);

    // The values expire; the next run, a period later, loads them again.
    clock.advance(Duration::from_secs(31));
    summaries.changed().await.unwrap();
    let second = summaries.borrow_and_update().clone().unwrap();
    assert_eq!((second.loaded, second.skipped), (10, 0));
    assert_eq!(source.calls(), 20);

    // Nothing expired: the run after skips them all.
    summaries.changed().await.unwrap();
    let third = summaries.borrow_and_update().clone().unwrap();
    assert_eq!((third.loaded, third.skipped), (0, 10));
    assert_eq!(source.calls(), 20);

    schedule.stop().await;
    clock.advance(Duration::from_secs(3600));
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert_eq!(source.calls(), 20, "no run after stop");
    assert!(summaries.changed().await.is_err(), "the task ended");
    assert_eq!(Arc::strong_count(&source), 1);
}

#[tokio::test(start_paused = true)]
async fn a_schedule_ends_with_its_cache_or_when_dropped() {
    let source = Arc::new(Source::default());
    let TwoTiers { cache, .. } = two_tiers(None);
    let schedule = cache
        .warmer()
        .skip_cached(false)
        .keys(keys("k", 5), slow(&source, Duration::from_millis(1)))
        .every(Duration::from_secs(60))
        .unwrap();
    let mut summaries = schedule.summaries();
    summaries.wait_for(Option::is_some).await.unwrap();
    summaries.changed().await.unwrap();
    assert_eq!(
        source.calls(),
        10,
        "skip_cached(false): every key every time"
    );

    // The schedule holds the cache only during a run.
    drop(cache);
    assert!(summaries.changed().await.is_err(), "ended at its next tick");
    assert!(schedule.is_finished());
    assert_eq!(source.calls(), 10);

    // Dropping the schedule stops it too.
    let TwoTiers { cache, .. } = two_tiers(None);
    let schedule = cache
        .warmer()
        .skip_cached(false)
        .keys(keys("k", 5), slow(&source, Duration::from_millis(1)))
        .every(Duration::from_secs(60))
        .unwrap();
    let mut summaries = schedule.summaries();
    summaries.wait_for(Option::is_some).await.unwrap();
    drop(schedule);
    assert!(summaries.changed().await.is_err());
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert_eq!(source.calls(), 15);
}

#[tokio::test(start_paused = true)]
async fn an_instance_warms_its_l1_from_the_shared_tier_keeping_expiries() {
    let clock = ManualClock::shared();
    let a = two_tiers(Some(clock.clone()));
    // Written by another instance: values of two types, in L2.
    for i in 0..100u32 {
        a.cache.set(&format!("offer:{i}"), &i, TTL).await.unwrap();
        a.cache
            .set(&format!("title:{i}"), &format!("Offer #{i}"), TTL)
            .await
            .unwrap();
    }
    clock.advance(Duration::from_secs(100));

    // A new instance over the same L2, its L1 empty.
    let b = two_tiers_over(Some(clock.clone()), Some(a.l2.clone()), None);
    let mut wanted: Vec<String> = keys("offer", 100);
    wanted.extend(keys("title", 100));
    wanted.push("offer:absent".into());
    let summary = b
        .cache
        .warmer()
        .concurrency(2)
        .job(WarmJob::from_shared(wanted.clone()).batch_size(16))
        .run()
        .await
        .unwrap();
    assert_eq!((summary.loaded, summary.missing), (200, 1), "{summary}");
    assert_eq!(b.l1.len(), 200);

    // Each copy keeps the time its entry had left in L2 (200 s), exactly.
    let ctx = CallContext::new(&*clock, Operation::Read);
    for key in ["offer:7", "title:99"] {
        let in_l1 = b.l1.get(&ctx, key).await.unwrap().unwrap();
        let in_l2 = b.l2.get(&ctx, key).await.unwrap().unwrap();
        assert_eq!(in_l1.expiry(), in_l2.expiry());
        assert_eq!(in_l1.remaining(clock.now()), Some(Duration::from_secs(200)));
    }
    let stats = b.cache.stats();
    assert_eq!((stats.hits, stats.misses), (0, 0), "no user read");
    assert_eq!(stats.tiers[0].fills, 200);
    assert_eq!(b.cache.get::<u32>("offer:7").await.unwrap(), Some(7));
    assert_eq!(b.cache.stats().tiers[0].hits, 1, "answered by L1");

    // Again: all in L1 already.
    let again = b.cache.warmer().from_shared(wanted).run().await.unwrap();
    assert_eq!((again.skipped, again.loaded, again.missing), (200, 0, 1));

    // An L1 with a TTL cap caps the copies, as any fill.
    let c = two_tiers_over(
        Some(clock.clone()),
        Some(a.l2.clone()),
        Some(Duration::from_secs(30)),
    );
    let summary = c
        .cache
        .warmer()
        .from_shared(["offer:1"])
        .run()
        .await
        .unwrap();
    assert_eq!(summary.loaded, 1);
    let in_l1 = c.l1.get(&ctx, "offer:1").await.unwrap().unwrap();
    assert_eq!(in_l1.remaining(clock.now()), Some(Duration::from_secs(30)));
}

#[tokio::test(start_paused = true)]
async fn warming_only_the_local_or_only_the_shared_tiers() {
    let source = Arc::new(Source::default());
    let TwoTiers { cache, l1, l2 } = two_tiers(None);
    let summary = cache
        .warmer()
        .tiers(WarmTiers::Local)
        .keys(keys("k", 10), slow(&source, Duration::from_millis(1)))
        .run()
        .await
        .unwrap();
    assert_eq!(summary.loaded, 10);
    assert_eq!((l1.len(), l2.len()), (10, 0));

    let TwoTiers { cache, l1, l2 } = two_tiers(None);
    let summary = cache
        .warmer()
        .tiers(WarmTiers::Shared)
        .keys(keys("k", 10), slow(&source, Duration::from_millis(1)))
        .run()
        .await
        .unwrap();
    assert_eq!(summary.loaded, 10);
    assert_eq!((l1.len(), l2.len()), (0, 10));
}

/// A loader that waits for a permit of `gate` before answering.
fn gated(
    source: &Arc<Source>,
    gate: &Arc<Semaphore>,
) -> impl Fn(String) -> Loading + Send + Sync + 'static {
    let (source, gate) = (source.clone(), gate.clone());
    move |key: String| {
        let (source, gate) = (source.clone(), gate.clone());
        Box::pin(async move {
            let _in_flight = source.enter(&key);
            gate.acquire().await.unwrap().forget();
            Ok(Some(format!("warmed:{key}")))
        })
    }
}

async fn until(what: impl Fn() -> bool) {
    for _ in 0..1000 {
        if what() {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("never happened");
}

#[tokio::test]
async fn a_request_during_the_warm_up_waits_for_its_load() {
    let TwoTiers { cache, .. } = two_tiers(None);
    let source = Arc::new(Source::default());
    let gate = Arc::new(Semaphore::new(0));
    let handle = cache
        .warmer()
        .keys(["offer:7"], gated(&source, &gate))
        .start()
        .unwrap();
    until(|| source.calls() == 1).await;

    let request_loads = Arc::new(AtomicU64::new(0));
    let request = tokio::spawn({
        let (cache, request_loads) = (cache.clone(), request_loads.clone());
        async move {
            cache
                .get_or_compute("offer:7", TTL, || async move {
                    request_loads.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, std::io::Error>("requested".to_owned())
                })
                .await
        }
    });
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    gate.add_permits(1);
    assert_eq!(request.await.unwrap().unwrap(), "warmed:offer:7");
    assert_eq!(request_loads.load(Ordering::SeqCst), 0, "one load, not two");
    assert_eq!(handle.join().await.unwrap().loaded, 1);
    assert_eq!(cache.stats().coalesced, 1);
}

#[tokio::test]
async fn a_key_deleted_while_it_loads_is_not_cached() {
    let TwoTiers { cache, l1, l2 } = two_tiers(None);
    let source = Arc::new(Source::default());
    let gate = Arc::new(Semaphore::new(0));
    let handle = cache
        .warmer()
        .keys(["offer:7"], gated(&source, &gate))
        .start()
        .unwrap();
    until(|| source.calls() == 1).await;
    // The database changed and the service removed the key meanwhile.
    cache.delete("offer:7").await.unwrap();
    gate.add_permits(1);
    let summary = handle.join().await.unwrap();
    assert_eq!((summary.superseded, summary.loaded), (1, 0), "{summary}");
    assert_eq!(cache.get::<String>("offer:7").await.unwrap(), None);
    assert_eq!((l1.len(), l2.len()), (0, 0));
}

#[tokio::test]
async fn configuration_errors_are_returned_before_anything_loads() {
    let source = Arc::new(Source::default());
    let loader = || slow(&source, Duration::from_millis(1));
    let is_config = |error: Error| error.class() == ErrorClass::Config;

    let TwoTiers { cache, .. } = two_tiers(None);
    let zero = cache
        .warmer()
        .concurrency(0)
        .keys(["k"], loader())
        .run()
        .await;
    assert!(is_config(zero.unwrap_err()));
    let never = cache
        .warmer()
        .keys(["k"], loader())
        .every(Duration::ZERO)
        .unwrap_err();
    assert!(is_config(never));

    let memory_only = TieredCache::builder()
        .layer(MemoryLayer::new())
        .build()
        .unwrap();
    let copy = memory_only.warmer().from_shared(["k"]).run().await;
    assert!(is_config(copy.unwrap_err()), "no shared tier to copy from");
    let nowhere = memory_only
        .warmer()
        .tiers(WarmTiers::Shared)
        .keys(["k"], loader())
        .start()
        .unwrap_err();
    assert!(is_config(nowhere), "a job that writes no tier");
    assert_eq!(source.calls(), 0);
}
