//! The gRPC surface tenants cannot read: TLS on the gRPC port (agents verify the aggregator
//! with a CA bundle; standbys forward to the leader over TLS), and `--diagnostics-auth=token`
//! (TokenReview + SubjectAccessReview for `get` on `diagnostics.fleetmirror.io`).

use std::time::Duration;

use fleetmirror_proto::v1::ListNodesRequest;
use fleetmirror_proto::v1::diagnostics_client::DiagnosticsClient;
use fleetmirror_tests::cluster::{ControlPlane, namespace};
use fleetmirror_tests::node::NodeSandbox;
use fleetmirror_tests::process::{Agent, Aggregator, AggregatorConfig};
use fleetmirror_tests::tls::TestCerts;
use fleetmirror_tests::{eventually, suffix};
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::api::{Api, PostParams};
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

const WAIT: Duration = Duration::from_secs(30);

async fn leads(agg: &Aggregator) {
    eventually(WAIT, &format!("{} leads", agg.identity), || async {
        (agg.metric("fleetmirror_aggregator_leader") == Some(1.0)).then_some(())
    })
    .await;
}

/// A TLS channel to 127.0.0.1:`port` verifying the certificate for `name`.
async fn tls_channel(port: u16, certs: &TestCerts, name: &str) -> Channel {
    let ca = Certificate::from_pem(std::fs::read(&certs.ca).unwrap());
    Channel::from_shared(format!("https://127.0.0.1:{port}"))
        .unwrap()
        .tls_config(ClientTlsConfig::new().ca_certificate(ca).domain_name(name))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn agents_and_grpcurl_talk_tls_and_standbys_forward_over_it() {
    let cp = ControlPlane::shared();
    let client = cp.client(0).await;
    let ns = namespace(&client, "tls").await;
    let dir = std::env::temp_dir().join(format!("fleetmirror-tls-{}", suffix()));
    let service = format!("fleetmirror-aggregator.{ns}.svc");
    // As cert-manager would issue it: the Service's name only, no IP. Agents and standbys
    // dial addresses (here 127.0.0.1; the leader's pod IP from the Lease) and verify that name.
    let certs = TestCerts::make(&dir, &[&service], &[]);
    let tls_args = vec![
        format!("--grpc-tls-cert={}", certs.cert.display()),
        format!("--grpc-tls-key={}", certs.key.display()),
        format!("--grpc-tls-ca={}", certs.ca.display()),
    ];
    let mut cfg = AggregatorConfig::new(&ns);
    cfg.extra_args.extend(tls_args.clone());
    let leader = Aggregator::start(cp, 0, cfg);
    leads(&leader).await;
    let mut cfg = AggregatorConfig::new(&ns);
    cfg.extra_args.extend(tls_args);
    let standby = Aggregator::start(cp, 0, cfg);

    let node = NodeSandbox::new(&format!("node-{}", suffix()));
    node.issue_token(&client, &ns).await;
    let url = format!("https://127.0.0.1:{}", leader.grpc_port);
    let _agent = Agent::start(
        cp,
        0,
        &node,
        Some(&url),
        &[
            format!("--aggregator-ca={}", certs.ca.display()),
            format!("--aggregator-tls-server-name={service}"),
        ],
    );
    // The agent's report arrived over TLS; the standby forwards ListNodes to the leader over
    // TLS too (verifying the Service name in its certificate).
    for port in [leader.grpc_port, standby.grpc_port] {
        let channel = tls_channel(port, &certs, &service).await;
        eventually(WAIT, "the node, over TLS", || async {
            let nodes = DiagnosticsClient::new(channel.clone())
                .list_nodes(ListNodesRequest {})
                .await
                .ok()?
                .into_inner()
                .nodes;
            nodes.iter().any(|n| n.name == node.name).then_some(())
        })
        .await;
    }
    // Plaintext is refused; grpcurl with the CA works.
    let plain = Channel::from_shared(leader.grpc_url())
        .unwrap()
        .connect()
        .await;
    let refused = match plain {
        Err(_) => true,
        Ok(c) => DiagnosticsClient::new(c)
            .list_nodes(ListNodesRequest {})
            .await
            .is_err(),
    };
    assert!(refused, "a plaintext client is not served");
    let out = std::process::Command::new(fleetmirror_tests::tools_bin().join("grpcurl"))
        .arg("-cacert")
        .arg(&certs.ca)
        .args(["-servername", &service])
        .args([&format!("127.0.0.1:{}", leader.grpc_port), "list"])
        .output()
        .expect("grpcurl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("fleetmirror.v1.Diagnostics"),
        "grpcurl -cacert: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // An agent that trusts another CA does not report.
    let other = TestCerts::make(&dir.join("other"), &[&service], &[]);
    let node2 = NodeSandbox::new(&format!("node-{}", suffix()));
    node2.issue_token(&client, &ns).await;
    let agent2 = Agent::start(
        cp,
        0,
        &node2,
        Some(&url),
        &[
            format!("--aggregator-ca={}", other.ca.display()),
            format!("--aggregator-tls-server-name={service}"),
        ],
    );
    eventually(WAIT, "the untrusting agent's stream errors", || async {
        (agent2
            .metric("fleetmirror_agent_report_stream_errors_total")
            .unwrap_or(0.0)
            >= 1.0)
            .then_some(())
    })
    .await;
    assert_eq!(
        agent2.metric("fleetmirror_agent_report_connected"),
        Some(0.0)
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// A token of ServiceAccount `sa` for `audience` (`None`: the API server's).
/// `--diagnostics-token-audience`'s default.
const AUDIENCE: &str = "fleetmirror-diagnostics";

async fn token_for(client: &kube::Client, ns: &str, sa: &str, audience: Option<&str>) -> String {
    use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
    let sas = Api::<ServiceAccount>::namespaced(client.clone(), ns);
    let account: ServiceAccount =
        serde_json::from_value(serde_json::json!({"metadata": {"name": sa}})).unwrap();
    let _ = sas.create(&PostParams::default(), &account).await;
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: audience.into_iter().map(String::from).collect(),
            expiration_seconds: Some(3600),
            bound_object_ref: None,
        },
        ..Default::default()
    };
    sas.create_token_request(sa, &PostParams::default(), &request)
        .await
        .unwrap()
        .status
        .unwrap()
        .token
}

async fn list_nodes(url: &str, token: Option<&str>) -> Result<(), tonic::Status> {
    let mut request = tonic::Request::new(ListNodesRequest {});
    if let Some(t) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    DiagnosticsClient::new(fleetmirror_tests::channel(url).await)
        .list_nodes(request)
        .await
        .map(drop)
}

#[tokio::test(flavor = "multi_thread")]
async fn diagnostics_need_a_token_allowed_to_get_diagnostics() {
    let cp = ControlPlane::shared();
    let client = cp.client(0).await;
    let ns = namespace(&client, "diag-auth").await;
    let mut cfg = AggregatorConfig::new(&ns);
    cfg.extra_args.push("--diagnostics-auth=token".into());
    let leader = Aggregator::start(cp, 0, cfg.clone());
    leads(&leader).await;
    cfg.identity = format!("standby-{}", suffix());
    let standby = Aggregator::start(cp, 0, cfg);

    let no = list_nodes(&leader.grpc_url(), None).await.unwrap_err();
    assert_eq!(no.code(), Code::Unauthenticated, "{no:?}");
    let bad = list_nodes(&leader.grpc_url(), Some("made-up"))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::Unauthenticated, "{bad:?}");
    let stranger = token_for(&client, &ns, "stranger", Some(AUDIENCE)).await;
    let denied = list_nodes(&leader.grpc_url(), Some(&stranger))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert!(
        denied.message().contains("diagnostics.fleetmirror.io"),
        "{denied:?}"
    );

    // Allowed by RBAC: get on diagnostics in group fleetmirror.io.
    let name = format!("diag-reader-{}", suffix());
    let role: ClusterRole = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "rules": [{"apiGroups": ["fleetmirror.io"], "resources": ["diagnostics"], "verbs": ["get"]}],
    }))
    .unwrap();
    Api::<ClusterRole>::all(client.clone())
        .create(&PostParams::default(), &role)
        .await
        .unwrap();
    let binding: ClusterRoleBinding = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": ns}],
    }))
    .unwrap();
    Api::<ClusterRoleBinding>::all(client.clone())
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
    let reader = token_for(&client, &ns, "reader", Some(AUDIENCE)).await;
    eventually(WAIT, "the reader allowed", || async {
        list_nodes(&leader.grpc_url(), Some(&reader)).await.ok()
    })
    .await;
    // The same reader's token for the API server is not accepted: tokens handed to
    // fleetmirror are made for it (--diagnostics-token-audience).
    let for_api = token_for(&client, &ns, "reader", None).await;
    let wrong = list_nodes(&leader.grpc_url(), Some(&for_api))
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), Code::Unauthenticated, "{wrong:?}");
    assert!(wrong.message().contains("audience"), "{wrong:?}");
    // Through the standby, which forwards the caller's token to the leader.
    list_nodes(&standby.grpc_url(), Some(&reader))
        .await
        .unwrap();
    let no = list_nodes(&standby.grpc_url(), None).await.unwrap_err();
    assert_eq!(no.code(), Code::Unauthenticated);

    // Health stays open: it carries no tenant data.
    let mut health = tonic_health::pb::health_client::HealthClient::new(
        fleetmirror_tests::channel(&leader.grpc_url()).await,
    );
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
}
