//! The integrations controller end to end (integrations.md "Acceptance"): the real aggregator
//! binary on cluster 0 of the shared control plane, target clusters 1 and 0 reached over the
//! loopback with the token of `deploy/target-cluster-rbac.yaml`, clusters that refuse, hang or
//! forbid, and the exact messages. Each test has its own namespaces (its aggregator honours
//! only its `-ops` namespace), so they share the control plane and run in parallel.

use std::io::Read as _;
use std::net::TcpListener;

use fleetmirror_tests::integrations::{
    World, argocd, argocd_endpoints, clusters, deployment, inline_kubeconfig, integrations,
    kubeconfig_text, ready, statefulset, targets,
};
use fleetmirror_tests::process::{free_port, metric_sample, metric_with};
use serde_json::{Value, json};

fn phase(s: &Value) -> &str {
    s["phase"].as_str().unwrap_or("")
}

fn message(s: &Value) -> &str {
    s["message"].as_str().unwrap_or("")
}

/// A loopback listener that accepts connections and never answers (kept open by a thread).
fn hanging_listener() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in l.incoming().flatten() {
            held.push(s);
            // Read and drop what arrives; never write.
            if let Some(s) = held.last_mut() {
                let _ = s.set_nonblocking(true);
                let _ = s.read(&mut [0u8; 1024]);
            }
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targets_report_each_step_and_follow_their_secret() {
    let w = World::new().await;
    let agg = w.start(&["--target-probe-interval=4s", "--cluster-request-timeout=3s"]);
    let t = |what: &'static str, reason: &'static str, msg: String| {
        move |s: &Value| {
            let _ = what;
            s["ready"] == json!(false) && ready(s).1 == reason && message(s) == msg
        }
    };
    w.target("east", "east", json!({})).await;
    w.wait(
        &targets(),
        "east",
        "Secret absent",
        t(
            "absent",
            "SecretNotFound",
            "Kubeconfig secret east-kubeconfig not found".into(),
        ),
    )
    .await;
    // Created, but without the key: applies within seconds, without restart.
    w.secret("east-kubeconfig", "other", "x").await;
    w.wait(
        &targets(),
        "east",
        "key absent",
        t(
            "key",
            "InvalidSecret",
            "Secret missing 'kubeconfig' key".into(),
        ),
    )
    .await;
    w.secret("east-kubeconfig", "kubeconfig", "clusters: [unclosed")
        .await;
    let o = w
        .wait(&targets(), "east", "garbage", |s| {
            ready(s).1 == "RegistrationFailed"
        })
        .await;
    assert!(
        message(&o["status"])
            .starts_with("Failed to register cluster: failed to parse kubeconfig: "),
        "{}",
        o["status"]
    );

    // The policy: an exec plugin never runs, a file reference and plain http are refused.
    let marker = std::env::temp_dir().join(format!("fleetmirror-exec-{}", w.id));
    let server = format!("https://127.0.0.1:{}", free_port());
    let exec_user = format!(
        "exec:\n  apiVersion: client.authentication.k8s.io/v1\n  command: sh\n  args: [\"-c\", \"touch {}\"]",
        marker.display()
    );
    for (user, server, why) in [
        (exec_user.as_str(), server.as_str(), "user \"u\" uses an exec credential plugin; fleetmirror runs no command from a Secret — use a token, a client certificate or basic auth".to_owned()),
        ("tokenFile: /var/run/secrets/kubernetes.io/serviceaccount/token", server.as_str(), "tokenFile".to_owned()),
        ("token: abc", "http://127.0.0.1:8080", "server \"http://127.0.0.1:8080\" is not an https URL".to_owned()),
    ] {
        w.secret("east-kubeconfig", "kubeconfig", &kubeconfig_text(server, None, user)).await;
        let o = w
            .wait(&targets(), "east", &format!("refused: {why}"), |s| {
                ready(s).1 == "InvalidSecret" && message(s).contains(&why)
            })
            .await;
        assert!(
            message(&o["status"]).starts_with("Kubeconfig in secret east-kubeconfig is refused: "),
            "{}",
            o["status"]
        );
    }
    assert!(!marker.exists(), "the exec command ran");

    // A dead server: the connection test fails with the cause.
    w.secret(
        "east-kubeconfig",
        "kubeconfig",
        &kubeconfig_text(&server, None, "token: abc"),
    )
    .await;
    let o = w
        .wait(&targets(), "east", "dead server", |s| {
            ready(s).1 == "ConnectionFailed"
        })
        .await;
    assert_eq!(
        message(&o["status"]),
        "Connection test failed: failed to sync cluster: connection refused"
    );
    assert_eq!(
        metric_sample(
            agg.admin_port,
            "fleetmirror_integration_target_connected",
            "target=\"east\""
        ),
        Some(0.0)
    );

    // Fixed: connected, with the server's version and URL.
    let token = w.reader_token(1).await;
    w.secret(
        "east-kubeconfig",
        "kubeconfig",
        &inline_kubeconfig(w.cp, 1, &token),
    )
    .await;
    let o = w
        .wait(&targets(), "east", "connected", |s| {
            s["ready"] == json!(true)
        })
        .await;
    let s = &o["status"];
    assert_eq!(message(s), "Target cluster is connected and ready");
    assert_eq!(
        ready(s),
        (
            "True".into(),
            "ClusterReady".into(),
            "Successfully connected to target cluster".into()
        )
    );
    assert!(
        s["serverVersion"].as_str().unwrap().starts_with("v1."),
        "{s}"
    );
    assert!(
        s["server"]
            .as_str()
            .unwrap()
            .starts_with("https://127.0.0.1:"),
        "{s}"
    );
    assert!(s["lastSyncTime"].is_string());
    assert_eq!(
        metric_sample(
            agg.admin_port,
            "fleetmirror_integration_target_connected",
            "target=\"east\""
        ),
        Some(1.0)
    );
    w.expect_events(
        "east",
        &[
            "SecretNotFound",
            "InvalidSecret",
            "ConnectionFailed",
            "ClusterReady",
        ],
    )
    .await;

    // Two targets with one clusterName: the older is used, the other says why not.
    w.target("east-again", "east", json!({})).await;
    w.wait(&targets(), "east-again", "duplicate", |s| {
        ready(s).1 == "DuplicateClusterName"
            && message(s) == "clusterName east is already used by IntegrationTarget east"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn argocd_on_two_clusters_failing_and_recovering() {
    let w = World::new().await;
    let ns = w.namespace(1, "argocd").await;
    assert_eq!(w.namespace(0, "argocd").await, ns);
    w.ready_target("a", 1, json!({})).await;
    w.ready_target("b", 0, json!({})).await;
    argocd(&w.clients[1], &ns).await;
    argocd(&w.clients[0], &ns).await;
    w.integration(
        "argocd-prod",
        json!({"type": "argocd", "targetClusters": ["a", "b"], "config": {"namespace": ns, "healthCheckInterval": "5s"}}),
    )
    .await;
    let absent = w.ns("nothing");
    w.integration(
        "argocd-nowhere",
        json!({"type": "argocd", "targetClusters": ["a"], "config": {"namespace": absent}}),
    )
    .await;
    let agg = w.start(&[]);
    let o = w
        .wait(&integrations(), "argocd-prod", "Running", |s| {
            phase(s) == "Running"
        })
        .await;
    let s = &o["status"];
    assert_eq!(message(s), "Integration is running");
    assert_eq!(s["healthyClusters"], "2/2");
    assert_eq!(ready(s).1, "ReconcileSucceeded");
    assert_eq!(
        clusters(s),
        [
            (
                "a".into(),
                "Healthy".into(),
                "Healthy".into(),
                "ArgoCD is healthy on a".into()
            ),
            (
                "b".into(),
                "Healthy".into(),
                "Healthy".into(),
                "ArgoCD is healthy on b".into()
            ),
        ]
    );
    assert_eq!(s["clusterStatuses"][0]["target"], "a");
    assert_eq!(s["observedGeneration"], o["metadata"]["generation"]);

    // No namespace at all: KSIT's message.
    let o = w
        .wait(&integrations(), "argocd-nowhere", "namespace absent", |s| {
            phase(s) == "Failed"
        })
        .await;
    assert_eq!(
        message(&o["status"]),
        format!("ArgoCD namespace {absent} not found on a: namespaces \"{absent}\" not found")
    );

    // a's server has nothing available: Failed with a's message, both clusters listed.
    deployment(&w.clients[1], &ns, "argocd-server", json!({}), 1, 0).await;
    let o = w
        .wait(&integrations(), "argocd-prod", "a failing", |s| {
            phase(s) == "Failed"
        })
        .await;
    let s = &o["status"];
    assert_eq!(message(s), "ArgoCD server has 0 available replicas on a");
    assert_eq!(
        ready(s),
        (
            "False".into(),
            "ReconcileFailed".into(),
            "ArgoCD server has 0 available replicas on a".into()
        )
    );
    assert_eq!(s["healthyClusters"], "1/2");
    let c = clusters(s);
    assert_eq!(
        (c[0].1.as_str(), c[0].2.as_str()),
        ("Unhealthy", "ComponentsUnhealthy")
    );
    assert_eq!(c[1].1, "Healthy");

    // No ready endpoint: KSIT's message.
    deployment(&w.clients[1], &ns, "argocd-server", json!({}), 1, 1).await;
    argocd_endpoints(&w.clients[1], &ns, false).await;
    w.wait(&integrations(), "argocd-prod", "no endpoints", |s| {
        message(s) == "ArgoCD server service has no endpoints on a"
    })
    .await;

    // Recovered: Running again, and said.
    argocd_endpoints(&w.clients[1], &ns, true).await;
    w.wait(&integrations(), "argocd-prod", "recovered", |s| {
        phase(s) == "Running"
    })
    .await;
    w.expect_events("argocd-prod", &["ClusterUnhealthy", "ClusterRecovered"])
        .await;

    // Diagnostics: every cluster and component; NOT_FOUND for an unknown one.
    let d = w.get_integration(&agg, "argocd-prod").await.unwrap();
    let i = d.integration.unwrap();
    assert_eq!(
        (i.r#type.as_str(), i.phase.as_str(), i.total, i.healthy),
        ("argocd", "Running", 2, 2)
    );
    assert_eq!(d.clusters.len(), 2);
    assert!(d.clusters[0].server.starts_with("https://127.0.0.1:"));
    assert!(d.clusters[0].requests > 0);
    assert!(
        d.clusters[0]
            .components
            .iter()
            .any(|c| c.name == "argocd-application-controller"
                && c.kind == "StatefulSet"
                && c.state == "Healthy"),
        "{:?}",
        d.clusters[0].components
    );
    let e = w.get_integration(&agg, "no-such").await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    assert!(
        metric_with(
            agg.admin_port,
            "fleetmirror_integration_integrations",
            "phase=\"Running\",type=\"argocd\""
        ) >= 1.0
            || metric_with(
                agg.admin_port,
                "fleetmirror_integration_integrations",
                "type=\"argocd\",phase=\"Running\""
            ) >= 1.0
    );
    assert!(
        metric_with(
            agg.admin_port,
            "fleetmirror_integration_target_requests_total",
            "type=\"argocd\""
        ) > 0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clusters_that_cannot_be_checked_say_why_and_never_hold_the_others() {
    let w = World::new().await;
    let ns = w.namespace(1, "argocd").await;
    w.ready_target("good", 1, json!({})).await;
    argocd(&w.clients[1], &ns).await;
    let refused = format!("https://127.0.0.1:{}", free_port());
    let hanging = format!("https://127.0.0.1:{}", hanging_listener());
    for (name, server, user) in [
        ("refused", refused.as_str(), "token: abc".to_owned()),
        ("hang", hanging.as_str(), "token: abc".to_owned()),
    ] {
        w.secret(
            &format!("{name}-kubeconfig"),
            "kubeconfig",
            &kubeconfig_text(server, None, &user),
        )
        .await;
        w.target(name, name, json!({})).await;
    }
    let nobody = w.powerless_token(1).await;
    w.secret(
        "forbidden-kubeconfig",
        "kubeconfig",
        &inline_kubeconfig(w.cp, 1, &nobody),
    )
    .await;
    w.target("forbidden", "forbidden", json!({})).await;
    w.secret(
        "plugin-kubeconfig",
        "kubeconfig",
        &kubeconfig_text(
            &refused,
            None,
            "exec:\n  apiVersion: client.authentication.k8s.io/v1\n  command: true",
        ),
    )
    .await;
    w.target("plugin", "plugin", json!({})).await;
    w.integration(
        "argocd-all",
        json!({"type": "argocd", "targetClusters": ["gone", "refused", "hang", "forbidden", "plugin", "good"],
               "config": {"namespace": ns, "healthCheckInterval": "5s"}}),
    )
    .await;
    // Checks that last longer than the interval (a hanging cluster: 6 s > 5 s) must not keep
    // the round from ending.
    let agg = w.start(&["--cluster-request-timeout=6s"]);
    let o = w
        .wait(&integrations(), "argocd-all", "every cluster judged", |s| {
            clusters(s).len() == 6 && clusters(s).iter().all(|c| c.1 != "Pending")
        })
        .await;
    let s = &o["status"];
    let ops = &w.ops;
    let want = [
        ("gone", "Unreachable", "TargetNotFound", format!("failed to get cluster config for gone: no IntegrationTarget with clusterName gone in namespace {ops}")),
        ("refused", "Unreachable", "Unreachable", "cluster refused is unreachable: connection refused".to_owned()),
        ("hang", "Unreachable", "Unreachable", "cluster hang is unreachable: no answer within 6s".to_owned()),
        ("forbidden", "Unreachable", "Forbidden", format!("cluster forbidden forbids get deployments.apps in namespace {ns} (HTTP 403): apply deploy/target-cluster-rbac.yaml there")),
        ("plugin", "Unreachable", "TargetNotReady", "failed to get cluster config for plugin: Kubeconfig in secret plugin-kubeconfig is refused: user \"u\" uses an exec credential plugin; fleetmirror runs no command from a Secret — use a token, a client certificate or basic auth".to_owned()),
        ("good", "Healthy", "Healthy", "ArgoCD is healthy on good".to_owned()),
    ];
    let got = clusters(s);
    for ((name, state, reason, msg), g) in want.iter().zip(&got) {
        assert_eq!(
            (g.0.as_str(), g.1.as_str(), g.2.as_str(), g.3.as_str()),
            (*name, *state, *reason, msg.as_str())
        );
    }
    let connected: Vec<bool> = s["clusterStatuses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["connected"].as_bool().unwrap())
        .collect();
    assert_eq!(connected, [false, false, false, true, false, true]);
    assert_eq!(phase(s), "Failed");
    assert_eq!(message(s), want[0].3, "the first failing cluster, in order");
    assert_eq!(s["summary"]["unreachable"], 5);
    assert!(
        !got.iter().any(|c| c.3.contains("not found on")),
        "a dead cluster is never 'not found'"
    );
    // Rounds keep ending although a cluster never answers and checks outlast nothing: the
    // 5 s interval moves lastReconcileTime on.
    let t0 = s["lastReconcileTime"].as_str().unwrap().to_owned();
    let o = w
        .wait(&integrations(), "argocd-all", "another round", |s| {
            s["lastReconcileTime"]
                .as_str()
                .is_some_and(|t| t > t0.as_str())
        })
        .await;
    let t1 = o["status"]["lastReconcileTime"]
        .as_str()
        .unwrap()
        .to_owned();
    w.wait(&integrations(), "argocd-all", "and another", |s| {
        s["lastReconcileTime"]
            .as_str()
            .is_some_and(|t| t > t1.as_str())
    })
    .await;
    for category in ["connect", "timeout", "forbidden", "target_not_ready"] {
        assert!(
            metric_with(
                agg.admin_port,
                "fleetmirror_integration_check_errors_total",
                &format!("category=\"{category}\"")
            ) > 0.0,
            "{category}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_no_targets_invalid_config_and_intervals() {
    let w = World::new().await;
    let ns = w.namespace(1, "argocd").await;
    w.ready_target("a", 1, json!({})).await;
    argocd(&w.clients[1], &ns).await;
    w.integration(
        "off",
        json!({"type": "flux", "enabled": false, "targetClusters": ["a"]}),
    )
    .await;
    w.integration("none", json!({"type": "flux"})).await;
    w.integration("bad", json!({"type": "argocd", "targetClusters": ["a"], "config": {"healthCheckInterval": "soon"}})).await;
    w.integration("fast", json!({"type": "argocd", "targetClusters": ["a"], "config": {"namespace": ns, "healthCheckInterval": "5s"}})).await;
    w.integration("slow", json!({"type": "argocd", "targetClusters": ["a"], "config": {"namespace": ns, "healthCheckInterval": "60s"}})).await;
    let _agg = w.start(&[]);
    let o = w
        .wait(&integrations(), "off", "Disabled", |s| {
            phase(s) == "Disabled"
        })
        .await;
    let s = &o["status"];
    assert_eq!(message(s), "Integration is disabled");
    assert_eq!(ready(s).1, "Disabled");
    assert!(
        s["clusterStatuses"].is_null() && s["summary"].is_null() && s["healthyClusters"].is_null(),
        "{s}"
    );
    assert_eq!(o["spec"]["enabled"], false, "false is stored");
    let o = w
        .wait(&integrations(), "none", "NoTargets", |s| {
            phase(s) == "Failed"
        })
        .await;
    assert_eq!(ready(&o["status"]).1, "NoTargets");
    assert_eq!(
        message(&o["status"]),
        format!("Integration has no target clusters in namespace {}", w.ops)
    );
    let o = w
        .wait(&integrations(), "bad", "InvalidConfig", |s| {
            phase(s) == "Failed"
        })
        .await;
    assert_eq!(ready(&o["status"]).1, "InvalidConfig");
    assert!(
        message(&o["status"]).starts_with("invalid config: healthCheckInterval: "),
        "{}",
        o["status"]
    );
    w.expect_events("bad", &["InvalidConfig"]).await;

    // 5 s moves lastReconcileTime about every 5 s; 60 s not while that happens twice.
    let t = |o: &Value| {
        o["status"]["lastReconcileTime"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    };
    let slow0 = t(&w
        .wait(&integrations(), "slow", "slow Running", |s| {
            phase(s) == "Running"
        })
        .await);
    let fast0 = t(&w
        .wait(&integrations(), "fast", "fast Running", |s| {
            phase(s) == "Running"
        })
        .await);
    let fast1 = t(&w
        .wait(&integrations(), "fast", "fast heartbeat", |s| {
            s["lastReconcileTime"]
                .as_str()
                .is_some_and(|x| x > fast0.as_str())
        })
        .await);
    let _ = t(&w
        .wait(&integrations(), "fast", "fast heartbeat again", |s| {
            s["lastReconcileTime"]
                .as_str()
                .is_some_and(|x| x > fast1.as_str())
        })
        .await);
    let slow1 = t(&w.get(&integrations(), "slow").await.unwrap());
    assert_eq!(
        slow0, slow1,
        "a 60s interval wrote no heartbeat within ~10s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flux_istio_prometheus_and_workloads_are_judged_per_component() {
    let w = World::new().await;
    w.ready_target("a", 1, json!({})).await;
    let flux = w.namespace(1, "flux").await;
    deployment(&w.clients[1], &flux, "helm-controller", json!({}), 1, 1).await;
    let mesh = w.namespace(1, "mesh").await;
    deployment(
        &w.clients[1],
        &mesh,
        "istiod-1-22",
        json!({"app": "istiod"}),
        1,
        1,
    )
    .await;
    let mon = w.namespace(1, "monitoring").await;
    deployment(&w.clients[1], &mon, "unrelated", json!({}), 1, 1).await;
    let shop = w.namespace(1, "shop").await;
    deployment(&w.clients[1], &shop, "web", json!({"tier": "web"}), 2, 2).await;
    statefulset(&w.clients[1], &shop, "db", 1, 1).await;
    let none = w.ns("absent");
    for (name, spec) in [
        (
            "flux",
            json!({"type": "flux", "targetClusters": ["a"], "config": {"namespace": flux}}),
        ),
        (
            "flux-nowhere",
            json!({"type": "flux", "targetClusters": ["a"], "config": {"namespace": none}}),
        ),
        (
            "istio",
            json!({"type": "istio", "targetClusters": ["a"], "config": {"namespace": mesh}}),
        ),
        (
            "prometheus",
            json!({"type": "prometheus", "targetClusters": ["a"], "config": {"namespace": mon}}),
        ),
        (
            "web",
            json!({"type": "workloads", "targetClusters": ["a"], "config": {"namespace": shop, "selector": "tier=web"}}),
        ),
        (
            "nomatch",
            json!({"type": "workloads", "targetClusters": ["a"], "config": {"namespace": shop, "selector": "tier=cache"}}),
        ),
    ] {
        w.integration(name, spec).await;
    }
    let _agg = w.start(&[]);
    let settled = |s: &Value| matches!(phase(s), "Running" | "Failed");
    let m = |o: Value| message(&o["status"]).to_owned();
    assert_eq!(
        m(w.wait(&integrations(), "flux", "flux", settled).await),
        "Flux controllers not running on a: source-controller, kustomize-controller, notification-controller",
        "KSIT: Running with one controller"
    );
    assert_eq!(
        m(
            w.wait(&integrations(), "flux-nowhere", "flux-nowhere", settled)
                .await
        ),
        format!("Flux namespace {none} not found on a: namespaces \"{none}\" not found")
    );
    let o = w.wait(&integrations(), "istio", "istio", settled).await;
    assert_eq!(
        (phase(&o["status"]), message(&o["status"])),
        ("Running", "Integration is running")
    );
    assert_eq!(
        o["status"]["clusterStatuses"][0]["components"][0]["name"],
        "istiod-1-22"
    );
    assert_eq!(
        m(w.wait(&integrations(), "prometheus", "prometheus", settled)
            .await),
        "no Prometheus pods are running on a",
        "an unrelated running Deployment is not Prometheus"
    );
    let o = w.wait(&integrations(), "web", "web", settled).await;
    assert_eq!(phase(&o["status"]), "Running");
    let names: Vec<&str> = o["status"]["clusterStatuses"][0]["components"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["web"], "only what the selector matches");
    assert_eq!(
        m(w.wait(&integrations(), "nomatch", "nomatch", settled).await),
        format!(
            "no Deployment, StatefulSet or DaemonSet matches \"tier=cache\" in namespace {shop} on a"
        )
    );
    // One of the workloads degrades: judged per component.
    deployment(&w.clients[1], &shop, "web", json!({"tier": "web"}), 2, 1).await;
    let o = w
        .wait(&integrations(), "web", "web degraded", |s| {
            s["conditions"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "Degraded" && c["status"] == "True")
            })
        })
        .await;
    assert_eq!(
        phase(&o["status"]),
        "Running",
        "Degraded clusters count as healthy"
    );
    assert_eq!(
        o["status"]["clusterStatuses"][0]["message"],
        format!(
            "Workloads in {shop} are degraded on a: Deployment web has 1/2 available replicas on a"
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ksit_manifest_and_the_target_selector() {
    let w = World::new().await;
    let ns = w.namespace(1, "argocd").await;
    assert_eq!(w.namespace(0, "argocd").await, ns);
    argocd(&w.clients[1], &ns).await;
    argocd(&w.clients[0], &ns).await;
    w.ready_target("east", 1, json!({"environment": "production"}))
        .await;
    w.ready_target("west", 0, json!({"environment": "staging"}))
        .await;
    // KSIT's sample with only apiVersion changed (and the selector, beyond KSIT).
    w.integration(
        "argocd-prod",
        json!({"type": "argocd", "enabled": true, "targetClusters": [],
               "targetSelector": {"matchLabels": {"environment": "production"}},
               "config": {"namespace": ns, "serverURL": "https://argocd.example.com", "insecure": "true", "healthCheckInterval": "5s"},
               "autoInstall": {"enabled": true, "helmChart": "argo/argo-cd", "version": "5.51.0", "values": {"server": {"replicas": 2}}}}),
    )
    .await;
    let _agg = w.start(&[]);
    let o = w
        .wait(&integrations(), "argocd-prod", "Running on east", |s| {
            phase(s) == "Running"
        })
        .await;
    let s = &o["status"];
    assert_eq!(
        clusters(s).iter().map(|c| c.0.as_str()).collect::<Vec<_>>(),
        ["east"]
    );
    let auto = s["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "AutoInstall")
        .unwrap();
    assert_eq!(
        (auto["status"].as_str(), auto["reason"].as_str()),
        (Some("False"), Some("NotSupported"))
    );
    assert_eq!(
        auto["message"],
        "fleetmirror does not install tools; install argocd with your own tooling"
    );
    w.expect_events("argocd-prod", &["AutoInstallIgnored"])
        .await;
    // The selector follows spec.labels.
    w.target("west", "west", json!({"environment": "production"}))
        .await;
    w.wait(&integrations(), "argocd-prod", "west selected", |s| {
        clusters(s).len() == 2 && s["healthyClusters"] == "2/2"
    })
    .await;
    w.target("east", "east", json!({"environment": "staging"}))
        .await;
    w.wait(&integrations(), "argocd-prod", "east deselected", |s| {
        clusters(s).iter().map(|c| c.0.as_str()).collect::<Vec<_>>() == ["west"]
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_by_the_operators_resources() {
    use fleetmirror_tests::integrations::{install_prometheus_crds, monitoring_resource};
    use fleetmirror_tests::mirror::ar;
    let w = World::new().await;
    install_prometheus_crds(&w.clients[1]).await;
    let prom = ar("monitoring.coreos.com", "v1", "Prometheus", "prometheuses");
    let am = ar(
        "monitoring.coreos.com",
        "v1",
        "Alertmanager",
        "alertmanagers",
    );
    w.ready_target("a", 1, json!({})).await;
    let mon = w.namespace(1, "monitoring").await;
    monitoring_resource(&w.clients[1], &prom, &mon, "k8s", "True").await;
    monitoring_resource(&w.clients[1], &am, &mon, "main", "True").await;
    deployment(
        &w.clients[1],
        &mon,
        "prometheus-operator",
        json!({"app.kubernetes.io/name": "prometheus-operator"}),
        1,
        1,
    )
    .await;
    w.integration(
        "prometheus",
        json!({"type": "prometheus", "targetClusters": ["a"], "config": {"namespace": mon, "healthCheckInterval": "5s"}}),
    )
    .await;
    let _agg = w.start(&[]);
    let o = w
        .wait(&integrations(), "prometheus", "Running", |s| {
            phase(s) == "Running"
        })
        .await;
    let kinds: Vec<(&str, &str)> = o["status"]["clusterStatuses"][0]["components"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["kind"].as_str().unwrap(), c["name"].as_str().unwrap()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("Prometheus", "k8s"),
            ("Alertmanager", "main"),
            ("Deployment", "prometheus-operator")
        ]
    );
    // Available=False: Failed, and the component says why.
    monitoring_resource(&w.clients[1], &prom, &mon, "k8s", "False").await;
    let o = w
        .wait(&integrations(), "prometheus", "Failed", |s| {
            phase(s) == "Failed"
        })
        .await;
    assert_eq!(message(&o["status"]), "no Prometheus pods are running on a");
    assert_eq!(
        o["status"]["clusterStatuses"][0]["components"][0]["message"],
        "Prometheus k8s is not available on a: 0/2 pods ready"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_that_answers_too_much_fails_the_check_not_the_aggregator() {
    // Whoever writes a target's Secret chooses the server: an answer over 16 MiB (here a
    // real list of 72 Deployments carrying 250 kB annotations each) fails the check.
    let w = World::new().await;
    w.ready_target("a", 1, json!({})).await;
    let big = w.namespace(1, "big").await;
    let filler = "x".repeat(250_000);
    let deploy = fleetmirror_tests::mirror::ar("apps", "v1", "Deployment", "deployments");
    for i in 0..72 {
        fleetmirror_tests::integrations::apply_on(
            &w.clients[1],
            &deploy,
            json!({"metadata": {"name": format!("d{i:02}"), "namespace": big, "annotations": {"filler": filler}},
                   "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "d"}},
                            "template": {"metadata": {"labels": {"app": "d"}},
                                         "spec": {"containers": [{"name": "c", "image": "example.invalid/c"}]}}}}),
        )
        .await;
    }
    w.integration(
        "huge",
        json!({"type": "workloads", "targetClusters": ["a"], "config": {"namespace": big}}),
    )
    .await;
    let agg = w.start(&[]);
    let o = w
        .wait(&integrations(), "huge", "the check failed", |s| {
            phase(s) == "Failed"
        })
        .await;
    assert_eq!(
        clusters(&o["status"])[0],
        (
            "a".into(),
            "Unreachable".into(),
            "CheckFailed".into(),
            "checking a failed: the answer to list deployments.apps is larger than 16 MiB".into()
        )
    );
    assert!(
        agg.metric("fleetmirror_build_info").is_some(),
        "the aggregator still serves"
    );
}
