//! An in-process load lock: several caches in one program, and tests.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use cache_core::{LoadLock, LockToken, Result, async_trait};
use tokio::time::Instant;

/// A [`LoadLock`] inside one process: for several caches in one program
/// (each with its own L1 over one shared layer), and for tests. Across
/// processes, use `cache_redis::RedisLoadLock`. Cloning it shares the
/// locks.
///
/// Leases run on tokio's clock, so a test with paused time
/// (`#[tokio::test(start_paused = true)]`) sees them end without sleeping.
///
/// ```
/// use std::time::Duration;
/// use cache_core::LoadLock;
/// use cache_tiered::MemoryLoadLock;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> cache_core::Result<()> {
/// let lock = MemoryLoadLock::new();
/// let lease = Duration::from_secs(10);
/// let token = lock.try_lock("offer:7", lease).await?.expect("free");
/// assert!(lock.try_lock("offer:7", lease).await?.is_none(), "one holder");
/// assert!(lock.is_locked("offer:7"));
/// assert!(lock.unlock("offer:7", &token).await?);
/// assert!(!lock.is_locked("offer:7"));
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Default)]
pub struct MemoryLoadLock {
    held: Arc<Mutex<HashMap<String, (LockToken, Instant)>>>,
}

impl MemoryLoadLock {
    /// A lock with no key held.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether `key` is held (its lease has not run out).
    pub fn is_locked(&self, key: &str) -> bool {
        let now = Instant::now();
        self.map().get(key).is_some_and(|(_, until)| *until > now)
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, (LockToken, Instant)>> {
        // Nothing panics while holding the lock; recover rather than cascade.
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait]
impl LoadLock for MemoryLoadLock {
    async fn try_lock(&self, key: &str, lease: Duration) -> Result<Option<LockToken>> {
        let now = Instant::now();
        let mut held = self.map();
        // Forget ended leases as we go, so the map holds live locks only.
        held.retain(|_, (_, until)| *until > now);
        if held.contains_key(key) {
            return Ok(None);
        }
        let token = LockToken::random();
        held.insert(key.to_owned(), (token.clone(), now + lease));
        Ok(Some(token))
    }

    async fn unlock(&self, key: &str, token: &LockToken) -> Result<bool> {
        let now = Instant::now();
        let mut held = self.map();
        match held.get(key) {
            Some((holder, until)) if holder == token => {
                let live = *until > now;
                held.remove(key);
                Ok(live)
            }
            _ => Ok(false),
        }
    }
}

impl fmt::Debug for MemoryLoadLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryLoadLock")
            .field("held", &self.map().len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn one_holder_released_by_its_token_or_its_lease() {
        let lock = MemoryLoadLock::new();
        let lease = Duration::from_secs(10);
        let first = lock.try_lock("k", lease).await.unwrap().expect("free");
        assert!(lock.try_lock("k", lease).await.unwrap().is_none());
        assert!(lock.try_lock("other", lease).await.unwrap().is_some());
        // Not the owner: nothing released.
        assert!(!lock.unlock("k", &LockToken::random()).await.unwrap());
        assert!(lock.is_locked("k"));
        assert!(lock.unlock("k", &first).await.unwrap());
        let second = lock.try_lock("k", lease).await.unwrap().expect("released");

        // The lease ends the lock by itself; the late owner releases nothing.
        tokio::time::advance(lease).await;
        assert!(!lock.is_locked("k"));
        let third = lock
            .try_lock("k", lease)
            .await
            .unwrap()
            .expect("lease over");
        assert!(!lock.unlock("k", &second).await.unwrap());
        assert!(lock.is_locked("k"), "the new holder keeps it");
        assert!(lock.unlock("k", &third).await.unwrap());
    }
}
