//! Single-flight: one loader call per key however many callers miss at once.

use std::any::Any;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::watch;

use crate::Error;

/// What a leader hands to the callers waiting on it.
pub(crate) type Outcome = Result<Arc<dyn Any + Send + Sync>, Error>;

type Slot = watch::Sender<Option<Outcome>>;

/// The loads in progress, by key.
#[derive(Debug, Default)]
pub(crate) struct Flights {
    in_progress: Mutex<HashMap<String, (u64, Slot)>>,
    next_id: AtomicU64,
}

/// The caller's part in a load.
pub(crate) enum Role<'a> {
    /// Run the loader, then [`Leader::finish`].
    Leader(Leader<'a>),
    /// Wait for the leader with [`Follower::wait`].
    Follower(Follower),
}

/// The one caller running the loader. Dropping it without finishing (the
/// caller was cancelled) wakes the followers, and one of them takes over.
pub(crate) struct Leader<'a> {
    flights: &'a Flights,
    key: String,
    id: u64,
}

pub(crate) struct Follower {
    receiver: watch::Receiver<Option<Outcome>>,
}

impl Flights {
    pub(crate) fn join(&self, key: &str) -> Role<'_> {
        let mut in_progress = self.lock();
        if let Some((_, slot)) = in_progress.get(key) {
            return Role::Follower(Follower {
                receiver: slot.subscribe(),
            });
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        in_progress.insert(key.to_owned(), (id, watch::channel(None).0));
        Role::Leader(Leader {
            flights: self,
            key: key.to_owned(),
            id,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u64, Slot)>> {
        // Nothing panics while holding the lock; recover rather than cascade.
        self.in_progress
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn remove(&self, key: &str, id: u64) -> Option<Slot> {
        let mut in_progress = self.lock();
        match in_progress.get(key) {
            Some((owner, _)) if *owner == id => in_progress.remove(key).map(|(_, slot)| slot),
            _ => None,
        }
    }
}

impl Leader<'_> {
    /// Hands the outcome to every follower and ends the flight.
    pub(crate) fn finish(self, outcome: Outcome) {
        if let Some(slot) = self.flights.remove(&self.key, self.id) {
            slot.send_replace(Some(outcome));
        }
        // `Drop` finds the flight already removed.
    }
}

impl Drop for Leader<'_> {
    fn drop(&mut self) {
        // Dropping the slot closes the channel: followers see the leader gone.
        drop(self.flights.remove(&self.key, self.id));
    }
}

impl Follower {
    /// The leader's outcome, or `None` if the leader went away without one
    /// (the caller should try again, and may become the leader).
    pub(crate) async fn wait(mut self) -> Option<Outcome> {
        match self.receiver.wait_for(Option::is_some).await {
            Ok(outcome) => outcome.clone(),
            Err(_closed) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn followers_get_the_leaders_outcome() {
        let flights = Flights::default();
        let Role::Leader(leader) = flights.join("k") else {
            panic!("first caller leads")
        };
        let Role::Follower(follower) = flights.join("k") else {
            panic!("second follows")
        };
        leader.finish(Ok(Arc::new(5u32)));
        let outcome = follower.wait().await.unwrap().unwrap();
        assert_eq!(outcome.downcast_ref::<u32>(), Some(&5));
        assert!(
            matches!(flights.join("k"), Role::Leader(_)),
            "the flight ended"
        );
    }

    #[tokio::test]
    async fn a_dropped_leader_releases_its_followers() {
        let flights = Flights::default();
        let Role::Leader(leader) = flights.join("k") else {
            panic!()
        };
        let Role::Follower(follower) = flights.join("k") else {
            panic!()
        };
        drop(leader);
        assert!(follower.wait().await.is_none());
        assert!(matches!(flights.join("k"), Role::Leader(_)));
    }
}
