//! Dependency rules: which keys also go when a key is invalidated.

use std::collections::{HashSet, VecDeque};
use std::fmt;

use cache_core::Pattern;

use crate::families::{Families, Family};
use crate::template::{Constraint, Template};
use crate::{Error, Result};

/// Dependency rules between keys: "when `reviews:offer:{id}` goes, so do
/// `rating:offer:{id}` and `offer_stats:{id}`", and the key families that
/// let a wildcard dependent go without a scan.
///
/// A rule has a *trigger* template, matched against the invalidated key,
/// and *dependent* templates, which are [`Pattern`]s with the trigger's
/// holes filled in (escaped, so an id holding `*` matches only itself).
/// Rules apply transitively: a dependent without wildcards is a key, and the
/// rules are applied to it in turn; cycles are harmless.
///
/// # Template syntax
/// - `{name}`: a hole, holding one or more characters; `{{` and `}}` are
///   literal braces.
/// - `{name:digits}`, `{name:word}`, `{name:no-colon}`: a hole holding only
///   ASCII digits; only ASCII letters, digits, `_` and `-`; anything but
///   `:`. A key whose text there breaks the constraint does not match the
///   trigger (the rule does not apply to it: it is not a key of that kind),
///   so `reviews:offer:{id:no-colon}` never reads `reviews:offer:1:2` as
///   offer `1:2`. Write the constraint in the trigger; a dependent may
///   repeat it, never contradict it.
///
/// # Families
/// A wildcard dependent is removed by scanning the shared tier for keys
/// that match it (Redis `SCAN`: its cost grows with the whole keyspace).
/// Declare its keys a [family](RulesBuilder::family) instead, and install
/// [`families`](Self::families) on the cache: values written under them
/// are stamped with their family's version, and the dependent goes by
/// removing that one version, whatever the number of keys.
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
    families: Families,
    max_patterns: usize,
}

#[derive(Clone)]
struct Rule {
    trigger: Template,
    dependents: Vec<Dependent>,
}

#[derive(Clone)]
struct Dependent {
    template: Template,
    /// The family this dependent is written as, and the trigger's hole
    /// that names it.
    family: Option<(usize, String)>,
}

impl fmt::Debug for Rules {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rules = self.rules.iter().map(|rule| {
            let dependents: Vec<&Template> = rule.dependents.iter().map(|d| &d.template).collect();
            (&rule.trigger, dependents)
        });
        f.debug_struct("Rules")
            .field("rules", &DebugMap(rules.collect()))
            .field("families", &self.families)
            .finish()
    }
}

struct DebugMap<'a>(Vec<(&'a Template, Vec<&'a Template>)>);

impl fmt::Debug for DebugMap<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(k, v)| (k, v)))
            .finish()
    }
}

/// The default of [`RulesBuilder::max_patterns`].
const DEFAULT_MAX_PATTERNS: usize = 1024;

/// What invalidating a key removes: every pattern, and for each whether it
/// goes by its family's version.
#[derive(Debug)]
pub(crate) struct Expansion {
    pub(crate) patterns: Vec<Pattern>,
    pub(crate) by_family: Vec<bool>,
}

impl Rules {
    /// Starts an empty set of rules.
    pub fn builder() -> RulesBuilder {
        RulesBuilder {
            rules: Vec::new(),
            families: Vec::new(),
            max_patterns: DEFAULT_MAX_PATTERNS,
        }
    }

    /// Whether there are no rules (families aside).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The key families these rules declare, to install on every
    /// instance's cache with
    /// [`TieredCacheBuilder::key_families`](cache_tiered::TieredCacheBuilder::key_families).
    /// An [`Invalidator`](crate::Invalidator) uses them only on a cache
    /// they are installed on (otherwise, it scans).
    pub fn families(&self) -> Families {
        self.families.clone()
    }

    /// Every pattern that invalidating `key` removes: the key itself first,
    /// then its dependents in breadth-first order, each once (whether they
    /// go by scanning or by their family).
    ///
    /// Fails with [`Error::TooManyPatterns`] when the rules reach more than
    /// the limit, rather than run away.
    pub fn expand(&self, key: &str) -> Result<Vec<Pattern>> {
        Ok(self.expansion(key)?.patterns)
    }

    /// [`expand`](Self::expand), saying which patterns go by their family.
    pub(crate) fn expansion(&self, key: &str) -> Result<Expansion> {
        let first = Pattern::exact(key);
        let mut seen = HashSet::from([first.as_str().to_owned()]);
        let mut patterns = vec![first];
        let mut by_family = vec![false];
        let mut keys = VecDeque::from([key.to_owned()]);
        let limit = self.max_patterns.max(1);
        while let Some(current) = keys.pop_front() {
            for rule in &self.rules {
                let Some(captures) = rule.trigger.captures(&current) else {
                    continue;
                };
                for dependent in &rule.dependents {
                    let pattern = dependent
                        .template
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
                    // An id the family's constraint refuses (the trigger's
                    // hole is looser) has no family: its keys are scanned.
                    let family = dependent.family.as_ref().is_some_and(|(index, hole)| {
                        let id = captures.get(hole).unwrap_or_default();
                        self.families.get(*index).constraint.allows(id)
                    });
                    patterns.push(pattern);
                    by_family.push(family);
                }
            }
        }
        Ok(Expansion {
            patterns,
            by_family,
        })
    }
}

/// Builds [`Rules`]; templates are checked by [`build`](Self::build).
#[derive(Debug, Clone)]
#[must_use]
pub struct RulesBuilder {
    rules: Vec<(String, Vec<String>)>,
    families: Vec<String>,
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

    /// Declares a key family: the keys matching `template` (literal text, one
    /// hole, then a glob) grouped by what the hole holds. With
    /// `reviews:offer:{id:digits}:*`, `reviews:offer:42:page:0:limit:10`
    /// belongs to the family of `42`, named `reviews:offer:42:*`.
    ///
    /// The hole must be constrained so that it cannot hold the character
    /// right after it (`{id:no-colon}` or `{id:digits}` before a `:`): then
    /// a key has at most one id, and the family of an id holds exactly
    /// the keys its name matches as a pattern.
    ///
    /// On a cache with [`Rules::families`] installed, every value written
    /// under a family's key is stamped with the family's version (as a tag
    /// is, see [`TieredCache::set_tagged`](cache_tiered::TieredCache::set_tagged)),
    /// and a rule's dependent written as the family (`reviews:offer:{id}:*`)
    /// goes by removing that version: one key, whatever the keyspace, on
    /// every instance, instead of a scan. Any other wildcard dependent is
    /// still scanned. A family costs every value of it a version check on
    /// each read; declare one where scans are too slow.
    ///
    /// ```
    /// use std::time::Duration;
    /// use cache_invalidation::{Invalidator, Rules};
    /// use cache_memory::MemoryLayer;
    /// use cache_tiered::TieredCache;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let rules = Rules::builder()
    ///     .rule("reviews:offer:{id:digits}", ["reviews:offer:{id}:*", "rating:offer:{id}"])
    ///     .family("reviews:offer:{id:digits}:*")
    ///     .build()?;
    /// let cache = TieredCache::builder()
    ///     .layer(MemoryLayer::new())
    ///     .key_families(rules.families()) // on every instance
    ///     .build()?;
    /// let invalidator = Invalidator::new(cache.clone(), rules);
    ///
    /// let ttl = Duration::from_secs(300);
    /// cache.set("reviews:offer:7:page:0:limit:10", &"great".to_owned(), ttl).await?;
    /// cache.set("reviews:offer:8:page:0:limit:10", &"fine".to_owned(), ttl).await?;
    ///
    /// let invalidated = invalidator.invalidate_key("reviews:offer:7").await?;
    /// assert_eq!(invalidated.by_family.len(), 1); // no scan
    /// assert_eq!(cache.get::<String>("reviews:offer:7:page:0:limit:10").await?, None);
    /// assert!(cache.get::<String>("reviews:offer:8:page:0:limit:10").await?.is_some());
    /// # Ok(())
    /// # }
    /// ```
    pub fn family(mut self, template: impl Into<String>) -> Self {
        self.families.push(template.into());
        self
    }

    /// The most patterns one invalidation may reach, the key included.
    /// Default: 1024.
    pub fn max_patterns(mut self, limit: usize) -> Self {
        self.max_patterns = limit;
        self
    }

    /// Checks every template: each parses; each dependent uses only holes
    /// its trigger has, with no other constraint than the trigger's; each
    /// family has one hole that cannot run into the text after it, is
    /// declared once, and takes every id a trigger gives a dependent
    /// written as it, when that trigger constrains its hole.
    pub fn build(self) -> Result<Rules> {
        let invalid = |template: &str, reason: String| Error::Template {
            template: template.into(),
            reason: reason.into(),
        };
        let mut families: Vec<Family> = Vec::with_capacity(self.families.len());
        for source in &self.families {
            let family = Family::parse(source).map_err(|reason| invalid(source, reason))?;
            if let Some(earlier) = families.iter().find(|other| other.same_keys(&family)) {
                return Err(invalid(
                    source,
                    format!(
                        "the family {:?} names the same keys: declare it once, with one constraint",
                        earlier.source()
                    ),
                ));
            }
            families.push(family);
        }
        let mut rules = Vec::with_capacity(self.rules.len());
        for (trigger_source, dependent_sources) in &self.rules {
            let trigger = Template::parse(trigger_source)
                .map_err(|reason| invalid(trigger_source, reason))?;
            let mut dependents = Vec::with_capacity(dependent_sources.len());
            for source in dependent_sources {
                let template = Template::parse(source).map_err(|reason| invalid(source, reason))?;
                for hole in template.holes() {
                    let Some(own) = trigger.hole(&hole.name) else {
                        return Err(invalid(
                            source,
                            format!(
                                "hole `{{{}}}` is not in the trigger {trigger_source:?}",
                                hole.name
                            ),
                        ));
                    };
                    if hole.constraint != Constraint::Any && hole.constraint != own.constraint {
                        return Err(invalid(
                            source,
                            format!(
                                "hole `{{{name}}}` is `{}` here but `{}` in the trigger \
                                 {trigger_source:?}: a hole has one constraint, written in \
                                 the trigger (a dependent may leave it out)",
                                hole.constraint.name(),
                                own.constraint.name(),
                                name = hole.name,
                            ),
                        ));
                    }
                }
                let family = families
                    .iter()
                    .enumerate()
                    .find_map(|(index, family)| Some((index, family, family.covers(&template)?)));
                if let Some((_, family, hole)) = family {
                    let taken = trigger.hole(&hole.name).map(|h| h.constraint);
                    let taken = taken.unwrap_or_default();
                    if taken != Constraint::Any && !taken.implies(family.constraint) {
                        return Err(invalid(
                            source,
                            format!(
                                "this dependent is the family {:?}, whose id is `{}`, but the \
                                 trigger {trigger_source:?} gives it `{{{}:{}}}` ids: make the \
                                 constraints agree",
                                family.source(),
                                family.constraint.name(),
                                hole.name,
                                taken.name(),
                            ),
                        ));
                    }
                }
                dependents.push(Dependent {
                    family: family.map(|(index, _, hole)| (index, hole.name.clone())),
                    template,
                });
            }
            rules.push(Rule {
                trigger,
                dependents,
            });
        }
        Ok(Rules {
            rules,
            families: Families::new(families),
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

    fn by_family(rules: &Rules, key: &str) -> Vec<(String, bool)> {
        let expansion = rules.expansion(key).unwrap();
        expansion
            .patterns
            .iter()
            .map(|p| p.as_str().to_owned())
            .zip(expansion.by_family)
            .collect()
    }

    #[test]
    fn wildcard_dependents_written_as_a_family_go_by_it() {
        let rules = Rules::builder()
            .rule(
                "reviews:offer:{id}",
                [
                    "reviews:offer:{id}:*",
                    "reviews:offer:{id}-draft:*",
                    "rating:offer:{id}",
                ],
            )
            .family("reviews:offer:{id:digits}:*")
            .build()
            .unwrap();
        assert_eq!(
            by_family(&rules, "reviews:offer:42"),
            [
                ("reviews:offer:42".to_owned(), false),
                ("reviews:offer:42:*".to_owned(), true),
                // Not written as a family: scanned.
                ("reviews:offer:42-draft:*".to_owned(), false),
                ("rating:offer:42".to_owned(), false),
            ]
        );
        // An id the family's constraint refuses (the trigger's hole takes
        // any text): scanned, so that its keys still go.
        assert_eq!(
            by_family(&rules, "reviews:offer:4:2")[1],
            ("reviews:offer:4:2:*".to_owned(), false)
        );
        assert_eq!(
            by_family(&rules, "reviews:offer:a*")[1],
            (r"reviews:offer:a\*:*".to_owned(), false)
        );
        assert!(!rules.families().is_empty());
    }

    #[test]
    fn a_constrained_trigger_ignores_keys_of_another_shape() {
        let rules = Rules::builder()
            .rule("reviews:offer:{id:no-colon}", ["reviews:offer:{id}:*"])
            .family("reviews:offer:{id:no-colon}:*")
            .build()
            .unwrap();
        assert_eq!(
            expand(&rules, "reviews:offer:1"),
            ["reviews:offer:1", "reviews:offer:1:*"]
        );
        // `1:2` is no offer id: the key itself goes, and nothing of offer 1.
        assert_eq!(expand(&rules, "reviews:offer:1:2"), ["reviews:offer:1:2"]);
        assert_eq!(
            by_family(&rules, "reviews:offer:a*b")[1],
            (r"reviews:offer:a\*b:*".to_owned(), true)
        );
    }

    #[test]
    fn contradictory_declarations_are_refused_at_build() {
        let refused = |builder: RulesBuilder, template: &str, hint: &str| {
            let error = builder.build().unwrap_err();
            let Error::Template {
                template: found,
                reason,
            } = &error
            else {
                panic!("{error}")
            };
            assert_eq!(&**found, template, "{error}");
            assert!(reason.contains(hint), "{error}");
            assert_eq!(error.class(), cache_core::ErrorClass::Config);
        };
        refused(
            Rules::builder().rule("offer:{id:digits}", ["stats:{id:word}"]),
            "stats:{id:word}",
            "`word` here but `digits` in the trigger",
        );
        refused(
            Rules::builder().rule("offer:{id}", ["stats:{id:digits}"]),
            "stats:{id:digits}",
            "`digits` here but `any` in the trigger",
        );
        refused(
            Rules::builder()
                .family("r:{id:digits}:*")
                .family("r:{key:no-colon}:*"),
            "r:{key:no-colon}:*",
            "names the same keys",
        );
        refused(
            Rules::builder()
                .rule("offer:{id:word}", ["r:{id}:*"])
                .family("r:{id:digits}:*"),
            "r:{id}:*",
            "make the constraints agree",
        );
        refused(
            Rules::builder().family("r:{id}:*"),
            "r:{id}:*",
            "must be constrained",
        );
        refused(
            Rules::builder().family("r:{id:digits}:{page}:*"),
            "r:{id:digits}:{page}:*",
            "exactly one hole",
        );
        // Narrower than the family's: every id the trigger gives is one.
        Rules::builder()
            .rule("offer:{id:digits}", ["r:{id:digits}:*"])
            .family("r:{id:no-colon}:*")
            .build()
            .unwrap();
    }
}
