//! A conformance suite for [`CacheLayer`] backends (feature `testing`).
//!
//! Runs the trait's contract against a live layer and panics, with a
//! message naming the broken rule, at the first violation. Call it from an
//! async test of your backend:
//!
//! ```
//! use cache_core::testing::Conformance;
//! use cache_core::ManualClock;
//! # use std::collections::HashMap;
//! # use std::sync::Mutex;
//! # use cache_core::{async_trait, CacheLayer, CallContext, Entry, Lookups, Pattern, Result, Writes};
//! # #[derive(Debug, Default)]
//! # struct MapLayer(Mutex<HashMap<String, Entry>>);
//! # #[async_trait]
//! # impl CacheLayer for MapLayer {
//! #     fn name(&self) -> &str { "map" }
//! #     async fn get_many(&self, ctx: &CallContext<'_>, keys: &[&str]) -> Result<Lookups> {
//! #         let map = self.0.lock().unwrap();
//! #         Ok(keys.iter().map(|k| Ok(map.get(*k).filter(|e| !ctx.is_expired(e)).cloned())).collect())
//! #     }
//! #     async fn set_many(&self, ctx: &CallContext<'_>, entries: &[(&str, Entry)]) -> Result<Writes> {
//! #         let mut map = self.0.lock().unwrap();
//! #         for (k, e) in entries {
//! #             if ctx.is_expired(e) { map.remove(*k); } else { map.insert((*k).to_owned(), e.clone()); }
//! #         }
//! #         Ok(entries.iter().map(|_| Ok(())).collect())
//! #     }
//! #     async fn delete_many(&self, _: &CallContext<'_>, keys: &[&str]) -> Result<u64> {
//! #         let mut map = self.0.lock().unwrap();
//! #         Ok(keys.iter().filter(|k| map.remove(**k).is_some()).count() as u64)
//! #     }
//! #     async fn invalidate(&self, _: &CallContext<'_>, p: &Pattern) -> Result<u64> {
//! #         let mut map = self.0.lock().unwrap();
//! #         let before = map.len();
//! #         map.retain(|k, _| !p.matches(k));
//! #         Ok((before - map.len()) as u64)
//! #     }
//! # }
//!
//! # futures::executor::block_on(async {
//! let clock = ManualClock::new();
//! let layer = MapLayer::default();
//! Conformance::new(&layer).manual_clock(&clock).run().await;
//! # });
//! ```
//!
//! A layer whose expiry is kept by a server (Redis) cannot follow a manual
//! clock; leave it out and the suite checks expiry without travelling in
//! time (an already-expired write, a remaining life that never grows).
//! Give each run its own [`prefix`](Conformance::prefix) when layers share
//! a server: the suite only touches keys under it.

use std::time::Duration;

use crate::{
    CacheLayer, CallContext, Clock, Entry, ManualClock, Operation, Pattern, ReadNow, WriteNow,
    escape,
};

/// The conformance suite for one layer; see the [module docs](self).
#[must_use]
pub struct Conformance<'a> {
    layer: &'a dyn CacheLayer,
    clock: Option<&'a ManualClock>,
    prefix: String,
    max_value_size: Option<usize>,
}

impl std::fmt::Debug for Conformance<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conformance")
            .field("layer", &self.layer.name())
            .field("prefix", &self.prefix)
            .field("max_value_size", &self.max_value_size)
            .finish()
    }
}

impl<'a> Conformance<'a> {
    /// The suite for `layer`, on the system clock, under the prefix
    /// `"conformance:"`, with no size limit checked.
    pub fn new(layer: &'a dyn CacheLayer) -> Self {
        Conformance {
            layer,
            clock: None,
            prefix: "conformance:".to_owned(),
            max_value_size: None,
        }
    }

    /// Runs every call on `clock` and checks expiry by advancing it: for
    /// layers that read time only through the [`CallContext`].
    pub fn manual_clock(mut self, clock: &'a ManualClock) -> Self {
        self.clock = Some(clock);
        self
    }

    /// The prefix of every key the suite uses (default `"conformance:"`).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The largest value the layer holds: checks that a larger one is
    /// refused with a [`RefusedInput`](crate::ErrorClass::RefusedInput)
    /// error and leaves no old value readable.
    pub fn max_value_size(mut self, bytes: usize) -> Self {
        self.max_value_size = Some(bytes);
        self
    }

    /// Runs the suite; panics at the first violation.
    pub async fn run(self) {
        let system = crate::SystemClock;
        let clock: &dyn Clock = match self.clock {
            Some(clock) => clock,
            None => &system,
        };
        let read = CallContext::new(clock, Operation::Read);
        let write = CallContext::new(clock, Operation::Write);
        let remove = CallContext::new(clock, Operation::Remove);
        let layer = self.layer;
        let name = layer.name().to_owned();
        assert!(!name.is_empty(), "a layer has a non-empty name");
        let key = |suffix: &str| format!("{}{suffix}", self.prefix);
        let everything = Pattern::new(format!("{}*", escape(&self.prefix)));
        let hour = Duration::from_secs(3600);
        let live = |bytes: &'static [u8]| Entry::new(bytes).expires_at(clock.now() + hour);
        let value_of = |found: Option<Entry>| found.map(|entry| entry.value().to_vec());

        layer
            .invalidate(&remove, &everything)
            .await
            .expect("invalidate works on an empty prefix");

        // Reads, writes and overwrites.
        let (a, b) = (key("a"), key("b"));
        let got = layer.get(&read, &a).await.expect("get of a missing key");
        assert!(got.is_none(), "[{name}] a missing key is a miss");
        layer.set(&write, &a, live(b"one")).await.expect("set");
        let got = layer.get(&read, &a).await.expect("get");
        assert_eq!(
            value_of(got),
            Some(b"one".to_vec()),
            "[{name}] set, then get"
        );
        layer.set(&write, &a, live(b"two")).await.expect("set");
        let got = layer.get(&read, &a).await.expect("get");
        assert_eq!(
            value_of(got),
            Some(b"two".to_vec()),
            "[{name}] a set replaces"
        );
        layer
            .set(&write, &b, Entry::new(&b""[..]))
            .await
            .expect("set");
        let got = layer.get(&read, &b).await.expect("get");
        assert_eq!(value_of(got), Some(Vec::new()), "[{name}] an empty value");

        // Expiry never grows, and an expired write removes the key.
        let got = layer.get(&read, &a).await.expect("get").expect("a hit");
        let left = got.remaining(clock.now()).expect("an expiry was written");
        assert!(left <= hour, "[{name}] an entry never outlives its expiry");
        assert!(
            left >= hour - Duration::from_secs(60),
            "[{name}] an entry keeps its expiry ({left:?} left of an hour)"
        );
        let dead = Entry::new(&b"dead"[..]).expires_at(clock.now());
        layer
            .set(&write, &a, dead)
            .await
            .expect("set of an expired entry");
        let got = layer.get(&read, &a).await.expect("get");
        assert!(
            got.is_none(),
            "[{name}] an expired write removes the old value"
        );
        if let Some(manual) = self.clock {
            let short = Entry::new(&b"short"[..]).expires_at(manual.now() + Duration::from_secs(5));
            layer.set(&write, &a, short).await.expect("set");
            manual.advance(Duration::from_secs(4));
            assert!(
                layer.get(&read, &a).await.expect("get").is_some(),
                "[{name}] live before its expiry"
            );
            manual.advance(Duration::from_secs(1));
            assert!(
                layer.get(&read, &a).await.expect("get").is_none(),
                "[{name}] never answered at or after its expiry (context clock)"
            );
        }

        // Deletes report what they removed.
        layer.set(&write, &a, live(b"x")).await.expect("set");
        assert!(
            layer.delete(&remove, &a).await.expect("delete"),
            "[{name}] delete finds the key"
        );
        assert!(
            !layer.delete(&remove, &a).await.expect("delete"),
            "[{name}] a second delete finds nothing"
        );
        assert!(
            layer.get(&read, &a).await.expect("get").is_none(),
            "[{name}] deleted"
        );

        // Batches: one answer per key, in order.
        let keys: Vec<String> = (0..5).map(|i| key(&format!("batch:{i}"))).collect();
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        let empty = layer.get_many(&read, &[]).await.expect("empty get_many");
        assert!(empty.is_empty(), "[{name}] an empty batch has no answers");
        let written = layer
            .set_many(&write, &[(refs[1], live(b"1")), (refs[3], live(b"3"))])
            .await
            .expect("set_many");
        assert_eq!(written.len(), 2, "[{name}] one answer per entry");
        assert!(
            written.iter().all(Result::is_ok),
            "[{name}] set_many stored"
        );
        let found = layer.get_many(&read, &refs).await.expect("get_many");
        assert_eq!(found.len(), refs.len(), "[{name}] one answer per key");
        let found: Vec<Option<Vec<u8>>> = found
            .into_iter()
            .map(|answer| value_of(answer.expect("a per-key answer")))
            .collect();
        assert_eq!(
            found,
            vec![None, Some(b"1".to_vec()), None, Some(b"3".to_vec()), None],
            "[{name}] get_many answers in key order"
        );
        let removed = layer
            .delete_many(&remove, &refs)
            .await
            .expect("delete_many");
        assert_eq!(removed, 2, "[{name}] delete_many counts what was there");

        // Patterns: globs match, escaped user ids match only themselves.
        let star = key("user:*");
        let plain = key("user:7");
        let other = key("other:7");
        for k in [&star, &plain, &other] {
            layer.set(&write, k, live(b"v")).await.expect("set");
        }
        let exact = Pattern::new(escape(&star));
        let removed = layer.invalidate(&remove, &exact).await.expect("invalidate");
        assert_eq!(removed, 1, "[{name}] an escaped `*` matches only itself");
        assert!(
            layer.get(&read, &plain).await.expect("get").is_some(),
            "[{name}] kept"
        );
        let users = Pattern::new(format!("{}user:*", escape(&self.prefix)));
        let removed = layer.invalidate(&remove, &users).await.expect("invalidate");
        assert_eq!(removed, 1, "[{name}] a glob removes what matches");
        assert!(
            layer.get(&read, &plain).await.expect("get").is_none(),
            "[{name}] removed"
        );
        assert!(
            layer.get(&read, &other).await.expect("get").is_some(),
            "[{name}] a key the pattern does not match stays"
        );

        // Keys are bytes-exact: no normalisation, no collisions.
        let (upper, unicode) = (key("Key"), key("clé ✓"));
        layer
            .set(&write, &upper, live(b"upper"))
            .await
            .expect("set");
        layer
            .set(&write, &unicode, live(b"unicode"))
            .await
            .expect("set");
        let got = layer.get(&read, &key("key")).await.expect("get");
        assert!(got.is_none(), "[{name}] keys are case-sensitive");
        let got = layer.get(&read, &unicode).await.expect("get");
        assert_eq!(
            value_of(got),
            Some(b"unicode".to_vec()),
            "[{name}] unicode keys"
        );

        // Refused input: an error of its class, and no old value left.
        if let Some(limit) = self.max_value_size {
            layer.set(&write, &a, live(b"old")).await.expect("set");
            let big = Entry::new(vec![7u8; limit + 1]).expires_at(clock.now() + hour);
            let error = layer
                .set(&write, &a, big)
                .await
                .expect_err("a value over the limit is refused");
            assert!(error.is_refusal(), "[{name}] refused as input: {error}");
            assert!(
                layer.get(&read, &a).await.expect("get").is_none(),
                "[{name}] a refused write leaves no old value readable"
            );
        }

        // Answers at once (`get_now`, `set_now`), where the layer gives
        // them, keep the contract of `get` and `set`.
        let entry = live(b"now");
        match layer.set_now(&write, &a, entry.clone()) {
            WriteNow::Unanswered(back) => {
                assert!(back.ptr_eq(&entry), "[{name}] set_now hands the entry back");
                layer.set(&write, &a, back).await.expect("set");
            }
            WriteNow::Done(written) => written.expect("set_now"),
        }
        let got = layer.get(&read, &a).await.expect("get");
        assert_eq!(
            value_of(got),
            Some(b"now".to_vec()),
            "[{name}] set_now, then get"
        );
        match layer.get_now(clock, &a) {
            ReadNow::Hit(found) => assert_eq!(found.value().as_ref(), b"now", "[{name}] get_now"),
            ReadNow::Miss => panic!("[{name}] get_now misses a live key"),
            ReadNow::Unanswered => {}
        }
        // `replace_now` swaps only the entry it was given, for an equal one.
        if let Some(held) = layer.get(&read, &a).await.expect("get") {
            let other = Entry::with_decoded(&b"other"[..], 1, 1u8).expires_at(held.expiry());
            assert!(
                !layer.replace_now(&a, &held, &|| other.clone()),
                "[{name}] replace_now never swaps in another value"
            );
            let same = Entry::with_decoded(held.value().clone(), 1, 1u8).expires_at(held.expiry());
            if layer.replace_now(&a, &held, &|| same.clone()) {
                let got = layer
                    .get(&read, &a)
                    .await
                    .expect("get")
                    .expect("still held");
                assert_eq!(got, held, "[{name}] replace_now keeps the value");
                let stale =
                    Entry::with_decoded(held.value().clone(), 2, 2u8).expires_at(held.expiry());
                assert!(
                    !layer.replace_now(&a, &held, &|| stale.clone()),
                    "[{name}] replace_now refuses once the entry it was given is gone"
                );
            }
        }
        if let Some(limit) = self.max_value_size {
            let big = Entry::new(vec![7u8; limit + 1]).expires_at(clock.now() + hour);
            if let WriteNow::Done(written) = layer.set_now(&write, &a, big) {
                let error = written.expect_err("set_now refuses a value over the limit");
                assert!(error.is_refusal(), "[{name}] refused as input: {error}");
                assert!(
                    layer.get(&read, &a).await.expect("get").is_none(),
                    "[{name}] a refused set_now leaves no old value readable"
                );
            }
        }
        layer.delete(&remove, &a).await.expect("delete");
        assert!(
            !matches!(layer.get_now(clock, &a), ReadNow::Hit(_)),
            "[{name}] get_now never answers a deleted key"
        );

        layer
            .invalidate(&remove, &everything)
            .await
            .expect("invalidate");
        let got = layer.get(&read, &upper).await.expect("get");
        assert!(got.is_none(), "[{name}] invalidate of the prefix cleans up");
    }
}
