use cache_core::{Counter, LayerStats};

/// Counters of one tier, as the composer saw it.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct TierStats {
    /// The layer's name.
    pub name: String,
    /// Reads this tier answered.
    pub hits: u64,
    /// Reads this tier did not answer (missing, or undecodable).
    pub misses: u64,
    /// Values copied into this tier from a tier below it.
    pub fills: u64,
    /// Fills skipped or undone because the key changed meanwhile.
    pub fills_discarded: u64,
    /// Values found here whose bytes did not parse (garbage, a truncated
    /// value); counted as misses and removed.
    pub undecodable: u64,
    /// Values found here that were written for another type, schema version
    /// or serializer (another version of the service, during a rolling
    /// deploy); counted as misses and left in place.
    pub foreign: u64,
    /// Tagged values found here after one of their tags was invalidated;
    /// counted as misses and removed.
    pub tag_stale: u64,
    /// Calls that failed or timed out.
    pub errors: u64,
    /// Values the layer refused (over its size limit); returned to the
    /// caller as errors, not counted in `errors`.
    pub refused: u64,
    /// Calls the failure policy did not let through (an open breaker).
    pub rejected: u64,
    /// The layer's own counters.
    pub layer: LayerStats,
}

/// Counters of a whole [`TieredCache`](crate::TieredCache).
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct TieredStats {
    /// Per tier, top first.
    pub tiers: Vec<TierStats>,
    /// Reads answered by some tier.
    pub hits: u64,
    /// Reads no tier answered.
    pub misses: u64,
    /// Loader calls made by `get_or_compute`.
    pub loads: u64,
    /// Loader calls that failed or timed out.
    pub load_errors: u64,
    /// `get_or_compute` callers served by another caller's loader call.
    pub coalesced: u64,
    /// `get_or_compute` callers served a stale value (fail-safe): their
    /// loader failed or timed out, or a recent failure's throttle held.
    pub stale_served: u64,
    /// Eager refreshes started (background loads of a value in the last
    /// part of its TTL).
    pub eager_refreshes: u64,
    /// The backplane's counters (all zero without one).
    pub backplane: BackplaneStats,
    /// The invalidation queue's counters (all zero without one).
    pub queue: QueueStats,
    /// Fleet-wide single-flight's counters (all zero without a
    /// [fleet lock](crate::TieredCacheBuilder::fleet_lock)).
    pub fleet: FleetStats,
}

/// Counters of a cache's [fleet lock](crate::TieredCacheBuilder::fleet_lock):
/// how this instance's loads were shared with the other instances'.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct FleetStats {
    /// Loads this instance ran holding the fleet lock (also counted in
    /// [`TieredStats::loads`]).
    pub acquired: u64,
    /// Misses answered by another instance's load: its value showed up in
    /// a shared tier while this instance waited for the lock (or right
    /// after it took it).
    pub waited_found: u64,
    /// Waits that ended without a value, so this instance loaded without
    /// the lock: [`max_wait`](crate::FleetLock::max_wait) ran out, or a
    /// shared tier failed while waiting.
    pub waited_then_loaded: u64,
    /// Lock calls (taking or releasing) that failed or timed out. A failed
    /// take makes the caller load without the lock; a failed release
    /// leaves the lock to its lease. Also logged (debug).
    pub lock_errors: u64,
}

/// Counters of a cache's [backplane](crate::TieredCacheBuilder::backplane):
/// what this instance told the others, and what it heard from them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BackplaneStats {
    /// Messages published (one per write or removal call, and one per
    /// retry from the invalidation queue).
    pub published: u64,
    /// Publish attempts that failed (retries included); also logged.
    pub publish_errors: u64,
    /// Messages from other instances applied to the local tiers (counted
    /// once applied).
    pub received: u64,
    /// Times messages may have been lost, so the local tiers were cleared
    /// (counted once cleared).
    pub gaps: u64,
    /// Messages or gaps a local tier failed to apply (also logged).
    pub local_errors: u64,
}

/// Counters of a cache's
/// [invalidation queue](crate::TieredCacheBuilder::invalidation_queue).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueueStats {
    /// Calls that did not reach every tier or the backplane at once, and
    /// were queued to be retried.
    pub deferred: u64,
    /// Queued calls that have since reached everything.
    pub retried: u64,
    /// Queued calls still waiting.
    pub pending: u64,
    /// Times the queue was full and became one "remove everything".
    pub overflows: u64,
}

impl TieredStats {
    /// Hits over reads across the whole cache, `0.0` before the first read.
    pub fn hit_ratio(&self) -> f64 {
        let reads = self.hits + self.misses;
        if reads == 0 {
            0.0
        } else {
            self.hits as f64 / reads as f64
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct TierCounters {
    pub(crate) hits: Counter,
    pub(crate) misses: Counter,
    pub(crate) fills: Counter,
    pub(crate) fills_discarded: Counter,
    pub(crate) undecodable: Counter,
    pub(crate) foreign: Counter,
    pub(crate) tag_stale: Counter,
    pub(crate) errors: Counter,
    pub(crate) refused: Counter,
    pub(crate) rejected: Counter,
}

#[derive(Debug, Default)]
pub(crate) struct CacheCounters {
    pub(crate) misses: Counter,
    pub(crate) loads: Counter,
    pub(crate) load_errors: Counter,
    pub(crate) coalesced: Counter,
    pub(crate) stale_served: Counter,
    pub(crate) eager_refreshes: Counter,
    pub(crate) published: Counter,
    pub(crate) publish_errors: Counter,
    pub(crate) received: Counter,
    pub(crate) gaps: Counter,
    pub(crate) local_errors: Counter,
}
