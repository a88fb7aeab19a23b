//! A mirror test's world on the shared control plane: its own key prefix (so no other test's
//! aggregator sees its sources or mirrors), its own namespaces (`<id>-<name>`; the aggregator is
//! limited to them with `--mirror-included-namespaces` and `--mirror-source-namespaces`), and
//! helpers to create sources and wait for mirrors, Events and Diagnostics.

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
};
use serde_json::{Value, json};

use crate::cluster::ControlPlane;
use crate::process::{Aggregator, AggregatorConfig};
use crate::{eventually, suffix};

/// How long a mirror test waits for a condition at most (an upper bound, never a figure).
pub const WAIT: Duration = Duration::from_secs(30);

/// `Kind.version[.group]` → its resource.
pub fn ar(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource {
        group: group.into(),
        version: version.into(),
        api_version: if group.is_empty() {
            version.into()
        } else {
            format!("{group}/{version}")
        },
        kind: kind.into(),
        plural: plural.into(),
    }
}

/// Secrets.
pub fn secrets() -> ApiResource {
    ar("", "v1", "Secret", "secrets")
}

/// ConfigMaps.
pub fn configmaps() -> ApiResource {
    ar("", "v1", "ConfigMap", "configmaps")
}

/// Services.
pub fn services() -> ApiResource {
    ar("", "v1", "Service", "services")
}

/// Deployments.
pub fn deployments() -> ApiResource {
    ar("apps", "v1", "Deployment", "deployments")
}

/// One mirror test's world.
pub struct Env {
    /// The shared control plane.
    pub cp: &'static ControlPlane,
    /// An admin client of cluster 0.
    pub client: kube::Client,
    /// The namespace prefix (`m` + random).
    pub id: String,
    /// The key prefix (`<id>.mirror.test`).
    pub prefix: String,
}

impl std::fmt::Debug for Env {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Env")
            .field("id", &self.id)
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl Env {
    /// A fresh world on cluster 0 of the shared control plane.
    pub async fn new() -> Env {
        let cp = ControlPlane::shared();
        let id = format!("m{}", suffix());
        Env {
            cp,
            client: cp.client(0).await,
            prefix: format!("{id}.mirror.test"),
            id,
        }
    }

    /// The same world under another key prefix (kubemirror's).
    pub fn with_prefix(mut self, prefix: &str) -> Env {
        self.prefix = prefix.into();
        self
    }

    /// `<prefix>/<name>`.
    pub fn key(&self, name: &str) -> String {
        format!("{}/{name}", self.prefix)
    }

    /// `<id>-<name>`.
    pub fn ns_name(&self, name: &str) -> String {
        format!("{}-{name}", self.id)
    }

    /// Creates namespace `<id>-<name>` with `labels`; returns its name.
    pub async fn namespace(&self, name: &str, labels: &[(&str, &str)]) -> String {
        let full = self.ns_name(name);
        let labels: serde_json::Map<String, Value> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), json!(v)))
            .collect();
        let ns: Namespace =
            serde_json::from_value(json!({"metadata": {"name": full, "labels": labels}})).unwrap();
        Api::<Namespace>::all(self.client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .unwrap_or_else(|e| panic!("creating namespace {full}: {e}"));
        full
    }

    /// Sets (or with `None` removes) a label of namespace `ns`.
    pub async fn label_namespace(&self, ns: &str, key: &str, value: Option<&str>) {
        Api::<Namespace>::all(self.client.clone())
            .patch(
                ns,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {key: value}}})),
            )
            .await
            .unwrap_or_else(|e| panic!("labelling namespace {ns}: {e}"));
    }

    /// Deletes namespace `ns` (it stays Terminating forever here: no namespace controller).
    pub async fn delete_namespace(&self, ns: &str) {
        Api::<Namespace>::all(self.client.clone())
            .delete(ns, &DeleteParams::default())
            .await
            .unwrap_or_else(|e| panic!("deleting namespace {ns}: {e}"));
    }

    /// The aggregator configuration of this world: the mirror controller only, leading alone,
    /// this world's prefix and namespaces, `kinds` as --mirror-resource-types (empty:
    /// auto-discovery), and `extra` flags.
    pub fn config(&self, kinds: &str, extra: &[&str]) -> AggregatorConfig {
        let mut c = AggregatorConfig::new(&self.ns_name("home"));
        c.extra_args.extend([
            "--controllers=mirror".into(),
            "--leader-elect=false".into(),
            format!("--mirror-key-prefix={}", self.prefix),
            format!("--mirror-included-namespaces={}-*", self.id),
            format!("--mirror-source-namespaces={}-*", self.id),
            format!("--mirror-resource-types={kinds}"),
        ]);
        c.extra_args.extend(extra.iter().map(|s| s.to_string()));
        c
    }

    /// Creates the home namespace (Events of the aggregator itself) and starts an aggregator.
    pub async fn start(&self, kinds: &str, extra: &[&str]) -> Aggregator {
        self.start_with(self.config(kinds, extra)).await
    }

    /// Starts an aggregator with `config` (creating the home namespace once).
    pub async fn start_with(&self, config: AggregatorConfig) -> Aggregator {
        let home = self.ns_name("home");
        if Api::<Namespace>::all(self.client.clone())
            .get_opt(&home)
            .await
            .unwrap()
            .is_none()
        {
            self.namespace("home", &[]).await;
        }
        Aggregator::start(self.cp, 0, config)
    }

    fn api(&self, ar: &ApiResource, ns: &str) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), ns, ar)
    }

    /// Creates `object` (of kind `ar`) and returns what the server stored.
    pub async fn create(&self, ar: &ApiResource, object: Value) -> Value {
        let ns = object["metadata"]["namespace"]
            .as_str()
            .expect("namespace")
            .to_owned();
        let obj: DynamicObject = serde_json::from_value(object).unwrap();
        let made = self
            .api(ar, &ns)
            .create(&PostParams::default(), &obj)
            .await
            .unwrap_or_else(|e| panic!("creating a {} in {ns}: {e}", ar.kind));
        serde_json::to_value(made).unwrap()
    }

    /// The object, if any.
    pub async fn get(&self, ar: &ApiResource, ns: &str, name: &str) -> Option<Value> {
        self.api(ar, ns)
            .get_opt(name)
            .await
            .unwrap_or_else(|e| panic!("reading {} {ns}/{name}: {e}", ar.kind))
            .map(|o| serde_json::to_value(o).unwrap())
    }

    /// Merge-patches the object.
    pub async fn patch(&self, ar: &ApiResource, ns: &str, name: &str, patch: Value) -> Value {
        let o = self
            .api(ar, ns)
            .patch(name, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .unwrap_or_else(|e| panic!("patching {} {ns}/{name}: {e}", ar.kind));
        serde_json::to_value(o).unwrap()
    }

    /// Replaces the object (PUT) with `object`.
    pub async fn replace(&self, ar: &ApiResource, object: Value) -> Value {
        let ns = object["metadata"]["namespace"].as_str().unwrap().to_owned();
        let name = object["metadata"]["name"].as_str().unwrap().to_owned();
        let obj: DynamicObject = serde_json::from_value(object).unwrap();
        let o = self
            .api(ar, &ns)
            .replace(&name, &PostParams::default(), &obj)
            .await
            .unwrap_or_else(|e| panic!("replacing {} {ns}/{name}: {e}", ar.kind));
        serde_json::to_value(o).unwrap()
    }

    /// Deletes the object.
    pub async fn delete(&self, ar: &ApiResource, ns: &str, name: &str) {
        self.api(ar, ns)
            .delete(name, &DeleteParams::default())
            .await
            .unwrap_or_else(|e| panic!("deleting {} {ns}/{name}: {e}", ar.kind));
    }

    /// Metadata of a source `name` in `ns` targeting `targets`, with `annotations` added.
    pub fn source_meta(
        &self,
        ns: &str,
        name: &str,
        targets: &str,
        annotations: &[(&str, &str)],
    ) -> Value {
        let mut ann = serde_json::Map::new();
        ann.insert(self.key("sync"), json!("true"));
        ann.insert(self.key("target-namespaces"), json!(targets));
        for (k, v) in annotations {
            ann.insert((*k).to_owned(), json!(v));
        }
        json!({
            "name": name,
            "namespace": ns,
            "labels": {self.key("enabled"): "true"},
            "annotations": ann,
        })
    }

    /// Creates a source of kind `ar` with `data` in `field` (`data`, or a Secret's `stringData`).
    #[allow(clippy::too_many_arguments)]
    async fn source(
        &self,
        ar: &ApiResource,
        field: &str,
        ns: &str,
        name: &str,
        targets: &str,
        data: &[(&str, &str)],
        annotations: &[(&str, &str)],
    ) -> Value {
        let data: serde_json::Map<String, Value> = data
            .iter()
            .map(|(k, v)| ((*k).to_owned(), json!(v)))
            .collect();
        self.create(
            ar,
            json!({
                "apiVersion": ar.api_version, "kind": ar.kind,
                "metadata": self.source_meta(ns, name, targets, annotations),
                field: data,
            }),
        )
        .await
    }

    /// Creates a source Secret with `data` (plain text).
    pub async fn secret_source(
        &self,
        ns: &str,
        name: &str,
        targets: &str,
        data: &[(&str, &str)],
        annotations: &[(&str, &str)],
    ) -> Value {
        self.source(
            &secrets(),
            "stringData",
            ns,
            name,
            targets,
            data,
            annotations,
        )
        .await
    }

    /// Creates a source ConfigMap with `data`.
    pub async fn configmap_source(
        &self,
        ns: &str,
        name: &str,
        targets: &str,
        data: &[(&str, &str)],
        annotations: &[(&str, &str)],
    ) -> Value {
        self.source(&configmaps(), "data", ns, name, targets, data, annotations)
            .await
    }

    /// The namespaces of this world holding a mirror (labelled `<p>/mirror=true`) named `name`.
    pub async fn mirrors_of(&self, ar: &ApiResource, name: &str) -> BTreeSet<String> {
        Api::<DynamicObject>::all_with(self.client.clone(), ar)
            .list(&ListParams::default().labels(&format!("{}=true", self.key("mirror"))))
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|o| o.metadata.name.as_deref() == Some(name))
            .filter_map(|o| o.metadata.namespace)
            .filter(|ns| ns.starts_with(&format!("{}-", self.id)))
            .collect()
    }

    /// Waits until exactly `want` hold a mirror named `name`.
    pub async fn wait_mirrors(&self, ar: &ApiResource, name: &str, want: &[&str]) {
        let want: BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
        let what = format!("{} mirrors of {name} in exactly {want:?}", ar.kind);
        eventually(WAIT, &what, || async {
            (self.mirrors_of(ar, name).await == want).then_some(())
        })
        .await;
    }

    /// Waits until the object at `ns/name` satisfies `check`; returns it.
    pub async fn wait_object(
        &self,
        ar: &ApiResource,
        ns: &str,
        name: &str,
        what: &str,
        check: impl Fn(&Value) -> bool,
    ) -> Value {
        eventually(WAIT, what, || async {
            self.get(ar, ns, name).await.filter(|o| check(o))
        })
        .await
    }

    /// The (reason, note) of every Event about object `name` in `ns`.
    pub async fn events(&self, ns: &str, name: &str) -> Vec<(String, String)> {
        Api::<k8s_openapi::api::events::v1::Event>::namespaced(self.client.clone(), ns)
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
            .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
            .collect()
    }

    /// Waits for an Event `reason` about `name` in `ns` whose note contains `needle`; returns
    /// the note.
    pub async fn wait_event(&self, ns: &str, name: &str, reason: &str, needle: &str) -> String {
        let what = format!("Event {reason} about {ns}/{name} saying {needle:?}");
        eventually(WAIT, &what, || async {
            self.events(ns, name)
                .await
                .into_iter()
                .find(|(r, n)| r == reason && n.contains(needle))
                .map(|(_, n)| n)
        })
        .await
    }
}

/// The decoded `data` of a Secret.
pub fn secret_data(o: &Value) -> std::collections::BTreeMap<String, String> {
    use base64::Engine;
    o["data"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(v.as_str().unwrap_or_default())
                .unwrap_or_default();
            (k.clone(), String::from_utf8_lossy(&bytes).into_owned())
        })
        .collect()
}
