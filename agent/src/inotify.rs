//! inotify on `<kubelet-root>/pods`: a pod directory appears after the API object (both must
//! be present before mounting), so its creation triggers a pass. Events are only triggers:
//! every pass is a full pass, so a queue overflow (`IN_Q_OVERFLOW`) needs nothing more than
//! one — it is counted. When the directory does not exist yet (kubelet not started), the
//! watch is retried every 10 s; the periodic pass covers the gap.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use inotify::{EventMask, Inotify, WatchMask};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// Spawns the watch of `dir`; every event notifies `trigger`.
pub fn watch_pods_dir(
    dir: PathBuf,
    trigger: Arc<Notify>,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    tokio::spawn(async move {
        loop {
            let stream = Inotify::init().and_then(|i| {
                i.watches().add(
                    &dir,
                    WatchMask::CREATE
                        | WatchMask::DELETE
                        | WatchMask::MOVED_TO
                        | WatchMask::MOVED_FROM
                        | WatchMask::ONLYDIR,
                )?;
                i.into_event_stream(vec![0u8; 64 * 1024])
            });
            match stream {
                Ok(mut events) => {
                    tracing::info!(dir = %dir.display(), "watching pod directories");
                    loop {
                        tokio::select! {
                            ev = events.next() => match ev {
                                Some(Ok(ev)) => {
                                    if ev.mask.contains(EventMask::Q_OVERFLOW) {
                                        metrics.inotify_overflows.inc();
                                        tracing::warn!("inotify queue overflowed; a full pass follows");
                                    }
                                    if ev.mask.contains(EventMask::IGNORED) {
                                        break; // the directory went away: set the watch up again
                                    }
                                    trigger.notify_one();
                                }
                                Some(Err(error)) => {
                                    tracing::warn!(%error, "inotify read failed");
                                    break;
                                }
                                None => break,
                            },
                            _ = shutdown.cancelled() => return,
                        }
                    }
                }
                Err(error) => {
                    tracing::warn!(dir = %dir.display(), %error, "cannot watch pod directories yet; retrying in 10s")
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(10)) => trigger.notify_one(),
                _ = shutdown.cancelled() => return,
            }
        }
    });
}
