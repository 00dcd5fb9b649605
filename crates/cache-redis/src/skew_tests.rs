//! Hosts whose wall clocks disagree with the Redis server's, by an hour
//! either way, against a real `redis-server`: an L1 copy never outlives
//! its Redis source by more than the documented bound (`docs/redis.md`,
//! "Whose clock"), and a write never makes Redis keep a value past its
//! expiry, nor drop it early.
//!
//! The skew is the one seam a test has (a busy CI machine cannot shift a
//! real clock: libfaketime crashes redis-server): the guess a layer makes
//! of the server's clock before it first samples it, which is what this
//! host's wall clock would give. The hard case is a lazy layer's first
//! call, made as soon as a server comes up: the layer's own background
//! sample is then up to a second away, so the call samples the clock
//! itself, before it translates any expiry.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cache_core::CacheLayer;
use cache_memory::MemoryLayer;
use cache_test_support::ctx;
use cache_test_support::redis::RedisServer;
use cache_tiered::{Tier, TieredCache};

use crate::RedisLayer;

/// The documented bound: drift between two samples (10 ms at most) and the
/// millisecond an expiry is rounded to on the way to Redis.
const BOUND: Duration = Duration::from_millis(11);
const TTL: Duration = Duration::from_secs(60);
const HOUR_MICROS: i64 = 3_600_000_000;

struct Instance {
    cache: TieredCache,
    l1: Arc<MemoryLayer>,
}

/// `MemoryLayer` over `RedisLayer`; with `wall_off_by`, a host whose wall
/// clock reads that many microseconds off the server's.
async fn instance(url: &str, wall_off_by: Option<i64>, lazy: bool) -> Instance {
    let l1 = Arc::new(MemoryLayer::builder().sweep_interval(None).build().unwrap());
    let mut l2 = RedisLayer::builder(url)
        .namespace("skew:")
        .pool_min_idle(usize::from(!lazy));
    l2.server_clock_guess = wall_off_by.map(|off| wall_micros() + off);
    let cache = TieredCache::builder()
        .tier(Tier::shared(l1.clone()))
        .tier(Tier::new(l2.build().await.unwrap()))
        .build()
        .unwrap();
    Instance { cache, l1 }
}

fn wall_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}

/// The local instants between which Redis drops `key` (by its `PTTL`):
/// `None` if it holds no value there with an expiry.
async fn redis_expiry(url: &str, key: &str) -> Option<(Instant, Instant)> {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let sent = Instant::now();
    let pttl: i64 = redis::cmd("PTTL")
        .arg(format!("skew:{key}"))
        .query_async(&mut conn)
        .await
        .unwrap();
    let received = Instant::now();
    // Answered between `sent` and `received`: the expiry less the server's
    // time in whole ms, so it may overstate what is left by under a ms.
    let pttl = Duration::from_millis(u64::try_from(pttl).ok()?);
    Some((sent + pttl - Duration::from_millis(1), received + pttl))
}

/// The expiry of the copy of `key` in an instance's L1.
async fn l1_expiry(instance: &Instance, key: &str) -> Instant {
    let entry = instance
        .l1
        .get(&ctx::read(), key)
        .await
        .unwrap()
        .expect("the value is in L1");
    entry.expiry().expect("with an expiry")
}

/// Checks the first call of `writer`, a write, and of `reader`, a read
/// of what another host wrote.
async fn check(url: &str, case: &str, writer: Instance, reader: Instance) {
    let key = format!("{case}:written");
    let before = Instant::now();
    writer.cache.set(&key, &7u32, TTL).await.unwrap();
    let after = Instant::now();
    let (dies_after, dies_before) = redis_expiry(url, &key)
        .await
        .unwrap_or_else(|| panic!("{case}: Redis lost the value written"));
    assert!(
        dies_after <= after + TTL,
        "{case}: Redis keeps the value {:?} past its TTL",
        dies_after - (after + TTL)
    );
    assert!(
        dies_before + BOUND >= before + TTL,
        "{case}: Redis drops the value {:?} early",
        (before + TTL) - dies_before
    );
    assert!(l1_expiry(&writer, &key).await <= dies_before + BOUND);

    // The reader: its first call reads a value another host wrote.
    let key = format!("{case}:read");
    let other = instance(url, None, false).await;
    other.cache.set(&key, &8u32, TTL).await.unwrap();
    assert_eq!(
        reader.cache.get::<u32>(&key).await.unwrap(),
        Some(8),
        "{case}: the reader lost the value"
    );
    let (_, dies_before) = redis_expiry(url, &key).await.unwrap();
    let copy = l1_expiry(&reader, &key).await;
    assert!(
        copy <= dies_before + BOUND,
        "{case}: the L1 copy outlives Redis's by {:?}",
        copy - dies_before
    );
    assert!(copy + BOUND >= dies_before - Duration::from_secs(1));
}

#[tokio::test]
async fn a_layer_built_with_the_server_up_ignores_the_hosts_wall_clock() {
    let server = RedisServer::start();
    let url = server.url();
    for (case, off_by) in [("eager-ahead", HOUR_MICROS), ("eager-behind", -HOUR_MICROS)] {
        let writer = instance(&url, Some(off_by), false).await;
        let reader = instance(&url, Some(off_by), false).await;
        check(&url, case, writer, reader).await;
    }
}

/// A lazy layer's first calls, made the moment a server comes up.
#[tokio::test]
async fn a_lazy_layers_first_calls_ignore_the_hosts_wall_clock() {
    let mut server = RedisServer::start();
    for (case, off_by) in [
        ("lazy-ahead", Some(HOUR_MICROS)),
        ("lazy-behind", Some(-HOUR_MICROS)),
        ("lazy-agreeing", None),
    ] {
        server.kill();
        // Built while the server is down: the background sample fails, and
        // is next tried a second later.
        let url = server.url();
        let writer = instance(&url, off_by, true).await;
        let reader = instance(&url, off_by, true).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        server.restart();
        check(&url, case, writer, reader).await;
    }
}
