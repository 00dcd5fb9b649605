//! The invalidation queue: what did not reach every tier, or the other
//! instances, is retried in the background until it has.
//!
//! During a Redis outage a shared tier that fails open skips a removal, and
//! the backplane cannot publish. Without a retry, Redis would still hold the
//! old values when it comes back, and every instance would read them again;
//! and an instance that missed a message would keep its L1 copy until the
//! copy expires. So a call that did not reach everything is queued, and one
//! task retries the queue in order, pausing 100 ms doubling to 5 s between
//! failed attempts. A queued removal is done again in every tier (this
//! instance's L1 included: it may have refilled from the shared tier
//! meanwhile) and published again (the others may have refilled too); a
//! queued message is published again.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use cache_core::{Counter, Invalidation, Serializer};
use tokio::sync::Notify;

use crate::TieredCache;
use crate::cache::Shared;
use crate::remove::Targets;

const FIRST_PAUSE: Duration = Duration::from_millis(100);
const MAX_PAUSE: Duration = Duration::from_secs(5);

/// What is left to do of one call.
#[derive(Debug, Clone)]
pub(crate) enum Retry {
    /// A tier skipped the removal: remove from every tier, then publish.
    Remove(Vec<Invalidation>),
    /// Only the message did not go out (a write's, or a removal's that
    /// every tier did): publish it.
    Publish(Vec<Invalidation>),
}

/// The queue, shared by the cache and its retry task.
#[derive(Debug)]
pub(crate) struct Queue {
    /// Calls still to complete, each with a sequence number, oldest first.
    items: Mutex<VecDeque<(u64, Retry)>>,
    next_sequence: AtomicU64,
    wake: Notify,
    limit: usize,
    pub(crate) deferred: Counter,
    pub(crate) retried: Counter,
    pub(crate) overflows: Counter,
}

impl Queue {
    pub(crate) fn new(limit: usize) -> Self {
        Queue {
            items: Mutex::default(),
            next_sequence: AtomicU64::new(0),
            wake: Notify::new(),
            limit,
            deferred: Counter::default(),
            retried: Counter::default(),
            overflows: Counter::default(),
        }
    }

    fn items(&self) -> MutexGuard<'_, VecDeque<(u64, Retry)>> {
        // Nothing panics while holding the lock; a poisoned queue is intact.
        self.items.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues what is left of one call. Past the limit, the whole queue
    /// becomes one "remove everything, everywhere": coarser, never less.
    pub(crate) fn push(&self, retry: Retry) {
        self.deferred.incr();
        let sequence = self.next_sequence.fetch_add(1, Ordering::Relaxed);
        let mut items = self.items();
        if items.len() >= self.limit {
            self.overflows.incr();
            tracing::warn!(
                limit = self.limit,
                "invalidation queue full; everything will be removed once the tiers are back"
            );
            items.clear();
            items.push_back((sequence, Retry::Remove(vec![Invalidation::All])));
        } else {
            items.push_back((sequence, retry));
        }
        drop(items);
        self.wake.notify_one();
    }

    /// Calls waiting to be retried.
    pub(crate) fn len(&self) -> usize {
        self.items().len()
    }

    fn front(&self) -> Option<(u64, Retry)> {
        self.items().front().cloned()
    }

    /// Removes the call `sequence` if it is still first (an overflow may
    /// have replaced it meanwhile).
    fn done(&self, sequence: u64) {
        let mut items = self.items();
        if items.front().is_some_and(|(first, _)| *first == sequence) {
            items.pop_front();
        }
    }
}

/// Retries the queue until the cache is dropped (which also aborts it).
/// Holds the cache only while it retries, so that dropping the last clone
/// of the cache drops it.
pub(crate) async fn run<S: Serializer>(cache: Weak<Shared<S>>, queue: Arc<Queue>) {
    let mut pause = FIRST_PAUSE;
    loop {
        let Some((sequence, retry)) = queue.front() else {
            // `notify_one` keeps a permit when nobody waits: a push between
            // `front` and here is not missed.
            queue.wake.notified().await;
            continue;
        };
        let Some(shared) = cache.upgrade() else {
            return;
        };
        let done = TieredCache { shared }.retry(retry).await;
        if done {
            queue.done(sequence);
            queue.retried.incr();
            pause = FIRST_PAUSE;
            tracing::info!("a queued invalidation reached every tier and instance");
        } else {
            tracing::debug!(retry_in = ?pause, "queued invalidation still failing");
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MAX_PAUSE);
        }
    }
}

impl<S: Serializer> TieredCache<S> {
    /// One attempt at a queued call; whether it reached everything.
    async fn retry(&self, retry: Retry) -> bool {
        let invalidations = match retry {
            Retry::Remove(invalidations) => {
                let targets = Targets::from_invalidations(&invalidations);
                let (report, error) = self.remove_from_tiers(&targets, false).await;
                // Strict: a tier that failed open removed nothing.
                if error.is_some() || !report.is_complete() {
                    return false;
                }
                invalidations
            }
            Retry::Publish(invalidations) => invalidations,
        };
        self.publish(invalidations).await.is_ok()
    }
}
