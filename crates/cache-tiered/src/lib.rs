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
//! for per-tier settings (failure policy, TTL cap, timeout), and
//! [`TieredStats`] for what is counted.
//!
//! # Depends on no concrete layer
//! This crate knows tiers only as `Arc<dyn CacheLayer>`; `cache-memory`,
//! `cache-redis` or your own backend plug in the same way.
#![forbid(unsafe_code)]

mod backplane;
mod cache;
mod envelope;
mod error;
mod flight;
mod guard;
mod load;
mod memory_backplane;
mod queue;
mod read;
mod remove;
mod stats;
mod tags;
mod tier;
mod write;

pub use cache::{TieredCache, TieredCacheBuilder};
pub use error::{Error, LoadError, Result};
pub use memory_backplane::MemoryBackplane;
pub use remove::{Broadcast, Removal, Removed};
pub use stats::{BackplaneStats, QueueStats, TierStats, TieredStats};
pub use tier::Tier;
