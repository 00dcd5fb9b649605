//! A multi-level cache for Rust services, as one dependency: the
//! workspace's crates re-exported behind features, and (feature `config`)
//! the whole stack built from one config file.
//!
//! ```toml
//! [dependencies]
//! layered-cache = { version = "0.1", features = ["redis", "invalidation", "config"] }
//! ```
//!
//! ```
//! use std::time::Duration;
//! use layered_cache::{CircuitBreaker, MemoryLayer, Tier, TieredCache, TtlPolicy};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // The default features: an L1, and a breaker for a Redis tier
//! // (feature `redis`: `.tier(Tier::new(redis).shared_policy(breaker))`).
//! let cache = TieredCache::builder()
//!     .tier(Tier::new(MemoryLayer::new()).ttl_cap(Duration::from_secs(60)))
//!     .ttl_policy("rating:*", TtlPolicy::new().ttl(Duration::from_secs(600)))
//!     .build()?;
//! let breaker = CircuitBreaker::builder().name("redis").build_for_tier()?;
//! # let _ = breaker;
//! let rating: f32 = cache
//!     .entry("rating:offer:7") // 10 minutes: the TTL policy of `rating:*`
//!     .get_or_compute(|| async { Ok::<_, std::io::Error>(4.5) })
//!     .await?;
//! assert_eq!(rating, 4.5);
//! # Ok(())
//! # }
//! ```
//!
//! With the `config` feature, the whole stack (L1, Redis, breaker,
//! backplane, TTL table, dependency rules) comes from one file, in one
//! call: `StackConfig::from_toml_file("stack.toml")?.build().await?` (see
//! the `config` module; `examples/stack.toml` is a full file, and
//! `docs/configuration.md` lists every key with its default).
//!
//! # Pick and mix, or everything
//! The parts stay separate crates that depend on `cache-core` and not on
//! this one: a service that wants only an L1 can depend on `cache-memory`
//! and `cache-tiered` alone, and a custom backend needs only `cache-core`.
//! This crate depends on them, the way `tokio` gathers its parts, so one
//! line in `Cargo.toml` brings the set you choose:
//!
//! | feature | brings | default |
//! |---|---|---|
//! | `memory` | `MemoryLayer` (`cache-memory`): the in-process L1 | yes |
//! | `breaker` | `CircuitBreaker`, `TierBreaker` (`cache-breaker`) | yes |
//! | `redis` | `RedisLayer`, `RedisBackplane`, `RedisLoadLock` (`cache-redis`) | |
//! | `invalidation` | `Invalidator`, `Rules` (`cache-invalidation`) | |
//! | `config` | `config::StackConfig`: the stack from a TOML file (implies `memory`) | |
//! | `metrics` | `TieredCache::export_metrics` through the `metrics` facade | |
//! | `json` | the JSON serializer (`Json`) | |
//! | `tls` | `rediss://` URLs (implies `redis`) | |
//! | `lz4` | compression of large Redis values (implies `redis`) | |
//! | `full` | all of the above | |
//!
//! `cache-core` and `cache-tiered` are always in: every stack has them.
//! The names used every day are at the root of this crate
//! ([`TieredCache`], [`Tier`], [`TtlPolicy`], [`Pattern`]...); each crate
//! is also re-exported whole under its own name ([`cache_core`],
//! [`cache_tiered`], and those of the features on), for the rest.
//! (Feature-gated names are written without links here, so that these
//! docs build with any set of features.)
//!
//! # Errors
//! [`Error`] is the cache's error ([`cache_tiered::Error`]); the layers'
//! builders return [`cache_core::Error`], and the config `ConfigError`.
//! Every one has a `class()` ([`ErrorClass`]).
#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

pub use cache_core;
pub use cache_tiered;

#[cfg(feature = "breaker")]
pub use cache_breaker;
#[cfg(feature = "invalidation")]
pub use cache_invalidation;
#[cfg(feature = "memory")]
pub use cache_memory;
#[cfg(feature = "redis")]
pub use cache_redis;

// The contract: what a custom layer, policy or backplane implements, and
// the vocabulary every part shares.
#[cfg(feature = "json")]
pub use cache_core::Json;
pub use cache_core::{
    Backplane, CacheLayer, Clock, Entry, ErrorClass, FailClosed, FailOpen, FailurePolicy,
    ManualClock, Pattern, Postcard, Serializer, SystemClock, escape,
};

// The composer.
pub use cache_tiered::{
    CacheWarmer, CancellationToken, EntryCall, Error, Fetched, FleetLock, Health, LoadError,
    MemoryBackplane, MemoryLoadLock, Removal, Removed, Result, Stale, Status, Tier, TierStats,
    TieredCache, TieredCacheBuilder, TieredStats, TtlPolicy, WarmJob, WarmSummary, WarmTiers,
};

#[cfg(feature = "memory")]
pub use cache_memory::{MemoryLayer, MemoryLayerBuilder};

#[cfg(feature = "redis")]
pub use cache_redis::{
    ReadFrom, RedisBackplane, RedisBackplaneBuilder, RedisLayer, RedisLayerBuilder, RedisLoadLock,
};

#[cfg(feature = "breaker")]
pub use cache_breaker::{
    BreakerError, Builder as CircuitBreakerBuilder, CircuitBreaker, State as BreakerState,
    TierBreaker,
};

#[cfg(feature = "invalidation")]
pub use cache_invalidation::{
    Error as InvalidationError, Invalidated, Invalidator, Rules, RulesBuilder,
};

#[cfg(feature = "config")]
pub mod config;
#[cfg(feature = "config")]
mod error;
#[cfg(feature = "config")]
pub use config::{Stack, StackConfig};
#[cfg(feature = "config")]
pub use error::{ConfigError, Problem};
