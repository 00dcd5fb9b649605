//! A Redis outage under load, with a real `redis-server`: what callers see
//! and what the database behind the loader pays.
//!
//! The README stack (a `MemoryLayer` L1 with a `ttl_cap` over a `RedisLayer`
//! L2 guarded by a `TierBreaker`) serves 8 tasks that read 1,000 keys in a
//! zipf-like order through `get_or_compute`, in front of an in-process
//! "database" that counts its calls and can be switched to fail at run time.
//! L1 holds a quarter of the keys. Three such stacks run side by side, one
//! per `degraded_ttl` setting, each in its own Redis namespace, through the
//! same phases:
//!
//! 1. healthy: every key is in Redis, the database is hardly called;
//! 2. Redis killed, the database working: callers get no errors (the tier
//!    fails open), the database takes the load L1 no longer absorbs;
//! 3. Redis restarted on the same port: L2 hits resume within the breaker's
//!    recovery timeout;
//! 4. Redis killed while the database also fails: keys L1 still holds are
//!    served, the others are errors.
//!
//! The figures are printed as one table (`-- --nocapture`); they decided
//! the default of `TieredCacheBuilder::degraded_ttl` (its doc quotes them).
//!
//! ```sh
//! cargo test -p cache-redis --test outage -- --nocapture
//! ```
//!
//! Needs `redis-server` and `redis-cli` on PATH (`apt-get install -y redis-server`).

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cache_breaker::{CircuitBreaker, TierBreaker};
use cache_core::CacheLayer;
use cache_memory::MemoryLayer;
use cache_redis::RedisLayer;
use cache_test_support::ctx;
use cache_test_support::redis::RedisServer;
use cache_tiered::{Tier, TieredCache, TieredCacheBuilder};
use futures::StreamExt;
use tokio::sync::RwLock;

/// The keys read, and how many of them L1 may hold (a quarter).
const KEYS: usize = 1_000;
const L1_ENTRIES: u64 = 250;
/// Readers per stack.
const WORKERS: usize = 8;
/// The zipf exponent of the key popularity: with 1,000 keys the hottest
/// quarter takes about 80% of the reads, as hot offers do.
const ZIPF: f64 = 1.0;
/// Each reader sends at most one request per `PACE`: a request rate that
/// does not depend on how fast the cache answers (as a service's traffic),
/// and that leaves CPU to the other tests on a 2-core machine.
const PACE: Duration = Duration::from_millis(2);
/// What a database call takes.
const DB_LATENCY: Duration = Duration::from_millis(1);

/// The TTL the loader's values are written with: longer than the test, so
/// in a healthy run Redis holds every key and the database is idle.
const TTL: Duration = Duration::from_secs(300);
/// L1's `ttl_cap`. The README caps L1 at 30 s, and real outages last
/// minutes: what matters is an outage longer than the cap, when nothing L1
/// held before it is left. Scaled down (1/15) so that the outage below
/// lasts 2.5 caps and the test stays short.
const L1_CAP: Duration = Duration::from_secs(2);
/// The layer's timeout (the README's is 100 ms).
const TIMEOUT: Duration = Duration::from_millis(100);
/// The breaker's recovery timeout: an open breaker lets a probe through
/// after it. The default (30 s) would bound the test's wait instead.
const RECOVERY: Duration = Duration::from_secs(1);

const HEALTHY: Duration = Duration::from_secs(3);
const OUTAGE: Duration = Duration::from_secs(5);
const FAILING: Duration = Duration::from_secs(5);
/// The fail-safe grace of the README stack: values are kept this long past
/// their TTL, as a fallback for a failing database.
const GRACE: Duration = Duration::from_secs(3600);
/// The deadline for anything that should happen "within a few seconds".
const PATIENCE: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(10);

/// The database behind the loader: answers after `DB_LATENCY`, or fails,
/// switchable while the readers run; counts its calls.
#[derive(Debug, Default)]
struct Database {
    failing: AtomicBool,
    calls: AtomicU64,
}

impl Database {
    async fn load(&self, key: usize) -> Result<u64, std::io::Error> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(DB_LATENCY).await;
        if self.failing.load(Ordering::Relaxed) {
            return Err(std::io::Error::other("the database is down too"));
        }
        Ok(value_of(key))
    }
}

/// The value stored under key `i`: readers check they get the right one.
fn value_of(key: usize) -> u64 {
    key as u64 * 7 + 1
}

fn key_name(key: usize) -> String {
    format!("offer:{key}")
}

/// The `degraded_ttl` a stack is built with, and whether it has fail-safe.
#[derive(Debug, Clone, Copy)]
enum Degraded {
    /// The builder's default (5 s).
    Default,
    /// The README's settings: the default, with fail-safe.
    FailSafe,
    /// Off: `degraded_ttl(Duration::ZERO)`, the default before these
    /// figures.
    Off,
    /// `degraded_ttl(d)`.
    For(Duration),
}

impl Degraded {
    fn apply(self, builder: TieredCacheBuilder) -> TieredCacheBuilder {
        match self {
            Degraded::Default => builder,
            Degraded::FailSafe => builder.fail_safe(GRACE),
            Degraded::Off => builder.degraded_ttl(Duration::ZERO),
            Degraded::For(ttl) => builder.degraded_ttl(ttl),
        }
    }

    fn label(self) -> String {
        match self {
            Degraded::Default => format!("default (5s, cap {L1_CAP:?})"),
            Degraded::FailSafe => format!("default, fail-safe {GRACE:?}"),
            Degraded::Off => "off (ZERO)".to_owned(),
            Degraded::For(ttl) if ttl >= L1_CAP => format!("{ttl:?} (cap {L1_CAP:?})"),
            Degraded::For(ttl) => format!("{ttl:?}"),
        }
    }
}

/// What the readers of one stack saw, counted as they go; a phase's
/// figures are the difference of two snapshots.
#[derive(Debug, Default)]
struct Seen {
    requests: AtomicU64,
    errors: AtomicU64,
    /// Requests and errors for keys that were in L1 when Redis was last
    /// killed (see `Stack::mark_l1`).
    requests_l1: AtomicU64,
    errors_l1: AtomicU64,
    /// Values that were not the key's: must stay 0.
    wrong: AtomicU64,
    /// The first error a caller got, for the assertion messages.
    first_error: std::sync::Mutex<Option<String>>,
}

/// One README stack and what its readers and database counted.
struct Stack {
    degraded: Degraded,
    cache: TieredCache,
    l1: MemoryLayer,
    breaker: Arc<TierBreaker>,
    db: Database,
    seen: Seen,
    /// Per key: whether it was in L1 when Redis was last killed.
    in_l1: Vec<AtomicBool>,
}

impl Stack {
    async fn build(url: &str, index: usize, degraded: Degraded) -> Self {
        let l1 = MemoryLayer::builder()
            .max_entries(L1_ENTRIES)
            .build()
            .unwrap();
        let l2 = RedisLayer::builder(url)
            .namespace(format!("outage-{index}"))
            .timeout(TIMEOUT)
            .build()
            .await
            .unwrap();
        let breaker = Arc::new(
            CircuitBreaker::builder()
                .name("redis")
                .recovery_timeout(RECOVERY)
                .build_for_tier()
                .unwrap(),
        );
        let builder = TieredCache::builder()
            .tier(Tier::new(l1.clone()).ttl_cap(L1_CAP))
            .tier(Tier::new(l2).shared_policy(breaker.clone()));
        let cache = degraded.apply(builder).build().unwrap();
        Stack {
            degraded,
            cache,
            l1,
            breaker,
            db: Database::default(),
            seen: Seen::default(),
            in_l1: (0..KEYS).map(|_| AtomicBool::new(false)).collect(),
        }
    }

    /// One request, as a service handler makes it.
    async fn read(&self, key: usize) {
        let result = self
            .cache
            .get_or_compute(&key_name(key), TTL, || self.db.load(key))
            .await;
        let seen = &self.seen;
        let in_l1 = self.in_l1[key].load(Ordering::Relaxed);
        seen.requests.fetch_add(1, Ordering::Relaxed);
        if in_l1 {
            seen.requests_l1.fetch_add(1, Ordering::Relaxed);
        }
        match result {
            Ok(value) if value == value_of(key) => {}
            Ok(_) => {
                seen.wrong.fetch_add(1, Ordering::Relaxed);
            }
            Err(error) => {
                seen.errors.fetch_add(1, Ordering::Relaxed);
                if in_l1 {
                    seen.errors_l1.fetch_add(1, Ordering::Relaxed);
                }
                seen.first_error
                    .lock()
                    .unwrap()
                    .get_or_insert_with(|| error.to_string());
            }
        }
    }

    /// Records which keys L1 holds now, through the `CacheLayer` API.
    async fn mark_l1(&self) -> usize {
        let mut held = 0;
        for (key, flag) in self.in_l1.iter().enumerate() {
            let found = self
                .l1
                .get(&ctx::read(), &key_name(key))
                .await
                .unwrap()
                .is_some();
            flag.store(found, Ordering::Relaxed);
            held += usize::from(found);
        }
        held
    }

    fn snapshot(&self) -> Snapshot {
        let stats = self.cache.stats();
        let seen = &self.seen;
        Snapshot {
            at: Instant::now(),
            loads: self.db.calls.load(Ordering::Relaxed),
            requests: seen.requests.load(Ordering::Relaxed),
            errors: seen.errors.load(Ordering::Relaxed),
            requests_l1: seen.requests_l1.load(Ordering::Relaxed),
            errors_l1: seen.errors_l1.load(Ordering::Relaxed),
            l1_hits: stats.tiers[0].hits,
            l2_hits: stats.tiers[1].hits,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Snapshot {
    at: Instant,
    loads: u64,
    requests: u64,
    errors: u64,
    requests_l1: u64,
    errors_l1: u64,
    l1_hits: u64,
    l2_hits: u64,
}

/// What happened between two snapshots.
#[derive(Debug, Clone, Copy)]
struct Phase {
    seconds: f64,
    loads: u64,
    requests: u64,
    errors: u64,
    requests_l1: u64,
    errors_l1: u64,
    l1_hits: u64,
    l2_hits: u64,
}

impl Phase {
    fn between(from: Snapshot, to: Snapshot) -> Self {
        Phase {
            seconds: (to.at - from.at).as_secs_f64(),
            loads: to.loads - from.loads,
            requests: to.requests - from.requests,
            errors: to.errors - from.errors,
            requests_l1: to.requests_l1 - from.requests_l1,
            errors_l1: to.errors_l1 - from.errors_l1,
            l1_hits: to.l1_hits - from.l1_hits,
            l2_hits: to.l2_hits - from.l2_hits,
        }
    }

    fn loads_per_s(&self) -> f64 {
        self.loads as f64 / self.seconds
    }

    fn requests_per_s(&self) -> f64 {
        self.requests as f64 / self.seconds
    }

    fn l2_hits_per_s(&self) -> f64 {
        self.l2_hits as f64 / self.seconds
    }

    /// Requests and errors for keys that were not in L1 at the kill.
    fn requests_other(&self) -> u64 {
        self.requests - self.requests_l1
    }

    fn errors_other(&self) -> u64 {
        self.errors - self.errors_l1
    }
}

/// Zipf-like key order: the cumulative weights of keys 0..KEYS (key `i`
/// weighs `1 / (i + 1)^ZIPF`), normalised to end at 1.
fn zipf_cdf() -> Vec<f64> {
    let mut total = 0.0;
    let mut cdf: Vec<f64> = (0..KEYS)
        .map(|i| {
            total += 1.0 / ((i + 1) as f64).powf(ZIPF);
            total
        })
        .collect();
    for weight in &mut cdf {
        *weight /= total;
    }
    cdf
}

/// A small xorshift generator: reproducible enough, and no dependency.
struct Rng(u64);

impl Rng {
    fn unit(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Reads until `stop`, one request per `PACE`. Holds `gate` for reading
/// around each request, so that the driver, holding it for writing, can
/// change the world (kill Redis, record L1) between requests.
async fn reader(
    stack: Arc<Stack>,
    cdf: Arc<Vec<f64>>,
    gate: Arc<RwLock<()>>,
    stop: Arc<AtomicBool>,
    seed: u64,
) {
    let mut rng = Rng(seed | 1);
    let mut pace = tokio::time::interval(PACE);
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !stop.load(Ordering::Relaxed) {
        pace.tick().await;
        let u = rng.unit();
        let key = cdf.partition_point(|&weight| weight < u).min(KEYS - 1);
        let _open = gate.read().await;
        stack.read(key).await;
    }
}

fn snapshots(stacks: &[Arc<Stack>]) -> Vec<Snapshot> {
    stacks.iter().map(|stack| stack.snapshot()).collect()
}

fn phases(from: &[Snapshot], to: &[Snapshot]) -> Vec<Phase> {
    from.iter()
        .zip(to)
        .map(|(from, to)| Phase::between(*from, *to))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_under_load() {
    let mut server = RedisServer::start();
    let url = server.url();
    // Off first: the last assertion compares the others with it. The
    // default (5 s) is bounded by the L1 cap here: it measures a degraded
    // TTL as long as the cap.
    let settings = [
        Degraded::Off,
        Degraded::For(Duration::from_millis(500)),
        Degraded::Default,
        Degraded::FailSafe,
    ];
    let mut stacks = Vec::new();
    for (index, degraded) in settings.into_iter().enumerate() {
        stacks.push(Arc::new(Stack::build(&url, index, degraded).await));
    }

    // Warm-up: every key once, so Redis holds them all and L1 is full.
    for stack in &stacks {
        futures::stream::iter(0..KEYS)
            .for_each_concurrent(WORKERS, |key| stack.read(key))
            .await;
        assert_eq!(stack.db.calls.load(Ordering::Relaxed), KEYS as u64);
        assert_eq!(stack.seen.errors.load(Ordering::Relaxed), 0);
    }
    // quick_cache sizes by weight: every entry weighs at least
    // `max_bytes / max_entries`, so the shards together hold at most
    // `max_entries`, and all are full after 1,000 distinct keys.
    for stack in &stacks {
        let held = stack.l1.len();
        assert!(
            (200..=L1_ENTRIES as usize).contains(&held),
            "L1 holds {held} entries, not about {L1_ENTRIES}"
        );
    }
    let l1_after_warm_up = stacks[0].l1.len();

    let cdf = Arc::new(zipf_cdf());
    let gate = Arc::new(RwLock::new(()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for (s, stack) in stacks.iter().enumerate() {
        for w in 0..WORKERS {
            // A distinct, non-zero seed per reader.
            let seed = ((s * WORKERS + w) as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            readers.push(tokio::spawn(reader(
                stack.clone(),
                cdf.clone(),
                gate.clone(),
                stop.clone(),
                seed,
            )));
        }
    }

    // Phase 1: healthy.
    let healthy_from = snapshots(&stacks);
    tokio::time::sleep(HEALTHY).await;
    let healthy_to = snapshots(&stacks);
    let healthy = phases(&healthy_from, &healthy_to);

    // Phase 2: Redis killed, the database working.
    let mut held_at_kill = Vec::new();
    {
        let _frozen = gate.write().await;
        for stack in &stacks {
            held_at_kill.push(stack.mark_l1().await);
        }
        server.kill();
    }
    let outage_from = snapshots(&stacks);
    // After one L1 cap nothing L1 held before the kill is left: what
    // follows is what a long outage costs.
    tokio::time::sleep(L1_CAP).await;
    let outage_mid = snapshots(&stacks);
    tokio::time::sleep(OUTAGE - L1_CAP).await;
    let outage_to = snapshots(&stacks);
    let outage = phases(&outage_from, &outage_to);
    let outage_late = phases(&outage_mid, &outage_to);

    // Phase 3: Redis restarted on the same port (empty: no persistence).
    // `restart` blocks until the server answers PING.
    tokio::task::block_in_place(|| server.restart());
    let up = Instant::now();
    let restarted = snapshots(&stacks);
    let mut recovered: Vec<Option<Duration>> = vec![None; stacks.len()];
    while recovered.iter().any(Option::is_none) {
        for (i, stack) in stacks.iter().enumerate() {
            if recovered[i].is_none() && stack.snapshot().l2_hits > restarted[i].l2_hits {
                recovered[i] = Some(up.elapsed());
            }
        }
        if up.elapsed() > RECOVERY + PATIENCE {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    // Let the breakers close and L1 refill before the next kill.
    let deadline = Instant::now() + PATIENCE;
    while stacks.iter().any(|stack| {
        stack.breaker.reads().state().kind() != cache_breaker::StateKind::Closed
            || stack.breaker.writes().state().kind() != cache_breaker::StateKind::Closed
    }) && Instant::now() < deadline
    {
        tokio::time::sleep(POLL).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Phase 4: Redis killed while the database fails too.
    let mut held_at_second_kill = Vec::new();
    {
        let _frozen = gate.write().await;
        for stack in &stacks {
            stack.db.failing.store(true, Ordering::Relaxed);
            held_at_second_kill.push(stack.mark_l1().await);
        }
        server.kill();
    }
    let failing_from = snapshots(&stacks);
    tokio::time::sleep(FAILING).await;
    let failing_to = snapshots(&stacks);
    let failing = phases(&failing_from, &failing_to);

    stop.store(true, Ordering::Relaxed);
    for reader in readers {
        reader.await.unwrap();
    }

    // The table (markdown, for the docs), before any assertion, so that a
    // failing run shows it too.
    let mut table = String::new();
    writeln!(
        table,
        "\nRedis outage under load: {KEYS} keys (zipf {ZIPF}), L1 {L1_ENTRIES} entries \
         ({l1_after_warm_up} held after warm-up) capped at {L1_CAP:?}, {WORKERS} readers \
         per stack, one request each per {PACE:?}, database {DB_LATENCY:?}, layer timeout \
         {TIMEOUT:?}, breaker recovery {RECOVERY:?}; Redis killed for {OUTAGE:?}, then \
         restarted, then killed with the database failing for {FAILING:?}.\n"
    )
    .unwrap();
    writeln!(
        table,
        "| degraded_ttl | requests/s | healthy: loads/s | L2 hits/s | L1 hits | \
         Redis killed: loads/s | after the L1 cap | L1 hits | errors | \
         L2 hits again after | database failing too: loads/s | errors, keys in L1 | other keys |"
    )
    .unwrap();
    writeln!(
        table,
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    )
    .unwrap();
    let percent =
        |part: u64, whole: u64| format!("{:.0}%", 100.0 * part as f64 / whole.max(1) as f64);
    for (i, stack) in stacks.iter().enumerate() {
        let (h, o, late, f) = (healthy[i], outage[i], outage_late[i], failing[i]);
        writeln!(
            table,
            "| {} | {:.0} | {:.1} | {:.0} | {} | {:.0} | {:.0} | {} | {} | {} | {:.0} | {} of {} | {} of {} |",
            stack.degraded.label(),
            h.requests_per_s(),
            h.loads_per_s(),
            h.l2_hits_per_s(),
            percent(h.l1_hits, h.requests),
            o.loads_per_s(),
            late.loads_per_s(),
            percent(o.l1_hits, o.requests),
            o.errors,
            recovered[i].map_or("never".to_owned(), |d| format!("{:.2} s", d.as_secs_f64())),
            f.loads_per_s(),
            f.errors_l1,
            f.requests_l1,
            f.errors_other(),
            f.requests_other(),
        )
        .unwrap();
    }
    writeln!(
        table,
        "\nKeys in L1 at the first kill: {held_at_kill:?}; at the second: {held_at_second_kill:?}."
    )
    .unwrap();
    println!("{table}");

    for (i, stack) in stacks.iter().enumerate() {
        let label = stack.degraded.label();
        let first_error = stack.seen.first_error.lock().unwrap().clone();
        assert_eq!(
            stack.seen.wrong.load(Ordering::Relaxed),
            0,
            "{label}: wrong values"
        );

        // Healthy: Redis answers nearly every L1 miss; the database is idle
        // (allow a few Redis calls slower than the timeout on a busy machine).
        let h = healthy[i];
        assert!(h.requests > 1_000, "{label}: only {} requests", h.requests);
        assert_eq!(h.errors, 0, "{label}: {first_error:?}");
        assert!(h.l2_hits > 0, "{label}: no L2 hit while healthy");
        assert!(
            h.loads * 50 < h.requests,
            "{label}: {} loads for {} requests while healthy",
            h.loads,
            h.requests
        );

        // Redis killed, the database working: no caller sees an error, and
        // the database takes the load (far more than while healthy).
        let o = outage[i];
        assert_eq!(
            o.errors, 0,
            "{label}: caller errors in the outage: {first_error:?}"
        );
        assert_eq!(o.l2_hits, 0, "{label}: L2 hits with Redis dead");
        assert!(
            o.loads > 10 * h.loads.max(1),
            "{label}: {} loads in the outage, {} while healthy",
            o.loads,
            h.loads
        );

        // Redis back: L2 hits again within the breaker's recovery timeout,
        // with generous slack for a busy machine.
        let recovery = recovered[i];
        assert!(
            recovery.is_some_and(|d| d < RECOVERY + Duration::from_secs(5)),
            "{label}: L2 hits resumed after {recovery:?}, recovery timeout {RECOVERY:?}"
        );

        // Redis killed while the database fails. A key L1 did not hold at
        // the kill has nowhere to come from: every request for it fails.
        // Without fail-safe, keys L1 held are served until their L1 copy
        // expires (at most `L1_CAP`), then fail too. With it, the L1 copy
        // turns stale at the cap and stays, and every request for a key
        // cached before the kill is served, for the whole outage.
        let f = failing[i];
        assert!(
            f.requests_other() > 0 && f.requests_l1 > 0,
            "{label}: {f:?}"
        );
        assert_eq!(
            f.errors_other(),
            f.requests_other(),
            "{label}: a key L1 lacked was served with Redis and the database down"
        );
        if matches!(stack.degraded, Degraded::FailSafe) {
            assert_eq!(
                f.errors_l1, 0,
                "{label}: a key cached before the kill failed: {first_error:?}"
            );
        } else {
            assert!(
                f.errors_l1 < f.requests_l1,
                "{label}: no key L1 held was served: {f:?}"
            );
            assert!(
                f.errors_l1 > 0,
                "{label}: every key L1 held was served after its cap: {f:?}"
            );
        }
    }

    // The measurement behind the default: with a degraded TTL, L1 keeps
    // absorbing the hot keys during an outage; without one, once the L1 cap
    // has passed every request goes to the database.
    let off = outage_late[0].loads_per_s();
    for late in &outage_late[1..] {
        assert!(
            late.loads_per_s() * 2.0 < off,
            "a degraded TTL did not halve the database load: {:.0}/s vs {off:.0}/s off",
            late.loads_per_s()
        );
    }
}
