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
use crate::codec::{self, DecodeError};
use crate::pool::{Conn, Lent, Node};

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

/// What one GET + PTTL pair said.
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

    fn timed_out(&self) -> Error {
        Error::timeout(self.name.clone(), self.timeout)
    }

    /// One attempt on one node, without a timeout.
    async fn attempt<'a, T, F, Fut>(&self, node: &'a Node, op: &F) -> Result<T>
    where
        F: Fn(Lent<'a>) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        // Every command the layer sends is idempotent (GET, PTTL, SET, UNLINK,
        // SCAN), so a request that met a dead connection (a restarted server,
        // a dropped socket) is sent once more on a fresh one.
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

    /// A write (or a delete, or a scan step) on the primary, bounded by the timeout.
    async fn on_primary<'a, T, F, Fut>(&'a self, op: F) -> Result<T>
    where
        F: Fn(Lent<'a>) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let result =
            match tokio::time::timeout(self.timeout, self.attempt(&self.primary, &op)).await {
                Ok(result) => result,
                Err(_) => Err(self.timed_out()),
            };
        if result.is_err() {
            self.stats.errors.incr();
        }
        result
    }

    /// A read: nodes in preference order, those that failed recently last;
    /// the first answer wins. The whole call is bounded by the timeout.
    async fn read<'a, T, F, Fut>(&'a self, op: F) -> Result<T>
    where
        F: Fn(Lent<'a>) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        if self.replicas.is_empty() {
            return self.on_primary(op).await;
        }
        let deadline = tokio::time::Instant::now() + self.timeout;
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
                    node.mark_down(self.node_retry_after);
                    last_error = Some(self.timed_out());
                    break;
                }
            }
        }
        self.stats.errors.incr();
        Err(last_error.unwrap_or_else(|| self.timed_out()))
    }

    /// Turns a GET + PTTL pair into an entry. `sent_at` is the clock reading
    /// taken before the request left: the server measured the TTL later, so
    /// `sent_at + pttl` is never past the key's real expiry.
    fn read_pair(&self, value: Value, pttl: Value, sent_at: Instant) -> RedisResult<Read> {
        let raw = match value {
            Value::Nil => return Ok(Read::Miss),
            Value::BulkString(bytes) => bytes,
            Value::ServerError(err) if err.code() == "WRONGTYPE" => return Ok(Read::Corrupt),
            Value::ServerError(err) => return Err(err.into()),
            _ => return Ok(Read::Corrupt),
        };
        let pttl: i64 = match pttl {
            Value::ServerError(err) => return Err(err.into()),
            other => redis::from_redis_value(other)?,
        };
        let expires_at = match pttl {
            // Gone (expired or deleted) between the two commands.
            -2 => return Ok(Read::Miss),
            ms if ms < 0 => None,
            0 => return Ok(Read::Miss),
            ms => Some(sent_at + Duration::from_millis(ms as u64)),
        };
        match codec::decode(Bytes::from(raw), self.max_value_size) {
            Ok(value) => Ok(Read::Hit(Entry::new(value).expires_at(expires_at))),
            Err(DecodeError::Corrupt) => Ok(Read::Corrupt),
            Err(DecodeError::Unsupported) => Ok(Read::Miss),
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
        self.on_primary(|mut conn| async move {
            redis::cmd("UNLINK")
                .arg(full_key)
                .query_async::<i64>(&mut conn)
                .await
        })
        .await
    }

    /// The command that stores `entry` under `full_key`, or `None` when the
    /// entry has already expired (by the layer's clock, to the millisecond).
    fn set_command(&self, full_key: &str, entry: &Entry, now: Instant) -> Option<redis::Cmd> {
        let ttl_ms = match entry.expiry() {
            None => None,
            Some(at) => {
                // Rounded down: Redis never keeps a value past its expiry.
                let ms = at.saturating_duration_since(now).as_millis();
                if ms == 0 {
                    return None;
                }
                Some(ms.min(i64::MAX as u128) as u64)
            }
        };
        let bytes = codec::encode(entry.value(), self.compress_above);
        // SET, key, value, PX, up to 20 digits.
        let mut cmd = command("SET", 5, full_key.len() + bytes.len() + 25);
        cmd.arg(full_key).arg(bytes);
        if let Some(ms) = ttl_ms {
            cmd.arg("PX").arg(ms);
        }
        Some(cmd)
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

    async fn unlink(&self, full_keys: &[&str]) -> Result<u64> {
        let removed: u64 = self
            .on_primary(|mut conn| async move {
                redis::cmd("UNLINK")
                    .arg(full_keys)
                    .query_async::<u64>(&mut conn)
                    .await
            })
            .await?;
        self.stats.removals.add(removed);
        Ok(removed)
    }

    /// SCAN MATCH + UNLINK over one server (or one Cluster primary, by address).
    async fn scan_and_unlink(&self, glob: &str, address: Option<(&str, u16)>) -> Result<u64> {
        let mut cursor: u64 = 0;
        let mut removed = 0;
        loop {
            let (next, keys): (u64, Vec<Vec<u8>>) = self
                .on_primary(|mut conn| async move {
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
            if !keys.is_empty() {
                let keys = &keys;
                let count: u64 = self
                    .on_primary(|mut conn| async move {
                        redis::cmd("UNLINK")
                            .arg(keys)
                            .query_async::<u64>(&mut conn)
                            .await
                    })
                    .await?;
                removed += count;
                self.stats.removals.add(count);
            }
            cursor = next;
            if cursor == 0 {
                return Ok(removed);
            }
        }
    }

    /// The `host:port` of every Cluster primary that serves slots.
    async fn cluster_primaries(&self) -> Result<Vec<(String, u16)>> {
        let nodes: String = self
            .on_primary(|mut conn| async move {
                let Conn::Cluster(cluster) = &mut *conn else {
                    unreachable!("only called in Cluster mode")
                };
                let value = cluster
                    .route_command(
                        redis::cmd("CLUSTER").arg("NODES").clone(),
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
                    )
                    .await?;
                Ok(redis::from_redis_value(value)?)
            })
            .await?;
        Ok(parse_cluster_primaries(&nodes))
    }
}

/// Parses `CLUSTER NODES`: `<id> <ip:port@cport[,hostname]> <flags> <primary> ... <slots>`.
fn parse_cluster_primaries(nodes: &str) -> Vec<(String, u16)> {
    nodes
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let flags = fields.get(2)?;
            if !flags.split(',').any(|flag| flag == "master")
                || flags
                    .split(',')
                    .any(|flag| flag == "fail" || flag == "noaddr")
                || fields.len() < 9
            {
                return None;
            }
            let address = fields[1].split(['@', ',']).next()?;
            let (host, port) = address.rsplit_once(':')?;
            Some((host.to_owned(), port.parse().ok()?))
        })
        .collect()
}

/// The class of a Redis failure: a full, read-only or locked-out server is
/// not a dead one.
pub(crate) fn classify(err: &RedisError) -> ErrorClass {
    match err.code() {
        Some("OOM") => ErrorClass::OutOfMemory,
        Some("READONLY") => ErrorClass::ReadOnly,
        Some("NOAUTH" | "WRONGPASS" | "NOPERM") => ErrorClass::Auth,
        Some("LOADING" | "MASTERDOWN" | "CLUSTERDOWN" | "TRYAGAIN") => ErrorClass::Unavailable,
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

/// GET and PTTL of each key, pipelined. A key of another type answers GET
/// with WRONGTYPE, which is a corrupt entry rather than a failed call, so
/// errors are left in the replies.
fn get_pipeline<K: AsRef<str>>(full_keys: &[K]) -> redis::Pipeline {
    let mut pipe = redis::Pipeline::with_capacity(2 * full_keys.len());
    for key in full_keys {
        let key = key.as_ref();
        let mut get = command("GET", 2, key.len() + 3);
        get.arg(key);
        let mut pttl = command("PTTL", 2, key.len() + 4);
        pttl.arg(key);
        pipe.add_command(get).add_command(pttl);
    }
    pipe.ignore_errors();
    pipe
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
        let sent_at = ctx.now();
        let pipe = &get_pipeline(&[&full_key]);
        let read = inner
            .read(|mut conn| async move {
                let (value, pttl): (Value, Value) = pipe.query_async(&mut conn).await?;
                inner.read_pair(value, pttl, sent_at)
            })
            .await?;
        Ok(inner.settle(&full_key, read).await)
    }

    async fn set(&self, ctx: &CallContext<'_>, key: &str, entry: Entry) -> Result<()> {
        let inner = &*self.inner;
        let full_key = inner.key(key);
        if let Some(refused) = inner.too_large(&entry) {
            // A refused write must not leave the previous value readable.
            inner.unlink(&[&full_key]).await?;
            return Err(refused);
        }
        let Some(cmd) = inner.set_command(&full_key, &entry, ctx.now()) else {
            inner.unlink(&[&full_key]).await?;
            return Ok(());
        };
        let cmd = &cmd;
        inner
            .on_primary(|mut conn| async move { cmd.query_async::<()>(&mut conn).await })
            .await?;
        inner.stats.sets.incr();
        Ok(())
    }

    async fn delete(&self, _ctx: &CallContext<'_>, key: &str) -> Result<bool> {
        let full_key = self.inner.key(key);
        Ok(self.inner.unlink(&[&full_key]).await? > 0)
    }

    async fn delete_many(&self, _ctx: &CallContext<'_>, keys: &[&str]) -> Result<u64> {
        if keys.is_empty() {
            return Ok(0);
        }
        let inner = &*self.inner;
        let full_keys: Vec<String> = keys.iter().map(|key| inner.key(key)).collect();
        if inner.standalone {
            let full_keys: Vec<&str> = full_keys.iter().map(String::as_str).collect();
            return inner.unlink(&full_keys).await;
        }
        // A multi-key UNLINK must stay in one slot: one per key.
        let mut removed = 0;
        for full_key in &full_keys {
            removed += inner.unlink(&[full_key]).await?;
        }
        Ok(removed)
    }

    async fn invalidate(&self, ctx: &CallContext<'_>, pattern: &Pattern) -> Result<u64> {
        let inner = &*self.inner;
        if let Some(key) = pattern.literal() {
            return Ok(u64::from(self.delete(ctx, key).await?));
        }
        let glob = format!("{}{}", inner.match_prefix, pattern.as_str());
        if inner.standalone {
            return inner.scan_and_unlink(&glob, None).await;
        }
        let mut removed = 0;
        for (host, port) in inner.cluster_primaries().await? {
            removed += inner.scan_and_unlink(&glob, Some((&host, port))).await?;
        }
        Ok(removed)
    }

    async fn get_many(&self, ctx: &CallContext<'_>, keys: &[&str]) -> Result<Lookups> {
        let inner = &*self.inner;
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let full_keys: Vec<String> = keys.iter().map(|key| inner.key(key)).collect();
        let sent_at = ctx.now();
        let reads: Result<Vec<RedisResult<Read>>> = if inner.standalone {
            // One pipeline, one round trip.
            let pipe = &get_pipeline(&full_keys);
            inner
                .read(|mut conn| async move {
                    let values: Vec<Value> = pipe.query_async(&mut conn).await?;
                    let mut values = values.into_iter();
                    let mut reads = Vec::with_capacity(values.len() / 2);
                    while let (Some(value), Some(pttl)) = (values.next(), values.next()) {
                        reads.push(inner.read_pair(value, pttl, sent_at));
                    }
                    Ok(reads)
                })
                .await
        } else {
            // A pipeline must stay in one slot: one per key, all in flight at
            // once over the multiplexed cluster connection.
            let full_keys = &full_keys;
            inner
                .read(|conn| async move {
                    let requests = full_keys.iter().map(|key| {
                        let mut conn = conn.clone();
                        async move {
                            let pipe = get_pipeline(std::slice::from_ref(key));
                            let (value, pttl): (Value, Value) = pipe.query_async(&mut conn).await?;
                            inner.read_pair(value, pttl, sent_at)
                        }
                    });
                    Ok(futures::future::join_all(requests).await)
                })
                .await
        };
        let reads = reads?;
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
        let full_keys: Vec<String> = entries.iter().map(|(key, _)| inner.key(key)).collect();
        // Per entry: the command to send, and the result to report once it is sent.
        let mut commands = Vec::with_capacity(entries.len());
        let mut outcomes: Vec<Result<()>> = Vec::with_capacity(entries.len());
        for ((_, entry), full_key) in entries.iter().zip(&full_keys) {
            let (cmd, outcome) = match inner.too_large(entry) {
                Some(refused) => (unlink_cmd(full_key), Err(refused)),
                None => match inner.set_command(full_key, entry, now) {
                    Some(cmd) => (cmd, Ok(())),
                    None => (unlink_cmd(full_key), Ok(())),
                },
            };
            commands.push(cmd);
            outcomes.push(outcome);
        }
        let replies: Result<Vec<Value>> = if inner.standalone {
            let mut pipe = redis::Pipeline::with_capacity(commands.len());
            for cmd in &commands {
                pipe.add_command(cmd.clone());
            }
            pipe.ignore_errors();
            let pipe = &pipe;
            inner
                .on_primary(|mut conn| async move { pipe.query_async(&mut conn).await })
                .await
        } else {
            let commands = &commands;
            inner
                .on_primary(|conn| async move {
                    let requests = commands.iter().map(|cmd| {
                        let mut conn = conn.clone();
                        async move {
                            match cmd.query_async::<Value>(&mut conn).await {
                                Ok(value) => value,
                                Err(err) => Value::SimpleString(format!("ERR {err}")),
                            }
                        }
                    });
                    Ok(futures::future::join_all(requests).await)
                })
                .await
        };
        let replies = replies?;
        if replies.len() != entries.len() {
            inner.stats.errors.incr();
            return Err(Error::backend(inner.name.clone(), "short pipeline reply"));
        }
        Ok(outcomes
            .into_iter()
            .zip(&commands)
            .zip(replies)
            .map(|((outcome, cmd), reply)| {
                let is_set = cmd.args_iter().next() == Some(redis::Arg::Simple(b"SET"));
                match reply {
                    Value::ServerError(err) => {
                        inner.stats.errors.incr();
                        Err(inner.backend(&inner.primary, err.into()))
                    }
                    Value::SimpleString(text) if text.starts_with("ERR ") => {
                        inner.stats.errors.incr();
                        Err(Error::classified(
                            inner.name.clone(),
                            ErrorClass::Unavailable,
                            text,
                        ))
                    }
                    Value::Int(removed) => {
                        inner.stats.removals.add(removed.max(0) as u64);
                        outcome
                    }
                    _ => {
                        if is_set && outcome.is_ok() {
                            inner.stats.sets.incr();
                        }
                        outcome
                    }
                }
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
        snapshot
    }
}

fn unlink_cmd(full_key: &str) -> redis::Cmd {
    let mut cmd = redis::cmd("UNLINK");
    cmd.arg(full_key);
    cmd
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
        let primaries = parse_cluster_primaries(nodes);
        assert_eq!(
            primaries,
            vec![
                ("127.0.0.1".to_owned(), 30002),
                ("127.0.0.1".to_owned(), 30003),
                ("127.0.0.1".to_owned(), 30001),
            ]
        );
    }
}
