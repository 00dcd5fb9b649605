//! The breaker's states and the record of a change between them.

use std::fmt;
use std::time::Instant;

/// Where a breaker is now, with what it counts in that state.
///
/// Returned by [`CircuitBreaker::state`](crate::CircuitBreaker::state).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Calls go through. `failures` is the number of consecutive failures
    /// seen so far; at the failure threshold the breaker opens.
    Closed {
        /// Consecutive failures since the last success.
        failures: u32,
    },
    /// Calls are rejected without being tried. The first call after the
    /// recovery timeout moves the breaker to half-open (the state stays
    /// `Open` until someone asks).
    Open {
        /// When the breaker opened, by its clock.
        since: Instant,
    },
    /// A few trial calls go through; enough successes close the breaker,
    /// one failure opens it again.
    HalfOpen {
        /// Trial calls that succeeded since the breaker went half-open.
        successes: u32,
    },
}

impl State {
    /// The state without its data.
    pub fn kind(&self) -> StateKind {
        match self {
            State::Closed { .. } => StateKind::Closed,
            State::Open { .. } => StateKind::Open,
            State::HalfOpen { .. } => StateKind::HalfOpen,
        }
    }
}

/// The three states of a breaker, without their data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StateKind {
    /// Calls go through.
    Closed,
    /// Calls are rejected.
    Open,
    /// A limited number of trial calls go through.
    HalfOpen,
}

impl StateKind {
    pub(crate) const fn to_bits(self) -> u64 {
        match self {
            StateKind::Closed => 0,
            StateKind::Open => 1,
            StateKind::HalfOpen => 2,
        }
    }

    pub(crate) const fn from_bits(bits: u64) -> Self {
        match bits & 0b11 {
            0 => StateKind::Closed,
            1 => StateKind::Open,
            _ => StateKind::HalfOpen,
        }
    }

    /// A lower-case name for logs: `closed`, `open`, `half-open`.
    pub fn as_str(&self) -> &'static str {
        match self {
            StateKind::Closed => "closed",
            StateKind::Open => "open",
            StateKind::HalfOpen => "half-open",
        }
    }
}

impl fmt::Display for StateKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A change of state, handed to the callback set with
/// [`Builder::on_state_change`](crate::Builder::on_state_change).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct StateChange {
    /// The state the breaker left.
    pub from: StateKind,
    /// The state the breaker entered.
    pub to: StateKind,
    /// When, by the breaker's clock.
    pub at: Instant,
}
