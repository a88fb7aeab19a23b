//! One shutdown signal for the whole process: SIGTERM or SIGINT cancels a single
//! [`CancellationToken`] whose clones every task selects on (the gRPC server, the controllers,
//! the node loop). A critical task that ends early cancels it too, so the process exits
//! instead of running half-alive.

pub use tokio_util::sync::CancellationToken;

/// Spawns the task that cancels `token` on SIGTERM or SIGINT.
pub fn cancel_on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
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
