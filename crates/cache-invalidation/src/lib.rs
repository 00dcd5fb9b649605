//! Dependency rules between cached keys, applied across cache tiers and
//! instances.
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
//! - hole constraints (`{id:digits}`, `{id:word}`, `{id:no-colon}`): a key
//!   whose text breaks them is not of the rule's kind, so an id never runs
//!   into the next segment of a key;
//! - [key families](RulesBuilder::family) (`reviews:offer:{id:digits}:*`):
//!   values under a family's keys are stamped with its version
//!   ([`Rules::families`], installed with
//!   [`TieredCacheBuilder::key_families`](cache_tiered::TieredCacheBuilder::key_families)),
//!   so that a wildcard dependent written as the family goes by removing
//!   one version instead of scanning the keyspace;
//! - [`Invalidator`]: applies the rules to a `TieredCache`: a key and its
//!   dependents go as one removal, in one backplane message.
//!
//! Keeping other instances in step is the cache's own business: give it a
//! backplane ([`TieredCacheBuilder::backplane`](cache_tiered::TieredCacheBuilder::backplane):
//! `cache_tiered::MemoryBackplane` in-process, `cache_redis::RedisBackplane`
//! across processes) and every write and removal, this crate's included,
//! reaches the other instances' local tiers; give it an
//! [invalidation queue](cache_tiered::TieredCacheBuilder::invalidation_queue)
//! and what a failing Redis missed is retried until it lands.
//!
//! # Guarantees
//! - After `invalidate_key` returns `Ok`, no tier of this instance returns
//!   a removed value, and neither does a shared tier for any instance,
//!   unless the report says a tier was skipped (with the queue: deferred,
//!   and retried until it lands). The other instances' local tiers drop
//!   their copies when the message arrives (Redis pub/sub: about a round
//!   trip); fills racing with that are refused by the cache's fill guard.
//! - Following the rules is bounded ([`RulesBuilder::max_patterns`]): a
//!   key that reaches too many patterns is an error before anything is
//!   removed.
#![forbid(unsafe_code)]

mod error;
mod families;
mod invalidator;
mod queue;
mod rules;
mod template;

pub use error::{Error, Result};
pub use families::Families;
pub use invalidator::{Invalidated, Invalidator, InvalidatorBuilder, InvalidatorStats};
pub use queue::{Enqueued, Priority, PriorityQueue, QueueStats};
pub use rules::{Rules, RulesBuilder};
