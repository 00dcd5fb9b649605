//! The invalidation queue: what did not reach every tier, or the other
//! instances, is retried in the background until it has.
//!
//! During a Redis outage a shared tier that fails open skips the removal,
//! and the backplane cannot publish. Without a retry, Redis would still
//! hold the old values when it comes back, and every instance would read
//! them again. So a call that did not reach everything is queued, and one
//! task retries the queue in order, pausing 100 ms doubling to 5 s between
//! failed attempts, removing from every tier (this instance's included: it
//! may have refilled its L1 from the shared tier meanwhile) and publishing
//! again (for the same reason elsewhere).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cache_core::{Backplane, BackplaneMessage, Counter, Invalidation, Pattern, Serializer};
use cache_tiered::{Removal, TieredCache};
use tokio::sync::Notify;

use crate::{Error, Result};

const FIRST_PAUSE: Duration = Duration::from_millis(100);
const MAX_PAUSE: Duration = Duration::from_secs(5);

/// The queue, shared by the invalidator and its retry task.
pub(crate) struct Retries {
    /// Calls still to complete, each with a sequence number, oldest first.
    queue: Mutex<VecDeque<(u64, Vec<Invalidation>)>>,
    next_sequence: AtomicU64,
    wake: Notify,
    limit: usize,
    pub(crate) retried: Counter,
    pub(crate) overflows: Counter,
}

impl Retries {
    pub(crate) fn new(limit: usize) -> Self {
        Retries {
            queue: Mutex::default(),
            next_sequence: AtomicU64::new(0),
            wake: Notify::new(),
            limit: limit.max(1),
            retried: Counter::default(),
            overflows: Counter::default(),
        }
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, VecDeque<(u64, Vec<Invalidation>)>> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues one call's invalidations. Past the limit, the whole queue
    /// becomes one "everything": coarser, never less.
    pub(crate) fn push(&self, invalidations: Vec<Invalidation>) {
        let sequence = self.next_sequence.fetch_add(1, Ordering::Relaxed);
        let mut queue = self.queue();
        if queue.len() >= self.limit {
            self.overflows.incr();
            tracing::warn!(
                limit = self.limit,
                "invalidation queue full; everything will be invalidated once the tiers are back"
            );
            queue.clear();
            queue.push_back((sequence, vec![Invalidation::All]));
        } else {
            queue.push_back((sequence, invalidations));
        }
        drop(queue);
        self.wake.notify_one();
    }

    /// Calls waiting to be retried.
    pub(crate) fn len(&self) -> usize {
        self.queue().len()
    }

    fn front(&self) -> Option<(u64, Vec<Invalidation>)> {
        self.queue().front().cloned()
    }

    /// Removes the call `sequence` if it is still first (an overflow may
    /// have replaced it meanwhile).
    fn done(&self, sequence: u64) {
        let mut queue = self.queue();
        if queue.front().is_some_and(|(first, _)| *first == sequence) {
            queue.pop_front();
        }
    }
}

/// Removes `invalidations` from every tier; a tier that fails is an error
/// even if its policy fails open.
pub(crate) async fn remove_everywhere<S: Serializer>(
    cache: &TieredCache<S>,
    invalidations: &[Invalidation],
) -> (u64, Option<Error>) {
    let mut removed = 0;
    let mut first_error = None;
    for invalidation in invalidations {
        let everything = Pattern::new("*");
        let removal = match invalidation {
            Invalidation::Key(key) => Removal::key(key),
            Invalidation::Pattern(pattern) => Removal::pattern(pattern),
            Invalidation::All => Removal::pattern(&everything),
        };
        match cache.remove(removal).await {
            Ok(report) if report.is_complete() => removed += report.removed,
            Ok(report) => {
                removed += report.removed;
                let skipped: Vec<&str> = report.skipped().collect();
                let error = cache_core::Error::unavailable(
                    skipped.join(", "),
                    "skipped the removal (its policy fails open)",
                );
                first_error.get_or_insert(Error::Cache(error.into()));
            }
            Err(error) => {
                first_error.get_or_insert(Error::Cache(error));
            }
        }
    }
    (removed, first_error)
}

/// Publishes `invalidations` as one message from `origin`.
pub(crate) async fn publish(
    backplane: &dyn Backplane,
    origin: u64,
    invalidations: Vec<Invalidation>,
) -> Result<()> {
    let message = BackplaneMessage {
        origin,
        invalidations,
    };
    backplane.publish(&message).await.map_err(Error::Backplane)
}

/// Retries the queue until the invalidator is dropped (which aborts it).
pub(crate) async fn run<S: Serializer>(
    cache: TieredCache<S>,
    backplane: Option<Arc<dyn Backplane>>,
    origin: u64,
    retries: Arc<Retries>,
) {
    let mut pause = FIRST_PAUSE;
    loop {
        let Some((sequence, invalidations)) = retries.front() else {
            retries.wake.notified().await;
            continue;
        };
        let (_, mut failure) = remove_everywhere(&cache, &invalidations).await;
        if failure.is_none()
            && let Some(backplane) = &backplane
        {
            failure = publish(&**backplane, origin, invalidations).await.err();
        }
        match failure {
            None => {
                retries.done(sequence);
                retries.retried.incr();
                pause = FIRST_PAUSE;
                tracing::info!("a queued invalidation reached every tier and instance");
            }
            Some(error) => {
                tracing::debug!(%error, retry_in = ?pause, "queued invalidation still failing");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(MAX_PAUSE);
            }
        }
    }
}
