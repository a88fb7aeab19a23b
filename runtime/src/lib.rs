//! Process plumbing shared by `fleetmirror-agent` and `fleetmirror-aggregator`, so both
//! binaries behave the same for an operator:
//!
//! * [`logging`]: `tracing` with `RUST_LOG` and `--log-format plain|json`;
//! * [`admin`]: the admin HTTP server with `/metrics` (OpenMetrics text), `/livez` and a
//!   `/readyz` made of named readiness checks;
//! * [`shutdown`]: one cancellation token, cancelled by SIGTERM/SIGINT, fanned out to every task;
//! * [`kubeconfig`]: the Kubernetes client from `--kubeconfig`, `KUBECONFIG` or in-cluster config;
//! * [`watch`]: reflector stores whose events trigger a level-based loop;
//! * [`addr`]: Go-style listen addresses (`:9090`);

pub mod addr;
pub mod admin;
pub mod kubeconfig;
pub mod logging;
pub mod shutdown;
pub mod watch;

use std::path::PathBuf;

/// Flags both binaries take, flattened into their `Args`.
#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    /// Log format on stderr: `plain` or `json` (filter with RUST_LOG, e.g. `info,fleetmirror=debug`).
    #[arg(long, env = "FLEETMIRROR_LOG_FORMAT", value_enum, default_value_t = logging::LogFormat::Plain)]
    pub log_format: logging::LogFormat,

    /// Path of a kubeconfig file. Default: the KUBECONFIG variable, else the in-cluster
    /// ServiceAccount.
    #[arg(long, env = "FLEETMIRROR_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
}
