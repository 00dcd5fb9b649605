//! Invalidation across cache tiers and across instances.
//!
//! A value cached under one key often depends on data cached under others:
//! an offer's reviews, its average rating and its stats all change when a
//! review is written. This crate removes them together, from every tier of a
//! [`TieredCache`](cache_tiered::TieredCache), in this process and in every
//! other process sharing the same L2:
//!
//! - [`Rules`]: dependency rules between key templates
//!   (`reviews:offer:{id}` → `rating:offer:{id}`, `offer_stats:{id}`),
//!   applied transitively, with user ids escaped so that `*` or `[` in an id
//!   matches only itself;
//! - [`Invalidator`]: applies the rules to a `TieredCache`, invalidates
//!   tags (`TieredCache::get_or_compute_tagged`), and publishes what it
//!   removed on a [`Backplane`](cache_core::Backplane); a listener
//!   removes what other instances publish from this instance's local tiers,
//!   and clears them when messages may have been lost;
//! - [`MemoryBackplane`]: a backplane inside one process (tests, several
//!   caches in one program). `cache_redis::RedisBackplane` spans processes
//!   over Redis pub/sub.
//!
//! # Guarantees
//! - After `invalidate_key` returns `Ok`, no tier of this instance returns
//!   a removed value, and neither does a shared tier for any instance. The
//!   other instances' local tiers drop their copies when the message
//!   arrives (Redis pub/sub: about a round trip); fills racing with that are
//!   refused by the `TieredCache`'s fill guard.
//! - A lost message is never silently ignored: a backplane reports a
//!   possible gap (a reconnect, a slow subscriber, undecodable bytes), and
//!   the receiver clears its local tiers.
//! - What did not reach every tier or the backplane (Redis down) is
//!   queued and retried in the background until it lands
//!   ([`Error::Deferred`]), so Redis does not come back with the values
//!   invalidated during an outage.
//! - Other errors say what failed; everything else was still removed and
//!   published, and calling again is safe.
#![forbid(unsafe_code)]

mod error;
mod invalidator;
mod memory;
mod retry;
mod rules;
mod template;

pub use error::{Error, Result};
pub use invalidator::{Invalidated, Invalidator, InvalidatorBuilder, InvalidatorStats};
pub use memory::MemoryBackplane;
pub use rules::{Rules, RulesBuilder};
