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
        }
    }
}

impl From<AuthError> for Status {
    fn from(e: AuthError) -> Status {
        match e {
            AuthError::Missing | AuthError::Invalid(_) => Status::unauthenticated(e.to_string()),
            AuthError::WrongAccount { .. } | AuthError::NotBound | AuthError::Pod { .. } => {
                Status::permission_denied(e.to_string())
            }
            AuthError::Api(_) => Status::unavailable(e.to_string()),
        }
    }
}

/// Validates agent tokens.
#[derive(Clone)]
pub struct Authenticator {
    client: kube::Client,
    /// `system:serviceaccount:<ns>:<name>` of the agents.
    pub agent_user: String,
    audience: String,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("agent_user", &self.agent_user)
            .field("audience", &self.audience)
            .finish()
    }
}

impl Authenticator {
    /// Accepts tokens of `agent_user` issued for `audience`.
    pub fn new(client: kube::Client, agent_user: String, audience: String) -> Self {
        Self {
            client,
            agent_user,
            audience,
        }
    }

    /// Authenticates a stream from its metadata.
    pub async fn authenticate(&self, metadata: &MetadataMap) -> Result<AgentIdentity, AuthError> {
        let token = metadata
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty() && t.len() <= 16 * 1024)
            .ok_or(AuthError::Missing)?;
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: Some(vec![self.audience.clone()]),
            },
            ..Default::default()
        };
        let status = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await?
            .status
            .unwrap_or_default();
        if status.authenticated != Some(true) {
            return Err(AuthError::Invalid(
                status.error.unwrap_or_else(|| "rejected".into()),
            ));
        }
        let user = status.user.unwrap_or_default();
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
