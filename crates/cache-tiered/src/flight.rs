//! Single-flight: one loader call per key however many callers miss at once.

use std::any::Any;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use tokio::sync::watch;

use crate::Error;
use crate::guard::{FillGuard, Ticket};

/// What a leader hands to the callers waiting on it.
pub(crate) type Outcome = Result<Arc<dyn Any + Send + Sync>, Error>;

type Slot = watch::Sender<Option<Outcome>>;

/// The loads in progress, by key.
#[derive(Debug, Default)]
pub(crate) struct Flights {
    in_progress: Mutex<HashMap<String, Flight>>,
    next_id: AtomicU64,
    /// Flights ended with an outcome so far: a batch call that saw it
    /// unchanged between its read and its joining knows no load landed
    /// in between, and skips the recheck of the top tier (`batch.rs`).
    finished: AtomicU64,
}

#[derive(Debug)]
struct Flight {
    id: u64,
    slot: Slot,
    /// Taken before the load began: a caller may join only while no
    /// mutation of the key has begun since.
    ticket: Ticket,
}

/// A batch caller's part in the loads of its keys (see [`Flights::join_all`]).
pub(crate) enum Batch {
    /// No key had a load in flight: the caller leads them all, in order.
    Lead(Vec<Leader>),
    /// These keys (by index) have a load in flight: wait for them. The
    /// caller leads none of its keys meanwhile.
    Follow(Vec<(usize, Follower)>),
}

/// The caller's part in a load.
pub(crate) enum Role {
    /// Run the loader, then [`Leader::finish`].
    Leader(Leader),
    /// Wait for the leader with [`Follower::wait`].
    Follower(Follower),
}

/// The one caller running the loader. Dropping it without finishing (the
/// caller was cancelled) wakes the followers, and one of them takes over.
/// It owns its share of the flights, so a load can go on in a task of its
/// own (a soft timeout, an eager refresh) after its caller returned.
pub(crate) struct Leader {
    flights: Arc<Flights>,
    key: String,
    id: u64,
    /// Taken before the load: what it loads may be cached only while this
    /// ticket is still valid.
    pub(crate) ticket: Ticket,
}

pub(crate) struct Follower {
    receiver: watch::Receiver<Option<Outcome>>,
}

impl Flights {
    /// Joins the load of `key` in flight, or starts one.
    ///
    /// A load that began before a mutation of the key (a delete, an
    /// invalidation, a set) is not joined: a caller that starts after the
    /// mutation returned must never be answered by it. The newcomer starts
    /// a load of its own instead, and the stale flight's followers (who
    /// joined before the mutation) are released to try again.
    pub(crate) fn join(self: &Arc<Self>, key: &str, guard: &FillGuard, now: Instant) -> Role {
        let mut in_progress = self.lock();
        if let Some(flight) = in_progress.get(key)
            && guard.unchanged_since(&flight.ticket)
        {
            return Role::Follower(Follower {
                receiver: flight.slot.subscribe(),
            });
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let ticket = guard.ticket(key, now);
        let flight = Flight {
            id,
            slot: watch::channel(None).0,
            ticket,
        };
        // Replacing a stale flight drops its slot, which wakes its followers.
        in_progress.insert(key.to_owned(), flight);
        Role::Leader(Leader {
            flights: self.clone(),
            key: key.to_owned(),
            id,
            ticket,
        })
    }

    /// Joins the loads of several distinct keys at once, all or nothing:
    /// if any key has a load in flight that may be joined (as in
    /// [`join`](Self::join)), the caller follows those and leads none;
    /// otherwise it leads every key.
    ///
    /// Why never both: a caller that held flights while waiting on others
    /// could wait on a caller waiting on it. Leading nothing while it
    /// waits, a batch caller only ever waits on loads that are running
    /// (their leaders wait on nobody), so no wait can close a cycle. Done
    /// under one lock, so two batches over the same keys do not each lead
    /// half of them.
    pub(crate) fn join_all(
        self: &Arc<Self>,
        keys: &[&str],
        guard: &FillGuard,
        now: Instant,
    ) -> Batch {
        let mut in_progress = self.lock();
        let followers: Vec<(usize, Follower)> = keys
            .iter()
            .enumerate()
            .filter_map(|(i, key)| {
                let flight = in_progress.get(*key)?;
                guard.unchanged_since(&flight.ticket).then(|| {
                    let receiver = flight.slot.subscribe();
                    (i, Follower { receiver })
                })
            })
            .collect();
        if !followers.is_empty() {
            return Batch::Follow(followers);
        }
        let leaders = keys
            .iter()
            .map(|key| {
                let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                let ticket = guard.ticket(key, now);
                let flight = Flight {
                    id,
                    slot: watch::channel(None).0,
                    ticket,
                };
                // Replacing a stale flight wakes its followers, as in `join`.
                in_progress.insert((*key).to_owned(), flight);
                Leader {
                    flights: self.clone(),
                    key: (*key).to_owned(),
                    id,
                    ticket,
                }
            })
            .collect();
        Batch::Lead(leaders)
    }

    /// How many flights have ended with an outcome so far.
    pub(crate) fn finished(&self) -> u64 {
        self.finished.load(Ordering::SeqCst)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Flight>> {
        // Nothing panics while holding the lock; recover rather than cascade.
        self.in_progress
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn remove(&self, key: &str, id: u64) -> Option<Slot> {
        let mut in_progress = self.lock();
        match in_progress.get(key) {
            Some(flight) if flight.id == id => in_progress.remove(key).map(|flight| flight.slot),
            _ => None,
        }
    }
}

impl Leader {
    /// The key this leader loads.
    pub(crate) fn key(&self) -> &str {
        &self.key
    }

    /// Hands the outcome to every follower and ends the flight.
    pub(crate) fn finish(self, outcome: Outcome) {
        // Counted before the flight leaves the table (and after the
        // loader's value was written to the tiers): a batch caller that
        // finds the flight gone when it joins also finds the count moved.
        self.flights.finished.fetch_add(1, Ordering::SeqCst);
        if let Some(slot) = self.flights.remove(&self.key, self.id) {
            slot.send_replace(Some(outcome));
        }
        // `Drop` finds the flight already removed.
    }
}

impl Drop for Leader {
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
        let flights = Arc::new(Flights::default());
        let guard = FillGuard::new();
        let Role::Leader(leader) = flights.join("k", &guard, Instant::now()) else {
            panic!("first caller leads")
        };
        let Role::Follower(follower) = flights.join("k", &guard, Instant::now()) else {
            panic!("second follows")
        };
        leader.finish(Ok(Arc::new(5u32)));
        let outcome = follower.wait().await.unwrap().unwrap();
        assert_eq!(outcome.downcast_ref::<u32>(), Some(&5));
        assert!(
            matches!(flights.join("k", &guard, Instant::now()), Role::Leader(_)),
            "the flight ended"
        );
    }

    #[tokio::test]
    async fn a_mutation_ends_the_joinability_of_a_flight() {
        let flights = Arc::new(Flights::default());
        let guard = FillGuard::new();
        let Role::Leader(stale) = flights.join("k", &guard, Instant::now()) else {
            panic!()
        };
        let Role::Follower(early) = flights.join("k", &guard, Instant::now()) else {
            panic!("joined before the mutation")
        };
        drop(guard.mutate("k"));
        let Role::Leader(fresh) = flights.join("k", &guard, Instant::now()) else {
            panic!("a caller after the mutation leads a load of its own")
        };
        assert!(early.wait().await.is_none(), "released to try again");
        stale.finish(Ok(Arc::new(1u32)));
        let Role::Follower(late) = flights.join("k", &guard, Instant::now()) else {
            panic!("the stale leader did not end the fresh flight")
        };
        fresh.finish(Ok(Arc::new(2u32)));
        let outcome = late.wait().await.unwrap().unwrap();
        assert_eq!(outcome.downcast_ref::<u32>(), Some(&2));
    }

    #[tokio::test]
    async fn a_dropped_leader_releases_its_followers() {
        let flights = Arc::new(Flights::default());
        let guard = FillGuard::new();
        let Role::Leader(leader) = flights.join("k", &guard, Instant::now()) else {
            panic!()
        };
        let Role::Follower(follower) = flights.join("k", &guard, Instant::now()) else {
            panic!()
        };
        drop(leader);
        assert!(follower.wait().await.is_none());
        assert!(matches!(
            flights.join("k", &guard, Instant::now()),
            Role::Leader(_)
        ));
    }
}
