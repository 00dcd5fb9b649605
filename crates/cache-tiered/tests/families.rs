//! Key families: every write path stamps a value with the versions of its
//! key's families, without the caller naming them, so that one
//! `invalidate_tag` of a family makes all its values misses; keys in no
//! family, and reads, never ask the families anything.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cache_core::{CacheLayer, ManualClock};
use cache_memory::MemoryLayer;
use cache_test_support::ctx;
use cache_test_support::layers::SharedLayer;
use cache_tiered::{KeyFamilies, Tier, TieredCache};

const TTL: Duration = Duration::from_secs(300);

/// `page:{id}:{rest}` belongs to the family `page:{id}`; counts its calls.
#[derive(Debug, Default)]
struct Pages {
    calls: AtomicUsize,
}

impl KeyFamilies for Pages {
    fn families_of(&self, key: &str, out: &mut Vec<String>) {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if let Some(rest) = key.strip_prefix("page:")
            && let Some((id, _)) = rest.split_once(':')
        {
            out.push(format!("page:{id}"));
        }
    }
}

struct Setup {
    cache: TieredCache,
    l1: MemoryLayer,
    pages: Arc<Pages>,
}

fn setup() -> Setup {
    let clock = Arc::new(ManualClock::new());
    let memory = || {
        MemoryLayer::builder()
            .clock(clock.clone())
            .sweep_interval(None)
            .build()
            .unwrap()
    };
    let l1 = memory();
    let l2: Arc<dyn CacheLayer> = Arc::new(SharedLayer(Arc::new(memory())));
    let pages = Arc::new(Pages::default());
    let cache = TieredCache::builder()
        .layer(l1.clone())
        .tier(Tier::shared(l2))
        .clock(clock.clone())
        .shared_key_families(pages.clone())
        .build()
        .unwrap();
    Setup { cache, l1, pages }
}

fn value(key: &str) -> String {
    format!("value of {key}")
}

async fn cached(cache: &TieredCache, key: &str) -> Option<String> {
    cache.get::<String>(key).await.unwrap()
}

#[tokio::test]
async fn every_write_path_stamps_the_keys_families() {
    let Setup { cache, .. } = setup();
    let loader = |key: &'static str| move || async move { Ok::<_, std::io::Error>(value(key)) };
    for id in ["1", "2"] {
        let key = |path: &str| format!("page:{id}:{path}");
        cache.set(&key("set"), &value("x"), TTL).await.unwrap();
        let many = [(key("set_many").as_str().to_owned(), value("x"))];
        let many: Vec<(&str, String)> = many.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        for written in cache.set_many(&many, TTL).await {
            written.unwrap();
        }
        cache
            .set_tagged(&key("set_tagged"), &value("x"), &["other"], TTL)
            .await
            .unwrap();
        cache
            .entry(&key("entry_set"))
            .ttl(TTL)
            .set(&value("x"))
            .await
            .unwrap();
        let computed: String = cache
            .get_or_compute(&key("get_or_compute"), TTL, loader("x"))
            .await
            .unwrap();
        assert_eq!(computed, value("x"));
        let computed: String = cache
            .entry(&key("entry_compute"))
            .ttl(TTL)
            .get_or_compute(loader("x"))
            .await
            .unwrap();
        assert_eq!(computed, value("x"));
        let batch_key = key("batch");
        let batch = cache
            .get_or_compute_many(
                &[batch_key.as_str()],
                TTL,
                |missing: Vec<String>| async move {
                    let found: HashMap<String, String> =
                        missing.into_iter().map(|k| (k, value("x"))).collect();
                    Ok::<_, std::io::Error>(found)
                },
            )
            .await;
        assert_eq!(
            batch[0].as_ref().unwrap().as_deref(),
            Some(value("x").as_str())
        );
        let summary = cache
            .warmer()
            .keys([key("warm")], |_key: String| async {
                Ok::<_, std::io::Error>(Some(value("x")))
            })
            .run()
            .await
            .unwrap();
        assert_eq!(summary.loaded, 1, "{summary}");
    }
    let paths = [
        "set",
        "set_many",
        "set_tagged",
        "entry_set",
        "get_or_compute",
        "entry_compute",
        "batch",
        "warm",
    ];
    for path in paths {
        assert!(
            cached(&cache, &format!("page:1:{path}")).await.is_some(),
            "{path}"
        );
    }

    // One removal: the family's version.
    let removed = cache.invalidate_tag("page:1").await.unwrap();
    assert!(removed.is_complete(), "{removed}");
    for path in paths {
        assert_eq!(
            cached(&cache, &format!("page:1:{path}")).await,
            None,
            "{path}"
        );
        assert!(
            cached(&cache, &format!("page:2:{path}")).await.is_some(),
            "{path}"
        );
    }
    // The tags a caller gave still count on their own.
    cache.invalidate_tag("other").await.unwrap();
    assert_eq!(cached(&cache, "page:2:set_tagged").await, None);
    assert!(cached(&cache, "page:2:set").await.is_some());
}

#[tokio::test]
async fn a_family_invalidated_while_its_loader_runs_leaves_the_value_stale() {
    let Setup { cache, .. } = setup();
    // A first value creates the family's version.
    cache.set("page:7:a", &"old".to_owned(), TTL).await.unwrap();
    let loaded: String = cache
        .get_or_compute("page:7:b", TTL, || async {
            // The loader read the source; then the source changed and the
            // family was invalidated, before the value was written.
            cache.invalidate_tag("page:7").await.unwrap();
            Ok::<_, std::io::Error>("read before the change".to_owned())
        })
        .await
        .unwrap();
    assert_eq!(loaded, "read before the change", "returned to its caller");
    assert_eq!(
        cached(&cache, "page:7:b").await,
        None,
        "stamped with the version from before the loader ran: a miss"
    );
    assert_eq!(cached(&cache, "page:7:a").await, None);
}

#[tokio::test]
async fn reads_and_keys_in_no_family_cost_no_family_lookup_on_read() {
    let Setup { cache, l1, pages } = setup();
    cache.set("page:3:a", &"a".to_owned(), TTL).await.unwrap();
    cache.set("rating:3", &"r".to_owned(), TTL).await.unwrap();
    assert_eq!(pages.calls.load(Ordering::SeqCst), 2, "one call per write");
    // The family's version is an ordinary key, in L1 too; the plain value
    // carries no stamp.
    assert!(
        l1.get(&ctx::read(), &cache.tag_key("page:3"))
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        l1.get(&ctx::read(), &cache.tag_key("rating"))
            .await
            .unwrap()
            .is_none()
    );

    for _ in 0..10 {
        assert!(cached(&cache, "page:3:a").await.is_some());
        assert!(cached(&cache, "rating:3").await.is_some());
    }
    assert_eq!(
        pages.calls.load(Ordering::SeqCst),
        2,
        "reads check the stamps a value carries, never the families"
    );
    // The L1 hits are counted once per read: the plain value's on the fast
    // path, the family value's with its version's (uncounted) read.
    let l1_hits = cache.stats().tiers[0].hits;
    assert_eq!(l1_hits, 20);
}
