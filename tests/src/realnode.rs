//! A real node for the tests only a node can prove: a control plane of its own started
//! `--for-node` (`scripts/control-plane.sh`), then `scripts/node.sh up` (containerd, kubelet,
//! kube-proxy, kube-controller-manager, kube-scheduler, the cluster DNS stand-in), and the
//! product image built from the `Containerfile` (`scripts/build-image.sh --profile dev`: the
//! binaries this test run built, debug info stripped) and imported into the node's containerd
//! under the chart's default reference. The same scripts users run, so the README cannot
//! disagree with what is tested.
//!
//! One node per machine: kubelet writes fixed host paths. [`RealNode::stop`] takes it down and
//! returns what `scripts/node.sh leftovers` still finds (a test asserts it is nothing); a
//! panicking test still takes the node down on drop.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::process::binary;

/// The sysctls a node changes (restored by `node.sh down`).
pub const SYSCTLS: &[&str] = &[
    "vm.overcommit_memory",
    "vm.panic_on_oom",
    "kernel.panic",
    "kernel.panic_on_oops",
    "kernel.keys.root_maxkeys",
    "kernel.keys.root_maxbytes",
    "net.ipv4.conf.all.route_localnet",
    "net.bridge.bridge-nf-call-iptables",
    "net.ipv4.ip_forward",
];

/// Host paths a node's parts write whatever their flags say (removed by `node.sh down` unless
/// they were there before), and two they would write without the node's private configuration.
pub const HOST_PATHS: &[&str] = &[
    "/var/lib/kubelet",
    "/var/lib/cni",
    "/var/log/pods",
    "/var/log/containers",
    "/run/netns",
    "/run/containerd",
    "/var/lib/loft",
    "/tmp/vcluster",
    "/opt/containerd",
    "/usr/libexec/kubernetes",
];

/// The busybox test image `scripts/node.sh` builds (sh, cat, echo, ls, sleep, …).
pub const BUSYBOX: &str = "localhost/fleetmirror/busybox:test";

/// A running node registered to cluster 0 of its own control plane.
#[derive(Debug)]
pub struct RealNode {
    dir: PathBuf,
    /// The admin kubeconfig of the node's cluster.
    pub kubeconfig: PathBuf,
    stopped: bool,
}

fn script(dir: &Path, name: &str, args: &[&str]) -> std::process::Output {
    Command::new("bash")
        .arg(crate::repo_root().join("scripts").join(name))
        .args(args)
        .env("FLEETMIRROR_CP_DIR", dir)
        // Progress goes straight to the test's stderr: a node takes a while the first time.
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("running scripts/{name}: {e}"))
}

fn run(dir: &Path, name: &str, args: &[&str]) -> String {
    let out = script(dir, name, args);
    assert!(
        out.status.success(),
        "scripts/{name} {args:?} failed ({}); its output is above",
        out.status
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What a node may change on the host: the values of [`SYSCTLS`], which of [`HOST_PATHS`]
/// exist, and every mount's propagation (shared, slave or private).
pub fn host_settings() -> Vec<String> {
    let mut v: Vec<String> = SYSCTLS
        .iter()
        .map(|s| {
            let path = format!("/proc/sys/{}", s.replace('.', "/"));
            format!(
                "{s}={}",
                std::fs::read_to_string(&path).unwrap_or_default().trim()
            )
        })
        .collect();
    v.extend(
        HOST_PATHS
            .iter()
            .map(|p| format!("{p} exists={}", Path::new(p).exists())),
    );
    // mountinfo: id parent dev root mountpoint options [optional fields…] - …
    for line in std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
    {
        let fields: Vec<&str> = line.split(' ').collect();
        let optional = fields.iter().skip(6).take_while(|f| **f != "-").copied();
        let mut kind: Vec<&str> = optional
            .filter_map(|f| f.split(':').next())
            .filter(|k| matches!(*k, "shared" | "master"))
            .collect();
        kind.sort_unstable();
        v.push(format!(
            "mount {} propagation={}",
            fields.get(4).unwrap_or(&"?"),
            if kind.is_empty() {
                "private".to_owned()
            } else {
                kind.join("+")
            }
        ));
    }
    v.sort();
    v
}

impl RealNode {
    /// Starts the control plane, the node, and imports the product image.
    pub fn start() -> RealNode {
        assert!(
            nix::unistd::geteuid().is_root(),
            "a real node needs root (kubelet, containerd, mounts): run the tests as root"
        );
        let dir = crate::cluster::shared_dir().join(format!("real-node-{}", crate::suffix()));
        let out = run(
            &dir,
            "control-plane.sh",
            &["up", "--clusters", "1", "--for-node"],
        );
        let kubeconfig = PathBuf::from(out.lines().next().expect("a kubeconfig path").trim());
        let node = RealNode {
            dir,
            kubeconfig,
            stopped: false,
        };
        run(&node.dir, "node.sh", &["up"]);
        node.import_product_image();
        node
    }

    /// Builds the image from the binaries under test and imports it into the node.
    fn import_product_image(&self) {
        let agent = binary("fleetmirror-agent");
        binary("fleetmirror-aggregator");
        // <target>/debug/fleetmirror-agent
        let target = agent
            .parent()
            .and_then(Path::parent)
            .expect("target dir")
            .to_path_buf();
        let archive = self.dir.join("fleetmirror-image.tar");
        let archive_s = archive.to_str().expect("UTF-8 path");
        let out = Command::new("bash")
            .arg(crate::repo_root().join("scripts/build-image.sh"))
            .args(["--profile", "dev", "--no-build", "--out", archive_s])
            .env("CARGO_TARGET_DIR", &target)
            .stderr(Stdio::inherit())
            .output()
            .expect("scripts/build-image.sh");
        assert!(out.status.success(), "scripts/build-image.sh failed");
        run(&self.dir, "node.sh", &["import", archive_s]);
        std::fs::remove_file(&archive).ok();
    }

    /// The node's name.
    pub fn name(&self) -> &'static str {
        "fleetmirror-node"
    }

    /// A client for the node's cluster, as the admin.
    pub async fn client(&self) -> kube::Client {
        fleetmirror_runtime::kubeconfig::client(Some(&self.kubeconfig))
            .await
            .expect("client from kubeconfig")
    }

    /// `kubectl <args>` against the node's cluster; panics with its output on failure.
    pub fn kubectl(&self, args: &[&str]) -> String {
        self.kubectl_in(args, None)
    }

    /// `kubectl <args>` with `input` on stdin (e.g. `apply -f -`).
    pub fn kubectl_in(&self, args: &[&str], input: Option<&str>) -> String {
        let (ok, text) = self.try_kubectl(args, input);
        assert!(ok, "kubectl {args:?} failed:\n{text}");
        text
    }

    /// `kubectl <args>`: whether it succeeded, and its stdout (or stdout + stderr on failure).
    pub fn try_kubectl(&self, args: &[&str], input: Option<&str>) -> (bool, String) {
        use std::io::Write;
        let mut child = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl");
        let mut stdin = child.stdin.take().expect("stdin");
        if let Some(input) = input {
            stdin.write_all(input.as_bytes()).expect("kubectl stdin");
        }
        drop(stdin);
        let out = child.wait_with_output().expect("kubectl");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            (true, stdout)
        } else {
            (
                false,
                format!("{stdout}{}", String::from_utf8_lossy(&out.stderr)),
            )
        }
    }

    /// The lines a container of pod `ns/name` wrote to stdout so far (kubelet's log file under
    /// /var/log/pods; `kubectl logs` would need the API server to reach kubelet).
    pub fn container_log(&self, ns: &str, name: &str, container: &str) -> Vec<String> {
        let uid = self
            .kubectl(&[
                "get",
                "pod",
                "-n",
                ns,
                name,
                "-o",
                "jsonpath={.metadata.uid}",
            ])
            .trim()
            .to_owned();
        let dir = PathBuf::from(format!("/var/log/pods/{ns}_{name}_{uid}/{container}"));
        let mut lines = Vec::new();
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return lines;
        };
        let mut files: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        // 0.log, 1.log, … per container restart.
        files.sort();
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap_or_default();
            // CRI format: "<time> stdout F <line>\n"; a last line still being written (no
            // newline yet) is left for the next read.
            let complete = text.rfind('\n').map_or("", |i| &text[..=i]);
            lines.extend(
                complete
                    .lines()
                    .filter_map(|l| l.splitn(4, ' ').nth(3))
                    .map(str::to_owned),
            );
        }
        lines
    }

    /// The last `n` lines of every container log of namespace `ns` (failure messages).
    pub fn namespace_logs(&self, ns: &str, n: usize) -> String {
        let mut out = String::new();
        let Ok(pods) = std::fs::read_dir("/var/log/pods") else {
            return out;
        };
        let mut dirs: Vec<PathBuf> = pods
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|f| f.to_str())
                    .is_some_and(|f| f.starts_with(&format!("{ns}_")))
            })
            .collect();
        dirs.sort();
        for pod in dirs {
            for c in std::fs::read_dir(&pod).into_iter().flatten().flatten() {
                for f in std::fs::read_dir(c.path()).into_iter().flatten().flatten() {
                    let text = std::fs::read_to_string(f.path()).unwrap_or_default();
                    let lines: Vec<&str> = text.lines().collect();
                    out.push_str(&format!("--- {}\n", f.path().display()));
                    for l in &lines[lines.len().saturating_sub(n)..] {
                        out.push_str(l);
                        out.push('\n');
                    }
                }
            }
        }
        out
    }

    /// Takes the node and its control plane down; returns what is left on the machine
    /// (`scripts/node.sh leftovers`: empty when nothing is).
    pub fn stop(mut self) -> String {
        self.stopped = true;
        run(&self.dir, "control-plane.sh", &["down"]);
        let out = script(&self.dir, "node.sh", &["leftovers"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            assert!(text.trim().is_empty(), "leftovers said success with {text}");
        } else {
            assert!(!text.trim().is_empty(), "leftovers failed without output");
        }
        text
    }
}

impl Drop for RealNode {
    fn drop(&mut self) {
        // FLEETMIRROR_KEEP_NODE=1 keeps a failed test's node for a look (take it down with
        // `FLEETMIRROR_CP_DIR=<dir> scripts/control-plane.sh down`).
        if !self.stopped && std::env::var_os("FLEETMIRROR_KEEP_NODE").is_some() {
            eprintln!(
                "keeping the node: FLEETMIRROR_CP_DIR={}",
                self.dir.display()
            );
            return;
        }
        if !self.stopped {
            let _ = script(&self.dir, "control-plane.sh", &["down"]);
        }
    }
}

/// The id of the host's (topmost) mount at `path` (mountinfo's first field), if there is one:
/// the same id later means the same mount, never unmounted and made again in between.
pub fn host_mount_id(path: &str) -> Option<u64> {
    mount_id(&std::fs::read_to_string("/proc/self/mountinfo").ok()?, path)
}

/// The id of the topmost mount at `path` in a mount table (a `/proc/<pid>/mountinfo`).
pub fn mount_id(mountinfo: &str, path: &str) -> Option<u64> {
    mountinfo
        .lines()
        .rev()
        .filter(|l| l.split(' ').nth(4) == Some(path))
        .find_map(|l| l.split(' ').next()?.parse().ok())
}

/// Waits up to `timeout` for `kubectl rollout status` of `what` (e.g. `daemonset/x`) in `ns`.
pub fn rollout_status(node: &RealNode, ns: &str, what: &str, timeout: Duration) {
    node.kubectl(&[
        "rollout",
        "status",
        "-n",
        ns,
        what,
        &format!("--timeout={}s", timeout.as_secs()),
    ]);
}
