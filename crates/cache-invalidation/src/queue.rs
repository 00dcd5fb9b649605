//! The priority queue of invalidations: applied in the background, the
//! most urgent first.
//!
//! Not to be confused with the cache's own
//! [invalidation queue](cache_tiered::TieredCacheBuilder::invalidation_queue),
//! which retries the part of a removal that a failing tier missed: this
//! one decides *when* an invalidation is applied at all, and the cache's
//! then sees it through.
//!
//! [`PriorityQueue::enqueue`] returns at once; a worker task applies
//! what is queued one invalidation at a time, every [`Priority::High`]
//! before any [`Priority::Normal`], every `Normal` before any
//! [`Priority::Low`], in the order queued within a priority. The queue is
//! bounded: when it is full, a new invalidation displaces the newest of a
//! lower priority, or is dropped (counted, and logged at WARN) when none
//! is lower. An invalidation already queued is not queued twice: asking
//! again merges into it, raising its priority if the new one is higher.
//!
//! [`PriorityQueue::flush`] waits until everything queued before the
//! call has been applied (or dropped): call it at shutdown, as what is
//! still queued when the process exits is lost.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use cache_core::Pattern;
use tokio::sync::Notify;

/// How urgent a queued invalidation is. The worker applies every `High`
/// before any `Normal` and every `Normal` before any `Low`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Priority {
    /// Whenever nothing more urgent is queued: the dependents of a key,
    /// by default (the original design's choice).
    Low,
    /// The default for an invalidation queued by hand.
    Normal,
    /// Before anything else: data a user is waiting to see change.
    High,
}

impl Priority {
    /// Lanes, most urgent first.
    const LANES: [Priority; 3] = [Priority::High, Priority::Normal, Priority::Low];

    fn lane(self) -> usize {
        match self {
            Priority::High => 0,
            Priority::Normal => 1,
            Priority::Low => 2,
        }
    }
}

/// What became of an invalidation handed to [`PriorityQueue::enqueue`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "an invalidation may be dropped when the queue is full"]
pub enum Enqueued {
    /// Queued; the worker will apply it.
    Queued,
    /// The same invalidation was already queued (at this priority or
    /// higher, now): it will be applied once.
    Merged,
    /// The queue was full of invalidations at least as urgent: this one
    /// was dropped, and the values it would have removed stay until they
    /// expire. Apply it inline (`Invalidator::invalidate_key`) if it
    /// must not be lost.
    Dropped,
}

/// A snapshot of a [`PriorityQueue`]'s counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueueStats {
    /// Invalidations waiting, of every priority.
    pub depth: usize,
    /// Of those, how many of each priority: high, normal, low.
    pub depth_by_priority: [usize; 3],
    /// How long the oldest waiting invalidation has waited; `None` when
    /// none waits.
    pub oldest: Option<Duration>,
    /// Invalidations queued (merged ones not counted twice).
    pub enqueued: u64,
    /// Invalidations asked for while the same was queued.
    pub merged: u64,
    /// Invalidations dropped because the queue was full (new ones refused
    /// and queued ones displaced by more urgent ones).
    pub dropped: u64,
    /// Invalidations the worker applied.
    pub applied: u64,
    /// Of those, how many failed (a tier failing closed; logged at WARN).
    pub failed: u64,
}

/// What a queued invalidation removes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Job {
    /// A key and, by the rules, its dependents.
    Key(String),
    /// The keys one pattern matches (a dependent already expanded).
    Pattern(Pattern),
    /// A key family's values (a dependent written as a family), by
    /// removing the family's version.
    Family(Pattern),
}

/// One waiting invalidation.
#[derive(Debug)]
pub(crate) struct Waiting {
    pub(crate) job: Job,
    /// Its place in the order of `enqueue` calls, for `flush`.
    seq: u64,
    since: Instant,
}

#[derive(Debug, Default)]
struct State {
    /// By priority, most urgent first; oldest first within one.
    lanes: [VecDeque<Waiting>; 3],
    /// The priority of each waiting job (to merge a job asked for again).
    waiting: HashMap<Job, Priority>,
    /// Jobs queued or being applied, by `seq`: `flush` waits for those
    /// below its mark to go.
    unsettled: BTreeSet<u64>,
    next_seq: u64,
    /// No more work will be taken (the invalidator is gone).
    closed: bool,
}

/// The queue itself, shared by its handles and the worker.
pub(crate) struct Queue {
    state: Mutex<State>,
    capacity: usize,
    /// The worker waits here for work.
    work: Notify,
    /// `flush` waits here for jobs to settle.
    settled: Notify,
    enqueued: AtomicU64,
    merged: AtomicU64,
    dropped: AtomicU64,
    applied: AtomicU64,
    failed: AtomicU64,
}

impl Queue {
    pub(crate) fn new(capacity: usize) -> Queue {
        Queue {
            state: Mutex::default(),
            capacity: capacity.max(1),
            work: Notify::new(),
            settled: Notify::new(),
            enqueued: AtomicU64::new(0),
            merged: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            applied: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // No code panics while holding the lock; recover rather than cascade.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn push(&self, job: Job, priority: Priority) -> Enqueued {
        let mut state = self.lock();
        if state.closed {
            drop(state);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return Enqueued::Dropped;
        }
        if let Some(&queued) = state.waiting.get(&job) {
            if priority > queued {
                // Moved up: taken out of its lane, keeping its place in
                // the order of calls (a flush waiting for it still does).
                let lane = &mut state.lanes[queued.lane()];
                if let Some(at) = lane.iter().position(|waiting| waiting.job == job) {
                    let waiting = lane.remove(at).expect("the position is in range");
                    state.lanes[priority.lane()].push_back(waiting);
                    state.waiting.insert(job, priority);
                }
            }
            drop(state);
            self.merged.fetch_add(1, Ordering::Relaxed);
            return Enqueued::Merged;
        }
        if state.waiting.len() >= self.capacity {
            // Full: the newest of the least urgent lane goes, if it is less
            // urgent than the newcomer; else the newcomer does.
            let lowest = Priority::LANES
                .iter()
                .rev()
                .copied()
                .find(|p| !state.lanes[p.lane()].is_empty());
            match lowest {
                Some(lowest) if lowest < priority => {
                    let displaced = state.lanes[lowest.lane()]
                        .pop_back()
                        .expect("the lane is not empty");
                    state.waiting.remove(&displaced.job);
                    state.unsettled.remove(&displaced.seq);
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        displaced = ?lowest,
                        by = ?priority,
                        capacity = self.capacity,
                        "the invalidation queue is full: a less urgent invalidation was dropped; \
                         its values stay until they expire"
                    );
                    // A flush may have been waiting for it.
                    self.settled.notify_waiters();
                }
                _ => {
                    drop(state);
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        priority = ?priority,
                        capacity = self.capacity,
                        "the invalidation queue is full: an invalidation was dropped; \
                         its values stay until they expire"
                    );
                    return Enqueued::Dropped;
                }
            }
        }
        let seq = state.next_seq;
        state.next_seq += 1;
        state.unsettled.insert(seq);
        state.waiting.insert(job.clone(), priority);
        state.lanes[priority.lane()].push_back(Waiting {
            job,
            seq,
            since: Instant::now(),
        });
        drop(state);
        self.enqueued.fetch_add(1, Ordering::Relaxed);
        self.work.notify_one();
        Enqueued::Queued
    }

    /// The most urgent waiting job, taken off the queue (it stays
    /// unsettled until [`settle`](Self::settle)); `None` once closed.
    pub(crate) async fn next(&self) -> Option<Waiting> {
        loop {
            let mut notified = std::pin::pin!(self.work.notified());
            // Registered before looking, so a push in between wakes us.
            notified.as_mut().enable();
            {
                let mut state = self.lock();
                for lane in 0..state.lanes.len() {
                    if let Some(waiting) = state.lanes[lane].pop_front() {
                        state.waiting.remove(&waiting.job);
                        return Some(waiting);
                    }
                }
                if state.closed {
                    return None;
                }
            }
            notified.await;
        }
    }

    /// `waiting` was applied (or failed, if not `ok`).
    pub(crate) fn settle(&self, waiting: &Waiting, ok: bool) {
        self.lock().unsettled.remove(&waiting.seq);
        self.applied.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
        self.settled.notify_waiters();
    }

    /// Takes no more work; what waits is dropped and every flush returns.
    pub(crate) fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        let left = state.waiting.len();
        let inner = &mut *state;
        for waiting in inner.lanes.iter_mut().flat_map(|lane| lane.drain(..)) {
            inner.unsettled.remove(&waiting.seq);
        }
        inner.waiting.clear();
        drop(state);
        if left > 0 {
            self.dropped.fetch_add(left as u64, Ordering::Relaxed);
            tracing::warn!(
                left,
                "the invalidator was dropped with invalidations still queued; they are lost \
                 (call flush() before shutting down)"
            );
        }
        self.work.notify_waiters();
        self.settled.notify_waiters();
    }

    pub(crate) async fn flush(&self) {
        let mark = self.lock().next_seq;
        loop {
            let mut notified = std::pin::pin!(self.settled.notified());
            notified.as_mut().enable();
            let done = self
                .lock()
                .unsettled
                .first()
                .is_none_or(|&oldest| oldest >= mark);
            if done {
                return;
            }
            notified.await;
        }
    }

    pub(crate) fn stats(&self) -> QueueStats {
        let state = self.lock();
        let now = Instant::now();
        let oldest = state
            .lanes
            .iter()
            .filter_map(|lane| lane.front())
            .map(|waiting| now.saturating_duration_since(waiting.since))
            .max();
        // `waiting.since` is the oldest in its lane except after a move up
        // (the moved job keeps its time): close enough for an age gauge.
        QueueStats {
            depth: state.waiting.len(),
            depth_by_priority: [
                state.lanes[0].len(),
                state.lanes[1].len(),
                state.lanes[2].len(),
            ],
            oldest,
            enqueued: self.enqueued.load(Ordering::Relaxed),
            merged: self.merged.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            applied: self.applied.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
        }
    }
}

impl fmt::Debug for Queue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queue")
            .field("capacity", &self.capacity)
            .field("stats", &self.stats())
            .finish()
    }
}

/// The priority queue of an [`Invalidator`](crate::Invalidator) (see
/// [`InvalidatorBuilder::queue`](crate::InvalidatorBuilder::queue)):
/// invalidations applied in the background by a worker task, the most
/// urgent first. Cheap to clone.
///
/// - [`enqueue`](Self::enqueue) returns at once; the worker applies every
///   [`Priority::High`] before any [`Priority::Normal`], every `Normal`
///   before any [`Priority::Low`], in the order queued within a priority,
///   one at a time.
/// - It is bounded: when full, a new invalidation displaces the newest of
///   a lower priority, or is [dropped](Enqueued::Dropped) (counted, and
///   logged at WARN) when none is lower. An invalidation already waiting
///   is not queued twice: asking again merges into it, raising its
///   priority if the new one is higher.
/// - [`flush`](Self::flush) waits until everything queued before it was
///   applied: call it at shutdown, as what still waits when the process
///   exits (or the last handle on the invalidator is dropped) is lost.
///
/// ```
/// use cache_invalidation::{Invalidator, Priority, Rules};
/// use cache_memory::MemoryLayer;
/// use cache_tiered::TieredCache;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let cache = TieredCache::builder().layer(MemoryLayer::new()).build()?;
/// let rules = Rules::builder()
///     .rule("reviews:offer:{id}", ["reviews:offer:{id}:*", "rating:offer:{id}"])
///     .build()?;
/// let invalidator = Invalidator::builder(cache.clone(), rules)
///     .queue(10_000)
///     .build()?;
/// let queue = invalidator.queue().expect("built with a queue");
///
/// cache.set("rating:offer:7", &4.5f32, std::time::Duration::from_secs(60)).await?;
/// let _ = queue.enqueue("reviews:offer:7", Priority::High); // returns at once
/// queue.flush().await; // at shutdown: wait for what was queued
/// assert_eq!(cache.get::<f32>("rating:offer:7").await?, None);
/// assert_eq!(queue.stats().applied, 1);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct PriorityQueue {
    pub(crate) queue: Arc<Queue>,
}

impl PriorityQueue {
    /// Queues the invalidation of `key` and, by the invalidator's rules,
    /// of its dependents; returns at once. See [`Enqueued`] for what can
    /// become of it.
    pub fn enqueue(&self, key: &str, priority: Priority) -> Enqueued {
        self.queue.push(Job::Key(key.to_owned()), priority)
    }

    /// Queues the removal of every key matching `pattern` (rules are not
    /// applied: they follow keys); returns at once.
    pub fn enqueue_pattern(&self, pattern: &Pattern, priority: Priority) -> Enqueued {
        self.queue.push(Job::Pattern(pattern.clone()), priority)
    }

    /// Waits until every invalidation queued before this call has been
    /// applied (or dropped). For graceful shutdown: what is still queued
    /// when the process exits is lost.
    pub async fn flush(&self) {
        self.queue.flush().await;
    }

    /// A snapshot of the queue's depth and counters.
    pub fn stats(&self) -> QueueStats {
        self.queue.stats()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(k: &str) -> Job {
        Job::Key(k.to_owned())
    }

    async fn drain(queue: &Queue) -> Vec<Job> {
        let mut order = Vec::new();
        while !queue.lock().waiting.is_empty() {
            let waiting = queue.next().await.unwrap();
            queue.settle(&waiting, true);
            order.push(waiting.job);
        }
        order
    }

    #[tokio::test]
    async fn high_before_normal_before_low_in_order_within_each() {
        let queue = Queue::new(100);
        for (k, p) in [
            ("l1", Priority::Low),
            ("n1", Priority::Normal),
            ("h1", Priority::High),
            ("l2", Priority::Low),
            ("h2", Priority::High),
        ] {
            assert_eq!(queue.push(key(k), p), Enqueued::Queued);
        }
        let stats = queue.stats();
        assert_eq!((stats.depth, stats.depth_by_priority), (5, [2, 1, 2]));
        let order = drain(&queue).await;
        assert_eq!(order, ["h1", "h2", "n1", "l1", "l2"].map(key));
        assert_eq!(queue.stats().applied, 5);
    }

    #[tokio::test]
    async fn asking_again_merges_and_may_raise_the_priority() {
        let queue = Queue::new(100);
        assert_eq!(queue.push(key("a"), Priority::Low), Enqueued::Queued);
        assert_eq!(queue.push(key("b"), Priority::Normal), Enqueued::Queued);
        assert_eq!(queue.push(key("a"), Priority::Low), Enqueued::Merged);
        assert_eq!(queue.push(key("a"), Priority::High), Enqueued::Merged);
        assert_eq!(queue.stats().depth_by_priority, [1, 1, 0]);
        assert_eq!(drain(&queue).await, ["a", "b"].map(key));
        let stats = queue.stats();
        assert_eq!((stats.enqueued, stats.merged), (2, 2));
    }

    #[tokio::test]
    async fn a_full_queue_drops_the_least_urgent() {
        let queue = Queue::new(2);
        assert_eq!(queue.push(key("l1"), Priority::Low), Enqueued::Queued);
        assert_eq!(queue.push(key("l2"), Priority::Low), Enqueued::Queued);
        // Not more urgent than what waits: refused.
        assert_eq!(queue.push(key("l3"), Priority::Low), Enqueued::Dropped);
        // More urgent: the newest low one makes room.
        assert_eq!(queue.push(key("h"), Priority::High), Enqueued::Queued);
        assert_eq!(queue.stats().dropped, 2);
        assert_eq!(drain(&queue).await, ["h", "l1"].map(key));
    }

    #[tokio::test(start_paused = true)]
    async fn flush_waits_for_what_was_queued_before_it_only() {
        let queue = Arc::new(Queue::new(100));
        assert_eq!(queue.push(key("a"), Priority::Low), Enqueued::Queued);
        let flushed = tokio::spawn({
            let queue = queue.clone();
            async move { queue.flush().await }
        });
        tokio::task::yield_now().await;
        // Queued after the flush began: not waited for.
        assert_eq!(queue.push(key("b"), Priority::High), Enqueued::Queued);
        let b = queue.next().await.unwrap();
        assert_eq!(b.job, key("b"));
        let a = queue.next().await.unwrap();
        assert!(!flushed.is_finished(), "a is being applied");
        queue.settle(&a, true);
        tokio::time::timeout(Duration::from_secs(1), flushed)
            .await
            .expect("flush returns once a settles")
            .unwrap();
        // b was never settled, and that was no reason to wait.
        queue.settle(&b, false);
        assert_eq!(queue.stats().failed, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn closing_drops_what_waits_and_ends_the_worker_and_flushes() {
        let queue = Arc::new(Queue::new(100));
        assert_eq!(queue.push(key("a"), Priority::Low), Enqueued::Queued);
        queue.close();
        assert!(queue.next().await.is_none());
        queue.flush().await;
        assert_eq!(queue.push(key("b"), Priority::High), Enqueued::Dropped);
        assert_eq!(queue.stats().dropped, 2);
    }
}
