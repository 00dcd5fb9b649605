//! The time seam: every layer reads "now" through a [`Clock`], so tests step
//! time instead of sleeping.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A source of monotonic time.
///
/// Share one clock between all the layers of a cache (an
/// `Arc<dyn Clock>`), so that their expiry instants compare.
pub trait Clock: Send + Sync + fmt::Debug {
    /// The current instant.
    fn now(&self) -> Instant;

    /// Whether `deadline` has passed (`deadline <= now`).
    ///
    /// Every cache read asks this of the entry it found, so a clock may
    /// answer faster than reading `now`, as long as it never says "not yet"
    /// for a deadline that has passed. Default: `deadline <= self.now()`.
    fn has_passed(&self, deadline: Instant) -> bool {
        deadline <= self.now()
    }
}

/// The real monotonic clock ([`Instant::now`]). The default everywhere.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[inline]
    fn now(&self) -> Instant {
        Instant::now()
    }

    #[inline]
    fn has_passed(&self, deadline: Instant) -> bool {
        !coarse::certainly_ahead(deadline) && deadline <= Instant::now()
    }
}

/// A cheap "certainly not yet" for deadlines that are far enough off.
///
/// `Instant::now` costs about 20 ns here, the largest single cost of an L1
/// hit. Linux's `CLOCK_MONOTONIC_COARSE` costs about 4 ns; it runs on the
/// same timeline as `Instant` but lags it by up to one tick (1-4 ms). Read a
/// coarse time `c0` and then `i0 = Instant::now()` once: the true time then
/// was at least `c0`. At a later coarse reading `c`, the true time is at most
/// `c + tick`, so it is at most `i0 + (c - c0) + tick` on the `Instant`
/// timeline. A deadline beyond that bound (plus a wide margin, so that even
/// a late tick cannot matter) has certainly not passed; any other deadline
/// is decided by `Instant::now`. Elsewhere the fast path is off.
mod coarse {
    use std::time::Instant;

    #[cfg(target_os = "linux")]
    #[inline]
    pub(super) fn certainly_ahead(deadline: Instant) -> bool {
        use std::cell::Cell;

        thread_local! {
            /// The coarse reading this thread saw last, and the latest the
            /// true time can be while the coarse clock reads it.
            static LAST: Cell<Option<(u64, Instant)>> = const { Cell::new(None) };
        }
        // The bound depends on the coarse reading alone, which changes once
        // a tick: computed once per tick and thread, a hit compares two
        // instants instead of doing the checked arithmetic of `Instant`s
        // and `Duration`s (which costs more than the clock read).
        let coarse = coarse_nanos();
        let latest = LAST.with(|last| match last.get() {
            Some((seen, latest)) if seen == coarse => Some(latest),
            _ => {
                let latest = latest_at(coarse);
                last.set(latest.map(|latest| (coarse, latest)));
                latest
            }
        });
        latest.is_some_and(|latest| deadline > latest)
    }

    /// The coarse clock in nanoseconds (it wraps only after 584 years).
    #[cfg(target_os = "linux")]
    #[inline(always)]
    fn coarse_nanos() -> u64 {
        let now = rustix::time::clock_gettime(rustix::time::ClockId::MonotonicCoarse);
        (now.tv_sec as u64)
            .wrapping_mul(1_000_000_000)
            .wrapping_add(now.tv_nsec as u64)
    }

    /// The latest `Instant` the true time can be while the coarse clock
    /// reads `coarse`.
    #[cfg(target_os = "linux")]
    #[cold]
    fn latest_at(coarse: u64) -> Option<Instant> {
        use std::sync::OnceLock;
        use std::time::Duration;

        /// Far more than the coarse clock's tick (4 ms at most on Linux).
        const MARGIN_NANOS: u64 = 50_000_000;

        /// A coarse time, then an `Instant` taken after it (so not earlier).
        struct Anchor {
            coarse: u64,
            instant: Instant,
        }
        static ANCHOR: OnceLock<Anchor> = OnceLock::new();
        let anchor = ANCHOR.get_or_init(|| Anchor {
            coarse: coarse_nanos(),
            instant: Instant::now(),
        });
        let elapsed_at_most = coarse
            .saturating_sub(anchor.coarse)
            .saturating_add(MARGIN_NANOS);
        anchor
            .instant
            .checked_add(Duration::from_nanos(elapsed_at_most))
    }

    #[cfg(not(target_os = "linux"))]
    pub(super) fn certainly_ahead(_deadline: Instant) -> bool {
        false
    }
}

/// A clock that only moves when told to, for tests.
///
/// ```
/// use std::time::Duration;
/// use cache_core::{Clock, ManualClock};
///
/// let clock = ManualClock::new();
/// let start = clock.now();
/// clock.advance(Duration::from_secs(300));
/// assert_eq!(clock.now() - start, Duration::from_secs(300));
/// ```
#[derive(Debug)]
pub struct ManualClock {
    origin: Instant,
    offset_nanos: AtomicU64,
}

impl ManualClock {
    /// A clock stopped at the current real instant.
    pub fn new() -> Self {
        ManualClock {
            origin: Instant::now(),
            offset_nanos: AtomicU64::new(0),
        }
    }

    /// The same, already in an `Arc` to share between layers.
    pub fn shared() -> Arc<Self> {
        Arc::new(Self::new())
    }

    /// Moves time forward by `by`.
    pub fn advance(&self, by: Duration) {
        let nanos = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.offset_nanos.fetch_add(nanos, Ordering::SeqCst);
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.origin + Duration::from_nanos(self.offset_nanos.load(Ordering::SeqCst))
    }
}

/// The clock used when none is configured.
pub fn system_clock() -> Arc<dyn Clock> {
    Arc::new(SystemClock)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_clock_never_calls_a_passed_deadline_ahead() {
        let clock = SystemClock;
        for step in 0..20_000u64 {
            let now = Instant::now();
            // Deadlines from 10 ms ago to 10 ms ahead, around the fast path's edge.
            let offset = Duration::from_micros(step % 10_000);
            let past = now - offset;
            assert!(clock.has_passed(past), "{offset:?} ago");
            assert!(clock.has_passed(now));
            let future = Instant::now() + Duration::from_secs(60) + offset;
            assert!(!clock.has_passed(future));
        }
        // A near deadline is decided by the precise clock, and does pass.
        let soon = Instant::now() + Duration::from_millis(2);
        while !clock.has_passed(soon) {
            std::hint::spin_loop();
        }
        assert!(Instant::now() >= soon);
    }

    #[test]
    fn manual_clock_has_passed() {
        let clock = ManualClock::new();
        let deadline = clock.now() + Duration::from_millis(5);
        assert!(!clock.has_passed(deadline));
        clock.advance(Duration::from_millis(5));
        assert!(clock.has_passed(deadline));
    }
}
