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
//!   failure at any step leaves no mount;
//! * unmounts are lazy (`MNT_DETACH`) and made through a descriptor opened without following
//!   any symlink, so no path component can be swapped between the check and the unmount.

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

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
    /// Lazily unmounts `target`, then removes its directory if empty.
    fn unmount(&self, target: &Target) -> Result<(), KernelError>;
}

/// The real kernel.
#[derive(Debug, Default)]
pub struct LinuxKernel;

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

/// Opens `target` component by component below its root, creating missing directories when
/// `create`; never follows a symlink.
fn open_target(target: &Target, create: bool) -> Result<OwnedFd, KernelError> {
    let mut fd = open_root(&target.root)?;
    let mut path = target.root.clone();
    for c in &target.components {
        path.push(c);
        let next = match openat2(&fd, c.as_str(), open_dir_how()) {
            Err(Errno::ENOENT) if create => {
                match nix::sys::stat::mkdirat(&fd, c.as_str(), Mode::from_bits_truncate(0o755)) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(sys("mkdir", &path)(e)),
                }
                openat2(&fd, c.as_str(), open_dir_how())
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
        // Prepared detached, made a slave, then attached: see `mountapi`. Where the new mount
        // API is not available, the classic sequence (dropping a tree dissolves it).
        use crate::mountapi::{attach, clone_tree, make_slave, unavailable};
        let tree = match clone_tree(&src) {
            Ok(tree) => tree,
            Err(e) if unavailable(e) => return legacy_bind(&src, &dst, target),
            Err(e) => return Err(sys("open_tree", &source.path())(e)),
        };
        match make_slave(&tree) {
            Ok(()) => attach(tree, &dst).map_err(sys("mount", &target_path)),
            Err(e) if unavailable(e) => {
                drop(tree);
                legacy_bind(&src, &dst, target)
            }
            Err(e) => Err(sys("make-slave", &target_path)(e)),
        }
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

/// Kernels before 5.12 (no `mount_setattr(2)`) or a seccomp filter refusing the new mount API:
/// bind, then make the attached copy a slave. On a shared loft root the copies propagated
/// elsewhere stay peers of the source (see `mountapi`).
fn legacy_bind(src: &OwnedFd, dst: &OwnedFd, target: &Target) -> Result<(), KernelError> {
    let target_path = target.path();
    nix::mount::mount(
        Some(&fd_path(src)),
        &fd_path(dst),
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(sys("mount", &target_path))?;
    // Reopen: the new mount now sits on top of the directory `dst` refers to.
    let mounted = open_target(target, false)?;
    nix::mount::mount(
        None::<&str>,
        &fd_path(&mounted),
        None::<&str>,
        MsFlags::MS_SLAVE | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(sys("make-slave", &target_path))
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

    fn unmount(&self, target: &Target) -> Result<(), KernelError> {
        let mut s = self.lock();
        let path = target.path();
        s.calls.push(Call::Unmount(path.clone()));
        self.check(&s, &path)?;
        s.mounts.retain(|(t, _)| *t != path);
        Ok(())
    }
}
