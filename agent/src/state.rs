//! What the agent reports: the state of its node, and the difference between two states.
//!
//! The node reconciler publishes a whole [`NodeState`] after every pass; the reporter keeps
//! the last state it sent and turns the difference into a delta ([`NodeState::delta_to`]).
//! Deltas are therefore always derived from two full states, never accumulated from events,
//! so a missed event cannot make the aggregator's copy drift.

use std::collections::BTreeMap;

use fleetmirror_proto::v1::{NodeDelta, NodeSnapshot, PodState};

/// The reportable state of one node.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeState {
    /// vCluster-related pods by host UID.
    pub pods: BTreeMap<String, PodState>,
    /// Node-level problems, in words.
    pub errors: Vec<String>,
}

impl NodeState {
    /// The full snapshot message body.
    pub fn snapshot(&self) -> NodeSnapshot {
        NodeSnapshot {
            pods: self.pods.values().cloned().collect(),
            errors: self.errors.clone(),
        }
    }

    /// The delta that turns `self` (what was sent) into `next`; `None` when they are equal.
    pub fn delta_to(&self, next: &NodeState) -> Option<NodeDelta> {
        let upserted: Vec<PodState> = next
            .pods
            .iter()
            .filter(|(uid, pod)| self.pods.get(*uid) != Some(*pod))
            .map(|(_, pod)| pod.clone())
            .collect();
        let removed_host_uids: Vec<String> = self
            .pods
            .keys()
            .filter(|uid| !next.pods.contains_key(*uid))
            .cloned()
            .collect();
        let errors_changed = self.errors != next.errors;
        if upserted.is_empty() && removed_host_uids.is_empty() && !errors_changed {
            return None;
        }
        Some(NodeDelta {
            upserted,
            removed_host_uids,
            errors: if errors_changed {
                next.errors.clone()
            } else {
                vec![]
            },
            errors_cleared: errors_changed && next.errors.is_empty(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(uid: &str, ready: bool) -> PodState {
        PodState {
            host_uid: uid.into(),
            ready,
            ..Default::default()
        }
    }

    fn state(pods: &[PodState], errors: &[&str]) -> NodeState {
        NodeState {
            pods: pods
                .iter()
                .map(|p| (p.host_uid.clone(), p.clone()))
                .collect(),
            errors: errors.iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn equal_states_need_no_delta() {
        let s = state(&[pod("a", true)], &["x"]);
        assert_eq!(s.delta_to(&s.clone()), None);
    }

    #[test]
    fn changes_become_upserts_and_removals() {
        let before = state(&[pod("a", false), pod("b", true)], &[]);
        let after = state(&[pod("a", true), pod("c", true)], &[]);
        let d = before.delta_to(&after).unwrap();
        let up: Vec<_> = d
            .upserted
            .iter()
            .map(|p| (p.host_uid.as_str(), p.ready))
            .collect();
        assert_eq!(up, [("a", true), ("c", true)]);
        assert_eq!(d.removed_host_uids, ["b"]);
        assert!(d.errors.is_empty() && !d.errors_cleared);
    }

    #[test]
    fn error_list_is_replaced_or_cleared() {
        let a = state(&[], &["inotify overflow"]);
        let b = state(&[], &[]);
        let d = a.delta_to(&b).unwrap();
        assert!(d.errors_cleared && d.errors.is_empty());
        let d = b.delta_to(&a).unwrap();
        assert_eq!(d.errors, ["inotify overflow"]);
        assert!(!d.errors_cleared);
    }
}
