//! RedisLayer against a real three-primary Redis Cluster.
//!
//! Needs `redis-server` and `redis-cli` on PATH (`apt-get install -y redis-server`).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use cache_core::{CacheLayer, CallContext, Entry, Error, ErrorClass, Operation, Pattern, escape};
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

/// Plain connections to each node of a Cluster, for the commands a test
/// sends itself: a `redis-cli` process per command is too slow to watch a
/// removal's scan or to move a slot within it.
struct Nodes {
    conns: Vec<redis::Connection>,
    ports: Vec<u16>,
    ids: Vec<String>,
}

impl Nodes {
    fn connect(cluster: &RedisCluster) -> Nodes {
        let mut nodes = Nodes {
            conns: Vec::new(),
            ports: Vec::new(),
            ids: Vec::new(),
        };
        for node in cluster.nodes() {
            let conn = redis::Client::open(node.url())
                .unwrap()
                .get_connection()
                .unwrap();
            conn.set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            nodes.conns.push(conn);
            nodes.ports.push(node.port());
        }
        for node in 0..nodes.conns.len() {
            let id: String = nodes.run(node, &["CLUSTER", "MYID"]);
            nodes.ids.push(id);
        }
        nodes
    }

    fn run<T: redis::FromRedisValue>(&mut self, node: usize, args: &[&str]) -> T {
        let mut cmd = redis::cmd(args[0]);
        for arg in &args[1..] {
            cmd.arg(*arg);
        }
        cmd.query(&mut self.conns[node])
            .unwrap_or_else(|err| panic!("{args:?} on node {node}: {err}"))
    }

    fn ok(&mut self, node: usize, args: &[&str]) {
        let reply: String = self.run(node, args);
        assert_eq!(reply, "OK", "{args:?} on node {node}");
    }

    /// How many `SCAN`s each node has served since `CONFIG RESETSTAT`.
    fn scans(&mut self) -> Vec<u64> {
        (0..self.conns.len())
            .map(|node| {
                let info: String = self.run(node, &["INFO", "commandstats"]);
                info.lines()
                    .find_map(|line| line.strip_prefix("cmdstat_scan:calls="))
                    .and_then(|rest| rest.split(',').next())
                    .map_or(0, |calls| calls.parse().unwrap())
            })
            .collect()
    }

    /// How many keys of `slot` the node holds.
    fn keys_in_slot(&mut self, node: usize, slot: &str) -> u64 {
        self.run(node, &["CLUSTER", "COUNTKEYSINSLOT", slot])
    }
}

/// Moves `slot` from primary `source` to primary `target` as
/// `redis-cli --cluster reshard` does, but in steps the caller runs: start
/// (both sides marked), keys (`MIGRATE`), finish (every node told).
struct SlotMove {
    slot: String,
    source: usize,
    target: usize,
}

impl SlotMove {
    fn start(&self, nodes: &mut Nodes) {
        let (source, target) = (
            nodes.ids[self.source].clone(),
            nodes.ids[self.target].clone(),
        );
        nodes.ok(
            self.target,
            &["CLUSTER", "SETSLOT", &self.slot, "IMPORTING", &source],
        );
        nodes.ok(
            self.source,
            &["CLUSTER", "SETSLOT", &self.slot, "MIGRATING", &target],
        );
    }

    /// Moves up to `count` of the slot's keys to the target; returns how
    /// many it moved.
    fn migrate(&self, nodes: &mut Nodes, count: usize) -> usize {
        let keys: Vec<String> = nodes.run(
            self.source,
            &["CLUSTER", "GETKEYSINSLOT", &self.slot, &count.to_string()],
        );
        if keys.is_empty() {
            return 0;
        }
        let port = nodes.ports[self.target].to_string();
        let mut args = vec!["MIGRATE", "127.0.0.1", &port, "", "0", "5000", "KEYS"];
        args.extend(keys.iter().map(String::as_str));
        nodes.ok(self.source, &args);
        keys.len()
    }

    fn finish(&self, nodes: &mut Nodes) {
        let target = nodes.ids[self.target].clone();
        for node in 0..nodes.conns.len() {
            nodes.ok(node, &["CLUSTER", "SETSLOT", &self.slot, "NODE", &target]);
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
    let mut nodes = Nodes::connect(&cluster);
    let moving = SlotMove {
        slot,
        source,
        target: (source + 1) % 3,
    };
    let pattern = Pattern::new("reviews:offer:{42}:*");

    // A migration begun: whatever the passes remove, a key could be moving
    // behind them, so the removal says it may be incomplete.
    moving.start(&mut nodes);
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
    moving.migrate(&mut nodes, 30);
    let error = redis.invalidate(&ctx::write(), &pattern).await.unwrap_err();
    assert_eq!(
        error.class(),
        cache_core::ErrorClass::Unavailable,
        "{error}"
    );

    // The slot has moved: the same call succeeds, and no key is left on
    // any node (values or markers of values: only markers may remain).
    while moving.migrate(&mut nodes, 100) > 0 {}
    moving.finish(&mut nodes);
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

/// When, during the first pass of a removal by pattern over the primaries,
/// a slot starts to move, and between which primaries, named by their place
/// in that pass's scan order (0: scanned first; the places past `begun` are
/// the primaries the pass has not reached yet, in the cluster's order).
#[derive(Debug, Clone, Copy)]
struct Plan {
    name: &'static str,
    /// Move once this many primaries have begun to be scanned and the
    /// removal has removed its first keys.
    begun: usize,
    from: usize,
    to: usize,
    /// Keep the slot between the two primaries (half its keys moved) until
    /// the removal returns, then finish the move.
    held: bool,
}

const PLANS: [Plan; 5] = [
    // The dangerous direction: the slot's keys leave a primary the pass has
    // not reached for one it has finished with. A single pass misses them.
    Plan {
        name: "behind the scan",
        begun: 2,
        from: 2,
        to: 0,
        held: false,
    },
    Plan {
        name: "into the primary being scanned",
        begun: 1,
        from: 2,
        to: 0,
        held: false,
    },
    Plan {
        name: "from the last primary to the second, being scanned",
        begun: 2,
        from: 2,
        to: 1,
        held: false,
    },
    Plan {
        name: "ahead of the scan",
        begun: 1,
        from: 0,
        to: 2,
        held: false,
    },
    Plan {
        name: "behind the scan, held open until the removal returns",
        begun: 2,
        from: 2,
        to: 0,
        held: true,
    },
];

/// What the mover saw of one removal.
struct Moved {
    slot: String,
    source: usize,
    target: usize,
    keys: usize,
    /// The order in which the removal's first pass reached the primaries.
    order: Vec<usize>,
    /// The removal had not returned when the move began.
    began_during_the_call: bool,
    /// Nor when the move ended.
    ended_during_the_call: bool,
    /// The removal had not scanned the source yet when the move ended: the
    /// slot's keys left their primary before any pass reached it.
    source_unscanned_at_the_end: bool,
    took: Duration,
}

impl std::fmt::Display for Moved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "slot {} ({} keys) moved from node {} to node {} in {:?} (first pass reached nodes {:?} \
             first); the call was running when the move began: {}, when it ended: {}; the source \
             was not scanned yet when it ended: {}",
            self.slot,
            self.keys,
            self.source,
            self.target,
            self.took,
            self.order,
            self.began_during_the_call,
            self.ended_during_the_call,
            self.source_unscanned_at_the_end
        )
    }
}

/// Waits (polling, with a deadline) until the removal has got as far as
/// `plan` says, then moves a slot holding tagged keys as it says. `None`
/// when the removal returned first.
fn move_during_removal(
    nodes: &mut Nodes,
    plan: Plan,
    slots: &[String],
    removal_done: &AtomicBool,
    redis: &RedisLayer,
    removed_before: u64,
) -> Option<Moved> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut order: Vec<usize> = Vec::new();
    loop {
        if removal_done.load(Ordering::SeqCst) {
            return None;
        }
        // Which primaries have served a SCAN (stats reset before the call),
        // in the order they began: the one with more SCANs first when two
        // began between two polls.
        let scans = nodes.scans();
        let mut begun: Vec<usize> = (0..scans.len())
            .filter(|node| scans[*node] > 0 && !order.contains(node))
            .collect();
        begun.sort_by_key(|node| std::cmp::Reverse(scans[*node]));
        order.extend(begun);
        // The layer counts removed keys batch by batch: it has begun deleting.
        if order.len() >= plan.begun && redis.stats().removals > removed_before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the removal did not get that far within 20 s (scans {scans:?})"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    let scanned = order.len();
    order.extend(
        (0..3)
            .filter(|node| !order.contains(node))
            .collect::<Vec<_>>(),
    );
    let (source, target) = (order[plan.from], order[plan.to]);
    let slot = slots
        .iter()
        .find(|slot| nodes.keys_in_slot(source, slot) > 0)
        .expect("a tagged slot left on the source")
        .clone();
    let moving = SlotMove {
        slot,
        source,
        target,
    };
    let started = Instant::now();
    let began_during_the_call = !removal_done.load(Ordering::SeqCst);
    moving.start(nodes);
    let mut keys = 0;
    if plan.held {
        let half = nodes.keys_in_slot(source, &moving.slot) as usize / 2;
        keys += moving.migrate(nodes, half);
        while !removal_done.load(Ordering::SeqCst) {
            assert!(Instant::now() < deadline, "the removal did not return");
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    loop {
        let moved = moving.migrate(nodes, 100);
        if moved == 0 {
            break;
        }
        keys += moved;
    }
    moving.finish(nodes);
    let ended_during_the_call = !removal_done.load(Ordering::SeqCst);
    let took = started.elapsed();
    let source_unscanned_at_the_end = nodes.scans()[source] == 0;
    order.truncate(scanned);
    Some(Moved {
        slot: moving.slot,
        source,
        target,
        keys,
        order,
        began_during_the_call,
        ended_during_the_call,
        source_unscanned_at_the_end,
        took,
    })
}

/// Checks every node's keys directly: no value `pattern` matches (a
/// removal leaves markers, which are not values), and every value in
/// `others` still there, once.
fn assert_only_others_left(
    cluster: &RedisCluster,
    pattern: &Pattern,
    others: &BTreeSet<String>,
    what: &str,
) {
    let mut kept = BTreeSet::new();
    let mut outlived = Vec::new();
    for node in cluster.nodes() {
        for key in node.values() {
            let key = key.strip_prefix("s:").expect("in the namespace").to_owned();
            if pattern.matches(&key) {
                outlived.push(key);
            } else {
                assert!(kept.insert(key.clone()), "{what}: {key} on two nodes");
            }
        }
    }
    assert!(
        outlived.is_empty(),
        "{what}: {} matching values outlived the removal, e.g. {:?}",
        outlived.len(),
        &outlived[..outlived.len().min(5)]
    );
    let lost: Vec<&String> = others.difference(&kept).take(5).collect();
    assert!(
        lost.is_empty() && kept.len() == others.len(),
        "{what}: values the pattern does not match were lost ({} kept of {}), e.g. {lost:?}",
        kept.len(),
        others.len()
    );
}

#[tokio::test]
async fn a_slot_moved_while_a_removal_by_pattern_runs_leaves_nothing_it_reports_done() {
    let test_started = Instant::now();
    let cluster = RedisCluster::start();
    // Small SCAN batches: a pass is many short steps the mover can watch,
    // and long enough to move a slot within one primary's scan.
    let redis = RedisLayer::cluster_builder(cluster.urls())
        .namespace("s:")
        .timeout(Duration::from_secs(10))
        .scan_count(100)
        .build()
        .await
        .unwrap();
    let mut nodes = Nodes::connect(&cluster);

    // Five hash tags (slots) on each primary: each attempt moves one of
    // them away from whichever primary its plan names.
    let mut tags: Vec<String> = Vec::new();
    let mut slots: Vec<String> = Vec::new();
    let mut per_node = [0; 3];
    for n in 0.. {
        if per_node.iter().all(|&count| count == 5) {
            break;
        }
        let tag = format!("t{n}");
        let slot: i64 = nodes.run(0, &["CLUSTER", "KEYSLOT", &tag]);
        let owner = owner_of(&cluster, &slot.to_string());
        if per_node[owner] < 5 && !slots.contains(&slot.to_string()) {
            per_node[owner] += 1;
            tags.push(tag);
            slots.push(slot.to_string());
        }
    }
    // 8,250 keys to remove (6,000 over every slot, 150 in each tagged slot)
    // and 1,225 that must stay, in the same slots.
    let pattern = Pattern::new("reviews:offer:*");
    let mut matching: Vec<String> = (0..6000)
        .map(|n| format!("reviews:offer:{n}:page:{}", n % 7))
        .collect();
    let mut others: Vec<String> = (0..1000).map(|n| format!("rating:offer:{n}")).collect();
    for tag in &tags {
        matching.extend((0..150).map(|page| format!("reviews:offer:{{{tag}}}:page:{page}")));
        others.extend((0..15).map(|n| format!("reviews:offers:{{{tag}}}:{n}")));
    }
    assert!(matching.iter().all(|key| pattern.matches(key)));
    assert!(!others.iter().any(|key| pattern.matches(key)));
    let all: Vec<&String> = matching.iter().chain(&others).collect();
    let others: BTreeSet<String> = others.iter().cloned().collect();
    let slots = Arc::new(slots);

    let mut moves = Vec::new();
    for (attempt, plan) in PLANS.into_iter().enumerate() {
        // Values again where the last attempt left markers.
        for chunk in all.chunks(2000) {
            let batch: Vec<(&str, Entry)> = chunk
                .iter()
                .map(|key| (key.as_str(), Entry::new(b"v".to_vec())))
                .collect();
            let writes = redis.set_many(&ctx::write(), &batch).await.unwrap();
            assert!(writes.iter().all(Result::is_ok));
        }
        assert_eq!(cluster.total_values(), all.len() as u64);
        for node in 0..3 {
            nodes.ok(node, &["CONFIG", "RESETSTAT"]);
        }
        let removed_before = redis.stats().removals;

        let done = Arc::new(AtomicBool::new(false));
        let removal = tokio::spawn({
            let (redis, pattern, done) = (redis.clone(), pattern.clone(), done.clone());
            async move {
                let started = Instant::now();
                let outcome = redis.invalidate(&ctx::remove(), &pattern).await;
                done.store(true, Ordering::SeqCst);
                (outcome, started.elapsed())
            }
        });
        let mover = tokio::task::spawn_blocking({
            let (redis, slots) = (redis.clone(), slots.clone());
            move || {
                let moved =
                    move_during_removal(&mut nodes, plan, &slots, &done, &redis, removed_before);
                (nodes, moved)
            }
        });
        let (back, moved) = mover.await.unwrap();
        nodes = back;
        let (outcome, took) = removal.await.unwrap();
        let what = match &moved {
            Some(moved) => format!("attempt {attempt} ({}): {moved}", plan.name),
            None => format!("attempt {attempt} ({}): the call returned first", plan.name),
        };
        eprintln!("{what}\n  removal: {outcome:?} in {took:?}");

        // The move is over. Ok means every matching value is gone; Err must
        // be a Cluster resharding, and the same call now succeeds.
        let reported = match outcome {
            Ok(removed) => Some(removed),
            Err(error) => {
                assert_eq!(error.class(), ErrorClass::Unavailable, "{what}: {error}");
                let left = cluster
                    .nodes()
                    .iter()
                    .flat_map(|node| node.values())
                    .filter(|key| pattern.matches(&key["s:".len()..]))
                    .count() as u64;
                let removed = redis.invalidate(&ctx::remove(), &pattern).await;
                assert_eq!(
                    removed.unwrap(),
                    left,
                    "{what}: the call once the slot moved"
                );
                None
            }
        };
        assert_only_others_left(&cluster, &pattern, &others, &what);
        if let Some(removed) = reported {
            assert!(
                !plan.held || moved.is_none(),
                "{what}: Ok while the slot was being migrated"
            );
            assert_eq!(removed, matching.len() as u64, "{what}: values removed");
        }
        moves.push((plan, moved));
    }

    // The point of the test: the slot moved while one removal call ran.
    let overlapped = moves
        .iter()
        .filter(|(plan, moved)| {
            !plan.held
                && moved
                    .as_ref()
                    .is_some_and(|moved| moved.began_during_the_call && moved.ended_during_the_call)
        })
        .count();
    let behind = moves
        .iter()
        .filter(|(plan, moved)| {
            plan.to < plan.begun
                && moved
                    .as_ref()
                    .is_some_and(|moved| moved.source_unscanned_at_the_end)
        })
        .count();
    eprintln!(
        "{overlapped} of {} complete moves within a removal call; {behind} carried keys from a \
         primary the first pass had not reached to one it had; {:?} in all",
        PLANS.len() - 1,
        test_started.elapsed()
    );
    assert!(overlapped > 0, "no slot moved during a removal call");
}
