//! Counters and the stats snapshot every layer reports.

use std::cell::Cell;
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use crate::{ErrorClass, Latency};

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
    /// Fills not stored because the key was written or removed after the
    /// read or load that produced them began (see
    /// [`CallContext::with_fill_since`](crate::CallContext::with_fill_since)).
    pub stale_fills: u64,
    /// The connection pool, for a layer that has one (all of a
    /// multi-node layer's pools summed).
    pub pool: Option<PoolStats>,
    /// Per node of a remote layer (a primary, each replica, a Cluster):
    /// calls, errors by class, latency. Empty for an in-process layer.
    pub nodes: Vec<NodeStats>,
}

/// A remote layer's connection pool.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolStats {
    /// The most connections the pool opens.
    pub max_open: u64,
    /// Connections open and in use now.
    pub open: u64,
    /// Connections opened since the start (reconnections included).
    pub connects: u64,
    /// Connections dropped because they failed.
    pub broken: u64,
    /// Calls that waited for a connection to open.
    pub waits: u64,
    /// The time those calls spent waiting, summed.
    pub wait_time: Duration,
}

/// One node of a remote layer, as its calls saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct NodeStats {
    /// The node's address (never a password) or a name for it.
    pub name: String,
    /// What the node is to the layer: `"primary"`, `"replica"`, `"cluster"`.
    pub role: &'static str,
    /// Calls sent to the node (a pipeline or batch counts once).
    pub calls: u64,
    /// Calls that failed, by class.
    pub errors: ErrorCounts,
    /// How long calls took, failed ones included.
    pub latency: Latency,
    /// Whether reads avoid the node now, after a recent failure.
    pub down: bool,
}

/// Errors counted by [`ErrorClass`], from an [`ErrorCounter`].
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct ErrorCounts([u64; ErrorClass::ALL.len()]);

impl ErrorCounts {
    /// Errors of `class`.
    pub fn get(&self, class: ErrorClass) -> u64 {
        self.0[class.index()]
    }

    /// Errors of every class.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// The classes with at least one error, and their counts.
    pub fn iter(&self) -> impl Iterator<Item = (ErrorClass, u64)> + '_ {
        ErrorClass::ALL
            .iter()
            .map(|&class| (class, self.get(class)))
            .filter(|&(_, count)| count > 0)
    }
}

impl fmt::Debug for ErrorCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.iter().map(|(class, count)| (class.as_str(), count)))
            .finish()
    }
}

/// Counts errors by class. For failure paths: one relaxed atomic add.
#[derive(Default)]
pub struct ErrorCounter([AtomicU64; ErrorClass::ALL.len()]);

impl ErrorCounter {
    /// Counts one error of `class`.
    pub fn record(&self, class: ErrorClass) {
        self.0[class.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// The counts so far.
    pub fn counts(&self) -> ErrorCounts {
        ErrorCounts(std::array::from_fn(|i| self.0[i].load(Ordering::Relaxed)))
    }
}

impl fmt::Debug for ErrorCounter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.counts(), f)
    }
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

/// Slots owned by one thread each (bumped without a locked instruction),
/// then as many shared ones (bumped atomically).
const OWNED: usize = 16;
const SHARED: usize = 16;

/// A counter that many threads bump without fighting over one cache line.
///
/// Each of the first 16 threads that count gets a slot of its own, which it
/// bumps with a plain load and store (no locked instruction); later threads
/// share 16 more slots, bumped with `fetch_add`. Reading sums the slots, so
/// a read is a snapshot that may miss increments still in flight, never
/// loses them. Use it for hot-path statistics, where a single shared atomic
/// would bounce between cores on every increment.
/// A counter made with [`Counter::off`] counts nothing and reads zero, for
/// statistics a user turned off: the hot path then pays a branch instead
/// of an increment.
pub struct Counter {
    slots: Option<Box<[Slot; OWNED + SHARED]>>,
}

#[repr(align(64))]
#[derive(Default)]
struct Slot(AtomicU64);

impl Counter {
    /// A counter at zero.
    pub fn new() -> Self {
        Counter {
            slots: Some(Box::default()),
        }
    }

    /// A counter that ignores increments and reads zero.
    pub const fn off() -> Self {
        Counter { slots: None }
    }

    /// [`new`](Self::new) if `on`, else [`off`](Self::off).
    pub fn on_if(on: bool) -> Self {
        if on { Self::new() } else { Self::off() }
    }

    /// Adds one.
    #[inline]
    pub fn incr(&self) {
        self.add(1);
    }

    /// Adds `n`.
    #[inline]
    pub fn add(&self, n: u64) {
        let Some(slots) = &self.slots else { return };
        let slot = SLOT.get();
        if slot < OWNED {
            // Only this thread ever writes this slot: no locked instruction.
            let slot = &slots[slot].0;
            slot.store(
                slot.load(Ordering::Relaxed).wrapping_add(n),
                Ordering::Relaxed,
            );
        } else {
            add_shared(slots, n);
        }
    }

    /// The current total.
    pub fn get(&self) -> u64 {
        let Some(slots) = &self.slots else { return 0 };
        slots
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

/// A slot number no thread has: the thread has not counted yet.
const UNASSIGNED: usize = usize::MAX;

thread_local! {
    /// This thread's slot. Const-initialised, so reading it is one
    /// thread-local load with no lazy-initialisation check on every bump.
    static SLOT: Cell<usize> = const { Cell::new(UNASSIGNED) };
}

/// [`Counter::add`] for a thread without an owned slot: one that counts
/// for the first time, or one of the threads past the first [`OWNED`].
/// Slot numbers are handed out once and never reused, so an owned slot
/// never has a second writer.
#[inline(never)]
fn add_shared(slots: &[Slot; OWNED + SHARED], n: u64) {
    let mut slot = SLOT.get();
    if slot == UNASSIGNED {
        slot = assign_slot();
    }
    let slot = &slots[slot].0;
    slot.fetch_add(n, Ordering::Relaxed);
}

#[cold]
fn assign_slot() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let slot = if n < OWNED { n } else { OWNED + n % SHARED };
    SLOT.set(slot);
    slot
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn counter_sums_across_threads() {
        let counter = Arc::new(Counter::new());
        // More threads than owned slots: both kinds of slot are exercised.
        let threads: Vec<_> = (0..40)
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
        assert_eq!(counter.get(), 40_005);
    }

    #[test]
    fn an_off_counter_reads_zero() {
        let counter = Counter::off();
        counter.add(5);
        assert_eq!(counter.get(), 0);
        assert_eq!(Counter::on_if(true).get(), 0);
    }

    #[test]
    fn errors_count_by_class() {
        let errors = ErrorCounter::default();
        errors.record(ErrorClass::Timeout);
        errors.record(ErrorClass::Timeout);
        errors.record(ErrorClass::Auth);
        let counts = errors.counts();
        assert_eq!(counts.get(ErrorClass::Timeout), 2);
        assert_eq!(counts.get(ErrorClass::OutOfMemory), 0);
        assert_eq!(counts.total(), 3);
        let listed: Vec<_> = counts.iter().collect();
        assert_eq!(listed, [(ErrorClass::Timeout, 2), (ErrorClass::Auth, 1)]);
        assert_eq!(format!("{counts:?}"), r#"{"timeout": 2, "auth": 1}"#);
        for (i, class) in ErrorClass::ALL.into_iter().enumerate() {
            assert_eq!(class.index(), i, "{class}");
        }
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
