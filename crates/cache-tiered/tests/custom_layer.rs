//! A user's own backend, written against cache-core alone in a few lines,
//! stacked as the third tier under two memory layers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cache_core::{CacheLayer, Entry, Pattern, Result, async_trait};
use cache_memory::MemoryLayer;
use cache_tiered::{Tier, TieredCache};

/// What a user writes: a map behind a mutex (think: a file store, sled, S3).
#[derive(Debug, Default)]
struct MapLayer(Mutex<HashMap<String, Entry>>);

#[async_trait]
impl CacheLayer for MapLayer {
    fn name(&self) -> &str {
        "map"
    }
    async fn get(&self, key: &str) -> Result<Option<Entry>> {
        let map = self.0.lock().unwrap();
        Ok(map
            .get(key)
            .filter(|e| !e.is_expired(Instant::now()))
            .cloned())
    }
    async fn set(&self, key: &str, entry: Entry) -> Result<()> {
        self.0.lock().unwrap().insert(key.to_owned(), entry);
        Ok(())
    }
    async fn delete(&self, key: &str) -> Result<bool> {
        Ok(self.0.lock().unwrap().remove(key).is_some())
    }
    async fn invalidate(&self, pattern: &Pattern) -> Result<u64> {
        let mut map = self.0.lock().unwrap();
        let before = map.len();
        map.retain(|key, _| !pattern.matches(key));
        Ok((before - map.len()) as u64)
    }
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
        l3.get("offer:1").await.unwrap().is_some(),
        "written through to the bottom"
    );

    // Only the custom tier still has it: a read fills both tiers above.
    l1.clear();
    l2.clear();
    assert_eq!(
        cache.get::<String>("offer:1").await.unwrap().as_deref(),
        Some("lamp")
    );
    assert!(l1.get("offer:1").await.unwrap().is_some());
    assert!(l2.get("offer:1").await.unwrap().is_some());
    let stats = cache.stats();
    assert_eq!(stats.tiers[2].name, "map");
    assert_eq!(stats.tiers[2].hits, 1);
    assert_eq!((stats.tiers[0].fills, stats.tiers[1].fills), (1, 1));

    assert_eq!(cache.invalidate(&Pattern::new("offer:*")).await.unwrap(), 1);
    assert!(l3.get("offer:1").await.unwrap().is_none());
    assert!(cache.get::<String>("offer:1").await.unwrap().is_none());
}
