//! Batch loading: `get_or_compute_many`, one loader call for every key of
//! a batch that no tier holds and nobody is loading.
//!
//! The walk is `get_many`'s (one call per tier for the keys still
//! missing). The keys it misses go through the same flight table as
//! `get_or_compute`, all at once ([`Flights::join_all`]): a key another
//! caller is loading is waited on; the keys nobody loads are led by this
//! call, so single callers wait on them, and loaded with one loader call.
//! The values go through every tier with one `set_many` per tier, each a
//! fill under the ticket its flight took (`write.rs`).

use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use cache_core::{Entry, Serializer};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::Instrument;

use crate::cache::TierSet;
use crate::envelope::{Envelope, Freshness};
use crate::flight::{Batch, Leader, Outcome};
use crate::guard::Ticket;
use crate::load::CatchUnwind;
use crate::read::Walk;
use crate::{Error, Result, TieredCache};

/// What a batch leader hands to the callers waiting on a key its loader
/// did not return. A waiting batch call reads it as "absent"; a waiting
/// `get_or_compute` caller finds no value of its type in it and runs its
/// own loader, as it does when another type was loaded under the key.
struct Absent;

impl<S: Serializer> TieredCache<S> {
    /// The values under `keys`, loading those no tier holds with **one**
    /// call of `loader` for all of them, and caching what it returns for
    /// `ttl` (pass [`default_ttl`](Self::default_ttl) for the cache's).
    ///
    /// Returns one result per key, in order, as [`get_many`](Self::get_many)
    /// does: `Ok(Some(value))`, `Ok(None)` for a key the loader did not
    /// return, or the error that key's read or load ended with.
    ///
    /// 1. The keys are read as `get_many` reads them: one call per tier for
    ///    the keys still missing, hits in lower tiers copied upward.
    /// 2. A missed key that another caller is loading (a `get_or_compute`
    ///    or another batch) is waited on, not loaded again. This call waits
    ///    for all of those before it leads any key of its own, so that no
    ///    two calls ever wait on each other.
    /// 3. The keys still missing are registered as loads in flight (a
    ///    `get_or_compute` of one of them waits for this call), then
    ///    `loader` is called once with them, as owned strings, each once,
    ///    in the order they first appear in `keys`. It is not called when
    ///    nothing is missing.
    /// 4. What it returns is written through every tier with one batch
    ///    write per tier, lowest (shared) first, as a fill: a key deleted,
    ///    invalidated or written while the loader ran is returned but not
    ///    cached, here or (through a shared tier that honours
    ///    [`with_fill_since`](cache_core::CallContext::with_fill_since)) by
    ///    any instance.
    ///
    /// The loader returns the pairs `(key, value)` it found, in any
    /// collection: a `HashMap<String, T>`, a `Vec<(String, T)>`, an
    /// iterator. **A key it does not return** is `Ok(None)` for this call
    /// and is not cached (the next call asks the loader again); a
    /// `get_or_compute` caller that was waiting on it runs its own loader.
    /// To cache "not found" too (negative caching), make `T` an
    /// `Option<_>` and return `(key, None)`. Keys it returns that it was
    /// not asked for are ignored. A loader error (or the cache's
    /// [`hard_timeout`](crate::TieredCacheBuilder::hard_timeout)) is the
    /// result of every key it was asked for, and of every caller waiting
    /// on them; nothing is cached. A panic reaches the waiters as
    /// [`Error::LoaderPanicked`] and goes on in this caller.
    ///
    /// Duplicate keys are read and loaded once and answered at each place.
    /// A tier whose read failed open in this call is not written by it.
    /// Values get the cache's TTL jitter and fail-safe grace, but this call
    /// neither serves stale values in place of a failed load nor starts
    /// eager refreshes, and it does not use the
    /// [fleet lock](crate::TieredCacheBuilder::fleet_lock): use
    /// [`entry`](Self::entry) per key for those.
    ///
    /// Counted in [`TieredStats`](crate::TieredStats) like
    /// `get_or_compute` calls, one per distinct key: a hit or a miss each;
    /// each missed key is then a load (one per key the loader was asked
    /// for, in `loads`, and in `load_errors` if it failed) or answered
    /// without one (`coalesced`). The loader call is one sample of
    /// `load_latency`. Traced (at DEBUG) as a `cache.get_or_compute_many`
    /// span, the loader's call under it as `cache.load_many`.
    ///
    /// # Example
    /// ```
    /// use std::collections::HashMap;
    /// use std::time::Duration;
    /// use cache_memory::MemoryLayer;
    /// use cache_tiered::TieredCache;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cache = TieredCache::builder().layer(MemoryLayer::new()).build()?;
    /// let ttl = Duration::from_secs(300);
    /// cache.set("rating:offer:1", &4.5f32, ttl).await?;
    ///
    /// // One query for every rating the cache lacks (offer 3 has none).
    /// let ratings = cache
    ///     .get_or_compute_many(
    ///         &["rating:offer:1", "rating:offer:2", "rating:offer:3"],
    ///         ttl,
    ///         |missing: Vec<String>| async move {
    ///             assert_eq!(missing, ["rating:offer:2", "rating:offer:3"]);
    ///             // SELECT offer, avg(stars) ... WHERE offer IN (2, 3)
    ///             Ok::<_, std::io::Error>(HashMap::from([("rating:offer:2".to_string(), 3.0f32)]))
    ///         },
    ///     )
    ///     .await;
    /// let ratings: Vec<Option<f32>> = ratings.into_iter().collect::<Result<_, _>>()?;
    /// assert_eq!(ratings, [Some(4.5), Some(3.0), None]);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn get_or_compute_many<T, F, Fut, I, E>(
        &self,
        keys: &[&str],
        ttl: Duration,
        loader: F,
    ) -> Vec<Result<Option<T>>>
    where
        T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
        F: FnOnce(Vec<String>) -> Fut,
        Fut: Future<Output = Result<I, E>>,
        I: IntoIterator<Item = (String, T)>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        if keys.is_empty() {
            return Vec::new();
        }
        let span = tracing::debug_span!(
            "cache.get_or_compute_many",
            cache = &*self.shared.observe.name,
            keys = keys.len(),
            outcome = tracing::field::Empty,
        );
        let results = self
            .compute_many(keys, ttl, loader)
            .instrument(span.clone())
            .await;
        let failed = results.iter().any(Result::is_err);
        span.record("outcome", if failed { "error" } else { "ok" });
        results
    }

    /// [`get_or_compute_many`](Self::get_or_compute_many) of at least one key.
    async fn compute_many<T, F, Fut, I, E>(
        &self,
        keys: &[&str],
        ttl: Duration,
        loader: F,
    ) -> Vec<Result<Option<T>>>
    where
        T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
        F: FnOnce(Vec<String>) -> Fut,
        Fut: Future<Output = Result<I, E>>,
        I: IntoIterator<Item = (String, T)>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let shared = &*self.shared;
        let counters = &shared.counters;
        let (distinct, slots) = dedup(keys);
        let envelope = self.envelope::<T>();
        // Before the read: if no flight ends between here and our joining,
        // no load landed that the read could have missed.
        let finished = shared.flights.finished();
        let found = self
            .walk::<T>(&distinct, envelope, Walk::Full, None, 0)
            .await;
        let mut failed = found.failed_open;
        // `None`: missed, not answered yet.
        let mut results: Vec<Option<Result<Option<T>>>> = Vec::with_capacity(distinct.len());
        for (value, freshness) in found.values.into_iter().zip(found.freshness) {
            results.push(match value {
                Ok(None) => None,
                Ok(Some(value)) => {
                    // Served as `get_or_compute` serves it (a failure's
                    // throttle keeps the loader from being called again).
                    if freshness == Freshness::Throttled {
                        counters.stale_served.incr();
                    }
                    Some(Ok(Some(value)))
                }
                Err(error) => Some(Err(error)),
            });
        }
        let mut pending: Vec<usize> = (0..distinct.len())
            .filter(|&i| results[i].is_none())
            .collect();
        let leaders = loop {
            if pending.is_empty() {
                break Vec::new();
            }
            let pending_keys: Vec<&str> = pending.iter().map(|&i| distinct[i]).collect();
            let now = shared.clock.now();
            match shared.flights.join_all(&pending_keys, &shared.guard, now) {
                Batch::Lead(leaders) => break pending.iter().copied().zip(leaders).collect(),
                Batch::Follow(followers) => {
                    // One at a time: every load waited on runs meanwhile.
                    for (j, follower) in followers {
                        let i = pending[j];
                        if let Some(outcome) = follower.wait().await {
                            results[i] = followed::<T>(outcome);
                            if results[i].is_some() {
                                counters.coalesced.incr();
                            }
                        }
                        // Else the leader went away without a result
                        // (cancelled, or its flight went stale): the key
                        // is joined again.
                    }
                    pending.retain(|&i| results[i].is_none());
                }
            }
        };
        let mut leaders: Vec<(usize, Leader)> = leaders;
        if !leaders.is_empty() && shared.flights.finished() != finished {
            // A load that ended between our read and our joining has
            // filled the top tier: look there again, as `get_or_compute`
            // does, before loading.
            leaders = self
                .recheck_many(leaders, envelope, &mut failed, &mut results)
                .await;
        }
        if !leaders.is_empty() {
            for (i, result) in self.load_many(leaders, ttl, envelope, loader, failed).await {
                results[i] = Some(result);
            }
        }
        slots
            .into_iter()
            .map(|i| match &results[i] {
                Some(result) => result.clone(),
                // Every missed key was waited on, rechecked or loaded.
                None => Ok(None),
            })
            .collect()
    }

    /// The top tier read again for the keys this call leads; those found
    /// there end their flight with the value (coalesced). Returns the
    /// leaders still to load.
    async fn recheck_many<T>(
        &self,
        leaders: Vec<(usize, Leader)>,
        envelope: Envelope,
        failed: &mut TierSet,
        results: &mut [Option<Result<Option<T>>>],
    ) -> Vec<(usize, Leader)>
    where
        T: DeserializeOwned + Clone + Send + Sync + 'static,
    {
        let keys: Vec<&str> = leaders.iter().map(|(_, leader)| leader.key()).collect();
        let recheck = self
            .walk::<T>(&keys, envelope, Walk::Recheck, None, 0)
            .await;
        *failed |= recheck.failed_open;
        let mut still_missing = Vec::with_capacity(leaders.len());
        for ((i, leader), value) in leaders.into_iter().zip(recheck.values) {
            match value {
                Ok(Some(value)) => {
                    self.shared.counters.coalesced.incr();
                    leader.finish(Ok(Arc::new(value.clone())));
                    results[i] = Some(Ok(Some(value)));
                }
                // Nothing there (or the top tier failed): load it.
                _ => still_missing.push((i, leader)),
            }
        }
        still_missing
    }

    /// Calls `loader` once for the keys `leaders` lead, writes what it
    /// returned through every tier (one batch per tier), and ends each
    /// flight with its key's outcome. Returns the result of each key, by
    /// the index the leader came with.
    async fn load_many<T, F, Fut, I, E>(
        &self,
        leaders: Vec<(usize, Leader)>,
        ttl: Duration,
        envelope: Envelope,
        loader: F,
        failed: TierSet,
    ) -> Vec<(usize, Result<Option<T>>)>
    where
        T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
        F: FnOnce(Vec<String>) -> Fut,
        Fut: Future<Output = Result<I, E>>,
        I: IntoIterator<Item = (String, T)>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let shared = &*self.shared;
        let counters = &shared.counters;
        let options = &shared.defaults.load;
        let asked: Vec<String> = leaders
            .iter()
            .map(|(_, leader)| leader.key().to_owned())
            .collect();
        // Before the loader, as a single load stamps: what it reads is at
        // least as new as the versions of the keys' families.
        let stamps = {
            let keys: Vec<&str> = asked.iter().map(String::as_str).collect();
            self.stamp_each(&keys).await
        };
        counters.loads.add(asked.len() as u64);
        // The loader in a span of its own, as a single load's: what it logs,
        // and the spans of its queries, sit under it.
        let span = tracing::debug_span!(
            "cache.load_many",
            cache = &*shared.observe.name,
            keys = asked.len(),
            outcome = tracing::field::Empty,
        );
        let started = tokio::time::Instant::now();
        // A panic while creating or polling the loader's future is caught,
        // so that the waiters hear of it before it goes on here.
        let call = CatchUnwind(Box::pin(
            async move {
                loader(asked)
                    .await
                    .map_err(Into::<Box<dyn std::error::Error + Send + Sync>>::into)
            }
            .instrument(span.clone()),
        ));
        let loaded = match options.hard_timeout {
            None => Ok(call.await),
            Some(limit) => tokio::time::timeout(limit, call)
                .await
                .map_err(|_elapsed| Error::LoaderTimeout(limit)),
        };
        // One loader call, one sample of `load_latency` (however many keys
        // it was asked for); a panic is no sample, as for a single load.
        match &loaded {
            Ok(Ok(Ok(_))) => self.loaded(started, &span, "ok"),
            Ok(Ok(Err(_))) => self.loaded(started, &span, "error"),
            Err(_) => self.loaded(started, &span, "timeout"),
            Ok(Err(_)) => _ = span.record("outcome", "panic"),
        }
        let loaded = match loaded {
            Ok(Ok(Ok(found))) => Ok(found),
            Ok(Ok(Err(error))) => Err(Error::Loader(Arc::from(error))),
            Err(timed_out) => Err(timed_out),
            Ok(Err(panic)) => {
                for (_, leader) in leaders {
                    leader.finish(Err(Error::LoaderPanicked));
                }
                std::panic::resume_unwind(panic);
            }
        };
        let found = match loaded {
            Ok(found) => found,
            Err(error) => {
                counters.load_errors.add(leaders.len() as u64);
                return leaders
                    .into_iter()
                    .map(|(i, leader)| {
                        leader.finish(Err(error.clone()));
                        (i, Err(error.clone()))
                    })
                    .collect();
            }
        };

        // The loader's answer, by leader.
        let position: HashMap<&str, usize> = leaders
            .iter()
            .enumerate()
            .map(|(n, (_, leader))| (leader.key(), n))
            .collect();
        let mut values: Vec<Option<T>> = leaders.iter().map(|_| None).collect();
        let mut unasked = 0usize;
        for (key, value) in found {
            match position.get(key.as_str()) {
                Some(&n) => values[n] = Some(value),
                None => unasked += 1,
            }
        }
        if unasked > 0 {
            tracing::debug!(
                unasked,
                "get_or_compute_many: the loader returned keys it was not asked for; ignored"
            );
        }

        // Encoded, and written where the key did not change meanwhile.
        let mut outcomes: Vec<Result<Option<Arc<T>>>> = Vec::with_capacity(leaders.len());
        let mut writes: Vec<(usize, Entry)> = Vec::new();
        for (n, (((_, leader), value), stamps)) in
            leaders.iter().zip(values).zip(stamps).enumerate()
        {
            let Some(value) = value else {
                outcomes.push(Ok(None));
                continue;
            };
            let value = Arc::new(value);
            let stamps = match stamps {
                Ok(stamps) => stamps,
                Err(error) => {
                    outcomes.push(Err(error));
                    continue;
                }
            };
            // The key's jitter (its TTL policy's, else the cache's).
            let (expiry, life) = self.lifetime(ttl, &self.defaults_for(leader.key()).load);
            match envelope.encode(&shared.serializer, &*value, &stamps, life) {
                Ok(bytes) => {
                    let entry = Entry::new(bytes).expires_at(expiry);
                    envelope.remember(&entry, value.clone());
                    if shared.guard.still_valid(&leader.ticket) {
                        writes.push((n, entry));
                    }
                    outcomes.push(Ok(Some(value)));
                }
                Err(error) => outcomes.push(Err(error.into())),
            }
        }
        if !writes.is_empty() {
            let entries: Vec<(&str, Entry)> = writes
                .iter()
                .map(|(n, entry)| (leaders[*n].1.key(), entry.clone()))
                .collect();
            let tickets: Vec<Ticket> = writes.iter().map(|(n, _)| leaders[*n].1.ticket).collect();
            let written = self.write_loaded(&entries, &tickets, failed, 0).await;
            for ((n, _), result) in writes.iter().zip(written) {
                if let Err(error) = result {
                    outcomes[*n] = Err(error);
                }
            }
        }

        // Every flight ends with its key's outcome.
        leaders
            .into_iter()
            .zip(outcomes)
            .map(|((i, leader), outcome)| match outcome {
                Ok(Some(value)) => {
                    leader.finish(Ok(value.clone() as Arc<dyn Any + Send + Sync>));
                    (i, Ok(Some(T::clone(&value))))
                }
                Ok(None) => {
                    leader.finish(Ok(Arc::new(Absent)));
                    (i, Ok(None))
                }
                Err(error) => {
                    leader.finish(Err(error.clone()));
                    (i, Err(error))
                }
            })
            .collect()
    }
}

/// What a batch caller gets from the load it waited on: the value, "the
/// loader did not return it", or its error; `None` if another type was
/// loaded under the key (then this call loads its own).
fn followed<T>(outcome: Outcome) -> Option<Result<Option<T>>>
where
    T: Clone + Send + Sync + 'static,
{
    match outcome {
        Err(error) => Some(Err(error)),
        Ok(shared) => match shared.downcast::<T>() {
            Ok(value) => Some(Ok(Some(T::clone(&value)))),
            Err(other) if other.is::<Absent>() => Some(Ok(None)),
            Err(_) => None,
        },
    }
}

/// The distinct keys, in order of first appearance, and for each key its
/// distinct key's index.
fn dedup<'k>(keys: &[&'k str]) -> (Vec<&'k str>, Vec<usize>) {
    let mut index: HashMap<&str, usize> = HashMap::with_capacity(keys.len());
    let mut distinct = Vec::with_capacity(keys.len());
    let slots = keys
        .iter()
        .map(|key| {
            *index.entry(key).or_insert_with(|| {
                distinct.push(*key);
                distinct.len() - 1
            })
        })
        .collect();
    (distinct, slots)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dedup_keeps_the_first_appearance_order() {
        let (distinct, slots) = dedup(&["b", "a", "b", "c", "a"]);
        assert_eq!(distinct, ["b", "a", "c"]);
        assert_eq!(slots, [0, 1, 0, 2, 1]);
    }
}
