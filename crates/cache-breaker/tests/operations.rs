//! What a breaker-guarded tier does when only some calls fail: refused
//! input, writes refused by a full server or a dead primary, and outcomes
//! that arrive after the state they were admitted in.

use std::sync::Arc;
use std::time::Duration;

use cache_breaker::{CircuitBreaker, State, TierBreaker};
use cache_core::{
    Admission, CacheLayer, CallOutcome, ErrorClass, FailurePolicy, ManualClock, Operation,
};
use cache_memory::MemoryLayer;
use cache_redis::RedisLayer;
use cache_test_support::layers::{Fault, FaultyLayer};
use cache_test_support::redis::{RedisServer, ReplicatedRedis};
use cache_tiered::{Tier, TieredCache};

const TTL: Duration = Duration::from_secs(300);

fn admit(policy: &dyn FailurePolicy, operation: Operation) -> cache_core::Ticket {
    match policy.admit(operation) {
        Admission::Allow(ticket) => ticket,
        Admission::Reject => panic!("{operation} rejected"),
    }
}

#[test]
fn a_late_outcome_cannot_close_a_half_open_breaker() {
    let clock = ManualClock::shared();
    let breaker = CircuitBreaker::builder()
        .failure_threshold(1)
        .success_threshold(1)
        .recovery_timeout(Duration::from_secs(5))
        .clock(clock.clone())
        .build()
        .unwrap();
    let read = Operation::Read;
    // A call admitted while closed is still in flight...
    let early = admit(&breaker, read);
    // ...when another call fails and trips the breaker.
    let failing = admit(&breaker, read);
    let down = cache_core::Error::timeout("l2", Duration::from_millis(50));
    let failure = CallOutcome::Failure {
        elapsed: Duration::ZERO,
        error: &down,
    };
    breaker.record(read, failing, failure);
    assert!(matches!(breaker.state(), State::Open { .. }));
    clock.advance(Duration::from_secs(5));
    let trial = admit(&breaker, read);
    assert!(matches!(breaker.state(), State::HalfOpen { .. }));
    // The early call's success arrives now: it says nothing about the
    // backend since the trip, and must not close the breaker.
    let success = CallOutcome::Success {
        elapsed: Duration::ZERO,
    };
    breaker.record(read, early, success);
    assert!(
        matches!(breaker.state(), State::HalfOpen { .. }),
        "{:?}",
        breaker.state()
    );
    // The trial's own success does.
    breaker.record(read, trial, success);
    assert!(matches!(breaker.state(), State::Closed { .. }));
}

fn breaker() -> Arc<TierBreaker> {
    Arc::new(
        CircuitBreaker::builder()
            .name("l2")
            .failure_threshold(3)
            .recovery_timeout(Duration::from_secs(60))
            .build_for_tier()
            .unwrap(),
    )
}

#[tokio::test]
async fn failing_writes_do_not_block_reads_that_succeed() {
    for class in [ErrorClass::Unavailable, ErrorClass::OutOfMemory] {
        let l2 = Arc::new(FaultyLayer::new(Arc::new(MemoryLayer::new())));
        let breaker = breaker();
        let cache = TieredCache::builder()
            .tier(Tier::shared(l2.clone()).shared_policy(breaker.clone()))
            .build()
            .unwrap();
        cache.set("cached", &1u32, TTL).await.unwrap();
        l2.set_fault(Fault::FailWrites(class));
        for i in 0..10 {
            // Fails open: skipped, not an error.
            cache.set(&format!("new:{i}"), &i, TTL).await.unwrap();
        }
        // Reads still reach the tier and find what it holds.
        for _ in 0..10 {
            assert_eq!(
                cache.get::<u32>("cached").await.unwrap(),
                Some(1),
                "{class}"
            );
        }
        assert!(matches!(breaker.reads().state(), State::Closed { .. }));
        let writes_open = matches!(breaker.writes().state(), State::Open { .. });
        // A dead primary opens the write breaker; a full server is not dead.
        assert_eq!(writes_open, class == ErrorClass::Unavailable, "{class}");
    }
}

#[tokio::test]
async fn a_refused_value_is_an_error_whatever_the_policy_and_trips_nothing() {
    let l2 = MemoryLayer::builder()
        .max_bytes(4096)
        .max_entries(16)
        .shards(1)
        .build()
        .unwrap();
    let breaker = breaker();
    let cache = TieredCache::builder()
        .layer(MemoryLayer::new())
        .tier(Tier::new(l2).shared_policy(breaker.clone()))
        .build()
        .unwrap();
    cache.set("big", &1u32, TTL).await.unwrap();
    for _ in 0..5 {
        let refused = cache.set("big", &vec![7u8; 10_000], TTL).await;
        let error = refused.expect_err("the shared tier refused it");
        assert!(error.is_refusal(), "{error}");
        assert_eq!(error.class(), ErrorClass::RefusedInput);
    }
    // No tier kept the old value, and the breaker saw no failure.
    assert_eq!(cache.get::<u32>("big").await.unwrap(), None);
    assert!(matches!(
        breaker.writes().state(),
        State::Closed { failures: 0 }
    ));
    let stats = cache.stats();
    assert_eq!(stats.tiers[1].refused, 5);
    assert_eq!(stats.tiers[1].errors, 0);
}

/// L1 over a breaker-guarded Redis L2 that reads from replicas first.
async fn stack(primary: &str, replica: &str) -> (TieredCache, Arc<TierBreaker>) {
    let l2 = RedisLayer::builder(primary)
        .replica(replica)
        .read_from(cache_redis::ReadFrom::ReplicasFirst)
        .namespace("ops")
        .timeout(Duration::from_millis(300))
        .build()
        .await
        .unwrap();
    let breaker = breaker();
    let cache = TieredCache::builder()
        .tier(Tier::new(MemoryLayer::new()).ttl_cap(Duration::from_millis(1)))
        .tier(Tier::new(l2).shared_policy(breaker.clone()))
        .build()
        .unwrap();
    (cache, breaker)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_primary_dead_reads_keep_coming_from_the_replica() {
    let mut redis = ReplicatedRedis::start();
    let (cache, breaker) = stack(&redis.primary.url(), &redis.replica.url()).await;
    cache.set("offer:1", &7u32, TTL).await.unwrap();
    assert!(redis.wait_for_replica(Duration::from_secs(10)));
    redis.primary.kill();
    for i in 0..20 {
        // Writes fail (open): the write breaker opens after three.
        cache
            .set(&format!("offer:{}", 100 + i), &i, TTL)
            .await
            .unwrap();
        // The L1 copy lives a millisecond: reads go to Redis, and the
        // replica answers them.
        tokio::time::sleep(Duration::from_millis(2)).await;
        assert_eq!(
            cache.get::<u32>("offer:1").await.unwrap(),
            Some(7),
            "read {i}"
        );
    }
    assert!(matches!(breaker.writes().state(), State::Open { .. }));
    assert!(matches!(breaker.reads().state(), State::Closed { .. }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_server_keeps_answering_reads() {
    let server =
        RedisServer::start_with(&["--maxmemory", "2mb", "--maxmemory-policy", "noeviction"]);
    let l2 = RedisLayer::builder(server.url())
        .namespace("ops")
        .build()
        .await
        .unwrap();
    let breaker = breaker();
    let cache = TieredCache::builder()
        .tier(Tier::new(l2.clone()).shared_policy(breaker.clone()))
        .build()
        .unwrap();
    cache.set("offer:1", &7u32, TTL).await.unwrap();
    // Fill the server until it refuses writes.
    let chunk = vec![1u8; 64 * 1024];
    let mut full = false;
    for i in 0..200 {
        cache
            .set(&format!("filler:{i}"), &chunk, TTL)
            .await
            .unwrap();
        if l2.stats().errors > 0 {
            full = true;
            break;
        }
    }
    assert!(full, "the server never filled up");
    for i in 0..10 {
        cache.set(&format!("more:{i}"), &chunk, TTL).await.unwrap();
        assert_eq!(cache.get::<u32>("offer:1").await.unwrap(), Some(7));
    }
    // OOM says "full", not "down": neither breaker opened.
    assert!(matches!(breaker.reads().state(), State::Closed { .. }));
    assert!(matches!(breaker.writes().state(), State::Closed { .. }));
    assert!(cache.stats().tiers[0].errors >= 10);
}
