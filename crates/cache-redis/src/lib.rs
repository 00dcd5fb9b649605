//! A Redis tier for layered caches: the shared L2 under a process-local L1.
//!
//! [`RedisLayer`] implements [`cache_core::CacheLayer`] over the async
//! [`redis`] client. Stack it under `cache-memory` with `cache-tiered`, or
//! use it alone.
//!
//! ```no_run
//! # async fn demo() -> cache_core::Result<()> {
//! use std::time::{Duration, Instant};
//! use cache_core::{CacheLayer, CallContext, Entry, Operation, Pattern, escape};
//! use cache_redis::RedisLayer;
//!
//! let redis = RedisLayer::builder("redis://127.0.0.1:6379")
//!     .namespace("offers:")
//!     .timeout(Duration::from_millis(200))
//!     .build()
//!     .await?;
//!
//! // Outside a composer, each call carries a context of its own.
//! let (write, read) = (CallContext::system(Operation::Write), CallContext::system(Operation::Read));
//! let expires = Instant::now() + Duration::from_secs(300);
//! let entry = Entry::new(&b"[...]"[..]).expires_at(expires);
//! redis.set(&write, "reviews:offer:42:page:0", entry).await?;
//! let hit = redis.get(&read, "reviews:offer:42:page:0").await?.expect("just written");
//! assert!(hit.expiry().is_some()); // the remaining TTL travels with the value
//!
//! // Everything about offer 42, whatever characters the id holds:
//! let pages = Pattern::new(format!("reviews:offer:{}:*", escape("42")));
//! let removed = redis.invalidate(&CallContext::system(Operation::Remove), &pages).await?;
//! # Ok(()) }
//! ```
//!
//! # Topologies
//! - One server: [`RedisLayer::builder`]`(url)`.
//! - A primary with replicas: add [`replica`](RedisLayerBuilder::replica)
//!   URLs. Writes go to the primary; reads go to the primary and fall back to
//!   the replicas in order when it fails, or go to replicas first with
//!   [`ReadFrom::ReplicasFirst`]. A node that failed is skipped by reads
//!   for [`node_retry_after`](RedisLayerBuilder::node_retry_after).
//! - A Cluster: [`RedisLayer::cluster_builder`]`([urls])`. Keys are spread
//!   over slots by the client; batch calls and pattern invalidation cover
//!   every primary.
//!
//! # What is stored
//! Under `<namespace>:<key>` (layers with different
//! [`namespace`](RedisLayerBuilder::namespace)s never see each other's
//! keys), a 19-byte header (magic `0xCA`, format version `2`, flags, the
//! expiry and an "as of" time, both on the server's clock) and the value
//! bytes. The expiry is also the key's Redis expiry (`SET ... PXAT`, the
//! same millisecond), so a read is one `GET` that returns value and expiry
//! together. The layer translates between the stack's clock and the
//! server's with a `TIME` sample taken at build and every 10 s, erring on
//! the side that keeps an L1 copy from outliving its Redis key (see
//! `docs/redis.md` for the bound). Bytes that are not such an entry
//! (written by something else, a newer format, a key of another type) are a
//! miss, counted in [`LayerStats::corrupt`](cache_core::LayerStats::corrupt),
//! and the key is removed; entries of the earlier format 1 are misses left
//! in place.
//!
//! # Removals and fills
//! A removal leaves a short-lived marker under the key
//! ([`removal_markers`](RedisLayerBuilder::removal_markers), 30 s by
//! default), and a fill (a write marked with
//! [`CallContext::with_fill_since`](cache_core::CallContext::with_fill_since))
//! is stored only over nothing newer than its load: a load that began before
//! another instance's removal or write fails with
//! [`Error::Superseded`](cache_core::Error::Superseded) instead of putting
//! its value back. Both are Lua scripts, loaded at build.
//!
//! # Failure behaviour
//! Every call is bounded by the [`timeout`](RedisLayerBuilder::timeout)
//! and fails with [`cache_core::Error::Timeout`] after it; connection and
//! server failures are [`cache_core::Error::Backend`]. A composer's
//! `FailurePolicy` decides what to do with them. Values over
//! [`max_value_size`](RedisLayerBuilder::max_value_size) are refused with
//! [`cache_core::Error::ValueTooLarge`] without being sent.
//!
//! # Connections
//! Each node has a [`mobc`] pool of redis `MultiplexedConnection`s (a
//! Cluster has one of cluster connections). Requests share a few leased
//! connections round-robin instead of checking one out each: a multiplexed
//! connection pipelines the requests of every task using it, which is where
//! its throughput comes from. See `docs/redis.md` for the measurements.
//!
//! # Features
//! - `tls`: `rediss://` URLs, through rustls with the ring provider.
//! - `lz4`: [`compress_above`](RedisLayerBuilder::compress_above).
//!
//! # Pattern invalidation
//! `invalidate` runs `SCAN MATCH <escaped namespace>:<pattern> COUNT n` in
//! bounded batches and removes what it finds; it never uses `KEYS`.
//! Patterns have [`cache_core::Pattern`] semantics, the same as every other
//! layer; build them from user ids with [`cache_core::escape`]. A pattern
//! without wildcards is a single key's removal.
//!
//! # Backplane
//! [`RedisBackplane`] implements [`cache_core::Backplane`] on Redis pub/sub:
//! instances sharing a Redis publish the keys they write or invalidate on
//! one channel, and each drops them from its own L1 (attach it with
//! `TieredCacheBuilder::backplane` of cache-tiered). Publishing is bounded by a
//! timeout and reconnects by itself; a subscription that lost its connection
//! resubscribes from within [`next`](cache_core::Subscription::next) (no
//! background task) and then yields [`BackplaneEvent::Gap`](cache_core::BackplaneEvent::Gap),
//! since messages published meanwhile are lost. Over a Redis Cluster
//! ([`RedisBackplane::cluster_builder`]) a subscription whose node dies
//! subscribes again through another node (a gap again), and messages use
//! sharded pub/sub (`SPUBLISH`/`SSUBSCRIBE`, Redis 7) where the Cluster has
//! it, so that they do not travel to every node ([`PubSubMode`]). See
//! `docs/redis.md`.
//!
//! # Load lock
//! [`RedisLoadLock`] implements [`cache_core::LoadLock`] on the layer's
//! server: `SET NX PX` with a random token, released by a script only
//! while the token still holds the key. Attached with cache-tiered's
//! `TieredCacheBuilder::fleet_lock`, instances that miss the same key at
//! once run one loader between them and the others wait for its value
//! (fleet-wide single-flight).
#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

mod backplane;
mod builder;
mod codec;
mod layer;
mod lock;
mod pool;
mod script;
mod time;
mod url;

#[cfg(test)]
mod skew_tests;

pub use backplane::{PubSubMode, RedisBackplane, RedisBackplaneBuilder};
pub use builder::{ReadFrom, RedisLayerBuilder};
pub use layer::RedisLayer;
pub use lock::RedisLoadLock;
