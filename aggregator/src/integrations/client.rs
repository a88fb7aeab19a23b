//! Target clusters: a client built only from what the kubeconfig policy let through
//! ([`fleetmirror_core::integrations::kubeconfig::Endpoint`]: inline credentials, an `https://`
//! URL, no command, no file, no proxy), the connection test, one check's reads, and how a
//! failed request is told (category for the metric, [`Unchecked`] for the status), never with
//! a response body or a credential.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine as _;
use fleetmirror_core::integrations::cluster::{self, ClusterCheck, Observed, Request};
use fleetmirror_core::integrations::component::Kind;
use fleetmirror_core::integrations::config::{CheckConfig, Type};
use fleetmirror_core::integrations::kubeconfig::{Auth, Endpoint};
use fleetmirror_core::integrations::status::{Unchecked, bounded};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ApiResource, DynamicObject, ListParams};
use kube::config::{
    AuthInfo, Cluster, Context, Kubeconfig, NamedAuthInfo, NamedCluster, NamedContext,
};
use serde_json::Value;

/// A client of one target cluster, built once per (target generation, Secret version).
#[derive(Clone)]
pub struct TargetClient {
    /// The client (connect timeout, read timeout = the check deadline, no retries).
    pub client: kube::Client,
    /// The URL (never credentials).
    pub server: String,
    /// Distinguishes rebuilt clients (a new one re-checks the target's pairs).
    pub id: u64,
    /// The EndpointSlice version the cluster serves, once known (0: unknown, 1: v1,
    /// 2: v1beta1), so a check asks once, not every time.
    slices: std::sync::Arc<std::sync::atomic::AtomicU8>,
}

impl std::fmt::Debug for TargetClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TargetClient")
            .field("server", &self.server)
            .field("id", &self.id)
            .finish()
    }
}

static CLIENT_IDS: AtomicU64 = AtomicU64::new(1);

/// Builds a client for `endpoint`. Only the fields the policy allowed are handed to kube (as
/// an in-memory kubeconfig with inline data); proxies from the environment are not used.
pub async fn build(
    endpoint: &Endpoint,
    connect_timeout: Duration,
    request_timeout: Duration,
) -> Result<TargetClient, String> {
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let mut user = AuthInfo::default();
    match &endpoint.auth {
        Auth::None => {}
        Auth::Token(t) => user.token = Some(t.clone().into()),
        Auth::ClientCertificate { certificate, key } => {
            user.client_certificate_data = Some(b64(certificate));
            user.client_key_data = Some(b64(key).into());
        }
        Auth::Basic { username, password } => {
            user.username = Some(username.clone());
            user.password = Some(password.clone().into());
        }
    }
    let kubeconfig = Kubeconfig {
        clusters: vec![NamedCluster {
            name: "target".into(),
            cluster: Some(Cluster {
                server: Some(endpoint.server.clone()),
                insecure_skip_tls_verify: Some(endpoint.insecure),
                certificate_authority_data: endpoint.certificate_authority.as_deref().map(b64),
                tls_server_name: endpoint.tls_server_name.clone(),
                ..Default::default()
            }),
            other: Default::default(),
        }],
        auth_infos: vec![NamedAuthInfo {
            name: "target".into(),
            auth_info: Some(user),
            other: Default::default(),
        }],
        contexts: vec![NamedContext {
            name: "target".into(),
            context: Some(Context {
                cluster: "target".into(),
                user: Some("target".into()),
                ..Default::default()
            }),
            other: Default::default(),
        }],
        current_context: Some("target".into()),
        ..Default::default()
    };
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .map_err(|e| bounded(&e.to_string()))?;
    config.cluster_url = endpoint
        .server
        .parse()
        .map_err(|e: http::uri::InvalidUri| e.to_string())?;
    config.proxy_url = None;
    config.auth_info.impersonate = None;
    config.auth_info.impersonate_groups = None;
    config.auth_info.impersonate_uid = None;
    config.connect_timeout = Some(connect_timeout);
    config.read_timeout = Some(request_timeout);
    config.write_timeout = Some(request_timeout);
    config.default_retry = false;
    config.default_namespace = "default".into();
    // Whoever may write a target's Secret chooses the server: what it sends is bounded, so a
    // huge answer fails the check instead of the aggregator's memory.
    let client = kube::client::ClientBuilder::try_from(config)
        .map_err(|e| bounded(&e.to_string()))?
        .with_layer(&tower::util::MapResponseLayer::new(limit_body))
        .build();
    Ok(TargetClient {
        client,
        server: endpoint.server.clone(),
        id: CLIENT_IDS.fetch_add(1, Ordering::Relaxed),
        slices: Default::default(),
    })
}

/// The largest answer read from a target cluster.
pub const MAX_ANSWER: usize = 16 << 20;

fn limit_body<B>(r: http::Response<B>) -> http::Response<http_body_util::Limited<B>> {
    r.map(|b| http_body_util::Limited::new(b, MAX_ANSWER))
}

/// A failed request: the metric's category and what the status says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// `connect`, `timeout`, `tls`, `unauthorized`, `forbidden`, `http`, `decode`.
    pub category: &'static str,
    /// The cluster's state.
    pub unchecked: Unchecked,
}

impl Failure {
    /// The `<error>` of a failed connection test.
    pub fn detail(&self) -> String {
        match &self.unchecked {
            Unchecked::Unreachable(d) | Unchecked::CheckFailed(d) => d.clone(),
            Unchecked::Unauthorized => "the server rejected the credentials (HTTP 401)".into(),
            Unchecked::Forbidden { verb, resource } => {
                format!("the server forbids {verb} {resource} (HTTP 403)")
            }
            Unchecked::TargetNotFound | Unchecked::TargetNotReady(_) => String::new(),
        }
    }
}

/// No answer within `d`.
pub fn timed_out(d: Duration) -> Failure {
    Failure {
        category: "timeout",
        unchecked: Unchecked::Unreachable(format!(
            "no answer within {}",
            humantime::format_duration(d)
        )),
    }
}

/// Classifies `e` from a request `verb` `resource` (e.g. `get`, `deployments.apps`).
pub fn classify(e: &kube::Error, verb: &str, resource: &str, deadline: Duration) -> Failure {
    let unreachable = |category, d: String| Failure {
        category,
        unchecked: Unchecked::Unreachable(bounded(&d)),
    };
    match e {
        kube::Error::Api(s) => match s.code {
            401 => Failure {
                category: "unauthorized",
                unchecked: Unchecked::Unauthorized,
            },
            403 => Failure {
                category: "forbidden",
                unchecked: Unchecked::Forbidden {
                    verb: verb.into(),
                    resource: resource.into(),
                },
            },
            c @ 500..=599 => unreachable("http", format!("HTTP {c} from {verb} {resource}")),
            c => Failure {
                category: "http",
                unchecked: Unchecked::CheckFailed(bounded(&format!(
                    "HTTP {c} from {verb} {resource}{}",
                    if s.reason.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", s.reason)
                    }
                ))),
            },
        },
        kube::Error::SerdeError(_) | kube::Error::FromUtf8(_) => Failure {
            category: "decode",
            unchecked: Unchecked::CheckFailed(format!(
                "the answer to {verb} {resource} could not be decoded"
            )),
        },
        other => {
            // The innermost cause names what happened (refused, reset, TLS, DNS, timeout).
            let mut cause: &dyn std::error::Error = other;
            let mut io_kind = None;
            let mut chain = vec![other.to_string()];
            while let Some(next) = cause.source() {
                if let Some(io) = next.downcast_ref::<std::io::Error>() {
                    io_kind = Some(io.kind());
                }
                chain.push(next.to_string());
                cause = next;
            }
            let text = chain.join(": ").to_lowercase();
            if text.contains("length limit exceeded") {
                return Failure {
                    category: "decode",
                    unchecked: Unchecked::CheckFailed(format!(
                        "the answer to {verb} {resource} is larger than {} MiB",
                        MAX_ANSWER >> 20
                    )),
                };
            }
            use std::io::ErrorKind as K;
            match io_kind {
                Some(K::ConnectionRefused) => unreachable("connect", "connection refused".into()),
                Some(K::ConnectionReset) => unreachable("connect", "connection reset".into()),
                Some(K::TimedOut) if text.contains("connect") => Failure {
                    category: "timeout",
                    unchecked: Unchecked::Unreachable("connect timeout".into()),
                },
                Some(K::TimedOut) => timed_out(deadline),
                _ if text.contains("certificate")
                    || text.contains("tls")
                    || text.contains("handshake") =>
                {
                    unreachable(
                        "tls",
                        format!("TLS: {}", chain.last().map(String::as_str).unwrap_or("")),
                    )
                }
                _ if text.contains("elapsed")
                    || text.contains("timed out")
                    || text.contains("timeout") =>
                {
                    timed_out(deadline)
                }
                _ if text.contains("dns")
                    || text.contains("lookup")
                    || text.contains("resolve") =>
                {
                    unreachable(
                        "connect",
                        format!("DNS: {}", chain.last().map(String::as_str).unwrap_or("")),
                    )
                }
                _ => unreachable("connect", chain.last().cloned().unwrap_or_default()),
            }
        }
    }
}

/// `GET /version` within `deadline`: the server's gitVersion.
pub async fn probe(c: &TargetClient, deadline: Duration) -> Result<String, Failure> {
    match tokio::time::timeout(deadline, c.client.apiserver_version()).await {
        Err(_) => Err(timed_out(deadline)),
        Ok(Err(e)) => Err(classify(&e, "get", "/version", deadline)),
        Ok(Ok(v)) => Ok(v.git_version),
    }
}

fn workload_ar(kind: Kind) -> ApiResource {
    let (k, plural) = match kind {
        Kind::Deployment => ("Deployment", "deployments"),
        Kind::StatefulSet => ("StatefulSet", "statefulsets"),
        Kind::DaemonSet => ("DaemonSet", "daemonsets"),
    };
    ApiResource {
        group: "apps".into(),
        version: "v1".into(),
        api_version: "apps/v1".into(),
        kind: k.into(),
        plural: plural.into(),
    }
}

fn ar(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
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

/// One check's reads on one cluster: counts every request sent, and whether the server
/// answered at all.
struct Reader<'a> {
    client: &'a kube::Client,
    slices: &'a std::sync::atomic::AtomicU8,
    ns: &'a str,
    deadline: Duration,
    requests: &'a AtomicU64,
    answered: &'a std::sync::atomic::AtomicBool,
}

impl Reader<'_> {
    fn sent(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    fn api(&self, ar: &ApiResource) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), self.ns, ar)
    }

    fn resource(ar: &ApiResource) -> String {
        if ar.group.is_empty() {
            ar.plural.clone()
        } else {
            format!("{}.{}", ar.plural, ar.group)
        }
    }

    fn seen<T>(&self, r: &Result<T, kube::Error>) {
        if r.is_ok() || matches!(r, Err(kube::Error::Api(_))) {
            self.answered.store(true, Ordering::Relaxed);
        }
    }

    async fn get(&self, ar: &ApiResource, name: &str) -> Result<Option<Value>, Failure> {
        self.sent();
        let r = self.api(ar).get_opt(name).await;
        self.seen(&r);
        match r {
            Ok(o) => Ok(o.map(|o| serde_json::to_value(o).unwrap_or_default())),
            Err(e) => Err(classify(&e, "get", &Self::resource(ar), self.deadline)),
        }
    }

    /// A list; `Ok(None)` when the resource is not served (404).
    async fn list(&self, ar: &ApiResource, selector: &str) -> Result<Option<Vec<Value>>, Failure> {
        self.sent();
        let mut lp = ListParams::default();
        if !selector.is_empty() {
            lp = lp.labels(selector);
        }
        let r = self.api(ar).list(&lp).await;
        self.seen(&r);
        match r {
            Ok(l) => Ok(Some(
                l.items
                    .into_iter()
                    .map(|o| serde_json::to_value(o).unwrap_or_default())
                    .collect(),
            )),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(None),
            Err(e) => Err(classify(&e, "list", &Self::resource(ar), self.deadline)),
        }
    }

    /// Whether `group_version` serves `resource`.
    async fn served(&self, group_version: &str, resource: &str) -> Result<bool, Failure> {
        self.sent();
        let r = self.client.list_api_group_resources(group_version).await;
        self.seen(&r);
        match r {
            Ok(l) => Ok(l.resources.iter().any(|r| r.name == resource)),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
            Err(e) => Err(classify(&e, "get", group_version, self.deadline)),
        }
    }

    /// Argo CD: a ready address of Service `argocd-server`, from its EndpointSlices, or when it
    /// has none, from its Endpoints.
    async fn argocd_endpoints(&self) -> Result<bool, Failure> {
        let selector = "kubernetes.io/service-name=argocd-server";
        let slice_ar = |v: &str| ar("discovery.k8s.io", v, "EndpointSlice", "endpointslices");
        let mut slices = None;
        if self.slices.load(Ordering::Relaxed) != 2 {
            slices = self.list(&slice_ar("v1"), selector).await?;
            self.slices
                .store(if slices.is_some() { 1 } else { 2 }, Ordering::Relaxed);
        }
        if slices.is_none() {
            slices = self.list(&slice_ar("v1beta1"), selector).await?;
        }
        let slices = slices.unwrap_or_default();
        if !slices.is_empty() {
            return Ok(slices.iter().any(|s| {
                s["endpoints"].as_array().into_iter().flatten().any(|e| {
                    !e["addresses"].as_array().is_none_or(Vec::is_empty)
                        && e["conditions"]["ready"].as_bool() != Some(false)
                })
            }));
        }
        let ep = self
            .get(&ar("", "v1", "Endpoints", "endpoints"), "argocd-server")
            .await?;
        Ok(ep.is_some_and(|ep| {
            ep["subsets"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|s| !s["addresses"].as_array().is_none_or(Vec::is_empty))
        }))
    }
}

/// What one check produced.
#[derive(Debug)]
pub struct CheckResult {
    /// The verdict, or why there is none.
    pub outcome: Result<ClusterCheck, Failure>,
    /// Requests sent.
    pub requests: u64,
    /// The server answered at least one request.
    pub answered: bool,
}

/// Checks `cluster` through `client` for an Integration of type `t` with `cfg`: every read at
/// once, one more (the namespace) only when nothing was found; bounded by `budget` (what is
/// left of the visit's `deadline`, which the messages name).
pub async fn check(
    client: &TargetClient,
    t: Type,
    cfg: &CheckConfig,
    cluster: &str,
    deadline: Duration,
    budget: Duration,
) -> CheckResult {
    let requests = AtomicU64::new(0);
    let answered = std::sync::atomic::AtomicBool::new(false);
    let reader = Reader {
        client: &client.client,
        slices: &client.slices,
        ns: &cfg.namespace,
        deadline,
        requests: &requests,
        answered: &answered,
    };
    let outcome = match tokio::time::timeout(budget, observe(&reader, t, cfg)).await {
        Err(_) => Err(timed_out(deadline)),
        Ok(Err(f)) => Err(f),
        Ok(Ok(o)) => Ok(cluster::evaluate(t, cfg, cluster, &o)),
    };
    CheckResult {
        outcome,
        requests: requests.load(Ordering::Relaxed),
        answered: answered.load(Ordering::Relaxed),
    }
}

async fn observe(r: &Reader<'_>, t: Type, cfg: &CheckConfig) -> Result<Observed, Failure> {
    let fallback = cluster::fallback(t);
    let mut reads = cluster::requests(t, cfg);
    // A fallback read waits for its first read (fewer requests; latency only in that mode).
    reads.retain(|q| fallback.as_ref().is_none_or(|(_, then)| q != then));
    let mut o = Observed::default();
    let results = futures::future::join_all(reads.iter().map(|q| read(r, q, cfg))).await;
    let mut results: Vec<(Request, Result<Read, Failure>)> =
        reads.into_iter().zip(results).collect();
    if let Some((first, then)) = fallback {
        let found = results
            .iter()
            .any(|(q, res)| *q == first && matches!(res, Ok(Read::Object(Some(_)))));
        if !found {
            let res = read(r, &then, cfg).await;
            results.push((then, res));
        }
    }
    for (q, res) in results {
        match (&q, res?) {
            (Request::Get(k, n), Read::Object(v)) => {
                o.named.insert((*k, n.clone()), v);
            }
            (Request::List(k, _), Read::List(v)) => {
                o.listed.insert(*k, v);
            }
            (Request::ArgoCdEndpoints, Read::Ready(b)) => o.endpoints_ready = b,
            (Request::PrometheusApi, Read::Prometheus(p)) => {
                o.prometheus_api = p.api;
                o.prometheuses = p.prometheuses;
                o.alertmanagers = p.alertmanagers;
                for (k, v) in p.workloads {
                    o.listed.insert(k, v);
                }
            }
            _ => {}
        }
    }
    if cluster::nothing_found(t, &o) {
        r.sent();
        let ns = Api::<Namespace>::all(r.client.clone()).get_opt(r.ns).await;
        r.seen(&ns);
        o.namespace_exists = Some(
            ns.map_err(|e| classify(&e, "get", "namespaces", r.deadline))?
                .is_some(),
        );
    }
    Ok(o)
}

#[derive(Debug, Default)]
struct PrometheusRead {
    api: bool,
    prometheuses: Vec<Value>,
    alertmanagers: Vec<Value>,
    workloads: Vec<(Kind, Vec<Value>)>,
}

enum Read {
    Object(Option<Value>),
    List(Vec<Value>),
    Ready(bool),
    Prometheus(PrometheusRead),
}

async fn read(r: &Reader<'_>, q: &Request, cfg: &CheckConfig) -> Result<Read, Failure> {
    Ok(match q {
        Request::Get(k, n) => Read::Object(r.get(&workload_ar(*k), n).await?),
        Request::List(k, sel) => {
            Read::List(r.list(&workload_ar(*k), sel).await?.unwrap_or_default())
        }
        Request::ArgoCdEndpoints => Read::Ready(r.argocd_endpoints().await?),
        Request::PrometheusApi => {
            let mut p = PrometheusRead::default();
            let mon = |kind: &str, plural: &str| ar("monitoring.coreos.com", "v1", kind, plural);
            if r.served("monitoring.coreos.com/v1", "prometheuses").await? {
                p.api = true;
                let (proms, ams, ops) = futures::future::join3(
                    r.list(&mon("Prometheus", "prometheuses"), ""),
                    r.list(&mon("Alertmanager", "alertmanagers"), ""),
                    r.list(&workload_ar(Kind::Deployment), cfg.operator_selector_text()),
                )
                .await;
                p.prometheuses = proms?.unwrap_or_default();
                p.alertmanagers = ams?.unwrap_or_default();
                p.workloads
                    .push((Kind::Deployment, ops?.unwrap_or_default()));
            } else {
                let (sts, deps) = futures::future::join(
                    r.list(&workload_ar(Kind::StatefulSet), &cfg.selector_text),
                    r.list(&workload_ar(Kind::Deployment), &cfg.selector_text),
                )
                .await;
                p.workloads
                    .push((Kind::StatefulSet, sts?.unwrap_or_default()));
                p.workloads
                    .push((Kind::Deployment, deps?.unwrap_or_default()));
            }
            Read::Prometheus(p)
        }
    })
}
