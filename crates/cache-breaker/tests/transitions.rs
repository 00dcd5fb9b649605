//! Each transition, the callback, the counters, refusals and abandoned
//! trials, step by step on a manual clock.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use cache_breaker::{BreakerError, Builder, CircuitBreaker, State, StateChange, StateKind};
use cache_core::{CallOutcome, Clock, Error, FailureAction, FailurePolicy, ManualClock};

use cache_test_support::policy::Drive;

const RECOVERY: Duration = Duration::from_secs(10);
const FAST: Duration = Duration::from_millis(1);

fn builder(clock: &Arc<ManualClock>) -> Builder {
    CircuitBreaker::builder()
        .name("test")
        .failure_threshold(3)
        .recovery_timeout(RECOVERY)
        .success_threshold(2)
        .half_open_max_calls(2)
        .clock(clock.clone())
}

fn backend_error() -> Error {
    Error::backend("l2", std::io::Error::other("connection refused"))
}

fn succeed(breaker: &CircuitBreaker) {
    assert!(breaker.admits());
    breaker.report(CallOutcome::Success { elapsed: FAST });
}

fn fail(breaker: &CircuitBreaker) {
    assert!(breaker.admits());
    breaker.report(CallOutcome::Failure {
        elapsed: FAST,
        error: &backend_error(),
    });
}

/// Opens the breaker with three failures.
fn open(breaker: &CircuitBreaker) {
    for _ in 0..3 {
        fail(breaker);
    }
    assert_eq!(breaker.state().kind(), StateKind::Open);
}

#[test]
fn consecutive_failures_open_and_a_success_resets_the_count() {
    let clock = ManualClock::shared();
    let breaker = builder(&clock).build().unwrap();
    assert_eq!(breaker.state(), State::Closed { failures: 0 });
    fail(&breaker);
    fail(&breaker);
    assert_eq!(breaker.state(), State::Closed { failures: 2 });
    succeed(&breaker);
    assert_eq!(breaker.state(), State::Closed { failures: 0 });
    fail(&breaker);
    fail(&breaker);
    clock.advance(Duration::from_secs(1));
    let opened_at = clock.now();
    fail(&breaker);
    assert_eq!(breaker.state(), State::Open { since: opened_at });
    assert!(!breaker.admits());
}

#[test]
fn open_rejects_until_the_recovery_timeout_then_admits_a_trial() {
    let clock = ManualClock::shared();
    let breaker = builder(&clock).build().unwrap();
    open(&breaker);
    clock.advance(RECOVERY - Duration::from_nanos(1));
    assert!(!breaker.admits());
    assert_eq!(
        breaker.state().kind(),
        StateKind::Open,
        "rejections do not move it"
    );
    clock.advance(Duration::from_nanos(1));
    assert!(
        breaker.admits(),
        "the first call after the timeout is a trial"
    );
    assert_eq!(breaker.state(), State::HalfOpen { successes: 0 });
}

#[test]
fn half_open_limits_trials_in_flight() {
    let clock = ManualClock::shared();
    let breaker = builder(&clock).build().unwrap();
    open(&breaker);
    clock.advance(RECOVERY);
    let first = breaker.try_acquire().expect("first trial");
    let second = breaker.try_acquire().expect("second trial");
    assert!(breaker.try_acquire().is_none(), "two trials are the limit");
    assert!(!breaker.admits());
    first.success(FAST);
    assert_eq!(breaker.state(), State::HalfOpen { successes: 1 });
    let third = breaker.try_acquire().expect("a slot was freed");
    assert!(breaker.try_acquire().is_none());
    second.success(FAST);
    assert_eq!(
        breaker.state(),
        State::Closed { failures: 0 },
        "two successes close it"
    );
    // A trial still in flight when the breaker closed counts as a closed
    // call of an earlier state: it changes nothing.
    third.failure();
    assert_eq!(breaker.state(), State::Closed { failures: 0 });
}

#[test]
fn a_failed_trial_reopens_for_another_timeout() {
    let clock = ManualClock::shared();
    let breaker = builder(&clock).build().unwrap();
    open(&breaker);
    clock.advance(RECOVERY);
    succeed(&breaker);
    assert_eq!(breaker.state(), State::HalfOpen { successes: 1 });
    let reopened_at = clock.now();
    fail(&breaker);
    assert_eq!(breaker.state(), State::Open { since: reopened_at });
    clock.advance(RECOVERY / 2);
    assert!(!breaker.admits(), "the timeout starts again");
    clock.advance(RECOVERY / 2);
    assert!(breaker.admits());
}

#[test]
fn callback_sees_every_change_in_order() {
    let clock = ManualClock::shared();
    let seen: Arc<Mutex<Vec<StateChange>>> = Arc::default();
    let sink = seen.clone();
    let breaker = builder(&clock)
        .on_state_change(move |change| sink.lock().unwrap().push(change))
        .build()
        .unwrap();
    let t0 = clock.now();
    open(&breaker);
    clock.advance(RECOVERY);
    let t1 = clock.now();
    succeed(&breaker);
    clock.advance(FAST);
    let t2 = clock.now();
    succeed(&breaker);
    let kinds: Vec<_> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|c| (c.from, c.to, c.at))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (StateKind::Closed, StateKind::Open, t0),
            (StateKind::Open, StateKind::HalfOpen, t1),
            (StateKind::HalfOpen, StateKind::Closed, t2),
        ]
    );
    assert_eq!(breaker.stats().state_changes, 3);
}

#[test]
fn callback_may_call_back_into_the_breaker() {
    let clock = ManualClock::shared();
    let slot: Arc<Mutex<Option<Arc<CircuitBreaker>>>> = Arc::default();
    let states: Arc<Mutex<Vec<StateKind>>> = Arc::default();
    let (slot2, states2) = (slot.clone(), states.clone());
    let breaker = Arc::new(
        builder(&clock)
            .on_state_change(move |_| {
                if let Some(b) = slot2.lock().unwrap().as_ref() {
                    // Would deadlock if the callback ran under the lock.
                    states2.lock().unwrap().push(b.state().kind());
                }
            })
            .build()
            .unwrap(),
    );
    *slot.lock().unwrap() = Some(breaker.clone());
    open(&breaker);
    clock.advance(RECOVERY);
    succeed(&breaker);
    assert_eq!(
        *states.lock().unwrap(),
        vec![StateKind::Open, StateKind::HalfOpen]
    );
    slot.lock().unwrap().take();
}

#[test]
fn counters_count_each_kind_of_outcome() {
    let clock = ManualClock::shared();
    let breaker = builder(&clock)
        .slow_call_duration(Duration::from_millis(100))
        .build()
        .unwrap();
    succeed(&breaker);
    fail(&breaker);
    assert!(breaker.admits());
    breaker.report(CallOutcome::Success {
        elapsed: Duration::from_millis(101),
    });
    assert!(breaker.admits());
    breaker.report(CallOutcome::Abandoned);
    assert!(breaker.admits());
    breaker.report(CallOutcome::Failure {
        elapsed: FAST,
        error: &Error::Serialize {
            format: "postcard",
            message: "unknown length".into(),
        },
    });
    fail(&breaker); // the third failure in a row (the slow call was one): opens
    assert!(!breaker.admits());
    assert!(!breaker.admits());
    let stats = breaker.stats();
    assert_eq!(stats.state, StateKind::Open);
    assert_eq!(stats.calls, 6);
    assert_eq!(stats.successes, 1);
    assert_eq!(stats.failures, 3);
    assert_eq!(stats.slow_calls, 1);
    assert_eq!(stats.refusals, 1);
    assert_eq!(stats.abandoned, 1);
    assert_eq!(stats.rejections, 2);
    assert_eq!(stats.state_changes, 1);
    assert_eq!(
        stats.calls,
        stats.successes + stats.failures + stats.refusals + stats.abandoned
    );
}

#[test]
fn refusals_are_not_failures() {
    let clock = ManualClock::shared();
    let breaker = builder(&clock).failure_threshold(1).build().unwrap();
    let too_large = Error::ValueTooLarge {
        layer: "l2".into(),
        size: 10,
        limit: 5,
    };
    assert!(too_large.is_refusal());
    for _ in 0..10 {
        assert!(breaker.admits());
        breaker.report(CallOutcome::Failure {
            elapsed: FAST,
            error: &too_large,
        });
    }
    assert_eq!(breaker.state(), State::Closed { failures: 0 });
    // A refusal during half-open neither closes nor reopens, and frees its slot.
    fail(&breaker);
    clock.advance(RECOVERY);
    assert!(breaker.admits());
    breaker.report(CallOutcome::Failure {
        elapsed: FAST,
        error: &too_large,
    });
    assert_eq!(breaker.state(), State::HalfOpen { successes: 0 });
    // Timeouts are failures.
    assert!(breaker.admits());
    breaker.report(CallOutcome::Failure {
        elapsed: FAST,
        error: &Error::timeout("l2", FAST),
    });
    assert_eq!(breaker.state().kind(), StateKind::Open);
}

#[test]
fn abandoned_trials_free_their_slot_without_counting() {
    let clock = ManualClock::shared();
    let breaker = builder(&clock).half_open_max_calls(1).build().unwrap();
    open(&breaker);
    clock.advance(RECOVERY);
    assert!(breaker.admits());
    assert!(!breaker.admits(), "the only slot is taken");
    breaker.report(CallOutcome::Abandoned);
    assert_eq!(breaker.state(), State::HalfOpen { successes: 0 });
    let permit = breaker.try_acquire().expect("the slot was freed");
    assert!(breaker.try_acquire().is_none());
    drop(permit); // a cancelled caller
    assert_eq!(breaker.state(), State::HalfOpen { successes: 0 });
    let again = breaker.try_acquire();
    assert!(again.is_some(), "dropping the permit freed the slot");
    drop(again);
    assert_eq!(
        breaker.stats().abandoned,
        3,
        "the record, and two dropped permits"
    );
    assert_eq!(
        breaker.stats().successes + breaker.stats().failures,
        3,
        "only the opening failures"
    );
}

#[test]
fn slow_successes_are_failures() {
    let clock = ManualClock::shared();
    let breaker = builder(&clock)
        .slow_call_duration(Duration::from_millis(100))
        .build()
        .unwrap();
    for _ in 0..2 {
        assert!(breaker.admits());
        breaker.report(CallOutcome::Success {
            elapsed: Duration::from_millis(100),
        });
    }
    assert_eq!(
        breaker.state(),
        State::Closed { failures: 0 },
        "at the limit is not slow"
    );
    for _ in 0..3 {
        assert!(breaker.admits());
        breaker.report(CallOutcome::Success {
            elapsed: Duration::from_millis(150),
        });
    }
    assert_eq!(breaker.state().kind(), StateKind::Open);
}

#[test]
fn failure_rate_opens_without_consecutive_failures() {
    let clock = ManualClock::shared();
    let breaker = builder(&clock)
        .failure_threshold(100)
        .failure_rate(0.5, 10, 4)
        .build()
        .unwrap();
    fail(&breaker);
    succeed(&breaker);
    fail(&breaker);
    assert_eq!(
        breaker.state().kind(),
        StateKind::Closed,
        "3 calls are under min_calls"
    );
    succeed(&breaker);
    assert_eq!(
        breaker.state().kind(),
        StateKind::Open,
        "2 of 4 failed: 50%"
    );
}

#[test]
fn failure_rate_window_slides_and_resets_on_close() {
    let clock = ManualClock::shared();
    let breaker = builder(&clock)
        .failure_threshold(100)
        .failure_rate(0.5, 4, 4)
        .build()
        .unwrap();
    fail(&breaker);
    for _ in 0..6 {
        succeed(&breaker);
    }
    fail(&breaker);
    assert_eq!(
        breaker.state().kind(),
        StateKind::Closed,
        "1 of the last 4 failed"
    );
    fail(&breaker);
    assert_eq!(
        breaker.state().kind(),
        StateKind::Open,
        "2 of the last 4 failed"
    );
    clock.advance(RECOVERY);
    succeed(&breaker);
    succeed(&breaker);
    assert_eq!(breaker.state().kind(), StateKind::Closed);
    fail(&breaker);
    fail(&breaker);
    fail(&breaker);
    assert_eq!(
        breaker.state().kind(),
        StateKind::Closed,
        "the window restarted empty: 3 calls are under min_calls"
    );
}

#[test]
fn on_failure_fails_open_by_default_and_can_propagate() {
    let error = backend_error();
    let open = CircuitBreaker::builder().build().unwrap();
    assert_eq!(
        open.on_failure(cache_core::Operation::Read, &error),
        FailureAction::Ignore
    );
    let closed = CircuitBreaker::builder()
        .on_failure(FailureAction::Propagate)
        .build()
        .unwrap();
    assert_eq!(
        closed.on_failure(cache_core::Operation::Read, &error),
        FailureAction::Propagate
    );
    let policy: Arc<dyn FailurePolicy> = Arc::new(closed);
    assert!(policy.admits());
}

#[test]
fn build_rejects_bad_settings() {
    let bad = [
        CircuitBreaker::builder().failure_threshold(0),
        CircuitBreaker::builder().success_threshold(0),
        CircuitBreaker::builder().half_open_max_calls(0),
        CircuitBreaker::builder().recovery_timeout(Duration::ZERO),
        CircuitBreaker::builder().slow_call_duration(Duration::ZERO),
        CircuitBreaker::builder().failure_rate(0.0, 10, 5),
        CircuitBreaker::builder().failure_rate(1.5, 10, 5),
        CircuitBreaker::builder().failure_rate(f64::NAN, 10, 5),
        CircuitBreaker::builder().failure_rate(0.5, 0, 0),
        CircuitBreaker::builder().failure_rate(0.5, 10, 0),
        CircuitBreaker::builder().failure_rate(0.5, 10, 11),
    ];
    for builder in bad {
        let debug = format!("{builder:?}");
        match builder.build() {
            Err(Error::Config(message)) => {
                assert!(message.contains("circuit breaker"), "{message}")
            }
            other => panic!("{debug} built: {other:?}"),
        }
    }
    assert!(
        CircuitBreaker::builder()
            .failure_rate(1.0, 1, 1)
            .build()
            .is_ok()
    );
}

#[test]
fn reset_closes_by_hand() {
    let clock = ManualClock::shared();
    let breaker = builder(&clock).build().unwrap();
    open(&breaker);
    breaker.reset();
    assert_eq!(breaker.state(), State::Closed { failures: 0 });
    assert!(breaker.admits());
}

#[tokio::test]
async fn call_records_outcomes_and_skips_rejected_calls() {
    let clock = ManualClock::shared();
    let breaker = builder(&clock)
        .failure_threshold(2)
        .slow_call_duration(Duration::from_millis(100))
        .build()
        .unwrap();
    // A slow success is returned, but counts as a failure (the clock
    // is stepped inside the call).
    let value = breaker
        .call(|| async {
            clock.advance(Duration::from_millis(200));
            Ok::<_, Error>(1)
        })
        .await;
    assert_eq!(value.ok(), Some(1));
    assert_eq!(breaker.state(), State::Closed { failures: 1 });
    // A refusal is returned and does not count.
    let refused = breaker
        .call_with(
            |e: &Error| !e.is_refusal(),
            || async {
                Err::<u32, _>(Error::ValueTooLarge {
                    layer: "l2".into(),
                    size: 2,
                    limit: 1,
                })
            },
        )
        .await;
    assert!(matches!(
        refused,
        Err(BreakerError::Inner(Error::ValueTooLarge { .. }))
    ));
    assert_eq!(breaker.state(), State::Closed { failures: 1 });
    let failed = breaker
        .call(|| async { Err::<u32, _>(backend_error()) })
        .await;
    assert!(matches!(
        failed,
        Err(BreakerError::Inner(Error::Backend { .. }))
    ));
    assert_eq!(breaker.state().kind(), StateKind::Open);
    let mut ran = false;
    let rejected = breaker
        .call(|| {
            ran = true;
            async { Ok::<u32, Error>(3) }
        })
        .await;
    assert!(rejected.as_ref().is_err_and(BreakerError::is_rejected));
    assert!(!ran, "a rejected call is never started");
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_call_frees_its_trial_slot() {
    let clock = ManualClock::shared();
    let breaker = builder(&clock).half_open_max_calls(1).build().unwrap();
    open(&breaker);
    clock.advance(RECOVERY);
    let hung = breaker.call(|| async {
        std::future::pending::<()>().await;
        Ok::<u32, Error>(0)
    });
    let timed_out = tokio::time::timeout(Duration::from_secs(1), hung).await;
    assert!(timed_out.is_err(), "the call never finishes");
    assert_eq!(breaker.stats().abandoned, 1);
    let next = breaker.call(|| async { Ok::<u32, Error>(5) }).await;
    assert_eq!(
        next.ok(),
        Some(5),
        "the slot of the cancelled trial was freed"
    );
    assert_eq!(breaker.state(), State::HalfOpen { successes: 1 });
}
