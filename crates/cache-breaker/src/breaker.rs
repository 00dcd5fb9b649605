//! The circuit breaker itself.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use cache_core::{
    Admission, CallOutcome, CircuitState, CircuitStatus, Clock, Error, FailureAction,
    FailurePolicy, LastErrorCell, Operation, Ticket,
};

use crate::builder::{Callback, Settings};
use crate::stats::Counters;
use crate::window::Window;
use crate::{BreakerError, BreakerStats, Builder, State, StateChange, StateKind};

/// A circuit breaker: stops calling a backend that keeps failing, and tries
/// it again after a while.
///
/// - **Closed**: calls go through. `failure_threshold` consecutive failures
///   (or, if set, a failure rate over a sliding window) open it.
/// - **Open**: calls are rejected at once, without touching the backend.
///   After `recovery_timeout` the next call moves it to half-open.
/// - **Half-open**: at most `half_open_max_calls` trial calls in flight at
///   once; the rest are rejected. `success_threshold` successful trials
///   close it; one failed trial opens it again.
///
/// Failures are errors and, if `slow_call_duration` is set, successes
/// slower than that. Refusals ([`Error::is_refusal`]: a value too large, a
/// value that would not serialize) and abandoned calls count neither way.
///
/// Use it as the [`FailurePolicy`] of a cache tier (wrap it in an `Arc`),
/// or around any async call with [`call`](CircuitBreaker::call). See the
/// crate docs for both.
///
/// # Cost
/// While closed and healthy, admitting a call and recording its success
/// are a few atomic loads and a per-thread counter increment: no lock, no
/// clock read. The lock is taken on state changes and while half-open.
pub struct CircuitBreaker {
    settings: Settings,
    clock: Arc<dyn Clock>,
    on_state_change: Option<Callback>,
    /// The state kind in the low two bits, a generation (bumped on every
    /// change) above them. A permit remembers the word it was admitted
    /// under, so an outcome from an earlier state never counts in a later
    /// one.
    word: AtomicU64,
    /// Consecutive failures while closed.
    consecutive_failures: AtomicU32,
    window: Option<Window>,
    /// The instant `opened_at` counts from.
    base: Instant,
    /// When the breaker last opened, in nanoseconds since `base`.
    opened_at: AtomicU64,
    /// Half-open bookkeeping; the lock also serialises every state change.
    half_open: Mutex<HalfOpen>,
    counters: Counters,
    /// The last failure counted: logged when the breaker opens, reported
    /// in its status.
    last_error: LastErrorCell,
}

#[derive(Debug, Default)]
struct HalfOpen {
    in_flight: u32,
    successes: u32,
}

/// What an outcome means for the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Success,
    Failure { slow: bool },
    Refusal,
    Abandoned,
}

const KIND_BITS: u64 = 0b11;

fn pack(generation: u64, kind: StateKind) -> u64 {
    (generation << 2) | kind.to_bits()
}

fn kind_of(word: u64) -> StateKind {
    StateKind::from_bits(word & KIND_BITS)
}

fn generation_of(word: u64) -> u64 {
    word >> 2
}

fn saturating_nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

impl CircuitBreaker {
    /// A builder with every setting at its default (see [`Builder`]).
    pub fn builder() -> Builder {
        Builder::new()
    }

    pub(crate) fn from_parts(
        settings: Settings,
        clock: Arc<dyn Clock>,
        on_state_change: Option<Callback>,
    ) -> Self {
        let base = clock.now();
        CircuitBreaker {
            window: settings.failure_rate.map(Window::new),
            settings,
            clock,
            on_state_change,
            word: AtomicU64::new(pack(0, StateKind::Closed)),
            consecutive_failures: AtomicU32::new(0),
            base,
            opened_at: AtomicU64::new(0),
            half_open: Mutex::new(HalfOpen::default()),
            counters: Counters::default(),
            last_error: LastErrorCell::default(),
        }
    }

    /// The name given with [`Builder::name`].
    pub fn name(&self) -> &str {
        &self.settings.name
    }

    /// The current state. An open breaker whose recovery timeout has passed
    /// still reports `Open` until the next call moves it to half-open.
    pub fn state(&self) -> State {
        let word = self.word.load(Ordering::Acquire);
        match kind_of(word) {
            StateKind::Closed => State::Closed {
                failures: self.consecutive_failures.load(Ordering::Relaxed),
            },
            StateKind::Open => State::Open {
                since: self.opened_since(),
            },
            StateKind::HalfOpen => {
                let half_open = self.lock();
                match kind_of(self.word.load(Ordering::Acquire)) {
                    StateKind::HalfOpen => State::HalfOpen {
                        successes: half_open.successes,
                    },
                    // It changed while we waited for the lock.
                    StateKind::Closed => State::Closed {
                        failures: self.consecutive_failures.load(Ordering::Relaxed),
                    },
                    StateKind::Open => State::Open {
                        since: self.opened_since(),
                    },
                }
            }
        }
    }

    /// A snapshot of the counters, with the current state.
    pub fn stats(&self) -> BreakerStats {
        self.counters
            .snapshot(kind_of(self.word.load(Ordering::Acquire)))
    }

    /// The breaker's state, how often it opened and its last failure (an
    /// error recorded through [`FailurePolicy::record`] or
    /// [`Permit::record`]), as stats and health checks report it.
    pub fn status(&self) -> CircuitStatus {
        let state = match kind_of(self.word.load(Ordering::Acquire)) {
            StateKind::Closed => CircuitState::Closed,
            StateKind::Open => CircuitState::Open,
            StateKind::HalfOpen => CircuitState::HalfOpen,
        };
        let mut status = CircuitStatus::new(self.name(), state);
        status.opened = self.counters.opens.get();
        status.rejections = self.counters.rejections.get();
        status.last_error = self.last_error.get();
        status
    }

    /// Asks to make a call. `None` means the breaker rejects it (open, or
    /// half-open with every trial slot taken): do not make the call.
    ///
    /// Report how the call ended through the [`Permit`]; a permit dropped
    /// without a report counts as abandoned (and frees its trial slot), so
    /// a cancelled caller never holds a slot forever.
    #[inline]
    pub fn try_acquire(&self) -> Option<Permit<'_>> {
        self.acquire().map(|word| Permit {
            breaker: self,
            word,
            done: false,
        })
    }

    /// Runs `call` if the breaker admits it, and records how it ended:
    /// every `Err` is a failure, and so is an `Ok` slower than the
    /// slow-call duration. Durations are measured on the breaker's clock
    /// (only when a slow-call duration is set).
    ///
    /// If the returned future is dropped before `call` finishes, the call
    /// counts as abandoned and its half-open trial slot (if it had one) is
    /// freed.
    ///
    /// # Errors
    /// [`BreakerError::Rejected`] if the breaker refused the call (then
    /// `call` is not run), [`BreakerError::Inner`] with the call's error.
    pub async fn call<F, Fut, T, E>(&self, call: F) -> Result<T, BreakerError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.call_with(|_| true, call).await
    }

    /// Like [`call`](CircuitBreaker::call), but `is_failure` decides which
    /// errors count as failures; the others say nothing about the backend's
    /// health and count neither way (for a [`cache_core::Error`], pass
    /// `|e| !e.is_refusal()`).
    ///
    /// # Errors
    /// As [`call`](CircuitBreaker::call).
    pub async fn call_with<F, Fut, T, E, C>(
        &self,
        is_failure: C,
        call: F,
    ) -> Result<T, BreakerError<E>>
    where
        C: FnOnce(&E) -> bool,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let permit = self.try_acquire().ok_or(BreakerError::Rejected)?;
        // Durations only matter to the slow-call rule: without it, spare
        // the two clock reads.
        let start = self.settings.slow_call.map(|_| self.clock.now());
        let result = call().await;
        let elapsed = start.map_or(Duration::ZERO, |start| {
            self.clock.now().saturating_duration_since(start)
        });
        match result {
            Ok(value) => {
                permit.success(elapsed);
                Ok(value)
            }
            Err(error) => {
                if is_failure(&error) {
                    permit.failure();
                } else {
                    permit.refusal();
                }
                Err(BreakerError::Inner(error))
            }
        }
    }

    /// Closes the breaker at once, forgetting its counts (an operator's
    /// override after fixing the backend). Counters in
    /// [`stats`](CircuitBreaker::stats) keep counting.
    pub fn reset(&self) {
        let change = {
            let mut half_open = self.lock();
            let word = self.word.load(Ordering::Acquire);
            if kind_of(word) == StateKind::Closed {
                self.consecutive_failures.store(0, Ordering::Relaxed);
                if let Some(window) = &self.window {
                    window.reset();
                }
                None
            } else {
                Some(self.change_locked(&mut half_open, word, StateKind::Closed))
            }
        };
        if let Some(change) = change {
            self.announce(change, "reset by hand");
        }
    }

    // --- the state machine ---------------------------------------------

    /// Admits a call or not; on admission returns the state word it was
    /// admitted under.
    fn acquire(&self) -> Option<u64> {
        loop {
            let word = self.word.load(Ordering::Acquire);
            match kind_of(word) {
                StateKind::Closed => {
                    return Some(word);
                }
                StateKind::Open => {
                    let now = self.clock.now();
                    let opened_at = self.opened_at.load(Ordering::Acquire);
                    let recovery = saturating_nanos(self.settings.recovery_timeout);
                    if self.nanos_since_base(now) < opened_at.saturating_add(recovery) {
                        self.counters.rejections.incr();
                        return None;
                    }
                    let mut half_open = self.lock();
                    if self.word.load(Ordering::Acquire) != word {
                        continue; // someone else moved it on; look again
                    }
                    let change = self.change_locked(&mut half_open, word, StateKind::HalfOpen);
                    half_open.in_flight = 1;
                    let admitted = self.word.load(Ordering::Acquire);
                    drop(half_open);
                    self.announce(change, "recovery timeout passed");
                    return Some(admitted);
                }
                StateKind::HalfOpen => {
                    let mut half_open = self.lock();
                    if self.word.load(Ordering::Acquire) != word {
                        continue;
                    }
                    if half_open.in_flight < self.settings.half_open_max_calls {
                        half_open.in_flight += 1;
                        return Some(word);
                    }
                    self.counters.rejections.incr();
                    return None;
                }
            }
        }
    }

    /// Records how a call ended. `admitted` is the word the call was
    /// admitted under, or `None` when the caller did not keep it (the
    /// [`FailurePolicy`] interface).
    fn complete(&self, admitted: Option<u64>, verdict: Verdict) {
        match verdict {
            Verdict::Success => self.counters.successes.incr(),
            Verdict::Failure { slow } => {
                self.counters.failures.incr();
                if slow {
                    self.counters.slow_calls.incr();
                }
            }
            Verdict::Refusal => self.counters.refusals.incr(),
            Verdict::Abandoned => self.counters.abandoned.incr(),
        }
        loop {
            let word = self.word.load(Ordering::Acquire);
            match kind_of(word) {
                StateKind::Closed => {
                    if admitted.is_some_and(|admitted| admitted != word) {
                        return; // admitted in an earlier state
                    }
                    self.complete_closed(word, verdict);
                    return;
                }
                // Outcomes of calls admitted before the breaker opened say
                // nothing new.
                StateKind::Open => return,
                StateKind::HalfOpen => {
                    let mut half_open = self.lock();
                    if self.word.load(Ordering::Acquire) != word {
                        continue;
                    }
                    match admitted {
                        Some(admitted) if admitted != word => return,
                        // Without a permit, an outcome while no trial is
                        // in flight belongs to a call admitted earlier.
                        None if half_open.in_flight == 0 => return,
                        _ => {}
                    }
                    half_open.in_flight -= 1;
                    let (change, reason) = match verdict {
                        Verdict::Success => {
                            half_open.successes += 1;
                            if half_open.successes < self.settings.success_threshold {
                                return;
                            }
                            (
                                self.change_locked(&mut half_open, word, StateKind::Closed),
                                "trial calls succeeded",
                            )
                        }
                        Verdict::Failure { .. } => (
                            self.change_locked(&mut half_open, word, StateKind::Open),
                            "a trial call failed",
                        ),
                        Verdict::Refusal | Verdict::Abandoned => return,
                    };
                    drop(half_open);
                    self.announce(change, reason);
                    return;
                }
            }
        }
    }

    /// The lock-free closed path.
    #[inline]
    fn complete_closed(&self, word: u64, verdict: Verdict) {
        match verdict {
            Verdict::Success => {
                // Only write the shared counter when there is something to
                // clear: the healthy path stays read-only on it.
                if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
                    self.consecutive_failures.store(0, Ordering::Relaxed);
                }
                if let Some(window) = &self.window
                    && window.record(false)
                {
                    self.trip(word, "failure rate over the window");
                }
            }
            Verdict::Failure { .. } => {
                let failures = self
                    .consecutive_failures
                    .fetch_add(1, Ordering::AcqRel)
                    .saturating_add(1);
                let rate_exceeded = self.window.as_ref().is_some_and(|w| w.record(true));
                if failures >= self.settings.failure_threshold {
                    self.trip(word, "consecutive failures");
                } else if rate_exceeded {
                    self.trip(word, "failure rate over the window");
                }
            }
            Verdict::Refusal | Verdict::Abandoned => {}
        }
    }

    /// Opens a closed breaker, unless it changed since `word` was read.
    #[cold]
    fn trip(&self, word: u64, reason: &'static str) {
        let mut half_open = self.lock();
        if self.word.load(Ordering::Acquire) != word {
            return;
        }
        let change = self.change_locked(&mut half_open, word, StateKind::Open);
        drop(half_open);
        self.announce(change, reason);
    }

    /// Moves from the state in `word` to `to`. Called with the lock held.
    fn change_locked(
        &self,
        half_open: &mut MutexGuard<'_, HalfOpen>,
        word: u64,
        to: StateKind,
    ) -> StateChange {
        let at = self.clock.now();
        match to {
            StateKind::Closed => {
                self.consecutive_failures.store(0, Ordering::Relaxed);
                if let Some(window) = &self.window {
                    window.reset();
                }
            }
            StateKind::Open => {
                self.opened_at
                    .store(self.nanos_since_base(at), Ordering::Release);
                self.counters.opens.incr();
            }
            StateKind::HalfOpen => {}
        }
        half_open.in_flight = 0;
        half_open.successes = 0;
        let generation = generation_of(word).wrapping_add(1);
        self.word.store(pack(generation, to), Ordering::Release);
        self.counters.state_changes.incr();
        StateChange {
            from: kind_of(word),
            to,
            at,
        }
    }

    /// Logs a change and hands it to the callback, outside the lock.
    fn announce(&self, change: StateChange, reason: &'static str) {
        let name = &*self.settings.name;
        match change.to {
            StateKind::Open => {
                // The cause an operator needs: what the backend said.
                let last = self.last_error.get();
                tracing::warn!(
                    breaker = name,
                    from = change.from.as_str(),
                    to = change.to.as_str(),
                    reason,
                    class = last.as_ref().map(|last| last.class.as_str()),
                    cause = last.as_ref().map(|last| last.message.as_str()),
                    recovery_timeout = ?self.settings.recovery_timeout,
                    "circuit breaker opened: calls are rejected until the recovery timeout"
                )
            }
            StateKind::HalfOpen => tracing::info!(
                breaker = name,
                from = change.from.as_str(),
                to = change.to.as_str(),
                reason,
                "circuit breaker half-open: letting trial calls through"
            ),
            StateKind::Closed => tracing::info!(
                breaker = name,
                from = change.from.as_str(),
                to = change.to.as_str(),
                reason,
                "circuit breaker closed: calls go through"
            ),
        }
        if let Some(callback) = &self.on_state_change {
            callback(change);
        }
    }

    fn lock(&self) -> MutexGuard<'_, HalfOpen> {
        // Nothing panics while holding the lock (callbacks run outside
        // it), but never let a poisoned lock take the breaker down.
        self.half_open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn nanos_since_base(&self, now: Instant) -> u64 {
        saturating_nanos(now.saturating_duration_since(self.base))
    }

    fn opened_since(&self) -> Instant {
        self.base + Duration::from_nanos(self.opened_at.load(Ordering::Acquire))
    }

    /// What an outcome means for the breaker; a failure that counts is kept
    /// as the last error first, so the log of the opening it causes names it.
    fn verdict(&self, operation: Option<Operation>, outcome: CallOutcome<'_>) -> Verdict {
        if let CallOutcome::Failure { error, .. } = outcome
            && error.class().affects_health()
        {
            self.last_error.set(operation, error);
        }
        match outcome {
            CallOutcome::Success { elapsed } => self.judge_success(elapsed),
            // A refused input, a full or read-only server: the backend
            // answered, and answers other calls fine.
            CallOutcome::Failure { error, .. } if !error.class().affects_health() => {
                Verdict::Refusal
            }
            CallOutcome::Failure { .. } => Verdict::Failure { slow: false },
            CallOutcome::Abandoned => Verdict::Abandoned,
        }
    }

    #[inline]
    fn judge_success(&self, elapsed: Duration) -> Verdict {
        match self.settings.slow_call {
            Some(slow) if elapsed > slow => Verdict::Failure { slow: true },
            _ => Verdict::Success,
        }
    }
}

impl FailurePolicy for CircuitBreaker {
    /// `Reject` while open (until the recovery timeout has passed: then the
    /// breaker goes half-open and this call is its first trial) and while
    /// half-open with every trial slot taken. The ticket holds the state
    /// the call was admitted under.
    ///
    /// One breaker judges every kind of call together; to keep reads
    /// flowing while only writes fail, guard a tier with a
    /// [`TierBreaker`](crate::TierBreaker).
    #[inline]
    fn admit(&self, _operation: Operation) -> Admission {
        match self.acquire() {
            Some(word) => Admission::Allow(Ticket::new(word)),
            None => Admission::Reject,
        }
    }

    /// Feeds the outcome of a call admitted with `ticket` to the state
    /// machine. An outcome of a call admitted under an earlier state (the
    /// breaker opened or went half-open meanwhile) says nothing about the
    /// current one and is only counted.
    #[inline]
    fn record(&self, operation: Operation, ticket: Ticket, outcome: CallOutcome<'_>) {
        let verdict = self.verdict(Some(operation), outcome);
        self.complete(Some(ticket.get()), verdict);
    }

    /// The action set with [`Builder::on_failure`] (by default
    /// [`FailureAction::Ignore`]: fail open).
    fn on_failure(&self, _operation: Operation, _error: &Error) -> FailureAction {
        self.settings.on_failure
    }

    fn circuits(&self) -> Vec<CircuitStatus> {
        vec![self.status()]
    }
}

impl fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("name", &self.settings.name)
            .field("state", &self.state())
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// Leave to make one call, from [`CircuitBreaker::try_acquire`].
///
/// Report how the call ended with one of the consuming methods. Dropping
/// the permit without reporting counts the call as abandoned: it neither
/// succeeds nor fails, and frees its half-open trial slot.
///
/// The permit remembers the state it was admitted in, so the outcome of a
/// call admitted before a state change never counts in the new state.
#[must_use = "report the call's outcome, or drop the permit to abandon it"]
pub struct Permit<'a> {
    breaker: &'a CircuitBreaker,
    word: u64,
    done: bool,
}

impl Permit<'_> {
    /// The call ended: a success (a failure if slower than the slow-call
    /// duration), a failure (a refusal if [`Error::is_refusal`]), or
    /// abandoned.
    pub fn record(self, outcome: CallOutcome<'_>) {
        let verdict = self.breaker.verdict(None, outcome);
        self.finish(verdict);
    }

    /// The call succeeded after `elapsed` (a failure if that is longer
    /// than the slow-call duration).
    #[inline]
    pub fn success(self, elapsed: Duration) {
        let verdict = self.breaker.judge_success(elapsed);
        self.finish(verdict);
    }

    /// The call failed.
    pub fn failure(self) {
        self.finish(Verdict::Failure { slow: false });
    }

    /// The call ended with an error that says nothing about the backend's
    /// health (bad input): neither a success nor a failure.
    pub fn refusal(self) {
        self.finish(Verdict::Refusal);
    }

    #[inline]
    fn finish(mut self, verdict: Verdict) {
        self.done = true;
        self.breaker.complete(Some(self.word), verdict);
    }
}

impl Drop for Permit<'_> {
    #[inline]
    fn drop(&mut self) {
        if !self.done {
            self.breaker.complete(Some(self.word), Verdict::Abandoned);
        }
    }
}

impl fmt::Debug for Permit<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("breaker", &self.breaker.settings.name)
            .field("admitted_in", &kind_of(self.word))
            .finish()
    }
}
