//! `RedisLoadLock` against real `redis-server`s: the lock's contract, and
//! fleet-wide single-flight across three processes.
//!
//! The process tests spawn this test binary itself three times, running
//! only the `#[ignore]`d test [`fleet_child`], which reads its part from
//! environment variables (and returns at once without them, so a plain
//! `--include-ignored` run passes it). Each child builds an L1 + Redis
//! cache with a fleet lock, waits for its siblings, and calls
//! `get_or_compute` on one key; its loader counts itself in Redis, outside
//! the cache's namespace.
//!
//! Needs `redis-server` and `redis-cli` on PATH (`apt-get install -y redis-server`).

use std::process::Stdio;
use std::time::{Duration, Instant};

use cache_core::{CacheLayer, ErrorClass, LoadLock, LockToken, Pattern};
use cache_memory::MemoryLayer;
use cache_redis::{RedisLayer, RedisLoadLock};
use cache_test_support::ctx;
use cache_test_support::redis::{RedisCluster, RedisServer};
use cache_tiered::{FleetLock, Tier, TieredCache};
use tokio::process::{Child, Command};

const LEASE: Duration = Duration::from_secs(10);

async fn layer(url: String) -> RedisLayer {
    RedisLayer::builder(url)
        .namespace("offers")
        .timeout(Duration::from_secs(2))
        .build()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_holder_at_a_time_released_by_its_token_only() {
    let server = RedisServer::start();
    // Two instances: separate layers, separate connections.
    let (a, b) = (
        RedisLoadLock::new(&layer(server.url()).await),
        RedisLoadLock::new(&layer(server.url()).await),
    );
    assert_eq!(a.lock_key("offer:7"), ":lock:offers:offer:7");

    // Forty tries at once, from both: one wins.
    let tries: Vec<_> = (0..40)
        .map(|n| {
            let lock = if n % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(async move { lock.try_lock("offer:7", LEASE).await.unwrap() })
        })
        .collect();
    let mut holders = Vec::new();
    for attempt in tries {
        holders.extend(attempt.await.unwrap());
    }
    assert_eq!(holders.len(), 1, "exactly one holder");
    let token = holders.pop().unwrap();
    assert_eq!(
        server.cli(&["GET", ":lock:offers:offer:7"]).trim(),
        token.as_str()
    );
    let pttl: i64 = server
        .cli(&["PTTL", ":lock:offers:offer:7"])
        .trim()
        .parse()
        .unwrap();
    assert!(pttl > 0 && pttl <= LEASE.as_millis() as i64, "PTTL {pttl}");

    // Another key is another lock.
    let other = b.try_lock("offer:8", LEASE).await.unwrap().expect("free");

    // Only the token releases it.
    assert!(!b.unlock("offer:7", &LockToken::random()).await.unwrap());
    assert!(!b.unlock("offer:7", &other).await.unwrap());
    assert!(b.try_lock("offer:7", LEASE).await.unwrap().is_none());
    assert!(
        b.unlock("offer:7", &token).await.unwrap(),
        "any instance may release with the token"
    );
    assert_eq!(server.cli(&["EXISTS", ":lock:offers:offer:7"]).trim(), "0");
    assert!(!a.unlock("offer:7", &token).await.unwrap(), "released once");
    assert!(a.try_lock("offer:7", LEASE).await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_ends_the_lock_by_itself() {
    let server = RedisServer::start();
    let lock = RedisLoadLock::new(&layer(server.url()).await);
    let lease = Duration::from_millis(300);
    let taken = Instant::now();
    let first = lock.try_lock("k", lease).await.unwrap().expect("free");
    let second = loop {
        if let Some(token) = lock.try_lock("k", LEASE).await.unwrap() {
            break token;
        }
        assert!(
            taken.elapsed() < Duration::from_secs(10),
            "the lease never ended"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // Not before the lease (Redis expires keys at PX, never sooner).
    assert!(
        taken.elapsed() >= lease - Duration::from_millis(5),
        "{:?}",
        taken.elapsed()
    );
    // The first holder, late, must not release the second one's lock.
    assert!(!lock.unlock("k", &first).await.unwrap());
    assert!(lock.try_lock("k", LEASE).await.unwrap().is_none());
    assert!(lock.unlock("k", &second).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_keys_stay_clear_of_values_markers_and_invalidation() {
    let server = RedisServer::start();
    let redis = layer(server.url()).await;
    let lock = RedisLoadLock::new(&redis);
    let entry = || cache_core::Entry::new(&b"value"[..]);
    redis.set(&ctx::write(), "k", entry()).await.unwrap();
    // A value under the key the lock's name is made of, and a removal marker.
    redis.set(&ctx::write(), "lock:k", entry()).await.unwrap();
    redis.delete(&ctx::remove(), "gone").await.unwrap();
    let token = lock
        .try_lock("k", LEASE)
        .await
        .unwrap()
        .expect("values do not hold locks");
    let marker = lock.try_lock("gone", LEASE).await.unwrap();
    assert!(marker.is_some(), "a removal marker does not hold a lock");

    // Invalidating everything in the namespace leaves the locks alone...
    redis
        .invalidate(&ctx::remove(), &Pattern::new("*"))
        .await
        .unwrap();
    assert!(lock.try_lock("k", LEASE).await.unwrap().is_none());
    // ... and the locks leave the values alone.
    redis.set(&ctx::write(), "k", entry()).await.unwrap();
    let found = redis.get(&ctx::read(), "k").await.unwrap();
    assert_eq!(found.unwrap().value().as_ref(), b"value");
    assert_eq!(redis.stats().corrupt, 0);
    assert!(lock.unlock("k", &token).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_survives_a_server_that_lost_the_script() {
    let server = RedisServer::start();
    let lock = RedisLoadLock::new(&layer(server.url()).await);
    let token = lock.try_lock("k", LEASE).await.unwrap().unwrap();
    assert!(lock.unlock("k", &token).await.unwrap());
    server.cli(&["SCRIPT", "FLUSH"]);
    let token = lock.try_lock("k", LEASE).await.unwrap().unwrap();
    assert!(
        lock.unlock("k", &token).await.unwrap(),
        "NOSCRIPT, reloaded"
    );
    assert_eq!(server.cli(&["EXISTS", ":lock:offers:k"]).trim(), "0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_server_is_a_classified_error() {
    let mut server = RedisServer::start();
    let lock = RedisLoadLock::new(&layer(server.url()).await);
    server.kill();
    let started = Instant::now();
    let error = lock.try_lock("k", LEASE).await.unwrap_err();
    assert!(
        matches!(error.class(), ErrorClass::Unavailable | ErrorClass::Timeout),
        "{error}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "bounded by the layer's timeout"
    );
    let error = lock.unlock("k", &LockToken::random()).await.unwrap_err();
    assert!(error.class().affects_health(), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lock_works_across_a_cluster() {
    let cluster = RedisCluster::start();
    let redis = RedisLayer::cluster_builder(cluster.urls())
        .namespace("c")
        .timeout(Duration::from_secs(2))
        .build()
        .await
        .unwrap();
    let (a, b) = (RedisLoadLock::new(&redis), RedisLoadLock::new(&redis));
    // Keys in every slot range, so every primary holds some locks.
    let keys: Vec<String> = (0..60).map(|n| format!("offer:{n}")).collect();
    let mut tokens = Vec::new();
    for key in &keys {
        tokens.push(a.try_lock(key, LEASE).await.unwrap().expect("free"));
        assert!(b.try_lock(key, LEASE).await.unwrap().is_none(), "{key}");
    }
    let holding: usize = cluster
        .nodes()
        .iter()
        .filter(|node| node.cli(&["DBSIZE"]).trim() != "0")
        .count();
    assert_eq!(holding, 3, "the locks are spread over the primaries");
    for (key, token) in keys.iter().zip(&tokens) {
        assert!(!b.unlock(key, &LockToken::random()).await.unwrap());
        assert!(b.unlock(key, token).await.unwrap(), "{key}");
    }
    assert_eq!(cluster.total_keys(), 0);
}

// ---- Three processes -------------------------------------------------------

/// Environment of a child: the Redis URL, and its scenario.
const URL_VAR: &str = "CACHE_FLEET_TEST_REDIS_URL";
const SCENARIO_VAR: &str = "CACHE_FLEET_TEST_SCENARIO";
/// Keys of the test's own bookkeeping, outside the cache's namespace.
const LOADS: &str = "fleet-test:loads";
const READY: &str = "fleet-test:ready";
const LOADING: &str = "fleet-test:loading";
const CHILDREN: usize = 3;

/// The settings of each scenario: (lease, max_wait).
fn settings(scenario: &str) -> (Duration, Duration) {
    match scenario {
        // A long wait: on a busy machine no waiter may give up on a 500 ms load.
        "once" => (Duration::from_secs(30), Duration::from_secs(20)),
        // The holder is killed: its lease ends after 2 s and a survivor
        // takes over, well within the wait.
        "killed" => (Duration::from_secs(2), Duration::from_secs(5)),
        other => panic!("unknown scenario {other}"),
    }
}

/// One instance of the service, in a process of its own (spawned by the
/// tests below; does nothing when run otherwise).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a child process of the fleet tests, which spawn it"]
async fn fleet_child() {
    let (Ok(url), Ok(scenario)) = (std::env::var(URL_VAR), std::env::var(SCENARIO_VAR)) else {
        return;
    };
    let (lease, max_wait) = settings(&scenario);
    let redis = layer(url.clone()).await;
    let cache = TieredCache::builder()
        .layer(MemoryLayer::new())
        .tier(Tier::new(redis.clone()))
        .fleet_lock(
            FleetLock::new(RedisLoadLock::new(&redis))
                .lease(lease)
                .max_wait(max_wait)
                .poll(Duration::from_millis(25)),
        )
        .build()
        .unwrap();
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();

    // Every instance misses at once: wait for the siblings.
    let _: i64 = redis::cmd("INCR")
        .arg(READY)
        .query_async(&mut conn)
        .await
        .unwrap();
    let ready_by = Instant::now() + Duration::from_secs(60);
    loop {
        let ready: usize = redis::cmd("GET")
            .arg(READY)
            .query_async(&mut conn)
            .await
            .unwrap();
        if ready >= CHILDREN {
            break;
        }
        assert!(Instant::now() < ready_by, "the siblings never came");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let pid = std::process::id();
    let started = Instant::now();
    let loader_conn = conn.clone();
    let value: String = cache
        .get_or_compute("offer:7", Duration::from_secs(300), || async move {
            let mut conn = loader_conn;
            let run: i64 = redis::cmd("INCR").arg(LOADS).query_async(&mut conn).await?;
            if scenario == "killed" && run == 1 {
                // The doomed holder: says so, then is killed mid-load.
                let _: () = redis::cmd("SET")
                    .arg(LOADING)
                    .arg(pid)
                    .query_async(&mut conn)
                    .await?;
                tokio::time::sleep(Duration::from_secs(600)).await;
            } else {
                tokio::time::sleep(Duration::from_millis(500)).await; // a slow query
            }
            Ok::<_, redis::RedisError>(format!("loaded by {pid}"))
        })
        .await
        .unwrap();
    let elapsed = started.elapsed();
    println!(
        "\nFLEET_RESULT pid={pid} elapsed_ms={} value={value}",
        elapsed.as_millis()
    );
    println!("FLEET_STATS {:?}", cache.stats().fleet);
}

/// What a child printed: its pid, how long its call took, its value.
#[derive(Debug)]
struct Outcome {
    pid: u32,
    elapsed: Duration,
    value: String,
}

fn spawn_child(url: &str, scenario: &str) -> Child {
    Command::new(std::env::current_exe().expect("the test binary"))
        .args(["--exact", "fleet_child", "--nocapture", "--include-ignored"])
        .args(["--test-threads", "1"])
        .env(URL_VAR, url)
        .env(SCENARIO_VAR, scenario)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn the test binary")
}

/// Waits for a child to exit (two minutes at most) and reads its outcome.
async fn outcome(child: Child) -> Outcome {
    let output = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .expect("the child finished within two minutes")
        .expect("the child's output");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "child failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let line = stdout
        .lines()
        .find_map(|line| line.split_once("FLEET_RESULT ").map(|(_, rest)| rest))
        .unwrap_or_else(|| panic!("no result in the child's output:\n{stdout}"));
    let field = |name: &str| -> String {
        let start = line.find(&format!("{name}=")).expect(name) + name.len() + 1;
        let rest = &line[start..];
        // `value` is last and may hold spaces.
        if name == "value" {
            rest.to_owned()
        } else {
            rest.split(' ').next().unwrap().to_owned()
        }
    };
    Outcome {
        pid: field("pid").parse().unwrap(),
        elapsed: Duration::from_millis(field("elapsed_ms").parse().unwrap()),
        value: field("value"),
    }
}

fn loads(server: &RedisServer) -> u64 {
    server.cli(&["GET", LOADS]).trim().parse().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_missing_one_key_run_the_loader_once() {
    let server = RedisServer::start();
    let children: Vec<Child> = (0..CHILDREN)
        .map(|_| spawn_child(&server.url(), "once"))
        .collect();
    let mut outcomes = Vec::new();
    for child in children {
        outcomes.push(outcome(child).await);
    }
    println!("{outcomes:?}");
    assert_eq!(loads(&server), 1, "one loader in the fleet: {outcomes:?}");
    let value = &outcomes[0].value;
    assert!(
        outcomes.iter().all(|outcome| &outcome.value == value),
        "every process has the one load's value: {outcomes:?}"
    );
    assert!(
        outcomes
            .iter()
            .any(|outcome| *value == format!("loaded by {}", outcome.pid)),
        "loaded by one of them: {outcomes:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_killed_mid_load_leaves_the_others_a_value_within_the_wait() {
    let server = RedisServer::start();
    let (_, max_wait) = settings("killed");
    let mut children: Vec<Child> = (0..CHILDREN)
        .map(|_| spawn_child(&server.url(), "killed"))
        .collect();

    // The holder's loader has started when it names itself.
    let deadline = Instant::now() + Duration::from_secs(60);
    let holder: u32 = loop {
        if let Ok(pid) = server.cli(&["GET", LOADING]).trim().parse() {
            break pid;
        }
        assert!(Instant::now() < deadline, "no loader started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let position = children
        .iter()
        .position(|child| child.id() == Some(holder))
        .expect("the holder is one of the children");
    let mut killed = children.remove(position);
    killed.start_kill().expect("SIGKILL the holder");
    let status = killed.wait().await.unwrap();
    assert!(!status.success(), "the holder died: {status}");

    let mut survivors = Vec::new();
    for child in children {
        survivors.push(outcome(child).await);
    }
    // Slack for a busy machine; without the lease ending, or the wait
    // bounding it, they would wait for a dead process forever.
    let bound = max_wait + Duration::from_secs(3);
    println!("holder {holder} killed; survivors: {survivors:?}");
    for survivor in &survivors {
        assert!(
            survivor.elapsed <= bound,
            "{survivor:?} waited past {bound:?}"
        );
        assert_ne!(survivor.value, format!("loaded by {holder}"));
    }
    // One survivor took the lock when the lease ended; the other got its value.
    assert_eq!(loads(&server), 2, "{survivors:?}");
    assert_eq!(survivors[0].value, survivors[1].value, "{survivors:?}");
}
