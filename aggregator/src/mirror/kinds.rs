//! Which kinds are mirrored, and their watches.
//!
//! Discovery asks the API server for every group and version (one request per group version;
//! a group that does not answer — an aggregated API that is down — is skipped with a log line
//! and tried again next time, never failing the rest), then picks with
//! `fleetmirror_core::mirror::kinds` (auto-discovery) or looks up `--mirror-resource-types`.
//! Every `--mirror-discovery-interval` the watched set really changes: a kind newly served gets
//! its two watches (sources by `<p>/enabled=true`, mirrors by `<p>/mirror=true`; nothing else of
//! the kind is ever listed), a kind no longer served has them stopped. Before a kind is watched,
//! a list of at most one object with each selector checks RBAC: a kind whose list is refused
//! (403) is `forbidden`, skipped with one log line and tried again at the next discovery.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use fleetmirror_core::mirror::kinds::{self, Discovered, KindRef};
use kube::api::{Api, ApiResource, DynamicObject, ListParams};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::MirrorConfig;
use crate::platform::Context;

/// A kind's state (Diagnostics `MirrorKindState`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KindState {
    /// Sources and mirrors are watched.
    Watched,
    /// RBAC refuses to list it.
    Forbidden(String),
    /// On the deny list.
    Denied,
    /// Named by `--mirror-resource-types`, not served (yet).
    Pending(String),
    /// Cannot be watched (cluster-scoped; a failing list).
    Failed(String),
}

impl KindState {
    /// The metric label.
    pub fn as_str(&self) -> &'static str {
        match self {
            KindState::Watched => "watched",
            KindState::Forbidden(_) => "forbidden",
            KindState::Denied => "denied",
            KindState::Pending(_) => "pending",
            KindState::Failed(_) => "failed",
        }
    }
}

/// The two watches of a mirrored kind.
pub struct KindWatch {
    /// The watched version's resource.
    pub ar: ApiResource,
    /// Objects labelled `<p>/enabled=true`.
    pub sources: Store<DynamicObject>,
    /// Objects labelled `<p>/mirror=true`.
    pub mirrors: Store<DynamicObject>,
    /// The watch names (for `Watches::erring`).
    pub names: [String; 2],
    listed: [Arc<AtomicBool>; 2],
    stop: CancellationToken,
    /// The highest resourceVersion the mirror watch delivered.
    high_water: Arc<AtomicU64>,
}

impl std::fmt::Debug for KindWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KindWatch")
            .field("kind", &self.ar.kind)
            .field("names", &self.names)
            .finish()
    }
}

impl KindWatch {
    /// The highest resourceVersion the mirror watch delivered (0: none, or not numeric).
    pub fn mirrors_seen(&self) -> u64 {
        self.high_water.load(Ordering::Relaxed)
    }

    /// Both stores completed their first list.
    pub fn listed(&self) -> bool {
        self.listed.iter().all(|l| l.load(Ordering::Relaxed))
    }
}

impl Drop for KindWatch {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// One kind discovery found (or `--mirror-resource-types` named).
#[derive(Debug)]
pub struct KindEntry {
    /// Group, version, kind.
    pub kind: KindRef,
    /// Plural resource name ("" when not served).
    pub plural: String,
    /// Its state.
    pub state: KindState,
    /// Its watches, when watched.
    pub watch: Option<KindWatch>,
}

/// Every kind, by (group, kind).
#[derive(Debug, Default)]
pub struct Kinds {
    /// The entries.
    pub entries: BTreeMap<(String, String), KindEntry>,
    /// Kinds of `--mirror-resource-types` on the deny list, warned about once.
    warned: std::collections::BTreeSet<KindRef>,
}

/// A store's first list completed: sets `flag` and wakes the controller.
pub fn when_listed<K>(
    store: &Store<K>,
    trigger: &Arc<Notify>,
    stop: &CancellationToken,
) -> Arc<AtomicBool>
where
    K: kube::Resource + Clone + Send + Sync + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Send + Sync,
{
    let flag = Arc::new(AtomicBool::new(false));
    let (store, trigger, stop, f) = (store.clone(), trigger.clone(), stop.clone(), flag.clone());
    tokio::spawn(async move {
        tokio::select! {
            r = store.wait_until_ready() => if r.is_ok() {
                f.store(true, Ordering::Relaxed);
                trigger.notify_one();
            },
            _ = stop.cancelled() => {}
        }
    });
    flag
}

fn trim(o: &mut DynamicObject) {
    o.metadata.managed_fields = None;
}

/// A ConfigMap or Secret mirror is kept as metadata plus the hash of its content (see
/// `fleetmirror_core::mirror::render::compact`): memory does not grow with what mirrors hold.
fn trim_compact(o: &mut DynamicObject, kind: &KindRef) {
    o.metadata.managed_fields = None;
    if let serde_json::Value::Object(m) = &mut o.data {
        fleetmirror_core::mirror::render::compact(m, kind);
    }
}

fn trim_configmap_mirror(o: &mut DynamicObject) {
    trim_compact(
        o,
        &KindRef {
            group: String::new(),
            version: "v1".into(),
            kind: "ConfigMap".into(),
        },
    );
}

fn trim_secret_mirror(o: &mut DynamicObject) {
    trim_compact(
        o,
        &KindRef {
            group: String::new(),
            version: "v1".into(),
            kind: "Secret".into(),
        },
    );
}

/// Every resource the API server serves, per group version, and the groups that did not
/// answer (skipped: what is watched of them stays watched until they answer again).
async fn discover(
    client: &kube::Client,
) -> Result<(Vec<Discovered>, std::collections::BTreeSet<String>), String> {
    let mut out = Vec::new();
    let mut failed = std::collections::BTreeSet::new();
    let mut add =
        |group: &str,
         version: &str,
         preferred: bool,
         list: k8s_openapi::apimachinery::pkg::apis::meta::v1::APIResourceList| {
            for r in list.resources {
                out.push(Discovered {
                    kind: KindRef {
                        group: group.to_owned(),
                        version: version.to_owned(),
                        kind: r.kind,
                    },
                    plural: r.name,
                    namespaced: r.namespaced,
                    verbs: r.verbs,
                    preferred,
                });
            }
        };
    let core = client
        .list_core_api_versions()
        .await
        .map_err(|e| format!("discovering the core API: {e}"))?;
    for (i, v) in core.versions.iter().enumerate() {
        match client.list_core_api_resources(v).await {
            Ok(list) => add("", v, i == 0, list),
            Err(e) => {
                failed.insert(String::new());
                tracing::warn!(version = %v, error = %e, "discovery: the core API version did not answer; what is watched of it stays watched");
            }
        }
    }
    let groups = client
        .list_api_groups()
        .await
        .map_err(|e| format!("discovering API groups: {e}"))?;
    for g in groups.groups {
        let preferred = g
            .preferred_version
            .as_ref()
            .map(|p| p.version.clone())
            .unwrap_or_default();
        for v in &g.versions {
            match client.list_api_group_resources(&v.group_version).await {
                Ok(list) => add(&g.name, &v.version, v.version == preferred, list),
                Err(e) => {
                    failed.insert(g.name.clone());
                    tracing::warn!(group_version = %v.group_version, error = %e, "discovery: an API group did not answer; what is watched of it stays watched");
                }
            }
        }
    }
    Ok((out, failed))
}

fn api_resource(d: &Discovered) -> ApiResource {
    let k = &d.kind;
    ApiResource {
        group: k.group.clone(),
        version: k.version.clone(),
        api_version: if k.group.is_empty() {
            k.version.clone()
        } else {
            format!("{}/{}", k.group, k.version)
        },
        kind: k.kind.clone(),
        plural: d.plural.clone(),
    }
}

/// Lists at most one object with each selector: `Err` with the state when the kind cannot be
/// watched.
async fn check_access(
    client: &kube::Client,
    ar: &ApiResource,
    selectors: &[String],
) -> Result<(), KindState> {
    let api = Api::<DynamicObject>::all_with(client.clone(), ar);
    for sel in selectors {
        match api
            .list_metadata(&ListParams::default().labels(sel).limit(1))
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 403 => {
                return Err(KindState::Forbidden(format!("list refused: {}", s.message)));
            }
            Err(e) => return Err(KindState::Failed(format!("list failed: {e}"))),
        }
    }
    Ok(())
}

impl Kinds {
    /// Discovers again and starts or stops watches to match. Returns false when discovery as a
    /// whole failed (the watched set is then left as it was).
    pub async fn refresh(
        &mut self,
        ctx: &Context,
        config: &MirrorConfig,
        trigger: &Arc<Notify>,
    ) -> bool {
        let (all, failed) = match discover(&ctx.client).await {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(error = %e, "mirror: discovery failed; keeping the kinds watched so far");
                return false;
            }
        };
        // What should be watched, and what is known but not watched.
        let mut wanted: BTreeMap<(String, String), (KindRef, String, KindState)> = BTreeMap::new();
        match &config.resource_types {
            None => {
                for d in kinds::discover(&all) {
                    let key = (d.kind.group.clone(), d.kind.kind.clone());
                    wanted.insert(key, (d.kind.clone(), d.plural.clone(), KindState::Watched));
                }
                // Denied kinds are listed (never watched), once per group and kind.
                for d in &all {
                    if d.namespaced
                        && !d.plural.contains('/')
                        && kinds::has_verbs(&d.verbs)
                        && kinds::denied(&d.kind)
                    {
                        let key = (d.kind.group.clone(), d.kind.kind.clone());
                        if d.preferred || !wanted.contains_key(&key) {
                            wanted
                                .insert(key, (d.kind.clone(), d.plural.clone(), KindState::Denied));
                        }
                    }
                }
            }
            Some(types) => {
                for t in types {
                    let key = (t.group.clone(), t.kind.clone());
                    let served = all.iter().find(|d| d.kind == *t && !d.plural.contains('/'));
                    let entry = match served {
                        None => (
                            t.clone(),
                            String::new(),
                            KindState::Pending(format!("{t} is not served (yet)")),
                        ),
                        Some(d) if !d.namespaced => {
                            tracing::warn!(kind = %t, "--mirror-resource-types names a cluster-scoped kind: skipped");
                            (
                                t.clone(),
                                d.plural.clone(),
                                KindState::Failed(
                                    "cluster-scoped: only namespaced kinds are mirrored".into(),
                                ),
                            )
                        }
                        Some(d) => {
                            if kinds::denied(t) && self.warned.insert(t.clone()) {
                                tracing::warn!(kind = %t, "--mirror-resource-types names a kind on the deny list: mirrored as asked");
                            }
                            (t.clone(), d.plural.clone(), KindState::Watched)
                        }
                    };
                    wanted.insert(key, entry);
                }
            }
        }
        // Stop what is no longer wanted (or moved to another version).
        self.entries.retain(|key, e| {
            let keep = failed.contains(&key.0)
                || wanted.get(key).is_some_and(|(k, _, s)| *k == e.kind && *s == KindState::Watched) || (e.watch.is_none() && wanted.contains_key(key));
            if !keep && e.watch.is_some() {
                tracing::info!(kind = %e.kind, "mirror: kind no longer served (or its version changed): its watches stop; its mirrors stay");
            }
            keep
        });
        let keys = &config.settings.keys;
        let selectors = [
            format!("{}=true", keys.enabled()),
            format!("{}=true", keys.mirror()),
        ];
        for (key, (kind, plural, state)) in wanted {
            if failed.contains(&key.0) && self.entries.contains_key(&key) {
                continue;
            }
            if self.entries.get(&key).is_some_and(|e| e.watch.is_some()) {
                continue;
            }
            let mut entry = KindEntry {
                kind: kind.clone(),
                plural: plural.clone(),
                state: state.clone(),
                watch: None,
            };
            if state == KindState::Watched {
                let ar = api_resource(&Discovered {
                    kind: kind.clone(),
                    plural,
                    namespaced: true,
                    verbs: vec![],
                    preferred: true,
                });
                match check_access(&ctx.client, &ar, &selectors).await {
                    Ok(()) => {
                        entry.watch = Some(self.watch(ctx, &ar, &kind, &selectors, trigger));
                        tracing::info!(kind = %kind, "mirror: watching sources and mirrors");
                    }
                    Err(s) => {
                        let was = self.entries.get(&key).map(|e| e.state.clone());
                        if was.as_ref() != Some(&s) {
                            tracing::warn!(kind = %kind, state = s.as_str(), reason = ?s, "mirror: kind not watched; tried again at the next discovery");
                        }
                        entry.state = s;
                    }
                }
            }
            self.entries.insert(key, entry);
        }
        true
    }

    fn watch(
        &self,
        ctx: &Context,
        ar: &ApiResource,
        kind: &KindRef,
        selectors: &[String; 2],
        trigger: &Arc<Notify>,
    ) -> KindWatch {
        let stop = ctx.tasks.token().child_token();
        let names = [
            format!("mirror-sources-{kind}"),
            format!("mirror-mirrors-{kind}"),
        ];
        let high_water = Arc::new(AtomicU64::new(0));
        let store =
            |sel: &str, name: &str, trim: fn(&mut DynamicObject), hw: Option<Arc<AtomicU64>>| {
                ctx.watches.dynamic_store_until(
                    ar,
                    None,
                    watcher::Config::default().labels(sel),
                    trim,
                    trigger,
                    name,
                    Some(stop.clone()),
                    hw,
                )
            };
        let mirror_trim: fn(&mut DynamicObject) = match (kind.group.as_str(), kind.kind.as_str()) {
            ("", "ConfigMap") => trim_configmap_mirror,
            ("", "Secret") => trim_secret_mirror,
            _ => trim,
        };
        let sources = store(&selectors[0], &names[0], trim, None);
        let mirrors = store(
            &selectors[1],
            &names[1],
            mirror_trim,
            Some(high_water.clone()),
        );
        let listed = [
            when_listed(&sources, trigger, &stop),
            when_listed(&mirrors, trigger, &stop),
        ];
        KindWatch {
            ar: ar.clone(),
            sources,
            mirrors,
            names,
            listed,
            stop,
            high_water,
        }
    }

    /// The watched kinds.
    pub fn watched(&self) -> impl Iterator<Item = (&KindEntry, &KindWatch)> {
        self.entries
            .values()
            .filter_map(|e| e.watch.as_ref().map(|w| (e, w)))
    }
}
