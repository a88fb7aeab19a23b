//! The agent binary against the aggregator binary: it reports its node, reconnects by itself
//! after the aggregator restarts, keeps only CAP_SYS_ADMIN, and fails fast on bad startup
//! input. Plus the Report protocol against the real aggregator, including hostile streams.

use std::time::Duration;

use fleetmirror_proto::v1::agent_service_client::AgentServiceClient;
use fleetmirror_proto::v1::diagnostics_client::DiagnosticsClient;
use fleetmirror_proto::v1::{
    GetNodeRequest, ListNodesRequest, NodeDelta, NodeReport, NodeSnapshot, node_report::Body,
};
use fleetmirror_tests::cluster::{ControlPlane, namespace};
use fleetmirror_tests::eventually;
use fleetmirror_tests::node::NodeSandbox;
use fleetmirror_tests::process::{Agent, Aggregator, AggregatorConfig, Process, binary};
use tokio_stream::StreamExt;
use tonic::Code;

const WAIT: Duration = Duration::from_secs(30);

async fn node_connected(url: &str, node: &str) -> Option<()> {
    let mut diag = DiagnosticsClient::connect(url.to_owned()).await.ok()?;
    let nodes = diag
        .list_nodes(ListNodesRequest {})
        .await
        .ok()?
        .into_inner()
        .nodes;
    nodes
        .iter()
        .any(|n| n.name == node && n.connected && !n.stale)
        .then_some(())
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_reports_its_node_and_reconnects_after_the_aggregator_restarts() {
    let cp = ControlPlane::shared();
    let client = cp.client(0).await;
    let ns = namespace(&client, "agent").await;
    let mut config = AggregatorConfig::new(&ns);
    let mut agg = Aggregator::start(cp, 0, config.clone());
    let sandbox = NodeSandbox::new(&format!("node-{}", fleetmirror_tests::suffix()));
    let node = sandbox.name.clone();
    sandbox.issue_token(&client, &ns).await;
    let agent = Agent::start(cp, 0, &sandbox, Some(&agg.grpc_url()), &[]);

    let url = agg.grpc_url();
    eventually(WAIT, "the node appears in ListNodes", || {
        node_connected(&url, &node)
    })
    .await;
    let mut diag = DiagnosticsClient::connect(agg.grpc_url()).await.unwrap();
    let detail = diag
        .get_node(GetNodeRequest { name: node.clone() })
        .await
        .unwrap()
        .into_inner();
    let summary = detail.summary.unwrap();
    assert_eq!(summary.agent_version, env!("CARGO_PKG_VERSION"));
    assert!(summary.last_report.is_some());

    // The aggregator crashes and comes back on the same port: the agent reconnects by itself
    // and sends a fresh snapshot to the new process, which knew nothing of the node.
    agg.process.kill();
    config.grpc_port = Some(agg.grpc_port);
    let agg = Aggregator::start(cp, 0, config);
    let url = agg.grpc_url();
    eventually(
        WAIT,
        "the node reappears after the aggregator restart",
        || node_connected(&url, &node),
    )
    .await;
    assert!(
        agent
            .metric("fleetmirror_agent_report_reconnects_total")
            .unwrap_or(0.0)
            >= 1.0
    );
    // The gauge is set when the stream's response arrives, a moment after the snapshot landed.
    eventually(WAIT, "the agent's connected gauge", || async {
        (agent.metric("fleetmirror_agent_report_connected") == Some(1.0)).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_that_reaches_a_standby_is_sent_to_the_leader() {
    let cp = ControlPlane::shared();
    let client = cp.client(0).await;
    let ns = namespace(&client, "redirect").await;
    let leader = Aggregator::start(cp, 0, AggregatorConfig::new(&ns));
    eventually(WAIT, "the first aggregator leads", || async {
        (leader.metric("fleetmirror_aggregator_leader") == Some(1.0)).then_some(())
    })
    .await;
    let standby = Aggregator::start(cp, 0, AggregatorConfig::new(&ns));
    eventually(WAIT, "the second one stands by", || async {
        (standby.metric("fleetmirror_aggregator_leader") == Some(0.0)).then_some(())
    })
    .await;
    // The agent knows only the standby's address (as if the Service had picked it).
    let sandbox = NodeSandbox::new(&format!("node-{}", fleetmirror_tests::suffix()));
    sandbox.issue_token(&client, &ns).await;
    let agent = Agent::start(cp, 0, &sandbox, Some(&standby.grpc_url()), &[]);
    let url = leader.grpc_url();
    eventually(WAIT, "the node reports to the leader", || {
        node_connected(&url, &sandbox.name)
    })
    .await;
    let log = agent.process.log();
    assert!(log.contains("connecting to the leader"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_silent_agent_turns_its_node_stale() {
    let cp = ControlPlane::shared();
    let client = cp.client(0).await;
    let ns = namespace(&client, "stale").await;
    let mut config = AggregatorConfig::new(&ns);
    config.extra_args.push("--agent-stale-after=2s".into());
    let agg = Aggregator::start(cp, 0, config);
    let sandbox = NodeSandbox::new(&format!("node-{}", fleetmirror_tests::suffix()));
    sandbox.issue_token(&client, &ns).await;
    let mut agent = Agent::start(cp, 0, &sandbox, Some(&agg.grpc_url()), &[]);
    let url = agg.grpc_url();
    eventually(WAIT, "the node reports", || {
        node_connected(&url, &sandbox.name)
    })
    .await;
    // Heartbeats (every 1 s here) keep a quiet node fresh past the grace period.
    tokio::time::sleep(Duration::from_secs(3)).await;
    node_connected(&url, &sandbox.name)
        .await
        .expect("still fresh thanks to heartbeats");

    agent.process.kill();
    let diag = DiagnosticsClient::connect(url.clone()).await.unwrap();
    let summary = eventually(WAIT, "the node is stale", || {
        let mut diag = diag.clone();
        let name = sandbox.name.clone();
        async move {
            let s = diag
                .get_node(GetNodeRequest { name })
                .await
                .ok()?
                .into_inner()
                .summary?;
            s.stale.then_some(s)
        }
    })
    .await;
    assert!(!summary.connected, "{summary:?}");
}

#[test]
fn agent_keeps_only_cap_sys_admin() {
    let sandbox = NodeSandbox::new(&format!("node-{}", fleetmirror_tests::suffix()));
    let agent = Agent::start(ControlPlane::shared(), 0, &sandbox, None, &[]);
    let status = std::fs::read_to_string(format!("/proc/{}/status", agent.process.pid())).unwrap();
    let caps = |key: &str| {
        let line = status
            .lines()
            .find(|l| l.starts_with(key))
            .unwrap_or_else(|| panic!("{key} in status"));
        u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap()
    };
    const CAP_SYS_ADMIN: u64 = 1 << 21;
    assert_eq!(caps("CapEff:"), CAP_SYS_ADMIN, "effective set");
    assert_eq!(caps("CapPrm:"), CAP_SYS_ADMIN, "permitted set");
    assert_eq!(caps("CapInh:"), 0, "inheritable set");
    assert_eq!(caps("CapBnd:"), CAP_SYS_ADMIN, "bounding set");
}

fn run_to_exit(args: &[&str], via_setpriv_without_sys_admin: bool) -> (bool, String) {
    let agent = binary("fleetmirror-agent");
    let mut p = if via_setpriv_without_sys_admin {
        let mut all = vec![
            "--bounding-set=-sys_admin".to_owned(),
            "--inh-caps=-all".into(),
            agent.display().to_string(),
        ];
        all.extend(args.iter().map(|a| a.to_string()));
        Process::spawn(
            "agent-setpriv",
            std::path::Path::new("/usr/bin/setpriv"),
            &all,
            &[],
        )
    } else {
        Process::spawn(
            "agent-bad-args",
            &agent,
            &args.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            &[],
        )
    };
    let status = p
        .wait_exit(Duration::from_secs(20))
        .unwrap_or_else(|| panic!("agent {args:?} did not exit; log:\n{}", p.log()));
    (status.success(), p.log())
}

#[test]
fn agent_fails_fast_with_a_clear_message() {
    let (ok, log) = run_to_exit(&[], false);
    assert!(
        !ok && log.contains("--node-name"),
        "missing node name: {log}"
    );
    for bad in ["", "../../etc", "Node_1"] {
        let (ok, log) = run_to_exit(&["--node-name", bad], false);
        assert!(
            !ok && log.contains("--node-name"),
            "node name {bad:?}: {log}"
        );
    }
    let (ok, log) = run_to_exit(&["--node-name", "n1", "--mount-layout", "symlinks"], false);
    assert!(!ok && log.contains("mount-layout"), "bad layout: {log}");
    let (ok, log) = run_to_exit(&["--node-name", "n1", "--admin-addr", "127.0.0.1:0"], true);
    assert!(
        !ok && log.contains("CAP_SYS_ADMIN is missing"),
        "without CAP_SYS_ADMIN: {log}"
    );
}

/// A typo in the node name must not make the agent take every mount for garbage: a node that
/// does not exist refuses to start, naming it (with the right name it mounts: every other
/// agent test starts agents on registered nodes).
#[test]
fn an_agent_for_a_node_that_does_not_exist_refuses_to_start() {
    let cp = ControlPlane::shared();
    let sandbox = NodeSandbox::new(&format!("node-{}", fleetmirror_tests::suffix()));
    let missing = format!("no-such-node-{}", fleetmirror_tests::suffix());
    let mut args: Vec<String> = sandbox
        .agent_args()
        .into_iter()
        .filter(|a| !a.starts_with("--node-name"))
        .collect();
    args.extend([
        format!("--node-name={missing}"),
        format!("--kubeconfig={}", cp.kubeconfig(0).display()),
        "--admin-addr=127.0.0.1:0".into(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, log) = run_to_exit(&args, false);
    assert!(
        !ok && log.contains(&format!("node {missing:?} does not exist")),
        "{log}"
    );
    assert!(
        sandbox
            .mounts()
            .entries()
            .iter()
            .all(|e| !e.mount_point.starts_with(&sandbox.loft_root)),
        "nothing was touched"
    );
}

fn snapshot(node: &str, seq: u64) -> NodeReport {
    NodeReport {
        node_name: node.into(),
        agent_version: "test".into(),
        sequence: seq,
        body: Some(Body::Snapshot(NodeSnapshot::default())),
    }
}

fn delta(node: &str, seq: u64) -> NodeReport {
    NodeReport {
        node_name: node.into(),
        agent_version: "test".into(),
        sequence: seq,
        body: Some(Body::Delta(NodeDelta::default())),
    }
}

type Interceptor =
    Box<dyn FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Send>;
type AuthedClient = AgentServiceClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Interceptor>,
>;

async fn client_with_token(url: &str, token: Option<String>) -> AuthedClient {
    let channel = fleetmirror_tests::channel(url).await;
    let interceptor: Interceptor = Box::new(move |mut req: tonic::Request<()>| {
        if let Some(t) = &token {
            req.metadata_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        Ok(req)
    });
    AgentServiceClient::with_interceptor(channel, interceptor)
}

#[tokio::test(flavor = "multi_thread")]
async fn report_protocol_asks_for_resync_and_refuses_hostile_streams() {
    let cp = ControlPlane::shared();
    let client = cp.client(0).await;
    let ns = namespace(&client, "protocol").await;
    let agg = Aggregator::start(cp, 0, AggregatorConfig::new(&ns));
    let url = agg.grpc_url();
    eventually(WAIT, "leadership", || async {
        (agg.metric("fleetmirror_aggregator_leader") == Some(1.0)).then_some(())
    })
    .await;
    let token =
        fleetmirror_tests::cluster::agent_token(&client, &ns, "n-proto", "fleetmirror-agent", true)
            .await;
    let mut c = client_with_token(&url, Some(token)).await;

    // A delta before any snapshot, then a gap: both answered with resync_required.
    let msgs = vec![
        delta("n-proto", 1),
        snapshot("n-proto", 1),
        delta("n-proto", 2),
        delta("n-proto", 5),
    ];
    let acks: Vec<_> = c
        .report(tokio_stream::iter(msgs))
        .await
        .unwrap()
        .into_inner()
        .collect::<Vec<_>>()
        .await;
    let flags: Vec<bool> = acks
        .iter()
        .map(|a| a.as_ref().expect("ack").resync_required)
        .collect();
    assert_eq!(flags, [true, false, false, true]);

    // A stream may report only for the node its agent pod runs on: PERMISSION_DENIED, stream ends.
    for other in ["n-other", "", &"x".repeat(1000)] {
        let msgs = vec![snapshot("n-proto", 1), snapshot(other, 2)];
        let mut acks = c
            .report(tokio_stream::iter(msgs))
            .await
            .unwrap()
            .into_inner();
        assert!(!acks.next().await.unwrap().unwrap().resync_required);
        assert_eq!(
            acks.next().await.unwrap().unwrap_err().code(),
            Code::PermissionDenied,
            "report for {other:?}"
        );
    }
    let names = fleetmirror_tests::node_names(&url).await;
    assert_eq!(names, ["n-proto"], "nothing hostile was recorded");
    assert!(agg.metric("fleetmirror_aggregator_resyncs_total").unwrap() >= 2.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn only_agent_tokens_bound_to_a_pod_may_report_and_refusals_are_counted() {
    let cp = ControlPlane::shared();
    let client = cp.client(0).await;
    let ns = namespace(&client, "auth").await;
    let agg = Aggregator::start(cp, 0, AggregatorConfig::new(&ns));
    let url = agg.grpc_url();
    eventually(WAIT, "leadership", || async {
        (agg.metric("fleetmirror_aggregator_leader") == Some(1.0)).then_some(())
    })
    .await;

    let cases = [
        ("no token", None, Code::Unauthenticated),
        (
            "a garbage token",
            Some("not-a-jwt".to_owned()),
            Code::Unauthenticated,
        ),
        (
            "another ServiceAccount's token",
            Some(
                fleetmirror_tests::cluster::agent_token(
                    &client,
                    &ns,
                    "n-auth",
                    "someone-else",
                    true,
                )
                .await,
            ),
            Code::PermissionDenied,
        ),
        (
            "an agent token bound to no pod",
            Some(
                fleetmirror_tests::cluster::agent_token(
                    &client,
                    &ns,
                    "n-auth",
                    "fleetmirror-agent",
                    false,
                )
                .await,
            ),
            Code::PermissionDenied,
        ),
    ];
    for (what, token, code) in cases {
        let mut c = client_with_token(&url, token).await;
        let err = match c
            .report(tokio_stream::iter(vec![snapshot("n-auth", 1)]))
            .await
        {
            Err(status) => status,
            Ok(resp) => resp
                .into_inner()
                .next()
                .await
                .expect("an answer")
                .expect_err("must be refused"),
        };
        assert_eq!(err.code(), code, "{what}: {err}");
    }
    let mut diag = DiagnosticsClient::connect(url).await.unwrap();
    assert!(
        diag.list_nodes(ListNodesRequest {})
            .await
            .unwrap()
            .into_inner()
            .nodes
            .is_empty(),
        "no refused report was recorded"
    );
    let (_, metrics) = fleetmirror_tests::process::http_get(agg.admin_port, "/metrics").unwrap();
    let refused: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("fleetmirror_aggregator_report_rejections_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(refused >= 4.0, "refusals are counted:\n{metrics}");
}

/// One simulated agent stream: a snapshot for `node`, until the aggregator acks it. Refusals
/// for load (UNAVAILABLE) are retried, as agents do.
async fn report_once(url: &str, token: &str, node: &str) {
    let start = std::time::Instant::now();
    loop {
        let mut c = client_with_token(url, Some(token.to_owned())).await;
        let stream = tokio_stream::iter(vec![snapshot(node, 1)]);
        match c.report(stream).await {
            Ok(acks) => {
                let mut acks = acks.into_inner();
                let ack = acks.next().await.expect("an ack").expect("an ack");
                assert!(!ack.resync_required);
                return;
            }
            Err(s) if s.code() == Code::Unavailable && start.elapsed() < WAIT => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(s) => panic!("{node}: {s:?}"),
        }
    }
}

/// A reconnect storm costs one TokenReview and one pod read per distinct token (the cache
/// serves the rest), and callers with made-up tokens cannot make the aggregator issue more than
/// its rate limit of TokenReviews.
#[tokio::test(flavor = "multi_thread")]
async fn reconnecting_agents_cost_one_token_review_each() {
    let cp = ControlPlane::shared();
    let client = cp.client(0).await;
    let ns = namespace(&client, "storm").await;
    let agg = Aggregator::start(cp, 0, AggregatorConfig::new(&ns));
    eventually(WAIT, "leadership", || async {
        (agg.metric("fleetmirror_aggregator_leader") == Some(1.0)).then_some(())
    })
    .await;
    let url = agg.grpc_url();
    const AGENTS: usize = 200;
    let mut tokens: Vec<(String, String)> = Vec::new();
    for batch in (0..AGENTS).collect::<Vec<_>>().chunks(20) {
        tokens.extend(
            futures::future::join_all(batch.iter().map(|i| {
                let node = format!("sim-{i:03}");
                let (client, ns) = (client.clone(), ns.clone());
                async move {
                    let token = fleetmirror_tests::cluster::agent_token(
                        &client,
                        &ns,
                        &node,
                        "fleetmirror-agent",
                        true,
                    )
                    .await;
                    (node, token)
                }
            }))
            .await,
        );
    }
    let reviews = || {
        agg.metric("fleetmirror_aggregator_token_reviews_total")
            .unwrap_or(0.0)
    };
    let pod_reads = || {
        agg.metric("fleetmirror_aggregator_agent_pod_reads_total")
            .unwrap_or(0.0)
    };
    // Every agent connects, then all reconnect at once (as after a failover).
    for _round in 0..2 {
        futures::future::join_all(
            tokens
                .iter()
                .map(|(node, token)| report_once(&url, token, node)),
        )
        .await;
    }
    assert_eq!(
        reviews(),
        AGENTS as f64,
        "one TokenReview per distinct token"
    );
    assert_eq!(
        pod_reads(),
        AGENTS as f64,
        "one pod read per distinct token"
    );
    assert!(
        agg.metric("fleetmirror_aggregator_auth_cache_hits_total")
            .unwrap_or(0.0)
            >= AGENTS as f64
    );

    // Made-up tokens cost the API server nothing: refused from their claims before review.
    let before = reviews();
    let refused = futures::future::join_all((0..400).map(|i| {
        let url = url.clone();
        async move {
            let mut c = client_with_token(&url, Some(format!("made.up.{i}"))).await;
            c.report(tokio_stream::iter(vec![snapshot("x", 1)]))
                .await
                .unwrap_err()
                .code()
        }
    }))
    .await;
    assert!(refused.iter().all(|c| *c == Code::Unauthenticated));
    assert_eq!(
        reviews(),
        before,
        "no TokenReview for tokens that cannot pass"
    );

    // Forged tokens with the agent's claims (and a bad signature) need a TokenReview each, but
    // only as many start as the rate allows (bursts of 500, then 200 per second).
    let user = format!("system:serviceaccount:{ns}:fleetmirror-agent");
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let forged = |i: usize| {
        use base64::Engine;
        let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let claims = serde_json::json!({"aud": ["fleetmirror"], "sub": user, "exp": exp, "n": i});
        format!(
            "{}.{}.c2ln",
            e.encode(r#"{"alg":"RS256"}"#),
            e.encode(claims.to_string())
        )
    };
    const FORGED: usize = 1200;
    let channel = fleetmirror_tests::channel(&url).await;
    let started = std::time::Instant::now();
    let refused = futures::future::join_all((0..FORGED).map(|i| {
        let mut request = tonic::Request::new(tokio_stream::iter(vec![snapshot("x", 1)]));
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {}", forged(i)).parse().unwrap(),
        );
        let mut c = AgentServiceClient::new(channel.clone());
        async move { c.report(request).await.unwrap_err().code() }
    }))
    .await;
    let elapsed = started.elapsed().as_secs_f64();
    let issued = reviews() - before;
    assert!(
        issued <= 500.0 + 200.0 * elapsed + 5.0,
        "{issued} TokenReviews for {FORGED} forged tokens in {elapsed:.1}s"
    );
    assert!(
        refused
            .iter()
            .all(|c| matches!(c, Code::Unauthenticated | Code::Unavailable))
    );
    if elapsed < 3.0 {
        // Fewer than 500 + 200 × 3 = 1 100 may start: the limiter refused the rest.
        assert!(
            refused.contains(&Code::Unavailable),
            "the rate limit refused some"
        );
    }
}
