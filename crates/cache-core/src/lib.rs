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
//! - [`Clock`]: the time seam ([`SystemClock`], [`ManualClock`] for tests);
//! - [`Error`], [`LayerStats`] and [`Counter`].
//!
//! It has no runtime and does no I/O. Stack layers with `cache-tiered`;
//! `cache-memory` and `cache-redis` are the stock layers.
//!
//! # Writing a backend
//! Implement the five required methods of [`CacheLayer`] (the trait docs
//! show a complete in-memory example). Keep the contract listed there: never
//! return an expired entry, treat undecodable bytes as a miss, and finish
//! within a timeout.
#![forbid(unsafe_code)]

mod backplane;
mod clock;
mod entry;
mod error;
mod layer;
mod pattern;
mod policy;
mod serializer;
mod stats;

pub use async_trait::async_trait;
pub use bytes::Bytes;

pub use backplane::{
    Backplane, BackplaneEvent, BackplaneMessage, Invalidation, Subscription, UndecodableMessage,
};
pub use clock::{Clock, ManualClock, SystemClock, system_clock};
pub use entry::Entry;
pub use error::{Error, Result};
pub use layer::CacheLayer;
pub use pattern::{Pattern, escape};
pub use policy::{Admission, CallOutcome, FailClosed, FailOpen, FailureAction, FailurePolicy};
#[cfg(feature = "json")]
pub use serializer::Json;
pub use serializer::{DecodeError, Postcard, Serializer};
pub use stats::{Counter, LayerStats};
