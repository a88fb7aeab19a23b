//! The mirror controller's writes, each fenced by the leader's term, at most
//! `--mirror-write-concurrency` in flight:
//!
//! * create: POST (field manager `fleetmirror`), never apply: an object that appeared at the
//!   name makes it fail with AlreadyExists, and that object is then read and judged;
//! * update: PUT carrying the resourceVersion of the object whose ownership was just checked
//!   (409: read again, judge again);
//! * delete: preconditions uid + resourceVersion of the object judged ours;
//! * recreate: delete (preconditions) then create; a foreign object appearing in between wins;
//! * a slot in conflict with an object the watches cannot see is read again (GET);
//! * kubemirror's finalizer on a source being deleted is removed with a JSON patch guarded by a
//!   `test` of the finalizers — the only write fleetmirror ever makes to a source.
//!
//! The API server's answer is never read back: the object it returns is what the controller
//! remembers (no read after a write).

use futures::StreamExt;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams, Preconditions,
};
use serde_json::Value;

use fleetmirror_core::mirror::pass::Slot;
use fleetmirror_core::mirror::render::SourceRef;

use crate::platform::{FIELD_MANAGER, Fenced, Term};

/// One write (or read) of a pass.
#[derive(Debug, Clone)]
pub enum Op {
    /// POST.
    Create {
        /// Where.
        slot: Slot,
        /// The rendering.
        body: Value,
        /// Its hash.
        rendering: String,
    },
    /// PUT.
    Update {
        /// Where.
        slot: Slot,
        /// The rendering with the observed resourceVersion.
        body: Value,
        /// Its hash.
        rendering: String,
        /// kubemirror's mirror taken over.
        adopt: bool,
    },
    /// Delete then create.
    Recreate {
        /// Where.
        slot: Slot,
        /// The UID judged ours.
        uid: String,
        /// Its resourceVersion.
        resource_version: String,
        /// The rendering.
        body: Value,
        /// Its hash.
        rendering: String,
    },
    /// Delete with preconditions.
    Delete {
        /// Where.
        slot: Slot,
        /// The UID judged ours.
        uid: String,
        /// Its resourceVersion.
        resource_version: String,
    },
    /// GET (a slot in conflict with an object no watch sees).
    Probe {
        /// Where.
        slot: Slot,
    },
    /// Remove kubemirror's finalizer from a source being deleted.
    Release {
        /// The source.
        object: SourceRef,
        /// Its finalizers as judged.
        finalizers: Vec<String>,
        /// The one to remove.
        index: usize,
    },
}

/// Why a write failed, for states, Events and metrics.
#[derive(Debug, Clone)]
pub struct Failure {
    /// `api`, `forbidden`, `invalid` or `conflict` (metric label).
    pub category: &'static str,
    /// The API server's words.
    pub message: String,
    /// Worth retrying soon (a timeout, 5xx, 429); else the same write fails again until
    /// something changes.
    pub transient: bool,
}

/// What became of an [`Op`].
#[derive(Debug, Clone)]
pub enum Done {
    /// Created or updated: the object the API server returned.
    Written {
        /// Where.
        slot: Slot,
        /// What the server returned.
        object: Value,
        /// The rendering's hash.
        rendering: String,
        /// `create`, `update`, `adopt` or `recreate`.
        operation: &'static str,
    },
    /// Deleted (or already gone).
    Deleted {
        /// Where.
        slot: Slot,
        /// The UID that was there.
        uid: String,
    },
    /// What is at the slot now (after a 409, a 404 or a probe): judge again.
    Seen {
        /// Where.
        slot: Slot,
        /// The object, or nothing.
        object: Option<Value>,
    },
    /// The legacy finalizer is removed.
    Released {
        /// The source.
        object: SourceRef,
    },
    /// The write failed.
    Failed {
        /// Where (None: a source's finalizer).
        slot: Option<Slot>,
        /// The operation.
        operation: &'static str,
        /// Why.
        failure: Failure,
    },
    /// The term ended: nothing was written, nothing is to be concluded.
    Lost,
}

fn failure(e: &kube::Error) -> Failure {
    match e {
        kube::Error::Api(s) => {
            let (category, transient) = match s.code {
                403 => ("forbidden", false),
                400 | 422 => ("invalid", false),
                409 => ("conflict", true),
                429 | 500..=599 => ("api", true),
                _ => ("api", false),
            };
            Failure {
                category,
                message: format!("{} ({})", s.message, s.code),
                transient,
            }
        }
        other => Failure {
            category: "api",
            message: other.to_string(),
            transient: true,
        },
    }
}

/// A fenced write that did not succeed: the term ended (nothing to conclude), or it timed out
/// (transient: retried with backoff), or the API refused it.
fn not_done(f: Fenced<kube::Error>, slot: Option<Slot>, operation: &'static str) -> Done {
    match f {
        Fenced::Failed(e) => Done::Failed {
            slot,
            operation,
            failure: failure(&e),
        },
        Fenced::TimedOut(after) => Done::Failed {
            slot,
            operation,
            failure: Failure {
                category: "api",
                message: format!("no answer within {after:?}"),
                transient: true,
            },
        },
        Fenced::Lost => Done::Lost,
    }
}

fn code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

fn to_object(v: Value) -> Result<DynamicObject, Failure> {
    serde_json::from_value(v).map_err(|e| Failure {
        category: "invalid",
        message: format!("the rendering is not an object: {e}"),
        transient: false,
    })
}

/// Executes writes of one kind.
#[derive(Clone)]
pub struct Writer {
    /// The request client.
    pub client: kube::Client,
    /// In flight at once.
    pub concurrency: usize,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("concurrency", &self.concurrency)
            .finish()
    }
}

impl Writer {
    /// Runs `ops` on kind `ar` under `term`, `concurrency` at a time.
    pub async fn run(&self, term: &Term, ar: &ApiResource, ops: Vec<Op>) -> Vec<Done> {
        futures::stream::iter(ops)
            .map(|op| self.one(term, ar, op))
            .buffer_unordered(self.concurrency.max(1))
            .collect()
            .await
    }

    fn api(&self, ar: &ApiResource, namespace: &str) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), namespace, ar)
    }

    async fn get(
        &self,
        term: &Term,
        api: &Api<DynamicObject>,
        slot: Slot,
        operation: &'static str,
    ) -> Done {
        match term.fence(api.get_opt(&slot.1)).await {
            Ok(o) => Done::Seen {
                object: o.and_then(|o| serde_json::to_value(o).ok()),
                slot,
            },
            Err(f) => not_done(f, Some(slot), operation),
        }
    }

    async fn one(&self, term: &Term, ar: &ApiResource, op: Op) -> Done {
        let post = PostParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        };
        match op {
            Op::Create {
                slot,
                body,
                rendering,
            } => {
                let api = self.api(ar, &slot.0);
                self.create(term, &api, slot, body, rendering, "create", &post)
                    .await
            }
            Op::Update {
                slot,
                body,
                rendering,
                adopt,
            } => {
                let api = self.api(ar, &slot.0);
                let operation = if adopt { "adopt" } else { "update" };
                let obj = match to_object(body) {
                    Ok(o) => o,
                    Err(failure) => {
                        return Done::Failed {
                            slot: Some(slot),
                            operation,
                            failure,
                        };
                    }
                };
                match term.fence(api.replace(&slot.1, &post, &obj)).await {
                    Ok(o) => Done::Written {
                        object: serde_json::to_value(o).unwrap_or_default(),
                        slot,
                        rendering,
                        operation,
                    },
                    // Changed or gone since it was judged: read it and judge again.
                    Err(Fenced::Failed(e)) if matches!(code(&e), Some(409 | 404)) => {
                        self.get(term, &api, slot, operation).await
                    }
                    Err(f) => not_done(f, Some(slot), operation),
                }
            }
            Op::Recreate {
                slot,
                uid,
                resource_version,
                body,
                rendering,
            } => {
                let api = self.api(ar, &slot.0);
                match self
                    .delete(term, &api, &slot, &uid, &resource_version)
                    .await
                {
                    Ok(true) => {}
                    Ok(false) => return self.get(term, &api, slot, "recreate").await,
                    Err(done) => return done,
                }
                self.create(term, &api, slot, body, rendering, "recreate", &post)
                    .await
            }
            Op::Delete {
                slot,
                uid,
                resource_version,
            } => {
                let api = self.api(ar, &slot.0);
                match self
                    .delete(term, &api, &slot, &uid, &resource_version)
                    .await
                {
                    Ok(true) => Done::Deleted { slot, uid },
                    Ok(false) => self.get(term, &api, slot, "delete").await,
                    Err(done) => done,
                }
            }
            Op::Probe { slot } => {
                let api = self.api(ar, &slot.0);
                self.get(term, &api, slot, "probe").await
            }
            Op::Release {
                object,
                finalizers,
                index,
            } => {
                let api = self.api(ar, &object.namespace);
                let patch: json_patch::Patch = match serde_json::from_value(serde_json::json!([
                    {"op": "test", "path": "/metadata/finalizers", "value": finalizers},
                    {"op": "remove", "path": format!("/metadata/finalizers/{index}")},
                ])) {
                    Ok(p) => p,
                    Err(e) => {
                        return Done::Failed {
                            slot: None,
                            operation: "release",
                            failure: Failure {
                                category: "invalid",
                                message: e.to_string(),
                                transient: false,
                            },
                        };
                    }
                };
                let params = PatchParams {
                    field_manager: Some(FIELD_MANAGER.into()),
                    ..Default::default()
                };
                match term
                    .fence(api.patch(&object.name, &params, &Patch::Json::<()>(patch)))
                    .await
                {
                    Ok(_) => Done::Released { object },
                    // Gone already, or its finalizers changed (judged again next pass).
                    Err(Fenced::Failed(e)) if matches!(code(&e), Some(404 | 409 | 422)) => {
                        Done::Released { object }
                    }
                    Err(f) => not_done(f, None, "release"),
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn create(
        &self,
        term: &Term,
        api: &Api<DynamicObject>,
        slot: Slot,
        body: Value,
        rendering: String,
        operation: &'static str,
        post: &PostParams,
    ) -> Done {
        let obj = match to_object(body) {
            Ok(o) => o,
            Err(failure) => {
                return Done::Failed {
                    slot: Some(slot),
                    operation,
                    failure,
                };
            }
        };
        match term.fence(api.create(post, &obj)).await {
            Ok(o) => Done::Written {
                object: serde_json::to_value(o).unwrap_or_default(),
                slot,
                rendering,
                operation,
            },
            // Something is there: never overwritten; read and judged.
            Err(Fenced::Failed(e)) if code(&e) == Some(409) => {
                self.get(term, api, slot, operation).await
            }
            Err(f) => not_done(f, Some(slot), operation),
        }
    }

    /// Deletes with preconditions: `Ok(true)` deleted or gone, `Ok(false)` the object changed
    /// (judge again), `Err` a failure or a lost term.
    async fn delete(
        &self,
        term: &Term,
        api: &Api<DynamicObject>,
        slot: &Slot,
        uid: &str,
        rv: &str,
    ) -> Result<bool, Done> {
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: Some(uid.to_owned()),
                resource_version: Some(rv.to_owned()),
            }),
            ..Default::default()
        };
        match term.fence(api.delete(&slot.1, &params)).await {
            Ok(_) => Ok(true),
            Err(Fenced::Failed(e)) if code(&e) == Some(404) => Ok(true),
            Err(Fenced::Failed(e)) if code(&e) == Some(409) => Ok(false),
            Err(f) => Err(not_done(f, Some(slot.clone()), "delete")),
        }
    }
}
