//! An Integration's `type` and `config` (integrations.md "Integration"): defaults per type, the
//! check interval (`healthCheckInterval`, clamped to 5 s .. 24 h), Flux's required components,
//! label selectors. A bad value refuses the whole config with `invalid config: <key>: <why>`;
//! unknown keys (KSIT samples' `serverURL`, `url`, `insecure`, `interval`) are ignored.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::mirror::selector::Selector;

/// The integration types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Type {
    /// Argo CD.
    ArgoCd,
    /// Flux.
    Flux,
    /// Prometheus (operator or plain).
    Prometheus,
    /// Istio.
    Istio,
    /// Any workloads matching a selector (beyond KSIT).
    Workloads,
}

impl Type {
    /// From `spec.type`.
    pub fn parse(s: &str) -> Option<Type> {
        Some(match s {
            "argocd" => Type::ArgoCd,
            "flux" => Type::Flux,
            "prometheus" => Type::Prometheus,
            "istio" => Type::Istio,
            "workloads" => Type::Workloads,
            _ => return None,
        })
    }

    /// As `spec.type` and metric labels say it.
    pub fn as_str(self) -> &'static str {
        match self {
            Type::ArgoCd => "argocd",
            Type::Flux => "flux",
            Type::Prometheus => "prometheus",
            Type::Istio => "istio",
            Type::Workloads => "workloads",
        }
    }

    /// The tool's name in messages.
    pub fn tool(self) -> &'static str {
        match self {
            Type::ArgoCd => "ArgoCD",
            Type::Flux => "Flux",
            Type::Prometheus => "Prometheus",
            Type::Istio => "Istio",
            Type::Workloads => "Workload",
        }
    }

    /// The namespace checked without `config.namespace` (`None`: required).
    pub fn default_namespace(self) -> Option<&'static str> {
        match self {
            Type::ArgoCd => Some("argocd"),
            Type::Flux => Some("flux-system"),
            Type::Prometheus => Some("monitoring"),
            Type::Istio => Some("istio-system"),
            Type::Workloads => None,
        }
    }
}

/// Flux's required controllers without `config.components`.
pub const FLUX_COMPONENTS: [&str; 4] = [
    "source-controller",
    "kustomize-controller",
    "helm-controller",
    "notification-controller",
];
/// Prometheus servers' selector without the operator's CRD.
pub const PROMETHEUS_SELECTOR: &str = "app.kubernetes.io/name=prometheus";
/// The operator's Deployments' selector.
pub const OPERATOR_SELECTOR: &str = "app.kubernetes.io/name in (prometheus-operator,kube-prometheus-stack-prometheus-operator,kube-prometheus-stack-operator)";

/// The shortest and longest check interval.
pub const MIN_INTERVAL: Duration = Duration::from_secs(5);
/// The longest check interval.
pub const MAX_INTERVAL: Duration = Duration::from_secs(24 * 3600);

/// A checked config.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckConfig {
    /// The namespace checked.
    pub namespace: String,
    /// How often each cluster is checked.
    pub interval: Duration,
    /// Flux: the required Deployments, in order.
    pub components: Vec<String>,
    /// Workloads (everything when `None`), Prometheus without its CRD.
    pub selector: Option<Selector>,
    /// The selector as written (for messages).
    pub selector_text: String,
    /// Prometheus with its CRD: the operator's Deployments.
    pub operator_selector: Selector,
    /// The operator selector as written.
    pub operator_text: String,
}

impl CheckConfig {
    /// The operator selector as written (for messages).
    pub fn operator_selector_text(&self) -> &str {
        &self.operator_text
    }
}

/// `healthCheckInterval`: `<int><unit>` groups with units `ms s m h` (`30s`, `1m`, `1h30m`), or
/// bare seconds; clamped to [`MIN_INTERVAL`] .. [`MAX_INTERVAL`].
pub fn parse_interval(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty".into());
    }
    let total = if s.bytes().all(|b| b.is_ascii_digit()) {
        Duration::from_secs(
            s.parse::<u64>()
                .map_err(|_| format!("{s:?} is too large"))?,
        )
    } else {
        let mut total = Duration::ZERO;
        let mut rest = s;
        while !rest.is_empty() {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                return Err(format!("{s:?} is not a duration like 30s, 1m or 1h30m"));
            }
            let n: u64 = rest[..digits]
                .parse()
                .map_err(|_| format!("{s:?} is too large"))?;
            rest = &rest[digits..];
            let (unit, len) = if rest.starts_with("ms") {
                (Duration::from_millis(1), 2)
            } else if rest.starts_with('s') {
                (Duration::from_secs(1), 1)
            } else if rest.starts_with('m') {
                (Duration::from_secs(60), 1)
            } else if rest.starts_with('h') {
                (Duration::from_secs(3600), 1)
            } else {
                return Err(format!("{s:?} has no unit ms, s, m or h after {n}"));
            };
            rest = &rest[len..];
            total = total
                .checked_add(
                    unit.checked_mul(u32::try_from(n).map_err(|_| format!("{s:?} is too large"))?)
                        .ok_or_else(|| format!("{s:?} is too large"))?,
                )
                .ok_or_else(|| format!("{s:?} is too large"))?;
        }
        total
    };
    Ok(total.clamp(MIN_INTERVAL, MAX_INTERVAL))
}

fn selector(key: &str, text: &str) -> Result<Option<Selector>, String> {
    Selector::parse(text).map_err(|e| format!("invalid config: {key}: {e}"))
}

/// Checks `config` for type `t`.
pub fn parse(t: Type, config: &BTreeMap<String, String>) -> Result<CheckConfig, String> {
    let bad = |key: &str, why: String| format!("invalid config: {key}: {why}");
    let namespace = match (
        config
            .get("namespace")
            .map(|s| s.trim())
            .filter(|s| !s.is_empty()),
        t.default_namespace(),
    ) {
        (Some(ns), _) => {
            crate::naming::validate_dns1123_label(ns)
                .map_err(|e| bad("namespace", format!("{ns:?} {e}")))?;
            ns.to_owned()
        }
        (None, Some(d)) => d.to_owned(),
        (None, None) => return Err(bad("namespace", "required for type workloads".into())),
    };
    let interval = match config.get("healthCheckInterval") {
        None => Duration::from_secs(30),
        Some(v) => parse_interval(v).map_err(|e| bad("healthCheckInterval", e))?,
    };
    let components = match (t, config.get("components")) {
        (Type::Flux, Some(list)) => {
            let names: Vec<String> = list
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect();
            if names.is_empty() {
                return Err(bad("components", "empty".into()));
            }
            for n in &names {
                crate::naming::validate_dns1123_subdomain(n)
                    .map_err(|e| bad("components", format!("{n:?} {e}")))?;
            }
            names
        }
        (Type::Flux, None) => FLUX_COMPONENTS.iter().map(|s| s.to_string()).collect(),
        _ => vec![],
    };
    let selector_text = match (t, config.get("selector")) {
        (_, Some(s)) => s.trim().to_owned(),
        (Type::Prometheus, None) => PROMETHEUS_SELECTOR.to_owned(),
        _ => String::new(),
    };
    let operator_text = config
        .get("operatorSelector")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|| OPERATOR_SELECTOR.to_owned());
    let operator_selector = selector("operatorSelector", &operator_text)?
        .ok_or_else(|| bad("operatorSelector", "empty".into()))?;
    Ok(CheckConfig {
        namespace,
        interval,
        components,
        selector: selector("selector", &selector_text)?,
        selector_text,
        operator_selector,
        operator_text,
    })
}

/// One `targetSelector.matchExpressions` entry (`metav1.LabelSelectorRequirement`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expression {
    /// The label key.
    pub key: String,
    /// `In`, `NotIn`, `Exists`, `DoesNotExist`.
    pub operator: String,
    /// The values (`In`, `NotIn`: at least one; `Exists`, `DoesNotExist`: none).
    pub values: Vec<String>,
}

/// Whether a target's `spec.labels` match `targetSelector` (`matchLabels` and every
/// expression; an empty selector matches all). An invalid expression is
/// `invalid config: targetSelector: <why>`.
pub fn selector_matches(
    match_labels: &BTreeMap<String, String>,
    expressions: &[Expression],
    labels: &BTreeMap<String, String>,
) -> Result<bool, String> {
    let bad = |why: String| format!("invalid config: targetSelector: {why}");
    for e in expressions {
        match (e.operator.as_str(), e.values.is_empty()) {
            ("In" | "NotIn", true) => {
                return Err(bad(format!("{} {} needs values", e.key, e.operator)));
            }
            ("Exists" | "DoesNotExist", false) => {
                return Err(bad(format!("{} {} takes no values", e.key, e.operator)));
            }
            ("In" | "NotIn" | "Exists" | "DoesNotExist", _) => {}
            (other, _) => return Err(bad(format!("unknown operator {other:?} for {}", e.key))),
        }
    }
    let labels_ok = match_labels.iter().all(|(k, v)| labels.get(k) == Some(v));
    let exprs_ok = expressions.iter().all(|e| {
        let v = labels.get(&e.key);
        match e.operator.as_str() {
            "In" => v.is_some_and(|v| e.values.contains(v)),
            "NotIn" => v.is_none_or(|v| !e.values.contains(v)),
            "Exists" => v.is_some(),
            _ => v.is_none(),
        }
    });
    Ok(labels_ok && exprs_ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn intervals() {
        for (s, secs) in [
            ("30s", 30.0),
            ("1m", 60.0),
            ("1h30m", 5400.0),
            ("45", 45.0),
            ("1s", 5.0),
            ("1500ms", 5.0),
            ("7000ms", 7.0),
            ("48h", 86400.0),
            ("2m30s", 150.0),
        ] {
            assert_eq!(parse_interval(s).unwrap().as_secs_f64(), secs, "{s}");
        }
        for s in ["", "abc", "10x", "s", "1.5m", "-5s", "99999999999999999999"] {
            assert!(parse_interval(s).is_err(), "{s}");
        }
    }

    #[test]
    fn defaults_per_type_and_unknown_keys_ignored() {
        let c = parse(
            Type::ArgoCd,
            &map(&[("serverURL", "https://x"), ("insecure", "true")]),
        )
        .unwrap();
        assert_eq!(
            (c.namespace.as_str(), c.interval),
            ("argocd", Duration::from_secs(30))
        );
        let c = parse(Type::Flux, &map(&[])).unwrap();
        assert_eq!(c.components, FLUX_COMPONENTS);
        let c = parse(
            Type::Flux,
            &map(&[("components", "source-controller, helm-controller")]),
        )
        .unwrap();
        assert_eq!(c.components, ["source-controller", "helm-controller"]);
        let c = parse(Type::Prometheus, &map(&[])).unwrap();
        assert_eq!(
            (c.namespace.as_str(), c.selector_text.as_str()),
            ("monitoring", PROMETHEUS_SELECTOR)
        );
        let c = parse(Type::Istio, &map(&[("namespace", "mesh")])).unwrap();
        assert_eq!(c.namespace, "mesh");
        let c = parse(Type::Workloads, &map(&[("namespace", "shop")])).unwrap();
        assert!(c.selector.is_none());
    }

    #[test]
    fn bad_values_name_the_key() {
        for (t, pairs, want) in [
            (
                Type::Workloads,
                vec![],
                "invalid config: namespace: required for type workloads",
            ),
            (
                Type::ArgoCd,
                vec![("namespace", "Argo CD")],
                "invalid config: namespace:",
            ),
            (
                Type::ArgoCd,
                vec![("healthCheckInterval", "soon")],
                "invalid config: healthCheckInterval:",
            ),
            (
                Type::Flux,
                vec![("components", " , ")],
                "invalid config: components: empty",
            ),
            (
                Type::Workloads,
                vec![("namespace", "a"), ("selector", "a in (")],
                "invalid config: selector:",
            ),
            (
                Type::Prometheus,
                vec![("operatorSelector", "!!")],
                "invalid config: operatorSelector:",
            ),
        ] {
            let e = parse(t, &map(&pairs)).unwrap_err();
            assert!(e.starts_with(want), "{want}: {e}");
        }
    }

    #[test]
    fn target_selectors() {
        let l = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let e = |k: &str, op: &str, v: &[&str]| Expression {
            key: k.into(),
            operator: op.into(),
            values: v.iter().map(|s| s.to_string()).collect(),
        };
        let prod = l(&[("environment", "production"), ("region", "us-east")]);
        assert_eq!(
            selector_matches(&l(&[]), &[], &prod),
            Ok(true),
            "{{}} matches all"
        );
        assert_eq!(
            selector_matches(&l(&[("environment", "production")]), &[], &prod),
            Ok(true)
        );
        assert_eq!(
            selector_matches(&l(&[("environment", "staging")]), &[], &prod),
            Ok(false)
        );
        assert_eq!(
            selector_matches(&l(&[]), &[e("region", "In", &["us-east", "eu"])], &prod),
            Ok(true)
        );
        assert_eq!(
            selector_matches(&l(&[]), &[e("region", "NotIn", &["us-east"])], &prod),
            Ok(false)
        );
        assert_eq!(
            selector_matches(&l(&[]), &[e("tier", "DoesNotExist", &[])], &prod),
            Ok(true)
        );
        assert_eq!(
            selector_matches(&l(&[]), &[e("tier", "Exists", &[])], &prod),
            Ok(false)
        );
        assert_eq!(
            selector_matches(&l(&[]), &[e("tier", "Near", &[])], &prod),
            Err("invalid config: targetSelector: unknown operator \"Near\" for tier".into())
        );
        assert!(selector_matches(&l(&[]), &[e("tier", "In", &[])], &prod).is_err());
    }
}
