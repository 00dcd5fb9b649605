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
//!
//! The per-request path writes no memory that another core writes too: on
//! 2 cores shared with the server, every cache line bouncing between cores
//! (a shared counter, a lock, an `Arc` count, the connection's sender count)
//! cost throughput (see docs/redis.md). So a request picks its slot with a
//! per-thread counter, reads the slot's lease id without a lock, and borrows
//! a clone of the connection from a per-thread list of spares instead of
//! cloning and dropping one; the clone goes back to the list of the thread
//! the request ends on. Only an empty list (the first requests, or more
//! requests in flight on a thread than ever before) takes the lock.

use std::cell::Cell;
use std::fmt;
use std::future::Future;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use cache_core::{Counter, ErrorClass, ErrorCounter, LatencyRecorder, NodeStats, PoolStats};
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
    /// Connections opened, for the pool's stats.
    connects: Arc<AtomicU64>,
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
        self.connects.fetch_add(1, Ordering::Relaxed);
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
}

/// Lists of spare clones per slot: threads map onto them by number, so
/// that up to this many threads each lock a list no other thread touches.
const SPARE_LISTS: usize = 16;

/// The most spare clones one list keeps: enough for every request a thread
/// has in flight at once in the benchmark's 64 tasks; beyond it a request
/// clones (and drops) its own.
const MAX_SPARES: usize = 64;

/// Spare clones of a slot's connection, each tagged with its lease id.
/// Aligned so that two lists never share a cache line.
#[repr(align(64))]
#[derive(Default)]
struct Spares(Mutex<Vec<(u64, Conn)>>);

impl Spares {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(u64, Conn)>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

struct Slot {
    lease: RwLock<Option<Arc<Lease>>>,
    /// The id of the lease in `lease` (0: none), read by every request
    /// without taking the lock; changed with the lock held.
    lease_id: AtomicU64,
    /// Milliseconds since the node's epoch at the last use of the lease.
    last_used: AtomicU64,
    spares: Box<[Spares]>,
    /// Only one task per slot opens a connection; the others wait for it.
    filling: tokio::sync::Mutex<()>,
}

impl Default for Slot {
    fn default() -> Self {
        Slot {
            lease: RwLock::default(),
            lease_id: AtomicU64::new(0),
            last_used: AtomicU64::new(0),
            spares: (0..SPARE_LISTS).map(|_| Spares::default()).collect(),
            filling: tokio::sync::Mutex::default(),
        }
    }
}

impl Slot {
    /// This thread's list of spares.
    fn spares(&self) -> &Spares {
        &self.spares[thread_number() % SPARE_LISTS]
    }
}

/// A small number per thread, handed out the first time a thread asks.
fn thread_number() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static NUMBER: usize = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    NUMBER.with(|n| *n)
}

/// Which slot this thread's next request goes to: round-robin per thread,
/// so no counter is shared between cores. (Pinning each thread to one slot
/// measured worse: SET at 64 tasks fell to 0.75 of raw.)
fn next_slot(slots: usize) -> usize {
    thread_local! {
        static NEXT: Cell<usize> = const { Cell::new(0) };
    }
    NEXT.with(|next| {
        let n = next.get();
        next.set(n.wrapping_add(1));
        n % slots
    })
}

/// The time on the monotonic clock, read cheaply: every request reads it
/// (for the idle timeout), and `Instant::now` cost a measurable share of a
/// request. Linux's `CLOCK_MONOTONIC_COARSE` lags by a tick (a few ms),
/// which the minute-scale idle timeout and the second-scale
/// `node_retry_after` do not notice.
#[cfg(target_os = "linux")]
fn coarse_now() -> Duration {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::MonotonicCoarse);
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

#[cfg(not(target_os = "linux"))]
fn coarse_now() -> Duration {
    use std::sync::LazyLock;
    use std::time::Instant;
    static ORIGIN: LazyLock<Instant> = LazyLock::new(Instant::now);
    ORIGIN.elapsed()
}

/// Which lease a request used, to report its outcome.
#[derive(Clone, Copy)]
pub(crate) struct Ticket {
    slot: usize,
    id: u64,
}

/// A connection lent to one request. It goes back to the spares of the
/// slot (on the thread where it is dropped) when it is dropped, unless its
/// lease has ended meanwhile.
pub(crate) struct Lent<'a> {
    node: &'a Node,
    ticket: Ticket,
    conn: Option<Conn>,
}

impl Lent<'_> {
    pub(crate) fn ticket(&self) -> Ticket {
        self.ticket
    }
}

impl Deref for Lent<'_> {
    type Target = Conn;

    fn deref(&self) -> &Conn {
        self.conn.as_ref().expect("taken only on drop")
    }
}

impl DerefMut for Lent<'_> {
    fn deref_mut(&mut self) -> &mut Conn {
        self.conn.as_mut().expect("taken only on drop")
    }
}

impl Drop for Lent<'_> {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else { return };
        let slot = &self.node.slots[self.ticket.slot];
        let mut spares = slot.spares().lock();
        // Checked with the list locked: `release` changes the id before it
        // empties the lists, so no clone of an ended lease stays behind.
        if spares.len() < MAX_SPARES && slot.lease_id.load(Ordering::Acquire) == self.ticket.id {
            spares.push((self.ticket.id, conn));
        }
    }
}

impl ConnectionLike for Lent<'_> {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        (**self).req_packed_command(cmd)
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        (**self).req_packed_commands(pipeline, offset, count)
    }

    fn get_db(&self) -> i64 {
        (**self).get_db()
    }
}

/// One Redis endpoint (a server, or a whole Cluster): its pool and leased slots.
pub(crate) struct Node {
    label: String,
    pool: mobc::Pool<Manager>,
    slots: Box<[Slot]>,
    next_id: AtomicU64,
    idle_timeout_ms: Option<u64>,
    /// `coarse_now()` when the node was made.
    epoch: Duration,
    /// Reads skip this node (when another is available) until this many
    /// milliseconds after `epoch`; set after a failure.
    down_until_ms: AtomicU64,
    /// What the node's calls came to, for [`NodeStats`].
    calls: Counter,
    errors: ErrorCounter,
    latency: LatencyRecorder,
    /// The pool's counters, for [`PoolStats`].
    connects: Arc<AtomicU64>,
    broken: AtomicU64,
    waits: AtomicU64,
    wait_nanos: AtomicU64,
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
        let connects = Arc::new(AtomicU64::new(0));
        let pool = mobc::Pool::builder()
            .max_open(settings.max_open as u64)
            .max_idle(settings.max_open.max(settings.min_idle).max(1) as u64)
            .max_idle_lifetime(settings.idle_timeout)
            .get_timeout(Some(settings.connect_timeout))
            .test_on_check_out(true)
            .build(Manager {
                target,
                connects: connects.clone(),
            });
        Node {
            label,
            pool,
            slots: (0..settings.max_open).map(|_| Slot::default()).collect(),
            next_id: AtomicU64::new(1),
            idle_timeout_ms: settings
                .idle_timeout
                .map(|d| d.as_millis().min(u64::MAX as u128) as u64),
            epoch: coarse_now(),
            down_until_ms: AtomicU64::new(0),
            calls: Counter::new(),
            errors: ErrorCounter::default(),
            latency: LatencyRecorder::new(),
            connects,
            broken: AtomicU64::new(0),
            waits: AtomicU64::new(0),
            wait_nanos: AtomicU64::new(0),
        }
    }

    /// Counts one call to the node that took `elapsed` and failed with an
    /// error of class `failed`, if it failed.
    pub(crate) fn observe(&self, elapsed: Duration, failed: Option<ErrorClass>) {
        self.calls.incr();
        self.latency.record(elapsed);
        if let Some(class) = failed {
            self.errors.record(class);
        }
    }

    /// The node's calls, errors and latency; `role` says what it is to the layer.
    pub(crate) fn stats(&self, role: &'static str) -> NodeStats {
        let mut stats = NodeStats::default();
        stats.name = self.label.clone();
        stats.role = role;
        stats.calls = self.calls.get();
        stats.errors = self.errors.counts();
        stats.latency = self.latency.summary();
        stats.down = self.is_down();
        stats
    }

    /// The node's connections: `open` counts the leased slots (each a
    /// multiplexed connection shared by many requests).
    pub(crate) fn pool_stats(&self) -> PoolStats {
        let mut stats = PoolStats::default();
        stats.max_open = self.slots.len() as u64;
        stats.open = (self.slots.iter())
            .filter(|slot| slot.lease_id.load(Ordering::Relaxed) != 0)
            .count() as u64;
        stats.connects = self.connects.load(Ordering::Relaxed);
        stats.broken = self.broken.load(Ordering::Relaxed);
        stats.waits = self.waits.load(Ordering::Relaxed);
        stats.wait_time = Duration::from_nanos(self.wait_nanos.load(Ordering::Relaxed));
        stats
    }

    /// The node's address, for errors and logs.
    pub(crate) fn label(&self) -> &str {
        &self.label
    }

    fn now_ms(&self) -> u64 {
        coarse_now().saturating_sub(self.epoch).as_millis() as u64
    }

    /// Opens `count` connections, leases them into the first slots and sends
    /// each a `PING`, so that a bad URL, a missing or wrong password or an
    /// unreachable server shows up in `build()` rather than on the first
    /// request. The `PING` is what catches a missing password: a server
    /// started with `requirepass` accepts the connection of a client that
    /// sends no `AUTH` and refuses only its first command (`NOAUTH`). (The
    /// pool's own check on check-out skips connections it has just opened.)
    pub(crate) async fn warm_up(&self, count: usize) -> Result<(), mobc::Error<RedisError>> {
        for index in 0..count.min(self.slots.len()) {
            let lease = self.lease(index).await?;
            let mut conn = lease.pooled.conn.clone();
            if let Err(err) = redis::cmd("PING").query_async::<()>(&mut conn).await {
                // Not kept for a later request: the pool drops it.
                self.release(index, lease.id, true);
                return Err(mobc::Error::Inner(err));
            }
        }
        Ok(())
    }

    /// A connection for one request (round-robin over the slots).
    pub(crate) async fn get(&self) -> Result<Lent<'_>, mobc::Error<RedisError>> {
        let index = next_slot(self.slots.len());
        let slot = &self.slots[index];
        let mut id = slot.lease_id.load(Ordering::Acquire);
        // One clock read per request: on this path it is not free.
        let now = self.now_ms();
        let last_used = slot.last_used.load(Ordering::Relaxed);
        if id != 0
            && self
                .idle_timeout_ms
                .is_some_and(|limit| now.saturating_sub(last_used) > limit)
        {
            self.release(index, id, false);
            id = 0;
        }
        // Written once a millisecond at most, so the line seldom moves.
        if last_used != now {
            slot.last_used.store(now, Ordering::Relaxed);
        }
        if id != 0 {
            let mut spares = slot.spares().lock();
            // Clones of an ended lease are dropped on the way.
            while let Some((spare_id, conn)) = spares.pop() {
                if spare_id == id {
                    return Ok(self.lend(index, id, conn));
                }
            }
        }
        let lease = slot.lease.read().unwrap_or_else(|p| p.into_inner()).clone();
        let lease = match lease {
            Some(lease) => lease,
            // Boxed: opening a connection (mobc's checkout, the slot's
            // async mutex) is rare, and inline its state would make every
            // request's future kilobytes larger.
            None => {
                let started = Instant::now();
                let lease = Box::pin(self.lease(index)).await;
                let waited = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
                self.waits.fetch_add(1, Ordering::Relaxed);
                self.wait_nanos.fetch_add(waited, Ordering::Relaxed);
                lease?
            }
        };
        Ok(self.lend(index, lease.id, lease.pooled.conn.clone()))
    }

    fn lend(&self, slot: usize, id: u64, conn: Conn) -> Lent<'_> {
        Lent {
            node: self,
            ticket: Ticket { slot, id },
            conn: Some(conn),
        }
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
        });
        let mut guard = slot.lease.write().unwrap_or_else(|p| p.into_inner());
        slot.last_used.store(self.now_ms(), Ordering::Relaxed);
        slot.lease_id.store(lease.id, Ordering::Release);
        *guard = Some(lease.clone());
        Ok(lease)
    }

    /// Ends the lease `id` of `slot`, if it is still the current one. A
    /// broken connection is dropped by the pool; a healthy one is reused.
    fn release(&self, index: usize, id: u64, broken: bool) {
        let slot = &self.slots[index];
        let mut guard = slot.lease.write().unwrap_or_else(|p| p.into_inner());
        if guard.as_ref().is_none_or(|lease| lease.id != id) {
            return;
        }
        slot.lease_id.store(0, Ordering::Release);
        if let Some(lease) = guard.take()
            && broken
        {
            lease.pooled.broken.store(true, Ordering::Relaxed);
            self.broken.fetch_add(1, Ordering::Relaxed);
        }
        drop(guard);
        // The spare clones would keep the connection's socket open after
        // the pool closes it.
        for spares in &slot.spares {
            spares.lock().retain(|(spare_id, _)| *spare_id != id);
        }
    }

    /// Reports the outcome of a request made under `ticket`; returns whether
    /// the connection was broken (and so dropped).
    pub(crate) fn report(&self, ticket: Ticket, error: Option<&RedisError>) -> bool {
        let broken = error.is_some_and(|error| {
            error.is_io_error()
                || error.is_connection_dropped()
                || error.is_connection_refusal()
                || error.is_unrecoverable_error()
        });
        if broken {
            self.release(ticket.slot, ticket.id, true);
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
