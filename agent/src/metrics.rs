//! The agent's Prometheus metrics (`fleetmirror_` prefix, bounded labels).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// A bounded label value.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Label {
    /// `kind` (snapshot, delta) or error `reason` category, depending on the metric.
    pub value: &'static str,
}

/// Every metric the agent exports.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    /// 1 while the Report stream is open.
    pub connected: Gauge,
    /// Report streams re-established after an error or end.
    pub reconnects: Counter,
    reports_sent: Family<Label, Counter>,
    stream_errors: Family<Label, Counter>,
}

impl Metrics {
    /// Creates the metrics and registers them under the `fleetmirror_agent_` prefix.
    pub fn register(registry: &mut Registry) -> Self {
        fleetmirror_runtime::admin::register_build_info(
            registry,
            "agent",
            env!("CARGO_PKG_VERSION"),
        );
        let m = Self::default();
        let r = registry.sub_registry_with_prefix("fleetmirror_agent");
        r.register(
            "report_connected",
            "1 while the Report stream to the aggregator is open",
            m.connected.clone(),
        );
        r.register(
            "report_reconnects",
            "Report streams re-established after an error or end",
            m.reconnects.clone(),
        );
        r.register(
            "reports_sent",
            "Reports sent to the aggregator, by kind (value=snapshot|delta)",
            m.reports_sent.clone(),
        );
        r.register(
            "report_stream_errors",
            "Report stream failures, by category (value)",
            m.stream_errors.clone(),
        );
        m
    }

    /// Counts one sent report.
    pub fn sent(&self, kind: &'static str) {
        self.reports_sent
            .get_or_create(&Label { value: kind })
            .inc();
    }

    /// Counts one stream failure.
    pub fn stream_error(&self, category: &'static str) {
        self.stream_errors
            .get_or_create(&Label { value: category })
            .inc();
    }
}
