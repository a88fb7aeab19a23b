//! The `fleetmirror.io/v1alpha1` custom resources owned by the aggregator. The CRD manifests
//! under `deploy/crds/` and `charts/fleetmirror/crds/` are generated from these types; a test
//! fails when they drift (`FLEETMIRROR_BLESS=1` rewrites them).
//!
//! `VClusterHealth` keeps vcluster-health-mirror's spec field names and defaults, so its users
//! migrate by changing `apiVersion`; the status adds what it lacked (mount coverage, stale pod
//! facts, `lastUpdated`, conditions with `observedGeneration`).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Scores every vCluster that `namespace` selects.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "fleetmirror.io",
    version = "v1alpha1",
    kind = "VClusterHealth",
    plural = "vclusterhealths",
    shortname = "vch",
    namespaced,
    status = "VClusterHealthStatus",
    printcolumn = r#"{"name":"TargetNS","type":"string","jsonPath":".spec.namespace"}"#,
    printcolumn = r#"{"name":"VClusters","type":"integer","jsonPath":".status.summary.total"}"#,
    printcolumn = r#"{"name":"Full","type":"integer","jsonPath":".status.summary.full"}"#,
    printcolumn = r#"{"name":"Partial","type":"integer","jsonPath":".status.summary.partial"}"#,
    printcolumn = r#"{"name":"None","type":"integer","jsonPath":".status.summary.none"}"#,
    printcolumn = r#"{"name":"LowestScore","type":"integer","jsonPath":".status.summary.lowestScore"}"#,
    printcolumn = r#"{"name":"LastUpdated","type":"date","jsonPath":".status.lastUpdated"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct VClusterHealthSpec {
    /// Host namespace(s) to score: unset or "" means `vcluster`, "*" or "all" means every
    /// namespace, anything else is that one namespace.
    // (No schema default: a 1.20 API server turns an empty-string default into null.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Upper bound on the staleness of the status, in seconds; unset or ≤ 0 means 30. Changes
    /// are picked up sooner: this is not the only trigger.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_seconds: Option<i64>,
}

/// What the aggregator found.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VClusterHealthStatus {
    /// The vClusters found, with their API Service.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clusters: Vec<ClusterRef>,
    /// One entry per vCluster, sorted by namespace then name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sync_coverage: Vec<SyncCoverage>,
    /// Counts over `syncCoverage`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<Summary>,
    /// When the aggregator last wrote this status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_updated: Option<Time>,
    /// The generation of the spec this status was computed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` (the selection was scored) and `AgentsReporting` (no reporting node is silent).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// A vCluster and its API Service.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterRef {
    /// The vCluster's name (label `release` of its control plane).
    pub name: String,
    /// Its host namespace.
    pub namespace: String,
    /// Its API Service (`<name>`).
    pub service_name: String,
    /// 443 when the Service has no ports or has port 443, else its first port.
    pub service_port: i32,
}

/// The six signals, score and level of one vCluster.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SyncCoverage {
    /// The vCluster's name.
    pub cluster_name: String,
    /// Its host namespace.
    pub namespace: String,
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
    /// A synced pod from another virtual namespace exists.
    pub tenant_workload_sync: bool,
    /// systemWorkloadSync || tenantWorkloadSync.
    pub workload_sync: bool,
    /// points * 100 / 6 (integer division).
    pub score: i32,
    /// Full (6/6), Partial (1–5) or None (0).
    pub level: String,
    /// When the signals were last computed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_checked: Option<Time>,
    /// Pod-directory mounts made by the agents, e.g. "4/4".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount_coverage: Option<String>,
    /// A node that reported this vCluster's pods went silent: pod facts may be out of date.
    #[serde(default)]
    pub pods_stale: bool,
    /// Why signals are false, in words.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// Counts over all scored vClusters.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    /// vClusters scored.
    pub total: i32,
    /// At level Full.
    pub full: i32,
    /// At level Partial.
    pub partial: i32,
    /// At level None.
    pub none: i32,
    /// The lowest score (100 when there are no vClusters).
    pub lowest_score: i32,
}

/// Every CRD the aggregator owns, in the order they are written to `deploy/crds/`.
pub fn crds()
-> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>
{
    use kube::CustomResourceExt;
    vec![VClusterHealth::crd()]
}
