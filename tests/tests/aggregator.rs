//! The aggregator binary against a real control plane: gRPC reflection (tonic's client and
//! grpcurl), health, Diagnostics status codes, metrics, and Lease leader election with
//! failover.

use std::time::Duration;

use fleetmirror_proto::v1::agent_service_client::AgentServiceClient;
use fleetmirror_proto::v1::diagnostics_client::DiagnosticsClient;
use fleetmirror_proto::v1::node_report::Body;
use fleetmirror_proto::v1::{
    GetNodeRequest, GetVClusterRequest, ListNodesRequest, ListVClustersRequest, NodeReport,
    NodeSnapshot,
};
use fleetmirror_tests::cluster::{ControlPlane, agent_token, namespace};
use fleetmirror_tests::eventually;
use fleetmirror_tests::process::{Aggregator, AggregatorConfig, http_get};
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use tokio_stream::StreamExt;
use tonic::Code;

const WAIT: Duration = Duration::from_secs(30);

async fn lease_holder(client: &kube::Client, ns: &str) -> Option<String> {
    let lease = Api::<Lease>::namespaced(client.clone(), ns)
        .get_opt("fleetmirror-aggregator")
        .await
        .ok()??;
    lease.spec?.holder_identity.filter(|h| !h.is_empty())
}

/// Defines `$name(url)`: the services the reflection API of version `$v` (`v1`, `v1alpha`:
/// the same messages in two generated modules) lists.
macro_rules! reflection_services {
    ($name:ident, $v:ident) => {
        async fn $name(url: &str) -> Vec<String> {
            use tonic_reflection::pb::$v::ServerReflectionRequest;
            use tonic_reflection::pb::$v::server_reflection_client::ServerReflectionClient;
            use tonic_reflection::pb::$v::server_reflection_request::MessageRequest;
            use tonic_reflection::pb::$v::server_reflection_response::MessageResponse;
            let mut client = ServerReflectionClient::new(fleetmirror_tests::channel(url).await);
            let req = ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::ListServices(String::new())),
            };
            let mut resp = client
                .server_reflection_info(tokio_stream::iter([req]))
                .await
                .expect("reflection call")
                .into_inner();
            match resp
                .next()
                .await
                .expect("a response")
                .expect("ok")
                .message_response
            {
                Some(MessageResponse::ListServicesResponse(l)) => {
                    l.service.into_iter().map(|s| s.name).collect()
                }
                other => panic!("unexpected reflection response {other:?}"),
            }
        }
    };
}

reflection_services!(reflection_services_v1, v1);
reflection_services!(reflection_services_v1alpha, v1alpha);

fn grpcurl(args: &[&str]) -> (bool, String) {
    let bin = fleetmirror_tests::tools_bin().join("grpcurl");
    let out = std::process::Command::new(&bin)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "running {} (install it with scripts/install-tools.sh): {e}",
                bin.display()
            )
        });
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

const SERVICES: [&str; 3] = [
    "fleetmirror.v1.AgentService",
    "fleetmirror.v1.Diagnostics",
    "grpc.health.v1.Health",
];

#[tokio::test(flavor = "multi_thread")]
async fn serves_reflection_health_diagnostics_metrics_and_holds_the_lease() {
    let cp = ControlPlane::shared();
    let client = cp.client(0).await;
    let ns = namespace(&client, "agg").await;
    let agg = Aggregator::start(cp, 0, AggregatorConfig::new(&ns));
    let url = agg.grpc_url();

    // Reflection v1 and v1alpha, through tonic's reflection client.
    for services in [
        reflection_services_v1(&url).await,
        reflection_services_v1alpha(&url).await,
    ] {
        for want in SERVICES {
            assert!(
                services.iter().any(|s| s == want),
                "{want} missing from {services:?}"
            );
        }
    }

    // The same through grpcurl, with no .proto files.
    let target = format!("127.0.0.1:{}", agg.grpc_port);
    let (ok, out) = grpcurl(&["-plaintext", &target, "list"]);
    assert!(ok, "grpcurl list failed: {out}");
    for want in SERVICES {
        assert!(
            out.lines().any(|l| l.trim() == want),
            "grpcurl list lacks {want}:\n{out}"
        );
    }
    let (ok, out) = grpcurl(&[
        "-plaintext",
        "-d",
        "{}",
        &target,
        "fleetmirror.v1.Diagnostics/ListVClusters",
    ]);
    assert!(ok, "grpcurl ListVClusters failed: {out}");
    let (ok, out) = grpcurl(&[
        "-plaintext",
        "-d",
        r#"{"namespace":"nowhere","name":"nothing"}"#,
        &target,
        "fleetmirror.v1.Diagnostics/GetVCluster",
    ]);
    assert!(
        !ok && out.contains("NotFound"),
        "grpcurl GetVCluster of an unknown vCluster: {out}"
    );

    // Health.
    let mut health =
        tonic_health::pb::health_client::HealthClient::new(fleetmirror_tests::channel(&url).await);
    for service in [
        "",
        "fleetmirror.v1.Diagnostics",
        "fleetmirror.v1.AgentService",
    ] {
        let resp = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap_or_else(|s| panic!("health check of {service:?}: {s}"));
        assert_eq!(
            resp.into_inner().status(),
            tonic_health::pb::health_check_response::ServingStatus::Serving
        );
    }

    // Diagnostics status codes.
    let mut diag = DiagnosticsClient::connect(url.clone()).await.unwrap();
    let err = diag
        .get_v_cluster(GetVClusterRequest {
            namespace: ns.clone(),
            name: "no-such-vc".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err}");
    for (namespace, name) in [
        ("", "vc"),
        (ns.as_str(), ""),
        ("../etc", "vc"),
        (ns.as_str(), "Bad_Name"),
        (ns.as_str(), &"x".repeat(300)),
    ] {
        let err = diag
            .get_v_cluster(GetVClusterRequest {
                namespace: namespace.into(),
                name: name.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(
            err.code(),
            Code::InvalidArgument,
            "({namespace:?}, {name:?}): {err}"
        );
    }
    let err = diag
        .list_v_clusters(ListVClustersRequest {
            namespace: "Not/A/Namespace".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(
        diag.get_node(GetNodeRequest {
            name: String::new()
        })
        .await
        .unwrap_err()
        .code(),
        Code::InvalidArgument
    );
    assert_eq!(
        diag.get_node(GetNodeRequest {
            name: "no-such-node".into()
        })
        .await
        .unwrap_err()
        .code(),
        Code::NotFound
    );

    // Admin endpoints.
    assert_eq!(
        http_get(agg.admin_port, "/livez").unwrap(),
        (200, "ok".into())
    );
    assert_eq!(http_get(agg.admin_port, "/readyz").unwrap().0, 200);
    let (code, metrics) = http_get(agg.admin_port, "/metrics").unwrap();
    assert_eq!(code, 200);
    let samples: Vec<&str> = metrics
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .collect();
    assert!(!samples.is_empty());
    for line in &samples {
        assert!(
            line.starts_with("fleetmirror_"),
            "metric without the fleetmirror_ prefix: {line}"
        );
    }

    // The Lease is held by this aggregator, and its gauge says so.
    let holder = eventually(WAIT, "the aggregator holds the Lease", || async {
        lease_holder(&client, &ns).await
    })
    .await;
    assert_eq!(holder, agg.identity);
    eventually(WAIT, "leader gauge is 1", || async {
        (agg.metric("fleetmirror_aggregator_leader") == Some(1.0)).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn one_of_two_aggregators_leads_and_the_standby_takes_over_when_it_dies() {
    let cp = ControlPlane::shared();
    let client = cp.client(0).await;
    let ns = namespace(&client, "election").await;
    let a = Aggregator::start(cp, 0, AggregatorConfig::new(&ns));
    let b = Aggregator::start(cp, 0, AggregatorConfig::new(&ns));
    let mut aggs = [a, b];

    let holder = eventually(WAIT, "one aggregator holds the Lease", || async {
        lease_holder(&client, &ns).await
    })
    .await;
    let leader = aggs
        .iter()
        .position(|a| a.identity == holder)
        .expect("holder is one of ours");
    let standby = 1 - leader;
    eventually(WAIT, "exactly one leader gauge is 1", || async {
        let l = aggs[leader].metric("fleetmirror_aggregator_leader");
        let s = aggs[standby].metric("fleetmirror_aggregator_leader");
        (l == Some(1.0) && s == Some(0.0)).then_some(())
    })
    .await;

    // A standby refuses agent streams, so agents end up at the leader.
    let mut agent = AgentServiceClient::connect(aggs[standby].grpc_url())
        .await
        .unwrap();
    let err = agent
        .report(tokio_stream::iter(Vec::<NodeReport>::new()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err}");

    // An agent reports to the leader. The standby has no reports of its own: it forwards
    // what only the leader knows to the address on the Lease, so Diagnostics answers the same
    // on either replica (grpcurl through the Service may land on any).
    let token = agent_token(&client, &ns, "node-a", "fleetmirror-agent", true).await;
    let channel = fleetmirror_tests::channel(&aggs[leader].grpc_url()).await;
    let mut reporter =
        AgentServiceClient::with_interceptor(channel, move |mut req: tonic::Request<()>| {
            req.metadata_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
            Ok(req)
        });
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(NodeReport {
        node_name: "node-a".into(),
        agent_version: "test".into(),
        sequence: 1,
        body: Some(Body::Snapshot(NodeSnapshot::default())),
    })
    .await
    .unwrap();
    let _acks = reporter
        .report(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("the leader takes the report");
    let mut standby_diag = DiagnosticsClient::connect(aggs[standby].grpc_url())
        .await
        .unwrap();
    let nodes = eventually(
        WAIT,
        "the standby answers with the leader's nodes",
        || async {
            let nodes = standby_diag
                .clone()
                .list_nodes(ListNodesRequest::default())
                .await
                .ok()?
                .into_inner()
                .nodes;
            (!nodes.is_empty()).then_some(nodes)
        },
    )
    .await;
    assert_eq!(nodes[0].name, "node-a");
    standby_diag
        .list_v_clusters(ListVClustersRequest::default())
        .await
        .expect("forwarded");
    let err = standby_diag
        .get_node(GetNodeRequest {
            name: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Code::NotFound,
        "the leader's answer, passed on: {err}"
    );
    // Only the leader contacts target clusters and knows their results: a standby forwards
    // the integration calls (its own view is empty).
    fleetmirror_tests::cluster::install_crds(&client).await;
    kube::Api::<kube::api::DynamicObject>::namespaced_with(
        client.clone(),
        &ns,
        &fleetmirror_tests::integrations::integrations(),
    )
    .create(
        &Default::default(),
        &serde_json::from_value(serde_json::json!({
            "apiVersion": "fleetmirror.io/v1alpha1", "kind": "Integration",
            "metadata": {"name": "no-targets"}, "spec": {"type": "flux"}}))
        .unwrap(),
    )
    .await
    .unwrap();
    let detail = eventually(
        WAIT,
        "the standby answers with the leader's Integration",
        || async {
            standby_diag
                .clone()
                .get_integration(fleetmirror_proto::v1::GetIntegrationRequest {
                    namespace: ns.clone(),
                    name: "no-targets".into(),
                })
                .await
                .ok()
        },
    )
    .await
    .into_inner();
    assert_eq!(detail.integration.unwrap().phase, "Failed");
    // A call marked as forwarded is never forwarded again (no loops while leadership moves).
    let mut marked = tonic::Request::new(ListNodesRequest::default());
    marked
        .metadata_mut()
        .insert("fleetmirror-forwarded-by", "standby".parse().unwrap());
    let err = standby_diag.list_nodes(marked).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    drop(tx);

    // The leader crashes (no release): the standby takes over once the Lease expires.
    aggs[leader].process.kill();
    let new_holder = eventually(WAIT, "the standby takes the Lease", || async {
        lease_holder(&client, &ns)
            .await
            .filter(|h| *h == aggs[standby].identity)
    })
    .await;
    assert_eq!(new_holder, aggs[standby].identity);
    eventually(WAIT, "the new leader's gauge is 1", || async {
        (aggs[standby].metric("fleetmirror_aggregator_leader") == Some(1.0)).then_some(())
    })
    .await;
    standby_diag
        .list_nodes(ListNodesRequest::default())
        .await
        .expect("the new leader answers itself");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_leader_that_stops_gracefully_hands_over_without_waiting_for_expiry() {
    let cp = ControlPlane::shared();
    let client = cp.client(0).await;
    let ns = namespace(&client, "handover").await;
    // A Lease far longer than the test's patience: only a release lets the standby in.
    let long = |ns: &str| {
        let mut c = AggregatorConfig::new(ns);
        c.extra_args = vec![
            "--lease-duration=300s".into(),
            "--lease-retry-interval=500ms".into(),
        ];
        c
    };
    let mut first = Aggregator::start(cp, 0, long(&ns));
    eventually(WAIT, "the first aggregator leads", || async {
        lease_holder(&client, &ns)
            .await
            .filter(|h| *h == first.identity)
    })
    .await;
    let second = Aggregator::start(cp, 0, long(&ns));
    assert!(
        first.process.terminate().success(),
        "graceful exit: {}",
        first.process.log()
    );
    eventually(
        WAIT,
        "the second aggregator leads after the release",
        || async {
            lease_holder(&client, &ns)
                .await
                .filter(|h| *h == second.identity)
        },
    )
    .await;
}

/// The watch checks an aggregator registered on /readyz.
fn watch_checks(agg: &Aggregator) -> Vec<String> {
    let (_, body) = http_get(agg.admin_port, "/readyz?verbose").unwrap();
    body.lines()
        .filter_map(|l| l.strip_prefix("[+]watch-").or(l.strip_prefix("[-]watch-")))
        .map(|l| l.split(' ').next().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn controllers_select_what_runs() {
    let cp = ControlPlane::shared();
    let client = cp.client(0).await;
    let ns = namespace(&client, "controllers").await;

    // Health only: exactly its watches.
    let mut cfg = AggregatorConfig::new(&ns);
    cfg.extra_args.push("--controllers=health".into());
    let health = Aggregator::start(cp, 0, cfg);
    eventually(WAIT, "the health watches", || async {
        let w = watch_checks(&health);
        (w.len() == 7).then_some(w)
    })
    .await;
    assert_eq!(
        watch_checks(&health),
        [
            "deployments",
            "nodes",
            "services-app",
            "services-belongs-to",
            "services-managed-by",
            "statefulsets",
            "vclusterhealths"
        ]
    );

    // Mirror only: its own watches (namespaces, and per kind sources and mirrors), none of
    // health's; the health methods say health is not running, the mirror ones answer.
    let mut cfg = AggregatorConfig::new(&ns);
    cfg.extra_args.extend([
        "--controllers=mirror".into(),
        "--mirror-resource-types=ConfigMap.v1".into(),
    ]);
    let mirror = Aggregator::start(cp, 0, cfg);
    assert_eq!(
        watch_checks(&mirror),
        [
            "mirror-mirrors-ConfigMap.v1",
            "mirror-namespaces",
            "mirror-sources-ConfigMap.v1"
        ]
    );
    let mut d = DiagnosticsClient::new(fleetmirror_tests::channel(&mirror.grpc_url()).await);
    let e = d
        .list_v_clusters(ListVClustersRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(
        e.message().contains("--controllers=mirror"),
        "{}",
        e.message()
    );
    let e = DiagnosticsClient::new(fleetmirror_tests::channel(&health.grpc_url()).await)
        .list_mirrors(fleetmirror_proto::v1::ListMirrorsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");

    // Routing only: its watches (configs, namespaces, Services; the VirtualService watch only
    // once the API is served), ListRoutes answers, mirror's methods do not.
    let mut cfg = AggregatorConfig::new(&ns);
    cfg.extra_args.push("--controllers=routing".into());
    let routing = Aggregator::start(cp, 0, cfg);
    let checks = watch_checks(&routing);
    for w in [
        "routing-configmaps",
        "routing-namespaces",
        "routing-services",
    ] {
        assert!(checks.iter().any(|c| c == w), "{checks:?}");
    }
    assert!(
        !checks
            .iter()
            .any(|c| c.starts_with("mirror-") || c.starts_with("health-")),
        "{checks:?}"
    );
    let mut d = DiagnosticsClient::new(fleetmirror_tests::channel(&routing.grpc_url()).await);
    d.list_routes(fleetmirror_proto::v1::ListRoutesRequest::default())
        .await
        .expect("ListRoutes answers with routing selected");
    let e = d
        .list_mirrors(fleetmirror_proto::v1::ListMirrorsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    let e = DiagnosticsClient::new(fleetmirror_tests::channel(&mirror.grpc_url()).await)
        .list_routes(fleetmirror_proto::v1::ListRoutesRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");

    // Integrations only: its watches (Integrations, IntegrationTargets, Secret metadata), its
    // Diagnostics answer, routing's do not.
    // (Leading alone: a standby would forward to the health-only leader above.)
    let mut cfg = AggregatorConfig::new(&ns);
    cfg.extra_args.extend([
        "--controllers=integrations".into(),
        "--leader-elect=false".into(),
    ]);
    let integrations = Aggregator::start(cp, 0, cfg);
    assert_eq!(
        watch_checks(&integrations),
        [
            "integrations-integrations",
            "integrations-secrets",
            "integrations-targets"
        ]
    );
    let mut d = DiagnosticsClient::new(fleetmirror_tests::channel(&integrations.grpc_url()).await);
    d.list_integrations(fleetmirror_proto::v1::ListIntegrationsRequest::default())
        .await
        .expect("ListIntegrations answers with integrations selected");
    let e = d
        .list_routes(fleetmirror_proto::v1::ListRoutesRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    let e = DiagnosticsClient::new(fleetmirror_tests::channel(&routing.grpc_url()).await)
        .list_integrations(fleetmirror_proto::v1::ListIntegrationsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");

    // An unknown name refuses to start, saying which names exist.
    let mut p = fleetmirror_tests::process::Process::spawn(
        "aggregator-bad-controllers",
        &fleetmirror_tests::process::binary("fleetmirror-aggregator"),
        &[
            format!("--kubeconfig={}", cp.kubeconfig(0).display()),
            "--controllers=health,mirrors".into(),
        ],
        &[],
    );
    let status = p.wait_exit(Duration::from_secs(20)).expect("exits");
    assert!(!status.success());
    let log = p.log();
    assert!(
        log.contains("mirrors")
            && log.contains("[possible values: health, mirror, routing, integrations]"),
        "{log}"
    );
}
