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
    pub(super) fn certainly_ahead(deadline: Instant) -> bool {
        use std::sync::LazyLock;
        use std::time::Duration;

        /// Far more than the coarse clock's tick (4 ms at most on Linux).
        const MARGIN: Duration = Duration::from_millis(50);

        fn coarse() -> Duration {
            let now = rustix::time::clock_gettime(rustix::time::ClockId::MonotonicCoarse);
            Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
        }

        // (coarse time, then Instant) taken once: the Instant is not earlier.
        static ANCHOR: LazyLock<(Duration, Instant)> = LazyLock::new(|| (coarse(), Instant::now()));
        let (coarse_anchor, instant_anchor) = *ANCHOR;
        let elapsed_at_most = coarse().saturating_sub(coarse_anchor) + MARGIN;
        instant_anchor
            .checked_add(elapsed_at_most)
            .is_some_and(|now_at_most| deadline > now_at_most)
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
