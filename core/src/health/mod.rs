//! Fleet health scoring (health.md) as pure functions (what a status says of it is
//! [`status`]): which vClusters a selection covers, the
//! six signals of each, score, level, API Service port and the human message. The aggregator
//! feeds it from its watches and the agents' reports (or its own pod watch); both sources give
//! the same [`PodFact`]s, so they give the same signals.
//!
//! A vCluster is identified by (host namespace, name), never by name alone, and is the
//! control-plane workload vCluster's CLI finds: a StatefulSet or Deployment labelled
//! `app=vcluster`, named by its `release` label. Services labelled `app=vcluster` are not
//! vClusters (0.1x `-lb` services and tenant services synced with their labels would be
//! phantoms). Names are matched exactly, never by substring.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::naming;

pub mod status;

/// Which host namespaces a `VClusterHealth` selects (`spec.namespace`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// Every namespace (`*` or `all`).
    All,
    /// One namespace (unset or `""` means `vcluster`).
    Namespace(String),
}

impl Selection {
    /// Parses `spec.namespace`.
    pub fn from_spec(namespace: Option<&str>) -> Selection {
        match namespace.map(str::trim) {
            None | Some("") => Selection::Namespace("vcluster".into()),
            Some("*") | Some("all") => Selection::All,
            Some(ns) => Selection::Namespace(ns.into()),
        }
    }

    /// True when `namespace` is selected.
    pub fn matches(&self, namespace: &str) -> bool {
        match self {
            Selection::All => true,
            Selection::Namespace(ns) => ns == namespace,
        }
    }
}

/// A vCluster: (host namespace, name).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VClusterKey {
    /// Host namespace of the control plane.
    pub namespace: String,
    /// Label `release` of the control plane.
    pub name: String,
}

/// A control-plane workload (StatefulSet or Deployment).
#[derive(Debug, Clone)]
pub struct Workload<'a> {
    /// Its namespace.
    pub namespace: &'a str,
    /// Its labels.
    pub labels: &'a BTreeMap<String, String>,
}

/// The vClusters among `workloads` that `selection` covers, sorted by namespace then name.
pub fn discover<'a>(
    selection: &Selection,
    workloads: impl IntoIterator<Item = Workload<'a>>,
) -> Vec<VClusterKey> {
    let keys: BTreeSet<VClusterKey> = workloads
        .into_iter()
        .filter(|w| {
            w.labels.get(naming::LABEL_APP).map(String::as_str) == Some(naming::APP_VCLUSTER)
        })
        .filter(|w| selection.matches(w.namespace))
        .filter_map(|w| {
            let name = w.labels.get(naming::LABEL_RELEASE)?;
            naming::validate_dns1123_label(name).ok()?;
            Some(VClusterKey {
                namespace: w.namespace.to_owned(),
                name: name.clone(),
            })
        })
        .collect();
    keys.into_iter().collect()
}

/// A Service, as scoring needs it.
#[derive(Debug, Clone)]
pub struct ServiceFact<'a> {
    /// Namespace.
    pub namespace: &'a str,
    /// Name.
    pub name: &'a str,
    /// Labels.
    pub labels: &'a BTreeMap<String, String>,
    /// Annotations.
    pub annotations: &'a BTreeMap<String, String>,
    /// `spec.clusterIP == "None"`.
    pub headless: bool,
    /// `spec.ports[].port`.
    pub ports: &'a [i32],
}

/// A vCluster-related pod, as scoring needs it (from an agent's report or the API).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodFact {
    /// Host namespace.
    pub namespace: Arc<str>,
    /// The vCluster it belongs to (label `managed-by`, or `release` for control-plane pods).
    pub vcluster: Arc<str>,
    /// A control-plane pod (`app=vcluster`, `release=<vcluster>`).
    pub control_plane: bool,
    /// Phase Running and condition Ready.
    pub running_ready: bool,
    /// The virtual namespace of a synced pod ("" when unknown).
    pub virtual_namespace: Arc<str>,
    /// Reported by a node whose agent went silent: shown, never counted (a stale pod never
    /// turns a signal true).
    pub stale: bool,
}

/// The six signals of one vCluster.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Signals {
    /// The API Service exists and is not headless.
    pub api_sync: bool,
    /// A control-plane pod is Running and Ready.
    pub control_plane_ready: bool,
    /// The synced kube-dns Service exists.
    pub dns_sync: bool,
    /// A synced node Service exists.
    pub node_sync: bool,
    /// A synced pod from virtual namespace kube-system exists.
    pub system_workload_sync: bool,
    /// A synced pod from any other virtual namespace exists.
    pub tenant_workload_sync: bool,
}

/// Level of a vCluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// 0 of 6.
    None,
    /// 1 to 5 of 6.
    Partial,
    /// 6 of 6.
    Full,
}

impl Level {
    /// `None`, `Partial` or `Full`.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::None => "None",
            Level::Partial => "Partial",
            Level::Full => "Full",
        }
    }
}

impl Signals {
    fn all(&self) -> [(bool, &'static str); 6] {
        [
            (self.api_sync, "no API Service (or it is headless)"),
            (
                self.control_plane_ready,
                "no control-plane pod is Running and Ready",
            ),
            (self.dns_sync, "the synced kube-dns Service is missing"),
            (self.node_sync, "no synced node Service"),
            (
                self.system_workload_sync,
                "no synced pod from virtual namespace kube-system",
            ),
            (self.tenant_workload_sync, "no synced tenant pod"),
        ]
    }

    /// How many signals are true.
    pub fn points(&self) -> i32 {
        self.all().iter().filter(|(on, _)| *on).count() as i32
    }

    /// `points * 100 / 6`, integer division: 0, 16, 33, 50, 66, 83, 100.
    pub fn score(&self) -> i32 {
        self.points() * 100 / 6
    }

    /// Full at 6/6, Partial at 1–5, None at 0.
    pub fn level(&self) -> Level {
        match self.points() {
            0 => Level::None,
            6 => Level::Full,
            _ => Level::Partial,
        }
    }

    /// systemWorkloadSync || tenantWorkloadSync.
    pub fn workload_sync(&self) -> bool {
        self.system_workload_sync || self.tenant_workload_sync
    }

    /// Why signals are false, in words ("" when all are true).
    pub fn message(&self) -> String {
        self.all()
            .iter()
            .filter(|(on, _)| !*on)
            .map(|(_, why)| *why)
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// The six signals of `vc`, from the Services and pod facts of the cluster and the names of
/// the nodes known (for node Services named after nodes).
pub fn signals<'a>(
    vc: &VClusterKey,
    services: impl IntoIterator<Item = &'a ServiceFact<'a>> + Clone,
    pods: impl IntoIterator<Item = &'a PodFact>,
    nodes: &BTreeSet<String>,
) -> Signals {
    let here = |s: &&ServiceFact<'_>| s.namespace == vc.namespace;
    fn label<'s>(s: &ServiceFact<'s>, k: &str) -> Option<&'s str> {
        s.labels.get(k).map(String::as_str)
    }
    fn annotation<'s>(s: &ServiceFact<'s>, k: &str) -> Option<&'s str> {
        s.annotations.get(k).map(String::as_str)
    }
    let dns_name = naming::kube_dns_service_name(&vc.name);
    let node_names: BTreeSet<String> = nodes
        .iter()
        .map(|n| naming::node_service_name(&vc.name, n))
        .collect();

    let mut s = Signals::default();
    for svc in services.into_iter().filter(here) {
        if svc.name == vc.name && !svc.headless {
            s.api_sync = true;
        }
        if svc.name == dns_name
            || (label(svc, naming::LABEL_MANAGED_BY) == Some(vc.name.as_str())
                && annotation(svc, naming::ANNOTATION_OBJECT_NAME) == Some("kube-dns")
                && annotation(svc, naming::ANNOTATION_OBJECT_NAMESPACE) == Some("kube-system"))
        {
            s.dns_sync = true;
        }
        if label(svc, naming::LABEL_BELONGS_TO) == Some(vc.name.as_str())
            || node_names.contains(svc.name)
        {
            s.node_sync = true;
        }
    }
    for p in pods
        .into_iter()
        .filter(|p| !p.stale && *p.namespace == *vc.namespace && *p.vcluster == *vc.name)
    {
        if p.control_plane {
            s.control_plane_ready |= p.running_ready;
        } else if &*p.virtual_namespace == "kube-system" {
            s.system_workload_sync = true;
        } else {
            s.tenant_workload_sync = true;
        }
    }
    s
}

/// The API Service's port for `status.clusters[].servicePort`: 443 when it has no ports or a
/// 443 port, else its first port.
pub fn service_port(ports: &[i32]) -> i32 {
    if ports.is_empty() || ports.contains(&443) {
        443
    } else {
        ports[0]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn reference_arithmetic() {
        let mut s = Signals::default();
        assert_eq!((s.score(), s.level()), (0, Level::None));
        s.api_sync = true;
        s.control_plane_ready = true;
        s.dns_sync = true;
        assert_eq!((s.score(), s.level()), (50, Level::Partial));
        s.node_sync = true;
        s.system_workload_sync = true;
        assert_eq!((s.score(), s.level()), (83, Level::Partial));
        s.tenant_workload_sync = true;
        assert_eq!((s.score(), s.level()), (100, Level::Full));
        assert_eq!(s.message(), "");
        let scores: Vec<i32> = (0..=6).map(|p| p * 100 / 6).collect();
        assert_eq!(scores, [0, 16, 33, 50, 66, 83, 100]);
    }

    #[test]
    fn selection() {
        assert_eq!(
            Selection::from_spec(None),
            Selection::Namespace("vcluster".into())
        );
        assert_eq!(
            Selection::from_spec(Some("")),
            Selection::Namespace("vcluster".into())
        );
        assert_eq!(Selection::from_spec(Some("*")), Selection::All);
        assert_eq!(Selection::from_spec(Some("all")), Selection::All);
        assert!(Selection::from_spec(Some("team-a")).matches("team-a"));
        assert!(!Selection::from_spec(Some("team-a")).matches("team-b"));
    }

    #[test]
    fn discovery_uses_release_labels_of_workloads_only() {
        let vc = map(&[("app", "vcluster"), ("release", "vc")]);
        let other = map(&[("app", "web"), ("release", "web")]);
        let no_release = map(&[("app", "vcluster")]);
        let bad = map(&[("app", "vcluster"), ("release", "Bad_Name")]);
        let found = discover(
            &Selection::All,
            [
                Workload {
                    namespace: "b",
                    labels: &vc,
                },
                Workload {
                    namespace: "a",
                    labels: &vc,
                },
                Workload {
                    namespace: "a",
                    labels: &vc,
                },
                Workload {
                    namespace: "a",
                    labels: &other,
                },
                Workload {
                    namespace: "a",
                    labels: &no_release,
                },
                Workload {
                    namespace: "a",
                    labels: &bad,
                },
            ],
        );
        let keys: Vec<(&str, &str)> = found
            .iter()
            .map(|k| (k.namespace.as_str(), k.name.as_str()))
            .collect();
        assert_eq!(
            keys,
            [("a", "vc"), ("b", "vc")],
            "same name in two namespaces: two vClusters, sorted"
        );
        let only_b = discover(
            &Selection::Namespace("b".into()),
            [
                Workload {
                    namespace: "a",
                    labels: &vc,
                },
                Workload {
                    namespace: "b",
                    labels: &vc,
                },
            ],
        );
        assert_eq!(only_b.len(), 1);
    }

    struct Svc {
        ns: &'static str,
        name: String,
        labels: BTreeMap<String, String>,
        annotations: BTreeMap<String, String>,
        headless: bool,
    }

    fn svc(
        ns: &'static str,
        name: &str,
        labels: &[(&str, &str)],
        annotations: &[(&str, &str)],
    ) -> Svc {
        Svc {
            ns,
            name: name.into(),
            labels: map(labels),
            annotations: map(annotations),
            headless: false,
        }
    }

    fn facts(svcs: &[Svc]) -> Vec<ServiceFact<'_>> {
        svcs.iter()
            .map(|s| ServiceFact {
                namespace: s.ns,
                name: &s.name,
                labels: &s.labels,
                annotations: &s.annotations,
                headless: s.headless,
                ports: &[],
            })
            .collect()
    }

    fn pod(ns: &str, vc: &str, cp: bool, ready: bool, vns: &str) -> PodFact {
        PodFact {
            namespace: ns.into(),
            vcluster: vc.into(),
            control_plane: cp,
            running_ready: ready,
            virtual_namespace: vns.into(),
            stale: false,
        }
    }

    fn key(ns: &str, name: &str) -> VClusterKey {
        VClusterKey {
            namespace: ns.into(),
            name: name.into(),
        }
    }

    #[test]
    fn stale_pods_never_turn_a_signal_true() {
        let nodes = BTreeSet::new();
        let vc = key("a", "vc");
        let mut pods = vec![
            pod("a", "vc", true, true, ""),
            pod("a", "vc", false, true, "kube-system"),
            pod("a", "vc", false, true, "default"),
        ];
        let fresh = signals(&vc, std::iter::empty(), pods.iter(), &nodes);
        assert!(
            fresh.control_plane_ready && fresh.system_workload_sync && fresh.tenant_workload_sync
        );
        for p in &mut pods {
            p.stale = true;
        }
        assert_eq!(
            signals(&vc, std::iter::empty(), pods.iter(), &nodes),
            Signals::default()
        );
    }

    #[test]
    fn a_complete_footprint_is_full_and_each_piece_drops_its_signal() {
        let nodes: BTreeSet<String> = ["node-1".to_owned()].into();
        let svcs = vec![
            svc("a", "vc", &[("app", "vcluster"), ("release", "vc")], &[]),
            svc(
                "a",
                "kube-dns-x-kube-system-x-vc",
                &[("vcluster.loft.sh/managed-by", "vc")],
                &[],
            ),
            svc("a", "vc-node-node-1", &[], &[]),
        ];
        let pods = vec![
            pod("a", "vc", true, true, ""),
            pod("a", "vc", false, true, "kube-system"),
            pod("a", "vc", false, true, "default"),
        ];
        let full = signals(&key("a", "vc"), &facts(&svcs), &pods, &nodes);
        assert_eq!(full.level(), Level::Full);
        for i in 0..3 {
            let mut fewer = svcs
                .iter()
                .map(|s| Svc {
                    ns: s.ns,
                    name: s.name.clone(),
                    labels: s.labels.clone(),
                    annotations: s.annotations.clone(),
                    headless: s.headless,
                })
                .collect::<Vec<_>>();
            fewer.remove(i);
            assert_eq!(
                signals(&key("a", "vc"), &facts(&fewer), &pods, &nodes).points(),
                5,
                "service {i}"
            );
        }
        for i in 0..3 {
            let mut fewer = pods.clone();
            fewer.remove(i);
            assert_eq!(
                signals(&key("a", "vc"), &facts(&svcs), &fewer, &nodes).points(),
                5,
                "pod {i}"
            );
        }
        let not_ready = vec![
            pod("a", "vc", true, false, ""),
            pods[1].clone(),
            pods[2].clone(),
        ];
        assert!(!signals(&key("a", "vc"), &facts(&svcs), &not_ready, &nodes).control_plane_ready);
        let mut headless = svcs
            .iter()
            .map(|s| Svc {
                ns: s.ns,
                name: s.name.clone(),
                labels: s.labels.clone(),
                annotations: s.annotations.clone(),
                headless: s.headless,
            })
            .collect::<Vec<_>>();
        headless[0].headless = true;
        assert!(!signals(&key("a", "vc"), &facts(&headless), &pods, &nodes).api_sync);
    }

    #[test]
    fn only_system_workloads_is_partial_and_unknown_virtual_namespace_is_tenant() {
        let none = BTreeSet::new();
        let s = signals(
            &key("a", "vc"),
            &facts(&[]),
            &[pod("a", "vc", false, true, "kube-system")],
            &none,
        );
        assert!(s.system_workload_sync && !s.tenant_workload_sync);
        assert_eq!(s.level(), Level::Partial);
        assert!(s.message().contains("no synced tenant pod"));
        let s = signals(
            &key("a", "vc"),
            &facts(&[]),
            &[pod("a", "vc", false, true, "")],
            &none,
        );
        assert!(s.tenant_workload_sync);
    }

    #[test]
    fn no_substring_matches_and_namespaces_are_separate() {
        let nodes: BTreeSet<String> = ["node-1".to_owned()].into();
        // vc-prod's services and pods must give `vc` nothing.
        let svcs = vec![
            svc("a", "vc-prod", &[], &[]),
            svc(
                "a",
                "kube-dns-x-kube-system-x-vc-prod",
                &[("vcluster.loft.sh/managed-by", "vc-prod")],
                &[],
            ),
            svc(
                "a",
                "vc-prod-node-node-1",
                &[("vcluster.loft.sh/belongs-to", "vc-prod")],
                &[],
            ),
            // Same-named vCluster in another namespace.
            svc("b", "vc", &[], &[]),
            svc("b", "kube-dns-x-kube-system-x-vc", &[], &[]),
        ];
        let pods = vec![
            pod("a", "vc-prod", true, true, ""),
            pod("b", "vc", true, true, ""),
            pod("other", "vc", false, true, "default"),
        ];
        assert_eq!(
            signals(&key("a", "vc"), &facts(&svcs), &pods, &nodes),
            Signals::default()
        );
        let b = signals(&key("b", "vc"), &facts(&svcs), &pods, &nodes);
        assert!(
            b.api_sync && b.dns_sync && b.control_plane_ready && !b.tenant_workload_sync,
            "{b:?}"
        );
    }

    #[test]
    fn hashed_kube_dns_names_and_annotation_matching() {
        let vc = "team-platform-observability-staging-eu1"; // 39 characters: the name is hashed
        let hashed = naming::kube_dns_service_name(vc);
        assert_ne!(hashed, format!("kube-dns-x-kube-system-x-{vc}"));
        let none = BTreeSet::new();
        let svcs = vec![svc("a", &hashed, &[], &[])];
        assert!(signals(&key("a", vc), &facts(&svcs), &[], &none).dns_sync);
        let by_annotation = vec![svc(
            "a",
            "whatever",
            &[("vcluster.loft.sh/managed-by", vc)],
            &[
                ("vcluster.loft.sh/object-name", "kube-dns"),
                ("vcluster.loft.sh/object-namespace", "kube-system"),
            ],
        )];
        assert!(signals(&key("a", vc), &facts(&by_annotation), &[], &none).dns_sync);
    }

    #[test]
    fn service_ports() {
        assert_eq!(service_port(&[]), 443);
        assert_eq!(service_port(&[8443, 443]), 443);
        assert_eq!(service_port(&[8443, 9000]), 8443);
    }
}
