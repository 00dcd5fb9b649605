//! The load test: many concurrent HTTP clients against the GraphQL offers
//! service, with the cache and without it, over a store whose every query
//! takes 5 ms through a pool of 10 connections (sqlx's default pool size):
//! what a service gains from the cache when its database is the
//! bottleneck, as it is for the services this library is for.
//!
//! Three services, each started in this process on a free loopback port:
//! - `off`: `Config::caching = false`, every field a store query;
//! - `l1`: the in-process L1 (the service without a Redis URL);
//! - `l1_redis`: L1 over a throwaway `redis-server`, with the breaker and
//!   the backplane (the service with a Redis URL).
//!
//! [`CLIENTS`] clients, each with its own keep-alive HTTP/1.1 connection,
//! send requests back to back, cycling through [`QUERIES`] (pages, the
//! rating, a batch of two offers, an unknown offer); every answer is
//! compared with the one the service gave before the run, and a wrong or
//! failed answer counts as an error. The services take turns in
//! interleaved rounds, after a warm-up round each; the median round's
//! requests per second and the latency percentiles of all rounds go to
//! `target/bench/load.json` (or `$CARGO_TARGET_DIR/bench/load.json`) with
//! the ratios cache on ÷ off (target: at least 20).
//!
//! The load generator shares the machine's cores with the service, as a
//! sidecar would; on a 2-core machine the cached services are CPU-bound
//! and their figures are a floor.
//!
//! Run: `cargo bench -p examples --bench load` (about a minute);
//! `LOAD_ROUND_SECS=n` sets the length of a round (default 3).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{Request, header};
use cache_core::{Latency, LatencyRecorder};
use cache_test_support::redis::RedisServer;
use examples::graphql::store::Store;
use examples::graphql::{Config, Service, serve};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::json;

/// Concurrent clients, each with one connection.
const CLIENTS: usize = 64;
/// The store's latency per query and its pool.
const STORE_LATENCY: Duration = Duration::from_millis(5);
const STORE_CONNECTIONS: usize = 10;
/// Measured rounds per service (after one warm-up round each).
const ROUNDS: usize = 3;
/// The throughput ratio cache on ÷ off the issue sets as the target.
const TARGET_RATIO: f64 = 20.0;

/// What the clients ask, in turn: the fields of one offer, a later page,
/// a batch of two offers' pages (one DataLoader batch), an offer that
/// does not exist (a cached "not found").
const QUERIES: &[&str] = &[
    r#"{ offer(id: "1") { title averageRating reviews(first: 5) { cursor stars text } } }"#,
    r#"{ offer(id: "2") { title averageRating reviews(first: 5) { cursor stars text } } }"#,
    r#"{ offer(id: "1") { reviews(first: 3, after: "1:8") { cursor stars } } }"#,
    r#"{ a: offer(id: "1") { reviews(first: 3) { cursor } } b: offer(id: "2") { reviews(first: 3) { cursor } } }"#,
    r#"{ offer(id: "3") { title averageRating reviews { cursor } } }"#,
    r#"{ offer(id: "404") { title } }"#,
];

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// One service under test, listening on a free port.
struct Target {
    name: &'static str,
    url: String,
    store: Arc<Store>,
    client: HttpClient,
    /// Each query's body as the service answered it before the run.
    expected: Vec<Bytes>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// What the rounds of one target measured.
#[derive(Default)]
struct Figures {
    rounds: Vec<Round>,
    /// Every request of every measured round.
    latency: Arc<LatencyRecorder>,
}

impl Drop for Target {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// What one round measured.
#[derive(Debug, Clone, Copy)]
struct Round {
    ok: u64,
    errors: u64,
    elapsed: Duration,
    store_queries: u64,
}

impl Round {
    fn per_second(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }
}

impl Target {
    async fn start(name: &'static str, config: Config) -> Result<Target, String> {
        let store = Arc::new(Store::seeded(STORE_LATENCY).with_connections(STORE_CONNECTIONS));
        let service = Service::start(&config, store.clone())
            .await
            .map_err(|error| format!("{name}: {error}"))?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|error| format!("{name}: cannot listen: {error}"))?;
        let url = format!(
            "http://{}/graphql",
            listener.local_addr().map_err(|error| error.to_string())?
        );
        let server = tokio::spawn(serve(listener, service, std::future::pending()));
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(CLIENTS)
            .build_http();
        let mut target = Target {
            name,
            url,
            store,
            client,
            expected: Vec::new(),
            server,
        };
        for query in QUERIES {
            let body = target.post(request_body(query)).await?;
            let text = String::from_utf8_lossy(&body);
            if !text.contains("\"data\"") || text.contains("\"errors\"") {
                return Err(format!("{name}: {query} answered {text}"));
            }
            target.expected.push(body);
        }
        Ok(target)
    }

    /// Posts `body` and returns the answer's body, or why there is none.
    async fn post(&self, body: Bytes) -> Result<Bytes, String> {
        let request = Request::post(&self.url)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .map_err(|error| error.to_string())?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|error| error.to_string())?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|error| error.to_string())?
            .to_bytes();
        if status.is_success() {
            Ok(body)
        } else {
            Err(format!("{status}: {}", String::from_utf8_lossy(&body)))
        }
    }

    /// [`CLIENTS`] clients sending requests back to back for `length`.
    /// Each request's latency goes to `latency`.
    async fn round(self: &Arc<Self>, length: Duration, latency: &Arc<LatencyRecorder>) -> Round {
        let ok = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicU64::new(0));
        let queries_before = self.store.queries();
        let started = Instant::now();
        let deadline = started + length;
        let bodies: Arc<Vec<Bytes>> = Arc::new(QUERIES.iter().map(|q| request_body(q)).collect());
        let clients: Vec<_> = (0..CLIENTS)
            .map(|client| {
                let (target, ok, errors, bodies, latency) = (
                    self.clone(),
                    ok.clone(),
                    errors.clone(),
                    bodies.clone(),
                    latency.clone(),
                );
                tokio::spawn(async move {
                    let mut next = client;
                    while Instant::now() < deadline {
                        let query = next % bodies.len();
                        next += 1;
                        let sent = Instant::now();
                        let answer = target.post(bodies[query].clone()).await;
                        latency.record(sent.elapsed());
                        match answer {
                            Ok(body) if body == target.expected[query] => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            _ => {
                                errors.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                })
            })
            .collect();
        for client in clients {
            let _ = client.await;
        }
        Round {
            ok: ok.load(Ordering::Relaxed),
            errors: errors.load(Ordering::Relaxed),
            elapsed: started.elapsed(),
            store_queries: self.store.queries() - queries_before,
        }
    }
}

impl Figures {
    /// The median round, by requests per second.
    fn median(&self) -> Round {
        let mut rounds = self.rounds.clone();
        rounds.sort_by(|a, b| a.per_second().total_cmp(&b.per_second()));
        rounds[rounds.len() / 2]
    }

    fn report(&self) -> serde_json::Value {
        let median = self.median();
        let Latency {
            p50, p90, p99, max, ..
        } = self.latency.summary();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let total = |f: fn(&Round) -> u64| self.rounds.iter().map(f).sum::<u64>();
        json!({
            "requests_per_second": median.per_second(),
            "rounds_requests_per_second": self.rounds.iter().map(Round::per_second).collect::<Vec<_>>(),
            "requests": total(|r| r.ok),
            "errors": total(|r| r.errors),
            "store_queries_per_request":
                total(|r| r.store_queries) as f64 / total(|r| r.ok).max(1) as f64,
            "latency_ms": { "p50": ms(p50), "p90": ms(p90), "p99": ms(p99), "max": ms(max) },
        })
    }
}

fn request_body(query: &str) -> Bytes {
    json!({ "query": query }).to_string().into()
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"),
        PathBuf::from,
    )
}

fn round_length() -> Result<Duration, String> {
    match std::env::var("LOAD_ROUND_SECS") {
        Err(_) => Ok(Duration::from_secs(3)),
        Ok(secs) => secs
            .parse::<f64>()
            .ok()
            .filter(|secs| *secs > 0.0 && secs.is_finite())
            .map(Duration::from_secs_f64)
            .ok_or_else(|| format!("LOAD_ROUND_SECS takes a number of seconds, not {secs:?}")),
    }
}

async fn run() -> Result<(), String> {
    let length = round_length()?;
    let redis = RedisServer::start();
    let with_redis = Config {
        redis_url: Some(redis.url()),
        // Timeouts are for a failing Redis, not a busy machine.
        redis_timeout: Duration::from_secs(5),
        ..Config::default()
    };
    let off = Config {
        caching: false,
        ..Config::default()
    };
    let targets = [
        Arc::new(Target::start("off", off).await?),
        Arc::new(Target::start("l1", Config::default()).await?),
        Arc::new(Target::start("l1_redis", with_redis).await?),
    ];
    // Warm-up: connections opened, caches filled, nothing kept.
    for target in &targets {
        target.round(length / 3, &Arc::default()).await;
    }
    let mut figures: Vec<Figures> = targets.iter().map(|_| Figures::default()).collect();
    for round in 0..ROUNDS {
        for (target, figures) in targets.iter().zip(&mut figures) {
            let measured = target.round(length, &figures.latency).await;
            eprintln!(
                "load: round {} {:>8}: {:>8.0} requests/s, {} errors",
                round + 1,
                target.name,
                measured.per_second(),
                measured.errors
            );
            figures.rounds.push(measured);
        }
    }
    let off = figures[0].median().per_second();
    let mut report = serde_json::Map::new();
    report.insert(
        "setup".into(),
        json!({
            "clients": CLIENTS,
            "store_latency_ms": STORE_LATENCY.as_secs_f64() * 1e3,
            "store_connections": STORE_CONNECTIONS,
            "round_secs": length.as_secs_f64(),
            "rounds": ROUNDS,
            "queries": QUERIES,
            "cores": std::thread::available_parallelism().map_or(0, usize::from),
        }),
    );
    let mut met = true;
    for (target, figures) in targets.iter().zip(&figures) {
        report.insert(target.name.into(), figures.report());
        if target.name != "off" {
            let ratio = figures.median().per_second() / off;
            met &= ratio >= TARGET_RATIO;
            report.insert(format!("{}_over_off", target.name), json!(ratio));
        }
        met &= figures.rounds.iter().all(|round| round.errors == 0);
    }
    report.insert(
        "target".into(),
        json!(format!("every *_over_off >= {TARGET_RATIO} with no errors")),
    );
    report.insert("met".into(), json!(met));
    let dir = target_dir().join("bench");
    std::fs::create_dir_all(&dir).map_err(|error| error.to_string())?;
    let text = serde_json::to_string_pretty(&report).map_err(|error| error.to_string())?;
    std::fs::write(dir.join("load.json"), &text).map_err(|error| error.to_string())?;
    println!("{text}");
    Ok(())
}

fn main() {
    // `cargo bench` passes `--bench`; this harness has no options.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    if let Err(error) = runtime.block_on(run()) {
        eprintln!("load: {error}");
        std::process::exit(1);
    }
}
