//! `pod-sandbox SPEC.json`: builds the container described in SPEC (see
//! `fleetmirror_tests::sandbox`) and execs its command, so the caller holds the program's own
//! process. Needs root. Every step that fails names itself and exits 125, before the program
//! runs; nothing is changed outside the new mount and network namespaces.
//!
//! `pod-sandbox --forward PORT...` is the port forwarder it starts for itself: started in the
//! caller's network namespace, it reads the container's pid from stdin, binds 127.0.0.1:PORT in
//! the container's network namespace, and forwards each connection to 127.0.0.1:PORT in its
//! own. It dies with the container (parent-death signal).

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use fleetmirror_tests::sandbox::{Propagation, SandboxSpec};
use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, setns, unshare};
use nix::sys::signal::Signal;
use nix::unistd::{Gid, Uid};

type Result<T> = std::result::Result<T, String>;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("--forward") => forward(&args[1..]),
        Some(spec) => run(Path::new(spec)),
        None => Err("usage: pod-sandbox SPEC.json | --forward PORT...".into()),
    };
    if let Err(e) = result {
        eprintln!("pod-sandbox: {e}");
        std::process::exit(125);
    }
}

fn ctx<E: std::fmt::Display>(what: impl Into<String>) -> impl FnOnce(E) -> String {
    let what = what.into();
    move |e| format!("{what}: {e}")
}

fn run(spec_path: &Path) -> Result<()> {
    let spec: SandboxSpec = serde_json::from_reader(
        File::open(spec_path).map_err(ctx(format!("{}", spec_path.display())))?,
    )
    .map_err(ctx("parsing the spec"))?;
    let bidirectional = spec
        .volumes
        .iter()
        .any(|v| v.propagation == Propagation::Bidirectional);
    if bidirectional && spec.node_pid.is_none() {
        return Err("Bidirectional volumes need a node mount namespace (node_pid)".into());
    }

    let mut forwarder = if spec.forward_ports.is_empty() {
        None
    } else {
        let exe = std::env::current_exe().map_err(ctx("current_exe"))?;
        Some(
            Command::new(exe)
                .arg("--forward")
                .args(spec.forward_ports.iter().map(u16::to_string))
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .map_err(ctx("starting the port forwarder"))?,
        )
    };

    if let Some(pid) = spec.node_pid {
        let ns = File::open(format!("/proc/{pid}/ns/mnt"))
            .map_err(ctx("opening the node's mount namespace"))?;
        setns(&ns, CloneFlags::CLONE_NEWNS).map_err(ctx("entering the node"))?;
    }
    unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWIPC)
        .map_err(ctx("unshare"))?;
    let lo = Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status()
        .map_err(ctx("ip link set lo up"))?;
    if !lo.success() {
        return Err("ip link set lo up failed".into());
    }
    if let Some(f) = forwarder.as_mut() {
        let mut stdin = f.stdin.take().expect("piped");
        writeln!(stdin, "{}", std::process::id()).map_err(ctx("forwarder"))?;
        let mut line = String::new();
        BufReader::new(f.stdout.take().expect("piped"))
            .read_line(&mut line)
            .map_err(ctx("forwarder"))?;
        if line.trim() != "ready" {
            return Err("the port forwarder did not start".into());
        }
    }

    build_root(&spec, bidirectional)?;
    nix::unistd::chroot(&spec.root_dir).map_err(ctx("chroot"))?;
    std::env::set_current_dir("/").map_err(ctx("chdir /"))?;
    if spec.no_new_privs {
        nix::sys::prctl::set_no_new_privs().map_err(ctx("no_new_privs"))?;
    }
    if let Some(gid) = spec.gid {
        nix::unistd::setgroups(&[]).map_err(ctx("setgroups"))?;
        nix::unistd::setgid(Gid::from_raw(gid)).map_err(ctx("setgid"))?;
    }
    if let Some(uid) = spec.uid {
        nix::unistd::setuid(Uid::from_raw(uid)).map_err(ctx("setuid"))?;
    }
    let (program, args) = spec.command.split_first().ok_or("empty command")?;
    let err = Command::new(program)
        .args(args)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .exec();
    Err(format!("exec {program}: {err}"))
}

fn bind(source: &Path, target: &Path, flags: MsFlags) -> Result<()> {
    mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND | flags,
        None::<&str>,
    )
    .map_err(ctx(format!(
        "bind {} at {}",
        source.display(),
        target.display()
    )))
}

fn remount_read_only(target: &Path) -> Result<()> {
    mount(
        None::<&str>,
        target,
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY,
        None::<&str>,
    )
    .map_err(ctx(format!("read-only {}", target.display())))
}

fn set_propagation(target: &Path, flags: MsFlags) -> Result<()> {
    mount(None::<&str>, target, None::<&str>, flags, None::<&str>)
        .map_err(ctx(format!("propagation of {}", target.display())))
}

/// `path` (absolute, in the container) below the container root.
fn inside(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

/// An empty file or directory to mount on, like the runtime's mount points.
fn mount_point(at: &Path, like: &Path) -> Result<()> {
    let parent = at.parent().expect("below the root");
    std::fs::create_dir_all(parent).map_err(ctx(format!("mkdir {}", parent.display())))?;
    if like.is_dir() {
        std::fs::create_dir_all(at)
    } else {
        File::create(at).map(drop)
    }
    .map_err(ctx(format!("creating {}", at.display())))
}

fn build_root(spec: &SandboxSpec, bidirectional: bool) -> Result<()> {
    // containerd: the root is rshared when a volume is Bidirectional, else rslave; either
    // way nothing mounted in here reaches the namespace we came from except through a
    // Bidirectional volume.
    let root_propagation = if bidirectional {
        MsFlags::MS_SHARED
    } else {
        MsFlags::MS_SLAVE
    };
    set_propagation(Path::new("/"), MsFlags::MS_REC | root_propagation)?;
    let root = &spec.root_dir;
    mount(
        Some("tmpfs"),
        root,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0755"),
    )
    .map_err(ctx("container root tmpfs"))?;
    set_propagation(root, MsFlags::MS_PRIVATE)?;

    for (source, path) in &spec.files {
        let at = inside(root, path);
        mount_point(&at, source)?;
        bind(source, &at, MsFlags::empty())?;
        remount_read_only(&at)?;
    }
    // As runc does: parents before the volumes nested in them.
    let mut volumes: Vec<_> = spec.volumes.iter().collect();
    volumes.sort_by_key(|v| v.path.components().count());
    for v in volumes {
        let at = inside(root, &v.path);
        mount_point(&at, &v.source)?;
        bind(&v.source, &at, MsFlags::MS_REC)?;
        let propagation = match v.propagation {
            Propagation::Private => MsFlags::MS_PRIVATE,
            Propagation::HostToContainer => MsFlags::MS_SLAVE,
            Propagation::Bidirectional => MsFlags::MS_SHARED,
        };
        set_propagation(&at, MsFlags::MS_REC | propagation)?;
        if v.read_only {
            remount_read_only(&at)?;
        }
    }

    let proc_dir = root.join("proc");
    mount_point(&proc_dir, Path::new("/proc"))?;
    mount(
        Some("proc"),
        &proc_dir,
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(ctx("mounting /proc"))?;
    let sys = root.join("sys");
    mount_point(&sys, Path::new("/sys"))?;
    bind(Path::new("/sys"), &sys, MsFlags::MS_REC)?;
    remount_read_only(&sys)?;
    let dev = root.join("dev");
    mount_point(&dev, Path::new("/dev"))?;
    mount(
        Some("tmpfs"),
        &dev,
        Some("tmpfs"),
        MsFlags::MS_NOSUID,
        Some("mode=0755"),
    )
    .map_err(ctx("mounting /dev"))?;
    for name in ["null", "zero", "full", "random", "urandom", "tty"] {
        let source = Path::new("/dev").join(name);
        let at = dev.join(name);
        mount_point(&at, &source)?;
        bind(&source, &at, MsFlags::empty())?;
    }
    remount_read_only(&dev)?;
    // An empty /tmp, as images have: read-only like the rest.
    mount_point(&root.join("tmp"), Path::new("/tmp"))?;
    if spec.read_only_root {
        remount_read_only(root)?;
    }
    Ok(())
}

fn forward(ports: &[String]) -> Result<()> {
    let ports: Vec<u16> = ports
        .iter()
        .map(|p| p.parse().map_err(ctx(format!("port {p}"))))
        .collect::<Result<_>>()?;
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(ctx("pdeathsig"))?;
    let home = File::open("/proc/self/ns/net").map_err(ctx("own netns"))?;
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(ctx("reading the container pid"))?;
    let pid: u32 = line.trim().parse().map_err(ctx("container pid"))?;
    let theirs = File::open(format!("/proc/{pid}/ns/net")).map_err(ctx("the container's netns"))?;
    setns(&theirs, CloneFlags::CLONE_NEWNET).map_err(ctx("entering the container"))?;
    let listeners = ports
        .iter()
        .map(|&p| {
            TcpListener::bind(("127.0.0.1", p))
                .map(|l| (p, l))
                .map_err(ctx(format!("listening on {p}")))
        })
        .collect::<Result<Vec<_>>>()?;
    // Sockets keep the namespace they were made in: connections made from here on reach
    // the caller's loopback.
    setns(&home, CloneFlags::CLONE_NEWNET).map_err(ctx("returning home"))?;
    println!("ready");
    std::io::stdout().flush().ok();
    let threads: Vec<_> = listeners
        .into_iter()
        .map(|(port, listener)| {
            std::thread::spawn(move || {
                for conn in listener.incoming().flatten() {
                    std::thread::spawn(move || pipe(conn, port));
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

fn pipe(inbound: TcpStream, port: u16) {
    let Ok(outbound) = TcpStream::connect(("127.0.0.1", port)) else {
        return;
    };
    let (Ok(mut in_r), Ok(mut out_w)) = (inbound.try_clone(), outbound.try_clone()) else {
        return;
    };
    let up = std::thread::spawn(move || {
        let _ = std::io::copy(&mut in_r, &mut out_w);
        let _ = out_w.shutdown(std::net::Shutdown::Write);
    });
    let (mut out_r, mut in_w) = (outbound, inbound);
    let _ = std::io::copy(&mut out_r, &mut in_w);
    let _ = in_w.shutdown(std::net::Shutdown::Write);
    let _ = up.join();
}
