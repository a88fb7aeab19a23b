//! The mirror controller's label and annotation keys under a configurable prefix `<p>`
//! (`--mirror-key-prefix`, default `fleetmirror.io`; with `kubemirror.raczylo.com` every
//! kubemirror key works unchanged).

/// The keys under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

/// The value of `<p>/managed-by` on our mirrors.
pub const MANAGED_BY_US: &str = "fleetmirror";
/// The value of `<p>/managed-by` on kubemirror's mirrors (adoption).
pub const MANAGED_BY_KUBEMIRROR: &str = "kubemirror";

impl Keys {
    /// Keys under `prefix`, which must be a DNS subdomain.
    pub fn new(prefix: &str) -> Result<Keys, String> {
        crate::naming::validate_dns1123_subdomain(prefix)
            .map_err(|e| format!("--mirror-key-prefix {prefix:?} {e}"))?;
        Ok(Keys {
            prefix: prefix.to_owned(),
        })
    }

    /// The prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn key(&self, name: &str) -> String {
        format!("{}/{name}", self.prefix)
    }

    /// Label, source: half of the opt-in (the server-side selector of source watches).
    pub fn enabled(&self) -> String {
        self.key("enabled")
    }
    /// Annotation, source: the other half.
    pub fn sync(&self) -> String {
        self.key("sync")
    }
    /// Annotation, source: comma list of targets.
    pub fn target_namespaces(&self) -> String {
        self.key("target-namespaces")
    }
    /// Annotation, source: a label selector of target namespaces.
    pub fn target_namespace_selector(&self) -> String {
        self.key("target-namespace-selector")
    }
    /// Annotation, source: globs never targeted.
    pub fn exclude_namespaces(&self) -> String {
        self.key("exclude-namespaces")
    }
    /// Annotation, source: lowers the target limit.
    pub fn max_targets(&self) -> String {
        self.key("max-targets")
    }
    /// Annotation, source: transform rules.
    pub fn transform(&self) -> String {
        self.key("transform")
    }
    /// Annotation, source: strict transforms.
    pub fn transform_strict(&self) -> String {
        self.key("transform-strict")
    }
    /// Label, namespace: opted in (`true`) or out (`false`).
    pub fn allow_mirrors(&self) -> String {
        self.key("allow-mirrors")
    }
    /// Label, mirror: who manages it.
    pub fn managed_by(&self) -> String {
        self.key("managed-by")
    }
    /// Label, mirror: `true` (the selector of mirror watches).
    pub fn mirror(&self) -> String {
        self.key("mirror")
    }
    /// Annotation, mirror.
    pub fn source_namespace(&self) -> String {
        self.key("source-namespace")
    }
    /// Annotation, mirror.
    pub fn source_name(&self) -> String {
        self.key("source-name")
    }
    /// Annotation, mirror.
    pub fn source_uid(&self) -> String {
        self.key("source-uid")
    }
    /// Annotation, mirror: which state of the source it shows.
    pub fn source_content_hash(&self) -> String {
        self.key("source-content-hash")
    }
    /// Annotation, mirror: hash of the rendered mirror.
    pub fn mirror_content_hash(&self) -> String {
        self.key("mirror-content-hash")
    }
    /// kubemirror's finalizer on sources (removed when such a source is deleted).
    pub fn legacy_finalizer(&self) -> String {
        self.key("finalizer")
    }

    /// True when `key` is under the prefix (never copied to a mirror).
    pub fn is_ours(&self, key: &str) -> bool {
        key.strip_prefix(&self.prefix)
            .is_some_and(|rest| rest.starts_with('/'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_under_a_prefix() {
        let k = Keys::new("kubemirror.raczylo.com").unwrap();
        assert_eq!(k.enabled(), "kubemirror.raczylo.com/enabled");
        assert_eq!(
            k.target_namespaces(),
            "kubemirror.raczylo.com/target-namespaces"
        );
        assert!(k.is_ours("kubemirror.raczylo.com/sync"));
        assert!(!k.is_ours("kubemirror.raczylo.com.evil/sync"));
        assert!(!k.is_ours("app"));
        assert!(Keys::new("Not A Prefix").is_err());
        assert!(Keys::new("").is_err());
    }
}
