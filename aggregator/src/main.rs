//! `fleetmirror-aggregator`: parses flags, starts telemetry, wires the parts, and waits for
//! the one shutdown signal. If a critical task ends early the process exits non-zero.

use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Parser;
use fleetmirror_aggregator::args::Args;
use fleetmirror_aggregator::auth::Authenticator;
use fleetmirror_aggregator::grpc::GrpcServer;
use fleetmirror_aggregator::index::FleetIndex;
use fleetmirror_aggregator::leader::{ElectionConfig, LeaderElector};
use fleetmirror_aggregator::metrics::Metrics;
use fleetmirror_runtime::{addr::parse_listen_addr, admin, kubeconfig, logging, shutdown};
use tokio::task::JoinSet;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    logging::init(args.common.log_format);
    if let Err(e) = args.validate() {
        bail!(e);
    }
    let grpc_addr = parse_listen_addr(&args.grpc_addr).context("--grpc-addr")?;
    let admin_addr = parse_listen_addr(&args.admin_addr).context("--admin-addr")?;
    let client = kubeconfig::client(args.common.kubeconfig.as_deref()).await?;
    let namespace = args
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_owned());
    let identity = args.identity.clone().unwrap_or_else(default_identity);
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        %namespace,
        %identity,
        leader_elect = args.leader_elect,
        pod_source = ?args.pod_source,
        "starting fleetmirror-aggregator"
    );

    let token = shutdown::CancellationToken::new();
    shutdown::cancel_on_signal(token.clone());
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = Metrics::register(&mut registry);
    let readiness = admin::Readiness::default();
    let index = Arc::new(FleetIndex::new(args.agent_stale_after));
    let (leader_tx, leader_rx) = tokio::sync::watch::channel(false);
    let (holder_tx, holder_rx) = tokio::sync::watch::channel(None);
    let advertise = args
        .pod_ip
        .map(|ip| std::net::SocketAddr::new(ip, grpc_addr.port()));

    let mut tasks: JoinSet<shutdown::TaskExit> = JoinSet::new();
    {
        let (readiness, token) = (readiness.clone(), token.clone());
        tasks.spawn(async move {
            (
                "admin server",
                admin::serve(admin_addr, registry, readiness, token)
                    .await
                    .map_err(Into::into),
            )
        });
    }
    {
        let agent_user = args
            .agent_service_account
            .clone()
            .unwrap_or_else(|| format!("system:serviceaccount:{namespace}:fleetmirror-agent"));
        tracing::info!(%agent_user, audience = %args.token_audience, "agents authenticate with TokenReview");
        let server = GrpcServer {
            auth: Authenticator::new(client.clone(), agent_user, args.token_audience.clone()),
            addr: grpc_addr,
            index: index.clone(),
            leader: leader_rx.clone(),
            holder: holder_rx,
            pod_source: args.pod_source,
            metrics: metrics.clone(),
            ready: readiness.register("grpc"),
        };
        let token = token.clone();
        tasks.spawn(async move { ("gRPC server", server.serve(token).await) });
    }
    {
        let gauge = metrics.leader.clone();
        let mut rx = leader_rx.clone();
        tasks.spawn(async move {
            while rx.changed().await.is_ok() {
                gauge.set(i64::from(*rx.borrow()));
            }
            ("leader gauge", Ok(()))
        });
    }
    {
        let controller = fleetmirror_aggregator::health::HealthController {
            client: client.clone(),
            index: index.clone(),
            pod_source: args.pod_source,
            leader: leader_rx.clone(),
            metrics: metrics.clone(),
        };
        let token = token.clone();
        tasks.spawn(async move {
            (
                "health controller",
                controller.run(token).await.map_err(Into::into),
            )
        });
    }
    if args.leader_elect {
        let elector = LeaderElector::new(
            client.clone(),
            &namespace,
            ElectionConfig {
                identity,
                lease_duration: args.lease_duration,
                retry: args.lease_retry_interval,
                advertise,
            },
        );
        let token = token.clone();
        tasks.spawn(async move {
            elector.run(leader_tx, holder_tx, token).await;
            ("leader election", Ok(()))
        });
    } else {
        tracing::info!("leader election disabled: this replica leads");
        leader_tx.send_replace(true);
        // Keep the sender alive for the life of the process.
        let token = token.clone();
        tasks.spawn(async move {
            token.cancelled().await;
            drop((leader_tx, holder_tx));
            ("leader (static)", Ok(()))
        });
    }

    shutdown::supervise(tasks, token).await?;
    tracing::info!("stopped");
    Ok(())
}

/// The host name plus a random suffix, so two processes on one machine never share an
/// identity. In a pod, FLEETMIRROR_POD_NAME is used instead.
fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let host = host.trim();
    let host = if host.is_empty() {
        "fleetmirror-aggregator"
    } else {
        host
    };
    format!("{host}_{:08x}", rand::random::<u32>())
}
