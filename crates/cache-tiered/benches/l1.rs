//! The L1 hit path: a typed `TieredCache::get` over a `MemoryLayer`, beside
//! a raw `quick_cache::sync::Cache::get` and a `moka::sync::Cache::get` of
//! the same ~200-byte value, on one thread and on two.
//!
//! Two value shapes: `Arc<Offer>` (what a hot cache should hold: a hit is a
//! reference count) and a plain `Offer` (a hit clones the struct).
//! Ratios (ours / theirs, lower is better) go to `target/bench/l1.json`.

use std::hint::black_box;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use cache_memory::MemoryLayer;
use cache_test_support::bench::{Offer, offer, target_dir, write_results};
use cache_tiered::TieredCache;
use criterion::{Criterion, criterion_group};

const KEYS: usize = 10_000;
const TTL: Duration = Duration::from_secs(3600);

fn keys() -> Vec<String> {
    (0..KEYS).map(|i| format!("offer:{i}")).collect()
}

/// Starts `threads` threads, each running `work(thread_index, start_line)`;
/// `work` waits on the start line once it is ready to measure. Returns the
/// wall time from the start line to the last thread's end.
fn time_threads<W>(threads: usize, work: W) -> Duration
where
    W: Fn(usize, &Barrier) + Send + Sync + Clone + 'static,
{
    let start_line = Arc::new(Barrier::new(threads + 1));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (work, start_line) = (work.clone(), start_line.clone());
            std::thread::spawn(move || work(t, &start_line))
        })
        .collect();
    start_line.wait();
    let started = Instant::now();
    for handle in handles {
        handle.join().unwrap();
    }
    started.elapsed()
}

/// The key thread `t` reads at iteration `i`.
fn key_at(keys: &[String], t: usize, i: usize) -> &str {
    &keys[(i * 7 + t * 4099) % KEYS]
}

/// Runs `get` over the keys `iters` times on each of `threads` threads and
/// returns the wall time: per iteration, `threads` gets ran at once.
fn run_threads<G>(threads: usize, iters: u64, keys: &Arc<Vec<String>>, get: G) -> Duration
where
    G: Fn(&str) + Send + Sync + Clone + 'static,
{
    let keys = keys.clone();
    time_threads(threads, move |t, start_line| {
        start_line.wait();
        for i in 0..iters as usize {
            get(key_at(&keys, t, i));
        }
    })
}

/// The same for the typed async get: each thread drives its own
/// current-thread runtime, awaiting gets in a loop as a request handler would.
fn typed_get<T>(
    threads: usize,
    iters: u64,
    keys: &Arc<Vec<String>>,
    cache: &TieredCache,
) -> Duration
where
    T: serde::de::DeserializeOwned + Clone + Send + Sync + 'static,
{
    let (keys, cache) = (keys.clone(), cache.clone());
    time_threads(threads, move |t, start_line| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(async {
            start_line.wait();
            for i in 0..iters as usize {
                let key = key_at(&keys, t, i);
                black_box(cache.get::<T>(key).await.unwrap().unwrap());
            }
        });
    })
}

fn l1_get(c: &mut Criterion) {
    let keys = Arc::new(keys());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();

    let l1 = |stats: bool| {
        let layer = MemoryLayer::builder()
            .max_entries(2 * KEYS as u64)
            .stats(stats)
            .build();
        TieredCache::builder()
            .layer(layer.unwrap())
            .stats(stats)
            .build()
            .unwrap()
    };
    let (tiered, tiered_arc) = (l1(true), l1(true));
    // The same with every counter off, for what stats cost a hit.
    let tiered_arc_nostats = l1(false);
    let raw_owned = Arc::new(quick_cache::sync::Cache::<String, Offer>::new(2 * KEYS));
    let raw_arc = Arc::new(quick_cache::sync::Cache::<String, Arc<Offer>>::new(
        2 * KEYS,
    ));
    let moka_owned = moka::sync::Cache::<String, Offer>::new(2 * KEYS as u64);
    let moka_arc = moka::sync::Cache::<String, Arc<Offer>>::new(2 * KEYS as u64);
    runtime.block_on(async {
        for (i, key) in keys.iter().enumerate() {
            let value = offer(i as u64);
            tiered.set(key, &value, TTL).await.unwrap();
            tiered_arc
                .set(key, &Arc::new(value.clone()), TTL)
                .await
                .unwrap();
            tiered_arc_nostats
                .set(key, &Arc::new(value.clone()), TTL)
                .await
                .unwrap();
            raw_owned.insert(key.clone(), value.clone());
            raw_arc.insert(key.clone(), Arc::new(value.clone()));
            moka_owned.insert(key.clone(), value.clone());
            moka_arc.insert(key.clone(), Arc::new(value));
        }
        // The first hit of each key decodes and memoizes; measure the steady state.
        for key in keys.iter() {
            tiered.get::<Offer>(key).await.unwrap().unwrap();
            tiered_arc.get::<Arc<Offer>>(key).await.unwrap().unwrap();
            tiered_arc_nostats
                .get::<Arc<Offer>>(key)
                .await
                .unwrap()
                .unwrap();
        }
    });

    let mut group = c.benchmark_group("l1_get");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for threads in [1usize, 2] {
        group.bench_function(format!("tiered_arc_{threads}t"), |b| {
            b.iter_custom(|iters| typed_get::<Arc<Offer>>(threads, iters, &keys, &tiered_arc))
        });
        group.bench_function(format!("tiered_arc_nostats_{threads}t"), |b| {
            b.iter_custom(|iters| {
                typed_get::<Arc<Offer>>(threads, iters, &keys, &tiered_arc_nostats)
            })
        });
        let raw = raw_arc.clone();
        bench_sync(&mut group, "quick_cache_arc", threads, &keys, move |key| {
            black_box(raw.get(key).unwrap());
        });
        let moka = moka_arc.clone();
        bench_sync(&mut group, "moka_arc", threads, &keys, move |key| {
            black_box(moka.get(key).unwrap());
        });
        group.bench_function(format!("tiered_owned_{threads}t"), |b| {
            b.iter_custom(|iters| typed_get::<Offer>(threads, iters, &keys, &tiered))
        });
        let raw = raw_owned.clone();
        bench_sync(
            &mut group,
            "quick_cache_owned",
            threads,
            &keys,
            move |key| {
                black_box(raw.get(key).unwrap());
            },
        );
        let moka = moka_owned.clone();
        bench_sync(&mut group, "moka_owned", threads, &keys, move |key| {
            black_box(moka.get(key).unwrap());
        });
    }
    group.finish();
}

/// Benchmarks a synchronous `get` on `threads` threads as `{name}_{threads}t`.
fn bench_sync<G>(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    threads: usize,
    keys: &Arc<Vec<String>>,
    get: G,
) where
    G: Fn(&str) + Send + Sync + Clone + 'static,
{
    group.bench_function(format!("{name}_{threads}t"), |b| {
        b.iter_custom(|iters| run_threads(threads, iters, keys, get.clone()))
    });
}

criterion_group!(benches, l1_get);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    if let Err(error) = write_ratios() {
        eprintln!("could not write the ratios: {error}");
        std::process::exit(1);
    }
}

/// Mean nanoseconds per iteration, as criterion recorded it.
fn mean_ns(id: &str) -> Result<f64, String> {
    let path = target_dir().join(format!("criterion/l1_get/{id}/new/estimates.json"));
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    json["mean"]["point_estimate"]
        .as_f64()
        .ok_or_else(|| format!("{}: no mean", path.display()))
}

fn write_ratios() -> Result<(), String> {
    let mut report = serde_json::Map::new();
    for shape in ["arc", "owned"] {
        for threads in [1, 2] {
            let ours = mean_ns(&format!("tiered_{shape}_{threads}t"))?;
            let raw = mean_ns(&format!("quick_cache_{shape}_{threads}t"))?;
            let moka = mean_ns(&format!("moka_{shape}_{threads}t"))?;
            report.insert(
                format!("{shape}_{threads}t"),
                serde_json::json!({
                    "tiered_ns": ours,
                    "quick_cache_ns": raw,
                    "moka_ns": moka,
                    "tiered_over_quick_cache": ours / raw,
                    "tiered_over_moka": ours / moka,
                    "target": "tiered_over_quick_cache <= 2.0 and tiered_over_moka < 1.0",
                    "met": ours / raw <= 2.0 && ours < moka,
                }),
            );
        }
    }
    // What the counters cost an L1 hit: the same cache with every counter
    // off (the composer's and the memory layer's), Arc values.
    for threads in [1, 2] {
        let on = mean_ns(&format!("tiered_arc_{threads}t"))?;
        let off = mean_ns(&format!("tiered_arc_nostats_{threads}t"))?;
        report.insert(
            format!("stats_cost_{threads}t"),
            serde_json::json!({
                "stats_on_ns": on,
                "stats_off_ns": off,
                "on_over_off": on / off,
                "target": "on_over_off <= 1.05",
                "met": on / off <= 1.05,
            }),
        );
    }
    let text = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
    write_results("l1", &text).map_err(|e| e.to_string())?;
    println!("{text}");
    Ok(())
}
