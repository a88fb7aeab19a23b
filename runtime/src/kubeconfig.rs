//! The Kubernetes clients: `--kubeconfig` when given, else `KUBECONFIG`, else the in-cluster
//! ServiceAccount (kube's inference order).

use std::path::Path;

/// Why no Kubernetes client could be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The kubeconfig file could not be read or parsed.
    #[error("reading kubeconfig {path}: {source}")]
    Kubeconfig {
        path: String,
        source: kube::config::KubeconfigError,
    },
    /// Neither KUBECONFIG nor an in-cluster ServiceAccount is available.
    #[error("no Kubernetes credentials (pass --kubeconfig, set KUBECONFIG, or run in a pod): {0}")]
    Infer(#[from] kube::config::InferConfigError),
    /// The client could not be built from the configuration.
    #[error("building the Kubernetes client: {0}")]
    Build(#[from] kube::Error),
}

/// How long a request may take to connect.
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// How long a request (not a watch) may wait for the API server's answer, or take to send.
pub const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);
/// How long a watch may go without a byte: the API server ends a watch after ~290 s
/// (kube-runtime asks for that), so only a dead connection stays silent longer.
pub const WATCH_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(330);

/// The two clients a process uses, from one configuration: `requests` for every request but
/// watches (connect, read and write timeouts: a hung API server cannot stall a controller or a
/// write), and `watches`, whose read timeout is longer than a quiet watch lasts.
#[derive(Clone)]
pub struct Clients {
    /// Gets, lists, writes, TokenReviews.
    pub requests: kube::Client,
    /// Watches (reflectors).
    pub watches: kube::Client,
}

impl std::fmt::Debug for Clients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Clients")
    }
}

/// Builds [`Clients`] from `kubeconfig` if given, else by kube's inference.
pub async fn clients(kubeconfig: Option<&Path>) -> Result<Clients, ClientError> {
    let config = config(kubeconfig).await?;
    let mut requests = config.clone();
    requests.connect_timeout = Some(CONNECT_TIMEOUT);
    requests.read_timeout = Some(REQUEST_TIMEOUT);
    requests.write_timeout = Some(REQUEST_TIMEOUT);
    let mut watches = config;
    watches.connect_timeout = Some(CONNECT_TIMEOUT);
    watches.read_timeout = Some(WATCH_READ_TIMEOUT);
    watches.write_timeout = Some(REQUEST_TIMEOUT);
    Ok(Clients {
        requests: kube::Client::try_from(requests)?,
        watches: kube::Client::try_from(watches)?,
    })
}

/// Builds a client with kube's default timeouts from `kubeconfig` if given, else by kube's
/// inference (tests and tools; the binaries use [`clients`]).
pub async fn client(kubeconfig: Option<&Path>) -> Result<kube::Client, ClientError> {
    Ok(kube::Client::try_from(config(kubeconfig).await?)?)
}

async fn config(kubeconfig: Option<&Path>) -> Result<kube::Config, ClientError> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path).map_err(|source| {
                ClientError::Kubeconfig {
                    path: path.display().to_string(),
                    source,
                }
            })?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|source| ClientError::Kubeconfig {
                    path: path.display().to_string(),
                    source,
                })?
        }
        None => kube::Config::infer().await?,
    };
    Ok(config)
}
