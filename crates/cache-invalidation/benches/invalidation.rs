//! What an invalidation costs as the keyspace grows, and how fast the
//! priority queue drains.
//!
//! - `scan`: removing the 1,000 keys of one offer's pages
//!   (`reviews:offer:42:*`) through `RedisLayer::invalidate` (SCAN MATCH,
//!   then UNLINK of what matched) from a Redis holding 10,000 keys in all,
//!   then 1,000,000: SCAN walks the whole keyspace, so the time grows with
//!   it. The other keys are made by `DEBUG POPULATE` (fast, and never
//!   matching the pattern).
//! - `family`: the same 1,000 pages written through a `TieredCache` over
//!   that Redis with the rules' key family installed
//!   (`reviews:offer:{id:digits}:*`), removed by
//!   `Invalidator::invalidate_key("reviews:offer:42")`: one version key
//!   (and the trigger key) removed, however large the keyspace.
//! - `queue`: 10,000 keys queued on an `Invalidator`'s priority queue and
//!   flushed, over an in-process L1 (the queue's own cost) and over L1 +
//!   a local Redis (each invalidation a round trip and a backplane
//!   message).
//!
//! Figures (medians of [`ROUNDS`]) go to `target/bench/invalidation.json`
//! (or `$CARGO_TARGET_DIR/bench/invalidation.json`).
//!
//! Run: `cargo bench -p cache-invalidation --bench invalidation` (about a
//! minute; needs `redis-server`).

use std::time::{Duration, Instant};

use cache_core::{CacheLayer, Pattern};
use cache_invalidation::{Invalidator, Priority, Rules};
use cache_memory::MemoryLayer;
use cache_redis::{RedisBackplane, RedisLayer};
use cache_test_support::bench::write_results;
use cache_test_support::ctx;
use cache_test_support::redis::RedisServer;
use cache_tiered::{Tier, TieredCache};
use serde_json::json;

/// The keys of the offer whose pages are removed.
const FAMILY: usize = 1_000;
const KEYSPACES: [usize; 2] = [10_000, 1_000_000];
const ROUNDS: usize = 5;
const QUEUED: usize = 10_000;
const NAMESPACE: &str = "bench:";

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

/// Writes the family's keys straight to Redis (one pipeline).
async fn write_family(connection: &mut redis::aio::MultiplexedConnection) {
    let mut pipe = redis::pipe();
    for page in 0..FAMILY {
        pipe.cmd("SET")
            .arg(format!("{NAMESPACE}reviews:offer:42:page:{page}:limit:10"))
            .arg("a page of reviews")
            .ignore();
    }
    let () = pipe.query_async(connection).await.expect("pipeline");
}

/// Milliseconds per removal of the family by SCAN, for each keyspace size.
async fn scan() -> Vec<serde_json::Value> {
    let mut results = Vec::new();
    for keys in KEYSPACES {
        let server = RedisServer::start_with(&["--enable-debug-command", "yes"]);
        let client = redis::Client::open(server.url()).expect("url");
        // DEBUG POPULATE of a million keys takes longer than the default
        // response timeout.
        let config = redis::AsyncConnectionConfig::new()
            .set_response_timeout(Some(Duration::from_secs(120)));
        let mut connection = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .expect("connect");
        let () = redis::cmd("DEBUG")
            .arg("POPULATE")
            .arg(keys - FAMILY)
            .arg(format!("{NAMESPACE}noise"))
            .arg(16)
            .query_async(&mut connection)
            .await
            .expect("DEBUG POPULATE");
        let layer = RedisLayer::builder(server.url())
            .namespace(NAMESPACE)
            .timeout(Duration::from_secs(60))
            .build()
            .await
            .expect("layer");
        let pattern = Pattern::new("reviews:offer:42:*");
        let mut samples = Vec::new();
        for _ in 0..ROUNDS {
            write_family(&mut connection).await;
            let started = Instant::now();
            let removed = layer
                .invalidate(&ctx::write(), &pattern)
                .await
                .expect("invalidate");
            samples.push(started.elapsed().as_secs_f64() * 1e3);
            assert_eq!(removed, FAMILY as u64, "every page and nothing else");
        }
        let ms = median(samples);
        println!("scan: {FAMILY} keys among {keys}: {ms:.1} ms");
        let family = family(&server).await;
        println!("family: {FAMILY} keys among {keys}: {family:.2} ms");
        results.push(
            json!({ "keyspace": keys, "removed": FAMILY, "scan_ms": ms, "family_ms": family }),
        );
    }
    results
}

/// Milliseconds per invalidation of the family's pages by its version,
/// over the Redis of `server`.
async fn family(server: &RedisServer) -> f64 {
    let rules = Rules::builder()
        .rule("reviews:offer:{id:digits}", ["reviews:offer:{id}:*"])
        .family("reviews:offer:{id:digits}:*")
        .build()
        .expect("rules");
    let layer = RedisLayer::builder(server.url())
        .namespace(NAMESPACE)
        .timeout(Duration::from_secs(60))
        .build()
        .await
        .expect("layer");
    let cache = TieredCache::builder()
        .layer(layer)
        .key_families(rules.families())
        .build()
        .expect("cache");
    let invalidator = Invalidator::new(cache.clone(), rules);
    assert!(invalidator.uses_families());
    let ttl = Duration::from_secs(600);
    let mut samples = Vec::new();
    for _ in 0..ROUNDS {
        for page in 0..FAMILY {
            let key = format!("reviews:offer:42:page:{page}:limit:10");
            cache
                .set(&key, &"a page of reviews", ttl)
                .await
                .expect("set");
        }
        let started = Instant::now();
        let invalidated = invalidator
            .invalidate_key("reviews:offer:42")
            .await
            .expect("invalidate");
        samples.push(started.elapsed().as_secs_f64() * 1e3);
        assert_eq!(invalidated.by_family.len(), 1);
        let page = cache
            .get::<String>("reviews:offer:42:page:7:limit:10")
            .await
            .expect("get");
        assert_eq!(page, None, "a page outlived its family's invalidation");
    }
    assert_eq!(invalidator.stats().scans, 0);
    median(samples)
}

/// Invalidations per second through the priority queue over `cache`.
async fn drain(cache: TieredCache) -> f64 {
    let rules = Rules::builder()
        .rule("offer:{id}", ["rating:offer:{id}"])
        .build()
        .expect("rules");
    let invalidator = Invalidator::builder(cache, rules)
        .queue(QUEUED)
        .build()
        .expect("invalidator");
    let queue = invalidator.queue().expect("a queue");
    let mut rates = Vec::new();
    for _ in 0..ROUNDS {
        let started = Instant::now();
        for i in 0..QUEUED {
            let priority = [Priority::Low, Priority::Normal, Priority::High][i % 3];
            let _ = queue.enqueue(&format!("offer:{i}"), priority);
        }
        queue.flush().await;
        rates.push(QUEUED as f64 / started.elapsed().as_secs_f64());
    }
    assert_eq!(queue.stats().dropped, 0);
    median(rates)
}

async fn queue() -> serde_json::Value {
    let l1_only = TieredCache::builder()
        .layer(MemoryLayer::new())
        .build()
        .expect("cache");
    let in_process = drain(l1_only).await;
    let server = RedisServer::start();
    let l2 = RedisLayer::builder(server.url())
        .namespace(NAMESPACE)
        .build()
        .await
        .expect("layer");
    let backplane = RedisBackplane::builder(server.url())
        .build()
        .await
        .expect("backplane");
    let over_redis = TieredCache::builder()
        .layer(MemoryLayer::new())
        .tier(Tier::new(l2))
        .backplane(backplane)
        .build_async()
        .await
        .expect("cache");
    let with_redis = drain(over_redis).await;
    println!(
        "queue: {in_process:.0} invalidations/s in process, {with_redis:.0}/s over Redis \
         (each a key and one dependent)"
    );
    json!({
        "queued": QUEUED,
        "l1_per_second": in_process,
        "l1_redis_per_second": with_redis,
    })
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` (or
    // `--all-targets`) does not, and a test run has no time for this.
    if !std::env::args().any(|arg| arg == "--bench") {
        println!("invalidation: a benchmark; run it with `cargo bench --bench invalidation`");
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let (scan, queue) = runtime.block_on(async { (scan().await, queue().await) });
    let growth = |kind: &str| {
        scan[1][kind].as_f64().unwrap_or(f64::NAN) / scan[0][kind].as_f64().unwrap_or(f64::NAN)
    };
    let report = json!({
        "what": "removing one offer's 1,000 page keys as the keyspace grows; the priority queue's drain rate",
        "removal": scan,
        "scan_1m_over_10k": growth("scan_ms"),
        "family_1m_over_10k": growth("family_ms"),
        "queue": queue,
        "rounds": ROUNDS,
    });
    let text = serde_json::to_string_pretty(&report).expect("json");
    write_results("invalidation", &text).expect("write invalidation.json");
    println!("{text}");
}
