//! Who may report as an agent (00-product.md): a stream carries the agent's projected
//! ServiceAccount token in `authorization: Bearer <token>`. The aggregator
//!
//! 1. validates it with a TokenReview for the `--token-audience` audience
//!    (UNAUTHENTICATED when missing, malformed or not authenticated);
//! 2. requires the agent ServiceAccount's user name (`--agent-service-account`) and a token
//!    bound to a pod (the TokenReview's `authentication.kubernetes.io/pod-name`/`pod-uid`
//!    extras, which projected tokens carry) — PERMISSION_DENIED otherwise;
//! 3. reads that pod and takes its `spec.nodeName` as the only node the stream may report
//!    for (PERMISSION_DENIED for a report about any other node, or a pod that is gone or
//!    replaced).
//!
//! The check runs once per stream, when it opens; agents reconnect with a fresh token.
//!
//! A reconnect storm (2 000 agents after a failover) must not knock the API server over, and
//! nobody may make the aggregator issue API calls without bound:
//!
//! * a result is cached by the SHA-256 of the token (never the token itself) for at most the
//!   token's remaining life and 5 minutes (a refusal of the token itself for 30 s; a refusal
//!   because of its pod's state is not cached), so an agent that reconnects costs no
//!   TokenReview and no pod read;
//! * a token that cannot be an agent's is refused before any API call, from its unverified
//!   claims: it must be a JWT, not expired, for the `--token-audience`, of the agent
//!   ServiceAccount (these checks only ever refuse; the TokenReview does the verifying), so
//!   garbage costs the API server nothing and spends none of the rate below;
//! * at most 16 authentications run at once, each given 10 s; a caller waits at most 5 s for a
//!   slot, and at most 200 new (uncached) authentications start per second (bursts of 500) —
//!   beyond that the stream is refused with UNAVAILABLE, and agents retry with backoff;
//! * the cache holds at most 20 000 entries (expired ones are dropped first; when full, new
//!   results are not cached).

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use tonic::Status;
use tonic::metadata::MetadataMap;

const EXTRA_POD_NAME: &str = "authentication.kubernetes.io/pod-name";
const EXTRA_POD_UID: &str = "authentication.kubernetes.io/pod-uid";

/// The identity of an authenticated agent stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentIdentity {
    /// `namespace/name` of the agent's pod.
    pub pod: String,
    /// The node that pod runs on: the only node this stream may report for.
    pub node: String,
}

/// Why a stream was refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No `authorization: Bearer` metadata.
    #[error("no bearer token: agents authenticate with their projected ServiceAccount token")]
    Missing,
    /// The TokenReview did not authenticate the token.
    #[error("the token was not authenticated: {0}")]
    Invalid(String),
    /// The token belongs to another identity.
    #[error("{user} may not report as an agent (only {expected})")]
    WrongAccount { user: String, expected: String },
    /// The token is not bound to a pod.
    #[error(
        "the token is not bound to a pod; use the projected ServiceAccount token of the agent pod"
    )]
    NotBound,
    /// The token's pod is gone, replaced, or not scheduled.
    #[error("the agent pod {pod} {why}")]
    Pod { pod: String, why: &'static str },
    /// The API could not be asked.
    #[error("validating the token: {0}")]
    Api(#[from] kube::Error),
    /// Too many authentications at once, or the API did not answer in time.
    #[error("too many authentications in progress; retry")]
    Busy,
    /// The same token was refused moments ago.
    #[error("{why} (cached)")]
    Cached {
        /// The refusal's category.
        category: &'static str,
        /// Why.
        why: String,
    },
    /// The caller may not read Diagnostics.
    #[error("{user} may not get diagnostics.fleetmirror.io: {why}")]
    Forbidden {
        /// Who asked.
        user: String,
        /// The SubjectAccessReview's reason, if any.
        why: String,
    },
}

impl AuthError {
    /// A bounded label for metrics.
    pub fn category(&self) -> &'static str {
        match self {
            AuthError::Missing => "unauthenticated_missing",
            AuthError::Invalid(_) => "unauthenticated_invalid",
            AuthError::WrongAccount { .. } => "denied_account",
            AuthError::NotBound => "denied_unbound",
            AuthError::Pod { .. } => "denied_pod",
            AuthError::Api(_) => "auth_api_error",
            AuthError::Busy => "auth_busy",
            AuthError::Cached { category, .. } => category,
            AuthError::Forbidden { .. } => "denied_diagnostics",
        }
    }
}

impl From<AuthError> for Status {
    fn from(e: AuthError) -> Status {
        match e {
            AuthError::Missing | AuthError::Invalid(_) => Status::unauthenticated(e.to_string()),
            AuthError::WrongAccount { .. }
            | AuthError::NotBound
            | AuthError::Pod { .. }
            | AuthError::Forbidden { .. } => Status::permission_denied(e.to_string()),
            AuthError::Cached { category, .. } if category.starts_with("unauthenticated") => {
                Status::unauthenticated(e.to_string())
            }
            AuthError::Cached { .. } => Status::permission_denied(e.to_string()),
            AuthError::Api(_) | AuthError::Busy => Status::unavailable(e.to_string()),
        }
    }
}

const CACHE_MAX: usize = 20_000;
const CACHE_OK_MAX: std::time::Duration = std::time::Duration::from_secs(300);
const CACHE_REFUSED: std::time::Duration = std::time::Duration::from_secs(30);
const CONCURRENT: usize = 16;
const WAIT_FOR_SLOT: std::time::Duration = std::time::Duration::from_secs(5);
const PER_AUTH: std::time::Duration = std::time::Duration::from_secs(10);
const RATE_PER_SEC: f64 = 200.0;
const BURST: f64 = 500.0;

/// A cached check: its result, or why it refused (category, text), and until when.
#[derive(Clone)]
struct Cached<T> {
    result: Result<T, (&'static str, String)>,
    until: std::time::Instant,
}

/// What every token check shares (see the module docs): a cache by the token's SHA-256, a
/// bound on concurrent checks, each with a timeout, and a rate limit on uncached ones.
struct Gate<T> {
    cache: std::sync::Mutex<std::collections::HashMap<[u8; 32], Cached<T>>>,
    slots: tokio::sync::Semaphore,
    bucket: std::sync::Mutex<(f64, std::time::Instant)>,
    max_life: std::time::Duration,
    hits: prometheus_client::metrics::counter::Counter,
}

impl<T: Clone> Gate<T> {
    fn new(
        max_life: std::time::Duration,
        hits: prometheus_client::metrics::counter::Counter,
    ) -> Self {
        Gate {
            cache: Default::default(),
            slots: tokio::sync::Semaphore::new(CONCURRENT),
            bucket: std::sync::Mutex::new((BURST, std::time::Instant::now())),
            max_life,
            hits,
        }
    }

    /// Takes one token of the rate limit for a new check.
    fn admit(&self) -> bool {
        let mut b = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        let tokens = (b.0 + now.duration_since(b.1).as_secs_f64() * RATE_PER_SEC).min(BURST);
        if tokens < 1.0 {
            *b = (tokens, now);
            return false;
        }
        *b = (tokens - 1.0, now);
        true
    }

    /// The cached result for `token`, or `check` run under the bounds and cached.
    async fn check<F>(&self, token: &str, check: F) -> Result<T, AuthError>
    where
        F: std::future::Future<Output = Result<T, AuthError>>,
    {
        use sha2::Digest;
        let key: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        let now = std::time::Instant::now();
        let cached = self
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .filter(|c| c.until > now)
            .cloned();
        if let Some(c) = cached {
            self.hits.inc();
            return c
                .result
                .map_err(|(category, why)| AuthError::Cached { category, why });
        }
        if !self.admit() {
            return Err(AuthError::Busy);
        }
        let _slot = tokio::time::timeout(WAIT_FOR_SLOT, self.slots.acquire())
            .await
            .map_err(|_| AuthError::Busy)?
            .map_err(|_| AuthError::Busy)?;
        let result = tokio::time::timeout(PER_AUTH, check)
            .await
            .unwrap_or(Err(AuthError::Busy));
        let life = match &result {
            Ok(_) => cache_life(token, unix_now(), self.max_life),
            // The API's or the limiter's failures say nothing about the token, and a pod's
            // state can change any moment.
            Err(AuthError::Api(_) | AuthError::Busy | AuthError::Pod { .. }) => {
                std::time::Duration::ZERO
            }
            Err(_) => CACHE_REFUSED,
        };
        if !life.is_zero() {
            let entry = Cached {
                result: result
                    .as_ref()
                    .map(Clone::clone)
                    .map_err(|e| (e.category(), e.to_string())),
                until: now + life,
            };
            let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            if cache.len() >= CACHE_MAX {
                cache.retain(|_, c| c.until > now);
            }
            if cache.len() < CACHE_MAX {
                cache.insert(key, entry);
            }
        }
        result
    }
}

/// The bearer token of a request, if any.
fn bearer(metadata: &MetadataMap) -> Result<&str, AuthError> {
    metadata
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty() && t.len() <= 16 * 1024)
        .ok_or(AuthError::Missing)
}

/// Counts of what authentication cost the API server.
#[derive(Debug, Clone, Default)]
pub struct AuthMetrics {
    /// TokenReviews issued.
    pub token_reviews: prometheus_client::metrics::counter::Counter,
    /// Agent pods read.
    pub pod_reads: prometheus_client::metrics::counter::Counter,
    /// Streams authenticated from the cache.
    pub cache_hits: prometheus_client::metrics::counter::Counter,
}

/// Validates agent tokens.
#[derive(Clone)]
pub struct Authenticator {
    client: kube::Client,
    /// `system:serviceaccount:<ns>:<name>` of the agents.
    pub agent_user: String,
    audience: String,
    gate: std::sync::Arc<Gate<AgentIdentity>>,
    metrics: AuthMetrics,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("agent_user", &self.agent_user)
            .field("audience", &self.audience)
            .finish()
    }
}

/// The claims of a JWT, *not verified*: only used to refuse early and to cache no longer than
/// the token lives (the TokenReview does the verifying). `None` for anything that is not
/// three dot-separated parts with a JSON object in the middle.
fn jwt_claims(token: &str) -> Option<serde_json::Map<String, serde_json::Value>> {
    use base64::Engine;
    let mut parts = token.split('.');
    let (Some(_), Some(payload), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    match serde_json::from_slice::<serde_json::Value>(&bytes).ok()? {
        serde_json::Value::Object(m) => Some(m),
        _ => None,
    }
}

/// The `exp` claim of a JWT (seconds since the epoch), unverified.
fn jwt_expiry(token: &str) -> Option<i64> {
    jwt_claims(token)?.get("exp")?.as_i64()
}

/// Refuses, from its unverified claims, a token that cannot pass the TokenReview: one that
/// has expired, or is not for `audience`, or (when given) not of `subject`. With `require_jwt`
/// a token that is no JWT is refused too (projected ServiceAccount tokens always are). Only
/// ever refuses: a token that passes is still reviewed.
fn prefilter(
    token: &str,
    now: i64,
    audience: Option<&str>,
    subject: Option<&str>,
    require_jwt: bool,
) -> Result<(), AuthError> {
    let refuse = |why: &str| Err(AuthError::Invalid(format!("{why} (checked before review)")));
    let Some(claims) = jwt_claims(token) else {
        return if require_jwt {
            refuse("not a JWT: agents use their projected ServiceAccount token")
        } else {
            Ok(())
        };
    };
    match claims.get("exp").and_then(serde_json::Value::as_i64) {
        Some(exp) if exp <= now => return refuse("the token has expired"),
        None if require_jwt => return refuse("the token has no expiry"),
        _ => {}
    }
    if let Some(audience) = audience {
        let has = match claims.get("aud") {
            Some(serde_json::Value::String(a)) => a == audience,
            Some(serde_json::Value::Array(a)) => a.iter().any(|v| v.as_str() == Some(audience)),
            _ => false,
        };
        if !has {
            return refuse(&format!("the token is not for the audience {audience:?}"));
        }
    }
    if let Some(subject) = subject {
        let sub = claims
            .get("sub")
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default();
        if sub != subject {
            return Err(AuthError::WrongAccount {
                user: sub.chars().take(256).collect(),
                expected: subject.to_owned(),
            });
        }
    }
    Ok(())
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// How long a successful check of `token` may be cached at `now` (unix seconds): at most
/// `max`, and never past the token's expiry (a token that is not a JWT, e.g. a static one,
/// has none).
fn cache_life(token: &str, now: i64, max: std::time::Duration) -> std::time::Duration {
    match jwt_expiry(token) {
        Some(exp) if exp > now => max.min(std::time::Duration::from_secs((exp - now) as u64)),
        Some(_) => std::time::Duration::ZERO,
        None if token.split('.').count() == 3 => std::time::Duration::ZERO,
        None => max,
    }
}

/// One TokenReview of `token` for `audiences` (`None`: the API server's): the user, or
/// UNAUTHENTICATED's reason.
async fn token_review(
    client: &kube::Client,
    metrics: &AuthMetrics,
    token: &str,
    audiences: Option<Vec<String>>,
) -> Result<k8s_openapi::api::authentication::v1::UserInfo, AuthError> {
    let review = TokenReview {
        spec: TokenReviewSpec {
            token: Some(token.to_owned()),
            audiences,
        },
        ..Default::default()
    };
    metrics.token_reviews.inc();
    let status = Api::<TokenReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await?
        .status
        .unwrap_or_default();
    if status.authenticated != Some(true) {
        return Err(AuthError::Invalid(
            status.error.unwrap_or_else(|| "rejected".into()),
        ));
    }
    Ok(status.user.unwrap_or_default())
}

impl Authenticator {
    /// Accepts tokens of `agent_user` issued for `audience`.
    pub fn new(
        client: kube::Client,
        agent_user: String,
        audience: String,
        metrics: AuthMetrics,
    ) -> Self {
        Self {
            client,
            agent_user,
            audience,
            gate: std::sync::Arc::new(Gate::new(CACHE_OK_MAX, metrics.cache_hits.clone())),
            metrics,
        }
    }

    /// Authenticates a stream from its metadata.
    pub async fn authenticate(&self, metadata: &MetadataMap) -> Result<AgentIdentity, AuthError> {
        let token = bearer(metadata)?;
        prefilter(
            token,
            unix_now(),
            Some(&self.audience),
            Some(&self.agent_user),
            true,
        )?;
        self.gate.check(token, self.review(token)).await
    }

    /// One TokenReview, and one read of the pod the token is bound to.
    async fn review(&self, token: &str) -> Result<AgentIdentity, AuthError> {
        let user = token_review(
            &self.client,
            &self.metrics,
            token,
            Some(vec![self.audience.clone()]),
        )
        .await?;
        let username = user.username.unwrap_or_default();
        if username != self.agent_user {
            return Err(AuthError::WrongAccount {
                user: username,
                expected: self.agent_user.clone(),
            });
        }
        let extra = user.extra.unwrap_or_default();
        let one = |k: &str| extra.get(k).and_then(|v| v.first()).cloned();
        let (Some(pod_name), Some(pod_uid)) = (one(EXTRA_POD_NAME), one(EXTRA_POD_UID)) else {
            return Err(AuthError::NotBound);
        };
        // system:serviceaccount:<namespace>:<name>
        let namespace = username.split(':').nth(2).unwrap_or_default().to_owned();
        let pod_ref = format!("{namespace}/{pod_name}");
        self.metrics.pod_reads.inc();
        let pod = Api::<Pod>::namespaced(self.client.clone(), &namespace)
            .get_opt(&pod_name)
            .await?
            .ok_or(AuthError::Pod {
                pod: pod_ref.clone(),
                why: "no longer exists",
            })?;
        if pod.metadata.uid.as_deref() != Some(pod_uid.as_str()) {
            return Err(AuthError::Pod {
                pod: pod_ref,
                why: "was replaced by another pod of the same name",
            });
        }
        let node = pod
            .spec
            .and_then(|s| s.node_name)
            .filter(|n| !n.is_empty())
            .ok_or(AuthError::Pod {
                pod: pod_ref.clone(),
                why: "is not scheduled to a node",
            })?;
        Ok(AgentIdentity { pod: pod_ref, node })
    }
}

/// `--diagnostics-auth=token`: a Diagnostics call must carry a bearer token the API server
/// authenticates for `--diagnostics-token-audience` (TokenReview; by default
/// `fleetmirror-diagnostics`, so a token made for fleetmirror is good for nothing else, and a
/// token made for the API server is not accepted here; empty: the API server's own
/// audiences) of a user allowed to `get`
/// `diagnostics` in the `fleetmirror.io` group (SubjectAccessReview): UNAUTHENTICATED without
/// one, PERMISSION_DENIED when not allowed. Results are cached for a minute under the same
/// bounds as agent authentication; health and reflection stay open (they carry no tenant data).
#[derive(Clone)]
pub struct DiagnosticsAuth {
    client: kube::Client,
    audience: Option<String>,
    gate: std::sync::Arc<Gate<String>>,
    metrics: AuthMetrics,
}

impl std::fmt::Debug for DiagnosticsAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DiagnosticsAuth")
    }
}

impl DiagnosticsAuth {
    /// Checks callers' tokens for `audience` (`None`: the API server's) with `client`.
    pub fn new(client: kube::Client, audience: Option<String>, metrics: AuthMetrics) -> Self {
        Self {
            client,
            audience,
            gate: std::sync::Arc::new(Gate::new(
                std::time::Duration::from_secs(60),
                metrics.cache_hits.clone(),
            )),
            metrics,
        }
    }

    /// The user the request's token belongs to, if they may read Diagnostics.
    pub async fn authorize(&self, metadata: &MetadataMap) -> Result<String, AuthError> {
        let token = bearer(metadata)?;
        prefilter(token, unix_now(), self.audience.as_deref(), None, false)?;
        self.gate.check(token, self.review(token)).await
    }

    async fn review(&self, token: &str) -> Result<String, AuthError> {
        use k8s_openapi::api::authorization::v1::{
            ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
        };
        let user = token_review(
            &self.client,
            &self.metrics,
            token,
            self.audience.clone().map(|a| vec![a]),
        )
        .await?;
        let username = user.username.clone().unwrap_or_default();
        let sar = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: user.username,
                groups: user.groups,
                uid: user.uid,
                extra: user.extra,
                resource_attributes: Some(ResourceAttributes {
                    group: Some("fleetmirror.io".into()),
                    resource: Some("diagnostics".into()),
                    verb: Some("get".into()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let status = Api::<SubjectAccessReview>::all(self.client.clone())
            .create(&PostParams::default(), &sar)
            .await?
            .status
            .unwrap_or_default();
        if !status.allowed || status.denied == Some(true) {
            return Err(AuthError::Forbidden {
                user: username,
                why: status
                    .reason
                    .unwrap_or_else(|| "no RBAC rule allows it".into()),
            });
        }
        Ok(username)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(payload: &str) -> String {
        use base64::Engine;
        let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!("{}.{}.sig", e.encode("{}"), e.encode(payload))
    }

    #[test]
    fn results_are_cached_no_longer_than_the_token_lives_and_five_minutes() {
        let now = 1_000_000;
        let cases = [
            (format!("{{\"exp\":{}}}", now + 3600), 300),
            (format!("{{\"exp\":{}}}", now + 60), 60),
            (format!("{{\"exp\":{}}}", now - 1), 0),
            ("{}".to_owned(), 0),
        ];
        for (payload, secs) in cases {
            assert_eq!(
                cache_life(&jwt(&payload), now, CACHE_OK_MAX).as_secs(),
                secs,
                "{payload}"
            );
        }
        assert_eq!(
            cache_life("a.!!!.c", now, CACHE_OK_MAX).as_secs(),
            0,
            "a JWT without a readable expiry"
        );
        assert_eq!(
            cache_life("static-token", now, std::time::Duration::from_secs(60)).as_secs(),
            60,
            "a token that is not a JWT: the maximum"
        );
    }

    #[test]
    fn tokens_that_cannot_pass_are_refused_before_any_api_call() {
        let now = 1_000_000;
        let agent = "system:serviceaccount:fm:agent";
        let claims = |aud: &str, sub: &str, exp: i64| {
            jwt(&format!(r#"{{"aud":{aud},"sub":"{sub}","exp":{exp}}}"#))
        };
        let check = |t: &str| {
            prefilter(t, now, Some("fleetmirror"), Some(agent), true).map_err(|e| e.to_string())
        };
        assert!(check(&claims(r#"["fleetmirror"]"#, agent, now + 60)).is_ok());
        assert!(check(&claims(r#""fleetmirror""#, agent, now + 60)).is_ok());
        for (token, why) in [
            ("garbage".to_owned(), "not a JWT"),
            ("a.b.c.d".to_owned(), "not a JWT"),
            (jwt("[1]"), "not a JWT"),
            (claims(r#"["fleetmirror"]"#, agent, now), "expired"),
            (
                jwt(&format!(r#"{{"aud":"fleetmirror","sub":"{agent}"}}"#)),
                "no expiry",
            ),
            (
                claims(r#"["https://kubernetes.default.svc"]"#, agent, now + 60),
                "audience",
            ),
            (
                claims(r#"["fleetmirror"]"#, "system:serviceaccount:x:y", now + 60),
                "may not report as an agent",
            ),
        ] {
            let e = check(&token).unwrap_err();
            assert!(e.contains(why), "{token}: {e}");
        }
        // Diagnostics: any kind of token may be a user's; a JWT must still be live and ours.
        assert!(prefilter("static-token", now, Some("d"), None, false).is_ok());
        assert!(
            prefilter(
                &claims(r#""d""#, "alice", now + 1),
                now,
                Some("d"),
                None,
                false
            )
            .is_ok()
        );
        assert!(
            prefilter(
                &claims(r#""x""#, "alice", now + 1),
                now,
                Some("d"),
                None,
                false
            )
            .is_err()
        );
        assert!(prefilter(&claims(r#""x""#, "alice", now + 1), now, None, None, false).is_ok());
    }
}
