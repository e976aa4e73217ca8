//! The packed words of the breaker and their protocols.
//!
//! # State word (`CircuitBreaker::state`, one `AtomicU64`)
//!
//! ```text
//!  63                32 31               8 7       3 2    0
//! +--------------------+------------------+---------+------+
//! |     generation     |     payload      |  trips  | kind |
//! +--------------------+------------------+---------+------+
//! ```
//!
//! | field      | bits   | meaning                                                    |
//! |------------|--------|------------------------------------------------------------|
//! | kind       | 0..3   | `KIND_*` below                                             |
//! | trips      | 3..8   | consecutive trips without a close, saturating at 31        |
//! | payload    | 8..32  | Closed: consecutive failures; HalfOpen: probes admitted    |
//! | generation | 32..64 | bumped (wrapping) by every transition                      |
//!
//! Every transition is one compare-and-swap from a word to a word with the
//! next generation, so two threads can never both make "the" transition out of
//! a state, and an operation that loaded generation `g` can never change the
//! breaker once it is at `g + 1`. Legal transitions:
//!
//! | from                | to                   | by                                          |
//! |---------------------|----------------------|---------------------------------------------|
//! | Closed              | Opening (trips 1)    | the failure or slow call that breaks a rule |
//! | Opening             | Open (same gen)      | the thread that made the trip, after it stored `open_until` |
//! | Open                | HalfOpen (payload 1) | the first admission at or after `open_until`; it takes a probe slot (without scouts) |
//! | Opening             | Scouting (same gen)  | as Opening -> Open, when the configuration has scouts (`probe_every`) |
//! | Scouting            | Scouting (same word) | the admission that moved `open_until` on confirms the word with a same-value CAS; no transition |
//! | Scouting            | Closed / HalfOpen (payload 0) | the first successful scout of this generation (Closed when one probe is the test) |
//! | Scouting            | HalfOpen (payload 1) | the first admission at or after `open_until` when the configuration no longer has scouts |
//! | HalfOpen            | Closed               | the probe report that completes a passing test |
//! | HalfOpen            | Opening (trips + 1)  | a failing test, or the first failed probe if so configured |
//! | any                 | ForcedOpen, Disabled, MetricsOnly, Closed | explicit calls (operator) |
//!
//! Within a generation only the payload changes: Closed counts consecutive
//! failures up and resets them to 0; HalfOpen counts admitted probes up to the
//! configured number and down when a probe is dropped unreported.
//!
//! `Scouting` is `Open` with scouts (reported as Open): a kind of its own so
//! that the admission path decides it from the word it already loaded (a
//! configuration read there cost every admission instructions). While
//! `Scouting`, `open_until` also moves: the admission that
//! takes a scout compare-and-swaps it from the deadline it read to `now +
//! interval` (`AcqRel`; the trip's store is `Release`), see
//! `CircuitBreaker::scout`.
//!
//! `Opening` exists because the open deadline does not fit beside the
//! generation: the tripping thread publishes the deadline in `open_until`
//! between the two steps, and the `Release` of the second pairs with the
//! `Acquire` load of every admission, which therefore reads the right deadline
//! whenever it sees `Open`. An admission that sees `Opening` rejects with the
//! full open duration.
//!
//! # Probe word (`CircuitBreaker::probes`)
//!
//! ```text
//!  63                32 31 30      20 19      10 9        0
//! +--------------------+-----+---------+---------+----------+
//! |     generation     |  0  |  slow   | failed  | succeeded|
//! +--------------------+-----+---------+---------+----------+
//! ```
//!
//! Outcomes of the half-open probes of `generation`. A word whose generation
//! is older than the reporting probe's counts as all zeros (it is reset lazily
//! by the first report of a new half-open period); a report from a probe older
//! than the word is stale and dropped.
//!
//! # Window slot words (`window.rs`)
//!
//! `[ tag: 32 | count: 32 ]`, see there.

/// Closed: calls pass and are measured.
pub(crate) const KIND_CLOSED: u64 = 0;
/// Tripped; the deadline is being published (transient, reported as Open).
pub(crate) const KIND_OPENING: u64 = 1;
/// Calls are rejected until `open_until`.
pub(crate) const KIND_OPEN: u64 = 2;
/// A limited number of probe calls pass.
pub(crate) const KIND_HALF_OPEN: u64 = 3;
/// Held open by an operator.
pub(crate) const KIND_FORCED_OPEN: u64 = 4;
/// Everything passes, nothing is measured.
pub(crate) const KIND_DISABLED: u64 = 5;
/// Everything passes and is measured; the breaker never trips.
pub(crate) const KIND_METRICS_ONLY: u64 = 6;
/// Open, with scouts (`probe_every`): rejects until `open_until`, then lets
/// one call through per interval (reported as Open).
pub(crate) const KIND_SCOUTING: u64 = 7;

const KIND_BITS: u32 = 3;
const KIND_MASK: u64 = (1 << KIND_BITS) - 1;
const TRIPS_SHIFT: u32 = KIND_BITS;
const TRIPS_BITS: u32 = 5;
pub(crate) const MAX_TRIPS: u32 = (1 << TRIPS_BITS) - 1;
const TRIPS_MASK: u64 = ((1 << TRIPS_BITS) - 1) << TRIPS_SHIFT;
const PAYLOAD_SHIFT: u32 = TRIPS_SHIFT + TRIPS_BITS;
const PAYLOAD_BITS: u32 = 24;
const PAYLOAD_MASK: u64 = ((1 << PAYLOAD_BITS) - 1) << PAYLOAD_SHIFT;
const GEN_SHIFT: u32 = 32;

/// A decoded state word.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct StateWord(pub(crate) u64);

impl StateWord {
    #[inline]
    pub(crate) const fn new(kind: u64, trips: u32, payload: u32, generation: u32) -> Self {
        StateWord(
            kind | ((trips as u64) << TRIPS_SHIFT)
                | (((payload as u64) << PAYLOAD_SHIFT) & PAYLOAD_MASK)
                | ((generation as u64) << GEN_SHIFT),
        )
    }
    #[inline]
    pub(crate) const fn kind(self) -> u64 {
        self.0 & KIND_MASK
    }
    #[inline]
    pub(crate) const fn trips(self) -> u32 {
        ((self.0 & TRIPS_MASK) >> TRIPS_SHIFT) as u32
    }
    #[inline]
    pub(crate) const fn payload(self) -> u32 {
        ((self.0 & PAYLOAD_MASK) >> PAYLOAD_SHIFT) as u32
    }
    #[inline]
    pub(crate) const fn generation(self) -> u32 {
        (self.0 >> GEN_SHIFT) as u32
    }
    /// Same kind, trips and generation; new payload.
    #[inline]
    pub(crate) const fn with_payload(self, payload: u32) -> Self {
        StateWord((self.0 & !PAYLOAD_MASK) | (((payload as u64) << PAYLOAD_SHIFT) & PAYLOAD_MASK))
    }
    /// The first word of the next generation.
    #[inline]
    pub(crate) const fn next(self, kind: u64, trips: u32, payload: u32) -> Self {
        StateWord::new(kind, trips, payload, self.generation().wrapping_add(1))
    }
}

const COUNT_BITS: u32 = 10;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;
const FAILED_SHIFT: u32 = COUNT_BITS;
const SLOW_SHIFT: u32 = 2 * COUNT_BITS;

/// A decoded probe word.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct ProbeWord(pub(crate) u64);

impl ProbeWord {
    #[inline]
    pub(crate) const fn fresh(generation: u32) -> Self {
        ProbeWord((generation as u64) << GEN_SHIFT)
    }
    #[inline]
    pub(crate) const fn generation(self) -> u32 {
        (self.0 >> GEN_SHIFT) as u32
    }
    #[inline]
    pub(crate) const fn succeeded(self) -> u32 {
        (self.0 & COUNT_MASK) as u32
    }
    #[inline]
    pub(crate) const fn failed(self) -> u32 {
        ((self.0 >> FAILED_SHIFT) & COUNT_MASK) as u32
    }
    #[inline]
    pub(crate) const fn slow(self) -> u32 {
        ((self.0 >> SLOW_SHIFT) & COUNT_MASK) as u32
    }
    /// One more report. Counts never exceed the configured probes (at most
    /// `MAX_PROBES` < 1024), so no field carries into the next.
    #[inline]
    pub(crate) const fn add(self, failed: bool, slow: bool) -> Self {
        let mut w = self.0;
        w += if failed { 1 << FAILED_SHIFT } else { 1 };
        if slow {
            w += 1 << SLOW_SHIFT;
        }
        ProbeWord(w)
    }
}

/// Whether `a` is later than `b` in wrapping 32-bit order (a half-range
/// window: tags less than 2^31 apart compare correctly).
#[inline]
pub(crate) const fn is_newer(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

#[cfg(all(test, not(tenlives_loom)))]
mod tests {
    use super::*;

    #[test]
    fn state_word_round_trips() {
        let w = StateWord::new(KIND_HALF_OPEN, 31, (1 << 24) - 1, u32::MAX);
        assert_eq!(w.kind(), KIND_HALF_OPEN);
        assert_eq!(w.trips(), 31);
        assert_eq!(w.payload(), (1 << 24) - 1);
        assert_eq!(w.generation(), u32::MAX);
        let n = w.next(KIND_CLOSED, 0, 0);
        assert_eq!(n.generation(), 0, "generation wraps");
        assert_eq!(n.kind(), KIND_CLOSED);
        let p = w.with_payload(7);
        assert_eq!(
            (p.kind(), p.trips(), p.payload(), p.generation()),
            (KIND_HALF_OPEN, 31, 7, u32::MAX)
        );
    }

    #[test]
    fn probe_word_counts() {
        let mut p = ProbeWord::fresh(9);
        for i in 0..1000 {
            p = p.add(i % 3 == 0, i % 2 == 0);
        }
        assert_eq!(
            (p.succeeded(), p.failed(), p.slow(), p.generation()),
            (666, 334, 500, 9)
        );
    }

    #[test]
    fn newer_wraps() {
        assert!(is_newer(1, 0));
        assert!(is_newer(0, u32::MAX));
        assert!(!is_newer(5, 5));
        assert!(!is_newer(u32::MAX, 0));
    }
}
