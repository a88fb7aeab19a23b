//! Multi-cluster integration checks' decisions (integrations.md), pure: an Integration's type
//! and config ([`config`]), how a component's facts become a verdict and its message
//! ([`component`]), an Integration's status from its clusters' verdicts ([`rollup`]), and which
//! kubeconfigs may be used at all ([`kubeconfig`]). The per-type cluster verdicts and the
//! controller (`aggregator/src/integrations/`) are still to come (issue #11).

pub mod component;
pub mod config;
pub mod kubeconfig;
pub mod rollup;
