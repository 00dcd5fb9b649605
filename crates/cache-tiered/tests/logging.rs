//! What an operator reading WARN sees when a tier fails: the first failure
//! with its cause, and the recovery, not one line per failed call.

use std::sync::Arc;

use cache_memory::MemoryLayer;
use cache_test_support::layers::{Fault, FaultyLayer};
use cache_test_support::trace::Capture;
use cache_tiered::{Tier, TieredCache};

#[tokio::test]
async fn a_failing_tier_is_logged_once_with_its_cause_and_again_when_it_recovers() {
    let warnings = Capture::default();
    let _subscriber = tracing::subscriber::set_default(warnings.clone());
    let l2 = Arc::new(FaultyLayer::new(Arc::new(MemoryLayer::new())));
    let cache = TieredCache::builder()
        .layer(MemoryLayer::new())
        .tier(Tier::shared(l2.clone()))
        .build()
        .unwrap();

    l2.set_fault(Fault::Fail);
    for key in ["a", "b", "c"] {
        assert_eq!(cache.get::<u32>(key).await.unwrap(), None, "failed open");
    }
    let lines = warnings.warnings();
    assert_eq!(lines.len(), 1, "one line for three failures: {lines:#?}");
    assert!(
        lines[0].contains("tier failing")
            && lines[0].contains("class=unavailable")
            && lines[0].contains("injected failure")
            && lines[0].contains("operation=read"),
        "the cause: {}",
        lines[0]
    );
    assert_eq!(cache.stats().tiers[1].errors, 3, "every failure counted");

    l2.set_fault(Fault::None);
    cache.get::<u32>("a").await.unwrap();
    cache.get::<u32>("b").await.unwrap();
    let lines = warnings.warnings();
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert!(lines[1].contains("tier recovered"), "{}", lines[1]);

    l2.set_fault(Fault::Fail);
    cache.get::<u32>("c").await.unwrap();
    assert_eq!(warnings.warnings().len(), 3, "failing again is news again");
}
