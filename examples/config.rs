//! The whole stack from one file: `examples/stack.toml` (L1, Redis, a
//! breaker, the backplane, a TTL table and dependency rules) built with one
//! call of `layered-cache`, then two instances of the offers service using
//! it.
//!
//! Run it with `cargo run -p examples --example config`. It uses the Redis
//! at `REDIS_URL` if set (in an `config-example` namespace, emptied first),
//! else starts a throwaway `redis-server` (which must be installed).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use layered_cache::cache_core::{CallContext, Operation};
use layered_cache::config::{StackConfig, format_duration};
use layered_cache::{CacheLayer, Pattern, Stack};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Review {
    author_id: u64,
    stars: u8,
}

/// The slow database both instances query, counting its queries.
#[derive(Default)]
struct OffersDb {
    queries: AtomicU64,
}

impl OffersDb {
    async fn query<T>(&self, answer: T) -> Result<T, std::io::Error> {
        self.queries.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(20)).await;
        Ok(answer)
    }

    fn queries(&self) -> u64 {
        self.queries.load(Ordering::Relaxed)
    }
}

/// The resolvers of one instance. No TTL in sight: each key's comes from
/// the `[[ttl]]` table of the file.
struct Offers {
    stack: Stack,
    db: Arc<OffersDb>,
}

impl Offers {
    async fn average_rating(&self, offer: u64) -> layered_cache::Result<f32> {
        let db = self.db.clone();
        self.stack
            .cache
            .entry(&format!("rating:offer:{offer}"))
            .get_or_compute(move || async move { db.query(4.5f32).await })
            .await
    }

    async fn reviews(
        &self,
        offer: u64,
        after: u64,
        first: u64,
    ) -> layered_cache::Result<Vec<Review>> {
        let db = self.db.clone();
        let page = (after..after + first)
            .map(|n| Review {
                author_id: n % 7,
                stars: (n % 5 + 1) as u8,
            })
            .collect::<Vec<_>>();
        self.stack
            .cache
            .entry(&format!("reviews:offer:{offer}:page:{after}:limit:{first}"))
            .get_or_compute(move || async move { db.query(page).await })
            .await
    }

    /// `None` for an offer that does not exist, cached for the rule's
    /// negative TTL.
    async fn offer(&self, offer: u64) -> layered_cache::Result<Option<String>> {
        let db = self.db.clone();
        self.stack
            .cache
            .entry(&format!("offer:{offer}"))
            .get_or_compute_optional(move || async move {
                db.query((offer < 100).then(|| format!("Offer {offer}")))
                    .await
            })
            .await
    }

    /// Waits until this instance has applied `count` messages from the other.
    async fn caught_up(&self, count: u64) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.stack.cache.stats().backplane.received < count {
            assert!(
                Instant::now() < deadline,
                "the backplane message never came"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

/// How long `layer` keeps `key` from now, if it holds it, in whole seconds
/// (the milliseconds since the write are noise).
async fn kept(layer: &dyn CacheLayer, key: &str) -> Option<Duration> {
    let ctx = CallContext::system(Operation::Read);
    let expiry = layer.get(&ctx, key).await.ok()??.expiry()?;
    let left = expiry.saturating_duration_since(Instant::now());
    Some(Duration::from_secs(left.as_secs_f64().round() as u64))
}

/// Where `key`'s TTL came from and how long each tier keeps it fresh.
///
/// With fail-safe on (`[cache] fail_safe`), a value is kept that much
/// longer, stale, as a fallback for a failing loader; an L1 cap bounds how
/// long the L1 copy is fresh (it too is kept, stale, for the grace).
async fn show(config: &StackConfig, stack: &Stack, redis: &dyn CacheLayer, key: &str) {
    let grace = config.cache.fail_safe.unwrap_or_default();
    let rule = config
        .ttl
        .iter()
        .find(|rule| Pattern::new(rule.pattern.as_str()).matches(key));
    let l1_cap = [rule.and_then(|r| r.l1_ttl_cap), config.l1.ttl_cap]
        .into_iter()
        .flatten()
        .min();
    let fresh = kept(redis, key)
        .await
        .map(|kept| kept.saturating_sub(grace));
    println!(
        "{key:<32} rule {:<16} fresh in Redis {:<6} in L1 at most {:<4} (then {} stale, for fail-safe)",
        rule.map_or("(default)", |r| r.pattern.as_str()),
        fresh.map_or("-".into(), format_duration),
        l1_cap.map_or("-".into(), format_duration),
        format_duration(grace),
    );
    // L1 holds it too (the stack's first tier).
    assert!(kept(&stack.l1, key).await.is_some());
}

/// What was built, in a few lines.
fn describe(config: &StackConfig, stack: &Stack) {
    let layers: Vec<&str> = stack.cache.layers().map(|layer| layer.name()).collect();
    println!(
        "cache {:?}: tiers {}",
        config.cache.name,
        layers.join(" -> ")
    );
    if let Some(redis) = &config.redis {
        // Not the URL: REDIS_URL may hold a password (the config's `Debug`
        // prints URLs without it).
        println!(
            "  redis: namespace {:?}, timeout {}, {} connection(s)",
            redis.namespace,
            format_duration(redis.timeout),
            redis.pool.max_open
        );
    }
    if let Some(breaker) = &stack.breaker {
        println!("  breaker {:?} on the Redis tier", breaker.name());
    }
    if let Some(backplane) = &stack.backplane {
        println!("  backplane on channel {:?}", backplane.channel());
    }
    for rule in &config.ttl {
        let show = |d: Option<Duration>| d.map_or("-".to_owned(), format_duration);
        println!(
            "  ttl {:<18} ttl {:<4} l1 cap {:<4} jitter {}",
            rule.pattern,
            show(rule.ttl),
            show(rule.l1_ttl_cap),
            rule.jitter.map_or("-".to_owned(), |j| j.to_string())
        );
    }
    for rule in &config.rules {
        println!("  rule {} -> {}", rule.trigger, rule.dependents.join(", "));
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/stack.toml");
    let mut config = StackConfig::from_toml_file(path)?;

    // The file names a local Redis; point it at REDIS_URL, or at a
    // throwaway server.
    let (url, _server) = match std::env::var("REDIS_URL") {
        Ok(url) => (url, None),
        Err(_) => {
            let server = cache_test_support::redis::RedisServer::start();
            (server.url(), Some(server))
        }
    };
    if let Some(redis) = config.redis.as_mut() {
        redis.url = Some(url);
        redis.namespace = "config-example".into();
    }
    if let Some(backplane) = config.backplane.as_mut() {
        backplane.channel = "config-example:invalidation".into();
    }

    // One call per instance builds everything the file describes.
    let db = Arc::new(OffersDb::default());
    let a = Offers {
        stack: config.build().await?,
        db: db.clone(),
    };
    let b = Offers {
        stack: config.build().await?,
        db: db.clone(),
    };
    describe(&config, &a.stack);
    // A clean slate in a shared Redis (this example's namespace only).
    a.stack.cache.invalidate(&Pattern::new("*")).await?;
    b.caught_up(1).await;
    println!();

    // Each kind of key lives as its [[ttl]] rule says, in L1 and in Redis.
    a.average_rating(7).await?;
    a.reviews(7, 0, 10).await?;
    let redis = a
        .stack
        .redis
        .clone()
        .expect("the file has a [redis] section");
    assert_eq!(a.offer(404).await?, None);
    assert_eq!(a.offer(404).await?, None, "\"not found\" is cached too");
    for key in [
        "rating:offer:7",
        "reviews:offer:7:page:0:limit:10",
        "offer:404",
    ] {
        show(&config, &a.stack, &redis, key).await;
    }
    assert_eq!(db.queries(), 3);

    // The other instance finds what the first loaded in Redis.
    let before = db.queries();
    b.average_rating(7).await?;
    b.reviews(7, 0, 10).await?;
    println!(
        "instance B, the same calls:       {} queries (Redis hits)",
        db.queries() - before
    );
    assert_eq!(db.queries(), before);

    // A review of offer 7 is written: the dependency rule takes its pages
    // and its rating with it, in Redis and in both L1s.
    let invalidated = a
        .stack
        .invalidator
        .as_ref()
        .expect("the file has [[rules]]")
        .invalidate_key("reviews:offer:7")
        .await?;
    let patterns: Vec<&str> = invalidated.patterns.iter().map(Pattern::as_str).collect();
    println!("invalidate reviews:offer:7 removed {}", patterns.join(", "));
    b.caught_up(2).await;
    let before = db.queries();
    b.average_rating(7).await?;
    b.reviews(7, 0, 10).await?;
    println!(
        "instance B, the same calls again: {} queries (reloaded)",
        db.queries() - before
    );
    assert_eq!(db.queries() - before, 2);
    Ok(())
}
