//! get_or_compute: one loader call per key, shared failures, cancellation.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cache_memory::MemoryLayer;
use cache_tiered::{Error, TieredCache};
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
        .loader_timeout(Duration::from_secs(2))
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
