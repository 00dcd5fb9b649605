//! get_or_compute_many: one loader call for every missing key, one batch
//! read and one batch write per tier, single-flight shared with
//! get_or_compute, and exact stats.
//!
//! Races are staged on one thread: a caller joins the flight table right
//! after counting its misses, with no await between, so once the stats
//! count a caller's misses it has joined (see tests/stats.rs).

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cache_core::{
    CacheLayer, CallContext, Entry, LayerStats, Lookups, ManualClock, Pattern, Writes, async_trait,
};
use cache_memory::MemoryLayer;
use cache_test_support::layers::HoldableLayer;
use cache_tiered::{Error, Tier, TieredCache, TieredStats};
use tokio::sync::Notify;

const TTL: Duration = Duration::from_secs(300);

/// Counts the batch calls that reach a layer (the single-key calls are
/// provided on top of them, so every read and write is counted).
struct Counting {
    inner: Arc<dyn CacheLayer>,
    get_many: AtomicU64,
    set_many: AtomicU64,
    /// The keys of every read, call by call.
    reads: Mutex<Vec<Vec<String>>>,
}

impl Counting {
    fn new(inner: impl CacheLayer + 'static) -> Arc<Self> {
        Arc::new(Counting {
            inner: Arc::new(inner),
            get_many: AtomicU64::new(0),
            set_many: AtomicU64::new(0),
            reads: Mutex::default(),
        })
    }

    /// (get_many calls, set_many calls) so far.
    fn calls(&self) -> (u64, u64) {
        (
            self.get_many.load(Ordering::SeqCst),
            self.set_many.load(Ordering::SeqCst),
        )
    }

    fn reads(&self) -> Vec<Vec<String>> {
        self.reads.lock().unwrap().clone()
    }
}

impl fmt::Debug for Counting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Counting")
            .field("inner", &self.inner)
            .finish()
    }
}

#[async_trait]
impl CacheLayer for Counting {
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn get_many(&self, ctx: &CallContext<'_>, keys: &[&str]) -> cache_core::Result<Lookups> {
        self.get_many.fetch_add(1, Ordering::SeqCst);
        let keys_read = keys.iter().map(|key| (*key).to_owned()).collect();
        self.reads.lock().unwrap().push(keys_read);
        self.inner.get_many(ctx, keys).await
    }

    async fn set_many(
        &self,
        ctx: &CallContext<'_>,
        entries: &[(&str, Entry)],
    ) -> cache_core::Result<Writes> {
        self.set_many.fetch_add(1, Ordering::SeqCst);
        self.inner.set_many(ctx, entries).await
    }

    async fn delete_many(&self, ctx: &CallContext<'_>, keys: &[&str]) -> cache_core::Result<u64> {
        self.inner.delete_many(ctx, keys).await
    }

    async fn invalidate(
        &self,
        ctx: &CallContext<'_>,
        pattern: &Pattern,
    ) -> cache_core::Result<u64> {
        self.inner.invalidate(ctx, pattern).await
    }

    fn stats(&self) -> LayerStats {
        self.inner.stats()
    }

    fn is_shared(&self) -> bool {
        self.inner.is_shared()
    }
}

fn memory(name: &str, clock: &Arc<ManualClock>) -> MemoryLayer {
    MemoryLayer::builder()
        .name(name)
        .clock(clock.clone())
        .sweep_interval(None)
        .build()
        .unwrap()
}

/// An L1 and an L2, both counted, on one manual clock; and the L2 alone
/// as a cache of its own, to put values in L2 only.
struct Stack {
    cache: TieredCache,
    l1: Arc<Counting>,
    l2: Arc<Counting>,
    l2_only: TieredCache,
}

fn stack() -> Stack {
    let clock = ManualClock::shared();
    let l2_memory = memory("l2", &clock);
    let l1 = Counting::new(memory("l1", &clock));
    let l2 = Counting::new(l2_memory.clone());
    let cache = TieredCache::builder()
        .tier(Tier::shared(l1.clone()))
        .tier(Tier::shared(l2.clone()))
        .clock(clock.clone())
        .build()
        .unwrap();
    let l2_only = TieredCache::builder()
        .layer(l2_memory)
        .clock(clock)
        .build()
        .unwrap();
    Stack {
        cache,
        l1,
        l2,
        l2_only,
    }
}

fn one_tier() -> TieredCache {
    TieredCache::builder()
        .layer(MemoryLayer::new())
        .build()
        .unwrap()
}

/// The loader's answer for `keys`: `value:<key>` for each key not in `absent`.
fn answer(keys: &[String], absent: &[&str]) -> HashMap<String, String> {
    keys.iter()
        .filter(|key| !absent.contains(&key.as_str()))
        .map(|key| (key.clone(), format!("value:{key}")))
        .collect()
}

fn value(key: &str) -> Option<String> {
    Some(format!("value:{key}"))
}

/// The values of a batch call, failing the test on any error.
fn values(results: Vec<cache_tiered::Result<Option<String>>>) -> Vec<Option<String>> {
    results.into_iter().map(|result| result.unwrap()).collect()
}

/// The overall counters a test checks: misses, loads, load errors, coalesced.
fn loads(stats: &TieredStats) -> (u64, u64, u64, u64) {
    (
        stats.misses,
        stats.loads,
        stats.load_errors,
        stats.coalesced,
    )
}

/// Yields until `cache` has counted `misses` misses (each caller has then
/// joined its flights).
async fn until_missed(cache: &TieredCache, misses: u64) {
    while cache.stats().misses < misses {
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn one_loader_call_for_every_missing_key_one_read_and_one_write_per_tier() {
    let Stack {
        cache,
        l1,
        l2,
        l2_only,
    } = stack();
    cache.set("both", &"value:both", TTL).await.unwrap();
    l2_only.set("l2", &"value:l2", TTL).await.unwrap();
    let before = (l1.calls(), l2.calls());

    let calls = AtomicUsize::new(0);
    let keys = ["both", "l2", "a", "b", "gone"];
    let results = cache
        .get_or_compute_many(&keys, TTL, |missing: Vec<String>| {
            calls.fetch_add(1, Ordering::SeqCst);
            assert_eq!(missing, ["a", "b", "gone"], "the missing keys, in order");
            async move { Ok::<_, std::io::Error>(answer(&missing, &["gone"])) }
        })
        .await;
    assert_eq!(
        values(results),
        [value("both"), value("l2"), value("a"), value("b"), None]
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    // L1: one read of all five keys, then one write for the fill of "l2"
    // and one for the loaded values; L2: one read of the four L1 lacked,
    // one write of the loaded values.
    let (l1_before, l2_before) = before;
    assert_eq!(l1.calls(), (l1_before.0 + 1, l1_before.1 + 2));
    assert_eq!(l2.calls(), (l2_before.0 + 1, l2_before.1 + 1));
    assert_eq!(l1.reads().last().unwrap(), &keys);
    assert_eq!(l2.reads().last().unwrap(), &["l2", "a", "b", "gone"]);

    // Exact: a hit or a miss per key; one load per key the loader was
    // asked for; a fill per value written into a tier.
    let stats = cache.stats();
    assert_eq!(
        (stats.hits, stats.tiers[0].hits, stats.tiers[1].hits),
        (2, 1, 1)
    );
    assert_eq!((stats.tiers[0].misses, stats.tiers[1].misses), (4, 3));
    assert_eq!(loads(&stats), (3, 3, 0, 0));
    assert_eq!(stats.load_latency.count, 1, "one loader call");
    assert_eq!((stats.tiers[0].fills, stats.tiers[1].fills), (3, 2));
    assert_eq!(
        stats.tiers[0].fills_discarded + stats.tiers[1].fills_discarded,
        0
    );

    // Everything loaded is cached, in both tiers; the absent key is not.
    assert_eq!(l2_only.get::<String>("a").await.unwrap(), value("a"));
    let results = cache
        .get_or_compute_many(&keys, TTL, |missing: Vec<String>| async move {
            assert_eq!(missing, ["gone"], "only what the loader did not return");
            Ok::<_, std::io::Error>(Vec::<(String, String)>::new())
        })
        .await;
    assert_eq!(
        values(results)[..4],
        [value("both"), value("l2"), value("a"), value("b")]
    );
    let stats = cache.stats();
    assert_eq!(stats.hits, 2 + 4);
    assert_eq!(loads(&stats), (4, 4, 0, 0));
    assert_eq!(stats.load_latency.count, 2);
}

#[tokio::test]
async fn nothing_missing_no_loader_call() {
    let cache = one_tier();
    cache.set("a", &"value:a", TTL).await.unwrap();
    let results = cache
        .get_or_compute_many(&["a", "a"], TTL, |_: Vec<String>| async {
            panic!("no key is missing");
            #[allow(unreachable_code)]
            Ok::<HashMap<String, String>, std::io::Error>(HashMap::new())
        })
        .await;
    assert_eq!(values(results), [value("a"), value("a")]);
    let empty: Vec<cache_tiered::Result<Option<String>>> = cache
        .get_or_compute_many(&[], TTL, |_: Vec<String>| async {
            Ok::<HashMap<String, String>, std::io::Error>(HashMap::new())
        })
        .await;
    assert!(empty.is_empty());
}

#[tokio::test]
async fn duplicate_keys_are_read_and_loaded_once_and_answered_at_each_place() {
    let cache = one_tier();
    let results = cache
        .get_or_compute_many(&["a", "b", "a"], TTL, |missing: Vec<String>| async move {
            assert_eq!(missing, ["a", "b"]);
            Ok::<_, std::io::Error>(answer(&missing, &[]))
        })
        .await;
    assert_eq!(values(results), [value("a"), value("b"), value("a")]);
    assert_eq!(loads(&cache.stats()), (2, 2, 0, 0));
}

#[tokio::test]
async fn single_callers_wait_on_the_keys_a_batch_leads() {
    let cache = one_tier();
    let release = Arc::new(Notify::new());
    let batch = tokio::spawn({
        let (cache, release) = (cache.clone(), release.clone());
        async move {
            cache
                .get_or_compute_many(&["a", "b"], TTL, |missing: Vec<String>| async move {
                    release.notified().await;
                    Ok::<_, std::io::Error>(answer(&missing, &[]))
                })
                .await
        }
    });
    until_missed(&cache, 2).await;
    let single = tokio::spawn({
        let cache = cache.clone();
        async move {
            cache
                .get_or_compute("b", TTL, || async {
                    Ok::<_, std::io::Error>("the single caller's own".to_owned())
                })
                .await
        }
    });
    until_missed(&cache, 3).await;
    release.notify_one();
    assert_eq!(values(batch.await.unwrap()), [value("a"), value("b")]);
    assert_eq!(
        single.await.unwrap().unwrap(),
        "value:b",
        "waited, not loaded"
    );
    assert_eq!(loads(&cache.stats()), (3, 2, 0, 1));
}

#[tokio::test]
async fn a_batch_waits_on_keys_others_load_and_loads_only_the_rest() {
    let cache = one_tier();
    // A single caller leads "a", a first batch leads "b" and "c".
    let release_single = Arc::new(Notify::new());
    let single = tokio::spawn({
        let (cache, release) = (cache.clone(), release_single.clone());
        async move {
            cache
                .get_or_compute("a", TTL, || async move {
                    release.notified().await;
                    Ok::<_, std::io::Error>("value:a".to_owned())
                })
                .await
        }
    });
    until_missed(&cache, 1).await;
    let release_first = Arc::new(Notify::new());
    let first = tokio::spawn({
        let (cache, release) = (cache.clone(), release_first.clone());
        async move {
            cache
                .get_or_compute_many(&["b", "c"], TTL, |missing: Vec<String>| async move {
                    assert_eq!(missing, ["b", "c"]);
                    release.notified().await;
                    Ok::<_, std::io::Error>(answer(&missing, &[]))
                })
                .await
        }
    });
    until_missed(&cache, 3).await;
    // The second batch wants all of them and one more: it waits on "a",
    // "b" and "c", then asks its loader for "d" alone.
    let asked = Arc::new(Mutex::new(Vec::new()));
    let second = tokio::spawn({
        let (cache, asked) = (cache.clone(), asked.clone());
        async move {
            cache
                .get_or_compute_many(&["a", "b", "c", "d"], TTL, |missing: Vec<String>| {
                    asked.lock().unwrap().push(missing.clone());
                    async move { Ok::<_, std::io::Error>(answer(&missing, &[])) }
                })
                .await
        }
    });
    until_missed(&cache, 7).await;
    // Released in the opposite order of their start: the second batch
    // waits for both, whatever the order.
    release_first.notify_one();
    release_single.notify_one();
    let all = [value("a"), value("b"), value("c"), value("d")];
    assert_eq!(values(second.await.unwrap()), all);
    assert_eq!(values(first.await.unwrap()), all[1..3]);
    assert_eq!(single.await.unwrap().unwrap(), "value:a");
    assert_eq!(*asked.lock().unwrap(), [vec!["d".to_owned()]]);
    // Seven misses: four loads by their leaders ("a", "b", "c", then "d")
    // and three answered by loads waited on.
    assert_eq!(loads(&cache.stats()), (7, 4, 0, 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_batches_and_single_callers_load_each_key_once() {
    // Many callers at once on two threads, no staging: whatever the
    // interleaving, each key is loaded once, nobody deadlocks, and the
    // stats add up.
    let cache = one_tier();
    let loaded: Arc<Mutex<Vec<String>>> = Arc::default();
    let keys: Vec<String> = (0..20).map(|n| format!("k{n}")).collect();
    let tasks: Vec<_> = (0..40)
        .map(|n| {
            let (cache, loaded, keys) = (cache.clone(), loaded.clone(), keys.clone());
            tokio::spawn(async move {
                if n % 4 == 0 {
                    let key = &keys[n % keys.len()];
                    let got = cache
                        .get_or_compute(key, TTL, || async {
                            loaded.lock().unwrap().push(key.clone());
                            tokio::task::yield_now().await;
                            Ok::<_, std::io::Error>(format!("value:{key}"))
                        })
                        .await
                        .unwrap();
                    assert_eq!(got, format!("value:{key}"));
                } else {
                    // A window of eight keys, overlapping the others'.
                    let window: Vec<&str> = (0..8)
                        .map(|i| keys[(n + i * 3) % keys.len()].as_str())
                        .collect();
                    let got = cache
                        .get_or_compute_many(&window, TTL, |missing: Vec<String>| {
                            loaded.lock().unwrap().extend(missing.iter().cloned());
                            async move {
                                tokio::task::yield_now().await;
                                Ok::<_, std::io::Error>(answer(&missing, &[]))
                            }
                        })
                        .await;
                    let want: Vec<Option<String>> = window.iter().map(|key| value(key)).collect();
                    assert_eq!(values(got), want);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let mut loaded = loaded.lock().unwrap().clone();
    let total = loaded.len();
    loaded.sort();
    loaded.dedup();
    assert_eq!(total, loaded.len(), "a key was loaded twice: {loaded:?}");
    let stats = cache.stats();
    assert_eq!(stats.loads, total as u64);
    assert_eq!(stats.misses, stats.loads + stats.coalesced, "{stats:?}");
}

#[tokio::test]
async fn a_loader_error_is_every_asked_keys_and_every_waiters_and_is_not_cached() {
    let cache = one_tier();
    cache.set("cached", &"value:cached", TTL).await.unwrap();
    let release = Arc::new(Notify::new());
    let batch = tokio::spawn({
        let (cache, release) = (cache.clone(), release.clone());
        async move {
            cache
                .get_or_compute_many(&["cached", "a", "b"], TTL, |_: Vec<String>| async move {
                    release.notified().await;
                    Err::<HashMap<String, String>, _>(std::io::Error::other("database down"))
                })
                .await
        }
    });
    until_missed(&cache, 2).await;
    let waiter = tokio::spawn({
        let cache = cache.clone();
        async move {
            cache
                .get_or_compute("a", TTL, || async {
                    Ok::<_, std::io::Error>("x".to_owned())
                })
                .await
        }
    });
    until_missed(&cache, 3).await;
    release.notify_one();
    let results = batch.await.unwrap();
    assert_eq!(
        results[0].as_ref().unwrap(),
        &value("cached"),
        "a hit is a hit"
    );
    for result in &results[1..] {
        let error = result.as_ref().unwrap_err();
        assert!(
            matches!(error, Error::Loader(e) if e.to_string() == "database down"),
            "{error}"
        );
    }
    let error = waiter.await.unwrap().unwrap_err();
    assert!(matches!(&error, Error::Loader(_)), "{error}");
    // One load per key asked, each failed; the waiter was answered by it.
    assert_eq!(loads(&cache.stats()), (3, 2, 2, 1));

    // Nothing cached: the next call asks again.
    let results = cache
        .get_or_compute_many(&["a", "b"], TTL, |missing: Vec<String>| async move {
            Ok::<_, std::io::Error>(answer(&missing, &[]))
        })
        .await;
    assert_eq!(values(results), [value("a"), value("b")]);
}

#[tokio::test(start_paused = true)]
async fn a_loader_past_the_hard_timeout_fails_its_keys() {
    let cache = TieredCache::builder()
        .layer(MemoryLayer::new())
        .hard_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    // Paused time: the runtime jumps to the timeout as soon as all is idle.
    let results = cache
        .get_or_compute_many(&["a"], TTL, |_: Vec<String>| async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok::<HashMap<String, String>, std::io::Error>(HashMap::new())
        })
        .await;
    assert!(
        matches!(results[0], Err(Error::LoaderTimeout(_))),
        "{results:?}"
    );
    assert_eq!(loads(&cache.stats()), (1, 1, 1, 0));
}

#[tokio::test]
async fn a_waiter_on_a_key_the_loader_did_not_return_runs_its_own_loader() {
    let cache = one_tier();
    let release = Arc::new(Notify::new());
    let batch = tokio::spawn({
        let (cache, release) = (cache.clone(), release.clone());
        async move {
            cache
                .get_or_compute_many(
                    &["found", "absent"],
                    TTL,
                    |missing: Vec<String>| async move {
                        release.notified().await;
                        Ok::<_, std::io::Error>(answer(&missing, &["absent"]))
                    },
                )
                .await
        }
    });
    until_missed(&cache, 2).await;
    let spawn_single = |key: &'static str| {
        let cache = cache.clone();
        tokio::spawn(async move {
            cache
                .get_or_compute(key, TTL, || async move {
                    Ok::<_, std::io::Error>(format!("own:{key}"))
                })
                .await
        })
    };
    let (on_found, on_absent) = (spawn_single("found"), spawn_single("absent"));
    let batch_waiter = tokio::spawn({
        let cache = cache.clone();
        async move {
            cache
                .get_or_compute_many(&["absent"], TTL, |_: Vec<String>| async {
                    panic!("the key was waited on, not loaded again");
                    #[allow(unreachable_code)]
                    Ok::<HashMap<String, String>, std::io::Error>(HashMap::new())
                })
                .await
        }
    });
    until_missed(&cache, 5).await;
    release.notify_one();
    assert_eq!(values(batch.await.unwrap()), [value("found"), None]);
    assert_eq!(on_found.await.unwrap().unwrap(), "value:found");
    assert_eq!(
        values(batch_waiter.await.unwrap()),
        [None],
        "absent for it too"
    );
    assert_eq!(on_absent.await.unwrap().unwrap(), "own:absent");
    // Five misses: two loads by the batch, one by the single caller of
    // the absent key; the other two answered by the batch's load.
    assert_eq!(loads(&cache.stats()), (5, 3, 0, 2));
    assert_eq!(
        cache.get::<String>("absent").await.unwrap().as_deref(),
        Some("own:absent"),
        "the single caller's own value was cached"
    );
}

#[tokio::test]
async fn a_panicking_loader_fails_the_waiters_and_goes_on_in_its_caller() {
    let cache = one_tier();
    let release = Arc::new(Notify::new());
    let batch = tokio::spawn({
        let (cache, release) = (cache.clone(), release.clone());
        async move {
            cache
                .get_or_compute_many(&["a"], TTL, |_: Vec<String>| async move {
                    release.notified().await;
                    panic!("loader bug");
                    #[allow(unreachable_code)]
                    Ok::<HashMap<String, String>, std::io::Error>(HashMap::new())
                })
                .await
        }
    });
    until_missed(&cache, 1).await;
    let waiter = tokio::spawn({
        let cache = cache.clone();
        async move {
            cache
                .get_or_compute("a", TTL, || async {
                    Ok::<_, std::io::Error>("x".to_owned())
                })
                .await
        }
    });
    until_missed(&cache, 2).await;
    release.notify_one();
    assert!(batch.await.unwrap_err().is_panic());
    assert!(matches!(waiter.await.unwrap(), Err(Error::LoaderPanicked)));
}

#[tokio::test]
async fn a_cancelled_batch_lets_its_waiters_load() {
    let cache = one_tier();
    let batch = tokio::spawn({
        let cache = cache.clone();
        async move {
            cache
                .get_or_compute_many(&["a"], TTL, |_: Vec<String>| async {
                    std::future::pending::<Result<HashMap<String, String>, std::io::Error>>().await
                })
                .await
        }
    });
    until_missed(&cache, 1).await;
    let waiter = tokio::spawn({
        let cache = cache.clone();
        async move {
            cache
                .get_or_compute("a", TTL, || async {
                    Ok::<_, std::io::Error>("own".to_owned())
                })
                .await
        }
    });
    until_missed(&cache, 2).await;
    batch.abort();
    assert!(batch.await.unwrap_err().is_cancelled());
    assert_eq!(waiter.await.unwrap().unwrap(), "own");
}

#[tokio::test]
async fn a_key_deleted_during_the_load_is_returned_but_not_cached() {
    let cache = one_tier();
    let release = Arc::new(Notify::new());
    let batch = tokio::spawn({
        let (cache, release) = (cache.clone(), release.clone());
        async move {
            cache
                .get_or_compute_many(&["a", "b"], TTL, |missing: Vec<String>| async move {
                    release.notified().await;
                    Ok::<_, std::io::Error>(answer(&missing, &[]))
                })
                .await
        }
    });
    until_missed(&cache, 2).await;
    // The database changed "a" and the service deleted its key meanwhile:
    // the value loaded before may be stale.
    cache.delete("a").await.unwrap();
    release.notify_one();
    assert_eq!(values(batch.await.unwrap()), [value("a"), value("b")]);
    assert_eq!(cache.get::<String>("a").await.unwrap(), None, "not cached");
    assert_eq!(cache.get::<String>("b").await.unwrap(), value("b"));
}

#[tokio::test]
async fn a_load_that_lands_between_the_read_and_the_join_is_found_not_repeated() {
    // The batch's read of the top tier is held after it missed; meanwhile
    // a single caller loads the key and ends its flight. The batch then
    // leads the key but finds it in the top tier: no loader call.
    let layer = Arc::new(HoldableLayer::new(Arc::new(MemoryLayer::new())));
    let cache = TieredCache::builder()
        .tier(Tier::shared(layer.clone()))
        .build()
        .unwrap();
    layer.hold_next_get();
    let batch = tokio::spawn({
        let cache = cache.clone();
        async move {
            cache
                .get_or_compute_many(&["a"], TTL, |_: Vec<String>| async {
                    panic!("the single caller's value was there");
                    #[allow(unreachable_code)]
                    Ok::<HashMap<String, String>, std::io::Error>(HashMap::new())
                })
                .await
        }
    });
    while layer.held() == 0 {
        tokio::task::yield_now().await;
    }
    let single = cache
        .get_or_compute("a", TTL, || async {
            Ok::<_, std::io::Error>("value:a".to_owned())
        })
        .await
        .unwrap();
    assert_eq!(single, "value:a");
    layer.release();
    assert_eq!(values(batch.await.unwrap()), [value("a")]);
    assert_eq!(loads(&cache.stats()), (2, 1, 0, 1));
}
