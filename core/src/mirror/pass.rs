//! One pass of the mirror controller over one kind, as a pure function of what the stores
//! hold: which objects are sources, their targets, the rendering for each target, the write each
//! (source, namespace) slot needs, the mirrors to delete, the Events to say — and nothing else.
//! The aggregator runs it after every change and writes only what it returns.
//!
//! Level-based: desired = every source × its resolved targets, rendered; observed = the objects
//! at mirror names (the mirror watch, overlaid by what the writer learnt from its own writes and
//! reads); the plan creates, updates, recreates or deletes per slot. Garbage is part of the plan:
//! a mirror that is ours for no source selecting its namespace is deleted — only when `gc`
//! (every store of the kind listed, its source watch working), never in a terminating namespace,
//! and never while its source's annotations are invalid (bad input never deletes).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::glob::Glob;
use super::keys::Keys;
use super::kinds::{KindRef, REFUSED_SECRET_TYPES};
use super::plan::{Accepted, Decision, Observed, Owner, Source, decide, mirror_of, owner};
use super::render::{self, SourceRef, string_map};
use super::targets::{self, Limits, Namespace};
use super::template::Context;
use super::transform::{self, Outcome};
use crate::status::Event;

/// A mirror's place: (namespace, name).
pub type Slot = (String, String);

/// What shapes every pass (from the flags).
#[derive(Debug, Clone)]
pub struct Settings {
    /// The keys under `--mirror-key-prefix`.
    pub keys: Keys,
    /// Exclusions, inclusions and the target limit.
    pub limits: Limits,
    /// `--mirror-source-namespaces` (empty: every namespace).
    pub source_namespaces: Vec<Glob>,
    /// `--mirror-strip-keys`.
    pub strip: Vec<String>,
}

/// What one pass over a kind reads.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    /// The kind (its watched version).
    pub kind: &'a KindRef,
    /// The objects of the source watch (labelled `<p>/enabled=true`).
    pub sources: &'a [Value],
    /// The objects at mirror names.
    pub observed: &'a BTreeMap<Slot, Observed>,
    /// Every namespace.
    pub namespaces: &'a [Namespace],
    /// Results of earlier writes the server normalised (no write loops).
    pub accepted: &'a BTreeMap<Slot, Accepted>,
    /// Deleting is safe: every store of the kind listed, its source watch working.
    pub gc: bool,
    /// Slots found up to date by an earlier pass, by [`inputs_key`]: the same inputs again are
    /// up to date again without rendering (a pass costs what changed, not what exists).
    pub up_to_date: &'a std::collections::HashSet<u64>,
}

/// What a slot's decision depends on, hashed: the slot, the source (UID and resourceVersion:
/// its content, labels, annotations and transform), the object there (UID and
/// resourceVersion, or none) and the source that owns the slot before this one.
pub fn inputs_key(
    slot: &Slot,
    source: &Value,
    observed: Option<&Observed>,
    older: Option<&SourceRef>,
) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    slot.hash(&mut h);
    for v in [
        &source["metadata"]["uid"],
        &source["metadata"]["resourceVersion"],
    ] {
        v.as_str().hash(&mut h);
    }
    observed
        .map(|o| (o.uid(), o.resource_version()))
        .hash(&mut h);
    older.map(|o| o.uid.as_str()).hash(&mut h);
    h.finish()
}

/// A target's state (Diagnostics `MirrorState`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum State {
    /// The mirror exists and shows the current rendering.
    Mirrored,
    /// Selected, not written yet.
    Pending,
    /// A foreign object or an older source's mirror holds the name.
    Conflict,
    /// Never written, by rule.
    Refused,
    /// The last attempt failed.
    Error,
}

impl State {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Mirrored => "mirrored",
            State::Pending => "pending",
            State::Conflict => "conflict",
            State::Refused => "refused",
            State::Error => "error",
        }
    }
}

/// A write one slot needs.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    /// POST (never overwrites: an object appearing meanwhile makes it fail).
    Create {
        /// The rendering.
        body: Value,
    },
    /// PUT with the resourceVersion of the object judged ours (in `body`).
    Update {
        /// The rendering plus what others set on the observed object.
        body: Value,
        /// kubemirror's mirror, taken over.
        adopt: bool,
    },
    /// Delete (preconditions) then create.
    Recreate {
        /// The UID judged ours.
        uid: String,
        /// Its resourceVersion.
        resource_version: String,
        /// The rendering to create.
        body: Value,
        /// Why it cannot be updated.
        why: &'static str,
    },
}

/// One target of a source.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// The namespace.
    pub namespace: String,
    /// Its state before the write (a slot with a write is `Pending`).
    pub state: State,
    /// Why, in words (empty when mirrored).
    pub reason: String,
    /// The write it needs.
    pub write: Option<Write>,
    /// Hash of the rendering (empty when nothing was rendered), for [`Accepted`].
    pub rendering: String,
}

/// The plan for one source.
#[derive(Debug, Clone, PartialEq)]
pub struct SourcePlan {
    /// Namespace, name, UID.
    pub reference: SourceRef,
    /// Its targets, sorted by namespace (selected and refused).
    pub targets: Vec<Target>,
    /// Its Events for this pass (the caller says each once, while it holds).
    pub events: Vec<Event>,
    /// Source-level problems, in words.
    pub message: String,
}

/// A mirror to delete (garbage).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delete {
    /// Where.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// The UID judged ours (precondition).
    pub uid: String,
    /// Its resourceVersion (precondition).
    pub resource_version: String,
}

/// An Event on an object that is not a source (a mirror labelled as one; a labelled object
/// outside `--mirror-source-namespaces`).
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectEvent {
    /// The object.
    pub object: SourceRef,
    /// The Event.
    pub event: Event,
}

/// A source being deleted that still carries kubemirror's finalizer, all its mirrors gone:
/// the finalizer is removed (a JSON patch guarded by a test of `finalizers`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    /// The source.
    pub object: SourceRef,
    /// Its finalizers as observed (the test).
    pub finalizers: Vec<String>,
    /// The index of the legacy finalizer in them.
    pub index: usize,
}

/// The plan for one kind.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KindPlan {
    /// Every source, with its targets.
    pub sources: Vec<SourcePlan>,
    /// Garbage.
    pub deletes: Vec<Delete>,
    /// Events on objects that are not sources.
    pub object_events: Vec<ObjectEvent>,
    /// Legacy finalizers to remove.
    pub releases: Vec<Release>,
    /// The [`inputs_key`] of every slot found up to date (the next pass's `up_to_date`).
    pub up_to_date: std::collections::HashSet<u64>,
}

/// What a labelled object is.
enum Verdict {
    /// A source.
    Source,
    /// Not a source, silently (sync not "true", being deleted).
    Not,
    /// Not a source, with a `Refused` Event on it.
    Refused(String),
}

fn reference(o: &Value) -> SourceRef {
    let m = &o["metadata"];
    let s = |k: &str| m[k].as_str().unwrap_or_default().to_owned();
    SourceRef {
        namespace: s("namespace"),
        name: s("name"),
        uid: s("uid"),
    }
}

fn verdict(settings: &Settings, o: &Value) -> Verdict {
    let keys = &settings.keys;
    let labels = string_map(o, "labels");
    let ann = string_map(o, "annotations");
    if labels.get(&keys.enabled()).map(String::as_str) != Some("true")
        || ann.get(&keys.sync()).map(String::as_str) != Some("true")
        || !o["metadata"]["deletionTimestamp"].is_null()
    {
        return Verdict::Not;
    }
    if labels.get(&keys.mirror()).map(String::as_str) == Some("true") {
        return Verdict::Refused(format!(
            "labelled {}=true: a mirror is never a source",
            keys.mirror()
        ));
    }
    let ns = o["metadata"]["namespace"].as_str().unwrap_or_default();
    if !settings.source_namespaces.is_empty()
        && !settings.source_namespaces.iter().any(|g| g.matches(ns))
    {
        return Verdict::Refused(format!(
            "namespace {ns} is not one of --mirror-source-namespaces: not mirrored"
        ));
    }
    Verdict::Source
}

/// Names up to ten items, and how many more there are.
pub fn some_of(items: &[String]) -> String {
    let shown: Vec<&str> = items.iter().take(10).map(String::as_str).collect();
    if items.len() > shown.len() {
        format!(
            "{} (and {} more)",
            shown.join("; "),
            items.len() - shown.len()
        )
    } else {
        shown.join("; ")
    }
}

fn warning(reason: &'static str, note: String) -> Event {
    Event {
        warning: true,
        reason,
        note,
    }
}

/// Plans one pass over a kind.
pub fn plan(settings: &Settings, input: &Input<'_>) -> KindPlan {
    let keys = &settings.keys;
    let kind = input.kind;
    let mut out = KindPlan::default();

    // Which labelled objects are sources, and their targets.
    let mut sources: Vec<(&Value, Source, targets::Resolution)> = Vec::new();
    for o in input.sources {
        match verdict(settings, o) {
            Verdict::Source => {}
            Verdict::Not => continue,
            Verdict::Refused(why) => {
                out.object_events.push(ObjectEvent {
                    object: reference(o),
                    event: warning("Refused", why),
                });
                continue;
            }
        }
        let r = reference(o);
        let resolution = targets::resolve(
            keys,
            &r.namespace,
            &string_map(o, "annotations"),
            input.namespaces,
            &settings.limits,
        );
        let created = o["metadata"]["creationTimestamp"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        sources.push((
            o,
            Source {
                reference: r,
                created,
            },
            resolution,
        ));
    }
    sources.sort_by(|a, b| {
        (&a.1.reference.namespace, &a.1.reference.name)
            .cmp(&(&b.1.reference.namespace, &b.1.reference.name))
    });

    // Who selects each slot (the oldest owns it): every source that may write there — not one
    // of a refused type — and a source whose annotations are invalid keeps the slots of its
    // existing mirrors (bad input never hands a mirror to another source).
    fn refused<'v>(kind: &KindRef, o: &'v Value) -> Option<&'v str> {
        (kind.group.is_empty() && kind.kind == "Secret")
            .then(|| o["type"].as_str().unwrap_or("Opaque"))
            .filter(|t| REFUSED_SECRET_TYPES.contains(t))
    }
    let mut selecting: BTreeMap<Slot, Vec<&Source>> = BTreeMap::new();
    for (o, s, r) in &sources {
        if refused(kind, o).is_some() {
            continue;
        }
        let mut slots: BTreeSet<Slot> = r
            .targets
            .iter()
            .map(|(ns, _)| (ns.clone(), s.reference.name.clone()))
            .collect();
        if !r.may_delete {
            let me = (s.reference.namespace.clone(), s.reference.name.clone());
            slots.extend(
                input
                    .observed
                    .iter()
                    .filter(|(_, obs)| mirror_of(keys, obs).as_ref() == Some(&me))
                    .map(|(slot, _)| slot.clone()),
            );
        }
        for slot in slots {
            selecting.entry(slot).or_default().push(s);
        }
    }
    let older_than = |slot: &Slot, s: &Source| -> Option<SourceRef> {
        selecting
            .get(slot)?
            .iter()
            .filter(|o| o.older_than(s))
            .min_by(|a, b| (&a.created, &a.reference.uid).cmp(&(&b.created, &b.reference.uid)))
            .map(|o| o.reference.clone())
    };

    // Slots whose object a selecting source takes over in this pass.
    let mut taken: BTreeSet<Slot> = BTreeSet::new();
    let mut kept_sources: BTreeSet<(String, String)> = BTreeSet::new();
    for (o, s, r) in &sources {
        let reference = &s.reference;
        let mut events = Vec::new();
        let mut problems = Vec::new();
        if !r.invalid.is_empty() {
            events.push(warning("InvalidTarget", r.invalid.join("; ")));
            problems.push(r.invalid.join("; "));
        }
        if !r.may_delete {
            kept_sources.insert((reference.namespace.clone(), reference.name.clone()));
        }
        if let Some((kept, all, first)) = &r.too_many {
            let note = format!(
                "{all} namespaces selected, the first {kept} by name kept (the limit); the first dropped is {first}"
            );
            events.push(warning("TooManyTargets", note.clone()));
            problems.push(note);
        }
        let refused_type = refused(kind, o);
        if let Some(t) = refused_type {
            let note = format!("Secrets of type {t} are never mirrored");
            events.push(warning("Refused", note.clone()));
            problems.push(note);
        }

        let labels = string_map(o, "labels");
        let annotations = string_map(o, "annotations");
        let transform = annotations.get(&keys.transform()).cloned();
        let strict = matches!(
            annotations
                .get(&keys.transform_strict())
                .map(String::as_str),
            Some("true" | "1")
        );
        let secret = kind.group.is_empty() && kind.kind == "Secret";
        let source_hash = render::source_hash(o, keys, &settings.strip);
        let mut targets: Vec<Target> = Vec::new();
        let mut transform_errors: Vec<String> = Vec::new();
        let mut conflicts: Vec<String> = Vec::new();
        for (ns, exists) in &r.targets {
            let slot = (ns.clone(), reference.name.clone());
            let observed = input.observed.get(&slot);
            let mut t = Target {
                namespace: ns.clone(),
                state: State::Pending,
                reason: String::new(),
                write: None,
                rendering: String::new(),
            };
            if let Some(why) = &refused_type {
                t.state = State::Refused;
                t.reason = format!("Secrets of type {why} are never mirrored");
                targets.push(t);
                continue;
            }
            if !exists {
                t.reason = "the namespace does not exist (yet)".into();
                targets.push(t);
                continue;
            }
            if observed.is_some_and(|o| o.deleting()) {
                // Going away (a finalizer holds it): nothing is written to it until it is gone.
                t.reason = "the object there is being deleted; written once it is gone".into();
                targets.push(t);
                continue;
            }
            let older = older_than(&slot, s);
            let key = inputs_key(&slot, o, observed, older.as_ref());
            if input.up_to_date.contains(&key) {
                t.state = State::Mirrored;
                out.up_to_date.insert(key);
                targets.push(t);
                continue;
            }
            // A rendering with transform errors is done again every pass, so its Event holds.
            let clean;
            let base = render::base(o, kind, ns, keys, &settings.strip);
            let ctx = Context {
                target_namespace: ns.clone(),
                source_namespace: reference.namespace.clone(),
                source_name: reference.name.clone(),
                target_name: reference.name.clone(),
                labels: labels.clone(),
                annotations: annotations.clone(),
            };
            let rendered = match transform::apply(base, transform.as_deref(), strict, secret, &ctx)
            {
                Outcome::Write { object, errors } => {
                    clean = errors.is_empty();
                    transform_errors.extend(errors.iter().map(|e| format!("{ns}: {e}")));
                    object
                }
                Outcome::Refuse(errors) => {
                    let why = errors
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("; ");
                    transform_errors.push(format!("{ns}: {why}"));
                    t.state = State::Error;
                    t.reason = format!(
                        "the transform failed and this {} fails closed: nothing written ({why})",
                        if strict {
                            "source (transform-strict)"
                        } else {
                            "Secret"
                        }
                    );
                    targets.push(t);
                    continue;
                }
            };
            let want = render::finish(rendered, keys, reference, &source_hash);
            t.rendering = render::hash(&want);
            match decide(
                keys,
                kind,
                &settings.strip,
                s,
                &want,
                observed,
                older.as_ref(),
                input.accepted.get(&slot),
            ) {
                Decision::UpToDate => {
                    t.state = State::Mirrored;
                    if clean {
                        out.up_to_date.insert(key);
                    }
                }
                Decision::Create if !r.may_create => {
                    t.state = State::Error;
                    t.reason =
                        "no new mirror while the source's exclude-namespaces cannot be read".into();
                }
                Decision::Create => {
                    t.reason = "being created".into();
                    t.write = Some(Write::Create { body: want });
                }
                Decision::Update { adopt } => {
                    // `decide` asks for an update only of an object it read (as JSON).
                    let obs = observed
                        .and_then(Observed::object)
                        .expect("an update has an object");
                    t.reason = if adopt {
                        "kubemirror's mirror being adopted".into()
                    } else {
                        "being updated".into()
                    };
                    taken.insert(slot.clone());
                    t.write = Some(Write::Update {
                        body: super::plan::update_body(kind, &want, obs, &settings.strip),
                        adopt,
                    });
                }
                Decision::Recreate(why) => {
                    let obs = observed.expect("a recreate has an object");
                    t.reason = format!("being recreated: {why}");
                    t.write = Some(Write::Recreate {
                        uid: obs.uid().to_owned(),
                        resource_version: obs.resource_version().to_owned(),
                        body: want,
                        why,
                    });
                }
                Decision::Conflict(why) => {
                    t.state = State::Conflict;
                    conflicts.push(format!("{ns}: {why}"));
                    t.reason = why;
                }
            }
            targets.push(t);
        }
        for refusal in &r.refused {
            targets.push(Target {
                namespace: refusal.namespace.clone(),
                state: State::Refused,
                reason: refusal.reason.clone(),
                write: None,
                rendering: String::new(),
            });
        }
        targets.sort_by(|a, b| a.namespace.cmp(&b.namespace));
        if !transform_errors.is_empty() {
            events.push(warning(
                "TransformFailed",
                format!(
                    "{} ({} error(s))",
                    some_of(&transform_errors),
                    transform_errors.len()
                ),
            ));
        }
        if !conflicts.is_empty() {
            events.push(warning(
                "Conflict",
                format!(
                    "the name is held by an object that is not this source's mirror in {} namespace(s), left untouched: {}",
                    conflicts.len(),
                    some_of(&conflicts)
                ),
            ));
        }
        out.sources.push(SourcePlan {
            reference: reference.clone(),
            targets,
            events,
            message: problems.join("; "),
        });
    }

    // Garbage: our mirrors no source selects (and kubemirror's of a source being deleted).
    let terminating: BTreeSet<&str> = input
        .namespaces
        .iter()
        .filter(|n| n.terminating)
        .map(|n| n.name.as_str())
        .collect();
    let deleting: Vec<SourceRef> = input
        .sources
        .iter()
        .filter(|o| !o["metadata"]["deletionTimestamp"].is_null())
        .map(reference)
        .collect();
    let mut remaining: BTreeSet<SourceRef> = BTreeSet::new();
    for (slot, obs) in input.observed {
        let of_deleting = deleting
            .iter()
            .find(|d| owner(keys, obs, d) == Owner::Kubemirror);
        let ours = mirror_of(keys, obs);
        let source = match (&ours, of_deleting) {
            (Some(s), _) => s.clone(),
            (None, Some(d)) => (d.namespace.clone(), d.name.clone()),
            (None, None) => continue,
        };
        for d in deleting
            .iter()
            .filter(|d| (d.namespace.clone(), d.name.clone()) == source)
        {
            remaining.insert(d.clone());
        }
        // Kept while its own source selects the slot (or keeps it: invalid input), or another
        // source takes it over in this pass; never deleted when the stores cannot be trusted,
        // in a terminating namespace, or while it is being deleted already.
        let selected_by_its_source = selecting.get(slot).is_some_and(|ss| {
            ss.iter()
                .any(|s| (&s.reference.namespace, &s.reference.name) == (&source.0, &source.1))
        });
        if selected_by_its_source
            || taken.contains(slot)
            || kept_sources.contains(&source)
            || !input.gc
            || terminating.contains(slot.0.as_str())
            || obs.deleting()
        {
            continue;
        }
        out.deletes.push(Delete {
            namespace: slot.0.clone(),
            name: slot.1.clone(),
            uid: obs.uid().to_owned(),
            resource_version: obs.resource_version().to_owned(),
        });
    }

    // kubemirror's finalizer on a source being deleted: released once its mirrors are gone.
    if input.gc {
        let legacy = keys.legacy_finalizer();
        for o in input
            .sources
            .iter()
            .filter(|o| !o["metadata"]["deletionTimestamp"].is_null())
        {
            let r = reference(o);
            let finalizers: Vec<String> = o["metadata"]["finalizers"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|f| f.as_str().map(str::to_owned))
                .collect();
            let Some(index) = finalizers.iter().position(|f| *f == legacy) else {
                continue;
            };
            if remaining.contains(&r) {
                continue;
            }
            out.releases.push(Release {
                object: r,
                finalizers,
                index,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn settings() -> Settings {
        Settings {
            keys: Keys::new("fleetmirror.io").unwrap(),
            limits: Limits {
                excluded: targets::globs("x", "kube-system").unwrap(),
                included: vec![],
                max_targets: 100,
            },
            source_namespaces: vec![],
            strip: render::strip_keys(render::DEFAULT_STRIP_KEYS),
        }
    }

    fn cm() -> KindRef {
        KindRef {
            group: String::new(),
            version: "v1".into(),
            kind: "ConfigMap".into(),
        }
    }

    fn ns(name: &str) -> Namespace {
        Namespace {
            name: name.into(),
            labels: BTreeMap::new(),
            terminating: false,
        }
    }

    fn source(ns: &str, uid: &str, created: &str, targets: &str) -> Value {
        json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {
                "name": "shared", "namespace": ns, "uid": uid, "resourceVersion": "1",
                "creationTimestamp": created,
                "labels": {"fleetmirror.io/enabled": "true"},
                "annotations": {"fleetmirror.io/sync": "true", "fleetmirror.io/target-namespaces": targets},
            },
            "data": {"k": "v"},
        })
    }

    fn run(sources: &[Value], observed: &BTreeMap<Slot, Observed>, gc: bool) -> KindPlan {
        let namespaces: Vec<Namespace> = ["a", "b", "c", "src", "src2"].map(ns).to_vec();
        plan(
            &settings(),
            &Input {
                kind: &cm(),
                sources,
                observed,
                namespaces: &namespaces,
                accepted: &BTreeMap::new(),
                gc,
                up_to_date: &Default::default(),
            },
        )
    }

    fn created(p: &KindPlan) -> BTreeMap<String, Value> {
        p.sources
            .iter()
            .flat_map(|s| &s.targets)
            .filter_map(|t| match &t.write {
                Some(Write::Create { body }) => Some((t.namespace.clone(), body.clone())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_new_source_creates_its_mirrors_and_a_second_pass_writes_nothing() {
        let s = source("src", "u1", "2026-01-01T00:00:00Z", "a,b,missing");
        let p = run(std::slice::from_ref(&s), &BTreeMap::new(), true);
        let made = created(&p);
        assert_eq!(made.keys().collect::<Vec<_>>(), ["a", "b"]);
        let t = &p.sources[0].targets;
        assert_eq!(t[2].namespace, "missing");
        assert_eq!(t[2].state, State::Pending);
        // The created objects observed: nothing more to do.
        let observed: BTreeMap<Slot, Observed> = made
            .into_iter()
            .map(|(ns, mut body)| {
                body["metadata"]["uid"] = json!(format!("m-{ns}"));
                body["metadata"]["resourceVersion"] = json!("5");
                ((ns, "shared".into()), Observed::from(body))
            })
            .collect();
        let p = run(&[s], &observed, true);
        assert!(created(&p).is_empty());
        assert!(p.deletes.is_empty());
        assert!(
            p.sources[0]
                .targets
                .iter()
                .filter(|t| t.namespace != "missing")
                .all(|t| t.state == State::Mirrored && t.write.is_none())
        );
    }

    #[test]
    fn garbage_is_deleted_only_when_safe_and_never_for_bad_input() {
        let s = source("src", "u1", "2026-01-01T00:00:00Z", "a");
        let first = created(&run(std::slice::from_ref(&s), &BTreeMap::new(), true));
        let mut observed: BTreeMap<Slot, Observed> = BTreeMap::new();
        for ns in ["a", "b"] {
            let mut body = first["a"].clone();
            body["metadata"]["namespace"] = json!(ns);
            body["metadata"]["uid"] = json!(format!("m-{ns}"));
            body["metadata"]["resourceVersion"] = json!("7");
            observed.insert((ns.into(), "shared".into()), Observed::from(body));
        }
        // b is no longer selected: deleted, with preconditions.
        let p = run(std::slice::from_ref(&s), &observed, true);
        assert_eq!(
            p.deletes,
            [Delete {
                namespace: "b".into(),
                name: "shared".into(),
                uid: "m-b".into(),
                resource_version: "7".into()
            }]
        );
        // Not while the stores are not trustworthy.
        assert!(
            run(std::slice::from_ref(&s), &observed, false)
                .deletes
                .is_empty()
        );
        // Not while the source's annotations are invalid.
        let bad = source("src", "u1", "2026-01-01T00:00:00Z", "a,app-[");
        let p = run(&[bad], &observed, true);
        assert!(p.deletes.is_empty());
        assert_eq!(p.sources[0].events[0].reason, "InvalidTarget");
        // The source gone (sync removed): every mirror of it goes.
        let mut off = s.clone();
        off["metadata"]["annotations"]["fleetmirror.io/sync"] = json!("false");
        assert_eq!(run(&[off], &observed, true).deletes.len(), 2);
    }

    #[test]
    fn the_older_of_two_sources_owns_a_slot() {
        let old = source("src", "u-old", "2026-01-01T00:00:00Z", "a");
        let young = source("src2", "u-young", "2026-02-01T00:00:00Z", "a");
        let p = run(&[young.clone(), old.clone()], &BTreeMap::new(), true);
        let by_ns: BTreeMap<&str, &SourcePlan> = p
            .sources
            .iter()
            .map(|s| (s.reference.namespace.as_str(), s))
            .collect();
        assert!(matches!(
            by_ns["src"].targets[0].write,
            Some(Write::Create { .. })
        ));
        assert_eq!(by_ns["src2"].targets[0].state, State::Conflict);
        assert_eq!(by_ns["src2"].events[0].reason, "Conflict");
    }

    #[test]
    fn refused_objects_and_mirrors_labelled_as_sources_get_events_not_mirrors() {
        let mut token = source("src", "u1", "2026-01-01T00:00:00Z", "a");
        token["kind"] = json!("Secret");
        token["type"] = json!("kubernetes.io/service-account-token");
        let secret = KindRef {
            kind: "Secret".into(),
            ..cm()
        };
        let namespaces = [ns("a"), ns("src")];
        let p = plan(
            &settings(),
            &Input {
                kind: &secret,
                sources: &[token],
                observed: &BTreeMap::new(),
                namespaces: &namespaces,
                accepted: &BTreeMap::new(),
                gc: true,
                up_to_date: &Default::default(),
            },
        );
        assert_eq!(p.sources[0].targets[0].state, State::Refused);
        assert!(p.sources[0].targets[0].write.is_none());
        assert_eq!(p.sources[0].events[0].reason, "Refused");

        let mut mirror = source("src", "u2", "2026-01-01T00:00:00Z", "a");
        mirror["metadata"]["labels"]["fleetmirror.io/mirror"] = json!("true");
        let p = run(&[mirror], &BTreeMap::new(), true);
        assert!(p.sources.is_empty());
        assert_eq!(p.object_events[0].event.reason, "Refused");
    }

    #[test]
    fn a_deleting_source_with_kubemirrors_finalizer_is_released_once_its_mirrors_are_gone() {
        let mut s = source("src", "u1", "2026-01-01T00:00:00Z", "a");
        s["metadata"]["deletionTimestamp"] = json!("2026-03-01T00:00:00Z");
        s["metadata"]["finalizers"] = json!(["x/y", "fleetmirror.io/finalizer"]);
        let mirror = json!({
            "metadata": {"name": "shared", "namespace": "a", "uid": "m", "resourceVersion": "3",
                "labels": {"fleetmirror.io/managed-by": "kubemirror", "fleetmirror.io/mirror": "true"},
                "annotations": {"fleetmirror.io/source-namespace": "src", "fleetmirror.io/source-name": "shared", "fleetmirror.io/source-uid": "u1"}},
        });
        let observed = BTreeMap::from([(("a".into(), "shared".into()), Observed::from(mirror))]);
        let p = run(std::slice::from_ref(&s), &observed, true);
        assert_eq!(p.deletes.len(), 1, "kubemirror's mirror of it goes");
        assert!(p.releases.is_empty(), "not while a mirror remains");
        let p = run(&[s], &BTreeMap::new(), true);
        assert_eq!(p.releases.len(), 1);
        assert_eq!(p.releases[0].index, 1);
    }

    fn mirror_in(ns: &str, of: &Value, uid: &str) -> (Slot, Observed) {
        let mut body = created(&run(std::slice::from_ref(of), &BTreeMap::new(), true))
            .into_values()
            .next()
            .expect("a rendering");
        body["metadata"]["namespace"] = json!(ns);
        body["metadata"]["uid"] = json!(uid);
        body["metadata"]["resourceVersion"] = json!("9");
        ((ns.into(), "shared".into()), Observed::from(body))
    }

    #[test]
    fn a_mirror_stays_only_while_its_own_source_selects_it_or_another_takes_it_over() {
        // X (src) is gone; Y (src2) selects a but cannot write (its transform fails closed):
        // X's mirror goes, it is not kept for a source that will never take it.
        let x = source("src", "ux", "2026-01-01T00:00:00Z", "a");
        let (slot, obs) = mirror_in("a", &x, "m");
        let observed = BTreeMap::from([(slot, obs)]);
        let mut y = source("src2", "uy", "2026-02-01T00:00:00Z", "a");
        y["kind"] = json!("Secret");
        y["metadata"]["annotations"]["fleetmirror.io/transform"] = json!("rules: [[[");
        let secret = KindRef {
            kind: "Secret".into(),
            ..cm()
        };
        let namespaces = [ns("a"), ns("src"), ns("src2")];
        let mut obs_secret = observed.clone();
        for o in obs_secret.values_mut() {
            o.object_mut()["kind"] = json!("Secret");
        }
        let p = plan(
            &settings(),
            &Input {
                kind: &secret,
                sources: &[y],
                observed: &obs_secret,
                namespaces: &namespaces,
                accepted: &BTreeMap::new(),
                gc: true,
                up_to_date: &Default::default(),
            },
        );
        assert_eq!(p.sources[0].targets[0].state, State::Error);
        assert_eq!(p.deletes.len(), 1, "{p:?}");
        // A valid Y takes it over in place instead.
        let y = source("src2", "uy", "2026-02-01T00:00:00Z", "a");
        let p = run(&[y], &observed, true);
        assert!(matches!(
            p.sources[0].targets[0].write,
            Some(Write::Update { .. })
        ));
        assert!(p.deletes.is_empty());
        // X still there but with an invalid target list that leaves a out: its mirror is kept,
        // and the younger Y gets a Conflict rather than the mirror.
        let x_bad = source("src", "ux", "2026-01-01T00:00:00Z", "b,app-[");
        let y = source("src2", "uy", "2026-02-01T00:00:00Z", "a");
        let p = run(&[x_bad, y], &observed, true);
        assert!(p.deletes.is_empty());
        let y_plan = p
            .sources
            .iter()
            .find(|s| s.reference.namespace == "src2")
            .unwrap();
        assert_eq!(y_plan.targets[0].state, State::Conflict, "{y_plan:?}");
    }

    #[test]
    fn a_mirror_being_deleted_is_neither_written_nor_deleted() {
        let x = source("src", "ux", "2026-01-01T00:00:00Z", "a");
        let (slot, mut obs) = mirror_in("a", &x, "m");
        obs.object_mut()["metadata"]["deletionTimestamp"] = json!("2026-03-01T00:00:00Z");
        obs.object_mut()["data"] = json!({"k": "old"});
        let observed = BTreeMap::from([(slot, obs)]);
        let p = run(std::slice::from_ref(&x), &observed, true);
        assert_eq!(p.sources[0].targets[0].state, State::Pending);
        assert!(p.sources[0].targets[0].write.is_none());
        let mut off = x.clone();
        off["metadata"]["annotations"]["fleetmirror.io/sync"] = json!("false");
        assert!(run(&[off], &observed, true).deletes.is_empty());
    }

    #[test]
    fn a_refused_older_source_does_not_block_a_younger_one() {
        let secret = KindRef {
            kind: "Secret".into(),
            ..cm()
        };
        let mut old = source("src", "u-old", "2026-01-01T00:00:00Z", "a");
        old["type"] = json!("kubernetes.io/service-account-token");
        let young = source("src2", "u-young", "2026-02-01T00:00:00Z", "a");
        let namespaces = [ns("a"), ns("src"), ns("src2")];
        let p = plan(
            &settings(),
            &Input {
                kind: &secret,
                sources: &[old, young],
                observed: &BTreeMap::new(),
                namespaces: &namespaces,
                accepted: &BTreeMap::new(),
                gc: true,
                up_to_date: &Default::default(),
            },
        );
        let y = p
            .sources
            .iter()
            .find(|s| s.reference.namespace == "src2")
            .unwrap();
        assert!(
            matches!(y.targets[0].write, Some(Write::Create { .. })),
            "{y:?}"
        );
    }

    #[test]
    fn keys_others_put_on_a_mirror_that_we_never_copy_are_left_alone() {
        // The Deployment controller's revision annotation: not compared, not removed.
        let x = source("src", "ux", "2026-01-01T00:00:00Z", "a");
        let (slot, mut obs) = mirror_in("a", &x, "m");
        obs.object_mut()["metadata"]["annotations"]["deployment.kubernetes.io/revision"] =
            json!("3");
        let observed = BTreeMap::from([(slot.clone(), obs.clone())]);
        let p = run(std::slice::from_ref(&x), &observed, true);
        assert_eq!(
            p.sources[0].targets[0].state,
            State::Mirrored,
            "no write loop"
        );
        // An update for another reason keeps it.
        let mut changed = x.clone();
        changed["data"] = json!({"k": "v2"});
        let p = run(&[changed], &observed, true);
        let Some(Write::Update { body, .. }) = &p.sources[0].targets[0].write else {
            panic!("{p:?}")
        };
        assert_eq!(
            body["metadata"]["annotations"]["deployment.kubernetes.io/revision"],
            "3"
        );
    }

    #[test]
    fn an_unchanged_slot_is_up_to_date_without_rendering_and_any_change_renders_it_again() {
        let x = source("src", "ux", "2026-01-01T00:00:00Z", "a");
        let (slot, obs) = mirror_in("a", &x, "m");
        let observed = BTreeMap::from([(slot, obs)]);
        let namespaces: Vec<Namespace> = ["a", "src"].map(ns).to_vec();
        let go = |sources: &[Value],
                  observed: &BTreeMap<Slot, Observed>,
                  cache: &std::collections::HashSet<u64>| {
            plan(
                &settings(),
                &Input {
                    kind: &cm(),
                    sources,
                    observed,
                    namespaces: &namespaces,
                    accepted: &BTreeMap::new(),
                    gc: true,
                    up_to_date: cache,
                },
            )
        };
        let first = go(std::slice::from_ref(&x), &observed, &Default::default());
        assert_eq!(first.sources[0].targets[0].state, State::Mirrored);
        assert_eq!(first.up_to_date.len(), 1);
        let again = go(std::slice::from_ref(&x), &observed, &first.up_to_date);
        assert_eq!(again.sources[0].targets[0].state, State::Mirrored);
        assert_eq!(again.up_to_date, first.up_to_date);
        // The source changed (a new resourceVersion): rendered and judged again.
        let mut changed = x.clone();
        changed["metadata"]["resourceVersion"] = json!("2");
        changed["data"] = json!({"k": "v2"});
        let p = go(&[changed], &observed, &first.up_to_date);
        assert!(matches!(
            p.sources[0].targets[0].write,
            Some(Write::Update { .. })
        ));
        // The mirror changed (edited by hand): judged again.
        let mut edited = observed.clone();
        for o in edited.values_mut() {
            o.object_mut()["metadata"]["resourceVersion"] = json!("10");
            o.object_mut()["data"] = json!({"k": "hand"});
        }
        let p = go(std::slice::from_ref(&x), &edited, &first.up_to_date);
        assert!(matches!(
            p.sources[0].targets[0].write,
            Some(Write::Update { .. })
        ));
    }

    use super::super::plan::ObjectAccess;

    /// An object read through [`ObjectAccess`] (as the aggregator's store objects are),
    /// counting conversions to JSON.
    #[derive(Debug)]
    struct Counted(Value, std::sync::atomic::AtomicUsize);

    impl ObjectAccess for Counted {
        fn uid(&self) -> &str {
            self.0.uid()
        }
        fn resource_version(&self) -> &str {
            self.0.resource_version()
        }
        fn deleting(&self) -> bool {
            self.0.deleting()
        }
        fn label(&self, key: &str) -> Option<&str> {
            self.0.label(key)
        }
        fn annotation(&self, key: &str) -> Option<&str> {
            self.0.annotation(key)
        }
        fn to_json(&self) -> Option<Value> {
            self.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.0.to_json()
        }
    }

    #[test]
    fn objects_read_through_access_decide_alike_and_are_converted_only_to_render_against() {
        use std::sync::Arc;
        use std::sync::atomic::Ordering;
        let x = source("src", "ux", "2026-01-01T00:00:00Z", "a,b");
        let (slot_a, in_a) = mirror_in("a", &x, "m1");
        let (slot_b, in_b) = mirror_in("b", &x, "m2");
        let mut foreign = in_b.object().unwrap().clone();
        foreign["metadata"]["labels"] = json!({"team": "x"});
        foreign["metadata"]["annotations"] = json!({});
        let counted: Vec<Arc<Counted>> = [in_a.object().unwrap().clone(), foreign]
            .into_iter()
            .map(|v| Arc::new(Counted(v, Default::default())))
            .collect();
        let lazy: BTreeMap<Slot, Observed> = [slot_a.clone(), slot_b.clone()]
            .into_iter()
            .zip(&counted)
            .map(|(s, c)| (s, Observed::lazy(c.clone())))
            .collect();
        let json: BTreeMap<Slot, Observed> = lazy
            .keys()
            .zip(&counted)
            .map(|(s, c)| (s.clone(), Observed::from(c.0.clone())))
            .collect();
        let by_json = run(std::slice::from_ref(&x), &json, true);
        let by_access = run(std::slice::from_ref(&x), &lazy, true);
        assert_eq!(by_json, by_access);
        assert_eq!(by_access.sources[0].targets[0].state, State::Mirrored);
        assert_eq!(by_access.sources[0].targets[1].state, State::Conflict);
        // The mirror in `a` is rendered against once; the foreign object in `b` is judged by
        // its metadata alone.
        assert_eq!(counted[0].1.load(Ordering::Relaxed), 1);
        assert_eq!(counted[1].1.load(Ordering::Relaxed), 0);
        // Up to date by its inputs: nothing converted at all.
        let lazy_again: BTreeMap<Slot, Observed> = [slot_a, slot_b]
            .into_iter()
            .zip(&counted)
            .map(|(s, c)| (s, Observed::lazy(c.clone())))
            .collect();
        let again = plan(
            &settings(),
            &Input {
                kind: &cm(),
                sources: std::slice::from_ref(&x),
                observed: &lazy_again,
                namespaces: &["a", "b", "src"].map(ns),
                accepted: &BTreeMap::new(),
                gc: true,
                up_to_date: &by_access.up_to_date,
            },
        );
        assert_eq!(again.sources[0].targets[0].state, State::Mirrored);
        assert_eq!(counted[0].1.load(Ordering::Relaxed), 1);
        assert_eq!(counted[1].1.load(Ordering::Relaxed), 0);
    }
}
