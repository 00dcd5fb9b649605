//! The plugin points and shared vocabulary of a layered cache.
//!
//! This crate is the small, stable contract that every other crate of the
//! workspace builds on, and the only one a custom backend needs:
//!
//! - [`CacheLayer`]: one tier of a cache, an async, object-safe store of
//!   [`Entry`] values (bytes plus an absolute expiry) under string keys;
//! - [`Serializer`]: typed values to bytes and back ([`Postcard`] by
//!   default, `Json` with the `json` feature);
//! - [`FailurePolicy`]: what a composer does when a tier fails
//!   ([`FailOpen`], [`FailClosed`], or the breaker of `cache-breaker`);
//! - [`Pattern`] and [`escape`]: Redis glob semantics, implemented once;
//! - [`Backplane`]: how cache instances tell each other what to drop;
//! - [`LoadLock`]: how cache instances elect one loader for a key;
//! - [`Clock`]: the time seam ([`SystemClock`], [`ManualClock`] for tests);
//! - [`Error`], [`LayerStats`] and [`Counter`].
//!
//! It has no runtime and does no I/O. Stack layers with `cache-tiered`;
//! `cache-memory` and `cache-redis` are the stock layers.
//!
//! # Writing a backend
//! Implement `name` and the four batch calls of [`CacheLayer`] (the trait
//! docs show a complete in-memory example). Every call carries a
//! [`CallContext`]: the stack's clock, the call's deadline, its
//! [`Operation`] and its policy's [`Ticket`]. Keep the contract listed
//! there (never return an expired entry, treat undecodable bytes as a miss,
//! refuse what you will not hold, finish by the deadline) and check it with
//! the conformance suite of the `testing` feature
//! (`cache_core::testing::Conformance`).
//!
//! # Features
//! - `json`: the `Json` serializer.
//! - `testing`: the conformance suite for backends.
#![forbid(unsafe_code)]

mod backplane;
mod clock;
mod entry;
mod error;
mod latency;
mod layer;
mod lock;
mod pattern;
mod policy;
mod serializer;
mod stats;
#[cfg(feature = "testing")]
pub mod testing;

pub use async_trait::async_trait;
pub use bytes::Bytes;

pub use backplane::{
    Backplane, BackplaneEvent, BackplaneMessage, BackplaneStatus, Invalidation, Subscription,
    UndecodableMessage,
};
pub use clock::{Clock, Deadline, ManualClock, SystemClock, system_clock};
pub use entry::Entry;
pub use error::{Error, ErrorClass, LastError, LastErrorCell, Result};
pub use latency::{Latency, LatencyRecorder};
pub use layer::{CacheLayer, CallContext, Lookups, Operation, ReadNow, WriteNow, Writes};
pub use lock::{LoadLock, LockToken};
pub use pattern::{Pattern, escape};
pub use policy::{
    Admission, CallOutcome, CircuitState, CircuitStatus, FailClosed, FailOpen, FailureAction,
    FailurePolicy, Ticket,
};
#[cfg(feature = "json")]
pub use serializer::Json;
pub use serializer::{DecodeError, Postcard, Serializer};
pub use stats::{Counter, ErrorCounter, ErrorCounts, LayerStats, NodeStats, PoolStats};
