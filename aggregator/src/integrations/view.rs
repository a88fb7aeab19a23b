//! What the integrations controller shows: the Diagnostics view (`ListIntegrations`,
//! `GetIntegration`, kept by the leader after every round) and the `fleetmirror_integration_*`
//! metrics (labels bounded: cluster names never appear; target names only in the one
//! per-target gauge, removed with the target).

use std::collections::BTreeMap;
use std::sync::RwLock;

use fleetmirror_proto::v1::{IntegrationDetail, IntegrationSummary};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The leader's latest rounds, for Diagnostics.
#[derive(Debug, Default)]
pub struct IntegrationsView {
    inner: RwLock<BTreeMap<(String, String), IntegrationDetail>>,
}

impl IntegrationsView {
    pub(super) fn set(&self, all: BTreeMap<(String, String), IntegrationDetail>) {
        *self.inner.write().unwrap_or_else(|p| p.into_inner()) = all;
    }

    /// Every Integration in `namespace` ("" = all), sorted.
    pub fn list(&self, namespace: &str) -> Vec<IntegrationSummary> {
        self.inner
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|((ns, _), _)| namespace.is_empty() || ns == namespace)
            .filter_map(|(_, d)| d.integration.clone())
            .collect()
    }

    /// One Integration with its clusters.
    pub fn get(&self, namespace: &str, name: &str) -> Option<IntegrationDetail> {
        self.inner
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(namespace.to_owned(), name.to_owned()))
            .cloned()
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TypePhase {
    r#type: &'static str,
    phase: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TypeState {
    r#type: &'static str,
    state: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TypeLabel {
    r#type: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TypeCategory {
    r#type: &'static str,
    category: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetLabels {
    namespace: String,
    target: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindReason {
    kind: &'static str,
    reason: &'static str,
}

/// The integrations controller's metrics.
#[derive(Debug, Clone)]
pub struct IntegrationMetrics {
    integrations: Family<TypePhase, Gauge>,
    clusters: Family<TypeState, Gauge>,
    check_seconds: Family<TypeLabel, Histogram, fn() -> Histogram>,
    check_errors: Family<TypeCategory, Counter>,
    target_requests: Family<TypeLabel, Counter>,
    target_connected: Family<TargetLabels, Gauge>,
    status_writes: Family<KindReason, Counter>,
}

/// Every type label value.
pub const TYPES: [&str; 5] = ["argocd", "flux", "prometheus", "istio", "workloads"];
const PHASES: [&str; 4] = ["Initializing", "Running", "Failed", "Disabled"];
const STATES: [&str; 5] = ["healthy", "degraded", "unhealthy", "unreachable", "pending"];

impl IntegrationMetrics {
    /// Creates and registers the families.
    pub fn register(registry: &mut Registry) -> Self {
        fn histogram() -> Histogram {
            Histogram::new(exponential_buckets(0.005, 2.0, 13))
        }
        let m = IntegrationMetrics {
            integrations: Family::default(),
            clusters: Family::default(),
            check_seconds: Family::new_with_constructor(histogram),
            check_errors: Family::default(),
            target_requests: Family::default(),
            target_connected: Family::default(),
            status_writes: Family::default(),
        };
        let r = registry.sub_registry_with_prefix("fleetmirror_integration");
        r.register(
            "integrations",
            "Integrations by type and phase",
            m.integrations.clone(),
        );
        r.register(
            "clusters",
            "(Integration, cluster) pairs by type and state",
            m.clusters.clone(),
        );
        r.register(
            "check_seconds",
            "Duration of one cluster check, by Integration type",
            m.check_seconds.clone(),
        );
        r.register(
            "check_errors",
            "Cluster checks that could not judge the cluster, by type and category (connect, timeout, tls, unauthorized, forbidden, http, decode, target_not_ready)",
            m.check_errors.clone(),
        );
        r.register(
            "target_requests",
            "Requests sent to target clusters, by Integration type (probe: connection tests)",
            m.target_requests.clone(),
        );
        r.register(
            "target_connected",
            "1 when the IntegrationTarget's last connection test succeeded, else 0",
            m.target_connected.clone(),
        );
        r.register(
            "status_writes",
            "Status writes by kind (Integration, IntegrationTarget) and reason (changed, heartbeat, error)",
            m.status_writes.clone(),
        );
        m
    }

    pub(super) fn check(&self, t: &'static str, seconds: f64, requests: u64) {
        self.check_seconds
            .get_or_create(&TypeLabel { r#type: t })
            .observe(seconds);
        self.requests(t, requests);
    }

    pub(super) fn requests(&self, t: &'static str, n: u64) {
        self.target_requests
            .get_or_create(&TypeLabel { r#type: t })
            .inc_by(n);
    }

    pub(super) fn check_error(&self, t: &'static str, category: &'static str) {
        self.check_errors
            .get_or_create(&TypeCategory {
                r#type: t,
                category,
            })
            .inc();
    }

    pub(super) fn connected(&self, namespace: &str, target: &str, up: Option<bool>) {
        let labels = TargetLabels {
            namespace: namespace.into(),
            target: target.into(),
        };
        match up {
            Some(up) => {
                self.target_connected
                    .get_or_create(&labels)
                    .set(i64::from(up));
            }
            None => {
                self.target_connected.remove(&labels);
            }
        }
    }

    pub(super) fn status_write(&self, kind: &'static str, reason: &'static str) {
        self.status_writes
            .get_or_create(&KindReason { kind, reason })
            .inc();
    }

    /// Sets the gauges from every Integration's (type, phase) and every pair's (type, state).
    pub(super) fn gauges(
        &self,
        phases: &BTreeMap<(&'static str, &'static str), i64>,
        states: &BTreeMap<(&'static str, &'static str), i64>,
    ) {
        for t in TYPES {
            for p in PHASES {
                self.integrations
                    .get_or_create(&TypePhase {
                        r#type: t,
                        phase: p,
                    })
                    .set(phases.get(&(t, p)).copied().unwrap_or(0));
            }
            for s in STATES {
                self.clusters
                    .get_or_create(&TypeState {
                        r#type: t,
                        state: s,
                    })
                    .set(states.get(&(t, s)).copied().unwrap_or(0));
            }
        }
    }
}
