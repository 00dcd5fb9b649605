//! Loading: `get_or_compute`, single-flight, and caching what loaders return.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use cache_core::{Entry, Serializer};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::cache::TierSet;
use crate::envelope::Envelope;
use crate::error::{LoadError, Typed};
use crate::fleet::FleetTurn;
use crate::flight::Role;
use crate::guard::Ticket;
use crate::read::Walk;
use crate::{Error, Result, TieredCache};

impl<S: Serializer> TieredCache<S> {
    /// The value under `key`; on a miss, runs `loader`, caches its value for
    /// `ttl` and returns it.
    ///
    /// However many callers miss the same key at once, one of them runs its
    /// loader and the others wait for that result. A loader error reaches
    /// every waiter and is not cached. If the caller running the loader is
    /// cancelled, a waiting caller runs its own loader; nobody hangs. If the
    /// loader panics, the waiters get [`Error::LoaderPanicked`] at once and
    /// the panic goes on in the caller that ran it.
    ///
    /// A caller that starts after a delete, invalidation or write of the key
    /// has returned never waits on a load that started before it: it loads
    /// afresh. If the key is deleted, invalidated or written while the
    /// loader runs, the loaded value is returned but not cached: it may
    /// already be stale.
    ///
    /// A tier whose read failed open in this call (a dead or hung Redis, an
    /// open breaker) is not written in it either, and counts as a failed
    /// write: a caller pays for a failing tier once, never a timeout on the
    /// read and another on the write.
    pub async fn get_or_compute<T, F, Fut, E>(
        &self,
        key: &str,
        ttl: Duration,
        loader: F,
    ) -> Result<T>
    where
        T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        self.compute(key, &[], &|_: &T| ttl, loader).await
    }

    /// [`get_or_compute`](Self::get_or_compute) with the loader's error
    /// typed: a loader failure arrives as [`LoadError::Loader`] holding the
    /// loader's own error, shared by every caller that waited on it, with no
    /// downcasting; anything else as [`LoadError::Cache`].
    ///
    /// ```
    /// use std::time::Duration;
    /// use cache_memory::MemoryLayer;
    /// use cache_tiered::{LoadError, TieredCache};
    ///
    /// #[derive(Debug, thiserror::Error)]
    /// #[error("offer {0} not found")]
    /// struct NotFound(u64);
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let cache = TieredCache::builder().layer(MemoryLayer::new()).build().unwrap();
    /// let loaded = cache
    ///     .try_get_or_compute("offer:7", Duration::from_secs(60), || async {
    ///         Err::<String, _>(NotFound(7))
    ///     })
    ///     .await;
    /// match loaded {
    ///     Err(LoadError::Loader(error)) => assert_eq!(error.0, 7),
    ///     other => panic!("{other:?}"),
    /// }
    /// # }
    /// ```
    pub async fn try_get_or_compute<T, F, Fut, E>(
        &self,
        key: &str,
        ttl: Duration,
        loader: F,
    ) -> Result<T, LoadError<E>>
    where
        T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: std::error::Error + Send + Sync + 'static,
    {
        self.compute_typed(key, &[], &|_: &T| ttl, loader).await
    }

    /// [`compute`](Self::compute) with the loader's error carried through
    /// the flight as itself, and sorted back out for the caller.
    pub(crate) async fn compute_typed<T, F, Fut, E>(
        &self,
        key: &str,
        tags: &[&str],
        ttl: &(dyn Fn(&T) -> Duration + Send + Sync),
        loader: F,
    ) -> Result<T, LoadError<E>>
    where
        T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: std::error::Error + Send + Sync + 'static,
    {
        let typed = || async move { loader().await.map_err(|error| Typed(Arc::new(error))) };
        self.compute(key, tags, ttl, typed)
            .await
            .map_err(LoadError::sort)
    }

    /// [`get_or_compute`](Self::get_or_compute) for a tagged value (see
    /// [`set_tagged`](Self::set_tagged)): the tag versions are read before
    /// the loader runs, so a tag invalidated while it runs leaves the loaded
    /// value stale from the start.
    pub async fn get_or_compute_tagged<T, F, Fut, E>(
        &self,
        key: &str,
        tags: &[&str],
        ttl: Duration,
        loader: F,
    ) -> Result<T>
    where
        T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        self.compute(key, tags, &|_: &T| ttl, loader).await
    }

    /// The load path of every `get_or_compute` variant; `ttl` chooses the
    /// TTL from the loaded value (fixed, negative or adaptive).
    pub(crate) async fn compute<T, F, Fut, E>(
        &self,
        key: &str,
        tags: &[&str],
        ttl: &(dyn Fn(&T) -> Duration + Send + Sync),
        loader: F,
    ) -> Result<T>
    where
        T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let shared = &*self.shared;
        // Tiers whose read failed (a dead or hung Redis) are not written in
        // this call either: a caller pays for a failing tier once, not twice.
        let (found, mut failed) = self.get_noting_failures::<T>(key).await?;
        if let Some(value) = found {
            return Ok(value);
        }
        let envelope = self.envelope::<T>();
        let counters = &shared.counters;
        let mut loader = Some(loader);
        loop {
            let leader = match shared.flights.join(key, &shared.guard, shared.clock.now()) {
                Role::Leader(leader) => leader,
                Role::Follower(follower) => match follower.wait().await {
                    // The leader went away without a result (cancelled, or
                    // its flight went stale): try again, perhaps leading.
                    None => continue,
                    Some(Err(error)) => {
                        counters.coalesced.incr();
                        return Err(error);
                    }
                    Some(Ok(shared)) => match shared.downcast::<T>() {
                        Ok(value) => {
                            counters.coalesced.incr();
                            return Ok(T::clone(&value));
                        }
                        // Another type was loaded under this key: load ours alone.
                        Err(_) => {
                            let loader = loader.take().expect("a follower never used its loader");
                            let ticket = self.shared.guard.ticket(key, self.shared.clock.now());
                            return self
                                .load(key, tags, ttl, envelope, loader, ticket, failed)
                                .await
                                .map(|v| T::clone(&v));
                        }
                    },
                },
            };
            // A flight that ended between our miss and our joining has filled
            // the top tier; look there before loading again.
            let mut recheck = self.walk::<T>(&[key], envelope, Walk::Recheck, None).await;
            failed |= recheck.failed_open;
            if let Some(Ok(Some(value))) = recheck.values.pop() {
                counters.coalesced.incr();
                leader.finish(Ok(Arc::new(value.clone())));
                return Ok(value);
            }
            // Fleet-wide single-flight (fleet.rs): another instance may be
            // loading this key; `_fleet_hold` releases our lock when dropped.
            let _fleet_hold = match self.fleet_turn::<T>(key, envelope, &mut failed).await {
                FleetTurn::Found(value) => {
                    leader.finish(Ok(Arc::new(value.clone())));
                    return Ok(value);
                }
                FleetTurn::Load(hold) => hold,
            };
            let loader = loader.take().expect("a caller leads at most once");
            let ticket = leader.ticket;
            let outcome = CatchUnwind(Box::pin(
                self.load(key, tags, ttl, envelope, loader, ticket, failed),
            ))
            .await;
            return match outcome {
                Ok(outcome) => {
                    leader.finish(
                        outcome
                            .clone()
                            .map(|value| value as Arc<dyn Any + Send + Sync>),
                    );
                    outcome.map(|value| T::clone(&value))
                }
                Err(panic) => {
                    // The waiters get an error now; the panic goes on here.
                    leader.finish(Err(Error::LoaderPanicked));
                    std::panic::resume_unwind(panic)
                }
            };
        }
    }

    /// Runs a loader and caches its value, unless the key changed since
    /// `ticket` was taken, skipping the tiers in `failed`.
    #[allow(clippy::too_many_arguments)]
    async fn load<T, F, Fut, E>(
        &self,
        key: &str,
        tags: &[&str],
        ttl: &(dyn Fn(&T) -> Duration + Send + Sync),
        envelope: Envelope,
        loader: F,
        ticket: Ticket,
        failed: TierSet,
    ) -> Result<Arc<T>>
    where
        T: Serialize + Send + Sync + 'static,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let shared = &*self.shared;
        shared.counters.loads.incr();
        // Before the loader: what it reads is at least as new as these.
        let stamps = self.stamp(tags).await?;
        let loaded = match shared.loader_timeout {
            None => loader().await,
            Some(limit) => match tokio::time::timeout(limit, loader()).await {
                Ok(loaded) => loaded,
                Err(_elapsed) => {
                    shared.counters.load_errors.incr();
                    return Err(Error::LoaderTimeout(limit));
                }
            },
        };
        let value = match loaded {
            Ok(value) => Arc::new(value),
            Err(error) => {
                shared.counters.load_errors.incr();
                return Err(Error::Loader(Arc::from(error.into())));
            }
        };
        let entry = Entry::new(envelope.encode_tagged(&shared.serializer, &*value, &stamps)?)
            .expires_at(self.value_expiry(ttl(&value)));
        envelope.remember(&entry, value.clone());
        if shared.guard.still_valid(&ticket) {
            for result in self
                .write_through(&[(key, entry)], Some(&ticket), failed)
                .await
            {
                result?;
            }
        }
        Ok(value)
    }
}

/// Runs a future, catching a panic in it as a value (what `futures`'
/// `catch_unwind` does, without the dependency).
struct CatchUnwind<F>(Pin<Box<F>>);

impl<F: Future> Future for CatchUnwind<F> {
    type Output = std::thread::Result<F::Output>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = self.0.as_mut();
        // Unwind safety: after a panic the future is never polled again, and
        // what it shared (the flight) is ended by the caller at once.
        match std::panic::catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(output)) => Poll::Ready(Ok(output)),
            Err(panic) => Poll::Ready(Err(panic)),
        }
    }
}
