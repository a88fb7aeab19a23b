//! Integrations benchmark (run through `scripts/bench-integrations.sh`, release build):
//! integrations.md's figures against a control plane of its own with four clusters (cluster 0
//! the control cluster; clusters 1–3 carry the footprints of Argo CD, Flux, Prometheus and
//! Istio) and the real aggregator binary with `--controllers=integrations`, default timeouts
//! and concurrency:
//!
//! * 100 IntegrationTargets: 90 spread over clusters 1–3 (distinct Secrets, the reader token
//!   of `deploy/target-cluster-rbac.yaml`), 5 on loopback ports that refuse connections, 5 on a
//!   loopback listener that accepts and never answers; 4 Integrations (argocd, flux,
//!   prometheus, istio) with `targetSelector: {}`;
//! * the wall time of one full round, from a generation bump of all four to their last status
//!   write (median of `--samples`, default 3);
//! * API requests per cluster per check, by type (the aggregator's
//!   `fleetmirror_integration_target_requests_total` over its check count), against the
//!   listed components, cross-checked with the target API servers' `apiserver_request_total`;
//! * the aggregator's resident memory after `--rounds` rounds (default 10).

use std::io::Read as _;
use std::time::{Duration, Instant};

use fleetmirror_tests::cluster::{ControlPlane, install_crds, service_account_token};
use fleetmirror_tests::integrations::{
    apply_on, apply_target_rbac, argocd, deployment, inline_kubeconfig, integrations,
    kubeconfig_text, targets,
};
use fleetmirror_tests::mirror::ar;
use fleetmirror_tests::process::{
    Aggregator, AggregatorConfig, arg, free_port, metric_with, rss_mib,
};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

const OPS: &str = "fleet-ops";
const TYPES: [&str; 4] = ["argocd", "flux", "prometheus", "istio"];

fn progress(m: &str) {
    eprintln!("[bench-integrations] {m}");
}

async fn namespace(client: &kube::Client, name: &str) {
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    match Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => panic!("namespace {name}: {e}"),
    }
}

/// GET and LIST requests the API server served so far (every client, /metrics reads too).
async fn reads_at_server(client: &kube::Client) -> f64 {
    let text = client
        .request_text(http::Request::get("/metrics").body(Vec::new()).unwrap())
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
        .filter(|l| l.contains("verb=\"GET\"") || l.contains("verb=\"LIST\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn hanging_listener() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for mut s in l.incoming().flatten() {
            let _ = s.set_nonblocking(true);
            let _ = s.read(&mut [0u8; 1024]);
            held.push(s);
        }
    });
    port
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

async fn statuses(client: &kube::Client) -> Vec<Value> {
    let api = Api::<DynamicObject>::namespaced_with(client.clone(), OPS, &integrations());
    let mut out = Vec::new();
    for t in TYPES {
        out.push(serde_json::to_value(api.get(t).await.unwrap()).unwrap());
    }
    out
}

/// Waits until every Integration has judged all 100 clusters for its current generation.
async fn round_done(client: &kube::Client) -> Instant {
    loop {
        let all = statuses(client).await;
        if all.iter().all(|o| {
            o["status"]["observedGeneration"] == o["metadata"]["generation"]
                && o["status"]["summary"]["total"] == 100
                && o["status"]["summary"]["pending"] == 0
        }) {
            return Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn checks(agg: &Aggregator, t: &str) -> f64 {
    metric_with(
        agg.admin_port,
        "fleetmirror_integration_check_seconds_count",
        &format!("type=\"{t}\""),
    )
}

fn requests(agg: &Aggregator, t: &str) -> f64 {
    metric_with(
        agg.admin_port,
        "fleetmirror_integration_target_requests_total",
        &format!("type=\"{t}\""),
    )
}

#[tokio::main]
async fn main() {
    let samples = arg("--samples", 3) as usize;
    let rounds = arg("--rounds", 10);
    let interval = arg("--interval-seconds", 15);
    progress("control plane: 4 clusters (0 control, 1-3 targets)");
    let cp = ControlPlane::dedicated_clusters("bench-integrations", 4);
    let control = cp.client(0).await;
    install_crds(&control).await;
    namespace(&control, OPS).await;

    progress("footprints of Argo CD, Flux, Prometheus and Istio on clusters 1-3");
    let mut tokens = Vec::new();
    let mut target_clients = Vec::new();
    for i in 1..=3 {
        let c = cp.client(i).await;
        apply_target_rbac(&c).await;
        for ns in ["argocd", "flux-system", "monitoring", "istio-system"] {
            namespace(&c, ns).await;
        }
        argocd(&c, "argocd").await;
        for d in [
            "argocd-dex-server",
            "argocd-applicationset-controller",
            "argocd-notifications-controller",
        ] {
            deployment(&c, "argocd", d, json!({}), 1, 1).await;
        }
        for d in fleetmirror_core::integrations::config::FLUX_COMPONENTS {
            deployment(&c, "flux-system", d, json!({}), 1, 1).await;
        }
        deployment(
            &c,
            "monitoring",
            "prometheus-server",
            json!({"app.kubernetes.io/name": "prometheus"}),
            1,
            1,
        )
        .await;
        deployment(&c, "istio-system", "istiod", json!({"app": "istiod"}), 1, 1).await;
        deployment(&c, "istio-system", "istio-ingressgateway", json!({}), 1, 1).await;
        tokens.push(service_account_token(&c, "fleetmirror-system", "fleetmirror-reader").await);
        target_clients.push(c);
    }

    progress("100 IntegrationTargets (90 live, 5 refusing, 5 hanging) and 4 Integrations");
    let secrets = ar("", "v1", "Secret", "secrets");
    let hanging = hanging_listener();
    for k in 0..100usize {
        let name = format!("t{k:03}");
        let kubeconfig = match k {
            0..90 => inline_kubeconfig(&cp, 1 + k % 3, &tokens[k % 3]),
            90..95 => kubeconfig_text(
                &format!("https://127.0.0.1:{}", free_port()),
                None,
                "token: x",
            ),
            _ => kubeconfig_text(&format!("https://127.0.0.1:{hanging}"), None, "token: x"),
        };
        use base64::Engine as _;
        apply_on(
            &control,
            &secrets,
            json!({"metadata": {"name": format!("{name}-kubeconfig"), "namespace": OPS},
                   "data": {"kubeconfig": base64::engine::general_purpose::STANDARD.encode(kubeconfig)}}),
        )
        .await;
        apply_on(
            &control,
            &targets(),
            json!({"metadata": {"name": name, "namespace": OPS}, "spec": {"clusterName": name}}),
        )
        .await;
    }
    for t in TYPES {
        apply_on(
            &control,
            &integrations(),
            json!({"metadata": {"name": t, "namespace": OPS},
                   "spec": {"type": t, "targetSelector": {}, "config": {"healthCheckInterval": format!("{interval}s")}}}),
        )
        .await;
    }

    progress("starting the release aggregator (--controllers=integrations, defaults)");
    let mut cfg = AggregatorConfig::new(OPS);
    cfg.extra_args.extend([
        "--controllers=integrations".into(),
        "--leader-elect=false".into(),
    ]);
    let agg = Aggregator::start(&cp, 0, cfg);
    let started = Instant::now();
    round_done(&control).await;
    progress(&format!(
        "first round of all four done {:.1}s after start",
        started.elapsed().as_secs_f64()
    ));

    // Rounds after a generation bump of all four, side by side.
    let api = Api::<DynamicObject>::namespaced_with(control.clone(), OPS, &integrations());
    let mut walls = Vec::new();
    for n in 0..samples {
        let before_checks: Vec<f64> = TYPES.iter().map(|t| checks(&agg, t)).collect();
        let before_requests: Vec<f64> = TYPES.iter().map(|t| requests(&agg, t)).collect();
        let before_probe = requests(&agg, "probe");
        let mut before_server = 0.0;
        for c in &target_clients {
            before_server += reads_at_server(c).await;
        }
        let t0 = Instant::now();
        for t in TYPES {
            api.patch(
                t,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"config": {"benchSample": n.to_string()}}})),
            )
            .await
            .unwrap();
        }
        let t1 = round_done(&control).await;
        let wall = (t1 - t0).as_secs_f64();
        walls.push(wall);
        // Let the live clusters' checks of this round finish before counting.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut after_server = 0.0;
        for c in &target_clients {
            after_server += reads_at_server(c).await;
        }
        let mut ours = 0.0;
        let mut line = String::new();
        for (i, t) in TYPES.iter().enumerate() {
            let (dc, dr) = (
                checks(&agg, t) - before_checks[i],
                requests(&agg, t) - before_requests[i],
            );
            ours += dr;
            line.push_str(&format!(
                " {t} {:.2}/check ({dr:.0} in {dc:.0} checks);",
                dr / dc.max(1.0)
            ));
        }
        ours += requests(&agg, "probe") - before_probe;
        progress(&format!(
            "sample {}: round {wall:.2}s; requests{line} all sent {ours:.0} (10 dead targets included), live API servers saw {:.0} GET/LIST (3 /metrics reads included)",
            n + 1,
            after_server - before_server
        ));
    }

    // Memory after `rounds` rounds at the interval.
    let wait = Duration::from_secs(interval * rounds);
    progress(&format!("{rounds} more rounds ({}s)", wait.as_secs()));
    tokio::time::sleep(wait).await;
    let rss = rss_mib(agg.process.pid());
    println!(
        "round after a generation bump of all four: median {:.2}s of {samples} ({})",
        median(walls.clone()),
        walls
            .iter()
            .map(|w| format!("{w:.2}s"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for t in TYPES {
        println!(
            "requests per check, {t}: {:.2}",
            requests(&agg, t) / checks(&agg, t).max(1.0)
        );
    }
    println!("aggregator resident memory after {rounds}+ rounds: {rss:.1} MiB");
}
