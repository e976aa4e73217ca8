//! One `tracing` subscriber per test binary, capturing per thread (feature
//! `tracing`).
//!
//! A test that checks what the code under test logs or which spans it opens
//! registers a [`Layer`] for the duration of a [`capture`]:
//!
//! ```ignore
//! let seen = MyLayer::default(); // records into an `Arc<Mutex<..>>`
//! let _capture = tenlives_test_support::tracing_capture::capture(seen.clone());
//! code_under_test();
//! assert_eq!(seen.events(), [...]);
//! ```
//!
//! # Why not a scoped subscriber per test
//!
//! `tracing` caches, per callsite (each `info!`, each `info_span!`), whether
//! any subscriber is interested in it: `never`, `sometimes` or `always`. A
//! callsite hit for the first time computes that interest, and while only one
//! dispatcher is registered in the process `tracing-core` (0.1.36) computes
//! it from the *registering thread's* current dispatcher alone. With a scoped
//! subscriber per test (`set_default`, `with_default`), test A's subscriber
//! is often the only one registered (the others have been dropped), and a
//! thread that has no subscriber (a test that does not capture, a worker
//! thread) that hits a callsite first caches it as `never` for the whole
//! process: test A's event at that callsite is then never delivered, until
//! the next dispatcher is created and every interest is recomputed. That
//! is how `adapters/tokio/tests/telemetry.rs` once saw 0 lines logged for
//! a half-open transition: another test drained a half-open event without a
//! subscriber. `tests/scoped_subscriber_loses_events.rs` reproduces the loss
//! deterministically.
//!
//! Here the test binary has exactly one dispatcher, set once as the global
//! default and never replaced; every thread's current dispatcher is that one,
//! and its layer answers `always` for every callsite and `TRACE` as the
//! maximum level, so no thread can compute any other interest. What each test
//! sees is chosen per thread at each callback instead: the global layer
//! forwards to the layer the current thread registered, if any.
//!
//! # What it guarantees
//!
//! - [`install`] (called by [`capture`]) sets the global default once per
//!   process: a [`Registry`] with a forwarding layer. Every callsite's
//!   interest is `always`; every capture also asks `tracing` to recompute the
//!   cached interests (`rebuild_interest_cache`); creating the subscriber
//!   recomputes them too, which repairs a callsite a thread registered as
//!   `never` before the install (`tests/first_hit_before_install.rs`).
//! - Every callback on a thread that captures — span new, record, follows
//!   from, enter, exit, close, id change, event enabled, event — goes to the
//!   layer that thread registered last, with a [`Context`] over the shared
//!   registry (so `LookupSpan`, `ctx.event_span`, parents and extensions
//!   work), and to no other thread's layer. On a thread that does not
//!   capture they go nowhere (the registry still tracks its spans).
//! - Captures nest: the newest live capture of a thread receives; when it
//!   ends, the one below it receives again, whatever the order the guards
//!   are dropped in.
//!
//! # What a test must respect
//!
//! - **Only the capturing thread is captured.** An event or span callback
//!   that happens on another thread (a multi-thread runtime's workers,
//!   `spawn_blocking`, a `std::thread`) is not delivered unless that thread
//!   captures too. Tests that check logs of async code run on a
//!   `current_thread` runtime, whose tasks all run on the test's thread.
//! - A span's callbacks go where they happen: a span opened during a capture
//!   but closed on another thread, or after the capture ended, is not seen
//!   closing (with a scoped subscriber the span carried its subscriber along).
//! - No other subscriber in the same binary: no `set_default`,
//!   `with_default` or other `set_global_default` (installing panics if
//!   another global default is set; [`capture`] panics if a scoped one is
//!   current on its thread). A scoped subscriber elsewhere brings back the
//!   race above for its own test.
//! - The registered layer gets the callbacks listed above, not `on_layer`,
//!   `on_register_dispatch`, `register_callsite` or `enabled` (interest is
//!   fixed at `always`), so per-layer filters (`Layer::with_filter`) and
//!   `enabled`-based filtering do not apply: filter in the layer's callbacks.
//! - A callsite first hit after the install computes `always` on any
//!   thread. The one window left is inside `tracing-core`: a first hit that
//!   began on a thread without a capture *before* the install, computed
//!   `never` (no dispatcher yet), and was preempted before storing it until
//!   after the install's and a capture's recomputations. It needs a callsite
//!   first hit concurrently with the binary's first capture and a
//!   preemption of that length inside `tracing-core`'s registration.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Once;

use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::Interest;
use tracing::{Event, Metadata};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::{Context, Layered, SubscriberExt};

pub use tracing_subscriber::Layer;
pub use tracing_subscriber::Registry;

/// The layer of the process-wide subscriber: forwards every callback to the
/// current thread's capture.
struct Forward;

/// The process-wide subscriber.
type Global = Layered<Forward, Registry>;

type Captured = Rc<dyn Layer<Registry>>;

thread_local! {
    // The live captures of this thread, oldest first; the last one receives.
    static CAPTURES: RefCell<Vec<Captured>> = const { RefCell::new(Vec::new()) };
}

/// Calls `f` with the current thread's capture, if it has one. The layer is
/// cloned out of the thread-local first, so that it may itself log or
/// capture without finding the slot borrowed.
fn with_current<R>(f: impl FnOnce(&dyn Layer<Registry>) -> R) -> Option<R> {
    // `try_with`: during thread teardown the slot may be gone; then nothing
    // captures.
    let layer = CAPTURES
        .try_with(|captures| captures.borrow().last().cloned())
        .ok()
        .flatten()?;
    Some(f(&*layer))
}

impl Layer<Registry> for Forward {
    fn register_callsite(&self, _: &'static Metadata<'static>) -> Interest {
        Interest::always()
    }

    fn enabled(&self, _: &Metadata<'_>, _: Context<'_, Registry>) -> bool {
        true
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(LevelFilter::TRACE)
    }

    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, Registry>) {
        with_current(|layer| layer.on_new_span(attrs, id, ctx));
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, Registry>) {
        with_current(|layer| layer.on_record(id, values, ctx));
    }

    fn on_follows_from(&self, id: &Id, follows: &Id, ctx: Context<'_, Registry>) {
        with_current(|layer| layer.on_follows_from(id, follows, ctx));
    }

    fn event_enabled(&self, event: &Event<'_>, ctx: Context<'_, Registry>) -> bool {
        // Per event, never cached: a thread that does not capture skips the
        // event's dispatch.
        with_current(|layer| layer.event_enabled(event, ctx)).unwrap_or(false)
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, Registry>) {
        with_current(|layer| layer.on_event(event, ctx));
    }

    fn on_enter(&self, id: &Id, ctx: Context<'_, Registry>) {
        with_current(|layer| layer.on_enter(id, ctx));
    }

    fn on_exit(&self, id: &Id, ctx: Context<'_, Registry>) {
        with_current(|layer| layer.on_exit(id, ctx));
    }

    fn on_close(&self, id: Id, ctx: Context<'_, Registry>) {
        with_current(|layer| layer.on_close(id, ctx));
    }

    fn on_id_change(&self, old: &Id, new: &Id, ctx: Context<'_, Registry>) {
        with_current(|layer| layer.on_id_change(old, new, ctx));
    }
}

/// Sets the process-wide subscriber, once; then recomputes every callsite's
/// cached interest. [`capture`] calls it; a test may call it earlier.
///
/// # Panics
///
/// If another global default subscriber was set in this process.
pub fn install() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        tracing::subscriber::set_global_default(tracing_subscriber::registry().with(Forward))
            .expect(
                "tracing_capture::install: another global subscriber is set in this test binary",
            );
    });
    // Repairs a callsite that a thread registered as `never` while it had
    // no dispatcher, before the install (see the module's last caveat).
    tracing::callsite::rebuild_interest_cache();
}

/// A capture in progress: the layer given to [`capture`] receives this
/// thread's callbacks until this guard is dropped. Not `Send`: it ends on
/// the thread it began on.
#[must_use = "the capture ends when the guard is dropped"]
pub struct Capture {
    layer: Captured,
}

/// Registers `layer` to receive every `tracing` callback of the current
/// thread until the returned guard is dropped, installing the process-wide
/// subscriber first if needed. Nested captures: the newest receives.
///
/// # Panics
///
/// If a scoped subscriber (`set_default`, `with_default`) is the current
/// thread's dispatcher: it would receive the callbacks instead.
pub fn capture(layer: impl Layer<Registry>) -> Capture {
    install();
    assert!(
        tracing::dispatcher::get_default(|d| d.is::<Global>()),
        "tracing_capture::capture: a scoped subscriber is set on this thread; \
         this binary must use the global one only"
    );
    let layer: Captured = Rc::new(layer);
    CAPTURES.with(|captures| captures.borrow_mut().push(layer.clone()));
    Capture { layer }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = CAPTURES.try_with(|captures| {
            let mut captures = captures.borrow_mut();
            // Its own entry, wherever it is: guards may be dropped out of
            // order, and the newest remaining capture receives.
            if let Some(at) = captures.iter().rposition(|l| Rc::ptr_eq(l, &self.layer)) {
                captures.remove(at);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Barrier, Mutex};
    use tracing::field::{Field, Visit};

    /// Records `message` of every event, and the names of spans as they
    /// close.
    #[derive(Clone, Default)]
    struct Log(Arc<Mutex<Vec<String>>>);

    impl Log {
        fn take(&self) -> Vec<String> {
            std::mem::take(&mut *self.0.lock().unwrap())
        }
    }

    struct Message<'a>(&'a mut String);

    impl Visit for Message<'_> {
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            if field.name() == "message" {
                self.0.push_str(&format!("{value:?}"));
            }
        }
    }

    impl<S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>> Layer<S>
        for Log
    {
        fn on_new_span(&self, attrs: &Attributes<'_>, _: &Id, _: Context<'_, S>) {
            self.0
                .lock()
                .unwrap()
                .push(format!("new {}", attrs.metadata().name()));
        }
        fn on_record(&self, id: &Id, _: &Record<'_>, ctx: Context<'_, S>) {
            let name = ctx.span(id).map_or("?", |s| s.name());
            self.0.lock().unwrap().push(format!("record {name}"));
        }
        fn on_enter(&self, id: &Id, ctx: Context<'_, S>) {
            let name = ctx.span(id).map_or("?", |s| s.name());
            self.0.lock().unwrap().push(format!("enter {name}"));
        }
        fn on_exit(&self, id: &Id, ctx: Context<'_, S>) {
            let name = ctx.span(id).map_or("?", |s| s.name());
            self.0.lock().unwrap().push(format!("exit {name}"));
        }
        fn on_close(&self, id: Id, ctx: Context<'_, S>) {
            let name = ctx.span(&id).map_or("?", |s| s.name());
            self.0.lock().unwrap().push(format!("close {name}"));
        }
        fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
            let mut line = String::new();
            event.record(&mut Message(&mut line));
            if let Some(span) = ctx.event_span(event) {
                line = format!("{line} in {}", span.name());
            }
            self.0.lock().unwrap().push(line);
        }
    }

    #[test]
    fn every_span_callback_and_event_reaches_the_capture_with_its_context() {
        let log = Log::default();
        let capture = capture(log.clone());
        {
            let span = tracing::info_span!("outer", n = tracing::field::Empty);
            let _entered = span.enter();
            span.record("n", 1);
            tracing::info!("hello");
        }
        drop(capture);
        tracing::info!("after the capture");
        assert_eq!(
            log.take(),
            [
                "new outer",
                "enter outer",
                "record outer",
                "hello in outer",
                "exit outer",
                "close outer"
            ]
        );
    }

    /// Two threads capture at once, each emitting at the same callsites in
    /// lockstep: each sees exactly its own events, in order.
    #[test]
    fn two_threads_capturing_at_once_see_exactly_their_own_events() {
        const ROUNDS: usize = 200;
        fn emit(thread: usize, round: usize) {
            let span = tracing::info_span!("round");
            let _entered = span.enter();
            tracing::info!("{thread}:{round}");
        }
        let barrier = Arc::new(Barrier::new(2));
        let threads: Vec<_> = (0..2)
            .map(|thread| {
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    let log = Log::default();
                    let _capture = capture(log.clone());
                    barrier.wait();
                    for round in 0..ROUNDS {
                        emit(thread, round);
                        if round % 16 == 0 {
                            barrier.wait();
                        }
                    }
                    log.take()
                })
            })
            .collect();
        for (thread, seen) in threads.into_iter().enumerate() {
            let seen = seen.join().unwrap();
            let want: Vec<String> = (0..ROUNDS)
                .flat_map(|round| {
                    [
                        "new round".to_owned(),
                        "enter round".to_owned(),
                        format!("{thread}:{round} in round"),
                        "exit round".to_owned(),
                        "close round".to_owned(),
                    ]
                })
                .collect();
            assert_eq!(seen, want, "thread {thread}");
        }
    }

    /// A callsite hit first on a thread that does not capture is still
    /// delivered when a capturing thread hits it later: its interest is not
    /// cached as `never`.
    #[test]
    fn a_callsite_first_hit_on_a_thread_that_does_not_capture_is_delivered_later() {
        fn emit() {
            tracing::warn!("first hit elsewhere");
        }
        install();
        // A thread with no capture registers the callsite (and its event
        // goes nowhere).
        std::thread::spawn(emit).join().unwrap();
        let log = Log::default();
        let _capture = capture(log.clone());
        emit();
        assert_eq!(log.take(), ["first hit elsewhere"]);
        // And the thread that does not capture still sees nothing of ours.
        std::thread::spawn(emit).join().unwrap();
        assert!(log.take().is_empty());
    }

    #[test]
    fn nested_captures_receive_newest_first_and_restore_in_any_drop_order() {
        let (a, b, c) = (Log::default(), Log::default(), Log::default());
        let outer = capture(a.clone());
        tracing::info!("1");
        let middle = capture(b.clone());
        tracing::info!("2");
        let inner = capture(c.clone());
        tracing::info!("3");
        // The middle one ends first: the inner one still receives.
        drop(middle);
        tracing::info!("4");
        drop(inner);
        tracing::info!("5");
        drop(outer);
        tracing::info!("6");
        assert_eq!(a.take(), ["1", "5"]);
        assert_eq!(b.take(), ["2"]);
        assert_eq!(c.take(), ["3", "4"]);
    }

    /// A layer that logs from inside its own callback: the forwarding does
    /// not hold the thread-local borrowed while the layer runs.
    #[test]
    fn a_layer_may_log_and_capture_from_its_callbacks() {
        struct Reentrant(Log);
        impl Layer<Registry> for Reentrant {
            fn on_event(&self, event: &Event<'_>, _: Context<'_, Registry>) {
                let mut line = String::new();
                event.record(&mut Message(&mut line));
                if line == "outer" {
                    let inner = capture(self.0.clone());
                    tracing::info!("from the callback");
                    drop(inner);
                }
                self.0.0.lock().unwrap().push(line);
            }
        }
        let log = Log::default();
        let _capture = capture(Reentrant(log.clone()));
        tracing::info!("outer");
        assert_eq!(log.take(), ["from the callback", "outer"]);
    }
}
