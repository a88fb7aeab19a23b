//! The routing pass as a pure function (routing.md "Which Services get what", "Writing, and
//! never fighting", "Lifecycle", "Placeholders"): configs, namespaces, Services and observed
//! VirtualServices in; per domain the desired VirtualServices and placeholders, the writes and
//! deletes that make the cluster so, conflicts and the view Diagnostics shows out.
//!
//! Ownership is decided here, once: an object is ours when it carries
//! `fleetmirror.io/managed-by: fleetmirror` (placeholders also the placeholder annotation and
//! type `ExternalName`); the operator's VirtualService at exactly our name is adoptable; every
//! other object is foreign and is never written or deleted. An object of ours that no domain
//! wants is deleted only when the config it names is gone, routes elsewhere or lost its
//! namespace to another config; never while that config is invalid without a good version
//! (frozen), never for a config outside this instance's scope, never when the caller says the
//! inputs may be incomplete (`gc: false`).

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use serde_json::{Map, Value, json};

use super::config::{Config, baggage_regex};
use super::{
    CONFIG_ANNOTATION, MANAGED_BY, MANAGED_BY_VALUE, OPERATOR_MANAGED_BY,
    OPERATOR_PLACEHOLDER_ANNOTATION, OPERATOR_PLACEHOLDER_LABEL, PLACEHOLDER_ANNOTATION,
    ROUTING_KEY, SERVICE_LABEL, SYSTEM_NAMESPACES, host, virtual_service_name,
};
use crate::status::Event;

/// `(namespace, name)`.
pub type Key = (String, String);

/// Settings of the pass.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `--cluster-domain`.
    pub domain: String,
    /// Namespaces whose ConfigMaps this instance reads (`None`: all). Objects made for a config
    /// elsewhere are not this instance's to delete.
    pub config_namespaces: Option<BTreeSet<String>>,
}

impl Settings {
    fn in_scope(&self, namespace: &str) -> bool {
        self.config_namespaces
            .as_ref()
            .is_none_or(|s| s.contains(namespace))
    }
}

/// A labelled ConfigMap.
#[derive(Debug, Clone)]
pub struct ConfigIn {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its UID.
    pub uid: String,
    /// `creationTimestamp` (RFC 3339; compared as text, which orders it).
    pub created: String,
    /// The version in effect: the current one if valid, else the last good one.
    pub effective: Option<Arc<Config>>,
    /// Why the current version is refused.
    pub invalid: Option<String>,
    /// Changes whenever `effective` does.
    pub version: u64,
}

impl ConfigIn {
    /// `<namespace>/<name>`.
    pub fn reference(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// A namespace.
#[derive(Debug, Clone, Default)]
pub struct NamespaceIn {
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Being deleted.
    pub terminating: bool,
}

/// A Service, as much as planning reads.
#[derive(Debug, Clone, Default)]
pub struct ServiceIn {
    /// Its UID.
    pub uid: String,
    /// Its resourceVersion.
    pub resource_version: String,
    /// `spec.type`.
    pub type_: String,
    /// `spec.externalName`.
    pub external_name: String,
    /// Labels of [`super::SERVICE_KEYS`].
    pub labels: BTreeMap<String, String>,
    /// Annotations of [`super::SERVICE_KEYS`].
    pub annotations: BTreeMap<String, String>,
}

impl ServiceIn {
    /// A placeholder (ours or the operator's): never a prod Service, never gets a route.
    pub fn is_placeholder(&self) -> bool {
        self.type_ == "ExternalName"
            && (self
                .annotations
                .get(PLACEHOLDER_ANNOTATION)
                .map(String::as_str)
                == Some("true")
                || self
                    .annotations
                    .get(OPERATOR_PLACEHOLDER_ANNOTATION)
                    .map(String::as_str)
                    == Some("true")
                || self
                    .labels
                    .get(OPERATOR_PLACEHOLDER_LABEL)
                    .map(String::as_str)
                    == Some("true"))
    }

    /// A placeholder we made (and may delete).
    pub fn is_our_placeholder(&self) -> bool {
        self.type_ == "ExternalName"
            && self.labels.get(MANAGED_BY).map(String::as_str) == Some(MANAGED_BY_VALUE)
            && self
                .annotations
                .get(PLACEHOLDER_ANNOTATION)
                .map(String::as_str)
                == Some("true")
    }
}

/// A VirtualService as observed (borrowed from the watch's store where it can be: a pass
/// copies nothing it only reads).
#[derive(Debug, Clone, Default)]
pub struct VirtualServiceIn<'a> {
    /// Its UID.
    pub uid: Cow<'a, str>,
    /// Its resourceVersion.
    pub resource_version: Cow<'a, str>,
    /// Its labels.
    pub labels: Cow<'a, BTreeMap<String, String>>,
    /// Its annotations (ours are enough).
    pub annotations: Cow<'a, BTreeMap<String, String>>,
    /// `metadata.ownerReferences`.
    pub owner_references: Vec<Value>,
    /// Ours: each top-level spec key with the [`fingerprint`] of its value (what comparing
    /// needs; a VirtualService's routes held as JSON cost kilobytes each). Others: at least
    /// `hosts` and `gateways`, as they are.
    pub spec: Cow<'a, Map<String, Value>>,
    /// The top-level spec keys our field manager's apply owns (from `managedFields`), when known.
    pub managed_spec_keys: Option<BTreeSet<String>>,
    /// The label keys our apply owns, when known.
    pub managed_labels: Option<BTreeSet<String>>,
    /// The annotation keys our apply owns, when known.
    pub managed_annotations: Option<BTreeSet<String>>,
}

impl VirtualServiceIn<'_> {
    /// Labelled ours.
    pub fn ours(&self) -> bool {
        self.labels.get(MANAGED_BY).map(String::as_str) == Some(MANAGED_BY_VALUE)
    }

    fn operators(&self) -> bool {
        self.labels.get(OPERATOR_MANAGED_BY.0).map(String::as_str) == Some(OPERATOR_MANAGED_BY.1)
    }

    fn strings(&self, key: &str) -> Vec<String> {
        self.spec
            .get(key)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Everything a pass reads.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    /// Labelled ConfigMaps in scope.
    pub configs: &'a [ConfigIn],
    /// Namespaces by name.
    pub namespaces: &'a BTreeMap<String, NamespaceIn>,
    /// Services by key.
    pub services: &'a BTreeMap<Key, ServiceIn>,
    /// VirtualServices by key.
    pub virtual_services: &'a BTreeMap<Key, VirtualServiceIn<'a>>,
    /// What the last pass found up to date (see [`Plan::fresh`]).
    pub fresh: &'a HashMap<u64, String>,
    /// False while the VirtualServices are not known (no API, or its watch has not listed):
    /// nothing is built or compared, every prod Service is `Pending`.
    pub compare: bool,
    /// False while any input may be incomplete (a watch lists again or fails): nothing is
    /// deleted.
    pub gc: bool,
}

/// A config's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigState {
    /// In effect.
    Valid,
    /// The current version is refused (the last good one, if any, stays in effect).
    Invalid,
    /// Another config routes its default namespace.
    Conflict,
}

impl ConfigState {
    /// As Diagnostics and metrics say it.
    pub fn as_str(self) -> &'static str {
        match self {
            ConfigState::Valid => "Valid",
            ConfigState::Invalid => "Invalid",
            ConfigState::Conflict => "Conflict",
        }
    }
}

/// A config as Diagnostics shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigView {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// The default namespace of the version in effect ("" when none).
    pub default_namespace: String,
    /// State.
    pub state: ConfigState,
    /// Why, when not valid.
    pub message: String,
    /// Developer namespaces in effect, in order (listed, then selected).
    pub developer_namespaces: Vec<String>,
    /// The header.
    pub header: String,
    /// The baggage key.
    pub baggage_key: String,
}

/// The state of one prod Service's routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteState {
    /// The VirtualService is as planned.
    Synced,
    /// A write is due (or on its way).
    Pending,
    /// A foreign mesh VirtualService shares a host: none made.
    HostConflict,
    /// A foreign VirtualService has our name: none made.
    NameConflict,
    /// Excluded, opted out, or `kubernetes`/`kube-dns`.
    Excluded,
    /// Its write failed, or its template does not render.
    Error,
}

impl RouteState {
    /// As Diagnostics says it.
    pub fn as_str(self) -> &'static str {
        match self {
            RouteState::Synced => "Synced",
            RouteState::Pending => "Pending",
            RouteState::HostConflict => "HostConflict",
            RouteState::NameConflict => "NameConflict",
            RouteState::Excluded => "Excluded",
            RouteState::Error => "Error",
        }
    }
}

/// One developer route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The developer namespace.
    pub namespace: String,
    /// `<service>.<namespace>.svc.<domain>`.
    pub destination: String,
    /// `config` (listed) or `selector`.
    pub source: &'static str,
}

/// One prod Service as Diagnostics shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceView {
    /// `<ns>/<name>` of the config.
    pub config: String,
    /// The domain's default namespace.
    pub default_namespace: String,
    /// The prod Service.
    pub service: String,
    /// The VirtualService's name ("" when none is made).
    pub virtual_service: String,
    /// State.
    pub state: RouteState,
    /// Developer routes, in order.
    pub routes: Vec<Route>,
    /// Foreign VirtualServices in conflict, `<ns>/<name>`.
    pub conflicts: Vec<String>,
    /// Developer namespaces holding a placeholder of it.
    pub placeholders: Vec<String>,
    /// Detail.
    pub message: String,
}

/// A server-side apply of a VirtualService.
#[derive(Debug, Clone, PartialEq)]
pub struct Apply {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// `metadata` and `spec` (the writer adds `apiVersion` and `kind`).
    pub body: Value,
    /// Forced (an object we own or adopt); a new object is applied without force, so one
    /// made by someone else meanwhile fails with a conflict instead of being taken over.
    pub force: bool,
    /// The prod Service: `(default namespace, name)`.
    pub service: Key,
}

/// What a delete removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteKind {
    /// A VirtualService of ours.
    VirtualService,
    /// A placeholder of ours.
    Placeholder,
}

/// A delete with preconditions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delete {
    /// What.
    pub kind: DeleteKind,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Precondition.
    pub uid: String,
    /// Precondition (placeholders).
    pub resource_version: Option<String>,
}

/// A placeholder to create (no `resource_version`) or update (with it as precondition).
#[derive(Debug, Clone, PartialEq)]
pub struct PlaceholderWrite {
    /// Developer namespace.
    pub namespace: String,
    /// The prod Service's name.
    pub name: String,
    /// The whole Service (create) or the merge patch (update).
    pub body: Value,
    /// Update this version.
    pub resource_version: Option<String>,
}

/// What an Event is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectRef {
    /// `ConfigMap` or `Service`.
    pub kind: &'static str,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// UID.
    pub uid: String,
}

/// A condition that holds now (said once while it holds).
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    /// About.
    pub object: ObjectRef,
    /// The Event.
    pub event: Event,
}

/// A pass's result.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// Every config, by namespace and name.
    pub configs: Vec<ConfigView>,
    /// Every prod Service of every domain (excluded ones too), by default namespace and name.
    pub services: Vec<ServiceView>,
    /// VirtualServices to apply.
    pub applies: Vec<Apply>,
    /// Objects of ours to delete.
    pub deletes: Vec<Delete>,
    /// Placeholders to create or update.
    pub placeholders: Vec<PlaceholderWrite>,
    /// Conditions that hold.
    pub conditions: Vec<Condition>,
    /// Developer routes in all planned VirtualServices.
    pub routes: usize,
    /// Placeholders of ours in place and wanted.
    pub placeholders_in_place: usize,
    /// The prod Services whose VirtualService was up to date, by the hash of everything that
    /// decided it (config version, the Service, its routes, the object there, the foreign
    /// VirtualServices of its namespace), with the VirtualService's name: while those inputs
    /// are unchanged the next pass does not build the object again to compare.
    pub fresh: HashMap<u64, String>,
}

fn config_ref(c: &ConfigIn) -> ObjectRef {
    ObjectRef {
        kind: "ConfigMap",
        namespace: c.namespace.clone(),
        name: c.name.clone(),
        uid: c.uid.clone(),
    }
}

/// The developer namespaces of `config`, in order, with their source.
fn developer_namespaces(
    config: &Config,
    namespaces: &BTreeMap<String, NamespaceIn>,
) -> Vec<(String, &'static str)> {
    let mut out: Vec<(String, &'static str)> = config
        .developer_namespaces
        .iter()
        .map(|n| (n.clone(), "config"))
        .collect();
    if let Some(selector) = &config.selector {
        for (name, ns) in namespaces {
            if name != &config.default_namespace
                && !SYSTEM_NAMESPACES.contains(&name.as_str())
                && !config.developer_namespaces.contains(name)
                && selector.matches(&ns.labels)
            {
                out.push((name.clone(), "selector"));
            }
        }
    }
    out
}

fn route(name: String, matches: Option<Value>, host: &str) -> Value {
    let mut r = Map::new();
    r.insert("name".into(), Value::String(name));
    if let Some(m) = matches {
        r.insert("match".into(), m);
    }
    r.insert("route".into(), json!([{"destination": {"host": host}}]));
    Value::Object(r)
}

/// The developer routes of a VirtualService: header routes in order, then baggage routes.
fn developer_routes(config: &Config, routes: &[Route]) -> Vec<Value> {
    let mut out: Vec<Value> = routes
        .iter()
        .map(|r| {
            route(
                format!("dev-{}", r.namespace),
                Some(json!([{"headers": {config.header.clone(): {"exact": r.namespace}}}])),
                &r.destination,
            )
        })
        .collect();
    if let Some(key) = &config.baggage_key {
        out.extend(routes.iter().map(|r| {
            route(
                format!("dev-{}-baggage", r.namespace),
                Some(
                    json!([{"headers": {"baggage": {"regex": baggage_regex(key, &r.namespace)}}}]),
                ),
                &r.destination,
            )
        }));
    }
    out
}

/// The VirtualService for prod Service `service` (`uid`) of `config`: its name and body.
pub fn desired_virtual_service(
    config: &Config,
    config_ref: &str,
    service: &str,
    uid: &str,
    routes: &[Route],
    domain: &str,
) -> Result<(String, Value), String> {
    let ns = &config.default_namespace;
    let dev = developer_routes(config, routes);
    let (name, mut labels, mut annotations, spec) = match &config.template {
        None => {
            let mut http = dev;
            http.push(route(
                "default".into(),
                None,
                &format!("{service}.{ns}.svc.{domain}"),
            ));
            let mut spec = Map::new();
            spec.insert("hosts".into(), json!([service]));
            spec.insert("http".into(), Value::Array(http));
            (virtual_service_name(service), Map::new(), Map::new(), spec)
        }
        Some(t) => {
            let r = t.render(service, ns)?;
            let mut spec = r.spec;
            let theirs = match spec.remove("http") {
                Some(Value::Array(a)) => a,
                _ => vec![],
            };
            let mut http = dev;
            http.extend(theirs);
            spec.insert("http".into(), Value::Array(http));
            (r.name, r.labels, r.annotations, spec)
        }
    };
    labels.insert(MANAGED_BY.into(), MANAGED_BY_VALUE.into());
    labels.insert(SERVICE_LABEL.into(), service.into());
    annotations.insert(CONFIG_ANNOTATION.into(), config_ref.into());
    // Built by moving the parts in (`json!` would copy each map).
    let mut metadata = Map::new();
    metadata.insert("name".into(), Value::String(name.clone()));
    metadata.insert("namespace".into(), Value::String(ns.clone()));
    metadata.insert("labels".into(), Value::Object(labels));
    metadata.insert("annotations".into(), Value::Object(annotations));
    metadata.insert(
        "ownerReferences".into(),
        json!([{"apiVersion": "v1", "kind": "Service", "name": service, "uid": uid, "controller": true}]),
    );
    let mut body = Map::new();
    body.insert("metadata".into(), Value::Object(metadata));
    body.insert("spec".into(), Value::Object(spec));
    let mut body = Value::Object(body);
    normalize(&mut body);
    Ok((name, body))
}

fn subset(want: &Value, have: &BTreeMap<String, String>) -> bool {
    want.as_object().is_none_or(|m| {
        m.iter()
            .all(|(k, v)| have.get(k).map(String::as_str) == v.as_str())
    })
}

/// True when `observed` already holds every field `desired` sets (and no spec field our
/// apply owns has been dropped from `desired`).
pub fn up_to_date(desired: &Value, observed: &VirtualServiceIn<'_>) -> bool {
    let meta = &desired["metadata"];
    if !subset(&meta["labels"], &observed.labels)
        || !subset(&meta["annotations"], &observed.annotations)
    {
        return false;
    }
    let owner = &meta["ownerReferences"][0];
    let fields = ["apiVersion", "kind", "name", "uid", "controller"];
    if !observed
        .owner_references
        .iter()
        .any(|o| fields.iter().all(|f| o[f] == owner[f]))
    {
        return false;
    }
    let Some(spec) = desired["spec"].as_object() else {
        return false;
    };
    if !spec
        .iter()
        .all(|(k, v)| observed.spec.get(k).and_then(Value::as_str) == Some(&fingerprint(v)))
    {
        return false;
    }
    // A field our apply owns that is no longer desired (a key dropped from the template) is
    // removed by the next apply.
    let owned_only = |owned: &Option<BTreeSet<String>>, want: &Value| {
        owned
            .as_ref()
            .is_none_or(|keys| keys.iter().all(|k| want.get(k).is_some()))
    };
    owned_only(&observed.managed_spec_keys, &desired["spec"])
        && owned_only(&observed.managed_labels, &meta["labels"])
        && owned_only(&observed.managed_annotations, &meta["annotations"])
}

/// What the API server stores of what we send: no null fields (server-side apply drops them),
/// integral numbers as integers (`8080.0` comes back `8080`). Comparing the desired object in
/// this form with the stored one cannot loop.
fn normalize(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|_, x| !x.is_null());
            m.values_mut().for_each(normalize);
        }
        Value::Array(a) => a.iter_mut().for_each(normalize),
        Value::Number(n) => {
            if let Some(f) = n
                .as_f64()
                .filter(|f| n.is_f64() && f.fract() == 0.0 && f.abs() < 9e15)
            {
                *v = Value::from(f as i64);
            }
        }
        _ => {}
    }
}

/// A fingerprint of a JSON value: equal values (maps compare regardless of key order, as JSON
/// does) give equal fingerprints.
pub fn fingerprint(v: &Value) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    v.to_string().hash(&mut h);
    format!("{:016x}", h.finish())
}

/// `spec` with each value replaced by its [`fingerprint`] (what the store keeps of ours).
pub fn spec_fingerprints(spec: &Map<String, Value>) -> Map<String, Value> {
    spec.iter()
        .map(|(k, v)| (k.clone(), Value::String(fingerprint(v))))
        .collect()
}

/// A hash of the VirtualServices in `namespace` that are not ours (what conflicts depend on).
fn foreign_hash(vs: &BTreeMap<Key, VirtualServiceIn<'_>>, namespace: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for ((_, name), v) in vs
        .range((namespace.to_owned(), String::new())..)
        .take_while(|((n, _), _)| n == namespace)
        .filter(|(_, v)| !v.ours())
    {
        (name, &v.uid, &v.resource_version).hash(&mut h);
    }
    h.finish()
}

fn placeholder_labels() -> Value {
    json!({ MANAGED_BY: MANAGED_BY_VALUE })
}

/// Plans one pass.
#[allow(clippy::too_many_lines)]
pub fn plan(input: Input<'_>, settings: &Settings) -> Plan {
    let mut out = Plan::default();
    let domain = &settings.domain;

    // Domains: the oldest valid config per default namespace wins.
    let mut order: Vec<&ConfigIn> = input.configs.iter().collect();
    order.sort_by(|a, b| (&a.created, a.reference()).cmp(&(&b.created, b.reference())));
    let mut winners: BTreeMap<String, &ConfigIn> = BTreeMap::new();
    let mut domains: Vec<(&ConfigIn, &Config)> = Vec::new();
    let mut views: BTreeMap<String, ConfigView> = BTreeMap::new();
    for c in &order {
        let mut view = ConfigView {
            namespace: c.namespace.clone(),
            name: c.name.clone(),
            default_namespace: String::new(),
            state: if c.invalid.is_some() {
                ConfigState::Invalid
            } else {
                ConfigState::Valid
            },
            message: c.invalid.clone().unwrap_or_default(),
            developer_namespaces: vec![],
            header: String::new(),
            baggage_key: String::new(),
        };
        if let Some(cfg) = &c.effective {
            view.default_namespace = cfg.default_namespace.clone();
            view.header = cfg.header.clone();
            view.baggage_key = cfg.baggage_key.clone().unwrap_or_default();
            view.developer_namespaces = developer_namespaces(cfg, input.namespaces)
                .into_iter()
                .map(|d| d.0)
                .collect();
            match winners.get(&cfg.default_namespace) {
                None => {
                    winners.insert(cfg.default_namespace.clone(), c);
                    domains.push((c, cfg));
                }
                Some(w) => {
                    let note = format!(
                        "default namespace {} is already routed by the older config {}; this one makes nothing until that one goes",
                        cfg.default_namespace,
                        w.reference()
                    );
                    if view.state == ConfigState::Valid {
                        view.state = ConfigState::Conflict;
                        view.message = note.clone();
                    }
                    out.conditions.push(Condition {
                        object: config_ref(c),
                        event: Event {
                            warning: true,
                            reason: "DomainConflict",
                            note,
                        },
                    });
                }
            }
        } else if view.message.is_empty() {
            view.message = "no valid version yet".into();
        }
        views.insert(c.reference(), view);
    }

    let mut wanted_vs: BTreeSet<Key> = BTreeSet::new();
    let mut wanted_placeholders: BTreeSet<Key> = BTreeSet::new();

    for (c, cfg) in &domains {
        let reference = c.reference();
        let dns = &cfg.default_namespace;
        let developers = developer_namespaces(cfg, input.namespaces);
        let prod = input
            .services
            .range((dns.to_owned(), String::new())..)
            .take_while(|((n, _), _)| n == dns);
        let foreign = foreign_hash(input.virtual_services, dns);
        for ((_, name), svc) in prod {
            if svc.is_placeholder() {
                continue;
            }
            let mut view = ServiceView {
                config: reference.clone(),
                default_namespace: dns.clone(),
                service: name.clone(),
                virtual_service: String::new(),
                state: RouteState::Synced,
                routes: vec![],
                conflicts: vec![],
                placeholders: vec![],
                message: String::new(),
            };
            let opted_out = svc.annotations.get(ROUTING_KEY).map(String::as_str) == Some("false");
            if cfg.excluded.contains(name) || opted_out {
                view.state = RouteState::Excluded;
                view.message = if opted_out {
                    format!("annotated {ROUTING_KEY}: \"false\"")
                } else {
                    "excluded by the config".into()
                };
                out.services.push(view);
                continue;
            }
            for (d, source) in &developers {
                if input
                    .services
                    .get(&(d.clone(), name.clone()))
                    .is_some_and(|s| !s.is_placeholder())
                {
                    view.routes.push(Route {
                        namespace: d.clone(),
                        destination: format!("{name}.{d}.svc.{domain}"),
                        source,
                    });
                }
            }
            // Placeholders.
            if cfg.placeholders {
                for (d, _) in &developers {
                    let Some(ns) = input.namespaces.get(d) else {
                        continue;
                    };
                    let key = (d.clone(), name.clone());
                    let external = format!("{name}.{dns}.svc.{domain}");
                    match input.services.get(&key) {
                        None if !ns.terminating && wanted_placeholders.insert(key.clone()) => {
                            out.placeholders.push(PlaceholderWrite {
                                namespace: d.clone(),
                                name: name.clone(),
                                body: json!({
                                    "apiVersion": "v1", "kind": "Service",
                                    "metadata": {
                                        "name": name, "namespace": d,
                                        "labels": placeholder_labels(),
                                        "annotations": {PLACEHOLDER_ANNOTATION: "true", CONFIG_ANNOTATION: reference},
                                    },
                                    "spec": {"type": "ExternalName", "externalName": external},
                                }),
                                resource_version: None,
                            });
                        }
                        Some(s)
                            if s.is_placeholder() && wanted_placeholders.insert(key.clone()) =>
                        {
                            view.placeholders.push(d.clone());
                            let current = s.is_our_placeholder()
                                && s.external_name == external
                                && s.annotations.get(CONFIG_ANNOTATION) == Some(&reference);
                            if current {
                                out.placeholders_in_place += 1;
                            } else if !ns.terminating {
                                out.placeholders.push(PlaceholderWrite {
                                    namespace: d.clone(),
                                    name: name.clone(),
                                    body: json!({
                                        "metadata": {
                                            "labels": placeholder_labels(),
                                            "annotations": {PLACEHOLDER_ANNOTATION: "true", CONFIG_ANNOTATION: reference},
                                            "resourceVersion": s.resource_version,
                                        },
                                        "spec": {"externalName": external},
                                    }),
                                    resource_version: Some(s.resource_version.clone()),
                                });
                            }
                        }
                        _ => {}
                    }
                }
            }
            if !input.compare {
                view.state = RouteState::Pending;
                out.routes += view.routes.len();
                out.services.push(view);
                continue;
            }
            // Unchanged since a pass found it up to date: nothing to build or compare.
            let inputs = {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                (
                    &reference,
                    c.version,
                    domain,
                    &svc.uid,
                    &svc.resource_version,
                )
                    .hash(&mut h);
                for r in &view.routes {
                    (&r.namespace, r.source).hash(&mut h);
                }
                foreign.hash(&mut h);
                h.finish()
            };
            if let Some(vs_name) = input.fresh.get(&inputs) {
                let key = (dns.clone(), vs_name.clone());
                if let Some(vs) = input.virtual_services.get(&key).filter(|vs| vs.ours()) {
                    let mut h = std::collections::hash_map::DefaultHasher::new();
                    (inputs, &vs.uid, &vs.resource_version).hash(&mut h);
                    if input.fresh.contains_key(&h.finish()) {
                        view.virtual_service = vs_name.clone();
                        out.routes += view.routes.len();
                        out.fresh.insert(inputs, vs_name.clone());
                        out.fresh.insert(h.finish(), String::new());
                        wanted_vs.insert(key);
                        out.services.push(view);
                        continue;
                    }
                }
            }
            let (vs_name, body) = match desired_virtual_service(
                cfg,
                &reference,
                name,
                &svc.uid,
                &view.routes,
                domain,
            ) {
                Ok(x) => x,
                Err(e) => {
                    view.state = RouteState::Error;
                    view.message = format!("the template does not render: {e}");
                    // Keep what exists: an error is no reason to delete.
                    for ((_, vname), vs) in input
                        .virtual_services
                        .range((dns.clone(), String::new())..)
                        .take_while(|((n, _), _)| n == dns)
                    {
                        if vs.ours() && vs.labels.get(SERVICE_LABEL) == Some(name) {
                            wanted_vs.insert((dns.clone(), vname.clone()));
                        }
                    }
                    out.services.push(view);
                    continue;
                }
            };
            let spec = &body["spec"];
            let gateways: Vec<String> = spec["gateways"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|g| g.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            let hosts: BTreeSet<String> = spec["hosts"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(|h| host::complete(h, dns, domain))
                .collect();
            let at_name = input.virtual_services.get(&(dns.clone(), vs_name.clone()));
            let adoptable =
                |k: &str, vs: &VirtualServiceIn| vs.ours() || (k == vs_name && vs.operators());
            // Host conflicts: a foreign mesh VirtualService in the default namespace sharing a host.
            let mut host_conflicts = Vec::new();
            if host::mesh_bound(&gateways) {
                for ((_, vname), vs) in input
                    .virtual_services
                    .range((dns.clone(), String::new())..)
                    .take_while(|((n, _), _)| n == dns)
                {
                    if adoptable(vname, vs) || !host::mesh_bound(&vs.strings("gateways")) {
                        continue;
                    }
                    if let Some(h) = vs
                        .strings("hosts")
                        .iter()
                        .map(|h| host::complete(h, dns, domain))
                        .find(|h| hosts.contains(h))
                    {
                        host_conflicts.push((format!("{dns}/{vname}"), h));
                    }
                }
            }
            let svc_ref = ObjectRef {
                kind: "Service",
                namespace: dns.clone(),
                name: name.clone(),
                uid: svc.uid.clone(),
            };
            if !host_conflicts.is_empty() {
                view.state = RouteState::HostConflict;
                view.conflicts = host_conflicts.iter().map(|c| c.0.clone()).collect();
                view.message = format!(
                    "the VirtualService {} (not ours) already routes host {} in the mesh; Istio honours one per host, so none is made",
                    host_conflicts[0].0, host_conflicts[0].1
                );
                out.conditions.push(Condition {
                    object: svc_ref,
                    event: Event {
                        warning: true,
                        reason: "HostConflict",
                        note: view.message.clone(),
                    },
                });
                out.services.push(view);
                continue;
            }
            if at_name.is_some_and(|vs| !adoptable(&vs_name, vs)) {
                view.state = RouteState::NameConflict;
                view.conflicts = vec![format!("{dns}/{vs_name}")];
                view.message = format!(
                    "a VirtualService {dns}/{vs_name} that is not ours has the name; none is made"
                );
                out.conditions.push(Condition {
                    object: svc_ref,
                    event: Event {
                        warning: true,
                        reason: "NameConflict",
                        note: view.message.clone(),
                    },
                });
                out.services.push(view);
                continue;
            }
            view.virtual_service = vs_name.clone();
            wanted_vs.insert((dns.clone(), vs_name.clone()));
            out.routes += view.routes.len();
            let due = at_name.is_none_or(|vs| !up_to_date(&body, vs));
            if let (false, Some(vs)) = (due, at_name) {
                // Remembered with the object it was compared with.
                out.fresh.insert(inputs, vs_name.clone());
                let mut h = std::collections::hash_map::DefaultHasher::new();
                (inputs, &vs.uid, &vs.resource_version).hash(&mut h);
                out.fresh.insert(h.finish(), String::new());
            }
            if due {
                view.state = RouteState::Pending;
                out.applies.push(Apply {
                    namespace: dns.clone(),
                    name: vs_name,
                    body,
                    force: at_name.is_some(),
                    service: (dns.clone(), name.clone()),
                });
            }
            out.services.push(view);
        }
    }

    // Garbage: ours, wanted by no domain, whose config says so.
    if input.gc {
        let frozen: BTreeSet<String> = input
            .configs
            .iter()
            .filter(|c| c.effective.is_none())
            .map(ConfigIn::reference)
            .collect();
        let collectable = |annotations: &BTreeMap<String, String>| {
            let Some((ns, name)) = annotations
                .get(CONFIG_ANNOTATION)
                .and_then(|r| r.split_once('/'))
            else {
                return false; // no readable config reference: not ours to judge
            };
            !name.is_empty() && settings.in_scope(ns) && !frozen.contains(&format!("{ns}/{name}"))
        };
        for ((ns, name), vs) in input.virtual_services {
            if vs.ours()
                && !wanted_vs.contains(&(ns.clone(), name.clone()))
                && collectable(&vs.annotations)
            {
                out.deletes.push(Delete {
                    kind: DeleteKind::VirtualService,
                    namespace: ns.clone(),
                    name: name.clone(),
                    uid: vs.uid.to_string(),
                    resource_version: None,
                });
            }
        }
        for ((ns, name), s) in input.services {
            if s.is_our_placeholder()
                && !wanted_placeholders.contains(&(ns.clone(), name.clone()))
                && collectable(&s.annotations)
            {
                out.deletes.push(Delete {
                    kind: DeleteKind::Placeholder,
                    namespace: ns.clone(),
                    name: name.clone(),
                    uid: s.uid.clone(),
                    resource_version: Some(s.resource_version.clone()),
                });
            }
        }
    }
    out.configs = views.into_values().collect();
    out.services.sort_by(|a, b| {
        (&a.default_namespace, &a.service).cmp(&(&b.default_namespace, &b.service))
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::config::parse;

    const DOMAIN: &str = "cluster.local";

    #[derive(Default)]
    struct World {
        configs: Vec<ConfigIn>,
        namespaces: BTreeMap<String, NamespaceIn>,
        services: BTreeMap<Key, ServiceIn>,
        vs: BTreeMap<Key, VirtualServiceIn<'static>>,
        fresh: HashMap<u64, String>,
    }

    impl World {
        fn new(config: &str) -> World {
            let mut w = World::default();
            w.config("ops", "routing", "2026-01-01T00:00:00Z", config);
            for ns in ["prod", "dev-alice", "dev-bob", "staging", "elsewhere"] {
                w.namespaces.insert(ns.into(), NamespaceIn::default());
            }
            w
        }
        fn config(&mut self, ns: &str, name: &str, created: &str, text: &str) {
            self.configs.push(ConfigIn {
                namespace: ns.into(),
                name: name.into(),
                uid: format!("uid-{ns}-{name}"),
                created: created.into(),
                effective: Some(Arc::new(parse(Some(text)).unwrap())),
                invalid: None,
                version: 1,
            });
        }
        fn svc(&mut self, ns: &str, name: &str) -> &mut ServiceIn {
            self.services
                .entry((ns.into(), name.into()))
                .or_insert_with(|| ServiceIn {
                    uid: format!("uid-{ns}-{name}"),
                    resource_version: "7".into(),
                    type_: "ClusterIP".into(),
                    ..Default::default()
                })
        }
        fn plan(&self) -> Plan {
            self.plan_gc(true)
        }
        fn plan_gc(&self, gc: bool) -> Plan {
            plan(
                Input {
                    configs: &self.configs,
                    namespaces: &self.namespaces,
                    services: &self.services,
                    virtual_services: &self.vs,
                    fresh: &self.fresh,
                    compare: true,
                    gc,
                },
                &Settings {
                    domain: DOMAIN.into(),
                    config_namespaces: None,
                },
            )
        }
        /// Writes every apply as the server would store it.
        fn settle(&mut self) -> Plan {
            let p = self.plan();
            for a in &p.applies {
                let m = &a.body["metadata"];
                let strings = |v: &Value| -> BTreeMap<String, String> {
                    v.as_object()
                        .unwrap()
                        .iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap().into()))
                        .collect()
                };
                self.vs.insert(
                    (a.namespace.clone(), a.name.clone()),
                    VirtualServiceIn {
                        uid: format!("vs-{}", a.name).into(),
                        resource_version: self.next_rv().into(),
                        labels: Cow::Owned(strings(&m["labels"])),
                        annotations: Cow::Owned(strings(&m["annotations"])),
                        owner_references: m["ownerReferences"].as_array().unwrap().clone(),
                        spec: Cow::Owned(spec_fingerprints(a.body["spec"].as_object().unwrap())),
                        managed_spec_keys: Some(
                            a.body["spec"]
                                .as_object()
                                .unwrap()
                                .keys()
                                .cloned()
                                .collect(),
                        ),
                        managed_labels: Some(
                            m["labels"].as_object().unwrap().keys().cloned().collect(),
                        ),
                        managed_annotations: None,
                    },
                );
            }
            for d in &p.deletes {
                match d.kind {
                    DeleteKind::VirtualService => {
                        self.vs.remove(&(d.namespace.clone(), d.name.clone()))
                    }
                    DeleteKind::Placeholder => self
                        .services
                        .remove(&(d.namespace.clone(), d.name.clone()))
                        .map(|_| VirtualServiceIn::default()),
                };
            }
            p
        }
        fn next_rv(&self) -> String {
            (self.vs.len() * 1000 + self.fresh.len() + rand_rv()).to_string()
        }
        fn routes(&self, p: &Plan, service: &str) -> Vec<String> {
            let v = p.services.iter().find(|s| s.service == service).unwrap();
            v.routes.iter().map(|r| r.namespace.clone()).collect()
        }
    }

    const CONFIG: &str =
        "defaultNamespace: prod\ndeveloperNamespaces: [dev-alice, dev-bob, staging]\n";

    #[test]
    fn the_exact_default_shape() {
        let mut w = World::new(&format!("{CONFIG}baggageKey: dev-namespace\n"));
        w.svc("prod", "my-app");
        w.svc("dev-alice", "my-app");
        w.svc("staging", "my-app");
        let p = w.plan();
        assert_eq!(p.applies.len(), 1);
        let a = &p.applies[0];
        assert!(!a.force, "a new object is applied without force");
        let bag =
            |ns: &str| format!("^(.*,)?[ \\t]*dev-namespace[ \\t]*=[ \\t]*{ns}[ \\t]*([;,].*)?$");
        assert_eq!(
            a.body,
            json!({
                "metadata": {
                    "name": "my-app-virtual-service", "namespace": "prod",
                    "labels": {"fleetmirror.io/managed-by": "fleetmirror", "fleetmirror.io/service": "my-app"},
                    "annotations": {"fleetmirror.io/routing-config": "ops/routing"},
                    "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": "my-app", "uid": "uid-prod-my-app", "controller": true}],
                },
                "spec": {"hosts": ["my-app"], "http": [
                    {"name": "dev-dev-alice", "match": [{"headers": {"x-developer": {"exact": "dev-alice"}}}], "route": [{"destination": {"host": "my-app.dev-alice.svc.cluster.local"}}]},
                    {"name": "dev-staging", "match": [{"headers": {"x-developer": {"exact": "staging"}}}], "route": [{"destination": {"host": "my-app.staging.svc.cluster.local"}}]},
                    {"name": "dev-dev-alice-baggage", "match": [{"headers": {"baggage": {"regex": bag("dev-alice")}}}], "route": [{"destination": {"host": "my-app.dev-alice.svc.cluster.local"}}]},
                    {"name": "dev-staging-baggage", "match": [{"headers": {"baggage": {"regex": bag("staging")}}}], "route": [{"destination": {"host": "my-app.staging.svc.cluster.local"}}]},
                    {"name": "default", "route": [{"destination": {"host": "my-app.prod.svc.cluster.local"}}]},
                ]},
            })
        );
    }

    #[test]
    fn the_decision_table() {
        let mut w = World::new(CONFIG);
        // my-app only in prod: the default route only.
        w.svc("prod", "my-app");
        let p = w.settle();
        assert_eq!(w.routes(&p, "my-app"), Vec::<String>::new());
        assert_eq!(
            p.applies[0].body["spec"]["http"].as_array().unwrap().len(),
            1
        );
        // + dev-alice, then staging; none in dev-bob: config order.
        w.svc("staging", "my-app");
        w.settle();
        w.svc("dev-alice", "my-app");
        let p = w.settle();
        assert_eq!(w.routes(&p, "my-app"), ["dev-alice", "staging"]);
        assert!(p.applies[0].force, "ours is applied with force");
        // Settled: nothing to write.
        let p = w.plan();
        assert!(p.applies.is_empty() && p.deletes.is_empty());
        assert_eq!(p.services[0].state, RouteState::Synced);
        // dev-alice's deleted.
        w.services.remove(&("dev-alice".into(), "my-app".into()));
        let p = w.settle();
        assert_eq!(w.routes(&p, "my-app"), ["staging"]);
        // outside the domain: no route.
        w.svc("elsewhere", "my-app");
        assert!(w.plan().applies.is_empty());
        // only in dev-alice: no VirtualService.
        w.svc("dev-alice", "other");
        assert!(w.plan().services.iter().all(|s| s.service != "other"));
        // excluded, opted out, kubernetes, kube-dns: nothing.
        for s in ["kubernetes", "kube-dns", "batch"] {
            w.svc("prod", s);
        }
        w.svc("prod", "own")
            .annotations
            .insert(ROUTING_KEY.into(), "false".into());
        w.configs[0].effective = Some(Arc::new(
            parse(Some(&format!("{CONFIG}excludedServices: [batch]"))).unwrap(),
        ));
        let p = w.plan();
        assert!(p.applies.is_empty());
        assert_eq!(
            p.services
                .iter()
                .filter(|s| s.state == RouteState::Excluded)
                .count(),
            4
        );
        // config edited: staging removed → [] at once.
        w.configs[0].effective = Some(Arc::new(
            parse(Some(
                "defaultNamespace: prod\ndeveloperNamespaces: [dev-alice, dev-bob]",
            ))
            .unwrap(),
        ));
        let p = w.settle();
        assert_eq!(w.routes(&p, "my-app"), Vec::<String>::new());
        // prod's my-app deleted: its VirtualService goes.
        w.services.remove(&("prod".into(), "my-app".into()));
        let p = w.settle();
        assert_eq!(
            p.deletes,
            vec![Delete {
                kind: DeleteKind::VirtualService,
                namespace: "prod".into(),
                name: "my-app-virtual-service".into(),
                uid: "vs-my-app-virtual-service".into(),
                resource_version: None,
            }]
        );
    }

    #[test]
    fn an_unchanged_service_is_not_built_again_and_any_change_is_seen() {
        let mut w = World::new(CONFIG);
        w.svc("prod", "my-app");
        w.svc("prod", "other");
        w.settle();
        let p = w.plan();
        assert!(p.applies.is_empty());
        assert_eq!(
            p.fresh.len(),
            4,
            "two services, each with the object compared"
        );
        w.fresh = p.fresh;
        let p = w.plan();
        assert!(p.applies.is_empty());
        assert_eq!(
            p.services
                .iter()
                .filter(|s| s.state == RouteState::Synced)
                .count(),
            2
        );
        assert_eq!(p.services[0].virtual_service, "my-app-virtual-service");
        // A new copy: its routes changed, so it is built and written.
        w.svc("dev-alice", "my-app");
        let p = w.plan();
        assert_eq!(p.applies.len(), 1);
        assert_eq!(p.applies[0].name, "my-app-virtual-service");
        w.fresh = w.settle().fresh;
        w.fresh = w.plan().fresh;
        assert!(w.plan().applies.is_empty());
        // Someone edits our object (a new resourceVersion): compared again, and undone.
        let key = ("prod".to_string(), "other-virtual-service".to_string());
        let mut edited = w.vs[&key].clone();
        edited
            .spec
            .to_mut()
            .insert("hosts".into(), fingerprint(&json!(["hijacked"])).into());
        edited.resource_version = "999999".into();
        w.vs.insert(key, edited);
        let p = w.plan();
        assert_eq!(p.applies.len(), 1);
        assert_eq!(p.applies[0].name, "other-virtual-service");
        // A foreign object appears in the namespace: conflicts are judged again.
        w.fresh = w.settle().fresh;
        w.fresh = w.plan().fresh;
        w.vs.insert(("prod".into(), "theirs".into()), foreign(&["my-app"], &[]));
        let p = w.plan();
        assert_eq!(
            p.services
                .iter()
                .find(|s| s.service == "my-app")
                .unwrap()
                .state,
            RouteState::HostConflict
        );
    }

    #[test]
    fn selected_namespaces_follow_the_listed_ones_sorted() {
        let mut w = World::new(&format!(
            "{CONFIG}developerNamespaceSelector: {{matchLabels: {{dev: 'true'}}}}"
        ));
        for ns in ["zz-carol", "aa-dan", "kube-system", "prod"] {
            w.namespaces
                .entry(ns.into())
                .or_default()
                .labels
                .insert("dev".into(), "true".into());
            w.svc(ns, "my-app");
        }
        w.svc("staging", "my-app");
        let p = w.plan();
        assert_eq!(w.routes(&p, "my-app"), ["staging", "aa-dan", "zz-carol"]);
        let v = &p.services[0];
        assert_eq!(v.routes[1].source, "selector");
        assert_eq!(v.routes[0].source, "config");
        assert_eq!(
            p.configs[0].developer_namespaces,
            ["dev-alice", "dev-bob", "staging", "aa-dan", "zz-carol"]
        );
        // The label removed: the route goes.
        w.namespaces.get_mut("aa-dan").unwrap().labels.clear();
        assert_eq!(w.routes(&w.plan(), "my-app"), ["staging", "zz-carol"]);
    }

    /// A resourceVersion never used before in this process.
    fn rand_rv() -> usize {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(1);
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    fn foreign(hosts: &[&str], gateways: &[&str]) -> VirtualServiceIn<'static> {
        VirtualServiceIn {
            uid: "foreign".into(),
            resource_version: rand_rv().to_string().into(),
            spec: Cow::Owned(
                json!({"hosts": hosts, "gateways": gateways})
                    .as_object()
                    .unwrap()
                    .clone(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn foreign_virtual_services_are_never_touched() {
        for host in [
            "my-app",
            "my-app.prod",
            "my-app.prod.svc.cluster.local",
            "MY-APP.prod.svc",
        ] {
            let mut w = World::new(CONFIG);
            w.svc("prod", "my-app");
            w.settle();
            w.vs.insert(("prod".into(), "theirs".into()), foreign(&[host], &[]));
            let p = w.settle();
            assert_eq!(p.services[0].state, RouteState::HostConflict, "{host}");
            assert_eq!(p.services[0].conflicts, ["prod/theirs"]);
            assert_eq!(p.conditions[0].event.reason, "HostConflict");
            assert!(p.applies.is_empty());
            assert_eq!(p.deletes.len(), 1, "ours goes: {host}");
            assert_eq!(p.deletes[0].name, "my-app-virtual-service");
            // The conflict gone: ours comes back.
            w.vs.remove(&("prod".into(), "theirs".into()));
            assert_eq!(w.plan().applies.len(), 1);
        }
        // Gateway-only, another namespace's host, a delegate: no conflict.
        let mut w = World::new(CONFIG);
        w.svc("prod", "my-app");
        w.vs.insert(
            ("prod".into(), "gw".into()),
            foreign(&["my-app"], &["prod/public"]),
        );
        w.vs.insert(
            ("prod".into(), "other".into()),
            foreign(&["my-app.other"], &[]),
        );
        w.vs.insert(("prod".into(), "delegate".into()), foreign(&[], &[]));
        assert_eq!(w.plan().services[0].state, RouteState::Pending);
        // Same name, no shared host: NameConflict, and it is never deleted.
        w.vs.insert(
            ("prod".into(), "my-app-virtual-service".into()),
            foreign(&["x.example.com"], &[]),
        );
        let p = w.plan();
        assert_eq!(p.services[0].state, RouteState::NameConflict);
        assert_eq!(p.conditions[0].event.reason, "NameConflict");
        assert!(p.applies.is_empty() && p.deletes.is_empty());
    }

    #[test]
    fn the_operators_virtual_service_is_adopted() {
        let mut w = World::new(CONFIG);
        w.svc("prod", "my-app");
        let mut theirs = foreign(&["my-app"], &[]);
        theirs
            .labels
            .to_mut()
            .insert("managed-by".into(), "virtualservice-operator".into());
        w.vs.insert(("prod".into(), "my-app-virtual-service".into()), theirs);
        let p = w.plan();
        assert_eq!(p.applies.len(), 1);
        assert!(p.applies[0].force);
        assert!(p.conditions.is_empty());
    }

    #[test]
    fn garbage_is_judged_by_the_config_it_names() {
        let mut w = World::new(CONFIG);
        w.svc("prod", "my-app");
        w.settle();
        // Inputs may be incomplete: nothing deleted.
        w.services.clear();
        assert!(w.plan_gc(false).deletes.is_empty());
        // Config invalid since start (no good version): frozen.
        w.configs[0].effective = None;
        w.configs[0].invalid = Some("x".into());
        assert!(w.plan().deletes.is_empty());
        assert_eq!(w.plan().configs[0].state, ConfigState::Invalid);
        // Config gone: ours go, foreign ones and other configs' stay.
        w.configs.clear();
        let mut other = w.vs[&("prod".to_string(), "my-app-virtual-service".to_string())].clone();
        other
            .annotations
            .to_mut()
            .insert(CONFIG_ANNOTATION.into(), "team/other".into());
        w.vs.insert(("prod".into(), "b".into()), other.clone());
        other.annotations.to_mut().clear();
        w.vs.insert(("prod".into(), "unreadable".into()), other);
        w.vs.insert(("prod".into(), "theirs".into()), foreign(&["x"], &[]));
        let s = Settings {
            domain: DOMAIN.into(),
            config_namespaces: Some(["ops".to_string()].into()),
        };
        let p = plan(
            Input {
                configs: &[],
                namespaces: &w.namespaces,
                services: &w.services,
                virtual_services: &w.vs,
                fresh: &HashMap::new(),
                compare: true,
                gc: true,
            },
            &s,
        );
        assert_eq!(
            p.deletes
                .iter()
                .map(|d| d.name.as_str())
                .collect::<Vec<_>>(),
            ["my-app-virtual-service"]
        );
    }

    #[test]
    fn two_configs_for_one_namespace_the_older_wins() {
        let mut w = World::new(CONFIG);
        w.config(
            "team",
            "late",
            "2026-02-01T00:00:00Z",
            "defaultNamespace: prod\ndeveloperNamespaces: [staging]",
        );
        w.svc("prod", "my-app");
        w.svc("dev-alice", "my-app");
        let p = w.plan();
        assert_eq!(w.routes(&p, "my-app"), ["dev-alice"]);
        let late = p.configs.iter().find(|c| c.name == "late").unwrap();
        assert_eq!(late.state, ConfigState::Conflict);
        assert_eq!(p.conditions[0].event.reason, "DomainConflict");
        assert!(p.conditions[0].event.note.contains("ops/routing"));
        // The winner goes: the other takes over.
        w.configs.remove(0);
        let p = w.plan();
        assert_eq!(p.services[0].config, "team/late");
        assert_eq!(p.configs[0].state, ConfigState::Valid);
    }

    #[test]
    fn placeholders() {
        let mut w = World::new(&format!("{CONFIG}enablePlaceholderServices: true"));
        w.svc("prod", "my-app");
        w.svc("dev-alice", "my-app");
        let p = w.plan();
        // dev-bob and staging get one; dev-alice's real Service is untouched.
        let made: Vec<_> = p
            .placeholders
            .iter()
            .map(|p| p.namespace.as_str())
            .collect();
        assert_eq!(made, ["dev-bob", "staging"]);
        assert_eq!(
            p.placeholders[0].body["spec"],
            json!({"type": "ExternalName", "externalName": "my-app.prod.svc.cluster.local"})
        );
        assert!(p.placeholders[0].resource_version.is_none());
        for ns in ["dev-bob", "staging"] {
            let s = w.svc(ns, "my-app");
            s.type_ = "ExternalName".into();
            s.external_name = "my-app.prod.svc.cluster.local".into();
            s.labels.insert(MANAGED_BY.into(), MANAGED_BY_VALUE.into());
            s.annotations
                .insert(PLACEHOLDER_ANNOTATION.into(), "true".into());
            s.annotations
                .insert(CONFIG_ANNOTATION.into(), "ops/routing".into());
        }
        let p = w.plan();
        assert!(p.placeholders.is_empty());
        assert_eq!(p.placeholders_in_place, 2);
        assert_eq!(
            w.routes(&p, "my-app"),
            ["dev-alice"],
            "placeholders get no route"
        );
        // A converted placeholder is real: a route, and never modified or deleted.
        w.svc("staging", "my-app").type_ = "ClusterIP".into();
        let p = w.plan();
        assert_eq!(w.routes(&p, "my-app"), ["dev-alice", "staging"]);
        assert!(p.placeholders.is_empty() && p.deletes.is_empty());
        // Option off: ours are deleted with uid and resourceVersion.
        w.configs[0].effective = Some(Arc::new(parse(Some(CONFIG)).unwrap()));
        let p = w.plan();
        assert_eq!(p.deletes.len(), 1);
        assert_eq!(
            (
                p.deletes[0].namespace.as_str(),
                p.deletes[0].resource_version.as_deref()
            ),
            ("dev-bob", Some("7"))
        );
    }

    #[test]
    fn the_operators_placeholders_are_taken_over_and_the_older_domain_wins() {
        let mut w = World::new(&format!("{CONFIG}enablePlaceholderServices: true"));
        w.svc("prod", "my-app");
        let s = w.svc("dev-bob", "my-app");
        s.type_ = "ExternalName".into();
        s.external_name = "my-app.prod.svc.cluster.local".into();
        s.annotations
            .insert(OPERATOR_PLACEHOLDER_ANNOTATION.into(), "true".into());
        // An ExternalName into "default" without a marker is a real Service (no guessing).
        let s = w.svc("staging", "my-app");
        s.type_ = "ExternalName".into();
        s.external_name = "my-app.default.svc.cluster.local".into();
        // A second, younger domain wants dev-alice too.
        w.config("team", "young", "2026-03-01T00:00:00Z", "defaultNamespace: prod2\ndeveloperNamespaces: [dev-alice]\nenablePlaceholderServices: true");
        w.namespaces.insert("prod2".into(), NamespaceIn::default());
        w.svc("prod2", "my-app");
        let p = w.plan();
        let bob = p
            .placeholders
            .iter()
            .find(|p| p.namespace == "dev-bob")
            .unwrap();
        assert_eq!(bob.resource_version.as_deref(), Some("7"));
        let alice: Vec<_> = p
            .placeholders
            .iter()
            .filter(|p| p.namespace == "dev-alice")
            .collect();
        assert_eq!(alice.len(), 1);
        assert_eq!(
            alice[0].body["spec"]["externalName"],
            "my-app.prod.svc.cluster.local"
        );
        assert_eq!(
            w.routes(&p, "my-app"),
            ["staging"],
            "an unmarked ExternalName is a real copy"
        );
    }

    #[test]
    fn a_template_is_honoured() {
        let t = "defaultNamespace: prod\ndeveloperNamespaces: [dev-alice]\nvirtualServiceTemplate: |\n  apiVersion: networking.istio.io/v1beta1\n  kind: VirtualService\n  metadata:\n    name: ${serviceName}\n    labels: {team: web, fleetmirror.io/service: theirs}\n  spec:\n    hosts: [${serviceName}, ${serviceName}.example.com]\n    gateways: [mesh, prod/public]\n    http:\n    - name: primary\n      route: [{destination: {host: ${serviceName}.${defaultNamespace}.svc.cluster.local, port: {number: 8080.0}}}]\n    corsPolicy:\n";
        let mut w = World::new(t);
        w.svc("prod", "my-app");
        w.svc("dev-alice", "my-app");
        let p = w.plan();
        let b = &p.applies[0].body;
        assert_eq!(b["metadata"]["name"], "my-app");
        assert_eq!(b["metadata"]["labels"]["team"], "web");
        assert_eq!(
            b["metadata"]["labels"]["fleetmirror.io/service"], "my-app",
            "ours win a clash"
        );
        assert_eq!(b["spec"]["gateways"], json!(["mesh", "prod/public"]));
        let names: Vec<_> = b["spec"]["http"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            ["dev-dev-alice", "primary"],
            "no default route: the template's are the fallback"
        );
        // Stored as the server stores it: no nulls, integral numbers as integers.
        assert_eq!(
            b["spec"]["http"][1]["route"][0]["destination"]["port"]["number"],
            json!(8080)
        );
        assert!(b["spec"].get("corsPolicy").is_none());
        // A label dropped from the template is removed by the next apply.
        w.settle();
        assert!(w.plan().applies.is_empty());
        w.configs[0].effective = Some(Arc::new(
            parse(Some(&t.replace("team: web, ", ""))).unwrap(),
        ));
        assert_eq!(w.plan().applies.len(), 1);
    }

    #[cfg(feature = "evaluator")]
    #[test]
    fn golden_requests_through_a_generated_virtual_service() {
        use crate::routing::evaluate::{destination, golden};
        for (header, baggage) in [
            ("x-developer", Some("dev-namespace")),
            ("x-dev", Some("ot.dev.ns")),
            ("x-developer", None),
        ] {
            let text = format!(
                "{CONFIG}header: {header}\n{}",
                baggage
                    .map(|b| format!("baggageKey: {b}\n"))
                    .unwrap_or_default()
            );
            let mut w = World::new(&text);
            w.svc("prod", "my-app");
            w.svc("staging", "my-app");
            w.svc("dev-alice", "my-app");
            let p = w.plan();
            for (what, request, want) in golden(
                "my-app",
                "prod",
                "staging",
                "dev-alice",
                "dev-bob",
                header,
                baggage,
                DOMAIN,
            ) {
                assert_eq!(
                    destination(&p.applies[0].body, &request)
                        .unwrap()
                        .as_deref(),
                    Some(want.as_str()),
                    "{what} ({header}, {baggage:?})"
                );
            }
        }
    }
}
