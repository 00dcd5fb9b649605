//! Counters and the stats snapshot every layer reports.

use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// A snapshot of one layer's counters.
///
/// Counters a layer does not keep stay zero. Build one with
/// `LayerStats::default()` and set the fields you track.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LayerStats {
    /// Reads that found a live value.
    pub hits: u64,
    /// Reads that found nothing (or only an expired or unreadable value).
    pub misses: u64,
    /// Values stored.
    pub sets: u64,
    /// Keys removed by delete or invalidation.
    pub removals: u64,
    /// Values dropped to make room.
    pub evictions: u64,
    /// Values dropped because they expired.
    pub expirations: u64,
    /// Writes refused (for example a value over the size limit).
    pub rejections: u64,
    /// Stored bytes that did not parse as an entry, counted as misses and removed.
    pub corrupt: u64,
    /// Calls that failed.
    pub errors: u64,
    /// Entries held now, where the layer knows.
    pub entries: u64,
    /// Bytes of keys and values held now, where the layer knows.
    pub bytes: u64,
}

impl LayerStats {
    /// Hits over reads, `0.0` before the first read.
    pub fn hit_ratio(&self) -> f64 {
        ratio(self.hits, self.hits + self.misses)
    }
}

pub(crate) fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

const SLOTS: usize = 16;

/// A counter that many threads bump without fighting over one cache line.
///
/// Each thread adds to its own padded slot; reading sums the slots. Use it for
/// hot-path statistics, where a single shared atomic would bounce between
/// cores on every increment.
pub struct Counter {
    slots: Box<[Slot; SLOTS]>,
}

#[repr(align(128))]
#[derive(Default)]
struct Slot(AtomicU64);

impl Counter {
    /// A counter at zero.
    pub fn new() -> Self {
        Counter {
            slots: Box::default(),
        }
    }

    /// Adds one.
    #[inline]
    pub fn incr(&self) {
        self.add(1);
    }

    /// Adds `n`.
    #[inline]
    pub fn add(&self, n: u64) {
        self.slots[slot_index()].0.fetch_add(n, Ordering::Relaxed);
    }

    /// The current total.
    pub fn get(&self) -> u64 {
        self.slots
            .iter()
            .map(|slot| slot.0.load(Ordering::Relaxed))
            .fold(0, u64::wrapping_add)
    }
}

impl Default for Counter {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Counter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.get(), f)
    }
}

/// This thread's slot, handed out round-robin the first time a thread counts.
#[inline]
fn slot_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SLOTS;
    }
    INDEX.with(|index| *index)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn counter_sums_across_threads() {
        let counter = Arc::new(Counter::new());
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let counter = counter.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        counter.incr();
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        counter.add(5);
        assert_eq!(counter.get(), 8005);
    }

    #[test]
    fn hit_ratio() {
        let mut stats = LayerStats::default();
        assert_eq!(stats.hit_ratio(), 0.0);
        stats.hits = 3;
        stats.misses = 1;
        assert_eq!(stats.hit_ratio(), 0.75);
    }
}
