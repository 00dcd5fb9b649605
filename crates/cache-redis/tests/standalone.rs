//! RedisLayer against real `redis-server` processes: one server, a primary
//! with a replica, and a second OS process sharing the server.
//!
//! Needs `redis-server` and `redis-cli` on PATH (`apt-get install -y redis-server`).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cache_core::{CacheLayer, Entry, Error, ManualClock, Pattern, escape};
use cache_core::{CallContext, Operation};
use cache_redis::{ReadFrom, RedisLayer};
use cache_test_support::ctx;
use cache_test_support::redis::{RedisServer, ReplicatedRedis};

async fn layer(server: &RedisServer, namespace: &str) -> RedisLayer {
    RedisLayer::builder(server.url())
        .namespace(namespace)
        .timeout(Duration::from_secs(2))
        .build()
        .await
        .expect("build a layer against a running server")
}

async fn raw(server: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

fn value(entry: &Option<Entry>) -> Option<&[u8]> {
    entry.as_ref().map(|e| e.value().as_ref())
}

#[tokio::test]
async fn round_trip_keeps_the_remaining_expiry() {
    let server = RedisServer::start();
    let redis = layer(&server, "t:").await;
    let now = Instant::now();
    redis
        .set(
            &ctx::write(),
            "k",
            Entry::new(&b"v"[..]).expires_at(now + Duration::from_secs(10)),
        )
        .await
        .unwrap();
    // PX starts when the SET arrives: Redis may hold the key past the set
    // expiry by as long as the set took (plus a millisecond), never more.
    let latest = now + Duration::from_secs(10) + now.elapsed() + Duration::from_millis(1);
    redis
        .set(&ctx::write(), "forever", Entry::new(&b"f"[..]))
        .await
        .unwrap();

    let hit = redis
        .get(&ctx::read(), "k")
        .await
        .unwrap()
        .expect("just written");
    assert_eq!(hit.value().as_ref(), b"v");
    let expiry = hit.expiry().expect("the TTL comes back with the value");
    // Never later than what Redis holds, and not much earlier.
    assert!(expiry <= latest, "{expiry:?}");
    assert!(
        expiry > now + Duration::from_millis(9_000),
        "remaining {:?}",
        expiry - now
    );
    let pttl: i64 = server.cli(&["PTTL", "t:k"]).trim().parse().unwrap();
    assert!((9_000..=10_000).contains(&pttl), "{pttl}");

    let forever = redis.get(&ctx::read(), "forever").await.unwrap().unwrap();
    assert_eq!(forever.expiry(), None);
    assert_eq!(server.cli(&["PTTL", "t:forever"]).trim(), "-1");
    assert!(redis.get(&ctx::read(), "absent").await.unwrap().is_none());

    assert!(redis.delete(&ctx::remove(), "k").await.unwrap());
    assert!(!redis.delete(&ctx::remove(), "k").await.unwrap());
    assert!(redis.get(&ctx::read(), "k").await.unwrap().is_none());
    let stats = redis.stats();
    assert_eq!((stats.hits, stats.misses, stats.sets), (2, 2, 2));
    assert_eq!(stats.removals, 1);
}

#[tokio::test]
async fn expiry_is_honoured_to_the_millisecond_range() {
    let server = RedisServer::start();
    let redis = layer(&server, "t:").await;
    let ttl = Duration::from_millis(300);
    let set_at = Instant::now();
    let expires = set_at + ttl;
    redis
        .set(
            &ctx::write(),
            "short",
            Entry::new(&b"v"[..]).expires_at(expires),
        )
        .await
        .unwrap();
    // Redis starts a PX expiry when the SET arrives, so the key may live
    // past `expires` by as long as the SET took to get there (and a
    // millisecond of truncation), never more.
    let latest = expires + set_at.elapsed() + Duration::from_millis(1);
    let first_miss = loop {
        let asked = Instant::now();
        match redis.get(&ctx::read(), "short").await.unwrap() {
            Some(entry) => {
                let at = entry.expiry().expect("has an expiry");
                // A hit never claims to live past what Redis holds.
                assert!(at <= latest, "entry outlives its Redis expiry");
                assert!(at > asked, "returned an entry that had already expired");
            }
            None => break Instant::now(),
        }
        assert!(
            asked < expires + Duration::from_secs(2),
            "the key outlived its expiry by seconds"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    // The key may not go before its time, but for two millisecond
    // truncations: the layer rounds PX down (so Redis never keeps a value
    // past its expiry), and Redis starts the TTL at its own clock truncated
    // to the millisecond.
    assert!(
        first_miss + Duration::from_millis(2) >= expires,
        "gone {:?} early",
        expires - first_miss
    );
    // ... and is gone soon after (loose bound for a busy machine).
    assert!(
        first_miss <= expires + Duration::from_millis(150),
        "gone {:?} late",
        first_miss - expires
    );
}

#[tokio::test]
async fn the_context_clock_sets_the_ttl_and_expired_entries_are_not_written() {
    let server = RedisServer::start();
    let clock = ManualClock::shared();
    let redis = RedisLayer::builder(server.url())
        .namespace("t:")
        .build()
        .await
        .unwrap();
    let write = || CallContext::new(&*clock, Operation::Write);
    let read = || CallContext::new(&*clock, Operation::Read);
    let now = cache_core::Clock::now(&*clock);
    redis
        .set(
            &write(),
            "k",
            Entry::new(&b"old"[..]).expires_at(now + Duration::from_secs(60)),
        )
        .await
        .unwrap();
    let pttl: i64 = server.cli(&["PTTL", "t:k"]).trim().parse().unwrap();
    assert!((59_000..=60_000).contains(&pttl), "{pttl}");
    let hit = redis.get(&read(), "k").await.unwrap().unwrap();
    // Read back on the same (stopped) clock: remaining ≈ 60 s.
    let remaining = hit.remaining(now).unwrap();
    assert!(remaining > Duration::from_secs(59) && remaining <= Duration::from_secs(60));

    // An entry that already expired by the context's clock is not written,
    // and the old value goes.
    clock.advance(Duration::from_secs(10));
    let expired = Entry::new(&b"new"[..]).expires_at(now + Duration::from_secs(5));
    redis.set(&write(), "k", expired).await.unwrap();
    assert!(server.values().is_empty(), "{:?}", server.values());
    assert!(redis.get(&read(), "k").await.unwrap().is_none());
}

#[tokio::test]
async fn two_namespaces_never_see_each_other() {
    let server = RedisServer::start();
    // The second namespace is what the first one's glob characters would
    // match if they were not escaped.
    let a = layer(&server, "app[1]*:").await;
    let b = layer(&server, "app1x:").await;
    let c = layer(&server, "app:").await;
    for (layer, v) in [(&a, "a"), (&b, "b"), (&c, "c")] {
        for key in ["k", "other", "*"] {
            layer
                .set(&ctx::write(), key, Entry::new(v.as_bytes().to_vec()))
                .await
                .unwrap();
        }
    }
    assert_eq!(
        value(&a.get(&ctx::read(), "k").await.unwrap()),
        Some(&b"a"[..])
    );
    assert_eq!(
        value(&b.get(&ctx::read(), "k").await.unwrap()),
        Some(&b"b"[..])
    );
    assert_eq!(
        value(&c.get(&ctx::read(), "k").await.unwrap()),
        Some(&b"c"[..])
    );
    assert_eq!(server.cli(&["DBSIZE"]).trim(), "9");

    assert_eq!(
        a.invalidate(&ctx::remove(), &Pattern::new("*"))
            .await
            .unwrap(),
        3
    );
    assert!(a.get(&ctx::read(), "k").await.unwrap().is_none());
    assert_eq!(
        value(&b.get(&ctx::read(), "k").await.unwrap()),
        Some(&b"b"[..])
    );
    assert_eq!(
        value(&b.get(&ctx::read(), "*").await.unwrap()),
        Some(&b"b"[..])
    );
    assert_eq!(
        c.invalidate(&ctx::remove(), &Pattern::new("o*"))
            .await
            .unwrap(),
        1
    );
    assert_eq!(server.values().len(), 5);
    assert!(b.delete(&ctx::remove(), "*").await.unwrap());
    assert_eq!(
        value(&c.get(&ctx::read(), "*").await.unwrap()),
        Some(&b"c"[..])
    );
}

#[tokio::test]
async fn pattern_invalidation_removes_exactly_the_matching_keys_among_100k() {
    let server = RedisServer::start();
    let redis = layer(&server, "ns:").await;
    let mut raw = raw(&server).await;

    // 100 authors x 1000 pages; some author ids carry every glob metacharacter.
    let mut ids: Vec<String> = vec![
        "*".into(),
        "u*".into(),
        "u?1".into(),
        "u[1]".into(),
        "[u]".into(),
        r"u\1".into(),
        r"\".into(),
        "u]".into(),
        "u[".into(),
        "u1".into(),
    ];
    ids.extend((ids.len()..100).map(|n| format!("u{n}")));
    let keys: Vec<String> = ids
        .iter()
        .flat_map(|id| (0..1000).map(move |page| format!("reviews:author:{id}:page:{page}")))
        .collect();
    assert_eq!(keys.len(), 100_000);
    let payload = Entry::new(&b"x"[..]);
    for chunk in keys.chunks(10_000) {
        // Written through set_many: one pipeline per chunk.
        let entries: Vec<(&str, Entry)> = chunk
            .iter()
            .map(|key| (key.as_str(), payload.clone()))
            .collect();
        for result in redis.set_many(&ctx::write(), &entries).await.unwrap() {
            result.unwrap();
        }
    }
    // A key outside the namespace that every pattern would match without it.
    let _: () = redis::cmd("SET")
        .arg("reviews:author:*:page:1")
        .arg("outsider")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(server.cli(&["DBSIZE"]).trim(), "100001");

    let mut remaining: HashSet<String> = keys.iter().cloned().collect();
    let patterns = [
        // User ids taken literally:
        Pattern::new(format!("reviews:author:{}:*", escape("*"))),
        Pattern::new(format!("reviews:author:{}:*", escape("u?1"))),
        Pattern::new(format!("reviews:author:{}:*", escape("u[1]"))),
        Pattern::new(format!("reviews:author:{}:*", escape(r"u\1"))),
        Pattern::new(format!("reviews:author:{}:*", escape("u]"))),
        // Real globs:
        Pattern::new("reviews:author:u[2-3]?:page:1*"),
        Pattern::new("reviews:author:u9?:page:99?"),
        // A literal key: one UNLINK.
        Pattern::exact(r"reviews:author:\:page:7"),
    ];
    for pattern in &patterns {
        let expected: Vec<String> = remaining
            .iter()
            .filter(|key| pattern.matches(key))
            .cloned()
            .collect();
        assert!(!expected.is_empty(), "{pattern:?} should match something");
        let removed = redis.invalidate(&ctx::remove(), pattern).await.unwrap();
        assert_eq!(removed, expected.len() as u64, "{pattern:?}");
        for key in &expected {
            remaining.remove(key);
        }
    }
    // Exactly the expected keys hold values, and the outsider.
    let mut left: HashSet<String> = server.values().into_iter().collect();
    assert!(
        left.remove("reviews:author:*:page:1"),
        "outsider was removed"
    );
    let expected: HashSet<String> = remaining.iter().map(|k| format!("ns:{k}")).collect();
    assert_eq!(left.len(), expected.len());
    assert!(left == expected, "the surviving keys differ from the model");
    assert!(redis.stats().removals >= (100_000 - remaining.len()) as u64);
}

#[tokio::test]
async fn garbage_bytes_are_a_counted_miss_and_removed() {
    let server = RedisServer::start();
    let redis = layer(&server, "t:").await;
    server.cli(&["SET", "t:garbage", "not an entry"]);
    let mut raw = raw(&server).await;
    let _: () = redis::cmd("SET")
        .arg("t:bad-version")
        .arg(&b"\xCA\x09\x00x"[..])
        .query_async(&mut raw)
        .await
        .unwrap();
    server.cli(&["RPUSH", "t:list", "a", "b"]);
    server.cli(&["SET", "t:empty", ""]);
    for key in ["garbage", "bad-version", "list", "empty"] {
        assert!(
            redis.get(&ctx::read(), key).await.unwrap().is_none(),
            "{key}"
        );
        assert_eq!(
            server.cli(&["EXISTS", &format!("t:{key}")]).trim(),
            "0",
            "{key} removed"
        );
    }
    let stats = redis.stats();
    assert_eq!(stats.corrupt, 4);
    assert_eq!(stats.misses, 4);
    // Batch reads treat them the same way.
    server.cli(&["SET", "t:garbage", "again"]);
    redis
        .set(&ctx::write(), "good", Entry::new(&b"ok"[..]))
        .await
        .unwrap();
    let results = redis
        .get_many(&ctx::read(), &["garbage", "good", "none"])
        .await
        .unwrap();
    assert!(results[0].as_ref().unwrap().is_none());
    assert_eq!(value(results[1].as_ref().unwrap()), Some(&b"ok"[..]));
    assert!(results[2].as_ref().unwrap().is_none());
    assert_eq!(redis.stats().corrupt, 5);
}

#[tokio::test]
async fn oversize_values_are_refused_and_the_old_value_removed() {
    let server = RedisServer::start();
    let redis = RedisLayer::builder(server.url())
        .namespace("t:")
        .max_value_size(1024)
        .build()
        .await
        .unwrap();
    redis
        .set(&ctx::write(), "k", Entry::new(vec![1u8; 1024]))
        .await
        .unwrap();
    let err = redis
        .set(&ctx::write(), "k", Entry::new(vec![1u8; 1025]))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::ValueTooLarge {
                size: 1025,
                limit: 1024,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.is_refusal());
    assert!(redis.get(&ctx::read(), "k").await.unwrap().is_none());
    assert_eq!(redis.stats().rejections, 1);

    // In a batch, only the oversize slot fails.
    let results = redis
        .set_many(
            &ctx::write(),
            &[
                ("a", Entry::new(vec![2u8; 10])),
                ("b", Entry::new(vec![2u8; 5000])),
                (
                    "c",
                    Entry::new(vec![3u8; 10]).expires_at(Instant::now() - Duration::from_secs(1)),
                ),
            ],
        )
        .await
        .unwrap();
    assert!(results[0].is_ok());
    assert!(matches!(results[1], Err(Error::ValueTooLarge { .. })));
    assert!(results[2].is_ok(), "an expired entry is simply not written");
    let got = redis
        .get_many(&ctx::read(), &["a", "b", "c"])
        .await
        .unwrap();
    assert_eq!(value(got[0].as_ref().unwrap()), Some(&[2u8; 10][..]));
    assert!(got[1].as_ref().unwrap().is_none());
    assert!(got[2].as_ref().unwrap().is_none());
    assert_eq!(server.values(), ["t:a"]);
}

#[tokio::test]
async fn batch_calls_round_trip_with_expiry() {
    let server = RedisServer::start();
    let redis = layer(&server, "t:").await;
    let now = Instant::now();
    let entries: Vec<(String, Entry)> = (0..50)
        .map(|n| {
            (
                format!("k{n}"),
                Entry::new(format!("v{n}").into_bytes())
                    .expires_at(now + Duration::from_secs(30 + n)),
            )
        })
        .collect();
    let refs: Vec<(&str, Entry)> = entries
        .iter()
        .map(|(k, e)| (k.as_str(), e.clone()))
        .collect();
    assert!(
        redis
            .set_many(&ctx::write(), &refs)
            .await
            .unwrap()
            .iter()
            .all(Result::is_ok)
    );
    // PX starts when the SET arrives: allow for the time the batch took.
    let set_took = now.elapsed() + Duration::from_millis(1);
    let mut keys: Vec<&str> = entries.iter().map(|(k, _)| k.as_str()).collect();
    keys.push("missing");
    let got = redis.get_many(&ctx::read(), &keys).await.unwrap();
    assert_eq!(got.len(), 51);
    for (n, result) in got.iter().take(50).enumerate() {
        let entry = result.as_ref().unwrap().as_ref().unwrap();
        assert_eq!(entry.value().as_ref(), format!("v{n}").as_bytes());
        let expiry = entry.expiry().unwrap();
        let set = now + Duration::from_secs(30 + n as u64);
        assert!(expiry <= set + set_took && expiry > set - Duration::from_secs(1));
    }
    assert!(got[50].as_ref().unwrap().is_none());
    assert_eq!(redis.stats().sets, 50);
}

#[tokio::test]
async fn a_stopped_server_costs_at_most_the_timeout() {
    let mut server = RedisServer::start();
    let timeout = Duration::from_millis(200);
    let redis = RedisLayer::builder(server.url())
        .namespace("t:")
        .timeout(timeout)
        .build()
        .await
        .unwrap();
    redis
        .set(&ctx::write(), "k", Entry::new(&b"v"[..]))
        .await
        .unwrap();
    server.pause();
    for attempt in 0..3 {
        let started = Instant::now();
        let err = match attempt {
            0 => redis.get(&ctx::read(), "k").await.unwrap_err(),
            1 => redis
                .set(&ctx::write(), "k", Entry::new(&b"w"[..]))
                .await
                .unwrap_err(),
            _ => redis
                .invalidate(&ctx::remove(), &Pattern::new("*"))
                .await
                .unwrap_err(),
        };
        let took = started.elapsed();
        assert!(err.is_timeout(), "{err:?}");
        assert!(took >= timeout, "failed before the timeout: {took:?}");
        // Slack for a busy 2-core machine, far below a hang.
        assert!(took < timeout + Duration::from_millis(300), "took {took:?}");
    }
    assert!(redis.stats().errors >= 3);
    server.resume();
    // The same layer recovers once the server answers again.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match redis.get(&ctx::read(), "k").await {
            Ok(Some(_)) => break,
            other => assert!(Instant::now() < deadline, "no recovery: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_restarted_server_is_reconnected() {
    let mut server = RedisServer::start();
    let redis = layer(&server, "t:").await;
    redis
        .set(&ctx::write(), "k", Entry::new(&b"v"[..]))
        .await
        .unwrap();
    server.restart();
    // The old connection is dead; the first call may fail, later ones reconnect.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match redis.set(&ctx::write(), "k2", Entry::new(&b"v2"[..])).await {
            Ok(()) => break,
            Err(err) => assert!(Instant::now() < deadline, "no reconnect: {err:?}"),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        value(&redis.get(&ctx::read(), "k2").await.unwrap()),
        Some(&b"v2"[..])
    );
    // Nothing persisted across the restart.
    assert!(redis.get(&ctx::read(), "k").await.unwrap().is_none());
}

/// Concurrent sets then gets of distinct keys; every read sees its own write.
async fn each_task_reads_its_own_writes(redis: &RedisLayer, round: usize) -> Result<(), Error> {
    let tasks: Vec<_> = (0..64)
        .map(|task| {
            let redis = redis.clone();
            tokio::spawn(async move {
                let key = format!("task{task}");
                let written = format!("round{round}-task{task}").into_bytes();
                redis
                    .set(&ctx::write(), &key, Entry::new(written.clone()))
                    .await?;
                let read = redis.get(&ctx::read(), &key).await?;
                assert_eq!(value(&read), Some(&written[..]), "{key}");
                Ok::<_, Error>(())
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("task")?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_connections_share_the_load_and_all_reconnect() {
    let mut server = RedisServer::start();
    let redis = RedisLayer::builder(server.url())
        .namespace("t:")
        .pool_max_open(3)
        .timeout(Duration::from_secs(2))
        .build()
        .await
        .unwrap();
    for round in 0..4 {
        each_task_reads_its_own_writes(&redis, round).await.unwrap();
    }
    // Requests went round-robin over all three connections (the fourth
    // client listed is redis-cli itself).
    let clients = server.cli(&["CLIENT", "LIST", "TYPE", "normal"]);
    assert_eq!(clients.lines().count(), 4, "{clients}");

    server.restart();
    // Every connection died with the server. Each is replaced, and a request
    // that met a dead one is sent again on the new one: after at most a few
    // failed rounds (while the server comes back), every round succeeds.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut round = 4;
    while let Err(err) = each_task_reads_its_own_writes(&redis, round).await {
        assert!(Instant::now() < deadline, "no reconnect: {err:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
        round += 1;
    }
    for round in round + 1..round + 5 {
        each_task_reads_its_own_writes(&redis, round).await.unwrap();
    }
    let clients = server.cli(&["CLIENT", "LIST", "TYPE", "normal"]);
    assert_eq!(clients.lines().count(), 4, "{clients}");
}

#[tokio::test]
async fn reads_fall_back_to_the_replica_when_the_primary_is_killed() {
    let mut pair = ReplicatedRedis::start();
    let redis = RedisLayer::builder(pair.primary.url())
        .replica(pair.replica.url())
        .namespace("t:")
        .timeout(Duration::from_millis(500))
        .build()
        .await
        .unwrap();
    redis
        .set(&ctx::write(), "k", Entry::new(&b"v"[..]))
        .await
        .unwrap();
    assert!(pair.wait_for_replica(Duration::from_secs(5)));
    assert_eq!(
        value(&redis.get(&ctx::read(), "k").await.unwrap()),
        Some(&b"v"[..])
    );

    pair.primary.kill();
    for _ in 0..3 {
        let started = Instant::now();
        let hit = redis
            .get(&ctx::read(), "k")
            .await
            .expect("the replica answers");
        assert_eq!(value(&hit), Some(&b"v"[..]));
        assert!(started.elapsed() < Duration::from_millis(500));
    }
    let batch = redis
        .get_many(&ctx::read(), &["k", "absent"])
        .await
        .unwrap();
    assert_eq!(value(batch[0].as_ref().unwrap()), Some(&b"v"[..]));
    // Writes go to the primary only, so they fail (fast: the port refuses).
    let err = redis
        .set(&ctx::write(), "k", Entry::new(&b"w"[..]))
        .await
        .unwrap_err();
    assert!(!err.is_refusal(), "{err:?}");
}

#[tokio::test]
async fn replicas_first_reads_from_the_replica() {
    let pair = ReplicatedRedis::start();
    let redis = RedisLayer::builder(pair.primary.url())
        .replica(pair.replica.url())
        .read_from(ReadFrom::ReplicasFirst)
        .namespace("t:")
        .build()
        .await
        .unwrap();
    redis
        .set(&ctx::write(), "k", Entry::new(&b"v"[..]))
        .await
        .unwrap();
    assert!(pair.wait_for_replica(Duration::from_secs(5)));
    let gets = |server: &RedisServer| -> u64 {
        let stats = server.cli(&["INFO", "commandstats"]);
        stats
            .lines()
            .find_map(|line| line.strip_prefix("cmdstat_get:calls="))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let (primary_before, replica_before) = (gets(&pair.primary), gets(&pair.replica));
    for _ in 0..10 {
        assert_eq!(
            value(&redis.get(&ctx::read(), "k").await.unwrap()),
            Some(&b"v"[..])
        );
    }
    assert_eq!(gets(&pair.replica) - replica_before, 10);
    assert_eq!(gets(&pair.primary), primary_before);
}

#[tokio::test]
async fn credentials_come_from_the_url() {
    let server = RedisServer::start_with(&[
        "--requirepass",
        "s3cret",
        "--user",
        "alice",
        "on",
        ">wonderland",
        "~*",
        "&*",
        "+@all",
    ]);
    let port = server.port();
    for url in [
        format!("redis://:s3cret@127.0.0.1:{port}"),
        format!("redis://alice:wonderland@127.0.0.1:{port}"),
    ] {
        let redis = RedisLayer::builder(&url).build().await.unwrap();
        redis
            .set(&ctx::write(), "k", Entry::new(&b"v"[..]))
            .await
            .unwrap();
        assert_eq!(
            value(&redis.get(&ctx::read(), "k").await.unwrap()),
            Some(&b"v"[..])
        );
    }
    let err = RedisLayer::builder(format!("redis://alice:wrong@127.0.0.1:{port}"))
        .build()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Backend { .. }), "{err:?}");
    assert!(!err.to_string().contains("wrong"), "password leaked: {err}");
}

/// A user who may not run `TIME`: the layer cannot translate expiries, and
/// says so at build (eagerly), or on its first call (lazily), with the fix.
#[tokio::test]
async fn a_user_without_time_is_told_what_to_grant() {
    let server = RedisServer::start_with(&[
        "--user", "bob", "on", ">builder", "~*", "&*", "+@all", "-time",
    ]);
    let url = format!("redis://bob:builder@127.0.0.1:{}", server.port());
    let err = RedisLayer::builder(&url).build().await.unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err:?}");
    assert!(err.to_string().contains("+time"), "{err}");

    let lazy = RedisLayer::builder(&url)
        .pool_min_idle(0)
        .build()
        .await
        .unwrap();
    let err = lazy
        .set(&ctx::write(), "k", Entry::new(&b"v"[..]))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("+time"), "{err}");
    let err = lazy.get(&ctx::read(), "k").await.unwrap_err();
    assert!(err.to_string().to_lowercase().contains("time"), "{err}");
}

#[cfg(feature = "lz4")]
#[tokio::test]
async fn compressed_and_plain_values_read_side_by_side() {
    let server = RedisServer::start();
    let plain = layer(&server, "t:").await;
    let compressing = RedisLayer::builder(server.url())
        .namespace("t:")
        .compress_above(256)
        .build()
        .await
        .unwrap();
    let big = "offer review text ".repeat(1000).into_bytes();
    plain
        .set(&ctx::write(), "old", Entry::new(big.clone()))
        .await
        .unwrap();
    compressing
        .set(&ctx::write(), "new", Entry::new(big.clone()))
        .await
        .unwrap();
    compressing
        .set(&ctx::write(), "small", Entry::new(&b"tiny"[..]))
        .await
        .unwrap();
    let stored_old: usize = server.cli(&["STRLEN", "t:old"]).trim().parse().unwrap();
    let stored_new: usize = server.cli(&["STRLEN", "t:new"]).trim().parse().unwrap();
    assert_eq!(stored_old, big.len() + 19, "a 19-byte header");
    assert!(stored_new < big.len() / 10, "{stored_new}");
    for layer in [&plain, &compressing] {
        for key in ["old", "new"] {
            assert_eq!(
                value(&layer.get(&ctx::read(), key).await.unwrap()),
                Some(&big[..])
            );
        }
        assert_eq!(
            value(&layer.get(&ctx::read(), "small").await.unwrap()),
            Some(&b"tiny"[..])
        );
    }
}

/// Environment variable that turns this test binary into the second process
/// of `two_processes_share_one_redis`.
const CHILD_URL: &str = "CACHE_REDIS_TEST_CHILD_URL";

#[tokio::test]
async fn two_processes_share_one_redis() {
    let server = RedisServer::start();
    let redis = layer(&server, "shared:").await;
    redis
        .set(
            &ctx::write(),
            "from-parent",
            Entry::new(&b"hello child"[..]),
        )
        .await
        .unwrap();
    let exe = std::env::current_exe().unwrap();
    let output = tokio::process::Command::new(exe)
        .args([
            "--exact",
            "second_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_URL, server.url())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "the child failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("child saw the parent's write"), "{stdout}");
    assert_eq!(
        value(&redis.get(&ctx::read(), "from-child").await.unwrap()),
        Some(&b"hello parent"[..])
    );
}

/// The second process of `two_processes_share_one_redis`; a no-op when run
/// on its own.
#[tokio::test]
async fn second_process() {
    let Ok(url) = std::env::var(CHILD_URL) else {
        return;
    };
    let redis = RedisLayer::builder(url)
        .namespace("shared:")
        .build()
        .await
        .unwrap();
    let seen = redis.get(&ctx::read(), "from-parent").await.unwrap();
    assert_eq!(value(&seen), Some(&b"hello child"[..]));
    println!("child saw the parent's write");
    redis
        .set(
            &ctx::write(),
            "from-child",
            Entry::new(&b"hello parent"[..]),
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn works_as_a_trait_object() {
    let server = RedisServer::start();
    let redis: Arc<dyn CacheLayer> = Arc::new(layer(&server, "t:").await);
    redis
        .set(&ctx::write(), "k", Entry::new(&b"v"[..]))
        .await
        .unwrap();
    assert_eq!(redis.name(), "redis");
    assert_eq!(
        value(&redis.get(&ctx::read(), "k").await.unwrap()),
        Some(&b"v"[..])
    );
}

#[tokio::test]
async fn the_layer_passes_the_conformance_suite() {
    let server = RedisServer::start();
    let redis = RedisLayer::builder(server.url())
        .namespace("conformance")
        .max_value_size(4096)
        .build()
        .await
        .unwrap();
    cache_core::testing::Conformance::new(&redis)
        .max_value_size(4096)
        .run()
        .await;
}
