//! The agent's mounts end to end: real API server, real aggregator, the real agent in a fake
//! node's private mount namespace (NodeSandbox), real bind mounts.

use std::path::{Path, PathBuf};
use std::time::Duration;

use fleetmirror_proto::v1::diagnostics_client::DiagnosticsClient;
use fleetmirror_proto::v1::{GetNodeRequest, MountPhase, PodState};
use fleetmirror_tests::cluster::{ControlPlane, namespace};
use fleetmirror_tests::eventually;
use fleetmirror_tests::footprint::{AnnotationStyle, VCluster, create, create_running_pod};
use fleetmirror_tests::node::NodeSandbox;
use fleetmirror_tests::process::{Agent, Aggregator, AggregatorConfig};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams};

const WAIT: Duration = Duration::from_secs(30);

/// Deletes at once: a pod bound to a node otherwise waits (deletionTimestamp set) for a
/// kubelet to confirm, and there is none here. Until the object is gone the agent keeps the
/// pod mounted, since its containers may still run.
fn gone() -> DeleteParams {
    DeleteParams::default().grace_period(0)
}

fn uid(p: &Pod) -> String {
    p.metadata.uid.clone().unwrap()
}

fn vuid(p: &Pod) -> String {
    p.metadata.annotations.as_ref().unwrap()["vcluster.loft.sh/uid"].clone()
}

fn loft_target(node: &NodeSandbox, vc: &str, vuid: &str) -> PathBuf {
    node.loft_root.join(vc).join("kubelet/pods").join(vuid)
}

fn source(node: &NodeSandbox, uid: &str) -> PathBuf {
    node.kubelet_root.join("pods").join(uid)
}

async fn node_pods(url: &str, node: &str) -> Option<Vec<PodState>> {
    let mut c = DiagnosticsClient::new(fleetmirror_tests::channel(url).await);
    Some(
        c.get_node(GetNodeRequest { name: node.into() })
            .await
            .ok()?
            .into_inner()
            .pods,
    )
}

async fn mount_states(
    url: &str,
    node: &str,
    host_uid: &str,
) -> Option<Vec<(String, MountPhase, String)>> {
    let pods = node_pods(url, node).await?;
    let pod = pods.into_iter().find(|p| p.host_uid == host_uid)?;
    Some(
        pod.mounts
            .iter()
            .map(|m| (m.layout.clone(), m.phase(), m.reason.clone()))
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn pods_are_mounted_at_every_layout_reported_and_unmounted_when_deleted() {
    mounted_reported_unmounted("auto").await;
}

/// The same on the classic path (kernels before 5.12, or the new mount API refused).
#[tokio::test(flavor = "multi_thread")]
async fn the_classic_mount_path_mounts_reports_and_unmounts_the_same() {
    mounted_reported_unmounted("classic").await;
}

async fn mounted_reported_unmounted(mount_api: &str) {
    let cp = ControlPlane::shared();
    let client = cp.client(0).await;
    let ns = namespace(&client, "mounts").await;
    let node = NodeSandbox::new(&format!("node-{}", fleetmirror_tests::suffix()));
    let name = format!("vc-{}", fleetmirror_tests::suffix());
    let vc = VCluster::new(&ns, &name);
    let synced = vc.create_complete(&client, &node.name).await;
    for p in &synced {
        node.create_pod_dir(&uid(p));
    }
    let agg = Aggregator::start(cp, 0, AggregatorConfig::new(&ns));
    node.issue_token(&client, &ns).await;
    let agent = Agent::start(
        cp,
        0,
        &node,
        Some(&agg.grpc_url()),
        &[
            "--mount-layout=loft,loft-flat,vcluster-hostpath".into(),
            format!("--mount-api={mount_api}"),
        ],
    );

    for p in &synced {
        let (u, v) = (uid(p), vuid(p));
        let targets = [
            loft_target(&node, &name, &v),
            node.loft_root.join(&name).join("pods").join(&v),
            node.hostpath_root
                .join(&ns)
                .join(&name)
                .join("kubelet/pods")
                .join(&v),
        ];
        for t in &targets {
            eventually(WAIT, &format!("{} mounted", t.display()), || async {
                node.mounts()
                    .is_bind_of(t, &source(&node, &u))
                    .then_some(())
            })
            .await;
            let hello = std::fs::read_to_string(node.inside(&t.join("hello"))).unwrap();
            assert_eq!(
                hello,
                format!("pod {u}"),
                "the pod's files through {}",
                t.display()
            );
        }
    }

    // A volume mounted inside the pod directory after the bind shows through the target.
    let (u, v) = (uid(&synced[1]), vuid(&synced[1]));
    let vol = source(&node, &u).join("volumes/data");
    std::fs::create_dir_all(&vol).unwrap();
    node.run(&["mount", "-t", "tmpfs", "tmpfs", &vol.display().to_string()]);
    node.run(&["sh", "-c", &format!("echo later > {}/file", vol.display())]);
    assert_eq!(
        std::fs::read_to_string(
            node.inside(&loft_target(&node, &name, &v).join("volumes/data/file"))
        )
        .unwrap(),
        "later\n"
    );

    // The aggregator shows the node's pods and their mount states.
    let url = agg.grpc_url();
    eventually(WAIT, "every layout MOUNTED in GetNode", || async {
        let states = mount_states(&url, &node.name, &u).await?;
        (states.len() == 3 && states.iter().all(|(_, p, _)| *p == MountPhase::Mounted))
            .then_some(())
    })
    .await;
    let pods = node_pods(&url, &node.name).await.unwrap();
    let cp_pod = pods
        .iter()
        .find(|p| p.control_plane)
        .expect("the control-plane pod is reported");
    assert!(
        cp_pod.ready && cp_pod.mounts.is_empty(),
        "reported for readiness, never mounted"
    );
    let tenant = pods.iter().find(|p| p.host_uid == u).unwrap();
    assert_eq!(
        (
            tenant.vcluster.as_str(),
            tenant.virtual_namespace.as_str(),
            tenant.virtual_uid.as_str()
        ),
        (name.as_str(), "default", v.as_str())
    );
    assert!(tenant.ready);

    // Deleting the pod unmounts (lazily) and removes the target.
    node.run(&["umount", &vol.display().to_string()]);
    Api::<Pod>::namespaced(client.clone(), &ns)
        .delete(synced[1].metadata.name.as_deref().unwrap(), &gone())
        .await
        .unwrap();
    let t = loft_target(&node, &name, &v);
    eventually(
        WAIT,
        "the deleted pod's target unmounted and removed",
        || async { (node.mounts().at(&t).is_none() && !node.inside(&t).exists()).then_some(()) },
    )
    .await;
    assert!(
        node.mounts().is_bind_of(
            &loft_target(&node, &name, &vuid(&synced[0])),
            &source(&node, &uid(&synced[0]))
        ),
        "the other pod stays mounted"
    );
    assert!(
        agent
            .metric("fleetmirror_agent_reconcile_passes_total")
            .unwrap()
            >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn restarts_keep_and_adopt_mounts_clean_up_missed_deletes_and_leave_foreign_mounts_alone() {
    let cp = ControlPlane::shared();
    let client = cp.client(0).await;
    let ns = namespace(&client, "restart").await;
    let node = NodeSandbox::new(&format!("node-{}", fleetmirror_tests::suffix()));
    let name = format!("vc-{}", fleetmirror_tests::suffix());
    let vc = VCluster::new(&ns, &name);
    let synced = vc.create_complete(&client, &node.name).await;
    for p in &synced {
        node.create_pod_dir(&uid(p));
    }
    let mut agent = Agent::start(cp, 0, &node, None, &[]);
    let targets: Vec<PathBuf> = synced
        .iter()
        .map(|p| loft_target(&node, &name, &vuid(p)))
        .collect();
    for (p, t) in synced.iter().zip(&targets) {
        eventually(WAIT, "mounted", || async {
            node.mounts()
                .is_bind_of(t, &source(&node, &uid(p)))
                .then_some(())
        })
        .await;
    }

    // A graceful stop leaves the mounts in place.
    assert!(
        agent.process.terminate().success(),
        "{}",
        agent.process.log()
    );
    for t in &targets {
        assert!(
            node.mounts().at(t).is_some(),
            "graceful shutdown must not unmount {}",
            t.display()
        );
    }
    // While the agent is down: a pod is deleted, and someone else mounts at a path of our shape.
    Api::<Pod>::namespaced(client.clone(), &ns)
        .delete(synced[0].metadata.name.as_deref().unwrap(), &gone())
        .await
        .unwrap();
    let foreign = loft_target(&node, "other", &fleetmirror_tests::random_uuid());
    std::fs::create_dir_all(&foreign).unwrap();
    let elsewhere = node.base.join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    node.run(&[
        "mount",
        "--bind",
        &elsewhere.display().to_string(),
        &foreign.display().to_string(),
    ]);
    let count_at = |t: &Path| {
        node.mounts()
            .entries()
            .iter()
            .filter(|e| e.mount_point == t)
            .count()
    };
    assert_eq!(count_at(&targets[1]), 1);

    let _agent = Agent::start(cp, 0, &node, None, &[]);
    eventually(
        WAIT,
        "the pod deleted while the agent was down is unmounted",
        || async { node.mounts().at(&targets[0]).is_none().then_some(()) },
    )
    .await;
    assert_eq!(
        count_at(&targets[1]),
        1,
        "the surviving mount is adopted, not mounted again"
    );
    assert!(
        node.mounts().at(&foreign).is_some(),
        "a mount we did not make is left alone"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_pods_are_refused_with_a_reason_and_nothing_is_mounted() {
    let cp = ControlPlane::shared();
    let client = cp.client(0).await;
    let ns = namespace(&client, "hostile").await;
    let other_ns = namespace(&client, "intruder").await;
    let third_ns = namespace(&client, "twin").await;
    let node = NodeSandbox::new(&format!("node-{}", fleetmirror_tests::suffix()));
    let name = format!("vc-{}", fleetmirror_tests::suffix());
    let vc = VCluster::new(&ns, &name);
    for p in vc.create_complete(&client, &node.name).await {
        node.create_pod_dir(&uid(&p));
    }
    // A younger vCluster of the same name in another namespace.
    tokio::time::sleep(Duration::from_millis(1100)).await; // creationTimestamp has 1 s resolution
    let twin = VCluster::new(&third_ns, &name);
    create(&client, &twin.statefulset()).await;

    let mut cases: Vec<(&str, Pod)> = Vec::new();
    let mut bad_label = vc
        .synced_pod("default", "bad-label", &node.name, AnnotationStyle::Classic)
        .pod;
    bad_label.metadata.labels.as_mut().unwrap().insert(
        "vcluster.loft.sh/managed-by".into(),
        "Not_A-Dns.Label".into(),
    );
    cases.push(("managed-by", bad_label));
    for (name, value) in [
        ("dotdot", "../../../etc"),
        ("empty", ""),
        ("not-uuid", "12345"),
    ] {
        let mut p = vc
            .synced_pod("default", name, &node.name, AnnotationStyle::Classic)
            .pod;
        p.metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert("vcluster.loft.sh/uid".into(), value.into());
        cases.push(("virtual pod UID", p));
    }
    let intruder = VCluster::new(&other_ns, &name)
        .synced_pod("default", "sneaky", &node.name, AnnotationStyle::Classic)
        .pod;
    cases.push(("control plane is in", intruder));
    let twin_pod = twin
        .synced_pod("default", "twin-pod", &node.name, AnnotationStyle::Object)
        .pod;
    cases.push(("already owns", twin_pod));
    let planted = vc.synced_pod("default", "planted", &node.name, AnnotationStyle::Classic);
    cases.push(("symlink", planted.pod.clone()));
    // Another node's pod is never seen.
    let elsewhere = vc
        .synced_pod(
            "default",
            "elsewhere",
            "some-other-node",
            AnnotationStyle::Classic,
        )
        .pod;

    let mut created = Vec::new();
    for (needle, pod) in &cases {
        let p = create_running_pod(&client, pod, true).await;
        node.create_pod_dir(&uid(&p));
        created.push((*needle, p));
    }
    let other = create_running_pod(&client, &elsewhere, true).await;
    node.create_pod_dir(&uid(&other));
    // The planted symlink: where `planted`'s target directory should be.
    let bait = node.base.join("bait");
    std::fs::create_dir_all(&bait).unwrap();
    let planted_target = loft_target(&node, &name, &planted.virtual_uid);
    std::fs::create_dir_all(planted_target.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(&bait, &planted_target).unwrap();

    let agg = Aggregator::start(cp, 0, AggregatorConfig::new(&ns));
    node.issue_token(&client, &ns).await;
    let _agent = Agent::start(cp, 0, &node, Some(&agg.grpc_url()), &[]);
    let url = agg.grpc_url();
    for (needle, p) in &created {
        let u = uid(p);
        let states = eventually(WAIT, &format!("a refusal for {needle}"), || async {
            let s = mount_states(&url, &node.name, &u).await?;
            s.iter()
                .any(|(_, phase, _)| matches!(phase, MountPhase::Failed | MountPhase::Conflict))
                .then_some(s)
        })
        .await;
        let (_, phase, reason) = &states[0];
        assert!(reason.contains(needle), "{needle}: {phase:?} {reason}");
    }
    let pods = node_pods(&url, &node.name).await.unwrap();
    assert!(
        !pods.iter().any(|p| p.host_uid == uid(&other)),
        "another node's pod is never seen"
    );

    // Nothing but the complete footprint's own two pods is mounted anywhere under our roots.
    let ours: Vec<PathBuf> = node
        .mounts()
        .entries()
        .iter()
        .map(|e| e.mount_point.clone())
        .filter(|m| {
            m.starts_with(&node.loft_root)
                || m.starts_with(&node.hostpath_root)
                || m.starts_with(&bait)
        })
        .collect();
    assert_eq!(
        ours.len(),
        2,
        "only the two legitimate pods are mounted: {ours:?}"
    );
    assert!(
        std::fs::read_dir(&bait).unwrap().next().is_none(),
        "nothing was written through the planted symlink"
    );
}

/// Reconcile passes the agent runs over 10 s.
async fn passes_over_ten_seconds(agent: &Agent) -> f64 {
    let passes = || {
        agent
            .metric("fleetmirror_agent_reconcile_passes_total")
            .unwrap_or(0.0)
    };
    let before = passes();
    tokio::time::sleep(Duration::from_secs(10)).await;
    passes() - before
}

/// A refused bind is retried with backoff; once its target needs no bind any more (here it
/// became somebody else's mount) nothing is left to retry, and a quiet node runs only its
/// periodic safety-net pass (this once spun ~3 500 passes a second). A control plane of its
/// own: the agent watches vCluster control planes cluster-wide, so other tests' objects would
/// be real triggers.
#[tokio::test(flavor = "multi_thread")]
async fn a_quiet_node_runs_no_passes_even_after_a_refusal() {
    let dedicated = ControlPlane::dedicated("quiet");
    let cp = &dedicated;
    let client = cp.client(0).await;
    let ns = namespace(&client, "quiet").await;
    let node = NodeSandbox::new(&format!("node-{}", fleetmirror_tests::suffix()));
    let name = format!("vc-{}", fleetmirror_tests::suffix());
    let vc = VCluster::new(&ns, &name);
    let synced = vc.create_complete(&client, &node.name).await;
    for p in &synced {
        node.create_pod_dir(&uid(p));
    }
    let agent = Agent::start(cp, 0, &node, None, &[]);
    let first = loft_target(&node, &name, &vuid(&synced[0]));
    eventually(WAIT, "the healthy pods mounted", || async {
        node.mounts().at(&first).map(|_| ())
    })
    .await;
    let quiet = passes_over_ten_seconds(&agent).await;
    assert!(quiet <= 2.0, "{quiet} passes in 10 s on a quiet node");

    // A pod whose target is a planted symlink: refused, retried with backoff.
    let planted = vc.synced_pod("default", "planted", &node.name, AnnotationStyle::Classic);
    let target = loft_target(&node, &name, &planted.virtual_uid);
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    let bait = node.base.join("bait");
    std::fs::create_dir_all(&bait).unwrap();
    std::os::unix::fs::symlink(&bait, &target).unwrap();
    let p = create_running_pod(&client, &planted.pod, true).await;
    node.create_pod_dir(&uid(&p));
    eventually(WAIT, "the symlink refused", || async {
        agent
            .process
            .log()
            .contains("is a symlink or not a directory")
            .then_some(())
    })
    .await;
    // The target becomes a foreign mount: nothing to retry any more.
    std::fs::remove_file(&target).unwrap();
    std::fs::create_dir(&target).unwrap();
    node.run(&[
        "mount",
        "-t",
        "tmpfs",
        "foreign",
        &target.display().to_string(),
    ]);
    eventually(WAIT, "the foreign mount seen and left alone", || async {
        agent.process.log().contains("left alone").then_some(())
    })
    .await;
    let after = passes_over_ten_seconds(&agent).await;
    assert!(
        after <= 2.0,
        "{after} passes in 10 s after the target became a foreign mount"
    );
}
