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
}

/// The real monotonic clock ([`Instant::now`]). The default everywhere.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[inline]
    fn now(&self) -> Instant {
        Instant::now()
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
