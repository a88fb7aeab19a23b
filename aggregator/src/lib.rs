//! fleetmirror-aggregator: the central, unprivileged half of fleetmirror.
//!
//! Data flows one way: watches and agent reports → the in-memory [`index::FleetIndex`] →
//! reconcilers that write status and generated objects (leader only). The gRPC handlers read
//! the index and never call the Kubernetes API.
//!
//! * [`args`]: flags; [`crd`]: the custom resources (CRD YAML is generated from them);
//! * [`index`]: the fleet index and the Report protocol rules;
//! * [`auth`]: agent stream authentication (TokenReview, ServiceAccount, pod → node);
//! * [`grpc`]: AgentService, Diagnostics, health and reflection;
//! * [`platform`]: what every controller stands on (request client with timeouts, supervised
//!   watches, leader terms fencing every write, Event recorder, status writer, metrics);
//! * [`health`]: the fleet-health controller (VClusterHealth status, Diagnostics scores);
//! * [`mirror`]: the mirror controller (any namespaced kind into other namespaces);
//! * [`routing`]: the routing controller (Istio VirtualServices for developer routing);
//! * [`integrations`]: the integrations controller (Argo CD, Flux, Prometheus, Istio checks
//!   across clusters);
//! * [`leader`]: Lease-based leader election; [`metrics`]: Prometheus metrics.

pub mod args;
pub mod auth;
pub mod crd;
pub mod grpc;
pub mod health;
pub mod index;
pub mod integrations;
pub mod leader;
pub mod metrics;
pub mod mirror;
pub mod platform;
pub mod routing;
