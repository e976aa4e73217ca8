//! The background task that keeps a fleet limiter's or semaphore's lease in
//! Redis: how it is stopped, when it refreshes, how it calls Redis.

use core::future::Future;
use core::time::Duration;
use std::sync::Arc;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, ErrorKind, RedisError, RedisResult, ScriptInvocation};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// The refresh task of one limiter or semaphore. Dropping it tells the task
/// to stop (the task then gives its lease back, if the runtime still runs);
/// [`shutdown`](Self::shutdown) does the same and waits for it.
pub(crate) struct Background {
    stop: Arc<Notify>,
    task: Option<JoinHandle<()>>,
}

impl Background {
    /// Spawns `run`, handing it the notification that tells it to stop.
    pub(crate) fn spawn<F>(run: impl FnOnce(Arc<Notify>) -> F) -> Self
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let stop = Arc::new(Notify::new());
        let task = tokio::spawn(run(Arc::clone(&stop)));
        Background {
            stop,
            task: Some(task),
        }
    }

    /// Tells the task to stop and waits for it to end.
    pub(crate) async fn shutdown(&mut self) {
        self.stop.notify_one();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        // The task sees the notification, gives the lease back and ends.
        self.stop.notify_one();
    }
}

/// Waits for the next refresh, `interval` from now: `true` when it is due,
/// `false` once the task was told to stop.
pub(crate) async fn next_refresh(interval: Duration, stop: &Notify) -> bool {
    tokio::select! {
        () = tokio::time::sleep(interval) => true,
        () = stop.notified() => false,
    }
}

/// The Redis connection of one limiter or semaphore: the `redis` crate's
/// `ConnectionManager` (reconnecting by itself on I/O errors), rebuilt here
/// when it cannot recover by itself.
///
/// The manager reconnects after an I/O error or a command error it deems
/// unrecoverable, but a *reconnection* that fails with any other error
/// (bytes that are not RESP in the handshake: a port that is not Redis, a
/// proxy answering garbage; a failed authentication) leaves it holding that
/// failed connection for good: every later command gets the same error and
/// no new connection is ever tried (`tests/bad_input.rs::garbage_…`). So
/// after a failed call whose error is neither an I/O error, a timeout nor
/// an error reply of the server (those say the connection works), the
/// manager is replaced by a fresh, lazy one — only on a failed call, in the
/// background task, never on the request path.
pub(crate) struct Conn {
    client: Client,
    config: ConnectionManagerConfig,
    manager: ConnectionManager,
}

impl Conn {
    /// A lazy manager for `client` (no I/O until the first call).
    pub(crate) fn new(client: Client, config: ConnectionManagerConfig) -> RedisResult<Self> {
        let manager = ConnectionManager::new_lazy_with_config(client.clone(), config.clone())?;
        Ok(Conn {
            client,
            config,
            manager,
        })
    }

    /// Runs a script: its integers, or `None` when the call failed or took
    /// longer than `timeout`.
    pub(crate) async fn invoke(
        &mut self,
        invocation: &ScriptInvocation<'_>,
        timeout: Duration,
    ) -> Option<Vec<i64>> {
        match tokio::time::timeout(timeout, invocation.invoke_async(&mut self.manager)).await {
            Ok(Ok(values)) => Some(values),
            Ok(Err(e)) => {
                if stuck(&e) {
                    self.rebuild();
                }
                None
            }
            Err(_) => None,
        }
    }

    fn rebuild(&mut self) {
        if let Ok(manager) =
            ConnectionManager::new_lazy_with_config(self.client.clone(), self.config.clone())
        {
            self.manager = manager;
        }
    }
}

/// Whether a failed call's error may have left the manager unable to
/// recover by itself: not an I/O error (the manager reconnects), not a
/// timeout, not an error reply of the server (the connection works).
fn stuck(e: &RedisError) -> bool {
    !(e.is_io_error()
        || e.is_timeout()
        || matches!(e.kind(), ErrorKind::Server(_) | ErrorKind::Extension))
}
