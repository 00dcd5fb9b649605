//! The backplane: how cache instances tell each other what to drop.
//!
//! Several processes share one Redis L2, and each keeps its own in-memory
//! L1. When one of them writes, deletes or invalidates, it changes every
//! tier it can reach (its own L1, and the shared L2), then publishes the
//! keys and patterns it changed on a backplane; every other instance drops
//! them from its *local* tiers
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

/// A message on the backplane: what one call wrote or removed, and the
/// instance it came from (so that an instance can skip its own messages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackplaneMessage {
    /// The sending instance's id.
    pub origin: u64,
    /// What to drop, all of it (one call's keys, or one invalidation and
    /// its dependents, travel as one message: one round trip, and never
    /// half of them).
    pub invalidations: Vec<Invalidation>,
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
    /// The message as bytes, for backplanes that carry bytes: a version
    /// byte, the origin as 8 little-endian bytes, then per invalidation a
    /// kind byte (`k`ey, `p`attern, `a`ll), the length of its text as 4
    /// little-endian bytes, and the key or pattern in UTF-8.
    ///
    /// ```
    /// use cache_core::{BackplaneMessage, Invalidation, Pattern};
    ///
    /// let message = BackplaneMessage {
    ///     origin: 7,
    ///     invalidations: vec![
    ///         Invalidation::Key("user:42".into()),
    ///         Invalidation::Pattern(Pattern::new("reviews:author:42:*")),
    ///     ],
    /// };
    /// assert_eq!(BackplaneMessage::decode(&message.encode()), Ok(message));
    /// assert!(BackplaneMessage::decode(b"garbage").is_err());
    /// ```
    pub fn encode(&self) -> Vec<u8> {
        let texts = self
            .invalidations
            .iter()
            .map(|invalidation| match invalidation {
                Invalidation::Key(key) => (b'k', key.as_str()),
                Invalidation::Pattern(pattern) => (b'p', pattern.as_str()),
                Invalidation::All => (b'a', ""),
            });
        let size: usize = texts.clone().map(|(_, text)| 5 + text.len()).sum();
        let mut bytes = Vec::with_capacity(9 + size);
        bytes.push(VERSION);
        bytes.extend_from_slice(&self.origin.to_le_bytes());
        for (kind, text) in texts {
            bytes.push(kind);
            // A text over 4 GiB cannot be a Redis key or pattern.
            bytes.extend_from_slice(&(text.len() as u32).to_le_bytes());
            bytes.extend_from_slice(text.as_bytes());
        }
        bytes
    }

    /// Reads bytes written by [`encode`](Self::encode). Anything else
    /// (another version, a truncated message, invalid UTF-8) is an error,
    /// which a receiver must treat as a possibly missed invalidation.
    pub fn decode(bytes: &[u8]) -> std::result::Result<Self, UndecodableMessage> {
        let [VERSION, rest @ ..] = bytes else {
            return Err(UndecodableMessage);
        };
        let (origin, mut rest) = rest.split_first_chunk::<8>().ok_or(UndecodableMessage)?;
        let mut invalidations = Vec::new();
        while let Some((&kind, after_kind)) = rest.split_first() {
            let (len, after_len) = after_kind
                .split_first_chunk::<4>()
                .ok_or(UndecodableMessage)?;
            let len = u32::from_le_bytes(*len) as usize;
            let (text, after_text) = after_len.split_at_checked(len).ok_or(UndecodableMessage)?;
            let text = std::str::from_utf8(text).map_err(|_| UndecodableMessage)?;
            invalidations.push(match kind {
                b'k' => Invalidation::Key(text.to_owned()),
                b'p' => Invalidation::Pattern(Pattern::new(text)),
                b'a' if text.is_empty() => Invalidation::All,
                _ => return Err(UndecodableMessage),
            });
            rest = after_text;
        }
        Ok(BackplaneMessage {
            origin: u64::from_le_bytes(*origin),
            invalidations,
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
/// pub/sub; `cache-tiered` has an in-process one, and attaches either to a
/// cache.
#[async_trait]
pub trait Backplane: Send + Sync + fmt::Debug {
    /// Sends `message` to every subscriber, this process's included.
    async fn publish(&self, message: &BackplaneMessage) -> Result<()>;

    /// A new subscription, which receives what is published from now on.
    ///
    /// A backplane that can start before its server is reachable (a lazy
    /// one) may instead return a subscription that subscribes later, from
    /// [`Subscription::next`]; it must then yield [`BackplaneEvent::Gap`]
    /// first, once subscribed, since what was published before was lost.
    async fn subscribe(&self) -> Result<Box<dyn Subscription>>;

    /// What the backplane knows of its connection now, for stats and
    /// health checks. Default: nothing known.
    fn status(&self) -> BackplaneStatus {
        BackplaneStatus::default()
    }
}

/// A backplane's connection, as [`Backplane::status`] reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BackplaneStatus {
    /// Whether a subscription is subscribed now (`None`: the backplane
    /// cannot tell). While it is not, messages from other instances are
    /// lost, and a gap follows once it is again.
    pub subscribed: Option<bool>,
    /// Times a subscription reconnected after losing its connection.
    pub reconnects: u64,
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
        let kinds = [
            Invalidation::Key("offer:1 é \u{0}".into()),
            Invalidation::Key(String::new()),
            Invalidation::Pattern(Pattern::new("a\\*[b-c]?*")),
            Invalidation::All,
        ];
        for invalidations in [vec![], kinds[..1].to_vec(), kinds.to_vec()] {
            let message = BackplaneMessage {
                origin: u64::MAX - 3,
                invalidations,
            };
            assert_eq!(BackplaneMessage::decode(&message.encode()), Ok(message));
        }
    }

    #[test]
    fn anything_else_is_undecodable() {
        let good = BackplaneMessage {
            origin: 1,
            invalidations: vec![Invalidation::Key("k".into())],
        }
        .encode();
        let edit = |at: usize, byte: u8| {
            let mut bytes = good.clone();
            bytes[at] = byte;
            bytes
        };
        let mut bad_utf8 = edit(10, 2); // the text is "k" and 0xFF
        bad_utf8.push(0xFF);
        let mut trailing = good.clone();
        trailing.push(b'k');
        for bytes in [
            &b""[..],
            &[VERSION],
            &good[..8],
            &good[..good.len() - 1],
            &edit(0, 2),    // another version
            &edit(9, b'x'), // an unknown kind
            &edit(9, b'a'), // "all" with text
            &edit(10, 200), // a length past the end
            &bad_utf8,
            &trailing,
        ] {
            assert_eq!(
                BackplaneMessage::decode(bytes),
                Err(UndecodableMessage),
                "{bytes:?}"
            );
        }
    }
}
