//! Key templates with named holes: `reviews:offer:{id}`.
//!
//! A template alternates literal text and holes (`{name}`, the name made of
//! ASCII letters, digits and `_`); `{{` and `}}` stand for literal braces
//! (Redis Cluster hash tags are written `{{...}}`). Two holes must be
//! separated by literal text, and a hole name appears at most once.
//!
//! A *trigger* template is matched against a key: its literal text must
//! appear as is, and each hole takes one or more characters. When a key can
//! be split in several ways (`a:{x}:{y}` against `a:1:2:3`), each hole takes
//! the shortest text that lets the rest match (`x = 1`, `y = 2:3`), so the
//! last hole takes whatever remains.
//!
//! A *dependent* template is a [`Pattern`] with holes: its literal text is
//! glob syntax, and each hole is filled with the trigger's capture, escaped,
//! so that a user id holding `*` or `[` matches only itself.

use std::fmt;

use cache_core::{Pattern, escape};

/// A parsed template.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Template {
    source: String,
    /// Literal text and holes, never two holes in a row, never two literals
    /// in a row.
    parts: Vec<Part>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Literal(String),
    Hole(String),
}

impl fmt::Debug for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.source, f)
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

/// The values a trigger's holes took, by hole name (borrowed from the
/// template and the key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Captures<'k>(Vec<(&'k str, &'k str)>);

impl<'k> Captures<'k> {
    fn get(&self, name: &str) -> Option<&'k str> {
        self.0
            .iter()
            .find(|(hole, _)| *hole == name)
            .map(|(_, v)| *v)
    }
}

impl Template {
    /// Parses `source`; the error says what is wrong with it.
    pub(crate) fn parse(source: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut chars = source.char_indices().peekable();
        while let Some((at, c)) = chars.next() {
            match c {
                '{' if chars.peek().map(|&(_, c)| c) == Some('{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek().map(|&(_, c)| c) == Some('}') => {
                    chars.next();
                    literal.push('}');
                }
                '{' => {
                    let rest = &source[at + 1..];
                    let Some(len) = rest.find('}') else {
                        return Err(format!(
                            "the `{{` at byte {at} is not closed (write `{{{{` for a literal brace)"
                        ));
                    };
                    let name = &rest[..len];
                    if name.is_empty()
                        || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                    {
                        return Err(format!(
                            "`{{{name}}}` is not a hole: a hole's name is ASCII letters, digits and `_`"
                        ));
                    }
                    if literal.is_empty() && matches!(parts.last(), Some(Part::Hole(_))) {
                        return Err(format!(
                            "holes `{{{}}}` and `{{{name}}}` must be separated by text",
                            hole_name(parts.last())
                        ));
                    }
                    if parts
                        .iter()
                        .any(|part| matches!(part, Part::Hole(n) if n == name))
                    {
                        return Err(format!("hole `{{{name}}}` appears twice"));
                    }
                    if !literal.is_empty() {
                        parts.push(Part::Literal(std::mem::take(&mut literal)));
                    }
                    parts.push(Part::Hole(name.to_owned()));
                    for _ in 0..=len {
                        chars.next();
                    }
                }
                '}' => {
                    return Err(format!(
                        "the `}}` at byte {at} closes nothing (write `}}}}` for a literal brace)"
                    ));
                }
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        Ok(Template {
            source: source.to_owned(),
            parts,
        })
    }

    /// The names of the holes, in order.
    pub(crate) fn holes(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|part| match part {
            Part::Hole(name) => Some(name.as_str()),
            Part::Literal(_) => None,
        })
    }

    /// Matches `key` against this template as a trigger (literal text is
    /// literal). In O(holes × key length × literal length): no backtracking
    /// blow-up, whatever the key.
    pub(crate) fn captures<'k>(&'k self, key: &'k str) -> Option<Captures<'k>> {
        // Split into: literal prefix, then (hole, literal) pairs, the last
        // literal possibly empty.
        let (prefix, rest) = match self.parts.first() {
            Some(Part::Literal(text)) => (text.as_str(), &self.parts[1..]),
            _ => ("", &self.parts[..]),
        };
        let mut holes: Vec<(&str, &str)> = Vec::new();
        let mut iter = rest.iter();
        while let Some(part) = iter.next() {
            let Part::Hole(name) = part else {
                unreachable!("parts alternate")
            };
            let after = match iter.next() {
                Some(Part::Literal(text)) => text.as_str(),
                Some(Part::Hole(_)) => unreachable!("parts alternate"),
                None => "",
            };
            holes.push((name, after));
        }
        let body = key.strip_prefix(prefix)?;
        let Some(((_, suffix), inner)) = holes.split_last() else {
            return body.is_empty().then(|| Captures(Vec::new()));
        };
        let body = body.strip_suffix(suffix)?;
        let bytes = body.as_bytes();
        let len = bytes.len();
        // feasible[j][i]: holes j.. (with their separators) can match body[i..].
        // The last hole takes a non-empty rest.
        let mut feasible = vec![vec![false; len + 1]; holes.len()];
        for (i, slot) in feasible[holes.len() - 1].iter_mut().enumerate() {
            *slot = i < len;
        }
        for j in (0..inner.len()).rev() {
            let sep = inner[j].1.as_bytes();
            // Some p > i where body[p..] starts with sep and holes j+1.. fit after it.
            let mut any_after = false;
            for i in (0..=len).rev() {
                feasible[j][i] = any_after;
                if bytes[i..].starts_with(sep)
                    && feasible[j + 1].get(i + sep.len()).copied().unwrap_or(false)
                {
                    any_after = true;
                }
            }
        }
        if !feasible[0][0] {
            return None;
        }
        let mut captures = Vec::with_capacity(holes.len());
        let mut start = 0;
        for (j, (name, sep)) in inner.iter().enumerate() {
            let sep = sep.as_bytes();
            let end = (start + 1..=len)
                .find(|&p| {
                    bytes[p..].starts_with(sep)
                        && feasible[j + 1].get(p + sep.len()).copied().unwrap_or(false)
                })
                .expect("feasible says a split exists");
            // Separators are whole strings, so `end` is a char boundary.
            captures.push((*name, body.get(start..end)?));
            start = end + sep.len();
        }
        let last = holes.last().expect("non-empty").0;
        captures.push((last, body.get(start..)?));
        Some(Captures(captures))
    }

    /// Fills the holes with `captures` (escaped) and reads the result as a
    /// pattern. `None` if a hole has no capture (checked when rules are built).
    pub(crate) fn fill(&self, captures: &Captures<'_>) -> Option<Pattern> {
        let mut glob = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(text) => glob.push_str(text),
                Part::Hole(name) => glob.push_str(&escape(captures.get(name)?)),
            }
        }
        Some(Pattern::new(glob))
    }
}

fn hole_name(part: Option<&Part>) -> &str {
    match part {
        Some(Part::Hole(name)) => name,
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn captures(template: &str, key: &str) -> Option<Vec<(String, String)>> {
        Template::parse(template).unwrap().captures(key).map(|c| {
            c.0.iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect()
        })
    }

    fn pairs(list: &[(&str, &str)]) -> Option<Vec<(String, String)>> {
        Some(
            list.iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
        )
    }

    /// The reference: every way to split `key` over `parts` (holes take one
    /// or more characters), as capture lengths; the matcher must return the
    /// smallest in lexicographic order (shortest first hole first).
    fn all_splits(parts: &[Part], key: &str) -> Vec<Vec<usize>> {
        match parts.split_first() {
            None if key.is_empty() => vec![Vec::new()],
            None => Vec::new(),
            Some((Part::Literal(text), rest)) => key
                .strip_prefix(text.as_str())
                .map(|key| all_splits(rest, key))
                .unwrap_or_default(),
            Some((Part::Hole(_), rest)) => (1..=key.len())
                .filter(|&n| key.is_char_boundary(n))
                .flat_map(|n| {
                    all_splits(rest, &key[n..])
                        .into_iter()
                        .map(move |mut tail| {
                            tail.insert(0, n);
                            tail
                        })
                })
                .collect(),
        }
    }

    fn template_source() -> impl Strategy<Value = String> {
        // Literal runs from a tiny alphabet (so that separators recur in
        // keys), holes between them.
        let literal = "[a:é]{0,3}";
        proptest::collection::vec(literal, 1..5).prop_map(|literals| {
            let mut source = String::new();
            for (n, text) in literals.iter().enumerate() {
                if n > 0 {
                    // Holes must be separated by text.
                    if literals[n - 1].is_empty() && n > 1 {
                        source.push(':');
                    }
                    source.push_str(&format!("{{h{n}}}"));
                }
                source.push_str(text);
            }
            source
        })
    }

    /// Short texts made mostly of glob syntax.
    fn glob_heavy_text() -> impl Strategy<Value = String> {
        proptest::collection::vec(
            proptest::sample::select(vec!['a', '*', '?', '\\', '[', ']', '^', ':', '-']),
            1..6,
        )
        .prop_map(|chars| chars.into_iter().collect())
    }

    proptest! {
        #[test]
        fn captures_agree_with_the_brute_force_reference(
            source in template_source(),
            key in "[a:é]{0,10}",
        ) {
            let template = Template::parse(&source).unwrap();
            let expected = all_splits(&template.parts, &key).into_iter().min();
            let got = template.captures(&key).map(|captures| {
                captures.0.iter().map(|(_, value)| value.len()).collect::<Vec<_>>()
            });
            prop_assert_eq!(got, expected, "template {:?} key {:?}", source, key);
        }

        #[test]
        fn filled_dependents_match_exactly_the_captured_text(
            id in glob_heavy_text(),
            other in glob_heavy_text(),
        ) {
            let trigger = Template::parse("user:{id}").unwrap();
            let dependent = Template::parse("feed:{id}:*").unwrap();
            let user_key = format!("user:{id}");
            let captures = trigger.captures(&user_key).unwrap();
            let pattern = dependent.fill(&captures).unwrap();
            let own_key = format!("feed:{id}:page:1");
            let other_key = format!("feed:{other}:page:1");
            let other_is_under_id = other_key.starts_with(&format!("feed:{id}:"));
            prop_assert!(pattern.matches(&own_key));
            prop_assert_eq!(pattern.matches(&other_key), other_is_under_id);
        }
    }

    #[test]
    fn holes_take_the_shortest_text_that_lets_the_rest_match() {
        assert_eq!(
            captures("reviews:offer:{id}", "reviews:offer:42"),
            pairs(&[("id", "42")])
        );
        assert_eq!(
            captures("reviews:offer:{id}", "reviews:offer:4:2"),
            pairs(&[("id", "4:2")])
        );
        assert_eq!(
            captures("a:{x}:{y}", "a:1:2:3"),
            pairs(&[("x", "1"), ("y", "2:3")])
        );
        assert_eq!(
            captures("{x}:mid:{y}:end", "p:mid:q:mid:r:end"),
            pairs(&[("x", "p"), ("y", "q:mid:r")])
        );
        assert_eq!(captures("{x}", "é"), pairs(&[("x", "é")]));
        assert_eq!(
            captures("user:{id}", "user:"),
            None,
            "holes are never empty"
        );
        assert_eq!(captures("user:{id}", "users:1"), None);
        assert_eq!(captures("a:{x}:b", "a::b"), None);
        assert_eq!(captures("plain", "plain"), pairs(&[]));
        assert_eq!(captures("plain", "plain2"), None);
        // A prefix and a suffix that overlap in the key do not both match.
        assert_eq!(captures("ab{x}ba", "aba"), None);
    }

    #[test]
    fn braces_escape_and_bad_templates_are_refused() {
        let t = Template::parse("{{tag}}:{id}").unwrap();
        assert_eq!(t.holes().collect::<Vec<_>>(), ["id"]);
        assert_eq!(captures("{{tag}}:{id}", "{tag}:7"), pairs(&[("id", "7")]));
        for bad in ["{id", "id}", "{}", "{a-b}", "{a}{b}", "{a}:{a}", "x{ y }"] {
            assert!(Template::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn fill_escapes_what_holes_captured() {
        let trigger = Template::parse("user:{id}").unwrap();
        let dependent = Template::parse("reviews:author:{id}:*").unwrap();
        let key = "user:evil*[x]";
        let pattern = dependent.fill(&trigger.captures(key).unwrap()).unwrap();
        assert!(pattern.matches("reviews:author:evil*[x]:page:1"));
        assert!(!pattern.matches("reviews:author:evil-twin:page:1"));
        let missing = Template::parse("x:{other}").unwrap();
        assert_eq!(missing.fill(&trigger.captures(key).unwrap()), None);
    }
}
