//! State snapshots: the framing every primitive's snapshot shares.
//!
//! A primitive writes its state into a buffer the caller owns (no
//! allocation) and is restored from such bytes, for example after a
//! restart. The bytes are framed so that a snapshot of the wrong kind, of
//! another format version, of another configuration, or one that was cut
//! short or damaged, is refused with a typed [`SnapshotError`] instead of
//! being believed (`docs/snapshots.md`).
//!
//! # Frame (all integers little-endian)
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `b"TLSN"` |
//! | 4 | 2 | framing version ([`FORMAT_VERSION`]) |
//! | 6 | 1 | kind ([`Kind`]) |
//! | 7 | 1 | the kind's payload version |
//! | 8 | 8 | configuration fingerprint |
//! | 16 | 8 | wall-clock time at the snapshot (ns since the Unix epoch) |
//! | 24 | 4 | payload length `n` |
//! | 28 | `n` | payload (the primitive's own layout) |
//! | 28 + `n` | 4 | CRC-32 (IEEE) of bytes `0 .. 28 + n` |
//!
//! # The clock rule
//!
//! The engine's [`Timestamp`]s count from an arbitrary origin that a new
//! process does not share, so no timestamp is stored. A deadline `d` is
//! stored as what was left of it at the snapshot, `d - now` (0 if past),
//! beside the wall-clock time `w` of the snapshot. Restored at monotonic
//! `now'` and wall-clock `w'`, it becomes
//!
//! ```text
//! d' = now' + (d - now).saturating_sub(w' - w)      (w' - w taken as 0 if w' < w)
//! ```
//!
//! The time the process was down counts as time that passed; a wall clock
//! that went backwards counts as no time passing, so a restore never ends a
//! wait early because of a clock step. The engine has no wall clock: the
//! caller passes [`WallTime`] at both ends ([`WallTime::now`] under `std`).

use core::fmt;

use crate::time::Timestamp;

/// The version of the framing above. A snapshot of another framing version
/// is refused with [`SnapshotError::UnsupportedVersion`].
pub const FORMAT_VERSION: u16 = 1;

/// The magic bytes every snapshot starts with.
pub const MAGIC: [u8; 4] = *b"TLSN";

/// Bytes of the header before the payload.
pub const HEADER_LEN: usize = 28;

/// Bytes of the checksum after the payload.
pub const TRAILER_LEN: usize = 4;

/// Which primitive a snapshot is of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Kind {
    /// A circuit breaker.
    Breaker,
    /// A direct rate limiter.
    RateLimiter,
    /// A keyed rate limiter's table.
    KeyedRateLimiter,
    /// A retry budget.
    RetryBudget,
    /// An adaptive concurrency limiter.
    AdaptiveLimiter,
    /// A client-side throttle.
    Throttle,
}

impl Kind {
    /// The byte that stands for the kind in a frame.
    pub const fn code(self) -> u8 {
        match self {
            Kind::Breaker => 1,
            Kind::RateLimiter => 2,
            Kind::KeyedRateLimiter => 3,
            Kind::RetryBudget => 4,
            Kind::AdaptiveLimiter => 5,
            Kind::Throttle => 6,
        }
    }

    /// The kind a frame's byte stands for.
    pub const fn from_code(code: u8) -> Option<Kind> {
        Some(match code {
            1 => Kind::Breaker,
            2 => Kind::RateLimiter,
            3 => Kind::KeyedRateLimiter,
            4 => Kind::RetryBudget,
            5 => Kind::AdaptiveLimiter,
            6 => Kind::Throttle,
            _ => return None,
        })
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Breaker => "circuit breaker",
            Kind::RateLimiter => "rate limiter",
            Kind::KeyedRateLimiter => "keyed rate limiter",
            Kind::RetryBudget => "retry budget",
            Kind::AdaptiveLimiter => "adaptive limiter",
            Kind::Throttle => "throttle",
        })
    }
}

/// Wall-clock time: nanoseconds since the Unix epoch, as the caller's
/// system clock reads it. Only snapshots use it (see the clock rule in the
/// [module documentation](self)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WallTime(u64);

impl WallTime {
    /// The Unix epoch.
    pub const UNIX_EPOCH: WallTime = WallTime(0);

    /// A time `nanos` nanoseconds after the Unix epoch.
    pub const fn from_unix_nanos(nanos: u64) -> Self {
        WallTime(nanos)
    }

    /// Nanoseconds since the Unix epoch.
    pub const fn as_unix_nanos(self) -> u64 {
        self.0
    }

    /// The system clock now (the Unix epoch if the clock reads before it).
    #[cfg(feature = "std")]
    pub fn now() -> Self {
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        WallTime(u64::try_from(since.as_nanos()).unwrap_or(u64::MAX))
    }

    /// Nanoseconds from `earlier` to `self`, 0 if `self` is not later.
    pub const fn nanos_since(self, earlier: WallTime) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

/// Why a snapshot could not be written or restored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SnapshotError {
    /// The buffer given to write into is too small.
    BufferTooSmall {
        /// Bytes the snapshot needs.
        needed: usize,
    },
    /// The bytes end before the frame does.
    Truncated,
    /// The bytes do not start with [`MAGIC`]: not a snapshot.
    BadMagic,
    /// A framing or payload version this build does not read.
    UnsupportedVersion {
        /// The framing version found.
        format: u16,
        /// The payload version found.
        payload: u8,
    },
    /// A snapshot of another primitive.
    WrongKind {
        /// The kind restoring.
        expected: Kind,
        /// The kind byte found.
        found: u8,
    },
    /// The checksum does not match: the bytes were damaged.
    ChecksumMismatch,
    /// The snapshot was taken under another configuration, which this
    /// primitive does not convert (`docs/snapshots.md` says which do).
    ConfigMismatch {
        /// The fingerprint of the configuration in force.
        expected: u64,
        /// The fingerprint in the snapshot.
        found: u64,
    },
    /// The checksum matched but the payload breaks its own rules (or there
    /// are bytes after the frame).
    Malformed,
    /// Another thread held what the snapshot needs at that instant (an
    /// adaptive limiter closing a window); nothing was waited for or
    /// changed: try again.
    Busy,
}

impl fmt::Display for SnapshotError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SnapshotError::BufferTooSmall { needed } => {
                write!(f, "snapshot buffer too small: {needed} bytes needed")
            }
            SnapshotError::Truncated => f.write_str("snapshot truncated"),
            SnapshotError::BadMagic => f.write_str("not a tenlives snapshot (bad magic)"),
            SnapshotError::UnsupportedVersion { format, payload } => write!(
                f,
                "unsupported snapshot version (framing {format}, payload {payload})"
            ),
            SnapshotError::WrongKind { expected, found } => {
                write!(
                    f,
                    "snapshot of another kind ({found}) where a {expected} was expected"
                )
            }
            SnapshotError::ChecksumMismatch => f.write_str("snapshot checksum mismatch"),
            SnapshotError::ConfigMismatch { expected, found } => write!(
                f,
                "snapshot taken under another configuration (fingerprint {found:#018x}, in force {expected:#018x})"
            ),
            SnapshotError::Malformed => f.write_str("malformed snapshot payload"),
            SnapshotError::Busy => f.write_str("snapshot not taken: busy, try again"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for SnapshotError {}

/// The header of a snapshot, read without restoring it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// The primitive's kind byte (see [`Kind::from_code`]).
    pub kind: u8,
    /// The payload's version.
    pub payload_version: u8,
    /// The fingerprint of the configuration it was taken under.
    pub fingerprint: u64,
    /// The wall-clock time it was taken at.
    pub taken_at: WallTime,
    /// The payload's length in bytes.
    pub payload_len: u32,
}

/// Reads and checks a frame: magic, framing version, length and checksum.
/// The bytes must be exactly one frame. Returns the header and the payload.
pub fn read_frame(bytes: &[u8]) -> Result<(Header, &[u8]), SnapshotError> {
    if bytes.len() < MAGIC.len() {
        return Err(if MAGIC.starts_with(bytes) {
            SnapshotError::Truncated
        } else {
            SnapshotError::BadMagic
        });
    }
    if bytes[..4] != MAGIC {
        return Err(SnapshotError::BadMagic);
    }
    if bytes.len() < HEADER_LEN + TRAILER_LEN {
        return Err(SnapshotError::Truncated);
    }
    let mut r = Reader::new(&bytes[4..HEADER_LEN]);
    let format = r.u16()?;
    let kind = r.u8()?;
    let payload_version = r.u8()?;
    let fingerprint = r.u64()?;
    let taken_at = WallTime(r.u64()?);
    let payload_len = r.u32()?;
    let total = HEADER_LEN
        .checked_add(payload_len as usize)
        .and_then(|n| n.checked_add(TRAILER_LEN))
        .ok_or(SnapshotError::Malformed)?;
    if bytes.len() < total {
        return Err(SnapshotError::Truncated);
    }
    if bytes.len() > total {
        return Err(SnapshotError::Malformed);
    }
    let body_end = HEADER_LEN + payload_len as usize;
    let stored = u32::from_le_bytes([
        bytes[body_end],
        bytes[body_end + 1],
        bytes[body_end + 2],
        bytes[body_end + 3],
    ]);
    if crc32(&bytes[..body_end]) != stored {
        return Err(SnapshotError::ChecksumMismatch);
    }
    // The version is judged after the checksum: a damaged version byte is
    // damage, not a snapshot from the future.
    if format != FORMAT_VERSION {
        return Err(SnapshotError::UnsupportedVersion {
            format,
            payload: payload_version,
        });
    }
    Ok((
        Header {
            kind,
            payload_version,
            fingerprint,
            taken_at,
            payload_len,
        },
        &bytes[HEADER_LEN..body_end],
    ))
}

/// Reads a frame of `kind` whose payload is of version `payload_version`.
pub(crate) fn open(
    bytes: &[u8],
    kind: Kind,
    payload_version: u8,
) -> Result<(Header, Reader<'_>), SnapshotError> {
    let (header, payload) = read_frame(bytes)?;
    if header.kind != kind.code() {
        return Err(SnapshotError::WrongKind {
            expected: kind,
            found: header.kind,
        });
    }
    if header.payload_version != payload_version {
        return Err(SnapshotError::UnsupportedVersion {
            format: FORMAT_VERSION,
            payload: header.payload_version,
        });
    }
    Ok((header, Reader::new(payload)))
}

/// Checks a snapshot's fingerprint against the configuration in force.
pub(crate) fn same_config(header: &Header, fingerprint: u64) -> Result<(), SnapshotError> {
    if header.fingerprint == fingerprint {
        Ok(())
    } else {
        Err(SnapshotError::ConfigMismatch {
            expected: fingerprint,
            found: header.fingerprint,
        })
    }
}

/// Writes a frame of `kind` into `buf`: the header, the payload that
/// `body` writes, the checksum. Returns the bytes written, or
/// [`SnapshotError::BufferTooSmall`] with the exact size needed.
pub(crate) fn write_frame(
    buf: &mut [u8],
    kind: Kind,
    payload_version: u8,
    fingerprint: u64,
    taken_at: WallTime,
    body: impl FnOnce(&mut Writer<'_>),
) -> Result<usize, SnapshotError> {
    let mut w = Writer { buf, pos: 0 };
    w.bytes(&MAGIC);
    w.u16(FORMAT_VERSION);
    w.u8(kind.code());
    w.u8(payload_version);
    w.u64(fingerprint);
    w.u64(taken_at.0);
    w.u32(0); // the length, patched below
    body(&mut w);
    let body_end = w.pos;
    let needed = body_end + TRAILER_LEN;
    if needed > w.buf.len() {
        return Err(SnapshotError::BufferTooSmall { needed });
    }
    let len = u32::try_from(body_end - HEADER_LEN).map_err(|_| SnapshotError::Malformed)?;
    w.buf[24..28].copy_from_slice(&len.to_le_bytes());
    let crc = crc32(&w.buf[..body_end]);
    w.u32(crc);
    Ok(w.pos)
}

/// A cursor writing little-endian integers into a caller's buffer. Past
/// the buffer's end it only counts, so that the size needed is known.
pub(crate) struct Writer<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl Writer<'_> {
    pub(crate) fn bytes(&mut self, b: &[u8]) {
        let end = self.pos + b.len();
        if let Some(dst) = self.buf.get_mut(self.pos..end) {
            dst.copy_from_slice(b);
        }
        self.pos = end;
    }

    pub(crate) fn u8(&mut self, v: u8) {
        self.bytes(&[v]);
    }

    pub(crate) fn u16(&mut self, v: u16) {
        self.bytes(&v.to_le_bytes());
    }

    pub(crate) fn u32(&mut self, v: u32) {
        self.bytes(&v.to_le_bytes());
    }

    pub(crate) fn u64(&mut self, v: u64) {
        self.bytes(&v.to_le_bytes());
    }
}

/// A cursor reading little-endian integers; running out is
/// [`SnapshotError::Malformed`] (the frame's length and checksum matched,
/// so the payload itself is wrong).
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes }
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], SnapshotError> {
        if n > self.bytes.len() {
            return Err(SnapshotError::Malformed);
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, SnapshotError> {
        Ok(self.take(1)?[0])
    }

    pub(crate) fn u16(&mut self) -> Result<u16, SnapshotError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, SnapshotError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, SnapshotError> {
        let b = self.take(8)?;
        let mut a = [0; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    /// The payload must be used up exactly.
    pub(crate) fn finish(self) -> Result<(), SnapshotError> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(SnapshotError::Malformed)
        }
    }
}

/// A deadline as what is left of it at `now` (0 if past): the form a
/// snapshot stores (see the clock rule).
pub(crate) fn remaining(deadline: u64, now: Timestamp) -> u64 {
    deadline.saturating_sub(now.as_nanos())
}

/// A deadline that had `remaining` ns left at the snapshot (taken at wall
/// time `taken_at`), restored at monotonic `now` and wall time `wall`: the
/// clock rule.
pub(crate) fn restored_deadline(
    remaining: u64,
    taken_at: WallTime,
    now: Timestamp,
    wall: WallTime,
) -> u64 {
    now.as_nanos()
        .saturating_add(remaining.saturating_sub(wall.nanos_since(taken_at)))
}

/// A configuration's fingerprint: FNV-1a (64-bit) over its `Debug` text,
/// which names every setting, so a setting added later is covered without
/// anyone remembering to add it here. A changed `Debug` text between builds
/// reads as another configuration (a refusal, never a wrong restore).
pub(crate) fn fingerprint_of(config: &impl fmt::Debug) -> u64 {
    struct Fnv(u64);
    impl fmt::Write for Fnv {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            for b in s.bytes() {
                self.0 ^= u64::from(b);
                self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
            }
            Ok(())
        }
    }
    let mut h = Fnv(0xcbf2_9ce4_8422_2325);
    // Writing into `Fnv` never fails; a `Debug` impl that fails leaves a
    // fingerprint of what it wrote, still deterministic.
    let _ = fmt::write(&mut h, format_args!("{config:?}"));
    h.0
}

/// CRC-32 (IEEE 802.3, reflected, polynomial 0xEDB88320), table-driven.
///
/// Written here rather than taken from `crc32fast`: 20 lines and a 1 KiB
/// table computed at compile time, against a dependency for every build of
/// the engine (including the microcontroller one, whose size is gated);
/// snapshots are small and rare, so the table-at-a-byte speed is plenty.
pub fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc = CRC_TABLE[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    fn frame(buf: &mut [u8]) -> usize {
        write_frame(buf, Kind::Throttle, 1, 7, WallTime(9), |w| {
            w.u64(0x0102_0304_0506_0708);
            w.u8(5);
        })
        .unwrap()
    }

    #[test]
    fn a_frame_round_trips() {
        let mut buf = [0u8; 64];
        let n = frame(&mut buf);
        assert_eq!(n, HEADER_LEN + 9 + TRAILER_LEN);
        let (h, mut r) = open(&buf[..n], Kind::Throttle, 1).unwrap();
        assert_eq!(
            (h.fingerprint, h.taken_at, h.payload_len),
            (7, WallTime(9), 9)
        );
        assert_eq!(r.u64().unwrap(), 0x0102_0304_0506_0708);
        assert_eq!(r.u8().unwrap(), 5);
        r.finish().unwrap();
    }

    #[test]
    fn every_truncation_and_every_bit_flip_is_refused() {
        let mut buf = [0u8; 64];
        let n = frame(&mut buf);
        for cut in 0..n {
            assert!(read_frame(&buf[..cut]).is_err(), "cut at {cut}");
        }
        for bit in 0..n * 8 {
            let mut b = buf;
            b[bit / 8] ^= 1 << (bit % 8);
            assert!(read_frame(&b[..n]).is_err(), "bit {bit}");
        }
    }

    #[test]
    fn kind_version_and_buffer_errors_are_typed() {
        let mut buf = [0u8; 64];
        let n = frame(&mut buf);
        assert_eq!(
            open(&buf[..n], Kind::Breaker, 1).err(),
            Some(SnapshotError::WrongKind {
                expected: Kind::Breaker,
                found: Kind::Throttle.code()
            })
        );
        assert_eq!(
            open(&buf[..n], Kind::Throttle, 2).err(),
            Some(SnapshotError::UnsupportedVersion {
                format: 1,
                payload: 1
            })
        );
        let mut small = [0u8; 20];
        assert_eq!(
            write_frame(&mut small, Kind::Throttle, 1, 0, WallTime(0), |w| w.u64(1)),
            Err(SnapshotError::BufferTooSmall { needed: 40 })
        );
        // Another framing version, with a valid checksum.
        let mut b = buf;
        b[4] = 2;
        let crc = crc32(&b[..n - 4]);
        b[n - 4..n].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(
            read_frame(&b[..n]).err(),
            Some(SnapshotError::UnsupportedVersion {
                format: 2,
                payload: 1
            })
        );
    }

    #[test]
    fn the_clock_rule() {
        let now = Timestamp::from_nanos(1_000);
        // 500 ns left; 200 ns of wall time passed; restored at 10.
        let r = restored_deadline(
            remaining(1_500, now),
            WallTime(100),
            Timestamp::from_nanos(10),
            WallTime(300),
        );
        assert_eq!(r, 310);
        // The wall clock went back: no time passed.
        let r = restored_deadline(500, WallTime(300), Timestamp::from_nanos(10), WallTime(100));
        assert_eq!(r, 510);
        // Down longer than the deadline: it passed.
        assert_eq!(
            restored_deadline(500, WallTime(0), Timestamp::MAX, WallTime(1_000)),
            u64::MAX
        );
        assert_eq!(remaining(5, Timestamp::from_nanos(9)), 0);
    }
}
