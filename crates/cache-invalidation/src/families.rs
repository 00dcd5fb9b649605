//! Key families: the keys of a pattern with one hole, grouped by what the
//! hole holds, each group invalidated by bumping one version.
//!
//! A family is declared as a template with exactly one hole, whose text
//! before the hole is literal and whose text after it is a glob:
//! `reviews:offer:{id:digits}:*`. A key belongs to the family of `id` when
//! it is `reviews:offer:` + `id` + something `:*` matches. The hole must be
//! constrained so that it cannot hold the character that follows it (here
//! `:`): then a key has at most one id, found by one forward scan, and the
//! set of keys of the family of `42` is exactly the set the pattern
//! `reviews:offer:42:*` matches. That equality is what lets a rule's
//! wildcard dependent written the same way go by the family instead of a
//! scan (`rules.rs`).
//!
//! The family of `id` is named by that pattern, `id` escaped
//! (`reviews:offer:42:*`): the name is the tag its version is stored under
//! (`cache_tiered::TieredCache::tag_key`), the same on every instance
//! whatever the hole is called, and two declarations that name the same
//! pattern name the same keys.

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use cache_core::{Pattern, escape};
use cache_tiered::KeyFamilies;

use crate::template::{Constraint, Hole, Template};

/// The key families of a [`Rules`](crate::Rules): install them on every
/// instance's cache with
/// [`TieredCacheBuilder::key_families`](cache_tiered::TieredCacheBuilder::key_families),
/// so that values written under their keys are stamped with the families'
/// versions.
///
/// Cheap to clone. See [`RulesBuilder::family`](crate::RulesBuilder::family).
///
/// ```
/// use cache_invalidation::Rules;
/// use cache_tiered::KeyFamilies;
///
/// let rules = Rules::builder()
///     .family("reviews:offer:{id:digits}:*")
///     .build()?;
/// let mut families = Vec::new();
/// rules.families().families_of("reviews:offer:42:page:0:limit:10", &mut families);
/// assert_eq!(families, ["reviews:offer:42:*"]);
///
/// families.clear();
/// rules.families().families_of("reviews:author:42", &mut families);
/// assert!(families.is_empty());
/// # Ok::<(), cache_invalidation::Error>(())
/// ```
#[derive(Clone, Default)]
pub struct Families {
    list: Arc<Vec<Family>>,
}

impl Families {
    pub(crate) fn new(list: Vec<Family>) -> Self {
        Families {
            list: Arc::new(list),
        }
    }

    pub(crate) fn get(&self, index: usize) -> &Family {
        &self.list[index]
    }

    /// Whether no family is declared.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Whether `installed` stamps exactly these families: the same
    /// declarations, possibly built separately.
    pub(crate) fn same_as(&self, installed: &dyn KeyFamilies) -> bool {
        let installed: &dyn Any = installed;
        installed
            .downcast_ref::<Families>()
            .is_some_and(|installed| installed == self)
    }
}

impl PartialEq for Families {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.list, &other.list) || self.list == other.list
    }
}

impl Eq for Families {}

impl fmt::Debug for Families {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.list.iter().map(|family| &family.source))
            .finish()
    }
}

impl KeyFamilies for Families {
    /// Pushes the name of each family `key` belongs to: a prefix test per
    /// family, then, for the keys that pass it, a scan of the id and a glob
    /// match of the rest.
    fn families_of(&self, key: &str, out: &mut Vec<String>) {
        for family in self.list.iter() {
            if let Some(id) = family.id_of(key) {
                out.push(family.name(id));
            }
        }
    }
}

/// One declared family: `prefix{id:constraint}rest`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Family {
    /// As declared.
    source: String,
    /// The literal text before the hole.
    prefix: String,
    /// What the id may hold; never `Any`, and never the first character
    /// of `rest`.
    pub(crate) constraint: Constraint,
    /// The glob after the hole, as written.
    rest: String,
    rest_pattern: Pattern,
}

impl Family {
    /// Parses and checks a declaration; the error says what to change.
    pub(crate) fn parse(source: &str) -> Result<Family, String> {
        let template = Template::parse(source)?;
        let Some((prefix, hole, rest)) = template.one_hole() else {
            let holes = template.holes().count();
            return Err(format!(
                "a family has exactly one hole, the id that names the family \
                 (`reviews:offer:{{id:digits}}:*`); this one has {holes}"
            ));
        };
        let name = &hole.name;
        if let Some(c) = prefix
            .chars()
            .find(|&c| matches!(c, '*' | '?' | '[' | '\\'))
        {
            return Err(format!(
                "the text before `{{{name}}}` must be literal, without `{c}`: \
                 it is how a key is recognized as the family's"
            ));
        }
        let rest_pattern = Pattern::new(rest);
        if rest_pattern.literal().is_some() {
            return Err(format!(
                "the text after `{{{name}}}` has no wildcard, so the family of an id \
                 is one key: name that key in a rule instead"
            ));
        }
        let first = match rest.as_bytes() {
            [b'\\', escaped, ..] => *escaped,
            [b'*' | b'?' | b'[', ..] => {
                return Err(format!(
                    "the text right after `{{{name}}}` must be a literal character \
                     (`{{{name}:digits}}:*`, not `{{{name}}}*`): it is where the id ends"
                ));
            }
            [first, ..] => *first,
            [] => unreachable!("a rest without a wildcard was refused above"),
        };
        if hole.constraint.allows_byte(first) {
            let fix = match first {
                b':' => format!("for example `{{{name}:no-colon}}`"),
                _ if first.is_ascii_digit() => {
                    "no constraint can when it is a digit: put a separator after the hole"
                        .to_owned()
                }
                _ if first.is_ascii_alphabetic() || first == b'_' || first == b'-' => {
                    format!("for example `{{{name}:digits}}`")
                }
                _ => format!("for example `{{{name}:word}}`"),
            };
            let shown = rest.strip_prefix('\\').unwrap_or(rest).chars().next();
            let shown = shown.unwrap_or('\\');
            return Err(format!(
                "`{{{name}}}` must be constrained so that it cannot hold `{shown}`, \
                 the character after it, so that every key has at most one id ({fix})"
            ));
        }
        Ok(Family {
            source: source.to_owned(),
            prefix: prefix.to_owned(),
            constraint: hole.constraint,
            rest: rest.to_owned(),
            rest_pattern,
        })
    }

    pub(crate) fn source(&self) -> &str {
        &self.source
    }

    /// Whether `other` names the same keys for every id (hole names and
    /// constraints aside).
    pub(crate) fn same_keys(&self, other: &Family) -> bool {
        self.prefix == other.prefix && self.rest == other.rest
    }

    /// The id `key` has in this family, if it belongs to it. The id is the
    /// run of bytes the constraint allows after the prefix: it cannot
    /// hold the first character of the rest, so it can end nowhere else.
    pub(crate) fn id_of<'k>(&self, key: &'k str) -> Option<&'k str> {
        let body = key.strip_prefix(self.prefix.as_str())?;
        let end = body
            .bytes()
            .position(|byte| !self.constraint.allows_byte(byte))
            .unwrap_or(body.len());
        // A char boundary: the run is ASCII, or ends before a `:`.
        let (id, rest) = (body.get(..end)?, body.get(end..)?);
        (!id.is_empty() && self.rest_pattern.matches(rest)).then_some(id)
    }

    /// The name of the family of `id`: the pattern its keys match.
    pub(crate) fn name(&self, id: &str) -> String {
        let mut name = String::with_capacity(self.prefix.len() + id.len() + self.rest.len() + 2);
        name.push_str(&self.prefix);
        name.push_str(&escape(id));
        name.push_str(&self.rest);
        name
    }

    /// The hole of `dependent` if it is written as this family (same text
    /// around one hole): then, for an id this family's constraint allows,
    /// the keys `dependent` reaches are exactly the family's.
    pub(crate) fn covers<'t>(&self, dependent: &'t Template) -> Option<&'t Hole> {
        let (prefix, hole, rest) = dependent.one_hole()?;
        (prefix == self.prefix && rest == self.rest).then_some(hole)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn family(source: &str) -> Family {
        Family::parse(source).unwrap()
    }

    #[test]
    fn a_key_has_at_most_one_id_per_family() {
        let pages = family("reviews:offer:{id:no-colon}:*");
        assert_eq!(pages.id_of("reviews:offer:42:page:0:limit:10"), Some("42"));
        assert_eq!(pages.id_of("reviews:offer:a*b:page:0"), Some("a*b"));
        assert_eq!(pages.id_of("reviews:offer:42:"), Some("42"));
        assert_eq!(pages.id_of("reviews:offer:42"), None, "no `:` after the id");
        assert_eq!(
            pages.id_of("reviews:offer::page:0"),
            None,
            "ids are never empty"
        );
        assert_eq!(pages.id_of("reviews:author:42:page:0"), None);
        assert_eq!(pages.name("42"), "reviews:offer:42:*");
        assert_eq!(pages.name("a*b"), r"reviews:offer:a\*b:*");

        let digits = family("offer:{id:digits}.v*");
        assert_eq!(digits.id_of("offer:12.v2"), Some("12"));
        assert_eq!(digits.id_of("offer:12x.v2"), None);
        assert_eq!(digits.id_of("offer:é.v2"), None);
        let braces = family("{{t}}:{id:word}:*");
        assert_eq!(braces.id_of("{t}:a-b:x"), Some("a-b"));
    }

    #[test]
    fn declarations_that_leave_an_id_ambiguous_are_refused() {
        for (source, hint) in [
            ("reviews:offer:{id}:*", "{id:no-colon}"),
            ("offer:{id:word}-*", "{id:digits}"),
            ("offer:{id:no-colon}x*", "{id:digits}"),
            ("offer:{id:digits}*", "literal character"),
            ("offer:{id:digits}", "no wildcard"),
            ("offer:{id:digits}:page", "no wildcard"),
            ("offer:*:{id:digits}:*", "must be literal"),
            ("offer:{id:digits}:{page}:*", "exactly one hole"),
            ("offer:*", "exactly one hole"),
            ("offer:{id", "not closed"),
        ] {
            let error = Family::parse(source).unwrap_err();
            assert!(error.contains(hint), "{source}: {error}");
        }
    }

    fn text() -> impl Strategy<Value = String> {
        proptest::collection::vec(
            proptest::sample::select(vec!['1', '2', 'a', ':', '*', '-', '.', 'é']),
            0..8,
        )
        .prop_map(|chars| chars.into_iter().collect())
    }

    proptest! {
        /// The family of `id` is exactly what its name matches as a
        /// pattern, for ids the constraint allows: the equality that lets a
        /// dependent written as the family skip its scan.
        #[test]
        fn a_family_is_the_set_its_name_matches(
            source in proptest::sample::select(vec![
                "r:o:{id:no-colon}:*",
                "r:o:{id:digits}:p:*:l:*",
                "r:{id:word}.*",
                "{id:digits}:*",
            ]),
            id in text(),
            key in text(),
            tail in text(),
        ) {
            let family = family(source);
            // Keys built around the id, and arbitrary ones.
            let (prefix, rest) = (family.prefix.clone(), tail);
            for key in [format!("{prefix}{id}{rest}"), format!("{prefix}{key}"), key.clone()] {
                let member = family.id_of(&key) == Some(id.as_str());
                if family.constraint.allows(&id) {
                    let name = Pattern::new(family.name(&id));
                    prop_assert_eq!(member, name.matches(&key), "{} {:?} {:?}", source, id, key);
                } else {
                    prop_assert!(!member);
                }
                // Whatever family a key is in, it matches that family's name.
                if let Some(found) = family.id_of(&key) {
                    prop_assert!(Pattern::new(family.name(found)).matches(&key));
                }
            }
        }
    }
}
