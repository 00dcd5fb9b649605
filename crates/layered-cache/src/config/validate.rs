//! Every check of a [`StackConfig`], before anything is built or connected,
//! each problem naming its key (`redis.pool.min_idle`, `ttl[2].jitter`).
//!
//! The builders check the same ranges again when the stack is built; these
//! checks come first so that every problem is reported at once, in the
//! config's own terms, and before a connection is opened.

use std::time::Duration;

use super::{BackplaneConfig, BreakerConfig, CacheConfig, L1Config, RedisConfig, StackConfig};
use crate::{ConfigError, Problem};

/// The largest value Redis stores, less the entry header's room (as
/// `RedisLayerBuilder` checks).
const REDIS_MAX_VALUE: u64 = 512 * 1024 * 1024 - 16;

/// Collects problems.
#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn add(&mut self, field: impl Into<String>, reason: impl Into<String>) {
        self.0.push(Problem {
            field: field.into(),
            reason: reason.into(),
        });
    }

    /// `field` must be above zero.
    fn positive(&mut self, field: &str, value: Duration) {
        if value.is_zero() {
            self.add(field, "must be above zero");
        }
    }

    /// `field`, if set, must be above zero (write `"off"` to turn it off).
    fn positive_or_off(&mut self, field: &str, value: Option<Duration>) {
        if value.is_some_and(|d| d.is_zero()) {
            self.add(field, "must be above zero (write \"off\" to turn it off)");
        }
    }

    /// A fraction in `[0, 1)`.
    fn jitter(&mut self, field: &str, value: f64) {
        if !(0.0..1.0).contains(&value) {
            self.add(
                field,
                format!("must be at least 0 and below 1 (got {value}; 0.1 takes up to 10% off)"),
            );
        }
    }

    /// Says that `field` needs cargo feature `feature` of layered-cache.
    fn feature(&mut self, field: &str, feature: &str, what: &str) {
        self.add(
            field,
            format!(
                "{what} needs the `{feature}` feature of layered-cache \
                 (layered-cache = {{ features = [\"config\", \"{feature}\"] }})"
            ),
        );
    }
}

impl StackConfig {
    /// Checks every setting, without building or connecting anything.
    ///
    /// [`from_toml_str`](Self::from_toml_str) and
    /// [`build`](Self::build) call it; call it yourself on a config made
    /// or changed in code.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] with every problem found, each naming its
    /// key and saying what would be right.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Problems::default();
        cache(&mut problems, &self.cache);
        l1(&mut problems, &self.l1);
        if let Some(redis_config) = &self.redis {
            redis(&mut problems, redis_config);
        }
        if let Some(breaker_config) = self.breaker.as_ref().filter(|b| b.enabled) {
            breaker(&mut problems, breaker_config, self.redis.is_some());
        }
        if let Some(backplane_config) = self.backplane.as_ref().filter(|b| b.enabled) {
            backplane(&mut problems, backplane_config, self.redis.as_ref());
        }
        ttl_rules(&mut problems, self);
        dependency_rules(&mut problems, self);
        if problems.0.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::invalid(problems.0))
        }
    }
}

fn cache(p: &mut Problems, c: &CacheConfig) {
    if c.name.is_empty() {
        p.add(
            "cache.name",
            "must not be empty (it labels spans and metrics)",
        );
    }
    p.positive("cache.default_ttl", c.default_ttl);
    p.positive("cache.negative_ttl", c.negative_ttl);
    p.jitter("cache.ttl_jitter", c.ttl_jitter);
    p.positive_or_off("cache.fail_safe", c.fail_safe);
    p.positive("cache.fail_safe_throttle", c.fail_safe_throttle);
    p.positive_or_off("cache.soft_timeout", c.soft_timeout);
    p.positive_or_off("cache.hard_timeout", c.hard_timeout);
    if let (Some(soft), Some(hard)) = (c.soft_timeout, c.hard_timeout)
        && soft >= hard
    {
        p.add(
            "cache.soft_timeout",
            format!(
                "must be shorter than cache.hard_timeout ({} >= {}): past the hard timeout \
                 the load is cancelled, so a soft timeout after it never fires",
                super::format_duration(soft),
                super::format_duration(hard)
            ),
        );
    }
    if let Some(fraction) = c.eager_refresh
        && !(fraction > 0.0 && fraction < 1.0)
    {
        p.add(
            "cache.eager_refresh",
            format!(
                "must be above 0 and below 1 (got {fraction}; 0.8 refreshes in the last fifth)"
            ),
        );
    }
    p.positive_or_off("cache.degraded_ttl", c.degraded_ttl);
    p.positive("cache.health_timeout", c.health_timeout);
    if c.invalidation_queue == Some(0) {
        p.add(
            "cache.invalidation_queue",
            "must hold at least one call (leave it out to turn the queue off)",
        );
    }
    p.positive("cache.tag_ttl", c.tag_ttl);
    p.positive_or_off("cache.export_metrics_every", c.export_metrics_every);
    if c.export_metrics_every.is_some() && !cfg!(feature = "metrics") {
        p.feature("cache.export_metrics_every", "metrics", "exporting metrics");
    }
}

fn l1(p: &mut Problems, c: &L1Config) {
    if c.max_entries < 2 {
        p.add(
            "l1.max_entries",
            format!("must be at least 2 (got {})", c.max_entries),
        );
    }
    if c.max_bytes == 0 {
        p.add("l1.max_bytes", "must be above zero");
    }
    if c.shards == Some(0) {
        p.add(
            "l1.shards",
            "must be at least 1 (leave it out for quick_cache's choice)",
        );
    }
    p.positive_or_off("l1.sweep_interval", c.sweep_interval);
    p.positive_or_off("l1.ttl_cap", c.ttl_cap);
    p.positive_or_off("l1.timeout", c.timeout);
}

fn redis(p: &mut Problems, c: &RedisConfig) {
    if !cfg!(feature = "redis") {
        p.feature("redis", "redis", "a Redis tier");
    }
    let urls: Vec<(String, &String)> = match (&c.url, &c.cluster) {
        (None, None) => {
            p.add(
                "redis.url",
                "is missing: give the server's URL (url = \"redis://127.0.0.1:6379\"), \
                 or the nodes of a Cluster (cluster = [\"redis://10.0.0.1:7000\", ...])",
            );
            Vec::new()
        }
        (Some(_), Some(_)) => {
            p.add(
                "redis.cluster",
                "give either url (one server) or cluster (the nodes of a Redis Cluster), not both",
            );
            Vec::new()
        }
        (Some(url), None) => {
            let mut urls = vec![("redis.url".to_owned(), url)];
            for (i, replica) in c.replicas.iter().enumerate() {
                urls.push((format!("redis.replicas[{i}]"), replica));
            }
            urls
        }
        (None, Some(nodes)) => {
            if nodes.is_empty() {
                p.add("redis.cluster", "needs at least one node URL");
            }
            if !c.replicas.is_empty() {
                p.add(
                    "redis.replicas",
                    "is for a standalone primary; a Cluster finds its replicas itself",
                );
            }
            if c.read_from != super::ReadFrom::Primary {
                p.add(
                    "redis.read_from",
                    "\"replicas-first\" is not supported with a Cluster",
                );
            }
            nodes
                .iter()
                .enumerate()
                .map(|(i, node)| (format!("redis.cluster[{i}]"), node))
                .collect()
        }
    };
    for (field, url) in urls {
        server_url(p, &field, url);
    }
    if let Err(reason) = namespace(&c.namespace) {
        p.add("redis.namespace", reason);
    }
    if c.name.is_empty() {
        p.add(
            "redis.name",
            "must not be empty (it names the tier in stats and logs)",
        );
    }
    p.positive("redis.timeout", c.timeout);
    p.positive("redis.connect_timeout", c.connect_timeout);
    p.positive_or_off("redis.idle_timeout", c.idle_timeout);
    if c.max_value_size == 0 || c.max_value_size > REDIS_MAX_VALUE {
        p.add(
            "redis.max_value_size",
            format!(
                "must be between 1 byte and 512MiB (got {})",
                c.max_value_size
            ),
        );
    }
    match c.compress_above {
        Some(0) => p.add(
            "redis.compress_above",
            "must be at least 1 byte, or \"off\"",
        ),
        Some(_) if !cfg!(feature = "lz4") => {
            p.feature("redis.compress_above", "lz4", "compression")
        }
        _ => {}
    }
    if c.scan_count == 0 {
        p.add("redis.scan_count", "must be at least 1");
    }
    p.positive("redis.node_retry_after", c.node_retry_after);
    if c.removal_markers
        .is_some_and(|ttl| ttl < Duration::from_millis(1))
    {
        p.add(
            "redis.removal_markers",
            "must be at least 1ms, or \"off\" for plain deletes",
        );
    }
    p.positive_or_off("redis.ttl_cap", c.ttl_cap);
    if c.pool.max_open == 0 {
        p.add("redis.pool.max_open", "must be at least 1");
    }
    if c.pool.min_idle > c.pool.max_open {
        p.add(
            "redis.pool.min_idle",
            format!(
                "must not exceed redis.pool.max_open ({} > {})",
                c.pool.min_idle, c.pool.max_open
            ),
        );
    }
}

/// A Redis URL's scheme, checked before the client sees it.
fn server_url(p: &mut Problems, field: &str, url: &str) {
    let shown = super::redacted(url);
    if url.starts_with("rediss://") {
        if !cfg!(feature = "tls") {
            p.feature(field, "tls", &format!("the TLS URL {shown:?}"));
        }
    } else if !url.starts_with("redis://") {
        p.add(
            field,
            format!(
                "{shown:?} is not a Redis URL: write redis://[user][:password@]host[:port][/db] \
                 (rediss:// for TLS)"
            ),
        );
    } else if url.len() == "redis://".len() {
        p.add(field, "names no host: write redis://host[:port]");
    }
}

/// The namespace rule of `RedisLayerBuilder::namespace`: no `:` but one at
/// the end, so that no namespace holds another's keys.
fn namespace(namespace: &str) -> Result<(), String> {
    if namespace.is_empty() {
        return Ok(());
    }
    let name = namespace.strip_suffix(':').unwrap_or(namespace);
    if !name.is_empty() && !name.contains(':') {
        return Ok(());
    }
    let suggestion = name.trim_matches(':').replace(':', "-");
    Err(format!(
        "{namespace:?} has a `:` before its end; a `:` may only end a namespace, or one \
         namespace would see another's keys as its own{}",
        if suggestion.is_empty() {
            String::new()
        } else {
            format!(": write {suggestion:?}")
        }
    ))
}

fn breaker(p: &mut Problems, c: &BreakerConfig, has_redis: bool) {
    if !cfg!(feature = "breaker") {
        p.feature("breaker", "breaker", "a circuit breaker");
    }
    if !has_redis {
        p.add(
            "breaker",
            "guards the Redis tier, and there is no [redis] section: add one, or remove \
             [breaker] (or set enabled = false)",
        );
    }
    for (field, value) in [
        ("breaker.failure_threshold", c.failure_threshold),
        ("breaker.success_threshold", c.success_threshold),
        ("breaker.half_open_max_calls", c.half_open_max_calls),
    ] {
        if value == 0 {
            p.add(field, "must be at least 1");
        }
    }
    p.positive("breaker.recovery_timeout", c.recovery_timeout);
    p.positive_or_off("breaker.slow_call", c.slow_call);
    if let Some(rule) = &c.failure_rate {
        if !(rule.rate > 0.0 && rule.rate <= 1.0) {
            p.add(
                "breaker.failure_rate.rate",
                format!("must be above 0 and at most 1 (got {})", rule.rate),
            );
        }
        if rule.window == 0 || rule.min_calls == 0 || rule.min_calls > rule.window {
            p.add(
                "breaker.failure_rate.min_calls",
                format!(
                    "needs 1 <= min_calls <= window (got min_calls {} and window {})",
                    rule.min_calls, rule.window
                ),
            );
        }
    }
}

fn backplane(p: &mut Problems, c: &BackplaneConfig, redis: Option<&RedisConfig>) {
    if c.url.is_none() && redis.is_none() {
        p.add(
            "backplane",
            "runs over Redis pub/sub, and there is no [redis] section to take the server \
             from: add one, give backplane.url, or set enabled = false",
        );
    }
    if !cfg!(feature = "redis") {
        p.feature("backplane", "redis", "a Redis backplane");
    }
    if let Some(url) = &c.url {
        server_url(p, "backplane.url", url);
    }
    if c.channel.is_empty() {
        p.add("backplane.channel", "must not be empty");
    }
    p.positive("backplane.timeout", c.timeout);
    p.positive_or_off("backplane.health_check_interval", c.health_check_interval);
}

fn ttl_rules(p: &mut Problems, config: &StackConfig) {
    for (i, rule) in config.ttl.iter().enumerate() {
        let field = |key: &str| format!("ttl[{i}].{key}");
        if let Err(reason) = glob(&rule.pattern) {
            p.add(field("pattern"), reason);
        }
        if let Some(first) = config.ttl[..i]
            .iter()
            .position(|r| r.pattern == rule.pattern)
        {
            p.add(
                field("pattern"),
                format!(
                    "{:?} repeats ttl[{first}].pattern: the first rule that matches a key \
                     wins, so this one would never apply",
                    rule.pattern
                ),
            );
        }
        p.positive_or_off(&field("ttl"), rule.ttl);
        p.positive_or_off(&field("negative_ttl"), rule.negative_ttl);
        p.positive_or_off(&field("l1_ttl_cap"), rule.l1_ttl_cap);
        if let Some(jitter) = rule.jitter {
            p.jitter(&field("jitter"), jitter);
        }
    }
}

/// A glob that would not do what its writer meant. Redis (and
/// [`Pattern`](crate::Pattern)) accept any string; in a config file, an
/// empty pattern or an unclosed `[` is a typo.
fn glob(pattern: &str) -> Result<(), String> {
    if pattern.is_empty() {
        return Err(
            "is empty, which matches only the empty key: write \"offer:*\" for every \
                    key that starts with offer:"
                .into(),
        );
    }
    let mut bytes = pattern.bytes();
    while let Some(byte) = bytes.next() {
        match byte {
            // The guard consumes the escaped byte; only a `\` with none
            // after it is an error.
            b'\\' if bytes.next().is_none() => {
                return Err(format!(
                    "{pattern:?} ends with a lone `\\`: write `\\\\` for a backslash"
                ));
            }
            b'[' => loop {
                match bytes.next() {
                    Some(b']') => break,
                    Some(b'\\') => {
                        bytes.next();
                    }
                    Some(_) => {}
                    None => {
                        return Err(format!(
                            "{pattern:?} opens a `[` class it never closes: close it with `]`, \
                             or write `\\[` for a literal bracket"
                        ));
                    }
                }
            },
            _ => {}
        }
    }
    Ok(())
}

fn dependency_rules(p: &mut Problems, config: &StackConfig) {
    if config.rules.is_empty() && config.families.is_empty() {
        return;
    }
    if !cfg!(feature = "invalidation") {
        if !config.rules.is_empty() {
            p.feature("rules", "invalidation", "dependency rules");
        }
        if !config.families.is_empty() {
            p.feature("families", "invalidation", "key families");
        }
        return;
    }
    #[cfg(feature = "invalidation")]
    for (i, family) in config.families.iter().enumerate() {
        if let Err(error) = cache_invalidation::Rules::builder().family(family).build() {
            p.add(format!("families[{i}]"), error.to_string());
        }
    }
    // Families checked against the rules (a family must take every id a
    // constraining trigger gives it): the whole set, as `build` does.
    #[cfg(feature = "invalidation")]
    if !config.families.is_empty() && !config.rules.is_empty() {
        let mut builder = cache_invalidation::Rules::builder();
        for rule in &config.rules {
            builder = builder.rule(&rule.trigger, &rule.dependents);
        }
        for family in &config.families {
            builder = builder.family(family);
        }
        if let Err(error) = builder.build() {
            p.add("families", error.to_string());
        }
    }
    for (i, rule) in config.rules.iter().enumerate() {
        if rule.trigger.is_empty() {
            p.add(format!("rules[{i}].trigger"), "must not be empty");
        }
        if rule.dependents.is_empty() {
            p.add(
                format!("rules[{i}].dependents"),
                "is empty: list the keys that go with the trigger",
            );
        }
        #[cfg(feature = "invalidation")]
        if let Err(error) = cache_invalidation::Rules::builder()
            .rule(&rule.trigger, &rule.dependents)
            .build()
        {
            p.add(format!("rules[{i}]"), error.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_that_are_typos_are_refused() {
        for good in ["offer:*", r"user:\[1\]:*", "a[bc]d", "[]x", r"a\\"] {
            assert_eq!(glob(good), Ok(()), "{good:?}");
        }
        for (bad, why) in [
            ("", "empty"),
            ("offer:[1", "never closes"),
            (r"offer:[\]", "never closes"),
            (r"offer\", "lone"),
        ] {
            let reason = glob(bad).unwrap_err();
            assert!(reason.contains(why), "{bad:?}: {reason}");
        }
    }

    #[test]
    fn namespaces_follow_the_redis_layer_rule() {
        for good in ["", "offers", "offers:", "app-v2"] {
            assert_eq!(namespace(good), Ok(()), "{good:?}");
        }
        for bad in ["app:v2", "app:v2:", ":", "::"] {
            assert!(namespace(bad).is_err(), "{bad:?}");
        }
        assert!(namespace("app:v2").unwrap_err().contains("\"app-v2\""));
    }
}
