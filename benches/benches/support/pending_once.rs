//! A service that returns `Pending` once (waking itself) before answering:
//! a timeout layer has to arm its timer, and a request holds its permit
//! across a poll. Shared by `layers.rs` and `queue.rs`.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tower::Service;

/// See the module documentation.
#[derive(Clone, Copy, Debug)]
pub struct PendingOnce;

/// The future of [`PendingOnce`].
pub struct Later(u64, bool);

impl Future for Later {
    type Output = Result<u64, Infallible>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.1 {
            Poll::Ready(Ok(self.0))
        } else {
            self.1 = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
}

impl Service<u64> for PendingOnce {
    type Response = u64;
    type Error = Infallible;
    type Future = Later;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: u64) -> Later {
        Later(req, false)
    }
}
