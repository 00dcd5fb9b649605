//! What `build()` checks before a layer or a backplane is handed out:
//! credentials verified at start-up, passwords kept out of everything
//! printed, and namespaces that cannot overlap.
//!
//! Needs `redis-server` and `redis-cli` on PATH (`apt-get install -y redis-server`).

use std::time::Duration;

use cache_core::{CacheLayer, Entry, Error, Pattern};
use cache_redis::{RedisBackplane, RedisLayer};
use cache_test_support::ctx;
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
        layer
            .set(&ctx::write(), "k", Entry::new(&b"v"[..]))
            .await
            .unwrap();
        assert!(layer.get(&ctx::read(), "k").await.unwrap().is_some());
    }

    // Without warm-up connections the first request reports the same cause.
    let lazy = RedisLayer::builder(&missing)
        .pool_min_idle(0)
        .build()
        .await
        .expect("touches no server");
    let err = lazy.get(&ctx::read(), "k").await.expect_err("no password");
    assert!(err.to_string().contains("NOAUTH"), "{err}");

    // The backplane checks at start-up too, with the same advice.
    for url in [&missing, &wrong] {
        let message = backend_message(RedisBackplane::builder(url).build().await, "backplane");
        assert!(message.to_lowercase().contains("auth"), "{message}");
        assert!(message.contains("password"), "names the fix: {message}");
        assert!(!message.contains(WRONG), "password leaked: {message}");
    }
}

#[tokio::test]
async fn passwords_are_never_printed() {
    // Nothing listens on port 1: every connection is refused at once.
    let no_user = format!("redis://:{SECRET}@127.0.0.1:1");
    let acl_user = format!("redis://alice:{SECRET}@127.0.0.1:1/0");
    let not_a_port = format!("redis://:{SECRET}@127.0.0.1:notaport");
    let unix = format!("unix:///nonexistent/redis.sock?db=1&pass={SECRET}");
    let shown = |what: &str, text: String| {
        assert!(!text.contains(SECRET), "{what} shows the password: {text}");
        text
    };

    // Debug of the builders: the address and the user stay, the password goes.
    let standalone = RedisLayer::builder(&no_user).replica(&acl_user);
    let debug = shown("the layer builder", format!("{standalone:?}"));
    assert!(debug.contains("redis://:***@127.0.0.1:1"), "{debug}");
    assert!(debug.contains("redis://alice:***@127.0.0.1:1/0"), "{debug}");
    let cluster = RedisLayer::cluster_builder([&no_user, &acl_user]).replica(&unix);
    shown("the cluster builder", format!("{cluster:?}"));
    for url in [&no_user, &acl_user, &unix] {
        let debug = shown(
            "the backplane builder",
            format!("{:?}", RedisBackplane::builder(url)),
        );
        assert!(debug.contains("***"), "{debug}");
    }

    // Errors of build(): refused, unparsable, and a cluster that cannot be used.
    let quick = |url: &str| RedisLayer::builder(url).connect_timeout(Duration::from_millis(500));
    for url in [&no_user, &acl_user, &not_a_port, &unix] {
        let err = quick(url).build().await.expect_err("nothing to connect to");
        shown("a build() error", err.to_string());
        shown("a build() error's Debug", format!("{err:?}"));
        let err = RedisBackplane::builder(url)
            .build()
            .await
            .expect_err("nothing to connect to");
        shown("a backplane build() error", err.to_string());
    }
    let err = RedisLayer::cluster_builder([&not_a_port])
        .build()
        .await
        .expect_err("not a URL");
    assert!(matches!(err, Error::Config(_)), "{err:?}");
    shown("a cluster build() error", err.to_string());

    // A lazy layer: its Debug, and the errors of requests to the primary
    // and to a replica.
    let lazy = quick(&no_user)
        .replica(&acl_user)
        .pool_min_idle(0)
        .build()
        .await
        .expect("touches no server");
    shown("the layer", format!("{lazy:?}"));
    let err = lazy
        .get(&ctx::read(), "k")
        .await
        .expect_err("nothing listens");
    shown("a read error", err.to_string());
    let err = lazy
        .set(&ctx::write(), "k", Entry::new(&b"v"[..]))
        .await
        .expect_err("nothing listens");
    shown("a write error", err.to_string());
}

async fn layer_in(server: &RedisServer, namespace: &str) -> cache_core::Result<RedisLayer> {
    RedisLayer::builder(server.url())
        .namespace(namespace)
        .timeout(Duration::from_secs(2))
        .build()
        .await
}

fn value(entry: Option<Entry>) -> Option<Vec<u8>> {
    entry.map(|entry| entry.value().to_vec())
}

#[tokio::test]
async fn namespaces_are_prefix_free() {
    let server = RedisServer::start();

    // A namespace with an inner `:` would hold keys that `app` sees as its
    // own `v2:...` keys: refused, with a name that works.
    for nested in ["app:v2:", "app:v2"] {
        match layer_in(&server, nested).await {
            Err(Error::Config(message)) => {
                assert!(message.contains("overlap"), "says why: {message}");
                assert!(message.contains("`app-v2`"), "suggests a name: {message}");
            }
            other => panic!("expected a config error for {nested:?}, got {other:?}"),
        }
    }
    match layer_in(&server, ":").await {
        Err(Error::Config(_)) => {}
        other => panic!("expected a config error for \":\", got {other:?}"),
    }

    let app = layer_in(&server, "app").await.unwrap();
    let app_v2 = layer_in(&server, "app-v2:").await.unwrap();
    // `app` and `app:` are one namespace, stored as `app:<key>`.
    let app_colon = layer_in(&server, "app:").await.unwrap();
    assert_eq!(app.namespace(), "app:");
    assert_eq!(app_colon.namespace(), "app:");
    assert_eq!(app_v2.namespace(), "app-v2:");

    app.set(&ctx::write(), "x", Entry::new(&b"app"[..]))
        .await
        .unwrap();
    app_v2
        .set(&ctx::write(), "x", Entry::new(&b"app-v2"[..]))
        .await
        .unwrap();
    app_v2
        .set(&ctx::write(), "y", Entry::new(&b"app-v2"[..]))
        .await
        .unwrap();
    assert_eq!(server.cli(&["EXISTS", "app:x"]).trim(), "1");
    assert_eq!(server.cli(&["EXISTS", "app-v2:x"]).trim(), "1");
    assert_eq!(app.redis_key("offer:7"), "app:offer:7");
    assert_eq!(
        value(app_colon.get(&ctx::read(), "x").await.unwrap()),
        Some(b"app".to_vec())
    );

    // What each one reads is its own, whatever the key looks like.
    assert_eq!(
        value(app.get(&ctx::read(), "x").await.unwrap()),
        Some(b"app".to_vec())
    );
    assert_eq!(
        value(app_v2.get(&ctx::read(), "x").await.unwrap()),
        Some(b"app-v2".to_vec())
    );
    for key in ["-v2:x", "-v2:y", "v2:x", ":x"] {
        assert_eq!(
            value(app.get(&ctx::read(), key).await.unwrap()),
            None,
            "`app` read {key:?}"
        );
    }

    // Invalidating everything of `app` leaves `app-v2` alone, and back.
    assert_eq!(
        app.invalidate(&ctx::remove(), &Pattern::new("*"))
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        value(app_v2.get(&ctx::read(), "x").await.unwrap()),
        Some(b"app-v2".to_vec())
    );
    assert_eq!(
        value(app_v2.get(&ctx::read(), "y").await.unwrap()),
        Some(b"app-v2".to_vec())
    );
    app.set(&ctx::write(), "z", Entry::new(&b"app"[..]))
        .await
        .unwrap();
    assert_eq!(
        app_v2
            .invalidate(&ctx::remove(), &Pattern::new("*"))
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        value(app.get(&ctx::read(), "z").await.unwrap()),
        Some(b"app".to_vec())
    );
    for key in ["x", "y"] {
        assert_eq!(value(app_v2.get(&ctx::read(), key).await.unwrap()), None);
    }

    // An empty namespace is the whole database, other namespaces' keys included.
    let everything = layer_in(&server, "").await.unwrap();
    assert_eq!(everything.namespace(), "");
    assert_eq!(everything.redis_key("app:z"), "app:z");
    assert_eq!(
        value(everything.get(&ctx::read(), "app:z").await.unwrap()),
        Some(b"app".to_vec())
    );
    assert_eq!(
        everything
            .invalidate(&ctx::remove(), &Pattern::new("*"))
            .await
            .unwrap(),
        1
    );
    assert_eq!(value(app.get(&ctx::read(), "z").await.unwrap()), None);
    // What is left are removal markers, which every namespace reads as misses.
    let keys = server.cli(&["KEYS", "*"]);
    assert_eq!(keys.lines().count(), 4, "{keys}");
}
