//! [`RecordLayer`]: a tower layer that records every request into a
//! [`Recorder`].
//!
//! Why a layer and not a journal record kind: the journal drains the event
//! ring, which holds the live policies' decisions and is lossy under load
//! by design; a replay needs every request's arrival, key, outcome and
//! latency *before* any policy's influence, taken where the request enters
//! the service. The layer goes outermost (in front of the live stack), so
//! that it sees the requests the stack sheds too, as `shed`.

use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use tenlives_tokio::TenlivesError;
use tower_layer::Layer;
use tower_service::Service;

use super::trace::{Recorder, TraceOutcome};

/// What a request is, for the trace: its key and whether it is a retry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Tag {
    /// The caller's key (a tenant, a host, a hashed endpoint); 0 for none.
    pub key: u64,
    /// Whether the request is a retry of an earlier one.
    pub retry: bool,
}

impl From<u64> for Tag {
    fn from(key: u64) -> Tag {
        Tag { key, retry: false }
    }
}

/// How a tenlives stack's result reads in a trace: a rejection by a policy
/// is `shed`, an error of the wrapped service `err`, a response `ok`.
pub fn stack_outcome<Res, E>(result: &Result<Res, TenlivesError<E>>) -> TraceOutcome {
    match result {
        Ok(_) => TraceOutcome::Ok,
        Err(TenlivesError::Rejected(_)) => TraceOutcome::Shed,
        Err(_) => TraceOutcome::Err,
    }
}

/// Records each request into a shared [`Recorder`]: its arrival (when
/// `call` is invoked), the [`Tag`] `tag` gives it, the outcome `classify`
/// gives its result, and its latency. Per request: one `Instant::now` at
/// arrival and one at completion, one `Arc` clone, the recorder's
/// `fetch_add` and stores; no allocation, no lock. A panic in `tag` or
/// `classify` is caught: the request goes on, unrecorded.
#[derive(Clone, Debug)]
pub struct RecordLayer<T, C> {
    recorder: Arc<Recorder>,
    tag: T,
    classify: C,
}

impl<T, C> RecordLayer<T, C> {
    /// A layer recording into `recorder`.
    pub fn new(recorder: Arc<Recorder>, tag: T, classify: C) -> Self {
        RecordLayer {
            recorder,
            tag,
            classify,
        }
    }
}

impl<S, T: Clone, C: Clone> Layer<S> for RecordLayer<T, C> {
    type Service = RecordService<S, T, C>;

    fn layer(&self, inner: S) -> Self::Service {
        RecordService {
            inner,
            recorder: self.recorder.clone(),
            tag: self.tag.clone(),
            classify: self.classify.clone(),
        }
    }
}

/// The service of a [`RecordLayer`].
#[derive(Clone, Debug)]
pub struct RecordService<S, T, C> {
    inner: S,
    recorder: Arc<Recorder>,
    tag: T,
    classify: C,
}

impl<S, T, C, Req> Service<Req> for RecordService<S, T, C>
where
    S: Service<Req>,
    T: Fn(&Req) -> Tag,
    C: Fn(&Result<S::Response, S::Error>) -> TraceOutcome + Clone,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = RecordFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let arrived = Instant::now();
        let tag = catch_unwind(AssertUnwindSafe(|| (self.tag)(&req))).ok();
        RecordFuture {
            inner: self.inner.call(req),
            pending: tag.map(|tag| Pending {
                recorder: self.recorder.clone(),
                classify: self.classify.clone(),
                arrived,
                tag,
            }),
        }
    }
}

struct Pending<C> {
    recorder: Arc<Recorder>,
    classify: C,
    arrived: Instant,
    tag: Tag,
}

pin_project_lite::pin_project! {
    /// The response future of a [`RecordService`]. Dropped before it
    /// completes (cancelled), it records nothing: the request has no outcome.
    pub struct RecordFuture<F, C> {
        #[pin]
        inner: F,
        pending: Option<Pending<C>>,
    }
}

impl<F, C> std::fmt::Debug for RecordFuture<F, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordFuture").finish_non_exhaustive()
    }
}

impl<F, C, Res, E> Future for RecordFuture<F, C>
where
    F: Future<Output = Result<Res, E>>,
    C: Fn(&Result<Res, E>) -> TraceOutcome,
{
    type Output = Result<Res, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.inner.poll(cx));
        if let Some(p) = this.pending.take() {
            let latency = p.arrived.elapsed();
            if let Ok(outcome) = catch_unwind(AssertUnwindSafe(|| (p.classify)(&result))) {
                p.recorder
                    .record(p.arrived, p.tag.key, outcome, latency, p.tag.retry);
            }
        }
        Poll::Ready(result)
    }
}
