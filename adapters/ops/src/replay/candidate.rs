//! A candidate configuration as live policies: the engine's primitives
//! built from a [`ConfigSet`], deciding on requests in the order a tenlives
//! stack does, with no clock of their own (every call takes the time).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Mutex, PoisonError};

use tenlives_engine::breaker::{BreakerState, CircuitBreaker, Outcome, RawPermit};
use tenlives_engine::bulkhead::{Bulkhead, RawBulkheadPermit};
use tenlives_engine::rate::RateLimiter;
use tenlives_engine::retry::RetryBudget;
use tenlives_engine::throttle::Throttle;
use tenlives_engine::time::Timestamp;

use crate::config::{ConfigSet, Section};

/// The stage of a candidate that refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Stage {
    /// The retry budget had nothing left for a retry.
    RetryBudget,
    /// The circuit breaker was open (or half-open with no probe free).
    Breaker,
    /// The rate limiter had no token.
    RateLimit,
    /// The concurrency limit was reached.
    Concurrency,
    /// The client-side throttle refused it locally.
    Throttle,
}

impl Stage {
    /// Every stage, in the order a request meets them.
    pub const ALL: [Stage; 5] = [
        Stage::RetryBudget,
        Stage::Breaker,
        Stage::RateLimit,
        Stage::Concurrency,
        Stage::Throttle,
    ];

    /// Its name in reports: `retry_budget`, `circuit_breaker`, ...
    pub fn name(self) -> &'static str {
        match self {
            Stage::RetryBudget => "retry_budget",
            Stage::Breaker => "circuit_breaker",
            Stage::RateLimit => "rate_limiter",
            Stage::Concurrency => "bulkhead",
            Stage::Throttle => "throttle",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// Why a candidate could not be built from a configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CandidateError(pub String);

impl fmt::Display for CandidateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CandidateError {}

/// What an admitted request holds until it ends.
#[derive(Debug)]
#[must_use = "hand the token back to `complete` or `release`"]
pub struct Token {
    breaker: Option<RawPermit>,
    bulkhead: Option<RawBulkheadPermit>,
    throttle: bool,
}

/// The policies of one configuration for one instance name: each kind the
/// file has a section for (`circuit_breaker`, `rate_limiter`, `bulkhead`,
/// `retry_budget`, `throttle`), with the settings
/// [`Resolved::for_instance`](crate::config::Resolved::for_instance) gives
/// that name. Kinds the file does not mention take no part.
///
/// Order of the stages: the retry budget (retries only: a first attempt
/// fills it), the breaker, the rate limiter, the concurrency limit, the
/// throttle. A refusal by a later stage hands back what the earlier ones
/// gave (a breaker permit is released uncounted; a rate limiter's token is
/// spent, as in a tenlives stack). The rate limiter is one for all keys,
/// or one per key with [`Candidate::rate_per_key`].
#[derive(Debug)]
pub struct Candidate {
    breaker: Option<CircuitBreaker>,
    rate: Option<RateLimiter>,
    /// With [`Candidate::rate_per_key`]: a limiter per key, each with the
    /// rate limiter's quota.
    keyed: Option<Mutex<BTreeMap<u64, RateLimiter>>>,
    bulkhead: Option<Bulkhead>,
    budget: Option<RetryBudget>,
    throttle: Option<Throttle>,
}

fn written<S>(section: &Section<S>) -> bool {
    !section.configs.is_empty() || !section.instances.is_empty()
}

fn pick<S: crate::config::Spec>(
    resolved: &crate::config::Resolved<S>,
    written: bool,
    instance: &str,
) -> Result<Option<S::Built>, CandidateError> {
    if !written {
        return Ok(None);
    }
    resolved
        .for_instance(instance)
        .map(|(_, built)| Some(built.clone()))
        .ok_or_else(|| {
            CandidateError(format!(
                "the `{}` section has no `configs.default` and no instance `{instance}`",
                S::SECTION
            ))
        })
}

impl Candidate {
    /// The policies `config` gives instance `instance`.
    ///
    /// # Errors
    ///
    /// When a section the file writes has nothing for `instance`, or when
    /// the file writes none of the five kinds.
    pub fn from_config(config: &ConfigSet, instance: &str) -> Result<Self, CandidateError> {
        let spec = &config.spec;
        let breaker = pick(
            &config.circuit_breaker,
            written(&spec.circuit_breaker),
            instance,
        )?;
        let rate = pick(&config.rate_limiter, written(&spec.rate_limiter), instance)?;
        let bulkhead = pick(&config.bulkhead, written(&spec.bulkhead), instance)?;
        let budget = pick(&config.retry_budget, written(&spec.retry_budget), instance)?;
        let throttle = pick(&config.throttle, written(&spec.throttle), instance)?;
        if breaker.is_none()
            && rate.is_none()
            && bulkhead.is_none()
            && budget.is_none()
            && throttle.is_none()
        {
            return Err(CandidateError(
                "the configuration has no circuit_breaker, rate_limiter, bulkhead, retry_budget or throttle section".into(),
            ));
        }
        Ok(Candidate {
            breaker: breaker.map(CircuitBreaker::new),
            rate: rate.map(RateLimiter::new),
            keyed: None,
            bulkhead: bulkhead
                .map(|b| Bulkhead::new(b.limit))
                .transpose()
                .map_err(|e| CandidateError(format!("bulkhead: {e}")))?,
            budget: budget.map(RetryBudget::new),
            throttle: throttle.map(Throttle::new),
        })
    }

    /// Gives each key its own rate limiter with the configured quota (as a
    /// registry's keyed rate-limiter family does), instead of one for all
    /// keys. For replays: a new key allocates its limiter, and each
    /// admission takes a lock. Nothing changes without a rate limiter.
    #[must_use]
    pub fn rate_per_key(mut self) -> Self {
        if self.rate.is_some() {
            self.keyed = Some(Mutex::new(BTreeMap::new()));
        }
        self
    }

    /// Whether each key has its own rate limiter.
    pub fn is_rate_per_key(&self) -> bool {
        self.keyed.is_some()
    }

    /// The candidate's breaker state, if it has a breaker.
    pub fn breaker_state(&self) -> Option<BreakerState> {
        self.breaker.as_ref().map(CircuitBreaker::state)
    }

    /// The stages this candidate has.
    pub fn stages(&self) -> Vec<Stage> {
        Stage::ALL
            .into_iter()
            .filter(|s| match s {
                Stage::RetryBudget => self.budget.is_some(),
                Stage::Breaker => self.breaker.is_some(),
                Stage::RateLimit => self.rate.is_some(),
                Stage::Concurrency => self.bulkhead.is_some(),
                Stage::Throttle => self.throttle.is_some(),
            })
            .collect()
    }

    /// Admits a request arriving at `now` (a retry when `retry`), or names
    /// the stage that refuses it. No allocation, no lock.
    ///
    /// # Errors
    ///
    /// The refusing [`Stage`].
    pub fn admit(&self, now: Timestamp, retry: bool) -> Result<Token, Stage> {
        self.admit_key(now, 0, retry)
    }

    /// As [`Candidate::admit`], for a request of `key` (which matters only
    /// with [`Candidate::rate_per_key`]).
    ///
    /// # Errors
    ///
    /// The refusing [`Stage`].
    pub fn admit_key(&self, now: Timestamp, key: u64, retry: bool) -> Result<Token, Stage> {
        if let Some(budget) = &self.budget {
            if retry {
                if !budget.try_withdraw(now) {
                    return Err(Stage::RetryBudget);
                }
            } else {
                budget.deposit(now);
            }
        }
        let breaker = match &self.breaker {
            Some(b) => Some(b.try_acquire_raw(now).map_err(|_| Stage::Breaker)?),
            None => None,
        };
        let mut token = Token {
            breaker,
            bulkhead: None,
            throttle: false,
        };
        let limited = match (&self.keyed, &self.rate) {
            (Some(keyed), Some(rate)) => keyed
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(key)
                .or_insert_with(|| RateLimiter::new(rate.quota()))
                .check(now)
                .is_err(),
            (None, Some(rate)) => rate.check(now).is_err(),
            (_, None) => false,
        };
        if limited {
            self.release(token);
            return Err(Stage::RateLimit);
        }
        if let Some(bulkhead) = &self.bulkhead {
            match bulkhead.try_acquire_raw() {
                Ok(p) => token.bulkhead = Some(p),
                Err(_) => {
                    self.release(token);
                    return Err(Stage::Concurrency);
                }
            }
        }
        if let Some(throttle) = &self.throttle {
            match throttle.try_admit(now) {
                Ok(ticket) => {
                    // The ticket is taken again at the end (percent 0 never
                    // refuses nor draws): the count happens there.
                    drop(ticket);
                    token.throttle = true;
                }
                Err(_) => {
                    self.release(token);
                    return Err(Stage::Throttle);
                }
            }
        }
        Ok(token)
    }

    /// The request holding `token` ended at `now` with `outcome`.
    pub fn complete(&self, token: Token, outcome: Outcome, now: Timestamp) {
        if let (Some(b), Some(p)) = (&self.breaker, token.breaker) {
            b.record(p, outcome, now);
        }
        if let (Some(b), Some(p)) = (&self.bulkhead, token.bulkhead) {
            b.release(p);
        }
        if token.throttle
            && let Some(t) = &self.throttle
            && let Ok(ticket) = t.try_admit_scaled(now, 0)
        {
            match outcome {
                Outcome::Failure => ticket.refused(now),
                _ => ticket.accepted(now),
            }
        }
    }

    /// The request holding `token` ended with no outcome to report: its
    /// permits go back, nothing is counted.
    pub fn release(&self, token: Token) {
        if let (Some(b), Some(p)) = (&self.breaker, token.breaker) {
            b.release(p);
        }
        if let (Some(b), Some(p)) = (&self.bulkhead, token.bulkhead) {
            b.release(p);
        }
    }
}
