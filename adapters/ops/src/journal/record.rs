//! The journal's on-disk layout: segment headers and records.
//!
//! # Segment file `journal-<index, 10 digits>.tjl`
//!
//! | size | field |
//! |---|---|
//! | 4 | magic `b"TLJN"` |
//! | 2 | version (1) |
//! | 8 | sequence number of the segment's first record |
//! | 4 | CRC-32 of the 14 bytes before |
//! | … | records |
//!
//! # Record (integers little-endian)
//!
//! | size | field |
//! |---|---|
//! | 4 | body length `n` (at most [`MAX_BODY`]) |
//! | 4 | CRC-32 of the body |
//! | `n` | body: 1 type, 8 sequence number, then per type below |
//!
//! | type | after the sequence number |
//! |---|---|
//! | 1 event | kind u16, source u32, time u64 (ns), payload 2 × u64 |
//! | 2 lost | events the ring dropped here (u64) |
//!
//! Sequence numbers count records, one apart, across segments.

use tenlives_engine::events::{Event, EventKind};
use tenlives_engine::snapshot::crc32;
use tenlives_engine::time::Timestamp;

pub(super) const MAGIC: [u8; 4] = *b"TLJN";
pub(super) const VERSION: u16 = 1;
pub(super) const HEADER_LEN: usize = 4 + 2 + 8 + 4;
/// The largest body a record has (an event).
pub(super) const MAX_BODY: usize = 1 + 8 + 2 + 4 + 8 + 16;
const EVENT: u8 = 1;
const LOST: u8 = 2;

/// What a record holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Body {
    Event(Event),
    Lost(u64),
}

/// A segment header for a segment whose first record is `first_seq`.
pub(super) fn header(first_seq: u64) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..4].copy_from_slice(&MAGIC);
    h[4..6].copy_from_slice(&VERSION.to_le_bytes());
    h[6..14].copy_from_slice(&first_seq.to_le_bytes());
    let crc = crc32(&h[..14]);
    h[14..].copy_from_slice(&crc.to_le_bytes());
    h
}

/// The first sequence number of a segment, if its header is whole and ours.
pub(super) fn read_header(bytes: &[u8]) -> Option<u64> {
    let h = bytes.get(..HEADER_LEN)?;
    if h[..4] != MAGIC
        || h[4..6] != VERSION.to_le_bytes()
        || crc32(&h[..14]).to_le_bytes() != h[14..]
    {
        return None;
    }
    Some(u64::from_le_bytes(h[6..14].try_into().ok()?))
}

/// Appends the record `seq: body` to `out`.
pub(super) fn encode(out: &mut Vec<u8>, seq: u64, body: &Body) {
    let mut b = [0u8; MAX_BODY];
    let n = match body {
        Body::Event(e) => {
            b[0] = EVENT;
            b[1..9].copy_from_slice(&seq.to_le_bytes());
            b[9..11].copy_from_slice(&e.kind.0.to_le_bytes());
            b[11..15].copy_from_slice(&e.source.to_le_bytes());
            b[15..23].copy_from_slice(&e.time.as_nanos().to_le_bytes());
            b[23..31].copy_from_slice(&e.payload[0].to_le_bytes());
            b[31..39].copy_from_slice(&e.payload[1].to_le_bytes());
            39
        }
        Body::Lost(n) => {
            b[0] = LOST;
            b[1..9].copy_from_slice(&seq.to_le_bytes());
            b[9..17].copy_from_slice(&n.to_le_bytes());
            17
        }
    };
    out.extend_from_slice(&(n as u32).to_le_bytes());
    out.extend_from_slice(&crc32(&b[..n]).to_le_bytes());
    out.extend_from_slice(&b[..n]);
}

/// The record at the start of `bytes`: its sequence number, body and
/// length; `None` if the bytes there are not a whole, valid record (cut
/// short, damaged, or not a record).
pub(super) fn decode(bytes: &[u8]) -> Option<(u64, Body, usize)> {
    let len = u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
    if len > MAX_BODY {
        return None;
    }
    let crc = u32::from_le_bytes(bytes.get(4..8)?.try_into().ok()?);
    let b = bytes.get(8..8 + len)?;
    if crc32(b) != crc {
        return None;
    }
    let u64_at =
        |i: usize| -> Option<u64> { Some(u64::from_le_bytes(b.get(i..i + 8)?.try_into().ok()?)) };
    let seq = u64_at(1)?;
    let body = match (b.first()?, len) {
        (&EVENT, 39) => Body::Event(Event::new(
            EventKind(u16::from_le_bytes(b[9..11].try_into().ok()?)),
            u32::from_le_bytes(b[11..15].try_into().ok()?),
            Timestamp::from_nanos(u64_at(15)?),
            [u64_at(23)?, u64_at(31)?],
        )),
        (&LOST, 17) => Body::Lost(u64_at(9)?),
        _ => return None,
    };
    Some((seq, body, 8 + len))
}
