//! A scripted backend for the layer tests, and helpers to poll by hand.
//!
//! `Backend` enforces tower's contract itself: `call` panics unless the
//! very same service value (not a clone of it) was polled ready since its
//! last call.
#![allow(dead_code, reason = "each test binary uses a different part")]

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tower::Service;

/// What one call to the backend does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call {
    /// Answers `Ok(n)` at once.
    Ok(u32),
    /// Fails at once.
    Fail,
    /// Answers `Ok(0)` after this many milliseconds.
    SlowMs(u64),
    /// Fails after this many milliseconds.
    SlowFailMs(u64),
    /// Fails while fewer than `n` calls were made before it, then answers `Ok(n)`.
    FailFirst(usize),
    /// Panics when polled.
    Panic,
    /// Panics in `call` itself, before returning a future.
    PanicBeforeFuture,
    /// Fails at once on the backend's first call; on any later one, panics
    /// in `call` itself.
    FailThenPanic,
    /// Never answers.
    Forever,
}

pub type Reply = Pin<Box<dyn Future<Output = Result<u32, &'static str>> + Send>>;

/// A backend that counts its calls and checks the `poll_ready` contract.
#[derive(Debug)]
pub struct Backend {
    ready: bool,
    pub calls: Arc<AtomicUsize>,
    pub readies: Arc<AtomicUsize>,
}

impl Backend {
    pub fn new() -> Self {
        Backend {
            ready: false,
            calls: Arc::new(AtomicUsize::new(0)),
            readies: Arc::new(AtomicUsize::new(0)),
        }
    }

    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

/// A clone shares the counters but not the readiness: it must be polled
/// ready itself before it is called.
impl Clone for Backend {
    fn clone(&self) -> Self {
        Backend {
            ready: false,
            calls: Arc::clone(&self.calls),
            readies: Arc::clone(&self.readies),
        }
    }
}

impl Service<Call> for Backend {
    type Response = u32;
    type Error = &'static str;
    type Future = Reply;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.ready = true;
        self.readies.fetch_add(1, Ordering::SeqCst);
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, call: Call) -> Reply {
        assert!(self.ready, "called without being polled ready");
        self.ready = false;
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        match call {
            Call::Ok(v) => Box::pin(async move { Ok(v) }),
            Call::Fail => Box::pin(async { Err("failed") }),
            Call::SlowMs(ms) => Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok(0)
            }),
            Call::SlowFailMs(ms) => Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Err("failed slowly")
            }),
            Call::FailFirst(k) => Box::pin(async move {
                if n < k {
                    Err("not yet")
                } else {
                    Ok(u32::try_from(n).unwrap_or(u32::MAX))
                }
            }),
            Call::Panic => Box::pin(async { panic!("the backend panicked") }),
            Call::PanicBeforeFuture => panic!("the backend's call panicked"),
            Call::FailThenPanic if n == 0 => Box::pin(async { Err("failed first") }),
            Call::FailThenPanic => panic!("the backend's call panicked on a retry"),
            Call::Forever => Box::pin(std::future::pending()),
        }
    }
}

/// Polls `fut` once with a waker that does nothing.
pub fn poll_once<F: Future>(fut: Pin<&mut F>) -> Poll<F::Output> {
    fut.poll(&mut Context::from_waker(Waker::noop()))
}

/// `svc` polled ready (it must be ready at once), then called.
pub fn ready_call<S: Service<R>, R>(svc: &mut S, req: R) -> S::Future
where
    S::Error: std::fmt::Debug,
{
    match svc.poll_ready(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(Ok(())) => svc.call(req),
        Poll::Ready(Err(e)) => panic!("not ready: {e:?}"),
        Poll::Pending => panic!("not ready at once"),
    }
}
