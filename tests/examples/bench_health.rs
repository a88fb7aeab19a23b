//! Fleet-health benchmark (run through `scripts/bench-health.sh`, release build), the figures
//! of health.md: 500 vClusters on a real API server, 20 000 synced pods reported by 50
//! simulated agents (real `AgentService/Report` streams with real bound tokens), the real
//! aggregator binary. Prints
//!
//! * the time from one pod's readiness change (an agent's delta) to the VClusterHealth status
//!   write showing it (observed through a watch), median and max of several flips;
//! * the aggregator's resident memory at that size.

use std::time::{Duration, Instant};

use fleetmirror_aggregator::crd::VClusterHealth;
use fleetmirror_proto::v1::agent_service_client::AgentServiceClient;
use fleetmirror_proto::v1::{
    MountPhase, MountState, NodeDelta, NodeReport, NodeSnapshot, PodState, node_report::Body,
};
use fleetmirror_tests::cluster::{ControlPlane, agent_token, install_crds, namespace};
use fleetmirror_tests::footprint::{VCluster, create};
use fleetmirror_tests::process::{Aggregator, AggregatorConfig};
use futures::StreamExt as _;
use kube::api::{Api, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

const VCLUSTERS: usize = 500;
const PODS: usize = 20_000;
const AGENTS: usize = 50;

struct SimAgent {
    node: String,
    tx: mpsc::Sender<NodeReport>,
    seq: u64,
}

fn pod(i: usize, vc: &VCluster, control_plane: bool, ready: bool) -> PodState {
    PodState {
        host_namespace: vc.namespace.clone(),
        host_name: format!("p{i}"),
        host_uid: format!("{i:08}-0000-4000-8000-000000000000"),
        vcluster: vc.name.clone(),
        virtual_namespace: if control_plane {
            String::new()
        } else if i.is_multiple_of(2) {
            "kube-system".into()
        } else {
            "default".into()
        },
        virtual_name: format!("v{i}"),
        virtual_uid: format!("{i:08}-1111-4111-8111-111111111111"),
        phase: "Running".into(),
        ready,
        control_plane,
        mounts: if control_plane {
            vec![]
        } else {
            vec![MountState {
                layout: "loft".into(),
                // As a real agent reports it.
                target: format!(
                    "/var/lib/loft/{}/kubelet/pods/{i:08}-1111-4111-8111-111111111111",
                    vc.name
                ),
                phase: MountPhase::Mounted as i32,
                reason: String::new(),
            }]
        },
    }
}

fn rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap()
}

#[tokio::main]
async fn main() {
    let flips: usize = std::env::args()
        .skip_while(|a| a != "--flips")
        .nth(1)
        .map(|v| v.parse().unwrap())
        .unwrap_or(7);
    let cp = ControlPlane::dedicated("bench-health");
    let client = cp.client(0).await;
    install_crds(&client).await;
    let lease_ns = namespace(&client, "fleetmirror").await;

    eprintln!(
        "[bench-health] creating {VCLUSTERS} vClusters (StatefulSet, API, kube-dns and node Services)…"
    );
    let mut vcs = Vec::new();
    for n in 0..VCLUSTERS / 10 {
        let ns = namespace(&client, &format!("tenant{n}")).await;
        for v in 0..10 {
            let vc = VCluster::new(&ns, &format!("vc{v}"));
            create(&client, &vc.statefulset()).await;
            create(&client, &vc.api_service()).await;
            create(&client, &vc.kube_dns_service()).await;
            create(&client, &vc.node_service("node-0")).await;
            vcs.push(vc);
        }
    }

    let agg = Aggregator::start(&cp, 0, AggregatorConfig::new(&lease_ns));
    let mut fleet = VClusterHealth::new(
        "fleet",
        fleetmirror_aggregator::crd::VClusterHealthSpec {
            namespace: Some("*".into()),
            interval_seconds: Some(30),
        },
    );
    fleet.metadata.namespace = Some("default".into());
    Api::<VClusterHealth>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &fleet)
        .await
        .unwrap();

    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_before = rss(agg.process.pid());
    eprintln!(
        "[bench-health] aggregator RSS with {VCLUSTERS} vClusters and no pods: {:.1} MiB",
        rss_before as f64 / 1024.0
    );
    eprintln!("[bench-health] {AGENTS} simulated agents report {PODS} pods…");
    let per_vc = PODS / VCLUSTERS; // 40: one control-plane pod and 39 synced pods
    let mut agents = Vec::new();
    for a in 0..AGENTS {
        let node = format!("node-{a}");
        let token = agent_token(&client, &lease_ns, &node, "fleetmirror-agent", true).await;
        let channel = fleetmirror_tests::channel(&agg.grpc_url()).await;
        let mut c =
            AgentServiceClient::with_interceptor(channel, move |mut req: tonic::Request<()>| {
                req.metadata_mut()
                    .insert("authorization", format!("Bearer {token}").parse().unwrap());
                Ok(req)
            });
        // Pods i with i % AGENTS == a live on this node.
        let pods: Vec<PodState> = (0..PODS)
            .filter(|i| i % AGENTS == a)
            .map(|i| pod(i, &vcs[i / per_vc], i % per_vc == 0, true))
            .collect();
        let (tx, rx) = mpsc::channel(16);
        tx.send(NodeReport {
            node_name: node.clone(),
            agent_version: "bench".into(),
            sequence: 1,
            body: Some(Body::Snapshot(NodeSnapshot {
                pods,
                errors: vec![],
            })),
        })
        .await
        .unwrap();
        let mut acks = c
            .report(ReceiverStream::new(rx))
            .await
            .expect("report stream")
            .into_inner();
        tokio::spawn(async move { while let Some(Ok(_)) = acks.next().await {} });
        agents.push(SimAgent { node, tx, seq: 1 });
    }

    // Wait for the fleet to be scored at full size.
    let vchs = Api::<VClusterHealth>::namespaced(client.clone(), "default");
    let start = Instant::now();
    loop {
        let s = vchs
            .get("fleet")
            .await
            .unwrap()
            .status
            .and_then(|s| s.summary);
        if s.as_ref()
            .is_some_and(|s| s.total == VCLUSTERS as i32 && s.full == VCLUSTERS as i32)
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "fleet not scored: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "[bench-health] fleet scored ({VCLUSTERS} Full) after {:.1}s",
        start.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_kib = rss(agg.process.pid());

    // Flip one control-plane pod's readiness and time the status write that shows it.
    let mut watch = watcher(vchs.clone(), watcher::Config::default())
        .applied_objects()
        .boxed();
    let mut latencies = Vec::new();
    for flip in 0..flips {
        // Each control-plane pod goes not-ready, then ready again: every flip is a change.
        let i = ((flip / 2) * 7 % VCLUSTERS) * per_vc;
        let vc = &vcs[i / per_vc];
        let ready = !flip.is_multiple_of(2);
        let agent = &mut agents[i % AGENTS];
        agent.seq += 1;
        let sent = Instant::now();
        agent
            .tx
            .send(NodeReport {
                node_name: agent.node.clone(),
                agent_version: "bench".into(),
                sequence: agent.seq,
                body: Some(Body::Delta(NodeDelta {
                    upserted: vec![pod(i, vc, true, ready)],
                    ..Default::default()
                })),
            })
            .await
            .unwrap();
        loop {
            let obj = tokio::time::timeout(Duration::from_secs(30), watch.next())
                .await
                .expect("a status write")
                .unwrap()
                .unwrap();
            let seen = obj.status.iter().flat_map(|s| &s.sync_coverage).any(|c| {
                c.namespace == vc.namespace
                    && c.cluster_name == vc.name
                    && c.control_plane_ready == ready
            });
            if seen {
                break;
            }
        }
        latencies.push(sent.elapsed().as_secs_f64() * 1000.0);
        // Let the next flip start from a quiet state.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let rss_after_kib = rss(agg.process.pid());
    latencies.sort_by(|a, b| a.total_cmp(b));
    println!(
        "fleetmirror-aggregator benchmark: {VCLUSTERS} vClusters, {PODS} synced pods from {AGENTS} agents"
    );
    println!(
        "  pod readiness change -> status write: median {:.0} ms, max {:.0} ms over {flips} flips (target < 1 s)",
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1]
    );
    println!(
        "  aggregator resident memory: {:.1} MiB once scored, {:.1} MiB after the flips (target < 64 MiB)",
        rss_kib as f64 / 1024.0,
        rss_after_kib as f64 / 1024.0
    );
    drop(agents);
}
