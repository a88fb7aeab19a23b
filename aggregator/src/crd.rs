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

/// Every CRD the aggregator owns, in the order they are written to `deploy/crds/`.
pub fn crds()
-> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>
{
    use kube::CustomResourceExt;
    vec![VClusterHealth::crd()]
}
