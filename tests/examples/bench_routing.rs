//! Routing benchmark (run through `scripts/bench-routing.sh`, release build): routing.md's
//! figures against a real local API server (a control plane of its own, with the tests'
//! VirtualService CRD) and the real aggregator binary with `--controllers=routing`, at 1 000
//! prod Services and 20 developer namespaces each holding real copies of 100 of them (2 000
//! developer Services):
//!
//! * the first start: time until all 1 000 VirtualServices exist with their routes, and the
//!   writes it took (`fleetmirror_routing_writes_total`);
//! * `--samples` times (default 100), one developer Service created → the time until its
//!   VirtualService shows the route, seen through a watch; p50 / p99;
//! * resident memory at that size;
//! * writes during two full resyncs with nothing changed (`--routing-resync-interval=20s`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fleetmirror_tests::cluster::ControlPlane;
use fleetmirror_tests::process::{Aggregator, AggregatorConfig, arg, metric_with, rss_mib};
use fleetmirror_tests::routing::{Crd, install_crd, virtual_services};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service};
use kube::api::{Api, DynamicObject, PostParams};
use kube::runtime::watcher;
use serde_json::json;

const PROD_SERVICES: usize = 1000;
const DEVELOPERS: usize = 20;
const COPIES: usize = 100;

fn percentile(v: &[Duration], p: f64) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1]
}

async fn create_services(client: &kube::Client, items: Vec<(String, String)>) {
    futures::stream::iter(items)
        .map(|(ns, name)| {
            let client = client.clone();
            async move {
                let s: Service = serde_json::from_value(json!({"metadata": {"name": name, "namespace": ns}, "spec": {"ports": [{"port": 80}]}})).unwrap();
                Api::<Service>::namespaced(client, &ns).create(&PostParams::default(), &s).await.unwrap();
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
}

fn writes(agg: &Aggregator) -> f64 {
    [
        "apply",
        "delete",
        "placeholder_create",
        "placeholder_update",
        "placeholder_delete",
    ]
    .iter()
    .map(|op| {
        metric_with(
            agg.admin_port,
            "fleetmirror_routing_writes_total",
            &format!("op=\"{op}\""),
        )
    })
    .sum()
}

/// (VirtualService, developer namespace) → when its route was first seen.
type Seen = Arc<(
    Mutex<HashMap<(String, String), Instant>>,
    tokio::sync::Notify,
)>;

#[tokio::main]
async fn main() {
    let samples = arg("--samples", 100) as usize;
    let cp = ControlPlane::dedicated("bench-routing");
    let client = cp.client(0).await;
    install_crd(&client, Crd::Both).await;
    let developers: Vec<String> = (0..DEVELOPERS).map(|i| format!("dev-{i:02}")).collect();
    for ns in ["fleetmirror", "ops", "prod"]
        .iter()
        .map(|s| s.to_string())
        .chain(developers.clone())
    {
        let n: Namespace = serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap();
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &n)
            .await
            .unwrap();
    }
    eprintln!(
        "[bench-routing] creating {PROD_SERVICES} prod Services and {} developer copies…",
        DEVELOPERS * COPIES
    );
    let svc = |i: usize| format!("svc-{i:04}");
    let mut items: Vec<(String, String)> = (0..PROD_SERVICES)
        .map(|i| ("prod".to_owned(), svc(i)))
        .collect();
    // Developer d holds copies of 100 services starting at d*50 (overlapping windows).
    let copies = |d: usize| (0..COPIES).map(move |k| (d * 50 + k) % PROD_SERVICES);
    for (d, ns) in developers.iter().enumerate() {
        items.extend(copies(d).map(|i| (ns.clone(), svc(i))));
    }
    create_services(&client, items).await;
    let cm: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "routing", "namespace": "ops", "labels": {"fleetmirror.io/routing": "true"}},
        "data": {"config.yaml": format!("defaultNamespace: prod\ndeveloperNamespaces: [{}]\n", developers.join(", "))},
    }))
    .unwrap();
    Api::<ConfigMap>::namespaced(client.clone(), "ops")
        .create(&PostParams::default(), &cm)
        .await
        .unwrap();

    // A watch of prod's VirtualServices, recording when each developer route first appears.
    let seen: Seen = Arc::default();
    {
        let (seen, api) = (
            seen.clone(),
            Api::<DynamicObject>::namespaced_with(client.clone(), "prod", &virtual_services("v1")),
        );
        tokio::spawn(async move {
            let mut stream = watcher(api, watcher::Config::default()).boxed();
            while let Ok(Some(ev)) = stream.try_next().await {
                if let watcher::Event::Apply(o) | watcher::Event::InitApply(o) = ev {
                    let now = Instant::now();
                    let name = o.metadata.name.clone().unwrap_or_default();
                    let mut m = seen.0.lock().unwrap();
                    for r in o.data["spec"]["http"].as_array().into_iter().flatten() {
                        if let Some(ns) = r["name"].as_str().and_then(|n| n.strip_prefix("dev-")) {
                            m.entry((name.clone(), ns.to_owned())).or_insert(now);
                        }
                    }
                    m.entry((name, String::new())).or_insert(now);
                    drop(m);
                    seen.1.notify_waiters();
                }
            }
        });
    }

    // First start.
    let mut config = AggregatorConfig::new("fleetmirror");
    config.extra_args.extend(
        [
            "--controllers=routing",
            "--leader-elect=false",
            "--routing-resync-interval=20s",
        ]
        .map(String::from),
    );
    let started = Instant::now();
    let agg = Aggregator::start(&cp, 0, config);
    let want_routes = DEVELOPERS * COPIES;
    loop {
        let (vss, routes) = {
            let m = seen.0.lock().unwrap();
            (
                m.keys().filter(|k| k.1.is_empty()).count(),
                m.keys().filter(|k| !k.1.is_empty()).count(),
            )
        };
        if vss >= PROD_SERVICES && routes >= want_routes {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "first start: {vss} VirtualServices, {routes} routes after 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let first_start = started.elapsed();
    // Let the watch-driven passes after the last write settle before counting.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let first_writes = writes(&agg);
    let rss_converged = rss_mib(agg.process.pid());

    // One developer Service created → its route seen through the watch.
    eprintln!("[bench-routing] {samples} samples…");
    let mut latencies = Vec::new();
    for j in 0..samples {
        // A service developer d does not have a copy of yet.
        let d = j % DEVELOPERS;
        let i = (d * 50 + COPIES + j / DEVELOPERS) % PROD_SERVICES;
        let (ns, name) = (developers[d].clone(), svc(i));
        let key = (format!("{name}-virtual-service"), ns.clone());
        let t0 = Instant::now();
        create_services(&client, vec![(ns, name)]).await;
        let at = loop {
            let notified = seen.1.notified();
            if let Some(at) = seen.0.lock().unwrap().get(&key).copied() {
                break at;
            }
            tokio::time::timeout(Duration::from_secs(30), notified)
                .await
                .unwrap_or_else(|_| panic!("no route for {key:?} in 30 s"));
        };
        latencies.push(at.saturating_duration_since(t0));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss = rss_mib(agg.process.pid());

    // Two full resyncs with nothing changed.
    let before = writes(&agg);
    let passes = metric_with(
        agg.admin_port,
        "fleetmirror_routing_reconcile_seconds_count",
        "",
    );
    tokio::time::sleep(Duration::from_secs(45)).await;
    let resync_writes = writes(&agg) - before;
    let resync_passes = metric_with(
        agg.admin_port,
        "fleetmirror_routing_reconcile_seconds_count",
        "",
    ) - passes;

    // A second aggregator started at this state: what the state itself costs, without the
    // first start's burst of writes.
    drop(agg);
    let mut fresh_config = AggregatorConfig::new("fleetmirror");
    fresh_config
        .extra_args
        .extend(["--controllers=routing", "--leader-elect=false"].map(String::from));
    let fresh = Aggregator::start(&cp, 0, fresh_config);
    let t = Instant::now();
    while metric_with(
        fresh.admin_port,
        "fleetmirror_routing_virtualservices",
        "state=\"synced\"",
    ) < PROD_SERVICES as f64
    {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "the second aggregator did not converge"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_fresh = rss_mib(fresh.process.pid());
    let fresh_writes = writes(&fresh);
    drop(fresh);

    println!(
        "fleetmirror routing benchmark ({} UTC), real kube-apiserver 1.20 + etcd, release aggregator --controllers=routing",
        jiff::Timestamp::now().strftime("%Y-%m-%d %H:%M")
    );
    println!(
        "size: {PROD_SERVICES} prod Services, {DEVELOPERS} developer namespaces x {COPIES} copies = {want_routes} developer routes"
    );
    println!(
        "first start: all {PROD_SERVICES} VirtualServices with their routes in {:.1} s, {first_writes} writes (one per VirtualService: {PROD_SERVICES})",
        first_start.as_secs_f64()
    );
    println!(
        "developer Service created -> route visible (watch), {samples} samples: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms (target p99 < 500 ms)",
        percentile(&latencies, 0.5).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        percentile(&latencies, 1.0).as_secs_f64() * 1e3
    );
    println!(
        "resident memory: {rss_converged:.1} MiB after the first start, {rss:.1} MiB after the samples (target < 32 MiB)"
    );
    println!(
        "a second aggregator started at that state: {rss_fresh:.1} MiB, {fresh_writes} writes"
    );
    println!(
        "full resyncs with nothing changed: {resync_writes} writes over {resync_passes} passes in 45 s (resync every 20 s; target 0)"
    );
}
