//! One component of a target cluster (a Deployment, StatefulSet or DaemonSet) judged from the
//! object the target's API server returned (integrations.md "Checks"): desired and available
//! counts, rollouts, the verdict and the exact message.

use serde_json::Value;

/// The workload kinds a check reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// apps/v1 Deployment.
    Deployment,
    /// apps/v1 StatefulSet.
    StatefulSet,
    /// apps/v1 DaemonSet.
    DaemonSet,
}

impl Kind {
    /// `Deployment`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Deployment => "Deployment",
            Kind::StatefulSet => "StatefulSet",
            Kind::DaemonSet => "DaemonSet",
        }
    }

    /// The plural resource (`deployments`), as Kubernetes names it in "not found" errors.
    pub fn resource(self) -> &'static str {
        match self {
            Kind::Deployment => "deployments",
            Kind::StatefulSet => "statefulsets",
            Kind::DaemonSet => "daemonsets",
        }
    }

    /// What the counts count in messages.
    fn units(self) -> &'static str {
        match self {
            Kind::DaemonSet => "pods",
            _ => "replicas",
        }
    }
}

/// A component's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum State {
    /// Available ≥ desired, no rollout in progress.
    Healthy,
    /// Some available, fewer than desired or a rollout in progress.
    Degraded,
    /// None available (also when scaled to 0).
    Unhealthy,
    /// The object does not exist.
    Missing,
}

impl State {
    /// As the status says it.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Healthy => "Healthy",
            State::Degraded => "Degraded",
            State::Unhealthy => "Unhealthy",
            State::Missing => "Missing",
        }
    }
}

/// A judged component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Judged {
    /// The verdict.
    pub state: State,
    /// Available replicas (pods for a DaemonSet).
    pub available: i64,
    /// Desired replicas.
    pub desired: i64,
    /// `Some(updated)` while a rollout is in progress.
    pub rollout: Option<i64>,
    /// The exact message.
    pub message: String,
}

fn int(v: &Value) -> i64 {
    v.as_i64().unwrap_or(0)
}

/// The display name of component `name` of tool `tool` (`ArgoCD`, `Flux`, `Istio`,
/// `Prometheus`; `None` for workloads, named by kind): KSIT's words for argocd-server and
/// istiod.
pub fn display_name(tool: Option<&str>, kind: Kind, name: &str) -> String {
    match (tool, name) {
        (Some("ArgoCD"), "argocd-server") => "ArgoCD server".into(),
        (Some("Istio"), "istiod") => "Istiod".into(),
        (Some("Istio"), n) if n.starts_with("istiod-") => format!("Istiod {n}"),
        (Some(tool), n) => format!("{tool} {n}"),
        (None, n) => format!("{} {n}", kind.as_str()),
    }
}

/// Judges `object` (`None`: not found) of `kind` named `name`, displayed as `display`, on
/// cluster `cluster`.
pub fn judge(
    kind: Kind,
    name: &str,
    display: &str,
    object: Option<&Value>,
    cluster: &str,
) -> Judged {
    let Some(o) = object else {
        return Judged {
            state: State::Missing,
            available: 0,
            desired: 0,
            rollout: None,
            message: format!(
                "{display} {} not found on {cluster}: {}.apps \"{name}\" not found",
                kind.as_str().to_ascii_lowercase(),
                kind.resource()
            ),
        };
    };
    let (spec, status) = (&o["spec"], &o["status"]);
    let stale = int(&status["observedGeneration"]) < int(&o["metadata"]["generation"]);
    let rolling =
        |strategy: &Value| strategy["type"].as_str().unwrap_or("RollingUpdate") == "RollingUpdate";
    let (desired, available, updated, rollout) = match kind {
        Kind::Deployment => {
            let desired = spec["replicas"].as_i64().unwrap_or(1);
            let updated = int(&status["updatedReplicas"]);
            let rollout = stale || updated < desired || int(&status["replicas"]) > updated;
            (desired, int(&status["availableReplicas"]), updated, rollout)
        }
        Kind::StatefulSet => {
            let desired = spec["replicas"].as_i64().unwrap_or(1);
            // 1.20 reports no availableReplicas for StatefulSets: readyReplicas then.
            let available = status
                .get("availableReplicas")
                .map_or_else(|| int(&status["readyReplicas"]), int);
            let updated = int(&status["updatedReplicas"]);
            let strategy = &spec["updateStrategy"];
            let partition = int(&strategy["rollingUpdate"]["partition"]);
            let rollout = stale || (rolling(strategy) && updated < desired - partition);
            (desired, available, updated, rollout)
        }
        Kind::DaemonSet => {
            let desired = int(&status["desiredNumberScheduled"]);
            let updated = int(&status["updatedNumberScheduled"]);
            let rollout = stale || (rolling(&spec["updateStrategy"]) && updated < desired);
            (desired, int(&status["numberAvailable"]), updated, rollout)
        }
    };
    let units = kind.units();
    let (state, message) = if available <= 0 {
        (
            State::Unhealthy,
            format!(
                "{display} has 0 available {units} on {cluster}{}",
                if desired == 0 { " (scaled to 0)" } else { "" }
            ),
        )
    } else if available >= desired && !rollout {
        (
            State::Healthy,
            format!("{display} has {available}/{desired} available {units} on {cluster}"),
        )
    } else if rollout {
        (
            State::Degraded,
            format!("{display} rollout in progress on {cluster}: {updated}/{desired} updated"),
        )
    } else {
        (
            State::Degraded,
            format!("{display} has {available}/{desired} available {units} on {cluster}"),
        )
    };
    Judged {
        state,
        available: available.max(0),
        desired,
        rollout: rollout.then_some(updated),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// (replicas, generation/observed, updated, available, status.replicas).
    fn deployment(r: i64, g: i64, og: i64, u: i64, a: i64, sr: i64) -> Value {
        json!({"metadata": {"generation": g}, "spec": {"replicas": r},
               "status": {"observedGeneration": og, "updatedReplicas": u, "availableReplicas": a, "replicas": sr}})
    }

    #[test]
    fn the_reference_cases_for_a_deployment() {
        for ((r, g, og, u, a, sr), want) in [
            ((1, 1, 1, 1, 1, 1), State::Healthy),
            ((2, 1, 1, 2, 1, 2), State::Degraded),
            ((2, 2, 1, 2, 2, 2), State::Degraded),
            ((2, 1, 1, 1, 2, 3), State::Degraded),
            ((1, 1, 1, 1, 0, 1), State::Unhealthy),
            ((0, 1, 1, 0, 0, 0), State::Unhealthy),
        ] {
            let o = deployment(r, g, og, u, a, sr);
            assert_eq!(
                judge(Kind::Deployment, "x", "X", Some(&o), "c").state,
                want,
                "{o}"
            );
        }
        assert_eq!(
            judge(Kind::Deployment, "x", "X", None, "c").state,
            State::Missing
        );
    }

    #[test]
    fn messages_are_exact() {
        let d = display_name(Some("ArgoCD"), Kind::Deployment, "argocd-server");
        assert_eq!(
            judge(Kind::Deployment, "argocd-server", &d, None, "prod-east").message,
            "ArgoCD server deployment not found on prod-east: deployments.apps \"argocd-server\" not found"
        );
        let o = deployment(1, 1, 1, 1, 0, 1);
        assert_eq!(
            judge(Kind::Deployment, "argocd-server", &d, Some(&o), "prod-east").message,
            "ArgoCD server has 0 available replicas on prod-east"
        );
        let o = deployment(0, 1, 1, 0, 0, 0);
        assert_eq!(
            judge(Kind::Deployment, "argocd-server", &d, Some(&o), "c").message,
            "ArgoCD server has 0 available replicas on c (scaled to 0)"
        );
        let o = deployment(3, 1, 1, 3, 2, 3);
        assert_eq!(
            judge(Kind::Deployment, "w", "Deployment w", Some(&o), "c").message,
            "Deployment w has 2/3 available replicas on c"
        );
        let o = deployment(2, 2, 1, 1, 2, 2);
        let j = judge(Kind::Deployment, "w", "Flux helm-controller", Some(&o), "c");
        assert_eq!(
            j.message,
            "Flux helm-controller rollout in progress on c: 1/2 updated"
        );
        assert_eq!(j.rollout, Some(1));
        let o = deployment(2, 1, 1, 2, 2, 2);
        assert_eq!(
            judge(Kind::Deployment, "w", "Istiod", Some(&o), "c").message,
            "Istiod has 2/2 available replicas on c"
        );
        let ds = json!({"metadata": {"generation": 1}, "status": {"observedGeneration": 1, "desiredNumberScheduled": 3, "numberAvailable": 0, "updatedNumberScheduled": 3}});
        assert_eq!(
            judge(Kind::DaemonSet, "n", "DaemonSet n", Some(&ds), "c").message,
            "DaemonSet n has 0 available pods on c"
        );
        assert_eq!(
            judge(Kind::StatefulSet, "p", "Prometheus p", None, "c").message,
            "Prometheus p statefulset not found on c: statefulsets.apps \"p\" not found"
        );
    }

    #[test]
    fn statefulsets_and_daemonsets() {
        // 1.20: no availableReplicas, readyReplicas counts.
        let s = json!({"metadata": {"generation": 1}, "spec": {"replicas": 2},
                       "status": {"observedGeneration": 1, "readyReplicas": 2, "updatedReplicas": 2}});
        assert_eq!(
            judge(Kind::StatefulSet, "s", "S", Some(&s), "c").state,
            State::Healthy
        );
        // A partition: only replicas above it need updating.
        let s = json!({"metadata": {"generation": 2}, "spec": {"replicas": 3, "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 2}}},
                       "status": {"observedGeneration": 2, "availableReplicas": 3, "updatedReplicas": 1}});
        assert_eq!(
            judge(Kind::StatefulSet, "s", "S", Some(&s), "c").state,
            State::Healthy
        );
        // OnDelete: never a rollout.
        let s = json!({"metadata": {"generation": 2}, "spec": {"replicas": 3, "updateStrategy": {"type": "OnDelete"}},
                       "status": {"observedGeneration": 2, "availableReplicas": 3, "updatedReplicas": 0}});
        assert_eq!(
            judge(Kind::StatefulSet, "s", "S", Some(&s), "c").state,
            State::Healthy
        );
        let d = json!({"metadata": {"generation": 1}, "status": {"observedGeneration": 1, "desiredNumberScheduled": 3, "numberAvailable": 3, "updatedNumberScheduled": 2}});
        assert_eq!(
            judge(Kind::DaemonSet, "d", "D", Some(&d), "c").state,
            State::Degraded
        );
    }

    #[test]
    fn display_names() {
        assert_eq!(
            display_name(Some("ArgoCD"), Kind::Deployment, "argocd-repo-server"),
            "ArgoCD argocd-repo-server"
        );
        assert_eq!(
            display_name(Some("Istio"), Kind::Deployment, "istiod-1-22"),
            "Istiod istiod-1-22"
        );
        assert_eq!(
            display_name(Some("Istio"), Kind::Deployment, "istio-ingressgateway"),
            "Istio istio-ingressgateway"
        );
        assert_eq!(
            display_name(None, Kind::StatefulSet, "db"),
            "StatefulSet db"
        );
    }
}
