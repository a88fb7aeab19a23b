//! Command-line flags of `fleetmirror-aggregator`. Every flag has a long form, an
//! environment variable (`FLEETMIRROR_<NAME>`) and a default; names are fixed by
//! `00-product.md`.

use std::time::Duration;

use clap::{ArgAction, Parser, ValueEnum};
use fleetmirror_runtime::CommonArgs;

/// Where pod facts for health scoring come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PodSource {
    /// From the node agents' reports (the aggregator never lists pods).
    Agents,
    /// From a label-filtered watch of pods, for clusters without agents.
    Api,
}

/// Who may call Diagnostics (`--diagnostics-auth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DiagnosticsAuthMode {
    /// Anyone who reaches the gRPC port (guard it with the chart's NetworkPolicy).
    None,
    /// A bearer token of a user allowed to `get` `diagnostics.fleetmirror.io`.
    Token,
}

/// A controller `--controllers` can select.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum Controller {
    /// `VClusterHealth` scoring (health.md).
    Health,
    /// Mirroring of namespaced objects across namespaces (mirror.md).
    Mirror,
    /// Istio VirtualServices for developer routing (routing.md).
    Routing,
    /// Integration checks across clusters (integrations.md).
    Integrations,
}

impl Controller {
    /// Its name in `--controllers`, logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Controller::Health => "health",
            Controller::Mirror => "mirror",
            Controller::Routing => "routing",
            Controller::Integrations => "integrations",
        }
    }

    /// True when this version has it.
    pub fn built(self) -> bool {
        matches!(
            self,
            Controller::Health
                | Controller::Mirror
                | Controller::Routing
                | Controller::Integrations
        )
    }
}

/// fleetmirror-aggregator: scores every vCluster of the fleet from node agents' reports,
/// writes VClusterHealth status, mirrors labelled objects across namespaces, and serves the
/// read-only Diagnostics gRPC API (grpcurl works through server reflection). Only the leader
/// (Lease `fleetmirror-aggregator`) writes.
#[derive(Debug, Clone, Parser)]
#[command(name = "fleetmirror-aggregator", version, about, long_about = None)]
pub struct Args {
    /// gRPC listen address (AgentService, Diagnostics, grpc.health.v1.Health, reflection).
    #[arg(long, env = "FLEETMIRROR_GRPC_ADDR", default_value = ":9090")]
    pub grpc_addr: String,

    /// Admin HTTP listen address: /metrics, /livez, /readyz.
    #[arg(long, env = "FLEETMIRROR_ADMIN_ADDR", default_value = ":8080")]
    pub admin_addr: String,

    /// Namespace of the leader-election Lease and of the Events the aggregator writes about
    /// itself. Default: the namespace of the in-cluster ServiceAccount, else the kubeconfig
    /// context's namespace.
    #[arg(long, env = "FLEETMIRROR_NAMESPACE")]
    pub namespace: Option<String>,

    /// Elect a leader through the Lease `fleetmirror-aggregator`; only the leader writes to
    /// the API and accepts agent reports. Set to false only with a single replica.
    #[arg(long, env = "FLEETMIRROR_LEADER_ELECT", default_value_t = true, action = ArgAction::Set)]
    pub leader_elect: bool,

    /// This replica's identity in the Lease. Default: the host name (the pod name in a pod).
    #[arg(long, env = "FLEETMIRROR_POD_NAME")]
    pub identity: Option<String>,

    /// This replica's pod IP. The leader writes `<pod-ip>:<grpc port>` on the Lease so that
    /// standbys forward the Diagnostics calls only the leader can answer (it holds the agent
    /// reports); without it a standby refuses them with UNAVAILABLE.
    #[arg(long, env = "FLEETMIRROR_POD_IP")]
    pub pod_ip: Option<std::net::IpAddr>,

    /// How long a Lease is valid without renewal; a standby takes over after it expires.
    #[arg(long, env = "FLEETMIRROR_LEASE_DURATION", default_value = "15s", value_parser = humantime::parse_duration)]
    pub lease_duration: Duration,

    /// How often the leader renews the Lease and a standby tries to acquire it. Must be well
    /// below --lease-duration.
    #[arg(long, env = "FLEETMIRROR_LEASE_RETRY_INTERVAL", default_value = "2s", value_parser = humantime::parse_duration)]
    pub lease_retry_interval: Duration,

    /// Pod facts for health scoring: `agents` (node agents' reports) or `api` (watch pods,
    /// label-filtered, for clusters without agents).
    #[arg(long, env = "FLEETMIRROR_POD_SOURCE", value_enum, default_value_t = PodSource::Agents)]
    pub pod_source: PodSource,

    /// An agent silent for longer than this has its pods marked stale (they no longer count).
    /// Also how long a new leader waits at most for the agents to reconnect before it judges
    /// pod facts (it never publishes a worse status before).
    #[arg(long, env = "FLEETMIRROR_AGENT_STALE_AFTER", default_value = "60s", value_parser = humantime::parse_duration)]
    pub agent_stale_after: Duration,

    /// A node whose agent has been silent (and disconnected) for longer than this is dropped
    /// from the index. A node whose Node object is deleted is dropped at once.
    #[arg(long, env = "FLEETMIRROR_AGENT_FORGET_AFTER", default_value = "10m", value_parser = humantime::parse_duration)]
    pub agent_forget_after: Duration,

    /// The controllers this process runs, comma-separated: `health`, `mirror`, `routing`,
    /// `integrations`. A controller not listed starts no watch and needs none of its RBAC; its
    /// Diagnostics methods answer FAILED_PRECONDITION. gRPC, the admin server, agent reports
    /// and leader election always run.
    #[arg(long, env = "FLEETMIRROR_CONTROLLERS", value_enum, value_delimiter = ',', default_values_t = [Controller::Health, Controller::Mirror, Controller::Routing, Controller::Integrations])]
    pub controllers: Vec<Controller>,

    /// Who may call Diagnostics (it returns every tenant's pod names, namespaces and UIDs):
    /// `none` (anyone who reaches the gRPC port; the chart's NetworkPolicy keeps it to this
    /// namespace and `kubectl port-forward`) or `token` (a bearer token the API server
    /// authenticates, of a user RBAC allows to `get` `diagnostics` in group `fleetmirror.io`;
    /// for clusters whose network does not enforce NetworkPolicies).
    #[arg(long, env = "FLEETMIRROR_DIAGNOSTICS_AUTH", value_enum, default_value_t = DiagnosticsAuthMode::None)]
    pub diagnostics_auth: DiagnosticsAuthMode,

    /// With --diagnostics-auth=token: the audience callers' tokens must be issued for
    /// (`kubectl create token <account> --audience fleetmirror-diagnostics`), so a token handed
    /// to fleetmirror is good for nothing else and a token for the API server is refused here.
    /// Empty: the API server's own audiences (any token the API server accepts, e.g. OIDC).
    #[arg(
        long,
        env = "FLEETMIRROR_DIAGNOSTICS_TOKEN_AUDIENCE",
        default_value = "fleetmirror-diagnostics"
    )]
    pub diagnostics_token_audience: String,

    /// Serve gRPC over TLS with this certificate (PEM; with --grpc-tls-key). Its SANs must
    /// cover the name agents dial (the Service, `fleetmirror-aggregator.<namespace>.svc`).
    /// Read at startup: a rotated certificate takes a rollout restart.
    #[arg(long, env = "FLEETMIRROR_GRPC_TLS_CERT", requires = "grpc_tls_key")]
    pub grpc_tls_cert: Option<std::path::PathBuf>,

    /// The private key of --grpc-tls-cert (PEM).
    #[arg(long, env = "FLEETMIRROR_GRPC_TLS_KEY", requires = "grpc_tls_cert")]
    pub grpc_tls_key: Option<std::path::PathBuf>,

    /// With TLS: the CA bundle (PEM) a standby verifies the leader's certificate with when it
    /// forwards Diagnostics to the leader's pod IP.
    #[arg(long, env = "FLEETMIRROR_GRPC_TLS_CA")]
    pub grpc_tls_ca: Option<std::path::PathBuf>,

    /// With TLS: the name a standby expects in the leader's certificate (it dials a pod IP).
    /// Default: `fleetmirror-aggregator.<--namespace>.svc`.
    #[arg(long, env = "FLEETMIRROR_GRPC_TLS_SERVER_NAME")]
    pub grpc_tls_server_name: Option<String>,

    /// A watch that cannot list or watch for longer than this turns /readyz false and the
    /// controllers reading it say Ready=Unknown instead of presenting old data as fresh.
    #[arg(long, env = "FLEETMIRROR_WATCH_FAILURE_GRACE", default_value = "60s", value_parser = humantime::parse_duration)]
    pub watch_failure_grace: Duration,

    /// The only identity allowed to report as an agent. Default:
    /// `system:serviceaccount:<--namespace>:fleetmirror-agent`.
    #[arg(long, env = "FLEETMIRROR_AGENT_SERVICE_ACCOUNT")]
    pub agent_service_account: Option<String>,

    /// The audience agent tokens must be issued for (the DaemonSet's projected token sets it).
    #[arg(
        long,
        env = "FLEETMIRROR_TOKEN_AUDIENCE",
        default_value = "fleetmirror"
    )]
    pub token_audience: String,

    #[command(flatten)]
    pub mirror: MirrorArgs,

    #[command(flatten)]
    pub routing: RoutingArgs,

    #[command(flatten)]
    pub integrations: IntegrationsArgs,

    #[command(flatten)]
    pub common: CommonArgs,
}

/// A comma-separated namespace list flag (`flag` names it in errors): `None` when empty (all
/// namespaces), each entry a DNS-1123 label.
pub fn namespace_list(
    flag: &str,
    text: &str,
) -> Result<Option<std::collections::BTreeSet<String>>, String> {
    let namespaces: std::collections::BTreeSet<String> = text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    for n in &namespaces {
        fleetmirror_core::naming::validate_dns1123_label(n)
            .map_err(|e| format!("{flag}: {n:?} {e}"))?;
    }
    Ok((!namespaces.is_empty()).then_some(namespaces))
}

/// The integrations controller's flags (integrations.md).
#[derive(Debug, Clone, clap::Args)]
pub struct IntegrationsArgs {
    /// TCP connect plus TLS handshake to a target cluster.
    #[arg(long, env = "FLEETMIRROR_CLUSTER_CONNECT_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub cluster_connect_timeout: Duration,

    /// Deadline of one whole cluster check (its requests run concurrently), and of a target's
    /// connection test.
    #[arg(long, env = "FLEETMIRROR_CLUSTER_REQUEST_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub cluster_request_timeout: Duration,

    /// Target clusters being contacted at once (a cluster that does not answer holds one slot
    /// for at most --cluster-request-timeout).
    #[arg(
        long,
        env = "FLEETMIRROR_INTEGRATION_CONCURRENCY",
        default_value_t = 16
    )]
    pub integration_concurrency: usize,

    /// Connection test (`GET /version`) of each IntegrationTarget this often; failing ones
    /// every half of it.
    #[arg(long, env = "FLEETMIRROR_TARGET_PROBE_INTERVAL", default_value = "60s", value_parser = humantime::parse_duration)]
    pub target_probe_interval: Duration,

    /// Only Integrations, IntegrationTargets and Secrets in these namespaces (comma-separated)
    /// are honoured; empty: every namespace. Limits who can make the aggregator contact a
    /// cluster (whoever can create a target and a Secret in an honoured namespace).
    #[arg(long, env = "FLEETMIRROR_INTEGRATION_NAMESPACES", default_value = "")]
    pub integration_namespaces: String,
}

/// The routing controller's flags (routing.md).
#[derive(Debug, Clone, clap::Args)]
pub struct RoutingArgs {
    /// The DNS suffix of the hosts in generated VirtualServices and placeholders
    /// (`<service>.<namespace>.svc.<domain>`).
    #[arg(
        long,
        env = "FLEETMIRROR_CLUSTER_DOMAIN",
        default_value = "cluster.local"
    )]
    pub cluster_domain: String,

    /// A full re-plan of every routing domain this often (every change re-plans at once; with
    /// nothing changed it writes nothing).
    #[arg(long, env = "FLEETMIRROR_ROUTING_RESYNC_INTERVAL", default_value = "10m", value_parser = humantime::parse_duration)]
    pub routing_resync_interval: Duration,

    /// Only ConfigMaps in these namespaces (comma-separated) are routing configs; empty: every
    /// namespace. Objects made for a config elsewhere are left to the instance that reads it
    /// (for two installs in one cluster).
    #[arg(
        long,
        env = "FLEETMIRROR_ROUTING_CONFIG_NAMESPACES",
        default_value = ""
    )]
    pub routing_config_namespaces: String,
}

/// The mirror controller's flags (mirror.md "Flags"). kubemirror's flags map one to one:
/// `--excluded-namespaces` → `--mirror-excluded-namespaces` (globs, and setting it replaces the
/// default list), `--included-namespaces`, `--resource-types`, `--discovery-interval`,
/// `--max-targets` → `--mirror-` + the same name, `--resync-period` → `--mirror-resync-interval`.
#[derive(Debug, Clone, clap::Args)]
pub struct MirrorArgs {
    /// The prefix of every mirror key (`<p>/enabled`, `<p>/sync`, `<p>/target-namespaces`, ...):
    /// a DNS subdomain. `kubemirror.raczylo.com` makes every kubemirror source and mirror work
    /// unchanged (stop kubemirror first).
    #[arg(
        long,
        env = "FLEETMIRROR_MIRROR_KEY_PREFIX",
        default_value = "fleetmirror.io"
    )]
    pub mirror_key_prefix: String,

    /// The kinds to mirror, as `Kind.version[.group]` (`Secret.v1`,
    /// `Ingress.v1.networking.k8s.io`), comma-separated: replaces auto-discovery and bypasses the
    /// deny list (each denied kind named is warned about once). Empty: every namespaced kind the
    /// API serves with get, list, watch, create, update, patch and delete, minus the deny list.
    #[arg(long, env = "FLEETMIRROR_MIRROR_RESOURCE_TYPES", default_value = "")]
    pub mirror_resource_types: String,

    /// How often the served kinds are discovered again: a CRD installed later is watched within
    /// one interval, one removed stops being watched.
    #[arg(long, env = "FLEETMIRROR_MIRROR_DISCOVERY_INTERVAL", default_value = "5m", value_parser = humantime::parse_duration)]
    pub mirror_discovery_interval: Duration,

    /// How often a full pass runs without any change (a safety net: every change triggers one).
    #[arg(long, env = "FLEETMIRROR_MIRROR_RESYNC_INTERVAL", default_value = "10m", value_parser = humantime::parse_duration)]
    pub mirror_resync_interval: Duration,

    /// Namespaces never mirrored into (globs, comma-separated; setting it replaces the default).
    #[arg(
        long,
        env = "FLEETMIRROR_MIRROR_EXCLUDED_NAMESPACES",
        default_value = "kube-system,kube-public,kube-node-lease"
    )]
    pub mirror_excluded_namespaces: String,

    /// Only namespaces matching one of these globs are mirrored into (empty: all).
    #[arg(
        long,
        env = "FLEETMIRROR_MIRROR_INCLUDED_NAMESPACES",
        default_value = ""
    )]
    pub mirror_included_namespaces: String,

    /// Only objects in namespaces matching one of these globs can be sources (empty: all); a
    /// labelled object elsewhere gets a `Refused` Event.
    #[arg(long, env = "FLEETMIRROR_MIRROR_SOURCE_NAMESPACES", default_value = "")]
    pub mirror_source_namespaces: String,

    /// The most target namespaces per source (the first by name are kept; 0: no limit). A
    /// source's `<p>/max-targets` can lower it, never raise it.
    #[arg(long, env = "FLEETMIRROR_MIRROR_MAX_TARGETS", default_value_t = 100)]
    pub mirror_max_targets: usize,

    /// Label and annotation keys never copied to mirrors (globs over keys, comma-separated):
    /// copied, they make Argo CD, Helm or Flux adopt or prune the mirrors.
    #[arg(long, env = "FLEETMIRROR_MIRROR_STRIP_KEYS", default_value = fleetmirror_core::mirror::render::DEFAULT_STRIP_KEYS)]
    pub mirror_strip_keys: String,

    /// Mirror writes in flight at once.
    #[arg(
        long,
        env = "FLEETMIRROR_MIRROR_WRITE_CONCURRENCY",
        default_value_t = 16
    )]
    pub mirror_write_concurrency: usize,
}

impl Args {
    /// Checks relations between flags that clap cannot express.
    pub fn validate(&self) -> Result<(), String> {
        if self.lease_retry_interval * 2 > self.lease_duration {
            return Err(format!(
                "--lease-retry-interval ({}) must be at most half of --lease-duration ({}): a \
                 term lasts the difference, and every write must fit in it",
                humantime::format_duration(self.lease_retry_interval),
                humantime::format_duration(self.lease_duration)
            ));
        }
        if self.agent_stale_after.is_zero() {
            return Err("--agent-stale-after must be greater than zero".into());
        }
        if self.agent_forget_after < self.agent_stale_after {
            return Err("--agent-forget-after must not be shorter than --agent-stale-after".into());
        }
        if self.grpc_tls_cert.is_some() && self.grpc_tls_ca.is_none() && self.leader_elect {
            return Err(
                "--grpc-tls-cert needs --grpc-tls-ca: standbys verify the leader they forward to"
                    .into(),
            );
        }
        if self.controllers.is_empty() {
            return Err("--controllers must name at least one controller".into());
        }
        crate::mirror::MirrorConfig::from_args(&self.mirror)?;
        crate::routing::RoutingConfig::from_args(&self.routing)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn flags_are_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn defaults_match_the_product_contract() {
        let a = Args::try_parse_from(["fleetmirror-aggregator"]).unwrap();
        assert_eq!(a.grpc_addr, ":9090");
        assert_eq!(a.admin_addr, ":8080");
        assert!(a.leader_elect);
        assert_eq!(a.pod_source, PodSource::Agents);
        assert_eq!(a.agent_stale_after, Duration::from_secs(60));
        assert_eq!(
            a.controllers,
            [
                Controller::Health,
                Controller::Mirror,
                Controller::Routing,
                Controller::Integrations
            ]
        );
        assert_eq!(
            a.common.log_format,
            fleetmirror_runtime::logging::LogFormat::Plain
        );
        assert!(a.validate().is_ok());
    }

    #[test]
    fn leader_elect_takes_a_value() {
        let a = Args::try_parse_from(["x", "--leader-elect=false"]).unwrap();
        assert!(!a.leader_elect);
        assert!(Args::try_parse_from(["x", "--pod-source", "pods"]).is_err());
        assert!(Args::try_parse_from(["x", "--agent-stale-after", "soon"]).is_err());
    }

    #[test]
    fn controllers_are_checked() {
        let a = Args::try_parse_from(["x", "--controllers", "health"]).unwrap();
        assert_eq!(a.controllers, [Controller::Health]);
        let e = Args::try_parse_from(["x", "--controllers", "health,mirrors"]).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("mirrors") && msg.contains("possible values"),
            "{msg}"
        );
    }

    #[test]
    fn mirror_flags_are_checked_naming_the_flag() {
        for (flag, value) in [
            ("--mirror-key-prefix", "Not_A_Domain"),
            ("--mirror-resource-types", "Secret.v1,Invalid"),
            ("--mirror-excluded-namespaces", "app-["),
            ("--mirror-included-namespaces", "[]"),
            ("--mirror-source-namespaces", "a,b-["),
            ("--mirror-write-concurrency", "0"),
            ("--mirror-discovery-interval", "0s"),
        ] {
            let a = Args::try_parse_from(["x", flag, value]).unwrap();
            let e = a.validate().unwrap_err();
            assert!(e.contains(flag), "{flag}={value}: {e}");
        }
        let a = Args::try_parse_from([
            "x",
            "--mirror-key-prefix=kubemirror.raczylo.com",
            "--mirror-resource-types= Secret.v1 , ConfigMap.v1 ",
        ])
        .unwrap();
        assert!(a.validate().is_ok());
    }

    #[test]
    fn lease_timing_is_checked() {
        let a = Args::try_parse_from([
            "x",
            "--lease-duration",
            "2s",
            "--lease-retry-interval",
            "2s",
        ])
        .unwrap();
        assert!(a.validate().unwrap_err().contains("--lease-retry-interval"));
    }
}
