//! What the event ring tests share (`event_ring.rs`, `lane_ring.rs`):
//! events that check themselves, the operations of the property tests, and
//! the sequential model of a ring, "the last `capacity` events".

use std::collections::VecDeque;

use proptest::prelude::*;
use tenlives_engine::events::{Event, EventKind, Received};
use tenlives_engine::time::Timestamp;

/// Event `seq` of `source`, whose payload checks itself: `payload[1]` is a
/// hash of the rest, so a mix of two events' words is detected.
pub fn event(seq: u64, source: u32) -> Event {
    let p0 = seq.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    Event::new(
        EventKind(seq as u16 | 1),
        source,
        Timestamp::from_nanos(seq),
        [p0, checksum(seq, source, p0)],
    )
}

fn checksum(seq: u64, source: u32, p0: u64) -> u64 {
    (seq ^ (u64::from(source) << 40) ^ p0.rotate_left(17)).wrapping_mul(0xff51_afd7_ed55_8ccd)
}

/// Whether `e` is whole: one event's words, not a mix.
pub fn intact(e: &Event) -> bool {
    e.payload[1] == checksum(e.time.as_nanos(), e.source, e.payload[0])
        && e.kind == EventKind(e.time.as_nanos() as u16 | 1)
}

/// One step of a property test on one thread.
#[derive(Clone, Debug)]
pub enum Op {
    /// Emit this many events.
    Emit(u8),
    /// One `try_recv` by the consumer at this index (modulo their number).
    Read(usize),
    /// A new consumer joins.
    Join,
}

/// Up to 200 steps, reads and emits equally likely, joins rarer.
pub fn ops() -> impl Strategy<Value = Vec<Op>> {
    proptest::collection::vec(
        prop_oneof![
            3 => (1u8..12).prop_map(Op::Emit),
            3 => any::<usize>().prop_map(Op::Read),
            1 => Just(Op::Join),
        ],
        1..200,
    )
}

/// The sequential model: a ring that keeps the last `capacity` events. A
/// consumer at sequence `r` more than `capacity` behind loses everything
/// older than the last `capacity`; otherwise it reads event `r`.
pub struct LastEvents {
    capacity: usize,
    kept: VecDeque<Event>,
    emitted: u64,
}

impl LastEvents {
    pub fn new(capacity: usize) -> Self {
        LastEvents {
            capacity,
            kept: VecDeque::new(),
            emitted: 0,
        }
    }

    /// Events emitted so far.
    pub fn emitted(&self) -> u64 {
        self.emitted
    }

    /// Emits the next event (of source 1) into the model, and returns it
    /// for the real ring.
    pub fn emit(&mut self) -> Event {
        let e = event(self.emitted, 1);
        self.kept.push_back(e);
        if self.kept.len() > self.capacity {
            self.kept.pop_front();
        }
        self.emitted += 1;
        e
    }

    /// What a consumer at `cursor` receives next, moving `cursor` on.
    pub fn receive(&self, cursor: &mut u64) -> Option<Received> {
        let oldest = self.emitted - self.kept.len() as u64;
        if *cursor == self.emitted {
            None
        } else if *cursor < oldest {
            let n = oldest - *cursor;
            *cursor = oldest;
            Some(Received::Lost(n))
        } else {
            let e = self.kept[(*cursor - oldest) as usize];
            *cursor += 1;
            Some(Received::Event(e))
        }
    }
}
