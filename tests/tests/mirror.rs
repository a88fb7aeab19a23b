//! The mirror controller end to end (mirror.md "Acceptance"): the real aggregator binary against
//! the real local API server. Each test has its own key prefix and namespaces
//! ([`fleetmirror_tests::mirror::Env`]), so they share the control plane and run in parallel.
//! "Nothing happened" is checked after something that happened later in the same pass (a marker
//! source's mirror), never after a sleep.

use std::collections::{BTreeMap, BTreeSet};

use fleetmirror_proto::v1::diagnostics_client::DiagnosticsClient;
use fleetmirror_proto::v1::{
    GetMirrorRequest, ListMirrorsRequest, MirrorKindState, MirrorSource, MirrorState,
};
use fleetmirror_tests::eventually;
use fleetmirror_tests::mirror::{
    Env, WAIT, configmaps, deployments, secret_data, secrets, services,
};
use fleetmirror_tests::process::Aggregator;
use serde_json::{Value, json};
use tonic::Code;

const CORE: &str = "Secret.v1,ConfigMap.v1";

async fn list(
    agg: &Aggregator,
    namespace: &str,
    kind: &str,
) -> fleetmirror_proto::v1::ListMirrorsResponse {
    DiagnosticsClient::new(fleetmirror_tests::channel(&agg.grpc_url()).await)
        .list_mirrors(ListMirrorsRequest {
            namespace: namespace.into(),
            kind: kind.into(),
        })
        .await
        .unwrap()
        .into_inner()
}

async fn get(
    agg: &Aggregator,
    kind: &str,
    namespace: &str,
    name: &str,
    group: &str,
) -> Result<MirrorSource, tonic::Status> {
    DiagnosticsClient::new(fleetmirror_tests::channel(&agg.grpc_url()).await)
        .get_mirror(GetMirrorRequest {
            kind: kind.into(),
            namespace: namespace.into(),
            name: name.into(),
            group: group.into(),
        })
        .await
        .map(|r| r.into_inner())
}

fn rv(o: &Value) -> String {
    o["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn uid(o: &Value) -> String {
    o["metadata"]["uid"].as_str().unwrap().to_owned()
}

fn writes(agg: &Aggregator) -> f64 {
    ["create", "update", "recreate", "delete", "adopt"]
        .iter()
        .map(|op| {
            fleetmirror_tests::process::metric_with(
                agg.admin_port,
                "fleetmirror_mirror_writes_total",
                &format!("operation=\"{op}\""),
            )
        })
        .sum()
}

/// Waits until `n` more passes happened, and checks they were not a spin: each of them was
/// woken by something (the 1 s resync here), so `n` passes take about `n` seconds.
async fn passes(agg: &Aggregator, n: f64) {
    let count = || agg.metric("fleetmirror_mirror_passes_total").unwrap_or(0.0);
    let start = count();
    let started = std::time::Instant::now();
    eventually(WAIT, &format!("{n} more passes"), || async {
        (count() >= start + n).then_some(())
    })
    .await;
    // A bound, not a timing: a spinning loop makes hundreds of passes a second.
    let made = count() - start;
    let seconds = started.elapsed().as_secs_f64();
    assert!(
        made <= 4.0 * seconds.max(1.0) + 4.0,
        "{made} passes in {seconds:.1}s: the loop spins"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn opt_in_is_exact_and_a_mirror_carries_the_data_and_our_keys_only() {
    let env = Env::new().await;
    let src = env.namespace("src", &[]).await;
    let a = env.namespace("a", &[]).await;
    let _agg = env.start(CORE, &[]).await;

    // Half an opt-in, or a value that is not exactly "true": nothing.
    let mut label_only = env.source_meta(&src, "label-only", &a, &[]);
    label_only["annotations"] = json!({});
    env.create(&secrets(), json!({"apiVersion": "v1", "kind": "Secret", "metadata": label_only, "stringData": {"k": "v"}})).await;
    let mut annotation_only = env.source_meta(&src, "annotation-only", &a, &[]);
    annotation_only["labels"] = json!({});
    env.create(&secrets(), json!({"apiVersion": "v1", "kind": "Secret", "metadata": annotation_only, "stringData": {"k": "v"}})).await;
    env.secret_source(
        &src,
        "capital",
        &a,
        &[("k", "v")],
        &[(&env.key("sync"), "True")],
    )
    .await;

    // Both halves: mirrored with the data and our keys; GitOps keys, ownerReferences and
    // finalizers stay behind.
    let mut meta = env.source_meta(
        &src,
        "yes",
        &a,
        &[
            ("note", "kept"),
            ("kubectl.kubernetes.io/last-applied-configuration", "{}"),
            ("argocd.argoproj.io/tracking-id", "x"),
        ],
    );
    meta["labels"]["team"] = json!("blue");
    meta["labels"]["app.kubernetes.io/instance"] = json!("release");
    meta["finalizers"] = json!(["example.com/keep"]);
    meta["ownerReferences"] = json!([{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": "2b0a1c3e-0000-4000-8000-000000000001"}]);
    let source = env.create(&secrets(), json!({"apiVersion": "v1", "kind": "Secret", "metadata": meta, "type": "Opaque", "stringData": {"password": "s3cret"}})).await;
    env.wait_mirrors(&secrets(), "yes", &[&a]).await;
    for name in ["label-only", "annotation-only", "capital"] {
        assert!(
            env.mirrors_of(&secrets(), name).await.is_empty(),
            "{name} is no source"
        );
        assert!(
            env.get(&secrets(), &a, name).await.is_none(),
            "{name} is no source"
        );
    }
    let mirror = env.get(&secrets(), &a, "yes").await.unwrap();
    assert_eq!(
        secret_data(&mirror),
        BTreeMap::from([("password".into(), "s3cret".into())])
    );
    let labels: BTreeMap<String, String> =
        serde_json::from_value(mirror["metadata"]["labels"].clone()).unwrap();
    assert_eq!(
        labels,
        BTreeMap::from([
            ("team".into(), "blue".into()),
            (env.key("managed-by"), "fleetmirror".into()),
            (env.key("mirror"), "true".into()),
        ])
    );
    let annotations: BTreeSet<String> = mirror["metadata"]["annotations"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    let want: BTreeSet<String> = ["note".to_owned()]
        .into_iter()
        .chain(
            [
                "source-namespace",
                "source-name",
                "source-uid",
                "source-content-hash",
                "mirror-content-hash",
            ]
            .map(|k| env.key(k)),
        )
        .collect();
    assert_eq!(annotations, want);
    assert_eq!(
        mirror["metadata"]["annotations"][env.key("source-uid")].as_str(),
        Some(uid(&source).as_str())
    );
    assert!(mirror["metadata"]["ownerReferences"].is_null());
    assert!(mirror["metadata"]["finalizers"].is_null());
    // No write of any kind to a source.
    let now = env.get(&secrets(), &src, "yes").await.unwrap();
    assert_eq!(
        rv(&now),
        rv(&source),
        "the source's resourceVersion never changes"
    );
    // (The finalizer stays ours to remove: the source is left in place.)
}

#[tokio::test(flavor = "multi_thread")]
async fn changes_propagate_and_every_way_of_turning_a_source_off_deletes_its_mirrors() {
    let env = Env::new().await;
    let src = env.namespace("src", &[]).await;
    let a = env.namespace("a", &[]).await;
    let b = env.namespace("b", &[]).await;
    let app1 = env.namespace("app-1", &[]).await;
    let app2 = env.namespace("app-2", &[]).await;
    let c = env.namespace("c", &[]).await;
    let _agg = env.start(CORE, &[]).await;
    env.secret_source(&src, "s", &a, &[("k", "v1"), ("old", "x")], &[])
        .await;
    env.wait_mirrors(&secrets(), "s", &[&a]).await;

    // Data: a changed value and a removed key.
    env.patch(
        &secrets(),
        &src,
        "s",
        json!({"stringData": {"k": "v2"}, "data": {"old": null}}),
    )
    .await;
    env.wait_object(&secrets(), &a, "s", "data propagated", |o| {
        secret_data(o) == BTreeMap::from([("k".into(), "v2".into())])
    })
    .await;
    // Labels and annotations.
    env.patch(
        &secrets(),
        &src,
        "s",
        json!({"metadata": {"labels": {"team": "y"}, "annotations": {"note": "z"}}}),
    )
    .await;
    env.wait_object(
        &secrets(),
        &a,
        "s",
        "labels and annotations propagated",
        |o| o["metadata"]["labels"]["team"] == "y" && o["metadata"]["annotations"]["note"] == "z",
    )
    .await;
    env.patch(
        &secrets(),
        &src,
        "s",
        json!({"metadata": {"labels": {"team": null}}}),
    )
    .await;
    env.wait_object(&secrets(), &a, "s", "a removed label is removed", |o| {
        o["metadata"]["labels"]["team"].is_null()
    })
    .await;

    let targets =
        |t: String| json!({"metadata": {"annotations": {env.key("target-namespaces"): t}}});
    // Add, then remove, a listed namespace.
    env.patch(&secrets(), &src, "s", targets(format!("{a},{b}")))
        .await;
    env.wait_mirrors(&secrets(), "s", &[&a, &b]).await;
    env.patch(&secrets(), &src, "s", targets(b.clone())).await;
    env.wait_mirrors(&secrets(), "s", &[&b]).await;
    // List → pattern; several patterns; explicit + pattern.
    env.patch(&secrets(), &src, "s", targets(format!("{}-app-*", env.id)))
        .await;
    env.wait_mirrors(&secrets(), "s", &[&app1, &app2]).await;
    env.patch(
        &secrets(),
        &src,
        "s",
        targets(format!("{}-app-*,{}-[c]", env.id, env.id)),
    )
    .await;
    env.wait_mirrors(&secrets(), "s", &[&app1, &app2, &c]).await;
    env.patch(
        &secrets(),
        &src,
        "s",
        targets(format!("{}-app-*,{c},{}", env.id, app1)),
    )
    .await;
    env.wait_mirrors(&secrets(), "s", &[&app1, &app2, &c]).await;
    // A new matching namespace gets its mirror.
    let app3 = env.namespace("app-3", &[]).await;
    env.wait_mirrors(&secrets(), "s", &[&app1, &app2, &app3, &c])
        .await;

    // Every way of turning it off deletes every mirror; turning it on again brings them back.
    let all = [app1.as_str(), app2.as_str(), app3.as_str(), c.as_str()];
    let offs = [
        json!({"metadata": {"annotations": {env.key("sync"): "false"}}}),
        json!({"metadata": {"labels": {env.key("enabled"): "false"}}}),
        json!({"metadata": {"annotations": {env.key("sync"): null}}}),
        json!({"metadata": {"annotations": {env.key("target-namespaces"): ""}}}),
    ];
    let on = json!({"metadata": {
        "labels": {env.key("enabled"): "true"},
        "annotations": {env.key("sync"): "true", env.key("target-namespaces"): format!("{}-app-*,{c}", env.id)},
    }});
    for off in offs {
        env.patch(&secrets(), &src, "s", off.clone()).await;
        env.wait_mirrors(&secrets(), "s", &[]).await;
        env.patch(&secrets(), &src, "s", on.clone()).await;
        env.wait_mirrors(&secrets(), "s", &all).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn namespace_forms_opt_outs_selectors_exclusions_and_terminating_namespaces() {
    let env = Env::new().await;
    let allow = env.key("allow-mirrors");
    let src = env.namespace("src", &[]).await;
    let home = env.ns_name("home");
    let plain = env.namespace("plain", &[]).await;
    let optin = env.namespace("optin", &[(&allow, "true")]).await;
    let optout = env.namespace("optout", &[(&allow, "false")]).await;
    let prod = env.namespace("prod", &[("env", "prod")]).await;
    let _skip = env.namespace("skip-1", &[]).await;
    let agg = env
        .start(
            CORE,
            &[&format!("--mirror-excluded-namespaces={}-skip-*", env.id)],
        )
        .await;

    // `all`: every namespace but opted-out, excluded and the source's own.
    env.secret_source(&src, "all", "all", &[("k", "v")], &[])
        .await;
    env.wait_mirrors(&secrets(), "all", &[&home, &plain, &optin, &prod])
        .await;
    env.label_namespace(&plain, &allow, Some("false")).await;
    env.wait_mirrors(&secrets(), "all", &[&home, &optin, &prod])
        .await;
    env.label_namespace(&plain, &allow, Some("true")).await;
    env.wait_mirrors(&secrets(), "all", &[&home, &plain, &optin, &prod])
        .await;
    env.label_namespace(&plain, &allow, None).await;
    env.wait_mirrors(&secrets(), "all", &[&home, &plain, &optin, &prod])
        .await;

    // A literal name and a selector never reach an opted-out namespace.
    env.secret_source(
        &src,
        "literal",
        &format!("{optout},{optin}"),
        &[("k", "v")],
        &[],
    )
    .await;
    env.wait_mirrors(&secrets(), "literal", &[&optin]).await;
    env.secret_source(&src, "labeled", "all-labeled", &[("k", "v")], &[])
        .await;
    env.wait_mirrors(&secrets(), "labeled", &[&optin]).await;
    env.label_namespace(&optout, "env", Some("prod")).await;
    env.secret_source(
        &src,
        "selected",
        "",
        &[("k", "v")],
        &[(&env.key("target-namespace-selector"), "env=prod")],
    )
    .await;
    env.wait_mirrors(&secrets(), "selected", &[&prod]).await;
    // Relabelling adds and removes selector mirrors.
    env.label_namespace(&prod, "env", Some("dev")).await;
    env.label_namespace(&plain, "env", Some("prod")).await;
    env.wait_mirrors(&secrets(), "selected", &[&plain]).await;
    // An empty selector selects nothing (checked once a later source is mirrored).
    env.secret_source(
        &src,
        "empty",
        "",
        &[("k", "v")],
        &[(&env.key("target-namespace-selector"), "")],
    )
    .await;
    env.secret_source(&src, "marker", &optin, &[("k", "v")], &[])
        .await;
    env.wait_mirrors(&secrets(), "marker", &[&optin]).await;
    assert!(env.mirrors_of(&secrets(), "empty").await.is_empty());
    let literal = get(&agg, "Secret", &src, "literal", "").await.unwrap();
    let refused = literal
        .targets
        .iter()
        .find(|t| t.namespace == optout)
        .unwrap();
    assert_eq!(refused.state(), MirrorState::Refused);
    assert!(refused.reason.contains("opted out"), "{}", refused.reason);

    // A terminating namespace: nothing written there, no error, its mirror left to go with it.
    let term = env.namespace("term", &[]).await;
    env.wait_mirrors(&secrets(), "all", &[&home, &plain, &optin, &prod, &term])
        .await;
    env.delete_namespace(&term).await;
    env.secret_source(&src, "after", "all", &[("k", "v")], &[])
        .await;
    env.wait_mirrors(&secrets(), "after", &[&home, &plain, &optin, &prod])
        .await;
    assert!(
        env.get(&secrets(), &term, "all").await.is_some(),
        "its mirrors go with it, not by us"
    );
    let after = get(&agg, "Secret", &src, "after", "").await.unwrap();
    let t = after.targets.iter().find(|t| t.namespace == term).unwrap();
    assert_eq!(t.state(), MirrorState::Refused, "{t:?}");
    for category in ["api", "forbidden", "invalid"] {
        assert_eq!(
            fleetmirror_tests::process::metric_with(
                agg.admin_port,
                "fleetmirror_mirror_errors_total",
                &format!("category=\"{category}\"")
            ),
            0.0,
            "no {category} error"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_mirror_comes_back_and_a_deleted_source_takes_its_mirrors() {
    let env = Env::new().await;
    let src = env.namespace("src", &[]).await;
    let a = env.namespace("a", &[]).await;
    let b = env.namespace("b", &[]).await;
    let _agg = env.start(CORE, &[]).await;
    env.configmap_source(&src, "cfg", &format!("{a},{b}"), &[("k", "v")], &[])
        .await;
    env.wait_mirrors(&configmaps(), "cfg", &[&a, &b]).await;
    env.delete(&configmaps(), &a, "cfg").await;
    // Back within 15 s (e2e 19).
    let started = std::time::Instant::now();
    env.wait_mirrors(&configmaps(), "cfg", &[&a, &b]).await;
    assert!(
        started.elapsed() < std::time::Duration::from_secs(15),
        "took {:?}",
        started.elapsed()
    );
    env.delete(&configmaps(), &src, "cfg").await;
    env.wait_mirrors(&configmaps(), "cfg", &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_custom_resource_installed_after_start_is_mirrored_and_its_removal_is_harmless() {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let env = Env::new().await;
    let src = env.namespace("src", &[]).await;
    let a = env.namespace("a", &[]).await;
    let b = env.namespace("b", &[]).await;
    // Auto-discovery, every 2 s.
    let agg = env.start("", &["--mirror-discovery-interval=2s"]).await;
    let group = format!("{}.example.com", env.id);
    let crd: CustomResourceDefinition = serde_json::from_value(json!({
        "metadata": {"name": format!("middlewares.{group}")},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"plural": "middlewares", "singular": "middleware", "kind": "Middleware", "listKind": "MiddlewareList"},
            "versions": [{"name": "v1alpha1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}],
        },
    }))
    .unwrap();
    let crds = kube::Api::<CustomResourceDefinition>::all(env.client.clone());
    crds.create(&Default::default(), &crd).await.unwrap();
    let ar = fleetmirror_tests::mirror::ar(&group, "v1alpha1", "Middleware", "middlewares");
    // Served, then watched within a discovery interval.
    eventually(WAIT, "the CRD served", || async {
        kube::Api::<kube::api::DynamicObject>::all_with(env.client.clone(), &ar)
            .list(&Default::default())
            .await
            .ok()
    })
    .await;
    eventually(WAIT, "the new kind watched", || async {
        list(&agg, "", "Middleware")
            .await
            .kinds
            .iter()
            .any(|k| k.group == group && k.state() == MirrorKindState::Watched)
            .then_some(())
    })
    .await;
    let mut meta = env.source_meta(&src, "strip", &a, &[]);
    meta["labels"]["app"] = json!("web");
    env.create(&ar, json!({"apiVersion": format!("{group}/v1alpha1"), "kind": "Middleware", "metadata": meta, "spec": {"stripPrefix": {"prefixes": ["/api"]}}})).await;
    env.wait_mirrors(&ar, "strip", &[&a]).await;
    // Update and retarget.
    env.patch(
        &ar,
        &src,
        "strip",
        json!({"spec": {"stripPrefix": {"prefixes": ["/v2"]}}}),
    )
    .await;
    env.wait_object(&ar, &a, "strip", "the spec change", |o| {
        o["spec"]["stripPrefix"]["prefixes"] == json!(["/v2"])
    })
    .await;
    env.patch(
        &ar,
        &src,
        "strip",
        json!({"metadata": {"annotations": {env.key("target-namespaces"): b}}}),
    )
    .await;
    env.wait_mirrors(&ar, "strip", &[&b]).await;
    // The CRD goes: its watches stop, the aggregator stays ready and alive.
    crds.delete(&format!("middlewares.{group}"), &Default::default())
        .await
        .unwrap();
    eventually(WAIT, "the kind no longer watched", || async {
        (!list(&agg, "", "Middleware")
            .await
            .kinds
            .iter()
            .any(|k| k.group == group))
        .then_some(())
    })
    .await;
    let (code, _) = fleetmirror_tests::process::http_get(agg.admin_port, "/readyz").unwrap();
    assert_eq!(code, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn transforms_value_template_merge_delete_and_patterns_and_changed_rules_resync() {
    let env = Env::new().await;
    let src = env.namespace("src", &[]).await;
    let prod = env.namespace("prod-app", &[]).await;
    let stage = env.namespace("stage-app", &[]).await;
    let _agg = env.start(CORE, &[]).await;
    let rules = format!(
        r#"rules:
  - path: data.LOG_LEVEL
    value: error
  - path: data.API_URL
    template: "https://{{{{.TargetNamespace}}}}.api.example.com"
  - path: metadata.labels
    merge: {{tier: backend}}
  - path: data.DEBUG
    delete: true
  - path: data.HOST
    value: prod.example.com
    namespacePattern: "{}-prod-*"
"#,
        env.id
    );
    let targets = format!("{prod},{stage}");
    env.configmap_source(
        &src,
        "cfg",
        &targets,
        &[
            ("LOG_LEVEL", "debug"),
            ("DEBUG", "1"),
            ("HOST", "default.example.com"),
        ],
        &[(&env.key("transform"), &rules)],
    )
    .await;
    env.wait_mirrors(&configmaps(), "cfg", &[&prod, &stage])
        .await;
    let p = env.get(&configmaps(), &prod, "cfg").await.unwrap();
    assert_eq!(
        p["data"],
        json!({"LOG_LEVEL": "error", "API_URL": format!("https://{prod}.api.example.com"), "HOST": "prod.example.com"})
    );
    assert_eq!(p["metadata"]["labels"]["tier"], "backend");
    let s = env.get(&configmaps(), &stage, "cfg").await.unwrap();
    assert_eq!(
        s["data"]["HOST"], "default.example.com",
        "the pattern does not match"
    );

    // Combined rules on a Secret (values base64-encoded as a Secret's data is).
    let secret_rules = r#"rules:
  - path: data.DB_NAME
    template: 'app_{{replace .TargetNamespace "-" "_"}}'
  - path: data.ADMIN_PASSWORD
    delete: true
  - path: data.PREFIX
    template: '{{upper (replace .TargetNamespace "-" "_")}}'
"#;
    env.secret_source(
        &src,
        "db",
        &prod,
        &[
            ("DB_NAME", "dev"),
            ("ADMIN_PASSWORD", "root"),
            ("USER", "app"),
        ],
        &[(&env.key("transform"), secret_rules)],
    )
    .await;
    env.wait_mirrors(&secrets(), "db", &[&prod]).await;
    let m = env.get(&secrets(), &prod, "db").await.unwrap();
    let underscored = prod.replace('-', "_");
    assert_eq!(
        secret_data(&m),
        BTreeMap::from([
            ("DB_NAME".into(), format!("app_{underscored}")),
            ("PREFIX".into(), underscored.to_uppercase()),
            ("USER".into(), "app".into()),
        ])
    );

    // Changed rules re-sync every mirror.
    env.patch(&configmaps(), &src, "cfg", json!({"metadata": {"annotations": {env.key("transform"): "rules: [{path: data.LOG_LEVEL, value: warn}]"}}})).await;
    for ns in [&prod, &stage] {
        env.wait_object(&configmaps(), ns, "cfg", "the new rules", |o| {
            o["data"]["LOG_LEVEL"] == "warn"
                && o["data"]["DEBUG"] == "1"
                && o["metadata"]["labels"]["tier"].is_null()
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn foreign_objects_are_never_touched_and_a_freed_name_gets_its_mirror() {
    let env = Env::new().await;
    let src = env.namespace("src", &[]).await;
    let a = env.namespace("a", &[]).await;
    let b = env.namespace("b", &[]).await;
    let c = env.namespace("c", &[]).await;
    let _agg = env.start(CORE, &[]).await;
    // Not ours: a plain object, and one labelled as a mirror but managed by someone else.
    let fa = env.create(&secrets(), json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "namespace": a}, "stringData": {"owner": "team-a"}})).await;
    let fb = env.create(&secrets(), json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "namespace": b,
        "labels": {env.key("mirror"): "true", env.key("managed-by"): "someone-else"}}, "stringData": {"owner": "team-b"}})).await;
    let untouched = || async {
        assert_eq!(
            rv(&env.get(&secrets(), &a, "s").await.unwrap()),
            rv(&fa),
            "the foreign object in {a}"
        );
        assert_eq!(
            rv(&env.get(&secrets(), &b, "s").await.unwrap()),
            rv(&fb),
            "the foreign object in {b}"
        );
    };
    let all = format!("{a},{b},{c}");
    env.secret_source(&src, "s", &all, &[("k", "v")], &[]).await;
    env.wait_mirrors(&secrets(), "s", &[&b, &c]).await; // b: the foreign one's label
    let note = env.wait_event(&src, "s", "Conflict", &a).await;
    assert!(note.contains(&b), "{note}");
    untouched().await;
    // Sync off, target removal, source deletion: only ours goes.
    env.patch(
        &secrets(),
        &src,
        "s",
        json!({"metadata": {"annotations": {env.key("sync"): "false"}}}),
    )
    .await;
    env.wait_mirrors(&secrets(), "s", &[&b]).await;
    untouched().await;
    env.patch(&secrets(), &src, "s", json!({"metadata": {"annotations": {env.key("sync"): "true", env.key("target-namespaces"): c}}})).await;
    env.wait_mirrors(&secrets(), "s", &[&b, &c]).await;
    untouched().await;
    env.patch(
        &secrets(),
        &src,
        "s",
        json!({"metadata": {"annotations": {env.key("target-namespaces"): all}}}),
    )
    .await;
    env.delete(&secrets(), &src, "s").await;
    env.wait_mirrors(&secrets(), "s", &[&b]).await;
    untouched().await;
    // A freed name no watch sees is read again with backoff: its mirror comes without any
    // other change.
    let e = env.namespace("e", &[]).await;
    env.create(
        &secrets(),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "solo", "namespace": e}, "stringData": {"owner": "team-e"}}),
    )
    .await;
    env.secret_source(&src, "solo", &e, &[("k", "v")], &[])
        .await;
    env.wait_event(&src, "solo", "Conflict", &e).await;
    env.delete(&secrets(), &e, "solo").await;
    env.wait_mirrors(&secrets(), "solo", &[&e]).await;
    // Freed names get their mirrors (the one no watch sees is read again at the next pass a
    // change triggers).
    env.secret_source(&src, "s", &all, &[("k", "v")], &[]).await;
    env.wait_event(&src, "s", "Conflict", &a).await;
    env.delete(&secrets(), &a, "s").await;
    env.delete(&secrets(), &b, "s").await;
    env.patch(
        &secrets(),
        &src,
        "s",
        json!({"metadata": {"annotations": {"touch": "1"}}}),
    )
    .await;
    env.wait_mirrors(&secrets(), "s", &[&a, &b, &c]).await;
    for ns in [&a, &b] {
        let m = env.get(&secrets(), ns, "s").await.unwrap();
        assert_eq!(
            m["metadata"]["labels"][env.key("managed-by")],
            "fleetmirror"
        );
        assert_eq!(secret_data(&m)["k"], "v");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn after_downtime_every_mirror_is_right_and_unchanged_ones_are_untouched() {
    let env = Env::new().await;
    let src = env.namespace("src", &[]).await;
    let a = env.namespace("a", &[]).await;
    let mut agg = env.start(CORE, &[]).await;
    env.secret_source(&src, "gone", &a, &[("k", "v")], &[])
        .await;
    env.secret_source(&src, "keep", &a, &[("k", "v")], &[])
        .await;
    env.secret_source(&src, "lost", &a, &[("k", "v")], &[])
        .await;
    env.secret_source(
        &src,
        "typed",
        &a,
        &[("username", "u"), ("password", "p")],
        &[],
    )
    .await;
    let mut frozen = env.source_meta(&src, "frozen", &a, &[]);
    frozen["name"] = json!("frozen");
    env.create(&configmaps(), json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": frozen.clone(), "immutable": true, "data": {"v": "1"}})).await;
    for name in ["gone", "keep", "lost", "typed"] {
        env.wait_mirrors(&secrets(), name, &[&a]).await;
    }
    env.wait_mirrors(&configmaps(), "frozen", &[&a]).await;
    let keep = env.get(&secrets(), &a, "keep").await.unwrap();

    agg.process.kill();
    env.delete(&secrets(), &src, "gone").await;
    env.secret_source(&src, "new", &a, &[("k", "v")], &[]).await;
    env.delete(&secrets(), &a, "lost").await;
    env.delete(&secrets(), &src, "typed").await;
    let mut typed = env.source_meta(&src, "typed", &a, &[]);
    typed["name"] = json!("typed");
    env.create(&secrets(), json!({"apiVersion": "v1", "kind": "Secret", "metadata": typed, "type": "kubernetes.io/basic-auth", "stringData": {"username": "u", "password": "p"}})).await;
    env.delete(&configmaps(), &src, "frozen").await;
    env.create(&configmaps(), json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": frozen, "immutable": true, "data": {"v": "2"}})).await;

    let _agg = env.start(CORE, &[]).await;
    env.wait_mirrors(&secrets(), "gone", &[]).await;
    env.wait_mirrors(&secrets(), "new", &[&a]).await;
    env.wait_mirrors(&secrets(), "lost", &[&a]).await;
    env.wait_object(&secrets(), &a, "typed", "the mirror of the new type", |o| {
        o["type"] == "kubernetes.io/basic-auth"
    })
    .await;
    env.wait_object(
        &configmaps(),
        &a,
        "frozen",
        "the immutable mirror recreated",
        |o| o["data"]["v"] == "2",
    )
    .await;
    let still = env.get(&secrets(), &a, "keep").await.unwrap();
    assert_eq!(
        (uid(&still), rv(&still)),
        (uid(&keep), rv(&keep)),
        "an unchanged mirror is not written"
    );
    env.wait_event(&src, "typed", "Recreated", &a).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn drift_is_reverted_and_a_detached_mirror_is_left_alone() {
    let env = Env::new().await;
    let src = env.namespace("src", &[]).await;
    let a = env.namespace("a", &[]).await;
    let _agg = env.start("ConfigMap.v1,Deployment.v1.apps", &[]).await;
    env.configmap_source(&src, "cfg", &a, &[("k", "v")], &[])
        .await;
    env.wait_mirrors(&configmaps(), "cfg", &[&a]).await;
    let meta = env.source_meta(&src, "web", &a, &[]);
    env.create(&deployments(), json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta, "spec": {
        "replicas": 1, "selector": {"matchLabels": {"app": "web"}},
        "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]}}}})).await;
    env.wait_mirrors(&deployments(), "web", &[&a]).await;

    // A value, a spec field, a label: reverted. A hand-added label or data key: removed.
    env.patch(
        &configmaps(),
        &a,
        "cfg",
        json!({"data": {"k": "edited", "extra": "x"}, "metadata": {"labels": {"hand": "added"}}}),
    )
    .await;
    env.wait_object(&configmaps(), &a, "cfg", "the edits reverted", |o| {
        o["data"] == json!({"k": "v"}) && o["metadata"]["labels"]["hand"].is_null()
    })
    .await;
    env.patch(&deployments(), &a, "web", json!({"spec": {"replicas": 3}}))
        .await;
    env.wait_object(&deployments(), &a, "web", "the spec edit reverted", |o| {
        o["spec"]["replicas"] == 1
    })
    .await;

    // Removing managed-by detaches it: never written again, and a Conflict.
    env.patch(
        &configmaps(),
        &a,
        "cfg",
        json!({"metadata": {"labels": {env.key("managed-by"): null}}}),
    )
    .await;
    env.wait_event(&src, "cfg", "Conflict", &a).await;
    let detached = env.get(&configmaps(), &a, "cfg").await.unwrap();
    env.patch(&configmaps(), &src, "cfg", json!({"data": {"k": "v2"}}))
        .await;
    env.configmap_source(&src, "marker", &a, &[("k", "v")], &[])
        .await;
    env.wait_mirrors(&configmaps(), "marker", &[&a]).await;
    assert_eq!(
        rv(&env.get(&configmaps(), &a, "cfg").await.unwrap()),
        rv(&detached)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn service_mirrors_get_their_own_addresses_and_keep_them() {
    let env = Env::new().await;
    let src = env.namespace("src", &[]).await;
    let a = env.namespace("a", &[]).await;
    let _agg = env.start("Service.v1", &[]).await;
    let svc = |name: &str, spec: Value| json!({"apiVersion": "v1", "kind": "Service", "metadata": env.source_meta(&src, name, &a, &[]), "spec": spec});
    let cluster = env
        .create(
            &services(),
            svc(
                "web",
                json!({"selector": {"app": "web"}, "ports": [{"port": 80}]}),
            ),
        )
        .await;
    let node = env
        .create(
            &services(),
            svc(
                "edge",
                json!({"type": "NodePort", "selector": {"app": "edge"}, "ports": [{"port": 443}]}),
            ),
        )
        .await;
    env.create(
        &services(),
        svc(
            "peers",
            json!({"clusterIP": "None", "selector": {"app": "db"}, "ports": [{"port": 5432}]}),
        ),
    )
    .await;
    for name in ["web", "edge", "peers"] {
        env.wait_mirrors(&services(), name, &[&a]).await;
    }
    let web = env.get(&services(), &a, "web").await.unwrap();
    assert_ne!(web["spec"]["clusterIP"], cluster["spec"]["clusterIP"]);
    let edge = env.get(&services(), &a, "edge").await.unwrap();
    assert_ne!(
        edge["spec"]["ports"][0]["nodePort"],
        node["spec"]["ports"][0]["nodePort"]
    );
    assert!(edge["spec"]["ports"][0]["nodePort"].is_number());
    assert_eq!(
        env.get(&services(), &a, "peers").await.unwrap()["spec"]["clusterIP"],
        "None"
    );
    // A source update keeps the mirror's own address and port.
    env.patch(&services(), &src, "edge", json!({"metadata": {"annotations": {"note": "v2"}}, "spec": {"ports": [{"port": 443, "name": "https"}]}})).await;
    let updated = env
        .wait_object(&services(), &a, "edge", "the update", |o| {
            o["metadata"]["annotations"]["note"] == "v2"
        })
        .await;
    assert_eq!(updated["spec"]["clusterIP"], edge["spec"]["clusterIP"]);
    assert_eq!(
        updated["spec"]["ports"][0]["nodePort"],
        edge["spec"]["ports"][0]["nodePort"]
    );
    assert_eq!(updated["metadata"]["uid"], edge["metadata"]["uid"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_transform_fails_closed_for_secrets_and_strict_sources() {
    let env = Env::new().await;
    let src = env.namespace("src", &[]).await;
    let a = env.namespace("a", &[]).await;
    let _agg = env.start(CORE, &[]).await;
    let t = env.key("transform");
    let strict = env.key("transform-strict");
    let big = format!(
        "rules:\n{}",
        "  - {path: data.X, value: padding-padding-padding-padding}\n".repeat(200)
    );
    let bad: [(&str, String); 4] = [
        ("yaml", "rules: [[[".into()),
        (
            "rule",
            "rules: [{path: data.ADMIN_PASSWORD, delete: true, value: x}]".into(),
        ),
        ("big", big),
        (
            "field",
            "rules: [{path: data.X, template: '{{.Nope}}'}]".into(),
        ),
    ];
    for (name, rules) in &bad {
        env.secret_source(
            &src,
            &format!("secret-{name}"),
            &a,
            &[("ADMIN_PASSWORD", "root")],
            &[(&t, rules)],
        )
        .await;
        env.configmap_source(
            &src,
            &format!("cm-{name}"),
            &a,
            &[("ADMIN_PASSWORD", "root")],
            &[(&t, rules)],
        )
        .await;
    }
    env.configmap_source(
        &src,
        "strict-true",
        &a,
        &[("k", "v")],
        &[(&t, "rules: [[["), (&strict, "true")],
    )
    .await;
    env.configmap_source(
        &src,
        "strict-1",
        &a,
        &[("k", "v")],
        &[
            (&t, "rules: [{path: data.X, template: '{{.Nope}}'}]"),
            (&strict, "1"),
        ],
    )
    .await;
    env.configmap_source(&src, "marker", &a, &[("k", "v")], &[])
        .await;
    env.wait_mirrors(&configmaps(), "marker", &[&a]).await;
    for (name, _) in &bad {
        // ConfigMaps: written (untransformed, or without the failing rule), with an Event.
        env.wait_mirrors(&configmaps(), &format!("cm-{name}"), &[&a])
            .await;
        env.wait_event(&src, &format!("cm-{name}"), "TransformFailed", &a)
            .await;
        // Secrets: nothing written.
        assert!(
            env.get(&secrets(), &a, &format!("secret-{name}"))
                .await
                .is_none(),
            "secret-{name}"
        );
        env.wait_event(&src, &format!("secret-{name}"), "TransformFailed", &a)
            .await;
    }
    let untransformed = env.get(&configmaps(), &a, "cm-rule").await.unwrap();
    assert_eq!(
        untransformed["data"]["ADMIN_PASSWORD"], "root",
        "an invalid rule skips all rules"
    );
    for name in ["strict-true", "strict-1"] {
        assert!(env.get(&configmaps(), &a, name).await.is_none(), "{name}");
        env.wait_event(&src, name, "TransformFailed", "").await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn kubemirror_sources_and_mirrors_work_unchanged_with_its_prefix() {
    let env = Env::new().await.with_prefix("kubemirror.raczylo.com");
    let src = env.namespace("src", &[]).await;
    let a = env.namespace("namespace-2", &[]).await;
    let b = env.namespace("namespace-3", &[]).await;
    let c = env.namespace("c", &[]).await;
    // A kubemirror source with its transform syntax, as kubemirror users write them.
    let rules = "rules:\n  - path: data.DB_HOST\n    template: \"{{.TargetNamespace}}.postgres.svc.cluster.local\"\n  - path: data.CACHE_PREFIX\n    template: \"{{replace .TargetNamespace \\\"-\\\" \\\":\\\"}}:\"\n  - path: data.ROOT_TOKEN\n    delete: true\n";
    let source = env
        .secret_source(
            &src,
            "creds",
            &format!("{a},{b},{c}"),
            &[
                ("DB_HOST", "localhost"),
                ("ROOT_TOKEN", "t"),
                ("USER", "app"),
            ],
            &[("kubemirror.raczylo.com/transform", rules)],
        )
        .await;
    // kubemirror's mirror of exactly this source (same UID) in a: adopted in place. One naming
    // another UID in b: foreign.
    let km = |ns: &str, uid: &str| {
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds", "namespace": ns,
            "labels": {"kubemirror.raczylo.com/managed-by": "kubemirror", "kubemirror.raczylo.com/mirror": "true"},
            "annotations": {"kubemirror.raczylo.com/source-namespace": src, "kubemirror.raczylo.com/source-name": "creds",
                "kubemirror.raczylo.com/source-uid": uid, "kubemirror.raczylo.com/last-sync-time": "2025-01-01T00:00:00Z"}},
            "stringData": {"DB_HOST": "old"}})
    };
    let adoptee = env.create(&secrets(), km(&a, &uid(&source))).await;
    let other = env
        .create(&secrets(), km(&b, "00000000-0000-4000-8000-000000000000"))
        .await;
    // A source kubemirror put its finalizer on.
    let mut fin = env.source_meta(&src, "held", &c, &[]);
    fin["finalizers"] = json!(["kubemirror.raczylo.com/finalizer"]);
    let held = env
        .create(
            &secrets(),
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": fin, "stringData": {"k": "v"}}),
        )
        .await;
    // ... with a mirror kubemirror wrote where the source no longer points.
    let d = env.namespace("d", &[]).await;
    let mut km_held = km(&d, &uid(&held));
    km_held["metadata"]["name"] = json!("held");
    km_held["metadata"]["annotations"]["kubemirror.raczylo.com/source-name"] = json!("held");
    env.create(&secrets(), km_held).await;

    let _agg = env.start(CORE, &[]).await;
    env.wait_mirrors(&secrets(), "creds", &[&a, &b, &c]).await; // b: kubemirror's foreign one
    let adopted = env
        .wait_object(&secrets(), &a, "creds", "adopted", |o| {
            o["metadata"]["labels"]["kubemirror.raczylo.com/managed-by"] == "fleetmirror"
        })
        .await;
    assert_eq!(uid(&adopted), uid(&adoptee), "rewritten in place");
    assert!(adopted["metadata"]["annotations"]["kubemirror.raczylo.com/last-sync-time"].is_null());
    assert_eq!(
        secret_data(&adopted),
        BTreeMap::from([
            ("DB_HOST".into(), format!("{a}.postgres.svc.cluster.local")),
            ("CACHE_PREFIX".into(), format!("{}:", a.replace('-', ":"))),
            ("USER".into(), "app".into())
        ])
    );
    env.wait_event(&src, "creds", "Adopted", "1").await;
    env.wait_event(&src, "creds", "Conflict", &b).await;
    assert_eq!(
        rv(&env.get(&secrets(), &b, "creds").await.unwrap()),
        rv(&other)
    );
    // Deleted, the held source is released: its mirrors go (kubemirror's too), then
    // kubemirror's finalizer.
    env.wait_mirrors(&secrets(), "held", &[&c, &d]).await;
    env.delete(&secrets(), &src, "held").await;
    env.wait_mirrors(&secrets(), "held", &[]).await;
    eventually(WAIT, "the held source released and gone", || async {
        env.get(&secrets(), &src, "held")
            .await
            .is_none()
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn over_the_limit_the_first_targets_by_name_are_kept_every_time() {
    let env = Env::new().await;
    let src = env.namespace("src", &[]).await;
    let mut all = Vec::new();
    for i in [5, 3, 1, 4, 2] {
        all.push(env.namespace(&format!("t-{i}"), &[]).await);
    }
    all.sort();
    let agg = env
        .start(
            CORE,
            &["--mirror-max-targets=3", "--mirror-resync-interval=1s"],
        )
        .await;
    env.secret_source(&src, "s", &format!("{}-t-*", env.id), &[("k", "v")], &[])
        .await;
    let first: Vec<&str> = all[..3].iter().map(String::as_str).collect();
    env.wait_mirrors(&secrets(), "s", &first).await;
    let note = env
        .wait_event(&src, "s", "TooManyTargets", "5 namespaces")
        .await;
    assert!(note.contains(&all[3]), "names the first dropped: {note}");
    let before = writes(&agg);
    passes(&agg, 4.0).await;
    assert_eq!(
        env.mirrors_of(&secrets(), "s").await,
        first.iter().map(|s| s.to_string()).collect()
    );
    assert_eq!(
        writes(&agg),
        before,
        "the same targets every time: no write"
    );
    let s = get(&agg, "Secret", &src, "s", "").await.unwrap();
    let dropped: Vec<&str> = s
        .targets
        .iter()
        .filter(|t| t.state() == MirrorState::Refused)
        .map(|t| t.namespace.as_str())
        .collect();
    assert_eq!(dropped, [all[3].as_str(), all[4].as_str()]);
}

#[tokio::test(flavor = "multi_thread")]
async fn of_two_sources_of_one_name_the_older_wins_without_ping_pong() {
    let env = Env::new().await;
    let old_ns = env.namespace("old", &[]).await;
    let young_ns = env.namespace("young", &[]).await;
    let a = env.namespace("a", &[]).await;
    let agg = env.start(CORE, &["--mirror-resync-interval=1s"]).await;
    let old = env
        .configmap_source(&old_ns, "shared", &a, &[("from", "old")], &[])
        .await;
    env.wait_mirrors(&configmaps(), "shared", &[&a]).await;
    // creationTimestamp has seconds: the younger must be created in a later one (a tie is
    // broken by UID).
    let created: jiff::Timestamp = old["metadata"]["creationTimestamp"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    eventually(WAIT, "the next second", || async {
        (jiff::Timestamp::now().as_second() > created.as_second()).then_some(())
    })
    .await;
    env.configmap_source(&young_ns, "shared", &a, &[("from", "young")], &[])
        .await;
    env.wait_event(&young_ns, "shared", "Conflict", &a).await;
    let before = writes(&agg);
    passes(&agg, 6.0).await;
    assert_eq!(writes(&agg), before, "no ping-pong");
    let m = env.get(&configmaps(), &a, "shared").await.unwrap();
    assert_eq!(m["data"]["from"], "old");
    // The older goes: the younger takes the mirror over in place.
    env.delete(&configmaps(), &old_ns, "shared").await;
    let taken = env
        .wait_object(&configmaps(), &a, "shared", "taken over", |o| {
            o["data"]["from"] == "young"
        })
        .await;
    assert_eq!(uid(&taken), uid(&m));
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_input_gets_its_event_and_nothing_else() {
    let env = Env::new().await;
    let src = env.namespace("src", &[]).await;
    let a = env.namespace("a", &[]).await;
    let b = env.namespace("b", &[]).await;
    let mut agg = env.start(CORE, &[]).await;
    let t = env.key("transform");
    // (source name, its annotations, the Event reason, words of its note)
    type Case<'a> = (&'a str, Vec<(String, String)>, &'a str, &'a str);
    let cases: Vec<Case> = vec![
        (
            "too-big",
            vec![(
                t.clone(),
                format!("rules: [{}]", "{path: data.X, value: y},".repeat(500)),
            )],
            "TransformFailed",
            "10240",
        ),
        (
            "invalid",
            vec![(t.clone(), "rules: [{path: '', value: x}]".into())],
            "TransformFailed",
            "path cannot be empty",
        ),
        (
            "many",
            vec![(
                t.clone(),
                format!(
                    "rules: [{}]",
                    vec!["{path: data.X, value: y}"; 51].join(",")
                ),
            )],
            "TransformFailed",
            "too many rules",
        ),
        (
            "megabytes",
            vec![(
                t.clone(),
                "rules: [{path: data.X, template: '{{printf \"%0900000d\" 1}}'}]".into(),
            )],
            "TransformFailed",
            "exceeds 65536 bytes",
        ),
        (
            "glob",
            vec![(env.key("target-namespaces"), format!("{a},app-["))],
            "InvalidTarget",
            "app-[",
        ),
        (
            "selector",
            vec![(env.key("target-namespace-selector"), "env in (prod".into())],
            "InvalidTarget",
            "selector",
        ),
        (
            "max",
            vec![(env.key("max-targets"), "zero".into())],
            "InvalidTarget",
            "max-targets",
        ),
        (
            "own",
            vec![(env.key("target-namespaces"), format!("{a},{src}"))],
            "InvalidTarget",
            "own namespace",
        ),
    ];
    for (name, ann, _, _) in &cases {
        let ann: Vec<(&str, &str)> = ann.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        env.configmap_source(&src, name, &a, &[("X", "x")], &ann)
            .await;
    }
    // An unreadable exclusion: nothing created (no exposure).
    env.configmap_source(
        &src,
        "exclude",
        &b,
        &[("X", "x")],
        &[(&env.key("exclude-namespaces"), "b-[")],
    )
    .await;
    // A 200 KiB annotation: copied.
    let huge = "x".repeat(200 * 1024);
    env.configmap_source(&src, "huge", &a, &[("X", "x")], &[("big", &huge)])
        .await;
    // A mirror labelled as a source: refused, on it.
    let mut fake = env.source_meta(&src, "fake", &a, &[]);
    fake["labels"][env.key("mirror")] = json!("true");
    env.create(
        &configmaps(),
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": fake, "data": {"X": "x"}}),
    )
    .await;

    for (name, _, reason, needle) in &cases {
        env.wait_event(&src, name, reason, needle).await;
    }
    env.wait_event(&src, "exclude", "InvalidTarget", "exclude-namespaces")
        .await;
    env.wait_event(&src, "fake", "Refused", "never a source")
        .await;
    env.wait_mirrors(&configmaps(), "huge", &[&a]).await;
    assert_eq!(
        env.get(&configmaps(), &a, "huge").await.unwrap()["metadata"]["annotations"]["big"]
            .as_str()
            .map(str::len),
        Some(huge.len())
    );
    for name in ["glob", "own"] {
        env.wait_mirrors(&configmaps(), name, &[&a]).await; // the valid forms still apply
    }
    assert!(env.get(&configmaps(), &b, "exclude").await.is_none());
    assert!(
        env.mirrors_of(&configmaps(), "fake").await.len() <= 1,
        "the fake is only itself"
    );
    assert!(agg.process.is_running(), "{}", agg.process.log());
    let (code, _) = fleetmirror_tests::process::http_get(agg.admin_port, "/readyz").unwrap();
    assert_eq!(code, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn with_rbac_for_configmaps_only_configmaps_are_mirrored_and_secrets_shown_forbidden() {
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
    let env = Env::new().await;
    let src = env.namespace("src", &[]).await;
    let a = env.namespace("a", &[]).await;
    let home = env.namespace("home", &[]).await;
    // The chart's ClusterRole for `controllers={mirror}` with rbac.allResources=false.
    let rendered = fleetmirror_tests::pod::Rendered::helm(&[
        "aggregator.controllers={mirror}",
        "mirror.rbac.allResources=false",
        "mirror.rbac.rules[0].apiGroups[0]=",
        "mirror.rbac.rules[0].resources={configmaps}",
    ]);
    let doc = rendered
        .docs()
        .iter()
        .find(|d| {
            d["kind"].as_str() == Some("ClusterRole")
                && d["metadata"]["name"].as_str() == Some("fleetmirror-aggregator")
        })
        .unwrap()
        .clone();
    let mut role: ClusterRole = serde_yaml::from_value(doc).unwrap();
    let name = format!("{}-aggregator", env.id);
    role.metadata = kube::api::ObjectMeta {
        name: Some(name.clone()),
        ..Default::default()
    };
    kube::Api::<ClusterRole>::all(env.client.clone())
        .create(&Default::default(), &role)
        .await
        .unwrap();
    let binding: ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": "aggregator", "namespace": home}],
    }))
    .unwrap();
    kube::Api::<ClusterRoleBinding>::all(env.client.clone())
        .create(&Default::default(), &binding)
        .await
        .unwrap();
    let token =
        fleetmirror_tests::cluster::service_account_token(&env.client, &home, "aggregator").await;
    let dir = std::env::temp_dir().join(format!("fleetmirror-{}", env.id));
    std::fs::create_dir_all(&dir).unwrap();
    let mut config = env.config("", &[]);
    config.kubeconfig = Some(fleetmirror_tests::cluster::kubeconfig_with_token(
        env.cp, 0, &token, &dir,
    ));
    let mut agg = env.start_with(config).await;

    env.configmap_source(&src, "cfg", &a, &[("k", "v")], &[])
        .await;
    env.secret_source(&src, "sec", &a, &[("k", "v")], &[]).await;
    env.wait_mirrors(&configmaps(), "cfg", &[&a]).await;
    let kinds = list(&agg, "", "").await.kinds;
    let secret = kinds
        .iter()
        .find(|k| k.kind == "Secret" && k.group.is_empty())
        .unwrap();
    assert_eq!(secret.state(), MirrorKindState::Forbidden, "{secret:?}");
    assert!(env.mirrors_of(&secrets(), "sec").await.is_empty());
    assert!(agg.process.is_running());
    let (code, _) = fleetmirror_tests::process::http_get(agg.admin_port, "/readyz").unwrap();
    assert_eq!(code, 200, "ready: only watched kinds count");
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread")]
async fn normalised_and_defaulted_mirrors_are_written_once() {
    let env = Env::new().await;
    let src = env.namespace("src", &[]).await;
    let a = env.namespace("a", &[]).await;
    let agg = env
        .start(
            "Deployment.v1.apps,Service.v1",
            &["--mirror-resync-interval=1s"],
        )
        .await;
    let rules = "rules: [{path: 'spec.template.spec.containers[0].resources.limits.memory', value: 2048Mi}]";
    let meta = env.source_meta(&src, "web", &a, &[(&env.key("transform"), rules)]);
    env.create(&deployments(), json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta, "spec": {
        "selector": {"matchLabels": {"app": "web"}},
        "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "web", "image": "nginx:1.27", "resources": {"limits": {"memory": "1Gi"}}}]}}}})).await;
    env.create(&services(), json!({"apiVersion": "v1", "kind": "Service", "metadata": env.source_meta(&src, "web", &a, &[]),
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}})).await;
    env.wait_mirrors(&deployments(), "web", &[&a]).await;
    env.wait_mirrors(&services(), "web", &[&a]).await;
    let d = env
        .wait_object(&deployments(), &a, "web", "normalised", |o| {
            o["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"] == "2Gi"
        })
        .await;
    passes(&agg, 2.0).await;
    let before = writes(&agg);
    let events = env.events(&src, "web").await.len();
    passes(&agg, 6.0).await;
    assert_eq!(writes(&agg), before, "converged: no more writes");
    assert_eq!(
        env.events(&src, "web").await.len(),
        events,
        "and no new Events"
    );
    assert_eq!(
        rv(&env.get(&deployments(), &a, "web").await.unwrap()),
        rv(&d)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn diagnostics_show_every_state_and_only_the_leader_writes() {
    let env = Env::new().await;
    let allow = env.key("allow-mirrors");
    let src = env.namespace("src", &[]).await;
    let a = env.namespace("a", &[]).await;
    let out = env.namespace("out", &[(&allow, "false")]).await;
    let kinds = "Secret.v1,ConfigMap.v1,Ingress.v1.networking.k8s.io,Ingress.v1beta1.extensions";
    let mut config = env.config(kinds, &[]);
    config.extra_args.retain(|a| a != "--leader-elect=false");
    let mut leader = env.start_with(config.clone()).await;
    eventually(WAIT, "leadership", || async {
        (leader.metric("fleetmirror_aggregator_leader") == Some(1.0)).then_some(())
    })
    .await;
    config.identity = format!("standby-{}", env.id);
    let standby = env.start_with(config).await;

    env.create(&secrets(), json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "namespace": a}, "stringData": {"k": "v"}})).await;
    let missing = env.ns_name("missing");
    env.secret_source(
        &src,
        "s",
        &format!("{a},{out},{missing}"),
        &[("k", "v")],
        &[],
    )
    .await;
    env.secret_source(
        &src,
        "closed",
        &a,
        &[("k", "v")],
        &[(&env.key("transform"), "rules: [[[")],
    )
    .await;
    env.configmap_source(&src, "ok", &a, &[("k", "v")], &[])
        .await;
    env.wait_mirrors(&configmaps(), "ok", &[&a]).await;
    let by_ns = |s: &MirrorSource| -> BTreeMap<String, (MirrorState, String)> {
        s.targets
            .iter()
            .map(|t| (t.namespace.clone(), (t.state(), t.reason.clone())))
            .collect()
    };
    let s = eventually(WAIT, "the conflict judged", || async {
        let s = get(&standby, "Secret", &src, "s", "").await.ok()?; // through the standby
        (by_ns(&s)[&a].0 == MirrorState::Conflict).then_some(s)
    })
    .await;
    let t = by_ns(&s);
    assert!(
        t[&out].0 == MirrorState::Refused && t[&out].1.contains("opted out"),
        "{t:?}"
    );
    assert!(
        t[&missing].0 == MirrorState::Pending && t[&missing].1.contains("does not exist"),
        "{t:?}"
    );
    let closed = get(&leader, "Secret", &src, "closed", "").await.unwrap();
    assert_eq!(closed.targets[0].state(), MirrorState::Error, "{closed:?}");
    let ok = get(&leader, "ConfigMap", &src, "ok", "").await.unwrap();
    assert_eq!(ok.targets[0].state(), MirrorState::Mirrored);
    assert!(ok.targets[0].last_write.is_some());
    let listed = list(&leader, &src, "Secret").await;
    assert_eq!(
        listed
            .sources
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>(),
        ["closed", "s"]
    );
    // NOT_FOUND, INVALID_ARGUMENT.
    assert_eq!(
        get(&leader, "Secret", &src, "nope", "")
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    assert_eq!(
        get(&leader, "", &src, "s", "").await.unwrap_err().code(),
        Code::InvalidArgument
    );
    assert_eq!(
        get(&leader, "Secret", "", "s", "")
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );
    let ambiguous = get(&leader, "Ingress", &src, "x", "").await.unwrap_err();
    assert_eq!(ambiguous.code(), Code::InvalidArgument, "{ambiguous:?}");
    assert!(
        ambiguous.message().contains("networking.k8s.io"),
        "{ambiguous:?}"
    );
    // Metrics, bounded labels; only the leader wrote.
    assert!(leader.metric("fleetmirror_mirror_sources").unwrap() >= 3.0);
    assert!(
        fleetmirror_tests::process::metric_with(
            leader.admin_port,
            "fleetmirror_mirror_mirrors",
            "state=\"conflict\""
        ) >= 1.0
    );
    assert!(writes(&leader) >= 1.0);
    assert_eq!(writes(&standby), 0.0, "a standby never writes");
    assert_eq!(
        standby.metric("fleetmirror_mirror_passes_total"),
        Some(0.0),
        "a standby makes no pass at all"
    );
    // Failover: the standby takes over and mirroring goes on.
    leader.process.kill();
    eventually(WAIT, "the standby leads", || async {
        (standby.metric("fleetmirror_aggregator_leader") == Some(1.0)).then_some(())
    })
    .await;
    env.configmap_source(&src, "after", &a, &[("k", "v")], &[])
        .await;
    env.wait_mirrors(&configmaps(), "after", &[&a]).await;
}
