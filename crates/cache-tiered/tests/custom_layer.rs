//! A user's own backend, written against cache-core alone in a few lines,
//! stacked as the third tier under two memory layers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cache_core::testing::Conformance;
use cache_core::{
    CacheLayer, CallContext, Entry, Lookups, ManualClock, Pattern, Result, Writes, async_trait,
};
use cache_memory::MemoryLayer;
use cache_test_support::ctx;
use cache_tiered::{Tier, TieredCache};

/// What a user writes: a map behind a mutex (think: a file store, sled, S3).
/// Time comes from the call's context, never from `Instant::now()`.
#[derive(Debug, Default)]
struct MapLayer(Mutex<HashMap<String, Entry>>);

#[async_trait]
impl CacheLayer for MapLayer {
    fn name(&self) -> &str {
        "map"
    }
    async fn get_many(&self, ctx: &CallContext<'_>, keys: &[&str]) -> Result<Lookups> {
        let map = self.0.lock().unwrap();
        Ok(keys
            .iter()
            .map(|key| Ok(map.get(*key).filter(|e| !ctx.is_expired(e)).cloned()))
            .collect())
    }
    async fn set_many(&self, ctx: &CallContext<'_>, entries: &[(&str, Entry)]) -> Result<Writes> {
        let mut map = self.0.lock().unwrap();
        for (key, entry) in entries {
            match ctx.is_expired(entry) {
                true => map.remove(*key),
                false => map.insert((*key).to_owned(), entry.clone()),
            };
        }
        Ok(entries.iter().map(|_| Ok(())).collect())
    }
    async fn delete_many(&self, _ctx: &CallContext<'_>, keys: &[&str]) -> Result<u64> {
        let mut map = self.0.lock().unwrap();
        Ok(keys
            .iter()
            .filter(|key| map.remove(**key).is_some())
            .count() as u64)
    }
    async fn invalidate(&self, _ctx: &CallContext<'_>, pattern: &Pattern) -> Result<u64> {
        let mut map = self.0.lock().unwrap();
        let before = map.len();
        map.retain(|key, _| !pattern.matches(key));
        Ok((before - map.len()) as u64)
    }
}

#[tokio::test]
async fn the_custom_layer_passes_the_conformance_suite() {
    let clock = ManualClock::new();
    Conformance::new(&MapLayer::default())
        .manual_clock(&clock)
        .run()
        .await;
}

#[tokio::test]
async fn a_custom_layer_runs_on_the_composers_clock() {
    // The layer never reads a clock of its own: when the composer's clock
    // passes a value's expiry, the custom tier stops answering it too.
    let clock = ManualClock::shared();
    let l3 = Arc::new(MapLayer::default());
    let cache = TieredCache::builder()
        .tier(Tier::shared(l3.clone()))
        .clock(clock.clone())
        .build()
        .unwrap();
    cache
        .set("offer:1", &7u32, Duration::from_secs(300))
        .await
        .unwrap();
    clock.advance(Duration::from_secs(299));
    assert_eq!(cache.get::<u32>("offer:1").await.unwrap(), Some(7));
    clock.advance(Duration::from_secs(1));
    assert_eq!(cache.get::<u32>("offer:1").await.unwrap(), None, "expired");
}

#[tokio::test]
async fn a_custom_layer_works_as_a_third_tier() {
    let (l1, l2) = (MemoryLayer::new(), MemoryLayer::new());
    let l3 = Arc::new(MapLayer::default());
    let cache = TieredCache::builder()
        .layer(l1.clone())
        .layer(l2.clone())
        .tier(Tier::shared(l3.clone()))
        .build()
        .unwrap();
    let ttl = Duration::from_secs(60);

    cache.set("offer:1", &"lamp".to_owned(), ttl).await.unwrap();
    assert!(
        l3.get(&ctx::read(), "offer:1").await.unwrap().is_some(),
        "written through to the bottom"
    );

    // Only the custom tier still has it: a read fills both tiers above.
    l1.clear();
    l2.clear();
    assert_eq!(
        cache.get::<String>("offer:1").await.unwrap().as_deref(),
        Some("lamp")
    );
    assert!(l1.get(&ctx::read(), "offer:1").await.unwrap().is_some());
    assert!(l2.get(&ctx::read(), "offer:1").await.unwrap().is_some());
    let stats = cache.stats();
    assert_eq!(stats.tiers[2].name, "map");
    assert_eq!(stats.tiers[2].hits, 1);
    assert_eq!((stats.tiers[0].fills, stats.tiers[1].fills), (1, 1));

    let removed = cache.invalidate(&Pattern::new("offer:*")).await.unwrap();
    assert_eq!(removed.removed, 1);
    assert!(l3.get(&ctx::read(), "offer:1").await.unwrap().is_none());
    assert!(cache.get::<String>("offer:1").await.unwrap().is_none());
}

#[tokio::test]
async fn the_test_layers_pass_the_conformance_suite() {
    use cache_test_support::layers::{FaultyLayer, HoldableLayer, SharedLayer};
    let clock = ManualClock::shared();
    let memory = || -> Arc<dyn CacheLayer> {
        Arc::new(
            MemoryLayer::builder()
                .clock(clock.clone())
                .sweep_interval(None)
                .build()
                .unwrap(),
        )
    };
    let layers: Vec<Arc<dyn CacheLayer>> = vec![
        Arc::new(SharedLayer(memory())),
        Arc::new(HoldableLayer::new(memory())),
        Arc::new(FaultyLayer::new(memory())),
    ];
    for layer in layers {
        Conformance::new(&*layer).manual_clock(&clock).run().await;
    }
}
