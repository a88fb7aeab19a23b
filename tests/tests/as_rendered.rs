//! Each binary started **the way its rendered manifest runs it** (`fleetmirror_tests::pod`): the
//! agent DaemonSet and the aggregator Deployment of `deploy/install.yaml`, and of `helm
//! template` for every layout combination the chart offers, each in a container of its own
//! with a read-only root, only the manifest's volumes writable, its exact environment, user
//! and in-cluster credentials (cluster 1, where install.yaml's RBAC is applied).
//!
//! Before the fix these tests were written for, the agent created the root of a layout that
//! was not enabled (`/tmp/vcluster`) and crash-looped on every real cluster with "Read-only
//! file system"; only host processes with a writable filesystem had ever been tested.

use std::path::PathBuf;
use std::sync::Once;
use std::time::Duration;

use fleetmirror_tests::cluster::{ControlPlane, namespace};
use fleetmirror_tests::footprint::{AnnotationStyle, VCluster, create, create_running_pod};
use fleetmirror_tests::node::NodeSandbox;
use fleetmirror_tests::pod::{NAMESPACE, PodContext, PodProcess, Rendered, apply_install_yaml};
use fleetmirror_tests::{eventually, suffix};
use k8s_openapi::api::core::v1::PodSpec;

const CLUSTER: usize = 1;
const WAIT: Duration = Duration::from_secs(30);

fn install() -> &'static ControlPlane {
    static APPLIED: Once = Once::new();
    let cp = ControlPlane::shared();
    APPLIED.call_once(|| apply_install_yaml(cp, CLUSTER));
    cp
}

/// The effective uid and the effective capability mask of a process.
fn credentials(pid: u32) -> (u32, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("{name} in /proc/{pid}/status"))
            .split_whitespace()
            .collect::<Vec<_>>()
    };
    let uid = field("Uid:")[1].parse().unwrap();
    let caps = u64::from_str_radix(field("CapEff:")[0], 16).unwrap();
    (uid, caps)
}

/// Starts the agent of `rendered` on a node of its own with one synced vCluster pod, and checks
/// that it becomes ready and that its binds reach the node (the host) at exactly the `layouts`
/// it enables, through the DaemonSet's Bidirectional volumes, and nothing else.
async fn agent_as_rendered(rendered: Rendered, layouts: &[&str]) {
    let spec = rendered.pod_spec("DaemonSet", "fleetmirror-agent");
    agent_runs(&rendered.label, &spec, layouts, true).await;
}

/// Runs the agent of `spec` (see [`agent_as_rendered`]); its binds must reach the node exactly
/// when `reach_host`, and always be visible inside its container.
async fn agent_runs(label: &str, spec: &PodSpec, layouts: &[&str], reach_host: bool) {
    let cp = install();
    let client = cp.client(CLUSTER).await;
    let ns = namespace(&client, "as-rendered").await;
    let node = NodeSandbox::shared_host(&format!("node-{}", suffix()));
    let vc = VCluster::new(&ns, &format!("vc-{}", suffix()));
    create(&client, &vc.statefulset()).await;
    let synced = vc.synced_pod("default", "web-0", &node.name, AnnotationStyle::Classic);
    let pod = create_running_pod(&client, &synced.pod, true).await;
    let uid = pod.metadata.uid.clone().unwrap();
    node.create_pod_dir(&uid);

    let ctx = PodContext {
        cp,
        cluster: CLUSTER,
        namespace: NAMESPACE.into(),
        pod_name: format!("fleetmirror-agent-{}", suffix()),
        node: Some(&node),
        node_name: node.name.clone(),
    };
    let mut agent = PodProcess::start(&ctx, spec).await;
    agent.wait_ready(WAIT);
    let (uid0, caps) = credentials(agent.process.pid());
    assert_eq!(uid0, 0, "{}: the agent runs as root", label);
    assert_eq!(
        caps,
        1 << 21,
        "{}: the agent keeps CAP_SYS_ADMIN only",
        label
    );

    let vuid = &synced.virtual_uid;
    for layout in layouts {
        let target: PathBuf = match *layout {
            "loft" => node
                .loft_root
                .join(&vc.name)
                .join("kubelet/pods")
                .join(vuid),
            "loft-flat" => node.loft_root.join(&vc.name).join("pods").join(vuid),
            "vcluster-hostpath" => node
                .hostpath_root
                .join(&ns)
                .join(&vc.name)
                .join("kubelet/pods")
                .join(vuid),
            other => panic!("unknown layout {other}"),
        };
        // Host paths are mounted at the same paths in the container.
        let in_container = PathBuf::from(format!("/proc/{}/root", agent.process.pid()))
            .join(target.strip_prefix(&node.base).unwrap())
            .join("hello");
        let on_host = node.inside(&target).join("hello");
        let hello = format!("pod {uid}");
        let what = format!("{label}: the {layout} bind at {}", target.display());
        eventually(WAIT, &what, || async {
            (std::fs::read_to_string(&in_container).ok()? == hello).then_some(())
        })
        .await;
        if reach_host {
            eventually(WAIT, &format!("{what}, seen on the host"), || async {
                (std::fs::read_to_string(&on_host).ok()? == hello).then_some(())
            })
            .await;
            // One-way on the host too: a slave, never a peer of kubelet's tree.
            let table = node.mounts();
            let kubelet = table.containing(&node.kubelet_root.join("pods")).unwrap();
            let bind = table.at(&target).unwrap();
            assert!(
                bind.is_slave() && bind.peer_group() != kubelet.peer_group(),
                "{what}, on the host: {:?}",
                bind.optional
            );
        } else {
            // Propagation is synchronous: had it been set up, the host would see it already.
            assert!(
                std::fs::read_to_string(&on_host).is_err(),
                "{what}: reached the host without Bidirectional propagation"
            );
        }
    }
    let empty = |root: &PathBuf| {
        std::fs::read_dir(node.inside(root))
            .map(|mut d| d.next().is_none())
            .unwrap_or(true)
    };
    if !layouts.iter().any(|l| l.starts_with("loft")) {
        assert!(
            empty(&node.loft_root),
            "{}: the loft root is not ours",
            label
        );
    }
    if !layouts.contains(&"vcluster-hostpath") {
        assert!(
            empty(&node.hostpath_root),
            "{}: the vcluster-hostpath root is not ours",
            label
        );
    }
    assert!(agent.process.is_running(), "{}", agent.process.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_agent_of_install_yaml_runs_with_a_read_only_root() {
    agent_as_rendered(Rendered::install_yaml(), &["loft"]).await;
}

/// Kernels before 5.12 (no `mount_setattr`, no `openat2`): the classic calls, with binds
/// prepared in the DaemonSet's staging emptyDir, reach the host as slaves just the same.
#[tokio::test(flavor = "multi_thread")]
async fn the_agent_of_install_yaml_runs_on_kernels_before_5_12() {
    let rendered = Rendered::install_yaml();
    let mut spec = rendered.pod_spec("DaemonSet", "fleetmirror-agent");
    spec.containers[0]
        .env
        .get_or_insert_default()
        .push(k8s_openapi::api::core::v1::EnvVar {
            name: "FLEETMIRROR_MOUNT_API".into(),
            value: Some("classic".into()),
            ..Default::default()
        });
    agent_runs("install.yaml, classic mount calls", &spec, &["loft"], true).await;
}

/// The test above can fail: the same DaemonSet with `HostToContainer` instead of
/// `Bidirectional` on the loft root mounts inside its container only, which the host (and
/// Velero there) never sees.
#[tokio::test(flavor = "multi_thread")]
async fn without_bidirectional_propagation_the_binds_stay_in_the_container() {
    let rendered = Rendered::install_yaml();
    let mut spec = rendered.pod_spec("DaemonSet", "fleetmirror-agent");
    let mounts = spec.containers[0].volume_mounts.as_mut().unwrap();
    let loft = mounts
        .iter_mut()
        .find(|m| m.mount_path == "/var/lib/loft")
        .expect("the loft root volume");
    loft.mount_propagation = Some("HostToContainer".into());
    agent_runs(
        "install.yaml with HostToContainer on /var/lib/loft",
        &spec,
        &["loft"],
        false,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_agent_runs_for_every_layout_combination_of_the_chart() {
    let combinations: [&[&str]; 7] = [
        &["loft"],
        &["loft-flat"],
        &["vcluster-hostpath"],
        &["loft", "loft-flat"],
        &["loft", "vcluster-hostpath"],
        &["loft-flat", "vcluster-hostpath"],
        &["loft", "loft-flat", "vcluster-hostpath"],
    ];
    futures::future::join_all(combinations.iter().map(|layouts| {
        let set = format!("agent.mountLayouts={{{}}}", layouts.join(","));
        agent_as_rendered(Rendered::helm(&[&set]), layouts)
    }))
    .await;
}

async fn aggregator_as_rendered(rendered: Rendered) {
    let cp = install();
    let spec = rendered.pod_spec("Deployment", "fleetmirror-aggregator");
    let ctx = PodContext {
        cp,
        cluster: CLUSTER,
        namespace: NAMESPACE.into(),
        pod_name: format!("fleetmirror-aggregator-{}", suffix()),
        node: None,
        node_name: "node-a".into(),
    };
    let mut aggregator = PodProcess::start(&ctx, &spec).await;
    aggregator.wait_ready(WAIT);
    let (uid, caps) = credentials(aggregator.process.pid());
    assert_eq!(uid, 65532, "{}: runAsUser", rendered.label);
    assert_eq!(caps, 0, "{}: no capabilities", rendered.label);
    // Its admin and gRPC ports are the manifest's.
    let admin = aggregator.ports["admin"];
    let (code, body) = aggregator.get(admin, "/metrics").unwrap();
    assert_eq!(code, 200);
    assert!(body.contains("fleetmirror_build_info"), "{body}");
    assert!(
        aggregator.process.is_running(),
        "{}",
        aggregator.process.log()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_aggregator_of_install_yaml_runs_as_non_root_with_a_read_only_root() {
    aggregator_as_rendered(Rendered::install_yaml()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_aggregator_running_only_the_health_controller_runs_as_rendered() {
    aggregator_as_rendered(Rendered::helm(&["aggregator.controllers={health}"])).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_single_unelected_aggregator_watching_pods_runs_as_rendered() {
    aggregator_as_rendered(Rendered::helm(&[
        "aggregator.replicas=1",
        "aggregator.leaderElect=false",
        "aggregator.podSource=api",
    ]))
    .await;
}

/// The TLS variant of the chart: the aggregator reads its certificate, key and CA from the
/// mounted Secret, the agent only the CA; both start from their rendered environment.
#[tokio::test(flavor = "multi_thread")]
async fn the_tls_variant_runs_as_rendered() {
    let cp = install();
    let client = cp.client(CLUSTER).await;
    let dir = std::env::temp_dir().join(format!("fleetmirror-rendered-tls-{}", suffix()));
    let certs = fleetmirror_tests::tls::TestCerts::make(
        &dir,
        &["fleetmirror-aggregator.fleetmirror-system.svc"],
        &[],
    );
    let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "fleetmirror-grpc-tls", "namespace": NAMESPACE},
        "type": "kubernetes.io/tls",
        "stringData": {
            "tls.crt": std::fs::read_to_string(&certs.cert).unwrap(),
            "tls.key": std::fs::read_to_string(&certs.key).unwrap(),
            "ca.crt": std::fs::read_to_string(&certs.ca).unwrap(),
        },
    }))
    .unwrap();
    let secrets = kube::Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client, NAMESPACE);
    let _ = secrets
        .delete("fleetmirror-grpc-tls", &Default::default())
        .await;
    secrets
        .create(&kube::api::PostParams::default(), &secret)
        .await
        .unwrap();
    let rendered = Rendered::helm(&["grpc.tls.enabled=true", "grpc.diagnosticsAuth=token"]);
    let (agent, aggregator) = tokio::join!(
        agent_as_rendered(rendered.clone(), &["loft"]),
        aggregator_as_rendered(rendered)
    );
    let _ = (agent, aggregator);
    std::fs::remove_dir_all(&dir).ok();
}
