//! Rate limits as tower layers: direct ([`RateLimiter`], one budget for all
//! requests) and keyed ([`KeyedRateLimiter`], one budget per key taken from
//! the request, e.g. a client address or an API key).
//!
//! Both reject at once when the tokens are not there, with
//! [`RejectionReason::RateLimited`](crate::RejectionReason::RateLimited) and the time after which a token will be
//! (`retry_after`, for an HTTP `Retry-After`). Unlike tower's `RateLimit`,
//! nothing waits in `poll_ready`: a rate limit in front of a service sheds
//! the excess instead of queueing it. Tokens are spent when the request is
//! admitted, whatever happens to it afterwards.
//!
//! ```
//! use tenlives_engine::rate::{KeyedConfig, KeyedRateLimiter, Quota};
//! use tenlives_tokio::{KeyedRateLimitLayer, RejectionReason, TenlivesError};
//! use tower::{service_fn, Layer, Service, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), tenlives_engine::ConfigError> {
//! let per_client = KeyedRateLimiter::new(KeyedConfig::new(Quota::per_second(1)?, 1_000)?);
//! let layer = KeyedRateLimitLayer::new(per_client, |client: &&'static str| *client);
//! let mut svc = layer.layer(service_fn(|client: &'static str| async move {
//!     Ok::<_, std::io::Error>(client.len())
//! }));
//!
//! assert_eq!(svc.ready().await.unwrap().call("alice").await.unwrap(), 5);
//! let refused = svc.ready().await.unwrap().call("alice").await.unwrap_err();
//! assert!(matches!(&refused, TenlivesError::Rejected(r) if r.reason() == RejectionReason::RateLimited));
//! assert_eq!(refused.retry_after(), Some(std::time::Duration::from_secs(1)));
//! // Bob has his own budget.
//! assert_eq!(svc.ready().await.unwrap().call("bob").await.unwrap(), 3);
//! # Ok(())
//! # }
//! ```

use std::future::Future;
use std::hash::{BuildHasher, Hash};
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tenlives_engine::breaker::Outcome;
use tenlives_engine::events::{EventSink, NoSink};
use tenlives_engine::rate::{DefaultHashBuilder, KeyedRateLimiter, RateLimiter};
use tenlives_engine::time::{Clock, Timestamp};
use tower_layer::Layer;
use tower_service::Service;

use crate::admission::{Admission, AdmissionLayer, AdmissionService};
use crate::classify::DefaultClassifier;
use crate::clock::TokioClock;
use crate::error::{Rejection, TenlivesError, take_rejection};
use crate::span::{CallSpan, call_span};

impl<Snk: EventSink> Admission for RateLimiter<Snk> {
    /// Tokens are spent on admission; nothing is held.
    type Token = ();
    const NAME: &'static str = "rate_limit";
    const HOLDS: bool = false;

    /// Always: tokens appear with time.
    #[inline]
    fn needs_time(&self) -> bool {
        true
    }

    /// Never: nothing is reported back.
    #[inline]
    fn needs_time_at_end(&self) -> bool {
        false
    }

    #[inline]
    fn admit(&self, now: Timestamp) -> Result<(), Rejection> {
        self.check(now)
            .map_err(|l| Rejection::from(tenlives_engine::rate::RateLimitError::from(l)))
    }

    #[inline]
    fn complete(&self, _token: (), _outcome: Outcome, _admitted_at: Timestamp, _now: Timestamp) {}

    #[inline]
    fn release(&self, _token: ()) {}
}

/// A layer putting a direct rate limit in front of a service; it can also
/// be a stage of the combined [`StackLayer`](crate::StackLayer) through
/// `.admission(...)`. See the [module documentation](self).
pub type RateLimitLayer<K = DefaultClassifier, Snk = NoSink> = AdmissionLayer<RateLimiter<Snk>, K>;

/// A service behind a [`RateLimiter`]. Made by [`RateLimitLayer`].
pub type RateLimitService<S, K = DefaultClassifier, Snk = NoSink> =
    AdmissionService<S, RateLimiter<Snk>, K>;

/// A layer giving each key its own rate limit; the key comes from the
/// request through `extract`. Clones share one table.
#[derive(Clone, Debug)]
pub struct KeyedRateLimitLayer<Key, F, H = DefaultHashBuilder, Snk: EventSink = NoSink> {
    limiter: KeyedRateLimiter<Key, H, Snk>,
    extract: F,
    clock: TokioClock,
}

impl<Key, F, H, Snk: EventSink> KeyedRateLimitLayer<Key, F, H, Snk> {
    /// Limits each key `extract` finds in a request with `limiter`.
    pub fn new(limiter: KeyedRateLimiter<Key, H, Snk>, extract: F) -> Self {
        KeyedRateLimitLayer {
            limiter,
            extract,
            clock: TokioClock::new(),
        }
    }

    /// The same layer reading time from `clock` (e.g. one shared with other
    /// layers).
    pub fn with_clock(mut self, clock: TokioClock) -> Self {
        self.clock = clock;
        self
    }

    /// The table of per-key limiters.
    pub fn limiter(&self) -> &KeyedRateLimiter<Key, H, Snk> {
        &self.limiter
    }
}

impl<S, Key, F: Clone, H, Snk: EventSink> Layer<S> for KeyedRateLimitLayer<Key, F, H, Snk> {
    type Service = KeyedRateLimitService<S, Key, F, H, Snk>;

    fn layer(&self, inner: S) -> Self::Service {
        KeyedRateLimitService {
            inner,
            limiter: self.limiter.clone(),
            extract: self.extract.clone(),
            clock: self.clock,
        }
    }
}

/// A service behind a per-key rate limit. Made by [`KeyedRateLimitLayer`].
#[derive(Clone, Debug)]
pub struct KeyedRateLimitService<S, Key, F, H, Snk: EventSink> {
    inner: S,
    limiter: KeyedRateLimiter<Key, H, Snk>,
    extract: F,
    clock: TokioClock,
}

impl<S, Req, Key, F, H, Snk> Service<Req> for KeyedRateLimitService<S, Key, F, H, Snk>
where
    S: Service<Req>,
    F: Fn(&Req) -> Key,
    Key: Hash + Eq + Clone + Send + Sync + 'static,
    H: BuildHasher + Send + Sync + 'static,
    Snk: EventSink + Send + Sync + 'static,
{
    type Response = S::Response;
    type Error = TenlivesError<S::Error>;
    type Future = KeyedRateLimitFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(TenlivesError::Inner)
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        let key = (self.extract)(&req);
        let span = call_span!("tenlives.keyed_rate_limit", "keyed_rate_limit");
        match self.limiter.check_key(&key, self.clock.now()) {
            Ok(()) => {
                span.admitted();
                let inner = span.in_scope(|| self.inner.call(req));
                KeyedRateLimitFuture::Admitted { inner, span }
            }
            Err(refused) => {
                let rejection = Rejection::from(refused);
                span.rejected(&rejection);
                KeyedRateLimitFuture::Refused {
                    rejection: Some(rejection),
                    span,
                }
            }
        }
    }
}

pin_project! {
    /// The response future of a [`KeyedRateLimitService`].
    #[project = KeyedProj]
    // pin-project-lite takes no documentation on variant fields; the
    // variants say what they hold.
    #[allow(missing_docs)]
    #[must_use = "futures do nothing unless polled"]
    pub enum KeyedRateLimitFuture<Fut> {
        /// Admitted: the inner service's future.
        Admitted { #[pin] inner: Fut, span: CallSpan },
        /// Refused before reaching the inner service; the rejection is taken
        /// when the future resolves.
        Refused { rejection: Option<Rejection>, span: CallSpan },
    }
}

impl<Fut, T, E> Future for KeyedRateLimitFuture<Fut>
where
    Fut: Future<Output = Result<T, E>>,
{
    type Output = Result<T, TenlivesError<E>>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            KeyedProj::Admitted { inner, span } => {
                let _entered = span.enter();
                let result = std::task::ready!(inner.poll(cx));
                span.ended(&result);
                Poll::Ready(result.map_err(TenlivesError::Inner))
            }
            KeyedProj::Refused { rejection, .. } => take_rejection(rejection),
        }
    }
}
