//! The whole stack from one config file (feature `config`).
//!
//! [`StackConfig`] is a serde type (TOML through
//! [`from_toml_str`](StackConfig::from_toml_str) /
//! [`from_toml_file`](StackConfig::from_toml_file); any other serde format
//! through `Deserialize`) with a section per part of the stack, every
//! setting defaulting to what the part's builder defaults to:
//!
//! | section | builds | needs feature |
//! |---|---|---|
//! | `[cache]` | the [`TieredCache`](crate::TieredCache) and its defaults | |
//! | `[l1]` | the in-process [`MemoryLayer`](crate::MemoryLayer) tier | `memory` (in `config`) |
//! | `[redis]` | the shared `RedisLayer` tier (one server, replicas, or a Cluster) | `redis` |
//! | `[breaker]` | a `TierBreaker` guarding the Redis tier | `breaker` |
//! | `[backplane]` | a `RedisBackplane` keeping the instances' L1s in step | `redis` |
//! | `[[ttl]]` | the TTL policy table ([`TtlPolicy`](crate::TtlPolicy) per key pattern) | |
//! | `[[rules]]` | the dependency rules of an `Invalidator` | `invalidation` |
//! | `families` | key families: wildcard dependents removed without a SCAN | `invalidation` |
//!
//! [`build`](StackConfig::build) checks everything first, then builds every
//! part and connects, and returns a [`Stack`]. Every key and its default is
//! listed in `docs/configuration.md`; `examples/stack.toml` is a full file.
//!
//! ```
//! use layered_cache::config::StackConfig;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let stack = StackConfig::from_toml_str(
//!     r#"
//!     [cache]
//!     name = "offers"
//!     default_ttl = "5m"
//!
//!     [l1]
//!     max_entries = 10_000
//!     ttl_cap = "1m"
//!
//!     [[ttl]]
//!     pattern = "rating:offer:*"
//!     ttl = "10m"
//!     jitter = 0.1
//!     "#,
//! )?
//! .build()
//! .await?;
//!
//! let rating: f32 = stack
//!     .cache
//!     .entry("rating:offer:7") // 10 minutes less up to 10%: the [[ttl]] rule
//!     .get_or_compute(|| async { Ok::<_, std::io::Error>(4.5) })
//!     .await?;
//! assert_eq!(rating, 4.5);
//! # Ok(())
//! # }
//! ```

mod build;
mod units;
mod validate;

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use build::Stack;
pub use units::{format_duration, parse_duration, parse_size};

use crate::ConfigError;

/// The configuration of a whole stack; see the [module docs](self).
///
/// Every field has the default of the builder it feeds, so an empty file
/// is a working L1-only cache. Unknown keys are errors (a misspelt key
/// would otherwise be ignored without a word).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct StackConfig {
    /// The cache itself: name, default TTLs, fail-safe, timeouts, stats.
    pub cache: CacheConfig,
    /// The in-process tier.
    pub l1: L1Config,
    /// The shared Redis tier, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisConfig>,
    /// The circuit breaker of the Redis tier, if any (without one, a
    /// failing Redis tier fails open, call by call).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub breaker: Option<BreakerConfig>,
    /// The Redis pub/sub backplane, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backplane: Option<BackplaneConfig>,
    /// The TTL policy table, first match wins (`[[ttl]]`).
    pub ttl: Vec<TtlRule>,
    /// The dependency rules (`[[rules]]`).
    pub rules: Vec<DependencyRule>,
    /// Key families (`families = ["reviews:offer:{id:digits}:*"]`): the
    /// keys of each template belong to the family of its hole's value, and
    /// a dependent that names one is removed by bumping the family's
    /// version instead of a SCAN (see `cache_invalidation::RulesBuilder::family`).
    /// Installed on the stack's cache.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub families: Vec<String>,
}

/// `[cache]`: the [`TieredCacheBuilder`](crate::TieredCacheBuilder) settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct CacheConfig {
    /// The cache's name in spans, logs and metrics. Default: `"cache"`.
    pub name: String,
    /// The TTL of calls that give none and match no `[[ttl]]` rule.
    /// Default: `"5m"`.
    #[serde(with = "units::duration")]
    pub default_ttl: Duration,
    /// How long a loader's "not found" is cached. Default: `"30s"`.
    #[serde(with = "units::duration")]
    pub negative_ttl: Duration,
    /// Up to this fraction of every TTL is taken off at random, in
    /// `[0, 1)`. Default: `0.0`.
    pub ttl_jitter: f64,
    /// Fail-safe grace: values are kept this long past their TTL, served
    /// stale when the loader fails. Default: `"off"`.
    #[serde(with = "units::optional_duration")]
    pub fail_safe: Option<Duration>,
    /// How long a stale value is served without calling a failing loader
    /// again. Default: `"5s"`.
    #[serde(with = "units::duration")]
    pub fail_safe_throttle: Duration,
    /// How long a caller with a stale value waits for the loader. Default:
    /// `"off"`.
    #[serde(with = "units::optional_duration")]
    pub soft_timeout: Option<Duration>,
    /// The longest a loader may run. Default: `"off"`.
    #[serde(with = "units::optional_duration")]
    pub hard_timeout: Option<Duration>,
    /// A read past this fraction of a value's TTL refreshes it in the
    /// background, in `(0, 1)`. Default: off (absent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eager_refresh: Option<f64>,
    /// How long upper tiers hold a value a failed lower tier lacks.
    /// Default: `"5s"`; `"off"` turns it off.
    #[serde(with = "units::optional_duration")]
    pub degraded_ttl: Option<Duration>,
    /// Whether read and load counters and latencies are kept. Default: `true`.
    pub stats: bool,
    /// Whether spans show raw keys (else a keyed hash). Default: `false`.
    pub trace_keys: bool,
    /// The longest `health()` waits for one tier. Default: `"1s"`.
    #[serde(with = "units::duration")]
    pub health_timeout: Duration,
    /// Retry removals and messages that did not land, holding up to this
    /// many. Default: off (absent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub invalidation_queue: Option<usize>,
    /// The prefix of tag-version keys. Default: `"tag-version:"`.
    pub tag_prefix: String,
    /// How long a tag version is kept. Default: `"1d"`.
    #[serde(with = "units::duration")]
    pub tag_ttl: Duration,
    /// Export metrics this often (feature `metrics`). Default: `"off"`.
    #[serde(with = "units::optional_duration")]
    pub export_metrics_every: Option<Duration>,
}

impl Default for CacheConfig {
    /// The defaults of `TieredCacheBuilder` (tests/config.rs checks them
    /// against a cache built without a config).
    fn default() -> Self {
        CacheConfig {
            name: "cache".into(),
            default_ttl: Duration::from_secs(300),
            negative_ttl: Duration::from_secs(30),
            ttl_jitter: 0.0,
            fail_safe: None,
            fail_safe_throttle: Duration::from_secs(5),
            soft_timeout: None,
            hard_timeout: None,
            eager_refresh: None,
            degraded_ttl: Some(Duration::from_secs(5)),
            stats: true,
            trace_keys: false,
            health_timeout: Duration::from_secs(1),
            invalidation_queue: None,
            tag_prefix: "tag-version:".into(),
            tag_ttl: Duration::from_secs(86_400),
            export_metrics_every: None,
        }
    }
}

/// `[l1]`: the [`MemoryLayer`](crate::MemoryLayer) and its tier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct L1Config {
    /// The layer's name in stats and errors. Default: `"memory"`.
    pub name: String,
    /// The most entries it holds, at least 2. Default: `100_000`.
    pub max_entries: u64,
    /// The most key and value bytes it holds (a number, or `"128MiB"`).
    /// Default: 128 MiB.
    #[serde(with = "units::size")]
    pub max_bytes: u64,
    /// quick_cache shards (fewer allow larger values). Default: chosen by
    /// quick_cache (absent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shards: Option<usize>,
    /// How often expired entries are swept. Default: `"5s"`; `"off"`: never
    /// (expired entries are still never returned).
    #[serde(with = "units::optional_duration")]
    pub sweep_interval: Option<Duration>,
    /// Whether the layer keeps its own counters. Default: `true`.
    pub stats: bool,
    /// The longest any value lives in L1 (`Tier::ttl_cap`). Default: `"off"`.
    #[serde(with = "units::optional_duration")]
    pub ttl_cap: Option<Duration>,
    /// The longest one call to L1 may take (`Tier::timeout`). Default: `"off"`.
    #[serde(with = "units::optional_duration")]
    pub timeout: Option<Duration>,
}

impl Default for L1Config {
    /// The defaults of `MemoryLayerBuilder` and `Tier`.
    fn default() -> Self {
        L1Config {
            name: "memory".into(),
            max_entries: 100_000,
            max_bytes: 128 << 20,
            shards: None,
            sweep_interval: Some(Duration::from_secs(5)),
            stats: true,
            ttl_cap: None,
            timeout: None,
        }
    }
}

/// `[redis]`: the `RedisLayer` and its tier. Give
/// `url` (one server, with `replicas` if any) or `cluster` (the node URLs
/// of a Redis Cluster), not both.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct RedisConfig {
    /// The primary's URL, `redis://[user][:password@]host[:port][/db]` (or
    /// `rediss://` with the `tls` feature). Printed without its password.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The seed nodes of a Redis Cluster, in place of `url`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<Vec<String>>,
    /// Replicas of the primary, tried in order when it fails (not with
    /// `cluster`). Default: none.
    pub replicas: Vec<String>,
    /// Where reads go first: `"primary"` or `"replicas-first"`. Default:
    /// `"primary"`.
    pub read_from: ReadFrom,
    /// The layer's name in stats, logs and errors. Default: `"redis"`.
    pub name: String,
    /// The namespace of the layer's keys (no `:` but a trailing one).
    /// Default: `"cache:"`.
    pub namespace: String,
    /// How long one Redis operation may take. Default: `"500ms"`.
    #[serde(with = "units::duration")]
    pub timeout: Duration,
    /// How long opening a connection may take. Default: `"1s"`.
    #[serde(with = "units::duration")]
    pub connect_timeout: Duration,
    /// When idle connections are checked or closed. Default: `"5m"`;
    /// `"off"`: kept forever.
    #[serde(with = "units::optional_duration")]
    pub idle_timeout: Option<Duration>,
    /// The largest value stored (a number, or `"16MiB"`). Default: 16 MiB.
    #[serde(with = "units::size")]
    pub max_value_size: u64,
    /// Compress values of at least this size with lz4 (feature `lz4`).
    /// Default: `"off"`.
    #[serde(with = "units::optional_size")]
    pub compress_above: Option<u64>,
    /// The `COUNT` of each `SCAN` in pattern invalidation. Default: `1000`.
    pub scan_count: usize,
    /// How long reads skip a node that failed. Default: `"1s"`.
    #[serde(with = "units::duration")]
    pub node_retry_after: Duration,
    /// How long a removal marker lives. Default: `"30s"`; `"off"`: plain
    /// deletes (for a Redis user without `@scripting`).
    #[serde(with = "units::optional_duration")]
    pub removal_markers: Option<Duration>,
    /// The longest any value lives in the Redis tier (`Tier::ttl_cap`).
    /// Default: `"off"`.
    #[serde(with = "units::optional_duration")]
    pub ttl_cap: Option<Duration>,
    /// The connection pool.
    pub pool: PoolConfig,
}

impl Default for RedisConfig {
    /// The defaults of `RedisLayerBuilder` (no server: `url` or `cluster`
    /// must be given).
    fn default() -> Self {
        RedisConfig {
            url: None,
            cluster: None,
            replicas: Vec::new(),
            read_from: ReadFrom::Primary,
            name: "redis".into(),
            namespace: "cache:".into(),
            timeout: Duration::from_millis(500),
            connect_timeout: Duration::from_secs(1),
            idle_timeout: Some(Duration::from_secs(300)),
            max_value_size: 16 << 20,
            compress_above: None,
            scan_count: 1000,
            node_retry_after: Duration::from_secs(1),
            removal_markers: Some(Duration::from_secs(30)),
            ttl_cap: None,
            pool: PoolConfig::default(),
        }
    }
}

impl RedisConfig {
    /// The settings for the server at `url`, every other one at its default.
    pub fn new(url: impl Into<String>) -> Self {
        RedisConfig {
            url: Some(url.into()),
            ..Self::default()
        }
    }
}

impl std::fmt::Debug for RedisConfig {
    // By hand: URLs print without their passwords.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redact = |urls: &[String]| urls.iter().map(|u| redacted(u)).collect::<Vec<_>>();
        f.debug_struct("RedisConfig")
            .field("url", &self.url.as_deref().map(redacted))
            .field("cluster", &self.cluster.as_deref().map(redact))
            .field("replicas", &redact(&self.replicas))
            .field("read_from", &self.read_from)
            .field("name", &self.name)
            .field("namespace", &self.namespace)
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("max_value_size", &self.max_value_size)
            .field("compress_above", &self.compress_above)
            .field("scan_count", &self.scan_count)
            .field("node_retry_after", &self.node_retry_after)
            .field("removal_markers", &self.removal_markers)
            .field("ttl_cap", &self.ttl_cap)
            .field("pool", &self.pool)
            .finish()
    }
}

/// `[redis.pool]`: connections per node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct PoolConfig {
    /// The most connections per node (each multiplexed). Default: `1`.
    pub max_open: usize,
    /// Connections opened (and checked) at start-up; `0` starts without
    /// touching the server. Default: `1`.
    pub min_idle: usize,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            max_open: 1,
            min_idle: 1,
        }
    }
}

/// Where Redis reads go first (`cache_redis::ReadFrom`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum ReadFrom {
    /// The primary, then the replicas.
    #[default]
    Primary,
    /// The replicas, then the primary (replication lag: a read right after
    /// a write may miss it).
    ReplicasFirst,
}

/// `[breaker]`: a `TierBreaker` (one breaker for the
/// Redis tier's reads, one for its writes) with the
/// `CircuitBreaker` builder's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct BreakerConfig {
    /// Whether the breaker is used (to switch it off without removing
    /// the section). Default: `true`.
    pub enabled: bool,
    /// The name logged with its state changes. Default: `"circuit-breaker"`.
    pub name: String,
    /// Consecutive failures that open it. Default: `5`.
    pub failure_threshold: u32,
    /// How long it stays open before trial calls. Default: `"30s"`.
    #[serde(with = "units::duration")]
    pub recovery_timeout: Duration,
    /// Successful trials that close it. Default: `2`.
    pub success_threshold: u32,
    /// Trial calls in flight at once while half-open. Default: `1`.
    pub half_open_max_calls: u32,
    /// Also open on a failure rate over a window of calls. Default: off
    /// (absent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_rate: Option<FailureRate>,
    /// A call slower than this counts as failed. Default: `"off"`.
    #[serde(with = "units::optional_duration")]
    pub slow_call: Option<Duration>,
    /// What a failed or rejected call does: `"fail-open"` (a miss, a
    /// skipped write) or `"fail-closed"` (the error). Default: `"fail-open"`.
    pub on_failure: OnFailure,
}

impl Default for BreakerConfig {
    /// The defaults of `cache_breaker::Builder`.
    fn default() -> Self {
        BreakerConfig {
            enabled: true,
            name: "circuit-breaker".into(),
            failure_threshold: 5,
            recovery_timeout: Duration::from_secs(30),
            success_threshold: 2,
            half_open_max_calls: 1,
            failure_rate: None,
            slow_call: None,
            on_failure: OnFailure::FailOpen,
        }
    }
}

/// `[breaker.failure_rate]`: open when, among the last `window` calls, at
/// least `min_calls` were made and a share of at least `rate` failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct FailureRate {
    /// The share of failed calls, in `(0, 1]`.
    pub rate: f64,
    /// The number of calls looked at.
    pub window: u32,
    /// The fewest calls before the rate counts, `1..=window`.
    pub min_calls: u32,
}

/// What a guarded tier does with a failed or rejected call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum OnFailure {
    /// A read is a miss, a write is skipped.
    #[default]
    FailOpen,
    /// The error goes to the caller.
    FailClosed,
}

/// `[backplane]`: a `RedisBackplane`; needs
/// `[redis]`.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct BackplaneConfig {
    /// Whether the backplane is used. Default: `true`.
    pub enabled: bool,
    /// The server. Default: `[redis]`'s `url` (or its first `cluster` node:
    /// a Cluster forwards `PUBLISH` to every node).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The pub/sub channel; one per group of caches sharing a namespace.
    /// Default: `"cache:invalidation"`.
    pub channel: String,
    /// Its name in errors and logs. Default: `"redis-backplane"`.
    pub name: String,
    /// How long one publish or (re)subscription may take. Default: `"500ms"`.
    #[serde(with = "units::duration")]
    pub timeout: Duration,
    /// How long a quiet subscription waits before a `PING`. Default:
    /// `"5s"`; `"off"`: never.
    #[serde(with = "units::optional_duration")]
    pub health_check_interval: Option<Duration>,
    /// Start even while the server is down, subscribing once it is up.
    /// Default: `false`.
    pub lazy: bool,
}

impl Default for BackplaneConfig {
    /// The defaults of `RedisBackplaneBuilder`.
    fn default() -> Self {
        BackplaneConfig {
            enabled: true,
            url: None,
            channel: "cache:invalidation".into(),
            name: "redis-backplane".into(),
            timeout: Duration::from_millis(500),
            health_check_interval: Some(Duration::from_secs(5)),
            lazy: false,
        }
    }
}

impl std::fmt::Debug for BackplaneConfig {
    // By hand: the URL prints without its password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackplaneConfig")
            .field("enabled", &self.enabled)
            .field("url", &self.url.as_deref().map(redacted))
            .field("channel", &self.channel)
            .field("name", &self.name)
            .field("timeout", &self.timeout)
            .field("health_check_interval", &self.health_check_interval)
            .field("lazy", &self.lazy)
            .finish()
    }
}

/// One `[[ttl]]` rule: how long the keys matching `pattern` live
/// ([`TieredCacheBuilder::ttl_policy`](crate::TieredCacheBuilder::ttl_policy)).
/// The first rule that matches a key applies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct TtlRule {
    /// A Redis glob (`*`, `?`, `[...]`, `\` escapes): `"reviews:offer:*"`.
    pub pattern: String,
    /// The TTL of calls that give none. Default: `[cache] default_ttl`.
    #[serde(
        default,
        with = "units::optional_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub ttl: Option<Duration>,
    /// The negative TTL. Default: `[cache] negative_ttl`.
    #[serde(
        default,
        with = "units::optional_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub negative_ttl: Option<Duration>,
    /// The cap of the copies in L1 (and any other local tier), while Redis
    /// keeps the value for its TTL. Default: none.
    #[serde(
        default,
        with = "units::optional_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub l1_ttl_cap: Option<Duration>,
    /// TTL jitter, in `[0, 1)`. Default: `[cache] ttl_jitter`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter: Option<f64>,
}

impl TtlRule {
    /// A rule for `pattern` that sets nothing yet.
    pub fn new(pattern: impl Into<String>) -> Self {
        TtlRule {
            pattern: pattern.into(),
            ttl: None,
            negative_ttl: None,
            l1_ttl_cap: None,
            jitter: None,
        }
    }

    /// The [`TtlPolicy`](crate::TtlPolicy) the rule stands for.
    pub fn policy(&self) -> crate::TtlPolicy {
        let mut policy = crate::TtlPolicy::new();
        policy.ttl = self.ttl;
        policy.negative_ttl = self.negative_ttl;
        policy.local_ttl_cap = self.l1_ttl_cap;
        policy.jitter = self.jitter;
        policy
    }
}

/// One `[[rules]]` dependency rule: when a key matching `trigger` is
/// invalidated through the stack's `Invalidator`, so
/// are the `dependents` (templates with the trigger's `{holes}` filled in).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct DependencyRule {
    /// A key template: `"reviews:offer:{id}"`.
    pub trigger: String,
    /// Patterns using the trigger's holes: `["rating:offer:{id}"]`.
    pub dependents: Vec<String>,
}

impl DependencyRule {
    /// `trigger` → `dependents`.
    pub fn new<I, S>(trigger: impl Into<String>, dependents: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        DependencyRule {
            trigger: trigger.into(),
            dependents: dependents.into_iter().map(Into::into).collect(),
        }
    }
}

impl StackConfig {
    /// Parses a TOML document and checks it ([`validate`](Self::validate)).
    ///
    /// # Errors
    /// [`ConfigError::Parse`] for bad TOML, an unknown key, a value of the
    /// wrong type or a bad duration (with the line and column);
    /// [`ConfigError::Invalid`] for settings out of range, naming each.
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        let config: StackConfig = toml::from_str(text).map_err(|error| ConfigError::Parse {
            message: error.to_string().trim_end().into(),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Reads and parses a TOML file ([`from_toml_str`](Self::from_toml_str)).
    ///
    /// # Errors
    /// [`ConfigError::Read`] when the file cannot be read, and those of
    /// `from_toml_str`, whose messages then start with the file's path.
    pub fn from_toml_file(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_owned(),
            source: error.into(),
        })?;
        Self::from_toml_str(&text).map_err(|error| error.in_file(path))
    }

    /// The config as TOML (URLs with their passwords: this is for writing
    /// a file back, not for logs).
    pub fn to_toml_string(&self) -> String {
        // Every field serializes (no maps with non-string keys, no
        // values TOML cannot hold), so this cannot fail.
        toml::to_string(self).unwrap_or_else(|error| format!("# not representable: {error}"))
    }
}

/// `url` without its password (`redis://user:***@host`), for logs.
pub(crate) fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.rsplit_once('@') {
        Some((credentials, host)) => match credentials.split_once(':') {
            Some((user, _password)) => format!("{scheme}://{user}:***@{host}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}
