//! Export through the [`metrics`] facade (feature `metrics`): counters and
//! gauges from [`TieredCache::stats`] snapshots, histograms recorded as
//! calls end. The names and labels are listed in `docs/observability.md`;
//! they are part of the API and change only with a major version.

use std::sync::Weak;
use std::time::Duration;

use cache_core::{CircuitState, Operation, Serializer};
use metrics::{Histogram, Label, counter, gauge, histogram};

use crate::TieredCache;
use crate::cache::Shared;

/// Exports the cache's metrics every `interval` until it is dropped,
/// holding it only while exporting.
pub(crate) async fn run<S: Serializer>(cache: Weak<Shared<S>>, interval: Duration) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(shared) = cache.upgrade() else {
            return;
        };
        TieredCache { shared }.export_metrics();
    }
}

/// The histograms of one tier, one per operation, registered when the cache
/// is built (with the recorder installed then: install it first).
#[derive(Debug, Clone)]
pub(crate) struct TierHistograms {
    get: Histogram,
    set: Histogram,
    remove: Histogram,
}

impl TierHistograms {
    pub(crate) fn new(cache: &str, tier: &str) -> Self {
        let register = |operation: Operation| {
            histogram!(
                "cache_tier_call_duration_seconds",
                "cache" => cache.to_owned(),
                "tier" => tier.to_owned(),
                "operation" => operation.as_str(),
            )
        };
        TierHistograms {
            get: register(Operation::Read),
            set: register(Operation::Write),
            remove: register(Operation::Remove),
        }
    }

    pub(crate) fn record(&self, operation: Operation, elapsed: Duration) {
        let histogram = match operation {
            Operation::Read => &self.get,
            Operation::Write => &self.set,
            Operation::Remove => &self.remove,
        };
        histogram.record(elapsed.as_secs_f64());
    }
}

/// The loaders' histogram.
pub(crate) fn load_histogram(cache: &str) -> Histogram {
    histogram!("cache_load_duration_seconds", "cache" => cache.to_owned())
}

impl<S: Serializer> TieredCache<S> {
    /// Publishes the cache's counters and gauges through the [`metrics`]
    /// facade, as they are now (counters as absolute values). Histograms
    /// (`cache_tier_call_duration_seconds`, `cache_load_duration_seconds`)
    /// are recorded as calls end and need no export.
    ///
    /// Call it before each scrape, or let
    /// [`TieredCacheBuilder::export_metrics_every`](crate::TieredCacheBuilder::export_metrics_every)
    /// call it in the background. Install the recorder (for example
    /// `metrics-exporter-prometheus`) before building the cache, so that
    /// the histograms are registered with it.
    ///
    /// ```
    /// use cache_memory::MemoryLayer;
    /// use cache_tiered::TieredCache;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cache = TieredCache::builder().name("offers").layer(MemoryLayer::new()).build()?;
    /// cache.get::<u32>("offer:7").await?;
    /// cache.export_metrics(); // cache_reads_total{cache="offers",tier="memory",outcome="miss"} 1, ...
    /// # Ok(())
    /// # }
    /// ```
    pub fn export_metrics(&self) {
        let cache = self.shared.observe.name.to_string();
        let stats = self.stats();
        let label = |key: &'static str, value: &str| Label::new(key, value.to_owned());
        let of_cache = || vec![label("cache", &cache)];

        for (name, value) in [
            ("cache_loads_total", stats.loads),
            ("cache_load_errors_total", stats.load_errors),
            ("cache_coalesced_total", stats.coalesced),
            ("cache_stale_served_total", stats.stale_served),
            ("cache_eager_refreshes_total", stats.eager_refreshes),
            ("cache_backplane_published_total", stats.backplane.published),
            (
                "cache_backplane_publish_errors_total",
                stats.backplane.publish_errors,
            ),
            ("cache_backplane_received_total", stats.backplane.received),
            ("cache_backplane_gaps_total", stats.backplane.gaps),
            (
                "cache_backplane_reconnects_total",
                stats.backplane.reconnects,
            ),
            ("cache_queue_deferred_total", stats.queue.deferred),
            ("cache_queue_overflows_total", stats.queue.overflows),
        ] {
            counter!(name, of_cache()).absolute(value);
        }
        for (outcome, value) in [("hit", stats.hits), ("miss", stats.misses)] {
            let mut labels = of_cache();
            labels.push(label("outcome", outcome));
            counter!("cache_lookups_total", labels).absolute(value);
        }
        gauge!("cache_queue_pending", of_cache()).set(stats.queue.pending as f64);
        if let Some(subscribed) = stats.backplane.subscribed {
            gauge!("cache_backplane_subscribed", of_cache()).set(f64::from(u8::from(subscribed)));
        }

        for tier in &stats.tiers {
            let of_tier = || vec![label("cache", &cache), label("tier", &tier.name)];
            for (outcome, value) in [("hit", tier.hits), ("miss", tier.misses)] {
                let mut labels = of_tier();
                labels.push(label("outcome", outcome));
                counter!("cache_reads_total", labels).absolute(value);
            }
            for (name, value) in [
                ("cache_fills_total", tier.fills),
                ("cache_fills_discarded_total", tier.fills_discarded),
                ("cache_undecodable_total", tier.undecodable),
                ("cache_tier_refused_total", tier.refused),
                ("cache_tier_rejected_total", tier.rejected),
                ("cache_evictions_total", tier.layer.evictions),
                ("cache_expirations_total", tier.layer.expirations),
            ] {
                counter!(name, of_tier()).absolute(value);
            }
            for (class, value) in tier.error_classes.iter() {
                let mut labels = of_tier();
                labels.push(label("class", class.as_str()));
                counter!("cache_tier_errors_total", labels).absolute(value);
            }
            gauge!("cache_entries", of_tier()).set(tier.layer.entries as f64);
            gauge!("cache_bytes", of_tier()).set(tier.layer.bytes as f64);
            for circuit in &tier.circuits {
                let mut labels = of_tier();
                labels.push(label("circuit", &circuit.name));
                let state = match circuit.state {
                    CircuitState::Closed => 0.0,
                    CircuitState::HalfOpen => 1.0,
                    _ => 2.0,
                };
                gauge!("cache_circuit_state", labels.clone()).set(state);
                counter!("cache_circuit_opened_total", labels).absolute(circuit.opened);
            }
            if let Some(pool) = &tier.layer.pool {
                gauge!("cache_pool_connections", of_tier()).set(pool.open as f64);
                gauge!("cache_pool_max_connections", of_tier()).set(pool.max_open as f64);
                counter!("cache_pool_connects_total", of_tier()).absolute(pool.connects);
                counter!("cache_pool_waits_total", of_tier()).absolute(pool.waits);
            }
            for node in &tier.layer.nodes {
                let of_node = || {
                    let mut labels = of_tier();
                    labels.push(label("node", &node.name));
                    labels.push(label("role", node.role));
                    labels
                };
                counter!("cache_node_calls_total", of_node()).absolute(node.calls);
                for (class, value) in node.errors.iter() {
                    let mut labels = of_node();
                    labels.push(label("class", class.as_str()));
                    counter!("cache_node_errors_total", labels).absolute(value);
                }
                gauge!("cache_node_down", of_node()).set(f64::from(u8::from(node.down)));
            }
        }
    }
}
