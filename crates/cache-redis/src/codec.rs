//! The bytes stored under a key: a 19-byte header, then the payload.
//!
//! ```text
//! byte 0       magic  0xCA     tells our entries from anything else under the key
//! byte 1       format version  2
//! byte 2       flags           bit 0: payload is lz4 (size-prepended block)
//!                              bit 1: a removal marker (no payload)
//!                              other bits must be 0
//! bytes 3-10   expiry          unix milliseconds on the server's clock, big-endian; 0: never
//! bytes 11-18  as of           unix microseconds on the server's clock, big-endian:
//!                              when the data was read (see below)
//! bytes 19..   payload         the value bytes (or their lz4 block)
//! ```
//!
//! The expiry is also the key's own Redis expiry (`SET ... PXAT` with the
//! same number), so one `GET` returns the value with its expiry, as Redis
//! will apply it: no second command, and no window in which a newer write
//! can pair an old value with a new TTL.
//!
//! "As of" orders the writes of one key across processes. A write of new
//! data is as of its own time; a fill (a value some read or load obtained)
//! is as of the moment that read or load began; a removal leaves a marker as
//! of the removal. A fill does not replace anything as new or newer than it
//! (the script in `layer.rs`), so a load that began before a removal cannot
//! put its value back after it.
//!
//! Format 1 (a three-byte header, the expiry only in Redis) is what earlier
//! releases wrote: this one reads it as a miss and leaves it in place.

use bytes::{Buf, Bytes};

const MAGIC: u8 = 0xCA;
const VERSION: u8 = 2;
/// Written by releases before the expiry moved into the header.
const VERSION_1: u8 = 1;
/// The payload is an lz4 block with its uncompressed size prepended.
const FLAG_LZ4: u8 = 0b0000_0001;
/// A removal marker: no value, only its "as of".
const FLAG_MARKER: u8 = 0b0000_0010;
const KNOWN_FLAGS: u8 = FLAG_LZ4 | FLAG_MARKER;
/// Length of the header in front of every payload.
pub(crate) const HEADER_LEN: usize = 19;
/// Where "as of" starts, for the scripts (1-based in Lua: 12).
pub(crate) const AS_OF_AT: usize = 11;

/// Why stored bytes could not be read as an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DecodeError {
    /// Not our format (wrong magic, unknown version or flags, truncated,
    /// or a compressed payload that does not decompress): remove the key.
    Corrupt,
    /// A valid entry this build cannot read (format 1 of an earlier release,
    /// or compressed with the `lz4` feature off). A miss, but the key is left
    /// for the instances that can read it.
    Unsupported,
}

/// What a key holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decoded {
    /// A value, with its expiry in server unix milliseconds.
    Value {
        value: Bytes,
        expires_at_ms: Option<u64>,
    },
    /// A removal marker: a miss.
    Marker,
}

/// An entry in its stored form (header, then payload), written straight
/// into the command buffer as one argument: no intermediate copy.
pub(crate) struct Encoded<'a> {
    flags: u8,
    expires_at_ms: u64,
    as_of_micros: u64,
    payload: std::borrow::Cow<'a, [u8]>,
}

/// Encodes `value` with the header, compressing it when the `lz4` feature is
/// on, `compress_above` is set and the value is at least that long (and the
/// compressed form is actually smaller).
pub(crate) fn encode(
    value: &[u8],
    compress_above: Option<usize>,
    expires_at_ms: Option<u64>,
    as_of_micros: i64,
) -> Encoded<'_> {
    let (flags, payload) = compress(value, compress_above);
    Encoded {
        flags,
        expires_at_ms: expires_at_ms.unwrap_or(0),
        as_of_micros: as_of_micros.max(0) as u64,
        payload,
    }
}

/// The payload and its flags: an lz4 block when that is on and smaller.
fn compress(value: &[u8], compress_above: Option<usize>) -> (u8, std::borrow::Cow<'_, [u8]>) {
    #[cfg(feature = "lz4")]
    if let Some(threshold) = compress_above
        && value.len() >= threshold
    {
        let compressed = lz4_flex::compress_prepend_size(value);
        if compressed.len() < value.len() {
            return (FLAG_LZ4, compressed.into());
        }
    }
    #[cfg(not(feature = "lz4"))]
    let _ = compress_above;
    (0, value.into())
}

/// A removal marker as of `as_of_micros`, expiring at `expires_at_ms`.
pub(crate) fn marker(expires_at_ms: u64, as_of_micros: i64) -> Encoded<'static> {
    Encoded {
        flags: FLAG_MARKER,
        expires_at_ms,
        as_of_micros: as_of_micros.max(0) as u64,
        payload: (&[][..]).into(),
    }
}

impl Encoded<'_> {
    /// Length of the stored bytes.
    pub(crate) fn len(&self) -> usize {
        HEADER_LEN + self.payload.len()
    }

    fn header(&self) -> [u8; HEADER_LEN] {
        let mut header = [0; HEADER_LEN];
        header[..3].copy_from_slice(&[MAGIC, VERSION, self.flags]);
        header[3..AS_OF_AT].copy_from_slice(&self.expires_at_ms.to_be_bytes());
        header[AS_OF_AT..].copy_from_slice(&self.as_of_micros.to_be_bytes());
        header
    }

    /// The stored bytes as one buffer (tests and tools).
    #[cfg(test)]
    pub(crate) fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len());
        out.extend_from_slice(&self.header());
        out.extend_from_slice(&self.payload);
        out
    }
}

impl redis::ToRedisArgs for Encoded<'_> {
    fn write_redis_args<W: ?Sized + redis::RedisWrite>(&self, out: &mut W) {
        use std::io::Write as _;
        let mut arg = out.writer_for_next_arg();
        // Writing into the command's in-memory buffer cannot fail.
        arg.write_all(&self.header())
            .and_then(|()| arg.write_all(&self.payload))
            .expect("writing to an in-memory buffer");
    }
}

/// Decodes stored bytes. `max_len` bounds the size a compressed payload may
/// claim, so garbage cannot make us allocate gigabytes.
pub(crate) fn decode(mut raw: Bytes, max_len: usize) -> Result<Decoded, DecodeError> {
    if raw.len() >= 3 && raw[0] == MAGIC && raw[1] == VERSION_1 && raw[2] & !FLAG_LZ4 == 0 {
        return Err(DecodeError::Unsupported);
    }
    if raw.len() < HEADER_LEN || raw[0] != MAGIC || raw[1] != VERSION {
        return Err(DecodeError::Corrupt);
    }
    let flags = raw[2];
    if flags & !KNOWN_FLAGS != 0 || flags == FLAG_LZ4 | FLAG_MARKER {
        return Err(DecodeError::Corrupt);
    }
    if flags & FLAG_MARKER != 0 {
        return Ok(Decoded::Marker);
    }
    let expires_at_ms = u64::from_be_bytes(raw[3..AS_OF_AT].try_into().expect("8 bytes"));
    let expires_at_ms = (expires_at_ms != 0).then_some(expires_at_ms);
    let value = if flags & FLAG_LZ4 == 0 {
        // Moves the start: unlike `slice`, no shared buffer is allocated.
        raw.advance(HEADER_LEN);
        raw
    } else {
        decompress(&raw[HEADER_LEN..], max_len)?
    };
    Ok(Decoded::Value {
        value,
        expires_at_ms,
    })
}

#[cfg(feature = "lz4")]
fn decompress(payload: &[u8], max_len: usize) -> Result<Bytes, DecodeError> {
    let claimed = payload
        .get(..4)
        .map(|size| u32::from_le_bytes([size[0], size[1], size[2], size[3]]) as usize)
        .ok_or(DecodeError::Corrupt)?;
    if claimed > max_len {
        return Err(DecodeError::Corrupt);
    }
    lz4_flex::decompress_size_prepended(payload)
        .map(Bytes::from)
        .map_err(|_| DecodeError::Corrupt)
}

#[cfg(not(feature = "lz4"))]
fn decompress(_payload: &[u8], _max_len: usize) -> Result<Bytes, DecodeError> {
    Err(DecodeError::Unsupported)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bytes `encode` makes Redis store.
    fn stored(value: &[u8], compress_above: Option<usize>) -> Vec<u8> {
        encode(value, compress_above, Some(1_700_000_000_123), 42).to_vec()
    }

    #[cfg(feature = "lz4")]
    fn value_of(decoded: Decoded) -> Bytes {
        match decoded {
            Decoded::Value { value, .. } => value,
            Decoded::Marker => panic!("a marker"),
        }
    }

    #[test]
    fn one_argument_holds_header_and_payload() {
        let args = redis::ToRedisArgs::to_redis_args(&encode(b"abc", None, Some(0x0102), 0x0304));
        let mut expected = vec![MAGIC, VERSION, 0, 0, 0, 0, 0, 0, 0, 1, 2];
        expected.extend_from_slice(&[0, 0, 0, 0, 0, 0, 3, 4]);
        expected.extend_from_slice(b"abc");
        assert_eq!(args, vec![expected]);
    }

    #[test]
    fn round_trip_plain_with_expiry() {
        let encoded = stored(b"hello", None);
        assert_eq!(&encoded[..3], &[MAGIC, VERSION, 0]);
        assert_eq!(
            decode(Bytes::from(encoded), 1 << 20).unwrap(),
            Decoded::Value {
                value: Bytes::from_static(b"hello"),
                expires_at_ms: Some(1_700_000_000_123),
            }
        );
        let never = encode(b"", None, None, 0).to_vec();
        assert_eq!(
            decode(Bytes::from(never), 0).unwrap(),
            Decoded::Value {
                value: Bytes::new(),
                expires_at_ms: None,
            }
        );
    }

    #[test]
    fn markers_decode_as_markers() {
        let bytes = marker(1_700_000_000_000, 99).to_vec();
        assert_eq!(bytes.len(), HEADER_LEN);
        assert_eq!(&bytes[AS_OF_AT..], &99u64.to_be_bytes());
        assert_eq!(decode(Bytes::from(bytes), 0), Ok(Decoded::Marker));
    }

    #[test]
    fn format_1_is_left_alone_and_garbage_is_corrupt() {
        for old in [
            &b"\xCA\x01\x00payload"[..],
            b"\xCA\x01\x01\x05\x00\x00\x00xx",
        ] {
            assert_eq!(
                decode(Bytes::copy_from_slice(old), 1 << 20),
                Err(DecodeError::Unsupported)
            );
        }
        let mut both_flags = stored(b"x", None);
        both_flags[2] = FLAG_LZ4 | FLAG_MARKER;
        let mut unknown_flag = stored(b"x", None);
        unknown_flag[2] = 0x80;
        let truncated = stored(b"x", None)[..HEADER_LEN - 1].to_vec();
        for raw in [
            &b""[..],
            b"garbage",
            b"\xCA",
            b"\xCA\x02",
            b"\xCA\x03\x00payload-payload-payload",
            b"\xCA\x01\x80payload",
            b"\x00\x02\x00payload-payload-payload",
            &both_flags,
            &unknown_flag,
            &truncated,
        ] {
            assert_eq!(
                decode(Bytes::copy_from_slice(raw), 1 << 20),
                Err(DecodeError::Corrupt),
                "{raw:?}"
            );
        }
    }

    #[cfg(feature = "lz4")]
    #[test]
    fn lz4_round_trip_and_mixed_reads() {
        let value = vec![7u8; 10_000];
        let compressed = stored(&value, Some(1024));
        assert_eq!(compressed[2], FLAG_LZ4);
        assert!(compressed.len() < value.len() / 10);
        assert_eq!(
            value_of(decode(Bytes::from(compressed), 1 << 20).unwrap()),
            &value[..]
        );
        // Below the threshold, or with compression off, values stay plain
        // and still read.
        let small = stored(&value[..100], Some(1024));
        assert_eq!(small[2], 0);
        assert_eq!(
            value_of(decode(Bytes::from(small), 1 << 20).unwrap()),
            &value[..100]
        );
        // Incompressible data is stored plain.
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 32) as u8
            })
            .collect();
        assert_eq!(stored(&noise, Some(1))[2], 0);
    }

    #[cfg(feature = "lz4")]
    #[test]
    fn lz4_garbage_and_oversize_claims_are_corrupt() {
        let header = |payload: &[u8]| {
            let mut raw = encode(b"", None, None, 0).to_vec();
            raw[2] = FLAG_LZ4;
            raw.extend_from_slice(payload);
            Bytes::from(raw)
        };
        let mut claim = u32::MAX.to_le_bytes().to_vec();
        claim.extend_from_slice(b"xxxx");
        assert_eq!(decode(header(&claim), 1 << 20), Err(DecodeError::Corrupt));
        let mut claim = 100u32.to_le_bytes().to_vec();
        claim.extend_from_slice(b"\xff\xff\xff");
        assert_eq!(decode(header(&claim), 1 << 20), Err(DecodeError::Corrupt));
    }

    #[cfg(not(feature = "lz4"))]
    #[test]
    fn lz4_entries_are_unsupported_without_the_feature() {
        let mut raw = encode(b"", None, None, 0).to_vec();
        raw[2] = FLAG_LZ4;
        raw.extend_from_slice(b"\x05\x00\x00\x00xx");
        assert_eq!(
            decode(Bytes::from(raw), 1 << 20),
            Err(DecodeError::Unsupported)
        );
    }
}
