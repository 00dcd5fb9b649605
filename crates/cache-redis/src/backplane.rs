//! `RedisBackplane`: a [`Backplane`] on Redis pub/sub, on one server or
//! over a Redis Cluster.
//!
//! Publishing goes over one multiplexed connection, shared by every clone
//! and reopened when it fails. Each subscription has a connection of its own
//! driven from [`Subscription::next`]: there is no task of ours. The redis
//! crate's reader task belongs to the subscription's connection and is
//! aborted when the connection is dropped.
//!
//! Over a Cluster (see `cluster.rs` for the topology), a subscription that
//! loses its node subscribes again through another one, and messages go
//! either through every node (`PUBLISH`/`SUBSCRIBE`) or only through the
//! shard owning the channel's slot (`SPUBLISH`/`SSUBSCRIBE`). The redis
//! crate's async `PubSub` has no `SSUBSCRIBE`, so a sharded subscription is
//! a RESP3 `MultiplexedConnection` on which we send `SSUBSCRIBE` ourselves
//! and whose pushes (`smessage`, `sunsubscribe`, the crate's own
//! `disconnection`) arrive on a channel of ours.

mod cluster;

use std::fmt;
use std::future::{Future, pending};
use std::pin::pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use cache_core::{
    Backplane, BackplaneEvent, BackplaneMessage, BackplaneStatus, Error, ErrorClass, Result,
    Subscription,
};
use futures::future::{Either, select};
use futures::{FutureExt, StreamExt};
use redis::aio::{MultiplexedConnection, PubSubSink, PubSubStream};
use redis::{AsyncConnectionConfig, Msg, PushInfo, PushKind, RedisError, RedisResult, Value};
use tokio::sync::{mpsc, watch};

use self::cluster::{ClusterNodes, NodeAddr};
use crate::builder::url_error;
use crate::layer::{classify, describe};
use crate::url::ServerUrl;

/// The first pause between two failed attempts to resubscribe.
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
/// The longest pause between two attempts (the pause doubles up to it).
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// Tries of one publish over a Cluster (the first included) when a node
/// is gone or no longer owns the channel's slot; each refreshes the
/// topology first.
const CLUSTER_PUBLISH_TRIES: u32 = 3;

/// A [`Backplane`] on Redis pub/sub: every instance publishes its
/// invalidations on one channel and subscribes to it.
///
/// Redis pub/sub delivers at most once. A subscriber that loses its
/// connection (a restart, a network failure, a subscriber so slow that Redis
/// drops it) reconnects by itself and then yields [`BackplaneEvent::Gap`]:
/// messages may have been published while it was away.
///
/// By default [`build`](RedisBackplaneBuilder::build) and
/// [`subscribe`](Backplane::subscribe) fail when the server cannot be
/// reached; a [`lazy`](RedisBackplaneBuilder::lazy) backplane starts anyway
/// and subscribes once the server is up (then yields a gap), so a service
/// can start during an outage.
///
/// Over a Redis Cluster ([`cluster_builder`](Self::cluster_builder)), a
/// subscription whose node dies subscribes again through another node of
/// the Cluster (then yields a gap), and messages use sharded pub/sub where
/// the Cluster has it (see [`PubSubMode`]).
///
/// Cloning is cheap and shares the publishing connection. Subscriptions end
/// ([`Subscription::next`] returns `None`) once every clone is dropped.
///
/// ```no_run
/// # async fn demo() -> cache_core::Result<()> {
/// use std::time::Duration;
/// use cache_core::{Backplane, BackplaneEvent, BackplaneMessage, Invalidation};
/// use cache_redis::RedisBackplane;
///
/// let backplane = RedisBackplane::builder("redis://:secret@127.0.0.1:6379")
///     .channel("offers:invalidation")
///     .timeout(Duration::from_millis(200))
///     .build()
///     .await?;
///
/// // Subscribe first: a subscription receives what is published after
/// // `subscribe()` returns, this instance's own messages included.
/// let mut subscription = backplane.subscribe().await?;
/// let me = 7;
/// backplane
///     .publish(&BackplaneMessage { origin: me, invalidations: vec![Invalidation::Key("offer:42".into())] })
///     .await?;
///
/// while let Some(event) = subscription.next().await {
///     match event {
///         BackplaneEvent::Message(message) if message.origin == me => {} // already done locally
///         BackplaneEvent::Message(message) => println!("drop {:?}", message.invalidations),
///         BackplaneEvent::Gap => println!("messages may be lost: clear the whole L1"),
///     }
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisBackplane {
    inner: Arc<Inner>,
}

/// Which pub/sub commands a Cluster backplane sends its messages with.
///
/// Every instance on a channel must end up in the same mode: a message
/// sent with `SPUBLISH` reaches only `SSUBSCRIBE`rs, one sent with
/// `PUBLISH` only `SUBSCRIBE`rs. With the default, [`Auto`](Self::Auto),
/// they do, since they ask the same Cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum PubSubMode {
    /// [`Sharded`](Self::Sharded) if the Cluster has sharded pub/sub
    /// (Redis 7 or later), [`Global`](Self::Global) otherwise, decided once,
    /// at the first contact with the Cluster (`PUBSUB SHARDNUMSUB` either
    /// answers or is an unknown command). The default.
    ///
    /// [`RedisBackplane::mode`] returns `Auto` only while a
    /// [`lazy`](RedisBackplaneBuilder::lazy) backplane has never reached
    /// the Cluster.
    #[default]
    Auto,
    /// `SPUBLISH`/`SSUBSCRIBE`: a message goes to the shard that owns the
    /// channel's hash slot (its primary, which relays it to its replicas)
    /// and nowhere else, so the pub/sub load does not grow with the number
    /// of shards. Subscriptions subscribe on that shard's primary.
    Sharded,
    /// `PUBLISH`/`SUBSCRIBE`: a message published on any node is copied to
    /// every node of the Cluster over the cluster bus, and a subscription
    /// may listen on any node. What a standalone server always uses.
    Global,
}

impl PubSubMode {
    fn publish_command(self) -> &'static str {
        match self {
            PubSubMode::Sharded => "SPUBLISH",
            _ => "PUBLISH",
        }
    }
}

struct Inner {
    shared: Arc<Shared>,
    /// The publishing connection.
    publisher: Mutex<Option<Publisher>>,
    /// Only one task opens the publishing connection; the others wait for it.
    connecting: tokio::sync::Mutex<()>,
    next_id: AtomicU64,
    /// The Cluster node a publish last failed on: a global publish tries
    /// it last (a hung node would otherwise cost every publish its
    /// timeout).
    failed_node: Mutex<Option<NodeAddr>>,
    /// Never sent on: subscriptions watch it to learn that the last clone
    /// of the backplane was dropped (the sender goes with `Inner`).
    alive: watch::Sender<()>,
}

/// The publishing connection, with an id (to replace only the connection
/// that failed, not one another task has opened since) and its node (over
/// a Cluster).
#[derive(Clone)]
struct Publisher {
    id: u64,
    node: Option<NodeAddr>,
    conn: MultiplexedConnection,
}

/// What the backplane and its subscriptions share; subscriptions do not
/// hold the [`Inner`], so that dropping the last clone ends them.
struct Shared {
    name: Arc<str>,
    /// The URL (the first seed of a Cluster) without its password.
    label: String,
    servers: Servers,
    /// For publishing connections: every call is bounded as a whole,
    /// connecting included, by `timeout`; a timer of the client's own
    /// would race ours and turn a timeout into a backend error.
    config: AsyncConnectionConfig,
    channel: String,
    timeout: Duration,
    health_check_interval: Option<Duration>,
    /// Whether an unreachable server is waited for rather than an error
    /// (see [`RedisBackplaneBuilder::lazy`]).
    lazy: bool,
    /// The mode in use; `Auto` until decided. Subscriptions watch it, so
    /// that a change makes them subscribe again the new way.
    mode: watch::Sender<PubSubMode>,
    /// The subscriptions' connection state, for [`Backplane::status`].
    link: Link,
}

enum Servers {
    Standalone(redis::Client),
    Cluster(ClusterNodes),
}

/// How the subscriptions of a backplane are connected.
#[derive(Debug, Default)]
struct Link {
    /// Subscriptions subscribed now.
    live: AtomicUsize,
    /// Subscriptions made again after a lost (or never made) connection.
    reconnects: AtomicU64,
}

impl fmt::Debug for RedisBackplane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shared = &*self.inner.shared;
        let mut debug = f.debug_struct("RedisBackplane");
        debug
            .field("name", &shared.name)
            .field("server", &shared.label)
            .field("channel", &shared.channel)
            .field("mode", &*shared.mode.borrow())
            .field("timeout", &shared.timeout)
            .field("health_check_interval", &shared.health_check_interval)
            .field("lazy", &shared.lazy);
        if let Servers::Cluster(nodes) = &shared.servers {
            debug.field("cluster", nodes);
        }
        debug.finish_non_exhaustive()
    }
}

impl RedisBackplane {
    /// A builder for a backplane on the server at `url`.
    ///
    /// The URL is the same as [`RedisLayer::builder`](crate::RedisLayer::builder)'s:
    /// `redis://[user][:password@]host[:port][/db]`, or `rediss://...` for
    /// TLS with the `tls` feature. Pub/sub ignores the database number:
    /// a channel is seen by every client of the server.
    pub fn builder(url: impl Into<String>) -> RedisBackplaneBuilder {
        RedisBackplaneBuilder::new(Topology::Standalone(ServerUrl::new(url)))
    }

    /// A builder for a backplane over a Redis Cluster, given some of its
    /// nodes, as for [`RedisLayer::cluster_builder`](crate::RedisLayer::cluster_builder):
    /// one reachable node is enough, the others are discovered with
    /// `CLUSTER SLOTS`. Every node is reached with the first URL's user,
    /// password and TLS setting.
    ///
    /// A subscription whose node dies subscribes again through another node
    /// of the Cluster (or, in [sharded](PubSubMode::Sharded) mode, through
    /// the shard's new primary once the Cluster has promoted one), trying
    /// the nodes in turn with a pause from 50 ms doubling to 1 s between
    /// rounds, and yields [`BackplaneEvent::Gap`] once subscribed again.
    ///
    /// ```no_run
    /// # async fn demo() -> cache_core::Result<()> {
    /// use cache_redis::{PubSubMode, RedisBackplane};
    ///
    /// let backplane = RedisBackplane::cluster_builder([
    ///     "redis://:secret@10.0.1.1:6379",
    ///     "redis://:secret@10.0.1.2:6379",
    /// ])
    /// .channel("offers-v1:invalidation")
    /// .pubsub_mode(PubSubMode::Auto) // sharded on Redis 7+, global before
    /// .build()
    /// .await?;
    /// println!("messages go {:?}", backplane.mode());
    /// # Ok(()) }
    /// ```
    pub fn cluster_builder<I, S>(nodes: I) -> RedisBackplaneBuilder
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let nodes = nodes.into_iter().map(ServerUrl::new).collect();
        RedisBackplaneBuilder::new(Topology::Cluster(nodes))
    }

    /// The channel messages are published on.
    pub fn channel(&self) -> &str {
        &self.inner.shared.channel
    }

    /// The pub/sub mode in use: [`PubSubMode::Global`] on a standalone
    /// server; over a Cluster, the configured one, or with
    /// [`PubSubMode::Auto`] the one decided at the first contact (`Auto`
    /// while a lazy backplane has not reached the Cluster yet).
    pub fn mode(&self) -> PubSubMode {
        *self.inner.shared.mode.borrow()
    }
}

/// The servers, as given. `ServerUrl` prints without passwords, so the
/// builder's derived `Debug` shows none.
#[derive(Debug, Clone)]
enum Topology {
    Standalone(ServerUrl),
    Cluster(Vec<ServerUrl>),
}

/// Builds a [`RedisBackplane`]. Start from [`RedisBackplane::builder`] (one
/// server) or [`RedisBackplane::cluster_builder`].
///
/// ```no_run
/// # async fn demo() -> cache_core::Result<()> {
/// use std::time::Duration;
/// use cache_redis::RedisBackplane;
///
/// let backplane = RedisBackplane::builder("redis://127.0.0.1:6379")
///     .channel("offers-v1:invalidation") // one channel per set of caches that share an L2
///     .timeout(Duration::from_millis(500))
///     .health_check_interval(Duration::from_secs(5))
///     .build()
///     .await?;
/// # Ok(()) }
/// ```
#[must_use = "a builder does nothing until `build()` is awaited"]
#[derive(Debug, Clone)]
pub struct RedisBackplaneBuilder {
    topology: Topology,
    name: String,
    channel: String,
    timeout: Duration,
    health_check_interval: Option<Duration>,
    lazy: bool,
    mode: PubSubMode,
}

impl RedisBackplaneBuilder {
    fn new(topology: Topology) -> Self {
        RedisBackplaneBuilder {
            topology,
            name: "redis-backplane".into(),
            channel: "cache:invalidation".into(),
            timeout: Duration::from_millis(500),
            health_check_interval: Some(Duration::from_secs(5)),
            lazy: false,
            mode: PubSubMode::Auto,
        }
    }

    /// The pub/sub channel, taken literally. Instances see each other only
    /// on the same channel of the same server: give each group of caches
    /// that share a Redis namespace its own. Default: `"cache:invalidation"`.
    ///
    /// Over a Cluster in [sharded](PubSubMode::Sharded) mode, the channel's
    /// hash slot (hash tags included, as for keys) decides which shard
    /// carries its messages.
    pub fn channel(mut self, channel: impl Into<String>) -> Self {
        self.channel = channel.into();
        self
    }

    /// The backplane's name in errors and logs. Default: `"redis-backplane"`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// How long one step may take before it fails: a `publish` (connecting
    /// included) fails with [`Error::Timeout`] after it, `subscribe` and
    /// `build` likewise, and a subscription gives up one reconnection
    /// attempt or one health check after it (over a Cluster, one node's
    /// attempt: the next node is tried then). Default: 500 ms.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// After this long without a message, a waiting subscription sends
    /// `PING` on its connection; no answer within the
    /// [`timeout`](Self::timeout) counts as a lost connection (reconnect,
    /// then [`BackplaneEvent::Gap`]). Without it, a connection whose peer
    /// vanished without closing it (a host that crashed, a firewall that
    /// dropped the flow) would wait forever while messages are missed.
    /// `None` turns the check off. Default: 5 s.
    pub fn health_check_interval(mut self, interval: impl Into<Option<Duration>>) -> Self {
        self.health_check_interval = interval.into();
        self
    }

    /// Lets the backplane start while the server is down, so that a service
    /// can start during a Redis outage. Default: `false` (`build` and
    /// `subscribe` fail when the server cannot be reached).
    ///
    /// With `true`, a server that cannot be reached (connection refused,
    /// no answer within the [`timeout`](Self::timeout), a server still
    /// loading its data) is waited for instead:
    /// - [`build`](Self::build) still connects once, and still fails on an
    ///   invalid URL and on a server that answers but refuses the
    ///   credentials; an unreachable server is only logged;
    /// - [`subscribe`](Backplane::subscribe) tries once, as usual; if the
    ///   server cannot be reached it returns a subscription that is not
    ///   subscribed yet, and [`Subscription::next`] keeps trying (a pause
    ///   from 50 ms doubling to 1 s between attempts) and yields
    ///   [`BackplaneEvent::Gap`] once subscribed: whatever was published
    ///   before that was not heard;
    /// - [`publish`](Backplane::publish) is unchanged: while the server is
    ///   down each call fails, within the timeout.
    ///
    /// A host name that does not resolve, or a wrong port, looks like a
    /// server that is down: it is logged at each failed attempt rather than
    /// refused at start-up.
    ///
    /// ```no_run
    /// # async fn demo() -> cache_core::Result<()> {
    /// use cache_core::{Backplane, BackplaneEvent};
    /// use cache_redis::RedisBackplane;
    ///
    /// // Builds whether or not Redis is up.
    /// let backplane = RedisBackplane::builder("redis://127.0.0.1:6379")
    ///     .lazy(true)
    ///     .build()
    ///     .await?;
    /// let mut subscription = backplane.subscribe().await?;
    /// // If Redis was down, the first event comes once it is up.
    /// if let Some(BackplaneEvent::Gap) = subscription.next().await {
    ///     println!("subscribed late: clear the local tiers");
    /// }
    /// # Ok(()) }
    /// ```
    pub fn lazy(mut self, lazy: bool) -> Self {
        self.lazy = lazy;
        self
    }

    /// Over a Cluster, which pub/sub commands carry the messages (see
    /// [`PubSubMode`]). Default: [`PubSubMode::Auto`], sharded where the
    /// Cluster has it. A standalone server always uses
    /// [`PubSubMode::Global`]; `build()` refuses `Sharded` for one.
    pub fn pubsub_mode(mut self, mode: PubSubMode) -> Self {
        self.mode = mode;
        self
    }

    /// Validates the configuration, connects once and returns the
    /// backplane: a standalone server gets its publishing connection
    /// (checked with `PING`); over a Cluster, a node is asked for the
    /// topology (`CLUSTER SLOTS`) and, with [`PubSubMode::Auto`], whether
    /// it has sharded pub/sub.
    ///
    /// # Errors
    /// [`Error::Config`] for an invalid setting or URL, or a
    /// [`cluster_builder`](RedisBackplane::cluster_builder) URL that is not
    /// a Cluster node; [`Error::Backend`] (refused, wrong password) or
    /// [`Error::Timeout`] when the server cannot be reached. With
    /// [`lazy`](Self::lazy), an unreachable server is not an error; a server
    /// that refuses the credentials still is.
    pub async fn build(self) -> Result<RedisBackplane> {
        self.validate()?;
        #[cfg(feature = "tls")]
        {
            // As in `RedisLayerBuilder::build`: pick ring unless the
            // application already chose a provider.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let (servers, label, mode) = match &self.topology {
            Topology::Standalone(url) => {
                let client =
                    redis::Client::open(url.expose()).map_err(|err| url_error(url, &err))?;
                (
                    Servers::Standalone(client),
                    url.redacted(),
                    PubSubMode::Global,
                )
            }
            Topology::Cluster(urls) => {
                let nodes = ClusterNodes::new(urls, &self.channel).map_err(Error::config)?;
                (
                    Servers::Cluster(nodes),
                    format!("cluster({})", urls[0]),
                    self.mode,
                )
            }
        };
        let (alive, _) = watch::channel(());
        let shared = Shared {
            name: Arc::from(self.name.as_str()),
            label,
            servers,
            config: AsyncConnectionConfig::new()
                .set_connection_timeout(None)
                .set_response_timeout(None),
            channel: self.channel,
            timeout: self.timeout,
            health_check_interval: self.health_check_interval,
            lazy: self.lazy,
            mode: watch::Sender::new(mode),
            link: Link::default(),
        };
        let inner = Inner {
            shared: Arc::new(shared),
            publisher: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
            next_id: AtomicU64::new(1),
            failed_node: Mutex::new(None),
            alive,
        };
        let shared = &*inner.shared;
        // Connect now, so that a bad URL, a wrong password or an unreachable
        // server fails here rather than on the first invalidation. The PING
        // catches a missing password, which the handshake does not; over a
        // Cluster, `CLUSTER SLOTS` does.
        let check = async {
            match &shared.servers {
                Servers::Standalone(_) => {
                    let mut publisher = inner.connection(None).await?;
                    redis::cmd("PING")
                        .query_async::<()>(&mut publisher.conn)
                        .await
                }
                Servers::Cluster(nodes) => {
                    nodes.refresh(shared.timeout).await?;
                    shared.decide_mode(nodes).await
                }
            }
        };
        let failure = match tokio::time::timeout(shared.timeout, check).await {
            Ok(Ok(())) => None,
            Ok(Err(err)) if is_not_cluster(&err) => {
                return Err(Error::config(format!(
                    "{} is not a Cluster node ({err}); use RedisBackplane::builder for one server",
                    shared.label
                )));
            }
            Ok(Err(err)) => Some(shared.backend(&err)),
            Err(_) => Some(shared.timed_out()),
        };
        if let Some(error) = failure {
            if !(shared.lazy && unreachable(&error)) {
                return Err(error);
            }
            // A connection that timed out may be half-open: start afresh.
            inner.forget(None);
            tracing::warn!(
                backplane = %shared.name,
                server = %shared.label,
                %error,
                "Redis is unreachable; starting anyway (lazy): publishing fails and \
                 subscriptions wait until it is back",
            );
        }
        Ok(RedisBackplane {
            inner: Arc::new(inner),
        })
    }

    fn validate(&self) -> Result<()> {
        let fail = |message: &str| Err(Error::config(message));
        if self.timeout.is_zero() {
            return fail("timeout must be greater than zero");
        }
        if self.health_check_interval.is_some_and(|d| d.is_zero()) {
            return fail("health_check_interval must be greater than zero, or None");
        }
        if self.channel.is_empty() {
            return fail("the backplane channel must not be empty");
        }
        match &self.topology {
            Topology::Standalone(_) if self.mode == PubSubMode::Sharded => fail(
                "PubSubMode::Sharded is for a Cluster (RedisBackplane::cluster_builder); \
                 a standalone server uses PUBLISH/SUBSCRIBE",
            ),
            Topology::Cluster(nodes) if nodes.is_empty() => {
                fail("a Cluster needs at least one node URL")
            }
            _ => Ok(()),
        }
    }
}

impl Shared {
    fn backend(&self, err: &RedisError) -> Error {
        Error::classified(self.name.clone(), classify(err), describe(err, &self.label))
    }

    fn timed_out(&self) -> Error {
        Error::timeout(self.name.clone(), self.timeout)
    }

    fn mode(&self) -> PubSubMode {
        *self.mode.borrow()
    }

    /// Switches to `mode`, saying why; subscriptions in another mode
    /// subscribe again (and report a gap).
    fn switch_mode(&self, mode: PubSubMode, why: &str) {
        let previous = self.mode.send_replace(mode);
        if previous != mode {
            tracing::info!(
                backplane = %self.name,
                server = %self.label,
                ?mode,
                ?previous,
                "pub/sub mode: {why}",
            );
        }
    }

    /// Over a Cluster in [`PubSubMode::Auto`]: asks a node whether it has
    /// sharded pub/sub, once. Nothing to do when the mode is decided.
    async fn decide_mode(&self, nodes: &ClusterNodes) -> RedisResult<()> {
        if self.mode() != PubSubMode::Auto {
            return Ok(());
        }
        let mut last = None;
        for node in nodes.nodes() {
            let ask = async {
                let mut conn = nodes
                    .client(&node, false)?
                    .get_multiplexed_async_connection_with_config(&self.config)
                    .await?;
                redis::cmd("PUBSUB")
                    .arg("SHARDNUMSUB")
                    .arg(&self.channel)
                    .query_async::<Value>(&mut conn)
                    .await
            };
            let err = match tokio::time::timeout(self.timeout, ask).await {
                Ok(Ok(_)) => {
                    self.switch_mode(PubSubMode::Sharded, "the Cluster has sharded pub/sub");
                    return Ok(());
                }
                Ok(Err(err)) if is_unknown_command(&err) => {
                    self.switch_mode(
                        PubSubMode::Global,
                        "the Cluster has no sharded pub/sub (Redis before 7): PUBLISH reaches every node",
                    );
                    return Ok(());
                }
                Ok(Err(err))
                    if classify(&err) == ErrorClass::Auth && err.code() == Some("NOPERM") =>
                {
                    self.switch_mode(
                        PubSubMode::Global,
                        "PUBSUB SHARDNUMSUB is not permitted, so sharded pub/sub cannot be \
                         detected: using PUBLISH/SUBSCRIBE (set PubSubMode::Sharded to insist)",
                    );
                    return Ok(());
                }
                Ok(Err(err)) if is_unreachable(&err) => err,
                Ok(Err(err)) => return Err(err),
                Err(_) => timeout_error(&node, self.timeout),
            };
            last = Some(err);
        }
        Err(last.unwrap_or_else(no_node))
    }
}

impl Inner {
    /// The publishing connection, opened if there is none: to the server,
    /// or over a Cluster to the first of `candidates` that accepts (the
    /// current connection is kept if it goes to one of them).
    async fn connection(&self, candidates: Option<&[NodeAddr]>) -> RedisResult<Publisher> {
        let fits = |publisher: &Publisher| match (candidates, &publisher.node) {
            (Some(candidates), Some(node)) => candidates.contains(node),
            _ => true,
        };
        if let Some(current) = self.current().filter(fits) {
            return Ok(current);
        }
        let _connecting = self.connecting.lock().await;
        if let Some(current) = self.current().filter(fits) {
            // Another task connected while this one waited.
            return Ok(current);
        }
        let shared = &*self.shared;
        let (node, conn) = match (&shared.servers, candidates) {
            (Servers::Standalone(client), _) => {
                let conn = client
                    .get_multiplexed_async_connection_with_config(&shared.config)
                    .await?;
                (None, conn)
            }
            (Servers::Cluster(nodes), candidates) => {
                let mut last = None;
                let mut opened = None;
                for node in candidates.unwrap_or_default() {
                    let connect = async {
                        nodes
                            .client(node, false)?
                            .get_multiplexed_async_connection_with_config(&shared.config)
                            .await
                    };
                    // Half the timeout each, so that a hung node leaves
                    // the next one time to answer within the publish's.
                    let connect = tokio::time::timeout(shared.timeout / 2, connect);
                    let connected = match connect.await {
                        Ok(connected) => connected,
                        Err(_) => Err(timeout_error(node, shared.timeout / 2)),
                    };
                    match connected {
                        Ok(conn) => {
                            opened = Some((Some(node.clone()), conn));
                            break;
                        }
                        Err(err) => {
                            *self.failed_node.lock().unwrap_or_else(|p| p.into_inner()) =
                                Some(node.clone());
                            last = Some(err);
                        }
                    }
                }
                opened.ok_or_else(|| last.unwrap_or_else(no_node))?
            }
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let publisher = Publisher { id, node, conn };
        *self.slot() = Some(publisher.clone());
        Ok(publisher)
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Option<Publisher>> {
        self.publisher.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn current(&self) -> Option<Publisher> {
        self.slot().clone()
    }

    /// Drops the publishing connection `id` (any, with `None`) so that the
    /// next publish opens a fresh one.
    fn forget(&self, id: Option<u64>) {
        let mut slot = self.slot();
        if id.is_none() || slot.as_ref().map(|current| current.id) == id {
            *slot = None;
        }
    }

    async fn publish_bytes(&self, bytes: &[u8]) -> Result<()> {
        match &self.shared.servers {
            Servers::Standalone(_) => self.publish_standalone(bytes).await,
            Servers::Cluster(nodes) => self.publish_cluster(nodes, bytes).await,
        }
    }

    async fn publish_standalone(&self, bytes: &[u8]) -> Result<()> {
        let shared = &*self.shared;
        // A connection that died under us (a restarted server) fails the
        // first PUBLISH on it: send once more on a fresh connection. Should
        // the first PUBLISH have arrived after all, the message is delivered
        // twice, which is harmless: dropping a key twice drops it once.
        let mut retried = false;
        loop {
            let mut publisher = self
                .connection(None)
                .await
                .map_err(|err| shared.backend(&err))?;
            let result = redis::cmd("PUBLISH")
                .arg(&shared.channel)
                .arg(bytes)
                .query_async::<i64>(&mut publisher.conn)
                .await;
            match result {
                Ok(receivers) => {
                    tracing::trace!(backplane = %shared.name, receivers, "published");
                    return Ok(());
                }
                Err(err) => {
                    let broken = is_broken(&err);
                    if broken {
                        self.forget(Some(publisher.id));
                    }
                    if broken && !retried {
                        retried = true;
                        continue;
                    }
                    return Err(shared.backend(&err));
                }
            }
        }
    }

    /// `SPUBLISH` to the primary owning the channel's slot, or `PUBLISH`
    /// through any node. A node that is gone, or no longer owns the slot
    /// (`MOVED` after a failover or a resharding), makes it refresh the
    /// topology and try again, [`CLUSTER_PUBLISH_TRIES`] times at most.
    async fn publish_cluster(&self, nodes: &ClusterNodes, bytes: &[u8]) -> Result<()> {
        let shared = &*self.shared;
        let mut tries = 0;
        loop {
            // A lazy backplane that has not reached the Cluster yet.
            shared
                .decide_mode(nodes)
                .await
                .map_err(|err| shared.backend(&err))?;
            let mode = shared.mode();
            let candidates = match mode {
                PubSubMode::Sharded => {
                    if nodes.owner().is_none() {
                        nodes
                            .refresh(shared.timeout)
                            .await
                            .map_err(|err| shared.backend(&err))?;
                    }
                    nodes.owner().into_iter().collect()
                }
                _ => {
                    let failed = self
                        .failed_node
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .clone();
                    last_resort(nodes.nodes(), failed.as_ref())
                }
            };
            tries += 1;
            let (err, publisher) = match self.connection(Some(&candidates)).await {
                Err(err) => (err, None),
                Ok(mut publisher) => {
                    let sent = redis::cmd(mode.publish_command())
                        .arg(&shared.channel)
                        .arg(bytes)
                        .query_async::<i64>(&mut publisher.conn)
                        .await;
                    match sent {
                        Ok(receivers) => {
                            tracing::trace!(backplane = %shared.name, receivers, ?mode, "published");
                            return Ok(());
                        }
                        Err(err) => (err, Some(publisher)),
                    }
                }
            };
            if mode == PubSubMode::Sharded && is_unknown_command(&err) {
                // The Cluster lost sharded pub/sub (a node of an older
                // version took over): every instance must follow.
                shared.switch_mode(
                    PubSubMode::Global,
                    "SPUBLISH is an unknown command now: falling back to PUBLISH",
                );
                continue;
            }
            let broken = is_broken(&err);
            if let Some(publisher) = &publisher
                && broken
            {
                self.forget(Some(publisher.id));
            }
            let stale = broken || err.is_cluster_error() || is_unreachable(&err);
            if !stale || tries >= CLUSTER_PUBLISH_TRIES {
                return Err(shared.backend(&err));
            }
            let failed = publisher
                .and_then(|p| p.node)
                .or_else(|| candidates.first().cloned());
            tracing::debug!(
                backplane = %shared.name,
                node = ?failed.as_ref().map(NodeAddr::to_string),
                "publish failed ({err}); refreshing the topology",
            );
            *self.failed_node.lock().unwrap_or_else(|p| p.into_inner()) = failed;
            // The previous view stays if no node answers; the next try
            // then fails the same way and says why.
            let _ = nodes.refresh(shared.timeout).await;
        }
    }
}

/// `nodes` with `avoid` moved to the end.
fn last_resort(mut nodes: Vec<NodeAddr>, avoid: Option<&NodeAddr>) -> Vec<NodeAddr> {
    if let Some(avoid) = avoid
        && let Some(at) = nodes.iter().position(|node| node == avoid)
    {
        let node = nodes.remove(at);
        nodes.push(node);
    }
    nodes
}

/// Whether `error` says the server could not be reached (down, hung, or
/// not ready), rather than that it answered and refused.
fn unreachable(error: &Error) -> bool {
    matches!(error.class(), ErrorClass::Unavailable | ErrorClass::Timeout)
}

/// Whether `err` says the node could not be reached (or is not ready).
fn is_unreachable(err: &RedisError) -> bool {
    matches!(classify(err), ErrorClass::Unavailable | ErrorClass::Timeout)
}

/// Whether the connection that returned `err` is unusable.
fn is_broken(err: &RedisError) -> bool {
    err.is_io_error()
        || err.is_connection_dropped()
        || err.is_connection_refusal()
        || err.is_unrecoverable_error()
}

/// Whether the server does not know the command (or subcommand): Redis
/// before 7 for `SSUBSCRIBE`, `SPUBLISH` and `PUBSUB SHARDNUMSUB`.
fn is_unknown_command(err: &RedisError) -> bool {
    let text = err.to_string().to_ascii_lowercase();
    text.contains("unknown command") || text.contains("unknown subcommand")
}

/// Whether a node answered that it is not in Cluster mode.
fn is_not_cluster(err: &RedisError) -> bool {
    err.to_string().contains("cluster support disabled")
}

fn timeout_error(node: &NodeAddr, timeout: Duration) -> RedisError {
    RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("{node}: no answer within {timeout:?}"),
    ))
}

fn no_node() -> RedisError {
    RedisError::from(std::io::Error::new(
        std::io::ErrorKind::NotConnected,
        "no Cluster node known",
    ))
}

#[async_trait]
impl Backplane for RedisBackplane {
    /// Publishes [`message.encode()`](BackplaneMessage::encode) on the
    /// channel (`PUBLISH`, or `SPUBLISH` in [sharded](PubSubMode::Sharded)
    /// mode), within the [`timeout`](RedisBackplaneBuilder::timeout).
    /// Succeeds whether or not anyone is subscribed.
    async fn publish(&self, message: &BackplaneMessage) -> Result<()> {
        let inner = &*self.inner;
        let bytes = message.encode();
        match tokio::time::timeout(inner.shared.timeout, inner.publish_bytes(&bytes)).await {
            Ok(result) => result,
            Err(_) => {
                // A server that does not answer may never do so on this
                // connection (a half-open TCP flow): start afresh next time.
                inner.forget(None);
                Err(inner.shared.timed_out())
            }
        }
    }

    /// Opens a connection of its own and returns once the server has
    /// confirmed the `SUBSCRIBE` (`SSUBSCRIBE` in
    /// [sharded](PubSubMode::Sharded) mode), so every message published
    /// after this returns is received. Bounded by the
    /// [`timeout`](RedisBackplaneBuilder::timeout).
    ///
    /// With [`lazy`](RedisBackplaneBuilder::lazy), a server that cannot be
    /// reached is not an error: the subscription returned subscribes from
    /// [`Subscription::next`], and yields [`BackplaneEvent::Gap`] first.
    async fn subscribe(&self) -> Result<Box<dyn Subscription>> {
        let inner = &*self.inner;
        let shared = inner.shared.clone();
        let mut subscription = RedisSubscription {
            mode: shared.mode.subscribe(),
            alive: inner.alive.subscribe(),
            shared,
            state: State::Closed,
            backoff: FIRST_BACKOFF,
            last_node: None,
        };
        let shared = inner.shared.clone();
        let attempt = match tokio::time::timeout(shared.timeout, subscription.connect(false)).await
        {
            Ok(Ok(feed)) => Ok(feed),
            Ok(Err(err)) => Err(shared.backend(&err)),
            Err(_) => Err(shared.timed_out()),
        };
        let state = match attempt {
            Ok(feed) => State::Live(feed),
            Err(error) if shared.lazy && unreachable(&error) => {
                tracing::info!(
                    backplane = %shared.name,
                    server = %shared.label,
                    %error,
                    "cannot subscribe yet (lazy); next() subscribes once the server is up",
                );
                // Subscribes on the first `next()`, and reports a gap then,
                // as after a lost connection.
                State::Lost
            }
            Err(error) => return Err(error),
        };
        subscription.enter(state);
        Ok(Box::new(subscription))
    }

    /// Subscribed while some subscription of this backplane is subscribed
    /// now; `reconnects` counts its resubscriptions (failovers to another
    /// Cluster node and switches of [`PubSubMode`] included).
    fn status(&self) -> BackplaneStatus {
        let link = &self.inner.shared.link;
        let mut status = BackplaneStatus::default();
        status.subscribed = Some(link.live.load(Ordering::Relaxed) > 0);
        status.reconnects = link.reconnects.load(Ordering::Relaxed);
        status
    }
}

/// A subscription of a [`RedisBackplane`]. It holds what it needs to
/// reconnect, but not the backplane itself, so that dropping the last
/// clone of the backplane ends it.
struct RedisSubscription {
    shared: Arc<Shared>,
    /// Closed when the last clone of the backplane is dropped.
    alive: watch::Receiver<()>,
    /// The backplane's mode; a change makes a live subscription in the
    /// other mode subscribe again.
    mode: watch::Receiver<PubSubMode>,
    state: State,
    /// The pause before the next attempt to resubscribe.
    backoff: Duration,
    /// The Cluster node of the last connection: after losing it, the other
    /// nodes are tried first.
    last_node: Option<NodeAddr>,
}

enum State {
    /// Subscribed.
    Live(Feed),
    /// Not subscribed (the connection was lost, or a lazy subscription
    /// never had one): subscribe, then yield a gap.
    Lost,
    /// The backplane is gone; `next` returns `None` from now on.
    Closed,
}

/// A subscribed connection.
struct Feed {
    /// Its Cluster node (`None` on a standalone server).
    node: Option<NodeAddr>,
    mode: PubSubMode,
    wire: Wire,
}

enum Wire {
    /// `SUBSCRIBE` on the redis crate's pub/sub connection; the sink sends
    /// health-check `PING`s.
    Global {
        sink: PubSubSink,
        stream: PubSubStream,
    },
    /// `SSUBSCRIBE` on a RESP3 multiplexed connection, whose pushes come
    /// through `pushes`.
    Sharded {
        conn: MultiplexedConnection,
        pushes: mpsc::UnboundedReceiver<PushInfo>,
    },
}

impl RedisSubscription {
    /// Moves to `state`, keeping the backplane's count of live
    /// subscriptions right.
    fn enter(&mut self, state: State) {
        let was_live = matches!(self.state, State::Live(_));
        let is_live = matches!(state, State::Live(_));
        let live = &self.shared.link.live;
        match (was_live, is_live) {
            (false, true) => _ = live.fetch_add(1, Ordering::Relaxed),
            (true, false) => _ = live.fetch_sub(1, Ordering::Relaxed),
            _ => {}
        }
        if let State::Live(feed) = &state {
            self.last_node = feed.node.clone();
        }
        self.state = state;
    }
}

impl Drop for RedisSubscription {
    fn drop(&mut self) {
        self.enter(State::Closed);
    }
}

impl fmt::Debug for RedisSubscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Live(_) => "live",
            State::Lost => "reconnecting",
            State::Closed => "closed",
        };
        f.debug_struct("RedisSubscription")
            .field("name", &self.shared.name)
            .field("server", &self.shared.label)
            .field("channel", &self.shared.channel)
            .field("node", &self.last_node.as_ref().map(NodeAddr::to_string))
            .field("state", &state)
            .finish_non_exhaustive()
    }
}

/// `future`'s output, or `None` if the backplane is dropped first.
async fn unless_closed<F: Future>(alive: &mut watch::Receiver<()>, future: F) -> Option<F::Output> {
    // Nothing is ever sent, so `changed()` completes only when the sender
    // (the backplane) is gone; it is checked first, so a dropped backplane
    // wins over a ready future.
    match select(pin!(alive.changed()), pin!(future)).await {
        Either::Left(_) => None,
        Either::Right((output, _)) => Some(output),
    }
}

/// Why a live subscription's wait ended.
enum Wake {
    Message(Msg),
    /// The connection is gone.
    Disconnected,
    /// The node gave the channel's slot up (`sunsubscribe` from the
    /// server: a failover or a resharding moved the slot).
    Unsubscribed,
    /// Nothing arrived for a health-check interval.
    Quiet,
    /// The backplane's mode changed.
    Switched,
}

/// What one step of [`RedisSubscription::next`] came to.
enum Step {
    Event(BackplaneEvent),
    /// The backplane was dropped.
    Closed,
    /// No event yet (a health check passed, or the connection was lost).
    Again,
}

impl Feed {
    /// The next thing that happens on the connection.
    async fn next_wake(&mut self) -> Wake {
        match &mut self.wire {
            Wire::Global { stream, .. } => match stream.next().await {
                Some(message) => Wake::Message(message),
                None => Wake::Disconnected,
            },
            Wire::Sharded { pushes, .. } => loop {
                let Some(push) = pushes.recv().await else {
                    return Wake::Disconnected;
                };
                match push.kind {
                    PushKind::SMessage => {
                        if let Some(message) = Msg::from_push_info(push) {
                            return Wake::Message(message);
                        }
                    }
                    PushKind::SUnsubscribe => return Wake::Unsubscribed,
                    PushKind::Disconnection => return Wake::Disconnected,
                    // The confirmation of our SSUBSCRIBE, and anything else.
                    _ => {}
                }
            },
        }
    }

    async fn ping(&mut self) -> RedisResult<()> {
        match &mut self.wire {
            Wire::Global { sink, .. } => sink.ping::<Value>().await.map(drop),
            // RESP3: a subscribed connection takes any command.
            Wire::Sharded { conn, .. } => redis::cmd("PING")
                .query_async::<Value>(conn)
                .await
                .map(drop),
        }
    }
}

/// What ends a wait on a live connection: a push, a health-check interval
/// without one, or a switch of the backplane's mode; `None` once the
/// backplane is dropped.
async fn wake_up(
    feed: &mut Feed,
    alive: &mut watch::Receiver<()>,
    mode: &mut watch::Receiver<PubSubMode>,
    interval: Option<Duration>,
) -> Option<Wake> {
    let feed_mode = feed.mode;
    unless_closed(alive, async {
        let event = async {
            match interval {
                Some(interval) => tokio::time::timeout(interval, feed.next_wake())
                    .await
                    .unwrap_or(Wake::Quiet),
                None => feed.next_wake().await,
            }
        };
        let switched = async {
            loop {
                if mode.changed().await.is_err() {
                    // The sender lives as long as the backplane's
                    // shared state, which we hold: never.
                    pending::<()>().await;
                }
                let now = *mode.borrow_and_update();
                if now != feed_mode && now != PubSubMode::Auto {
                    return;
                }
            }
        };
        match select(pin!(event), pin!(switched)).await {
            Either::Left((wake, _)) => wake,
            Either::Right(((), _)) => Wake::Switched,
        }
    })
    .await
}

/// A connection subscribed to `channel` with `SUBSCRIBE`, once the server
/// confirmed it.
async fn subscribe_global(client: &redis::Client, channel: &str) -> RedisResult<Wire> {
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.subscribe(channel).await?;
    let (sink, stream) = pubsub.split();
    Ok(Wire::Global { sink, stream })
}

/// A RESP3 connection subscribed to `channel` with `SSUBSCRIBE`, once the
/// server confirmed it. The redis crate has no `ssubscribe` on its async
/// connections (only on the cluster client, which resubscribes by itself
/// and would hide our gaps), so the command is sent raw; its one
/// confirmation is its reply, and the pushes go to our channel.
async fn subscribe_sharded(client: &redis::Client, channel: &str) -> RedisResult<Wire> {
    let (sender, pushes) = mpsc::unbounded_channel();
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(None)
        .set_response_timeout(None)
        .set_push_sender(sender);
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    redis::cmd("SSUBSCRIBE")
        .arg(channel)
        .query_async::<Value>(&mut conn)
        .await?;
    Ok(Wire::Sharded { conn, pushes })
}

impl RedisSubscription {
    /// One attempt to subscribe: on the server, or over a Cluster on the
    /// owner of the channel's slot (sharded) or any node (global), trying
    /// the nodes in turn, each within the timeout, the node of the last
    /// connection last. `refresh`: ask the Cluster for its topology first
    /// (after a lost connection it may have changed).
    async fn connect(&mut self, refresh: bool) -> RedisResult<Feed> {
        let shared = self.shared.clone();
        let nodes = match &shared.servers {
            Servers::Standalone(client) => {
                let wire = subscribe_global(client, &shared.channel).await?;
                return Ok(Feed {
                    node: None,
                    mode: PubSubMode::Global,
                    wire,
                });
            }
            Servers::Cluster(nodes) => nodes,
        };
        let refreshed = if refresh || nodes.owner().is_none() {
            nodes.refresh(shared.timeout).await
        } else {
            Ok(())
        };
        // When no node answers, the previous view may still serve (a global
        // subscription through a node that is back), if there is one.
        if let Err(err) = refreshed
            && (!is_unreachable(&err) || nodes.owner().is_none())
        {
            return Err(err);
        }
        shared.decide_mode(nodes).await?;
        let mut last = None;
        // A node that no longer owns the slot, or a Cluster that lost
        // sharded pub/sub, is news: look again once, at once.
        let mut second_look = false;
        loop {
            let mode = *self.mode.borrow_and_update();
            let candidates = match mode {
                PubSubMode::Sharded => nodes.owner().into_iter().collect(),
                _ => last_resort(nodes.nodes(), self.last_node.as_ref()),
            };
            let mut retry = false;
            for node in candidates {
                let attempt = async {
                    let client = nodes.client(&node, mode == PubSubMode::Sharded)?;
                    match mode {
                        PubSubMode::Sharded => subscribe_sharded(&client, &shared.channel).await,
                        _ => subscribe_global(&client, &shared.channel).await,
                    }
                };
                let err = match tokio::time::timeout(shared.timeout, attempt).await {
                    Ok(Ok(wire)) => {
                        return Ok(Feed {
                            node: Some(node),
                            mode,
                            wire,
                        });
                    }
                    Ok(Err(err)) => err,
                    Err(_) => timeout_error(&node, shared.timeout),
                };
                tracing::debug!(
                    backplane = %shared.name,
                    node = %node,
                    ?mode,
                    "cannot subscribe through this node: {err}",
                );
                if mode == PubSubMode::Sharded && is_unknown_command(&err) {
                    shared.switch_mode(
                        PubSubMode::Global,
                        "SSUBSCRIBE is an unknown command: falling back to SUBSCRIBE",
                    );
                    retry = true;
                } else if err.is_cluster_error() {
                    let _ = nodes.refresh(shared.timeout).await;
                    retry = true;
                }
                last = Some(err);
                if retry {
                    break;
                }
            }
            if !retry || second_look {
                return Err(last.unwrap_or_else(no_node));
            }
            second_look = true;
        }
    }

    /// Waits on a live connection.
    async fn wait(&mut self) -> Step {
        let State::Live(feed) = &mut self.state else {
            return Step::Again;
        };
        // A message already received is taken at once, without arming the
        // health check's timer and the two watches (the common case under
        // load; `cargo bench -p cache-invalidation --bench capacity` shows
        // the cost per delivery). A dropped backplane and a switch of mode
        // still come first.
        let ready = match self.alive.has_changed() {
            Err(_) => return Step::Closed,
            Ok(_) if self.mode.has_changed().unwrap_or(true) => None,
            // Cancel-safe: a push that is not a message is dropped either way.
            Ok(_) => feed.next_wake().now_or_never(),
        };
        let wake = match ready {
            Some(wake) => wake,
            None => {
                let interval = self.shared.health_check_interval;
                let wake = wake_up(feed, &mut self.alive, &mut self.mode, interval).await;
                let Some(wake) = wake else {
                    return Step::Closed;
                };
                wake
            }
        };
        let shared = &*self.shared;
        let why = match wake {
            Wake::Message(message) => {
                let bytes = message.get_payload_bytes();
                return Step::Event(match BackplaneMessage::decode(bytes) {
                    Ok(message) => BackplaneEvent::Message(message),
                    Err(err) => {
                        tracing::warn!(
                            backplane = %shared.name,
                            channel = %shared.channel,
                            bytes = bytes.len(),
                            "{err}; reporting a gap",
                        );
                        BackplaneEvent::Gap
                    }
                });
            }
            Wake::Disconnected => "subscription connection lost".to_owned(),
            Wake::Unsubscribed => {
                "the node no longer serves the channel's slot (failover or resharding)".to_owned()
            }
            Wake::Switched => format!("the pub/sub mode changed to {:?}", shared.mode()),
            Wake::Quiet => {
                let ping = tokio::time::timeout(shared.timeout, feed.ping());
                let Some(answer) = unless_closed(&mut self.alive, ping).await else {
                    return Step::Closed;
                };
                match answer {
                    Ok(Ok(())) => return Step::Again,
                    Ok(Err(err)) => format!("health check failed ({err})"),
                    Err(_) => format!(
                        "health check failed (no answer within {:?})",
                        shared.timeout
                    ),
                }
            }
        };
        let node = feed
            .node
            .as_ref()
            .map_or(shared.label.clone(), NodeAddr::to_string);
        tracing::warn!(
            backplane = %shared.name,
            server = %shared.label,
            node = %node,
            "{why}; resubscribing",
        );
        self.enter(State::Lost);
        Step::Again
    }

    /// Reconnects and resubscribes, retrying with a growing pause until it
    /// works or the backplane is dropped.
    async fn resubscribe(&mut self) -> Step {
        loop {
            let shared = self.shared.clone();
            let mut alive = self.alive.clone();
            let attempt = async {
                // Over a Cluster, each node's attempt has its own timeout.
                match &shared.servers {
                    Servers::Standalone(_) => {
                        tokio::time::timeout(shared.timeout, self.connect(true)).await
                    }
                    Servers::Cluster(_) => Ok(self.connect(true).await),
                }
            };
            let failure = match unless_closed(&mut alive, attempt).await {
                None => return Step::Closed,
                Some(Ok(Ok(feed))) => {
                    tracing::info!(
                        backplane = %shared.name,
                        server = %shared.label,
                        node = ?feed.node.as_ref().map(NodeAddr::to_string),
                        mode = ?feed.mode,
                        "resubscribed; reporting a gap",
                    );
                    self.enter(State::Live(feed));
                    shared.link.reconnects.fetch_add(1, Ordering::Relaxed);
                    self.backoff = FIRST_BACKOFF;
                    // Only now, not when the connection was lost: a receiver
                    // that cleared its L1 earlier could refill it, while we
                    // were still away, with values whose invalidation it
                    // then never hears of.
                    return Step::Event(BackplaneEvent::Gap);
                }
                // A server that answers but refuses us (a wrong password)
                // will not let us in by waiting: say so louder than for
                // a server that is down.
                Some(Ok(Err(err))) if classify(&err) == ErrorClass::Auth => {
                    tracing::warn!(
                        backplane = %shared.name,
                        retry_in = ?self.backoff,
                        "cannot subscribe: {}",
                        describe(&err, &shared.label),
                    );
                    None
                }
                Some(Ok(Err(err))) => Some(err.to_string()),
                Some(Err(_)) => Some(format!("no answer within {:?}", shared.timeout)),
            };
            if let Some(failure) = failure {
                tracing::debug!(
                    backplane = %shared.name,
                    server = %shared.label,
                    retry_in = ?self.backoff,
                    "cannot resubscribe yet: {failure}",
                );
            }
            if unless_closed(&mut self.alive, tokio::time::sleep(self.backoff))
                .await
                .is_none()
            {
                return Step::Closed;
            }
            self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        }
    }
}

#[async_trait]
impl Subscription for RedisSubscription {
    /// The next message, or a gap: for bytes that are not a message, or
    /// once resubscribed after the connection was lost (over a Cluster,
    /// possibly through another node), or after a switch of
    /// [`PubSubMode`], or once subscribed at last for a
    /// [`lazy`](RedisBackplaneBuilder::lazy) subscription that could not
    /// subscribe at first (connecting is done here, with a pause growing
    /// from 50 ms to 1 s between attempts). One gap per switch.
    /// `None` once every clone of the backplane is dropped.
    ///
    /// Cancel-safe: dropping the future loses no message and no gap.
    async fn next(&mut self) -> Option<BackplaneEvent> {
        loop {
            let step = match self.state {
                State::Closed => return None,
                State::Live(_) => self.wait().await,
                State::Lost => self.resubscribe().await,
            };
            match step {
                Step::Event(event) => return Some(event),
                Step::Again => {}
                Step::Closed => {
                    // Closes the connection (and the redis crate's reader
                    // task) now rather than when the subscription is dropped.
                    self.enter(State::Closed);
                    return None;
                }
            }
        }
    }
}
