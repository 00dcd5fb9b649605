//! Hits during a sweep of a million entries: whether a sweep stalls the
//! reads of the shards it walks.
//!
//! Run by `cargo xtask bench` (or `cargo bench -p cache-memory --bench
//! sweep`); writes `target/bench/sweep.json`.
//!
//! A layer holds 1,000,000 entries (10-byte keys, 64-byte values); half of
//! them have expired on the layer's clock. One thread reads the live half
//! in a random order, timing each hit, while nothing else runs ("outside"),
//! then while another thread sweeps the expired half away ("during"). The
//! figure is the 99.9th percentile of a hit during a sweep over the same
//! percentile outside one (issue 13's target: at most 2), the median of
//! [`ROUNDS`] rounds, each refilling the expired half first.

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use cache_core::{CacheLayer, CallContext, Clock, Entry, ManualClock, Operation, ReadNow};
use cache_memory::MemoryLayer;
use cache_test_support::bench::write_results;

const ENTRIES: usize = 1_000_000;
const VALUE: [u8; 64] = [7; 64];
const ROUNDS: usize = 3;

fn main() {
    // `cargo test --benches` runs bench targets without `--bench`: skip there.
    if !std::env::args().any(|arg| arg == "--bench") {
        return;
    }
    let clock = ManualClock::shared();
    let layer = MemoryLayer::builder()
        .max_entries(2 * ENTRIES as u64)
        .max_bytes(1 << 30)
        .clock(clock.clone())
        .sweep_interval(None)
        .build()
        .expect("a valid configuration");
    let keys: Vec<String> = (0..ENTRIES).map(|i| format!("k{i:09}")).collect();
    let (live, dying): (Vec<&str>, Vec<&str>) = keys.iter().map(String::as_str).enumerate().fold(
        (Vec::new(), Vec::new()),
        |(mut live, mut dying), (i, key)| {
            match i % 2 {
                0 => live.push(key),
                _ => dying.push(key),
            }
            (live, dying)
        },
    );
    let order = shuffled(&live);
    let far = clock.now() + Duration::from_secs(3600);
    fill(&layer, &*clock, &live, far);

    let mut rounds = Vec::new();
    for round in 0..ROUNDS {
        let soon = clock.now() + Duration::from_secs(1);
        fill(&layer, &*clock, &dying, soon);
        clock.advance(Duration::from_secs(2));
        assert_eq!(layer.len(), ENTRIES, "every entry held");

        let outside = hits(&layer, &*clock, &order, || None);
        let sweeping = AtomicBool::new(true);
        let (during, swept, took) = std::thread::scope(|scope| {
            let sweeper = scope.spawn(|| {
                let started = Instant::now();
                let swept = layer.sweep_expired();
                sweeping.store(false, Ordering::Release);
                (swept, started.elapsed())
            });
            let during = hits(&layer, &*clock, &order, || {
                Some(!sweeping.load(Ordering::Acquire))
            });
            let (swept, took) = sweeper.join().expect("the sweep");
            (during, swept, took)
        });
        assert_eq!(
            swept,
            dying.len() as u64,
            "the sweep took every expired entry"
        );
        let ratio = during.p999 / outside.p999;
        println!(
            "round {round}: {swept} swept in {took:?}; hit p99.9 {:.0} ns outside, {:.0} ns during ({ratio:.2}x); {} hits during",
            outside.p999, during.p999, during.count
        );
        rounds.push(serde_json::json!({
            "outside": outside.json(),
            "during": during.json(),
            "p999_during_over_outside": ratio,
            "swept": swept,
            "sweep_ms": took.as_secs_f64() * 1e3,
        }));
    }
    let mut ratios: Vec<f64> = rounds
        .iter()
        .map(|round| {
            round["p999_during_over_outside"]
                .as_f64()
                .unwrap_or(f64::NAN)
        })
        .collect();
    ratios.sort_by(f64::total_cmp);
    let report = serde_json::json!({
        "entries": ENTRIES,
        "rounds": rounds,
        "p999_during_over_outside": ratios[ratios.len() / 2],
        "target": "<= 2 (issue 13)",
        "method": "1,000,000 entries, half expired; one thread times each hit of the live half in random order, outside a sweep and while another thread sweeps; median of 3 rounds",
    });
    let text = serde_json::to_string_pretty(&report).expect("json");
    let path = write_results("sweep", &text).expect("results written");
    println!("{text}\nwritten to {}", path.display());
}

fn fill(layer: &MemoryLayer, clock: &dyn Clock, keys: &[&str], expires: Instant) {
    let ctx = CallContext::new(clock, Operation::Write);
    futures::executor::block_on(async {
        for key in keys {
            let entry = Entry::new(&VALUE[..]).expires_at(expires);
            layer.set(&ctx, key, entry).await.expect("stored");
        }
    });
}

/// Hit latencies, in nanoseconds.
struct Latencies {
    count: usize,
    p50: f64,
    p99: f64,
    p999: f64,
    max: f64,
}

impl Latencies {
    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "hits": self.count,
            "p50_ns": self.p50,
            "p99_ns": self.p99,
            "p999_ns": self.p999,
            "max_ns": self.max,
        })
    }
}

/// Times hits of `order`, cycling, until `done` says so (asked every 256
/// hits), or for one pass if it never does.
fn hits(
    layer: &MemoryLayer,
    clock: &dyn Clock,
    order: &[&str],
    done: impl Fn() -> Option<bool>,
) -> Latencies {
    let mut samples = Vec::with_capacity(order.len());
    for (i, key) in order.iter().cycle().enumerate() {
        if i % 256 == 0 {
            match done() {
                Some(true) => break,
                None if i >= order.len() => break,
                _ => {}
            }
        }
        let started = Instant::now();
        let hit = layer.get_now(clock, key);
        let took = started.elapsed();
        assert!(matches!(black_box(hit), ReadNow::Hit(_)), "a live key hits");
        samples.push(took.as_nanos() as u64);
    }
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize] as f64;
    Latencies {
        count: samples.len(),
        p50: at(0.5),
        p99: at(0.99),
        p999: at(0.999),
        max: at(1.0),
    }
}

/// `keys` in a fixed pseudo-random order (xorshift64).
fn shuffled<'a>(keys: &[&'a str]) -> Vec<&'a str> {
    let mut order = keys.to_vec();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for i in (1..order.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        order.swap(i, (x % (i as u64 + 1)) as usize);
    }
    order
}
