//! Layers whose timing and failures a test controls, wrapped around a real
//! layer.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use async_trait::async_trait;
use cache_core::{
    CacheLayer, CallContext, Entry, Error, ErrorClass, LayerStats, Lookups, Operation, Pattern,
    Result, Writes,
};
use tokio::sync::Semaphore;

/// Wraps a layer so that a test can hold a `get` between reading the value
/// and returning it: the window in which a tier fill races with a delete.
///
/// ```text
/// layer.hold_next_get();          // arm
/// let get = cache.get(key);       // poll once: it reads, then waits
/// cache.delete(key).await;        // the racing delete
/// layer.release();                // let the get finish and fill upward
/// ```
pub struct HoldableLayer {
    inner: Arc<dyn CacheLayer>,
    armed: AtomicBool,
    gate: Semaphore,
    held: AtomicU64,
}

impl HoldableLayer {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn CacheLayer>) -> Self {
        HoldableLayer {
            inner,
            armed: AtomicBool::new(false),
            gate: Semaphore::new(0),
            held: AtomicU64::new(0),
        }
    }

    /// The next `get` (or `get_many`) reads its value, then waits for [`release`](Self::release).
    pub fn hold_next_get(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }

    /// Disarms a hold that no `get` took (the read was answered above).
    pub fn disarm(&self) {
        self.armed.store(false, Ordering::SeqCst);
    }

    /// Lets one held `get` finish.
    pub fn release(&self) {
        self.gate.add_permits(1);
    }

    /// How many gets have been held so far.
    pub fn held(&self) -> u64 {
        self.held.load(Ordering::SeqCst)
    }

    async fn maybe_hold(&self) {
        if self.armed.swap(false, Ordering::SeqCst) {
            self.held.fetch_add(1, Ordering::SeqCst);
            self.gate
                .acquire()
                .await
                .expect("the gate is never closed")
                .forget();
        }
    }
}

impl fmt::Debug for HoldableLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HoldableLayer")
            .field("inner", &self.inner)
            .finish()
    }
}

#[async_trait]
impl CacheLayer for HoldableLayer {
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn get_many(&self, ctx: &CallContext<'_>, keys: &[&str]) -> Result<Lookups> {
        let found = self.inner.get_many(ctx, keys).await;
        self.maybe_hold().await;
        found
    }

    async fn set_many(&self, ctx: &CallContext<'_>, entries: &[(&str, Entry)]) -> Result<Writes> {
        self.inner.set_many(ctx, entries).await
    }

    async fn delete_many(&self, ctx: &CallContext<'_>, keys: &[&str]) -> Result<u64> {
        self.inner.delete_many(ctx, keys).await
    }

    async fn invalidate(&self, ctx: &CallContext<'_>, pattern: &Pattern) -> Result<u64> {
        self.inner.invalidate(ctx, pattern).await
    }

    fn stats(&self) -> LayerStats {
        self.inner.stats()
    }

    fn is_shared(&self) -> bool {
        self.inner.is_shared()
    }
}

/// How a [`FaultyLayer`] misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Passes every call through.
    None,
    /// Fails every call at once with a backend error.
    Fail,
    /// Never answers (a hung server); only a timeout gets the caller out.
    Hang,
    /// Fails writes and removals at once with an error of this class (a
    /// dead primary with live replicas: `Unavailable`; a full server:
    /// `OutOfMemory`); reads pass.
    FailWrites(ErrorClass),
}

/// Wraps a layer with switchable failures.
pub struct FaultyLayer {
    inner: Arc<dyn CacheLayer>,
    fault: std::sync::Mutex<Fault>,
    calls: AtomicU64,
}

impl FaultyLayer {
    /// Wraps `inner`, healthy at first.
    pub fn new(inner: Arc<dyn CacheLayer>) -> Self {
        FaultyLayer {
            inner,
            fault: std::sync::Mutex::new(Fault::None),
            calls: AtomicU64::new(0),
        }
    }

    /// Switches the failure mode.
    pub fn set_fault(&self, fault: Fault) {
        *self.fault.lock().unwrap() = fault;
    }

    /// How many calls reached this layer.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    async fn enter(&self, operation: Operation) -> Result<()> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let fault = *self.fault.lock().unwrap();
        let name = self.inner.name().to_owned();
        match fault {
            Fault::None => Ok(()),
            Fault::Fail => Err(Error::classified(
                name,
                ErrorClass::Unavailable,
                "injected failure",
            )),
            Fault::Hang => std::future::pending().await,
            Fault::FailWrites(_) if operation == Operation::Read => Ok(()),
            Fault::FailWrites(class) => Err(Error::classified(name, class, "injected failure")),
        }
    }
}

impl fmt::Debug for FaultyLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultyLayer")
            .field("inner", &self.inner)
            .field("fault", &*self.fault.lock().unwrap())
            .finish()
    }
}

#[async_trait]
impl CacheLayer for FaultyLayer {
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn get_many(&self, ctx: &CallContext<'_>, keys: &[&str]) -> Result<Lookups> {
        self.enter(Operation::Read).await?;
        self.inner.get_many(ctx, keys).await
    }

    async fn set_many(&self, ctx: &CallContext<'_>, entries: &[(&str, Entry)]) -> Result<Writes> {
        self.enter(Operation::Write).await?;
        self.inner.set_many(ctx, entries).await
    }

    async fn delete_many(&self, ctx: &CallContext<'_>, keys: &[&str]) -> Result<u64> {
        self.enter(Operation::Remove).await?;
        self.inner.delete_many(ctx, keys).await
    }

    async fn invalidate(&self, ctx: &CallContext<'_>, pattern: &Pattern) -> Result<u64> {
        self.enter(Operation::Remove).await?;
        self.inner.invalidate(ctx, pattern).await
    }

    /// Fails (or hangs) as reads do.
    async fn ping(&self, ctx: &CallContext<'_>) -> Result<()> {
        self.enter(Operation::Read).await?;
        self.inner.ping(ctx).await
    }

    fn stats(&self) -> LayerStats {
        self.inner.stats()
    }

    fn is_shared(&self) -> bool {
        self.inner.is_shared()
    }
}

/// Wraps a layer and reports it as [shared](CacheLayer::is_shared): several
/// `TieredCache`s in one test process stacked over one `SharedLayer` behave
/// like instances sharing a Redis L2. Like a remote layer it answers
/// nothing at once (no `get_now`, `set_now`); its single-key calls go to
/// the wrapped layer's, as `RedisLayer` answers them.
#[derive(Debug, Clone)]
pub struct SharedLayer(pub Arc<dyn CacheLayer>);

#[async_trait]
impl CacheLayer for SharedLayer {
    fn name(&self) -> &str {
        self.0.name()
    }

    async fn get(&self, ctx: &CallContext<'_>, key: &str) -> Result<Option<Entry>> {
        self.0.get(ctx, key).await
    }

    async fn set(&self, ctx: &CallContext<'_>, key: &str, entry: Entry) -> Result<()> {
        self.0.set(ctx, key, entry).await
    }

    async fn delete(&self, ctx: &CallContext<'_>, key: &str) -> Result<bool> {
        self.0.delete(ctx, key).await
    }

    async fn get_many(&self, ctx: &CallContext<'_>, keys: &[&str]) -> Result<Lookups> {
        self.0.get_many(ctx, keys).await
    }

    async fn set_many(&self, ctx: &CallContext<'_>, entries: &[(&str, Entry)]) -> Result<Writes> {
        self.0.set_many(ctx, entries).await
    }

    async fn delete_many(&self, ctx: &CallContext<'_>, keys: &[&str]) -> Result<u64> {
        self.0.delete_many(ctx, keys).await
    }

    async fn invalidate(&self, ctx: &CallContext<'_>, pattern: &Pattern) -> Result<u64> {
        self.0.invalidate(ctx, pattern).await
    }

    async fn ping(&self, ctx: &CallContext<'_>) -> Result<()> {
        self.0.ping(ctx).await
    }

    fn is_shared(&self) -> bool {
        true
    }

    fn stats(&self) -> LayerStats {
        self.0.stats()
    }
}
