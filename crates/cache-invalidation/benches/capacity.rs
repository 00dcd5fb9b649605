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
//!   per second to every subscriber (until the last one has them all).
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
use cache_redis::RedisBackplane;
use cache_test_support::bench::{Offer, offer, write_results};
use cache_test_support::redis::RedisServer;
use cache_tiered::TieredCache;
use serde_json::json;

const ENTRIES: usize = 100_000;
const MESSAGES: u64 = 20_000;
const PUBLISHERS: u64 = 16;
const SUBSCRIBERS: [usize; 3] = [1, 8, 32];

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

async fn fan_out(server: &RedisServer, subscribers: usize) -> serde_json::Value {
    let channel = format!("capacity-{subscribers}");
    let backplane = || async {
        RedisBackplane::builder(server.url())
            .channel(channel.as_str())
            .timeout(Duration::from_secs(10))
            .build()
            .await
            .expect("backplane")
    };
    let received: Arc<Vec<AtomicU64>> =
        Arc::new((0..subscribers).map(|_| AtomicU64::new(0)).collect());
    let mut listeners = Vec::new();
    // Each subscriber's backplane lives as long as its subscription.
    let mut instances = Vec::new();
    for n in 0..subscribers {
        let instance = backplane().await;
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
    let publisher = Arc::new(backplane().await);
    let message = |i: u64| BackplaneMessage {
        origin: 1,
        invalidations: vec![Invalidation::Key(format!("offer:{i}"))],
    };
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
    let started = Instant::now();
    let tasks: Vec<_> = (0..PUBLISHERS)
        .map(|task| {
            let publisher = publisher.clone();
            tokio::spawn(async move {
                for i in (task..MESSAGES).step_by(PUBLISHERS as usize) {
                    publisher.publish(&message(i)).await.expect("publish");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("publisher");
    }
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
    for listener in listeners {
        listener.abort();
    }
    let publish_rate = MESSAGES as f64 / published.as_secs_f64();
    let delivery_rate = MESSAGES as f64 / delivered.as_secs_f64();
    println!(
        "backplane: {subscribers:>2} subscribers: {publish_rate:.0} published/s, \
         {delivery_rate:.0} delivered/s to each ({:.0} deliveries/s in all)",
        delivery_rate * subscribers as f64
    );
    json!({
        "subscribers": subscribers,
        "published_per_second": publish_rate,
        "delivered_per_second_each": delivery_rate,
        "deliveries_per_second": delivery_rate * subscribers as f64,
    })
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let report = runtime.block_on(async {
        let l1 = l1_memory().await;
        let server = RedisServer::start();
        let mut backplane = Vec::new();
        for subscribers in SUBSCRIBERS {
            backplane.push(fan_out(&server, subscribers).await);
        }
        json!({
            "what": "the figures of docs/scale.md's capacity model: L1 memory per entry, backplane fan-out",
            "l1": l1,
            "backplane": backplane,
            "messages": MESSAGES,
            "publishing_tasks": PUBLISHERS,
        })
    });
    let text = serde_json::to_string_pretty(&report).expect("json");
    write_results("capacity", &text).expect("write capacity.json");
    println!("{text}");
}
