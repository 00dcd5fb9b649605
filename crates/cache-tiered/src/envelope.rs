//! The header every typed value carries in every tier:
//!
//! ```text
//! byte 0      envelope format: 3 plain, 4 tagged, 5 plain with a life,
//!             6 tagged with a life (1 and 2 were 3 and 4 without the type
//!             fingerprint)
//! byte 1      serializer id (Serializer::ID)
//! bytes 2..6  schema version, u32 little-endian (set per type by the user)
//! bytes 6..14 type fingerprint, u64 little-endian (see `fingerprint`)
//! then, with a life only (see `Life`):
//!   u8        flags: bit 0 throttled
//!   u64 LE    stale_for, ms: the value turns stale this long before it expires
//!   u64 LE    refresh_for, ms: a read this long before it expires starts an
//!             eager refresh (0: never)
//! then, tagged only:
//!   u16 LE    number of tags
//!   per tag   version u64 LE, name length u16 LE, name (UTF-8)
//! then        the serializer's payload
//! ```
//!
//! A tagged value records the version each of its tags had before it was
//! loaded; it is live only while every tag still has that version.
//!
//! A life places the value's logical expiry (and eager refresh point)
//! relative to its physical expiry, the one instant every tier keeps with
//! the bytes (the Redis layer translates it to the server's clock): a
//! fail-safe value stays stored past its logical expiry, as a fallback,
//! and any tier's copy of the bytes says when it turned stale. Values
//! without fail-safe or eager refresh carry no life (formats 3 and 4,
//! readable by earlier releases).
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
use std::time::{Duration, Instant};

use cache_core::{Entry, Serializer};
use serde::Serialize;
use serde::de::DeserializeOwned;

const FORMAT_PLAIN: u8 = 3;
const FORMAT_TAGGED: u8 = 4;
const FORMAT_PLAIN_LIFE: u8 = 5;
const FORMAT_TAGGED_LIFE: u8 = 6;
/// The formats of earlier versions, which had no type fingerprint: foreign.
const FORMAT_V1: [u8; 2] = [1, 2];
const HEADER_LEN: usize = 14;
const LIFE_LEN: usize = 17;
const THROTTLED: u8 = 1;

/// Set in the memo tag of tagged values, so that a memo hit under the plain
/// tag says "plain" without reading the bytes.
const TAGGED_MEMO: u64 = 1 << 48;
/// Set in the memo tag of values with a life, for the same reason: the hot
/// path's memo hit is then always a value without one (always fresh).
const LIFE_MEMO: u64 = 1 << 49;

/// The tags of a tagged value, each with the version it was written under.
pub(crate) type Stamps = Vec<(String, u64)>;

/// A decoded value, its stamps if it is tagged, and its life if it has one.
pub(crate) struct Opened<T> {
    pub(crate) value: T,
    pub(crate) stamps: Option<Stamps>,
    pub(crate) life: Option<Life>,
}

/// Where a value's logical life ends, relative to its physical expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Life {
    /// The value turns stale this long before it expires: the fail-safe
    /// grace, during which it is kept only as a fallback.
    pub(crate) stale_for: Duration,
    /// A read this long (or less) before it expires starts one eager
    /// refresh; `None`: never.
    pub(crate) refresh_for: Option<Duration>,
    /// A stale value given a short fresh spell because its loader failed
    /// (the fail-safe throttle): served without calling the loader, as stale.
    pub(crate) throttled: bool,
}

/// What a value is worth at a given instant, by its life and expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Freshness {
    /// Live, and not yet in its eager-refresh window.
    Fresh,
    /// Live, in its eager-refresh window.
    RefreshDue,
    /// Live only because a failed load gave it a throttle.
    Throttled,
    /// Past its logical expiry: a fallback only.
    Stale,
}

impl Life {
    /// The freshness at `now` of a value with this life expiring at `expiry`.
    pub(crate) fn at(life: Option<Life>, expiry: Option<Instant>, now: Instant) -> Freshness {
        let (Some(life), Some(expiry)) = (life, expiry) else {
            return Freshness::Fresh;
        };
        let left = expiry.saturating_duration_since(now);
        if left <= life.stale_for && !life.stale_for.is_zero() {
            Freshness::Stale
        } else if life.throttled {
            Freshness::Throttled
        } else if life.refresh_for.is_some_and(|refresh| left <= refresh) {
            Freshness::RefreshDue
        } else {
            Freshness::Fresh
        }
    }

    fn write(self, bytes: &mut Vec<u8>) {
        bytes.push(if self.throttled { THROTTLED } else { 0 });
        bytes.extend_from_slice(&millis(self.stale_for).to_le_bytes());
        bytes.extend_from_slice(&self.refresh_for.map_or(0, millis).to_le_bytes());
    }

    fn read(bytes: &[u8]) -> Option<Life> {
        let (&flags, rest) = bytes.split_first()?;
        let (stale, rest) = rest.split_first_chunk::<8>()?;
        let (refresh, _) = rest.split_first_chunk::<8>()?;
        let refresh = u64::from_le_bytes(*refresh);
        Some(Life {
            stale_for: Duration::from_millis(u64::from_le_bytes(*stale)),
            refresh_for: (refresh != 0).then(|| Duration::from_millis(refresh)),
            throttled: flags & THROTTLED != 0,
        })
    }
}

/// Whole milliseconds, rounded up (a life of 0.5 ms is not none).
fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX)
}

/// `entry` with its life replaced by `life` (the same bytes otherwise), or
/// `None` if it has no life section to replace.
pub(crate) fn relive(entry: &Entry, life: Life) -> Option<Entry> {
    let bytes = entry.value();
    let format = *bytes.first()?;
    if format != FORMAT_PLAIN_LIFE && format != FORMAT_TAGGED_LIFE {
        return None;
    }
    let (head, rest) = bytes.split_at_checked(HEADER_LEN)?;
    let tail = rest.get(LIFE_LEN..)?;
    let mut out = Vec::with_capacity(bytes.len());
    out.extend_from_slice(head);
    life.write(&mut out);
    out.extend_from_slice(tail);
    Some(Entry::new(out).expires_at(entry.expiry()))
}

/// The life of `entry`'s bytes, if they carry one.
pub(crate) fn life_of(entry: &Entry) -> Option<Life> {
    let bytes = entry.value();
    match bytes.first() {
        Some(&FORMAT_PLAIN_LIFE | &FORMAT_TAGGED_LIFE) => Life::read(bytes.get(HEADER_LEN..)?),
        _ => None,
    }
}

/// `entry` as a tier that caps lifetimes at `cap` from `now` stores it.
///
/// A value with a life keeps its physical expiry (with fail-safe, its grace
/// is what keeps serving while the back end is down) and has its
/// *freshness* capped instead: its copy turns stale at the cap. Any other
/// value has its expiry capped.
pub(crate) fn capped(entry: Entry, now: Instant, cap: Duration) -> Entry {
    let (Some(expiry), Some(life)) = (entry.expiry(), life_of(&entry)) else {
        return entry.capped(now, cap);
    };
    let fresh_until = expiry.checked_sub(life.stale_for).unwrap_or(now);
    match now.checked_add(cap) {
        Some(limit) if limit < fresh_until => {
            let capped = Life {
                stale_for: expiry.saturating_duration_since(limit),
                ..life
            };
            relive(&entry, capped).unwrap_or(entry)
        }
        _ => entry,
    }
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
    #[inline]
    fn memo_tag(self) -> u64 {
        (u64::from(self.serializer_id) << 32) | u64::from(self.schema)
    }

    /// The value memoized on `entry` (stored with it or remembered since)
    /// if it is plain and has no life (so is always fresh): read neither
    /// the bytes nor the header.
    #[inline]
    pub(crate) fn memoized_plain<T: Any + Send + Sync>(self, entry: &Entry) -> Option<&T> {
        entry.decoded_ref::<T>(self.memo_tag())
    }

    /// The value `entry` was stored with ([`Entry::with_decoded`]), if it
    /// is plain and has no life (so is always fresh): the hot path, which
    /// follows no pointer past the entry.
    #[inline]
    pub(crate) fn carried_plain<T: Any + Send + Sync>(self, entry: &Entry) -> Option<&T> {
        entry.carried_ref::<T>(self.memo_tag())
    }

    /// A copy of plain, lifeless `entry` (its bytes; not its expiry) made
    /// with `value`, what it decodes to, where
    /// [`memoized_plain`](Self::memoized_plain) finds it.
    pub(crate) fn carrying<T: Any + Send + Sync>(self, entry: &Entry, value: T) -> Entry {
        Entry::with_decoded(entry.value().clone(), self.memo_tag(), value)
    }

    /// Encodes `value` with `stamps` (plain if there are none) and `life`.
    pub(crate) fn encode<S: Serializer, T: Serialize + ?Sized>(
        self,
        serializer: &S,
        value: &T,
        stamps: &[(String, u64)],
        life: Option<Life>,
    ) -> Result<Vec<u8>, cache_core::Error> {
        let mut bytes = Vec::with_capacity(64);
        bytes.push(match (stamps.is_empty(), life.is_some()) {
            (true, false) => FORMAT_PLAIN,
            (false, false) => FORMAT_TAGGED,
            (true, true) => FORMAT_PLAIN_LIFE,
            (false, true) => FORMAT_TAGGED_LIFE,
        });
        bytes.push(self.serializer_id);
        bytes.extend_from_slice(&self.schema.to_le_bytes());
        bytes.extend_from_slice(&fingerprint(self.type_name).to_le_bytes());
        if let Some(life) = life {
            life.write(&mut bytes);
        }
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
        // A plain value memoized under the plain tag: as on the hot path.
        if let Some(value) = self.memoized_plain::<T>(entry) {
            return Opening::Value(Opened {
                value: value.clone(),
                stamps: None,
                life: None,
            });
        }
        let bytes = entry.value();
        let Some(&format) = bytes.first() else {
            return Opening::Undecodable;
        };
        if FORMAT_V1.contains(&format) {
            return Opening::Foreign;
        }
        if !(FORMAT_PLAIN..=FORMAT_TAGGED_LIFE).contains(&format) {
            // Not a format we know: a newer version's, or garbage. Either
            // way not ours to delete from a tier others may share.
            return Opening::Foreign;
        }
        let Some((header, mut rest)) = bytes.split_at_checked(HEADER_LEN) else {
            return Opening::Undecodable;
        };
        if header[1] != self.serializer_id
            || header[2..6] != self.schema.to_le_bytes()
            || header[6..14] != fingerprint(self.type_name).to_le_bytes()
        {
            return Opening::Foreign;
        }
        let mut tag = self.memo_tag();
        let mut life = None;
        if format == FORMAT_PLAIN_LIFE || format == FORMAT_TAGGED_LIFE {
            let Some(read) = Life::read(rest) else {
                return Opening::Undecodable;
            };
            life = Some(read);
            rest = &rest[LIFE_LEN..];
            tag |= LIFE_MEMO;
        }
        let (stamps, payload) = if format == FORMAT_TAGGED || format == FORMAT_TAGGED_LIFE {
            match read_stamps(rest) {
                Some((stamps, payload)) => {
                    tag |= TAGGED_MEMO;
                    (Some(stamps), payload)
                }
                None => return Opening::Undecodable,
            }
        } else {
            (None, rest)
        };
        if let Some(value) = entry.decoded_ref::<T>(tag) {
            return Opening::Value(Opened {
                value: value.clone(),
                stamps,
                life,
            });
        }
        match serializer.decode::<T>(payload) {
            Ok(value) => {
                entry.remember_decoded(tag, Arc::new(value.clone()));
                Opening::Value(Opened {
                    value,
                    stamps,
                    life,
                })
            }
            Err(_) => Opening::Undecodable,
        }
    }

    /// Remembers `value` as the decoded form of freshly encoded `entry`.
    pub(crate) fn remember<T: Any + Send + Sync>(self, entry: &Entry, value: Arc<T>) {
        let format = entry.value().first().copied();
        let mut tag = self.memo_tag();
        if matches!(format, Some(FORMAT_TAGGED | FORMAT_TAGGED_LIFE)) {
            tag |= TAGGED_MEMO;
        }
        if matches!(format, Some(FORMAT_PLAIN_LIFE | FORMAT_TAGGED_LIFE)) {
            tag |= LIFE_MEMO;
        }
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
            .encode(&Postcard, &(7u32, "x".to_owned()), &[], None)
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
            .encode(&Postcard, "a long enough string", &[], None)
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
            .encode(&Postcard, &7u64, &[], None)
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
        let bytes = v1.encode(&Postcard, &9u32, &stamps, None).unwrap();
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

    #[test]
    fn a_life_travels_with_the_bytes_and_caps_freshness_not_expiry() {
        let envelope = Envelope::new::<Postcard, u32>(0);
        let life = Life {
            stale_for: Duration::from_secs(100),
            refresh_for: Some(Duration::from_secs(110)),
            throttled: false,
        };
        let now = Instant::now();
        let expiry = now + Duration::from_secs(160); // fresh 60 s, stale 100 s
        let stamps = [("t".to_owned(), 1)];
        for stamps in [&[][..], &stamps[..]] {
            let bytes = envelope
                .encode(&Postcard, &7u32, stamps, Some(life))
                .unwrap();
            let entry = Entry::new(bytes).expires_at(expiry);
            let opened = value(open::<u32>(0, &entry)).unwrap();
            assert_eq!((opened.value, opened.life), (7, Some(life)));
            assert_eq!(opened.stamps.is_some(), !stamps.is_empty());
            assert_eq!(life_of(&entry), Some(life));

            let at =
                |secs: u64| Life::at(Some(life), Some(expiry), now + Duration::from_secs(secs));
            assert_eq!(at(0), Freshness::Fresh);
            assert_eq!(at(50), Freshness::RefreshDue);
            assert_eq!(at(60), Freshness::Stale);

            // A tier capping at 10 s keeps the expiry and the value, stale
            // from 10 s on; a cap past the freshness changes nothing.
            let capped = capped(entry.clone(), now, Duration::from_secs(10));
            assert_eq!(capped.expiry(), Some(expiry));
            let capped_life = life_of(&capped).unwrap();
            assert_eq!(capped_life.stale_for, Duration::from_secs(150));
            assert_eq!(value(open::<u32>(0, &capped)).unwrap().value, 7);
            let loose = capped_life_of(&entry, now, Duration::from_secs(600));
            assert_eq!(loose, Some(life));
        }
        // Without a life, a cap shortens the expiry as before.
        let plain =
            Entry::new(envelope.encode(&Postcard, &7u32, &[], None).unwrap()).expires_at(expiry);
        let capped = capped(plain, now, Duration::from_secs(10));
        assert_eq!(capped.expiry(), Some(now + Duration::from_secs(10)));
        assert_eq!(Life::at(None, Some(expiry), now), Freshness::Fresh);
        // A life cut short is not a life.
        let bytes = envelope.encode(&Postcard, &7u32, &[], Some(life)).unwrap();
        let cut = Entry::new(bytes[..HEADER_LEN + 5].to_vec());
        assert!(matches!(open::<u32>(0, &cut), Opening::Undecodable));
    }

    fn capped_life_of(entry: &Entry, now: Instant, cap: Duration) -> Option<Life> {
        life_of(&capped(entry.clone(), now, cap))
    }
}
