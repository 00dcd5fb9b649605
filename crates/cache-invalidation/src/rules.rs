//! Dependency rules: which keys also go when a key is invalidated.

use std::collections::{HashSet, VecDeque};
use std::fmt;

use cache_core::Pattern;

use crate::template::Template;
use crate::{Error, Result};

/// Dependency rules between keys: "when `reviews:offer:{id}` goes, so do
/// `rating:offer:{id}` and `offer_stats:{id}`".
///
/// A rule has a *trigger* template, matched against the invalidated key,
/// and *dependent* templates, which are [`Pattern`]s with the trigger's
/// holes filled in (escaped, so an id holding `*` matches only itself).
/// Rules apply transitively: a dependent without wildcards is a key, and the
/// rules are applied to it in turn; cycles are harmless. Template syntax is
/// `{name}` for a hole and `{{`/`}}` for literal braces.
///
/// ```
/// use cache_invalidation::Rules;
///
/// let rules = Rules::builder()
///     .rule("reviews:offer:{id}", ["reviews:offer:{id}:*", "rating:offer:{id}", "offer_stats:{id}"])
///     .rule("user:{id}", ["reviews:author:{id}", "user_activity:{id}"])
///     .build()?;
/// let patterns: Vec<String> = rules
///     .expand("reviews:offer:42")?
///     .iter()
///     .map(|p| p.as_str().to_owned())
///     .collect();
/// assert_eq!(
///     patterns,
///     ["reviews:offer:42", "reviews:offer:42:*", "rating:offer:42", "offer_stats:42"]
/// );
/// # Ok::<(), cache_invalidation::Error>(())
/// ```
#[derive(Clone, Default)]
pub struct Rules {
    rules: Vec<Rule>,
    max_patterns: usize,
}

#[derive(Clone)]
struct Rule {
    trigger: Template,
    dependents: Vec<Template>,
}

impl fmt::Debug for Rules {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.rules.iter().map(|r| (&r.trigger, &r.dependents)))
            .finish()
    }
}

/// The default of [`RulesBuilder::max_patterns`].
const DEFAULT_MAX_PATTERNS: usize = 1024;

impl Rules {
    /// Starts an empty set of rules.
    pub fn builder() -> RulesBuilder {
        RulesBuilder {
            rules: Vec::new(),
            max_patterns: DEFAULT_MAX_PATTERNS,
        }
    }

    /// Whether there are no rules.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Every pattern that invalidating `key` removes: the key itself first,
    /// then its dependents in breadth-first order, each once.
    ///
    /// Fails with [`Error::TooManyPatterns`] when the rules reach more than
    /// the limit, rather than run away.
    pub fn expand(&self, key: &str) -> Result<Vec<Pattern>> {
        let first = Pattern::exact(key);
        let mut seen = HashSet::from([first.as_str().to_owned()]);
        let mut patterns = vec![first];
        let mut keys = VecDeque::from([key.to_owned()]);
        let limit = self.max_patterns.max(1);
        while let Some(current) = keys.pop_front() {
            for rule in &self.rules {
                let Some(captures) = rule.trigger.captures(&current) else {
                    continue;
                };
                for dependent in &rule.dependents {
                    let pattern = dependent
                        .fill(&captures)
                        .expect("dependents only use their trigger's holes (checked by build)");
                    if !seen.insert(pattern.as_str().to_owned()) {
                        continue;
                    }
                    if patterns.len() >= limit {
                        return Err(Error::TooManyPatterns {
                            key: key.into(),
                            limit,
                        });
                    }
                    if let Some(literal) = pattern.literal() {
                        keys.push_back(literal.to_owned());
                    }
                    patterns.push(pattern);
                }
            }
        }
        Ok(patterns)
    }
}

/// Builds [`Rules`]; templates are checked by [`build`](Self::build).
#[derive(Debug, Clone)]
#[must_use]
pub struct RulesBuilder {
    rules: Vec<(String, Vec<String>)>,
    max_patterns: usize,
}

impl RulesBuilder {
    /// When a key matching `trigger` is invalidated, so is every key
    /// matching one of `dependents`.
    pub fn rule<I, S>(mut self, trigger: impl Into<String>, dependents: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.rules.push((
            trigger.into(),
            dependents.into_iter().map(Into::into).collect(),
        ));
        self
    }

    /// The most patterns one invalidation may reach, the key included.
    /// Default: 1024.
    pub fn max_patterns(mut self, limit: usize) -> Self {
        self.max_patterns = limit;
        self
    }

    /// Checks every template: each parses, and each dependent uses only
    /// holes its trigger has.
    pub fn build(self) -> Result<Rules> {
        let invalid = |template: &str, reason: String| Error::Template {
            template: template.into(),
            reason: reason.into(),
        };
        let mut rules = Vec::with_capacity(self.rules.len());
        for (trigger_source, dependent_sources) in &self.rules {
            let trigger = Template::parse(trigger_source)
                .map_err(|reason| invalid(trigger_source, reason))?;
            let mut dependents = Vec::with_capacity(dependent_sources.len());
            for source in dependent_sources {
                let dependent =
                    Template::parse(source).map_err(|reason| invalid(source, reason))?;
                if let Some(hole) = dependent
                    .holes()
                    .find(|h| !trigger.holes().any(|t| t == *h))
                {
                    return Err(invalid(
                        source,
                        format!("hole `{{{hole}}}` is not in the trigger {trigger_source:?}"),
                    ));
                }
                dependents.push(dependent);
            }
            rules.push(Rule {
                trigger,
                dependents,
            });
        }
        Ok(Rules {
            rules,
            max_patterns: self.max_patterns,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expand(rules: &Rules, key: &str) -> Vec<String> {
        rules
            .expand(key)
            .unwrap()
            .iter()
            .map(|p| p.as_str().to_owned())
            .collect()
    }

    #[test]
    fn rules_apply_transitively_and_cycles_end() {
        let rules = Rules::builder()
            .rule("a:{id}", ["b:{id}"])
            .rule("b:{id}", ["c:{id}", "a:{id}"])
            .rule("c:{id}", ["d:{id}:*"])
            .build()
            .unwrap();
        assert_eq!(expand(&rules, "a:1"), ["a:1", "b:1", "c:1", "d:1:*"]);
        assert_eq!(expand(&rules, "b:1"), ["b:1", "c:1", "a:1", "d:1:*"]);
        assert_eq!(expand(&rules, "z:1"), ["z:1"]);
    }

    #[test]
    fn ids_with_glob_characters_stay_literal() {
        let rules = Rules::builder()
            .rule("user:{id}", ["reviews:author:{id}:*"])
            .rule("reviews:author:{id}:*", ["never"])
            .build()
            .unwrap();
        let patterns = rules.expand("user:a*[b]?\\").unwrap();
        assert_eq!(patterns.len(), 2);
        assert!(patterns[0].matches("user:a*[b]?\\"));
        assert!(!patterns[0].matches("user:aXb"));
        assert!(patterns[1].matches("reviews:author:a*[b]?\\:page:1"));
        assert!(!patterns[1].matches("reviews:author:aXXb]Y\\:page:1"));
    }

    #[test]
    fn a_runaway_expansion_is_an_error() {
        // Each key reaches two new keys: exponential without a limit.
        let rules = Rules::builder()
            .rule("k:{id}", ["k:{id}0", "k:{id}1"])
            .max_patterns(100)
            .build()
            .unwrap();
        assert!(matches!(
            rules.expand("k:"),
            Ok(patterns) if patterns.len() == 1
        ));
        assert!(matches!(
            rules.expand("k:x"),
            Err(Error::TooManyPatterns { limit: 100, .. })
        ));
    }

    #[test]
    fn bad_rules_are_refused_with_the_template() {
        for (trigger, dependent) in [("user:{id", "x"), ("user:{id}", "x:{other}"), ("u", "}")] {
            let error = Rules::builder()
                .rule(trigger, [dependent])
                .build()
                .unwrap_err();
            assert!(matches!(error, Error::Template { .. }), "{error}");
        }
    }
}
