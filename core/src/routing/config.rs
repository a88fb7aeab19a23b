//! A routing config: the `config.yaml` key of a ConfigMap labelled `fleetmirror.io/routing:
//! "true"`, in the VirtualService operator's format plus optional new keys (routing.md
//! "Configuration"). [`parse`] accepts a config whole or refuses it whole with the key and the
//! problem; the caller keeps the last good version in effect.

use std::collections::{BTreeMap, BTreeSet};

use serde_yaml::Value;

use super::SYSTEM_NAMESPACES;
use super::template::Template;
use crate::mirror::selector::{Requirement, Selector};

/// The eight keys (matched case-insensitively, as the operator did).
const KEYS: [&str; 8] = [
    "defaultNamespace",
    "developerNamespaces",
    "virtualServiceTemplate",
    "enablePlaceholderServices",
    "header",
    "baggageKey",
    "developerNamespaceSelector",
    "excludedServices",
];

/// Prod Services that never get anything.
pub const ALWAYS_EXCLUDED: [&str; 2] = ["kubernetes", "kube-dns"];

/// A valid routing config.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The production namespace (the domain's identity).
    pub default_namespace: String,
    /// Listed developer namespaces, in order (the default one and duplicates removed).
    pub developer_namespaces: Vec<String>,
    /// `virtualServiceTemplate`.
    pub template: Option<Template>,
    /// `enablePlaceholderServices`.
    pub placeholders: bool,
    /// The routing header, lowercased.
    pub header: String,
    /// `baggageKey`.
    pub baggage_key: Option<String>,
    /// `developerNamespaceSelector`.
    pub selector: Option<Selector>,
    /// Prod Service names that get nothing (always with `kubernetes` and `kube-dns`).
    pub excluded: BTreeSet<String>,
}

/// Why a config is refused; `reason` is the bounded metric label
/// (`yaml|field|namespace|header|selector|template`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The metric label.
    pub reason: &'static str,
    /// The key and the problem, for the Event and Diagnostics.
    pub message: String,
}

fn err(reason: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        reason,
        message: message.into(),
    }
}

fn namespace(key: &str, v: &str) -> Result<(), ConfigError> {
    crate::naming::validate_dns1123_label(v)
        .map_err(|e| err("namespace", format!("{key}: {v:?} {e}")))?;
    if SYSTEM_NAMESPACES.contains(&v) {
        return Err(err(
            "namespace",
            format!("{key}: {v} is a system namespace"),
        ));
    }
    Ok(())
}

fn string(key: &str, v: &Value) -> Result<Option<String>, ConfigError> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.clone())),
        _ => Err(err("field", format!("{key}: not a string"))),
    }
}

fn strings(key: &str, v: &Value) -> Result<Vec<String>, ConfigError> {
    match v {
        Value::Null => Ok(vec![]),
        Value::Sequence(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::String(s) => Ok(s.clone()),
                _ => Err(err("field", format!("{key}[{i}]: not a string"))),
            })
            .collect(),
        _ => Err(err("field", format!("{key}: not a list"))),
    }
}

/// True for `header`: 1–64 characters of `[A-Za-z0-9-]`, alphanumeric at both ends.
fn valid_header(h: &str) -> bool {
    (1..=64).contains(&h.len())
        && h.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        && h.starts_with(|c: char| c.is_ascii_alphanumeric())
        && h.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// True for `baggageKey`: 1–64 characters of `[A-Za-z0-9._-]`, alphanumeric first.
fn valid_baggage_key(k: &str) -> bool {
    (1..=64).contains(&k.len())
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        && k.starts_with(|c: char| c.is_ascii_alphanumeric())
}

/// `developerNamespaceSelector`: a Kubernetes label selector.
fn selector(v: &Value) -> Result<Selector, ConfigError> {
    const KEY: &str = "developerNamespaceSelector";
    let bad = |m: String| err("selector", format!("{KEY}: {m}"));
    let Value::Mapping(m) = v else {
        return Err(bad("not a mapping".into()));
    };
    let mut reqs = Vec::new();
    for (k, v) in m {
        match k.as_str() {
            Some("matchLabels") => {
                let Value::Mapping(labels) = v else {
                    return Err(bad("matchLabels is not a mapping".into()));
                };
                for (lk, lv) in labels {
                    let (Some(lk), Some(lv)) = (lk.as_str(), lv.as_str()) else {
                        return Err(bad("matchLabels holds a non-string".into()));
                    };
                    if !crate::mirror::selector::valid_key(lk)
                        || !crate::mirror::selector::valid_value(lv)
                    {
                        return Err(bad(format!("matchLabels {lk}={lv} is not a label")));
                    }
                    reqs.push(Requirement::Equals(lk.into(), lv.into()));
                }
            }
            Some("matchExpressions") => {
                let Value::Sequence(exprs) = v else {
                    return Err(bad("matchExpressions is not a list".into()));
                };
                for (i, e) in exprs.iter().enumerate() {
                    let Value::Mapping(e) = e else {
                        return Err(bad(format!("matchExpressions[{i}] is not a mapping")));
                    };
                    let (mut key, mut op, mut values) = (None, None, None);
                    for (ek, ev) in e {
                        match ek.as_str() {
                            Some("key") => key = ev.as_str().map(str::to_owned),
                            Some("operator") => op = ev.as_str().map(str::to_owned),
                            Some("values") => {
                                values = Some(strings("values", ev).map_err(|_| {
                                    bad(format!(
                                        "matchExpressions[{i}].values is not a list of strings"
                                    ))
                                })?)
                            }
                            _ => {
                                return Err(bad(format!(
                                    "matchExpressions[{i}] has an unknown key"
                                )));
                            }
                        }
                    }
                    let Some(key) = key.filter(|k| crate::mirror::selector::valid_key(k)) else {
                        return Err(bad(format!(
                            "matchExpressions[{i}].key is missing or not a label key"
                        )));
                    };
                    let values = values.unwrap_or_default();
                    if let Some(v) = values
                        .iter()
                        .find(|v| !crate::mirror::selector::valid_value(v))
                    {
                        return Err(bad(format!(
                            "matchExpressions[{i}]: {v:?} is not a label value"
                        )));
                    }
                    let req = match (op.as_deref(), values.is_empty()) {
                        (Some("In"), false) => Requirement::In(key, values),
                        (Some("NotIn"), false) => Requirement::NotIn(key, values),
                        (Some("Exists"), true) => Requirement::Exists(key),
                        (Some("DoesNotExist"), true) => Requirement::DoesNotExist(key),
                        (Some("In" | "NotIn"), true) => {
                            return Err(bad(format!(
                                "matchExpressions[{i}]: {} needs values",
                                op.unwrap_or_default()
                            )));
                        }
                        (Some("Exists" | "DoesNotExist"), false) => {
                            return Err(bad(format!(
                                "matchExpressions[{i}]: {} takes no values",
                                op.unwrap_or_default()
                            )));
                        }
                        (other, _) => {
                            return Err(bad(format!(
                                "matchExpressions[{i}]: unknown operator {:?}",
                                other.unwrap_or("")
                            )));
                        }
                    };
                    reqs.push(req);
                }
            }
            _ => {
                return Err(bad(format!(
                    "unknown key {:?} (only matchLabels, matchExpressions)",
                    k.as_str().unwrap_or("?")
                )));
            }
        }
    }
    if reqs.is_empty() {
        return Err(bad("empty (it would select every namespace)".into()));
    }
    Ok(Selector(reqs))
}

/// Parses a ConfigMap's `data` (`None`: no `config.yaml` key).
pub fn parse(config_yaml: Option<&str>) -> Result<Config, ConfigError> {
    let Some(text) = config_yaml else {
        return Err(err("yaml", "config.yaml: the key is missing"));
    };
    let value: Value = serde_yaml::from_str(text)
        .map_err(|e| err("yaml", format!("config.yaml: not YAML: {e}")))?;
    let Value::Mapping(root) = value else {
        return Err(err("yaml", "config.yaml: not a mapping"));
    };
    let mut fields: BTreeMap<&'static str, Value> = BTreeMap::new();
    for (k, v) in root {
        let Some(k) = k.as_str() else {
            return Err(err("field", "config.yaml: a key is not a string"));
        };
        let Some(known) = KEYS.iter().find(|known| known.eq_ignore_ascii_case(k)) else {
            return Err(err(
                "field",
                format!("{k}: unknown key (known: {})", KEYS.join(", ")),
            ));
        };
        if fields.insert(known, v).is_some() {
            return Err(err("field", format!("{known}: given twice")));
        }
    }
    let get = |k: &str| fields.get(k).cloned().unwrap_or(Value::Null);

    let default_namespace = string("defaultNamespace", &get("defaultNamespace"))?
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "default".into());
    namespace("defaultNamespace", &default_namespace)?;

    let mut developer_namespaces = Vec::new();
    for (i, d) in strings("developerNamespaces", &get("developerNamespaces"))?
        .into_iter()
        .enumerate()
    {
        namespace(&format!("developerNamespaces[{i}]"), &d)?;
        if d != default_namespace && !developer_namespaces.contains(&d) {
            developer_namespaces.push(d);
        }
    }

    let placeholders = match get("enablePlaceholderServices") {
        Value::Null => false,
        Value::Bool(b) => b,
        _ => return Err(err("field", "enablePlaceholderServices: not true or false")),
    };

    let header = match string("header", &get("header"))? {
        None => "x-developer".to_owned(),
        Some(h) => {
            if !valid_header(&h) || h.eq_ignore_ascii_case("baggage") {
                return Err(err(
                    "header",
                    format!(
                        "header: {:?} is not 1-64 characters of A-Z, a-z, 0-9 and '-' starting and ending alphanumeric, other than baggage",
                        h.chars().take(80).collect::<String>()
                    ),
                ));
            }
            h.to_ascii_lowercase()
        }
    };
    let baggage_key = match string("baggageKey", &get("baggageKey"))? {
        None => None,
        Some(k) if valid_baggage_key(&k) => Some(k),
        Some(k) => {
            return Err(err(
                "header",
                format!(
                    "baggageKey: {:?} is not 1-64 characters of A-Z, a-z, 0-9, '.', '_' and '-' starting alphanumeric",
                    k.chars().take(80).collect::<String>()
                ),
            ));
        }
    };
    let selector = match get("developerNamespaceSelector") {
        Value::Null => None,
        v => Some(selector(&v)?),
    };
    let mut excluded: BTreeSet<String> = ALWAYS_EXCLUDED.iter().map(|s| s.to_string()).collect();
    excluded.extend(strings("excludedServices", &get("excludedServices"))?);

    let template = match get("virtualServiceTemplate") {
        Value::Null => None,
        Value::String(t) => Some(
            Template::parse(&t, &default_namespace)
                .map_err(|e| err("template", format!("virtualServiceTemplate: {e}")))?,
        ),
        _ => return Err(err("template", "virtualServiceTemplate: not a string")),
    };

    Ok(Config {
        default_namespace,
        developer_namespaces,
        template,
        placeholders,
        header,
        baggage_key,
        selector,
        excluded,
    })
}

/// The RE2 regex matching a `baggage` header that carries member `<key>=<value>` (whole-value
/// match, as Istio's `regex` is): anywhere in the list, with optional spaces and properties;
/// not a longer value, a key that merely ends in `key`, or a property of another member.
pub fn baggage_regex(key: &str, value: &str) -> String {
    let escape = |s: &str| s.replace('.', "\\.");
    format!(
        "^(.*,)?[ \\t]*{}[ \\t]*=[ \\t]*{}[ \\t]*([;,].*)?$",
        escape(key),
        escape(value)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPERATOR: &str = "defaultNamespace: prod\ndeveloperNamespaces: [dev-alice, dev-bob, staging]\nenablePlaceholderServices: true\n";

    #[test]
    fn the_operators_config_parses_unchanged() {
        let c = parse(Some(OPERATOR)).unwrap();
        assert_eq!(c.default_namespace, "prod");
        assert_eq!(c.developer_namespaces, ["dev-alice", "dev-bob", "staging"]);
        assert!(c.placeholders);
        assert_eq!(c.header, "x-developer");
        assert_eq!(c.baggage_key, None);
        assert!(c.template.is_none() && c.selector.is_none());
        assert_eq!(
            c.excluded.iter().map(String::as_str).collect::<Vec<_>>(),
            ["kube-dns", "kubernetes"]
        );
    }

    #[test]
    fn keys_match_case_insensitively_and_defaults_apply() {
        let c = parse(Some("DefaultNamespace: ''\nDEVELOPERNAMESPACES: [a, default, a, b]\nHeader: X-Dev\nbaggagekey: dev.ns\nexcludedServices: [batch]\n")).unwrap();
        assert_eq!(c.default_namespace, "default");
        assert_eq!(c.developer_namespaces, ["a", "b"]);
        assert_eq!(c.header, "x-dev");
        assert_eq!(c.baggage_key.as_deref(), Some("dev.ns"));
        assert!(c.excluded.contains("batch") && c.excluded.contains("kubernetes"));
        assert_eq!(parse(Some("{}")).unwrap().default_namespace, "default");
    }

    #[test]
    fn selectors_parse_and_match() {
        let c = parse(Some("defaultNamespace: prod\ndeveloperNamespaceSelector:\n  matchLabels: {fleetmirror.io/developer: 'true'}\n  matchExpressions:\n  - {key: team, operator: In, values: [web]}\n  - {key: frozen, operator: DoesNotExist}\n")).unwrap();
        let s = c.selector.unwrap();
        let labels = |p: &[(&str, &str)]| {
            p.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert!(s.matches(&labels(&[
            ("fleetmirror.io/developer", "true"),
            ("team", "web")
        ])));
        assert!(!s.matches(&labels(&[
            ("fleetmirror.io/developer", "true"),
            ("team", "web"),
            ("frozen", "")
        ])));
        assert!(!s.matches(&labels(&[("team", "web")])));
    }

    #[test]
    fn every_invalid_case_names_the_key_and_problem() {
        let cases: &[(Option<&str>, &str, &str)] = &[
            (None, "yaml", "config.yaml: the key is missing"),
            (Some("a: ["), "yaml", "not YAML"),
            (Some("- a"), "yaml", "not a mapping"),
            (
                Some("defaultNamespace: prod\nextra: 1"),
                "field",
                "extra: unknown key",
            ),
            (
                Some("defaultNamespace: prod\nDefaultNamespace: x"),
                "field",
                "given twice",
            ),
            (
                Some("defaultNamespace: [a]"),
                "field",
                "defaultNamespace: not a string",
            ),
            (
                Some("developerNamespaces: a"),
                "field",
                "developerNamespaces: not a list",
            ),
            (
                Some("enablePlaceholderServices: yes-please"),
                "field",
                "enablePlaceholderServices",
            ),
            (
                Some("defaultNamespace: Prod"),
                "namespace",
                "defaultNamespace",
            ),
            (
                Some("defaultNamespace: kube-system"),
                "namespace",
                "defaultNamespace: kube-system is a system namespace",
            ),
            (
                Some("developerNamespaces: [dev-a, kube-system]"),
                "namespace",
                "developerNamespaces[1]: kube-system is a system namespace",
            ),
            (
                Some("developerNamespaces: [dev-a, istio-system]"),
                "namespace",
                "istio-system is a system namespace",
            ),
            (
                Some("developerNamespaces: [a/b]"),
                "namespace",
                "developerNamespaces[0]",
            ),
            (Some("header: x_dev"), "header", "header"),
            (Some("header: baggage"), "header", "header"),
            (Some("header: -x"), "header", "header"),
            (Some("baggageKey: 'a b'"), "header", "baggageKey"),
            (Some("baggageKey: .a"), "header", "baggageKey"),
            (Some("developerNamespaceSelector: {}"), "selector", "empty"),
            (
                Some("developerNamespaceSelector: {matchLabels: {}}"),
                "selector",
                "empty",
            ),
            (
                Some(
                    "developerNamespaceSelector: {matchExpressions: [{key: a, operator: Like, values: [b]}]}",
                ),
                "selector",
                "unknown operator",
            ),
            (
                Some("developerNamespaceSelector: {matchExpressions: [{key: a, operator: In}]}"),
                "selector",
                "needs values",
            ),
            (
                Some("developerNamespaceSelector: {matchLabel: {a: b}}"),
                "selector",
                "unknown key",
            ),
            (
                Some("developerNamespaceSelector: {matchLabels: {'a b': c}}"),
                "selector",
                "not a label",
            ),
            (
                Some("virtualServiceTemplate: 3"),
                "template",
                "virtualServiceTemplate: not a string",
            ),
            (
                Some("virtualServiceTemplate: 'kind: Service'"),
                "template",
                "virtualServiceTemplate: apiVersion",
            ),
        ];
        for (text, reason, needle) in cases {
            let e = parse(*text).unwrap_err();
            assert_eq!(e.reason, *reason, "{text:?}: {}", e.message);
            assert!(e.message.contains(needle), "{text:?}: {}", e.message);
        }
    }

    #[test]
    fn baggage_regex_escapes_dots() {
        assert_eq!(
            baggage_regex("dev-namespace", "dev-alice"),
            "^(.*,)?[ \\t]*dev-namespace[ \\t]*=[ \\t]*dev-alice[ \\t]*([;,].*)?$"
        );
        assert!(baggage_regex("a.b", "x").contains("a\\.b"));
    }
}
