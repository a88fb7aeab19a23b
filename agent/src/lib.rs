//! fleetmirror-agent: the privileged, node-local half of fleetmirror. It never writes to the
//! Kubernetes API.
//!
//! * [`args`]: flags and mount layouts;
//! * [`caps`]: keep CAP_SYS_ADMIN, drop every other capability before the runtime starts;
//! * [`kernel`]: the seam around mount syscalls (Linux implementation and a recording fake);
//! * [`node`]: the level-based node reconciler (watches, inotify, passes, per-pod retries);
//! * [`inotify`]: the pod-directory trigger;
//! * [`state`]: the node's reportable state and deltas between two states;
//! * [`reporter`]: the reconnecting `AgentService/Report` stream;
//! * [`metrics`]: Prometheus metrics.

pub mod args;
pub mod caps;
pub mod inotify;
pub mod kernel;
pub mod metrics;
mod mountapi;
pub mod node;
pub mod reporter;
pub mod state;
