//! Fleet-wide single-flight: instances that miss the same key at once run
//! one loader between them.
//!
//! Inside a process, `flight.rs` already lets one caller per key load. With
//! a [`FleetLock`], that caller (the local leader) first takes a
//! [`LoadLock`] on the key, shared by every instance:
//!
//! - taken: it loads as usual, writing through every tier, and releases the
//!   lock when it is done, whatever the outcome (a failed loader, a panic, a
//!   cancelled caller: the release runs in the background, and the lease
//!   ends a lock nobody released);
//! - held by another instance: it reads the shared tiers every
//!   [`poll`](FleetLock::poll) until the holder's value is there (and fills
//!   the tiers above, as any read), takes the lock itself if it became free
//!   (the holder died or failed), and loads without it after
//!   [`max_wait`](FleetLock::max_wait);
//! - a lock that fails (Redis down) never fails the call: the caller loads
//!   alone, and [`FleetStats::lock_errors`](crate::FleetStats::lock_errors) counts it.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use cache_core::{Counter, LoadLock, LockToken, Serializer};
use serde::de::DeserializeOwned;

use crate::TieredCache;
use crate::cache::TierSet;
use crate::envelope::Envelope;
use crate::read::Walk;

/// Fleet-wide single-flight for a cache's `get_or_compute`: a [`LoadLock`]
/// shared by every instance, and how long to hold and wait for it. Attach
/// it with [`TieredCacheBuilder::fleet_lock`](crate::TieredCacheBuilder::fleet_lock).
///
/// The cache needs a shared tier (a layer whose
/// [`is_shared`](cache_core::CacheLayer::is_shared) is true, such as a
/// `RedisLayer`): that is where a waiting instance finds the value another
/// instance loaded. Waiting uses tokio's timer.
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use cache_memory::MemoryLayer;
/// use cache_tiered::{FleetLock, MemoryLoadLock, Tier, TieredCache};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let redis = Arc::new(MemoryLayer::new());
/// # let shared_l2 = || Tier::shared(Arc::new(cache_test_support::layers::SharedLayer(redis.clone())));
/// // Across processes: RedisLoadLock::new(&redis_layer), with the RedisLayer as L2.
/// let lock = MemoryLoadLock::new();
/// let cache = TieredCache::builder()
///     .layer(MemoryLayer::new())
///     .tier(shared_l2())
///     .fleet_lock(
///         FleetLock::new(lock)
///             .lease(Duration::from_secs(30)) // longer than the slowest load
///             .max_wait(Duration::from_secs(5))
///             .poll(Duration::from_millis(50)),
///     )
///     .build()?;
/// let offer: String = cache
///     .get_or_compute("offer:7", Duration::from_secs(300), || async {
///         Ok::<_, std::io::Error>("Lamp".to_string())
///     })
///     .await?;
/// assert_eq!(cache.stats().fleet.acquired, 1);
/// # Ok(())
/// # }
/// ```
#[must_use]
#[derive(Clone)]
pub struct FleetLock {
    pub(crate) lock: Arc<dyn LoadLock>,
    pub(crate) lease: Duration,
    pub(crate) max_wait: Duration,
    pub(crate) poll: Duration,
}

impl FleetLock {
    /// Fleet-wide single-flight through `lock`, with a lease of 10 s, a
    /// wait of at most 5 s and a poll every 50 ms.
    pub fn new(lock: impl LoadLock + 'static) -> Self {
        Self::shared(Arc::new(lock))
    }

    /// [`new`](Self::new), for a lock that is already in an `Arc`.
    pub fn shared(lock: Arc<dyn LoadLock>) -> Self {
        FleetLock {
            lock,
            lease: Duration::from_secs(10),
            max_wait: Duration::from_secs(5),
            poll: Duration::from_millis(50),
        }
    }

    /// The longest an instance holds the lock on a key: after it, the lock
    /// ends by itself, so an instance that died while loading holds up the
    /// others for this long at most. Keep it above the slowest load (and
    /// the [`hard_timeout`](crate::TieredCacheBuilder::hard_timeout)):
    /// once it runs out, another instance may take the lock and load too.
    /// Default: 10 s.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// The longest an instance waits for another instance's value before it
    /// runs its own loader without the lock: what a caller pays, beyond its
    /// own load, when the holder is slow or stuck. It also bounds each
    /// attempt to take the lock (a poll's worth at least), so a hung lock
    /// service costs no more. Default: 5 s.
    pub fn max_wait(mut self, max_wait: Duration) -> Self {
        self.max_wait = max_wait;
        self
    }

    /// How often a waiting instance looks for the value in the shared tiers
    /// (and tries the lock again): one read and one lock call per poll, by
    /// one caller per key per instance. Default: 50 ms.
    pub fn poll(mut self, poll: Duration) -> Self {
        self.poll = poll;
        self
    }

    pub(crate) fn validate(&self) -> Result<(), cache_core::Error> {
        if self.lease < Duration::from_millis(1) {
            return Err(cache_core::Error::config(
                "the fleet lock's lease must be at least 1 ms",
            ));
        }
        if self.poll.is_zero() {
            return Err(cache_core::Error::config(
                "the fleet lock's poll interval must be above zero",
            ));
        }
        Ok(())
    }
}

impl fmt::Debug for FleetLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FleetLock")
            .field("lock", &self.lock)
            .field("lease", &self.lease)
            .field("max_wait", &self.max_wait)
            .field("poll", &self.poll)
            .finish()
    }
}

/// What the local leader does next.
pub(crate) enum FleetTurn<T> {
    /// Another instance loaded the value: found in a shared tier (and
    /// filled into the tiers above).
    Found(T),
    /// Load here, holding the fleet lock if there is a hold; dropping it
    /// releases the lock.
    Load(Option<FleetHold>),
}

/// The fleet counters (see [`FleetStats`](crate::FleetStats)); shared with
/// the background releases.
#[derive(Debug, Default)]
pub(crate) struct FleetCounters {
    pub(crate) acquired: Counter,
    pub(crate) waited_found: Counter,
    pub(crate) waited_then_loaded: Counter,
    pub(crate) lock_errors: Counter,
}

/// The lock on a key, held while this instance loads it. Dropping it
/// releases the lock in the background (on the current tokio runtime; with
/// none, the lease ends it).
pub(crate) struct FleetHold {
    lock: Arc<dyn LoadLock>,
    key: String,
    token: LockToken,
    lease: Duration,
    counters: Arc<FleetCounters>,
}

impl Drop for FleetHold {
    fn drop(&mut self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (lock, key, token) = (
            self.lock.clone(),
            std::mem::take(&mut self.key),
            self.token.clone(),
        );
        let (lease, counters) = (self.lease, self.counters.clone());
        // In the background: the caller has its value (or its error) and
        // need not wait a round trip for the release; waiting instances
        // find the value in the shared tier without it.
        runtime.spawn(async move {
            let error = match tokio::time::timeout(lease, lock.unlock(&key, &token)).await {
                Ok(Ok(_)) => return,
                Ok(Err(error)) => error.to_string(),
                Err(_) => format!("no answer within the lease ({lease:?})"),
            };
            counters.lock_errors.incr();
            tracing::debug!(
                key,
                error,
                "could not release the fleet lock; its lease will end it"
            );
        });
    }
}

/// What a look at the shared tiers found.
enum Look<T> {
    Found(T),
    Missing,
    /// A shared tier failed: the holder's value cannot show up there.
    Failed,
}

impl<S: Serializer> TieredCache<S> {
    /// Decides, with the other instances, whether this one runs the loader
    /// of `key`: the local leader calls it after its recheck missed. Tiers
    /// that fail meanwhile are added to `failed`.
    pub(crate) async fn fleet_turn<T>(
        &self,
        key: &str,
        envelope: Envelope,
        failed: &mut TierSet,
    ) -> FleetTurn<T>
    where
        T: DeserializeOwned + Clone + Send + Sync + 'static,
    {
        let shared = &*self.shared;
        let Some(fleet) = &shared.fleet else {
            return FleetTurn::Load(None);
        };
        // The build checked that there is one.
        let Some(first_shared) = shared.tiers.iter().position(|tier| tier.layer.is_shared()) else {
            return FleetTurn::Load(None);
        };
        // A shared tier that failed in this call will not show another
        // instance's value either: do not wait for it.
        if *failed >> first_shared != 0 {
            return FleetTurn::Load(None);
        }
        let counters = &shared.fleet_counters;
        let deadline = tokio::time::Instant::now() + fleet.max_wait;
        loop {
            // A hung lock must not hold the caller past its wait (a poll at
            // least, so that the last try gets its chance).
            let bound = deadline
                .saturating_duration_since(tokio::time::Instant::now())
                .max(fleet.poll);
            let taken = tokio::time::timeout(bound, fleet.lock.try_lock(key, fleet.lease));
            match taken.await {
                Ok(Ok(Some(token))) => {
                    let hold = FleetHold {
                        lock: fleet.lock.clone(),
                        key: key.to_owned(),
                        token,
                        lease: fleet.lease,
                        counters: counters.clone(),
                    };
                    // The last holder may have written its value and let go
                    // between our miss and our lock: look once more rather
                    // than load it again.
                    return match self.fleet_look(key, envelope, first_shared, failed).await {
                        Look::Found(value) => {
                            counters.waited_found.incr();
                            FleetTurn::Found(value)
                        }
                        Look::Missing | Look::Failed => {
                            counters.acquired.incr();
                            FleetTurn::Load(Some(hold))
                        }
                    };
                }
                Ok(Ok(None)) => {}
                Ok(Err(error)) => {
                    counters.lock_errors.incr();
                    tracing::debug!(key, %error, "fleet lock failed; loading without it");
                    return FleetTurn::Load(None);
                }
                Err(_elapsed) => {
                    counters.lock_errors.incr();
                    tracing::debug!(key, after = ?bound, "fleet lock did not answer; loading without it");
                    return FleetTurn::Load(None);
                }
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                counters.waited_then_loaded.incr();
                return FleetTurn::Load(None);
            }
            tokio::time::sleep(fleet.poll.min(deadline - now)).await;
            match self.fleet_look(key, envelope, first_shared, failed).await {
                Look::Found(value) => {
                    counters.waited_found.incr();
                    return FleetTurn::Found(value);
                }
                Look::Failed => {
                    counters.waited_then_loaded.incr();
                    return FleetTurn::Load(None);
                }
                // Perhaps the holder died, or failed: try the lock again.
                Look::Missing => {}
            }
        }
    }

    /// Reads `key` from the tiers from `first_shared` down, filling the
    /// tiers above a hit as a read does.
    async fn fleet_look<T>(
        &self,
        key: &str,
        envelope: Envelope,
        first_shared: usize,
        failed: &mut TierSet,
    ) -> Look<T>
    where
        T: DeserializeOwned + Clone + Send + Sync + 'static,
    {
        let found = self
            .walk_one::<T>(key, envelope, Walk::Shared(first_shared), None, 0)
            .await;
        *failed |= found.failed_open;
        match found.value {
            Ok(Some(value)) => Look::Found(value),
            _ if found.failed_open != 0 => Look::Failed,
            Err(_) => Look::Failed,
            Ok(None) => Look::Missing,
        }
    }
}
