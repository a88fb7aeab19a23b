//! `virtualServiceTemplate`: a VirtualService as YAML text with `${serviceName}` and
//! `${defaultNamespace}`, rendered by textual substitution and then parsed (the operator loaded
//! it and ignored it). Checked whole when the config loads (see [`Template::parse`]), so a
//! template that would let two Services share an object or a host, or leave a request without
//! a route, never takes effect.

use serde_json::{Map, Value};

/// The two variables.
const VARIABLES: [&str; 2] = ["serviceName", "defaultNamespace"];
/// Metadata keys a template may set.
const METADATA_KEYS: [&str; 4] = ["name", "namespace", "labels", "annotations"];

/// A checked template.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    text: String,
}

/// A template rendered for one Service: what the generated VirtualService takes from it.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.labels`.
    pub labels: Map<String, Value>,
    /// `metadata.annotations`.
    pub annotations: Map<String, Value>,
    /// The whole `spec` (our developer routes go before its first `http` route).
    pub spec: Map<String, Value>,
}

/// Replaces the variables in `text`; any other `${…}` (or an unclosed one) is an error.
fn substitute(text: &str, service: &str, namespace: &str) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let Some(end) = after.find('}') else {
            return Err("an unclosed \"${\"".into());
        };
        match &after[..end] {
            "serviceName" => out.push_str(service),
            "defaultNamespace" => out.push_str(namespace),
            other => {
                return Err(format!(
                    "unknown variable ${{{}}} (only {})",
                    other.chars().take(40).collect::<String>(),
                    VARIABLES.map(|v| format!("${{{v}}}")).join(" and ")
                ));
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn string_map(v: Option<&Value>, what: &str) -> Result<Map<String, Value>, String> {
    match v {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(m)) => {
            if let Some((k, _)) = m.iter().find(|(_, v)| !v.is_string()) {
                return Err(format!("metadata.{what}.{k} is not a string"));
            }
            Ok(m.clone())
        }
        Some(_) => Err(format!("metadata.{what} is not a mapping")),
    }
}

/// Stand-ins for the variables while the text is parsed: plain YAML strings, so a Service
/// named `true`, `null` or `123` still renders as a string.
const SERVICE_TOKEN: &str = "zzfmservicenamezz";
const NAMESPACE_TOKEN: &str = "zzfmdefaultnamespacezz";

/// Replaces the tokens in every string (and mapping key) of `v`.
fn fill(v: &mut Value, service: &str, namespace: &str) {
    let put = |s: &str| {
        s.replace(SERVICE_TOKEN, service)
            .replace(NAMESPACE_TOKEN, namespace)
    };
    match v {
        Value::String(s) => *s = put(s),
        Value::Array(a) => a.iter_mut().for_each(|x| fill(x, service, namespace)),
        Value::Object(m) => {
            let old = std::mem::take(m);
            for (k, mut x) in old {
                fill(&mut x, service, namespace);
                m.insert(put(&k), x);
            }
        }
        _ => {}
    }
}

/// Renders `text` for `service` and checks the shape (not the dependence on the service name).
fn render(text: &str, service: &str, namespace: &str) -> Result<(Rendered, Vec<String>), String> {
    let text = substitute(text, SERVICE_TOKEN, NAMESPACE_TOKEN)?;
    let mut value: Value = serde_yaml::from_str(&text).map_err(|e| format!("not YAML: {e}"))?;
    fill(&mut value, service, namespace);
    let Value::Object(mut root) = value else {
        return Err("not a mapping".into());
    };
    let api_version = root.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    if !api_version
        .strip_prefix("networking.istio.io/")
        .is_some_and(|v| !v.is_empty() && !v.contains('/'))
    {
        return Err(format!(
            "apiVersion {api_version:?} is not networking.istio.io/<version>"
        ));
    }
    if root.get("kind").and_then(Value::as_str) != Some("VirtualService") {
        return Err("kind is not VirtualService".into());
    }
    let metadata = match root.remove("metadata") {
        Some(Value::Object(m)) => m,
        None | Some(Value::Null) => Map::new(),
        Some(_) => return Err("metadata is not a mapping".into()),
    };
    if let Some(k) = metadata
        .keys()
        .find(|k| !METADATA_KEYS.contains(&k.as_str()))
    {
        return Err(format!(
            "metadata.{k} is not allowed (only name, namespace, labels, annotations)"
        ));
    }
    if let Some(ns) = metadata.get("namespace")
        && ns.as_str() != Some(namespace)
    {
        return Err(format!(
            "metadata.namespace must be the default namespace {namespace}"
        ));
    }
    let name = match metadata.get("name") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => return Err("metadata.name is missing".into()),
    };
    crate::naming::validate_dns1123_subdomain(&name)
        .map_err(|e| format!("metadata.name {name:?} {e}"))?;
    let labels = string_map(metadata.get("labels"), "labels")?;
    let annotations = string_map(metadata.get("annotations"), "annotations")?;
    let spec = match root.remove("spec") {
        Some(Value::Object(m)) => m,
        _ => return Err("spec is missing or not a mapping".into()),
    };
    let hosts: Vec<String> = match spec.get("hosts") {
        Some(Value::Array(a)) if !a.is_empty() => a
            .iter()
            .map(|h| {
                h.as_str()
                    .map(str::to_owned)
                    .ok_or("spec.hosts holds a non-string")
            })
            .collect::<Result<_, _>>()?,
        _ => return Err("spec.hosts is missing or empty".into()),
    };
    if hosts.iter().any(|h| h == "*") {
        return Err("spec.hosts holds \"*\" (every host)".into());
    }
    match spec.get("http") {
        Some(Value::Array(a)) if !a.is_empty() && a.iter().all(Value::is_object) => {}
        _ => {
            return Err(
                "spec.http has no route (a request without the header would have none)".into(),
            );
        }
    }
    if let Some(g) = spec.get("gateways")
        && !g.as_array().is_some_and(|a| a.iter().all(Value::is_string))
    {
        return Err("spec.gateways is not a list of strings".into());
    }
    Ok((
        Rendered {
            name,
            labels,
            annotations,
            spec,
        },
        hosts,
    ))
}

impl Template {
    /// Checks `text` for default namespace `namespace` (the config's).
    pub fn parse(text: &str, namespace: &str) -> Result<Template, String> {
        // Rendered for two different Services: the name and every host must differ, or two
        // Services would share an object or a host.
        let (a, hosts_a) = render(text, "fmcheck-a", namespace)?;
        let (b, hosts_b) = render(text, "fmcheck-b", namespace)?;
        if a.name == b.name {
            return Err("metadata.name does not contain ${serviceName}".into());
        }
        if hosts_a.len() != hosts_b.len() {
            return Err("spec.hosts depends on the service name in number".into());
        }
        if let Some(h) = hosts_a.iter().zip(&hosts_b).find(|(x, y)| x == y) {
            return Err(format!(
                "spec.hosts entry {:?} does not contain ${{serviceName}}",
                h.0
            ));
        }
        Ok(Template { text: text.into() })
    }

    /// The template rendered for `service` in `namespace`.
    pub fn render(&self, service: &str, namespace: &str) -> Result<Rendered, String> {
        render(&self.text, service, namespace).map(|(r, _)| r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata:
  name: ${serviceName}-routes
  namespace: ${defaultNamespace}
  labels: {team: web}
spec:
  hosts: ["${serviceName}", "${serviceName}.example.com"]
  gateways: [mesh, prod/public]
  http:
  - name: primary
    route: [{destination: {host: "${serviceName}.${defaultNamespace}.svc.cluster.local"}}]
"#;

    #[test]
    fn renders_by_substitution() {
        let t = Template::parse(GOOD, "prod").unwrap();
        let r = t.render("my-app", "prod").unwrap();
        assert_eq!(r.name, "my-app-routes");
        assert_eq!(r.labels["team"], "web");
        assert_eq!(
            r.spec["hosts"],
            serde_json::json!(["my-app", "my-app.example.com"])
        );
        assert_eq!(
            r.spec["http"][0]["route"][0]["destination"]["host"],
            "my-app.prod.svc.cluster.local"
        );
        assert_eq!(
            r.spec["gateways"],
            serde_json::json!(["mesh", "prod/public"])
        );
    }

    #[test]
    fn a_service_name_yaml_would_read_as_another_type_stays_a_string() {
        let t = Template::parse(GOOD, "prod").unwrap();
        for name in ["true", "null", "123", "1e3"] {
            let r = t.render(name, "prod").unwrap();
            assert_eq!(r.spec["hosts"][0], name, "{name}");
        }
    }

    #[test]
    fn refuses_what_is_not_a_safe_virtual_service() {
        let cases = [
            (
                GOOD.replace("${defaultNamespace}\n", "${namespace}\n"),
                "unknown variable",
            ),
            (format!("{GOOD}\n# ${{serviceName"), "unclosed"),
            ("[a, b]".to_owned(), "not a mapping"),
            ("a: [".to_owned(), "not YAML"),
            (
                GOOD.replace("networking.istio.io/v1beta1", "v1"),
                "apiVersion",
            ),
            (
                GOOD.replace("kind: VirtualService", "kind: Gateway"),
                "kind",
            ),
            (
                GOOD.replace("  labels: {team: web}", "  finalizers: [x]"),
                "metadata.finalizers",
            ),
            (
                GOOD.replace("namespace: ${defaultNamespace}", "namespace: other"),
                "default namespace",
            ),
            (
                GOOD.replace("${serviceName}-routes", "shared"),
                "metadata.name",
            ),
            (
                GOOD.replace("\"${serviceName}.example.com\"", "api.example.com"),
                "api.example.com",
            ),
            (
                GOOD.replace(
                    "hosts: [\"${serviceName}\", \"${serviceName}.example.com\"]",
                    "hosts: []",
                ),
                "spec.hosts",
            ),
            (
                GOOD.replace("\"${serviceName}.example.com\"", "\"*\""),
                "\"*\"",
            ),
            (
                GOOD.split("  http:").next().unwrap().to_owned(),
                "spec.http",
            ),
            (
                GOOD.replace("metadata:\n  name: ${serviceName}-routes\n", "metadata:\n"),
                "metadata.name is missing",
            ),
        ];
        for (text, want) in cases {
            let err = Template::parse(&text, "prod").unwrap_err();
            assert!(err.contains(want), "{want}: got {err}");
        }
    }
}
