//! A cache's counters, gauges and histograms on a Prometheus endpoint.
//!
//! Run it with `cargo run -p examples --example metrics`: it serves
//! `http://127.0.0.1:<port>/metrics`, sends some traffic through an L1 over
//! an L2 (the Redis at `REDIS_URL` if set, else a second in-memory layer
//! standing in for it), scrapes the page once and prints the cache's
//! series, then exits. With `-- --serve` it keeps serving (point Prometheus, or `curl`,
//! at the printed address; `docs/grafana-dashboard.json` charts it).

use std::sync::Arc;
use std::time::Duration;

use cache_core::CacheLayer;
use cache_memory::MemoryLayer;
use cache_redis::RedisLayer;
use cache_tiered::{Tier, TieredCache};
use examples::metrics::{get, install_recorder, serve};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let keep_serving = std::env::args().any(|arg| arg == "--serve");
    // First the recorder, then the cache: its histograms register at build.
    let handle = install_recorder();
    let l2: Arc<dyn CacheLayer> = match std::env::var("REDIS_URL") {
        Ok(url) => Arc::new(
            RedisLayer::builder(url)
                .namespace("metrics-example")
                .build()
                .await?,
        ),
        Err(_) => Arc::new(MemoryLayer::builder().name("l2").build()?),
    };
    let cache = TieredCache::builder()
        .name("offers")
        .tier(Tier::new(MemoryLayer::builder().name("l1").build()?).ttl_cap(Duration::from_secs(1)))
        .tier(Tier::shared(l2).timeout(Duration::from_millis(500)))
        .build()?;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let exported = cache.clone();
    tokio::spawn(serve(listener, handle, move || exported.export_metrics()));
    println!("metrics at http://{addr}/metrics  (curl http://{addr}/metrics)");

    // Some traffic: 100 offers read 10 times each, a few loads failing.
    for round in 0..10 {
        for id in 0..100u32 {
            let key = format!("offer:{id}");
            let _ = cache
                .get_or_compute(&key, Duration::from_secs(300), || async move {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    if id % 50 == 49 && round == 0 {
                        return Err(std::io::Error::other("database timeout"));
                    }
                    Ok(id)
                })
                .await;
        }
    }

    let (status, body) = get(addr, "/metrics").await?;
    println!("{status}");
    for line in body.lines().filter(|line| {
        !line.starts_with('#')
            && (line.starts_with("cache_lookups_total")
                || line.starts_with("cache_reads_total")
                || line.starts_with("cache_loads_total")
                || line.starts_with("cache_load_errors_total")
                || line.starts_with("cache_load_duration_seconds_count")
                || line.starts_with("cache_entries"))
    }) {
        println!("  {line}");
    }
    if keep_serving {
        println!("serving until interrupted (Ctrl-C)");
        tokio::signal::ctrl_c().await?;
    }
    Ok(())
}
