//! The `status` of an Integration and of an IntegrationTarget (integrations.md "Status"), and
//! the pure steps that build them: a cluster's entry from a check or from why it could not be
//! checked ([`Unchecked`]), the whole status from the roll-up ([`integration_status`]), the
//! Events a new status calls for judged against the one in the API ([`cluster_events`]), and
//! whether a write is due ([`same_but_time`]).

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::cluster::{ClusterCheck, Component};
use super::component::State;
use super::rollup::{ClusterState, ClusterVerdict, NotChecked, Rollup, rollup};
use crate::status::{Condition, ConditionStatus, Event, Time, set_condition};

/// At most this many components per cluster in the status (failing first).
pub const MAX_COMPONENTS: usize = 50;
/// With more clusters than this, only non-Healthy clusters list their components.
pub const MAX_CLUSTERS_WITH_COMPONENTS: usize = 100;
/// At most this many Events per status write.
pub const MAX_EVENTS: usize = 10;
/// The longest `<detail>` of an Unreachable or CheckFailed message.
pub const MAX_DETAIL: usize = 256;

/// `status.summary`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct SummaryStatus {
    /// Every cluster.
    pub total: u32,
    /// Healthy and Degraded clusters.
    pub healthy: u32,
    /// Degraded clusters.
    pub degraded: u32,
    /// Unhealthy clusters.
    pub unhealthy: u32,
    /// Clusters that could not be checked.
    pub unreachable: u32,
    /// Clusters not checked yet.
    pub pending: u32,
}

/// One component in a cluster's entry.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct ComponentStatus {
    /// Object name.
    pub name: String,
    /// `Deployment`, `StatefulSet`, `DaemonSet`, `Endpoints`, `Prometheus`, `Alertmanager`.
    pub kind: String,
    /// Its namespace.
    pub namespace: String,
    /// Whether its failure makes the cluster Unhealthy (else Degraded).
    pub required: bool,
    /// `Healthy`, `Degraded`, `Unhealthy`, `Missing`.
    pub state: String,
    /// Available replicas (pods for a DaemonSet).
    pub available: i64,
    /// Desired replicas.
    pub desired: i64,
    /// What was found, in words.
    pub message: String,
}

impl From<&Component> for ComponentStatus {
    fn from(c: &Component) -> Self {
        ComponentStatus {
            name: c.name.clone(),
            kind: c.kind.into(),
            namespace: c.namespace.clone(),
            required: c.required,
            state: c.state.as_str().into(),
            available: c.available,
            desired: c.desired,
            message: c.message.clone(),
        }
    }
}

/// One cluster's entry in `status.clusterStatuses`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterStatus {
    /// The clusterName.
    pub name: String,
    /// The IntegrationTarget's object name (absent when none was found).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub target: String,
    /// Whether its API server answered.
    pub connected: bool,
    /// Healthy or Degraded.
    pub healthy: bool,
    /// `Healthy`, `Degraded`, `Unhealthy`, `Unreachable`, `Pending`.
    pub state: String,
    /// Why, in CamelCase.
    pub reason: String,
    /// What was found, in words.
    pub message: String,
    /// The last answer from its API server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<Time>,
    /// When it was last checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_checked: Option<Time>,
    /// Its components (at most 50, failing first).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub components: Vec<ComponentStatus>,
    /// Components left out of `components`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub components_omitted: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// `Integration.status`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IntegrationStatus {
    /// `Initializing`, `Running`, `Failed`, `Disabled`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// The first failing cluster's message, or why nothing was checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// `<healthy>/<total>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy_clusters: Option<String>,
    /// Cluster counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<SummaryStatus>,
    /// When the round this status shows ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reconcile_time: Option<Time>,
    /// The generation that round used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Degraded`, `AutoInstall`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// One entry per cluster, in the Integration's order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cluster_statuses: Vec<ClusterStatus>,
}

/// `IntegrationTarget.status`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IntegrationTargetStatus {
    /// Whether the target can be checked.
    #[serde(default)]
    pub ready: bool,
    /// Why not, or that it is connected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// `gitVersion` of `GET /version`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_version: Option<String>,
    /// The URL used (never credentials).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// The last successful connection test.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync_time: Option<Time>,
    /// The generation the last test used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// Why a cluster could not be checked (state Unreachable).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unchecked {
    /// No IntegrationTarget has that clusterName (or name).
    TargetNotFound,
    /// The target has no client (a Secret or kubeconfig problem): its `status.message`.
    TargetNotReady(String),
    /// Refused, reset, DNS, TLS, connect timeout, no answer, HTTP 5xx.
    Unreachable(String),
    /// HTTP 401.
    Unauthorized,
    /// HTTP 403 of `verb` `resource`.
    Forbidden {
        /// `get` or `list`.
        verb: String,
        /// e.g. `deployments.apps`.
        resource: String,
    },
    /// Another HTTP error or an undecodable answer.
    CheckFailed(String),
}

/// `detail` cut to [`MAX_DETAIL`] characters.
pub fn bounded(detail: &str) -> String {
    if detail.chars().count() <= MAX_DETAIL {
        return detail.to_owned();
    }
    let mut s: String = detail.chars().take(MAX_DETAIL - 3).collect();
    s.push_str("...");
    s
}

impl Unchecked {
    /// `reason` of the cluster's entry.
    pub fn reason(&self) -> &'static str {
        match self {
            Unchecked::TargetNotFound => "TargetNotFound",
            Unchecked::TargetNotReady(_) => "TargetNotReady",
            Unchecked::Unreachable(_) => "Unreachable",
            Unchecked::Unauthorized => "Unauthorized",
            Unchecked::Forbidden { .. } => "Forbidden",
            Unchecked::CheckFailed(_) => "CheckFailed",
        }
    }

    /// Whether the cluster's API server answered.
    pub fn connected(&self) -> bool {
        matches!(
            self,
            Unchecked::Unauthorized | Unchecked::Forbidden { .. } | Unchecked::CheckFailed(_)
        )
    }

    /// The exact message for `cluster`, an Integration in `integration_ns` checking `check_ns`.
    pub fn message(&self, cluster: &str, integration_ns: &str, check_ns: &str) -> String {
        match self {
            Unchecked::TargetNotFound => format!(
                "failed to get cluster config for {cluster}: no IntegrationTarget with clusterName {cluster} in namespace {integration_ns}"
            ),
            Unchecked::TargetNotReady(m) => {
                format!("failed to get cluster config for {cluster}: {m}")
            }
            Unchecked::Unreachable(d) => {
                format!("cluster {cluster} is unreachable: {}", bounded(d))
            }
            Unchecked::Unauthorized => {
                format!("cluster {cluster} rejected the credentials (HTTP 401)")
            }
            Unchecked::Forbidden { verb, resource } => format!(
                "cluster {cluster} forbids {verb} {resource} in namespace {check_ns} (HTTP 403): apply deploy/target-cluster-rbac.yaml there"
            ),
            Unchecked::CheckFailed(d) => format!("checking {cluster} failed: {}", bounded(d)),
        }
    }
}

/// What is known of one cluster of an Integration now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Not checked yet.
    Pending,
    /// Checked.
    Checked(ClusterCheck),
    /// Could not be checked.
    Unchecked(Unchecked),
}

/// One cluster of an Integration, as the status is built from it.
#[derive(Debug, Clone)]
pub struct ClusterInput<'a> {
    /// The clusterName.
    pub name: &'a str,
    /// The target's object name (empty when not found).
    pub target: &'a str,
    /// The last result.
    pub outcome: &'a Outcome,
    /// The last answer of its API server.
    pub last_seen: Option<Time>,
    /// When it was last checked.
    pub last_checked: Option<Time>,
}

fn state_of(o: &Outcome) -> ClusterState {
    match o {
        Outcome::Pending => ClusterState::Pending,
        Outcome::Checked(c) => c.state,
        Outcome::Unchecked(_) => ClusterState::Unreachable,
    }
}

/// The components of an entry: failing first, at most [`MAX_COMPONENTS`]; the count left out.
fn components(all: &[Component], list: bool) -> (Vec<ComponentStatus>, u32) {
    if !list {
        return (Vec::new(), all.len() as u32);
    }
    let mut order: Vec<&Component> = all.iter().collect();
    // Stable: the type's order within failing and healthy ones.
    order.sort_by_key(|c| c.state == State::Healthy);
    let shown: Vec<ComponentStatus> = order
        .iter()
        .take(MAX_COMPONENTS)
        .map(|c| ComponentStatus::from(*c))
        .collect();
    let omitted = all.len().saturating_sub(shown.len()) as u32;
    (shown, omitted)
}

/// A cluster's entry.
pub fn cluster_status(
    c: &ClusterInput<'_>,
    integration_ns: &str,
    check_ns: &str,
    list_healthy_components: bool,
) -> ClusterStatus {
    let state = state_of(c.outcome);
    let (connected, reason, message, (components, components_omitted)) = match c.outcome {
        Outcome::Pending => (
            false,
            "Pending",
            format!("{} has not been checked yet", c.name),
            (Vec::new(), 0),
        ),
        Outcome::Checked(check) => (
            true,
            check.reason,
            check.message.clone(),
            components(
                &check.components,
                list_healthy_components || check.state != ClusterState::Healthy,
            ),
        ),
        Outcome::Unchecked(u) => (
            u.connected(),
            u.reason(),
            u.message(c.name, integration_ns, check_ns),
            (Vec::new(), 0),
        ),
    };
    ClusterStatus {
        name: c.name.to_owned(),
        target: c.target.to_owned(),
        connected,
        healthy: state.healthy(),
        state: state.as_str().into(),
        reason: reason.into(),
        message,
        last_seen: c.last_seen,
        last_checked: c.last_checked,
        components,
        components_omitted,
    }
}

/// What an Integration's status is built from.
#[derive(Debug, Clone)]
pub struct StatusInput<'a> {
    /// The Integration's namespace.
    pub namespace: &'a str,
    /// Its generation.
    pub generation: Option<i64>,
    /// The namespace checked on the clusters (the config's, or the type's default).
    pub check_namespace: &'a str,
    /// Why nothing is checked, if so.
    pub not_checked: Option<&'a NotChecked>,
    /// `autoInstall.enabled: true`.
    pub auto_install: bool,
    /// The tool's type, for the AutoInstall message.
    pub type_name: &'a str,
    /// Its clusters, in order.
    pub clusters: &'a [ClusterInput<'a>],
}

/// The whole status at `now`, keeping `old`'s condition transition times where unchanged.
pub fn integration_status(
    input: &StatusInput<'_>,
    old: &IntegrationStatus,
    now: Time,
) -> (IntegrationStatus, Rollup) {
    let verdicts: Vec<ClusterVerdict> = input
        .clusters
        .iter()
        .map(|c| {
            let entry = cluster_status(c, input.namespace, input.check_namespace, true);
            ClusterVerdict {
                name: c.name.to_owned(),
                state: state_of(c.outcome),
                message: entry.message,
            }
        })
        .collect();
    let r = rollup(input.namespace, &verdicts, input.not_checked);
    let g = input.generation;
    let cond = |t: &str, (status, reason, message): &(&'static str, &'static str, String)| {
        let s = match *status {
            "True" => ConditionStatus::True,
            "False" => ConditionStatus::False,
            _ => ConditionStatus::Unknown,
        };
        set_condition(&old.conditions, t, s, reason, message.clone(), g, now)
    };
    let mut conditions = vec![cond("Ready", &r.ready)];
    if let Some(d) = &r.degraded {
        conditions.push(cond("Degraded", d));
    }
    if input.auto_install {
        conditions.push(cond(
            "AutoInstall",
            &(
                "False",
                "NotSupported",
                format!(
                    "fleetmirror does not install tools; install {} with your own tooling",
                    input.type_name
                ),
            ),
        ));
    }
    let checked = input.not_checked.is_none();
    let many = input.clusters.len() > MAX_CLUSTERS_WITH_COMPONENTS;
    let status = IntegrationStatus {
        phase: Some(r.phase.into()),
        message: Some(r.message.clone()),
        healthy_clusters: r.healthy_clusters.clone(),
        summary: r.summary.map(|s| SummaryStatus {
            total: s.total,
            healthy: s.healthy,
            degraded: s.degraded,
            unhealthy: s.unhealthy,
            unreachable: s.unreachable,
            pending: s.pending,
        }),
        last_reconcile_time: Some(now),
        observed_generation: g,
        conditions,
        cluster_statuses: if checked {
            input
                .clusters
                .iter()
                .map(|c| cluster_status(c, input.namespace, input.check_namespace, !many))
                .collect()
        } else {
            Vec::new()
        },
    };
    (status, r)
}

/// `status` with every timestamp cleared (what "changed" compares).
fn timeless(s: &IntegrationStatus) -> IntegrationStatus {
    let mut s = s.clone();
    s.last_reconcile_time = None;
    for c in &mut s.conditions {
        c.last_transition_time = Time(jiff::Timestamp::UNIX_EPOCH);
    }
    for c in &mut s.cluster_statuses {
        c.last_seen = None;
        c.last_checked = None;
    }
    s
}

/// True when `a` and `b` differ only in timestamps.
pub fn same_but_time(a: &IntegrationStatus, b: &IntegrationStatus) -> bool {
    timeless(a) == timeless(b)
}

/// The Events `new` calls for against `old` (the status in the API, so a restart repeats
/// none): `ClusterUnhealthy` when a cluster enters Unhealthy or Unreachable (a first check
/// included), `ClusterRecovered` when it leaves them for Healthy or Degraded; at most
/// [`MAX_EVENTS`].
pub fn cluster_events(old: &IntegrationStatus, new: &IntegrationStatus) -> Vec<Event> {
    let before: BTreeMap<&str, &str> = old
        .cluster_statuses
        .iter()
        .map(|c| (c.name.as_str(), c.state.as_str()))
        .collect();
    let bad = |s: &str| matches!(s, "Unhealthy" | "Unreachable");
    let good = |s: &str| matches!(s, "Healthy" | "Degraded");
    let mut out = Vec::new();
    for c in &new.cluster_statuses {
        let was = before.get(c.name.as_str()).copied();
        if bad(&c.state) && !was.is_some_and(bad) {
            out.push(Event {
                warning: true,
                reason: "ClusterUnhealthy",
                note: c.message.clone(),
            });
        } else if good(&c.state) && was.is_some_and(bad) {
            out.push(Event {
                warning: false,
                reason: "ClusterRecovered",
                note: c.message.clone(),
            });
        }
    }
    out.truncate(MAX_EVENTS);
    out
}

/// A target's connection state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetState {
    /// Not probed yet (a client exists).
    Unprobed,
    /// `(reason, status.message)` of a failing step.
    Failed(&'static str, String),
    /// Connected: the server URL and its version.
    Ready {
        /// The URL.
        server: String,
        /// `gitVersion`.
        version: String,
    },
}

/// A target's status at `now` (`last_sync` carried over unless it connected now).
pub fn target_status(
    state: &TargetState,
    old: &IntegrationTargetStatus,
    generation: Option<i64>,
    now: Time,
) -> Option<IntegrationTargetStatus> {
    let (ready, reason, message, cond_message) = match state {
        TargetState::Unprobed => return None,
        TargetState::Failed(reason, m) => (false, *reason, m.clone(), m.clone()),
        TargetState::Ready { .. } => (
            true,
            "ClusterReady",
            "Target cluster is connected and ready".to_owned(),
            "Successfully connected to target cluster".to_owned(),
        ),
    };
    let (server, version, last_sync) = match state {
        TargetState::Ready { server, version } => {
            (Some(server.clone()), Some(version.clone()), Some(now))
        }
        _ => (
            old.server.clone(),
            old.server_version.clone(),
            old.last_sync_time,
        ),
    };
    Some(IntegrationTargetStatus {
        ready,
        message: Some(message),
        server_version: version,
        server,
        last_sync_time: last_sync,
        observed_generation: generation,
        conditions: vec![set_condition(
            &old.conditions,
            "Ready",
            ConditionStatus::from_bool(ready),
            reason,
            cond_message,
            generation,
            now,
        )],
    })
}

/// True when two target statuses differ only in timestamps.
pub fn target_same_but_time(a: &IntegrationTargetStatus, b: &IntegrationTargetStatus) -> bool {
    let clear = |s: &IntegrationTargetStatus| {
        let mut s = s.clone();
        s.last_sync_time = None;
        for c in &mut s.conditions {
            c.last_transition_time = Time(jiff::Timestamp::UNIX_EPOCH);
        }
        s
    };
    clear(a) == clear(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(state: ClusterState, message: &str, n: usize) -> Outcome {
        Outcome::Checked(ClusterCheck {
            state,
            reason: match state {
                ClusterState::Healthy => "Healthy",
                ClusterState::Degraded => "Degraded",
                _ => "ComponentsUnhealthy",
            },
            message: message.into(),
            components: (0..n)
                .map(|i| Component {
                    name: format!("d{i:03}"),
                    kind: "Deployment",
                    namespace: "ns".into(),
                    required: true,
                    state: if i % 2 == 0 {
                        State::Healthy
                    } else {
                        State::Unhealthy
                    },
                    available: 0,
                    desired: 1,
                    message: String::new(),
                })
                .collect(),
        })
    }

    fn input<'a>(clusters: &'a [ClusterInput<'a>]) -> StatusInput<'a> {
        StatusInput {
            namespace: "ops",
            generation: Some(2),
            check_namespace: "argocd",
            not_checked: None,
            auto_install: false,
            type_name: "argocd",
            clusters,
        }
    }

    #[test]
    fn unchecked_messages_are_exact() {
        let m = |u: Unchecked| u.message("east", "ops", "argocd");
        assert_eq!(
            m(Unchecked::TargetNotFound),
            "failed to get cluster config for east: no IntegrationTarget with clusterName east in namespace ops"
        );
        assert_eq!(
            m(Unchecked::TargetNotReady(
                "Kubeconfig secret east-kubeconfig not found".into()
            )),
            "failed to get cluster config for east: Kubeconfig secret east-kubeconfig not found"
        );
        assert_eq!(
            m(Unchecked::Unreachable("connection refused".into())),
            "cluster east is unreachable: connection refused"
        );
        assert_eq!(
            m(Unchecked::Unauthorized),
            "cluster east rejected the credentials (HTTP 401)"
        );
        assert_eq!(
            m(Unchecked::Forbidden {
                verb: "get".into(),
                resource: "deployments.apps".into()
            }),
            "cluster east forbids get deployments.apps in namespace argocd (HTTP 403): apply deploy/target-cluster-rbac.yaml there"
        );
        let long = m(Unchecked::CheckFailed("x".repeat(1000)));
        assert_eq!(long.len(), "checking east failed: ".len() + MAX_DETAIL);
        assert!(!Unchecked::Unreachable(String::new()).connected());
        assert!(Unchecked::Unauthorized.connected());
    }

    #[test]
    fn status_from_clusters_and_events_against_the_old_one() {
        let (a, b) = (
            check(
                ClusterState::Unhealthy,
                "ArgoCD server has 0 available replicas on a",
                3,
            ),
            check(ClusterState::Healthy, "ArgoCD is healthy on b", 2),
        );
        let clusters = [
            ClusterInput {
                name: "a",
                target: "a",
                outcome: &a,
                last_seen: None,
                last_checked: None,
            },
            ClusterInput {
                name: "b",
                target: "tb",
                outcome: &b,
                last_seen: None,
                last_checked: None,
            },
        ];
        let t0 = Time(jiff::Timestamp::from_second(1_000_000).unwrap());
        let (s, r) = integration_status(&input(&clusters), &IntegrationStatus::default(), t0);
        assert_eq!(r.phase, "Failed");
        assert_eq!(
            s.message.as_deref(),
            Some("ArgoCD server has 0 available replicas on a")
        );
        assert_eq!(s.healthy_clusters.as_deref(), Some("1/2"));
        assert_eq!(
            s.cluster_statuses[0].components[0].state, "Unhealthy",
            "failing first"
        );
        assert_eq!(s.cluster_statuses[1].target, "tb");
        let ev = cluster_events(&IntegrationStatus::default(), &s);
        assert_eq!(
            ev.iter().map(|e| e.reason).collect::<Vec<_>>(),
            ["ClusterUnhealthy"],
            "a first check counts"
        );
        assert!(
            cluster_events(&s, &s).is_empty(),
            "a restart repeats nothing"
        );
        // a recovers: Running, one ClusterRecovered; the Ready transition moves, Degraded's not.
        let a2 = check(ClusterState::Healthy, "ArgoCD is healthy on a", 1);
        let clusters2 = [
            ClusterInput {
                name: "a",
                target: "a",
                outcome: &a2,
                last_seen: None,
                last_checked: None,
            },
            clusters[1].clone(),
        ];
        let t1 = t0.plus_secs(30);
        let (s2, r2) = integration_status(&input(&clusters2), &s, t1);
        assert_eq!(
            (r2.phase, s2.message.as_deref()),
            ("Running", Some("Integration is running"))
        );
        assert_eq!(
            cluster_events(&s, &s2)
                .iter()
                .map(|e| e.reason)
                .collect::<Vec<_>>(),
            ["ClusterRecovered"]
        );
        let ready = crate::status::find(&s2.conditions, "Ready").unwrap();
        assert_eq!(
            (
                ready.status.as_str(),
                ready.reason.as_str(),
                ready.last_transition_time
            ),
            ("True", "ReconcileSucceeded", t1)
        );
        assert_eq!(
            crate::status::find(&s2.conditions, "Degraded")
                .unwrap()
                .last_transition_time,
            t0
        );
        // Only the times moved: not a change.
        let (s3, _) = integration_status(&input(&clusters2), &s2, t1.plus_secs(30));
        assert!(same_but_time(&s2, &s3));
        assert!(!same_but_time(&s, &s2));
    }

    #[test]
    fn components_are_bounded_and_omitted_for_big_fleets() {
        let big = check(ClusterState::Unhealthy, "m", 120);
        let c = ClusterInput {
            name: "a",
            target: "a",
            outcome: &big,
            last_seen: None,
            last_checked: None,
        };
        let e = cluster_status(&c, "ops", "ns", true);
        assert_eq!(
            (e.components.len(), e.components_omitted),
            (MAX_COMPONENTS, 70)
        );
        assert!(
            e.components.iter().all(|c| c.state == "Unhealthy"),
            "failing first"
        );
        let healthy = check(ClusterState::Healthy, "ok", 4);
        let c = ClusterInput {
            name: "h",
            target: "h",
            outcome: &healthy,
            last_seen: None,
            last_checked: None,
        };
        let e = cluster_status(&c, "ops", "ns", false);
        assert_eq!((e.components.len(), e.components_omitted), (0, 4));
    }

    #[test]
    fn disabled_and_auto_install() {
        let mut i = input(&[]);
        i.not_checked = Some(&NotChecked::Disabled);
        i.auto_install = true;
        let (s, _) = integration_status(&i, &IntegrationStatus::default(), Time::now());
        assert_eq!(s.phase.as_deref(), Some("Disabled"));
        assert!(
            s.summary.is_none() && s.healthy_clusters.is_none() && s.cluster_statuses.is_empty()
        );
        let ai = crate::status::find(&s.conditions, "AutoInstall").unwrap();
        assert_eq!(
            ai.message,
            "fleetmirror does not install tools; install argocd with your own tooling"
        );
    }

    #[test]
    fn target_statuses() {
        let t0 = Time(jiff::Timestamp::from_second(1_000_000).unwrap());
        let ok = TargetState::Ready {
            server: "https://10.0.0.1:6443".into(),
            version: "v1.20.15".into(),
        };
        let s = target_status(&ok, &IntegrationTargetStatus::default(), Some(1), t0).unwrap();
        assert!(s.ready);
        assert_eq!(
            s.message.as_deref(),
            Some("Target cluster is connected and ready")
        );
        assert_eq!(
            s.conditions[0].message,
            "Successfully connected to target cluster"
        );
        let failed = TargetState::Failed(
            "ConnectionFailed",
            "Connection test failed: failed to sync cluster: connection refused".into(),
        );
        let f = target_status(&failed, &s, Some(1), t0.plus_secs(60)).unwrap();
        assert!(!f.ready);
        assert_eq!(
            (f.conditions[0].reason.as_str(), f.last_sync_time),
            ("ConnectionFailed", Some(t0)),
            "the last success is kept"
        );
        assert!(target_status(&TargetState::Unprobed, &s, Some(1), t0).is_none());
        let s2 = target_status(&ok, &s, Some(1), t0.plus_secs(60)).unwrap();
        assert!(target_same_but_time(&s, &s2));
    }
}
