//! The offers service over HTTP: a GraphQL API (async-graphql on axum) in
//! front of a slow store, every field cached in a [`TieredCache`].
//!
//! - `offer(id: ID!)`, `Offer { id, title, reviews(first: Int = 10, after:
//!   String), averageRating }`: each field is cached for five minutes under
//!   the original design's keys ([`keys`]); the `reviews` of many offers in
//!   one query go through a DataLoader backed by
//!   [`TieredCache::get_or_compute_many`] (one read per tier, one store
//!   query for all the pages missing).
//! - `addReview(offerId, stars, authorId, text)` writes the store, then
//!   applies the dependency rules ([`keys::rules`]) through an
//!   [`Invalidator`]: the offer's pages and rating go, in every tier and on
//!   every instance.
//! - Without a Redis URL the cache is an in-process L1; with one, L1 over a
//!   Redis L2 guarded by a circuit breaker, with a Redis backplane that
//!   keeps every instance's L1 in step and an invalidation queue.
//!
//! `cargo run -p examples --example graphql` serves it (see the README);
//! a test starts it in-process:
//!
//! ```no_run
//! use std::sync::Arc;
//! use examples::graphql::{Config, Service, serve};
//! use examples::graphql::store::{DEFAULT_LATENCY, Store};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let store = Arc::new(Store::seeded(DEFAULT_LATENCY));
//! let service = Service::start(&Config::default(), store).await?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! println!("GraphiQL on http://{}/", listener.local_addr()?);
//! serve(listener, service, std::future::pending()).await?;
//! # Ok(())
//! # }
//! ```

pub mod keys;
mod schema;
pub mod store;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_graphql::http::GraphiQLSource;
use async_graphql_axum::GraphQL;
use axum::Router;
use axum::response::Html;
use axum::routing::get;
use cache_breaker::CircuitBreaker;
use cache_invalidation::Invalidator;
use cache_memory::MemoryLayer;
use cache_redis::{RedisBackplane, RedisLayer};
use cache_tiered::{Tier, TieredCache};
use tokio::net::TcpListener;

pub use schema::{Mutation, Offer, OffersSchema, Query, Review};
use store::Store;

/// How a [`Service`] caches.
#[derive(Debug, Clone)]
pub struct Config {
    /// The Redis of the shared L2 and of the backplane (`redis://host:port`);
    /// `None`: an in-process L1 only. Default: none.
    pub redis_url: Option<String>,
    /// The prefix of every key this service writes to Redis, and of its
    /// backplane channel. Default: `"graphql-example:"`.
    pub namespace: String,
    /// The longest a Redis call may take before it counts as failed (a
    /// miss, and a failure for the breaker). Default: 250 ms.
    pub redis_timeout: Duration,
    /// How long L1 keeps a value when Redis is under it, whatever its TTL.
    /// Default: 30 s.
    pub l1_ttl_cap: Duration,
    /// Whether the resolvers use the cache. `false`: every field is a
    /// query of the store, as in a service without this library (the load
    /// test's baseline); the cache is still built, and mutations still
    /// invalidate it. Default: `true`.
    pub caching: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            redis_url: None,
            namespace: "graphql-example:".to_owned(),
            redis_timeout: Duration::from_millis(250),
            l1_ttl_cap: Duration::from_secs(30),
            caching: true,
        }
    }
}

impl Config {
    /// The defaults, with the Redis URL from the `REDIS_URL` environment
    /// variable, if set and not empty.
    pub fn from_env() -> Self {
        Config {
            redis_url: std::env::var("REDIS_URL")
                .ok()
                .filter(|url| !url.is_empty()),
            ..Config::default()
        }
    }
}

/// Why a [`Service`] did not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// Redis did not answer: start it, fix the URL, or run without one
    /// (unset `REDIS_URL`) for an in-process cache only.
    #[error(
        "cannot use Redis at {url} (is it running? without a Redis URL the service runs on an in-process cache): {source}"
    )]
    Redis {
        /// The URL tried.
        url: String,
        /// What failed.
        source: cache_core::Error,
    },
    /// The cache's configuration was refused (see the message).
    #[error("invalid cache configuration: {0}")]
    Cache(#[from] cache_core::Error),
    /// The invalidation rules did not parse (a bug in [`keys::rules`]).
    #[error("invalid invalidation rules: {0}")]
    Rules(#[from] cache_invalidation::Error),
}

/// One instance of the offers service: its cache, its invalidator, its
/// schema, over a store it may share with other instances.
///
/// Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct Service {
    cache: TieredCache,
    invalidator: Invalidator,
    store: Arc<Store>,
    schema: OffersSchema,
    redis_url: Option<String>,
    caching: bool,
}

impl Service {
    /// Builds the cache `config` asks for (connecting to Redis if it names
    /// one, and subscribing to the backplane) and the schema over `store`.
    pub async fn start(config: &Config, store: Arc<Store>) -> Result<Service, StartError> {
        let l1 = MemoryLayer::builder()
            .max_entries(100_000)
            .max_bytes(64 << 20)
            .build()?;
        let builder = TieredCache::builder().default_ttl(keys::TTL);
        let cache = match &config.redis_url {
            None => builder.layer(l1).build()?,
            Some(url) => {
                let redis = |source| StartError::Redis {
                    url: url.clone(),
                    source,
                };
                let l2 = RedisLayer::builder(url.as_str())
                    .namespace(config.namespace.as_str())
                    .timeout(config.redis_timeout)
                    .build()
                    .await
                    .map_err(redis)?;
                // One breaker for reads, one for writes: a dead or hung
                // Redis costs nothing once detected.
                let breaker = Arc::new(CircuitBreaker::builder().name("redis").build_for_tier()?);
                // Every write and invalidation makes the other instances
                // drop their L1 copies.
                let backplane = RedisBackplane::builder(url.as_str())
                    .channel(format!("{}invalidation", config.namespace))
                    .timeout(config.redis_timeout)
                    .build()
                    .await
                    .map_err(redis)?;
                builder
                    .tier(Tier::new(l1).ttl_cap(config.l1_ttl_cap))
                    .tier(Tier::new(l2).shared_policy(breaker))
                    .backplane(backplane)
                    // What a failing Redis missed is retried until it lands.
                    .invalidation_queue(10_000)
                    .build_async()
                    .await?
            }
        };
        let invalidator = Invalidator::new(cache.clone(), keys::rules()?);
        let schema = schema::build(schema::State {
            cache: cache.clone(),
            invalidator: invalidator.clone(),
            store: store.clone(),
            caching: config.caching,
        });
        Ok(Service {
            cache,
            invalidator,
            store,
            schema,
            redis_url: config.redis_url.clone(),
            caching: config.caching,
        })
    }

    /// The HTTP routes: GraphiQL at `GET /`, the API at `POST /graphql`
    /// (and `GET /graphql?query=...`).
    pub fn router(&self) -> Router {
        Router::new()
            .route("/", get(graphiql))
            .route_service("/graphql", GraphQL::new(self.schema.clone()))
    }

    /// The schema, to run requests without HTTP.
    pub fn schema(&self) -> &OffersSchema {
        &self.schema
    }

    /// The cache every resolver uses.
    pub fn cache(&self) -> &TieredCache {
        &self.cache
    }

    /// The invalidator `addReview` goes through (with the rules of
    /// [`keys::rules`]).
    pub fn invalidator(&self) -> &Invalidator {
        &self.invalidator
    }

    /// The store under the cache.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// What the cache is made of, for humans: `"an in-process L1 only"`,
    /// `"an in-process L1 over Redis at <url>"`, or `"nothing (caching
    /// off)"`.
    pub fn describe(&self) -> String {
        if !self.caching {
            return "nothing (caching off)".to_owned();
        }
        match &self.redis_url {
            None => "an in-process L1 only".to_owned(),
            Some(url) => format!("an in-process L1 over Redis at {url}"),
        }
    }
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("cache", &self.cache)
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

/// Serves `service` on `listener` until `shutdown` completes (then lets
/// the requests in progress finish).
pub async fn serve(
    listener: TcpListener,
    service: Service,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, service.router())
        .with_graceful_shutdown(shutdown)
        .await
}

async fn graphiql() -> Html<String> {
    Html(
        GraphiQLSource::build()
            .endpoint("/graphql")
            .title("Offers: GraphiQL")
            .finish(),
    )
}
