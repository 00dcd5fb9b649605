//! L2 throughput: RedisLayer beside the raw redis crate and `redis-benchmark`.
//!
//! One throwaway `redis-server` serves every client in the run. For GET and
//! SET of 256-byte values at 1, 16 and 64 concurrent tasks it measures ops/s
//! of
//! - `layer`: `RedisLayer::get` / `set` (entry with a 5-minute expiry);
//! - `raw`: one `MultiplexedConnection` shared by the tasks, sending the
//!   same Redis commands the layer sends: a plain `GET`, and
//!   `SET ... PXAT` of the same bytes (header and value);
//! - `redis_benchmark`: `redis-benchmark -d 256 -c N -t get,set`
//!   (one connection per client, no pipelining).
//!
//! And `stack_get`, a typed read that misses the L1 and hits Redis: a
//! `TieredCache` of a `MemoryLayer` (two entries, so a read of 1,000 keys in
//! turn nearly always misses it and fills it) over the same `RedisLayer`,
//! reading the benchmarks' ~200-byte `Offer`, beside the raw client's plain
//! `GET` of the same bytes and a postcard decode of the value in them
//! (issue 13's target: at least 0.85 of that at 64 tasks).
//!
//! Layer and raw alternate in interleaved rounds against the same server;
//! the medians, the ratio layer ÷ raw (median of the per-round ratios) and
//! the machine's load average go to `target/bench/l2.json` (or
//! `$CARGO_TARGET_DIR/bench/l2.json`); criterion then times single calls for
//! its own report.
//!
//! Run: `cargo bench -p cache-redis --bench l2` (about two minutes).
//! `L2_BENCH_ONLY=get@64,set@64` measures only those cases (a partial
//! run's JSON says `"complete": false`); `L2_BENCH_POOL_MAX_OPEN=n` sets the
//! layer's pool size.

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cache_core::{CacheLayer, Entry};
use cache_memory::MemoryLayer;
use cache_redis::RedisLayer;
use cache_test_support::bench::{Offer, load_average, offer, write_results};
use cache_test_support::ctx;
use cache_test_support::redis::RedisServer;
use cache_tiered::{Tier, TieredCache};
use criterion::Criterion;
use redis::aio::MultiplexedConnection;

const VALUE_SIZE: usize = 256;
const KEYS: usize = 1000;
const CONCURRENCY: [usize; 3] = [1, 16, 64];
/// Each op/concurrency is measured in `ROUNDS` rounds of `ROUND` per
/// client. Within a round the layer and the raw client run back to back
/// (which goes first alternates), so both see the same background load; the
/// ratio kept is the median of the per-round ratios, which a burst of load
/// during a few rounds does not move.
const ROUNDS: usize = 9;
const ROUND: Duration = Duration::from_millis(500);
/// Issue 13's targets: a GET at least 0.9 of the raw client's, a SET 0.95.
const TARGET_RATIO: f64 = 0.9;
const SET_TARGET_RATIO: f64 = 0.95;
/// The target of `stack_get` (an L1 miss and a fill on top of the read).
const STACK_TARGET_RATIO: f64 = 0.85;
/// The bytes before the postcard payload of a typed value in Redis: the
/// layer's header (19) and the value's envelope (14).
const STACK_HEADERS: usize = 19 + 14;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Op {
    Get,
    Set,
    /// A typed read through an L1 that misses, from Redis.
    StackGet,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Get => "get",
            Op::Set => "set",
            Op::StackGet => "stack_get",
        }
    }

    fn target(self) -> f64 {
        match self {
            Op::StackGet => STACK_TARGET_RATIO,
            Op::Get => TARGET_RATIO,
            Op::Set => SET_TARGET_RATIO,
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Client {
    Layer,
    Raw,
}

struct Fixture {
    layer: RedisLayer,
    /// A two-entry L1 over `layer`: reads of `stack_keys` in turn miss it.
    stack: TieredCache,
    stack_keys: Arc<Vec<String>>,
    raw: MultiplexedConnection,
    keys: Arc<Vec<String>>,
    value: Arc<Vec<u8>>,
    server_pid: String,
}

fn key(n: usize) -> String {
    format!("k{n}")
}

fn stack_key(n: usize) -> String {
    format!("offer:{n}")
}

async fn one_op(
    fixture: &Fixture,
    raw: &mut MultiplexedConnection,
    client: Client,
    op: Op,
    n: usize,
) {
    let key = &fixture.keys[n % KEYS];
    match (client, op) {
        (Client::Layer, Op::Get) => {
            let hit = fixture
                .layer
                .get(&ctx::read(), key)
                .await
                .expect("layer get");
            assert!(hit.is_some());
        }
        (Client::Layer, Op::Set) => {
            let entry = Entry::new(fixture.value.to_vec())
                .expires_at(Instant::now() + Duration::from_secs(300));
            fixture
                .layer
                .set(&ctx::write(), key, entry)
                .await
                .expect("layer set");
        }
        (Client::Raw, Op::Get) => {
            let full = fixture.layer.redis_key(key);
            let value: Option<Vec<u8>> = redis::cmd("GET")
                .arg(&full)
                .query_async(raw)
                .await
                .expect("raw get");
            assert!(value.is_some());
        }
        (Client::Layer, Op::StackGet) => {
            let key = &fixture.stack_keys[n % KEYS];
            let hit: Option<Offer> = fixture.stack.get(key).await.expect("stack get");
            assert!(hit.is_some_and(|offer| offer.id == (n % KEYS) as u64));
        }
        (Client::Raw, Op::StackGet) => {
            let full = fixture.layer.redis_key(&fixture.stack_keys[n % KEYS]);
            let bytes: Option<Vec<u8>> = redis::cmd("GET")
                .arg(&full)
                .query_async(raw)
                .await
                .expect("raw get");
            let bytes = bytes.expect("a hit");
            let decoded: Offer =
                postcard::from_bytes(&bytes[STACK_HEADERS..]).expect("the layout the stack writes");
            assert_eq!(decoded.id, (n % KEYS) as u64);
        }
        (Client::Raw, Op::Set) => {
            let full = fixture.layer.redis_key(key);
            // The same bytes the layer would store: the 19-byte header
            // (magic, version, flags, expiry, as of) and the value.
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("after 1970");
            let expires_ms = now.as_millis() as u64 + 300_000;
            let mut stored = Vec::with_capacity(VALUE_SIZE + 19);
            stored.extend_from_slice(&[0xCA, 2, 0]);
            stored.extend_from_slice(&expires_ms.to_be_bytes());
            stored.extend_from_slice(&(now.as_micros() as u64).to_be_bytes());
            stored.extend_from_slice(&fixture.value);
            let () = redis::cmd("SET")
                .arg(&full)
                .arg(stored)
                .arg("PXAT")
                .arg(expires_ms)
                .query_async(raw)
                .await
                .expect("raw set");
        }
    }
}

/// One measured round: throughput, and the CPU time the client (this
/// process) and the server spent per operation. The CPU figures tell a
/// layer that costs the client more CPU from one that batches worse on the
/// socket (which costs the server more).
#[derive(Clone, Copy)]
struct Sample {
    ops_per_sec: f64,
    client_ns_per_op: f64,
    server_ns_per_op: f64,
}

/// Nanoseconds of CPU the threads of process `pid` (`"self"`: this one)
/// have run so far, from `/proc/<pid>/task/*/schedstat` (Linux; 0 elsewhere).
fn cpu_ns(pid: &str) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok())
        .filter_map(|stat| stat.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// `concurrency` tasks running `op` for `ROUND`.
async fn throughput(fixture: &Arc<Fixture>, client: Client, op: Op, concurrency: usize) -> Sample {
    let (client_before, server_before) = (cpu_ns("self"), cpu_ns(&fixture.server_pid));
    let started = Instant::now();
    let end = started + ROUND;
    let tasks: Vec<_> = (0..concurrency)
        .map(|task| {
            let fixture = fixture.clone();
            tokio::spawn(async move {
                let mut raw = fixture.raw.clone();
                let mut done = 0u64;
                let mut n = task * 7919;
                while Instant::now() < end {
                    one_op(&fixture, &mut raw, client, op, n).await;
                    n += 1;
                    done += 1;
                }
                done
            })
        })
        .collect();
    let mut total = 0;
    for task in tasks {
        total += task.await.expect("bench task");
    }
    let elapsed = started.elapsed().as_secs_f64();
    let ops = total.max(1) as f64;
    Sample {
        ops_per_sec: total as f64 / elapsed,
        client_ns_per_op: cpu_ns("self").saturating_sub(client_before) as f64 / ops,
        server_ns_per_op: cpu_ns(&fixture.server_pid).saturating_sub(server_before) as f64 / ops,
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    values[values.len() / 2]
}

/// `redis-benchmark` ops/s for `op` at `clients` connections, if it is installed.
fn redis_benchmark(port: u16, op: Op, clients: usize) -> Option<f64> {
    let requests = (clients * 15_000).clamp(15_000, 100_000);
    let output = Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-d", &VALUE_SIZE.to_string()])
        .args(["-c", &clients.to_string()])
        .args(["-n", &requests.to_string()])
        .args(["-t", op.name(), "--csv"])
        .output()
        .ok()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    // "test","rps",...  then  "GET","81234.56",...
    stdout.lines().find_map(|line| {
        let mut fields = line.split(',').map(|f| f.trim_matches('"'));
        let test = fields.next()?;
        let rps = fields.next()?;
        test.eq_ignore_ascii_case(op.name())
            .then(|| rps.parse().ok())
            .flatten()
    })
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let server = RedisServer::start();
    let fixture = runtime.block_on(async {
        // The default configuration, unless L2_BENCH_POOL_MAX_OPEN says otherwise.
        let mut builder = RedisLayer::builder(server.url()).namespace("bench:");
        if let Some(max_open) = std::env::var("L2_BENCH_POOL_MAX_OPEN")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            builder = builder.pool_max_open(max_open);
        }
        let layer = builder.build().await.expect("layer");
        let raw = redis::Client::open(server.url())
            .expect("url")
            .get_multiplexed_async_connection()
            .await
            .expect("raw connection");
        let l1 = MemoryLayer::builder()
            .max_entries(2)
            .sweep_interval(None)
            .build()
            .expect("l1");
        let stack = TieredCache::builder()
            .layer(l1)
            .tier(Tier::new(layer.clone()))
            .build()
            .expect("stack");
        let stack_keys: Vec<String> = (0..KEYS).map(stack_key).collect();
        for (n, key) in stack_keys.iter().enumerate() {
            let value = offer(n as u64);
            stack
                .set(key, &value, Duration::from_secs(300))
                .await
                .expect("stack set");
        }
        let fixture = Arc::new(Fixture {
            layer,
            stack,
            stack_keys: Arc::new(stack_keys),
            raw,
            keys: Arc::new((0..KEYS).map(key).collect()),
            value: Arc::new(vec![b'x'; VALUE_SIZE]),
            server_pid: server.pid().map_or_else(String::new, |pid| pid.to_string()),
        });
        let mut raw = fixture.raw.clone();
        for n in 0..KEYS {
            one_op(&fixture, &mut raw, Client::Layer, Op::Set, n).await;
        }
        fixture
    });

    let load_before = load_average();
    let mut results = Vec::new();
    let only = std::env::var("L2_BENCH_ONLY").ok();
    for op in [Op::Get, Op::Set, Op::StackGet] {
        for concurrency in CONCURRENCY {
            let case = format!("{}@{concurrency}", op.name());
            if only
                .as_deref()
                .is_some_and(|only| !only.split(',').any(|c| c.trim() == case))
            {
                continue;
            }
            let mut layer = Vec::new();
            let mut raw = Vec::new();
            runtime.block_on(async {
                // Warm up both paths.
                throughput(&fixture, Client::Layer, op, concurrency).await;
                throughput(&fixture, Client::Raw, op, concurrency).await;
                for round in 0..ROUNDS {
                    if round % 2 == 0 {
                        layer.push(throughput(&fixture, Client::Layer, op, concurrency).await);
                        raw.push(throughput(&fixture, Client::Raw, op, concurrency).await);
                    } else {
                        raw.push(throughput(&fixture, Client::Raw, op, concurrency).await);
                        layer.push(throughput(&fixture, Client::Layer, op, concurrency).await);
                    }
                }
            });
            let round_ratios: Vec<f64> = layer
                .iter()
                .zip(&raw)
                .map(|(l, r)| l.ops_per_sec / r.ops_per_sec)
                .collect();
            let ratio = median(round_ratios.clone());
            let cpu = |samples: &[Sample], side: fn(&Sample) -> f64| {
                median(samples.iter().map(side).collect()).round()
            };
            let client_cpu = (
                cpu(&layer, |s| s.client_ns_per_op),
                cpu(&raw, |s| s.client_ns_per_op),
            );
            let server_cpu = (
                cpu(&layer, |s| s.server_ns_per_op),
                cpu(&raw, |s| s.server_ns_per_op),
            );
            let (layer, raw) = (cpu(&layer, |s| s.ops_per_sec), cpu(&raw, |s| s.ops_per_sec));
            let benchmark = match op {
                Op::StackGet => None,
                Op::Get | Op::Set => redis_benchmark(server.port(), op, concurrency),
            };
            println!(
                "l2 {:>3} c={concurrency:<2}  layer {layer:>9.0} ops/s  raw {raw:>9.0} ops/s  \
                 ratio {ratio:.3}  redis-benchmark {}",
                op.name(),
                benchmark.map_or("-".into(), |b| format!("{b:.0}")),
            );
            println!(
                "         cpu ns/op  client: layer {} raw {}  server: layer {} raw {}",
                client_cpu.0, client_cpu.1, server_cpu.0, server_cpu.1,
            );
            results.push(serde_json::json!({
                "op": op.name(),
                "concurrency": concurrency,
                "layer_ops_per_sec": layer,
                "raw_ops_per_sec": raw,
                "client_cpu_ns_per_op": { "layer": client_cpu.0, "raw": client_cpu.1 },
                "server_cpu_ns_per_op": { "layer": server_cpu.0, "raw": server_cpu.1 },
                "redis_benchmark_ops_per_sec": benchmark.map(f64::round),
                "ratio_layer_to_raw": (ratio * 1000.0).round() / 1000.0,
                "ratio_per_round": round_ratios.iter().map(|r| (r * 1000.0).round() / 1000.0).collect::<Vec<_>>(),
                "ratio_layer_to_redis_benchmark": benchmark.map(|b| (layer / b * 1000.0).round() / 1000.0),
                "target_ratio": op.target(),
                "meets_target": ratio >= op.target(),
            }));
        }
    }
    let server_version = Command::new("redis-server")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let report = serde_json::json!({
        "bench": "l2",
        "description": "RedisLayer vs the raw redis crate (one MultiplexedConnection, same commands) vs redis-benchmark; 256-byte values; one local redis-server",
        "value_size": VALUE_SIZE,
        "round_ms": ROUND.as_millis() as u64,
        "rounds": ROUNDS,
        "server": server_version,
        "load_average_1m": { "before": load_before, "after": load_average() },
        "target_ratio": TARGET_RATIO,
        "complete": only.is_none(),
        "meets_target": results.iter().all(|r| r["meets_target"] == true),
        "results": results,
    });
    let text = serde_json::to_string_pretty(&report).expect("json");
    let path = write_results("l2", &text).expect("write l2.json");
    println!("wrote {}", path.display());
    if only.is_none() {
        single_call_latency(&runtime, &fixture);
    }
    drop(server);
}

/// Criterion's own report: the latency of one call, layer vs raw.
fn single_call_latency(runtime: &tokio::runtime::Runtime, fixture: &Arc<Fixture>) {
    let mut criterion = Criterion::default()
        .configure_from_args()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    let mut group = criterion.benchmark_group("l2_single_call");
    for (name, client, op) in [
        ("layer_get", Client::Layer, Op::Get),
        ("raw_get", Client::Raw, Op::Get),
        ("layer_set", Client::Layer, Op::Set),
        ("raw_set", Client::Raw, Op::Set),
    ] {
        group.bench_function(name, |b| {
            let mut n = 0;
            b.to_async(runtime).iter(|| {
                n += 1;
                let mut raw = fixture.raw.clone();
                async move { one_op(fixture, &mut raw, client, op, n).await }
            });
        });
    }
    group.finish();
    criterion.final_summary();
}
