//! The agent's Linux kernel layer, for real, as root, each test in a private mount namespace of
//! its own: the test binary re-executes itself under `unshare -m --propagation private` (a
//! multithreaded process cannot unshare its mount namespace), and the outer test fails when
//! the inner run fails, or when it cannot be started (no CAP_SYS_ADMIN): never a silent skip.
//!
//! Inside, a tmpfs holds a fake node: a kubelet root made an rshared mount (as kubelet makes
//! it), pod directories, and the loft root.

use std::path::{Path, PathBuf};
use std::process::Command;

use fleetmirror_agent::kernel::{Kernel, KernelError, LinuxKernel, MountApi, STAGING_DIR, Staging};
use fleetmirror_core::mountinfo::MountTable;
use fleetmirror_core::plan::Target;
use nix::mount::{MntFlags, MsFlags, mount, umount2};

const INSIDE: &str = "FLEETMIRROR_IN_PRIVATE_MOUNT_NS";

/// True inside the private namespace; outside, runs `test` there and asserts it passed.
fn inside_private_mount_namespace(test: &str) -> bool {
    if std::env::var_os(INSIDE).is_some() {
        return true;
    }
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private"])
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(INSIDE, "1")
        .output()
        .expect("running unshare (util-linux)");
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{test} failed in its private mount namespace (needs root / CAP_SYS_ADMIN):\n{log}"
    );
    assert!(
        log.contains("1 passed"),
        "{test} did not run inside the namespace:\n{log}"
    );
    false
}

/// Mounts a fresh tmpfs at `dir` (created if missing), as kubelet mounts a volume.
fn tmpfs(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        MsFlags::empty(),
        None::<&str>,
    )
    .unwrap();
}

/// `copy` shows the pod directory `source` one way: a volume kubelet mounts in `source` later
/// appears in `copy` and vanishes with it; nothing mounted in `copy` reaches `source`.
fn assert_one_way(source: &Path, copy: &Path) {
    let vol = source.join("volumes/secret");
    tmpfs(&vol);
    std::fs::write(vol.join("token"), "s3cret").unwrap();
    assert_eq!(
        std::fs::read_to_string(copy.join("volumes/secret/token")).unwrap(),
        "s3cret",
        "a later volume is visible through {}",
        copy.display()
    );
    umount2(&vol, MntFlags::empty()).unwrap();
    assert!(
        !copy.join("volumes/secret/token").exists(),
        "the unmounted volume is gone from {} too",
        copy.display()
    );

    let evil = copy.join("volumes/evil");
    tmpfs(&evil);
    std::fs::write(evil.join("x"), "x").unwrap();
    assert!(
        !source.join("volumes/evil/x").exists(),
        "a mount in {} must not reach the pod directory",
        copy.display()
    );
    umount2(&evil, MntFlags::empty()).unwrap();
}

/// Makes `dir` a mount point (a bind of itself) and makes it, and what is below it, shared.
fn shared_bind_of_itself(dir: &Path) {
    mount(Some(dir), dir, None::<&str>, MsFlags::MS_BIND, None::<&str>).unwrap();
    mount(
        None::<&str>,
        dir,
        None::<&str>,
        MsFlags::MS_SHARED | MsFlags::MS_REC,
        None::<&str>,
    )
    .unwrap();
}

const POD_UID: &str = "11111111-2222-4333-8444-555555555555";
const VIRTUAL_UID: &str = "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee";

struct Node {
    base: PathBuf,
    kubelet: PathBuf,
    loft: PathBuf,
}

impl Node {
    fn new() -> Node {
        let base = std::env::temp_dir().join(format!("fm-mounts-{}", fleetmirror_tests::suffix()));
        std::fs::create_dir_all(&base).unwrap();
        mount(
            Some("tmpfs"),
            &base,
            Some("tmpfs"),
            MsFlags::empty(),
            None::<&str>,
        )
        .unwrap();
        let kubelet = base.join("kubelet");
        std::fs::create_dir_all(kubelet.join("pods").join(POD_UID).join("volumes")).unwrap();
        std::fs::write(
            kubelet.join("pods").join(POD_UID).join("hello"),
            "from the pod",
        )
        .unwrap();
        // What kubelet does to its root: a bind of itself, made rshared.
        shared_bind_of_itself(&kubelet);
        let loft = base.join("loft");
        std::fs::create_dir_all(&loft).unwrap();
        Node {
            base,
            kubelet,
            loft,
        }
    }

    fn source(&self) -> Target {
        Target {
            root: self.kubelet.clone(),
            components: vec!["pods".into(), POD_UID.into()],
        }
    }

    fn target(&self, vc: &str) -> Target {
        Target {
            root: self.loft.clone(),
            components: [vc, "kubelet", "pods", VIRTUAL_UID]
                .map(String::from)
                .to_vec(),
        }
    }

    fn table(&self) -> MountTable {
        MountTable::parse_bytes(&LinuxKernel::default().mountinfo().unwrap())
    }

    /// The mounts below `dir`, but the classic path's (private, empty) staging directory.
    fn mounts_under(&self, dir: &Path) -> Vec<PathBuf> {
        self.table()
            .entries()
            .iter()
            .map(|e| e.mount_point.clone())
            .filter(|p| p.starts_with(dir) && !p.starts_with(self.loft.join(STAGING_DIR)))
            .collect()
    }

    /// The kernel layer with `api`; the classic path stages below the loft root, as the agent
    /// does with the first root of its enabled layouts.
    fn kernel(&self, api: MountApi) -> LinuxKernel {
        LinuxKernel::new(api, Some(Staging::UnderRoot(self.loft.clone())))
    }
}

#[test]
fn recursive_bind_shows_the_pod_and_later_volumes_one_way() {
    if inside_private_mount_namespace("recursive_bind_shows_the_pod_and_later_volumes_one_way") {
        recursive_bind(MountApi::Auto);
    }
}

/// The same on the classic path (kernels before 5.12).
#[test]
fn recursive_bind_shows_the_pod_and_later_volumes_one_way_classic() {
    if inside_private_mount_namespace(
        "recursive_bind_shows_the_pod_and_later_volumes_one_way_classic",
    ) {
        recursive_bind(MountApi::Classic);
    }
}

fn recursive_bind(api: MountApi) {
    let node = Node::new();
    let k = node.kernel(api);
    let (src, dst) = (node.source(), node.target("vc"));
    k.bind(&src, &dst).unwrap();
    let (s, t) = (src.path(), dst.path());
    assert_eq!(
        std::fs::read_to_string(t.join("hello")).unwrap(),
        "from the pod"
    );
    assert!(
        node.table().is_bind_of(&t, &s),
        "mountinfo shows the target as a bind of the source"
    );

    assert_one_way(&s, &t);

    // Unmount: the target is gone (directory removed), the pod directory is untouched.
    k.unmount(&dst).unwrap();
    assert!(!t.exists(), "the empty target directory is removed");
    assert!(node.mounts_under(&node.loft).is_empty());
    assert_eq!(
        std::fs::read_to_string(s.join("hello")).unwrap(),
        "from the pod"
    );
    let _ = node.base;
}

#[test]
fn symlinks_under_our_roots_are_refused_never_followed() {
    if inside_private_mount_namespace("symlinks_under_our_roots_are_refused_never_followed") {
        symlinks_refused(MountApi::Auto);
    }
}

#[test]
fn symlinks_under_our_roots_are_refused_never_followed_classic() {
    if inside_private_mount_namespace("symlinks_under_our_roots_are_refused_never_followed_classic")
    {
        symlinks_refused(MountApi::Classic);
    }
}

fn symlinks_refused(api: MountApi) {
    let node = Node::new();
    let k = node.kernel(api);
    let elsewhere = node.base.join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();

    // A symlink planted at a parent of the target.
    std::os::unix::fs::symlink(&elsewhere, node.loft.join("evil")).unwrap();
    let err = k.bind(&node.source(), &node.target("evil")).unwrap_err();
    assert!(matches!(err, KernelError::Symlink { .. }), "{err}");
    assert!(
        std::fs::read_dir(&elsewhere).unwrap().next().is_none(),
        "nothing created through the symlink"
    );

    // A symlink planted at the target directory itself.
    let t = node.target("vc");
    k.ensure_dir(&t.parent()).unwrap();
    std::os::unix::fs::symlink(&elsewhere, t.path()).unwrap();
    let err = k.bind(&node.source(), &t).unwrap_err();
    assert!(matches!(err, KernelError::Symlink { .. }), "{err}");

    // A pod directory that is a symlink (to /etc, say) is refused as a source.
    let fake_uid = "99999999-2222-4333-8444-555555555555";
    std::os::unix::fs::symlink("/etc", node.kubelet.join("pods").join(fake_uid)).unwrap();
    let src = Target {
        root: node.kubelet.clone(),
        components: vec!["pods".into(), fake_uid.into()],
    };
    let err = k.bind(&src, &node.target("ok")).unwrap_err();
    assert!(matches!(err, KernelError::Symlink { .. }), "{err}");

    // Unmount through a symlinked component is refused, and the mount it points at stays.
    let real = node.target("real");
    k.bind(&node.source(), &real).unwrap();
    std::os::unix::fs::symlink(node.loft.join("real"), node.loft.join("alias")).unwrap();
    let err = k.unmount(&node.target("alias")).unwrap_err();
    assert!(matches!(err, KernelError::Symlink { .. }), "{err}");
    assert!(
        node.table().at(&real.path()).is_some(),
        "the real mount is untouched"
    );
    k.unmount(&real).unwrap();
    assert!(node.table().at(&real.path()).is_none());

    assert!(
        node.mounts_under(&node.loft).is_empty(),
        "no mount was made anywhere under the loft root"
    );
    assert!(node.mounts_under(&elsewhere).is_empty());
    assert!(matches!(
        k.bind(
            &Target {
                root: node.kubelet.clone(),
                components: vec!["pods".into(), "gone".into()]
            },
            &node.target("vc2")
        ),
        Err(KernelError::Missing { .. })
    ));
}

/// Production: /var/lib/loft is mounted Bidirectional, so the agent's loft root is a shared
/// mount whose peer is the host's /var/lib/loft, and every bind the agent makes is propagated
/// to the host. The host's copy must be as one-way as the agent's: kubelet's later volumes
/// reach it, nothing mounted in it reaches kubelet's tree.
#[test]
fn the_propagated_copy_on_a_shared_loft_root_is_one_way_too() {
    if inside_private_mount_namespace("the_propagated_copy_on_a_shared_loft_root_is_one_way_too") {
        propagated_copy_one_way(MountApi::Auto);
    }
}

/// Kernels before 5.12 are as safe: the classic bind is made a slave in a private staging
/// directory before it is moved under the shared root.
#[test]
fn the_propagated_copy_on_a_shared_loft_root_is_one_way_too_classic() {
    if inside_private_mount_namespace(
        "the_propagated_copy_on_a_shared_loft_root_is_one_way_too_classic",
    ) {
        propagated_copy_one_way(MountApi::Classic);
    }
}

fn propagated_copy_one_way(api: MountApi) {
    let node = Node::new();
    // The loft root made shared, with a peer standing in for the host's view of it.
    shared_bind_of_itself(&node.loft);
    let host_loft = node.base.join("host-loft");
    std::fs::create_dir_all(&host_loft).unwrap();
    mount(
        Some(&node.loft),
        &host_loft,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .unwrap();

    let k = node.kernel(api);
    let (src, dst) = (node.source(), node.target("vc"));
    k.bind(&src, &dst).unwrap();
    let s = src.path();
    let host_copy = host_loft.join(dst.path().strip_prefix(&node.loft).unwrap());
    assert_eq!(
        std::fs::read_to_string(host_copy.join("hello")).unwrap(),
        "from the pod",
        "the bind reaches the host's view of the loft root"
    );

    assert_one_way(&s, &host_copy);
    k.unmount(&dst).unwrap();
    assert!(
        !host_copy.join("hello").exists(),
        "the unmount reaches the host's view too"
    );
}

/// A bind already in place but still a peer of kubelet's tree (an older agent's, or
/// vcluster-fs-syncer's `mount --bind` from the rshared kubelet root) is bound again as a
/// slave — in the agent's view and in the host's copy of it, which making the agent's copy a
/// slave in place would leave a peer.
#[test]
fn a_shared_adopted_bind_is_bound_again_as_a_slave() {
    if inside_private_mount_namespace("a_shared_adopted_bind_is_bound_again_as_a_slave") {
        adopted_peer_rebound(MountApi::Auto);
    }
}

#[test]
fn a_shared_adopted_bind_is_bound_again_as_a_slave_classic() {
    if inside_private_mount_namespace("a_shared_adopted_bind_is_bound_again_as_a_slave_classic") {
        adopted_peer_rebound(MountApi::Classic);
    }
}

fn adopted_peer_rebound(api: MountApi) {
    let node = Node::new();
    shared_bind_of_itself(&node.loft);
    let host_loft = node.base.join("host-loft");
    std::fs::create_dir_all(&host_loft).unwrap();
    mount(
        Some(&node.loft),
        &host_loft,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .unwrap();
    let (src, dst) = (node.source(), node.target("vc"));
    let k = node.kernel(api);
    k.ensure_dir(&dst).unwrap();
    // What an older agent did: a plain recursive bind, a peer of kubelet's tree.
    mount(
        Some(&src.path()),
        &dst.path(),
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .unwrap();
    let host_copy = host_loft.join(dst.path().strip_prefix(&node.loft).unwrap());
    let kubelet = node.table().containing(&src.path()).cloned().unwrap();
    for view in [&dst.path(), &host_copy] {
        let before = node.table().at(view).cloned().unwrap();
        assert!(
            !before.is_slave() && before.peer_group() == kubelet.peer_group(),
            "{view:?}: {:?}",
            before.optional
        );
    }

    k.rebind(&src, &dst).unwrap();
    for view in [&dst.path(), &host_copy] {
        let after = node.table().at(view).cloned().unwrap();
        assert!(
            after.is_slave() && after.peer_group() != kubelet.peer_group(),
            "{view:?}: {:?}",
            after.optional
        );
        assert_eq!(
            std::fs::read_to_string(view.join("hello")).unwrap(),
            "from the pod"
        );
    }
    assert_one_way(&src.path(), &dst.path());
    assert_one_way(&src.path(), &host_copy);
}

/// The DaemonSet's staging directory is an emptyDir (--mount-staging-dir): a mount of its own,
/// possibly shared (a node whose kubelet root is rshared), which the agent makes private before
/// the first bind; a directory that is no mount is refused rather than made one.
#[test]
fn classic_binds_are_prepared_in_a_given_staging_mount() {
    if !inside_private_mount_namespace("classic_binds_are_prepared_in_a_given_staging_mount") {
        return;
    }
    let node = Node::new();
    shared_bind_of_itself(&node.loft);
    let plain = node.base.join("not-a-mount");
    std::fs::create_dir_all(&plain).unwrap();
    let k = LinuxKernel::new(MountApi::Classic, Some(Staging::Dir(plain.clone())));
    let (src, dst) = (node.source(), node.target("vc"));
    let refused = k.bind(&src, &dst).unwrap_err();
    assert!(
        matches!(&refused, KernelError::Sys { op: "staging", .. }),
        "{refused}"
    );
    assert!(node.table().at(&dst.path()).is_none());

    let staging = node.base.join("staging");
    shared_bind_of_itself(&{
        std::fs::create_dir_all(&staging).unwrap();
        staging.clone()
    });
    let k = LinuxKernel::new(MountApi::Classic, Some(Staging::Dir(staging.clone())));
    k.bind(&src, &dst).unwrap();
    let table = node.table();
    assert!(table.at(&staging).is_some_and(|e| !e.is_shared()));
    assert!(table.at(&dst.path()).is_some_and(|e| e.is_slave()));
    assert_eq!(
        std::fs::read_dir(&staging).unwrap().count(),
        0,
        "the staging directory is left empty"
    );
    assert_one_way(&src.path(), &dst.path());
}
