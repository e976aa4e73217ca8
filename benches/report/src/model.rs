//! From benchmark ids to tables: which operation and subject an id names,
//! whether the subject is tenlives, a peer or a floor, and which job (table
//! section) an operation belongs to.
//!
//! Ids follow the bench files' convention: `<area>/<operation>/<subject>`,
//! then a table size or capacity when the benchmark has one, then
//! `1_thread` or `2_threads` when it runs on both. Examples:
//! `breaker/closed_success/tenlives_consecutive/2_threads`,
//! `scaling/keyed/tenlives/1000000`, `breaker/open_rejection/failsafe_tripped`.

use std::collections::BTreeMap;

use crate::results::Results;

/// How many threads a figure was measured on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Threads {
    /// One thread: `1_thread`, or a benchmark that runs on one thread only.
    One,
    /// Two threads sharing the subject: `2_threads`.
    Two,
}

/// One benchmark id, taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Id {
    /// The operation: the id's first two parts (`breaker/closed_success`).
    pub op: String,
    /// What performs it (`tenlives_consecutive`); `tenlives` when the id
    /// names none (`events/emit_capacity/64`).
    pub subject: String,
    /// The table size or capacity, when the benchmark sweeps one.
    pub param: Option<u64>,
    /// The threads.
    pub threads: Threads,
}

impl Id {
    /// Takes `id` apart; `None` if it has fewer than two parts.
    pub fn parse(id: &str) -> Option<Id> {
        let mut parts: Vec<&str> = id.split('/').collect();
        let threads = match parts.last() {
            Some(&"1_thread") => {
                parts.pop();
                Threads::One
            }
            Some(&"2_threads") => {
                parts.pop();
                Threads::Two
            }
            _ => Threads::One,
        };
        let param = match parts.last().map(|p| p.parse::<u64>()) {
            Some(Ok(n)) if parts.len() > 2 => {
                parts.pop();
                Some(n)
            }
            _ => None,
        };
        if parts.len() < 2 {
            return None;
        }
        let subject = if parts.len() > 2 {
            parts[2..].join("/")
        } else {
            "tenlives".to_owned()
        };
        Some(Id {
            op: parts[..2].join("/"),
            subject,
            param,
            threads,
        })
    }
}

/// What a subject is, for the ratio column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// A floor or a reference point (`floor_*`, `bare*`, `design_*`,
    /// `*_reference`): shown, never compared.
    Floor,
    /// tenlives (`tenlives*`).
    Tenlives,
    /// A peer crate doing the same job.
    Peer,
}

impl Kind {
    /// The kind of a subject, from its name.
    pub fn of(subject: &str) -> Kind {
        if subject.starts_with("tenlives") {
            Kind::Tenlives
        } else if subject.starts_with("floor")
            || subject.starts_with("bare")
            || subject.starts_with("design_")
            || subject.ends_with("_reference")
        {
            Kind::Floor
        } else {
            Kind::Peer
        }
    }
}

/// One subject's figures for one operation.
#[derive(Debug, Clone)]
pub struct Subject {
    /// Its name in the benchmark ids.
    pub name: String,
    /// tenlives, peer or floor.
    pub kind: Kind,
    /// ns per operation on one thread.
    pub one: Option<f64>,
    /// ns per operation per thread on two threads.
    pub two: Option<f64>,
    /// ns per operation by table size or capacity (1 thread).
    pub by_param: BTreeMap<u64, f64>,
    /// Instructions per operation, where `iai.rs` counts this one.
    pub instructions: Option<u64>,
    /// Heap allocations per operation, where `allocs.rs` counts this one.
    pub allocations: Option<f64>,
}

/// One operation and every subject timed doing it.
#[derive(Debug, Clone)]
pub struct Operation {
    /// `area/operation`.
    pub id: String,
    /// Floors first, then tenlives, then the peers.
    pub subjects: Vec<Subject>,
}

impl Operation {
    /// Whether the operation sweeps a table size or capacity.
    pub fn is_sweep(&self) -> bool {
        self.subjects.iter().any(|s| !s.by_param.is_empty())
    }
}

/// Which iai-callgrind benchmark (`benches/benches/iai.rs`) counts the
/// instructions of which criterion subject: `(iai name, operation,
/// subject)`. A name may serve several operations (the floor does).
pub const INSTRUCTIONS: [(&str, &str, &str); 33] = [
    (
        "tenlives_breaker_time_window",
        "breaker/closed_success",
        "tenlives_rate_time_window",
    ),
    (
        "tenlives_breaker_time_window_no_clock_read",
        "breaker/closed_success",
        "tenlives_rate_time_window_no_clock_read",
    ),
    (
        "tenlives_breaker_consecutive",
        "breaker/closed_success",
        "tenlives_consecutive",
    ),
    (
        "tenlives_breaker_consecutive_no_clock_read",
        "breaker/closed_success",
        "tenlives_consecutive_no_clock_read",
    ),
    (
        "failsafe_breaker_default",
        "breaker/closed_success",
        "failsafe_default",
    ),
    (
        "failsafe_breaker_consecutive",
        "breaker/closed_success",
        "failsafe_consecutive",
    ),
    (
        "floor_fetch_add",
        "breaker/closed_success",
        "floor_fetch_add",
    ),
    (
        "tenlives_breaker_rejection",
        "breaker/open_rejection",
        "tenlives_forced_open",
    ),
    (
        "tenlives_breaker_rejection_no_clock_read",
        "breaker/open_rejection",
        "tenlives_forced_open_no_clock_read",
    ),
    (
        "tenlives_breaker_rejection",
        "scaling/breaker_rejection",
        "tenlives_forced_open",
    ),
    (
        "tenlives_breaker_rejection_no_clock_read",
        "scaling/breaker_rejection",
        "tenlives_forced_open_no_clock_read",
    ),
    ("tenlives_bulkhead", "bulkhead/acquire_release", "tenlives"),
    (
        "tokio_semaphore",
        "bulkhead/acquire_release",
        "tokio_semaphore",
    ),
    (
        "floor_fetch_add",
        "bulkhead/acquire_release",
        "floor_fetch_add",
    ),
    (
        "tokio_semaphore",
        "queue/acquire_release",
        "tokio_try_acquire",
    ),
    (
        "tenlives_retry_budget",
        "retry_budget/deposit_withdraw",
        "tenlives",
    ),
    (
        "tenlives_retry_budget_no_clock_read",
        "retry_budget/deposit_withdraw",
        "tenlives_no_clock_read",
    ),
    ("tenlives_throttle", "scaling/throttle", "tenlives"),
    (
        "tenlives_throttle_no_clock_read",
        "scaling/throttle",
        "tenlives_no_clock_read",
    ),
    ("tenlives_event_push", "events/emit", "tenlives_ring"),
    (
        "crossbeam_array_queue_force_push",
        "events/emit",
        "crossbeam_array_queue",
    ),
    ("floor_fetch_add", "events/emit", "floor_fetch_add"),
    (
        "tenlives_rate_check",
        "rate/check_admitted",
        "tenlives_quanta_clock",
    ),
    (
        "tenlives_rate_check_no_clock_read",
        "rate/check_admitted",
        "tenlives",
    ),
    (
        "governor_direct_check",
        "rate/check_admitted",
        "governor_quanta_clock",
    ),
    (
        "governor_direct_check_fake_clock",
        "rate/check_admitted",
        "governor_fake_clock",
    ),
    (
        "tenlives_rate_check_n_no_clock_read",
        "rate/check_n8",
        "tenlives",
    ),
    ("governor_check_n", "rate/check_n8", "governor_quanta_clock"),
    (
        "governor_check_n_fake_clock",
        "rate/check_n8",
        "governor_fake_clock",
    ),
    (
        "tenlives_keyed_check_1k_no_clock_read",
        "rate/keyed_1k",
        "tenlives",
    ),
    (
        "governor_keyed_check_1k_fake_clock",
        "rate/keyed_1k",
        "governor_fake_clock_foldhash",
    ),
    ("floor_fetch_add", "rate/check_admitted", "floor_fetch_add"),
    (
        "tenlives_rate_check_no_clock_read",
        "config/rate_check",
        "unchanged",
    ),
];

/// One section of the report: a job and the operations that do it.
#[derive(Debug, Clone, Copy)]
pub struct Job {
    /// The section's title.
    pub title: &'static str,
    /// The operations it takes: every operation id starting with one of
    /// these (each operation goes to the first job that takes it).
    pub prefixes: &'static [&'static str],
    /// The bench files that time it.
    pub benches: &'static [&'static str],
}

/// The sections, in order. Operations no job takes go to a last section,
/// "Other".
pub const JOBS: [Job; 9] = [
    Job {
        title: "Circuit breaker",
        prefixes: &[
            "breaker/",
            "scaling/breaker_rejection",
            "scaling/half_open_probe",
        ],
        benches: &["breaker", "scaling"],
    },
    Job {
        title: "Bulkhead, retry budget, throttle, adaptive limit",
        prefixes: &[
            "bulkhead/",
            "retry_budget/",
            "scaling/throttle",
            "scaling/adaptive",
        ],
        benches: &["bulkhead", "scaling"],
    },
    Job {
        title: "Rate limiter",
        prefixes: &["rate/check"],
        benches: &["rate"],
    },
    Job {
        title: "Keyed rate limiter",
        prefixes: &["rate/keyed", "scaling/keyed"],
        benches: &["rate", "scaling"],
    },
    Job {
        title: "Admission queue",
        prefixes: &["queue/"],
        benches: &["queue"],
    },
    Job {
        title: "Events",
        prefixes: &["events/", "scaling/ring_push"],
        benches: &["events", "scaling"],
    },
    Job {
        title: "Live configuration (config cell)",
        prefixes: &["config/"],
        benches: &["config"],
    },
    Job {
        title: "Tower layers",
        prefixes: &["layers/"],
        benches: &["layers"],
    },
    Job {
        title: "Tower layers beside ninelives (tokio 1.48 build)",
        prefixes: &["ninelives_peer/"],
        benches: &["ninelives"],
    },
];

/// Builds the operations from the results, each subject with its times,
/// instruction count and allocation count.
pub fn operations(results: &Results) -> Vec<Operation> {
    let mut ops: BTreeMap<String, BTreeMap<String, Subject>> = BTreeMap::new();
    for (id, ns) in &results.times {
        let Some(id) = Id::parse(id) else { continue };
        let subject = ops
            .entry(id.op.clone())
            .or_default()
            .entry(id.subject.clone())
            .or_insert_with(|| Subject {
                kind: Kind::of(&id.subject),
                name: id.subject.clone(),
                one: None,
                two: None,
                by_param: BTreeMap::new(),
                instructions: None,
                allocations: None,
            });
        match (id.param, id.threads) {
            (Some(p), _) => {
                subject.by_param.insert(p, *ns);
            }
            (None, Threads::One) => subject.one = Some(*ns),
            (None, Threads::Two) => subject.two = Some(*ns),
        }
    }
    for (name, op, subject) in INSTRUCTIONS.iter() {
        let count = results.instructions.iter().find(|(n, _)| n == name);
        if let (Some((_, ir)), Some(s)) =
            (count, ops.get_mut(*op).and_then(|o| o.get_mut(*subject)))
        {
            s.instructions = Some(*ir);
        }
    }
    for (key, per_op) in &results.allocations {
        if let Some(id) = Id::parse(key)
            && let Some(s) = ops.get_mut(&id.op).and_then(|o| o.get_mut(&id.subject))
        {
            s.allocations = Some(*per_op);
        }
    }
    ops.into_iter()
        .map(|(id, subjects)| {
            let mut subjects: Vec<Subject> = subjects.into_values().collect();
            subjects.sort_by(|a, b| a.kind.cmp(&b.kind).then_with(|| a.name.cmp(&b.name)));
            Operation { id, subjects }
        })
        .collect()
}

/// The instruction counts that no time row shows.
pub fn unplaced_instructions(results: &Results) -> Vec<(String, u64)> {
    results
        .instructions
        .iter()
        .filter(|(n, _)| !INSTRUCTIONS.iter().any(|m| m.0 == n))
        .cloned()
        .collect()
}

/// The operations of each job, in [`JOBS`] order, then those no job takes
/// under "Other"; jobs without an operation are left out.
pub fn by_job(ops: Vec<Operation>) -> Vec<(String, &'static [&'static str], Vec<Operation>)> {
    let mut sections: Vec<(String, &'static [&'static str], Vec<Operation>)> = JOBS
        .iter()
        .map(|j| (j.title.to_owned(), j.benches, Vec::new()))
        .collect();
    let mut other = Vec::new();
    for op in ops {
        match JOBS
            .iter()
            .position(|j| j.prefixes.iter().any(|p| op.id.starts_with(p)))
        {
            Some(i) => sections[i].2.push(op),
            None => other.push(op),
        }
    }
    sections.push(("Other".to_owned(), &[], other));
    sections.retain(|s| !s.2.is_empty());
    sections
}

/// Name endings that say how a row calls its subject rather than which
/// subject it is: a row ending in one is compared only with peers ending in
/// the same, and a row without with peers without (an always-ready
/// secondary row is never the peer of a headline row around a pending
/// future, nor the other way round).
const MODES: [&str; 1] = ["_always_ready"];

/// The mode ending of `name`, if it has one.
fn mode(name: &str) -> Option<&'static str> {
    MODES.into_iter().find(|m| name.ends_with(m))
}

/// The peers a tenlives subject of `op` is compared with: only peers of the
/// same mode (see [`MODES`]). A variant is compared with the same variant:
/// `tenlives_quanta_clock` with the peers named `*_quanta_clock`,
/// `tenlives_pending_once` with `*_pending_once`. A subject whose variant no
/// peer has is compared with the peers that are not some other tenlives
/// subject's variant.
pub fn comparable_peers<'a>(op: &'a Operation, tenlives: &str) -> Vec<&'a Subject> {
    let peers: Vec<&Subject> = op
        .subjects
        .iter()
        .filter(|s| s.kind == Kind::Peer && mode(&s.name) == mode(tenlives))
        .collect();
    let variant = tenlives.strip_prefix("tenlives").unwrap_or("");
    if !variant.is_empty() {
        let same: Vec<&Subject> = peers
            .iter()
            .copied()
            .filter(|p| p.name.ends_with(variant))
            .collect();
        if !same.is_empty() {
            return same;
        }
    }
    let paired: Vec<&str> = op
        .subjects
        .iter()
        .filter(|s| s.kind == Kind::Tenlives)
        .filter_map(|s| s.name.strip_prefix("tenlives"))
        .filter(|v| !v.is_empty() && peers.iter().any(|p| p.name.ends_with(v)))
        .collect();
    peers
        .into_iter()
        .filter(|p| !paired.iter().any(|v| p.name.ends_with(v)))
        .collect()
}

/// The fastest of the peers `tenlives` is compared with in `op`, at
/// `threads`: its name and time.
pub fn best_peer<'a>(
    op: &'a Operation,
    tenlives: &str,
    threads: Threads,
) -> Option<(&'a str, f64)> {
    comparable_peers(op, tenlives)
        .into_iter()
        .filter_map(|s| {
            let t = match threads {
                Threads::One => s.one,
                Threads::Two => s.two,
            }?;
            Some((s.name.as_str(), t))
        })
        .min_by(|a, b| a.1.total_cmp(&b.1))
}

/// The peer with the fewest instructions among those `tenlives` is
/// compared with in `op`: its name and count.
pub fn fewest_instructions_peer<'a>(op: &'a Operation, tenlives: &str) -> Option<(&'a str, u64)> {
    comparable_peers(op, tenlives)
        .into_iter()
        .filter_map(|s| Some((s.name.as_str(), s.instructions?)))
        .min_by_key(|p| p.1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(op: &str, subject: &str, param: Option<u64>, threads: Threads) -> Option<Id> {
        Some(Id {
            op: op.to_owned(),
            subject: subject.to_owned(),
            param,
            threads,
        })
    }

    #[test]
    fn takes_ids_apart() {
        assert_eq!(
            Id::parse("breaker/closed_success/tenlives_consecutive/2_threads"),
            id(
                "breaker/closed_success",
                "tenlives_consecutive",
                None,
                Threads::Two
            )
        );
        assert_eq!(
            Id::parse("breaker/open_rejection/failsafe_tripped"),
            id(
                "breaker/open_rejection",
                "failsafe_tripped",
                None,
                Threads::One
            )
        );
        assert_eq!(
            Id::parse("scaling/keyed/tenlives/1000000"),
            id("scaling/keyed", "tenlives", Some(1_000_000), Threads::One)
        );
        assert_eq!(
            Id::parse("events/emit_capacity/64"),
            id("events/emit_capacity", "tenlives", Some(64), Threads::One)
        );
        assert_eq!(
            Id::parse("queue/enqueue_grant/tokio/1_thread"),
            id("queue/enqueue_grant", "tokio", None, Threads::One)
        );
        assert_eq!(Id::parse("lonely"), None);
    }

    #[test]
    fn sorts_subjects_and_finds_the_best_peer() {
        let results = Results {
            times: vec![
                ("op/x/tenlives/1_thread".to_owned(), 5.0),
                ("op/x/tenlives/2_threads".to_owned(), 9.0),
                ("op/x/slow_peer/1_thread".to_owned(), 30.0),
                ("op/x/slow_peer/2_threads".to_owned(), 20.0),
                ("op/x/fast_peer/1_thread".to_owned(), 10.0),
                ("op/x/fast_peer/2_threads".to_owned(), 40.0),
                ("op/x/floor_fetch_add/1_thread".to_owned(), 1.0),
            ],
            instructions: vec![],
            allocations: vec![("op/x/slow_peer".to_owned(), 2.0)],
        };
        let ops = operations(&results);
        assert_eq!(ops.len(), 1);
        let names: Vec<&str> = ops[0].subjects.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            ["floor_fetch_add", "tenlives", "fast_peer", "slow_peer"]
        );
        assert_eq!(
            best_peer(&ops[0], "tenlives", Threads::One),
            Some(("fast_peer", 10.0))
        );
        assert_eq!(
            best_peer(&ops[0], "tenlives", Threads::Two),
            Some(("slow_peer", 20.0))
        );
        assert_eq!(ops[0].subjects[3].allocations, Some(2.0));
        assert!(!ops[0].is_sweep());
    }

    #[test]
    fn compares_each_variant_with_the_same_variant() {
        let subject = |name: &str| Subject {
            name: name.to_owned(),
            kind: Kind::of(name),
            one: Some(1.0),
            two: None,
            by_param: BTreeMap::new(),
            instructions: None,
            allocations: None,
        };
        let op = Operation {
            id: "layers/timeout".to_owned(),
            subjects: [
                "tenlives",
                "tenlives_pending_once",
                "tenlives_other",
                "tower",
                "tower_pending_once",
            ]
            .map(subject)
            .to_vec(),
        };
        let names = |t: &str| -> Vec<String> {
            comparable_peers(&op, t)
                .iter()
                .map(|s| s.name.clone())
                .collect()
        };
        assert_eq!(names("tenlives"), ["tower"]);
        assert_eq!(names("tenlives_pending_once"), ["tower_pending_once"]);
        assert_eq!(names("tenlives_other"), ["tower"]);
    }

    #[test]
    fn a_headline_row_is_never_compared_with_an_always_ready_peer() {
        let subject = |name: &str, one: f64| Subject {
            name: name.to_owned(),
            kind: Kind::of(name),
            one: Some(one),
            two: None,
            by_param: BTreeMap::new(),
            instructions: None,
            allocations: None,
        };
        // As `layers/stack`: the always-ready peer is the fastest row, and
        // no peer shares a headline subject's variant.
        let op = Operation {
            id: "layers/stack".to_owned(),
            subjects: vec![
                subject("tenlives_stack", 265.0),
                subject("tenlives_stack_always_ready", 108.0),
                subject("tower_timeout_limit", 271.0),
                subject("tower_timeout_limit_always_ready", 70.6),
                subject("tower_resilience", 919.0),
                subject("tower_resilience_always_ready", 637.0),
            ],
        };
        assert_eq!(
            best_peer(&op, "tenlives_stack", Threads::One),
            Some(("tower_timeout_limit", 271.0))
        );
        assert_eq!(
            best_peer(&op, "tenlives_stack_always_ready", Threads::One),
            Some(("tower_timeout_limit_always_ready", 70.6))
        );
    }

    #[test]
    fn every_job_takes_its_operations_and_the_rest_go_to_other() {
        let op = |id: &str| Operation {
            id: id.to_owned(),
            subjects: vec![],
        };
        let sections = by_job(vec![
            op("breaker/closed_success"),
            op("scaling/keyed"),
            op("new/thing"),
        ]);
        let titles: Vec<&str> = sections.iter().map(|s| s.0.as_str()).collect();
        assert_eq!(titles, ["Circuit breaker", "Keyed rate limiter", "Other"]);
    }
}
