//! The header every typed value carries in every tier:
//!
//! ```text
//! byte 0      envelope format version (1)
//! byte 1      serializer id (Serializer::ID)
//! bytes 2..6  schema version, u32 little-endian (set per type by the user)
//! bytes 6..   the serializer's payload
//! ```
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

const FORMAT_VERSION: u8 = 1;
const HEADER_LEN: usize = 6;

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

    pub(crate) fn encode<S: Serializer, T: Serialize + ?Sized>(
        self,
        serializer: &S,
        value: &T,
    ) -> Result<Vec<u8>, cache_core::Error> {
        let mut bytes = Vec::with_capacity(64);
        bytes.push(FORMAT_VERSION);
        bytes.push(self.serializer_id);
        bytes.extend_from_slice(&self.schema.to_le_bytes());
        serializer.encode(value, &mut bytes)?;
        Ok(bytes)
    }

    /// The value in `entry`, or `None` if the bytes are not a value of this
    /// envelope (other format, serializer or schema; garbage).
    ///
    /// The first decode remembers the value on the entry; later reads of
    /// the same stored entry clone it instead of decoding.
    pub(crate) fn decode<S, T>(self, serializer: &S, entry: &Entry) -> Option<T>
    where
        S: Serializer,
        T: DeserializeOwned + Clone + Any + Send + Sync,
    {
        let tag = self.memo_tag();
        if let Some(value) = entry.decoded_ref::<T>(tag) {
            return Some(value.clone());
        }
        let bytes = entry.value();
        let (header, payload) = bytes.split_at_checked(HEADER_LEN)?;
        if header[0] != FORMAT_VERSION
            || header[1] != self.serializer_id
            || header[2..] != self.schema.to_le_bytes()
        {
            return None;
        }
        let value: T = serializer.decode(payload).ok()?;
        entry.remember_decoded(tag, Arc::new(value.clone()));
        Some(value)
    }

    /// Remembers `value` as the decoded form of freshly encoded `entry`.
    pub(crate) fn remember<T: Any + Send + Sync>(self, entry: &Entry, value: Arc<T>) {
        entry.remember_decoded(self.memo_tag(), value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cache_core::Postcard;

    #[test]
    fn round_trip_and_mismatches_are_misses() {
        let v1 = Envelope::new::<Postcard>(1);
        let bytes = v1.encode(&Postcard, &(7u32, "x".to_owned())).unwrap();
        let entry = Entry::new(bytes.clone());
        let decoded = v1.decode::<_, (u32, String)>(&Postcard, &entry).unwrap();
        assert_eq!(decoded, (7, "x".to_owned()));
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
}
