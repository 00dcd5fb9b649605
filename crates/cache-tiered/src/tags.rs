//! Tags: invalidating every value written under a tag at once.
//!
//! Each tag has a *version*, a random number stored like any value (under
//! `tag_prefix + tag`, in every tier). A tagged value records the version of
//! each of its tags when it was written (before its loader ran, for
//! `get_or_compute_tagged`); a read checks them against the current
//! versions, and a value any of whose tags has another version, or none, is
//! a miss (removed from the tier where it was found).
//!
//! Invalidating a tag removes its version: one removal, however many values
//! carry the tag, and nothing to enumerate. The next writer creates a new
//! random version, which no value stamped before can have. A version lost
//! any other way (expired, evicted) has the same effect: misses, never a
//! stale read.
//!
//! A writer that finds a tag without a version creates one, and does so
//! before its loader runs. So whatever the loader reads is newer than the
//! version it is stamped with, and an invalidation after the read removes
//! that version; nothing written back later can pass for current. Two
//! writers creating a version at once may overwrite each other in the
//! shared tier: the loser's values are misses. The creation is written under
//! a fill ticket, so a removal of the version racing with it in this process
//! (another instance's invalidation arriving) wins over the upper tiers too.
//! What remains is the delay every instance has: until an instance drops its
//! upper tiers' copy of a removed version, it still reads values stamped
//! with it as current.

use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use cache_core::Serializer;
use serde::Serialize;

use crate::cache::LoadOptions;
use crate::envelope::Stamps;
use crate::read::Walk;
use crate::{Removed, Result, TieredCache};

/// Where and for how long tag versions are kept.
#[derive(Clone)]
pub(crate) struct TagSettings {
    pub(crate) prefix: String,
    pub(crate) ttl: Duration,
}

impl Default for TagSettings {
    fn default() -> Self {
        TagSettings {
            prefix: "tag-version:".to_owned(),
            ttl: Duration::from_secs(24 * 60 * 60),
        }
    }
}

impl fmt::Debug for TagSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TagSettings")
            .field("prefix", &self.prefix)
            .field("ttl", &self.ttl)
            .finish()
    }
}

impl<S: Serializer> TieredCache<S> {
    /// Stores `value` under `key` for `ttl`, tagged: invalidating any of
    /// `tags` ([`invalidate_tag`](Self::invalidate_tag)) makes it a miss.
    ///
    /// The value is stamped with the tags' versions at the time of this
    /// call; a value computed from data read before a tag's invalidation
    /// and stored after it would pass for fresh.
    /// [`get_or_compute_tagged`](Self::get_or_compute_tagged) reads the
    /// versions before its loader runs and has no such window.
    ///
    /// ```
    /// use std::time::Duration;
    /// use cache_memory::MemoryLayer;
    /// use cache_tiered::TieredCache;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> cache_tiered::Result<()> {
    /// let cache = TieredCache::builder().layer(MemoryLayer::new()).build()?;
    /// let ttl = Duration::from_secs(300);
    /// cache.set_tagged("offer:7:card", &"Lamp, 4.5 stars", &["offer:7"], ttl).await?;
    /// cache.set_tagged("search:lamps", &vec![7u64, 9], &["offer:7", "offer:9"], ttl).await?;
    /// cache.set_tagged("offer:9:card", &"Desk, 4 stars", &["offer:9"], ttl).await?;
    ///
    /// cache.invalidate_tag("offer:7").await?;
    /// assert_eq!(cache.get::<String>("offer:7:card").await?, None);
    /// assert_eq!(cache.get::<Vec<u64>>("search:lamps").await?, None);
    /// assert!(cache.get::<String>("offer:9:card").await?.is_some());
    /// # Ok(())
    /// # }
    /// ```
    pub async fn set_tagged<T>(
        &self,
        key: &str,
        value: &T,
        tags: &[&str],
        ttl: Duration,
    ) -> Result<()>
    where
        T: Serialize + ?Sized + 'static,
    {
        let stamps = self.stamp(tags).await?;
        let entry = self.encode_stamped(value, &stamps, ttl, &self.defaults_for(key).load)?;
        let written = self.write_mutating(&[(key, entry)]).await.pop();
        // The key, not the tag versions this may have created: a new
        // version makes no other instance's copy stale.
        self.announce_write([key]).await;
        written.unwrap_or(Ok(()))
    }

    /// Makes every value tagged with `tag` a miss, in every tier, by
    /// removing the tag's version: an ordinary key,
    /// [`tag_key`](Self::tag_key), removed (and, with a backplane,
    /// published) like any other. Other instances sharing the lower tiers
    /// see it once their upper tiers drop their copy of the version.
    pub async fn invalidate_tag(&self, tag: &str) -> Result<Removed> {
        self.delete(&self.tag_key(tag)).await
    }

    /// The key under which `tag`'s version is stored.
    pub fn tag_key(&self, tag: &str) -> String {
        let prefix = &self.shared.tags.prefix;
        let mut key = String::with_capacity(prefix.len() + tag.len());
        key.push_str(prefix);
        key.push_str(tag);
        key
    }

    /// The current version of each of `tags` (duplicates dropped), creating
    /// the missing ones.
    pub(crate) async fn stamp(&self, tags: &[&str]) -> Result<Stamps> {
        if tags.is_empty() {
            return Ok(Stamps::new());
        }
        let mut tags = tags.to_vec();
        tags.sort_unstable();
        tags.dedup();
        let keys: Vec<String> = tags.iter().map(|tag| self.tag_key(tag)).collect();
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        // Taken before reading: a version created below is undone if an
        // invalidation of the tag overtakes the creation.
        let now = self.shared.clock.now();
        let tickets: Vec<_> = keys
            .iter()
            .map(|key| self.shared.guard.ticket(key, now))
            .collect();
        let versions = self.versions(&keys).await;
        let mut stamps = Stamps::with_capacity(tags.len());
        for (((tag, key), ticket), version) in tags.iter().zip(&keys).zip(&tickets).zip(versions) {
            let version = match version? {
                Some(version) => version,
                None => {
                    let version = fresh_version();
                    // No life: a version is never stale, only gone.
                    let entry = self.encode_stamped(
                        &version,
                        &[],
                        self.shared.tags.ttl,
                        &LoadOptions::default(),
                    )?;
                    for written in
                        Box::pin(self.write_through(&[(key, entry)], Some(ticket), 0, 0)).await
                    {
                        written?;
                    }
                    version
                }
            };
            stamps.push(((*tag).to_owned(), version));
        }
        Ok(stamps)
    }

    /// Whether every tag still has the version it was stamped with. A tag
    /// whose version cannot be read (missing, or a failing tier) is not.
    pub(crate) async fn tags_current(&self, stamps: &[(String, u64)]) -> bool {
        let keys: Vec<String> = stamps.iter().map(|(tag, _)| self.tag_key(tag)).collect();
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        let versions = self.versions(&keys).await;
        stamps
            .iter()
            .zip(versions)
            .all(|((_, stamped), now)| matches!(now, Ok(Some(version)) if version == *stamped))
    }

    /// The versions stored under `keys`: a read of every tier, as
    /// [`get_many`](Self::get_many) does, but not a user's read, so not
    /// counted in any tier's hits or misses.
    async fn versions(&self, keys: &[&str]) -> Vec<Result<Option<u64>>> {
        if keys.is_empty() {
            return Vec::new();
        }
        // Boxed: reading versions goes through the read path, which checks
        // tags in turn (versions themselves are never tagged).
        let walk = self.walk::<u64>(keys, self.envelope::<u64>(), Walk::Internal, None, 0);
        Box::pin(walk).await.values
    }
}

/// A version no tag has had, with overwhelming probability: std's randomly
/// keyed hasher over a counter and the time, without a random-number
/// dependency.
fn fresh_version() -> u64 {
    static SEQUENCE: AtomicU64 = AtomicU64::new(0);
    RandomState::new().hash_one((
        SEQUENCE.fetch_add(1, Ordering::Relaxed),
        Instant::now(),
        SystemTime::now(),
    ))
}
