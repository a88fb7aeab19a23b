//! The end-to-end harness every fleetmirror capability is tested with. Nothing here is a
//! mock: tests talk to a real kube-apiserver + etcd (started by `scripts/control-plane.sh`),
//! run the real `fleetmirror-agent` and `fleetmirror-aggregator` binaries as child processes,
//! and create the host-side objects exactly as vCluster's syncer leaves them.
//!
//! * [`cluster`]: the shared control plane (two independent clusters, started once per test
//!   run and reused), dedicated control planes for fault tests (stop/start the API server),
//!   and a fresh namespace per test;
//! * [`footprint`]: builders for a vCluster's host footprint (control plane StatefulSet or
//!   Deployment and its pods with status set through the status subresource, API Service,
//!   kube-dns Service, node Services, synced pods with the `vcluster.loft.sh/*` keys);
//! * [`fleet`]: `VClusterHealth` objects and their status;
//! * [`node`]: a fake node (temporary roots in a private mount namespace that outlives agents);
//! * [`pod`] and [`sandbox`]: a workload started the way its rendered manifest runs it (its
//!   environment, volumes, user and read-only root in a container of its own);
//! * [`realnode`]: a real node (kubelet, containerd, kube-proxy, controller-manager, scheduler)
//!   on a control plane of its own, with the product image imported;
//! * [`tls`]: a CA and serving certificates made with openssl;
//! * [`process`]: the binaries as child processes on free loopback ports, killed on drop, with
//!   their logs kept for failure messages; [`eventually`] for polling.
//!
//! The binaries must be built first (`cargo test --workspace` builds them; `scripts/test.sh`
//! does it all).

pub mod cluster;
pub mod fleet;
pub mod footprint;
pub mod integrations;
pub mod mirror;
pub mod node;
pub mod pod;
pub mod process;
pub mod realnode;
pub mod routing;
pub mod sandbox;
pub mod tls;

use std::future::Future;
use std::time::{Duration, Instant};

/// Polls `check` every 100 ms until it returns `Some`, or panics after `timeout` naming `what`.
/// Timeouts here are generous upper bounds for readiness, never performance assertions.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The repository root (for scripts and committed manifests).
pub fn repo_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// A random RFC 4122 version-4 UUID string, as Kubernetes writes UIDs.
pub fn random_uuid() -> String {
    let b: [u8; 16] = rand::random();
    let mut b = b;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// A short random lowercase suffix for object names.
pub fn suffix() -> String {
    format!("{:06x}", rand::random::<u32>() & 0xff_ffff)
}

/// Where `scripts/install-tools.sh` puts helm, grpcurl and kubernetes-validate.
pub fn tools_bin() -> std::path::PathBuf {
    let cache = std::env::var_os("FLEETMIRROR_CACHE")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(std::env::var_os("HOME").expect("HOME is set"))
                .join(".cache/fleetmirror")
        });
    cache.join("tools/bin")
}

/// A gRPC channel to `url` (e.g. `http://127.0.0.1:9090`).
pub async fn channel(url: &str) -> tonic::transport::Channel {
    tonic::transport::Channel::from_shared(url.to_owned())
        .expect("valid URL")
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connecting to {url}: {e}"))
}

/// The node names a Diagnostics `ListNodes` at `url` returns.
pub async fn node_names(url: &str) -> Vec<String> {
    use fleetmirror_proto::v1::{ListNodesRequest, diagnostics_client::DiagnosticsClient};
    DiagnosticsClient::new(channel(url).await)
        .list_nodes(ListNodesRequest {})
        .await
        .unwrap_or_else(|e| panic!("ListNodes at {url}: {e}"))
        .into_inner()
        .nodes
        .into_iter()
        .map(|n| n.name)
        .collect()
}
