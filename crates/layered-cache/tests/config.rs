//! `StackConfig`: the full example file parses, defaults round-trip, every
//! bad input gets an error naming its key, and built stacks work: L1 only,
//! and L1 over a real Redis (a throwaway `redis-server`, which must be
//! installed) with a TTL rule and a dependency rule end to end.
#![cfg(feature = "config")]

use std::time::Duration;

use layered_cache::config::{DependencyRule, RedisConfig, StackConfig, TtlRule};
use layered_cache::{ConfigError, ErrorClass, ManualClock};

const EXAMPLE: &str = include_str!("../../../examples/stack.toml");

/// The message of a config that does not parse or check.
fn error_of(text: &str) -> String {
    match StackConfig::from_toml_str(text) {
        Ok(config) => panic!("expected an error for {text:?}, got {config:?}"),
        Err(error) => {
            assert_eq!(error.class(), ErrorClass::Config, "{error}");
            error.to_string()
        }
    }
}

/// The problems of a config that parses but does not check, as
/// `field: reason` lines.
fn problems_of(text: &str) -> Vec<String> {
    match StackConfig::from_toml_str(text) {
        Err(error @ ConfigError::Invalid { .. }) => {
            error.problems().iter().map(ToString::to_string).collect()
        }
        other => panic!("expected invalid settings for {text:?}, got {other:?}"),
    }
}

#[test]
#[cfg_attr(
    not(all(feature = "redis", feature = "breaker", feature = "invalidation")),
    ignore = "needs the redis, breaker and invalidation features"
)]
fn the_example_file_parses_with_every_section() {
    let config = StackConfig::from_toml_str(EXAMPLE).unwrap();
    assert_eq!(config.cache.name, "offers");
    assert_eq!(config.cache.default_ttl, Duration::from_secs(300));
    assert_eq!(config.cache.fail_safe, Some(Duration::from_secs(3600)));
    assert_eq!(config.cache.soft_timeout, Some(Duration::from_millis(200)));
    assert_eq!(config.cache.invalidation_queue, Some(10_000));
    assert_eq!(config.l1.max_bytes, 256 << 20);
    assert_eq!(config.l1.ttl_cap, Some(Duration::from_secs(60)));
    let redis = config.redis.as_ref().unwrap();
    assert_eq!(redis.url.as_deref(), Some("redis://127.0.0.1:6379"));
    assert_eq!(redis.namespace, "offers");
    assert_eq!(redis.timeout, Duration::from_millis(100));
    assert_eq!((redis.pool.max_open, redis.pool.min_idle), (1, 1));
    let breaker = config.breaker.as_ref().unwrap();
    assert_eq!(breaker.recovery_timeout, Duration::from_secs(10));
    assert_eq!(breaker.success_threshold, 2, "a default");
    assert_eq!(
        config.backplane.as_ref().unwrap().channel,
        "offers:invalidation"
    );
    let patterns: Vec<&str> = config.ttl.iter().map(|r| r.pattern.as_str()).collect();
    assert_eq!(
        patterns,
        ["reviews:offer:*", "rating:offer:*", "offer:*"],
        "in order"
    );
    assert_eq!(config.ttl[0].l1_ttl_cap, Some(Duration::from_secs(30)));
    assert_eq!(config.ttl[1].jitter, Some(0.2));
    assert_eq!(config.ttl[2].negative_ttl, Some(Duration::from_secs(10)));
    assert_eq!(
        config.rules[1],
        DependencyRule::new("user:{id}", ["reviews:author:{id}", "user_activity:{id}"])
    );
}

#[test]
fn an_empty_file_is_the_defaults_and_round_trips() {
    let empty = StackConfig::from_toml_str("").unwrap();
    assert_eq!(empty, StackConfig::default());
    let text = empty.to_toml_string();
    assert_eq!(
        StackConfig::from_toml_str(&text).unwrap(),
        empty,
        "written as:\n{text}"
    );
    // Sections may be given empty: their defaults.
    let sections = StackConfig::from_toml_str("[cache]\n[l1]\n").unwrap();
    assert_eq!(sections, empty);
}

#[test]
#[cfg_attr(
    not(all(feature = "redis", feature = "breaker", feature = "invalidation")),
    ignore = "needs the redis, breaker and invalidation features"
)]
fn the_example_round_trips_and_empty_sections_are_defaults() {
    let example = StackConfig::from_toml_str(EXAMPLE).unwrap();
    let text = example.to_toml_string();
    assert_eq!(
        StackConfig::from_toml_str(&text).unwrap(),
        example,
        "written as:\n{text}"
    );
    let sections = StackConfig::from_toml_str(
        "[redis]\nurl = \"redis://h\"\n[redis.pool]\n[breaker]\n[backplane]\n",
    )
    .unwrap();
    assert_eq!(sections.redis, Some(RedisConfig::new("redis://h")));
    assert_eq!(sections.breaker, Some(Default::default()));
}

/// Without its cargo feature, a section says which feature it needs.
#[cfg(not(feature = "redis"))]
#[test]
fn a_section_without_its_feature_names_the_feature() {
    let problems = problems_of("[redis]\nurl = \"redis://h\"\n");
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("redis: a Redis tier needs the `redis` feature")),
        "{problems:?}"
    );
}

#[test]
#[cfg_attr(
    not(all(feature = "redis", feature = "breaker", feature = "invalidation")),
    ignore = "needs the redis, breaker and invalidation features"
)]
fn from_toml_file_names_the_file() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/stack.toml");
    assert!(StackConfig::from_toml_file(path).is_ok());
    let missing = StackConfig::from_toml_file("/nonexistent/stack.toml").unwrap_err();
    assert!(matches!(missing, ConfigError::Read { .. }), "{missing}");
    assert!(missing.to_string().contains("/nonexistent/stack.toml"));

    let dir = std::env::temp_dir().join(format!("layered-cache-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[l1]\nmax_entries = 1\n").unwrap();
    let error = StackConfig::from_toml_file(&bad).unwrap_err().to_string();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(
        error.contains("bad.toml") && error.contains("l1.max_entries"),
        "{error}"
    );
}

#[test]
fn unknown_keys_are_errors_naming_the_key() {
    for (text, key) in [
        ("colour = \"blue\"", "colour"),
        ("[cache]\ndefault_tll = \"5m\"", "default_tll"),
        ("[redis]\nurl = \"redis://h\"\n[redis.pool]\nmax = 2", "max"),
        ("[[ttl]]\npattern = \"a:*\"\nttl_cap = \"1s\"", "ttl_cap"),
        ("[l2]\nmax_entries = 5", "l2"),
    ] {
        let message = error_of(text);
        assert!(
            message.contains("unknown field") && message.contains(&format!("`{key}`")),
            "{text:?}: {message}"
        );
    }
}

#[test]
fn bad_values_are_errors_saying_where_and_why() {
    for (text, expected) in [
        (
            "[cache]\ndefault_ttl = \"5x\"",
            &["line 2", "default_ttl", "unknown unit"][..],
        ),
        (
            "[cache]\ndefault_ttl = 300",
            &["default_ttl", "\"300s\"", "not a bare number"],
        ),
        ("[cache]\ndefault_ttl = \"1.5m\"", &["whole numbers"]),
        (
            "[cache]\ndefault_ttl = \"off\"",
            &["default_ttl", "cannot be \"off\""],
        ),
        (
            "[l1]\nmax_bytes = \"12 XB\"",
            &["max_bytes", "unknown unit"],
        ),
        (
            "[l1]\nmax_bytes = \"off\"",
            &["max_bytes", "cannot be \"off\""],
        ),
        (
            "[redis]\nurl = \"redis://h\"\ncompress_above = -1",
            &["compress_above", "negative"],
        ),
        (
            "[l1]\nmax_entries = \"many\"",
            &["max_entries", "invalid type"],
        ),
        (
            "[redis]\nurl = \"redis://h\"\nread_from = \"nearest\"",
            &["read_from", "replicas-first"],
        ),
        ("[[ttl]]\nttl = \"5m\"", &["missing field `pattern`"]),
        ("[cache\nname = \"x\"", &["line 1"]),
    ] {
        let message = error_of(text);
        for part in expected {
            assert!(
                message.contains(part),
                "{text:?}: {part:?} not in {message}"
            );
        }
    }
}

#[test]
#[cfg_attr(
    not(all(feature = "redis", feature = "breaker", feature = "invalidation")),
    ignore = "needs the redis, breaker and invalidation features"
)]
fn settings_out_of_range_are_each_named() {
    let problems = problems_of(
        r#"
        [cache]
        default_ttl = "0s"
        ttl_jitter = 1.5
        soft_timeout = "5s"
        hard_timeout = "1s"
        invalidation_queue = 0

        [l1]
        max_entries = 1

        [redis]
        url = "redis://127.0.0.1:6379"
        namespace = "app:v2"
        [redis.pool]
        max_open = 1
        min_idle = 2

        [breaker]
        failure_threshold = 0
        failure_rate = { rate = 0.5, window = 10, min_calls = 20 }

        [[ttl]]
        pattern = "offer:[1"
        jitter = 1.0

        [[ttl]]
        pattern = ""
        l1_ttl_cap = "0s"

        [[ttl]]
        pattern = "offer:[1"
        "#,
    );
    let expected = [
        "cache.default_ttl: must be above zero",
        "cache.ttl_jitter: must be at least 0 and below 1",
        "cache.soft_timeout: must be shorter than cache.hard_timeout",
        "cache.invalidation_queue: must hold at least one call",
        "l1.max_entries: must be at least 2",
        "redis.namespace: \"app:v2\" has a `:`",
        "redis.pool.min_idle: must not exceed redis.pool.max_open (2 > 1)",
        "breaker.failure_threshold: must be at least 1",
        "breaker.failure_rate.min_calls: needs 1 <= min_calls <= window",
        "ttl[0].pattern: \"offer:[1\" opens a `[` class it never closes",
        "ttl[0].jitter: must be at least 0 and below 1",
        "ttl[1].pattern: is empty",
        "ttl[1].l1_ttl_cap: must be above zero",
        "ttl[2].pattern: \"offer:[1\" repeats ttl[0].pattern",
    ];
    for line in expected {
        assert!(
            problems.iter().any(|p| p.starts_with(line)),
            "{line:?} not in {problems:#?}"
        );
    }
    assert_eq!(problems.len(), expected.len() + 1, "{problems:#?}"); // + ttl[2]'s unclosed `[`
}

#[test]
#[cfg_attr(
    not(all(feature = "redis", feature = "breaker", feature = "invalidation")),
    ignore = "needs the redis, breaker and invalidation features"
)]
fn a_redis_section_without_a_server_says_what_to_write() {
    let problems = problems_of("[redis]\nnamespace = \"offers\"\n");
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].starts_with("redis.url: is missing"),
        "{problems:?}"
    );
    assert!(problems[0].contains("url = \"redis://"), "{problems:?}");

    let both = problems_of("[redis]\nurl = \"redis://a\"\ncluster = [\"redis://b\"]\n");
    assert!(
        both[0].starts_with("redis.cluster: give either url"),
        "{both:?}"
    );

    let scheme = problems_of("[redis]\nurl = \"http://:hunter2@127.0.0.1\"\n");
    assert!(scheme[0].contains("is not a Redis URL"), "{scheme:?}");
    assert!(
        !scheme[0].contains("hunter2"),
        "no password in messages: {scheme:?}"
    );

    let replicas = problems_of(
        "[redis]\ncluster = [\"redis://a\"]\nreplicas = [\"redis://b\"]\nread_from = \"replicas-first\"\n",
    );
    assert!(
        replicas.iter().any(|p| p.starts_with("redis.replicas:")),
        "{replicas:?}"
    );
    assert!(
        replicas.iter().any(|p| p.starts_with("redis.read_from:")),
        "{replicas:?}"
    );
}

#[test]
fn parts_that_need_redis_say_so() {
    let problems = problems_of("[breaker]\n[backplane]\n");
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("breaker: guards the Redis tier")),
        "{problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("backplane: runs over Redis pub/sub")),
        "{problems:?}"
    );
    // Switched off, they need nothing.
    StackConfig::from_toml_str("[breaker]\nenabled = false\n[backplane]\nenabled = false\n")
        .unwrap();
}

#[cfg(feature = "invalidation")]
#[test]
fn bad_dependency_rules_are_named() {
    let problems = problems_of(
        r#"
        [[rules]]
        trigger = "user:{id}"
        dependents = ["reviews:author:{author}"]

        [[rules]]
        trigger = "offer:{id"
        dependents = ["x"]

        [[rules]]
        trigger = "offer:{id}"
        dependents = []
        "#,
    );
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("rules[0]: ") && p.contains("{author}")),
        "{problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("rules[1]: ") && p.contains("offer:{id")),
        "{problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("rules[2].dependents: is empty")),
        "{problems:?}"
    );
}

#[test]
fn a_config_made_in_code_is_checked_too() {
    let mut config = StackConfig::default();
    let mut rule = TtlRule::new("offer:*");
    rule.jitter = Some(2.0);
    config.ttl.push(rule);
    let error = config.validate().unwrap_err();
    assert_eq!(error.problems()[0].field, "ttl[0].jitter");
}

#[tokio::test]
async fn an_l1_only_stack_builds_and_serves() {
    let clock = ManualClock::shared();
    let config = StackConfig::from_toml_str(
        r#"
        [cache]
        name = "l1-only"
        default_ttl = "1m"

        [l1]
        max_entries = 1_000
        ttl_cap = "30s"

        [[ttl]]
        pattern = "rating:*"
        ttl = "10s"

        [[ttl]]
        pattern = "offer:*"
        ttl = "5m"
        l1_ttl_cap = "5s"
        "#,
    )
    .unwrap();
    let stack = config
        .build_with(|cache| cache.clock(clock.clone()))
        .await
        .unwrap();
    #[cfg(feature = "invalidation")]
    assert!(stack.invalidator.is_none(), "no [[rules]]");
    #[cfg(feature = "redis")]
    assert!(stack.redis.is_none() && stack.backplane.is_none());

    let cache = &stack.cache;
    assert_eq!(cache.layers().count(), 1);
    let rating: f32 = cache
        .entry("rating:1")
        .get_or_compute(|| async { Ok::<_, std::io::Error>(4.5) })
        .await
        .unwrap();
    assert_eq!(rating, 4.5);
    cache.entry("offer:1").set(&"Lamp").await.unwrap();
    cache.entry("user:1").set(&"Ann").await.unwrap();
    assert_eq!(stack.l1.len(), 3);

    clock.advance(Duration::from_secs(5));
    assert_eq!(
        cache.get::<String>("offer:1").await.unwrap(),
        None,
        "the rule's L1 cap"
    );
    assert_eq!(cache.get::<f32>("rating:1").await.unwrap(), Some(4.5));
    clock.advance(Duration::from_secs(5));
    assert_eq!(
        cache.get::<f32>("rating:1").await.unwrap(),
        None,
        "the rule's TTL"
    );
    assert!(cache.get::<String>("user:1").await.unwrap().is_some());
    clock.advance(Duration::from_secs(20));
    assert_eq!(
        cache.get::<String>("user:1").await.unwrap(),
        None,
        "[l1] ttl_cap"
    );
    assert_eq!(cache.stats().tiers[0].name, "memory");
}

#[cfg(feature = "invalidation")]
#[tokio::test]
async fn rules_without_redis_work_on_the_l1() {
    let stack = StackConfig::from_toml_str(
        "[[rules]]\ntrigger = \"reviews:offer:{id}\"\ndependents = [\"rating:offer:{id}\"]\n",
    )
    .unwrap()
    .build()
    .await
    .unwrap();
    let cache = &stack.cache;
    cache.entry("rating:offer:1").set(&4.5f32).await.unwrap();
    let invalidator = stack.invalidator.as_ref().unwrap();
    invalidator.invalidate_key("reviews:offer:1").await.unwrap();
    assert_eq!(cache.get::<f32>("rating:offer:1").await.unwrap(), None);
}

#[cfg(feature = "invalidation")]
#[tokio::test]
async fn families_from_toml_remove_a_wildcard_dependent_without_a_scan() {
    let stack = StackConfig::from_toml_str(
        r#"
        families = ["reviews:offer:{id:digits}:*"]

        [[rules]]
        trigger = "reviews:offer:{id:digits}"
        dependents = ["reviews:offer:{id}:*", "rating:offer:{id}"]
        "#,
    )
    .unwrap()
    .build()
    .await
    .unwrap();
    let cache = &stack.cache;
    for key in [
        "reviews:offer:42:page:0:limit:10",
        "reviews:offer:42:page:1:limit:10",
        "reviews:offer:43:page:0:limit:10",
    ] {
        cache.entry(key).set(&"a page".to_owned()).await.unwrap();
    }
    let invalidated = stack
        .invalidator
        .as_ref()
        .expect("rules make an invalidator")
        .invalidate_key("reviews:offer:42")
        .await
        .unwrap();
    assert_eq!(invalidated.by_family.len(), 1, "{invalidated:?}");
    for page in 0..2 {
        let key = format!("reviews:offer:42:page:{page}:limit:10");
        assert_eq!(cache.get::<String>(&key).await.unwrap(), None, "{key}");
    }
    assert!(
        cache
            .get::<String>("reviews:offer:43:page:0:limit:10")
            .await
            .unwrap()
            .is_some(),
        "another offer's pages stay"
    );
}

#[cfg(feature = "invalidation")]
#[test]
fn bad_families_are_named() {
    let problems = problems_of(
        r#"
        families = ["reviews:offer:{id:digits}:*", "offer:{id"]
        "#,
    );
    assert!(
        problems.iter().any(|p| p.starts_with("families[1]: ")),
        "{problems:?}"
    );
    assert!(
        !problems.iter().any(|p| p.starts_with("families[0]")),
        "{problems:?}"
    );
}

#[cfg(not(feature = "invalidation"))]
#[test]
fn families_without_the_invalidation_feature_are_refused() {
    let problems = problems_of(r#"families = ["reviews:offer:{id:digits}:*"]"#);
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("families: ") && p.contains("`invalidation` feature")),
        "{problems:?}"
    );
}

#[cfg(all(feature = "redis", feature = "breaker", feature = "invalidation"))]
mod redis {
    use super::*;
    use cache_test_support::redis::RedisServer;
    use layered_cache::cache_core::{CallContext, Operation};
    use layered_cache::{CacheLayer, Stack};

    /// What a layer holds under `key` now, and how long it has left.
    async fn left(layer: &dyn CacheLayer, key: &str) -> Option<Duration> {
        let ctx = CallContext::system(Operation::Read);
        let entry = layer.get(&ctx, key).await.unwrap()?;
        Some(
            entry
                .expiry()
                .expect("every value here has a TTL")
                .saturating_duration_since(std::time::Instant::now()),
        )
    }

    /// The offers stack over the server at `url`: two instances built from
    /// this share Redis and the backplane.
    fn config(url: &str) -> StackConfig {
        StackConfig::from_toml_str(&format!(
            r#"
            [cache]
            name = "offers"
            default_ttl = "1m"

            [l1]
            ttl_cap = "1m"

            [redis]
            url = "{url}"
            namespace = "offers-test"
            timeout = "2s"

            [breaker]
            name = "redis"

            [backplane]
            channel = "offers-test:invalidation"
            timeout = "2s"

            [[ttl]]
            pattern = "rating:offer:*"
            ttl = "10m"
            l1_ttl_cap = "2s"

            [[rules]]
            trigger = "reviews:offer:{{id}}"
            dependents = ["reviews:offer:{{id}}:*", "rating:offer:{{id}}"]
            "#
        ))
        .unwrap()
    }

    /// Waits until `stack` has applied `count` messages from other instances.
    async fn received(stack: &Stack, count: u64) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while stack.cache.stats().backplane.received < count {
            assert!(std::time::Instant::now() < deadline, "no message arrived");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn an_l1_and_redis_stack_applies_ttl_and_dependency_rules() {
        let server = RedisServer::start();
        let (a, b) = (
            config(&server.url()).build().await.unwrap(),
            config(&server.url()).build().await.unwrap(),
        );
        assert_eq!(a.cache.layers().count(), 2);
        assert!(a.breaker.is_some() && a.backplane.is_some());
        let redis = a.redis.clone().unwrap();
        assert_eq!(redis.namespace(), "offers-test:");

        // The TTL rule: 10 minutes in Redis, 2 s in L1.
        let rating: f32 = a
            .cache
            .entry("rating:offer:1")
            .get_or_compute(|| async { Ok::<_, std::io::Error>(4.5) })
            .await
            .unwrap();
        assert_eq!(rating, 4.5);
        let in_l1 = left(&a.l1, "rating:offer:1").await.unwrap();
        let in_redis = left(&redis, "rating:offer:1").await.unwrap();
        assert!(in_l1 <= Duration::from_secs(2), "{in_l1:?}");
        assert!(in_redis > Duration::from_secs(590), "{in_redis:?}");
        // No rule: the default TTL, and the [l1] cap (1 m) is no shorter.
        a.cache.entry("offer:1").set(&"Lamp").await.unwrap();
        let in_redis = left(&redis, "offer:1").await.unwrap();
        assert!(in_redis <= Duration::from_secs(60) && in_redis > Duration::from_secs(50));

        // The other instance reads them from Redis into its L1, capped.
        assert_eq!(
            b.cache.get::<f32>("rating:offer:1").await.unwrap(),
            Some(4.5)
        );
        assert!(left(&b.l1, "rating:offer:1").await.unwrap() <= Duration::from_secs(2));
        a.cache
            .entry("reviews:offer:1:page:0")
            .set(&vec!["great".to_owned()])
            .await
            .unwrap();
        received(&b, 2).await; // a's two writes
        assert!(
            b.cache
                .get::<Vec<String>>("reviews:offer:1:page:0")
                .await
                .unwrap()
                .is_some()
        );
        assert!(left(&b.l1, "reviews:offer:1:page:0").await.is_some());

        // The dependency rule: the reviews of offer 1 changed, so its pages
        // and its rating go, from Redis and from both L1s.
        let invalidator = a.invalidator.as_ref().unwrap();
        let done = invalidator.invalidate_key("reviews:offer:1").await.unwrap();
        assert!(done.report.is_complete(), "{:?}", done.report);
        received(&b, 3).await;
        for key in ["rating:offer:1", "reviews:offer:1:page:0"] {
            assert!(left(&redis, key).await.is_none(), "{key} in Redis");
            assert!(left(&a.l1, key).await.is_none(), "{key} in a's L1");
            assert!(left(&b.l1, key).await.is_none(), "{key} in b's L1");
        }
        assert!(left(&redis, "offer:1").await.is_some(), "not a dependent");
    }

    #[tokio::test]
    async fn an_unreachable_redis_is_a_build_error_naming_redis() {
        let mut config = StackConfig::default();
        let mut redis = RedisConfig::new("redis://127.0.0.1:1");
        redis.connect_timeout = Duration::from_millis(500);
        config.redis = Some(redis);
        let error = config.build().await.unwrap_err();
        assert!(
            matches!(error, ConfigError::Build { part: "redis", .. }),
            "{error}"
        );
        assert!(
            matches!(error.class(), ErrorClass::Unavailable | ErrorClass::Timeout),
            "{error}"
        );
        assert!(error.to_string().contains("redis"), "{error}");
    }

    #[tokio::test]
    async fn everything_is_checked_before_connecting() {
        // A bad rule and a server that is not there: the rule is reported,
        // no connection is tried (it would take the connect timeout).
        let mut config = config("redis://127.0.0.1:1");
        config.ttl[0].jitter = Some(7.0);
        let started = std::time::Instant::now();
        let error = config.build().await.unwrap_err();
        assert!(matches!(error, ConfigError::Invalid { .. }), "{error}");
        assert_eq!(error.problems()[0].field, "ttl[0].jitter");
        assert!(started.elapsed() < Duration::from_millis(500));
    }
}
