//! The figures the capacity model of `docs/scale.md` rests on, measured
//! on this machine:
//!
//! - `l1_bytes_per_entry`: what one entry of the in-process L1 costs in
//!   memory, all overhead included (the process's resident size grown by
//!   100,000 `TieredCache::set` + `get` of a ~200-byte struct, divided by
//!   100,000), beside what the layer counts (key and encoded value bytes);
//! - `backplane`: one `RedisBackplane` publishing 20,000 single-key
//!   invalidations (16 at a time) to 1, 8 and 32 subscribers (each its own
//!   connection, as each instance of a fleet has) over one local
//!   `redis-server`: messages published per second, and messages delivered
//!   per second to every subscriber (until the last one has them all);
//!   beside them the CPU `redis-server` and this process spent per
//!   delivery, and the same messages sent with plain `PUBLISH` from the
//!   redis crate (one multiplexed connection, 16 at a time) to as many
//!   plain subscriptions: the anchor the backplane's figures compare with;
//! - `cache_subscribers`: the same messages to 32 caches (an L1 each, with
//!   its own `RedisBackplane`, whose listener removes the key), what an
//!   instance pays per message it receives;
//! - `writes`: what a write costs before its message fans out
//!   (`TieredCache::set` over an L1 and a `RedisLayer` with the backplane:
//!   a `SET`, a `PUBLISH`), in writes per second and CPU per write.
//!
//! Closed loops of 16 publishes in flight measure round trips: on a machine
//! busy with other work, each one waits for a CPU, and the rates fall many
//! times over (`docs/scale.md` first quoted 7,800 messages/s to one
//! subscriber, measured while builds ran; over 100,000 on a quiet machine).
//! The load average at the start goes to the JSON; the CPU per delivery
//! and the backplane ÷ raw ratios hold better than the rates.
//!
//! Results go to `target/bench/capacity.json` (or
//! `$CARGO_TARGET_DIR/bench/capacity.json`).
//!
//! Run: `cargo bench -p cache-invalidation --bench capacity` (about half a
//! minute; needs `redis-server`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cache_core::{Backplane, BackplaneEvent, BackplaneMessage, Invalidation};
use cache_memory::MemoryLayer;
use cache_redis::{RedisBackplane, RedisLayer};
use cache_test_support::bench::{Offer, cpu_seconds, load_average, offer, write_results};
use cache_test_support::redis::RedisServer;
use cache_tiered::{Tier, TieredCache};
use futures::StreamExt;
use serde_json::json;

const ENTRIES: usize = 100_000;
const MESSAGES: u64 = 20_000;
const PUBLISHERS: u64 = 16;
const SUBSCRIBERS: [usize; 3] = [1, 8, 32];
/// Caches receiving the messages in `cache_subscribers`.
const CACHE_SUBSCRIBERS: usize = 32;

/// The process's resident memory, in bytes.
fn resident() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|pages| pages.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

async fn l1_memory() -> serde_json::Value {
    let l1 = MemoryLayer::builder()
        .max_entries(2 * ENTRIES as u64)
        .max_bytes(1 << 30)
        .build()
        .expect("layer");
    let cache = TieredCache::builder()
        .layer(l1.clone())
        .build()
        .expect("cache");
    let keys: Vec<String> = (0..ENTRIES).map(|i| format!("offer:{i}")).collect();
    let ttl = Duration::from_secs(3600);
    let before = resident();
    for (i, key) in keys.iter().enumerate() {
        cache.set(key, &offer(i as u64), ttl).await.expect("set");
    }
    let written = resident();
    // A hit keeps the decoded value beside the bytes (the memo).
    for key in &keys {
        assert!(cache.get::<Offer>(key).await.expect("get").is_some());
    }
    let read = resident();
    let per_entry = |bytes: u64| bytes.saturating_sub(before) as f64 / ENTRIES as f64;
    let counted = cache_core::CacheLayer::stats(&l1).bytes as f64 / ENTRIES as f64;
    println!(
        "l1: {:.0} bytes per entry written, {:.0} once read (the layer counts {counted:.0})",
        per_entry(written),
        per_entry(read)
    );
    json!({
        "entries": ENTRIES,
        "written_bytes_per_entry": per_entry(written),
        "read_bytes_per_entry": per_entry(read),
        "counted_bytes_per_entry": counted,
    })
}

/// What one write costs before its message fans out: [`MESSAGES`]
/// `TieredCache::set`s of an offer ([`PUBLISHERS`] at a time) on a cache
/// of an L1 over a `RedisLayer`, with a `RedisBackplane` nobody else
/// listens to (its own subscription skips its messages): a `SET`, a
/// `PUBLISH` and one delivery each. Writes per second, and the CPU
/// `redis-server` and this process spent per write.
async fn writes(server: &RedisServer) -> serde_json::Value {
    let l2 = RedisLayer::builder(server.url())
        .namespace("capacity:")
        .timeout(Duration::from_secs(10))
        .build()
        .await
        .expect("L2");
    let backplane = RedisBackplane::builder(server.url())
        .channel("capacity-writes")
        .timeout(Duration::from_secs(10))
        .build()
        .await
        .expect("backplane");
    let cache = TieredCache::builder()
        .layer(
            MemoryLayer::builder()
                .sweep_interval(None)
                .build()
                .expect("L1"),
        )
        .tier(Tier::new(l2))
        .backplane(backplane)
        .build_async()
        .await
        .expect("cache");
    let ttl = Duration::from_secs(300);
    let (cpu, redis_cpu) = (cpu_seconds(None), cpu_seconds(server.pid()));
    let started = Instant::now();
    in_parallel(move |i| {
        let cache = cache.clone();
        async move {
            let key = format!("offer:{i}");
            cache.set(&key, &offer(i), ttl).await.expect("set");
        }
    })
    .await;
    let elapsed = started.elapsed();
    let per_write = |seconds: f64| seconds * 1e6 / MESSAGES as f64;
    let cpu_us = per_write(cpu_seconds(None) - cpu);
    let redis_cpu_us = per_write(cpu_seconds(server.pid()) - redis_cpu);
    let rate = MESSAGES as f64 / elapsed.as_secs_f64();
    println!(
        "writes: {rate:.0} TieredCache::set/s (SET + PUBLISH); CPU per write: redis \
         {redis_cpu_us:.2} µs, this process {cpu_us:.2} µs"
    );
    json!({
        "writes_per_second": rate,
        "redis_cpu_us_per_write": redis_cpu_us,
        "process_cpu_us_per_write": cpu_us,
    })
}

/// What a message costs the instances that receive it: [`MESSAGES`]
/// published by one `RedisBackplane` ([`PUBLISHERS`] at a time) to
/// `subscribers` caches (each an L1 with its own `RedisBackplane`, whose
/// listener removes the key from the L1). Messages delivered per second to
/// every cache, and the CPU `redis-server` and this process spent per
/// delivery.
async fn cache_fan_out(server: &RedisServer, subscribers: usize) -> serde_json::Value {
    let channel = format!("capacity-caches-{subscribers}");
    let connect = || backplane(server, &channel);
    let mut caches = Vec::new();
    for _ in 0..subscribers {
        let l1 = MemoryLayer::builder()
            .sweep_interval(None)
            .build()
            .expect("L1");
        let cache = TieredCache::builder()
            .layer(l1)
            .backplane(connect().await)
            .build_async()
            .await
            .expect("cache");
        caches.push(cache);
    }
    let received = |cache: &TieredCache| cache.stats().backplane.received;
    let publisher = Arc::new(connect().await);
    let (cpu, redis_cpu) = (cpu_seconds(None), cpu_seconds(server.pid()));
    let started = Instant::now();
    in_parallel({
        let publisher = publisher.clone();
        move |i| {
            let publisher = publisher.clone();
            async move { publisher.publish(&message(i)).await.expect("publish") }
        }
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(120);
    while caches.iter().any(|cache| received(cache) < MESSAGES) {
        assert!(Instant::now() < deadline, "messages were lost");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let delivered = started.elapsed();
    let deliveries = (MESSAGES * subscribers as u64) as f64;
    let cpu_us = (cpu_seconds(None) - cpu) * 1e6 / deliveries;
    let redis_cpu_us = (cpu_seconds(server.pid()) - redis_cpu) * 1e6 / deliveries;
    let delivery_rate = MESSAGES as f64 / delivered.as_secs_f64();
    println!(
        "caches: {subscribers:>2} subscribers: {delivery_rate:.0} delivered/s to each \
         ({:.0} deliveries/s in all; CPU per delivery: redis {redis_cpu_us:.2} µs, \
         this process {cpu_us:.2} µs)",
        delivery_rate * subscribers as f64
    );
    json!({
        "subscribers": subscribers,
        "delivered_per_second_each": delivery_rate,
        "deliveries_per_second": delivery_rate * subscribers as f64,
        "redis_cpu_us_per_delivery": redis_cpu_us,
        "process_cpu_us_per_delivery": cpu_us,
    })
}

/// The message the benchmarks publish as their `i`th: one key.
fn message(i: u64) -> BackplaneMessage {
    BackplaneMessage {
        origin: 1,
        invalidations: vec![Invalidation::Key(format!("offer:{i}"))],
    }
}

/// Runs `op(i)` for every `i` below [`MESSAGES`], [`PUBLISHERS`] at a time
/// (task `t` takes `t`, `t + PUBLISHERS`, ...).
async fn in_parallel<F, Fut>(op: F)
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let tasks: Vec<_> = (0..PUBLISHERS)
        .map(|task| {
            let op = op.clone();
            tokio::spawn(async move {
                for i in (task..MESSAGES).step_by(PUBLISHERS as usize) {
                    op(i).await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("a benchmark task");
    }
}

/// A backplane on `channel` of `server`, with a timeout no busy machine
/// reaches.
async fn backplane(server: &RedisServer, channel: &str) -> RedisBackplane {
    RedisBackplane::builder(server.url())
        .channel(channel)
        .timeout(Duration::from_secs(10))
        .build()
        .await
        .expect("backplane")
}

async fn fan_out(server: &RedisServer, subscribers: usize) -> serde_json::Value {
    let channel = format!("capacity-{subscribers}");
    let connect = || backplane(server, &channel);
    let received: Arc<Vec<AtomicU64>> =
        Arc::new((0..subscribers).map(|_| AtomicU64::new(0)).collect());
    let mut listeners = Vec::new();
    // Each subscriber's backplane lives as long as its subscription.
    let mut instances = Vec::new();
    for n in 0..subscribers {
        let instance = connect().await;
        let mut subscription = instance.subscribe().await.expect("subscribe");
        instances.push(instance);
        let received = received.clone();
        listeners.push(tokio::spawn(async move {
            while let Some(event) = subscription.next().await {
                if let BackplaneEvent::Message(_) = event {
                    received[n].fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let publisher = Arc::new(connect().await);
    // Until every subscriber hears: then the counts start from zero.
    let deadline = Instant::now() + Duration::from_secs(20);
    while received
        .iter()
        .any(|count| count.load(Ordering::Relaxed) == 0)
    {
        assert!(Instant::now() < deadline, "a subscriber never heard");
        publisher.publish(&message(0)).await.expect("publish");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let baseline: Vec<u64> = received.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    let (cpu, redis_cpu) = (cpu_seconds(None), cpu_seconds(server.pid()));
    let started = Instant::now();
    in_parallel({
        let publisher = publisher.clone();
        move |i| {
            let publisher = publisher.clone();
            async move { publisher.publish(&message(i)).await.expect("publish") }
        }
    })
    .await;
    let published = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(120);
    while received
        .iter()
        .zip(&baseline)
        .any(|(count, base)| count.load(Ordering::Relaxed) - base < MESSAGES)
    {
        assert!(Instant::now() < deadline, "messages were lost");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let delivered = started.elapsed();
    let deliveries = (MESSAGES * subscribers as u64) as f64;
    let cpu_us = (cpu_seconds(None) - cpu) * 1e6 / deliveries;
    let redis_cpu_us = (cpu_seconds(server.pid()) - redis_cpu) * 1e6 / deliveries;
    for listener in listeners {
        listener.abort();
    }
    let publish_rate = MESSAGES as f64 / published.as_secs_f64();
    let delivery_rate = MESSAGES as f64 / delivered.as_secs_f64();
    let (raw_publish_rate, raw_delivery_rate, raw_cpu_us) = raw_fan_out(server, subscribers).await;
    println!(
        "backplane: {subscribers:>2} subscribers: {publish_rate:.0} published/s, \
         {delivery_rate:.0} delivered/s to each ({:.0} deliveries/s in all; CPU per delivery: \
         redis {redis_cpu_us:.2} µs, this process {cpu_us:.2} µs); raw PUBLISH: \
         {raw_publish_rate:.0} published/s, {raw_delivery_rate:.0} delivered/s to each \
         (this process {raw_cpu_us:.2} µs per delivery)",
        delivery_rate * subscribers as f64
    );
    json!({
        "subscribers": subscribers,
        "published_per_second": publish_rate,
        "delivered_per_second_each": delivery_rate,
        "deliveries_per_second": delivery_rate * subscribers as f64,
        "redis_cpu_us_per_delivery": redis_cpu_us,
        "process_cpu_us_per_delivery": cpu_us,
        "raw_published_per_second": raw_publish_rate,
        "raw_delivered_per_second_each": raw_delivery_rate,
        "raw_process_cpu_us_per_delivery": raw_cpu_us,
        "published_over_raw": publish_rate / raw_publish_rate,
        "delivered_over_raw": delivery_rate / raw_delivery_rate,
    })
}

/// The anchor: [`MESSAGES`] of the same bytes sent with plain `PUBLISH`
/// over one multiplexed connection ([`PUBLISHERS`] at a time) to
/// `subscribers` plain redis-crate subscriptions. Messages published per
/// second, delivered per second to every subscriber, and this process's CPU
/// per delivery in µs.
async fn raw_fan_out(server: &RedisServer, subscribers: usize) -> (f64, f64, f64) {
    let channel = format!("capacity-raw-{subscribers}");
    let client = redis::Client::open(server.url()).expect("url");
    let received: Arc<Vec<AtomicU64>> =
        Arc::new((0..subscribers).map(|_| AtomicU64::new(0)).collect());
    let mut listeners = Vec::new();
    for n in 0..subscribers {
        let mut pubsub = client.get_async_pubsub().await.expect("subscriber");
        pubsub.subscribe(&channel).await.expect("subscribe");
        let received = received.clone();
        listeners.push(tokio::spawn(async move {
            let mut messages = pubsub.into_on_message();
            while messages.next().await.is_some() {
                received[n].fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let publisher = client
        .get_multiplexed_async_connection()
        .await
        .expect("publisher");
    let cpu = cpu_seconds(None);
    let started = Instant::now();
    in_parallel({
        let (publisher, channel) = (publisher.clone(), channel.clone());
        move |i| {
            let (mut publisher, channel) = (publisher.clone(), channel.clone());
            async move {
                let _: i64 = redis::cmd("PUBLISH")
                    .arg(&channel)
                    .arg(message(i).encode())
                    .query_async(&mut publisher)
                    .await
                    .expect("publish");
            }
        }
    })
    .await;
    let published = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(120);
    while received
        .iter()
        .any(|count| count.load(Ordering::Relaxed) < MESSAGES)
    {
        assert!(Instant::now() < deadline, "raw messages were lost");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let delivered = started.elapsed();
    let cpu_us = (cpu_seconds(None) - cpu) * 1e6 / (MESSAGES * subscribers as u64) as f64;
    for listener in listeners {
        listener.abort();
    }
    (
        MESSAGES as f64 / published.as_secs_f64(),
        MESSAGES as f64 / delivered.as_secs_f64(),
        cpu_us,
    )
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` (or
    // `--all-targets`) does not, and a test run has no time for this.
    if !std::env::args().any(|arg| arg == "--bench") {
        println!("capacity: a benchmark; run it with `cargo bench --bench capacity`");
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let report = runtime.block_on(async {
        let l1 = l1_memory().await;
        let load_average = load_average();
        let server = RedisServer::start();
        let mut backplane = Vec::new();
        for subscribers in SUBSCRIBERS {
            backplane.push(fan_out(&server, subscribers).await);
        }
        let caches = cache_fan_out(&server, CACHE_SUBSCRIBERS).await;
        let writes = writes(&server).await;
        json!({
            "what": "the figures of docs/scale.md's capacity model: L1 memory per entry, backplane fan-out",
            "l1": l1,
            "backplane": backplane,
            "cache_subscribers": caches,
            "writes": writes,
            "messages": MESSAGES,
            "publishing_tasks": PUBLISHERS,
            "load_average_at_start": load_average,
        })
    });
    let text = serde_json::to_string_pretty(&report).expect("json");
    write_results("capacity", &text).expect("write capacity.json");
    println!("{text}");
}
