//! vCluster's host-side naming contract, as its syncer writes it, and validation of every name
//! that fleetmirror takes from the API before it becomes a path component or a lookup key.
//!
//! Invariant: fleetmirror never identifies a pod by parsing its host name (hashed names lose
//! their `-x-<vcluster>` suffix); it uses the labels and annotations below.

use sha2::{Digest, Sha256};

/// Label on synced pods and Services: the name of the vCluster that manages them.
pub const LABEL_MANAGED_BY: &str = "vcluster.loft.sh/managed-by";
/// Label on vCluster node Services: the vCluster they belong to.
pub const LABEL_BELONGS_TO: &str = "vcluster.loft.sh/belongs-to";
/// Label fallback for the virtual namespace (older vCluster versions).
pub const LABEL_NAMESPACE: &str = "vcluster.loft.sh/namespace";
/// Annotation: virtual pod UID.
pub const ANNOTATION_UID: &str = "vcluster.loft.sh/uid";
/// Annotation fallback (vCluster ≥ 0.14): virtual object UID.
pub const ANNOTATION_OBJECT_UID: &str = "vcluster.loft.sh/object-uid";
/// Annotation: virtual pod name.
pub const ANNOTATION_NAME: &str = "vcluster.loft.sh/name";
/// Annotation fallback: virtual object name.
pub const ANNOTATION_OBJECT_NAME: &str = "vcluster.loft.sh/object-name";
/// Annotation: virtual namespace.
pub const ANNOTATION_NAMESPACE: &str = "vcluster.loft.sh/namespace";
/// Annotation fallback: virtual object namespace.
pub const ANNOTATION_OBJECT_NAMESPACE: &str = "vcluster.loft.sh/object-namespace";
/// Label `app` of vCluster control-plane workloads and pods (value [`APP_VCLUSTER`]).
pub const LABEL_APP: &str = "app";
/// Value of [`LABEL_APP`] on control-plane objects.
pub const APP_VCLUSTER: &str = "vcluster";
/// Label of control-plane objects naming their vCluster.
pub const LABEL_RELEASE: &str = "release";

/// Every label and annotation key fleetmirror reads. The watch stores keep only these, so a
/// tenant's labels (or a 256 KiB annotation) on a synced object cost no memory here.
pub const KEYS_READ: &[&str] = &[
    LABEL_MANAGED_BY,
    LABEL_BELONGS_TO,
    LABEL_NAMESPACE,
    ANNOTATION_UID,
    ANNOTATION_OBJECT_UID,
    ANNOTATION_NAME,
    ANNOTATION_OBJECT_NAME,
    ANNOTATION_NAMESPACE,
    ANNOTATION_OBJECT_NAMESPACE,
    LABEL_APP,
    LABEL_RELEASE,
];

/// The longest name vCluster lets through unhashed (a DNS-1123 label).
const MAX_NAME_LEN: usize = 63;

/// vCluster's `SafeConcatName`: joins `parts` with `-`; a result longer than 63 characters
/// becomes its first 52 characters, `-`, and the first 10 hex digits of the SHA-256 of the
/// whole joined string, with every `.-` then replaced by `-`.
pub fn safe_concat_name(parts: &[&str]) -> String {
    let full = parts.join("-");
    if full.len() <= MAX_NAME_LEN {
        return full;
    }
    let digest = Sha256::digest(full.as_bytes());
    let hex: String = digest.iter().take(5).map(|b| format!("{b:02x}")).collect();
    // Names are ASCII in practice; cut on a char boundary all the same, so a hostile
    // multi-byte name cannot make this panic.
    let mut cut = 52;
    while !full.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}-{hex}", &full[..cut]).replace(".-", "-")
}

/// The host name of a virtual object synced by vCluster `vcluster`:
/// `SafeConcatName(name, "x", namespace, "x", vcluster)`.
pub fn host_name(virtual_name: &str, virtual_namespace: &str, vcluster: &str) -> String {
    safe_concat_name(&[virtual_name, "x", virtual_namespace, "x", vcluster])
}

/// The host name of vCluster `vcluster`'s synced kube-dns Service.
pub fn kube_dns_service_name(vcluster: &str) -> String {
    host_name("kube-dns", "kube-system", vcluster)
}

/// The host name of the node Service vCluster creates for node `node`.
pub fn node_service_name(vcluster: &str, node: &str) -> String {
    safe_concat_name(&[vcluster, "node", &node.replace('.', "-")])
}

/// Why a name taken from the API cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameError {
    /// The name is empty.
    Empty,
    /// The name is longer than the limit.
    TooLong { len: usize, max: usize },
    /// The name has a character that is not allowed, at a byte offset.
    BadCharacter { at: usize },
    /// The name must start and end with an alphanumeric character.
    BadEdge,
    /// The value is not a UUID (`8-4-4-4-12` hex digits).
    NotUuid,
}

impl std::fmt::Display for NameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NameError::Empty => write!(f, "is empty"),
            NameError::TooLong { len, max } => {
                write!(f, "is {len} characters long (at most {max})")
            }
            NameError::BadCharacter { at } => {
                write!(
                    f,
                    "has a character other than a-z, 0-9 or '-' at offset {at}"
                )
            }
            NameError::BadEdge => write!(f, "must start and end with a-z or 0-9"),
            NameError::NotUuid => write!(f, "is not a UUID"),
        }
    }
}

impl std::error::Error for NameError {}

/// Validates a DNS-1123 label (what Kubernetes requires of namespace and vCluster names):
/// 1–63 characters of `a-z`, `0-9`, `-`, starting and ending alphanumeric. Anything else —
/// `..`, `/`, upper case, NUL, non-ASCII — is refused, so a valid label is a safe path component.
pub fn validate_dns1123_label(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong {
            len: name.len(),
            max: MAX_NAME_LEN,
        });
    }
    if let Some(at) = name
        .bytes()
        .position(|b| !(b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'))
    {
        return Err(NameError::BadCharacter { at });
    }
    let edge_ok = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = name.as_bytes();
    if !edge_ok(bytes[0]) || !edge_ok(bytes[bytes.len() - 1]) {
        return Err(NameError::BadEdge);
    }
    Ok(())
}

/// Validates a DNS-1123 subdomain (what Kubernetes requires of node names): at most 253
/// characters, dot-separated DNS-1123 labels.
pub fn validate_dns1123_subdomain(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > 253 {
        return Err(NameError::TooLong {
            len: name.len(),
            max: 253,
        });
    }
    let mut offset = 0;
    for label in name.split('.') {
        validate_dns1123_label(label).map_err(|e| match e {
            NameError::BadCharacter { at } => NameError::BadCharacter { at: offset + at },
            NameError::Empty => NameError::BadEdge,
            other => other,
        })?;
        offset += label.len() + 1;
    }
    Ok(())
}

/// Validates a Kubernetes UID as fleetmirror uses it in paths: a UUID in its canonical
/// `8-4-4-4-12` hex form (either case).
pub fn validate_uid(uid: &str) -> Result<(), NameError> {
    if uid.is_empty() {
        return Err(NameError::Empty);
    }
    let groups = [8, 4, 4, 4, 12];
    let mut parts = uid.split('-');
    for want in groups {
        match parts.next() {
            Some(p) if p.len() == want && p.bytes().all(|b| b.is_ascii_hexdigit()) => {}
            _ => return Err(NameError::NotUuid),
        }
    }
    if parts.next().is_some() {
        return Err(NameError::NotUuid);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_are_joined() {
        assert_eq!(
            host_name("coredns-abc", "kube-system", "vc"),
            "coredns-abc-x-kube-system-x-vc"
        );
        assert_eq!(kube_dns_service_name("vc"), "kube-dns-x-kube-system-x-vc");
        assert_eq!(
            node_service_name("vc", "node-1.example.com"),
            "vc-node-node-1-example-com"
        );
    }

    #[test]
    fn exactly_63_is_not_hashed() {
        let vc = "a".repeat(63 - "kube-dns-x-kube-system-x-".len());
        let name = kube_dns_service_name(&vc);
        assert_eq!(name.len(), 63);
        assert!(name.ends_with(&vc));
    }

    #[test]
    fn long_names_are_hashed_like_vcluster() {
        // A 39-character vCluster name pushes the kube-dns Service name past 63 characters.
        let vc = "team-platform-observability-staging-eu1";
        assert_eq!(vc.len(), 39);
        let full = format!("kube-dns-x-kube-system-x-{vc}");
        let name = kube_dns_service_name(vc);
        assert_eq!(name.len(), 63);
        assert_eq!(&name[..52], &full[..52]);
        assert_eq!(&name[52..53], "-");
        // sha256("kube-dns-x-kube-system-x-team-platform-observability-staging-eu1"), first
        // 10 hex digits, computed independently with `sha256sum`.
        assert_eq!(&name[53..], "8de28e4f38");
        assert!(!name.ends_with(vc), "hashed names lose the vCluster suffix");
    }

    #[test]
    fn dot_dash_is_collapsed_only_when_hashed() {
        assert_eq!(safe_concat_name(&["a.", "b"]), "a.-b");
        let long = format!("{}.", "x".repeat(51));
        let name = safe_concat_name(&[&long, &"y".repeat(20)]);
        assert!(!name.contains(".-"));
        assert_eq!(name.len(), 62);
    }

    #[test]
    fn hashing_never_panics_on_multibyte_input() {
        let name = safe_concat_name(&[&"é".repeat(40)]);
        assert!(name.len() <= 63);
    }

    #[test]
    fn dns1123_labels() {
        for ok in ["vc", "a", "team-1", "0abc", &"a".repeat(63)] {
            assert_eq!(validate_dns1123_label(ok), Ok(()), "{ok}");
        }
        assert_eq!(validate_dns1123_label(""), Err(NameError::Empty));
        assert_eq!(
            validate_dns1123_label(&"a".repeat(64)),
            Err(NameError::TooLong { len: 64, max: 63 })
        );
        for bad in ["../../etc", "a/b", "..", "Vc", "vc_1", "vc\0", "vç"] {
            assert!(
                validate_dns1123_label(bad).is_err(),
                "{bad:?} must be refused"
            );
        }
        assert_eq!(validate_dns1123_label("-vc"), Err(NameError::BadEdge));
        assert_eq!(validate_dns1123_label("vc-"), Err(NameError::BadEdge));
    }

    #[test]
    fn dns1123_subdomains() {
        for ok in ["node-1", "ip-10-0-0-1.eu-west-1.compute.internal"] {
            assert_eq!(validate_dns1123_subdomain(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            ".",
            "a..b",
            "node/1",
            "../etc",
            "Node",
            &"a.".repeat(130),
        ] {
            assert!(validate_dns1123_subdomain(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            validate_dns1123_subdomain("ab.c_d"),
            Err(NameError::BadCharacter { at: 4 })
        );
    }

    #[test]
    fn uids() {
        assert_eq!(validate_uid("0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"), Ok(()));
        assert_eq!(validate_uid("0F1E2D3C-4B5A-6978-8796-A5B4C3D2E1F0"), Ok(()));
        assert_eq!(validate_uid(""), Err(NameError::Empty));
        for bad in [
            "not-a-uuid",
            "../0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0",
            "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0-",
            "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0/..",
            "0f1e2d3c4b5a697887 96a5b4c3d2e1f0",
            "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1fg",
        ] {
            assert_eq!(validate_uid(bad), Err(NameError::NotUuid), "{bad:?}");
        }
    }
}
