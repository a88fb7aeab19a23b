//! One shutdown signal for the whole process: SIGTERM or SIGINT cancels a single
//! [`CancellationToken`] whose clones every task selects on (the gRPC server, the controllers,
//! the node loop). A critical task that ends early cancels it too, so the process exits
//! instead of running half-alive.

pub use tokio_util::sync::CancellationToken;

/// Spawns the task that cancels `token` on SIGTERM or SIGINT.
pub fn cancel_on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(error) => {
                    tracing::error!(%error, "cannot listen for SIGTERM; shutting down");
                    token.cancel();
                    return;
                }
            };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received, shutting down"),
            _ = token.cancelled() => {}
        }
        token.cancel();
    });
}

/// A boxed error from a task.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What a supervised task returns: its name and how it ended.
pub type TaskExit = (&'static str, Result<(), BoxError>);

/// A critical task ended before shutdown was requested.
#[derive(Debug, thiserror::Error)]
#[error("critical task {task} ended unexpectedly{}", .error.as_ref().map(|e| format!(": {e}")).unwrap_or_default())]
pub struct TaskFailed {
    /// The task's name.
    pub task: &'static str,
    /// Its error, if it returned one.
    pub error: Option<BoxError>,
}

/// Waits for every task. The first one to end before `token` is cancelled is a failure: the
/// token is cancelled so the others stop too, and that failure is returned once all ended.
pub async fn supervise(
    mut tasks: tokio::task::JoinSet<TaskExit>,
    token: CancellationToken,
) -> Result<(), TaskFailed> {
    let mut failure = None;
    while let Some(joined) = tasks.join_next().await {
        let (task, result) = match joined {
            Ok(exit) => exit,
            Err(join) => ("(panicked task)", Err(join.into())),
        };
        if !token.is_cancelled() {
            tracing::error!(task, error = ?result.as_ref().err(), "critical task ended; shutting down");
            token.cancel();
            failure.get_or_insert(TaskFailed {
                task,
                error: result.err(),
            });
        } else if let Err(error) = result {
            tracing::warn!(task, %error, "task ended with an error during shutdown");
        }
    }
    failure.map_or(Ok(()), Err)
}
