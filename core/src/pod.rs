//! Which host pods are vCluster pods, from their labels and annotations only (agent.md):
//!
//! * a **synced pod** has label `vcluster.loft.sh/managed-by` (its vCluster); its virtual UID,
//!   name and namespace come from the `vcluster.loft.sh/uid|name|namespace` annotations, with
//!   the vCluster ≥ 0.14 `object-*` fallbacks (and label `vcluster.loft.sh/namespace` last for
//!   the namespace);
//! * a **control-plane pod** has labels `app=vcluster` and `release=<vcluster>` and no
//!   `managed-by`; it is reported for readiness and never mounted.
//!
//! Every value here is tenant-controlled. [`classify`] never fails: a synced pod whose vCluster
//! name or virtual UID cannot be a path component is still a synced pod, carrying the reason
//! it must not be mounted ([`SyncedPod::refusal`]), so the refusal is reported, not lost.

use std::collections::BTreeMap;

use crate::naming::{self, validate_dns1123_label, validate_uid};

/// The facts of a host pod that classification reads.
#[derive(Debug, Clone, Copy)]
pub struct PodMeta<'a> {
    /// Labels.
    pub labels: &'a BTreeMap<String, String>,
    /// Annotations.
    pub annotations: &'a BTreeMap<String, String>,
}

/// A synced vCluster pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncedPod {
    /// Label `vcluster.loft.sh/managed-by`, as written (may be invalid: see `refusal`).
    pub vcluster: String,
    /// Virtual UID, as written (may be empty or invalid: see `refusal`).
    pub virtual_uid: String,
    /// Virtual pod name ("" when unknown).
    pub virtual_name: String,
    /// Virtual namespace ("" when unknown).
    pub virtual_namespace: String,
    /// Why this pod must not be mounted, when its metadata cannot be trusted as a path.
    pub refusal: Option<String>,
}

/// What a host pod is to fleetmirror.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodClass {
    /// A pod synced by a vCluster.
    Synced(SyncedPod),
    /// A vCluster control-plane pod of the named vCluster.
    ControlPlane {
        /// Label `release`.
        vcluster: String,
    },
    /// Nothing to do with vCluster.
    Other,
}

fn first<'a>(map: &'a BTreeMap<String, String>, keys: &[&str]) -> Option<&'a str> {
    keys.iter()
        .find_map(|k| map.get(*k).map(String::as_str).filter(|v| !v.is_empty()))
}

/// Classifies a host pod by its labels and annotations.
pub fn classify(pod: PodMeta<'_>) -> PodClass {
    if let Some(vcluster) = pod.labels.get(naming::LABEL_MANAGED_BY) {
        let virtual_uid = first(
            pod.annotations,
            &[naming::ANNOTATION_UID, naming::ANNOTATION_OBJECT_UID],
        )
        .unwrap_or("");
        let virtual_name = first(
            pod.annotations,
            &[naming::ANNOTATION_NAME, naming::ANNOTATION_OBJECT_NAME],
        )
        .unwrap_or("");
        let virtual_namespace = first(
            pod.annotations,
            &[
                naming::ANNOTATION_NAMESPACE,
                naming::ANNOTATION_OBJECT_NAMESPACE,
            ],
        )
        .or_else(|| first(pod.labels, &[naming::LABEL_NAMESPACE]))
        .unwrap_or("");
        let refusal = validate_dns1123_label(vcluster)
            .map_err(|e| {
                format!(
                    "label {} {:?} {e}",
                    naming::LABEL_MANAGED_BY,
                    truncate(vcluster)
                )
            })
            .and_then(|()| {
                validate_uid(virtual_uid).map_err(|e| {
                    format!(
                        "virtual pod UID (annotation {}) {:?} {e}",
                        naming::ANNOTATION_UID,
                        truncate(virtual_uid)
                    )
                })
            })
            .err();
        return PodClass::Synced(SyncedPod {
            vcluster: vcluster.clone(),
            virtual_uid: virtual_uid.to_owned(),
            virtual_name: virtual_name.to_owned(),
            virtual_namespace: virtual_namespace.to_owned(),
            refusal,
        });
    }
    if pod.labels.get(naming::LABEL_APP).map(String::as_str) == Some(naming::APP_VCLUSTER)
        && let Some(release) = pod.labels.get(naming::LABEL_RELEASE)
    {
        return PodClass::ControlPlane {
            vcluster: release.clone(),
        };
    }
    PodClass::Other
}

/// Shortens a hostile value for a message (at most 80 characters).
pub fn truncate(s: &str) -> String {
    if s.chars().count() <= 80 {
        s.to_owned()
    } else {
        format!("{}…", s.chars().take(80).collect::<String>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const UID: &str = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";

    fn class(labels: &[(&str, &str)], annotations: &[(&str, &str)]) -> PodClass {
        let (l, a) = (map(labels), map(annotations));
        classify(PodMeta {
            labels: &l,
            annotations: &a,
        })
    }

    #[test]
    fn synced_pod_with_classic_annotations() {
        let c = class(
            &[("vcluster.loft.sh/managed-by", "vc")],
            &[
                ("vcluster.loft.sh/uid", UID),
                ("vcluster.loft.sh/name", "web-0"),
                ("vcluster.loft.sh/namespace", "shop"),
            ],
        );
        assert_eq!(
            c,
            PodClass::Synced(SyncedPod {
                vcluster: "vc".into(),
                virtual_uid: UID.into(),
                virtual_name: "web-0".into(),
                virtual_namespace: "shop".into(),
                refusal: None,
            })
        );
    }

    #[test]
    fn object_annotation_and_label_fallbacks() {
        let c = class(
            &[
                ("vcluster.loft.sh/managed-by", "vc"),
                ("vcluster.loft.sh/namespace", "from-label"),
            ],
            &[
                ("vcluster.loft.sh/object-uid", UID),
                ("vcluster.loft.sh/object-name", "web-0"),
            ],
        );
        let PodClass::Synced(p) = c else {
            panic!("synced")
        };
        assert_eq!(
            (p.virtual_uid.as_str(), p.virtual_name.as_str()),
            (UID, "web-0")
        );
        assert_eq!(p.virtual_namespace, "from-label");
        assert!(p.refusal.is_none());
        // The classic annotation wins over the object-* one.
        let c = class(
            &[("vcluster.loft.sh/managed-by", "vc")],
            &[
                ("vcluster.loft.sh/namespace", "a"),
                ("vcluster.loft.sh/object-namespace", "b"),
            ],
        );
        let PodClass::Synced(p) = c else {
            panic!("synced")
        };
        assert_eq!(p.virtual_namespace, "a");
    }

    #[test]
    fn control_plane_pods() {
        assert_eq!(
            class(&[("app", "vcluster"), ("release", "vc")], &[]),
            PodClass::ControlPlane {
                vcluster: "vc".into()
            }
        );
        // managed-by is decisive: a tenant pod that carries app=vcluster is a synced pod.
        let c = class(
            &[
                ("app", "vcluster"),
                ("release", "x"),
                ("vcluster.loft.sh/managed-by", "vc"),
            ],
            &[("vcluster.loft.sh/uid", UID)],
        );
        assert!(matches!(c, PodClass::Synced(_)));
        assert_eq!(class(&[("app", "vcluster")], &[]), PodClass::Other);
        assert_eq!(class(&[("app", "web")], &[]), PodClass::Other);
    }

    #[test]
    fn hostile_metadata_is_refused_with_a_reason() {
        for (vc, uid, needle) in [
            ("../../etc", UID, "managed-by"),
            ("", UID, "managed-by"),
            ("vc/x", UID, "managed-by"),
            (&"v".repeat(64) as &str, UID, "managed-by"),
            ("vc", "", "virtual pod UID"),
            ("vc", "not-a-uuid", "virtual pod UID"),
            (
                "vc",
                "../0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0",
                "virtual pod UID",
            ),
        ] {
            let c = class(
                &[("vcluster.loft.sh/managed-by", vc)],
                &[("vcluster.loft.sh/uid", uid)],
            );
            let PodClass::Synced(p) = c else {
                panic!("still a synced pod")
            };
            let reason = p
                .refusal
                .unwrap_or_else(|| panic!("{vc:?}/{uid:?} must be refused"));
            assert!(reason.contains(needle), "{reason}");
        }
        let long = "x".repeat(10_000);
        let c = class(&[("vcluster.loft.sh/managed-by", &long)], &[]);
        let PodClass::Synced(p) = c else { panic!() };
        assert!(p.refusal.unwrap().len() < 300, "messages stay short");
    }
}
