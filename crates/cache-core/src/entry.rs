//! The unit every layer stores: value bytes plus the metadata that travels
//! between tiers.

use std::any::Any;
use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;

/// A cached value: its bytes and its absolute expiry.
///
/// The expiry is an absolute instant on the cache's [`Clock`](crate::Clock),
/// not a TTL, so a value copied from a lower tier into an upper one keeps
/// exactly the time it had left and never outlives its source.
///
/// An `Entry` is cheap to clone (one reference count). Layers that keep
/// entries in memory hand out clones of the entry they stored, which lets a
/// typed front end remember the decoded value on the entry itself (see
/// [`Entry::decoded`]) and skip deserializing on every hit.
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
pub struct Entry(Arc<Inner>);

#[derive(Clone)]
struct Inner {
    value: Bytes,
    expires_at: Option<Instant>,
    decoded: OnceLock<Decoded>,
}

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
            value: value.into(),
            expires_at: None,
            decoded: OnceLock::new(),
        }))
    }

    /// Sets the absolute expiry (`None`: never expires).
    #[must_use]
    pub fn expires_at(mut self, at: impl Into<Option<Instant>>) -> Self {
        let at = at.into();
        if self.0.expires_at != at {
            Arc::make_mut(&mut self.0).expires_at = at;
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
        &self.0.value
    }

    /// The size of the value in bytes.
    pub fn len(&self) -> usize {
        self.0.value.len()
    }

    /// Whether the value is empty.
    pub fn is_empty(&self) -> bool {
        self.0.value.is_empty()
    }

    /// The absolute expiry, `None` if the entry never expires.
    pub fn expiry(&self) -> Option<Instant> {
        self.0.expires_at
    }

    /// Whether the entry has expired at `now`. An entry is dead at its expiry instant.
    pub fn is_expired(&self, now: Instant) -> bool {
        self.0.expires_at.is_some_and(|at| at <= now)
    }

    /// The time left at `now`: `None` if the entry never expires, zero if it has expired.
    pub fn remaining(&self, now: Instant) -> Option<Duration> {
        self.0
            .expires_at
            .map(|at| at.saturating_duration_since(now))
    }

    /// The decoded value remembered on this entry for type `T` and `tag`.
    ///
    /// `tag` names everything besides the type that decoding depended on
    /// (a schema version, the serializer). Returns `None` when nothing, or
    /// something of another type or tag, was remembered.
    pub fn decoded<T: Any + Send + Sync>(&self, tag: u64) -> Option<Arc<T>> {
        let decoded = self.0.decoded.get()?;
        if decoded.tag != tag {
            return None;
        }
        decoded.value.clone().downcast::<T>().ok()
    }

    /// A reference to the decoded value remembered for type `T` and `tag`;
    /// see [`decoded`](Entry::decoded). Cheaper when the caller clones `T`
    /// anyway.
    #[inline]
    pub fn decoded_ref<T: Any + Send + Sync>(&self, tag: u64) -> Option<&T> {
        let decoded = self.0.decoded.get()?;
        if decoded.tag != tag {
            return None;
        }
        decoded.value.downcast_ref::<T>()
    }

    /// Remembers the decoded form of this entry's bytes, so that later reads
    /// of the same stored entry can skip decoding. The first remembered
    /// value wins; later calls are ignored.
    ///
    /// The caller guarantees that `value` is what the bytes decode to.
    pub fn remember_decoded<T: Any + Send + Sync>(&self, tag: u64, value: Arc<T>) {
        let _ = self.0.decoded.set(Decoded { tag, value });
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
            .field("expires_at", &self.0.expires_at)
            .field("decoded", &self.0.decoded.get().is_some())
            .finish()
    }
}

impl PartialEq for Entry {
    /// Entries are equal when their bytes and expiry are; the decoded memo is ignored.
    fn eq(&self, other: &Self) -> bool {
        self.0.value == other.0.value && self.0.expires_at == other.0.expires_at
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
    fn changing_expiry_does_not_touch_shared_clones() {
        let now = Instant::now();
        let a = Entry::new(Bytes::from_static(b"v"));
        let b = a.clone().expires_at(now);
        assert_eq!(a.expiry(), None);
        assert_eq!(b.expiry(), Some(now));
    }
}
