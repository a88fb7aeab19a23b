//! A fake node for agent tests: temporary kubelet, loft and vcluster-hostpath roots, and a
//! private mount namespace held open by a holder process, so that the agents a test starts
//! (and restarts) all live in the same namespace — mounts outlive an agent, as on a real node —
//! while nothing leaks onto the machine. Inside it the kubelet root is a bind of itself made
//! rshared, as kubelet makes it.
//!
//! Tests look into the namespace through `/proc/<holder>/root` and `/proc/<holder>/mountinfo`,
//! and act in it with `nsenter`.

use std::path::{Path, PathBuf};
use std::process::Command;

use fleetmirror_core::mountinfo::MountTable;

use crate::process::Process;

/// A fake node in its own mount namespace.
#[derive(Debug)]
pub struct NodeSandbox {
    /// The node name.
    pub name: String,
    /// Temporary directory holding the roots.
    pub base: PathBuf,
    /// `--kubelet-root`.
    pub kubelet_root: PathBuf,
    /// `--loft-root`.
    pub loft_root: PathBuf,
    /// `--vcluster-hostpath-root`.
    pub hostpath_root: PathBuf,
    holder: Process,
}

impl NodeSandbox {
    /// Creates the roots and the namespace.
    pub fn new(name: &str) -> NodeSandbox {
        NodeSandbox::create(name, false)
    }

    /// Like [`NodeSandbox::new`], with the whole node directory a shared mount, as `/` is on a
    /// systemd host: a container's Bidirectional volume of any of its paths propagates mounts
    /// back to the node (see [`crate::pod`]).
    pub fn shared_host(name: &str) -> NodeSandbox {
        NodeSandbox::create(name, true)
    }

    fn create(name: &str, shared_host: bool) -> NodeSandbox {
        let base =
            std::env::temp_dir().join(format!("fleetmirror-node-{name}-{}", crate::suffix()));
        let kubelet_root = base.join("var/lib/kubelet");
        let loft_root = base.join("var/lib/loft");
        let hostpath_root = base.join("tmp/vcluster");
        for d in [
            kubelet_root.join("pods"),
            loft_root.clone(),
            hostpath_root.clone(),
        ] {
            std::fs::create_dir_all(&d).unwrap();
        }
        let share_host = if shared_host {
            "mount --bind \"$2\" \"$2\" && mount --make-rshared \"$2\" && "
        } else {
            ""
        };
        let script = format!(
            "{share_host}mount --bind \"$1\" \"$1\" && mount --make-rshared \"$1\" && echo ready && exec sleep infinity"
        );
        let holder = Process::spawn(
            "node-namespace",
            Path::new("/usr/bin/unshare"),
            &[
                "-m",
                "--propagation",
                "private",
                "sh",
                "-c",
                script.as_str(),
                "sh",
                &kubelet_root.display().to_string(),
                &base.display().to_string(),
            ]
            .map(String::from),
            &[],
        );
        let sandbox = NodeSandbox {
            name: name.into(),
            base,
            kubelet_root,
            loft_root,
            hostpath_root,
            holder,
        };
        for _ in 0..100 {
            if sandbox.holder.log().contains("ready") {
                return sandbox;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!(
            "the node namespace did not start:\n{}",
            sandbox.holder.log()
        );
    }

    /// Pid of the process holding the namespace.
    pub fn pid(&self) -> u32 {
        self.holder.pid()
    }

    /// Creates the kubelet directory of pod `uid` with a file `hello` in it.
    pub fn create_pod_dir(&self, uid: &str) -> PathBuf {
        let dir = self.kubelet_root.join("pods").join(uid);
        std::fs::create_dir_all(dir.join("volumes")).unwrap();
        std::fs::write(dir.join("hello"), format!("pod {uid}")).unwrap();
        dir
    }

    /// The namespace's mount table.
    pub fn mounts(&self) -> MountTable {
        MountTable::parse_bytes(&std::fs::read(format!("/proc/{}/mountinfo", self.pid())).unwrap())
    }

    /// `path` as seen inside the namespace.
    pub fn inside(&self, path: &Path) -> PathBuf {
        let rel = path.strip_prefix("/").unwrap_or(path);
        PathBuf::from(format!("/proc/{}/root", self.pid())).join(rel)
    }

    /// Runs a command inside the namespace and asserts it succeeded.
    pub fn run(&self, args: &[&str]) {
        let out = Command::new("nsenter")
            .arg("-t")
            .arg(self.pid().to_string())
            .arg("-m")
            .arg("--")
            .args(args)
            .output()
            .expect("nsenter");
        assert!(
            out.status.success(),
            "{args:?} in the node namespace: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Where the agent reads its token (`--token-path`); absent until [`NodeSandbox::issue_token`].
    pub fn token_path(&self) -> PathBuf {
        self.base.join("token")
    }

    /// Issues this node's agent a token, as the DaemonSet's projected volume would: agent
    /// ServiceAccount `fleetmirror-agent` in `namespace` (the aggregator's), bound to an agent
    /// pod on this node.
    pub async fn issue_token(&self, client: &kube::Client, namespace: &str) {
        let token =
            crate::cluster::agent_token(client, namespace, &self.name, "fleetmirror-agent", true)
                .await;
        std::fs::write(self.token_path(), token).unwrap();
    }

    /// The agent flags for these roots.
    pub fn agent_args(&self) -> Vec<String> {
        vec![
            format!("--node-name={}", self.name),
            format!("--kubelet-root={}", self.kubelet_root.display()),
            format!("--loft-root={}", self.loft_root.display()),
            format!("--vcluster-hostpath-root={}", self.hostpath_root.display()),
            format!("--token-path={}", self.token_path().display()),
        ]
    }
}

impl Drop for NodeSandbox {
    fn drop(&mut self) {
        self.holder.kill();
        // The namespace (and every mount in it) is gone with the holder and the agents.
        let _ = std::fs::remove_dir_all(&self.base);
    }
}
