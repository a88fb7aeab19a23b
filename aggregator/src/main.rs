//! `fleetmirror-aggregator`: parses flags, starts telemetry, wires the platform and the
//! controllers `--controllers` selects, and waits for the one shutdown signal. If a critical
//! task ends early the process exits non-zero.

use std::collections::BTreeSet;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use clap::Parser;
use fleetmirror_aggregator::args::{Args, Controller, DiagnosticsAuthMode, PodSource};
use fleetmirror_aggregator::auth::{Authenticator, DiagnosticsAuth};
use fleetmirror_aggregator::grpc::GrpcServer;
use fleetmirror_aggregator::index::FleetIndex;
use fleetmirror_aggregator::leader::{AgentNodes, ElectionConfig, LeaderElector};
use fleetmirror_aggregator::metrics::Metrics;
use fleetmirror_aggregator::platform::{
    Context, Leadership, PlatformMetrics, REQUEST_TIMEOUT, Term,
};
use fleetmirror_runtime::watch::Watches;
use fleetmirror_runtime::{addr::parse_listen_addr, admin, kubeconfig, logging, shutdown};

/// jemalloc, with one arena (the process is I/O-bound; more arenas only keep more free memory)
/// and freed pages given back as they are freed instead of after a decay period, so the
/// resident size follows what is live rather than the high-water mark of a burst (glibc's
/// allocator, even with one arena and `malloc_trim`, kept a burst's heap fragmented: the mirror
/// benchmark's memory figure). Thread caches stay on: without them every allocation takes the
/// arena's lock (the mirror fan-out was ~40% slower).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// A C string pointer jemalloc reads once, at initialisation.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[derive(Debug)]
#[repr(transparent)]
pub struct MallocConf(*const std::ffi::c_char);

// SAFETY: the pointer is to a `'static` string literal that nothing ever writes.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
unsafe impl Sync for MallocConf {}

/// jemalloc's options (see [`ALLOCATOR`]): `_rjem_malloc_conf` is the `malloc_conf` symbol of
/// the prefixed jemalloc tikv-jemallocator builds.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code, non_upper_case_globals)]
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static malloc_conf: MallocConf =
    MallocConf(c"narenas:1,dirty_decay_ms:0,muzzy_decay_ms:0".as_ptr());

/// jemalloc's options as it runs with them, read back with `mallctl`: the `malloc_conf` symbol
/// only works if the build kept it (and `_RJEM_MALLOC_CONF` in the environment overrides it),
/// so the aggregator logs what it got and warns when that is not what it ships with.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
mod allocator {
    use std::ffi::CStr;

    /// The options the memory figures were measured with.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Options {
        pub narenas: u32,
        pub dirty_decay_ms: isize,
        pub muzzy_decay_ms: isize,
        pub tcache: bool,
    }

    /// What [`super::malloc_conf`] asks for.
    pub const SHIPPED: Options = Options {
        narenas: 1,
        dirty_decay_ms: 0,
        muzzy_decay_ms: 0,
        tcache: true,
    };

    fn read<T: Copy + Default>(name: &CStr) -> Option<T> {
        let mut value = T::default();
        let mut len = size_of::<T>();
        // SAFETY: `name` is NUL-terminated; jemalloc writes at most `len` bytes into `value`
        // (and fails if the option's C type has another size); `T` is only ever an integer,
        // valid for any bytes. `newp` is null: no option is set.
        let rc = unsafe {
            tikv_jemalloc_sys::mallctl(
                name.as_ptr(),
                (&raw mut value).cast(),
                &mut len,
                std::ptr::null_mut(),
                0,
            )
        };
        (rc == 0 && len == size_of::<T>()).then_some(value)
    }

    /// The options jemalloc runs with (`None` if one cannot be read).
    pub fn options() -> Option<Options> {
        Some(Options {
            narenas: read(c"opt.narenas")?,
            dirty_decay_ms: read(c"opt.dirty_decay_ms")?,
            muzzy_decay_ms: read(c"opt.muzzy_decay_ms")?,
            // A C `bool`: one byte, read as one (any value is a valid `u8`).
            tcache: read::<u8>(c"opt.tcache")? != 0,
        })
    }

    /// Logs the options; warns when they are not [`SHIPPED`].
    pub fn log() {
        match options() {
            Some(o) if o == SHIPPED => tracing::info!(
                narenas = o.narenas,
                dirty_decay_ms = o.dirty_decay_ms,
                muzzy_decay_ms = o.muzzy_decay_ms,
                tcache = o.tcache,
                "allocator: jemalloc"
            ),
            Some(o) => tracing::warn!(
                narenas = o.narenas,
                dirty_decay_ms = o.dirty_decay_ms,
                muzzy_decay_ms = o.muzzy_decay_ms,
                tcache = o.tcache,
                "allocator: jemalloc runs with other options than fleetmirror ships (is _RJEM_MALLOC_CONF set?); memory use will differ from the documented figures"
            ),
            None => tracing::warn!("allocator: jemalloc's options could not be read"),
        }
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn jemalloc_runs_with_the_shipped_options() {
            if std::env::var_os("_RJEM_MALLOC_CONF").is_none() {
                assert_eq!(super::options(), Some(super::SHIPPED));
            }
        }
    }
}

fn main() -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    logging::init(args.common.log_format);
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    allocator::log();
    if let Err(e) = args.validate() {
        bail!(e);
    }
    let grpc_addr = parse_listen_addr(&args.grpc_addr).context("--grpc-addr")?;
    let admin_addr = parse_listen_addr(&args.admin_addr).context("--admin-addr")?;
    let clients = kubeconfig::clients(args.common.kubeconfig.as_deref()).await?;
    let namespace = args
        .namespace
        .clone()
        .unwrap_or_else(|| clients.requests.default_namespace().to_owned());
    let identity = args.identity.clone().unwrap_or_else(default_identity);
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        %namespace,
        %identity,
        leader_elect = args.leader_elect,
        pod_source = ?args.pod_source,
        controllers = ?args.controllers.iter().map(|c| c.as_str()).collect::<Vec<_>>(),
        "starting fleetmirror-aggregator"
    );

    let token = shutdown::CancellationToken::new();
    shutdown::cancel_on_signal(token.clone());
    let (tasks, supervisor) = shutdown::Tasks::new(token.clone());
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = Metrics::register(&mut registry);
    let readiness = admin::Readiness::default();
    let index = Arc::new(FleetIndex::new(args.agent_stale_after));
    let (term_tx, leadership) = Leadership::channel();
    let (holder_tx, holder_rx) = tokio::sync::watch::channel(None);
    let advertise = args
        .pod_ip
        .map(|ip| std::net::SocketAddr::new(ip, grpc_addr.port()));
    let ctx = Context {
        client: clients.requests.clone(),
        watches: Watches::new(
            clients.watches.clone(),
            tasks.clone(),
            readiness.clone(),
            &mut registry,
            args.watch_failure_grace,
        ),
        leadership: leadership.clone(),
        tasks: tasks.clone(),
        metrics: PlatformMetrics::register(&mut registry),
    };
    let controllers: BTreeSet<Controller> = args.controllers.iter().copied().collect();
    let mirror_view = Arc::new(fleetmirror_aggregator::mirror::MirrorView::default());
    let mirror_metrics = controllers
        .contains(&Controller::Mirror)
        .then(|| fleetmirror_aggregator::mirror::MirrorMetrics::register(&mut registry));
    let routing_view = Arc::new(fleetmirror_aggregator::routing::RoutingView::default());
    let routing_metrics = controllers
        .contains(&Controller::Routing)
        .then(|| fleetmirror_aggregator::routing::RoutingMetrics::register(&mut registry));
    let integrations_view =
        Arc::new(fleetmirror_aggregator::integrations::IntegrationsView::default());
    let integrations_metrics = controllers
        .contains(&Controller::Integrations)
        .then(|| fleetmirror_aggregator::integrations::IntegrationMetrics::register(&mut registry));
    for c in controllers.iter().filter(|c| !c.built()) {
        tracing::warn!(
            controller = c.as_str(),
            "selected by --controllers but not part of this version yet: not started"
        );
    }

    tasks.spawn("admin server", {
        let (readiness, token) = (readiness.clone(), token.clone());
        async move {
            admin::serve(admin_addr, registry, readiness, token)
                .await
                .map_err(Into::into)
        }
    });
    {
        let agent_user = args
            .agent_service_account
            .clone()
            .unwrap_or_else(|| format!("system:serviceaccount:{namespace}:fleetmirror-agent"));
        tracing::info!(%agent_user, audience = %args.token_audience, "agents authenticate with TokenReview");
        let server = GrpcServer {
            auth: Authenticator::new(
                clients.requests.clone(),
                agent_user,
                args.token_audience.clone(),
                metrics.auth.clone(),
            ),
            addr: grpc_addr,
            index: index.clone(),
            leadership: leadership.clone(),
            holder: holder_rx,
            pod_source: args.pod_source,
            controllers: controllers.clone(),
            diagnostics_auth: (args.diagnostics_auth == DiagnosticsAuthMode::Token).then(|| {
                DiagnosticsAuth::new(
                    clients.requests.clone(),
                    Some(args.diagnostics_token_audience.clone()).filter(|a| !a.is_empty()),
                    metrics.auth.clone(),
                )
            }),
            tls: grpc_tls(&args, &namespace)?,
            metrics: metrics.clone(),
            ready: readiness.register("grpc"),
            mirror: mirror_view.clone(),
            routing: routing_view.clone(),
            integrations: integrations_view.clone(),
        };
        let token = token.clone();
        tasks.spawn("gRPC server", async move { server.serve(token).await });
    }
    tasks.spawn("leader gauge", {
        let (gauge, mut l) = (metrics.leader.clone(), leadership.clone());
        async move {
            while l.changed().await.is_ok() {
                gauge.set(i64::from(l.is_leader()));
            }
            Ok(())
        }
    });
    // Dead agents' entries leave the index whatever the controllers (agents report to any
    // aggregator); deleted Nodes are dropped at once by the health controller, which watches them.
    tasks.spawn("agent index janitor", {
        let (index, token, after) = (index.clone(), token.clone(), args.agent_forget_after);
        async move {
            let mut every = tokio::time::interval(std::time::Duration::from_secs(30));
            loop {
                tokio::select! {
                    _ = every.tick() => {
                        for node in index.expire(std::time::Instant::now(), after) {
                            tracing::info!(node, ?after, "forgot a node whose agent is silent");
                        }
                    }
                    _ = token.cancelled() => return Ok(()),
                }
            }
        }
    });
    if controllers.contains(&Controller::Health) {
        let controller = fleetmirror_aggregator::health::HealthController {
            ctx: ctx.clone(),
            index: index.clone(),
            pod_source: args.pod_source,
            metrics: metrics.clone(),
            stale_after: args.agent_stale_after,
        };
        tasks.spawn("health controller", controller.run());
    }
    if let Some(metrics) = mirror_metrics {
        let config = fleetmirror_aggregator::mirror::MirrorConfig::from_args(&args.mirror)
            .map_err(anyhow::Error::msg)?;
        tracing::info!(
            prefix = config.settings.keys.prefix(),
            resource_types = %args.mirror.mirror_resource_types,
            "mirror controller: {}",
            if config.resource_types.is_some() { "the listed kinds" } else { "auto-discovery" }
        );
        let controller = fleetmirror_aggregator::mirror::MirrorController::new(
            ctx.clone(),
            config,
            mirror_view.clone(),
            metrics,
            readiness.register("mirror"),
        );
        tasks.spawn("mirror controller", controller.run());
    }
    if let Some(metrics) = routing_metrics {
        let config = fleetmirror_aggregator::routing::RoutingConfig::from_args(&args.routing)
            .map_err(anyhow::Error::msg)?;
        tracing::info!(
            cluster_domain = %config.settings.domain,
            config_namespaces = %args.routing.routing_config_namespaces,
            "routing controller"
        );
        let controller = fleetmirror_aggregator::routing::RoutingController::new(
            ctx.clone(),
            config,
            routing_view.clone(),
            metrics,
            readiness.register("routing"),
        );
        tasks.spawn("routing controller", controller.run());
    }
    if let Some(metrics) = integrations_metrics {
        let config =
            fleetmirror_aggregator::integrations::IntegrationsConfig::from_args(&args.integrations)
                .map_err(anyhow::Error::msg)?;
        tracing::info!(
            connect_timeout = ?config.connect_timeout,
            request_timeout = ?config.request_timeout,
            concurrency = config.concurrency,
            probe_interval = ?config.probe_interval,
            namespaces = %args.integrations.integration_namespaces,
            "integrations controller"
        );
        let controller = fleetmirror_aggregator::integrations::IntegrationsController::new(
            ctx.clone(),
            config,
            integrations_view.clone(),
            metrics,
            readiness.register("integrations"),
        );
        tasks.spawn("integrations controller", controller.run());
    }
    if args.leader_elect {
        // While its own agents reconnect, a new leader publishes at least the count it
        // inherited (its warm-up ends when that many have snapshotted, or the stale-after).
        let agent_nodes: AgentNodes = match args.pod_source {
            PodSource::Agents => {
                let index = index.clone();
                Arc::new(move |inherited| Some(index.live_nodes().max(inherited.unwrap_or(0))))
            }
            PodSource::Api => Arc::new(|_| None),
        };
        let elector = LeaderElector::new(
            clients.requests.clone(),
            &namespace,
            ElectionConfig {
                identity,
                lease_duration: args.lease_duration,
                retry: args.lease_retry_interval,
                advertise,
                request_timeout: REQUEST_TIMEOUT,
            },
            agent_nodes,
        );
        let token = token.clone();
        tasks.spawn("leader election", async move {
            elector.run(term_tx, holder_tx, token).await;
            Ok(())
        });
    } else {
        tracing::info!("leader election disabled: this replica leads");
        term_tx.send_replace(Some(Term::unelected(REQUEST_TIMEOUT, &token)));
        // Keep the senders alive for the life of the process.
        let token = token.clone();
        tasks.spawn("leader (static)", async move {
            token.cancelled().await;
            drop((term_tx, holder_tx));
            Ok(())
        });
    }
    drop((tasks, ctx));
    supervisor.run().await?;
    tracing::info!("stopped");
    Ok(())
}

/// The gRPC server's TLS identity and the client configuration standbys reach the leader with,
/// when `--grpc-tls-cert` is set.
fn grpc_tls(
    args: &Args,
    namespace: &str,
) -> anyhow::Result<
    Option<(
        tonic::transport::Identity,
        tonic::transport::ClientTlsConfig,
    )>,
> {
    let (Some(cert), Some(key)) = (&args.grpc_tls_cert, &args.grpc_tls_key) else {
        return Ok(None);
    };
    let read = |p: &std::path::Path, flag: &str| {
        std::fs::read(p).with_context(|| format!("{flag} {}", p.display()))
    };
    let identity = tonic::transport::Identity::from_pem(
        read(cert, "--grpc-tls-cert")?,
        read(key, "--grpc-tls-key")?,
    );
    let mut client = tonic::transport::ClientTlsConfig::new().domain_name(
        args.grpc_tls_server_name
            .clone()
            .unwrap_or_else(|| format!("fleetmirror-aggregator.{namespace}.svc")),
    );
    if let Some(ca) = &args.grpc_tls_ca {
        client = client.ca_certificate(tonic::transport::Certificate::from_pem(read(
            ca,
            "--grpc-tls-ca",
        )?));
    }
    tracing::info!(cert = %cert.display(), "gRPC served over TLS");
    Ok(Some((identity, client)))
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
