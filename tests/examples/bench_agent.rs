//! Agent benchmark (run through `scripts/bench-agent.sh`, release build): the agent.md
//! performance figures, measured against the real local API server with the real agent in a
//! fake node's mount namespace.
//!
//! * latency from "API pod and pod directory both present" to "target mounted" (first seen in
//!   the namespace's mountinfo, polled every millisecond) over 200 pods created one after the
//!   other, as kubelet would: the API object, then the directory;
//! * the agent's resident memory with 110 vCluster pods mounted on the node;
//! * the agent's CPU time over 10 s with nothing changing.
//!
//! Each figure is the median over `--runs` trials (default 3), since these machines are shared.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fleetmirror_tests::cluster::{ControlPlane, namespace};
use fleetmirror_tests::footprint::{AnnotationStyle, VCluster, create};
use fleetmirror_tests::node::NodeSandbox;
use fleetmirror_tests::process::Agent;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn proc_field(pid: u32, file: &str, key: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/{file}")).unwrap();
    text.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

struct Trial {
    latencies_ms: Vec<f64>,
    rss_kib: u64,
    idle_cpu_ms: f64,
    idle_passes: f64,
}

async fn trial(cp: &ControlPlane, pods: usize, measure_rss_at: usize) -> Trial {
    let client = cp.client(0).await;
    let ns = namespace(&client, "bench").await;
    let name = format!("bench-{}", fleetmirror_tests::suffix());
    let vc = VCluster::new(&ns, &name);
    create(&client, &vc.statefulset()).await;
    let node = NodeSandbox::new(&format!("bench-{}", fleetmirror_tests::suffix()));
    let agent = Agent::start(cp, 0, &node, None, &[]);
    let pid = agent.process.pid();

    // Poll the namespace's mountinfo; remember when each target first appears.
    let seen: Arc<Mutex<HashMap<PathBuf, Instant>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let poller = {
        let (seen, stop, holder) = (seen.clone(), stop.clone(), node.pid());
        let prefix = node.loft_root.clone();
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let text = std::fs::read_to_string(format!("/proc/{holder}/mountinfo"))
                    .unwrap_or_default();
                let now = Instant::now();
                let mut s = seen.lock().unwrap();
                for line in text.lines() {
                    if let Some(point) = line.split(' ').nth(4).map(PathBuf::from)
                        && point.starts_with(&prefix)
                    {
                        s.entry(point).or_insert(now);
                    }
                }
                drop(s);
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };

    let mut present: Vec<(PathBuf, Instant)> = Vec::new();
    let mut rss_kib = 0;
    for i in 0..pods {
        let sp = vc.synced_pod(
            "default",
            &format!("p{i}"),
            &node.name,
            AnnotationStyle::Classic,
        );
        let created = create(&client, &sp.pod).await;
        node.create_pod_dir(created.metadata.uid.as_deref().unwrap());
        present.push((
            node.loft_root
                .join(&name)
                .join("kubelet/pods")
                .join(&sp.virtual_uid),
            Instant::now(),
        ));
        if i + 1 == measure_rss_at {
            wait_all(&seen, &present).await;
            tokio::time::sleep(Duration::from_secs(2)).await;
            rss_kib = proc_field(pid, "status", "VmRSS:");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    wait_all(&seen, &present).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    poller.join().unwrap();

    let mut latencies_ms: Vec<f64> = {
        let seen = seen.lock().unwrap();
        present
            .iter()
            .map(|(t, at)| seen[t].saturating_duration_since(*at).as_secs_f64() * 1000.0)
            .collect()
    };
    latencies_ms.sort_by(|a, b| a.total_cmp(b));

    // Nothing changes for 10 s (after 2 s to settle): what does the agent spend?
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ticks_per_s = 100.0; // USER_HZ on Linux
    let passes_before = agent
        .metric("fleetmirror_agent_reconcile_passes_total")
        .unwrap_or(0.0);
    let before = cpu_ticks(pid);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let idle_cpu_ms = (cpu_ticks(pid) - before) as f64 * 1000.0 / ticks_per_s;
    let idle_passes = agent
        .metric("fleetmirror_agent_reconcile_passes_total")
        .unwrap_or(0.0)
        - passes_before;
    drop(agent);
    Trial {
        latencies_ms,
        rss_kib,
        idle_cpu_ms,
        idle_passes,
    }
}

async fn wait_all(seen: &Mutex<HashMap<PathBuf, Instant>>, want: &[(PathBuf, Instant)]) {
    let start = Instant::now();
    loop {
        if want
            .iter()
            .all(|(t, _)| seen.lock().unwrap().contains_key(t))
        {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "not every pod was mounted within 120 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::main]
async fn main() {
    let runs: usize = std::env::args()
        .skip_while(|a| a != "--runs")
        .nth(1)
        .map(|v| v.parse().expect("--runs N"))
        .unwrap_or(3);
    let cp = ControlPlane::shared();
    let (mut p50, mut p99, mut max, mut rss, mut idle, mut idle_passes) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    for run in 1..=runs {
        eprintln!("[bench-agent] run {run}/{runs}: 200 pods, one every ~10 ms…");
        let t = trial(cp, 200, 110).await;
        let l = &t.latencies_ms;
        eprintln!(
            "[bench-agent]   p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; RSS at 110 pods {} KiB; idle CPU {:.0} ms / 10 s, {} passes",
            percentile(l, 0.5),
            percentile(l, 0.99),
            l[l.len() - 1],
            t.rss_kib,
            t.idle_cpu_ms,
            t.idle_passes
        );
        p50.push(percentile(l, 0.5));
        p99.push(percentile(l, 0.99));
        max.push(l[l.len() - 1]);
        rss.push(t.rss_kib as f64);
        idle.push(t.idle_cpu_ms);
        idle_passes.push(t.idle_passes);
    }
    println!("fleetmirror-agent benchmark, median of {runs} runs");
    println!(
        "  pod in API + directory present -> mounted, 200 pods: p50 {:.1} ms, p99 {:.1} ms (target < 100 ms), max {:.1} ms",
        median(p50),
        median(p99),
        median(max)
    );
    println!(
        "  resident memory with 110 vCluster pods mounted: {:.1} MiB (target < 20 MiB)",
        median(rss) / 1024.0
    );
    println!(
        "  CPU with nothing changing: {:.0} ms per 10 s, {} reconcile passes",
        median(idle),
        median(idle_passes)
    );
}
