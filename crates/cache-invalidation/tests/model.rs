//! Model-based test: several instances (each an L1 memory tier over one
//! shared L2), cache-aside reads with `get_or_compute` (tagged for some
//! keys), and writes to a reference "database" followed by `invalidate_key`
//! and `invalidate_tag` on one instance.
//!
//! The property: once the other instances have applied the backplane's
//! messages, every read on every instance returns what the database holds
//! now. Keys are derived from database entities by the seed scenario's
//! rules (a transitive one included) or by tags (one key carries two), and
//! ids hold glob characters and the `:` separator.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use cache_core::CacheLayer;
use cache_invalidation::{Invalidator, MemoryBackplane, Rules};
use cache_memory::MemoryLayer;
use cache_test_support::layers::SharedLayer;
use cache_tiered::{Tier, TieredCache};
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
    ]
}

struct Instance {
    cache: TieredCache,
    invalidator: Invalidator,
    /// Messages from other instances this one must have applied.
    expected_received: u64,
}

fn memory() -> MemoryLayer {
    MemoryLayer::builder().sweep_interval(None).build().unwrap()
}

async fn instances() -> Vec<Instance> {
    let l2: Arc<dyn CacheLayer> = Arc::new(SharedLayer(Arc::new(memory())));
    let backplane = MemoryBackplane::new(4096);
    let mut instances = Vec::new();
    for _ in 0..INSTANCES {
        let cache = TieredCache::builder()
            .layer(memory())
            .tier(Tier::shared(l2.clone()))
            .build()
            .unwrap();
        let invalidator = Invalidator::builder(cache.clone())
            .rules(rules())
            .backplane(backplane.clone())
            .build()
            .await
            .unwrap();
        instances.push(Instance {
            cache,
            invalidator,
            expected_received: 0,
        });
    }
    instances
}

/// Lets every listener catch up with what was published.
async fn drain(instances: &[Instance]) {
    for instance in instances {
        let mut spins = 0;
        while instance.invalidator.stats().received < instance.expected_received {
            spins += 1;
            assert!(spins < 100_000, "a listener never applied its messages");
            tokio::task::yield_now().await;
        }
        assert_eq!(
            instance.invalidator.stats().received,
            instance.expected_received
        );
    }
}

async fn run(ops: Vec<Op>) {
    let mut instances = instances().await;
    let mut database: HashMap<String, u64> = HashMap::new();
    for op in ops {
        match op {
            Op::Read {
                instance,
                family,
                id,
            } => {
                let key = family.key(IDS[id]);
                let expected = family.value(IDS[id], &database);
                let loaded = expected.clone();
                let tags = family.tags(IDS[id]);
                let tags: Vec<&str> = tags.iter().map(String::as_str).collect();
                let value: String = instances[instance]
                    .cache
                    .get_or_compute_tagged(&key, &tags, TTL, || async move {
                        Ok::<_, std::convert::Infallible>(loaded)
                    })
                    .await
                    .unwrap();
                assert_eq!(value, expected, "instance {instance} read {key}");
            }
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
                assert!(!invalidated.patterns.is_empty());
                invalidator.invalidate_tag(&tag).await.unwrap();
                // One message per call: two calls.
                for (other, state) in instances.iter_mut().enumerate() {
                    if other != instance {
                        state.expected_received += 2;
                    }
                }
                drain(&instances).await;
            }
        }
    }
    for instance in &instances {
        assert_eq!(instance.invalidator.stats().gaps, 0);
        assert_eq!(instance.invalidator.stats().local_errors, 0);
    }
}

// The case count comes from `PROPTEST_CASES` (proptest's default config
// reads it); `cargo xtask proptest --cases N` sets it.
proptest! {
    #[test]
    fn every_instance_reads_what_the_database_holds(ops in proptest::collection::vec(op(), 1..60)) {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(run(ops));
    }
}
