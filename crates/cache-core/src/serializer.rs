//! Turning typed values into bytes and back.

use std::fmt;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::Error;

/// Encodes typed values to bytes and decodes them back.
///
/// Not object safe (its methods are generic over the value type); a cache is
/// generic over its serializer, with [`Postcard`] as the default.
pub trait Serializer: Clone + Send + Sync + fmt::Debug + 'static {
    /// A stable one-byte identifier written into every stored entry, so that
    /// switching formats turns old entries into misses instead of garbage.
    /// Values 0 to 127 are reserved for the formats of this crate.
    const ID: u8;

    /// A human-readable format name, for errors.
    const FORMAT: &'static str;

    /// Appends the encoding of `value` to `out`.
    fn encode<T: Serialize + ?Sized>(&self, value: &T, out: &mut Vec<u8>) -> Result<(), Error>;

    /// Decodes a value from exactly `bytes`. A failure is reported as a
    /// message: callers treat undecodable bytes as a miss, not an error.
    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, DecodeError>;
}

/// Bytes that did not decode as the requested type.
#[derive(Debug, Clone, thiserror::Error)]
#[error("bytes did not decode as {format}: {message}")]
pub struct DecodeError {
    /// The serializer's format name.
    pub format: &'static str,
    /// The serializer's message.
    pub message: String,
}

/// [postcard](https://docs.rs/postcard): compact, fast, not self-describing.
/// The default.
///
/// Postcard cannot tell a changed type from the bytes alone; bump the
/// schema version of a typed value when its type changes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Postcard;

impl Serializer for Postcard {
    const ID: u8 = 1;
    const FORMAT: &'static str = "postcard";

    fn encode<T: Serialize + ?Sized>(&self, value: &T, out: &mut Vec<u8>) -> Result<(), Error> {
        // `to_extend` appends to the buffer the caller already holds (and
        // has already put the entry header into), avoiding a second copy.
        let buffer = std::mem::take(out);
        *out = postcard::to_extend(value, buffer).map_err(|error| Error::Serialize {
            format: Self::FORMAT,
            message: error.to_string().into(),
        })?;
        Ok(())
    }

    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, DecodeError> {
        match postcard::take_from_bytes(bytes) {
            Ok((value, [])) => Ok(value),
            Ok((_, rest)) => Err(DecodeError {
                format: Self::FORMAT,
                message: format!("{} trailing bytes", rest.len()),
            }),
            Err(error) => Err(DecodeError {
                format: Self::FORMAT,
                message: error.to_string(),
            }),
        }
    }
}

/// JSON via serde_json: larger and slower than postcard, but
/// self-describing and readable with `redis-cli`. Feature `json`.
#[cfg(feature = "json")]
#[derive(Debug, Clone, Copy, Default)]
pub struct Json;

#[cfg(feature = "json")]
impl Serializer for Json {
    const ID: u8 = 2;
    const FORMAT: &'static str = "json";

    fn encode<T: Serialize + ?Sized>(&self, value: &T, out: &mut Vec<u8>) -> Result<(), Error> {
        serde_json::to_writer(out, value).map_err(|error| Error::Serialize {
            format: Self::FORMAT,
            message: error.to_string().into(),
        })
    }

    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, DecodeError> {
        serde_json::from_slice(bytes).map_err(|error| DecodeError {
            format: Self::FORMAT,
            message: error.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Offer {
        id: u64,
        title: String,
    }

    #[test]
    fn postcard_round_trip_appends_after_header() {
        let offer = Offer {
            id: 7,
            title: "lamp".into(),
        };
        let mut out = vec![0xAA, 0xBB];
        Postcard.encode(&offer, &mut out).unwrap();
        assert_eq!(&out[..2], &[0xAA, 0xBB]);
        assert_eq!(Postcard.decode::<Offer>(&out[2..]).unwrap(), offer);
    }

    #[test]
    fn postcard_rejects_garbage_and_trailing_bytes() {
        assert!(Postcard.decode::<Offer>(&[0xFF, 0xFF, 0xFF]).is_err());
        let mut out = Vec::new();
        Postcard.encode(&1u8, &mut out).unwrap();
        out.push(0);
        assert!(Postcard.decode::<u8>(&out).is_err());
    }

    #[cfg(feature = "json")]
    #[test]
    fn json_round_trip() {
        let offer = Offer {
            id: 1,
            title: "x".into(),
        };
        let mut out = Vec::new();
        Json.encode(&offer, &mut out).unwrap();
        assert_eq!(Json.decode::<Offer>(&out).unwrap(), offer);
        assert!(Json.decode::<Offer>(b"{").is_err());
    }
}
