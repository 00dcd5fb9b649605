//! Key patterns with Redis glob semantics, implemented once for every layer.

use std::fmt;

/// A key pattern with the semantics of Redis `SCAN MATCH` / `KEYS` globs.
///
/// | syntax    | matches                                                  |
/// |-----------|----------------------------------------------------------|
/// | `*`       | any sequence of bytes, including the empty one           |
/// | `?`       | exactly one byte                                         |
/// | `[abc]`   | one of the listed bytes                                  |
/// | `[^abc]`  | one byte that is not listed                              |
/// | `[a-z]`   | one byte in the range (the ends may be given in any order) |
/// | `\x`      | the byte `x` literally, also inside `[...]`              |
///
/// Matching is byte-wise and case-sensitive, exactly as Redis does it, quirks
/// included: an unterminated `[` class runs to the end of the pattern, a
/// trailing `\` matches a backslash, and `[a-]` is the range from `a` to `]`.
/// Every layer uses this type, so a memory tier and a Redis tier remove the
/// same keys for the same pattern.
///
/// Keys built from user input must go through [`escape`] before they are
/// placed in a pattern, or a user id such as `*` would match every key:
///
/// ```
/// use cache_core::{escape, Pattern};
///
/// let user_id = "evil*";
/// let pattern = Pattern::new(format!("reviews:author:{}:*", escape(user_id)));
/// assert!(pattern.matches("reviews:author:evil*:page:1"));
/// assert!(!pattern.matches("reviews:author:evil-twin:page:1"));
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Pattern {
    source: String,
    tokens: Box<[Token]>,
    /// The unescaped key when the pattern has no wildcard at all.
    literal: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Token {
    Byte(u8),
    AnyByte,
    AnySequence,
    Class {
        negated: bool,
        items: Box<[ClassItem]>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum ClassItem {
    Byte(u8),
    Range(u8, u8),
}

impl Pattern {
    /// Parses a glob. Every string is a valid pattern, as it is for Redis.
    pub fn new(glob: impl Into<String>) -> Self {
        let source = glob.into();
        let tokens = parse(source.as_bytes());
        let literal = tokens
            .iter()
            .map(|token| match token {
                Token::Byte(byte) => Some(*byte),
                _ => None,
            })
            .collect::<Option<Vec<u8>>>()
            // Escapes only ever drop ASCII backslashes, so the rest is still UTF-8.
            .and_then(|bytes| String::from_utf8(bytes).ok());
        Pattern {
            source,
            tokens,
            literal,
        }
    }

    /// A pattern that matches `key` and nothing else, whatever characters it holds.
    pub fn exact(key: &str) -> Self {
        Pattern::new(escape(key))
    }

    /// A pattern that matches every key starting with `prefix`, taken literally.
    ///
    /// ```
    /// # use cache_core::Pattern;
    /// let pattern = Pattern::prefix("reviews:offer:[1]");
    /// assert!(pattern.matches("reviews:offer:[1]:page:0"));
    /// assert!(!pattern.matches("reviews:offer:1:page:0"));
    /// ```
    pub fn prefix(prefix: &str) -> Self {
        Pattern::new(format!("{}*", escape(prefix)))
    }

    /// The glob as written, for example to hand to Redis `SCAN MATCH`.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The one key this pattern can match, if it has no wildcards.
    ///
    /// Layers use it to turn an invalidation into a single delete.
    pub fn literal(&self) -> Option<&str> {
        self.literal.as_deref()
    }

    /// Whether `key` matches the pattern.
    pub fn matches(&self, key: &str) -> bool {
        self.matches_bytes(key.as_bytes())
    }

    /// Whether the raw bytes match the pattern.
    pub fn matches_bytes(&self, input: &[u8]) -> bool {
        // The classic single-backtrack glob matcher: every token but `*`
        // consumes exactly one byte, so on a mismatch it is enough to let the
        // most recent `*` swallow one more byte. O(len(input) * len(pattern)),
        // no recursion, whatever the pattern.
        let tokens = &self.tokens;
        let (mut t, mut i) = (0, 0);
        let mut backtrack: Option<(usize, usize)> = None;
        while i < input.len() {
            match tokens.get(t) {
                Some(Token::AnySequence) => {
                    backtrack = Some((t, i));
                    t += 1;
                    continue;
                }
                Some(token) if token.matches(input[i]) => {
                    t += 1;
                    i += 1;
                    continue;
                }
                _ => {}
            }
            match backtrack {
                Some((star, start)) => {
                    t = star + 1;
                    i = start + 1;
                    backtrack = Some((star, start + 1));
                }
                None => return false,
            }
        }
        tokens[t..]
            .iter()
            .all(|token| matches!(token, Token::AnySequence))
    }
}

impl Token {
    fn matches(&self, byte: u8) -> bool {
        match self {
            Token::Byte(expected) => *expected == byte,
            Token::AnyByte => true,
            Token::AnySequence => unreachable!("`*` is handled by the matcher loop"),
            Token::Class { negated, items } => {
                let listed = items.iter().any(|item| match *item {
                    ClassItem::Byte(b) => b == byte,
                    ClassItem::Range(low, high) => (low..=high).contains(&byte),
                });
                listed != *negated
            }
        }
    }
}

/// Tokenizes a glob the way Redis' `stringmatchlen` reads it.
fn parse(pattern: &[u8]) -> Box<[Token]> {
    let mut tokens = Vec::with_capacity(pattern.len());
    let mut i = 0;
    while i < pattern.len() {
        match pattern[i] {
            b'*' => {
                if tokens.last() != Some(&Token::AnySequence) {
                    tokens.push(Token::AnySequence);
                }
                i += 1;
            }
            b'?' => {
                tokens.push(Token::AnyByte);
                i += 1;
            }
            b'[' => {
                let (token, next) = parse_class(pattern, i + 1);
                tokens.push(token);
                i = next;
            }
            b'\\' if i + 1 < pattern.len() => {
                tokens.push(Token::Byte(pattern[i + 1]));
                i += 2;
            }
            byte => {
                tokens.push(Token::Byte(byte));
                i += 1;
            }
        }
    }
    tokens.into_boxed_slice()
}

/// Parses a class whose body starts at `start`; returns the token and the
/// index just past the closing `]` (or the end of the pattern).
fn parse_class(pattern: &[u8], start: usize) -> (Token, usize) {
    let mut i = start;
    let negated = pattern.get(i) == Some(&b'^');
    if negated {
        i += 1;
    }
    let mut items = Vec::new();
    loop {
        let remaining = pattern.len() - i;
        if remaining >= 2 && pattern[i] == b'\\' {
            items.push(ClassItem::Byte(pattern[i + 1]));
            i += 2;
        } else if remaining == 0 {
            break;
        } else if pattern[i] == b']' {
            i += 1;
            break;
        } else if remaining >= 3 && pattern[i + 1] == b'-' {
            let (a, b) = (pattern[i], pattern[i + 2]);
            items.push(ClassItem::Range(a.min(b), a.max(b)));
            i += 3;
        } else {
            items.push(ClassItem::Byte(pattern[i]));
            i += 1;
        }
    }
    let token = Token::Class {
        negated,
        items: items.into_boxed_slice(),
    };
    (token, i)
}

/// Escapes every glob metacharacter (`*`, `?`, `[`, `]`, `\`) so that the
/// result, used as a [`Pattern`], matches `text` and nothing else.
///
/// ```
/// # use cache_core::{escape, Pattern};
/// assert_eq!(escape("a*b"), r"a\*b");
/// assert!(Pattern::new(escape("[x]?")).matches("[x]?"));
/// assert!(!Pattern::new(escape("[x]?")).matches("x?"));
/// ```
pub fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len() + 4);
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Pattern").field(&self.source).finish()
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl From<&str> for Pattern {
    fn from(glob: &str) -> Self {
        Pattern::new(glob)
    }
}

impl From<String> for Pattern {
    fn from(glob: String) -> Self {
        Pattern::new(glob)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A line-by-line port of Redis' recursive `stringmatchlen` (util.c),
    /// the reference the compiled matcher is checked against.
    fn redis_stringmatch(pattern: &[u8], string: &[u8]) -> bool {
        let (mut p, mut s) = (pattern, string);
        while !p.is_empty() && !s.is_empty() {
            match p[0] {
                b'*' => {
                    while p.len() > 1 && p[1] == b'*' {
                        p = &p[1..];
                    }
                    if p.len() == 1 {
                        return true;
                    }
                    while !s.is_empty() {
                        if redis_stringmatch(&p[1..], s) {
                            return true;
                        }
                        s = &s[1..];
                    }
                    return false;
                }
                b'?' => s = &s[1..],
                b'[' => {
                    p = &p[1..];
                    let negated = p.first() == Some(&b'^');
                    if negated {
                        p = &p[1..];
                    }
                    let mut matched = false;
                    loop {
                        if p.len() >= 2 && p[0] == b'\\' {
                            p = &p[1..];
                            matched |= p[0] == s[0];
                        } else if p.is_empty() {
                            // Unterminated class: Redis steps back so that the
                            // shared `pattern++` below lands on the end.
                            break;
                        } else if p[0] == b']' {
                            break;
                        } else if p.len() >= 3 && p[1] == b'-' {
                            let (lo, hi) = (p[0].min(p[2]), p[0].max(p[2]));
                            matched |= lo <= s[0] && s[0] <= hi;
                            p = &p[2..];
                        } else {
                            matched |= p[0] == s[0];
                        }
                        p = &p[1..];
                    }
                    if matched == negated {
                        return false;
                    }
                    s = &s[1..];
                    if p.is_empty() {
                        // Mirror `pattern++` on the terminator of an unterminated class.
                        continue;
                    }
                }
                b'\\' if p.len() >= 2 => {
                    p = &p[1..];
                    if p[0] != s[0] {
                        return false;
                    }
                    s = &s[1..];
                }
                byte => {
                    if byte != s[0] {
                        return false;
                    }
                    s = &s[1..];
                }
            }
            p = &p[1..];
            if s.is_empty() {
                while p.first() == Some(&b'*') {
                    p = &p[1..];
                }
                break;
            }
        }
        p.is_empty() && s.is_empty()
    }

    /// What Redis answers for a key inside a namespace: both sides carry the
    /// same literal prefix, which is how every layer uses patterns.
    fn redis_reference(pattern: &str, key: &str) -> bool {
        let pattern = format!("ns:{pattern}");
        let key = format!("ns:{key}");
        redis_stringmatch(pattern.as_bytes(), key.as_bytes())
    }

    #[test]
    fn documented_examples() {
        let cases: &[(&str, &str, bool)] = &[
            ("h?llo", "hello", true),
            ("h?llo", "hllo", false),
            ("h*llo", "hllo", true),
            ("h*llo", "heeeello", true),
            ("h[ae]llo", "hallo", true),
            ("h[ae]llo", "hillo", false),
            ("h[^e]llo", "hallo", true),
            ("h[^e]llo", "hello", false),
            ("h[a-b]llo", "hbllo", true),
            ("h[b-a]llo", "hallo", true),
            ("h[a-b]llo", "hcllo", false),
            (r"h\*llo", "h*llo", true),
            (r"h\*llo", "hallo", false),
            ("*", "", true),
            ("", "", true),
            ("", "a", false),
            ("a*", "a", true),
            ("*a", "ba", true),
            ("*a*b", "xaxxb", true),
            ("*a*b", "xaxxbc", false),
            ("[abc", "b", true),
            ("[abc", "bx", false),
            ("x\\", "x\\", true),
            ("[]", "]", false),
            ("[^]", "z", true),
            ("[a-]x", "]", true),
            (r"[\]]", "]", true),
            (r"[\-]", "-", true),
        ];
        for &(pattern, key, expected) in cases {
            assert_eq!(
                Pattern::new(pattern).matches(key),
                expected,
                "pattern {pattern:?} against {key:?}"
            );
            assert_eq!(
                redis_reference(pattern, key),
                expected,
                "reference for {pattern:?} against {key:?}"
            );
        }
    }

    #[test]
    fn literal_is_detected_and_unescaped() {
        assert_eq!(Pattern::new(r"a\*b").literal(), Some("a*b"));
        assert_eq!(
            Pattern::exact(r"we\ird[1]*?").literal(),
            Some(r"we\ird[1]*?")
        );
        assert_eq!(Pattern::new("a*").literal(), None);
        assert_eq!(Pattern::new("a?").literal(), None);
    }

    #[test]
    fn pathological_pattern_is_fast() {
        // Exponential for a naive recursive matcher; linear-ish here.
        let pattern = Pattern::new("a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*b");
        let key = "a".repeat(10_000);
        assert!(!pattern.matches(&key));
    }

    fn glob_strategy() -> impl Strategy<Value = String> {
        // A small alphabet so that random patterns and keys actually match.
        proptest::collection::vec(
            prop_oneof![
                Just("a"),
                Just("b"),
                Just("-"),
                Just("^"),
                Just("*"),
                Just("?"),
                Just("["),
                Just("]"),
                Just("\\"),
                Just("[a-b]"),
                Just("[^a]"),
            ],
            0..10,
        )
        .prop_map(|parts| parts.concat())
    }

    fn key_strategy() -> impl Strategy<Value = String> {
        proptest::string::string_regex("[ab\\-\\^\\*\\?\\[\\]\\\\]{0,8}").unwrap()
    }

    // Case count from PROPTEST_CASES (`cargo xtask proptest --cases N`).
    proptest! {
        #[test]
        fn matches_like_redis(pattern in glob_strategy(), key in key_strategy()) {
            prop_assert_eq!(
                Pattern::new(pattern.as_str()).matches(&key),
                redis_reference(&pattern, &key)
            );
        }

        #[test]
        fn escaped_text_matches_itself_and_nothing_else(text in ".{0,12}", other in ".{0,12}") {
            let pattern = Pattern::new(escape(&text));
            prop_assert!(pattern.matches(&text));
            prop_assert_eq!(pattern.literal(), Some(text.as_str()));
            prop_assert_eq!(pattern.matches(&other), other == text);
            prop_assert!(redis_reference(&escape(&text), &text));
        }

        #[test]
        fn escaped_prefix_matches_exactly_its_extensions(prefix in ".{0,8}", key in ".{0,12}") {
            prop_assert_eq!(Pattern::prefix(&prefix).matches(&key), key.starts_with(&prefix));
        }
    }
}
