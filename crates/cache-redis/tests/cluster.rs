//! RedisLayer against a real three-primary Redis Cluster.
//!
//! Needs `redis-server` and `redis-cli` on PATH (`apt-get install -y redis-server`).

use std::time::{Duration, Instant};

use cache_core::{CacheLayer, CallContext, Entry, Error, Operation, Pattern, escape};
use cache_redis::RedisLayer;
use cache_test_support::ctx;
use cache_test_support::redis::RedisCluster;

#[tokio::test]
async fn cluster_get_set_delete_invalidate_across_slots() {
    let cluster = RedisCluster::start();
    let conformance = RedisLayer::cluster_builder(cluster.urls())
        .namespace("conformance")
        .build()
        .await
        .unwrap();
    // The contract, with keys spread over every slot range.
    cache_core::testing::Conformance::new(&conformance)
        .run()
        .await;
    for node in cluster.nodes() {
        node.cli(&["FLUSHALL"]);
    }
    let redis = RedisLayer::cluster_builder(cluster.urls())
        .namespace("c:")
        .timeout(Duration::from_secs(2))
        .build()
        .await
        .unwrap();

    // 600 keys spread over the slots of all three primaries.
    let ids = ["*", "u?", "[x]", r"a\b", "plain"];
    let keys: Vec<String> = (0..600)
        .map(|n| format!("reviews:author:{}:page:{n}", ids[n % ids.len()]))
        .collect();
    let set_at = Instant::now();
    let expires = set_at + Duration::from_secs(60);
    let write = ctx::write();
    let first_set = redis.set(
        &write,
        &keys[0],
        Entry::new(keys[0].as_bytes().to_vec()).expires_at(expires),
    );
    first_set.await.unwrap();
    // Redis starts a PX expiry when the SET arrives: the first key may live
    // past `expires` by as long as its SET took (and a millisecond of
    // truncation), never more.
    let latest = expires + set_at.elapsed() + Duration::from_millis(1);
    for key in &keys[1..300] {
        redis
            .set(
                &ctx::write(),
                key,
                Entry::new(key.as_bytes().to_vec()).expires_at(expires),
            )
            .await
            .unwrap();
    }
    let batch: Vec<(&str, Entry)> = keys[300..]
        .iter()
        .map(|key| (key.as_str(), Entry::new(key.as_bytes().to_vec())))
        .collect();
    assert!(
        redis
            .set_many(&ctx::write(), &batch)
            .await
            .unwrap()
            .iter()
            .all(Result::is_ok)
    );
    for node in cluster.nodes() {
        let held: u64 = node.cli(&["DBSIZE"]).trim().parse().unwrap();
        assert!(held > 100, "node {} holds only {held} keys", node.port());
    }
    assert_eq!(cluster.total_keys(), 600);

    for key in keys.iter().step_by(7) {
        let entry = redis
            .get(&ctx::read(), key)
            .await
            .unwrap()
            .expect("written");
        assert_eq!(entry.value().as_ref(), key.as_bytes());
    }
    let first = redis.get(&ctx::read(), &keys[0]).await.unwrap().unwrap();
    assert!(first.expiry().unwrap() <= latest);
    assert!(first.expiry().unwrap() > expires - Duration::from_secs(5));
    assert_eq!(
        redis
            .get(&ctx::read(), &keys[599])
            .await
            .unwrap()
            .unwrap()
            .expiry(),
        None
    );

    let mut wanted: Vec<&str> = keys.iter().map(String::as_str).collect();
    wanted.push("missing");
    let got = redis.get_many(&ctx::read(), &wanted).await.unwrap();
    assert_eq!(got.len(), 601);
    for (key, result) in wanted.iter().zip(&got).take(600) {
        assert_eq!(
            result.as_ref().unwrap().as_ref().unwrap().value().as_ref(),
            key.as_bytes()
        );
    }
    assert!(got[600].as_ref().unwrap().is_none());

    assert!(redis.delete(&ctx::remove(), &keys[1]).await.unwrap());
    assert!(redis.get(&ctx::read(), &keys[1]).await.unwrap().is_none());
    assert!(!redis.delete(&ctx::remove(), &keys[1]).await.unwrap());
    // A removal leaves a marker in the value's place (`removal_markers`).
    assert_eq!(cluster.total_keys(), 600);

    // Pattern invalidation scans every primary.
    let pattern = Pattern::new(format!("reviews:author:{}:*", escape("*")));
    let live: Vec<&String> = keys
        .iter()
        .enumerate()
        .filter(|(n, _)| *n != 1)
        .map(|(_, k)| k)
        .collect();
    let expected = live.iter().filter(|key| pattern.matches(key)).count() as u64;
    assert_eq!(expected, 120);
    assert_eq!(
        redis.invalidate(&ctx::remove(), &pattern).await.unwrap(),
        expected
    );
    let after_pattern = 599 - expected;
    let glob = Pattern::new("reviews:author:?[?x]*:page:1*");
    let expected = live
        .iter()
        .filter(|key| !pattern.matches(key) && glob.matches(key))
        .count() as u64;
    assert!(expected > 0);
    assert_eq!(
        redis.invalidate(&ctx::remove(), &glob).await.unwrap(),
        expected
    );
    // Markers are not values: "*" counts only the values left.
    assert_eq!(
        redis
            .invalidate(&ctx::remove(), &Pattern::new("*"))
            .await
            .unwrap(),
        after_pattern - expected
    );
    assert_eq!(cluster.total_keys(), 600, "a marker under every key");
    let got = redis.get_many(&ctx::read(), &wanted).await.unwrap();
    assert!(got.iter().all(|read| matches!(read, Ok(None))));

    // Fills are ordered on every primary: a load that began before the
    // removals is superseded, one that began after them lands.
    let before_removals = set_at;
    for key in keys.iter().step_by(50) {
        let stale = CallContext::system(Operation::Write).with_fill_since(before_removals);
        let refused = redis.set(&stale, key, Entry::new(&b"stale"[..])).await;
        assert!(
            matches!(refused, Err(Error::Superseded { .. })),
            "{key}: {refused:?}"
        );
        let fresh = CallContext::system(Operation::Write).with_fill_since(Instant::now());
        redis
            .set(&fresh, key, Entry::new(&b"fresh"[..]))
            .await
            .unwrap();
    }
    assert_eq!(cluster.total_values(), 12);

    // Without markers, removals delete keys outright.
    let unmarked = RedisLayer::cluster_builder(cluster.urls())
        .namespace("c:")
        .removal_markers(None)
        .build()
        .await
        .unwrap();
    unmarked
        .invalidate(&ctx::remove(), &Pattern::new("*"))
        .await
        .unwrap();
    assert_eq!(cluster.total_keys(), 0);
}

#[tokio::test]
async fn the_backplane_spans_a_cluster_through_any_node() {
    use cache_core::{Backplane, BackplaneEvent, BackplaneMessage, Invalidation};
    use cache_redis::RedisBackplane;

    let cluster = RedisCluster::start();
    let urls = cluster.urls();
    let backplane = |url: String| async move {
        RedisBackplane::builder(url)
            .channel("c:invalidation")
            .timeout(Duration::from_secs(2))
            .build()
            .await
            .unwrap()
    };
    // Each instance points at a different node; Redis Cluster forwards a
    // PUBLISH to every node.
    let sender = backplane(urls[0].clone()).await;
    let receiver = backplane(urls[2].clone()).await;
    let mut subscription = receiver.subscribe().await.unwrap();
    let message = BackplaneMessage {
        origin: 1,
        invalidations: vec![Invalidation::Key("offer:7".into())],
    };
    sender.publish(&message).await.unwrap();
    let event = tokio::time::timeout(Duration::from_secs(5), subscription.next())
        .await
        .expect("the message crosses the cluster");
    assert_eq!(event, Some(BackplaneEvent::Message(message)));
}
