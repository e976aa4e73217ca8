//! Model: the journal's records read back are exactly the records written,
//! in order, with contiguous sequence numbers, across rotations; after a
//! crash that cut the last segment anywhere or flipped bits in it, opening
//! the journal cuts the tail from the first bad record on, the reader gives
//! exactly the records before it and reports the rest as damaged (never a
//! wrong record), and appending goes on from there; damage in an earlier
//! segment is reported and reading goes on with the next; events the ring
//! lost are journalled as gaps with their exact count.

use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use tenlives_engine::events::{Event, EventKind, EventRing, LaneRing};
use tenlives_engine::time::Timestamp;
use tenlives_ops::journal::{
    FsyncPolicy, Journal, JournalConfig, JournalDrain, JournalItem, JournalReader,
};

const HEADER: usize = 18;
const EVENT_RECORD: usize = 47;
const LOST_RECORD: usize = 25;

#[derive(Clone, Debug, PartialEq)]
enum Rec {
    Event(Event),
    Lost(u64),
    /// An idempotency key completed: time, key, response if kept.
    Completed(u64, Vec<u8>, Option<Vec<u8>>),
}

impl Rec {
    fn size(&self) -> usize {
        match self {
            Rec::Event(_) => EVENT_RECORD,
            Rec::Lost(_) => LOST_RECORD,
            Rec::Completed(_, k, r) => 32 + k.len() + r.as_ref().map_or(0, Vec::len),
        }
    }
}

fn rec() -> impl Strategy<Value = Rec> {
    prop_oneof![
        6 => (any::<u16>(), any::<u32>(), any::<u64>(), any::<[u64; 2]>()).prop_map(|(k, s, t, p)| {
            Rec::Event(Event::new(EventKind(k), s, Timestamp::from_nanos(t), p))
        }),
        1 => (1..1_000u64).prop_map(Rec::Lost),
        2 => (
            any::<u64>(),
            proptest::collection::vec(any::<u8>(), 0..40),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..60)),
        )
            .prop_map(|(at, k, r)| Rec::Completed(at, k, r)),
    ]
}

fn config(segment_bytes: u64) -> JournalConfig {
    JournalConfig {
        segment_bytes,
        fsync: FsyncPolicy::Never,
    }
}

fn write(journal: &mut Journal, recs: &[Rec]) {
    for r in recs {
        match r {
            Rec::Event(e) => journal.append(e).unwrap(),
            Rec::Lost(n) => journal.append_lost(*n).unwrap(),
            Rec::Completed(at, k, r) => journal.append_completed(k, *at, r.as_deref()).unwrap(),
        };
    }
}

fn read_all(dir: &std::path::Path) -> Vec<JournalItem> {
    JournalReader::open(dir)
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// The records read, checking that their sequence numbers count from 0.
fn records(items: &[JournalItem]) -> Vec<Rec> {
    let mut out = Vec::new();
    for item in items {
        match item {
            JournalItem::Event { seq, event } => {
                assert_eq!(*seq as usize, out.len());
                out.push(Rec::Event(*event));
            }
            JournalItem::Lost { seq, events } => {
                assert_eq!(*seq as usize, out.len());
                out.push(Rec::Lost(*events));
            }
            JournalItem::Completed {
                seq,
                at_unix_nanos,
                key,
                response,
            } => {
                assert_eq!(*seq as usize, out.len());
                out.push(Rec::Completed(
                    *at_unix_nanos,
                    key.clone(),
                    response.clone(),
                ));
            }
            _ => {}
        }
    }
    out
}

fn segment_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "tjl"))
        .collect();
    v.sort();
    v
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn records_round_trip_across_rotations_and_reopens(
        recs in proptest::collection::vec(rec(), 0..200),
        segment_bytes in 60..600u64,
        reopen_at in any::<prop::sample::Index>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let split = if recs.is_empty() { 0 } else { reopen_at.index(recs.len()) };
        let (mut j, report) = Journal::open(dir.path(), config(segment_bytes)).unwrap();
        prop_assert_eq!(report.next_seq, 0);
        write(&mut j, &recs[..split]);
        drop(j);
        let (mut j, report) = Journal::open(dir.path(), config(segment_bytes)).unwrap();
        prop_assert_eq!(report.next_seq, split as u64);
        prop_assert_eq!(report.cut, None);
        write(&mut j, &recs[split..]);
        let items = read_all(dir.path());
        prop_assert!(items.iter().all(|i| matches!(i, JournalItem::Event { .. } | JournalItem::Lost { .. } | JournalItem::Completed { .. })), "{:?}", items);
        prop_assert_eq!(records(&items), recs.clone());
        // Rotation: no segment past its size unless it holds one record.
        let largest = recs.iter().map(Rec::size).max().unwrap_or(0).max(EVENT_RECORD);
        for f in segment_files(dir.path()) {
            let len = std::fs::metadata(&f).unwrap().len();
            prop_assert!(len <= segment_bytes.max((HEADER + largest) as u64));
        }
    }

    #[test]
    fn a_torn_or_damaged_tail_is_cut_and_nothing_wrong_is_read(
        recs in proptest::collection::vec(rec(), 1..150),
        segment_bytes in 100..2_000u64,
        cut in any::<prop::sample::Index>(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), 0..8u8), 0..3),
        more in proptest::collection::vec(rec(), 0..20),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _) = Journal::open(dir.path(), config(segment_bytes)).unwrap();
        write(&mut j, &recs);
        drop(j);
        let files = segment_files(dir.path());
        let last = files.last().unwrap();
        let mut bytes = std::fs::read(last).unwrap();
        let first_seq = u64::from_le_bytes(bytes[6..14].try_into().unwrap()) as usize;
        // The records of the last segment and where each ends.
        let mut ends = Vec::new();
        let mut at = HEADER;
        for r in &recs[first_seq..] {
            at += r.size();
            ends.push(at);
        }
        prop_assert_eq!(at, bytes.len());
        // Damage: cut somewhere, then flip bits before the cut.
        let keep_len = cut.index(bytes.len() + 1);
        bytes.truncate(keep_len);
        let mut first_bad = keep_len;
        if !bytes.is_empty() {
            let mut flipped = std::collections::BTreeSet::new();
            for (i, bit) in &flips {
                let i = i.index(bytes.len());
                if flipped.insert((i, *bit)) {
                    bytes[i] ^= 1 << bit;
                    first_bad = first_bad.min(i);
                }
            }
        }
        std::fs::write(last, &bytes).unwrap();
        // Whole records before the first damaged byte survive; a damaged
        // header loses the whole segment.
        let header_bad = first_bad < HEADER;
        let survivors = if header_bad { 0 } else { ends.iter().filter(|&&e| e <= first_bad).count() };
        let good_end = if header_bad { 0 } else if survivors == 0 { HEADER } else { ends[survivors - 1] };
        let expected: Vec<Rec> = recs[..first_seq + survivors].to_vec();

        // Read before any writer opened it: the good prefix, then (if
        // anything is wrong) damage, never a wrong record.
        let items = read_all(dir.path());
        prop_assert_eq!(records(&items), expected.clone());

        let (mut j, report) = Journal::open(dir.path(), config(segment_bytes)).unwrap();
        prop_assert_eq!(report.next_seq, expected.len() as u64);
        prop_assert_eq!(report.cut, (keep_len > good_end).then(|| {
            let index = (files.len() - 1) as u64;
            (index, good_end as u64, (keep_len - good_end) as u64)
        }));
        write(&mut j, &more);
        drop(j);
        let items = read_all(dir.path());
        prop_assert!(items.iter().all(|i| matches!(i, JournalItem::Event { .. } | JournalItem::Lost { .. } | JournalItem::Completed { .. })), "{:?}", items);
        let mut all = expected;
        all.extend_from_slice(&more);
        prop_assert_eq!(records(&items), all);
    }
}

#[test]
fn damage_in_an_earlier_segment_is_reported_and_reading_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let (mut j, _) = Journal::open(dir.path(), config(200)).unwrap();
    let e = |i: u64| Event::new(EventKind(7), 1, Timestamp::from_nanos(i), [i, 0]);
    for i in 0..20 {
        j.append(&e(i)).unwrap();
    }
    drop(j);
    let files = segment_files(dir.path());
    assert!(files.len() >= 4);
    // Segments hold 3 events (18 + 3 × 47 = 159 bytes); damage the
    // second event of the second segment.
    let mut b = std::fs::read(&files[1]).unwrap();
    b[HEADER + EVENT_RECORD + 20] ^= 0xff;
    std::fs::write(&files[1], &b).unwrap();
    let items = read_all(dir.path());
    let seqs: Vec<u64> = items
        .iter()
        .filter_map(|i| match i {
            JournalItem::Event { seq, .. } => Some(*seq),
            _ => None,
        })
        .collect();
    assert_eq!(
        seqs,
        [
            0, 1, 2, 3, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19
        ]
    );
    assert!(items.contains(&JournalItem::Damaged {
        segment: 1,
        offset: (HEADER + EVENT_RECORD) as u64,
        bytes: (2 * EVENT_RECORD) as u64
    }));
    assert!(items.contains(&JournalItem::Missing { from: 4, to: 6 }));
    // The writer appends after the last segment, untouched.
    let (j, report) = Journal::open(dir.path(), config(200)).unwrap();
    assert_eq!((report.next_seq, report.cut), (20, None));
    assert_eq!(j.next_seq(), 20);
}

#[test]
fn events_the_ring_lost_are_journalled_as_gaps() {
    let dir = tempfile::tempdir().unwrap();
    let ring = EventRing::with_capacity(8).unwrap();
    let mut consumer = ring.consumer();
    let (mut j, _) = Journal::open(dir.path(), JournalConfig::default()).unwrap();
    let e = |i: u64| Event::new(EventKind(9), 2, Timestamp::from_nanos(i), [i, i]);
    // 20 events into a ring of 8 before the drain: 12 lost.
    for i in 0..20 {
        ring.push(e(i));
    }
    assert_eq!(j.drain(&mut consumer).unwrap(), 9);
    for i in 20..25 {
        ring.push(e(i));
    }
    assert_eq!(j.drain(&mut consumer).unwrap(), 5);
    let items = read_all(dir.path());
    assert_eq!(items[0], JournalItem::Lost { seq: 0, events: 12 });
    let times: Vec<u64> = items[1..]
        .iter()
        .map(|i| match i {
            JournalItem::Event { event, .. } => event.time.as_nanos(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(times, (12..25).collect::<Vec<_>>());
}

#[test]
fn the_drain_thread_journals_everything_pushed_before_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let ring = Arc::new(EventRing::with_capacity(1024).unwrap());
    let (j, _) = Journal::open(dir.path(), JournalConfig::default()).unwrap();
    let drain = JournalDrain::spawn(ring.clone(), j, Duration::from_millis(5)).unwrap();
    for i in 0..500u64 {
        ring.push(Event::new(
            EventKind(3),
            0,
            Timestamp::from_nanos(i),
            [i, 0],
        ));
        if i % 100 == 0 {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    let j = drain.shutdown().unwrap();
    assert_eq!(j.next_seq(), 500);
    let items = read_all(dir.path());
    assert_eq!(items.len(), 500);
    assert!(items.iter().enumerate().all(|(i, item)| matches!(
        item,
        JournalItem::Event { seq, event } if *seq == i as u64 && event.payload[0] == i as u64
    )));
}

/// A laned ring drains into a journal as an `EventRing` does: two threads
/// emitting at once, every event journalled once or recorded as a gap.
#[test]
fn the_drain_thread_journals_a_laned_ring() {
    const PER_THREAD: u64 = 300;
    let dir = tempfile::tempdir().unwrap();
    let ring = Arc::new(LaneRing::new(2, 512).unwrap());
    let (j, _) = Journal::open(dir.path(), JournalConfig::default()).unwrap();
    let drain = JournalDrain::spawn(ring.clone(), j, Duration::from_millis(5)).unwrap();
    std::thread::scope(|s| {
        for source in 0..2u32 {
            let ring = &ring;
            s.spawn(move || {
                for i in 0..PER_THREAD {
                    ring.push(Event::new(
                        EventKind(3),
                        source,
                        Timestamp::from_nanos(i),
                        [i, 0],
                    ));
                }
            });
        }
    });
    drain.shutdown().unwrap();
    let mut seen = std::collections::HashSet::new();
    let mut lost = 0;
    for item in read_all(dir.path()) {
        match item {
            JournalItem::Event { event, .. } => {
                assert!(
                    seen.insert((event.source, event.payload[0])),
                    "{event:?} twice"
                );
            }
            JournalItem::Lost { events, .. } => lost += events,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(seen.len() as u64 + lost, 2 * PER_THREAD);
    assert_eq!(lost, ring.dropped(), "lanes of 512 overwrite nothing");
}
