//! Ownership and the write each (source, target namespace) needs, as pure decisions.
//!
//! An object at a mirror's name is **ours for source S** when it is labelled
//! `<p>/managed-by: fleetmirror`, its source annotations name S, and it is not itself a source.
//! Its source UID may name an earlier incarnation of S: the mirror passes to the new S and is
//! rewritten in place. A kubemirror mirror (`managed-by: kubemirror`) naming S *and S's UID* is
//! adopted. Everything else is foreign: never updated, never deleted. Two sources of one kind
//! and name selecting one namespace: the older owns the slot.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use serde_json::Value;

use super::keys::{Keys, MANAGED_BY_KUBEMIRROR, MANAGED_BY_US};
use super::kinds::KindRef;
use super::render::{SourceRef, hash, shows};

/// A source as the plan sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// Namespace, name and UID.
    pub reference: SourceRef,
    /// `creationTimestamp` (RFC 3339: sorts by time); with the UID, the age order.
    pub created: String,
}

impl Source {
    /// True when `self` is older than `other` (creation time, then UID as text).
    pub fn older_than(&self, other: &Source) -> bool {
        (&self.created, &self.reference.uid) < (&other.created, &other.reference.uid)
    }
}

/// Read access to an object at a mirror's name: JSON, or an object of the aggregator's watch
/// store (typed, not JSON yet). A pass reads the metadata of every object there but needs the
/// whole object only where it renders: converting all of them every pass cost the aggregator
/// most of its transient memory (spec mirror.md, memory figure).
pub trait ObjectAccess: std::fmt::Debug + Send + Sync {
    /// `metadata.uid` (empty when missing).
    fn uid(&self) -> &str;
    /// `metadata.resourceVersion` (empty when missing).
    fn resource_version(&self) -> &str;
    /// `metadata.deletionTimestamp` is set.
    fn deleting(&self) -> bool;
    /// One label's value.
    fn label(&self, key: &str) -> Option<&str>;
    /// One annotation's value.
    fn annotation(&self, key: &str) -> Option<&str>;
    /// The whole object as the API returned it (`None` if it cannot be converted: the slot is
    /// then left alone, never written on the strength of a partial object).
    fn to_json(&self) -> Option<Value>;
}

/// An object as JSON.
impl ObjectAccess for Value {
    fn uid(&self) -> &str {
        self["metadata"]["uid"].as_str().unwrap_or_default()
    }

    fn resource_version(&self) -> &str {
        self["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or_default()
    }

    fn deleting(&self) -> bool {
        !self["metadata"]["deletionTimestamp"].is_null()
    }

    fn label(&self, key: &str) -> Option<&str> {
        self["metadata"]["labels"].get(key)?.as_str()
    }

    fn annotation(&self, key: &str) -> Option<&str> {
        self["metadata"]["annotations"].get(key)?.as_str()
    }

    fn to_json(&self) -> Option<Value> {
        Some(self.clone())
    }
}

/// An object found at a mirror's name: JSON already (a write's result, a read), or an
/// [`ObjectAccess`] converted the first time its content is needed (then kept for the pass).
#[derive(Debug, Clone)]
pub struct Observed(Repr);

#[derive(Debug, Clone)]
enum Repr {
    Json(Arc<Value>),
    Lazy {
        access: Arc<dyn ObjectAccess>,
        json: OnceLock<Option<Value>>,
    },
}

impl From<Value> for Observed {
    fn from(v: Value) -> Self {
        Observed(Repr::Json(Arc::new(v)))
    }
}

impl From<Arc<Value>> for Observed {
    fn from(v: Arc<Value>) -> Self {
        Observed(Repr::Json(v))
    }
}

impl Observed {
    /// An object read through `access`, converted to JSON only if a pass needs its content.
    pub fn lazy(access: Arc<dyn ObjectAccess>) -> Self {
        Observed(Repr::Lazy {
            access,
            json: OnceLock::new(),
        })
    }

    /// The whole object (`None`: it could not be converted, see [`ObjectAccess::to_json`]).
    pub fn object(&self) -> Option<&Value> {
        match &self.0 {
            Repr::Json(v) => Some(v),
            Repr::Lazy { access, json } => json.get_or_init(|| access.to_json()).as_ref(),
        }
    }

    /// The object, to change (tests build variations of one object).
    #[cfg(test)]
    pub fn object_mut(&mut self) -> &mut Value {
        if let Repr::Lazy { .. } = self.0 {
            let v = self.object().cloned().unwrap_or_default();
            self.0 = Repr::Json(Arc::new(v));
        }
        match &mut self.0 {
            Repr::Json(v) => Arc::make_mut(v),
            Repr::Lazy { .. } => unreachable!("made JSON above"),
        }
    }

    /// Its metadata, wherever it is read from.
    fn access(&self) -> &dyn ObjectAccess {
        match &self.0 {
            Repr::Json(v) => &**v,
            Repr::Lazy { access, .. } => &**access,
        }
    }

    /// One label's value.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.access().label(key)
    }

    fn annotation(&self, key: &str) -> Option<&str> {
        self.access().annotation(key)
    }

    /// Its UID.
    pub fn uid(&self) -> &str {
        self.access().uid()
    }

    /// Its resourceVersion.
    pub fn resource_version(&self) -> &str {
        self.access().resource_version()
    }

    /// It is being deleted (`deletionTimestamp` set).
    pub fn deleting(&self) -> bool {
        self.access().deleting()
    }
}

/// Whose an observed object is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// Ours, for this source (`same_uid`: for this incarnation).
    Ours {
        /// Its source UID names this incarnation.
        same_uid: bool,
    },
    /// kubemirror's mirror of exactly this source: adopted.
    Kubemirror,
    /// Ours, for another source (another namespace, same kind and name).
    OtherSource(SourceRef),
    /// Not ours.
    Foreign,
}

/// Who owns `observed`, seen from source `s`.
pub fn owner(keys: &Keys, observed: &Observed, s: &SourceRef) -> Owner {
    let label = |k: String| observed.label(&k);
    let ann = |k: String| observed.annotation(&k);
    // A source is never a mirror, whatever else it says.
    let is_source = label(keys.enabled()) == Some("true")
        && ann(keys.sync()) == Some("true")
        && label(keys.mirror()) != Some("true");
    if is_source {
        return Owner::Foreign;
    }
    let names = (
        ann(keys.source_namespace()),
        ann(keys.source_name()),
        ann(keys.source_uid()),
    );
    match label(keys.managed_by()) {
        Some(MANAGED_BY_US) => match names {
            (Some(ns), Some(name), uid) if ns == s.namespace && name == s.name => Owner::Ours {
                same_uid: uid == Some(s.uid.as_str()),
            },
            (Some(ns), Some(name), uid) => Owner::OtherSource(SourceRef {
                namespace: ns.into(),
                name: name.into(),
                uid: uid.unwrap_or_default().into(),
            }),
            _ => Owner::Foreign,
        },
        Some(MANAGED_BY_KUBEMIRROR)
            if names
                == (
                    Some(s.namespace.as_str()),
                    Some(s.name.as_str()),
                    Some(s.uid.as_str()),
                ) =>
        {
            Owner::Kubemirror
        }
        _ => Owner::Foreign,
    }
}

/// The write one (source, namespace) slot needs.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// The mirror shows the rendering (or its accepted normalisation): nothing to do.
    UpToDate,
    /// Nothing there: create (POST; an object appearing meanwhile wins, AlreadyExists).
    Create,
    /// Ours (or adopted) but different: update with the observed resourceVersion.
    Update {
        /// kubemirror's mirror taken over.
        adopt: bool,
    },
    /// Ours, but it cannot be updated (a Secret's type, an immutable object's content):
    /// delete (preconditions) then create.
    Recreate(&'static str),
    /// Not ours (a foreign object, or an older source's mirror): left alone.
    Conflict(String),
}

/// The fingerprint of what a mirror shows (its compared content), to recognise the server's
/// normalisation of our own write. The same for a mirror and its compacted form.
pub fn fingerprint(object: &Value, kind: &KindRef, strip: &[String]) -> String {
    let mut m = serde_json::Map::new();
    if super::render::exact(kind) {
        m.insert(
            "content".into(),
            Value::String(super::render::content_hash(object, kind)),
        );
    } else {
        for (k, v) in object.as_object().into_iter().flatten() {
            if !matches!(k.as_str(), "metadata" | "status" | "apiVersion" | "kind") {
                m.insert(k.clone(), v.clone());
            }
        }
    }
    for field in ["labels", "annotations"] {
        let compared = super::render::compared(object, field, strip);
        m.insert(
            field.into(),
            serde_json::to_value(compared).unwrap_or_default(),
        );
    }
    hash(&Value::Object(m))
}

/// What the writer remembered after a write: the rendering it wrote (its hash) and the
/// fingerprint of the object the API server returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// Hash of the rendering written.
    pub rendering: String,
    /// Fingerprint of the object the server returned.
    pub result: String,
}

fn is_core(kind: &KindRef, name: &str) -> bool {
    kind.group.is_empty() && kind.kind == name
}

/// Decides the write for source `s` (which owns the slot unless `older` names an older source
/// selecting it) with rendering `want`, given what is at the name.
#[allow(clippy::too_many_arguments)]
pub fn decide(
    keys: &Keys,
    kind: &KindRef,
    strip: &[String],
    s: &Source,
    want: &Value,
    observed: Option<&Observed>,
    older: Option<&SourceRef>,
    accepted: Option<&Accepted>,
) -> Decision {
    let Some(obs) = observed else {
        return match older {
            // The older source's mirror will be created there; this one stays out.
            Some(o) => Decision::Conflict(format!(
                "an older source, {}/{}, mirrors there",
                o.namespace, o.name
            )),
            None => Decision::Create,
        };
    };
    let adopt = match owner(keys, obs, &s.reference) {
        Owner::Ours { .. } if older.is_some() => {
            let o = older.expect("checked");
            return Decision::Conflict(format!(
                "an older source, {}/{}, owns the name there",
                o.namespace, o.name
            ));
        }
        Owner::Ours { .. } => false,
        Owner::Kubemirror => true,
        Owner::OtherSource(other) => {
            // Ours for a younger source: the older one (this) takes the slot over.
            if older.is_none() && other.namespace != s.reference.namespace {
                false
            } else {
                return Decision::Conflict(format!(
                    "a mirror of {}/{} holds the name",
                    other.namespace, other.name
                ));
            }
        }
        Owner::Foreign => {
            return Decision::Conflict(
                "an object that is not a mirror of this source holds the name".into(),
            );
        }
    };
    let Some(object) = obs.object() else {
        return Decision::Conflict("the object there could not be read".into());
    };
    if !adopt && shows(object, want, kind, strip) {
        return Decision::UpToDate;
    }
    if !adopt
        && accepted.is_some_and(|a| {
            a.rendering == hash(want) && a.result == fingerprint(object, kind, strip)
        })
    {
        // The server normalised our last write (or a webhook added to it): accepted, no loop.
        return Decision::UpToDate;
    }
    if is_core(kind, "Secret") {
        let t = |v: &Value| v["type"].as_str().unwrap_or("Opaque").to_owned();
        if t(object) != t(want) {
            return Decision::Recreate("the Secret type changed (it is immutable)");
        }
    }
    if object["immutable"].as_bool() == Some(true) {
        return Decision::Recreate("the mirror is immutable and its content changed");
    }
    Decision::Update { adopt }
}

/// The body of an update: the rendering, with the observed object's resourceVersion, the
/// finalizers and ownerReferences other controllers set, and a Service's allocated addresses
/// and ports (never taken away from the mirror).
pub fn update_body(kind: &KindRef, want: &Value, object: &Value, strip: &[String]) -> Value {
    let mut body = want.clone();
    let meta = &object["metadata"];
    // Keys we never copy but someone else put on the mirror stay (see `render::stripped`).
    for field in ["labels", "annotations"] {
        for (k, v) in meta[field].as_object().into_iter().flatten() {
            if super::render::stripped(strip, k) {
                body["metadata"][field][k] = v.clone();
            }
        }
    }
    body["metadata"]["resourceVersion"] = meta["resourceVersion"].clone();
    for field in ["finalizers", "ownerReferences"] {
        if let Some(v) = meta.get(field).filter(|v| !v.is_null()) {
            body["metadata"][field] = v.clone();
        }
    }
    if is_core(kind, "Service") {
        let have = &object["spec"];
        for field in [
            "clusterIP",
            "clusterIPs",
            "healthCheckNodePort",
            "ipFamilies",
            "ipFamilyPolicy",
        ] {
            if let Some(v) = have.get(field).filter(|v| !v.is_null())
                && body["spec"].get(field).is_none()
            {
                body["spec"][field] = v.clone();
            }
        }
        let have_ports: BTreeMap<(i64, String), Value> = have["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| {
                let key = (
                    p["port"].as_i64()?,
                    p["protocol"].as_str().unwrap_or("TCP").to_owned(),
                );
                Some((key, p.get("nodePort")?.clone()))
            })
            .collect();
        if let Some(ports) = body["spec"]["ports"].as_array_mut() {
            for p in ports {
                let key = (
                    p["port"].as_i64().unwrap_or(0),
                    p["protocol"].as_str().unwrap_or("TCP").to_owned(),
                );
                if let Some(np) = have_ports.get(&key)
                    && p.get("nodePort").is_none()
                {
                    p["nodePort"] = np.clone();
                }
            }
        }
    }
    body
}

/// For the garbage collector: the source an observed object is *our* mirror of, if any
/// (labelled managed-by fleetmirror, naming a source, not itself a source).
pub fn mirror_of(keys: &Keys, observed: &Observed) -> Option<(String, String)> {
    let any = SourceRef {
        namespace: String::new(),
        name: String::new(),
        uid: String::new(),
    };
    match owner(keys, observed, &any) {
        Owner::OtherSource(s) => Some((s.namespace, s.name)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn keys() -> Keys {
        Keys::new("fleetmirror.io").unwrap()
    }

    fn kind(k: &str) -> KindRef {
        KindRef {
            group: "".into(),
            version: "v1".into(),
            kind: k.into(),
        }
    }

    fn source(ns: &str, uid: &str, created: &str) -> Source {
        Source {
            reference: SourceRef {
                namespace: ns.into(),
                name: "shared".into(),
                uid: uid.into(),
            },
            created: created.into(),
        }
    }

    fn mirror(managed_by: &str, ns: &str, uid: &str, data: &str) -> Observed {
        Observed::from(json!({
            "metadata": {"name": "shared", "namespace": "t", "uid": "m1", "resourceVersion": "5",
                "labels": {"fleetmirror.io/managed-by": managed_by, "fleetmirror.io/mirror": "true"},
                "annotations": {"fleetmirror.io/source-namespace": ns, "fleetmirror.io/source-name": "shared",
                                "fleetmirror.io/source-uid": uid}},
            "data": {"k": data}
        }))
    }

    fn want(data: &str) -> Value {
        json!({"metadata": {"labels": {"fleetmirror.io/managed-by": "fleetmirror", "fleetmirror.io/mirror": "true"},
                            "annotations": {"fleetmirror.io/source-namespace": "src", "fleetmirror.io/source-name": "shared",
                                            "fleetmirror.io/source-uid": "u1"}},
               "data": {"k": data}})
    }

    #[test]
    fn ownership() {
        let s = source("src", "u1", "1").reference;
        let k = keys();
        assert_eq!(
            owner(&k, &mirror("fleetmirror", "src", "u1", "a"), &s),
            Owner::Ours { same_uid: true }
        );
        assert_eq!(
            owner(&k, &mirror("fleetmirror", "src", "old", "a"), &s),
            Owner::Ours { same_uid: false }
        );
        assert_eq!(
            owner(&k, &mirror("kubemirror", "src", "u1", "a"), &s),
            Owner::Kubemirror
        );
        assert_eq!(
            owner(&k, &mirror("kubemirror", "src", "other-uid", "a"), &s),
            Owner::Foreign,
            "another incarnation's kubemirror copy is foreign"
        );
        assert!(matches!(
            owner(&k, &mirror("fleetmirror", "elsewhere", "u9", "a"), &s),
            Owner::OtherSource(_)
        ));
        assert_eq!(
            owner(&k, &mirror("someone", "src", "u1", "a"), &s),
            Owner::Foreign
        );
        let plain = Observed::from(json!({"metadata": {"name": "shared"}}));
        assert_eq!(owner(&k, &plain, &s), Owner::Foreign);
        let mut as_source = mirror("fleetmirror", "src", "u1", "a");
        as_source.object_mut()["metadata"]["labels"] =
            json!({"fleetmirror.io/managed-by": "fleetmirror", "fleetmirror.io/enabled": "true"});
        as_source.object_mut()["metadata"]["annotations"]["fleetmirror.io/sync"] = "true".into();
        assert_eq!(
            owner(&k, &as_source, &s),
            Owner::Foreign,
            "a source is never a mirror"
        );
    }

    #[test]
    fn decisions() {
        let (k, cm) = (keys(), kind("ConfigMap"));
        let s = source("src", "u1", "1");
        let d = |obs: Option<&Observed>, w: &Value| decide(&k, &cm, &[], &s, w, obs, None, None);
        assert_eq!(d(None, &want("a")), Decision::Create);
        let ours = mirror("fleetmirror", "src", "u1", "a");
        // (the observed mirror carries the rendering's labels and annotations)
        assert_eq!(d(Some(&ours), &want("a")), Decision::UpToDate);
        assert_eq!(
            d(Some(&ours), &want("b")),
            Decision::Update { adopt: false }
        );
        let old_incarnation = mirror("fleetmirror", "src", "u0", "a");
        assert!(
            matches!(
                d(Some(&old_incarnation), &want("a")),
                Decision::Update { .. }
            ),
            "rewritten for the new incarnation"
        );
        assert_eq!(
            d(Some(&mirror("kubemirror", "src", "u1", "a")), &want("a")),
            Decision::Update { adopt: true }
        );
        assert!(matches!(
            d(Some(&mirror("someone", "src", "u1", "a")), &want("a")),
            Decision::Conflict(_)
        ));
        // Two sources: the older owns.
        let older = SourceRef {
            namespace: "first".into(),
            name: "shared".into(),
            uid: "u0".into(),
        };
        assert!(matches!(
            decide(&k, &cm, &[], &s, &want("a"), None, Some(&older), None),
            Decision::Conflict(_)
        ));
        assert!(matches!(
            decide(
                &k,
                &cm,
                &[],
                &s,
                &want("a"),
                Some(&ours),
                Some(&older),
                None
            ),
            Decision::Conflict(_)
        ));
        let younger = mirror("fleetmirror", "later", "u7", "a");
        assert_eq!(
            d(Some(&younger), &want("a")),
            Decision::Update { adopt: false },
            "the older takes the slot over"
        );
        assert!(
            source("a", "u1", "2026-01-01T00:00:00Z").older_than(&source(
                "b",
                "u0",
                "2026-01-02T00:00:00Z"
            ))
        );
        assert!(
            source("a", "u0", "1").older_than(&source("b", "u1", "1")),
            "then by UID"
        );
    }

    #[test]
    fn recreate_and_accepted_normalisation() {
        let (k, secret) = (keys(), kind("Secret"));
        let s = source("src", "u1", "1");
        let mut obs = mirror("fleetmirror", "src", "u1", "a");
        obs.object_mut()["type"] = "kubernetes.io/tls".into();
        let mut w = want("a");
        w["type"] = "Opaque".into();
        assert!(matches!(
            decide(&k, &secret, &[], &s, &w, Some(&obs), None, None),
            Decision::Recreate(_)
        ));
        let mut imm = mirror("fleetmirror", "src", "u1", "a");
        imm.object_mut()["immutable"] = true.into();
        assert!(matches!(
            decide(
                &k,
                &kind("ConfigMap"),
                &[],
                &s,
                &want("b"),
                Some(&imm),
                None,
                None
            ),
            Decision::Recreate(_)
        ));
        // The server returned `2Gi` for our `2048Mi`: accepted, no second write.
        let deploy = KindRef {
            group: "apps".into(),
            version: "v1".into(),
            kind: "Deployment".into(),
        };
        let mut w = want("a");
        w["spec"] = json!({"memory": "2048Mi"});
        let mut got = mirror("fleetmirror", "src", "u1", "a");
        got.object_mut()["spec"] = json!({"memory": "2Gi"});
        assert_eq!(
            decide(&k, &deploy, &[], &s, &w, Some(&got), None, None),
            Decision::Update { adopt: false }
        );
        let acc = Accepted {
            rendering: hash(&w),
            result: fingerprint(got.object().unwrap(), &deploy, &[]),
        };
        assert_eq!(
            decide(&k, &deploy, &[], &s, &w, Some(&got), None, Some(&acc)),
            Decision::UpToDate
        );
        let mut edited = got.clone();
        edited.object_mut()["spec"]["memory"] = "1Gi".into();
        assert!(
            matches!(
                decide(&k, &deploy, &[], &s, &w, Some(&edited), None, Some(&acc)),
                Decision::Update { .. }
            ),
            "a later edit is still drift"
        );
    }

    #[test]
    fn updates_keep_what_others_set() {
        let svc = kind("Service");
        let obs = Observed::from(
            json!({"metadata": {"resourceVersion": "9", "finalizers": ["x"], "ownerReferences": [{"kind": "A"}]},
                           "spec": {"clusterIP": "10.0.0.9", "clusterIPs": ["10.0.0.9"], "ports": [{"port": 80, "nodePort": 30080}]}}),
        );
        let w =
            json!({"metadata": {"labels": {}}, "spec": {"ports": [{"port": 80}, {"port": 81}]}});
        let b = update_body(&svc, &w, obs.object().unwrap(), &[]);
        assert_eq!(b["metadata"]["resourceVersion"], "9");
        assert_eq!(b["metadata"]["finalizers"], json!(["x"]));
        assert_eq!(b["spec"]["clusterIP"], "10.0.0.9");
        assert_eq!(b["spec"]["ports"][0]["nodePort"], 30080);
        assert!(b["spec"]["ports"][1].get("nodePort").is_none());
        assert_eq!(
            mirror_of(&keys(), &mirror("fleetmirror", "src", "u1", "a")),
            Some(("src".into(), "shared".into()))
        );
        assert_eq!(
            mirror_of(&keys(), &mirror("kubemirror", "src", "u1", "a")),
            None
        );
    }
}
