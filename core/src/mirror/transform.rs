//! Transform rules (`<p>/transform`): per-target edits of a mirror, kubemirror's format and
//! error messages, with its limits, and fleetmirror's guards.
//!
//! Pipeline: parse (size, YAML, count) → validate every rule → apply in order. What a failure
//! means depends on the kind and `<p>/transform-strict` ([`Outcome`]): a Secret fails closed
//! (nothing written: a rule meant to delete a password must never be skipped), other kinds
//! are written untransformed (parse or validation errors) or without the failing rule, unless
//! strict.

use serde_json::{Map, Value};

use super::glob::simple_match;
use super::template::{self, Context};

/// Most rules in one annotation.
pub const MAX_RULES: usize = 50;
/// Largest annotation.
pub const MAX_BYTES: usize = 10_240;

/// One segment of a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// A map key.
    Key(String),
    /// A list index (may be negative: an error when applied).
    Index(i64),
}

/// What a rule does.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Set a string.
    Value(String),
    /// Set the output of a template.
    Template(String),
    /// Shallow-merge a map.
    Merge(Map<String, Value>),
    /// Remove the field.
    Delete,
}

impl Action {
    fn name(&self) -> &'static str {
        match self {
            Action::Value(_) => "value",
            Action::Template(_) => "template",
            Action::Merge(_) => "merge",
            Action::Delete => "delete",
        }
    }
}

/// One rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// As written.
    pub path: String,
    /// Parsed.
    pub segments: Vec<Segment>,
    /// What it does.
    pub action: Action,
    /// Only for targets matching this (`*`, `?`, all else literal); `None` or `""`: all.
    pub namespace_pattern: Option<String>,
}

/// A transform failure, with the rule (1-based) and its type when it concerns one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransformError {
    /// The rule, 1-based.
    pub rule: Option<usize>,
    /// Its action (value, template, merge, delete).
    pub action: Option<&'static str>,
    /// What went wrong.
    pub message: String,
}

impl std::fmt::Display for TransformError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.rule, self.action) {
            (Some(n), Some(a)) => write!(f, "rule {n} ({a}): {}", self.message),
            (Some(n), None) => write!(f, "rule {n}: {}", self.message),
            _ => f.write_str(&self.message),
        }
    }
}

fn whole(message: impl Into<String>) -> TransformError {
    TransformError {
        rule: None,
        action: None,
        message: message.into(),
    }
}

/// Parses a path: `.` separates keys (empty ones skipped), `[N]` indexes a list, `["key"]` is a
/// key that may hold dots and slashes.
pub fn parse_path(path: &str) -> Result<Vec<Segment>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let c: Vec<char> = path.chars().collect();
    let mut i = 0;
    let flush = |cur: &mut String, out: &mut Vec<Segment>| {
        if !cur.is_empty() {
            out.push(Segment::Key(std::mem::take(cur)));
        }
    };
    while i < c.len() {
        match c[i] {
            '.' => {
                flush(&mut cur, &mut out);
                i += 1;
            }
            '[' => {
                flush(&mut cur, &mut out);
                let close = c[i..]
                    .iter()
                    .position(|&x| x == ']')
                    .map(|p| p + i)
                    .ok_or_else(|| format!("unclosed [ in path {path:?}"))?;
                let inner: String = c[i + 1..close].iter().collect();
                let inner = inner.trim();
                if let Some(key) = inner.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
                    out.push(Segment::Key(key.to_owned()));
                } else {
                    let n: i64 = inner
                        .parse()
                        .map_err(|_| format!("invalid array index {inner:?} in path {path:?}"))?;
                    out.push(Segment::Index(n));
                }
                i = close + 1;
            }
            ch => {
                cur.push(ch);
                i += 1;
            }
        }
    }
    flush(&mut cur, &mut out);
    Ok(out)
}

/// Parses and validates `<p>/transform`. Errors are kubemirror's (`failed to parse`, `too many
/// rules`, `invalid transformation rules: …`).
pub fn parse(annotation: &str) -> Result<Vec<Rule>, TransformError> {
    if annotation.len() > MAX_BYTES {
        return Err(whole(format!(
            "transformation rules exceed maximum size of {MAX_BYTES} bytes"
        )));
    }
    let doc: serde_yaml::Value = serde_yaml::from_str(annotation)
        .map_err(|e| whole(format!("failed to parse transformation rules: {e}")))?;
    let doc: Value = serde_json::to_value(&doc)
        .map_err(|e| whole(format!("failed to parse transformation rules: {e}")))?;
    let rules = match doc.get("rules") {
        None | Some(Value::Null) => return Ok(vec![]),
        Some(Value::Array(a)) => a,
        Some(_) => {
            return Err(whole(
                "failed to parse transformation rules: rules must be a list",
            ));
        }
    };
    if rules.len() > MAX_RULES {
        return Err(whole(format!(
            "too many rules ({}), maximum is {MAX_RULES}",
            rules.len()
        )));
    }
    rules
        .iter()
        .enumerate()
        .map(|(i, r)| {
            validate(r).map_err(|message| TransformError {
                rule: Some(i + 1),
                action: None,
                message: format!("invalid transformation rules: {message}"),
            })
        })
        .collect()
}

fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn validate(r: &Value) -> Result<Rule, String> {
    let obj = r.as_object().ok_or("a rule must be a map")?;
    let path = obj.get("path").and_then(scalar_text).unwrap_or_default();
    if path.trim().is_empty() {
        return Err("rule path cannot be empty".into());
    }
    let mut actions = Vec::new();
    match obj.get("value") {
        None | Some(Value::Null) => {}
        Some(v) => actions.push(Action::Value(
            scalar_text(v).ok_or("value must be a scalar")?,
        )),
    }
    if let Some(t) = obj.get("template").filter(|v| !v.is_null()) {
        actions.push(Action::Template(
            scalar_text(t).ok_or("template must be a string")?,
        ));
    }
    if let Some(m) = obj.get("merge").filter(|v| !v.is_null()) {
        actions.push(Action::Merge(
            m.as_object().cloned().ok_or("merge must be a map")?,
        ));
    }
    if obj.get("delete") == Some(&Value::Bool(true)) {
        actions.push(Action::Delete);
    }
    let action = match actions.len() {
        0 => return Err("rule must specify one of: value, template, merge, or delete".into()),
        1 => actions.pop().expect("one"),
        _ => {
            return Err(
                "rule cannot specify multiple actions (value, template, merge, delete are mutually exclusive)"
                    .into(),
            );
        }
    };
    let segments = parse_path(&path)?;
    if segments.is_empty() {
        return Err("rule path cannot be empty".into());
    }
    if let Action::Template(t) = &action {
        template::Template::parse(t).map_err(|e| format!("template: {e}"))?;
    }
    Ok(Rule {
        path,
        segments,
        action,
        namespace_pattern: obj
            .get("namespacePattern")
            .and_then(Value::as_str)
            .map(str::to_owned),
    })
}

/// A path rules may not touch: apiVersion, kind, status, metadata other than labels and
/// annotations (so not the name or namespace). Our own keys are set after the rules anyway.
fn guarded(segments: &[Segment]) -> bool {
    match segments.first() {
        Some(Segment::Key(k)) if matches!(k.as_str(), "apiVersion" | "kind" | "status") => true,
        Some(Segment::Key(k)) if k == "metadata" => !matches!(
            segments.get(1),
            Some(Segment::Key(k)) if k == "labels" || k == "annotations"
        ),
        _ => false,
    }
}

fn index(list_len: usize, n: i64) -> Result<usize, String> {
    usize::try_from(n)
        .ok()
        .filter(|&i| i < list_len)
        .ok_or_else(|| format!("array index {n} out of bounds (length {list_len})"))
}

/// The container at `segments`, creating missing maps when `create`.
fn walk<'a>(
    mut v: &'a mut Value,
    segments: &[Segment],
    create: bool,
) -> Result<Option<&'a mut Value>, String> {
    for s in segments {
        v = match s {
            Segment::Key(k) => {
                if v.is_null() && create {
                    *v = Value::Object(Map::new());
                }
                let Value::Object(m) = v else {
                    return Err(format!("path segment {k:?} requires a map"));
                };
                if !m.contains_key(k) {
                    if !create {
                        return Ok(None);
                    }
                    m.insert(k.clone(), Value::Object(Map::new()));
                }
                m.get_mut(k).expect("present")
            }
            Segment::Index(n) => {
                let Value::Array(a) = v else {
                    return Err(format!("path segment [{n}] requires an array"));
                };
                let i = index(a.len(), *n)?;
                &mut a[i]
            }
        };
    }
    Ok(Some(v))
}

fn set(obj: &mut Value, segments: &[Segment], value: Value) -> Result<(), String> {
    let (last, parents) = segments.split_last().ok_or("empty path")?;
    let parent = walk(obj, parents, true)?.expect("created");
    match last {
        Segment::Key(k) => {
            if parent.is_null() {
                *parent = Value::Object(Map::new());
            }
            let Value::Object(m) = parent else {
                return Err(format!("path segment {k:?} requires a map"));
            };
            m.insert(k.clone(), value);
        }
        Segment::Index(n) => {
            let Value::Array(a) = parent else {
                return Err(format!("path segment [{n}] requires an array"));
            };
            let i = index(a.len(), *n)?;
            a[i] = value;
        }
    }
    Ok(())
}

fn merge(obj: &mut Value, segments: &[Segment], add: &Map<String, Value>) -> Result<(), String> {
    if segments.iter().any(|s| matches!(s, Segment::Index(_))) {
        return Err("merge does not pass through lists".into());
    }
    let target = walk(obj, segments, true)?.expect("created");
    if target.is_null() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(m) = target else {
        return Err("merge target is not a map".into());
    };
    for (k, v) in add {
        m.insert(k.clone(), v.clone());
    }
    Ok(())
}

fn delete(obj: &mut Value, segments: &[Segment]) -> Result<(), String> {
    let Some((last, parents)) = segments.split_last() else {
        return Ok(());
    };
    if segments.iter().any(|s| matches!(s, Segment::Index(_))) {
        return Ok(()); // through a list index: a no-op
    }
    let Ok(Some(parent)) = walk(obj, parents, false) else {
        return Ok(());
    };
    if let (Segment::Key(k), Value::Object(m)) = (last, parent) {
        m.remove(k);
    }
    Ok(())
}

/// What applying the rules to one mirror came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Write this (transformed, or untransformed / partly when non-strict), reporting `errors`.
    Write {
        /// The object to write.
        object: Value,
        /// Failures to report (`TransformFailed`), none for a clean run.
        errors: Vec<TransformError>,
    },
    /// Write nothing (Secrets and strict mode): a new mirror is not created, an existing one
    /// keeps its content.
    Refuse(Vec<TransformError>),
}

/// Applies `annotation`'s rules to `object` for target `ctx.target_namespace`.
pub fn apply(
    object: Value,
    annotation: Option<&str>,
    strict: bool,
    secret: bool,
    ctx: &Context,
) -> Outcome {
    let Some(annotation) = annotation.filter(|a| !a.trim().is_empty()) else {
        return Outcome::Write {
            object,
            errors: vec![],
        };
    };
    let closed = strict || secret;
    let rules = match parse(annotation) {
        Ok(r) => r,
        Err(e) if closed => return Outcome::Refuse(vec![e]),
        Err(e) => {
            return Outcome::Write {
                object,
                errors: vec![e],
            };
        }
    };
    let mut out = object;
    let mut errors = Vec::new();
    for (i, rule) in rules.iter().enumerate() {
        if let Some(p) = rule.namespace_pattern.as_deref().filter(|p| !p.is_empty())
            && !simple_match(p, &ctx.target_namespace)
        {
            continue;
        }
        if let Err(message) = apply_rule(&mut out, rule, secret, ctx) {
            errors.push(TransformError {
                rule: Some(i + 1),
                action: Some(rule.action.name()),
                message,
            });
            if closed {
                return Outcome::Refuse(errors);
            }
        }
    }
    Outcome::Write {
        object: out,
        errors,
    }
}

fn apply_rule(obj: &mut Value, rule: &Rule, secret: bool, ctx: &Context) -> Result<(), String> {
    if guarded(&rule.segments) {
        return Err(format!(
            "path {:?} is not allowed (apiVersion, kind, status and metadata other than labels and annotations are not transformed)",
            rule.path
        ));
    }
    let under_data = matches!(rule.segments.first(), Some(Segment::Key(k)) if k == "data");
    let encode = |s: String| -> Value {
        if secret && under_data {
            use base64::Engine;
            Value::String(base64::engine::general_purpose::STANDARD.encode(s))
        } else {
            Value::String(s)
        }
    };
    match &rule.action {
        Action::Value(v) => set(obj, &rule.segments, encode(v.clone())),
        Action::Template(t) => {
            let s = template::render(t, ctx).map_err(|e| e.0)?;
            set(obj, &rule.segments, encode(s))
        }
        Action::Merge(m) => merge(obj, &rule.segments, m),
        Action::Delete => delete(obj, &rule.segments),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ctx(target: &str) -> Context {
        Context {
            target_namespace: target.into(),
            source_namespace: "default".into(),
            source_name: "TEST-CONFIG".into(),
            target_name: "TEST-CONFIG".into(),
            labels: [("app.kubernetes.io/name".to_owned(), "web".to_owned())].into(),
            annotations: Default::default(),
        }
    }

    fn run(obj: Value, rules: &str, target: &str) -> Value {
        match apply(obj, Some(rules), false, false, &ctx(target)) {
            Outcome::Write { object, errors } => {
                assert!(errors.is_empty(), "{errors:?}");
                object
            }
            other => panic!("{other:?}"),
        }
    }

    fn b64(s: &str) -> String {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn paths() {
        use Segment::*;
        let k = |s: &str| Key(s.into());
        assert_eq!(
            parse_path("spec.containers[0].image").unwrap(),
            [k("spec"), k("containers"), Index(0), k("image")]
        );
        assert_eq!(parse_path("a..b").unwrap(), [k("a"), k("b")]);
        assert_eq!(parse_path("").unwrap(), []);
        assert_eq!(
            parse_path("list[999].field").unwrap(),
            [k("list"), Index(999), k("field")]
        );
        assert_eq!(
            parse_path(r#"metadata.annotations["example.com/x"]"#).unwrap(),
            [k("metadata"), k("annotations"), k("example.com/x")]
        );
        let mut v = json!({});
        set(&mut v, &parse_path("a.b.c.d").unwrap(), json!("x")).unwrap();
        assert_eq!(v, json!({"a": {"b": {"c": {"d": "x"}}}}));
        assert!(set(&mut json!({}), &[], json!(1)).is_err());
        assert!(
            set(
                &mut json!({"key": "s"}),
                &parse_path("key.nested").unwrap(),
                json!(1)
            )
            .is_err()
        );
        let mut l = json!({"items": ["a", "b", "c"]});
        set(&mut l, &parse_path("items[1]").unwrap(), json!("modified")).unwrap();
        assert_eq!(l, json!({"items": ["a", "modified", "c"]}));
        let e = set(
            &mut json!({"items": ["a", "b"]}),
            &parse_path("items[5]").unwrap(),
            json!(1),
        )
        .unwrap_err();
        assert_eq!(e, "array index 5 out of bounds (length 2)");
        assert!(
            set(
                &mut json!({"items": "x"}),
                &parse_path("items[0]").unwrap(),
                json!(1)
            )
            .unwrap_err()
            .contains("requires an array")
        );
    }

    #[test]
    fn kubemirrors_reference_cases() {
        // T1, T2, T3
        let cm = json!({"data": {"LOG_LEVEL": "debug"}});
        assert_eq!(
            run(
                cm.clone(),
                "rules: [{path: data.LOG_LEVEL, value: error}]",
                "prod"
            )["data"]["LOG_LEVEL"],
            "error"
        );
        let t2 = "rules:\n- path: data.API_URL\n  template: 'https://{{.TargetNamespace}}.api.example.com'";
        assert_eq!(
            run(cm.clone(), t2, "prod-app")["data"]["API_URL"],
            "https://prod-app.api.example.com"
        );
        let t3 = "rules:\n- {path: data.A, template: '{{upper .TargetNamespace}}'}\n- {path: data.B, template: '{{lower .SourceName}}'}";
        let o = run(cm.clone(), t3, "prod-app");
        assert_eq!(
            (o["data"]["A"].as_str(), o["data"]["B"].as_str()),
            (Some("PROD-APP"), Some("test-config"))
        );
        // T4: merge labels
        let t4 =
            "rules: [{path: metadata.labels, merge: {environment: production, tier: frontend}}]";
        let o = run(json!({"metadata": {"labels": {"app": "myapp"}}}), t4, "x");
        assert_eq!(
            o["metadata"]["labels"],
            json!({"app": "myapp", "environment": "production", "tier": "frontend"})
        );
        let o = run(json!({"metadata": {}}), t4, "x");
        assert_eq!(
            o["metadata"]["labels"],
            json!({"environment": "production", "tier": "frontend"})
        );
        // T5, T6
        let o = run(
            json!({"data": {"DEBUG_MODE": "1", "LOG_LEVEL": "info"}}),
            "rules: [{path: data.DEBUG_MODE, delete: true}]",
            "x",
        );
        assert_eq!(o["data"], json!({"LOG_LEVEL": "info"}));
        let t6 = "rules:\n- {path: data.KEY1, value: first}\n- {path: data.KEY2, template: '{{.TargetNamespace}}-value'}\n- {path: metadata.labels, merge: {env: prod}}\n- {path: data.TO_DELETE, delete: true}";
        let o = run(
            json!({"metadata": {}, "data": {"TO_DELETE": "x"}}),
            t6,
            "production",
        );
        assert_eq!(
            o["data"],
            json!({"KEY1": "first", "KEY2": "production-value"})
        );
        assert_eq!(o["metadata"]["labels"]["env"], "prod");
        // T7: a Pod
        let pod = json!({"spec": {"containers": [{"image": "a", "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]}]}});
        let t7 = "rules:\n- {path: 'spec.containers[0].image', template: 'registry.{{.TargetNamespace}}.example.com/app:v1'}\n- {path: 'spec.containers[0].env[1].value', value: production}";
        let o = run(pod, t7, "prod-app");
        assert_eq!(
            o["spec"]["containers"][0]["image"],
            "registry.prod-app.example.com/app:v1"
        );
        assert_eq!(o["spec"]["containers"][0]["env"][1]["value"], "production");
        assert_eq!(
            o["spec"]["containers"][0]["env"].as_array().unwrap().len(),
            2
        );
        // T8
        assert_eq!(
            run(
                json!({}),
                "rules: [{path: data.X, template: '{{.TargetNamespace}}-empty'}]",
                ""
            )["data"]["X"],
            "-empty"
        );
        // T9, T10, T11: namespace patterns
        let t9 =
            "rules: [{path: data.HOST, value: preprod.example.com, namespacePattern: 'preprod-*'}]";
        let host = json!({"data": {"HOST": "default.example.com"}});
        assert_eq!(
            run(host.clone(), t9, "preprod-api")["data"]["HOST"],
            "preprod.example.com"
        );
        assert_eq!(
            run(host, t9, "production")["data"]["HOST"],
            "default.example.com"
        );
        let t10 = "rules:\n- {path: data.APP_NAME, value: universal-app}\n- {path: data.ENVIRONMENT, value: development, namespacePattern: 'namespace-?'}\n- {path: data.ENVIRONMENT, value: preproduction, namespacePattern: 'preprod-*'}\n- {path: data.ENVIRONMENT, value: production, namespacePattern: 'prod-*'}\n- {path: data.LOG_LEVEL, value: debug, namespacePattern: 'preprod-*'}\n- {path: data.LOG_LEVEL, value: error, namespacePattern: 'prod-*'}";
        let base = json!({"data": {"ENVIRONMENT": "unset"}});
        let o = run(base.clone(), t10, "preprod-api");
        assert_eq!(
            o["data"],
            json!({"APP_NAME": "universal-app", "ENVIRONMENT": "preproduction", "LOG_LEVEL": "debug"})
        );
        let o = run(base, t10, "namespace-10");
        assert_eq!(o["data"]["ENVIRONMENT"], "unset");
        let t11 = "rules:\n- {path: data.GLOBAL, value: applied-to-all}\n- {path: data.SCOPED, value: applied-to-prod, namespacePattern: 'prod-*'}";
        let o = run(
            json!({"data": {"GLOBAL": "", "SCOPED": "old"}}),
            t11,
            "staging",
        );
        assert_eq!(
            o["data"],
            json!({"GLOBAL": "applied-to-all", "SCOPED": "old"})
        );
    }

    #[test]
    fn secrets_are_base64_and_fail_closed() {
        // T12, T13
        let t12 = "rules:\n- {path: data.DB_NAME, template: 'app_{{replace .TargetNamespace \"-\" \"_\"}}'}\n- {path: data.C, template: '{{upper .TargetNamespace}}:cache'}";
        let Outcome::Write { object, errors } = apply(
            json!({"data": {}}),
            Some(t12),
            false,
            true,
            &ctx("kubemirror-e2e-app-1"),
        ) else {
            panic!()
        };
        assert!(errors.is_empty());
        assert_eq!(object["data"]["DB_NAME"], b64("app_kubemirror_e2e_app_1"));
        assert_eq!(object["data"]["C"], b64("KUBEMIRROR-E2E-APP-1:cache"));
        let t13 =
            "rules: [{path: data.X, template: '{{upper (replace .TargetNamespace \"-\" \"_\")}}'}]";
        let Outcome::Write { object, .. } =
            apply(json!({}), Some(t13), false, true, &ctx("namespace-3"))
        else {
            panic!()
        };
        assert_eq!(object["data"]["X"], b64("NAMESPACE_3"));
        // T20: a Secret with a broken transform is never written.
        let secret = json!({"data": {"ADMIN_PASSWORD": b64("hunter2")}});
        let big = format!(
            "rules: [{{path: data.X, value: '{}'}}]",
            "x".repeat(11 * 1024)
        );
        for bad in [
            "rules: [{path: data.ADMIN_PASSWORD, delete: true, value: x}]",
            "rules: [[[",
            big.as_str(),
        ] {
            assert!(
                matches!(
                    apply(secret.clone(), Some(bad), false, true, &ctx("x")),
                    Outcome::Refuse(_)
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn failures_and_strictness() {
        let cm = json!({"data": {"A": "1"}});
        // T16: unknown field: that rule skipped, others applied, non-strict.
        let t16 = "rules:\n- {path: data.B, template: '{{default \"fallback-value\" .OptionalField}}'}\n- {path: data.C, value: ok}";
        let Outcome::Write { object, errors } =
            apply(cm.clone(), Some(t16), false, false, &ctx("x"))
        else {
            panic!()
        };
        assert_eq!(object["data"], json!({"A": "1", "C": "ok"}));
        assert_eq!(errors.len(), 1);
        assert_eq!(
            (errors[0].rule, errors[0].action),
            (Some(1), Some("template"))
        );
        assert!(
            matches!(
                apply(cm.clone(), Some(t16), true, false, &ctx("x")),
                Outcome::Refuse(_)
            ),
            "strict"
        );
        // T17
        let t17 = "rules:\n- {path: data.M, template: '{{.Labels.missing}}'}\n- {path: data.D, template: '{{default \"x\" .Labels.missing}}'}\n- {path: data.I, template: '{{index .Labels \"app.kubernetes.io/name\"}}'}";
        let o = run(cm.clone(), t17, "x");
        assert_eq!(
            (
                o["data"]["M"].as_str(),
                o["data"]["D"].as_str(),
                o["data"]["I"].as_str()
            ),
            (Some("<no value>"), Some("x"), Some("web"))
        );
        // T18: a YAML error: untransformed with an error; strict: refused, "failed to parse".
        let Outcome::Write { object, errors } = apply(
            cm.clone(),
            Some("invalid: yaml: [[["),
            false,
            false,
            &ctx("x"),
        ) else {
            panic!()
        };
        assert_eq!(object, cm);
        assert_eq!(errors.len(), 1);
        let Outcome::Refuse(e) = apply(
            cm.clone(),
            Some("invalid: yaml: [[["),
            true,
            false,
            &ctx("x"),
        ) else {
            panic!()
        };
        assert!(e[0].message.contains("failed to parse"), "{e:?}");
        // T19
        let Outcome::Refuse(e) = apply(
            cm.clone(),
            Some("rules: [{value: x}]"),
            true,
            false,
            &ctx("x"),
        ) else {
            panic!()
        };
        assert!(
            e[0].message.contains("invalid transformation rules"),
            "{e:?}"
        );
        let hundred = format!(
            "rules: [{}]",
            vec!["{path: data.X, value: y}"; 100].join(",")
        );
        let Outcome::Refuse(e) = apply(cm.clone(), Some(&hundred), true, false, &ctx("x")) else {
            panic!()
        };
        assert!(
            e[0].message.contains("too many rules (100), maximum is 50"),
            "{e:?}"
        );
        // An invalid rule, non-strict: all rules skipped (untransformed).
        let Outcome::Write { object, errors } = apply(
            cm.clone(),
            Some("rules: [{path: data.A, value: x}, {path: data.B}]"),
            false,
            false,
            &ctx("x"),
        ) else {
            panic!()
        };
        assert_eq!(object, cm);
        assert!(
            errors[0].message.contains("rule must specify one of"),
            "{errors:?}"
        );
        // Messages in kubemirror's words.
        for (rules, msg) in [
            ("rules: [{value: x}]", "rule path cannot be empty"),
            (
                "rules: [{path: a}]",
                "rule must specify one of: value, template, merge, or delete",
            ),
            (
                "rules: [{path: a, value: x, delete: true}]",
                "rule cannot specify multiple actions (value, template, merge, delete are mutually exclusive)",
            ),
        ] {
            let e = parse(rules).unwrap_err();
            assert!(e.message.ends_with(msg), "{e}");
        }
        assert!(
            parse(&"#".repeat(10_241))
                .unwrap_err()
                .message
                .contains("exceed maximum size of 10240 bytes")
        );
        // null value / delete false: no action.
        assert!(parse("rules: [{path: a, value: null}]").is_err());
        assert!(parse("rules: [{path: a, delete: false}]").is_err());
        assert_eq!(
            parse("rules: [{path: a, merge: {}}]").unwrap()[0].action,
            Action::Merge(Map::new())
        );
        assert_eq!(
            parse("rules: [{path: a, value: 3}]").unwrap()[0].action,
            Action::Value("3".into())
        );
        assert_eq!(
            parse("rules: [{path: a, value: true}]").unwrap()[0].action,
            Action::Value("true".into())
        );
    }

    #[test]
    fn guards_and_fleetmirror_rows() {
        // T21: a key with dots; the dotted path nests as kubemirror does.
        let o = run(
            json!({"data": {}}),
            "rules: [{path: 'data[\"config.yaml\"]', value: 'a: 1'}]",
            "x",
        );
        assert_eq!(o["data"]["config.yaml"], "a: 1");
        let o = run(
            json!({"data": {}}),
            "rules: [{path: data.config.yaml, value: 'a: 1'}]",
            "x",
        );
        assert_eq!(o["data"]["config"]["yaml"], "a: 1");
        // T22: metadata.name is guarded; the others apply.
        let t22 = "rules:\n- {path: metadata.name, value: x}\n- {path: metadata.labels, merge: {fleetmirror.io/managed-by: x}}";
        let Outcome::Write { object, errors } = apply(
            json!({"metadata": {"name": "n"}}),
            Some(t22),
            false,
            false,
            &ctx("x"),
        ) else {
            panic!()
        };
        assert_eq!(object["metadata"]["name"], "n");
        assert_eq!(errors.len(), 1);
        assert!(errors[0].message.contains("not allowed"));
        // (our keys are set after the rules: see render::finish)
        // T23: a template printing megabytes.
        let Outcome::Write { errors, .. } = apply(
            json!({}),
            Some("rules: [{path: data.X, template: '{{printf \"%0900000d\" 1}}'}]"),
            false,
            false,
            &ctx("x"),
        ) else {
            panic!()
        };
        assert!(errors[0].message.contains("exceeds"), "{errors:?}");
        // merge through a list: an error; delete through an index: a no-op.
        let Outcome::Write { errors, .. } = apply(
            json!({"a": [{}]}),
            Some("rules: [{path: 'a[0]', merge: {x: 1}}]"),
            false,
            false,
            &ctx("x"),
        ) else {
            panic!()
        };
        assert_eq!(errors.len(), 1);
        let o = run(
            json!({"a": [{"x": 1}]}),
            "rules: [{path: 'a[0].x', delete: true}]",
            "x",
        );
        assert_eq!(o["a"][0]["x"], 1);
        let o = run(
            json!({"a": {}}),
            "rules: [{path: a.missing.deep, delete: true}]",
            "x",
        );
        assert_eq!(o, json!({"a": {}}), "deleting a missing field is a no-op");
    }
}
