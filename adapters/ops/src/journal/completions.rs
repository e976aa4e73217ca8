//! Idempotency keys across restarts: the completed keys of an
//! `IdempotencyService` (tenlives-tokio) written to a journal, and read
//! back to restore a restarted process's store.

use std::fmt;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tenlives_tokio::idempotency::{Completed, CompletionLog};

use super::{Journal, JournalItem, JournalReader, MAX_RESPONSE};

type Encode<T> = Box<dyn Fn(&T) -> Vec<u8> + Send + Sync>;

/// A [`CompletionLog`] writing each completed idempotency key to a
/// [`Journal`] ([`Journal::append_completed`]): the key as `encode_key`
/// makes it, the completion time, and the response as
/// [`keep_responses`](Self::keep_responses)' encoder makes it (without
/// one, only the key: after a restart its duplicates are refused rather
/// than answered).
///
/// A record is written, under the journal's [`FsyncPolicy`](super::FsyncPolicy),
/// before the response is stored or reaches any caller: with
/// `FsyncPolicy::EveryWrite` every response a client received has its key
/// on disk. One lock of the journal per completed keyed request, held for
/// the write (and the sync). A write that fails (or a key longer than
/// [`MAX_KEY`](super::MAX_KEY)) is counted in [`failures`](Self::failures)
/// and logged, and the request goes on: that key is not refused after a
/// restart. A response longer than [`MAX_RESPONSE`] is written without it.
///
/// ```
/// use std::sync::Arc;
/// use std::time::{Duration, SystemTime};
/// use tenlives_ops::journal::{CompletionJournal, Journal, JournalConfig, read_completions};
/// use tenlives_tokio::idempotency::{IdempotencyConfig, IdempotencyLayer};
/// use tower::{Layer, service_fn};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let dir = tempfile::tempdir()?;
/// let ttl = Duration::from_secs(24 * 3600);
/// let upstream = service_fn(|(_, n): (Option<String>, u32)| async move { Ok::<_, ()>(n * 2) });
/// let svc = IdempotencyLayer::new(
///     |(key, _): &(Option<String>, u32)| key.clone(),
///     IdempotencyConfig::new(ttl, 100_000, 1_000),
/// )
/// .layer(upstream);
/// // On start: restore what the journal holds, then log every completion.
/// let restored = read_completions(
///     dir.path(), ttl, SystemTime::now(),
///     |k| String::from_utf8(k.to_vec()).ok(),
///     |r| Some(u32::from_le_bytes(r.try_into().ok()?)),
/// )?;
/// svc.restore(restored, SystemTime::now());
/// let (journal, _) = Journal::open(dir.path(), JournalConfig::default())?;
/// let log = CompletionJournal::new(journal, |k: &String| k.as_bytes().to_vec())
///     .keep_responses(|r: &u32| r.to_le_bytes().to_vec());
/// let _ = svc.set_completion_log(Arc::new(log));
/// # Ok(())
/// # }
/// ```
pub struct CompletionJournal<K, R> {
    journal: Mutex<Journal>,
    key: Encode<K>,
    response: Option<Encode<R>>,
    failures: AtomicU64,
}

impl<K, R> fmt::Debug for CompletionJournal<K, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CompletionJournal")
            .field("keeps_responses", &self.response.is_some())
            .field("failures", &self.failures())
            .finish_non_exhaustive()
    }
}

impl<K, R> CompletionJournal<K, R> {
    /// Writes completed keys, encoded by `encode_key`, to `journal` (its
    /// own directory, or one no [`JournalDrain`](super::JournalDrain)
    /// writes to: a journal has one writer).
    pub fn new(
        journal: Journal,
        encode_key: impl Fn(&K) -> Vec<u8> + Send + Sync + 'static,
    ) -> Self {
        CompletionJournal {
            journal: Mutex::new(journal),
            key: Box::new(encode_key),
            response: None,
            failures: AtomicU64::new(0),
        }
    }

    /// Writes the responses too, encoded by `encode`, so that a restarted
    /// process answers duplicates with them.
    #[must_use]
    pub fn keep_responses(
        mut self,
        encode: impl Fn(&R) -> Vec<u8> + Send + Sync + 'static,
    ) -> Self {
        self.response = Some(Box::new(encode));
        self
    }

    /// Completions that could not be written.
    pub fn failures(&self) -> u64 {
        // ordering: Relaxed; a statistics counter.
        self.failures.load(Ordering::Relaxed)
    }

    /// Forces what was written to disk (for a journal not synced at every
    /// write, on shutdown).
    ///
    /// # Errors
    ///
    /// The `fsync` error.
    pub fn sync(&self) -> io::Result<()> {
        self.journal
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .sync()
    }
}

impl<K, R> CompletionLog<K, R> for CompletionJournal<K, R> {
    fn completed(&self, key: &K, response: &R, at: SystemTime) {
        let key = (self.key)(key);
        let response = self
            .response
            .as_ref()
            .map(|encode| encode(response))
            .filter(|r| r.len() <= MAX_RESPONSE);
        // Before the epoch: 0; past 2554: the largest.
        let at = at
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        // A panic while the journal was held (in a write) left at most a
        // torn tail behind, which the next open cuts: go on.
        let mut journal = self.journal.lock().unwrap_or_else(PoisonError::into_inner);
        if let Err(e) = journal.append_completed(&key, at, response.as_deref()) {
            drop(journal);
            // ordering: Relaxed; a statistics counter.
            self.failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, "journal: a completed idempotency key was not written");
        }
    }
}

/// Reads back the completed idempotency keys of the journal in `dir`, in
/// the order they were written, for
/// [`IdempotencyService::restore`](tenlives_tokio::idempotency::IdempotencyService::restore):
/// those completed less than `ttl` before `now` (a completion time later
/// than `now` counts as `now`), keys decoded by `decode_key` (a key it
/// refuses is skipped), responses by `decode_response` (a response it
/// refuses is dropped, so its key's duplicates are refused). Every other
/// record (events, losses) is skipped, and so are damaged bytes: a torn
/// tail costs only the record it tore.
///
/// # Errors
///
/// I/O errors listing or reading the segment files.
pub fn read_completions<K, R>(
    dir: &Path,
    ttl: Duration,
    now: SystemTime,
    decode_key: impl Fn(&[u8]) -> Option<K>,
    decode_response: impl Fn(&[u8]) -> Option<R>,
) -> io::Result<Vec<Completed<K, R>>> {
    let mut found = Vec::new();
    if !dir.exists() {
        return Ok(found);
    }
    for item in JournalReader::open(dir)? {
        let JournalItem::Completed {
            at_unix_nanos,
            key,
            response,
            ..
        } = item?
        else {
            continue;
        };
        let at = UNIX_EPOCH + Duration::from_nanos(at_unix_nanos);
        if now.duration_since(at).unwrap_or(Duration::ZERO) >= ttl {
            continue;
        }
        let Some(key) = decode_key(&key) else {
            continue;
        };
        let response = response.as_deref().and_then(&decode_response);
        found.push(Completed { key, at, response });
    }
    Ok(found)
}
