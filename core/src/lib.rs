//! Pure logic shared by the fleetmirror agent and aggregator. No Kubernetes client, async
//! runtime, gRPC or syscall dependency lives here: everything is a function over data and is
//! tested with plain `#[test]`s.
//!
//! * [`naming`]: vCluster's host-side naming contract (SafeConcatName, the labels and
//!   annotations its syncer writes) and validation of names taken from the API.

pub mod naming;
