//! Entry options: default and per-call TTLs, TTL jitter, negative caching
//! and adaptive TTLs, on a manual clock.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cache_core::ManualClock;
use cache_memory::MemoryLayer;
use cache_tiered::{TieredCache, TieredCacheBuilder};

fn builder(clock: &Arc<ManualClock>) -> TieredCacheBuilder {
    let l1 = MemoryLayer::builder()
        .clock(clock.clone())
        .sweep_interval(None)
        .build()
        .unwrap();
    let l2 = MemoryLayer::builder()
        .clock(clock.clone())
        .sweep_interval(None)
        .build()
        .unwrap();
    TieredCache::builder()
        .layer(l1)
        .layer(l2)
        .clock(clock.clone())
}

const JUST_UNDER: Duration = Duration::from_millis(1);

#[tokio::test]
async fn the_default_ttl_applies_unless_the_call_sets_one() {
    let clock = ManualClock::shared();
    let cache = builder(&clock)
        .default_ttl(Duration::from_secs(60))
        .build()
        .unwrap();
    assert_eq!(cache.default_ttl(), Duration::from_secs(60));
    cache.entry("default").set(&1u32).await.unwrap();
    cache
        .entry("own")
        .ttl(Duration::from_secs(5))
        .set(&2u32)
        .await
        .unwrap();
    let loaded = cache
        .entry("loaded")
        .get_or_compute(|| async { Ok::<_, std::io::Error>(3u32) })
        .await
        .unwrap();
    assert_eq!(loaded, 3);

    clock.advance(Duration::from_secs(5) - JUST_UNDER);
    assert_eq!(cache.entry("own").get::<u32>().await.unwrap(), Some(2));
    clock.advance(JUST_UNDER);
    assert_eq!(cache.entry("own").get::<u32>().await.unwrap(), None);

    clock.advance(Duration::from_secs(55) - JUST_UNDER);
    assert_eq!(cache.get::<u32>("default").await.unwrap(), Some(1));
    assert_eq!(cache.get::<u32>("loaded").await.unwrap(), Some(3));
    clock.advance(JUST_UNDER);
    assert_eq!(cache.get::<u32>("default").await.unwrap(), None);
    assert_eq!(cache.get::<u32>("loaded").await.unwrap(), None);
}

#[tokio::test]
async fn jittered_ttls_stay_within_their_bounds_and_spread() {
    let clock = ManualClock::shared();
    let cache = builder(&clock).ttl_jitter(0.2).build().unwrap();
    let ttl = Duration::from_secs(100);
    let keys: Vec<String> = (0..200).map(|n| format!("offer:{n}")).collect();
    for key in &keys {
        cache.set(key, &7u32, ttl).await.unwrap();
    }
    let live = |cache: TieredCache, keys: Vec<String>| async move {
        let mut live = 0;
        for key in &keys {
            live += usize::from(cache.get::<u32>(key).await.unwrap().is_some());
        }
        live
    };
    // Never shorter than 80% of the TTL...
    clock.advance(Duration::from_secs(80) - JUST_UNDER);
    assert_eq!(live(cache.clone(), keys.clone()).await, 200);
    // ...spread over the last 20%...
    clock.advance(Duration::from_secs(10));
    let halfway = live(cache.clone(), keys.clone()).await;
    assert!(
        (40..=160).contains(&halfway),
        "{halfway} of 200 live halfway through the spread"
    );
    // ...and never longer than asked.
    clock.advance(Duration::from_secs(10) + JUST_UNDER); // at the full TTL: a jitter of 0 is possible
    assert_eq!(live(cache.clone(), keys.clone()).await, 0);
}

#[tokio::test]
async fn a_call_can_set_its_own_jitter_and_fail_safe_values_jitter_their_ttl_only() {
    let clock = ManualClock::shared();
    let cache = builder(&clock).build().unwrap();
    let keys: Vec<String> = (0..200).map(|n| format!("offer:{n}")).collect();
    for key in &keys {
        cache
            .entry(key)
            .ttl(Duration::from_secs(100))
            .ttl_jitter(0.5)
            .fail_safe(Duration::from_secs(1000))
            .set(&7u32)
            .await
            .unwrap();
    }
    let live = |cache: TieredCache, keys: Vec<String>| async move {
        let mut live = 0;
        for key in &keys {
            live += usize::from(cache.get::<u32>(key).await.unwrap().is_some());
        }
        live
    };
    clock.advance(Duration::from_secs(50) - JUST_UNDER);
    assert_eq!(live(cache.clone(), keys.clone()).await, 200);
    clock.advance(Duration::from_secs(25));
    let halfway = live(cache.clone(), keys.clone()).await;
    assert!(
        (40..=160).contains(&halfway),
        "{halfway} of 200 live halfway through the spread"
    );
    clock.advance(Duration::from_secs(25) + JUST_UNDER);
    assert_eq!(live(cache.clone(), keys.clone()).await, 0);
    // Stale, not gone: the grace is not jittered away.
    let fallback = cache
        .entry(&keys[0])
        .fail_safe(Duration::from_secs(1000))
        .fetch(|| async { Err::<u32, _>(std::io::Error::other("down")) })
        .await
        .unwrap();
    assert!(fallback.is_stale());
    assert!(cache.entry("k").ttl_jitter(1.5).set(&1u32).await.is_err());
}

#[tokio::test]
async fn not_found_is_cached_for_the_negative_ttl() {
    let clock = ManualClock::shared();
    let cache = builder(&clock)
        .negative_ttl(Duration::from_secs(10))
        .build()
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let lookup = |found: Option<&'static str>| {
        let calls = calls.clone();
        move || async move {
            calls.fetch_add(1, Ordering::SeqCst);
            Ok::<_, std::io::Error>(found.map(str::to_owned))
        }
    };
    let read = |found| {
        let cache = cache.clone();
        let loader = lookup(found);
        async move {
            cache
                .entry("offer:404")
                .ttl(Duration::from_secs(60))
                .get_or_compute_optional(loader)
                .await
                .unwrap()
        }
    };
    assert_eq!(read(None).await, None);
    clock.advance(Duration::from_secs(10) - JUST_UNDER);
    // Still cached as absent: the loader (which would now find it) is not asked.
    assert_eq!(read(Some("created")).await, None);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    clock.advance(JUST_UNDER);
    assert_eq!(read(Some("created")).await.as_deref(), Some("created"));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    // A found value lives for the TTL, not the negative TTL.
    clock.advance(Duration::from_secs(59));
    assert_eq!(read(None).await.as_deref(), Some("created"));
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    // A call's own negative TTL wins over the cache's.
    let absent = cache
        .entry("offer:405")
        .negative_ttl(Duration::from_secs(1))
        .get_or_compute_optional(lookup(None))
        .await
        .unwrap();
    assert_eq!(absent, None);
    clock.advance(Duration::from_secs(1));
    assert_eq!(
        cache.get::<Option<String>>("offer:405").await.unwrap(),
        None
    );
}

#[tokio::test]
async fn the_loader_can_choose_the_ttl() {
    let clock = ManualClock::shared();
    let cache = builder(&clock).build().unwrap();
    let auction = |ended: bool| async move {
        let ttl = if ended {
            Duration::from_secs(3600)
        } else {
            Duration::from_secs(2)
        };
        Ok::<_, std::io::Error>((format!("ended: {ended}"), ttl))
    };
    let live = cache
        .entry("auction:1")
        .get_or_compute_with_ttl(move || auction(false))
        .await
        .unwrap();
    assert_eq!(live, "ended: false");
    let ended = cache
        .entry("auction:2")
        .get_or_compute_with_ttl(move || auction(true))
        .await
        .unwrap();
    assert_eq!(ended, "ended: true");
    clock.advance(Duration::from_secs(2));
    // The live auction expired and loads again; the ended one is cached.
    let calls = Arc::new(AtomicUsize::new(0));
    for key in ["auction:1", "auction:2"] {
        let calls = calls.clone();
        cache
            .entry(key)
            .get_or_compute_with_ttl(move || {
                calls.fetch_add(1, Ordering::SeqCst);
                auction(true)
            })
            .await
            .unwrap();
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn tags_set_through_an_entry_invalidate_it() {
    let clock = ManualClock::shared();
    let cache = builder(&clock).build().unwrap();
    cache
        .entry("offer:7:card")
        .tags(&["offer:7"])
        .set(&"Lamp")
        .await
        .unwrap();
    let loaded = cache
        .entry("offer:7:reviews")
        .tags(&["offer:7"])
        .get_or_compute(|| async { Ok::<_, std::io::Error>(vec![5u8, 4]) })
        .await
        .unwrap();
    assert_eq!(loaded, vec![5, 4]);
    cache.invalidate_tag("offer:7").await.unwrap();
    assert_eq!(cache.get::<String>("offer:7:card").await.unwrap(), None);
    assert_eq!(cache.get::<Vec<u8>>("offer:7:reviews").await.unwrap(), None);
}

#[test]
fn bad_defaults_are_config_errors() {
    let clock = ManualClock::shared();
    for build in [
        builder(&clock).ttl_jitter(1.0).build(),
        builder(&clock).ttl_jitter(-0.1).build(),
        builder(&clock).ttl_jitter(f64::NAN).build(),
        builder(&clock).default_ttl(Duration::ZERO).build(),
        builder(&clock).negative_ttl(Duration::ZERO).build(),
    ] {
        assert!(
            matches!(build, Err(cache_core::Error::Config(_))),
            "{build:?}"
        );
    }
}
