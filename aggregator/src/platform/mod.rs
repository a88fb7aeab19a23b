//! What every controller of the aggregator stands on, written once (STYLE.md "One shape for
//! every controller"):
//!
//! * [`Context`]: the request client (connect, read and write timeouts) and the watches
//!   ([`Watches`]: supervised, counted, reported on `/readyz` when they keep failing), the
//!   [`Leadership`] whose [`Term`] fences every write, and the supervised task set;
//! * [`EventRecorder`]: Kubernetes Events, only while leading, deduplicated and rate-limited
//!   per object, reasons from a bounded set;
//! * [`StatusWriter`]: server-side apply of a status (field manager `fleetmirror`), fenced by
//!   the term, counted by reason, with per-object exponential backoff after a failure;
//! * [`ControllerMetrics`]: the per-controller families on the one registry:
//!   `fleetmirror_controller_status_writes_total{controller,reason}`,
//!   `fleetmirror_controller_events_total{controller,type}`,
//!   `fleetmirror_controller_events_dropped_total{controller}`.
//!
//! The decisions these make (is a write due, is an Event a duplicate, how long to back off)
//! are pure functions in `fleetmirror_core::status`.

pub mod term;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleetmirror_core::status::{Admit, Backoff, EventGate};
use fleetmirror_runtime::shutdown::Tasks;
use fleetmirror_runtime::watch::Watches;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event as K8sEvent;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, Patch, PatchParams};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::time::Instant;

pub use term::{Fenced, Leadership, Term};

/// The field manager of every server-side apply.
pub const FIELD_MANAGER: &str = "fleetmirror";

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WriteLabels {
    controller: &'static str,
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    controller: &'static str,
    r#type: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ControllerLabel {
    controller: &'static str,
}

/// The per-controller metric families, registered once.
#[derive(Debug, Clone, Default)]
pub struct PlatformMetrics {
    status_writes: Family<WriteLabels, Counter>,
    events: Family<EventLabels, Counter>,
    events_dropped: Family<ControllerLabel, Counter>,
}

impl PlatformMetrics {
    /// Creates and registers the families.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        let r = registry.sub_registry_with_prefix("fleetmirror_controller");
        r.register(
            "status_writes",
            "Status writes by controller and reason (changed, heartbeat, error, held)",
            m.status_writes.clone(),
        );
        r.register(
            "events",
            "Kubernetes Events published, by controller and type",
            m.events.clone(),
        );
        r.register(
            "events_dropped",
            "Kubernetes Events not published (duplicates, per-object rate limit, failures)",
            m.events_dropped.clone(),
        );
        m
    }

    /// The handle of controller `name`.
    pub fn controller(&self, name: &'static str) -> ControllerMetrics {
        ControllerMetrics {
            name,
            families: self.clone(),
        }
    }
}

/// One controller's metrics.
#[derive(Debug, Clone)]
pub struct ControllerMetrics {
    name: &'static str,
    families: PlatformMetrics,
}

impl ControllerMetrics {
    /// Counts a status write (or a held one) by reason.
    pub fn status_write(&self, reason: &'static str) {
        self.families
            .status_writes
            .get_or_create(&WriteLabels {
                controller: self.name,
                reason,
            })
            .inc();
    }

    fn event(&self, warning: bool) {
        self.families
            .events
            .get_or_create(&EventLabels {
                controller: self.name,
                r#type: if warning { "Warning" } else { "Normal" },
            })
            .inc();
    }

    fn event_dropped(&self) {
        self.families
            .events_dropped
            .get_or_create(&ControllerLabel {
                controller: self.name,
            })
            .inc();
    }
}

/// What every controller gets.
#[derive(Clone)]
pub struct Context {
    /// For every request but watches: connect, read and write timeouts.
    pub client: kube::Client,
    /// Supervised watches (made with the watch client).
    pub watches: Watches,
    /// Whether this replica leads, and the term that fences writes.
    pub leadership: Leadership,
    /// The supervised task set.
    pub tasks: Tasks,
    /// The per-controller metric families.
    pub metrics: PlatformMetrics,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("watches", &self.watches)
            .finish()
    }
}

impl Context {
    /// The Event recorder of controller `name`.
    pub fn events(&self, name: &'static str) -> EventRecorder {
        EventRecorder {
            client: self.client.clone(),
            gate: Arc::default(),
            metrics: self.metrics.controller(name),
        }
    }

    /// The status writer of controller `name`.
    pub fn status_writer(&self, name: &'static str) -> StatusWriter {
        StatusWriter {
            client: self.client.clone(),
            metrics: self.metrics.controller(name),
            backoff: Arc::default(),
        }
    }
}

/// Publishes a controller's Kubernetes Events: only under a valid term, each Event once per
/// window and object, at most a burst per object (`fleetmirror_core::status::EventGate`).
/// A failure to publish is logged and counted, never retried in a loop.
#[derive(Clone)]
pub struct EventRecorder {
    client: kube::Client,
    gate: Arc<Mutex<EventGate>>,
    metrics: ControllerMetrics,
}

impl std::fmt::Debug for EventRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventRecorder")
            .field("controller", &self.metrics.name)
            .finish()
    }
}

/// `reportingController` (and instance) of every Event.
const REPORTING_CONTROLLER: &str = "fleetmirror-aggregator";

/// The longest Event note the API accepts (1 KiB).
const MAX_NOTE: usize = 1024;

impl EventRecorder {
    /// Publishes `event` about `object` (its UID keys the dedup and the rate limit). True when
    /// it is said: published now, or the same note recently; false when rate-limited or the
    /// API refused it (worth saying again later).
    pub async fn publish(
        &self,
        term: &Term,
        object: &ObjectReference,
        event: &fleetmirror_core::status::Event,
    ) -> bool {
        let key = object
            .uid
            .clone()
            .unwrap_or_else(|| format!("{:?}/{:?}", object.namespace, object.name));
        let admit = self.gate.lock().unwrap_or_else(|p| p.into_inner()).admit(
            &key,
            event,
            std::time::Instant::now(),
        );
        if admit != Admit::Publish {
            tracing::debug!(object = ?object.name, reason = event.reason, ?admit, "event not published");
            self.metrics.event_dropped();
            return admit == Admit::Duplicate;
        }
        let mut note = event.note.clone();
        if note.len() > MAX_NOTE {
            let mut end = MAX_NOTE - 3;
            while !note.is_char_boundary(end) {
                end -= 1;
            }
            note.truncate(end);
            note.push_str("...");
        }
        // Each Event is its own object: kube's recorder would fold a second note of the same
        // reason into the first Event's series, showing users the old note.
        let now = k8s_openapi::jiff::Timestamp::now();
        let kube_event = K8sEvent {
            metadata: kube::api::ObjectMeta {
                namespace: object.namespace.clone(),
                name: Some(format!(
                    "{}.{:x}{:04x}",
                    object
                        .name
                        .as_deref()
                        .unwrap_or("fleetmirror")
                        .chars()
                        .take(200)
                        .collect::<String>(),
                    now.as_nanosecond(),
                    rand::random::<u16>()
                )),
                ..Default::default()
            },
            event_time: Some(MicroTime(now)),
            action: Some("Reconcile".into()),
            reason: Some(event.reason.into()),
            note: Some(note),
            type_: Some(if event.warning { "Warning" } else { "Normal" }.into()),
            regarding: Some(object.clone()),
            reporting_controller: Some(REPORTING_CONTROLLER.into()),
            reporting_instance: Some(REPORTING_CONTROLLER.into()),
            ..Default::default()
        };
        let namespace = object.namespace.as_deref().unwrap_or("default");
        let events = Api::<K8sEvent>::namespaced(self.client.clone(), namespace);
        match term
            .fence(events.create(&kube::api::PostParams::default(), &kube_event))
            .await
        {
            Ok(_) => {
                self.metrics.event(event.warning);
                true
            }
            Err(error) => {
                self.gate
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .undo(&key, event);
                self.metrics.event_dropped();
                tracing::warn!(object = ?object.name, reason = event.reason, %error, "publishing an Event failed");
                false
            }
        }
    }
}

/// Why a status write was not made.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The object is backing off after failed writes until then.
    #[error("backing off after {failures} failed writes")]
    BackingOff {
        /// Consecutive failures.
        failures: u32,
    },
    /// The write failed (or the term ended).
    #[error(transparent)]
    Write(#[from] Fenced<kube::Error>),
}

/// Writes a controller's statuses (see the module docs). Cheap to clone.
#[derive(Clone)]
pub struct StatusWriter {
    client: kube::Client,
    metrics: ControllerMetrics,
    backoff: Arc<Mutex<HashMap<String, (Backoff, Instant)>>>,
}

fn object_key<K: kube::Resource>(obj: &K) -> String {
    format!(
        "{}/{}",
        obj.meta().namespace.as_deref().unwrap_or(""),
        obj.meta().name.as_deref().unwrap_or("")
    )
}

impl std::fmt::Debug for StatusWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusWriter")
            .field("controller", &self.metrics.name)
            .finish()
    }
}

impl StatusWriter {
    /// The controller's metrics.
    pub fn metrics(&self) -> &ControllerMetrics {
        &self.metrics
    }

    /// When the next object in backoff may be written again (a controller wakes up then).
    pub fn next_retry(&self) -> Option<Instant> {
        let now = Instant::now();
        self.lock()
            .values()
            .map(|(_, at)| *at)
            .filter(|at| *at > now)
            .min()
    }

    /// Forgets objects not in `live` (deleted objects leave no backoff behind).
    pub fn retain(&self, live: impl Fn(&str) -> bool) {
        self.lock().retain(|k, _| live(k));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Backoff, Instant)>> {
        self.backoff.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies `status` to `obj`'s status subresource under `term`, counted as `reason`.
    pub async fn apply<K>(
        &self,
        term: &Term,
        obj: &K,
        status: &impl serde::Serialize,
        reason: &'static str,
    ) -> Result<(), WriteError>
    where
        K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        let key = object_key(obj);
        if let Some((b, at)) = self.lock().get(&key)
            && *at > Instant::now()
        {
            return Err(WriteError::BackingOff {
                failures: b.failures(),
            });
        }
        let api = Api::<K>::namespaced(
            self.client.clone(),
            obj.meta().namespace.as_deref().unwrap_or_default(),
        );
        let patch = serde_json::json!({
            "apiVersion": K::api_version(&()),
            "kind": K::kind(&()),
            "status": status,
        });
        let name = obj.meta().name.clone().unwrap_or_default();
        let params = PatchParams::apply(FIELD_MANAGER).force();
        match term
            .fence(api.patch_status(&name, &params, &Patch::Apply(&patch)))
            .await
        {
            Ok(_) => {
                self.lock().remove(&key);
                self.metrics.status_write(reason);
                Ok(())
            }
            Err(Fenced::Lost) => Err(Fenced::Lost.into()),
            Err(error) => {
                self.metrics.status_write("error");
                let mut all = self.lock();
                let entry = all
                    .entry(key.clone())
                    .or_insert_with(|| (Backoff::default(), Instant::now()));
                let delay = entry.0.fail();
                entry.1 = Instant::now() + delay;
                tracing::warn!(
                    object = %key,
                    kind = %K::kind(&()),
                    %error,
                    retry_in = ?delay,
                    failures = entry.0.failures(),
                    "writing status failed; backing off"
                );
                Err(error.into())
            }
        }
    }
}

/// How long a write may take (also bounded by the term's validity).
pub const REQUEST_TIMEOUT: Duration = fleetmirror_runtime::kubeconfig::REQUEST_TIMEOUT;
