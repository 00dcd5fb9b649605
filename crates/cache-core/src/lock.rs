//! The load lock: how cache instances elect one loader for a key.
//!
//! Single-flight inside one process needs no more than a map of loads in
//! progress. Across processes sharing a tier (several instances over one
//! Redis), the instances that miss the same key at once take a
//! [`LoadLock`] on it: the one that gets it loads, the others wait for its
//! value to appear in the shared tier. A composer (`cache-tiered`'s
//! `FleetLock`) does the waiting; a lock only decides who holds a key.

use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;

use crate::Result;

/// A lock on keys, shared by every instance of a cache: at most one holder
/// per key at a time, for a bounded lease.
///
/// # Contract
/// - **One holder.** While a key is held and its lease runs,
///   [`try_lock`](Self::try_lock) on it answers `Ok(None)`, for every
///   caller in every process.
/// - **A lease, not ownership forever.** A lock ends by itself when its
///   lease runs out, so a holder that died (a killed process, a dropped
///   future that could not release) blocks the others for the lease at
///   most. A holder that takes longer than its lease may find the key held
///   by someone else: the lock makes duplicate loads rare, never impossible.
/// - **Released by its owner only.** [`unlock`](Self::unlock) releases the
///   key only if `token` still holds it; a late release after the lease ran
///   out and another caller took the key leaves that caller's lock alone.
/// - **Errors are [`Error`](crate::Error)s with a class** (a dead server is
///   [`Unavailable`](crate::ErrorClass::Unavailable), a hung one
///   [`Timeout`](crate::ErrorClass::Timeout)); each call is bounded in
///   time. A caller should treat an error as "no lock service" and go on
///   without it: the lock is an optimisation.
///
/// `cache_redis::RedisLoadLock` is the lock across processes;
/// `cache_tiered::MemoryLoadLock` is the one inside a process (tests,
/// several caches in one program).
///
/// # Example
/// A lock over a map, for one process (without lease expiry, for brevity):
/// ```
/// use std::collections::HashMap;
/// use std::sync::Mutex;
/// use std::time::Duration;
/// use cache_core::{async_trait, LoadLock, LockToken, Result};
///
/// #[derive(Debug, Default)]
/// struct MapLock(Mutex<HashMap<String, LockToken>>);
///
/// #[async_trait]
/// impl LoadLock for MapLock {
///     async fn try_lock(&self, key: &str, _lease: Duration) -> Result<Option<LockToken>> {
///         let mut held = self.0.lock().unwrap();
///         if held.contains_key(key) {
///             return Ok(None);
///         }
///         let token = LockToken::random();
///         held.insert(key.to_owned(), token.clone());
///         Ok(Some(token))
///     }
///
///     async fn unlock(&self, key: &str, token: &LockToken) -> Result<bool> {
///         let mut held = self.0.lock().unwrap();
///         if held.get(key) != Some(token) {
///             return Ok(false);
///         }
///         held.remove(key);
///         Ok(true)
///     }
/// }
///
/// # futures::executor::block_on(async {
/// let lock = MapLock::default();
/// let token = lock.try_lock("offer:7", Duration::from_secs(10)).await?.expect("free");
/// assert!(lock.try_lock("offer:7", Duration::from_secs(10)).await?.is_none());
/// assert!(!lock.unlock("offer:7", &LockToken::random()).await?, "not the owner");
/// assert!(lock.unlock("offer:7", &token).await?);
/// # Ok::<_, cache_core::Error>(()) }).unwrap();
/// ```
#[async_trait]
pub trait LoadLock: Send + Sync + fmt::Debug {
    /// Tries once, without waiting, to take the lock on `key` for at most
    /// `lease`. `Ok(Some(token))` if taken (keep the token to release it),
    /// `Ok(None)` if someone else holds it.
    async fn try_lock(&self, key: &str, lease: Duration) -> Result<Option<LockToken>>;

    /// Releases the lock on `key` if `token` still holds it. `Ok(true)` if
    /// it did and is released, `Ok(false)` if the lease had run out (the
    /// key is free, or someone else's now).
    async fn unlock(&self, key: &str, token: &LockToken) -> Result<bool>;
}

/// Proof of holding a [`LoadLock`]: a random value that only the holder
/// knows, compared on release.
///
/// ```
/// use cache_core::LockToken;
///
/// let (a, b) = (LockToken::random(), LockToken::random());
/// assert_ne!(a, b);
/// assert_eq!(a.as_str().len(), 32);
/// assert_eq!(LockToken::new("fixed").as_str(), "fixed");
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct LockToken(Arc<str>);

impl LockToken {
    /// A fresh token: 128 bits as 32 hex digits, unique across processes
    /// and calls. Not a secret (std's randomly keyed hasher over the
    /// process id, a counter and the time), but two holders never share one.
    pub fn random() -> Self {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let count = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_nanos());
        // Two independently keyed hashes of the same inputs: 128 bits.
        let half = || {
            let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
            hasher.write_u32(std::process::id());
            hasher.write_u64(count);
            hasher.write_u128(nanos);
            hasher.finish()
        };
        LockToken(Arc::from(format!("{:016x}{:016x}", half(), half())))
    }

    /// A token with a given text, for a [`LoadLock`] implementation that
    /// reads tokens back from its store.
    pub fn new(token: impl Into<Arc<str>>) -> Self {
        LockToken(token.into())
    }

    /// The token's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for LockToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("LockToken").field(&&*self.0).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_do_not_repeat() {
        let tokens: std::collections::HashSet<LockToken> =
            (0..10_000).map(|_| LockToken::random()).collect();
        assert_eq!(tokens.len(), 10_000);
        assert!(
            tokens.iter().all(
                |t| t.as_str().len() == 32 && t.as_str().bytes().all(|b| b.is_ascii_hexdigit())
            )
        );
    }

    // `LoadLock` stays usable as `dyn`.
    fn _object_safe(_: Arc<dyn LoadLock>) {}
}
