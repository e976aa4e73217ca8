//! The decision journal: the events of a ring appended to files, to read
//! back after a crash what the policies decided before it.
//!
//! - [`Journal`] appends records (an event, or a count of events the ring
//!   dropped before the journal could read them) to segment files in a
//!   directory, each record framed by its length and a CRC-32; a segment
//!   that would grow past [`JournalConfig::segment_bytes`] is closed and the
//!   next one begun (rotation). [`FsyncPolicy`] says when appended records
//!   are forced to disk.
//! - [`Journal::open`] finds the last segment and checks it record by
//!   record: a tail that a crash cut mid-record (or that was damaged) is cut
//!   off, and appending resumes after the last whole record ([`OpenReport`]).
//! - [`JournalDrain`] moves a ring's events into a journal on a thread of its
//!   own; [`Journal::drain`] does one pass from a consumer you hold.
//! - [`JournalReader`] streams every record back in order and reports gaps:
//!   events the ring lost ([`JournalItem::Lost`]), records missing from the
//!   files ([`JournalItem::Missing`]) and damaged bytes
//!   ([`JournalItem::Damaged`]).
//!
//! The layout is in `record.rs` and `docs/journal.md`.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use tenlives_engine::events::{Event, EventKind, EventRing};
//! use tenlives_engine::time::Timestamp;
//! use tenlives_ops::journal::{FsyncPolicy, Journal, JournalConfig, JournalDrain, JournalItem, JournalReader};
//!
//! let dir = tempfile::tempdir()?;
//! let ring = Arc::new(EventRing::with_capacity(4096)?);
//! let config = JournalConfig { segment_bytes: 64 << 20, fsync: FsyncPolicy::Interval(Duration::from_millis(100)) };
//! let (journal, opened) = Journal::open(dir.path(), config)?; // cuts a torn tail: `opened.cut`
//! assert_eq!(opened.cut, None);
//! let drain = JournalDrain::spawn(ring.clone(), journal, Duration::from_millis(10))?;
//! ring.push(Event::new(EventKind::BREAKER_OPENED, 7, Timestamp::ZERO, [1, 0]));
//! drain.shutdown()?; // a last pass, then fsync
//!
//! let mut events = 0;
//! for item in JournalReader::open(dir.path())? {
//!     match item? {
//!         JournalItem::Event { event, .. } => {
//!             assert_eq!(event.source, 7);
//!             events += 1;
//!         }
//!         JournalItem::Lost { .. } => { /* the ring dropped events here */ }
//!         JournalItem::Missing { .. } => { /* records not in the files */ }
//!         JournalItem::Damaged { .. } => { /* bytes that failed their check */ }
//!         JournalItem::Completed { .. } => { /* an idempotency key completed */ }
//!     }
//! }
//! assert_eq!(events, 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod completions;
mod reader;
mod record;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tenlives_engine::events::{Event, EventReader, EventSource, Received};

pub use completions::{CompletionJournal, read_completions};
pub use reader::{JournalItem, JournalReader};
use record::{Body, HEADER_LEN};
pub use record::{MAX_KEY, MAX_RESPONSE};

/// When appended records are forced to disk (`fsync`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// At the end of every [`Journal::append`], [`Journal::append_lost`] and
    /// [`Journal::drain`] (one sync per drained batch): a record is on disk
    /// when the call returns.
    EveryWrite,
    /// At the end of a write when at least this long passed since the last
    /// sync: a crash loses at most about this much.
    Interval(Duration),
    /// Never explicitly (on rotation neither): the operating system decides.
    Never,
}

/// Settings of a [`Journal`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JournalConfig {
    /// A segment is closed once the next record would take it past this
    /// many bytes (a segment holds at least one record).
    pub segment_bytes: u64,
    /// When to force records to disk.
    pub fsync: FsyncPolicy,
}

impl Default for JournalConfig {
    /// 64 MiB segments, synced at every write.
    fn default() -> Self {
        JournalConfig {
            segment_bytes: 64 << 20,
            fsync: FsyncPolicy::EveryWrite,
        }
    }
}

/// What [`Journal::open`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// Segment files found.
    pub segments: usize,
    /// The sequence number the next record gets.
    pub next_seq: u64,
    /// A torn or damaged tail cut off the last segment: (its index, the
    /// offset it was cut at, the bytes cut).
    pub cut: Option<(u64, u64, u64)>,
}

/// An append-only journal of events in a directory. See the
/// [module documentation](self).
#[derive(Debug)]
pub struct Journal {
    dir: PathBuf,
    config: JournalConfig,
    file: File,
    index: u64,
    /// Bytes in the current segment.
    len: u64,
    /// Records in the current segment.
    records: u64,
    next_seq: u64,
    last_sync: Instant,
    buf: Vec<u8>,
}

fn segment_path(dir: &Path, index: u64) -> PathBuf {
    dir.join(format!("journal-{index:010}.tjl"))
}

/// The indices of the segment files in `dir`, in order.
fn segments(dir: &Path) -> io::Result<Vec<u64>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(i) = name
            .strip_prefix("journal-")
            .and_then(|n| n.strip_suffix(".tjl"))
            .filter(|n| n.len() == 10)
            .and_then(|n| n.parse::<u64>().ok())
        {
            found.push(i);
        }
    }
    found.sort_unstable();
    Ok(found)
}

/// The whole records of a segment's bytes: (bytes they end at, the
/// sequence number after the last), given the header's first one. A record
/// out of sequence counts as damage.
fn scan(bytes: &[u8], first_seq: u64) -> (usize, u64) {
    let mut at = HEADER_LEN;
    let mut next = first_seq;
    while let Some((seq, _, n)) = record::decode(&bytes[at..]) {
        if seq != next {
            break;
        }
        at += n;
        next += 1;
    }
    (at, next)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    // Makes a new segment's directory entry durable (on Unix; elsewhere
    // opening a directory may fail, and there is nothing more to do).
    if let Ok(d) = File::open(dir) {
        d.sync_all()?;
    }
    Ok(())
}

impl Journal {
    /// Opens the journal in `dir` (created if missing), cutting a torn tail
    /// off its last segment, to append after its last whole record.
    ///
    /// # Errors
    ///
    /// I/O errors reading, cutting or creating segment files.
    pub fn open(dir: &Path, config: JournalConfig) -> io::Result<(Journal, OpenReport)> {
        fs::create_dir_all(dir)?;
        let found = segments(dir)?;
        let mut report = OpenReport {
            segments: found.len(),
            ..OpenReport::default()
        };
        let Some(&last) = found.last() else {
            let journal = Journal::create(dir, config, 0, 0)?;
            return Ok((journal, report));
        };
        let path = segment_path(dir, last);
        let bytes = fs::read(&path)?;
        let (good_end, next_seq) = match record::read_header(&bytes) {
            Some(first) => scan(&bytes, first),
            None => {
                // Torn while being created: the sequence goes on from the
                // segment before, and the header is written again.
                let before = match found.len().checked_sub(2).map(|i| found[i]) {
                    Some(prev) => {
                        let prev = fs::read(segment_path(dir, prev))?;
                        record::read_header(&prev).map_or(0, |first| scan(&prev, first).1)
                    }
                    None => 0,
                };
                if !bytes.is_empty() {
                    report.cut = Some((last, 0, bytes.len() as u64));
                }
                fs::remove_file(&path)?;
                let journal = Journal::create(dir, config, last, before)?;
                report.next_seq = before;
                return Ok((journal, report));
            }
        };
        if good_end < bytes.len() {
            let file = OpenOptions::new().write(true).open(&path)?;
            file.set_len(good_end as u64)?;
            file.sync_all()?;
            report.cut = Some((last, good_end as u64, (bytes.len() - good_end) as u64));
            tracing::warn!(
                segment = %path.display(),
                offset = good_end,
                bytes = bytes.len() - good_end,
                "journal: a torn tail was cut"
            );
        }
        let first = record::read_header(&bytes).unwrap_or(0);
        let file = OpenOptions::new().append(true).open(&path)?;
        report.next_seq = next_seq;
        Ok((
            Journal {
                dir: dir.to_owned(),
                config,
                file,
                index: last,
                len: good_end as u64,
                records: next_seq - first,
                next_seq,
                last_sync: Instant::now(),
                buf: Vec::new(),
            },
            report,
        ))
    }

    /// A new, empty segment `index` whose first record will be `first_seq`.
    fn create(
        dir: &Path,
        config: JournalConfig,
        index: u64,
        first_seq: u64,
    ) -> io::Result<Journal> {
        let path = segment_path(dir, index);
        let mut file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)?;
        file.write_all(&record::header(first_seq))?;
        file.sync_all()?;
        sync_dir(dir)?;
        Ok(Journal {
            dir: dir.to_owned(),
            config,
            file,
            index,
            len: HEADER_LEN as u64,
            records: 0,
            next_seq: first_seq,
            last_sync: Instant::now(),
            buf: Vec::new(),
        })
    }

    /// The sequence number the next record gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The index of the segment being written.
    pub fn segment(&self) -> u64 {
        self.index
    }

    /// Appends one event; returns its sequence number.
    ///
    /// # Errors
    ///
    /// I/O errors; the records of a failed write may be on disk in part (a
    /// torn tail the next [`open`](Self::open) cuts).
    pub fn append(&mut self, event: &Event) -> io::Result<u64> {
        let seq = self.next_seq;
        self.write(&[Body::Event(*event)])?;
        Ok(seq)
    }

    /// Appends a record saying that `events` events were lost before the
    /// journal could read them; returns its sequence number.
    ///
    /// # Errors
    ///
    /// As [`append`](Self::append).
    pub fn append_lost(&mut self, events: u64) -> io::Result<u64> {
        let seq = self.next_seq;
        self.write(&[Body::Lost(events)])?;
        Ok(seq)
    }

    /// Appends a record saying that the call for the idempotency key `key`
    /// (as encoded) completed at `at_unix_nanos` (wall clock, nanoseconds
    /// since the Unix epoch), with its response (as encoded) if it is kept;
    /// returns its sequence number. [`CompletionJournal`] calls it for an
    /// idempotency layer, [`read_completions`] reads the records back.
    ///
    /// # Errors
    ///
    /// `InvalidInput` for a key longer than [`MAX_KEY`] or a response
    /// longer than [`MAX_RESPONSE`] bytes (nothing written); otherwise as
    /// [`append`](Self::append).
    pub fn append_completed(
        &mut self,
        key: &[u8],
        at_unix_nanos: u64,
        response: Option<&[u8]>,
    ) -> io::Result<u64> {
        if key.len() > MAX_KEY || response.is_some_and(|r| r.len() > MAX_RESPONSE) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "an idempotency key or response too long for a journal record",
            ));
        }
        let seq = self.next_seq;
        self.write(&[Body::Completed(
            at_unix_nanos,
            key.to_vec(),
            response.map(<[u8]>::to_vec),
        )])?;
        Ok(seq)
    }

    /// Appends everything `consumer` can read now (events, and the counts of
    /// events it lost), as one write; returns the records appended.
    ///
    /// # Errors
    ///
    /// As [`append`](Self::append); the events read before the error are
    /// gone from the consumer.
    pub fn drain<C: EventReader>(&mut self, consumer: &mut C) -> io::Result<usize> {
        let mut total = 0;
        let mut batch = Vec::new();
        loop {
            batch.clear();
            while batch.len() < 4096 {
                match consumer.try_recv() {
                    Some(Received::Event(e)) => batch.push(Body::Event(e)),
                    Some(Received::Lost(n)) => batch.push(Body::Lost(n)),
                    // A kind of reading this journal format has no record
                    // for (`Received` is non-exhaustive): nothing to write.
                    Some(_) => {}
                    None => break,
                }
            }
            if batch.is_empty() {
                return Ok(total);
            }
            self.write(&batch)?;
            total += batch.len();
        }
    }

    /// Forces what was appended to disk.
    ///
    /// # Errors
    ///
    /// The `fsync` error.
    pub fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()?;
        self.last_sync = Instant::now();
        Ok(())
    }

    fn write(&mut self, bodies: &[Body]) -> io::Result<()> {
        self.buf.clear();
        for body in bodies {
            let start = self.buf.len();
            record::encode(&mut self.buf, self.next_seq, body);
            let n = (self.buf.len() - start) as u64;
            if self.records > 0 && self.len + n > self.config.segment_bytes {
                // This record opens the next segment: write what the
                // current one takes first.
                let rest = self.buf.split_off(start);
                self.file.write_all(&self.buf)?;
                self.rotate()?;
                self.buf = rest;
            }
            self.len += n;
            self.records += 1;
            self.next_seq += 1;
        }
        self.file.write_all(&self.buf)?;
        match self.config.fsync {
            FsyncPolicy::EveryWrite => self.sync(),
            FsyncPolicy::Interval(d) if self.last_sync.elapsed() >= d => self.sync(),
            _ => Ok(()),
        }
    }

    /// Closes the current segment (synced unless the policy is `Never`) and
    /// begins the next.
    fn rotate(&mut self) -> io::Result<()> {
        if self.config.fsync != FsyncPolicy::Never {
            self.file.sync_data()?;
        }
        let next = Journal::create(&self.dir, self.config, self.index + 1, self.next_seq)?;
        self.file = next.file;
        self.index = next.index;
        self.len = next.len;
        self.records = 0;
        Ok(())
    }
}

/// Moves a ring's events into a [`Journal`] on a thread of its own: a pass
/// every `every`, and a last one (then a sync) on
/// [`shutdown`](Self::shutdown) or drop.
#[derive(Debug)]
pub struct JournalDrain {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<io::Result<Journal>>>,
}

impl JournalDrain {
    /// Starts draining `ring` (an
    /// [`EventRing`](tenlives_engine::events::EventRing) or a
    /// [`LaneRing`](tenlives_engine::events::LaneRing)) into `journal`.
    /// Events pushed after this returns are journalled (the consumer joins
    /// before it returns).
    ///
    /// # Errors
    ///
    /// When the thread cannot be started.
    pub fn spawn<R>(ring: Arc<R>, mut journal: Journal, every: Duration) -> io::Result<Self>
    where
        R: EventSource + Send + Sync + 'static,
    {
        let (stop, stopped) = mpsc::channel::<()>();
        let (ready, joined) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("tenlives-journal".into())
            .spawn(move || {
                let mut consumer = ring.reader();
                // The spawner waits for this; if it is gone, nobody minds.
                let _ = ready.send(());
                loop {
                    let last =
                        !matches!(stopped.recv_timeout(every), Err(RecvTimeoutError::Timeout));
                    if let Err(e) = journal.drain(&mut consumer) {
                        tracing::warn!(error = %e, "journal: a drain pass failed");
                        if last {
                            return Err(e);
                        }
                    }
                    if last {
                        journal.sync()?;
                        return Ok(journal);
                    }
                }
            })?;
        // An error means the thread died before joining; `shutdown` says so.
        let _ = joined.recv();
        Ok(JournalDrain {
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Stops the thread after a last pass and a sync; returns the journal.
    ///
    /// # Errors
    ///
    /// The error of the last pass or sync.
    pub fn shutdown(mut self) -> io::Result<Journal> {
        drop(self.stop.take());
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            _ => Err(io::Error::other("the journal thread panicked")),
        }
    }
}

impl Drop for JournalDrain {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take()
            && let Ok(Err(e)) = t.join()
        {
            tracing::warn!(error = %e, "journal: the last drain failed");
        }
    }
}
