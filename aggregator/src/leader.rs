//! Leader election on the `coordination.k8s.io/v1` Lease `fleetmirror-aggregator`.
//!
//! Only the leader writes to the API and accepts agent reports; standbys keep serving gRPC
//! (health, reflection) and refuse agent streams with UNAVAILABLE, naming the leader. The
//! leader writes on the Lease, with every renewal (no extra API call), its gRPC address
//! (annotation [`ADDRESS_ANNOTATION`], so standbys can forward the Diagnostics calls only the
//! leader can answer) and how many nodes' agents report to it ([`AGENT_NODES_ANNOTATION`], so
//! the next leader knows how many to wait for before it judges pod facts: see the health
//! controller's failover rule).
//!
//! The algorithm is client-go's: every `retry` the candidate reads the Lease; it takes it when
//! it is free (no holder) or expired, and the holder renews it. **Expiry is judged on this
//! replica's own monotonic clock**: a Lease is expired when it has not changed for a whole
//! lease duration since this replica *saw* it change, never by comparing the holder's
//! `renewTime` with local wall time — so clock skew between nodes cannot make two leaders.
//! Every write is an update carrying the `resourceVersion` that was read, so two candidates
//! can never both win: the API server refuses the second with a conflict. A conflict on the
//! leader's own renewal (its previous update landed but the answer was lost, or another field
//! changed) is re-read once and retried, not taken for a lost Lease.
//!
//! Each uninterrupted stretch of leadership is a [`Term`], valid until one retry interval
//! before the Lease could expire (`renew start + duration − retry`); every write of the
//! aggregator is fenced by it (see [`crate::platform::term`]). A leader that cannot renew in
//! time ends its term on its own, before a standby may take over. On shutdown the term ends
//! and the Lease is released so a standby takes over at once.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::platform::Term;

/// The Lease name fixed by the product contract.
pub const LEASE_NAME: &str = "fleetmirror-aggregator";

/// Annotation on the Lease: the holder's gRPC address (`ip:port`), when it advertises one.
pub const ADDRESS_ANNOTATION: &str = "fleetmirror.io/grpc-address";

/// Annotation on the Lease: whose address [`ADDRESS_ANNOTATION`] is. An address is used only
/// while this names the holder (a replica that does not know the annotations, e.g. of an older
/// version, keeps them when it takes the Lease).
pub const ADDRESS_OWNER_ANNOTATION: &str = "fleetmirror.io/grpc-address-of";

/// Annotation on the Lease: how many nodes' agents report to the leader (kept on release).
pub const AGENT_NODES_ANNOTATION: &str = "fleetmirror.io/agent-nodes";

/// Who leads, as the last attempt saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Holder {
    /// The holder's identity ("" when unknown).
    pub identity: String,
    /// Its gRPC address, when it advertises a valid one.
    pub address: Option<std::net::SocketAddr>,
}

/// Settings of one candidate.
#[derive(Debug, Clone)]
pub struct ElectionConfig {
    /// This replica's identity (its pod name).
    pub identity: String,
    /// How long the Lease is valid without renewal.
    pub lease_duration: Duration,
    /// How often to renew or try to acquire.
    pub retry: Duration,
    /// This replica's gRPC address, written on the Lease while it leads.
    pub advertise: Option<std::net::SocketAddr>,
    /// How long a write may take.
    pub request_timeout: Duration,
}

/// How many nodes' agents report to this replica, when it is the kind of number to publish,
/// given the count the current term started from (the previous leader's), if any.
pub type AgentNodes = std::sync::Arc<dyn Fn(Option<u32>) -> Option<u32> + Send + Sync>;

/// A candidate for the Lease.
pub struct LeaderElector {
    api: Api<Lease>,
    config: ElectionConfig,
    agent_nodes: AgentNodes,
}

impl std::fmt::Debug for LeaderElector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaderElector")
            .field("config", &self.config)
            .finish()
    }
}

/// What one attempt found.
#[derive(Debug, PartialEq, Eq)]
enum Attempt {
    /// We hold the Lease (acquired or renewed). When acquired from another holder: how many
    /// nodes reported to it, if it said.
    Held { previous_agent_nodes: Option<u32> },
    /// Someone else holds a valid Lease.
    HeldBy(Holder),
}

fn other(identity: &str) -> Attempt {
    Attempt::HeldBy(Holder {
        identity: identity.into(),
        address: None,
    })
}

/// The Lease record as last seen, and when this replica saw it change (client-go's
/// `observedRecord` / `observedTime`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Observed {
    holder: String,
    renew_time: Option<String>,
    transitions: Option<i32>,
    duration_secs: Option<i32>,
}

impl Observed {
    fn of(spec: &LeaseSpec) -> Self {
        Observed {
            holder: spec.holder_identity.clone().unwrap_or_default(),
            renew_time: spec.renew_time.as_ref().map(|t| t.0.to_string()),
            transitions: spec.lease_transitions,
            duration_secs: spec.lease_duration_seconds,
        }
    }
}

impl LeaderElector {
    /// A candidate for the Lease in `namespace`; `agent_nodes` is published on the Lease.
    pub fn new(
        client: kube::Client,
        namespace: &str,
        config: ElectionConfig,
        agent_nodes: AgentNodes,
    ) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            config,
            agent_nodes,
        }
    }

    /// Runs until `shutdown`; publishes each term on `leadership` (`None` while this replica
    /// does not lead), and on `holder` who else leads (`None` while this replica does, or
    /// nobody is known to).
    pub async fn run(
        self,
        leadership: watch::Sender<Option<Term>>,
        holder: watch::Sender<Option<Holder>>,
        shutdown: CancellationToken,
    ) {
        let mut term: Option<Term> = None;
        let mut terms = 0;
        let mut observed: Option<(Observed, Instant)> = None;
        let mut last_holder = String::new();
        let margin = self.config.lease_duration.saturating_sub(self.config.retry);
        let step_down = |term: &mut Option<Term>, why: &str| {
            if let Some(t) = term.take() {
                t.end();
                leadership.send_replace(None);
                tracing::warn!(identity = %self.config.identity, "{why}; stepping down");
            }
        };
        loop {
            let started = Instant::now();
            // A leader's attempt may take only what is left of its term.
            let budget = term.as_ref().map_or(margin, Term::remaining);
            let attempt = if budget.is_zero() {
                Err("the term ended before the lease could be renewed".to_owned())
            } else {
                let attempt = self.try_acquire_or_renew(&mut observed, term.as_ref());
                match tokio::time::timeout(budget, attempt).await {
                    Ok(r) => r.map_err(|e| e.to_string()),
                    Err(_) => Err(format!("no answer from the API server within {budget:?}")),
                }
            };
            match attempt {
                Ok(Attempt::Held {
                    previous_agent_nodes,
                }) => {
                    // A renewal answered after the term lapsed does not revive it: leadership
                    // regained after a lapse is a new term.
                    if term.as_ref().is_some_and(|t| !t.extend(started + margin)) {
                        step_down(&mut term, "the term lapsed before the renewal was answered");
                    }
                    match &term {
                        Some(_) => {}
                        None => {
                            terms += 1;
                            let t = Term::new(
                                terms,
                                started + margin,
                                self.config.request_timeout,
                                previous_agent_nodes,
                            );
                            tracing::info!(identity = %self.config.identity, lease = LEASE_NAME, term = terms, ?previous_agent_nodes, "became leader");
                            term = Some(t.clone());
                            leadership.send_replace(Some(t));
                        }
                    }
                    holder.send_replace(None);
                }
                Ok(Attempt::HeldBy(other)) => {
                    step_down(&mut term, &format!("lost the lease to {}", other.identity));
                    if other.identity != last_holder {
                        tracing::info!(holder = %other.identity, address = ?other.address, "standing by: another replica leads");
                    }
                    last_holder = other.identity.clone();
                    holder.send_if_modified(|h| {
                        let changed = h.as_ref() != Some(&other);
                        *h = Some(other);
                        changed
                    });
                }
                Err(error) => {
                    tracing::warn!(%error, "leader election: cannot read or write the lease");
                    if term.as_ref().is_some_and(|t| !t.is_valid()) {
                        step_down(&mut term, "could not renew the lease in time");
                    }
                    // What the Lease said may be out of date by now: forward nothing, send no
                    // agent anywhere, until it can be read again.
                    holder.send_replace(None);
                }
            }
            let sleep = term
                .as_ref()
                .map_or(self.config.retry, |t| t.remaining().min(self.config.retry));
            tokio::select! {
                _ = tokio::time::sleep(sleep) => {}
                _ = shutdown.cancelled() => break,
            }
        }
        if let Some(t) = term.take() {
            // No new write; those in flight are answered before the Lease is released, so none
            // lands after the next leader's first.
            t.hand_over(self.config.request_timeout).await;
            leadership.send_replace(None);
            match self.release().await {
                Ok(()) => tracing::info!("released the lease"),
                Err(error) => {
                    tracing::warn!(%error, "could not release the lease; a standby takes over when it expires")
                }
            }
        }
    }

    async fn try_acquire_or_renew(
        &self,
        observed: &mut Option<(Observed, Instant)>,
        term: Option<&Term>,
    ) -> Result<Attempt, kube::Error> {
        let me = &self.config.identity;
        let Some(lease) = self.api.get_opt(LEASE_NAME).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(LEASE_NAME.into()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            let lease = self.stamp(lease, true, None);
            return match self.api.create(&PostParams::default(), &lease).await {
                // Nobody led before: no agents reported to a previous leader, nothing to wait for
                // (a Lease someone deleted while statuses exist is the rare exception).
                Ok(_) => Ok(Attempt::Held {
                    previous_agent_nodes: Some(0),
                }),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(other("(another replica)")),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let record = Observed::of(&spec);
        let now = Instant::now();
        if observed.as_ref().map(|(r, _)| r) != Some(&record) {
            *observed = Some((record.clone(), now));
        }
        let holder = record.holder.clone();
        if holder != *me && !holder.is_empty() {
            let seen_at = observed.as_ref().map_or(now, |(_, t)| *t);
            let secs = spec
                .lease_duration_seconds
                .map_or(self.config.lease_duration, |s| {
                    Duration::from_secs(s.max(1) as u64)
                });
            if now < seen_at + secs {
                return Ok(Attempt::HeldBy(Holder {
                    address: holder_address(&lease, &holder),
                    identity: holder,
                }));
            }
        }
        // Starting a term (from another holder, or again after our own lapsed): how many
        // nodes reported to the last leader, which the new term waits for.
        let previous_agent_nodes = term.is_none().then(|| agent_nodes(&lease)).flatten();
        let carried = term.map_or(previous_agent_nodes, Term::previous_agent_nodes);
        let acquiring = holder != *me;
        let stamped = self.stamp(lease, acquiring, carried);
        // `replace` sends the resourceVersion we read: a concurrent writer makes this a 409.
        match self
            .api
            .replace(LEASE_NAME, &PostParams::default(), &stamped)
            .await
        {
            Ok(_) => Ok(Attempt::Held {
                previous_agent_nodes,
            }),
            Err(kube::Error::Api(s)) if s.code == 409 && !acquiring => {
                // Our own renewal conflicted: read again, and renew once more if it is still
                // ours (our previous update may have landed with its answer lost).
                let fresh = self.api.get(LEASE_NAME).await?;
                let still_ours = fresh
                    .spec
                    .as_ref()
                    .and_then(|s| s.holder_identity.as_deref())
                    == Some(me.as_str());
                if !still_ours {
                    return Ok(other("(another replica)"));
                }
                let stamped = self.stamp(fresh, false, carried);
                match self
                    .api
                    .replace(LEASE_NAME, &PostParams::default(), &stamped)
                    .await
                {
                    Ok(_) => Ok(Attempt::Held {
                        previous_agent_nodes,
                    }),
                    Err(kube::Error::Api(s)) if s.code == 409 => Ok(other("(another replica)")),
                    Err(e) => Err(e),
                }
            }
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(other("(another replica)")),
            Err(e) => Err(e),
        }
    }

    /// `lease` held by this replica from now: renewed, with its annotations. The agent-node
    /// count published is never below `carried` (the previous leader's) while this replica's
    /// own agents reconnect, so a second failover in quick succession still waits for them.
    fn stamp(&self, mut lease: Lease, acquiring: bool, carried: Option<u32>) -> Lease {
        let now = MicroTime(Timestamp::now());
        let me = &self.config.identity;
        let spec = lease.spec.get_or_insert_with(Default::default);
        if acquiring {
            spec.acquire_time = Some(now.clone());
            if spec
                .holder_identity
                .as_deref()
                .is_some_and(|h| !h.is_empty())
            {
                spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            }
            spec.holder_identity = Some(me.clone());
        }
        spec.renew_time = Some(now);
        spec.lease_duration_seconds = Some(self.config.lease_duration.as_secs().max(1) as i32);
        set_address(&mut lease, self.config.advertise, me);
        if let Some(n) = (self.agent_nodes)(carried) {
            lease
                .metadata
                .annotations
                .get_or_insert_with(Default::default)
                .insert(AGENT_NODES_ANNOTATION.into(), n.to_string());
        }
        lease
    }

    async fn release(&self) -> Result<(), kube::Error> {
        let mut lease = self.api.get(LEASE_NAME).await?;
        let spec = lease.spec.get_or_insert_with(Default::default);
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        set_address(&mut lease, None, "");
        self.api
            .replace(LEASE_NAME, &PostParams::default(), &lease)
            .await
            .map(|_| ())
    }
}

/// How many nodes reported to the Lease's last holder, if it said.
fn agent_nodes(lease: &Lease) -> Option<u32> {
    lease
        .metadata
        .annotations
        .as_ref()?
        .get(AGENT_NODES_ANNOTATION)?
        .parse()
        .ok()
}

/// The address `holder` advertises on `lease`. Written by another replica: used only if it is
/// the holder's (see [`ADDRESS_OWNER_ANNOTATION`]) and parses as `ip:port`.
fn holder_address(lease: &Lease, holder: &str) -> Option<std::net::SocketAddr> {
    let a = lease.metadata.annotations.as_ref()?;
    if a.get(ADDRESS_OWNER_ANNOTATION).map(String::as_str) != Some(holder) {
        return None;
    }
    a.get(ADDRESS_ANNOTATION)?.parse().ok()
}

/// Sets (or removes) the holder's address annotations.
fn set_address(lease: &mut Lease, address: Option<std::net::SocketAddr>, holder: &str) {
    let annotations = lease
        .metadata
        .annotations
        .get_or_insert_with(Default::default);
    match address {
        Some(a) => {
            annotations.insert(ADDRESS_ANNOTATION.into(), a.to_string());
            annotations.insert(ADDRESS_OWNER_ANNOTATION.into(), holder.into());
        }
        None => {
            annotations.remove(ADDRESS_ANNOTATION);
            annotations.remove(ADDRESS_OWNER_ANNOTATION);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_used_only_when_it_is_the_holders() {
        let mut lease = Lease::default();
        set_address(&mut lease, Some("10.0.0.7:9090".parse().unwrap()), "agg-a");
        assert_eq!(
            holder_address(&lease, "agg-a"),
            Some("10.0.0.7:9090".parse().unwrap())
        );
        assert_eq!(
            holder_address(&lease, "agg-b"),
            None,
            "left by another replica"
        );
        lease
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(ADDRESS_ANNOTATION.into(), "http://evil.example/".into());
        assert_eq!(holder_address(&lease, "agg-a"), None, "not an ip:port");
        set_address(&mut lease, None, "");
        assert_eq!(holder_address(&lease, "agg-a"), None);
        assert!(lease.metadata.annotations.unwrap().is_empty());
    }

    #[test]
    fn the_agent_count_is_read_from_the_lease() {
        let mut lease = Lease::default();
        assert_eq!(agent_nodes(&lease), None);
        lease.metadata.annotations =
            Some([(AGENT_NODES_ANNOTATION.to_owned(), "37".to_owned())].into());
        assert_eq!(agent_nodes(&lease), Some(37));
        lease.metadata.annotations =
            Some([(AGENT_NODES_ANNOTATION.to_owned(), "-1".to_owned())].into());
        assert_eq!(agent_nodes(&lease), None, "garbage is unknown, not zero");
    }
}
