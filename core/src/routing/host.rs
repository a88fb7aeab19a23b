//! How Istio reads a VirtualService host, for conflict checks: lowercase; a name without dots
//! is `<name>.<namespace of the VirtualService>.svc.<domain>`; `<a>.<b>` and `<a>.<b>.svc`
//! complete to `<a>.<b>.svc.<domain>`; anything longer is taken as it is (wildcards literally).

/// `host` as Istio resolves it from a VirtualService in `namespace`.
pub fn complete(host: &str, namespace: &str, domain: &str) -> String {
    let host = host.to_ascii_lowercase();
    let parts: Vec<&str> = host.split('.').collect();
    match parts.as_slice() {
        [name] => format!("{name}.{namespace}.svc.{domain}"),
        [a, b] => format!("{a}.{b}.svc.{domain}"),
        [a, b, "svc"] => format!("{a}.{b}.svc.{domain}"),
        _ => host,
    }
}

/// True when a VirtualService with `gateways` is bound to the mesh (sidecars): no gateways,
/// or `mesh` among them.
pub fn mesh_bound(gateways: &[String]) -> bool {
    gateways.is_empty() || gateways.iter().any(|g| g == "mesh")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completes_like_istio() {
        let d = "cluster.local";
        for (host, want) in [
            ("my-app", "my-app.prod.svc.cluster.local"),
            ("My-App", "my-app.prod.svc.cluster.local"),
            ("my-app.prod", "my-app.prod.svc.cluster.local"),
            ("my-app.other", "my-app.other.svc.cluster.local"),
            ("my-app.prod.svc", "my-app.prod.svc.cluster.local"),
            (
                "my-app.prod.svc.cluster.local",
                "my-app.prod.svc.cluster.local",
            ),
            ("api.example.com", "api.example.com"),
            ("*.example.com", "*.example.com"),
            ("*", "*.prod.svc.cluster.local"),
        ] {
            assert_eq!(complete(host, "prod", d), want, "{host}");
        }
        assert_eq!(
            complete("a", "ns", "corp.internal"),
            "a.ns.svc.corp.internal"
        );
    }

    #[test]
    fn mesh_binding() {
        assert!(mesh_bound(&[]));
        assert!(mesh_bound(&["mesh".into(), "prod/gw".into()]));
        assert!(!mesh_bound(&["prod/gw".into()]));
    }
}
