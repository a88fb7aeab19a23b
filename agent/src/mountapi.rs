//! The three calls of Linux's file-descriptor mount API the agent needs, which `nix` does not
//! wrap: `open_tree(2)` (Linux 5.2), `mount_setattr(2)` (5.12) and `move_mount(2)` (5.2).
//!
//! With them a bind is prepared *detached*: the copy of the pod directory is made a slave
//! while nothing can reach it, and only then attached at the target. The classic sequence
//! (`mount(MS_BIND)`, then `mount(MS_SLAVE)`) attaches a copy that is still a peer of
//! kubelet's tree; on a shared loft root (the DaemonSet mounts /var/lib/loft Bidirectional)
//! the copies propagated to the host stay peers of kubelet's tree for good, so a mount made in
//! the host's /var/lib/loft would appear inside the pod's directory. And if the second call
//! fails, the shared copy stays. Here a failure at any step leaves nothing: closing the
//! descriptor of a tree that was never attached dissolves it.
#![allow(unsafe_code)]

use std::ffi::CStr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use nix::errno::Errno;

// Kernel UAPI values (include/uapi/linux/mount.h, fcntl.h).
const OPEN_TREE_CLONE: libc::c_uint = 1;
const AT_RECURSIVE: libc::c_uint = 0x8000;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x04;
const MOVE_MOUNT_T_EMPTY_PATH: libc::c_uint = 0x40;
const EMPTY: &CStr = c"";

/// `struct mount_attr` (MOUNT_ATTR_SIZE_VER0).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

fn check(ret: libc::c_long) -> Result<libc::c_long, Errno> {
    if ret < 0 { Err(Errno::last()) } else { Ok(ret) }
}

/// A detached copy of the mount tree at `src` (recursive, like `MS_BIND | MS_REC`).
pub(crate) fn clone_tree(src: &OwnedFd) -> Result<OwnedFd, Errno> {
    let flags = OPEN_TREE_CLONE
        | AT_RECURSIVE
        | libc::O_CLOEXEC as libc::c_uint
        | libc::AT_EMPTY_PATH as libc::c_uint;
    // SAFETY: plain syscall; `src` is a valid open descriptor for the whole call and `EMPTY`
    // a NUL-terminated string. On success the kernel returns a new descriptor we now own.
    let fd = check(unsafe {
        libc::syscall(libc::SYS_open_tree, src.as_raw_fd(), EMPTY.as_ptr(), flags)
    })?;
    // SAFETY: `fd` was just returned by the kernel and is owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}

/// Makes every mount of the detached `tree` a slave: it keeps receiving mount events from its
/// source's peer group and sends none back. `ENOSYS` (before 5.12) or `EPERM` (a seccomp
/// filter) tells the caller to use the classic sequence instead.
pub(crate) fn make_slave(tree: &OwnedFd) -> Result<(), Errno> {
    let attr = MountAttr {
        attr_set: 0,
        attr_clr: 0,
        propagation: libc::MS_SLAVE,
        userns_fd: 0,
    };
    // SAFETY: plain syscall; `tree` is a valid descriptor, `EMPTY` NUL-terminated, `attr` a
    // live `struct mount_attr` whose size we pass, read (not kept) by the kernel.
    let ret = check(unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            EMPTY.as_ptr(),
            libc::AT_EMPTY_PATH as libc::c_uint | AT_RECURSIVE,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    });
    ret.map(drop)
}

/// True when `errno` from the new mount API means "not available here" (an old kernel, or a
/// seccomp filter), not a failure of this bind.
pub(crate) fn unavailable(errno: Errno) -> bool {
    matches!(errno, Errno::ENOSYS | Errno::EPERM)
}

/// Attaches the detached `tree` on top of the directory `dst` refers to.
pub(crate) fn attach(tree: OwnedFd, dst: &OwnedFd) -> Result<(), Errno> {
    // SAFETY: plain syscall; both descriptors are valid for the whole call and `EMPTY` is
    // NUL-terminated. `tree` is closed when it drops: once attached, that closes only the fd.
    check(unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            EMPTY.as_ptr(),
            dst.as_raw_fd(),
            EMPTY.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH,
        )
    })
    .map(drop)
}
