//! Fault injection against real `redis-server` processes: a `TieredCache`
//! of a small `MemoryLayer` over a `RedisLayer` guarded by the breaker,
//! under a steady load of `get_or_compute` calls from several tasks, while
//! the server is killed (SIGKILL) and restarted, or frozen (SIGSTOP) and
//! thawed (SIGCONT).
//!
//! Phases are measured in calls, not seconds, and the breaker's recovery
//! timeout runs on a `ManualClock` the test steps, so nothing here sleeps;
//! the only real-time bounds are generous deadlines that turn a hang into
//! a failure. Each test prints its figures per phase: calls, errors
//! surfaced to callers, p50/p99/max latency, and the L2 tier's counters.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cache_breaker::{BreakerStats, CircuitBreaker, StateKind};
use cache_core::{FailurePolicy, ManualClock};
use cache_memory::MemoryLayer;
use cache_redis::RedisLayer;
use cache_test_support::redis::RedisServer;
use cache_tiered::{Tier, TierStats, TieredCache};
use tokio::sync::{Notify, mpsc};

/// Redis operation timeout of the L2 layer.
const OP_TIMEOUT: Duration = Duration::from_millis(200);
const FAILURE_THRESHOLD: u32 = 5;
const RECOVERY: Duration = Duration::from_secs(5);
const WORKERS: usize = 8;
/// Keys the load picks from; the L1 holds far fewer, so most reads go on
/// to L2.
const KEYS: u64 = 400;
const L1_ENTRIES: u64 = 32;
const TTL: Duration = Duration::from_secs(300);
/// Calls per measured phase.
const PHASE_CALLS: u64 = 1_500;
/// A deadline that only a hang reaches (real time, for a busy 2-core box).
const DEADLINE: Duration = Duration::from_secs(30);
/// Slack for scheduling on a busy 2-core machine, far below a hang.
const SLACK: Duration = Duration::from_millis(400);

struct Rig {
    server: RedisServer,
    cache: Arc<TieredCache>,
    breaker: Arc<CircuitBreaker>,
    clock: Arc<ManualClock>,
    changes: mpsc::UnboundedReceiver<StateKind>,
}

async fn rig(namespace: &str) -> Rig {
    let server = RedisServer::start();
    let clock = ManualClock::shared();
    let (tx, changes) = mpsc::unbounded_channel();
    let breaker = Arc::new(
        CircuitBreaker::builder()
            .name("redis")
            .failure_threshold(FAILURE_THRESHOLD)
            .recovery_timeout(RECOVERY)
            .success_threshold(2)
            .half_open_max_calls(1)
            .clock(clock.clone())
            .on_state_change(move |change| {
                let _ = tx.send(change.to);
            })
            .build()
            .expect("valid breaker settings"),
    );
    let redis = RedisLayer::builder(server.url())
        .name("redis")
        .namespace(namespace)
        .timeout(OP_TIMEOUT)
        .connect_timeout(OP_TIMEOUT)
        .build()
        .await
        .expect("redis layer connects");
    let memory = MemoryLayer::builder()
        .max_entries(L1_ENTRIES)
        .shards(1)
        .build()
        .expect("valid memory settings");
    let policy: Arc<dyn FailurePolicy> = breaker.clone();
    let cache = TieredCache::builder()
        .tier(Tier::new(memory))
        .tier(Tier::new(redis).shared_policy(policy))
        .build()
        .expect("valid cache");
    Rig {
        server,
        cache: Arc::new(cache),
        breaker,
        clock,
        changes,
    }
}

/// What the load saw in one phase.
#[derive(Debug, Default)]
struct Phase {
    latencies: Vec<Duration>,
    errors: u64,
}

/// Several tasks calling `get_or_compute` in a loop; every call is filed
/// under the phase that was current when it started.
struct Load {
    cache: Arc<TieredCache>,
    phase: AtomicUsize,
    stop: AtomicBool,
    calls: AtomicU64,
    progress: Notify,
    loads: AtomicU64,
}

impl Load {
    fn start(cache: Arc<TieredCache>) -> (Arc<Self>, Vec<tokio::task::JoinHandle<Vec<Phase>>>) {
        let load = Arc::new(Load {
            cache,
            phase: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            calls: AtomicU64::new(0),
            progress: Notify::new(),
            loads: AtomicU64::new(0),
        });
        let workers = (0..WORKERS)
            .map(|w| {
                let load = load.clone();
                tokio::spawn(async move { load.work(w as u64).await })
            })
            .collect();
        (load, workers)
    }

    async fn work(&self, seed: u64) -> Vec<Phase> {
        let mut phases: Vec<Phase> = Vec::new();
        let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        while !self.stop.load(Ordering::Acquire) {
            // xorshift: a cheap, deterministic key choice per worker.
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let key = format!("offer:{}", rng % KEYS);
            let phase = self.phase.load(Ordering::Acquire);
            let started = Instant::now();
            let result = self
                .cache
                .get_or_compute(&key, TTL, || async {
                    self.loads.fetch_add(1, Ordering::Relaxed);
                    Ok::<_, std::io::Error>(format!("value of {key}"))
                })
                .await;
            let took = started.elapsed();
            if phases.len() <= phase {
                phases.resize_with(phase + 1, Phase::default);
            }
            let record = &mut phases[phase];
            record.latencies.push(took);
            match result {
                Ok(value) => assert_eq!(value, format!("value of {key}"), "a wrong value"),
                Err(error) => {
                    record.errors += 1;
                    eprintln!("a caller saw an error: {error}");
                }
            }
            self.calls.fetch_add(1, Ordering::AcqRel);
            self.progress.notify_waiters();
            // Let the driver and the other tasks in, on a busy machine.
            tokio::task::yield_now().await;
        }
        phases
    }

    /// Waits until `n` more calls have finished.
    async fn run_calls(&self, n: u64) {
        let target = self.calls.load(Ordering::Acquire) + n;
        let wait = async {
            loop {
                let notified = self.progress.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if self.calls.load(Ordering::Acquire) >= target {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(DEADLINE, wait)
            .await
            .expect("the load makes progress (no call hangs)");
    }

    fn next_phase(&self) -> usize {
        self.phase.fetch_add(1, Ordering::AcqRel) + 1
    }

    async fn finish(
        &self,
        workers: Vec<tokio::task::JoinHandle<Vec<Phase>>>,
        phases: usize,
    ) -> Vec<Phase> {
        self.stop.store(true, Ordering::Release);
        let mut merged: Vec<Phase> = (0..phases).map(|_| Phase::default()).collect();
        for worker in workers {
            let seen = tokio::time::timeout(DEADLINE, worker)
                .await
                .expect("workers stop")
                .expect("no worker panics");
            for (i, phase) in seen.into_iter().enumerate() {
                merged[i].latencies.extend(phase.latencies);
                merged[i].errors += phase.errors;
            }
        }
        for phase in &mut merged {
            phase.latencies.sort();
        }
        merged
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn max(phase: &Phase) -> Duration {
    phase.latencies.last().copied().unwrap_or_default()
}

/// While open, calls are L1 lookups, rejected L2 calls and an in-memory
/// loader: nothing waits on Redis. The strict check is the breaker's
/// admission count; the latency bounds leave room for a busy machine and
/// for the one slow case: a caller that joined the single-flight load of a
/// caller admitted before the breaker opened, whose write-through to a
/// frozen server runs into the operation timeout.
fn assert_open_phase_is_fast(phase: &Phase) {
    let p99 = percentile(&phase.latencies, 0.99);
    assert!(p99 < OP_TIMEOUT / 4, "open phase p99 {p99:?}");
    assert!(
        max(phase) < OP_TIMEOUT + SLACK,
        "open phase max {:?}",
        max(phase)
    );
}

fn report(test: &str, names: &[&str], phases: &[Phase]) {
    println!("{test}:");
    for (name, phase) in names.iter().zip(phases) {
        println!(
            "  {name:<28} calls {:>6}  errors {:>3}  p50 {:>9.3?}  p99 {:>9.3?}  max {:>9.3?}",
            phase.latencies.len(),
            phase.errors,
            percentile(&phase.latencies, 0.50),
            percentile(&phase.latencies, 0.99),
            max(phase),
        );
    }
}

/// The L2 tier's counters and the breaker's, taken together.
struct Snap {
    l2: TierStats,
    breaker: BreakerStats,
}

impl std::ops::Deref for Snap {
    type Target = TierStats;

    fn deref(&self) -> &TierStats {
        &self.l2
    }
}

fn snap(cache: &TieredCache, breaker: &CircuitBreaker) -> Snap {
    Snap {
        l2: cache.stats().tiers[1].clone(),
        breaker: breaker.stats(),
    }
}

fn print_snap(label: &str, snap: &Snap) {
    let (stats, b) = (&snap.l2, &snap.breaker);
    println!(
        "  L2 {label:<25} hits {:>6}  misses {:>6}  errors {:>4}  rejected {:>6} | breaker {} calls {} failures {} rejections {} changes {}",
        stats.hits,
        stats.misses,
        stats.errors,
        stats.rejected,
        b.state,
        b.calls,
        b.failures,
        b.rejections,
        b.state_changes
    );
}

/// Steps the clock past the recovery timeout until the breaker closes: a
/// trial may fail (a pooled connection broken by the fault) and open it
/// again, as it would in production. Returns the states seen on the way.
async fn recover(
    changes: &mut mpsc::UnboundedReceiver<StateKind>,
    clock: &ManualClock,
) -> Vec<StateKind> {
    let mut seen = Vec::new();
    for _ in 0..20 {
        clock.advance(RECOVERY);
        let step = wait_until(changes, &[StateKind::Closed, StateKind::Open]).await;
        let closed = step.last() == Some(&StateKind::Closed);
        seen.extend(step);
        if closed {
            return seen;
        }
    }
    panic!("the breaker did not close after 20 recovery timeouts: {seen:?}");
}

/// Waits for the breaker to report `state` (and returns the states seen
/// on the way).
async fn wait_for(
    changes: &mut mpsc::UnboundedReceiver<StateKind>,
    state: StateKind,
) -> Vec<StateKind> {
    wait_until(changes, &[state]).await
}

async fn wait_until(
    changes: &mut mpsc::UnboundedReceiver<StateKind>,
    any_of: &[StateKind],
) -> Vec<StateKind> {
    let mut seen = Vec::new();
    let wait = async {
        while let Some(next) = changes.recv().await {
            seen.push(next);
            if any_of.contains(&next) {
                return;
            }
        }
    };
    let reached = tokio::time::timeout(DEADLINE, wait).await.is_ok();
    assert!(
        reached,
        "the breaker did not reach {any_of:?} (saw {seen:?})"
    );
    seen
}

/// A recovery path: half-open, then either open again (a failed trial) or
/// closed, ending closed.
fn assert_recovery_path(path: &[StateKind]) {
    assert_eq!(path.last(), Some(&StateKind::Closed), "{path:?}");
    for pair in path.chunks(2) {
        assert_eq!(pair[0], StateKind::HalfOpen, "{path:?}");
        assert!(
            pair.len() == 2 && pair[1] != StateKind::HalfOpen,
            "{path:?}"
        );
    }
}

/// Runs the five phases under load (healthy; `fault` until the breaker
/// opens; open; `heal` and recovery through half-open; closed again),
/// prints the figures, and checks what every fault must show: no error
/// reached a caller, the breaker opened within its threshold, an open
/// breaker kept calls off Redis and was fast, and recovery went through
/// half-open to closed with L2 hits resuming. Returns what each phase saw.
async fn scenario(
    namespace: &str,
    title: &str,
    names: [&str; 5],
    fault: fn(&mut RedisServer),
    heal: fn(&mut RedisServer),
) -> Vec<Phase> {
    let Rig {
        mut server,
        cache,
        breaker,
        clock,
        mut changes,
    } = rig(namespace).await;
    let (load, workers) = Load::start(cache.clone());

    // 0: healthy.
    load.run_calls(PHASE_CALLS).await;
    let healthy = snap(&cache, &breaker);
    assert!(healthy.hits > 0, "L2 answers reads the small L1 misses");
    assert_eq!(breaker.state().kind(), StateKind::Closed);

    // 1: the fault, until the breaker opens.
    load.next_phase();
    tokio::task::block_in_place(|| fault(&mut server));
    wait_for(&mut changes, StateKind::Open).await;
    let at_open = snap(&cache, &breaker);

    // 2: open: calls skip Redis.
    load.next_phase();
    load.run_calls(PHASE_CALLS).await;
    let after_open = snap(&cache, &breaker);

    // 3: heal, step past the recovery timeout: half-open, then closed.
    load.next_phase();
    tokio::task::block_in_place(|| heal(&mut server));
    let path = recover(&mut changes, &clock).await;
    let at_close = snap(&cache, &breaker);

    // 4: closed again: L2 hits resume.
    load.next_phase();
    load.run_calls(3 * PHASE_CALLS).await;
    let recovered = snap(&cache, &breaker);

    let phases = load.finish(workers, 5).await;
    report(title, &names, &phases);
    print_snap("after healthy", &healthy);
    print_snap("at open", &at_open);
    print_snap("after open phase", &after_open);
    print_snap("at close", &at_close);
    print_snap("after recovery", &recovered);
    println!("  loader calls {}", load.loads.load(Ordering::Relaxed));
    println!("  recovery path {path:?}");

    // Callers never saw an error: values came from L1 or the loader.
    for (i, phase) in phases.iter().enumerate() {
        assert_eq!(phase.errors, 0, "phase {i}: errors surfaced to callers");
    }
    // The breaker opened within its threshold, give or take the calls that
    // were already in flight (each worker has at most one L2 call at a
    // time: a get, or the loader's write-through).
    // (The breaker's own count: the tier's error counter is bumped just
    // after the breaker hears of the failure, so it may lag by a call.)
    let errors_to_open = at_open.breaker.failures - healthy.breaker.failures;
    assert!(errors_to_open >= u64::from(FAILURE_THRESHOLD));
    assert!(
        errors_to_open <= u64::from(FAILURE_THRESHOLD) + 2 * WORKERS as u64,
        "{errors_to_open} L2 errors before the breaker opened"
    );
    // Once open, no call went to Redis: the breaker admitted nothing (only
    // calls in flight when it opened still ended).
    let admitted_while_open = after_open.breaker.calls - at_open.breaker.calls;
    assert!(
        admitted_while_open <= 2 * WORKERS as u64,
        "{admitted_while_open} calls reached Redis while open"
    );
    // And the load did ask L2: most calls miss the small L1 (32 entries over
    // 400 keys) and each miss asks L2 once (a tier that failed open in a
    // call is not written in the same call), which the open breaker rejects.
    let rejected_while_open = after_open.rejected - at_open.rejected;
    assert!(
        rejected_while_open >= PHASE_CALLS * 3 / 4,
        "only {rejected_while_open} L2 calls rejected while open"
    );
    assert_open_phase_is_fast(&phases[2]);
    assert_recovery_path(&path);
    assert!(
        recovered.hits > at_close.hits,
        "L2 hits resume after recovery"
    );
    assert_eq!(breaker.state().kind(), StateKind::Closed);
    phases
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_then_restart() {
    scenario(
        "fi-kill:",
        "SIGKILL, then restart",
        [
            "healthy",
            "killed, until open",
            "open",
            "restarted, until closed",
            "closed again",
        ],
        RedisServer::kill,
        RedisServer::restart,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigstop_then_sigcont() {
    let phases = scenario(
        "fi-stop:",
        "SIGSTOP, then SIGCONT",
        [
            "healthy",
            "stopped, until open",
            "open",
            "continued, until closed",
            "closed again",
        ],
        RedisServer::pause,
        RedisServer::resume,
    )
    .await;
    // No call waited on the frozen server past the operation timeout: a
    // call whose L2 read failed does not write the loaded value to L2, so
    // it pays for the frozen server once (the read, or else the loader's
    // write). The slack covers scheduling, and the rare caller that waited
    // on its own read and then on a leader still writing.
    let bound = OP_TIMEOUT + SLACK;
    for (i, phase) in phases.iter().enumerate() {
        assert!(
            max(phase) < bound,
            "phase {i}: a call took {:?}",
            max(phase)
        );
    }
}
