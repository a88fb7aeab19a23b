//! The aggregator's in-memory index of the fleet: what every node's agent reported, and (with
//! the health issue) every vCluster's score. The Diagnostics gRPC handlers read only this
//! index; they never call the Kubernetes API.
//!
//! Report protocol rules, enforced by [`FleetIndex::apply`]:
//!
//! * every Report stream is a *session*; the first message of a session must be a snapshot,
//!   and a session reports for one node only;
//! * a snapshot replaces everything known about the node and may come at any sequence number;
//!   a delta must carry exactly the previous sequence + 1, otherwise the agent is asked to
//!   resync (send a snapshot again);
//! * the newest session to send a snapshot for a node owns it: an agent that restarted before
//!   its old TCP connection was noticed takes over, and the old session is ended;
//! * a node whose agent has been silent for longer than the stale-after grace is *stale*:
//!   its data is still shown, flagged, never passed off as fresh.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use fleetmirror_proto::v1::{
    MountPhase, NodeDetail, NodeReport, NodeSummary, PodState, node_report::Body,
};

/// Identifies one Report stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct SessionId(u64);

/// Limits that keep one agent (or anything posing as one) from exhausting the aggregator.
const MAX_PODS_PER_NODE: usize = 20_000;
const MAX_FIELD_LEN: usize = 1024;
const MAX_ERRORS: usize = 64;

/// Why a report was not applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    /// A delta arrived before any snapshot of this session.
    #[error("a delta arrived before a snapshot; send a snapshot")]
    NoSnapshot,
    /// A delta's sequence is not the previous one + 1.
    #[error("sequence gap: expected {expected}, got {got}; send a snapshot")]
    SequenceGap { expected: u64, got: u64 },
    /// Another, newer session owns the node.
    #[error("node {node} is now reported by a newer stream")]
    Superseded { node: String },
    /// The report is malformed; the session is ended.
    #[error("invalid report: {0}")]
    Invalid(String),
}

impl ApplyError {
    /// True when the agent should send a snapshot on the same stream.
    pub fn needs_resync(&self) -> bool {
        matches!(
            self,
            ApplyError::NoSnapshot | ApplyError::SequenceGap { .. }
        )
    }

    /// A bounded label for metrics.
    pub fn category(&self) -> &'static str {
        match self {
            ApplyError::NoSnapshot => "no_snapshot",
            ApplyError::SequenceGap { .. } => "sequence_gap",
            ApplyError::Superseded { .. } => "superseded",
            ApplyError::Invalid(_) => "invalid",
        }
    }
}

/// A reported pod as the index keeps it: exact-size strings, and the names many pods share
/// (namespace, vCluster, virtual namespace, phase, layout) interned. This is most of the
/// aggregator's memory at fleet size (20 000 pods), so it is kept small; the protobuf message
/// is rebuilt only for GetNode / GetVCluster.
#[derive(Debug, Clone)]
struct StoredPod {
    host_namespace: Arc<str>,
    host_name: Box<str>,
    vcluster: Arc<str>,
    virtual_namespace: Arc<str>,
    virtual_name: Box<str>,
    virtual_uid: Box<str>,
    phase: Arc<str>,
    ready: bool,
    control_plane: bool,
    mounts: Box<[StoredMount]>,
}

#[derive(Debug, Clone)]
struct StoredMount {
    layout: Arc<str>,
    /// The target's directory, shared by every pod of a vCluster on a layout.
    target_dir: Arc<str>,
    /// The target's last component; empty when it is the pod's virtual UID (the usual case).
    target_name: Box<str>,
    phase: i32,
    reason: Box<str>,
}

/// Shared copies of repeated names. Pruned of names no pod uses any more, so an agent that
/// sends ever-new names cannot grow it without bound.
#[derive(Debug, Default)]
struct Interner(std::collections::HashSet<Arc<str>>);

impl Interner {
    fn get(&mut self, s: String) -> Arc<str> {
        if let Some(a) = self.0.get(s.as_str()) {
            return a.clone();
        }
        let a: Arc<str> = Arc::from(s);
        self.0.insert(a.clone());
        a
    }

    fn prune(&mut self) {
        self.0.retain(|a| Arc::strong_count(a) > 1);
    }
}

impl StoredPod {
    fn new(p: PodState, i: &mut Interner) -> (Box<str>, StoredPod) {
        let vuid = p.virtual_uid.as_str();
        let mounts = p
            .mounts
            .into_iter()
            .map(|m| {
                let (dir, name) = match m.target.rsplit_once('/') {
                    Some((dir, name)) if name == vuid && !name.is_empty() && !dir.is_empty() => {
                        (dir.to_owned(), String::new())
                    }
                    _ => (String::new(), m.target),
                };
                (m.layout, dir, name, m.phase, m.reason)
            })
            .map(|(layout, dir, name, phase, reason)| StoredMount {
                layout: i.get(layout),
                target_dir: i.get(dir),
                target_name: name.into_boxed_str(),
                phase,
                reason: reason.into_boxed_str(),
            })
            .collect();
        let pod = StoredPod {
            host_namespace: i.get(p.host_namespace),
            host_name: p.host_name.into_boxed_str(),
            vcluster: i.get(p.vcluster),
            virtual_namespace: i.get(p.virtual_namespace),
            virtual_name: p.virtual_name.into_boxed_str(),
            virtual_uid: p.virtual_uid.into_boxed_str(),
            phase: i.get(p.phase),
            ready: p.ready,
            control_plane: p.control_plane,
            mounts,
        };
        (p.host_uid.into_boxed_str(), pod)
    }

    fn to_proto(&self, host_uid: &str) -> PodState {
        PodState {
            host_namespace: self.host_namespace.to_string(),
            host_name: self.host_name.to_string(),
            host_uid: host_uid.to_owned(),
            vcluster: self.vcluster.to_string(),
            virtual_namespace: self.virtual_namespace.to_string(),
            virtual_name: self.virtual_name.to_string(),
            virtual_uid: self.virtual_uid.to_string(),
            phase: self.phase.to_string(),
            ready: self.ready,
            control_plane: self.control_plane,
            mounts: self
                .mounts
                .iter()
                .map(|m| fleetmirror_proto::v1::MountState {
                    layout: m.layout.to_string(),
                    target: if m.target_name.is_empty() && !m.target_dir.is_empty() {
                        format!("{}/{}", m.target_dir, self.virtual_uid)
                    } else {
                        format!("{}{}", m.target_dir, m.target_name)
                    },
                    phase: m.phase,
                    reason: m.reason.to_string(),
                })
                .collect(),
        }
    }
}

/// What one node's agent reported.
#[derive(Debug, Clone)]
struct NodeEntry {
    agent_version: String,
    /// The session that owns the node; `None` once its stream ended.
    owner: Option<SessionId>,
    /// When the last report arrived, on the monotonic clock: staleness never jumps with the
    /// wall clock.
    last_report: Instant,
    /// The same moment on the wall clock, for display.
    last_report_at: SystemTime,
    last_sequence: u64,
    /// When its owner's snapshot arrived.
    snapshot_at: Instant,
    /// Pods by host UID.
    pods: BTreeMap<Box<str>, StoredPod>,
    errors: Vec<String>,
}

#[derive(Debug, Default)]
struct Inner {
    nodes: BTreeMap<String, NodeEntry>,
    /// The node each live session reports for (set by its first snapshot).
    sessions: BTreeMap<SessionId, String>,
    next_session: u64,
    names: Interner,
}

/// The fleet as the aggregator knows it. Cheap to read concurrently.
#[derive(Debug)]
pub struct FleetIndex {
    inner: RwLock<Inner>,
    stale_after: Duration,
    changed: tokio::sync::Notify,
    scores: RwLock<BTreeMap<(String, String), VClusterScore>>,
}

/// One vCluster as last scored by the health controller (for Diagnostics).
#[derive(Debug, Clone)]
pub struct VClusterScore {
    /// The summary Diagnostics returns.
    pub summary: fleetmirror_proto::v1::VClusterSummary,
}

/// What the health controller needs of one reported pod (small: no names, no mount paths).
#[derive(Debug, Clone)]
pub struct ReportedPod {
    /// The scoring facts (`stale` when its node's agent is silent past the grace period).
    pub fact: fleetmirror_core::health::PodFact,
    /// Mounts in MOUNTED state.
    pub mounted: u32,
    /// All mounts.
    pub mounts: u32,
}

/// Pod facts of the whole fleet, as the agents reported them.
#[derive(Debug, Default, Clone)]
pub struct AgentFacts {
    /// Every reported vCluster-related pod.
    pub pods: Vec<ReportedPod>,
    /// Every node that reported.
    pub nodes: std::collections::BTreeSet<String>,
    /// Nodes whose agent is not silent past the grace period.
    pub fresh_nodes: usize,
}

impl FleetIndex {
    /// An empty index; nodes silent for longer than `stale_after` are reported stale.
    pub fn new(stale_after: Duration) -> Self {
        Self {
            inner: RwLock::default(),
            stale_after,
            changed: tokio::sync::Notify::new(),
            scores: RwLock::default(),
        }
    }

    /// Resolves when a report changed the index since the last call (one waiter: the health
    /// controller).
    pub async fn changed(&self) {
        self.changed.notified().await
    }

    /// Every reported pod with its node, as of `now`.
    pub fn agent_facts(&self, now: Instant) -> AgentFacts {
        let inner = self.read();
        let mut facts = AgentFacts::default();
        for (node, e) in &inner.nodes {
            let stale = self.is_stale(e, now);
            facts.nodes.insert(node.clone());
            facts.fresh_nodes += usize::from(!stale);
            facts.pods.extend(e.pods.values().map(|p| {
                ReportedPod {
                    fact: fleetmirror_core::health::PodFact {
                        namespace: p.host_namespace.clone(),
                        vcluster: p.vcluster.clone(),
                        control_plane: p.control_plane,
                        running_ready: p.ready && &*p.phase == "Running",
                        virtual_namespace: p.virtual_namespace.clone(),
                        stale,
                    },
                    mounted: p
                        .mounts
                        .iter()
                        .filter(|m| m.phase == MountPhase::Mounted as i32)
                        .count() as u32,
                    mounts: p.mounts.len() as u32,
                }
            }));
        }
        facts
    }

    /// Replaces the scores Diagnostics serves.
    pub fn set_scores(&self, scores: BTreeMap<(String, String), VClusterScore>) {
        *self.scores.write().unwrap_or_else(|p| p.into_inner()) = scores;
    }

    /// Every scored vCluster (optionally of one namespace), sorted by namespace then name.
    pub fn list_vclusters(
        &self,
        namespace: Option<&str>,
    ) -> Vec<fleetmirror_proto::v1::VClusterSummary> {
        let scores = self.scores.read().unwrap_or_else(|p| p.into_inner());
        scores
            .iter()
            .filter(|((ns, _), _)| namespace.is_none_or(|want| want == ns))
            .map(|(_, s)| s.summary.clone())
            .collect()
    }

    /// One scored vCluster with its reported pods grouped by node.
    pub fn get_vcluster(
        &self,
        namespace: &str,
        name: &str,
        now: Instant,
    ) -> Option<fleetmirror_proto::v1::VClusterDetail> {
        let summary = {
            let scores = self.scores.read().unwrap_or_else(|p| p.into_inner());
            scores
                .get(&(namespace.to_owned(), name.to_owned()))?
                .summary
                .clone()
        };
        let inner = self.read();
        let nodes = inner
            .nodes
            .iter()
            .filter_map(|(node, e)| {
                let mut pods: Vec<PodState> = e
                    .pods
                    .iter()
                    .filter(|(_, p)| &*p.host_namespace == namespace && &*p.vcluster == name)
                    .map(|(uid, p)| p.to_proto(uid))
                    .collect();
                if pods.is_empty() {
                    return None;
                }
                pods.sort_by(|a, b| a.host_name.cmp(&b.host_name));
                Some(fleetmirror_proto::v1::NodePods {
                    node_name: node.clone(),
                    stale: self.is_stale(e, now),
                    pods,
                })
            })
            .collect();
        Some(fleetmirror_proto::v1::VClusterDetail {
            summary: Some(summary),
            nodes,
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts a session for a new Report stream.
    pub fn open_session(&self) -> SessionId {
        let mut inner = self.write();
        inner.next_session += 1;
        SessionId(inner.next_session)
    }

    /// Ends a session: its node (if it still owns it) is marked disconnected. The node's data
    /// stays, and turns stale once the grace period has passed.
    pub fn close_session(&self, session: SessionId) {
        self.changed.notify_one();
        let mut inner = self.write();
        if let Some(node) = inner.sessions.remove(&session)
            && let Some(entry) = inner.nodes.get_mut(&node)
            && entry.owner == Some(session)
        {
            entry.owner = None;
        }
    }

    /// The node a session reports for, once it sent a snapshot.
    pub fn session_node(&self, session: SessionId) -> Option<String> {
        self.read().sessions.get(&session).cloned()
    }

    /// Applies one report of `session`, received at `now`.
    pub fn apply(
        &self,
        session: SessionId,
        report: NodeReport,
        now: Instant,
    ) -> Result<(), ApplyError> {
        if self.apply_inner(session, report, now)? {
            self.changed.notify_one();
        }
        Ok(())
    }

    /// Applies a report; true when it changed something a score depends on. Heartbeats (empty
    /// deltas) do not, unless they bring a stale node back; the health controller wakes up on
    /// its own when a node turns stale (see `next_stale_at`).
    fn apply_inner(
        &self,
        session: SessionId,
        report: NodeReport,
        now: Instant,
    ) -> Result<bool, ApplyError> {
        validate_report(&report)?;
        let mut inner = self.write();
        let bound = inner.sessions.get(&session).cloned();
        if let Some(node) = &bound
            && node != &report.node_name
        {
            return Err(ApplyError::Invalid(format!(
                "this stream reports for node {node:?}, not {:?}",
                report.node_name
            )));
        }
        match report.body {
            Some(Body::Snapshot(snapshot)) => {
                inner.sessions.insert(session, report.node_name.clone());
                let names = &mut inner.names;
                let pods = snapshot
                    .pods
                    .into_iter()
                    .map(|p| StoredPod::new(p, names))
                    .collect();
                inner.nodes.insert(
                    report.node_name,
                    NodeEntry {
                        agent_version: report.agent_version,
                        owner: Some(session),
                        last_report: now,
                        last_report_at: SystemTime::now(),
                        last_sequence: report.sequence,
                        snapshot_at: now,
                        pods,
                        errors: snapshot.errors,
                    },
                );
                inner.names.prune();
                Ok(true)
            }
            Some(Body::Delta(delta)) => {
                if bound.is_none() {
                    return Err(ApplyError::NoSnapshot);
                }
                let Inner { nodes, names, .. } = &mut *inner;
                let entry = nodes
                    .get_mut(&report.node_name)
                    .ok_or(ApplyError::NoSnapshot)?;
                if entry.owner != Some(session) {
                    return Err(ApplyError::Superseded {
                        node: report.node_name,
                    });
                }
                let expected = entry.last_sequence + 1;
                if report.sequence != expected {
                    return Err(ApplyError::SequenceGap {
                        expected,
                        got: report.sequence,
                    });
                }
                let added = delta
                    .upserted
                    .iter()
                    .filter(|p| !entry.pods.contains_key(p.host_uid.as_str()))
                    .count();
                if entry.pods.len() + added > MAX_PODS_PER_NODE {
                    return Err(ApplyError::Invalid(format!(
                        "more than {MAX_PODS_PER_NODE} pods on one node"
                    )));
                }
                let content = !delta.upserted.is_empty() || !delta.removed_host_uids.is_empty();
                for uid in &delta.removed_host_uids {
                    entry.pods.remove(uid.as_str());
                }
                for pod in delta.upserted {
                    let (uid, pod) = StoredPod::new(pod, names);
                    entry.pods.insert(uid, pod);
                }
                if !delta.removed_host_uids.is_empty() {
                    names.prune();
                }
                if delta.errors_cleared {
                    entry.errors.clear();
                } else if !delta.errors.is_empty() {
                    entry.errors = delta.errors;
                }
                let revived = self.is_stale(entry, now);
                entry.last_sequence = report.sequence;
                entry.last_report = now;
                entry.last_report_at = SystemTime::now();
                Ok(content || revived)
            }
            None => Err(ApplyError::Invalid(
                "report has neither snapshot nor delta".into(),
            )),
        }
    }

    /// Every node, sorted by name, as of `now`.
    pub fn list_nodes(&self, now: Instant) -> Vec<NodeSummary> {
        self.read()
            .nodes
            .iter()
            .map(|(name, e)| self.summary(name, e, now))
            .collect()
    }

    /// One node's full report, or `None` when no agent reported for it.
    pub fn get_node(&self, name: &str, now: Instant) -> Option<NodeDetail> {
        let inner = self.read();
        let entry = inner.nodes.get(name)?;
        let mut pods: Vec<PodState> = entry.pods.iter().map(|(uid, p)| p.to_proto(uid)).collect();
        pods.sort_by(|a, b| {
            (&a.host_namespace, &a.host_name).cmp(&(&b.host_namespace, &b.host_name))
        });
        Some(NodeDetail {
            summary: Some(self.summary(name, entry, now)),
            pods,
        })
    }

    /// Nodes whose agent has a live stream (the count the leader publishes on the Lease).
    pub fn live_nodes(&self) -> u32 {
        self.read()
            .nodes
            .values()
            .filter(|e| e.owner.is_some())
            .count() as u32
    }

    /// Nodes whose agent sent a snapshot at or after `since` and still streams.
    pub fn nodes_snapshotted_since(&self, since: Instant) -> usize {
        self.read()
            .nodes
            .values()
            .filter(|e| e.owner.is_some() && e.snapshot_at >= since)
            .count()
    }

    /// Every node with an entry.
    pub fn node_names(&self) -> Vec<String> {
        self.read().nodes.keys().cloned().collect()
    }

    /// Drops node `name` and its pods (its Node object was deleted). True when it had an entry.
    pub fn forget_node(&self, name: &str) -> bool {
        let removed = {
            let mut inner = self.write();
            let removed = inner.nodes.remove(name).is_some();
            inner.sessions.retain(|_, n| n != name);
            inner.names.prune();
            removed
        };
        if removed {
            self.changed.notify_one();
        }
        removed
    }

    /// Drops the nodes silent for longer than `after` at `now` (a dead agent's entry does not
    /// stay forever); returns their names.
    pub fn expire(&self, now: Instant, after: Duration) -> Vec<String> {
        let gone: Vec<String> = {
            let mut inner = self.write();
            let gone: Vec<String> = inner
                .nodes
                .iter()
                .filter(|(_, e)| {
                    e.owner.is_none() && now.saturating_duration_since(e.last_report) > after
                })
                .map(|(n, _)| n.clone())
                .collect();
            for n in &gone {
                inner.nodes.remove(n);
            }
            if !gone.is_empty() {
                inner.names.prune();
            }
            gone
        };
        if !gone.is_empty() {
            self.changed.notify_one();
        }
        gone
    }

    /// When the next node that is fresh at `now` turns stale, if it stays silent.
    pub fn next_stale_at(&self, now: Instant) -> Option<Instant> {
        self.read()
            .nodes
            .values()
            .filter(|e| !self.is_stale(e, now))
            // `is_stale` is strict: one millisecond past the grace period.
            .map(|e| e.last_report + self.stale_after + Duration::from_millis(1))
            .min()
    }

    fn is_stale(&self, entry: &NodeEntry, now: Instant) -> bool {
        now.saturating_duration_since(entry.last_report) > self.stale_after
    }

    fn summary(&self, name: &str, e: &NodeEntry, now: Instant) -> NodeSummary {
        let count = |phase: MountPhase| {
            e.pods
                .values()
                .flat_map(|p| p.mounts.iter())
                .filter(|m| m.phase == phase as i32)
                .count() as u32
        };
        NodeSummary {
            name: name.to_owned(),
            connected: e.owner.is_some(),
            stale: self.is_stale(e, now),
            last_report: Some(e.last_report_at.into()),
            agent_version: e.agent_version.clone(),
            pods: e.pods.len() as u32,
            mounts_mounted: count(MountPhase::Mounted),
            mounts_pending: count(MountPhase::Pending),
            mounts_failed: count(MountPhase::Failed),
            mounts_conflict: count(MountPhase::Conflict),
            errors: e.errors.clone(),
            last_sequence: e.last_sequence,
        }
    }
}

/// Structural checks on a report from the wire: bounded sizes, required keys.
fn validate_report(r: &NodeReport) -> Result<(), ApplyError> {
    let bad = |m: String| Err(ApplyError::Invalid(m));
    if r.node_name.is_empty() || r.node_name.len() > 253 {
        return bad("node_name must be 1..253 characters".into());
    }
    if r.agent_version.len() > 64 {
        return bad("agent_version longer than 64 characters".into());
    }
    let (pods, errors): (&[PodState], &[String]) = match &r.body {
        Some(Body::Snapshot(s)) => (&s.pods, &s.errors),
        Some(Body::Delta(d)) => (&d.upserted, &d.errors),
        None => return Ok(()),
    };
    if pods.len() > MAX_PODS_PER_NODE {
        return bad(format!(
            "{} pods in one report (at most {MAX_PODS_PER_NODE})",
            pods.len()
        ));
    }
    if errors.len() > MAX_ERRORS || errors.iter().any(|e| e.len() > MAX_FIELD_LEN) {
        return bad(format!(
            "at most {MAX_ERRORS} node errors of {MAX_FIELD_LEN} characters"
        ));
    }
    for p in pods {
        if p.host_uid.is_empty() {
            return bad(format!(
                "pod {}/{} has no host_uid",
                p.host_namespace, p.host_name
            ));
        }
        let fields = [
            &p.host_namespace,
            &p.host_name,
            &p.host_uid,
            &p.vcluster,
            &p.virtual_namespace,
            &p.virtual_name,
            &p.virtual_uid,
            &p.phase,
        ];
        if fields.iter().any(|f| f.len() > MAX_FIELD_LEN)
            || p.mounts.len() > 8
            || p.mounts.iter().any(|m| {
                m.target.len() > 4096 || m.reason.len() > MAX_FIELD_LEN || m.layout.len() > 64
            })
        {
            return bad(format!("pod {} has oversized fields", p.host_uid));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetmirror_proto::v1::{MountState, NodeDelta, NodeSnapshot};

    fn pod(uid: &str) -> PodState {
        PodState {
            host_namespace: "team-a".into(),
            host_name: format!("p-{uid}"),
            host_uid: uid.into(),
            vcluster: "vc".into(),
            mounts: vec![MountState {
                layout: "loft".into(),
                phase: MountPhase::Mounted as i32,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn snapshot(node: &str, seq: u64, pods: Vec<PodState>) -> NodeReport {
        NodeReport {
            node_name: node.into(),
            agent_version: "0.1.0".into(),
            sequence: seq,
            body: Some(Body::Snapshot(NodeSnapshot {
                pods,
                errors: vec![],
            })),
        }
    }

    fn delta(node: &str, seq: u64, upserted: Vec<PodState>, removed: Vec<&str>) -> NodeReport {
        NodeReport {
            node_name: node.into(),
            agent_version: "0.1.0".into(),
            sequence: seq,
            body: Some(Body::Delta(NodeDelta {
                upserted,
                removed_host_uids: removed.into_iter().map(String::from).collect(),
                ..Default::default()
            })),
        }
    }

    /// A fixed start for the test clock.
    fn t0() -> Instant {
        static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        *START.get_or_init(Instant::now)
    }

    #[test]
    fn snapshot_then_deltas() {
        let idx = FleetIndex::new(Duration::from_secs(60));
        let s = idx.open_session();
        idx.apply(s, snapshot("n1", 1, vec![pod("a"), pod("b")]), t0())
            .unwrap();
        idx.apply(s, delta("n1", 2, vec![pod("c")], vec!["a"]), t0())
            .unwrap();
        let d = idx.get_node("n1", t0()).unwrap();
        let uids: Vec<_> = d.pods.iter().map(|p| p.host_uid.as_str()).collect();
        assert_eq!(uids, ["b", "c"]);
        let sum = d.summary.unwrap();
        assert!(sum.connected && !sum.stale);
        assert_eq!((sum.pods, sum.mounts_mounted, sum.last_sequence), (2, 2, 2));
    }

    #[test]
    fn delta_first_or_with_gap_asks_for_resync() {
        let idx = FleetIndex::new(Duration::from_secs(60));
        let s = idx.open_session();
        let e = idx
            .apply(s, delta("n1", 1, vec![], vec![]), t0())
            .unwrap_err();
        assert_eq!(e, ApplyError::NoSnapshot);
        assert!(e.needs_resync());
        idx.apply(s, snapshot("n1", 1, vec![]), t0()).unwrap();
        let e = idx
            .apply(s, delta("n1", 3, vec![], vec![]), t0())
            .unwrap_err();
        assert_eq!(
            e,
            ApplyError::SequenceGap {
                expected: 2,
                got: 3
            }
        );
        assert!(e.needs_resync());
        // A snapshot at any sequence resets the expectation.
        idx.apply(s, snapshot("n1", 7, vec![]), t0()).unwrap();
        idx.apply(s, delta("n1", 8, vec![], vec![]), t0()).unwrap();
    }

    #[test]
    fn newer_session_takes_over_and_old_one_is_refused() {
        let idx = FleetIndex::new(Duration::from_secs(60));
        let old = idx.open_session();
        idx.apply(old, snapshot("n1", 1, vec![pod("a")]), t0())
            .unwrap();
        let new = idx.open_session();
        idx.apply(new, snapshot("n1", 1, vec![pod("b")]), t0())
            .unwrap();
        let e = idx
            .apply(old, delta("n1", 2, vec![], vec![]), t0())
            .unwrap_err();
        assert!(matches!(e, ApplyError::Superseded { .. }) && !e.needs_resync());
        // Closing the old session does not disconnect the node the new one owns.
        idx.close_session(old);
        assert!(idx.list_nodes(t0())[0].connected);
        idx.close_session(new);
        assert!(!idx.list_nodes(t0())[0].connected);
        assert_eq!(
            idx.get_node("n1", t0()).unwrap().pods[0].host_uid,
            "b",
            "data is kept"
        );
    }

    #[test]
    fn one_stream_reports_one_node() {
        let idx = FleetIndex::new(Duration::from_secs(60));
        let s = idx.open_session();
        idx.apply(s, snapshot("n1", 1, vec![]), t0()).unwrap();
        let e = idx.apply(s, snapshot("n2", 2, vec![]), t0()).unwrap_err();
        assert!(matches!(e, ApplyError::Invalid(_)));
        assert!(idx.get_node("n2", t0()).is_none());
    }

    #[test]
    fn stale_pods_are_flagged_in_the_facts_and_dead_nodes_leave() {
        let idx = FleetIndex::new(Duration::from_secs(60));
        let (a, b) = (idx.open_session(), idx.open_session());
        idx.apply(a, snapshot("n1", 1, vec![pod("u1")]), t0())
            .unwrap();
        idx.apply(b, snapshot("n2", 1, vec![pod("u2")]), t0())
            .unwrap();
        assert_eq!(idx.live_nodes(), 2);
        assert_eq!(idx.nodes_snapshotted_since(t0()), 2);
        assert_eq!(
            idx.nodes_snapshotted_since(t0() + Duration::from_secs(1)),
            0
        );
        let later = t0() + Duration::from_secs(61);
        assert!(idx.agent_facts(later).pods.iter().all(|p| p.fact.stale));
        assert!(idx.agent_facts(t0()).pods.iter().all(|p| !p.fact.stale));

        assert!(idx.forget_node("n2"));
        assert!(!idx.forget_node("n2"));
        assert_eq!(idx.node_names(), ["n1"]);
        idx.close_session(a);
        assert_eq!(idx.live_nodes(), 0);
        assert!(
            idx.expire(t0() + Duration::from_secs(599), Duration::from_secs(600))
                .is_empty()
        );
        assert_eq!(
            idx.expire(t0() + Duration::from_secs(601), Duration::from_secs(600)),
            ["n1"]
        );
        assert!(idx.agent_facts(later).pods.is_empty());
    }

    #[test]
    fn a_streaming_node_never_expires() {
        let idx = FleetIndex::new(Duration::from_secs(60));
        let s = idx.open_session();
        idx.apply(s, snapshot("n1", 1, vec![]), t0()).unwrap();
        assert!(
            idx.expire(t0() + Duration::from_secs(3600), Duration::from_secs(600))
                .is_empty(),
            "silent but connected: stale, kept"
        );
    }

    #[test]
    fn silent_nodes_turn_stale() {
        let idx = FleetIndex::new(Duration::from_secs(60));
        let s = idx.open_session();
        idx.apply(s, snapshot("n1", 1, vec![]), t0()).unwrap();
        assert!(!idx.list_nodes(t0() + Duration::from_secs(60))[0].stale);
        assert!(idx.list_nodes(t0() + Duration::from_secs(61))[0].stale);
        idx.apply(
            s,
            delta("n1", 2, vec![], vec![]),
            t0() + Duration::from_secs(61),
        )
        .unwrap();
        assert!(
            !idx.list_nodes(t0() + Duration::from_secs(62))[0].stale,
            "a heartbeat refreshes"
        );
    }

    /// True when `changed()` has a notification waiting.
    async fn notified(idx: &FleetIndex) -> bool {
        tokio::time::timeout(Duration::from_millis(50), idx.changed())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn heartbeats_wake_the_controller_only_when_they_revive_a_stale_node() {
        let idx = FleetIndex::new(Duration::from_secs(60));
        let s = idx.open_session();
        idx.apply(s, snapshot("n1", 1, vec![]), t0()).unwrap();
        assert!(notified(&idx).await, "a snapshot is a change");
        let t = |secs| t0() + Duration::from_secs(secs);
        idx.apply(s, delta("n1", 2, vec![], vec![]), t(30)).unwrap();
        assert!(
            !notified(&idx).await,
            "a heartbeat of a fresh node changes nothing"
        );
        idx.apply(s, delta("n1", 3, vec![], vec![]), t(100))
            .unwrap();
        assert!(
            notified(&idx).await,
            "a heartbeat that revives a stale node is a change"
        );
    }

    #[test]
    fn next_stale_deadline_is_the_first_fresh_node_to_go_silent() {
        let idx = FleetIndex::new(Duration::from_secs(60));
        assert_eq!(
            idx.next_stale_at(t0()),
            None,
            "no nodes, nothing to wait for"
        );
        let (a, b) = (idx.open_session(), idx.open_session());
        idx.apply(a, snapshot("n1", 1, vec![]), t0()).unwrap();
        let t10 = t0() + Duration::from_secs(10);
        idx.apply(b, snapshot("n2", 1, vec![]), t10).unwrap();
        let n1_stale = t0() + Duration::from_millis(60_001);
        assert_eq!(idx.next_stale_at(t10), Some(n1_stale));
        assert!(idx.list_nodes(n1_stale)[0].stale, "stale at the deadline");
        // Once n1 is stale, the next deadline is n2's; after both, none.
        assert_eq!(
            idx.next_stale_at(n1_stale),
            Some(t10 + Duration::from_millis(60_001))
        );
        assert_eq!(idx.next_stale_at(t0() + Duration::from_secs(200)), None);
    }

    #[test]
    fn stored_pods_round_trip() {
        let mut names = Interner::default();
        let vuid = "aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa";
        for target in [
            format!("/var/lib/loft/vc/kubelet/pods/{vuid}"),
            "/elsewhere/x".into(),
            String::new(),
        ] {
            let p = PodState {
                virtual_uid: vuid.into(),
                mounts: vec![MountState {
                    layout: "loft".into(),
                    target: target.clone(),
                    phase: 2,
                    reason: "why".into(),
                }],
                ..pod("u1")
            };
            let (uid, stored) = StoredPod::new(p.clone(), &mut names);
            assert_eq!(stored.to_proto(&uid), p, "{target:?}");
        }
    }

    #[test]
    fn hostile_reports_are_refused() {
        let idx = FleetIndex::new(Duration::from_secs(60));
        let s = idx.open_session();
        for bad in [
            snapshot("", 1, vec![]),
            snapshot(&"n".repeat(300), 1, vec![]),
            snapshot("n1", 1, vec![pod("")]),
            snapshot(
                "n1",
                1,
                vec![PodState {
                    host_name: "x".repeat(5000),
                    ..pod("a")
                }],
            ),
            snapshot(
                "n1",
                1,
                (0..=MAX_PODS_PER_NODE)
                    .map(|i| pod(&i.to_string()))
                    .collect(),
            ),
            NodeReport {
                node_name: "n1".into(),
                body: None,
                ..Default::default()
            },
        ] {
            assert!(matches!(
                idx.apply(s, bad, t0()),
                Err(ApplyError::Invalid(_))
            ));
        }
        assert!(idx.list_nodes(t0()).is_empty());
    }
}
