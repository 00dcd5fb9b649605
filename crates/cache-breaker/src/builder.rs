//! The builder of a [`CircuitBreaker`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use cache_core::{Clock, Error, FailureAction, SystemClock};

use crate::window::RateRule;
use crate::{CircuitBreaker, StateChange, TierBreaker};

pub(crate) type Callback = Arc<dyn Fn(StateChange) + Send + Sync>;

/// The validated settings of a breaker.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) name: Arc<str>,
    pub(crate) failure_threshold: u32,
    pub(crate) recovery_timeout: Duration,
    pub(crate) success_threshold: u32,
    pub(crate) half_open_max_calls: u32,
    pub(crate) failure_rate: Option<RateRule>,
    pub(crate) slow_call: Option<Duration>,
    pub(crate) on_failure: FailureAction,
}

/// Configures and builds a [`CircuitBreaker`].
///
/// Every setting has a default, so `CircuitBreaker::builder().build()` is a
/// working breaker. Setters take and return the builder;
/// [`build`](Builder::build) checks the settings and returns
/// [`Error::Config`] for a bad one instead of panicking.
///
/// ```
/// use std::time::Duration;
/// use cache_breaker::CircuitBreaker;
///
/// let breaker = CircuitBreaker::builder()
///     .name("redis")
///     .failure_threshold(5)
///     .recovery_timeout(Duration::from_secs(10))
///     .success_threshold(2)
///     .half_open_max_calls(2)
///     .failure_rate(0.5, 100, 20)
///     .slow_call_duration(Duration::from_millis(250))
///     .build()?;
/// # Ok::<(), cache_core::Error>(())
/// ```
#[must_use = "a builder does nothing until `build` is called"]
pub struct Builder {
    settings: Settings,
    clock: Arc<dyn Clock>,
    on_state_change: Option<Callback>,
}

impl Default for Builder {
    fn default() -> Self {
        Builder {
            settings: Settings {
                name: Arc::from("circuit-breaker"),
                failure_threshold: 5,
                recovery_timeout: Duration::from_secs(30),
                success_threshold: 2,
                half_open_max_calls: 1,
                failure_rate: None,
                slow_call: None,
                on_failure: FailureAction::Ignore,
            },
            clock: Arc::new(SystemClock),
            on_state_change: None,
        }
    }
}

impl Builder {
    /// A builder with every setting at its default.
    pub fn new() -> Self {
        Self::default()
    }

    /// The name logged with every state change, usually the guarded tier's.
    ///
    /// Default: `"circuit-breaker"`.
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.settings.name = name.into();
        self
    }

    /// Consecutive failures that open a closed breaker. At least 1.
    ///
    /// Default: 5.
    pub fn failure_threshold(mut self, failures: u32) -> Self {
        self.settings.failure_threshold = failures;
        self
    }

    /// How long an open breaker rejects calls before it lets trial calls
    /// through (half-open). More than zero.
    ///
    /// Default: 30 seconds.
    pub fn recovery_timeout(mut self, timeout: Duration) -> Self {
        self.settings.recovery_timeout = timeout;
        self
    }

    /// Successful trial calls that close a half-open breaker. At least 1.
    ///
    /// Default: 2.
    pub fn success_threshold(mut self, successes: u32) -> Self {
        self.settings.success_threshold = successes;
        self
    }

    /// Trial calls allowed in flight at once while half-open; further
    /// calls are rejected until a trial ends. At least 1.
    ///
    /// Default: 1.
    pub fn half_open_max_calls(mut self, calls: u32) -> Self {
        self.settings.half_open_max_calls = calls;
        self
    }

    /// Also open a closed breaker when, among the last `window` calls, at
    /// least `min_calls` were recorded and a share of at least `rate` (in
    /// `(0, 1]`) failed. This catches a backend failing often but not
    /// `failure_threshold` times in a row. Needs `1 <= min_calls <= window`.
    ///
    /// Default: off (only consecutive failures open the breaker).
    pub fn failure_rate(mut self, rate: f64, window: u32, min_calls: u32) -> Self {
        self.settings.failure_rate = Some(RateRule {
            rate,
            size: window,
            min_calls,
        });
        self
    }

    /// Count a call that succeeded but took longer than `duration` as a
    /// failure: a backend that answers in seconds is as bad as one that
    /// does not answer. More than zero.
    ///
    /// Default: off (only errors count as failures).
    pub fn slow_call_duration(mut self, duration: Duration) -> Self {
        self.settings.slow_call = Some(duration);
        self
    }

    /// What [`FailurePolicy::on_failure`](cache_core::FailurePolicy::on_failure)
    /// answers for a failed or rejected call of a guarded tier:
    /// [`FailureAction::Ignore`] fails open (a read becomes a miss, a write
    /// is skipped), [`FailureAction::Propagate`] returns the error.
    ///
    /// Default: [`FailureAction::Ignore`].
    pub fn on_failure(mut self, action: FailureAction) -> Self {
        self.settings.on_failure = action;
        self
    }

    /// The clock the recovery timeout and the duration of
    /// [`call`](CircuitBreaker::call)s are measured on. Tests pass a
    /// [`ManualClock`](cache_core::ManualClock) and step it.
    ///
    /// Default: [`SystemClock`].
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Called after every state change, outside the breaker's lock (so it
    /// may call back into the breaker). Keep it short: it runs on the
    /// thread of the call that caused the change. Changes are also logged
    /// through `tracing` whether or not a callback is set.
    ///
    /// Default: none.
    pub fn on_state_change(
        mut self,
        callback: impl Fn(StateChange) + Send + Sync + 'static,
    ) -> Self {
        self.on_state_change = Some(Arc::new(callback));
        self
    }

    /// Checks the settings and builds a [`TierBreaker`]: two breakers with
    /// these settings, one for a tier's reads (named `{name}/reads`) and one
    /// for its writes and removals (`{name}/writes`).
    ///
    /// # Errors
    /// [`Error::Config`] naming the first setting out of range.
    pub fn build_for_tier(self) -> Result<TierBreaker, Error> {
        self.check()?;
        let named = |suffix: &str| {
            let mut settings = self.settings.clone();
            settings.name = Arc::from(format!("{}/{suffix}", self.settings.name));
            CircuitBreaker::from_parts(settings, self.clock.clone(), self.on_state_change.clone())
        };
        Ok(TierBreaker::from_parts(
            self.settings.name.clone(),
            named("reads"),
            named("writes"),
        ))
    }

    /// Checks the settings and builds the breaker, closed.
    ///
    /// # Errors
    /// [`Error::Config`] naming the first setting out of range.
    pub fn build(self) -> Result<CircuitBreaker, Error> {
        self.check()?;
        Ok(CircuitBreaker::from_parts(
            self.settings,
            self.clock,
            self.on_state_change,
        ))
    }

    fn check(&self) -> Result<(), Error> {
        let s = &self.settings;
        if s.failure_threshold == 0 {
            return Err(Error::config(
                "circuit breaker: failure_threshold must be at least 1",
            ));
        }
        if s.success_threshold == 0 {
            return Err(Error::config(
                "circuit breaker: success_threshold must be at least 1",
            ));
        }
        if s.half_open_max_calls == 0 {
            return Err(Error::config(
                "circuit breaker: half_open_max_calls must be at least 1",
            ));
        }
        if s.recovery_timeout.is_zero() {
            return Err(Error::config(
                "circuit breaker: recovery_timeout must be more than zero",
            ));
        }
        if s.slow_call.is_some_and(|d| d.is_zero()) {
            return Err(Error::config(
                "circuit breaker: slow_call_duration must be more than zero",
            ));
        }
        if let Some(rule) = s.failure_rate {
            if !(rule.rate > 0.0 && rule.rate <= 1.0) {
                return Err(Error::config(format!(
                    "circuit breaker: failure rate must be in (0, 1], got {}",
                    rule.rate
                )));
            }
            if rule.size == 0 || rule.min_calls == 0 || rule.min_calls > rule.size {
                return Err(Error::config(format!(
                    "circuit breaker: failure-rate window needs 1 <= min_calls <= window, got min_calls {} and window {}",
                    rule.min_calls, rule.size
                )));
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Builder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("settings", &self.settings)
            .field("clock", &self.clock)
            .field("on_state_change", &self.on_state_change.is_some())
            .finish()
    }
}
