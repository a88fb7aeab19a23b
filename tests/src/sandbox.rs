//! A container as a kubelet + runc would run it, without either: the `pod-sandbox` helper
//! binary (src/bin/pod-sandbox.rs) builds it as root and then execs the program, so the test
//! holds the program's own process.
//!
//! What the program gets, as in a pod:
//! * a root filesystem of its own (a tmpfs holding only the files an image from scratch would:
//!   the binary at `/usr/local/bin` and the shared libraries `ldd` names), **read-only** when
//!   the manifest says `readOnlyRootFilesystem: true`; `/proc`, a read-only `/sys`, a `/dev`
//!   with the usual character devices, and the `/etc/hosts` and `/etc/resolv.conf` kubelet
//!   provides;
//! * the manifest's volumes, and nothing else writable: host paths as recursive bind mounts
//!   with the manifest's `mountPropagation` (`HostToContainer` → rslave, `Bidirectional` →
//!   rshared, none → rprivate) and `readOnly`; the root's propagation follows containerd
//!   (rshared when any volume is Bidirectional, else rslave);
//! * a network namespace of its own (so the manifest's fixed ports never collide between tests
//!   or with the machine) whose loopback forwards the given ports to the test's loopback —
//!   the API server, as `KUBERNETES_SERVICE_HOST=127.0.0.1` sees it;
//! * the manifest's user and group, `no_new_privs` when privilege escalation is off, and
//!   exactly the environment it is given.
//!
//! A container with Bidirectional volumes must start from a node's mount namespace (a
//! [`crate::node::NodeSandbox`]): only there can its mounts propagate back "to the host"
//! without touching the machine's own mount table.

use std::net::TcpStream;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Propagation of a volume mount (Kubernetes' `mountPropagation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Propagation {
    /// `None` (the default): rprivate.
    Private,
    /// `HostToContainer`: rslave.
    HostToContainer,
    /// `Bidirectional`: rshared.
    Bidirectional,
}

/// One volume mount.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Volume {
    /// The directory (or file) on the test's side.
    pub source: PathBuf,
    /// Where the container sees it.
    pub path: PathBuf,
    /// `readOnly`.
    pub read_only: bool,
    /// `mountPropagation`.
    pub propagation: Propagation,
}

/// Everything the helper needs; written as JSON to a file it is given.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SandboxSpec {
    /// The pid of a process in the mount namespace to start from (a node); `None`: the test's.
    pub node_pid: Option<u32>,
    /// An empty directory (outside any shared mount) the container root is mounted on.
    pub root_dir: PathBuf,
    /// Read-only files of the image: (source on the test's side, path in the container).
    pub files: Vec<(PathBuf, PathBuf)>,
    /// Volume mounts.
    pub volumes: Vec<Volume>,
    /// Ports on 127.0.0.1 forwarded from the container's network namespace to the test's.
    pub forward_ports: Vec<u16>,
    /// `runAsUser`; `None` keeps root.
    pub uid: Option<u32>,
    /// `runAsGroup`.
    pub gid: Option<u32>,
    /// `allowPrivilegeEscalation: false`.
    pub no_new_privs: bool,
    /// `readOnlyRootFilesystem: true`.
    pub read_only_root: bool,
    /// The complete environment.
    pub env: Vec<(String, String)>,
    /// `command` (resolved through the environment's `PATH`).
    pub command: Vec<String>,
}

/// The shared libraries `binary` needs, as `ldd` resolves them (the dynamic loader included).
pub fn shared_libraries(binary: &Path) -> Vec<PathBuf> {
    let out = std::process::Command::new("ldd")
        .arg(binary)
        .output()
        .expect("running ldd");
    assert!(out.status.success(), "ldd {}", binary.display());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = l.split_once("=> ").map_or(l, |(_, p)| p);
            let path = path.split(" (").next()?.trim();
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// The image of `binary`: itself at `/usr/local/bin/<name>`, its shared libraries at their
/// paths. This is what a `FROM scratch` image holds; nothing else of the machine is visible.
pub fn image_files(binary: &Path) -> Vec<(PathBuf, PathBuf)> {
    let name = binary.file_name().expect("binary name");
    let mut files = vec![(binary.to_path_buf(), Path::new("/usr/local/bin").join(name))];
    files.extend(shared_libraries(binary).into_iter().map(|l| (l.clone(), l)));
    files
}

/// The files kubelet adds to every container (read-only here; kubelet's are writable, and
/// nothing of ours writes them).
pub fn kubelet_files() -> Vec<(PathBuf, PathBuf)> {
    ["/etc/hosts", "/etc/resolv.conf"]
        .into_iter()
        .filter(|p| Path::new(p).exists())
        .map(|p| (PathBuf::from(p), PathBuf::from(p)))
        .collect()
}

/// A plain HTTP/1.0 GET on 127.0.0.1:`port` *inside the network namespace of `pid`*; returns
/// (status code, body). Runs on a thread of its own: `setns` moves only the calling thread.
pub fn http_get_in(pid: u32, port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let path = path.to_owned();
    std::thread::spawn(move || {
        let ns = std::fs::File::open(format!("/proc/{pid}/ns/net"))?;
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(std::io::Error::from)?;
        crate::process::http_get_on(TcpStream::connect(("127.0.0.1", port))?, &path)
    })
    .join()
    .expect("http thread")
}
