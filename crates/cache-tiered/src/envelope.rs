//! The header every typed value carries in every tier:
//!
//! ```text
//! byte 0      envelope format: 1 plain, 2 tagged
//! byte 1      serializer id (Serializer::ID)
//! bytes 2..6  schema version, u32 little-endian (set per type by the user)
//! then, tagged only:
//!   u16 LE    number of tags
//!   per tag   version u64 LE, name length u16 LE, name (UTF-8)
//! then        the serializer's payload
//! ```
//!
//! A tagged value records the version each of its tags had before it was
//! loaded; it is live only while every tag still has that version.
//!
//! Postcard is not self-describing: after a deploy that changes a type, old
//! bytes may decode "successfully" into the wrong value. The schema version
//! the user bumps with the type, and the serializer id, make such entries
//! misses instead.

use std::any::Any;
use std::sync::Arc;

use cache_core::{Entry, Serializer};
use serde::Serialize;
use serde::de::DeserializeOwned;

const FORMAT_PLAIN: u8 = 1;
const FORMAT_TAGGED: u8 = 2;
const HEADER_LEN: usize = 6;

/// Set in the memo tag of tagged values, so that a memo hit under the plain
/// tag says "plain" without reading the bytes.
const TAGGED_MEMO: u64 = 1 << 48;

/// The tags of a tagged value, each with the version it was written under.
pub(crate) type Stamps = Vec<(String, u64)>;

/// A decoded value, and its stamps if it is tagged.
pub(crate) struct Opened<T> {
    pub(crate) value: T,
    pub(crate) stamps: Option<Stamps>,
}

/// How values of one type are written and read.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Envelope {
    serializer_id: u8,
    schema: u32,
}

impl Envelope {
    pub(crate) fn new<S: Serializer>(schema: u32) -> Self {
        Envelope {
            serializer_id: S::ID,
            schema,
        }
    }

    /// Tags the decoded-value memo: a value decoded under another schema
    /// or serializer is never reused.
    fn memo_tag(self) -> u64 {
        (u64::from(self.serializer_id) << 32) | u64::from(self.schema)
    }

    /// Encodes `value` with `stamps` (plain if there are none).
    pub(crate) fn encode_tagged<S: Serializer, T: Serialize + ?Sized>(
        self,
        serializer: &S,
        value: &T,
        stamps: &[(String, u64)],
    ) -> Result<Vec<u8>, cache_core::Error> {
        let mut bytes = Vec::with_capacity(64);
        bytes.push(if stamps.is_empty() {
            FORMAT_PLAIN
        } else {
            FORMAT_TAGGED
        });
        bytes.push(self.serializer_id);
        bytes.extend_from_slice(&self.schema.to_le_bytes());
        if !stamps.is_empty() {
            let too_many = || {
                cache_core::Error::config(
                    "a value has at most 65535 tags, of at most 65535 bytes each",
                )
            };
            bytes.extend_from_slice(
                &u16::try_from(stamps.len())
                    .map_err(|_| too_many())?
                    .to_le_bytes(),
            );
            for (tag, version) in stamps {
                bytes.extend_from_slice(&version.to_le_bytes());
                bytes.extend_from_slice(
                    &u16::try_from(tag.len())
                        .map_err(|_| too_many())?
                        .to_le_bytes(),
                );
                bytes.extend_from_slice(tag.as_bytes());
            }
        }
        serializer.encode(value, &mut bytes)?;
        Ok(bytes)
    }

    /// The value in `entry` (and its stamps, if tagged), or `None` if the
    /// bytes are not a value of this envelope (other format, serializer or
    /// schema; garbage).
    ///
    /// The first decode remembers the value on the entry; later reads of
    /// the same stored entry clone it instead of decoding.
    pub(crate) fn decode<S, T>(self, serializer: &S, entry: &Entry) -> Option<Opened<T>>
    where
        S: Serializer,
        T: DeserializeOwned + Clone + Any + Send + Sync,
    {
        // A plain value memoized under the plain tag: the hot path, which
        // does not touch the bytes at all.
        if let Some(value) = entry.decoded_ref::<T>(self.memo_tag()) {
            return Some(Opened {
                value: value.clone(),
                stamps: None,
            });
        }
        let bytes = entry.value();
        let (header, rest) = bytes.split_at_checked(HEADER_LEN)?;
        if header[1] != self.serializer_id || header[2..] != self.schema.to_le_bytes() {
            return None;
        }
        let (tag, stamps, payload) = match header[0] {
            FORMAT_PLAIN => (self.memo_tag(), None, rest),
            FORMAT_TAGGED => {
                let (stamps, payload) = read_stamps(rest)?;
                (self.memo_tag() | TAGGED_MEMO, Some(stamps), payload)
            }
            _ => return None,
        };
        if let Some(value) = entry.decoded_ref::<T>(tag) {
            return Some(Opened {
                value: value.clone(),
                stamps,
            });
        }
        let value: T = serializer.decode(payload).ok()?;
        entry.remember_decoded(tag, Arc::new(value.clone()));
        Some(Opened { value, stamps })
    }

    /// Remembers `value` as the decoded form of freshly encoded `entry`.
    pub(crate) fn remember<T: Any + Send + Sync>(self, entry: &Entry, value: Arc<T>) {
        let tagged = entry.value().first() == Some(&FORMAT_TAGGED);
        let tag = self.memo_tag() | if tagged { TAGGED_MEMO } else { 0 };
        entry.remember_decoded(tag, value);
    }
}

/// Splits the tag section off a tagged value's bytes.
fn read_stamps(bytes: &[u8]) -> Option<(Stamps, &[u8])> {
    let (count, mut rest) = bytes.split_first_chunk::<2>()?;
    let count = u16::from_le_bytes(*count);
    let mut stamps = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        let (version, after) = rest.split_first_chunk::<8>()?;
        let (len, after) = after.split_first_chunk::<2>()?;
        let (name, after) = after.split_at_checked(usize::from(u16::from_le_bytes(*len)))?;
        stamps.push((
            std::str::from_utf8(name).ok()?.to_owned(),
            u64::from_le_bytes(*version),
        ));
        rest = after;
    }
    Some((stamps, rest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use cache_core::Postcard;

    #[test]
    fn round_trip_and_mismatches_are_misses() {
        let v1 = Envelope::new::<Postcard>(1);
        let bytes = v1
            .encode_tagged(&Postcard, &(7u32, "x".to_owned()), &[])
            .unwrap();
        let entry = Entry::new(bytes.clone());
        let decoded = v1.decode::<_, (u32, String)>(&Postcard, &entry).unwrap();
        assert_eq!(decoded.value, (7, "x".to_owned()));
        assert_eq!(decoded.stamps, None);
        assert!(
            entry.decoded_ref::<(u32, String)>(v1.memo_tag()).is_some(),
            "memoized"
        );

        let fresh = || Entry::new(bytes.clone());
        let v2 = Envelope::new::<Postcard>(2);
        assert!(
            v2.decode::<_, (u32, String)>(&Postcard, &fresh()).is_none(),
            "other schema"
        );
        assert!(
            v1.decode::<_, (String, u64, u64)>(&Postcard, &fresh())
                .is_none(),
            "other type"
        );
        assert!(
            v1.decode::<_, u32>(&Postcard, &Entry::new(vec![1u8, 1]))
                .is_none(),
            "short"
        );
        assert!(
            v1.decode::<_, u32>(&Postcard, &Entry::new(vec![9u8; 12]))
                .is_none(),
            "garbage"
        );
    }

    #[test]
    fn tagged_values_carry_their_stamps() {
        let v1 = Envelope::new::<Postcard>(1);
        let stamps = vec![("offer:7".to_owned(), 42), ("é".to_owned(), u64::MAX)];
        let bytes = v1.encode_tagged(&Postcard, &9u32, &stamps).unwrap();
        for _ in 0..2 {
            // Decoded, then from the memo: the stamps come with it each time.
            let entry = Entry::new(bytes.clone());
            let opened = v1.decode::<_, u32>(&Postcard, &entry).unwrap();
            assert_eq!((opened.value, opened.stamps.as_ref()), (9, Some(&stamps)));
            let again = v1.decode::<_, u32>(&Postcard, &entry).unwrap();
            assert_eq!(again.stamps.as_ref(), Some(&stamps));
        }
        // Truncated anywhere in the tag section: not a value.
        for len in HEADER_LEN..HEADER_LEN + 2 + 8 + 2 + 7 {
            let entry = Entry::new(bytes[..len].to_vec());
            assert!(v1.decode::<_, u32>(&Postcard, &entry).is_none(), "{len}");
        }
    }
}
