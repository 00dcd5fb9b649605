//! Two instances ("pods") of the offers service sharing one Redis: each has
//! an in-memory L1 over the shared Redis L2 (guarded by a circuit breaker),
//! a Redis pub/sub backplane that keeps the other pod's L1 in step with
//! every write and invalidation, an invalidation queue for when Redis
//! fails, and an `Invalidator` with the offers service's dependency rules.
//!
//! Run it with `cargo run -p examples --example offers`. It uses the Redis
//! at `REDIS_URL` if set (its `offers-example:` namespace is flushed at the
//! start), else starts a throwaway `redis-server` (which must be installed).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cache_breaker::CircuitBreaker;
use cache_core::Pattern;
use cache_invalidation::{Invalidator, Rules};
use cache_memory::MemoryLayer;
use cache_redis::{RedisBackplane, RedisLayer};
use cache_tiered::{Tier, TieredCache};
use serde::{Deserialize, Serialize};

const TTL: Duration = Duration::from_secs(300);
const BACKEND_LATENCY: Duration = Duration::from_millis(20);

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Review {
    author_id: u64,
    stars: u8,
}

/// The slow database both pods query, counting its queries.
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

    fn queries(&self) -> u64 {
        self.queries.load(Ordering::Relaxed)
    }
}

/// When these keys change, so do those: the offers service's rules.
fn rules() -> Result<Rules, cache_invalidation::Error> {
    Rules::builder()
        .rule(
            "reviews:offer:{id}",
            [
                "reviews:offer:{id}:*",
                "rating:offer:{id}",
                "offer_stats:{id}",
            ],
        )
        .rule("user:{id}", ["reviews:author:{id}", "user_activity:{id}"])
        .build()
}

/// One instance of the service.
struct Pod {
    name: &'static str,
    cache: TieredCache,
    invalidator: Invalidator,
    db: Arc<OffersDb>,
}

impl Pod {
    async fn start(
        name: &'static str,
        redis_url: &str,
        db: Arc<OffersDb>,
    ) -> Result<Pod, Box<dyn std::error::Error>> {
        let l1 = MemoryLayer::builder()
            .max_entries(10_000)
            .max_bytes(16 << 20)
            .build()?;
        let l2 = RedisLayer::builder(redis_url)
            .namespace("offers-example:")
            .timeout(Duration::from_millis(200))
            .build()
            .await?;
        let breaker = Arc::new(CircuitBreaker::builder().name("redis").build()?);
        let backplane = RedisBackplane::builder(redis_url)
            .channel("offers-example:invalidation")
            .build()
            .await?;
        let cache = TieredCache::builder()
            .tier(Tier::new(l1).ttl_cap(Duration::from_secs(60)))
            .tier(Tier::new(l2).shared_policy(breaker))
            // Writes and removals tell the other pod to drop its L1 copy.
            .backplane(backplane)
            // What a dead Redis missed is retried until it lands.
            .invalidation_queue(10_000)
            .build_async() // subscribes before the cache is used
            .await?;
        let invalidator = Invalidator::new(cache.clone(), rules()?);
        Ok(Pod {
            name,
            cache,
            invalidator,
            db,
        })
    }

    /// The `averageRating` resolver.
    async fn average_rating(&self, offer: u64) -> cache_tiered::Result<f32> {
        self.cache
            .get_or_compute(&format!("rating:offer:{offer}"), TTL, || {
                self.db.query(4.5f32)
            })
            .await
    }

    /// The `reviews` resolver (one page).
    async fn reviews(
        &self,
        offer: u64,
        after: u64,
        first: u64,
    ) -> cache_tiered::Result<Vec<Review>> {
        let key = format!("reviews:offer:{offer}:page:{after}:limit:{first}");
        let page = (after..after + first)
            .map(|n| Review {
                author_id: n % 7,
                stars: (n % 5 + 1) as u8,
            })
            .collect();
        self.cache
            .get_or_compute(&key, TTL, || self.db.query(page))
            .await
    }

    /// The `reviews` of an author (the user page).
    async fn reviews_by(&self, author: u64) -> cache_tiered::Result<Vec<Review>> {
        self.cache
            .get_or_compute(&format!("reviews:author:{author}"), TTL, || {
                self.db.query(vec![Review {
                    author_id: author,
                    stars: 5,
                }])
            })
            .await
    }

    /// One offer page: its rating and first two pages of reviews.
    async fn offer_page(&self, offer: u64) -> cache_tiered::Result<()> {
        self.average_rating(offer).await?;
        self.reviews(offer, 0, 10).await?;
        self.reviews(offer, 10, 10).await?;
        Ok(())
    }

    /// Waits until this pod has applied `count` messages from other pods
    /// (one per write or invalidation call; the backplane is asynchronous:
    /// about one Redis round trip).
    async fn caught_up(&self, count: u64) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.cache.stats().backplane.received < count {
            assert!(Instant::now() < deadline, "{} never caught up", self.name);
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

/// Runs `step` and returns how many database queries it caused.
async fn queries_of<F: std::future::Future<Output = cache_tiered::Result<()>>>(
    db: &OffersDb,
    step: F,
) -> Result<u64, cache_tiered::Error> {
    let before = db.queries();
    step.await?;
    Ok(db.queries() - before)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (redis_url, _server) = match std::env::var("REDIS_URL") {
        Ok(url) => (url, None),
        Err(_) => {
            let server = cache_test_support::redis::RedisServer::start();
            (server.url(), Some(server))
        }
    };
    let db = Arc::new(OffersDb::default());
    let a = Pod::start("pod A", &redis_url, db.clone()).await?;
    let b = Pod::start("pod B", &redis_url, db.clone()).await?;
    // A clean slate in a shared Redis (this example's namespace only).
    a.invalidator.invalidate(&Pattern::new("*")).await?;
    b.caught_up(1).await;

    let n = queries_of(&db, a.offer_page(1)).await?;
    println!("pod A, offer 1 page, cold:              {n} database queries");
    assert_eq!(n, 3);
    let n = queries_of(&db, b.offer_page(1)).await?;
    println!("pod B, offer 1 page (from Redis):       {n} database queries");
    assert_eq!(n, 0);
    let n = queries_of(&db, b.offer_page(1)).await?;
    println!("pod B, again (from its own L1):         {n} database queries");
    assert_eq!(n, 0);

    // A review is written through pod A: the offer's reviews, rating and
    // stats go, in Redis, in A's L1, and (over the backplane) in B's L1.
    let invalidated = a.invalidator.invalidate_key("reviews:offer:1").await?;
    let patterns: Vec<&str> = invalidated.patterns.iter().map(Pattern::as_str).collect();
    println!("\npod A: new review on offer 1, invalidated {patterns:?}");
    b.caught_up(2).await;
    let n = queries_of(&db, b.offer_page(1)).await?;
    println!("pod B, offer 1 page after the review:   {n} database queries (fresh data)");
    assert_eq!(n, 3);
    let n = queries_of(&db, a.offer_page(1)).await?;
    println!("pod A, offer 1 page (B refilled Redis): {n} database queries");
    assert_eq!(n, 0);

    // The rating is recomputed and written through pod A: pod B drops its
    // L1 copy and reads the new one from Redis.
    a.cache.set("rating:offer:1", &4.0f32, TTL).await?;
    b.caught_up(3).await;
    let rating = b.average_rating(1).await?;
    println!("\npod A: wrote rating 4.0; pod B reads:     {rating:.1}");
    assert_eq!(rating, 4.0);

    // A user renames themselves through pod B: their reviews page goes too.
    a.reviews_by(5).await?;
    let received = a.cache.stats().backplane.received;
    b.invalidator.invalidate_key("user:5").await?;
    a.caught_up(received + 1).await;
    let n = queries_of(&db, async { a.reviews_by(5).await.map(drop) }).await?;
    println!("\npod B: user 5 changed; pod A reloads their reviews: {n} database query");
    assert_eq!(n, 1);

    for pod in [&a, &b] {
        let stats = pod.cache.stats();
        println!(
            "{}: {} hits, {} loads; {} messages sent, {} received",
            pod.name, stats.hits, stats.loads, stats.backplane.published, stats.backplane.received
        );
    }
    Ok(())
}
