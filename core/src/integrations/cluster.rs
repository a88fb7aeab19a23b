//! One cluster's check for one Integration (integrations.md "Checks"): what to read
//! ([`requests`]), and the components, verdict and message from what was read ([`evaluate`]).
//! Every read of a check is issued at once by the caller; only when nothing the type looks for
//! exists does it ask one more thing, whether the namespace exists ([`nothing_found`]).

use std::collections::BTreeMap;

use serde_json::Value;

use super::component::{Kind, State, display_name, judge};
use super::config::{CheckConfig, Type};
use super::rollup::ClusterState;

/// The optional Argo CD Deployments (listed when present).
const ARGOCD_OPTIONAL: [&str; 4] = [
    "argocd-redis",
    "argocd-dex-server",
    "argocd-applicationset-controller",
    "argocd-notifications-controller",
];
/// The optional Flux Deployments.
const FLUX_OPTIONAL: [&str; 2] = ["image-reflector-controller", "image-automation-controller"];

/// One read of a check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `GET` of a named workload (404 is an answer: missing).
    Get(Kind, String),
    /// Label-selected `LIST` of a workload kind (`""`: everything in the namespace).
    List(Kind, String),
    /// Argo CD: EndpointSlices of Service `argocd-server`, else its Endpoints.
    ArgoCdEndpoints,
    /// Prometheus: is `monitoring.coreos.com/v1` `prometheuses` served; if so the caller also
    /// lists Prometheuses, Alertmanagers and the operator's Deployments, else the selected
    /// StatefulSets and Deployments.
    PrometheusApi,
}

/// What a check read.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// Named reads: the object, or `None` for 404.
    pub named: BTreeMap<(Kind, String), Option<Value>>,
    /// Label-selected lists, by kind.
    pub listed: BTreeMap<Kind, Vec<Value>>,
    /// Argo CD: at least one ready address of Service `argocd-server`.
    pub endpoints_ready: bool,
    /// Prometheus: the operator's API is served.
    pub prometheus_api: bool,
    /// Prometheus: `Prometheus` objects of the namespace.
    pub prometheuses: Vec<Value>,
    /// Prometheus: `Alertmanager` objects of the namespace.
    pub alertmanagers: Vec<Value>,
    /// Whether the namespace exists (asked only when [`nothing_found`]).
    pub namespace_exists: Option<bool>,
}

/// One component as the status lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Component {
    /// Object name.
    pub name: String,
    /// `Deployment`, `StatefulSet`, `DaemonSet`, `Endpoints`, `Prometheus`, `Alertmanager`.
    pub kind: &'static str,
    /// Namespace.
    pub namespace: String,
    /// A failure makes the cluster Unhealthy (else Degraded).
    pub required: bool,
    /// Verdict.
    pub state: State,
    /// Available replicas.
    pub available: i64,
    /// Desired replicas.
    pub desired: i64,
    /// Exact message.
    pub message: String,
}

/// A checked cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterCheck {
    /// Healthy, Degraded or Unhealthy (a check that could not run is the caller's Unreachable).
    pub state: ClusterState,
    /// `Healthy`, `Degraded`, `ComponentsUnhealthy`.
    pub reason: &'static str,
    /// Exact message.
    pub message: String,
    /// Components, in the type's order.
    pub components: Vec<Component>,
}

/// A read issued only when another one found nothing: Argo CD's application controller as a
/// Deployment (its optional mode) when there is no such StatefulSet. Returns (the first read,
/// the fallback).
pub fn fallback(t: Type) -> Option<(Request, Request)> {
    let c = "argocd-application-controller";
    (t == Type::ArgoCd).then(|| {
        (
            Request::Get(Kind::StatefulSet, c.into()),
            Request::Get(Kind::Deployment, c.into()),
        )
    })
}

/// The reads of a check of type `t` (a [`fallback`] read included: the caller issues it only
/// when its first read found nothing).
pub fn requests(t: Type, cfg: &CheckConfig) -> Vec<Request> {
    let get = |k: Kind, n: &str| Request::Get(k, n.to_owned());
    match t {
        Type::ArgoCd => {
            let mut r = vec![
                get(Kind::Deployment, "argocd-server"),
                Request::ArgoCdEndpoints,
                get(Kind::Deployment, "argocd-repo-server"),
                get(Kind::StatefulSet, "argocd-application-controller"),
                get(Kind::Deployment, "argocd-application-controller"),
            ];
            r.extend(ARGOCD_OPTIONAL.iter().map(|n| get(Kind::Deployment, n)));
            r
        }
        Type::Flux => cfg
            .components
            .iter()
            .map(String::as_str)
            .chain(
                FLUX_OPTIONAL
                    .iter()
                    .copied()
                    .filter(|o| !cfg.components.iter().any(|c| c == o)),
            )
            .map(|n| get(Kind::Deployment, n))
            .collect(),
        Type::Istio => vec![
            Request::List(Kind::Deployment, "app=istiod".into()),
            get(Kind::Deployment, "istio-ingressgateway"),
        ],
        Type::Prometheus => vec![Request::PrometheusApi],
        Type::Workloads => [Kind::Deployment, Kind::StatefulSet, Kind::DaemonSet]
            .into_iter()
            .map(|k| Request::List(k, cfg.selector_text.clone()))
            .collect(),
    }
}

fn component(
    kind: Kind,
    name: &str,
    t: Type,
    ns: &str,
    required: bool,
    object: Option<&Value>,
    cluster: &str,
) -> Component {
    let tool = (t != Type::Workloads).then(|| t.tool());
    let display = display_name(tool, kind, name);
    let j = judge(kind, name, &display, object, cluster);
    Component {
        name: name.to_owned(),
        kind: kind.as_str(),
        namespace: ns.to_owned(),
        required,
        state: j.state,
        available: j.available,
        desired: j.desired,
        message: j.message,
    }
}

fn name_of(o: &Value) -> &str {
    o["metadata"]["name"].as_str().unwrap_or("")
}

fn sorted(list: Option<&Vec<Value>>) -> Vec<&Value> {
    let mut v: Vec<&Value> = list.into_iter().flatten().collect();
    v.sort_by(|a, b| name_of(a).cmp(name_of(b)));
    v
}

/// A Prometheus or Alertmanager object judged by its `Available` condition.
fn monitoring_resource(kind: &'static str, o: &Value, ns: &str, cluster: &str) -> Component {
    let name = name_of(o);
    let available = o["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Available");
    let (state, message) = match available.and_then(|c| c["status"].as_str()) {
        Some("True") => (
            State::Healthy,
            format!("{kind} {name} is available on {cluster}"),
        ),
        Some("Degraded") => (
            State::Degraded,
            format!(
                "{kind} {name} is degraded on {cluster}: {}",
                available.and_then(|c| c["message"].as_str()).unwrap_or("")
            ),
        ),
        _ => (
            State::Unhealthy,
            format!(
                "{kind} {name} is not available on {cluster}: {}",
                available
                    .and_then(|c| c["message"].as_str())
                    .filter(|m| !m.is_empty())
                    .unwrap_or("no Available condition")
            ),
        ),
    };
    let int = |v: &Value| v.as_i64().unwrap_or(0);
    Component {
        name: name.to_owned(),
        kind,
        namespace: ns.to_owned(),
        required: true,
        state,
        available: int(&o["status"]["availableReplicas"]),
        desired: int(&o["status"]["replicas"]),
        message,
    }
}

/// True when nothing type `t` looks for exists (the caller then asks whether the namespace
/// does, for KSIT's "namespace not found" message).
pub fn nothing_found(t: Type, o: &Observed) -> bool {
    let named_none = o.named.values().all(Option::is_none);
    let listed_none = o.listed.values().all(Vec::is_empty);
    match t {
        Type::ArgoCd => named_none && !o.endpoints_ready,
        Type::Flux => named_none,
        Type::Istio => named_none && listed_none,
        Type::Prometheus => listed_none && o.prometheuses.is_empty() && o.alertmanagers.is_empty(),
        Type::Workloads => listed_none,
    }
}

/// Judges one cluster `cluster` for an Integration of type `t` from what was read.
pub fn evaluate(t: Type, cfg: &CheckConfig, cluster: &str, o: &Observed) -> ClusterCheck {
    let ns = cfg.namespace.as_str();
    let tool = t.tool();
    let get = |k: Kind, n: &str| o.named.get(&(k, n.to_owned())).cloned().flatten();
    let mut components: Vec<Component> = Vec::new();
    // An "at least one" rule not met: the message to give.
    let mut unmet: Option<String> = None;
    match t {
        Type::ArgoCd => {
            let server = get(Kind::Deployment, "argocd-server");
            components.push(component(
                Kind::Deployment,
                "argocd-server",
                t,
                ns,
                true,
                server.as_ref(),
                cluster,
            ));
            components.push(Component {
                name: "argocd-server".into(),
                kind: "Endpoints",
                namespace: ns.into(),
                required: true,
                state: if o.endpoints_ready {
                    State::Healthy
                } else {
                    State::Unhealthy
                },
                available: i64::from(o.endpoints_ready),
                desired: 1,
                message: if o.endpoints_ready {
                    format!("ArgoCD server service has ready endpoints on {cluster}")
                } else {
                    format!("ArgoCD server service has no endpoints on {cluster}")
                },
            });
            let repo = get(Kind::Deployment, "argocd-repo-server");
            components.push(component(
                Kind::Deployment,
                "argocd-repo-server",
                t,
                ns,
                true,
                repo.as_ref(),
                cluster,
            ));
            // The application controller: a StatefulSet, else Argo CD's optional Deployment mode.
            let c = "argocd-application-controller";
            match (get(Kind::StatefulSet, c), get(Kind::Deployment, c)) {
                (None, Some(d)) => components.push(component(
                    Kind::Deployment,
                    c,
                    t,
                    ns,
                    true,
                    Some(&d),
                    cluster,
                )),
                (s, _) => components.push(component(
                    Kind::StatefulSet,
                    c,
                    t,
                    ns,
                    true,
                    s.as_ref(),
                    cluster,
                )),
            }
            for n in ARGOCD_OPTIONAL {
                if let Some(d) = get(Kind::Deployment, n) {
                    components.push(component(
                        Kind::Deployment,
                        n,
                        t,
                        ns,
                        false,
                        Some(&d),
                        cluster,
                    ));
                }
            }
        }
        Type::Flux => {
            for n in &cfg.components {
                components.push(component(
                    Kind::Deployment,
                    n,
                    t,
                    ns,
                    true,
                    get(Kind::Deployment, n).as_ref(),
                    cluster,
                ));
            }
            for n in FLUX_OPTIONAL
                .iter()
                .filter(|o| !cfg.components.iter().any(|c| c == *o))
            {
                if let Some(d) = get(Kind::Deployment, n) {
                    components.push(component(
                        Kind::Deployment,
                        n,
                        t,
                        ns,
                        false,
                        Some(&d),
                        cluster,
                    ));
                }
            }
            let required: Vec<&Component> = components.iter().filter(|c| c.required).collect();
            let down: Vec<&str> = required
                .iter()
                .filter(|c| matches!(c.state, State::Unhealthy | State::Missing))
                .map(|c| c.name.as_str())
                .collect();
            if down.len() == required.len() {
                unmet = Some(format!("no Flux controllers are running on {cluster}"));
            } else if !down.is_empty() {
                unmet = Some(format!(
                    "Flux controllers not running on {cluster}: {}",
                    down.join(", ")
                ));
            }
        }
        Type::Istio => {
            let istiods = sorted(o.listed.get(&Kind::Deployment));
            for d in &istiods {
                components.push(component(
                    Kind::Deployment,
                    name_of(d),
                    t,
                    ns,
                    false,
                    Some(d),
                    cluster,
                ));
            }
            if istiods.is_empty() {
                unmet = Some(format!(
                    "Istiod deployment not found on {cluster}: deployments.apps \"istiod\" not found"
                ));
            } else if components.iter().all(|c| c.state == State::Unhealthy) {
                unmet = Some(components[0].message.clone());
            }
            if let Some(g) = get(Kind::Deployment, "istio-ingressgateway") {
                components.push(component(
                    Kind::Deployment,
                    "istio-ingressgateway",
                    t,
                    ns,
                    false,
                    Some(&g),
                    cluster,
                ));
            }
        }
        Type::Prometheus => {
            if o.prometheus_api {
                let mut prometheus_up = false;
                for p in sorted(Some(&o.prometheuses)) {
                    let c = monitoring_resource("Prometheus", p, ns, cluster);
                    prometheus_up |= c.state != State::Unhealthy;
                    components.push(c);
                }
                for a in sorted(Some(&o.alertmanagers)) {
                    components.push(monitoring_resource("Alertmanager", a, ns, cluster));
                }
                let operators = sorted(o.listed.get(&Kind::Deployment));
                for d in &operators {
                    components.push(component(
                        Kind::Deployment,
                        name_of(d),
                        t,
                        ns,
                        true,
                        Some(d),
                        cluster,
                    ));
                }
                if !prometheus_up {
                    unmet = Some(format!("no Prometheus pods are running on {cluster}"));
                } else if operators.is_empty() {
                    unmet = Some(format!(
                        "Prometheus operator not found on {cluster}: no Deployment matches \"{}\" in namespace {ns}",
                        cfg.operator_selector_text()
                    ));
                }
            } else {
                for k in [Kind::StatefulSet, Kind::Deployment] {
                    for w in sorted(o.listed.get(&k)) {
                        components.push(component(k, name_of(w), t, ns, true, Some(w), cluster));
                    }
                }
                if !components.iter().any(|c| c.available > 0) {
                    unmet = Some(format!("no Prometheus pods are running on {cluster}"));
                }
            }
        }
        Type::Workloads => {
            for k in [Kind::Deployment, Kind::StatefulSet, Kind::DaemonSet] {
                for w in sorted(o.listed.get(&k)) {
                    components.push(component(k, name_of(w), t, ns, true, Some(w), cluster));
                }
            }
            if components.is_empty() {
                unmet = Some(if cfg.selector_text.is_empty() {
                    format!(
                        "no Deployment, StatefulSet or DaemonSet in namespace {ns} on {cluster}"
                    )
                } else {
                    format!(
                        "no Deployment, StatefulSet or DaemonSet matches \"{}\" in namespace {ns} on {cluster}",
                        cfg.selector_text
                    )
                });
            }
        }
    }
    let failed_required = components
        .iter()
        .find(|c| c.required && matches!(c.state, State::Unhealthy | State::Missing));
    let unhealthy = unmet.is_some() || failed_required.is_some();
    let (state, reason, message) = if unhealthy {
        let message = if o.namespace_exists == Some(false) && nothing_found(t, o) {
            format!("{tool} namespace {ns} not found on {cluster}: namespaces \"{ns}\" not found")
        } else if let Some(m) = unmet {
            m
        } else {
            failed_required
                .map(|c| c.message.clone())
                .unwrap_or_default()
        };
        (ClusterState::Unhealthy, "ComponentsUnhealthy", message)
    } else if let Some(c) = components.iter().find(|c| c.state != State::Healthy) {
        let message = if t == Type::Workloads {
            format!("Workloads in {ns} are degraded on {cluster}: {}", c.message)
        } else {
            format!("{tool} is degraded on {cluster}: {}", c.message)
        };
        (ClusterState::Degraded, "Degraded", message)
    } else {
        let message = if t == Type::Workloads {
            format!("Workloads in {ns} are healthy on {cluster}")
        } else {
            format!("{tool} is healthy on {cluster}")
        };
        (ClusterState::Healthy, "Healthy", message)
    };
    ClusterCheck {
        state,
        reason,
        message,
        components,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::integrations::config::parse;
    use serde_json::json;

    fn deploy(name: &str, replicas: i64, available: i64) -> Value {
        json!({"metadata": {"name": name, "generation": 1}, "spec": {"replicas": replicas},
               "status": {"observedGeneration": 1, "replicas": replicas, "updatedReplicas": replicas, "availableReplicas": available}})
    }

    fn sts(name: &str, replicas: i64, ready: i64) -> Value {
        json!({"metadata": {"name": name, "generation": 1}, "spec": {"replicas": replicas},
               "status": {"observedGeneration": 1, "replicas": replicas, "updatedReplicas": replicas, "readyReplicas": ready}})
    }

    fn cfg(t: Type, pairs: &[(&str, &str)]) -> CheckConfig {
        parse(
            t,
            &pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
        .unwrap()
    }

    fn argocd(server_available: i64, endpoints: bool) -> Observed {
        let mut o = Observed {
            endpoints_ready: endpoints,
            ..Default::default()
        };
        o.named.insert(
            (Kind::Deployment, "argocd-server".into()),
            Some(deploy("argocd-server", 1, server_available)),
        );
        o.named.insert(
            (Kind::Deployment, "argocd-repo-server".into()),
            Some(deploy("argocd-repo-server", 1, 1)),
        );
        o.named.insert(
            (Kind::StatefulSet, "argocd-application-controller".into()),
            Some(sts("argocd-application-controller", 1, 1)),
        );
        o.named.insert(
            (Kind::Deployment, "argocd-application-controller".into()),
            None,
        );
        o.named.insert(
            (Kind::Deployment, "argocd-redis".into()),
            Some(deploy("argocd-redis", 1, 1)),
        );
        o
    }

    #[test]
    fn argocd_keeps_ksits_messages() {
        let c = cfg(Type::ArgoCd, &[]);
        assert_eq!(requests(Type::ArgoCd, &c).len(), 9);
        let (first, then) = fallback(Type::ArgoCd).unwrap();
        assert!(
            requests(Type::ArgoCd, &c).contains(&first)
                && requests(Type::ArgoCd, &c).contains(&then)
        );
        let r = evaluate(Type::ArgoCd, &c, "prod-east", &argocd(1, true));
        assert_eq!(
            (r.state, r.message.as_str()),
            (ClusterState::Healthy, "ArgoCD is healthy on prod-east")
        );
        assert_eq!(r.components.len(), 5, "the present optional one is listed");
        let r = evaluate(Type::ArgoCd, &c, "prod-east", &argocd(0, true));
        assert_eq!(
            (r.state, r.message.as_str()),
            (
                ClusterState::Unhealthy,
                "ArgoCD server has 0 available replicas on prod-east"
            )
        );
        let r = evaluate(Type::ArgoCd, &c, "prod-east", &argocd(1, false));
        assert_eq!(
            r.message,
            "ArgoCD server service has no endpoints on prod-east"
        );
        // Nothing there and no namespace: KSIT's message.
        let mut o = Observed::default();
        for q in requests(Type::ArgoCd, &c) {
            if let Request::Get(k, n) = q {
                o.named.insert((k, n), None);
            }
        }
        assert!(nothing_found(Type::ArgoCd, &o));
        o.namespace_exists = Some(false);
        let r = evaluate(Type::ArgoCd, &c, "c1", &o);
        assert_eq!(
            r.message,
            "ArgoCD namespace argocd not found on c1: namespaces \"argocd\" not found"
        );
        // The application controller in Deployment mode.
        let mut o = argocd(1, true);
        o.named.insert(
            (Kind::StatefulSet, "argocd-application-controller".into()),
            None,
        );
        o.named.insert(
            (Kind::Deployment, "argocd-application-controller".into()),
            Some(deploy("argocd-application-controller", 1, 1)),
        );
        assert_eq!(
            evaluate(Type::ArgoCd, &c, "c", &o).state,
            ClusterState::Healthy
        );
        // An optional one not healthy: Degraded, never Unhealthy.
        let mut o = argocd(1, true);
        o.named.insert(
            (Kind::Deployment, "argocd-redis".into()),
            Some(deploy("argocd-redis", 1, 0)),
        );
        let r = evaluate(Type::ArgoCd, &c, "c", &o);
        assert_eq!(
            (r.state, r.message.as_str()),
            (
                ClusterState::Degraded,
                "ArgoCD is degraded on c: ArgoCD argocd-redis has 0 available replicas on c"
            )
        );
    }

    #[test]
    fn flux_needs_every_required_controller() {
        let c = cfg(Type::Flux, &[]);
        let mut o = Observed::default();
        for n in [
            "source-controller",
            "kustomize-controller",
            "notification-controller",
        ] {
            o.named.insert((Kind::Deployment, n.into()), None);
        }
        o.named.insert(
            (Kind::Deployment, "helm-controller".into()),
            Some(deploy("helm-controller", 1, 1)),
        );
        let r = evaluate(Type::Flux, &c, "c", &o);
        assert_eq!(r.state, ClusterState::Unhealthy, "KSIT: Running");
        assert_eq!(
            r.message,
            "Flux controllers not running on c: source-controller, kustomize-controller, notification-controller"
        );
        o.named.insert(
            (Kind::Deployment, "helm-controller".into()),
            Some(deploy("helm-controller", 1, 0)),
        );
        assert_eq!(
            evaluate(Type::Flux, &c, "c", &o).message,
            "no Flux controllers are running on c"
        );
        o.named
            .insert((Kind::Deployment, "helm-controller".into()), None);
        o.namespace_exists = Some(false);
        assert_eq!(
            evaluate(Type::Flux, &c, "c", &o).message,
            "Flux namespace flux-system not found on c: namespaces \"flux-system\" not found"
        );
        for n in super::super::config::FLUX_COMPONENTS {
            o.named
                .insert((Kind::Deployment, n.into()), Some(deploy(n, 1, 1)));
        }
        assert_eq!(
            evaluate(Type::Flux, &c, "c", &o).message,
            "Flux is healthy on c"
        );
    }

    #[test]
    fn istio_revisions_and_canaries() {
        let c = cfg(Type::Istio, &[("namespace", "mesh")]);
        let mut o = Observed::default();
        o.listed
            .insert(Kind::Deployment, vec![deploy("istiod-1-22", 1, 1)]);
        let r = evaluate(Type::Istio, &c, "c", &o);
        assert_eq!(
            (r.state, r.message.as_str()),
            (ClusterState::Healthy, "Istio is healthy on c")
        );
        assert_eq!(r.components[0].namespace, "mesh");
        assert!(!r.components[0].required);
        // A canary revision with nothing available while another is healthy: Degraded.
        o.listed.insert(
            Kind::Deployment,
            vec![deploy("istiod-1-22", 1, 1), deploy("istiod-1-23", 1, 0)],
        );
        let r = evaluate(Type::Istio, &c, "c", &o);
        assert_eq!(r.state, ClusterState::Degraded);
        o.listed
            .insert(Kind::Deployment, vec![deploy("istiod", 1, 0)]);
        assert_eq!(
            evaluate(Type::Istio, &c, "c", &o).message,
            "Istiod has 0 available replicas on c"
        );
        o.listed.insert(Kind::Deployment, vec![]);
        assert_eq!(
            evaluate(Type::Istio, &c, "c", &o).message,
            "Istiod deployment not found on c: deployments.apps \"istiod\" not found"
        );
    }

    #[test]
    fn prometheus_with_and_without_the_operator() {
        let c = cfg(Type::Prometheus, &[]);
        // Without the CRD: an unrelated running pod is not Prometheus; matching workloads are.
        let o = Observed::default();
        assert_eq!(
            evaluate(Type::Prometheus, &c, "c", &o).message,
            "no Prometheus pods are running on c"
        );
        let mut o = Observed::default();
        o.listed
            .insert(Kind::StatefulSet, vec![sts("prometheus-server", 1, 1)]);
        assert_eq!(
            evaluate(Type::Prometheus, &c, "c", &o).state,
            ClusterState::Healthy
        );
        // With the CRD: Available=True plus the operator → Running; Available=False → Failed.
        let prom = |status: &str| {
            json!({"metadata": {"name": "k8s"}, "status": {"replicas": 2, "availableReplicas": 2,
            "conditions": [{"type": "Available", "status": status, "message": "0/2 pods ready"}]}})
        };
        let mut o = Observed {
            prometheus_api: true,
            prometheuses: vec![prom("True")],
            ..Default::default()
        };
        o.listed
            .insert(Kind::Deployment, vec![deploy("prometheus-operator", 1, 1)]);
        assert_eq!(
            evaluate(Type::Prometheus, &c, "c", &o).message,
            "Prometheus is healthy on c"
        );
        o.prometheuses = vec![prom("False")];
        let r = evaluate(Type::Prometheus, &c, "c", &o);
        assert_eq!(
            (r.state, r.message.as_str()),
            (
                ClusterState::Unhealthy,
                "no Prometheus pods are running on c"
            )
        );
        assert_eq!(
            r.components[0].message,
            "Prometheus k8s is not available on c: 0/2 pods ready"
        );
        o.prometheuses = vec![prom("Degraded")];
        assert_eq!(
            evaluate(Type::Prometheus, &c, "c", &o).state,
            ClusterState::Degraded
        );
    }

    #[test]
    fn workloads_in_a_missing_namespace() {
        let c = cfg(Type::Workloads, &[("namespace", "shop")]);
        let mut o = Observed::default();
        assert!(nothing_found(Type::Workloads, &o));
        o.namespace_exists = Some(false);
        assert_eq!(
            evaluate(Type::Workloads, &c, "c", &o).message,
            "Workload namespace shop not found on c: namespaces \"shop\" not found"
        );
        o.namespace_exists = Some(true);
        assert_eq!(
            evaluate(Type::Workloads, &c, "c", &o).message,
            "no Deployment, StatefulSet or DaemonSet in namespace shop on c"
        );
    }

    #[test]
    fn workloads_each_judged() {
        let c = cfg(
            Type::Workloads,
            &[("namespace", "shop"), ("selector", "tier=web")],
        );
        assert_eq!(
            requests(Type::Workloads, &c),
            vec![
                Request::List(Kind::Deployment, "tier=web".into()),
                Request::List(Kind::StatefulSet, "tier=web".into()),
                Request::List(Kind::DaemonSet, "tier=web".into()),
            ]
        );
        let o = Observed::default();
        assert_eq!(
            evaluate(Type::Workloads, &c, "c", &o).message,
            "no Deployment, StatefulSet or DaemonSet matches \"tier=web\" in namespace shop on c"
        );
        let mut o = Observed::default();
        o.listed.insert(
            Kind::Deployment,
            vec![deploy("web", 2, 2), deploy("api", 2, 1)],
        );
        let r = evaluate(Type::Workloads, &c, "c", &o);
        assert_eq!(
            r.components
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>(),
            ["api", "web"]
        );
        assert_eq!(
            r.message,
            "Workloads in shop are degraded on c: Deployment api has 1/2 available replicas on c"
        );
        o.listed.insert(Kind::Deployment, vec![deploy("web", 2, 2)]);
        assert_eq!(
            evaluate(Type::Workloads, &c, "c", &o).message,
            "Workloads in shop are healthy on c"
        );
    }
}
