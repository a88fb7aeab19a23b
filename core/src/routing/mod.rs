//! Developer routing's decisions (routing.md): which ConfigMaps are routing domains and what
//! they say ([`config`], [`template`]), how hosts compare ([`host`]), and the pass that turns
//! configs, namespaces, Services and observed VirtualServices into the VirtualServices and
//! placeholder Services to write or delete ([`plan`]). [`evaluate`] (feature `evaluator`) picks
//! the destination Istio would for a request: the tests judge every generated VirtualService
//! with it.
//!
//! Nothing here talks to Kubernetes; the aggregator's `routing` room watches, writes and
//! publishes what these functions decide.

pub mod config;
#[cfg(feature = "evaluator")]
pub mod evaluate;
pub mod host;
pub mod plan;
pub mod template;

/// The label that makes a ConfigMap a routing config (value `"true"`), and the annotation that
/// opts a prod Service out (value `"false"`).
pub const ROUTING_KEY: &str = "fleetmirror.io/routing";
/// The label on every object the routing controller makes.
pub const MANAGED_BY: &str = "fleetmirror.io/managed-by";
/// [`MANAGED_BY`]'s value.
pub const MANAGED_BY_VALUE: &str = "fleetmirror";
/// The label naming a VirtualService's prod Service.
pub const SERVICE_LABEL: &str = "fleetmirror.io/service";
/// The annotation naming the config (`<namespace>/<name>`) an object was made for.
pub const CONFIG_ANNOTATION: &str = "fleetmirror.io/routing-config";
/// The annotation (value `"true"`) of a placeholder Service.
pub const PLACEHOLDER_ANNOTATION: &str = "fleetmirror.io/placeholder";
/// The VirtualService operator's placeholder annotation.
pub const OPERATOR_PLACEHOLDER_ANNOTATION: &str = "virtualservice-operator/placeholder-service";
/// The VirtualService operator's older placeholder label.
pub const OPERATOR_PLACEHOLDER_LABEL: &str = "placeholder-service";
/// The VirtualService operator's ownership label (`managed-by: virtualservice-operator`).
pub const OPERATOR_MANAGED_BY: (&str, &str) = ("managed-by", "virtualservice-operator");

/// Namespaces that are never a default or developer namespace.
pub const SYSTEM_NAMESPACES: [&str; 4] = [
    "kube-system",
    "kube-public",
    "kube-node-lease",
    "istio-system",
];

/// Label and annotation keys of Services that planning reads (the aggregator's Service store
/// keeps only these).
pub const SERVICE_KEYS: [&str; 6] = [
    MANAGED_BY,
    ROUTING_KEY,
    CONFIG_ANNOTATION,
    PLACEHOLDER_ANNOTATION,
    OPERATOR_PLACEHOLDER_ANNOTATION,
    OPERATOR_PLACEHOLDER_LABEL,
];

/// The name of prod Service `service`'s VirtualService without a template.
pub fn virtual_service_name(service: &str) -> String {
    format!("{service}-virtual-service")
}
