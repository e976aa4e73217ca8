//! The throttle's counts against a sequential reference model of its
//! window: a ring of `buckets` slots, each holding the counts of the newest
//! bucket recorded into it (a record for an older bucket than its slot
//! holds is dropped, one for a newer bucket starts the slot afresh), the
//! window at `t` being the slots whose bucket is among the last `buckets`
//! at `t`. The throttle adds up its two newest buckets and remembers the
//! older ones' sums per bucket (`engine/src/throttle/closed.rs`); whatever
//! the order of records, admissions and queries at older times, it must give
//! the reference's counts exactly, as long as no request is recorded more
//! than a bucket after its end time (the stated limit, tested on its own
//! below).

use std::time::Duration;

use proptest::prelude::*;
use tenlives_engine::throttle::{Throttle, ThrottleConfig};
use tenlives_engine::time::Timestamp;

/// 12 buckets of 10 ns.
const BUCKET: u64 = 10;
const BUCKETS: u64 = 12;
const START: u64 = 1_000_000;

fn throttle() -> Throttle {
    Throttle::new(
        ThrottleConfig::builder()
            .window(Duration::from_nanos(BUCKET * BUCKETS), BUCKETS as u32)
            // Never rejects: every admission is a plain request.
            .minimum_requests(u32::MAX)
            .build()
            .unwrap(),
    )
}

#[derive(Clone, Debug)]
enum Op {
    /// A request ending `late` ns before the latest time seen (less than a
    /// bucket), accepted or not.
    Record { late: u64, accepted: bool },
    /// Time moves forward.
    Advance { by: u64 },
    /// The counts at `back` ns before the latest time seen.
    Query { back: u64 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0..BUCKET, any::<bool>()).prop_map(|(late, accepted)| Op::Record { late, accepted }),
        2 => (0..BUCKET * 3).prop_map(|by| Op::Advance { by }),
        2 => (0..BUCKET * (BUCKETS + 3)).prop_map(|back| Op::Query { back }),
    ]
}

/// The reference window: per slot, `(bucket, requests, accepts)`.
#[derive(Default)]
struct Reference {
    slots: [Option<(u64, u64, u64)>; BUCKETS as usize],
}

impl Reference {
    fn record(&mut self, at: u64, accepted: bool) {
        let bucket = at / BUCKET;
        let slot = &mut self.slots[(bucket % BUCKETS) as usize];
        match slot {
            Some((b, requests, accepts)) if *b == bucket => {
                *requests += 1;
                *accepts += u64::from(accepted);
            }
            Some((b, ..)) if *b > bucket => {}
            _ => *slot = Some((bucket, 1, u64::from(accepted))),
        }
    }

    fn counts(&self, t: u64) -> (u64, u64) {
        let head = t / BUCKET;
        self.slots
            .iter()
            .flatten()
            .filter(|(b, ..)| *b <= head && b + BUCKETS > head)
            .fold((0, 0), |(r, a), (_, requests, accepts)| {
                (r + requests, a + accepts)
            })
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(if cfg!(miri) { 8 } else { 512 }))]

    #[test]
    fn counts_match_the_reference(ops in proptest::collection::vec(op(), 1..200)) {
        let t = throttle();
        let mut reference = Reference::default();
        let mut latest = START;
        for op in ops {
            match op {
                Op::Record { late, accepted } => {
                    let at = latest - late;
                    let ticket = t.try_admit(Timestamp::from_nanos(at)).expect("never rejects");
                    if accepted {
                        ticket.accepted(Timestamp::from_nanos(at));
                    } else {
                        ticket.refused(Timestamp::from_nanos(at));
                    }
                    reference.record(at, accepted);
                }
                Op::Advance { by } => latest += by,
                Op::Query { back } => {
                    let at = latest - back;
                    prop_assert_eq!(t.counts(Timestamp::from_nanos(at)), reference.counts(at), "at {}", at);
                }
            }
            prop_assert_eq!(t.counts(Timestamp::from_nanos(latest)), reference.counts(latest));
        }
    }
}

/// The stated limit: a request recorded more than a bucket after its end
/// time lands in a bucket whose sum the admissions of the current bucket
/// already remember; they miss it, and the next bucket's count has it.
#[test]
fn a_record_later_than_a_bucket_is_missed_until_the_next_bucket() {
    let t = throttle();
    let now = Timestamp::from_nanos(START);
    let old = Timestamp::from_nanos(START - 3 * BUCKET);
    t.try_admit(old).unwrap().refused(old);
    assert_eq!(t.counts(now), (1, 0), "remembered with the old request");
    // A request admitted now whose end is recorded three buckets back, in
    // a closed bucket the memo of this bucket already holds.
    t.try_admit(now).unwrap().refused(old);
    assert_eq!(t.counts(now), (1, 0), "missed by this bucket's admissions");
    let next = Timestamp::from_nanos(START + BUCKET);
    assert_eq!(t.counts(next), (2, 0), "counted from the next bucket on");
    // A bucket late at most is never missed: the bucket before the
    // current one is added up by every admission.
    let previous = Timestamp::from_nanos(START);
    t.try_admit(next).unwrap().accepted(previous);
    assert_eq!(t.counts(next), (3, 1));
}

/// Conservation under threads: four threads admit and record requests over
/// ten buckets at once, racing to remember and read closed buckets' sums;
/// afterwards the window holds every request, once.
#[test]
fn threads_racing_on_the_memo_lose_and_double_no_request() {
    let t = std::sync::Arc::new(throttle());
    let per_thread: u64 = if cfg!(miri) { 200 } else { 20_000 };
    let threads: Vec<_> = (0..4u64)
        .map(|i| {
            let t = t.clone();
            std::thread::spawn(move || {
                let mut accepted = 0;
                for k in 0..per_thread {
                    // Ten buckets, visited in a different order by each
                    // thread: memos of several epochs are made and read.
                    let at = Timestamp::from_nanos(START + (k * (7 + 2 * i)) % 100);
                    let ticket = t.try_admit(at).expect("never rejects");
                    if (k + i) % 3 == 0 {
                        ticket.accepted(at);
                        accepted += 1;
                    } else {
                        ticket.refused(at);
                    }
                }
                accepted
            })
        })
        .collect();
    let accepted: u64 = threads.into_iter().map(|h| h.join().unwrap()).sum();
    // Buckets 100 000 to 100 009 were written; at 100 011 all are inside.
    let end = Timestamp::from_nanos(START + 119);
    assert_eq!(t.counts(end), (4 * per_thread, accepted));
}
