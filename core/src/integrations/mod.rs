//! Multi-cluster integration checks' decisions (integrations.md), pure: an Integration's type
//! and config ([`config`]), how a component's facts become a verdict and its message
//! ([`component`]), an Integration's status from its clusters' verdicts ([`rollup`]), and which
//! kubeconfigs may be used at all ([`kubeconfig`]), and one cluster's check per type: what to
//! read and the verdict and message ([`cluster`]), and the status objects and the Events a status
//! change calls for ([`status`]). The controller that acts on them lives in
//! `aggregator/src/integrations/`.

pub mod cluster;
pub mod component;
pub mod config;
pub mod kubeconfig;
pub mod rollup;
pub mod status;
