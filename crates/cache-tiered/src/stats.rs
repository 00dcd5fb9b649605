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
}
