//! The fleet-health controller (health.md): scores every vCluster and writes the status of
//! every `VClusterHealth`.
//!
//! Inputs, all held in memory and small: control-plane workloads (metadata-only watch of
//! StatefulSets and Deployments labelled `app=vcluster`), Services with one of the labels
//! vCluster puts on what matters here (`app=vcluster`, `vcluster.loft.sh/managed-by`,
//! `vcluster.loft.sh/belongs-to`), the `VClusterHealth` objects, and pod facts — from the
//! agents' reports in the [`FleetIndex`] by default, or with `--pod-source=api` from a
//! label-filtered pod watch. The aggregator never lists all pods or all Services.
//!
//! Freshness: any change of an input triggers a recompute (debounced 100 ms), and so does a
//! node's agent going silent past `--agent-stale-after` (the loop sleeps until the next such
//! deadline); a 1 s tick checks each object's `intervalSeconds`. A status is written only
//! when it changed (timestamps aside) or `intervalSeconds` passed since `lastUpdated` (the
//! heartbeat), so a fleet where nothing changes costs one write per object per interval.
//! Only the leader writes; every replica scores, so Diagnostics answers on the leader.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use fleetmirror_core::health::{self, PodFact, Selection, ServiceFact, VClusterKey, Workload};
use fleetmirror_proto::v1::VClusterSummary;
use fleetmirror_runtime::watch::{
    ControlPlaneStores, trim_managed_fields, trim_pod, trim_service, watch_store,
};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::args::PodSource;
use crate::crd::{ClusterRef, Summary, SyncCoverage, VClusterHealth, VClusterHealthStatus};
use crate::index::{FleetIndex, VClusterScore};
use crate::metrics::Metrics;

const DEBOUNCE: Duration = Duration::from_millis(100);
const DEFAULT_INTERVAL_SECS: i64 = 30;
const MAX_INTERVAL_SECS: i64 = 86_400;

/// Everything one recompute reads, collected once.
struct Facts {
    workloads: Vec<(String, BTreeMap<String, String>)>,
    services: Vec<Arc<Service>>,
    pods: Vec<PodFact>,
    nodes: BTreeSet<String>,
    /// (namespace, vCluster) → (mounted, expected) mounts.
    coverage: HashMap<(String, String), (u32, u32)>,
    /// (namespace, vCluster) → pods seen.
    pods_seen: HashMap<(String, String), u32>,
    /// (namespace, vCluster) with pods on a stale node.
    stale: BTreeSet<(String, String)>,
    /// No agent has reported at all (agents mode).
    no_agents: bool,
}

/// Per-vCluster counts, aggregated over its (sorted, adjacent) reported pods.
struct Group {
    key: (String, String),
    seen: u32,
    stale: bool,
    mounted: u32,
    mounts: u32,
}

impl Group {
    fn new(namespace: String, vcluster: String) -> Self {
        Self {
            key: (namespace, vcluster),
            seen: 0,
            stale: false,
            mounted: 0,
            mounts: 0,
        }
    }

    fn flush(self, facts: &mut Facts) {
        facts.pods_seen.insert(self.key.clone(), self.seen);
        if self.mounts > 0 {
            facts
                .coverage
                .insert(self.key.clone(), (self.mounted, self.mounts));
        }
        if self.stale {
            facts.stale.insert(self.key);
        }
    }
}

/// One scored vCluster.
struct Scored {
    key: VClusterKey,
    signals: health::Signals,
    service_port: Option<i32>,
    stale: bool,
    coverage: Option<(u32, u32)>,
    pods_seen: u32,
}

fn svc_fact(s: &Service) -> (String, String, bool, Vec<i32>) {
    let spec = s.spec.as_ref();
    let headless = spec.and_then(|s| s.cluster_ip.as_deref()) == Some("None");
    let ports = spec
        .and_then(|s| s.ports.as_ref())
        .map(|p| p.iter().map(|p| p.port).collect())
        .unwrap_or_default();
    (
        s.namespace().unwrap_or_default(),
        s.name_any(),
        headless,
        ports,
    )
}

fn score_all(facts: &Facts, selection: &Selection) -> Vec<Scored> {
    let keys = health::discover(
        selection,
        facts.workloads.iter().map(|(ns, labels)| Workload {
            namespace: ns,
            labels,
        }),
    );
    // Group by namespace once: scoring a vCluster reads only its own namespace.
    let empty = BTreeMap::new();
    let svc_parts: Vec<(String, String, bool, Vec<i32>)> =
        facts.services.iter().map(|s| svc_fact(s)).collect();
    let mut svcs: HashMap<&str, Vec<ServiceFact<'_>>> = HashMap::new();
    for (s, (ns, name, headless, ports)) in facts.services.iter().zip(&svc_parts) {
        svcs.entry(ns.as_str()).or_default().push(ServiceFact {
            namespace: ns,
            name,
            labels: s.metadata.labels.as_ref().unwrap_or(&empty),
            annotations: s.metadata.annotations.as_ref().unwrap_or(&empty),
            headless: *headless,
            ports,
        });
    }
    let mut pods: HashMap<&str, Vec<&PodFact>> = HashMap::new();
    for p in &facts.pods {
        pods.entry(&*p.namespace).or_default().push(p);
    }
    keys.into_iter()
        .map(|key| {
            let ns_svcs = svcs
                .get(key.namespace.as_str())
                .map(Vec::as_slice)
                .unwrap_or_default();
            let ns_pods = pods
                .get(key.namespace.as_str())
                .map(Vec::as_slice)
                .unwrap_or_default();
            let signals =
                health::signals(&key, ns_svcs.iter(), ns_pods.iter().copied(), &facts.nodes);
            let service_port = ns_svcs
                .iter()
                .find(|s| s.name == key.name)
                .map(|s| health::service_port(s.ports));
            let k = (key.namespace.clone(), key.name.clone());
            Scored {
                signals,
                service_port,
                stale: facts.stale.contains(&k),
                coverage: facts.coverage.get(&k).copied(),
                pods_seen: facts.pods_seen.get(&k).copied().unwrap_or(0),
                key,
            }
        })
        .collect()
}

fn interval_secs(vch: &VClusterHealth) -> i64 {
    match vch.spec.interval_seconds {
        Some(s) if s > 0 => s.min(MAX_INTERVAL_SECS),
        _ => DEFAULT_INTERVAL_SECS,
    }
}

fn condition(
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    old: &[Condition],
    now: &Time,
) -> Condition {
    let status = if ok { "True" } else { "False" };
    let last_transition_time = old
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.clone());
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time,
    }
}

/// The status `vch` should have, at `now`.
fn desired_status(
    vch: &VClusterHealth,
    facts: &Facts,
    fleet: &[Scored],
    pod_source: PodSource,
    now: &Time,
) -> VClusterHealthStatus {
    let old = vch.status.clone().unwrap_or_default();
    let generation = vch.metadata.generation;
    let spec_ns = vch.spec.namespace.as_deref().map(str::trim).unwrap_or("");
    let valid = matches!(spec_ns, "" | "*" | "all")
        || fleetmirror_core::naming::validate_dns1123_label(spec_ns).is_ok();
    if !valid {
        return VClusterHealthStatus {
            summary: Some(Summary {
                lowest_score: 100,
                ..Default::default()
            }),
            last_updated: Some(now.clone()),
            observed_generation: generation,
            conditions: vec![condition(
                "Ready",
                false,
                "InvalidSpec",
                format!(
                    "spec.namespace {:?} is not a namespace name, \"*\" or \"all\"",
                    fleetmirror_core::pod::truncate(spec_ns)
                ),
                generation,
                &old.conditions,
                now,
            )],
            ..Default::default()
        };
    }
    // The fleet is scored once per recompute; each object takes its selection of it.
    let selection = Selection::from_spec(vch.spec.namespace.as_deref());
    let scored: Vec<&Scored> = fleet
        .iter()
        .filter(|s| selection.matches(&s.key.namespace))
        .collect();
    let mut summary = Summary {
        total: scored.len() as i32,
        lowest_score: 100,
        ..Default::default()
    };
    let mut clusters = Vec::new();
    let mut coverage = Vec::new();
    for s in &scored {
        match s.signals.level() {
            health::Level::Full => summary.full += 1,
            health::Level::Partial => summary.partial += 1,
            health::Level::None => summary.none += 1,
        }
        summary.lowest_score = summary.lowest_score.min(s.signals.score());
        if let Some(port) = s.service_port {
            clusters.push(ClusterRef {
                name: s.key.name.clone(),
                namespace: s.key.namespace.clone(),
                service_name: s.key.name.clone(),
                service_port: port,
            });
        }
        let mut message = s.signals.message();
        if s.stale {
            let note = "a node that reported this vCluster's pods went silent: pod facts may be out of date";
            message = if message.is_empty() {
                note.into()
            } else {
                format!("{message}; {note}")
            };
        }
        coverage.push(SyncCoverage {
            cluster_name: s.key.name.clone(),
            namespace: s.key.namespace.clone(),
            api_sync: s.signals.api_sync,
            control_plane_ready: s.signals.control_plane_ready,
            dns_sync: s.signals.dns_sync,
            node_sync: s.signals.node_sync,
            system_workload_sync: s.signals.system_workload_sync,
            tenant_workload_sync: s.signals.tenant_workload_sync,
            workload_sync: s.signals.workload_sync(),
            score: s.signals.score(),
            level: s.signals.level().as_str().into(),
            last_checked: Some(now.clone()),
            mount_coverage: s.coverage.map(|(m, e)| format!("{m}/{e}")),
            pods_stale: s.stale,
            message,
        });
    }
    let stale_count = scored.iter().filter(|s| s.stale).count();
    let agents = match pod_source {
        PodSource::Api => condition(
            "AgentsReporting",
            true,
            "PodSourceAPI",
            "pod facts come from the API (--pod-source=api)".into(),
            generation,
            &old.conditions,
            now,
        ),
        PodSource::Agents if facts.no_agents => condition(
            "AgentsReporting",
            false,
            "NoAgentReports",
            "no agent has reported: pod signals cannot be true (is the agent DaemonSet running?)"
                .into(),
            generation,
            &old.conditions,
            now,
        ),
        PodSource::Agents if stale_count > 0 => condition(
            "AgentsReporting",
            false,
            "AgentsSilent",
            format!("{stale_count} vCluster(s) have pods on nodes whose agent went silent"),
            generation,
            &old.conditions,
            now,
        ),
        PodSource::Agents => condition(
            "AgentsReporting",
            true,
            "AgentsReporting",
            format!("{} node(s) reporting", facts.nodes.len()),
            generation,
            &old.conditions,
            now,
        ),
    };
    VClusterHealthStatus {
        clusters,
        sync_coverage: coverage,
        summary: Some(summary),
        last_updated: Some(now.clone()),
        observed_generation: generation,
        conditions: vec![
            condition(
                "Ready",
                true,
                "Scored",
                format!("{} vCluster(s) scored", scored.len()),
                generation,
                &old.conditions,
                now,
            ),
            agents,
        ],
    }
}

/// The status without its timestamps, to tell a real change from a heartbeat.
fn without_times(s: &VClusterHealthStatus) -> VClusterHealthStatus {
    let mut s = s.clone();
    s.last_updated = None;
    for c in &mut s.sync_coverage {
        c.last_checked = None;
    }
    s
}

/// Runs the controller until `shutdown`.
pub struct HealthController {
    /// API client.
    pub client: kube::Client,
    /// Agent reports and the Diagnostics scores.
    pub index: Arc<FleetIndex>,
    /// Where pod facts come from.
    pub pod_source: PodSource,
    /// True while this replica leads (only then does it write).
    pub leader: watch::Receiver<bool>,
    /// Metrics.
    pub metrics: Metrics,
}

impl std::fmt::Debug for HealthController {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthController")
            .field("pod_source", &self.pod_source)
            .finish()
    }
}

impl HealthController {
    /// Watches, scores and writes until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), kube::Error> {
        let trigger = Arc::new(Notify::new());
        let c = &self.client;
        let app = format!(
            "{}={}",
            fleetmirror_core::naming::LABEL_APP,
            fleetmirror_core::naming::APP_VCLUSTER
        );
        let workloads = ControlPlaneStores::start(c, &trigger, &shutdown);
        let svc_selectors = [
            app.clone(),
            fleetmirror_core::naming::LABEL_MANAGED_BY.into(),
            fleetmirror_core::naming::LABEL_BELONGS_TO.into(),
        ];
        let services: Vec<Store<Service>> = svc_selectors
            .iter()
            .map(|sel| {
                watch_store(
                    Api::<Service>::all(c.clone()),
                    watcher::Config::default().labels(sel),
                    trim_service,
                    &trigger,
                    "services",
                    &shutdown,
                )
            })
            .collect();
        let vchs = watch_store(
            Api::<VClusterHealth>::all(c.clone()),
            watcher::Config::default(),
            trim_managed_fields,
            &trigger,
            "vclusterhealths",
            &shutdown,
        );
        let pod_stores: Vec<Store<Pod>> = match self.pod_source {
            PodSource::Agents => vec![],
            PodSource::Api => [
                fleetmirror_core::naming::LABEL_MANAGED_BY.to_owned(),
                app.clone(),
            ]
            .iter()
            .map(|sel| {
                watch_store(
                    Api::<Pod>::all(c.clone()),
                    watcher::Config::default().labels(sel),
                    trim_pod,
                    &trigger,
                    "pods",
                    &shutdown,
                )
            })
            .collect(),
        };

        let ready = async {
            workloads.wait_until_ready().await?;
            vchs.wait_until_ready().await?;
            for s in &services {
                s.wait_until_ready().await?;
            }
            for s in &pod_stores {
                s.wait_until_ready().await?;
            }
            Ok::<_, reflector::store::WriterDropped>(())
        };
        tokio::select! {
            r = ready => if r.is_err() { return Ok(()) },
            _ = shutdown.cancelled() => return Ok(()),
        }
        tracing::info!(pod_source = ?self.pod_source, "health controller: watches synced");

        let recorder = Recorder::new(
            self.client.clone(),
            Reporter {
                controller: "fleetmirror-aggregator".into(),
                instance: None,
            },
        );
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut dirty = true;
        // The time the last facts were taken at: staleness is judged as of then.
        let mut scored_at = Instant::now();
        loop {
            let now_ts = Timestamp::now();
            let due = vchs.state().iter().any(|v| self.due(v, now_ts));
            if dirty || due {
                let started = Instant::now();
                scored_at = Instant::now();
                let facts = self.collect(&workloads, &services, &pod_stores, scored_at);
                let fleet = score_all(&facts, &Selection::All);
                self.publish_scores(&fleet);
                if *self.leader.borrow() {
                    for vch in vchs.state() {
                        self.reconcile(&vch, &facts, &fleet, &recorder).await;
                    }
                }
                self.metrics
                    .recompute_seconds
                    .observe(started.elapsed().as_secs_f64());
                dirty = false;
            }
            // A node turning stale changes scores (podsStale, AgentsReporting) without any
            // event: wake up when the next one (as of the facts scored) would, debounced like
            // any change so a rack going silent is a few recomputes, not one per node. A
            // deadline that passed while scoring (or while the tick won the race below) is
            // still ahead of `scored_at`, so it is never lost.
            let stale_in = self
                .index
                .next_stale_at(scored_at)
                .map(|t| t.saturating_duration_since(Instant::now()) + DEBOUNCE);
            let turns_stale = async {
                match stale_in {
                    Some(d) => tokio::time::sleep(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = trigger.notified() => { tokio::time::sleep(DEBOUNCE).await; dirty = true; }
                _ = turns_stale => dirty = true,
                _ = self.index.changed() => { tokio::time::sleep(DEBOUNCE).await; dirty = true; }
                _ = tick.tick() => {}
                _ = shutdown.cancelled() => return Ok(()),
            }
        }
    }

    /// True when `vch`'s heartbeat is due.
    fn due(&self, vch: &VClusterHealth, now: Timestamp) -> bool {
        let last = vch
            .status
            .as_ref()
            .and_then(|s| s.last_updated.as_ref())
            .map(|t| t.0);
        match last {
            None => true,
            Some(t) => now.duration_since(t).as_secs() >= interval_secs(vch),
        }
    }

    fn collect(
        &self,
        workloads: &ControlPlaneStores,
        services: &[Store<Service>],
        pod_stores: &[Store<Pod>],
        at: Instant,
    ) -> Facts {
        let workloads = workloads
            .metadata()
            .into_iter()
            .map(|m| {
                (
                    m.namespace.unwrap_or_default(),
                    m.labels.unwrap_or_default(),
                )
            })
            .collect();
        let mut seen = BTreeSet::new();
        let services = services
            .iter()
            .flat_map(|s| s.state())
            .filter(|s| seen.insert(s.metadata.uid.clone()))
            .collect();
        let mut facts = Facts {
            workloads,
            services,
            pods: vec![],
            nodes: BTreeSet::new(),
            coverage: HashMap::new(),
            pods_seen: HashMap::new(),
            stale: BTreeSet::new(),
            no_agents: false,
        };
        match self.pod_source {
            PodSource::Agents => {
                let mut a = self.index.agent_facts(at);
                facts.no_agents = a.nodes.is_empty();
                facts.nodes = a.nodes;
                // Aggregate per (namespace, vCluster) after sorting: one key per vCluster,
                // not one per pod, and the facts are moved, not cloned.
                a.pods.sort_unstable_by(|x, y| {
                    (&x.fact.namespace, &x.fact.vcluster)
                        .cmp(&(&y.fact.namespace, &y.fact.vcluster))
                });
                let mut group: Option<Group> = None;
                facts.pods.reserve(a.pods.len());
                for p in a.pods {
                    let same = group.as_ref().is_some_and(|g| {
                        *g.key.0 == *p.fact.namespace && *g.key.1 == *p.fact.vcluster
                    });
                    if !same {
                        if let Some(g) = group.take() {
                            g.flush(&mut facts);
                        }
                        group = Some(Group::new(
                            p.fact.namespace.to_string(),
                            p.fact.vcluster.to_string(),
                        ));
                    }
                    let g = group.as_mut().expect("set above");
                    g.seen += 1;
                    g.stale |= p.stale;
                    if !p.fact.control_plane {
                        g.mounted += p.mounted;
                        g.mounts += p.mounts;
                    }
                    facts.pods.push(p.fact);
                }
                if let Some(g) = group {
                    g.flush(&mut facts);
                }
            }
            PodSource::Api => {
                let mut uids = BTreeSet::new();
                for pod in pod_stores.iter().flat_map(|s| s.state()) {
                    if !uids.insert(pod.metadata.uid.clone()) {
                        continue;
                    }
                    if let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) {
                        facts.nodes.insert(node);
                    }
                    if let Some(fact) = pod_fact_from_api(&pod) {
                        *facts
                            .pods_seen
                            .entry((fact.namespace.to_string(), fact.vcluster.to_string()))
                            .or_default() += 1;
                        facts.pods.push(fact);
                    }
                }
            }
        }
        facts
    }

    fn publish_scores(&self, scored: &[Scored]) {
        let mut by_level: BTreeMap<&'static str, i64> = BTreeMap::new();
        let mut by_score: BTreeMap<i32, i64> = BTreeMap::new();
        let scores = scored
            .iter()
            .map(|s| {
                *by_level.entry(s.signals.level().as_str()).or_default() += 1;
                *by_score.entry(s.signals.score()).or_default() += 1;
                let summary = VClusterSummary {
                    namespace: s.key.namespace.clone(),
                    name: s.key.name.clone(),
                    signals: Some(fleetmirror_proto::v1::Signals {
                        api_sync: s.signals.api_sync,
                        control_plane_ready: s.signals.control_plane_ready,
                        dns_sync: s.signals.dns_sync,
                        node_sync: s.signals.node_sync,
                        system_workload_sync: s.signals.system_workload_sync,
                        tenant_workload_sync: s.signals.tenant_workload_sync,
                    }),
                    score: s.signals.score(),
                    level: s.signals.level().as_str().into(),
                    pods_seen: s.pods_seen,
                    mount_coverage: s.coverage.map(|(mounted, expected)| {
                        fleetmirror_proto::v1::MountCoverage { mounted, expected }
                    }),
                    last_change: Some(SystemTime::now().into()),
                    pods_stale: s.stale,
                    message: s.signals.message(),
                };
                ((s.key.namespace.clone(), s.key.name.clone()), summary)
            })
            .collect::<BTreeMap<_, _>>();
        // Keep last_change of vClusters whose score did not change.
        let previous: HashMap<(String, String), VClusterSummary> = self
            .index
            .list_vclusters(None)
            .into_iter()
            .map(|s| ((s.namespace.clone(), s.name.clone()), s))
            .collect();
        let scores = scores
            .into_iter()
            .map(|(k, mut summary)| {
                if let Some(old) = previous.get(&k)
                    && old.signals == summary.signals
                {
                    summary.last_change = old.last_change;
                }
                (k, VClusterScore { summary })
            })
            .collect();
        self.index.set_scores(scores);
        self.metrics.set_levels(&by_level);
        self.metrics.set_scores(&by_score);
    }

    async fn reconcile(
        &self,
        vch: &VClusterHealth,
        facts: &Facts,
        fleet: &[Scored],
        recorder: &Recorder,
    ) {
        let now = Time(Timestamp::now());
        let desired = desired_status(vch, facts, fleet, self.pod_source, &now);
        let current = vch.status.clone().unwrap_or_default();
        let changed = without_times(&desired) != without_times(&current);
        let heartbeat = self.due(vch, now.0);
        if !changed && !heartbeat {
            return;
        }
        let ns = vch.namespace().unwrap_or_default();
        let name = vch.name_any();
        let patch = serde_json::json!({
            "apiVersion": "fleetmirror.io/v1alpha1",
            "kind": "VClusterHealth",
            "status": desired,
        });
        let api = Api::<VClusterHealth>::namespaced(self.client.clone(), &ns);
        match api
            .patch_status(
                &name,
                &PatchParams::apply("fleetmirror").force(),
                &Patch::Apply(&patch),
            )
            .await
        {
            Ok(_) => {
                self.metrics
                    .status_write(if changed { "changed" } else { "heartbeat" });
                if changed {
                    tracing::info!(vclusterhealth = %format!("{ns}/{name}"), total = desired.summary.as_ref().map(|s| s.total), "status updated");
                    self.publish_events(vch, &current, &desired, recorder).await;
                }
            }
            Err(error) => {
                self.metrics.status_write("error");
                tracing::warn!(vclusterhealth = %format!("{ns}/{name}"), %error, "writing status failed; retrying on the next pass");
            }
        }
    }
}

/// The Kubernetes Events one status change deserves: a vCluster whose level changed (Warning
/// when it got worse), and a spec that became invalid. At most [`MAX_EVENTS`] per write, so a
/// fleet-wide outage is one short burst, not a storm.
fn events_for(current: &VClusterHealthStatus, desired: &VClusterHealthStatus) -> Vec<Event> {
    let mut out = Vec::new();
    let reason_of = |s: &VClusterHealthStatus| {
        s.conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .map(|c| c.reason.clone())
            .unwrap_or_default()
    };
    if reason_of(desired) == "InvalidSpec" && reason_of(current) != "InvalidSpec" {
        let note = desired
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .map(|c| c.message.clone());
        out.push(Event {
            type_: EventType::Warning,
            reason: "InvalidSpec".into(),
            note,
            action: "Score".into(),
            secondary: None,
        });
    }
    if current.last_updated.is_none() {
        return out; // the first status: nothing changed level yet
    }
    let old: HashMap<(&str, &str), &crate::crd::SyncCoverage> = current
        .sync_coverage
        .iter()
        .map(|c| ((c.namespace.as_str(), c.cluster_name.as_str()), c))
        .collect();
    let changes: Vec<_> = desired
        .sync_coverage
        .iter()
        .filter_map(|c| {
            let o = old.get(&(c.namespace.as_str(), c.cluster_name.as_str()))?;
            (o.level != c.level).then_some((o, c))
        })
        .collect();
    for (o, c) in changes.iter().take(MAX_EVENTS) {
        let worse = c.score < o.score;
        let why = if c.message.is_empty() {
            String::new()
        } else {
            format!(": {}", c.message)
        };
        let note = format!(
            "{}/{}: {} -> {} ({} -> {}){why}",
            c.namespace, c.cluster_name, o.level, c.level, o.score, c.score
        );
        out.push(Event {
            type_: if worse {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: "LevelChanged".into(),
            note: Some(fleetmirror_core::pod::truncate(&note)),
            action: "Score".into(),
            secondary: None,
        });
    }
    if changes.len() > MAX_EVENTS {
        out.push(Event {
            type_: EventType::Warning,
            reason: "LevelChanged".into(),
            note: Some(format!(
                "… and {} more vClusters changed level",
                changes.len() - MAX_EVENTS
            )),
            action: "Score".into(),
            secondary: None,
        });
    }
    out
}

/// Events per status write at most.
const MAX_EVENTS: usize = 10;

impl HealthController {
    async fn publish_events(
        &self,
        vch: &VClusterHealth,
        current: &VClusterHealthStatus,
        desired: &VClusterHealthStatus,
        recorder: &Recorder,
    ) {
        let reference = vch.object_ref(&());
        for event in events_for(current, desired) {
            if let Err(error) = recorder.publish(&event, &reference).await {
                tracing::warn!(vclusterhealth = %vch.name_any(), %error, "publishing an Event failed");
            }
        }
    }
}

/// A pod fact from a pod object (for `--pod-source=api`), the same the agent would report.
pub fn pod_fact_from_api(pod: &Pod) -> Option<PodFact> {
    use fleetmirror_core::pod::{PodClass, PodMeta, classify};
    let empty = BTreeMap::new();
    let class = classify(PodMeta {
        labels: pod.metadata.labels.as_ref().unwrap_or(&empty),
        annotations: pod.metadata.annotations.as_ref().unwrap_or(&empty),
    });
    let status = pod.status.as_ref();
    let running_ready = status.and_then(|s| s.phase.as_deref()) == Some("Running")
        && status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    let namespace: Arc<str> = pod.metadata.namespace.as_deref()?.into();
    match class {
        PodClass::Synced(s) => Some(PodFact {
            namespace,
            vcluster: s.vcluster.into(),
            control_plane: false,
            running_ready,
            virtual_namespace: s.virtual_namespace.into(),
        }),
        PodClass::ControlPlane { vcluster } => Some(PodFact {
            namespace,
            vcluster: vcluster.into(),
            control_plane: true,
            running_ready,
            virtual_namespace: "".into(),
        }),
        PodClass::Other => None,
    }
}
