//! get_or_compute: one loader call per key, shared failures, cancellation.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cache_core::ErrorClass;
use cache_memory::MemoryLayer;
use cache_test_support::layers::{Fault, FaultyLayer};
use cache_tiered::{Error, LoadError, Tier, TieredCache};
use tokio::sync::{Barrier, Notify};

const TTL: Duration = Duration::from_secs(300);

fn cache() -> TieredCache {
    TieredCache::builder()
        .layer(MemoryLayer::new())
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_misses_run_the_loader_once() {
    let cache = cache();
    let calls = Arc::new(AtomicUsize::new(0));
    let start = Arc::new(Barrier::new(1000));
    let answer = Arc::new(Notify::new());
    let tasks: Vec<_> = (0..1000)
        .map(|_| {
            let (cache, calls, start, answer) =
                (cache.clone(), calls.clone(), start.clone(), answer.clone());
            tokio::spawn(async move {
                start.wait().await;
                cache
                    .get_or_compute("rating:offer:1", TTL, || async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        // A slow back end: it answers once everybody has missed.
                        answer.notified().await;
                        Ok::<_, std::io::Error>(4.5f64)
                    })
                    .await
            })
        })
        .collect();
    while cache.stats().misses < 1000 {
        tokio::task::yield_now().await;
    }
    answer.notify_one();
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap(), 4.5);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let stats = cache.stats();
    assert_eq!(stats.loads, 1);
    assert_eq!(stats.hits + stats.coalesced, 999, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loader_error_reaches_every_waiter_and_is_not_cached() {
    let cache = cache();
    let calls = Arc::new(AtomicUsize::new(0));
    let release = Arc::new(Notify::new());
    let waiters: Vec<_> = (0..50)
        .map(|_| {
            let (cache, calls, release) = (cache.clone(), calls.clone(), release.clone());
            tokio::spawn(async move {
                cache
                    .get_or_compute("k", TTL, || async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        release.notified().await;
                        Err::<u32, _>(std::io::Error::other("database down"))
                    })
                    .await
            })
        })
        .collect();
    // Let every task join the flight before the loader fails.
    while cache.stats().misses < 50 {
        tokio::task::yield_now().await;
    }
    release.notify_one();
    for waiter in waiters {
        let error = waiter.await.unwrap().unwrap_err();
        assert!(
            matches!(&error, Error::Loader(e) if e.to_string() == "database down"),
            "{error}"
        );
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // Not cached: the next call loads again.
    let value = cache
        .get_or_compute("k", TTL, || async { Ok::<_, std::io::Error>(3u32) })
        .await
        .unwrap();
    assert_eq!(value, 3);
    assert_eq!(cache.stats().load_errors, 1);
}

#[derive(Debug, PartialEq, thiserror::Error)]
#[error("offer {0} not found")]
struct NotFound(u32);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_typed_loader_error_reaches_every_waiter_as_one_arc() {
    let cache = cache();
    let release = Arc::new(Notify::new());
    let waiters: Vec<_> = (0..20)
        .map(|_| {
            let (cache, release) = (cache.clone(), release.clone());
            tokio::spawn(async move {
                cache
                    .try_get_or_compute("offer:9", TTL, || async move {
                        release.notified().await;
                        Err::<u32, _>(NotFound(9))
                    })
                    .await
            })
        })
        .collect();
    while cache.stats().misses < 20 {
        tokio::task::yield_now().await;
    }
    release.notify_one();
    let mut errors = Vec::new();
    for waiter in waiters {
        match waiter.await.unwrap() {
            Err(LoadError::Loader(error)) => errors.push(error),
            other => panic!("expected the loader's error, got {other:?}"),
        }
    }
    assert_eq!(*errors[0], NotFound(9));
    assert!(errors.iter().all(|error| Arc::ptr_eq(error, &errors[0])));
    assert_eq!(cache.stats().loads, 1);

    // A cache failure is not a loader error: a tier that refuses the value.
    let faulty = Arc::new(FaultyLayer::new(Arc::new(MemoryLayer::new())));
    faulty.set_fault(Fault::FailWrites(ErrorClass::RefusedInput));
    let refusing = TieredCache::builder()
        .tier(Tier::shared(faulty))
        .build()
        .unwrap();
    let loaded = refusing
        .try_get_or_compute("offer:9", TTL, || async { Ok::<_, NotFound>(9u32) })
        .await;
    assert!(
        matches!(&loaded, Err(LoadError::Cache(error)) if error.is_refusal()),
        "{loaded:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_the_loading_task_does_not_hang_the_waiters() {
    let cache = cache();
    let calls = Arc::new(AtomicUsize::new(0));
    let leader_started = Arc::new(Notify::new());

    let leader = {
        let (cache, calls, started) = (cache.clone(), calls.clone(), leader_started.clone());
        tokio::spawn(async move {
            cache
                .get_or_compute("k", TTL, || async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    started.notify_one();
                    std::future::pending::<Result<u32, std::io::Error>>().await
                })
                .await
        })
    };
    leader_started.notified().await;
    let waiters: Vec<_> = (0..20)
        .map(|_| {
            let (cache, calls) = (cache.clone(), calls.clone());
            tokio::spawn(async move {
                cache
                    .get_or_compute("k", TTL, || async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        Ok::<_, std::io::Error>(9u32)
                    })
                    .await
            })
        })
        .collect();
    while cache.stats().misses < 21 {
        tokio::task::yield_now().await;
    }
    leader.abort();
    assert!(leader.await.unwrap_err().is_cancelled());
    let all = tokio::time::timeout(Duration::from_secs(10), futures::future::join_all(waiters))
        .await
        .expect("waiters hung after the leader was cancelled");
    for result in all {
        assert_eq!(result.unwrap().unwrap(), 9);
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "the cancelled load and one takeover"
    );
}

#[tokio::test(start_paused = true)]
async fn a_hung_loader_fails_after_the_loader_timeout() {
    let cache = TieredCache::builder()
        .layer(MemoryLayer::new())
        .hard_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let error = cache
        .get_or_compute("k", TTL, || {
            std::future::pending::<Result<u32, std::io::Error>>()
        })
        .await
        .unwrap_err();
    assert!(matches!(error, Error::LoaderTimeout(d) if d == Duration::from_secs(2)));
    assert!(error.is_loader());
}

#[tokio::test]
async fn a_hit_does_not_call_the_loader() {
    let cache = cache();
    cache.set("k", &"cached".to_owned(), TTL).await.unwrap();
    let value: String = cache
        .get_or_compute("k", TTL, || async {
            panic!("the loader ran on a hit") as Result<String, std::io::Error>
        })
        .await
        .unwrap();
    assert_eq!(value, "cached");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_after_a_delete_never_gets_a_load_from_before_it() {
    let cache = cache();
    let version = Arc::new(AtomicUsize::new(1));
    let (started, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    // Task 1's loader reads version 1, then is slow.
    let first = tokio::spawn({
        let (cache, version, started, release) = (
            cache.clone(),
            version.clone(),
            started.clone(),
            release.clone(),
        );
        async move {
            cache
                .get_or_compute("k", TTL, || async move {
                    let read = version.load(Ordering::SeqCst);
                    started.notify_one();
                    release.notified().await;
                    Ok::<_, std::io::Error>(read)
                })
                .await
        }
    });
    started.notified().await;
    // The data becomes version 2, then the key is deleted.
    version.store(2, Ordering::SeqCst);
    cache.delete("k").await.unwrap();
    // A call that starts now must not be answered by task 1's load.
    let second = cache.get_or_compute("k", TTL, || async {
        Ok::<_, std::io::Error>(version.load(Ordering::SeqCst))
    });
    let second = tokio::time::timeout(Duration::from_secs(10), second)
        .await
        .expect("not stuck behind the load from before the delete");
    assert_eq!(second.unwrap(), 2);
    release.notify_one();
    assert_eq!(first.await.unwrap().unwrap(), 1, "its own, older read");
    assert_eq!(
        cache.get::<usize>("k").await.unwrap(),
        Some(2),
        "never cached"
    );
    assert_eq!(cache.stats().loads, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_loader_fails_its_waiters_at_once_and_runs_once() {
    let cache = cache();
    let calls = Arc::new(AtomicUsize::new(0));
    let (started, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let loader = {
        let (calls, started, release) = (calls.clone(), started.clone(), release.clone());
        move || async move {
            calls.fetch_add(1, Ordering::SeqCst);
            started.notify_one();
            release.notified().await;
            panic!("the back end's client panicked");
            #[allow(unreachable_code)]
            Ok::<u32, std::io::Error>(0)
        }
    };
    let leader = tokio::spawn({
        let (cache, loader) = (cache.clone(), loader.clone());
        async move { cache.get_or_compute("k", TTL, loader).await }
    });
    started.notified().await;
    let waiters: Vec<_> = (0..100)
        .map(|_| {
            let (cache, loader) = (cache.clone(), loader.clone());
            tokio::spawn(async move { cache.get_or_compute("k", TTL, loader).await })
        })
        .collect();
    while cache.stats().misses < 101 {
        tokio::task::yield_now().await;
    }
    release.notify_one();
    let panic = leader
        .await
        .expect_err("the panic goes on in the leader's task");
    assert!(panic.is_panic());
    for waiter in waiters {
        let outcome = tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .expect("waiters are not left hanging")
            .expect("waiters do not panic");
        assert!(matches!(outcome, Err(Error::LoaderPanicked)), "{outcome:?}");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1, "one loader call, not 101");
}
