//! Server URLs, and the one place their passwords are hidden.
//!
//! Everything the crate prints about a server (`Debug` of the builders and
//! of the layer, error messages, node labels in logs) goes through
//! [`redact`], or through a [`ServerUrl`], whose `Debug` and `Display` show
//! the redacted form: the raw text is only handed to the redis client.

use std::fmt;

/// What a password is replaced with.
const HIDDEN: &str = "***";

/// A server URL as given by the user. Prints without its password.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct ServerUrl(String);

impl ServerUrl {
    pub(crate) fn new(url: impl Into<String>) -> Self {
        ServerUrl(url.into())
    }

    /// The URL with its password, for the redis client only.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }

    /// The URL without its password, for messages and logs.
    pub(crate) fn redacted(&self) -> String {
        redact(&self.0)
    }
}

impl fmt::Debug for ServerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.redacted(), f)
    }
}

impl fmt::Display for ServerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// `url` with its password replaced by `***`:
/// `redis://:secret@host:6379` prints as `redis://:***@host:6379` and
/// `redis://user:secret@host/0` as `redis://user:***@host/0`. The `pass`
/// (and `password`) query parameter, which `unix://` URLs use, is hidden
/// too.
///
/// Made for text that may not parse as a URL (it is used in the message
/// saying so): the credentials end at the last `@`, so a password with an
/// unescaped `@`, `/` or `?` is still hidden whole. Credentials without a
/// `:` (`redis://word@host`) are hidden whole: the redis client takes them
/// for a user name without a password, which usually means a password that
/// lost its colon.
pub(crate) fn redact(url: &str) -> String {
    let start = url.find("://").map_or(0, |scheme| scheme + 3);
    let mut out = String::with_capacity(url.len() + HIDDEN.len());
    out.push_str(&url[..start]);
    let rest = &url[start..];
    let rest = match rest.rfind('@') {
        Some(at) => {
            if let Some((user, _password)) = rest[..at].split_once(':') {
                out.push_str(user);
                out.push(':');
            }
            out.push_str(HIDDEN);
            &rest[at..]
        }
        None => rest,
    };
    let Some((before_query, query)) = rest.split_once('?') else {
        out.push_str(rest);
        return out;
    };
    out.push_str(before_query);
    out.push('?');
    let (query, fragment) = match query.split_once('#') {
        Some((query, fragment)) => (query, Some(fragment)),
        None => (query, None),
    };
    for (index, pair) in query.split('&').enumerate() {
        if index > 0 {
            out.push('&');
        }
        match pair.split_once('=') {
            Some((name, _))
                if name.eq_ignore_ascii_case("pass") || name.eq_ignore_ascii_case("password") =>
            {
                out.push_str(name);
                out.push('=');
                out.push_str(HIDDEN);
            }
            _ => out.push_str(pair),
        }
    }
    if let Some(fragment) = fragment {
        out.push('#');
        out.push_str(fragment);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_hidden_and_the_rest_kept() {
        let cases = [
            (
                "redis://:secret@127.0.0.1:6379",
                "redis://:***@127.0.0.1:6379",
            ),
            ("redis://user:secret@host/0", "redis://user:***@host/0"),
            (
                "rediss://u:secret@h:1/2#insecure",
                "rediss://u:***@h:1/2#insecure",
            ),
            ("redis://h:1", "redis://h:1"),
            (
                "redis://h:1/0?protocol=resp3",
                "redis://h:1/0?protocol=resp3",
            ),
            // Unescaped characters that end the authority of a real URL.
            ("redis://:se@cr/et?x@h:1", "redis://:***@h:1"),
            ("redis://u:se:cret@h", "redis://u:***@h"),
            // A user name alone may be a password that lost its colon.
            ("redis://secret@h", "redis://***@h"),
            // Not a URL at all.
            (":secret@h:1", ":***@h:1"),
            ("not a url", "not a url"),
            (
                "unix:///run/redis.sock?db=1&pass=secret",
                "unix:///run/redis.sock?db=1&pass=***",
            ),
            (
                "redis+unix:///s.sock?Password=secret#f",
                "redis+unix:///s.sock?Password=***#f",
            ),
        ];
        for (url, expected) in cases {
            assert_eq!(redact(url), expected, "{url}");
        }
    }

    #[test]
    fn a_server_url_prints_redacted() {
        let url = ServerUrl::new("redis://:secret@h:1");
        assert_eq!(url.expose(), "redis://:secret@h:1");
        assert_eq!(format!("{url:?}"), "\"redis://:***@h:1\"");
        assert_eq!(url.to_string(), "redis://:***@h:1");
    }
}
