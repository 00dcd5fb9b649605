//! What a cache tells an operator beyond its counters: its health, and how
//! spans name keys.

use std::fmt;
use std::hash::BuildHasher;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use cache_core::{
    CallContext, CircuitState, CircuitStatus, FailureAction, LastError, Operation, Serializer,
};

use crate::TieredCache;

/// The cache's observability settings (see the builder's `name`, `stats`
/// and `trace_keys`).
#[derive(Debug, Clone)]
pub(crate) struct Observe {
    pub(crate) name: Arc<str>,
    pub(crate) stats: bool,
    pub(crate) trace_keys: bool,
    pub(crate) health_timeout: Duration,
}

impl Default for Observe {
    fn default() -> Self {
        Observe {
            name: Arc::from("cache"),
            stats: true,
            trace_keys: false,
            health_timeout: Duration::from_secs(1),
        }
    }
}

impl Observe {
    /// `key` as a span shows it: itself with `trace_keys`, else a hash.
    pub(crate) fn key<'a>(&self, key: &'a str) -> KeyField<'a> {
        key_field(key, self.trace_keys)
    }
}

/// Opens the span of one cache operation, `name`, at DEBUG: the cache's
/// name and the key (hashed unless `trace_keys`) recorded only when the
/// span is enabled, `tier` and `outcome` as the call goes. Disabled (no
/// subscriber, or one above DEBUG), it costs a level check.
macro_rules! op_span {
    ($observe:expr, $name:literal, $key:expr) => {{
        let span = ::tracing::debug_span!(
            $name,
            cache = ::tracing::field::Empty,
            key = ::tracing::field::Empty,
            tier = ::tracing::field::Empty,
            outcome = ::tracing::field::Empty,
        );
        if !span.is_disabled() {
            let observe: &$crate::observe::Observe = $observe;
            span.record("cache", &*observe.name);
            span.record("key", ::tracing::field::display(observe.key($key)));
        }
        span
    }};
}
pub(crate) use op_span;

/// Records `value` as `field` of the current span, if it is one of this
/// crate's (never a field of a caller's span that happens to share the
/// name). For slow paths: it looks the current span up.
pub(crate) fn note(field: &str, value: &str) {
    // This crate's spans are at DEBUG: below it, none can be current, and
    // the look-up would cost a read more than its walk's bookkeeping.
    if !tracing::level_enabled!(tracing::Level::DEBUG) {
        return;
    }
    let span = tracing::Span::current();
    if span
        .metadata()
        .is_some_and(|meta| meta.target().starts_with("cache_tiered"))
    {
        span.record(field, value);
    }
}

/// A key in a span: raw, or a hash stable within a process run (enough to
/// follow one key through the logs without writing user data to them).
#[derive(Clone, Copy)]
pub(crate) enum KeyField<'a> {
    Raw(&'a str),
    Hashed(u64),
}

impl fmt::Display for KeyField<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyField::Raw(key) => f.write_str(key),
            KeyField::Hashed(hash) => write!(f, "#{hash:016x}"),
        }
    }
}

/// `key` for a span: itself if `raw`, else its hash.
pub(crate) fn key_field(key: &str, raw: bool) -> KeyField<'_> {
    if raw {
        KeyField::Raw(key)
    } else {
        KeyField::Hashed(key_hash(key))
    }
}

/// A keyed hash, so that a hash in a log cannot be matched against a
/// dictionary of likely keys (emails, user ids) computed elsewhere.
fn key_hash(key: &str) -> u64 {
    static KEYS: LazyLock<std::collections::hash_map::RandomState> =
        LazyLock::new(Default::default);
    KEYS.hash_one(key)
}

/// How a cache or a tier is doing, worst last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Status {
    /// Everything answers.
    Up,
    /// Serving, but not at full strength: a tier that fails open is down
    /// or its breaker is open (its reads are misses, its writes skipped),
    /// or the backplane is disconnected (other instances' invalidations do
    /// not arrive).
    Degraded,
    /// Failing calls: a tier whose failures reach the caller (it fails
    /// closed) is down.
    Down,
}

impl Status {
    /// `up`, `degraded` or `down`.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Up => "up",
            Status::Degraded => "degraded",
            Status::Down => "down",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A health check of a whole cache, from [`TieredCache::health`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Health {
    /// The cache's status: the worst of its parts, where a tier that fails
    /// open and is down only degrades the cache (it still answers, from
    /// the other tiers and the loaders).
    pub status: Status,
    /// Per tier, top first.
    pub tiers: Vec<TierHealth>,
    /// Whether the backplane is subscribed (`None`: no backplane, or it
    /// cannot tell).
    pub backplane_subscribed: Option<bool>,
}

impl Health {
    /// Whether the cache can serve: for a readiness endpoint. A degraded
    /// cache is ready (it answers, more slowly); a down one is not.
    pub fn is_ready(&self) -> bool {
        self.status != Status::Down
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.status)?;
        for tier in &self.tiers {
            write!(f, "; {}: {}", tier.name, tier.status)?;
            if let Some(ping) = tier.ping {
                write!(f, " (ping {ping:?})")?;
            }
            if let Some(error) = &tier.error {
                write!(f, " ({error})")?;
            }
            for circuit in tier
                .circuits
                .iter()
                .filter(|c| c.state != CircuitState::Closed)
            {
                write!(f, " [{} {}]", circuit.name, circuit.state)?;
            }
        }
        if self.backplane_subscribed == Some(false) {
            f.write_str("; backplane: not subscribed")?;
        }
        Ok(())
    }
}

/// A health check of one tier.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TierHealth {
    /// The layer's name.
    pub name: String,
    /// `Down` if the ping failed; `Degraded` if it answered but a circuit
    /// of its policy is not closed, or the tier's last read or last write
    /// failed (a full server answers pings and refuses writes); else `Up`.
    pub status: Status,
    /// How long the ping took, if it answered.
    pub ping: Option<Duration>,
    /// Why the ping failed, or, when it answered but the tier's calls are
    /// failing, the last call's failure (class and message).
    pub error: Option<LastError>,
    /// The tier's failure policy's circuits (a breaker's state and last
    /// error).
    pub circuits: Vec<CircuitStatus>,
}

impl<S: Serializer> TieredCache<S> {
    /// Pings every tier (`CacheLayer::ping`: Redis `PING`; nothing for an
    /// in-process layer), one after the other, each within the tier's
    /// timeout or the cache's [health timeout](crate::TieredCacheBuilder::health_timeout)
    /// whichever is shorter; reads the breakers' states and the backplane's
    /// connection. Pings bypass the failure policy: an open breaker does not
    /// hide a server that is back, nor does a ping count toward closing it.
    ///
    /// ```
    /// use cache_memory::MemoryLayer;
    /// use cache_tiered::{Status, TieredCache};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cache = TieredCache::builder().layer(MemoryLayer::new()).build()?;
    /// let health = cache.health().await;
    /// assert_eq!(health.status, Status::Up);
    /// assert!(health.is_ready());
    /// # Ok(())
    /// # }
    /// ```
    pub async fn health(&self) -> Health {
        let shared = &*self.shared;
        let mut tiers = Vec::with_capacity(shared.tiers.len());
        let mut status = Status::Up;
        for tier in shared.tiers.iter() {
            let limit = tier.timeout.map_or(shared.observe.health_timeout, |t| {
                t.min(shared.observe.health_timeout)
            });
            let ctx = CallContext::new(&*shared.clock, Operation::Read)
                .with_deadline(shared.clock.now().checked_add(limit));
            let started = tokio::time::Instant::now();
            let answer = match tokio::time::timeout(limit, tier.layer.ping(&ctx)).await {
                Ok(answer) => answer,
                Err(_) => Err(cache_core::Error::timeout(tier.name().to_owned(), limit)),
            };
            let circuits = tier.policy.circuits();
            let (tier_status, ping, error) = match answer {
                Ok(()) => {
                    let ping = Some(started.elapsed());
                    let open = circuits.iter().any(|c| c.state != CircuitState::Closed);
                    if tier.is_failing() {
                        (Status::Degraded, ping, tier.last_error())
                    } else if open {
                        (Status::Degraded, ping, None)
                    } else {
                        (Status::Up, ping, None)
                    }
                }
                Err(error) => {
                    // The cache is down only if this tier's failures reach
                    // callers; a tier failing open is skipped.
                    let fails_closed =
                        tier.policy.on_failure(Operation::Read, &error) == FailureAction::Propagate;
                    status = status.max(if fails_closed {
                        Status::Down
                    } else {
                        Status::Degraded
                    });
                    (Status::Down, None, Some(LastError::new(None, &error)))
                }
            };
            status = status.max(tier_status.min(Status::Degraded));
            tiers.push(TierHealth {
                name: tier.name().to_owned(),
                status: tier_status,
                ping,
                error,
                circuits,
            });
        }
        let backplane_subscribed = shared
            .backplane
            .as_ref()
            .and_then(|backplane| backplane.status().subscribed);
        if backplane_subscribed == Some(false) {
            status = status.max(Status::Degraded);
        }
        Health {
            status,
            tiers,
            backplane_subscribed,
        }
    }
}
