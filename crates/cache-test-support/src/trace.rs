//! A `tracing` subscriber that keeps what it sees, for tests that check
//! spans and log lines: every span with its fields (those recorded later
//! included) and parent, and every event at WARN or above.
//!
//! ```
//! use cache_test_support::trace::Capture;
//!
//! let capture = Capture::default();
//! tracing::subscriber::with_default(capture.clone(), || {
//!     let span = tracing::debug_span!("cache.get", key = "k", outcome = tracing::field::Empty);
//!     span.record("outcome", "hit");
//!     tracing::warn!(class = "timeout", "tier failing");
//! });
//! let span = &capture.spans_named("cache.get")[0];
//! assert_eq!(span.field("outcome"), Some("hit"));
//! assert!(capture.warnings()[0].contains("class=timeout"));
//! ```

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

/// One span as the subscriber saw it.
#[derive(Debug, Clone, Default)]
pub struct SpanRecord {
    /// The span's name (`cache.get`).
    pub name: String,
    /// Its fields by name, as `Display` or `Debug` text (strings unquoted).
    pub fields: BTreeMap<String, String>,
    /// The name of its parent span, if any.
    pub parent: Option<String>,
}

impl SpanRecord {
    /// The text of field `name`, if recorded.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields.get(name).map(String::as_str)
    }
}

/// The subscriber. Clones share what it captured.
///
/// Making one also installs, once per process, a global subscriber that
/// records nothing and keeps every callsite's interest at "sometimes":
/// tests run in parallel, each with its own capture as the thread's
/// default, and without it a callsite first hit between one test's
/// capture and another's could be cached as "never" for every thread.
#[derive(Clone)]
pub struct Capture {
    inner: Arc<Inner>,
}

impl Default for Capture {
    fn default() -> Self {
        static KEEPER: std::sync::Once = std::sync::Once::new();
        KEEPER.call_once(|| {
            // Fails only if a test installed a global subscriber itself,
            // which then decides.
            let _ = tracing::subscriber::set_global_default(Keeper);
        });
        Capture {
            inner: Arc::default(),
        }
    }
}

/// The global subscriber [`Capture`] installs: enables nothing, but asks.
struct Keeper;

impl Subscriber for Keeper {
    fn register_callsite(&self, _: &'static Metadata<'static>) -> tracing_core::Interest {
        tracing_core::Interest::sometimes()
    }

    fn enabled(&self, _: &Metadata<'_>) -> bool {
        false
    }

    fn max_level_hint(&self) -> Option<tracing_core::LevelFilter> {
        Some(tracing_core::LevelFilter::TRACE)
    }

    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }

    fn record(&self, _: &Id, _: &Record<'_>) {}

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, _: &Event<'_>) {}

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}

#[derive(Default)]
struct Inner {
    next_id: AtomicU64,
    spans: Mutex<BTreeMap<u64, SpanRecord>>,
    /// Each span's metadata, for `current_span` (what `Span::current` asks).
    metadata: Mutex<HashMap<u64, &'static Metadata<'static>>>,
    /// The spans entered on each thread, innermost last (the parent of a
    /// span made without an explicit one).
    stack: Mutex<HashMap<std::thread::ThreadId, Vec<u64>>>,
    warnings: Mutex<Vec<String>>,
}

impl std::fmt::Debug for Capture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Capture").finish_non_exhaustive()
    }
}

impl Capture {
    /// Every span seen, in creation order.
    pub fn spans(&self) -> Vec<SpanRecord> {
        self.inner.spans.lock().unwrap().values().cloned().collect()
    }

    /// The spans named `name`, in creation order.
    pub fn spans_named(&self, name: &str) -> Vec<SpanRecord> {
        self.spans()
            .into_iter()
            .filter(|span| span.name == name)
            .collect()
    }

    /// Every event at WARN or ERROR, as `message field=value ...` lines.
    pub fn warnings(&self) -> Vec<String> {
        self.inner.warnings.lock().unwrap().clone()
    }
}

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}

impl Subscriber for Capture {
    /// `sometimes`, never `always`: tests run in parallel threads, each
    /// with its own capture as the default; a callsite's interest is cached
    /// for every thread, so each span and event must ask the current
    /// thread's subscriber again.
    fn register_callsite(&self, _: &'static Metadata<'static>) -> tracing_core::Interest {
        tracing_core::Interest::sometimes()
    }

    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }

    fn max_level_hint(&self) -> Option<tracing_core::LevelFilter> {
        Some(tracing_core::LevelFilter::TRACE)
    }

    fn new_span(&self, span: &Attributes<'_>) -> Id {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let mut record = SpanRecord {
            name: span.metadata().name().to_owned(),
            ..SpanRecord::default()
        };
        span.record(&mut Fields(&mut record.fields));
        let spans = self.inner.spans.lock().unwrap();
        let parent = if let Some(parent) = span.parent() {
            Some(parent.into_u64())
        } else if span.is_contextual() {
            let stack = self.inner.stack.lock().unwrap();
            stack
                .get(&std::thread::current().id())
                .and_then(|stack| stack.last().copied())
        } else {
            None
        };
        record.parent = parent.and_then(|parent| spans.get(&parent).map(|p| p.name.clone()));
        drop(spans);
        self.inner.spans.lock().unwrap().insert(id, record);
        (self.inner.metadata.lock().unwrap()).insert(id, span.metadata());
        Id::from_u64(id)
    }

    fn record(&self, span: &Id, values: &Record<'_>) {
        let mut spans = self.inner.spans.lock().unwrap();
        if let Some(record) = spans.get_mut(&span.into_u64()) {
            values.record(&mut Fields(&mut record.fields));
        }
    }

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        if *event.metadata().level() > Level::WARN {
            return;
        }
        let mut fields = BTreeMap::new();
        event.record(&mut Fields(&mut fields));
        let mut line = fields.remove("message").unwrap_or_default();
        for (name, value) in fields {
            let _ = write!(line, " {name}={value}");
        }
        self.inner.warnings.lock().unwrap().push(line);
    }

    fn enter(&self, span: &Id) {
        let mut stack = self.inner.stack.lock().unwrap();
        stack
            .entry(std::thread::current().id())
            .or_default()
            .push(span.into_u64());
    }

    fn current_span(&self) -> tracing_core::span::Current {
        let stack = self.inner.stack.lock().unwrap();
        let current = stack
            .get(&std::thread::current().id())
            .and_then(|stack| stack.last().copied());
        let metadata =
            current.and_then(|id| Some((id, *self.inner.metadata.lock().unwrap().get(&id)?)));
        match metadata {
            Some((id, metadata)) => tracing_core::span::Current::new(Id::from_u64(id), metadata),
            None => tracing_core::span::Current::none(),
        }
    }

    fn exit(&self, span: &Id) {
        let mut stack = self.inner.stack.lock().unwrap();
        if let Some(stack) = stack.get_mut(&std::thread::current().id())
            && let Some(at) = stack.iter().rposition(|id| *id == span.into_u64())
        {
            stack.remove(at);
        }
    }
}
