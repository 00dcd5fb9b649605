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
//! [`CLIENTS`] clients, each with its own keep-alive HTTP/1.1 connection
//! (a minimal client: one prepared request written, the answer read by its
//! `content-length`, so that the load generator takes little of the CPU it
//! shares with the service), send requests back to back, cycling through [`QUERIES`] (pages, the
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

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cache_core::{Latency, LatencyRecorder};
use cache_test_support::bench::write_results;
use cache_test_support::redis::RedisServer;
use examples::graphql::store::Store;
use examples::graphql::{Config, Service, serve};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Concurrent clients, each with one connection.
const CLIENTS: usize = 64;
/// The store's latency per query and its pool.
const STORE_LATENCY: Duration = Duration::from_millis(5);
const STORE_CONNECTIONS: usize = 10;
/// Measured rounds per service (after one warm-up round each).
const ROUNDS: usize = 5;
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

/// One keep-alive HTTP/1.1 connection to the service.
struct Connection {
    stream: BufReader<TcpStream>,
    line: Vec<u8>,
}

impl Connection {
    async fn open(addr: std::net::SocketAddr) -> Result<Connection, String> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|error| format!("connect to {addr}: {error}"))?;
        stream
            .set_nodelay(true)
            .map_err(|error| error.to_string())?;
        Ok(Connection {
            stream: BufReader::new(stream),
            line: Vec::new(),
        })
    }

    /// Sends `request` (a whole HTTP request) and returns the body of a
    /// `200 OK` answer, or why there is none.
    async fn send(&mut self, request: &[u8]) -> Result<Vec<u8>, String> {
        let io = |error: std::io::Error| error.to_string();
        self.stream.get_mut().write_all(request).await.map_err(io)?;
        let mut status = None;
        let mut length = None;
        loop {
            self.line.clear();
            let read = self
                .stream
                .read_until(b'\n', &mut self.line)
                .await
                .map_err(io)?;
            if read == 0 {
                return Err("the service closed the connection".to_owned());
            }
            let line = String::from_utf8_lossy(&self.line);
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if status.is_none() {
                status = line.split(' ').nth(1).map(str::to_owned);
            } else if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse::<usize>().ok();
            }
        }
        let length = length.ok_or("an answer without content-length")?;
        let mut body = vec![0; length];
        self.stream.read_exact(&mut body).await.map_err(io)?;
        match status.as_deref() {
            Some("200") => Ok(body),
            other => Err(format!("{other:?}: {}", String::from_utf8_lossy(&body))),
        }
    }
}

/// One service under test, listening on a free port.
struct Target {
    name: &'static str,
    addr: std::net::SocketAddr,
    store: Arc<Store>,
    /// Each query as a whole HTTP request.
    requests: Vec<Vec<u8>>,
    /// Each query's answer as the service gave it before the run.
    expected: Vec<Vec<u8>>,
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
        let addr = listener.local_addr().map_err(|error| error.to_string())?;
        let server = tokio::spawn(serve(listener, service, std::future::pending()));
        let requests: Vec<Vec<u8>> = QUERIES.iter().map(|query| request(addr, query)).collect();
        let mut connection = Connection::open(addr).await?;
        let mut expected = Vec::new();
        for (query, request) in QUERIES.iter().zip(&requests) {
            let body = connection.send(request).await?;
            let text = String::from_utf8_lossy(&body);
            if !text.contains("\"data\"") || text.contains("\"errors\"") {
                return Err(format!("{name}: {query} answered {text}"));
            }
            expected.push(body);
        }
        Ok(Target {
            name,
            addr,
            store,
            requests,
            expected,
            server,
        })
    }

    /// Each request's latency goes to `latency`.
    async fn round(self: &Arc<Self>, length: Duration, latency: &Arc<LatencyRecorder>) -> Round {
        let ok = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicU64::new(0));
        let queries_before = self.store.queries();
        let started = Instant::now();
        let deadline = started + length;
        let clients: Vec<_> = (0..CLIENTS)
            .map(|client| {
                let (target, ok, errors, latency) =
                    (self.clone(), ok.clone(), errors.clone(), latency.clone());
                tokio::spawn(async move {
                    let mut connection: Option<Connection> = None;
                    let mut next = client;
                    while Instant::now() < deadline {
                        let query = next % target.requests.len();
                        next += 1;
                        let sent = Instant::now();
                        let answer = match &mut connection {
                            Some(connection) => connection.send(&target.requests[query]).await,
                            None => match Connection::open(target.addr).await {
                                Ok(opened) => {
                                    connection
                                        .insert(opened)
                                        .send(&target.requests[query])
                                        .await
                                }
                                Err(error) => Err(error),
                            },
                        };
                        latency.record(sent.elapsed());
                        match answer {
                            Ok(body) if body == target.expected[query] => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(_) => {
                                errors.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(_) => {
                                // A connection in an unknown state: a new one.
                                connection = None;
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

/// `query` as a whole HTTP/1.1 request to the service at `addr`.
fn request(addr: std::net::SocketAddr, query: &str) -> Vec<u8> {
    let body = json!({ "query": query }).to_string();
    format!(
        "POST /graphql HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
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
    let text = serde_json::to_string_pretty(&report).map_err(|error| error.to_string())?;
    write_results("load", &text).map_err(|error| error.to_string())?;
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
