//! Leader election on the `coordination.k8s.io/v1` Lease `fleetmirror-aggregator`.
//!
//! Only the leader writes to the API and accepts agent reports; standbys keep serving gRPC
//! (health, reflection) and refuse agent streams with UNAVAILABLE, so agents reconnect until
//! the Service hands them to the leader. The leader writes its gRPC address on the Lease
//! (annotation [`ADDRESS_ANNOTATION`], with every renewal: no extra API call), so standbys can
//! forward the Diagnostics calls only the leader can answer.
//!
//! The algorithm is client-go's: every `retry` the candidate reads the Lease; it takes it when
//! it is free (no holder) or expired (`renewTime + leaseDurationSeconds` has passed), and the
//! holder renews it. Every write is an update carrying the `resourceVersion` that was read, so
//! two candidates can never both win: the API server refuses the second with a conflict. A
//! leader that cannot renew for a whole lease duration steps down on its own, before a standby
//! may take over. On shutdown the leader releases the Lease so a standby takes over at once.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The Lease name fixed by the product contract.
pub const LEASE_NAME: &str = "fleetmirror-aggregator";

/// Annotation on the Lease: the holder's gRPC address (`ip:port`), when it advertises one.
pub const ADDRESS_ANNOTATION: &str = "fleetmirror.io/grpc-address";

/// Annotation on the Lease: whose address [`ADDRESS_ANNOTATION`] is. An address is used only
/// while this names the holder (a replica that does not know the annotations, e.g. of an older
/// version, keeps them when it takes the Lease).
pub const ADDRESS_OWNER_ANNOTATION: &str = "fleetmirror.io/grpc-address-of";

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
}

/// A candidate for the Lease.
#[derive(Debug)]
pub struct LeaderElector {
    api: Api<Lease>,
    config: ElectionConfig,
}

/// What one attempt found.
#[derive(Debug, PartialEq, Eq)]
enum Attempt {
    /// We hold the Lease (acquired or renewed).
    Held,
    /// Someone else holds a valid Lease.
    HeldBy(Holder),
}

fn other(identity: &str) -> Attempt {
    Attempt::HeldBy(Holder {
        identity: identity.into(),
        address: None,
    })
}

impl LeaderElector {
    /// A candidate for the Lease in `namespace`.
    pub fn new(client: kube::Client, namespace: &str, config: ElectionConfig) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            config,
        }
    }

    /// Runs until `shutdown`; publishes `true` on `leader` while this replica leads, and on
    /// `holder` who else leads (`None` while this replica does, or nobody is known to).
    pub async fn run(
        self,
        leader: watch::Sender<bool>,
        holder: watch::Sender<Option<Holder>>,
        shutdown: CancellationToken,
    ) {
        // When the last successful attempt *started*: the Lease's renewTime is no later, so
        // our leadership is valid until then + lease duration. We stop leading one retry
        // interval before that, however long an API call hangs (each attempt is time-boxed).
        let mut last_renew: Option<Instant> = None;
        let mut last_holder = String::new();
        let margin = self.config.lease_duration.saturating_sub(self.config.retry);
        loop {
            let started = Instant::now();
            let budget = match (last_renew, *leader.borrow()) {
                (Some(t), true) => (t + margin).saturating_duration_since(started),
                _ => margin,
            };
            let attempt = match tokio::time::timeout(budget, self.try_acquire_or_renew()).await {
                Ok(r) => r.map_err(|e| e.to_string()),
                Err(_) => Err(format!("no answer from the API server within {budget:?}")),
            };
            match attempt {
                Ok(Attempt::Held) => {
                    if !*leader.borrow() {
                        tracing::info!(identity = %self.config.identity, lease = LEASE_NAME, "became leader");
                    }
                    last_renew = Some(started);
                    leader.send_replace(true);
                    holder.send_replace(None);
                }
                Ok(Attempt::HeldBy(other)) => {
                    let who = &other.identity;
                    if *leader.borrow() {
                        tracing::warn!(holder = %who, "lost the lease to another replica; stepping down");
                    } else if *who != last_holder {
                        tracing::info!(holder = %who, address = ?other.address, "standing by: another replica leads");
                    }
                    last_holder = who.clone();
                    last_renew = None;
                    leader.send_replace(false);
                    holder.send_if_modified(|h| {
                        let changed = h.as_ref() != Some(&other);
                        *h = Some(other);
                        changed
                    });
                }
                Err(error) => {
                    tracing::warn!(%error, "leader election: cannot read or write the lease");
                    let valid = last_renew.is_some_and(|t| t.elapsed() < margin);
                    if !valid && *leader.borrow() {
                        tracing::warn!("could not renew the lease in time; stepping down");
                        leader.send_replace(false);
                    }
                    // What the Lease said may be out of date by now: forward nothing, send no
                    // agent anywhere, until it can be read again.
                    holder.send_replace(None);
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(self.config.retry) => {}
                _ = shutdown.cancelled() => break,
            }
        }
        if *leader.borrow() {
            leader.send_replace(false);
            match self.release().await {
                Ok(()) => tracing::info!("released the lease"),
                Err(error) => {
                    tracing::warn!(%error, "could not release the lease; a standby takes over when it expires")
                }
            }
        }
    }

    async fn try_acquire_or_renew(&self) -> Result<Attempt, kube::Error> {
        let now = Timestamp::now();
        let me = &self.config.identity;
        let duration_secs = self.config.lease_duration.as_secs().max(1) as i32;
        let Some(mut lease) = self.api.get_opt(LEASE_NAME).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(LEASE_NAME.into()),
                    annotations: self.config.advertise.map(|a| {
                        [
                            (ADDRESS_ANNOTATION.to_owned(), a.to_string()),
                            (ADDRESS_OWNER_ANNOTATION.to_owned(), me.clone()),
                        ]
                        .into()
                    }),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(me.clone()),
                    lease_duration_seconds: Some(duration_secs),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(Attempt::Held),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(other("(another replica)")),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        let holder = spec.holder_identity.clone().unwrap_or_default();
        if holder != *me && !holder.is_empty() && !expired(spec, now) {
            let address = holder_address(&lease, &holder);
            return Ok(Attempt::HeldBy(Holder {
                identity: holder,
                address,
            }));
        }
        if holder != *me {
            spec.acquire_time = Some(MicroTime(now));
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            spec.holder_identity = Some(me.clone());
        }
        spec.renew_time = Some(MicroTime(now));
        spec.lease_duration_seconds = Some(duration_secs);
        set_address(&mut lease, self.config.advertise, me);
        // `replace` sends the resourceVersion we read: a concurrent writer makes this a 409.
        match self
            .api
            .replace(LEASE_NAME, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(Attempt::Held),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(other("(another replica)")),
            Err(e) => Err(e),
        }
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

/// True when the Lease's holder failed to renew within its duration.
fn expired(spec: &LeaseSpec, now: Timestamp) -> bool {
    let (Some(MicroTime(renewed)), Some(secs)) = (&spec.renew_time, spec.lease_duration_seconds)
    else {
        return true;
    };
    match renewed.checked_add(k8s_openapi::jiff::SignedDuration::from_secs(secs.into())) {
        Ok(deadline) => deadline < now,
        Err(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(renewed_secs_ago: i64, duration: i32) -> LeaseSpec {
        let now = Timestamp::now();
        LeaseSpec {
            holder_identity: Some("other".into()),
            renew_time: Some(MicroTime(
                now - k8s_openapi::jiff::SignedDuration::from_secs(renewed_secs_ago),
            )),
            lease_duration_seconds: Some(duration),
            ..Default::default()
        }
    }

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
    fn expiry() {
        let now = Timestamp::now();
        assert!(!expired(&spec(5, 15), now));
        assert!(expired(&spec(16, 15), now));
        assert!(
            expired(&LeaseSpec::default(), now),
            "a lease never renewed is free"
        );
    }
}
