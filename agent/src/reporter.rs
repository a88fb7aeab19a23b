//! The agent's side of `AgentService/Report`: one long-lived stream to the aggregator.
//!
//! * Every (re)connect opens a new stream whose first message is a full snapshot (sequence 1);
//!   later messages are deltas computed from the last state sent, sequence + 1 each.
//! * An ack with `resync_required` (a gap, or an aggregator that restarted and lost the node)
//!   is answered with a snapshot on the same stream.
//! * An idle stream carries an empty delta every heartbeat interval.
//! * Any error ends the stream; the agent reconnects with jittered exponential backoff
//!   (0.5 s doubling to 30 s, reset after an acked snapshot). Mounting never waits for this.
//! * The projected ServiceAccount token is re-read on every connect (kubelet rotates it).

use std::path::PathBuf;
use std::time::Duration;

use fleetmirror_proto::v1::agent_service_client::AgentServiceClient;
use fleetmirror_proto::v1::{NodeDelta, NodeReport, node_report::Body};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Endpoint;

use crate::metrics::Metrics;
use crate::state::NodeState;

/// Why a Report stream ended.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The aggregator address is not a valid URI.
    #[error("invalid --aggregator-addr {addr:?}: {source}")]
    Address {
        addr: String,
        source: tonic::transport::Error,
    },
    /// Connecting failed.
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: String,
        source: tonic::transport::Error,
    },
    /// The token file exists but could not be read, or is not a valid header value.
    #[error("reading token {path}: {reason}")]
    Token { path: String, reason: String },
    /// The aggregator refused or ended the stream.
    #[error("aggregator: {0}")]
    Status(#[from] tonic::Status),
    /// The aggregator closed the stream.
    #[error("aggregator closed the stream")]
    Closed,
    /// The aggregator did not answer the stream's opening in time.
    #[error("the aggregator did not accept the stream within {0:?}")]
    SetupTimeout(Duration),
}

impl ReportError {
    /// A bounded label for metrics.
    pub fn category(&self) -> &'static str {
        match self {
            ReportError::Address { .. } => "address",
            ReportError::Connect { .. } => "connect",
            ReportError::Token { .. } => "token",
            ReportError::Status(s) => match s.code() {
                tonic::Code::Unauthenticated => "unauthenticated",
                tonic::Code::PermissionDenied => "permission_denied",
                tonic::Code::Unavailable => "unavailable",
                _ => "status",
            },
            ReportError::Closed => "closed",
            ReportError::SetupTimeout(_) => "setup_timeout",
        }
    }

    /// The leader's address, when a standby aggregator refused the stream and named it
    /// (metadata `fleetmirror-leader-address`, an `ip:port`; anything else is ignored).
    pub fn leader_address(&self) -> Option<std::net::SocketAddr> {
        let ReportError::Status(s) = self else {
            return None;
        };
        if s.code() != tonic::Code::Unavailable {
            return None;
        }
        s.metadata()
            .get("fleetmirror-leader-address")?
            .to_str()
            .ok()?
            .parse()
            .ok()
    }
}

/// Streams the node's state to the aggregator until shutdown. A standby aggregator refuses the
/// stream naming the leader's address; the next attempt goes there directly (once), so agents
/// do not depend on the Service picking the leader by chance.
#[derive(Debug)]
pub struct Reporter {
    /// Aggregator URI, e.g. `http://fleetmirror-aggregator.fleetmirror-system.svc:9090`.
    pub addr: String,
    /// This node.
    pub node_name: String,
    /// Projected ServiceAccount token file.
    pub token_path: PathBuf,
    /// Heartbeat interval of an idle stream.
    pub heartbeat: Duration,
    /// The node reconciler's published state (`None` until its first pass).
    pub state: watch::Receiver<Option<NodeState>>,
    /// Metrics.
    pub metrics: Metrics,
    /// With an `https://` address: how the aggregator's certificate is verified.
    pub tls: Option<tonic::transport::ClientTlsConfig>,
}

/// How long opening a stream (connect aside) may take.
const SETUP_TIMEOUT: Duration = Duration::from_secs(20);
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

impl Reporter {
    /// Keeps a stream open, reconnecting with backoff, until `shutdown` is cancelled.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut backoff = BACKOFF_MIN;
        // Where a standby said the leader is: tried once, on the next attempt, at once.
        let mut redirect: Option<String> = None;
        loop {
            let mut acked = false;
            // A redirect is followed once: never from one redirect to the next (no ping-pong
            // while leadership moves), so a second refusal backs off and retries the Service.
            let following = redirect.is_some();
            let addr = redirect.take().unwrap_or_else(|| self.addr.clone());
            let result = tokio::select! {
                r = self.session(&addr, &mut acked) => r,
                _ = shutdown.cancelled() => return,
            };
            self.metrics.connected.set(0);
            if acked {
                backoff = BACKOFF_MIN;
            }
            if let Err(error) = result {
                self.metrics.stream_error(error.category());
                if let Some(leader) = error.leader_address().filter(|_| !following) {
                    tracing::info!(%addr, %leader, "reached a standby aggregator; connecting to the leader");
                    let scheme = if self.tls.is_some() { "https" } else { "http" };
                    redirect = Some(format!("{scheme}://{leader}"));
                    self.metrics.reconnects.inc();
                    continue;
                }
                tracing::warn!(%addr, %error, retry_in = ?backoff, "report stream to the aggregator ended");
            }
            self.metrics.reconnects.inc();
            // Full jitter over [backoff/2, backoff], so agents of a whole fleet do not reconnect
            // in lockstep after an aggregator restart.
            let wait = backoff.mul_f64(0.5 + rand::random::<f64>() / 2.0);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.cancelled() => return,
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    async fn token(
        &self,
    ) -> Result<Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>, ReportError> {
        let path = self.token_path.display().to_string();
        match tokio::fs::read_to_string(&self.token_path).await {
            Ok(token) => format!("Bearer {}", token.trim())
                .parse()
                .map(Some)
                .map_err(|_| ReportError::Token {
                    path,
                    reason: "not a valid header value".into(),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(ReportError::Token {
                path,
                reason: e.to_string(),
            }),
        }
    }

    fn message(&self, sequence: u64, body: Body) -> NodeReport {
        NodeReport {
            node_name: self.node_name.clone(),
            agent_version: env!("CARGO_PKG_VERSION").into(),
            sequence,
            body: Some(body),
        }
    }

    /// One stream, from connect to its end. Sets `acked` once the aggregator acked a snapshot.
    async fn session(&mut self, addr: &str, acked: &mut bool) -> Result<(), ReportError> {
        let addr = addr.to_owned();
        let endpoint = Endpoint::from_shared(addr.clone())
            .map_err(|source| ReportError::Address {
                addr: addr.clone(),
                source,
            })?
            .connect_timeout(Duration::from_secs(5))
            .tcp_keepalive(Some(Duration::from_secs(30)))
            .http2_keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(10));
        let endpoint = match &self.tls {
            Some(tls) => {
                endpoint
                    .tls_config(tls.clone())
                    .map_err(|source| ReportError::Connect {
                        addr: addr.clone(),
                        source,
                    })?
            }
            None => endpoint,
        };
        let channel = endpoint
            .connect()
            .await
            .map_err(|source| ReportError::Connect {
                addr: addr.clone(),
                source,
            })?;
        let mut client = AgentServiceClient::new(channel);

        let (tx, rx) = mpsc::channel::<NodeReport>(16);
        // No snapshot before the first real pass: an empty one would tell the aggregator the
        // node has no pods, and health would flap on every agent restart.
        let Ok(first) = self
            .state
            .wait_for(Option::is_some)
            .await
            .map(|s| s.clone())
        else {
            return Ok(());
        };
        let mut sent = first.unwrap_or_default();
        let mut sequence = 1;
        // The receiver is alive: it is moved into the request below.
        let _ = tx.try_send(self.message(sequence, Body::Snapshot(sent.snapshot())));
        self.metrics.sent("snapshot");
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        if let Some(token) = self.token().await? {
            request.metadata_mut().insert("authorization", token);
        }
        // The aggregator authenticates the stream before it answers; one that never answers
        // (overloaded, or a black hole) must not hold the agent: give up and reconnect.
        let mut acks = tokio::time::timeout(SETUP_TIMEOUT, client.report(request))
            .await
            .map_err(|_| ReportError::SetupTimeout(SETUP_TIMEOUT))??
            .into_inner();
        tracing::info!(%addr, pods = sent.pods.len(), "report stream open; snapshot sent");
        self.metrics.connected.set(1);
        let mut heartbeat =
            tokio::time::interval_at(tokio::time::Instant::now() + self.heartbeat, self.heartbeat);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

        loop {
            let next = tokio::select! {
                ack = acks.message() => {
                    let ack = ack?.ok_or(ReportError::Closed)?;
                    if ack.resync_required {
                        tracing::info!(reason = %ack.message, "aggregator asked for a snapshot");
                        sent = self.state.borrow_and_update().clone().unwrap_or_default();
                        Some(Body::Snapshot(sent.snapshot()))
                    } else {
                        *acked = true;
                        None
                    }
                }
                changed = self.state.changed() => {
                    if changed.is_err() {
                        // The reconciler is gone: the process is shutting down.
                        return Ok(());
                    }
                    let current = self.state.borrow_and_update().clone().unwrap_or_default();
                    let delta = sent.delta_to(&current);
                    sent = current;
                    delta.map(Body::Delta)
                }
                _ = heartbeat.tick() => Some(Body::Delta(NodeDelta::default())),
            };
            if let Some(body) = next {
                sequence += 1;
                let kind = if matches!(body, Body::Snapshot(_)) {
                    "snapshot"
                } else {
                    "delta"
                };
                if tx.send(self.message(sequence, body)).await.is_err() {
                    return Err(ReportError::Closed);
                }
                self.metrics.sent(kind);
                heartbeat.reset();
            }
        }
    }
}
