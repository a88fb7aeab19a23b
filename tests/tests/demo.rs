//! The README's first command works: `scripts/demo.sh --check` starts a control plane, the
//! sample fleet, the aggregator and the agent, checks what the demo promises, and cleans up.

use std::process::Command;

use fleetmirror_tests::process::{binary, free_port};
use fleetmirror_tests::repo_root;

#[test]
fn demo_starts_everything_and_shows_it() {
    let bin_dir = binary("fleetmirror-aggregator")
        .parent()
        .unwrap()
        .to_path_buf();
    let dir = std::env::temp_dir().join(format!(
        "fleetmirror-demo-test-{}",
        fleetmirror_tests::suffix()
    ));
    let out = Command::new("bash")
        .arg(repo_root().join("scripts/demo.sh"))
        .arg("--check")
        .env("FLEETMIRROR_DEMO_DIR", &dir)
        .env("FLEETMIRROR_BIN_DIR", &bin_dir)
        .env("FLEETMIRROR_DEMO_GRPC_PORT", free_port().to_string())
        .env("FLEETMIRROR_DEMO_ADMIN_PORT", free_port().to_string())
        .env("FLEETMIRROR_DEMO_AGENT_ADMIN_PORT", free_port().to_string())
        .output()
        .expect("running scripts/demo.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let log = format!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "scripts/demo.sh --check failed:\n{log}"
    );
    assert!(stdout.contains("fleetmirror demo is running."), "{log}");
    assert!(
        stdout.contains("fleetmirror.v1.Diagnostics"),
        "reflection listing missing:\n{log}"
    );
    assert!(
        stdout.contains("\"name\": \"demo-node\""),
        "the agent's node is not listed:\n{log}"
    );
    assert!(
        stdout.contains("/var/lib/loft/alpha/kubelet/pods/9a41e7c2-0d3b-4f86-a5e1-27c9b8d4f315"),
        "alpha's web-0 mount is shown:\n{log}"
    );
    assert!(
        stdout.contains(
            "/tmp/vcluster/team-beta/beta/kubelet/pods/c0b5e8d1-7a2f-4c39-b6e4-51d2a9f8e036"
        ),
        "{log}"
    );
    assert!(
        stdout.contains("PULL_SCOPE=team-alpha") && !stdout.contains("ADMIN_TOKEN="),
        "the sample Secret's mirror, transformed:\n{log}"
    );
    assert!(
        stdout.contains("MIRROR_STATE_MIRRORED") && stdout.contains("\"namespace\": \"team-beta\""),
        "GetMirror shows the mirrored targets:\n{log}"
    );
    assert!(
        stdout.contains("team-alpha/alpha: 100 Full, mounts 4/4"),
        "alpha is Full:\n{log}"
    );
    assert!(
        stdout.contains("team-beta/beta: 50 Partial, mounts 2/2"),
        "beta is Partial:\n{log}"
    );
    assert!(
        stdout.contains("name: dev-dev-alice")
            && stdout.contains("name: dev-dev-carol")
            && stdout.contains("host: shop.shop-prod.svc.cluster.local"),
        "the generated VirtualService is shown:\n{log}"
    );
    assert!(
        stdout.contains("\"apiVersion\": \"networking.istio.io/v1\""),
        "ListRoutes is shown:\n{log}"
    );
    assert!(
        stdout.contains("\"message\": \"ArgoCD is healthy on prod-east\"")
            && stdout.contains("argocd-application-controller"),
        "GetIntegration shows the second cluster checked:\n{log}"
    );
    assert!(stdout.contains("demo check: ok"), "{log}");
    assert!(!dir.exists(), "the demo cleans up after itself");
}
