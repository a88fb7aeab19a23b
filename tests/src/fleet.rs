//! `VClusterHealth` objects for tests: create one, read its status and conditions.

use fleetmirror_aggregator::crd::{VClusterHealth, VClusterHealthStatus};
use fleetmirror_core::status::Condition;
use kube::api::{Api, PostParams};

/// Creates VClusterHealth `fleet` in `ns` selecting `target`.
pub async fn create_fleet(client: &kube::Client, ns: &str, target: &str, interval: i64) {
    create_fleet_named(client, ns, "fleet", target, interval).await
}

/// Creates VClusterHealth `name` in `ns` selecting `target`.
pub async fn create_fleet_named(
    client: &kube::Client,
    ns: &str,
    name: &str,
    target: &str,
    interval: i64,
) {
    let vch = VClusterHealth::new(
        name,
        fleetmirror_aggregator::crd::VClusterHealthSpec {
            namespace: Some(target.into()),
            interval_seconds: Some(interval),
        },
    );
    let mut vch = vch;
    vch.metadata.namespace = Some(ns.into());
    Api::<VClusterHealth>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &vch)
        .await
        .unwrap();
}

/// The status of VClusterHealth `ns/name`, once it has one.
pub async fn status(client: &kube::Client, ns: &str, name: &str) -> Option<VClusterHealthStatus> {
    Api::<VClusterHealth>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .ok()?
        .status
}

/// Condition `type_` of VClusterHealth `ns/name`.
pub async fn condition(
    client: &kube::Client,
    ns: &str,
    name: &str,
    type_: &str,
) -> Option<Condition> {
    status(client, ns, name)
        .await?
        .conditions
        .into_iter()
        .find(|c| c.type_ == type_)
}
