//! A circuit breaker for layered caches, and for any async call.
//!
//! When a backend (a Redis tier, an HTTP service) fails or hangs, calling it
//! anyway costs every request a timeout. A [`CircuitBreaker`] counts
//! failures and, past a threshold, *opens*: calls are rejected at once,
//! without touching the backend, so the service answers from its other
//! tiers and loaders at full speed. After a recovery timeout it lets a few
//! *trial* calls through (*half-open*); if they succeed it *closes* again,
//! if one fails it opens for another timeout.
//!
//! ```text
//!            failure_threshold consecutive failures
//!            (or failure rate over the window)
//!   Closed ─────────────────────────────────────────▶ Open
//!     ▲                                              │  ▲
//!     │ success_threshold       recovery_timeout     │  │ a trial
//!     │ trial successes         passed, next call    ▼  │ fails
//!     └──────────────────────────────────────────── HalfOpen
//!                     (at most half_open_max_calls trials in flight)
//! ```
//!
//! What counts:
//! - a **failure** is an error, or, with
//!   [`slow_call_duration`](Builder::slow_call_duration), a success that took
//!   longer than that;
//! - an error whose [class](cache_core::ErrorClass) does not
//!   [affect health](cache_core::ErrorClass::affects_health) (a value too
//!   large, a full or read-only server) counts neither way: the backend
//!   answered, and answers other calls fine;
//! - an **abandoned** call (the caller was cancelled) counts neither way and
//!   frees its half-open trial slot.
//!
//! # Guarding a cache tier
//! [`TierBreaker`] (from [`Builder::build_for_tier`]) is the usual guard of
//! a cache tier: a breaker for its reads and one for its writes and
//! removals, so a tier that only fails writes (a dead primary with live
//! replicas) keeps serving reads. A plain `CircuitBreaker` judges every
//! call together. Both implement [`cache_core::FailurePolicy`]: give an
//! `Arc` of one to the tier it guards. The composer asks
//! [`admit`](cache_core::FailurePolicy::admit) before each call to the tier
//! and [`record`](cache_core::FailurePolicy::record)s how it ended; a
//! rejected or failed call goes to
//! [`on_failure`](cache_core::FailurePolicy::on_failure), which by default
//! fails open (a read becomes a miss, a write is skipped).
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use cache_breaker::CircuitBreaker;
//! use cache_core::{Admission, CallOutcome, Error, FailurePolicy, Operation};
//!
//! let breaker = Arc::new(
//!     CircuitBreaker::builder()
//!         .name("redis")
//!         .failure_threshold(3)
//!         .recovery_timeout(Duration::from_secs(5))
//!         .build()?,
//! );
//! // What a tier takes (for example `TieredCache`'s per-tier policy):
//! let policy: Arc<dyn FailurePolicy> = breaker.clone();
//!
//! // What the composer does around each call to the tier, here with the
//! // tier timing out three times in a row:
//! let timeout = Error::timeout("redis", Duration::from_millis(50));
//! for _ in 0..3 {
//!     let Admission::Allow(ticket) = policy.admit(Operation::Read) else { unreachable!() };
//!     let failed = CallOutcome::Failure { elapsed: Duration::from_millis(50), error: &timeout };
//!     policy.record(Operation::Read, ticket, failed);
//! }
//! // Open: the next calls skip the tier at once (and fail open, as misses).
//! assert_eq!(policy.admit(Operation::Read), Admission::Reject);
//! assert!(breaker.stats().rejections >= 1);
//! # Ok::<(), cache_core::Error>(())
//! ```
//!
//! # Guarding any async call
//! [`CircuitBreaker::call`] runs a call if the breaker admits it and
//! records how it ended; [`call_with`](CircuitBreaker::call_with) lets you
//! say which errors count. A rejected call is never started.
//!
//! ```
//! use std::time::Duration;
//! use cache_breaker::{BreakerError, CircuitBreaker};
//!
//! # futures::executor::block_on(async {
//! let breaker = CircuitBreaker::builder()
//!     .failure_threshold(1)
//!     .slow_call_duration(Duration::from_millis(200))
//!     .build()?;
//!
//! let answer: Result<u32, BreakerError<std::io::Error>> =
//!     breaker.call(|| async { Ok(42) }).await;
//! assert_eq!(answer.ok(), Some(42));
//!
//! let failed = breaker
//!     .call(|| async { Err::<u32, _>(std::io::Error::other("connection refused")) })
//!     .await;
//! assert!(matches!(failed, Err(BreakerError::Inner(_))));
//!
//! // One failure was the threshold: now calls are rejected unstarted.
//! let rejected = breaker.call(|| async { Ok::<u32, std::io::Error>(7) }).await;
//! assert!(matches!(rejected, Err(BreakerError::Rejected)));
//! # Ok::<(), cache_core::Error>(())
//! # })?;
//! # Ok::<(), cache_core::Error>(())
//! ```
//!
//! # Time
//! The recovery timeout and call durations are read from a
//! [`cache_core::Clock`] ([`Builder::clock`]); tests pass a
//! [`cache_core::ManualClock`] and step it instead of sleeping.
//!
//! # Observing
//! State changes are logged through `tracing` (`warn` on opening, `info`
//! otherwise) and handed to [`Builder::on_state_change`];
//! [`CircuitBreaker::stats`] counts calls, outcomes, rejections and state
//! changes, and [`CircuitBreaker::state`] says where the breaker is.
//!
//! # Implementation notes
//! While closed and healthy, admitting and recording a success are atomic
//! loads plus a per-thread [`cache_core::Counter`] increment; a mutex is
//! taken only for state changes and in the half-open state. A
//! [`Permit`] (behind `call`) and the [`Ticket`](cache_core::Ticket) of
//! the [`FailurePolicy`](cache_core::FailurePolicy) interface remember the
//! state a call was admitted in, so a late outcome never counts in a later
//! state.
#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

mod breaker;
mod builder;
mod error;
mod state;
mod stats;
mod tier;
mod window;

pub use breaker::{CircuitBreaker, Permit};
pub use builder::Builder;
pub use error::BreakerError;
pub use state::{State, StateChange, StateKind};
pub use stats::BreakerStats;
pub use tier::TierBreaker;
