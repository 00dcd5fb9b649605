//! `docs/benchmarks.md`: the benchmark results as a page, written from
//! `target/bench/summary.json` with SVG charts beside it
//! (`docs/benchmarks/*.svg`).
//!
//! The charts are plain SVG written here (horizontal grouped bars): a
//! plotting crate would bring a font stack and a dozen dependencies for
//! three bar charts.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::SystemTime;

use serde_json::Value;

/// Writes the page and its charts under `docs/` from `summary` (the
/// merged JSON of every benchmark), which was measured at `run`.
pub(crate) fn write(root: &Path, summary: &Value, run: SystemTime) -> Result<(), String> {
    let docs = root.join("docs");
    let charts = docs.join("benchmarks");
    std::fs::create_dir_all(&charts).map_err(|error| error.to_string())?;
    let mut page = Page::default();
    page.header(run);
    page.summary(summary);
    for (name, section) in [
        ("l1", Page::l1 as fn(&mut Page, &Value) -> Option<Chart>),
        ("l1_instructions", Page::l1_instructions),
        ("sweep", Page::sweep),
        ("l2", Page::l2),
        ("breaker", Page::breaker),
        ("invalidation", Page::invalidation),
        ("capacity", Page::capacity),
        ("fleet", Page::fleet),
        ("load", Page::load),
    ] {
        let Some(results) = summary.get(name) else {
            page.missing(name);
            continue;
        };
        if let Some(chart) = section(&mut page, results) {
            let file = format!("{name}.svg");
            std::fs::write(charts.join(&file), chart.svg()).map_err(|error| error.to_string())?;
            let _ = writeln!(
                page.text,
                "\n![{}](benchmarks/{file})\n",
                chart.title.replace(['[', ']'], "")
            );
        }
    }
    let path = docs.join("benchmarks.md");
    std::fs::write(&path, page.text).map_err(|error| error.to_string())?;
    println!(
        "written to {} (and its charts to {})",
        path.display(),
        charts.display()
    );
    Ok(())
}

#[derive(Default)]
struct Page {
    text: String,
}

impl Page {
    fn line(&mut self, line: impl AsRef<str>) {
        self.text.push_str(line.as_ref());
        self.text.push('\n');
    }

    fn header(&mut self, run: SystemTime) {
        self.line("# Benchmarks");
        self.line("");
        self.line(
            "This page is written by `cargo xtask bench` from the JSON the benchmarks \
             write (`target/bench/summary.json`); `cargo xtask report` rewrites it from the \
             last results. Do not edit it by hand. How each benchmark works is in the doc \
             comment at the top of its file; what the figures mean and what was done about \
             them is in [performance.md](performance.md).",
        );
        self.line("");
        self.line(format!("- Run: {} (UTC)", utc(run)));
        self.line(format!("- Machine: {}", machine()));
        self.line(
            "- One run on a machine that may have been busy: compare the ratios, which \
             set each figure against an anchor measured in the same run, more than the \
             absolute figures.",
        );
    }

    fn missing(&mut self, name: &str) {
        self.line("");
        self.line(format!("## {name}"));
        self.line("");
        self.line(format!(
            "Not in this run's results (`target/bench/{name}.json` was not written)."
        ));
    }

    /// One line per target: the ratio, the anchor and whether it holds.
    fn summary(&mut self, summary: &Value) {
        self.line("");
        self.line("## Targets");
        self.line("");
        self.line("| benchmark | measure | ratio | target | met |");
        self.line("|---|---|---|---|---|");
        let mut rows: Vec<[String; 5]> = Vec::new();
        for result in summary["l1"]["results"].as_array().into_iter().flatten() {
            let (Some(keys), Some(order)) = (result["keys"].as_u64(), result["order"].as_str())
            else {
                continue;
            };
            let random = order == "random";
            let label = format!("`Arc` hit, {} keys, {order}", thousands(keys));
            // Issue 13's targets apply to random order; strided is shown
            // beside it, never instead.
            let (quick_cache_target, moka_target) = match (random, keys >= 1_000_000) {
                (false, _) => (None, None),
                (true, false) => (Some(2.0), None),
                (true, true) => (Some(1.3), Some(0.7)),
            };
            for (key, anchor, target) in [
                ("tiered_over_quick_cache", "quick_cache", quick_cache_target),
                ("tiered_over_moka", "moka", moka_target),
            ] {
                if let Some(ratio) = result[key].as_f64() {
                    rows.push([
                        "L1 time".into(),
                        format!("{label}: TieredCache ÷ {anchor}"),
                        format!("{ratio:.2}"),
                        target.map_or("-".into(), |target| format!("≤ {target}")),
                        target.map_or("-".into(), |target| yes_no(ratio <= target)),
                    ]);
                }
            }
        }
        let counts = &summary["l1_instructions"];
        for (key, label, target) in [
            (
                "get_arc_over_quick_cache",
                "`Arc` hit: instructions ÷ quick_cache's",
                1.5,
            ),
            (
                "get_owned_over_quick_cache",
                "owned hit: instructions ÷ quick_cache's",
                1.3,
            ),
            (
                "get_or_compute_over_get",
                "`get_or_compute` hit ÷ `get` hit",
                1.1,
            ),
            ("stats_cost_get", "hit with stats ÷ without", 1.05),
        ] {
            if let Some(ratio) = counts[key].as_f64() {
                rows.push([
                    "L1 instructions".into(),
                    label.into(),
                    format!("{ratio:.2}"),
                    format!("≤ {target}"),
                    yes_no(ratio <= target),
                ]);
            }
        }
        if let Some(ratio) = summary["sweep"]["p999_during_over_outside"].as_f64() {
            rows.push([
                "L1 sweep".into(),
                "hit p99.9 during a sweep of 1M entries ÷ outside one".into(),
                format!("{ratio:.2}"),
                "≤ 2".into(),
                yes_no(ratio <= 2.0),
            ]);
        }
        if let Some(results) = summary["l2"]["results"].as_array() {
            let target = summary["l2"]["target_ratio"].as_f64().unwrap_or(0.9);
            for result in results {
                if let Some(ratio) = result["ratio_layer_to_raw"].as_f64() {
                    let target = result["target_ratio"].as_f64().unwrap_or(target);
                    let measure = match result["op"].as_str() {
                        Some("stack_get") => format!(
                            "L1 miss, L2 hit, {}: TieredCache ÷ raw GET + decode",
                            tasks(&result["concurrency"])
                        ),
                        _ => format!(
                            "{}, {}: RedisLayer ÷ raw redis crate",
                            text(&result["op"]),
                            tasks(&result["concurrency"])
                        ),
                    };
                    rows.push([
                        "L2 throughput".into(),
                        measure,
                        format!("{ratio:.2}"),
                        format!("≥ {target}"),
                        yes_no(ratio >= target),
                    ]);
                }
            }
        }
        let invalidation = &summary["invalidation"];
        if let Some(growth) = invalidation["family_1m_over_10k"].as_f64() {
            rows.push([
                "invalidation".into(),
                "family of 1,000 keys: among 1M keys ÷ among 10k".into(),
                format!("{growth:.2}"),
                "≤ 2".into(),
                yes_no(growth <= 2.0),
            ]);
        }
        if let Some(growth) = invalidation["scan_1m_over_10k"].as_f64() {
            rows.push([
                "invalidation".into(),
                "SCAN removal of 1,000 keys: among 1M keys ÷ among 10k (for comparison)".into(),
                format!("{growth:.0}"),
                "-".into(),
                "-".into(),
            ]);
        }
        let load = &summary["load"];
        for (key, label) in [
            ("l1_over_off", "requests/s, L1 ÷ no cache"),
            ("l1_redis_over_off", "requests/s, L1 over Redis ÷ no cache"),
        ] {
            if let Some(ratio) = load[key].as_f64() {
                rows.push([
                    "load test".into(),
                    label.into(),
                    format!("{ratio:.1}"),
                    "≥ 20".into(),
                    yes_no(ratio >= 20.0),
                ]);
            }
        }
        for row in rows {
            self.line(format!("| {} |", row.join(" | ")));
        }
    }

    fn l1(&mut self, l1: &Value) -> Option<Chart> {
        self.line("");
        self.line("## L1 hit (`l1.json`)");
        self.line("");
        self.line(
            "A typed `TieredCache::get` hit on a `MemoryLayer` L1 beside a raw \
             `quick_cache::sync::Cache::get` and `moka::sync::Cache::get` of the same \
             ~200-byte struct in `Arc`s, one thread, keys read in a random order and in a \
             strided one; ns per get, the median of rounds in which the three take turns \
             (`crates/cache-tiered/benches/l1.rs`).",
        );
        self.line("");
        self.line(
            "| keys, order | TieredCache ns | quick_cache ns | moka ns | ÷ quick_cache | ÷ moka |",
        );
        self.line("|---|---|---|---|---|---|");
        let mut chart = Chart::new("L1 hit of an Arc: ns per get (shorter is faster)", "ns");
        for result in l1["results"].as_array()? {
            let ns = &result["ns"];
            let (ours, raw, moka) = (
                ns["tiered"].as_f64()?,
                ns["quick_cache"].as_f64()?,
                ns["moka"].as_f64()?,
            );
            let label = format!(
                "{} keys, {}",
                thousands(result["keys"].as_u64()?),
                text(&result["order"])
            );
            self.line(format!(
                "| {label} | {ours:.0} | {raw:.0} | {moka:.0} | {:.2} | {:.2} |",
                ours / raw,
                ours / moka
            ));
            chart.group(
                &label,
                &[("TieredCache", ours), ("quick_cache", raw), ("moka", moka)],
            );
        }
        let owned = &l1["owned"];
        if let (Some(ours), Some(raw), Some(moka)) = (
            owned["ns"]["tiered"].as_f64(),
            owned["ns"]["quick_cache"].as_f64(),
            owned["ns"]["moka"].as_f64(),
        ) {
            self.line("");
            self.line(format!(
                "Owned values (a hit clones the struct), {} keys, {}: TieredCache {ours:.0} ns, \
                 quick_cache {raw:.0} ns, moka {moka:.0} ns.",
                thousands(owned["keys"].as_u64()?),
                text(&owned["order"])
            ));
        }
        if let Some(ratio) = l1["stats_cost"]["on_over_off"].as_f64() {
            self.line("");
            self.line(format!(
                "What the counters cost a hit (stats on ÷ off): {ratio:.3}."
            ));
        }
        Some(chart)
    }

    fn l1_instructions(&mut self, counts: &Value) -> Option<Chart> {
        self.line("");
        self.line("## Instructions per L1 hit (`l1_instructions.json`)");
        self.line("");
        if let Some(skipped) = counts["skipped"].as_str() {
            self.line(format!("Skipped: {skipped}."));
            return None;
        }
        self.line(
            "Counted by valgrind's cachegrind (`crates/cache-tiered/benches/l1_instructions.rs`): \
             figures a busy machine does not move. L1 data misses are those of cachegrind's \
             simulated 32 KiB, 8-way L1 data cache: what pointer hops cost, which instruction \
             counts do not show (they move by about 5% from run to run, with each process's \
             hash seeds and addresses, not with the machine's load).",
        );
        self.line("");
        self.line("| case | instructions per hit | L1 data misses per hit |");
        self.line("|---|---|---|");
        for (case, count) in counts["instructions_per_hit"].as_object()? {
            // Absent from a file written before misses were counted.
            let misses = counts["d1_misses_per_hit"][case]
                .as_f64()
                .map_or_else(|| "-".to_owned(), |misses| format!("{misses:.2}"));
            self.line(format!("| `{case}` | {:.0} | {misses} |", count.as_f64()?));
        }
        None
    }

    fn l2(&mut self, l2: &Value) -> Option<Chart> {
        self.line("");
        self.line("## L2: Redis (`l2.json`)");
        self.line("");
        self.line(format!(
            "`RedisLayer` get and set of {}-byte values beside the raw redis crate (one \
             multiplexed connection sending the same commands) and `redis-benchmark`, \
             against one local {} (`crates/cache-redis/benches/l2.rs`); operations per second, \
             the median of interleaved rounds. `stack_get`: a typed read through a \
             `TieredCache` whose L1 misses, from Redis, beside a raw `GET` and a postcard \
             decode of the same bytes.",
            l2["value_size"],
            text(&l2["server"])
                .split(" sha")
                .next()
                .unwrap_or("redis-server"),
        ));
        self.line("");
        self.line("| op, tasks | RedisLayer ops/s | raw ops/s | redis-benchmark ops/s | ÷ raw |");
        self.line("|---|---|---|---|---|");
        let mut chart = Chart::new(
            "L2 (Redis): operations per second (longer is faster)",
            "ops/s",
        );
        for result in l2["results"].as_array()? {
            let label = format!("{}, {}", text(&result["op"]), tasks(&result["concurrency"]));
            let layer = result["layer_ops_per_sec"].as_f64()?;
            let raw = result["raw_ops_per_sec"].as_f64()?;
            let benchmark = result["redis_benchmark_ops_per_sec"].as_f64();
            self.line(format!(
                "| {label} | {layer:.0} | {raw:.0} | {} | {:.3} |",
                benchmark.map_or("-".into(), |b| format!("{b:.0}")),
                result["ratio_layer_to_raw"].as_f64().unwrap_or(layer / raw),
            ));
            let mut bars = vec![("RedisLayer", layer), ("raw redis crate", raw)];
            bars.extend(benchmark.map(|b| ("redis-benchmark", b)));
            chart.group(&label, &bars);
        }
        Some(chart)
    }

    fn breaker(&mut self, breaker: &Value) -> Option<Chart> {
        self.line("");
        self.line("## Circuit breaker (`breaker.json`)");
        self.line("");
        self.line(
            "The closed path of the breaker, per call, beside the bare call \
             (`crates/cache-breaker/benches/breaker.rs`).",
        );
        self.line("");
        self.line("| case | threads | ns per call | bare ns | overhead ns |");
        self.line("|---|---|---|---|---|");
        for result in breaker["results"].as_array()? {
            self.line(format!(
                "| `{}` | {} | {} | {} | {} |",
                text(&result["name"]),
                result["threads"],
                result["ns_per_call"],
                result["baseline_ns_per_call"],
                result["overhead_ns_per_call"],
            ));
        }
        None
    }

    fn sweep(&mut self, sweep: &Value) -> Option<Chart> {
        self.line("");
        self.line("## Hits during a sweep (`sweep.json`)");
        self.line("");
        self.line(
            "A `MemoryLayer` of 1,000,000 entries, half of them expired: one thread times each \
             hit of the live half in random order, outside a sweep and while another thread \
             sweeps the expired half away (`crates/cache-memory/benches/sweep.rs`).",
        );
        self.line("");
        self.line("| round | hit p99.9 outside, ns | during, ns | ÷ | sweep, ms |");
        self.line("|---|---|---|---|---|");
        for (round, result) in sweep["rounds"].as_array()?.iter().enumerate() {
            self.line(format!(
                "| {} | {:.0} | {:.0} | {:.2} | {:.0} |",
                round + 1,
                result["outside"]["p999_ns"].as_f64()?,
                result["during"]["p999_ns"].as_f64()?,
                result["p999_during_over_outside"].as_f64()?,
                result["sweep_ms"].as_f64()?,
            ));
        }
        None
    }

    fn invalidation(&mut self, invalidation: &Value) -> Option<Chart> {
        self.line("");
        self.line("## Invalidation at scale (`invalidation.json`)");
        self.line("");
        self.line(
            "Removing the 1,000 keys of one offer's pages (`reviews:offer:42:*`) as the Redis \
             keyspace grows: by pattern (SCAN MATCH, then UNLINK), and by the key family the \
             rules declare (one version key removed); and the invalidator's \
             priority queue draining 10,000 queued keys (each with one dependent) over an \
             in-process L1, and over L1 + a local Redis with the Redis backplane \
             (`crates/cache-invalidation/benches/invalidation.rs`).",
        );
        self.line("");
        self.line("| keys in Redis | by pattern (SCAN) ms | by key family ms |");
        self.line("|---|---|---|");
        for result in invalidation["removal"].as_array().into_iter().flatten() {
            self.line(format!(
                "| {} | {:.1} | {:.2} |",
                thousands(result["keyspace"].as_u64()?),
                result["scan_ms"].as_f64()?,
                result["family_ms"].as_f64()?
            ));
        }
        let queue = &invalidation["queue"];
        if let (Some(l1), Some(redis)) = (
            queue["l1_per_second"].as_f64(),
            queue["l1_redis_per_second"].as_f64(),
        ) {
            self.line("");
            self.line(format!(
                "The priority queue applies {l1:.0} invalidations per second over an L1 (its own \
                 cost), {redis:.0} over L1 + Redis (a removal and a backplane message each)."
            ));
        }
        None
    }

    fn capacity(&mut self, capacity: &Value) -> Option<Chart> {
        self.line("");
        self.line("## Capacity figures (`capacity.json`)");
        self.line("");
        self.line(
            "What [scale.md](scale.md)'s capacity model rests on \
             (`crates/cache-invalidation/benches/capacity.rs`).",
        );
        let l1 = &capacity["l1"];
        self.line("");
        self.line(format!(
            "L1 memory per entry (~200-byte struct, the process's resident size over {} \
             entries): {:.0} bytes written, {:.0} once read (the decoded value kept); the \
             layer counts {:.0}.",
            thousands(l1["entries"].as_u64()?),
            l1["written_bytes_per_entry"].as_f64()?,
            l1["read_bytes_per_entry"].as_f64()?,
            l1["counted_bytes_per_entry"].as_f64()?,
        ));
        self.line("");
        self.line(
            "| backplane subscribers | published/s | delivered/s to each | deliveries/s in all \
             | Redis CPU µs per delivery | this process's | raw `PUBLISH`: delivered/s to each \
             | backplane ÷ raw |",
        );
        self.line("|---|---|---|---|---|---|---|---|");
        for result in capacity["backplane"].as_array()? {
            self.line(format!(
                "| {} | {:.0} | {:.0} | {:.0} | {} | {} | {} | {} |",
                result["subscribers"],
                result["published_per_second"].as_f64()?,
                result["delivered_per_second_each"].as_f64()?,
                result["deliveries_per_second"].as_f64()?,
                decimals(&result["redis_cpu_us_per_delivery"], 2),
                decimals(&result["process_cpu_us_per_delivery"], 2),
                decimals(&result["raw_delivered_per_second_each"], 0),
                decimals(&result["delivered_over_raw"], 2),
            ));
        }
        let caches = &capacity["cache_subscribers"];
        let writes = &capacity["writes"];
        if caches.is_object() && writes.is_object() {
            self.line("");
            self.line(format!(
                "To {} caches (the listener removing each key from an L1): {} delivered/s to \
                 each, {} µs of Redis CPU and {} µs of this process's per delivery. A write \
                 (`TieredCache::set` over an L1 and Redis, with the backplane): {} writes/s, \
                 {} µs of Redis CPU and {} µs of this process's per write. Load average at the \
                 start: {}.",
                caches["subscribers"],
                decimals(&caches["delivered_per_second_each"], 0),
                decimals(&caches["redis_cpu_us_per_delivery"], 2),
                decimals(&caches["process_cpu_us_per_delivery"], 2),
                decimals(&writes["writes_per_second"], 0),
                decimals(&writes["redis_cpu_us_per_write"], 1),
                decimals(&writes["process_cpu_us_per_write"], 1),
                decimals(&capacity["load_average_at_start"], 2),
            ));
        }
        None
    }

    fn fleet(&mut self, fleet: &Value) -> Option<Chart> {
        self.line("");
        self.line("## Fleet simulation (`fleet.json`)");
        self.line("");
        self.line(format!(
            "A fleet of `TieredCache` instances (L1 over one local Redis, each with its own \
             `RedisBackplane`) in one process (`crates/cache-invalidation/benches/fleet.rs`): \
             {} reads/s of {} hot keys, and writes from every instance at 0.5, 1 and 2 times \
             the limit [scale.md](scale.md)'s model predicts for this machine, {} s each. \
             Staleness: from a write's `set` returning until every other L1 has dropped the \
             key. The model's CPU costs come from `capacity.json` ({}).",
            decimals(
                &fleet["fleets"][0]["points"][0]["offered_reads_per_second"],
                0
            ),
            fleet["keys"],
            fleet["run_seconds"],
            text(&fleet["model_inputs"]["source"]),
        ));
        self.line("");
        self.line(
            "| instances | writes/s offered | × limit | delivered/s to each | ÷ model \
             | reads/s | L1 hits | staleness p50 ms | p99 ms | max ms | model ms \
             | CPU: process, Redis | lost |",
        );
        self.line("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
        for group in fleet["fleets"].as_array()? {
            for point in group["points"].as_array()? {
                let measured = &point["measured"];
                let staleness = &measured["staleness_ms"];
                self.line(format!(
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {}, {} | {} |",
                    point["instances"],
                    decimals(&point["offered_writes_per_second"], 0),
                    point["load_over_model_limit"],
                    decimals(&measured["delivered_per_second_each"], 0),
                    decimals(&point["measured_over_model"]["delivered_each"], 2),
                    decimals(&measured["reads_per_second"], 0),
                    decimals(&measured["l1_hit_ratio"], 3),
                    decimals(&staleness["p50"], 2),
                    decimals(&staleness["p99"], 2),
                    decimals(&staleness["max"], 2),
                    decimals(&point["model"]["staleness_ms"], 3),
                    decimals(&measured["cpu_cores"]["this_process"], 2),
                    decimals(&measured["cpu_cores"]["redis_server"], 2),
                    measured["lost"],
                ));
            }
        }
        None
    }

    fn load(&mut self, load: &Value) -> Option<Chart> {
        let setup = &load["setup"];
        self.line("");
        self.line("## Load test: the GraphQL service over HTTP (`load.json`)");
        self.line("");
        self.line(format!(
            "{} concurrent HTTP clients against the offers GraphQL service \
             (`examples/benches/load.rs`), over a store whose every query takes {} ms \
             through a pool of {} connections; the median of {} rounds of {} s per \
             service, the latency percentiles over all of them. Every answer is checked \
             against the one the service gave before the run. Client and service share \
             the machine's {} cores.",
            setup["clients"],
            setup["store_latency_ms"],
            setup["store_connections"],
            setup["rounds"],
            setup["round_secs"],
            setup["cores"],
        ));
        self.line("");
        self.line("| cache | requests/s | ÷ no cache | store queries per request | p50 ms | p90 ms | p99 ms | errors |");
        self.line("|---|---|---|---|---|---|---|---|");
        let mut chart = Chart::new("Load test: requests per second (longer is faster)", "req/s");
        for (name, label) in [("off", "none"), ("l1", "L1"), ("l1_redis", "L1 over Redis")] {
            let figures = &load[name];
            let rate = figures["requests_per_second"].as_f64()?;
            let latency = &figures["latency_ms"];
            let ratio = load[format!("{name}_over_off")]
                .as_f64()
                .map_or("1".into(), |r| format!("{r:.1}"));
            self.line(format!(
                "| {label} | {rate:.0} | {ratio} | {:.3} | {:.2} | {:.2} | {:.2} | {} |",
                figures["store_queries_per_request"].as_f64()?,
                latency["p50"].as_f64()?,
                latency["p90"].as_f64()?,
                latency["p99"].as_f64()?,
                figures["errors"],
            ));
            chart.group(label, &[("requests/s", rate)]);
        }
        Some(chart)
    }
}

/// `1 task`, `16 tasks`.
fn tasks(count: &Value) -> String {
    match count.as_u64() {
        Some(1) => "1 task".to_owned(),
        _ => format!("{count} tasks"),
    }
}

/// `1000000` as `1,000,000`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// A number with `decimals` decimals, or `-` when the figure is missing.
fn decimals(value: &Value, decimals: usize) -> String {
    value
        .as_f64()
        .map_or_else(|| "-".to_owned(), |x| format!("{x:.decimals$}"))
}

fn yes_no(met: bool) -> String {
    if met { "yes" } else { "**no**" }.to_owned()
}

/// A JSON string's text, or the value as JSON.
fn text(value: &Value) -> String {
    value
        .as_str()
        .map_or_else(|| value.to_string(), str::to_owned)
}

/// `time` as `YYYY-MM-DD HH:MM`, UTC.
fn utc(time: SystemTime) -> String {
    let secs = time
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}",
        rest / 3_600,
        rest % 3_600 / 60
    )
}

/// The CPU, cores, memory, OS and compiler, as far as they can be read.
fn machine() -> String {
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let cpu = cpuinfo
        .lines()
        .find_map(|line| line.strip_prefix("model name")?.split(':').nth(1))
        .map_or("an unknown CPU".to_owned(), |model| model.trim().to_owned());
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let memory = read("/proc/meminfo")
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))
        .and_then(|kb| kb.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(String::new(), |kb| {
            format!(", {:.0} GiB of memory", kb / 1_048_576.0)
        });
    let os = read("/etc/os-release")
        .lines()
        .find_map(|line| line.strip_prefix("PRETTY_NAME="))
        .map_or(std::env::consts::OS.to_owned(), |name| {
            name.trim_matches('"').to_owned()
        });
    let rustc = Command::new("rustc")
        .arg("--version")
        .output()
        .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned())
        .unwrap_or_default();
    format!("{cpu}, {cores} cores{memory}; {os}; {rustc}")
}

/// A horizontal grouped bar chart.
struct Chart {
    title: String,
    unit: String,
    groups: Vec<(String, Vec<(String, f64)>)>,
}

/// The series' colours, in order of first appearance.
const COLOURS: [&str; 4] = ["#2f6db5", "#e08a2c", "#5a9e4b", "#8f5aa8"];

impl Chart {
    fn new(title: &str, unit: &str) -> Chart {
        Chart {
            title: title.to_owned(),
            unit: unit.to_owned(),
            groups: Vec::new(),
        }
    }

    fn group(&mut self, label: &str, bars: &[(&str, f64)]) {
        let bars = bars
            .iter()
            .map(|(series, value)| ((*series).to_owned(), *value))
            .collect();
        self.groups.push((label.to_owned(), bars));
    }

    fn svg(&self) -> String {
        const WIDTH: f64 = 760.0;
        const LABELS: f64 = 170.0; // the group labels' column
        const BAR: f64 = 16.0;
        const GAP: f64 = 12.0;
        const TOP: f64 = 56.0;
        let mut series: Vec<&str> = Vec::new();
        for (_, bars) in &self.groups {
            for (name, _) in bars {
                if !series.contains(&name.as_str()) {
                    series.push(name);
                }
            }
        }
        let max = self
            .groups
            .iter()
            .flat_map(|(_, bars)| bars.iter().map(|(_, value)| *value))
            .fold(0.0_f64, f64::max)
            .max(f64::MIN_POSITIVE);
        // Room on the right for the longest value label.
        let scale = (WIDTH - LABELS - 90.0) / max;
        let rows: usize = self.groups.iter().map(|(_, bars)| bars.len()).sum();
        let height = TOP + rows as f64 * BAR + self.groups.len() as f64 * GAP + 10.0;
        let mut svg = String::new();
        let _ = writeln!(
            svg,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
        let _ = writeln!(
            svg,
            r#"<text x="10" y="20" font-size="14" font-weight="bold">{}</text>"#,
            escape(&self.title)
        );
        let mut x = 10.0;
        for (i, name) in series.iter().enumerate() {
            let colour = COLOURS[i % COLOURS.len()];
            let _ = writeln!(
                svg,
                r#"<rect x="{x}" y="32" width="12" height="12" fill="{colour}"/><text x="{}" y="42">{}</text>"#,
                x + 16.0,
                escape(name)
            );
            x += 30.0 + 7.0 * name.len() as f64;
        }
        let mut y = TOP;
        for (label, bars) in &self.groups {
            let middle = y + bars.len() as f64 * BAR / 2.0 + 4.0;
            let _ = writeln!(
                svg,
                r#"<text x="{}" y="{middle}" text-anchor="end">{}</text>"#,
                LABELS - 8.0,
                escape(label)
            );
            for (name, value) in bars {
                let colour = series
                    .iter()
                    .position(|s| s == name)
                    .map_or(COLOURS[0], |i| COLOURS[i % COLOURS.len()]);
                let width = (value * scale).max(1.0);
                let _ = writeln!(
                    svg,
                    r#"<rect x="{LABELS}" y="{y}" width="{width:.1}" height="{}" fill="{colour}"/><text x="{:.1}" y="{}">{} {}</text>"#,
                    BAR - 2.0,
                    LABELS + width + 4.0,
                    y + BAR - 5.0,
                    figure(*value),
                    escape(&self.unit)
                );
                y += BAR;
            }
            y += GAP;
        }
        svg.push_str("</svg>\n");
        svg
    }
}

/// A figure as a chart label: three significant digits at most.
fn figure(value: f64) -> String {
    match value {
        v if v >= 1e6 => format!("{:.2}M", v / 1e6),
        v if v >= 1e4 => format!("{:.0}k", v / 1e3),
        v if v >= 100.0 => format!("{v:.0}"),
        v => format!("{v:.1}"),
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chart_has_a_bar_per_value_and_escapes_its_text() {
        let mut chart = Chart::new("a <title>", "ns");
        chart.group("one", &[("ours", 100.0), ("theirs", 50.0)]);
        chart.group("two", &[("ours", 10.0)]);
        let svg = chart.svg();
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        // Two legend squares and three bars.
        assert_eq!(svg.matches("<rect x=").count(), 5);
        assert!(svg.contains("a &lt;title&gt;"));
        assert!(svg.contains(">100 ns<") && svg.contains(">50.0 ns<"));
    }

    #[test]
    fn figures_read_as_prose() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(10_000), "10,000");
        assert_eq!(thousands(1_000_000), "1,000,000");
        assert_eq!(tasks(&serde_json::json!(1)), "1 task");
        assert_eq!(tasks(&serde_json::json!(64)), "64 tasks");
    }

    #[test]
    fn the_date_is_a_civil_date() {
        let at = |secs| utc(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs));
        assert_eq!(at(0), "1970-01-01 00:00");
        assert_eq!(at(951_782_400), "2000-02-29 00:00");
        assert_eq!(at(1_795_000_000), "2026-11-18 11:06");
    }

    #[test]
    fn missing_results_are_said_not_invented() {
        let summary = serde_json::json!({});
        let mut page = Page::default();
        page.summary(&summary);
        page.missing("load");
        assert!(
            page.text
                .contains("`target/bench/load.json` was not written")
        );
        assert!(!page.text.contains("| yes |"));
    }

    #[test]
    fn the_fleet_simulation_reads_as_a_table_beside_the_model() {
        let fleet = serde_json::json!({
            "keys": 1000,
            "run_seconds": 3.0,
            "model_inputs": { "source": "target/bench/capacity.json" },
            "fleets": [{
                "instances": 4,
                "points": [{
                    "instances": 4,
                    "load_over_model_limit": 0.5,
                    "offered_writes_per_second": 20000.0,
                    "offered_reads_per_second": 50000.0,
                    "measured": {
                        "delivered_per_second_each": 19900.0,
                        "reads_per_second": 49900.0,
                        "l1_hit_ratio": 0.988,
                        "staleness_ms": { "p50": 0.0, "p99": 3.3, "max": 13.2 },
                        "cpu_cores": { "this_process": 0.96, "redis_server": 0.34 },
                        "lost": 0,
                    },
                    "model": { "staleness_ms": 0.01 },
                    "measured_over_model": { "delivered_each": 0.98 },
                }],
            }],
        });
        let mut page = Page::default();
        assert!(page.fleet(&fleet).is_none());
        assert!(page.text.contains("## Fleet simulation (`fleet.json`)"));
        assert!(page.text.contains("50000 reads/s of 1000 hot keys"));
        assert!(
            page.text.contains(
                "| 4 | 20000 | 0.5 | 19900 | 0.98 | 49900 | 0.988 | 0.00 | 3.30 | 13.20 | 0.010 \
                 | 0.96, 0.34 | 0 |"
            ),
            "{}",
            page.text
        );
        // A figure an older run did not write is a dash, not a made-up zero.
        let mut page = Page::default();
        page.capacity(&serde_json::json!({
            "l1": {
                "entries": 100000,
                "written_bytes_per_entry": 530.0,
                "read_bytes_per_entry": 865.0,
                "counted_bytes_per_entry": 188.0,
            },
            "backplane": [{
                "subscribers": 1,
                "published_per_second": 7800.0,
                "delivered_per_second_each": 7800.0,
                "deliveries_per_second": 7800.0,
            }],
        }));
        assert!(
            page.text
                .contains("| 1 | 7800 | 7800 | 7800 | - | - | - | - |"),
            "{}",
            page.text
        );
    }
}
