//! Key families end to end over a real `redis-server`: two instances, each
//! an L1 memory tier over a shared `RedisLayer`, kept in step by the
//! `RedisBackplane`. The offers service's rules, with the pages of an
//! offer's reviews declared a family, invalidate every page without a
//! single `SCAN`; hole constraints keep ids holding `:` and `*` apart.
//!
//! Needs `redis-server` and `redis-cli` on PATH (`apt-get install -y redis-server`).

use std::time::{Duration, Instant};

use cache_core::CacheLayer;
use cache_invalidation::{Invalidator, Rules};
use cache_memory::MemoryLayer;
use cache_redis::{RedisBackplane, RedisLayer};
use cache_test_support::ctx;
use cache_test_support::redis::RedisServer;
use cache_tiered::{Tier, TieredCache};

const TTL: Duration = Duration::from_secs(300);

/// The offers service's rules, the pages of an offer's reviews
/// (`reviews:offer:{id}:page:{after}:limit:{first}`) a family of its id.
fn offers_rules() -> Rules {
    Rules::builder()
        .rule(
            "reviews:offer:{id:digits}",
            [
                "reviews:offer:{id}:*",
                "rating:offer:{id}",
                "offer_stats:{id}",
            ],
        )
        .rule("user:{id}", ["reviews:author:{id}", "user_activity:{id}"])
        .family("reviews:offer:{id:digits}:*")
        .build()
        .unwrap()
}

struct Instance {
    cache: TieredCache,
    l1: MemoryLayer,
    invalidator: Invalidator,
}

/// An instance; with `stamped`, its cache stamps the rules' families.
async fn instance(server: &RedisServer, rules: &Rules, stamped: bool) -> Instance {
    let l1 = MemoryLayer::new();
    let l2 = RedisLayer::builder(server.url())
        .namespace("offers:")
        .timeout(Duration::from_secs(2))
        .build()
        .await
        .unwrap();
    let backplane = RedisBackplane::builder(server.url())
        .channel("offers:invalidation")
        .timeout(Duration::from_secs(2))
        .build()
        .await
        .unwrap();
    let mut builder = TieredCache::builder()
        .layer(l1.clone())
        .tier(Tier::new(l2))
        .backplane(backplane);
    if stamped {
        builder = builder.key_families(rules.families());
    }
    let cache = builder.build_async().await.unwrap();
    let invalidator = Invalidator::new(cache.clone(), rules.clone());
    assert_eq!(invalidator.uses_families(), stamped);
    Instance {
        cache,
        l1,
        invalidator,
    }
}

/// Waits (up to 5 s of real time: the messages cross a real server) until
/// `done` holds.
async fn eventually(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// How many `SCAN` calls the server has run since its stats were reset.
fn scans(server: &RedisServer) -> u64 {
    let stats = server.cli(&["INFO", "commandstats"]);
    stats
        .lines()
        .find_map(|line| line.strip_prefix("cmdstat_scan:calls="))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |calls| calls.parse().unwrap())
}

/// Every key cached for `offer`: pages of its reviews, rating and stats.
fn offer_keys(offer: u32) -> Vec<String> {
    let mut keys: Vec<String> = [("0", 10), ("0", 20), ("cursor:abc", 10)]
        .iter()
        .map(|(after, first)| format!("reviews:offer:{offer}:page:{after}:limit:{first}"))
        .collect();
    keys.push(format!("rating:offer:{offer}"));
    keys.push(format!("offer_stats:{offer}"));
    keys
}

/// A cache-aside read on `instance`: what the cache has, or `loaded`.
async fn read(instance: &Instance, key: &str, loaded: &str) -> String {
    let loaded = loaded.to_owned();
    instance
        .cache
        .get_or_compute(key, TTL, || async move { Ok::<_, std::io::Error>(loaded) })
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_review_misses_every_page_rating_and_stats_of_its_offer_on_both_instances() {
    let server = RedisServer::start();
    let rules = offers_rules();
    let a = instance(&server, &rules, true).await;
    let b = instance(&server, &rules, true).await;
    let keys_42 = offer_keys(42);
    let keys_43 = offer_keys(43);
    // a loads everything; b reads it through its L1 (values and versions).
    for key in keys_42.iter().chain(&keys_43) {
        assert_eq!(read(&a, key, "v1").await, "v1");
        assert_eq!(
            read(&b, key, "never loaded").await,
            "v1",
            "{key} from Redis"
        );
        assert!(b.l1.get(&ctx::read(), key).await.unwrap().is_some());
    }
    let version = b.cache.tag_key("reviews:offer:42:*");
    assert!(b.l1.get(&ctx::read(), &version).await.unwrap().is_some());

    server.cli(&["CONFIG", "RESETSTAT"]);
    let invalidated = a
        .invalidator
        .invalidate_key("reviews:offer:42")
        .await
        .unwrap();
    assert!(invalidated.report.is_complete(), "{}", invalidated.report);
    let by_family: Vec<&str> = invalidated.by_family.iter().map(|p| p.as_str()).collect();
    assert_eq!(by_family, ["reviews:offer:42:*"]);
    assert_eq!(
        scans(&server),
        0,
        "no SCAN: the family's version went instead"
    );
    let stats = a.invalidator.stats();
    assert_eq!((stats.by_family, stats.scans), (1, 0));

    // One message: b drops its L1 copies (the version among them).
    eventually("b to apply the invalidation", || {
        b.cache.stats().backplane.received == 1
    })
    .await;
    assert!(b.l1.get(&ctx::read(), &version).await.unwrap().is_none());
    for instance in [&a, &b] {
        for key in &keys_42 {
            assert_eq!(
                instance.cache.get::<String>(key).await.unwrap(),
                None,
                "{key}"
            );
        }
        for key in &keys_43 {
            assert_eq!(
                instance.cache.get::<String>(key).await.unwrap().as_deref(),
                Some("v1"),
                "{key} of offer 43 stays"
            );
        }
    }
    // The next reads load the new data, never the old. (Whether a then
    // finds b's value in Redis or loads its own depends on timing: a fill
    // that began within the clock's uncertainty of the removal of the
    // stale copy is refused by Redis's removal markers.)
    for key in &keys_42 {
        assert_eq!(read(&b, key, "v2").await, "v2", "{key}");
        assert_eq!(read(&a, key, "v2").await, "v2", "{key}");
    }
    assert_eq!(scans(&server), 0);

    // The same rules on an instance that does not stamp the families: its
    // invalidations scan (and still remove what the others stamped).
    let c = instance(&server, &rules, false).await;
    let invalidated = c
        .invalidator
        .invalidate_key("reviews:offer:43")
        .await
        .unwrap();
    assert!(invalidated.by_family.is_empty());
    assert!(scans(&server) > 0, "the dependent was scanned");
    assert_eq!(c.invalidator.stats().scans, 1);
    eventually("a and b to apply c's invalidation", || {
        a.cache.stats().backplane.received == 1 && b.cache.stats().backplane.received == 2
    })
    .await;
    for instance in [&a, &b, &c] {
        for key in &keys_43 {
            assert_eq!(
                instance.cache.get::<String>(key).await.unwrap(),
                None,
                "{key}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_that_cannot_hold_a_colon_keep_keys_with_colons_and_stars_apart() {
    let server = RedisServer::start();
    let rules = Rules::builder()
        .rule("reviews:offer:{id:no-colon}", ["reviews:offer:{id}:*"])
        .family("reviews:offer:{id:no-colon}:*")
        .build()
        .unwrap();
    let a = instance(&server, &rules, true).await;
    let b = instance(&server, &rules, true).await;
    // Offer 1's pages (the second one's segment after the id holds a `:`),
    // offer 12's, and offers whose ids hold glob characters.
    let keys = [
        "reviews:offer:1:page:0",
        "reviews:offer:1:2:page:0",
        "reviews:offer:12:page:0",
        "reviews:offer:1*:page:0",
        "reviews:offer:*:page:0",
    ];
    let load_all = || async {
        for key in keys {
            read(&a, key, key).await;
            read(&b, key, key).await;
        }
    };
    let left = |instance: &Instance| {
        let cache = instance.cache.clone();
        async move {
            let mut left = Vec::new();
            for key in keys {
                if cache.get::<String>(key).await.unwrap().is_some() {
                    left.push(key);
                }
            }
            left
        }
    };
    load_all().await;
    server.cli(&["CONFIG", "RESETSTAT"]);
    for (messages, (offer, expected_left)) in (1..).zip([
        // `1:2` is no offer id: the key itself goes, nothing of offer 1.
        ("reviews:offer:1:2", &keys[..]),
        // `*` is an id, matched as itself: nothing else goes.
        ("reviews:offer:*", &keys[..4]),
        ("reviews:offer:1*", &keys[..3]),
        // Offer 1: both its pages, not offer 12's.
        ("reviews:offer:1", &keys[2..3]),
    ]) {
        let invalidated = b.invalidator.invalidate_key(offer).await.unwrap();
        assert!(invalidated.report.is_complete(), "{}", invalidated.report);
        eventually("a to apply b's message", || {
            a.cache.stats().backplane.received == messages
        })
        .await;
        assert_eq!(
            left(&a).await,
            expected_left,
            "after invalidating {offer} (a)"
        );
        assert_eq!(
            left(&b).await,
            expected_left,
            "after invalidating {offer} (b)"
        );
    }
    assert_eq!(scans(&server), 0);
    let patterns: Vec<String> = b
        .invalidator
        .rules()
        .expand("reviews:offer:1:2")
        .unwrap()
        .iter()
        .map(|p| p.as_str().to_owned())
        .collect();
    assert_eq!(patterns, ["reviews:offer:1:2"]);
}

/// What an invalidation costs by family and by scan among `keys` other keys
/// in Redis: a measurement, not a check (`--ignored`), for
/// `docs/invalidation.md`. Set `FAMILY_SCALE_KEYS` (default 1,000,000).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run with --ignored --nocapture"]
async fn measure_family_and_scan_at_scale() {
    let keys: u64 = std::env::var("FAMILY_SCALE_KEYS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1_000_000);
    let server = RedisServer::start_with(&["--enable-debug-command", "yes"]);
    server.cli(&["DEBUG", "POPULATE", &keys.to_string(), "other:", "16"]);
    let rules = offers_rules();
    let a = instance(&server, &rules, true).await;
    let c = instance(&server, &rules, false).await;
    let pages = 1_000;
    for (instance, offer) in [(&a, 42), (&c, 43)] {
        for page in 0..pages {
            let key = format!("reviews:offer:{offer}:page:{page}:limit:10");
            read(instance, &key, "v1").await;
        }
        server.cli(&["CONFIG", "RESETSTAT"]);
        let started = Instant::now();
        let invalidated = instance
            .invalidator
            .invalidate_key(&format!("reviews:offer:{offer}"))
            .await
            .unwrap();
        let took = started.elapsed();
        let how = if invalidated.by_family.is_empty() {
            "by scan"
        } else {
            "by family"
        };
        println!(
            "{pages} pages among {keys} keys, {how}: {took:?}, {} SCAN calls",
            scans(&server)
        );
        let first = format!("reviews:offer:{offer}:page:0:limit:10");
        assert_eq!(a.cache.get::<String>(&first).await.unwrap(), None);
    }
}
