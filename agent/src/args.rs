//! Command-line flags of `fleetmirror-agent` (agent.md). Every flag has a long form, an
//! environment variable (`FLEETMIRROR_<NAME>`) and a default.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use fleetmirror_runtime::CommonArgs;

/// Where a pod directory is bind-mounted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, ValueEnum)]
pub enum Layout {
    /// `<loft-root>/<vcluster>/kubelet/pods/<virtualUID>`: vcluster-fs-syncer compatible; point
    /// Velero's `nodeAgent.podVolumePath` at `<loft-root>/<vcluster>/kubelet/pods`.
    Loft,
    /// `<loft-root>/<vcluster>/pods/<virtualUID>`: the path in vcluster-fs-syncer's README.
    LoftFlat,
    /// `<vcluster-hostpath-root>/<hostNamespace>/<vcluster>/kubelet/pods/<virtualUID>`: where
    /// vCluster ≥ 0.16 rewrites Velero's hostPath, so stock Velero needs no configuration.
    VclusterHostpath,
}

impl Layout {
    /// The name used in flags, reports and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Layout::Loft => "loft",
            Layout::LoftFlat => "loft-flat",
            Layout::VclusterHostpath => "vcluster-hostpath",
        }
    }

    /// The planner's layout.
    pub fn core(self) -> fleetmirror_core::plan::Layout {
        match self {
            Layout::Loft => fleetmirror_core::plan::Layout::Loft,
            Layout::LoftFlat => fleetmirror_core::plan::Layout::LoftFlat,
            Layout::VclusterHostpath => fleetmirror_core::plan::Layout::VclusterHostpath,
        }
    }
}

/// `--mount-api`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MountApiArg {
    /// The new mount API where available, else the classic calls.
    Auto,
    /// The classic calls only.
    Classic,
}

impl MountApiArg {
    /// The kernel layer's setting.
    pub fn kernel(self) -> crate::kernel::MountApi {
        match self {
            MountApiArg::Auto => crate::kernel::MountApi::Auto,
            MountApiArg::Classic => crate::kernel::MountApi::Classic,
        }
    }
}

/// fleetmirror-agent: bind-mounts this node's vCluster pod directories under vCluster-scoped
/// paths (so Velero's node-agent inside a vCluster can back up volumes) and streams the node's
/// vCluster pod and mount states to the aggregator. Needs CAP_SYS_ADMIN; drops every other
/// capability at startup. Never writes to the Kubernetes API.
#[derive(Debug, Clone, Parser)]
#[command(name = "fleetmirror-agent", version, about, long_about = None)]
pub struct Args {
    /// The node this agent runs on (downward API `spec.nodeName` in the DaemonSet). Required.
    #[arg(long, env = "FLEETMIRROR_NODE_NAME")]
    pub node_name: String,

    /// Kubelet's root directory; pod directories are `<kubelet-root>/pods/<hostPodUID>`.
    #[arg(
        long,
        env = "FLEETMIRROR_KUBELET_ROOT",
        default_value = "/var/lib/kubelet"
    )]
    pub kubelet_root: PathBuf,

    /// Root of the `loft` and `loft-flat` layouts.
    #[arg(long, env = "FLEETMIRROR_LOFT_ROOT", default_value = "/var/lib/loft")]
    pub loft_root: PathBuf,

    /// Root of the `vcluster-hostpath` layout.
    #[arg(
        long,
        env = "FLEETMIRROR_VCLUSTER_HOSTPATH_ROOT",
        default_value = "/tmp/vcluster"
    )]
    pub vcluster_hostpath_root: PathBuf,

    /// Mount layouts to maintain: `loft`, `loft-flat`, `vcluster-hostpath`. Repeat the flag or
    /// separate with commas.
    #[arg(long, env = "FLEETMIRROR_MOUNT_LAYOUT", value_enum, value_delimiter = ',', default_values_t = [Layout::Loft])]
    pub mount_layout: Vec<Layout>,

    /// The aggregator's gRPC address, e.g. `http://fleetmirror-aggregator.fleetmirror-system.svc:9090`.
    /// Without it the agent still mounts, and reports to no one.
    #[arg(long, env = "FLEETMIRROR_AGGREGATOR_ADDR")]
    pub aggregator_addr: Option<String>,

    /// With an `https://` --aggregator-addr: the CA bundle (PEM) the aggregator's certificate
    /// is verified with. Read at startup.
    #[arg(long, env = "FLEETMIRROR_AGGREGATOR_CA")]
    pub aggregator_ca: Option<PathBuf>,

    /// With TLS: the name expected in the aggregator's certificate. Default: the host of
    /// --aggregator-addr (also when a standby redirects the agent to the leader's pod IP).
    #[arg(long, env = "FLEETMIRROR_AGGREGATOR_TLS_SERVER_NAME")]
    pub aggregator_tls_server_name: Option<String>,

    /// The projected ServiceAccount token sent to the aggregator; re-read on every connect,
    /// since kubelet rotates it. A missing file means no token is sent.
    #[arg(
        long,
        env = "FLEETMIRROR_TOKEN_PATH",
        default_value = "/var/run/secrets/fleetmirror/token"
    )]
    pub token_path: PathBuf,

    /// Interval of the safety-net full reconcile pass.
    #[arg(long, env = "FLEETMIRROR_RESYNC_INTERVAL", default_value = "60s", value_parser = humantime::parse_duration)]
    pub resync_interval: Duration,

    /// How often an idle Report stream carries an empty heartbeat, so the aggregator can tell
    /// a quiet node from a dead one. Keep well below the aggregator's --agent-stale-after.
    #[arg(long, env = "FLEETMIRROR_HEARTBEAT_INTERVAL", default_value = "20s", value_parser = humantime::parse_duration)]
    pub heartbeat_interval: Duration,

    /// How binds are made: `auto` (the new mount API where the kernel has it, Linux ≥ 5.12,
    /// else the classic calls) or `classic` (always the classic calls: a bind prepared and made
    /// a slave in a private staging directory (--mount-staging-dir), then moved to its target). Both are equally
    /// safe; `classic` exists for kernels or seccomp profiles that misreport the new API, and
    /// for tests of that path.
    #[arg(long, env = "FLEETMIRROR_MOUNT_API", value_enum, default_value_t = MountApiArg::Auto)]
    pub mount_api: MountApiArg,

    /// Where the classic path prepares binds: a directory that is a mount of its own (the
    /// DaemonSet gives it an emptyDir), made private by the agent. Unset: a directory
    /// `.fleetmirror-staging` below the first enabled root, made a private mount of its own.
    #[arg(long, env = "FLEETMIRROR_MOUNT_STAGING_DIR")]
    pub mount_staging_dir: Option<PathBuf>,

    /// Admin HTTP listen address: /metrics, /livez, /readyz.
    #[arg(long, env = "FLEETMIRROR_ADMIN_ADDR", default_value = ":8081")]
    pub admin_addr: String,

    #[command(flatten)]
    pub common: CommonArgs,
}

impl Args {
    /// Checks what clap cannot: a usable node name and positive intervals.
    pub fn validate(&self) -> Result<(), String> {
        fleetmirror_core::naming::validate_dns1123_subdomain(&self.node_name).map_err(|e| {
            format!(
                "--node-name (FLEETMIRROR_NODE_NAME) {:?} {e}; in the DaemonSet it comes from the downward API spec.nodeName",
                self.node_name
            )
        })?;
        if self
            .aggregator_addr
            .as_deref()
            .is_some_and(|a| a.starts_with("https://"))
            && self.aggregator_ca.is_none()
        {
            return Err("an https:// --aggregator-addr needs --aggregator-ca".into());
        }
        if self.resync_interval.is_zero() || self.heartbeat_interval.is_zero() {
            return Err(
                "--resync-interval and --heartbeat-interval must be greater than zero".into(),
            );
        }
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
    fn defaults_match_the_spec() {
        let a = Args::try_parse_from(["fleetmirror-agent", "--node-name", "n1"]).unwrap();
        assert_eq!(a.kubelet_root, PathBuf::from("/var/lib/kubelet"));
        assert_eq!(a.loft_root, PathBuf::from("/var/lib/loft"));
        assert_eq!(a.vcluster_hostpath_root, PathBuf::from("/tmp/vcluster"));
        assert_eq!(a.mount_layout, vec![Layout::Loft]);
        assert_eq!(a.resync_interval, Duration::from_secs(60));
        assert_eq!(a.admin_addr, ":8081");
        assert!(a.aggregator_addr.is_none());
        assert!(a.validate().is_ok());
    }

    #[test]
    fn layouts_repeat_or_comma_separate() {
        let a = Args::try_parse_from([
            "x",
            "--node-name",
            "n",
            "--mount-layout",
            "loft,vcluster-hostpath",
            "--mount-layout",
            "loft-flat",
        ])
        .unwrap();
        assert_eq!(
            a.mount_layout,
            vec![Layout::Loft, Layout::VclusterHostpath, Layout::LoftFlat]
        );
        assert!(
            Args::try_parse_from(["x", "--node-name", "n", "--mount-layout", "symlinks"]).is_err()
        );
    }

    #[test]
    fn node_name_is_required_and_checked() {
        assert!(Args::try_parse_from(["x"]).is_err());
        for bad in ["", "../etc", "Node_1"] {
            let a = Args::try_parse_from(["x", "--node-name", bad]).unwrap();
            assert!(a.validate().unwrap_err().contains("--node-name"), "{bad:?}");
        }
    }
}
