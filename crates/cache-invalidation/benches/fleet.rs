//! A fleet in one process, to check the capacity model of `docs/scale.md`
//! against what it predicts.
//!
//! For each fleet size `I` in [`INSTANCES`], `I` instances of the common
//! stack share one local `redis-server`: each a `TieredCache` of a
//! `MemoryLayer` L1 over a `RedisLayer` L2, with its own `RedisBackplane`
//! (its own publishing and subscription connections, as each process of a
//! real fleet has). The reads run alone first for [`BASELINE`], to learn
//! the CPU they take; then, for each offered write rate `W` (the limit
//! the model predicts for `I` on this machine, times each of [`LOADS`]),
//! for [`RUN`]:
//!
//! - [`READS_PER_SECOND`] reads in all, paced, from every instance in
//!   turn, of [`KEYS`] hot keys (an L1 hit, or a `GET` from Redis on a
//!   miss, which fills the L1), at most [`READS_IN_FLIGHT`] at once;
//! - `W` writes per second, paced, from every instance in turn, to any of
//!   [`WRITE_KEYS`] keys (the hot ones among them), at most
//!   [`WRITES_IN_FLIGHT`] per instance at once: each a `TieredCache::set`
//!   (a `SET`, then one backplane message), which every other instance
//!   applies by dropping the key from its L1;
//! - about [`PROBES_PER_SECOND`] of those writes go to keys of their own
//!   (`probe:{n}`), whose removal from each L1 is timed (each L1 is
//!   wrapped in a layer that notes when a probe key is removed): the
//!   staleness window of a write is the time from its `set` returning
//!   until the last other instance's L1 has dropped the key (from then on
//!   every L1 answers a miss, then the new value).
//!
//! Measured per point: writes per second, messages delivered per second to
//! every instance (the writes over the time until the last instance had
//! the last one, which the load's end is followed by), messages lost,
//! reads per second, the L1 hit ratio, Redis `GET`s per second (`INFO
//! commandstats`), the staleness window (p50, p99, max) and the CPU this
//! process and `redis-server` used. Beside them, what the model predicts
//! for the same `I`, `W` and reads, and measured ÷ model. The model's
//! inputs (CPU per delivery and per write, of Redis and of the instances)
//! come from `capacity.json` when it is there (`cargo xtask bench` runs
//! the benchmarks in name order, `capacity` before `fleet`), else from the
//! figures `docs/scale.md` quotes.
//!
//! Everything (Redis, every instance, the load) shares this machine's
//! cores, where a real fleet spreads the instances over machines of their
//! own: the simulation checks the model's arithmetic with this machine's
//! cores in it, not a fleet's capacity.
//!
//! Results go to `target/bench/fleet.json` (or
//! `$CARGO_TARGET_DIR/bench/fleet.json`).
//!
//! Run: `cargo bench -p cache-invalidation --bench fleet` (about 40 s;
//! needs `redis-server`). Without `--bench` (`cargo test --benches`) it
//! does nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cache_core::{
    CacheLayer, CallContext, Clock, Entry, LayerStats, Lookups, Pattern, ReadNow, Result, Writes,
    async_trait,
};
use cache_memory::MemoryLayer;
use cache_redis::{RedisBackplane, RedisLayer};
use cache_test_support::bench::{
    Offer, cpu_seconds, load_average, offer, target_dir, write_results,
};
use cache_test_support::redis::RedisServer;
use cache_tiered::{Tier, TieredCache};
use serde_json::json;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// Fleet sizes.
const INSTANCES: [usize; 3] = [4, 16, 64];
/// Offered invalidation rates, as multiples of the model's limit for the
/// fleet's size: below it, at it, and past it.
const LOADS: [f64; 3] = [0.5, 1.0, 2.0];
/// How long each point offers its load.
const RUN: Duration = Duration::from_secs(3);
/// How long the reads run alone first, to learn what they cost.
const BASELINE: Duration = Duration::from_secs(1);
/// The keys read: the hot ones.
const KEYS: u64 = 1_000;
/// The keys written (probes aside): the hot ones are among them.
const WRITE_KEYS: u64 = 100_000;
/// Reads per second offered to the whole fleet.
const READS_PER_SECOND: f64 = 50_000.0;
/// Reads in flight at most, in the whole fleet.
const READS_IN_FLIGHT: usize = 1_024;
/// Writes in flight at most, per instance (its request handlers).
const WRITES_IN_FLIGHT: usize = 16;
/// Writes whose staleness window is timed, per second (at most one write
/// in `W / PROBES_PER_SECOND`, every write below that rate).
const PROBES_PER_SECOND: f64 = 500.0;
/// The pacing of reads and writes.
const TICK: Duration = Duration::from_millis(1);
/// How long the last message may take to reach every instance once the
/// load stops.
const DRAIN: Duration = Duration::from_secs(20);
const TTL: Duration = Duration::from_secs(600);
const CHANNEL: &str = "fleet:invalidation";

/// The model's inputs (see `docs/scale.md`): CPU per operation, in µs.
struct Model {
    /// Redis, per delivery (one message to one subscriber).
    redis_per_delivery: f64,
    /// Redis, per write before its message fans out (its `SET`, its
    /// `PUBLISH`).
    redis_per_write: f64,
    /// A subscriber (a cache: its subscription and its listener's removal
    /// from the L1), per message it receives.
    subscriber_per_delivery: f64,
    /// The writing instance, per write (the client side of the `SET` and
    /// the `PUBLISH`).
    writer_per_write: f64,
    /// `GET`s one shard serves per second.
    gets_per_second: f64,
    /// This machine's cores, which the simulation shares with Redis.
    cores: f64,
    /// Where the CPU figures came from.
    source: String,
}

impl Model {
    /// From this run's `capacity.json` if there is one, else the figures
    /// `docs/scale.md` quotes.
    fn load() -> Model {
        let mut model = Model {
            redis_per_delivery: 1.2,
            redis_per_write: 15.0,
            subscriber_per_delivery: 3.4,
            writer_per_write: 25.0,
            gets_per_second: 150_000.0,
            cores: std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64),
            source: "docs/scale.md".to_owned(),
        };
        let path = target_dir().join("bench").join("capacity.json");
        let path = path.canonicalize().unwrap_or(path);
        let Some(capacity) = std::fs::read_to_string(&path)
            .ok()
            .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        else {
            return model;
        };
        // Redis's cost per delivery at the largest fan-out (the share of
        // the publish itself is smallest there), a cache's as subscriber.
        let fan_out = capacity["backplane"].as_array().and_then(|points| {
            points
                .iter()
                .max_by_key(|point| point["subscribers"].as_u64().unwrap_or(0))
        });
        let writes = &capacity["writes"];
        let caches = &capacity["cache_subscribers"];
        if let (Some(fan_out), Some(redis_per_write), Some(writer_per_write)) = (
            fan_out,
            writes["redis_cpu_us_per_write"].as_f64(),
            writes["process_cpu_us_per_write"].as_f64(),
        ) && let (Some(redis), Some(subscriber)) = (
            fan_out["redis_cpu_us_per_delivery"].as_f64(),
            caches["process_cpu_us_per_delivery"].as_f64(),
        ) {
            model.redis_per_delivery = redis;
            model.subscriber_per_delivery = subscriber;
            model.redis_per_write = redis_per_write;
            model.writer_per_write = writer_per_write;
            model.source = path.display().to_string();
        }
        model
    }

    /// Writes per second one Redis core carries for a fleet of `instances`
    /// (each instance on a machine of its own): `W_max`.
    fn redis_limit(&self, instances: usize) -> f64 {
        1e6 / (self.redis_per_write + instances as f64 * self.redis_per_delivery)
    }

    /// Writes per second this machine carries when Redis, the writer and
    /// every subscriber share its cores, as in the simulation.
    /// `busy`: the cores something else keeps busy (the reads).
    fn machine_limit(&self, instances: usize, busy: f64) -> f64 {
        let per_write = self.redis_per_write
            + self.writer_per_write
            + instances as f64 * (self.redis_per_delivery + self.subscriber_per_delivery);
        (self.cores - busy).max(0.1) * 1e6 / per_write
    }

    /// The staleness window below the limit, in ms: the time this machine
    /// takes to make one message's deliveries and have them received.
    fn staleness_ms(&self, instances: usize) -> f64 {
        instances as f64 * (self.redis_per_delivery + self.subscriber_per_delivery)
            / self.cores
            / 1e3
    }
}

/// When one probe write was made, and when the other instances' L1s
/// dropped its key; nanoseconds since [`Probes::epoch`], 0 for not yet.
#[derive(Debug, Default)]
struct Slot {
    started: AtomicU64,
    returned: AtomicU64,
    last_removed: AtomicU64,
    removed: AtomicU32,
}

/// The probe writes of a fleet's whole run, numbered from 0.
#[derive(Debug)]
struct Probes {
    epoch: Instant,
    slots: Vec<Slot>,
    next: AtomicU64,
}

impl Probes {
    fn new(capacity: usize) -> Self {
        Probes {
            epoch: Instant::now(),
            slots: (0..capacity).map(|_| Slot::default()).collect(),
            next: AtomicU64::new(0),
        }
    }

    fn now(&self) -> u64 {
        (self.epoch.elapsed().as_nanos() as u64).max(1)
    }

    /// A fresh probe's number.
    fn take(&self) -> usize {
        let n = self.next.fetch_add(1, Ordering::Relaxed) as usize;
        assert!(n < self.slots.len(), "more probes than planned");
        n
    }

    /// An instance's L1 dropped `key`.
    fn removed(&self, key: &str) {
        let Some(slot) = key
            .strip_prefix("probe:")
            .and_then(|n| n.parse::<usize>().ok())
            .and_then(|n| self.slots.get(n))
        else {
            return;
        };
        slot.last_removed.fetch_max(self.now(), Ordering::Relaxed);
        slot.removed.fetch_add(1, Ordering::Release);
    }
}

/// An instance's L1: a `MemoryLayer` that notes when a probe key is
/// removed from it. A write's own instance never removes its key (its
/// listener skips its own messages): the others do, once each.
#[derive(Debug)]
struct ProbedL1 {
    inner: MemoryLayer,
    probes: Arc<Probes>,
}

#[async_trait]
impl CacheLayer for ProbedL1 {
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn get_many(&self, ctx: &CallContext<'_>, keys: &[&str]) -> Result<Lookups> {
        self.inner.get_many(ctx, keys).await
    }

    async fn set_many(&self, ctx: &CallContext<'_>, entries: &[(&str, Entry)]) -> Result<Writes> {
        self.inner.set_many(ctx, entries).await
    }

    async fn delete_many(&self, ctx: &CallContext<'_>, keys: &[&str]) -> Result<u64> {
        let removed = self.inner.delete_many(ctx, keys).await;
        for key in keys {
            self.probes.removed(key);
        }
        removed
    }

    async fn invalidate(&self, ctx: &CallContext<'_>, pattern: &Pattern) -> Result<u64> {
        self.inner.invalidate(ctx, pattern).await
    }

    async fn get(&self, ctx: &CallContext<'_>, key: &str) -> Result<Option<Entry>> {
        self.inner.get(ctx, key).await
    }

    async fn set(&self, ctx: &CallContext<'_>, key: &str, entry: Entry) -> Result<()> {
        self.inner.set(ctx, key, entry).await
    }

    async fn delete(&self, ctx: &CallContext<'_>, key: &str) -> Result<bool> {
        let removed = self.inner.delete(ctx, key).await;
        self.probes.removed(key);
        removed
    }

    fn get_now(&self, clock: &dyn Clock, key: &str) -> ReadNow {
        self.inner.get_now(clock, key)
    }

    fn stats(&self) -> LayerStats {
        self.inner.stats()
    }
}

async fn instance(server: &RedisServer, index: usize, probes: &Arc<Probes>) -> TieredCache {
    let l1 = ProbedL1 {
        inner: MemoryLayer::builder()
            .sweep_interval(None)
            .build()
            .expect("L1"),
        probes: probes.clone(),
    };
    let l2 = RedisLayer::builder(server.url())
        .namespace("fleet:")
        .timeout(Duration::from_secs(10))
        .build()
        .await
        .expect("L2");
    let backplane = RedisBackplane::builder(server.url())
        .channel(CHANNEL)
        .timeout(Duration::from_secs(10))
        .build()
        .await
        .expect("backplane");
    TieredCache::builder()
        .name(format!("instance-{index}"))
        .layer(l1)
        .tier(Tier::new(l2))
        .backplane(backplane)
        .build_async()
        .await
        .expect("cache")
}

/// A small xorshift generator: the keys read and written, no dependency.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Calls `op(seq)` `per_second` times a second (each in a task of its
/// own, at most `in_flight` at once) until `until` says stop; returns how
/// many returned, and when the last one did.
async fn paced<F, Fut>(
    per_second: f64,
    in_flight: usize,
    until: impl Fn() -> bool,
    mut op: F,
) -> (u64, Instant)
where
    F: FnMut(u64) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let in_flight = Arc::new(Semaphore::new(in_flight));
    let mut tasks = JoinSet::new();
    let mut interval = tokio::time::interval(TICK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let started = Instant::now();
    let mut issued = 0u64;
    let mut done = 0u64;
    while !until() {
        interval.tick().await;
        let due = (per_second * started.elapsed().as_secs_f64()) as u64;
        while issued < due && !until() {
            let permit = in_flight.clone().acquire_owned().await.expect("semaphore");
            let call = op(issued);
            issued += 1;
            tasks.spawn(async move {
                call.await;
                drop(permit);
            });
        }
        while let Some(finished) = tasks.try_join_next() {
            finished.expect("a paced call");
            done += 1;
        }
    }
    while let Some(finished) = tasks.join_next().await {
        finished.expect("a paced call");
        done += 1;
    }
    (done, Instant::now())
}

/// The reads: [`READS_PER_SECOND`] from every instance in turn, of the
/// [`KEYS`] hot keys, until `over` says stop; how many returned.
async fn read_load(fleet: &[TieredCache], over: impl Fn() -> bool) -> (u64, Instant) {
    let fleet = fleet.to_vec();
    let instances = fleet.len() as u64;
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    paced(READS_PER_SECOND, READS_IN_FLIGHT, over, move |seq| {
        let cache = fleet[(seq % instances) as usize].clone();
        let key = format!("offer:{}", rng.below(KEYS));
        async move {
            let found = cache.get::<Offer>(&key).await.expect("read");
            assert!(found.is_some(), "{key} is in Redis");
        }
    })
    .await
}

/// The reads alone for [`BASELINE`]: reads per second, and the CPU (this
/// process's and Redis's) they keep busy, in cores.
async fn reads_only(server: &RedisServer, fleet: &[TieredCache]) -> (f64, f64) {
    let (cpu, redis_cpu) = (cpu_seconds(None), cpu_seconds(server.pid()));
    let started = Instant::now();
    let (reads, _) = read_load(fleet, || started.elapsed() >= BASELINE).await;
    let seconds = started.elapsed().as_secs_f64();
    let cores = (cpu_seconds(None) - cpu + cpu_seconds(server.pid()) - redis_cpu) / seconds;
    (reads as f64 / seconds, cores)
}

/// `calls` of a command in `INFO commandstats`.
fn calls(server: &RedisServer, command: &str) -> u64 {
    let info = server.cli(&["INFO", "commandstats"]);
    let prefix = format!("cmdstat_{command}:calls=");
    info.lines()
        .find_map(|line| line.strip_prefix(prefix.as_str()))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// Rounds for the JSON: three significant decimals are plenty.
fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

struct Point<'a> {
    server: &'a RedisServer,
    fleet: &'a [TieredCache],
    probes: &'a Arc<Probes>,
    model: &'a Model,
    load: f64,
    /// The cores the reads keep busy by themselves.
    read_cores: f64,
}

async fn point(p: Point<'_>) -> serde_json::Value {
    let Point {
        server,
        fleet,
        probes,
        model,
        load,
        read_cores,
    } = p;
    let instances = fleet.len();
    let limit = model.machine_limit(instances, read_cores);
    let offered = limit * load;
    let first_probe = probes.next.load(Ordering::Relaxed) as usize;
    let received = |cache: &TieredCache| cache.stats().backplane.received;
    let l1_hits = |cache: &TieredCache| cache.stats().tiers[0].hits;
    let received_before: Vec<u64> = fleet.iter().map(received).collect();
    let hits_before: u64 = fleet.iter().map(l1_hits).sum();
    let gets_before = calls(server, "get");
    let (cpu_before, redis_cpu_before) = (cpu_seconds(None), cpu_seconds(server.pid()));

    // The writes: from every instance in turn (each instance of a fleet
    // writes its share), to any of WRITE_KEYS keys, one in `probe_every`
    // to a probe key of its own.
    let started = Instant::now();
    let over = || started.elapsed() >= RUN;
    let probe_every = (offered / PROBES_PER_SECOND).ceil().max(1.0) as u64;
    let written: Arc<Vec<AtomicU64>> =
        Arc::new((0..instances).map(|_| AtomicU64::new(0)).collect());
    let writes = {
        let fleet = fleet.to_vec();
        let probes = probes.clone();
        let written = written.clone();
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        paced(offered, WRITES_IN_FLIGHT * instances, over, move |seq| {
            let writer = (seq % instances as u64) as usize;
            let cache = fleet[writer].clone();
            let probe = (seq % probe_every == 0).then(|| probes.take());
            let key = match probe {
                Some(n) => format!("probe:{n}"),
                None => format!("offer:{}", rng.below(WRITE_KEYS)),
            };
            let (probes, written) = (probes.clone(), written.clone());
            async move {
                if let Some(n) = probe {
                    probes.slots[n]
                        .started
                        .store(probes.now(), Ordering::Relaxed);
                }
                cache.set(&key, &offer(seq), TTL).await.expect("write");
                if let Some(n) = probe {
                    probes.slots[n]
                        .returned
                        .store(probes.now(), Ordering::Relaxed);
                }
                written[writer].fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let reads = read_load(fleet, over);
    let ((writes, writes_done), (reads, _)) = tokio::join!(writes, reads);
    let read_time = started.elapsed();
    let (cpu_after, redis_cpu_after) = (cpu_seconds(None), cpu_seconds(server.pid()));
    let gets = calls(server, "get") - gets_before;
    let hits = fleet.iter().map(l1_hits).sum::<u64>() - hits_before;

    // One last probe: once every instance has dropped it, each has applied
    // every message before it (a subscription delivers in order).
    let last = probes.take();
    probes.slots[last]
        .started
        .store(probes.now(), Ordering::Relaxed);
    fleet[0]
        .set(&format!("probe:{last}"), &offer(0), TTL)
        .await
        .expect("last write");
    probes.slots[last]
        .returned
        .store(probes.now(), Ordering::Relaxed);
    let others = (instances - 1) as u32;
    let deadline = Instant::now() + DRAIN;
    while probes.slots[last].removed.load(Ordering::Acquire) < others {
        assert!(
            Instant::now() < deadline,
            "the last message did not reach every instance within {DRAIN:?}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let delivered_at = probes.epoch
        + Duration::from_nanos(probes.slots[last].last_removed.load(Ordering::Relaxed));
    let delivery_time = delivered_at.duration_since(started);
    let messages = writes + 1;
    // What each instance should have received: every message but its own.
    let lost = fleet
        .iter()
        .zip(&received_before)
        .enumerate()
        .map(|(i, (cache, before))| {
            let own = written[i].load(Ordering::Relaxed) + u64::from(i == 0);
            (messages - own).saturating_sub(received(cache) - before)
        })
        .max()
        .unwrap_or(0);

    // The staleness windows of the probes that reached every instance.
    let (mut windows, mut trips, mut incomplete) = (Vec::new(), Vec::new(), 0u64);
    for slot in &probes.slots[first_probe..last] {
        if slot.removed.load(Ordering::Acquire) < others {
            incomplete += 1;
            continue;
        }
        let removed = slot.last_removed.load(Ordering::Relaxed);
        let ms = |from: u64| removed.saturating_sub(from) as f64 / 1e6;
        windows.push(ms(slot.returned.load(Ordering::Relaxed)));
        trips.push(ms(slot.started.load(Ordering::Relaxed)));
    }
    windows.sort_by(f64::total_cmp);
    trips.sort_by(f64::total_cmp);

    let seconds = read_time.as_secs_f64();
    let published = writes as f64 / writes_done.duration_since(started).as_secs_f64();
    let delivered_each = messages as f64 / delivery_time.as_secs_f64();
    let reads_per_second = reads as f64 / seconds;
    let hit_ratio = hits as f64 / reads.max(1) as f64;
    let gets_per_second = gets as f64 / seconds;
    let staleness = [0.5, 0.99, 1.0].map(|q| quantile(&windows, q));

    // What the model predicts for the same fleet, load and reads.
    let deliveries = delivered_each * instances as f64;
    let model_delivered = offered.min(limit);
    let utilization = offered / limit;
    let model_redis_cpu = model_delivered
        * (model.redis_per_write + instances as f64 * model.redis_per_delivery)
        / 1e6;
    let model_staleness_ms = model.staleness_ms(instances);
    // Reads are the L1's, and the misses Redis's: the model puts no limit
    // on them short of `R_max`.
    let model_reads = READS_PER_SECOND;
    let r_max = model.gets_per_second / (1.0 - hit_ratio).max(1e-9);
    let model_gets = reads_per_second * (1.0 - hit_ratio);
    let redis_cpu = (redis_cpu_after - redis_cpu_before) / seconds;
    let process_cpu = (cpu_after - cpu_before) / seconds;

    println!(
        "fleet: {instances:>2} instances, {offered:>6.0} writes/s offered ({load}x the model's \
         limit): {published:>6.0} published/s, {delivered_each:>6.0} delivered/s to each \
         (model {model_delivered:.0}), {reads_per_second:>6.0} reads/s (L1 hits {:.1}%), \
         staleness p50 {:.2} ms p99 {:.2} ms max {:.2} ms (model {model_staleness_ms:.2} ms), \
         {lost} lost; cores: this process {process_cpu:.2}, redis {redis_cpu:.2} \
         (model {model_redis_cpu:.2})",
        hit_ratio * 100.0,
        staleness[0],
        staleness[1],
        staleness[2],
    );
    json!({
        "instances": instances,
        "load_over_model_limit": load,
        "offered_writes_per_second": round(offered),
        "offered_reads_per_second": READS_PER_SECOND,
        "measured": {
            "published_per_second": round(published),
            "delivered_per_second_each": round(delivered_each),
            "deliveries_per_second": round(deliveries),
            "messages": messages,
            "lost": lost,
            "reads_per_second": round(reads_per_second),
            "l1_hit_ratio": round(hit_ratio),
            "redis_gets_per_second": round(gets_per_second),
            "staleness_ms": {
                "p50": round(staleness[0]),
                "p99": round(staleness[1]),
                "max": round(staleness[2]),
                "samples": windows.len(),
                "incomplete": incomplete,
            },
            "whole_trip_ms": {
                "p50": round(quantile(&trips, 0.5)),
                "p99": round(quantile(&trips, 0.99)),
            },
            "cpu_cores": {
                "this_process": round(process_cpu),
                "redis_server": round(redis_cpu),
            },
            "cpu_us_per_delivery": {
                "this_process": round(process_cpu * 1e6 / deliveries),
                "redis_server": round(redis_cpu * 1e6 / deliveries),
            },
        },
        "model": {
            "machine_limit_writes_per_second": round(limit),
            "redis_limit_writes_per_second": round(model.redis_limit(instances)),
            "utilization": round(utilization),
            "delivered_per_second_each": round(model_delivered),
            "redis_server_cpu_cores": round(model_redis_cpu),
            "staleness_ms": round(model_staleness_ms),
            "reads_per_second": model_reads,
            "redis_gets_per_second": round(model_gets),
            "max_reads_per_second": round(r_max),
        },
        "measured_over_model": {
            "delivered_each": round(delivered_each / model_delivered),
            "redis_server_cpu": round(redis_cpu / model_redis_cpu),
            "staleness_p50": round(staleness[0] / model_staleness_ms),
            "staleness_p99": round(staleness[1] / model_staleness_ms),
            "reads": round(reads_per_second / model_reads),
            "redis_gets": round(gets_per_second / model_gets),
        },
    })
}

async fn fleet_of(server: &RedisServer, instances: usize, model: &Model) -> serde_json::Value {
    // Every point's probes, its last one included, with room to spare.
    let per_point = (PROBES_PER_SECOND * RUN.as_secs_f64() * 1.5) as usize + 2;
    let probes = Arc::new(Probes::new(per_point * LOADS.len()));
    let mut fleet = Vec::with_capacity(instances);
    for index in 0..instances {
        fleet.push(instance(server, index, &probes).await);
    }
    // Every L1 starts warm.
    let mut warming = JoinSet::new();
    for cache in &fleet {
        let cache = cache.clone();
        warming.spawn(async move {
            for key in 0..KEYS {
                let key = format!("offer:{key}");
                assert!(cache.get::<Offer>(&key).await.expect("warm").is_some());
            }
        });
    }
    while let Some(warmed) = warming.join_next().await {
        warmed.expect("warming");
    }
    let (reads_per_second, read_cores) = reads_only(server, &fleet).await;
    println!(
        "fleet: {instances:>2} instances, reads alone: {reads_per_second:.0} reads/s, \
         {read_cores:.2} cores"
    );
    let mut points = Vec::new();
    for load in LOADS {
        points.push(
            point(Point {
                server,
                fleet: &fleet,
                probes: &probes,
                model,
                load,
                read_cores,
            })
            .await,
        );
    }
    json!({
        "instances": instances,
        "reads_alone": {
            "reads_per_second": round(reads_per_second),
            "cpu_cores": round(read_cores),
        },
        "points": points,
    })
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` does not, and
    // the simulation is too long for a test run.
    if !std::env::args().any(|arg| arg == "--bench") {
        println!("fleet: a benchmark; run it with `cargo bench --bench fleet`");
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let model = Model::load();
    let started = Instant::now();
    let load_average = load_average();
    let report = runtime.block_on(async {
        let server = RedisServer::start();
        // The keys every instance reads, in Redis before any instance.
        let writer = instance(&server, 0, &Arc::new(Probes::new(0))).await;
        for key in 0..KEYS {
            writer
                .set(&format!("offer:{key}"), &offer(key), TTL)
                .await
                .expect("fill");
        }
        drop(writer);
        let mut fleets = Vec::new();
        for instances in INSTANCES {
            fleets.push(fleet_of(&server, instances, &model).await);
        }
        json!({
            "what": "a fleet of TieredCache instances (L1 over one local Redis, each with its \
                     own RedisBackplane) in one process, under paced reads and writes, beside \
                     what docs/scale.md's capacity model predicts",
            "model_inputs": {
                "redis_cpu_us_per_delivery": model.redis_per_delivery,
                "redis_cpu_us_per_write": model.redis_per_write,
                "subscriber_cpu_us_per_delivery": model.subscriber_per_delivery,
                "writer_cpu_us_per_write": model.writer_per_write,
                "gets_per_second": model.gets_per_second,
                "cores": model.cores,
                "source": model.source,
            },
            "load_average_at_start": load_average,
            "run_seconds": RUN.as_secs_f64(),
            "keys": KEYS,
            "write_keys": WRITE_KEYS,
            "writes_in_flight_per_instance": WRITES_IN_FLIGHT,
            "reads_in_flight": READS_IN_FLIGHT,
            "fleets": fleets,
        })
    });
    let text = serde_json::to_string_pretty(&report).expect("json");
    write_results("fleet", &text).expect("write fleet.json");
    println!("{text}");
    println!("fleet: {:.0?} in all", started.elapsed());
}
