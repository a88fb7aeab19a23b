//! An Integration's status from its clusters' verdicts (integrations.md "Status"): phase,
//! message, `healthyClusters`, summary and the `Ready` / `Degraded` conditions. Worst first:
//! disabled, an invalid config, no cluster at all, any cluster Unhealthy or Unreachable (the
//! first one's message, in the order the clusters are listed), every cluster still Pending;
//! else Running (Degraded clusters count as healthy and set `Degraded=True`).

/// A cluster's state in a round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterState {
    /// Every listed component Healthy.
    Healthy,
    /// Required components fine, something listed not Healthy.
    Degraded,
    /// A required component failed.
    Unhealthy,
    /// Could not be checked.
    Unreachable,
    /// Not checked yet.
    Pending,
}

impl ClusterState {
    /// As the status says it.
    pub fn as_str(self) -> &'static str {
        match self {
            ClusterState::Healthy => "Healthy",
            ClusterState::Degraded => "Degraded",
            ClusterState::Unhealthy => "Unhealthy",
            ClusterState::Unreachable => "Unreachable",
            ClusterState::Pending => "Pending",
        }
    }

    /// Healthy or Degraded.
    pub fn healthy(self) -> bool {
        matches!(self, ClusterState::Healthy | ClusterState::Degraded)
    }
}

/// One cluster's verdict, in the Integration's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterVerdict {
    /// The clusterName.
    pub name: String,
    /// Its state.
    pub state: ClusterState,
    /// Its message.
    pub message: String,
}

/// A condition: (status, reason, message).
pub type Condition = (&'static str, &'static str, String);

/// The counts of `status.summary`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// All clusters.
    pub total: u32,
    /// Healthy + Degraded.
    pub healthy: u32,
    /// Degraded.
    pub degraded: u32,
    /// Unhealthy.
    pub unhealthy: u32,
    /// Unreachable.
    pub unreachable: u32,
    /// Pending.
    pub pending: u32,
}

/// The rolled-up status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rollup {
    /// `Initializing`, `Running`, `Failed`, `Disabled`.
    pub phase: &'static str,
    /// The message.
    pub message: String,
    /// `<healthy>/<total>` (absent when disabled).
    pub healthy_clusters: Option<String>,
    /// The counts (absent when disabled).
    pub summary: Option<Summary>,
    /// `Ready`.
    pub ready: Condition,
    /// `Degraded` (absent when disabled or the config is invalid).
    pub degraded: Option<Condition>,
}

/// Why nothing was checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotChecked {
    /// `enabled: false`.
    Disabled,
    /// `invalid config: <key>: <why>`.
    InvalidConfig(String),
}

/// Rolls `clusters` of an Integration in `namespace` up.
pub fn rollup(
    namespace: &str,
    clusters: &[ClusterVerdict],
    not_checked: Option<&NotChecked>,
) -> Rollup {
    match not_checked {
        Some(NotChecked::Disabled) => {
            return Rollup {
                phase: "Disabled",
                message: "Integration is disabled".into(),
                healthy_clusters: None,
                summary: None,
                ready: ("False", "Disabled", "Integration is disabled".into()),
                degraded: None,
            };
        }
        Some(NotChecked::InvalidConfig(m)) => {
            return Rollup {
                phase: "Failed",
                message: m.clone(),
                healthy_clusters: None,
                summary: None,
                ready: ("False", "InvalidConfig", m.clone()),
                degraded: None,
            };
        }
        None => {}
    }
    let mut s = Summary {
        total: clusters.len() as u32,
        ..Default::default()
    };
    for c in clusters {
        match c.state {
            ClusterState::Healthy => s.healthy += 1,
            ClusterState::Degraded => {
                s.healthy += 1;
                s.degraded += 1;
            }
            ClusterState::Unhealthy => s.unhealthy += 1,
            ClusterState::Unreachable => s.unreachable += 1,
            ClusterState::Pending => s.pending += 1,
        }
    }
    let degraded: Vec<&str> = clusters
        .iter()
        .filter(|c| c.state == ClusterState::Degraded)
        .map(|c| c.name.as_str())
        .collect();
    let degraded_condition = if degraded.is_empty() {
        ("False", "AsExpected", "No cluster is degraded".to_owned())
    } else {
        let shown: Vec<&str> = degraded.iter().take(10).copied().collect();
        let more = degraded.len().saturating_sub(10);
        (
            "True",
            "ClustersDegraded",
            format!(
                "{} cluster(s) degraded: {}{}",
                degraded.len(),
                shown.join(", "),
                if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                }
            ),
        )
    };
    let (phase, message, ready) = if clusters.is_empty() {
        let m = format!("Integration has no target clusters in namespace {namespace}");
        ("Failed", m.clone(), ("False", "NoTargets", m))
    } else if let Some(c) = clusters
        .iter()
        .find(|c| matches!(c.state, ClusterState::Unhealthy | ClusterState::Unreachable))
    {
        (
            "Failed",
            c.message.clone(),
            ("False", "ReconcileFailed", c.message.clone()),
        )
    } else if s.pending == s.total {
        (
            "Initializing",
            "Integration is initializing".to_owned(),
            (
                "Unknown",
                "Initializing",
                "No cluster has been checked yet".to_owned(),
            ),
        )
    } else {
        (
            "Running",
            "Integration is running".to_owned(),
            (
                "True",
                "ReconcileSucceeded",
                "Integration is healthy".to_owned(),
            ),
        )
    };
    Rollup {
        phase,
        message,
        healthy_clusters: Some(format!("{}/{}", s.healthy, s.total)),
        summary: Some(s),
        ready,
        degraded: Some(degraded_condition),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(name: &str, state: ClusterState, message: &str) -> ClusterVerdict {
        ClusterVerdict {
            name: name.into(),
            state,
            message: message.into(),
        }
    }

    #[test]
    fn worst_first() {
        use ClusterState::*;
        let r = rollup(
            "ops",
            &[c("a", Healthy, "ok"), c("b", Degraded, "slow")],
            None,
        );
        assert_eq!(
            (r.phase, r.message.as_str()),
            ("Running", "Integration is running")
        );
        assert_eq!(
            r.ready,
            (
                "True",
                "ReconcileSucceeded",
                "Integration is healthy".into()
            )
        );
        assert_eq!(r.healthy_clusters.as_deref(), Some("2/2"));
        assert_eq!(r.degraded.unwrap().0, "True");
        // The first failing cluster's message, in order; every cluster still counted.
        let r = rollup(
            "ops",
            &[
                c("a", Healthy, "ok"),
                c(
                    "b",
                    Unreachable,
                    "cluster b is unreachable: connection refused",
                ),
                c("c", Unhealthy, "x"),
            ],
            None,
        );
        assert_eq!(
            (r.phase, r.message.as_str()),
            ("Failed", "cluster b is unreachable: connection refused")
        );
        assert_eq!(r.ready.1, "ReconcileFailed");
        assert_eq!(
            r.summary.unwrap(),
            Summary {
                total: 3,
                healthy: 1,
                degraded: 0,
                unhealthy: 1,
                unreachable: 1,
                pending: 0
            }
        );
        assert_eq!(r.healthy_clusters.as_deref(), Some("1/3"));
        let r = rollup("ops", &[c("a", Pending, ""), c("b", Pending, "")], None);
        assert_eq!(
            (r.phase, r.ready.0, r.ready.1),
            ("Initializing", "Unknown", "Initializing")
        );
        let r = rollup("ops", &[c("a", Pending, ""), c("b", Healthy, "")], None);
        assert_eq!(r.phase, "Running");
        let r = rollup("fleet-ops", &[], None);
        assert_eq!(
            (r.phase, r.message.as_str(), r.ready.1),
            (
                "Failed",
                "Integration has no target clusters in namespace fleet-ops",
                "NoTargets"
            )
        );
        let r = rollup("ops", &[c("a", Healthy, "")], Some(&NotChecked::Disabled));
        assert_eq!(
            (r.phase, r.message.as_str(), r.ready.1),
            ("Disabled", "Integration is disabled", "Disabled")
        );
        assert!(r.summary.is_none() && r.healthy_clusters.is_none());
        let r = rollup(
            "ops",
            &[],
            Some(&NotChecked::InvalidConfig(
                "invalid config: namespace: required for type workloads".into(),
            )),
        );
        assert_eq!((r.phase, r.ready.1), ("Failed", "InvalidConfig"));
    }

    #[test]
    fn degraded_names_up_to_ten() {
        let many: Vec<_> = (0..12)
            .map(|i| c(&format!("c{i:02}"), ClusterState::Degraded, ""))
            .collect();
        let d = rollup("ops", &many, None).degraded.unwrap();
        assert_eq!(d.1, "ClustersDegraded");
        assert!(
            d.2.starts_with("12 cluster(s) degraded: c00, c01") && d.2.ends_with("c09 and 2 more"),
            "{}",
            d.2
        );
    }
}
