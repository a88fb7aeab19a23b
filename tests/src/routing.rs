//! A routing test's world on the shared control plane: a [`crate::mirror::Env`] (its own
//! namespaces `<id>-<name>`), its configs in `<id>-ops` (the aggregator reads only those, with
//! `--routing-config-namespaces`), the test-only VirtualService CRD (`tests/crds/`), and the two
//! judges of every VirtualService a test reads: Istio's published schema
//! (`validate-virtualservice`, installed by scripts/install-tools.sh; missing, the test fails)
//! and the first-match route evaluator of `fleetmirror_core::routing::evaluate`.

use std::io::Write as _;
use std::time::Duration;

use fleetmirror_proto::v1::diagnostics_client::DiagnosticsClient;
use fleetmirror_proto::v1::{ListRoutesRequest, ListRoutesResponse};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DeleteParams, Patch, PatchParams};
use serde_json::{Value, json};

use crate::eventually;
use crate::mirror::{Env, WAIT, ar, configmaps, services};
use crate::process::{Aggregator, AggregatorConfig};

/// VirtualServices of `version`.
pub fn virtual_services(version: &str) -> ApiResource {
    ar(
        "networking.istio.io",
        version,
        "VirtualService",
        "virtualservices",
    )
}

/// The test-only CRD variants.
#[derive(Debug, Clone, Copy)]
pub enum Crd {
    /// v1beta1 stored, v1 served (Istio >= 1.22).
    Both,
    /// v1beta1 only.
    V1beta1Only,
}

/// Installs (or replaces with) the CRD variant and waits until it is established and served.
pub async fn install_crd(client: &kube::Client, variant: Crd) {
    let file = match variant {
        Crd::Both => "virtualservice.yaml",
        Crd::V1beta1Only => "virtualservice-v1beta1.yaml",
    };
    let path = crate::repo_root().join("tests/crds").join(file);
    let crd: CustomResourceDefinition =
        serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let api = Api::<CustomResourceDefinition>::all(client.clone());
    api.patch(
        "virtualservices.networking.istio.io",
        &PatchParams::apply("fleetmirror-tests").force(),
        &Patch::Apply(&crd),
    )
    .await
    .unwrap_or_else(|e| panic!("applying {}: {e}", path.display()));
    let version = match variant {
        Crd::Both => "v1",
        Crd::V1beta1Only => "v1beta1",
    };
    eventually(WAIT, "the VirtualService CRD served", || async {
        client
            .list_api_group_resources(&format!("networking.istio.io/{version}"))
            .await
            .ok()
            .filter(|l| l.resources.iter().any(|r| r.name == "virtualservices"))
    })
    .await;
}

/// Removes the CRD (and every VirtualService with it).
pub async fn remove_crd(client: &kube::Client) {
    Api::<CustomResourceDefinition>::all(client.clone())
        .delete(
            "virtualservices.networking.istio.io",
            &DeleteParams::default(),
        )
        .await
        .unwrap();
}

/// Validates `objects` with Istio's published schema; panics naming each failure.
pub fn validate(objects: &[Value]) {
    let bin = crate::tools_bin().join("validate-virtualservice");
    let mut child = std::process::Command::new(&bin)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "running {} (scripts/install-tools.sh installs it): {e}",
                bin.display()
            )
        });
    {
        let mut stdin = child.stdin.take().unwrap();
        for o in objects {
            writeln!(stdin, "{o}").unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{} failed", bin.display());
    let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(lines.len(), objects.len(), "validator output: {lines:?}");
    for (o, l) in objects.iter().zip(&lines) {
        assert_eq!(
            l, "ok",
            "Istio's schema refuses {}: {l}",
            o["metadata"]["name"]
        );
    }
}

/// The destination of `request` through `vs` (the evaluator).
pub fn route(vs: &Value, request: &fleetmirror_core::routing::evaluate::Request) -> String {
    fleetmirror_core::routing::evaluate::destination(vs, request)
        .unwrap_or_else(|e| panic!("evaluating {}: {e}", vs["metadata"]["name"]))
        .unwrap_or_default()
}

/// The developer route names of a VirtualService's `http`, in order.
pub fn route_names(vs: &Value) -> Vec<String> {
    vs["spec"]["http"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| r["name"].as_str().unwrap_or("").to_owned())
        .collect()
}

/// One routing test's world.
#[derive(Debug)]
pub struct World {
    /// Namespaces, objects, Events.
    pub env: Env,
    /// The VirtualService version the cluster serves that tests read.
    pub version: &'static str,
}

impl World {
    /// A fresh world on cluster 0 with the CRD serving v1 and v1beta1, and its ops namespace.
    pub async fn new() -> World {
        let env = Env::new().await;
        install_crd(&env.client, Crd::Both).await;
        env.namespace("ops", &[]).await;
        World { env, version: "v1" }
    }

    /// `<id>-<name>`.
    pub fn ns(&self, name: &str) -> String {
        self.env.ns_name(name)
    }

    /// The aggregator flags of this world: routing only, leading alone, this world's configs.
    pub fn config(&self, extra: &[&str]) -> AggregatorConfig {
        let mut c = AggregatorConfig::new(&self.ns("home"));
        c.extra_args.extend([
            "--controllers=routing".into(),
            "--leader-elect=false".into(),
            format!("--routing-config-namespaces={}", self.ns("ops")),
        ]);
        c.extra_args.extend(extra.iter().map(|s| s.to_string()));
        c
    }

    /// Starts an aggregator.
    pub async fn start(&self, extra: &[&str]) -> Aggregator {
        self.env.start_with(self.config(extra)).await
    }

    /// Creates (or replaces the data of) routing ConfigMap `name` in `<id>-ops`.
    pub async fn config_map(&self, name: &str, config_yaml: &str) -> Value {
        let ns = self.ns("ops");
        match self.env.get(&configmaps(), &ns, name).await {
            None => {
                self.env
                    .create(
                        &configmaps(),
                        json!({"metadata": {"name": name, "namespace": ns, "labels": {"fleetmirror.io/routing": "true"}},
                               "data": {"config.yaml": config_yaml}}),
                    )
                    .await
            }
            Some(_) => {
                self.env
                    .patch(&configmaps(), &ns, name, json!({"data": {"config.yaml": config_yaml}}))
                    .await
            }
        }
    }

    /// Creates a ClusterIP Service `name` in `ns`.
    pub async fn service(&self, ns: &str, name: &str) -> Value {
        self.env
            .create(
                &services(),
                json!({"metadata": {"name": name, "namespace": ns}, "spec": {"ports": [{"port": 80}]}}),
            )
            .await
    }

    /// The VirtualService, validated by Istio's schema.
    pub async fn vs(&self, ns: &str, name: &str) -> Option<Value> {
        let o = self
            .env
            .get(&virtual_services(self.version), ns, name)
            .await?;
        validate(std::slice::from_ref(&o));
        Some(o)
    }

    /// Waits until VirtualService `ns/name` exists and satisfies `check`; returns it (validated).
    pub async fn wait_vs(
        &self,
        ns: &str,
        name: &str,
        what: &str,
        check: impl Fn(&Value) -> bool,
    ) -> Value {
        let ar = virtual_services(self.version);
        let o = eventually(
            WAIT,
            &format!("VirtualService {ns}/{name}: {what}"),
            || async { self.env.get(&ar, ns, name).await.filter(|o| check(o)) },
        )
        .await;
        validate(std::slice::from_ref(&o));
        o
    }

    /// Waits until VirtualService `ns/name` is gone.
    pub async fn wait_no_vs(&self, ns: &str, name: &str) {
        let ar = virtual_services(self.version);
        eventually(
            WAIT,
            &format!("VirtualService {ns}/{name} gone"),
            || async { self.env.get(&ar, ns, name).await.is_none().then_some(()) },
        )
        .await;
    }

    /// Waits until `ListRoutes` satisfies `check`.
    pub async fn wait_routes(
        &self,
        agg: &Aggregator,
        what: &str,
        check: impl Fn(&ListRoutesResponse) -> bool,
    ) -> ListRoutesResponse {
        eventually(WAIT, what, || async {
            let r = list_routes(agg, "", "").await;
            check(&r).then_some(r)
        })
        .await
    }
}

/// `ListRoutes` with filters.
pub async fn list_routes(agg: &Aggregator, namespace: &str, service: &str) -> ListRoutesResponse {
    DiagnosticsClient::new(crate::channel(&agg.grpc_url()).await)
        .list_routes(ListRoutesRequest {
            namespace: namespace.into(),
            service: service.into(),
        })
        .await
        .unwrap()
        .into_inner()
}

/// How long the tests wait for a condition at most.
pub const ROUTING_WAIT: Duration = WAIT;
