//! Shared set-up for the loom models in `tests/`.
//!
//! Run them with
//!
//! ```sh
//! RUSTFLAGS="--cfg tenlives_loom" cargo test --release -p tenlives-loom-tests
//! ```
//!
//! `--cfg tenlives_loom` switches the engine's sync shim to loom's atomics;
//! the models are compiled only then. Each model names the invariant of
//! `docs/guarantees.md` it checks and the preemption bound it explores.
#![deny(missing_docs)]

/// Runs `f` under loom with at most `preemptions` preemptions per execution,
/// unless `LOOM_MAX_PREEMPTIONS` in the environment says otherwise.
#[cfg(tenlives_loom)]
pub fn model<F>(preemptions: usize, f: F)
where
    F: Fn() + Sync + Send + 'static,
{
    let mut builder = loom::model::Builder::new();
    if std::env::var_os("LOOM_MAX_PREEMPTIONS").is_none() {
        builder.preemption_bound = Some(preemptions);
    }
    builder.check(f);
}
