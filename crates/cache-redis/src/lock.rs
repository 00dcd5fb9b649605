//! `RedisLoadLock`: the `LoadLock` across processes, on the layer's server.
//!
//! Taking a lock is one `SET <lock key> <token> NX PX <lease>`: the key
//! expires with the lease, so a dead holder blocks nobody for longer.
//! Releasing is a script that deletes the key only while it still holds
//! the caller's token: a holder whose lease ran out must not release the
//! lock of whoever took the key next. The script is loaded with
//! `SCRIPT LOAD` on first use and called with `EVALSHA`, and loaded again
//! when the server answers `NOSCRIPT` (restarted, failed over, flushed),
//! like the layer's scripts (`script.rs`).

use std::fmt;
use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use cache_core::{Error, LoadLock, LockToken, Result, async_trait};
use redis::{RedisResult, Value};

use crate::RedisLayer;
use crate::layer::{Inner, classify, describe, pool_error};
use crate::pool::Lent;
use crate::script::is_noscript;

/// `KEYS[1]`: the lock key; `ARGV[1]`: the token. Returns 1 if the key held
/// the token and is deleted, 0 otherwise.
const UNLOCK: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// The prefix of every lock key, before the layer's key prefix. A layer's
/// keys all start with its namespace, which never starts with `:` (see
/// `RedisLayerBuilder::namespace`), so no value or removal marker of any
/// layer with a namespace can sit under a lock key; and a lock key is not
/// in the layer's namespace, so the layer's pattern invalidation
/// (`SCAN MATCH <namespace>:...`) never touches a lock.
const LOCK_PREFIX: &str = ":lock:";

/// A [`LoadLock`] in Redis, on the server (or Cluster) of a [`RedisLayer`],
/// with its connections and timeout: instances sharing the layer elect one
/// loader per key. Attach it to a cache with cache-tiered's
/// `TieredCacheBuilder::fleet_lock`.
///
/// The lock on `key` is the Redis key `:lock:<namespace>:<key>`
/// (`:lock:offers:offer:7` for the key `offer:7` of a layer with namespace
/// `offers`), holding a random token and expiring with the lease. No value
/// or removal marker of a layer with a (non-empty) namespace can take that
/// name, and the layer's `invalidate` never touches it. A layer with the
/// empty namespace sees the whole database: keep its keys from starting
/// with `:lock:`. A Redis ACL user needs the lock keys (`~:lock:offers:*`)
/// and `EVALSHA` / `SCRIPT LOAD` (`+@scripting`) for releasing.
///
/// Each call is bounded by the layer's
/// [`timeout`](crate::RedisLayerBuilder::timeout); failures are
/// [`cache_core::Error`]s of the layer's name with a class. They are not
/// counted in the layer's stats: a composer counts lock errors itself.
///
/// Cloning is cheap and shares the connections.
///
/// ```no_run
/// # async fn demo() -> cache_core::Result<()> {
/// use std::time::Duration;
/// use cache_core::LoadLock;
/// use cache_redis::{RedisLayer, RedisLoadLock};
///
/// let redis = RedisLayer::builder("redis://127.0.0.1:6379")
///     .namespace("offers")
///     .build()
///     .await?;
/// let lock = RedisLoadLock::new(&redis);
/// assert_eq!(lock.lock_key("offer:7"), ":lock:offers:offer:7");
///
/// if let Some(token) = lock.try_lock("offer:7", Duration::from_secs(10)).await? {
///     // ... load offer 7 and cache it ...
///     lock.unlock("offer:7", &token).await?;
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisLoadLock {
    layer: Arc<Inner>,
    /// `:lock:<namespace>:`.
    prefix: Arc<str>,
    /// The digest `SCRIPT LOAD` answered for [`UNLOCK`], once loaded.
    unlock_sha: Arc<OnceLock<String>>,
}

impl RedisLoadLock {
    /// A lock on the server of `layer`, sharing its connections, timeout,
    /// name and namespace. Touches no server.
    pub fn new(layer: &RedisLayer) -> Self {
        RedisLoadLock {
            prefix: Arc::from(format!("{LOCK_PREFIX}{}", layer.namespace())),
            layer: layer.inner.clone(),
            unlock_sha: Arc::default(),
        }
    }

    /// The Redis key that holds the lock on `key`: `:lock:<namespace>:<key>`.
    pub fn lock_key(&self, key: &str) -> String {
        let mut full = String::with_capacity(self.prefix.len() + key.len());
        full.push_str(&self.prefix);
        full.push_str(key);
        full
    }

    /// One request to the primary (the key's primary in a Cluster), bounded
    /// by the layer's timeout. A request that met a broken connection is
    /// sent once more on a fresh one; the answer says whether it was, since
    /// a resent `SET NX` may find the key its first sending set.
    async fn request<'a, T, F, Fut>(&'a self, op: F) -> Result<(T, bool)>
    where
        F: Fn(Lent<'a>) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let inner = &*self.layer;
        let node = &inner.primary;
        let attempts = async {
            let mut resent = false;
            loop {
                let conn = node
                    .get()
                    .await
                    .map_err(|err| pool_error(&inner.name, node.label(), err))?;
                let ticket = conn.ticket();
                let result = op(conn).await;
                let broken = node.report(ticket, result.as_ref().err());
                match result {
                    Err(_) if broken && !resent => resent = true,
                    Ok(value) => return Ok((value, resent)),
                    Err(err) => {
                        return Err(Error::classified(
                            inner.name.clone(),
                            classify(&err),
                            describe(&err, node.label()),
                        ));
                    }
                }
            }
        };
        match tokio::time::timeout(inner.timeout, attempts).await {
            Ok(result) => result,
            Err(_) => Err(Error::timeout(inner.name.clone(), inner.timeout)),
        }
    }

    /// The digest of the unlock script, loading it if it never was (or,
    /// with `reload`, because the server lost it).
    async fn unlock_sha(&self, reload: bool) -> Result<String> {
        if !reload && let Some(sha) = self.unlock_sha.get() {
            return Ok(sha.clone());
        }
        let (sha, _) = self
            .request(|mut conn| async move {
                redis::cmd("SCRIPT")
                    .arg("LOAD")
                    .arg(UNLOCK)
                    .query_async::<String>(&mut conn)
                    .await
            })
            .await?;
        // The digest is the script's SHA1: every load gives the same.
        let _ = self.unlock_sha.set(sha.clone());
        Ok(sha)
    }

    fn unexpected(&self, reply: &Value) -> Error {
        Error::backend(
            self.layer.name.clone(),
            format!("unexpected reply to a lock command: {reply:?}"),
        )
    }
}

#[async_trait]
impl LoadLock for RedisLoadLock {
    async fn try_lock(&self, key: &str, lease: Duration) -> Result<Option<LockToken>> {
        let full_key = self.lock_key(key);
        let token = LockToken::random();
        // PX takes whole milliseconds; a lease under one would be no lock.
        let lease_ms = u64::try_from(lease.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut set = redis::cmd("SET");
        set.arg(&full_key)
            .arg(token.as_str())
            .arg("NX")
            .arg("PX")
            .arg(lease_ms);
        let set = &set;
        let (reply, resent) = self
            .request(|mut conn| async move { set.query_async::<Value>(&mut conn).await })
            .await?;
        match reply {
            Value::Okay => Ok(Some(token)),
            Value::SimpleString(ok) if ok == "OK" => Ok(Some(token)),
            Value::Nil if resent => {
                // The first sending may have set the key before the
                // connection broke: then the lock is ours.
                let full_key = &full_key;
                let (held, _) = self
                    .request(|mut conn| async move {
                        redis::cmd("GET")
                            .arg(full_key)
                            .query_async::<Option<String>>(&mut conn)
                            .await
                    })
                    .await?;
                Ok((held.as_deref() == Some(token.as_str())).then_some(token))
            }
            Value::Nil => Ok(None),
            other => Err(self.unexpected(&other)),
        }
    }

    async fn unlock(&self, key: &str, token: &LockToken) -> Result<bool> {
        let full_key = self.lock_key(key);
        let mut reload = false;
        loop {
            let sha = self.unlock_sha(reload).await?;
            let (full_key, token, sha) = (&full_key, token.as_str(), &sha);
            let (reply, _) = self
                .request(|mut conn| async move {
                    let reply = redis::cmd("EVALSHA")
                        .arg(sha)
                        .arg(1)
                        .arg(full_key)
                        .arg(token)
                        .query_async::<Value>(&mut conn)
                        .await;
                    // NOSCRIPT is an answer here, not a failed request.
                    if is_noscript(&reply) {
                        return Ok(None);
                    }
                    reply.map(Some)
                })
                .await?;
            match reply {
                None if !reload => reload = true,
                Some(Value::Int(released)) => return Ok(released == 1),
                Some(other) => return Err(self.unexpected(&other)),
                None => {
                    return Err(Error::backend(
                        self.layer.name.clone(),
                        "the server lost the unlock script again right after loading it",
                    ));
                }
            }
        }
    }
}

impl fmt::Debug for RedisLoadLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLoadLock")
            .field("layer", &self.layer.name)
            .field("prefix", &self.prefix)
            .field("timeout", &self.layer.timeout)
            .finish_non_exhaustive()
    }
}
