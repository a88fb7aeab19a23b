//! Mirror benchmark (run through `scripts/bench-mirror.sh`, release build): the four figures of
//! mirror.md against a real local API server (a control plane of its own) and the real
//! aggregator binary (auto-discovery, as installed by default):
//!
//! (a) one source → 200 namespaces: the time until all 200 mirrors exist (seen through a
//!     watch) ÷ the time a plain client takes to create 200 objects of the same size at the same
//!     concurrency (16), measured side by side, alternating, several rounds; median ratio;
//! (b) one change of that source → the time until each of its 200 mirrors shows it (a watch),
//!     p50 / p99 over several changes;
//! (c) 10 sources × 200 namespaces = 2 000 mirrors: the aggregator's resident memory, and that
//!     of a second aggregator started once 20 000 unlabelled ConfigMaps and Secrets were added
//!     (server-side filtering: they never reach it);
//! (d) idle after convergence: write requests (POST, PUT, PATCH, DELETE) at the API server
//!     (`apiserver_request_total`; leader election off and nothing else writing) and the
//!     aggregator's own write counter, over `--idle` seconds (default 600) with a 60 s resync.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use fleetmirror_tests::cluster::{ControlPlane, namespace};
use fleetmirror_tests::process::{Aggregator, AggregatorConfig, arg, rss_mib};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::api::{Api, ListParams, ObjectMeta, PostParams};
use kube::runtime::watcher;
use serde_json::json;

const TARGETS: usize = 200;
const CONCURRENCY: usize = 16;
const P: &str = "fleetmirror.io";

fn data(tag: &str) -> BTreeMap<String, String> {
    // ~1 KiB, like a small configuration.
    (0..8)
        .map(|i| (format!("key{i}"), format!("{tag}-{}", "x".repeat(120))))
        .collect()
}

fn source(ns: &str, name: &str, tag: &str) -> ConfigMap {
    serde_json::from_value(json!({
        "metadata": {
            "name": name, "namespace": ns,
            "labels": {format!("{P}/enabled"): "true"},
            "annotations": {format!("{P}/sync"): "true", format!("{P}/target-namespaces"): "t-*"},
        },
        "data": data(tag),
    }))
    .unwrap()
}

/// Watches the mirrors named `name` (field-selected, so its first list is small, and done
/// before `ready` is sent: outside the timed window); returns, once `n` of them show `tag`, how
/// long after the instant received on `start` each first did, by namespace.
async fn seen(
    client: kube::Client,
    name: String,
    tag: String,
    n: usize,
    ready: tokio::sync::oneshot::Sender<()>,
    start: tokio::sync::oneshot::Receiver<Instant>,
) -> HashMap<String, Duration> {
    let api = Api::<ConfigMap>::all(client);
    let config = watcher::Config::default()
        .labels(&format!("{P}/mirror=true"))
        .fields(&format!("metadata.name={name}"));
    let mut stream = watcher(api, config).boxed();
    while !matches!(
        stream.try_next().await.unwrap(),
        Some(watcher::Event::InitDone)
    ) {}
    ready.send(()).unwrap();
    let since = start.await.unwrap();
    let mut at: HashMap<String, Duration> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(300);
    while at.len() < n {
        let ev = tokio::time::timeout_at(deadline.into(), stream.try_next())
            .await
            .unwrap_or_else(|_| panic!("only {} of {n} mirrors of {name} show {tag}", at.len()))
            .unwrap();
        if let Some(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) = ev {
            let shows = o
                .data
                .as_ref()
                .and_then(|d| d.get("key0"))
                .is_some_and(|v| v.starts_with(&format!("{tag}-")));
            if shows {
                at.entry(o.metadata.namespace.unwrap())
                    .or_insert_with(|| since.elapsed());
            }
        }
    }
    at
}

/// Starts [`seen`] and waits until its watch is listed; send the start instant to time from.
async fn watch_mirrors(
    client: &kube::Client,
    name: &str,
    tag: &str,
) -> (
    tokio::task::JoinHandle<HashMap<String, Duration>>,
    tokio::sync::oneshot::Sender<Instant>,
) {
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let (start_tx, start_rx) = tokio::sync::oneshot::channel();
    let handle = tokio::spawn(seen(
        client.clone(),
        name.to_owned(),
        tag.to_owned(),
        TARGETS,
        ready_tx,
        start_rx,
    ));
    ready_rx.await.unwrap();
    (handle, start_tx)
}

async fn plain_fanout(client: &kube::Client, targets: &[String], name: &str) -> Duration {
    let start = Instant::now();
    futures::stream::iter(targets.iter())
        .map(|ns| {
            let api = Api::<ConfigMap>::namespaced(client.clone(), ns);
            let obj = ConfigMap {
                metadata: ObjectMeta {
                    name: Some(name.into()),
                    ..Default::default()
                },
                data: Some(data("plain")),
                ..Default::default()
            };
            async move { api.create(&PostParams::default(), &obj).await.unwrap() }
        })
        .buffer_unordered(CONCURRENCY)
        .collect::<Vec<_>>()
        .await;
    start.elapsed()
}

/// Write requests the API server served so far (every client).
async fn writes_at_server(client: &kube::Client) -> f64 {
    let text = client
        .request_text(http::Request::get("/metrics").body(Vec::new()).unwrap())
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
        .filter(|l| {
            [
                "verb=\"POST\"",
                "verb=\"PUT\"",
                "verb=\"PATCH\"",
                "verb=\"DELETE\"",
            ]
            .iter()
            .any(|v| l.contains(v))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1]
}

#[tokio::main]
async fn main() {
    let rounds = arg("--rounds", 5) as usize;
    let idle = Duration::from_secs(arg("--idle", 600));
    let cp = ControlPlane::dedicated("bench-mirror");
    let client = cp.client(0).await;
    let home = namespace(&client, "fleetmirror").await;
    let src = namespace(&client, "src").await;
    eprintln!("[bench-mirror] creating {TARGETS} target namespaces…");
    let mut targets = Vec::new();
    for i in 0..TARGETS {
        let name = format!("t-{i:03}");
        let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .unwrap();
        targets.push(name);
    }
    let config = |extra: &[&str]| {
        let mut c = AggregatorConfig::new(&home);
        c.extra_args.extend(
            [
                "--controllers=mirror",
                "--leader-elect=false",
                "--mirror-max-targets=0",
                "--mirror-write-concurrency=16",
                "--mirror-resync-interval=60s",
            ]
            .iter()
            .chain(extra)
            .map(|s| s.to_string()),
        );
        c
    };
    let agg = Aggregator::start(&cp, 0, config(&[]));
    let cms = Api::<ConfigMap>::namespaced(client.clone(), &src);

    // (a) fan-out, side by side with a plain client, alternating which goes first.
    let mut ratios = Vec::new();
    let (mut ours_s, mut plain_s) = (Vec::new(), Vec::new());
    for r in 0..rounds {
        let run_ours = async || {
            let name = format!("fan-{r}");
            let (watching, start) = watch_mirrors(&client, &name, "v1").await;
            start.send(Instant::now()).unwrap();
            cms.create(&PostParams::default(), &source(&src, &name, "v1"))
                .await
                .unwrap();
            let at = watching.await.unwrap();
            at.values().max().copied().unwrap()
        };
        let (ours, plain) = if r % 2 == 0 {
            let o = run_ours().await;
            (
                o,
                plain_fanout(&client, &targets, &format!("plain-{r}")).await,
            )
        } else {
            let p = plain_fanout(&client, &targets, &format!("plain-{r}")).await;
            (run_ours().await, p)
        };
        eprintln!(
            "[bench-mirror] (a) round {r}: fleetmirror {:.0} ms, plain client {:.0} ms",
            ours.as_secs_f64() * 1e3,
            plain.as_secs_f64() * 1e3
        );
        ratios.push(ours.as_secs_f64() / plain.as_secs_f64());
        ours_s.push(ours.as_secs_f64() * 1e3);
        plain_s.push(plain.as_secs_f64() * 1e3);
    }

    // (b) one change of a source → its 200 mirrors.
    let mut per_mirror = Vec::new();
    for c in 0..rounds {
        let tag = format!("v{}", c + 2);
        let (watching, start) = watch_mirrors(&client, "fan-0", &tag).await;
        let mut cm = cms.get("fan-0").await.unwrap();
        cm.data = Some(data(&tag));
        start.send(Instant::now()).unwrap();
        cms.replace("fan-0", &PostParams::default(), &cm)
            .await
            .unwrap();
        per_mirror.extend(
            watching
                .await
                .unwrap()
                .values()
                .map(|d| d.as_secs_f64() * 1e3),
        );
    }

    // (c) 10 sources × 200 namespaces.
    for s in rounds..10 {
        cms.create(
            &PostParams::default(),
            &source(&src, &format!("fan-{s}"), "v1"),
        )
        .await
        .unwrap();
    }
    let sources = rounds.max(10);
    let want = sources * TARGETS;
    let count_mirrors = || async {
        Api::<ConfigMap>::all(client.clone())
            .list_metadata(&ListParams::default().labels(&format!("{P}/mirror=true")))
            .await
            .unwrap()
            .items
            .len()
    };
    let start = Instant::now();
    while count_mirrors().await < want {
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "{want} mirrors not reached"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rss_converged = rss_mib(agg.process.pid());
    eprintln!(
        "[bench-mirror] (c) {want} mirrors: {rss_converged:.1} MiB; adding 20 000 unlabelled ConfigMaps and Secrets…"
    );
    let noise: Vec<(usize, String)> = (0..20_000)
        .map(|i| (i, targets[i % TARGETS].clone()))
        .collect();
    futures::stream::iter(noise)
        .map(|(i, ns)| {
            let client = client.clone();
            async move {
                let meta = ObjectMeta {
                    name: Some(format!("noise-{i}")),
                    ..Default::default()
                };
                if i % 2 == 0 {
                    let o = ConfigMap {
                        metadata: meta,
                        data: Some(data("noise")),
                        ..Default::default()
                    };
                    Api::<ConfigMap>::namespaced(client, &ns)
                        .create(&PostParams::default(), &o)
                        .await
                        .map(drop)
                } else {
                    let o = Secret {
                        metadata: meta,
                        string_data: Some(data("noise")),
                        ..Default::default()
                    };
                    Api::<Secret>::namespaced(client, &ns)
                        .create(&PostParams::default(), &o)
                        .await
                        .map(drop)
                }
            }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<_>>()
        .await
        .unwrap();
    let rss_running_with_noise = rss_mib(agg.process.pid());
    let fresh_home = namespace(&client, "fleetmirror").await;
    let mut fresh_config = config(&[]);
    fresh_config.namespace = fresh_home;
    let fresh = Aggregator::start(&cp, 0, fresh_config);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let rss_fresh_with_noise = rss_mib(fresh.process.pid());
    drop(fresh);

    // (d) idle: no write at the API server.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let writes_of = |agg: &Aggregator| -> f64 {
        ["create", "update", "recreate", "delete", "adopt"]
            .iter()
            .map(|op| {
                fleetmirror_tests::process::metric_with(
                    agg.admin_port,
                    "fleetmirror_mirror_writes_total",
                    &format!("operation=\"{op}\""),
                )
            })
            .sum()
    };
    let (server_before, agg_before) = (writes_at_server(&client).await, writes_of(&agg));
    let passes_before = agg
        .metric("fleetmirror_mirror_reconcile_seconds_count")
        .unwrap_or(0.0);
    eprintln!("[bench-mirror] (d) idle for {}s…", idle.as_secs());
    tokio::time::sleep(idle).await;
    let (server_after, agg_after) = (writes_at_server(&client).await, writes_of(&agg));
    let passes = agg
        .metric("fleetmirror_mirror_reconcile_seconds_count")
        .unwrap_or(0.0)
        - passes_before;

    println!(
        "fleetmirror mirror benchmark ({} UTC), real kube-apiserver 1.20 + etcd, release aggregator, auto-discovery",
        jiff::Timestamp::now().strftime("%Y-%m-%d %H:%M")
    );
    println!(
        "  (a) 1 source -> {TARGETS} namespaces: fleetmirror median {:.0} ms vs a plain client at concurrency {CONCURRENCY} {:.0} ms; ratio median {:.2} (rounds {:?}) (target <= 1.3)",
        median(ours_s.clone()),
        median(plain_s.clone()),
        median(ratios.clone()),
        ratios
            .iter()
            .map(|r| (r * 100.0).round() / 100.0)
            .collect::<Vec<_>>()
    );
    println!(
        "  (b) 1 change -> {TARGETS} mirrors updated: p50 {:.0} ms, p99 {:.0} ms over {rounds} changes",
        percentile(&mut per_mirror, 0.5),
        percentile(&mut per_mirror, 0.99)
    );
    println!(
        "  (c) {sources} sources x {TARGETS} namespaces = {want} mirrors: RSS {rss_converged:.1} MiB (target < 40); with 20 000 unlabelled ConfigMaps/Secrets added: {rss_running_with_noise:.1} MiB running on, {rss_fresh_with_noise:.1} MiB for a fresh aggregator (target: within 2 MiB)",
    );
    println!(
        "  (d) {}s idle after convergence ({passes} per-source reconciles, resync 60 s): {} write requests at the API server, {} by the aggregator (target 0)",
        idle.as_secs(),
        server_after - server_before,
        agg_after - agg_before
    );
}
