//! Fleet health end to end: the aggregator binary scores real objects on a real API server
//! and writes VClusterHealth status. Each test has a control plane of its own, since an
//! aggregator writes every VClusterHealth of its cluster.

use std::time::Duration;

use fleetmirror_aggregator::crd::{SyncCoverage, VClusterHealth};
use fleetmirror_proto::v1::diagnostics_client::DiagnosticsClient;
use fleetmirror_proto::v1::{GetVClusterRequest, ListVClustersRequest, VClusterSummary};
use fleetmirror_tests::cluster::{ControlPlane, namespace};
use fleetmirror_tests::eventually;
use fleetmirror_tests::fleet::{condition, create_fleet, create_fleet_named, status};
use fleetmirror_tests::footprint::{
    AnnotationStyle, VCluster, create, create_running_pod, set_pod_status,
};
use fleetmirror_tests::node::NodeSandbox;
use fleetmirror_tests::process::{Agent, Aggregator, AggregatorConfig, metric_with};
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Api, DeleteParams, PostParams};

const WAIT: Duration = Duration::from_secs(60);

async fn coverage(client: &kube::Client, ns: &str) -> Vec<SyncCoverage> {
    status(client, ns, "fleet")
        .await
        .map(|s| s.sync_coverage)
        .unwrap_or_default()
}

fn signals(c: &SyncCoverage) -> [bool; 6] {
    [
        c.api_sync,
        c.control_plane_ready,
        c.dns_sync,
        c.node_sync,
        c.system_workload_sync,
        c.tenant_workload_sync,
    ]
}

async fn wait_signals(
    client: &kube::Client,
    ns: &str,
    vc_ns: &str,
    name: &str,
    want: [bool; 6],
) -> SyncCoverage {
    eventually(
        WAIT,
        &format!("{vc_ns}/{name} has signals {want:?}"),
        || async {
            coverage(client, ns)
                .await
                .into_iter()
                .find(|c| c.namespace == vc_ns && c.cluster_name == name && signals(c) == want)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn signals_scores_edge_cases_diagnostics_and_heartbeat_writes() {
    let cp = ControlPlane::dedicated("health");
    let client = cp.client(0).await;
    fleetmirror_tests::cluster::install_crds(&client).await;
    let ns1 = namespace(&client, "team-a").await;
    let ns2 = namespace(&client, "team-b").await;
    let ns3 = namespace(&client, "other").await;
    let node = "node-1.example.com";

    // A complete footprint: 100/Full.
    let full = VCluster::new(&ns1, "full");
    full.create_complete(&client, node).await;
    // HA / non-persistent: Deployment-mode control plane, Ready.
    let deploy = VCluster::new(&ns1, "deploy-vc");
    create(&client, &deploy.deployment()).await;
    create_running_pod(&client, &deploy.control_plane_pod(node, false), true).await;
    // A 39-character name: its kube-dns Service name is hashed.
    let long = VCluster::new(&ns1, "team-platform-observability-staging-eu1");
    create(&client, &long.statefulset()).await;
    create(&client, &long.kube_dns_service()).await;
    // `vc` must get nothing of `vc-prod`'s; no phantoms from -lb or tenant app=vcluster Services.
    let vc = VCluster::new(&ns2, "vc");
    create(&client, &vc.statefulset()).await;
    VCluster::new(&ns2, "vc-prod")
        .create_complete(&client, node)
        .await;
    for name in ["vc-lb", "tenant-app"] {
        let mut svc = vc.api_service();
        svc.metadata.name = Some(name.into());
        create(&client, &svc).await;
    }
    // A pod of another namespace claiming `vc` (which has no pods) does not count for it.
    let intruder =
        VCluster::new(&ns3, "vc").synced_pod("default", "claims", node, AnnotationStyle::Classic);
    create_running_pod(&client, &intruder.pod, true).await;
    // Same name in two namespaces: two vClusters.
    create(&client, &VCluster::new(&ns1, "dup").statefulset()).await;
    create(&client, &VCluster::new(&ns2, "dup").statefulset()).await;

    let mut config = AggregatorConfig::new(&ns1);
    config.extra_args.push("--pod-source=api".into());
    let agg = Aggregator::start(&cp, 0, config);
    create_fleet(&client, "default", "*", 1).await;

    let all = [true; 6];
    let c = wait_signals(&client, "default", &ns1, "full", all).await;
    assert_eq!((c.score, c.level.as_str()), (100, "Full"));
    let d = wait_signals(
        &client,
        "default",
        &ns1,
        "deploy-vc",
        [false, true, false, false, false, false],
    )
    .await;
    assert_eq!((d.score, d.level.as_str()), (16, "Partial"));
    wait_signals(
        &client,
        "default",
        &ns1,
        "team-platform-observability-staging-eu1",
        [false, false, true, false, false, false],
    )
    .await;
    let v = wait_signals(&client, "default", &ns2, "vc", [false; 6]).await;
    assert_eq!((v.score, v.level.as_str()), (0, "None"));
    assert!(v.message.contains("kube-dns"), "{}", v.message);
    wait_signals(&client, "default", &ns2, "vc-prod", all).await;

    let cov = coverage(&client, "default").await;
    let names: Vec<(String, String)> = cov
        .iter()
        .map(|c| (c.namespace.clone(), c.cluster_name.clone()))
        .collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted, "sorted by namespace, then name");
    assert!(
        !names.iter().any(|(_, n)| n == "vc-lb" || n == "tenant-app"),
        "no phantom vClusters: {names:?}"
    );
    assert_eq!(
        names.iter().filter(|(_, n)| n == "dup").count(),
        2,
        "same name, two namespaces"
    );

    let vch = Api::<VClusterHealth>::namespaced(client.clone(), "default")
        .get("fleet")
        .await
        .unwrap();
    let fleet = vch.status.unwrap();
    assert!(fleet.last_updated.is_some());
    assert_eq!(fleet.observed_generation, vch.metadata.generation);
    let summary = fleet.summary.unwrap();
    assert_eq!(
        (summary.total, summary.full, summary.lowest_score),
        (cov.len() as i32, 2, 0)
    );
    let ready = fleet
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(ready.status, "True");
    let api_ref = fleet
        .clusters
        .iter()
        .find(|c| c.namespace == ns1 && c.name == "full")
        .unwrap();
    assert_eq!(
        (api_ref.service_name.as_str(), api_ref.service_port),
        ("full", 443)
    );

    // Several fleets, each with its own selection: one namespace, and the default ("" is
    // namespace `vcluster`), beside the "*" fleet.
    let vcluster_ns = k8s_openapi::api::core::v1::Namespace {
        metadata: kube::api::ObjectMeta {
            name: Some("vcluster".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
        .create(&PostParams::default(), &vcluster_ns)
        .await
        .unwrap();
    create(&client, &VCluster::new("vcluster", "solo").statefulset()).await;
    create_fleet_named(&client, "default", "team-b", &ns2, 3600).await;
    create_fleet_named(&client, "default", "unset", "", 3600).await;
    let selected = |name: &'static str| {
        let client = client.clone();
        async move {
            let s = status(&client, "default", name).await?;
            let mut v: Vec<String> = s
                .sync_coverage
                .iter()
                .map(|c| format!("{}/{}", c.namespace, c.cluster_name))
                .collect();
            v.sort();
            Some(v)
        }
    };
    let team_b = eventually(WAIT, "the team-b fleet", || async {
        selected("team-b").await.filter(|v| !v.is_empty())
    })
    .await;
    assert_eq!(
        team_b,
        ["dup", "vc", "vc-prod"].map(|n| format!("{ns2}/{n}")),
        "only team-b's vClusters"
    );
    eventually(WAIT, "the default-selection fleet", || async {
        selected("unset")
            .await
            .filter(|v| v == &["vcluster/solo".to_string()])
    })
    .await;
    eventually(
        WAIT,
        "the \"*\" fleet sees the new vCluster too",
        || async {
            selected("fleet")
                .await
                .filter(|v| v.contains(&"vcluster/solo".to_string()) && v.len() == cov.len() + 1)
        },
    )
    .await;
    for name in ["team-b", "unset"] {
        Api::<VClusterHealth>::namespaced(client.clone(), "default")
            .delete(name, &Default::default())
            .await
            .unwrap();
    }

    // Diagnostics answers from the same scores.
    let mut diag = DiagnosticsClient::new(fleetmirror_tests::channel(&agg.grpc_url()).await);
    let list: Vec<VClusterSummary> = diag
        .list_v_clusters(ListVClustersRequest {
            namespace: ns1.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .vclusters;
    let f = list.iter().find(|s| s.name == "full").unwrap();
    assert_eq!((f.score, f.level.as_str(), f.pods_seen), (100, "Full", 3));
    let detail = diag
        .get_v_cluster(GetVClusterRequest {
            namespace: ns1.clone(),
            name: "full".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(detail.summary.unwrap().score, 100);

    // Removing each piece drops exactly its signal.
    let services = Api::<Service>::namespaced(client.clone(), &ns1);
    let pods = Api::<Pod>::namespaced(client.clone(), &ns1);
    let now0 = DeleteParams::default().grace_period(0);
    let mut want = all;
    services.delete("full", &now0).await.unwrap();
    want[0] = false;
    wait_signals(&client, "default", &ns1, "full", want).await;
    let cp_pod = pods.get("full-0").await.unwrap();
    set_pod_status(&client, &cp_pod, "Running", false).await;
    want[1] = false;
    wait_signals(&client, "default", &ns1, "full", want).await;
    services
        .delete(
            &fleetmirror_core::naming::kube_dns_service_name("full"),
            &now0,
        )
        .await
        .unwrap();
    want[2] = false;
    wait_signals(&client, "default", &ns1, "full", want).await;
    services
        .delete(
            &fleetmirror_core::naming::node_service_name("full", node),
            &now0,
        )
        .await
        .unwrap();
    want[3] = false;
    wait_signals(&client, "default", &ns1, "full", want).await;
    pods.delete(
        &fleetmirror_core::naming::host_name("coredns-6f8d5b9c7-x2x4q", "kube-system", "full"),
        &now0,
    )
    .await
    .unwrap();
    want[4] = false;
    let c = wait_signals(&client, "default", &ns1, "full", want).await;
    assert_eq!((c.score, c.level.as_str()), (16, "Partial"));
    pods.delete(
        &fleetmirror_core::naming::host_name("web-0", "default", "full"),
        &now0,
    )
    .await
    .unwrap();
    let c = wait_signals(&client, "default", &ns1, "full", [false; 6]).await;
    assert_eq!((c.score, c.level.as_str()), (0, "None"));

    // Level changes are Kubernetes Events on the VClusterHealth (Warning when worse).
    let events = Api::<k8s_openapi::api::events::v1::Event>::namespaced(client.clone(), "default");
    let level_event = eventually(WAIT, "a LevelChanged Event for full", || async {
        let list = events.list(&Default::default()).await.ok()?;
        list.items.into_iter().find(|e| {
            e.reason.as_deref() == Some("LevelChanged")
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("fleet")
                && e.note
                    .as_deref()
                    .is_some_and(|n| n.contains("/full: Full -> Partial"))
        })
    })
    .await;
    assert_eq!(level_event.type_.as_deref(), Some("Warning"));

    // A hostile spec: a clear condition and a Warning Event, and nothing else breaks.
    create_fleet_named(&client, "default", "broken", "Bad/Namespace", 1).await;
    eventually(WAIT, "Ready=False InvalidSpec", || async {
        let c = condition(&client, "default", "broken", "Ready").await?;
        (c.status == "False" && c.reason == "InvalidSpec").then_some(())
    })
    .await;
    eventually(WAIT, "an InvalidSpec Event", || async {
        let list = events.list(&Default::default()).await.ok()?;
        list.items.into_iter().find(|e| {
            e.reason.as_deref() == Some("InvalidSpec") && e.type_.as_deref() == Some("Warning")
        })
    })
    .await;
    // (Only `fleet` may heartbeat below.)
    Api::<VClusterHealth>::namespaced(client.clone(), "default")
        .delete("broken", &Default::default())
        .await
        .unwrap();

    // Nothing changes for 10 intervals (1 s each): only heartbeat writes, one per interval.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let changed0 = metric_with(
        agg.admin_port,
        "fleetmirror_controller_status_writes_total",
        "reason=\"changed\"",
    );
    let beats0 = metric_with(
        agg.admin_port,
        "fleetmirror_controller_status_writes_total",
        "reason=\"heartbeat\"",
    );
    tokio::time::sleep(Duration::from_secs(10)).await;
    let changed = metric_with(
        agg.admin_port,
        "fleetmirror_controller_status_writes_total",
        "reason=\"changed\"",
    ) - changed0;
    let beats = metric_with(
        agg.admin_port,
        "fleetmirror_controller_status_writes_total",
        "reason=\"heartbeat\"",
    ) - beats0;
    assert_eq!(changed, 0.0, "no change, no change-write");
    assert!(
        (5.0..=12.0).contains(&beats),
        "about one heartbeat per interval over 10 intervals, got {beats}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_reports_give_the_same_signals_as_the_api_and_silence_is_flagged() {
    let cp = ControlPlane::dedicated("health-agents");
    let client = cp.client(0).await;
    fleetmirror_tests::cluster::install_crds(&client).await;
    let ns = namespace(&client, "team").await;
    let node = NodeSandbox::new(&format!("node-{}", fleetmirror_tests::suffix()));
    let vc = VCluster::new(&ns, "vc");
    for p in vc.create_complete(&client, &node.name).await {
        node.create_pod_dir(p.metadata.uid.as_deref().unwrap());
    }
    // A second vCluster with system workloads only: Partial, never a false green.
    let young = VCluster::new(&ns, "young");
    create(&client, &young.statefulset()).await;
    create_running_pod(
        &client,
        &young
            .synced_pod(
                "kube-system",
                "coredns-abc",
                &node.name,
                AnnotationStyle::Object,
            )
            .pod,
        true,
    )
    .await;

    // The agents-mode aggregator leads (and writes); an API-mode one in the same Lease
    // namespace stands by and only scores, for comparison through Diagnostics.
    let lease_ns = namespace(&client, "fleetmirror").await;
    let mut agents_cfg = AggregatorConfig::new(&lease_ns);
    agents_cfg.extra_args.push("--agent-stale-after=3s".into());
    let agents_agg = Aggregator::start(&cp, 0, agents_cfg);
    eventually(WAIT, "leadership", || async {
        (agents_agg.metric("fleetmirror_aggregator_leader") == Some(1.0)).then_some(())
    })
    .await;
    let mut api_cfg = AggregatorConfig::new(&lease_ns);
    api_cfg.extra_args.push("--pod-source=api".into());
    let api_agg = Aggregator::start(&cp, 0, api_cfg);
    // An interval far beyond the test: every status below comes from an event, or (the stale
    // agent) from the deadline the controller schedules, never from a heartbeat.
    create_fleet(&client, &ns, &ns, 3600).await;

    // No agent yet: AgentsReporting=False, pod signals false.
    eventually(WAIT, "AgentsReporting=False without agents", || async {
        let c = condition(&client, &ns, "fleet", "AgentsReporting").await?;
        (c.status == "False" && c.reason == "NoAgentReports").then_some(())
    })
    .await;

    node.issue_token(&client, &lease_ns).await;
    let mut agent = Agent::start(&cp, 0, &node, Some(&agents_agg.grpc_url()), &[]);
    let c = wait_signals(&client, &ns, &ns, "vc", [true; 6]).await;
    assert_eq!(
        c.mount_coverage.as_deref(),
        Some("2/2"),
        "mount coverage from the agent"
    );
    let y = wait_signals(
        &client,
        &ns,
        &ns,
        "young",
        [false, false, false, false, true, false],
    )
    .await;
    assert_eq!(y.level, "Partial");

    // Same state, both pod sources: the same signals.
    let scores = |url: String| async move {
        let mut d = DiagnosticsClient::new(fleetmirror_tests::channel(&url).await);
        let mut v: Vec<(String, i32, Option<fleetmirror_proto::v1::Signals>)> = d
            .list_v_clusters(ListVClustersRequest {
                namespace: String::new(),
            })
            .await
            .ok()?
            .into_inner()
            .vclusters
            .into_iter()
            .map(|s| (format!("{}/{}", s.namespace, s.name), s.score, s.signals))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        Some(v)
    };
    let from_agents = eventually(WAIT, "agents-mode scores", || async {
        scores(agents_agg.grpc_url())
            .await
            .filter(|v| v.len() == 2 && v.iter().any(|s| s.1 == 100))
    })
    .await;
    let from_api = eventually(WAIT, "api-mode scores", || async {
        scores(api_agg.grpc_url())
            .await
            .filter(|v| v.len() == 2 && v.iter().any(|s| s.1 == 100))
    })
    .await;
    assert_eq!(
        from_agents, from_api,
        "agent reports and the API give identical signals"
    );

    // The agent goes silent: its pod facts are flagged, not trusted.
    agent.process.kill();
    eventually(WAIT, "podsStale and AgentsReporting=False", || async {
        let s = status(&client, &ns, "fleet").await?;
        let stale = s
            .sync_coverage
            .iter()
            .find(|c| c.cluster_name == "vc")?
            .pods_stale;
        let agents = s.conditions.iter().find(|c| c.type_ == "AgentsReporting")?;
        (stale && agents.status == "False" && agents.reason == "AgentsSilent").then_some(())
    })
    .await;
}
