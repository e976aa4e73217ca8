//! Configuration files: TOML and YAML in the shape of Resilience4j's
//! (`<kind>.configs.<name>`, `<kind>.instances.<name>`, `base_config`).

mod load;
mod node;
pub mod spec;

pub use load::{ConfigSet, Format, LoadError, Resolved};
pub use spec::{
    AdaptiveLimitConfig, AdaptiveLimitSpec, AdmissionQueueConfig, AdmissionQueueSpec, BreakerSpec,
    BulkheadConfig, BulkheadSpec, Dur, FileSpec, OrOff, OverloadSpec, RateLimiterSpec,
    RetryBudgetSpec, Section, Spec, StackConfig, StackRetryConfig, StackSpec, ThrottleSpec,
};
