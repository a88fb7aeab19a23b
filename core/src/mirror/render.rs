//! Rendering a source into its mirror for one target namespace, hashing, and judging whether
//! an observed mirror shows a rendering (drift).
//!
//! Steps: copy the source with the target namespace; drop status and server-set metadata;
//! keep its labels and annotations minus our prefix and `--mirror-strip-keys`; per-kind
//! sanitizers (a Service's allocated IPs and ports); the transform rules (by the caller, see
//! [`super::transform`]); our keys last, so no rule can change them.

use std::collections::BTreeMap;

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::glob::simple_match;
use super::keys::{Keys, MANAGED_BY_US};
use super::kinds::KindRef;

/// `--mirror-strip-keys`' default: keys that make Argo CD, Helm or Flux adopt or prune mirrors.
pub const DEFAULT_STRIP_KEYS: &str = "kubectl.kubernetes.io/last-applied-configuration,deployment.kubernetes.io/revision,argocd.argoproj.io/*,app.kubernetes.io/instance,meta.helm.sh/*,kustomize.toolkit.fluxcd.io/*,helm.toolkit.fluxcd.io/*";

/// Metadata fields a mirror never copies.
const SERVER_SET: [&str; 10] = [
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "selfLink",
    "managedFields",
    "ownerReferences",
    "finalizers",
];

/// SHA-256, lowercase hex, of canonical JSON (keys sorted by byte order, no whitespace).
pub fn hash(v: &Value) -> String {
    // serde_json's map is ordered by key and writes no whitespace or HTML escapes.
    let bytes = serde_json::to_vec(v).expect("a JSON value serialises");
    Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn is_core(kind: &KindRef, name: &str) -> bool {
    kind.group.is_empty() && kind.kind == name
}

/// The labels or annotations of `meta[field]` a mirror copies.
fn copied(meta: &Value, field: &str, keys: &Keys, strip: &[String]) -> Map<String, Value> {
    meta.get(field)
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter(|(k, _)| !keys.is_ours(k) && !strip.iter().any(|g| simple_match(g, k)))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default()
}

/// Steps 1–4: the source, in namespace `target`, as it is copied before transforms.
pub fn base(source: &Value, kind: &KindRef, target: &str, keys: &Keys, strip: &[String]) -> Value {
    let mut out = Map::new();
    for (k, v) in source.as_object().into_iter().flatten() {
        if !matches!(k.as_str(), "status" | "metadata" | "apiVersion" | "kind") {
            out.insert(k.clone(), v.clone());
        }
    }
    let api_version = if kind.group.is_empty() {
        kind.version.clone()
    } else {
        format!("{}/{}", kind.group, kind.version)
    };
    out.insert("apiVersion".into(), Value::String(api_version));
    out.insert("kind".into(), Value::String(kind.kind.clone()));
    let meta = source.get("metadata").cloned().unwrap_or(Value::Null);
    let mut m = Map::new();
    for (k, v) in meta.as_object().into_iter().flatten() {
        if !SERVER_SET.contains(&k.as_str()) && !matches!(k.as_str(), "labels" | "annotations") {
            m.insert(k.clone(), v.clone());
        }
    }
    m.insert("namespace".into(), Value::String(target.into()));
    m.insert(
        "labels".into(),
        Value::Object(copied(&meta, "labels", keys, strip)),
    );
    m.insert(
        "annotations".into(),
        Value::Object(copied(&meta, "annotations", keys, strip)),
    );
    out.insert("metadata".into(), Value::Object(m));
    if is_core(kind, "Service") {
        sanitize_service(&mut out);
    }
    Value::Object(out)
}

/// A Service mirror gets its own IPs and ports: no cluster IPs (unless headless), node ports or
/// health-check node port.
fn sanitize_service(obj: &mut Map<String, Value>) {
    let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    let headless = spec.get("clusterIP").and_then(Value::as_str) == Some("None");
    if !headless {
        spec.remove("clusterIP");
        spec.remove("clusterIPs");
    }
    spec.remove("healthCheckNodePort");
    if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
        for p in ports.iter_mut().filter_map(Value::as_object_mut) {
            p.remove("nodePort");
        }
    }
}

/// What of the source its `source-content-hash` covers: its top-level fields but apiVersion,
/// kind, metadata and status, its copied labels and annotations, and the transform values.
pub fn source_hash(source: &Value, keys: &Keys, strip: &[String]) -> String {
    let mut m = Map::new();
    for (k, v) in source.as_object().into_iter().flatten() {
        if !matches!(k.as_str(), "status" | "metadata" | "apiVersion" | "kind") {
            m.insert(k.clone(), v.clone());
        }
    }
    let meta = source.get("metadata").cloned().unwrap_or(Value::Null);
    m.insert(
        "labels".into(),
        Value::Object(copied(&meta, "labels", keys, strip)),
    );
    m.insert(
        "annotations".into(),
        Value::Object(copied(&meta, "annotations", keys, strip)),
    );
    let ann = |k: String| meta["annotations"].get(&k).cloned().unwrap_or(Value::Null);
    m.insert("transform".into(), ann(keys.transform()));
    m.insert("transformStrict".into(), ann(keys.transform_strict()));
    hash(&Value::Object(m))
}

/// The hash a rendered mirror carries in `mirror-content-hash`: its labels, its annotations but
/// that one, and its top-level fields but apiVersion, kind, metadata and status.
pub fn mirror_hash(rendered: &Value, keys: &Keys) -> String {
    let mut m = Map::new();
    for (k, v) in rendered.as_object().into_iter().flatten() {
        if !matches!(k.as_str(), "status" | "metadata" | "apiVersion" | "kind") {
            m.insert(k.clone(), v.clone());
        }
    }
    let meta = &rendered["metadata"];
    m.insert(
        "labels".into(),
        meta.get("labels").cloned().unwrap_or(Value::Null),
    );
    let mut ann = meta
        .get("annotations")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    ann.remove(&keys.mirror_content_hash());
    m.insert("annotations".into(), Value::Object(ann));
    hash(&Value::Object(m))
}

/// The source a mirror names.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SourceRef {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its UID.
    pub uid: String,
}

/// Step 6: our keys, set on the transformed rendering last.
pub fn finish(mut rendered: Value, keys: &Keys, source: &SourceRef, source_hash: &str) -> Value {
    let meta = rendered["metadata"]
        .as_object_mut()
        .expect("a rendering has metadata");
    let labels = meta
        .entry("labels")
        .or_insert_with(|| Value::Object(Map::new()));
    if !labels.is_object() {
        *labels = Value::Object(Map::new());
    }
    let labels = labels.as_object_mut().expect("set above");
    labels.insert(keys.managed_by(), MANAGED_BY_US.into());
    labels.insert(keys.mirror(), "true".into());
    let ann = meta
        .entry("annotations")
        .or_insert_with(|| Value::Object(Map::new()));
    if !ann.is_object() {
        *ann = Value::Object(Map::new());
    }
    let ann = ann.as_object_mut().expect("set above");
    ann.insert(keys.source_namespace(), source.namespace.clone().into());
    ann.insert(keys.source_name(), source.name.clone().into());
    ann.insert(keys.source_uid(), source.uid.clone().into());
    ann.insert(keys.source_content_hash(), source_hash.into());
    let mh = mirror_hash(&rendered, keys);
    rendered["metadata"]["annotations"][keys.mirror_content_hash()] = Value::String(mh);
    rendered
}

/// True when `have` contains `want`: objects key by key (extra keys allowed, the server adds
/// defaults), lists element by element with the same length, scalars equal.
pub fn contains(have: &Value, want: &Value) -> bool {
    match (have, want) {
        (Value::Object(h), Value::Object(w)) => w
            .iter()
            .all(|(k, wv)| h.get(k).is_some_and(|hv| contains(hv, wv))),
        (Value::Array(h), Value::Array(w)) => {
            h.len() == w.len() && h.iter().zip(w).all(|(a, b)| contains(a, b))
        }
        (h, w) => h == w,
    }
}

fn map_of<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Map<String, Value>> {
    path.iter().try_fold(v, |v, k| v.get(k))?.as_object()
}

/// True for a label or annotation key `--mirror-strip-keys` names: never copied to a mirror, so
/// one found on a mirror was put there by someone else (the Deployment controller's
/// `deployment.kubernetes.io/revision`, Argo CD's tracking id) and is left alone, neither
/// compared nor removed.
pub fn stripped(strip: &[String], key: &str) -> bool {
    strip.iter().any(|g| simple_match(g, key))
}

/// The labels or annotations of `obj` that are compared: all but the stripped keys.
pub fn compared<'a>(obj: &'a Value, field: &str, strip: &[String]) -> BTreeMap<&'a str, &'a Value> {
    map_of(obj, &["metadata", field])
        .into_iter()
        .flatten()
        .filter(|(k, _)| !stripped(strip, k))
        .map(|(k, v)| (k.as_str(), v))
        .collect()
}

/// Where a compacted ConfigMap or Secret mirror keeps the hash of its content (see
/// [`compact`]); no API field can have this name.
pub const CONTENT: &str = "$fleetmirror.content";

/// ConfigMaps and Secrets: their content is compared exactly (so a hash of it suffices).
pub fn exact(kind: &KindRef) -> bool {
    is_core(kind, "ConfigMap") || is_core(kind, "Secret")
}

/// The hash of what a ConfigMap or Secret holds, as [`shows`] compares it: every top-level
/// field but apiVersion, kind, metadata and status, with `type` absent = Opaque (a Secret),
/// `immutable` absent = false, and an empty or absent `data` / `binaryData` alike. A compacted
/// object answers with the hash it keeps.
pub fn content_hash(obj: &Value, kind: &KindRef) -> String {
    if let Some(h) = obj.get(CONTENT).and_then(Value::as_str) {
        return h.to_owned();
    }
    let mut m = Map::new();
    for (k, v) in obj.as_object().into_iter().flatten() {
        if matches!(k.as_str(), "metadata" | "apiVersion" | "kind" | "status") {
            continue;
        }
        let empty = v.is_null() || v.as_object().is_some_and(Map::is_empty);
        if matches!(k.as_str(), "data" | "binaryData") && empty {
            continue;
        }
        m.insert(k.clone(), v.clone());
    }
    if is_core(kind, "Secret") {
        m.entry("type").or_insert_with(|| "Opaque".into());
    }
    if m.get("immutable")
        .is_some_and(|v| v == &Value::Bool(false) || v.is_null())
    {
        m.remove("immutable");
    }
    hash(&Value::Object(m))
}

/// Replaces what a ConfigMap or Secret (`obj`'s top-level fields but apiVersion, kind and
/// metadata) holds by the hash of it, keeping `type` and `immutable`: what the mirror watch
/// stores of each mirror, so memory does not grow with what mirrors hold. Other kinds are left
/// whole (their comparison needs the fields: the server adds defaults).
pub fn compact(obj: &mut Map<String, Value>, kind: &KindRef) {
    if !exact(kind) || obj.contains_key(CONTENT) {
        return;
    }
    let h = content_hash(&Value::Object(obj.clone()), kind);
    obj.retain(|k, _| {
        matches!(
            k.as_str(),
            "metadata" | "apiVersion" | "kind" | "type" | "immutable"
        )
    });
    obj.insert(CONTENT.into(), Value::String(h));
}

/// True when the observed mirror `have` shows the rendering `want` (the spec's rules): labels
/// and annotations equal exactly; for ConfigMaps and Secrets everything they hold equal exactly
/// (`type` absent = Opaque, `immutable` absent = false; compared by [`content_hash`], which also
/// answers for a [`compact`]ed mirror); for other kinds every top-level field of `want`
/// contained in `have`'s.
pub fn shows(have: &Value, want: &Value, kind: &KindRef, strip: &[String]) -> bool {
    for field in ["labels", "annotations"] {
        if compared(have, field, strip) != compared(want, field, strip) {
            return false;
        }
    }
    if exact(kind) {
        return content_hash(have, kind) == content_hash(want, kind);
    }
    want.as_object().into_iter().flatten().all(|(k, w)| {
        matches!(k.as_str(), "metadata" | "apiVersion" | "kind" | "status")
            || have.get(k).is_some_and(|h| contains(h, w))
    })
}

/// Step 3's strip list, parsed from `--mirror-strip-keys`.
pub fn strip_keys(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The labels or annotations of an object, as a string map (non-strings dropped).
pub fn string_map(v: &Value, field: &str) -> BTreeMap<String, String> {
    map_of(v, &["metadata", field])
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn keys() -> Keys {
        Keys::new("fleetmirror.io").unwrap()
    }

    fn cm() -> KindRef {
        KindRef {
            group: "".into(),
            version: "v1".into(),
            kind: "ConfigMap".into(),
        }
    }

    fn source() -> Value {
        json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {
                "name": "shared", "namespace": "default", "uid": "u-1", "resourceVersion": "7",
                "creationTimestamp": "2026-01-01T00:00:00Z", "finalizers": ["x"],
                "ownerReferences": [{"kind": "Thing"}], "managedFields": [{}],
                "labels": {"app": "web", "fleetmirror.io/enabled": "true", "app.kubernetes.io/instance": "argo"},
                "annotations": {"fleetmirror.io/sync": "true", "note": "hi",
                                "kubectl.kubernetes.io/last-applied-configuration": "{}",
                                "argocd.argoproj.io/sync-wave": "1"}
            },
            "data": {"LOG_LEVEL": "debug"},
            "status": {"x": 1}
        })
    }

    fn render(src: &Value, target: &str) -> Value {
        let strip = strip_keys(DEFAULT_STRIP_KEYS);
        let b = base(src, &cm(), target, &keys(), &strip);
        let sh = source_hash(src, &keys(), &strip);
        let r = SourceRef {
            namespace: "default".into(),
            name: "shared".into(),
            uid: "u-1".into(),
        };
        finish(b, &keys(), &r, &sh)
    }

    #[test]
    fn a_mirror_copies_content_and_user_keys_only() {
        let m = render(&source(), "team-a");
        assert_eq!(m["metadata"]["namespace"], "team-a");
        assert_eq!(m["metadata"]["name"], "shared");
        assert_eq!(m["data"]["LOG_LEVEL"], "debug");
        for gone in [
            "uid",
            "resourceVersion",
            "creationTimestamp",
            "finalizers",
            "ownerReferences",
            "managedFields",
        ] {
            assert!(m["metadata"].get(gone).is_none(), "{gone}");
        }
        assert!(m.get("status").is_none());
        let labels = string_map(&m, "labels");
        assert_eq!(labels["app"], "web");
        assert_eq!(labels["fleetmirror.io/managed-by"], "fleetmirror");
        assert_eq!(labels["fleetmirror.io/mirror"], "true");
        assert!(
            !labels.contains_key("fleetmirror.io/enabled"),
            "source keys are not copied"
        );
        assert!(
            !labels.contains_key("app.kubernetes.io/instance"),
            "GitOps keys are stripped"
        );
        let ann = string_map(&m, "annotations");
        assert_eq!(ann["note"], "hi");
        assert!(!ann.contains_key("fleetmirror.io/sync"));
        assert!(!ann.contains_key("kubectl.kubernetes.io/last-applied-configuration"));
        assert!(!ann.contains_key("argocd.argoproj.io/sync-wave"));
        assert_eq!(ann["fleetmirror.io/source-uid"], "u-1");
        assert_eq!(ann["fleetmirror.io/source-content-hash"].len(), 64);
        assert_eq!(
            ann["fleetmirror.io/mirror-content-hash"],
            mirror_hash(&m, &keys())
        );
    }

    #[test]
    fn hashes_are_canonical_and_cover_what_the_spec_says() {
        assert_eq!(
            hash(&json!({"b": 1, "a": [1, "<x>"]})),
            hash(&json!({"a": [1, "<x>"], "b": 1}))
        );
        let mut s2 = source();
        s2["metadata"]["resourceVersion"] = "8".into();
        s2["status"] = json!({"y": 2});
        let strip = strip_keys(DEFAULT_STRIP_KEYS);
        assert_eq!(
            source_hash(&source(), &keys(), &strip),
            source_hash(&s2, &keys(), &strip),
            "server fields do not count"
        );
        s2["data"]["LOG_LEVEL"] = "info".into();
        assert_ne!(
            source_hash(&source(), &keys(), &strip),
            source_hash(&s2, &keys(), &strip)
        );
        let mut s3 = source();
        s3["metadata"]["annotations"]["fleetmirror.io/transform"] = "rules: []".into();
        assert_ne!(
            source_hash(&source(), &keys(), &strip),
            source_hash(&s3, &keys(), &strip),
            "the transform counts"
        );
    }

    #[test]
    fn services_get_their_own_addresses() {
        let svc = KindRef {
            group: "".into(),
            version: "v1".into(),
            kind: "Service".into(),
        };
        let src = json!({"metadata": {"name": "s"}, "spec": {"type": "NodePort", "clusterIP": "10.0.0.5", "clusterIPs": ["10.0.0.5"],
            "healthCheckNodePort": 30001, "ports": [{"port": 80, "nodePort": 30080}]}});
        let b = base(&src, &svc, "t", &keys(), &[]);
        assert!(b["spec"].get("clusterIP").is_none() && b["spec"].get("clusterIPs").is_none());
        assert!(b["spec"].get("healthCheckNodePort").is_none());
        assert!(b["spec"]["ports"][0].get("nodePort").is_none());
        let headless = json!({"metadata": {"name": "h"}, "spec": {"clusterIP": "None", "clusterIPs": ["None"]}});
        assert_eq!(
            base(&headless, &svc, "t", &keys(), &[])["spec"]["clusterIP"],
            "None"
        );
    }

    #[test]
    fn what_shows_a_rendering() {
        let want = render(&source(), "t");
        let mut have = want.clone();
        have["metadata"]["uid"] = "m-1".into();
        have["metadata"]["resourceVersion"] = "1".into();
        assert!(shows(&have, &want, &cm(), &[]));
        let mut edited = have.clone();
        edited["data"]["LOG_LEVEL"] = "hacked".into();
        assert!(!shows(&edited, &want, &cm(), &[]), "an edited value");
        let mut added = have.clone();
        added["data"]["EXTRA"] = "x".into();
        assert!(!shows(&added, &want, &cm(), &[]), "a hand-added data key");
        let mut label = have.clone();
        label["metadata"]["labels"]["hand"] = "x".into();
        assert!(!shows(&label, &want, &cm(), &[]), "a hand-added label");
        // Other kinds: the server's defaults are fine.
        let deploy = KindRef {
            group: "apps".into(),
            version: "v1".into(),
            kind: "Deployment".into(),
        };
        let w = json!({"metadata": {"labels": {}, "annotations": {}}, "spec": {"replicas": 1, "template": {"spec": {"containers": [{"name": "a", "image": "i"}]}}}});
        let mut h = w.clone();
        h["spec"]["strategy"] = json!({"type": "RollingUpdate"});
        h["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = "IfNotPresent".into();
        assert!(shows(&h, &w, &deploy, &[]));
        h["spec"]["replicas"] = 2.into();
        assert!(!shows(&h, &w, &deploy, &[]));
        let mut short = w.clone();
        short["spec"]["template"]["spec"]["containers"] = json!([]);
        assert!(
            !shows(&short, &w, &deploy, &[]),
            "lists have the same length"
        );
        let secret = KindRef {
            group: "".into(),
            version: "v1".into(),
            kind: "Secret".into(),
        };
        let ws = json!({"metadata": {}, "data": {"a": "YQ=="}});
        let hs = json!({"metadata": {}, "data": {"a": "YQ=="}, "type": "Opaque"});
        assert!(shows(&hs, &ws, &secret, &[]), "absent type is Opaque");
    }

    #[test]
    fn a_compacted_mirror_shows_exactly_what_the_whole_one_does() {
        let secret = KindRef {
            kind: "Secret".into(),
            ..cm()
        };
        let want = json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "s", "labels": {"a": "1"}, "annotations": {"b": "2"}},
            "data": {"k": "dg=="}});
        // The server adds `type: Opaque`; an empty binaryData is no binaryData.
        let mut have = want.clone();
        have["type"] = json!("Opaque");
        have["binaryData"] = json!({});
        have["metadata"]["uid"] = json!("u");
        assert!(shows(&have, &want, &secret, &[]));
        let mut compacted = have.as_object().unwrap().clone();
        compact(&mut compacted, &secret);
        let compacted = Value::Object(compacted);
        assert!(
            compacted.get("data").is_none(),
            "the content is gone, its hash kept"
        );
        assert_eq!(
            compacted["type"], "Opaque",
            "type is kept (a change means recreate)"
        );
        assert_eq!(compacted["metadata"]["uid"], "u");
        assert!(shows(&compacted, &want, &secret, &[]));
        for edit in [
            json!({"data": {"k": "eA=="}}),
            json!({"data": {"k": "dg==", "extra": "eA=="}}),
            json!({"immutable": true}),
            json!({"type": "kubernetes.io/basic-auth"}),
        ] {
            let mut w = want.clone();
            for (k, v) in edit.as_object().unwrap() {
                w[k] = v.clone();
            }
            assert!(!shows(&compacted, &w, &secret, &[]), "{edit}");
        }
        let mut relabelled = want.clone();
        relabelled["metadata"]["labels"]["a"] = json!("2");
        assert!(!shows(&compacted, &relabelled, &secret, &[]));
        // Other kinds stay whole.
        let mut svc = have.as_object().unwrap().clone();
        let service = KindRef {
            kind: "Service".into(),
            ..cm()
        };
        compact(&mut svc, &service);
        assert!(svc.contains_key("data"));
    }
}
