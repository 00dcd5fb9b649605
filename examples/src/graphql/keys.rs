//! The cache keys of the offers service, and the rules between them.
//!
//! The keys are the original design's (`offer:{id}`, `rating:offer:{id}`,
//! `reviews:offer:{id}:page:{after}:limit:{first}`), with one change: ids
//! and cursors come from clients, so each is written as a *segment*:
//! ASCII letters, digits, `-`, `_` and `.` as they are, every other byte
//! as `%XX`. A key then never holds a glob character (`*`, `?`, `[`, `\`)
//! or a `:` that a client chose, which is what keeps invalidation exact:
//!
//! - invalidating offer `7`'s reviews removes `reviews:offer:7:*`; an
//!   offer whose id is `7:page:x` would fall under that pattern with its
//!   id written raw, and does not as `7%3Apage%3Ax`;
//! - a page fetched `after: "*"` is cached under `...:page:%2A:...`, so a
//!   pattern built from its key (by the rules, or by hand) matches that one
//!   page and nothing else;
//! - the encoding is injective (`%` itself is encoded), so two cursors
//!   never share a key.
//!
//! ```
//! use examples::graphql::keys;
//!
//! assert_eq!(keys::reviews_page("7", Some("7:3"), 10), "reviews:offer:7:page:7%3A3:limit:10");
//! assert_eq!(keys::reviews_page("7", Some("*"), 10), "reviews:offer:7:page:%2A:limit:10");
//! assert_eq!(keys::reviews_page("7", None, 10), "reviews:offer:7:page::limit:10");
//! ```

use std::borrow::Cow;
use std::fmt::Write;
use std::time::Duration;

use cache_invalidation::Rules;

/// How long every field is cached: the original design's 5 minutes.
pub const TTL: Duration = Duration::from_secs(300);

/// The key of an offer's own fields.
pub fn offer(id: &str) -> String {
    format!("offer:{}", segment(id))
}

/// The key of an offer's average rating.
pub fn rating(id: &str) -> String {
    format!("rating:offer:{}", segment(id))
}

/// The key of one page of an offer's reviews: the `first` reviews after
/// the cursor `after` (from the newest without one; an empty cursor is the
/// same page).
pub fn reviews_page(id: &str, after: Option<&str>, first: usize) -> String {
    format!(
        "reviews:offer:{}:page:{}:limit:{first}",
        segment(id),
        segment(after.unwrap_or(""))
    )
}

/// The key whose invalidation means "this offer's reviews changed": by the
/// [`rules`], it removes every page of them, the rating and the stats.
pub fn reviews(id: &str) -> String {
    format!("reviews:offer:{}", segment(id))
}

/// When these keys change, so do those: the offers service's rules.
/// Holes are filled with segments (no glob characters), and escaped by
/// `cache-invalidation` all the same.
pub fn rules() -> Result<Rules, cache_invalidation::Error> {
    Rules::builder()
        .rule(
            "reviews:offer:{id}",
            [
                "reviews:offer:{id}:*",
                "rating:offer:{id}",
                "offer_stats:{id}",
            ],
        )
        .rule("user:{id}", ["reviews:author:{id}", "user_activity:{id}"])
        .build()
}

/// `text` as a key segment: unreserved ASCII as is, any other byte `%XX`.
pub fn segment(text: &str) -> Cow<'_, str> {
    let plain = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.');
    if text.bytes().all(plain) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() * 3);
    for b in text.bytes() {
        if plain(b) {
            out.push(char::from(b));
        } else {
            // Writing to a String cannot fail.
            let _ = write!(out, "%{b:02X}");
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cache_core::Pattern;

    /// Cursors and ids a client may send, glob syntax and separators included.
    const HOSTILE: &[&str] = &[
        "*",
        "?",
        "[a-z]",
        "\\",
        "\\*",
        ":",
        "1:*",
        "a:limit:10",
        "%2A",
        "%",
        "é",
        "",
        " ",
    ];

    #[test]
    fn segments_hold_no_glob_character_and_no_separator() {
        for text in HOSTILE {
            let segment = segment(text);
            assert!(
                !segment.contains(['*', '?', '[', ']', '\\', ':', '{', '}']),
                "{text:?} -> {segment:?}"
            );
        }
    }

    #[test]
    fn distinct_cursors_have_distinct_keys() {
        let mut keys: Vec<String> = HOSTILE
            .iter()
            .map(|after| reviews_page("1", Some(after), 10))
            .collect();
        keys.sort();
        let before = keys.len();
        keys.dedup();
        // (`None` and `Some("")` do share one: they are the same page.)
        assert_eq!(keys.len(), before);
    }

    #[test]
    fn invalidating_a_page_by_its_key_reaches_that_page_only() {
        let rules = rules().unwrap();
        let others = [
            reviews_page("1", None, 10),
            reviews_page("1", Some("1:3"), 10),
            reviews_page("1", Some("*"), 5),
            reviews_page("2", Some("*"), 10),
            rating("1"),
            offer("1"),
        ];
        for cursor in HOSTILE.iter().filter(|cursor| !cursor.is_empty()) {
            let page = reviews_page("1", Some(cursor), 10);
            let patterns = rules.expand(&page).unwrap();
            assert!(patterns.iter().any(|p| p.matches(&page)));
            for other in others.iter().filter(|other| **other != page) {
                assert!(
                    !patterns.iter().any(|p| p.matches(other)),
                    "invalidating {page} removes {other}: {patterns:?}"
                );
            }
        }
    }

    #[test]
    fn an_offers_reviews_changing_reaches_its_keys_only() {
        let rules = rules().unwrap();
        for id in ["7", "*", "7:page:x", "[7]"] {
            let patterns = rules.expand(&reviews(id)).unwrap();
            let hits = |key: &str| patterns.iter().any(|p: &Pattern| p.matches(key));
            assert!(hits(&reviews_page(id, Some("*"), 10)), "{id}");
            assert!(hits(&rating(id)), "{id}");
            assert!(!hits(&offer(id)), "{id}: the offer itself did not change");
            for other in ["8", "7:page:x", "70", "*"]
                .iter()
                .filter(|other| *other != &id)
            {
                assert!(
                    !hits(&reviews_page(other, None, 10)),
                    "{id} reaches {other}"
                );
                assert!(!hits(&rating(other)), "{id} reaches {other}");
            }
        }
    }
}
