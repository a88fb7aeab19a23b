//! The fleet-health controller (health.md): scores every vCluster and writes the status of
//! every `VClusterHealth`. Its decisions (the status, conditions, Events, when to write, what
//! counts as worse) are `fleetmirror_core::health::status`; this room owns the watches
//! ([`facts`]), the recompute loop and the writes, on the platform every controller shares
//! ([`crate::platform`]).
//!
//! Inputs, all held in memory and small: control-plane workloads (metadata watches of
//! StatefulSets and Deployments labelled `app=vcluster`), Services with one of the labels
//! vCluster puts on what matters here, the `VClusterHealth` objects, and pod facts — from the
//! agents' reports in the [`FleetIndex`] by default (plus Node metadata, so a deleted node's
//! reports are dropped), or with `--pod-source=api` from a label-filtered pod watch. The
//! aggregator never lists all pods or all Services.
//!
//! Freshness: any change of an input triggers a recompute (debounced 100 ms), and so do a
//! node's agent going silent past `--agent-stale-after`, a watch failing past its grace
//! period, a write's backoff running out, leadership changing, and the next object whose
//! `intervalSeconds` heartbeat is due; nothing else wakes it. A status is written only when it changed (timestamps aside) or
//! `intervalSeconds` passed since `lastUpdated` (the heartbeat). Every replica scores (so
//! Diagnostics answers anywhere); only the leader writes, fenced by its term.
//!
//! Failover without false alarms (agent mode): a new leader — or a restarted single replica —
//! has no agent reports yet. For `--agent-stale-after` from the start of its term, or until as
//! many nodes as reported to the previous leader (the Lease says how many) have sent it a
//! snapshot, it writes no status that is worse than the one in the API (`is_worse`), and so
//! emits no `LevelChanged` Warning either; better or equal statuses are written at once.
//! Afterwards it judges as usual. Stale pods never turn a signal true.
//!
//! Watches that cannot list or watch past their grace period: the status keeps its last
//! scores and `lastUpdated`, `Ready` turns `Unknown` (reason `WatchFailing`, naming the
//! watch), and no heartbeat presents that data as fresh. Nodes are dropped only when their
//! Node object was seen and then deleted, never because the Node watch is unreadable.

mod facts;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use fleetmirror_core::health::Selection;
use fleetmirror_core::health::status::{self as decide, Agents, ScoredVCluster, StatusInput};
use fleetmirror_core::status::{Time, WriteDue};
use fleetmirror_proto::v1::VClusterSummary;
use fleetmirror_runtime::shutdown::BoxError;
use kube::{Resource, ResourceExt};
use tokio::sync::Notify;

pub use facts::pod_fact_from_api;

use crate::args::PodSource;
use crate::crd::VClusterHealth;
use crate::index::{FleetIndex, VClusterScore};
use crate::metrics::Metrics;
use crate::platform::{Context, EventRecorder, StatusWriter, Term, WriteError};

/// The name used in metrics and `--controllers`.
pub const NAME: &str = "health";
const DEBOUNCE: Duration = Duration::from_millis(100);

/// Runs the controller until shutdown.
pub struct HealthController {
    /// The platform.
    pub ctx: Context,
    /// Agent reports and the Diagnostics scores.
    pub index: Arc<FleetIndex>,
    /// Where pod facts come from.
    pub pod_source: PodSource,
    /// The aggregator's health metrics (levels, scores, recompute time).
    pub metrics: Metrics,
    /// `--agent-stale-after`: also how long a new leader waits for agents at most.
    pub stale_after: Duration,
}

impl std::fmt::Debug for HealthController {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthController")
            .field("pod_source", &self.pod_source)
            .finish()
    }
}

/// What one reconcile of an object needs besides the object.
struct Pass<'a> {
    term: &'a Term,
    fleet: &'a [ScoredVCluster],
    agents: Agents,
    failing: Option<&'a str>,
    warming: bool,
    now: Time,
}

impl HealthController {
    /// Watches, scores and writes until shutdown.
    pub async fn run(self) -> Result<(), BoxError> {
        let shutdown = self.ctx.tasks.token().clone();
        let trigger = Arc::new(Notify::new());
        let inputs = facts::Inputs::start(&self.ctx.watches, &trigger, self.pod_source);
        tokio::select! {
            r = inputs.wait_until_ready() => if r.is_err() { return Ok(()) },
            _ = shutdown.cancelled() => return Ok(()),
        }
        tracing::info!(pod_source = ?self.pod_source, "health controller: watches synced");
        let writer = self.ctx.status_writer(NAME);
        let events = self.ctx.events(NAME);
        let mut leadership = self.ctx.leadership.clone();
        // Nodes whose Node object this replica has seen (a node is dropped only once seen
        // and then gone).
        let mut nodes_seen: BTreeSet<String> = BTreeSet::new();
        loop {
            // Every wake-up is a reason to recompute. The facts are taken once, at
            // `scored_at`: staleness is judged as of then.
            let now = Time::now();
            let started = Instant::now();
            let scored_at = started;
            // When the next heartbeat write is due (of an object this replica can write now).
            let mut next_heartbeat: Option<Time> = None;
            self.forget_dead_nodes(&inputs, &mut nodes_seen);
            let facts = facts::collect(&inputs, &self.index, self.pod_source, scored_at);
            let fleet = facts::score_all(&facts, &Selection::All);
            self.publish_scores(&fleet);
            if let Some(term) = leadership.term() {
                let failing = self.ctx.watches.failing(&inputs.names);
                let pass = Pass {
                    term: &term,
                    fleet: &fleet,
                    agents: match self.pod_source {
                        PodSource::Api => Agents::PodSourceApi,
                        PodSource::Agents => Agents::Reporting {
                            nodes: facts.fresh_nodes,
                        },
                    },
                    failing: failing.as_deref(),
                    warming: self.warming(&term),
                    now,
                };
                let vchs = inputs.vchs.state();
                let live: BTreeSet<String> = vchs.iter().map(|v| key(v)).collect();
                writer.retain(|k| live.contains(k));
                for vch in vchs {
                    let next = self.reconcile(&vch, &pass, &writer, &events).await;
                    next_heartbeat = match (next_heartbeat, next) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                }
            }
            self.metrics
                .recompute_seconds
                .observe(started.elapsed().as_secs_f64());
            // Wake up for what changes a status without any watch event: a heartbeat due, a
            // node turning stale (as of the facts scored, so a deadline passing while scoring
            // is not lost), a watch failing past its grace or recovering, a write's backoff
            // ending, the failover wait ending. Nothing else: a quiet fleet costs nothing.
            let wake_at = [
                next_heartbeat.map(|t| Instant::now() + Time::now().duration_until(t)),
                self.index.next_stale_at(scored_at),
                self.ctx.watches.next_failure_deadline(),
                writer.next_retry().map(|t| t.into_std()),
                leadership.term().and_then(|t| {
                    self.warming(&t)
                        .then(|| t.started().into_std() + self.stale_after)
                }),
            ]
            .into_iter()
            .flatten()
            .min();
            let woken = async {
                match wake_at {
                    Some(t) => tokio::time::sleep_until((t + DEBOUNCE).into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = trigger.notified() => tokio::time::sleep(DEBOUNCE).await,
                _ = self.index.changed() => tokio::time::sleep(DEBOUNCE).await,
                _ = woken => {}
                r = leadership.changed() => if r.is_err() { return Ok(()) },
                _ = shutdown.cancelled() => return Ok(()),
            }
        }
    }

    /// True while a new term waits for the agents that reported to the previous leader.
    fn warming(&self, term: &Term) -> bool {
        if self.pod_source != PodSource::Agents || term.started().elapsed() >= self.stale_after {
            return false;
        }
        match term.previous_agent_nodes() {
            Some(n) => {
                self.index
                    .nodes_snapshotted_since(term.started().into_std())
                    < n as usize
            }
            None => true,
        }
    }

    /// Drops the reports of nodes whose Node object was seen and is now gone (silent ones are
    /// expired by the aggregator's index janitor). Never acts on a Node watch that cannot be
    /// read.
    fn forget_dead_nodes(&self, inputs: &facts::Inputs, seen: &mut BTreeSet<String>) {
        let Some(present) = inputs.node_names() else {
            return;
        };
        if self.ctx.watches.failing(&["nodes"]).is_some() {
            return;
        }
        for node in self.index.node_names() {
            if seen.contains(&node) && !present.contains(&node) && self.index.forget_node(&node) {
                tracing::info!(node, "the Node object is gone: dropped its agent's reports");
            }
        }
        seen.retain(|n| present.contains(n));
        seen.extend(present);
    }

    fn publish_scores(&self, scored: &[ScoredVCluster]) {
        let mut by_level: BTreeMap<&'static str, i64> = BTreeMap::new();
        let mut by_score: BTreeMap<i32, i64> = BTreeMap::new();
        let scores = scored
            .iter()
            .map(|s| {
                *by_level.entry(s.signals.level().as_str()).or_default() += 1;
                *by_score.entry(s.signals.score()).or_default() += 1;
                let summary = VClusterSummary {
                    namespace: s.key.namespace.clone(),
                    name: s.key.name.clone(),
                    signals: Some(fleetmirror_proto::v1::Signals {
                        api_sync: s.signals.api_sync,
                        control_plane_ready: s.signals.control_plane_ready,
                        dns_sync: s.signals.dns_sync,
                        node_sync: s.signals.node_sync,
                        system_workload_sync: s.signals.system_workload_sync,
                        tenant_workload_sync: s.signals.tenant_workload_sync,
                    }),
                    score: s.signals.score(),
                    level: s.signals.level().as_str().into(),
                    pods_seen: s.pods_seen,
                    mount_coverage: s.coverage.map(|(mounted, expected)| {
                        fleetmirror_proto::v1::MountCoverage { mounted, expected }
                    }),
                    last_change: Some(SystemTime::now().into()),
                    pods_stale: s.stale,
                    message: s.signals.message(),
                };
                ((s.key.namespace.clone(), s.key.name.clone()), summary)
            })
            .collect::<BTreeMap<_, _>>();
        // Keep last_change of vClusters whose score did not change.
        let previous: HashMap<(String, String), VClusterSummary> = self
            .index
            .list_vclusters(None)
            .into_iter()
            .map(|s| ((s.namespace.clone(), s.name.clone()), s))
            .collect();
        let scores = scores
            .into_iter()
            .map(|(k, mut summary)| {
                if let Some(old) = previous.get(&k)
                    && old.signals == summary.signals
                {
                    summary.last_change = old.last_change;
                }
                (k, VClusterScore { summary })
            })
            .collect();
        self.index.set_scores(scores);
        self.metrics.set_levels(&by_level);
        self.metrics.set_scores(&by_score);
    }

    /// Writes `vch`'s status if due; returns when its next heartbeat is due, if this pass left
    /// it in a state that has one (not while its inputs fail, its write backs off or is held).
    async fn reconcile(
        &self,
        vch: &VClusterHealth,
        pass: &Pass<'_>,
        writer: &StatusWriter,
        events: &EventRecorder,
    ) -> Option<Time> {
        let current = vch.status.clone().unwrap_or_default();
        let generation = vch.metadata.generation;
        let desired = match pass.failing {
            Some(why) => decide::watches_failing(&current, why.to_owned(), pass.now),
            None => decide::desired_status(StatusInput {
                spec_namespace: vch.spec.namespace.as_deref(),
                generation,
                current: &current,
                fleet: pass.fleet,
                agents: pass.agents,
                now: pass.now,
            }),
        };
        let interval = vch.spec.interval_seconds;
        let due = decide::write_due_for(&current, &desired, interval, pass.now);
        // Data that cannot be watched is never heartbeated as fresh: only the change to
        // Ready=Unknown is written, once.
        if pass.failing.is_some() && due != WriteDue::Changed {
            return None;
        }
        let Some(reason) = due.reason() else {
            return decide::heartbeat_at(current.last_updated, interval);
        };
        if pass.warming && decide::is_worse(&current, &desired) {
            tracing::debug!(vclusterhealth = %key(vch), "held: worse than the status in the API while agents reconnect");
            writer.metrics().status_write("held");
            return None;
        }
        match writer.apply(pass.term, vch, &desired, reason).await {
            Ok(()) => {
                if due == WriteDue::Changed {
                    tracing::info!(vclusterhealth = %key(vch), total = desired.summary.as_ref().map(|s| s.total), "status updated");
                    let reference = vch.object_ref(&());
                    for event in decide::events(&current, &desired) {
                        let _ = events.publish(pass.term, &reference, &event).await;
                    }
                }
                if pass.failing.is_some() {
                    return None;
                }
                decide::heartbeat_at(desired.last_updated, interval)
            }
            Err(WriteError::BackingOff { .. }) => None,
            Err(error) => {
                tracing::debug!(vclusterhealth = %key(vch), %error, "status not written");
                None
            }
        }
    }
}

fn key(vch: &VClusterHealth) -> String {
    format!("{}/{}", vch.namespace().unwrap_or_default(), vch.name_any())
}
