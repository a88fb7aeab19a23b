//! The harness's control planes: two independent clusters, and an API server that stops and
//! comes back (the aggregator steps down while it cannot renew its Lease, and leads again).

use std::time::Duration;

use fleetmirror_tests::cluster::{ControlPlane, namespace};
use fleetmirror_tests::eventually;
use fleetmirror_tests::process::{Aggregator, AggregatorConfig};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, ObjectMeta, PostParams};

#[tokio::test(flavor = "multi_thread")]
async fn the_two_shared_clusters_are_independent() {
    let cp = ControlPlane::shared();
    let (c0, c1) = (cp.client(0).await, cp.client(1).await);
    let ns = namespace(&c0, "indep").await;
    assert!(
        Api::<Namespace>::all(c1.clone())
            .get_opt(&ns)
            .await
            .unwrap()
            .is_none(),
        "namespace leaked across clusters"
    );
    let ns1 = Namespace {
        metadata: ObjectMeta {
            name: Some(ns.clone()),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<Namespace>::all(c1.clone())
        .create(&PostParams::default(), &ns1)
        .await
        .unwrap();
    for (client, value) in [(&c0, "zero"), (&c1, "one")] {
        let cm = ConfigMap {
            metadata: ObjectMeta {
                name: Some("same-name".into()),
                ..Default::default()
            },
            data: Some([("cluster".to_owned(), value.to_owned())].into()),
            ..Default::default()
        };
        Api::<ConfigMap>::namespaced(client.clone(), &ns)
            .create(&PostParams::default(), &cm)
            .await
            .unwrap();
    }
    for (client, value) in [(&c0, "zero"), (&c1, "one")] {
        let cm = Api::<ConfigMap>::namespaced(client.clone(), &ns)
            .get("same-name")
            .await
            .unwrap();
        assert_eq!(cm.data.unwrap()["cluster"], value);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn aggregator_steps_down_while_the_api_server_is_gone_and_leads_again_after() {
    let cp = ControlPlane::dedicated("restart");
    let client = cp.client(0).await;
    let ns = namespace(&client, "restart").await;
    let mut agg = Aggregator::start(&cp, 0, AggregatorConfig::new(&ns));
    let wait = Duration::from_secs(60);
    let gauge = |agg: &Aggregator| agg.metric("fleetmirror_aggregator_leader");
    eventually(wait, "leadership", || async {
        (gauge(&agg) == Some(1.0)).then_some(())
    })
    .await;

    cp.stop_apiserver(0);
    eventually(
        wait,
        "the leader steps down without the API server",
        || async { (gauge(&agg) == Some(0.0)).then_some(()) },
    )
    .await;
    assert!(
        agg.process.is_running(),
        "the aggregator must survive an API outage"
    );

    cp.start_apiserver(0);
    eventually(
        wait,
        "leadership again after the API server is back",
        || async { (gauge(&agg) == Some(1.0)).then_some(()) },
    )
    .await;
    assert!(agg.process.is_running());
}
