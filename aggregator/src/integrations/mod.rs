//! The integrations controller (integrations.md): do Argo CD, Flux, Prometheus, Istio (or any
//! workloads) work on each of many clusters. Its decisions are pure functions in
//! `fleetmirror_core::integrations` (config, the per-type check, the roll-up, the status, the
//! kubeconfig policy); this room owns the watches, the target clients, the scheduling, the
//! writes, Events, metrics and the Diagnostics view.
//!
//! Inputs (watched by every replica, in `--integration-namespaces` or everywhere):
//! Integrations, IntegrationTargets and Secret metadata (a referenced Secret's data is read
//! with one `GET` when its resourceVersion changes). Only the leader contacts targets: it
//! builds one client per target (from the policy's [`Endpoint`] only: no command, no file, no
//! proxy), tests it (`GET /version`) on change and every `--target-probe-interval` (failing ones
//! every half of it), and checks every (Integration, cluster) pair every `healthCheckInterval`,
//! at once (debounced 200 ms) when the Integration's generation, the target's spec, readiness
//! or client change. The pairs due at the same time on one cluster are one visit: one slot of
//! `--integration-concurrency`, for at most `--cluster-request-timeout` in all, one visit per
//! cluster at a time (pairs that fall due meanwhile wait for it), its checks one after the other
//! with each check's reads at once (a kube client speaks HTTP/1.1: a visit opens about as many
//! connections as one check reads). A cluster that refuses, does not answer or fails TLS ends
//! the visit: its remaining checks say the same without contacting it. The next check of a pair is due an interval
//! after its last one ended. A round of an Integration waits for the pairs it dispatched;
//! then its status is built and written if it changed (timestamps aside) or as a heartbeat
//! (`lastReconcileTime` older than 0.9 × the interval). Connection tests run beside visits
//! (one at a time per target, also under a slot). Events are judged against the status last written in this term, else the one in
//! the API, so a restart or a new leader repeats none. A new leader forgets everything and
//! checks every pair at once.

mod client;
pub mod view;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleetmirror_core::integrations::cluster::ClusterCheck;
use fleetmirror_core::integrations::config::{self, CheckConfig, Expression};
use fleetmirror_core::integrations::kubeconfig::{self, Endpoint, KubeconfigError};
use fleetmirror_core::integrations::rollup::NotChecked;
use fleetmirror_core::integrations::status::{
    ClusterInput, IntegrationStatus, IntegrationTargetStatus, Outcome, StatusInput, TargetState,
    Unchecked, cluster_events, integration_status, same_but_time, target_same_but_time,
    target_status,
};
use fleetmirror_core::status::{Event, Time};
use fleetmirror_proto::v1::{
    IntegrationCluster, IntegrationComponent, IntegrationDetail, IntegrationSummary,
};
use fleetmirror_runtime::admin::ReadyFlag;
use fleetmirror_runtime::shutdown::BoxError;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::crd::{Integration, IntegrationTarget};
use crate::mirror::kinds::when_listed;
use crate::platform::{Context, EventRecorder, StatusWriter, Term};
use client::{CheckResult, Failure, TargetClient};
pub use view::{IntegrationMetrics, IntegrationsView};

/// The name used in metrics and `--controllers`.
pub const NAME: &str = "integrations";
/// Changes are coalesced this long before they are acted on.
const DEBOUNCE: Duration = Duration::from_millis(200);
/// A Secret that could not be read is read again after this long.
const SECRET_RETRY: Duration = Duration::from_secs(5);
/// At most this many status writes in flight at once.
const WRITE_CONCURRENCY: usize = 8;

/// The controller's configuration (from its flags).
#[derive(Debug, Clone)]
pub struct IntegrationsConfig {
    /// `--cluster-connect-timeout`.
    pub connect_timeout: Duration,
    /// `--cluster-request-timeout`.
    pub request_timeout: Duration,
    /// `--integration-concurrency`.
    pub concurrency: usize,
    /// `--target-probe-interval`.
    pub probe_interval: Duration,
    /// `--integration-namespaces` (None: all).
    pub namespaces: Option<BTreeSet<String>>,
}

impl IntegrationsConfig {
    /// Checks and converts the flags.
    pub fn from_args(a: &crate::args::IntegrationsArgs) -> Result<Self, String> {
        for (flag, d) in [
            ("--cluster-connect-timeout", a.cluster_connect_timeout),
            ("--cluster-request-timeout", a.cluster_request_timeout),
            ("--target-probe-interval", a.target_probe_interval),
        ] {
            if d.is_zero() {
                return Err(format!("{flag} must be greater than zero"));
            }
        }
        if a.integration_concurrency == 0 {
            return Err("--integration-concurrency must be at least 1".into());
        }
        let namespaces =
            crate::args::namespace_list("--integration-namespaces", &a.integration_namespaces)?;
        Ok(Self {
            connect_timeout: a.cluster_connect_timeout,
            request_timeout: a.cluster_request_timeout,
            concurrency: a.integration_concurrency,
            probe_interval: a.target_probe_interval,
            namespaces,
        })
    }
}

/// (namespace, name) of a target.
type TargetKey = (String, String);
/// (Integration UID, clusterName).
type PairKey = (String, String);

/// What a target's client is built from: its generation, the Secret's name, key and version,
/// and the context.
type ClientInputs = (Option<i64>, String, String, Option<String>, String);

/// A target's memory (leader only).
#[derive(Debug, Default)]
struct TargetMem {
    /// What the client was built from: generation, Secret name, key, context, Secret version.
    inputs: Option<ClientInputs>,
    /// A Secret read that failed: read again then.
    retry_at: Option<Instant>,
    /// The client, when the Secret and kubeconfig were usable.
    client: Option<TargetClient>,
    /// Why there is no client: (reason, status.message).
    unusable: Option<(&'static str, String)>,
    /// The last connection test: Ok(version) or Err(message).
    probe: Option<Result<String, String>>,
    next_probe: Option<Instant>,
    /// A connection test is running (one at a time).
    probing: bool,
    /// A visit (the checks of the pairs due on it) holds one slot: the next waits for it.
    visiting: bool,
    /// Its last visit ran out of time: its next one takes a slot first, so that waiting on it
    /// overlaps the other clusters' checks instead of following them.
    slow: bool,
    /// The last answer of its API server.
    last_seen: Option<Time>,
    /// The Secret version whose insecure-skip-tls-verify was said.
    insecure_said: Option<String>,
    /// Changes when the client or the readiness does (its pairs are checked again).
    version: u64,
    /// The status written in this term.
    written: Option<IntegrationTargetStatus>,
    /// A status write is due (its state changed).
    dirty: bool,
}

/// One (Integration, cluster) pair's memory.
#[derive(Debug)]
struct PairMem {
    outcome: Outcome,
    last_seen: Option<Time>,
    last_checked: Option<Time>,
    next_due: Instant,
    in_flight: bool,
    /// Integration generation and target version it was last dispatched with.
    generation: Option<i64>,
    target_version: u64,
    seconds: f64,
    requests: u64,
    /// Its Integration's interval (the next check is due this long after a check ends).
    interval: Duration,
    /// The target it was last dispatched to.
    target: Option<TargetKey>,
    /// Identifies the dispatch in flight (a stale result is ignored).
    seq: u64,
    dispatched_at: Instant,
}

/// One Integration's memory.
#[derive(Debug, Default)]
struct IntegrationMem {
    /// Something arrived or changed since the last status was built.
    dirty: bool,
    /// The status written in this term.
    written: Option<IntegrationStatus>,
    /// Generations whose InvalidConfig / AutoInstallIgnored were said.
    invalid_said: Option<i64>,
    auto_install_said: Option<i64>,
    /// What the last status build resolved (for change detection).
    clusters: Vec<(String, Option<TargetKey>)>,
    generation: Option<i64>,
    /// The round in progress: its pairs dispatched at or before this instant are waited for.
    round: Option<Instant>,
}

/// Everything the leader remembers in a term.
#[derive(Debug, Default)]
struct Memory {
    term: Option<u64>,
    targets: HashMap<TargetKey, TargetMem>,
    pairs: HashMap<PairKey, PairMem>,
    integrations: HashMap<String, IntegrationMem>,
    versions: u64,
    seq: u64,
    /// The Integration UIDs the Diagnostics view was last built from.
    viewed: BTreeSet<String>,
}

/// What a spawned probe or check reports.
#[derive(Debug)]
enum Msg {
    Probe {
        target: TargetKey,
        client: u64,
        result: Result<String, Failure>,
    },
    Checked {
        pair: PairKey,
        seq: u64,
        type_: &'static str,
        result: CheckResult,
        seconds: f64,
    },
    /// A visit's checks all reported: the target is free again.
    VisitDone {
        target: TargetKey,
        /// The visit ran out of time (the cluster does not answer).
        slow: bool,
    },
}

/// A resolved Integration.
struct Resolved {
    obj: Arc<Integration>,
    uid: String,
    namespace: String,
    type_: config::Type,
    config: Result<CheckConfig, String>,
    /// (clusterName, target key) in order.
    clusters: Vec<(String, Option<TargetKey>)>,
}

/// Runs the controller until shutdown.
pub struct IntegrationsController {
    ctx: Context,
    config: IntegrationsConfig,
    view: Arc<IntegrationsView>,
    metrics: IntegrationMetrics,
    ready: ReadyFlag,
}

impl std::fmt::Debug for IntegrationsController {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IntegrationsController")
            .field("config", &self.config)
            .finish()
    }
}

/// Stores of one kind: one over all namespaces, or one per honoured namespace.
struct Stores<K: Resource<DynamicType = ()> + Clone + 'static>(Vec<Store<K>>);

impl<K: Resource<DynamicType = ()> + Clone + 'static> Stores<K> {
    fn all(&self) -> Vec<Arc<K>> {
        self.0.iter().flat_map(|s| s.state()).collect()
    }

    /// The object `namespace/name`, if a store holds it.
    fn get(&self, namespace: &str, name: &str) -> Option<Arc<K>> {
        let key = kube::runtime::reflector::ObjectRef::<K>::new(name).within(namespace);
        self.0.iter().find_map(|s| s.get(&key))
    }
}

fn target_secret(t: &IntegrationTarget) -> (String, String) {
    let r = t.spec.kubeconfig_secret_ref.as_ref();
    (
        r.and_then(|r| r.name.clone())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| format!("{}-kubeconfig", t.spec.cluster_name)),
        r.and_then(|r| r.key.clone())
            .filter(|k| !k.is_empty())
            .unwrap_or_else(|| "kubeconfig".into()),
    )
}

/// `<namespace>/<name>`, as the status writer keys its backoff.
fn slash<K: Resource>(o: &K) -> String {
    let (ns, name) = key_of(o);
    format!("{ns}/{name}")
}

fn key_of<K: Resource>(o: &K) -> (String, String) {
    (o.namespace().unwrap_or_default(), o.name_any())
}

fn creation(o: &impl Resource) -> String {
    o.meta()
        .creation_timestamp
        .as_ref()
        .map(|t| t.0.to_string())
        .unwrap_or_default()
}

impl IntegrationsController {
    /// A controller on `ctx` with `config`, publishing to `view` and `metrics`.
    pub fn new(
        ctx: Context,
        config: IntegrationsConfig,
        view: Arc<IntegrationsView>,
        metrics: IntegrationMetrics,
        ready: ReadyFlag,
    ) -> Self {
        Self {
            ctx,
            config,
            view,
            metrics,
            ready,
        }
    }

    fn stores<K>(&self, trigger: &Arc<Notify>, name: &str, trim: fn(&mut K)) -> Stores<K>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug
            + Send
            + Sync
            + 'static,
    {
        let w = &self.ctx.watches;
        match &self.config.namespaces {
            None => Stores(vec![w.store(
                Api::<K>::all(w.client().clone()),
                watcher::Config::default(),
                trim,
                trigger,
                name,
            )]),
            Some(namespaces) => Stores(
                namespaces
                    .iter()
                    .map(|ns| {
                        w.store(
                            Api::<K>::namespaced(w.client().clone(), ns),
                            watcher::Config::default(),
                            trim,
                            trigger,
                            &format!("{name}-{ns}"),
                        )
                    })
                    .collect(),
            ),
        }
    }

    /// Watches, checks and writes until shutdown.
    pub async fn run(self) -> Result<(), BoxError> {
        let shutdown = self.ctx.tasks.token().clone();
        let trigger = Arc::new(Notify::new());
        let integrations: Stores<Integration> = self.stores(
            &trigger,
            "integrations-integrations",
            fleetmirror_runtime::watch::trim_managed_fields::<Integration>,
        );
        let targets: Stores<IntegrationTarget> = self.stores(
            &trigger,
            "integrations-targets",
            fleetmirror_runtime::watch::trim_managed_fields::<IntegrationTarget>,
        );
        let secrets: Stores<PartialObjectMeta<Secret>> = self.stores(
            &trigger,
            "integrations-secrets",
            fleetmirror_runtime::watch::trim_meta::<PartialObjectMeta<Secret>>,
        );
        let listed: Vec<_> = integrations
            .0
            .iter()
            .map(|s| when_listed(s, &trigger, &shutdown))
            .chain(
                targets
                    .0
                    .iter()
                    .map(|s| when_listed(s, &trigger, &shutdown)),
            )
            .chain(
                secrets
                    .0
                    .iter()
                    .map(|s| when_listed(s, &trigger, &shutdown)),
            )
            .collect();
        let events = self.ctx.events(NAME);
        // One writer per kind: their backoff is kept per object name.
        let writer = self.ctx.status_writer(NAME);
        let target_writer = self.ctx.status_writer(NAME);
        let slots = Arc::new(Semaphore::new(self.config.concurrency));
        let (tx, mut rx) = mpsc::unbounded_channel::<Msg>();
        let mut leadership = self.ctx.leadership.clone();
        let mut memory = Memory::default();
        let mut term_stop = shutdown.child_token();
        // Ready from the start (as every controller): a watch that cannot list (the CRDs not
        // installed) turns /readyz false through the platform's grace, and the line says what
        // the controller waits for meanwhile.
        self.ready
            .set_note("waiting for Integrations, IntegrationTargets and Secrets to be listed");
        let mut was_listed = false;
        loop {
            let all_listed = listed
                .iter()
                .all(|l| l.load(std::sync::atomic::Ordering::Relaxed));
            if all_listed && !was_listed {
                self.ready.set(true);
                was_listed = true;
            }
            let term = leadership.term().filter(Term::is_valid);
            if term.as_ref().map(Term::id) != memory.term {
                // A new term (or none): forget everything; a new leader checks at once.
                term_stop.cancel();
                term_stop = shutdown.child_token();
                // What this replica reported as leader is not its to report any more.
                for (ns, name) in memory.targets.keys() {
                    self.metrics.connected(ns, name, None);
                }
                self.metrics.gauges(&BTreeMap::new(), &BTreeMap::new());
                memory = Memory {
                    term: term.as_ref().map(Term::id),
                    ..Default::default()
                };
                if term.is_none() {
                    self.view.set(BTreeMap::new());
                }
            }
            if let (Some(term), true) = (&term, all_listed) {
                while let Ok(m) = rx.try_recv() {
                    self.receive(&mut memory, m);
                }
                let targets_now = targets.all();
                let winners = duplicate_winners(&targets_now);
                self.sync_targets(&targets_now, &winners, &secrets, &mut memory, term, &events)
                    .await;
                self.probe(&targets_now, &mut memory, &slots, &tx, &term_stop);
                self.write_targets(&targets_now, &mut memory, term, &events, &target_writer)
                    .await;
                let integrations_now = integrations.all();
                let live_i: BTreeSet<String> =
                    integrations_now.iter().map(|o| slash(&**o)).collect();
                let live_t: BTreeSet<String> = targets_now.iter().map(|o| slash(&**o)).collect();
                writer.retain(|k| live_i.contains(k));
                target_writer.retain(|k| live_t.contains(k));
                let resolved = self.resolve(&integrations_now, &targets_now, &winners);
                self.dispatch(&resolved, &mut memory, &slots, &tx, &term_stop);
                self.finish(&resolved, &mut memory, term, &events, &writer)
                    .await;
            }
            let wake = self.next_wake(&memory, &[&writer, &target_writer]);
            tokio::select! {
                _ = trigger.notified() => tokio::time::sleep(DEBOUNCE).await,
                Some(m) = rx.recv() => {
                    if memory.term.is_some() {
                        self.receive(&mut memory, m);
                    }
                }
                _ = tokio::time::sleep_until(wake.into()) => {}
                r = leadership.changed() => if r.is_err() { return Ok(()) },
                _ = shutdown.cancelled() => return Ok(()),
            }
        }
    }

    /// When something is due: a pair (whose target is free), a probe, a Secret read again, a
    /// status write after its backoff. Results and changes wake the loop on their own.
    fn next_wake(&self, m: &Memory, writers: &[&StatusWriter]) -> Instant {
        let far = Instant::now() + Duration::from_secs(3600);
        let busy = |k: &Option<TargetKey>| {
            k.as_ref()
                .and_then(|k| m.targets.get(k))
                .is_some_and(|t| t.visiting)
        };
        let pairs = m
            .pairs
            .values()
            .filter(|p| !p.in_flight && !busy(&p.target))
            .map(|p| p.next_due);
        let targets = m
            .targets
            .values()
            .flat_map(|t| {
                [
                    t.next_probe.filter(|_| !t.probing && t.client.is_some()),
                    t.retry_at,
                ]
            })
            .flatten();
        pairs
            .chain(targets)
            .chain(
                writers
                    .iter()
                    .filter_map(|w| w.next_retry())
                    .map(Into::into),
            )
            .min()
            .unwrap_or(far)
            .min(far)
    }

    /// Takes in one probe or check result.
    fn receive(&self, m: &mut Memory, msg: Msg) {
        match msg {
            Msg::Probe {
                target,
                client,
                result,
            } => {
                let interval = self.config.probe_interval;
                let Some(t) = m.targets.get_mut(&target) else {
                    return;
                };
                t.probing = false;
                if t.client.as_ref().map(|c| c.id) != Some(client) {
                    return; // a rebuilt client is probed again
                }
                let was_ready = matches!(t.probe, Some(Ok(_)));
                let next = match &result {
                    Ok(_) => interval,
                    Err(_) => interval / 2,
                };
                t.next_probe = Some(Instant::now() + next);
                let answered = match &result {
                    Ok(_) => true,
                    Err(f) => f.unchecked.connected(),
                };
                if answered {
                    t.last_seen = Some(Time::now());
                }
                t.probe = Some(result.map_err(|f| {
                    format!(
                        "Connection test failed: failed to sync cluster: {}",
                        f.detail()
                    )
                }));
                t.dirty = true;
                if was_ready != matches!(t.probe, Some(Ok(_))) {
                    m.versions += 1;
                    t.version = m.versions;
                }
            }
            Msg::VisitDone { target, slow } => {
                if let Some(t) = m.targets.get_mut(&target) {
                    t.visiting = false;
                    t.slow = slow;
                }
            }
            Msg::Checked {
                pair,
                seq,
                type_,
                result,
                seconds,
            } => {
                self.metrics.check(type_, seconds, result.requests);
                let now = Time::now();
                let Some(p) = m.pairs.get_mut(&pair).filter(|p| p.seq == seq) else {
                    return; // the pair was removed, or re-dispatched since
                };
                p.in_flight = false;
                // The next check is due an interval after this one ended (a slow check never
                // makes the next one start at once).
                p.next_due = p.next_due.max(Instant::now() + p.interval);
                p.last_checked = Some(now);
                p.seconds = seconds;
                p.requests = result.requests;
                if result.answered {
                    p.last_seen = Some(now);
                }
                p.outcome = match result.outcome {
                    Ok(check) => Outcome::Checked(check),
                    Err(f) => {
                        self.metrics.check_error(type_, f.category);
                        Outcome::Unchecked(f.unchecked)
                    }
                };
                if let Some(i) = m.integrations.get_mut(&pair.0) {
                    i.dirty = true;
                }
            }
        }
    }

    /// Target memory from the targets and Secrets: duplicates, (re)built clients.
    async fn sync_targets(
        &self,
        targets: &[Arc<IntegrationTarget>],
        winners: &Winners,
        secrets: &Stores<PartialObjectMeta<Secret>>,
        m: &mut Memory,
        term: &Term,
        events: &EventRecorder,
    ) {
        let live: BTreeSet<TargetKey> = targets.iter().map(|t| key_of(&**t)).collect();
        m.targets.retain(|k, _| {
            let keep = live.contains(k);
            if !keep {
                self.metrics.connected(&k.0, &k.1, None);
            }
            keep
        });
        for t in targets {
            let key = key_of(&**t);
            let mem = m.targets.entry(key.clone()).or_default();
            if let Some(winner) = winners.get(&(key.0.clone(), t.spec.cluster_name.clone()))
                && *winner != key.1
            {
                let reason = (
                    "DuplicateClusterName",
                    format!(
                        "clusterName {} is already used by IntegrationTarget {winner}",
                        t.spec.cluster_name
                    ),
                );
                if mem.unusable.as_ref() != Some(&reason) || mem.client.is_some() {
                    mem.client = None;
                    mem.unusable = Some(reason);
                    mem.inputs = None;
                    mem.probe = None;
                    mem.next_probe = None;
                    mem.retry_at = None;
                    mem.dirty = true;
                    m.versions += 1;
                    mem.version = m.versions;
                }
                continue;
            }
            let (secret, data_key) = target_secret(t);
            // Only the referenced Secret is looked up (a pass never copies every Secret's
            // metadata).
            let rv = secrets
                .get(&key.0, &secret)
                .and_then(|s| s.resource_version())
                .unwrap_or_default();
            let inputs = (
                t.meta().generation,
                secret.clone(),
                data_key.clone(),
                t.spec.context.clone(),
                rv.clone(),
            );
            // A Secret whose read failed is read again after SECRET_RETRY, not at every pass.
            if mem.retry_at.is_some_and(|at| at > Instant::now()) {
                continue;
            }
            let retry_due = mem.retry_at.is_some();
            if mem.inputs.as_ref() == Some(&inputs) && !retry_due {
                continue;
            }
            mem.retry_at = None;
            let built = if rv.is_empty() {
                Err((
                    "SecretNotFound",
                    format!("Kubeconfig secret {secret} not found"),
                ))
            } else {
                self.read_kubeconfig(&key.0, &secret, &data_key, t.spec.context.as_deref())
                    .await
            };
            let built = match built {
                Ok(endpoint) => {
                    if endpoint.insecure && mem.insecure_said.as_deref() != Some(rv.as_str()) {
                        mem.insecure_said = Some(rv.clone());
                        let note = format!(
                            "Kubeconfig in secret {secret} sets insecure-skip-tls-verify: the target's identity is not verified and its credentials could be sent to an impostor; add certificate-authority-data"
                        );
                        events
                            .publish(
                                term,
                                &t.object_ref(&()),
                                &Event {
                                    warning: true,
                                    reason: "InsecureTLS",
                                    note,
                                },
                            )
                            .await;
                    }
                    client::build(
                        &endpoint,
                        self.config.connect_timeout,
                        self.config.request_timeout,
                    )
                    .await
                    .map_err(|e| {
                        (
                            "RegistrationFailed",
                            format!("Failed to register cluster: {e}"),
                        )
                    })
                }
                Err(("SecretReadFailed", message)) => {
                    // Not recorded as read: tried again shortly.
                    mem.retry_at = Some(Instant::now() + SECRET_RETRY);
                    Err(("SecretNotFound", message))
                }
                Err(e) => Err(e),
            };
            if mem.retry_at.is_none() {
                mem.inputs = Some(inputs);
            }
            match built {
                Ok(c) => {
                    tracing::info!(target = %format!("{}/{}", key.0, key.1), server = %c.server, "integrations: target client built");
                    mem.client = Some(c);
                    mem.unusable = None;
                    mem.probe = None;
                    mem.next_probe = Some(Instant::now());
                }
                Err((reason, message)) => {
                    tracing::info!(target = %format!("{}/{}", key.0, key.1), reason, %message, "integrations: target cannot be used");
                    mem.client = None;
                    mem.unusable = Some((reason, message));
                    mem.probe = None;
                    mem.next_probe = None;
                }
            }
            mem.dirty = true;
            m.versions += 1;
            mem.version = m.versions;
        }
    }

    /// The selected context of the target's kubeconfig, under the policy.
    async fn read_kubeconfig(
        &self,
        namespace: &str,
        secret: &str,
        data_key: &str,
        context: Option<&str>,
    ) -> Result<Endpoint, (&'static str, String)> {
        let api = Api::<Secret>::namespaced(self.ctx.client.clone(), namespace);
        let s = match api.get_opt(secret).await {
            Ok(Some(s)) => s,
            Ok(None) => {
                return Err((
                    "SecretNotFound",
                    format!("Kubeconfig secret {secret} not found"),
                ));
            }
            Err(e) => {
                tracing::warn!(secret = %format!("{namespace}/{secret}"), error = %e, "integrations: reading a kubeconfig Secret failed");
                return Err((
                    "SecretReadFailed",
                    format!("Kubeconfig secret {secret} not found"),
                ));
            }
        };
        let Some(bytes) = s.data.as_ref().and_then(|d| d.get(data_key)) else {
            return Err(("InvalidSecret", format!("Secret missing '{data_key}' key")));
        };
        let text = String::from_utf8_lossy(&bytes.0);
        kubeconfig::parse(&text, context).map_err(|e| match e {
            KubeconfigError::Parse(m) => (
                "RegistrationFailed",
                format!("Failed to register cluster: failed to parse kubeconfig: {m}"),
            ),
            KubeconfigError::Refused(why) => (
                "InvalidSecret",
                format!("Kubeconfig in secret {secret} is refused: {why}"),
            ),
        })
    }

    /// Starts the connection tests that are due.
    fn probe(
        &self,
        targets: &[Arc<IntegrationTarget>],
        m: &mut Memory,
        slots: &Arc<Semaphore>,
        tx: &mpsc::UnboundedSender<Msg>,
        stop: &CancellationToken,
    ) {
        let now = Instant::now();
        for t in targets {
            let key = key_of(&**t);
            let Some(mem) = m.targets.get_mut(&key) else {
                continue;
            };
            let (Some(c), Some(at)) = (&mem.client, mem.next_probe) else {
                continue;
            };
            if mem.probing || at > now {
                continue;
            }
            mem.probing = true;
            let (c, slots, tx, stop) = (c.clone(), slots.clone(), tx.clone(), stop.clone());
            let (deadline, metrics) = (self.config.request_timeout, self.metrics.clone());
            tokio::spawn(async move {
                let work = async {
                    let _slot = slots.acquire().await;
                    metrics.requests("probe", 1);
                    client::probe(&c, deadline).await
                };
                tokio::select! {
                    result = work => {
                        let _ = tx.send(Msg::Probe { target: key, client: c.id, result });
                    }
                    _ = stop.cancelled() => {}
                }
            });
        }
    }

    /// Each target's state as its status says it.
    fn target_state(mem: &TargetMem) -> TargetState {
        if let Some((reason, message)) = &mem.unusable {
            return TargetState::Failed(reason, message.clone());
        }
        match (&mem.client, &mem.probe) {
            (Some(c), Some(Ok(version))) => TargetState::Ready {
                server: c.server.clone(),
                version: version.clone(),
            },
            (_, Some(Err(message))) => TargetState::Failed("ConnectionFailed", message.clone()),
            _ => TargetState::Unprobed,
        }
    }

    /// Writes the targets' statuses that changed, or whose heartbeat is due; their Events.
    async fn write_targets(
        &self,
        targets: &[Arc<IntegrationTarget>],
        m: &mut Memory,
        term: &Term,
        events: &EventRecorder,
        writer: &StatusWriter,
    ) {
        let now = Time::now();
        let mut writes = Vec::new();
        for t in targets {
            let key = key_of(&**t);
            let Some(mem) = m.targets.get_mut(&key) else {
                continue;
            };
            if !mem.dirty {
                continue;
            }
            mem.dirty = false;
            let state = Self::target_state(mem);
            self.metrics.connected(
                &key.0,
                &key.1,
                match &state {
                    TargetState::Unprobed => None,
                    TargetState::Ready { .. } => Some(true),
                    TargetState::Failed(..) => Some(false),
                },
            );
            let old = mem
                .written
                .clone()
                .or_else(|| t.status.clone())
                .unwrap_or_default();
            let Some(new) = target_status(&state, &old, t.meta().generation, now) else {
                continue;
            };
            let heartbeat = old
                .last_sync_time
                .is_none_or(|at| at.duration_until(now) >= self.config.probe_interval.mul_f64(0.9));
            let reason = if !target_same_but_time(&old, &new) || t.status.is_none() {
                "changed"
            } else if new.ready && heartbeat {
                "heartbeat"
            } else {
                continue;
            };
            let event = match &state {
                TargetState::Ready { server, version } if !old.ready || t.status.is_none() => {
                    Some(Event {
                        warning: false,
                        reason: "ClusterReady",
                        note: format!("Connected to {server} ({version})"),
                    })
                }
                TargetState::Failed(r, message)
                    if fleetmirror_core::status::find(&old.conditions, "Ready")
                        .is_none_or(|c| c.reason != *r) =>
                {
                    Some(Event {
                        warning: true,
                        reason: r,
                        note: message.clone(),
                    })
                }
                _ => None,
            };
            mem.written = Some(new.clone());
            writes.push((
                t.clone(),
                new,
                reason == "heartbeat",
                event.into_iter().collect(),
            ));
        }
        let results = self
            .write_statuses(writer, term, events, "IntegrationTarget", writes)
            .await;
        for (t, outcome) in results {
            if outcome != Written::Ok
                && let Some(mem) = m.targets.get_mut(&key_of(&*t))
            {
                // Written again once the backoff allows (the writer's next retry wakes us).
                mem.written = None;
                mem.dirty = true;
            }
        }
    }

    /// Every honoured Integration with its config and clusters, in order.
    fn resolve(
        &self,
        integrations: &[Arc<Integration>],
        targets: &[Arc<IntegrationTarget>],
        winners: &Winners,
    ) -> Vec<Resolved> {
        let mut out = Vec::new();
        for i in integrations {
            let (namespace, _) = key_of(&**i);
            let Some(uid) = i.uid() else { continue };
            let type_ = i.spec.type_.core();
            let in_ns: Vec<&Arc<IntegrationTarget>> = targets
                .iter()
                .filter(|t| t.namespace().as_deref() == Some(namespace.as_str()))
                .collect();
            // The target a clusterName resolves to: the used one of that clusterName, else the
            // one of that object name.
            let by_cluster = |c: &str| -> Option<&Arc<IntegrationTarget>> {
                winners
                    .get(&(namespace.clone(), c.to_owned()))
                    .and_then(|w| in_ns.iter().find(|t| t.name_any() == *w).copied())
                    .or_else(|| in_ns.iter().find(|t| t.name_any() == c).copied())
            };
            let mut config = config::parse(type_, &i.spec.config);
            let mut clusters: Vec<(String, Option<TargetKey>)> = Vec::new();
            let mut seen = BTreeSet::new();
            for c in &i.spec.target_clusters {
                let t = by_cluster(c);
                let name = t.map_or(c.clone(), |t| t.spec.cluster_name.clone());
                if seen.insert(name.clone()) {
                    clusters.push((name, t.map(|t| key_of(&**t))));
                }
            }
            if let Some(sel) = &i.spec.target_selector {
                let labels = sel.match_labels.clone().unwrap_or_default();
                let exprs: Vec<Expression> = sel
                    .match_expressions
                    .iter()
                    .flatten()
                    .map(|e| Expression {
                        key: e.key.clone(),
                        operator: e.operator.clone(),
                        values: e.values.clone().unwrap_or_default(),
                    })
                    .collect();
                let mut selected: Vec<&Arc<IntegrationTarget>> = Vec::new();
                // Checked once, whether or not any target is there to match.
                if let Err(e) = config::selector_matches(&labels, &exprs, &BTreeMap::new())
                    && config.is_ok()
                {
                    config = Err(e);
                }
                for t in &in_ns {
                    // A duplicate clusterName's loser is not a cluster of its own.
                    if winners
                        .get(&(namespace.clone(), t.spec.cluster_name.clone()))
                        .is_some_and(|w| *w != t.name_any())
                    {
                        continue;
                    }
                    match config::selector_matches(&labels, &exprs, &t.spec.labels) {
                        Ok(true) => selected.push(t),
                        Ok(false) => {}
                        Err(e) => {
                            if config.is_ok() {
                                config = Err(e);
                            }
                            break;
                        }
                    }
                }
                selected.sort_by(|a, b| a.spec.cluster_name.cmp(&b.spec.cluster_name));
                for t in selected {
                    if seen.insert(t.spec.cluster_name.clone()) {
                        clusters.push((t.spec.cluster_name.clone(), Some(key_of(&**t))));
                    }
                }
            }
            out.push(Resolved {
                obj: i.clone(),
                uid,
                namespace,
                type_,
                config,
                clusters,
            });
        }
        out
    }

    /// Marks pairs due and starts one visit per cluster for the due pairs.
    fn dispatch(
        &self,
        resolved: &[Resolved],
        m: &mut Memory,
        slots: &Arc<Semaphore>,
        tx: &mpsc::UnboundedSender<Msg>,
        stop: &CancellationToken,
    ) {
        let now = Instant::now();
        let live: BTreeSet<PairKey> = resolved
            .iter()
            .filter(|r| r.obj.spec.enabled && r.config.is_ok())
            .flat_map(|r| r.clusters.iter().map(|(c, _)| (r.uid.clone(), c.clone())))
            .collect();
        m.pairs.retain(|k, _| live.contains(k));
        let uids: BTreeSet<&str> = resolved.iter().map(|r| r.uid.as_str()).collect();
        m.integrations.retain(|k, _| uids.contains(k.as_str()));
        // Visits: target → the due checks.
        let mut visits: BTreeMap<TargetKey, Vec<(PairKey, u64, config::Type, CheckConfig)>> =
            BTreeMap::new();
        for r in resolved {
            let imem = m.integrations.entry(r.uid.clone()).or_default();
            let generation = r.obj.meta().generation;
            if imem.generation != generation || imem.clusters != r.clusters {
                imem.generation = generation;
                imem.clusters = r.clusters.clone();
                imem.dirty = true;
                // The next dispatch opens the round of the new inputs.
                imem.round = None;
            }
            let Ok(cfg) = r.config.as_ref().map_err(|_| ()) else {
                continue;
            };
            if !r.obj.spec.enabled {
                continue;
            }
            for (cluster, target) in &r.clusters {
                let pk = (r.uid.clone(), cluster.clone());
                let tmem = target.as_ref().and_then(|k| m.targets.get(k));
                let tversion = tmem.map_or(0, |t| t.version);
                // A new leader keeps what the status says of the cluster's last answer.
                let said = r
                    .obj
                    .status
                    .as_ref()
                    .and_then(|s| s.cluster_statuses.iter().find(|c| c.name == *cluster));
                let p = m.pairs.entry(pk.clone()).or_insert_with(|| PairMem {
                    outcome: Outcome::Pending,
                    last_seen: said.and_then(|c| c.last_seen),
                    last_checked: said.and_then(|c| c.last_checked),
                    next_due: now,
                    in_flight: false,
                    generation,
                    target_version: tversion,
                    seconds: 0.0,
                    requests: 0,
                    interval: cfg.interval,
                    target: target.clone(),
                    seq: 0,
                    dispatched_at: now,
                });
                if p.generation != generation || p.target_version != tversion {
                    p.next_due = now;
                }
                // One visit per target at a time: a due pair waits while its target is busy
                // (the target it waits for is the one the loop's wake-up looks at).
                p.target = target.clone();
                let busy = tmem.is_some_and(|t| t.visiting && t.client.is_some());
                if p.in_flight || p.next_due > now || busy {
                    continue;
                }
                m.seq += 1;
                p.seq = m.seq;
                p.generation = generation;
                p.target_version = tversion;
                p.interval = cfg.interval;
                p.dispatched_at = now;
                p.next_due = now + cfg.interval;
                let unchecked = match (target, tmem) {
                    (None, _) | (Some(_), None) => Some((Unchecked::TargetNotFound, None)),
                    (Some(_), Some(t)) if t.client.is_none() => Some((
                        Unchecked::TargetNotReady(
                            t.unusable
                                .as_ref()
                                .map(|u| u.1.clone())
                                .unwrap_or_else(|| "the target has no usable kubeconfig".into()),
                        ),
                        Some("target_not_ready"),
                    )),
                    _ => None,
                };
                if let Some((u, category)) = unchecked {
                    if let Some(c) = category {
                        self.metrics.check_error(r.type_.as_str(), c);
                    }
                    p.outcome = Outcome::Unchecked(u);
                    p.last_checked = Some(Time::now());
                    imem.dirty = true;
                    continue;
                }
                p.in_flight = true;
                if imem.round.is_none() {
                    imem.round = Some(now);
                }
                visits
                    .entry(target.clone().unwrap_or_default())
                    .or_default()
                    .push((pk, p.seq, r.type_, cfg.clone()));
            }
        }
        let deadline = self.config.request_timeout;
        let mut visits: Vec<_> = visits.into_iter().collect();
        visits.sort_by_key(|(t, _)| !m.targets.get(t).is_some_and(|t| t.slow));
        for (target, checks) in visits {
            let Some(t) = m.targets.get_mut(&target) else {
                continue;
            };
            let Some(c) = t.client.clone() else {
                continue;
            };
            t.visiting = true;
            let (slots, tx, stop) = (slots.clone(), tx.clone(), stop.clone());
            tokio::spawn(async move {
                let work = async {
                    // One slot per cluster visit, for at most the deadline. Its checks run one
                    // after the other (each check's reads at once): a visit opens about as many
                    // connections as one check reads, however many Integrations share it. Once
                    // the cluster refuses, does not answer or fails TLS, the rest of the visit
                    // says the same without contacting it again.
                    let _slot = slots.acquire().await;
                    let end = Instant::now() + deadline;
                    let mut dead: Option<Failure> = None;
                    for (pair, seq, t, cfg) in checks {
                        let started = Instant::now();
                        let budget = end.saturating_duration_since(started);
                        let result = match &dead {
                            Some(f) => CheckResult {
                                outcome: Err(f.clone()),
                                requests: 0,
                                answered: false,
                            },
                            None if budget.is_zero() => CheckResult {
                                outcome: Err(client::timed_out(deadline)),
                                requests: 0,
                                answered: false,
                            },
                            None => client::check(&c, t, &cfg, &pair.1, deadline, budget).await,
                        };
                        if let Err(f) = &result.outcome
                            && matches!(f.category, "connect" | "timeout" | "tls")
                        {
                            dead = Some(f.clone());
                        }
                        let _ = tx.send(Msg::Checked {
                            pair,
                            seq,
                            type_: t.as_str(),
                            result,
                            seconds: started.elapsed().as_secs_f64(),
                        });
                    }
                    let slow = dead.as_ref().is_some_and(|f| f.category == "timeout");
                    let _ = tx.send(Msg::VisitDone { target, slow });
                };
                tokio::select! {
                    _ = work => {}
                    _ = stop.cancelled() => {}
                }
            });
        }
    }

    /// Builds and writes the status of every Integration whose round is complete.
    async fn finish(
        &self,
        resolved: &[Resolved],
        m: &mut Memory,
        term: &Term,
        events: &EventRecorder,
        writer: &StatusWriter,
    ) {
        let now = Time::now();
        let mut writes = Vec::new();
        let mut changed_view = false;
        for r in resolved {
            let Some(imem) = m.integrations.get(&r.uid) else {
                continue;
            };
            // The round waits for the pairs it dispatched (each bounded by the request
            // timeout); pairs dispatched later belong to the next one.
            let round = imem.round;
            // A pair not yet checked with the current generation holds the round too: a status
            // never shows an older generation's verdict under the new observedGeneration.
            let generation = r.obj.meta().generation;
            let in_flight = r.clusters.iter().any(|(c, _)| {
                m.pairs.get(&(r.uid.clone(), c.clone())).is_some_and(|p| {
                    p.generation != generation
                        || p.in_flight && round.is_some_and(|at| p.dispatched_at <= at)
                })
            });
            let interval = r
                .config
                .as_ref()
                .map_or(config::MIN_INTERVAL, |c| c.interval);
            let old = imem
                .written
                .clone()
                .or_else(|| r.obj.status.clone())
                .unwrap_or_default();
            let heartbeat_due = !r.clusters.is_empty()
                && r.obj.spec.enabled
                && r.config.is_ok()
                && old
                    .last_reconcile_time
                    .is_none_or(|at| at.duration_until(now) >= interval.mul_f64(0.9));
            // Only a round's results are written (a heartbeat too: lastReconcileTime is when the
            // round ended).
            if in_flight || !imem.dirty {
                continue;
            }
            let (status, events_due) = self.build_status(r, m, &old, now);
            let imem = m.integrations.get_mut(&r.uid).expect("present");
            imem.dirty = false;
            imem.round = None;
            changed_view = true;
            let reason = if !same_but_time(&old, &status) || r.obj.status.is_none() {
                "changed"
            } else if heartbeat_due {
                "heartbeat"
            } else {
                continue;
            };
            imem.written = Some(status.clone());
            writes.push((r.obj.clone(), status, reason == "heartbeat", events_due));
        }
        let results = self
            .write_statuses(writer, term, events, "Integration", writes)
            .await;
        for (obj, outcome) in results {
            if outcome != Written::Ok
                && let Some(i) = m.integrations.get_mut(&obj.uid().unwrap_or_default())
            {
                // Built and tried again once the backoff allows (the writer's next retry).
                i.written = None;
                i.dirty = true;
            }
        }
        let uids: BTreeSet<String> = resolved.iter().map(|r| r.uid.clone()).collect();
        if changed_view || uids != m.viewed {
            m.viewed = uids;
            self.publish_view(resolved, m);
        }
    }

    /// Applies each `(object, status, heartbeat, Events)` (the Events only once the status is
    /// written), at most [`WRITE_CONCURRENCY`] at once, counting them under `kind`; returns how
    /// each went.
    async fn write_statuses<K, S>(
        &self,
        writer: &StatusWriter,
        term: &Term,
        events: &EventRecorder,
        kind: &'static str,
        writes: Vec<(Arc<K>, S, bool, Vec<Event>)>,
    ) -> Vec<(Arc<K>, Written)>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
        S: serde::Serialize,
    {
        let results = futures::StreamExt::collect::<Vec<_>>(futures::StreamExt::buffer_unordered(
            futures::stream::iter(writes.into_iter().map(
                |(obj, status, heartbeat, evs)| async move {
                    let reason = if heartbeat { "heartbeat" } else { "changed" };
                    let r = writer.apply(term, &*obj, &status, reason).await;
                    if r.is_ok() {
                        let reference = obj.object_ref(&());
                        for e in &evs {
                            events.publish(term, &reference, e).await;
                        }
                    }
                    (obj, reason, written(&r))
                },
            )),
            WRITE_CONCURRENCY,
        ))
        .await;
        results
            .into_iter()
            .map(|(obj, reason, outcome)| {
                if let Some(counted) = outcome.counted(reason) {
                    self.metrics.status_write(kind, counted);
                }
                (obj, outcome)
            })
            .collect()
    }

    /// The status of `r` at `now`, and the Events it calls for (against `old`).
    fn build_status(
        &self,
        r: &Resolved,
        m: &mut Memory,
        old: &IntegrationStatus,
        now: Time,
    ) -> (IntegrationStatus, Vec<Event>) {
        let generation = r.obj.meta().generation;
        let not_checked = if !r.obj.spec.enabled {
            Some(NotChecked::Disabled)
        } else {
            r.config
                .as_ref()
                .err()
                .map(|e| NotChecked::InvalidConfig(e.clone()))
        };
        let pending = Outcome::Pending;
        let inputs: Vec<ClusterInput<'_>> = r
            .clusters
            .iter()
            .map(|(c, t)| {
                let p = m.pairs.get(&(r.uid.clone(), c.clone()));
                ClusterInput {
                    name: c,
                    target: t.as_ref().map_or("", |t| t.1.as_str()),
                    outcome: p.map_or(&pending, |p| &p.outcome),
                    last_seen: p.and_then(|p| p.last_seen),
                    last_checked: p.and_then(|p| p.last_checked),
                }
            })
            .collect();
        let auto_install = r
            .obj
            .spec
            .auto_install
            .as_ref()
            .and_then(|a| a.get("enabled"))
            .and_then(serde_json::Value::as_bool)
            == Some(true);
        let check_ns = r.config.as_ref().map_or_else(
            |_| r.type_.default_namespace().unwrap_or("").to_owned(),
            |c| c.namespace.clone(),
        );
        let (status, _) = integration_status(
            &StatusInput {
                namespace: &r.namespace,
                generation,
                check_namespace: &check_ns,
                not_checked: not_checked.as_ref(),
                auto_install,
                type_name: r.type_.as_str(),
                clusters: &inputs,
            },
            old,
            now,
        );
        let mut evs = cluster_events(old, &status);
        let imem = m.integrations.get_mut(&r.uid).expect("present");
        if let Err(e) = &r.config
            && imem.invalid_said != generation
        {
            imem.invalid_said = generation;
            evs.push(Event {
                warning: true,
                reason: "InvalidConfig",
                note: e.clone(),
            });
        }
        if auto_install && imem.auto_install_said != generation {
            imem.auto_install_said = generation;
            evs.push(Event {
                warning: true,
                reason: "AutoInstallIgnored",
                note: format!(
                    "autoInstall is ignored: fleetmirror does not install tools; install {} with your own tooling",
                    r.type_.as_str()
                ),
            });
        }
        (status, evs)
    }

    /// The Diagnostics view and the gauges, from the leader's memory.
    fn publish_view(&self, resolved: &[Resolved], m: &Memory) {
        let mut all = BTreeMap::new();
        let mut phases: BTreeMap<(&'static str, &'static str), i64> = BTreeMap::new();
        let mut states: BTreeMap<(&'static str, &'static str), i64> = BTreeMap::new();
        for r in resolved {
            let Some(imem) = m.integrations.get(&r.uid) else {
                continue;
            };
            // Not written yet (a new Integration's first round runs): Initializing.
            let status = imem
                .written
                .clone()
                .or_else(|| r.obj.status.clone())
                .unwrap_or_default();
            let checked = r.obj.spec.enabled && r.config.is_ok();
            let t = r.type_.as_str();
            let phase: &'static str = match status.phase.as_deref() {
                Some("Running") => "Running",
                Some("Failed") => "Failed",
                Some("Disabled") => "Disabled",
                _ => "Initializing",
            };
            *phases.entry((t, phase)).or_default() += 1;
            let s = status.summary.clone().unwrap_or_default();
            let interval = r.config.as_ref().map_or(0.0, |c| c.interval.as_secs_f64());
            let summary = IntegrationSummary {
                namespace: r.namespace.clone(),
                name: r.obj.name_any(),
                r#type: t.into(),
                enabled: r.obj.spec.enabled,
                phase: phase.into(),
                message: status.message.clone().unwrap_or_default(),
                total: s.total,
                healthy: s.healthy,
                degraded: s.degraded,
                unhealthy: s.unhealthy,
                unreachable: s.unreachable,
                pending: s.pending,
                interval_seconds: interval,
                last_reconcile_time: status
                    .last_reconcile_time
                    .map(|t| t.0.to_string())
                    .unwrap_or_default(),
            };
            let mut clusters = Vec::new();
            for (i, (c, target)) in r.clusters.iter().enumerate() {
                let entry = status.cluster_statuses.get(i).filter(|e| e.name == *c);
                let p = m.pairs.get(&(r.uid.clone(), c.clone()));
                let tmem = target.as_ref().and_then(|k| m.targets.get(k));
                let state = entry.map_or("Pending", |e| e.state.as_str());
                let label = match state {
                    "Healthy" => "healthy",
                    "Degraded" => "degraded",
                    "Unhealthy" => "unhealthy",
                    "Unreachable" => "unreachable",
                    _ => "pending",
                };
                if checked {
                    *states.entry((t, label)).or_default() += 1;
                }
                let components = match p.map(|p| &p.outcome) {
                    Some(Outcome::Checked(ClusterCheck { components, .. })) => components
                        .iter()
                        .map(|c| IntegrationComponent {
                            name: c.name.clone(),
                            kind: c.kind.into(),
                            namespace: c.namespace.clone(),
                            required: c.required,
                            state: c.state.as_str().into(),
                            available: c.available,
                            desired: c.desired,
                            message: c.message.clone(),
                        })
                        .collect(),
                    _ => Vec::new(),
                };
                let time = |t: Option<Time>| t.map(|t| t.0.to_string()).unwrap_or_default();
                clusters.push(IntegrationCluster {
                    name: c.clone(),
                    target: target.as_ref().map(|t| t.1.clone()).unwrap_or_default(),
                    server: tmem
                        .and_then(|t| t.client.as_ref())
                        .map(|c| c.server.clone())
                        .unwrap_or_default(),
                    server_version: tmem
                        .and_then(|t| t.probe.as_ref())
                        .and_then(|p| p.as_ref().ok())
                        .cloned()
                        .unwrap_or_default(),
                    state: state.into(),
                    reason: entry.map(|e| e.reason.clone()).unwrap_or_default(),
                    connected: entry.is_some_and(|e| e.connected),
                    message: entry.map(|e| e.message.clone()).unwrap_or_default(),
                    last_seen: time(p.and_then(|p| p.last_seen)),
                    last_checked: time(p.and_then(|p| p.last_checked)),
                    check_seconds: p.map_or(0.0, |p| p.seconds),
                    requests: p.map_or(0, |p| p.requests),
                    components,
                });
            }
            all.insert(
                (r.namespace.clone(), r.obj.name_any()),
                IntegrationDetail {
                    integration: Some(summary),
                    clusters,
                },
            );
        }
        self.view.set(all);
        self.metrics.gauges(&phases, &states);
    }
}

/// How a status write went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Written {
    Ok,
    /// Not sent: the object is backing off after failed writes.
    Held,
    Failed,
}

impl Written {
    /// The `reason` label it is counted under (a held write sends nothing: not counted).
    fn counted(self, reason: &'static str) -> Option<&'static str> {
        match self {
            Written::Ok => Some(reason),
            Written::Held => None,
            Written::Failed => Some("error"),
        }
    }
}

fn written(r: &Result<(), crate::platform::WriteError>) -> Written {
    match r {
        Ok(()) => Written::Ok,
        Err(crate::platform::WriteError::BackingOff { .. }) => Written::Held,
        Err(_) => Written::Failed,
    }
}

/// (namespace, clusterName) → the name of the target that is used for it.
type Winners = HashMap<(String, String), String>;

/// For each (namespace, clusterName) used by several targets, the one that is used: the
/// oldest (creationTimestamp, then name).
fn duplicate_winners(targets: &[Arc<IntegrationTarget>]) -> Winners {
    let mut by: HashMap<(String, String), (String, String)> = HashMap::new();
    for t in targets {
        let (ns, name) = key_of(&**t);
        let k = (ns, t.spec.cluster_name.clone());
        let cand = (creation(&**t), name);
        by.entry(k)
            .and_modify(|w| {
                if cand < *w {
                    *w = cand.clone();
                }
            })
            .or_insert(cand);
    }
    by.into_iter().map(|(k, (_, n))| (k, n)).collect()
}
