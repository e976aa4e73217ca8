//! Fault injection, for chaos tests: added latency, errors, and dropped
//! responses, at configured rates, reproducible from a seed.
//!
//! [`FaultLayer`] decides in `call`, for each request, whether to
//!
//! - **delay** it (with probability `latency` rate): wait a delay (fixed, or
//!   drawn uniformly from a range) on tokio's timer before the wrapped call
//!   is polled;
//! - and, independently, to make it fail, one of:
//!   - **error** (`error` rate): return [`InjectedFault::Error`] without
//!     calling the wrapped service;
//!   - **drop the connection** (`connection_drop` rate): call the wrapped
//!     service and let it finish, then throw the response away and return
//!     [`InjectedFault::ConnectionDropped`], as when a connection dies after
//!     the request was sent (the request took effect; the caller cannot know);
//!   - **hang** (`hang` rate): never complete, without calling the wrapped
//!     service (a request lost on the way). Put a timeout outside.
//!
//! Draws come from one SplitMix64 stream seeded by [`FaultConfigBuilder::seed`],
//! three draws per request taken in `call` order: a run that calls in the
//! same order with the same seed injects the same faults into the same
//! requests.
//!
//! Injected failures are [`TenlivesError::Injected`] by default; with
//! [`FaultLayer::with_errors`] they are made in the wrapped service's own
//! error type instead (e.g. an `io::Error` of kind `ConnectionReset`), so the
//! layers outside see exactly what a real failure would give them.
//!
//! ```
//! use std::time::Duration;
//! use tenlives_tokio::fault::{FaultConfig, FaultLayer};
//! use tower::{service_fn, Layer, Service, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), tenlives_engine::ConfigError> {
//! let config = FaultConfig::builder()
//!     .error(0.25)
//!     .latency(0.5, Duration::from_millis(100))
//!     .seed(7)
//!     .build()?;
//! let chaos = FaultLayer::with_errors(config, |_fault| std::io::Error::other("injected"));
//! let mut svc = chaos.layer(service_fn(|_: ()| async { Ok::<_, std::io::Error>(()) }));
//! let mut failed = 0;
//! for _ in 0..400 {
//!     failed += usize::from(svc.ready().await.unwrap().call(()).await.is_err());
//! }
//! assert!((60..140).contains(&failed), "about a quarter fail: {failed}");
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tenlives_engine::ConfigError;
use tokio::time::Sleep;
use tower_layer::Layer;
use tower_service::Service;

use crate::error::{InjectedFault, TenlivesError};
use crate::span::{CallSpan, call_span};

/// The SplitMix64 increment.
const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;
/// Draws each request takes from the stream: fault, latency, delay.
const DRAWS: u64 = 3;
/// `2^64`: a probability scaled to compare with a 64-bit draw.
const SCALE: f64 = 18_446_744_073_709_551_616.0;

/// The SplitMix64 output function.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A probability in `[0, 1]` as a threshold on a 64-bit draw: `draw <
/// threshold` happens with exactly that probability (1 included).
fn threshold(field: &'static str, rate: f64) -> Result<u128, ConfigError> {
    if (0.0..=1.0).contains(&rate) {
        // `as` saturates; 1.0 gives 2^64, above every draw.
        Ok((rate * SCALE) as u128)
    } else {
        Err(ConfigError::InvalidFraction { field, value: rate })
    }
}

/// Builder for [`FaultConfig`]. Every rate starts at 0 and the seed at 0.
#[derive(Clone, Copy, Debug, Default)]
#[must_use]
pub struct FaultConfigBuilder {
    latency: (f64, Duration, Duration),
    error: f64,
    connection_drop: f64,
    hang: f64,
    seed: u64,
}

impl FaultConfigBuilder {
    /// Delays a share `rate` of the requests by `delay`.
    pub fn latency(mut self, rate: f64, delay: Duration) -> Self {
        self.latency = (rate, delay, delay);
        self
    }

    /// Delays a share `rate` of the requests by a delay drawn uniformly from
    /// `min..=max`.
    pub fn latency_between(mut self, rate: f64, min: Duration, max: Duration) -> Self {
        self.latency = (rate, min, max);
        self
    }

    /// Fails a share `rate` of the requests without calling the service.
    pub fn error(mut self, rate: f64) -> Self {
        self.error = rate;
        self
    }

    /// Throws away the response of a share `rate` of the requests.
    pub fn connection_drop(mut self, rate: f64) -> Self {
        self.connection_drop = rate;
        self
    }

    /// Never completes a share `rate` of the requests.
    pub fn hang(mut self, rate: f64) -> Self {
        self.hang = rate;
        self
    }

    /// Seeds the draws.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Validates the settings.
    ///
    /// # Errors
    ///
    /// [`ConfigError::InvalidFraction`] for a rate outside `[0, 1]` (or not a
    /// number), or when the error, connection-drop and hang rates add up to
    /// more than 1 (they are exclusive); [`ConfigError::CapBelowBase`] for a
    /// latency range whose `max` is below its `min`;
    /// [`ConfigError::DurationOverflow`] for a delay beyond 584 years.
    pub fn build(self) -> Result<FaultConfig, ConfigError> {
        let (rate, min, max) = self.latency;
        let latency = threshold("latency rate", rate)?;
        if max < min {
            return Err(ConfigError::CapBelowBase {
                field: "latency max",
            });
        }
        let nanos = |field, d: Duration| {
            u64::try_from(d.as_nanos()).map_err(|_| ConfigError::DurationOverflow { field })
        };
        let (min_ns, max_ns) = (nanos("latency min", min)?, nanos("latency max", max)?);
        let error = threshold("error rate", self.error)?;
        let dropped = threshold("connection_drop rate", self.connection_drop)?;
        let hang = threshold("hang rate", self.hang)?;
        let sum = self.error + self.connection_drop + self.hang;
        if error + dropped + hang > 1 << 64 {
            return Err(ConfigError::InvalidFraction {
                field: "error + connection_drop + hang rates",
                value: sum,
            });
        }
        Ok(FaultConfig {
            latency,
            min_ns,
            max_ns,
            error,
            dropped: error + dropped,
            hang: error + dropped + hang,
            seed: self.seed,
        })
    }
}

/// A validated fault-injection configuration. Build one with
/// [`FaultConfig::builder`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FaultConfig {
    /// Threshold of the latency draw.
    latency: u128,
    min_ns: u64,
    max_ns: u64,
    /// Cumulative thresholds of the fault draw: error, then connection drop,
    /// then hang.
    error: u128,
    dropped: u128,
    hang: u128,
    seed: u64,
}

impl FaultConfig {
    /// A builder with every rate at 0.
    pub fn builder() -> FaultConfigBuilder {
        FaultConfigBuilder::default()
    }

    /// What to do with the request whose draws start at stream state `state`.
    fn decide(&self, state: u64) -> (Action, Option<Duration>) {
        let draw = |k: u64| u128::from(mix(state.wrapping_add(k.wrapping_mul(GAMMA))));
        let fault = draw(1);
        let action = if fault < self.error {
            Action::Error
        } else if fault < self.dropped {
            Action::DropConnection
        } else if fault < self.hang {
            Action::Hang
        } else {
            Action::Pass
        };
        let delay = (draw(2) < self.latency).then(|| {
            let span = u128::from(self.max_ns - self.min_ns) + 1;
            // Uniform enough: the modulo bias is below 2^-64 * span.
            let extra = (draw(3) % span) as u64;
            Duration::from_nanos(self.min_ns + extra)
        });
        (action, delay)
    }
}

/// What fault injection does to one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    Pass,
    Error,
    DropConnection,
    Hang,
}

impl Action {
    /// The action's name in a call's span (`decision`).
    fn label(self) -> &'static str {
        match self {
            Action::Pass => "pass",
            Action::Error => "error",
            Action::DropConnection => "drop_connection",
            Action::Hang => "hang",
        }
    }
}

/// How injected failures are turned into the service's error type.
///
/// [`WrapFaults`] (the default) gives [`TenlivesError<E>`]; a closure
/// `Fn(InjectedFault) -> E` gives `E` itself.
pub trait FaultError<E> {
    /// The error type of the faulty service.
    type Error;
    /// The wrapped service's own error.
    fn inner(&self, error: E) -> Self::Error;
    /// An injected failure.
    fn injected(&self, fault: InjectedFault) -> Self::Error;
}

/// Injected failures are [`TenlivesError::Injected`]; the wrapped service's
/// errors are [`TenlivesError::Inner`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WrapFaults;

impl<E> FaultError<E> for WrapFaults {
    type Error = TenlivesError<E>;
    #[inline]
    fn inner(&self, error: E) -> TenlivesError<E> {
        TenlivesError::Inner(error)
    }
    #[inline]
    fn injected(&self, fault: InjectedFault) -> TenlivesError<E> {
        TenlivesError::Injected(fault)
    }
}

impl<E, F: Fn(InjectedFault) -> E> FaultError<E> for F {
    type Error = E;
    #[inline]
    fn inner(&self, error: E) -> E {
        error
    }
    #[inline]
    fn injected(&self, fault: InjectedFault) -> E {
        self(fault)
    }
}

struct Shared<M> {
    config: FaultConfig,
    /// The SplitMix64 stream: each request takes `DRAWS` steps of it.
    stream: AtomicU64,
    errors: M,
}

/// A tower [`Layer`] that injects faults. See the [module documentation](self).
///
/// Every service made by one layer value draws from one stream.
pub struct FaultLayer<M = WrapFaults> {
    shared: Arc<Shared<M>>,
}

impl<M> Clone for FaultLayer<M> {
    fn clone(&self) -> Self {
        FaultLayer {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<M> fmt::Debug for FaultLayer<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultLayer")
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

impl FaultLayer {
    /// Injects faults as `config` says, as [`TenlivesError::Injected`].
    pub fn new(config: FaultConfig) -> Self {
        Self::with_errors(config, WrapFaults)
    }
}

impl<M> FaultLayer<M> {
    /// Injects faults as `config` says, made into errors by `errors` (see
    /// [`FaultError`]).
    pub fn with_errors(config: FaultConfig, errors: M) -> Self {
        FaultLayer {
            shared: Arc::new(Shared {
                config,
                stream: AtomicU64::new(config.seed),
                errors,
            }),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &FaultConfig {
        &self.shared.config
    }
}

impl<S, M> Layer<S> for FaultLayer<M> {
    type Service = FaultInjection<S, M>;

    fn layer(&self, inner: S) -> Self::Service {
        FaultInjection {
            inner,
            shared: Arc::clone(&self.shared),
        }
    }
}

/// A service with faults injected. Made by [`FaultLayer`].
pub struct FaultInjection<S, M = WrapFaults> {
    inner: S,
    shared: Arc<Shared<M>>,
}

impl<S: Clone, M> Clone for FaultInjection<S, M> {
    fn clone(&self) -> Self {
        FaultInjection {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S: fmt::Debug, M> fmt::Debug for FaultInjection<S, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultInjection")
            .field("inner", &self.inner)
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

impl<S, Req, M> Service<Req> for FaultInjection<S, M>
where
    S: Service<Req>,
    M: FaultError<S::Error> + Clone,
{
    type Response = S::Response;
    type Error = M::Error;
    type Future = FaultFuture<S::Future, M>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let errors = &self.shared.errors;
        self.inner.poll_ready(cx).map_err(|e| errors.inner(e))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let shared = &*self.shared;
        // ordering: Relaxed; the stream state is the only data it carries.
        let state = shared
            .stream
            .fetch_add(DRAWS.wrapping_mul(GAMMA), Ordering::Relaxed);
        let (action, delay) = shared.config.decide(state);
        let span = call_span!("tenlives.fault", "fault");
        span.decided(action.label());
        let inner = match action {
            Action::Pass | Action::DropConnection => {
                let _entered = span.enter();
                Some(self.inner.call(req))
            }
            Action::Error | Action::Hang => None,
        };
        FaultFuture {
            delay: delay.map(tokio::time::sleep),
            inner,
            action,
            errors: shared.errors.clone(),
            span,
        }
    }
}

pin_project! {
    /// The response future of a [`FaultInjection`] service.
    #[must_use = "futures do nothing unless polled"]
    pub struct FaultFuture<F, M> {
        #[pin]
        delay: Option<Sleep>,
        #[pin]
        inner: Option<F>,
        action: Action,
        errors: M,
        span: CallSpan,
    }
}

impl<F, M> fmt::Debug for FaultFuture<F, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultFuture")
            .field("action", &self.action)
            .field("delayed", &self.delay.is_some())
            .finish_non_exhaustive()
    }
}

impl<F, Res, E, M> Future for FaultFuture<F, M>
where
    F: Future<Output = Result<Res, E>>,
    M: FaultError<E>,
{
    type Output = Result<Res, M::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let _entered = this.span.enter();
        if let Some(delay) = this.delay.as_mut().as_pin_mut() {
            std::task::ready!(delay.poll(cx));
            this.delay.set(None);
        }
        match *this.action {
            // Never completes, and never needs waking.
            Action::Hang => Poll::Pending,
            Action::Error => {
                this.span.outcome("error");
                Poll::Ready(Err(this.errors.injected(InjectedFault::Error)))
            }
            Action::Pass | Action::DropConnection => {
                let Some(inner) = this.inner.as_mut().as_pin_mut() else {
                    // Polled after completion: the caller's bug.
                    return Poll::Pending;
                };
                let result = std::task::ready!(inner.poll(cx));
                this.inner.set(None);
                match this.action {
                    Action::DropConnection => this.span.outcome("error"),
                    _ => this.span.ended(&result),
                }
                Poll::Ready(match this.action {
                    Action::DropConnection => {
                        Err(this.errors.injected(InjectedFault::ConnectionDropped))
                    }
                    _ => result.map_err(|e| this.errors.inner(e)),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_validated() {
        assert!(matches!(
            FaultConfig::builder().error(1.5).build(),
            Err(ConfigError::InvalidFraction {
                field: "error rate",
                ..
            })
        ));
        assert!(FaultConfig::builder().hang(f64::NAN).build().is_err());
        assert!(matches!(
            FaultConfig::builder().error(0.6).hang(0.6).build(),
            Err(ConfigError::InvalidFraction { .. })
        ));
        assert!(matches!(
            FaultConfig::builder()
                .latency_between(0.5, Duration::from_secs(2), Duration::from_secs(1))
                .build(),
            Err(ConfigError::CapBelowBase { .. })
        ));
        assert!(
            FaultConfig::builder()
                .error(0.5)
                .connection_drop(0.5)
                .build()
                .is_ok()
        );
    }

    #[test]
    fn rate_one_always_and_rate_zero_never() {
        let always = FaultConfig::builder()
            .error(1.0)
            .latency(1.0, Duration::from_millis(1))
            .build()
            .unwrap();
        let never = FaultConfig::builder().build().unwrap();
        for state in (0..1000u64).map(|i| i.wrapping_mul(0x1234_5678_9ABC_DEF1)) {
            assert_eq!(
                always.decide(state),
                (Action::Error, Some(Duration::from_millis(1)))
            );
            assert_eq!(never.decide(state), (Action::Pass, None));
        }
    }

    #[test]
    fn delays_stay_in_their_range() {
        let (min, max) = (Duration::from_millis(10), Duration::from_millis(20));
        let c = FaultConfig::builder()
            .latency_between(1.0, min, max)
            .build()
            .unwrap();
        let mut seen_low = false;
        let mut seen_high = false;
        for i in 0..10_000u64 {
            let (_, delay) = c.decide(i.wrapping_mul(DRAWS.wrapping_mul(GAMMA)));
            let d = delay.unwrap();
            assert!(min <= d && d <= max);
            seen_low |= d < Duration::from_millis(11);
            seen_high |= d > Duration::from_millis(19);
        }
        assert!(seen_low && seen_high, "the whole range is used");
    }
}
