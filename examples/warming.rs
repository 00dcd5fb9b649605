//! Warming a cache before traffic arrives.
//!
//! Instance A loads 5,000 offers from a slow back end (5 ms a query) into
//! its L1 and the shared L2, 32 queries at a time, best-sellers first, with
//! a progress bar. Instance B then starts up and copies the offers from L2
//! into its own L1, without asking the back end anything. Finally A
//! refreshes the best-sellers every minute, until it is stopped.
//!
//! Run it with `cargo run -p examples --example warming`; it ends by itself
//! in about a second.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use cache_memory::MemoryLayer;
// Stands in for Redis here, so that the example needs no server: a memory
// layer that says it is shared. In production the L2 is a
// `cache_redis::RedisLayer` (see the `offers` example).
use cache_test_support::layers::SharedLayer;
use cache_tiered::{Tier, TieredCache, WarmJob, WarmProgress};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

const OFFERS: u64 = 5_000;
const BESTSELLERS: u64 = 100;
const BACKEND_LATENCY: Duration = Duration::from_millis(5);

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Offer {
    id: u64,
    title: String,
    price_cents: u64,
}

/// The slow back end, counting the queries it answers. Every 997th offer
/// fails (a flaky replica); offers above 4,990 were withdrawn (`None`).
#[derive(Default)]
struct OffersDb {
    queries: AtomicU64,
}

impl OffersDb {
    async fn offer(&self, id: u64) -> Result<Option<Offer>, std::io::Error> {
        self.queries.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(BACKEND_LATENCY).await;
        if id.is_multiple_of(997) {
            return Err(std::io::Error::other(format!(
                "replica timed out reading offer {id}"
            )));
        }
        if id > 4_990 {
            return Ok(None);
        }
        Ok(Some(Offer {
            id,
            title: format!("Offer #{id}"),
            price_cents: 999 + id,
        }))
    }

    fn queries(&self) -> u64 {
        self.queries.load(Ordering::Relaxed)
    }
}

fn offer_key(id: u64) -> String {
    format!("offer:{id}")
}

/// One instance of the service: its own L1 over the shared L2.
fn instance(l2: &Arc<MemoryLayer>) -> Result<TieredCache, cache_core::Error> {
    TieredCache::builder()
        .tier(
            Tier::new(MemoryLayer::builder().max_entries(20_000).build()?)
                .ttl_cap(Duration::from_secs(60)),
        )
        .tier(Tier::new(SharedLayer(l2.clone())))
        .default_ttl(Duration::from_secs(300))
        // Values warmed together should not all expire together.
        .ttl_jitter(0.1)
        .build()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let l2 = Arc::new(MemoryLayer::builder().max_entries(100_000).build()?);
    let db = Arc::new(OffersDb::default());
    // The warm-up's source: one query per key; `None` for an offer that
    // does not exist.
    let load = {
        let db = db.clone();
        move |key: String| {
            let db = db.clone();
            async move {
                let id = key
                    .strip_prefix("offer:")
                    .and_then(|id| id.parse().ok())
                    .ok_or_else(|| std::io::Error::other(format!("not an offer key: {key}")))?;
                db.offer(id).await
            }
        }
    };

    // Instance A warms L1 and L2 from the back end.
    let a = instance(&l2)?;
    let bar = ProgressBar::new(OFFERS);
    bar.set_style(
        ProgressStyle::with_template(
            "warming {bar:40.cyan/blue} {pos}/{len} offers, {per_sec}, {elapsed} (eta {eta})",
        )?
        .progress_chars("=> "),
    );
    let bestsellers: Vec<String> = (1..=BESTSELLERS).map(offer_key).collect();
    let summary = a
        .warmer()
        .concurrency(32)
        .job(WarmJob::new(bestsellers.clone(), load.clone()).priority(10))
        .keys((BESTSELLERS + 1..=OFFERS).map(offer_key), load.clone())
        .on_progress({
            let bar = bar.clone();
            move |progress: &WarmProgress| bar.set_position(progress.done())
        })
        .run()
        .await?;
    bar.finish_and_clear();
    println!("instance A, from the back end: {summary}");
    for (key, error) in &summary.errors {
        println!("    {key}: {error}");
    }
    let queries = db.queries();
    println!("    {queries} queries to the back end");

    // Instance B starts: its L1 is empty, L2 has everything A loaded.
    let b = instance(&l2)?;
    let summary = b
        .warmer()
        .from_shared((1..=OFFERS).map(offer_key))
        .run()
        .await?;
    println!("instance B, its L1 from the shared tier: {summary}");
    println!("    {} queries to the back end", db.queries() - queries);
    let offer: Option<Offer> = b.get("offer:7").await?;
    let stats = b.stats();
    println!(
        "    offer:7 is {:?}, answered by {} ({} L1 hits, {} misses so far: warming counts no read)",
        offer.map(|offer| offer.title),
        stats.tiers[0].name,
        stats.tiers[0].hits,
        stats.misses,
    );

    // A keeps its best-sellers fresh: reloaded every minute, whether they
    // are cached or not, until the schedule is stopped (or dropped).
    let schedule = a
        .warmer()
        .skip_cached(false)
        .keys(bestsellers, load)
        .every(Duration::from_secs(60))?;
    let mut summaries = schedule.summaries();
    let first = summaries.wait_for(Option::is_some).await?.clone();
    if let Some(summary) = first {
        println!("instance A, best-sellers refreshed: {summary}");
    }
    schedule.stop().await;
    println!("refreshing stopped");
    Ok(())
}
