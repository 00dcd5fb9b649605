use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cache_core::{
    Admission, CacheLayer, CallOutcome, Entry, Error, FailOpen, FailureAction, FailurePolicy,
};

use crate::stats::{TierCounters, TierStats};

/// The outcome of reading one tier: `Ok(Some(found))` if it answered,
/// `Ok(None)` if it failed and fails open, `Err` if it fails closed.
pub(crate) type TierRead = Result<Option<Option<Entry>>, Error>;

/// One tier of a [`TieredCache`](crate::TieredCache): a layer with its
/// failure policy, an optional TTL cap and an optional call timeout.
///
/// ```
/// use std::time::Duration;
/// use cache_core::FailClosed;
/// use cache_memory::MemoryLayer;
/// use cache_tiered::Tier;
///
/// let l1 = Tier::new(MemoryLayer::new())
///     .ttl_cap(Duration::from_secs(30))
///     .policy(FailClosed);
/// ```
#[must_use]
pub struct Tier {
    pub(crate) layer: Arc<dyn CacheLayer>,
    pub(crate) policy: Arc<dyn FailurePolicy>,
    /// Whether the policy observes calls (see `FailurePolicy::observes_calls`).
    pub(crate) observed: bool,
    pub(crate) ttl_cap: Option<Duration>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) counters: TierCounters,
}

impl Tier {
    /// A tier over `layer`, failing open, with no TTL cap and no timeout.
    pub fn new(layer: impl CacheLayer + 'static) -> Self {
        Self::shared(Arc::new(layer))
    }

    /// A tier over a layer that is already shared.
    pub fn shared(layer: Arc<dyn CacheLayer>) -> Self {
        Tier {
            layer,
            policy: Arc::new(FailOpen),
            observed: false,
            ttl_cap: None,
            timeout: None,
            counters: TierCounters::default(),
        }
    }

    /// What to do when this tier fails. Default: [`FailOpen`] (a failing
    /// tier is a miss, writes to it are skipped).
    pub fn policy(self, policy: impl FailurePolicy + 'static) -> Self {
        self.shared_policy(Arc::new(policy))
    }

    /// The same, for a policy shared with other code (a circuit breaker
    /// whose state you also want to read).
    pub fn shared_policy(mut self, policy: Arc<dyn FailurePolicy>) -> Self {
        self.observed = policy.observes_calls();
        self.policy = policy;
        self
    }

    /// The longest any value lives in this tier, whatever TTL it was written
    /// with. Useful to keep an L1 fresh while L2 holds values longer.
    /// Default: none.
    pub fn ttl_cap(mut self, cap: Duration) -> Self {
        self.ttl_cap = Some(cap);
        self
    }

    /// The longest a call to this tier may take before it counts as failed
    /// with [`Error::Timeout`]. Layers usually have their own timeout; this
    /// one also covers custom layers that lack one. It uses tokio's timer,
    /// so the runtime needs its time driver (`enable_time`, on by default
    /// with `#[tokio::main]`). Default: none.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    pub(crate) fn name(&self) -> &str {
        self.layer.name()
    }

    /// A read of `key`, with the same outcomes as [`call`](Tier::call).
    pub(crate) async fn read(&self, key: &str) -> TierRead {
        match self.read_now(key) {
            Some(answer) => answer,
            None => self.call(self.layer.get(key)).await,
        }
    }

    /// The read of `key`, if the layer answers at once (`get_now`, an
    /// in-process layer) and the tier has no policy or timeout to apply.
    /// Spares the hottest path the boxed future of an async call.
    pub(crate) fn read_now(&self, key: &str) -> Option<TierRead> {
        if self.observed || self.timeout.is_some() {
            return None;
        }
        Some(match self.layer.get_now(key)? {
            Ok(found) => Ok(Some(found)),
            Err(error) => self.failed(error),
        })
    }

    /// Runs one call to the layer under the tier's policy and timeout.
    ///
    /// `Ok(Some(_))`: the layer answered. `Ok(None)`: the call failed or was
    /// rejected and the policy fails open. `Err(_)`: the policy fails closed.
    pub(crate) async fn call<T, F>(&self, call: F) -> Result<Option<T>, Error>
    where
        F: Future<Output = Result<T, Error>>,
    {
        if !self.observed {
            // FailOpen / FailClosed: no admission, no timing, on the hot path.
            return match self.run(call).await {
                Ok(value) => Ok(Some(value)),
                Err(error) => self.failed(error),
            };
        }
        if self.policy.admit() == Admission::Reject {
            self.counters.rejected.incr();
            let error =
                Error::unavailable(self.name().to_owned(), "rejected by its failure policy");
            return match self.policy.on_failure(&error) {
                FailureAction::Ignore => Ok(None),
                FailureAction::Propagate => Err(error),
            };
        }
        let mut report = Report {
            policy: &*self.policy,
            started: Instant::now(),
            done: false,
        };
        let result = self.run(call).await;
        let elapsed = report.started.elapsed();
        report.done = true;
        match result {
            Ok(value) => {
                self.policy.record(CallOutcome::Success { elapsed });
                Ok(Some(value))
            }
            Err(error) => {
                self.policy.record(CallOutcome::Failure {
                    elapsed,
                    error: &error,
                });
                self.failed(error)
            }
        }
    }

    async fn run<T, F>(&self, call: F) -> Result<T, Error>
    where
        F: Future<Output = Result<T, Error>>,
    {
        match self.timeout {
            None => call.await,
            Some(limit) => match tokio::time::timeout(limit, call).await {
                Ok(result) => result,
                Err(_elapsed) => Err(Error::timeout(self.name().to_owned(), limit)),
            },
        }
    }

    fn failed<T>(&self, error: Error) -> Result<Option<T>, Error> {
        self.counters.errors.incr();
        match self.policy.on_failure(&error) {
            FailureAction::Ignore => {
                tracing::debug!(tier = self.name(), %error, "tier call failed; treated as a miss");
                Ok(None)
            }
            FailureAction::Propagate => Err(error),
        }
    }

    /// `entry` as this tier stores it: its expiry capped by the tier's cap.
    pub(crate) fn cap(&self, entry: Entry, now: Instant) -> Entry {
        match self.ttl_cap {
            Some(cap) => entry.capped(now, cap),
            None => entry,
        }
    }

    /// A failure of one key inside a batch call that otherwise succeeded:
    /// `None` if the policy ignores it, the error if it propagates.
    pub(crate) fn on_key_failure(&self, error: Error) -> Option<Error> {
        self.failed::<()>(error).err()
    }

    pub(crate) fn stats(&self) -> TierStats {
        let c = &self.counters;
        let mut stats = TierStats::default();
        stats.name = self.name().to_owned();
        stats.hits = c.hits.get();
        stats.misses = c.misses.get();
        stats.fills = c.fills.get();
        stats.fills_discarded = c.fills_discarded.get();
        stats.undecodable = c.undecodable.get();
        stats.tag_stale = c.tag_stale.get();
        stats.errors = c.errors.get();
        stats.rejected = c.rejected.get();
        stats.layer = self.layer.stats();
        stats
    }
}

/// Tells the policy about a call whose caller went away mid-call, so a
/// half-open breaker gets its trial slot back.
struct Report<'a> {
    policy: &'a dyn FailurePolicy,
    started: Instant,
    done: bool,
}

impl Drop for Report<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.policy.record(CallOutcome::Abandoned);
        }
    }
}

impl fmt::Debug for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tier")
            .field("layer", &self.layer)
            .field("policy", &self.policy)
            .field("ttl_cap", &self.ttl_cap)
            .field("timeout", &self.timeout)
            .finish()
    }
}
