//! Request traces: what a replay reads, what a [`Recorder`] captures.
//!
//! A trace is text, one request a line, sorted by arrival:
//!
//! ```text
//! # tenlives trace v1
//! <arrival ns> <key> <outcome> <latency ns> [retry]
//! ```
//!
//! `outcome` is `ok` (the dependency did its job), `err` (it failed),
//! `ign` (a call that says nothing about its health) or `shed` (the live
//! policy refused the request: its outcome is unknown). Lines starting with
//! `#` and blank lines are skipped. Writing a parsed trace gives back the
//! same bytes (for a trace written by [`Trace::write`]).

use std::fmt::{self, Write as _};
use std::time::{Duration, Instant};

use std::sync::atomic::{AtomicU64, Ordering};

/// The first line of a trace file.
pub const TRACE_HEADER: &str = "# tenlives trace v1";

/// How a recorded request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TraceOutcome {
    /// The dependency did its job.
    Ok,
    /// The dependency failed.
    Err,
    /// The call says nothing about the dependency's health.
    Ignored,
    /// The live policy refused it: the dependency never saw it, its outcome
    /// is unknown.
    Shed,
}

impl TraceOutcome {
    fn word(self) -> &'static str {
        match self {
            TraceOutcome::Ok => "ok",
            TraceOutcome::Err => "err",
            TraceOutcome::Ignored => "ign",
            TraceOutcome::Shed => "shed",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "ok" => TraceOutcome::Ok,
            "err" => TraceOutcome::Err,
            "ign" => TraceOutcome::Ignored,
            "shed" => TraceOutcome::Shed,
            _ => return None,
        })
    }

    fn code(self) -> u64 {
        match self {
            TraceOutcome::Ok => 0,
            TraceOutcome::Err => 1,
            TraceOutcome::Ignored => 2,
            TraceOutcome::Shed => 3,
        }
    }

    fn from_code(code: u64) -> Self {
        match code & 3 {
            0 => TraceOutcome::Ok,
            1 => TraceOutcome::Err,
            2 => TraceOutcome::Ignored,
            _ => TraceOutcome::Shed,
        }
    }
}

/// One recorded request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TraceRecord {
    /// When it arrived, in nanoseconds since the trace's origin.
    pub at_ns: u64,
    /// The caller's key (a tenant, a host, an endpoint hash); 0 for none.
    pub key: u64,
    /// How it ended.
    pub outcome: TraceOutcome,
    /// How long it took, in nanoseconds.
    pub latency_ns: u64,
    /// Whether it was a retry of an earlier request (it spends a retry
    /// budget rather than filling it).
    pub retry: bool,
}

/// A sequence of requests sorted by arrival.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Trace {
    /// The requests, sorted by `(at_ns, key, ...)`.
    pub records: Vec<TraceRecord>,
    /// Requests the recorder saw but could not keep (it was full).
    pub dropped: u64,
}

/// Why a trace could not be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceError {
    /// The 1-based line.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for TraceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "trace line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for TraceError {}

impl Trace {
    /// A trace of `records`, sorted.
    pub fn new(mut records: Vec<TraceRecord>) -> Self {
        records.sort_unstable();
        Trace {
            records,
            dropped: 0,
        }
    }

    /// The trace as text (see the [module documentation](self)).
    pub fn write(&self) -> String {
        let mut out = String::with_capacity(32 + self.records.len() * 32);
        out.push_str(TRACE_HEADER);
        out.push('\n');
        if self.dropped > 0 {
            let _ = writeln!(out, "# dropped {}", self.dropped);
        }
        for r in &self.records {
            let _ = write!(
                out,
                "{} {} {} {}",
                r.at_ns,
                r.key,
                r.outcome.word(),
                r.latency_ns
            );
            out.push_str(if r.retry { " retry\n" } else { "\n" });
        }
        out
    }

    /// Reads a trace written as the [module documentation](self) says;
    /// the records are sorted by arrival whatever their order in the text.
    ///
    /// # Errors
    ///
    /// A [`TraceError`] naming the first line that is not a record.
    pub fn parse(text: &str) -> Result<Trace, TraceError> {
        let mut records = Vec::new();
        let mut dropped = 0;
        for (i, line) in text.lines().enumerate() {
            let fail = |message: String| TraceError {
                line: i + 1,
                message,
            };
            let line = line.trim();
            if let Some(rest) = line.strip_prefix("# dropped ") {
                dropped = rest
                    .parse()
                    .map_err(|_| fail(format!("`{rest}` is not a count")))?;
                continue;
            }
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut fields = line.split_ascii_whitespace();
            let mut num = |name: &str| -> Result<u64, TraceError> {
                let f = fields
                    .next()
                    .ok_or_else(|| fail(format!("missing field `{name}`")))?;
                f.parse()
                    .map_err(|_| fail(format!("`{f}` is not a number ({name})")))
            };
            let at_ns = num("arrival")?;
            let key = num("key")?;
            let word = fields
                .next()
                .ok_or_else(|| fail("missing field `outcome`".into()))?;
            let outcome = TraceOutcome::parse(word).ok_or_else(|| {
                fail(format!("`{word}` is not an outcome (ok, err, ign or shed)"))
            })?;
            let latency = fields
                .next()
                .ok_or_else(|| fail("missing field `latency`".into()))?;
            let latency_ns = latency
                .parse()
                .map_err(|_| fail(format!("`{latency}` is not a number (latency)")))?;
            let retry = match fields.next() {
                None => false,
                Some("retry") => true,
                Some(other) => return Err(fail(format!("`{other}` is not `retry`"))),
            };
            if let Some(extra) = fields.next() {
                return Err(fail(format!("unexpected `{extra}`")));
            }
            records.push(TraceRecord {
                at_ns,
                key,
                outcome,
                latency_ns,
                retry,
            });
        }
        let mut trace = Trace::new(records);
        trace.dropped = dropped;
        Ok(trace)
    }
}

/// One slot of a [`Recorder`]; `meta` is written last and says the slot is
/// complete.
///
/// `meta` bits: 0..=1 outcome code, 2 retry, 3 written.
#[derive(Default)]
struct Slot {
    at: AtomicU64,
    key: AtomicU64,
    latency: AtomicU64,
    meta: AtomicU64,
}

const RETRY_BIT: u64 = 1 << 2;
const WRITTEN_BIT: u64 = 1 << 3;

/// A bounded, lock-free capture of requests: every slot is allocated up
/// front, recording one claims the next slot with one `fetch_add` and
/// writes it; once every slot is taken, later requests are counted as
/// dropped, not kept (the capture is the first `capacity` requests).
///
/// A service records through [`RecordLayer`](super::RecordLayer) or calls
/// [`Recorder::record`] itself; [`Recorder::trace`] reads what was captured
/// so far, at any time.
pub struct Recorder {
    origin: Instant,
    next: AtomicU64,
    slots: Box<[Slot]>,
}

impl fmt::Debug for Recorder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Recorder")
            .field("capacity", &self.slots.len())
            .field("claimed", &self.claimed())
            .finish_non_exhaustive()
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Recorder {
    /// A recorder keeping at most `capacity` requests (about 32 bytes
    /// each, allocated now), its origin this instant.
    pub fn new(capacity: usize) -> Self {
        Recorder::with_origin(capacity, Instant::now())
    }

    /// As [`Recorder::new`], arrival times counted from `origin`.
    pub fn with_origin(capacity: usize, origin: Instant) -> Self {
        Recorder {
            origin,
            next: AtomicU64::new(0),
            slots: (0..capacity).map(|_| Slot::default()).collect(),
        }
    }

    /// The instant arrival times count from.
    pub fn origin(&self) -> Instant {
        self.origin
    }

    /// The most requests it keeps.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    fn claimed(&self) -> u64 {
        // ordering: Relaxed; a count for display and for `dropped`, no data
        // is read through it.
        self.next.load(Ordering::Relaxed)
    }

    /// Whether every slot is taken (later requests are dropped).
    pub fn is_full(&self) -> bool {
        self.claimed() >= self.slots.len() as u64
    }

    /// Records a request that arrived at `arrived` and ended after
    /// `latency`. No allocation, no lock: one `fetch_add` and four stores.
    pub fn record(
        &self,
        arrived: Instant,
        key: u64,
        outcome: TraceOutcome,
        latency: Duration,
        retry: bool,
    ) {
        let at = nanos(arrived.saturating_duration_since(self.origin));
        self.record_at(at, key, outcome, nanos(latency), retry);
    }

    /// As [`Recorder::record`], with the arrival in nanoseconds since the
    /// origin.
    pub fn record_at(
        &self,
        at_ns: u64,
        key: u64,
        outcome: TraceOutcome,
        latency_ns: u64,
        retry: bool,
    ) {
        if self.is_full() {
            // ordering: Relaxed; only counts the request as dropped.
            self.next.fetch_add(1, Ordering::Relaxed);
            return;
        }
        // ordering: Relaxed; the claim only has to be unique, which the
        // atomic read-modify-write gives; the slot's data is published by
        // the Release store of `meta` below.
        let index = self.next.fetch_add(1, Ordering::Relaxed);
        let Some(slot) = usize::try_from(index).ok().and_then(|i| self.slots.get(i)) else {
            return;
        };
        // ordering: Relaxed; published by the Release store of `meta`.
        slot.at.store(at_ns, Ordering::Relaxed);
        slot.key.store(key, Ordering::Relaxed);
        slot.latency.store(latency_ns, Ordering::Relaxed);
        let meta = outcome.code() | if retry { RETRY_BIT } else { 0 } | WRITTEN_BIT;
        // ordering: Release; pairs with the Acquire load in `trace`, so a
        // reader that sees WRITTEN_BIT sees the three stores above.
        slot.meta.store(meta, Ordering::Release);
    }

    /// What was captured so far, sorted by arrival. A slot claimed but not
    /// yet written (a `record` running at this instant) is left out.
    pub fn trace(&self) -> Trace {
        let claimed = self.claimed();
        let mut records = Vec::with_capacity(self.slots.len().min(claimed as usize));
        for slot in &self.slots {
            // ordering: Acquire; pairs with the Release store in `record_at`.
            let meta = slot.meta.load(Ordering::Acquire);
            if meta & WRITTEN_BIT == 0 {
                continue;
            }
            // ordering: Relaxed; made visible by the Acquire load above.
            records.push(TraceRecord {
                at_ns: slot.at.load(Ordering::Relaxed),
                key: slot.key.load(Ordering::Relaxed),
                outcome: TraceOutcome::from_code(meta),
                latency_ns: slot.latency.load(Ordering::Relaxed),
                retry: meta & RETRY_BIT != 0,
            });
        }
        let mut trace = Trace::new(records);
        trace.dropped = claimed.saturating_sub(self.slots.len() as u64);
        trace
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(at_ns: u64, outcome: TraceOutcome) -> TraceRecord {
        TraceRecord {
            at_ns,
            key: at_ns % 3,
            outcome,
            latency_ns: 1_000 + at_ns,
            retry: at_ns.is_multiple_of(5),
        }
    }

    #[test]
    fn text_round_trips_byte_for_byte() {
        let mut trace = Trace::new(vec![
            rec(30, TraceOutcome::Shed),
            rec(10, TraceOutcome::Ok),
            rec(20, TraceOutcome::Err),
            rec(25, TraceOutcome::Ignored),
        ]);
        trace.dropped = 4;
        let text = trace.write();
        let back = Trace::parse(&text).unwrap();
        assert_eq!(back, trace);
        assert_eq!(back.write(), text);
        assert_eq!(
            back.records.iter().map(|r| r.at_ns).collect::<Vec<_>>(),
            [10, 20, 25, 30]
        );
    }

    #[test]
    fn bad_lines_are_named() {
        let e = Trace::parse("# tenlives trace v1\n1 2 ok 3\n4 5 maybe 6\n").unwrap_err();
        assert_eq!(e.line, 3);
        assert!(e.message.contains("maybe"), "{e}");
        assert_eq!(Trace::parse("1 2 ok").unwrap_err().line, 1);
        assert!(Trace::parse("1 2 ok 3 again").is_err());
        assert!(Trace::parse("1 2 ok 3 retry extra").is_err());
        assert!(Trace::parse("-1 2 ok 3").is_err());
    }

    #[test]
    fn a_full_recorder_counts_what_it_drops() {
        let r = Recorder::new(3);
        for i in 0..5 {
            r.record_at(10 - i, i, TraceOutcome::Ok, 7, false);
        }
        let t = r.trace();
        assert_eq!(t.records.len(), 3);
        assert_eq!(t.dropped, 2);
        assert_eq!(
            t.records.iter().map(|r| r.at_ns).collect::<Vec<_>>(),
            [8, 9, 10]
        );
        assert!(r.is_full());
    }

    #[test]
    fn threads_recording_at_once_lose_nothing() {
        let r = std::sync::Arc::new(Recorder::new(4000));
        let handles: Vec<_> = (0..4u64)
            .map(|t| {
                let r = r.clone();
                std::thread::spawn(move || {
                    for i in 0..1000u64 {
                        r.record_at(i, t, TraceOutcome::Err, t * 1000 + i, t == 1);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let t = r.trace();
        assert_eq!((t.records.len(), t.dropped), (4000, 0));
        for rec in &t.records {
            assert_eq!(rec.latency_ns, rec.key * 1000 + rec.at_ns);
            assert_eq!(rec.retry, rec.key == 1);
        }
    }
}
