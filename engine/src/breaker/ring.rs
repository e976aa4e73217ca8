//! The count window: exactly the last `n` calls that reported.
//!
//! A reporting call takes the next *position* of a ring of `n` positions
//! (one compare-and-swap on the head word), writes its two outcome bits at
//! that position, overwriting the bits of the call `n` reports before it, and
//! adjusts the window's failure and slow counts by the difference between the
//! bits it wrote and the bits it overwrote. A decision then reads two words
//! (the counts and the head), whatever `n` is.
//!
//! # Head word (`CountWindow::head`)
//!
//! ```text
//!  63                32  31  30                             0
//! +--------------------+----+--------------------------------+
//! |     generation     |full|   position of the next call    |
//! +--------------------+----+--------------------------------+
//! ```
//!
//! `position` runs `0, 1, .., n - 1, 0, ..`; `full` is set when it first
//! wraps. The window holds `n` calls when full, else `position` calls. A
//! head of an older generation reads as position 0, not full: the first
//! report of a generation starts the ring again (that is how a transition
//! empties the window without clearing it). A report from an older
//! generation than the head takes no position and counts nowhere.
//!
//! # Outcome words (`CountWindow::outcomes`)
//!
//! ```text
//!  63                32 31 30 29 28        3  2  1  0
//! +--------------------+-----+-----+ .... +-----+-----+
//! |        tag         | p15 | p14 |      | p1  | p0  |     p = [slow | failed]
//! +--------------------+-----+-----+ .... +-----+-----+
//! ```
//!
//! Position `p` lives in word `p / 16`, bits `2 (p % 16)` (failed) and
//! `2 (p % 16) + 1` (slow). The tag is the generation whose calls wrote the
//! word. A word with an older tag reads as sixteen successes (its bits
//! belong to a finished generation); the first writer of the new generation
//! replaces it with its tag, its own two bits and zeros. A writer that finds
//! a newer tag drops its report (it is late).
//!
//! # Tally word (`CountWindow::tally`)
//!
//! ```text
//!  63                32 31             16 15              0
//! +--------------------+-----------------+-----------------+
//! |     generation     |   slow (i16)    | failures (i16)  |
//! +--------------------+-----------------+-----------------+
//! ```
//!
//! The failed and slow bits set in the outcome words tagged `generation`.
//! Every change of a bit is made by one compare-and-swap of an outcome word,
//! which tells its writer the bits it replaced; that writer then adds the
//! difference (-1, 0 or +1 for each count) here, resetting a tally of an
//! older generation to zero first, dropping it if the tally is newer. The
//! fields are signed because two writers of one position may adjust in the
//! other order than they swapped bits (a count can be -1 for a moment); a
//! reader clamps to `0..=calls`. With `n` at most [`MAX_WINDOW_CALLS`]
//! (4096) they never overflow.
//!
//! # The protocol of one report, and what it costs
//!
//! 1. claim: compare-and-swap of the head (a shared line, written by every
//!    report: a count window needs one order of all calls);
//! 2. write: load the outcome word; if the bits there already equal the new
//!    ones (a fast success replacing a fast success: the common case in a
//!    healthy window) nothing is written, else one compare-and-swap;
//! 3. adjust: only if a bit changed, one compare-and-swap of the tally.
//!
//! A success in a healthy closed breaker therefore writes one shared line
//! (the head) and reads one more; the time window writes only a per-stripe
//! line. A decision loads the tally and then the head.
//!
//! The claim is a compare-and-swap rather than a `fetch_add` on a call
//! counter because it must check the generation first: a `fetch_add` by a
//! report that turns out to be late would already have taken a position in
//! the newer generation's window, counting a call that never happened there
//! (and a 32-bit counter beside the generation would wrap out of step with
//! `n`).
//!
//! # Invariant (checked by the loom model and the stress test)
//!
//! When no report is between steps 2 and 3, the tally of the current
//! generation equals the failed and slow bits in the outcome words of that
//! generation, and a window filled sequentially holds exactly the outcomes of
//! its last `min(calls, n)` reports. Concurrently, a report may be counted in
//! the calls (step 1) before its bits are (step 2), and two reports that
//! claimed the same position a lap apart may write in the other order (only
//! when `n` reports are in flight at once); the later writer's bits stay
//! until the position comes round again.
//!
//! # Orderings
//!
//! `SeqCst` throughout, as in the time window. The failures a judge counts
//! come from the tally, a chain of read-modify-writes: the last adjustment
//! sees all earlier ones whatever the ordering. What needs `SeqCst` is the
//! head it reads next: two failures A and B that each claim, adjust and then
//! read the head must not both read it without the other's claim (the
//! store-buffering shape), or A could count B's failure but not B's call (too
//! few calls for `minimum_calls`) while B counts A's call but not A's
//! failure, and a rate that crossed its threshold would trip nobody. With
//! every access in one total order, the later adjustment's head read follows
//! both claims. (The loom models pass with `Relaxed` here too, so this rests
//! on the argument, not on a counterexample.) A `SeqCst` compare-and-swap or
//! load costs the same as a `Relaxed` one on x86-64.
//!
//! Limits: a word untouched for 2^31 generations can alias a current tag
//! (as the time window's tags).

use crossbeam_utils::CachePadded;

use super::config::MAX_WINDOW_CALLS;
use super::window::WindowCounts;
use super::word::is_newer;
use crate::sync::{AtomicU64, Ordering, spin_hint};

const GEN_SHIFT: u32 = 32;
const FULL: u64 = 1 << 31;
const POSITION_MASK: u64 = FULL - 1;
const PER_WORD: u32 = 16;
const WORDS: usize = (MAX_WINDOW_CALLS / PER_WORD) as usize;
const FAILED: u64 = 0b01;
const SLOW: u64 = 0b10;

/// Exactly the last `calls` reports; see the module documentation.
pub(crate) struct CountWindow {
    calls: u32,
    /// `[generation | full | position]`: written by every report.
    head: CachePadded<AtomicU64>,
    /// `[generation | slow | failures]`: written when a bit changes.
    tally: CachePadded<AtomicU64>,
    /// `[tag | 16 x (slow, failed)]`: read by every report.
    outcomes: [AtomicU64; WORDS],
}

/// What a report did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Counted {
    /// Counted in the window.
    Yes,
    /// From an older generation than the window's: not counted.
    Late,
}

#[inline]
fn generation_of(word: u64) -> u32 {
    (word >> GEN_SHIFT) as u32
}

impl CountWindow {
    /// An empty window of `calls` calls (`calls` at most [`MAX_WINDOW_CALLS`],
    /// checked by the configuration).
    pub(crate) fn new(calls: u32) -> Self {
        CountWindow {
            calls: calls.clamp(1, MAX_WINDOW_CALLS),
            head: CachePadded::new(AtomicU64::new(0)),
            tally: CachePadded::new(AtomicU64::new(0)),
            outcomes: core::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// Counts one report of `generation`.
    #[inline]
    pub(crate) fn record(&self, generation: u32, failed: bool, slow: bool) -> Counted {
        let Some(position) = self.claim(generation) else {
            return Counted::Late;
        };
        let new = (u64::from(failed) * FAILED) | (u64::from(slow) * SLOW);
        let Some(old) = self.write(generation, position, new) else {
            return Counted::Late;
        };
        if old != new {
            let failures = (new & FAILED) as i16 - (old & FAILED) as i16;
            let slow = ((new & SLOW) >> 1) as i16 - ((old & SLOW) >> 1) as i16;
            self.adjust(generation, failures, slow);
        }
        Counted::Yes
    }

    /// Step 1: the next position of `generation`'s ring.
    #[inline]
    fn claim(&self, generation: u32) -> Option<u32> {
        // ordering: SeqCst, see the module docs.
        let mut head = self.head.load(Ordering::SeqCst);
        loop {
            let head_generation = generation_of(head);
            if is_newer(head_generation, generation) {
                return None;
            }
            let (full, position) = if head_generation == generation {
                (head & FULL, (head & POSITION_MASK) as u32)
            } else {
                (0, 0)
            };
            let next = position + 1;
            let (full, next) = if next >= self.calls {
                (FULL, 0)
            } else {
                (full, next)
            };
            let new = (u64::from(generation) << GEN_SHIFT) | full | u64::from(next);
            match self
                .head
                .compare_exchange_weak(head, new, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => return Some(position),
                Err(actual) => {
                    head = actual;
                    spin_hint();
                }
            }
        }
    }

    /// Step 2: puts `bits` at `position`; returns the bits it replaced (as
    /// the tally counts them), `None` for a late report.
    #[inline]
    fn write(&self, generation: u32, position: u32, bits: u64) -> Option<u64> {
        let word = &self.outcomes[(position / PER_WORD) as usize];
        let shift = 2 * (position % PER_WORD);
        // ordering: SeqCst, see the module docs.
        let mut current = word.load(Ordering::SeqCst);
        loop {
            let tag = generation_of(current);
            let (base, old) = if tag == generation {
                (current, (current >> shift) & 0b11)
            } else if is_newer(tag, generation) {
                return None;
            } else {
                (u64::from(generation) << GEN_SHIFT, 0)
            };
            let new = (base & !(0b11 << shift)) | (bits << shift);
            if new == current {
                return Some(old);
            }
            match word.compare_exchange_weak(current, new, Ordering::SeqCst, Ordering::SeqCst) {
                Ok(_) => return Some(old),
                Err(actual) => {
                    current = actual;
                    spin_hint();
                }
            }
        }
    }

    /// Step 3: adds the differences to the tally of `generation`.
    fn adjust(&self, generation: u32, failures: i16, slow: i16) {
        // ordering: SeqCst, see the module docs.
        let mut current = self.tally.load(Ordering::SeqCst);
        loop {
            let tag = generation_of(current);
            let (f, s) = if tag == generation {
                (current as u16 as i16, (current >> 16) as u16 as i16)
            } else if is_newer(tag, generation) {
                return;
            } else {
                (0, 0)
            };
            let new = pack_tally(generation, f.wrapping_add(failures), s.wrapping_add(slow));
            match self
                .tally
                .compare_exchange_weak(current, new, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => return,
                Err(actual) => {
                    current = actual;
                    spin_hint();
                }
            }
        }
    }

    /// The window of `generation` now: the tally first, then the head, so a
    /// decision counts every call whose bits it counts.
    pub(crate) fn counts(&self, generation: u32) -> WindowCounts {
        // ordering: SeqCst, see the module docs.
        let tally = self.tally.load(Ordering::SeqCst);
        let head = self.head.load(Ordering::SeqCst);
        if generation_of(head) != generation {
            return WindowCounts::default();
        }
        let calls = if head & FULL != 0 {
            u64::from(self.calls)
        } else {
            head & POSITION_MASK
        };
        let (failures, slow) = if generation_of(tally) == generation {
            (tally as u16 as i16, (tally >> 16) as u16 as i16)
        } else {
            (0, 0)
        };
        let clamp = |c: i16| u64::try_from(c).unwrap_or(0).min(calls);
        WindowCounts {
            calls,
            failures: clamp(failures),
            slow: clamp(slow),
        }
    }

    /// The window's size in calls.
    pub(crate) fn size(&self) -> u32 {
        self.calls
    }

    /// The outcomes of `generation`'s last `k` calls at most, oldest first,
    /// as `(failed, slow)`, handed to `f` (for carrying them into a new
    /// window). Returns how many there were.
    pub(crate) fn newest(&self, generation: u32, k: u64, mut f: impl FnMut(bool, bool)) -> u64 {
        // ordering: SeqCst, see the module docs.
        let head = self.head.load(Ordering::SeqCst);
        if generation_of(head) != generation {
            return 0;
        }
        let position = u64::from((head & POSITION_MASK) as u32);
        let held = if head & FULL != 0 {
            u64::from(self.calls)
        } else {
            position
        };
        let take = held.min(k);
        let n = u64::from(self.calls);
        for back in (1..=take).rev() {
            let p = ((position + n - back) % n) as u32;
            // ordering: SeqCst, see the module docs.
            let word = self.outcomes[(p / PER_WORD) as usize].load(Ordering::SeqCst);
            let bits = if generation_of(word) == generation {
                (word >> (2 * (p % PER_WORD))) & 0b11
            } else {
                0
            };
            f(bits & FAILED != 0, bits & SLOW != 0);
        }
        take
    }
}

#[inline]
fn pack_tally(generation: u32, failures: i16, slow: i16) -> u64 {
    (u64::from(generation) << GEN_SHIFT)
        | (u64::from(slow as u16) << 16)
        | u64::from(failures as u16)
}

// The tally's fields hold +-MAX_WINDOW_CALLS.
const _: () = assert!(MAX_WINDOW_CALLS <= i16::MAX as u32 / 2);
const _: () = assert!(MAX_WINDOW_CALLS.is_multiple_of(PER_WORD));

#[cfg(all(test, not(tenlives_loom)))]
mod tests {
    use super::*;

    /// The last `n` of `outcomes`, counted plainly.
    fn expected(n: usize, outcomes: &[(bool, bool)]) -> WindowCounts {
        let last = &outcomes[outcomes.len().saturating_sub(n)..];
        WindowCounts {
            calls: last.len() as u64,
            failures: last.iter().filter(|o| o.0).count() as u64,
            slow: last.iter().filter(|o| o.1).count() as u64,
        }
    }

    #[test]
    fn counts_exactly_the_last_n() {
        // The check is quadratic in n: under Miri the small windows only.
        let sizes: &[u32] = if cfg!(miri) {
            &[1, 7, 16, 17]
        } else {
            &[1, 7, 16, 17, 100, 1000, MAX_WINDOW_CALLS]
        };
        for &n in sizes {
            let w = CountWindow::new(n);
            let mut seen = std::vec::Vec::new();
            let mut x = 0x9e37_79b9_u32;
            for _ in 0..(3 * n + 5) {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                let o = (x.is_multiple_of(3), x.is_multiple_of(5));
                assert_eq!(w.record(7, o.0, o.1), Counted::Yes);
                seen.push(o);
                assert_eq!(w.counts(7), expected(n as usize, &seen), "n = {n}");
            }
        }
    }

    #[test]
    fn a_new_generation_starts_empty_and_ignores_late_reports() {
        let w = CountWindow::new(20);
        for _ in 0..30 {
            w.record(1, true, true);
        }
        assert_eq!(w.counts(1).failures, 20);
        assert_eq!(w.counts(2), WindowCounts::default());
        w.record(2, false, false);
        assert_eq!(
            w.counts(2),
            WindowCounts {
                calls: 1,
                failures: 0,
                slow: 0
            }
        );
        assert_eq!(w.record(1, true, false), Counted::Late);
        for _ in 0..19 {
            w.record(2, false, true);
        }
        assert_eq!(
            w.counts(2),
            WindowCounts {
                calls: 20,
                failures: 0,
                slow: 19
            }
        );
        // Generations wrap.
        let w = CountWindow::new(3);
        w.record(u32::MAX, true, false);
        w.record(0, true, false);
        assert_eq!(w.record(u32::MAX, true, false), Counted::Late);
        assert_eq!(w.counts(0).failures, 1);
    }

    #[test]
    fn newest_lists_oldest_first() {
        let w = CountWindow::new(5);
        for i in 0..8 {
            w.record(0, i % 2 == 0, i == 7);
        }
        let mut got = std::vec::Vec::new();
        assert_eq!(w.newest(0, 3, |f, s| got.push((f, s))), 3);
        assert_eq!(got, [(false, false), (true, false), (false, true)]);
    }
}
