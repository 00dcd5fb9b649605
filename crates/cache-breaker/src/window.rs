//! A lock-free sliding window over the outcomes of the last `M` calls.
//!
//! Each recorded outcome takes the next slot of a ring (`fetch_add` on a
//! cursor) and swaps its failure bit in; the failure count moves by the
//! difference between the new bit and the one it replaced. The count
//! therefore always converges to the number of set bits, whatever the
//! interleaving; a reader racing with writers may see it one or two off,
//! which is fine for a health estimate. Single-threaded it is exact.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

/// The failure-rate rule: trip when at least `min_calls` of the last
/// `size` calls were recorded and `rate` of them or more failed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct RateRule {
    pub(crate) rate: f64,
    pub(crate) size: u32,
    pub(crate) min_calls: u32,
}

impl RateRule {
    /// Whether `failures` out of `calls` breaks the rule. Also used, with
    /// the same arithmetic, by the reference model of the property tests.
    #[inline]
    pub(crate) fn exceeded(&self, failures: u64, calls: u64) -> bool {
        calls >= u64::from(self.min_calls) && failures as f64 >= self.rate * calls as f64
    }
}

#[derive(Debug)]
pub(crate) struct Window {
    rule: RateRule,
    slots: Box<[AtomicBool]>,
    cursor: AtomicU64,
    failures: AtomicI64,
}

impl Window {
    pub(crate) fn new(rule: RateRule) -> Self {
        Window {
            rule,
            slots: (0..rule.size).map(|_| AtomicBool::new(false)).collect(),
            cursor: AtomicU64::new(0),
            failures: AtomicI64::new(0),
        }
    }

    /// Records one outcome and says whether the window now breaks the rule.
    #[inline]
    pub(crate) fn record(&self, failed: bool) -> bool {
        let index = self.cursor.fetch_add(1, Ordering::Relaxed);
        let len = self.slots.len() as u64;
        // `len` is at least 1: the builder checks it.
        let slot = &self.slots[(index % len) as usize];
        let old = slot.swap(failed, Ordering::AcqRel);
        let failures = match (old, failed) {
            (false, true) => self.failures.fetch_add(1, Ordering::AcqRel) + 1,
            (true, false) => self.failures.fetch_sub(1, Ordering::AcqRel) - 1,
            _ => self.failures.load(Ordering::Acquire),
        };
        if failures <= 0 {
            // The healthy path: nothing to compute.
            return false;
        }
        let calls = (index + 1).min(len);
        self.rule.exceeded(failures as u64, calls)
    }

    /// Empties the window (on closing the breaker). Called under the
    /// breaker's transition lock.
    pub(crate) fn reset(&self) {
        for slot in self.slots.iter() {
            slot.store(false, Ordering::Relaxed);
        }
        self.failures.store(0, Ordering::Relaxed);
        self.cursor.store(0, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(rate: f64, size: u32, min_calls: u32) -> RateRule {
        RateRule {
            rate,
            size,
            min_calls,
        }
    }

    #[test]
    fn waits_for_min_calls_then_trips_at_rate() {
        let window = Window::new(rule(0.5, 4, 3));
        assert!(!window.record(true), "one call is under min_calls");
        assert!(!window.record(false), "two calls are under min_calls");
        assert!(!window.record(false), "1 of 3 is under 50%");
        assert!(window.record(true), "2 of 4 is 50%");
    }

    #[test]
    fn old_outcomes_slide_out() {
        let window = Window::new(rule(0.5, 2, 2));
        assert!(!window.record(true));
        assert!(window.record(true), "2 of 2 failed");
        assert!(window.record(false), "1 of the last 2 failed: still 50%");
        assert!(!window.record(false), "the failures slid out");
        window.reset();
        assert!(
            !window.record(true),
            "after a reset one call is under min_calls"
        );
    }
}
