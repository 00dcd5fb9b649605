//! The header every typed value carries in every tier:
//!
//! ```text
//! byte 0      envelope format: 3 plain, 4 tagged (1 and 2 were the same
//!             without the type fingerprint)
//! byte 1      serializer id (Serializer::ID)
//! bytes 2..6  schema version, u32 little-endian (set per type by the user)
//! bytes 6..14 type fingerprint, u64 little-endian (see `fingerprint`)
//! then, tagged only:
//!   u16 LE    number of tags
//!   per tag   version u64 LE, name length u16 LE, name (UTF-8)
//! then        the serializer's payload
//! ```
//!
//! A tagged value records the version each of its tags had before it was
//! loaded; it is live only while every tag still has that version.
//!
//! Postcard is not self-describing: bytes of one type may decode
//! "successfully" as another (`7u64` reads as `-4i64`), and after a deploy
//! that changes a type, old bytes may decode into the wrong value. The type
//! fingerprint, the schema version the user bumps with the type, and the
//! serializer id make such entries misses instead. A mismatch is *foreign*,
//! not garbage: another version of the service may be reading it right now
//! (a rolling deploy), so it is left in place; only bytes that do not parse
//! are removed.

use std::any::Any;
use std::sync::Arc;

use cache_core::{Entry, Serializer};
use serde::Serialize;
use serde::de::DeserializeOwned;

const FORMAT_PLAIN: u8 = 3;
const FORMAT_TAGGED: u8 = 4;
/// The formats of earlier versions, which had no type fingerprint: foreign.
const FORMAT_V1: [u8; 2] = [1, 2];
const HEADER_LEN: usize = 14;

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

/// What a stored entry turned out to be.
pub(crate) enum Opening<T> {
    /// A value of this type, schema and serializer.
    Value(Opened<T>),
    /// Well-formed, but written for another type, schema version or
    /// serializer, or by another version of this library: a miss, left in place.
    Foreign,
    /// Bytes that do not parse: a miss, to be removed.
    Undecodable,
}

/// How values of one type are written and read.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Envelope {
    serializer_id: u8,
    schema: u32,
    /// The type's name, hashed into the fingerprint only when bytes are
    /// written or parsed (never on a memoized hit).
    type_name: &'static str,
}

impl Envelope {
    pub(crate) fn new<S: Serializer, T: ?Sized>(schema: u32) -> Self {
        Envelope {
            serializer_id: S::ID,
            schema,
            type_name: std::any::type_name::<T>(),
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
        bytes.extend_from_slice(&fingerprint(self.type_name).to_le_bytes());
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

    /// What `entry` holds for this envelope: the value (and its stamps, if
    /// tagged), a foreign value, or garbage.
    ///
    /// The first decode remembers the value on the entry; later reads of
    /// the same stored entry clone it instead of decoding.
    pub(crate) fn decode<S, T>(self, serializer: &S, entry: &Entry) -> Opening<T>
    where
        S: Serializer,
        T: DeserializeOwned + Clone + Any + Send + Sync,
    {
        // A plain value memoized under the plain tag: the hot path, which
        // does not touch the bytes at all.
        if let Some(value) = entry.decoded_ref::<T>(self.memo_tag()) {
            return Opening::Value(Opened {
                value: value.clone(),
                stamps: None,
            });
        }
        let bytes = entry.value();
        let Some(&format) = bytes.first() else {
            return Opening::Undecodable;
        };
        if FORMAT_V1.contains(&format) {
            return Opening::Foreign;
        }
        if format != FORMAT_PLAIN && format != FORMAT_TAGGED {
            // Not a format we know: a newer version's, or garbage. Either
            // way not ours to delete from a tier others may share.
            return Opening::Foreign;
        }
        let Some((header, rest)) = bytes.split_at_checked(HEADER_LEN) else {
            return Opening::Undecodable;
        };
        if header[1] != self.serializer_id
            || header[2..6] != self.schema.to_le_bytes()
            || header[6..14] != fingerprint(self.type_name).to_le_bytes()
        {
            return Opening::Foreign;
        }
        let (tag, stamps, payload) = if format == FORMAT_PLAIN {
            (self.memo_tag(), None, rest)
        } else {
            match read_stamps(rest) {
                Some((stamps, payload)) => (self.memo_tag() | TAGGED_MEMO, Some(stamps), payload),
                None => return Opening::Undecodable,
            }
        };
        if let Some(value) = entry.decoded_ref::<T>(tag) {
            return Opening::Value(Opened {
                value: value.clone(),
                stamps,
            });
        }
        match serializer.decode::<T>(payload) {
            Ok(value) => {
                entry.remember_decoded(tag, Arc::new(value.clone()));
                Opening::Value(Opened { value, stamps })
            }
            Err(_) => Opening::Undecodable,
        }
    }

    /// Remembers `value` as the decoded form of freshly encoded `entry`.
    pub(crate) fn remember<T: Any + Send + Sync>(self, entry: &Entry, value: Arc<T>) {
        let tagged = entry.value().first() == Some(&FORMAT_TAGGED);
        let tag = self.memo_tag() | if tagged { TAGGED_MEMO } else { 0 };
        entry.remember_decoded(tag, value);
    }
}

/// A fingerprint of a type, from its name (FNV-1a, 64 bits).
///
/// Names are normalised so that the usual pairs that serialize alike read
/// each other's values: `str` and `String`, `[T]` and `Vec<T>`, and `T`
/// behind `&`, `Box`, `Arc` or `Rc` (serde's `rc` feature writes the inner
/// value). Type names are the compiler's, stable for one build and in
/// practice across builds of the same code; a value whose fingerprint
/// differs is a miss, never another type's value.
pub(crate) fn fingerprint(type_name: &str) -> u64 {
    let name = normalize(type_name);
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in name.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

fn normalize(mut name: &str) -> std::borrow::Cow<'_, str> {
    loop {
        let stripped = name.trim_start_matches('&').trim_start_matches("mut ");
        let unwrapped = ["alloc::boxed::Box<", "alloc::sync::Arc<", "alloc::rc::Rc<"]
            .iter()
            .find_map(|wrapper| stripped.strip_prefix(wrapper)?.strip_suffix('>'));
        match unwrapped {
            Some(inner) => name = inner,
            None if stripped == name => break,
            None => name = stripped,
        }
    }
    if name == "str" {
        return "alloc::string::String".into();
    }
    match name
        .strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
    {
        Some(element) if !element.contains(';') => format!("alloc::vec::Vec<{element}>").into(),
        _ => name.into(),
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

    fn open<T>(schema: u32, entry: &Entry) -> Opening<T>
    where
        T: DeserializeOwned + Clone + Any + Send + Sync,
    {
        Envelope::new::<Postcard, T>(schema).decode::<_, T>(&Postcard, entry)
    }

    fn value<T>(opening: Opening<T>) -> Option<Opened<T>> {
        match opening {
            Opening::Value(opened) => Some(opened),
            _ => None,
        }
    }

    #[test]
    fn round_trip_and_mismatches_are_misses() {
        let v1 = Envelope::new::<Postcard, (u32, String)>(1);
        let bytes = v1
            .encode_tagged(&Postcard, &(7u32, "x".to_owned()), &[])
            .unwrap();
        let entry = Entry::new(bytes.clone());
        let decoded = value(open::<(u32, String)>(1, &entry)).unwrap();
        assert_eq!(decoded.value, (7, "x".to_owned()));
        assert_eq!(decoded.stamps, None);
        assert!(
            entry.decoded_ref::<(u32, String)>(v1.memo_tag()).is_some(),
            "memoized"
        );

        let fresh = || Entry::new(bytes.clone());
        assert!(
            matches!(open::<(u32, String)>(2, &fresh()), Opening::Foreign),
            "other schema"
        );
        assert!(
            matches!(open::<(u32, Vec<u8>)>(1, &fresh()), Opening::Foreign),
            "other type, same bytes"
        );
        assert!(
            matches!(
                open::<u32>(1, &Entry::new(vec![FORMAT_PLAIN, 1])),
                Opening::Undecodable
            ),
            "short"
        );
        assert!(
            matches!(
                open::<u32>(1, &Entry::new(Vec::new())),
                Opening::Undecodable
            ),
            "empty"
        );
        assert!(
            matches!(open::<u32>(1, &Entry::new(vec![9u8; 20])), Opening::Foreign),
            "an unknown format is not ours to delete"
        );
        assert!(
            matches!(
                open::<u32>(0, &Entry::new(vec![1u8, 1, 0, 0, 0, 0, 7])),
                Opening::Foreign
            ),
            "the fingerprint-less format of earlier versions"
        );
        let mut truncated = Envelope::new::<Postcard, String>(0)
            .encode_tagged(&Postcard, "a long enough string", &[])
            .unwrap();
        truncated.truncate(HEADER_LEN + 3);
        assert!(
            matches!(
                open::<String>(0, &Entry::new(truncated)),
                Opening::Undecodable
            ),
            "our header, a payload that does not parse"
        );
    }

    #[test]
    fn one_type_never_reads_as_another() {
        let bytes = Envelope::new::<Postcard, u64>(0)
            .encode_tagged(&Postcard, &7u64, &[])
            .unwrap();
        assert!(matches!(
            open::<i64>(0, &Entry::new(bytes.clone())),
            Opening::Foreign
        ));
        assert_eq!(value(open::<u64>(0, &Entry::new(bytes))).unwrap().value, 7);
    }

    #[test]
    fn types_that_serialize_alike_share_a_fingerprint() {
        let same = |a: &str, b: &str| fingerprint(a) == fingerprint(b);
        assert!(same(
            std::any::type_name::<str>(),
            std::any::type_name::<String>()
        ));
        assert!(same(
            std::any::type_name::<&str>(),
            std::any::type_name::<String>()
        ));
        assert!(same(
            std::any::type_name::<[u8]>(),
            std::any::type_name::<Vec<u8>>()
        ));
        assert!(same(
            std::any::type_name::<std::sync::Arc<Vec<u32>>>(),
            std::any::type_name::<Vec<u32>>()
        ));
        assert!(same(
            std::any::type_name::<Box<u8>>(),
            std::any::type_name::<u8>()
        ));
        assert!(!same(
            std::any::type_name::<u64>(),
            std::any::type_name::<i64>()
        ));
        assert!(!same(
            std::any::type_name::<[u8; 4]>(),
            std::any::type_name::<Vec<u8>>()
        ));
    }

    #[test]
    fn tagged_values_carry_their_stamps() {
        let v1 = Envelope::new::<Postcard, u32>(1);
        let stamps = vec![("offer:7".to_owned(), 42), ("é".to_owned(), u64::MAX)];
        let bytes = v1.encode_tagged(&Postcard, &9u32, &stamps).unwrap();
        for _ in 0..2 {
            // Decoded, then from the memo: the stamps come with it each time.
            let entry = Entry::new(bytes.clone());
            let opened = value(open::<u32>(1, &entry)).unwrap();
            assert_eq!((opened.value, opened.stamps.as_ref()), (9, Some(&stamps)));
            let again = value(open::<u32>(1, &entry)).unwrap();
            assert_eq!(again.stamps.as_ref(), Some(&stamps));
        }
        // Truncated anywhere in the tag section: not a value.
        for len in HEADER_LEN..HEADER_LEN + 2 + 8 + 2 + 7 {
            let entry = Entry::new(bytes[..len].to_vec());
            assert!(
                matches!(open::<u32>(1, &entry), Opening::Undecodable),
                "{len}"
            );
        }
    }
}
