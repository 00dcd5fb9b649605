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

    /// Whether `deadline` has passed: [`has_passed`](Clock::has_passed)
    /// for a deadline prepared once and judged on every read (an entry's
    /// expiry, see [`Entry::has_expired`](crate::Entry::has_expired)).
    /// Default: `self.has_passed(deadline.instant())`.
    fn has_passed_deadline(&self, deadline: &Deadline) -> bool {
        self.has_passed(deadline.instant())
    }
}

/// An instant prepared for being compared with "now" many times: it
/// carries the coarse-clock reading before which it has certainly not come,
/// so that [`SystemClock`] judges a deadline that is far off with one cheap
/// clock read and one comparison (no precise read, no arithmetic).
///
/// ```
/// use std::time::{Duration, Instant};
/// use cache_core::{Clock, Deadline, SystemClock};
///
/// let deadline = Deadline::new(Instant::now() + Duration::from_secs(60));
/// assert!(!SystemClock.has_passed_deadline(&deadline));
/// let past = Deadline::new(Instant::now());
/// assert!(SystemClock.has_passed_deadline(&past));
/// ```
#[derive(Clone, Copy)]
pub struct Deadline {
    at: Instant,
    /// The coarse-clock reading (nanoseconds) below which `at` has certainly
    /// not come; zero when none is known.
    coarse_before: u64,
}

impl Deadline {
    /// Prepares `at`.
    pub fn new(at: Instant) -> Self {
        Deadline {
            at,
            coarse_before: coarse::reading_before(at),
        }
    }

    /// The instant itself.
    pub fn instant(&self) -> Instant {
        self.at
    }
}

impl PartialEq for Deadline {
    /// Deadlines are equal when their instants are (the hint follows from it).
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at
    }
}

impl Eq for Deadline {}

impl fmt::Debug for Deadline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.at, f)
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

    /// Reads judge entries by their prepared [`Deadline`]s
    /// ([`has_passed_deadline`](Clock::has_passed_deadline)); this prepares
    /// one for a single judgment.
    #[inline]
    fn has_passed(&self, deadline: Instant) -> bool {
        self.has_passed_deadline(&Deadline::new(deadline))
    }

    #[inline]
    fn has_passed_deadline(&self, deadline: &Deadline) -> bool {
        !coarse::reads_below(deadline.coarse_before) && deadline.at <= Instant::now()
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
///
/// A [`Deadline`] does the arithmetic once, when it is made: the coarse
/// reading `c0 + (deadline - i0) - margin` below which the deadline has
/// certainly not come (`c < c0 + (deadline - i0) - margin` gives a true
/// time below `i0 + (deadline - i0)`); a check is then one coarse read and
/// one comparison.
mod coarse {
    use std::time::Instant;

    /// Far more than the coarse clock's tick (4 ms at most on Linux).
    #[cfg(target_os = "linux")]
    const MARGIN_NANOS: u64 = 50_000_000;

    /// A coarse time, then an `Instant` taken after it (so not earlier).
    #[cfg(target_os = "linux")]
    struct Anchor {
        coarse: u64,
        instant: Instant,
    }

    #[cfg(target_os = "linux")]
    fn anchor() -> &'static Anchor {
        static ANCHOR: std::sync::OnceLock<Anchor> = std::sync::OnceLock::new();
        ANCHOR.get_or_init(|| Anchor {
            coarse: coarse_nanos(),
            instant: Instant::now(),
        })
    }

    /// The coarse reading below which `deadline` has certainly not come
    /// (zero if it is too near the anchor to tell).
    #[cfg(target_os = "linux")]
    pub(super) fn reading_before(deadline: Instant) -> u64 {
        let anchor = anchor();
        let Some(ahead) = deadline.checked_duration_since(anchor.instant) else {
            return 0;
        };
        let ahead = u64::try_from(ahead.as_nanos()).unwrap_or(u64::MAX);
        anchor
            .coarse
            .saturating_add(ahead)
            .saturating_sub(MARGIN_NANOS)
    }

    /// Whether the coarse clock reads below `reading`.
    #[cfg(target_os = "linux")]
    #[inline]
    pub(super) fn reads_below(reading: u64) -> bool {
        coarse_nanos() < reading
    }

    #[cfg(not(target_os = "linux"))]
    pub(super) fn reading_before(_deadline: Instant) -> u64 {
        0
    }

    #[cfg(not(target_os = "linux"))]
    pub(super) fn reads_below(_reading: u64) -> bool {
        false
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
            // The same, prepared as deadlines (the coarse reading in them).
            assert!(clock.has_passed_deadline(&Deadline::new(past)));
            assert!(clock.has_passed_deadline(&Deadline::new(now)));
            assert!(!clock.has_passed_deadline(&Deadline::new(future)));
        }
        // A near deadline is decided by the precise clock, and does pass.
        let soon = Instant::now() + Duration::from_millis(2);
        while !clock.has_passed(soon) {
            std::hint::spin_loop();
        }
        assert!(Instant::now() >= soon);
        let soon = Deadline::new(Instant::now() + Duration::from_millis(2));
        while !clock.has_passed_deadline(&soon) {
            std::hint::spin_loop();
        }
        assert!(Instant::now() >= soon.instant());
    }

    #[test]
    fn a_far_deadline_is_judged_by_the_coarse_clock_alone() {
        let far = Deadline::new(Instant::now() + Duration::from_secs(3600));
        // Past the margin, the hint says "certainly not yet" on Linux.
        if cfg!(target_os = "linux") {
            assert!(coarse::reads_below(far.coarse_before));
        }
        // One already due has no usable hint.
        let due = Deadline::new(Instant::now());
        assert!(!coarse::reads_below(due.coarse_before));
    }

    #[test]
    fn manual_clock_has_passed() {
        let clock = ManualClock::new();
        let deadline = clock.now() + Duration::from_millis(5);
        // Far off on the real timeline, but the manual clock is the judge.
        let prepared = Deadline::new(deadline);
        assert!(!clock.has_passed(deadline));
        assert!(!clock.has_passed_deadline(&prepared));
        clock.advance(Duration::from_millis(5));
        assert!(clock.has_passed(deadline));
        assert!(clock.has_passed_deadline(&prepared));
        clock.advance(Duration::from_secs(3600));
        let hour = Deadline::new(clock.now());
        assert!(clock.has_passed_deadline(&hour));
    }
}
