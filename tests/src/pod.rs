//! A workload started **the way its rendered manifest runs it**: the pod template of a
//! DaemonSet or Deployment from `deploy/install.yaml` or `helm template` (never retyped), run
//! in a [`crate::sandbox`] container with the template's command, its exact environment
//! (downward-API fields resolved as kubelet would), its volumes and only those writable, its
//! user, group and read-only root, the in-cluster ServiceAccount credentials kubelet mounts,
//! and the `KUBERNETES_SERVICE_*` variables kubelet sets. A manifest change that breaks a
//! binary fails here.
//!
//! Anything in a template this harness does not know how to reproduce (another volume type,
//! an env source, a capability added to a non-root user) panics, naming it: a test must never
//! silently run something other than what the manifest says.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, Volume as PodVolume};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::cluster::ControlPlane;
use crate::node::NodeSandbox;
use crate::process::{Process, binary};
use crate::sandbox::{Propagation, SandboxSpec, Volume, http_get_in, image_files, kubelet_files};

/// The namespace and release `deploy/install.yaml` is rendered for.
pub const NAMESPACE: &str = "fleetmirror-system";
const RELEASE: &str = "fleetmirror";

/// The `PATH` of the image (`Containerfile`).
pub const IMAGE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A rendered set of manifests.
#[derive(Debug, Clone)]
pub struct Rendered {
    /// What was rendered, for messages.
    pub label: String,
    docs: Vec<serde_yaml::Value>,
}

fn parse_docs(text: &str) -> Vec<serde_yaml::Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|d| serde::Deserialize::deserialize(d).expect("YAML document"))
        .filter(|v: &serde_yaml::Value| !v.is_null())
        .collect()
}

impl Rendered {
    /// `deploy/install.yaml`: the chart with its default values.
    pub fn install_yaml() -> Rendered {
        let text = std::fs::read_to_string(crate::repo_root().join("deploy/install.yaml"))
            .expect("deploy/install.yaml");
        Rendered {
            label: "deploy/install.yaml".into(),
            docs: parse_docs(&text),
        }
    }

    /// `helm template` of the chart with `--set` values, as `scripts/render-manifests.sh`
    /// renders install.yaml (same release and namespace).
    pub fn helm(set: &[&str]) -> Rendered {
        Rendered::helm_chart(&crate::repo_root().join("charts/fleetmirror"), set)
    }

    /// `helm template` of the chart at `chart` (e.g. a test's modified copy) with `--set` values.
    pub fn helm_chart(chart: &Path, set: &[&str]) -> Rendered {
        let mut cmd = Command::new(crate::tools_bin().join("helm"));
        cmd.args(["template", RELEASE])
            .arg(chart)
            .args(["--namespace", NAMESPACE]);
        for s in set {
            cmd.args(["--set", s]);
        }
        let out = cmd
            .output()
            .expect("running helm (scripts/install-tools.sh)");
        assert!(
            out.status.success(),
            "helm template --set {set:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Rendered {
            label: format!("helm template --set {}", set.join(" --set ")),
            docs: parse_docs(&String::from_utf8_lossy(&out.stdout)),
        }
    }

    /// Every document.
    pub fn docs(&self) -> &[serde_yaml::Value] {
        &self.docs
    }

    /// The pod template of workload `kind`/`name`.
    pub fn pod_spec(&self, kind: &str, name: &str) -> PodSpec {
        let doc = self
            .docs
            .iter()
            .find(|d| {
                d["kind"].as_str() == Some(kind) && d["metadata"]["name"].as_str() == Some(name)
            })
            .unwrap_or_else(|| panic!("{kind} {name} not in {}", self.label));
        serde_yaml::from_value(doc["spec"]["template"]["spec"].clone())
            .unwrap_or_else(|e| panic!("{kind} {name} pod template of {}: {e}", self.label))
    }
}

/// Applies `deploy/install.yaml` (CRDs, ServiceAccounts, RBAC, Services, workloads) to cluster
/// `cluster`, except its PodDisruptionBudget: policy/v1, which the 1.20 test server predates
/// (the chart renders policy/v1beta1 for such clusters). Idempotent (server-side apply).
pub fn apply_install_yaml(cp: &ControlPlane, cluster: usize) {
    let docs: Vec<String> = Rendered::install_yaml()
        .docs
        .into_iter()
        .filter(|d| d["kind"].as_str() != Some("PodDisruptionBudget"))
        .map(|d| serde_yaml::to_string(&d).unwrap())
        .collect();
    let file = std::env::temp_dir().join(format!("install-{}.yaml", crate::suffix()));
    std::fs::write(&file, docs.join("---\n")).unwrap();
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(cp.kubeconfig(cluster))
        .args(["apply", "--server-side", "--force-conflicts"])
        .args(["--field-manager=fleetmirror-test", "-f"])
        .arg(&file)
        .output()
        .expect("kubectl");
    std::fs::remove_file(&file).ok();
    assert!(
        out.status.success(),
        "kubectl apply deploy/install.yaml: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(cp.kubeconfig(cluster))
        .args(["wait", "--for=condition=Established", "crd", "--all"])
        .args(["--timeout=30s"])
        .output()
        .expect("kubectl");
    assert!(out.status.success(), "CRDs not established");
}

/// Where and as whom a pod runs.
#[derive(Debug)]
pub struct PodContext<'a> {
    /// The control plane.
    pub cp: &'a ControlPlane,
    /// The cluster of `cp`.
    pub cluster: usize,
    /// The pod's namespace (`metadata.namespace`).
    pub namespace: String,
    /// The pod's name (`metadata.name`; also the Pod object its tokens are bound to).
    pub pod_name: String,
    /// The node (`spec.nodeName`); its mount namespace is the host's for `hostPath` volumes.
    pub node: Option<&'a NodeSandbox>,
    /// The node name when there is no [`NodeSandbox`].
    pub node_name: String,
}

/// A running container of a rendered pod.
#[derive(Debug)]
pub struct PodProcess {
    /// The program's process (the sandbox helper execs it).
    pub process: Process,
    /// The container's ports by name.
    pub ports: BTreeMap<String, u16>,
    readiness: Option<(String, u16)>,
    dir: PathBuf,
}

fn port_of(container: &Container, port: &IntOrString) -> u16 {
    match port {
        IntOrString::Int(p) => u16::try_from(*p).expect("port"),
        IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name))
            .map(|p| u16::try_from(p.container_port).expect("port"))
            .unwrap_or_else(|| panic!("probe port {name:?} is not a container port")),
    }
}

fn write_file(path: &Path, content: &[u8]) {
    std::fs::write(path, content).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
}

impl PodProcess {
    /// Starts container 0 of `spec` in `ctx`. The Pod object its tokens are bound to is
    /// created first (on `ctx.node_name`), as the scheduler and kubelet would have.
    pub async fn start(ctx: &PodContext<'_>, spec: &PodSpec) -> PodProcess {
        let container = &spec.containers[0];
        let client = ctx.cp.client(ctx.cluster).await;
        let sa = spec
            .service_account_name
            .clone()
            .unwrap_or_else(|| "default".into());
        let node_name = ctx.node.map_or(ctx.node_name.clone(), |n| n.name.clone());
        // kubelet registered its Node before it ran any pod.
        crate::cluster::create_node(&client, &node_name).await;
        let pod = bound_pod(&client, &ctx.namespace, &ctx.pod_name, &sa, &node_name).await;

        let dir = std::env::temp_dir().join(format!("fleetmirror-pod-{}", crate::suffix()));
        std::fs::create_dir_all(dir.join("root")).unwrap();
        let kubeconfig = kube::config::Kubeconfig::read_from(ctx.cp.kubeconfig(ctx.cluster))
            .expect("kubeconfig");
        let cluster = kubeconfig.clusters[0].cluster.clone().expect("cluster");
        let api_port: u16 = cluster
            .server
            .as_deref()
            .and_then(|s| s.trim_end_matches('/').rsplit(':').next()?.parse().ok())
            .expect("API server port in the kubeconfig");

        // Environment: the template's, with downward-API fields resolved, plus kubelet's.
        let mut env = vec![
            ("PATH".to_owned(), IMAGE_PATH.to_owned()),
            ("HOSTNAME".to_owned(), ctx.pod_name.clone()),
        ];
        for e in container.env.iter().flatten() {
            let value = match (&e.value, &e.value_from) {
                (Some(v), None) => v.clone(),
                (None, None) => String::new(),
                (None, Some(from)) => {
                    let field = from
                        .field_ref
                        .as_ref()
                        .unwrap_or_else(|| panic!("env {}: only fieldRef is supported", e.name));
                    match field.field_path.as_str() {
                        "spec.nodeName" => node_name.clone(),
                        "metadata.namespace" => ctx.namespace.clone(),
                        "metadata.name" => ctx.pod_name.clone(),
                        "status.podIP" => "127.0.0.1".into(),
                        "spec.serviceAccountName" => sa.clone(),
                        other => panic!("env {}: fieldRef {other} is not supported", e.name),
                    }
                }
                (Some(_), Some(_)) => panic!("env {} has both value and valueFrom", e.name),
            };
            env.push((e.name.clone(), value));
        }
        assert!(
            container.env_from.is_none(),
            "envFrom is not supported here"
        );
        assert_eq!(
            spec.enable_service_links,
            Some(false),
            "service links would put FLEETMIRROR_AGGREGATOR_* variables into the flags' namespace"
        );
        env.extend([
            ("KUBERNETES_SERVICE_HOST".into(), "127.0.0.1".into()),
            ("KUBERNETES_SERVICE_PORT".into(), api_port.to_string()),
            ("KUBERNETES_SERVICE_PORT_HTTPS".into(), api_port.to_string()),
            (
                "KUBERNETES_PORT".into(),
                format!("tcp://127.0.0.1:{api_port}"),
            ),
        ]);

        // Volumes.
        let volumes: BTreeMap<&str, &PodVolume> = spec
            .volumes
            .iter()
            .flatten()
            .map(|v| (v.name.as_str(), v))
            .collect();
        let mut mounts = Vec::new();
        for (i, m) in container.volume_mounts.iter().flatten().enumerate() {
            let volume = volumes
                .get(m.name.as_str())
                .unwrap_or_else(|| panic!("volumeMount {} has no volume", m.name));
            let source = if let Some(hp) = &volume.host_path {
                let node = ctx
                    .node
                    .unwrap_or_else(|| panic!("hostPath {} needs a node sandbox", hp.path));
                let source = node.base.join(hp.path.trim_start_matches('/'));
                match hp.type_.as_deref() {
                    Some("DirectoryOrCreate") => std::fs::create_dir_all(&source).unwrap(),
                    Some("Directory") => assert!(
                        source.is_dir(),
                        "hostPath {} (type Directory) is missing on the node",
                        hp.path
                    ),
                    other => panic!("hostPath type {other:?} is not supported"),
                }
                source
            } else if let Some(projected) = &volume.projected {
                let dir = dir.join(format!("volume-{i}"));
                std::fs::create_dir_all(&dir).unwrap();
                for s in projected.sources.iter().flatten() {
                    let token = s.service_account_token.as_ref().unwrap_or_else(|| {
                        panic!("projected volume {}: only serviceAccountToken", m.name)
                    });
                    let t = crate::cluster::pod_token(
                        &client,
                        &pod,
                        token.audience.as_deref(),
                        token.expiration_seconds,
                    )
                    .await;
                    write_file(&dir.join(&token.path), t.as_bytes());
                }
                dir
            } else if let Some(secret) = &volume.secret {
                // As kubelet: the Secret's keys (or the listed items) as files.
                let name = secret.secret_name.as_deref().expect("secretName");
                let data = kube::Api::<k8s_openapi::api::core::v1::Secret>::namespaced(
                    client.clone(),
                    &ctx.namespace,
                )
                .get(name)
                .await
                .unwrap_or_else(|e| panic!("Secret {name} for volume {}: {e}", m.name))
                .data
                .unwrap_or_default();
                let dir = dir.join(format!("volume-{i}"));
                std::fs::create_dir_all(&dir).unwrap();
                let items: Vec<(String, String)> = match &secret.items {
                    Some(items) => items
                        .iter()
                        .map(|i| (i.key.clone(), i.path.clone()))
                        .collect(),
                    None => data.keys().map(|k| (k.clone(), k.clone())).collect(),
                };
                for (key, path) in items {
                    let value = data
                        .get(&key)
                        .unwrap_or_else(|| panic!("Secret {name} has no key {key}"));
                    write_file(&dir.join(path), &value.0);
                }
                dir
            } else if let Some(empty) = &volume.empty_dir {
                // As kubelet: a directory of the pod's own, bound in privately.
                assert!(
                    empty.medium.as_deref().is_none_or(str::is_empty),
                    "emptyDir medium {:?} is not supported here",
                    empty.medium
                );
                let dir = dir.join(format!("volume-{i}"));
                std::fs::create_dir_all(&dir).unwrap();
                dir
            } else {
                panic!(
                    "volume {}: only hostPath, projected, secret and emptyDir are supported",
                    m.name
                )
            };
            let propagation = match m.mount_propagation.as_deref() {
                None | Some("None") => Propagation::Private,
                Some("HostToContainer") => Propagation::HostToContainer,
                Some("Bidirectional") => Propagation::Bidirectional,
                Some(other) => panic!("mountPropagation {other}"),
            };
            mounts.push(Volume {
                source,
                path: PathBuf::from(&m.mount_path),
                read_only: m.read_only.unwrap_or(false),
                propagation,
            });
        }
        if spec.automount_service_account_token != Some(false) {
            let sa_dir = dir.join("serviceaccount");
            std::fs::create_dir_all(&sa_dir).unwrap();
            let token = crate::cluster::pod_token(&client, &pod, None, Some(3600)).await;
            write_file(&sa_dir.join("token"), token.as_bytes());
            write_file(&sa_dir.join("namespace"), ctx.namespace.as_bytes());
            let ca = std::fs::read(cluster.certificate_authority.as_deref().expect("CA file"))
                .expect("CA");
            write_file(&sa_dir.join("ca.crt"), &ca);
            mounts.push(Volume {
                source: sa_dir,
                path: "/var/run/secrets/kubernetes.io/serviceaccount".into(),
                read_only: true,
                propagation: Propagation::Private,
            });
        }

        // Security context: the container's overrides the pod's.
        let psc = spec.security_context.clone().unwrap_or_default();
        let csc = container.security_context.clone().unwrap_or_default();
        let uid = csc.run_as_user.or(psc.run_as_user);
        let gid = csc.run_as_group.or(psc.run_as_group);
        let privileged = csc.privileged.unwrap_or(false);
        if csc.run_as_non_root.or(psc.run_as_non_root) == Some(true) {
            assert!(
                uid.is_some_and(|u| u != 0),
                "runAsNonRoot needs a non-zero runAsUser"
            );
        }
        if let Some(caps) = &csc.capabilities {
            assert!(
                caps.add.as_ref().is_none_or(Vec::is_empty),
                "added capabilities are not supported here"
            );
        }
        assert!(
            privileged || uid.is_some_and(|u| u != 0),
            "an unprivileged container running as root is not supported here (capability drops)"
        );

        let program = container.command.as_ref().expect("command")[0].clone();
        let mut files = image_files(&binary(&program));
        files.extend(kubelet_files());
        let sandbox = SandboxSpec {
            node_pid: ctx.node.map(NodeSandbox::pid),
            root_dir: dir.join("root"),
            files,
            volumes: mounts,
            forward_ports: vec![api_port],
            uid: uid.map(|u| u32::try_from(u).unwrap()),
            gid: gid.map(|g| u32::try_from(g).unwrap()),
            no_new_privs: csc.allow_privilege_escalation == Some(false),
            read_only_root: csc.read_only_root_filesystem == Some(true),
            env,
            command: container
                .command
                .iter()
                .flatten()
                .chain(container.args.iter().flatten())
                .cloned()
                .collect(),
        };
        let spec_file = dir.join("spec.json");
        std::fs::write(&spec_file, serde_json::to_vec_pretty(&sandbox).unwrap()).unwrap();
        let process = Process::spawn(
            &format!("{} (as rendered)", container.name),
            &binary("pod-sandbox"),
            &[spec_file.display().to_string()],
            &[],
        );
        let ports = container
            .ports
            .iter()
            .flatten()
            .filter_map(|p| Some((p.name.clone()?, u16::try_from(p.container_port).ok()?)))
            .collect();
        let readiness = container
            .readiness_probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .map(|g| {
                (
                    g.path.clone().unwrap_or_else(|| "/".into()),
                    port_of(container, &g.port),
                )
            });
        PodProcess {
            process,
            ports,
            readiness,
            dir,
        }
    }

    /// A GET on the container's loopback.
    pub fn get(&self, port: u16, path: &str) -> std::io::Result<(u16, String)> {
        http_get_in(self.process.pid(), port, path)
    }

    /// Waits until the readiness probe of the template answers 200, or panics with the log.
    pub fn wait_ready(&mut self, timeout: Duration) {
        let (path, port) = self
            .readiness
            .clone()
            .expect("the template has an httpGet readiness probe");
        let start = Instant::now();
        loop {
            assert!(
                self.process.is_running(),
                "the container exited before it was ready; log:\n{}",
                self.process.log()
            );
            if matches!(self.get(port, &path), Ok((200, _))) {
                return;
            }
            assert!(
                start.elapsed() < timeout,
                "not ready within {timeout:?}; log:\n{}",
                self.process.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for PodProcess {
    fn drop(&mut self) {
        self.process.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The Pod object a container's tokens are bound to (kubelet's tokens always are).
async fn bound_pod(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    service_account: &str,
    node: &str,
) -> Pod {
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "nodeName": node,
            "serviceAccountName": service_account,
            "containers": [{"name": "main", "image": "registry.invalid/fleetmirror:0"}],
        }
    }))
    .unwrap();
    crate::footprint::create(client, &pod).await
}
