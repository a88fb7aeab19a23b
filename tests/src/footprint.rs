//! Builders for the host-side footprint of a vCluster, exactly as vCluster's syncer leaves it
//! on a host cluster (../shared/spec/agent.md and health.md):
//!
//! * the control plane: StatefulSet `<vc>` (pod `<vc>-0`) or, in HA / non-persistent setups,
//!   a Deployment `<vc>` with pods `<vc>-<hash>-<id>`; labels `app=vcluster, release=<vc>`;
//! * the API Service `<vc>` (labels `app=vcluster, release=<vc>`, port 443);
//! * the synced kube-dns Service `SafeConcatName("kube-dns","x","kube-system","x",<vc>)`;
//! * node Services `SafeConcatName(<vc>,"node",<node with . → ->)` labelled `belongs-to`;
//! * synced pods named `SafeConcatName(<vname>,"x",<vns>,"x",<vc>)` with label
//!   `vcluster.loft.sh/managed-by` and the `vcluster.loft.sh/uid|name|namespace` annotations
//!   (or the vCluster ≥ 0.14 `object-*` ones).
//!
//! There is no kubelet: pods are created with `spec.nodeName` set and their status is written
//! through the status subresource, as a kubelet would.

use std::collections::BTreeMap;

use fleetmirror_core::naming;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    Container, Pod, PodSpec, PodTemplateSpec, Service, ServicePort, ServiceSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use serde_json::json;

fn labels(pairs: &[(&str, &str)]) -> Option<BTreeMap<String, String>> {
    Some(
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

fn container() -> Vec<Container> {
    vec![Container {
        name: "main".into(),
        image: Some("registry.invalid/none:0".into()),
        ..Default::default()
    }]
}

/// One vCluster's identity on the host.
#[derive(Debug, Clone)]
pub struct VCluster {
    /// Host namespace of its control plane.
    pub namespace: String,
    /// Its name (label `release`).
    pub name: String,
}

/// Which annotation keys a synced pod carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnnotationStyle {
    /// `vcluster.loft.sh/uid`, `/name`, `/namespace`.
    Classic,
    /// Only the vCluster ≥ 0.14 `vcluster.loft.sh/object-uid`, `/object-name`, `/object-namespace`.
    Object,
}

/// A synced pod to create.
#[derive(Debug, Clone)]
pub struct SyncedPod {
    /// The pod object (host side).
    pub pod: Pod,
    /// Its virtual UID.
    pub virtual_uid: String,
}

impl VCluster {
    /// vCluster `name` with its control plane in `namespace`.
    pub fn new(namespace: &str, name: &str) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    fn meta(&self, name: &str, labels: Option<BTreeMap<String, String>>) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.into()),
            namespace: Some(self.namespace.clone()),
            labels,
            ..Default::default()
        }
    }

    fn control_plane_labels(&self) -> Option<BTreeMap<String, String>> {
        labels(&[
            (naming::LABEL_APP, naming::APP_VCLUSTER),
            (naming::LABEL_RELEASE, &self.name),
        ])
    }

    fn template(&self) -> (LabelSelector, PodTemplateSpec) {
        let selector = LabelSelector {
            match_labels: self.control_plane_labels(),
            ..Default::default()
        };
        let template = PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: self.control_plane_labels(),
                ..Default::default()
            }),
            spec: Some(PodSpec {
                containers: container(),
                ..Default::default()
            }),
        };
        (selector, template)
    }

    /// The control-plane StatefulSet `<vc>`.
    pub fn statefulset(&self) -> StatefulSet {
        let (selector, template) = self.template();
        StatefulSet {
            metadata: self.meta(&self.name, self.control_plane_labels()),
            spec: Some(StatefulSetSpec {
                selector,
                template,
                service_name: Some(format!("{}-headless", self.name)),
                replicas: Some(1),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// The control-plane Deployment `<vc>` (HA or non-persistent setups).
    pub fn deployment(&self) -> Deployment {
        let (selector, template) = self.template();
        Deployment {
            metadata: self.meta(&self.name, self.control_plane_labels()),
            spec: Some(DeploymentSpec {
                selector,
                template,
                replicas: Some(1),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// A control-plane pod on `node`: `<vc>-0` for a StatefulSet, `<vc>-<hash>-<id>` for a Deployment.
    pub fn control_plane_pod(&self, node: &str, statefulset: bool) -> Pod {
        let name = if statefulset {
            format!("{}-0", self.name)
        } else {
            format!("{}-5d4f8c7b9-{}", self.name, &crate::suffix()[..5])
        };
        Pod {
            metadata: self.meta(&name, self.control_plane_labels()),
            spec: Some(PodSpec {
                node_name: Some(node.into()),
                containers: container(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// The API Service `<vc>`, port 443 → 8443.
    pub fn api_service(&self) -> Service {
        Service {
            metadata: self.meta(&self.name, self.control_plane_labels()),
            spec: Some(ServiceSpec {
                selector: self.control_plane_labels(),
                ports: Some(vec![ServicePort {
                    name: Some("https".into()),
                    port: 443,
                    target_port: Some(
                        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(8443),
                    ),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// The synced kube-dns Service (name hashed past 63 characters, like vCluster does).
    pub fn kube_dns_service(&self) -> Service {
        let mut meta = self.meta(
            &naming::kube_dns_service_name(&self.name),
            labels(&[(naming::LABEL_MANAGED_BY, &self.name)]),
        );
        meta.annotations = labels(&[
            (naming::ANNOTATION_OBJECT_NAME, "kube-dns"),
            (naming::ANNOTATION_OBJECT_NAMESPACE, "kube-system"),
        ]);
        Service {
            metadata: meta,
            spec: Some(dns_spec()),
            ..Default::default()
        }
    }

    /// The node Service vCluster creates for `node`.
    pub fn node_service(&self, node: &str) -> Service {
        Service {
            metadata: self.meta(
                &naming::node_service_name(&self.name, node),
                labels(&[(naming::LABEL_BELONGS_TO, &self.name)]),
            ),
            spec: Some(ServiceSpec {
                ports: Some(vec![ServicePort {
                    name: Some("kubelet".into()),
                    port: 10250,
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// A synced pod of virtual pod `vns/vname`, on `node`, with a fresh virtual UID.
    pub fn synced_pod(
        &self,
        vns: &str,
        vname: &str,
        node: &str,
        style: AnnotationStyle,
    ) -> SyncedPod {
        let virtual_uid = crate::random_uuid();
        let mut meta = self.meta(
            &naming::host_name(vname, vns, &self.name),
            labels(&[
                (naming::LABEL_MANAGED_BY, &self.name),
                (naming::LABEL_NAMESPACE, vns),
            ]),
        );
        meta.annotations = match style {
            AnnotationStyle::Classic => labels(&[
                (naming::ANNOTATION_UID, &virtual_uid),
                (naming::ANNOTATION_NAME, vname),
                (naming::ANNOTATION_NAMESPACE, vns),
            ]),
            AnnotationStyle::Object => labels(&[
                (naming::ANNOTATION_OBJECT_UID, &virtual_uid),
                (naming::ANNOTATION_OBJECT_NAME, vname),
                (naming::ANNOTATION_OBJECT_NAMESPACE, vns),
            ]),
        };
        let pod = Pod {
            metadata: meta,
            spec: Some(PodSpec {
                node_name: Some(node.into()),
                containers: container(),
                ..Default::default()
            }),
            ..Default::default()
        };
        SyncedPod { pod, virtual_uid }
    }

    /// Creates the complete footprint on `node`: StatefulSet control plane with a Running and
    /// Ready pod, API Service, kube-dns Service, node Service, a synced CoreDNS pod (virtual
    /// namespace kube-system) and a synced tenant pod (virtual namespace `default`), both
    /// Running and Ready. Returns the synced pods as created (with their host UIDs).
    pub async fn create_complete(&self, client: &kube::Client, node: &str) -> Vec<Pod> {
        create(client, &self.statefulset()).await;
        create_running_pod(client, &self.control_plane_pod(node, true), true).await;
        create(client, &self.api_service()).await;
        create(client, &self.kube_dns_service()).await;
        create(client, &self.node_service(node)).await;
        let mut pods = Vec::new();
        for (vns, vname) in [
            ("kube-system", "coredns-6f8d5b9c7-x2x4q"),
            ("default", "web-0"),
        ] {
            let sp = self.synced_pod(vns, vname, node, AnnotationStyle::Classic);
            pods.push(create_running_pod(client, &sp.pod, true).await);
        }
        pods
    }
}

fn dns_spec() -> ServiceSpec {
    ServiceSpec {
        ports: Some(vec![
            ServicePort {
                name: Some("dns".into()),
                port: 53,
                protocol: Some("UDP".into()),
                ..Default::default()
            },
            ServicePort {
                name: Some("dns-tcp".into()),
                port: 53,
                protocol: Some("TCP".into()),
                ..Default::default()
            },
        ]),
        ..Default::default()
    }
}

/// Creates any namespaced object in its own namespace.
pub async fn create<K>(client: &kube::Client, obj: &K) -> K
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let ns = obj
        .meta()
        .namespace
        .clone()
        .expect("object has a namespace");
    Api::<K>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), obj)
        .await
        .unwrap_or_else(|e| panic!("creating {:?}: {e}", obj.meta().name))
}

/// Creates `pod` and sets its status as a kubelet would: phase Running, Ready condition `ready`.
pub async fn create_running_pod(client: &kube::Client, pod: &Pod, ready: bool) -> Pod {
    let created = create(client, pod).await;
    set_pod_status(client, &created, "Running", ready).await
}

/// Writes a pod's phase and Ready condition through the status subresource.
pub async fn set_pod_status(client: &kube::Client, pod: &Pod, phase: &str, ready: bool) -> Pod {
    let ns = pod.metadata.namespace.as_deref().expect("namespace");
    let name = pod.metadata.name.as_deref().expect("name");
    let status = if ready { "True" } else { "False" };
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let patch = json!({"status": {
        "phase": phase,
        "conditions": [
            {"type": "Ready", "status": status, "lastTransitionTime": now},
            {"type": "ContainersReady", "status": status, "lastTransitionTime": now},
        ],
    }});
    Api::<Pod>::namespaced(client.clone(), ns)
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap_or_else(|e| panic!("setting status of pod {ns}/{name}: {e}"))
}
