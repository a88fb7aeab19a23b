//! The aggregator platform end to end (the ground every controller stands on): a failover
//! raises no false alarm, a deleted node's reports leave, a failing status write backs off, a
//! watch that cannot list turns `/readyz` false and `Ready` Unknown, and a deposed leader's
//! writes never land. Tests that run aggregators writing every `VClusterHealth` of their cluster
//! have a control plane of their own.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use fleetmirror_aggregator::crd::VClusterHealth;
use fleetmirror_aggregator::leader::{ElectionConfig, LeaderElector};
use fleetmirror_aggregator::platform::{Fenced, Leadership};
use fleetmirror_proto::v1::GetVClusterRequest;
use fleetmirror_proto::v1::diagnostics_client::DiagnosticsClient;
use fleetmirror_runtime::shutdown::CancellationToken;
use fleetmirror_tests::cluster::{
    ControlPlane, create_node, install_crds, kubeconfig_with_token, namespace,
};
use fleetmirror_tests::fleet::{condition, create_fleet, create_fleet_named, status};
use fleetmirror_tests::footprint::VCluster;
use fleetmirror_tests::node::NodeSandbox;
use fleetmirror_tests::process::{Agent, Aggregator, AggregatorConfig, http_get, metric_with};
use fleetmirror_tests::{eventually, suffix};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Node, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule};
use kube::api::{Api, PostParams};
use kube::runtime::watcher;

const WAIT: Duration = Duration::from_secs(60);

async fn leads(agg: &Aggregator) {
    eventually(WAIT, &format!("{} leads", agg.identity), || async {
        (agg.metric("fleetmirror_aggregator_leader") == Some(1.0)).then_some(())
    })
    .await;
}

/// Every status the API server stored for VClusterHealth `ns/name` from now on: (score of
/// vCluster `vc`, AgentsReporting status), in order.
fn record_statuses(
    client: &kube::Client,
    ns: &str,
    name: &str,
    vc: &'static str,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<Vec<(i32, String)>> {
    let api = Api::<VClusterHealth>::namespaced(client.clone(), ns);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    tokio::spawn(async move {
        let mut seen = Vec::new();
        let mut stream = std::pin::pin!(watcher(api, config));
        loop {
            tokio::select! {
                ev = stream.next() => match ev {
                    Some(Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o))) => {
                        let s = o.status.unwrap_or_default();
                        let score = s.sync_coverage.iter().find(|c| c.cluster_name == vc).map_or(-1, |c| c.score);
                        let agents = s.conditions.iter().find(|c| c.type_ == "AgentsReporting").map_or(String::new(), |c| c.status.clone());
                        seen.push((score, agents));
                    }
                    Some(_) => {}
                    None => return seen,
                },
                _ = stop.cancelled() => return seen,
            }
        }
    })
}

async fn warning_events(client: &kube::Client, ns: &str, reason: &str) -> Vec<String> {
    Api::<k8s_openapi::api::events::v1::Event>::namespaced(client.clone(), ns)
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(reason) && e.type_.as_deref() == Some("Warning"))
        .map(|e| e.note.unwrap_or_default())
        .collect()
}

async fn vcluster_score(url: &str, ns: &str, name: &str) -> Option<(i32, u32)> {
    let mut d = DiagnosticsClient::new(fleetmirror_tests::channel(url).await);
    let v = d
        .get_v_cluster(GetVClusterRequest {
            namespace: ns.into(),
            name: name.into(),
        })
        .await
        .ok()?
        .into_inner()
        .summary?;
    Some((v.score, v.pods_seen))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failover_raises_no_false_alarm() {
    let cp = ControlPlane::dedicated("failover");
    let client = cp.client(0).await;
    install_crds(&client).await;
    let ns = namespace(&client, "team").await;
    let node = NodeSandbox::new(&format!("node-{}", suffix()));
    create_node(&client, &node.name).await;
    let vc = VCluster::new(&ns, "vc");
    for p in vc.create_complete(&client, &node.name).await {
        node.create_pod_dir(p.metadata.uid.as_deref().unwrap());
    }
    let lease_ns = namespace(&client, "fleetmirror").await;
    let mut leader = Aggregator::start(&cp, 0, AggregatorConfig::new(&lease_ns));
    leads(&leader).await;
    let standby = Aggregator::start(&cp, 0, AggregatorConfig::new(&lease_ns));
    node.issue_token(&client, &lease_ns).await;
    // Given the standby's address, as the Service may route it: its refusal names the leader.
    let _agent = Agent::start(&cp, 0, &node, Some(&standby.grpc_url()), &[]);
    // No heartbeat during the test: every write below is a judgement.
    create_fleet(&client, &ns, &ns, 3600).await;
    eventually(WAIT, "100/Full from the leader", || async {
        let s = status(&client, &ns, "fleet").await?;
        (s.sync_coverage.first()?.score == 100).then_some(())
    })
    .await;

    let stop = CancellationToken::new();
    let recorded = record_statuses(&client, &ns, "fleet", "vc", stop.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    leader.process.kill();
    leads(&standby).await;
    // The agent reconnects to the new leader, which then scores the vCluster from its report.
    eventually(WAIT, "the new leader scores 100 from the agent", || async {
        let (score, pods) = vcluster_score(&standby.grpc_url(), &ns, "vc").await?;
        (score == 100 && pods > 0).then_some(())
    })
    .await;
    // And it writes what it judges: a new object gets 100/Full.
    create_fleet_named(&client, &ns, "after", &ns, 3600).await;
    eventually(WAIT, "the new leader writes 100/Full", || async {
        let s = status(&client, &ns, "after").await?;
        (s.sync_coverage.first()?.score == 100).then_some(())
    })
    .await;
    stop.cancel();
    let seen = recorded.await.unwrap();
    assert!(
        seen.iter()
            .all(|(score, agents)| *score == 100 && agents == "True"),
        "a status worse than 100/Full with agents reporting was published during the takeover: {seen:?}"
    );
    let warnings = warning_events(&client, &ns, "LevelChanged").await;
    assert!(warnings.is_empty(), "false alarms: {warnings:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_node_no_longer_counts() {
    let cp = ControlPlane::dedicated("nodes");
    let client = cp.client(0).await;
    install_crds(&client).await;
    let ns = namespace(&client, "team").await;
    let lease_ns = namespace(&client, "fleetmirror").await;
    let (gone, stays) = (
        NodeSandbox::new(&format!("gone-{}", suffix())),
        NodeSandbox::new(&format!("stays-{}", suffix())),
    );
    let vc = VCluster::new(&ns, "vc");
    for p in vc.create_complete(&client, &gone.name).await {
        gone.create_pod_dir(p.metadata.uid.as_deref().unwrap());
    }
    let mut cfg = AggregatorConfig::new(&lease_ns);
    cfg.extra_args.push("--agent-stale-after=2s".into());
    let agg = Aggregator::start(&cp, 0, cfg);
    leads(&agg).await;
    let mut agents = Vec::new();
    for node in [&gone, &stays] {
        create_node(&client, &node.name).await;
        node.issue_token(&client, &lease_ns).await;
        agents.push(Agent::start(&cp, 0, node, Some(&agg.grpc_url()), &[]));
    }
    create_fleet(&client, &ns, &ns, 3600).await;
    eventually(WAIT, "100/Full with two nodes reporting", || async {
        let s = status(&client, &ns, "fleet").await?;
        let agents = s.conditions.iter().find(|c| c.type_ == "AgentsReporting")?;
        (s.sync_coverage.first()?.score == 100 && agents.message == "2 node(s) reporting")
            .then_some(())
    })
    .await;

    agents[0].process.kill();
    eventually(
        WAIT,
        "the silent node's pods are stale and no longer count",
        || async {
            let s = status(&client, &ns, "fleet").await?;
            let c = s.sync_coverage.first()?;
            let agents = s.conditions.iter().find(|c| c.type_ == "AgentsReporting")?;
            (c.pods_stale
                && !c.control_plane_ready
                && !c.tenant_workload_sync
                && agents.reason == "AgentsSilent")
                .then_some(())
        },
    )
    .await;

    Api::<Node>::all(client.clone())
        .delete(&gone.name, &Default::default())
        .await
        .unwrap();
    eventually(
        WAIT,
        "AgentsReporting recovers once the Node is deleted",
        || async {
            let s = status(&client, &ns, "fleet").await?;
            let c = s.sync_coverage.first()?;
            let agents = s.conditions.iter().find(|c| c.type_ == "AgentsReporting")?;
            (!c.pods_stale && agents.status == "True" && agents.message == "1 node(s) reporting")
                .then_some(())
        },
    )
    .await;
    let nodes = fleetmirror_tests::node_names(&agg.grpc_url()).await;
    assert_eq!(
        nodes,
        [stays.name.as_str()],
        "the deleted node left the index"
    );
}

fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> PolicyRule {
    let v = |x: &[&str]| Some(x.iter().map(|s| s.to_string()).collect());
    PolicyRule {
        api_groups: v(groups),
        resources: v(resources),
        verbs: verbs.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

/// The health controller's rules (as the chart renders them), optionally without the
/// status subresource or the Service watches.
fn aggregator_rules(status: bool, services: bool) -> Vec<PolicyRule> {
    let mut rules = vec![
        rule(&["authentication.k8s.io"], &["tokenreviews"], &["create"]),
        rule(&[""], &["pods"], &["get"]),
        rule(
            &["apps"],
            &["statefulsets", "deployments"],
            &["list", "watch"],
        ),
        rule(&[""], &["nodes"], &["list", "watch"]),
        rule(
            &["fleetmirror.io"],
            &["vclusterhealths"],
            &["list", "watch"],
        ),
        rule(&["events.k8s.io"], &["events"], &["create", "patch"]),
    ];
    if status {
        rules.push(rule(
            &["fleetmirror.io"],
            &["vclusterhealths/status"],
            &["patch"],
        ));
    }
    if services {
        rules.push(rule(&[""], &["services"], &["list", "watch"]));
    }
    rules
}

async fn set_rules(client: &kube::Client, name: &str, rules: Vec<PolicyRule>) {
    let api = Api::<ClusterRole>::all(client.clone());
    let mut role = api.get(name).await.unwrap();
    role.rules = Some(rules);
    api.replace(name, &PostParams::default(), &role)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn failing_writes_back_off_and_failing_watches_are_reported() {
    let cp = ControlPlane::dedicated("rbac");
    let client = cp.client(0).await;
    install_crds(&client).await;
    let ns = namespace(&client, "team").await;
    let sa_ns = namespace(&client, "fleetmirror").await;
    let role = format!("restricted-{}", suffix());
    let sa: ServiceAccount =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "restricted"}})).unwrap();
    Api::<ServiceAccount>::namespaced(client.clone(), &sa_ns)
        .create(&PostParams::default(), &sa)
        .await
        .unwrap();
    let cr: ClusterRole =
        serde_json::from_value(serde_json::json!({"metadata": {"name": role}})).unwrap();
    Api::<ClusterRole>::all(client.clone())
        .create(&PostParams::default(), &cr)
        .await
        .unwrap();
    set_rules(&client, &role, aggregator_rules(false, true)).await;
    let binding: ClusterRoleBinding = serde_json::from_value(serde_json::json!({
        "metadata": {"name": role},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [{"kind": "ServiceAccount", "name": "restricted", "namespace": sa_ns}],
    }))
    .unwrap();
    Api::<ClusterRoleBinding>::all(client.clone())
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
    let token = {
        use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: vec![],
                expiration_seconds: Some(3600),
                bound_object_ref: None,
            },
            ..Default::default()
        };
        Api::<ServiceAccount>::namespaced(client.clone(), &sa_ns)
            .create_token_request("restricted", &PostParams::default(), &request)
            .await
            .unwrap()
            .status
            .unwrap()
            .token
    };
    let dir = std::env::temp_dir().join(format!("fleetmirror-rbac-{}", suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut cfg = AggregatorConfig::new(&sa_ns);
    cfg.kubeconfig = Some(kubeconfig_with_token(&cp, 0, &token, &dir));
    cfg.extra_args = vec![
        "--leader-elect=false".into(),
        "--watch-failure-grace=2s".into(),
        // The RBAC given is the health controller's.
        "--controllers=health".into(),
    ];
    VCluster::new(&ns, "vc")
        .create_complete(&client, "node-a")
        .await;
    let agg = Aggregator::start(&cp, 0, cfg);
    create_fleet(&client, &ns, &ns, 1).await;

    // 403 on every status write: retried with backoff (1, 2, 4, 8, 16 s …), not every second.
    let errors = || {
        metric_with(
            agg.admin_port,
            "fleetmirror_controller_status_writes_total",
            "reason=\"error\"",
        )
    };
    eventually(WAIT, "a first failed write", || async {
        (errors() >= 1.0).then_some(())
    })
    .await;
    let before = errors();
    tokio::time::sleep(Duration::from_secs(30)).await;
    let tries = errors() - before;
    assert!(
        (1.0..=6.0).contains(&tries),
        "{tries} write attempts in 30 s: a failing write must back off"
    );
    assert!(
        status(&client, &ns, "fleet").await.is_none(),
        "nothing was written"
    );

    // Allowed again: the next attempt (at the end of its backoff) lands.
    set_rules(&client, &role, aggregator_rules(true, true)).await;
    eventually(
        Duration::from_secs(90),
        "the status written after the backoff",
        || async {
            let c = condition(&client, &ns, "fleet", "Ready").await?;
            (c.status == "True").then_some(())
        },
    )
    .await;
    assert_eq!(http_get(agg.admin_port, "/readyz").unwrap().0, 200);
    let scored = status(&client, &ns, "fleet").await.unwrap();

    // A watch whose RBAC is revoked: established watches keep their stream, so the API
    // server restarts to make every watch list again.
    set_rules(&client, &role, aggregator_rules(true, false)).await;
    cp.stop_apiserver(0);
    cp.start_apiserver(0);
    // (Every watch fails while the API server is down; the others recover once it is back.)
    eventually(
        WAIT,
        "/readyz false, naming only the Service watches",
        || async {
            let (code, body) = http_get(agg.admin_port, "/readyz?verbose").ok()?;
            (code == 503
                && body.contains("[-]watch-services-app failing for")
                && body.contains("[+]watch-vclusterhealths ok")
                && body.contains("[+]watch-statefulsets ok"))
            .then_some(())
        },
    )
    .await;
    let ready = eventually(WAIT, "Ready=Unknown, WatchFailing", || async {
        let c = condition(&client, &ns, "fleet", "Ready").await?;
        (c.status == "Unknown").then_some(c)
    })
    .await;
    assert_eq!(ready.reason, "WatchFailing");
    assert!(
        ready.message.starts_with("watch services-"),
        "{}",
        ready.message
    );
    let frozen = status(&client, &ns, "fleet").await.unwrap();
    assert_eq!(
        frozen.sync_coverage, scored.sync_coverage,
        "the last scores are kept"
    );
    assert_eq!(
        frozen.last_updated, scored.last_updated,
        "and not presented as fresh"
    );
    let metrics = http_get(agg.admin_port, "/metrics").unwrap().1;
    assert!(
        metrics.contains("fleetmirror_watch_errors_total{watch=\"services-app\"}"),
        "{metrics}"
    );

    // Restored: ready again, and judged as usual.
    set_rules(&client, &role, aggregator_rules(true, true)).await;
    eventually(WAIT, "/readyz true again", || async {
        (http_get(agg.admin_port, "/readyz").ok()?.0 == 200).then_some(())
    })
    .await;
    eventually(WAIT, "Ready=True again", || async {
        let c = condition(&client, &ns, "fleet", "Ready").await?;
        (c.status == "True" && c.reason == "Scored").then_some(())
    })
    .await;
    std::fs::remove_dir_all(&dir).ok();
}

/// A loopback TCP proxy to the API server that can be partitioned: once frozen it forwards
/// nothing more, in either direction, on any connection (a replica cut off from the API
/// server, with requests stuck on the way).
struct Partition {
    port: u16,
    frozen: Arc<AtomicBool>,
}

impl Partition {
    async fn start(upstream: u16) -> Partition {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let frozen = Arc::new(AtomicBool::new(false));
        let f = frozen.clone();
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let f = f.clone();
                tokio::spawn(async move {
                    let Ok(outbound) =
                        tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                    else {
                        return;
                    };
                    let (ir, iw) = inbound.into_split();
                    let (or, ow) = outbound.into_split();
                    tokio::join!(pump(ir, ow, f.clone()), pump(or, iw, f));
                });
            }
        });
        Partition { port, frozen }
    }

    fn freeze(&self) {
        self.frozen.store(true, Ordering::SeqCst);
    }
}

/// Copies `from` to `to` until either closes; once `frozen`, forwards nothing more.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    frozen: Arc<AtomicBool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if frozen.load(Ordering::SeqCst) {
            return std::future::pending().await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

fn configmap(name: &str) -> ConfigMap {
    serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap()
}

/// Runs one candidate against `client`; returns its view of leadership.
fn candidate(
    client: kube::Client,
    ns: &str,
    identity: &str,
    stop: &CancellationToken,
) -> Leadership {
    let (tx, leadership) = Leadership::channel();
    let (holder_tx, _holder) = tokio::sync::watch::channel(None);
    let elector = LeaderElector::new(
        client,
        ns,
        ElectionConfig {
            identity: identity.into(),
            lease_duration: Duration::from_secs(2),
            retry: Duration::from_millis(250),
            advertise: None,
            request_timeout: Duration::from_secs(10),
        },
        Arc::new(|_| Some(1)),
    );
    let stop = stop.clone();
    tokio::spawn(async move {
        elector.run(tx, holder_tx, stop).await;
        drop(_holder);
    });
    leadership
}

async fn term_of(l: &Leadership) -> fleetmirror_aggregator::platform::Term {
    eventually(WAIT, "a term", || async { l.term() }).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deposed_leaders_writes_never_land() {
    let cp = ControlPlane::shared();
    let admin = cp.client(0).await;
    let ns = namespace(&admin, "term").await;
    let kubeconfig = kube::config::Kubeconfig::read_from(cp.kubeconfig(0)).unwrap();
    let server = kubeconfig.clusters[0]
        .cluster
        .clone()
        .unwrap()
        .server
        .unwrap();
    let upstream: u16 = server
        .trim_end_matches('/')
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let partition = Partition::start(upstream).await;
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    config.cluster_url = format!("https://127.0.0.1:{}", partition.port)
        .parse()
        .unwrap();
    let a_client = kube::Client::try_from(config).unwrap();
    let stop = CancellationToken::new();

    let a = candidate(a_client.clone(), &ns, "a", &stop);
    let term_a = term_of(&a).await;
    let b = candidate(admin.clone(), &ns, "b", &stop);
    let a_cms = Api::<ConfigMap>::namespaced(a_client, &ns);
    let cms = Api::<ConfigMap>::namespaced(admin.clone(), &ns);
    term_a
        .fence(a_cms.create(&PostParams::default(), &configmap("while-leading")))
        .await
        .expect("the leader writes");

    // A is cut off from the API server: it cannot renew, and a write it starts hangs.
    partition.freeze();
    let in_flight = tokio::spawn({
        let (t, api) = (term_a.clone(), a_cms.clone());
        async move {
            t.fence(api.create(&PostParams::default(), &configmap("in-flight")))
                .await
                .map(|_| ())
        }
    });
    tokio::time::timeout(WAIT, term_a.lost())
        .await
        .expect("A's term ends");
    let a_ended = tokio::time::Instant::now();
    let term_b = term_of(&b).await;
    assert!(
        a_ended <= term_b.started(),
        "A's term ended before B's began ({:?} later)",
        term_b.started() - a_ended
    );
    assert!(
        matches!(in_flight.await.unwrap(), Err(Fenced::Lost)),
        "the write in flight was abandoned with the term"
    );
    // A write A issues now is never sent, even on a healthy connection.
    let r = term_a
        .fence(cms.create(&PostParams::default(), &configmap("after-term")))
        .await;
    assert!(matches!(r, Err(Fenced::Lost)));
    term_b
        .fence(cms.create(&PostParams::default(), &configmap("new-leader")))
        .await
        .expect("the new leader writes");
    let names: BTreeMap<String, ()> = cms
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|c| Some((c.metadata.name?, ())))
        .collect();
    assert!(names.contains_key("while-leading") && names.contains_key("new-leader"));
    assert!(
        !names.contains_key("after-term") && !names.contains_key("in-flight"),
        "{names:?}"
    );
    stop.cancel();
}
