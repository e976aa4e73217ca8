//! An event as the four words of a ring's slot, in both rings.
//!
//! ```text
//! [ kind | source << 32 ], time, payload[0], payload[1]
//! ```
//!
//! The words are written by the one producer that owns the slot and read
//! racily by consumers, who check the slot's version (a stamp, a lane word)
//! around the read; the fences that order the words against that version
//! are the ring's, around these calls.

use super::{Event, EventKind};
use crate::sync::{AtomicU64, Ordering};
use crate::time::Timestamp;

pub(super) struct Words([AtomicU64; 4]);

impl Words {
    #[cfg(not(tenlives_loom))]
    pub(super) const fn new() -> Self {
        Words([
            AtomicU64::new(0),
            AtomicU64::new(0),
            AtomicU64::new(0),
            AtomicU64::new(0),
        ])
    }

    #[cfg(tenlives_loom)]
    pub(super) fn new() -> Self {
        Words(core::array::from_fn(|_| AtomicU64::new(0)))
    }

    /// Writes `event`.
    #[inline(always)]
    pub(super) fn store(&self, event: Event) {
        // ordering: Relaxed data words; the ring publishes them with its
        // version's Release store.
        self.0[0].store(
            u64::from(event.kind.0) | (u64::from(event.source) << 32),
            Ordering::Relaxed,
        );
        self.0[1].store(event.time.as_nanos(), Ordering::Relaxed);
        self.0[2].store(event.payload[0], Ordering::Relaxed);
        self.0[3].store(event.payload[1], Ordering::Relaxed);
    }

    /// Reads the words as an event; whole only if the ring's version check
    /// around the read says so.
    #[inline(always)]
    pub(super) fn load(&self) -> Event {
        // ordering: Relaxed data words; the ring's Acquire loads and fence
        // around this read decide whether they are one event.
        let w0 = self.0[0].load(Ordering::Relaxed);
        let time = self.0[1].load(Ordering::Relaxed);
        let p0 = self.0[2].load(Ordering::Relaxed);
        let p1 = self.0[3].load(Ordering::Relaxed);
        Event {
            kind: EventKind(w0 as u16),
            source: (w0 >> 32) as u32,
            time: Timestamp::from_nanos(time),
            payload: [p0, p1],
        }
    }
}
