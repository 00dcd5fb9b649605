//! The trait every cache tier implements.

use std::fmt;

use async_trait::async_trait;

use crate::{Entry, LayerStats, Pattern, Result};

/// One tier of a cache: an async store of [`Entry`] values under string keys.
///
/// The trait is object safe; composers hold tiers as `Arc<dyn CacheLayer>`.
/// A backend implements five methods (`name`, `get`, `set`, `delete`,
/// `invalidate`); the batch methods and `stats` have defaults it may
/// override.
///
/// # Contract
/// - `get` never returns an entry that has expired by the layer's clock,
///   or that was deleted, invalidated or written under another key.
/// - `set` stores the entry with its absolute expiry, replacing any value
///   under the key. An entry that has already expired is not stored (and any
///   old value under the key is removed). A value the layer will not hold
///   is refused with an error (for example [`Error::ValueTooLarge`]), and
///   any old value under the key is removed, so a refused write never
///   leaves the previous value readable.
/// - Bytes that do not parse are a miss, counted in [`LayerStats::corrupt`],
///   never a panic.
/// - Calls finish or fail within the layer's own timeout.
///
/// [`Error::ValueTooLarge`]: crate::Error::ValueTooLarge
///
/// # Example
/// A complete, if simple, backend:
/// ```
/// use std::collections::HashMap;
/// use std::sync::Mutex;
/// use std::time::Instant;
/// use cache_core::{async_trait, CacheLayer, Entry, Pattern, Result};
///
/// #[derive(Debug, Default)]
/// struct MapLayer(Mutex<HashMap<String, Entry>>);
///
/// #[async_trait]
/// impl CacheLayer for MapLayer {
///     fn name(&self) -> &str { "map" }
///
///     async fn get(&self, key: &str) -> Result<Option<Entry>> {
///         let map = self.0.lock().unwrap();
///         Ok(map.get(key).filter(|e| !e.is_expired(Instant::now())).cloned())
///     }
///
///     async fn set(&self, key: &str, entry: Entry) -> Result<()> {
///         self.0.lock().unwrap().insert(key.to_owned(), entry);
///         Ok(())
///     }
///
///     async fn delete(&self, key: &str) -> Result<bool> {
///         Ok(self.0.lock().unwrap().remove(key).is_some())
///     }
///
///     async fn invalidate(&self, pattern: &Pattern) -> Result<u64> {
///         let mut map = self.0.lock().unwrap();
///         let before = map.len();
///         map.retain(|key, _| !pattern.matches(key));
///         Ok((before - map.len()) as u64)
///     }
/// }
/// # futures::executor::block_on(async {
/// let layer = MapLayer::default();
/// layer.set("k", Entry::new(&b"v"[..])).await.unwrap();
/// assert_eq!(layer.get("k").await.unwrap().unwrap().value().as_ref(), b"v");
/// # });
/// ```
#[async_trait]
pub trait CacheLayer: Send + Sync + fmt::Debug {
    /// A short name for logs, stats and errors (`"memory"`, `"redis"`).
    fn name(&self) -> &str;

    /// The live entry under `key`, if any.
    async fn get(&self, key: &str) -> Result<Option<Entry>>;

    /// Stores `entry` under `key`.
    async fn set(&self, key: &str, entry: Entry) -> Result<()>;

    /// Removes `key`; returns whether a value was there.
    async fn delete(&self, key: &str) -> Result<bool>;

    /// Removes every key matching `pattern`; returns how many were removed.
    async fn invalidate(&self, pattern: &Pattern) -> Result<u64>;

    /// Answers a read at once, without awaiting, if this layer can: an
    /// in-process layer can, a remote one cannot. `None` means "call
    /// [`get`](CacheLayer::get)". Default: `None`.
    ///
    /// Composers try this first on every read, which spares an in-memory
    /// tier the boxed future of an async call on the hottest path there is.
    /// It must be cheap and must never block; it keeps the same contract as
    /// `get` (never an expired entry).
    fn get_now(&self, key: &str) -> Option<Result<Option<Entry>>> {
        let _ = key;
        None
    }

    /// Reads several keys at once. The result has one slot per key, in
    /// order, so that a failure for one key stays apart from the others.
    ///
    /// The default calls [`get`](CacheLayer::get) for each key in turn;
    /// remote backends override it with one round trip.
    async fn get_many(&self, keys: &[&str]) -> Vec<Result<Option<Entry>>> {
        let mut results = Vec::with_capacity(keys.len());
        for key in keys {
            results.push(self.get(key).await);
        }
        results
    }

    /// Stores several entries at once; one result per entry, in order.
    ///
    /// The default calls [`set`](CacheLayer::set) for each entry in turn.
    async fn set_many(&self, entries: &[(&str, Entry)]) -> Vec<Result<()>> {
        let mut results = Vec::with_capacity(entries.len());
        for (key, entry) in entries {
            results.push(self.set(key, entry.clone()).await);
        }
        results
    }

    /// Whether other processes see this layer's contents (a remote store
    /// such as Redis) rather than only this one (an in-memory map).
    ///
    /// When an invalidation arrives from another instance over a
    /// [`Backplane`](crate::Backplane), the sender has already cleared the
    /// shared layers; the receiver clears only the others. Default: `false`,
    /// the safe answer: a shared layer taken for a local one is only cleared
    /// twice, a local one taken for shared would keep stale values.
    fn is_shared(&self) -> bool {
        false
    }

    /// A snapshot of the layer's counters. Default: all zero.
    fn stats(&self) -> LayerStats {
        LayerStats::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    // Compile-time check that the trait stays usable as `dyn`.
    fn _object_safe(_: Arc<dyn CacheLayer>) {}
}
