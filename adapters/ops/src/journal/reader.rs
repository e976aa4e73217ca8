//! Reading a journal back: every record in order, and the gaps.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use tenlives_engine::events::Event;

use super::record::{self, Body, HEADER_LEN};
use super::{segment_path, segments};

/// One item of a journal, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JournalItem {
    /// An event, with its record's sequence number.
    Event {
        /// The record's sequence number.
        seq: u64,
        /// The event.
        event: Event,
    },
    /// The ring dropped this many events here, before the journal read
    /// them (a gap in what was decided, not in the files).
    Lost {
        /// The record's sequence number.
        seq: u64,
        /// Events lost.
        events: u64,
    },
    /// An idempotency key whose call completed
    /// ([`Journal::append_completed`](super::Journal::append_completed)).
    Completed {
        /// The record's sequence number.
        seq: u64,
        /// When the call completed: nanoseconds since the Unix epoch.
        at_unix_nanos: u64,
        /// The key, as encoded.
        key: Vec<u8>,
        /// The response, as encoded, if it was kept.
        response: Option<Vec<u8>>,
    },
    /// Records `from .. to` (sequence numbers) are not in the files: a
    /// segment was removed, or its damaged tail skipped.
    Missing {
        /// The first missing sequence number.
        from: u64,
        /// The first sequence number found after them.
        to: u64,
    },
    /// Bytes that are not whole, valid records (cut short or damaged) at
    /// `offset` of segment `segment`; the rest of that segment is skipped.
    /// A torn tail of the last segment reads so until a writer opens the
    /// journal and cuts it.
    Damaged {
        /// The segment's index.
        segment: u64,
        /// Where the damage begins.
        offset: u64,
        /// Bytes skipped.
        bytes: u64,
    },
}

/// Streams a journal's records, segment by segment (one segment in memory
/// at a time). See [`JournalItem`] for what it reports.
#[derive(Debug)]
pub struct JournalReader {
    dir: PathBuf,
    segments: std::vec::IntoIter<u64>,
    /// The segment being read, its bytes and where in them.
    current: Option<(u64, Vec<u8>, usize)>,
    /// The sequence number the next record should have.
    expected: Option<u64>,
    /// An item found while opening a segment, given before its records.
    pending: Vec<JournalItem>,
}

impl JournalReader {
    /// A reader of the journal in `dir`.
    ///
    /// # Errors
    ///
    /// When the directory cannot be listed.
    pub fn open(dir: &Path) -> io::Result<Self> {
        Ok(JournalReader {
            dir: dir.to_owned(),
            segments: segments(dir)?.into_iter(),
            current: None,
            expected: None,
            pending: Vec::new(),
        })
    }

    /// Loads the next segment; false at the end.
    fn next_segment(&mut self) -> io::Result<bool> {
        let Some(index) = self.segments.next() else {
            return Ok(false);
        };
        let bytes = fs::read(segment_path(&self.dir, index))?;
        match record::read_header(&bytes) {
            Some(first) if self.expected.is_none_or(|e| first >= e) => {
                if let Some(e) = self.expected.filter(|&e| first > e) {
                    self.pending
                        .push(JournalItem::Missing { from: e, to: first });
                }
                self.expected = Some(first);
                self.current = Some((index, bytes, HEADER_LEN));
            }
            _ => {
                if !bytes.is_empty() {
                    self.pending.push(JournalItem::Damaged {
                        segment: index,
                        offset: 0,
                        bytes: bytes.len() as u64,
                    });
                }
                self.current = None;
            }
        }
        Ok(true)
    }
}

impl Iterator for JournalReader {
    type Item = io::Result<JournalItem>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if !self.pending.is_empty() {
                return Some(Ok(self.pending.remove(0)));
            }
            if let Some((index, bytes, at)) = &mut self.current {
                if *at < bytes.len() {
                    let expected = self.expected.unwrap_or(0);
                    match record::decode(&bytes[*at..]) {
                        Some((seq, body, n)) if seq == expected => {
                            *at += n;
                            self.expected = Some(seq + 1);
                            return Some(Ok(match body {
                                Body::Event(event) => JournalItem::Event { seq, event },
                                Body::Lost(events) => JournalItem::Lost { seq, events },
                                Body::Completed(at_unix_nanos, key, response) => {
                                    JournalItem::Completed {
                                        seq,
                                        at_unix_nanos,
                                        key,
                                        response,
                                    }
                                }
                            }));
                        }
                        _ => {
                            let item = JournalItem::Damaged {
                                segment: *index,
                                offset: *at as u64,
                                bytes: (bytes.len() - *at) as u64,
                            };
                            self.current = None;
                            return Some(Ok(item));
                        }
                    }
                }
                self.current = None;
            }
            match self.next_segment() {
                Ok(true) => {}
                Ok(false) => return None,
                Err(e) => return Some(Err(e)),
            }
        }
    }
}
