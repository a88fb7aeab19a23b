//! Capabilities: the agent needs exactly `CAP_SYS_ADMIN` (mount, umount, and making mounts
//! shared). [`restrict`] checks for it and drops every other capability from the effective,
//! permitted, inheritable, ambient and (when allowed) bounding sets. It runs in `main` before
//! the async runtime starts, so no thread ever runs with more.

use caps::{CapSet, Capability, CapsHashSet};

/// What went wrong with capabilities.
#[derive(Debug, thiserror::Error)]
pub enum CapsError {
    /// The process lacks CAP_SYS_ADMIN.
    #[error(
        "CAP_SYS_ADMIN is missing: fleetmirror-agent bind-mounts pod directories and needs it \
         (run it as root, or in the DaemonSet with securityContext.privileged: true)"
    )]
    MissingSysAdmin,
    /// Reading or changing a capability set failed.
    #[error("changing capabilities ({set}): {source}")]
    Syscall {
        set: &'static str,
        source: caps::errors::CapsError,
    },
}

/// The capabilities the agent keeps.
pub fn needed() -> CapsHashSet {
    [Capability::CAP_SYS_ADMIN].into_iter().collect()
}

/// Checks that CAP_SYS_ADMIN is effective, then drops everything else. Returns the number of
/// capabilities dropped from the bounding set (0 when the process may not change it).
pub fn restrict() -> Result<usize, CapsError> {
    let err = |set| move |source| CapsError::Syscall { set, source };
    if !caps::has_cap(None, CapSet::Effective, Capability::CAP_SYS_ADMIN)
        .map_err(err("effective"))?
    {
        return Err(CapsError::MissingSysAdmin);
    }
    let keep = needed();
    // The bounding set first: dropping from it needs CAP_SETPCAP, which goes below.
    let mut dropped = 0;
    if caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP).map_err(err("effective"))? {
        for cap in caps::read(None, CapSet::Bounding).map_err(err("bounding"))? {
            if !keep.contains(&cap) {
                caps::drop(None, CapSet::Bounding, cap).map_err(err("bounding"))?;
                dropped += 1;
            }
        }
    }
    caps::clear(None, CapSet::Ambient).map_err(err("ambient"))?;
    caps::clear(None, CapSet::Inheritable).map_err(err("inheritable"))?;
    // Effective must stay a subset of permitted: shrink it first.
    caps::set(None, CapSet::Effective, &keep).map_err(err("effective"))?;
    caps::set(None, CapSet::Permitted, &keep).map_err(err("permitted"))?;
    Ok(dropped)
}
