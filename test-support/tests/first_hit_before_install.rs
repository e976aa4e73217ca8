//! A callsite that a thread hit before the binary's subscriber existed
//! (cached as of no interest then) is delivered to a later capture. In a
//! binary of its own, so that nothing installs the subscriber earlier.

use std::sync::{Arc, Mutex};

use tenlives_test_support::tracing_capture::{self, Layer, Registry};
use tracing_subscriber::layer::Context;

#[derive(Clone, Default)]
struct Count(Arc<Mutex<usize>>);

impl Layer<Registry> for Count {
    fn on_event(&self, _: &tracing::Event<'_>, _: Context<'_, Registry>) {
        *self.0.lock().unwrap() += 1;
    }
}

fn emit() {
    tracing::warn!("hit before the install");
}

#[test]
fn a_callsite_hit_before_the_install_is_delivered_to_a_later_capture() {
    // No subscriber anywhere yet: the callsite is cached as `never`.
    std::thread::spawn(emit).join().unwrap();
    let seen = Count::default();
    let _capture = tracing_capture::capture(seen.clone());
    emit();
    assert_eq!(*seen.0.lock().unwrap(), 1);
}
