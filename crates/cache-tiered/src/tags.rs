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
//!
//! *Key families* ([`KeyFamilies`]) are tags a value gets from its key
//! alone: every write path (set, set_many, the entry calls, every
//! `get_or_compute` variant, batch loads, warm-ups) asks the installed
//! families which ones its key belongs to and stamps the value with them,
//! as if the caller had passed them as tags. Reads need nothing new: they
//! check every stamp a value carries, whatever put it there.

use std::any::Any;
use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use cache_core::Serializer;
use serde::Serialize;

use crate::cache::LoadOptions;
use crate::envelope::Stamps;
use crate::read::Walk;
use crate::{Removed, Result, TieredCache};

/// Tags that a value gets from its key alone, without the caller naming
/// them: the *families* the key belongs to.
///
/// Install one with
/// [`TieredCacheBuilder::key_families`](crate::TieredCacheBuilder::key_families);
/// `cache_invalidation::Rules::families` builds one from dependency rules.
/// Every value written under a key (by any write path: `set`, `set_many`,
/// entry calls, `get_or_compute` and its variants, batch loads, warm-ups)
/// is then stamped with the versions of its key's families, exactly as if
/// they had been passed as tags ([`TieredCache::set_tagged`]), and
/// invalidating a family is [`TieredCache::invalidate_tag`] of its name:
/// one removal, however many keys it holds.
///
/// [`families_of`](Self::families_of) is called on every write, so it
/// should return at once for the many keys that belong to no family (a
/// prefix test is enough); reads never call it. It must be a function of
/// the key alone, and the same on every instance sharing the cache: a
/// value stamped by one instance is checked by all of them.
///
/// ```
/// use std::time::Duration;
/// use cache_memory::MemoryLayer;
/// use cache_tiered::{KeyFamilies, TieredCache};
///
/// /// The pages of an offer's reviews, `reviews:offer:{id}:page:{n}`, form
/// /// the family `reviews:offer:{id}`.
/// #[derive(Debug)]
/// struct ReviewPages;
///
/// impl KeyFamilies for ReviewPages {
///     fn families_of(&self, key: &str, out: &mut Vec<String>) {
///         if let Some(rest) = key.strip_prefix("reviews:offer:")
///             && let Some((id, _page)) = rest.split_once(":page:")
///         {
///             out.push(format!("reviews:offer:{id}"));
///         }
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> cache_tiered::Result<()> {
/// let cache = TieredCache::builder()
///     .layer(MemoryLayer::new())
///     .key_families(ReviewPages)
///     .build()?;
/// let ttl = Duration::from_secs(300);
/// cache.set("reviews:offer:7:page:0", &"great".to_owned(), ttl).await?;
/// cache.set("reviews:offer:7:page:1", &"meh".to_owned(), ttl).await?;
/// cache.set("reviews:offer:8:page:0", &"fine".to_owned(), ttl).await?;
///
/// // One removal, however many pages there are.
/// cache.invalidate_tag("reviews:offer:7").await?;
/// assert_eq!(cache.get::<String>("reviews:offer:7:page:0").await?, None);
/// assert_eq!(cache.get::<String>("reviews:offer:7:page:1").await?, None);
/// assert!(cache.get::<String>("reviews:offer:8:page:0").await?.is_some());
/// # Ok(())
/// # }
/// ```
pub trait KeyFamilies: Any + Send + Sync + fmt::Debug {
    /// Pushes onto `out` the name of every family `key` belongs to (none,
    /// usually). A name is a tag: its version lives under
    /// [`TieredCache::tag_key`]`(name)`.
    fn families_of(&self, key: &str, out: &mut Vec<String>);
}

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
        let stamps = self.stamp(key, tags).await?;
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

    /// The key families installed with
    /// [`key_families`](crate::TieredCacheBuilder::key_families), if any.
    pub fn key_families(&self) -> Option<&Arc<dyn KeyFamilies>> {
        self.shared.families.as_ref()
    }

    /// The families `key` belongs to (none without installed families).
    fn families_of(&self, key: &str) -> Vec<String> {
        let mut families = Vec::new();
        if let Some(installed) = &self.shared.families {
            installed.families_of(key, &mut families);
        }
        families
    }

    /// The stamps of a value written under `key` with `tags`: the current
    /// version of each tag and of each of the key's families, creating the
    /// missing ones. Nothing to await for a key in no family written
    /// without tags.
    pub(crate) async fn stamp(&self, key: &str, tags: &[&str]) -> Result<Stamps> {
        let families = self.families_of(key);
        if families.is_empty() {
            return self.stamp_tags(tags).await;
        }
        let mut all: Vec<&str> = Vec::with_capacity(tags.len() + families.len());
        all.extend_from_slice(tags);
        all.extend(families.iter().map(String::as_str));
        self.stamp_tags(&all).await
    }

    /// [`stamp`](Self::stamp) for the untagged values of a batch, one
    /// result per key: the versions of every family any of them belongs to
    /// are read (and created) together. If that fails, the keys in a family
    /// get the error; the others their (empty) stamps.
    pub(crate) async fn stamp_each(&self, keys: &[&str]) -> Vec<Result<Stamps>> {
        let families: Vec<Vec<String>> = match &self.shared.families {
            None => return keys.iter().map(|_| Ok(Stamps::new())).collect(),
            Some(_) => keys.iter().map(|key| self.families_of(key)).collect(),
        };
        let all: Vec<&str> = families.iter().flatten().map(String::as_str).collect();
        if all.is_empty() {
            return keys.iter().map(|_| Ok(Stamps::new())).collect();
        }
        let stamped = self.stamp_tags(&all).await;
        families
            .iter()
            .map(|names| {
                let stamped = match &stamped {
                    _ if names.is_empty() => return Ok(Stamps::new()),
                    Ok(stamped) => stamped,
                    Err(error) => return Err(error.clone()),
                };
                // `stamped` is sorted by tag, each once.
                let mut stamps: Stamps = names
                    .iter()
                    .filter_map(|name| {
                        let at = stamped
                            .binary_search_by(|(tag, _)| tag.as_str().cmp(name))
                            .ok()?;
                        Some(stamped[at].clone())
                    })
                    .collect();
                stamps.sort_unstable();
                stamps.dedup();
                Ok(stamps)
            })
            .collect()
    }

    /// The current version of each of `tags` (duplicates dropped, sorted),
    /// creating the missing ones.
    async fn stamp_tags(&self, tags: &[&str]) -> Result<Stamps> {
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
        Box::pin(walk).await.values.into_vec()
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
