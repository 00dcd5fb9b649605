//! The reference model property tests compare caches against: a plain map
//! of live values with absolute expiries, which knows which entries the
//! cache may have dropped.

use std::collections::BTreeMap;
use std::time::Instant;

use cache_core::Pattern;

/// What a cache should hold, by the book.
///
/// Any value the cache returns must be the model's live value for that key.
/// A miss is accepted only where something could have dropped the entry:
/// it was never written, was removed, has expired, or the model was told
/// the cache was free to drop it ([`Model::lossy`] for a cache whose size
/// bound the test reaches, [`Model::may_set`] for a write the cache was free
/// to skip). A cache that forgets an entry nothing could have evicted fails
/// [`Model::check`].
#[derive(Debug, Default, Clone)]
pub struct Model {
    entries: BTreeMap<String, Stored>,
    lossy: bool,
}

#[derive(Debug, Clone)]
struct Stored {
    value: Vec<u8>,
    expires_at: Option<Instant>,
    /// The cache may hold this entry or nothing.
    maybe: bool,
}

impl Model {
    /// An empty model of a cache that keeps every live entry until it is
    /// removed or expires (nothing evicts it by size).
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty model of a cache that may drop any entry at any time: one
    /// whose size bound the test reaches.
    pub fn lossy() -> Self {
        Model {
            entries: BTreeMap::new(),
            lossy: true,
        }
    }

    /// Records a write.
    pub fn set(&mut self, key: &str, value: &[u8], expires_at: Option<Instant>) {
        self.store(key, value, expires_at, false);
    }

    /// Records a write the cache was free to skip (a fill that a racing
    /// mutation may cancel): the cache now holds this value or nothing.
    pub fn may_set(&mut self, key: &str, value: &[u8], expires_at: Option<Instant>) {
        self.store(key, value, expires_at, true);
    }

    fn store(&mut self, key: &str, value: &[u8], expires_at: Option<Instant>, maybe: bool) {
        let stored = Stored {
            value: value.to_vec(),
            expires_at,
            maybe,
        };
        self.entries.insert(key.to_owned(), stored);
    }

    /// Records a delete.
    pub fn delete(&mut self, key: &str) {
        self.entries.remove(key);
    }

    /// Records a pattern invalidation.
    pub fn invalidate(&mut self, pattern: &Pattern) {
        self.entries.retain(|key, _| !pattern.matches(key));
    }

    /// The live value of `key` at `now` (which the cache may or may not
    /// still hold).
    pub fn get(&self, key: &str, now: Instant) -> Option<&[u8]> {
        self.live(key, now).map(|stored| &stored.value[..])
    }

    /// The absolute expiry recorded for `key`, if it is live.
    pub fn expiry(&self, key: &str, now: Instant) -> Option<Option<Instant>> {
        self.live(key, now).map(|stored| stored.expires_at)
    }

    /// Whether the cache may have dropped `key`'s live value.
    pub fn may_miss(&self, key: &str, now: Instant) -> bool {
        self.lossy || self.live(key, now).is_none_or(|stored| stored.maybe)
    }

    fn live(&self, key: &str, now: Instant) -> Option<&Stored> {
        let stored = self.entries.get(key)?;
        match stored.expires_at {
            Some(at) if at <= now => None,
            _ => Some(stored),
        }
    }

    /// Checks what a cache returned for `key` at `now`: a value must be the
    /// live one; a miss is accepted only if the cache
    /// [may have dropped](Model::may_miss) the entry.
    pub fn check(&self, key: &str, now: Instant, observed: Option<&[u8]>) -> Result<(), String> {
        match (observed, self.get(key, now)) {
            (Some(seen), Some(expected)) if seen == expected => Ok(()),
            (Some(seen), expected) => Err(format!(
                "key {key:?}: cache returned {seen:?}, model holds {expected:?}"
            )),
            (None, _) if self.may_miss(key, now) => Ok(()),
            (None, expected) => Err(format!(
                "key {key:?}: cache missed, model holds {expected:?}, which nothing could have evicted"
            )),
        }
    }

    /// [`check`](Model::check)s what the cache holds for `key`, then learns
    /// from it what the model left open: a miss it accepted drops the entry,
    /// a value the cache was free to skip becomes certain.
    pub fn observe(
        &mut self,
        key: &str,
        now: Instant,
        observed: Option<&[u8]>,
    ) -> Result<(), String> {
        self.check(key, now, observed)?;
        match observed {
            None => self.delete(key),
            Some(_) => {
                if let Some(stored) = self.entries.get_mut(key) {
                    stored.maybe = false;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_miss_is_accepted_only_where_something_could_have_evicted() {
        let now = Instant::now();
        let later = Some(now + Duration::from_secs(1));
        let mut model = Model::new();
        model.set("k", b"v", later);
        assert!(model.check("k", now, Some(b"v")).is_ok());
        assert!(model.check("k", now, Some(b"w")).is_err(), "another value");
        assert!(model.check("k", now, None).is_err(), "nothing evicted it");
        assert!(
            model.check("k", now + Duration::from_secs(1), None).is_ok(),
            "expired"
        );
        assert!(model.check("gone", now, None).is_ok(), "never written");

        model.may_set("k", b"w", later);
        assert!(model.check("k", now, None).is_ok(), "a write it may skip");
        assert!(
            model.check("k", now, Some(b"v")).is_err(),
            "not the old value"
        );
        model.observe("k", now, Some(b"w")).unwrap();
        assert!(model.check("k", now, None).is_err(), "observed, so certain");

        let mut lossy = Model::lossy();
        lossy.set("k", b"v", later);
        assert!(lossy.check("k", now, None).is_ok());
        lossy.observe("k", now, None).unwrap();
        assert_eq!(lossy.get("k", now), None, "learnt that it was dropped");
    }
}
