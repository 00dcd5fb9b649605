//! Starting while Redis is down. The README stack (`MemoryLayer` L1 over a
//! lazy `RedisLayer` L2 under a `TierBreaker`, a lazy `RedisBackplane`, the
//! invalidation queue) is built with no server listening: it serves from L1
//! and the loader, its writes and removals fail open, and once a server
//! comes up on the configured port it becomes fully live by itself: clock
//! sampled, scripts loaded, L2 shared, backplane subscribed (after a gap
//! that clears L1). Prints how long that took (`-- --nocapture`);
//! `docs/redis.md` quotes it.
//!
//! Also the lazy backplane alone: what it refuses at build although lazy
//! (a bad URL, a wrong password), and what a subscription does meanwhile.
//!
//! Needs `redis-server` and `redis-cli` on PATH (`apt-get install -y redis-server`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cache_breaker::{CircuitBreaker, StateKind, TierBreaker};
use cache_core::{
    Backplane, BackplaneEvent, BackplaneMessage, CacheLayer, Error, ErrorClass, Invalidation,
};
use cache_memory::MemoryLayer;
use cache_redis::{RedisBackplane, RedisLayer};
use cache_test_support::ctx;
use cache_test_support::redis::RedisServer;
use cache_tiered::{Tier, TieredCache};

const TTL: Duration = Duration::from_secs(300);
/// The layer's and the backplane's timeout: what a call costs while the
/// server is down, at most (a refused connection costs far less).
const TIMEOUT: Duration = Duration::from_millis(200);
/// The breaker's recovery timeout: after it, an open breaker lets a probe
/// through. The default (30 s) would bound the test's wait instead.
const RECOVERY: Duration = Duration::from_secs(1);
/// The deadline for anything that should happen "within a few seconds".
const PATIENCE: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(10);

struct Instance {
    cache: TieredCache,
    l1: MemoryLayer,
    breaker: Arc<TierBreaker>,
}

/// The README stack, lazy where it touches Redis.
async fn instance(url: &str) -> Instance {
    let l1 = MemoryLayer::builder().sweep_interval(None).build().unwrap();
    let l2 = RedisLayer::builder(url)
        .namespace("offers:")
        .timeout(TIMEOUT)
        .pool_min_idle(0) // lazy: no connection at build
        .build()
        .await
        .expect("a lazy layer builds without a server");
    let breaker = Arc::new(
        CircuitBreaker::builder()
            .name("redis")
            .recovery_timeout(RECOVERY)
            .build_for_tier()
            .unwrap(),
    );
    let backplane = RedisBackplane::builder(url)
        .channel("offers:invalidation")
        .timeout(TIMEOUT)
        .lazy(true)
        .build()
        .await
        .expect("a lazy backplane builds without a server");
    let cache = TieredCache::builder()
        .tier(Tier::new(l1.clone()).ttl_cap(Duration::from_secs(30)))
        .tier(Tier::new(l2).shared_policy(breaker.clone()))
        .backplane(backplane)
        .invalidation_queue(10_000)
        // L1 keeps what the loader returns while Redis is down; long enough
        // that only the gap can have removed it below.
        .degraded_ttl(Duration::from_secs(60))
        .build_async()
        .await
        .expect("build_async subscribes lazily");
    Instance { cache, l1, breaker }
}

impl Instance {
    async fn in_l1(&self, key: &str) -> bool {
        self.l1.get(&ctx::read(), key).await.unwrap().is_some()
    }

    fn gaps(&self) -> u64 {
        self.cache.stats().backplane.gaps
    }
}

/// The `calls=` of `command` in `INFO commandstats` (0 if never called).
fn calls(server: &RedisServer, command: &str) -> u64 {
    let stats = server.cli(&["INFO", "commandstats"]);
    let prefix = format!("cmdstat_{command}:calls=");
    stats
        .lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().expect(&stats))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_stack_starts_while_redis_is_down_and_goes_live_when_it_comes_up() {
    let mut server = RedisServer::start();
    let url = server.url();
    server.kill(); // the port is closed: connections are refused

    let started = Instant::now();
    let a = instance(&url).await;
    let b = instance(&url).await;
    let built_in = started.elapsed();
    assert!(built_in < PATIENCE, "two instances built in {built_in:?}");

    // Serves: the loader runs once, L1 keeps its value.
    let loads = AtomicU64::new(0);
    for _ in 0..3 {
        let offer: u64 = a
            .cache
            .get_or_compute("offer:1", TTL, || async {
                loads.fetch_add(1, Ordering::Relaxed);
                Ok::<_, std::io::Error>(7)
            })
            .await
            .expect("served from the loader while Redis is down");
        assert_eq!(offer, 7);
    }
    assert_eq!(loads.load(Ordering::Relaxed), 1);
    assert!(a.in_l1("offer:1").await);

    // Writes and removals fail open; the removal is queued for Redis.
    a.cache.set("offer:2", &2u64, TTL).await.unwrap();
    let removed = a.cache.delete("offer:2").await.unwrap();
    assert!(removed.is_deferred(), "{removed:?}");
    assert!(!a.in_l1("offer:2").await);

    // Enough failed reads to open both read breakers: Redis comes back to
    // the state a real outage leaves.
    for instance in [&a, &b] {
        for i in 0..10 {
            let missing = instance.cache.get::<u64>(&format!("offer:x{i}")).await;
            assert_eq!(missing.unwrap(), None);
        }
        assert_eq!(instance.breaker.reads().state().kind(), StateKind::Open);
    }
    assert_eq!(a.gaps() + b.gaps(), 0, "no subscription yet");

    server.restart(); // on the same port
    let up = Instant::now();
    let (mut clock_at, mut subscribed_at, mut l2_at) = (None, None, None);
    let mut probe = 0u64;
    while clock_at.is_none() || subscribed_at.is_none() || l2_at.is_none() {
        assert!(
            up.elapsed() < PATIENCE,
            "not live {PATIENCE:?} after Redis came up: clock {clock_at:?}, \
             subscribed {subscribed_at:?}, L2 {l2_at:?}\nA: {:?}\nB: {:?}",
            a.cache.stats(),
            b.cache.stats(),
        );
        // Both lazy layers have sampled the server's clock (`TIME`).
        if clock_at.is_none() && calls(&server, "time") >= 2 {
            clock_at = Some(up.elapsed());
        }
        // Both subscriptions are up, each after one gap.
        if subscribed_at.is_none() && a.gaps() >= 1 && b.gaps() >= 1 {
            subscribed_at = Some(up.elapsed());
        }
        // B reads from Redis what A wrote there: a fresh key each time, so
        // nothing but L2 can answer.
        if l2_at.is_none() {
            probe += 1;
            let key = format!("probe:{probe}");
            a.cache.set(&key, &probe, TTL).await.unwrap();
            if b.cache.get::<u64>(&key).await.unwrap() == Some(probe) {
                l2_at = Some(up.elapsed());
            }
        }
        tokio::time::sleep(POLL).await;
    }
    let (clock_at, subscribed_at, l2_at) =
        (clock_at.unwrap(), subscribed_at.unwrap(), l2_at.unwrap());
    let live = clock_at.max(subscribed_at).max(l2_at);
    println!(
        "built while down in {built_in:?}; fully live {live:?} after Redis came up \
         (clock sampled {clock_at:?}, subscribed {subscribed_at:?}, L2 shared {l2_at:?}, \
         {probe} probes)"
    );

    // A lazy layer that never sampled the clock retries within a second or
    // so, not at its next periodic sync (10 s).
    assert!(
        clock_at < Duration::from_secs(5),
        "clock sampled {clock_at:?} after"
    );

    // Exactly one gap each, and it cleared what L1 took during the outage.
    assert_eq!((a.gaps(), b.gaps()), (1, 1));
    assert!(!a.in_l1("offer:1").await, "the gap clears L1");
    // The lazy layer loaded its removal-marker scripts on first use.
    assert!(calls(&server, "script|load") >= 2);
    assert!(calls(&server, "evalsha") >= 1);
    assert_eq!(
        server
            .cli(&["PUBSUB", "NUMSUB", "offers:invalidation"])
            .lines()
            .nth(1),
        Some("2")
    );

    // Backplane messages flow: a set on A drops B's L1 copy.
    b.cache.set("offer:3", &1u64, TTL).await.unwrap();
    assert!(b.in_l1("offer:3").await);
    let set_at = Instant::now();
    a.cache.set("offer:3", &2u64, TTL).await.unwrap();
    while b.in_l1("offer:3").await {
        assert!(set_at.elapsed() < PATIENCE, "B kept its L1 copy");
        tokio::time::sleep(POLL).await;
    }
    assert_eq!(b.cache.get::<u64>("offer:3").await.unwrap(), Some(2));
    assert_eq!(b.cache.stats().backplane.gaps, 1);

    // The removal deferred during the outage has landed and been published.
    let deadline = Instant::now() + PATIENCE;
    while a.cache.stats().queue.pending > 0 {
        assert!(Instant::now() < deadline, "{:?}", a.cache.stats().queue);
        tokio::time::sleep(POLL).await;
    }
}

#[tokio::test]
async fn a_lazy_backplane_waits_for_the_server_then_reports_a_gap() {
    let mut server = RedisServer::start();
    let url = server.url();
    server.kill();

    let strict = RedisBackplane::builder(&url).timeout(TIMEOUT).build().await;
    let err = strict.expect_err("not lazy: an unreachable server is an error");
    assert_eq!(err.class(), ErrorClass::Unavailable, "{err:?}");

    let lazy = RedisBackplane::builder(&url)
        .channel("offers")
        .timeout(TIMEOUT)
        .lazy(true)
        .build()
        .await
        .expect("lazy: builds with no server");
    let mut subscription = lazy.subscribe().await.expect("lazy: subscribes later");

    // Publishing fails, fast: the connection is refused.
    let started = Instant::now();
    let sent = BackplaneMessage {
        origin: 1,
        invalidations: vec![Invalidation::Key("offer:1".into())],
    };
    lazy.publish(&sent)
        .await
        .expect_err("no server to publish to");
    assert!(started.elapsed() < TIMEOUT + Duration::from_millis(100));

    // The subscription keeps trying, with a growing pause, and yields
    // nothing meanwhile.
    let waiting = tokio::time::timeout(Duration::from_millis(700), subscription.next()).await;
    assert!(waiting.is_err(), "an event with no server: {waiting:?}");

    server.restart();
    let up = Instant::now();
    let first = tokio::time::timeout(PATIENCE, subscription.next()).await;
    assert_eq!(first.unwrap(), Some(BackplaneEvent::Gap));
    println!("subscribed {:?} after the server came up", up.elapsed());

    // Then messages flow, through the same backplane's publishing side too.
    lazy.publish(&sent).await.unwrap();
    let next = tokio::time::timeout(PATIENCE, subscription.next()).await;
    assert_eq!(next.unwrap(), Some(BackplaneEvent::Message(sent)));
}

#[tokio::test]
async fn a_lazy_backplane_still_refuses_a_wrong_password_or_a_bad_url() {
    let server = RedisServer::start_with(&["--requirepass", "secret"]);
    let lazy = |url: String| {
        RedisBackplane::builder(url)
            .timeout(Duration::from_secs(2))
            .lazy(true)
            .build()
    };
    for url in [
        format!("redis://:wrong@127.0.0.1:{}", server.port()),
        server.url(), // no password
    ] {
        let err = lazy(url).await.expect_err("the server answers and refuses");
        assert_eq!(err.class(), ErrorClass::Auth, "{err:?}");
    }
    let err = lazy("not a url".into()).await.unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err:?}");

    // The right password builds and subscribes at once: no gap to report.
    let good = lazy(format!("redis://:secret@127.0.0.1:{}", server.port()))
        .await
        .unwrap();
    let mut subscription = good.subscribe().await.unwrap();
    let sent = BackplaneMessage {
        origin: 1,
        invalidations: vec![Invalidation::All],
    };
    good.publish(&sent).await.unwrap();
    let next = tokio::time::timeout(PATIENCE, subscription.next()).await;
    assert_eq!(next.unwrap(), Some(BackplaneEvent::Message(sent)));
}
