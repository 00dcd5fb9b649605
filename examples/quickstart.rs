//! A memory-only tiered cache in front of a deliberately slow offers service.
//!
//! The scenario: GraphQL fields `offer`, `averageRating` and `reviews`
//! (paginated), each cached with `get_or_compute` for five minutes. A new
//! review invalidates that offer's reviews and rating.
//!
//! Run it with `cargo run -p examples --example quickstart`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cache_core::{Pattern, escape};
use cache_memory::MemoryLayer;
use cache_tiered::{Tier, TieredCache};
use serde::{Deserialize, Serialize};

/// How long the "database" takes to answer any query.
const BACKEND_LATENCY: Duration = Duration::from_millis(40);
const TTL: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Offer {
    id: u64,
    title: String,
    price_cents: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Review {
    author_id: u64,
    stars: u8,
    text: String,
}

/// The slow back end, counting the queries it answers.
#[derive(Default)]
struct OffersDb {
    queries: AtomicU64,
}

impl OffersDb {
    async fn query<T>(&self, answer: T) -> Result<T, std::io::Error> {
        self.queries.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(BACKEND_LATENCY).await;
        Ok(answer)
    }

    async fn offer(&self, id: u64) -> Result<Offer, std::io::Error> {
        let offer = Offer {
            id,
            title: format!("Offer #{id}"),
            price_cents: 1999 + id,
        };
        self.query(offer).await
    }

    async fn average_rating(&self, id: u64) -> Result<f32, std::io::Error> {
        self.query(3.5 + (id % 3) as f32 * 0.5).await
    }

    async fn reviews(
        &self,
        id: u64,
        after: u64,
        first: u64,
    ) -> Result<Vec<Review>, std::io::Error> {
        let page = (after..after + first)
            .map(|n| Review {
                author_id: n,
                stars: (n % 5 + 1) as u8,
                text: format!("review {n} of offer {id}"),
            })
            .collect();
        self.query(page).await
    }
}

/// The resolvers of the GraphQL fields, each behind the cache.
struct Resolvers {
    cache: TieredCache,
    db: OffersDb,
}

impl Resolvers {
    async fn offer(&self, id: u64) -> cache_tiered::Result<Offer> {
        self.cache
            .get_or_compute(&format!("offer:{id}"), TTL, || self.db.offer(id))
            .await
    }

    async fn average_rating(&self, id: u64) -> cache_tiered::Result<f32> {
        self.cache
            .get_or_compute(&format!("rating:offer:{id}"), TTL, || {
                self.db.average_rating(id)
            })
            .await
    }

    async fn reviews(&self, id: u64, after: u64, first: u64) -> cache_tiered::Result<Vec<Review>> {
        let key = format!("reviews:offer:{id}:page:{after}:limit:{first}");
        self.cache
            .get_or_compute(&key, TTL, || self.db.reviews(id, after, first))
            .await
    }

    /// One page view: the three fields of one offer.
    async fn offer_page(&self, id: u64) -> cache_tiered::Result<()> {
        self.offer(id).await?;
        self.average_rating(id).await?;
        self.reviews(id, 0, 10).await?;
        Ok(())
    }

    /// A new review changes that offer's reviews and rating.
    async fn review_added(&self, id: u64) -> cache_tiered::Result<()> {
        let offer = escape(&id.to_string());
        self.cache
            .invalidate(&Pattern::new(format!("reviews:offer:{offer}:*")))
            .await?;
        self.cache.delete(&format!("rating:offer:{id}")).await?;
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let l1 = MemoryLayer::builder()
        .max_entries(10_000)
        .max_bytes(16 << 20)
        .build()?;
    let cache = TieredCache::builder()
        .tier(Tier::new(l1).ttl_cap(Duration::from_secs(60)))
        .build()?;
    let app = Arc::new(Resolvers {
        cache,
        db: OffersDb::default(),
    });

    println!("offers service: every back-end query takes {BACKEND_LATENCY:?}\n");

    // 1. A burst: 200 concurrent page views of the same cold offer.
    let started = Instant::now();
    let views: Vec<_> = (0..200)
        .map(|_| {
            let app = app.clone();
            tokio::spawn(async move { app.offer_page(1).await })
        })
        .collect();
    for view in views {
        view.await??;
    }
    let queries = app.db.queries.load(Ordering::Relaxed);
    println!(
        "burst of 200 concurrent views of offer 1: {queries} back-end queries, {:.0?}",
        started.elapsed()
    );
    assert_eq!(queries, 3, "single-flight: one query per field");

    // 2. Steady traffic over five offers.
    let started = Instant::now();
    for round in 0..100u64 {
        app.offer_page(1 + round % 5).await?;
    }
    let elapsed = started.elapsed();
    let queries = app.db.queries.load(Ordering::Relaxed);
    println!("100 views over offers 1-5: {elapsed:.0?} ({queries} back-end queries so far)");

    // 3. A new review on offer 2: its reviews and rating reload, the rest stays cached.
    app.review_added(2).await?;
    let before = app.db.queries.load(Ordering::Relaxed);
    app.offer_page(2).await?;
    let reloaded = app.db.queries.load(Ordering::Relaxed) - before;
    println!("after a new review on offer 2: {reloaded} fields reloaded (reviews, rating)");
    assert_eq!(reloaded, 2);

    let stats = app.cache.stats();
    let views = 200 + 100 + 1;
    let reads = views * 3;
    let uncached = BACKEND_LATENCY * reads as u32;
    println!(
        "\n{views} page views, {reads} field reads: {} cache hits, {} served by another \
         caller's load, {} loads ({:.1}% answered without a back-end query)",
        stats.hits,
        stats.coalesced,
        stats.loads,
        100.0 * (reads - stats.loads) as f64 / reads as f64
    );
    println!(
        "time in the back end without the cache: {uncached:.1?}; with it: {:.1?}",
        BACKEND_LATENCY * stats.loads as u32
    );
    let l1 = &stats.tiers[0].layer;
    println!("L1: {} entries, {} bytes", l1.entries, l1.bytes);
    Ok(())
}
