//! An integrations test's world on the shared control plane: cluster 0 is the control cluster
//! (its namespace `<id>-ops` holds the test's Integrations, IntegrationTargets and Secrets; the
//! aggregator honours only it, with `--integration-namespaces`), cluster 1 (and cluster 0
//! itself) are targets reached over the loopback with a kubeconfig of inline data and the
//! token of `deploy/target-cluster-rbac.yaml`'s ServiceAccount — so every check runs with
//! exactly the RBAC users apply. Tool footprints live in the test's own namespaces on the
//! targets (`config.namespace`), with their status written as a controller would.

use std::time::Duration;

use base64::Engine as _;
use fleetmirror_proto::v1::diagnostics_client::DiagnosticsClient;
use fleetmirror_proto::v1::{GetIntegrationRequest, IntegrationDetail};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use crate::cluster::ControlPlane;
use crate::eventually;
use crate::mirror::ar;
use crate::process::{Aggregator, AggregatorConfig};

/// How long a test waits for the controller.
pub const WAIT: Duration = Duration::from_secs(40);

/// Integrations.
pub fn integrations() -> ApiResource {
    ar("fleetmirror.io", "v1alpha1", "Integration", "integrations")
}

/// IntegrationTargets.
pub fn targets() -> ApiResource {
    ar(
        "fleetmirror.io",
        "v1alpha1",
        "IntegrationTarget",
        "integrationtargets",
    )
}

/// One test's world.
pub struct World {
    /// The shared control plane.
    pub cp: &'static ControlPlane,
    /// Admin clients of cluster 0 and 1.
    pub clients: [kube::Client; 2],
    /// The prefix of every namespace (`i` + random).
    pub id: String,
    /// `<id>-ops` on cluster 0.
    pub ops: String,
}

impl std::fmt::Debug for World {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("World").field("id", &self.id).finish()
    }
}

/// Applies `deploy/target-cluster-rbac.yaml` on `client`'s cluster (idempotent).
pub async fn apply_target_rbac(client: &kube::Client) {
    let text = std::fs::read_to_string(crate::repo_root().join("deploy/target-cluster-rbac.yaml"))
        .unwrap();
    let discovery = kube::Discovery::new(client.clone()).run().await.unwrap();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let v: Value = serde_yaml::with::singleton_map_recursive::deserialize(doc).unwrap();
        let o: DynamicObject = serde_json::from_value(v).unwrap();
        let tm = o.types.clone().unwrap();
        let (group, version) = tm
            .api_version
            .split_once('/')
            .unwrap_or(("", tm.api_version.as_str()));
        let (ar, caps) = discovery
            .resolve_gvk(&kube::core::GroupVersionKind::gvk(group, version, &tm.kind))
            .unwrap_or_else(|| panic!("{} not served", tm.kind));
        let api: Api<DynamicObject> = match (&o.metadata.namespace, caps.scope) {
            (Some(ns), kube::discovery::Scope::Namespaced) => {
                Api::namespaced_with(client.clone(), ns, &ar)
            }
            _ => Api::all_with(client.clone(), &ar),
        };
        api.patch(
            o.metadata.name.as_deref().unwrap(),
            &PatchParams::apply("fleetmirror-tests").force(),
            &Patch::Apply(&o),
        )
        .await
        .unwrap_or_else(|e| panic!("applying {} from target-cluster-rbac.yaml: {e}", tm.kind));
    }
}

/// A kubeconfig for cluster `i` with inline CA data and `token` (what the policy accepts).
pub fn inline_kubeconfig(cp: &ControlPlane, i: usize, token: &str) -> String {
    let admin = kube::config::Kubeconfig::read_from(cp.kubeconfig(i)).expect("kubeconfig");
    let cluster = admin.clusters[0].cluster.clone().expect("cluster");
    let ca = std::fs::read(cluster.certificate_authority.expect("CA file")).unwrap();
    kubeconfig_text(
        &cluster.server.expect("server"),
        Some(&base64::engine::general_purpose::STANDARD.encode(ca)),
        &format!("token: {token}"),
    )
}

/// A one-context kubeconfig for `server` with `user` (YAML lines of the user).
pub fn kubeconfig_text(server: &str, ca_data: Option<&str>, user: &str) -> String {
    let ca = ca_data
        .map(|c| format!("\n    certificate-authority-data: {c}"))
        .unwrap_or_default();
    let user = user.replace('\n', "\n    ");
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {server}{ca}\nusers:\n- name: u\n  user:\n    {user}\ncontexts:\n- name: c\n  context:\n    cluster: c\n    user: u\ncurrent-context: c\n"
    )
}

/// Applies `object` (of kind `ar`, namespaced) on `client`'s cluster; returns what is stored.
pub async fn apply_on(client: &kube::Client, ar: &ApiResource, mut object: Value) -> Value {
    object["apiVersion"] = json!(ar.api_version);
    object["kind"] = json!(ar.kind);
    let ns = object["metadata"]["namespace"].as_str().unwrap().to_owned();
    let name = object["metadata"]["name"].as_str().unwrap().to_owned();
    let o = Api::<DynamicObject>::namespaced_with(client.clone(), &ns, ar)
        .patch(
            &name,
            &PatchParams::apply("fleetmirror-tests").force(),
            &Patch::Apply(&object),
        )
        .await
        .unwrap_or_else(|e| panic!("applying {} {ns}/{name}: {e}", ar.kind));
    serde_json::to_value(o).unwrap()
}

/// Writes `status` into an object (as its controller would).
pub async fn set_status_on(
    client: &kube::Client,
    ar: &ApiResource,
    ns: &str,
    name: &str,
    status: Value,
) {
    Api::<DynamicObject>::namespaced_with(client.clone(), ns, ar)
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": status })),
        )
        .await
        .unwrap_or_else(|e| panic!("status of {} {ns}/{name}: {e}", ar.kind));
}

impl World {
    /// A fresh world: `<id>-ops` on cluster 0, the reader RBAC on both clusters.
    pub async fn new() -> World {
        let cp = ControlPlane::shared();
        let clients = [cp.client(0).await, cp.client(1).await];
        crate::cluster::install_crds(&clients[0]).await;
        let id = format!("i{}", crate::suffix());
        let w = World {
            cp,
            ops: format!("{id}-ops"),
            clients,
            id,
        };
        w.namespace(0, "ops").await;
        w
    }

    /// Creates namespace `<id>-<name>` on cluster `i`; returns its name.
    pub async fn namespace(&self, i: usize, name: &str) -> String {
        let full = format!("{}-{name}", self.id);
        let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": full}})).unwrap();
        match Api::<Namespace>::all(self.clients[i].clone())
            .create(&PostParams::default(), &ns)
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => panic!("creating namespace {full}: {e}"),
        }
        full
    }

    /// `<id>-<name>`.
    pub fn ns(&self, name: &str) -> String {
        format!("{}-{name}", self.id)
    }

    /// A reader token of cluster `i` (target-cluster-rbac.yaml applied first).
    pub async fn reader_token(&self, i: usize) -> String {
        apply_target_rbac(&self.clients[i]).await;
        crate::cluster::service_account_token(
            &self.clients[i],
            "fleetmirror-system",
            "fleetmirror-reader",
        )
        .await
    }

    /// A token of a ServiceAccount without any RBAC on cluster `i`.
    pub async fn powerless_token(&self, i: usize) -> String {
        let ns = self.namespace(i, "nobody").await;
        crate::cluster::service_account_token(&self.clients[i], &ns, "nobody").await
    }

    /// The aggregator: the integrations controller only, leading alone, honouring `<id>-ops`.
    pub fn start(&self, extra: &[&str]) -> Aggregator {
        let mut c = AggregatorConfig::new(&self.ops);
        c.extra_args.extend([
            "--controllers=integrations".into(),
            "--leader-elect=false".into(),
            format!("--integration-namespaces={}", self.ops),
        ]);
        c.extra_args.extend(extra.iter().map(|s| s.to_string()));
        Aggregator::start(self.cp, 0, c)
    }

    fn api(&self, i: usize, ar: &ApiResource, ns: &str) -> Api<DynamicObject> {
        Api::namespaced_with(self.clients[i].clone(), ns, ar)
    }

    /// Applies `object` (its namespace, or `<id>-ops`) on cluster `i`.
    pub async fn apply(&self, i: usize, ar: &ApiResource, mut object: Value) -> Value {
        if object["metadata"]["namespace"].is_null() {
            object["metadata"]["namespace"] = json!(self.ops);
        }
        apply_on(&self.clients[i], ar, object).await
    }

    /// Deletes an object of cluster `i` (absent is fine).
    pub async fn delete(&self, i: usize, ar: &ApiResource, ns: &str, name: &str) {
        match self.api(i, ar, ns).delete(name, &Default::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => panic!("deleting {} {ns}/{name}: {e}", ar.kind),
        }
    }

    /// The Secret `name` in `<id>-ops` holding `kubeconfig` under `key`.
    pub async fn secret(&self, name: &str, key: &str, kubeconfig: &str) {
        let data = base64::engine::general_purpose::STANDARD.encode(kubeconfig);
        self.apply(
            0,
            &ar("", "v1", "Secret", "secrets"),
            json!({"metadata": {"name": name}, "data": {key: data}}),
        )
        .await;
    }

    /// An IntegrationTarget `name` for clusterName `cluster` (default Secret) with `labels`.
    pub async fn target(&self, name: &str, cluster: &str, labels: Value) {
        self.apply(
            0,
            &targets(),
            json!({"metadata": {"name": name}, "spec": {"clusterName": cluster, "labels": labels}}),
        )
        .await;
    }

    /// A ready target `name` (clusterName the same) on cluster `i` with the reader token.
    pub async fn ready_target(&self, name: &str, i: usize, labels: Value) {
        let token = self.reader_token(i).await;
        self.secret(
            &format!("{name}-kubeconfig"),
            "kubeconfig",
            &inline_kubeconfig(self.cp, i, &token),
        )
        .await;
        self.target(name, name, labels).await;
    }

    /// An Integration `name` with `spec`.
    pub async fn integration(&self, name: &str, spec: Value) -> Value {
        self.apply(
            0,
            &integrations(),
            json!({"metadata": {"name": name}, "spec": spec}),
        )
        .await
    }

    /// The object `name` of `ar` in `<id>-ops` (cluster 0).
    pub async fn get(&self, ar: &ApiResource, name: &str) -> Option<Value> {
        self.api(0, ar, &self.ops)
            .get_opt(name)
            .await
            .unwrap()
            .map(|o| serde_json::to_value(o).unwrap())
    }

    /// Waits until `check` holds for the object's `status`; returns the object.
    pub async fn wait(
        &self,
        ar: &ApiResource,
        name: &str,
        what: &str,
        check: impl Fn(&Value) -> bool,
    ) -> Value {
        let last = std::sync::Mutex::new(Value::Null);
        let r = tokio::time::timeout(
            WAIT,
            eventually(WAIT + Duration::from_secs(5), what, || async {
                let o = self.get(ar, name).await?;
                *last.lock().unwrap() = o["status"].clone();
                check(&o["status"]).then_some(o)
            }),
        )
        .await;
        r.unwrap_or_else(|_| {
            panic!(
                "{what}: {} {name} status is {:#}",
                ar.kind,
                last.lock().unwrap()
            )
        })
    }

    /// Reasons of the Events about `name` (Integration or target) in `<id>-ops`.
    pub async fn event_reasons(&self, name: &str) -> Vec<String> {
        let events = Api::<k8s_openapi::api::events::v1::Event>::namespaced(
            self.clients[0].clone(),
            &self.ops,
        )
        .list(&Default::default())
        .await
        .unwrap();
        events
            .items
            .iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
            .filter_map(|e| e.reason.clone())
            .collect()
    }

    /// Waits until every reason in `want` is among the Events about `name` (an Event is posted
    /// after the status write of the same step, so one read right after the status can miss
    /// it); panics naming the reasons seen.
    pub async fn expect_events(&self, name: &str, want: &[&str]) {
        let start = std::time::Instant::now();
        loop {
            let seen =
                tokio::time::timeout(std::time::Duration::from_secs(10), self.event_reasons(name))
                    .await
                    .unwrap_or_default();
            if want.iter().all(|w| seen.iter().any(|r| r == w)) {
                return;
            }
            assert!(
                start.elapsed() < WAIT,
                "Events about {name}: {want:?} expected, {seen:?} seen"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// Diagnostics `GetIntegration`.
    pub async fn get_integration(
        &self,
        agg: &Aggregator,
        name: &str,
    ) -> Result<IntegrationDetail, tonic::Status> {
        DiagnosticsClient::new(crate::channel(&agg.grpc_url()).await)
            .get_integration(GetIntegrationRequest {
                namespace: self.ops.clone(),
                name: name.into(),
            })
            .await
            .map(tonic::Response::into_inner)
    }
}

/// A Deployment `name` in `ns` with `replicas` of which `available` are available, settled.
pub async fn deployment(
    client: &kube::Client,
    ns: &str,
    name: &str,
    labels: Value,
    replicas: i64,
    available: i64,
) {
    let deploy = ar("apps", "v1", "Deployment", "deployments");
    let selector = json!({"app": name});
    let mut pod_labels = labels.clone();
    pod_labels["app"] = json!(name);
    let o = apply_on(
            client,
            &deploy,
            json!({"metadata": {"name": name, "namespace": ns, "labels": labels},
                   "spec": {"replicas": replicas, "selector": {"matchLabels": selector},
                            "template": {"metadata": {"labels": pod_labels},
                                         "spec": {"containers": [{"name": "c", "image": "example.invalid/c"}]}}}}),
        )
        .await;
    let generation = o["metadata"]["generation"].as_i64().unwrap();
    set_status_on(
        client,
        &deploy,
        ns,
        name,
        json!({"observedGeneration": generation, "replicas": replicas, "updatedReplicas": replicas,
               "readyReplicas": available, "availableReplicas": available}),
    )
    .await;
}

/// A StatefulSet like [`deployment`] (readyReplicas, as a 1.20 server reports).
pub async fn statefulset(client: &kube::Client, ns: &str, name: &str, replicas: i64, ready: i64) {
    let sts = ar("apps", "v1", "StatefulSet", "statefulsets");
    let o = apply_on(
            client,
            &sts,
            json!({"metadata": {"name": name, "namespace": ns},
                   "spec": {"replicas": replicas, "serviceName": name, "selector": {"matchLabels": {"app": name}},
                            "template": {"metadata": {"labels": {"app": name}},
                                         "spec": {"containers": [{"name": "c", "image": "example.invalid/c"}]}}}}),
        )
        .await;
    let generation = o["metadata"]["generation"].as_i64().unwrap();
    set_status_on(
        client,
        &sts,
        ns,
        name,
        json!({"observedGeneration": generation, "replicas": replicas, "updatedReplicas": replicas,
               "currentReplicas": replicas, "readyReplicas": ready}),
    )
    .await;
}

/// Endpoints `argocd-server` in `ns`, ready or not.
pub async fn argocd_endpoints(client: &kube::Client, ns: &str, ready: bool) {
    let key = if ready {
        "addresses"
    } else {
        "notReadyAddresses"
    };
    apply_on(
        client,
        &ar("", "v1", "Endpoints", "endpoints"),
        json!({"metadata": {"name": "argocd-server", "namespace": ns},
               "subsets": [{key: [{"ip": "10.1.2.3"}], "ports": [{"port": 8080}]}]}),
    )
    .await;
}

/// Argo CD's footprint in `ns` of cluster `i`: every required component healthy.
pub async fn argocd(client: &kube::Client, ns: &str) {
    for d in ["argocd-server", "argocd-repo-server", "argocd-redis"] {
        deployment(client, ns, d, json!({}), 1, 1).await;
    }
    statefulset(client, ns, "argocd-application-controller", 1, 1).await;
    argocd_endpoints(client, ns, true).await;
}

/// The cluster entries of a status: (name, state, reason, message).
pub fn clusters(status: &Value) -> Vec<(String, String, String, String)> {
    status["clusterStatuses"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            let s = |k: &str| c[k].as_str().unwrap_or("").to_owned();
            (s("name"), s("state"), s("reason"), s("message"))
        })
        .collect()
}

/// The `Ready` condition's (status, reason, message).
pub fn ready(status: &Value) -> (String, String, String) {
    status["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Ready")
        .map(|c| {
            let s = |k: &str| c[k].as_str().unwrap_or("").to_owned();
            (s("status"), s("reason"), s("message"))
        })
        .unwrap_or_default()
}

/// Installs the test-only Prometheus operator CRDs (`tests/crds/prometheus-operator.yaml`) on
/// `client`'s cluster and waits until `prometheuses` is served.
pub async fn install_prometheus_crds(client: &kube::Client) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let path = crate::repo_root().join("tests/crds/prometheus-operator.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let api = Api::<CustomResourceDefinition>::all(client.clone());
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let crd: CustomResourceDefinition = serde::Deserialize::deserialize(doc).unwrap();
        let name = crd.metadata.name.clone().unwrap();
        api.patch(
            &name,
            &PatchParams::apply("fleetmirror-tests").force(),
            &Patch::Apply(&crd),
        )
        .await
        .unwrap_or_else(|e| panic!("applying {name}: {e}"));
    }
    eventually(WAIT, "the Prometheus operator's API served", || async {
        client
            .list_api_group_resources("monitoring.coreos.com/v1")
            .await
            .ok()
            .filter(|l| {
                ["prometheuses", "alertmanagers"]
                    .iter()
                    .all(|r| l.resources.iter().any(|x| x.name == *r))
            })
    })
    .await;
}

/// A `Prometheus` (or `Alertmanager`, per `ar`) `name` in `ns` whose `Available` condition is
/// `available`.
pub async fn monitoring_resource(
    client: &kube::Client,
    ar: &ApiResource,
    ns: &str,
    name: &str,
    available: &str,
) {
    apply_on(
        client,
        ar,
        json!({"metadata": {"name": name, "namespace": ns}, "spec": {"replicas": 2}}),
    )
    .await;
    set_status_on(
        client,
        ar,
        ns,
        name,
        json!({"replicas": 2, "availableReplicas": if available == "True" { 2 } else { 0 },
               "conditions": [{"type": "Available", "status": available, "reason": "Test",
                               "message": if available == "True" { "" } else { "0/2 pods ready" }}]}),
    )
    .await;
}
