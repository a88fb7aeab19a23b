//! The agent's Prometheus metrics (`fleetmirror_` prefix, bounded labels).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// A bounded label value.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Label {
    /// `kind` (snapshot, delta) or error `reason` category, depending on the metric.
    pub value: &'static str,
}

/// Every metric the agent exports.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// 1 while the Report stream is open.
    pub connected: Gauge,
    /// Report streams re-established after an error or end.
    pub reconnects: Counter,
    reports_sent: Family<Label, Counter>,
    stream_errors: Family<Label, Counter>,
    /// inotify queue overflows.
    pub inotify_overflows: Counter,
    mounts: Family<Label, Gauge>,
    mount_errors: Family<Label, Counter>,
    passes: Counter,
    pass_seconds: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            connected: Gauge::default(),
            reconnects: Counter::default(),
            reports_sent: Family::default(),
            stream_errors: Family::default(),
            inotify_overflows: Counter::default(),
            mounts: Family::default(),
            mount_errors: Family::default(),
            passes: Counter::default(),
            // 100 µs … ~3 s
            pass_seconds: Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(0.0001, 2.0, 16),
            ),
        }
    }
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
        r.register(
            "inotify_overflows",
            "inotify queue overflows on the kubelet pods directory",
            m.inotify_overflows.clone(),
        );
        r.register(
            "mounts",
            "Pod mounts by state (value=MOUNT_PHASE_MOUNTED|PENDING|FAILED|CONFLICT)",
            m.mounts.clone(),
        );
        r.register(
            "mount_errors",
            "Failed mount operations, by category (value)",
            m.mount_errors.clone(),
        );
        r.register("reconcile_passes", "Reconcile passes", m.passes.clone());
        r.register(
            "reconcile_pass_seconds",
            "Duration of a reconcile pass",
            m.pass_seconds.clone(),
        );
        m
    }

    /// Counts one failed mount operation.
    pub fn mount_error(&self, category: &'static str) {
        self.mount_errors
            .get_or_create(&Label { value: category })
            .inc();
    }

    /// Sets the mounts-by-state gauges (states absent from `counts` are 0).
    pub fn set_mount_counts(&self, counts: &std::collections::BTreeMap<&'static str, i64>) {
        for state in [
            "MOUNT_PHASE_MOUNTED",
            "MOUNT_PHASE_PENDING",
            "MOUNT_PHASE_FAILED",
            "MOUNT_PHASE_CONFLICT",
        ] {
            self.mounts
                .get_or_create(&Label { value: state })
                .set(counts.get(state).copied().unwrap_or(0));
        }
    }

    /// Records one finished pass.
    pub fn pass_done(&self, took: std::time::Duration) {
        self.passes.inc();
        self.pass_seconds.observe(took.as_secs_f64());
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
