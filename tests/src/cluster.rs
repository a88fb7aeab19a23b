//! Real control planes for tests, through `scripts/control-plane.sh` (the same script users
//! run, so the harness and the README cannot disagree).
//!
//! [`ControlPlane::shared`] starts (or reuses) two independent clusters once per test process,
//! in `FLEETMIRROR_CP_DIR` (default `/tmp/fleetmirror-cp`), and leaves them running for the
//! next test binary; `scripts/test.sh` points it at a fresh directory and stops it at the end.
//! Fault tests that stop an API server use [`ControlPlane::dedicated`], their own etcd and
//! kube-apiserver, so they never disturb tests running in parallel.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, PostParams};

/// One running control plane (one etcd, one or more kube-apiservers).
#[derive(Debug)]
pub struct ControlPlane {
    dir: PathBuf,
    kubeconfigs: Vec<PathBuf>,
    owned: bool,
}

fn script() -> PathBuf {
    crate::repo_root().join("scripts/control-plane.sh")
}

fn run_script(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("bash")
        .arg(script())
        .args(args)
        .env("FLEETMIRROR_CP_DIR", dir)
        .output()
        .unwrap_or_else(|e| panic!("running scripts/control-plane.sh: {e}"));
    assert!(
        out.status.success(),
        "scripts/control-plane.sh {args:?} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The shared control plane's state directory (`FLEETMIRROR_CP_DIR`, default `/tmp/fleetmirror-cp`).
pub fn shared_dir() -> PathBuf {
    std::env::var_os("FLEETMIRROR_CP_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/tmp/fleetmirror-cp".into())
}

impl ControlPlane {
    /// Starts (or reuses) `clusters` clusters in `dir`.
    fn up(dir: PathBuf, clusters: usize, owned: bool) -> ControlPlane {
        let out = run_script(&dir, &["up", "--clusters", &clusters.to_string()]);
        let kubeconfigs = out
            .lines()
            .filter(|l| !l.is_empty())
            .map(PathBuf::from)
            .collect();
        ControlPlane {
            dir,
            kubeconfigs,
            owned,
        }
    }

    /// Two independent clusters (`0` and `1`), started once and shared by every test.
    pub fn shared() -> &'static ControlPlane {
        static SHARED: OnceLock<ControlPlane> = OnceLock::new();
        SHARED.get_or_init(|| ControlPlane::up(shared_dir(), 2, false))
    }

    /// A control plane of its own (one cluster), stopped and removed on drop.
    pub fn dedicated(name: &str) -> ControlPlane {
        ControlPlane::dedicated_clusters(name, 1)
    }

    /// A control plane of its own with `clusters` clusters, stopped and removed on drop.
    pub fn dedicated_clusters(name: &str, clusters: usize) -> ControlPlane {
        ControlPlane::up(
            shared_dir().join(format!("dedicated-{name}-{}", crate::suffix())),
            clusters,
            true,
        )
    }

    /// Cluster `i`'s kubeconfig file.
    pub fn kubeconfig(&self, i: usize) -> &Path {
        &self.kubeconfigs[i]
    }

    /// A client for cluster `i`, as the admin.
    pub async fn client(&self, i: usize) -> kube::Client {
        fleetmirror_runtime::kubeconfig::client(Some(self.kubeconfig(i)))
            .await
            .expect("client from kubeconfig")
    }

    /// Stops cluster `i`'s kube-apiserver (etcd keeps the data).
    pub fn stop_apiserver(&self, i: usize) {
        run_script(&self.dir, &["stop-apiserver", &i.to_string()]);
    }

    /// Starts cluster `i`'s kube-apiserver again, on the same port, and waits until it is ready.
    pub fn start_apiserver(&self, i: usize) {
        run_script(&self.dir, &["start-apiserver", &i.to_string()]);
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if self.owned {
            let _ = Command::new("bash")
                .arg(script())
                .arg("down")
                .env("FLEETMIRROR_CP_DIR", &self.dir)
                .output();
        }
    }
}

/// Creates a fresh namespace `<prefix>-<random>` and returns its name. (The local control
/// plane has no namespace controller, so namespaces are never finalized; each test run starts
/// from a fresh etcd under scripts/test.sh.)
pub async fn namespace(client: &kube::Client, prefix: &str) -> String {
    let name = format!("{prefix}-{}", crate::suffix());
    let ns = Namespace {
        metadata: kube::api::ObjectMeta {
            name: Some(name.clone()),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .expect("create namespace");
    name
}

/// A token as the agent DaemonSet's projected volume holds it: for ServiceAccount
/// `service_account` in `namespace` (created if missing), audience `fleetmirror`, bound to a
/// new pod of that ServiceAccount on `node` (unless `bound` is false). Uses the TokenRequest
/// API, which works on the local control plane without a controller-manager.
pub async fn agent_token(
    client: &kube::Client,
    namespace: &str,
    node: &str,
    service_account: &str,
    bound: bool,
) -> String {
    use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, ServiceAccount};
    let sas = Api::<ServiceAccount>::namespaced(client.clone(), namespace);
    let sa = ServiceAccount {
        metadata: kube::api::ObjectMeta {
            name: Some(service_account.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    match sas.create(&PostParams::default(), &sa).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => panic!("creating ServiceAccount {service_account}: {e}"),
    }
    if !bound {
        return token(
            client,
            namespace,
            service_account,
            None,
            Some("fleetmirror"),
            Some(3600),
        )
        .await;
    }
    let pod = Pod {
        metadata: kube::api::ObjectMeta {
            name: Some(format!("{service_account}-{}", crate::suffix())),
            ..Default::default()
        },
        spec: Some(PodSpec {
            node_name: Some(node.into()),
            service_account_name: Some(service_account.into()),
            containers: vec![Container {
                name: "agent".into(),
                image: Some("registry.invalid/agent:0".into()),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    };
    let pod = Api::<Pod>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &pod)
        .await
        .expect("agent pod");
    pod_token(client, &pod, Some("fleetmirror"), Some(3600)).await
}

/// A token for `pod`'s ServiceAccount, bound to `pod`, as kubelet mounts them: for `audience`
/// (`None`: the API server's own, as in the in-cluster credentials).
pub async fn pod_token(
    client: &kube::Client,
    pod: &k8s_openapi::api::core::v1::Pod,
    audience: Option<&str>,
    expiration_seconds: Option<i64>,
) -> String {
    use k8s_openapi::api::authentication::v1::BoundObjectReference;
    let namespace = pod.metadata.namespace.as_deref().expect("pod namespace");
    let service_account = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.as_deref())
        .unwrap_or("default");
    let bound = BoundObjectReference {
        kind: Some("Pod".into()),
        api_version: Some("v1".into()),
        name: pod.metadata.name.clone(),
        uid: pod.metadata.uid.clone(),
    };
    token(
        client,
        namespace,
        service_account,
        Some(bound),
        audience,
        expiration_seconds,
    )
    .await
}

/// A token of ServiceAccount `service_account` in `namespace` (created if missing) for the API
/// server itself (its default audience): what a pod's automounted token is.
pub async fn service_account_token(
    client: &kube::Client,
    namespace: &str,
    service_account: &str,
) -> String {
    use k8s_openapi::api::core::v1::ServiceAccount;
    let sa = ServiceAccount {
        metadata: kube::api::ObjectMeta {
            name: Some(service_account.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    match Api::<ServiceAccount>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &sa)
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => panic!("creating ServiceAccount {service_account}: {e}"),
    }
    token(client, namespace, service_account, None, None, Some(3600)).await
}

async fn token(
    client: &kube::Client,
    namespace: &str,
    service_account: &str,
    bound_object_ref: Option<k8s_openapi::api::authentication::v1::BoundObjectReference>,
    audience: Option<&str>,
    expiration_seconds: Option<i64>,
) -> String {
    use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
    use k8s_openapi::api::core::v1::ServiceAccount;
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: audience.map(|a| vec![a.to_owned()]).unwrap_or_default(),
            bound_object_ref,
            expiration_seconds,
        },
        ..Default::default()
    };
    Api::<ServiceAccount>::namespaced(client.clone(), namespace)
        .create_token_request(service_account, &PostParams::default(), &request)
        .await
        .unwrap_or_else(|e| panic!("TokenRequest for {namespace}/{service_account}: {e}"))
        .status
        .expect("token status")
        .token
}

/// Installs fleetmirror's CRDs (generated from the Rust types) and waits until the API server
/// serves them.
pub async fn install_crds(client: &kube::Client) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let api = Api::<CustomResourceDefinition>::all(client.clone());
    for crd in fleetmirror_aggregator::crd::crds() {
        let name = crd.metadata.name.clone().unwrap();
        // Applied, so a control plane kept from an older checkout gets the current schema.
        api.patch(
            &name,
            &kube::api::PatchParams::apply("fleetmirror-tests").force(),
            &kube::api::Patch::Apply(&crd),
        )
        .await
        .unwrap_or_else(|e| panic!("applying CRD {name}: {e}"));
        crate::eventually(
            std::time::Duration::from_secs(30),
            &format!("CRD {name} established"),
            || async {
                let crd = api.get(&name).await.ok()?;
                crd.status?
                    .conditions?
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
                    .then_some(())
            },
        )
        .await;
    }
}

/// Creates Node `name` in cluster `i` unless it exists, from a synchronous context (kubectl):
/// the agent refuses to start for a node that does not exist, as kubelet would have
/// registered it.
pub fn ensure_node(cp: &ControlPlane, i: usize, name: &str) {
    use std::io::Write;
    let mut child = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(cp.kubeconfig(i))
        .args(["apply", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("kubectl");
    write!(
        child.stdin.take().unwrap(),
        "{{\"apiVersion\":\"v1\",\"kind\":\"Node\",\"metadata\":{{\"name\":\"{name}\"}}}}"
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "creating Node {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Creates Node `name` (metadata only: there is no kubelet behind it), as a real node would
/// have registered itself.
pub async fn create_node(client: &kube::Client, name: &str) {
    let node: k8s_openapi::api::core::v1::Node =
        serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap();
    match Api::<k8s_openapi::api::core::v1::Node>::all(client.clone())
        .create(&PostParams::default(), &node)
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => panic!("creating Node {name}: {e}"),
    }
}

/// A kubeconfig file for cluster `i` of `cp` that authenticates with `token` (e.g. a
/// ServiceAccount's, so a process runs with exactly that account's RBAC). Removed with `dir`.
pub fn kubeconfig_with_token(cp: &ControlPlane, i: usize, token: &str, dir: &Path) -> PathBuf {
    let admin = kube::config::Kubeconfig::read_from(cp.kubeconfig(i)).expect("kubeconfig");
    let cluster = admin.clusters[0].cluster.clone().expect("cluster");
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {}\n    certificate-authority: {}\nusers:\n- name: u\n  user:\n    token: {token}\ncontexts:\n- name: c\n  context:\n    cluster: c\n    user: u\ncurrent-context: c\n",
        cluster.server.expect("server"),
        cluster.certificate_authority.expect("CA file"),
    );
    let path = dir.join(format!("kubeconfig-{}", crate::suffix()));
    std::fs::write(&path, text).unwrap();
    path
}
