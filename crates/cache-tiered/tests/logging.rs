//! What an operator reading WARN sees when a tier fails: the first failure
//! with its cause, and the recovery, not one line per failed call.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use cache_memory::MemoryLayer;
use cache_test_support::layers::{Fault, FaultyLayer};
use cache_tiered::{Tier, TieredCache};
use tracing::field::{Field, Visit};

/// A subscriber that keeps the fields of every WARN event.
#[derive(Clone, Default)]
struct Warnings(Arc<Mutex<Vec<String>>>);

impl Warnings {
    fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

struct Fields(String);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, "{}={:?} ", field.name(), value);
    }
}

impl tracing::Subscriber for Warnings {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        if *event.metadata().level() == tracing::Level::WARN {
            let mut fields = Fields(String::new());
            event.record(&mut fields);
            self.0.lock().unwrap().push(fields.0);
        }
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

#[tokio::test]
async fn a_failing_tier_is_logged_once_with_its_cause_and_again_when_it_recovers() {
    let warnings = Warnings::default();
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
    let lines = warnings.lines();
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
    let lines = warnings.lines();
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert!(lines[1].contains("tier recovered"), "{}", lines[1]);

    l2.set_fault(Fault::Fail);
    cache.get::<u32>("c").await.unwrap();
    assert_eq!(warnings.lines().len(), 3, "failing again is news again");
}
