//! Outcome classification: how a call's result counts for the policies.
//!
//! A circuit breaker counts failures, an adaptive limit treats failures as a
//! congestion signal, a throttle counts what the backend refused. What is a
//! failure depends on the service: for an HTTP client a `500` is one and a
//! `404` is not, though both arrive as `Ok(response)`. A [`Classify`] decides,
//! from the wrapped service's own `Result<Response, Error>`:
//!
//! - [`DefaultClassifier`]: `Ok` is a success, `Err` a failure;
//! - any closure `Fn(&Result<Response, Error>) -> Outcome`:
//!
//! ```
//! use tenlives_engine::breaker::Outcome;
//! use tenlives_tokio::Classify;
//!
//! struct Response { status: u16 }
//!
//! // 5xx counts against the dependency; 4xx is the caller's mistake and says
//! // nothing about the dependency's health, but it did answer: a success.
//! let by_status = |r: &Result<Response, std::io::Error>| match r {
//!     Ok(resp) if resp.status >= 500 => Outcome::Failure,
//!     Ok(_) => Outcome::Success,
//!     Err(_) => Outcome::Failure,
//! };
//! assert_eq!(by_status.classify(&Ok(Response { status: 503 })), Outcome::Failure);
//! assert_eq!(by_status.classify(&Ok(Response { status: 404 })), Outcome::Success);
//! ```
//!
//! [`Outcome::Ignored`] counts the call as nothing at all (a breaker frees
//! its probe slot, an adaptive limit takes no sample).

use tenlives_engine::breaker::Outcome;

/// Decides how a call's result counts: success, failure, or not at all.
///
/// Implemented by [`DefaultClassifier`] and by every closure
/// `Fn(&Result<Res, E>) -> Outcome`. It runs once per completed call, on the
/// request path: keep it cheap and free of allocation.
pub trait Classify<Res, E> {
    /// How `result` counts.
    fn classify(&self, result: &Result<Res, E>) -> Outcome;
}

/// `Ok` is a success, `Err` a failure.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DefaultClassifier;

impl<Res, E> Classify<Res, E> for DefaultClassifier {
    #[inline]
    fn classify(&self, result: &Result<Res, E>) -> Outcome {
        match result {
            Ok(_) => Outcome::Success,
            Err(_) => Outcome::Failure,
        }
    }
}

impl<Res, E, F> Classify<Res, E> for F
where
    F: Fn(&Result<Res, E>) -> Outcome,
{
    #[inline]
    fn classify(&self, result: &Result<Res, E>) -> Outcome {
        self(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_ok_success_err_failure() {
        let ok: Result<u8, ()> = Ok(1);
        assert_eq!(DefaultClassifier.classify(&ok), Outcome::Success);
        assert_eq!(
            DefaultClassifier.classify(&Err::<u8, ()>(())),
            Outcome::Failure
        );
    }

    #[test]
    fn closures_classify() {
        let ignore_errors = |r: &Result<u8, ()>| {
            if r.is_ok() {
                Outcome::Success
            } else {
                Outcome::Ignored
            }
        };
        assert_eq!(ignore_errors.classify(&Err(())), Outcome::Ignored);
    }
}
