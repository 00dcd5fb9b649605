//! Model-based test: several instances (each an L1 memory tier over one
//! shared L2), cache-aside reads with `get_or_compute` (tagged for some
//! keys), and writes to a reference "database" followed by `invalidate_key`
//! and `invalidate_tag` on one instance.
//!
//! The shared tier goes down now and then (it fails open, as a Redis
//! behind a breaker does), and comes back.
//!
//! The property: once the other instances have applied the backplane's
//! messages, every read on every instance returns what the database holds
//! now; during an outage too, and after it once the invalidation queues
//! have drained. Keys are derived from database entities by the offers
//! service's dependency rules (as in `examples/offers.rs`; a transitive one
//! included) or by tags (one key carries two), and
//! ids hold glob characters and the `:` separator.
//!
//! The pages of an offer's reviews are a key family
//! (`reviews:offer:{id:no-colon}:*`): their dependent goes by the family's
//! version, except for the id holding `:`, which the family refuses and
//! whose pages are scanned (while they are stamped with the family of the
//! id's first segment, invalidated with offer `1`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use cache_core::CacheLayer;
use cache_invalidation::{Invalidator, Rules};
use cache_memory::MemoryLayer;
use cache_test_support::layers::{Fault, FaultyLayer, SharedLayer};
use cache_tiered::{MemoryBackplane, Tier, TieredCache};
use proptest::prelude::*;

const INSTANCES: usize = 3;
const IDS: [&str; 6] = ["1", "2", "1*", "[1]", "1:2", "a?b"];
const TTL: Duration = Duration::from_secs(300);

/// A cached key family: the key for an id, the entities it is derived
/// from, and its tags if it is tagged rather than reached by rules.
#[derive(Debug, Clone, Copy)]
enum Family {
    ReviewsPage(u8),
    Rating,
    OfferStats,
    AuthorReviews,
    UserActivity,
    UserFeed,
    /// Tagged `offer:{id}`.
    OfferCard,
    /// Tagged `offer:{id}` and `user:{id}`: derived from both entities.
    Comparison,
}

impl Family {
    fn key(self, id: &str) -> String {
        match self {
            Family::ReviewsPage(page) => format!("reviews:offer:{id}:page:{page}"),
            Family::Rating => format!("rating:offer:{id}"),
            Family::OfferStats => format!("offer_stats:{id}"),
            Family::AuthorReviews => format!("reviews:author:{id}"),
            Family::UserActivity => format!("user_activity:{id}"),
            Family::UserFeed => format!("user_feed:{id}"),
            Family::OfferCard => format!("offer_card:{id}"),
            Family::Comparison => format!("comparison:{id}"),
        }
    }

    fn entities(self, id: &str) -> Vec<String> {
        let offer = format!("reviews:offer:{id}");
        let user = format!("user:{id}");
        match self {
            Family::ReviewsPage(_) | Family::Rating | Family::OfferStats | Family::OfferCard => {
                vec![offer]
            }
            Family::AuthorReviews | Family::UserActivity | Family::UserFeed => vec![user],
            Family::Comparison => vec![offer, user],
        }
    }

    fn tags(self, id: &str) -> Vec<String> {
        match self {
            Family::OfferCard => vec![format!("offer:{id}")],
            Family::Comparison => vec![format!("offer:{id}"), format!("user:{id}")],
            _ => Vec::new(),
        }
    }

    /// What the database says the key's value is now.
    fn value(self, id: &str, database: &HashMap<String, u64>) -> String {
        let versions: Vec<String> = self
            .entities(id)
            .iter()
            .map(|entity| database.get(entity).copied().unwrap_or(0).to_string())
            .collect();
        format!("{}@{}", self.key(id), versions.join(","))
    }
}

fn rules() -> Rules {
    Rules::builder()
        .rule(
            "reviews:offer:{id}",
            [
                "reviews:offer:{id}:*",
                "rating:offer:{id}",
                "offer_stats:{id}",
            ],
        )
        .rule("user:{id}", ["reviews:author:{id}", "user_activity:{id}"])
        // Transitive: a user's change reaches the feed through their reviews.
        .rule("reviews:author:{id}", ["user_feed:{id}"])
        .family("reviews:offer:{id:no-colon}:*")
        .build()
        .expect("valid rules")
}

#[derive(Debug, Clone)]
enum Op {
    /// `get_or_compute` on an instance: must return the database's value.
    Read {
        instance: usize,
        family: Family,
        id: usize,
    },
    /// A plain `get`: a hit must hold the database's value.
    Peek {
        instance: usize,
        family: Family,
        id: usize,
    },
    /// Change an entity in the database, then invalidate it on an instance.
    Write {
        instance: usize,
        user: bool,
        id: usize,
    },
    /// The shared tier fails (or comes back) from now on.
    SharedTierDown(bool),
}

fn family() -> impl Strategy<Value = Family> {
    prop_oneof![
        (0u8..3).prop_map(Family::ReviewsPage),
        Just(Family::Rating),
        Just(Family::OfferStats),
        Just(Family::AuthorReviews),
        Just(Family::UserActivity),
        Just(Family::UserFeed),
        Just(Family::OfferCard),
        Just(Family::Comparison),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let instance = 0..INSTANCES;
    let id = 0..IDS.len();
    prop_oneof![
        4 => (instance.clone(), family(), id.clone())
            .prop_map(|(instance, family, id)| Op::Read { instance, family, id }),
        2 => (instance.clone(), family(), id.clone())
            .prop_map(|(instance, family, id)| Op::Peek { instance, family, id }),
        2 => (instance, any::<bool>(), id)
            .prop_map(|(instance, user, id)| Op::Write { instance, user, id }),
        1 => any::<bool>().prop_map(Op::SharedTierDown),
    ]
}

struct Instance {
    cache: TieredCache,
    invalidator: Invalidator,
}

fn memory() -> MemoryLayer {
    MemoryLayer::builder().sweep_interval(None).build().unwrap()
}

/// The instances, and the shared tier's switch.
async fn instances() -> (Vec<Instance>, Arc<FaultyLayer>) {
    let faulty = Arc::new(FaultyLayer::new(Arc::new(SharedLayer(Arc::new(memory())))));
    let l2: Arc<dyn CacheLayer> = faulty.clone();
    let backplane = MemoryBackplane::new(4096);
    let mut instances = Vec::new();
    let rules = rules();
    for _ in 0..INSTANCES {
        let cache = TieredCache::builder()
            .key_families(rules.families())
            .layer(memory())
            .tier(Tier::shared(l2.clone()))
            .backplane(backplane.clone())
            .invalidation_queue(10_000)
            .build_async()
            .await
            .unwrap();
        let invalidator = Invalidator::new(cache.clone(), rules.clone());
        assert!(invalidator.uses_families());
        instances.push(Instance { cache, invalidator });
    }
    (instances, faulty)
}

/// Lets every listener apply what the others published (first attempts and
/// retries), and, unless the shared tier is down, every queue drain.
async fn settle(instances: &[Instance], shared_tier_down: bool) {
    for _ in 0..100_000 {
        let sent: Vec<u64> = instances
            .iter()
            .map(|i| i.cache.stats().backplane.published)
            .collect();
        let total: u64 = sent.iter().sum();
        let settled = instances.iter().zip(&sent).all(|(instance, own)| {
            let stats = instance.cache.stats();
            stats.backplane.received == total - own
                && (shared_tier_down || stats.queue.pending == 0)
        });
        if settled {
            return;
        }
        // Paused time: a retry's pause passes as soon as all else is idle.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("the instances never settled");
}

async fn run(ops: Vec<Op>) {
    let (instances, faulty) = instances().await;
    let mut database: HashMap<String, u64> = HashMap::new();
    let mut shared_tier_down = false;
    for op in ops {
        match op {
            Op::Read {
                instance,
                family,
                id,
            } => read(&instances[instance], family, id, &database).await,
            Op::Peek {
                instance,
                family,
                id,
            } => {
                let key = family.key(IDS[id]);
                if let Some(value) = instances[instance].cache.get::<String>(&key).await.unwrap() {
                    assert_eq!(
                        value,
                        family.value(IDS[id], &database),
                        "instance {instance} peeked {key}"
                    );
                }
            }
            Op::Write { instance, user, id } => {
                let (entity, tag) = if user {
                    (format!("user:{}", IDS[id]), format!("user:{}", IDS[id]))
                } else {
                    (
                        format!("reviews:offer:{}", IDS[id]),
                        format!("offer:{}", IDS[id]),
                    )
                };
                *database.entry(entity.clone()).or_default() += 1;
                let invalidator = &instances[instance].invalidator;
                let invalidated = invalidator.invalidate_key(&entity).await.unwrap();
                // The pages go by their family, unless the id holds `:`.
                let by_family = !user && !IDS[id].contains(':');
                assert_eq!(invalidated.by_family.len(), usize::from(by_family));
                // During an outage both calls are deferred: queued, not lost.
                for report in [
                    invalidated.report,
                    invalidator.invalidate_tag(&tag).await.unwrap(),
                ] {
                    assert_eq!(report.is_deferred(), shared_tier_down, "{report}");
                    assert_eq!(report.is_complete(), !shared_tier_down, "{report}");
                }
                settle(&instances, shared_tier_down).await;
            }
            Op::SharedTierDown(down) => {
                shared_tier_down = down;
                faulty.set_fault(if down { Fault::Fail } else { Fault::None });
                settle(&instances, shared_tier_down).await;
            }
        }
    }
    // Back up, drained: every key on every instance reads as the database says.
    faulty.set_fault(Fault::None);
    settle(&instances, false).await;
    for instance in &instances {
        for family in [
            Family::ReviewsPage(0),
            Family::Rating,
            Family::OfferStats,
            Family::AuthorReviews,
            Family::UserActivity,
            Family::UserFeed,
            Family::OfferCard,
            Family::Comparison,
        ] {
            for id in 0..IDS.len() {
                read(instance, family, id, &database).await;
            }
        }
        let stats = instance.cache.stats();
        assert_eq!((stats.backplane.gaps, stats.backplane.local_errors), (0, 0));
        assert_eq!(stats.queue.overflows, 0);
    }
}

/// A cache-aside read: must return what the database holds.
async fn read(instance: &Instance, family: Family, id: usize, database: &HashMap<String, u64>) {
    let key = family.key(IDS[id]);
    let expected = family.value(IDS[id], database);
    let loaded = expected.clone();
    let tags = family.tags(IDS[id]);
    let tags: Vec<&str> = tags.iter().map(String::as_str).collect();
    let value: String = instance
        .cache
        .get_or_compute_tagged(&key, &tags, TTL, || async move {
            Ok::<_, std::convert::Infallible>(loaded)
        })
        .await
        .unwrap();
    assert_eq!(value, expected, "read {key}");
}

// The case count comes from `PROPTEST_CASES` (proptest's default config
// reads it); `cargo xtask proptest --cases N` sets it.
proptest! {
    #[test]
    fn every_instance_reads_what_the_database_holds(ops in proptest::collection::vec(op(), 1..60)) {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap()
            .block_on(run(ops));
    }
}
