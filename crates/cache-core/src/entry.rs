//! The unit every layer stores: value bytes plus the metadata that travels
//! between tiers.

use std::any::{Any, TypeId};
use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::{Clock, Deadline};

/// A cached value: its bytes and its absolute expiry.
///
/// The expiry is an absolute instant on the cache's [`Clock`](crate::Clock),
/// not a TTL, so a value copied from a lower tier into an upper one keeps
/// exactly the time it had left and never outlives its source.
///
/// An `Entry` is cheap to clone (one reference count). Layers that keep
/// entries in memory hand out clones of the entry they stored, which lets a
/// typed front end skip deserializing on every hit: it remembers the
/// decoded value on the entry ([`Entry::remember_decoded`]), or stores an
/// entry made with it ([`Entry::with_decoded`], the value in the entry's
/// own allocation), and reads it back with [`Entry::decoded_ref`].
///
/// ```
/// use std::time::{Duration, Instant};
/// use cache_core::Entry;
///
/// let now = Instant::now();
/// let entry = Entry::new(&b"hello"[..]).expires_at(now + Duration::from_secs(60));
/// assert_eq!(entry.value().as_ref(), b"hello");
/// assert_eq!(entry.remaining(now), Some(Duration::from_secs(60)));
/// assert!(entry.is_expired(now + Duration::from_secs(60)));
/// ```
#[derive(Clone)]
pub struct Entry(Arc<Inner<dyn AnyBody>>);

/// An entry's one allocation. What a hit reads comes first, beside the
/// reference counts: the expiry, the tag, and (first in the body) the
/// decoded value the entry was made with, so that on a typical 64-bit
/// target a hit on an `Arc` value reads 56 bytes from the allocation's
/// start, one or two cache lines. The rest (the bytes, the values
/// remembered since) follows it, reached through the body's vtable.
#[repr(C)]
struct Inner<B: ?Sized> {
    expires_at: Option<Deadline>,
    /// The tag of the value the entry was made with (see
    /// [`Entry::decoded_ref`]); zero for a plain entry.
    tag: u64,
    body: B,
}

/// The body of an entry made with a decoded value of type `T`
/// ([`NoValue`] for a plain one).
#[repr(C)]
struct Body<T> {
    /// First: a hit reads it right after the header.
    decoded: T,
    value: Bytes,
    /// Decoded forms remembered after the entry was made.
    remembered: OnceLock<Decoded>,
}

/// A [`Body`] of any type: its cold fields, and (as `dyn Any`) its type.
trait AnyBody: Any + Send + Sync {
    fn value(&self) -> &Bytes;
    fn remembered(&self) -> &OnceLock<Decoded>;
}

impl<T: Any + Send + Sync> AnyBody for Body<T> {
    fn value(&self) -> &Bytes {
        &self.value
    }

    fn remembered(&self) -> &OnceLock<Decoded> {
        &self.remembered
    }
}

/// What a plain entry carries in place of a decoded value.
struct NoValue;

#[derive(Clone)]
struct Decoded {
    /// What besides the type the value depended on; the type itself is
    /// checked by downcasting.
    tag: u64,
    value: Arc<dyn Any + Send + Sync>,
}

impl Entry {
    /// An entry that never expires. Takes anything that converts to
    /// [`Bytes`] without copying (`Vec<u8>`, `Bytes`, `&'static [u8]`).
    pub fn new(value: impl Into<Bytes>) -> Self {
        Entry(Arc::new(Inner {
            expires_at: None,
            tag: 0,
            body: Body {
                decoded: NoValue,
                value: value.into(),
                remembered: OnceLock::new(),
            },
        }))
    }

    /// An entry that never expires, made with `decoded`, what its bytes
    /// decode to (under `tag`, see [`decoded_ref`](Entry::decoded_ref)), in
    /// the same allocation: a read of the decoded value follows no pointer
    /// past the entry.
    ///
    /// The caller guarantees that `decoded` is what the bytes decode to.
    ///
    /// ```
    /// use cache_core::Entry;
    ///
    /// let entry = Entry::with_decoded(&b"42"[..], 7, 42u32);
    /// assert_eq!(entry.decoded_ref::<u32>(7), Some(&42));
    /// assert!(entry.carries_decoded());
    /// assert_eq!(entry, Entry::new(&b"42"[..]));
    /// ```
    pub fn with_decoded<T: Any + Send + Sync>(
        value: impl Into<Bytes>,
        tag: u64,
        decoded: T,
    ) -> Self {
        Entry(Arc::new(Inner {
            expires_at: None,
            tag,
            body: Body {
                decoded,
                value: value.into(),
                remembered: OnceLock::new(),
            },
        }))
    }

    /// Sets the absolute expiry (`None`: never expires).
    #[must_use]
    pub fn expires_at(mut self, at: impl Into<Option<Instant>>) -> Self {
        let at = at.into();
        if self.expiry() == at {
            return self;
        }
        let at = at.map(Deadline::new);
        match Arc::get_mut(&mut self.0) {
            Some(inner) => inner.expires_at = at,
            // Shared: a copy with the new expiry (the bytes are shared, and
            // so is what was remembered; a decoded value the entry was
            // made with cannot be copied, and is decoded again if needed).
            None => {
                self = Entry(Arc::new(Inner {
                    expires_at: at,
                    tag: 0,
                    body: Body {
                        decoded: NoValue,
                        value: self.value().clone(),
                        remembered: self.0.body.remembered().clone(),
                    },
                }))
            }
        }
        self
    }

    /// Caps the expiry at `now + ttl`: an entry never lives longer than a
    /// tier's cap, and never longer than it already had.
    #[must_use]
    pub fn capped(self, now: Instant, ttl: Duration) -> Self {
        let cap = now.checked_add(ttl);
        match (self.expiry(), cap) {
            (Some(current), Some(cap)) if current <= cap => self,
            (_, None) => self,
            (_, cap) => self.expires_at(cap),
        }
    }

    /// The value bytes.
    pub fn value(&self) -> &Bytes {
        self.0.body.value()
    }

    /// The size of the value in bytes.
    pub fn len(&self) -> usize {
        self.value().len()
    }

    /// Whether the value is empty.
    pub fn is_empty(&self) -> bool {
        self.value().is_empty()
    }

    /// The absolute expiry, `None` if the entry never expires.
    pub fn expiry(&self) -> Option<Instant> {
        self.0.expires_at.map(|at| at.instant())
    }

    /// Whether the entry has expired at `now`. An entry is dead at its expiry instant.
    pub fn is_expired(&self, now: Instant) -> bool {
        self.expiry().is_some_and(|at| at <= now)
    }

    /// Whether the entry has expired by `clock`, now: what a read asks of
    /// every entry it finds. An entry that never expires costs no clock
    /// read, and the [system clock](crate::SystemClock) judges one far
    /// from its expiry by a coarse read (see [`Deadline`]).
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    /// use cache_core::{Clock, Entry, ManualClock};
    ///
    /// let clock = ManualClock::new();
    /// let entry = Entry::new(&b"v"[..]).expires_at(clock.now() + Duration::from_secs(5));
    /// assert!(!entry.has_expired(&clock));
    /// clock.advance(Duration::from_secs(5));
    /// assert!(entry.has_expired(&clock));
    /// ```
    #[inline]
    pub fn has_expired(&self, clock: &dyn Clock) -> bool {
        match &self.0.expires_at {
            Some(deadline) => clock.has_passed_deadline(deadline),
            None => false,
        }
    }

    /// The time left at `now`: `None` if the entry never expires, zero if it has expired.
    pub fn remaining(&self, now: Instant) -> Option<Duration> {
        self.expiry().map(|at| at.saturating_duration_since(now))
    }

    /// The decoded value of this entry for type `T` and `tag`, as an `Arc`.
    ///
    /// `tag` names everything besides the type that decoding depended on
    /// (a schema version, the serializer). Returns `None` when nothing, or
    /// something of another type or tag, was remembered.
    pub fn decoded<T: Any + Send + Sync + Clone>(&self, tag: u64) -> Option<Arc<T>> {
        if let Some(value) = self.carried_ref::<T>(tag) {
            return Some(Arc::new(value.clone()));
        }
        let decoded = self.0.body.remembered().get()?;
        if decoded.tag != tag {
            return None;
        }
        decoded.value.clone().downcast::<T>().ok()
    }

    /// A reference to the decoded value of this entry for type `T` and
    /// `tag`: the one it was made with ([`with_decoded`](Entry::with_decoded)),
    /// else the one remembered ([`remember_decoded`](Entry::remember_decoded)).
    #[inline]
    pub fn decoded_ref<T: Any + Send + Sync>(&self, tag: u64) -> Option<&T> {
        if let Some(value) = self.carried_ref::<T>(tag) {
            return Some(value);
        }
        let decoded = self.0.body.remembered().get()?;
        if decoded.tag != tag {
            return None;
        }
        decoded.value.downcast_ref::<T>()
    }

    /// The decoded value the entry was made with
    /// ([`with_decoded`](Entry::with_decoded)), if it is a `T` under `tag`:
    /// [`decoded_ref`](Entry::decoded_ref) without what was remembered.
    #[inline]
    pub fn carried_ref<T: Any + Send + Sync>(&self, tag: u64) -> Option<&T> {
        let inner = &*self.0;
        // The marker of a plain entry is no one's value (a constant test).
        if inner.tag != tag || TypeId::of::<T>() == TypeId::of::<NoValue>() {
            return None;
        }
        let body: &dyn Any = &inner.body;
        body.downcast_ref::<Body<T>>().map(|body| &body.decoded)
    }

    /// Whether the entry was made with its decoded value
    /// ([`with_decoded`](Entry::with_decoded)).
    pub fn carries_decoded(&self) -> bool {
        let body: &dyn Any = &self.0.body;
        !body.is::<Body<NoValue>>()
    }

    /// Remembers the decoded form of this entry's bytes, so that later reads
    /// of the same stored entry can skip decoding. The first remembered
    /// value wins; later calls are ignored.
    ///
    /// The caller guarantees that `value` is what the bytes decode to.
    pub fn remember_decoded<T: Any + Send + Sync>(&self, tag: u64, value: Arc<T>) {
        let _ = self.0.body.remembered().set(Decoded { tag, value });
    }

    /// Whether two handles share the same stored entry (not just equal bytes).
    pub fn ptr_eq(&self, other: &Entry) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl fmt::Debug for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Entry")
            .field("len", &self.len())
            .field("expires_at", &self.expiry())
            .field(
                "decoded",
                &(self.carries_decoded() || self.0.body.remembered().get().is_some()),
            )
            .finish()
    }
}

impl PartialEq for Entry {
    /// Entries are equal when their bytes and expiry are; the decoded memo is ignored.
    fn eq(&self, other: &Self) -> bool {
        self.value() == other.value() && self.expiry() == other.expiry()
    }
}

impl Eq for Entry {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capped_never_extends() {
        let now = Instant::now();
        let long = Entry::new(Bytes::from_static(b"x")).expires_at(now + Duration::from_secs(100));
        assert_eq!(
            long.clone().capped(now, Duration::from_secs(10)).expiry(),
            Some(now + Duration::from_secs(10))
        );
        assert_eq!(long.clone().capped(now, Duration::from_secs(1000)), long);
        let forever = Entry::new(Bytes::from_static(b"x"));
        assert_eq!(
            forever.capped(now, Duration::from_secs(5)).expiry(),
            Some(now + Duration::from_secs(5))
        );
    }

    #[test]
    fn decoded_memo_is_keyed_by_type_and_tag() {
        let entry = Entry::new(Bytes::from_static(b"42"));
        let clone = entry.clone();
        entry.remember_decoded(7, Arc::new(42u32));
        assert_eq!(clone.decoded::<u32>(7).as_deref(), Some(&42));
        assert_eq!(clone.decoded_ref::<u32>(7), Some(&42));
        assert_eq!(clone.decoded_ref::<u64>(7), None);
        assert!(clone.decoded::<u32>(8).is_none());
        assert!(clone.decoded::<u64>(7).is_none());
        // First value wins.
        entry.remember_decoded(7, Arc::new(43u32));
        assert_eq!(entry.decoded::<u32>(7).as_deref(), Some(&42));
    }

    #[test]
    fn an_entry_made_with_its_value_serves_it_by_type_and_tag() {
        let entry = Entry::with_decoded(Bytes::from_static(b"42"), 7, 42u32);
        assert!(entry.carries_decoded());
        assert!(!Entry::new(Bytes::from_static(b"42")).carries_decoded());
        assert_eq!(entry.decoded_ref::<u32>(7), Some(&42));
        assert_eq!(entry.decoded::<u32>(7).as_deref(), Some(&42));
        assert_eq!(entry.decoded_ref::<u32>(8), None);
        assert_eq!(entry.decoded_ref::<u64>(7), None);
        // Another type is remembered beside it.
        entry.remember_decoded(9, Arc::new(String::from("42")));
        assert_eq!(
            entry.decoded_ref::<String>(9).map(String::as_str),
            Some("42")
        );
        assert_eq!(entry.decoded_ref::<u32>(7), Some(&42));
        // Its own expiry is set in place; a shared one is copied, keeping
        // what was remembered.
        let now = Instant::now();
        let alone = entry.expires_at(now);
        assert_eq!(alone.decoded_ref::<u32>(7), Some(&42));
        let copy = alone.clone().expires_at(now + Duration::from_secs(1));
        assert!(!copy.ptr_eq(&alone));
        assert_eq!(copy.expiry(), Some(now + Duration::from_secs(1)));
        assert_eq!(alone.expiry(), Some(now));
        assert_eq!(
            copy.decoded_ref::<String>(9).map(String::as_str),
            Some("42")
        );
        assert_eq!(copy.value(), alone.value());
    }

    #[test]
    fn a_plain_entry_never_serves_the_marker_of_no_value() {
        let entry = Entry::new(Bytes::from_static(b"x"));
        assert!(entry.decoded_ref::<NoValue>(0).is_none());
        assert!(entry.carried_ref::<NoValue>(0).is_none());
        assert_eq!(entry.decoded_ref::<()>(0), None);
    }

    #[test]
    #[cfg(target_pointer_width = "64")]
    fn what_a_hit_reads_sits_at_the_start_of_the_allocation() {
        let entry = Entry::with_decoded(Bytes::from_static(b"v"), 7, Arc::new(1u64))
            .expires_at(Instant::now());
        let inner = Arc::as_ptr(&entry.0) as *const u8 as usize;
        let decoded = entry.carried_ref::<Arc<u64>>(7).unwrap() as *const Arc<u64> as usize;
        // After the expiry (24 bytes) and the tag: with the two reference
        // counts before them, 56 bytes from the allocation's start.
        assert_eq!(decoded - inner, 32);
        assert_eq!(std::mem::size_of::<Option<Deadline>>(), 24);
    }

    #[test]
    fn changing_expiry_does_not_touch_shared_clones() {
        let now = Instant::now();
        let a = Entry::new(Bytes::from_static(b"v"));
        let b = a.clone().expires_at(now);
        assert_eq!(a.expiry(), None);
        assert_eq!(b.expiry(), Some(now));
    }
}
