//! The background task that keeps a fleet limiter's or semaphore's lease in
//! Redis: how it is stopped, when it refreshes, how it calls Redis.

use core::future::Future;
use core::time::Duration;
use std::sync::Arc;

use redis::ScriptInvocation;
use redis::aio::ConnectionManager;
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

/// Runs a script on `conn`: its integers, or `None` when the call failed or
/// took longer than `timeout`.
pub(crate) async fn invoke(
    invocation: &ScriptInvocation<'_>,
    conn: &mut ConnectionManager,
    timeout: Duration,
) -> Option<Vec<i64>> {
    match tokio::time::timeout(timeout, invocation.invoke_async(conn)).await {
        Ok(Ok(values)) => Some(values),
        Ok(Err(_)) | Err(_) => None,
    }
}
