//! Many tasks on a multi-threaded runtime calling through a half-open
//! breaker: no more than `half_open_max_calls` trials get through at once.
//! The "slow" inner call waits on a gate the test opens, not on a timer.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cache_breaker::{BreakerError, CircuitBreaker, StateKind};
use cache_core::{CallOutcome, Error, ManualClock};
use tokio::sync::{Barrier, mpsc, watch};

use cache_test_support::policy::Drive;

const TASKS: usize = 64;
const TRIALS: u32 = 3;
const RECOVERY: Duration = Duration::from_secs(30);

fn half_open_breaker() -> Arc<CircuitBreaker> {
    let clock = ManualClock::shared();
    let breaker = CircuitBreaker::builder()
        .failure_threshold(1)
        .recovery_timeout(RECOVERY)
        .success_threshold(TRIALS)
        .half_open_max_calls(TRIALS)
        .clock(clock.clone())
        .build()
        .unwrap();
    assert!(breaker.admits());
    breaker.report(CallOutcome::Failure {
        elapsed: Duration::ZERO,
        error: &Error::timeout("l2", Duration::from_millis(50)),
    });
    assert_eq!(breaker.state().kind(), StateKind::Open);
    // The next call will find the recovery timeout passed.
    clock.advance(RECOVERY);
    Arc::new(breaker)
}

#[derive(Debug, Default)]
struct InFlight {
    now: AtomicUsize,
    max: AtomicUsize,
}

impl InFlight {
    fn enter(&self) {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(now, Ordering::SeqCst);
    }

    fn leave(&self) {
        self.now.fetch_sub(1, Ordering::SeqCst);
    }
}

#[derive(Debug, PartialEq)]
enum Event {
    Entered,
    Rejected,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn at_most_n_trials_in_flight_while_half_open() {
    let breaker = half_open_breaker();
    let in_flight = Arc::new(InFlight::default());
    let start = Arc::new(Barrier::new(TASKS));
    let (gate, gate_rx) = watch::channel(false);
    let (events, mut events_rx) = mpsc::unbounded_channel();

    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let (breaker, in_flight, start) = (breaker.clone(), in_flight.clone(), start.clone());
            let (mut gate_rx, events) = (gate_rx.clone(), events.clone());
            tokio::spawn(async move {
                start.wait().await; // everyone calls at once
                let result = breaker
                    .call(|| async {
                        in_flight.enter();
                        let _ = events.send(Event::Entered);
                        // The slow backend: answers when the test says so.
                        let opened = gate_rx.wait_for(|open| *open).await.is_ok();
                        in_flight.leave();
                        if opened { Ok(()) } else { Err("gate dropped") }
                    })
                    .await;
                if matches!(result, Err(BreakerError::Rejected)) {
                    let _ = events.send(Event::Rejected);
                }
                result
            })
        })
        .collect();
    drop(events);

    // Every task either got in (and now waits on the gate) or was rejected.
    let mut entered = 0;
    let mut rejected = 0;
    for _ in 0..TASKS {
        match events_rx.recv().await.expect("every task reports") {
            Event::Entered => entered += 1,
            Event::Rejected => rejected += 1,
        }
    }
    println!(
        "{TASKS} tasks: {entered} trials entered, {rejected} rejected, max in flight {}",
        in_flight.max.load(Ordering::SeqCst)
    );
    assert_eq!(
        entered, TRIALS as usize,
        "every free slot was taken, no more"
    );
    assert_eq!(rejected, TASKS - TRIALS as usize);
    assert!(in_flight.max.load(Ordering::SeqCst) <= TRIALS as usize);
    assert_eq!(breaker.state().kind(), StateKind::HalfOpen);

    gate.send_replace(true);
    let mut ok = 0;
    for task in tasks {
        match task.await.expect("no task panics") {
            Ok(()) => ok += 1,
            Err(BreakerError::Rejected) => {}
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(ok, TRIALS as usize);
    assert_eq!(
        breaker.state().kind(),
        StateKind::Closed,
        "the trials closed it"
    );
    let stats = breaker.stats();
    assert_eq!(stats.rejections, (TASKS - TRIALS as usize) as u64);
    assert_eq!(stats.calls, 1 + u64::from(TRIALS));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancelled_trials_free_their_slots() {
    let breaker = half_open_breaker();
    let (entered_tx, mut entered_rx) = mpsc::unbounded_channel();
    // Trials that hang forever.
    let hung: Vec<_> = (0..TRIALS)
        .map(|_| {
            let (breaker, entered_tx) = (breaker.clone(), entered_tx.clone());
            tokio::spawn(async move {
                breaker
                    .call(|| async {
                        let _ = entered_tx.send(());
                        std::future::pending::<Result<(), Error>>().await
                    })
                    .await
            })
        })
        .collect();
    for _ in 0..TRIALS {
        entered_rx.recv().await.expect("each trial starts");
    }
    let rejected = breaker.call(|| async { Ok::<_, Error>(()) }).await;
    assert!(
        matches!(rejected, Err(BreakerError::Rejected)),
        "all slots taken"
    );

    for task in hung {
        task.abort();
        assert!(task.await.unwrap_err().is_cancelled());
    }
    assert_eq!(breaker.stats().abandoned, u64::from(TRIALS));
    assert_eq!(breaker.state().kind(), StateKind::HalfOpen);

    // The slots are free again: TRIALS successes close the breaker.
    for _ in 0..TRIALS {
        let answer = breaker.call(|| async { Ok::<_, Error>(7) }).await;
        assert_eq!(answer.ok(), Some(7));
    }
    assert_eq!(breaker.state().kind(), StateKind::Closed);
}

#[test]
fn closed_path_counts_stay_exact_across_threads() {
    let breaker = Arc::new(
        CircuitBreaker::builder()
            .failure_threshold(u32::MAX)
            .failure_rate(1.0, 64, 64)
            .build()
            .unwrap(),
    );
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let breaker = breaker.clone();
            std::thread::spawn(move || {
                let error = Error::timeout("l2", Duration::ZERO);
                for i in 0..10_000u32 {
                    assert!(breaker.admits());
                    if (i + t) % 4 == 0 {
                        breaker.report(CallOutcome::Failure {
                            elapsed: Duration::ZERO,
                            error: &error,
                        });
                    } else {
                        breaker.report(CallOutcome::Success {
                            elapsed: Duration::ZERO,
                        });
                    }
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let stats = breaker.stats();
    assert_eq!(stats.calls, 40_000);
    assert_eq!(stats.failures, 10_000);
    assert_eq!(stats.successes, 30_000);
    assert_eq!(
        stats.state,
        StateKind::Closed,
        "a quarter failing never reaches 100%"
    );
}
