//! The aggregator's Prometheus metrics (`fleetmirror_` prefix, bounded labels: never an
//! object name or error text as a label value).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of report counters.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// `snapshot` or `delta`.
    pub kind: &'static str,
}

/// Label of the score distribution: one of the seven possible scores.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ScoreLabel {
    /// 0, 16, 33, 50, 66, 83 or 100.
    pub score: i32,
}

/// Labels of rejection counters.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// A bounded category (see `ApplyError::category` and the auth errors).
    pub reason: &'static str,
}

/// Every metric the aggregator exports.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// 1 while this replica holds the Lease.
    pub leader: Gauge,
    /// Open agent Report streams.
    pub agent_streams: Gauge,
    /// Agent reports applied, by kind.
    pub reports: Family<KindLabel, Counter>,
    /// Agent reports or streams refused, by reason.
    pub report_rejections: Family<ReasonLabel, Counter>,
    /// Resyncs requested from agents.
    pub resyncs: Counter,
    /// Duration of one fleet recompute.
    pub recompute_seconds: Histogram,
    vclusters: Family<ReasonLabel, Gauge>,
    scores: Family<ScoreLabel, Gauge>,
    /// What agent authentication cost the API server.
    pub auth: crate::auth::AuthMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            leader: Gauge::default(),
            agent_streams: Gauge::default(),
            reports: Family::default(),
            report_rejections: Family::default(),
            resyncs: Counter::default(),
            // 100 µs … ~3 s
            recompute_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            vclusters: Family::default(),
            scores: Family::default(),
            auth: Default::default(),
        }
    }
}

impl Metrics {
    /// Creates the metrics and registers them under the `fleetmirror` prefix.
    pub fn register(registry: &mut Registry) -> Self {
        fleetmirror_runtime::admin::register_build_info(
            registry,
            "aggregator",
            env!("CARGO_PKG_VERSION"),
        );
        let m = Self::default();
        let r = registry.sub_registry_with_prefix("fleetmirror");
        r.register(
            "aggregator_leader",
            "1 while this replica holds the leader-election Lease",
            m.leader.clone(),
        );
        r.register(
            "aggregator_agent_streams",
            "Open agent Report streams",
            m.agent_streams.clone(),
        );
        r.register(
            "aggregator_reports",
            "Agent reports applied, by kind (snapshot or delta)",
            m.reports.clone(),
        );
        r.register(
            "aggregator_report_rejections",
            "Agent reports or streams refused, by reason",
            m.report_rejections.clone(),
        );
        r.register(
            "aggregator_resyncs",
            "Snapshots requested from agents after a gap",
            m.resyncs.clone(),
        );
        r.register(
            "aggregator_vclusters",
            "Scored vClusters by level (reason=Full|Partial|None)",
            m.vclusters.clone(),
        );
        r.register(
            "aggregator_vclusters_by_score",
            "Scored vClusters by score (0, 16, 33, 50, 66, 83, 100)",
            m.scores.clone(),
        );
        r.register(
            "aggregator_token_reviews",
            "TokenReviews issued to authenticate agent streams (one per distinct token per cache life)",
            m.auth.token_reviews.clone(),
        );
        r.register(
            "aggregator_agent_pod_reads",
            "Agent pods read to learn the node a stream may report for",
            m.auth.pod_reads.clone(),
        );
        r.register(
            "aggregator_auth_cache_hits",
            "Agent streams authenticated from the cache",
            m.auth.cache_hits.clone(),
        );
        r.register(
            "aggregator_recompute_seconds",
            "Duration of one fleet recompute",
            m.recompute_seconds.clone(),
        );
        m
    }

    /// Sets the vClusters-by-level gauges (reason = Full, Partial or None).
    pub fn set_levels(&self, by_level: &std::collections::BTreeMap<&'static str, i64>) {
        for level in ["Full", "Partial", "None"] {
            self.vclusters
                .get_or_create(&ReasonLabel { reason: level })
                .set(by_level.get(level).copied().unwrap_or(0));
        }
    }

    /// Sets the score distribution (vClusters per score).
    pub fn set_scores(&self, by_score: &std::collections::BTreeMap<i32, i64>) {
        for score in (0..=6).map(|p| p * 100 / 6) {
            self.scores
                .get_or_create(&ScoreLabel { score })
                .set(by_score.get(&score).copied().unwrap_or(0));
        }
    }

    /// Counts one refused report or stream.
    pub fn reject(&self, reason: &'static str) {
        self.report_rejections
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }
}
