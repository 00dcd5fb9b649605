//! RedisBackplane over a real Redis Cluster: two caches kept in step through
//! it, a killed node the subscriptions fail over from (one gap each, then
//! messages again), and sharded pub/sub that keeps messages on the shard
//! owning the channel.
//!
//! Needs `redis-server` and `redis-cli` on PATH (`apt-get install -y
//! redis-server`); the sharded tests need Redis 7 or later and are skipped,
//! saying so, on an older server.

use std::future::Future;
use std::time::{Duration, Instant};

use cache_core::{
    Backplane, BackplaneEvent, BackplaneMessage, CacheLayer, Error, Invalidation, Subscription,
};
use cache_memory::MemoryLayer;
use cache_redis::{PubSubMode, RedisBackplane};
use cache_test_support::ctx;
use cache_test_support::redis::{RedisCluster, RedisServer};
use cache_tiered::TieredCache;

/// Generous: a failover takes the Cluster's node timeout (2 s) plus an
/// election, on a machine busy with other tests.
const DEADLINE: Duration = Duration::from_secs(20);
const TTL: Duration = Duration::from_secs(300);
const CHANNEL: &str = "offers:invalidation";

/// Whether the local `redis-server` has sharded pub/sub (Redis 7+); prints
/// why a test is skipped when it does not.
fn has_sharded_pubsub(test: &str) -> bool {
    let output = std::process::Command::new("redis-server")
        .arg("--version")
        .output()
        .expect("run redis-server --version (apt-get install -y redis-server)");
    let text = String::from_utf8_lossy(&output.stdout);
    let major = text
        .split_whitespace()
        .find_map(|word| word.strip_prefix("v="))
        .and_then(|version| version.split('.').next()?.parse::<u32>().ok());
    let sharded = major.is_some_and(|major| major >= 7);
    if !sharded {
        eprintln!(
            "skipping {test}: `{}` has no sharded pub/sub (Redis 7+)",
            text.trim()
        );
    }
    sharded
}

/// Polls `check` until it holds, for at most [`DEADLINE`].
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + DEADLINE;
    while !check().await {
        assert!(Instant::now() < deadline, "not within {DEADLINE:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The number that follows `field` in `redis-cli` output lines.
fn number_after(reply: &str, field: &str) -> u64 {
    let mut lines = reply.lines();
    while let Some(line) = lines.next() {
        if line.trim() == field {
            return lines
                .next()
                .and_then(|n| n.trim().parse().ok())
                .unwrap_or(0);
        }
    }
    panic!("no {field} in {reply:?}")
}

/// Subscribers of `channel` on this node alone (`SHARDNUMSUB` for sharded
/// subscriptions, `NUMSUB` for global ones: in a Cluster both count the
/// node's own clients).
fn local_subscribers(node: &RedisServer, sharded: bool, channel: &str) -> u64 {
    let command = if sharded { "SHARDNUMSUB" } else { "NUMSUB" };
    number_after(&node.cli(&["PUBSUB", command, channel]), channel)
}

/// The index of the node the subscriptions of `channel` are on.
fn subscribed_node(cluster: &RedisCluster, sharded: bool, channel: &str) -> usize {
    let on: Vec<usize> = (0..cluster.nodes().len())
        .filter(|&at| local_subscribers(&cluster.nodes()[at], sharded, channel) > 0)
        .collect();
    assert_eq!(on.len(), 1, "subscriptions on nodes {on:?}");
    on[0]
}

/// `INFO commandstats` calls of `command` on a node (0 if never called).
fn calls(node: &RedisServer, command: &str) -> u64 {
    let stats = node.cli(&["INFO", "commandstats"]);
    let prefix = format!("cmdstat_{command}:calls=");
    stats
        .lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .and_then(|rest| rest.split(',').next()?.parse().ok())
        .unwrap_or(0)
}

/// Messages of `kind` (`publish`, `publishshard`) a node received over the
/// cluster bus (`CLUSTER INFO` omits kinds it never saw).
fn bus_received(node: &RedisServer, kind: &str) -> u64 {
    let info = node.cli(&["CLUSTER", "INFO"]);
    let field = format!("cluster_stats_messages_{kind}_received:");
    info.lines()
        .find_map(|line| line.trim().strip_prefix(&field))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

struct Instance {
    cache: TieredCache,
    l1: MemoryLayer,
    backplane: RedisBackplane,
}

async fn instance(urls: &[String], mode: PubSubMode) -> Instance {
    let l1 = MemoryLayer::builder().sweep_interval(None).build().unwrap();
    let backplane = RedisBackplane::cluster_builder(urls.iter().cloned())
        .channel(CHANNEL)
        .pubsub_mode(mode)
        .timeout(Duration::from_secs(2))
        .build()
        .await
        .expect("build a backplane over the Cluster");
    let cache = TieredCache::builder()
        .layer(l1.clone())
        .backplane(backplane.clone())
        .build_async()
        .await
        .unwrap();
    Instance {
        cache,
        l1,
        backplane,
    }
}

impl Instance {
    async fn in_l1(&self, key: &str) -> bool {
        self.l1.get(&ctx::read(), key).await.unwrap().is_some()
    }

    /// `set`, retried while the backplane cannot publish (a failover in
    /// progress): the value is in L1 either way, the message only once
    /// published.
    async fn set_published(&self, key: &str, value: u64) {
        let before = self.cache.stats().backplane.published;
        eventually(&format!("set {key} published"), || async move {
            self.cache.set(key, &value, TTL).await.unwrap();
            self.cache.stats().backplane.published > before
        })
        .await;
    }

    /// Checks a write on `self` reaches `other`'s L1: `other` holds `key`
    /// in its L1, `self` writes it, and `other`'s copy goes.
    async fn write_reaches(&self, other: &Instance, key: &str) {
        other.cache.set(key, &1u64, TTL).await.unwrap();
        assert!(other.in_l1(key).await);
        self.set_published(key, 2).await;
        eventually(&format!("{key} dropped from the other L1"), || async move {
            !other.in_l1(key).await
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharded_backplane_fails_over_to_the_new_primary_with_one_gap() {
    if !has_sharded_pubsub("sharded_backplane_fails_over_to_the_new_primary_with_one_gap") {
        return;
    }
    let mut cluster = RedisCluster::start_replicated();
    let urls = cluster.urls();
    let a = instance(&urls, PubSubMode::Auto).await;
    let b = instance(&urls, PubSubMode::Auto).await;
    assert_eq!(a.backplane.mode(), PubSubMode::Sharded, "Redis 7 has it");
    assert_eq!(b.backplane.mode(), PubSubMode::Sharded);

    // Writes and removals reach the other instance's L1.
    a.write_reaches(&b, "offer:1").await;
    b.write_reaches(&a, "offer:2").await;
    b.cache.set("offer:3", &3u64, TTL).await.unwrap();
    assert!(b.in_l1("offer:3").await);
    let removed = a.cache.delete("offer:3").await.unwrap();
    assert!(removed.is_complete(), "{removed}");
    let b_ref = &b;
    eventually("the removal reaches b", || async move {
        !b_ref.in_l1("offer:3").await
    })
    .await;

    // Both subscriptions are on the primary owning the channel's slot.
    let owner = subscribed_node(&cluster, true, CHANNEL);
    assert!(owner < 3, "a primary (the first three nodes), not {owner}");
    assert_eq!(local_subscribers(&cluster.nodes()[owner], true, CHANNEL), 2);

    // Values each L1 holds when the owner dies.
    // (A key of its own each: the other's message about it would drop it.)
    for (key, instance) in [("kept:a", &a), ("kept:b", &b)] {
        instance.cache.set(key, &1u64, TTL).await.unwrap();
        assert!(instance.in_l1(key).await);
    }
    let gaps_before = [&a, &b].map(|i| i.cache.stats().backplane.gaps);
    assert_eq!(gaps_before, [0, 0]);
    let killed = Instant::now();
    cluster.nodes_mut()[owner].kill();

    // Its replica takes over; both subscriptions follow it, each with
    // exactly one gap, which clears its L1.
    for (name, instance) in [("a", &a), ("b", &b)] {
        eventually(&format!("{name} reports a gap"), || async move {
            instance.cache.stats().backplane.gaps >= 1
        })
        .await;
        println!("{name}: gap {:?} after the kill", killed.elapsed());
        let key = format!("kept:{name}");
        assert!(!instance.in_l1(&key).await, "{name}'s L1 was cleared");
    }
    let new_owner = (0..cluster.nodes().len())
        .filter(|&at| at != owner)
        .find(|&at| local_subscribers(&cluster.nodes()[at], true, CHANNEL) == 2)
        .expect("both subscriptions on the new primary");
    assert!(
        cluster.nodes()[new_owner]
            .cli(&["INFO", "replication"])
            .contains("role:master"),
        "node {new_owner} was promoted"
    );

    // Messages flow again, both ways, with no further gap.
    a.write_reaches(&b, "offer:4").await;
    b.write_reaches(&a, "offer:5").await;
    for (name, instance) in [("a", &a), ("b", &b)] {
        let stats = instance.cache.stats().backplane;
        assert_eq!(stats.gaps, 1, "{name}: one gap for one switch");
        assert_eq!(stats.subscribed, Some(true), "{name}");
        assert_eq!(stats.reconnects, 1, "{name}");
        let status = instance.backplane.status();
        assert_eq!(status.reconnects, 1, "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_mode_fails_over_to_another_node_with_one_gap() {
    let mut cluster = RedisCluster::start();
    let urls = cluster.urls();
    let a = instance(&urls, PubSubMode::Global).await;
    // b starts from another seed, so the two listen on different nodes.
    let mut rotated = urls.clone();
    rotated.rotate_left(1);
    let b = instance(&rotated, PubSubMode::Global).await;
    assert_eq!(a.backplane.mode(), PubSubMode::Global);

    a.write_reaches(&b, "offer:1").await;
    b.write_reaches(&a, "offer:2").await;

    // Kill the node b listens on: b moves to another node; a, elsewhere,
    // is not disturbed.
    let on = |instance_seed: &str| {
        (0..3)
            .find(|&at| cluster.nodes()[at].url() == instance_seed)
            .unwrap()
    };
    let b_node = on(&rotated[0]);
    assert_eq!(
        local_subscribers(&cluster.nodes()[b_node], false, CHANNEL),
        1
    );
    b.cache.set("kept:1", &1u64, TTL).await.unwrap();
    cluster.nodes_mut()[b_node].kill();

    let b_ref = &b;
    eventually("b reports a gap", || async move {
        b_ref.cache.stats().backplane.gaps >= 1
    })
    .await;
    assert!(!b.in_l1("kept:1").await, "b's L1 was cleared");
    let listening: u64 = (0..3)
        .filter(|&at| at != b_node)
        .map(|at| local_subscribers(&cluster.nodes()[at], false, CHANNEL))
        .sum();
    assert_eq!(listening, 2, "both subscriptions on live nodes");

    a.write_reaches(&b, "offer:3").await;
    b.write_reaches(&a, "offer:4").await;

    // Once the others mark the dead node failed, the Cluster is down for
    // keys, but global pub/sub goes on.
    let live = &cluster.nodes()[(b_node + 1) % 3];
    eventually("the Cluster notices the dead node", || async move {
        live.cli(&["CLUSTER", "INFO"])
            .contains("cluster_state:fail")
    })
    .await;
    a.write_reaches(&b, "offer:5").await;
    b.write_reaches(&a, "offer:6").await;
    assert_eq!(b.cache.stats().backplane.gaps, 1, "one gap for one switch");
    assert_eq!(b.backplane.status().reconnects, 1);
    assert_eq!(b.backplane.status().subscribed, Some(true));
    assert_eq!(a.cache.stats().backplane.gaps, 0, "a never lost its node");
}

#[tokio::test]
async fn sharded_messages_stay_on_the_channels_shard() {
    if !has_sharded_pubsub("sharded_messages_stay_on_the_channels_shard") {
        return;
    }
    let cluster = RedisCluster::start();
    let channels = ["offers:invalidation", "{user:7}:invalidation", "x"];
    for channel in channels {
        let publisher = RedisBackplane::cluster_builder(cluster.urls())
            .channel(channel)
            .timeout(Duration::from_secs(2))
            .build()
            .await
            .unwrap();
        assert_eq!(publisher.mode(), PubSubMode::Sharded);
        let listener = RedisBackplane::cluster_builder(cluster.urls())
            .channel(channel)
            .pubsub_mode(PubSubMode::Sharded)
            .timeout(Duration::from_secs(2))
            .build()
            .await
            .unwrap();
        let mut subscription = listener.subscribe().await.unwrap();
        let owner = subscribed_node(&cluster, true, channel);
        let before: Vec<(u64, u64, u64)> = cluster
            .nodes()
            .iter()
            .map(|node| {
                let relayed = bus_received(node, "publish") + bus_received(node, "publishshard");
                (calls(node, "spublish"), calls(node, "publish"), relayed)
            })
            .collect();
        for n in 0..10 {
            let sent = BackplaneMessage {
                origin: 1,
                invalidations: vec![Invalidation::Key(format!("k{n}"))],
            };
            publisher.publish(&sent).await.unwrap();
            let got = tokio::time::timeout(DEADLINE, subscription.next())
                .await
                .expect("a message within the deadline");
            assert_eq!(got, Some(BackplaneEvent::Message(sent)));
        }
        for (at, node) in cluster.nodes().iter().enumerate() {
            let spublished = calls(node, "spublish") - before[at].0;
            let published = calls(node, "publish") - before[at].1;
            assert_eq!(published, 0, "{channel}: no PUBLISH on node {at}");
            let expected = if at == owner { 10 } else { 0 };
            assert_eq!(
                spublished, expected,
                "{channel}: SPUBLISH only on the owner {owner}, node {at}"
            );
            // And nothing crossed the cluster bus to the other shards.
            let relayed = bus_received(node, "publish") + bus_received(node, "publishshard");
            assert_eq!(relayed - before[at].2, 0, "{channel}: relayed to node {at}");
        }
        // The owner is the primary of the channel's slot, as the server
        // hashes it.
        let slot: u16 = cluster.nodes()[0]
            .cli(&["CLUSTER", "KEYSLOT", channel])
            .trim()
            .parse()
            .unwrap();
        let owner_port = cluster.nodes()[owner].port();
        let slots = cluster.nodes()[0].cli(&["CLUSTER", "SLOTS"]);
        assert!(
            owns(&slots, owner_port, slot),
            "{channel}: slot {slot} not on port {owner_port}:\n{slots}"
        );
    }
}

/// Whether the primary on `port` owns `slot`, from `redis-cli CLUSTER SLOTS`
/// (one value per line: start, end, host, port, id, ...).
fn owns(slots: &str, port: u16, slot: u16) -> bool {
    let lines: Vec<&str> = slots.lines().map(str::trim).collect();
    lines.windows(4).any(|w| {
        let (Ok(start), Ok(end)) = (w[0].parse::<u16>(), w[1].parse::<u16>()) else {
            return false;
        };
        w[3] == port.to_string() && (start..=end).contains(&slot) && w[2].contains('.')
    })
}

#[tokio::test]
async fn cluster_configuration_mistakes_fail_in_build() {
    let server = RedisServer::start();
    match RedisBackplane::cluster_builder([server.url()])
        .build()
        .await
    {
        Err(Error::Config(message)) => assert!(message.contains("not a Cluster"), "{message}"),
        other => panic!("expected a config error, got {other:?}"),
    }
    let cases = [
        RedisBackplane::builder(server.url()).pubsub_mode(PubSubMode::Sharded),
        RedisBackplane::cluster_builder(Vec::<String>::new()),
        RedisBackplane::cluster_builder(["unix:///tmp/redis.sock"]),
        RedisBackplane::cluster_builder(["not a url"]),
    ];
    for builder in cases {
        let debug = format!("{builder:?}");
        match builder.build().await {
            Err(Error::Config(_)) => {}
            other => panic!("expected a config error for {debug}, got {other:?}"),
        }
    }
    // A standalone server keeps PUBLISH/SUBSCRIBE.
    let standalone = RedisBackplane::builder(server.url()).build().await.unwrap();
    assert_eq!(standalone.mode(), PubSubMode::Global);
    // Nothing listens on port 1: refused, unless lazy.
    let down = || RedisBackplane::cluster_builder(["redis://127.0.0.1:1"]);
    assert!(matches!(down().build().await, Err(Error::Backend { .. })));
    let lazy = down().lazy(true).build().await.unwrap();
    assert_eq!(
        lazy.mode(),
        PubSubMode::Auto,
        "not decided before any contact"
    );
}

#[tokio::test]
async fn auto_mode_falls_back_to_global_without_sharded_pubsub() {
    // A Cluster whose servers lack `PUBSUB` (so `PUBSUB SHARDNUMSUB` is an
    // unknown command), as before Redis 7.
    let cluster = RedisCluster::start_with(&["--rename-command", "PUBSUB", ""]);
    let a = RedisBackplane::cluster_builder(cluster.urls())
        .channel(CHANNEL)
        .timeout(Duration::from_secs(2))
        .build()
        .await
        .unwrap();
    assert_eq!(a.mode(), PubSubMode::Global);
    let mut rotated = cluster.urls();
    rotated.rotate_left(2);
    let b = RedisBackplane::cluster_builder(rotated)
        .channel(CHANNEL)
        .timeout(Duration::from_secs(2))
        .build()
        .await
        .unwrap();
    let mut subscription = b.subscribe().await.unwrap();
    let sent = BackplaneMessage {
        origin: 1,
        invalidations: vec![Invalidation::All],
    };
    a.publish(&sent).await.unwrap();
    let got = tokio::time::timeout(DEADLINE, subscription.next()).await;
    assert_eq!(got.unwrap(), Some(BackplaneEvent::Message(sent)));
    let calls = |command| -> u64 {
        cluster
            .nodes()
            .iter()
            .map(|node| calls(node, command))
            .sum()
    };
    assert_eq!(calls("publish"), 1);
    assert_eq!(calls("spublish"), 0);
    // Global: the one PUBLISH crossed the bus to every other node.
    let relayed = cluster
        .nodes()
        .iter()
        .filter(|node| bus_received(node, "publish") > 0)
        .count();
    assert_eq!(relayed, 2, "copied to the two other nodes");
}

#[tokio::test]
async fn losing_spublish_switches_to_global_with_one_gap() {
    if !has_sharded_pubsub("losing_spublish_switches_to_global_with_one_gap") {
        return;
    }
    // SSUBSCRIBE works, SPUBLISH does not: the first publish finds out.
    let cluster = RedisCluster::start_with(&["--rename-command", "SPUBLISH", ""]);
    let backplane = RedisBackplane::cluster_builder(cluster.urls())
        .channel(CHANNEL)
        .pubsub_mode(PubSubMode::Sharded)
        .timeout(Duration::from_secs(2))
        .build()
        .await
        .unwrap();
    let mut subscription = backplane.subscribe().await.unwrap();
    assert_eq!(subscribed_node_count(&cluster, true), 1);

    let sent = BackplaneMessage {
        origin: 1,
        invalidations: vec![Invalidation::Key("offer:1".into())],
    };
    backplane.publish(&sent).await.unwrap();
    assert_eq!(backplane.mode(), PubSubMode::Global);
    // The subscription moves to SUBSCRIBE: one gap. The message was sent
    // with PUBLISH before it got there, so it may or may not be heard.
    assert_eq!(next_event(&mut subscription).await, BackplaneEvent::Gap);
    let after = BackplaneMessage {
        origin: 1,
        invalidations: vec![Invalidation::Key("offer:2".into())],
    };
    backplane.publish(&after).await.unwrap();
    loop {
        match next_event(&mut subscription).await {
            BackplaneEvent::Message(got) if got == after => break,
            BackplaneEvent::Message(got) => assert_eq!(got, sent),
            BackplaneEvent::Gap => panic!("a second gap for one switch"),
        }
    }
    assert_eq!(backplane.status().reconnects, 1);
    assert_eq!(subscribed_node_count(&cluster, false), 1);
    let cluster = &cluster;
    eventually("the sharded subscription is closed", || async move {
        subscribed_node_count(cluster, true) == 0
    })
    .await;
}

/// The next event, which must come within [`DEADLINE`].
async fn next_event(subscription: &mut Box<dyn Subscription>) -> BackplaneEvent {
    tokio::time::timeout(DEADLINE, subscription.next())
        .await
        .expect("an event within the deadline")
        .expect("the backplane is alive")
}

/// Subscribers of [`CHANNEL`] on all nodes together.
fn subscribed_node_count(cluster: &RedisCluster, sharded: bool) -> u64 {
    cluster
        .nodes()
        .iter()
        .map(|node| local_subscribers(node, sharded, CHANNEL))
        .sum()
}

#[tokio::test]
async fn a_restarted_owner_without_replica_is_one_gap() {
    if !has_sharded_pubsub("a_restarted_owner_without_replica_is_one_gap") {
        return;
    }
    let mut cluster = RedisCluster::start();
    let timeout = Duration::from_millis(500);
    let backplane = RedisBackplane::cluster_builder(cluster.urls())
        .channel(CHANNEL)
        .timeout(timeout)
        .build()
        .await
        .unwrap();
    assert_eq!(backplane.mode(), PubSubMode::Sharded);
    let mut subscription = backplane.subscribe().await.unwrap();
    let owner = subscribed_node(&cluster, true, CHANNEL);
    let message = |key: &str| BackplaneMessage {
        origin: 1,
        invalidations: vec![Invalidation::Key(key.into())],
    };

    cluster.nodes_mut()[owner].kill();
    // No replica: the channel's shard is gone. Publishing fails, within
    // its timeout (the tries included), and the subscription waits.
    let started = Instant::now();
    let err = backplane
        .publish(&message("lost"))
        .await
        .expect_err("the shard is down");
    assert!(
        started.elapsed() < timeout + Duration::from_millis(500),
        "{err}"
    );
    // While its node is down the subscription yields nothing; it notices
    // the loss from within `next()`.
    let waiting = tokio::time::timeout(Duration::from_millis(700), subscription.next()).await;
    assert!(
        waiting.is_err(),
        "an event with the shard down: {waiting:?}"
    );
    assert_eq!(backplane.status().subscribed, Some(false));

    cluster.nodes_mut()[owner].restart();
    // Back with its slots (nodes.conf survives in its directory).
    assert_eq!(next_event(&mut subscription).await, BackplaneEvent::Gap);
    assert_eq!(subscribed_node(&cluster, true, CHANNEL), owner);
    let after = message("after");
    let deadline = Instant::now() + DEADLINE;
    // The first publishes may meet the node before it serves its slots.
    while let Err(err) = backplane.publish(&after).await {
        assert!(Instant::now() < deadline, "{err}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        next_event(&mut subscription).await,
        BackplaneEvent::Message(after)
    );
    assert_eq!(backplane.status().reconnects, 1);
}

#[tokio::test]
async fn a_resharded_channel_moves_with_its_slot_and_one_gap() {
    if !has_sharded_pubsub("a_resharded_channel_moves_with_its_slot_and_one_gap") {
        return;
    }
    let cluster = RedisCluster::start();
    let backplane = RedisBackplane::cluster_builder(cluster.urls())
        .channel(CHANNEL)
        .pubsub_mode(PubSubMode::Sharded)
        .timeout(Duration::from_secs(2))
        .build()
        .await
        .unwrap();
    let mut subscription = backplane.subscribe().await.unwrap();
    // Another instance, which publishes before and after the move.
    let publisher = RedisBackplane::cluster_builder(cluster.urls())
        .channel(CHANNEL)
        .timeout(Duration::from_secs(2))
        .build()
        .await
        .unwrap();
    let message = |key: &str| BackplaneMessage {
        origin: 1,
        invalidations: vec![Invalidation::Key(key.into())],
    };
    publisher.publish(&message("before")).await.unwrap();
    assert_eq!(
        next_event(&mut subscription).await,
        BackplaneEvent::Message(message("before"))
    );
    let source = subscribed_node(&cluster, true, CHANNEL);
    let target = (source + 1) % 3;
    let nodes = cluster.nodes();
    let id = |at: usize| nodes[at].cli(&["CLUSTER", "MYID"]).trim().to_owned();
    let slot = nodes[0]
        .cli(&["CLUSTER", "KEYSLOT", CHANNEL])
        .trim()
        .to_owned();

    // Move the channel's (keyless) slot to another primary, as
    // `redis-cli --cluster reshard` does.
    let ok = |reply: String| assert_eq!(reply.trim(), "OK", "{reply}");
    ok(nodes[target].cli(&["CLUSTER", "SETSLOT", &slot, "IMPORTING", &id(source)]));
    ok(nodes[source].cli(&["CLUSTER", "SETSLOT", &slot, "MIGRATING", &id(target)]));
    for at in [target, source, 3 - target - source] {
        ok(nodes[at].cli(&["CLUSTER", "SETSLOT", &slot, "NODE", &id(target)]));
    }

    // The old owner unsubscribes us (`sunsubscribe`); the subscription
    // follows the slot, with one gap.
    assert_eq!(next_event(&mut subscription).await, BackplaneEvent::Gap);
    assert_eq!(subscribed_node(&cluster, true, CHANNEL), target);
    // The publisher's view and connection still point at the old owner:
    // MOVED, a refreshed view, and the new owner, within one publish.
    let calls_before = calls(&nodes[target], "spublish");
    publisher.publish(&message("after")).await.unwrap();
    assert_eq!(calls(&nodes[target], "spublish"), calls_before + 1);
    assert_eq!(
        next_event(&mut subscription).await,
        BackplaneEvent::Message(message("after"))
    );
    assert_eq!(backplane.status().reconnects, 1);
}
