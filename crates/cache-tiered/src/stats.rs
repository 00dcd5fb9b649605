use cache_core::{CircuitStatus, Counter, ErrorCounts, LastError, Latency, LayerStats};

/// Counters of one tier, as the composer saw it.
///
/// `hits` and `misses` count *user reads*: one per key read by `get`,
/// `get_many`, or the lookup that starts a `get_or_compute` (any variant, or
/// through `entry`) or a `get_or_compute_many` (one per distinct key). A
/// user read walks the tiers top-down until one answers: it counts one hit
/// in the tier that answered and one miss in each tier above it; a read no tier answers counts a miss in every tier. A tier
/// whose call failed counts in `errors` (or `rejected`) instead, neither hit
/// nor miss.
///
/// The composer's own reads are not user reads and count no hit or miss:
/// the versions of a tagged value's tags, the top tier looked at again by a
/// `get_or_compute` leader (or an eager refresh) before it loads, a
/// [fleet lock](crate::TieredCacheBuilder::fleet_lock) waiter's polls of the
/// shared tiers, and a [warm-up](crate::CacheWarmer)'s look at what is
/// already cached (its writes count as fills; its loads are counted in its
/// [`WarmSummary`](crate::WarmSummary), not in `loads`). The layer's own counters (`layer`) see every call.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct TierStats {
    /// The layer's name.
    pub name: String,
    /// User reads this tier answered with a live value.
    pub hits: u64,
    /// User reads that reached this tier and found no live value here:
    /// nothing, an expired or evicted value, a stale one (past its TTL,
    /// kept for fail-safe), or one counted in `undecodable`, `foreign` or
    /// `tag_stale`.
    pub misses: u64,
    /// Values the composer wrote here on a read or a load, not a `set`, and
    /// kept (not undone by a racing mutation): a value found in a tier
    /// below copied up (by any read, the composer's own included), a
    /// loader's value (written through every tier: one fill in each), a
    /// newly created tag version, a fail-safe value given its throttle.
    pub fills: u64,
    /// Fills skipped, undone or refused by a shared tier because the key
    /// changed meanwhile (here, or in another instance).
    pub fills_discarded: u64,
    /// Values found here whose bytes did not parse (garbage, a truncated
    /// value), by any read; removed, so each counted once. In a user read,
    /// also a miss.
    pub undecodable: u64,
    /// Values found here that were written for another type, schema version
    /// or serializer (another version of the service, during a rolling
    /// deploy), by any read; left in place, so counted by every read that
    /// finds one. In a user read, also a miss.
    pub foreign: u64,
    /// Tagged values found here after one of their tags was invalidated
    /// (or its version lost), by any read; removed, so each counted once.
    /// In a user read, also a miss.
    pub tag_stale: u64,
    /// Calls to this tier that failed or timed out (a batch call failing
    /// as a whole counts once), and keys a batch call answered with an
    /// error. Refusals are in `refused`, rejections in `rejected`.
    pub errors: u64,
    /// Values this tier refused (over its size limit), one per value,
    /// whether written by a `set`, a load or a fill. Returned to the caller
    /// as an error, unless a lower tier took the value. Not in `errors`.
    pub refused: u64,
    /// Calls the failure policy did not let through (an open breaker). Not
    /// in `errors`.
    pub rejected: u64,
    /// The calls in `errors`, by class: timeouts, an unreachable server, a
    /// full one (`out_of_memory`), refused credentials (`auth`)...
    pub error_classes: ErrorCounts,
    /// The last call counted in `errors`: its class, its message (the
    /// backend's words, never a password), the operation and when.
    pub last_error: Option<LastError>,
    /// How long the composer's calls to this tier took, per operation
    /// (all zero with stats off). Reads an in-process tier answers at once
    /// (an L1 hit or miss, through `CacheLayer::get_now`) are not timed:
    /// two clock reads would cost more than the read itself.
    pub latency: TierLatency,
    /// The tier's failure policy's circuits (a breaker's state, openings
    /// and last error); empty for a policy without state.
    pub circuits: Vec<CircuitStatus>,
    /// The layer's own counters: every call the composer made to it,
    /// its own reads included (so the layer's hits and misses may exceed
    /// the tier's).
    pub layer: LayerStats,
}

/// How long one tier's calls took, per operation. A batch call counts once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TierLatency {
    /// Reads (`get`, `get_many`).
    pub get: Latency,
    /// Writes (`set`, `set_many`; fills included).
    pub set: Latency,
    /// Removals (`delete`, `delete_many`, `invalidate`).
    pub remove: Latency,
}

/// Counters of a whole [`TieredCache`](crate::TieredCache).
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct TieredStats {
    /// Per tier, top first.
    pub tiers: Vec<TierStats>,
    /// User reads (keys, as in [`TierStats`]) answered by some tier: the
    /// sum of the tiers' `hits`.
    pub hits: u64,
    /// User reads no tier answered, one per key however many tiers were
    /// asked. `hits + misses` is the number of keys read by user calls,
    /// less those whose read returned an error (a tier failing closed).
    pub misses: u64,
    /// Loads started by `get_or_compute` (any variant) and eager
    /// refreshes: each calls its loader once (unless reading its tags'
    /// versions fails first). A caller answered without a load of its own
    /// is in `coalesced` or [`FleetStats::waited_found`] instead: so after
    /// `get_or_compute` calls alone, none cancelled, without eager refresh
    /// or soft timeout, `misses == loads + coalesced + fleet.waited_found`.
    /// A `get_or_compute_many` counts one load per key its loader was asked
    /// for (and each such key in `load_errors` if it failed), so this holds
    /// with batches too.
    pub loads: u64,
    /// Loads whose loader returned an error or ran past the hard timeout
    /// (a panicking loader is not counted).
    pub load_errors: u64,
    /// `get_or_compute` callers (and `get_or_compute_many` keys) that
    /// missed and were answered without a load of their own: by another
    /// caller's load they waited for (its value or its error), or by a
    /// value that such a load wrote to the top tier before they took the
    /// lead.
    pub coalesced: u64,
    /// `get_or_compute` callers (any variant, and `get_or_compute_many`
    /// keys) served a stale value
    /// (fail-safe): their load (or the one they waited for) failed or timed
    /// out, their soft timeout passed, or their read found a value a recent
    /// failure's throttle keeps (that read is a hit too).
    pub stale_served: u64,
    /// Eager refreshes started (background loads of a value read in the
    /// last part of its TTL; also in `loads`).
    pub eager_refreshes: u64,
    /// How long loaders took (on the tokio clock, so paused time in tests
    /// shows), failed and timed-out loads included.
    pub load_latency: Latency,
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
    /// Whether the backplane's subscription is connected now (`None`: no
    /// backplane, or it cannot tell). While it is not, other instances'
    /// invalidations do not reach this one; a gap follows once it is.
    pub subscribed: Option<bool>,
    /// Times the subscription connected again after losing its connection.
    pub reconnects: u64,
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

#[derive(Debug)]
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

impl TierCounters {
    /// Counters that count, or (`on == false`) read zero and cost a branch.
    pub(crate) fn new(on: bool) -> Self {
        TierCounters {
            hits: Counter::on_if(on),
            misses: Counter::on_if(on),
            fills: Counter::on_if(on),
            fills_discarded: Counter::on_if(on),
            undecodable: Counter::on_if(on),
            foreign: Counter::on_if(on),
            tag_stale: Counter::on_if(on),
            // Failure paths, counted whatever the setting.
            errors: Counter::new(),
            refused: Counter::new(),
            rejected: Counter::new(),
        }
    }
}

#[derive(Debug)]
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

impl CacheCounters {
    /// Counters that count, or (`on == false`) read zero: the read and load
    /// counters; the backplane's, on its slow paths, always count.
    pub(crate) fn new(on: bool) -> Self {
        CacheCounters {
            misses: Counter::on_if(on),
            loads: Counter::on_if(on),
            load_errors: Counter::new(),
            coalesced: Counter::on_if(on),
            stale_served: Counter::on_if(on),
            eager_refreshes: Counter::on_if(on),
            published: Counter::new(),
            publish_errors: Counter::new(),
            received: Counter::new(),
            gaps: Counter::new(),
            local_errors: Counter::new(),
        }
    }
}
