//! The TTL policy table (`TieredCacheBuilder::ttl_policy`): rules applied
//! where a call gives no TTL, first match wins, an explicit TTL wins, local
//! copies capped while the shared tier keeps the value, jitter within its
//! bounds. On a manual clock: nothing sleeps.

use std::sync::Arc;
use std::time::Duration;

use cache_core::{CacheLayer, CallContext, ManualClock, Operation};
use cache_memory::MemoryLayer;
use cache_test_support::layers::SharedLayer;
use cache_tiered::{Tier, TieredCache, TieredCacheBuilder, TtlPolicy, WarmJob};

const SECOND: Duration = Duration::from_secs(1);
const JUST_UNDER: Duration = Duration::from_millis(1);

fn memory(clock: &Arc<ManualClock>) -> MemoryLayer {
    MemoryLayer::builder()
        .clock(clock.clone())
        .sweep_interval(None)
        .build()
        .unwrap()
}

/// An L1 (`MemoryLayer`, local) over a shared L2 (a `MemoryLayer` marked
/// shared, standing in for Redis); both returned to be looked into.
fn two_tiers(clock: &Arc<ManualClock>) -> (TieredCacheBuilder, MemoryLayer, MemoryLayer) {
    let (l1, l2) = (memory(clock), memory(clock));
    let builder = TieredCache::builder()
        .layer(l1.clone())
        .tier(Tier::shared(Arc::new(SharedLayer(Arc::new(l2.clone())))))
        .clock(clock.clone())
        .default_ttl(60 * SECOND);
    (builder, l1, l2)
}

/// Whether `layer` holds a live value under `key` now.
async fn holds(layer: &MemoryLayer, clock: &Arc<ManualClock>, key: &str) -> bool {
    let ctx = CallContext::new(&**clock, Operation::Read);
    layer.get(&ctx, key).await.unwrap().is_some()
}

#[tokio::test]
async fn a_rule_sets_the_ttl_of_calls_that_give_none() {
    let clock = ManualClock::shared();
    let (builder, _, _) = two_tiers(&clock);
    let cache = builder
        .negative_ttl(30 * SECOND)
        .ttl_policy(
            "rating:*",
            TtlPolicy::new().ttl(10 * SECOND).negative_ttl(2 * SECOND),
        )
        .build()
        .unwrap();

    cache.entry("rating:1").set(&4.5f32).await.unwrap();
    let loaded: f32 = cache
        .entry("rating:2")
        .get_or_compute(|| async { Ok::<_, std::io::Error>(3.5) })
        .await
        .unwrap();
    assert_eq!(loaded, 3.5);
    let missing: Option<f32> = cache
        .entry("rating:404")
        .get_or_compute_optional(|| async { Ok::<_, std::io::Error>(None) })
        .await
        .unwrap();
    assert_eq!(missing, None);
    cache.entry("offer:1").set(&"Lamp").await.unwrap();

    clock.advance(2 * SECOND - JUST_UNDER);
    assert_eq!(
        cache.get::<Option<f32>>("rating:404").await.unwrap(),
        Some(None)
    );
    clock.advance(JUST_UNDER);
    assert_eq!(cache.get::<Option<f32>>("rating:404").await.unwrap(), None);

    clock.advance(8 * SECOND - JUST_UNDER);
    assert_eq!(cache.get::<f32>("rating:1").await.unwrap(), Some(4.5));
    assert_eq!(cache.get::<f32>("rating:2").await.unwrap(), Some(3.5));
    clock.advance(JUST_UNDER);
    assert_eq!(cache.get::<f32>("rating:1").await.unwrap(), None);
    assert_eq!(cache.get::<f32>("rating:2").await.unwrap(), None);

    // No rule matches: the cache's default TTL.
    clock.advance(50 * SECOND - JUST_UNDER);
    assert_eq!(
        cache.get::<String>("offer:1").await.unwrap().as_deref(),
        Some("Lamp")
    );
    clock.advance(JUST_UNDER);
    assert_eq!(cache.get::<String>("offer:1").await.unwrap(), None);
}

#[tokio::test]
async fn the_first_matching_rule_wins() {
    let clock = ManualClock::shared();
    let (builder, _, _) = two_tiers(&clock);
    let cache = builder
        .ttl_policy("offer:special:*", TtlPolicy::new().ttl(5 * SECOND))
        .ttl_policy("offer:*", TtlPolicy::new().ttl(10 * SECOND))
        // Never used: the general rule above matches its keys first.
        .ttl_policy("offer:other:*", TtlPolicy::new().ttl(20 * SECOND))
        .build()
        .unwrap();
    let ttl = |key| cache.ttl_policy_for(key).and_then(|policy| policy.ttl);
    assert_eq!(ttl("offer:special:1"), Some(5 * SECOND));
    assert_eq!(ttl("offer:other:1"), Some(10 * SECOND));
    assert_eq!(ttl("user:1"), None);

    for key in ["offer:special:1", "offer:other:1", "offer:1"] {
        cache.entry(key).set(&1u8).await.unwrap();
    }
    clock.advance(5 * SECOND);
    assert_eq!(cache.get::<u8>("offer:special:1").await.unwrap(), None);
    assert_eq!(cache.get::<u8>("offer:other:1").await.unwrap(), Some(1));
    clock.advance(5 * SECOND);
    assert_eq!(cache.get::<u8>("offer:other:1").await.unwrap(), None);
    assert_eq!(cache.get::<u8>("offer:1").await.unwrap(), None);
}

#[tokio::test]
async fn an_explicit_ttl_wins_over_the_rule() {
    let clock = ManualClock::shared();
    let (builder, _, _) = two_tiers(&clock);
    let cache = builder
        .ttl_policy("rating:*", TtlPolicy::new().ttl(100 * SECOND))
        .build()
        .unwrap();
    cache
        .entry("rating:entry")
        .ttl(5 * SECOND)
        .set(&1u8)
        .await
        .unwrap();
    cache.set("rating:set", &2u8, 5 * SECOND).await.unwrap();
    cache
        .get_or_compute("rating:load", 5 * SECOND, || async {
            Ok::<_, std::io::Error>(3u8)
        })
        .await
        .unwrap();
    // The adaptive TTL a loader returns wins too.
    cache
        .entry("rating:adaptive")
        .get_or_compute_with_ttl(|| async { Ok::<_, std::io::Error>((4u8, 5 * SECOND)) })
        .await
        .unwrap();

    clock.advance(5 * SECOND - JUST_UNDER);
    assert_eq!(cache.get::<u8>("rating:entry").await.unwrap(), Some(1));
    assert_eq!(cache.get::<u8>("rating:set").await.unwrap(), Some(2));
    assert_eq!(cache.get::<u8>("rating:load").await.unwrap(), Some(3));
    clock.advance(JUST_UNDER);
    for key in ["rating:entry", "rating:set", "rating:load"] {
        assert_eq!(cache.get::<u8>(key).await.unwrap(), None, "{key}");
    }
    assert_eq!(
        cache
            .get::<(u8, Duration)>("rating:adaptive")
            .await
            .unwrap(),
        None
    );
}

#[tokio::test]
async fn the_local_cap_expires_the_l1_copy_while_l2_keeps_it() {
    let clock = ManualClock::shared();
    let (builder, l1, l2) = two_tiers(&clock);
    let cache = builder
        .ttl_policy(
            "offer:*",
            TtlPolicy::new()
                .ttl(300 * SECOND)
                .local_ttl_cap(10 * SECOND),
        )
        .build()
        .unwrap();

    // A write, and (with an explicit TTL: the cap applies whatever the
    // call) a load.
    cache.entry("offer:1").set(&"Lamp").await.unwrap();
    cache
        .get_or_compute("offer:2", 100 * SECOND, || async {
            Ok::<_, std::io::Error>("Desk".to_owned())
        })
        .await
        .unwrap();
    cache.entry("user:1").set(&"Ann").await.unwrap();

    clock.advance(10 * SECOND - JUST_UNDER);
    assert!(holds(&l1, &clock, "offer:1").await);
    assert!(holds(&l1, &clock, "offer:2").await);
    clock.advance(JUST_UNDER);
    for key in ["offer:1", "offer:2"] {
        assert!(!holds(&l1, &clock, key).await, "{key}: L1 copy capped");
        assert!(holds(&l2, &clock, key).await, "{key}: L2 keeps it");
    }
    assert!(holds(&l1, &clock, "user:1").await, "no rule: no cap");

    // A read finds it in L2 and fills L1, capped again from now.
    let hits_before = cache.stats().tiers[1].hits;
    assert_eq!(
        cache.get::<String>("offer:1").await.unwrap().as_deref(),
        Some("Lamp")
    );
    assert_eq!(cache.stats().tiers[1].hits, hits_before + 1);
    assert!(holds(&l1, &clock, "offer:1").await, "filled from L2");
    clock.advance(10 * SECOND);
    assert!(!holds(&l1, &clock, "offer:1").await, "the fill was capped");

    // L2 holds it to its TTL.
    clock.advance(280 * SECOND - JUST_UNDER);
    assert!(holds(&l2, &clock, "offer:1").await);
    clock.advance(JUST_UNDER);
    assert!(!holds(&l2, &clock, "offer:1").await);
}

#[tokio::test]
async fn the_shorter_of_the_tier_cap_and_the_rule_cap_wins() {
    let clock = ManualClock::shared();
    let (l1, l2) = (memory(&clock), memory(&clock));
    let cache = TieredCache::builder()
        .tier(Tier::new(l1.clone()).ttl_cap(5 * SECOND))
        .tier(Tier::shared(Arc::new(SharedLayer(Arc::new(l2.clone())))))
        .clock(clock.clone())
        .ttl_policy("long:*", TtlPolicy::new().local_ttl_cap(20 * SECOND))
        .ttl_policy("short:*", TtlPolicy::new().local_ttl_cap(2 * SECOND))
        .build()
        .unwrap();
    cache.entry("long:1").set(&1u8).await.unwrap();
    cache.entry("short:1").set(&1u8).await.unwrap();
    clock.advance(2 * SECOND);
    assert!(!holds(&l1, &clock, "short:1").await);
    assert!(holds(&l1, &clock, "long:1").await);
    clock.advance(3 * SECOND);
    assert!(!holds(&l1, &clock, "long:1").await, "the tier's cap");
    assert!(holds(&l2, &clock, "long:1").await);
}

#[tokio::test]
async fn without_a_shared_tier_the_local_cap_is_the_lifetime() {
    let clock = ManualClock::shared();
    let cache = TieredCache::builder()
        .layer(memory(&clock))
        .clock(clock.clone())
        .ttl_policy(
            "offer:*",
            TtlPolicy::new().ttl(60 * SECOND).local_ttl_cap(SECOND),
        )
        .build()
        .unwrap();
    cache.entry("offer:1").set(&1u8).await.unwrap();
    clock.advance(SECOND);
    assert_eq!(cache.get::<u8>("offer:1").await.unwrap(), None);
}

#[tokio::test]
async fn jitter_stays_within_its_bounds() {
    let clock = ManualClock::shared();
    let (builder, _, _) = two_tiers(&clock);
    let cache = builder
        .ttl_policy("jittered:*", TtlPolicy::new().ttl(100 * SECOND).jitter(0.5))
        .build()
        .unwrap();
    let keys: Vec<String> = (0..200).map(|i| format!("jittered:{i}")).collect();
    for key in &keys {
        cache.entry(key).set(&1u8).await.unwrap();
    }
    // A call's own jitter wins over the rule's: exact TTLs.
    cache
        .entry("jittered:exact")
        .ttl_jitter(0.0)
        .set(&1u8)
        .await
        .unwrap();
    let live = |cache: TieredCache, keys: Vec<String>| async move {
        let mut live = 0;
        for key in &keys {
            live += usize::from(cache.get::<u8>(key).await.unwrap().is_some());
        }
        live
    };

    // Never shorter than 50 s (half off at most)...
    clock.advance(50 * SECOND - JUST_UNDER);
    assert_eq!(live(cache.clone(), keys.clone()).await, keys.len());
    // ...spread in between (200 draws: all on one side has odds of 2^-200)...
    clock.advance(JUST_UNDER + 25 * SECOND);
    let halfway = live(cache.clone(), keys.clone()).await;
    assert!(0 < halfway && halfway < keys.len(), "{halfway}");
    // ...and never longer than asked.
    clock.advance(25 * SECOND - JUST_UNDER);
    assert_eq!(
        cache.get::<u8>("jittered:exact").await.unwrap(),
        Some(1),
        "the call's own jitter (none)"
    );
    clock.advance(JUST_UNDER);
    assert_eq!(live(cache.clone(), keys.clone()).await, 0);
    assert_eq!(cache.get::<u8>("jittered:exact").await.unwrap(), None);
}

#[tokio::test]
async fn jitter_applies_to_calls_with_their_own_ttl() {
    let clock = ManualClock::shared();
    let (builder, _, _) = two_tiers(&clock);
    let cache = builder
        .ttl_policy("jittered:*", TtlPolicy::new().jitter(0.5))
        .build()
        .unwrap();
    let keys: Vec<String> = (0..100).map(|i| format!("jittered:{i}")).collect();
    for key in &keys {
        cache.set(key, &1u8, 100 * SECOND).await.unwrap();
    }
    clock.advance(75 * SECOND);
    let mut live = 0;
    for key in &keys {
        live += usize::from(cache.get::<u8>(key).await.unwrap().is_some());
    }
    assert!(0 < live && live < keys.len(), "{live}");
}

#[tokio::test]
async fn a_batch_load_takes_each_keys_cap_and_jitter() {
    let clock = ManualClock::shared();
    let (builder, l1, l2) = two_tiers(&clock);
    let cache = builder
        .ttl_policy(
            "offer:*",
            TtlPolicy::new().local_ttl_cap(2 * SECOND).jitter(0.5),
        )
        .build()
        .unwrap();
    let keys: Vec<String> = (0..100).map(|i| format!("offer:{i}")).collect();
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let loaded = cache
        .get_or_compute_many(&refs, 100 * SECOND, |missing: Vec<String>| async move {
            Ok::<_, std::io::Error>(
                missing
                    .into_iter()
                    .map(|key| (key, 1u8))
                    .collect::<Vec<_>>(),
            )
        })
        .await;
    assert!(loaded.iter().all(|value| matches!(value, Ok(Some(1)))));
    clock.advance(2 * SECOND);
    assert!(!holds(&l1, &clock, "offer:0").await, "capped in L1");
    clock.advance(73 * SECOND);
    let mut live = 0;
    for key in &keys {
        live += usize::from(holds(&l2, &clock, key).await);
    }
    assert!(0 < live && live < keys.len(), "jittered: {live}");
}

#[tokio::test]
async fn a_warm_up_without_a_ttl_takes_each_keys_rule() {
    let clock = ManualClock::shared();
    let (builder, l1, _) = two_tiers(&clock);
    let cache = builder
        .ttl_policy(
            "offer:*",
            TtlPolicy::new().ttl(10 * SECOND).local_ttl_cap(2 * SECOND),
        )
        .build()
        .unwrap();
    let summary = cache
        .warmer()
        .job(WarmJob::new(["offer:1", "user:1"], |key| async move {
            Ok::<_, std::io::Error>(Some(key))
        }))
        .run()
        .await
        .unwrap();
    assert_eq!(summary.loaded, 2);
    clock.advance(2 * SECOND);
    assert!(!holds(&l1, &clock, "offer:1").await, "capped in L1");
    assert!(holds(&l1, &clock, "user:1").await);
    clock.advance(8 * SECOND);
    assert_eq!(cache.get::<String>("offer:1").await.unwrap(), None);
    assert!(cache.get::<String>("user:1").await.unwrap().is_some());
}

#[test]
fn build_refuses_a_bad_rule_and_names_its_pattern() {
    let bad = [
        TtlPolicy::new().ttl(Duration::ZERO),
        TtlPolicy::new().local_ttl_cap(Duration::ZERO),
        TtlPolicy::new().jitter(1.5),
    ];
    for policy in bad {
        let error = TieredCache::builder()
            .layer(MemoryLayer::new())
            .ttl_policy("offer:*", policy)
            .build()
            .unwrap_err();
        assert_eq!(error.class(), cache_core::ErrorClass::Config);
        assert!(error.to_string().contains("offer:*"), "{error}");
    }
}
