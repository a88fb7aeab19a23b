//! Watches as triggers: a reflector keeps a store current, and every event (or relist) only
//! notifies a level-based loop that re-reads the stores. Errors are logged and retried with
//! kube-runtime's default backoff; they never end the process.

use std::sync::Arc;

use futures::StreamExt;
use kube::Resource;
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Starts a reflector for `api` with `config`: returns its store, and notifies `trigger` on
/// every event until `shutdown`. `what` names the watch in log lines.
pub fn watch_store<K>(
    api: Api<K>,
    config: watcher::Config,
    trigger: &Arc<Notify>,
    what: &'static str,
    shutdown: &CancellationToken,
) -> Store<K>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    let (store, writer) = reflector::store::<K>();
    let stream = reflector::reflector(writer, watcher(api, config)).default_backoff();
    let (trigger, shutdown) = (trigger.clone(), shutdown.clone());
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        loop {
            tokio::select! {
                item = stream.next() => match item {
                    Some(Ok(_)) => trigger.notify_one(),
                    Some(Err(error)) => tracing::warn!(watch = what, %error, "watch failed; retrying with backoff"),
                    None => return,
                },
                _ = shutdown.cancelled() => return,
            }
        }
    });
    store
}
