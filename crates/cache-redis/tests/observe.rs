//! Faults of a real `redis-server` as an operator sees them: each cause in
//! the stats (the tier's errors by class and last error, the node's, the
//! breaker's), at WARN, and in `health()`.
//!
//! - paused (SIGSTOP): timeouts;
//! - killed: unavailable;
//! - `--maxmemory` full: writes refused out of memory, reads fine;
//! - `--requirepass` and no password in the URL: auth.
//!
//! Each test runs on one thread, where its capturing subscriber is the
//! default: the calls, and the logs they make, happen there.
//!
//! Needs `redis-server` and `redis-cli` on PATH (`apt-get install -y redis-server`).

use std::time::Duration;

use cache_breaker::CircuitBreaker;
use cache_core::{CircuitState, ErrorClass};
use cache_memory::MemoryLayer;
use cache_redis::RedisLayer;
use cache_test_support::redis::RedisServer;
use cache_test_support::trace::Capture;
use cache_tiered::{Status, Tier, TierStats, TieredCache};

const TTL: Duration = Duration::from_secs(60);

/// L1 over a Redis L2 guarded by a breaker that opens after 3 failures and
/// stays open for the test.
async fn stack(url: &str) -> TieredCache {
    let redis = RedisLayer::builder(url)
        .name("redis")
        .namespace("observe")
        .timeout(Duration::from_millis(200))
        .connect_timeout(Duration::from_millis(200))
        .pool_min_idle(0) // builds without touching the server (auth case)
        .build()
        .await
        .expect("a lazy layer builds");
    let breaker = CircuitBreaker::builder()
        .name("redis")
        .failure_threshold(3)
        .recovery_timeout(Duration::from_secs(3600))
        .build_for_tier()
        .unwrap();
    TieredCache::builder()
        .name("observe")
        .tier(Tier::new(MemoryLayer::new()).ttl_cap(Duration::from_secs(1)))
        .tier(Tier::new(redis).policy(breaker))
        .health_timeout(Duration::from_millis(300))
        .build()
        .unwrap()
}

fn l2(cache: &TieredCache) -> TierStats {
    cache.stats().tiers.remove(1)
}

/// The WARN lines that mention `needle`.
fn warned(capture: &Capture, needle: &str) -> Vec<String> {
    (capture.warnings().into_iter())
        .filter(|line| line.contains(needle))
        .collect()
}

/// Reads `n` keys no tier holds: each reaches Redis (until the breaker opens).
async fn read_misses(cache: &TieredCache, n: usize) {
    for i in 0..n {
        let found = cache.get::<u32>(&format!("missing:{i}")).await;
        assert_eq!(found.unwrap(), None, "fails open");
    }
}

/// Checks what a failure of `class` left behind: the tier's counts and last
/// error, the node's count, the breaker open with it as cause, a WARN for
/// the tier and one for the breaker naming it, and health reporting it.
async fn assert_reported(cache: &TieredCache, capture: &Capture, class: ErrorClass) {
    let tier = l2(cache);
    assert!(
        tier.error_classes.get(class) >= 3,
        "{:?}",
        tier.error_classes
    );
    assert_eq!(tier.last_error.as_ref().map(|e| e.class), Some(class));
    let node = &tier.layer.nodes[0];
    assert_eq!(node.role, "primary");
    assert!(node.errors.get(class) >= 3, "the node's errors: {node:?}");

    let reads = &tier.circuits[0];
    assert_eq!(reads.state, CircuitState::Open, "{reads:?}");
    assert_eq!(reads.last_error.as_ref().map(|e| e.class), Some(class));

    let name = class.as_str();
    let tier_warnings = warned(capture, "tier failing");
    assert!(
        tier_warnings
            .iter()
            .any(|l| l.contains(&format!("class={name}"))),
        "the tier's WARN names the class: {tier_warnings:#?}"
    );
    let breaker_warnings = warned(capture, "circuit breaker opened");
    assert!(
        breaker_warnings
            .iter()
            .any(|l| l.contains(&format!("class={name}")) && l.contains("cause=")),
        "the breaker's WARN names the cause: {breaker_warnings:#?}"
    );

    let health = cache.health().await;
    assert_eq!(health.tiers[1].status, Status::Down, "{health}");
    assert_eq!(
        health.tiers[1].error.as_ref().map(|e| e.class),
        Some(class),
        "{health}"
    );
    assert_eq!(health.status, Status::Degraded, "L2 fails open: {health}");
    assert!(health.is_ready());
}

#[tokio::test]
async fn a_paused_server_shows_as_timeouts() {
    let capture = Capture::default();
    let _guard = tracing::subscriber::set_default(capture.clone());
    let mut server = RedisServer::start();
    let cache = stack(&server.url()).await;
    cache.set("k", &1u32, TTL).await.unwrap();
    let healthy = cache.health().await;
    assert_eq!(healthy.status, Status::Up, "{healthy}");
    assert!(healthy.tiers[1].ping.is_some());
    let tier = l2(&cache);
    assert!(
        tier.latency.set.count >= 1 && tier.layer.nodes[0].calls >= 1,
        "{tier:?}"
    );
    assert!(
        tier.layer.pool.as_ref().is_some_and(|pool| pool.open >= 1),
        "{tier:?}"
    );

    server.pause();
    read_misses(&cache, 4).await;
    assert_reported(&cache, &capture, ErrorClass::Timeout).await;
    server.resume();
}

#[tokio::test]
async fn a_killed_server_shows_as_unavailable() {
    let capture = Capture::default();
    let _guard = tracing::subscriber::set_default(capture.clone());
    let mut server = RedisServer::start();
    let cache = stack(&server.url()).await;
    cache.set("k", &1u32, TTL).await.unwrap();

    server.kill();
    read_misses(&cache, 4).await;
    assert_reported(&cache, &capture, ErrorClass::Unavailable).await;
    let message = &l2(&cache).last_error.unwrap().message;
    assert!(
        message.contains(&server.addr()),
        "names the node: {message}"
    );
}

#[tokio::test]
async fn a_full_server_refuses_writes_out_of_memory_and_still_serves_reads() {
    let capture = Capture::default();
    let _guard = tracing::subscriber::set_default(capture.clone());
    let server = RedisServer::start();
    let cache = stack(&server.url()).await;
    cache.set("kept", &1u32, TTL).await.unwrap();
    // A limit far below what the server uses: every write is refused.
    server.cli(&["CONFIG", "SET", "maxmemory", "1"]);
    server.cli(&["CONFIG", "SET", "maxmemory-policy", "noeviction"]);

    for i in 0..4u32 {
        // The L2 write fails open; L1 keeps the value for the degraded TTL.
        cache.set(&format!("new:{i}"), &i, TTL).await.unwrap();
    }
    let tier = l2(&cache);
    assert_eq!(
        tier.error_classes.get(ErrorClass::OutOfMemory),
        4,
        "{tier:?}"
    );
    assert_eq!(
        tier.last_error.as_ref().unwrap().class,
        ErrorClass::OutOfMemory
    );
    assert!(
        tier.last_error.as_ref().unwrap().message.contains("OOM"),
        "{tier:?}"
    );
    // A full server is not a dead one: the breaker stays closed, reads go on.
    assert!(
        tier.circuits
            .iter()
            .all(|c| c.state == CircuitState::Closed),
        "{tier:?}"
    );
    let redis_only = RedisLayer::builder(server.url())
        .namespace("observe")
        .build()
        .await
        .unwrap();
    let reader = TieredCache::builder().layer(redis_only).build().unwrap();
    assert_eq!(reader.get::<u32>("kept").await.unwrap(), Some(1));

    let lines = warned(&capture, "tier failing");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("class=out_of_memory") && l.contains("operation=write")),
        "{lines:#?}"
    );
    let health = cache.health().await;
    assert_eq!(
        health.tiers[1].status,
        Status::Degraded,
        "pings answer, writes fail: {health}"
    );
    assert_eq!(
        health.tiers[1].error.as_ref().map(|e| e.class),
        Some(ErrorClass::OutOfMemory)
    );
    assert_eq!(health.status, Status::Degraded);
}

#[tokio::test]
async fn a_missing_password_shows_as_auth_with_what_to_do() {
    let capture = Capture::default();
    let _guard = tracing::subscriber::set_default(capture.clone());
    let server = RedisServer::start_with(&["--requirepass", "secret"]);
    let cache = stack(&server.url()).await;

    read_misses(&cache, 4).await;
    assert_reported(&cache, &capture, ErrorClass::Auth).await;
    let message = l2(&cache).last_error.unwrap().message;
    assert!(message.contains("requires a password"), "{message}");
    assert!(!message.contains("secret"));

    // With the password, the same server is healthy.
    let url = server.url().replacen("redis://", "redis://:secret@", 1);
    let cache = stack(&url).await;
    cache.set("k", &1u32, TTL).await.unwrap();
    assert_eq!(cache.health().await.status, Status::Up);
}
