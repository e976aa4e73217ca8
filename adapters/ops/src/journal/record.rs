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
//! | 3 completed | completion time u64 (ns since the Unix epoch), key length u16, key, response flag u8 (0 none, 1 kept), response length u32, response |
//!
//! Sequence numbers count records, one apart, across segments.

use tenlives_engine::events::{Event, EventKind};
use tenlives_engine::snapshot::crc32;
use tenlives_engine::time::Timestamp;

pub(super) const MAGIC: [u8; 4] = *b"TLJN";
pub(super) const VERSION: u16 = 1;
pub(super) const HEADER_LEN: usize = 4 + 2 + 8 + 4;
/// The longest idempotency key a completion record holds.
pub const MAX_KEY: usize = 1024;
/// The longest response a completion record holds.
pub const MAX_RESPONSE: usize = 64 << 10;
/// The largest body a record has (a completion with the longest key and
/// response).
pub(super) const MAX_BODY: usize = 1 + 8 + 8 + 2 + MAX_KEY + 1 + 4 + MAX_RESPONSE;
const EVENT: u8 = 1;
const LOST: u8 = 2;
const COMPLETED: u8 = 3;

/// What a record holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Body {
    Event(Event),
    Lost(u64),
    /// An idempotency key whose call completed: (wall-clock ns since the
    /// Unix epoch, key, response if kept).
    Completed(u64, Vec<u8>, Option<Vec<u8>>),
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

/// Appends the record `seq: body` to `out`. A completion's key and
/// response must be within [`MAX_KEY`] and [`MAX_RESPONSE`] (the journal
/// checks before).
pub(super) fn encode(out: &mut Vec<u8>, seq: u64, body: &Body) {
    if let Body::Completed(at, key, response) = body {
        let start = out.len();
        out.extend_from_slice(&[0u8; 8]);
        out.push(COMPLETED);
        out.extend_from_slice(&seq.to_le_bytes());
        out.extend_from_slice(&at.to_le_bytes());
        out.extend_from_slice(&(key.len() as u16).to_le_bytes());
        out.extend_from_slice(key);
        let resp: &[u8] = response.as_deref().unwrap_or(&[]);
        out.push(u8::from(response.is_some()));
        out.extend_from_slice(&(resp.len() as u32).to_le_bytes());
        out.extend_from_slice(resp);
        let n = out.len() - start - 8;
        let crc = crc32(&out[start + 8..]);
        out[start..start + 4].copy_from_slice(&(n as u32).to_le_bytes());
        out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
        return;
    }
    let mut b = [0u8; 39];
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
        Body::Completed(..) => unreachable!("encoded above"),
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
        (&COMPLETED, _) => {
            let at = u64_at(9)?;
            let klen = u16::from_le_bytes(b.get(17..19)?.try_into().ok()?) as usize;
            if klen > MAX_KEY {
                return None;
            }
            let key = b.get(19..19 + klen)?;
            let r = 19 + klen;
            let flag = *b.get(r)?;
            let rlen = u32::from_le_bytes(b.get(r + 1..r + 5)?.try_into().ok()?) as usize;
            if flag > 1 || (flag == 0 && rlen != 0) || rlen > MAX_RESPONSE || r + 5 + rlen != len {
                return None;
            }
            let response = (flag == 1).then(|| b[r + 5..].to_vec());
            Body::Completed(at, key.to_vec(), response)
        }
        _ => return None,
    };
    Some((seq, body, 8 + len))
}
