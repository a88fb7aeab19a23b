//! What a `VClusterHealth` status says, decided as pure functions (health.md): the status
//! model itself (the CRD's status schema is generated from these types), the status an object
//! should have given the scored fleet, when a write is due, which Kubernetes Events a change
//! deserves, and the two guards the aggregator platform needs:
//!
//! * [`is_worse`]: a replica that just became leader (or restarted) holds back a status that
//!   is worse than the one in the API while its agents have not reconnected yet, so a
//!   failover raises no false alarm;
//! * [`watches_failing`]: when an input cannot be watched, the status keeps its last scores
//!   and says `Ready=Unknown`, instead of heartbeating stale data as fresh.
//!
//! A status never approaches the API object size limit: above [`MAX_LISTED`] vClusters,
//! `syncCoverage` (and `clusters`) hold the non-Full ones first and `summary` still counts all;
//! Diagnostics keeps every vCluster.

use std::collections::HashMap;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Level, Selection, Signals, VClusterKey};
use crate::status::{Condition, ConditionStatus, Event, Time, WriteDue, set_condition, write_due};

/// The most vClusters listed in one status (`syncCoverage`, `clusters`).
pub const MAX_LISTED: usize = 1000;
/// Events per status write at most, so a fleet-wide outage is one short burst, not a storm.
pub const MAX_EVENTS: usize = 10;
const DEFAULT_INTERVAL_SECS: i64 = 30;
const MAX_INTERVAL_SECS: i64 = 86_400;

/// What the aggregator found.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VClusterHealthStatus {
    /// The vClusters found, with their API Service.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clusters: Vec<ClusterRef>,
    /// One entry per vCluster, sorted by namespace then name (above 1000 vClusters: the first
    /// 1000 with the non-Full ones first; `summary` counts all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sync_coverage: Vec<SyncCoverage>,
    /// Counts over every selected vCluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<Summary>,
    /// When the aggregator last wrote this status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_updated: Option<Time>,
    /// The generation of the spec this status was computed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` (the selection was scored) and `AgentsReporting` (no reporting node is silent).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// A vCluster and its API Service.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterRef {
    /// The vCluster's name (label `release` of its control plane).
    pub name: String,
    /// Its host namespace.
    pub namespace: String,
    /// Its API Service (`<name>`).
    pub service_name: String,
    /// 443 when the Service has no ports or has port 443, else its first port.
    pub service_port: i32,
}

/// The six signals, score and level of one vCluster.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SyncCoverage {
    /// The vCluster's name.
    pub cluster_name: String,
    /// Its host namespace.
    pub namespace: String,
    /// The API Service exists and is not headless.
    pub api_sync: bool,
    /// A control-plane pod is Running and Ready.
    pub control_plane_ready: bool,
    /// The synced kube-dns Service exists.
    pub dns_sync: bool,
    /// A synced node Service exists.
    pub node_sync: bool,
    /// A synced pod from virtual namespace kube-system exists.
    pub system_workload_sync: bool,
    /// A synced pod from another virtual namespace exists.
    pub tenant_workload_sync: bool,
    /// systemWorkloadSync || tenantWorkloadSync.
    pub workload_sync: bool,
    /// points * 100 / 6 (integer division).
    pub score: i32,
    /// Full (6/6), Partial (1–5) or None (0).
    pub level: String,
    /// When the signals were last computed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_checked: Option<Time>,
    /// Pod-directory mounts made by the agents, e.g. "4/4".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount_coverage: Option<String>,
    /// A node that reported this vCluster's pods went silent: its pods no longer count.
    #[serde(default)]
    pub pods_stale: bool,
    /// Why signals are false, in words.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// Counts over all selected vClusters.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    /// vClusters scored.
    pub total: i32,
    /// At level Full.
    pub full: i32,
    /// At level Partial.
    pub partial: i32,
    /// At level None.
    pub none: i32,
    /// The lowest score (100 when there are no vClusters).
    pub lowest_score: i32,
}

/// One scored vCluster of the fleet (scored once per recompute, shared by every object).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScoredVCluster {
    /// (namespace, name).
    pub key: VClusterKey,
    /// Its signals.
    pub signals: Signals,
    /// The API Service's port, when it exists.
    pub service_port: Option<i32>,
    /// Some of its pods are on a node whose agent went silent.
    pub stale: bool,
    /// (mounted, expected) pod-directory mounts, when agents report any.
    pub coverage: Option<(u32, u32)>,
    /// Pods seen.
    pub pods_seen: u32,
}

/// Where pod facts come from, and how the agents are doing (the `AgentsReporting` condition).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Agents {
    /// `--pod-source=api`: no agents are needed.
    PodSourceApi,
    /// Agent mode, with this many nodes reporting (0: none).
    Reporting {
        /// Nodes whose agents reported.
        nodes: usize,
    },
}

/// Everything [`desired_status`] reads.
#[derive(Debug, Clone, Copy)]
pub struct StatusInput<'a> {
    /// `spec.namespace`.
    pub spec_namespace: Option<&'a str>,
    /// `metadata.generation`.
    pub generation: Option<i64>,
    /// The status in the API.
    pub current: &'a VClusterHealthStatus,
    /// The scored fleet.
    pub fleet: &'a [ScoredVCluster],
    /// Pod-fact source and agents.
    pub agents: Agents,
    /// Now.
    pub now: Time,
}

/// `spec.intervalSeconds`: unset or ≤ 0 means 30, at most a day.
pub fn interval(spec_interval_seconds: Option<i64>) -> Duration {
    let secs = match spec_interval_seconds {
        Some(s) if s > 0 => s.min(MAX_INTERVAL_SECS),
        _ => DEFAULT_INTERVAL_SECS,
    };
    Duration::from_secs(secs as u64)
}

/// True when `spec.namespace` is "", "*", "all" or a namespace name.
pub fn valid_selection(spec_namespace: Option<&str>) -> bool {
    let ns = spec_namespace.map(str::trim).unwrap_or("");
    matches!(ns, "" | "*" | "all") || crate::naming::validate_dns1123_label(ns).is_ok()
}

const STALE_NOTE: &str =
    "a node that reported this vCluster's pods went silent: its pods no longer count";

fn coverage_entry(s: &ScoredVCluster, now: Time) -> SyncCoverage {
    let mut message = s.signals.message();
    if s.stale {
        message = if message.is_empty() {
            STALE_NOTE.into()
        } else {
            format!("{message}; {STALE_NOTE}")
        };
    }
    SyncCoverage {
        cluster_name: s.key.name.clone(),
        namespace: s.key.namespace.clone(),
        api_sync: s.signals.api_sync,
        control_plane_ready: s.signals.control_plane_ready,
        dns_sync: s.signals.dns_sync,
        node_sync: s.signals.node_sync,
        system_workload_sync: s.signals.system_workload_sync,
        tenant_workload_sync: s.signals.tenant_workload_sync,
        workload_sync: s.signals.workload_sync(),
        score: s.signals.score(),
        level: s.signals.level().as_str().into(),
        last_checked: Some(now),
        mount_coverage: s.coverage.map(|(m, e)| format!("{m}/{e}")),
        pods_stale: s.stale,
        message,
    }
}

/// The status an object should have, at `input.now`.
pub fn desired_status(input: StatusInput<'_>) -> VClusterHealthStatus {
    let StatusInput {
        spec_namespace,
        generation,
        current,
        fleet,
        agents,
        now,
    } = input;
    let old = &current.conditions;
    if !valid_selection(spec_namespace) {
        let ns = spec_namespace.map(str::trim).unwrap_or("");
        return VClusterHealthStatus {
            summary: Some(Summary {
                lowest_score: 100,
                ..Default::default()
            }),
            last_updated: Some(now),
            observed_generation: generation,
            conditions: vec![set_condition(
                old,
                "Ready",
                ConditionStatus::False,
                "InvalidSpec",
                format!(
                    "spec.namespace {:?} is not a namespace name, \"*\" or \"all\"",
                    crate::pod::truncate(ns)
                ),
                generation,
                now,
            )],
            ..Default::default()
        };
    }
    let selection = Selection::from_spec(spec_namespace);
    let mut scored: Vec<&ScoredVCluster> = fleet
        .iter()
        .filter(|s| selection.matches(&s.key.namespace))
        .collect();
    let mut summary = Summary {
        total: scored.len() as i32,
        lowest_score: 100,
        ..Default::default()
    };
    for s in &scored {
        match s.signals.level() {
            Level::Full => summary.full += 1,
            Level::Partial => summary.partial += 1,
            Level::None => summary.none += 1,
        }
        summary.lowest_score = summary.lowest_score.min(s.signals.score());
    }
    let stale_count = scored.iter().filter(|s| s.stale).count();
    let total = scored.len();
    let mut ready_message = format!("{total} vCluster(s) scored");
    if total > MAX_LISTED {
        // The non-Full ones first (each group by namespace then name), then cut.
        scored.sort_by_key(|s| (s.signals.level() == Level::Full, &s.key));
        scored.truncate(MAX_LISTED);
        scored.sort_by_key(|s| &s.key);
        ready_message.push_str(&format!(
            "; syncCoverage lists {MAX_LISTED} of them, the non-Full ones first \
             (Diagnostics ListVClusters has all)"
        ));
    }
    let clusters = scored
        .iter()
        .filter_map(|s| {
            Some(ClusterRef {
                name: s.key.name.clone(),
                namespace: s.key.namespace.clone(),
                service_name: s.key.name.clone(),
                service_port: s.service_port?,
            })
        })
        .collect();
    let coverage = scored.iter().map(|s| coverage_entry(s, now)).collect();
    let (status, reason, message) = match agents {
        Agents::PodSourceApi => (
            true,
            "PodSourceAPI",
            "pod facts come from the API (--pod-source=api)".to_owned(),
        ),
        Agents::Reporting { .. } if stale_count > 0 => (
            false,
            "AgentsSilent",
            format!("{stale_count} vCluster(s) have pods on nodes whose agent went silent"),
        ),
        Agents::Reporting { nodes: 0 } => (
            false,
            "NoAgentReports",
            "no agent has reported: pod signals cannot be true (is the agent DaemonSet running?)"
                .to_owned(),
        ),
        Agents::Reporting { nodes } => (
            true,
            "AgentsReporting",
            format!("{nodes} node(s) reporting"),
        ),
    };
    VClusterHealthStatus {
        clusters,
        sync_coverage: coverage,
        summary: Some(summary),
        last_updated: Some(now),
        observed_generation: generation,
        conditions: vec![
            set_condition(
                old,
                "Ready",
                ConditionStatus::True,
                "Scored",
                ready_message,
                generation,
                now,
            ),
            set_condition(
                old,
                "AgentsReporting",
                ConditionStatus::from_bool(status),
                reason,
                message,
                generation,
                now,
            ),
        ],
    }
}

/// `status` without its timestamps, to tell a real change from a heartbeat.
pub fn without_times(status: &VClusterHealthStatus) -> VClusterHealthStatus {
    let mut s = status.clone();
    s.last_updated = None;
    for c in &mut s.sync_coverage {
        c.last_checked = None;
    }
    s
}

/// Whether `desired` must be written over `current` (an object with `interval_seconds`).
pub fn write_due_for(
    current: &VClusterHealthStatus,
    desired: &VClusterHealthStatus,
    interval_seconds: Option<i64>,
    now: Time,
) -> WriteDue {
    let changed = without_times(desired) != without_times(current);
    write_due(
        changed,
        current.last_updated,
        interval(interval_seconds),
        now,
    )
}

/// When the heartbeat of an object written at `last_updated` is next due (`None`: now).
pub fn heartbeat_at(last_updated: Option<Time>, interval_seconds: Option<i64>) -> Option<Time> {
    last_updated.map(|t| t.plus_secs(interval(interval_seconds).as_secs() as i64))
}

fn ready_reason(s: &VClusterHealthStatus) -> Option<&str> {
    crate::status::find(&s.conditions, "Ready").map(|c| c.reason.as_str())
}

/// The Kubernetes Events one status change deserves: a vCluster whose level changed (Warning
/// when it got worse) and a spec that became invalid. At most [`MAX_EVENTS`] level changes per
/// write plus one line counting the rest.
pub fn events(current: &VClusterHealthStatus, desired: &VClusterHealthStatus) -> Vec<Event> {
    let mut out = Vec::new();
    if ready_reason(desired) == Some("InvalidSpec") && ready_reason(current) != Some("InvalidSpec")
    {
        out.push(Event {
            warning: true,
            reason: "InvalidSpec",
            note: crate::status::find(&desired.conditions, "Ready")
                .map(|c| c.message.clone())
                .unwrap_or_default(),
        });
    }
    if current.last_updated.is_none() {
        return out; // the first status: nothing changed level yet
    }
    let old: HashMap<(&str, &str), &SyncCoverage> = current
        .sync_coverage
        .iter()
        .map(|c| ((c.namespace.as_str(), c.cluster_name.as_str()), c))
        .collect();
    let changes: Vec<(&SyncCoverage, &SyncCoverage)> = desired
        .sync_coverage
        .iter()
        .filter_map(|c| {
            let o = old.get(&(c.namespace.as_str(), c.cluster_name.as_str()))?;
            (o.level != c.level).then_some((*o, c))
        })
        .collect();
    for (o, c) in changes.iter().take(MAX_EVENTS) {
        let why = if c.message.is_empty() {
            String::new()
        } else {
            format!(": {}", c.message)
        };
        out.push(Event {
            warning: c.score < o.score,
            reason: "LevelChanged",
            note: crate::pod::truncate(&format!(
                "{}/{}: {} -> {} ({} -> {}){why}",
                c.namespace, c.cluster_name, o.level, c.level, o.score, c.score
            )),
        });
    }
    if changes.len() > MAX_EVENTS {
        out.push(Event {
            warning: true,
            reason: "LevelChanged",
            note: format!(
                "… and {} more vClusters changed level",
                changes.len() - MAX_EVENTS
            ),
        });
    }
    out
}

/// True when writing `desired` over `current` would make something look worse: a vCluster
/// listed in both with a lower score, fewer vClusters at Full, a lower lowest score, or a
/// condition that was `True` and no longer is. (A vCluster that disappeared is not "worse":
/// its control plane is gone from the API, which the new leader sees as well as the old.)
pub fn is_worse(current: &VClusterHealthStatus, desired: &VClusterHealthStatus) -> bool {
    if current.last_updated.is_none() {
        return false; // nothing published yet
    }
    let old: HashMap<(&str, &str), i32> = current
        .sync_coverage
        .iter()
        .map(|c| ((c.namespace.as_str(), c.cluster_name.as_str()), c.score))
        .collect();
    let lower_score = desired.sync_coverage.iter().any(|c| {
        old.get(&(c.namespace.as_str(), c.cluster_name.as_str()))
            .is_some_and(|&o| c.score < o)
    });
    let summary = |s: &VClusterHealthStatus| s.summary.clone().unwrap_or_default();
    let (o, d) = (summary(current), summary(desired));
    let worse_summary = (d.total >= o.total && d.full < o.full) || d.lowest_score < o.lowest_score;
    let lost_condition = current.conditions.iter().any(|c| {
        c.status == "True"
            && crate::status::find(&desired.conditions, &c.type_)
                .is_some_and(|d| d.status != "True")
    });
    lower_score || worse_summary || lost_condition
}

/// The status to write while an input of the controller cannot be watched: the last scores
/// stay (with their `lastUpdated`: they are as old as that), and `Ready` turns `Unknown`
/// saying which watch fails. Nothing is heartbeated as fresh.
pub fn watches_failing(
    current: &VClusterHealthStatus,
    message: String,
    now: Time,
) -> VClusterHealthStatus {
    let mut s = current.clone();
    // The scores kept were computed for the generation the status says, not a newer spec.
    let ready = set_condition(
        &current.conditions,
        "Ready",
        ConditionStatus::Unknown,
        "WatchFailing",
        message,
        current.observed_generation,
        now,
    );
    s.conditions.retain(|c| c.type_ != "Ready");
    s.conditions.insert(0, ready);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Time {
        Time(s.parse().unwrap())
    }

    const T0: &str = "2026-12-01T10:00:00Z";
    const T1: &str = "2026-12-01T10:00:10Z";

    fn signals(points: usize) -> Signals {
        let mut s = Signals::default();
        let flags = [
            &mut s.api_sync,
            &mut s.control_plane_ready,
            &mut s.dns_sync,
            &mut s.node_sync,
            &mut s.system_workload_sync,
            &mut s.tenant_workload_sync,
        ];
        for f in flags.into_iter().take(points) {
            *f = true;
        }
        s
    }

    fn vc(ns: &str, name: &str, points: usize) -> ScoredVCluster {
        ScoredVCluster {
            key: VClusterKey {
                namespace: ns.into(),
                name: name.into(),
            },
            signals: signals(points),
            service_port: (points > 0).then_some(443),
            stale: false,
            coverage: Some((2, 2)),
            pods_seen: 3,
        }
    }

    fn status(
        spec_ns: Option<&str>,
        current: &VClusterHealthStatus,
        fleet: &[ScoredVCluster],
        agents: Agents,
        now: &str,
    ) -> VClusterHealthStatus {
        desired_status(StatusInput {
            spec_namespace: spec_ns,
            generation: Some(3),
            current,
            fleet,
            agents,
            now: t(now),
        })
    }

    fn cond<'a>(s: &'a VClusterHealthStatus, type_: &str) -> &'a Condition {
        crate::status::find(&s.conditions, type_).unwrap()
    }

    const TWO: Agents = Agents::Reporting { nodes: 2 };

    #[test]
    fn the_status_of_a_selection() {
        let fleet = [vc("a", "vc", 6), vc("b", "x", 3), vc("b", "y", 0)];
        let s = status(Some("*"), &Default::default(), &fleet, TWO, T0);
        assert_eq!(
            s.summary,
            Some(Summary {
                total: 3,
                full: 1,
                partial: 1,
                none: 1,
                lowest_score: 0
            })
        );
        assert_eq!(s.sync_coverage.len(), 3);
        assert_eq!(s.clusters.len(), 2, "only vClusters with an API Service");
        assert_eq!(s.sync_coverage[1].score, 50);
        assert_eq!(s.sync_coverage[1].level, "Partial");
        assert_eq!(s.sync_coverage[0].mount_coverage.as_deref(), Some("2/2"));
        assert_eq!(s.last_updated, Some(t(T0)));
        assert_eq!(s.observed_generation, Some(3));
        assert_eq!(cond(&s, "Ready").reason, "Scored");
        assert_eq!(cond(&s, "AgentsReporting").message, "2 node(s) reporting");

        let one = status(Some("b"), &Default::default(), &fleet, TWO, T0);
        assert_eq!(one.summary.unwrap().total, 2);
        let none = status(None, &Default::default(), &fleet, TWO, T0);
        assert_eq!(
            none.summary.as_ref().unwrap().total,
            0,
            "unset selects `vcluster`"
        );
        assert_eq!(none.summary.unwrap().lowest_score, 100);
    }

    #[test]
    fn agents_reporting_condition() {
        let mut stale = vc("a", "vc", 4);
        stale.stale = true;
        let cases = [
            (
                Agents::PodSourceApi,
                vec![vc("a", "vc", 6)],
                "True",
                "PodSourceAPI",
            ),
            (
                Agents::Reporting { nodes: 0 },
                vec![vc("a", "vc", 4)],
                "False",
                "NoAgentReports",
            ),
            (TWO, vec![stale.clone()], "False", "AgentsSilent"),
            (
                Agents::Reporting { nodes: 0 },
                vec![stale],
                "False",
                "AgentsSilent",
            ),
            (TWO, vec![vc("a", "vc", 6)], "True", "AgentsReporting"),
        ];
        for (agents, fleet, want, reason) in cases {
            let s = status(Some("*"), &Default::default(), &fleet, agents, T0);
            let c = cond(&s, "AgentsReporting");
            assert_eq!(
                (c.status.as_str(), c.reason.as_str()),
                (want, reason),
                "{agents:?}"
            );
        }
        let mut stale = vc("a", "vc", 4);
        stale.stale = true;
        let s = status(Some("*"), &Default::default(), &[stale], TWO, T0);
        assert!(s.sync_coverage[0].pods_stale);
        assert!(
            s.sync_coverage[0].message.ends_with(STALE_NOTE),
            "{}",
            s.sync_coverage[0].message
        );
    }

    #[test]
    fn an_invalid_selection_says_so() {
        for bad in ["Team_A", "../x", "a b"] {
            let s = status(Some(bad), &Default::default(), &[vc("a", "vc", 6)], TWO, T0);
            let ready = cond(&s, "Ready");
            assert_eq!(
                (ready.status.as_str(), ready.reason.as_str()),
                ("False", "InvalidSpec")
            );
            assert!(s.sync_coverage.is_empty());
            assert_eq!(events(&Default::default(), &s)[0].reason, "InvalidSpec");
        }
        for good in ["", " * ", "all", "team-a"] {
            assert!(valid_selection(Some(good)), "{good:?}");
        }
    }

    #[test]
    fn writes_happen_on_change_or_heartbeat_only() {
        let fleet = [vc("a", "vc", 6)];
        let first = status(Some("*"), &Default::default(), &fleet, TWO, T0);
        assert_eq!(
            write_due_for(&Default::default(), &first, None, t(T0)),
            WriteDue::Changed
        );
        let again = status(Some("*"), &first, &fleet, TWO, T1);
        assert_eq!(again.conditions, first.conditions, "transition times kept");
        assert_eq!(write_due_for(&first, &again, None, t(T1)), WriteDue::No);
        assert_eq!(
            write_due_for(&first, &again, Some(5), t(T1)),
            WriteDue::Heartbeat,
            "intervalSeconds 5 passed"
        );
        let worse = status(Some("*"), &first, &[vc("a", "vc", 5)], TWO, T1);
        assert_eq!(
            write_due_for(&first, &worse, None, t(T1)),
            WriteDue::Changed
        );
        assert_eq!(interval(None), Duration::from_secs(30));
        assert_eq!(interval(Some(0)), Duration::from_secs(30));
        assert_eq!(interval(Some(-5)), Duration::from_secs(30));
        assert_eq!(interval(Some(i64::MAX)), Duration::from_secs(86_400));
        assert_eq!(heartbeat_at(Some(t(T0)), Some(10)), Some(t(T1)));
        assert_eq!(heartbeat_at(None, Some(10)), None);
    }

    #[test]
    fn level_changes_are_events_warning_when_worse() {
        let before = status(
            Some("*"),
            &Default::default(),
            &[vc("a", "vc", 6), vc("a", "w", 2)],
            TWO,
            T0,
        );
        assert!(
            events(&Default::default(), &before).is_empty(),
            "a first status"
        );
        let after = status(
            Some("*"),
            &before,
            &[vc("a", "vc", 5), vc("a", "w", 6)],
            TWO,
            T1,
        );
        let ev = events(&before, &after);
        assert_eq!(ev.len(), 2);
        assert!(
            ev[0].warning && ev[0].note.starts_with("a/vc: Full -> Partial (100 -> 83)"),
            "{:?}",
            ev[0]
        );
        assert!(!ev[1].warning && ev[1].note.starts_with("a/w: Partial -> Full"));
        let same_level = status(
            Some("*"),
            &after,
            &[vc("a", "vc", 4), vc("a", "w", 6)],
            TWO,
            T1,
        );
        assert!(
            events(&after, &same_level).is_empty(),
            "83 -> 66 stays Partial"
        );
    }

    #[test]
    fn a_fleet_wide_outage_is_a_short_burst() {
        let up: Vec<_> = (0..50).map(|i| vc("a", &format!("vc{i:02}"), 6)).collect();
        let down: Vec<_> = (0..50).map(|i| vc("a", &format!("vc{i:02}"), 1)).collect();
        let before = status(Some("*"), &Default::default(), &up, TWO, T0);
        let after = status(Some("*"), &before, &down, TWO, T1);
        let ev = events(&before, &after);
        assert_eq!(ev.len(), MAX_EVENTS + 1);
        assert_eq!(ev[MAX_EVENTS].note, "… and 40 more vClusters changed level");
    }

    #[test]
    fn a_large_fleet_lists_the_non_full_first_and_counts_all() {
        let mut fleet: Vec<_> = (0..1500)
            .map(|i| vc("a", &format!("vc{i:04}"), 6))
            .collect();
        fleet[1400] = vc("a", "vc1400", 2);
        fleet[7] = vc("a", "vc0007", 0);
        let s = status(Some("*"), &Default::default(), &fleet, TWO, T0);
        assert_eq!(s.sync_coverage.len(), MAX_LISTED);
        assert_eq!(
            s.clusters.len(),
            MAX_LISTED - 1,
            "vc0007 has no API Service"
        );
        let names: Vec<&str> = s
            .sync_coverage
            .iter()
            .map(|c| c.cluster_name.as_str())
            .collect();
        assert!(names.contains(&"vc1400") && names.contains(&"vc0007"));
        assert!(
            names.windows(2).all(|w| w[0] < w[1]),
            "still sorted by name"
        );
        let sum = s.summary.clone().unwrap();
        assert_eq!(
            (sum.total, sum.full, sum.partial, sum.none),
            (1500, 1498, 1, 1)
        );
        assert!(cond(&s, "Ready").message.contains("lists 1000 of them"));
        let json = serde_json::to_string(&VClusterHealthStatus {
            sync_coverage: s.sync_coverage.clone(),
            ..s.clone()
        })
        .unwrap();
        assert!(json.len() < 1_000_000, "{} bytes", json.len());
    }

    #[test]
    fn what_counts_as_worse_during_a_failover() {
        let full = status(Some("*"), &Default::default(), &[vc("a", "vc", 6)], TWO, T0);
        let cases: [(&str, Vec<ScoredVCluster>, Agents, bool); 6] = [
            ("same", vec![vc("a", "vc", 6)], TWO, false),
            ("lower score", vec![vc("a", "vc", 3)], TWO, true),
            (
                "no agents yet",
                vec![vc("a", "vc", 3)],
                Agents::Reporting { nodes: 0 },
                true,
            ),
            (
                "a new vCluster, not Full",
                vec![vc("a", "vc", 6), vc("a", "new", 3)],
                TWO,
                true,
            ),
            (
                "a new Full vCluster",
                vec![vc("a", "vc", 6), vc("a", "new", 6)],
                TWO,
                false,
            ),
            ("the vCluster is gone", vec![], TWO, false),
        ];
        for (what, fleet, agents, worse) in cases {
            let d = status(Some("*"), &full, &fleet, agents, T1);
            assert_eq!(is_worse(&full, &d), worse, "{what}");
        }
        assert!(
            !is_worse(&Default::default(), &full),
            "nothing published yet"
        );
        let partial = status(Some("*"), &Default::default(), &[vc("a", "vc", 3)], TWO, T0);
        let better = status(Some("*"), &partial, &[vc("a", "vc", 6)], TWO, T1);
        assert!(!is_worse(&partial, &better));
    }

    #[test]
    fn failing_watches_keep_the_scores_and_say_unknown() {
        let full = status(Some("*"), &Default::default(), &[vc("a", "vc", 6)], TWO, T0);
        let s = watches_failing(
            &full,
            "watch services-app failing since 2026-12-01T10:00:05Z: 403".into(),
            t(T1),
        );
        assert_eq!(s.sync_coverage, full.sync_coverage);
        assert_eq!(
            s.last_updated, full.last_updated,
            "not heartbeated as fresh"
        );
        let ready = cond(&s, "Ready");
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("Unknown", "WatchFailing")
        );
        assert_eq!(ready.last_transition_time, t(T1));
        assert_eq!(
            ready.observed_generation, full.observed_generation,
            "the scores' generation"
        );
        assert_eq!(cond(&s, "AgentsReporting"), cond(&full, "AgentsReporting"));
        assert_eq!(write_due_for(&full, &s, None, t(T1)), WriteDue::Changed);
        let again = watches_failing(
            &s,
            "watch services-app failing since 2026-12-01T10:00:05Z: 403".into(),
            t(T1),
        );
        assert_eq!(
            write_due_for(&s, &again, None, t(T1)),
            WriteDue::No,
            "said once"
        );
    }
}
