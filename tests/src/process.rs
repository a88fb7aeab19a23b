//! The real binaries as child processes: free loopback ports, logs captured to a file (printed
//! when a test fails), SIGTERM for graceful stops, SIGKILL for crashes, and kill on drop so a
//! failing test never leaves a process behind.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::cluster::ControlPlane;
use crate::node::NodeSandbox;

/// Path of a workspace binary, next to the test executable's `deps/` directory.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not built: run `cargo build --workspace --bins` (scripts/test.sh does)",
        path.display()
    );
    // `cargo test -p fleetmirror-tests` does not rebuild the binaries it runs: refuse to test
    // an old build against new sources (those cargo's dep-info lists for the binary).
    let built = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .expect("binary mtime");
    let newer = build_inputs(&path.with_extension("d"))
        .into_iter()
        .find(|f| {
            std::fs::metadata(f)
                .and_then(|m| m.modified())
                .is_ok_and(|t| t > built)
        });
    if let Some(newer) = newer {
        panic!(
            "{} is older than {}: run `cargo build --workspace --bins` (scripts/test.sh does)",
            path.display(),
            newer.display()
        );
    }
    path
}

/// The input files of a build, from cargo's dep-info file (`<binary>.d`: `target: input…`,
/// spaces in paths escaped as `\ `). None when it is missing.
fn build_inputs(dep_info: &Path) -> Vec<PathBuf> {
    let Ok(text) = std::fs::read_to_string(dep_info) else {
        return vec![];
    };
    let Some((_, inputs)) = text.lines().next().and_then(|l| l.split_once(": ")) else {
        return vec![];
    };
    inputs
        .replace("\\ ", "\0")
        .split_whitespace()
        .map(|p| PathBuf::from(p.replace('\0', " ")))
        .collect()
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind :0")
        .port()
}

/// A child process whose output goes to a log file.
#[derive(Debug)]
pub struct Process {
    name: String,
    child: Child,
    log: PathBuf,
    exited: Option<ExitStatus>,
}

impl Process {
    /// Starts `program` with `args`; stdout and stderr go to a temporary log file.
    pub fn spawn(name: &str, program: &Path, args: &[String], envs: &[(&str, String)]) -> Process {
        let log =
            std::env::temp_dir().join(format!("fleetmirror-test-{name}-{}.log", crate::suffix()));
        let file = std::fs::File::create(&log).expect("log file");
        let mut cmd = Command::new(program);
        cmd.args(args)
            .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info,fleetmirror=debug".into()),
            )
            .env_remove("RUST_BACKTRACE")
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("dup log"))
            .stderr(file);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", program.display()));
        Process {
            name: name.into(),
            child,
            log,
            exited: None,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the process wrote so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        self.exited.is_none() && matches!(self.child.try_wait(), Ok(None))
    }

    fn signal(&self, sig: Signal) {
        let _ = kill(Pid::from_raw(self.child.id() as i32), sig);
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if let Some(s) = self.exited {
            return Some(s);
        }
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Ok(Some(s)) = self.child.try_wait() {
                self.exited = Some(s);
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// SIGTERM, then waits up to 15 s for a graceful exit (SIGKILL after that).
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal(Signal::SIGTERM);
        match self.wait_exit(Duration::from_secs(15)) {
            Some(s) => s,
            None => panic!(
                "{} did not exit within 15s of SIGTERM; log:\n{}",
                self.name,
                self.log()
            ),
        }
    }

    /// SIGKILL: a crash, nothing runs on the way out.
    pub fn kill(&mut self) {
        self.signal(Signal::SIGKILL);
        let _ = self.wait_exit(Duration::from_secs(10));
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.is_running() {
            self.kill();
        }
        if std::thread::panicking() {
            eprintln!(
                "----- log of {} ({}) -----\n{}\n----- end of log -----",
                self.name,
                self.log.display(),
                self.log()
            );
        } else {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

/// A plain HTTP/1.0 GET on 127.0.0.1:`port`; returns (status code, body).
pub fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    http_get_on(TcpStream::connect(("127.0.0.1", port))?, path)
}

/// A plain HTTP/1.0 GET of `path` on a connected stream; returns (status code, body).
pub fn http_get_on(mut s: TcpStream, path: &str) -> std::io::Result<(u16, String)> {
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let code = raw
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((code, body))
}

/// A running `fleetmirror-aggregator`.
#[derive(Debug)]
pub struct Aggregator {
    /// The process.
    pub process: Process,
    /// gRPC port on 127.0.0.1.
    pub grpc_port: u16,
    /// Admin port on 127.0.0.1.
    pub admin_port: u16,
    /// Its identity in the Lease.
    pub identity: String,
}

/// How to start an aggregator.
#[derive(Debug, Clone)]
pub struct AggregatorConfig {
    /// Namespace of its Lease and Events.
    pub namespace: String,
    /// Identity in the Lease.
    pub identity: String,
    /// gRPC port (a free one when `None`).
    pub grpc_port: Option<u16>,
    /// Further flags.
    pub extra_args: Vec<String>,
    /// Credentials other than the cluster admin's (e.g. a ServiceAccount's, for RBAC tests).
    pub kubeconfig: Option<PathBuf>,
}

impl AggregatorConfig {
    /// Defaults for `namespace`: leader election on, with a short lease so failover tests are quick.
    pub fn new(namespace: &str) -> Self {
        Self {
            namespace: namespace.into(),
            identity: format!("aggregator-{}", crate::suffix()),
            grpc_port: None,
            extra_args: vec![
                "--lease-duration=3s".into(),
                "--lease-retry-interval=500ms".into(),
                // Advertised on the Lease as 127.0.0.1:<grpc port>.
                "--pod-ip=127.0.0.1".into(),
            ],
            kubeconfig: None,
        }
    }
}

impl Aggregator {
    /// Starts an aggregator against cluster `cluster` of `cp` and waits for /readyz.
    pub fn start(cp: &ControlPlane, cluster: usize, config: AggregatorConfig) -> Aggregator {
        let grpc_port = config.grpc_port.unwrap_or_else(free_port);
        let admin_port = free_port();
        let kubeconfig = config
            .kubeconfig
            .clone()
            .unwrap_or_else(|| cp.kubeconfig(cluster).to_path_buf());
        let mut args = vec![
            format!("--kubeconfig={}", kubeconfig.display()),
            format!("--grpc-addr=127.0.0.1:{grpc_port}"),
            format!("--admin-addr=127.0.0.1:{admin_port}"),
            format!("--namespace={}", config.namespace),
            format!("--identity={}", config.identity),
        ];
        args.extend(config.extra_args);
        let process = Process::spawn("aggregator", &binary("fleetmirror-aggregator"), &args, &[]);
        let mut agg = Aggregator {
            process,
            grpc_port,
            admin_port,
            identity: config.identity,
        };
        agg.wait_ready();
        agg
    }

    /// The gRPC URL, `http://127.0.0.1:<port>`.
    pub fn grpc_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc_port)
    }

    /// The value of an unlabelled metric, if exported.
    pub fn metric(&self, name: &str) -> Option<f64> {
        metric(self.admin_port, name)
    }

    fn wait_ready(&mut self) {
        wait_ready(&mut self.process, self.admin_port);
    }
}

/// The value of the first sample line of metric `name` (name plus optional labels).
pub fn metric(admin_port: u16, name: &str) -> Option<f64> {
    let (_, body) = http_get(admin_port, "/metrics").ok()?;
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.split([' ', '{']).next() == Some(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// The value of the first sample of metric `name` whose labels contain `label`; `None` when
/// there is no such series.
pub fn metric_sample(admin_port: u16, name: &str, label: &str) -> Option<f64> {
    let (_, body) = http_get(admin_port, "/metrics").unwrap();
    body.lines()
        .find(|l| l.starts_with(name) && l.contains(label))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Like [`metric_sample`], 0 when absent (for counters, which appear at their first count).
pub fn metric_with(admin_port: u16, name: &str, label: &str) -> f64 {
    metric_sample(admin_port, name, label).unwrap_or(0.0)
}

fn wait_ready(process: &mut Process, admin_port: u16) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        if !process.is_running() {
            panic!(
                "{} exited before it was ready; log:\n{}",
                process.name,
                process.log()
            );
        }
        if matches!(http_get(admin_port, "/readyz"), Ok((200, _))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "{} not ready within 30s; log:\n{}",
        process.name,
        process.log()
    );
}

/// A running `fleetmirror-agent`, inside a [`NodeSandbox`]'s mount namespace
/// (`nsenter` execs the agent, so the process id is the agent's).
#[derive(Debug)]
pub struct Agent {
    /// The process.
    pub process: Process,
    /// Admin port on 127.0.0.1.
    pub admin_port: u16,
}

impl Agent {
    /// Starts an agent on `node` against cluster `cluster` of `cp`, reporting to
    /// `aggregator_url` (if any), and waits for /readyz (its first reconcile pass).
    pub fn start(
        cp: &ControlPlane,
        cluster: usize,
        node: &NodeSandbox,
        aggregator_url: Option<&str>,
        extra_args: &[String],
    ) -> Agent {
        crate::cluster::ensure_node(cp, cluster, &node.name);
        let admin_port = free_port();
        let mut args = vec![
            "-t".into(),
            node.pid().to_string(),
            "-m".into(),
            "--".into(),
            binary("fleetmirror-agent").display().to_string(),
            format!("--kubeconfig={}", cp.kubeconfig(cluster).display()),
            format!("--admin-addr=127.0.0.1:{admin_port}"),
            "--heartbeat-interval=1s".into(),
        ];
        args.extend(node.agent_args());
        if let Some(url) = aggregator_url {
            args.push(format!("--aggregator-addr={url}"));
        }
        args.extend(extra_args.iter().cloned());
        let process = Process::spawn("agent", Path::new("/usr/bin/nsenter"), &args, &[]);
        let mut agent = Agent {
            process,
            admin_port,
        };
        wait_ready(&mut agent.process, admin_port);
        agent
    }

    /// The value of an unlabelled metric, if exported.
    pub fn metric(&self, name: &str) -> Option<f64> {
        metric(self.admin_port, name)
    }
}

/// The resident memory of process `pid`, in MiB (benchmarks).
pub fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .unwrap()
        / 1024.0
}

/// The value of command-line option `name` of this process, or `default` (benchmarks).
pub fn arg(name: &str, default: u64) -> u64 {
    std::env::args()
        .skip_while(|a| a != name)
        .nth(1)
        .map(|v| v.parse().unwrap())
        .unwrap_or(default)
}
