//! Latency percentiles: a lock-free recorder and the summary it reports.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use histogram::AtomicHistogram;

/// Buckets within 1/2^5 (about 3%) of each other: a p99 of 1.00 ms reads
/// as something between 0.97 and 1.03 ms.
const GROUPING_POWER: u8 = 5;
/// Nanoseconds up to 2^36 (about 69 s); longer calls count as 69 s. 1,024
/// buckets of 8 bytes: 8 KiB per recorder.
const MAX_VALUE_POWER: u8 = 36;
const MAX_NANOS: u64 = (1 << MAX_VALUE_POWER) - 1;

/// Records how long calls take, for percentiles.
///
/// Recording is one relaxed atomic add to a bucket (and a read of the
/// maximum so far): no lock, no allocation, cheap enough for every call to
/// a remote tier. Percentiles come from [`summary`](Self::summary), within
/// about 3% of the true value ([`histogram`](https://docs.rs/histogram)'s
/// buckets, an HdrHistogram-like layout); the maximum is exact.
///
/// ```
/// use std::time::Duration;
/// use cache_core::LatencyRecorder;
///
/// let recorder = LatencyRecorder::new();
/// for ms in 1..=100 {
///     recorder.record(Duration::from_millis(ms));
/// }
/// let latency = recorder.summary();
/// assert_eq!(latency.count, 100);
/// assert_eq!(latency.max, Duration::from_millis(100));
/// let p50 = latency.p50.as_secs_f64();
/// assert!((0.048..=0.052).contains(&p50), "{latency}");
/// ```
pub struct LatencyRecorder {
    histogram: AtomicHistogram,
    max_nanos: AtomicU64,
}

impl LatencyRecorder {
    /// An empty recorder.
    pub fn new() -> Self {
        LatencyRecorder {
            histogram: AtomicHistogram::new(GROUPING_POWER, MAX_VALUE_POWER)
                .expect("constant parameters are valid"),
            max_nanos: AtomicU64::new(0),
        }
    }

    /// Records one call of `elapsed`.
    #[inline]
    pub fn record(&self, elapsed: Duration) {
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        // Within range by construction: the clamp keeps it there.
        let _ = self.histogram.increment(nanos.min(MAX_NANOS));
        // Read first: the maximum seldom moves, and a plain load leaves the
        // cache line shared between cores where `fetch_max` would not.
        if nanos > self.max_nanos.load(Ordering::Relaxed) {
            self.max_nanos.fetch_max(nanos, Ordering::Relaxed);
        }
    }

    /// The percentiles of every call recorded so far.
    pub fn summary(&self) -> Latency {
        let snapshot = self.histogram.load();
        let mut buckets = [None, None, None];
        if snapshot
            .quantile_buckets_into(&[0.5, 0.9, 0.99], &mut buckets)
            .is_err()
        {
            return Latency::default();
        }
        // A bucket stands for its range; its upper end never understates.
        let end = |bucket: &Option<histogram::Bucket>| {
            bucket
                .as_ref()
                .map_or(Duration::ZERO, |b| Duration::from_nanos(b.end()))
        };
        let max = Duration::from_nanos(self.max_nanos.load(Ordering::Relaxed));
        Latency {
            count: snapshot.iter().map(|bucket| bucket.count()).sum(),
            // Never above the exact maximum, which a bucket's end may pass.
            p50: end(&buckets[0]).min(max),
            p90: end(&buckets[1]).min(max),
            p99: end(&buckets[2]).min(max),
            max,
        }
    }
}

impl Default for LatencyRecorder {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for LatencyRecorder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.summary(), f)
    }
}

/// Percentiles of the calls a [`LatencyRecorder`] saw. All zero before the
/// first call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Latency {
    /// Calls recorded.
    pub count: u64,
    /// Half the calls took at most this long.
    pub p50: Duration,
    /// 90% of the calls took at most this long.
    pub p90: Duration,
    /// 99% of the calls took at most this long.
    pub p99: Duration,
    /// The longest call (exact).
    pub max: Duration,
}

impl fmt::Display for Latency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} calls, p50 {:?}, p90 {:?}, p99 {:?}, max {:?}",
            self.count, self.p50, self.p90, self.p99, self.max
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_is_all_zero() {
        assert_eq!(LatencyRecorder::new().summary(), Latency::default());
    }

    #[test]
    fn percentiles_are_within_the_bucket_error() {
        let recorder = LatencyRecorder::new();
        // 1..=1000 µs: p50 = 500 µs, p90 = 900 µs, p99 = 990 µs.
        for micros in 1..=1000 {
            recorder.record(Duration::from_micros(micros));
        }
        let latency = recorder.summary();
        assert_eq!(latency.count, 1000);
        assert_eq!(latency.max, Duration::from_micros(1000));
        for (got, want) in [
            (latency.p50, 500.0),
            (latency.p90, 900.0),
            (latency.p99, 990.0),
        ] {
            let got = got.as_secs_f64() * 1e6;
            assert!(
                (want..=want * 1.04).contains(&got),
                "{got} µs for {want} µs: {latency}"
            );
        }
    }

    #[test]
    fn huge_values_are_clamped_not_lost() {
        let recorder = LatencyRecorder::new();
        recorder.record(Duration::from_secs(10_000));
        recorder.record(Duration::MAX);
        let latency = recorder.summary();
        assert_eq!(latency.count, 2);
        assert_eq!(latency.max, Duration::from_nanos(u64::MAX));
        assert!(latency.p99 >= Duration::from_secs(60), "{latency}");
    }

    #[test]
    fn concurrent_records_all_count() {
        let recorder = std::sync::Arc::new(LatencyRecorder::new());
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let recorder = recorder.clone();
                std::thread::spawn(move || {
                    for i in 0..1000u64 {
                        recorder.record(Duration::from_nanos(t * 1000 + i));
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let latency = recorder.summary();
        assert_eq!(latency.count, 8000);
        assert_eq!(latency.max, Duration::from_nanos(7999));
    }
}
