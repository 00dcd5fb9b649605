//! The Redis server's clock, as seen from this process.
//!
//! Expiries (`SET ... PXAT`, and the copy of it in each value's header) and
//! the times in removal markers are written in the server's time, unix
//! milliseconds or microseconds. Every instance translates between its own
//! clock (the stack's `Instant`s) and the server's through an anchor taken
//! with `TIME`, so instances whose wall clocks disagree still agree on when
//! a value expires and on which of two writes is newer.
//!
//! `TIME` is answered somewhere between sending it and reading the reply,
//! so one sample gives two bounds for what the server's clock reads at any
//! local instant: the *latest* (as if the server answered at once) and the
//! *earliest* (as if it answered just before the reply arrived). Each use
//! takes the bound that errs on the safe side:
//! - an expiry read from Redis becomes the local instant at which the
//!   server's clock may *first* reach it, so a copy in an L1 never outlives
//!   its Redis source because of the translation;
//! - an expiry written to Redis is the *earliest* server time of the
//!   entry's expiry, so Redis never keeps a value past it;
//! - a removal marker records the *latest* time of the removal, and a fill
//!   the *earliest* start of its load, so a load that began before a
//!   removal can never look newer than it (see `layer.rs`).
//!
//! What remains is drift: both clocks may run at slightly different rates
//! between two syncs (NTP slews a clock by at most 500 ppm, typically far
//! less). The layer re-syncs every [`SYNC_EVERY`], so the bounds can be off
//! by at most 1000 ppm of that (10 ms), usually microseconds.
//!
//! This host's wall clock plays no part: nothing is translated before a
//! first sample ([`is_synced`](ServerClock::is_synced)). A layer built
//! lazily samples the clock before its first write and on the connection
//! of its first read (`layer.rs`), so a host whose wall clock is hours off
//! still writes and reads the same expiries as the others
//! (`skew_tests.rs` checks this against a real server).

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How often the layer samples the server's clock again.
pub(crate) const SYNC_EVERY: Duration = Duration::from_secs(10);

/// Translates between local instants and the server's clock (unix
/// microseconds).
#[derive(Debug)]
pub(crate) struct ServerClock {
    /// The local instant the offsets are relative to.
    base: Instant,
    /// The latest the server's clock can have read at `base`.
    latest_at_base: AtomicI64,
    /// The earliest the server's clock can have read at `base`.
    earliest_at_base: AtomicI64,
    /// Whether a sample was taken: until then the offsets are a guess.
    synced: AtomicBool,
}

impl ServerClock {
    /// A clock not yet synced, guessing that the server's time is this
    /// host's wall-clock time. The layer translates nothing before a first
    /// [`record`](Self::record), so the guess is never used.
    pub(crate) fn new() -> Self {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_micros() as i64);
        Self::guessing(wall)
    }

    /// A clock not yet synced, guessing that the server's clock reads
    /// `server_micros` now (a test's seam: a host whose wall clock is off).
    pub(crate) fn guessing(server_micros: i64) -> Self {
        ServerClock {
            base: Instant::now(),
            latest_at_base: AtomicI64::new(server_micros),
            earliest_at_base: AtomicI64::new(server_micros),
            synced: AtomicBool::new(false),
        }
    }

    /// Whether the server's clock was sampled at least once.
    #[inline]
    pub(crate) fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// Takes in one `TIME` sample: sent at `sent`, answered with
    /// `server_micros`, reply read at `received`.
    ///
    /// The two offsets are stored one after the other; a reader that sees
    /// one from this sample and one from the previous still holds two valid
    /// bounds, so no lock is needed.
    pub(crate) fn record(&self, sent: Instant, server_micros: i64, received: Instant) {
        self.latest_at_base.store(
            server_micros - self.micros_since_base(sent),
            Ordering::Relaxed,
        );
        self.earliest_at_base.store(
            server_micros - self.micros_since_base(received),
            Ordering::Relaxed,
        );
        self.synced.store(true, Ordering::Release);
    }

    /// The latest the server's clock can read at local instant `at`.
    pub(crate) fn latest(&self, at: Instant) -> i64 {
        self.latest_at_base.load(Ordering::Relaxed) + self.micros_since_base(at)
    }

    /// The earliest the server's clock can read at local instant `at`.
    pub(crate) fn earliest(&self, at: Instant) -> i64 {
        self.earliest_at_base.load(Ordering::Relaxed) + self.micros_since_base(at)
    }

    /// The first local instant at which the server's clock may read
    /// `server_micros`.
    pub(crate) fn first_local(&self, server_micros: i64) -> Instant {
        let since_base = server_micros - self.latest_at_base.load(Ordering::Relaxed);
        let magnitude = Duration::from_micros(since_base.unsigned_abs());
        let local = if since_base >= 0 {
            self.base.checked_add(magnitude)
        } else {
            self.base.checked_sub(magnitude)
        };
        // Out of `Instant`'s range: centuries away, either way.
        local.unwrap_or(self.base)
    }

    /// Signed microseconds from `base` to `at`.
    fn micros_since_base(&self, at: Instant) -> i64 {
        match at.checked_duration_since(self.base) {
            Some(after) => after.as_micros() as i64,
            None => -(self.base.duration_since(at).as_micros() as i64),
        }
    }
}

/// Parses a `TIME` reply (`[seconds, microseconds]`) into unix microseconds.
pub(crate) fn parse_time(reply: &(i64, i64)) -> i64 {
    reply.0 * 1_000_000 + reply.1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_bracket_the_server_clock() {
        let clock = ServerClock::new();
        let sent = Instant::now();
        let received = sent + Duration::from_millis(4);
        // The server answered 1 ms after `sent` with t = 1e12 µs.
        let server = 1_000_000_000_000;
        clock.record(sent, server, received);
        let later = sent + Duration::from_secs(60);
        let truth = server - 1_000 + 60_000_000;
        assert!(clock.earliest(later) <= truth && truth <= clock.latest(later));
        assert_eq!(clock.latest(later) - clock.earliest(later), 4_000);
        // Instants before the base work too.
        let before = clock.base - Duration::from_secs(1);
        assert_eq!(
            clock.latest(later) - clock.latest(before),
            (later - before).as_micros() as i64
        );
    }

    #[test]
    fn a_server_time_maps_back_no_later_than_it_could_occur() {
        let clock = ServerClock::new();
        let sent = Instant::now();
        let received = sent + Duration::from_millis(2);
        clock.record(sent, 5_000_000_000_000, received);
        let expiry = 5_000_000_000_000 + 30_000_000;
        let local = clock.first_local(expiry);
        // The server's clock, at the latest, reaches the expiry at `local`.
        assert_eq!(clock.latest(local), expiry);
        assert!(clock.earliest(local) <= expiry);
        // 30 s after the request left, to the microsecond (offsets are whole µs).
        let early = (sent + Duration::from_secs(30)).duration_since(local);
        assert!(early < Duration::from_micros(1), "{early:?}");
        // Far outside `Instant`'s range: no panic.
        let _ = clock.first_local(i64::MIN / 2);
        let _ = clock.first_local(i64::MAX / 2);
    }
}
