//! Writing through every tier, lowest (shared) first.

use std::time::Duration;

use cache_core::{Entry, Serializer};
use serde::Serialize;
use tracing::Instrument;

use crate::cache::TierSet;
use crate::guard::Ticket;
use crate::observe::op_span;
use crate::tier::Call;
use crate::{Result, TieredCache};

/// How far a write-through got, per entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Written {
    /// Every tier so far took it.
    Fully,
    /// A lower tier failed and fails open; the tiers above take the value
    /// for at most the degraded TTL.
    Degraded,
    /// A lower tier failed or refused it (or a racing mutation overtook
    /// the write); the tiers above drop the key.
    Stopped,
}

impl<S: Serializer> TieredCache<S> {
    /// Stores `value` under `key` in every tier for `ttl` (each tier's cap
    /// permitting), stamped with the versions of the key's
    /// [families](crate::TieredCacheBuilder::key_families), if it has any.
    ///
    /// A value the lowest tier refuses (over its size limit) is an error
    /// whatever the tier's failure policy, and leaves no older value under
    /// the key readable in any tier. An upper tier that refuses a value a
    /// lower one took only does not cache it (its stats count the refusal).
    ///
    /// With a [backplane](crate::TieredCacheBuilder::backplane), the other
    /// instances are then told to drop their local copies of `key` (they
    /// read the new value from the shared tier). A failed publish is
    /// logged and counted ([`BackplaneStats`](crate::BackplaneStats)), not
    /// returned: the value is stored. The
    /// [invalidation queue](crate::TieredCacheBuilder::invalidation_queue),
    /// if any, publishes it again until it goes out.
    pub async fn set<T>(&self, key: &str, value: &T, ttl: Duration) -> Result<()>
    where
        T: Serialize + ?Sized + 'static,
    {
        let stamps = self.stamp(key, &[]).await?;
        let entry = self.encode_stamped(value, &stamps, ttl, &self.defaults_for(key).load)?;
        let written = self.write_mutating(&[(key, entry)]).await.pop();
        self.announce_write([key]).await;
        written.unwrap_or(Ok(()))
    }

    /// Stores several values for `ttl`, with one call per tier. One result
    /// per value, in order. With a backplane, one message names every key
    /// written (see [`set`](Self::set)). The versions of the keys'
    /// [families](crate::TieredCacheBuilder::key_families) are read
    /// together; if that fails (a tier that fails closed), the keys in a
    /// family get the error and are not written, the others are.
    pub async fn set_many<T>(&self, items: &[(&str, T)], ttl: Duration) -> Vec<Result<()>>
    where
        T: Serialize + 'static,
    {
        let mut results: Vec<Result<()>> = Vec::with_capacity(items.len());
        let mut entries = Vec::with_capacity(items.len());
        let mut slots = Vec::with_capacity(items.len());
        let keys: Vec<&str> = items.iter().map(|(key, _)| *key).collect();
        let stamps = self.stamp_each(&keys).await;
        for ((key, value), stamps) in items.iter().zip(stamps) {
            let encoded = stamps.and_then(|stamps| {
                self.encode_stamped(value, &stamps, ttl, &self.defaults_for(key).load)
            });
            match encoded {
                Ok(entry) => {
                    slots.push(results.len());
                    entries.push((*key, entry));
                    results.push(Ok(()));
                }
                Err(error) => results.push(Err(error)),
            }
        }
        let written = self.write_mutating(&entries).await;
        for (slot, result) in slots.into_iter().zip(written) {
            results[slot] = result;
        }
        self.announce_write(entries.iter().map(|(key, _)| *key))
            .await;
        results
    }

    /// Writes new data (not a fill) through every tier, marking the keys
    /// as mutated meanwhile so that no racing fill puts an older value back.
    pub(crate) async fn write_mutating(&self, entries: &[(&str, Entry)]) -> Vec<Result<()>> {
        self.write_mutating_except(entries, 0).await
    }

    /// [`write_mutating`](Self::write_mutating), leaving the tiers in
    /// `excluded` alone (a call that skips them).
    pub(crate) async fn write_mutating_except(
        &self,
        entries: &[(&str, Entry)],
        excluded: TierSet,
    ) -> Vec<Result<()>> {
        let _mutations: Vec<_> = entries
            .iter()
            .map(|(key, _)| self.shared.guard.mutate(key))
            .collect();
        let span = match entries {
            [(key, _)] => op_span!(&self.shared.observe, "cache.set", key),
            _ => tracing::debug_span!(
                "cache.set_many",
                cache = &*self.shared.observe.name,
                keys = entries.len(),
                outcome = tracing::field::Empty,
            ),
        };
        let written = self
            .write_through(entries, None, 0, excluded)
            .instrument(span.clone())
            .await;
        let failed = written.iter().any(Result::is_err);
        span.record("outcome", if failed { "error" } else { "ok" });
        written
    }

    /// Writes entries through every tier, lowest first. When a tier fails
    /// for a key, the tiers above it drop that key rather than take a value
    /// the lower tier lacks (or, with a degraded TTL and a failure the
    /// policy ignores, take it for that long). With a ticket (loader
    /// results), a write that a concurrent mutation overtook is undone and
    /// goes no further up. Tiers in `failed` (their read failed open
    /// earlier in the same call) count as failed open without being called;
    /// tiers in `excluded` (the call skips them) are left alone, as if
    /// absent.
    pub(crate) async fn write_through(
        &self,
        entries: &[(&str, Entry)],
        ticket: Option<&Ticket>,
        failed: TierSet,
        excluded: TierSet,
    ) -> Vec<Result<()>> {
        let tickets = match ticket {
            Some(ticket) => Tickets::Same(ticket),
            None => Tickets::None,
        };
        self.write_through_with(entries, tickets, failed, excluded)
            .await
    }

    /// [`write_through`](Self::write_through) of loader results each
    /// loaded under its own ticket (`tickets[i]` for `entries[i]`): a batch
    /// load (`batch.rs`). Each tier's batch is a fill since the earliest
    /// of its tickets.
    pub(crate) async fn write_loaded(
        &self,
        entries: &[(&str, Entry)],
        tickets: &[Ticket],
        failed: TierSet,
        excluded: TierSet,
    ) -> Vec<Result<()>> {
        debug_assert_eq!(entries.len(), tickets.len());
        self.write_through_with(entries, Tickets::Each(tickets), failed, excluded)
            .await
    }

    async fn write_through_with(
        &self,
        entries: &[(&str, Entry)],
        tickets: Tickets<'_>,
        failed: TierSet,
        excluded: TierSet,
    ) -> Vec<Result<()>> {
        let shared = &*self.shared;
        let clock = &*shared.clock;
        let now = clock.now();
        let failed_open = match shared.degraded_ttl {
            Some(_) => Written::Degraded,
            None => Written::Stopped,
        };
        let mut results: Vec<Result<()>> = entries.iter().map(|_| Ok(())).collect();
        let mut state = vec![Written::Fully; entries.len()];
        // Whether a tier below holds the entry: then an upper tier refusing
        // it only leaves it uncached there.
        let mut stored = vec![false; entries.len()];
        for (depth, tier) in shared.tiers.iter().enumerate().rev() {
            if excluded & (1 << depth) != 0 {
                continue;
            }
            let mut batch: Vec<(usize, (&str, Entry))> = Vec::with_capacity(entries.len());
            let mut dead: Vec<&str> = Vec::new();
            for (i, (key, entry)) in entries.iter().enumerate() {
                let entry = tier.cap(key, entry.clone(), now);
                match (state[i], shared.degraded_ttl) {
                    (Written::Fully, _) => batch.push((i, (*key, entry))),
                    (Written::Degraded, Some(ttl)) => {
                        batch.push((i, (*key, crate::envelope::capped(entry, now, ttl))));
                    }
                    _ => dead.push(*key),
                }
            }
            if !dead.is_empty() {
                let _ = tier.delete_many(clock, &dead).await;
            }
            if batch.is_empty() {
                continue;
            }
            if failed & (1 << depth) != 0 {
                // Failed open earlier in this call: a failed write, not retried.
                for (i, _) in &batch {
                    state[*i] = failed_open;
                }
                continue;
            }
            let pairs: Vec<(&str, Entry)> = batch.iter().map(|(_, pair)| pair.clone()).collect();
            let fill_since = batch
                .iter()
                .filter_map(|(i, _)| tickets.of(*i).map(|ticket| ticket.taken_at))
                .min();
            let outcomes: Vec<Call<()>> = match tier.set_many(clock, &pairs, fill_since).await {
                Call::Done(per_key) => per_key
                    .into_iter()
                    .map(|result| match result {
                        Ok(()) => Call::Done(()),
                        Err(error) => tier.failed(cache_core::Operation::Write, error),
                    })
                    .collect(),
                Call::FailedOpen => batch.iter().map(|_| Call::FailedOpen).collect(),
                Call::Failed(error) => batch.iter().map(|_| Call::Failed(error.clone())).collect(),
            };
            for ((i, (key, _)), outcome) in batch.iter().zip(outcomes) {
                match outcome {
                    Call::Done(()) => {
                        stored[*i] = true;
                        if let Some(ticket) = tickets.of(*i)
                            && !self.keep_fill(tier, key, ticket).await
                        {
                            state[*i] = Written::Stopped;
                        }
                    }
                    Call::Failed(error) if error.is_refusal() && stored[*i] => {
                        state[*i] = Written::Stopped;
                    }
                    // A shared tier holds something newer than this fill
                    // (another instance wrote or removed the key since the
                    // load began): the value goes no further up.
                    Call::Failed(error) if error.is_superseded() => {
                        tier.counters.fills_discarded.incr();
                        state[*i] = Written::Stopped;
                    }
                    // Failed and ignored: the tiers above drop the key, or
                    // hold the value briefly if degraded writes are on.
                    Call::FailedOpen => state[*i] = failed_open,
                    Call::Failed(error) => {
                        state[*i] = Written::Stopped;
                        if results[*i].is_ok() {
                            results[*i] = Err(error.into());
                        }
                    }
                }
            }
        }
        results
    }
}

/// The tickets a write-through's entries were loaded under, if they are
/// fills.
#[derive(Clone, Copy)]
enum Tickets<'a> {
    /// New data, not fills.
    None,
    /// One ticket for every entry.
    Same(&'a Ticket),
    /// One ticket per entry, in order.
    Each(&'a [Ticket]),
}

impl<'a> Tickets<'a> {
    fn of(self, i: usize) -> Option<&'a Ticket> {
        match self {
            Tickets::None => None,
            Tickets::Same(ticket) => Some(ticket),
            Tickets::Each(tickets) => tickets.get(i),
        }
    }
}
