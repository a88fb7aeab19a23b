//! The seam around the kernel: every syscall the agent makes for mounts goes through
//! [`Kernel`], injected by constructor. [`LinuxKernel`] is the real thing (tested for real, as
//! root, in a private mount namespace); [`RecordingKernel`] is a fake that records calls and
//! injects errors, for reconciler tests of failures a real kernel will not produce on demand.
//!
//! Safety of [`LinuxKernel`] (the agent is privileged; every path component below a root came
//! from a tenant, even though validated):
//! * directories are opened and created one component at a time with `openat2(2)` and
//!   `RESOLVE_NO_SYMLINKS | RESOLVE_BENEATH`: a symlink anywhere below a root is refused
//!   (`ELOOP`), never followed;
//! * mounts are made *through the opened file descriptors* (`/proc/self/fd/N`), so swapping a
//!   directory for a symlink between the check and the mount cannot redirect the mount;
//! * a new bind is made a slave (`MS_SLAVE | MS_REC`) *before* it is attached (`open_tree`,
//!   `mount_setattr`, `move_mount`; see [`crate::mountapi`]): volumes kubelet mounts later
//!   inside the pod directory appear (and vanish) in the copy and in the host's copies of it,
//!   while nothing mounted inside any copy can propagate back into kubelet's tree, and a
//!   failure at any step leaves no mount. Kernels before 5.12 (or a seccomp filter refusing the
//!   new API) get the same guarantees from the classic calls: the bind is made in a private
//!   staging directory below the first root (`.fleetmirror-staging`), made a slave there, and
//!   only then moved to the target (`MS_MOVE`); a failed step detaches it at once;
//! * a bind found already in place but still a peer of kubelet's tree (made by an older agent
//!   or vcluster-fs-syncer) is detached and bound again as a slave (making it a slave in place
//!   would leave the host's propagated copy a peer);
//! * unmounts are lazy (`MNT_DETACH`) and made through a descriptor opened without following
//!   any symlink, so no path component can be swapped between the check and the unmount.

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use fleetmirror_core::plan::Target;
use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use nix::mount::{MntFlags, MsFlags};
use nix::sys::stat::Mode;

/// A failed kernel operation, with the path it concerned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KernelError {
    /// A symlink (or a non-directory) sits where a directory of ours should be.
    #[error(
        "refused: {path} is a symlink or not a directory (symlinks are never followed under our roots)"
    )]
    Symlink { path: PathBuf },
    /// The source directory is gone.
    #[error("{path} does not exist")]
    Missing { path: PathBuf },
    /// Any other errno.
    #[error("{op} {path}: {errno}")]
    Sys {
        op: &'static str,
        path: PathBuf,
        errno: Errno,
    },
}

impl KernelError {
    /// A bounded label for metrics.
    pub fn category(&self) -> &'static str {
        match self {
            KernelError::Symlink { .. } => "symlink",
            KernelError::Missing { .. } => "missing",
            KernelError::Sys { op, .. } => op,
        }
    }
}

/// The kernel operations the node reconciler needs.
pub trait Kernel: Send + Sync + std::fmt::Debug {
    /// The bytes of `/proc/self/mountinfo` (paths may hold any byte but the escaped four).
    fn mountinfo(&self) -> Result<Vec<u8>, KernelError>;
    /// Names in `dir` (for `<kubelet>/pods`: the pod directories).
    fn list_dir(&self, dir: &Path) -> Result<BTreeSet<String>, KernelError>;
    /// Creates `target`'s directories, refusing symlinks.
    fn ensure_dir(&self, target: &Target) -> Result<(), KernelError>;
    /// Recursively bind-mounts `source` at `target` (creating it), as a slave.
    fn bind(&self, source: &Target, target: &Target) -> Result<(), KernelError>;
    /// Replaces the bind at `target` with a fresh slave bind of `source`: a bind an older
    /// agent or vcluster-fs-syncer made as a peer of kubelet's tree is detached (the detach
    /// reaches the host's copy through the shared root) and bound again, one-way.
    fn rebind(&self, source: &Target, target: &Target) -> Result<(), KernelError>;
    /// Lazily unmounts `target`, then removes its directory if empty.
    fn unmount(&self, target: &Target) -> Result<(), KernelError>;
}

/// Which mount API binds are made with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum MountApi {
    /// The new API (`open_tree`, `mount_setattr`, `move_mount`; Linux ≥ 5.12), falling back to
    /// the classic one where it is unavailable.
    #[default]
    Auto,
    /// The classic `mount(2)` sequence only (kernels before 5.12; and tests of that path).
    Classic,
}

/// The directory below the first root where the classic path prepares binds.
pub const STAGING_DIR: &str = ".fleetmirror-staging";

/// The real kernel.
#[derive(Debug, Default)]
pub struct LinuxKernel {
    api: MountApi,
    /// Where the classic path prepares binds: a directory that is a private mount (an
    /// emptyDir in the DaemonSet), or `<root>/.fleetmirror-staging` made one. `None`: bind in
    /// place (tests of the bare sequence only).
    staging: Option<Staging>,
    /// The staging directory is known to be a private mount.
    staging_ready: AtomicBool,
}

/// Where classic binds are prepared.
#[derive(Debug, Clone)]
pub enum Staging {
    /// A directory that is already a private mount (`--mount-staging-dir`).
    Dir(PathBuf),
    /// `<root>/.fleetmirror-staging`, made a private mount of its own when first needed.
    UnderRoot(PathBuf),
}

impl Staging {
    fn target(&self) -> Target {
        match self {
            Staging::Dir(d) => Target {
                root: d.clone(),
                components: vec![],
            },
            Staging::UnderRoot(r) => Target {
                root: r.clone(),
                components: vec![STAGING_DIR.into()],
            },
        }
    }
}

impl LinuxKernel {
    /// A kernel using `api`, preparing classic binds in `staging`. `MountApi::Classic` also
    /// opens paths the way kernels without `openat2` must (what tests of the oldest path need).
    pub fn new(api: MountApi, staging: Option<Staging>) -> Self {
        if api == MountApi::Classic {
            LEGACY_OPEN.store(true, Ordering::Relaxed);
        }
        Self {
            api,
            staging,
            staging_ready: AtomicBool::new(false),
        }
    }

    /// The staging directory, a private mount (made so, the first time, for one under a
    /// root): a bind made below it propagates nowhere.
    fn staging(&self, staging: &Staging) -> Result<OwnedFd, KernelError> {
        let dir = staging.target();
        let fd = open_target(&dir, true)?;
        if self.staging_ready.load(Ordering::Relaxed) {
            return Ok(fd);
        }
        let path = dir.path();
        let table = fleetmirror_core::mountinfo::MountTable::parse_bytes(&self.mountinfo()?);
        let is_mount = table.at(&path).is_some_and(|e| e.mount_point == path);
        if !is_mount {
            if let Staging::Dir(_) = staging {
                return Err(KernelError::Sys {
                    op: "staging",
                    path,
                    errno: Errno::ENOTBLK,
                });
            }
            nix::mount::mount(
                Some(&fd_path(&fd)),
                &fd_path(&fd),
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(sys("mount", &path))?;
        }
        let fd = open_target(&dir, false)?;
        let shared = table.at(&path).is_some_and(|e| e.is_shared());
        if !is_mount || shared {
            nix::mount::mount(
                None::<&str>,
                &fd_path(&fd),
                None::<&str>,
                MsFlags::MS_PRIVATE,
                None::<&str>,
            )
            .map_err(sys("make-private", &path))?;
        }
        self.staging_ready.store(true, Ordering::Relaxed);
        Ok(fd)
    }

    /// The classic sequence: bind, make the copy a slave, and only then put it at the target;
    /// with a staging root the copy is made in the private staging directory and moved to the
    /// target (so, as with the new API, nothing reachable is ever a peer of kubelet's tree),
    /// else in place. A failure after the bind detaches it at once.
    fn classic_bind(
        &self,
        src: &OwnedFd,
        dst: &OwnedFd,
        target: &Target,
    ) -> Result<(), KernelError> {
        let Some(staging_spec) = &self.staging else {
            let mut steps = InPlace {
                src,
                dst,
                target,
                mounted: None,
            };
            return classic_sequence(&mut steps);
        };
        let staging = match self.staging(staging_spec) {
            Ok(fd) => fd,
            Err(e) => {
                // Checked again next time: someone may have unmounted it.
                self.staging_ready.store(false, Ordering::Relaxed);
                return Err(e);
            }
        };
        // A random name: two agents (an old one still draining, a new one) never share one.
        let name = format!("{:016x}", rand::random::<u64>());
        let mut stage = staging_spec.target();
        stage.components.push(name.clone());
        match nix::sys::stat::mkdirat(&staging, name.as_str(), Mode::from_bits_truncate(0o700)) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => {
                self.staging_ready.store(false, Ordering::Relaxed);
                return Err(sys("mkdir", &stage.path())(e));
            }
        }
        let stage_fd = open_target(&stage, false)?;
        let mut steps = Staged {
            src,
            dst,
            target,
            stage: &stage,
            stage_fd,
            mounted: None,
        };
        let result = classic_sequence(&mut steps);
        drop(steps);
        let _ = nix::unistd::unlinkat(
            &staging,
            name.as_str(),
            nix::unistd::UnlinkatFlags::RemoveDir,
        );
        if result.is_err() {
            self.staging_ready.store(false, Ordering::Relaxed);
        }
        result
    }
}

/// The steps of the classic bind sequence, so that its failure handling is tested with a fake.
pub trait ClassicSteps {
    /// Binds the source (recursively) where the copy is prepared.
    fn bind(&mut self) -> Result<(), KernelError>;
    /// Makes the fresh copy a slave.
    fn make_slave(&mut self) -> Result<(), KernelError>;
    /// Puts the prepared copy at the target (nothing to do when prepared in place).
    fn attach(&mut self) -> Result<(), KernelError>;
    /// Detaches the fresh copy (after a failure).
    fn detach(&mut self);
}

/// Runs the classic sequence: a copy that is not a slave, or not at its target, never stays.
pub fn classic_sequence(steps: &mut impl ClassicSteps) -> Result<(), KernelError> {
    steps.bind()?;
    if let Err(e) = steps.make_slave().and_then(|()| steps.attach()) {
        steps.detach();
        return Err(e);
    }
    Ok(())
}

struct InPlace<'a> {
    src: &'a OwnedFd,
    dst: &'a OwnedFd,
    target: &'a Target,
    mounted: Option<OwnedFd>,
}

impl ClassicSteps for InPlace<'_> {
    fn bind(&mut self) -> Result<(), KernelError> {
        bind_fd(self.src, self.dst, &self.target.path())?;
        // Reopen: the new mount now sits on top of the directory `dst` refers to.
        self.mounted = Some(open_target(self.target, false)?);
        Ok(())
    }

    fn make_slave(&mut self) -> Result<(), KernelError> {
        slave_fd(self.mounted.as_ref().expect("bound"), &self.target.path())
    }

    fn attach(&mut self) -> Result<(), KernelError> {
        Ok(())
    }

    fn detach(&mut self) {
        detach_fd(self.mounted.as_ref(), &self.target.path());
    }
}

struct Staged<'a> {
    src: &'a OwnedFd,
    dst: &'a OwnedFd,
    target: &'a Target,
    stage: &'a Target,
    stage_fd: OwnedFd,
    mounted: Option<OwnedFd>,
}

impl ClassicSteps for Staged<'_> {
    fn bind(&mut self) -> Result<(), KernelError> {
        bind_fd(self.src, &self.stage_fd, &self.stage.path())?;
        self.mounted = Some(open_target(self.stage, false)?);
        Ok(())
    }

    fn make_slave(&mut self) -> Result<(), KernelError> {
        slave_fd(self.mounted.as_ref().expect("bound"), &self.stage.path())
    }

    fn attach(&mut self) -> Result<(), KernelError> {
        let path = self.target.path();
        nix::mount::mount(
            Some(&fd_path(self.mounted.as_ref().expect("bound"))),
            &fd_path(self.dst),
            None::<&str>,
            MsFlags::MS_MOVE,
            None::<&str>,
        )
        .map_err(sys("move", &path))
    }

    fn detach(&mut self) {
        detach_fd(self.mounted.as_ref(), &self.stage.path());
    }
}

fn bind_fd(src: &OwnedFd, dst: &OwnedFd, path: &Path) -> Result<(), KernelError> {
    nix::mount::mount(
        Some(&fd_path(src)),
        &fd_path(dst),
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(sys("mount", path))
}

fn slave_fd(mounted: &OwnedFd, path: &Path) -> Result<(), KernelError> {
    nix::mount::mount(
        None::<&str>,
        &fd_path(mounted),
        None::<&str>,
        MsFlags::MS_SLAVE | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(sys("make-slave", path))
}

fn detach_fd(mounted: Option<&OwnedFd>, path: &Path) {
    let Some(fd) = mounted else { return };
    if let Err(e) = nix::mount::umount2(&fd_path(fd), MntFlags::MNT_DETACH) {
        tracing::error!(path = %path.display(), error = %e, "could not detach a bind whose preparation failed");
    }
}

fn sys<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(Errno) -> KernelError + 'a {
    move |errno| match errno {
        Errno::ELOOP | Errno::ENOTDIR | Errno::EXDEV => KernelError::Symlink {
            path: path.to_path_buf(),
        },
        Errno::ENOENT => KernelError::Missing {
            path: path.to_path_buf(),
        },
        errno => KernelError::Sys {
            op,
            path: path.to_path_buf(),
            errno,
        },
    }
}

fn beneath() -> ResolveFlag {
    ResolveFlag::RESOLVE_NO_SYMLINKS
        | ResolveFlag::RESOLVE_BENEATH
        | ResolveFlag::RESOLVE_NO_MAGICLINKS
}

fn open_dir_how() -> OpenHow {
    OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
        .resolve(beneath())
}

/// Opens the trusted root (configured by flags: it may itself be reached through symlinks).
fn open_root(root: &Path) -> Result<OwnedFd, KernelError> {
    nix::fcntl::open(
        root,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(sys("open", root))
}

/// Set when `openat2(2)` is unavailable (kernels before 5.6), or by `--mount-api classic`.
static LEGACY_OPEN: AtomicBool = AtomicBool::new(false);

/// Opens one component below `dir`, never following a symlink: `openat2` with
/// `RESOLVE_NO_SYMLINKS | RESOLVE_BENEATH`, or, where the kernel has no `openat2`,
/// `openat(O_PATH | O_DIRECTORY | O_NOFOLLOW)` — as safe here, since every component is one
/// validated name (never `/`, `.` or `..`) and a symlink fails with ENOTDIR.
fn open_component(dir: &OwnedFd, name: &str) -> Result<OwnedFd, Errno> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(Errno::EXDEV);
    }
    if !LEGACY_OPEN.load(Ordering::Relaxed) {
        match openat2(dir, name, open_dir_how()) {
            Err(Errno::ENOSYS) => {
                LEGACY_OPEN.store(true, Ordering::Relaxed);
                tracing::warn!(
                    "openat2 is not available (a kernel before 5.6): opening paths one component at a time with O_NOFOLLOW"
                );
            }
            other => return other,
        }
    }
    nix::fcntl::openat(
        dir,
        name,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
}

/// Opens `target` component by component below its root, creating missing directories when
/// `create`; never follows a symlink.
fn open_target(target: &Target, create: bool) -> Result<OwnedFd, KernelError> {
    let mut fd = open_root(&target.root)?;
    let mut path = target.root.clone();
    for c in &target.components {
        path.push(c);
        let next = match open_component(&fd, c) {
            Err(Errno::ENOENT) if create => {
                match nix::sys::stat::mkdirat(&fd, c.as_str(), Mode::from_bits_truncate(0o755)) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(sys("mkdir", &path)(e)),
                }
                open_component(&fd, c)
            }
            other => other,
        };
        fd = next.map_err(sys("open", &path))?;
    }
    Ok(fd)
}

fn fd_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

impl Kernel for LinuxKernel {
    fn mountinfo(&self) -> Result<Vec<u8>, KernelError> {
        let path = Path::new("/proc/self/mountinfo");
        std::fs::read(path)
            .map_err(|e| sys("read", path)(Errno::from_raw(e.raw_os_error().unwrap_or(0))))
    }

    fn list_dir(&self, dir: &Path) -> Result<BTreeSet<String>, KernelError> {
        let entries = std::fs::read_dir(dir)
            .map_err(|e| sys("readdir", dir)(Errno::from_raw(e.raw_os_error().unwrap_or(0))))?;
        Ok(entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect())
    }

    fn ensure_dir(&self, target: &Target) -> Result<(), KernelError> {
        open_target(target, true).map(drop)
    }

    fn bind(&self, source: &Target, target: &Target) -> Result<(), KernelError> {
        let src = open_target(source, false)?;
        let dst = open_target(target, true)?;
        let target_path = target.path();
        if self.api == MountApi::Classic {
            return self.classic_bind(&src, &dst, target);
        }
        // Prepared detached, made a slave, then attached: see `mountapi`. Where the new mount
        // API is not available, the classic sequence (dropping a tree dissolves it).
        use crate::mountapi::{attach, clone_tree, make_slave, unavailable};
        let tree = match clone_tree(&src) {
            Ok(tree) => tree,
            Err(e) if unavailable(e) => return self.classic_bind(&src, &dst, target),
            Err(e) => return Err(sys("open_tree", &source.path())(e)),
        };
        match make_slave(&tree) {
            Ok(()) => match attach(tree, &dst) {
                Ok(()) => Ok(()),
                // A seccomp profile that allows the first calls but not move_mount: the
                // dropped tree is dissolved, and the classic sequence does it.
                Err(e) if unavailable(e) => self.classic_bind(&src, &dst, target),
                Err(e) => Err(sys("mount", &target_path)(e)),
            },
            Err(e) if unavailable(e) => {
                drop(tree);
                self.classic_bind(&src, &dst, target)
            }
            Err(e) => Err(sys("make-slave", &target_path)(e)),
        }
    }

    fn rebind(&self, source: &Target, target: &Target) -> Result<(), KernelError> {
        // The source first: a pod directory that vanished keeps its (garbage) bind for GC.
        drop(open_target(source, false)?);
        let mounted = open_target(target, false)?;
        nix::mount::umount2(&fd_path(&mounted), MntFlags::MNT_DETACH)
            .map_err(sys("umount", &target.path()))?;
        drop(mounted);
        self.bind(source, target)
    }

    fn unmount(&self, target: &Target) -> Result<(), KernelError> {
        let path = target.path();
        // Open the mount without following any symlink, then unmount *through that file
        // descriptor*: a directory swapped for a symlink after the check cannot redirect the
        // unmount to another mount. (The magic link must be followed, so no UMOUNT_NOFOLLOW;
        // a lazy detach is not blocked by the descriptor we hold.)
        let mounted = open_target(target, false)?;
        nix::mount::umount2(&fd_path(&mounted), MntFlags::MNT_DETACH)
            .map_err(sys("umount", &path))?;
        drop(mounted);
        let parent = open_target(&target.parent(), false)?;
        let name = target
            .components
            .last()
            .map(String::as_str)
            .unwrap_or_default();
        match nix::unistd::unlinkat(&parent, name, nix::unistd::UnlinkatFlags::RemoveDir) {
            Ok(()) | Err(Errno::ENOENT | Errno::ENOTEMPTY | Errno::EBUSY) => Ok(()),
            Err(e) => Err(sys("rmdir", &path)(e)),
        }
    }
}

/// A call the [`RecordingKernel`] received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// `ensure_dir`.
    EnsureDir(PathBuf),
    /// `bind(source, target)`.
    Bind(PathBuf, PathBuf),
    /// `unmount`.
    Unmount(PathBuf),
    /// `rebind(source, target)`.
    Rebind(PathBuf, PathBuf),
}

#[derive(Debug, Default)]
struct FakeState {
    calls: Vec<Call>,
    /// target → source, in mount order.
    mounts: Vec<(PathBuf, PathBuf)>,
    dirs: BTreeMap<PathBuf, BTreeSet<String>>,
    fail: BTreeMap<PathBuf, KernelError>,
    /// How long every mountinfo read takes (a slow, busy node).
    delay: std::time::Duration,
}

/// A fake kernel: keeps a mount table in memory, renders it as mountinfo, records every call,
/// and fails the operations on paths given to [`RecordingKernel::fail_on`].
#[derive(Debug, Default)]
pub struct RecordingKernel {
    state: Mutex<FakeState>,
}

impl RecordingKernel {
    fn lock(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes every operation on `path` fail with `error` until [`RecordingKernel::heal`].
    pub fn fail_on(&self, path: impl Into<PathBuf>, error: KernelError) {
        self.lock().fail.insert(path.into(), error);
    }

    /// Stops failing operations on `path`.
    pub fn heal(&self, path: &Path) {
        self.lock().fail.remove(path);
    }

    /// Sets the entries of a directory.
    pub fn set_dir(&self, dir: impl Into<PathBuf>, names: &[&str]) {
        self.lock()
            .dirs
            .insert(dir.into(), names.iter().map(|s| s.to_string()).collect());
    }

    /// Puts a mount that is not ours (of `source`) at `target`.
    pub fn mount_foreign(&self, target: impl Into<PathBuf>, source: impl Into<PathBuf>) {
        self.lock().mounts.push((target.into(), source.into()));
    }

    /// Makes every mountinfo read take `delay` (blocking the calling thread).
    pub fn set_delay(&self, delay: std::time::Duration) {
        self.lock().delay = delay;
    }

    /// Every call so far, and forgets them.
    pub fn take_calls(&self) -> Vec<Call> {
        std::mem::take(&mut self.lock().calls)
    }

    /// Current mounts, target → source.
    pub fn mounts(&self) -> Vec<(PathBuf, PathBuf)> {
        self.lock().mounts.clone()
    }

    fn check(&self, state: &FakeState, path: &Path) -> Result<(), KernelError> {
        state.fail.get(path).map_or(Ok(()), |e| Err(e.clone()))
    }
}

impl Kernel for RecordingKernel {
    fn mountinfo(&self) -> Result<Vec<u8>, KernelError> {
        let delay = self.lock().delay;
        std::thread::sleep(delay);
        let s = self.lock();
        self.check(&s, Path::new("/proc/self/mountinfo"))?;
        let mut text = String::from("1 0 8:1 / / rw shared:1 - ext4 /dev/fake rw\n");
        for (i, (target, source)) in s.mounts.iter().enumerate() {
            text.push_str(&format!(
                "{} 1 8:1 {} {} rw master:1 - ext4 /dev/fake rw\n",
                i + 2,
                source.display(),
                target.display()
            ));
        }
        Ok(text.into_bytes())
    }

    fn list_dir(&self, dir: &Path) -> Result<BTreeSet<String>, KernelError> {
        let s = self.lock();
        self.check(&s, dir)?;
        Ok(s.dirs.get(dir).cloned().unwrap_or_default())
    }

    fn ensure_dir(&self, target: &Target) -> Result<(), KernelError> {
        let mut s = self.lock();
        let path = target.path();
        s.calls.push(Call::EnsureDir(path.clone()));
        self.check(&s, &path)
    }

    fn bind(&self, source: &Target, target: &Target) -> Result<(), KernelError> {
        let mut s = self.lock();
        let (src, dst) = (source.path(), target.path());
        s.calls.push(Call::Bind(src.clone(), dst.clone()));
        self.check(&s, &dst)?;
        s.mounts.push((dst, src));
        Ok(())
    }

    fn rebind(&self, source: &Target, target: &Target) -> Result<(), KernelError> {
        let mut s = self.lock();
        let (src, dst) = (source.path(), target.path());
        s.calls.push(Call::Rebind(src.clone(), dst.clone()));
        self.check(&s, &dst)?;
        s.mounts.retain(|(t, _)| *t != dst);
        s.mounts.push((dst, src));
        Ok(())
    }

    fn unmount(&self, target: &Target) -> Result<(), KernelError> {
        let mut s = self.lock();
        let path = target.path();
        s.calls.push(Call::Unmount(path.clone()));
        self.check(&s, &path)?;
        s.mounts.retain(|(t, _)| *t != path);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The classic steps, recorded, failing where told.
    #[derive(Default)]
    struct FakeSteps {
        log: Vec<&'static str>,
        fail: Option<&'static str>,
    }

    impl FakeSteps {
        fn step(&mut self, name: &'static str) -> Result<(), KernelError> {
            self.log.push(name);
            if self.fail == Some(name) {
                return Err(KernelError::Sys {
                    op: name,
                    path: "/t".into(),
                    errno: Errno::EPERM,
                });
            }
            Ok(())
        }
    }

    impl ClassicSteps for FakeSteps {
        fn bind(&mut self) -> Result<(), KernelError> {
            self.step("bind")
        }
        fn make_slave(&mut self) -> Result<(), KernelError> {
            self.step("make-slave")
        }
        fn attach(&mut self) -> Result<(), KernelError> {
            self.step("attach")
        }
        fn detach(&mut self) {
            self.log.push("detach");
        }
    }

    #[test]
    fn a_classic_bind_that_cannot_be_made_a_slave_is_detached_at_once() {
        let cases = [
            (None, vec!["bind", "make-slave", "attach"], true),
            (Some("bind"), vec!["bind"], false),
            (
                Some("make-slave"),
                vec!["bind", "make-slave", "detach"],
                false,
            ),
            (
                Some("attach"),
                vec!["bind", "make-slave", "attach", "detach"],
                false,
            ),
        ];
        for (fail, want, ok) in cases {
            let mut steps = FakeSteps {
                fail,
                ..Default::default()
            };
            assert_eq!(classic_sequence(&mut steps).is_ok(), ok, "{fail:?}");
            assert_eq!(steps.log, want, "failing {fail:?}: no shared copy is left");
        }
    }
}
