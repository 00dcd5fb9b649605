//! Keeps tier fills from resurrecting values that a concurrent delete,
//! invalidation or write replaced.
//!
//! A fill (copying a value found in a lower tier into the tiers above, or
//! writing a loader's result) takes a [`Ticket`] before it reads the value.
//! Every mutation (set, delete, invalidate) marks itself in flight and bumps
//! an epoch before touching any tier. A fill proceeds only if no mutation of
//! its key was in flight when it took the ticket, and checks the epochs again
//! after each write; if they moved, it undoes the write. Between them these
//! cover every interleaving:
//! - a mutation already in flight when the ticket is taken: no fill;
//! - one that starts before the fill's recheck: the epoch moved, undo;
//! - one that starts after the recheck: it removes or overwrites the fill
//!   itself, since it touches the tiers only after it started.
//!
//! Keys share striped counters (a collision only costs a skipped fill);
//! pattern invalidations use one global stripe that every ticket checks.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::time::Instant;

const STRIPES: usize = 1024;

#[derive(Debug, Default)]
#[repr(align(64))]
struct Stripe {
    epoch: AtomicU64,
    in_flight: AtomicU64,
}

impl Stripe {
    fn begin(&self) -> MutationGuard<'_> {
        // In flight first, then the epoch: a ticket that sees the new epoch
        // is then sure to see the mutation in flight.
        self.in_flight.fetch_add(1, SeqCst);
        self.epoch.fetch_add(1, SeqCst);
        MutationGuard { stripe: self }
    }
}

/// The striped epochs of one cache.
#[derive(Debug)]
pub(crate) struct FillGuard {
    stripes: Box<[Stripe]>,
    global: Stripe,
    hasher: foldhash::fast::RandomState,
}

/// A snapshot taken before reading a value that may be filled upward.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ticket {
    stripe: usize,
    epoch: u64,
    global_epoch: u64,
    clear: bool,
    /// When the ticket was taken, by the cache's clock: a fill written
    /// under it is a fill since then for the tiers (shared ones refuse it
    /// over a removal made later, by any process).
    pub(crate) taken_at: Instant,
}

/// Marks a mutation in flight until dropped (also when its future is cancelled).
#[derive(Debug)]
pub(crate) struct MutationGuard<'a> {
    stripe: &'a Stripe,
}

impl Drop for MutationGuard<'_> {
    fn drop(&mut self) {
        self.stripe.in_flight.fetch_sub(1, SeqCst);
    }
}

impl FillGuard {
    pub(crate) fn new() -> Self {
        FillGuard {
            stripes: (0..STRIPES).map(|_| Stripe::default()).collect(),
            global: Stripe::default(),
            hasher: Default::default(),
        }
    }

    fn stripe_of(&self, key: &str) -> usize {
        (self.hasher.hash_one(key) as usize) % STRIPES
    }

    /// Call before reading a value that may be filled into other tiers;
    /// `now` is the cache clock's reading.
    pub(crate) fn ticket(&self, key: &str, now: Instant) -> Ticket {
        let stripe = self.stripe_of(key);
        let s = &self.stripes[stripe];
        let epoch = s.epoch.load(SeqCst);
        let global_epoch = self.global.epoch.load(SeqCst);
        let clear = s.in_flight.load(SeqCst) == 0 && self.global.in_flight.load(SeqCst) == 0;
        Ticket {
            stripe,
            epoch,
            global_epoch,
            clear,
            taken_at: now,
        }
    }

    /// Whether a fill under `ticket` may write now, or may keep what it wrote.
    pub(crate) fn still_valid(&self, ticket: &Ticket) -> bool {
        ticket.clear
            && self.stripes[ticket.stripe].epoch.load(SeqCst) == ticket.epoch
            && self.global.epoch.load(SeqCst) == ticket.global_epoch
    }

    /// Whether no mutation of the ticket's key (or invalidation) has begun
    /// since the ticket was taken. Unlike [`still_valid`](Self::still_valid)
    /// a mutation already in flight at ticket time does not count: what
    /// started after that mutation began sees its effect (a service writes
    /// its database, then removes the key). Decides whether a caller may
    /// join a load in flight.
    pub(crate) fn unchanged_since(&self, ticket: &Ticket) -> bool {
        self.stripes[ticket.stripe].epoch.load(SeqCst) == ticket.epoch
            && self.global.epoch.load(SeqCst) == ticket.global_epoch
    }

    /// Call before a set or delete of `key` touches any tier.
    pub(crate) fn mutate(&self, key: &str) -> MutationGuard<'_> {
        self.stripes[self.stripe_of(key)].begin()
    }

    /// Call before a pattern invalidation touches any tier.
    pub(crate) fn mutate_all(&self) -> MutationGuard<'_> {
        self.global.begin()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutations_invalidate_tickets() {
        let guard = FillGuard::new();
        let ticket = guard.ticket("k", Instant::now());
        assert!(guard.still_valid(&ticket));
        drop(guard.mutate("k"));
        assert!(!guard.still_valid(&ticket), "a mutation after the ticket");

        let ticket = guard.ticket("k", Instant::now());
        assert!(guard.still_valid(&ticket));
        drop(guard.mutate_all());
        assert!(
            !guard.still_valid(&ticket),
            "an invalidation after the ticket"
        );

        let in_flight = guard.mutate("k");
        let ticket = guard.ticket("k", Instant::now());
        drop(in_flight);
        assert!(
            !guard.still_valid(&ticket),
            "a mutation in flight at ticket time"
        );
        assert!(guard.still_valid(&guard.ticket("k", Instant::now())));
    }
}
