//! The chart as shipped, on a real node (kubelet + containerd + kube-proxy, see
//! `tests/src/realnode.rs`): what schema validation and impersonation cannot show.
//!
//! `deploy/install.yaml` is applied unchanged (only its PodDisruptionBudget is left out:
//! policy/v1 postdates the 1.20 API server), with the product image built from the
//! `Containerfile` under the chart's default reference. Then, phase by phase:
//!
//! 1. both aggregator replicas and the agent DaemonSet become Ready;
//! 2. a vCluster's host footprint with real pods: its control plane (a StatefulSet kubelet
//!    runs), Services, a tenant pod with an emptyDir, a configMap and a projected token, and a
//!    system pod whose Secret volume kubelet can only mount later; a Velero node-agent stand-in
//!    mounts `/var/lib/loft/<vc>/kubelet/pods` as a hostPath (HostToContainer, as Velero does)
//!    and prints, five times a second, what it reads there by virtual UID;
//! 3. the stand-in reads the file the tenant pod wrote into its emptyDir; the configMap and
//!    the token are there too;
//! 4. the Secret volume kubelet mounts after the agent's bind appears through it;
//! 5. `kubectl get vclusterhealth` scores the real pods 100/Full with every pod mounted;
//! 6. `kubectl rollout restart` of the DaemonSet: the stand-in never loses a file;
//! 7. deleting the leader aggregator pod: another replica leads (the standby, or the
//!    Deployment's replacement if it takes the released Lease first), VClusterHealth stays
//!    100/Full throughout and is written again by the new leader;
//! 8. deleting the tenant pod: kubelet cleans up, the agent's mount and directory go;
//! 9. the chart copied with the loft root's `mountPropagation` set wrong (HostToContainer): the
//!    agent still mounts, in its own container only, and the same stand-in check fails —
//!    the check can fail;
//! 10. the node goes down and nothing of it is left: no process, mount, bridge, KUBE-* chain
//!     or cgroup, every sysctl and `/`'s propagation as they were.
//!
//! A second test runs `scripts/demo.sh --real-node --check` (the chart installed with `helm
//! install`, as a user would) and checks the same teardown. The two take turns: one kubelet
//! per machine.

use std::time::{Duration, Instant};

use fleetmirror_core::naming;
use fleetmirror_tests::fleet;
use fleetmirror_tests::pod::{NAMESPACE, Rendered};
use fleetmirror_tests::realnode::{
    BUSYBOX, RealNode, host_mount_id, host_settings, mount_id, rollout_status,
};
use fleetmirror_tests::{eventually, random_uuid, repo_root};
use serde_json::{Value, json};

const VC: &str = "vc1";
const READY: Duration = Duration::from_secs(180);

fn apply_docs(node: &RealNode, docs: &[serde_yaml::Value]) {
    let text: Vec<String> = docs
        .iter()
        .map(|d| serde_yaml::to_string(d).unwrap())
        .collect();
    node.kubectl_in(
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager=fleetmirror-test",
            "-f",
            "-",
        ],
        Some(&text.join("---\n")),
    );
}

fn create(node: &RealNode, obj: &Value) {
    node.kubectl_in(&["create", "-f", "-"], Some(&obj.to_string()));
}

/// A synced vCluster pod as vCluster's syncer leaves it on the host.
fn synced_pod(ns: &str, vns: &str, vname: &str, vuid: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": naming::host_name(vname, vns, VC), "namespace": ns,
            "labels": {naming::LABEL_MANAGED_BY: VC, naming::LABEL_NAMESPACE: vns},
            "annotations": {
                naming::ANNOTATION_UID: vuid, naming::ANNOTATION_NAME: vname,
                naming::ANNOTATION_NAMESPACE: vns,
            },
        },
        "spec": spec,
    })
}

fn busybox(script: &str, mounts: Value) -> Value {
    json!({
        "name": "main", "image": BUSYBOX, "imagePullPolicy": "Never",
        "command": ["sh", "-c", script], "volumeMounts": mounts,
    })
}

/// The tenant pod: writes `hello-<vuid>` into its emptyDir, has a configMap and a projected
/// ServiceAccount token volume.
fn tenant_pod(ns: &str, vname: &str, vuid: &str) -> Value {
    synced_pod(
        ns,
        "default",
        vname,
        vuid,
        json!({
            "terminationGracePeriodSeconds": 1,
            "containers": [busybox(
                &format!("echo hello-{vuid} > /data/hello && exec sleep 3600"),
                json!([
                    {"name": "data", "mountPath": "/data"},
                    {"name": "config", "mountPath": "/config"},
                    {"name": "token", "mountPath": "/token"},
                ]),
            )],
            "volumes": [
                {"name": "data", "emptyDir": {}},
                {"name": "config", "configMap": {"name": "web-config"}},
                {"name": "token", "projected": {"sources": [
                    {"serviceAccountToken": {"path": "token", "audience": "vcluster", "expirationSeconds": 3600}},
                ]}},
            ],
        }),
    )
}

const HELLO: &str = "volumes/kubernetes.io~empty-dir/data/hello";
const LATE: &str = "volumes/kubernetes.io~secret/late/key";

/// The Velero node-agent stand-in: hostPath `/var/lib/loft/<vc>/kubelet/pods` (as Velero is
/// configured with `nodeAgent.podVolumePath`), HostToContainer like Velero's, printing
/// `check a=<file a or MISSING> b=<file b or MISSING>` five times a second.
fn standin(ns: &str, name: &str, a: &str, b: &str) -> Value {
    let script = format!(
        "while true; do \
           a=$(cat /host_pods/{a} 2>/dev/null || echo MISSING); \
           b=$(cat /host_pods/{b} 2>/dev/null || echo MISSING); \
           echo \"check a=$a b=$b\"; sleep 0.2; \
         done"
    );
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "standin", "image": BUSYBOX, "imagePullPolicy": "Never",
                "command": ["sh", "-c", script],
                "volumeMounts": [{"name": "pods", "mountPath": "/host_pods", "mountPropagation": "HostToContainer"}],
            }],
            "volumes": [{"name": "pods", "hostPath": {"path": format!("/var/lib/loft/{VC}/kubelet/pods"), "type": "DirectoryOrCreate"}}],
        },
    })
}

/// The stand-in's checks so far: (a, b).
fn checks(node: &RealNode, ns: &str, name: &str) -> Vec<(String, String)> {
    node.container_log(ns, name, "standin")
        .iter()
        .filter_map(|l| {
            let rest = l.strip_prefix("check a=")?;
            let (a, b) = rest.split_once(" b=")?;
            Some((a.to_owned(), b.to_owned()))
        })
        .collect()
}

/// Whether the host has a mount at `path` (its own mount table).
fn host_mount(path: &str) -> bool {
    host_mount_id(path).is_some()
}

/// The agent container's process (there is one agent: one node).
fn agent_pid() -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        (cmd.split(|b| *b == 0).next()? == b"fleetmirror-agent").then_some(pid)
    })
}

fn wait_default_service_account(node: &RealNode, ns: &str) {
    let start = Instant::now();
    // kube-controller-manager creates it and its token Secret; pods are refused before.
    while !node
        .try_kubectl(
            &[
                "get",
                "sa",
                "default",
                "-n",
                ns,
                "-o",
                "jsonpath={.secrets[0].name}",
            ],
            None,
        )
        .1
        .starts_with("default-token")
    {
        assert!(
            start.elapsed() < READY,
            "no default ServiceAccount token in {ns}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The Lease's holder; None when kubectl could not tell (a failed read is no answer).
fn lease_holder(node: &RealNode) -> Option<String> {
    let (ok, out) = node.try_kubectl(
        &[
            "get",
            "lease",
            "-n",
            NAMESPACE,
            "fleetmirror-aggregator",
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ],
        None,
    );
    ok.then(|| out.trim().to_owned())
}

fn aggregator_pods(node: &RealNode) -> Vec<String> {
    node.kubectl(&[
        "get",
        "pods",
        "-n",
        NAMESPACE,
        "-l",
        "app.kubernetes.io/component=aggregator",
        "--field-selector=status.phase=Running",
        "-o",
        "jsonpath={range .items[*]}{.metadata.name}{\"\\n\"}{end}",
    ])
    .lines()
    .map(str::to_owned)
    .collect()
}

/// (score, level, mountCoverage, lastUpdated) of the only vCluster of VClusterHealth `ns/fleet`.
async fn health(client: &kube::Client, ns: &str) -> Option<(i32, String, String, String)> {
    let status = fleet::status(client, ns, "fleet").await?;
    let c = status.sync_coverage.first()?;
    Some((
        c.score,
        c.level.clone(),
        c.mount_coverage.clone().unwrap_or_default(),
        status
            .last_updated
            .map(|t| t.0.to_string())
            .unwrap_or_default(),
    ))
}

/// One node per machine: the tests of this file take turns.
static ONE_NODE: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn the_real_node_demo_installs_the_chart_with_helm() {
    let _turn = ONE_NODE.lock().unwrap_or_else(|e| e.into_inner());
    let before = host_settings();
    let bin_dir = fleetmirror_tests::process::binary("fleetmirror-agent")
        .parent()
        .unwrap()
        .to_path_buf();
    fleetmirror_tests::process::binary("fleetmirror-aggregator");
    let dir = fleetmirror_tests::cluster::shared_dir()
        .join(format!("demo-node-{}", fleetmirror_tests::suffix()));
    let out = std::process::Command::new("bash")
        .arg(repo_root().join("scripts/demo.sh"))
        .args(["--real-node", "--check"])
        .env("FLEETMIRROR_DEMO_DIR", &dir)
        .env("FLEETMIRROR_BIN_DIR", &bin_dir)
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("scripts/demo.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "scripts/demo.sh --real-node --check failed:\n{stdout}"
    );
    for promised in [
        "fleetmirror runs on a real node.",
        "web-0: written by web-0 into its emptyDir",
        "\"name\": \"fleetmirror-node\"",
        "demo check: ok",
    ] {
        assert!(stdout.contains(promised), "{promised:?} missing:\n{stdout}");
    }
    assert!(!dir.exists(), "the demo removes its directory");
    let left = std::process::Command::new("bash")
        .arg(repo_root().join("scripts/node.sh"))
        .arg("leftovers")
        .env("FLEETMIRROR_CP_DIR", dir.join("control-plane"))
        .output()
        .unwrap();
    assert!(
        left.status.success(),
        "left on the machine:\n{}",
        String::from_utf8_lossy(&left.stdout)
    );
    assert_eq!(host_settings(), before, "host settings restored");
}

#[test]
fn the_chart_as_shipped_works_on_a_real_node() {
    let _turn = ONE_NODE.lock().unwrap_or_else(|e| e.into_inner());
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(chart_as_shipped());
}

async fn chart_as_shipped() {
    let before = host_settings();
    let node = RealNode::start();
    let client = node.client().await;

    eprintln!("phase 1: install deploy/install.yaml; both aggregators and the agent Ready");
    let docs: Vec<serde_yaml::Value> = Rendered::install_yaml()
        .docs()
        .iter()
        .filter(|d| d["kind"].as_str() != Some("PodDisruptionBudget"))
        .cloned()
        .collect();
    apply_docs(&node, &docs);
    rollout_status(&node, NAMESPACE, "deployment/fleetmirror-aggregator", READY);
    rollout_status(&node, NAMESPACE, "daemonset/fleetmirror-agent", READY);
    assert_eq!(aggregator_pods(&node).len(), 2, "two aggregator replicas");

    eprintln!("phase 2: a vCluster with real pods, and the Velero stand-in");
    let ns = format!("team-{}", fleetmirror_tests::suffix());
    node.kubectl(&["create", "namespace", &ns]);
    wait_default_service_account(&node, &ns);
    let vc = fleetmirror_tests::footprint::VCluster::new(&ns, VC);
    let mut sts = serde_json::to_value(vc.statefulset()).unwrap();
    sts["spec"]["template"]["spec"]["containers"] = json!([busybox("exec sleep 3600", json!([]))]);
    sts["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = json!(1);
    // k8s-openapi writes apiVersion and kind.
    for obj in [
        sts,
        serde_json::to_value(vc.api_service()).unwrap(),
        serde_json::to_value(vc.kube_dns_service()).unwrap(),
        serde_json::to_value(vc.node_service(node.name())).unwrap(),
    ] {
        create(&node, &obj);
    }
    create(
        &node,
        &json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "web-config", "namespace": ns}, "data": {"greeting": "hi"}}),
    );
    let (web_uid, sys_uid) = (random_uuid(), random_uuid());
    let a = format!("{web_uid}/{HELLO}");
    let b = format!("{sys_uid}/{LATE}");
    create(&node, &standin(&ns, "velero-standin", &a, &b));
    create(&node, &tenant_pod(&ns, "web-0", &web_uid));
    let system = synced_pod(
        &ns,
        "kube-system",
        "coredns-5d4f8c7b9-x2x4q",
        &sys_uid,
        json!({
            "terminationGracePeriodSeconds": 1,
            "containers": [busybox("exec sleep 3600", json!([{"name": "late", "mountPath": "/late"}]))],
            "volumes": [{"name": "late", "secret": {"secretName": "late"}}],
        }),
    );
    create(&node, &system);

    eprintln!("phase 3: the stand-in reads the tenant's emptyDir by virtual UID");
    let hello = format!("hello-{web_uid}");
    eventually(
        READY,
        "the stand-in reads the tenant pod's file",
        || async {
            checks(&node, &ns, "velero-standin")
                .last()
                .filter(|(a, _)| *a == hello)
                .map(|_| ())
        },
    )
    .await;
    let loft = format!("/var/lib/loft/{VC}/kubelet/pods");
    assert!(
        host_mount(&format!("{loft}/{web_uid}")),
        "a mount on the host"
    );
    for f in [
        "volumes/kubernetes.io~configmap/config/greeting",
        "volumes/kubernetes.io~projected/token/token",
    ] {
        let path = format!("{loft}/{web_uid}/{f}");
        assert!(
            std::fs::metadata(&path).is_ok(),
            "{path} is visible through the loft layout"
        );
    }

    eprintln!("phase 4: a volume kubelet mounts after the agent's bind appears through it");
    eventually(
        READY,
        "the system pod's directory is mounted before its Secret exists",
        || async { host_mount(&format!("{loft}/{sys_uid}")).then_some(()) },
    )
    .await;
    assert_eq!(
        checks(&node, &ns, "velero-standin").last().unwrap().1,
        "MISSING",
        "no Secret yet, so no Secret volume yet"
    );
    let sys_mount = host_mount_id(&format!("{loft}/{sys_uid}"));
    create(
        &node,
        &json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "late", "namespace": ns}, "stringData": {"key": "mounted-later"}}),
    );
    eventually(
        READY,
        "the later Secret volume reaches the stand-in",
        || async {
            checks(&node, &ns, "velero-standin")
                .last()
                .filter(|(a, b)| *a == hello && b == "mounted-later")
                .map(|_| ())
        },
    )
    .await;
    assert_eq!(
        host_mount_id(&format!("{loft}/{sys_uid}")),
        sys_mount,
        "the Secret arrived through the same bind (propagation), not a new one"
    );

    eprintln!("phase 5: kubectl get vclusterhealth scores the real pods");
    let watch_ns = format!("fleet-{}", fleetmirror_tests::suffix());
    node.kubectl(&["create", "namespace", &watch_ns]);
    fleet::create_fleet(&client, &watch_ns, &ns, 5).await;
    eventually(READY, "100/Full with both pods mounted", || async {
        health(&client, &watch_ns)
            .await
            .filter(|h| h.0 == 100 && h.1 == "Full" && h.2 == "2/2")
    })
    .await;
    let printed = node.kubectl(&["get", "vclusterhealth", "-n", &watch_ns]);
    let row: Vec<&str> = printed
        .lines()
        .nth(1)
        .expect("a row")
        .split_whitespace()
        .collect();
    // NAME TARGETNS VCLUSTERS FULL PARTIAL NONE LOWESTSCORE …
    assert_eq!(
        &row[..7],
        &["fleet", &ns, "1", "1", "0", "0", "100"],
        "{printed}"
    );

    eprintln!("phase 6: a DaemonSet rollout leaves the stand-in no gap");
    let mounts = [web_uid.as_str(), sys_uid.as_str()]
        .map(|uid| host_mount_id(&format!("{loft}/{uid}")).expect("mounted"));
    let seen = checks(&node, &ns, "velero-standin").len();
    node.kubectl(&[
        "rollout",
        "restart",
        "-n",
        NAMESPACE,
        "daemonset/fleetmirror-agent",
    ]);
    rollout_status(&node, NAMESPACE, "daemonset/fleetmirror-agent", READY);
    // A few more seconds of the new agent at work.
    let settled = checks(&node, &ns, "velero-standin").len();
    eventually(READY, "the stand-in keeps checking", || async {
        (checks(&node, &ns, "velero-standin").len() > settled + 15).then_some(())
    })
    .await;
    let during = checks(&node, &ns, "velero-standin").split_off(seen);
    let gaps: Vec<_> = during
        .iter()
        .filter(|(a, b)| *a != hello || b != "mounted-later")
        .collect();
    assert!(
        gaps.is_empty(),
        "the stand-in lost a file during the rollout ({} of {} checks): {:?}",
        gaps.len(),
        during.len(),
        gaps.first()
    );
    // Stronger than any sampling: the new agent adopted the very same mounts.
    assert_eq!(
        [web_uid.as_str(), sys_uid.as_str()].map(|uid| host_mount_id(&format!("{loft}/{uid}"))),
        mounts.map(Some),
        "the rollout unmounted and remade a bind"
    );

    eprintln!("phase 7: the leader aggregator pod is deleted; the other leads");
    let leader = lease_holder(&node).expect("the Lease");
    let pods = aggregator_pods(&node);
    assert!(pods.contains(&leader), "leader {leader} is one of {pods:?}");
    assert_eq!(pods.len(), 2);
    node.kubectl(&["delete", "pod", "-n", NAMESPACE, &leader, "--wait=false"]);
    // Sample throughout; done once the new holder has written the status twice (two heartbeats
    // of 5 s: a write of the old leader before it stopped cannot count).
    let start = Instant::now();
    let mut samples = 0;
    let mut new_leader: Option<(String, String)> = None; // (holder, lastUpdated when it led)
    let mut writes_by_new_leader = 0;
    loop {
        let h = health(&client, &watch_ns).await.expect("a status");
        assert!(
            h.0 == 100 && h.1 == "Full",
            "VClusterHealth dropped to {h:?} during the failover"
        );
        samples += 1;
        let Some(now) = lease_holder(&node) else {
            assert!(start.elapsed() < READY, "the Lease cannot be read");
            tokio::time::sleep(Duration::from_millis(250)).await;
            continue;
        };
        match &mut new_leader {
            None if now != leader && !now.is_empty() => {
                new_leader = Some((now.clone(), h.3.clone()));
            }
            Some((holder, last)) => {
                assert_eq!(&now, holder, "leadership moved again during the failover");
                if h.3 != *last {
                    assert_eq!(h.2, "2/2", "the new leader's status counts every mount");
                    writes_by_new_leader += 1;
                    *last = h.3.clone();
                }
            }
            None => {}
        }
        if writes_by_new_leader >= 2 {
            break;
        }
        assert!(
            start.elapsed() < READY,
            "no new leader writing the status (holder {now:?}, status {h:?}); logs:\n{}",
            node.namespace_logs(NAMESPACE, 40)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let (holder, _) = new_leader.expect("a new leader");
    assert!(
        aggregator_pods(&node).contains(&holder),
        "the new leader {holder} is a running aggregator pod"
    );
    eprintln!(
        "  {holder} leads; {samples} samples over {:?}, all 100/Full",
        start.elapsed()
    );
    rollout_status(&node, NAMESPACE, "deployment/fleetmirror-aggregator", READY);

    eprintln!("phase 8: deleting the tenant pod: kubelet cleans up, the mount goes");
    let web_host = naming::host_name("web-0", "default", VC);
    node.kubectl(&["delete", "pod", "-n", &ns, &web_host, "--wait=true"]);
    let target = format!("{loft}/{web_uid}");
    eventually(READY, "the tenant pod's mount and directory go", || async {
        (!host_mount(&target) && std::fs::metadata(&target).is_err()).then_some(())
    })
    .await;
    assert!(
        host_mount(&format!("{loft}/{sys_uid}")),
        "the other pod keeps its mount"
    );

    eprintln!(
        "phase 9: a copy of the chart with the loft root's propagation wrong makes the check fail"
    );
    let copy =
        std::env::temp_dir().join(format!("fleetmirror-chart-{}", fleetmirror_tests::suffix()));
    let status = std::process::Command::new("cp")
        .arg("-r")
        .arg(repo_root().join("charts/fleetmirror"))
        .arg(&copy)
        .status()
        .unwrap();
    assert!(status.success());
    let ds_template = copy.join("templates/agent-daemonset.yaml");
    let text = std::fs::read_to_string(&ds_template).unwrap();
    assert!(text.contains("mountPropagation: Bidirectional"));
    std::fs::write(
        &ds_template,
        text.replace(
            "mountPropagation: Bidirectional",
            "mountPropagation: HostToContainer",
        ),
    )
    .unwrap();
    let wrong: Vec<serde_yaml::Value> = Rendered::helm_chart(&copy, &[])
        .docs()
        .iter()
        .filter(|d| d["kind"].as_str() == Some("DaemonSet"))
        .cloned()
        .collect();
    std::fs::remove_dir_all(&copy).ok();
    assert_eq!(wrong.len(), 1);
    apply_docs(&node, &wrong);
    rollout_status(&node, NAMESPACE, "daemonset/fleetmirror-agent", READY);
    let wrong_uid = random_uuid();
    let a2 = format!("{wrong_uid}/{HELLO}");
    create(&node, &standin(&ns, "velero-standin-2", &a2, &b));
    create(&node, &tenant_pod(&ns, "web-1", &wrong_uid));
    let wrong_target = format!("{loft}/{wrong_uid}");
    // The agent did its part: the bind exists in its own mount namespace, and the pod's file
    // is there, through it.
    let wrong_hello = format!("hello-{wrong_uid}");
    eventually(
        READY,
        "the agent's own mount of the new pod, with the file",
        || async {
            let pid = agent_pid()?;
            let table = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).ok()?;
            let mounted = mount_id(&table, &wrong_target).is_some();
            let file =
                std::fs::read_to_string(format!("/proc/{pid}/root{wrong_target}/{HELLO}")).ok()?;
            (mounted && file.trim() == wrong_hello).then_some(())
        },
    )
    .await;
    let from = checks(&node, &ns, "velero-standin-2").len();
    eventually(READY, "the second stand-in checks a while", || async {
        (checks(&node, &ns, "velero-standin-2").len() > from + 15).then_some(())
    })
    .await;
    let seen: Vec<_> = checks(&node, &ns, "velero-standin-2");
    assert!(
        seen.iter().all(|(a, _)| *a != wrong_hello),
        "with HostToContainer the agent's mounts must not reach the host, yet the stand-in read {wrong_hello}"
    );
    assert!(
        !host_mount(&wrong_target),
        "no host mount for {wrong_target}"
    );

    eprintln!("phase 10: the node goes down and leaves nothing");
    let left = node.stop();
    assert!(left.trim().is_empty(), "left on the machine:\n{left}");
    assert_eq!(host_settings(), before, "host settings restored");
}
