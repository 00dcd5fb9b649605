//! Model-based property test: random sequences of calls (successes, slow
//! successes, failures, refusals, abandoned calls; completed at once or
//! held open as permits) and clock steps, with the breaker's state and
//! every admission decision compared after each step against a small
//! reference state machine.
//!
//! The case count comes from `PROPTEST_CASES` (proptest's default config
//! reads it), so `cargo xtask proptest --cases N` controls it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cache_breaker::{CircuitBreaker, Permit, State};
use cache_core::{CallOutcome, Clock, Error, ManualClock};
use proptest::prelude::*;

use cache_test_support::policy::Drive;

// ---- the reference model --------------------------------------------------

#[derive(Debug, Clone, Copy)]
struct Config {
    failure_threshold: u32,
    recovery: Duration,
    success_threshold: u32,
    max_trials: u32,
    slow: Option<Duration>,
    /// (rate, window, min_calls)
    rate: Option<(f64, u32, u32)>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum ModelState {
    Closed { failures: u32 },
    Open { since: Duration },
    HalfOpen { successes: u32, in_flight: u32 },
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Verdict {
    Success,
    Failure,
    Neutral,
}

#[derive(Debug)]
struct Model {
    config: Config,
    now: Duration,
    state: ModelState,
    /// Bumped on every state change; an outcome counts only in the state
    /// its call was admitted in.
    generation: u64,
    window: VecDeque<bool>,
    rejections: u64,
    changes: u64,
}

impl Model {
    fn new(config: Config) -> Self {
        Model {
            config,
            now: Duration::ZERO,
            state: ModelState::Closed { failures: 0 },
            generation: 0,
            window: VecDeque::new(),
            rejections: 0,
            changes: 0,
        }
    }

    fn enter(&mut self, state: ModelState) {
        if let ModelState::Closed { .. } = state {
            self.window.clear();
        }
        self.state = state;
        self.generation += 1;
        self.changes += 1;
    }

    /// The generation the call is admitted in, or `None` if rejected.
    fn admit(&mut self) -> Option<u64> {
        match self.state {
            ModelState::Closed { .. } => Some(self.generation),
            ModelState::Open { since } => {
                if self.now >= since + self.config.recovery {
                    self.enter(ModelState::HalfOpen {
                        successes: 0,
                        in_flight: 1,
                    });
                    Some(self.generation)
                } else {
                    self.rejections += 1;
                    None
                }
            }
            ModelState::HalfOpen {
                successes,
                in_flight,
            } => {
                if in_flight < self.config.max_trials {
                    self.state = ModelState::HalfOpen {
                        successes,
                        in_flight: in_flight + 1,
                    };
                    Some(self.generation)
                } else {
                    self.rejections += 1;
                    None
                }
            }
        }
    }

    fn verdict(&self, outcome: Outcome) -> Verdict {
        match outcome {
            Outcome::Success(elapsed) => match self.config.slow {
                Some(slow) if elapsed > slow => Verdict::Failure,
                _ => Verdict::Success,
            },
            Outcome::Failure => Verdict::Failure,
            Outcome::Refusal | Outcome::Abandon => Verdict::Neutral,
        }
    }

    fn rate_exceeded(&mut self, failed: bool) -> bool {
        let Some((rate, size, min_calls)) = self.config.rate else {
            return false;
        };
        self.window.push_back(failed);
        if self.window.len() > size as usize {
            self.window.pop_front();
        }
        let calls = self.window.len() as u64;
        let failures = self.window.iter().filter(|f| **f).count() as u64;
        calls >= u64::from(min_calls) && failures as f64 >= rate * calls as f64
    }

    fn complete(&mut self, generation: u64, outcome: Outcome) {
        if generation != self.generation {
            return;
        }
        let verdict = self.verdict(outcome);
        match self.state {
            ModelState::Closed { failures } => match verdict {
                Verdict::Success => {
                    self.state = ModelState::Closed { failures: 0 };
                    if self.rate_exceeded(false) {
                        self.enter(ModelState::Open { since: self.now });
                    }
                }
                Verdict::Failure => {
                    let failures = failures + 1;
                    self.state = ModelState::Closed { failures };
                    let rate = self.rate_exceeded(true);
                    if failures >= self.config.failure_threshold || rate {
                        self.enter(ModelState::Open { since: self.now });
                    }
                }
                Verdict::Neutral => {}
            },
            ModelState::Open { .. } => {}
            ModelState::HalfOpen {
                successes,
                in_flight,
            } => {
                let in_flight = in_flight - 1;
                match verdict {
                    Verdict::Success if successes + 1 >= self.config.success_threshold => {
                        self.enter(ModelState::Closed { failures: 0 });
                    }
                    Verdict::Success => {
                        self.state = ModelState::HalfOpen {
                            successes: successes + 1,
                            in_flight,
                        };
                    }
                    Verdict::Failure => self.enter(ModelState::Open { since: self.now }),
                    Verdict::Neutral => {
                        self.state = ModelState::HalfOpen {
                            successes,
                            in_flight,
                        };
                    }
                }
            }
        }
    }

    /// The state the breaker should report.
    fn expected(&self, start: Instant) -> State {
        match self.state {
            ModelState::Closed { failures } => State::Closed { failures },
            ModelState::Open { since } => State::Open {
                since: start + since,
            },
            ModelState::HalfOpen { successes, .. } => State::HalfOpen { successes },
        }
    }
}

// ---- operations -----------------------------------------------------------

#[derive(Debug, Clone, Copy)]
enum Outcome {
    /// Succeeded after this long (slow past the slow-call duration).
    Success(Duration),
    Failure,
    /// An error that is the input's fault (value too large).
    Refusal,
    Abandon,
}

#[derive(Debug, Clone, Copy)]
enum Op {
    /// `admit` and, if allowed, `record` at once (the FailurePolicy path).
    Call(Outcome),
    /// `try_acquire` and hold the permit (a call in flight).
    Start,
    /// End the held permit at this index (modulo their number).
    Finish(usize, Outcome),
    /// Step the clock.
    Advance(Duration),
}

const SLOW: Duration = Duration::from_millis(100);
const MAX_HELD: usize = 6;

fn outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![
        4 => (0u64..=2 * SLOW.as_millis() as u64)
            .prop_map(|ms| Outcome::Success(Duration::from_millis(ms))),
        1 => Just(Outcome::Success(SLOW + Duration::from_millis(1))),
        4 => Just(Outcome::Failure),
        1 => Just(Outcome::Refusal),
        1 => Just(Outcome::Abandon),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => outcome().prop_map(Op::Call),
        2 => Just(Op::Start),
        2 => (any::<usize>(), outcome()).prop_map(|(i, o)| Op::Finish(i, o)),
        // Steps from a nanosecond to past two recovery timeouts.
        3 => prop_oneof![
            (1u64..=1_000).prop_map(Duration::from_nanos),
            (1u64..=250).prop_map(Duration::from_millis),
        ]
        .prop_map(Op::Advance),
    ]
}

fn config() -> impl Strategy<Value = Config> {
    (
        1u32..=5,
        prop_oneof![Just(100u64), 1u64..=120],
        1u32..=4,
        1u32..=3,
        proptest::option::of(Just(SLOW)),
        proptest::option::of(
            (
                prop_oneof![Just(0.25), Just(0.5), Just(0.75), Just(1.0)],
                1u32..=8,
            )
                .prop_flat_map(|(rate, size)| (Just(rate), Just(size), 1u32..=size)),
        ),
    )
        .prop_map(
            |(failure_threshold, recovery_ms, success_threshold, max_trials, slow, rate)| Config {
                failure_threshold,
                recovery: Duration::from_millis(recovery_ms),
                success_threshold,
                max_trials,
                slow,
                rate,
            },
        )
}

/// Like [`config`], but always with the failure-rate window and a
/// consecutive-failure threshold too high to matter, so the window is what
/// opens the breaker.
fn rate_config() -> impl Strategy<Value = Config> {
    (config(), 0.1f64..=1.0, 1u32..=12)
        .prop_flat_map(|(config, rate, size)| (Just(config), Just(rate), Just(size), 1u32..=size))
        .prop_map(|(config, rate, size, min_calls)| Config {
            failure_threshold: 1_000,
            rate: Some((rate, size, min_calls)),
            ..config
        })
}

fn build(config: &Config, clock: &Arc<ManualClock>) -> CircuitBreaker {
    let mut builder = CircuitBreaker::builder()
        .failure_threshold(config.failure_threshold)
        .recovery_timeout(config.recovery)
        .success_threshold(config.success_threshold)
        .half_open_max_calls(config.max_trials)
        .clock(clock.clone());
    if let Some(slow) = config.slow {
        builder = builder.slow_call_duration(slow);
    }
    if let Some((rate, size, min_calls)) = config.rate {
        builder = builder.failure_rate(rate, size, min_calls);
    }
    builder
        .build()
        .expect("the strategies only make valid settings")
}

fn record(breaker: &CircuitBreaker, outcome: Outcome) {
    let error = match outcome {
        Outcome::Refusal => Error::ValueTooLarge {
            layer: "l2".into(),
            size: 2,
            limit: 1,
        },
        _ => Error::timeout("l2", SLOW),
    };
    breaker.report(match outcome {
        Outcome::Success(elapsed) => CallOutcome::Success { elapsed },
        Outcome::Failure | Outcome::Refusal => CallOutcome::Failure {
            elapsed: Duration::ZERO,
            error: &error,
        },
        Outcome::Abandon => CallOutcome::Abandoned,
    });
}

fn finish(permit: Permit<'_>, outcome: Outcome) {
    match outcome {
        Outcome::Success(elapsed) => permit.success(elapsed),
        Outcome::Failure => permit.failure(),
        Outcome::Refusal => permit.refusal(),
        Outcome::Abandon => drop(permit),
    }
}

fn run(config: Config, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let clock = ManualClock::shared();
    let start = clock.now();
    let breaker = build(&config, &clock);
    let mut model = Model::new(config);
    let mut held: Vec<(Permit<'_>, u64)> = Vec::new();
    for (step, op) in ops.into_iter().enumerate() {
        match op {
            Op::Call(outcome) => {
                let expected = model.admit();
                let admitted = breaker.admits();
                prop_assert_eq!(
                    admitted,
                    expected.is_some(),
                    "step {}: admit of {:?} in {:?}",
                    step,
                    op,
                    model.state
                );
                if let Some(generation) = expected {
                    model.complete(generation, outcome);
                    record(&breaker, outcome);
                }
            }
            Op::Start if held.len() < MAX_HELD => {
                let expected = model.admit();
                let permit = breaker.try_acquire();
                prop_assert_eq!(
                    permit.is_some(),
                    expected.is_some(),
                    "step {}: try_acquire in {:?}",
                    step,
                    model.state
                );
                if let (Some(permit), Some(generation)) = (permit, expected) {
                    held.push((permit, generation));
                }
            }
            Op::Start => {}
            Op::Finish(index, outcome) => {
                if !held.is_empty() {
                    let (permit, generation) = held.swap_remove(index % held.len());
                    model.complete(generation, outcome);
                    finish(permit, outcome);
                }
            }
            Op::Advance(by) => {
                model.now += by;
                clock.advance(by);
            }
        }
        prop_assert_eq!(
            breaker.state(),
            model.expected(start),
            "step {}: after {:?}",
            step,
            op
        );
        let stats = breaker.stats();
        prop_assert_eq!(
            stats.rejections,
            model.rejections,
            "step {}: rejections",
            step
        );
        prop_assert_eq!(
            stats.state_changes,
            model.changes,
            "step {}: state changes",
            step
        );
    }
    // With every permit ended, every admitted call is accounted for.
    for (permit, generation) in held.drain(..) {
        model.complete(generation, Outcome::Abandon);
        drop(permit);
    }
    prop_assert_eq!(breaker.state(), model.expected(start));
    let stats = breaker.stats();
    prop_assert_eq!(
        stats.calls,
        stats.successes + stats.failures + stats.refusals + stats.abandoned
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        // Keep `PROPTEST_CASES` and the other environment overrides.
        max_shrink_iters: 4_096,
        ..ProptestConfig::default()
    })]

    #[test]
    fn breaker_follows_the_model(
        config in config(),
        ops in proptest::collection::vec(op(), 1..200),
    ) {
        run(config, ops)?;
    }

    #[test]
    fn failure_rate_window_follows_the_model(
        config in rate_config(),
        ops in proptest::collection::vec(op(), 1..200),
    ) {
        run(config, ops)?;
    }
}
