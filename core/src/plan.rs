//! Mount planning: the agent's level-based reconcile as a pure function. Given what should be
//! (this node's vCluster pods, the vClusters' control-plane namespaces, which pod directories
//! exist) and what is (one parse of mountinfo), [`plan`] returns the actions to take and the
//! state of every pod's mount at every layout.
//!
//! Rules (agent.md):
//! * a synced pod is mounted at each enabled layout when its metadata is valid, its vCluster's
//!   control plane is known *in the pod's own namespace* (cross-tenant guard), and its
//!   directory exists; otherwise its state says why (failed, pending);
//! * on the `loft` layouts two vClusters of the same name in different namespaces would share
//!   a tree: the oldest control plane wins, the other is `conflict`;
//! * a target that already holds a bind of the right source is adopted, not mounted again; a
//!   target that holds anything else is left alone and reported;
//! * a mount is ours only if its mount point is under the root of an enabled layout *and* it is a bind of
//!   a directory directly under `<kubelet-root>/pods` (whatever path a tenant may have moved it
//!   to); ours and no longer wanted means unmount. Nothing else is ever touched;
//! * a pod that is only waiting (control plane briefly unknown, directory gone while the object
//!   exists) keeps an existing mount; the tree of a vCluster name on the `loft` layouts stays
//!   with the namespace whose pods are mounted there (sticky), so it never flips to another
//!   tenant.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::mountinfo::MountTable;
use crate::naming::{validate_dns1123_label, validate_uid};
use crate::pod::SyncedPod;

/// Where a pod directory is bind-mounted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Layout {
    /// `<loft-root>/<vcluster>/kubelet/pods/<virtualUID>`.
    Loft,
    /// `<loft-root>/<vcluster>/pods/<virtualUID>`.
    LoftFlat,
    /// `<vcluster-hostpath-root>/<hostNamespace>/<vcluster>/kubelet/pods/<virtualUID>`.
    VclusterHostpath,
}

impl Layout {
    /// Every layout.
    pub const ALL: [Layout; 3] = [Layout::Loft, Layout::LoftFlat, Layout::VclusterHostpath];

    /// The name used in flags, reports and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Layout::Loft => "loft",
            Layout::LoftFlat => "loft-flat",
            Layout::VclusterHostpath => "vcluster-hostpath",
        }
    }

    /// True for the layouts whose tree is keyed by vCluster name alone.
    fn shared_by_name(self) -> bool {
        matches!(self, Layout::Loft | Layout::LoftFlat)
    }
}

/// The configured roots. All absolute, all trusted (they come from flags).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roots {
    /// Kubelet's root; pod directories are `<kubelet>/pods/<hostUID>`.
    pub kubelet: PathBuf,
    /// Root of `loft` and `loft-flat`.
    pub loft: PathBuf,
    /// Root of `vcluster-hostpath`.
    pub vcluster_hostpath: PathBuf,
}

impl Roots {
    /// `<kubelet>/pods`.
    pub fn pods_dir(&self) -> PathBuf {
        self.kubelet.join("pods")
    }

    fn root_of(&self, layout: Layout) -> &Path {
        match layout {
            Layout::Loft | Layout::LoftFlat => &self.loft,
            Layout::VclusterHostpath => &self.vcluster_hostpath,
        }
    }

    /// The roots the agent owns with `layouts` enabled: a root of a layout that is not
    /// enabled is not ours (the DaemonSet does not even mount it), so nothing there is
    /// created, adopted or collected.
    pub fn owned<'a>(&'a self, layouts: &'a [Layout]) -> impl Iterator<Item = &'a Path> + 'a {
        let mut seen: Vec<&Path> = Vec::with_capacity(2);
        layouts.iter().filter_map(move |&l| {
            let root = self.root_of(l);
            (!seen.contains(&root)).then(|| {
                seen.push(root);
                root
            })
        })
    }
}

/// A path under a trusted root, built from validated components only. The kernel layer
/// creates and opens it component by component, refusing symlinks.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Target {
    /// The trusted root.
    pub root: PathBuf,
    /// Validated components below it.
    pub components: Vec<String>,
}

impl Target {
    /// The full path.
    pub fn path(&self) -> PathBuf {
        self.components
            .iter()
            .fold(self.root.clone(), |p, c| p.join(c))
    }

    /// The parent target (all but the last component).
    pub fn parent(&self) -> Target {
        let mut components = self.components.clone();
        components.pop();
        Target {
            root: self.root.clone(),
            components,
        }
    }
}

/// Where one layout puts a pod, from validated components.
pub fn target(
    roots: &Roots,
    layout: Layout,
    host_namespace: &str,
    vcluster: &str,
    virtual_uid: &str,
) -> Target {
    let c = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
    let components = match layout {
        Layout::Loft => c(&[vcluster, "kubelet", "pods", virtual_uid]),
        Layout::LoftFlat => c(&[vcluster, "pods", virtual_uid]),
        Layout::VclusterHostpath => c(&[host_namespace, vcluster, "kubelet", "pods", virtual_uid]),
    };
    Target {
        root: roots.root_of(layout).to_path_buf(),
        components,
    }
}

/// Which layout a path is a target of, if it has exactly a target's shape.
pub fn target_layout(roots: &Roots, path: &Path) -> Option<Layout> {
    Layout::ALL.into_iter().find(|&layout| {
        let Ok(rest) = path.strip_prefix(roots.root_of(layout)) else {
            return false;
        };
        let parts: Vec<&str> = rest.iter().filter_map(|c| c.to_str()).collect();
        if parts.len() != rest.iter().count() {
            return false;
        }
        let label = |s: &str| validate_dns1123_label(s).is_ok();
        let uid = |s: &str| validate_uid(s).is_ok();
        match (layout, parts.as_slice()) {
            (Layout::Loft, [vc, "kubelet", "pods", u]) => label(vc) && uid(u),
            (Layout::LoftFlat, [vc, "pods", u]) => label(vc) && uid(u),
            (Layout::VclusterHostpath, [ns, vc, "kubelet", "pods", u]) => {
                label(ns) && label(vc) && uid(u)
            }
            _ => false,
        }
    })
}

/// Where one pod's mount at one layout stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Bind-mounted (or about to be, by an action of this plan).
    Mounted,
    /// Waiting for something; the reason says what.
    Pending(String),
    /// Refused or failed; the reason says why.
    Failed(String),
    /// Another vCluster of the same name owns the tree.
    Conflict(String),
}

/// One pod's mount at one layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountPlan {
    /// The layout.
    pub layout: Layout,
    /// The target, when one could be built.
    pub target: Option<Target>,
    /// Its state.
    pub phase: Phase,
}

/// A synced pod on this node.
#[derive(Debug, Clone)]
pub struct NodePod {
    /// Host UID (names its kubelet directory).
    pub host_uid: String,
    /// Host namespace.
    pub host_namespace: String,
    /// The vCluster facts.
    pub synced: SyncedPod,
}

/// A vCluster control plane, as the agent's workload watch sees it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ControlPlane {
    /// Creation timestamp, RFC 3339 (sorts chronologically); the oldest wins name conflicts.
    pub created: String,
    /// Host namespace.
    pub namespace: String,
}

/// What to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Create the directories of `target` (refusing symlinks).
    EnsureDir(Target),
    /// Bind-mount `source` (recursively) at `target`, creating its directories first.
    Mount {
        /// `<kubelet>/pods/<hostUID>`.
        source: PathBuf,
        /// The target.
        target: Target,
        /// For log lines and reports.
        host_uid: String,
    },
    /// Replace the bind at `target` with a slave bind of `source`: it is in place and of the
    /// right source, but still a peer of kubelet's tree (made by an older agent, or by
    /// vcluster-fs-syncer), so mounts made in it would propagate back into the pod directory.
    /// Making it a slave in place would not do: only the agent's copy would change, while the
    /// host's copy of it (propagated through the shared root) stayed a peer.
    Rebind {
        /// `<kubelet>/pods/<hostUID>`.
        source: PathBuf,
        /// The target.
        target: Target,
        /// For log lines.
        host_uid: String,
    },
    /// Unmount `target` lazily and remove the directory if it is empty.
    Unmount {
        /// The mount point.
        target: PathBuf,
        /// Where it came from (under `<kubelet>/pods`).
        source: PathBuf,
    },
}

/// Everything [`plan`] needs.
#[derive(Debug)]
pub struct PlanInput<'a> {
    /// Configured roots.
    pub roots: &'a Roots,
    /// Enabled layouts.
    pub layouts: &'a [Layout],
    /// This node's synced pods.
    pub pods: &'a [NodePod],
    /// vCluster name → its control planes.
    pub control_planes: &'a BTreeMap<String, BTreeSet<ControlPlane>>,
    /// Host UIDs whose `<kubelet>/pods/<uid>` directory exists.
    pub pod_dirs: &'a BTreeSet<String>,
    /// The current mount table.
    pub mounts: &'a MountTable,
}

/// The result of planning.
#[derive(Debug, Default)]
pub struct Plan {
    /// Actions, in order: directories, mounts, unmounts.
    pub actions: Vec<Action>,
    /// Host UID → one entry per enabled layout.
    pub pods: BTreeMap<String, Vec<MountPlan>>,
}

/// True when the bind at `target` is in the peer group of the mount holding `source` (and no
/// slave): a mount made in it would appear in kubelet's tree.
fn is_peer_of_kubelets_tree(mounts: &MountTable, target: &Path, source: &Path) -> bool {
    let (Some(bind), Some(kubelet)) = (mounts.at(target), mounts.containing(source)) else {
        return false;
    };
    !bind.is_slave() && bind.peer_group().is_some() && bind.peer_group() == kubelet.peer_group()
}

/// Plans one reconcile pass.
pub fn plan(input: &PlanInput<'_>) -> Plan {
    let mut out = Plan::default();
    let pods_dir = input.roots.pods_dir();
    let mut wanted: BTreeSet<PathBuf> = BTreeSet::new();
    let mut hostpath_parents: BTreeSet<Target> = BTreeSet::new();
    // vCluster → owner of its loft tree, found once per pass (it scans the mount table).
    let mut owners: BTreeMap<String, Option<String>> = BTreeMap::new();

    for pod in input.pods {
        let mut states = Vec::with_capacity(input.layouts.len());
        for &layout in input.layouts {
            let (target, mut phase) =
                decide(input, pod, layout, &pods_dir, &mut wanted, &mut owners);
            // A pod that is only *waiting* (its control plane is briefly unknown, e.g. while a
            // StatefulSet is re-created; its directory is gone while the object still exists)
            // keeps an existing mount: consumers must see no gap. Only a pod that is gone, or
            // refused for a reason of safety, loses its mount.
            if let (Phase::Pending(_), Some(t)) = (&phase, &target) {
                let path = t.path();
                if input
                    .mounts
                    .is_bind_of(&path, &pods_dir.join(&pod.host_uid))
                    && wanted.insert(path)
                {
                    phase = Phase::Mounted;
                }
            }
            if layout == Layout::VclusterHostpath
                && let Some(t) = &target
                && !matches!(phase, Phase::Failed(_) | Phase::Conflict(_))
            {
                hostpath_parents.insert(t.parent());
            }
            if phase == Phase::Mounted
                && let Some(t) = &target
            {
                let path = t.path();
                if !input
                    .mounts
                    .is_bind_of(&path, &pods_dir.join(&pod.host_uid))
                {
                    out.actions.push(Action::Mount {
                        source: pods_dir.join(&pod.host_uid),
                        target: t.clone(),
                        host_uid: pod.host_uid.clone(),
                    });
                } else if is_peer_of_kubelets_tree(
                    input.mounts,
                    &path,
                    &pods_dir.join(&pod.host_uid),
                ) {
                    out.actions.push(Action::Rebind {
                        source: pods_dir.join(&pod.host_uid),
                        target: t.clone(),
                        host_uid: pod.host_uid.clone(),
                    });
                }
            }
            states.push(MountPlan {
                layout,
                target,
                phase,
            });
        }
        out.pods.insert(pod.host_uid.clone(), states);
    }

    // vCluster issue #1745: stock pods fail when the rewritten hostPath is missing, so the
    // parents exist for every vCluster with pods here, mounted or not.
    let mut dirs: Vec<Action> = hostpath_parents
        .into_iter()
        .map(Action::EnsureDir)
        .collect();
    dirs.append(&mut out.actions);
    out.actions = dirs;

    // Garbage: our mounts (target shape under our roots, bind of a kubelet pod directory)
    // that nothing wants any more — including those of pods deleted while we were down.
    let mut seen = BTreeSet::new();
    for e in input.mounts.entries().iter().rev() {
        let point = &e.mount_point;
        // Anything under our roots that is a bind of a kubelet pod directory is ours, whatever
        // its path became (a tenant may rename a directory that holds one of our mounts).
        let under_roots = input
            .roots
            .owned(input.layouts)
            .any(|root| point.starts_with(root));
        if wanted.contains(point) || !seen.insert(point.clone()) || !under_roots {
            continue;
        }
        if let Some(source) = input.mounts.bind_source_under(point, &pods_dir)
            && source.parent() == Some(pods_dir.as_path())
        {
            out.actions.push(Action::Unmount {
                target: point.clone(),
                source,
            });
        }
    }
    out
}

/// Who owns `<loft>/<vcluster>`: the namespace whose pods are mounted there now (ownership is
/// sticky: it never moves while the owner has mounts), else the oldest control plane.
fn loft_owner<'a>(
    input: &'a PlanInput<'_>,
    vcluster: &str,
    homes: &'a BTreeSet<ControlPlane>,
) -> Option<&'a str> {
    let tree = input.roots.loft.join(vcluster);
    let pods_dir = input.roots.pods_dir();
    let ns_of: BTreeMap<&str, &str> = input
        .pods
        .iter()
        .map(|p| (p.host_uid.as_str(), p.host_namespace.as_str()))
        .collect();
    let mut current = input
        .mounts
        .entries()
        .iter()
        .filter(|e| e.mount_point.starts_with(&tree))
        .filter_map(|e| {
            let source = input.mounts.bind_source_under(&e.mount_point, &pods_dir)?;
            let uid = source.file_name()?.to_str()?;
            ns_of.get(uid).copied()
        });
    current
        .next()
        .and_then(|ns| {
            homes
                .iter()
                .find(|h| h.namespace == ns)
                .map(|h| h.namespace.as_str())
        })
        .or_else(|| homes.iter().next().map(|h| h.namespace.as_str()))
}

fn decide(
    input: &PlanInput<'_>,
    pod: &NodePod,
    layout: Layout,
    pods_dir: &Path,
    wanted: &mut BTreeSet<PathBuf>,
    owners: &mut BTreeMap<String, Option<String>>,
) -> (Option<Target>, Phase) {
    let s = &pod.synced;
    if let Some(reason) = &s.refusal {
        return (None, Phase::Failed(format!("refused: {reason}")));
    }
    if validate_uid(&pod.host_uid).is_err() || validate_dns1123_label(&pod.host_namespace).is_err()
    {
        return (
            None,
            Phase::Failed("refused: host pod UID or namespace is malformed".into()),
        );
    }
    let t = target(
        input.roots,
        layout,
        &pod.host_namespace,
        &s.vcluster,
        &s.virtual_uid,
    );
    let Some(homes) = input
        .control_planes
        .get(&s.vcluster)
        .filter(|h| !h.is_empty())
    else {
        return (
            Some(t),
            Phase::Pending(format!(
                "no control plane of vCluster {} is known yet",
                s.vcluster
            )),
        );
    };
    if !homes.iter().any(|h| h.namespace == pod.host_namespace) {
        let list: Vec<&str> = homes.iter().map(|h| h.namespace.as_str()).collect();
        return (
            None,
            Phase::Failed(format!(
                "refused: the pod is in namespace {} but vCluster {}'s control plane is in {}",
                pod.host_namespace,
                s.vcluster,
                list.join(", ")
            )),
        );
    }
    if layout.shared_by_name() {
        let winner = owners
            .entry(s.vcluster.clone())
            .or_insert_with(|| loft_owner(input, &s.vcluster, homes).map(str::to_owned))
            .as_deref();
        if winner != Some(pod.host_namespace.as_str()) {
            let tree = t.parent().parent().path();
            let reason = format!(
                "vCluster {} in namespace {} already owns {}",
                s.vcluster,
                winner.unwrap_or("?"),
                tree.display()
            );
            return (Some(t), Phase::Conflict(reason));
        }
    }
    if !input.pod_dirs.contains(&pod.host_uid) {
        return (
            Some(t),
            Phase::Pending("the pod directory does not exist yet".into()),
        );
    }
    let path = t.path();
    if input.mounts.at(&path).is_some()
        && !input
            .mounts
            .is_bind_of(&path, &pods_dir.join(&pod.host_uid))
    {
        // Either another pod with the same virtual UID, or a mount that is not ours at all.
        return (
            Some(t),
            Phase::Failed("another mount already occupies the target; left alone".into()),
        );
    }
    if !wanted.insert(path) {
        return (
            Some(t),
            Phase::Conflict("another pod on this node has the same virtual UID".into()),
        );
    }
    (Some(t), Phase::Mounted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mountinfo::MountTable;

    const U1: &str = "11111111-1111-4111-8111-111111111111";
    const U2: &str = "22222222-2222-4222-8222-222222222222";
    const V1: &str = "aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa";
    const V2: &str = "bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb";

    fn roots() -> Roots {
        Roots {
            kubelet: "/k".into(),
            loft: "/loft".into(),
            vcluster_hostpath: "/hp".into(),
        }
    }

    fn pod(host_uid: &str, ns: &str, vc: &str, vuid: &str) -> NodePod {
        NodePod {
            host_uid: host_uid.into(),
            host_namespace: ns.into(),
            synced: SyncedPod {
                vcluster: vc.into(),
                virtual_uid: vuid.into(),
                virtual_name: "p".into(),
                virtual_namespace: "default".into(),
                refusal: None,
            },
        }
    }

    fn homes(list: &[(&str, &str, &str)]) -> BTreeMap<String, BTreeSet<ControlPlane>> {
        let mut m: BTreeMap<String, BTreeSet<ControlPlane>> = BTreeMap::new();
        for (vc, ns, created) in list {
            m.entry(vc.to_string()).or_default().insert(ControlPlane {
                created: created.to_string(),
                namespace: ns.to_string(),
            });
        }
        m
    }

    const BASE: &str = "1 0 8:1 / / rw shared:1 - ext4 /dev/sda rw\n";

    fn run(
        layouts: &[Layout],
        pods: &[NodePod],
        cps: &BTreeMap<String, BTreeSet<ControlPlane>>,
        dirs: &[&str],
        mounts: &str,
    ) -> Plan {
        let dirs: BTreeSet<String> = dirs.iter().map(|s| s.to_string()).collect();
        let table = MountTable::parse(&format!("{BASE}{mounts}"));
        plan(&PlanInput {
            roots: &roots(),
            layouts,
            pods,
            control_planes: cps,
            pod_dirs: &dirs,
            mounts: &table,
        })
    }

    fn mounts_of(p: &Plan) -> Vec<String> {
        p.actions
            .iter()
            .filter_map(|a| match a {
                Action::Mount { target, .. } => Some(target.path().display().to_string()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn mounts_every_enabled_layout() {
        let p = run(
            &Layout::ALL,
            &[pod(U1, "team-a", "vc", V1)],
            &homes(&[("vc", "team-a", "1")]),
            &[U1],
            "",
        );
        assert_eq!(
            mounts_of(&p),
            [
                format!("/loft/vc/kubelet/pods/{V1}"),
                format!("/loft/vc/pods/{V1}"),
                format!("/hp/team-a/vc/kubelet/pods/{V1}"),
            ]
        );
        assert_eq!(
            p.actions[0],
            Action::EnsureDir(
                target(&roots(), Layout::VclusterHostpath, "team-a", "vc", V1).parent()
            )
        );
        assert!(p.pods[U1].iter().all(|m| m.phase == Phase::Mounted));
    }

    #[test]
    fn waits_for_the_directory_and_the_control_plane() {
        let p = run(
            &[Layout::Loft],
            &[pod(U1, "team-a", "vc", V1)],
            &homes(&[("vc", "team-a", "1")]),
            &[],
            "",
        );
        assert!(matches!(&p.pods[U1][0].phase, Phase::Pending(r) if r.contains("directory")));
        assert!(p.actions.is_empty());
        let p = run(
            &[Layout::Loft],
            &[pod(U1, "team-a", "vc", V1)],
            &homes(&[]),
            &[U1],
            "",
        );
        assert!(matches!(&p.pods[U1][0].phase, Phase::Pending(r) if r.contains("control plane")));
        assert!(p.actions.is_empty());
    }

    #[test]
    fn hostpath_parents_exist_even_while_pending() {
        let p = run(
            &[Layout::VclusterHostpath],
            &[pod(U1, "team-a", "vc", V1)],
            &homes(&[("vc", "team-a", "1")]),
            &[],
            "",
        );
        assert_eq!(
            p.actions,
            [Action::EnsureDir(Target {
                root: "/hp".into(),
                components: vec![
                    "team-a".into(),
                    "vc".into(),
                    "kubelet".into(),
                    "pods".into()
                ]
            })]
        );
    }

    #[test]
    fn cross_tenant_claims_are_refused() {
        let p = run(
            &Layout::ALL,
            &[pod(U1, "intruder", "vc", V1)],
            &homes(&[("vc", "team-a", "1")]),
            &[U1],
            "",
        );
        assert!(p.actions.is_empty(), "{:?}", p.actions);
        for m in &p.pods[U1] {
            assert!(
                matches!(&m.phase, Phase::Failed(r) if r.contains("intruder") && r.contains("team-a")),
                "{m:?}"
            );
        }
    }

    #[test]
    fn same_name_in_two_namespaces_conflicts_on_loft_layouts_only() {
        let cps = homes(&[
            ("vc", "team-a", "2026-01-01T00:00:00Z"),
            ("vc", "team-b", "2026-02-01T00:00:00Z"),
        ]);
        let pods = [pod(U1, "team-a", "vc", V1), pod(U2, "team-b", "vc", V2)];
        let p = run(
            &[Layout::Loft, Layout::VclusterHostpath],
            &pods,
            &cps,
            &[U1, U2],
            "",
        );
        assert_eq!(
            p.pods[U1][0].phase,
            Phase::Mounted,
            "the older control plane wins"
        );
        assert!(matches!(&p.pods[U2][0].phase, Phase::Conflict(r) if r.contains("team-a")));
        assert_eq!(
            p.pods[U2][1].phase,
            Phase::Mounted,
            "vcluster-hostpath is keyed by namespace too"
        );
        assert!(
            !mounts_of(&p)
                .iter()
                .any(|m| m == &format!("/loft/vc/kubelet/pods/{V2}"))
        );
    }

    #[test]
    fn hostile_metadata_is_refused_before_any_path_is_built() {
        let mut bad = pod(U1, "team-a", "vc", V1);
        bad.synced.refusal = Some("label vcluster.loft.sh/managed-by \"../../etc\" is bad".into());
        let mut bad_uid = pod("../x", "team-a", "vc", V2);
        bad_uid.host_uid = "../x".into();
        let p = run(
            &Layout::ALL,
            &[bad, bad_uid],
            &homes(&[("vc", "team-a", "1")]),
            &[U1, "../x"],
            "",
        );
        assert!(p.actions.is_empty());
        assert!(
            p.pods
                .values()
                .flatten()
                .all(|m| m.target.is_none() && matches!(m.phase, Phase::Failed(_)))
        );
    }

    #[test]
    fn adopts_existing_binds_and_collects_garbage() {
        let mounts = format!(
            "10 1 8:1 /k/pods/{U1} /loft/vc/kubelet/pods/{V1} rw master:1 - ext4 /dev/sda rw\n\
             11 1 8:1 /k/pods/{U2} /loft/gone/kubelet/pods/{V2} rw master:1 - ext4 /dev/sda rw\n\
             12 1 8:1 /srv/data /loft/other/kubelet/pods/{V2} rw - ext4 /dev/sda rw\n\
             13 1 8:1 /k/pods/{U2} /loft/not-a-target rw - ext4 /dev/sda rw\n\
             14 1 8:1 /k/pods/{U2}/volumes /loft/x/kubelet/pods/{V1} rw - ext4 /dev/sda rw\n"
        );
        let p = run(
            &[Layout::Loft],
            &[pod(U1, "team-a", "vc", V1)],
            &homes(&[("vc", "team-a", "1")]),
            &[U1],
            &mounts,
        );
        assert_eq!(p.pods[U1][0].phase, Phase::Mounted);
        assert_eq!(
            p.actions,
            [
                Action::Unmount {
                    target: "/loft/not-a-target".into(),
                    source: format!("/k/pods/{U2}").into()
                },
                Action::Unmount {
                    target: format!("/loft/gone/kubelet/pods/{V2}").into(),
                    source: format!("/k/pods/{U2}").into()
                },
            ],
            "adopted, not re-mounted; only our own stale mounts are removed"
        );
    }

    #[test]
    fn roots_of_disabled_layouts_are_not_ours() {
        let mounts = format!(
            "10 1 8:1 /k/pods/{U2} /hp/team-a/vc/kubelet/pods/{V2} rw - ext4 /dev/sda rw\n\
             11 1 8:1 /k/pods/{U2} /loft/vc/kubelet/pods/{V2} rw - ext4 /dev/sda rw\n"
        );
        let p = run(&[Layout::Loft], &[], &BTreeMap::new(), &[], &mounts);
        assert_eq!(
            p.actions,
            [Action::Unmount {
                target: format!("/loft/vc/kubelet/pods/{V2}").into(),
                source: format!("/k/pods/{U2}").into()
            }],
            "the vcluster-hostpath root is not ours while its layout is off"
        );
        let r = roots();
        assert_eq!(r.owned(&[Layout::LoftFlat, Layout::Loft]).count(), 1);
        assert_eq!(
            r.owned(&Layout::ALL).collect::<Vec<_>>(),
            [Path::new("/loft"), Path::new("/hp")]
        );
        assert_eq!(r.owned(&[]).count(), 0);
    }

    #[test]
    fn an_adopted_bind_that_is_a_peer_of_kubelets_tree_is_rebound_as_a_slave() {
        let t = target(&roots(), Layout::Loft, "team-a", "vc", V1);
        // BASE: the root filesystem, holding /k/pods, is in peer group 1.
        for (optional, rebind) in [
            ("shared:1", true),
            ("shared:7", false),
            ("shared:9 master:1", false),
            ("master:1", false),
            ("", false),
        ] {
            let mounts = format!(
                "10 1 8:1 /k/pods/{U1} /loft/vc/kubelet/pods/{V1} rw {optional} - ext4 /dev/sda rw\n"
            );
            let p = run(
                &[Layout::Loft],
                &[pod(U1, "team-a", "vc", V1)],
                &homes(&[("vc", "team-a", "1")]),
                &[U1],
                &mounts,
            );
            assert_eq!(p.pods[U1][0].phase, Phase::Mounted);
            let want = if rebind {
                vec![Action::Rebind {
                    source: PathBuf::from(format!("/k/pods/{U1}")),
                    target: t.clone(),
                    host_uid: U1.into(),
                }]
            } else {
                vec![]
            };
            assert_eq!(p.actions, want, "{optional:?}");
        }
    }

    #[test]
    fn a_foreign_mount_at_the_target_is_left_alone() {
        let mounts =
            format!("10 1 8:1 /srv/data /loft/vc/kubelet/pods/{V1} rw - ext4 /dev/sda rw\n");
        let p = run(
            &[Layout::Loft],
            &[pod(U1, "team-a", "vc", V1)],
            &homes(&[("vc", "team-a", "1")]),
            &[U1],
            &mounts,
        );
        assert!(p.actions.is_empty(), "{:?}", p.actions);
        assert!(matches!(&p.pods[U1][0].phase, Phase::Failed(r) if r.contains("left alone")));
    }

    #[test]
    fn a_briefly_unknown_control_plane_or_missing_directory_keeps_the_mount() {
        let mounts = format!(
            "10 1 8:1 /k/pods/{U1} /loft/vc/kubelet/pods/{V1} rw master:1 - ext4 /dev/sda rw\n"
        );
        for (cps, dirs) in [
            (homes(&[]), vec![U1]),
            (homes(&[("vc", "team-a", "1")]), vec![]),
        ] {
            let p = run(
                &[Layout::Loft],
                &[pod(U1, "team-a", "vc", V1)],
                &cps,
                &dirs,
                &mounts,
            );
            assert!(
                p.actions.is_empty(),
                "no unmount of a live pod: {:?}",
                p.actions
            );
            assert_eq!(p.pods[U1][0].phase, Phase::Mounted);
        }
        // Refused for safety (now a cross-tenant claim): the mount goes.
        let p = run(
            &[Layout::Loft],
            &[pod(U1, "team-a", "vc", V1)],
            &homes(&[("vc", "team-b", "1")]),
            &[U1],
            &mounts,
        );
        assert!(matches!(p.actions[..], [Action::Unmount { .. }]));
    }

    #[test]
    fn loft_ownership_is_sticky() {
        // team-a's pod is mounted in /loft/vc; team-a's control plane is re-created and is now
        // younger than team-b's: the tree stays team-a's.
        let cps = homes(&[
            ("vc", "team-a", "2026-03-01T00:00:00Z"),
            ("vc", "team-b", "2026-02-01T00:00:00Z"),
        ]);
        let mounts = format!(
            "10 1 8:1 /k/pods/{U1} /loft/vc/kubelet/pods/{V1} rw master:1 - ext4 /dev/sda rw\n"
        );
        let pods = [pod(U1, "team-a", "vc", V1), pod(U2, "team-b", "vc", V2)];
        let p = run(&[Layout::Loft], &pods, &cps, &[U1, U2], &mounts);
        assert_eq!(p.pods[U1][0].phase, Phase::Mounted);
        assert!(matches!(p.pods[U2][0].phase, Phase::Conflict(_)));
        assert!(p.actions.is_empty(), "{:?}", p.actions);
    }

    #[test]
    fn our_mounts_moved_out_of_shape_or_with_deleted_sources_are_collected() {
        let mounts = format!(
            "10 1 8:1 /k/pods/{U1} /loft/vc/kubelet/pods/junk-1 rw - ext4 /dev/sda rw\n\
             11 1 8:1 /k/pods/{U2}//deleted /loft/vc/kubelet/pods/{V2} rw - ext4 /dev/sda rw\n\
             12 1 8:1 /srv/x /loft/vc/kubelet/pods/junk-2 rw - ext4 /dev/sda rw\n"
        );
        let p = run(&[Layout::Loft], &[], &homes(&[]), &[], &mounts);
        let gone: Vec<String> = p
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::Unmount { target, .. } => Some(target.display().to_string()),
                _ => None,
            })
            .collect();
        assert_eq!(gone.len(), 2, "{gone:?}");
        assert!(
            !gone.iter().any(|g| g.ends_with("junk-2")),
            "not ours: left alone"
        );
    }

    #[test]
    fn duplicate_virtual_uids_do_not_share_a_target() {
        let pods = [pod(U1, "team-a", "vc", V1), pod(U2, "team-a", "vc", V1)];
        let p = run(
            &[Layout::Loft],
            &pods,
            &homes(&[("vc", "team-a", "1")]),
            &[U1, U2],
            "",
        );
        assert_eq!(mounts_of(&p).len(), 1);
        assert!(matches!(p.pods[U2][0].phase, Phase::Conflict(_)));
    }

    #[test]
    fn target_shapes() {
        let r = roots();
        assert_eq!(
            target_layout(&r, Path::new(&format!("/loft/vc/kubelet/pods/{V1}"))),
            Some(Layout::Loft)
        );
        assert_eq!(
            target_layout(&r, Path::new(&format!("/loft/vc/pods/{V1}"))),
            Some(Layout::LoftFlat)
        );
        assert_eq!(
            target_layout(&r, Path::new(&format!("/hp/ns/vc/kubelet/pods/{V1}"))),
            Some(Layout::VclusterHostpath)
        );
        for bad in [
            "/loft/vc/kubelet/pods/x",
            "/loft/VC/pods/{V1}",
            "/elsewhere/vc/pods/{V1}",
            "/loft/vc/kubelet/pods",
        ] {
            assert_eq!(
                target_layout(&r, Path::new(&bad.replace("{V1}", V1))),
                None,
                "{bad}"
            );
        }
    }
}
