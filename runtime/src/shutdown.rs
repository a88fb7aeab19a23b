//! One shutdown signal for the whole process: SIGTERM or SIGINT cancels a single
//! [`CancellationToken`] whose clones every task selects on (the gRPC server, the controllers,
//! the node loop). Every long-lived task — servers, controllers, each watch — runs under one
//! [`Supervisor`] ([`Tasks`] spawns from anywhere): a task that ends early cancels the token
//! too, so the process exits instead of running half-alive.

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

/// A critical task ended before shutdown was requested.
#[derive(Debug, thiserror::Error)]
#[error("critical task {task} ended unexpectedly{}", .error.as_ref().map(|e| format!(": {e}")).unwrap_or_default())]
pub struct TaskFailed {
    /// The task's name.
    pub task: &'static str,
    /// Its error, if it returned one.
    pub error: Option<BoxError>,
}

/// How a supervised task ended: its name and its result (None: stopped on purpose).
type Exit = (&'static str, Option<Result<(), BoxError>>);

type Spawned = (
    &'static str,
    futures::future::BoxFuture<'static, Result<(), BoxError>>,
    Option<CancellationToken>,
);

/// A handle that spawns supervised tasks from anywhere (main, a controller starting its
/// watches): every task is critical, and the first to end before shutdown ends the process.
#[derive(Debug, Clone)]
pub struct Tasks {
    tx: tokio::sync::mpsc::UnboundedSender<Spawned>,
    token: CancellationToken,
}

/// Runs the tasks [`Tasks`] spawns; see [`Supervisor::run`].
#[derive(Debug)]
pub struct Supervisor {
    rx: tokio::sync::mpsc::UnboundedReceiver<Spawned>,
    token: CancellationToken,
}

impl Tasks {
    /// A spawner and its supervisor, both tied to `token`.
    pub fn new(token: CancellationToken) -> (Tasks, Supervisor) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        (
            Tasks {
                tx,
                token: token.clone(),
            },
            Supervisor { rx, token },
        )
    }

    /// Spawns `task` named `name` under supervision.
    pub fn spawn<F>(&self, name: &'static str, task: F)
    where
        F: std::future::Future<Output = Result<(), BoxError>> + Send + 'static,
    {
        if self.tx.send((name, Box::pin(task), None)).is_err() {
            tracing::debug!(task = name, "not started: the supervisor has stopped");
        }
    }

    /// Spawns `task` under supervision until `stop` is cancelled: ending after that (e.g. a
    /// watch of a kind no longer served) is no failure; ending before it, or with an error,
    /// is like any task's.
    pub fn spawn_until<F>(&self, name: &'static str, stop: CancellationToken, task: F)
    where
        F: std::future::Future<Output = Result<(), BoxError>> + Send + 'static,
    {
        if self.tx.send((name, Box::pin(task), Some(stop))).is_err() {
            tracing::debug!(task = name, "not started: the supervisor has stopped");
        }
    }

    /// The process's shutdown token.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }
}

impl Supervisor {
    /// Runs every spawned task until all have ended after shutdown. The first one to end
    /// before the token is cancelled is a failure: the token is cancelled so the others stop
    /// too, and that failure is returned once all ended.
    pub async fn run(mut self) -> Result<(), TaskFailed> {
        let mut set: tokio::task::JoinSet<Exit> = tokio::task::JoinSet::new();
        let mut failure = None;
        loop {
            tokio::select! {
                spawned = self.rx.recv() => match spawned {
                    Some((name, task, stop)) => {
                        set.spawn(async move {
                            let result = task.await;
                            match stop {
                                Some(stop) if stop.is_cancelled() && result.is_ok() => (name, None),
                                _ => (name, Some(result)),
                            }
                        });
                    }
                    None if set.is_empty() => break,
                    None => {
                        let Some(joined) = set.join_next().await else { break };
                        Self::ended(joined, &self.token, &mut failure);
                    }
                },
                Some(joined) = set.join_next() => Self::ended(joined, &self.token, &mut failure),
            }
            if self.token.is_cancelled() && set.is_empty() {
                break;
            }
        }
        failure.map_or(Ok(()), Err)
    }

    fn ended(
        joined: Result<Exit, tokio::task::JoinError>,
        token: &CancellationToken,
        failure: &mut Option<TaskFailed>,
    ) {
        let (task, result) = match joined {
            Ok((task, Some(result))) => (task, result),
            Ok((task, None)) => {
                tracing::debug!(task, "task stopped");
                return;
            }
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_task_ending_early_stops_the_others_and_is_reported() {
        let token = CancellationToken::new();
        let (tasks, supervisor) = Tasks::new(token.clone());
        let t = token.clone();
        tasks.spawn("waits", async move {
            t.cancelled().await;
            Ok(())
        });
        tasks.spawn("fails", async { Err("boom".into()) });
        let err = supervisor.run().await.unwrap_err();
        assert_eq!(err.task, "fails");
        assert!(token.is_cancelled());
    }

    #[tokio::test]
    async fn a_task_stopped_on_purpose_is_no_failure() {
        let token = CancellationToken::new();
        let (tasks, supervisor) = Tasks::new(token.clone());
        let stop = token.child_token();
        let s = stop.clone();
        tasks.spawn_until("stoppable", stop.clone(), async move {
            s.cancelled().await;
            Ok(())
        });
        let t = token.clone();
        tasks.spawn("waits", async move {
            t.cancelled().await;
            Ok(())
        });
        let run = tokio::spawn(supervisor.run());
        stop.cancel();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(
            !token.is_cancelled(),
            "stopping one task stops nothing else"
        );
        token.cancel();
        assert!(run.await.unwrap().is_ok());
    }

    #[tokio::test]
    async fn a_clean_shutdown_is_ok_and_late_spawns_do_not_hang() {
        let token = CancellationToken::new();
        let (tasks, supervisor) = Tasks::new(token.clone());
        let t = token.clone();
        tasks.spawn("waits", async move {
            t.cancelled().await;
            Ok(())
        });
        let run = tokio::spawn(supervisor.run());
        tokio::task::yield_now().await;
        token.cancel();
        tasks.spawn("late", async { Ok(()) });
        assert!(run.await.unwrap().is_ok());
    }
}
