//! Coherence across instances that share one real `redis-server`: a load
//! that began before another instance's removal or write never puts its
//! value back, and a read takes value and expiry from one `GET`. Within one
//! instance, reads hammering keys that are set and deleted never see a
//! deleted version again (with the fill guard's check turned off, the
//! hammer finds one within a run: a fill from Redis racing a delete).

use std::time::Duration;

use cache_core::{CacheLayer, CallContext, Clock, Entry, Error, ManualClock, Operation};
use cache_memory::MemoryLayer;
use cache_redis::RedisLayer;
use cache_test_support::ctx;
use cache_test_support::redis::RedisServer;
use cache_tiered::{Tier, TieredCache};
use tokio::sync::oneshot;

const TTL: Duration = Duration::from_secs(300);

struct Instance {
    cache: TieredCache,
    l2: RedisLayer,
}

async fn instance(server: &RedisServer) -> Instance {
    let l2 = RedisLayer::builder(server.url())
        .namespace("offers")
        .build()
        .await
        .unwrap();
    let cache = TieredCache::builder()
        .tier(Tier::new(MemoryLayer::new()))
        .tier(Tier::new(l2.clone()))
        .build()
        .unwrap();
    Instance { cache, l2 }
}

/// What another instance does while B's loader is in flight.
#[derive(Debug, Clone, Copy)]
enum Change {
    Delete,
    Write,
}

/// Instance B starts loading version 1 of `offer:7`; meanwhile the data
/// moves to version 2 and instance A deletes the key (or writes version 2)
/// and returns; then B's load finishes. B's own caller may get version 1
/// (its call began before the change), but nobody after the change may:
/// not a fresh instance, not B's next read.
async fn a_load_racing_another_instance(change: Change) {
    let server = RedisServer::start();
    let a = instance(&server).await;
    let b = instance(&server).await;
    let (started, loading) = oneshot::channel();
    let (finish, finished) = oneshot::channel::<()>();
    let load = tokio::spawn({
        let cache = b.cache.clone();
        async move {
            cache
                .get_or_compute("offer:7", TTL, || async move {
                    started.send(()).unwrap();
                    finished.await.unwrap();
                    Ok::<u32, std::io::Error>(1)
                })
                .await
        }
    });
    loading.await.unwrap();
    match change {
        Change::Delete => {
            a.cache.delete("offer:7").await.unwrap();
        }
        Change::Write => a.cache.set("offer:7", &2u32, TTL).await.unwrap(),
    }
    finish.send(()).unwrap();
    assert_eq!(load.await.unwrap().unwrap(), 1);

    let now = match change {
        Change::Delete => None,
        Change::Write => Some(2),
    };
    let c = instance(&server).await;
    assert_eq!(
        c.cache.get::<u32>("offer:7").await.unwrap(),
        now,
        "{change:?}: a fresh instance reads what Redis holds"
    );
    assert_eq!(
        b.cache.get::<u32>("offer:7").await.unwrap(),
        now,
        "{change:?}: B kept no copy of its superseded load"
    );
    assert_eq!(b.l2.stats().stale_fills, 1, "{change:?}");
    let tiers = b.cache.stats().tiers;
    assert_eq!(tiers[1].fills_discarded, 1, "{change:?}: {tiers:?}");
}

#[tokio::test]
async fn a_load_that_began_before_another_instances_delete_never_lands() {
    a_load_racing_another_instance(Change::Delete).await;
}

#[tokio::test]
async fn a_load_that_began_before_another_instances_write_never_overwrites_it() {
    a_load_racing_another_instance(Change::Write).await;
}

/// The layer-level contract: a fill is stored over nothing or over older
/// data, and refused ([`Error::Superseded`]) over a removal or write made
/// after its load began.
#[tokio::test]
async fn fills_are_ordered_by_when_their_load_began() {
    let server = RedisServer::start();
    let redis = RedisLayer::builder(server.url())
        .namespace("t")
        .build()
        .await
        .unwrap();
    let clock = ManualClock::new();
    let write = || CallContext::new(&clock, Operation::Write);
    let fill = |since| CallContext::new(&clock, Operation::Write).with_fill_since(since);
    let entry = |v: &'static [u8]| Entry::new(v).expires_at(clock.now() + TTL);
    let read = |key| {
        let redis = &redis;
        async move {
            redis
                .get(&ctx::read(), key)
                .await
                .unwrap()
                .map(|e| e.value().clone())
        }
    };

    let before = clock.now();
    clock.advance(Duration::from_secs(1));
    // Over nothing: stored.
    redis.set(&fill(before), "k", entry(b"1")).await.unwrap();
    assert_eq!(read("k").await.as_deref(), Some(&b"1"[..]));
    // Over an older fill: stored; over a newer one: superseded.
    let later = clock.now();
    redis.set(&fill(later), "k", entry(b"2")).await.unwrap();
    let stale = redis.set(&fill(before), "k", entry(b"0")).await;
    assert!(matches!(stale, Err(Error::Superseded { .. })), "{stale:?}");
    assert_eq!(read("k").await.as_deref(), Some(&b"2"[..]));

    // After a removal, a fill of a load that began before it is refused,
    // one that began after it is stored.
    clock.advance(Duration::from_secs(1));
    assert!(
        redis
            .delete(&CallContext::new(&clock, Operation::Remove), "k")
            .await
            .unwrap()
    );
    let stale = redis.set(&fill(later), "k", entry(b"old")).await;
    assert!(matches!(stale, Err(Error::Superseded { .. })), "{stale:?}");
    assert_eq!(read("k").await, None, "the marker reads as a miss");
    clock.advance(Duration::from_secs(1));
    redis
        .set(&fill(clock.now()), "k", entry(b"new"))
        .await
        .unwrap();
    assert_eq!(read("k").await.as_deref(), Some(&b"new"[..]));

    // A write of new data replaces anything, newer fills included.
    let future = clock.now() + Duration::from_secs(60);
    redis.set(&fill(future), "k", entry(b"f")).await.unwrap();
    redis.set(&write(), "k", entry(b"w")).await.unwrap();
    assert_eq!(read("k").await.as_deref(), Some(&b"w"[..]));

    // A batch mixes the outcomes, one per entry.
    redis.delete(&ctx::remove(), "k").await.unwrap();
    let results = redis
        .set_many(
            &fill(before),
            &[("k", entry(b"stale")), ("fresh", entry(b"ok"))],
        )
        .await
        .unwrap();
    assert!(matches!(results[0], Err(Error::Superseded { .. })));
    assert!(results[1].is_ok());
    assert_eq!(redis.stats().stale_fills, 3);
}

/// Markers outlive nothing: a removed key's marker expires after
/// `removal_markers`, and with markers off a removal deletes the key.
#[tokio::test]
async fn markers_expire_and_can_be_turned_off() {
    let server = RedisServer::start();
    let marked = RedisLayer::builder(server.url())
        .namespace("m")
        .removal_markers(Duration::from_millis(200))
        .build()
        .await
        .unwrap();
    marked
        .set(&ctx::write(), "k", Entry::new(&b"v"[..]))
        .await
        .unwrap();
    assert!(marked.delete(&ctx::remove(), "k").await.unwrap());
    let pttl: i64 = server.cli(&["PTTL", "m:k"]).trim().parse().unwrap();
    assert!((1..=201).contains(&pttl), "the marker expires: {pttl}");
    assert!(server.values().is_empty());

    let plain = RedisLayer::builder(server.url())
        .namespace("p")
        .removal_markers(None)
        .build()
        .await
        .unwrap();
    plain
        .set(&ctx::write(), "k", Entry::new(&b"v"[..]))
        .await
        .unwrap();
    assert!(plain.delete(&ctx::remove(), "k").await.unwrap());
    assert_eq!(server.cli(&["EXISTS", "p:k"]).trim(), "0");
    // Without markers a fill is an unconditional write.
    let stale = CallContext::system(Operation::Write)
        .with_fill_since(std::time::Instant::now() - Duration::from_secs(60));
    plain
        .set(&stale, "k", Entry::new(&b"old"[..]))
        .await
        .unwrap();
    assert_eq!(server.values(), ["p:k"]);
}

/// A server that lost its scripts (restarted without persistence, or
/// `SCRIPT FLUSH`) gets them again: removals and fills keep working.
#[tokio::test]
async fn lost_scripts_are_loaded_again() {
    let server = RedisServer::start();
    let redis = RedisLayer::builder(server.url())
        .namespace("s")
        .build()
        .await
        .unwrap();
    server.cli(&["SCRIPT", "FLUSH"]);
    redis
        .set(&ctx::write(), "k", Entry::new(&b"v"[..]))
        .await
        .unwrap();
    assert!(redis.delete(&ctx::remove(), "k").await.unwrap());
    server.cli(&["SCRIPT", "FLUSH"]);
    let fill = CallContext::system(Operation::Write).with_fill_since(std::time::Instant::now());
    redis
        .set(&fill, "k", Entry::new(&b"new"[..]))
        .await
        .unwrap();
    assert_eq!(server.values(), ["s:k"]);
    assert_eq!(redis.stats().errors, 0);
}

/// One command per read: value and expiry come from one `GET`, so a
/// concurrent write cannot pair one write's value with another's TTL.
#[tokio::test]
async fn a_read_is_one_get() {
    let server = RedisServer::start();
    let redis = RedisLayer::builder(server.url())
        .namespace("g")
        .build()
        .await
        .unwrap();
    let expires = std::time::Instant::now() + TTL;
    redis
        .set(
            &ctx::write(),
            "k",
            Entry::new(&b"v"[..]).expires_at(expires),
        )
        .await
        .unwrap();
    server.cli(&["CONFIG", "RESETSTAT"]);
    for _ in 0..10 {
        let hit = redis.get(&ctx::read(), "k").await.unwrap().unwrap();
        let expiry = hit.expiry().unwrap();
        assert!(expiry <= expires, "never later than the writer's expiry");
        assert!(expires - expiry < Duration::from_secs(1));
    }
    redis
        .get_many(&ctx::read(), &["k", "missing"])
        .await
        .unwrap();
    let stats = server.cli(&["INFO", "commandstats"]);
    let calls = |command: &str| {
        stats
            .lines()
            .find_map(|line| line.strip_prefix(&format!("cmdstat_{command}:calls=")))
            .and_then(|rest| rest.split(',').next())
            .map_or(0, |n| n.parse::<u64>().unwrap())
    };
    assert_eq!(calls("get"), 12, "{stats}");
    assert_eq!(calls("pttl"), 0, "{stats}");
}

/// Reads hammering keys that one writer per key sets and deletes in turn,
/// through one instance's L1 over Redis: once a delete of version `v` has
/// returned, no read that begins afterwards returns `v` or older (a fill
/// from Redis racing the delete must not put it back into the L1).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_hammering_deletes_never_see_a_deleted_version_again() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    const KEYS: usize = 16;
    const CYCLES: u64 = 200;
    const READERS: usize = 6;
    let server = RedisServer::start();
    // An L1 of a few entries: reads keep missing it and filling it from
    // Redis, the fills that must not outlive a delete.
    let l1 = MemoryLayer::builder()
        .max_entries(4)
        .sweep_interval(None)
        .build()
        .unwrap();
    let l2 = RedisLayer::builder(server.url())
        .namespace("hammer")
        .build()
        .await
        .unwrap();
    let cache = Arc::new(
        TieredCache::builder()
            .tier(Tier::new(l1))
            .tier(Tier::new(l2))
            .build()
            .unwrap(),
    );
    // Per key: the highest version whose delete has returned.
    let deleted: Arc<Vec<AtomicU64>> = Arc::new((0..KEYS).map(|_| AtomicU64::new(0)).collect());
    let done = Arc::new(AtomicBool::new(false));

    let writers: Vec<_> = (0..KEYS)
        .map(|k| {
            let (cache, deleted) = (cache.clone(), deleted.clone());
            tokio::spawn(async move {
                let key = format!("hammer:{k}");
                // Pauses between the mutations, so that reads also run while
                // none is in flight: those fill the L1 (during one, a read
                // fills nothing).
                let pause = Duration::from_micros(300);
                for version in 1..=CYCLES {
                    cache.set(&key, &version, TTL).await.unwrap();
                    tokio::time::sleep(pause).await;
                    cache.delete(&key).await.unwrap();
                    deleted[k].store(version, Ordering::SeqCst);
                    tokio::time::sleep(pause).await;
                }
            })
        })
        .collect();
    let readers: Vec<_> = (0..READERS)
        .map(|r| {
            let (cache, deleted, done) = (cache.clone(), deleted.clone(), done.clone());
            tokio::spawn(async move {
                let (mut reads, mut hits) = (0u64, 0u64);
                let mut k = r;
                while !done.load(Ordering::SeqCst) {
                    k = (k + 1) % KEYS;
                    let gone_through = deleted[k].load(Ordering::SeqCst);
                    let read: Option<u64> = cache.get(&format!("hammer:{k}")).await.unwrap();
                    reads += 1;
                    // An L1 hit completes without yielding: let the writers run.
                    tokio::task::yield_now().await;
                    if let Some(version) = read {
                        hits += 1;
                        assert!(
                            version > gone_through,
                            "read version {version} of key {k} after its delete through \
                             {gone_through} had returned"
                        );
                    }
                }
                (reads, hits)
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    done.store(true, Ordering::SeqCst);
    let (mut reads, mut hits) = (0, 0);
    for reader in readers {
        let (r, h) = reader.await.unwrap();
        reads += r;
        hits += h;
    }
    // The race was run: reads overlapped the writes, and some found values.
    assert!(reads > 1_000 && hits > 0, "{reads} reads, {hits} hits");
    let stats = cache.stats();
    assert!(
        stats.tiers[0].fills > 20,
        "reads filled the L1 from Redis: {:?}",
        stats.tiers[0]
    );
}
