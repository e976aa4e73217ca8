//! The breaker's state snapshot (see [`crate::snapshot`] for the frame and
//! the clock rule, `docs/snapshots.md` for the layout).
//!
//! # Payload, version 1 (little-endian)
//!
//! | size | field |
//! |---|---|
//! | 1 | state: `KIND_*` of `word.rs` (an `Opening` breaker is saved as `Open`) |
//! | 1 | trips since the last close (0..=31; picks the open duration) |
//! | 4 | closed: consecutive failures; half-open: probes that reported |
//! | 2 + 2 + 2 | half-open: probes that succeeded, failed, were slow |
//! | 8 | open: nanoseconds left of the open duration |
//! | 8 | fingerprint of the window's layout (kind, size, buckets) |
//! | 1 | window: 0 none, 1 count, 2 time (closed and metrics-only only) |
//! | count: 2 + ⌈2n/8⌉ | `n` outcomes, oldest first, two bits each (failed, slow) |
//! | time: 8 + 1 + 12m | nanoseconds into the bucket of `now`; `m` buckets newest first, each calls, failures, slow (u32) |
//!
//! # Another configuration
//!
//! A snapshot taken under another configuration is converted, with the
//! rules of a live configuration change (`set_config`): the state, trip
//! count, open deadline (set when the breaker opened; the next trip uses the
//! new durations) and consecutive failures (judged against the new limit at
//! the next failure) are kept; the window is kept if its layout (kind, size,
//! buckets) is the same, else the restored breaker starts an empty window; a
//! half-open test whose reported probes reach the new probe count starts
//! again.
//!
//! Restored, the breaker takes the next generation (permits granted before
//! the restore are stale and change nothing), the window of that generation
//! holds the saved calls, and a half-open test goes on with the probes that
//! had reported (those in flight at the snapshot are gone with their
//! process).
//!
//! A time window's buckets keep their age: the bucket that was `i` buckets
//! old at the snapshot is put `i + ⌊(offset + down) / bucket⌋` buckets
//! before the bucket of the restore's `now`, `offset` being how far into its
//! bucket the snapshot was and `down` the wall-clock time between snapshot
//! and restore (clock rule); buckets that aged out of the window are
//! dropped. With the same clock and no time between, every bucket lands
//! where it was.

use super::config::Verdict;
use super::window::{CallWindow, StripedWindow, WindowCounts};
use super::word::{
    KIND_CLOSED, KIND_DISABLED, KIND_FORCED_OPEN, KIND_HALF_OPEN, KIND_METRICS_ONLY, KIND_OPEN,
    KIND_OPENING, KIND_SCOUTING, MAX_TRIPS, ProbeWord, StateWord,
};
use super::{CircuitBreaker, MAX_BUCKETS, MAX_WINDOW_CALLS};
use crate::events::EventSink;
use crate::snapshot::{
    self, HEADER_LEN, Kind, Reader, SnapshotError, TRAILER_LEN, WallTime, Writer,
};
use crate::sync::Ordering;
use crate::time::Timestamp;

const VERSION: u8 = 1;
const WINDOW_NONE: u8 = 0;
const WINDOW_COUNT: u8 = 1;
const WINDOW_TIME: u8 = 2;

const FIXED: usize = 1 + 1 + 4 + 2 + 2 + 2 + 8 + 8 + 1;
const COUNT_MAX: usize = 2 + (MAX_WINDOW_CALLS as usize * 2).div_ceil(8);
const TIME_MAX: usize = 8 + 1 + 12 * MAX_BUCKETS;

/// The most bytes a breaker's snapshot takes (frame included).
pub const BREAKER_SNAPSHOT_MAX: usize = HEADER_LEN
    + FIXED
    + if COUNT_MAX > TIME_MAX {
        COUNT_MAX
    } else {
        TIME_MAX
    }
    + TRAILER_LEN;

/// A snapshot's payload, read and checked whole before anything changes.
struct Saved<'a> {
    kind: u64,
    trips: u32,
    payload: u32,
    probes: [u16; 3],
    open_left: u64,
    window: SavedWindow<'a>,
}

#[allow(
    clippy::large_enum_variant,
    reason = "on the stack for one restore; boxing would need `alloc`"
)]
enum SavedWindow<'a> {
    None,
    Count { calls: u16, bits: &'a [u8] },
    Time(SavedTime),
}

impl<S: EventSink> CircuitBreaker<S> {
    /// Writes the breaker's state at `now` (wall-clock time `wall`) into
    /// `buf` as a snapshot, and returns its length (at most
    /// [`BREAKER_SNAPSHOT_MAX`]). Permits in flight are not part of it.
    ///
    /// # Errors
    ///
    /// [`SnapshotError::BufferTooSmall`], with the size needed.
    ///
    /// ```
    /// use core::time::Duration;
    /// use tenlives_engine::breaker::{BreakerConfig, BreakerState, CircuitBreaker, BREAKER_SNAPSHOT_MAX};
    /// use tenlives_engine::snapshot::WallTime;
    /// use tenlives_engine::time::Timestamp;
    ///
    /// let config = BreakerConfig::builder()
    ///     .without_failure_rate()
    ///     .consecutive_failures(1)
    ///     .open_duration(Duration::from_secs(30))
    ///     .build()?;
    /// let breaker = CircuitBreaker::new(config.clone());
    /// let t = Timestamp::from_nanos(5_000_000_000);
    /// breaker.try_acquire(t).expect("closed").failure(t);
    ///
    /// let mut buf = [0u8; BREAKER_SNAPSHOT_MAX];
    /// let wall = WallTime::from_unix_nanos(1_700_000_000_000_000_000);
    /// let n = breaker.save_state(&mut buf, t, wall)?;
    ///
    /// // A new process: its clock starts at zero; 10 s went by on the wall.
    /// let restarted = CircuitBreaker::new(config);
    /// let later = wall.as_unix_nanos() + 10_000_000_000;
    /// restarted.restore_state(&buf[..n], Timestamp::ZERO, WallTime::from_unix_nanos(later))?;
    /// assert_eq!(restarted.state(), BreakerState::Open);
    /// let rejected = restarted.try_acquire(Timestamp::ZERO).unwrap_err();
    /// assert_eq!(rejected.retry_after(), Some(Duration::from_secs(20)));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn save_state(
        &self,
        buf: &mut [u8],
        now: Timestamp,
        wall: WallTime,
    ) -> Result<usize, SnapshotError> {
        let s = self.load();
        let mut kind = s.kind();
        let mut trips = s.trips();
        // ordering: Acquire, like the probe reporters' exchange.
        let probes = ProbeWord(self.core.probes.load(Ordering::Acquire));
        let mut counts = match kind {
            KIND_HALF_OPEN if probes.generation() == s.generation() => {
                [probes.succeeded(), probes.failed(), probes.slow()]
            }
            _ => [0; 3],
        };
        let fingerprint = self.with_era(|cfg, _| {
            if kind == KIND_HALF_OPEN {
                // A report can have decided the test and not yet made the
                // transition (between its probe-word and state-word
                // exchanges): save the state it is about to make, so that
                // the restored breaker is never half-open with no probe
                // left to decide.
                let [succeeded, failed, slow] = counts;
                let verdict = if cfg.reopen_on_first_failure && failed > 0 {
                    Verdict::Reopen
                } else {
                    cfg.probe_verdict(succeeded, failed, slow, false)
                };
                match verdict {
                    Verdict::Pending => {}
                    Verdict::Close => (kind, trips, counts) = (KIND_CLOSED, 0, [0; 3]),
                    Verdict::Reopen => {
                        (kind, trips, counts) = (KIND_OPENING, (trips + 1).min(MAX_TRIPS), [0; 3]);
                    }
                }
            }
            snapshot::fingerprint_of(cfg)
        });
        let (opening_ns, layout) = self.with_era(|cfg, _| {
            (
                cfg.open_ns_for(trips),
                snapshot::fingerprint_of(&cfg.window.spec),
            )
        });
        // A closed state from a decided test starts with an empty window.
        let decided = kind != s.kind();
        snapshot::write_frame(buf, Kind::Breaker, VERSION, fingerprint, wall, |w| {
            // An open breaker is saved as open whether or not it scouts: the
            // configuration that restores it decides.
            let saved_kind = if kind == KIND_OPENING || kind == KIND_SCOUTING {
                KIND_OPEN
            } else {
                kind
            };
            w.u8(saved_kind as u8);
            w.u8(trips as u8);
            let payload = match kind {
                KIND_CLOSED if !decided => s.payload(),
                KIND_HALF_OPEN => counts[0] + counts[1],
                _ => 0,
            };
            w.u32(payload);
            for c in counts {
                // Below 1024: probes are at most MAX_PROBES.
                w.u16(c as u16);
            }
            let open_left = match kind {
                KIND_OPENING => opening_ns,
                // ordering: Relaxed; the Acquire load of `Open` in `load`
                // made the tripping thread's store visible.
                KIND_OPEN | KIND_SCOUTING => {
                    snapshot::remaining(self.core.open_until.load(Ordering::Relaxed), now)
                }
                _ => 0,
            };
            w.u64(open_left);
            w.u64(layout);
            if decided {
                w.u8(WINDOW_NONE);
            } else if kind == KIND_CLOSED || kind == KIND_METRICS_ONLY {
                self.with_era(|_, window| write_window(w, window, s.generation(), now));
            } else {
                w.u8(WINDOW_NONE);
            }
        })
    }

    /// Restores a snapshot that [`save_state`](Self::save_state) wrote, at
    /// `now` and wall-clock time `wall`: the state, trip count, open
    /// deadline (by the clock rule of [`crate::snapshot`]), consecutive
    /// failures, the half-open probes that had reported, and the window.
    /// The breaker moves to a new generation: permits it granted before
    /// are stale. Restore a breaker before other threads use it; calls
    /// made during a restore may be counted in the old generation only.
    ///
    /// # Errors
    ///
    /// A typed [`SnapshotError`], the breaker unchanged: damaged or cut
    /// bytes, another kind or version. A snapshot taken under another
    /// configuration is converted (see the module documentation of
    /// `breaker/snapshot.rs` and `docs/snapshots.md`): state, trips and
    /// deadline kept, the window only into the same layout.
    pub fn restore_state(
        &self,
        bytes: &[u8],
        now: Timestamp,
        wall: WallTime,
    ) -> Result<(), SnapshotError> {
        let (header, mut r) = snapshot::open(bytes, Kind::Breaker, VERSION)?;
        let saved = self.with_era(|cfg, window| {
            let same = header.fingerprint == snapshot::fingerprint_of(cfg);
            let layout = snapshot::fingerprint_of(&cfg.window.spec);
            read_payload(&mut r, cfg.probes, window, same, layout)
        })?;
        r.finish()?;
        let generation = self.load().generation().wrapping_add(1);
        if !matches!(saved.window, SavedWindow::None) {
            self.with_era(|_, window| {
                restore_window(
                    window,
                    &saved.window,
                    generation,
                    header.taken_at,
                    now,
                    wall,
                );
            });
        }
        let mut probes = ProbeWord::fresh(generation);
        let [succeeded, failed, slow] = saved.probes;
        for i in 0..u32::from(succeeded) + u32::from(failed) {
            probes = probes.add(i >= u32::from(succeeded), i < u32::from(slow));
        }
        // ordering: Release, like the probe reporters' exchange; the state
        // store below publishes it again.
        self.core.probes.store(probes.0, Ordering::Release);
        let until = snapshot::restored_deadline(saved.open_left, header.taken_at, now, wall);
        // ordering: Release; the Release store of the state word below
        // publishes it to every admission that loads `Open`, and a scout's
        // compare-exchange that reads it directly synchronises with it (see
        // `CircuitBreaker::scout`).
        self.core.open_until.store(until, Ordering::Release);
        // A restored open period scouts if the configuration in force has
        // scouts.
        let kind =
            if saved.kind == KIND_OPEN && self.with_era(|cfg, _| cfg.probe_every_ns.is_some()) {
                KIND_SCOUTING
            } else {
                saved.kind
            };
        let word = StateWord::new(kind, saved.trips, saved.payload, generation);
        // ordering: Release, pairs with the Acquire load in `load`, so that
        // a reader of the restored word sees its deadline, probes and window.
        self.core.state.store(word.0, Ordering::Release);
        Ok(())
    }
}

fn write_window(w: &mut Writer<'_>, window: &CallWindow, generation: u32, now: Timestamp) {
    match window {
        CallWindow::Count(c) => {
            w.u8(WINDOW_COUNT);
            let mut outcomes = [0u8; (MAX_WINDOW_CALLS as usize * 2).div_ceil(8)];
            let n = c.newest(generation, u64::from(c.size()), {
                let mut i = 0;
                let outcomes = &mut outcomes;
                move |failed, slow| {
                    let bits = u8::from(failed) | (u8::from(slow) << 1);
                    outcomes[i / 4] |= bits << (2 * (i % 4));
                    i += 1;
                }
            });
            // At most the window's size, at most MAX_WINDOW_CALLS (4096).
            let n = n as usize;
            w.u16(n as u16);
            w.bytes(&outcomes[..(n * 2).div_ceil(8)]);
        }
        CallWindow::Time(t) => {
            w.u8(WINDOW_TIME);
            write_time_window(w, t, generation, now);
        }
    }
}

/// A time window's buckets at `now`, for a snapshot (the breaker's and the
/// throttle's): the offset into the bucket of `now`, the number of buckets,
/// and each bucket's calls, failures and slow calls, newest first.
pub(crate) fn write_time_window(
    w: &mut Writer<'_>,
    t: &StripedWindow,
    generation: u32,
    now: Timestamp,
) {
    w.u64(now.as_nanos() % t.bucket_ns());
    let mut buckets = [WindowCounts::default(); MAX_BUCKETS];
    let mut used = 0;
    t.buckets_by_age(generation, now, |b| {
        buckets[used] = b;
        used += 1;
    });
    w.u8(used as u8);
    for b in &buckets[..used] {
        // A stripe's bucket saturates at 2^32 - 1; a sum over stripes is
        // clamped to what a restored bucket holds.
        for v in [b.calls, b.failures, b.slow] {
            w.u32(u32::try_from(v).unwrap_or(u32::MAX));
        }
    }
}

/// A time window's buckets as a snapshot holds them.
pub(crate) struct SavedTime {
    offset: u64,
    buckets: [WindowCounts; MAX_BUCKETS],
    used: usize,
}

/// Reads what [`write_time_window`] wrote (checked against a layout by
/// [`SavedTime::fits`]).
pub(crate) fn read_time_window(r: &mut Reader<'_>) -> Result<SavedTime, SnapshotError> {
    let offset = r.u64()?;
    let used = usize::from(r.u8()?);
    if used > MAX_BUCKETS {
        return Err(SnapshotError::Malformed);
    }
    let mut buckets = [WindowCounts::default(); MAX_BUCKETS];
    for b in &mut buckets[..used] {
        let (calls, failures, slow) = (r.u32()?, r.u32()?, r.u32()?);
        if failures > calls || slow > calls {
            return Err(SnapshotError::Malformed);
        }
        *b = WindowCounts {
            calls: calls.into(),
            failures: failures.into(),
            slow: slow.into(),
        };
    }
    Ok(SavedTime {
        offset,
        buckets,
        used,
    })
}

impl SavedTime {
    /// Whether the saved buckets fit `t`'s layout.
    pub(crate) fn fits(&self, t: &StripedWindow) -> bool {
        self.offset < t.bucket_ns() && self.used <= t.bucket_count() as usize
    }
}

/// Puts saved buckets back into `t` for `generation` at `now`, aged by the
/// wall-clock time since the snapshot (see the module documentation).
pub(crate) fn restore_time_window(
    t: &StripedWindow,
    saved: &SavedTime,
    generation: u32,
    taken_at: WallTime,
    now: Timestamp,
    wall: WallTime,
) {
    let shift = saved.offset.saturating_add(wall.nanos_since(taken_at)) / t.bucket_ns();
    for (age, b) in saved.buckets[..saved.used].iter().enumerate() {
        t.put_by_age(generation, now, (age as u64).saturating_add(shift), *b);
    }
}

fn read_payload<'a>(
    r: &mut Reader<'a>,
    probes: u32,
    window: &CallWindow,
    same_config: bool,
    layout: u64,
) -> Result<Saved<'a>, SnapshotError> {
    let kind = u64::from(r.u8()?);
    let trips = u32::from(r.u8()?);
    let mut payload = r.u32()?;
    let mut counts = [r.u16()?, r.u16()?, r.u16()?];
    let open_left = r.u64()?;
    let same_layout = r.u64()? == layout;
    let valid_kind = matches!(
        kind,
        KIND_CLOSED
            | KIND_OPEN
            | KIND_HALF_OPEN
            | KIND_FORCED_OPEN
            | KIND_DISABLED
            | KIND_METRICS_ONLY
    );
    let reported = u32::from(counts[0]) + u32::from(counts[1]);
    let probes_ok = if kind == KIND_HALF_OPEN {
        reported == payload
            && counts[2] as u32 <= reported
            && (reported < probes || !same_config)
            && reported < super::MAX_PROBES
    } else {
        counts == [0; 3]
    };
    if !valid_kind || trips > MAX_TRIPS || payload >= 1 << 24 || !probes_ok {
        return Err(SnapshotError::Malformed);
    }
    if kind == KIND_HALF_OPEN && reported >= probes {
        // Another configuration with fewer probes: the test starts again.
        (payload, counts) = (0, [0; 3]);
    }
    let saved_window = match r.u8()? {
        WINDOW_NONE => SavedWindow::None,
        WINDOW_COUNT => {
            let calls = r.u16()?;
            let bits = r.take((usize::from(calls) * 2).div_ceil(8))?;
            if u32::from(calls) > MAX_WINDOW_CALLS {
                return Err(SnapshotError::Malformed);
            }
            SavedWindow::Count { calls, bits }
        }
        WINDOW_TIME => SavedWindow::Time(read_time_window(r)?),
        _ => return Err(SnapshotError::Malformed),
    };
    let measured = kind == KIND_CLOSED || kind == KIND_METRICS_ONLY;
    if !measured && !matches!(saved_window, SavedWindow::None) {
        return Err(SnapshotError::Malformed);
    }
    // The window comes back only into the same layout; there it must fit.
    let saved_window = if !same_layout {
        if same_config {
            return Err(SnapshotError::Malformed);
        }
        SavedWindow::None
    } else {
        match (saved_window, window) {
            (SavedWindow::None, _) => SavedWindow::None,
            (SavedWindow::Count { calls, bits }, CallWindow::Count(c))
                if u32::from(calls) <= c.size() =>
            {
                SavedWindow::Count { calls, bits }
            }
            (SavedWindow::Time(t), CallWindow::Time(w)) if t.fits(w) => SavedWindow::Time(t),
            _ => return Err(SnapshotError::Malformed),
        }
    };
    Ok(Saved {
        kind,
        trips,
        payload,
        probes: counts,
        open_left: if kind == KIND_OPEN { open_left } else { 0 },
        window: saved_window,
    })
}

fn restore_window(
    window: &CallWindow,
    saved: &SavedWindow<'_>,
    generation: u32,
    taken_at: WallTime,
    now: Timestamp,
    wall: WallTime,
) {
    match (window, saved) {
        (CallWindow::Count(c), SavedWindow::Count { calls, bits }) => {
            for i in 0..usize::from(*calls) {
                let b = bits[i / 4] >> (2 * (i % 4));
                c.record(generation, b & 1 != 0, b & 2 != 0);
            }
        }
        (CallWindow::Time(t), SavedWindow::Time(saved)) => {
            restore_time_window(t, saved, generation, taken_at, now, wall);
        }
        // `read_payload` matched the saved window to this one.
        _ => {}
    }
}

#[cfg(all(test, not(tenlives_loom)))]
mod tests {
    use core::time::Duration;

    use super::*;
    use crate::breaker::{BreakerConfig, BreakerState};

    /// A half-open breaker whose probe word says `succeeded` and `failed`
    /// reports while its state word is still half-open: the instant between
    /// a deciding report's two exchanges.
    fn deciding(
        succeeded: u32,
        failed: u32,
        reopen_first: bool,
    ) -> (BreakerConfig, CircuitBreaker) {
        let config = BreakerConfig::builder()
            .without_failure_rate()
            .consecutive_failures(1)
            .open_duration(Duration::from_secs(1))
            .open_backoff(2.0, Duration::from_secs(60))
            .half_open_probes(2)
            .reopen_on_first_failure(reopen_first)
            .build()
            .unwrap();
        let b = CircuitBreaker::new(config.clone());
        let generation = 5;
        let mut probes = ProbeWord::fresh(generation);
        for i in 0..succeeded + failed {
            probes = probes.add(i >= succeeded, false);
        }
        b.core.probes.store(probes.0, Ordering::Release);
        let word = StateWord::new(KIND_HALF_OPEN, 1, 2, generation);
        b.core.state.store(word.0, Ordering::Release);
        (config, b)
    }

    fn round_trip(config: BreakerConfig, b: &CircuitBreaker) -> CircuitBreaker {
        let mut buf = [0u8; BREAKER_SNAPSHOT_MAX];
        let t = Timestamp::ZERO;
        let n = b.save_state(&mut buf, t, WallTime::UNIX_EPOCH).unwrap();
        let r = CircuitBreaker::new(config);
        r.restore_state(&buf[..n], t, WallTime::UNIX_EPOCH).unwrap();
        r
    }

    #[test]
    fn a_test_being_decided_is_saved_as_what_it_decides() {
        // Two successes of two probes: about to close.
        let (config, b) = deciding(2, 0, false);
        let r = round_trip(config, &b);
        assert_eq!(r.state(), BreakerState::Closed);
        assert_eq!(r.snapshot(Timestamp::ZERO).trips, 0);
        // A failure among them: about to open again, for 2 s (second trip).
        let (config, b) = deciding(1, 1, false);
        let r = round_trip(config, &b);
        assert_eq!(r.state(), BreakerState::Open);
        assert_eq!(
            r.snapshot(Timestamp::ZERO).retry_after,
            Some(Duration::from_secs(2))
        );
        // The first failure reopens at once when so configured.
        let (config, b) = deciding(0, 1, true);
        let r = round_trip(config, &b);
        assert_eq!(r.state(), BreakerState::Open);
        // Undecided: still half-open, one report in, one probe slot free.
        let (config, b) = deciding(1, 0, false);
        let r = round_trip(config, &b);
        assert_eq!(r.state(), BreakerState::HalfOpen);
        let probe = r.try_acquire(Timestamp::ZERO).expect("a probe slot");
        assert!(probe.is_probe());
        probe.success(Timestamp::ZERO);
        assert_eq!(r.state(), BreakerState::Closed);
    }
}
