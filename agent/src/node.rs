//! The node reconciler: level-based, as agent.md asks.
//!
//! *Desired* state comes from a watch of this node's pods only (field selector
//! `spec.nodeName=<node>`), a metadata-only watch of vCluster control-plane workloads
//! (StatefulSets and Deployments labelled `app=vcluster`: the cross-tenant guard), and the
//! entries of `<kubelet-root>/pods`. *Observed* state is one read of mountinfo per pass.
//! Every pass is a full pass: [`fleetmirror_core::plan::plan`] diffs the two, the actions run
//! through the [`Kernel`], and the resulting [`NodeState`] is published for the reporter.
//!
//! Events only trigger passes (coalesced): pod and workload watch events, inotify on the pods
//! directory (an overflowed queue is just another trigger, since every pass is full), the
//! end of a pod's retry backoff, and the periodic safety-net pass. Nothing else runs when
//! nothing changes.
//!
//! A mount that fails is retried with per-pod exponential backoff (1 s doubling to 5 min);
//! one failing pod never blocks the others. A graceful shutdown unmounts nothing.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleetmirror_core::mountinfo::MountTable;
use fleetmirror_core::plan::{
    self, Action, ControlPlane, Layout, NodePod, Phase, PlanInput, Roots, Target,
};
use fleetmirror_core::pod::{PodClass, PodMeta, classify};
use fleetmirror_proto::v1::{MountPhase, MountState, PodState};
use fleetmirror_runtime::watch::{ControlPlaneStores, Watches, trim_pod};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ObjectMeta};
use kube::runtime::watcher;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::kernel::{Kernel, KernelError};
use crate::metrics::Metrics;
use crate::state::NodeState;

/// What the reconciler is configured with.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This node.
    pub node_name: String,
    /// Roots of the kubelet and of our layouts.
    pub roots: Roots,
    /// Enabled layouts.
    pub layouts: Vec<Layout>,
    /// Interval of the safety-net pass.
    pub resync: Duration,
}

const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(300);

#[derive(Debug, Clone)]
struct Retry {
    delay: Duration,
    next: Instant,
    error: String,
}

/// One pass's inputs from the API.
#[derive(Debug, Default, Clone)]
pub struct ApiView {
    /// Pods on this node.
    pub pods: Vec<Arc<Pod>>,
    /// vCluster name → its control planes.
    pub control_planes: BTreeMap<String, BTreeSet<ControlPlane>>,
}

/// The reconciler's memory between passes: retries, and the last phase logged per mount.
#[derive(Debug)]
pub struct NodeReconciler<K: Kernel> {
    config: NodeConfig,
    kernel: Arc<K>,
    metrics: Metrics,
    /// Keyed by target path: one failing layout does not hold back the pod's others.
    retries: HashMap<std::path::PathBuf, Retry>,
    logged: HashMap<(String, Layout), Phase>,
}

impl<K: Kernel> NodeReconciler<K> {
    /// A reconciler acting through `kernel`.
    pub fn new(config: NodeConfig, kernel: Arc<K>, metrics: Metrics) -> Self {
        Self {
            config,
            kernel,
            metrics,
            retries: HashMap::new(),
            logged: HashMap::new(),
        }
    }

    /// One full pass. Returns the node's state and when the next retry is due, if any.
    pub fn pass(&mut self, api: &ApiView) -> (NodeState, Option<Instant>) {
        let started = Instant::now();
        let mut errors = Vec::new();
        // A failed read is not an empty state: with no mount table every target would look
        // unmounted (binds stacked on binds), with no directory listing every pod would look
        // gone (mounts removed). Such a pass reports and plans, but acts on nothing.
        let mut blind = false;
        let table = match self.kernel.mountinfo() {
            Ok(bytes) => MountTable::parse_bytes(&bytes),
            Err(e) => {
                errors.push(format!(
                    "reading mountinfo: {e}; no mount changes until it can be read"
                ));
                blind = true;
                MountTable::default()
            }
        };
        let pods_dir = self.config.roots.pods_dir();
        let pod_dirs: BTreeSet<String> = match self.kernel.list_dir(&pods_dir) {
            Ok(names) => names,
            Err(e) => {
                errors.push(format!(
                    "reading the kubelet pods directory: {e}; no mount changes until it can be read"
                ));
                blind = true;
                BTreeSet::new()
            }
        };
        if let Some(m) = table.containing(&pods_dir)
            && !m
                .optional
                .iter()
                .any(|o| o.starts_with("shared:") || o.starts_with("master:"))
            && !table.entries().is_empty()
        {
            errors.push(format!(
                "{} is on a private mount: volumes kubelet mounts after a pod starts will not appear \
                 in the copies (kubelet makes its root rshared; in a pod, mount it with \
                 mountPropagation: HostToContainer)",
                pods_dir.display()
            ));
        }

        // Classify this node's pods.
        let mut node_pods = Vec::new();
        let mut reported: BTreeMap<String, PodState> = BTreeMap::new();
        for pod in &api.pods {
            let meta = &pod.metadata;
            let (Some(uid), Some(ns), Some(name)) = (&meta.uid, &meta.namespace, &meta.name) else {
                continue;
            };
            if pod.spec.as_ref().and_then(|s| s.node_name.as_deref())
                != Some(self.config.node_name.as_str())
            {
                continue;
            }
            let empty = BTreeMap::new();
            let class = classify(PodMeta {
                labels: meta.labels.as_ref().unwrap_or(&empty),
                annotations: meta.annotations.as_ref().unwrap_or(&empty),
            });
            let status = pod.status.as_ref();
            let mut state = PodState {
                host_namespace: ns.clone(),
                host_name: name.clone(),
                host_uid: uid.clone(),
                phase: status.and_then(|s| s.phase.clone()).unwrap_or_default(),
                ready: status
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True")),
                ..Default::default()
            };
            match class {
                PodClass::Other => continue,
                PodClass::ControlPlane { vcluster } => {
                    state.vcluster = vcluster;
                    state.control_plane = true;
                }
                PodClass::Synced(synced) => {
                    // Tenant-written values are bounded before they leave the node, so one
                    // hostile annotation cannot make every report of the node invalid.
                    state.vcluster = clip(&synced.vcluster);
                    state.virtual_namespace = clip(&synced.virtual_namespace);
                    state.virtual_name = clip(&synced.virtual_name);
                    state.virtual_uid = clip(&synced.virtual_uid);
                    node_pods.push(NodePod {
                        host_uid: uid.clone(),
                        host_namespace: ns.clone(),
                        synced,
                    });
                }
            }
            reported.insert(uid.clone(), state);
        }

        let mut planned = plan::plan(&PlanInput {
            roots: &self.config.roots,
            layouts: &self.config.layouts,
            pods: &node_pods,
            control_planes: &api.control_planes,
            pod_dirs: &pod_dirs,
            mounts: &table,
        });

        // Execute. A pod in backoff is skipped; a failure puts it in backoff.
        let now = Instant::now();
        let mut failed: HashMap<(String, Layout), String> = HashMap::new();
        // Targets that needed a bind this pass: the only ones a retry may exist for.
        let mut needs_bind: BTreeSet<std::path::PathBuf> = BTreeSet::new();
        if blind {
            planned.actions.clear();
            for (uid, mounts) in &planned.pods {
                for m in mounts {
                    failed.insert(
                        (uid.clone(), m.layout),
                        "the node's state cannot be read; waiting".into(),
                    );
                }
            }
        }
        for action in &planned.actions {
            match action {
                Action::EnsureDir(target) => {
                    if let Err(e) = self.kernel.ensure_dir(target) {
                        self.metrics.mount_error(e.category());
                        errors.push(format!("creating {}: {e}", target.path().display()));
                    }
                }
                Action::Mount {
                    source,
                    target,
                    host_uid,
                } => {
                    let layout = plan::target_layout(&self.config.roots, &target.path());
                    let key = target.path();
                    needs_bind.insert(key.clone());
                    if let Some(r) = self.retries.get(&key)
                        && r.next > now
                    {
                        if let Some(l) = layout {
                            failed.insert((host_uid.clone(), l), format!("{} (retrying)", r.error));
                        }
                        continue;
                    }
                    let src = Target {
                        root: self.config.roots.kubelet.clone(),
                        components: vec!["pods".into(), host_uid.clone()],
                    };
                    match self.kernel.bind(&src, target) {
                        Ok(()) => {
                            self.retries.remove(&key);
                            let pod = reported
                                .get(host_uid)
                                .map(|p| format!("{}/{}", p.host_namespace, p.host_name))
                                .unwrap_or_default();
                            tracing::info!(
                                %pod,
                                pod_uid = %host_uid,
                                source = %source.display(),
                                target = %target.path().display(),
                                "mounted"
                            );
                        }
                        Err(e) => {
                            self.metrics.mount_error(e.category());
                            let reason = e.to_string();
                            tracing::warn!(pod_uid = %host_uid, target = %target.path().display(), error = %reason, "mount failed");
                            self.backoff(key, &reason, now);
                            if let Some(l) = layout {
                                failed.insert((host_uid.clone(), l), reason);
                            }
                        }
                    }
                }
                Action::Rebind {
                    source,
                    target,
                    host_uid,
                } => {
                    let path = target.path();
                    let src = Target {
                        root: self.config.roots.kubelet.clone(),
                        components: vec!["pods".into(), host_uid.clone()],
                    };
                    match self.kernel.rebind(&src, target) {
                        Ok(()) => {
                            tracing::info!(source = %source.display(), target = %path.display(), "an adopted bind was a peer of kubelet's tree; bound it again as a slave")
                        }
                        Err(e) => {
                            self.metrics.mount_error(e.category());
                            tracing::warn!(target = %path.display(), error = %e, "could not bind an adopted peer bind again as a slave");
                            errors
                                .push(format!("binding {} again as a slave: {e}", path.display()));
                        }
                    }
                }
                Action::Unmount { target, source } => {
                    let Some(t) = owned_target(&self.config.roots, &self.config.layouts, target)
                    else {
                        continue;
                    };
                    match self.kernel.unmount(&t) {
                        Ok(()) => {
                            tracing::info!(source = %source.display(), target = %target.display(), "unmounted: the pod is gone")
                        }
                        Err(e) => {
                            self.metrics.mount_error(e.category());
                            tracing::warn!(target = %target.display(), error = %e, "unmount failed");
                            errors.push(format!("unmounting {}: {e}", target.display()));
                        }
                    }
                }
            }
        }
        // A retry exists only while its target still needs a bind: one that is adopted,
        // pending, in conflict, refused or occupied by a foreign mount has nothing to retry
        // (a leftover entry whose time had passed would wake the loop at once, for ever).
        self.retries.retain(|target, _| needs_bind.contains(target));

        // Mount states into the report, logging each change once.
        let mut counts: BTreeMap<&'static str, i64> = BTreeMap::new();
        let mut seen = HashMap::new();
        for (uid, mounts) in &mut planned.pods {
            let pod = reported
                .get_mut(uid)
                .expect("planned pods are reported pods");
            for m in mounts.iter_mut() {
                if let Some(reason) = failed.remove(&(uid.clone(), m.layout)) {
                    m.phase = Phase::Failed(reason);
                }
                let (phase, reason) = match &m.phase {
                    Phase::Mounted => (MountPhase::Mounted, String::new()),
                    Phase::Pending(r) => (MountPhase::Pending, r.clone()),
                    Phase::Failed(r) => (MountPhase::Failed, r.clone()),
                    Phase::Conflict(r) => (MountPhase::Conflict, r.clone()),
                };
                *counts.entry(phase.as_str_name()).or_default() += 1;
                let key = (uid.clone(), m.layout);
                if self.logged.get(&key) != Some(&m.phase) && m.phase != Phase::Mounted {
                    tracing::warn!(
                        pod = %format!("{}/{}", pod.host_namespace, pod.host_name),
                        layout = m.layout.as_str(),
                        state = phase.as_str_name(),
                        %reason,
                        "pod not mounted"
                    );
                }
                seen.insert(key, m.phase.clone());
                pod.mounts.push(MountState {
                    layout: m.layout.as_str().into(),
                    target: m
                        .target
                        .as_ref()
                        .map(|t| t.path().display().to_string())
                        .unwrap_or_default(),
                    phase: phase as i32,
                    reason: clip(&reason),
                });
            }
        }
        self.logged = seen;
        self.metrics.set_mount_counts(&counts);
        self.metrics.pass_done(started.elapsed());
        // Never earlier than the minimum backoff from now, whatever an entry says.
        let floor = Instant::now() + BACKOFF_MIN;
        let next_retry = self.retries.values().map(|r| r.next.max(floor)).min();
        (
            NodeState {
                pods: reported,
                errors: bound_errors(errors),
            },
            next_retry,
        )
    }

    fn backoff(&mut self, target: std::path::PathBuf, error: &str, now: Instant) {
        let delay = self
            .retries
            .get(&target)
            .map_or(BACKOFF_MIN, |r| (r.delay * 2).min(BACKOFF_MAX));
        self.retries.insert(
            target,
            Retry {
                delay,
                next: now + delay,
                error: error.to_owned(),
            },
        );
    }
}

/// `target` as a [`Target`] under whichever of our roots (those of enabled layouts) holds it;
/// plan only emits unmounts for paths with a target's shape under them.
fn owned_target(roots: &Roots, layouts: &[Layout], target: &std::path::Path) -> Option<Target> {
    roots.owned(layouts).find_map(|root| {
        let rest = target.strip_prefix(root).ok()?;
        let components = rest
            .iter()
            .map(|c| c.to_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()?;
        Some(Target {
            root: root.to_path_buf(),
            components,
        })
    })
}

/// The longest string the agent reports in one field (the aggregator accepts 1024 bytes).
const MAX_REPORTED: usize = 512;
/// The most node-level errors reported; the rest are summarised in one line.
const MAX_ERRORS: usize = 32;

fn clip(s: &str) -> String {
    if s.len() <= MAX_REPORTED {
        return s.to_owned();
    }
    let mut end = MAX_REPORTED - 3;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

fn bound_errors(mut errors: Vec<String>) -> Vec<String> {
    if errors.len() > MAX_ERRORS {
        let more = errors.len() - (MAX_ERRORS - 1);
        errors.truncate(MAX_ERRORS - 1);
        errors.push(format!("… and {more} more errors (see the agent's log)"));
    }
    errors.iter().map(|e| clip(e)).collect()
}

fn control_planes(metas: Vec<ObjectMeta>) -> BTreeMap<String, BTreeSet<ControlPlane>> {
    let mut out: BTreeMap<String, BTreeSet<ControlPlane>> = BTreeMap::new();
    for m in metas {
        let labels = m.labels.unwrap_or_default();
        let Some(release) = labels.get(fleetmirror_core::naming::LABEL_RELEASE) else {
            continue;
        };
        let Some(namespace) = m.namespace else {
            continue;
        };
        if fleetmirror_core::naming::validate_dns1123_label(release).is_err() {
            continue;
        }
        let created = m
            .creation_timestamp
            .map(|t| t.0.to_string())
            .unwrap_or_default();
        out.entry(release.clone())
            .or_default()
            .insert(ControlPlane { created, namespace });
    }
    out
}

/// Runs one pass on a blocking thread (it reads mountinfo and directories, opens paths and
/// mounts: syscalls that may block on a busy node), so watches, heartbeats and `/livez` keep
/// answering on the async runtime meanwhile. The reconciler moves there and back.
pub async fn pass_off_runtime<K: Kernel + 'static>(
    mut reconciler: NodeReconciler<K>,
    view: ApiView,
) -> (NodeReconciler<K>, NodeState, Option<Instant>) {
    tokio::task::spawn_blocking(move || {
        let (state, retry) = reconciler.pass(&view);
        (reconciler, state, retry)
    })
    .await
    .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

/// Runs the reconciler until `shutdown`: watches, inotify, periodic passes. Marks `ready` after
/// the first pass with both watches synced. Never unmounts on the way out.
pub async fn run<K: Kernel + 'static>(
    watches: Watches,
    mut reconciler: NodeReconciler<K>,
    state: watch::Sender<Option<NodeState>>,
    ready: fleetmirror_runtime::admin::ReadyFlag,
    shutdown: CancellationToken,
) -> Result<(), KernelError> {
    let config = reconciler.config.clone();
    let trigger = Arc::new(Notify::new());
    let metrics = reconciler.metrics.clone();

    let pods = watches.store(
        Api::<Pod>::all(watches.client().clone()),
        watcher::Config::default().fields(&format!("spec.nodeName={}", config.node_name)),
        trim_pod,
        &trigger,
        "pods",
    );
    let control_planes_watch = ControlPlaneStores::start(&watches, &trigger);
    crate::inotify::watch_pods_dir(
        config.roots.pods_dir(),
        trigger.clone(),
        metrics.clone(),
        shutdown.clone(),
    );

    tokio::select! {
        r = async { tokio::try_join!(pods.wait_until_ready(), control_planes_watch.wait_until_ready()) } => {
            if r.is_err() { return Ok(()); }
        }
        _ = shutdown.cancelled() => return Ok(()),
    }
    tracing::info!(node = %config.node_name, "watches synced; reconciling");

    let mut periodic = tokio::time::interval(config.resync);
    periodic.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let view = ApiView {
            pods: pods.state(),
            control_planes: control_planes(control_planes_watch.metadata()),
        };
        let (node_state, retry_at);
        (reconciler, node_state, retry_at) = pass_off_runtime(reconciler, view).await;
        // `None` until the first pass: the reporter sends no snapshot before there is one.
        state.send_if_modified(|s| {
            if s.as_ref() == Some(&node_state) {
                false
            } else {
                *s = Some(node_state);
                true
            }
        });
        ready.set(true);
        let retry = async {
            match retry_at {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = trigger.notified() => {
                // Coalesce a burst of events into one pass.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            _ = periodic.tick() => {}
            _ = retry => {}
            _ = shutdown.cancelled() => break,
        }
    }
    tracing::info!("node reconciler stopped; mounts stay in place");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::{Call, RecordingKernel};
    use k8s_openapi::api::core::v1::PodSpec;

    const HOST_UID: &str = "11111111-1111-4111-8111-111111111111";
    const OTHER_UID: &str = "22222222-2222-4222-8222-222222222222";
    const VUID: &str = "aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa";
    const VUID2: &str = "bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb";

    fn config() -> NodeConfig {
        NodeConfig {
            node_name: "n1".into(),
            roots: Roots {
                kubelet: "/k".into(),
                loft: "/loft".into(),
                vcluster_hostpath: "/hp".into(),
            },
            layouts: vec![Layout::Loft],
            resync: Duration::from_secs(60),
        }
    }

    fn pod(uid: &str, vuid: &str) -> Arc<Pod> {
        Arc::new(Pod {
            metadata: ObjectMeta {
                name: Some(format!("p-{uid}")),
                namespace: Some("team-a".into()),
                uid: Some(uid.into()),
                labels: Some([("vcluster.loft.sh/managed-by".to_owned(), "vc".to_owned())].into()),
                annotations: Some([("vcluster.loft.sh/uid".to_owned(), vuid.to_owned())].into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some("n1".into()),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    fn view(pods: Vec<Arc<Pod>>) -> ApiView {
        let mut control_planes = BTreeMap::new();
        control_planes.insert(
            "vc".to_owned(),
            [ControlPlane {
                created: "1".into(),
                namespace: "team-a".into(),
            }]
            .into(),
        );
        ApiView {
            pods,
            control_planes,
        }
    }

    fn phase(s: &NodeState, uid: &str) -> MountPhase {
        s.pods[uid].mounts[0].phase()
    }

    #[test]
    fn one_failing_pod_does_not_block_the_other_and_is_retried_with_backoff() {
        let k = Arc::new(RecordingKernel::default());
        k.set_dir("/k/pods", &[HOST_UID, OTHER_UID]);
        let bad_target = format!("/loft/vc/kubelet/pods/{VUID}");
        k.fail_on(
            &bad_target,
            KernelError::Sys {
                op: "mount",
                path: bad_target.clone().into(),
                errno: nix::errno::Errno::EIO,
            },
        );
        let mut r = NodeReconciler::new(config(), k.clone(), Metrics::default());
        let v = view(vec![pod(HOST_UID, VUID), pod(OTHER_UID, VUID2)]);

        let (s, retry) = r.pass(&v);
        assert_eq!(phase(&s, HOST_UID), MountPhase::Failed);
        assert!(
            s.pods[HOST_UID].mounts[0].reason.contains("EIO"),
            "{:?}",
            s.pods[HOST_UID].mounts[0]
        );
        assert_eq!(
            phase(&s, OTHER_UID),
            MountPhase::Mounted,
            "the healthy pod is mounted anyway"
        );
        assert!(retry.is_some(), "a retry is scheduled");
        assert_eq!(
            k.take_calls()
                .iter()
                .filter(|c| matches!(c, Call::Bind(..)))
                .count(),
            2
        );

        // Within the backoff, the failing mount is not attempted again.
        let (s, _) = r.pass(&v);
        assert_eq!(phase(&s, HOST_UID), MountPhase::Failed);
        assert!(s.pods[HOST_UID].mounts[0].reason.contains("retrying"));
        assert!(
            k.take_calls().iter().all(|c| !matches!(c, Call::Bind(..))),
            "no bind during backoff, and the healthy one is adopted"
        );

        // After the backoff, healed: mounted.
        k.heal(std::path::Path::new(&bad_target));
        r.retries.values_mut().for_each(|x| x.next = Instant::now());
        let (s, retry) = r.pass(&v);
        assert_eq!(phase(&s, HOST_UID), MountPhase::Mounted);
        assert!(retry.is_none());
    }

    #[test]
    fn a_target_that_no_longer_needs_a_bind_keeps_no_retry() {
        let k = Arc::new(RecordingKernel::default());
        k.set_dir("/k/pods", &[HOST_UID]);
        let target = format!("/loft/vc/kubelet/pods/{VUID}");
        k.fail_on(
            &target,
            KernelError::Symlink {
                path: target.clone().into(),
            },
        );
        let mut r = NodeReconciler::new(config(), k.clone(), Metrics::default());
        let v = view(vec![pod(HOST_UID, VUID)]);
        let (s, retry) = r.pass(&v);
        assert_eq!(phase(&s, HOST_UID), MountPhase::Failed);
        let retry = retry.expect("a refused bind is retried");
        assert!(retry >= Instant::now() + BACKOFF_MIN - Duration::from_millis(50));

        // The target became somebody else's mount: nothing to retry, nothing to wake up for,
        // even once the old retry time has passed.
        k.heal(std::path::Path::new(&target));
        k.mount_foreign(&target, "/srv/foreign");
        r.retries.values_mut().for_each(|x| x.next = Instant::now());
        let (s, retry) = r.pass(&v);
        assert!(s.pods[HOST_UID].mounts[0].reason.contains("left alone"));
        assert_eq!(retry, None, "no retry for a target that needs no bind");
        assert!(r.retries.is_empty());
        let (_, retry) = r.pass(&v);
        assert_eq!(retry, None);
        assert!(
            k.take_calls()
                .iter()
                .filter(|c| matches!(c, Call::Bind(..)))
                .count()
                == 1
        );
    }

    #[test]
    fn a_retry_is_never_sooner_than_the_minimum_backoff() {
        let k = Arc::new(RecordingKernel::default());
        k.set_dir("/k/pods", &[HOST_UID]);
        let target = format!("/loft/vc/kubelet/pods/{VUID}");
        k.fail_on(
            &target,
            KernelError::Missing {
                path: target.clone().into(),
            },
        );
        let mut r = NodeReconciler::new(config(), k.clone(), Metrics::default());
        let v = view(vec![pod(HOST_UID, VUID)]);
        r.pass(&v);
        // A retry entry whose time passed while the target still fails: the next wake-up is a
        // minimum backoff away, not now.
        r.retries
            .values_mut()
            .for_each(|x| x.next = Instant::now() - Duration::from_secs(5));
        let before = Instant::now();
        let (_, retry) = r.pass(&v);
        assert!(retry.unwrap() >= before + BACKOFF_MIN, "no busy loop");
    }

    #[test]
    fn a_slow_pass_does_not_block_the_async_runtime() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let k = Arc::new(RecordingKernel::default());
            k.set_dir("/k/pods", &[HOST_UID]);
            k.set_delay(Duration::from_millis(600));
            let r = NodeReconciler::new(config(), k, Metrics::default());
            let ticks = Arc::new(std::sync::atomic::AtomicU32::new(0));
            let t = ticks.clone();
            // Stands for the watches, heartbeats and /livez sharing the runtime.
            let ticker = tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    t.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            });
            let (_, state, _) = pass_off_runtime(r, view(vec![pod(HOST_UID, VUID)])).await;
            ticker.abort();
            assert_eq!(phase(&state, HOST_UID), MountPhase::Mounted);
            let n = ticks.load(std::sync::atomic::Ordering::SeqCst);
            assert!(
                n >= 20,
                "the runtime ran only {n} ticks during a 600 ms pass"
            );
        });
    }

    #[test]
    fn a_deleted_pod_is_unmounted_and_other_nodes_pods_are_ignored() {
        let k = Arc::new(RecordingKernel::default());
        k.set_dir("/k/pods", &[HOST_UID]);
        let mut r = NodeReconciler::new(config(), k.clone(), Metrics::default());
        r.pass(&view(vec![pod(HOST_UID, VUID)]));
        assert_eq!(k.mounts().len(), 1);
        k.take_calls();

        let mut elsewhere = (*pod(OTHER_UID, VUID2)).clone();
        elsewhere.spec.as_mut().unwrap().node_name = Some("n2".into());
        let (s, _) = r.pass(&view(vec![Arc::new(elsewhere)]));
        assert!(
            s.pods.is_empty(),
            "a pod of another node is not ours to report"
        );
        assert_eq!(
            k.take_calls(),
            [Call::Unmount(
                format!("/loft/vc/kubelet/pods/{VUID}").into()
            )]
        );
        assert!(k.mounts().is_empty());
    }

    #[test]
    fn a_pass_that_cannot_read_the_node_changes_nothing() {
        let k = Arc::new(RecordingKernel::default());
        k.set_dir("/k/pods", &[HOST_UID]);
        let mut r = NodeReconciler::new(config(), k.clone(), Metrics::default());
        r.pass(&view(vec![pod(HOST_UID, VUID)]));
        assert_eq!(k.mounts().len(), 1);
        k.take_calls();
        // The listing fails: the pod would look gone, but nothing is unmounted.
        k.fail_on(
            "/k/pods",
            KernelError::Sys {
                op: "readdir",
                path: "/k/pods".into(),
                errno: nix::errno::Errno::EMFILE,
            },
        );
        let (s, _) = r.pass(&view(vec![pod(HOST_UID, VUID)]));
        assert!(k.take_calls().is_empty(), "no action on a blind pass");
        assert!(
            s.errors.iter().any(|e| e.contains("no mount changes")),
            "{:?}",
            s.errors
        );
        k.heal(std::path::Path::new("/k/pods"));
        // mountinfo fails: every target would look unmounted, but nothing is mounted again.
        k.fail_on(
            "/proc/self/mountinfo",
            KernelError::Sys {
                op: "read",
                path: "/proc/self/mountinfo".into(),
                errno: nix::errno::Errno::EIO,
            },
        );
        r.pass(&view(vec![pod(HOST_UID, VUID)]));
        assert!(k.take_calls().is_empty());
        assert_eq!(k.mounts().len(), 1, "no bind stacked on the existing one");
    }

    #[test]
    fn hostile_lengths_are_bounded_in_reports() {
        let k = Arc::new(RecordingKernel::default());
        k.set_dir("/k/pods", &[HOST_UID]);
        let mut p = (*pod(HOST_UID, VUID)).clone();
        p.metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert("vcluster.loft.sh/name".into(), "n".repeat(100_000));
        let mut r = NodeReconciler::new(config(), k, Metrics::default());
        let (s, _) = r.pass(&view(vec![Arc::new(p)]));
        assert!(s.pods[HOST_UID].virtual_name.len() <= MAX_REPORTED);
        assert_eq!(
            bound_errors((0..100).map(|i| i.to_string()).collect()).len(),
            MAX_ERRORS
        );
    }

    #[test]
    fn control_plane_pods_are_reported_never_mounted() {
        let k = Arc::new(RecordingKernel::default());
        k.set_dir("/k/pods", &[HOST_UID]);
        let mut cp = (*pod(HOST_UID, VUID)).clone();
        cp.metadata.labels = Some(
            [
                ("app".to_owned(), "vcluster".to_owned()),
                ("release".to_owned(), "vc".to_owned()),
            ]
            .into(),
        );
        let mut r = NodeReconciler::new(config(), k.clone(), Metrics::default());
        let (s, _) = r.pass(&view(vec![Arc::new(cp)]));
        assert!(s.pods[HOST_UID].control_plane && s.pods[HOST_UID].mounts.is_empty());
        assert!(k.take_calls().is_empty());
    }
}
