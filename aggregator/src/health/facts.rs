//! The health controller's inputs and the fleet scoring of one recompute: the watches it
//! reads (control-plane workloads metadata-only, label-selected Services, `VClusterHealth`,
//! Node metadata in agent mode, label-selected pods with `--pod-source=api`), the facts
//! collected from them and from the agents' reports, and every vCluster scored once.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;

use fleetmirror_core::health::status::ScoredVCluster;
use fleetmirror_core::health::{self, PodFact, Selection, ServiceFact, Workload};
use fleetmirror_runtime::watch::{
    ControlPlaneStores, Watches, trim_managed_fields, trim_pod, trim_service,
};
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use kube::ResourceExt;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use tokio::sync::Notify;

use crate::args::PodSource;
use crate::crd::VClusterHealth;
use crate::index::FleetIndex;

/// The watches the controller reads.
pub(super) struct Inputs {
    pub workloads: ControlPlaneStores,
    pub services: Vec<Store<Service>>,
    pub vchs: Store<VClusterHealth>,
    pub pods: Vec<Store<Pod>>,
    /// Agent mode: the Node objects (metadata), so a deleted node's reports are dropped.
    pub nodes: Option<Store<PartialObjectMeta<Node>>>,
    /// Every watch's name, for [`Watches::failing`].
    pub names: Vec<&'static str>,
}

const SERVICE_WATCHES: [&str; 3] = ["services-app", "services-managed-by", "services-belongs-to"];
const POD_WATCHES: [&str; 2] = ["pods-managed-by", "pods-app"];

impl Inputs {
    /// Starts every watch; each event notifies `trigger`.
    pub fn start(watches: &Watches, trigger: &Arc<Notify>, pod_source: PodSource) -> Self {
        let client = watches.client();
        let app = format!(
            "{}={}",
            fleetmirror_core::naming::LABEL_APP,
            fleetmirror_core::naming::APP_VCLUSTER
        );
        let mut names: Vec<&'static str> = ControlPlaneStores::WATCHES.to_vec();
        let workloads = ControlPlaneStores::start(watches, trigger);
        let svc_selectors = [
            app.clone(),
            fleetmirror_core::naming::LABEL_MANAGED_BY.into(),
            fleetmirror_core::naming::LABEL_BELONGS_TO.into(),
        ];
        let services = svc_selectors
            .iter()
            .zip(SERVICE_WATCHES)
            .map(|(sel, name)| {
                names.push(name);
                watches.store(
                    Api::<Service>::all(client.clone()),
                    watcher::Config::default().labels(sel),
                    trim_service,
                    trigger,
                    name,
                )
            })
            .collect();
        names.push("vclusterhealths");
        let vchs = watches.store(
            Api::<VClusterHealth>::all(client.clone()),
            watcher::Config::default(),
            trim_managed_fields,
            trigger,
            "vclusterhealths",
        );
        let (pods, nodes) = match pod_source {
            // Not in `names`: scores never read Node objects, so a failing Node watch only
            // pauses forgetting deleted nodes (and shows on /readyz), it freezes no status.
            PodSource::Agents => (
                vec![],
                Some(watches.metadata_store::<Node>(watcher::Config::default(), trigger, "nodes")),
            ),
            PodSource::Api => {
                let selectors = [fleetmirror_core::naming::LABEL_MANAGED_BY.to_owned(), app];
                let pods = selectors
                    .iter()
                    .zip(POD_WATCHES)
                    .map(|(sel, name)| {
                        names.push(name);
                        watches.store(
                            Api::<Pod>::all(client.clone()),
                            watcher::Config::default().labels(sel),
                            trim_pod,
                            trigger,
                            name,
                        )
                    })
                    .collect();
                (pods, None)
            }
        };
        Inputs {
            workloads,
            services,
            vchs,
            pods,
            nodes,
            names,
        }
    }

    /// Resolves once every watch listed everything.
    pub async fn wait_until_ready(&self) -> Result<(), reflector::store::WriterDropped> {
        self.workloads.wait_until_ready().await?;
        self.vchs.wait_until_ready().await?;
        for s in &self.services {
            s.wait_until_ready().await?;
        }
        for s in &self.pods {
            s.wait_until_ready().await?;
        }
        // (Not the Node watch: scoring does not wait for what only forgetting needs.)
        Ok(())
    }

    /// The names of the Node objects that exist (agent mode), once the Node watch has listed
    /// them: `None` while it has not (forgetting waits).
    pub fn node_names(&self) -> Option<BTreeSet<String>> {
        use futures::FutureExt;
        let store = self.nodes.as_ref()?;
        store.wait_until_ready().now_or_never()?.ok()?;
        Some(store.state().iter().map(|n| n.name_any()).collect())
    }
}

/// Everything one recompute reads, collected once.
pub(super) struct Facts {
    workloads: Vec<(String, BTreeMap<String, String>)>,
    services: Vec<Arc<Service>>,
    pods: Vec<PodFact>,
    /// Nodes that reported (agent mode) or run vCluster pods (API mode).
    pub nodes: BTreeSet<String>,
    /// Agent mode: nodes whose agent is not silent past the grace period.
    pub fresh_nodes: usize,
    /// (namespace, vCluster) → (mounted, expected) mounts.
    coverage: HashMap<(String, String), (u32, u32)>,
    /// (namespace, vCluster) → pods seen.
    pods_seen: HashMap<(String, String), u32>,
    /// (namespace, vCluster) with pods on a stale node.
    stale: BTreeSet<(String, String)>,
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

/// Every vCluster `selection` covers, scored.
pub(super) fn score_all(facts: &Facts, selection: &Selection) -> Vec<ScoredVCluster> {
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
            ScoredVCluster {
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

/// Everything one recompute reads, as of `at` (staleness is judged then).
pub(super) fn collect(
    inputs: &Inputs,
    index: &FleetIndex,
    pod_source: PodSource,
    at: Instant,
) -> Facts {
    let (workloads, services, pod_stores) = (&inputs.workloads, &inputs.services, &inputs.pods);
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
        fresh_nodes: 0,
        coverage: HashMap::new(),
        pods_seen: HashMap::new(),
        stale: BTreeSet::new(),
    };
    match pod_source {
        PodSource::Agents => {
            let mut a = index.agent_facts(at);
            facts.nodes = a.nodes;
            facts.fresh_nodes = a.fresh_nodes;
            // Aggregate per (namespace, vCluster) after sorting: one key per vCluster,
            // not one per pod, and the facts are moved, not cloned.
            a.pods.sort_unstable_by(|x, y| {
                (&x.fact.namespace, &x.fact.vcluster).cmp(&(&y.fact.namespace, &y.fact.vcluster))
            });
            let mut group: Option<Group> = None;
            facts.pods.reserve(a.pods.len());
            for p in a.pods {
                let same = group
                    .as_ref()
                    .is_some_and(|g| *g.key.0 == *p.fact.namespace && *g.key.1 == *p.fact.vcluster);
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
                g.stale |= p.fact.stale;
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
            stale: false,
        }),
        PodClass::ControlPlane { vcluster } => Some(PodFact {
            namespace,
            vcluster: vcluster.into(),
            control_plane: true,
            running_ready,
            virtual_namespace: "".into(),
            stale: false,
        }),
        PodClass::Other => None,
    }
}
