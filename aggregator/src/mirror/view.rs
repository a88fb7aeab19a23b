//! What the mirror controller shows: the Diagnostics view (`ListMirrors`, `GetMirror`, kept by
//! the leader after every pass) and the `fleetmirror_mirror_*` metrics (labels bounded: never an
//! object name, namespace or error text).

use std::collections::BTreeMap;
use std::sync::RwLock;
use std::time::SystemTime;

use fleetmirror_core::mirror::kinds::KindRef;
pub(super) use fleetmirror_core::mirror::pass::some_of;
use fleetmirror_core::mirror::pass::{State, Target};
use fleetmirror_core::mirror::render::SourceRef;
use fleetmirror_proto::v1::{MirrorKind, MirrorKindState, MirrorSource, MirrorState, MirrorTarget};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::kinds::KindState;

/// The latest pass, for Diagnostics.
#[derive(Debug, Default)]
pub struct MirrorView {
    sources: RwLock<Vec<MirrorSource>>,
    kinds: RwLock<Vec<MirrorKind>>,
}

impl MirrorView {
    pub(super) fn set_sources(&self, mut s: Vec<MirrorSource>) {
        s.sort_by(|a, b| {
            (&a.group, &a.kind, &a.namespace, &a.name).cmp(&(
                &b.group,
                &b.kind,
                &b.namespace,
                &b.name,
            ))
        });
        *self.sources.write().unwrap_or_else(|p| p.into_inner()) = s;
    }

    pub(super) fn set_kinds(&self, k: Vec<MirrorKind>) {
        *self.kinds.write().unwrap_or_else(|p| p.into_inner()) = k;
    }

    /// (sources, mirrors) of a kind as last published.
    pub(super) fn kind_counts(&self, key: &(String, String)) -> (u32, u32) {
        self.kinds
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|k| k.group == key.0 && k.kind == key.1)
            .map_or((0, 0), |k| (k.sources, k.mirrors))
    }

    /// Sources, filtered by namespace and kind ("" = any).
    pub fn list(&self, namespace: &str, kind: &str) -> (Vec<MirrorSource>, Vec<MirrorKind>) {
        let sources = self
            .sources
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|s| {
                (namespace.is_empty() || s.namespace == namespace)
                    && (kind.is_empty() || s.kind == kind)
            })
            .cloned()
            .collect();
        let kinds = self.kinds.read().unwrap_or_else(|p| p.into_inner()).clone();
        (sources, kinds)
    }

    /// The groups that have a kind named `kind` (discovered), for `GetMirror`'s group rule.
    pub fn groups_of(&self, kind: &str) -> Vec<String> {
        let mut g: Vec<String> = self
            .kinds
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|k| k.kind == kind)
            .map(|k| k.group.clone())
            .collect();
        g.dedup();
        g
    }

    /// One source.
    pub fn get(
        &self,
        group: &str,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> Option<MirrorSource> {
        self.sources
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|s| {
                s.group == group && s.kind == kind && s.namespace == namespace && s.name == name
            })
            .cloned()
    }
}

fn state_proto(s: State) -> MirrorState {
    match s {
        State::Mirrored => MirrorState::Mirrored,
        State::Pending => MirrorState::Pending,
        State::Conflict => MirrorState::Conflict,
        State::Refused => MirrorState::Refused,
        State::Error => MirrorState::Error,
    }
}

fn timestamp(t: SystemTime) -> prost_types::Timestamp {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    prost_types::Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

pub(super) fn target_proto(t: &Target, last_write: Option<SystemTime>) -> MirrorTarget {
    MirrorTarget {
        namespace: t.namespace.clone(),
        state: state_proto(t.state) as i32,
        reason: t.reason.clone(),
        last_write: last_write.map(timestamp),
    }
}

pub(super) fn source_proto(
    kind: &KindRef,
    r: &SourceRef,
    targets: Vec<MirrorTarget>,
    message: String,
) -> MirrorSource {
    MirrorSource {
        group: kind.group.clone(),
        version: kind.version.clone(),
        kind: kind.kind.clone(),
        namespace: r.namespace.clone(),
        name: r.name.clone(),
        uid: r.uid.clone(),
        targets,
        message,
    }
}

pub(super) fn kind_proto(
    kind: &KindRef,
    plural: &str,
    state: &KindState,
    reason: String,
    sources: u32,
    mirrors: u32,
) -> MirrorKind {
    let state = match state {
        KindState::Watched => MirrorKindState::Watched,
        KindState::Forbidden(_) => MirrorKindState::Forbidden,
        KindState::Denied => MirrorKindState::Denied,
        KindState::Pending(_) => MirrorKindState::Pending,
        KindState::Failed(_) => MirrorKindState::Failed,
    };
    MirrorKind {
        group: kind.group.clone(),
        version: kind.version.clone(),
        kind: kind.kind.clone(),
        resource: plural.to_owned(),
        state: state as i32,
        reason,
        sources,
        mirrors,
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabel {
    operation: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CategoryLabel {
    category: &'static str,
}

/// `fleetmirror_mirror_*`.
#[derive(Debug, Clone)]
pub struct MirrorMetrics {
    sources: Gauge,
    mirrors: Family<StateLabel, Gauge>,
    writes: Family<OperationLabel, Counter>,
    errors: Family<CategoryLabel, Counter>,
    reconcile_seconds: Histogram,
    kinds: Family<StateLabel, Gauge>,
    passes: Counter,
}

const STATES: [&str; 5] = ["mirrored", "pending", "conflict", "refused", "error"];
const KIND_STATES: [&str; 5] = ["watched", "forbidden", "denied", "pending", "failed"];

impl MirrorMetrics {
    /// Registers the families (every state and operation present from the start).
    pub fn register(registry: &mut Registry) -> Self {
        let m = MirrorMetrics {
            sources: Gauge::default(),
            mirrors: Family::default(),
            writes: Family::default(),
            errors: Family::default(),
            // 100 µs … ~6.5 s
            reconcile_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 17)),
            kinds: Family::default(),
            passes: Counter::default(),
        };
        let r = registry.sub_registry_with_prefix("fleetmirror_mirror");
        r.register(
            "sources",
            "Objects that are mirror sources",
            m.sources.clone(),
        );
        r.register("mirrors", "Mirror targets by state", m.mirrors.clone());
        r.register("writes", "Mirror writes by operation", m.writes.clone());
        r.register("errors", "Mirror errors by category", m.errors.clone());
        r.register(
            "reconcile_seconds",
            "Time to reconcile one source: its kind's planning and the writes of its pass",
            m.reconcile_seconds.clone(),
        );
        r.register("kinds", "Kinds by state", m.kinds.clone());
        r.register(
            "passes",
            "Full passes over every watched kind (each change, resync or due retry makes one)",
            m.passes.clone(),
        );
        for s in STATES {
            let _ = m.mirrors.get_or_create(&StateLabel { state: s });
        }
        for s in KIND_STATES {
            let _ = m.kinds.get_or_create(&StateLabel { state: s });
        }
        for o in ["create", "update", "recreate", "delete", "adopt"] {
            let _ = m.writes.get_or_create(&OperationLabel { operation: o });
        }
        for c in [
            "api",
            "forbidden",
            "invalid",
            "conflict",
            "transform",
            "target",
            "discovery",
            "watch",
        ] {
            let _ = m.errors.get_or_create(&CategoryLabel { category: c });
        }
        m
    }

    pub(super) fn pass(&self) {
        self.passes.inc();
    }

    pub(super) fn write(&self, operation: &'static str) {
        self.writes
            .get_or_create(&OperationLabel { operation })
            .inc();
    }

    pub(super) fn error(&self, category: &'static str) {
        self.errors.get_or_create(&CategoryLabel { category }).inc();
    }

    pub(super) fn reconciled(&self, took: std::time::Duration) {
        self.reconcile_seconds.observe(took.as_secs_f64());
    }

    pub(super) fn set_states(&self, states: &BTreeMap<&'static str, i64>, sources: usize) {
        self.sources.set(sources as i64);
        for s in STATES {
            self.mirrors
                .get_or_create(&StateLabel { state: s })
                .set(states.get(s).copied().unwrap_or(0));
        }
    }

    pub(super) fn set_kinds(&self, kinds: &[MirrorKind]) {
        let mut n: BTreeMap<&str, i64> = BTreeMap::new();
        for k in kinds {
            let s = match MirrorKindState::try_from(k.state).unwrap_or(MirrorKindState::Unspecified)
            {
                MirrorKindState::Watched => "watched",
                MirrorKindState::Forbidden => "forbidden",
                MirrorKindState::Denied => "denied",
                MirrorKindState::Pending => "pending",
                _ => "failed",
            };
            *n.entry(s).or_default() += 1;
        }
        for s in KIND_STATES {
            self.kinds
                .get_or_create(&StateLabel { state: s })
                .set(n.get(s).copied().unwrap_or(0));
        }
    }
}
