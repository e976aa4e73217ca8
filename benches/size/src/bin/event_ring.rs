//! An event ring over a `static` array: push an event, receive it.
#![no_std]
#![no_main]

use tenlives_engine::events::{Event, EventKind, EventRing, Received, Slot};
use tenlives_engine::time::Timestamp;
use tenlives_size::{observe, opaque, opaque_nanos, park};

static SLOTS: [Slot; 16] = [const { Slot::new() }; 16];

#[unsafe(no_mangle)]
pub extern "C" fn _start() -> ! {
    let Ok(ring) = EventRing::from_slots(&SLOTS[..]) else {
        park()
    };
    let ring = opaque(&ring);
    let mut consumer = ring.consumer();
    let mut t = 0;
    loop {
        t += opaque_nanos(1_000);
        ring.push(Event::new(
            EventKind(opaque(1)),
            opaque(7),
            Timestamp::from_nanos(t),
            [t, 0],
        ));
        match consumer.try_recv() {
            Some(Received::Event(e)) => observe(e.payload),
            Some(Received::Lost(n)) => observe(n),
            _ => {}
        }
    }
}
