//! The reference model property tests compare caches against: a plain map
//! of live values with absolute expiries.

use std::collections::BTreeMap;
use std::time::Instant;

use cache_core::Pattern;

/// What a cache should hold, by the book.
///
/// A cache may forget an entry (eviction), so [`Model::check`] accepts a
/// miss for anything; but any value the cache returns must be the model's
/// live value for that key.
#[derive(Debug, Default, Clone)]
pub struct Model {
    entries: BTreeMap<String, (Vec<u8>, Option<Instant>)>,
}

impl Model {
    /// An empty model.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a write.
    pub fn set(&mut self, key: &str, value: &[u8], expires_at: Option<Instant>) {
        self.entries
            .insert(key.to_owned(), (value.to_vec(), expires_at));
    }

    /// Records a delete.
    pub fn delete(&mut self, key: &str) {
        self.entries.remove(key);
    }

    /// Records a pattern invalidation.
    pub fn invalidate(&mut self, pattern: &Pattern) {
        self.entries.retain(|key, _| !pattern.matches(key));
    }

    /// The live value of `key` at `now`.
    pub fn get(&self, key: &str, now: Instant) -> Option<&[u8]> {
        let (value, expires_at) = self.entries.get(key)?;
        match expires_at {
            Some(at) if *at <= now => None,
            _ => Some(value),
        }
    }

    /// The absolute expiry recorded for `key`, if it is live.
    pub fn expiry(&self, key: &str, now: Instant) -> Option<Option<Instant>> {
        self.get(key, now)?;
        self.entries.get(key).map(|(_, at)| *at)
    }

    /// Checks what a cache returned for `key` at `now`: a miss is always
    /// allowed (caches forget), a value must be the live one.
    pub fn check(&self, key: &str, now: Instant, observed: Option<&[u8]>) -> Result<(), String> {
        match (observed, self.get(key, now)) {
            (None, _) => Ok(()),
            (Some(seen), Some(expected)) if seen == expected => Ok(()),
            (Some(seen), expected) => Err(format!(
                "key {key:?}: cache returned {seen:?}, model holds {expected:?}"
            )),
        }
    }
}
