//! The offers service as a real HTTP GraphQL server: async-graphql on axum,
//! every field cached, the reviews of many offers loaded in one batch.
//!
//! ```text
//! cargo run -p examples --example graphql                    # in-process L1 only
//! REDIS_URL=redis://127.0.0.1:6379 cargo run -p examples --example graphql
//! cargo run -p examples --example graphql -- --addr 127.0.0.1:8001 --latency-ms 50
//! ```
//!
//! Then open the printed address for GraphiQL, or `curl` it (the README
//! has examples). The service itself is `examples::graphql` (src/graphql),
//! where its tests start it too.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use examples::graphql::store::{DEFAULT_LATENCY, Store};
use examples::graphql::{Config, Service, serve};

const USAGE: &str = "\
usage: graphql [--addr HOST:PORT] [--redis-url URL] [--latency-ms N] [--connections N] [--no-cache]

  --addr HOST:PORT   where to listen (default 127.0.0.1:8000; port 0 picks a free one)
  --redis-url URL    Redis for the shared L2 and the backplane (default: $REDIS_URL;
                     without either, the cache is an in-process L1 only)
  --latency-ms N     how long each query of the in-process store takes (default 5)
  --connections N    at most N store queries at once, as a database pool (default: no limit)
  --no-cache         resolvers query the store every time (to compare against)";

struct Args {
    addr: SocketAddr,
    config: Config,
    latency: Duration,
    connections: Option<usize>,
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut parsed = Args {
        addr: SocketAddr::from(([127, 0, 0, 1], 8000)),
        config: Config::from_env(),
        latency: DEFAULT_LATENCY,
        connections: None,
    };
    while let Some(flag) = args.next() {
        if flag == "-h" || flag == "--help" {
            return Err(USAGE.to_owned());
        }
        let mut value = || {
            args.next()
                .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))
        };
        match flag.as_str() {
            "--addr" => {
                let addr = value()?;
                parsed.addr = addr.parse().map_err(|_| {
                    format!("--addr takes HOST:PORT, such as 127.0.0.1:8000, not {addr:?}")
                })?;
            }
            "--redis-url" => parsed.config.redis_url = Some(value()?).filter(|url| !url.is_empty()),
            "--latency-ms" => {
                let ms = value()?;
                let ms: u64 = ms
                    .parse()
                    .map_err(|_| format!("--latency-ms takes a whole number, not {ms:?}"))?;
                parsed.latency = Duration::from_millis(ms);
            }
            "--connections" => {
                let n = value()?;
                let n: usize =
                    n.parse().ok().filter(|&n| n > 0).ok_or_else(|| {
                        format!("--connections takes a number above 0, not {n:?}")
                    })?;
                parsed.connections = Some(n);
            }
            "--no-cache" => parsed.config.caching = false,
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    Ok(parsed)
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("graphql: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), String> {
    let args = parse(std::env::args().skip(1))?;
    let mut store = Store::seeded(args.latency);
    if let Some(connections) = args.connections {
        store = store.with_connections(connections);
    }
    let store = Arc::new(store);
    let service = Service::start(&args.config, store)
        .await
        .map_err(|error| error.to_string())?;
    let listener = tokio::net::TcpListener::bind(args.addr)
        .await
        .map_err(|error| format!("cannot listen on {}: {error}", args.addr))?;
    let addr = listener
        .local_addr()
        .map_err(|error| format!("cannot read the address listened on: {error}"))?;
    println!(
        "The offers GraphQL service listens on http://{addr}, cached by {}; \
         each store query takes {:?}.\n\
         \n  GraphiQL:  open http://{addr}/ in a browser\n  \
         curl:      curl -s http://{addr}/graphql -H 'content-type: application/json' \\\n             \
         -d '{{\"query\": \"{{ offer(id: \\\"1\\\") {{ title averageRating reviews(first: 3) {{ stars text cursor }} }} }}\"}}'\n\
         \nOffers 1, 2 and 3 exist. Ctrl-C stops the service.",
        service.describe(),
        args.latency,
    );
    let shutdown = async {
        // Without a signal handler, wait forever (the process is killed).
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    serve(listener, service, shutdown)
        .await
        .map_err(|error| format!("the server failed: {error}"))
}
