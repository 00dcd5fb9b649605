//! Configuration of a [`RedisLayer`]: a builder whose setters say their
//! defaults and whose `build()` validates instead of panicking.

use std::sync::{Arc, Weak};
use std::time::Duration;

use cache_core::{Error, Result};

use crate::RedisLayer;
use crate::layer::{Inner, Markers, Stats};
use crate::pool::{Node, PoolSettings, Target};
use crate::time::{SYNC_EVERY, ServerClock};
use crate::url::ServerUrl;

/// Where reads go first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ReadFrom {
    /// The primary, then the replicas in the order they were added when the
    /// primary fails. Reads see every completed write. The default.
    #[default]
    Primary,
    /// The replicas in order, then the primary. Takes read load off the
    /// primary, at the price of replication lag: a read right after a write
    /// may miss it or see the previous value.
    ReplicasFirst,
}

/// The servers, as given. `ServerUrl` prints without passwords, so the
/// builder's derived `Debug` shows none.
#[derive(Debug, Clone)]
enum Topology {
    Standalone {
        primary: ServerUrl,
        replicas: Vec<ServerUrl>,
    },
    Cluster {
        nodes: Vec<ServerUrl>,
    },
}

/// Builds a [`RedisLayer`]. Start from [`RedisLayer::builder`] (one server,
/// optionally with replicas) or [`RedisLayer::cluster_builder`].
///
/// ```no_run
/// # async fn demo() -> cache_core::Result<()> {
/// use std::time::Duration;
/// use cache_redis::{ReadFrom, RedisLayer};
///
/// let layer = RedisLayer::builder("redis://:secret@10.0.0.1:6379")
///     .replica("redis://:secret@10.0.0.2:6379")
///     .read_from(ReadFrom::Primary)
///     .namespace("offers-v1") // keys are stored as `offers-v1:<key>`
///     .timeout(Duration::from_millis(200))
///     .build()
///     .await?;
/// # Ok(()) }
/// ```
#[must_use = "a builder does nothing until `build()` is awaited"]
#[derive(Debug, Clone)]
pub struct RedisLayerBuilder {
    topology: Topology,
    name: String,
    namespace: String,
    read_from: ReadFrom,
    timeout: Duration,
    connect_timeout: Duration,
    pool_max_open: usize,
    pool_min_idle: usize,
    idle_timeout: Option<Duration>,
    max_value_size: usize,
    compress_above: Option<usize>,
    scan_count: usize,
    node_retry_after: Duration,
    removal_markers: Option<Duration>,
    /// Replicas added to a Cluster builder, an error reported by `build()`.
    cluster_replicas: Vec<ServerUrl>,
    /// What the layer guesses the server's clock reads before it samples
    /// it (unix µs): a test's stand-in for a host whose wall clock is off.
    #[cfg(test)]
    pub(crate) server_clock_guess: Option<i64>,
}

/// How soon a lazy layer that has never sampled the server's clock tries
/// again: one cheap attempt (a refused connection) a second while Redis is
/// down.
const UNSYNCED_RETRY: Duration = Duration::from_secs(1);

/// The largest string Redis stores (`proto-max-bulk-len`'s default).
const REDIS_MAX_BULK: usize = 512 * 1024 * 1024;

impl RedisLayerBuilder {
    fn new(topology: Topology) -> Self {
        RedisLayerBuilder {
            topology,
            name: "redis".into(),
            namespace: "cache:".into(),
            read_from: ReadFrom::Primary,
            timeout: Duration::from_millis(500),
            connect_timeout: Duration::from_secs(1),
            pool_max_open: 1,
            pool_min_idle: 1,
            idle_timeout: Some(Duration::from_secs(300)),
            max_value_size: 16 * 1024 * 1024,
            compress_above: None,
            scan_count: 1000,
            node_retry_after: Duration::from_secs(1),
            removal_markers: Some(Duration::from_secs(30)),
            cluster_replicas: Vec::new(),
            #[cfg(test)]
            server_clock_guess: None,
        }
    }

    pub(crate) fn standalone(url: impl Into<String>) -> Self {
        Self::new(Topology::Standalone {
            primary: ServerUrl::new(url),
            replicas: Vec::new(),
        })
    }

    pub(crate) fn cluster(nodes: Vec<String>) -> Self {
        Self::new(Topology::Cluster {
            nodes: nodes.into_iter().map(ServerUrl::new).collect(),
        })
    }

    /// Adds a replica of the primary (a `redis://` or `rediss://` URL).
    /// Reads fall back to replicas in the order they were added. Default:
    /// none. Not available in Cluster mode (`build()` returns an error).
    pub fn replica(mut self, url: impl Into<String>) -> Self {
        match &mut self.topology {
            Topology::Standalone { replicas, .. } => replicas.push(ServerUrl::new(url)),
            Topology::Cluster { .. } => {
                // Reported by `build()`.
                self.cluster_replicas.push(ServerUrl::new(url));
            }
        }
        self
    }

    /// Where reads go first. Default: [`ReadFrom::Primary`].
    pub fn read_from(mut self, read_from: ReadFrom) -> Self {
        self.read_from = read_from;
        self
    }

    /// The layer's name in stats, logs and errors. Default: `"redis"`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The namespace of the layer's keys: `key` is stored in Redis as
    /// `<namespace>:<key>`. A trailing `:` is optional and means nothing
    /// more: `"offers"` and `"offers:"` are the same namespace, and the key
    /// `offer:7` is stored as `offers:offer:7` with either. Default:
    /// `"cache:"`.
    ///
    /// Two layers with different (non-empty) namespaces on one server never
    /// see, overwrite or invalidate each other's keys. That is why a
    /// namespace may not contain `:` anywhere but at its end: the keys of
    /// `app:v2` would be keys of `app` too (its `v2:...` keys), so `build()`
    /// refuses it with [`Error::Config`]; write `app-v2` instead. Other
    /// characters are taken literally (glob characters are escaped in
    /// `SCAN MATCH`).
    ///
    /// An empty namespace means no prefix at all: the layer's keys are the
    /// Redis keys as they are, and it sees the whole database, the keys of
    /// every other namespace included, for reads and for pattern
    /// invalidation (`invalidate("*")` empties the database).
    ///
    /// In Cluster mode keep `{`/`}` out of it unless you mean to put every
    /// key in one hash slot.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// How long one operation may take before it fails with
    /// [`Error::Timeout`]: a hung server costs a caller at most this. Covers
    /// waiting for a connection, the round trip, and a read's fallback to
    /// replicas. For `invalidate`, it bounds each SCAN / UNLINK round trip
    /// (the number of keys has no bound). Default: 500 ms.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How long opening a connection may take. Default: 1 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The most connections per node (mobc's `max_open`). Each one is a
    /// multiplexed connection shared by every concurrent request, handed out
    /// round-robin. Default: 1.
    ///
    /// One connection pipelines every request in flight into one stream,
    /// which is what makes it fast: it carries hundreds of thousands of
    /// requests a second. A second connection splits that stream in two
    /// smaller batches, and Redis spends more CPU per request: measured at
    /// 64 tasks on one machine, twice as much per GET, and 12–14% fewer GETs
    /// a second (docs/redis.md). Raise it only when one connection's I/O
    /// task is the bottleneck, on a client with many cores.
    pub fn pool_max_open(mut self, max_open: usize) -> Self {
        self.pool_max_open = max_open;
        self
    }

    /// Connections opened by `build()` (each checked with `PING`) and kept
    /// open while idle. With at least one, `build()` fails fast on a bad
    /// URL, a missing or wrong password or an unreachable primary; with 0,
    /// `build()` touches no server and the first request connects. Default: 1.
    pub fn pool_min_idle(mut self, min_idle: usize) -> Self {
        self.pool_min_idle = min_idle;
        self
    }

    /// A connection unused for this long is handed back to the pool, which
    /// checks it with `PING` before it is used again, and closes idle
    /// pooled connections after this long. `None` keeps connections forever.
    /// Default: 5 minutes.
    pub fn idle_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.idle_timeout = timeout.into();
        self
    }

    /// The largest value (in bytes, before compression) the layer stores. A
    /// larger one is refused with [`Error::ValueTooLarge`] and any old value
    /// under the key is deleted. Default: 16 MiB; at most 512 MiB.
    pub fn max_value_size(mut self, bytes: usize) -> Self {
        self.max_value_size = bytes;
        self
    }

    /// Compresses values of at least this many bytes with lz4 (only when
    /// that makes them smaller). The entry header says whether a value is
    /// compressed, so old and new values read side by side. Default: `None`
    /// (no compression). Requires the `lz4` feature; without it, `build()`
    /// returns an error if this is set.
    pub fn compress_above(mut self, bytes: impl Into<Option<usize>>) -> Self {
        self.compress_above = bytes.into();
        self
    }

    /// The `COUNT` hint of each `SCAN` during pattern invalidation: keys
    /// examined per round trip. Default: 1000.
    pub fn scan_count(mut self, count: usize) -> Self {
        self.scan_count = count;
        self
    }

    /// After a node fails, reads skip it (while another node is available)
    /// for this long, so a hung primary costs one timeout rather than one
    /// per read. Default: 1 s.
    pub fn node_retry_after(mut self, after: Duration) -> Self {
        self.node_retry_after = after;
        self
    }

    /// How long a removal marker lives, or `None` to delete keys outright.
    /// Default: 30 s.
    ///
    /// A removal (delete, invalidation) leaves a small marker under the key
    /// instead of deleting it, and a *fill* (a value a load or a lower tier
    /// produced, see [`CallContext::with_fill_since`](cache_core::CallContext::with_fill_since))
    /// is stored only if the key holds nothing as new as the load. So a load
    /// that began before a removal, on any instance, cannot put the removed
    /// value back, as long as it writes within this time: keep it above the
    /// longest a loader may run. Markers read as misses; each costs a
    /// key and 19 bytes until it expires.
    ///
    /// Markers use two Lua scripts (`EVALSHA`), loaded by `build()`: a Redis
    /// user without the `@scripting` permission needs `None` here, and then
    /// gets plain `UNLINK`s and unconditional fills.
    pub fn removal_markers(mut self, ttl: impl Into<Option<Duration>>) -> Self {
        self.removal_markers = ttl.into();
        self
    }

    /// Validates the configuration, opens `pool_min_idle` connections to the
    /// primary (or the Cluster), checks each with `PING` and returns the
    /// layer.
    ///
    /// # Errors
    /// [`Error::Config`] for an invalid setting or URL; [`Error::Backend`] or
    /// [`Error::Timeout`] when the first connections cannot be opened or do
    /// not answer the `PING`: a missing password (`NOAUTH`) or a wrong one
    /// fails here, with advice to check the URL, not on the first request.
    pub async fn build(self) -> Result<RedisLayer> {
        self.validate()?;
        let prefix = key_prefix(&self.namespace)?;
        #[cfg(feature = "tls")]
        {
            // Several providers may be compiled in; pick ring unless the
            // application already chose one.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let settings = PoolSettings {
            max_open: self.pool_max_open,
            min_idle: self.pool_min_idle,
            connect_timeout: self.connect_timeout,
            idle_timeout: self.idle_timeout,
        };
        let connection_config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            // The layer bounds every call itself (`timeout`).
            .set_response_timeout(None);
        let open = |url: &ServerUrl| -> Result<Node> {
            let client = redis::Client::open(url.expose()).map_err(|err| url_error(url, &err))?;
            Ok(Node::new(
                url.redacted(),
                Target::Single(client, connection_config.clone()),
                &settings,
            ))
        };
        let (primary, replicas, standalone) = match &self.topology {
            Topology::Standalone { primary, replicas } => {
                let replicas = replicas.iter().map(open).collect::<Result<Vec<_>>>()?;
                (open(primary)?, replicas, true)
            }
            Topology::Cluster { nodes } => {
                let seeds = nodes.iter().map(|url| url.expose().to_owned());
                let client = redis::cluster::ClusterClientBuilder::new(seeds)
                    .connection_timeout(self.connect_timeout)
                    .response_timeout(self.timeout)
                    .retries(2)
                    .build()
                    .map_err(|err| {
                        Error::config(format!("cannot use the Cluster nodes {nodes:?}: {err}"))
                    })?;
                let label = format!("cluster({})", nodes[0]);
                (
                    Node::new(label, Target::Cluster(client), &settings),
                    Vec::new(),
                    false,
                )
            }
        };
        let name: Arc<str> = Arc::from(self.name.as_str());
        let warm = tokio::time::timeout(
            self.connect_timeout + self.timeout,
            primary.warm_up(self.pool_min_idle),
        )
        .await;
        match warm {
            Err(_) => return Err(Error::timeout(name, self.connect_timeout + self.timeout)),
            Ok(Err(err)) => return Err(crate::layer::pool_error(&name, primary.label(), err)),
            Ok(Ok(())) => {}
        }
        let inner = Inner {
            match_prefix: cache_core::escape(&prefix),
            namespace: prefix,
            name,
            primary,
            replicas,
            standalone,
            read_from: self.read_from,
            timeout: self.timeout,
            max_value_size: self.max_value_size,
            compress_above: self.compress_above,
            scan_count: self.scan_count,
            node_retry_after: self.node_retry_after,
            stats: Stats::default(),
            #[cfg(not(test))]
            clock: ServerClock::new(),
            #[cfg(test)]
            clock: self
                .server_clock_guess
                .map_or_else(ServerClock::new, ServerClock::guessing),
            markers: self.removal_markers.map(|ttl| Markers {
                ttl,
                scripts: Default::default(),
            }),
        };
        // A lazy layer (no connection at start) samples the clock and loads
        // the scripts on first use (`ready_to_write`, `ready_to_read`), or
        // when the task below first reaches the server, if that is sooner.
        let first_sync = if self.pool_min_idle == 0 {
            Duration::ZERO
        } else {
            inner.sync_clock(self.timeout).await?;
            inner.load_scripts(self.timeout).await?;
            SYNC_EVERY
        };
        let inner = Arc::new(inner);
        tokio::spawn(resync_clock(Arc::downgrade(&inner), first_sync));
        Ok(RedisLayer { inner })
    }

    fn validate(&self) -> Result<()> {
        let fail = |message: String| Err(Error::config(message));
        if self.timeout.is_zero() {
            return fail("timeout must be greater than zero".into());
        }
        if self.connect_timeout.is_zero() {
            return fail("connect_timeout must be greater than zero".into());
        }
        if self.pool_max_open == 0 {
            return fail("pool_max_open must be at least 1".into());
        }
        if self.pool_min_idle > self.pool_max_open {
            return fail(format!(
                "pool_min_idle ({}) must not exceed pool_max_open ({})",
                self.pool_min_idle, self.pool_max_open
            ));
        }
        if self.idle_timeout.is_some_and(|t| t.is_zero()) {
            return fail("idle_timeout must be greater than zero, or None".into());
        }
        if self.max_value_size == 0 || self.max_value_size > REDIS_MAX_BULK - 16 {
            return fail(format!(
                "max_value_size must be between 1 byte and 512 MiB (got {})",
                self.max_value_size
            ));
        }
        if self.scan_count == 0 {
            return fail("scan_count must be at least 1".into());
        }
        if self.compress_above.is_some() && !cfg!(feature = "lz4") {
            return fail(
                "compress_above needs the `lz4` feature of cache-redis \
                 (cache-redis = { features = [\"lz4\"] })"
                    .into(),
            );
        }
        if self
            .removal_markers
            .is_some_and(|ttl| ttl < Duration::from_millis(1))
        {
            return fail("removal_markers must be at least 1 ms, or None".into());
        }
        if self.compress_above == Some(0) {
            return fail("compress_above must be at least 1 byte, or None".into());
        }
        match &self.topology {
            Topology::Standalone { .. } => {}
            Topology::Cluster { nodes } => {
                if nodes.is_empty() {
                    return fail("a Cluster needs at least one node URL".into());
                }
                if !self.cluster_replicas.is_empty() {
                    return fail(
                        "replica() is for a standalone primary; a Cluster finds its \
                         replicas itself"
                            .into(),
                    );
                }
                if self.read_from != ReadFrom::Primary {
                    return fail("ReadFrom::ReplicasFirst is not supported in Cluster mode".into());
                }
            }
        }
        Ok(())
    }
}

/// Samples the server's clock after `first`, then every [`SYNC_EVERY`],
/// while the layer lives. Until a first sample succeeds (a lazy layer
/// built while Redis was down), a failed one is retried after
/// [`UNSYNCED_RETRY`] instead.
async fn resync_clock(layer: Weak<Inner>, first: Duration) {
    let mut pause = first;
    loop {
        tokio::time::sleep(pause).await;
        let Some(inner) = layer.upgrade() else {
            return;
        };
        if let Err(error) = inner.sync_clock(inner.timeout).await {
            // A previous sample stays in use: it only drifts.
            tracing::debug!(layer = %inner.name, %error, "could not sample the server's clock");
        }
        // A lazy layer built while Redis was down samples the clock on its
        // first call anyway; sampling soon after Redis is up spares that
        // call the round trip.
        pause = if inner.clock.is_synced() {
            SYNC_EVERY
        } else {
            UNSYNCED_RETRY
        };
    }
}

/// What every key of a layer with `namespace` starts with: `namespace:`
/// (one trailing `:` of the namespace is dropped first), or nothing for an
/// empty namespace.
///
/// The prefixes of two different non-empty namespaces never start one
/// another, since neither name holds a `:`: a key lives in one namespace
/// at most, for reads, writes and `SCAN MATCH` alike.
fn key_prefix(namespace: &str) -> Result<String> {
    if namespace.is_empty() {
        return Ok(String::new());
    }
    let name = namespace.strip_suffix(':').unwrap_or(namespace);
    if !name.is_empty() && !name.contains(':') {
        return Ok(format!("{name}:"));
    }
    let suggestion = name.trim_matches(':').replace(':', "-");
    let instead = if suggestion.is_empty() {
        "a name without `:` (or \"\" for the whole database)".to_owned()
    } else {
        format!("`{suggestion}`")
    };
    let overlap = match name.split_once(':') {
        Some((outer, inner)) if !outer.is_empty() => format!(
            "otherwise namespaces overlap: `{outer}` would see and invalidate the keys of \
             `{name}` as its own `{inner}:...` keys"
        ),
        _ => "otherwise namespaces overlap".to_owned(),
    };
    Err(Error::config(format!(
        "namespace `{namespace}` has a `:` before its end; a `:` may only end a namespace \
         (it separates the namespace from the key), since {overlap}. Use {instead} instead"
    )))
}

/// A URL the redis client refused (the message shows it without password).
pub(crate) fn url_error(url: &ServerUrl, err: &redis::RedisError) -> Error {
    let hint = if url.expose().starts_with("rediss://") && !cfg!(feature = "tls") {
        " (rediss:// needs the `tls` feature of cache-redis)"
    } else {
        ""
    };
    Error::config(format!("invalid Redis URL `{url}`: {err}{hint}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use cache_core::CacheLayer;

    #[tokio::test]
    async fn invalid_settings_are_errors_not_panics() {
        let base = || RedisLayer::builder("redis://127.0.0.1:1").pool_min_idle(0);
        let cases = [
            base().timeout(Duration::ZERO),
            base().connect_timeout(Duration::ZERO),
            base().pool_max_open(0),
            base().pool_max_open(1).pool_min_idle(2),
            base().idle_timeout(Duration::ZERO),
            base().max_value_size(0),
            base().scan_count(0),
            base().compress_above(0),
            base().namespace("app:v2:"),
            base().namespace("app:v2"),
            base().namespace(":"),
            base().namespace("::"),
            RedisLayer::builder("not a url").pool_min_idle(0),
            RedisLayer::cluster_builder(Vec::<String>::new()),
            RedisLayer::cluster_builder(["redis://127.0.0.1:1"]).replica("redis://127.0.0.1:2"),
            RedisLayer::cluster_builder(["redis://127.0.0.1:1"]).read_from(ReadFrom::ReplicasFirst),
        ];
        for builder in cases {
            let debug = format!("{builder:?}");
            match builder.build().await {
                Err(Error::Config(_)) => {}
                other => panic!("expected a config error for {debug}, got {other:?}"),
            }
        }
    }

    #[test]
    fn key_prefixes_end_with_one_colon() {
        for (namespace, prefix) in [
            ("offers", "offers:"),
            ("offers:", "offers:"),
            ("app-v2", "app-v2:"),
            ("a[1]*", "a[1]*:"),
            ("", ""),
        ] {
            assert_eq!(key_prefix(namespace).unwrap(), prefix, "{namespace:?}");
        }
        for (namespace, suggestion) in [
            ("app:v2:", "`app-v2`"),
            ("app:v2", "`app-v2`"),
            ("app::", "`app`"),
            (":app", "`app`"),
            (":", "without `:`"),
        ] {
            match key_prefix(namespace) {
                Err(Error::Config(message)) => {
                    assert!(message.contains(suggestion), "{namespace:?}: {message}")
                }
                other => panic!("{namespace:?}: expected a config error, got {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn lazy_build_touches_no_server() {
        let layer = RedisLayer::builder("redis://127.0.0.1:1")
            .pool_min_idle(0)
            .timeout(Duration::from_millis(300))
            .build()
            .await
            .expect("no connection is opened");
        let err = layer
            .get(
                &cache_core::CallContext::system(cache_core::Operation::Read),
                "k",
            )
            .await
            .expect_err("nothing listens on port 1");
        assert_eq!(err.layer(), Some("redis"));
    }
}
