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

/// Moves `slot` from primary `source` to primary `target` as
/// `redis-cli --cluster reshard` does, but in steps the caller runs: start
/// (both sides marked), keys (`MIGRATE`), finish (every node told).
struct SlotMove<'a> {
    cluster: &'a RedisCluster,
    slot: String,
    source: usize,
    target: usize,
}

impl SlotMove<'_> {
    fn id(&self, node: usize) -> String {
        self.cluster.nodes()[node]
            .cli(&["CLUSTER", "MYID"])
            .trim()
            .to_owned()
    }

    fn ok(reply: String) {
        assert_eq!(reply.trim(), "OK", "{reply}");
    }

    fn start(&self) {
        let nodes = self.cluster.nodes();
        Self::ok(nodes[self.target].cli(&[
            "CLUSTER",
            "SETSLOT",
            &self.slot,
            "IMPORTING",
            &self.id(self.source),
        ]));
        Self::ok(nodes[self.source].cli(&[
            "CLUSTER",
            "SETSLOT",
            &self.slot,
            "MIGRATING",
            &self.id(self.target),
        ]));
    }

    /// Moves up to `count` of the slot's keys to the target.
    fn migrate(&self, count: usize) {
        let nodes = self.cluster.nodes();
        let listed =
            nodes[self.source].cli(&["CLUSTER", "GETKEYSINSLOT", &self.slot, &count.to_string()]);
        let keys: Vec<&str> = listed.lines().filter(|key| !key.is_empty()).collect();
        if keys.is_empty() {
            return;
        }
        let port = nodes[self.target].port().to_string();
        let mut args = vec!["MIGRATE", "127.0.0.1", &port, "", "0", "5000", "KEYS"];
        args.extend(keys);
        Self::ok(nodes[self.source].cli(&args));
    }

    fn finish(&self) {
        let target = self.id(self.target);
        for node in self.cluster.nodes() {
            Self::ok(node.cli(&["CLUSTER", "SETSLOT", &self.slot, "NODE", &target]));
        }
    }
}

/// The index of the primary holding `slot`'s keys.
fn owner_of(cluster: &RedisCluster, slot: &str) -> usize {
    // Every node answers for every slot; the owner's own line says `myself`.
    let nodes = cluster.nodes()[0].cli(&["CLUSTER", "NODES"]);
    let slot: u16 = slot.parse().unwrap();
    let owner = nodes
        .lines()
        .find(|line| {
            line.split_whitespace().skip(8).any(|range| {
                let (from, to) = range.split_once('-').unwrap_or((range, range));
                match (from.parse::<u16>(), to.parse::<u16>()) {
                    (Ok(from), Ok(to)) => (from..=to).contains(&slot),
                    _ => false,
                }
            })
        })
        .expect("an owner");
    let port: u16 = owner
        .split_whitespace()
        .nth(1)
        .unwrap()
        .split(['@', ','])
        .next()
        .unwrap()
        .rsplit_once(':')
        .unwrap()
        .1
        .parse()
        .unwrap();
    cluster
        .nodes()
        .iter()
        .position(|node| node.port() == port)
        .unwrap()
}

#[tokio::test]
async fn a_removal_by_pattern_during_a_slot_migration_leaves_nothing_it_reports_done() {
    let cluster = RedisCluster::start();
    let redis = RedisLayer::cluster_builder(cluster.urls())
        .namespace("m:")
        .timeout(Duration::from_secs(5))
        .build()
        .await
        .unwrap();
    // Every page of offer 42 in one slot (the hash tag), 60 of them.
    let key = |page: usize| format!("reviews:offer:{{42}}:page:{page}");
    let write_all = || async {
        for page in 0..60 {
            let entry =
                Entry::new(b"a page".to_vec()).expires_at(Instant::now() + Duration::from_secs(60));
            redis.set(&ctx::write(), &key(page), entry).await.unwrap();
        }
    };
    write_all().await;
    let slot = cluster.nodes()[0]
        .cli(&["CLUSTER", "KEYSLOT", &format!("m:{}", key(0))])
        .trim()
        .to_owned();
    let source = owner_of(&cluster, &slot);
    let moving = SlotMove {
        cluster: &cluster,
        slot,
        source,
        target: (source + 1) % 3,
    };
    let pattern = Pattern::new("reviews:offer:{42}:*");

    // A migration begun: whatever the passes remove, a key could be moving
    // behind them, so the removal says it may be incomplete.
    moving.start();
    let error = redis.invalidate(&ctx::write(), &pattern).await.unwrap_err();
    assert_eq!(
        error.class(),
        cache_core::ErrorClass::Unavailable,
        "{error}"
    );
    assert!(error.to_string().contains("slots kept moving"), "{error}");

    // Half the keys on each side: the same (or a redirect the client
    // could not follow: a Cluster resharding too), never Ok.
    write_all().await;
    moving.migrate(30);
    let error = redis.invalidate(&ctx::write(), &pattern).await.unwrap_err();
    assert_eq!(
        error.class(),
        cache_core::ErrorClass::Unavailable,
        "{error}"
    );

    // The slot has moved: the same call succeeds, and no key is left on
    // any node (values or markers of values: only markers may remain).
    moving.migrate(100);
    moving.finish();
    write_all().await;
    let removed = redis.invalidate(&ctx::write(), &pattern).await.unwrap();
    assert_eq!(removed, 60);
    for page in 0..60 {
        assert!(redis.get(&ctx::read(), &key(page)).await.unwrap().is_none());
    }
    let values: usize = cluster
        .nodes()
        .iter()
        .map(|node| node.values().iter().filter(|k| k.contains("{42}")).count())
        .sum();
    assert_eq!(values, 0, "a page outlived its removal");
}
