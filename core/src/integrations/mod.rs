//! Multi-cluster integration checks' decisions (integrations.md), pure: how a component's
//! facts become a verdict and its message ([`component`]), and which kubeconfigs may be used at
//! all ([`kubeconfig`]). The cluster verdicts, the roll-up, config parsing and the controller
//! (`aggregator/src/integrations/`) are still to come (issue #11).

pub mod component;
pub mod kubeconfig;
