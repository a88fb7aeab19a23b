//! Which kinds are mirrored: auto-discovery (every namespaced resource with the seven verbs,
//! one version per group and kind, minus the deny list) or `--mirror-resource-types`
//! (kubemirror's `Kind.version[.group]` list), and the objects never mirrored.

use std::collections::{BTreeMap, BTreeSet};

/// Verbs a kind needs to be mirrored (kubemirror does not require `patch`; we do).
pub const VERBS: [&str; 7] = [
    "get", "list", "watch", "create", "update", "patch", "delete",
];

/// kubemirror's deny list, by kind name in any group.
pub const DENIED: &[&str] = &[
    "Pod",
    "Node",
    "Event",
    "Endpoints",
    "EndpointSlice",
    "ComponentStatus",
    "Binding",
    "ReplicationController",
    "ControllerRevision",
    "PodMetrics",
    "NodeMetrics",
    "ReplicaSet",
    "Lease",
    "CSIDriver",
    "CSINode",
    "CSIStorageCapacity",
    "VolumeAttachment",
    "Namespace",
    "PersistentVolume",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "APIService",
    "ValidatingWebhookConfiguration",
    "MutatingWebhookConfiguration",
    "PersistentVolumeClaim",
    "VolumeSnapshot",
    "VolumeSnapshotContent",
    // Longhorn
    "Engine",
    "Replica",
    "InstanceManager",
    "ShareManager",
    "BackingImageManager",
    "BackingImageDataSource",
    "Orphan",
    "RecurringJob",
    "EngineImage",
    "BackingImage",
    "BackupTarget",
    "BackupVolume",
    "Setting",
    // Argo
    "Application",
    "ApplicationSet",
    "AppProject",
    "Workflow",
    "WorkflowTemplate",
    "CronWorkflow",
    "EventSource",
    "EventBus",
    "Sensor",
    "AnalysisRun",
    "AnalysisTemplate",
    "Experiment",
    "Rollout",
    "WorkflowArtifactGCTask",
    "WorkflowEventBinding",
    "WorkflowTaskResult",
    "WorkflowTaskSet",
    // cert-manager
    "Certificate",
    "CertificateRequest",
    "Issuer",
    "ClusterIssuer",
    // External Secrets
    "ExternalSecret",
    "SecretStore",
    "ClusterSecretStore",
    "PushSecret",
    "ACRAccessToken",
    "CloudsmithAccessToken",
    "ECRAuthorizationToken",
    "Fake",
    "GCRAccessToken",
    "GeneratorState",
    "GithubAccessToken",
    "Grafana",
    "MFA",
    "Password",
    "QuayAccessToken",
    "SSHKey",
    "STSSessionToken",
    "UUID",
    "VaultDynamicSecret",
    "Webhook",
    // Kyverno
    "Policy",
    "ClusterPolicy",
    "PolicyException",
    "NamespacedDeletingPolicy",
    "NamespacedImageValidatingPolicy",
    "NamespacedValidatingPolicy",
    "CleanupPolicy",
    "AdmissionReport",
    "BackgroundScanReport",
    "ClusterAdmissionReport",
    "ClusterBackgroundScanReport",
    "EphemeralReport",
    "PolicyReport",
    "UpdateRequest",
    // Cilium
    "CiliumNetworkPolicy",
    "CiliumClusterwideNetworkPolicy",
    "CiliumEndpoint",
    "CiliumIdentity",
    "CiliumNode",
    "CiliumExternalWorkload",
    "CiliumLocalRedirectPolicy",
    "CiliumEgressGatewayPolicy",
    "CiliumGatewayClassConfig",
    "CiliumNodeConfig",
    "CiliumEnvoyConfig",
    "CiliumClusterwideEnvoyConfig",
    // Traefik Hub
    "API",
    "APIAccess",
    "APIAuth",
    "APIBundle",
    "APICatalogItem",
    "APIPlan",
    "APIPortal",
    "APIPortalAuth",
    "APIRateLimit",
    "APIVersion",
    "AIService",
    "ManagedApplication",
    "ManagedSubscription",
    // Kong
    "KongConsumer",
    "KongIngress",
    "KongPlugin",
    "KongClusterPlugin",
    "KongUpstreamPolicy",
    "KongConsumerGroup",
    "TCPIngress",
    "UDPIngress",
    "IngressClassParameters",
    "Plan",
    "OnionService",
    "OnionBalancedService",
    "Tor",
    // Gateway API
    "Gateway",
    "GatewayClass",
    "HTTPRoute",
    "TLSRoute",
    "TCPRoute",
    "UDPRoute",
    "GRPCRoute",
    "ReferenceGrant",
    "BackendTLSPolicy",
    // VictoriaMetrics
    "VMAgent",
    "VMAlert",
    "VMAlertmanager",
    "VMAlertmanagerConfig",
    "VMAuth",
    "VMCluster",
    "VMNodeScrape",
    "VMPodScrape",
    "VMProbe",
    "VMRule",
    "VMServiceScrape",
    "VMSingle",
    "VMStaticScrape",
    "VMScrapeConfig",
    "VMUser",
    "VMAnomaly",
    "Job",
    "CronJob",
];

/// Secret types never mirrored (their contents belong to one namespace's identity).
pub const REFUSED_SECRET_TYPES: [&str; 3] = [
    "kubernetes.io/service-account-token",
    "bootstrap.kubernetes.io/token",
    "helm.sh/release.v1",
];

/// A kind and version (`group` "" is the core group).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KindRef {
    /// API group.
    pub group: String,
    /// Version.
    pub version: String,
    /// Kind.
    pub kind: String,
}

impl std::fmt::Display for KindRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.group.is_empty() {
            write!(f, "{}.{}", self.kind, self.version)
        } else {
            write!(f, "{}.{}.{}", self.kind, self.version, self.group)
        }
    }
}

/// A resource as discovery lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovered {
    /// Group, version, kind.
    pub kind: KindRef,
    /// Plural resource name (`secrets`); subresources (`pods/log`) are never listed here.
    pub plural: String,
    /// Namespaced or cluster-scoped.
    pub namespaced: bool,
    /// Verbs.
    pub verbs: Vec<String>,
    /// The group's preferred version.
    pub preferred: bool,
}

/// True when `verbs` include all seven.
pub fn has_verbs(verbs: &[String]) -> bool {
    VERBS.iter().all(|v| verbs.iter().any(|x| x == v))
}

/// True for kinds never auto-discovered: the deny list, and every kind of group
/// `fleetmirror.io` (the aggregator writes their status).
pub fn denied(kind: &KindRef) -> bool {
    DENIED.contains(&kind.kind.as_str()) || kind.group == "fleetmirror.io"
}

/// What auto-discovery picks from `all`: namespaced, no subresource, the seven verbs, not
/// denied; per (group, kind) the preferred version, else the first listed.
pub fn discover(all: &[Discovered]) -> Vec<Discovered> {
    let mut chosen: BTreeMap<(String, String), Discovered> = BTreeMap::new();
    for d in all {
        if !d.namespaced || d.plural.contains('/') || !has_verbs(&d.verbs) || denied(&d.kind) {
            continue;
        }
        let key = (d.kind.group.clone(), d.kind.kind.clone());
        match chosen.get(&key) {
            Some(existing) if existing.preferred || !d.preferred => {}
            _ => {
                chosen.insert(key, d.clone());
            }
        }
    }
    chosen.into_values().collect()
}

/// Parses `--mirror-resource-types` (`Kind.version[.group]`, comma-separated).
pub fn parse_resource_types(s: &str) -> Result<Vec<KindRef>, String> {
    let mut out = BTreeSet::new();
    for item in s.split(',') {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        let mut parts = item.splitn(3, '.');
        let (Some(kind), Some(version)) = (parts.next(), parts.next()) else {
            return Err(format!(
                "--mirror-resource-types: {item:?} is not Kind.version[.group] (e.g. Secret.v1, Ingress.v1.networking.k8s.io)"
            ));
        };
        let group = parts.next().unwrap_or("");
        let ok_kind = kind.starts_with(|c: char| c.is_ascii_uppercase())
            && kind.chars().all(|c| c.is_ascii_alphanumeric());
        let ok_version = version.starts_with('v')
            && version
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        let ok_group = group.is_empty() || crate::naming::validate_dns1123_subdomain(group).is_ok();
        if !(ok_kind && ok_version && ok_group) {
            return Err(format!(
                "--mirror-resource-types: {item:?} is not Kind.version[.group] (e.g. Secret.v1, Ingress.v1.networking.k8s.io)"
            ));
        }
        out.insert(KindRef {
            group: group.into(),
            version: version.into(),
            kind: kind.into(),
        });
    }
    if out.is_empty() {
        return Err("--mirror-resource-types names no kind".into());
    }
    Ok(out.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(group: &str, version: &str, kind: &str, verbs: &[&str], preferred: bool) -> Discovered {
        Discovered {
            kind: KindRef {
                group: group.into(),
                version: version.into(),
                kind: kind.into(),
            },
            plural: format!("{}s", kind.to_lowercase()),
            namespaced: true,
            verbs: verbs.iter().map(|s| s.to_string()).collect(),
            preferred,
        }
    }

    #[test]
    fn verbs() {
        let v = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(has_verbs(&v(&VERBS)));
        assert!(!has_verbs(&v(&[
            "get", "list", "watch", "create", "update", "delete"
        ])));
        assert!(!has_verbs(&v(&[
            "get", "list", "update", "patch", "delete", "watch"
        ])));
        assert!(!has_verbs(&v(&["get", "list", "watch"])));
        assert!(!has_verbs(&[]));
    }

    #[test]
    fn deny_list() {
        let k = |kind: &str, group: &str| KindRef {
            group: group.into(),
            version: "v1".into(),
            kind: kind.into(),
        };
        for kind in [
            "Pod",
            "Event",
            "Endpoints",
            "Node",
            "Lease",
            "Namespace",
            "ClusterRole",
            "Certificate",
        ] {
            assert!(denied(&k(kind, "")), "{kind}");
        }
        for kind in [
            "Secret",
            "ConfigMap",
            "Service",
            "Ingress",
            "Deployment",
            "StatefulSet",
            "Middleware",
        ] {
            assert!(!denied(&k(kind, "")), "{kind}");
        }
        assert!(denied(&k("VClusterHealth", "fleetmirror.io")));
    }

    #[test]
    fn discovery_picks_one_version() {
        let all = vec![
            d("", "v1", "Secret", &VERBS, true),
            d("", "v1", "Pod", &VERBS, true),
            d("example.com", "v1alpha1", "Widget", &VERBS, false),
            d("example.com", "v1", "Widget", &VERBS, true),
            d("other.io", "v1beta1", "Thing", &VERBS, false),
            d("other.io", "v1beta2", "Thing", &VERBS, false),
            d("ro.io", "v1", "ReadOnly", &["get", "list", "watch"], true),
        ];
        let picked: Vec<String> = discover(&all).iter().map(|d| d.kind.to_string()).collect();
        assert_eq!(
            picked,
            [
                "Secret.v1",
                "Widget.v1.example.com",
                "Thing.v1beta1.other.io"
            ]
        );
    }

    #[test]
    fn resource_types() {
        let r = parse_resource_types(" Secret.v1 , ConfigMap.v1 ").unwrap();
        assert_eq!(r.len(), 2);
        let i = parse_resource_types("Ingress.v1.networking.k8s.io").unwrap();
        assert_eq!(i[0].group, "networking.k8s.io");
        assert_eq!(parse_resource_types("Secret.v1").unwrap()[0].group, "");
        assert!(parse_resource_types("Secret").is_err());
        assert!(parse_resource_types("").is_err());
        assert!(parse_resource_types("Secret.v1,Invalid").is_err());
        assert!(parse_resource_types("Middleware.v1alpha1.traefik.io").is_ok());
    }
}
