//! `fleetmirror-agent`: parses flags, checks and drops capabilities *before* the async
//! runtime starts, then wires the parts and waits for the one shutdown signal.
//!
//! A graceful shutdown never unmounts: mounts outlive an agent rollout, and the next agent
//! adopts them.

use anyhow::{Context, bail};
use clap::Parser;
use fleetmirror_agent::args::{Args, Layout};
use fleetmirror_agent::kernel::{LinuxKernel, Staging};
use fleetmirror_agent::metrics::Metrics;
use fleetmirror_agent::node::{NodeConfig, NodeReconciler};
use fleetmirror_agent::reporter::Reporter;
use fleetmirror_agent::state::NodeState;
use fleetmirror_core::plan::Roots;
use fleetmirror_runtime::watch::Watches;
use fleetmirror_runtime::{addr::parse_listen_addr, admin, kubeconfig, logging, shutdown};

/// How long a watch may fail before `/readyz` says so.
const WATCH_GRACE: std::time::Duration = std::time::Duration::from_secs(60);

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    logging::init(args.common.log_format);
    if let Err(e) = args.validate() {
        bail!(e);
    }
    let admin_addr = parse_listen_addr(&args.admin_addr).context("--admin-addr")?;
    let dropped = fleetmirror_agent::caps::restrict()?;
    let args = canonical_roots(args)?;
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        node = %args.node_name,
        layouts = ?args.mount_layout.iter().map(|l| l.as_str()).collect::<Vec<_>>(),
        aggregator = args.aggregator_addr.as_deref().unwrap_or("(none)"),
        bounding_dropped = dropped,
        "starting fleetmirror-agent with CAP_SYS_ADMIN only"
    );
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(run(args, admin_addr))
}

/// Resolves the roots once: mountinfo shows canonical paths, and the planner compares paths,
/// so a root reached through a symlink would never match (and be mounted again every pass).
/// The kubelet root must exist. Only the roots of enabled layouts are touched — created when
/// missing, resolved, checked: the DaemonSet mounts no other (its root filesystem is
/// read-only), and nothing the agent writes lives anywhere else. A root writable by anyone
/// but root is a warning: whoever can write it can race the agent's directories.
fn canonical_roots(mut args: Args) -> anyhow::Result<Args> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    args.kubelet_root = std::fs::canonicalize(&args.kubelet_root).with_context(|| {
        format!(
            "--kubelet-root {} (is this a Kubernetes node?)",
            args.kubelet_root.display()
        )
    })?;
    let loft = args
        .mount_layout
        .iter()
        .any(|l| matches!(l, Layout::Loft | Layout::LoftFlat));
    let hostpath = args.mount_layout.contains(&Layout::VclusterHostpath);
    for (flag, root, enabled) in [
        ("--loft-root", &mut args.loft_root, loft),
        (
            "--vcluster-hostpath-root",
            &mut args.vcluster_hostpath_root,
            hostpath,
        ),
    ] {
        if !enabled {
            continue;
        }
        std::fs::create_dir_all(&*root)
            .with_context(|| format!("creating {flag} {}", root.display()))?;
        *root =
            std::fs::canonicalize(&*root).with_context(|| format!("{flag} {}", root.display()))?;
        let meta = std::fs::metadata(&*root)?;
        if meta.uid() != 0 || meta.permissions().mode() & 0o022 != 0 {
            tracing::warn!(root = %root.display(), flag, "root is writable by others than root: they can race the agent's directories");
        }
    }
    Ok(args)
}

/// The TLS configuration of an `https://` --aggregator-addr.
fn aggregator_tls(args: &Args) -> anyhow::Result<Option<tonic::transport::ClientTlsConfig>> {
    let Some(addr) = args
        .aggregator_addr
        .as_deref()
        .filter(|a| a.starts_with("https://"))
    else {
        return Ok(None);
    };
    let ca = args
        .aggregator_ca
        .as_ref()
        .context("https needs --aggregator-ca")?;
    let pem = std::fs::read(ca).with_context(|| format!("--aggregator-ca {}", ca.display()))?;
    let name = match &args.aggregator_tls_server_name {
        Some(n) => n.clone(),
        None => addr
            .parse::<tonic::transport::Uri>()
            .ok()
            .and_then(|u| u.host().map(str::to_owned))
            .context("--aggregator-addr has no host")?,
    };
    Ok(Some(
        tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(pem))
            .domain_name(name),
    ))
}

/// Refuses to start for a node that does not exist: with a wrong `--node-name` the pod watch
/// would see no pods, and every mount on the node would look like garbage. A missing Node or
/// missing RBAC is an error at once; anything else (an API server still starting, a network
/// not yet up) is retried with backoff for as long as it lasts, logged, without a restart.
async fn check_node(
    client: &kube::Client,
    name: &str,
    shutdown: &shutdown::CancellationToken,
) -> anyhow::Result<()> {
    let api = kube::Api::<k8s_openapi::api::core::v1::Node>::all(client.clone());
    let mut delay = std::time::Duration::from_millis(500);
    loop {
        match api.get_opt(name).await {
            Ok(Some(_)) => return Ok(()),
            Ok(None) => bail!(
                "node {name:?} does not exist (--node-name / FLEETMIRROR_NODE_NAME; in the \
                 DaemonSet it comes from spec.nodeName): refusing to start, since the agent would \
                 take every mount on this node for garbage"
            ),
            Err(kube::Error::Api(s)) if s.code == 403 => bail!(
                "may not read Node {name:?} ({}): the agent's ClusterRole needs get on nodes",
                s.message
            ),
            Err(e) => {
                tracing::warn!(node = name, error = %e, retry_in = ?delay, "cannot read this node's Node object yet");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.cancelled() => bail!("shut down before the node could be checked"),
                }
                delay = (delay * 2).min(std::time::Duration::from_secs(30));
            }
        }
    }
}

async fn run(args: Args, admin_addr: std::net::SocketAddr) -> anyhow::Result<()> {
    let token = shutdown::CancellationToken::new();
    shutdown::cancel_on_signal(token.clone());
    let (tasks, supervisor) = shutdown::Tasks::new(token.clone());
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = Metrics::register(&mut registry);
    let readiness = admin::Readiness::default();
    let clients = kubeconfig::clients(args.common.kubeconfig.as_deref()).await?;
    let watches = Watches::new(
        clients.watches.clone(),
        tasks.clone(),
        readiness.clone(),
        &mut registry,
        WATCH_GRACE,
    );
    // Not ready until the node is checked and the first pass is done; the admin server runs
    // from the start, so /livez answers while the API server is still unreachable.
    let checked = readiness.register("node-check");
    tasks.spawn("admin server", {
        let (readiness, token) = (readiness.clone(), token.clone());
        async move {
            admin::serve(admin_addr, registry, readiness, token)
                .await
                .map_err(Into::into)
        }
    });
    check_node(&clients.requests, &args.node_name, &token).await?;
    checked.set(true);
    // The node reconciler publishes the node's state here after every pass.
    let (state_tx, state_rx) = tokio::sync::watch::channel(None::<NodeState>);
    // Classic binds are prepared in --mount-staging-dir, else below the first owned root.
    let layouts: Vec<_> = args.mount_layout.iter().map(|l| l.core()).collect();
    let roots = Roots {
        kubelet: args.kubelet_root.clone(),
        loft: args.loft_root.clone(),
        vcluster_hostpath: args.vcluster_hostpath_root.clone(),
    };
    let staging = match &args.mount_staging_dir {
        Some(dir) => Some(Staging::Dir(dir.clone())),
        None => roots
            .owned(&layouts)
            .next()
            .map(|r| Staging::UnderRoot(r.to_path_buf())),
    };
    let reconciler = NodeReconciler::new(
        NodeConfig {
            node_name: args.node_name.clone(),
            roots,
            layouts,
            resync: args.resync_interval,
        },
        std::sync::Arc::new(LinuxKernel::new(args.mount_api.kernel(), staging)),
        metrics.clone(),
    );

    tasks.spawn("node reconciler", {
        let (ready, token) = (readiness.register("node-reconciler"), token.clone());
        async move {
            fleetmirror_agent::node::run(watches, reconciler, state_tx, ready, token)
                .await
                .map_err(Into::into)
        }
    });
    match args.aggregator_addr.clone() {
        Some(addr) => {
            let reporter = Reporter {
                addr,
                node_name: args.node_name.clone(),
                token_path: args.token_path.clone(),
                heartbeat: args.heartbeat_interval,
                state: state_rx,
                metrics: metrics.clone(),
                tls: aggregator_tls(&args)?,
            };
            let token = token.clone();
            tasks.spawn("reporter", async move {
                reporter.run(token).await;
                Ok(())
            });
        }
        None => tracing::warn!("no --aggregator-addr: mounting only, reporting to no one"),
    }

    drop(tasks);
    supervisor.run().await?;
    tracing::info!("stopped (mounts are left in place for the next agent)");
    Ok(())
}
