//! The bytes stored under a key: a three-byte header, then the payload.
//!
//! ```text
//! byte 0   magic  0xCA      tells our entries from anything else under the key
//! byte 1   format version   1
//! byte 2   flags            bit 0: payload is lz4 (size-prepended block); other bits must be 0
//! byte 3.. payload          the value bytes (or their lz4 block)
//! ```
//!
//! The expiry is not in the bytes: it is the key's own Redis expiry (`SET ... PX`),
//! read back with `PTTL` in the same round trip, so the server's clock is the
//! only one that matters.

use bytes::{Buf, Bytes};

const MAGIC: u8 = 0xCA;
const VERSION: u8 = 1;
/// The payload is an lz4 block with its uncompressed size prepended.
const FLAG_LZ4: u8 = 0b0000_0001;
const KNOWN_FLAGS: u8 = FLAG_LZ4;
/// Length of the header in front of every payload.
pub(crate) const HEADER_LEN: usize = 3;

/// Why stored bytes could not be read as an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DecodeError {
    /// Not our format (wrong magic, unknown version or flags, truncated,
    /// or a compressed payload that does not decompress): remove the key.
    Corrupt,
    /// A valid compressed entry this build cannot read (the `lz4` feature is
    /// off). A miss, but the key is left for the instances that can.
    #[cfg_attr(feature = "lz4", allow(dead_code))]
    Unsupported,
}

/// A value in its stored form (header, then payload), written straight
/// into the command buffer as one argument: no intermediate copy.
pub(crate) struct Stored<'a> {
    flags: u8,
    payload: std::borrow::Cow<'a, [u8]>,
}

/// Encodes `value` with the header, compressing it when the `lz4` feature is
/// on, `compress_above` is set and the value is at least that long (and the
/// compressed form is actually smaller).
pub(crate) fn encode(value: &[u8], compress_above: Option<usize>) -> Stored<'_> {
    #[cfg(feature = "lz4")]
    if let Some(threshold) = compress_above
        && value.len() >= threshold
    {
        let compressed = lz4_flex::compress_prepend_size(value);
        if compressed.len() < value.len() {
            return Stored {
                flags: FLAG_LZ4,
                payload: compressed.into(),
            };
        }
    }
    #[cfg(not(feature = "lz4"))]
    let _ = compress_above;
    Stored {
        flags: 0,
        payload: value.into(),
    }
}

impl Stored<'_> {
    /// Length of the stored bytes.
    pub(crate) fn len(&self) -> usize {
        HEADER_LEN + self.payload.len()
    }

    /// The stored bytes as one buffer (tests and tools).
    #[cfg(test)]
    pub(crate) fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.payload.len());
        out.extend_from_slice(&[MAGIC, VERSION, self.flags]);
        out.extend_from_slice(&self.payload);
        out
    }
}

impl redis::ToRedisArgs for Stored<'_> {
    fn write_redis_args<W: ?Sized + redis::RedisWrite>(&self, out: &mut W) {
        use std::io::Write as _;
        let mut arg = out.writer_for_next_arg();
        // Writing into the command's in-memory buffer cannot fail.
        arg.write_all(&[MAGIC, VERSION, self.flags])
            .and_then(|()| arg.write_all(&self.payload))
            .expect("writing to an in-memory buffer");
    }
}

/// Decodes stored bytes into the value. `max_len` bounds the size a
/// compressed payload may claim, so garbage cannot make us allocate gigabytes.
pub(crate) fn decode(mut raw: Bytes, max_len: usize) -> Result<Bytes, DecodeError> {
    if raw.len() < HEADER_LEN || raw[0] != MAGIC || raw[1] != VERSION {
        return Err(DecodeError::Corrupt);
    }
    let flags = raw[2];
    if flags & !KNOWN_FLAGS != 0 {
        return Err(DecodeError::Corrupt);
    }
    if flags & FLAG_LZ4 == 0 {
        // Moves the start: unlike `slice`, no shared buffer is allocated.
        raw.advance(HEADER_LEN);
        return Ok(raw);
    }
    decompress(&raw[HEADER_LEN..], max_len)
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
        encode(value, compress_above).to_vec()
    }

    #[test]
    fn one_argument_holds_header_and_payload() {
        let args = redis::ToRedisArgs::to_redis_args(&encode(b"abc", None));
        assert_eq!(args, vec![vec![MAGIC, VERSION, 0, b'a', b'b', b'c']]);
    }

    #[test]
    fn round_trip_plain() {
        let encoded = stored(b"hello", None);
        assert_eq!(&encoded[..HEADER_LEN], &[MAGIC, VERSION, 0]);
        assert_eq!(
            decode(Bytes::from(encoded), 1 << 20).unwrap(),
            Bytes::from_static(b"hello")
        );
        assert_eq!(
            decode(Bytes::from(stored(b"", None)), 0).unwrap(),
            Bytes::new()
        );
    }

    #[test]
    fn garbage_is_corrupt() {
        for raw in [
            &b""[..],
            b"garbage",
            b"\xCA",
            b"\xCA\x01",
            b"\xCA\x02\x00payload",
            b"\xCA\x01\x80payload",
            b"\x00\x01\x00payload",
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
            decode(Bytes::from(compressed), 1 << 20).unwrap(),
            &value[..]
        );
        // Below the threshold, or with compression off, values stay plain
        // and still read.
        let small = stored(&value[..100], Some(1024));
        assert_eq!(small[2], 0);
        assert_eq!(decode(Bytes::from(small), 1 << 20).unwrap(), &value[..100]);
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
        let mut raw = vec![MAGIC, VERSION, FLAG_LZ4];
        raw.extend_from_slice(&u32::MAX.to_le_bytes());
        raw.extend_from_slice(b"xxxx");
        assert_eq!(decode(Bytes::from(raw), 1 << 20), Err(DecodeError::Corrupt));
        let mut raw = vec![MAGIC, VERSION, FLAG_LZ4];
        raw.extend_from_slice(&100u32.to_le_bytes());
        raw.extend_from_slice(b"\xff\xff\xff");
        assert_eq!(decode(Bytes::from(raw), 1 << 20), Err(DecodeError::Corrupt));
    }

    #[cfg(not(feature = "lz4"))]
    #[test]
    fn lz4_entries_are_unsupported_without_the_feature() {
        let raw = Bytes::from_static(b"\xCA\x01\x01\x05\x00\x00\x00xx");
        assert_eq!(decode(raw, 1 << 20), Err(DecodeError::Unsupported));
    }
}
