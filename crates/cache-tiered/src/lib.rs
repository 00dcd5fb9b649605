//! The composer of a layered cache: stacks any number of
//! [`CacheLayer`](cache_core::CacheLayer)s into one typed cache.
//!
//! ```
//! use std::time::Duration;
//! use cache_memory::MemoryLayer;
//! use cache_tiered::{Tier, TieredCache};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Clone, Serialize, Deserialize)]
//! struct Offer { id: u64, title: String }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let cache = TieredCache::builder()
//!     .tier(Tier::new(MemoryLayer::new()).ttl_cap(Duration::from_secs(60)))
//!     // .tier(Tier::new(redis).policy(breaker)) for a shared L2
//!     .build()?;
//!
//! let offer: Offer = cache
//!     .get_or_compute("offer:7", Duration::from_secs(300), || async {
//!         Ok::<_, std::io::Error>(Offer { id: 7, title: "Lamp".into() })
//!     })
//!     .await?;
//! assert_eq!(offer.title, "Lamp");
//! # Ok(())
//! # }
//! ```
//!
//! See [`TieredCache`] for what reads, writes and loads guarantee, [`Tier`]
//! for per-tier settings (failure policy, TTL cap, timeout),
//! [`TtlPolicy`] for TTLs set per key pattern in one place
//! ([`TieredCacheBuilder::ttl_policy`]), and [`TieredStats`] for what is
//! counted.
//!
//! # Several instances
//! Processes sharing a Redis L2 each keep their own L1. Attach a
//! [`Backplane`](cache_core::Backplane)
//! ([`TieredCacheBuilder::backplane`]: `cache_redis::RedisBackplane`, or
//! [`MemoryBackplane`] inside one process) and every write and removal
//! tells the other instances to drop their local copies, about a Redis
//! round trip later; add the
//! [invalidation queue](TieredCacheBuilder::invalidation_queue) and what a
//! failing tier or backplane missed is retried until it lands, the removal
//! reporting itself [deferred](Removed::is_deferred):
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use cache_memory::MemoryLayer;
//! use cache_tiered::{MemoryBackplane, Tier, TieredCache};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let redis = Arc::new(MemoryLayer::new());
//! let backplane = MemoryBackplane::default(); // RedisBackplane across processes
//! let instance = || {
//!     TieredCache::builder()
//!         .layer(MemoryLayer::new())
//!         .tier(Tier::shared(redis.clone())) // the shared L2, a RedisLayer
//!         .backplane(backplane.clone())
//!         .invalidation_queue(10_000)
//!         .build_async() // subscribes before it returns
//! };
//! let (a, b) = (instance().await?, instance().await?);
//!
//! let ttl = Duration::from_secs(300);
//! a.set("offer:7", &"Lamp", ttl).await?;
//! assert_eq!(b.get::<String>("offer:7").await?.as_deref(), Some("Lamp"));
//! // A write on `a` makes `b` drop its L1 copy once the message arrives.
//! a.set("offer:7", &"Desk lamp", ttl).await?;
//! let removed = a.delete("offer:7").await?;
//! assert!(removed.is_complete());
//! # Ok(())
//! # }
//! ```
//!
//! # One loader across instances
//! With a [`FleetLock`] ([`TieredCacheBuilder::fleet_lock`]: a
//! `cache_redis::RedisLoadLock`, or [`MemoryLoadLock`] inside one process),
//! instances that miss the same key at once elect one loader through the
//! lock; the others wait, a bounded time, for its value in the shared tier.
//!
//! # Warming
//! [`TieredCache::warmer`] preloads keys before requests ask for them:
//! from your loaders (bounded concurrency, priorities, progress, a
//! [`WarmSummary`], cancellation, periodic re-warming), or, for an instance
//! starting up, from the shared tier into its L1
//! ([`WarmJob::from_shared`]). See [`CacheWarmer`].
//!
//! # Depends on no concrete layer
//! This crate knows tiers only as `Arc<dyn CacheLayer>`; `cache-memory`,
//! `cache-redis` or your own backend plug in the same way.
#![forbid(unsafe_code)]

mod backplane;
mod batch;
mod cache;
mod entry;
mod envelope;
mod error;
mod fleet;
mod flight;
mod guard;
mod load;
mod memory_backplane;
mod memory_lock;
#[cfg(feature = "metrics")]
mod metrics;
mod observe;
mod policy;
mod queue;
mod read;
mod remove;
mod stats;
mod tags;
mod tier;
mod warm;
mod write;

pub use cache::{TieredCache, TieredCacheBuilder};
pub use entry::{EntryCall, Fetched, Stale};
pub use error::{Error, LoadError, Result};
pub use fleet::FleetLock;
pub use memory_backplane::MemoryBackplane;
pub use memory_lock::MemoryLoadLock;
pub use observe::{Health, Status, TierHealth};
pub use policy::TtlPolicy;
pub use remove::{Broadcast, Removal, Removed, TierRemoved};
pub use stats::{BackplaneStats, FleetStats, QueueStats, TierLatency, TierStats, TieredStats};
pub use tags::KeyFamilies;
pub use tier::Tier;
/// The token that cancels a warm-up ([`CacheWarmer::cancel_on`]),
/// re-exported from `tokio-util`.
pub use tokio_util::sync::CancellationToken;
pub use warm::{
    CacheWarmer, WarmHandle, WarmJob, WarmProgress, WarmSchedule, WarmSummary, WarmTiers,
};
