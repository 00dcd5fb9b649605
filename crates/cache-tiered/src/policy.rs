//! The TTL policy table: how long each kind of key lives, set in one place.
//!
//! A table of `(Pattern, TtlPolicy)` rules, matched in the order they were
//! added; the first rule whose pattern matches a key is that key's policy.
//! A policy stands in for the cache-wide defaults (`default_ttl`,
//! `negative_ttl`, `ttl_jitter`) for its keys, and caps the copies of its
//! keys in local tiers (`local_ttl_cap`).

use std::sync::Arc;
use std::time::Duration;

use cache_core::{Pattern, Serializer};

use crate::cache::{Defaults, LoadOptions};
use crate::{TieredCache, TieredCacheBuilder};

/// How long the values of one kind of key live: the TTL a call that gives
/// none takes, the negative TTL, the jitter, and a cap on the copies in
/// this instance's local tiers. Attach it to a key pattern with
/// [`TieredCacheBuilder::ttl_policy`]; every setting left unset falls back
/// to the cache's own default.
///
/// ```
/// use std::time::Duration;
/// use cache_tiered::TtlPolicy;
///
/// let reviews = TtlPolicy::new()
///     .ttl(Duration::from_secs(300))          // 5 minutes in every tier...
///     .local_ttl_cap(Duration::from_secs(30)) // ...but at most 30 s in L1
///     .jitter(0.1);                           // 270 to 300 s, at random
/// assert_eq!(reviews.ttl, Some(Duration::from_secs(300)));
/// assert_eq!(reviews.negative_ttl, None); // the cache's negative TTL
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq)]
#[non_exhaustive]
#[must_use]
pub struct TtlPolicy {
    /// The TTL of values written without one of their own (an
    /// [`entry`](TieredCache::entry) call without
    /// [`ttl`](crate::EntryCall::ttl), a warm-up without a TTL). `None`:
    /// the cache's [`default_ttl`](TieredCacheBuilder::default_ttl).
    pub ttl: Option<Duration>,
    /// How long a loader's "not found" is cached
    /// ([`get_or_compute_optional`](crate::EntryCall::get_or_compute_optional))
    /// unless the call sets its own. `None`: the cache's
    /// [`negative_ttl`](TieredCacheBuilder::negative_ttl).
    pub negative_ttl: Option<Duration>,
    /// Up to this fraction of every TTL is taken off at random, in place
    /// of the cache's [`ttl_jitter`](TieredCacheBuilder::ttl_jitter),
    /// unless the call sets its own
    /// ([`EntryCall::ttl_jitter`](crate::EntryCall::ttl_jitter)). At least 0
    /// and below 1. `None`: the cache's.
    pub jitter: Option<f64>,
    /// The longest a copy of the value lives in a local tier (one whose
    /// layer is not [shared](cache_core::CacheLayer::is_shared): the
    /// in-memory L1), whatever TTL it was written with, while the shared
    /// tiers keep it for its full TTL. Applies with the tier's own
    /// [`ttl_cap`](crate::Tier::ttl_cap), the shorter winning. `None`: no
    /// cap of its own.
    pub local_ttl_cap: Option<Duration>,
}

impl TtlPolicy {
    /// A policy that sets nothing (every setting the cache's default).
    pub fn new() -> Self {
        Self::default()
    }

    /// The TTL of the rule's keys when a call gives none.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// The negative TTL of the rule's keys when a call gives none.
    pub fn negative_ttl(mut self, ttl: Duration) -> Self {
        self.negative_ttl = Some(ttl);
        self
    }

    /// The TTL jitter of the rule's keys (a fraction, at least 0 and below 1).
    pub fn jitter(mut self, fraction: f64) -> Self {
        self.jitter = Some(fraction);
        self
    }

    /// The cap of the rule's copies in local tiers.
    pub fn local_ttl_cap(mut self, cap: Duration) -> Self {
        self.local_ttl_cap = Some(cap);
        self
    }

    /// Every setting in range, or what is not.
    fn validate(&self, pattern: &Pattern) -> Result<(), cache_core::Error> {
        let positive = [
            ("ttl", self.ttl),
            ("negative_ttl", self.negative_ttl),
            ("local_ttl_cap", self.local_ttl_cap),
        ];
        for (name, value) in positive {
            if value.is_some_and(|d| d.is_zero()) {
                return Err(cache_core::Error::config(format!(
                    "ttl_policy {:?}: {name} must be above zero",
                    pattern.as_str()
                )));
            }
        }
        if let Some(jitter) = self.jitter
            && !(0.0..1.0).contains(&jitter)
        {
            return Err(cache_core::Error::config(format!(
                "ttl_policy {:?}: jitter must be at least 0 and below 1 (got {jitter})",
                pattern.as_str()
            )));
        }
        Ok(())
    }
}

/// One rule of the table.
#[derive(Debug)]
struct Rule {
    pattern: Pattern,
    /// The bytes every key the pattern matches starts with (the pattern's
    /// literal head, unescaped): a `starts_with` rules most keys out
    /// before the glob matcher runs.
    head: Box<[u8]>,
    policy: TtlPolicy,
}

/// The validated table, shared by the cache and its local tiers.
#[derive(Debug, Default)]
pub(crate) struct TtlPolicies {
    rules: Box<[Rule]>,
    /// Whether any rule caps local copies (else local tiers skip the table).
    caps_local: bool,
}

impl TtlPolicies {
    /// The table of `rules`, in order, once each is checked.
    pub(crate) fn new(rules: Vec<(Pattern, TtlPolicy)>) -> Result<Self, cache_core::Error> {
        let rules = rules
            .into_iter()
            .map(|(pattern, policy)| {
                policy.validate(&pattern)?;
                Ok(Rule {
                    head: literal_head(pattern.as_str()).into(),
                    pattern,
                    policy,
                })
            })
            .collect::<Result<Box<[Rule]>, cache_core::Error>>()?;
        let caps_local = rules.iter().any(|rule| rule.policy.local_ttl_cap.is_some());
        Ok(TtlPolicies { rules, caps_local })
    }

    /// The policy of `key`: the first rule that matches it.
    #[inline]
    pub(crate) fn find(&self, key: &str) -> Option<&TtlPolicy> {
        let bytes = key.as_bytes();
        self.rules
            .iter()
            .find(|rule| bytes.starts_with(&rule.head) && rule.pattern.matches_bytes(bytes))
            .map(|rule| &rule.policy)
    }

    /// The cap of `key`'s copies in local tiers, if its rule has one.
    #[inline]
    pub(crate) fn local_cap(&self, key: &str) -> Option<Duration> {
        self.find(key).and_then(|policy| policy.local_ttl_cap)
    }

    /// Whether local tiers need the table at all.
    pub(crate) fn caps_local(&self) -> bool {
        self.caps_local
    }
}

/// The bytes every key matching `glob` starts with: its characters up to
/// the first wildcard (`*`, `?`, `[`), escapes undone. A trailing lone
/// `\` matches a backslash, as in Redis (see [`Pattern`]).
fn literal_head(glob: &str) -> Vec<u8> {
    let mut head = Vec::new();
    let mut bytes = glob.as_bytes().iter();
    while let Some(&byte) = bytes.next() {
        match byte {
            b'*' | b'?' | b'[' => break,
            b'\\' => head.push(bytes.next().copied().unwrap_or(b'\\')),
            _ => head.push(byte),
        }
    }
    head
}

impl<S: Serializer> TieredCacheBuilder<S> {
    /// Sets how long the keys matching `pattern` (a
    /// [`Pattern`](cache_core::Pattern): Redis glob syntax) live, so that
    /// TTLs are decided per kind of data in one place rather than at every
    /// call.
    ///
    /// Rules are tried in the order they are added; the **first** whose
    /// pattern matches a key is that key's policy (put specific patterns
    /// before general ones). For a key that no rule matches, the cache's
    /// defaults apply as before. A key's policy:
    ///
    /// - gives the TTL of every call that does not give one:
    ///   [`entry`](TieredCache::entry) calls without
    ///   [`ttl`](crate::EntryCall::ttl) and warm-ups without a TTL. A TTL
    ///   given by the call (`entry(..).ttl(..)`, `set(key, value, ttl)`,
    ///   `get_or_compute(key, ttl, ..)`) wins, as does the TTL an adaptive
    ///   loader returns;
    /// - likewise gives the negative TTL, unless the call sets one;
    /// - gives the TTL jitter of every write of the key, in place of the
    ///   cache's, unless the call sets its own
    ///   ([`EntryCall::ttl_jitter`](crate::EntryCall::ttl_jitter));
    /// - caps every copy of the key written to a local tier (one whose
    ///   layer is not [shared](cache_core::CacheLayer::is_shared)), whatever
    ///   the call: writes, loads, and fills from a lower tier alike. The
    ///   tier's own [`ttl_cap`](crate::Tier::ttl_cap) still applies; the
    ///   shorter one wins. In a cache without a shared tier, it is the
    ///   value's lifetime.
    ///
    /// The rules are checked by `build()` (TTLs and caps above zero,
    /// jitter in `[0, 1)`). Looking a key up costs a prefix comparison per
    /// rule and a glob match for those whose literal start the key has:
    /// keep the table short, as the kinds of data you cache are few.
    ///
    /// ```
    /// use std::time::Duration;
    /// use cache_memory::MemoryLayer;
    /// use cache_tiered::{TieredCache, TtlPolicy};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), cache_tiered::Error> {
    /// let minutes = |m: u64| Duration::from_secs(60 * m);
    /// let cache = TieredCache::builder()
    ///     .layer(MemoryLayer::new())
    ///     // .tier(Tier::new(redis)) for a shared L2
    ///     .default_ttl(minutes(5))
    ///     .ttl_policy("rating:offer:*", TtlPolicy::new().ttl(minutes(10)).jitter(0.1))
    ///     .ttl_policy("offer:*", TtlPolicy::new().ttl(minutes(60)).local_ttl_cap(minutes(1)))
    ///     .build()?;
    ///
    /// // 10 minutes, less up to 10%: the rule, not the default.
    /// let rating: f32 = cache
    ///     .entry("rating:offer:7")
    ///     .get_or_compute(|| async { Ok::<_, std::io::Error>(4.5) })
    ///     .await?;
    /// # let _ = rating;
    /// assert_eq!(cache.ttl_policy_for("offer:7").and_then(|p| p.ttl), Some(minutes(60)));
    /// assert!(cache.ttl_policy_for("user:7").is_none()); // the cache's defaults
    /// # Ok(())
    /// # }
    /// ```
    pub fn ttl_policy(mut self, pattern: impl Into<Pattern>, policy: TtlPolicy) -> Self {
        self.ttl_policies.push((pattern.into(), policy));
        self
    }
}

impl<S: Serializer> TieredCache<S> {
    /// The [`TtlPolicy`] of `key`: the first rule of the table
    /// ([`TieredCacheBuilder::ttl_policy`]) whose pattern matches it, if any.
    pub fn ttl_policy_for(&self, key: &str) -> Option<&TtlPolicy> {
        self.shared.ttl_policies.find(key)
    }

    /// The cache's defaults as they apply to `key`: its policy's TTL,
    /// negative TTL and jitter in place of the cache-wide ones.
    #[inline]
    pub(crate) fn defaults_for(&self, key: &str) -> Defaults {
        let shared = &*self.shared;
        let mut defaults = shared.defaults;
        if let Some(policy) = shared.ttl_policies.find(key) {
            defaults.ttl = policy.ttl.unwrap_or(defaults.ttl);
            defaults.negative_ttl = policy.negative_ttl.unwrap_or(defaults.negative_ttl);
            defaults.load.jitter = policy.jitter.unwrap_or(defaults.load.jitter);
        }
        defaults
    }

    /// The TTL and load options of a write of `key` whose TTL is `ttl`, or
    /// the key's default if the caller gave none, and whose options are
    /// `options` but for the key's jitter (a warm-up's keys).
    pub(crate) fn settings_for(
        &self,
        key: &str,
        ttl: Option<Duration>,
        mut options: LoadOptions,
    ) -> (Duration, LoadOptions) {
        let defaults = self.defaults_for(key);
        options.jitter = defaults.load.jitter;
        (ttl.unwrap_or(defaults.ttl), options)
    }
}

/// Gives the local tiers of a cache the table, if any rule caps local copies.
pub(crate) fn attach(tiers: &mut [crate::Tier], table: &Arc<TtlPolicies>) {
    if !table.caps_local() {
        return;
    }
    for tier in tiers.iter_mut().filter(|tier| !tier.layer.is_shared()) {
        tier.key_caps = Some(table.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_head_is_the_literal_start_unescaped() {
        for (glob, head) in [
            ("reviews:offer:*", &b"reviews:offer:"[..]),
            ("offer:?", b"offer:"),
            ("a[bc]d", b"a"),
            (r"user:\*:*", b"user:*:"),
            ("exact", b"exact"),
            (r"trailing\", br"trailing\"),
            ("*", b""),
            ("", b""),
        ] {
            assert_eq!(literal_head(glob), head, "{glob:?}");
        }
    }

    #[test]
    fn the_first_matching_rule_wins() {
        let table = TtlPolicies::new(vec![
            (
                Pattern::new("offer:special:*"),
                TtlPolicy::new().ttl(Duration::from_secs(1)),
            ),
            (
                Pattern::new("offer:*"),
                TtlPolicy::new().ttl(Duration::from_secs(2)),
            ),
        ])
        .unwrap();
        let ttl = |key| table.find(key).and_then(|policy| policy.ttl);
        assert_eq!(ttl("offer:special:1"), Some(Duration::from_secs(1)));
        assert_eq!(ttl("offer:1"), Some(Duration::from_secs(2)));
        assert_eq!(ttl("user:1"), None);
        assert!(!table.caps_local());
    }

    #[test]
    fn bad_settings_are_config_errors_naming_the_pattern() {
        for policy in [
            TtlPolicy::new().ttl(Duration::ZERO),
            TtlPolicy::new().negative_ttl(Duration::ZERO),
            TtlPolicy::new().local_ttl_cap(Duration::ZERO),
            TtlPolicy::new().jitter(1.0),
            TtlPolicy::new().jitter(-0.1),
            TtlPolicy::new().jitter(f64::NAN),
        ] {
            let error = TtlPolicies::new(vec![(Pattern::new("offer:*"), policy)]).unwrap_err();
            assert_eq!(error.class(), cache_core::ErrorClass::Config, "{policy:?}");
            assert!(error.to_string().contains("\"offer:*\""), "{error}");
        }
    }

    /// Every string over a few bytes, up to `len` long.
    fn strings(alphabet: &[u8], len: usize) -> Vec<String> {
        let mut all = vec![String::new()];
        let mut last = all.clone();
        for _ in 0..len {
            last = last
                .iter()
                .flat_map(|s| alphabet.iter().map(move |&b| format!("{s}{}", b as char)))
                .collect();
            all.extend(last.iter().cloned());
        }
        all
    }

    #[test]
    fn the_head_never_rules_out_a_match() {
        // Exhaustive over short globs (wildcards, classes, escapes) and keys.
        let keys = strings(b"ab\\*", 4);
        let mut matched = 0;
        for glob in strings(b"a*?[]\\^", 4) {
            let (pattern, head) = (Pattern::new(glob.clone()), literal_head(&glob));
            for key in keys.iter().filter(|key| pattern.matches(key)) {
                matched += 1;
                assert!(key.as_bytes().starts_with(&head), "{glob:?} {key:?}");
            }
        }
        assert!(matched > 10_000, "{matched}");
    }
}
