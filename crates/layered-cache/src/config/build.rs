//! From a checked [`StackConfig`] to a running [`Stack`].

use std::fmt;
#[cfg(feature = "breaker")]
use std::sync::Arc;

use cache_memory::MemoryLayer;
use cache_tiered::{Tier, TieredCache, TieredCacheBuilder};

use super::{L1Config, StackConfig};
use crate::ConfigError;

/// What [`StackConfig::build`] built: the cache and the parts around it,
/// each kept so that you can read its stats or state.
///
/// Cheap to clone: every part shares its state with its clones.
#[derive(Clone)]
#[non_exhaustive]
pub struct Stack {
    /// The cache: L1, then Redis if configured.
    pub cache: TieredCache,
    /// The dependency rules of `[[rules]]` applied to the cache; `None`
    /// without rules (feature `invalidation`).
    #[cfg(feature = "invalidation")]
    pub invalidator: Option<cache_invalidation::Invalidator>,
    /// The L1 layer (the cache's first tier).
    pub l1: MemoryLayer,
    /// The Redis layer (the cache's second tier), if configured (feature
    /// `redis`).
    #[cfg(feature = "redis")]
    pub redis: Option<cache_redis::RedisLayer>,
    /// The breaker guarding the Redis tier, if configured (feature
    /// `breaker`).
    #[cfg(feature = "breaker")]
    pub breaker: Option<Arc<cache_breaker::TierBreaker>>,
    /// The backplane the cache listens and publishes on, if configured
    /// (feature `redis`).
    #[cfg(feature = "redis")]
    pub backplane: Option<cache_redis::RedisBackplane>,
}

impl fmt::Debug for Stack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("Stack");
        s.field("cache", &self.cache);
        #[cfg(feature = "invalidation")]
        s.field("invalidator", &self.invalidator.is_some());
        s.field("l1", &self.l1);
        #[cfg(feature = "redis")]
        s.field("redis", &self.redis);
        #[cfg(feature = "breaker")]
        s.field(
            "breaker",
            &self.breaker.as_ref().map(|b| b.name().to_owned()),
        );
        #[cfg(feature = "redis")]
        s.field("backplane", &self.backplane);
        s.finish()
    }
}

impl StackConfig {
    /// Checks the config ([`validate`](Self::validate)), then builds the
    /// stack: the L1, the breaker and the rules (nothing connects yet),
    /// then the Redis layer and the backplane (which connect and check
    /// their servers), then the cache, subscribed to the backplane before
    /// this returns. Needs a tokio runtime.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] for a config that does not check;
    /// [`ConfigError::Build`] naming the part that failed to build
    /// (`redis` and `backplane` when a server cannot be reached or refuses
    /// the credentials: see their `pool.min_idle` and `lazy` settings to
    /// start while Redis is down).
    pub async fn build(&self) -> Result<Stack, ConfigError> {
        self.build_with(|builder| builder).await
    }

    /// [`build`](Self::build), letting `customize` set what a config file
    /// does not hold on the cache's builder before it is built: a clock, a
    /// schema version per type, a fleet lock, a third tier.
    ///
    /// ```
    /// use layered_cache::config::StackConfig;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), layered_cache::ConfigError> {
    /// struct Offer;
    /// let stack = StackConfig::default()
    ///     .build_with(|cache| cache.schema_version::<Offer>(2))
    ///     .await?;
    /// # let _ = stack;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn build_with(
        &self,
        customize: impl FnOnce(TieredCacheBuilder) -> TieredCacheBuilder,
    ) -> Result<Stack, ConfigError> {
        self.validate()?;
        let l1 = l1_layer(&self.l1)?;
        #[cfg(feature = "breaker")]
        let breaker = self.breaker()?;
        #[cfg(feature = "invalidation")]
        let rules = self.dependency_rules()?;

        let mut builder = TieredCache::builder().tier(l1_tier(l1.clone(), &self.l1));
        #[cfg(feature = "redis")]
        let (redis, backplane) = {
            let redis = match &self.redis {
                Some(config) => Some(redis::layer(config).await?),
                None => None,
            };
            if let (Some(layer), Some(config)) = (&redis, &self.redis) {
                let mut tier = Tier::new(layer.clone());
                if let Some(cap) = config.ttl_cap {
                    tier = tier.ttl_cap(cap);
                }
                #[cfg(feature = "breaker")]
                if let Some(breaker) = &breaker {
                    tier = tier.shared_policy(breaker.clone());
                }
                builder = builder.tier(tier);
            }
            let backplane = match self.backplane.as_ref().filter(|b| b.enabled) {
                Some(config) => Some(redis::backplane(config, self.redis.as_ref()).await?),
                None => None,
            };
            if let Some(backplane) = &backplane {
                builder = builder.backplane(backplane.clone());
            }
            (redis, backplane)
        };

        #[cfg(feature = "invalidation")]
        if let Some(rules) = rules.as_ref().filter(|_| !self.families.is_empty()) {
            builder = builder.key_families(rules.families());
        }
        builder = self.cache_settings(builder);
        let cache =
            customize(builder)
                .build_async()
                .await
                .map_err(|source| ConfigError::Build {
                    part: "cache",
                    source,
                })?;
        #[cfg(feature = "invalidation")]
        let invalidator =
            rules.map(|rules| cache_invalidation::Invalidator::new(cache.clone(), rules));
        Ok(Stack {
            cache,
            #[cfg(feature = "invalidation")]
            invalidator,
            l1,
            #[cfg(feature = "redis")]
            redis,
            #[cfg(feature = "breaker")]
            breaker,
            #[cfg(feature = "redis")]
            backplane,
        })
    }

    /// The `[cache]` settings and the `[[ttl]]` table on `builder`.
    fn cache_settings(&self, mut builder: TieredCacheBuilder) -> TieredCacheBuilder {
        let c = &self.cache;
        builder = builder
            .name(c.name.as_str())
            .default_ttl(c.default_ttl)
            .negative_ttl(c.negative_ttl)
            .ttl_jitter(c.ttl_jitter)
            .fail_safe_throttle(c.fail_safe_throttle)
            // `Duration::ZERO` is the builder's "off".
            .degraded_ttl(c.degraded_ttl.unwrap_or_default())
            .stats(c.stats)
            .trace_keys(c.trace_keys)
            .health_timeout(c.health_timeout)
            .tag_prefix(c.tag_prefix.as_str())
            .tag_ttl(c.tag_ttl);
        if let Some(grace) = c.fail_safe {
            builder = builder.fail_safe(grace);
        }
        if let Some(timeout) = c.soft_timeout {
            builder = builder.soft_timeout(timeout);
        }
        if let Some(timeout) = c.hard_timeout {
            builder = builder.hard_timeout(timeout);
        }
        if let Some(fraction) = c.eager_refresh {
            builder = builder.eager_refresh(fraction);
        }
        if let Some(limit) = c.invalidation_queue {
            builder = builder.invalidation_queue(limit);
        }
        #[cfg(feature = "metrics")]
        if let Some(interval) = c.export_metrics_every {
            builder = builder.export_metrics_every(interval);
        }
        for rule in &self.ttl {
            builder = builder.ttl_policy(rule.pattern.as_str(), rule.policy());
        }
        builder
    }

    /// The `[breaker]`, if enabled (and there is a Redis tier to guard:
    /// `validate` refuses one without).
    #[cfg(feature = "breaker")]
    fn breaker(&self) -> Result<Option<Arc<cache_breaker::TierBreaker>>, ConfigError> {
        let Some(c) = self.breaker.as_ref().filter(|b| b.enabled) else {
            return Ok(None);
        };
        let breaker = breaker_builder(c)
            .build_for_tier()
            .map_err(|source| ConfigError::Build {
                part: "breaker",
                source,
            })?;
        Ok(Some(Arc::new(breaker)))
    }
    /// The `[[rules]]` and `families`, if any.
    #[cfg(feature = "invalidation")]
    fn dependency_rules(&self) -> Result<Option<cache_invalidation::Rules>, ConfigError> {
        if self.rules.is_empty() && self.families.is_empty() {
            return Ok(None);
        }
        let mut builder = cache_invalidation::Rules::builder();
        for rule in &self.rules {
            builder = builder.rule(rule.trigger.as_str(), &rule.dependents);
        }
        for family in &self.families {
            builder = builder.family(family.as_str());
        }
        // Checked rule by rule by `validate`; a failure here is the same
        // problem, reported without the index.
        builder.build().map(Some).map_err(|error| {
            ConfigError::invalid(vec![crate::Problem {
                field: "rules".into(),
                reason: error.to_string(),
            }])
        })
    }
}

fn l1_layer(c: &L1Config) -> Result<MemoryLayer, ConfigError> {
    l1_builder(c)
        .build()
        .map_err(|source| ConfigError::Build { part: "l1", source })
}

/// The layer builder of an `[l1]` section.
fn l1_builder(c: &L1Config) -> cache_memory::MemoryLayerBuilder {
    let mut builder = MemoryLayer::builder()
        .name(c.name.as_str())
        .max_entries(c.max_entries)
        .max_bytes(c.max_bytes)
        .sweep_interval(c.sweep_interval)
        .stats(c.stats);
    if let Some(shards) = c.shards {
        builder = builder.shards(shards);
    }
    builder
}

fn l1_tier(layer: MemoryLayer, c: &L1Config) -> Tier {
    let mut tier = Tier::new(layer);
    if let Some(cap) = c.ttl_cap {
        tier = tier.ttl_cap(cap);
    }
    if let Some(timeout) = c.timeout {
        tier = tier.timeout(timeout);
    }
    tier
}

/// The breaker builder of a `[breaker]` section.
#[cfg(feature = "breaker")]
fn breaker_builder(c: &super::BreakerConfig) -> cache_breaker::Builder {
    let mut builder = cache_breaker::CircuitBreaker::builder()
        .name(c.name.as_str())
        .failure_threshold(c.failure_threshold)
        .recovery_timeout(c.recovery_timeout)
        .success_threshold(c.success_threshold)
        .half_open_max_calls(c.half_open_max_calls)
        .on_failure(match c.on_failure {
            super::OnFailure::FailOpen => cache_core::FailureAction::Ignore,
            super::OnFailure::FailClosed => cache_core::FailureAction::Propagate,
        });
    if let Some(rule) = &c.failure_rate {
        builder = builder.failure_rate(rule.rate, rule.window, rule.min_calls);
    }
    if let Some(slow) = c.slow_call {
        builder = builder.slow_call_duration(slow);
    }
    builder
}

#[cfg(feature = "redis")]
mod redis {
    use cache_redis::{RedisBackplane, RedisBackplaneBuilder, RedisLayer, RedisLayerBuilder};

    use super::super::{BackplaneConfig, ReadFrom, RedisConfig};
    use crate::ConfigError;

    /// Builds (and connects) the `[redis]` layer.
    pub(super) async fn layer(c: &RedisConfig) -> Result<RedisLayer, ConfigError> {
        layer_builder(c)?
            .build()
            .await
            .map_err(|source| ConfigError::Build {
                part: "redis",
                source,
            })
    }

    /// The layer builder of a `[redis]` section.
    pub(super) fn layer_builder(c: &RedisConfig) -> Result<RedisLayerBuilder, ConfigError> {
        let builder = match (&c.url, &c.cluster) {
            (Some(url), _) => {
                let mut builder = RedisLayer::builder(url.as_str());
                for replica in &c.replicas {
                    builder = builder.replica(replica.as_str());
                }
                builder
            }
            (None, Some(nodes)) => RedisLayer::cluster_builder(nodes.iter().map(String::as_str)),
            // `validate` refuses a section without either.
            (None, None) => {
                return Err(ConfigError::invalid(vec![crate::Problem {
                    field: "redis.url".into(),
                    reason: "is missing".into(),
                }]));
            }
        };
        Ok(builder
            .read_from(match c.read_from {
                ReadFrom::Primary => cache_redis::ReadFrom::Primary,
                ReadFrom::ReplicasFirst => cache_redis::ReadFrom::ReplicasFirst,
            })
            .name(c.name.as_str())
            .namespace(c.namespace.as_str())
            .timeout(c.timeout)
            .connect_timeout(c.connect_timeout)
            .pool_max_open(c.pool.max_open)
            .pool_min_idle(c.pool.min_idle)
            .idle_timeout(c.idle_timeout)
            .scan_count(c.scan_count)
            .node_retry_after(c.node_retry_after)
            .removal_markers(c.removal_markers)
            .compress_above(c.compress_above.map(size))
            .max_value_size(size(c.max_value_size)))
    }

    /// Builds (and connects) the `[backplane]`, on its own URL or the
    /// Redis tier's.
    pub(super) async fn backplane(
        c: &BackplaneConfig,
        redis: Option<&RedisConfig>,
    ) -> Result<RedisBackplane, ConfigError> {
        backplane_builder(c, redis)?
            .build()
            .await
            .map_err(|source| ConfigError::Build {
                part: "backplane",
                source,
            })
    }

    /// The backplane builder of a `[backplane]` section.
    pub(super) fn backplane_builder(
        c: &BackplaneConfig,
        redis: Option<&RedisConfig>,
    ) -> Result<RedisBackplaneBuilder, ConfigError> {
        let url = c
            .url
            .as_deref()
            .or_else(|| redis.and_then(|r| r.url.as_deref()))
            .or_else(|| redis.and_then(|r| r.cluster.as_ref()?.first().map(String::as_str)))
            .ok_or_else(|| {
                ConfigError::invalid(vec![crate::Problem {
                    field: "backplane.url".into(),
                    reason: "is missing, and there is no [redis] server to take it from".into(),
                }])
            })?;
        Ok(RedisBackplane::builder(url)
            .channel(c.channel.as_str())
            .name(c.name.as_str())
            .timeout(c.timeout)
            .health_check_interval(c.health_check_interval)
            .lazy(c.lazy))
    }

    /// A byte count as the builder takes it (`validate` bounds it to 512
    /// MiB; on a 32-bit target a larger one saturates and is refused).
    fn size(bytes: u64) -> usize {
        usize::try_from(bytes).unwrap_or(usize::MAX)
    }
}

/// The config's defaults are the builders' defaults: a builder configured
/// from a default section prints (`Debug`, which shows every setting) the
/// same as the builder untouched.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_defaults_are_the_builders() {
        let configured = StackConfig::default().cache_settings(TieredCache::builder());
        assert_eq!(
            format!("{configured:?}"),
            format!("{:?}", TieredCache::builder())
        );
    }

    #[test]
    fn l1_defaults_are_the_builders() {
        assert_eq!(
            format!("{:?}", l1_builder(&L1Config::default())),
            format!("{:?}", MemoryLayer::builder())
        );
    }

    #[cfg(feature = "breaker")]
    #[test]
    fn breaker_defaults_are_the_builders() {
        assert_eq!(
            format!(
                "{:?}",
                breaker_builder(&super::super::BreakerConfig::default())
            ),
            format!("{:?}", cache_breaker::CircuitBreaker::builder())
        );
    }

    #[cfg(feature = "redis")]
    #[test]
    fn redis_defaults_are_the_builders() {
        use super::super::{BackplaneConfig, RedisConfig};
        let url = "redis://127.0.0.1:6379";
        let redis = RedisConfig::new(url);
        assert_eq!(
            format!("{:?}", redis::layer_builder(&redis).unwrap()),
            format!("{:?}", cache_redis::RedisLayer::builder(url))
        );
        assert_eq!(
            format!(
                "{:?}",
                redis::backplane_builder(&BackplaneConfig::default(), Some(&redis)).unwrap()
            ),
            format!("{:?}", cache_redis::RedisBackplane::builder(url))
        );
    }
}
