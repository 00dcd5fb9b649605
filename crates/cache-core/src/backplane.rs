//! The backplane: how cache instances tell each other what to drop.
//!
//! Several processes share one Redis L2, and each keeps its own in-memory
//! L1. When one of them deletes or invalidates, it clears every tier it can
//! reach (its own L1, and the shared L2), then publishes an [`Invalidation`]
//! on a backplane; every other instance clears its *local* tiers
//! ([`CacheLayer::is_shared`](crate::CacheLayer::is_shared) is `false`).
//!
//! A backplane delivers at most once (Redis pub/sub does): a subscriber that
//! was disconnected, or fell behind, may have missed messages. It then
//! yields [`BackplaneEvent::Gap`], and the receiver clears its local tiers
//! entirely: a cold L1 costs a few reads of L2, a stale one returns wrong
//! values.

use std::fmt;

use async_trait::async_trait;

use crate::{Pattern, Result};

/// What an instance asks the others to drop.
#[derive(Clone, PartialEq, Eq)]
pub enum Invalidation {
    /// One key.
    Key(String),
    /// Every key matching a pattern.
    Pattern(Pattern),
    /// Every key.
    All,
}

impl fmt::Debug for Invalidation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Invalidation::Key(key) => f.debug_tuple("Key").field(key).finish(),
            Invalidation::Pattern(pattern) => f.debug_tuple("Pattern").field(pattern).finish(),
            Invalidation::All => f.write_str("All"),
        }
    }
}

/// A message on the backplane: an invalidation and the instance it came
/// from (so that an instance can skip its own messages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackplaneMessage {
    /// The sending instance's id.
    pub origin: u64,
    /// What to drop.
    pub invalidation: Invalidation,
}

/// Format version of [`BackplaneMessage::encode`].
const VERSION: u8 = 1;

/// Why bytes read from a backplane are not a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UndecodableMessage;

impl fmt::Display for UndecodableMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("not a backplane message of a known version")
    }
}

impl std::error::Error for UndecodableMessage {}

impl BackplaneMessage {
    /// The message as bytes, for backplanes that carry bytes:
    /// a version byte, a kind byte (`k`ey, `p`attern, `a`ll), the origin as
    /// 8 little-endian bytes, then the key or pattern in UTF-8.
    ///
    /// ```
    /// use cache_core::{BackplaneMessage, Invalidation, Pattern};
    ///
    /// let message = BackplaneMessage {
    ///     origin: 7,
    ///     invalidation: Invalidation::Pattern(Pattern::new("user:42:*")),
    /// };
    /// assert_eq!(BackplaneMessage::decode(&message.encode()), Ok(message));
    /// assert!(BackplaneMessage::decode(b"garbage").is_err());
    /// ```
    pub fn encode(&self) -> Vec<u8> {
        let (kind, text) = match &self.invalidation {
            Invalidation::Key(key) => (b'k', key.as_str()),
            Invalidation::Pattern(pattern) => (b'p', pattern.as_str()),
            Invalidation::All => (b'a', ""),
        };
        let mut bytes = Vec::with_capacity(10 + text.len());
        bytes.push(VERSION);
        bytes.push(kind);
        bytes.extend_from_slice(&self.origin.to_le_bytes());
        bytes.extend_from_slice(text.as_bytes());
        bytes
    }

    /// Reads bytes written by [`encode`](Self::encode). Anything else
    /// (another version, a truncated message, invalid UTF-8) is an error,
    /// which a receiver must treat as a possibly missed invalidation.
    pub fn decode(bytes: &[u8]) -> std::result::Result<Self, UndecodableMessage> {
        let [VERSION, kind, rest @ ..] = bytes else {
            return Err(UndecodableMessage);
        };
        let (origin, text) = rest.split_first_chunk::<8>().ok_or(UndecodableMessage)?;
        let text = std::str::from_utf8(text).map_err(|_| UndecodableMessage)?;
        let invalidation = match kind {
            b'k' => Invalidation::Key(text.to_owned()),
            b'p' => Invalidation::Pattern(Pattern::new(text)),
            b'a' if text.is_empty() => Invalidation::All,
            _ => return Err(UndecodableMessage),
        };
        Ok(BackplaneMessage {
            origin: u64::from_le_bytes(*origin),
            invalidation,
        })
    }
}

/// What a subscription yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackplaneEvent {
    /// A message from an instance (possibly this one: compare `origin`).
    Message(BackplaneMessage),
    /// Messages may have been lost (a reconnect, a subscriber that fell
    /// behind, bytes that did not decode): clear every local tier.
    Gap,
}

/// A channel between cache instances. `cache-redis` has one on Redis
/// pub/sub; `cache-invalidation` has an in-process one.
#[async_trait]
pub trait Backplane: Send + Sync + fmt::Debug {
    /// Sends `message` to every subscriber, this process's included.
    async fn publish(&self, message: &BackplaneMessage) -> Result<()>;

    /// A new subscription, which receives what is published from now on.
    async fn subscribe(&self) -> Result<Box<dyn Subscription>>;
}

/// The receiving end of a [`Backplane`].
#[async_trait]
pub trait Subscription: Send {
    /// The next event; `None` once the backplane is gone for good.
    async fn next(&mut self) -> Option<BackplaneEvent>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    // Compile-time check that both traits stay usable as `dyn`.
    fn _object_safe(_: Arc<dyn Backplane>, _: Box<dyn Subscription>) {}

    #[test]
    fn every_kind_round_trips() {
        for invalidation in [
            Invalidation::Key("offer:1 é \u{0}".into()),
            Invalidation::Key(String::new()),
            Invalidation::Pattern(Pattern::new("a\\*[b-c]?*")),
            Invalidation::All,
        ] {
            let message = BackplaneMessage {
                origin: u64::MAX - 3,
                invalidation,
            };
            assert_eq!(BackplaneMessage::decode(&message.encode()), Ok(message));
        }
    }

    #[test]
    fn anything_else_is_undecodable() {
        let good = BackplaneMessage {
            origin: 1,
            invalidation: Invalidation::Key("k".into()),
        }
        .encode();
        let mut other_version = good.clone();
        other_version[0] = 2;
        let mut unknown_kind = good.clone();
        unknown_kind[1] = b'x';
        let mut bad_utf8 = good.clone();
        bad_utf8.push(0xFF);
        let mut all_with_text = good.clone();
        all_with_text[1] = b'a';
        for bytes in [
            &b""[..],
            &[VERSION],
            &good[..9],
            &other_version,
            &unknown_kind,
            &bad_utf8,
            &all_with_text,
        ] {
            assert_eq!(
                BackplaneMessage::decode(bytes),
                Err(UndecodableMessage),
                "{bytes:?}"
            );
        }
    }
}
