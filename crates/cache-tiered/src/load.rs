//! Loading: `get_or_compute`, single-flight, fail-safe, loader timeouts,
//! eager refresh, and caching what loaders return.

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
use tracing::{Instrument, Span};

use crate::cache::{LoadOptions, TierSet};
use crate::entry::{Fetched, Stale};
use crate::envelope::{Envelope, Freshness, Life, life_of, relive};
use crate::error::{LoadError, Typed};
use crate::fleet::FleetTurn;
use crate::flight::{Leader, Outcome, Role};
use crate::guard::Ticket;
use crate::observe::{note, op_span};
use crate::read::{StaleCopy, Top, Walk, answered};
use crate::tier::Call;
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
    ///
    /// The cache's [`fail_safe`](crate::TieredCacheBuilder::fail_safe) and
    /// [`hard_timeout`](crate::TieredCacheBuilder::hard_timeout) apply. The
    /// loader may borrow, so nothing runs in the background: for a soft
    /// timeout and eager refresh, and to tell a stale value from a fresh
    /// one, call through [`entry`](Self::entry).
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
        // The hit first, as `compute` does, but returning the value itself:
        // this is the second-hottest path there is. A carried value is
        // cloned straight into the answer, as `get` does.
        // The span after the read, as `get` makes it.
        let top = self.ask_top(key, 0);
        if let Some(value) = self.carried::<T>(&top) {
            self.top_hit(key);
            return Ok(value.clone());
        }
        let top = match self.read_top_rest::<T>(key, top) {
            Top::Live(value, freshness) => {
                self.top_hit(key);
                return Ok(self.hit(value, freshness).value);
            }
            Top::Below(top) => answered(top),
        };
        let span = op_span!(&self.shared.observe, "cache.get_or_compute", key);
        let options = &self.defaults_for(key).load;
        let ttl = &|_: &T| ttl;
        let fetched = Box::pin(self.compute_below(key, &[], ttl, options, loader, 0, top))
            .instrument(span.clone())
            .await;
        finish(&span, &fetched);
        fetched.map(Fetched::into_value)
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
        let typed = || async move { loader().await.map_err(|error| Typed(Arc::new(error))) };
        let options = &self.defaults_for(key).load;
        self.compute(key, &[], &|_: &T| ttl, options, typed)
            .await
            .map(Fetched::into_value)
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
        let options = &self.defaults_for(key).load;
        self.compute(key, tags, &|_: &T| ttl, options, loader)
            .await
            .map(Fetched::into_value)
    }

    /// The load path of every `get_or_compute` variant that may borrow its
    /// loader (so runs it in the caller's task); `ttl` chooses the TTL from
    /// the loaded value (fixed, negative or adaptive).
    pub(crate) async fn compute<T, F, Fut, E>(
        &self,
        key: &str,
        tags: &[&str],
        ttl: &(dyn Fn(&T) -> Duration + Send + Sync),
        options: &LoadOptions,
        loader: F,
    ) -> Result<Fetched<T>>
    where
        T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let excluded = self.excluded(options)?;
        let top = match self.read_top::<T>(key, excluded) {
            Top::Live(value, freshness) => {
                self.top_hit(key);
                return Ok(self.hit(value, freshness));
            }
            Top::Below(top) => answered(top),
        };
        let span = op_span!(&self.shared.observe, "cache.get_or_compute", key);
        // The rest boxed: a hit's future stays small, and it is moved into
        // every caller's.
        let fetched = Box::pin(self.compute_below(key, tags, ttl, options, loader, excluded, top))
            .instrument(span.clone())
            .await;
        finish(&span, &fetched);
        fetched
    }

    /// A loader ended after running since `started`, with `outcome`.
    pub(crate) fn loaded(&self, started: tokio::time::Instant, span: &Span, outcome: &'static str) {
        let elapsed = started.elapsed();
        if let Some(latency) = &self.shared.load_latency {
            latency.record(elapsed);
        }
        #[cfg(feature = "metrics")]
        if let Some(histogram) = &self.shared.load_histogram {
            histogram.record(elapsed.as_secs_f64());
        }
        span.record("outcome", outcome);
    }

    /// The span of a load served by the top tier (made after the read).
    #[inline]
    fn top_hit(&self, key: &str) {
        // As `get`'s hit: the level check first.
        if tracing::level_enabled!(tracing::Level::DEBUG) {
            let span = op_span!(&self.shared.observe, "cache.get_or_compute", key);
            if !span.is_disabled() {
                span.record("tier", self.shared.tiers[0].name());
                span.record("outcome", "hit");
            }
        }
    }

    /// [`compute`](Self::compute) once the top tier had no live value.
    #[allow(clippy::too_many_arguments)]
    async fn compute_below<T, F, Fut, E>(
        &self,
        key: &str,
        tags: &[&str],
        ttl: &(dyn Fn(&T) -> Duration + Send + Sync),
        options: &LoadOptions,
        loader: F,
        excluded: TierSet,
        top: Option<Call<Option<Entry>>>,
    ) -> Result<Fetched<T>>
    where
        T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let shared = &*self.shared;
        let found = self
            .lookup_below::<T>(key, top, options.fail_safe.is_some(), excluded)
            .await?;
        if let Some((value, freshness)) = found.value {
            note("outcome", "hit");
            return Ok(self.hit(value, freshness));
        }
        let mut fallback = Fallback::new(found.stale, found.ticket);
        let mut failed = found.failed;
        let envelope = self.envelope::<T>();
        let mut loader = Some(loader);
        loop {
            let leader = match shared.flights.join(key, &shared.guard, shared.clock.now()) {
                Role::Leader(leader) => leader,
                Role::Follower(follower) => match follower.wait().await {
                    // The leader went away without a result (cancelled, or
                    // its flight went stale): try again, perhaps leading.
                    None => continue,
                    Some(outcome) => match self.followed(outcome, &mut fallback) {
                        Some(done) => return done,
                        // Another type was loaded under this key: load ours alone.
                        None => {
                            let loader = loader.take().expect("a follower never used its loader");
                            return self
                                .load_alone(key, tags, ttl, options, loader, failed, fallback)
                                .await;
                        }
                    },
                },
            };
            let leader = match self
                .recheck::<T>(leader, envelope, &mut failed, excluded)
                .await
            {
                Ok(value) => return Ok(Fetched::fresh(value)),
                Err(leader) => leader,
            };
            let loader = loader.take().expect("a caller leads at most once");
            let outcome = self
                .lead(
                    leader,
                    key,
                    tags,
                    ttl,
                    options,
                    envelope,
                    loader,
                    failed,
                    fallback.as_ref(),
                    true,
                )
                .await;
            // The waiters got an error already; the panic goes on here.
            let loaded = outcome.unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            return self.settle(loaded, fallback);
        }
    }

    /// The load path of calls through [`entry`](Self::entry), whose loader
    /// is `'static` and so may run in a task of its own: a caller with a
    /// stale value leaves at the soft timeout while the load goes on, and
    /// a read in a value's eager-refresh window starts a background load.
    /// Without either option, it is [`compute`](Self::compute).
    pub(crate) async fn compute_detached<T, F, Fut, E>(
        &self,
        key: &str,
        tags: &[&str],
        ttl: Arc<dyn Fn(&T) -> Duration + Send + Sync>,
        options: LoadOptions,
        loader: F,
    ) -> Result<Fetched<T>>
    where
        S: 'static,
        T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
    {
        options.validate()?;
        if options.soft_timeout.is_none() && options.eager_refresh.is_none() {
            return self.compute(key, tags, &*ttl, &options, loader).await;
        }
        let span = op_span!(&self.shared.observe, "cache.get_or_compute", key);
        let fetched = self
            .compute_detached_in_span(key, tags, ttl, options, loader)
            .instrument(span.clone())
            .await;
        finish(&span, &fetched);
        fetched
    }

    /// [`compute_detached`](Self::compute_detached) with a soft timeout or
    /// eager refresh, in the call's span.
    async fn compute_detached_in_span<T, F, Fut, E>(
        &self,
        key: &str,
        tags: &[&str],
        ttl: Arc<dyn Fn(&T) -> Duration + Send + Sync>,
        options: LoadOptions,
        loader: F,
    ) -> Result<Fetched<T>>
    where
        S: 'static,
        T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
    {
        let shared = &*self.shared;
        let excluded = self.excluded(&options)?;
        let (mut fallback, mut failed) = (None, 0);
        let found = match self.read_top::<T>(key, excluded) {
            Top::Live(value, freshness) => {
                note("tier", shared.tiers[0].name());
                Some((value, freshness))
            }
            Top::Below(top) => {
                let found = self
                    .lookup_below::<T>(key, answered(top), options.fail_safe.is_some(), excluded)
                    .await?;
                fallback = Fallback::new(found.stale, found.ticket);
                failed = found.failed;
                found.value
            }
        };
        if let Some((value, freshness)) = found {
            note("outcome", "hit");
            if freshness == Freshness::RefreshDue {
                self.refresh(key, tags, ttl, options, loader);
            }
            return Ok(self.hit(value, freshness));
        }
        // A soft timeout only ever hands out a stale value: without one, a
        // caller waits for the load (up to the hard timeout).
        let soft = options.soft_timeout.filter(|_| fallback.is_some());
        let envelope = self.envelope::<T>();
        let mut loader = Some(loader);
        loop {
            let leader = match shared.flights.join(key, &shared.guard, shared.clock.now()) {
                Role::Leader(leader) => leader,
                Role::Follower(follower) => {
                    let waited = match soft {
                        None => follower.wait().await,
                        Some(soft) => match tokio::time::timeout(soft, follower.wait()).await {
                            Ok(waited) => waited,
                            Err(_elapsed) => return Ok(self.soft_timed_out(fallback)),
                        },
                    };
                    match waited {
                        None => continue,
                        Some(outcome) => match self.followed(outcome, &mut fallback) {
                            Some(done) => return done,
                            None => {
                                let loader =
                                    loader.take().expect("a follower never used its loader");
                                return self
                                    .load_alone(
                                        key, tags, &*ttl, &options, loader, failed, fallback,
                                    )
                                    .await;
                            }
                        },
                    }
                }
            };
            let leader = match self
                .recheck::<T>(leader, envelope, &mut failed, excluded)
                .await
            {
                Ok(value) => return Ok(Fetched::fresh(value)),
                Err(leader) => leader,
            };
            let loader = loader.take().expect("a caller leads at most once");
            let mut task = self.spawn_lead(
                leader,
                key,
                tags,
                ttl,
                options,
                loader,
                failed,
                fallback.clone(),
            );
            let joined = match soft {
                None => (&mut task).await,
                Some(soft) => match tokio::time::timeout(soft, &mut task).await {
                    Ok(joined) => joined,
                    // The load goes on in its task, and lands when it ends.
                    Err(_elapsed) => return Ok(self.soft_timed_out(fallback)),
                },
            };
            let loaded = match joined {
                Ok(Ok(loaded)) => loaded,
                Ok(Err(panic)) => std::panic::resume_unwind(panic),
                Err(cancelled) => Err(Error::Loader(Arc::new(cancelled))),
            };
            note("outcome", "loaded");
            return self.settle(loaded, fallback);
        }
    }

    /// Starts one background load of `key` for an eager refresh, unless a
    /// load of it is already running (that one is the refresh).
    fn refresh<T, F, Fut, E>(
        &self,
        key: &str,
        tags: &[&str],
        ttl: Arc<dyn Fn(&T) -> Duration + Send + Sync>,
        options: LoadOptions,
        loader: F,
    ) where
        S: 'static,
        T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
    {
        let shared = &*self.shared;
        let Role::Leader(leader) = shared.flights.join(key, &shared.guard, shared.clock.now())
        else {
            return;
        };
        let cache = self.clone();
        // A span of its own: the read that started it has returned.
        let span = op_span!(&shared.observe, "cache.refresh", key);
        span.follows_from(Span::current());
        let key = key.to_owned();
        let tags: Vec<String> = tags.iter().map(|tag| (*tag).to_owned()).collect();
        let refresh = async move {
            let envelope = cache.envelope::<T>();
            // Checked by the caller already.
            let excluded = cache.excluded(&options).unwrap_or(0);
            // A refresh that ended between our read and our leading has
            // replaced the value: nothing left to do.
            let recheck = cache
                .walk_one::<T>(&key, envelope, Walk::Recheck, None, excluded)
                .await;
            if matches!(recheck.value, Ok(Some(_))) && recheck.freshness != Freshness::RefreshDue {
                return;
            }
            cache.shared.counters.eager_refreshes.incr();
            let tags: Vec<&str> = tags.iter().map(String::as_str).collect();
            let outcome = cache
                .lead(
                    leader,
                    &key,
                    &tags,
                    &*ttl,
                    &options,
                    envelope,
                    loader,
                    recheck.failed_open,
                    None,
                    false,
                )
                .await;
            if outcome.is_err() {
                tracing::error!("an eager refresh's loader panicked");
            }
        };
        tokio::spawn(refresh.instrument(span));
    }

    /// Runs [`lead`](Self::lead) in a task of its own, so that the load
    /// outlives its caller.
    #[allow(clippy::too_many_arguments)]
    fn spawn_lead<T, F, Fut, E>(
        &self,
        leader: Leader,
        key: &str,
        tags: &[&str],
        ttl: Arc<dyn Fn(&T) -> Duration + Send + Sync>,
        options: LoadOptions,
        loader: F,
        failed: TierSet,
        fallback: Option<Fallback<T>>,
    ) -> tokio::task::JoinHandle<std::thread::Result<Result<Arc<T>>>>
    where
        S: 'static,
        T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
    {
        let cache = self.clone();
        let key = key.to_owned();
        let tags: Vec<String> = tags.iter().map(|tag| (*tag).to_owned()).collect();
        // The load's span is a child of the call's, even after the caller
        // left at its soft timeout.
        let parent = Span::current();
        let lead = async move {
            let tags: Vec<&str> = tags.iter().map(String::as_str).collect();
            let envelope = cache.envelope::<T>();
            cache
                .lead(
                    leader,
                    &key,
                    &tags,
                    &*ttl,
                    &options,
                    envelope,
                    loader,
                    failed,
                    fallback.as_ref(),
                    true,
                )
                .await
        };
        tokio::spawn(lead.instrument(parent))
    }

    /// The leader's part: runs the load, throttles the stale fallback if
    /// the loader failed, and hands the outcome to the waiters. A panic in
    /// the loader is caught and returned, the waiters told at once.
    #[allow(clippy::too_many_arguments)]
    async fn lead<T, F, Fut, E>(
        &self,
        leader: Leader,
        key: &str,
        tags: &[&str],
        ttl: &(dyn Fn(&T) -> Duration + Send + Sync),
        options: &LoadOptions,
        envelope: Envelope,
        loader: F,
        mut failed: TierSet,
        fallback: Option<&Fallback<T>>,
        fleet: bool,
    ) -> std::thread::Result<Result<Arc<T>>>
    where
        T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        // Fleet-wide single-flight (fleet.rs): another instance may be
        // loading this key. `_fleet_hold` releases our lock when dropped,
        // once the load is over. (Not for an eager refresh: the value it
        // replaces is still live in the shared tier, and would pass for
        // the other instance's.)
        let _fleet_hold = if fleet && !options.skip_shared {
            match self.fleet_turn::<T>(key, envelope, &mut failed).await {
                FleetTurn::Found(value) => {
                    let value = Arc::new(value);
                    leader.finish(Ok(value.clone()));
                    return Ok(Ok(value));
                }
                FleetTurn::Load(hold) => hold,
            }
        } else {
            None
        };
        let ticket = leader.ticket;
        let outcome = CatchUnwind(Box::pin(
            self.load(key, tags, ttl, options, envelope, loader, ticket, failed),
        ))
        .await;
        match &outcome {
            Ok(Ok(value)) => {
                note("outcome", "loaded");
                leader.finish(Ok(value.clone() as Arc<dyn Any + Send + Sync>));
            }
            Ok(Err(error)) => {
                if error.is_loader()
                    && let Some(fallback) = fallback
                {
                    // Before the waiters are released: whoever comes next
                    // finds the throttled value instead of loading again.
                    self.throttle(key, fallback, options).await;
                }
                leader.finish(Err(error.clone()));
            }
            Err(_panic) => leader.finish(Err(Error::LoaderPanicked)),
        }
        outcome
    }

    /// Looks at the top tier again after winning a flight: a flight that
    /// ended between our miss and our joining has filled it. A value found
    /// there ends the flight with it; otherwise the caller leads on.
    async fn recheck<T>(
        &self,
        leader: Leader,
        envelope: Envelope,
        failed: &mut TierSet,
        excluded: TierSet,
    ) -> Result<T, Leader>
    where
        T: DeserializeOwned + Clone + Send + Sync + 'static,
    {
        let recheck = self
            .walk_one::<T>(leader.key(), envelope, Walk::Recheck, None, excluded)
            .await;
        *failed |= recheck.failed_open;
        match recheck.value {
            Ok(Some(value)) => {
                self.shared.counters.coalesced.incr();
                note("outcome", "coalesced");
                leader.finish(Ok(Arc::new(value.clone())));
                Ok(value)
            }
            _ => Err(leader),
        }
    }

    /// Loads outside any flight: a waiter whose leader loaded another type
    /// under the key.
    #[allow(clippy::too_many_arguments)]
    async fn load_alone<T, F, Fut, E>(
        &self,
        key: &str,
        tags: &[&str],
        ttl: &(dyn Fn(&T) -> Duration + Send + Sync),
        options: &LoadOptions,
        loader: F,
        failed: TierSet,
        fallback: Option<Fallback<T>>,
    ) -> Result<Fetched<T>>
    where
        T: Serialize + Clone + Send + Sync + 'static,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let ticket = self.shared.guard.ticket(key, self.shared.clock.now());
        let envelope = self.envelope::<T>();
        let loaded = self
            .load(key, tags, ttl, options, envelope, loader, ticket, failed)
            .await;
        self.settle(loaded, fallback)
    }

    /// What a caller gets for a live value it found.
    fn hit<T>(&self, value: T, freshness: Freshness) -> Fetched<T> {
        if freshness == Freshness::Throttled {
            self.shared.counters.stale_served.incr();
            return Fetched {
                value,
                stale: Some(Stale::Throttled),
            };
        }
        Fetched::fresh(value)
    }

    /// What a waiter gets from its leader's outcome; `None` if the leader
    /// loaded another type under the key.
    fn followed<T>(
        &self,
        outcome: Outcome,
        fallback: &mut Option<Fallback<T>>,
    ) -> Option<Result<Fetched<T>>>
    where
        T: Clone + Send + Sync + 'static,
    {
        let counters = &self.shared.counters;
        note("outcome", "coalesced");
        match outcome {
            Err(error) => {
                counters.coalesced.incr();
                Some(self.settle(Err(error), fallback.take()))
            }
            Ok(shared) => match shared.downcast::<T>() {
                Ok(value) => {
                    counters.coalesced.incr();
                    Some(Ok(Fetched::fresh(T::clone(&value))))
                }
                Err(_) => None,
            },
        }
    }

    /// A load's outcome for its caller: the value, or with fail-safe the
    /// stale value in place of the loader's failure.
    fn settle<T: Clone>(
        &self,
        loaded: Result<Arc<T>>,
        fallback: Option<Fallback<T>>,
    ) -> Result<Fetched<T>> {
        match loaded {
            Ok(value) => Ok(Fetched::fresh(T::clone(&value))),
            Err(error) => match fallback {
                Some(fallback)
                    if error.is_loader() && self.shared.guard.still_valid(&fallback.ticket) =>
                {
                    self.shared.counters.stale_served.incr();
                    Ok(Fetched {
                        value: fallback.stale.value,
                        stale: Some(Stale::LoaderFailed(error)),
                    })
                }
                _ => Err(error),
            },
        }
    }

    /// The stale value, for a caller whose soft timeout passed.
    fn soft_timed_out<T>(&self, fallback: Option<Fallback<T>>) -> Fetched<T> {
        let fallback = fallback.expect("a soft timeout applies only with a fallback");
        self.shared.counters.stale_served.incr();
        Fetched {
            value: fallback.stale.value,
            stale: Some(Stale::SoftTimeout),
        }
    }

    /// After a failed load: gives the stale value a fresh spell of
    /// `throttle` in this instance's local tiers, marked throttled, so that
    /// the next callers are served it without calling the failing loader.
    /// Not in a shared tier: it may hold a newer value by now, and another
    /// instance's back end may be healthy.
    async fn throttle<T>(&self, key: &str, fallback: &Fallback<T>, options: &LoadOptions) {
        let shared = &*self.shared;
        let excluded = self.excluded(options).unwrap_or(0);
        let throttle = options.throttle;
        let clock = &*shared.clock;
        let now = clock.now();
        let stored = &fallback.stale.entry;
        let (Some(expiry), Some(_)) = (stored.expiry(), life_of(stored)) else {
            return;
        };
        let fresh_until = now.checked_add(throttle).unwrap_or(expiry).min(expiry);
        let throttled = Life {
            stale_for: expiry.saturating_duration_since(fresh_until),
            refresh_for: None,
            throttled: true,
        };
        let Some(entry) = relive(stored, throttled) else {
            return;
        };
        let local = |(depth, tier): &(usize, &crate::Tier)| {
            !tier.layer.is_shared() && excluded & (1 << depth) == 0
        };
        for (_, tier) in shared.tiers.iter().enumerate().rev().filter(local) {
            if !shared.guard.still_valid(&fallback.ticket) {
                return;
            }
            let entry = tier.cap(key, entry.clone(), now);
            let since = Some(fallback.ticket.taken_at);
            if let Call::Done(written) = tier.set_many(clock, &[(key, entry)], since).await
                && written.iter().all(Result::is_ok)
            {
                self.keep_fill(tier, key, &fallback.ticket).await;
            }
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
        options: &LoadOptions,
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
        let excluded = self.excluded(options)?;
        shared.counters.loads.incr();
        // Before the loader: what it reads is at least as new as these.
        let stamps = self.stamp(key, tags).await?;
        // The loader in a span of its own: what it logs, and the spans of
        // the queries it makes, sit under it.
        let span = op_span!(&shared.observe, "cache.load", key);
        let started = tokio::time::Instant::now();
        // The loader's error boxed at once: a load may run in a task of its
        // own, where only what is `Send` may live across an await.
        let loaded: Result<T, Box<dyn std::error::Error + Send + Sync>> = match options.hard_timeout
        {
            None => loader().instrument(span.clone()).await.map_err(Into::into),
            Some(limit) => {
                match tokio::time::timeout(limit, loader().instrument(span.clone())).await {
                    Ok(loaded) => loaded.map_err(Into::into),
                    Err(_elapsed) => {
                        self.loaded(started, &span, "timeout");
                        shared.counters.load_errors.incr();
                        return Err(Error::LoaderTimeout(limit));
                    }
                }
            }
        };
        let value = match loaded {
            Ok(value) => {
                self.loaded(started, &span, "ok");
                Arc::new(value)
            }
            Err(error) => {
                self.loaded(started, &span, "error");
                shared.counters.load_errors.incr();
                return Err(Error::Loader(Arc::from(error)));
            }
        };
        let (expiry, life) = self.lifetime(ttl(&value), options);
        let entry = Entry::new(envelope.encode(&shared.serializer, &*value, &stamps, life)?)
            .expires_at(expiry);
        envelope.remember(&entry, value.clone());
        if shared.guard.still_valid(&ticket) {
            for result in self
                .write_through(&[(key, entry)], Some(&ticket), failed, excluded)
                .await
            {
                result?;
            }
        }
        Ok(value)
    }
}

/// Records a finished `get_or_compute`'s outcome where the call itself
/// knows it best: a stale value served, or an error.
fn finish<T>(span: &Span, fetched: &Result<Fetched<T>>) {
    match fetched {
        Err(_) => _ = span.record("outcome", "error"),
        Ok(fetched) if fetched.stale.is_some() => _ = span.record("outcome", "stale"),
        Ok(_) => {}
    }
}

/// A stale value a call may fall back on, and the ticket taken before it
/// was read: it is served (and throttled) only while no mutation of the
/// key intervened since.
pub(crate) struct Fallback<T> {
    stale: StaleCopy<T>,
    ticket: Ticket,
}

impl<T> Fallback<T> {
    fn new(stale: Option<StaleCopy<T>>, ticket: Option<Ticket>) -> Option<Self> {
        Some(Fallback {
            stale: stale?,
            ticket: ticket?,
        })
    }
}

impl<T: Clone> Clone for Fallback<T> {
    fn clone(&self) -> Self {
        Fallback {
            stale: StaleCopy {
                value: self.stale.value.clone(),
                entry: self.stale.entry.clone(),
            },
            ticket: self.ticket,
        }
    }
}

/// Runs a future, catching a panic in it as a value (what `futures`'
/// `catch_unwind` does, without the dependency).
pub(crate) struct CatchUnwind<F>(pub(crate) Pin<Box<F>>);

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
