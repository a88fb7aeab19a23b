//! The routing controller (routing.md): Istio VirtualServices that send a request carrying
//! `x-developer: <namespace>` (or a W3C baggage member) to that developer's copy of a Service
//! and everything else to production, from the VirtualService operator's ConfigMap, labelled.
//! Its decisions are pure functions in `fleetmirror_core::routing` (config, template, the pass);
//! this room owns the watches, the VirtualService API version, the writes, what the controller
//! remembers between passes, Events, metrics and the Diagnostics view.
//!
//! Inputs: ConfigMaps labelled `fleetmirror.io/routing=true` (optionally only in
//! `--routing-config-namespaces`), Namespaces (metadata), Services (only what planning reads:
//! identity, type, externalName and the marker keys), VirtualServices (of the discovered
//! version; whole spec only for ours). Every change triggers a full in-memory pass (changes
//! coalesced for 20 ms), and so does `--routing-resync-interval`; a pass writes only
//! differences. Every replica watches and plans (any replica answers `ListRoutes`); only the
//! leader writes objects and Events, fenced by its term.
//!
//! What the controller remembers between passes (lost on restart, which costs nothing: the
//! next pass compares with what is there):
//! * each config's last good version (a refused one keeps it in effect), and which versions
//!   were refused (`InvalidConfig` once per resourceVersion);
//! * writes whose result the watch has not delivered yet, so a pass right after a write does
//!   not write again;
//! * failed writes, retried with per-object backoff (0.5 s doubling to 60 s), re-planned from
//!   the current state at every attempt;
//! * the conditions said in Events, so each is said once while it holds.
//!
//! The VirtualService API version is discovered: `networking.istio.io/v1` when served, else
//! `v1beta1`; checked at start, every 5 s while neither is served, every 60 s after, and at
//! once when the VirtualService watch fails. Without either, the controller waits (log line,
//! `fleetmirror_routing_api_version{version="none"} 1`, `Pending` in Diagnostics) and `/readyz`
//! stays ready, its `routing` line saying what it waits for.

pub mod view;

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use fleetmirror_core::routing::config::{Config, parse};
use fleetmirror_core::routing::plan::{
    self, ConfigIn, ConfigState, DeleteKind, Key, NamespaceIn, ObjectRef, RouteState, ServiceIn,
    Settings, VirtualServiceIn,
};
use fleetmirror_core::routing::{MANAGED_BY, MANAGED_BY_VALUE, ROUTING_KEY, SERVICE_KEYS};
use fleetmirror_core::status::Event;
use fleetmirror_runtime::admin::ReadyFlag;
use fleetmirror_runtime::shutdown::BoxError;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ObjectReference};
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams, Preconditions,
};
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use serde_json::Value;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::mirror::kinds::when_listed;
use crate::mirror::trim_namespace;
use crate::platform::{Context, EventRecorder, FIELD_MANAGER, Fenced, Term};
pub use view::{RoutingMetrics, RoutingView};

/// The name used in metrics and `--controllers`.
pub const NAME: &str = "routing";
/// How long a pass waits after the first change (changes coalesced; at most 100 ms).
const DEBOUNCE: Duration = Duration::from_millis(20);
/// What a write returned stands in for the watch at most this long.
const INFLIGHT_TTL: Duration = Duration::from_secs(30);
/// Writes in flight at once.
const WRITE_CONCURRENCY: usize = 8;
/// Discovery while no VirtualService API is served, and after.
const DISCOVERY_WAITING: Duration = Duration::from_secs(5);
const DISCOVERY_FOUND: Duration = Duration::from_secs(60);
/// The VirtualService watch of each version (named per version: a switch stops one watch and
/// starts the other, and the old one's cleanup must not remove the new one's state).
fn watch_vs(version: &str) -> &'static str {
    if version == "v1" {
        "routing-virtualservices-v1"
    } else {
        "routing-virtualservices-v1beta1"
    }
}
/// The shortest time between two discoveries woken by a failing VirtualService watch.
const DISCOVERY_MIN: Duration = Duration::from_secs(5);
const WATCHES: [&str; 3] = [
    "routing-configmaps",
    "routing-namespaces",
    "routing-services",
];

/// The controller's configuration (from its flags).
#[derive(Debug, Clone)]
pub struct RoutingConfig {
    /// `--cluster-domain` and `--routing-config-namespaces`.
    pub settings: Settings,
    /// `--routing-resync-interval`.
    pub resync_interval: Duration,
}

impl RoutingConfig {
    /// Checks and converts the flags.
    pub fn from_args(a: &crate::args::RoutingArgs) -> Result<Self, String> {
        fleetmirror_core::naming::validate_dns1123_subdomain(&a.cluster_domain)
            .map_err(|e| format!("--cluster-domain {:?} {e}", a.cluster_domain))?;
        if a.routing_resync_interval.is_zero() {
            return Err("--routing-resync-interval must be greater than zero".into());
        }
        let namespaces = crate::args::namespace_list(
            "--routing-config-namespaces",
            &a.routing_config_namespaces,
        )?;
        Ok(RoutingConfig {
            settings: Settings {
                domain: a.cluster_domain.clone(),
                config_namespaces: namespaces,
            },
            resync_interval: a.routing_resync_interval,
        })
    }
}

/// Per-object backoff after a failed write: 0.5 s doubling to 60 s.
#[derive(Debug, Clone)]
struct Failure {
    fingerprint: u64,
    failures: u32,
    next: Instant,
    message: String,
    permanent: bool,
}

impl Failure {
    fn delay(failures: u32) -> Duration {
        Duration::from_millis(500)
            .saturating_mul(1u32 << failures.saturating_sub(1).min(10))
            .min(Duration::from_secs(60))
    }
}

/// `(op kind, namespace, name)`: what the write memory is keyed by.
type ObjKey = (&'static str, String, String);

/// A write on its way to the watch: its body's fingerprint and the resourceVersion it returned.
#[derive(Debug, Clone)]
struct InFlight {
    fingerprint: u64,
    resource_version: u64,
    at: Instant,
    /// The write created the object (until the watch shows it, its absence is expected).
    created: bool,
}

/// Each config's memory.
#[derive(Debug, Clone, Default)]
struct ConfigMemory {
    /// The resourceVersion last parsed.
    resource_version: String,
    /// The version in effect.
    effective: Option<Arc<Config>>,
    /// Why the current version is refused, with the refused resourceVersion.
    invalid: Option<String>,
    /// A version was refused since the last good one.
    was_invalid: bool,
    /// Changes whenever `effective` does.
    version: u64,
}

/// Everything remembered between passes.
#[derive(Debug, Default)]
struct Memory {
    configs: HashMap<String, ConfigMemory>,
    inflight: HashMap<ObjKey, InFlight>,
    gone: HashMap<ObjKey, (String, Instant)>,
    failures: HashMap<ObjKey, Failure>,
    /// UID → reason → note said.
    said: HashMap<String, BTreeMap<&'static str, String>>,
    /// Config UIDs whose `ConfigLoaded` is due.
    loaded: BTreeSet<String>,
    /// What the last pass found up to date (`Plan::fresh`).
    fresh: HashMap<u64, String>,
    /// Counts config versions taken into effect (`ConfigIn::version`).
    versions: u64,
}

/// Runs the controller until shutdown.
pub struct RoutingController {
    ctx: Context,
    config: RoutingConfig,
    view: Arc<RoutingView>,
    metrics: RoutingMetrics,
    ready: ReadyFlag,
}

impl std::fmt::Debug for RoutingController {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoutingController")
            .field("config", &self.config)
            .finish()
    }
}

fn keep_keys(m: &mut Option<BTreeMap<String, String>>) {
    if let Some(map) = m {
        map.retain(|k, _| SERVICE_KEYS.contains(&k.as_str()));
        if map.is_empty() {
            *m = None;
        }
    }
}

/// A Service as planning reads it.
fn trim_service(s: &mut SlimService) {
    let m = &mut s.metadata;
    m.managed_fields = None;
    m.owner_references = None;
    m.finalizers = None;
    keep_keys(&mut m.labels);
    keep_keys(&mut m.annotations);
}

/// A Service as the routing controller reads it, decoded straight into what planning needs
/// (the rest of each object is never allocated: a cluster's other Services cost next to
/// nothing).
#[derive(Clone, Debug, serde::Deserialize)]
struct SlimService {
    metadata: kube::api::ObjectMeta,
    spec: Option<SlimServiceSpec>,
}

#[derive(Clone, Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct SlimServiceSpec {
    #[serde(rename = "type")]
    type_: Option<String>,
    external_name: Option<String>,
}

impl kube::Resource for SlimService {
    type DynamicType = ();
    type Scope = k8s_openapi::NamespaceResourceScope;

    fn kind(_: &()) -> std::borrow::Cow<'_, str> {
        "Service".into()
    }
    fn group(_: &()) -> std::borrow::Cow<'_, str> {
        "".into()
    }
    fn version(_: &()) -> std::borrow::Cow<'_, str> {
        "v1".into()
    }
    fn plural(_: &()) -> std::borrow::Cow<'_, str> {
        "services".into()
    }
    fn meta(&self) -> &kube::api::ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut kube::api::ObjectMeta {
        &mut self.metadata
    }
}

/// A VirtualService: ours whole, others' metadata labels, hosts and gateways; our field
/// manager's managedFields entry only.
fn trim_virtual_service(o: &mut DynamicObject) {
    let ours = o
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(MANAGED_BY))
        .is_some_and(|v| v == MANAGED_BY_VALUE);
    // Of managedFields (a JSON tree per entry), only which spec keys, labels and annotations our
    // applies own, as one list of `s:`/`l:`/`a:` + key (see `owned_keys`).
    let owned: Option<Vec<Value>> = o.metadata.managed_fields.take().and_then(|mf| {
        let ours: Vec<_> = mf
            .iter()
            .filter(|e| {
                e.manager.as_deref() == Some(FIELD_MANAGER)
                    && e.operation.as_deref() == Some("Apply")
            })
            .filter_map(|e| e.fields_v1.as_ref())
            .collect();
        if ours.is_empty() {
            return None;
        }
        let mut keys = BTreeSet::new();
        for f in ours {
            for (tag, path) in [
                ("s:", &["f:spec"][..]),
                ("l:", &["f:metadata", "f:labels"][..]),
                ("a:", &["f:metadata", "f:annotations"][..]),
            ] {
                let mut v = Some(&f.0);
                for p in path {
                    v = v.and_then(|v| v.get(p));
                }
                for k in v
                    .and_then(Value::as_object)
                    .into_iter()
                    .flat_map(|o| o.keys())
                {
                    if let Some(k) = k.strip_prefix("f:") {
                        keys.insert(format!("{tag}{k}"));
                    }
                }
            }
        }
        Some(keys.into_iter().map(Value::String).collect())
    });
    if !ours {
        o.metadata.annotations = None;
        o.metadata.owner_references = None;
        // Of another's labels, only the operator's ownership label is read (adoption).
        if let Some(l) = &mut o.metadata.labels {
            l.retain(|k, _| k == fleetmirror_core::routing::OPERATOR_MANAGED_BY.0);
            if l.is_empty() {
                o.metadata.labels = None;
            }
        }
    }
    if let Value::Object(data) = &mut o.data {
        data.remove("status");
        if let Some(owned) = owned.filter(|_| ours) {
            data.insert(OWNED_KEYS.into(), Value::Array(owned));
        }
        if let Some(Value::Object(spec)) = data.get_mut("spec") {
            if ours {
                *spec = fleetmirror_core::routing::plan::spec_fingerprints(spec);
            } else {
                spec.retain(|k, _| k == "hosts" || k == "gateways");
            }
        }
    }
}

/// Where [`trim_virtual_service`] keeps the keys our applies own.
const OWNED_KEYS: &str = "fleetmirrorOwnedKeys";

/// The keys tagged `tag` in what [`trim_virtual_service`] kept (None: unknown).
fn owned_keys(o: &DynamicObject, tag: &str) -> Option<BTreeSet<String>> {
    let list = o.data.get(OWNED_KEYS)?.as_array()?;
    Some(
        list.iter()
            .filter_map(|k| k.as_str()?.strip_prefix(tag).map(str::to_owned))
            .collect(),
    )
}

fn vs_ar(version: &str) -> ApiResource {
    ApiResource {
        group: "networking.istio.io".into(),
        version: version.into(),
        api_version: format!("networking.istio.io/{version}"),
        kind: "VirtualService".into(),
        plural: "virtualservices".into(),
    }
}

fn services_ar() -> ApiResource {
    ApiResource {
        group: String::new(),
        version: "v1".into(),
        api_version: "v1".into(),
        kind: "Service".into(),
        plural: "services".into(),
    }
}

/// The VirtualService version served: `Ok(None)` when neither is, `Err` when discovery did
/// not answer (keep what is in use).
async fn discover(client: &kube::Client) -> Result<Option<&'static str>, kube::Error> {
    for version in ["v1", "v1beta1"] {
        match client
            .list_api_group_resources(&format!("networking.istio.io/{version}"))
            .await
        {
            Ok(list) if list.resources.iter().any(|r| r.name == "virtualservices") => {
                return Ok(Some(version));
            }
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

/// The watch of VirtualServices of one version.
struct VsWatch {
    version: &'static str,
    store: Store<DynamicObject>,
    listed: Arc<AtomicBool>,
    stop: CancellationToken,
}

impl Drop for VsWatch {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn fingerprint(v: &Value) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    v.to_string().hash(&mut h);
    h.finish()
}

fn numeric_rv(rv: Option<&str>) -> Option<u64> {
    rv.and_then(|v| v.parse().ok())
}

fn reason_of(e: &Fenced<kube::Error>) -> (&'static str, String, bool) {
    match e {
        Fenced::Lost => ("other", "leadership ended".into(), false),
        Fenced::TimedOut(d) => ("unavailable", format!("no answer within {d:?}"), false),
        Fenced::Failed(kube::Error::Api(s)) => {
            let reason = match s.code {
                409 => "conflict",
                403 => "forbidden",
                400 | 422 => "invalid",
                404 => "not_found",
                429 | 500..=599 => "unavailable",
                _ => "other",
            };
            let permanent = matches!(s.code, 400 | 403 | 422);
            (reason, format!("{} ({})", s.message, s.code), permanent)
        }
        Fenced::Failed(other) => ("unavailable", other.to_string(), false),
    }
}

/// One write of a pass.
#[derive(Debug)]
enum Op {
    Apply {
        key: Key,
        body: Value,
        force: bool,
        service: Key,
    },
    Delete {
        kind: DeleteKind,
        key: Key,
        uid: String,
        resource_version: Option<String>,
    },
    Placeholder {
        key: Key,
        body: Value,
        resource_version: Option<String>,
    },
}

impl Op {
    fn key(&self) -> ObjKey {
        match self {
            Op::Apply { key, .. } => ("vs", key.0.clone(), key.1.clone()),
            Op::Delete {
                kind: DeleteKind::VirtualService,
                key,
                ..
            } => ("vs", key.0.clone(), key.1.clone()),
            Op::Delete { key, .. } | Op::Placeholder { key, .. } => {
                ("svc", key.0.clone(), key.1.clone())
            }
        }
    }

    /// What is written (for deletes: the UID).
    fn fingerprint(&self) -> u64 {
        match self {
            Op::Apply { body, .. } | Op::Placeholder { body, .. } => fingerprint(body),
            Op::Delete { uid, .. } => fingerprint(&Value::String(uid.clone())),
        }
    }

    fn op(&self) -> &'static str {
        match self {
            Op::Apply { .. } => "apply",
            Op::Delete {
                kind: DeleteKind::VirtualService,
                ..
            } => "delete",
            Op::Delete { .. } => "placeholder_delete",
            Op::Placeholder {
                resource_version: None,
                ..
            } => "placeholder_create",
            Op::Placeholder { .. } => "placeholder_update",
        }
    }
}

/// A write's outcome: the resourceVersion it produced (deletes: none).
type Outcome = Result<Option<String>, Fenced<kube::Error>>;

impl RoutingController {
    /// A controller on `ctx` with `config`, publishing to `view` and `metrics`, ready through
    /// `ready`.
    pub fn new(
        ctx: Context,
        config: RoutingConfig,
        view: Arc<RoutingView>,
        metrics: RoutingMetrics,
        ready: ReadyFlag,
    ) -> Self {
        Self {
            ctx,
            config,
            view,
            metrics,
            ready,
        }
    }

    /// Watches, plans and writes until shutdown.
    pub async fn run(self) -> Result<(), BoxError> {
        let shutdown = self.ctx.tasks.token().clone();
        let trigger = Arc::new(Notify::new());
        let w = &self.ctx.watches;
        let configs = w.store(
            Api::<ConfigMap>::all(w.client().clone()),
            watcher::Config::default().labels(&format!("{ROUTING_KEY}=true")),
            fleetmirror_runtime::watch::trim_managed_fields::<ConfigMap>,
            &trigger,
            WATCHES[0],
        );
        let namespaces = w.store(
            Api::<PartialObjectMeta<Namespace>>::all(w.client().clone()),
            watcher::Config::default(),
            trim_namespace,
            &trigger,
            WATCHES[1],
        );
        let services = w.store(
            Api::<SlimService>::all(w.client().clone()),
            watcher::Config::default(),
            trim_service,
            &trigger,
            WATCHES[2],
        );
        let listed = [
            when_listed(&configs, &trigger, &shutdown),
            when_listed(&namespaces, &trigger, &shutdown),
            when_listed(&services, &trigger, &shutdown),
        ];
        let mut vs: Option<VsWatch> = None;
        let mut memory = Memory::default();
        let events = self.ctx.events(NAME);
        let mut leadership = self.ctx.leadership.clone();
        let mut next_discovery = Instant::now();
        let mut next_resync = Instant::now() + self.config.resync_interval;
        let mut waiting_logged = false;
        let mut last_discovery = Instant::now();
        self.metrics.api_version(None);
        loop {
            let now = Instant::now();
            // The VirtualService API: discovered on schedule, and at once when its watch fails.
            let vs_failing = vs.as_ref().is_some_and(|v| {
                v.listed.load(std::sync::atomic::Ordering::Relaxed) && w.erring(watch_vs(v.version))
            });
            if now >= next_discovery || vs_failing && now >= last_discovery + DISCOVERY_MIN {
                last_discovery = now;
                match discover(&self.ctx.client).await {
                    Ok(version) => {
                        if version != vs.as_ref().map(|v| v.version) {
                            // The old watch stops before the new one starts.
                            drop(vs.take());
                            vs = version.map(|version| {
                                let stop = shutdown.child_token();
                                let store = w.dynamic_store_until(
                                    &vs_ar(version),
                                    None,
                                    watcher::Config::default(),
                                    trim_virtual_service,
                                    &trigger,
                                    watch_vs(version),
                                    Some(stop.clone()),
                                    None,
                                );
                                let listed = when_listed(&store, &trigger, &stop);
                                tracing::info!(version = %format!("networking.istio.io/{version}"), "routing: VirtualServices are served; routing starts");
                                VsWatch { version, store, listed, stop }
                            });
                            self.metrics.api_version(version);
                            if version.is_none() {
                                waiting_logged = false;
                            }
                        }
                        if vs.is_none() && !waiting_logged {
                            tracing::info!(
                                "routing: waiting for the VirtualService API (networking.istio.io v1 or v1beta1 virtualservices); checked every 5s"
                            );
                            waiting_logged = true;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "routing: discovering the VirtualService API failed; trying again")
                    }
                }
                next_discovery = Instant::now()
                    + if vs.is_some() {
                        DISCOVERY_FOUND
                    } else {
                        DISCOVERY_WAITING
                    };
            }
            if now >= next_resync {
                next_resync = now + self.config.resync_interval;
            }

            let base_listed = listed
                .iter()
                .all(|l| l.load(std::sync::atomic::Ordering::Relaxed));
            if base_listed {
                match &vs {
                    Some(_) => self.ready.set(true),
                    None => self
                        .ready
                        .set_note("waiting for the VirtualService API (networking.istio.io)"),
                }
                let started = Instant::now();
                self.pass(
                    &configs,
                    &namespaces,
                    &services,
                    vs.as_ref(),
                    &mut memory,
                    &events,
                )
                .await;
                self.metrics.pass(started.elapsed().as_secs_f64());
            }

            // Sleep until a change, a retry, a discovery or the resync.
            let mut wake = next_discovery.min(next_resync);
            if let Some(t) = memory
                .failures
                .values()
                .map(|f| f.next)
                .filter(|t| *t > Instant::now())
                .min()
            {
                wake = wake.min(t);
            }
            if let Some(t) = memory
                .inflight
                .values()
                .filter(|f| f.created && f.at + INFLIGHT_TTL > Instant::now())
                .map(|f| f.at + INFLIGHT_TTL)
                .min()
            {
                wake = wake.min(t.max(Instant::now() + Duration::from_millis(50)));
            }
            tokio::select! {
                _ = trigger.notified() => tokio::time::sleep(DEBOUNCE).await,
                _ = tokio::time::sleep_until(wake.into()) => {}
                r = leadership.changed() => if r.is_err() { return Ok(()) },
                _ = shutdown.cancelled() => return Ok(()),
            }
        }
    }

    /// Parses configs whose version changed; returns the inputs of the pass.
    fn configs(
        &self,
        store: &Store<ConfigMap>,
        memory: &mut Memory,
    ) -> (Vec<ConfigIn>, Vec<(ObjectRef, Event)>) {
        let mut out = Vec::new();
        let mut conditions = Vec::new();
        let mut live = BTreeSet::new();
        for cm in store.state() {
            let m = &cm.metadata;
            let (Some(ns), Some(name), Some(uid)) = (&m.namespace, &m.name, &m.uid) else {
                continue;
            };
            if !self
                .config
                .settings
                .config_namespaces
                .as_ref()
                .is_none_or(|s| s.contains(ns))
            {
                continue;
            }
            live.insert(uid.clone());
            let rv = m.resource_version.clone().unwrap_or_default();
            let mem = memory.configs.entry(uid.clone()).or_default();
            if mem.resource_version != rv || (mem.effective.is_none() && mem.invalid.is_none()) {
                mem.resource_version = rv.clone();
                let text = cm
                    .data
                    .as_ref()
                    .and_then(|d| d.get("config.yaml"))
                    .map(String::as_str);
                match parse(text) {
                    Ok(c) => {
                        if mem.was_invalid {
                            memory.loaded.insert(uid.clone());
                        }
                        mem.effective = Some(Arc::new(c));
                        memory.versions += 1;
                        mem.version = memory.versions;
                        mem.invalid = None;
                        mem.was_invalid = false;
                    }
                    Err(e) => {
                        self.metrics.config_error(e.reason);
                        tracing::warn!(configmap = %format!("{ns}/{name}"), resource_version = %rv, error = %e.message, "routing: config refused; {}",
                            if mem.effective.is_some() { "its last good version stays in effect" } else { "no good version known: its domain is left as it is" });
                        mem.invalid = Some(e.message);
                        mem.was_invalid = true;
                    }
                }
            }
            let object = ObjectRef {
                kind: "ConfigMap",
                namespace: ns.clone(),
                name: name.clone(),
                uid: uid.clone(),
            };
            if let Some(msg) = &mem.invalid {
                let kept = if mem.effective.is_some() {
                    "; the last good version stays in effect"
                } else {
                    "; no good version is known, so nothing is changed"
                };
                // Said once per resourceVersion: the version is part of the note (so the
                // recorder's deduplication does not swallow a second edit with the same error).
                conditions.push((
                    object,
                    Event {
                        warning: true,
                        reason: "InvalidConfig",
                        note: format!("{msg}{kept} (resourceVersion {rv})"),
                    },
                ));
            }
            out.push(ConfigIn {
                namespace: ns.clone(),
                name: name.clone(),
                uid: uid.clone(),
                created: m
                    .creation_timestamp
                    .as_ref()
                    .map(|t| t.0.to_string())
                    .unwrap_or_default(),
                effective: mem.effective.clone(),
                invalid: mem.invalid.clone(),
                version: mem.version,
            });
        }
        memory.configs.retain(|uid, _| live.contains(uid));
        memory.loaded.retain(|uid| live.contains(uid));
        (out, conditions)
    }

    #[allow(clippy::too_many_arguments)]
    async fn pass(
        &self,
        configs: &Store<ConfigMap>,
        namespaces: &Store<PartialObjectMeta<Namespace>>,
        services: &Store<SlimService>,
        vs: Option<&VsWatch>,
        memory: &mut Memory,
        events: &EventRecorder,
    ) {
        let w = &self.ctx.watches;
        let (config_inputs, mut config_conditions) = self.configs(configs, memory);
        let ns_in: BTreeMap<String, NamespaceIn> = namespaces
            .state()
            .iter()
            .filter_map(|n| {
                Some((
                    n.metadata.name.clone()?,
                    NamespaceIn {
                        labels: n.metadata.labels.clone().unwrap_or_default(),
                        terminating: n.metadata.deletion_timestamp.is_some(),
                    },
                ))
            })
            .collect();
        let svc_in: BTreeMap<Key, ServiceIn> = services
            .state()
            .iter()
            .filter_map(|s| {
                let m = &s.metadata;
                let spec = s.spec.as_ref();
                Some((
                    (m.namespace.clone()?, m.name.clone()?),
                    ServiceIn {
                        uid: m.uid.clone().unwrap_or_default(),
                        resource_version: m.resource_version.clone().unwrap_or_default(),
                        type_: spec
                            .and_then(|s| s.type_.clone())
                            .unwrap_or_else(|| "ClusterIP".into()),
                        external_name: spec
                            .and_then(|s| s.external_name.clone())
                            .unwrap_or_default(),
                        labels: m.labels.clone().unwrap_or_default(),
                        annotations: m.annotations.clone().unwrap_or_default(),
                    },
                ))
            })
            .collect();
        // Borrowed from the store for the pass: nothing it only reads is copied.
        let vs_state = vs.map(|v| v.store.state()).unwrap_or_default();
        let mut vs_in: BTreeMap<Key, VirtualServiceIn<'_>> = BTreeMap::new();
        let mut vs_rv: HashMap<Key, u64> = HashMap::new();
        let vs_ready = vs.is_some_and(|v| v.listed.load(std::sync::atomic::Ordering::Relaxed));
        {
            for o in &vs_state {
                let m = &o.metadata;
                let (Some(ns), Some(name)) = (m.namespace.clone(), m.name.clone()) else {
                    continue;
                };
                if let Some(rv) = numeric_rv(m.resource_version.as_deref()) {
                    vs_rv.insert((ns.clone(), name.clone()), rv);
                }
                vs_in.insert(
                    (ns, name),
                    VirtualServiceIn {
                        uid: Cow::Borrowed(m.uid.as_deref().unwrap_or_default()),
                        resource_version: Cow::Borrowed(
                            m.resource_version.as_deref().unwrap_or_default(),
                        ),
                        labels: m.labels.as_ref().map_or_else(Cow::default, Cow::Borrowed),
                        annotations: m
                            .annotations
                            .as_ref()
                            .map_or_else(Cow::default, Cow::Borrowed),
                        owner_references: m
                            .owner_references
                            .iter()
                            .flatten()
                            .filter_map(|r| serde_json::to_value(r).ok())
                            .collect(),
                        spec: o
                            .data
                            .get("spec")
                            .and_then(Value::as_object)
                            .map_or_else(Cow::default, Cow::Borrowed),
                        managed_spec_keys: owned_keys(o, "s:"),
                        managed_labels: owned_keys(o, "l:"),
                        managed_annotations: owned_keys(o, "a:"),
                    },
                );
            }
        }
        let vs_healthy = vs_ready && vs.is_some_and(|v| !w.erring(watch_vs(v.version)));
        let gc = vs_healthy && !WATCHES.iter().any(|n| w.erring(n));
        let mut plan = plan::plan(
            plan::Input {
                configs: &config_inputs,
                namespaces: &ns_in,
                services: &svc_in,
                virtual_services: &vs_in,
                fresh: &memory.fresh,
                compare: vs_healthy,
                gc,
            },
            &self.config.settings,
        );
        memory.fresh = std::mem::take(&mut plan.fresh);

        // What to write: skip writes the watch has not caught up with, and objects in backoff.
        let now = Instant::now();
        memory
            .gone
            .retain(|_, (_, at)| now.duration_since(*at) < INFLIGHT_TTL);
        let svc_rv = |k: &Key| {
            svc_in
                .get(k)
                .and_then(|s| numeric_rv(Some(&s.resource_version)))
        };
        let mut ops = Vec::new();
        let mut wanted: BTreeSet<ObjKey> = BTreeSet::new();
        // Moved out of the plan, not copied (a first start writes every VirtualService).
        for a in std::mem::take(&mut plan.applies) {
            let mut body = a.body;
            if let Some(v) = vs {
                body["apiVersion"] = Value::String(format!("networking.istio.io/{}", v.version));
                body["kind"] = Value::String("VirtualService".into());
            }
            ops.push(Op::Apply {
                key: (a.namespace, a.name),
                body,
                force: a.force,
                service: a.service,
            });
        }
        for p in std::mem::take(&mut plan.placeholders) {
            ops.push(Op::Placeholder {
                key: (p.namespace, p.name),
                body: p.body,
                resource_version: p.resource_version,
            });
        }
        for d in &plan.deletes {
            ops.push(Op::Delete {
                kind: d.kind,
                key: (d.namespace.clone(), d.name.clone()),
                uid: d.uid.clone(),
                resource_version: d.resource_version.clone(),
            });
        }
        ops.retain(|op| {
            let key = op.key();
            wanted.insert(key.clone());
            let fp = op.fingerprint();
            let observed_rv = match op {
                Op::Apply { key, .. } => vs_rv.get(key).copied(),
                Op::Placeholder { key, .. } => svc_rv(key),
                Op::Delete { uid, .. } => {
                    if memory.gone.get(&key).is_some_and(|(g, _)| g == uid) {
                        return false; // deleted; the watch has not delivered it yet
                    }
                    None
                }
            };
            if let Some(f) = memory.inflight.get(&key)
                && f.fingerprint == fp
            {
                let waiting = match observed_rv {
                    // The store has not caught up with our write, or holds exactly what it
                    // returned (the server stores what we send differently: sending it again
                    // would change nothing, and would loop).
                    Some(rv) => rv <= f.resource_version,
                    // Created and not delivered yet; once delivered, gone means deleted since.
                    None => f.created && now.duration_since(f.at) < INFLIGHT_TTL,
                };
                if waiting {
                    return false;
                }
            }
            // In backoff after a failure, unless what is to be written changed.
            memory
                .failures
                .get(&key)
                .is_none_or(|f| f.next <= now || f.fingerprint != fp)
        });
        memory.failures.retain(|k, _| wanted.contains(k));
        memory.inflight.retain(|k, _| wanted.contains(k));
        let term = self.ctx.leadership.term();
        // Nothing is written before the VirtualService store holds a complete list: with an
        // empty store every VirtualService would look missing and every conflict absent.
        let writing = term.is_some() && vs_healthy;
        let mut outcomes: HashMap<Key, (RouteState, String)> = HashMap::new();
        if let (Some(term), true) = (&term, writing && !ops.is_empty()) {
            let client = self.ctx.client.clone();
            let vs_api_version = vs.map(|v| v.version).unwrap_or("v1");
            let results: Vec<(Op, Outcome, u64)> = futures::stream::iter(ops)
                .map(|op| {
                    let client = client.clone();
                    async move {
                        let fp = op.fingerprint();
                        let r = write(term, &client, vs_api_version, &op).await;
                        (op, r, fp)
                    }
                })
                .buffer_unordered(WRITE_CONCURRENCY)
                .collect()
                .await;
            let now = Instant::now();
            for (op, result, fp) in results {
                let key = op.key();
                let name = op.op();
                match result {
                    Ok(rv) => {
                        self.metrics.write(name);
                        memory.failures.remove(&key);
                        match &op {
                            Op::Delete { uid, .. } => {
                                memory.gone.insert(key, (uid.clone(), now));
                            }
                            _ => {
                                if let Some(rv) = numeric_rv(rv.as_deref()) {
                                    memory.inflight.insert(
                                        key,
                                        InFlight {
                                            fingerprint: fp,
                                            resource_version: rv,
                                            at: now,
                                            created: matches!(
                                                op,
                                                Op::Apply { force: false, .. }
                                                    | Op::Placeholder {
                                                        resource_version: None,
                                                        ..
                                                    }
                                            ),
                                        },
                                    );
                                }
                            }
                        }
                        if let Op::Apply { service, .. } = &op {
                            outcomes.insert(service.clone(), (RouteState::Synced, String::new()));
                        }
                    }
                    Err(Fenced::Lost) => {}
                    Err(e) => {
                        let (reason, message, permanent) = reason_of(&e);
                        // A delete of something already gone is done.
                        if reason == "not_found" && matches!(op, Op::Delete { .. }) {
                            memory.failures.remove(&key);
                            continue;
                        }
                        self.metrics.write_error(name, reason);
                        let f = memory.failures.entry(key.clone()).or_insert(Failure {
                            fingerprint: fp,
                            failures: 0,
                            next: now,
                            message: String::new(),
                            permanent,
                        });
                        if f.fingerprint != fp {
                            f.failures = 0;
                            f.fingerprint = fp;
                        }
                        f.failures += 1;
                        f.next = now + Failure::delay(f.failures);
                        f.message = format!("{name} failed: {message}");
                        f.permanent = permanent;
                        tracing::warn!(kind = key.0, namespace = %key.1, name = %key.2, op = name, error = %message, retry_in = ?Failure::delay(f.failures), "routing write failed");
                    }
                }
            }
        }

        // Events (leader only): conditions said once while they hold.
        if term.is_none() {
            // A standby says nothing; what it parsed is not news when it leads later.
            memory.loaded.clear();
        }
        if let Some(term) = &term {
            let mut holding: HashMap<String, (ObjectRef, Vec<Event>)> = HashMap::new();
            for (object, event) in config_conditions.drain(..) {
                holding
                    .entry(object.uid.clone())
                    .or_insert_with(|| (object, vec![]))
                    .1
                    .push(event);
            }
            for c in &plan.conditions {
                holding
                    .entry(c.object.uid.clone())
                    .or_insert_with(|| (c.object.clone(), vec![]))
                    .1
                    .push(c.event.clone());
            }
            let mut said = std::mem::take(&mut memory.said);
            let mut now_said: HashMap<String, BTreeMap<&'static str, String>> = HashMap::new();
            for (uid, (object, conditions)) in holding {
                let before = said.remove(&uid).unwrap_or_default();
                let mut keep = BTreeMap::new();
                let reference = object_reference(&object);
                for e in conditions {
                    let key = e.note.clone();
                    if before.get(e.reason) == Some(&key) {
                        keep.insert(e.reason, key);
                        continue;
                    }
                    if events.publish(term, &reference, &e).await {
                        keep.insert(e.reason, key);
                    }
                }
                if !keep.is_empty() {
                    now_said.insert(uid, keep);
                }
            }
            memory.said = now_said;
            for uid in std::mem::take(&mut memory.loaded) {
                if let Some(c) = config_inputs.iter().find(|c| c.uid == uid) {
                    let object = ObjectRef {
                        kind: "ConfigMap",
                        namespace: c.namespace.clone(),
                        name: c.name.clone(),
                        uid: c.uid.clone(),
                    };
                    let e = Event {
                        warning: false,
                        reason: "ConfigLoaded",
                        note: format!(
                            "config.yaml is valid again and in effect (default namespace {})",
                            c.effective
                                .as_ref()
                                .map(|e| e.default_namespace.as_str())
                                .unwrap_or("")
                        ),
                    };
                    let _ = events.publish(term, &object_reference(&object), &e).await;
                }
            }
        }

        // The view and the metrics.
        let mut states = [
            ("synced", 0i64),
            ("pending", 0),
            ("conflict", 0),
            ("error", 0),
        ];
        let services_view = plan
            .services
            .iter()
            .map(|s| {
                let (mut state, mut message) = (s.state, s.message.clone());
                if state == RouteState::Pending {
                    if let Some((st, m)) =
                        outcomes.get(&(s.default_namespace.clone(), s.service.clone()))
                    {
                        (state, message) = (*st, m.clone());
                    } else if let Some(f) = memory.failures.get(&(
                        "vs",
                        s.default_namespace.clone(),
                        s.virtual_service.clone(),
                    )) {
                        state = if f.permanent {
                            RouteState::Error
                        } else {
                            RouteState::Pending
                        };
                        message = f.message.clone();
                    } else if vs.is_none() {
                        message = "waiting for the VirtualService API (networking.istio.io)".into();
                    } else if term.is_none() {
                        message = "written by the leader".into();
                    }
                }
                if vs.is_none() && state != RouteState::Excluded {
                    state = RouteState::Pending;
                    message = "waiting for the VirtualService API (networking.istio.io)".into();
                }
                let i = match state {
                    RouteState::Synced => Some(0),
                    RouteState::Pending => Some(1),
                    RouteState::HostConflict | RouteState::NameConflict => Some(2),
                    RouteState::Error => Some(3),
                    RouteState::Excluded => None,
                };
                if let Some(i) = i {
                    states[i].1 += 1;
                }
                view::service_proto(s, state, &message)
            })
            .collect();
        let mut config_states = [("valid", 0i64), ("invalid", 0), ("conflict", 0)];
        for c in &plan.configs {
            config_states[match c.state {
                ConfigState::Valid => 0,
                ConfigState::Invalid => 1,
                ConfigState::Conflict => 2,
            }]
            .1 += 1;
        }
        self.metrics.set_gauges(
            config_states,
            states,
            plan.routes,
            plan.placeholders_in_place,
        );
        self.view.set(
            plan.configs.iter().map(view::config_proto).collect(),
            services_view,
            vs.map(|v| format!("networking.istio.io/{}", v.version))
                .unwrap_or_default(),
        );
    }
}

fn object_reference(o: &ObjectRef) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some(o.kind.into()),
        namespace: Some(o.namespace.clone()),
        name: Some(o.name.clone()),
        uid: Some(o.uid.clone()),
        ..Default::default()
    }
}

/// Makes one write, fenced by `term`.
async fn write(term: &Term, client: &kube::Client, version: &str, op: &Op) -> Outcome {
    match op {
        Op::Apply {
            key, body, force, ..
        } => {
            let api =
                Api::<DynamicObject>::namespaced_with(client.clone(), &key.0, &vs_ar(version));
            let mut params = PatchParams::apply(FIELD_MANAGER);
            params.force = *force;
            let o = term
                .fence(api.patch(&key.1, &params, &Patch::Apply(body)))
                .await?;
            Ok(o.metadata.resource_version)
        }
        Op::Delete {
            kind,
            key,
            uid,
            resource_version,
        } => {
            let ar = match kind {
                DeleteKind::VirtualService => vs_ar(version),
                DeleteKind::Placeholder => services_ar(),
            };
            let api = Api::<DynamicObject>::namespaced_with(client.clone(), &key.0, &ar);
            let params = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: Some(uid.clone()),
                    resource_version: resource_version.clone(),
                }),
                ..Default::default()
            };
            term.fence(api.delete(&key.1, &params)).await?;
            Ok(None)
        }
        Op::Placeholder {
            key,
            body,
            resource_version,
        } => {
            let api = Api::<DynamicObject>::namespaced_with(client.clone(), &key.0, &services_ar());
            let o = match resource_version {
                None => {
                    let obj: DynamicObject = serde_json::from_value(body.clone())
                        .map_err(|e| Fenced::Failed(kube::Error::SerdeError(e)))?;
                    term.fence(api.create(&PostParams::default(), &obj)).await?
                }
                Some(_) => {
                    term.fence(api.patch(&key.1, &PatchParams::default(), &Patch::Merge(body)))
                        .await?
                }
            };
            Ok(o.metadata.resource_version)
        }
    }
}
