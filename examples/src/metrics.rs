//! A cache's metrics on a Prometheus endpoint: the recorder of
//! `metrics-exporter-prometheus`, and a small HTTP server for `GET /metrics`.
//!
//! The exporter's own HTTP listener is left out (its feature pulls in a
//! full HTTP stack, and it cannot bind port 0 and say which port it got):
//! a scrape is one request on one connection, which a few lines of tokio
//! serve. A service that already runs an HTTP server (axum, hyper) mounts
//! [`render`] on its own router instead.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Histogram buckets for call and load durations, in seconds: from 50 µs
/// (an L1 write) to 5 s (a slow loader).
const BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0,
];

/// Installs the Prometheus recorder as the process's `metrics` recorder
/// (once; later calls return the same handle). Call it before building a
/// cache, whose histograms register with the recorder at build.
pub fn install_recorder() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                // Histograms as Prometheus histograms (buckets), which
                // aggregate across instances, rather than summaries.
                .set_buckets_for_metric(Matcher::Suffix("duration_seconds".into()), BUCKETS)
                .expect("the buckets are not empty")
                .install_recorder()
                .expect("no other metrics recorder is installed")
        })
        .clone()
}

/// The page a scrape gets: `export` brings the figures up to date (call
/// `TieredCache::export_metrics` in it), then the recorder renders them.
pub fn render(handle: &PrometheusHandle, export: &dyn Fn()) -> String {
    export();
    handle.render()
}

/// Serves `GET /metrics` on `listener` until the task is dropped; any
/// other request gets a 404.
pub async fn serve(
    listener: TcpListener,
    handle: PrometheusHandle,
    export: impl Fn() + Send + Sync + 'static,
) {
    let export = std::sync::Arc::new(export);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let (handle, export) = (handle.clone(), export.clone());
        tokio::spawn(async move {
            // A client that sends garbage or goes away costs one task.
            let _ = answer(stream, &handle, &*export).await;
        });
    }
}

async fn answer(
    mut stream: TcpStream,
    handle: &PrometheusHandle,
    export: &(dyn Fn() + Send + Sync),
) -> std::io::Result<()> {
    // The request line and headers; a scrape sends no body.
    let mut request = Vec::new();
    let mut buffer = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 16 * 1024 {
        let read = stream.read(&mut buffer).await?;
        if read == 0 {
            break;
        }
        request.extend_from_slice(&buffer[..read]);
    }
    let scrape = request.starts_with(b"GET /metrics ") || request.starts_with(b"GET /metrics?");
    let (status, body) = if scrape {
        ("200 OK", render(handle, export))
    } else {
        ("404 Not Found", "try GET /metrics\n".to_owned())
    };
    let head = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

/// `GET path` on `addr` over HTTP/1.1: the status line and the body. For
/// the example's self-check and the tests (no HTTP client dependency).
pub async fn get(addr: std::net::SocketAddr, path: &str) -> std::io::Result<(String, String)> {
    let mut stream = TcpStream::connect(addr).await?;
    let request = format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head.lines().next().unwrap_or_default().to_owned();
    Ok((status, body.to_owned()))
}
