//! The `fleetmirror.io/v1alpha1` custom resources owned by the aggregator. The CRD manifests
//! under `deploy/crds/` and `charts/fleetmirror/crds/` are generated from these types; a test
//! fails when they drift (`FLEETMIRROR_BLESS=1` rewrites them).
//!
//! `VClusterHealth` keeps vcluster-health-mirror's spec field names and defaults, so its users
//! migrate by changing `apiVersion`; the status adds what it lacked (mount coverage, stale pod
//! facts, `lastUpdated`, conditions with `observedGeneration`). The status types live in
//! `fleetmirror_core::health::status`, next to the decisions that build them.

pub use fleetmirror_core::health::status::{
    ClusterRef, Summary, SyncCoverage, VClusterHealthStatus,
};

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
    status = "fleetmirror_core::health::status::VClusterHealthStatus",
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

/// The tool an Integration checks.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum IntegrationType {
    /// Argo CD.
    Argocd,
    /// Flux.
    Flux,
    /// Prometheus (the operator's resources, or selected workloads).
    Prometheus,
    /// Istio.
    Istio,
    /// Any Deployments, StatefulSets and DaemonSets a selector matches.
    Workloads,
}

impl IntegrationType {
    /// The core type.
    pub fn core(self) -> fleetmirror_core::integrations::config::Type {
        use fleetmirror_core::integrations::config::Type;
        match self {
            IntegrationType::Argocd => Type::ArgoCd,
            IntegrationType::Flux => Type::Flux,
            IntegrationType::Prometheus => Type::Prometheus,
            IntegrationType::Istio => Type::Istio,
            IntegrationType::Workloads => Type::Workloads,
        }
    }
}

fn default_true() -> bool {
    true
}

fn preserve_unknown(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"type": "object", "x-kubernetes-preserve-unknown-fields": true})
}

/// Checks that a tool works on many clusters (integrations.md). KSIT's `Integration`
/// (`ksit.io/v1alpha1`) with only `apiVersion` changed is accepted unchanged.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "fleetmirror.io",
    version = "v1alpha1",
    kind = "Integration",
    plural = "integrations",
    namespaced,
    status = "fleetmirror_core::integrations::status::IntegrationStatus",
    printcolumn = r#"{"name":"Type","type":"string","jsonPath":".spec.type"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Healthy","type":"string","jsonPath":".status.healthyClusters"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct IntegrationSpec {
    /// `argocd`, `flux`, `prometheus`, `istio` or `workloads`.
    #[serde(rename = "type")]
    pub type_: IntegrationType,
    /// `false` disables the Integration: nothing is contacted, phase `Disabled`.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// clusterNames (or IntegrationTarget names) of this namespace to check.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target_clusters: Vec<String>,
    /// Also every IntegrationTarget of this namespace whose `spec.labels` match (`{}`: all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_selector: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>,
    /// `namespace`, `healthCheckInterval`, `components`, `selector`, `operatorSelector`; other
    /// keys are ignored.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub config: std::collections::BTreeMap<String, String>,
    /// KSIT's auto-install settings: accepted, never acted on (targets are never written).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserve_unknown")]
    pub auto_install: Option<serde_json::Value>,
}

/// A cluster Integrations can check: its kubeconfig is in a Secret of this namespace.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "fleetmirror.io",
    version = "v1alpha1",
    kind = "IntegrationTarget",
    plural = "integrationtargets",
    shortname = "it",
    namespaced,
    status = "fleetmirror_core::integrations::status::IntegrationTargetStatus",
    printcolumn = r#"{"name":"Cluster","type":"string","jsonPath":".spec.clusterName"}"#,
    printcolumn = r#"{"name":"Ready","type":"boolean","jsonPath":".status.ready"}"#,
    printcolumn = r#"{"name":"Version","type":"string","jsonPath":".status.serverVersion"}"#,
    printcolumn = r#"{"name":"Message","type":"string","jsonPath":".status.message"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct IntegrationTargetSpec {
    /// What Integrations name in `targetClusters`; forms the default Secret name
    /// (`<clusterName>-kubeconfig`): a DNS-1123 subdomain of at most 242 characters.
    #[schemars(
        length(min = 1, max = 242),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub cluster_name: String,
    /// What `targetSelector` matches.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub labels: std::collections::BTreeMap<String, String>,
    /// The Secret (this namespace) and key holding the kubeconfig; default
    /// `{name: <clusterName>-kubeconfig, key: kubeconfig}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubeconfig_secret_ref: Option<SecretKeyRef>,
    /// The kubeconfig context to use; default: its current-context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
    /// KSIT's field: accepted and ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// A key of a Secret in the same namespace.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct SecretKeyRef {
    /// Secret name (default `<clusterName>-kubeconfig`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Key of `.data` (default `kubeconfig`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// Every CRD the aggregator owns, in the order they are written to `deploy/crds/`.
pub fn crds()
-> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>
{
    use kube::CustomResourceExt;
    vec![
        VClusterHealth::crd(),
        Integration::crd(),
        IntegrationTarget::crd(),
    ]
}
