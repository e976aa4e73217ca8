//! Record request traffic, replay it in virtual time against a candidate
//! configuration, and run a candidate beside the live one (shadow).
//!
//! - [`Recorder`] and [`RecordLayer`]: a bounded, lock-free capture of
//!   requests (arrival, key, outcome, latency, retry) and a tower layer
//!   that fills it; [`Trace`] is its text form.
//! - [`Candidate`]: the policies a [`ConfigSet`](crate::ConfigSet) gives
//!   one instance name (breaker, rate limiter, bulkhead, retry budget,
//!   throttle), deciding in a tenlives stack's order.
//! - [`replay()`]: a trace against a candidate on a `ManualClock`; the
//!   same trace and configuration give the same [`Replay`], byte for byte
//!   in [`Replay::render`].
//! - [`ShadowLayer`]: a candidate beside the live service, counting its
//!   disagreements ([`ShadowStats`]).
//! - [`Canary`] and [`CanaryLayer`]: a candidate taking a share of the
//!   traffic, promoted into the registry's live configuration or rolled
//!   back by guardrails over its windows, every step audited.
//!
//! ```
//! use tenlives_ops::ConfigSet;
//! use tenlives_ops::config::{FileSpec, RateLimiterSpec};
//! use tenlives_ops::replay::{Candidate, Decision, Stage, Trace, replay};
//!
//! // Three requests within 2 µs; the third is a retry that failed.
//! let trace = Trace::parse("# tenlives trace v1\n0 1 ok 1000\n1000 1 ok 1000\n2000 2 err 5000 retry\n")?;
//! let mut spec = FileSpec::default();
//! spec.rate_limiter.configs.insert(
//!     "default".into(),
//!     RateLimiterSpec { rate: Some(1), burst: Some(2), ..Default::default() },
//! );
//! let candidate = Candidate::from_config(&ConfigSet::from_file_spec(&spec)?, "api")?;
//! let run = replay(&trace, &candidate, 1_000_000_000);
//! assert_eq!(run.decisions[2], Decision::Rejected(Stage::RateLimit));
//! assert_eq!((run.admitted(), run.rejected_total()), (2, 1));
//! assert_eq!(run.render(), replay(&trace, &Candidate::from_config(&ConfigSet::from_file_spec(&spec)?, "api")?, 1_000_000_000).render());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! `docs/replay.md` in the repository states the rules.

pub mod canary;
pub mod candidate;
pub mod layer;
pub mod run;
pub mod shadow;
pub mod trace;

pub use canary::{
    Arm, Breach, Canary, CanaryError, CanaryEvent, CanaryFuture, CanaryLayer, CanaryService,
    CanaryStep, Guardrails, Phase, WindowStats,
};
pub use candidate::{Candidate, CandidateError, Stage, Token};
pub use layer::{RecordFuture, RecordLayer, RecordService, Tag, stack_outcome};
pub use run::{Bucket, Decision, MAX_BUCKETS, Replay, Transition, format_ns, replay};
pub use shadow::{ShadowCounts, ShadowFuture, ShadowLayer, ShadowService, ShadowStats};
pub use trace::{Recorder, TRACE_HEADER, Trace, TraceError, TraceOutcome, TraceRecord};
