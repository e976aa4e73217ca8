//! Hot reload: a watched configuration file, applied live.
//!
//! [`Reloader::start`] loads the file (refusing to start on a bad one),
//! applies it to the registry, and watches the file's directory with
//! `notify` (a directory, so that editors that write a new file and rename
//! it, and Kubernetes' symlink swaps of mounted ConfigMaps, are seen). After
//! a change, it waits until the directory has been quiet for the debounce
//! interval, reads the file, and if its text changed:
//!
//! - a file that parses and validates is applied with
//!   [`Registry::apply`]: every live instance whose entry changed takes its
//!   new configuration through its live configuration, keeping its state;
//! - any other file is refused with [`Registry::reject`] (an event and a
//!   `WARN` record saying why); the configuration in force stays.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use notify::{RecursiveMode, Watcher as _};

use crate::config::{ConfigSet, Format};
use crate::{LoadError, Registry};

/// Counts and the last refusal, shared with the watching thread.
#[derive(Debug, Default)]
struct Status {
    applied: AtomicU64,
    rejected: AtomicU64,
    last_error: Mutex<Option<LoadError>>,
}

/// Watches a configuration file and applies its changes to a registry
/// until dropped.
///
/// ```no_run
/// use std::time::Duration;
/// use tenlives_ops::{Registry, reload::Reloader};
///
/// let registry = Registry::builder().build();
/// let reloader = Reloader::start(registry.clone(), "policies.yaml", Duration::from_millis(100))?;
/// let payments = registry.breaker("payments")?;
/// // ... serve; edits to policies.yaml now reach `payments` live.
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Reloader {
    status: Arc<Status>,
    // Dropping the watcher closes the channel, which ends the thread.
    watcher: Option<notify::RecommendedWatcher>,
    thread: Option<JoinHandle<()>>,
    path: PathBuf,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader")
            .field("path", &self.path)
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

/// Why a [`Reloader`] did not start.
#[derive(Debug)]
#[non_exhaustive]
pub enum StartError {
    /// The file could not be loaded: the service should not start on it.
    Load(LoadError),
    /// The file's directory could not be watched.
    Watch(notify::Error),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Load(e) => std::fmt::Display::fmt(e, f),
            StartError::Watch(e) => write!(f, "cannot watch the configuration file: {e}"),
        }
    }
}

impl std::error::Error for StartError {}

impl Reloader {
    /// Loads `path` (TOML or YAML, by extension), applies it to `registry`,
    /// and watches it. `debounce` is how long the directory must be quiet
    /// after a change before the file is read (50–500 ms suits editors and
    /// deployment tools).
    ///
    /// # Errors
    ///
    /// [`StartError::Load`] for a file that does not load (nothing is
    /// applied), [`StartError::Watch`] when watching is impossible.
    pub fn start(
        registry: Registry,
        path: impl AsRef<Path>,
        debounce: Duration,
    ) -> Result<Reloader, StartError> {
        let path = path.as_ref().to_path_buf();
        // Watching starts before the first read, so that a change made
        // between the two is not missed (an event for the text already read
        // is ignored: the text did not change).
        let (tx, rx) = mpsc::channel::<notify::Result<notify::Event>>();
        let mut watcher = notify::recommended_watcher(tx).map_err(StartError::Watch)?;
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        watcher
            .watch(&dir, RecursiveMode::NonRecursive)
            .map_err(StartError::Watch)?;
        let text = read(&path).map_err(StartError::Load)?;
        let set = parse(&path, &text).map_err(StartError::Load)?;
        registry.apply(set);
        let status = Arc::new(Status::default());
        status.applied.fetch_add(1, Ordering::Relaxed); // ordering: a counter read for reports only

        let thread = {
            let (status, path) = (status.clone(), path.clone());
            std::thread::Builder::new()
                .name("tenlives-reload".into())
                .spawn(move || watch(registry, path, text, rx, debounce, status))
                .map_err(|e| StartError::Watch(notify::Error::io(e)))?
        };
        Ok(Reloader {
            status,
            watcher: Some(watcher),
            thread: Some(thread),
            path,
        })
    }

    /// Configurations applied so far (the first load included).
    pub fn applied(&self) -> u64 {
        self.status.applied.load(Ordering::Relaxed) // ordering: a counter for reports only
    }

    /// Files refused so far.
    pub fn rejected(&self) -> u64 {
        self.status.rejected.load(Ordering::Relaxed) // ordering: a counter for reports only
    }

    /// Why the last refused file was refused.
    pub fn last_error(&self) -> Option<LoadError> {
        self.status
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The watched file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Reloader {
    fn drop(&mut self) {
        drop(self.watcher.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Whether a watch event may have changed the file: reads (our own
/// included) do not; anything else, or an error of the watcher, may.
fn is_change(event: &notify::Result<notify::Event>) -> bool {
    match event {
        Ok(e) => !matches!(e.kind, notify::EventKind::Access(_)),
        Err(_) => true,
    }
}

fn read(path: &Path) -> Result<String, LoadError> {
    std::fs::read_to_string(path).map_err(|e| LoadError {
        file: path.display().to_string(),
        line: 1,
        path: String::new(),
        message: format!("cannot read: {e}"),
    })
}

fn parse(path: &Path, text: &str) -> Result<ConfigSet, LoadError> {
    let file = path.display().to_string();
    let format = Format::from_path(path).ok_or_else(|| LoadError {
        file: file.clone(),
        line: 1,
        path: String::new(),
        message: "the extension must be .toml, .yaml or .yml".into(),
    })?;
    ConfigSet::from_str(&file, text, format)
}

fn watch(
    registry: Registry,
    path: PathBuf,
    mut last_text: String,
    rx: mpsc::Receiver<notify::Result<notify::Event>>,
    debounce: Duration,
    status: Arc<Status>,
) {
    // The text last refused: the same text is not refused twice.
    let mut last_refused: Option<String> = None;
    // ordering (all counters here): Relaxed, counters read for reports only.
    while let Ok(event) = rx.recv() {
        if !is_change(&event) {
            continue;
        }
        // Quiet for `debounce` first: a file written in several steps is
        // read once, whole.
        loop {
            match rx.recv_timeout(debounce) {
                Ok(_) => continue,
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
        let outcome = read(&path).and_then(|text| {
            if text == last_text || last_refused.as_ref() == Some(&text) {
                return Ok(None);
            }
            parse(&path, &text)
                .inspect_err(|_| {
                    last_refused = Some(text.clone());
                })
                .map(|set| Some((text, set)))
        });
        match outcome {
            Ok(None) => {}
            Ok(Some((text, set))) => {
                registry.apply(set);
                last_text = text;
                status.applied.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                registry.reject(&e);
                *status
                    .last_error
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = Some(e);
                status.rejected.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}
