//! Cache warming: loading keys into the tiers before requests ask for
//! them, from a loader or from the shared tiers, with bounded concurrency,
//! priorities, progress, a summary, cancellation and periodic re-warming.
//!
//! A warm-up is a set of *units* (one key for a loader job, one batch of
//! keys for a copy from the shared tiers), sorted by priority and run as
//! tasks of a `JoinSet`, at most `concurrency` at a time. The task that
//! awaits the `JoinSet` (the caller of [`CacheWarmer::run`]) tallies the
//! outcomes, so progress is reported from one place, in order.
//!
//! A loader's value is cached the way `get_or_compute` caches one (a
//! *fill*, under a ticket taken before the loader ran, through the same
//! single-flight), so a warm-up never puts back a value that a delete,
//! invalidation or write replaced while its loader ran, and never loads a
//! key a request is loading at the same moment.

use std::any::Any;
use std::cmp::Reverse;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use cache_core::{Entry, Operation, Postcard, Serializer};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::cache::{LoadOptions, TierSet};
use crate::envelope::{Freshness, Life, life_of};
use crate::flight::Role;
use crate::guard::Ticket;
use crate::read::Walk;
use crate::tier::Call;
use crate::{Error, Result, TieredCache};

/// How many tasks a warm-up runs at once unless told otherwise.
const DEFAULT_CONCURRENCY: usize = 16;

/// How many keys one call to a tier reads or writes when copying from the
/// shared tiers, unless told otherwise.
const DEFAULT_BATCH: usize = 100;

/// How many failures a [`WarmSummary`] keeps, with their keys; the others
/// are counted (and logged at DEBUG).
const ERRORS_KEPT: usize = 16;

/// Which tiers a warm-up's loader jobs write to (and look in, to skip
/// what is already cached).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum WarmTiers {
    /// Every tier, the shared ones first, as a load writes.
    #[default]
    All,
    /// This instance's local tiers only (whose layer is not
    /// [shared](cache_core::CacheLayer::is_shared), such as the memory L1).
    Local,
    /// The shared tiers only (such as Redis): one instance warming the
    /// shared tier for the whole fleet.
    Shared,
}

/// Counters of a warm-up in progress; every key ends in exactly one of
/// `loaded`, `skipped`, `missing`, `superseded` or `failed`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WarmProgress {
    /// Keys in the warm-up, over every job.
    pub total: u64,
    /// Keys whose value was written: loaded and cached, or copied from a
    /// shared tier into the local ones.
    pub loaded: u64,
    /// Keys already cached (see [`CacheWarmer::skip_cached`]), or loaded by
    /// a request of the same process while the warm-up waited for it.
    pub skipped: u64,
    /// Keys the source has no value for: the loader answered `None`, or no
    /// shared tier holds a live value (a copy from the shared tiers).
    pub missing: u64,
    /// Keys set, deleted or invalidated while their value was loaded or
    /// copied: the value may be stale, so it was not cached.
    pub superseded: u64,
    /// Keys whose loader failed, timed out or panicked, or whose tiers
    /// failed (see [`WarmSummary::errors`]).
    pub failed: u64,
    /// Since the warm-up started.
    pub elapsed: Duration,
}

impl WarmProgress {
    /// Keys finished, whatever their outcome.
    pub fn done(&self) -> u64 {
        self.loaded + self.skipped + self.missing + self.superseded + self.failed
    }

    /// The share of keys finished, from 0 to 1 (1 for a warm-up of no key).
    pub fn fraction(&self) -> f64 {
        if self.total == 0 {
            1.0
        } else {
            self.done() as f64 / self.total as f64
        }
    }
}

/// What a warm-up did, once it is over.
///
/// `loaded + skipped + missing + superseded + failed` keys are done; the
/// rest of `total` were not started, or were stopped mid-load, because
/// the warm-up was cancelled.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct WarmSummary {
    /// Keys in the warm-up.
    pub total: u64,
    /// See [`WarmProgress::loaded`].
    pub loaded: u64,
    /// See [`WarmProgress::skipped`].
    pub skipped: u64,
    /// See [`WarmProgress::missing`].
    pub missing: u64,
    /// See [`WarmProgress::superseded`].
    pub superseded: u64,
    /// See [`WarmProgress::failed`].
    pub failed: u64,
    /// Whether the warm-up was cancelled before it finished.
    pub cancelled: bool,
    /// How long it ran.
    pub elapsed: Duration,
    /// The first failures (up to 16), with their keys, in the order they
    /// happened: [`Error::Loader`], [`Error::LoaderTimeout`],
    /// [`Error::LoaderPanicked`], or a tier's error.
    pub errors: Vec<(String, Error)>,
}

impl WarmSummary {
    /// Keys finished, whatever their outcome.
    pub fn done(&self) -> u64 {
        self.loaded + self.skipped + self.missing + self.superseded + self.failed
    }
}

impl fmt::Display for WarmSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} of {} keys in {:.2?}{}: {} loaded, {} skipped (cached), {} missing, \
             {} superseded, {} failed",
            self.done(),
            self.total,
            self.elapsed,
            if self.cancelled { " (cancelled)" } else { "" },
            self.loaded,
            self.skipped,
            self.missing,
            self.superseded,
            self.failed,
        )
    }
}

/// A set of keys to warm, where their values come from, and its priority;
/// add it to a [`CacheWarmer`] with [`job`](CacheWarmer::job).
///
/// ```
/// use std::time::Duration;
/// use cache_memory::MemoryLayer;
/// use cache_tiered::{TieredCache, WarmJob};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), cache_tiered::Error> {
/// let cache = TieredCache::builder().layer(MemoryLayer::new()).build()?;
/// let rating = |key: String| async move {
///     // A query; `None` when there is no such offer.
///     Ok::<_, std::io::Error>((key != "rating:offer:404").then_some(4.5f32))
/// };
/// let hot = WarmJob::new(["rating:offer:7", "rating:offer:404"], rating)
///     .priority(10)
///     .ttl(Duration::from_secs(600));
/// let summary = cache.warmer().job(hot).run().await?;
/// assert_eq!((summary.loaded, summary.missing), (1, 1));
/// # Ok(())
/// # }
/// ```
#[must_use]
pub struct WarmJob<S: Serializer = Postcard> {
    keys: Vec<String>,
    priority: i32,
    ttl: Option<Duration>,
    source: Source<S>,
}

enum Source<S: Serializer> {
    /// One loader call per key.
    Loader(Arc<dyn KeyLoader<S>>),
    /// Copies from the shared tiers into the local ones, in batches.
    Shared { batch: usize },
}

impl<S: Serializer> WarmJob<S> {
    /// Warms `keys` with `loader`, called once per key (not for a key
    /// skipped as already cached): `Ok(Some(value))` is cached,
    /// `Ok(None)` means the source has no such thing (counted in
    /// [`missing`](WarmProgress::missing), nothing cached), an error is
    /// counted in [`failed`](WarmProgress::failed) and nothing is cached.
    ///
    /// The loader is `Fn`, `Send + Sync + 'static`, and its future
    /// `Send + 'static`: calls run at once, each in a task of its own.
    pub fn new<T, F, Fut, E, I>(keys: I, loader: F) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
        T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
        F: Fn(String) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Option<T>, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
    {
        WarmJob {
            keys: keys.into_iter().map(Into::into).collect(),
            priority: 0,
            ttl: None,
            source: Source::Loader(Arc::new(TypedLoader {
                loader,
                _value: PhantomData::<fn() -> T>,
            })),
        }
    }

    /// Copies `keys` from the shared tiers into this instance's local
    /// tiers, as a read would (warming a new instance's L1 from Redis at
    /// start-up): in batches (one `get_many` of the shared tier, one
    /// `set_many` of each local tier per batch), keeping each entry's
    /// remaining expiry (capped by each tier's
    /// [`ttl_cap`](crate::Tier::ttl_cap)), whatever type its value has.
    ///
    /// A key no shared tier holds a live value for is
    /// [`missing`](WarmProgress::missing); one a local tier already holds
    /// is [`skipped`](WarmProgress::skipped) (unless
    /// [`skip_cached`](CacheWarmer::skip_cached) is off). The warmer's
    /// [`tiers`](CacheWarmer::tiers) and [`ttl`](CacheWarmer::ttl) do not
    /// apply. The cache needs a shared tier and a local one.
    pub fn from_shared<I>(keys: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        WarmJob {
            keys: keys.into_iter().map(Into::into).collect(),
            priority: 0,
            ttl: None,
            source: Source::Shared {
                batch: DEFAULT_BATCH,
            },
        }
    }

    /// Jobs of higher priority start first. With a concurrency of `n`, a
    /// key starts only once every key of higher priority has started (not
    /// finished): up to `n - 1` keys of higher priority may still be
    /// loading. Keys of one priority start in the order they were added.
    /// Default: 0.
    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }

    /// How long this job's values live. Default: the warmer's
    /// [`ttl`](CacheWarmer::ttl). A copy from the shared tiers keeps each
    /// entry's own expiry instead.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// How many keys one tier call handles when copying from the shared
    /// tiers ([`from_shared`](Self::from_shared)); each batch takes one
    /// slot of the warmer's concurrency. No effect on a loader job.
    /// Default: 100.
    pub fn batch_size(mut self, keys: usize) -> Self {
        if let Source::Shared { batch } = &mut self.source {
            *batch = keys;
        }
        self
    }
}

impl<S: Serializer> fmt::Debug for WarmJob<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let source = match &self.source {
            Source::Loader(_) => "loader".to_owned(),
            Source::Shared { batch } => format!("shared tiers, {batch} keys a batch"),
        };
        f.debug_struct("WarmJob")
            .field("keys", &self.keys.len())
            .field("priority", &self.priority)
            .field("ttl", &self.ttl)
            .field("source", &source)
            .finish()
    }
}

/// Preloads keys into a [`TieredCache`]; start one with
/// [`TieredCache::warmer`].
///
/// Add [jobs](Self::job) (keys and where their values come from, with a
/// priority), choose the [concurrency](Self::concurrency), the
/// [tiers](Self::tiers) and the [TTL](Self::ttl), then
/// [`run`](Self::run) it in the current task, [`start`](Self::start) it in
/// a task of its own (a [`WarmHandle`] to cancel it or wait for it), or
/// re-run it [`every`](Self::every) period.
///
/// ```
/// use std::time::Duration;
/// use cache_memory::MemoryLayer;
/// use cache_tiered::{TieredCache, WarmJob};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), cache_tiered::Error> {
/// let cache = TieredCache::builder().layer(MemoryLayer::new()).build()?;
/// // A slow query, in real life.
/// let offer = |key: String| async move { Ok::<_, std::io::Error>(Some(format!("title of {key}"))) };
///
/// let bestsellers = ["offer:7", "offer:9"];
/// let others = (10..1000).map(|id| format!("offer:{id}"));
/// let summary = cache
///     .warmer()
///     .concurrency(32)
///     .job(WarmJob::new(bestsellers, offer).priority(10)) // these start first
///     .keys(others, offer)
///     .ttl(Duration::from_secs(600))
///     .on_progress(|progress| {
///         if progress.done() % 500 == 0 {
///             println!("{} of {} keys", progress.done(), progress.total);
///         }
///     })
///     .run()
///     .await?;
/// assert_eq!(summary.loaded, 992);
/// assert_eq!(cache.get::<String>("offer:7").await?.as_deref(), Some("title of offer:7"));
/// # Ok(())
/// # }
/// ```
///
/// # What the stats count
/// A warm-up's reads are not user reads: looking for keys already cached
/// counts no hit or miss in [`TieredStats`](crate::TieredStats) (the
/// layers' own counters see every call), so warming leaves hit ratios as
/// they were. What it writes counts as [fills](crate::TierStats::fills), as
/// a load's value does (and a value it finds in a lower tier is copied up,
/// a fill too); its loader calls are not in
/// [`loads`](crate::TieredStats::loads): its [`WarmSummary`] counts them.
///
/// # Alongside requests
/// A warm-up joins the cache's single-flight: a request that misses a key
/// the warm-up is loading waits for that load instead of running its own
/// loader (it counts as [`coalesced`](crate::TieredStats::coalesced)), and
/// a warm-up that finds a request loading a key waits for it and counts the
/// key as skipped. Its values are cached like a load's: a key set, deleted
/// or invalidated while its loader ran is not cached (it is
/// [superseded](WarmProgress::superseded)); nothing is published on the
/// [backplane](crate::TieredCacheBuilder::backplane) (fills are not news).
#[must_use = "a warmer does nothing until it is run, started or scheduled"]
pub struct CacheWarmer<S: Serializer = Postcard> {
    cache: TieredCache<S>,
    plan: Plan<S>,
}

/// What [`CacheWarmer::on_progress`] calls.
type ProgressCallback = Arc<dyn Fn(&WarmProgress) + Send + Sync>;

/// A warmer's jobs and settings, apart from its cache: a schedule keeps
/// them, and only a weak reference to the cache between runs.
struct Plan<S: Serializer> {
    jobs: Vec<Arc<WarmJob<S>>>,
    concurrency: usize,
    tiers: WarmTiers,
    skip_cached: bool,
    ttl: Option<Duration>,
    timeout: Option<Duration>,
    on_progress: Option<ProgressCallback>,
    progress: watch::Sender<WarmProgress>,
    cancel: CancellationToken,
}

impl<S: Serializer> TieredCache<S> {
    /// A [`CacheWarmer`] for this cache, with no job yet.
    pub fn warmer(&self) -> CacheWarmer<S> {
        CacheWarmer::new(self)
    }
}

impl<S: Serializer> CacheWarmer<S> {
    /// A warmer for `cache`, with no job yet; the same as
    /// [`TieredCache::warmer`].
    pub fn new(cache: &TieredCache<S>) -> Self {
        CacheWarmer {
            cache: cache.clone(),
            plan: Plan {
                jobs: Vec::new(),
                concurrency: DEFAULT_CONCURRENCY,
                tiers: WarmTiers::All,
                skip_cached: true,
                ttl: None,
                timeout: None,
                on_progress: None,
                progress: watch::channel(WarmProgress::default()).0,
                cancel: CancellationToken::new(),
            },
        }
    }

    /// Adds a job: keys, where their values come from, a priority.
    pub fn job(mut self, job: WarmJob<S>) -> Self {
        self.plan.jobs.push(Arc::new(job));
        self
    }

    /// Adds a job of priority 0 that loads `keys` with `loader`
    /// ([`WarmJob::new`]).
    pub fn keys<T, F, Fut, E, I>(self, keys: I, loader: F) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
        T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
        F: Fn(String) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Option<T>, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
    {
        self.job(WarmJob::new(keys, loader))
    }

    /// Adds a job of priority 0 that copies `keys` from the shared tiers
    /// into the local ones ([`WarmJob::from_shared`]): an instance
    /// starting up fills its L1 from Redis.
    pub fn from_shared<I>(self, keys: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        self.job(WarmJob::from_shared(keys))
    }

    /// How many keys (or batches, for a copy from the shared tiers) are
    /// warmed at once: the most loader calls in flight at any time.
    /// At least 1. Default: 16.
    pub fn concurrency(mut self, tasks: usize) -> Self {
        self.plan.concurrency = tasks;
        self
    }

    /// Which tiers loader jobs write to, and look in for keys already
    /// cached. Default: [`WarmTiers::All`].
    pub fn tiers(mut self, tiers: WarmTiers) -> Self {
        self.plan.tiers = tiers;
        self
    }

    /// Whether a key already cached is left alone instead of loaded again.
    ///
    /// A key counts as cached when a tier the job writes to holds a live
    /// value of the job's type (a copy from the shared tiers: when a local
    /// tier holds anything under the key). A value found only in a lower
    /// tier is copied up into the tiers above, as a read does. Off, every
    /// key is loaded and written, whatever the tiers hold: a periodic
    /// re-warm that refreshes values before they expire. Default: on.
    pub fn skip_cached(mut self, skip: bool) -> Self {
        self.plan.skip_cached = skip;
        self
    }

    /// How long warmed values live, unless their job sets its own
    /// ([`WarmJob::ttl`]). The cache's
    /// [`ttl_jitter`](crate::TieredCacheBuilder::ttl_jitter),
    /// [`fail_safe`](crate::TieredCacheBuilder::fail_safe) and
    /// [`eager_refresh`](crate::TieredCacheBuilder::eager_refresh) apply,
    /// as to a load: with jitter, values warmed together do not all expire
    /// together. Default: each key's: the TTL of its
    /// [`ttl_policy`](crate::TieredCacheBuilder::ttl_policy), else the
    /// cache's [`default_ttl`](crate::TieredCacheBuilder::default_ttl).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.plan.ttl = Some(ttl);
        self
    }

    /// The longest one loader call may run: past it, the key
    /// [fails](WarmProgress::failed) with [`Error::LoaderTimeout`] and the
    /// warm-up goes on. Default: the cache's
    /// [`hard_timeout`](crate::TieredCacheBuilder::hard_timeout), if any.
    pub fn load_timeout(mut self, timeout: Duration) -> Self {
        self.plan.timeout = Some(timeout);
        self
    }

    /// Calls `report` with the progress after each key (or batch) is done,
    /// and once at the start. It is called from the task that runs the
    /// warm-up, one call at a time and in order, so keep it quick (update
    /// a progress bar, a gauge). The same figures are in
    /// [`progress`](Self::progress). Default: none.
    pub fn on_progress(mut self, report: impl Fn(&WarmProgress) + Send + Sync + 'static) -> Self {
        self.plan.on_progress = Some(Arc::new(report));
        self
    }

    /// A receiver of the progress of this warmer's runs: the latest figures,
    /// updated after each key (or batch). Take it before starting the run.
    /// (Runs of one warmer share it: run them one at a time.)
    pub fn progress(&self) -> watch::Receiver<WarmProgress> {
        self.plan.progress.subscribe()
    }

    /// Cancels the warm-up when `token` is cancelled (a service shutting
    /// down): no loader is called after that (as
    /// [`WarmHandle::cancel`] says), loaders in flight are
    /// dropped (a value already loaded is still written, and a batch being
    /// copied from the shared tiers finishes), and
    /// [`run`](Self::run) returns a summary that says
    /// [`cancelled`](WarmSummary::cancelled). A token cancelled before the
    /// run starts stops it at once. Default: a token nobody else holds
    /// (cancel through a [`WarmHandle`] or by dropping the run).
    pub fn cancel_on(mut self, token: CancellationToken) -> Self {
        self.plan.cancel = token;
        self
    }

    /// Runs the warm-up in the current task (its keys in tasks of their
    /// own, on the current tokio runtime) and returns what it did once
    /// every key is done, or once it is cancelled and its tasks are over.
    ///
    /// Dropping the returned future cancels the run, as a cancelled
    /// [token](Self::cancel_on) does (the tasks in flight end by
    /// themselves, promptly, and no loader is called after). Fails only
    /// on a configuration error: a concurrency of 0, a job that would
    /// write no tier, a copy from the shared tiers in a cache without a
    /// shared tier or a local one, no tokio runtime. Failures of keys are
    /// counted in the summary, not returned.
    pub async fn run(&self) -> Result<WarmSummary> {
        run_plan(&self.cache, &self.plan, &self.plan.cancel).await
    }

    /// Runs the warm-up in a task of its own; the returned handle cancels
    /// it (dropping it does too) and waits for its summary. Needs a tokio
    /// runtime.
    pub fn start(self) -> Result<WarmHandle> {
        let runtime = runtime()?;
        self.plan.validate(&self.cache)?;
        let cancel = self.plan.cancel.child_token();
        let progress = self.plan.progress.subscribe();
        let token = cancel.clone();
        let task = runtime.spawn(async move { run_plan(&self.cache, &self.plan, &token).await });
        Ok(WarmHandle {
            task: Some(task),
            cancel,
            progress,
        })
    }

    /// Runs the warm-up now, then again `period` after each run ends, in a
    /// task of its own, until the returned schedule is dropped or
    /// [stopped](WarmSchedule::stop), its [token](Self::cancel_on) is
    /// cancelled, or the last clone of the cache is dropped (between runs
    /// the task holds the cache weakly, so it does not keep it alive).
    ///
    /// With [`skip_cached`](Self::skip_cached) on (the default) each
    /// re-run loads only the keys that expired or were evicted since;
    /// turn it off to reload every key each period, refreshing values
    /// before they expire. Runs never overlap: a run that takes longer
    /// than `period` is followed by the next one `period` after it ends.
    /// Needs a tokio runtime; `period` must be above zero.
    pub fn every(self, period: Duration) -> Result<WarmSchedule> {
        let runtime = runtime()?;
        self.plan.validate(&self.cache)?;
        if period.is_zero() {
            return Err(cache_core::Error::config("a warm-up's period must be above zero").into());
        }
        let CacheWarmer { cache, plan } = self;
        let weak = Arc::downgrade(&cache.shared);
        drop(cache);
        let cancel = plan.cancel.child_token();
        let progress = plan.progress.subscribe();
        let (summaries, receiver) = watch::channel(None);
        let token = cancel.clone();
        let task = runtime.spawn(async move {
            loop {
                // Upgraded for one run at a time: a cache dropped by its
                // owners between runs ends the schedule.
                let Some(shared) = weak.upgrade() else { break };
                let cache = TieredCache { shared };
                let outcome = run_plan(&cache, &plan, &token).await;
                drop(cache);
                match outcome {
                    Ok(summary) => {
                        summaries.send_replace(Some(summary));
                    }
                    Err(error) => {
                        // Validated before the first run, so unexpected.
                        tracing::error!(%error, "periodic warm-up stopped");
                        break;
                    }
                }
                if token
                    .run_until_cancelled(tokio::time::sleep(period))
                    .await
                    .is_none()
                {
                    break;
                }
            }
        });
        Ok(WarmSchedule {
            task: Some(task),
            cancel,
            progress,
            summaries: receiver,
        })
    }
}

impl<S: Serializer> fmt::Debug for CacheWarmer<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheWarmer")
            .field("cache", &self.cache)
            .field("jobs", &self.plan.jobs)
            .field("concurrency", &self.plan.concurrency)
            .field("tiers", &self.plan.tiers)
            .field("skip_cached", &self.plan.skip_cached)
            .field("ttl", &self.plan.ttl)
            .field("load_timeout", &self.plan.timeout)
            .field("on_progress", &self.plan.on_progress.is_some())
            .finish()
    }
}

/// A warm-up running in a task of its own ([`CacheWarmer::start`]).
///
/// Dropping the handle cancels the warm-up: no loader is called after
/// that, and its task ends once the writes in flight are done.
#[must_use = "dropping a WarmHandle cancels the warm-up"]
pub struct WarmHandle {
    task: Option<JoinHandle<Result<WarmSummary>>>,
    cancel: CancellationToken,
    progress: watch::Receiver<WarmProgress>,
}

impl WarmHandle {
    /// Asks the warm-up to stop: no loader is called after this returns
    /// (on a multi-thread runtime, but for a task that was calling its
    /// loader at that very instant: that call is dropped at its first
    /// await, as are the loaders in flight). [`join`](Self::join) then
    /// returns once the tasks in flight are over, with a summary that says
    /// [`cancelled`](WarmSummary::cancelled).
    pub fn cancel(&self) {
        self.cancel.cancel();
    }

    /// A receiver of the warm-up's progress.
    pub fn progress(&self) -> watch::Receiver<WarmProgress> {
        self.progress.clone()
    }

    /// Whether the warm-up is over (done, or cancelled and its tasks over).
    pub fn is_finished(&self) -> bool {
        self.task.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Waits for the warm-up to end and returns its summary. Once this
    /// returns, no task of the warm-up is left running and no loader of it
    /// is called any more. A panic in the [progress
    /// callback](CacheWarmer::on_progress) resumes here.
    pub async fn join(mut self) -> Result<WarmSummary> {
        // Taken, so that `Drop` finds nothing to wait for; if this future
        // is dropped mid-wait, `Drop` still cancels the run.
        let Some(task) = self.task.take() else {
            return Err(cache_core::Error::config("the warm-up was already joined").into());
        };
        match task.await {
            Ok(summary) => summary,
            Err(error) => match error.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                // Only a runtime shutting down aborts it.
                Err(_aborted) => Err(cache_core::Error::unavailable(
                    "warm-up",
                    "its task was aborted (the runtime shut down)",
                )
                .into()),
            },
        }
    }
}

impl Drop for WarmHandle {
    fn drop(&mut self) {
        // Harmless once the run is over: the token is the run's own.
        self.cancel.cancel();
    }
}

impl fmt::Debug for WarmHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WarmHandle")
            .field("progress", &*self.progress.borrow())
            .field("cancelled", &self.cancel.is_cancelled())
            .field("finished", &self.is_finished())
            .finish()
    }
}

/// A warm-up run periodically ([`CacheWarmer::every`]). Dropping it stops
/// the runs: no loader is called after that, and its task ends once the
/// writes in flight are done.
#[must_use = "dropping a WarmSchedule stops it"]
pub struct WarmSchedule {
    task: Option<JoinHandle<()>>,
    cancel: CancellationToken,
    progress: watch::Receiver<WarmProgress>,
    summaries: watch::Receiver<Option<WarmSummary>>,
}

impl WarmSchedule {
    /// The summary of each run as it ends (`None` before the first ends).
    /// Its sender closes when the schedule's task ends.
    pub fn summaries(&self) -> watch::Receiver<Option<WarmSummary>> {
        self.summaries.clone()
    }

    /// A receiver of the current run's progress.
    pub fn progress(&self) -> watch::Receiver<WarmProgress> {
        self.progress.clone()
    }

    /// Whether the schedule's task has ended (stopped, or its cache dropped).
    pub fn is_finished(&self) -> bool {
        self.task.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Stops the runs and waits for the task to end: once this returns, no
    /// loader of the schedule runs any more.
    pub async fn stop(mut self) {
        self.cancel.cancel();
        if let Some(task) = self.task.take()
            && let Err(error) = task.await
            && let Ok(panic) = error.try_into_panic()
        {
            std::panic::resume_unwind(panic);
        }
    }
}

impl Drop for WarmSchedule {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl fmt::Debug for WarmSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WarmSchedule")
            .field("progress", &*self.progress.borrow())
            .field("stopped", &self.cancel.is_cancelled())
            .field("finished", &self.is_finished())
            .finish()
    }
}

/// The current tokio runtime, which a warm-up's tasks run on.
fn runtime() -> Result<tokio::runtime::Handle> {
    tokio::runtime::Handle::try_current().map_err(|_| {
        cache_core::Error::config(
            "a warm-up runs its keys in tokio tasks: run it inside a tokio runtime",
        )
        .into()
    })
}

/// What one job's keys are warmed with, worked out once per run.
#[derive(Clone, Copy)]
struct KeySettings {
    /// The warm-up's or job's TTL; `None`: each key's default (its TTL
    /// policy's, else the cache's).
    ttl: Option<Duration>,
    timeout: Option<Duration>,
    skip_cached: bool,
    /// The cache's load options, with the tiers the job skips.
    options: LoadOptions,
    excluded: TierSet,
}

impl<S: Serializer> Plan<S> {
    /// Every configuration error, before anything is loaded.
    fn validate(&self, cache: &TieredCache<S>) -> Result<Vec<KeySettings>> {
        if self.concurrency == 0 {
            return Err(
                cache_core::Error::config("a warm-up's concurrency must be at least 1").into(),
            );
        }
        self.jobs
            .iter()
            .map(|job| self.settings(cache, job))
            .collect()
    }

    fn settings(&self, cache: &TieredCache<S>, job: &WarmJob<S>) -> Result<KeySettings> {
        let mut options = cache.shared.defaults.load;
        options.skip_local = self.tiers == WarmTiers::Shared;
        options.skip_shared = self.tiers == WarmTiers::Local;
        let ttl = job.ttl.or(self.ttl);
        if ttl.is_some_and(|ttl| ttl.is_zero()) {
            return Err(cache_core::Error::config("a warm-up's TTL must be above zero").into());
        }
        let excluded = match job.source {
            Source::Loader(_) => cache.excluded(&options)?,
            Source::Shared { batch } => {
                if batch == 0 {
                    return Err(cache_core::Error::config(
                        "a copy from the shared tiers needs a batch size of at least 1",
                    )
                    .into());
                }
                let tiers = &cache.shared.tiers;
                let shared = tiers.iter().position(|tier| tier.layer.is_shared());
                let local = tiers.iter().position(|tier| !tier.layer.is_shared());
                if !matches!((local, shared), (Some(local), Some(shared)) if local < shared) {
                    return Err(cache_core::Error::config(
                        "copying from the shared tiers needs a local tier (not is_shared()) \
                         above a shared one (is_shared(), such as a RedisLayer)",
                    )
                    .into());
                }
                0
            }
        };
        Ok(KeySettings {
            ttl,
            timeout: self.timeout.or(options.hard_timeout),
            skip_cached: self.skip_cached,
            options,
            excluded,
        })
    }

    /// Tells the callback and the watchers.
    fn publish(&self, progress: &WarmProgress) {
        if let Some(report) = &self.on_progress {
            report(progress);
        }
        self.progress.send_replace(progress.clone());
    }
}

/// How one key ended.
#[derive(Debug, Clone)]
enum KeyOutcome {
    Loaded,
    Skipped,
    Missing,
    Superseded,
    Failed(Error),
    /// Not done: the warm-up was cancelled before or while it ran.
    Cancelled,
}

/// A slice of one job run as one task: one key, or one batch.
struct Unit {
    job: usize,
    keys: Range<usize>,
    priority: i32,
}

type Outcomes = Vec<KeyOutcome>;

async fn run_plan<S: Serializer>(
    cache: &TieredCache<S>,
    plan: &Plan<S>,
    cancel: &CancellationToken,
) -> Result<WarmSummary> {
    let runtime = runtime()?;
    let settings = plan.validate(cache)?;
    // The run's own token: cancelled with `cancel`, and by this run alone
    // if its future is dropped (see `Running`), never the caller's token.
    let cancel = &cancel.child_token();
    let started = Instant::now();
    let mut units: Vec<Unit> = Vec::new();
    for (index, job) in plan.jobs.iter().enumerate() {
        let per_unit = match job.source {
            Source::Loader(_) => 1,
            Source::Shared { batch } => batch,
        };
        let mut start = 0;
        while start < job.keys.len() {
            let end = (start + per_unit).min(job.keys.len());
            units.push(Unit {
                job: index,
                keys: start..end,
                priority: job.priority,
            });
            start = end;
        }
    }
    // Stable: within a priority, the order the keys were added in.
    units.sort_by_key(|unit| Reverse(unit.priority));
    let total: usize = plan.jobs.iter().map(|job| job.keys.len()).sum();
    let mut tally = Tally {
        progress: WarmProgress {
            total: total as u64,
            ..WarmProgress::default()
        },
        errors: Vec::new(),
    };
    tracing::debug!(
        keys = total,
        jobs = plan.jobs.len(),
        concurrency = plan.concurrency,
        "warm-up started"
    );
    plan.publish(&tally.progress);

    let mut running = Running {
        tasks: JoinSet::new(),
        cancel: cancel.clone(),
    };
    let running = &mut running.tasks;
    let mut in_flight: HashMap<tokio::task::Id, Unit> = HashMap::new();
    let mut queue = units.into_iter();
    loop {
        while running.len() < plan.concurrency && !cancel.is_cancelled() {
            let Some(unit) = queue.next() else { break };
            let work = unit_work(
                cache,
                &plan.jobs[unit.job],
                &unit,
                settings[unit.job],
                cancel,
            );
            let task = running.spawn_on(work, &runtime);
            in_flight.insert(task.id(), unit);
        }
        // Cancellation needs no wake-up here: the tasks in flight see it
        // and end at once, which ends this wait.
        let Some(joined) = running.join_next_with_id().await else {
            break;
        };
        let (id, outcomes) = match joined {
            Ok((id, outcomes)) => (id, Ok(outcomes)),
            Err(error) => (error.id(), Err(error)),
        };
        let Some(unit) = in_flight.remove(&id) else {
            continue;
        };
        let job = &plan.jobs[unit.job];
        let keys = &job.keys[unit.keys.clone()];
        match outcomes {
            Ok(outcomes) => {
                for (key, outcome) in keys.iter().zip(outcomes) {
                    tally.record(key, outcome);
                }
            }
            Err(error) if error.is_panic() => {
                // A loader that panics fails its key; the warm-up goes on.
                tracing::error!(key = %keys[0], "a warm-up's loader panicked");
                for key in keys {
                    tally.record(key, KeyOutcome::Failed(Error::LoaderPanicked));
                }
            }
            // Aborted: only a runtime shutting down does that. Not done.
            Err(_aborted) => {}
        }
        tally.progress.elapsed = started.elapsed();
        plan.publish(&tally.progress);
    }
    let progress = tally.progress;
    let summary = WarmSummary {
        total: progress.total,
        loaded: progress.loaded,
        skipped: progress.skipped,
        missing: progress.missing,
        superseded: progress.superseded,
        failed: progress.failed,
        cancelled: cancel.is_cancelled() && progress.done() < progress.total,
        elapsed: started.elapsed(),
        errors: tally.errors,
    };
    tracing::info!(
        total = summary.total,
        loaded = summary.loaded,
        skipped = summary.skipped,
        missing = summary.missing,
        superseded = summary.superseded,
        failed = summary.failed,
        cancelled = summary.cancelled,
        elapsed_ms = summary.elapsed.as_millis() as u64,
        "warm-up over"
    );
    Ok(summary)
}

/// The tasks of a run in flight. If the run's future is dropped before
/// they end, they are cancelled and left to end by themselves (each within
/// its current tier write) rather than aborted: a task aborted mid-write
/// would skip the re-check that undoes a fill a racing delete overtook.
struct Running {
    tasks: JoinSet<Outcomes>,
    cancel: CancellationToken,
}

impl Drop for Running {
    fn drop(&mut self) {
        if !self.tasks.is_empty() {
            self.cancel.cancel();
            self.tasks.detach_all();
        }
    }
}

struct Tally {
    progress: WarmProgress,
    errors: Vec<(String, Error)>,
}

impl Tally {
    fn record(&mut self, key: &str, outcome: KeyOutcome) {
        let p = &mut self.progress;
        match outcome {
            KeyOutcome::Loaded => p.loaded += 1,
            KeyOutcome::Skipped => p.skipped += 1,
            KeyOutcome::Missing => p.missing += 1,
            KeyOutcome::Superseded => p.superseded += 1,
            KeyOutcome::Cancelled => {}
            KeyOutcome::Failed(error) => {
                p.failed += 1;
                tracing::debug!(key, %error, "warming a key failed");
                if self.errors.len() < ERRORS_KEPT {
                    self.errors.push((key.to_owned(), error));
                }
            }
        }
    }
}

type UnitFuture = Pin<Box<dyn Future<Output = Outcomes> + Send + 'static>>;

/// The task of one unit.
fn unit_work<S: Serializer>(
    cache: &TieredCache<S>,
    job: &Arc<WarmJob<S>>,
    unit: &Unit,
    settings: KeySettings,
    cancel: &CancellationToken,
) -> UnitFuture {
    let (cache, job, keys, cancel) = (
        cache.clone(),
        job.clone(),
        unit.keys.clone(),
        cancel.clone(),
    );
    match &job.source {
        Source::Loader(loader) => {
            let key = job.keys[keys.start].clone();
            let warm = loader.clone().warm(cache, key, settings, cancel);
            Box::pin(async move { vec![warm.await] })
        }
        Source::Shared { .. } => Box::pin(async move {
            if cancel.is_cancelled() {
                return vec![KeyOutcome::Cancelled; keys.len()];
            }
            copy_from_shared(&cache, &job.keys[keys], settings.skip_cached).await
        }),
    }
}

/// A job's loader, its value type erased so that jobs of several types
/// can share one warmer.
trait KeyLoader<S: Serializer>: Send + Sync {
    fn warm(
        self: Arc<Self>,
        cache: TieredCache<S>,
        key: String,
        settings: KeySettings,
        cancel: CancellationToken,
    ) -> Pin<Box<dyn Future<Output = KeyOutcome> + Send + 'static>>;
}

struct TypedLoader<T, F> {
    loader: F,
    _value: PhantomData<fn() -> T>,
}

impl<S, T, F, Fut, E> KeyLoader<S> for TypedLoader<T, F>
where
    S: Serializer,
    T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
    F: Fn(String) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Option<T>, E>> + Send + 'static,
    E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
{
    fn warm(
        self: Arc<Self>,
        cache: TieredCache<S>,
        key: String,
        settings: KeySettings,
        cancel: CancellationToken,
    ) -> Pin<Box<dyn Future<Output = KeyOutcome> + Send + 'static>> {
        Box::pin(async move { self.warm_key(&cache, key, settings, &cancel).await })
    }
}

impl<T, F, Fut, E> TypedLoader<T, F>
where
    T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
    F: Fn(String) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Option<T>, E>> + Send + 'static,
    E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
{
    /// One key: skipped if cached, else loaded (in the cache's
    /// single-flight) and written through the job's tiers as a fill.
    async fn warm_key<S: Serializer>(
        &self,
        cache: &TieredCache<S>,
        key: String,
        settings: KeySettings,
        cancel: &CancellationToken,
    ) -> KeyOutcome {
        if cancel.is_cancelled() {
            return KeyOutcome::Cancelled;
        }
        let shared = &*cache.shared;
        let envelope = cache.envelope::<T>();
        // Tiers whose read failed open here are not written either, as in
        // a load: a failing tier costs one timeout, not two.
        let mut failed: TierSet = 0;
        if settings.skip_cached {
            // Uncounted: the warm-up's reads are not user reads. A value
            // found below is copied up, as any read does.
            let found = cache
                .walk_one::<T>(&key, envelope, Walk::Internal, None, settings.excluded)
                .await;
            failed = found.failed_open;
            match found.value {
                Ok(Some(_)) if found.freshness != Freshness::Throttled => {
                    return KeyOutcome::Skipped;
                }
                Err(error) => return KeyOutcome::Failed(error),
                _ => {}
            }
        }
        let leader = loop {
            match shared.flights.join(&key, &shared.guard, shared.clock.now()) {
                Role::Leader(leader) => break leader,
                // A request is loading this key: its value is what the
                // warm-up would write.
                Role::Follower(follower) => match cancel.run_until_cancelled(follower.wait()).await
                {
                    None => return KeyOutcome::Cancelled,
                    // That load was cancelled: try again, perhaps leading.
                    Some(None) => continue,
                    Some(Some(Ok(_))) => return KeyOutcome::Skipped,
                    Some(Some(Err(error))) => return KeyOutcome::Failed(error),
                },
            }
        };
        // Checked again just before the call (the follower's wait may have
        // been long): a cancel seen here calls no loader, and one that
        // comes later drops the call at its first await.
        if cancel.is_cancelled() {
            return KeyOutcome::Cancelled;
        }
        // Before the loader, as a load stamps (`tags.rs`).
        let stamps = match cache.stamp(&key, &[]).await {
            Ok(stamps) => stamps,
            Err(error) => {
                leader.finish(Err(error.clone()));
                return KeyOutcome::Failed(error);
            }
        };
        let load = async {
            let loaded = match settings.timeout {
                None => (self.loader)(key.clone()).await,
                Some(limit) => {
                    match tokio::time::timeout(limit, (self.loader)(key.clone())).await {
                        Ok(loaded) => loaded,
                        Err(_elapsed) => return Err(Error::LoaderTimeout(limit)),
                    }
                }
            };
            // Boxed at once: only what is `Send` may live across an await.
            loaded.map_err(|error| Error::Loader(Arc::from(error.into())))
        };
        // Dropping `leader` (cancelled, or nothing loaded) wakes whoever
        // waits on this load, and one of them loads next.
        let value = match cancel.run_until_cancelled(load).await {
            None => return KeyOutcome::Cancelled,
            Some(Ok(Some(value))) => Arc::new(value),
            Some(Ok(None)) => return KeyOutcome::Missing,
            Some(Err(error)) => {
                leader.finish(Err(error.clone()));
                return KeyOutcome::Failed(error);
            }
        };
        let ticket = leader.ticket;
        let (ttl, options) = cache.settings_for(&key, settings.ttl, settings.options);
        let entry = match cache.encode_stamped(&*value, &stamps, ttl, &options) {
            Ok(entry) => entry,
            Err(error) => {
                leader.finish(Err(error.clone()));
                return KeyOutcome::Failed(error);
            }
        };
        envelope.remember(&entry, value.clone());
        // As a load's value: written only while no mutation of the key
        // intervened since the ticket, and undone if one overtakes it.
        let written = if shared.guard.still_valid(&ticket) {
            cache
                .write_through(&[(&key, entry)], Some(&ticket), failed, settings.excluded)
                .await
                .pop()
        } else {
            None
        };
        leader.finish(Ok(value as Arc<dyn Any + Send + Sync>));
        match written {
            Some(Err(error)) => KeyOutcome::Failed(error),
            Some(Ok(())) if shared.guard.still_valid(&ticket) => KeyOutcome::Loaded,
            _ => KeyOutcome::Superseded,
        }
    }
}

/// Copies `keys` from the shared tiers into the local tiers above them:
/// the fill of a read (tickets taken before reading, each tier's cap, the
/// entry's own expiry, `keep_fill`), for entries of any type and with one
/// outcome per key, which `read.rs`'s typed fill does not report.
async fn copy_from_shared<S: Serializer>(
    cache: &TieredCache<S>,
    keys: &[String],
    skip_cached: bool,
) -> Outcomes {
    let shared = &*cache.shared;
    let clock = &*shared.clock;
    let tiers = &shared.tiers;
    let mut outcomes: Vec<Option<KeyOutcome>> = vec![None; keys.len()];
    let mut pending: Vec<usize> = (0..keys.len()).collect();
    let batch_of =
        |pending: &[usize]| -> Vec<&str> { pending.iter().map(|&i| keys[i].as_str()).collect() };
    if skip_cached {
        for tier in tiers.iter().filter(|tier| !tier.layer.is_shared()) {
            if pending.is_empty() {
                break;
            }
            // A failing local tier: look no further, copy what we can.
            let Call::Done(answers) = tier.get_many(clock, &batch_of(&pending)).await else {
                continue;
            };
            let mut rest = Vec::with_capacity(pending.len());
            for (i, answer) in pending.into_iter().zip(answers) {
                match answer {
                    Ok(Some(_)) => outcomes[i] = Some(KeyOutcome::Skipped),
                    _ => rest.push(i),
                }
            }
            pending = rest;
        }
    }
    // Before reading what may be copied up.
    let now = clock.now();
    let tickets: Vec<Ticket> = keys
        .iter()
        .map(|key| shared.guard.ticket(key, now))
        .collect();
    // (key index, depth found at, entry)
    let mut found: Vec<(usize, usize, Entry)> = Vec::new();
    for (depth, tier) in tiers.iter().enumerate() {
        if pending.is_empty() {
            break;
        }
        if !tier.layer.is_shared() {
            continue;
        }
        let answers = match tier.get_many(clock, &batch_of(&pending)).await {
            Call::Done(answers) => answers,
            Call::FailedOpen => {
                // Counted by the tier; the keys may still be found below.
                for &i in &pending {
                    outcomes[i] = Some(KeyOutcome::Failed(unavailable(tier.name())));
                }
                continue;
            }
            Call::Failed(error) => {
                for &i in &pending {
                    outcomes[i] = Some(KeyOutcome::Failed(error.clone().into()));
                }
                pending.clear();
                break;
            }
        };
        let mut rest = Vec::with_capacity(pending.len());
        for (i, answer) in pending.into_iter().zip(answers) {
            match answer {
                // As a read: a value past its TTL (kept for fail-safe) is
                // not copied up as if it were live.
                Ok(Some(entry))
                    if Life::at(life_of(&entry), entry.expiry(), now) != Freshness::Stale =>
                {
                    outcomes[i] = None;
                    found.push((i, depth, entry));
                }
                Ok(_) => rest.push(i),
                Err(error) => {
                    if let Call::Failed(error) = tier.failed::<()>(Operation::Read, error.clone()) {
                        outcomes[i] = Some(KeyOutcome::Failed(error.into()));
                    } else {
                        outcomes[i] = Some(KeyOutcome::Failed(error.into()));
                        rest.push(i);
                    }
                }
            }
        }
        pending = rest;
    }
    // Found nowhere (and no failure on the way): the source has none.
    for i in pending {
        outcomes[i].get_or_insert(KeyOutcome::Missing);
    }
    // Lowest local tier first, as every write goes.
    let mut kept = vec![false; keys.len()];
    for (depth, tier) in tiers.iter().enumerate().rev() {
        if tier.layer.is_shared() {
            continue;
        }
        let mut fills: Vec<(usize, Entry)> = Vec::new();
        for (i, found_at, entry) in &found {
            if *found_at <= depth || outcomes[*i].is_some() {
                continue;
            }
            if shared.guard.still_valid(&tickets[*i]) {
                fills.push((*i, tier.cap(&keys[*i], entry.clone(), now)));
            } else {
                tier.counters.fills_discarded.incr();
                outcomes[*i] = Some(KeyOutcome::Superseded);
            }
        }
        if fills.is_empty() {
            continue;
        }
        let batch: Vec<(&str, Entry)> = fills
            .iter()
            .map(|(i, entry)| (keys[*i].as_str(), entry.clone()))
            .collect();
        let written = match tier.set_many(clock, &batch, Some(now)).await {
            Call::Done(written) => written,
            Call::FailedOpen => {
                for (i, _) in &fills {
                    outcomes[*i] = Some(KeyOutcome::Failed(unavailable(tier.name())));
                }
                continue;
            }
            Call::Failed(error) => {
                for (i, _) in &fills {
                    outcomes[*i] = Some(KeyOutcome::Failed(error.clone().into()));
                }
                continue;
            }
        };
        for ((i, _), result) in fills.iter().zip(written) {
            match result {
                Ok(()) => {
                    if cache.keep_fill(tier, &keys[*i], &tickets[*i]).await {
                        kept[*i] = true;
                    } else {
                        outcomes[*i] = Some(KeyOutcome::Superseded);
                    }
                }
                Err(error) if error.is_superseded() => {
                    tier.counters.fills_discarded.incr();
                    outcomes[*i] = Some(KeyOutcome::Superseded);
                }
                // Refused (over the tier's limit) or failed: counted as
                // any write's would be.
                Err(error) => {
                    let _ = tier.failed::<()>(Operation::Write, error.clone());
                    outcomes[*i] = Some(KeyOutcome::Failed(error.into()));
                }
            }
        }
    }
    outcomes
        .into_iter()
        .zip(kept)
        .map(|(outcome, kept)| match (outcome, kept) {
            (Some(outcome), _) => outcome,
            (None, true) => KeyOutcome::Loaded,
            // Found, but no local tier above where it was found.
            (None, false) => KeyOutcome::Skipped,
        })
        .collect()
}

/// The error of a key whose tier failed open (its own error was counted
/// and logged by the tier).
fn unavailable(tier: &str) -> Error {
    cache_core::Error::unavailable(
        tier.to_owned(),
        "its call failed while warming (the tier fails open; see its stats)",
    )
    .into()
}
