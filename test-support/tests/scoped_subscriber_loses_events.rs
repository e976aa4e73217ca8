//! Why `tracing_capture` exists: with scoped subscribers (`set_default`, as
//! the test suites used), an event is lost when another thread, one without
//! a subscriber, hit its callsite first. Deterministic, in a binary of its
//! own: this test must be the only dispatcher user of its process.
//!
//! If `tracing-core` stops computing a callsite's interest from the
//! registering thread's dispatcher alone, this test fails; then the shared
//! capture is no longer needed for this reason (keep it or not knowingly).

use std::sync::{Arc, Mutex};

use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

#[derive(Clone, Default)]
struct Count(Arc<Mutex<usize>>);

impl<S: tracing::Subscriber> Layer<S> for Count {
    fn on_event(&self, _: &tracing::Event<'_>, _: Context<'_, S>) {
        *self.0.lock().unwrap() += 1;
    }
}

fn emit() {
    tracing::warn!("the half-open transition");
}

#[test]
fn a_scoped_subscriber_misses_an_event_whose_callsite_another_thread_hit_first() {
    let seen = Count::default();
    // Test A's scoped subscriber: the only dispatcher in the process.
    let _guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(seen.clone()));

    // Control: a callsite test A hits first is delivered.
    tracing::warn!("a callsite of its own");
    assert_eq!(*seen.0.lock().unwrap(), 1);

    // Another test, on a thread without a subscriber, hits `emit`'s callsite
    // first: its interest is computed from that thread's dispatcher (none)
    // alone and cached as `never` for every thread.
    std::thread::spawn(emit).join().unwrap();

    // Test A's own event at that callsite is not delivered.
    emit();
    assert_eq!(
        *seen.0.lock().unwrap(),
        1,
        "the event reached the scoped subscriber: tracing-core no longer caches the \
         interest of another thread's first hit (see the module doc of tracing_capture)"
    );

    // A new dispatcher anywhere makes tracing recompute every interest, and
    // the event is delivered again.
    drop(tracing::Dispatch::new(tracing_subscriber::registry()));
    emit();
    assert_eq!(*seen.0.lock().unwrap(), 2);
}
