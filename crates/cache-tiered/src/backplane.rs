//! The backplane of a cache: telling the other instances what this one
//! changed, and applying what they changed.
//!
//! Every write of new data and every removal that is not
//! [`local`](crate::Removal::local) publishes one message naming its keys or
//! patterns, after the tiers were written; fills (loader results, copies
//! from lower tiers) are not news, and are not published. A listener task
//! receives the other instances' messages and removes what they name from
//! this instance's local tiers (the sender has dealt with the shared ones),
//! under the fill guard, so that a fill racing with it is refused. When
//! messages may have been lost, it clears the local tiers entirely: a cold
//! L1 costs reads of L2, a stale one returns wrong values.

use std::hash::{BuildHasher, RandomState};
use std::sync::Weak;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime};

use cache_core::{BackplaneEvent, BackplaneMessage, Invalidation, Serializer, Subscription};
use tracing::Instrument;

use crate::TieredCache;
use crate::cache::Shared;
use crate::queue::Retry;
use crate::remove::{Broadcast, Targets};

/// Applies what other instances publish to this instance's local tiers,
/// until the backplane closes or the cache is dropped (which also aborts
/// it). Holds the cache only while it applies a message, so that dropping
/// the last clone of the cache drops it.
pub(crate) async fn listen<S: Serializer>(
    cache: Weak<Shared<S>>,
    mut subscription: Box<dyn Subscription>,
    origin: u64,
) {
    while let Some(event) = subscription.next().await {
        let Some(shared) = cache.upgrade() else {
            return;
        };
        let cache = TieredCache { shared };
        let span = tracing::debug_span!(
            "cache.backplane.receive",
            cache = &*cache.shared.observe.name,
            event = tracing::field::Empty,
            invalidations = tracing::field::Empty,
        );
        match event {
            // Already done here, before it was sent.
            BackplaneEvent::Message(message) if message.origin == origin => {}
            BackplaneEvent::Message(message) => {
                span.record("event", "message");
                span.record("invalidations", message.invalidations.len());
                cache.apply(&message.invalidations).instrument(span).await;
            }
            BackplaneEvent::Gap => {
                span.record("event", "gap");
                cache.clear_local().instrument(span).await;
            }
        }
    }
    tracing::debug!("backplane closed; the cache's listener stops");
}

impl<S: Serializer> TieredCache<S> {
    /// Removes what another instance published from the local tiers.
    async fn apply(&self, invalidations: &[Invalidation]) {
        let targets = Targets::from_invalidations(invalidations);
        let (report, error) = self.remove_from_tiers(&targets, true).await;
        let counters = &self.shared.counters;
        // Counted once applied, so that a test (or a caller) waiting on the
        // counter sees the removal done.
        counters.received.incr();
        if error.is_some() || !report.is_complete() {
            counters.local_errors.incr();
            tracing::warn!(
                ?error,
                %report,
                "a local tier failed to apply a backplane message"
            );
        }
    }

    /// Messages may have been lost: clears the local tiers.
    async fn clear_local(&self) {
        tracing::info!("backplane messages may have been lost; clearing the local tiers");
        let everything = [Invalidation::All];
        let targets = Targets::from_invalidations(&everything);
        let (report, error) = self.remove_from_tiers(&targets, true).await;
        let counters = &self.shared.counters;
        counters.gaps.incr();
        if error.is_some() || !report.is_complete() {
            counters.local_errors.incr();
            tracing::warn!(?error, %report, "a local tier failed to clear after a gap");
        }
    }

    /// Publishes `invalidations` as one message from this instance.
    /// `Err` gives them back when the backplane failed (logged and counted).
    pub(crate) async fn publish(
        &self,
        invalidations: Vec<Invalidation>,
    ) -> Result<Broadcast, Vec<Invalidation>> {
        let shared = &*self.shared;
        let Some(backplane) = &shared.backplane else {
            return Ok(Broadcast::Off);
        };
        let span = tracing::debug_span!(
            "cache.backplane.publish",
            cache = &*shared.observe.name,
            invalidations = invalidations.len(),
            outcome = tracing::field::Empty,
        );
        let message = BackplaneMessage {
            origin: shared.origin,
            invalidations,
        };
        match backplane.publish(&message).instrument(span.clone()).await {
            Ok(()) => {
                shared.counters.published.incr();
                span.record("outcome", "sent");
                Ok(Broadcast::Sent)
            }
            Err(error) => {
                shared.counters.publish_errors.incr();
                span.record("outcome", "failed");
                tracing::warn!(%error, class = %error.class(), "backplane publish failed");
                Err(message.invalidations)
            }
        }
    }

    /// After a write of `keys`: tells the other instances to drop their
    /// local copies, and queues the message if it did not go out (a missed
    /// message leaves a stale copy elsewhere, as a missed removal would).
    pub(crate) async fn announce_write<'k>(&self, keys: impl IntoIterator<Item = &'k str>) {
        if self.shared.backplane.is_none() {
            return;
        }
        let invalidations = keys
            .into_iter()
            .map(|key| Invalidation::Key(key.to_owned()))
            .collect::<Vec<_>>();
        if invalidations.is_empty() {
            return;
        }
        if let Err(unsent) = self.publish(invalidations).await
            && let Some(queue) = &self.shared.queue
        {
            queue.push(Retry::Publish(unsent));
        }
    }
}

/// A fresh id for this instance's messages: unique across processes with
/// overwhelming probability (std's randomly keyed hasher over the process
/// id, the time and a counter), without a random-number dependency.
pub(crate) fn new_origin() -> u64 {
    static SEQUENCE: AtomicU64 = AtomicU64::new(0);
    RandomState::new().hash_one((
        std::process::id(),
        Instant::now(),
        SystemTime::now(),
        SEQUENCE.fetch_add(1, Ordering::Relaxed),
    ))
}
