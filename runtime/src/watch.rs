//! Watches as triggers: a reflector keeps a store current, and every event (or relist) only
//! notifies a level-based loop that re-reads the stores. Errors are logged, counted and
//! retried with kube-runtime's default backoff; they never end the process, and a watch that
//! keeps failing is reported ([`Watches`]) instead of its data passing for fresh.
//!
//! Stores keep only what fleetmirror reads: every object is trimmed as it arrives (no
//! `managedFields`, only the label and annotation keys of [`KEYS_READ`], and for pods and
//! Services only the few spec and status fields used). On a real cluster `managedFields` alone
//! is most of an object, and a tenant controls the labels and annotations of what vCluster
//! syncs, so untrimmed stores would grow with what tenants write, not with the fleet.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fleetmirror_core::naming::{self, KEYS_READ};
use futures::{Stream, StreamExt};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{
    Pod, PodCondition, PodSpec, PodStatus, Service, ServicePort, ServiceSpec,
};
use kube::Resource;
use kube::api::{Api, ApiResource, DynamicObject, ObjectMeta};
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::sync::Notify;

use crate::admin::Readiness;
use crate::shutdown::{CancellationToken, Tasks};

/// How one watch is doing.
#[derive(Debug, Clone, Default)]
struct WatchState {
    /// Since when every attempt to list or watch failed (`None`: it works).
    failing_since: Option<Instant>,
    /// The same moment on the wall clock, for messages.
    failing_since_wall: Option<std::time::SystemTime>,
    /// When the last attempt failed.
    last_error_at: Option<Instant>,
    /// The first error of this failure (stable: it goes into status messages).
    first_error: String,
    /// The last error (for /readyz).
    error: String,
    /// Between the watcher's Init and InitDone: the store still holds the state before the
    /// list (kube swaps it in at InitDone).
    relisting: bool,
}

impl WatchState {
    /// Failing for longer than `grace` at `now`. Only evidence ends a failure: an item from
    /// the watch, or a successful probe (see [`PROBE_QUIET`]); silence does not, since a
    /// request that hangs is silent too.
    fn failing(&self, grace: Duration, now: Instant) -> bool {
        self.failing_since
            .is_some_and(|since| now.saturating_duration_since(since) > grace)
    }

    /// Due for a probe at `now`: failing, and no error for longer than the slowest retry.
    fn probe_due(&self, now: Instant) -> bool {
        self.failing_since.is_some()
            && self
                .last_error_at
                .is_none_or(|t| now.saturating_duration_since(t) >= PROBE_QUIET)
    }
}

/// Objects per page of a watch's list (kube's default is 500). A list page is read whole and
/// parsed before its objects are trimmed into the store, so a page of large objects is a burst
/// of short-lived memory interleaved with the store's long-lived entries; smaller pages keep
/// that burst, and what it leaves fragmented, small (a fresh aggregator's resident size). The
/// price: five times the list requests, one after another (50 000 objects: 500 requests, some
/// seconds more before a store is listed and its controller starts). Every store gets it (the
/// agent's pod watch too); it replaces any page size a caller set.
pub const LIST_PAGE_SIZE: u32 = 100;

/// A failing watch that has not reported an error for this long (longer than the slowest
/// retry, [`WATCH_BACKOFF_MAX`] + jitter) is either working again without a word (a re-watch
/// that succeeds without a relist yields no event) or hanging. A probe — a list of at most one
/// object and a one-second watch, with the watch's own selectors — tells which: its success
/// ends the failure, its error is recorded as the watch's.
const PROBE_QUIET: Duration = Duration::from_secs(13);

/// How often a quiet failing watch is probed.
const PROBE_EVERY: Duration = Duration::from_secs(5);

/// Lists at most one object and watches for a second, as the watch would (its selectors):
/// succeeds when the API server answers and RBAC allows both.
type Probe =
    Arc<dyn Fn() -> futures::future::BoxFuture<'static, Result<(), kube::Error>> + Send + Sync>;

fn probe_of<K>(api: Api<K>, config: &watcher::Config) -> Probe
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    let list = kube::api::ListParams {
        label_selector: config.label_selector.clone(),
        field_selector: config.field_selector.clone(),
        limit: Some(1),
        ..Default::default()
    };
    let watch = kube::api::WatchParams {
        label_selector: config.label_selector.clone(),
        field_selector: config.field_selector.clone(),
        timeout: Some(1),
        ..Default::default()
    };
    Arc::new(move || {
        let (api, list, watch) = (api.clone(), list.clone(), watch.clone());
        Box::pin(async move {
            let listed = api.list_metadata(&list).await?;
            let version = listed.metadata.resource_version.unwrap_or_default();
            let events = api.watch_metadata(&watch, &version).await?;
            let mut events = std::pin::pin!(events);
            while let Some(event) = events.next().await {
                if let kube::api::WatchEvent::Error(e) = event? {
                    // An expired version (410) still proves the watch is allowed.
                    if e.code != 410 {
                        return Err(kube::Error::Api(e));
                    }
                }
            }
            Ok(())
        })
    })
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WatchLabel {
    watch: String,
}

type States = Arc<Mutex<BTreeMap<String, WatchState>>>;

fn lock(states: &States) -> std::sync::MutexGuard<'_, BTreeMap<String, WatchState>> {
    states.lock().unwrap_or_else(|p| p.into_inner())
}

/// Every watch of a process. Each runs as a supervised task ([`Tasks`]); its errors are
/// logged, counted (`fleetmirror_watch_errors_total{watch}`) and retried with kube-runtime's
/// backoff; one that cannot list or watch for longer than `grace` turns `/readyz` false (check
/// `watch-<name>`, whose verbose line says why) and is reported by [`Watches::failing`] to the
/// controllers that read it, which then stop presenting its data as fresh. Watch names are
/// fixed per process (bounded metric labels).
#[derive(Clone)]
pub struct Watches {
    client: kube::Client,
    tasks: Tasks,
    readiness: Readiness,
    grace: Duration,
    states: States,
    errors: Family<WatchLabel, Counter>,
}

impl std::fmt::Debug for Watches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watches")
            .field("grace", &self.grace)
            .field("watches", &lock(&self.states).keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Watches {
    /// Watches made with `client` (one without a read timeout shorter than a watch's own),
    /// registered on `registry` and `readiness`.
    pub fn new(
        client: kube::Client,
        tasks: Tasks,
        readiness: Readiness,
        registry: &mut Registry,
        grace: Duration,
    ) -> Self {
        let errors = Family::<WatchLabel, Counter>::default();
        registry.register(
            "fleetmirror_watch_errors",
            "Failed list or watch attempts, by watch",
            errors.clone(),
        );
        Self {
            client,
            tasks,
            readiness,
            grace,
            states: Arc::default(),
            errors,
        }
    }

    /// The client watches are made with.
    pub fn client(&self) -> &kube::Client {
        &self.client
    }

    /// A reflector store of `api` with `config` (listed in pages of [`LIST_PAGE_SIZE`]); every
    /// object passes through `trim` before it is stored, and every event notifies `trigger`.
    pub fn store<K>(
        &self,
        api: Api<K>,
        config: watcher::Config,
        trim: fn(&mut K),
        trigger: &Arc<Notify>,
        name: &str,
    ) -> Store<K>
    where
        K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
        K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
    {
        let (store, writer) = reflector::store::<K>();
        let config = config.page_size(LIST_PAGE_SIZE);
        let probe = probe_of(api.clone(), &config);
        let stream = reflector::reflector(writer, watcher(api, config).modify(trim));
        self.drive(stream, probe, trigger, name, None);
        store
    }

    /// A metadata-only store of `K` in all namespaces: its requests ask for
    /// `PartialObjectMetadata` (kube sends `as=PartialObjectMetadata` for an
    /// `Api<PartialObjectMeta<K>>`), so the API server sends no spec or status; trimmed by
    /// [`trim_meta`].
    pub fn metadata_store<K>(
        &self,
        config: watcher::Config,
        trigger: &Arc<Notify>,
        name: &str,
    ) -> Store<PartialObjectMeta<K>>
    where
        K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
        K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
    {
        let api = Api::<PartialObjectMeta<K>>::all(self.client.clone());
        self.store(
            api,
            config,
            trim_meta::<PartialObjectMeta<K>>,
            trigger,
            name,
        )
    }

    /// A store of objects of any kind (`ar`), in `namespace` or all namespaces.
    pub fn dynamic_store(
        &self,
        ar: &ApiResource,
        namespace: Option<&str>,
        config: watcher::Config,
        trim: fn(&mut DynamicObject),
        trigger: &Arc<Notify>,
        name: &str,
    ) -> Store<DynamicObject> {
        self.dynamic_store_until(ar, namespace, config, trim, trigger, name, None, None)
    }

    /// Like [`Watches::dynamic_store`], watched until `stop` is cancelled (a kind no longer
    /// served): then the watch ends, and its readiness check and state go with it. With
    /// `high_water`, the highest (numeric) resourceVersion of any object the watch delivered is
    /// kept there: once it reaches a write's resourceVersion, the store has seen that write (a
    /// watch delivers in resourceVersion order).
    #[allow(clippy::too_many_arguments)]
    pub fn dynamic_store_until(
        &self,
        ar: &ApiResource,
        namespace: Option<&str>,
        config: watcher::Config,
        trim: fn(&mut DynamicObject),
        trigger: &Arc<Notify>,
        name: &str,
        stop: Option<CancellationToken>,
        high_water: Option<Arc<std::sync::atomic::AtomicU64>>,
    ) -> Store<DynamicObject> {
        let api = match namespace {
            Some(ns) => Api::<DynamicObject>::namespaced_with(self.client.clone(), ns, ar),
            None => Api::<DynamicObject>::all_with(self.client.clone(), ar),
        };
        let writer = reflector::store::Writer::<DynamicObject>::new(ar.clone());
        let store = writer.as_reader();
        let config = config.page_size(LIST_PAGE_SIZE);
        let probe = probe_of(api.clone(), &config);
        // A listed object counts once the store has it: at InitDone.
        let mut listed_max = 0u64;
        let stream =
            reflector::reflector(writer, watcher(api, config).modify(trim)).inspect(move |event| {
                let (Some(hw), Ok(event)) = (&high_water, event) else {
                    return;
                };
                let rv = |o: &DynamicObject| {
                    o.metadata
                        .resource_version
                        .as_deref()
                        .and_then(|v| v.parse::<u64>().ok())
                        .unwrap_or(0)
                };
                match event {
                    watcher::Event::Apply(o) | watcher::Event::Delete(o) => {
                        hw.fetch_max(rv(o), std::sync::atomic::Ordering::Relaxed);
                    }
                    watcher::Event::Init => listed_max = 0,
                    watcher::Event::InitApply(o) => listed_max = listed_max.max(rv(o)),
                    watcher::Event::InitDone => {
                        hw.fetch_max(listed_max, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            });
        self.drive(stream, probe, trigger, name, stop);
        store
    }

    /// True while watch `name` fails (however briefly) or lists again: what its store holds
    /// may be incomplete or old.
    pub fn erring(&self, name: &str) -> bool {
        lock(&self.states)
            .get(name)
            .is_some_and(|s| s.failing_since.is_some() || s.relisting)
    }

    /// The last error of watch `name` while it fails.
    pub fn error_of(&self, name: &str) -> Option<String> {
        lock(&self.states)
            .get(name)
            .filter(|s| s.failing_since.is_some())
            .map(|s| s.error.clone())
    }

    /// Runs `stream` as a supervised task: events notify `trigger`, errors are recorded, and a
    /// failing watch gone quiet is probed.
    fn drive<S, K>(
        &self,
        stream: S,
        probe: Probe,
        trigger: &Arc<Notify>,
        name: &str,
        stop: Option<CancellationToken>,
    ) where
        S: Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
        K: Send,
    {
        let name = name.to_owned();
        lock(&self.states).insert(name.clone(), WatchState::default());
        let (states, grace) = (self.states.clone(), self.grace);
        let check_name = name.clone();
        self.readiness.register_fn(
            &format!("watch-{name}"),
            Arc::new(move || match failing_for(&states, &check_name, grace) {
                Some(why) => Err(why),
                None => Ok(()),
            }),
        );
        let (trigger, states, errors) = (trigger.clone(), self.states.clone(), self.errors.clone());
        let shutdown = self.tasks.token().clone();
        let stream = stream.backoff(WatchBackoff::default());
        let stopped = stop.clone().unwrap_or_else(|| shutdown.clone());
        let (readiness, check) = (self.readiness.clone(), format!("watch-{name}"));
        let task = async move {
            let mut stream = std::pin::pin!(stream);
            let mut probes = tokio::time::interval(PROBE_EVERY);
            probes.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    item = stream.next() => match item {
                        // The watcher says Init before it even tries to list, and the listed
                        // objects reach the store only at InitDone: no evidence before that.
                        Some(Ok(watcher::Event::Init)) => {
                            if let Some(s) = lock(&states).get_mut(&name) {
                                s.relisting = true;
                            }
                        }
                        Some(Ok(watcher::Event::InitApply(_))) => {}
                        Some(Ok(_)) => {
                            if let Some(s) = lock(&states).get_mut(&name) {
                                s.relisting = false;
                            }
                            if recovered(&states, &name) {
                                tracing::info!(watch = %name, "watch recovered");
                            }
                            trigger.notify_one();
                        }
                        Some(Err(error)) => {
                            errors.get_or_create(&WatchLabel { watch: name.clone() }).inc();
                            tracing::warn!(watch = %name, %error, "watch failed; retrying with backoff");
                            record_error(&states, &name, &error.to_string());
                            trigger.notify_one();
                        }
                        None => return Ok(()),
                    },
                    _ = probes.tick() => {
                        let due = lock(&states).get(&name).is_some_and(|s| s.probe_due(Instant::now()));
                        if !due {
                            continue;
                        }
                        let result = tokio::select! {
                            r = tokio::time::timeout(PROBE_QUIET, probe()) => r,
                            _ = shutdown.cancelled() => return Ok(()),
                        };
                        match result {
                            Ok(Ok(())) => {
                                if recovered(&states, &name) {
                                    tracing::info!(watch = %name, "watch recovered (a probe list and watch succeeded)");
                                }
                            }
                            Ok(Err(error)) => {
                                errors.get_or_create(&WatchLabel { watch: name.clone() }).inc();
                                tracing::warn!(watch = %name, %error, "watch still failing (probe)");
                                record_error(&states, &name, &error.to_string());
                            }
                            Err(_) => {
                                errors.get_or_create(&WatchLabel { watch: name.clone() }).inc();
                                tracing::warn!(watch = %name, "watch still failing (probe timed out)");
                                record_error(&states, &name, "the API server did not answer a probe in time");
                            }
                        }
                        trigger.notify_one();
                    }
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = stopped.cancelled() => {
                        lock(&states).remove(&name);
                        readiness.unregister(&check);
                        return Ok(());
                    }
                }
            }
        };
        match stop {
            Some(stop) => self.tasks.spawn_until("watch", stop, task),
            None => self.tasks.spawn("watch", task),
        }
    }

    /// The first of `names` (all watches when empty) that has failed for longer than the
    /// grace period, as "watch <name> failing since <RFC 3339>: <first error>". The message is
    /// stable for the whole failure, so a status that carries it is written once.
    pub fn failing(&self, names: &[&str]) -> Option<String> {
        let now = Instant::now();
        lock(&self.states)
            .iter()
            .filter(|(n, _)| names.is_empty() || names.contains(&n.as_str()))
            .find(|(_, s)| s.failing(self.grace, now))
            .map(|(n, s)| {
                let since = s
                    .failing_since_wall
                    .map(|t| {
                        let secs = t
                            .duration_since(std::time::UNIX_EPOCH)
                            .map_or(0, |d| d.as_secs() as i64);
                        jiff::Timestamp::from_second(secs)
                            .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
                            .unwrap_or_default()
                    })
                    .unwrap_or_default();
                format!("watch {n} failing since {since}: {}", s.first_error)
            })
    }

    /// When a watch's state next changes for [`Watches::failing`] without any event: one now
    /// failing crossing the grace period (a controller wakes up then). Recoveries notify the
    /// watch's trigger.
    pub fn next_failure_deadline(&self) -> Option<Instant> {
        let now = Instant::now();
        lock(&self.states)
            .values()
            .filter_map(|s| s.failing_since.map(|t| t + self.grace))
            .filter(|t| *t > now)
            .min()
    }
}

/// Ends a failure of watch `name`; true when it was failing.
fn recovered(states: &States, name: &str) -> bool {
    let mut all = lock(states);
    let Some(s) = all.get_mut(name) else {
        return false;
    };
    s.last_error_at = None;
    s.failing_since.take().is_some()
}

/// Records an error of watch `name`: the start of a failure, or one more of it.
fn record_error(states: &States, name: &str, error: &str) {
    let mut all = lock(states);
    let s = all.entry(name.to_owned()).or_default();
    let now = Instant::now();
    if s.failing_since.is_none() {
        s.failing_since = Some(now);
        s.failing_since_wall = Some(std::time::SystemTime::now());
        s.first_error = error.to_owned();
    }
    s.last_error_at = Some(now);
    s.error = error.to_owned();
}

fn failing_for(states: &States, name: &str, grace: Duration) -> Option<String> {
    let all = lock(states);
    let s = all.get(name)?;
    let since = s.failing_since?;
    s.failing(grace, Instant::now())
        .then(|| format!("failing for {}s: {}", since.elapsed().as_secs(), s.error))
}

/// How a failing watch retries: 0.5 s, doubling, at most [`WATCH_BACKOFF_MAX`], with a little
/// jitter; reset by the first success. (kube-runtime's default goes up to 30 s plus jitter,
/// so a watch whose RBAC was restored could stay blind for a minute.)
#[derive(Debug, Default)]
struct WatchBackoff {
    failures: u32,
}

/// The longest wait between two attempts of a failing watch.
pub const WATCH_BACKOFF_MAX: Duration = Duration::from_secs(10);

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let base = Duration::from_millis(500)
            .saturating_mul(1 << self.failures.min(8))
            .min(WATCH_BACKOFF_MAX);
        self.failures = self.failures.saturating_add(1);
        // Up to 20 % of jitter, so watches that failed together do not retry in lockstep.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        Some(base + base.mul_f64(f64::from(nanos % 200) / 1000.0))
    }
}

impl kube::runtime::utils::Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.failures = 0;
    }
}

/// The longest value kept of a label or annotation we read. Every valid value is shorter (a
/// name is at most 253 characters, a UID 36), and a cut invalid value stays invalid, so
/// refusals are unchanged; an annotation cannot make a store grow by its 256 KiB.
pub const MAX_VALUE_LEN: usize = 256;

/// Every vCluster's control-plane workloads: StatefulSets and Deployments labelled
/// `app=vcluster`, watched metadata-only (a metadata watch: the API server sends no spec or
/// status) and trimmed. Both binaries
/// discover vClusters from them.
#[derive(Debug)]
pub struct ControlPlaneStores {
    statefulsets: Store<PartialObjectMeta<StatefulSet>>,
    deployments: Store<PartialObjectMeta<Deployment>>,
}

impl ControlPlaneStores {
    /// The names of its watches (for [`Watches::failing`]).
    pub const WATCHES: [&'static str; 2] = ["statefulsets", "deployments"];

    /// Starts both watches; every event notifies `trigger`.
    pub fn start(watches: &Watches, trigger: &Arc<Notify>) -> Self {
        let selector = format!("{}={}", naming::LABEL_APP, naming::APP_VCLUSTER);
        let config = || watcher::Config::default().labels(&selector);
        Self {
            statefulsets: watches.metadata_store(config(), trigger, Self::WATCHES[0]),
            deployments: watches.metadata_store(config(), trigger, Self::WATCHES[1]),
        }
    }

    /// Resolves once both watches listed everything.
    pub async fn wait_until_ready(&self) -> Result<(), reflector::store::WriterDropped> {
        self.statefulsets.wait_until_ready().await?;
        self.deployments.wait_until_ready().await
    }

    /// The (trimmed) metadata of every control-plane workload.
    pub fn metadata(&self) -> Vec<ObjectMeta> {
        let sts = self.statefulsets.state();
        let deploys = self.deployments.state();
        sts.iter()
            .map(|o| o.metadata.clone())
            .chain(deploys.iter().map(|o| o.metadata.clone()))
            .collect()
    }
}

fn retain_read_keys(map: &mut Option<BTreeMap<String, String>>) {
    if let Some(m) = map {
        m.retain(|k, _| KEYS_READ.contains(&k.as_str()));
        for v in m.values_mut() {
            if v.len() > MAX_VALUE_LEN {
                let mut end = MAX_VALUE_LEN;
                while !v.is_char_boundary(end) {
                    end -= 1;
                }
                v.truncate(end);
            }
        }
    }
}

/// Keeps of an object's metadata what fleetmirror reads: identity, creation time, generation,
/// and the labels and annotations of [`KEYS_READ`].
pub fn trim_meta<K: Resource>(o: &mut K) {
    let m = o.meta_mut();
    m.managed_fields = None;
    m.owner_references = None;
    m.finalizers = None;
    retain_read_keys(&mut m.labels);
    retain_read_keys(&mut m.annotations);
}

/// Keeps of an object's metadata everything but `managedFields` (for our own objects, whose
/// every field is read).
pub fn trim_managed_fields<K: Resource>(o: &mut K) {
    o.meta_mut().managed_fields = None;
}

/// A pod as fleetmirror reads it: [`trim_meta`], `spec.nodeName`, `status.phase` and the
/// status of the `Ready` condition.
pub fn trim_pod(p: &mut Pod) {
    trim_meta(p);
    p.spec = p.spec.take().map(|s| PodSpec {
        node_name: s.node_name,
        ..Default::default()
    });
    p.status = p.status.take().map(|s| PodStatus {
        phase: s.phase,
        conditions: s.conditions.map(|c| {
            c.into_iter()
                .filter(|c| c.type_ == "Ready")
                .map(|c| PodCondition {
                    type_: c.type_,
                    status: c.status,
                    ..Default::default()
                })
                .collect()
        }),
        ..Default::default()
    });
}

/// A Service as fleetmirror reads it: [`trim_meta`], `spec.clusterIP` and the port numbers.
pub fn trim_service(s: &mut Service) {
    trim_meta(s);
    s.status = None;
    s.spec = s.spec.take().map(|spec| ServiceSpec {
        cluster_ip: spec.cluster_ip,
        ports: spec.ports.map(|ports| {
            ports
                .into_iter()
                .map(|p| ServicePort {
                    port: p.port,
                    ..Default::default()
                })
                .collect()
        }),
        ..Default::default()
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;
    use kube::api::ObjectMeta;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn meta() -> ObjectMeta {
        ObjectMeta {
            name: Some("vc".into()),
            namespace: Some("team".into()),
            uid: Some("u".into()),
            labels: Some(map(&[("app", "vcluster"), ("tenant-label", "x")])),
            annotations: Some(map(&[
                ("vcluster.loft.sh/object-name", "kube-dns"),
                ("kubectl.kubernetes.io/last-applied-configuration", "{…}"),
            ])),
            managed_fields: Some(vec![ManagedFieldsEntry::default()]),
            ..Default::default()
        }
    }

    #[test]
    fn a_watch_fails_past_its_grace_and_silence_only_calls_for_a_probe() {
        let t0 = Instant::now();
        let grace = Duration::from_secs(60);
        let mut s = WatchState::default();
        assert!(!s.failing(grace, t0));
        assert!(!s.probe_due(t0), "a working watch is never probed");
        s.failing_since = Some(t0);
        s.last_error_at = Some(t0);
        assert!(
            !s.failing(grace, t0 + Duration::from_secs(59)),
            "within grace"
        );
        assert!(s.failing(grace, t0 + Duration::from_secs(61)));
        assert!(
            !s.probe_due(t0 + Duration::from_secs(12)),
            "retries are still erring"
        );
        assert!(
            s.failing(grace, t0 + Duration::from_secs(600)),
            "silence is no evidence of recovery: a hanging request is silent too"
        );
        assert!(s.probe_due(t0 + PROBE_QUIET));
        assert!(
            PROBE_QUIET > WATCH_BACKOFF_MAX.mul_f64(1.2),
            "a failing watch errors sooner than it is probed"
        );
    }

    #[test]
    fn watch_backoff_doubles_to_ten_seconds_and_resets() {
        use kube::runtime::utils::Backoff;
        let mut b = WatchBackoff::default();
        let ms: Vec<u128> = (0..8).map(|_| b.next().unwrap().as_millis()).collect();
        let bases = [500, 1000, 2000, 4000, 8000, 10_000, 10_000, 10_000];
        for (got, base) in ms.iter().zip(bases) {
            assert!((base..=base * 6 / 5).contains(got), "{ms:?}");
        }
        b.reset();
        assert!(b.next().unwrap() < Duration::from_millis(700));
    }

    #[test]
    fn trimming_never_changes_how_a_pod_is_classified() {
        use fleetmirror_core::naming as n;
        use fleetmirror_core::pod::{PodClass, PodMeta, classify};
        let uid = "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee";
        let long = "x".repeat(100_000);
        type Pairs<'a> = Vec<(&'a str, &'a str)>;
        let cases: Vec<(Pairs, Pairs)> = vec![
            // Synced, classic annotations, plus tenant noise.
            (
                vec![(n::LABEL_MANAGED_BY, "vc"), ("tenant", "x")],
                vec![
                    (n::ANNOTATION_UID, uid),
                    (n::ANNOTATION_NAME, "web-0"),
                    (n::ANNOTATION_NAMESPACE, "default"),
                    ("vcluster.loft.sh/labels", long.as_str()),
                ],
            ),
            // Synced, object-* annotations and the namespace label fallback.
            (
                vec![
                    (n::LABEL_MANAGED_BY, "vc"),
                    (n::LABEL_NAMESPACE, "kube-system"),
                ],
                vec![
                    (n::ANNOTATION_OBJECT_UID, uid),
                    (n::ANNOTATION_OBJECT_NAME, "coredns"),
                ],
            ),
            // Hostile: a huge name, a bad UID.
            (
                vec![(n::LABEL_MANAGED_BY, "vc")],
                vec![
                    (n::ANNOTATION_UID, "../../etc"),
                    (n::ANNOTATION_NAME, long.as_str()),
                ],
            ),
            // A control-plane pod; and a pod of nobody's.
            (
                vec![(n::LABEL_APP, "vcluster"), (n::LABEL_RELEASE, "vc")],
                vec![],
            ),
            (vec![("app", "web")], vec![]),
        ];
        for (labels, annotations) in cases {
            let mut pod = Pod::default();
            pod.metadata.labels = Some(map(&labels));
            pod.metadata.annotations = Some(map(&annotations));
            let before = classify(PodMeta {
                labels: pod.metadata.labels.as_ref().unwrap(),
                annotations: pod.metadata.annotations.as_ref().unwrap(),
            });
            trim_pod(&mut pod);
            let after = classify(PodMeta {
                labels: pod.metadata.labels.as_ref().unwrap(),
                annotations: pod.metadata.annotations.as_ref().unwrap(),
            });
            // Only an over-long value is cut, and what was refused stays refused.
            let cut = |c: &PodClass| match c.clone() {
                PodClass::Synced(mut s) => {
                    s.virtual_name.truncate(MAX_VALUE_LEN);
                    s.refusal = s.refusal.map(|_| "refused".into());
                    PodClass::Synced(s)
                }
                other => other,
            };
            assert_eq!(cut(&before), cut(&after), "{labels:?}");
            assert!(
                pod.metadata
                    .annotations
                    .iter()
                    .flatten()
                    .all(|(_, v)| v.len() <= MAX_VALUE_LEN)
            );
        }
    }

    #[test]
    fn services_keep_what_scoring_reads() {
        let mut s = Service {
            metadata: meta(),
            spec: Some(ServiceSpec {
                cluster_ip: Some("None".into()),
                ports: Some(vec![ServicePort {
                    port: 443,
                    name: Some("https".into()),
                    ..Default::default()
                }]),
                selector: Some(BTreeMap::from([("a".into(), "b".into())])),
                ..Default::default()
            }),
            status: Some(Default::default()),
        };
        trim_service(&mut s);
        let m = &s.metadata;
        assert_eq!(
            (m.name.as_deref(), m.uid.as_deref()),
            (Some("vc"), Some("u"))
        );
        assert!(m.managed_fields.is_none());
        assert_eq!(
            m.labels.as_ref().unwrap().keys().collect::<Vec<_>>(),
            ["app"]
        );
        assert_eq!(
            m.annotations.as_ref().unwrap().keys().collect::<Vec<_>>(),
            ["vcluster.loft.sh/object-name"]
        );
        let spec = s.spec.unwrap();
        assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
        assert_eq!(spec.ports.unwrap()[0].port, 443);
        assert!(spec.selector.is_none() && s.status.is_none());
    }

    #[test]
    fn pods_keep_node_phase_and_readiness() {
        let mut p = Pod {
            metadata: meta(),
            spec: Some(PodSpec {
                node_name: Some("n1".into()),
                containers: vec![Default::default()],
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some("Running".into()),
                conditions: Some(vec![
                    PodCondition {
                        type_: "Ready".into(),
                        status: "True".into(),
                        message: Some("m".into()),
                        ..Default::default()
                    },
                    PodCondition {
                        type_: "Initialized".into(),
                        status: "True".into(),
                        ..Default::default()
                    },
                ]),
                host_ip: Some("10.0.0.1".into()),
                ..Default::default()
            }),
        };
        trim_pod(&mut p);
        let spec = p.spec.unwrap();
        assert_eq!(spec.node_name.as_deref(), Some("n1"));
        assert!(spec.containers.is_empty());
        let status = p.status.unwrap();
        assert_eq!(status.phase.as_deref(), Some("Running"));
        let c = status.conditions.unwrap();
        assert_eq!(c.len(), 1);
        assert_eq!(
            (c[0].type_.as_str(), c[0].status.as_str()),
            ("Ready", "True")
        );
        assert!(c[0].message.is_none() && status.host_ip.is_none());
        assert!(p.metadata.managed_fields.is_none());
    }
}
