//! Pure logic shared by the fleetmirror agent and aggregator. No Kubernetes client, async
//! runtime, gRPC or syscall dependency lives here: everything is a function over data and is
//! tested with plain `#[test]`s.
//!
//! * [`naming`]: vCluster's host-side naming contract (SafeConcatName, the labels and
//!   annotations its syncer writes) and validation of names taken from the API;
//! * [`health`]: fleet health scoring (discovery, six signals, score, level, message) and the
//!   `VClusterHealth` status decisions ([`health::status`]);
//! * [`status`]: what every controller's status decisions share (Kubernetes-shaped time and
//!   conditions, write-due rules, Events, backoff);
//! * [`integrations`]: multi-cluster checks' decisions (component verdicts, the kubeconfig
//!   policy; the rest of issue #11 is to come);
//! * [`mirror`]: namespace mirroring's decisions (targets, rendering, transforms, ownership);
//! * [`routing`]: developer routing's decisions (configs, templates, the pass, the route
//!   evaluator the tests judge VirtualServices with);
//! * [`pod`]: which host pods are synced vCluster pods or control-plane pods;
//! * [`mountinfo`]: `/proc/self/mountinfo` parsing and bind-source resolution;
//! * [`plan`]: the agent's mount reconcile as a pure function (layouts, cross-tenant guard,
//!   conflicts, adoption, garbage collection).

pub mod health;
pub mod integrations;
pub mod mirror;
pub mod mountinfo;
pub mod naming;
pub mod plan;
pub mod pod;
pub mod routing;
pub mod status;
