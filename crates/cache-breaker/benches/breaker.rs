//! What the breaker costs a healthy call: the closed path (`admit` plus
//! `record(Success)`, as a composer does it, and `call` over a ready
//! future) beside the same call made bare, on one thread and on two.
//!
//! Criterion prints its usual report; the figures a tool collects (ns per
//! call, overhead in ns and as a ratio) are written to
//! `$CARGO_TARGET_DIR/bench/breaker.json` (else the workspace's
//! `target/bench/breaker.json`) when run by `cargo bench`.
#![allow(missing_docs)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cache_breaker::CircuitBreaker;
use cache_core::{Admission, CallOutcome, FailurePolicy, Operation};
use cache_test_support::bench::write_results;
use criterion::Criterion;
use futures::FutureExt;

/// The guarded work: as small as a call gets, so the overhead shows.
#[inline(never)]
fn work(x: u64) -> Result<u64, ()> {
    Ok(x.wrapping_mul(31).wrapping_add(7))
}

fn bare(x: u64) -> u64 {
    work(black_box(x)).unwrap_or_default()
}

fn guarded(policy: &dyn FailurePolicy, x: u64) -> u64 {
    let Admission::Allow(ticket) = policy.admit(Operation::Read) else {
        return 0;
    };
    let result = work(black_box(x));
    let outcome = CallOutcome::Success {
        elapsed: black_box(Duration::ZERO),
    };
    policy.record(Operation::Read, ticket, outcome);
    result.unwrap_or(0)
}

fn bare_future(x: u64) -> u64 {
    async { work(black_box(x)) }
        .now_or_never()
        .and_then(Result::ok)
        .unwrap_or(0)
}

fn call_future(breaker: &CircuitBreaker, x: u64) -> u64 {
    breaker
        .call(|| async { work(black_box(x)) })
        .now_or_never()
        .and_then(Result::ok)
        .unwrap_or(0)
}

fn breaker() -> Arc<CircuitBreaker> {
    Arc::new(
        CircuitBreaker::builder()
            .build()
            .expect("default settings are valid"),
    )
}

type Case = (&'static str, Arc<dyn Fn(u64) -> u64 + Send + Sync>);

fn cases() -> Vec<Case> {
    let b = breaker();
    let policy: Arc<dyn FailurePolicy> = b.clone();
    vec![
        ("bare_call", Arc::new(bare)),
        ("admit_record", Arc::new(move |x| guarded(&*policy, x))),
        ("bare_future", Arc::new(bare_future)),
        ("call_ready_future", Arc::new(move |x| call_future(&b, x))),
    ]
}

/// Runs `f` `iters` times on each of `threads` threads at once; returns the
/// wall time (so time over `iters` is each thread's time per call while all
/// run).
fn run(f: &Arc<dyn Fn(u64) -> u64 + Send + Sync>, threads: usize, iters: u64) -> Duration {
    let start = Instant::now();
    std::thread::scope(|scope| {
        for t in 0..threads {
            let f = f.clone();
            scope.spawn(move || {
                let mut acc = 0u64;
                for i in 0..iters {
                    acc = acc.wrapping_add(f(i ^ t as u64));
                }
                black_box(acc);
            });
        }
    });
    start.elapsed()
}

fn criterion_benches(c: &mut Criterion) {
    for threads in [1usize, 2] {
        let mut group = c.benchmark_group(format!("closed_path/{threads}_thread"));
        for (name, f) in cases() {
            group.bench_function(name, |b| {
                b.iter_custom(|iters| run(&f, threads, iters));
            });
        }
        group.finish();
    }
}

/// Our own figures for the JSON file: the best of a few runs of a few
/// million calls (the minimum is the steadiest estimate on a shared box).
fn measure(f: &Arc<dyn Fn(u64) -> u64 + Send + Sync>, threads: usize) -> (f64, f64) {
    const ITERS: u64 = 2_000_000;
    const RUNS: usize = 7;
    run(f, threads, ITERS / 10); // warm up
    let mut samples: Vec<f64> = (0..RUNS)
        .map(|_| run(f, threads, ITERS).as_nanos() as f64 / ITERS as f64)
        .collect();
    samples.sort_by(f64::total_cmp);
    (samples[0], samples[RUNS / 2])
}

fn write_json() {
    let cases = cases();
    let mut results = Vec::new();
    for threads in [1usize, 2] {
        let figures: Vec<(&str, f64, f64)> = cases
            .iter()
            .map(|(name, f)| {
                let (best, median) = measure(f, threads);
                (*name, best, median)
            })
            .collect();
        let find = |name: &str| {
            figures
                .iter()
                .find(|(n, ..)| *n == name)
                .map_or((f64::NAN, f64::NAN), |(_, best, median)| (*best, *median))
        };
        for (guarded, baseline) in [
            ("admit_record", "bare_call"),
            ("call_ready_future", "bare_future"),
        ] {
            let (ns, ns_median) = find(guarded);
            let (bare_ns, _) = find(baseline);
            let overhead = ns - bare_ns;
            println!(
                "breaker {guarded} ({threads} thread): {ns:.2} ns/call (median {ns_median:.2}), \
                 bare {baseline} {bare_ns:.2} ns/call, overhead {overhead:.2} ns, ratio {:.2}",
                ns / bare_ns
            );
            results.push(serde_json::json!({
                "name": format!("closed_path/{guarded}"),
                "threads": threads,
                "ns_per_call": round(ns),
                "ns_per_call_median": round(ns_median),
                "baseline": baseline,
                "baseline_ns_per_call": round(bare_ns),
                "overhead_ns_per_call": round(overhead),
                "overhead_ratio": round(ns / bare_ns),
            }));
        }
    }
    let report = serde_json::json!({
        "bench": "breaker",
        "what": "circuit breaker closed-path overhead per call vs the bare call; \
                 admit_record = FailurePolicy admit + record(Success) through Arc<dyn FailurePolicy>; \
                 call_ready_future = breaker.call over a ready future, polled once. \
                 ns_per_call = best of 7 runs of 2M calls; with 2 threads, each thread's time per call while both run",
        "unit": "ns/call",
        "results": results,
    });
    let text = serde_json::to_string_pretty(&report).unwrap_or_default();
    match write_results("breaker", &text) {
        Ok(path) => println!("wrote {}", path.display()),
        Err(error) => eprintln!("could not write target/bench/breaker.json: {error}"),
    }
}

fn round(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` does not, and
    // then criterion runs each benchmark once as a smoke test.
    let benching = std::env::args().any(|arg| arg == "--bench");
    let mut criterion = Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sample_size(30)
        .configure_from_args();
    criterion_benches(&mut criterion);
    criterion.final_summary();
    if benching {
        write_json();
    }
}
