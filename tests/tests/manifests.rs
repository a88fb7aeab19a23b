//! The committed manifests stay in sync with the code:
//!
//! * the CRD YAML under `deploy/crds/` and `charts/fleetmirror/crds/` is what the Rust types
//!   generate (`FLEETMIRROR_BLESS=1` rewrites it, then re-render with scripts/render-manifests.sh);
//! * `scripts/render-manifests.sh --check`: `helm lint --strict`, `helm template` equals
//!   `deploy/install.yaml`, and every rendering passes `kubernetes-validate --strict`;
//! * every `FLEETMIRROR_*` variable the manifests set is a flag of the binary they run, and the
//!   ports and probes point at the binaries' defaults;
//! * the CRDs and the whole of install.yaml apply to the real API server, and
//!   `kubectl get vclusterhealth`, `kubectl get it` and `kubectl get integrations` print the
//!   columns of health.md and integrations.md.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use clap::CommandFactory;
use fleetmirror_tests::cluster::ControlPlane;
use fleetmirror_tests::repo_root;

const CRD_HEADER: &str = "# Generated from aggregator/src/crd.rs: do not edit.\n\
# Regenerate: FLEETMIRROR_BLESS=1 cargo test -p fleetmirror-tests --test manifests, then scripts/render-manifests.sh\n";

#[test]
fn committed_crds_match_the_rust_types() {
    let bless = std::env::var_os("FLEETMIRROR_BLESS").is_some();
    for crd in fleetmirror_aggregator::crd::crds() {
        let name = crd.metadata.name.clone().unwrap();
        let yaml = format!("{CRD_HEADER}{}", serde_yaml::to_string(&crd).unwrap());
        for dir in ["deploy/crds", "charts/fleetmirror/crds"] {
            let path = repo_root().join(dir).join(format!("{name}.yaml"));
            if bless {
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(&path, &yaml).unwrap();
                continue;
            }
            let committed = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(
                committed == yaml,
                "{} drifted from the Rust types; run FLEETMIRROR_BLESS=1 cargo test -p fleetmirror-tests --test manifests && scripts/render-manifests.sh",
                path.display()
            );
        }
    }
}

#[test]
fn chart_lints_renders_to_install_yaml_and_validates() {
    let out = Command::new("bash")
        .arg(repo_root().join("scripts/render-manifests.sh"))
        .arg("--check")
        .output()
        .unwrap();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "scripts/render-manifests.sh --check failed:\n{log}"
    );
    assert!(log.contains("deploy/install.yaml is up to date"), "{log}");
    assert!(
        log.contains("kubernetes-validate --strict: default values ok"),
        "{log}"
    );
}

fn install_docs() -> Vec<serde_yaml::Value> {
    fleetmirror_tests::pod::Rendered::install_yaml()
        .docs()
        .to_vec()
}

fn find<'a>(docs: &'a [serde_yaml::Value], kind: &str, name: &str) -> &'a serde_yaml::Value {
    docs.iter()
        .find(|d| d["kind"].as_str() == Some(kind) && d["metadata"]["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("{kind} {name} not in deploy/install.yaml"))
}

fn env_names(container: &serde_yaml::Value) -> BTreeSet<String> {
    container["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_owned())
        .collect()
}

fn flag_envs(cmd: clap::Command) -> BTreeSet<String> {
    cmd.get_arguments()
        .filter_map(|a| a.get_env())
        .map(|e| e.to_string_lossy().into_owned())
        .collect()
}

#[test]
fn manifests_set_only_flags_the_binaries_have() {
    let docs = install_docs();
    for (kind, name, cmd) in [
        (
            "Deployment",
            "fleetmirror-aggregator",
            fleetmirror_aggregator::args::Args::command(),
        ),
        (
            "DaemonSet",
            "fleetmirror-agent",
            fleetmirror_agent::args::Args::command(),
        ),
    ] {
        let container = &find(&docs, kind, name)["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(
            container["command"][0].as_str(),
            Some(name),
            "{name} runs its own binary"
        );
        let known = flag_envs(cmd);
        for env in env_names(container) {
            assert!(
                known.contains(&env),
                "{kind} {name} sets {env}, which {name} has no flag for"
            );
        }
    }
    let agent = &find(&docs, "DaemonSet", "fleetmirror-agent")["spec"]["template"]["spec"];
    assert!(
        env_names(&agent["containers"][0]).contains("FLEETMIRROR_NODE_NAME"),
        "the agent needs its node name"
    );
    let aggregator = &find(&docs, "Deployment", "fleetmirror-aggregator")["spec"]["template"]["spec"]
        ["containers"][0];
    assert!(
        env_names(aggregator).contains("FLEETMIRROR_POD_IP"),
        "standbys forward Diagnostics to the leader's advertised pod IP"
    );
    assert_eq!(
        agent["containers"][0]["securityContext"]["privileged"].as_bool(),
        Some(true)
    );
    assert_eq!(
        agent["priorityClassName"].as_str(),
        Some("system-node-critical")
    );
    let mounts = agent["containers"][0]["volumeMounts"]
        .as_sequence()
        .unwrap();
    let propagation = |path: &str| {
        mounts
            .iter()
            .find(|m| m["mountPath"].as_str() == Some(path))
            .and_then(|m| m["mountPropagation"].as_str())
            .map(str::to_owned)
    };
    assert_eq!(
        propagation("/var/lib/loft").as_deref(),
        Some("Bidirectional"),
        "agent mounts must reach the host"
    );
    assert_eq!(
        propagation("/var/lib/kubelet/pods").as_deref(),
        Some("HostToContainer"),
        "kubelet's later mounts must reach the agent"
    );

    // Diagnostics is for this namespace only: the aggregator's gRPC port is reachable from
    // pods of its own namespace, the admin ports from the metrics selector.
    let policy = find(&docs, "NetworkPolicy", "fleetmirror-aggregator");
    let ingress = policy["spec"]["ingress"].as_sequence().unwrap();
    let grpc_from: Vec<&serde_yaml::Value> = ingress
        .iter()
        .filter(|r| r["ports"][0]["port"].as_str() == Some("grpc"))
        .flat_map(|r| r["from"].as_sequence().unwrap())
        .collect();
    assert_eq!(grpc_from.len(), 1, "{grpc_from:?}");
    assert!(
        grpc_from[0]["podSelector"]
            .as_mapping()
            .is_some_and(|m| m.is_empty())
            && grpc_from[0]["namespaceSelector"].is_null(),
        "gRPC only from this namespace: {grpc_from:?}"
    );
    find(&docs, "NetworkPolicy", "fleetmirror-agent");

    // Ports and probes match the binaries' defaults (:9090 / :8080 / :8081).
    let agg = &find(&docs, "Deployment", "fleetmirror-aggregator")["spec"]["template"]["spec"]["containers"]
        [0];
    let ports: BTreeSet<i64> = agg["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| p["containerPort"].as_i64().unwrap())
        .collect();
    assert_eq!(ports, BTreeSet::from([8080, 9090]));
    for (probe, path) in [("livenessProbe", "/livez"), ("readinessProbe", "/readyz")] {
        assert_eq!(agg[probe]["httpGet"]["path"].as_str(), Some(path));
        assert_eq!(
            agent["containers"][0][probe]["httpGet"]["path"].as_str(),
            Some(path)
        );
    }
}

/// The mirror controller's RBAC modes: `*/*` with the seven verbs by default; with
/// `mirror.rbac.allResources=false` exactly the listed rules (and rendering fails without
/// any); without `mirror` among the controllers, neither.
#[test]
fn mirror_rbac_renders_all_resources_or_exactly_the_listed_rules() {
    const VERBS: [&str; 7] = [
        "get", "list", "watch", "create", "update", "patch", "delete",
    ];
    let rules = |set: &[&str]| -> Vec<serde_yaml::Value> {
        let docs = fleetmirror_tests::pod::Rendered::helm(set).docs().to_vec();
        find(&docs, "ClusterRole", "fleetmirror-aggregator")["rules"]
            .as_sequence()
            .unwrap()
            .clone()
    };
    let strs = |v: &serde_yaml::Value| -> Vec<String> {
        v.as_sequence()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_owned())
            .collect()
    };
    let default = rules(&[]);
    assert!(default.iter().any(|r| strs(&r["apiGroups"]) == ["*"]
        && strs(&r["resources"]) == ["*"]
        && strs(&r["verbs"]) == VERBS));
    let listed = rules(&[
        "aggregator.controllers={health,mirror}",
        "mirror.rbac.allResources=false",
        "mirror.rbac.rules[0].apiGroups[0]=",
        "mirror.rbac.rules[0].resources={secrets,configmaps}",
        "mirror.rbac.rules[1].apiGroups={traefik.io}",
        "mirror.rbac.rules[1].resources={middlewares}",
    ]);
    let mirrored: Vec<(Vec<String>, Vec<String>)> = listed
        .iter()
        .filter(|r| strs(&r["verbs"]) == VERBS)
        .map(|r| (strs(&r["apiGroups"]), strs(&r["resources"])))
        .collect();
    assert_eq!(
        mirrored,
        [
            (
                vec!["".to_owned()],
                vec!["secrets".to_owned(), "configmaps".to_owned()]
            ),
            (
                vec!["traefik.io".to_owned()],
                vec!["middlewares".to_owned()]
            ),
        ]
    );
    assert!(!listed.iter().any(|r| strs(&r["resources"]) == ["*"]));
    let health_only = rules(&["aggregator.controllers={health}"]);
    assert!(
        !health_only
            .iter()
            .any(|r| strs(&r["resources"]).contains(&"secrets".to_owned())
                || strs(&r["resources"]) == ["*"]
                || strs(&r["resources"]).contains(&"namespaces".to_owned())),
        "{health_only:?}"
    );
    let out = Command::new(fleetmirror_tests::tools_bin().join("helm"))
        .args(["template", "x"])
        .arg(repo_root().join("charts/fleetmirror"))
        .args(["--set", "mirror.rbac.allResources=false"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("needs mirror.rbac.rules"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The routing controller's RBAC (routing.md "RBAC"), rendered only when it is selected.
#[test]
fn routing_rbac_is_exactly_what_the_spec_lists() {
    let rules = |set: &[&str]| -> Vec<(Vec<String>, Vec<String>, Vec<String>)> {
        let docs = fleetmirror_tests::pod::Rendered::helm(set).docs().to_vec();
        let strs = |v: &serde_yaml::Value| -> Vec<String> {
            v.as_sequence()
                .unwrap()
                .iter()
                .map(|s| s.as_str().unwrap().to_owned())
                .collect()
        };
        find(&docs, "ClusterRole", "fleetmirror-aggregator")["rules"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    strs(&r["apiGroups"]),
                    strs(&r["resources"]),
                    strs(&r["verbs"]),
                )
            })
            .collect()
    };
    let v = |s: &[&str]| s.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let routing = rules(&["aggregator.controllers={routing}"]);
    let all = v(&[
        "get", "list", "watch", "create", "update", "patch", "delete",
    ]);
    for want in [
        (
            v(&[""]),
            v(&["configmaps", "namespaces"]),
            v(&["get", "list", "watch"]),
        ),
        (v(&[""]), v(&["services"]), all.clone()),
        (
            v(&["networking.istio.io"]),
            v(&["virtualservices"]),
            all.clone(),
        ),
        (
            v(&["events.k8s.io"]),
            v(&["events"]),
            v(&["create", "patch"]),
        ),
    ] {
        assert!(routing.contains(&want), "{want:?} missing from {routing:?}");
    }
    assert!(
        !routing
            .iter()
            .any(|r| r.1.contains(&"*".to_owned()) || r.1.contains(&"secrets".to_owned()))
    );
    let without = rules(&["aggregator.controllers={health,mirror}"]);
    assert!(
        !without
            .iter()
            .any(|r| r.1.contains(&"virtualservices".to_owned()))
    );
}

fn kubectl(kubeconfig: &Path, args: &[&str]) -> String {
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .expect("kubectl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "kubectl {args:?} failed:\n{text}");
    text
}

#[test]
fn crds_and_install_yaml_apply_to_the_real_api_server() {
    let cp = ControlPlane::shared();
    // Cluster 1: the other tests (and the aggregators they run) live in cluster 0.
    let kc = cp.kubeconfig(1);
    // install.yaml as a whole (its CRDs included), except the PodDisruptionBudget.
    fleetmirror_tests::pod::apply_install_yaml(cp, 1);

    // RBAC is what the code needs, and no more (checked by impersonation on the real server).
    let can = |who: &str, args: &[&str]| {
        let user = format!("system:serviceaccount:fleetmirror-system:{who}");
        let mut all = vec!["auth", "can-i", "--as", &user];
        all.extend_from_slice(args);
        let out = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(kc)
            .args(&all)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim() == "yes"
    };
    for args in [
        &["list", "pods", "-A"][..],
        &["watch", "pods", "-A"],
        &["list", "statefulsets.apps", "-A"],
        &["watch", "deployments.apps", "-A"],
    ] {
        assert!(
            can("fleetmirror-agent", args),
            "the agent needs to {args:?}"
        );
    }
    for args in [
        &["create", "pods", "-A"][..],
        &["update", "pods", "-A"],
        &["get", "secrets", "-A"],
        &["create", "tokenreviews"],
        &["patch", "vclusterhealths.fleetmirror.io/status", "-A"],
    ] {
        assert!(
            !can("fleetmirror-agent", args),
            "the agent must not {args:?}: it never writes to the API"
        );
    }
    for args in [
        &["create", "tokenreviews"][..],
        &["get", "pods", "-A"],
        &["list", "services", "-A"],
        &[
            "patch",
            "vclusterhealths.fleetmirror.io",
            "--subresource=status",
            "-A",
        ],
        &[
            "update",
            "leases.coordination.k8s.io/fleetmirror-aggregator",
            "-n",
            "fleetmirror-system",
        ],
        &[
            "create",
            "leases.coordination.k8s.io",
            "-n",
            "fleetmirror-system",
        ],
    ] {
        assert!(
            can("fleetmirror-aggregator", args),
            "the aggregator needs to {args:?}"
        );
    }
    // The mirror controller's default RBAC (mirror.rbac.allResources): every namespaced
    // object, the stated risk of the default (README "Mirroring").
    for args in [
        &["get", "secrets", "-A"][..],
        &["create", "configmaps", "-A"],
        &["delete", "roles.rbac.authorization.k8s.io", "-A"],
        &["watch", "namespaces"],
    ] {
        assert!(
            can("fleetmirror-aggregator", args),
            "the mirror controller needs to {args:?}"
        );
    }
    // Never more than the seven verbs: no escalation, no impersonation.
    for args in [
        &["bind", "clusterroles.rbac.authorization.k8s.io"][..],
        &["escalate", "clusterroles.rbac.authorization.k8s.io"],
        &["impersonate", "users"],
        &["approve", "certificatesigningrequests.certificates.k8s.io"],
    ] {
        assert!(
            !can("fleetmirror-aggregator", args),
            "the aggregator must not {args:?}"
        );
    }

    let sample = repo_root().join("fleet.yaml");
    kubectl(kc, &["apply", "-f", &sample.display().to_string()]);
    let table = kubectl(kc, &["get", "vclusterhealth", "-n", "default"]);
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME",
            "TARGETNS",
            "VCLUSTERS",
            "FULL",
            "PARTIAL",
            "NONE",
            "LOWESTSCORE",
            "LASTUPDATED",
            "AGE"
        ]
    );
    assert!(table.contains("fleet"), "{table}");

    // The integrations controller's RBAC: its kinds and their status, Secrets (default: every
    // namespace), and never a write to a Secret.
    for args in [
        &["watch", "integrations.fleetmirror.io", "-A"][..],
        &["list", "integrationtargets.fleetmirror.io", "-A"],
        &[
            "patch",
            "integrations.fleetmirror.io",
            "--subresource=status",
            "-A",
        ],
        &[
            "patch",
            "integrationtargets.fleetmirror.io",
            "--subresource=status",
            "-A",
        ],
        &["get", "secrets", "-A"],
    ] {
        assert!(
            can("fleetmirror-aggregator", args),
            "the integrations controller needs to {args:?}"
        );
    }
    // The columns of integrations.md, from the examples users start from.
    let examples = repo_root().join("examples/integrations.yaml");
    kubectl(kc, &["apply", "-f", &examples.display().to_string()]);
    let columns = |kind: &str| -> Vec<String> {
        kubectl(kc, &["get", kind, "-n", "fleet-ops"])
            .lines()
            .next()
            .unwrap()
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(
        columns("it"),
        ["NAME", "CLUSTER", "READY", "VERSION", "MESSAGE", "AGE"]
    );
    assert_eq!(
        columns("integrations"),
        ["NAME", "TYPE", "PHASE", "HEALTHY", "AGE"]
    );
}
