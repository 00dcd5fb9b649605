//! Key templates with named holes: `reviews:offer:{id}`.
//!
//! A template alternates literal text and holes (`{name}`, the name made of
//! ASCII letters, digits and `_`); `{{` and `}}` stand for literal braces
//! (Redis Cluster hash tags are written `{{...}}`). Two holes must be
//! separated by literal text, and a hole name appears at most once.
//!
//! A hole may be *constrained* to the text it can hold: `{id:digits}`
//! (ASCII digits), `{id:word}` (ASCII letters, digits, `_` and `-`) or
//! `{id:no-colon}` (anything but `:`). Unconstrained, it holds any text.
//!
//! A *trigger* template is matched against a key: its literal text must
//! appear as is, and each hole takes one or more characters its constraint
//! allows. When a key can be split in several ways (`a:{x}:{y}` against
//! `a:1:2:3`), each hole takes the shortest text that lets the rest match
//! (`x = 1`, `y = 2:3`), so the last hole takes whatever remains. A key that
//! can only be split by giving a hole text its constraint refuses does not
//! match (`a:{x:no-colon}` against `a:1:2`).
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
    Hole(Hole),
}

/// A named hole and what it may hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Hole {
    pub(crate) name: String,
    pub(crate) constraint: Constraint,
}

/// What text a hole may hold (always at least one character).
///
/// The kinds nest: `digits` ⊂ `word` ⊂ `no-colon` ⊂ any text. Each is a
/// test on single bytes: none lets a hole end inside a multi-byte
/// character (`word` and `digits` are ASCII only; no byte of a multi-byte
/// character is `:`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Constraint {
    /// Any text.
    #[default]
    Any,
    /// Anything but `:`, the usual separator of key segments.
    NoColon,
    /// ASCII letters, digits, `_` and `-`.
    Word,
    /// ASCII digits.
    Digits,
}

impl Constraint {
    /// The kinds a template may name, as written.
    const NAMES: [(&'static str, Constraint); 3] = [
        ("digits", Constraint::Digits),
        ("word", Constraint::Word),
        ("no-colon", Constraint::NoColon),
    ];

    fn parse(name: &str) -> Option<Self> {
        Self::NAMES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, constraint)| *constraint)
    }

    /// The name as written in a template (`any` for none).
    pub(crate) fn name(self) -> &'static str {
        Self::NAMES
            .iter()
            .find(|(_, c)| *c == self)
            .map_or("any", |(name, _)| name)
    }

    /// Whether a hole with this constraint may hold `byte`.
    #[inline]
    pub(crate) fn allows_byte(self, byte: u8) -> bool {
        match self {
            Constraint::Any => true,
            Constraint::NoColon => byte != b':',
            Constraint::Word => byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-',
            Constraint::Digits => byte.is_ascii_digit(),
        }
    }

    /// Whether a hole with this constraint may hold `text`.
    pub(crate) fn allows(self, text: &str) -> bool {
        !text.is_empty() && text.bytes().all(|byte| self.allows_byte(byte))
    }

    /// Whether every text this constraint allows, `other` allows too.
    pub(crate) fn implies(self, other: Constraint) -> bool {
        self.width() <= other.width()
    }

    fn width(self) -> u8 {
        match self {
            Constraint::Digits => 0,
            Constraint::Word => 1,
            Constraint::NoColon => 2,
            Constraint::Any => 3,
        }
    }
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
    pub(crate) fn get(&self, name: &str) -> Option<&'k str> {
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
                    let inside = &rest[..len];
                    let (name, constraint) = match inside.split_once(':') {
                        None => (inside, Constraint::Any),
                        Some((name, kind)) => match Constraint::parse(kind) {
                            Some(constraint) => (name, constraint),
                            None => {
                                return Err(format!(
                                    "`{{{inside}}}`: `{kind}` is not a constraint \
                                     (write `digits`, `word` or `no-colon`)"
                                ));
                            }
                        },
                    };
                    if name.is_empty()
                        || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                    {
                        return Err(format!(
                            "`{{{inside}}}` is not a hole: a hole's name is ASCII letters, digits and `_`"
                        ));
                    }
                    if literal.is_empty()
                        && let Some(Part::Hole(previous)) = parts.last()
                    {
                        return Err(format!(
                            "holes `{{{}}}` and `{{{name}}}` must be separated by text",
                            previous.name
                        ));
                    }
                    if parts
                        .iter()
                        .any(|part| matches!(part, Part::Hole(hole) if hole.name == name))
                    {
                        return Err(format!("hole `{{{name}}}` appears twice"));
                    }
                    if !literal.is_empty() {
                        parts.push(Part::Literal(std::mem::take(&mut literal)));
                    }
                    parts.push(Part::Hole(Hole {
                        name: name.to_owned(),
                        constraint,
                    }));
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

    /// The holes, in order.
    pub(crate) fn holes(&self) -> impl Iterator<Item = &Hole> {
        self.parts.iter().filter_map(|part| match part {
            Part::Hole(hole) => Some(hole),
            Part::Literal(_) => None,
        })
    }

    /// The hole named `name`, if there is one.
    pub(crate) fn hole(&self, name: &str) -> Option<&Hole> {
        self.holes().find(|hole| hole.name == name)
    }

    /// The text before the only hole, the hole, and the text after it, if
    /// the template has exactly one hole.
    pub(crate) fn one_hole(&self) -> Option<(&str, &Hole, &str)> {
        fn literal(part: Option<&Part>) -> Option<&str> {
            match part {
                Some(Part::Literal(text)) => Some(text),
                _ => None,
            }
        }
        let mut holes = self
            .parts
            .iter()
            .enumerate()
            .filter_map(|(i, part)| match part {
                Part::Hole(hole) => Some((i, hole)),
                Part::Literal(_) => None,
            });
        let (at, hole) = holes.next()?;
        if holes.next().is_some() {
            return None;
        }
        let before = at.checked_sub(1).and_then(|i| literal(self.parts.get(i)));
        let after = literal(self.parts.get(at + 1));
        Some((before.unwrap_or(""), hole, after.unwrap_or("")))
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
        let mut holes: Vec<(&Hole, &str)> = Vec::new();
        let mut iter = rest.iter();
        while let Some(part) = iter.next() {
            let Part::Hole(hole) = part else {
                unreachable!("parts alternate")
            };
            let after = match iter.next() {
                Some(Part::Literal(text)) => text.as_str(),
                Some(Part::Hole(_)) => unreachable!("parts alternate"),
                None => "",
            };
            holes.push((hole, after));
        }
        let body = key.strip_prefix(prefix)?;
        let Some(((last, suffix), inner)) = holes.split_last() else {
            return body.is_empty().then(|| Captures(Vec::new()));
        };
        let body = body.strip_suffix(suffix)?;
        let bytes = body.as_bytes();
        let len = bytes.len();
        // run_end[j][i]: where the run of bytes hole j may hold, starting
        // at i, ends; the hole's text, from i, ends at or before it.
        let run_end: Vec<Vec<usize>> = holes
            .iter()
            .map(|(hole, _)| {
                let mut ends = vec![len; len + 1];
                for i in (0..len).rev() {
                    ends[i] = match hole.constraint.allows_byte(bytes[i]) {
                        true => ends[i + 1],
                        false => i,
                    };
                }
                ends
            })
            .collect();
        // feasible[j][i]: holes j.. (with their separators) can match body[i..].
        // The last hole takes a non-empty rest it may hold.
        let mut feasible = vec![vec![false; len + 1]; holes.len()];
        for (i, slot) in feasible[holes.len() - 1].iter_mut().enumerate() {
            *slot = i < len && run_end[holes.len() - 1][i] == len;
        }
        // next_end[j][i]: the first p >= i where hole j's text may end:
        // body[p..] starts with its separator and holes j+1.. fit after it.
        let mut next_end = vec![vec![usize::MAX; len + 2]; inner.len()];
        for j in (0..inner.len()).rev() {
            let sep = inner[j].1.as_bytes();
            for p in (0..=len).rev() {
                let ends_here = bytes[p..].starts_with(sep)
                    && feasible[j + 1].get(p + sep.len()).copied().unwrap_or(false);
                next_end[j][p] = if ends_here { p } else { next_end[j][p + 1] };
            }
            for i in 0..len {
                // The shortest text from i that ends well, if the hole may hold it.
                feasible[j][i] = next_end[j][i + 1] <= run_end[j][i];
            }
        }
        if !feasible[0][0] {
            return None;
        }
        let mut captures = Vec::with_capacity(holes.len());
        let mut start = 0;
        for (j, (hole, sep)) in inner.iter().enumerate() {
            let end = next_end[j][start + 1];
            debug_assert!(end <= run_end[j][start], "feasible says a split exists");
            // Separators are whole strings, so `end` is a char boundary.
            captures.push((hole.name.as_str(), body.get(start..end)?));
            start = end + sep.len();
        }
        captures.push((last.name.as_str(), body.get(start..)?));
        Some(Captures(captures))
    }

    /// Fills the holes with `captures` (escaped) and reads the result as a
    /// pattern. `None` if a hole has no capture (checked when rules are built).
    pub(crate) fn fill(&self, captures: &Captures<'_>) -> Option<Pattern> {
        let mut glob = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(text) => glob.push_str(text),
                Part::Hole(hole) => glob.push_str(&escape(captures.get(&hole.name)?)),
            }
        }
        Some(Pattern::new(glob))
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
    /// or more characters their constraint allows), as capture lengths; the
    /// matcher must return the smallest in lexicographic order (shortest
    /// first hole first).
    fn all_splits(parts: &[Part], key: &str) -> Vec<Vec<usize>> {
        match parts.split_first() {
            None if key.is_empty() => vec![Vec::new()],
            None => Vec::new(),
            Some((Part::Literal(text), rest)) => key
                .strip_prefix(text.as_str())
                .map(|key| all_splits(rest, key))
                .unwrap_or_default(),
            Some((Part::Hole(hole), rest)) => (1..=key.len())
                .filter(|&n| key.is_char_boundary(n))
                .filter(|&n| reference_allows(hole.constraint, &key[..n]))
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

    /// The constraints as documented, by character.
    fn reference_allows(constraint: Constraint, text: &str) -> bool {
        text.chars().all(|c| match constraint {
            Constraint::Any => true,
            Constraint::NoColon => c != ':',
            Constraint::Word => c.is_ascii_alphanumeric() || c == '_' || c == '-',
            Constraint::Digits => c.is_ascii_digit(),
        })
    }

    fn template_source() -> impl Strategy<Value = String> {
        // Literal runs from a tiny alphabet (so that separators recur in
        // keys), holes between them, some constrained.
        let literal = "[a1:é]{0,3}";
        let constraint = proptest::sample::select(vec!["", ":digits", ":word", ":no-colon"]);
        proptest::collection::vec((literal, constraint), 1..5).prop_map(|parts| {
            let mut source = String::new();
            for (n, (text, constraint)) in parts.iter().enumerate() {
                if n > 0 {
                    // Holes must be separated by text.
                    if parts[n - 1].0.is_empty() && n > 1 {
                        source.push(':');
                    }
                    source.push_str(&format!("{{h{n}{constraint}}}"));
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
            key in "[a1:é]{0,10}",
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
        let holes: Vec<&str> = t.holes().map(|hole| hole.name.as_str()).collect();
        assert_eq!(holes, ["id"]);
        assert_eq!(captures("{{tag}}:{id}", "{tag}:7"), pairs(&[("id", "7")]));
        for bad in [
            "{id",
            "id}",
            "{}",
            "{a-b}",
            "{a}{b}",
            "{a}:{a}",
            "x{ y }",
            "{a:}",
            "{a:letters}",
            "{:digits}",
            "{a:digits}:{a:digits}",
        ] {
            assert!(Template::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn constrained_holes_hold_only_what_they_allow() {
        // `{id:no-colon}`: an id never holds the separator, so a key with
        // one more segment is not this template's.
        assert_eq!(
            captures("reviews:offer:{id:no-colon}", "reviews:offer:1"),
            pairs(&[("id", "1")])
        );
        assert_eq!(
            captures("reviews:offer:{id:no-colon}", "reviews:offer:1:2"),
            None
        );
        assert_eq!(
            captures("reviews:offer:{id:no-colon}", "reviews:offer:a*[b]"),
            pairs(&[("id", "a*[b]")])
        );
        assert_eq!(
            captures("offer:{id:digits}", "offer:12"),
            pairs(&[("id", "12")])
        );
        assert_eq!(captures("offer:{id:digits}", "offer:1*"), None);
        assert_eq!(
            captures("offer:{id:digits}", "offer:١"),
            None,
            "ASCII digits only"
        );
        assert_eq!(
            captures("u:{id:word}", "u:ab_c-9"),
            pairs(&[("id", "ab_c-9")])
        );
        assert_eq!(captures("u:{id:word}", "u:a.b"), None);
        // Unconstrained, the first hole takes the shortest text; constrained,
        // it cannot take the `:` and the split moves on.
        assert_eq!(
            captures("a:{x}:{y}", "a:1:2:3"),
            pairs(&[("x", "1"), ("y", "2:3")])
        );
        assert_eq!(
            captures("a:{x}:{y:no-colon}", "a:1:2:3"),
            pairs(&[("x", "1:2"), ("y", "3")])
        );
        assert_eq!(captures("a:{x:digits}:{y}", "a:b:2"), None);
    }

    #[test]
    fn constraints_nest() {
        use Constraint::*;
        let all = [Digits, Word, NoColon, Any];
        for (i, narrow) in all.iter().enumerate() {
            for (j, wide) in all.iter().enumerate() {
                assert_eq!(narrow.implies(*wide), i <= j, "{narrow:?} {wide:?}");
            }
        }
        for text in ["1", "a", "a-b_c", "a:b", "é", "*", "12"] {
            for (narrow, wide) in [(Digits, Word), (Word, NoColon), (NoColon, Any)] {
                assert!(!narrow.allows(text) || wide.allows(text), "{text}");
            }
        }
        assert!(!Any.allows(""), "a hole is never empty");
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
