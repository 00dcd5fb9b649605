//! An in-process backplane: several caches in one program, and tests.

use std::fmt;

use cache_core::{Backplane, BackplaneEvent, BackplaneMessage, Result, Subscription, async_trait};
use tokio::sync::broadcast;

/// A [`Backplane`] inside one process: for several caches in one program,
/// and for tests. Across processes, use `cache_redis::RedisBackplane`.
/// Attach it with [`TieredCacheBuilder::backplane`](crate::TieredCacheBuilder::backplane)
/// (cloning it shares the channel).
///
/// A subscriber that falls more than `capacity` messages behind gets a
/// [`BackplaneEvent::Gap`] (and clears its local tiers), as it would on a
/// network backplane.
///
/// ```
/// use cache_core::{Backplane, BackplaneEvent, BackplaneMessage, Invalidation};
/// use cache_tiered::MemoryBackplane;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> cache_core::Result<()> {
/// let backplane = MemoryBackplane::new(64);
/// let mut subscription = backplane.subscribe().await?;
/// let message = BackplaneMessage { origin: 1, invalidations: vec![Invalidation::All] };
/// backplane.publish(&message).await?;
/// assert_eq!(subscription.next().await, Some(BackplaneEvent::Message(message)));
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct MemoryBackplane {
    sender: broadcast::Sender<BackplaneMessage>,
}

impl MemoryBackplane {
    /// A backplane keeping up to `capacity` messages for slow subscribers
    /// (at least 1).
    pub fn new(capacity: usize) -> Self {
        MemoryBackplane {
            sender: broadcast::Sender::new(capacity.max(1)),
        }
    }
}

impl MemoryBackplane {
    /// How many subscriptions are open.
    pub fn subscribers(&self) -> usize {
        self.sender.receiver_count()
    }
}

impl Default for MemoryBackplane {
    /// Capacity 1024.
    fn default() -> Self {
        Self::new(1024)
    }
}

impl fmt::Debug for MemoryBackplane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryBackplane")
            .field("subscribers", &self.subscribers())
            .finish()
    }
}

#[async_trait]
impl Backplane for MemoryBackplane {
    async fn publish(&self, message: &BackplaneMessage) -> Result<()> {
        // No subscriber is not an error: nobody holds anything to drop.
        let _ = self.sender.send(message.clone());
        Ok(())
    }

    async fn subscribe(&self) -> Result<Box<dyn Subscription>> {
        Ok(Box::new(MemorySubscription(self.sender.subscribe())))
    }
}

struct MemorySubscription(broadcast::Receiver<BackplaneMessage>);

#[async_trait]
impl Subscription for MemorySubscription {
    async fn next(&mut self) -> Option<BackplaneEvent> {
        match self.0.recv().await {
            Ok(message) => Some(BackplaneEvent::Message(message)),
            Err(broadcast::error::RecvError::Lagged(_)) => Some(BackplaneEvent::Gap),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cache_core::Invalidation;

    fn message(n: u64) -> BackplaneMessage {
        BackplaneMessage {
            origin: n,
            invalidations: vec![Invalidation::Key(format!("k{n}"))],
        }
    }

    #[tokio::test]
    async fn a_subscriber_that_falls_behind_gets_a_gap_then_goes_on() {
        let backplane = MemoryBackplane::new(2);
        let mut subscription = backplane.subscribe().await.unwrap();
        for n in 0..5 {
            backplane.publish(&message(n)).await.unwrap();
        }
        assert_eq!(subscription.next().await, Some(BackplaneEvent::Gap));
        assert_eq!(
            subscription.next().await,
            Some(BackplaneEvent::Message(message(3)))
        );
        assert_eq!(
            subscription.next().await,
            Some(BackplaneEvent::Message(message(4)))
        );
    }

    #[tokio::test]
    async fn subscriptions_end_when_the_backplane_is_dropped() {
        let backplane = MemoryBackplane::default();
        let mut subscription = backplane.subscribe().await.unwrap();
        backplane.publish(&message(1)).await.unwrap();
        drop(backplane);
        assert_eq!(
            subscription.next().await,
            Some(BackplaneEvent::Message(message(1)))
        );
        assert_eq!(subscription.next().await, None);
    }
}
