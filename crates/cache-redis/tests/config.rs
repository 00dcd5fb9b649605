//! What `build()` checks before a layer or a backplane is handed out:
//! credentials verified at start-up, passwords kept out of everything
//! printed, and namespaces that cannot overlap.
//!
//! Needs `redis-server` and `redis-cli` on PATH (`apt-get install -y redis-server`).

use std::time::Duration;

use cache_core::{CacheLayer, Entry, Error};
use cache_redis::{RedisBackplane, RedisLayer};
use cache_test_support::redis::RedisServer;

/// The password of the servers started with `--requirepass`.
const SECRET: &str = "s3cret-pw";
/// A password the server does not accept.
const WRONG: &str = "hunter2";

fn secured_server() -> RedisServer {
    RedisServer::start_with(&["--requirepass", SECRET])
}

/// What a failed `build()` said, checked to be a backend failure.
fn backend_message<T: std::fmt::Debug>(result: cache_core::Result<T>, what: &str) -> String {
    match result {
        Err(err @ Error::Backend { .. }) => err.to_string(),
        other => panic!("{what}: expected a backend error at start-up, got {other:?}"),
    }
}

#[tokio::test]
async fn build_fails_without_the_right_password() {
    let server = secured_server();
    let port = server.port();
    let missing = server.url();
    let wrong = format!("redis://:{WRONG}@127.0.0.1:{port}");
    let wrong_user = format!("redis://default:{WRONG}@127.0.0.1:{port}");
    for connections in [1, 2] {
        let builder = |url: &str| {
            RedisLayer::builder(url)
                .pool_max_open(connections)
                .pool_min_idle(connections)
                .timeout(Duration::from_secs(2))
        };
        // No password: the handshake passes, the first command does not.
        let message = backend_message(builder(&missing).build().await, "no password");
        assert!(message.contains("NOAUTH"), "{message}");
        assert!(message.contains("password"), "names the fix: {message}");
        for url in [&wrong, &wrong_user] {
            let message = backend_message(builder(url).build().await, "wrong password");
            assert!(
                message.to_lowercase().contains("auth"),
                "names the cause: {message}"
            );
            assert!(!message.contains(WRONG), "password leaked: {message}");
        }
        let right = format!("redis://:{SECRET}@127.0.0.1:{port}");
        let layer = builder(&right).build().await.expect("the right password");
        layer.set("k", Entry::new(&b"v"[..])).await.unwrap();
        assert!(layer.get("k").await.unwrap().is_some());
    }

    // Without warm-up connections the first request reports the same cause.
    let lazy = RedisLayer::builder(&missing)
        .pool_min_idle(0)
        .build()
        .await
        .expect("touches no server");
    let err = lazy.get("k").await.expect_err("no password");
    assert!(err.to_string().contains("NOAUTH"), "{err}");

    // The backplane checks at start-up too, with the same advice.
    for url in [&missing, &wrong] {
        let message = backend_message(RedisBackplane::builder(url).build().await, "backplane");
        assert!(message.to_lowercase().contains("auth"), "{message}");
        assert!(message.contains("password"), "names the fix: {message}");
        assert!(!message.contains(WRONG), "password leaked: {message}");
    }
}
