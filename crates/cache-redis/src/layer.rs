//! `RedisLayer`: the `CacheLayer` implementation.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cache_core::{
    CacheLayer, CallContext, Counter, Entry, Error, ErrorClass, LayerStats, Lookups, Pattern,
    Result, Writes,
};
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{RedisError, RedisResult, Value};

use crate::builder::{ReadFrom, RedisLayerBuilder};
use crate::codec::{self, DecodeError, Decoded};
use crate::pool::{Conn, Lent, Node};
use crate::script::{self, is_noscript};
use crate::time::{self, ServerClock};

/// A cache tier in Redis: a standalone server (optionally with replicas) or
/// a Cluster. See the [crate docs](crate) for a tour.
///
/// Cloning is cheap and shares the connections and counters.
#[derive(Clone)]
pub struct RedisLayer {
    pub(crate) inner: Arc<Inner>,
}

#[derive(Default)]
pub(crate) struct Stats {
    hits: Counter,
    misses: Counter,
    sets: Counter,
    removals: Counter,
    rejections: Counter,
    corrupt: Counter,
    errors: Counter,
    stale_fills: Counter,
}

pub(crate) struct Inner {
    pub(crate) name: Arc<str>,
    /// The key prefix: `namespace:`, or empty for an empty namespace.
    pub(crate) namespace: String,
    /// The key prefix escaped for `SCAN MATCH`.
    pub(crate) match_prefix: String,
    pub(crate) primary: Node,
    pub(crate) replicas: Vec<Node>,
    pub(crate) standalone: bool,
    pub(crate) read_from: ReadFrom,
    pub(crate) timeout: Duration,
    pub(crate) max_value_size: usize,
    pub(crate) compress_above: Option<usize>,
    pub(crate) scan_count: usize,
    pub(crate) node_retry_after: Duration,
    pub(crate) stats: Stats,
    /// The server's clock, for expiries and "as of" times.
    pub(crate) clock: ServerClock,
    /// Removal markers, unless turned off.
    pub(crate) markers: Option<Markers>,
}

/// Removal markers: how long one lives, and the scripts that write them
/// and check fills against them (see `script.rs`).
pub(crate) struct Markers {
    pub(crate) ttl: Duration,
    /// Set when the layer is built. A digest is the SHA1 of the script, so
    /// loading the scripts again later gives the same.
    pub(crate) scripts: std::sync::OnceLock<script::Loaded>,
}

impl Markers {
    fn fill_sha(&self) -> &str {
        self.scripts.get().map_or("", |loaded| &loaded.fill)
    }

    fn remove_sha(&self) -> &str {
        self.scripts.get().map_or("", |loaded| &loaded.remove)
    }
}

impl fmt::Debug for RedisLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &self.inner;
        f.debug_struct("RedisLayer")
            .field("name", &inner.name)
            .field("namespace", &inner.namespace)
            .field("primary", &inner.primary.label())
            .field(
                "replicas",
                &inner.replicas.iter().map(Node::label).collect::<Vec<_>>(),
            )
            .field("read_from", &inner.read_from)
            .field("timeout", &inner.timeout)
            .finish_non_exhaustive()
    }
}

impl RedisLayer {
    /// A builder for a layer over one Redis server (add replicas with
    /// [`RedisLayerBuilder::replica`]).
    ///
    /// The URL is `redis://[user][:password@]host[:port][/db]`, or
    /// `rediss://...` for TLS with the `tls` feature. User and password are
    /// sent with `AUTH` (ACL users included); `Debug` output, errors and logs
    /// show the password as `***`.
    pub fn builder(url: impl Into<String>) -> RedisLayerBuilder {
        RedisLayerBuilder::standalone(url)
    }

    /// A builder for a layer over a Redis Cluster, seeded with the URLs of
    /// some of its nodes (one reachable node is enough; the client discovers
    /// the rest).
    pub fn cluster_builder<I, S>(nodes: I) -> RedisLayerBuilder
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        RedisLayerBuilder::cluster(nodes.into_iter().map(Into::into).collect())
    }

    /// The prefix of every Redis key of this layer: the namespace followed
    /// by `:` (`"offers:"` for `namespace("offers")` and for
    /// `namespace("offers:")`), or `""` for an empty namespace.
    pub fn namespace(&self) -> &str {
        &self.inner.namespace
    }

    /// The Redis key under which `key` is stored: `<namespace>:<key>`, or
    /// `key` itself with an empty namespace.
    pub fn redis_key(&self, key: &str) -> String {
        self.inner.key(key)
    }
}

/// One command's reply, in a batch.
type Reply = RedisResult<Value>;

/// What a write command is (see [`Inner::write_command`]), for reading
/// its reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A plain `SET` of new data. Answers `OK`.
    Set,
    /// The fill script. Answers 1 (stored) or 0 (stale, not stored).
    Fill,
    /// A removal (the entry expired before it was written). Answers the
    /// number of values removed.
    Remove,
}

/// What one `GET` said.
enum Read {
    Hit(Entry),
    Miss,
    /// Not an entry of ours: a counted miss, and the key is removed.
    Corrupt,
}

impl Inner {
    fn key(&self, key: &str) -> String {
        let mut full = String::with_capacity(self.namespace.len() + key.len());
        full.push_str(&self.namespace);
        full.push_str(key);
        full
    }

    fn backend(&self, node: &Node, err: RedisError) -> Error {
        Error::classified(
            self.name.clone(),
            classify(&err),
            describe(&err, node.label()),
        )
    }

    fn timed_out(&self, limit: Duration) -> Error {
        Error::timeout(self.name.clone(), limit)
    }

    /// How long a call may take: the layer's timeout, or less if the
    /// call's deadline is nearer.
    fn limit(&self, ctx: &CallContext<'_>) -> Duration {
        ctx.time_left()
            .map_or(self.timeout, |left| left.min(self.timeout))
    }

    /// One attempt on one node, without a timeout, counted in the node's
    /// stats (a call cut by a timeout is counted by the caller).
    async fn attempt<'a, T, F, Fut>(&self, node: &'a Node, op: &F) -> Result<T>
    where
        F: Fn(Lent<'a>) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let started = Instant::now();
        let result = self.attempt_unobserved(node, op).await;
        node.observe(started.elapsed(), result.as_ref().err().map(Error::class));
        result
    }

    async fn attempt_unobserved<'a, T, F, Fut>(&self, node: &'a Node, op: &F) -> Result<T>
    where
        F: Fn(Lent<'a>) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        // Every command the layer sends is idempotent (GET, SET, UNLINK, SCAN,
        // the two scripts: see script.rs), so a request that met a dead
        // connection (a restarted server, a dropped socket) is sent once
        // more on a fresh one.
        let mut retried = false;
        loop {
            let conn = node
                .get()
                .await
                .map_err(|err| pool_error(&self.name, node.label(), err))?;
            let ticket = conn.ticket();
            let result = op(conn).await;
            let broken = node.report(ticket, result.as_ref().err());
            match result {
                Err(_) if broken && !retried => retried = true,
                result => return result.map_err(|err| self.backend(node, err)),
            }
        }
    }

    /// A write (or a delete, or a scan step) on the primary, bounded by `limit`.
    async fn on_primary<'a, T, F, Fut>(&'a self, limit: Duration, op: F) -> Result<T>
    where
        F: Fn(Lent<'a>) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let result = match tokio::time::timeout(limit, self.attempt(&self.primary, &op)).await {
            Ok(result) => result,
            Err(_) => {
                self.primary.observe(limit, Some(ErrorClass::Timeout));
                Err(self.timed_out(limit))
            }
        };
        if result.is_err() {
            self.stats.errors.incr();
        }
        result
    }

    /// A read: nodes in preference order, those that failed recently last;
    /// the first answer wins. The whole call is bounded by `limit`.
    async fn read<'a, T, F, Fut>(&'a self, limit: Duration, op: F) -> Result<T>
    where
        F: Fn(Lent<'a>) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        if self.replicas.is_empty() {
            return self.on_primary(limit, op).await;
        }
        let deadline = tokio::time::Instant::now() + limit;
        let mut order: Vec<&Node> = Vec::with_capacity(self.replicas.len() + 1);
        match self.read_from {
            ReadFrom::Primary => {
                order.push(&self.primary);
                order.extend(self.replicas.iter());
            }
            ReadFrom::ReplicasFirst => {
                order.extend(self.replicas.iter());
                order.push(&self.primary);
            }
        }
        // Stable: healthy nodes keep their order and go first.
        order.sort_by_key(|node| node.is_down());
        let mut last_error = None;
        for node in order {
            let started = Instant::now();
            match tokio::time::timeout_at(deadline, self.attempt(node, &op)).await {
                Ok(Ok(value)) => {
                    node.mark_up();
                    return Ok(value);
                }
                Ok(Err(err)) => {
                    node.mark_down(self.node_retry_after);
                    tracing::debug!(layer = %self.name, node = node.label(), error = %err, "read failed, trying the next node");
                    last_error = Some(err);
                }
                Err(_) => {
                    node.observe(started.elapsed(), Some(ErrorClass::Timeout));
                    node.mark_down(self.node_retry_after);
                    last_error = Some(self.timed_out(limit));
                    break;
                }
            }
        }
        self.stats.errors.incr();
        Err(last_error.unwrap_or_else(|| self.timed_out(limit)))
    }

    /// Turns a `GET` reply into an entry. The expiry in the header is in
    /// the server's time; it becomes the first local instant at which the
    /// server's clock may reach it, so a copy never outlives its source.
    fn read_value(&self, value: Value, now: Instant) -> RedisResult<Read> {
        let raw = match value {
            Value::Nil => return Ok(Read::Miss),
            Value::BulkString(bytes) => bytes,
            Value::ServerError(err) if err.code() == "WRONGTYPE" => return Ok(Read::Corrupt),
            Value::ServerError(err) => return Err(err.into()),
            _ => return Ok(Read::Corrupt),
        };
        match codec::decode(Bytes::from(raw), self.max_value_size) {
            Ok(Decoded::Value {
                value,
                expires_at_ms,
            }) => {
                let expires_at = expires_at_ms.map(|ms| {
                    let micros = i64::try_from(ms).unwrap_or(i64::MAX).saturating_mul(1000);
                    self.clock.first_local(micros)
                });
                if expires_at.is_some_and(|at| at <= now) {
                    return Ok(Read::Miss);
                }
                Ok(Read::Hit(Entry::new(value).expires_at(expires_at)))
            }
            Ok(Decoded::Marker) | Err(DecodeError::Unsupported) => Ok(Read::Miss),
            Err(DecodeError::Corrupt) => Ok(Read::Corrupt),
        }
    }

    /// Counts a read and, for unreadable bytes, removes the key.
    async fn settle(&self, full_key: &str, read: Read) -> Option<Entry> {
        match read {
            Read::Hit(entry) => {
                self.stats.hits.incr();
                Some(entry)
            }
            Read::Miss => {
                self.stats.misses.incr();
                None
            }
            Read::Corrupt => {
                self.stats.misses.incr();
                self.stats.corrupt.incr();
                tracing::warn!(layer = %self.name, key = full_key, "unreadable bytes under a key; removing it");
                // Best effort: the read already answered "miss". Boxed: a
                // rare path, and inline it would double every read's future.
                let _ = Box::pin(self.remove_corrupt(full_key)).await;
                None
            }
        }
    }

    /// Removes a key holding unreadable bytes (counted as corrupt, not as
    /// a removal: no user asked for it).
    async fn remove_corrupt(&self, full_key: &str) -> Result<i64> {
        self.on_primary(self.timeout, |mut conn| async move {
            redis::cmd("UNLINK")
                .arg(full_key)
                .query_async::<i64>(&mut conn)
                .await
        })
        .await
    }

    /// The command that stores `entry` under `full_key`: a `SET ... PXAT`,
    /// or for a fill with markers on, the script that stores it only over
    /// nothing newer. An entry that has already expired is removed instead
    /// (a write of new data) or dropped (`None`: a fill's key may hold
    /// something newer).
    fn write_command(
        &self,
        full_key: &str,
        entry: &Entry,
        ctx: &CallContext<'_>,
    ) -> Option<(Kind, redis::Cmd)> {
        let now = ctx.now();
        let expires_at_ms = match entry.expiry() {
            None => None,
            Some(at) => {
                // The earliest the server's clock can read at the expiry,
                // rounded down: Redis never keeps a value past it.
                let at_ms = self.clock.earliest(at).div_euclid(1000);
                if at_ms.saturating_mul(1000) <= self.clock.latest(now) {
                    return match ctx.fill_since() {
                        Some(_) => None,
                        None => Some((Kind::Remove, self.remove_command(full_key.as_bytes(), now))),
                    };
                }
                Some(at_ms as u64)
            }
        };
        match (ctx.fill_since(), &self.markers) {
            (Some(started), Some(markers)) => {
                // As of the earliest the load can have begun, by the
                // server's clock: never newer than a removal after it.
                let as_of = self.clock.earliest(started);
                let bytes = codec::encode(entry.value(), self.compress_above, expires_at_ms, as_of);
                let mut cmd = command("EVALSHA", 6, full_key.len() + bytes.len() + 100);
                cmd.arg(markers.fill_sha())
                    .arg(1)
                    .arg(full_key)
                    .arg(bytes)
                    .arg(as_of)
                    .arg(expires_at_ms.unwrap_or(0));
                Some((Kind::Fill, cmd))
            }
            _ => {
                let as_of = self.clock.latest(now);
                let bytes = codec::encode(entry.value(), self.compress_above, expires_at_ms, as_of);
                // SET, key, value, PXAT, up to 20 digits.
                let mut cmd = command("SET", 5, full_key.len() + bytes.len() + 25);
                cmd.arg(full_key).arg(bytes);
                if let Some(ms) = expires_at_ms {
                    cmd.arg("PXAT").arg(ms);
                }
                Some((Kind::Set, cmd))
            }
        }
    }

    /// The command that removes `full_key`: the marker script, or `UNLINK`
    /// with markers off. Either answers with the number of values removed.
    fn remove_command(&self, full_key: &[u8], now: Instant) -> redis::Cmd {
        let Some(markers) = &self.markers else {
            let mut cmd = command("UNLINK", 2, full_key.len() + 6);
            cmd.arg(full_key);
            return cmd;
        };
        let as_of = self.clock.latest(now);
        let ttl = i64::try_from(markers.ttl.as_micros()).unwrap_or(i64::MAX);
        let until_ms = as_of.saturating_add(ttl).div_euclid(1000) + 1;
        let marker = codec::marker(until_ms as u64, as_of);
        let mut cmd = command("EVALSHA", 5, full_key.len() + marker.len() + 80);
        cmd.arg(markers.remove_sha())
            .arg(1)
            .arg(full_key)
            .arg(marker)
            .arg(until_ms);
        cmd
    }

    fn too_large(&self, entry: &Entry) -> Option<Error> {
        (entry.len() > self.max_value_size).then(|| {
            self.stats.rejections.incr();
            Error::ValueTooLarge {
                layer: self.name.clone(),
                size: entry.len() as u64,
                limit: self.max_value_size as u64,
            }
        })
    }

    /// Removes keys (full Redis keys): with markers on, leaves a marker
    /// under each (see `script.rs`); with them off, `UNLINK`s them. Returns
    /// how many held a value.
    async fn remove_keys<K: AsRef<[u8]>>(
        &self,
        limit: Duration,
        full_keys: &[K],
        now: Instant,
    ) -> Result<u64> {
        if full_keys.is_empty() {
            return Ok(0);
        }
        self.ready_to_write(limit).await?;
        if self.markers.is_none() && self.standalone {
            // One command for every key.
            let mut unlink = command("UNLINK", full_keys.len() + 1, 0);
            for key in full_keys {
                unlink.arg(key.as_ref());
            }
            let unlink = &unlink;
            let removed: u64 = self
                .on_primary(limit, |mut conn| async move {
                    unlink.query_async::<u64>(&mut conn).await
                })
                .await?;
            self.stats.removals.add(removed);
            return Ok(removed);
        }
        let commands: Vec<redis::Cmd> = full_keys
            .iter()
            .map(|key| self.remove_command(key.as_ref(), now))
            .collect();
        let mut removed = 0;
        for reply in self.send(limit, &commands).await? {
            match reply {
                Ok(Value::Int(count)) => removed += count.max(0) as u64,
                other => {
                    self.stats.errors.incr();
                    return Err(self.reply_error(other));
                }
            }
        }
        self.stats.removals.add(removed);
        Ok(removed)
    }

    /// Sends commands to the primary: one pipeline on a standalone server,
    /// all at once over a Cluster connection (a pipeline must stay in one
    /// slot). One reply per command, errors left in them. Commands refused
    /// with `NOSCRIPT` (the server lost the scripts: restarted, failed over,
    /// `SCRIPT FLUSH`) are resent once after loading the scripts again.
    async fn send(&self, limit: Duration, commands: &[redis::Cmd]) -> Result<Vec<Reply>> {
        let mut replies = self.send_once(limit, commands).await?;
        let lost: Vec<usize> = (0..replies.len())
            .filter(|&i| is_noscript(&replies[i]))
            .collect();
        if !lost.is_empty() {
            self.load_scripts(limit).await?;
            let again: Vec<redis::Cmd> = lost.iter().map(|&i| commands[i].clone()).collect();
            for (i, reply) in lost.into_iter().zip(self.send_once(limit, &again).await?) {
                replies[i] = reply;
            }
        }
        Ok(replies)
    }

    async fn send_once(&self, limit: Duration, commands: &[redis::Cmd]) -> Result<Vec<Reply>> {
        let replies: Vec<Reply> = if self.standalone {
            let mut pipe = redis::Pipeline::with_capacity(commands.len());
            for cmd in commands {
                pipe.add_command(cmd.clone());
            }
            pipe.ignore_errors();
            let pipe = &pipe;
            let values: Vec<Value> = self
                .on_primary(limit, |mut conn| async move {
                    pipe.query_async(&mut conn).await
                })
                .await?;
            values
                .into_iter()
                .map(|value| match value {
                    Value::ServerError(err) => Err(err.into()),
                    value => Ok(value),
                })
                .collect()
        } else {
            self.on_primary(limit, |conn| async move {
                let requests = commands.iter().map(|cmd| {
                    let mut conn = conn.clone();
                    async move { cmd.query_async::<Value>(&mut conn).await }
                });
                Ok(futures::future::join_all(requests).await)
            })
            .await?
        };
        if replies.len() != commands.len() {
            self.stats.errors.incr();
            return Err(Error::backend(self.name.clone(), "short pipeline reply"));
        }
        Ok(replies)
    }

    /// What a lazy layer does before its first write or removal: sample the
    /// server's clock (expiries and removal times are written in it) and
    /// load the marker scripts (commands name them by digest). Afterwards,
    /// two loads that find both done.
    async fn ready_to_write(&self, limit: Duration) -> Result<()> {
        if !self.clock.is_synced() {
            // Boxed: a rare path, which would otherwise grow every write's future.
            Box::pin(self.sync_clock(limit)).await?;
        }
        match &self.markers {
            Some(markers) if markers.scripts.get().is_none() => {
                Box::pin(self.load_scripts(limit)).await
            }
            _ => Ok(()),
        }
    }

    /// What a lazy layer does on the connection of its first read: sample
    /// the server's clock there, so that the expiry the read finds
    /// translates with a sample, never with this host's wall clock.
    async fn ready_to_read(&self, conn: &mut Lent<'_>) -> RedisResult<()> {
        if !self.clock.is_synced() {
            let sent = Instant::now();
            let reply: (i64, i64) = Box::pin(redis::cmd("TIME").query_async(conn)).await?;
            self.clock
                .record(sent, time::parse_time(&reply), Instant::now());
        }
        Ok(())
    }

    /// Loads the marker scripts on the primary (every primary of a Cluster)
    /// and keeps their digests. A user without the permission gets a
    /// config error that says what to change.
    pub(crate) async fn load_scripts(&self, limit: Duration) -> Result<()> {
        let Some(markers) = &self.markers else {
            return Ok(());
        };
        let load = |source: &'static str| {
            self.on_primary(limit, move |mut conn| async move {
                redis::cmd("SCRIPT")
                    .arg("LOAD")
                    .arg(source)
                    .query_async::<String>(&mut conn)
                    .await
            })
        };
        let no_permission = |err: Error| {
            if err.class() != ErrorClass::Auth {
                return err;
            }
            Error::config(format!(
                "{err}; removal markers need the scripting commands (SCRIPT LOAD, \
                 EVALSHA): grant the Redis user +@scripting, or build the layer with \
                 removal_markers(None)"
            ))
        };
        let loaded = script::Loaded {
            fill: load(script::FILL).await.map_err(no_permission)?,
            remove: load(script::REMOVE).await.map_err(no_permission)?,
        };
        let _ = markers.scripts.set(loaded);
        Ok(())
    }

    /// Samples the server's clock with `TIME` (on the primary, or one node
    /// of a Cluster), within `limit`.
    pub(crate) async fn sync_clock(&self, limit: Duration) -> Result<()> {
        let sent = Instant::now();
        let reply: (i64, i64) = self
            .on_primary(limit, |mut conn| async move {
                redis::cmd("TIME").query_async(&mut conn).await
            })
            .await
            .map_err(|err| {
                if err.class() != ErrorClass::Auth {
                    return err;
                }
                Error::config(format!(
                    "{err}; expiries are written in the server's time, sampled with \
                     TIME: grant the Redis user +time"
                ))
            })?;
        self.clock
            .record(sent, time::parse_time(&reply), Instant::now());
        Ok(())
    }

    /// Sends one command (see [`send`](Self::send)).
    async fn send_one(&self, limit: Duration, cmd: &redis::Cmd) -> Result<Reply> {
        self.send(limit, std::slice::from_ref(cmd))
            .await?
            .pop()
            .ok_or_else(|| Error::backend(self.name.clone(), "no reply"))
    }

    /// Reads the reply to a write command of kind `kind`, and counts it.
    fn settle_write(&self, kind: Kind, reply: Reply) -> Result<()> {
        match (kind, reply) {
            (Kind::Fill, Ok(Value::Int(0))) => {
                self.stats.stale_fills.incr();
                return Err(Error::Superseded {
                    layer: self.name.clone(),
                });
            }
            (Kind::Set, Ok(_)) | (Kind::Fill, Ok(Value::Int(_))) => self.stats.sets.incr(),
            (Kind::Remove, Ok(Value::Int(removed))) => {
                self.stats.removals.add(removed.max(0) as u64);
            }
            (_, reply) => {
                self.stats.errors.incr();
                return Err(self.reply_error(reply));
            }
        }
        Ok(())
    }

    /// The error a reply that is not the expected one stands for.
    fn reply_error(&self, reply: Reply) -> Error {
        match reply {
            Err(err) => self.backend(&self.primary, err),
            Ok(other) => Error::backend(self.name.clone(), format!("unexpected reply {other:?}")),
        }
    }

    /// SCAN MATCH over one server (or one Cluster primary, by address),
    /// removing what it finds batch by batch.
    async fn scan_and_remove(
        &self,
        limit: Duration,
        glob: &str,
        address: Option<(&str, u16)>,
        now: Instant,
    ) -> Result<u64> {
        let mut cursor: u64 = 0;
        let mut removed = 0;
        loop {
            let (next, keys): (u64, Vec<Vec<u8>>) = self
                .on_primary(limit, |mut conn| async move {
                    let mut scan = redis::cmd("SCAN");
                    scan.arg(cursor)
                        .arg("MATCH")
                        .arg(glob)
                        .arg("COUNT")
                        .arg(self.scan_count);
                    match (address, &mut *conn) {
                        (Some((host, port)), Conn::Cluster(cluster)) => {
                            let routing =
                                RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                                    host: host.to_owned(),
                                    port,
                                });
                            let value = cluster.route_command(scan, routing).await?;
                            Ok(redis::from_redis_value(value)?)
                        }
                        _ => scan.query_async(&mut conn).await,
                    }
                })
                .await?;
            removed += self.remove_keys(limit, &keys, now).await?;
            cursor = next;
            if cursor == 0 {
                return Ok(removed);
            }
        }
    }

    /// Where the Cluster's slots are now (`CLUSTER NODES` of any node).
    async fn slot_map(&self, limit: Duration) -> Result<SlotMap> {
        let view = self
            .cluster_nodes(limit, SingleNodeRoutingInfo::Random)
            .await?;
        let mut map = SlotMap::parse(&view);
        // A slot being migrated shows as such (`[slot->-id]`, `[slot-<-id]`)
        // only in the two nodes' own lines: ask each primary about itself.
        let mut owners = Vec::with_capacity(map.primaries.len());
        for (host, port) in &map.primaries {
            let own = self
                .cluster_nodes(
                    limit,
                    SingleNodeRoutingInfo::ByAddress {
                        host: host.clone(),
                        port: *port,
                    },
                )
                .await?;
            owners.extend(SlotMap::parse(&own).own_line);
        }
        owners.sort();
        map.owners = owners;
        Ok(map)
    }

    /// `CLUSTER NODES` as the node `routing` picks sees the Cluster.
    async fn cluster_nodes(
        &self,
        limit: Duration,
        routing: SingleNodeRoutingInfo,
    ) -> Result<String> {
        self.on_primary(limit, |mut conn| {
            // A copy per try: `on_primary` may call this again.
            let routing = routing.clone();
            async move {
                let Conn::Cluster(cluster) = &mut *conn else {
                    unreachable!("only called in Cluster mode")
                };
                let value = cluster
                    .route_command(
                        redis::cmd("CLUSTER").arg("NODES").clone(),
                        RoutingInfo::SingleNode(routing),
                    )
                    .await?;
                Ok(redis::from_redis_value(value)?)
            }
        })
        .await
    }

    /// SCAN MATCH over every primary of a Cluster, removing what it finds,
    /// until a whole pass ran while no slot moved.
    ///
    /// A slot migrated during a pass can carry keys from a primary not
    /// scanned yet to one already scanned, where the pass would miss them;
    /// and a key moved into a node while its SCAN runs may not be
    /// returned. So a pass counts only if the slots were where they were
    /// when it began, and no slot was between two primaries
    /// (`MIGRATING`/`IMPORTING`) before or after it; else the primaries are
    /// scanned again, [`CLUSTER_SCAN_PASSES`] times at most. A Cluster
    /// resharding all along makes the removal fail (`Unavailable`): with
    /// the cache's invalidation queue, it is retried until the slots stay.
    async fn scan_and_remove_cluster(
        &self,
        limit: Duration,
        glob: &str,
        now: Instant,
    ) -> Result<u64> {
        let mut removed = 0;
        for pass in 1..=CLUSTER_SCAN_PASSES {
            let before = self.slot_map(limit).await?;
            for (host, port) in &before.primaries {
                removed += self
                    .scan_and_remove(limit, glob, Some((host, *port)), now)
                    .await?;
            }
            let after = self.slot_map(limit).await?;
            if before.is_settled() && after.owners == before.owners {
                return Ok(removed);
            }
            tracing::debug!(
                layer = %self.name,
                pass,
                "slots moved during a removal by pattern: scanning the primaries again"
            );
        }
        Err(Error::classified(
            self.name.clone(),
            ErrorClass::Unavailable,
            format!(
                "the Cluster's slots kept moving during a removal by pattern \
                 ({CLUSTER_SCAN_PASSES} passes); keys may be left: call again once the \
                 resharding is over (the cache's invalidation queue does)"
            ),
        ))
    }
}

/// How many passes over a Cluster's primaries a removal by pattern makes
/// before it gives up on slots that keep moving.
const CLUSTER_SCAN_PASSES: usize = 3;

/// Which slots each primary of a Cluster serves, from `CLUSTER NODES`:
/// `<id> <ip:port@cport[,hostname]> <flags> <primary> <ping> <pong> <epoch> <link> <slots>...`.
#[derive(Debug, Clone)]
struct SlotMap {
    /// The primaries that serve slots, in the order `CLUSTER NODES` lists
    /// them (which differs from node to node: compare `owners`).
    primaries: Vec<(String, u16)>,
    /// Each primary's address and slot fields (ranges, and
    /// `[slot->-id]` / `[slot-<-id]` for a slot being migrated), sorted;
    /// in [`slot_map`](Inner::slot_map), each from the primary's own view.
    owners: Vec<String>,
    /// The line of the node that answered (`myself`), as in `owners`, if
    /// it is a primary serving slots.
    own_line: Option<String>,
}

impl SlotMap {
    fn parse(nodes: &str) -> SlotMap {
        let mut map = SlotMap {
            primaries: Vec::new(),
            owners: Vec::new(),
            own_line: None,
        };
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let Some(flags) = fields.get(2) else {
                continue;
            };
            if !flags.split(',').any(|flag| flag == "master")
                || flags
                    .split(',')
                    .any(|flag| flag == "fail" || flag == "noaddr")
                || fields.len() < 9
            {
                continue;
            }
            let Some(address) = fields[1].split(['@', ',']).next() else {
                continue;
            };
            let Some((host, port)) = address.rsplit_once(':') else {
                continue;
            };
            let Ok(port) = port.parse() else {
                continue;
            };
            map.primaries.push((host.to_owned(), port));
            let owner = format!("{address} {}", fields[8..].join(" "));
            if flags.split(',').any(|flag| flag == "myself") {
                map.own_line = Some(owner.clone());
            }
            map.owners.push(owner);
        }
        map.owners.sort();
        map
    }

    /// Whether no slot is being migrated between two primaries.
    fn is_settled(&self) -> bool {
        !self.owners.iter().any(|owner| owner.contains('['))
    }
}

/// The class of a Redis failure: a full, read-only or locked-out server is
/// not a dead one.
pub(crate) fn classify(err: &RedisError) -> ErrorClass {
    match err.code() {
        Some("OOM") => ErrorClass::OutOfMemory,
        Some("READONLY") => ErrorClass::ReadOnly,
        Some("NOAUTH" | "WRONGPASS" | "NOPERM") => ErrorClass::Auth,
        // A redirect the client could not follow (keys of a slot being
        // migrated, split between two primaries) is a Cluster resharding.
        Some("LOADING" | "MASTERDOWN" | "CLUSTERDOWN" | "TRYAGAIN" | "ASK" | "MOVED") => {
            ErrorClass::Unavailable
        }
        _ if err.kind() == redis::ErrorKind::AuthenticationFailed => ErrorClass::Auth,
        _ if err.is_timeout() => ErrorClass::Timeout,
        _ if err.is_io_error() || err.is_connection_refusal() || err.is_connection_dropped() => {
            ErrorClass::Unavailable
        }
        _ => ErrorClass::Other,
    }
}

/// What a backend error says: the client's error, the node (`node` is a
/// label without a password), and what to check when the server refused
/// the credentials.
pub(crate) fn describe(err: &RedisError, node: &str) -> String {
    let hint = if err.code() == Some("NOAUTH") {
        "; the server requires a password and the URL gives none: \
         redis://:password@host:port, or redis://user:password@host:port for an ACL user"
    } else if err.kind() == redis::ErrorKind::AuthenticationFailed
        || err.code() == Some("WRONGPASS")
    {
        "; the server refused the user or password of the URL: check them"
    } else {
        ""
    };
    format!("{err} ({node}){hint}")
}

pub(crate) fn pool_error(layer: &Arc<str>, node: &str, err: mobc::Error<RedisError>) -> Error {
    match err {
        mobc::Error::Inner(err) => {
            Error::classified(layer.clone(), classify(&err), describe(&err, node))
        }
        mobc::Error::Timeout => Error::classified(
            layer.clone(),
            ErrorClass::Unavailable,
            format!("no connection to {node} within the connect timeout"),
        ),
        mobc::Error::BadConn => Error::classified(
            layer.clone(),
            ErrorClass::Unavailable,
            format!("bad connection to {node}"),
        ),
        mobc::Error::PoolClosed => {
            Error::unavailable(layer.clone(), format!("the pool of {node} is closed"))
        }
    }
}

/// `name` with room for `args` arguments (itself included) of `data` bytes
/// in all: built argument by argument from empty, a command's two buffers
/// were reallocated several times per request.
fn command(name: &str, args: usize, data: usize) -> redis::Cmd {
    let mut cmd = redis::Cmd::with_capacity(args, data);
    cmd.arg(name);
    cmd
}

fn get_command(full_key: &str) -> redis::Cmd {
    let mut get = command("GET", 2, full_key.len() + 3);
    get.arg(full_key);
    get
}

/// A `GET` reply; a key of another type (`WRONGTYPE`) is a corrupt entry,
/// not a failed call.
fn got(reply: Reply) -> RedisResult<Option<Value>> {
    match reply {
        Err(err) if err.code() == Some("WRONGTYPE") => Ok(None),
        Ok(Value::ServerError(err)) if err.code() == "WRONGTYPE" => Ok(None),
        Ok(Value::ServerError(err)) => Err(err.into()),
        other => other.map(Some),
    }
}

#[async_trait::async_trait]
impl CacheLayer for RedisLayer {
    fn name(&self) -> &str {
        &self.inner.name
    }

    // Single-key calls skip the batch's Vecs: one key is the common case.
    async fn get(&self, ctx: &CallContext<'_>, key: &str) -> Result<Option<Entry>> {
        let inner = &*self.inner;
        let full_key = inner.key(key);
        let now = ctx.now();
        let get = &get_command(&full_key);
        let read = inner
            .read(inner.limit(ctx), |mut conn| async move {
                inner.ready_to_read(&mut conn).await?;
                match got(get.query_async::<Value>(&mut conn).await)? {
                    Some(value) => inner.read_value(value, now),
                    None => Ok(Read::Corrupt),
                }
            })
            .await?;
        Ok(inner.settle(&full_key, read).await)
    }

    async fn set(&self, ctx: &CallContext<'_>, key: &str, entry: Entry) -> Result<()> {
        let inner = &*self.inner;
        let full_key = inner.key(key);
        let limit = inner.limit(ctx);
        inner.ready_to_write(limit).await?;
        if let Some(refused) = inner.too_large(&entry) {
            // A refused write of new data must not leave the previous value
            // readable; a refused fill leaves the key as it is.
            if ctx.fill_since().is_none() {
                inner.remove_keys(limit, &[&full_key], ctx.now()).await?;
            }
            return Err(refused);
        }
        match inner.write_command(&full_key, &entry, ctx) {
            None => Ok(()),
            Some((Kind::Set, cmd)) => {
                let cmd = &cmd;
                inner
                    .on_primary(limit, |mut conn| async move {
                        cmd.query_async::<()>(&mut conn).await
                    })
                    .await?;
                inner.stats.sets.incr();
                Ok(())
            }
            Some((kind, cmd)) => {
                let reply = inner.send_one(limit, &cmd).await?;
                inner.settle_write(kind, reply)
            }
        }
    }

    async fn delete(&self, ctx: &CallContext<'_>, key: &str) -> Result<bool> {
        let inner = &*self.inner;
        let full_key = inner.key(key);
        Ok(inner
            .remove_keys(inner.limit(ctx), &[&full_key], ctx.now())
            .await?
            > 0)
    }

    async fn delete_many(&self, ctx: &CallContext<'_>, keys: &[&str]) -> Result<u64> {
        let inner = &*self.inner;
        let full_keys: Vec<String> = keys.iter().map(|key| inner.key(key)).collect();
        inner
            .remove_keys(inner.limit(ctx), &full_keys, ctx.now())
            .await
    }

    async fn invalidate(&self, ctx: &CallContext<'_>, pattern: &Pattern) -> Result<u64> {
        let inner = &*self.inner;
        if let Some(key) = pattern.literal() {
            return Ok(u64::from(self.delete(ctx, key).await?));
        }
        let (limit, now) = (inner.limit(ctx), ctx.now());
        let glob = format!("{}{}", inner.match_prefix, pattern.as_str());
        if inner.standalone {
            return inner.scan_and_remove(limit, &glob, None, now).await;
        }
        inner.scan_and_remove_cluster(limit, &glob, now).await
    }

    async fn get_many(&self, ctx: &CallContext<'_>, keys: &[&str]) -> Result<Lookups> {
        let inner = &*self.inner;
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let full_keys: Vec<String> = keys.iter().map(|key| inner.key(key)).collect();
        let now = ctx.now();
        let read_all = |replies: Vec<Reply>| -> Vec<RedisResult<Read>> {
            replies
                .into_iter()
                .map(|reply| match got(reply)? {
                    Some(value) => inner.read_value(value, now),
                    None => Ok(Read::Corrupt),
                })
                .collect()
        };
        let reads: Vec<RedisResult<Read>> = if inner.standalone {
            // One pipeline, one round trip.
            let mut pipe = redis::Pipeline::with_capacity(full_keys.len());
            for full_key in &full_keys {
                pipe.add_command(get_command(full_key));
            }
            pipe.ignore_errors();
            let pipe = &pipe;
            inner
                .read(inner.limit(ctx), |mut conn| async move {
                    inner.ready_to_read(&mut conn).await?;
                    let values: Vec<Value> = pipe.query_async(&mut conn).await?;
                    Ok(read_all(values.into_iter().map(Ok).collect()))
                })
                .await?
        } else {
            // A pipeline must stay in one slot: one GET per key, all in
            // flight at once over the multiplexed cluster connection.
            let full_keys = &full_keys;
            inner
                .read(inner.limit(ctx), |mut conn| async move {
                    inner.ready_to_read(&mut conn).await?;
                    let requests = full_keys.iter().map(|key| {
                        let mut conn = conn.clone();
                        async move { get_command(key).query_async::<Value>(&mut conn).await }
                    });
                    Ok(read_all(futures::future::join_all(requests).await))
                })
                .await?
        };
        if reads.len() != keys.len() {
            inner.stats.errors.incr();
            return Err(Error::backend(inner.name.clone(), "short pipeline reply"));
        }
        let mut results = Vec::with_capacity(keys.len());
        for (full_key, read) in full_keys.iter().zip(reads) {
            results.push(match read {
                Ok(read) => Ok(inner.settle(full_key, read).await),
                Err(err) => {
                    inner.stats.errors.incr();
                    Err(inner.backend(&inner.primary, err))
                }
            });
        }
        Ok(results)
    }

    async fn set_many(&self, ctx: &CallContext<'_>, entries: &[(&str, Entry)]) -> Result<Writes> {
        let inner = &*self.inner;
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let now = ctx.now();
        inner.ready_to_write(inner.limit(ctx)).await?;
        // Per entry: the result to report once its command is answered, and
        // the kind of that command (`None`: nothing was sent for it).
        let mut outcomes: Vec<(Result<()>, Option<Kind>)> = Vec::with_capacity(entries.len());
        let mut commands = Vec::with_capacity(entries.len());
        for (key, entry) in entries {
            let full_key = inner.key(key);
            let (outcome, write) = match inner.too_large(entry) {
                // As in `set`: a refused fill leaves the key alone.
                Some(refused) if ctx.fill_since().is_some() => (Err(refused), None),
                Some(refused) => (
                    Err(refused),
                    Some((Kind::Remove, inner.remove_command(full_key.as_bytes(), now))),
                ),
                None => (Ok(()), inner.write_command(&full_key, entry, ctx)),
            };
            let kind = write.map(|(kind, cmd)| {
                commands.push(cmd);
                kind
            });
            outcomes.push((outcome, kind));
        }
        let mut replies = inner.send(inner.limit(ctx), &commands).await?.into_iter();
        Ok(outcomes
            .into_iter()
            .map(|(outcome, kind)| {
                let written = match (kind, replies.next()) {
                    (None, _) => Ok(()),
                    (Some(kind), Some(reply)) => inner.settle_write(kind, reply),
                    (Some(_), None) => Err(Error::backend(inner.name.clone(), "no reply")),
                };
                outcome.and(written)
            })
            .collect())
    }

    /// Every instance pointed at the same Redis sees the same keys.
    fn is_shared(&self) -> bool {
        true
    }

    fn stats(&self) -> LayerStats {
        let stats = &self.inner.stats;
        let mut snapshot = LayerStats::default();
        snapshot.hits = stats.hits.get();
        snapshot.misses = stats.misses.get();
        snapshot.sets = stats.sets.get();
        snapshot.removals = stats.removals.get();
        snapshot.rejections = stats.rejections.get();
        snapshot.corrupt = stats.corrupt.get();
        snapshot.errors = stats.errors.get();
        snapshot.stale_fills = stats.stale_fills.get();
        let inner = &*self.inner;
        let primary_role = if inner.standalone {
            "primary"
        } else {
            "cluster"
        };
        snapshot.nodes = std::iter::once(inner.primary.stats(primary_role))
            .chain(inner.replicas.iter().map(|node| node.stats("replica")))
            .collect();
        let mut pool = inner.primary.pool_stats();
        for replica in &inner.replicas {
            let more = replica.pool_stats();
            pool.max_open += more.max_open;
            pool.open += more.open;
            pool.connects += more.connects;
            pool.broken += more.broken;
            pool.waits += more.waits;
            pool.wait_time += more.wait_time;
        }
        snapshot.pool = Some(pool);
        snapshot
    }

    /// `PING` on the primary (a Cluster: on a node the client picks),
    /// within the layer's timeout and the context's deadline.
    async fn ping(&self, ctx: &CallContext<'_>) -> Result<()> {
        let inner = &*self.inner;
        inner
            .on_primary(inner.limit(ctx), |mut conn| async move {
                redis::cmd("PING").query_async::<()>(&mut conn).await
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_nodes_are_parsed() {
        let nodes = "\
07c37dfeb235213a872192d90877d0cd55635b91 127.0.0.1:30004@31004,host4 slave e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 0 1426238317239 4 connected
67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1 127.0.0.1:30002@31002 master - 0 1426238316232 2 connected 5461-10922
292f8b365bb7edb5e285caf0b7e6ddc7265d2f4f 127.0.0.1:30003@31003 master - 0 1426238318243 3 connected 10923-16383
e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 127.0.0.1:30001@31001 myself,master - 0 0 1 connected 0-5460
824fe116063bc5fcf9f4ffd895bc17aee7731ac3 127.0.0.1:30006@31006 master,fail - 0 1426238317741 6 connected 12000";
        let map = SlotMap::parse(nodes);
        assert_eq!(
            map.primaries,
            vec![
                ("127.0.0.1".to_owned(), 30002),
                ("127.0.0.1".to_owned(), 30003),
                ("127.0.0.1".to_owned(), 30001),
            ]
        );
        assert!(map.is_settled());
        // The answering node's own line (a migration shows only there).
        assert_eq!(map.own_line.as_deref(), Some("127.0.0.1:30001 0-5460"));
    }

    #[test]
    fn a_slot_being_migrated_unsettles_the_map_and_a_moved_one_changes_it() {
        let line = |port: u16, slots: &str| {
            format!("id{port} 127.0.0.1:{port}@1{port} master - 0 0 1 connected {slots}")
        };
        let before = SlotMap::parse(&[line(7001, "0-8000"), line(7002, "8001-16383")].join("\n"));
        assert!(before.is_settled());
        let migrating = SlotMap::parse(
            &[
                line(7001, "0-8000 [8000->-id7002]"),
                line(7002, "8001-16383 [8000-<-id7001]"),
            ]
            .join("\n"),
        );
        assert!(!migrating.is_settled());
        assert_ne!(migrating.owners, before.owners);
        let moved = SlotMap::parse(&[line(7001, "0-7999"), line(7002, "8000-16383")].join("\n"));
        assert!(moved.is_settled());
        assert_ne!(moved.owners, before.owners);
        // The same slots listed from another node: the same map.
        let reordered =
            SlotMap::parse(&[line(7002, "8001-16383"), line(7001, "0-8000")].join("\n"));
        assert_eq!(reordered.owners, before.owners);
    }
}
