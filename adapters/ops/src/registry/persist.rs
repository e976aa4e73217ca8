//! Persisting a registry's policy state across restarts: every named
//! breaker, rate limiter, retry budget, throttle and adaptive limit saved as
//! engine snapshots into one file, atomically, and restored on start
//! (`docs/snapshots.md`).
//!
//! # File (integers little-endian)
//!
//! | size | field |
//! |---|---|
//! | 4 | magic `b"TLRG"` |
//! | 2 | version (1) |
//! | 4 | records |
//! | per record: 1 | section: 1 breaker, 2 rate limiter, 4 retry budget, 5 adaptive limit, 6 throttle ([`Kind::code`]); `0x80 +` that for an entry of a keyed family |
//! | per record: 2 + n | the instance's name, or the family's (UTF-8) after its length |
//! | keyed entry: 2 + n | the entry's key (UTF-8) after its length |
//! | keyed entry: 4 | the family's capacity |
//! | per record: 4 + n | the engine snapshot (its own frame and CRC) after its length |
//! | 4 | CRC-32 of everything before |
//!
//! Bulkheads are not saved (their state is the permits in flight, which
//! die with the process). Of keyed families, those of breakers and rate
//! limiters keyed by `String` are saved, entry by entry; a restore creates
//! the family (`keyed_breaker::<String>`, `keyed_rate_limiter::<String>`,
//! with the saved capacity) and its entries. Families with other key types
//! are not saved.
//!
//! # Atomicity
//!
//! A save writes `<file>.tmp` beside the file, syncs it to disk, renames
//! it over the file and syncs the directory: after a crash at any point
//! the file is the old snapshot or the new one, whole.

use std::fmt;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use tenlives_engine::adaptive::ADAPTIVE_SNAPSHOT_MAX;
use tenlives_engine::breaker::BREAKER_SNAPSHOT_MAX;
use tenlives_engine::rate::RATE_SNAPSHOT_MAX;
use tenlives_engine::retry::BUDGET_SNAPSHOT_MAX;
use tenlives_engine::snapshot::{Kind, SnapshotError, WallTime, crc32};
use tenlives_engine::throttle::THROTTLE_SNAPSHOT_MAX;

use super::{Breaker, Limiter, Named, Registry, RegistryError, events, lock};
use crate::keyed::{Idle, Keyed};

const MAGIC: [u8; 4] = *b"TLRG";
const VERSION: u16 = 1;
/// Added to a kind's code for an entry of a keyed family.
const KEYED: u8 = 0x80;

/// Why a registry's state could not be saved or read.
#[derive(Debug)]
#[non_exhaustive]
pub enum PersistError {
    /// Reading, writing, syncing or renaming failed.
    Io(io::Error),
    /// The file is not a whole registry snapshot: cut short, damaged, of
    /// another version, or not one at all. Nothing was restored.
    Corrupt(&'static str),
}

impl fmt::Display for PersistError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PersistError::Io(e) => write!(f, "registry snapshot I/O: {e}"),
            PersistError::Corrupt(why) => write!(f, "registry snapshot unusable: {why}"),
        }
    }
}

impl std::error::Error for PersistError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PersistError::Io(e) => Some(e),
            PersistError::Corrupt(_) => None,
        }
    }
}

impl From<io::Error> for PersistError {
    fn from(e: io::Error) -> Self {
        PersistError::Io(e)
    }
}

/// Why one policy of a snapshot was not restored (it starts fresh).
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Skipped {
    /// The engine refused its snapshot (for example
    /// [`SnapshotError::ConfigMismatch`]: its configuration changed in a
    /// way its kind does not convert).
    Snapshot(SnapshotError),
    /// The registry has no configuration for it any more.
    Registry(RegistryError),
    /// A section this build does not hold.
    UnknownSection(u8),
    /// Its keyed family had no room for it.
    KeyedFull(crate::KeyedFull),
}

/// What a restore did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RestoreReport {
    /// No snapshot file was there: everything starts fresh.
    pub missing: bool,
    /// Policies restored, as `section/name`.
    pub restored: Vec<String>,
    /// Policies that start fresh, and why.
    pub skipped: Vec<(String, Skipped)>,
}

fn section_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Breaker => "circuit_breaker",
        Kind::RateLimiter => "rate_limiter",
        Kind::RetryBudget => "retry_budget",
        Kind::AdaptiveLimiter => "adaptive_limit",
        Kind::Throttle => "throttle",
        _ => "other",
    }
}

/// Appends one record per policy of `named`, each saved by `save`.
fn save_all<P>(
    out: &mut Vec<u8>,
    count: &mut u32,
    named: &Named<P>,
    kind: Kind,
    max: usize,
    save: impl Fn(&P, &mut [u8]) -> Result<usize, SnapshotError>,
) -> Result<(), PersistError> {
    let map = named.map.read().unwrap_or_else(PoisonError::into_inner);
    let mut buf = vec![0u8; max];
    for (name, policy) in map.iter() {
        let n = save(policy, &mut buf).map_err(|_| PersistError::Corrupt("snapshot buffer"))?;
        let name_len =
            u16::try_from(name.len()).map_err(|_| PersistError::Corrupt("name too long"))?;
        out.push(kind.code());
        out.extend_from_slice(&name_len.to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&(n as u32).to_le_bytes());
        out.extend_from_slice(&buf[..n]);
        *count += 1;
    }
    Ok(())
}

/// The type-erased keyed families of a registry, by name.
type Families = Vec<(Arc<str>, Arc<dyn std::any::Any + Send + Sync>)>;

/// Appends one record per entry of every `String`-keyed family of `P`
/// among `families`.
fn save_keyed<P: Idle + Send + Sync + 'static>(
    out: &mut Vec<u8>,
    count: &mut u32,
    families: &Families,
    kind: Kind,
    max: usize,
    save: impl Fn(&P, &mut [u8]) -> Result<usize, SnapshotError>,
) -> Result<(), PersistError> {
    let mut buf = vec![0u8; max];
    for (name, family) in families {
        let Ok(family) = family.clone().downcast::<Keyed<String, P>>() else {
            continue;
        };
        let capacity = u32::try_from(family.capacity()).unwrap_or(u32::MAX);
        let mut entries: Vec<(String, Arc<P>)> = Vec::new();
        family.for_each(|key, policy| entries.push((key.clone(), policy.clone())));
        for (key, policy) in entries {
            let n =
                save(&policy, &mut buf).map_err(|_| PersistError::Corrupt("snapshot buffer"))?;
            out.push(KEYED | kind.code());
            put_str(out, name)?;
            put_str(out, &key)?;
            out.extend_from_slice(&capacity.to_le_bytes());
            out.extend_from_slice(&(n as u32).to_le_bytes());
            out.extend_from_slice(&buf[..n]);
            *count += 1;
        }
    }
    Ok(())
}

/// A string after its length (u16).
fn put_str(out: &mut Vec<u8>, s: &str) -> Result<(), PersistError> {
    let len = u16::try_from(s.len()).map_err(|_| PersistError::Corrupt("name too long"))?;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

/// A cursor over the file's bytes; running out is corruption.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], PersistError> {
        if n > self.0.len() {
            return Err(PersistError::Corrupt("truncated record"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, PersistError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, PersistError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, PersistError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn str(&mut self) -> Result<&'a str, PersistError> {
        let len = usize::from(self.u16()?);
        std::str::from_utf8(self.take(len)?).map_err(|_| PersistError::Corrupt("name not UTF-8"))
    }
}

/// One record of a checked file.
struct Record<'a> {
    section: u8,
    name: &'a str,
    /// A keyed family's entry: its key and the family's capacity.
    entry: Option<(&'a str, u32)>,
    snapshot: &'a [u8],
}

/// Checks the whole file (magic, version, CRC, record framing) before
/// anything is restored.
fn parse(bytes: &[u8]) -> Result<Vec<Record<'_>>, PersistError> {
    if bytes.len() < MAGIC.len() + 2 + 4 + 4 {
        return Err(PersistError::Corrupt("too short"));
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    if bytes[..4] != MAGIC {
        return Err(PersistError::Corrupt("not a registry snapshot"));
    }
    if crc32(body).to_le_bytes() != crc {
        return Err(PersistError::Corrupt("checksum mismatch"));
    }
    let mut c = Cursor(&body[4..]);
    if c.u16()? != VERSION {
        return Err(PersistError::Corrupt("unsupported version"));
    }
    let count = c.u32()?;
    let mut records = Vec::new();
    for _ in 0..count {
        let section = c.u8()?;
        let name = c.str()?;
        let entry = if section & KEYED != 0 {
            Some((c.str()?, c.u32()?))
        } else {
            None
        };
        let len = c.u32()? as usize;
        let snapshot = c.take(len)?;
        records.push(Record {
            section,
            name,
            entry,
            snapshot,
        });
    }
    if !c.0.is_empty() {
        return Err(PersistError::Corrupt("bytes after the last record"));
    }
    Ok(records)
}

/// Writes `bytes` to `path` atomically: a temporary file beside it,
/// synced, renamed over it, the directory synced.
fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    {
        let mut file = File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    // Syncing a directory makes the rename durable (on Unix; elsewhere
    // opening a directory may fail, and the rename is what there is).
    if let Ok(d) = File::open(dir) {
        d.sync_all()?;
    }
    Ok(())
}

impl Registry {
    /// Saves the state of every named breaker, rate limiter, retry budget,
    /// throttle and adaptive limit, and of every entry of the `String`-keyed
    /// breaker and rate-limiter families, to `path`, atomically (see the
    /// module documentation); returns the number of policies saved. Policies keep
    /// serving meanwhile: each is read at its own instant.
    ///
    /// # Errors
    ///
    /// [`PersistError::Io`] when the file cannot be written; the previous
    /// file, if any, is left whole.
    pub fn save_state(&self, path: &Path) -> Result<u32, PersistError> {
        let inner = &*self.inner;
        let now = inner.now();
        let wall = WallTime::now();
        let mut records = Vec::new();
        let mut count = 0;
        save_all(
            &mut records,
            &mut count,
            &inner.breakers,
            Kind::Breaker,
            BREAKER_SNAPSHOT_MAX,
            |p, b| p.save_state(b, now, wall),
        )?;
        save_all(
            &mut records,
            &mut count,
            &inner.limiters,
            Kind::RateLimiter,
            RATE_SNAPSHOT_MAX,
            |p, b| p.save_state(b, now, wall),
        )?;
        save_all(
            &mut records,
            &mut count,
            &inner.budgets,
            Kind::RetryBudget,
            BUDGET_SNAPSHOT_MAX,
            |p, b| p.save_state(b, now, wall),
        )?;
        save_all(
            &mut records,
            &mut count,
            &inner.throttles,
            Kind::Throttle,
            THROTTLE_SNAPSHOT_MAX,
            |p, b| p.save_state(b, now, wall),
        )?;
        save_all(
            &mut records,
            &mut count,
            &inner.adaptive,
            Kind::AdaptiveLimiter,
            ADAPTIVE_SNAPSHOT_MAX,
            |p, b| save_retrying(|| p.save_state(b, now, wall)),
        )?;
        let families: Families = lock(&inner.families)
            .iter()
            .map(|((_, name), f)| (name.clone(), f.clone().as_any()))
            .collect();
        save_keyed::<Breaker>(
            &mut records,
            &mut count,
            &families,
            Kind::Breaker,
            BREAKER_SNAPSHOT_MAX,
            |p, b| p.save_state(b, now, wall),
        )?;
        save_keyed::<Limiter>(
            &mut records,
            &mut count,
            &families,
            Kind::RateLimiter,
            RATE_SNAPSHOT_MAX,
            |p, b| p.save_state(b, now, wall),
        )?;
        let mut file = Vec::with_capacity(records.len() + 14);
        file.extend_from_slice(&MAGIC);
        file.extend_from_slice(&VERSION.to_le_bytes());
        file.extend_from_slice(&count.to_le_bytes());
        file.extend_from_slice(&records);
        let crc = crc32(&file);
        file.extend_from_slice(&crc.to_le_bytes());
        write_atomically(path, &file)?;
        inner.emit(events::STATE_SAVED, [u64::from(count), file.len() as u64]);
        Ok(count)
    }

    /// Restores the policies saved in `path`, creating each by its name
    /// from the configuration in force and restoring its state (see
    /// `docs/snapshots.md` for what each keeps and the clock rule). Call it
    /// on start, before serving. A missing file restores nothing
    /// (`missing`); a policy whose snapshot the engine refuses (a
    /// configuration changed in a way its kind does not convert, see
    /// `docs/snapshots.md`) or that the configuration no longer has starts
    /// fresh and is listed in `skipped`.
    ///
    /// # Errors
    ///
    /// [`PersistError::Corrupt`] when the file is not a whole snapshot
    /// (nothing is restored), [`PersistError::Io`] when it cannot be read.
    /// [`restore_state_or_start_fresh`](Self::restore_state_or_start_fresh)
    /// logs these and goes on.
    pub fn restore_state(&self, path: &Path) -> Result<RestoreReport, PersistError> {
        let bytes = match fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(RestoreReport {
                    missing: true,
                    ..RestoreReport::default()
                });
            }
            Err(e) => return Err(e.into()),
        };
        let records = parse(&bytes)?;
        let now = self.inner.now();
        let wall = WallTime::now();
        let mut report = RestoreReport::default();
        for r in records {
            let kind = Kind::from_code(r.section & !KEYED);
            let section = kind.map_or("unknown", section_name);
            let label = match r.entry {
                Some((key, _)) => format!("{section}/{}[{key}]", r.name),
                None => format!("{section}/{}", r.name),
            };
            if let Some((key, capacity)) = r.entry {
                let (key, capacity) = (key.to_owned(), capacity as usize);
                let done = match kind {
                    Some(Kind::Breaker) => restore_entry(
                        self.keyed_breaker::<String>(r.name, capacity),
                        &key,
                        now,
                        |p| p.restore_state(r.snapshot, now, wall),
                    ),
                    Some(Kind::RateLimiter) => restore_entry(
                        self.keyed_rate_limiter::<String>(r.name, capacity),
                        &key,
                        now,
                        |p| p.restore_state(r.snapshot, now, wall),
                    ),
                    _ => Err(Skipped::UnknownSection(r.section)),
                };
                match done {
                    Ok(()) => report.restored.push(label),
                    Err(why) => report.skipped.push((label, why)),
                }
                continue;
            }
            let done = match kind {
                Some(Kind::Breaker) => self.restore_one(self.breaker(r.name), |p| {
                    p.restore_state(r.snapshot, now, wall)
                }),
                Some(Kind::RateLimiter) => self.restore_one(self.rate_limiter(r.name), |p| {
                    p.restore_state(r.snapshot, now, wall)
                }),
                Some(Kind::RetryBudget) => self.restore_one(self.retry_budget(r.name), |p| {
                    p.restore_state(r.snapshot, now, wall)
                }),
                Some(Kind::Throttle) => self.restore_one(self.throttle(r.name), |p| {
                    p.restore_state(r.snapshot, now, wall)
                }),
                Some(Kind::AdaptiveLimiter) => self.restore_one(self.adaptive_limit(r.name), |p| {
                    save_retrying(|| p.restore_state(r.snapshot, now, wall).map(|()| 0)).map(|_| ())
                }),
                _ => Err(Skipped::UnknownSection(r.section)),
            };
            match done {
                Ok(()) => report.restored.push(label),
                Err(why) => report.skipped.push((label, why)),
            }
        }
        self.inner.emit(
            events::STATE_RESTORED,
            [report.restored.len() as u64, report.skipped.len() as u64],
        );
        for (name, why) in &report.skipped {
            tracing::warn!(policy = %name, reason = ?why, "policy state not restored; it starts fresh");
        }
        Ok(report)
    }

    /// [`restore_state`](Self::restore_state), but a file that cannot be
    /// read or is corrupt is logged (`tracing` at `warn`) and reported as
    /// the event [`events::STATE_DISCARDED`] (payload `[1 corrupt, 2 I/O,
    /// 0]`), and every policy starts fresh. The corrupt file is left in
    /// place (the next save replaces it).
    pub fn restore_state_or_start_fresh(&self, path: &Path) -> RestoreReport {
        match self.restore_state(path) {
            Ok(report) => report,
            Err(e) => {
                let code = match e {
                    PersistError::Corrupt(_) => 1,
                    PersistError::Io(_) => 2,
                };
                tracing::warn!(path = %path.display(), error = %e, "registry state not restored; starting fresh");
                self.inner.emit(events::STATE_DISCARDED, [code, 0]);
                RestoreReport::default()
            }
        }
    }

    fn restore_one<P>(
        &self,
        policy: Result<Arc<P>, RegistryError>,
        restore: impl FnOnce(&P) -> Result<(), SnapshotError>,
    ) -> Result<(), Skipped> {
        let policy = policy.map_err(Skipped::Registry)?;
        restore(&policy).map_err(Skipped::Snapshot)
    }
}

/// Restores the entry `key` of a keyed family, creating it.
fn restore_entry<P: Idle>(
    family: Result<Arc<Keyed<String, P>>, RegistryError>,
    key: &String,
    now: tenlives_engine::time::Timestamp,
    restore: impl FnOnce(&P) -> Result<(), SnapshotError>,
) -> Result<(), Skipped> {
    let family = family.map_err(Skipped::Registry)?;
    let policy = family.get(key, now).map_err(Skipped::KeyedFull)?;
    restore(&policy).map_err(Skipped::Snapshot)
}

/// An adaptive limiter answers [`SnapshotError::Busy`] while another thread
/// closes its window (a few microseconds at most): try again a few times.
fn save_retrying(
    mut f: impl FnMut() -> Result<usize, SnapshotError>,
) -> Result<usize, SnapshotError> {
    for _ in 0..1000 {
        match f() {
            Err(SnapshotError::Busy) => std::thread::yield_now(),
            other => return other,
        }
    }
    f()
}

/// Saves a registry's state periodically and on shutdown, on a thread of
/// its own (see [`Registry::save_state`]).
///
/// ```
/// use std::time::Duration;
/// use tenlives_ops::{Persistence, Registry};
///
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("state.bin");
/// let registry = Registry::builder().build();
/// registry.breaker("payments")?;
/// let saver = Persistence::start(registry.clone(), path.clone(), Duration::from_secs(10));
/// // ... serve ...
/// saver.shutdown()?; // stops the thread and saves once more
/// assert!(path.exists());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Persistence {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    registry: Registry,
    path: PathBuf,
}

impl Persistence {
    /// Saves `registry` to `path` every `every`; a failed save is logged
    /// (`tracing` at `warn`) and tried again at the next tick.
    pub fn start(registry: Registry, path: PathBuf, every: Duration) -> Self {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = {
            let registry = registry.clone();
            let path = path.clone();
            std::thread::Builder::new()
                .name("tenlives-persist".into())
                .spawn(move || {
                    while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(every) {
                        if let Err(e) = registry.save_state(&path) {
                            tracing::warn!(path = %path.display(), error = %e, "periodic registry save failed");
                        }
                    }
                })
                .ok()
        };
        if thread.is_none() {
            tracing::warn!("could not start the persistence thread; only shutdown saves");
        }
        Persistence {
            stop: Some(stop),
            thread,
            registry,
            path,
        }
    }

    /// Stops the periodic saves and saves once more; returns the number of
    /// policies saved.
    ///
    /// # Errors
    ///
    /// As [`Registry::save_state`].
    pub fn shutdown(mut self) -> Result<u32, PersistError> {
        self.stop_thread();
        self.registry.save_state(&self.path)
    }

    fn stop_thread(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Persistence {
    /// Dropped without [`shutdown`](Self::shutdown) (say, while unwinding):
    /// stops the thread and makes the final save, logging a failure.
    fn drop(&mut self) {
        if self.stop.is_some() {
            self.stop_thread();
            if let Err(e) = self.registry.save_state(&self.path) {
                tracing::warn!(path = %self.path.display(), error = %e, "final registry save failed");
            }
        }
    }
}
