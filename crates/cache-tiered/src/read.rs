//! Reading: the walk down the tiers, and the fills back up.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use cache_core::{Entry, Operation, ReadNow, Serializer};
use serde::de::DeserializeOwned;
use smallvec::{SmallVec, smallvec};
use tracing::Instrument;

use crate::cache::TierSet;
use crate::envelope::{Envelope, Freshness, Life, Opened, Opening};
use crate::guard::Ticket;
use crate::observe::{note, op_span};
use crate::tier::Call;
use crate::{Result, Tier, TieredCache};

/// One item per key of a walk: inline for one key, the common case, so
/// that a read allocates nothing for its bookkeeping.
pub(crate) type PerKey<T> = SmallVec<[T; 1]>;

/// What a walk found, per key, and which tiers failed open on the way.
pub(crate) struct Found<T> {
    /// The live values (neither expired nor stale).
    pub(crate) values: PerKey<Result<Option<T>>>,
    /// How fresh each live value is.
    pub(crate) freshness: PerKey<Freshness>,
    /// Tiers whose read failed open: a caller that goes on to load should
    /// not write there (it would pay for a failing tier twice).
    pub(crate) failed_open: TierSet,
}

/// What a one-key walk ([`walk_one`](TieredCache::walk_one)) found: the
/// fields of [`Found`] for a single key, without the per-key vectors.
pub(crate) struct One<T> {
    /// The live value (neither expired nor stale), if any; the failure of a
    /// tier that fails closed.
    pub(crate) value: Result<Option<T>>,
    /// How fresh the live value is.
    pub(crate) freshness: Freshness,
    /// Without a live value, the first stale one found.
    pub(crate) stale: Option<StaleCopy<T>>,
    /// Tiers whose read failed open.
    pub(crate) failed_open: TierSet,
}

/// What a tier's entry for a key turned out to hold, once opened.
enum Verdict<T> {
    /// A live value, how fresh it is, and the entry (for the fills above).
    Live(T, Freshness, Entry),
    /// A value past its TTL, kept for fail-safe: a miss here.
    Stale(StaleCopy<T>),
    /// Nothing to serve (another type's value, undecodable, or stamped with
    /// an invalidated tag): a miss, counted and handled.
    Miss,
}

/// How far a walk goes, and whether it counts as a read of its own.
///
/// Only [`Full`](Walk::Full) is a user's read: the others count no hit or
/// miss, in any tier or overall (see `TierStats`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Walk {
    /// Every tier; counted in the stats as a read.
    Full,
    /// Every tier, uncounted: the composer's own reads (tag versions,
    /// `tags.rs`; a warm-up's look at what is cached, `warm.rs`).
    Internal,
    /// Only the top tier, uncounted: `get_or_compute` looking again after
    /// it joined a flight that may have just filled it.
    Recheck,
    /// The tiers from this depth down (the shared ones), uncounted, misses
    /// included: a fleet-lock waiter looking for another instance's value
    /// (`fleet.rs`), once per poll.
    Shared(usize),
}

impl Walk {
    /// Whether the walk is a user's read, counted in hits and misses.
    fn counted(self) -> bool {
        self == Walk::Full
    }

    /// The tiers the walk reads, and the depth of the first.
    fn tiers(self, all: &[Tier]) -> (usize, &[Tier]) {
        match self {
            Walk::Full | Walk::Internal => (0, all),
            Walk::Recheck => (0, &all[..1]),
            Walk::Shared(start) => (start, &all[start..]),
        }
    }
}

/// A value past its logical expiry, kept for fail-safe: the fallback of a
/// load that fails.
pub(crate) struct StaleCopy<T> {
    pub(crate) value: T,
    /// As stored, to be written back with a throttle.
    pub(crate) entry: Entry,
}

/// What the top tier answered a one-key read.
pub(crate) enum Top<T> {
    /// A live value, and how fresh it is: the read is over.
    Live(T, Freshness),
    /// No live value there: the walk goes on, from this answer (see
    /// [`answered`]).
    Below(ReadNow),
}

/// The top tier's answer as the walk takes it: `None` if it did not
/// answer at once (the walk asks it).
pub(crate) fn answered(read: ReadNow) -> Option<Call<Option<Entry>>> {
    match read {
        ReadNow::Hit(entry) => Some(Call::Done(Some(entry))),
        ReadNow::Miss => Some(Call::Done(None)),
        ReadNow::Unanswered => None,
    }
}

pin_project_lite::pin_project! {
    /// The future of [`TieredCache::get`]: the top tier read in a small
    /// `poll` of its own, and only if it had no live value, the walk below.
    #[project = GetProj]
    #[project_replace = GetTaken]
    enum Get<'a, S: Serializer, M, W> {
        /// Not polled yet (or answered by the top tier): `below` makes the
        /// walk from the top tier's answer.
        Top { cache: &'a TieredCache<S>, key: &'a str, below: M },
        /// The walk below the top tier.
        Below { #[pin] walk: W },
        /// Only inside `poll`, while `Top` becomes `Below`.
        Moving,
    }
}

impl<'a, S, T, M, W> Future for Get<'a, S, M, W>
where
    S: Serializer,
    T: DeserializeOwned + Clone + Send + Sync + 'static,
    M: FnOnce(&'a TieredCache<S>, &'a str, ReadNow) -> W,
    W: Future<Output = Result<Option<T>>>,
{
    type Output = Result<Option<T>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let (cache, key) = match self.as_mut().project() {
            GetProj::Below { walk } => return walk.poll(cx),
            GetProj::Top { cache, key, .. } => (*cache, *key),
            GetProj::Moving => unreachable!("`Get` is `Moving` only inside `poll`"),
        };
        // A hit leaves the state as it is: polled again after it answered
        // (which no caller owes it), the future would read again. Marking
        // it done would cost every hit a call to the walk's drop glue.
        let top = cache.ask_top(key, 0);
        if let Some(value) = cache.carried::<T>(&top) {
            cache.note_hit_at_top(key);
            return Poll::Ready(Ok(Some(value.clone())));
        }
        let top = match cache.read_top_rest::<T>(key, top) {
            Top::Live(value, freshness) => {
                return Poll::Ready(Ok(cache.hit_at_top(key, value, freshness)));
            }
            Top::Below(top) => top,
        };
        let GetTaken::Top { below, .. } = self.as_mut().project_replace(Get::Moving) else {
            unreachable!("`Get` was read in the `Top` state")
        };
        self.set(Get::Below {
            walk: below(cache, key, top),
        });
        self.poll(cx)
    }
}

/// What one key's read found below a top tier without a live value.
pub(crate) struct Lookup<T> {
    /// A live value, and how fresh it is.
    pub(crate) value: Option<(T, Freshness)>,
    /// Without a live value, a stale one, if some tier kept it.
    pub(crate) stale: Option<StaleCopy<T>>,
    /// Tiers whose read failed open.
    pub(crate) failed: TierSet,
    /// Taken before the read, if asked for and the top tier had no live value.
    pub(crate) ticket: Option<Ticket>,
}

impl<S: Serializer> TieredCache<S> {
    /// The value under `key`, if a tier holds a live, decodable one.
    ///
    /// A value past its TTL that [fail-safe](crate::TieredCacheBuilder::fail_safe)
    /// keeps as a fallback is not live: `get` does not return it (nor
    /// during a throttle, when loads are served it).
    ///
    /// Fails only if a tier that fails closed fails. Like an `async fn`,
    /// the future reads nothing until it is first polled.
    pub fn get<'a, T>(&'a self, key: &'a str) -> impl Future<Output = Result<Option<T>>> + Send + 'a
    where
        T: DeserializeOwned + Clone + Send + Sync + 'static,
    {
        // Not an `async fn`: its state machine would read the top tier in
        // the `poll` of the whole walk, with that poll's large frame, and
        // keep the top tier's answer in the future behind a drop flag. A
        // hit through `Get` took 16-30% less time (docs/performance.md).
        Get::Top {
            cache: self,
            key,
            below: |cache: &'a Self, key: &'a str, top: ReadNow| {
                cache.get_below::<T>(key, answered(top), 0)
            },
        }
    }

    /// [`get`](Self::get) from the tiers not in `excluded`.
    pub(crate) async fn get_except<T>(&self, key: &str, excluded: TierSet) -> Result<Option<T>>
    where
        T: DeserializeOwned + Clone + Send + Sync + 'static,
    {
        let top = match self.read_top::<T>(key, excluded) {
            Top::Live(value, freshness) => return Ok(self.hit_at_top(key, value, freshness)),
            Top::Below(top) => answered(top),
        };
        self.get_below(key, top, excluded).await
    }

    /// A `get`'s live value found in the top tier: its span (made after the
    /// read, so that the hot path's future holds nothing across an await),
    /// and the value if a `get` serves it.
    #[inline(always)]
    fn hit_at_top<T>(&self, key: &str, value: T, freshness: Freshness) -> Option<T> {
        self.note_hit_at_top(key);
        served(value, freshness)
    }

    /// The span of a `get` answered by the top tier.
    #[inline(always)]
    fn note_hit_at_top(&self, key: &str) {
        // The level check first: a disabled span still costs a hit a few
        // dozen instructions to build and drop.
        if tracing::level_enabled!(tracing::Level::DEBUG) {
            let span = op_span!(&self.shared.observe, "cache.get", key);
            if !span.is_disabled() {
                span.record("tier", self.shared.tiers[0].name());
                span.record("outcome", "hit");
            }
        }
    }

    /// The rest of [`get_except`](Self::get_except) once the top tier had
    /// no live value.
    async fn get_below<T>(
        &self,
        key: &str,
        top: Option<Call<Option<Entry>>>,
        excluded: TierSet,
    ) -> Result<Option<T>>
    where
        T: DeserializeOwned + Clone + Send + Sync + 'static,
    {
        let span = op_span!(&self.shared.observe, "cache.get", key);
        // The walk itself, not `lookup_below` (no ticket to take, nothing
        // stale to keep): each level of future awaited is a copy of it.
        let walk = self.walk_one::<T>(key, self.envelope::<T>(), Walk::Full, top, excluded);
        // Without a subscriber for the span, the walk is not wrapped: moving
        // its (large) future into an `Instrumented` costs a read a copy.
        let found = if span.is_disabled() {
            walk.await
        } else {
            walk.instrument(span.clone()).await
        };
        let freshness = found.freshness;
        let value = found
            .value
            .map(|value| value.and_then(|value| served(value, freshness)));
        span.record("outcome", outcome_of(&value));
        value
    }

    /// The hottest path there is: a live value in the top tier, answered
    /// without entering the general walk (and its futures and vectors).
    /// Otherwise what the top tier answered, for the walk to go on from.
    #[inline(always)]
    pub(crate) fn read_top<T>(&self, key: &str, excluded: TierSet) -> Top<T>
    where
        T: DeserializeOwned + Clone + Send + Sync + 'static,
    {
        let top = self.ask_top(key, excluded);
        if let Some(value) = self.carried::<T>(&top) {
            return Top::Live(value.clone(), Freshness::Fresh);
        }
        self.read_top_rest(key, top)
    }

    /// What the top tier answers a one-key read at once (`Unanswered` if
    /// it is excluded, or cannot answer without awaiting).
    #[inline(always)]
    pub(crate) fn ask_top(&self, key: &str, excluded: TierSet) -> ReadNow {
        if excluded & 1 != 0 {
            return ReadNow::Unanswered;
        }
        self.shared.tiers[0].read_now(&*self.shared.clock, key)
    }

    /// The value the top tier's entry carries, if it is a plain, lifeless
    /// (so fresh) `T`: a hit, counted. The first step of
    /// [`read_top`](Self::read_top).
    #[inline(always)]
    pub(crate) fn carried<'a, T>(&self, top: &'a ReadNow) -> Option<&'a T>
    where
        T: Send + Sync + 'static,
    {
        let ReadNow::Hit(entry) = top else {
            return None;
        };
        let value = self.envelope::<T>().carried_plain::<T>(entry)?;
        self.shared.tiers[0].counters.hits.incr();
        Some(value)
    }

    /// [`read_top`](Self::read_top) once the top tier's entry, if any,
    /// carried no plain `T`.
    #[inline(always)]
    pub(crate) fn read_top_rest<T>(&self, key: &str, top: ReadNow) -> Top<T>
    where
        T: DeserializeOwned + Clone + Send + Sync + 'static,
    {
        if let ReadNow::Hit(entry) = &top
            && let Some(live) = self.open_top(key, entry)
        {
            return live;
        }
        Top::Below(top)
    }

    /// [`read_top`](Self::read_top) for an entry not stored with its
    /// decoded value, or with a life: its value if it is live and untagged
    /// (a tagged value needs its tags checked, in the walk). A plain one is
    /// stored again with its decoded value, for the next hits.
    #[inline(never)]
    fn open_top<T>(&self, key: &str, entry: &Entry) -> Option<Top<T>>
    where
        T: DeserializeOwned + Clone + Send + Sync + 'static,
    {
        let shared = &*self.shared;
        let envelope = self.envelope::<T>();
        let Opening::Value(Opened {
            value,
            stamps: None,
            life,
        }) = envelope.decode::<S, T>(&shared.serializer, entry)
        else {
            return None;
        };
        let freshness = match life {
            None => {
                if !entry.carries_decoded() {
                    self.carry_decoded(key, entry, envelope, &value);
                }
                Freshness::Fresh
            }
            life => Life::at(life, entry.expiry(), shared.clock.now()),
        };
        if freshness == Freshness::Stale {
            return None;
        }
        shared.tiers[0].counters.hits.incr();
        Some(Top::Live(value, freshness))
    }

    /// Stores the top tier's plain `entry` under `key` again, made with
    /// `value`, what it decodes to: later hits clone the value from the
    /// entry itself instead of following a pointer to a remembered one.
    /// Once per stored entry (one that carries a decoded value, of this
    /// type or another, stays as it is), and only if the tier still holds
    /// that very entry (see `CacheLayer::replace_now`).
    #[cold]
    #[inline(never)]
    fn carry_decoded<T>(&self, key: &str, entry: &Entry, envelope: Envelope, value: &T)
    where
        T: Clone + Send + Sync + 'static,
    {
        let replacement = || {
            envelope
                .carrying(entry, value.clone())
                .expires_at(entry.expiry())
        };
        self.shared.tiers[0]
            .layer
            .replace_now(key, entry, &replacement);
    }

    /// The rest of a one-key read after [`read_top`](Self::read_top) found
    /// no live value: how fresh a value below is, a stale one if there is
    /// no live one, and the tiers whose read failed open.
    ///
    /// With `fallback`, the read is made under a ticket (in
    /// [`Lookup::ticket`]), so that a stale value can serve as a fallback
    /// only while no mutation of the key intervened since it was read. A
    /// live hit in the top tier, the common case, takes none.
    ///
    /// Tiers in `excluded` are not read (a call that skips them).
    pub(crate) async fn lookup_below<T>(
        &self,
        key: &str,
        mut top: Option<Call<Option<Entry>>>,
        fallback: bool,
        excluded: TierSet,
    ) -> Result<Lookup<T>>
    where
        T: DeserializeOwned + Clone + Send + Sync + 'static,
    {
        let shared = &*self.shared;
        let mut ticket = None;
        if fallback {
            ticket = Some(shared.guard.ticket(key, shared.clock.now()));
            // What the top tier held was read before the ticket: read it again.
            if matches!(top, Some(Call::Done(Some(_)))) {
                top = None;
            }
        }
        let envelope = self.envelope::<T>();
        let found = self
            .walk_one::<T>(key, envelope, Walk::Full, top, excluded)
            .await;
        let freshness = found.freshness;
        Ok(Lookup {
            value: found.value?.map(|value| (value, freshness)),
            stale: found.stale,
            failed: found.failed_open,
            ticket,
        })
    }

    /// Reads several keys with one call per tier for the keys still missing.
    ///
    /// One result per key, in order: hits, misses and per-key failures stay
    /// apart. Hits from lower tiers are filled upward.
    pub async fn get_many<T>(&self, keys: &[&str]) -> Vec<Result<Option<T>>>
    where
        T: DeserializeOwned + Clone + Send + Sync + 'static,
    {
        if keys.is_empty() {
            return Vec::new();
        }
        let span = tracing::debug_span!(
            "cache.get_many",
            cache = &*self.shared.observe.name,
            keys = keys.len(),
            hits = tracing::field::Empty,
        );
        let envelope = self.envelope::<T>();
        let found = self
            .walk::<T>(keys, envelope, Walk::Full, None, 0)
            .instrument(span.clone())
            .await;
        let values: Vec<_> = found
            .values
            .into_iter()
            .zip(found.freshness)
            .map(|(value, freshness)| match freshness {
                Freshness::Throttled => value.map(|_| None),
                _ => value,
            })
            .collect();
        span.record(
            "hits",
            values.iter().filter(|v| matches!(v, Ok(Some(_)))).count(),
        );
        values
    }

    /// The walk: asks each tier, top-down, for the keys still missing, then
    /// fills the tiers above each hit. `top` is the top tier's answer for a
    /// single key, if the caller already has it.
    pub(crate) async fn walk<T>(
        &self,
        keys: &[&str],
        envelope: Envelope,
        walk: Walk,
        mut top: Option<Call<Option<Entry>>>,
        excluded: TierSet,
    ) -> Found<T>
    where
        T: DeserializeOwned + Clone + Send + Sync + 'static,
    {
        let shared = &*self.shared;
        let (start, tiers) = walk.tiers(&shared.tiers);
        let mut values: PerKey<Result<Option<T>>> = keys.iter().map(|_| Ok(None)).collect();
        let mut freshness: PerKey<Freshness> = smallvec![Freshness::Fresh; keys.len()];
        let now = shared.clock.now();
        let mut missing: PerKey<usize> = (0..keys.len()).collect();
        let mut tickets: PerKey<Option<Ticket>> = smallvec![None; keys.len()];
        let mut failed_open: TierSet = 0;
        // (key index, depth found at, entry), for the fills.
        let mut found_below: PerKey<(usize, usize, Entry)> = PerKey::new();
        for (depth, tier) in (start..).zip(tiers) {
            if missing.is_empty() {
                break;
            }
            if depth == start.max(1) {
                // Before reading anything that may be copied upward.
                for &i in &missing {
                    tickets[i] = Some(shared.guard.ticket(keys[i], now));
                }
            }
            if excluded & (1 << depth) != 0 {
                // The call skips this tier: as if it were not there.
                top = None;
                continue;
            }
            let answers: PerKey<cache_core::Result<Option<Entry>>> = match top.take() {
                Some(answer) => match answer {
                    Call::Done(found) => smallvec![Ok(found)],
                    Call::FailedOpen => {
                        failed_open |= 1 << depth;
                        continue;
                    }
                    Call::Failed(error) => {
                        values[missing[0]] = Err(error.into());
                        break;
                    }
                },
                None => match self.ask(tier, &missing, keys).await {
                    Call::Done(answers) => answers,
                    Call::FailedOpen => {
                        failed_open |= 1 << depth;
                        continue;
                    }
                    Call::Failed(error) => {
                        for &i in &missing {
                            values[i] = Err(error.clone().into());
                        }
                        break;
                    }
                },
            };
            let mut still_missing = PerKey::new();
            for (&i, answer) in missing.iter().zip(answers) {
                let entry = match answer {
                    Ok(Some(entry)) => entry,
                    Ok(None) => {
                        if walk.counted() {
                            tier.counters.misses.incr();
                        }
                        still_missing.push(i);
                        continue;
                    }
                    Err(error) => {
                        match tier.failed::<()>(Operation::Read, error) {
                            Call::Failed(error) => values[i] = Err(error.into()),
                            _ => {
                                failed_open |= 1 << depth;
                                still_missing.push(i);
                            }
                        }
                        continue;
                    }
                };
                let single = keys.len() == 1;
                match self
                    .judge::<T>(tier, keys[i], entry, envelope, walk, now, single)
                    .await
                {
                    Verdict::Live(value, fresh, entry) => {
                        freshness[i] = fresh;
                        values[i] = Ok(Some(value));
                        if depth > 0 {
                            found_below.push((i, depth, entry));
                        }
                    }
                    // No batch read falls back on a stale value.
                    Verdict::Stale(_) | Verdict::Miss => still_missing.push(i),
                }
            }
            missing = still_missing;
        }
        if walk.counted() {
            let misses = values.iter().filter(|v| matches!(v, Ok(None))).count();
            shared.counters.misses.add(misses as u64);
        }
        if !found_below.is_empty() {
            self.fill(keys, &found_below, &tickets, excluded, now).await;
        }
        Found {
            values,
            freshness,
            failed_open,
        }
    }

    /// [`walk`](Self::walk) for one key, the common case (every `get` and
    /// `get_or_compute` that misses the top tier): the same steps, without
    /// the per-key vectors a batch needs. Building and moving those cost a
    /// fifth of the instructions of an L1 miss served by an in-process
    /// shared tier (`miss_fill_arc` in the instruction benchmark).
    pub(crate) async fn walk_one<T>(
        &self,
        key: &str,
        envelope: Envelope,
        walk: Walk,
        mut top: Option<Call<Option<Entry>>>,
        excluded: TierSet,
    ) -> One<T>
    where
        T: DeserializeOwned + Clone + Send + Sync + 'static,
    {
        let shared = &*self.shared;
        let (start, tiers) = walk.tiers(&shared.tiers);
        let mut one = One {
            value: Ok(None),
            freshness: Freshness::Fresh,
            stale: None,
            failed_open: 0,
        };
        let now = shared.clock.now();
        let mut ticket = None;
        // (depth found at, entry), for the fills.
        let mut found_below = None;
        for (depth, tier) in (start..).zip(tiers) {
            if depth == start.max(1) {
                // Before reading anything that may be copied upward.
                ticket = Some(shared.guard.ticket(key, now));
            }
            if excluded & (1 << depth) != 0 {
                // The call skips this tier: as if it were not there.
                top = None;
                continue;
            }
            let answer = match top.take() {
                Some(answer) => answer,
                None => tier.get(&*shared.clock, key).await,
            };
            let entry = match answer {
                Call::Done(Some(entry)) => entry,
                Call::Done(None) => {
                    if walk.counted() {
                        tier.counters.misses.incr();
                    }
                    continue;
                }
                Call::FailedOpen => {
                    one.failed_open |= 1 << depth;
                    continue;
                }
                Call::Failed(error) => {
                    one.value = Err(error.into());
                    break;
                }
            };
            match self
                .judge::<T>(tier, key, entry, envelope, walk, now, true)
                .await
            {
                Verdict::Live(value, fresh, entry) => {
                    one.value = Ok(Some(value));
                    one.freshness = fresh;
                    if depth > 0 {
                        found_below = Some((depth, entry));
                    }
                    break;
                }
                Verdict::Stale(copy) => {
                    if one.stale.is_none() {
                        one.stale = Some(copy);
                    }
                }
                Verdict::Miss => {}
            }
        }
        if walk.counted() && matches!(one.value, Ok(None)) {
            shared.counters.misses.incr();
        }
        if let (Some((depth, entry)), Some(ticket)) = (found_below, ticket) {
            self.fill_one(key, depth, &entry, &ticket, excluded, now)
                .await;
        }
        one
    }

    /// Opens `entry`, what `tier` holds under `key`, for a walk: a live
    /// value, a stale one, or a miss (counted, and removed from the tier if
    /// it must never be served). `single`: the walk is for this key alone
    /// (the span then names the tier that answered).
    #[allow(clippy::too_many_arguments)]
    async fn judge<T>(
        &self,
        tier: &Tier,
        key: &str,
        entry: Entry,
        envelope: Envelope,
        walk: Walk,
        now: Instant,
        single: bool,
    ) -> Verdict<T>
    where
        T: DeserializeOwned + Clone + Send + Sync + 'static,
    {
        match envelope.decode::<S, T>(&self.shared.serializer, &entry) {
            Opening::Value(Opened {
                value,
                stamps,
                life,
            }) => {
                if let Some(stamps) = stamps
                    && !self.tags_current(&stamps).await
                {
                    tier.counters.tag_stale.incr();
                    Box::pin(self.discard(tier, key, walk)).await;
                    return Verdict::Miss;
                }
                let fresh = Life::at(life, entry.expiry(), now);
                if fresh == Freshness::Stale {
                    // Past its TTL, kept for fail-safe: a miss here, and a
                    // fallback if no tier below has it live.
                    if walk.counted() {
                        tier.counters.misses.incr();
                    }
                    return Verdict::Stale(StaleCopy { value, entry });
                }
                if walk.counted() {
                    tier.counters.hits.incr();
                    if single {
                        note("tier", tier.name());
                    }
                }
                Verdict::Live(value, fresh, entry)
            }
            Opening::Foreign => {
                // Another type's or version's value: a miss, and not ours
                // to remove.
                tier.counters.foreign.incr();
                if walk.counted() {
                    tier.counters.misses.incr();
                }
                Verdict::Miss
            }
            Opening::Undecodable => {
                tier.counters.undecodable.incr();
                Box::pin(self.discard(tier, key, walk)).await;
                Verdict::Miss
            }
        }
    }

    /// One tier call for the keys at `indices`: the single-key call for one
    /// key (which may spare the layer a batch), the batch call otherwise.
    async fn ask(
        &self,
        tier: &Tier,
        indices: &[usize],
        keys: &[&str],
    ) -> Call<PerKey<cache_core::Result<Option<Entry>>>> {
        let clock = &*self.shared.clock;
        if let [i] = indices {
            return match tier.get(clock, keys[*i]).await {
                Call::Done(found) => Call::Done(smallvec![Ok(found)]),
                Call::FailedOpen => Call::FailedOpen,
                Call::Failed(error) => Call::Failed(error),
            };
        }
        let batch: Vec<&str> = indices.iter().map(|&i| keys[i]).collect();
        match tier.get_many(clock, &batch).await {
            Call::Done(answers) => Call::Done(SmallVec::from_vec(answers)),
            Call::FailedOpen => Call::FailedOpen,
            Call::Failed(error) => Call::Failed(error),
        }
    }

    /// A value found in `tier` that must not be served again (undecodable,
    /// or stamped with an invalidated tag): a miss (in a counted walk), and
    /// removed from there.
    async fn discard(&self, tier: &Tier, key: &str, walk: Walk) {
        if walk.counted() {
            tier.counters.misses.incr();
        }
        // Failures are already counted by the tier; the read is a miss either way.
        let _ = tier.delete_many(&*self.shared.clock, &[key]).await;
    }

    /// Copies each entry found below into the tiers above it, one batch per
    /// tier, lowest first, as long as its ticket says no mutation of the key
    /// intervened. `now`, the walk's, caps what a tier's TTL cap allows.
    async fn fill(
        &self,
        keys: &[&str],
        found_below: &[(usize, usize, Entry)],
        tickets: &[Option<Ticket>],
        excluded: TierSet,
        now: Instant,
    ) {
        let shared = &*self.shared;
        // Keys a shared tier held something newer for: filled no further up.
        let mut superseded: Vec<usize> = Vec::new();
        for (depth, tier) in shared.tiers.iter().enumerate().rev() {
            if excluded & (1 << depth) != 0 {
                continue;
            }
            let mut fills: PerKey<(usize, Entry)> = PerKey::new();
            for (i, found_at, entry) in found_below {
                if *found_at <= depth || superseded.contains(i) {
                    continue;
                }
                match tickets[*i] {
                    Some(ticket) if shared.guard.still_valid(&ticket) => {
                        fills.push((*i, tier.cap(keys[*i], entry.clone(), now)));
                    }
                    _ => tier.counters.fills_discarded.incr(),
                }
            }
            if fills.is_empty() {
                continue;
            }
            // Fills since the walk's first ticket (all were taken at once).
            let since = fills
                .iter()
                .filter_map(|(i, _)| tickets[*i].map(|ticket| ticket.taken_at))
                .min();
            let written: PerKey<cache_core::Result<()>> = match &fills[..] {
                [(i, entry)] => match tier
                    .set(&*shared.clock, keys[*i], entry.clone(), since)
                    .await
                {
                    Call::Done(written) => smallvec![written],
                    _ => continue,
                },
                _ => {
                    let batch: Vec<(&str, Entry)> = fills
                        .iter()
                        .map(|(i, entry)| (keys[*i], entry.clone()))
                        .collect();
                    match Box::pin(tier.set_many(&*shared.clock, &batch, since)).await {
                        Call::Done(written) => SmallVec::from_vec(written),
                        _ => continue,
                    }
                }
            };
            for ((i, _), result) in fills.iter().zip(written) {
                match result {
                    Ok(()) => {
                        if let Some(ticket) = &tickets[*i] {
                            self.keep_fill(tier, keys[*i], ticket).await;
                        }
                    }
                    Err(error) if error.is_superseded() => {
                        tier.counters.fills_discarded.incr();
                        superseded.push(*i);
                    }
                    // Refused (over the tier's limit) or failed: counted as
                    // any write's would be; the key stays uncached here.
                    Err(error) => {
                        let _ = tier.failed::<()>(Operation::Write, error);
                    }
                }
            }
        }
    }

    /// [`fill`](Self::fill) for one key found at depth `found_at`: the same
    /// steps without the per-tier batches.
    async fn fill_one(
        &self,
        key: &str,
        found_at: usize,
        entry: &Entry,
        ticket: &Ticket,
        excluded: TierSet,
        now: Instant,
    ) {
        let shared = &*self.shared;
        for (depth, tier) in shared.tiers[..found_at].iter().enumerate().rev() {
            if excluded & (1 << depth) != 0 {
                continue;
            }
            if !shared.guard.still_valid(ticket) {
                tier.counters.fills_discarded.incr();
                continue;
            }
            let entry = tier.cap(key, entry.clone(), now);
            let since = Some(ticket.taken_at);
            match tier.set(&*shared.clock, key, entry, since).await {
                Call::Done(Ok(())) => {
                    self.keep_fill(tier, key, ticket).await;
                }
                // A shared tier held something newer: filled no further up.
                Call::Done(Err(error)) if error.is_superseded() => {
                    tier.counters.fills_discarded.incr();
                    return;
                }
                Call::Done(Err(error)) => {
                    let _ = tier.failed::<()>(Operation::Write, error);
                }
                Call::FailedOpen | Call::Failed(_) => {}
            }
        }
    }

    /// After writing a fill into `tier`: keeps it if the ticket still
    /// holds, removes it otherwise. Returns whether it was kept.
    pub(crate) async fn keep_fill(&self, tier: &Tier, key: &str, ticket: &Ticket) -> bool {
        if self.shared.guard.still_valid(ticket) {
            tier.counters.fills.incr();
            return true;
        }
        tier.counters.fills_discarded.incr();
        // Boxed: rare, and inline it would grow every fill's future.
        let _ = Box::pin(tier.delete_many(&*self.shared.clock, &[key])).await;
        false
    }
}

/// What a `get` returns of a live value: nothing if it is throttled (stale,
/// served only to loads that fall back).
fn served<T>(value: T, freshness: Freshness) -> Option<T> {
    (freshness != Freshness::Throttled).then_some(value)
}

/// A read's `outcome` field.
pub(crate) fn outcome_of<T>(read: &Result<Option<T>>) -> &'static str {
    match read {
        Ok(Some(_)) => "hit",
        Ok(None) => "miss",
        Err(_) => "error",
    }
}
