//! The mirror controller (mirror.md): copies any namespaced object into other namespaces,
//! keeps every copy equal to its source (optionally transformed per target), and never changes
//! or deletes an object it does not own. Its decisions are pure functions in
//! `fleetmirror_core::mirror` (the pass: sources, targets, renderings, writes, garbage,
//! Events); this room owns discovery and the watches ([`kinds`]), the writes ([`writer`]), what
//! the controller remembers between passes, Events, metrics and the Diagnostics view.
//!
//! Inputs, all label-filtered: per kind, the sources (`<p>/enabled=true`) and the mirrors
//! (`<p>/mirror=true`); namespaces metadata-only (labels and `deletionTimestamp`). Nothing else
//! is listed or watched, so memory does not grow with unlabelled objects.
//!
//! Level-based: every change (a watch event, a first list, a write's answer that needs a second
//! look) triggers a full in-memory pass (debounced 10 ms), and so does
//! `--mirror-resync-interval`; a pass writes only differences. Only the leader passes and
//! writes (fenced by its term); standbys keep their watches warm and forward Diagnostics.
//!
//! What the controller remembers between passes (lost on restart, which costs at most one write
//! per mirror the server normalises):
//! * what its own writes and reads returned, until the watch has caught up (so a pass right
//!   after a write does not write again; resourceVersions compared as numbers, falling back to
//!   the watch when they are not);
//! * the fingerprint of each write's result, so a server that normalises a value (`2048Mi` →
//!   `2Gi`) or a webhook that adds a label causes no write loop;
//! * failed writes, retried with backoff (1 s doubling to 5 min) while the rendering is the
//!   same, and slots in conflict with an object no watch sees, read again with that backoff;
//! * the Events said, so a condition is said once while it holds (again when its message
//!   changes or it comes back).

pub(crate) mod kinds;
pub mod view;
mod writer;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use fleetmirror_core::mirror::glob::Glob;
use fleetmirror_core::mirror::keys::Keys;
use fleetmirror_core::mirror::kinds::{KindRef, parse_resource_types};
use fleetmirror_core::mirror::pass::{self, Input, Settings, Slot, State, Write};
use fleetmirror_core::mirror::plan::{Accepted, ObjectAccess, Observed, fingerprint};
use fleetmirror_core::mirror::render::{SourceRef, strip_keys};
use fleetmirror_core::mirror::targets::{self, Limits, Namespace};
use fleetmirror_core::status::{Backoff, Event};
use fleetmirror_runtime::admin::ReadyFlag;
use fleetmirror_runtime::shutdown::BoxError;
use k8s_openapi::api::core::v1::{Namespace as K8sNamespace, ObjectReference};
use kube::api::{Api, DynamicObject};
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use serde_json::Value;
use tokio::sync::Notify;

use crate::args::MirrorArgs;
use crate::platform::{Context, EventRecorder, Term};
pub use view::{MirrorMetrics, MirrorView};
use writer::{Done, Op, Writer};

/// The name used in metrics and `--controllers`.
pub const NAME: &str = "mirror";
/// How long a pass waits after the first change: long enough to take a burst of events in one
/// pass, short against a write's round trip.
const DEBOUNCE: Duration = Duration::from_millis(10);
/// How long what a write returned stands in for a mirror the watch has not delivered yet.
const KNOWN_TTL: Duration = Duration::from_secs(30);
/// The shortest time between two passes woken by deadlines.
const MIN_PASS_INTERVAL: Duration = Duration::from_millis(50);
/// The first retry of a discovery that failed.
const DISCOVERY_RETRY: Duration = Duration::from_secs(10);

/// The controller's configuration, from the `--mirror-*` flags (checked at startup: an invalid
/// value refuses to start, naming the flag).
#[derive(Debug, Clone)]
pub struct MirrorConfig {
    /// Keys, limits, source namespaces, strip list.
    pub settings: Settings,
    /// `--mirror-resource-types` (None: auto-discovery).
    pub resource_types: Option<Vec<KindRef>>,
    /// `--mirror-discovery-interval`.
    pub discovery_interval: Duration,
    /// `--mirror-resync-interval`.
    pub resync_interval: Duration,
    /// `--mirror-write-concurrency`.
    pub write_concurrency: usize,
}

impl MirrorConfig {
    /// Checks and converts the flags.
    pub fn from_args(a: &MirrorArgs) -> Result<Self, String> {
        let keys = Keys::new(&a.mirror_key_prefix)?;
        let resource_types = if a.mirror_resource_types.trim().is_empty() {
            None
        } else {
            Some(parse_resource_types(&a.mirror_resource_types)?)
        };
        let globs = |flag: &str, v: &str| -> Result<Vec<Glob>, String> { targets::globs(flag, v) };
        if a.mirror_write_concurrency == 0 {
            return Err("--mirror-write-concurrency must be at least 1".into());
        }
        for (flag, d) in [
            ("--mirror-discovery-interval", a.mirror_discovery_interval),
            ("--mirror-resync-interval", a.mirror_resync_interval),
        ] {
            if d.is_zero() {
                return Err(format!("{flag} must be greater than zero"));
            }
        }
        Ok(MirrorConfig {
            settings: Settings {
                keys,
                limits: Limits {
                    excluded: globs(
                        "--mirror-excluded-namespaces",
                        &a.mirror_excluded_namespaces,
                    )?,
                    included: globs(
                        "--mirror-included-namespaces",
                        &a.mirror_included_namespaces,
                    )?,
                    max_targets: a.mirror_max_targets,
                },
                source_namespaces: globs(
                    "--mirror-source-namespaces",
                    &a.mirror_source_namespaces,
                )?,
                strip: strip_keys(&a.mirror_strip_keys),
            },
            resource_types,
            discovery_interval: a.mirror_discovery_interval,
            resync_interval: a.mirror_resync_interval,
            write_concurrency: a.mirror_write_concurrency,
        })
    }
}

/// What the controller learnt about a slot from its own writes and reads.
#[derive(Debug, Clone)]
enum Known {
    /// This object is there (returned by a write, or read).
    Object { object: Observed, at: Instant },
    /// The object with this UID is gone.
    Gone { uid: String, at: Instant },
}

/// A write that failed, retried with backoff while the rendering is the same.
#[derive(Debug, Clone)]
struct SlotFailure {
    rendering: String,
    state: State,
    reason: String,
    /// Said in a `WriteFailed` Event (not for transient errors).
    event: Option<String>,
    backoff: Backoff,
    next: Instant,
}

/// What the controller remembers of one kind.
#[derive(Debug, Default)]
struct KindMemory {
    known: BTreeMap<Slot, Known>,
    accepted: BTreeMap<Slot, Accepted>,
    probes: BTreeMap<Slot, (Backoff, Instant)>,
    failures: BTreeMap<Slot, SlotFailure>,
    last_write: BTreeMap<Slot, SystemTime>,
    /// Slots the last pass found up to date (their inputs, hashed): not rendered again while
    /// nothing they depend on changed.
    up_to_date: std::collections::HashSet<u64>,
}

fn rv_of(o: &Observed) -> Option<u64> {
    o.resource_version().parse().ok()
}

/// An object of a mirror watch's store, read in place: a pass reads the metadata of every
/// object at a mirror name but converts to JSON only those it renders against (converting all
/// of them every pass was most of the controller's transient memory).
#[derive(Debug)]
struct Stored(Arc<DynamicObject>);

impl ObjectAccess for Stored {
    fn uid(&self) -> &str {
        self.0.metadata.uid.as_deref().unwrap_or_default()
    }

    fn resource_version(&self) -> &str {
        self.0
            .metadata
            .resource_version
            .as_deref()
            .unwrap_or_default()
    }

    fn deleting(&self) -> bool {
        self.0.metadata.deletion_timestamp.is_some()
    }

    fn label(&self, key: &str) -> Option<&str> {
        self.0
            .metadata
            .labels
            .as_ref()?
            .get(key)
            .map(String::as_str)
    }

    fn annotation(&self, key: &str) -> Option<&str> {
        self.0
            .metadata
            .annotations
            .as_ref()?
            .get(key)
            .map(String::as_str)
    }

    fn to_json(&self) -> Option<Value> {
        serde_json::to_value(&*self.0)
            .inspect_err(|e| {
                // Not expected (a DynamicObject is JSON); the slot is left alone.
                tracing::warn!(namespace = ?self.0.metadata.namespace, name = ?self.0.metadata.name, error = %e, "mirror: an object of the watch did not convert to JSON");
            })
            .ok()
    }
}

impl KindMemory {
    /// The objects at mirror names: the mirror watch's (read in place, see [`Stored`]),
    /// overlaid by what the writer knows and the watch has not caught up with yet. `seen` is
    /// the highest resourceVersion the mirror watch delivered: once it reaches a write's, the
    /// store is the truth again (the object may have changed or gone since, in the same batch
    /// of events).
    fn observed(
        &mut self,
        keys: &Keys,
        store: &Store<DynamicObject>,
        seen: u64,
        now: Instant,
    ) -> BTreeMap<Slot, Observed> {
        let mut m: BTreeMap<Slot, Observed> = BTreeMap::new();
        for o in store.state() {
            let (Some(ns), Some(name)) = (o.metadata.namespace.clone(), o.metadata.name.clone())
            else {
                continue;
            };
            m.insert((ns, name), Observed::lazy(Arc::new(Stored(o))));
        }
        let mirror = keys.mirror();
        self.known.retain(|slot, k| match k {
            Known::Object { object, at } => {
                let watched = object.label(&mirror) == Some("true");
                // A watched object: the watch delivered it (or resourceVersions are no
                // numbers here), or the safety net ran out.
                if watched
                    && (rv_of(object).is_none_or(|rv| seen >= rv)
                        || now.duration_since(*at) >= KNOWN_TTL)
                {
                    return false;
                }
                match m.get(slot) {
                    Some(s) if rv_of(s).zip(rv_of(object)).is_some_and(|(s, k)| s >= k) => false,
                    _ => {
                        m.insert(slot.clone(), object.clone());
                        true
                    }
                }
            }
            Known::Gone { uid, at } => match m.get(slot) {
                Some(s) if s.uid() == uid && now.duration_since(*at) < KNOWN_TTL => {
                    m.remove(slot);
                    true
                }
                _ => false,
            },
        });
        m
    }

    /// The next moment something remembered changes a pass: a retry, a probe, a known object
    /// expiring.
    fn next_deadline(&self, keys: &Keys) -> Option<Instant> {
        let failures = self.failures.values().map(|f| f.next);
        let probes = self.probes.values().map(|p| p.1);
        let mirror = keys.mirror();
        // Only what expires: what stands in for the watch. (What a read found of an object no
        // watch sees lives as long as its conflict; probes time that.)
        let known = self.known.values().filter_map(|k| match k {
            Known::Object { object, at } => {
                (object.label(&mirror) == Some("true")).then_some(*at + KNOWN_TTL)
            }
            Known::Gone { at, .. } => Some(*at + KNOWN_TTL),
        });
        failures.chain(probes).chain(known).min()
    }

    /// Forgets what no longer concerns a slot of this pass: failures of slots that need no
    /// write, probes of slots no longer in conflict, reads of objects no watch sees once their
    /// conflict ended, results of writes to slots that are gone.
    fn prune(
        &mut self,
        writing: &BTreeSet<Slot>,
        conflicts: &BTreeSet<Slot>,
        live: &BTreeSet<Slot>,
        keys: &Keys,
    ) {
        let mirror = keys.mirror();
        self.failures.retain(|slot, _| writing.contains(slot));
        self.probes.retain(|slot, _| conflicts.contains(slot));
        self.known.retain(|slot, k| match k {
            Known::Object { object, .. } => {
                object.label(&mirror) == Some("true") || conflicts.contains(slot)
            }
            Known::Gone { .. } => true,
        });
        self.accepted.retain(|slot, _| live.contains(slot));
        self.last_write.retain(|slot, _| live.contains(slot));
    }
}

/// Runs the controller until shutdown.
pub struct MirrorController {
    ctx: Context,
    config: MirrorConfig,
    /// What Diagnostics answers.
    view: Arc<MirrorView>,
    metrics: MirrorMetrics,
    /// Ready once the namespaces and every watched kind were listed.
    ready: ReadyFlag,
    /// Kinds whose watch fails (counted once per failure in `errors_total{category="watch"}`).
    failing: std::sync::Mutex<BTreeSet<(String, String)>>,
}

impl std::fmt::Debug for MirrorController {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MirrorController")
            .field("config", &self.config)
            .finish()
    }
}

/// A namespace as the controllers read it: name, labels, deletionTimestamp.
pub(crate) fn trim_namespace(n: &mut PartialObjectMeta<K8sNamespace>) {
    n.metadata.annotations = None;
    n.metadata.managed_fields = None;
    n.metadata.owner_references = None;
}

/// The Events said per object (UID → reason → note), so a condition is said once.
#[derive(Debug, Default)]
struct Said(HashMap<String, BTreeMap<&'static str, String>>);

/// (sources, mirrors) per kind (group, kind).
type KindCounts = BTreeMap<(String, String), (u32, u32)>;

/// One pass's result for the view and the metrics.
#[derive(Debug, Default)]
struct PassView {
    sources: Vec<fleetmirror_proto::v1::MirrorSource>,
    counts: KindCounts,
}

impl MirrorController {
    /// A controller on `ctx` with `config`, publishing to `view` and `metrics`, ready through
    /// `ready`.
    pub fn new(
        ctx: Context,
        config: MirrorConfig,
        view: Arc<MirrorView>,
        metrics: MirrorMetrics,
        ready: ReadyFlag,
    ) -> Self {
        Self {
            ctx,
            config,
            view,
            metrics,
            ready,
            failing: Default::default(),
        }
    }

    /// Discovers, watches, passes and writes until shutdown.
    pub async fn run(self) -> Result<(), BoxError> {
        let shutdown = self.ctx.tasks.token().clone();
        let trigger = Arc::new(Notify::new());
        let namespaces = self.ctx.watches.store(
            Api::<PartialObjectMeta<K8sNamespace>>::all(self.ctx.watches.client().clone()),
            watcher::Config::default(),
            trim_namespace,
            &trigger,
            "mirror-namespaces",
        );
        let namespaces_listed = kinds::when_listed(&namespaces, &trigger, &shutdown);
        let mut kinds = kinds::Kinds::default();
        let writer = Writer {
            client: self.ctx.client.clone(),
            concurrency: self.config.write_concurrency,
        };
        let events = self.ctx.events(NAME);
        let mut said = Said::default();
        let mut memory: HashMap<(String, String), KindMemory> = HashMap::new();
        let mut leadership = self.ctx.leadership.clone();
        let mut next_discovery = Instant::now();
        let mut discovered = false;
        let mut next_resync = Instant::now() + self.config.resync_interval;
        // Woken by a change (an event, a resync, a first pass, leadership): conflicts are read
        // again at once; woken by a deadline (a retry, a probe): only what is due.
        let mut changed = true;
        loop {
            let now = Instant::now();
            if now >= next_discovery {
                let ok = kinds.refresh(&self.ctx, &self.config, &trigger).await;
                if !ok {
                    self.metrics.error("discovery");
                }
                discovered |= ok;
                next_discovery = Instant::now()
                    + if ok {
                        self.config.discovery_interval
                    } else {
                        DISCOVERY_RETRY.min(self.config.discovery_interval)
                    };
                self.publish_kinds(&kinds, None);
            }
            let ns_listed = namespaces_listed.load(std::sync::atomic::Ordering::Relaxed);
            if discovered && ns_listed && kinds.watched().all(|(_, w)| w.listed()) {
                self.ready.set(true);
            }
            if now >= next_resync {
                next_resync = now + self.config.resync_interval;
                changed = true;
            }
            let mut again = false;
            if leadership.term().is_none() {
                // A standby passes nothing: what a former term remembered is of no use.
                memory.clear();
                said.0.clear();
            }
            if let (Some(term), true) = (leadership.term(), ns_listed) {
                let started = Instant::now();
                self.metrics.pass();
                let (view, repass) = self
                    .pass(
                        changed,
                        &term,
                        &kinds,
                        &namespaces,
                        &writer,
                        &events,
                        &mut memory,
                        &mut said,
                    )
                    .await;
                again = repass;
                self.view.set_sources(view.sources);
                self.publish_kinds(&kinds, Some(&view.counts));
                tracing::debug!(elapsed = ?started.elapsed(), "mirror pass");
            }
            let keys = &self.config.settings.keys;
            let wake_at = [
                Some(next_resync),
                Some(next_discovery),
                memory.values().filter_map(|m| m.next_deadline(keys)).min(),
            ]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(next_resync)
            // A floor: whatever is due, never more than 20 passes a second.
            .max(Instant::now() + MIN_PASS_INTERVAL);
            if again {
                tokio::time::sleep(DEBOUNCE).await;
                changed = true;
                continue;
            }
            changed = tokio::select! {
                _ = trigger.notified() => {
                    tokio::time::sleep(DEBOUNCE).await;
                    true
                }
                _ = tokio::time::sleep_until(wake_at.into()) => false,
                r = leadership.changed() => if r.is_err() { return Ok(()) } else { true },
                _ = shutdown.cancelled() => return Ok(()),
            };
        }
    }

    fn publish_kinds(&self, kinds: &kinds::Kinds, counts: Option<&KindCounts>) {
        let failing: BTreeSet<(String, String)> = kinds
            .entries
            .iter()
            .filter(|(_, e)| {
                e.watch
                    .as_ref()
                    .is_some_and(|w| w.names.iter().any(|n| self.ctx.watches.erring(n)))
            })
            .map(|(k, _)| k.clone())
            .collect();
        {
            let mut before = self.failing.lock().unwrap_or_else(|p| p.into_inner());
            for _ in failing.difference(&before) {
                self.metrics.error("watch");
            }
            *before = failing;
        }
        let list: Vec<fleetmirror_proto::v1::MirrorKind> = kinds
            .entries
            .iter()
            .map(|(key, e)| {
                let failing = e.watch.as_ref().and_then(|w| {
                    w.names
                        .iter()
                        .find_map(|n| self.ctx.watches.error_of(n).map(|err| format!("watch {n} failing: {err}")))
                });
                let (state, reason) = match (&e.state, failing) {
                    (kinds::KindState::Watched, Some(why)) => (kinds::KindState::Failed(why.clone()), why),
                    (s, _) => (
                        s.clone(),
                        match s {
                            kinds::KindState::Watched => String::new(),
                            kinds::KindState::Denied => "on the deny list: never mirrored (name it in --mirror-resource-types to mirror it anyway)".into(),
                            kinds::KindState::Forbidden(w) | kinds::KindState::Pending(w) | kinds::KindState::Failed(w) => w.clone(),
                        },
                    ),
                };
                let (sources, mirrors) = counts
                    .and_then(|c| c.get(key).copied())
                    .unwrap_or_else(|| {
                        (
                            self.view.kind_counts(key).0,
                            e.watch.as_ref().map_or(0, |w| w.mirrors.state().len() as u32),
                        )
                    });
                view::kind_proto(&e.kind, &e.plural, &state, reason, sources, mirrors)
            })
            .collect();
        self.metrics.set_kinds(&list);
        self.view.set_kinds(list);
    }

    /// One pass over every watched kind. Returns the view and whether a write's answer needs
    /// another look at once.
    #[allow(clippy::too_many_arguments)]
    async fn pass(
        &self,
        changed: bool,
        term: &Term,
        kinds: &kinds::Kinds,
        namespaces: &Store<PartialObjectMeta<K8sNamespace>>,
        writer: &Writer,
        events: &EventRecorder,
        memory: &mut HashMap<(String, String), KindMemory>,
        said: &mut Said,
    ) -> (PassView, bool) {
        let settings = &self.config.settings;
        let keys = &settings.keys;
        let ns: Vec<Namespace> = namespaces
            .state()
            .iter()
            .filter_map(|n| {
                Some(Namespace {
                    name: n.metadata.name.clone()?,
                    labels: n.metadata.labels.clone().unwrap_or_default(),
                    terminating: n.metadata.deletion_timestamp.is_some(),
                })
            })
            .collect();
        let namespaces_ok = !self.ctx.watches.erring("mirror-namespaces");
        let mut view = PassView::default();
        let mut again = false;
        let mut live_uids: BTreeSet<String> = BTreeSet::new();
        let mut states: BTreeMap<&'static str, i64> = BTreeMap::new();
        let live_kinds: BTreeSet<(String, String)> = kinds.entries.keys().cloned().collect();
        memory.retain(|k, _| live_kinds.contains(k));
        for (entry, watch) in kinds.watched() {
            if !watch.listed() {
                continue;
            }
            let key = (entry.kind.group.clone(), entry.kind.kind.clone());
            let mem = memory.entry(key.clone()).or_default();
            let started = Instant::now();
            let now = Instant::now();
            let sources: Vec<Value> = watch
                .sources
                .state()
                .iter()
                .filter_map(|o| serde_json::to_value(&**o).ok())
                .collect();
            let observed = mem.observed(keys, &watch.mirrors, watch.mirrors_seen(), now);
            let gc = namespaces_ok && !watch.names.iter().any(|n| self.ctx.watches.erring(n));
            let mut plan = pass::plan(
                settings,
                &Input {
                    kind: &entry.kind,
                    sources: &sources,
                    observed: &observed,
                    namespaces: &ns,
                    accepted: &mem.accepted,
                    gc,
                    up_to_date: &mem.up_to_date,
                },
            );
            let planned = started.elapsed();
            mem.up_to_date = std::mem::take(&mut plan.up_to_date);

            // The writes (and reads) this pass needs, minus those backing off.
            let mut ops = Vec::new();
            let mut renderings: BTreeMap<Slot, String> = BTreeMap::new();
            let mut slot_source: BTreeMap<Slot, usize> = BTreeMap::new();
            for (i, sp) in plan.sources.iter().enumerate() {
                for t in &sp.targets {
                    let slot = (t.namespace.clone(), sp.reference.name.clone());
                    if t.state == State::Mirrored {
                        mem.failures.remove(&slot);
                        mem.probes.remove(&slot);
                    }
                    let backing_off = mem
                        .failures
                        .get(&slot)
                        .is_some_and(|f| f.rendering == t.rendering && f.next > now);
                    match &t.write {
                        Some(_) if backing_off => {}
                        Some(w) => {
                            slot_source.insert(slot.clone(), i);
                            renderings.insert(slot.clone(), t.rendering.clone());
                            ops.push(match w.clone() {
                                Write::Create { body } => Op::Create {
                                    slot,
                                    body,
                                    rendering: t.rendering.clone(),
                                },
                                Write::Update { body, adopt } => Op::Update {
                                    slot,
                                    body,
                                    rendering: t.rendering.clone(),
                                    adopt,
                                },
                                Write::Recreate {
                                    uid,
                                    resource_version,
                                    body,
                                    ..
                                } => Op::Recreate {
                                    slot,
                                    uid,
                                    resource_version,
                                    body,
                                    rendering: t.rendering.clone(),
                                },
                            });
                        }
                        None if t.state == State::Conflict => {
                            // An object no watch sees: read again with backoff.
                            let unseen = observed.contains_key(&slot)
                                && watch
                                    .mirrors
                                    .get(
                                        &ObjectRef::<DynamicObject>::new_with(
                                            &slot.1,
                                            watch.ar.clone(),
                                        )
                                        .within(&slot.0),
                                    )
                                    .is_none();
                            if unseen {
                                let probe = mem.probes.entry(slot.clone()).or_insert_with(|| {
                                    let mut b = Backoff::default();
                                    let d = b.fail();
                                    (b, now + d)
                                });
                                if probe.1 <= now || changed {
                                    probe.1 = now + probe.0.fail();
                                    slot_source.insert(slot.clone(), i);
                                    ops.push(Op::Probe { slot });
                                }
                            }
                        }
                        None => {}
                    }
                }
            }
            for d in &plan.deletes {
                let slot = (d.namespace.clone(), d.name.clone());
                if mem.failures.get(&slot).is_some_and(|f| f.next > now) {
                    continue;
                }
                ops.push(Op::Delete {
                    slot,
                    uid: d.uid.clone(),
                    resource_version: d.resource_version.clone(),
                });
            }
            for r in &plan.releases {
                ops.push(Op::Release {
                    object: r.object.clone(),
                    finalizers: r.finalizers.clone(),
                    index: r.index,
                });
            }

            // Write.
            let writes_started = Instant::now();
            let done = if ops.is_empty() {
                vec![]
            } else {
                writer.run(term, &watch.ar, ops).await
            };
            // What earlier passes left that this one no longer needs (before this pass's results
            // are recorded).
            {
                let mut writing = BTreeSet::new();
                let mut conflicts = BTreeSet::new();
                let mut live: BTreeSet<Slot> = observed.keys().cloned().collect();
                for sp in &plan.sources {
                    for t in &sp.targets {
                        let slot = (t.namespace.clone(), sp.reference.name.clone());
                        if t.write.is_some() {
                            writing.insert(slot.clone());
                        }
                        if t.state == State::Conflict {
                            conflicts.insert(slot.clone());
                        }
                        live.insert(slot);
                    }
                }
                for d in &plan.deletes {
                    writing.insert((d.namespace.clone(), d.name.clone()));
                }
                mem.prune(&writing, &conflicts, &live, keys);
            }
            let mut outcome: BTreeMap<Slot, (State, String)> = BTreeMap::new();
            let mut one_shots: BTreeMap<usize, Vec<Event>> = BTreeMap::new();
            let mut adopted: BTreeMap<usize, usize> = BTreeMap::new();
            let now = Instant::now();
            for d in done {
                match d {
                    Done::Written {
                        slot,
                        object,
                        rendering,
                        operation,
                    } => {
                        self.metrics.write(operation);
                        mem.accepted.insert(
                            slot.clone(),
                            Accepted {
                                rendering,
                                result: fingerprint(&object, &entry.kind, &settings.strip),
                            },
                        );
                        let object = Observed::from(compacted(object, &entry.kind));
                        mem.known
                            .insert(slot.clone(), Known::Object { object, at: now });
                        mem.failures.remove(&slot);
                        mem.probes.remove(&slot);
                        mem.last_write.insert(slot.clone(), SystemTime::now());
                        if let Some(&i) = slot_source.get(&slot) {
                            match operation {
                                "recreate" => one_shots.entry(i).or_default().push(Event {
                                    warning: false,
                                    reason: "Recreated",
                                    note: format!(
                                        "the mirror in {} was deleted and created again (it could not be updated in place)",
                                        slot.0
                                    ),
                                }),
                                "adopt" => *adopted.entry(i).or_default() += 1,
                                _ => {}
                            }
                        }
                        outcome.insert(slot, (State::Mirrored, String::new()));
                    }
                    Done::Deleted { slot, uid } => {
                        self.metrics.write("delete");
                        mem.known.insert(slot.clone(), Known::Gone { uid, at: now });
                        mem.accepted.remove(&slot);
                        mem.last_write.remove(&slot);
                        mem.failures.remove(&slot);
                    }
                    Done::Seen { slot, object } => {
                        // Read again and unchanged (a probe of a conflict): nothing to judge.
                        let unchanged = match (&object, observed.get(&slot)) {
                            (Some(o), Some(before)) => {
                                o.uid() == before.uid()
                                    && o["metadata"]["resourceVersion"].as_str()
                                        == Some(before.resource_version())
                            }
                            _ => false,
                        };
                        if unchanged {
                            continue;
                        }
                        again = true;
                        match object {
                            Some(object) => {
                                let object = Observed::from(compacted(object, &entry.kind));
                                mem.known
                                    .insert(slot.clone(), Known::Object { object, at: now });
                            }
                            None => {
                                mem.probes.remove(&slot);
                                let uid = observed
                                    .get(&slot)
                                    .map(|o| o.uid().to_owned())
                                    .unwrap_or_default();
                                mem.known.insert(slot.clone(), Known::Gone { uid, at: now });
                            }
                        }
                        outcome.insert(
                            slot,
                            (State::Pending, "changed meanwhile: judged again".into()),
                        );
                    }
                    Done::Released { object } => {
                        tracing::info!(source = %format!("{}/{}", object.namespace, object.name), "removed kubemirror's finalizer from a source being deleted (its mirrors are gone)");
                    }
                    Done::Failed {
                        slot,
                        operation,
                        failure,
                    } => {
                        self.metrics.error(failure.category);
                        let Some(slot) = slot else {
                            tracing::warn!(operation, error = %failure.message, "mirror: removing kubemirror's finalizer failed");
                            continue;
                        };
                        tracing::warn!(kind = %entry.kind, namespace = %slot.0, name = %slot.1, operation, error = %failure.message, "mirror write failed");
                        let state = if failure.transient {
                            State::Pending
                        } else {
                            State::Error
                        };
                        let reason = format!(
                            "{operation} failed{}: {}",
                            if failure.transient { " (retrying)" } else { "" },
                            failure.message
                        );
                        let f = mem
                            .failures
                            .entry(slot.clone())
                            .or_insert_with(|| SlotFailure {
                                rendering: String::new(),
                                state,
                                reason: String::new(),
                                event: None,
                                backoff: Backoff::default(),
                                next: now,
                            });
                        f.rendering = renderings.get(&slot).cloned().unwrap_or_default();
                        f.state = state;
                        f.reason = reason.clone();
                        f.event = (!failure.transient)
                            .then(|| format!("{}: {operation}: {}", slot.0, failure.message));
                        f.next = now + f.backoff.fail();
                        outcome.insert(slot, (state, reason));
                    }
                    Done::Lost => {}
                }
            }
            let writes_took = writes_started.elapsed();

            // Events, the view, metrics.
            let mut count_sources = 0u32;
            for (i, sp) in plan.sources.into_iter().enumerate() {
                count_sources += 1;
                live_uids.insert(sp.reference.uid.clone());
                let mut conditions = sp.events;
                let mut failed = Vec::new();
                let mut targets = Vec::new();
                for mut t in sp.targets {
                    let slot = (t.namespace.clone(), sp.reference.name.clone());
                    if let Some((state, reason)) = outcome.remove(&slot) {
                        t.state = state;
                        t.reason = reason;
                    } else if let Some(f) = mem
                        .failures
                        .get(&slot)
                        .filter(|f| t.write.is_some() && f.rendering == t.rendering)
                    {
                        t.state = f.state;
                        t.reason = f.reason.clone();
                    }
                    if let Some(e) = mem
                        .failures
                        .get(&slot)
                        .and_then(|f| f.event.clone())
                        .filter(|_| t.state == State::Error)
                    {
                        failed.push(e);
                    }
                    *states.entry(t.state.as_str()).or_default() += 1;
                    targets.push(view::target_proto(&t, mem.last_write.get(&slot).copied()));
                }
                if !failed.is_empty() {
                    conditions.push(Event {
                        warning: true,
                        reason: "WriteFailed",
                        note: format!(
                            "the API refused {} write(s): {}",
                            failed.len(),
                            view::some_of(&failed)
                        ),
                    });
                }
                if let Some(n) = adopted.get(&i) {
                    one_shots.entry(i).or_default().push(Event {
                        warning: false,
                        reason: "Adopted",
                        note: format!("{n} mirror(s) written by kubemirror taken over in place"),
                    });
                }
                let object = object_ref(&entry.kind, &sp.reference);
                self.say(
                    term,
                    events,
                    said,
                    &object,
                    conditions,
                    one_shots.remove(&i).unwrap_or_default(),
                )
                .await;
                view.sources.push(view::source_proto(
                    &entry.kind,
                    &sp.reference,
                    targets,
                    sp.message,
                ));
                self.metrics.reconciled(planned + writes_took);
            }
            for oe in plan.object_events {
                live_uids.insert(oe.object.uid.clone());
                let object = object_ref(&entry.kind, &oe.object);
                self.say(term, events, said, &object, vec![oe.event], vec![])
                    .await;
            }
            view.counts
                .insert(key, (count_sources, watch.mirrors.state().len() as u32));
        }
        said.0.retain(|uid, _| live_uids.contains(uid));
        self.metrics.set_states(&states, view.sources.len());
        (view, again)
    }

    /// Says each condition once while it holds (again when its note changes), and every
    /// one-shot Event.
    async fn say(
        &self,
        term: &Term,
        events: &EventRecorder,
        said: &mut Said,
        object: &ObjectReference,
        conditions: Vec<Event>,
        one_shots: Vec<Event>,
    ) {
        let uid = object.uid.clone().unwrap_or_default();
        let before = said.0.remove(&uid).unwrap_or_default();
        let mut now: BTreeMap<&'static str, String> = BTreeMap::new();
        for e in conditions {
            if before.get(e.reason) == Some(&e.note) {
                now.insert(e.reason, e.note);
                continue;
            }
            match e.reason {
                "TransformFailed" => self.metrics.error("transform"),
                "InvalidTarget" | "TooManyTargets" => self.metrics.error("target"),
                _ => {}
            }
            // Not said (rate-limited, or the API refused it): said again next pass.
            if events.publish(term, object, &e).await {
                now.insert(e.reason, e.note);
            }
        }
        for e in one_shots {
            let _ = events.publish(term, object, &e).await;
        }
        if !now.is_empty() {
            said.0.insert(uid, now);
        }
    }
}

/// What the controller keeps of an object it wrote or read: a ConfigMap or Secret compacted as
/// the mirror watch keeps it.
fn compacted(mut object: Value, kind: &KindRef) -> Value {
    if let Value::Object(m) = &mut object {
        fleetmirror_core::mirror::render::compact(m, kind);
    }
    object
}

fn object_ref(kind: &KindRef, r: &SourceRef) -> ObjectReference {
    ObjectReference {
        api_version: Some(if kind.group.is_empty() {
            kind.version.clone()
        } else {
            format!("{}/{}", kind.group, kind.version)
        }),
        kind: Some(kind.kind.clone()),
        namespace: Some(r.namespace.clone()),
        name: Some(r.name.clone()),
        uid: Some(r.uid.clone()),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::api::ApiResource;
    use kube::runtime::reflector::store::Writer;
    use kube::runtime::watcher::Event as WatchEvent;
    use serde_json::json;

    fn object(name: &str, rv: &str, deleting: bool) -> DynamicObject {
        let mut v = json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {
                "name": name, "namespace": "team-a", "uid": format!("uid-{name}"),
                "resourceVersion": rv,
                "labels": {"fleetmirror.io/mirror": "true", "fleetmirror.io/managed-by": "fleetmirror"},
                "annotations": {"fleetmirror.io/source-namespace": "src", "fleetmirror.io/source-name": name},
            },
            "data": {"k": "v"},
        });
        if deleting {
            v["metadata"]["deletionTimestamp"] = json!("2026-12-01T00:00:00Z");
        }
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn store_objects_read_in_place_match_their_json_and_the_writers_results_overlay_them() {
        let ar = ApiResource::erase::<k8s_openapi::api::core::v1::ConfigMap>(&());
        let mut writer = Writer::<DynamicObject>::new(ar.clone());
        for o in [object("plain", "10", false), object("going", "11", true)] {
            writer.apply_watcher_event(&WatchEvent::Apply(o));
        }
        let store = writer.as_reader();
        let keys = Keys::new("fleetmirror.io").unwrap();
        let mut mem = KindMemory::default();
        let now = Instant::now();
        // A write the watch has not delivered yet (rv 20 > 11 seen) stands in for the store's
        // object; an older result (rv 5) does not.
        for (name, rv) in [("plain", "20"), ("going", "5")] {
            let object = Observed::from(serde_json::to_value(object(name, rv, false)).unwrap());
            mem.known.insert(
                ("team-a".into(), name.into()),
                Known::Object { object, at: now },
            );
        }
        let observed = mem.observed(&keys, &store, 11, now);
        assert_eq!(observed.len(), 2);
        let plain = &observed[&("team-a".into(), "plain".into())];
        let going = &observed[&("team-a".into(), "going".into())];
        assert_eq!(plain.resource_version(), "20", "the write's result");
        assert_eq!(going.resource_version(), "11", "the store's newer object");
        assert_eq!(mem.known.len(), 1, "the older result is forgotten");

        // Read in place, the store's object says what its JSON says.
        let stored = store
            .get(&ObjectRef::<DynamicObject>::new_with("going", ar.clone()).within("team-a"))
            .expect("the store by key");
        let json = Observed::from(serde_json::to_value(&*stored).unwrap());
        let lazy = Observed::lazy(Arc::new(Stored(stored)));
        assert_eq!(lazy.uid(), json.uid());
        assert_eq!(lazy.uid(), "uid-going");
        assert_eq!(lazy.resource_version(), json.resource_version());
        assert!(lazy.deleting() && json.deleting());
        let s = SourceRef {
            namespace: "src".into(),
            name: "going".into(),
            uid: String::new(),
        };
        let owner = fleetmirror_core::mirror::plan::owner;
        assert_eq!(owner(&keys, &lazy, &s), owner(&keys, &json, &s));
        assert!(matches!(
            owner(&keys, &lazy, &s),
            fleetmirror_core::mirror::plan::Owner::Ours { .. }
        ));
        assert_eq!(lazy.object(), json.object());
        assert!(
            store
                .get(&ObjectRef::<DynamicObject>::new_with("absent", ar).within("team-a"))
                .is_none()
        );
    }
}
