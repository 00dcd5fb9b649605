//! Tagged values: one `invalidate_tag` makes every value carrying the tag a
//! miss, in every tier, including a value whose loader was running.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use cache_core::{CacheLayer, ManualClock};
use cache_memory::MemoryLayer;
use cache_test_support::ctx;
use cache_test_support::layers::SharedLayer;
use cache_tiered::{Removal, Tier, TieredCache};

const TTL: Duration = Duration::from_secs(300);

fn memory(clock: &Arc<ManualClock>) -> MemoryLayer {
    MemoryLayer::builder()
        .clock(clock.clone())
        .sweep_interval(None)
        .build()
        .unwrap()
}

/// An L1 over `l2`, on `clock`.
fn instance(l1: &MemoryLayer, l2: &Arc<dyn CacheLayer>, clock: &Arc<ManualClock>) -> TieredCache {
    TieredCache::builder()
        .layer(l1.clone())
        .tier(Tier::shared(l2.clone()))
        .clock(clock.clone())
        .build()
        .unwrap()
}

fn two_tiers() -> (TieredCache, MemoryLayer, Arc<dyn CacheLayer>) {
    let clock = Arc::new(ManualClock::new());
    let l1 = memory(&clock);
    let l2: Arc<dyn CacheLayer> = Arc::new(SharedLayer(Arc::new(memory(&clock))));
    (instance(&l1, &l2, &clock), l1, l2)
}

/// A loader that counts its calls and returns the call number.
async fn counting(calls: &AtomicU32) -> Result<u32, std::io::Error> {
    Ok(calls.fetch_add(1, Ordering::SeqCst) + 1)
}

#[tokio::test]
async fn invalidating_a_tag_reloads_exactly_the_values_that_carry_it() {
    let (cache, l1, l2) = two_tiers();
    let calls = AtomicU32::new(0);
    let load = |key: &'static str, tags: &'static [&'static str]| {
        let (cache, calls) = (&cache, &calls);
        async move {
            cache
                .get_or_compute_tagged(key, tags, TTL, || counting(calls))
                .await
                .unwrap()
        }
    };
    assert_eq!(load("card:7", &["offer:7"]).await, 1);
    assert_eq!(
        load("search:lamps", &["offer:7", "offer:9", "offer:7"]).await,
        2
    );
    assert_eq!(load("card:9", &["offer:9"]).await, 3);
    cache.set("plain", &0u32, TTL).await.unwrap();
    // Hits, from L1.
    assert_eq!(load("card:7", &["offer:7"]).await, 1);
    assert_eq!(load("search:lamps", &["offer:7", "offer:9"]).await, 2);

    cache.invalidate_tag("offer:7").await.unwrap();
    assert_eq!(load("card:7", &["offer:7"]).await, 4, "reloaded");
    assert_eq!(
        load("search:lamps", &["offer:7", "offer:9"]).await,
        5,
        "reloaded"
    );
    assert_eq!(load("card:9", &["offer:9"]).await, 3, "another tag: kept");
    assert_eq!(cache.get::<u32>("plain").await.unwrap(), Some(0));

    // The stale copies were found in L1 and removed (and L2 was rewritten
    // by the reload).
    let l1_stats = &cache.stats().tiers[0];
    assert_eq!(l1_stats.tag_stale, 2);
    assert!(l1.get(&ctx::read(), "card:7").await.unwrap().is_some());
    assert!(l2.get(&ctx::read(), "card:7").await.unwrap().is_some());
}

#[tokio::test]
async fn a_tag_invalidated_while_the_loader_runs_leaves_its_value_stale() {
    let (cache, _, _) = two_tiers();
    let (entered_tx, entered_rx) = tokio::sync::oneshot::channel::<()>();
    let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
    let load = cache.get_or_compute_tagged("card:7", &["offer:7"], TTL, || async move {
        // The loader read the database here (old data)...
        entered_tx.send(()).unwrap();
        release_rx.await.unwrap();
        Ok::<_, std::io::Error>("old".to_owned())
    });
    let invalidate = async {
        entered_rx.await.unwrap();
        // ...then the data changed and the tag was invalidated.
        cache.invalidate_tag("offer:7").await.unwrap();
        release_tx.send(()).unwrap();
    };
    let (loaded, ()) = tokio::join!(load, invalidate);
    assert_eq!(loaded.unwrap(), "old", "the caller gets what it loaded");
    assert_eq!(
        cache.get::<String>("card:7").await.unwrap(),
        None,
        "but nobody reads it after the invalidation"
    );
}

#[tokio::test]
async fn another_instance_sees_the_new_version_once_its_l1_copy_goes() {
    let clock = Arc::new(ManualClock::new());
    let l2: Arc<dyn CacheLayer> = Arc::new(SharedLayer(Arc::new(memory(&clock))));
    let (a_l1, b_l1) = (memory(&clock), memory(&clock));
    let (a, b) = (instance(&a_l1, &l2, &clock), instance(&b_l1, &l2, &clock));
    a.set_tagged("card:7", &1u32, &["offer:7"], TTL)
        .await
        .unwrap();
    // b reads it: the value and the tag's version are now in b's L1.
    assert_eq!(b.get::<u32>("card:7").await.unwrap(), Some(1));

    a.invalidate_tag("offer:7").await.unwrap();
    assert_eq!(a.get::<u32>("card:7").await.unwrap(), None);
    // b's L1 still holds the old version: what a backplane is for.
    assert_eq!(b.get::<u32>("card:7").await.unwrap(), Some(1));
    let version = b.tag_key("offer:7");
    b.remove(Removal::key(&version).local()).await.unwrap();
    assert_eq!(b.get::<u32>("card:7").await.unwrap(), None);
}

#[tokio::test]
async fn a_lost_version_makes_its_values_misses_never_stale_reads() {
    let (cache, l1, l2) = two_tiers();
    cache
        .set_tagged("card:7", &1u32, &["offer:7"], TTL)
        .await
        .unwrap();
    let version_key = cache.tag_key("offer:7");
    assert_eq!(version_key, "tag-version:offer:7");
    l1.delete(&ctx::remove(), &version_key).await.unwrap();
    l2.delete(&ctx::remove(), &version_key).await.unwrap();
    assert_eq!(cache.get::<u32>("card:7").await.unwrap(), None);
    // A new value gets a new version, and reads normally.
    cache
        .set_tagged("card:7", &2u32, &["offer:7"], TTL)
        .await
        .unwrap();
    assert_eq!(cache.get::<u32>("card:7").await.unwrap(), Some(2));
}

#[tokio::test]
async fn batch_reads_check_tags_too() {
    let (cache, _, _) = two_tiers();
    cache.set_tagged("a", &1u32, &["t"], TTL).await.unwrap();
    cache.set_tagged("b", &2u32, &["u"], TTL).await.unwrap();
    cache.set("c", &3u32, TTL).await.unwrap();
    cache.invalidate_tag("t").await.unwrap();
    let values: Vec<Option<u32>> = cache
        .get_many::<u32>(&["a", "b", "c"])
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(values, [None, Some(2), Some(3)]);
}

#[tokio::test]
async fn a_schema_bump_still_applies_to_tagged_values() {
    let clock = Arc::new(ManualClock::new());
    let l1 = memory(&clock);
    let old = TieredCache::builder().layer(l1.clone()).build().unwrap();
    old.set_tagged("card:7", &1u32, &["offer:7"], TTL)
        .await
        .unwrap();
    let new = TieredCache::builder()
        .layer(l1.clone())
        .schema_version::<u32>(2)
        .build()
        .unwrap();
    assert_eq!(new.get::<u32>("card:7").await.unwrap(), None);
    assert_eq!(new.stats().tiers[0].foreign, 1);
}
