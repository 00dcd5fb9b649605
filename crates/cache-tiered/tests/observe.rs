//! What an operator sees: spans and their fields (no raw key by default),
//! latencies, errors by class, health, removal timings, and stats off.

use std::sync::Arc;
use std::time::Duration;

use cache_breaker::CircuitBreaker;
use cache_core::{CircuitState, ErrorClass, FailClosed};
use cache_memory::MemoryLayer;
use cache_test_support::layers::{Fault, FaultyLayer};
use cache_test_support::trace::Capture;
use cache_tiered::{Status, Tier, TieredCache};

const TTL: Duration = Duration::from_secs(60);
/// A key holding what a key should never show in a log.
const SECRET_KEY: &str = "user:alice@example.com";

async fn load(value: u32) -> Result<u32, std::io::Error> {
    Ok(value)
}

#[tokio::test]
async fn spans_carry_cache_tier_and_outcome_and_no_raw_key_by_default() {
    let capture = Capture::default();
    let _guard = tracing::subscriber::set_default(capture.clone());
    let cache = TieredCache::builder()
        .name("offers")
        .layer(MemoryLayer::new())
        .build()
        .unwrap();

    assert_eq!(cache.get::<u32>(SECRET_KEY).await.unwrap(), None);
    let loaded: u32 = cache
        .get_or_compute(SECRET_KEY, TTL, || load(7))
        .await
        .unwrap();
    assert_eq!(loaded, 7);
    let again: u32 = cache
        .get_or_compute(SECRET_KEY, TTL, || load(8))
        .await
        .unwrap();
    assert_eq!(again, 7);
    cache.set(SECRET_KEY, &9u32, TTL).await.unwrap();
    cache.delete(SECRET_KEY).await.unwrap();

    let get = &capture.spans_named("cache.get")[0];
    assert_eq!(get.field("cache"), Some("offers"));
    assert_eq!(get.field("outcome"), Some("miss"));
    let key = get.field("key").expect("a key field");
    assert!(key.starts_with('#') && key.len() == 17, "a hash: {key}");

    let computes = capture.spans_named("cache.get_or_compute");
    assert_eq!(computes.len(), 2, "{computes:#?}");
    assert_eq!(computes[0].field("outcome"), Some("loaded"));
    assert_eq!(
        computes[0].field("key"),
        Some(key),
        "the same hash for the same key"
    );
    assert_eq!(computes[1].field("outcome"), Some("hit"));
    assert_eq!(computes[1].field("tier"), Some("memory"));

    let loads = capture.spans_named("cache.load");
    assert_eq!(loads.len(), 1, "one load: {loads:#?}");
    assert_eq!(loads[0].parent.as_deref(), Some("cache.get_or_compute"));
    assert_eq!(loads[0].field("outcome"), Some("ok"));

    let set = &capture.spans_named("cache.set")[0];
    assert_eq!(set.field("outcome"), Some("ok"));
    let remove = &capture.spans_named("cache.remove")[0];
    assert_eq!(remove.field("removed"), Some("1"));
    assert_eq!(remove.field("outcome"), Some("complete"));
    assert!(remove.field("target").unwrap().starts_with("key #"));

    for span in capture.spans() {
        for (name, value) in &span.fields {
            assert!(
                !value.contains("alice"),
                "{}.{name} shows the raw key: {value}",
                span.name
            );
        }
    }
}

#[tokio::test]
async fn trace_keys_shows_keys_as_given() {
    let capture = Capture::default();
    let _guard = tracing::subscriber::set_default(capture.clone());
    let cache = TieredCache::builder()
        .layer(MemoryLayer::new())
        .trace_keys(true)
        .build()
        .unwrap();
    cache.get::<u32>(SECRET_KEY).await.unwrap();
    let get = &capture.spans_named("cache.get")[0];
    assert_eq!(get.field("key"), Some(SECRET_KEY));
    assert_eq!(get.field("cache"), Some("cache"), "the default name");
}

#[tokio::test]
async fn a_failing_loader_and_a_lower_tier_hit_show_in_the_spans() {
    let capture = Capture::default();
    let _guard = tracing::subscriber::set_default(capture.clone());
    let l2 = Arc::new(MemoryLayer::new());
    let cache = TieredCache::builder()
        .layer(MemoryLayer::builder().name("l1").build().unwrap())
        .tier(Tier::shared(l2.clone()))
        .build()
        .unwrap();
    let failed = cache
        .get_or_compute("k", TTL, || async {
            Err::<u32, _>(std::io::Error::other("database down"))
        })
        .await;
    assert!(failed.is_err());
    assert_eq!(
        capture.spans_named("cache.get_or_compute")[0].field("outcome"),
        Some("error")
    );
    assert_eq!(
        capture.spans_named("cache.load")[0].field("outcome"),
        Some("error")
    );

    // A value only in L2: the read's span names the tier that answered.
    let only_below = TieredCache::builder()
        .tier(Tier::shared(l2.clone()))
        .build()
        .unwrap();
    only_below.set("k", &5u32, TTL).await.unwrap();
    assert_eq!(cache.get::<u32>("k").await.unwrap(), Some(5));
    let get = capture
        .spans_named("cache.get")
        .pop()
        .unwrap_or_else(|| panic!("{:#?}", capture.spans()));
    assert_eq!(get.field("tier"), Some("memory"), "{get:?}");
    assert_eq!(get.field("outcome"), Some("hit"));
}

#[tokio::test(start_paused = true)]
async fn latencies_are_recorded_per_tier_operation_and_for_loaders() {
    // A tier with a timeout is called through the async path, which is timed.
    let cache = TieredCache::builder()
        .tier(Tier::new(MemoryLayer::new()).timeout(Duration::from_secs(1)))
        .build()
        .unwrap();
    for i in 0..10u32 {
        let key = format!("k{i}");
        let _: u32 = cache
            .get_or_compute(&key, TTL, || async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                Ok::<_, std::io::Error>(i)
            })
            .await
            .unwrap();
    }
    cache.delete("k0").await.unwrap();
    let stats = cache.stats();
    let latency = stats.tiers[0].latency;
    // Every call counts: each miss, and each leader's look again before it loads.
    assert_eq!(latency.get.count, 20, "{latency:?}");
    assert_eq!(latency.set.count, 10, "{latency:?}");
    assert_eq!(latency.remove.count, 1, "{latency:?}");
    assert_eq!(stats.load_latency.count, 10);
    // Paused time: every load took exactly 100 ms on the tokio clock.
    let p50 = stats.load_latency.p50;
    assert!(
        (Duration::from_millis(100)..=Duration::from_millis(104)).contains(&p50),
        "{}",
        stats.load_latency
    );
    assert_eq!(stats.load_latency.max, Duration::from_millis(100));
}

#[tokio::test]
async fn with_stats_off_values_are_right_and_counters_read_zero() {
    let cache = TieredCache::builder()
        .layer(MemoryLayer::new())
        .stats(false)
        .build()
        .unwrap();
    let v: u32 = cache.get_or_compute("k", TTL, || load(3)).await.unwrap();
    assert_eq!(v, 3);
    assert_eq!(cache.get::<u32>("k").await.unwrap(), Some(3));
    let stats = cache.stats();
    assert_eq!((stats.hits, stats.misses, stats.loads), (0, 0, 0));
    assert_eq!(stats.tiers[0].hits, 0);
    assert_eq!(stats.load_latency.count, 0);
}

#[tokio::test]
async fn errors_are_counted_by_class_with_the_last_one_kept() {
    let l2 = Arc::new(FaultyLayer::new(Arc::new(MemoryLayer::new())));
    let cache = TieredCache::builder()
        .layer(MemoryLayer::new())
        .tier(Tier::shared(l2.clone()))
        .build()
        .unwrap();
    l2.set_fault(Fault::Fail);
    cache.get::<u32>("a").await.unwrap();
    l2.set_fault(Fault::FailWrites(ErrorClass::OutOfMemory));
    // Fails open: L1 keeps the value for the degraded TTL.
    cache.set("b", &1u32, TTL).await.unwrap();
    let tier = &cache.stats().tiers[1];
    assert_eq!(tier.errors, 2);
    assert_eq!(tier.error_classes.get(ErrorClass::Unavailable), 1);
    assert_eq!(tier.error_classes.get(ErrorClass::OutOfMemory), 1);
    let last = tier.last_error.as_ref().expect("kept");
    assert_eq!(last.class, ErrorClass::OutOfMemory);
    assert!(last.message.contains("injected failure"), "{last}");
}

#[tokio::test]
async fn health_reports_each_tier_and_what_a_failure_means_for_the_cache() {
    let l2 = Arc::new(FaultyLayer::new(Arc::new(MemoryLayer::new())));
    let cache = TieredCache::builder()
        .layer(MemoryLayer::new())
        .tier(Tier::shared(l2.clone()))
        .health_timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let health = cache.health().await;
    assert_eq!(health.status, Status::Up, "{health}");
    assert!(health.tiers.iter().all(|t| t.ping.is_some()), "{health}");

    // L2 fails open: the cache still answers, degraded.
    l2.set_fault(Fault::Fail);
    let health = cache.health().await;
    assert_eq!(health.status, Status::Degraded, "{health}");
    assert!(health.is_ready());
    assert_eq!(health.tiers[1].status, Status::Down);
    let error = health.tiers[1].error.as_ref().expect("why");
    assert_eq!(error.class, ErrorClass::Unavailable);

    // A hung tier: the ping gives up at the health timeout.
    l2.set_fault(Fault::Hang);
    let health = cache.health().await;
    assert_eq!(
        health.tiers[1].error.as_ref().unwrap().class,
        ErrorClass::Timeout
    );

    // A tier that fails closed takes the cache down.
    let closed = Arc::new(FaultyLayer::new(Arc::new(MemoryLayer::new())));
    let strict = TieredCache::builder()
        .tier(Tier::shared(closed.clone()).policy(FailClosed))
        .build()
        .unwrap();
    closed.set_fault(Fault::Fail);
    let health = strict.health().await;
    assert_eq!(health.status, Status::Down, "{health}");
    assert!(!health.is_ready());
}

#[tokio::test]
async fn an_open_breaker_shows_in_health_and_stats_with_its_cause() {
    let l2 = Arc::new(FaultyLayer::new(Arc::new(MemoryLayer::new())));
    let breaker = CircuitBreaker::builder()
        .name("l2")
        .failure_threshold(2)
        .recovery_timeout(Duration::from_secs(3600))
        .build_for_tier()
        .unwrap();
    let cache = TieredCache::builder()
        .layer(MemoryLayer::new())
        .tier(Tier::shared(l2.clone()).policy(breaker))
        .build()
        .unwrap();
    l2.set_fault(Fault::Fail);
    for key in ["a", "b", "c"] {
        cache.get::<u32>(key).await.unwrap();
    }
    let stats = cache.stats();
    let reads = &stats.tiers[1].circuits[0];
    assert_eq!(reads.name, "l2/reads");
    assert_eq!(reads.state, CircuitState::Open);
    assert_eq!(reads.opened, 1);
    assert_eq!(reads.rejections, 1, "the third read was rejected");
    let cause = reads.last_error.as_ref().expect("why it opened");
    assert_eq!(cause.class, ErrorClass::Unavailable);
    assert_eq!(stats.tiers[1].rejected, 1);

    // The server is back, but the breaker still rejects: degraded.
    l2.set_fault(Fault::None);
    let health = cache.health().await;
    assert_eq!(health.tiers[1].status, Status::Degraded, "{health}");
    assert_eq!(health.status, Status::Degraded);
    assert!(health.to_string().contains("l2/reads open"), "{health}");
}

#[tokio::test]
async fn a_removal_reports_what_each_tier_removed_and_how_long_it_took() {
    let l2 = Arc::new(FaultyLayer::new(Arc::new(MemoryLayer::new())));
    let cache = TieredCache::builder()
        .layer(MemoryLayer::builder().name("l1").build().unwrap())
        .tier(Tier::shared(l2.clone()))
        .build()
        .unwrap();
    cache.set("k", &1u32, TTL).await.unwrap();
    let removed = cache.delete("k").await.unwrap();
    let names: Vec<_> = removed.tiers.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["l1", "memory"]);
    assert!(
        removed.tiers.iter().all(|t| t.removed == Some(1)),
        "{removed}"
    );
    assert!(removed.elapsed >= removed.tiers.iter().map(|t| t.elapsed).max().unwrap());

    l2.set_fault(Fault::Fail);
    let removed = cache.delete("k").await.unwrap();
    assert_eq!(removed.skipped().collect::<Vec<_>>(), ["memory"]);
    assert!(
        removed.to_string().contains("memory: skipped after"),
        "{removed}"
    );
}
