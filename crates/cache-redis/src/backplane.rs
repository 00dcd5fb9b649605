//! `RedisBackplane`: a [`Backplane`] on Redis pub/sub.
//!
//! Publishing goes over one multiplexed connection, shared by every clone
//! and reopened when it fails. Each subscription has a connection of its own
//! (a subscribed RESP2 connection can do nothing else), driven from
//! [`Subscription::next`]: there is no task of ours. The redis crate's reader
//! task belongs to the subscription's connection and is aborted when the
//! connection is dropped.

use std::fmt;
use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use cache_core::{
    Backplane, BackplaneEvent, BackplaneMessage, BackplaneStatus, Error, ErrorClass, Result,
    Subscription,
};
use futures::StreamExt;
use futures::future::{Either, select};
use redis::aio::{MultiplexedConnection, PubSubSink, PubSubStream};
use redis::{AsyncConnectionConfig, RedisError, RedisResult};
use tokio::sync::watch;

use crate::builder::url_error;
use crate::layer::{classify, describe};
use crate::url::ServerUrl;

/// The first pause between two failed attempts to resubscribe.
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
/// The longest pause between two attempts (the pause doubles up to it).
const MAX_BACKOFF: Duration = Duration::from_secs(1);

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

struct Inner {
    name: Arc<str>,
    /// The URL without its password, for errors and logs.
    label: String,
    client: redis::Client,
    config: AsyncConnectionConfig,
    channel: String,
    timeout: Duration,
    health_check_interval: Option<Duration>,
    /// Whether an unreachable server is waited for rather than an error
    /// (see [`RedisBackplaneBuilder::lazy`]).
    lazy: bool,
    /// The publishing connection and its id (to replace only the connection
    /// that failed, not one another task has opened since).
    publisher: Mutex<Option<(u64, MultiplexedConnection)>>,
    /// Only one task opens the publishing connection; the others wait for it.
    connecting: tokio::sync::Mutex<()>,
    next_id: AtomicU64,
    /// Never sent on: subscriptions watch it to learn that the last clone
    /// of the backplane was dropped (the sender goes with `Inner`).
    alive: watch::Sender<()>,
    /// The subscriptions' connection state, for [`Backplane::status`].
    link: Arc<Link>,
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
        let inner = &self.inner;
        f.debug_struct("RedisBackplane")
            .field("name", &inner.name)
            .field("server", &inner.label)
            .field("channel", &inner.channel)
            .field("timeout", &inner.timeout)
            .field("health_check_interval", &inner.health_check_interval)
            .field("lazy", &inner.lazy)
            .finish_non_exhaustive()
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
        RedisBackplaneBuilder::new(ServerUrl::new(url))
    }

    /// The channel messages are published on.
    pub fn channel(&self) -> &str {
        &self.inner.channel
    }
}

/// Builds a [`RedisBackplane`]. Start from [`RedisBackplane::builder`].
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
    /// Prints without its password.
    url: ServerUrl,
    name: String,
    channel: String,
    timeout: Duration,
    health_check_interval: Option<Duration>,
    lazy: bool,
}

impl RedisBackplaneBuilder {
    fn new(url: ServerUrl) -> Self {
        RedisBackplaneBuilder {
            url,
            name: "redis-backplane".into(),
            channel: "cache:invalidation".into(),
            timeout: Duration::from_millis(500),
            health_check_interval: Some(Duration::from_secs(5)),
            lazy: false,
        }
    }

    /// The pub/sub channel, taken literally. Instances see each other only
    /// on the same channel of the same server: give each group of caches
    /// that share a Redis namespace its own. Default: `"cache:invalidation"`.
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
    /// attempt or one health check after it. Default: 500 ms.
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

    /// Validates the configuration, opens the publishing connection and
    /// returns the backplane.
    ///
    /// # Errors
    /// [`Error::Config`] for an invalid setting or URL; [`Error::Backend`]
    /// (refused, wrong password) or [`Error::Timeout`] when the server cannot
    /// be reached. With [`lazy`](Self::lazy), an unreachable server is not
    /// an error; a server that refuses the credentials still is.
    pub async fn build(self) -> Result<RedisBackplane> {
        self.validate()?;
        #[cfg(feature = "tls")]
        {
            // As in `RedisLayerBuilder::build`: pick ring unless the
            // application already chose a provider.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let client =
            redis::Client::open(self.url.expose()).map_err(|err| url_error(&self.url, &err))?;
        let (alive, _) = watch::channel(());
        let inner = Inner {
            name: Arc::from(self.name.as_str()),
            label: self.url.redacted(),
            client,
            // Every publish is bounded as a whole, connecting included, by
            // `timeout`; a timer of the client's own would race ours and
            // turn a timeout into a backend error.
            config: AsyncConnectionConfig::new()
                .set_connection_timeout(None)
                .set_response_timeout(None),
            channel: self.channel,
            timeout: self.timeout,
            health_check_interval: self.health_check_interval,
            lazy: self.lazy,
            publisher: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
            next_id: AtomicU64::new(1),
            alive,
            link: Arc::default(),
        };
        // Connect now, so that a bad URL, a wrong password or an unreachable
        // server fails here rather than on the first invalidation. The PING
        // catches a missing password, which the handshake does not.
        let check = async {
            let (_, mut conn) = inner.connection().await?;
            redis::cmd("PING").query_async::<()>(&mut conn).await
        };
        let failure = match tokio::time::timeout(inner.timeout, check).await {
            Ok(Ok(())) => None,
            Ok(Err(err)) => Some(inner.backend(&err)),
            Err(_) => Some(inner.timed_out()),
        };
        if let Some(error) = failure {
            if !(inner.lazy && unreachable(&error)) {
                return Err(error);
            }
            // A connection that timed out may be half-open: start afresh.
            inner.forget(None);
            tracing::warn!(
                backplane = %inner.name,
                server = %inner.label,
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
        Ok(())
    }
}

impl Inner {
    fn backend(&self, err: &RedisError) -> Error {
        Error::classified(self.name.clone(), classify(err), describe(err, &self.label))
    }

    fn timed_out(&self) -> Error {
        Error::timeout(self.name.clone(), self.timeout)
    }

    /// The publishing connection, opened if there is none.
    async fn connection(&self) -> RedisResult<(u64, MultiplexedConnection)> {
        if let Some(current) = self.current() {
            return Ok(current);
        }
        let _connecting = self.connecting.lock().await;
        if let Some(current) = self.current() {
            // Another task connected while this one waited.
            return Ok(current);
        }
        let conn = self
            .client
            .get_multiplexed_async_connection_with_config(&self.config)
            .await?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        *self.slot() = Some((id, conn.clone()));
        Ok((id, conn))
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Option<(u64, MultiplexedConnection)>> {
        self.publisher.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn current(&self) -> Option<(u64, MultiplexedConnection)> {
        self.slot().clone()
    }

    /// Drops the publishing connection `id` (any, with `None`) so that the
    /// next publish opens a fresh one.
    fn forget(&self, id: Option<u64>) {
        let mut slot = self.slot();
        if id.is_none() || slot.as_ref().map(|(current, _)| *current) == id {
            *slot = None;
        }
    }

    async fn publish_bytes(&self, bytes: &[u8]) -> Result<()> {
        // A connection that died under us (a restarted server) fails the
        // first PUBLISH on it: send once more on a fresh connection. Should
        // the first PUBLISH have arrived after all, the message is delivered
        // twice, which is harmless: dropping a key twice drops it once.
        let mut retried = false;
        loop {
            let (id, mut conn) = self.connection().await.map_err(|err| self.backend(&err))?;
            let result = redis::cmd("PUBLISH")
                .arg(&self.channel)
                .arg(bytes)
                .query_async::<i64>(&mut conn)
                .await;
            match result {
                Ok(receivers) => {
                    tracing::trace!(backplane = %self.name, receivers, "published");
                    return Ok(());
                }
                Err(err) => {
                    let broken = is_broken(&err);
                    if broken {
                        self.forget(Some(id));
                    }
                    if broken && !retried {
                        retried = true;
                        continue;
                    }
                    return Err(self.backend(&err));
                }
            }
        }
    }
}

/// Whether `error` says the server could not be reached (down, hung, or
/// not ready), rather than that it answered and refused.
fn unreachable(error: &Error) -> bool {
    matches!(error.class(), ErrorClass::Unavailable | ErrorClass::Timeout)
}

/// Whether the connection that returned `err` is unusable.
fn is_broken(err: &RedisError) -> bool {
    err.is_io_error()
        || err.is_connection_dropped()
        || err.is_connection_refusal()
        || err.is_unrecoverable_error()
}

#[async_trait]
impl Backplane for RedisBackplane {
    /// `PUBLISH`es [`message.encode()`](BackplaneMessage::encode) on the
    /// channel, within the [`timeout`](RedisBackplaneBuilder::timeout).
    /// Succeeds whether or not anyone is subscribed.
    async fn publish(&self, message: &BackplaneMessage) -> Result<()> {
        let inner = &*self.inner;
        let bytes = message.encode();
        match tokio::time::timeout(inner.timeout, inner.publish_bytes(&bytes)).await {
            Ok(result) => result,
            Err(_) => {
                // A server that does not answer may never do so on this
                // connection (a half-open TCP flow): start afresh next time.
                inner.forget(None);
                Err(inner.timed_out())
            }
        }
    }

    /// Opens a connection of its own and returns once the server has
    /// confirmed the `SUBSCRIBE`, so every message published after this
    /// returns is received. Bounded by the
    /// [`timeout`](RedisBackplaneBuilder::timeout).
    ///
    /// With [`lazy`](RedisBackplaneBuilder::lazy), a server that cannot be
    /// reached is not an error: the subscription returned subscribes from
    /// [`Subscription::next`], and yields [`BackplaneEvent::Gap`] first.
    async fn subscribe(&self) -> Result<Box<dyn Subscription>> {
        let inner = &*self.inner;
        let connected =
            tokio::time::timeout(inner.timeout, connect(&inner.client, &inner.channel)).await;
        let attempt = match connected {
            Ok(Ok((sink, stream))) => Ok(State::Live { sink, stream }),
            Ok(Err(err)) => Err(inner.backend(&err)),
            Err(_) => Err(inner.timed_out()),
        };
        let state = match attempt {
            Ok(live) => live,
            Err(error) if inner.lazy && unreachable(&error) => {
                tracing::info!(
                    backplane = %inner.name,
                    server = %inner.label,
                    %error,
                    "cannot subscribe yet (lazy); next() subscribes once the server is up",
                );
                // Subscribes on the first `next()`, and reports a gap then,
                // as after a lost connection.
                State::Lost
            }
            Err(error) => return Err(error),
        };
        Ok(Box::new(
            RedisSubscription {
                name: inner.name.clone(),
                label: inner.label.clone(),
                client: inner.client.clone(),
                channel: inner.channel.clone(),
                timeout: inner.timeout,
                health_check_interval: inner.health_check_interval,
                alive: inner.alive.subscribe(),
                state: State::Closed,
                backoff: FIRST_BACKOFF,
                link: inner.link.clone(),
            }
            .entering(state),
        ))
    }

    /// Subscribed while some subscription of this backplane is subscribed
    /// now; `reconnects` counts its resubscriptions.
    fn status(&self) -> BackplaneStatus {
        let link = &self.inner.link;
        let mut status = BackplaneStatus::default();
        status.subscribed = Some(link.live.load(Ordering::Relaxed) > 0);
        status.reconnects = link.reconnects.load(Ordering::Relaxed);
        status
    }
}

/// A connection subscribed to `channel`, once the server confirmed it.
async fn connect(client: &redis::Client, channel: &str) -> RedisResult<(PubSubSink, PubSubStream)> {
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.subscribe(channel).await?;
    Ok(pubsub.split())
}

/// A subscription of a [`RedisBackplane`]. It holds what it needs to
/// reconnect, but not the backplane itself, so that dropping the last
/// clone of the backplane ends it.
struct RedisSubscription {
    name: Arc<str>,
    label: String,
    client: redis::Client,
    channel: String,
    timeout: Duration,
    health_check_interval: Option<Duration>,
    /// Closed when the last clone of the backplane is dropped.
    alive: watch::Receiver<()>,
    state: State,
    /// The pause before the next attempt to resubscribe.
    backoff: Duration,
    link: Arc<Link>,
}

impl RedisSubscription {
    /// Moves to `state`, keeping the backplane's count of live
    /// subscriptions right.
    fn enter(&mut self, state: State) {
        let was_live = matches!(self.state, State::Live { .. });
        let is_live = matches!(state, State::Live { .. });
        match (was_live, is_live) {
            (false, true) => _ = self.link.live.fetch_add(1, Ordering::Relaxed),
            (true, false) => _ = self.link.live.fetch_sub(1, Ordering::Relaxed),
            _ => {}
        }
        self.state = state;
    }

    fn entering(mut self, state: State) -> Self {
        self.enter(state);
        self
    }
}

impl Drop for RedisSubscription {
    fn drop(&mut self) {
        self.enter(State::Closed);
    }
}

enum State {
    /// Subscribed; the sink sends health-check `PING`s.
    Live {
        sink: PubSubSink,
        stream: PubSubStream,
    },
    /// Not subscribed (the connection was lost, or a lazy subscription
    /// never had one): subscribe, then yield a gap.
    Lost,
    /// The backplane is gone; `next` returns `None` from now on.
    Closed,
}

impl fmt::Debug for RedisSubscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Live { .. } => "live",
            State::Lost => "reconnecting",
            State::Closed => "closed",
        };
        f.debug_struct("RedisSubscription")
            .field("name", &self.name)
            .field("server", &self.label)
            .field("channel", &self.channel)
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
    Message(redis::Msg),
    /// The connection's stream ended: the connection is gone.
    Disconnected,
    /// Nothing arrived for a health-check interval.
    Quiet,
}

/// What one step of [`RedisSubscription::next`] came to.
enum Step {
    Event(BackplaneEvent),
    /// The backplane was dropped.
    Closed,
    /// No event yet (a health check passed, or the connection was lost).
    Again,
}

impl RedisSubscription {
    /// Waits on a live connection.
    async fn wait(&mut self) -> Step {
        let State::Live { sink, stream } = &mut self.state else {
            return Step::Again;
        };
        let interval = self.health_check_interval;
        let wake = unless_closed(&mut self.alive, async {
            let next = match interval {
                Some(interval) => tokio::time::timeout(interval, stream.next()).await,
                None => Ok(stream.next().await),
            };
            match next {
                Ok(Some(message)) => Wake::Message(message),
                Ok(None) => Wake::Disconnected,
                Err(_) => Wake::Quiet,
            }
        })
        .await;
        let Some(wake) = wake else {
            return Step::Closed;
        };
        match wake {
            Wake::Message(message) => {
                let bytes = message.get_payload_bytes();
                Step::Event(match BackplaneMessage::decode(bytes) {
                    Ok(message) => BackplaneEvent::Message(message),
                    Err(err) => {
                        tracing::warn!(
                            backplane = %self.name,
                            channel = %self.channel,
                            bytes = bytes.len(),
                            "{err}; reporting a gap",
                        );
                        BackplaneEvent::Gap
                    }
                })
            }
            Wake::Disconnected => {
                tracing::warn!(
                    backplane = %self.name,
                    server = %self.label,
                    "subscription connection lost; resubscribing",
                );
                self.enter(State::Lost);
                Step::Again
            }
            Wake::Quiet => {
                let ping = tokio::time::timeout(self.timeout, sink.ping::<redis::Value>());
                let Some(answer) = unless_closed(&mut self.alive, ping).await else {
                    return Step::Closed;
                };
                let failure = match answer {
                    Ok(Ok(_)) => return Step::Again,
                    Ok(Err(err)) => err.to_string(),
                    Err(_) => format!("no answer within {:?}", self.timeout),
                };
                tracing::warn!(
                    backplane = %self.name,
                    server = %self.label,
                    "health check failed ({failure}); resubscribing",
                );
                self.enter(State::Lost);
                Step::Again
            }
        }
    }

    /// Reconnects and resubscribes, retrying with a growing pause until it
    /// works or the backplane is dropped.
    async fn resubscribe(&mut self) -> Step {
        loop {
            let attempt = tokio::time::timeout(self.timeout, connect(&self.client, &self.channel));
            let failure = match unless_closed(&mut self.alive, attempt).await {
                None => return Step::Closed,
                Some(Ok(Ok((sink, stream)))) => {
                    tracing::info!(
                        backplane = %self.name,
                        server = %self.label,
                        "resubscribed; reporting a gap",
                    );
                    self.enter(State::Live { sink, stream });
                    self.link.reconnects.fetch_add(1, Ordering::Relaxed);
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
                        backplane = %self.name,
                        retry_in = ?self.backoff,
                        "cannot subscribe: {}",
                        describe(&err, &self.label),
                    );
                    None
                }
                Some(Ok(Err(err))) => Some(err.to_string()),
                Some(Err(_)) => Some(format!("no answer within {:?}", self.timeout)),
            };
            if let Some(failure) = failure {
                tracing::debug!(
                    backplane = %self.name,
                    server = %self.label,
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
    /// once resubscribed after the connection was lost, or once subscribed
    /// at last for a [`lazy`](RedisBackplaneBuilder::lazy) subscription that
    /// could not subscribe at first (connecting is done here, with a pause
    /// growing from 50 ms to 1 s between attempts).
    /// `None` once every clone of the backplane is dropped.
    ///
    /// Cancel-safe: dropping the future loses no message and no gap.
    async fn next(&mut self) -> Option<BackplaneEvent> {
        loop {
            let step = match self.state {
                State::Closed => return None,
                State::Live { .. } => self.wait().await,
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
