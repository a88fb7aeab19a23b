//! What the routing controller shows: the Diagnostics view (`ListRoutes`, kept by every replica
//! after every pass) and the `fleetmirror_routing_*` metrics (labels bounded: never a name or
//! error text).

use std::sync::RwLock;

use fleetmirror_core::routing::plan::{ConfigView, RouteState, ServiceView};
use fleetmirror_proto::v1::{DeveloperRoute, RoutingConfig, ServiceRoutes};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The latest pass, for Diagnostics.
#[derive(Debug, Default)]
pub struct RoutingView {
    inner: RwLock<(Vec<RoutingConfig>, Vec<ServiceRoutes>, String)>,
}

impl RoutingView {
    pub(super) fn set(
        &self,
        configs: Vec<RoutingConfig>,
        services: Vec<ServiceRoutes>,
        api: String,
    ) {
        *self.inner.write().unwrap_or_else(|p| p.into_inner()) = (configs, services, api);
    }

    /// Every config, the services filtered by default namespace and name ("" = any), and the
    /// API version in use.
    pub fn list(
        &self,
        namespace: &str,
        service: &str,
    ) -> (Vec<RoutingConfig>, Vec<ServiceRoutes>, String) {
        let g = self.inner.read().unwrap_or_else(|p| p.into_inner());
        let services =
            g.1.iter()
                .filter(|s| {
                    (namespace.is_empty() || s.default_namespace == namespace)
                        && (service.is_empty() || s.service == service)
                })
                .cloned()
                .collect();
        (g.0.clone(), services, g.2.clone())
    }
}

pub(super) fn config_proto(c: &ConfigView) -> RoutingConfig {
    RoutingConfig {
        namespace: c.namespace.clone(),
        name: c.name.clone(),
        default_namespace: c.default_namespace.clone(),
        state: c.state.as_str().into(),
        message: c.message.clone(),
        developer_namespaces: c.developer_namespaces.clone(),
        header: c.header.clone(),
        baggage_key: c.baggage_key.clone(),
    }
}

pub(super) fn service_proto(s: &ServiceView, state: RouteState, message: &str) -> ServiceRoutes {
    ServiceRoutes {
        config: s.config.clone(),
        default_namespace: s.default_namespace.clone(),
        service: s.service.clone(),
        virtual_service: s.virtual_service.clone(),
        state: state.as_str().into(),
        routes: s
            .routes
            .iter()
            .map(|r| DeveloperRoute {
                namespace: r.namespace.clone(),
                destination: r.destination.clone(),
                source: r.source.into(),
            })
            .collect(),
        conflicts: s.conflicts.clone(),
        placeholders: s.placeholders.clone(),
        message: message.into(),
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabel {
    op: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpReason {
    op: &'static str,
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    version: &'static str,
}

/// The `fleetmirror_routing_*` families.
#[derive(Debug, Clone)]
pub struct RoutingMetrics {
    configs: Family<StateLabel, Gauge>,
    virtual_services: Family<StateLabel, Gauge>,
    routes: Gauge,
    placeholders: Gauge,
    writes: Family<OpLabel, Counter>,
    write_errors: Family<OpReason, Counter>,
    config_errors: Family<ReasonLabel, Counter>,
    reconcile: Histogram,
    api_version: Family<VersionLabel, Gauge>,
}

impl RoutingMetrics {
    /// Creates and registers the families.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            configs: Family::default(),
            virtual_services: Family::default(),
            routes: Gauge::default(),
            placeholders: Gauge::default(),
            writes: Family::default(),
            write_errors: Family::default(),
            config_errors: Family::default(),
            reconcile: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            api_version: Family::default(),
        };
        let r = registry.sub_registry_with_prefix("fleetmirror_routing");
        r.register(
            "configs",
            "Routing configs by state (valid, invalid, conflict)",
            m.configs.clone(),
        );
        r.register(
            "virtualservices",
            "Prod Services that are not excluded, by the state of their VirtualService (synced, pending, conflict, error)",
            m.virtual_services.clone(),
        );
        r.register(
            "routes",
            "Developer routes in all planned VirtualServices",
            m.routes.clone(),
        );
        r.register(
            "placeholders",
            "Placeholder Services in place",
            m.placeholders.clone(),
        );
        r.register("writes", "Writes by operation", m.writes.clone());
        r.register(
            "write_errors",
            "Failed writes by operation and reason",
            m.write_errors.clone(),
        );
        r.register(
            "config_errors",
            "Refused config versions by reason",
            m.config_errors.clone(),
        );
        r.register(
            "reconcile_seconds",
            "Duration of one routing pass",
            m.reconcile.clone(),
        );
        r.register(
            "api_version",
            "The VirtualService API version in use (1), by version (v1, v1beta1, none)",
            m.api_version.clone(),
        );
        for v in ["v1", "v1beta1", "none"] {
            m.api_version
                .get_or_create(&VersionLabel { version: v })
                .set(0);
        }
        m
    }

    pub(super) fn write(&self, op: &'static str) {
        self.writes.get_or_create(&OpLabel { op }).inc();
    }

    pub(super) fn write_error(&self, op: &'static str, reason: &'static str) {
        self.write_errors
            .get_or_create(&OpReason { op, reason })
            .inc();
    }

    pub(super) fn config_error(&self, reason: &'static str) {
        self.config_errors
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    pub(super) fn pass(&self, seconds: f64) {
        self.reconcile.observe(seconds);
    }

    pub(super) fn api_version(&self, version: Option<&str>) {
        let current = match version {
            Some("v1") => "v1",
            Some(_) => "v1beta1",
            None => "none",
        };
        for v in ["v1", "v1beta1", "none"] {
            self.api_version
                .get_or_create(&VersionLabel { version: v })
                .set(i64::from(v == current));
        }
    }

    pub(super) fn set_gauges(
        &self,
        configs: [(&'static str, i64); 3],
        services: [(&'static str, i64); 4],
        routes: usize,
        placeholders: usize,
    ) {
        for (state, n) in configs {
            self.configs.get_or_create(&StateLabel { state }).set(n);
        }
        for (state, n) in services {
            self.virtual_services
                .get_or_create(&StateLabel { state })
                .set(n);
        }
        self.routes.set(routes as i64);
        self.placeholders.set(placeholders as i64);
    }
}
