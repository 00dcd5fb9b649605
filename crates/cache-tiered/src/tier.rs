use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tracing::Instrument;

use cache_core::{
    Admission, CacheLayer, CallContext, CallOutcome, Clock, Entry, Error, ErrorCounter, FailOpen,
    FailureAction, FailurePolicy, LastErrorCell, LatencyRecorder, Lookups, Operation, Pattern,
    ReadNow, Ticket, WriteNow, Writes,
};

use crate::stats::{TierCounters, TierLatency, TierStats};

/// How one call to a tier ended, after its failure policy had its say.
#[derive(Debug)]
pub(crate) enum Call<T> {
    /// The layer answered.
    Done(T),
    /// The call failed (or was rejected) and the policy fails open: a read
    /// is a miss, a write or removal was skipped. Already counted.
    FailedOpen,
    /// The call failed and the error goes to the caller: the policy fails
    /// closed, or the layer refused the input (whatever the policy).
    Failed(Error),
}

/// One tier of a [`TieredCache`](crate::TieredCache): a layer with its
/// failure policy, an optional TTL cap and an optional call timeout.
///
/// ```
/// use std::time::Duration;
/// use cache_core::FailClosed;
/// use cache_memory::MemoryLayer;
/// use cache_tiered::Tier;
///
/// let l1 = Tier::new(MemoryLayer::new())
///     .ttl_cap(Duration::from_secs(30))
///     .policy(FailClosed);
/// ```
#[must_use]
pub struct Tier {
    pub(crate) layer: Arc<dyn CacheLayer>,
    pub(crate) policy: Arc<dyn FailurePolicy>,
    /// Whether the policy observes calls (see `FailurePolicy::observes_calls`).
    pub(crate) observed: bool,
    pub(crate) ttl_cap: Option<Duration>,
    /// The cache's TTL policies, in a local tier when a rule caps local
    /// copies (`policy.rs`): a per-key cap besides `ttl_cap`.
    pub(crate) key_caps: Option<Arc<crate::policy::TtlPolicies>>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) counters: TierCounters,
    /// How long calls take, per operation; `None` with stats off.
    latency: Option<Box<Latencies>>,
    /// The same, through the `metrics` facade; set when the cache is built.
    #[cfg(feature = "metrics")]
    histograms: Option<crate::metrics::TierHistograms>,
    /// Failed calls by class, and the last one: what an operator asks first.
    error_classes: ErrorCounter,
    last_error: LastErrorCell,
    /// Whether the tier's last read, and its last write or removal,
    /// failed: the first failure and the recovery of each are logged at
    /// WARN, not every failure in between. Apart, because a full or
    /// read-only server fails only writes, and its reads say nothing of
    /// that.
    failing: [AtomicBool; 2],
}

/// The index in `Tier::failing` of an operation's side.
fn side(operation: Operation) -> usize {
    match operation {
        Operation::Read => 0,
        Operation::Write | Operation::Remove => 1,
    }
}

/// The latency recorders of a tier, one per operation.
#[derive(Debug, Default)]
struct Latencies {
    get: LatencyRecorder,
    set: LatencyRecorder,
    remove: LatencyRecorder,
}

impl Latencies {
    fn of(&self, operation: Operation) -> &LatencyRecorder {
        match operation {
            Operation::Read => &self.get,
            Operation::Write => &self.set,
            Operation::Remove => &self.remove,
        }
    }
}

impl Tier {
    /// A tier over `layer`, failing open, with no TTL cap and no timeout.
    pub fn new(layer: impl CacheLayer + 'static) -> Self {
        Self::shared(Arc::new(layer))
    }

    /// A tier over a layer that is already shared.
    pub fn shared(layer: Arc<dyn CacheLayer>) -> Self {
        Tier {
            layer,
            policy: Arc::new(FailOpen),
            observed: false,
            ttl_cap: None,
            key_caps: None,
            timeout: None,
            counters: TierCounters::new(true),
            latency: Some(Box::default()),
            #[cfg(feature = "metrics")]
            histograms: None,
            error_classes: ErrorCounter::default(),
            last_error: LastErrorCell::default(),
            failing: [AtomicBool::new(false), AtomicBool::new(false)],
        }
    }

    /// Applies the cache's observability settings: without stats, the tier
    /// keeps no counters and no latencies (the builder's
    /// [`stats`](crate::TieredCacheBuilder::stats)).
    pub(crate) fn configure(&mut self, observe: &crate::observe::Observe) {
        if !observe.stats {
            self.counters = TierCounters::new(false);
            self.latency = None;
        }
        #[cfg(feature = "metrics")]
        if observe.stats {
            self.histograms = Some(crate::metrics::TierHistograms::new(
                &observe.name,
                self.name(),
            ));
        }
    }

    /// Records one call's latency.
    #[inline]
    fn took(&self, operation: Operation, elapsed: Duration) {
        if let Some(latency) = &self.latency {
            latency.of(operation).record(elapsed);
        }
        #[cfg(feature = "metrics")]
        if let Some(histograms) = &self.histograms {
            histograms.record(operation, elapsed);
        }
    }

    /// What to do when this tier fails. Default: [`FailOpen`] (a failing
    /// tier is a miss, writes to it are skipped).
    pub fn policy(self, policy: impl FailurePolicy + 'static) -> Self {
        self.shared_policy(Arc::new(policy))
    }

    /// The same, for a policy shared with other code (a circuit breaker
    /// whose state you also want to read).
    pub fn shared_policy(mut self, policy: Arc<dyn FailurePolicy>) -> Self {
        self.observed = policy.observes_calls();
        self.policy = policy;
        self
    }

    /// The longest any value lives in this tier, whatever TTL it was written
    /// with. Useful to keep an L1 fresh while L2 holds values longer.
    /// Default: none.
    pub fn ttl_cap(mut self, cap: Duration) -> Self {
        self.ttl_cap = Some(cap);
        self
    }

    /// The longest a call to this tier may take before it counts as failed
    /// with [`Error::Timeout`]. The layer sees it as the deadline of the
    /// call's [`CallContext`]; this timeout also covers custom layers that
    /// ignore it. It uses tokio's timer, so the runtime needs its time
    /// driver (`enable_time`, on by default with `#[tokio::main]`).
    /// Default: none.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    pub(crate) fn name(&self) -> &str {
        self.layer.name()
    }

    /// The read of `key`, if the layer answers at once (`get_now`, an
    /// in-process layer) and the tier has no policy or timeout to apply.
    /// Spares the hottest path the boxed future of an async call.
    #[inline(always)]
    pub(crate) fn read_now(&self, clock: &dyn Clock, key: &str) -> ReadNow {
        if self.observed || self.timeout.is_some() {
            return ReadNow::Unanswered;
        }
        let answer = self.layer.get_now(clock, key);
        if !matches!(answer, ReadNow::Unanswered) {
            self.succeeded(Operation::Read);
        }
        answer
    }

    pub(crate) async fn get(&self, clock: &dyn Clock, key: &str) -> Call<Option<Entry>> {
        match self.read_now(clock, key) {
            ReadNow::Hit(entry) => return Call::Done(Some(entry)),
            ReadNow::Miss => return Call::Done(None),
            ReadNow::Unanswered => {}
        }
        let ctx = match self.admit(clock, Operation::Read) {
            Ok(ctx) => ctx,
            Err(rejected) => return rejected,
        };
        self.run(&ctx, self.layer.get(&ctx, key)).await
    }

    pub(crate) async fn get_many(&self, clock: &dyn Clock, keys: &[&str]) -> Call<Lookups> {
        let ctx = match self.admit(clock, Operation::Read) {
            Ok(ctx) => ctx,
            Err(rejected) => return rejected,
        };
        let call = async {
            let answers = self.layer.get_many(&ctx, keys).await?;
            self.check_len(answers, keys.len())
        };
        self.run(&ctx, call).await
    }

    /// Writes `entries`; with `fill_since`, as fills of a read or load that
    /// began then (see [`CallContext::with_fill_since`]).
    pub(crate) async fn set_many(
        &self,
        clock: &dyn Clock,
        entries: &[(&str, Entry)],
        fill_since: Option<Instant>,
    ) -> Call<Writes> {
        if let [(key, entry)] = entries {
            // One entry: the layer's single-key call, which may spare a Vec.
            return match self.set(clock, key, entry.clone(), fill_since).await {
                Call::Done(written) => Call::Done(vec![written]),
                Call::FailedOpen => Call::FailedOpen,
                Call::Failed(error) => Call::Failed(error),
            };
        }
        let ctx = match self.admit(clock, Operation::Write) {
            Ok(ctx) => ctx.with_fill_since(fill_since),
            Err(rejected) => return rejected,
        };
        let call = async {
            let answers = self.layer.set_many(&ctx, entries).await?;
            // A batch in which every entry failed for one cause is a failed
            // call, which the policy should see; a refused or superseded
            // entry, or a full server, is not.
            if let Some(Err(first)) = answers.first()
                && first.class().affects_health()
                && answers.iter().all(Result::is_err)
            {
                return Err(first.clone());
            }
            self.check_len(answers, entries.len())
        };
        self.run(&ctx, call).await
    }

    /// Writes one entry, as [`set_many`](Self::set_many) writes a batch:
    /// `Done` with the entry's own outcome (refused, superseded), unless
    /// the write failed as a call.
    ///
    /// An unobserved tier without a timeout is first offered the write at
    /// once ([`CacheLayer::set_now`]), as reads are: a fill of an
    /// in-process tier then costs no boxed future, span or clock read.
    pub(crate) async fn set(
        &self,
        clock: &dyn Clock,
        key: &str,
        mut entry: Entry,
        fill_since: Option<Instant>,
    ) -> Call<cache_core::Result<()>> {
        if !self.observed && self.timeout.is_none() {
            let ctx = CallContext::new(clock, Operation::Write).with_fill_since(fill_since);
            match self.layer.set_now(&ctx, key, entry) {
                WriteNow::Done(Err(error)) if error.class().affects_health() => {
                    return self.failed(Operation::Write, error);
                }
                WriteNow::Done(written) => {
                    self.succeeded(Operation::Write);
                    return Call::Done(written);
                }
                WriteNow::Unanswered(back) => entry = back,
            }
        }
        // Boxed: a fill of an L1 does not come here, and inline this would
        // make every fill's future (and a read's, which awaits it) larger.
        Box::pin(self.set_later(clock, key, entry, fill_since)).await
    }

    /// [`set`](Self::set) of a tier that did not answer at once.
    async fn set_later(
        &self,
        clock: &dyn Clock,
        key: &str,
        entry: Entry,
        fill_since: Option<Instant>,
    ) -> Call<cache_core::Result<()>> {
        let ctx = match self.admit(clock, Operation::Write) {
            Ok(ctx) => ctx.with_fill_since(fill_since),
            Err(rejected) => return rejected,
        };
        let call = async {
            match self.layer.set(&ctx, key, entry).await {
                // The call failed: the policy should see it.
                Err(error) if error.class().affects_health() => Err(error),
                written => Ok(written),
            }
        };
        self.run(&ctx, call).await
    }

    pub(crate) async fn delete_many(&self, clock: &dyn Clock, keys: &[&str]) -> Call<u64> {
        let ctx = match self.admit(clock, Operation::Remove) {
            Ok(ctx) => ctx,
            Err(rejected) => return rejected,
        };
        let call = async {
            match keys {
                [key] => self.layer.delete(&ctx, key).await.map(u64::from),
                _ => self.layer.delete_many(&ctx, keys).await,
            }
        };
        self.run(&ctx, call).await
    }

    pub(crate) async fn invalidate(&self, clock: &dyn Clock, pattern: &Pattern) -> Call<u64> {
        let ctx = match self.admit(clock, Operation::Remove) {
            Ok(ctx) => ctx,
            Err(rejected) => return rejected,
        };
        self.run(&ctx, self.layer.invalidate(&ctx, pattern)).await
    }

    /// A layer that answers a batch with the wrong number of slots broke
    /// its contract: a failed call, never a panic or a misattributed value.
    fn check_len<T>(&self, answers: Vec<T>, expected: usize) -> cache_core::Result<Vec<T>> {
        if answers.len() == expected {
            return Ok(answers);
        }
        Err(Error::backend(
            self.name().to_owned(),
            format!("answered {} results for {expected} keys", answers.len()),
        ))
    }

    /// Asks the policy whether a call of kind `operation` may go ahead; on
    /// admission returns the call's context (the policy's ticket and the
    /// tier's deadline in it).
    #[inline]
    fn admit<'c, T>(
        &self,
        clock: &'c dyn Clock,
        operation: Operation,
    ) -> Result<CallContext<'c>, Call<T>> {
        let mut ctx = CallContext::new(clock, operation);
        if let Some(timeout) = self.timeout {
            ctx = ctx.with_deadline(clock.now().checked_add(timeout));
        }
        if !self.observed {
            return Ok(ctx);
        }
        match self.policy.admit(operation) {
            Admission::Allow(ticket) => Ok(ctx.with_ticket(ticket)),
            Admission::Reject => {
                self.counters.rejected.incr();
                let error =
                    Error::unavailable(self.name().to_owned(), "rejected by its failure policy");
                Err(match self.policy.on_failure(operation, &error) {
                    FailureAction::Ignore => Call::FailedOpen,
                    FailureAction::Propagate => Call::Failed(error),
                })
            }
        }
    }

    /// Runs one admitted call under the tier's timeout, reports its outcome
    /// to the policy with the call's ticket, and applies the policy.
    async fn run<T, F>(&self, ctx: &CallContext<'_>, call: F) -> Call<T>
    where
        F: Future<Output = cache_core::Result<T>>,
    {
        // At TRACE: one span per call to a remote tier is a lot of spans.
        let span = tracing::trace_span!(
            "cache.tier",
            tier = self.name(),
            operation = %ctx.operation(),
            outcome = tracing::field::Empty,
        );
        if span.is_disabled() {
            // Not wrapped: moving the call's future into an `Instrumented`
            // costs a copy of it.
            return self.run_unspanned(ctx, call).await;
        }
        let answer = self.run_unspanned(ctx, call).instrument(span.clone()).await;
        span.record(
            "outcome",
            match &answer {
                Call::Done(_) => "ok",
                Call::FailedOpen => "failed_open",
                Call::Failed(_) => "failed",
            },
        );
        answer
    }

    async fn run_unspanned<T, F>(&self, ctx: &CallContext<'_>, call: F) -> Call<T>
    where
        F: Future<Output = cache_core::Result<T>>,
    {
        if !self.observed {
            // FailOpen / FailClosed: no admission, and a clock read only
            // for the latency stats.
            let started = self.latency.is_some().then(Instant::now);
            let result = self.timed(call).await;
            if let Some(started) = started {
                self.took(ctx.operation(), started.elapsed());
            }
            return match result {
                Ok(value) => {
                    self.succeeded(ctx.operation());
                    Call::Done(value)
                }
                Err(error) => self.failed(ctx.operation(), error),
            };
        }
        let mut report = Report {
            policy: &*self.policy,
            operation: ctx.operation(),
            ticket: ctx.ticket(),
            started: Instant::now(),
            done: false,
        };
        let result = self.timed(call).await;
        let elapsed = report.started.elapsed();
        report.done = true;
        self.took(ctx.operation(), elapsed);
        let outcome = match &result {
            Ok(_) => CallOutcome::Success { elapsed },
            Err(error) => CallOutcome::Failure { elapsed, error },
        };
        self.policy.record(ctx.operation(), ctx.ticket(), outcome);
        match result {
            Ok(value) => {
                self.succeeded(ctx.operation());
                Call::Done(value)
            }
            Err(error) => self.failed(ctx.operation(), error),
        }
    }

    async fn timed<T, F>(&self, call: F) -> cache_core::Result<T>
    where
        F: Future<Output = cache_core::Result<T>>,
    {
        match self.timeout {
            None => call.await,
            Some(limit) => match tokio::time::timeout(limit, call).await {
                Ok(result) => result,
                Err(_elapsed) => Err(Error::timeout(self.name().to_owned(), limit)),
            },
        }
    }

    /// Applies the policy to a failed call. A refused input goes to the
    /// caller whatever the policy: it describes the input, not the tier.
    #[cold]
    pub(crate) fn failed<T>(&self, operation: Operation, error: Error) -> Call<T> {
        if error.is_refusal() {
            self.counters.refused.incr();
            return Call::Failed(error);
        }
        if error.is_superseded() {
            // Not a failure: the caller (a fill) stops and counts it.
            return Call::Failed(error);
        }
        self.counters.errors.incr();
        self.error_classes.record(error.class());
        self.last_error.set(Some(operation), &error);
        if !self.failing[side(operation)].swap(true, Ordering::Relaxed) {
            tracing::warn!(
                tier = self.name(),
                %operation,
                class = %error.class(),
                %error,
                "tier failing (logged once until it recovers; its errors are counted in the stats)"
            );
        }
        match self.policy.on_failure(operation, &error) {
            FailureAction::Ignore => {
                tracing::debug!(tier = self.name(), %operation, %error, "tier call failed; failing open");
                Call::FailedOpen
            }
            FailureAction::Propagate => Call::Failed(error),
        }
    }

    /// After a call of kind `operation` that succeeded: logs the recovery
    /// of a failing tier.
    #[inline]
    fn succeeded(&self, operation: Operation) {
        if self.failing[side(operation)].load(Ordering::Relaxed) {
            self.recovered(operation);
        }
    }

    #[cold]
    fn recovered(&self, operation: Operation) {
        if self.failing[side(operation)].swap(false, Ordering::Relaxed) {
            tracing::warn!(tier = self.name(), %operation, "tier recovered: a call succeeded again");
        }
    }

    /// Whether the tier's last read or last write failed.
    pub(crate) fn is_failing(&self) -> bool {
        self.failing.iter().any(|f| f.load(Ordering::Relaxed))
    }

    /// The last failure counted in `errors`.
    pub(crate) fn last_error(&self) -> Option<cache_core::LastError> {
        self.last_error.get()
    }

    /// `entry` as this tier stores it under `key`: its expiry (or, for a
    /// value with a life, its freshness) capped by the tier's cap and, in a
    /// local tier, by the key's TTL policy, whichever is shorter.
    pub(crate) fn cap(&self, key: &str, entry: Entry, now: Instant) -> Entry {
        let key_cap = self
            .key_caps
            .as_ref()
            .and_then(|table| table.local_cap(key));
        let cap = match (self.ttl_cap, key_cap) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        match cap {
            Some(cap) => crate::envelope::capped(entry, now, cap),
            None => entry,
        }
    }

    pub(crate) fn stats(&self) -> TierStats {
        let c = &self.counters;
        let latency = self
            .latency
            .as_ref()
            .map_or_else(TierLatency::default, |latency| TierLatency {
                get: latency.get.summary(),
                set: latency.set.summary(),
                remove: latency.remove.summary(),
            });
        TierStats {
            name: self.name().to_owned(),
            hits: c.hits.get(),
            misses: c.misses.get(),
            fills: c.fills.get(),
            fills_discarded: c.fills_discarded.get(),
            undecodable: c.undecodable.get(),
            foreign: c.foreign.get(),
            tag_stale: c.tag_stale.get(),
            errors: c.errors.get(),
            refused: c.refused.get(),
            rejected: c.rejected.get(),
            error_classes: self.error_classes.counts(),
            last_error: self.last_error.get(),
            latency,
            circuits: self.policy.circuits(),
            layer: self.layer.stats(),
        }
    }
}

/// Tells the policy about a call whose caller went away mid-call, so a
/// half-open breaker gets its trial slot back.
struct Report<'a> {
    policy: &'a dyn FailurePolicy,
    operation: Operation,
    ticket: Ticket,
    started: Instant,
    done: bool,
}

impl Drop for Report<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.policy
                .record(self.operation, self.ticket, CallOutcome::Abandoned);
        }
    }
}

impl fmt::Debug for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tier")
            .field("layer", &self.layer)
            .field("policy", &self.policy)
            .field("ttl_cap", &self.ttl_cap)
            .field("timeout", &self.timeout)
            .finish()
    }
}
