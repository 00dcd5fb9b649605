//! The trait every cache tier implements, and the context each call carries.

use std::fmt;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::{Clock, Entry, Error, LayerStats, Pattern, Result, SystemClock, Ticket};

/// What kind of call a tier call is, so that a policy can keep reads
/// flowing when only writes fail (a full or read-only server).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    /// `get`, `get_many`.
    Read,
    /// `set`, `set_many`.
    Write,
    /// `delete`, `delete_many`, `invalidate`.
    Remove,
}

impl Operation {
    /// A short lowercase name for logs and metrics labels (`"read"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Read => "read",
            Operation::Write => "write",
            Operation::Remove => "remove",
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What every tier call carries: the composer's clock (one for the whole
/// stack), the call's deadline, its [`Operation`] and the admission
/// [`Ticket`] its tier's policy gave it.
///
/// A layer reads time only through it ([`now`](CallContext::now),
/// [`is_expired`](CallContext::is_expired)), so a whole stack runs on one
/// clock and a test that steps a [`ManualClock`](crate::ManualClock) steps
/// every layer. A layer that waits on I/O should give up by the
/// [`deadline`](CallContext::deadline) (its own timeout may be shorter).
///
/// ```
/// use std::time::Duration;
/// use cache_core::{CallContext, Clock, Entry, ManualClock, Operation};
///
/// let clock = ManualClock::new();
/// let ctx = CallContext::new(&clock, Operation::Read);
/// let entry = Entry::new(&b"v"[..]).expires_at(clock.now() + Duration::from_secs(5));
/// assert!(!ctx.is_expired(&entry));
/// clock.advance(Duration::from_secs(5));
/// assert!(ctx.is_expired(&entry));
/// ```
#[derive(Clone, Copy)]
pub struct CallContext<'a> {
    clock: &'a dyn Clock,
    deadline: Option<Instant>,
    operation: Operation,
    ticket: Ticket,
    fill_since: Option<Instant>,
}

/// The clock of [`CallContext::system`].
static SYSTEM_CLOCK: SystemClock = SystemClock;

impl<'a> CallContext<'a> {
    /// A context on `clock` for a call of kind `operation`, with no deadline
    /// and [`Ticket::NONE`].
    pub fn new(clock: &'a dyn Clock, operation: Operation) -> Self {
        CallContext {
            clock,
            deadline: None,
            operation,
            ticket: Ticket::NONE,
            fill_since: None,
        }
    }

    /// The deadline by which the call should finish (`None`: none beyond
    /// the layer's own timeout).
    #[must_use]
    pub fn with_deadline(mut self, deadline: impl Into<Option<Instant>>) -> Self {
        self.deadline = deadline.into();
        self
    }

    /// The ticket the tier's policy admitted the call with.
    #[must_use]
    pub fn with_ticket(mut self, ticket: Ticket) -> Self {
        self.ticket = ticket;
        self
    }

    /// Marks a write as a *fill*: it stores a value that a read or a load
    /// which began at `started` obtained (copied up from a lower tier, or a
    /// loader's result), not new data from the application.
    ///
    /// A shared layer should not let a fill replace a value written, or pass
    /// a removal made, after `started`, possibly by another process: that is
    /// how an invalidated value stays out of it (cache-redis does this with a
    /// short-lived marker per removed key). A layer that cannot tell stores
    /// it like any write; the composer's own fill guard covers this process.
    #[must_use]
    pub fn with_fill_since(mut self, started: impl Into<Option<Instant>>) -> Self {
        self.fill_since = started.into();
        self
    }

    /// For a fill, when the read or load that obtained the value began;
    /// `None` for a write of new data. See [`with_fill_since`](Self::with_fill_since).
    pub fn fill_since(&self) -> Option<Instant> {
        self.fill_since
    }

    /// The current instant on the stack's clock.
    #[inline]
    pub fn now(&self) -> Instant {
        self.clock.now()
    }

    /// The stack's clock.
    pub fn clock(&self) -> &'a dyn Clock {
        self.clock
    }

    /// Whether `entry` has expired by the stack's clock. Cheaper than
    /// comparing with [`now`](CallContext::now): entries that never expire
    /// cost no clock read, and the clock may answer "certainly not yet"
    /// without a precise read ([`Entry::has_expired`]).
    #[inline]
    pub fn is_expired(&self, entry: &Entry) -> bool {
        entry.has_expired(self.clock)
    }

    /// The call's deadline, if it has one.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// The time left until the deadline (zero once passed), `None` without one.
    pub fn time_left(&self) -> Option<Duration> {
        self.deadline
            .map(|deadline| deadline.saturating_duration_since(self.clock.now()))
    }

    /// What kind of call this is.
    pub fn operation(&self) -> Operation {
        self.operation
    }

    /// The ticket the tier's policy admitted the call with.
    pub fn ticket(&self) -> Ticket {
        self.ticket
    }
}

impl CallContext<'static> {
    /// A context on the system clock, for calling a layer directly (outside
    /// a composer), in examples and tests.
    pub fn system(operation: Operation) -> Self {
        CallContext::new(&SYSTEM_CLOCK, operation)
    }
}

impl fmt::Debug for CallContext<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallContext")
            .field("clock", &self.clock)
            .field("deadline", &self.deadline)
            .field("operation", &self.operation)
            .field("ticket", &self.ticket)
            .field("fill_since", &self.fill_since)
            .finish()
    }
}

/// The answers of a batch read: one per key, in order, so that a failure
/// of one key (a Cluster node down) stays apart from the others.
pub type Lookups = Vec<Result<Option<Entry>>>;

/// The answers of a batch write: one per entry, in order.
pub type Writes = Vec<Result<()>>;

/// What a layer answers a write at once ([`CacheLayer::set_now`]).
#[derive(Debug)]
pub enum WriteNow {
    /// The write's outcome, as [`set`](CacheLayer::set) would report it.
    Done(Result<()>),
    /// The layer cannot write without awaiting: call
    /// [`set`](CacheLayer::set) with the entry handed back.
    Unanswered(Entry),
}

/// What a layer answers a read at once ([`CacheLayer::get_now`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadNow {
    /// A live entry.
    Hit(Entry),
    /// No live entry under the key.
    Miss,
    /// The layer cannot answer without awaiting: call
    /// [`get`](CacheLayer::get).
    Unanswered,
}

/// One tier of a cache: an async store of [`Entry`] values under string keys.
///
/// The trait is object safe; composers hold tiers as `Arc<dyn CacheLayer>`.
/// It is batch-first: a backend implements `name` and the four batch calls
/// ([`get_many`](CacheLayer::get_many), [`set_many`](CacheLayer::set_many),
/// [`delete_many`](CacheLayer::delete_many), [`invalidate`](CacheLayer::invalidate));
/// the single-key calls are provided on top of them (a backend may override
/// them to save an allocation), so a wrapper that forwards the batch calls
/// forwards everything.
///
/// Every call takes a [`CallContext`]: read time through it, never through
/// `Instant::now()`, and finish by its deadline.
///
/// # Contract
/// `cache_core::testing::conformance` (feature `testing`) checks these on
/// any backend in a few lines.
/// - `get_many` answers one slot per key, in order, and never an entry that
///   has expired by the context's clock, or that was deleted, invalidated or
///   written under another key.
/// - `set_many` stores each entry with its absolute expiry, replacing any
///   value under the key. An entry that has already expired is not stored
///   (and any old value under the key is removed). A value the layer will
///   not hold is refused with an error of class
///   [`RefusedInput`](crate::ErrorClass::RefusedInput) (for example
///   [`Error::ValueTooLarge`]), and any old value under the key is removed,
///   so a refused write never leaves the previous value readable.
/// - `delete_many` and `invalidate` report how many keys they removed.
/// - Bytes that do not parse are a miss, counted in [`LayerStats::corrupt`],
///   never a panic.
/// - Calls finish or fail within the layer's own timeout and the context's
///   deadline; an outer `Err` means the whole call failed.
///
/// # Example
/// A complete, if simple, backend:
/// ```
/// use std::collections::HashMap;
/// use std::sync::Mutex;
/// use cache_core::{
///     async_trait, CacheLayer, CallContext, Entry, Lookups, Operation, Pattern, Result, Writes,
/// };
///
/// #[derive(Debug, Default)]
/// struct MapLayer(Mutex<HashMap<String, Entry>>);
///
/// #[async_trait]
/// impl CacheLayer for MapLayer {
///     fn name(&self) -> &str { "map" }
///
///     async fn get_many(&self, ctx: &CallContext<'_>, keys: &[&str]) -> Result<Lookups> {
///         let map = self.0.lock().unwrap();
///         Ok(keys
///             .iter()
///             .map(|key| Ok(map.get(*key).filter(|e| !ctx.is_expired(e)).cloned()))
///             .collect())
///     }
///
///     async fn set_many(&self, ctx: &CallContext<'_>, entries: &[(&str, Entry)]) -> Result<Writes> {
///         let mut map = self.0.lock().unwrap();
///         for (key, entry) in entries {
///             match ctx.is_expired(entry) {
///                 true => map.remove(*key),
///                 false => map.insert((*key).to_owned(), entry.clone()),
///             };
///         }
///         Ok(entries.iter().map(|_| Ok(())).collect())
///     }
///
///     async fn delete_many(&self, _ctx: &CallContext<'_>, keys: &[&str]) -> Result<u64> {
///         let mut map = self.0.lock().unwrap();
///         Ok(keys.iter().filter(|key| map.remove(**key).is_some()).count() as u64)
///     }
///
///     async fn invalidate(&self, _ctx: &CallContext<'_>, pattern: &Pattern) -> Result<u64> {
///         let mut map = self.0.lock().unwrap();
///         let before = map.len();
///         map.retain(|key, _| !pattern.matches(key));
///         Ok((before - map.len()) as u64)
///     }
/// }
/// # futures::executor::block_on(async {
/// let layer = MapLayer::default();
/// let write = CallContext::system(Operation::Write);
/// layer.set(&write, "k", Entry::new(&b"v"[..])).await.unwrap();
/// let read = CallContext::system(Operation::Read);
/// assert_eq!(layer.get(&read, "k").await.unwrap().unwrap().value().as_ref(), b"v");
/// # });
/// ```
#[async_trait]
pub trait CacheLayer: Send + Sync + fmt::Debug {
    /// A short name for logs, stats and errors (`"memory"`, `"redis"`).
    fn name(&self) -> &str;

    /// Reads several keys: one answer per key, in order.
    async fn get_many(&self, ctx: &CallContext<'_>, keys: &[&str]) -> Result<Lookups>;

    /// Stores several entries: one answer per entry, in order.
    async fn set_many(&self, ctx: &CallContext<'_>, entries: &[(&str, Entry)]) -> Result<Writes>;

    /// Removes several keys; returns how many were there.
    async fn delete_many(&self, ctx: &CallContext<'_>, keys: &[&str]) -> Result<u64>;

    /// Removes every key matching `pattern`; returns how many were removed.
    async fn invalidate(&self, ctx: &CallContext<'_>, pattern: &Pattern) -> Result<u64>;

    /// The live entry under `key`, if any. Provided on top of
    /// [`get_many`](CacheLayer::get_many).
    async fn get(&self, ctx: &CallContext<'_>, key: &str) -> Result<Option<Entry>> {
        single(self.name(), self.get_many(ctx, &[key]).await?)
    }

    /// Stores `entry` under `key`. Provided on top of
    /// [`set_many`](CacheLayer::set_many).
    async fn set(&self, ctx: &CallContext<'_>, key: &str, entry: Entry) -> Result<()> {
        single(self.name(), self.set_many(ctx, &[(key, entry)]).await?)
    }

    /// Removes `key`; returns whether a value was there. Provided on top of
    /// [`delete_many`](CacheLayer::delete_many).
    async fn delete(&self, ctx: &CallContext<'_>, key: &str) -> Result<bool> {
        Ok(self.delete_many(ctx, &[key]).await? > 0)
    }

    /// Answers a read at once, without awaiting and without failing, if
    /// this layer can: an in-process layer can, a remote one cannot.
    /// [`ReadNow::Unanswered`] means "call [`get`](CacheLayer::get)".
    /// Default: `Unanswered`.
    ///
    /// Composers try this first on every read: the hottest path there is,
    /// spared the boxed future of an async call and the error paths. It
    /// must be cheap and must never block; it keeps the same contract as
    /// `get` (never an expired entry, judged by `clock`) and counts the hit
    /// or miss as `get` would. A layer whose reads can fail answers
    /// `Unanswered` and reports failures from `get`.
    fn get_now(&self, clock: &dyn Clock, key: &str) -> ReadNow {
        let _ = (clock, key);
        ReadNow::Unanswered
    }

    /// Stores `entry` at once, without awaiting, if this layer can (an
    /// in-process layer can, a remote one cannot);
    /// [`WriteNow::Unanswered`] hands the entry back: "call
    /// [`set`](CacheLayer::set)". Default: `Unanswered`.
    ///
    /// Composers try this first when they copy a value found below into
    /// the tier above (a fill), as [`get_now`](CacheLayer::get_now) on
    /// reads: it must be cheap, must never block, and keeps the contract of
    /// `set` (the same refusals, the same counters).
    fn set_now(&self, ctx: &CallContext<'_>, key: &str, entry: Entry) -> WriteNow {
        let _ = (ctx, key);
        WriteNow::Unanswered(entry)
    }

    /// Swaps the entry held under `key` for the one `replacement` makes if
    /// the layer still holds `current` there (the very entry a read
    /// returned, see [`Entry::ptr_eq`]) and the replacement is equal to it
    /// (the same bytes and expiry); returns whether it did. At once,
    /// without awaiting. Default: `false`, never (and `replacement` is not
    /// called: a layer that cannot swap costs its caller no copy).
    ///
    /// For an in-process layer that hands out the entries it holds: a
    /// composer that decoded a value read from it stores the entry again,
    /// made with its decoded value ([`Entry::with_decoded`]), so that
    /// later hits clone the value straight from the entry. Not a write: no
    /// counter moves, nothing is evicted, and a newer value written
    /// meanwhile stays.
    fn replace_now(&self, key: &str, current: &Entry, replacement: &dyn Fn() -> Entry) -> bool {
        let _ = (key, current, replacement);
        false
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

    /// Checks that the backend answers, for health checks: a remote layer
    /// makes its cheapest round trip (Redis: `PING`), bounded by the
    /// context's deadline. Default: `Ok(())`, right for an in-process
    /// layer; a remote backend should override it.
    async fn ping(&self, ctx: &CallContext<'_>) -> Result<()> {
        let _ = ctx;
        Ok(())
    }

    /// A snapshot of the layer's counters. Default: all zero.
    fn stats(&self) -> LayerStats {
        LayerStats::default()
    }
}

/// The one answer of a one-key batch; a layer that answered with another
/// number of slots broke the contract, which is an error, not a panic.
fn single<T>(layer: &str, answers: Vec<Result<T>>) -> Result<T> {
    let count = answers.len();
    match <[Result<T>; 1]>::try_from(answers) {
        Ok([answer]) => answer,
        Err(_) => Err(Error::backend(
            layer.to_owned(),
            format!("answered a one-key batch with {count} results"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    // Compile-time check that the trait stays usable as `dyn`.
    fn _object_safe(_: Arc<dyn CacheLayer>) {}

    #[test]
    fn a_wrong_number_of_answers_is_an_error() {
        assert!(single::<u8>("l", vec![]).is_err());
        assert!(single("l", vec![Ok(1u8), Ok(2)]).is_err());
        assert_eq!(single("l", vec![Ok(1u8)]).unwrap(), 1);
    }
}
