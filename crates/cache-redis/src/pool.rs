//! Connections: a `mobc` pool per node, and a few leased multiplexed
//! connections shared by every request.
//!
//! A redis `MultiplexedConnection` pipelines the requests of all the tasks
//! that share it; checking one out exclusively per request would throw that
//! away (and mobc spawns a task per check-in). So each [`Node`] leases up to
//! `pool_max_open` connections from its pool into slots and hands requests
//! out to the slots round-robin. The pool still does what pools are for:
//! opening connections under a timeout, health-checking them with `PING`
//! before a lease, capping their number, keeping `min_idle` open, closing
//! idle ones.
//!
//! A lease ends when its connection fails (the connection is marked broken
//! so the pool drops it instead of reusing it) or when it has not been used
//! for `idle_timeout` (it goes back to the pool, which checks it with `PING`
//! before it is leased again).

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisError, RedisFuture, Value};

/// What a node's pool connects to.
#[derive(Clone)]
pub(crate) enum Target {
    /// One server.
    Single(redis::Client, redis::AsyncConnectionConfig),
    /// A Redis Cluster, reached through any of its nodes.
    Cluster(redis::cluster::ClusterClient),
}

/// A cheap handle to a connection: clones share the same socket(s).
#[derive(Clone)]
pub(crate) enum Conn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(conn) => conn.req_packed_command(cmd),
            Conn::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(conn) => conn.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(conn) => conn.get_db(),
            Conn::Cluster(conn) => conn.get_db(),
        }
    }
}

/// A pooled connection and whether a request saw it fail.
pub(crate) struct Pooled {
    conn: Conn,
    broken: AtomicBool,
}

/// The `mobc::Manager` over redis 1.x (`mobc-redis` pins redis 0.28).
pub(crate) struct Manager {
    target: Target,
}

#[async_trait::async_trait]
impl mobc::Manager for Manager {
    type Connection = Pooled;
    type Error = RedisError;

    fn spawn_task<T>(&self, task: T)
    where
        T: Future + Send + 'static,
        T::Output: Send + 'static,
    {
        // mobc returns connections to the pool from a spawned task. Outside a
        // runtime (a layer dropped after its runtime) there is no pool left
        // to return to: dropping the task drops the connection.
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(task);
        }
    }

    async fn connect(&self) -> Result<Pooled, RedisError> {
        let conn = match &self.target {
            Target::Single(client, config) => Conn::Single(
                client
                    .get_multiplexed_async_connection_with_config(config)
                    .await?,
            ),
            Target::Cluster(client) => Conn::Cluster(client.get_async_connection().await?),
        };
        Ok(Pooled {
            conn,
            broken: AtomicBool::new(false),
        })
    }

    async fn check(&self, mut pooled: Pooled) -> Result<Pooled, RedisError> {
        redis::cmd("PING")
            .query_async::<()>(&mut pooled.conn)
            .await?;
        Ok(pooled)
    }

    fn validate(&self, pooled: &mut Pooled) -> bool {
        !pooled.broken.load(Ordering::Relaxed)
    }
}

/// Pool settings, validated by the builder.
#[derive(Debug, Clone)]
pub(crate) struct PoolSettings {
    pub(crate) max_open: usize,
    pub(crate) min_idle: usize,
    pub(crate) connect_timeout: Duration,
    pub(crate) idle_timeout: Option<Duration>,
}

struct Lease {
    id: u64,
    pooled: mobc::Connection<Manager>,
    /// Milliseconds since the node's epoch at the last use.
    last_used: AtomicU64,
}

#[derive(Default)]
struct Slot {
    lease: RwLock<Option<Arc<Lease>>>,
    /// Only one task per slot opens a connection; the others wait for it.
    filling: tokio::sync::Mutex<()>,
}

/// A connection handed to one request, with what is needed to report it broken.
pub(crate) struct Handle {
    pub(crate) conn: Conn,
    slot: usize,
    id: u64,
}

/// One Redis endpoint (a server, or a whole Cluster): its pool and leased slots.
pub(crate) struct Node {
    label: String,
    pool: mobc::Pool<Manager>,
    slots: Box<[Slot]>,
    next_slot: AtomicUsize,
    next_id: AtomicU64,
    idle_timeout_ms: Option<u64>,
    epoch: Instant,
    /// Reads skip this node (when another is available) until this many
    /// milliseconds after `epoch`; set after a failure.
    down_until_ms: AtomicU64,
}

impl fmt::Debug for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Node")
            .field("label", &self.label)
            .field("slots", &self.slots.len())
            .finish_non_exhaustive()
    }
}

impl Node {
    pub(crate) fn new(label: String, target: Target, settings: &PoolSettings) -> Self {
        let pool = mobc::Pool::builder()
            .max_open(settings.max_open as u64)
            .max_idle(settings.max_open.max(settings.min_idle).max(1) as u64)
            .max_idle_lifetime(settings.idle_timeout)
            .get_timeout(Some(settings.connect_timeout))
            .test_on_check_out(true)
            .build(Manager { target });
        Node {
            label,
            pool,
            slots: (0..settings.max_open).map(|_| Slot::default()).collect(),
            next_slot: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
            idle_timeout_ms: settings
                .idle_timeout
                .map(|d| d.as_millis().min(u64::MAX as u128) as u64),
            epoch: Instant::now(),
            down_until_ms: AtomicU64::new(0),
        }
    }

    /// The node's address, for errors and logs.
    pub(crate) fn label(&self) -> &str {
        &self.label
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Opens `count` connections and leases them into the first slots, so
    /// that a bad URL, a wrong password or an unreachable server shows up in
    /// `build()` rather than on the first request.
    pub(crate) async fn warm_up(&self, count: usize) -> Result<(), mobc::Error<RedisError>> {
        for index in 0..count.min(self.slots.len()) {
            self.lease(index).await?;
        }
        Ok(())
    }

    /// A connection for one request (round-robin over the slots).
    pub(crate) async fn get(&self) -> Result<Handle, mobc::Error<RedisError>> {
        let index = self.next_slot.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        let lease = {
            let guard = self.slots[index]
                .lease
                .read()
                .unwrap_or_else(|p| p.into_inner());
            guard.clone()
        };
        let lease = match lease {
            Some(lease) if !self.idle_expired(&lease) => lease,
            Some(stale) => {
                self.release(index, stale.id, false);
                self.lease(index).await?
            }
            None => self.lease(index).await?,
        };
        let now = self.now_ms();
        if lease.last_used.load(Ordering::Relaxed) != now {
            lease.last_used.store(now, Ordering::Relaxed);
        }
        Ok(Handle {
            conn: lease.pooled.conn.clone(),
            slot: index,
            id: lease.id,
        })
    }

    fn idle_expired(&self, lease: &Lease) -> bool {
        self.idle_timeout_ms.is_some_and(|limit| {
            self.now_ms()
                .saturating_sub(lease.last_used.load(Ordering::Relaxed))
                > limit
        })
    }

    async fn lease(&self, index: usize) -> Result<Arc<Lease>, mobc::Error<RedisError>> {
        let slot = &self.slots[index];
        let _filling = slot.filling.lock().await;
        if let Some(lease) = slot.lease.read().unwrap_or_else(|p| p.into_inner()).clone() {
            // Another task filled the slot while this one waited.
            return Ok(lease);
        }
        let pooled = self.pool.get().await?;
        let lease = Arc::new(Lease {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            pooled,
            last_used: AtomicU64::new(self.now_ms()),
        });
        *slot.lease.write().unwrap_or_else(|p| p.into_inner()) = Some(lease.clone());
        Ok(lease)
    }

    /// Ends the lease `id` of `slot`, if it is still the current one. A
    /// broken connection is dropped by the pool; a healthy one is reused.
    fn release(&self, slot: usize, id: u64, broken: bool) {
        let mut guard = self.slots[slot]
            .lease
            .write()
            .unwrap_or_else(|p| p.into_inner());
        if guard.as_ref().is_some_and(|lease| lease.id == id)
            && let Some(lease) = guard.take()
            && broken
        {
            lease.pooled.broken.store(true, Ordering::Relaxed);
        }
    }

    /// Reports the outcome of a request made on `handle`; returns whether
    /// the connection was broken (and so dropped).
    pub(crate) fn report(&self, handle: &Handle, error: Option<&RedisError>) -> bool {
        let broken = error.is_some_and(|error| {
            error.is_io_error()
                || error.is_connection_dropped()
                || error.is_connection_refusal()
                || error.is_unrecoverable_error()
        });
        if broken {
            self.release(handle.slot, handle.id, true);
        }
        broken
    }

    /// Marks the node as failing: reads prefer other nodes for `for_`.
    pub(crate) fn mark_down(&self, for_: Duration) {
        let until = self.now_ms() + for_.as_millis() as u64;
        self.down_until_ms.store(until, Ordering::Relaxed);
    }

    /// Marks the node as healthy again.
    pub(crate) fn mark_up(&self) {
        if self.down_until_ms.load(Ordering::Relaxed) != 0 {
            self.down_until_ms.store(0, Ordering::Relaxed);
        }
    }

    /// Whether the node failed recently.
    pub(crate) fn is_down(&self) -> bool {
        self.now_ms() < self.down_until_ms.load(Ordering::Relaxed)
    }
}
