//! The aggregator's gRPC server: `fleetmirror.v1.AgentService` (agents' Report streams),
//! `fleetmirror.v1.Diagnostics` (read-only, answered from the [`FleetIndex`]),
//! `grpc.health.v1.Health`, and server reflection v1 and v1alpha (grpcurl 1.8 speaks only
//! v1alpha), so `grpcurl -plaintext HOST:9090 list` works with no .proto files.
//!
//! Bad requests get INVALID_ARGUMENT, unknown objects NOT_FOUND, the methods of a controller
//! `--controllers` did not select FAILED_PRECONDITION; no handler panics or answers UNKNOWN.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use fleetmirror_proto::v1::agent_service_server::{AgentService, AgentServiceServer};
use fleetmirror_proto::v1::diagnostics_client::DiagnosticsClient;
use fleetmirror_proto::v1::diagnostics_server::{Diagnostics, DiagnosticsServer};
use fleetmirror_proto::v1::{
    GetIntegrationRequest, GetMirrorRequest, GetNodeRequest, GetVClusterRequest, IntegrationDetail,
    ListIntegrationsRequest, ListIntegrationsResponse, ListMirrorsRequest, ListMirrorsResponse,
    ListNodesRequest, ListNodesResponse, ListRoutesRequest, ListRoutesResponse,
    ListVClustersRequest, ListVClustersResponse, MirrorSource, NodeDetail, NodeReport, ReportAck,
    VClusterDetail, node_report::Body,
};
use fleetmirror_runtime::admin::ReadyFlag;
use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};

use crate::args::{Controller, PodSource};
use crate::auth::{AgentIdentity, Authenticator, DiagnosticsAuth};
use crate::index::FleetIndex;
use crate::integrations::IntegrationsView;
use crate::leader::Holder;
use crate::metrics::{KindLabel, Metrics};
use crate::mirror::MirrorView;
use crate::platform::Leadership;
use crate::routing::RoutingView;

/// The Diagnostics service.
///
/// A standby replica has no agent reports (agents stream to the leader only), so it never
/// answers from its empty index what only the leader knows — node queries always, vCluster
/// queries unless pod facts come from the API (`--pod-source=api`, where every replica scores
/// from the same watches). It forwards those calls to the leader's address on the Lease (see
/// [`crate::leader::ADDRESS_ANNOTATION`]), once: a forwarded call that reaches a replica which
/// is not the leader (leadership just moved) is refused with UNAVAILABLE, as is any call when
/// the leader advertises no address. So `grpcurl` through the Service gets the leader's
/// answer whichever replica it lands on.
#[derive(Debug, Clone)]
pub struct DiagnosticsService {
    index: Arc<FleetIndex>,
    leadership: Leadership,
    holder: watch::Receiver<Option<Holder>>,
    pod_source: PodSource,
    controllers: BTreeSet<Controller>,
    auth: Option<DiagnosticsAuth>,
    /// With TLS: how to reach the leader (CA and the name in its certificate).
    forward_tls: Option<tonic::transport::ClientTlsConfig>,
    /// The channel to the leader, by address (connected lazily, reused).
    channel: Arc<std::sync::Mutex<Option<(SocketAddr, Channel)>>>,
    /// The mirror controller's latest pass (the leader's).
    mirror: Arc<MirrorView>,
    /// The routing controller's latest pass (this replica's).
    routing: Arc<RoutingView>,
    integrations: Arc<IntegrationsView>,
}

/// Metadata on a call a standby forwarded.
const FORWARDED: &str = "fleetmirror-forwarded-by";

/// Metadata on a standby's refusal of an agent stream: the leader's `ip:port`, when known.
pub const LEADER_ADDRESS: &str = "fleetmirror-leader-address";

/// Who answers a Diagnostics call.
enum Route<T> {
    /// This replica.
    Here(Request<T>),
    /// The leader, through this client, with this (marked) request.
    Leader(Leader, Request<T>),
}

/// A client for the leader's Diagnostics.
struct Leader {
    client: DiagnosticsClient<Channel>,
    address: SocketAddr,
}

impl Leader {
    /// The leader's own answers pass through as they are; not reaching it (timeout, transport
    /// error) is UNAVAILABLE, never UNKNOWN or CANCELLED.
    fn error(&self, s: Status) -> Status {
        match s.code() {
            tonic::Code::Unknown | tonic::Code::Cancelled | tonic::Code::DeadlineExceeded => {
                Status::unavailable(format!(
                    "the leader at {} did not answer: {}",
                    self.address,
                    s.message()
                ))
            }
            _ => s,
        }
    }
}

impl DiagnosticsService {
    #[allow(clippy::too_many_arguments)]
    fn new(
        index: Arc<FleetIndex>,
        leadership: Leadership,
        holder: watch::Receiver<Option<Holder>>,
        pod_source: PodSource,
        controllers: BTreeSet<Controller>,
        auth: Option<DiagnosticsAuth>,
        forward_tls: Option<tonic::transport::ClientTlsConfig>,
        mirror: Arc<MirrorView>,
        routing: Arc<RoutingView>,
        integrations: Arc<IntegrationsView>,
    ) -> Self {
        Self {
            index,
            leadership,
            holder,
            pod_source,
            controllers,
            auth,
            forward_tls,
            channel: Default::default(),
            mirror,
            routing,
            integrations,
        }
    }

    /// With `--diagnostics-auth=token`: the caller's token must be allowed to read Diagnostics.
    async fn authorize<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let Some(auth) = &self.auth else {
            return Ok(());
        };
        auth.authorize(request.metadata())
            .await
            .map(drop)
            .map_err(|e| {
                tracing::debug!(reason = %e, "Diagnostics call refused");
                Status::from(e)
            })
    }

    /// FAILED_PRECONDITION unless `controller` runs here (`--controllers`).
    fn require(&self, controller: Controller) -> Result<(), Status> {
        if self.controllers.contains(&controller) && controller.built() {
            return Ok(());
        }
        Err(Status::failed_precondition(format!(
            "the {} controller is not running on this aggregator (--controllers={})",
            controller.as_str(),
            self.controllers
                .iter()
                .map(|c| c.as_str())
                .collect::<Vec<_>>()
                .join(",")
        )))
    }

    /// Who answers `request` (`nodes`: what only the leader knows — agent reports, mirror
    /// passes), or why nobody can.
    fn route<T>(&self, request: Request<T>, nodes: bool) -> Result<Route<T>, Status> {
        if self.leadership.is_leader() || (!nodes && self.pod_source == PodSource::Api) {
            return Ok(Route::Here(request));
        }
        let holder = self.holder.borrow().clone();
        let who = holder
            .as_ref()
            .map(|h| h.identity.as_str())
            .filter(|i| !i.is_empty())
            .unwrap_or("unknown yet");
        if request.metadata().contains_key(FORWARDED) {
            return Err(Status::unavailable(format!(
                "forwarded to a replica that does not lead (leader: {who}); leadership is \
                 moving, retry"
            )));
        }
        let Some(address) = holder.as_ref().and_then(|h| h.address) else {
            return Err(Status::unavailable(format!(
                "this aggregator replica is a standby and has no agent reports, and the leader \
                 ({who}, Lease {}) advertises no address (--pod-ip); ask the leader",
                crate::leader::LEASE_NAME
            )));
        };
        let channel = {
            let mut cached = self.channel.lock().unwrap_or_else(|p| p.into_inner());
            match cached.as_ref() {
                Some((a, c)) if *a == address => c.clone(),
                _ => {
                    let scheme = if self.forward_tls.is_some() {
                        "https"
                    } else {
                        "http"
                    };
                    let mut endpoint =
                        tonic::transport::Endpoint::from_shared(format!("{scheme}://{address}"))
                            .map_err(|e| {
                                Status::internal(format!("leader address {address}: {e}"))
                            })?
                            .connect_timeout(std::time::Duration::from_secs(2))
                            .timeout(std::time::Duration::from_secs(10));
                    if let Some(tls) = &self.forward_tls {
                        endpoint = endpoint.tls_config(tls.clone()).map_err(|e| {
                            Status::internal(format!("TLS to the leader at {address}: {e}"))
                        })?;
                    }
                    let c = endpoint.connect_lazy();
                    *cached = Some((address, c.clone()));
                    c
                }
            }
        };
        // The leader checks the caller again: the caller's credentials go along.
        let authorization = request.metadata().get("authorization").cloned();
        let mut forwarded = Request::new(request.into_inner());
        if let Some(a) = authorization {
            forwarded.metadata_mut().insert("authorization", a);
        }
        forwarded.metadata_mut().insert(
            FORWARDED,
            tonic::metadata::MetadataValue::from_static("standby"),
        );
        Ok(Route::Leader(
            Leader {
                client: DiagnosticsClient::new(channel),
                address,
            },
            forwarded,
        ))
    }
}

fn require<'a>(field: &str, value: &'a str) -> Result<&'a str, Status> {
    if value.is_empty() {
        return Err(Status::invalid_argument(format!("{field} is required")));
    }
    if value.len() > 253 {
        return Err(Status::invalid_argument(format!(
            "{field} is longer than 253 characters"
        )));
    }
    Ok(value)
}

fn require_label<'a>(field: &str, value: &'a str) -> Result<&'a str, Status> {
    require(field, value)?;
    fleetmirror_core::naming::validate_dns1123_label(value)
        .map_err(|e| Status::invalid_argument(format!("{field} {value:?} {e}")))?;
    Ok(value)
}

#[tonic::async_trait]
impl Diagnostics for DiagnosticsService {
    async fn list_v_clusters(
        &self,
        request: Request<ListVClustersRequest>,
    ) -> Result<Response<ListVClustersResponse>, Status> {
        self.authorize(&request).await?;
        self.require(Controller::Health)?;
        let request = match self.route(request, false)? {
            Route::Here(r) => r,
            Route::Leader(mut leader, r) => {
                return leader
                    .client
                    .list_v_clusters(r)
                    .await
                    .map_err(|e| leader.error(e));
            }
        };
        let ns = request.into_inner().namespace;
        if !ns.is_empty() {
            require_label("namespace", &ns)?;
        }
        let filter = (!ns.is_empty()).then_some(ns.as_str());
        Ok(Response::new(ListVClustersResponse {
            vclusters: self.index.list_vclusters(filter),
        }))
    }

    async fn get_v_cluster(
        &self,
        request: Request<GetVClusterRequest>,
    ) -> Result<Response<VClusterDetail>, Status> {
        self.authorize(&request).await?;
        self.require(Controller::Health)?;
        let request = match self.route(request, false)? {
            Route::Here(r) => r,
            Route::Leader(mut leader, r) => {
                return leader
                    .client
                    .get_v_cluster(r)
                    .await
                    .map_err(|e| leader.error(e));
            }
        };
        let r = request.into_inner();
        let ns = require_label("namespace", &r.namespace)?;
        let name = require_label("name", &r.name)?;
        self.index
            .get_vcluster(ns, name, Instant::now())
            .map(Response::new)
            .ok_or_else(|| Status::not_found(format!("no vCluster {name} in namespace {ns}")))
    }

    async fn list_nodes(
        &self,
        request: Request<ListNodesRequest>,
    ) -> Result<Response<ListNodesResponse>, Status> {
        self.authorize(&request).await?;
        if let Route::Leader(mut leader, r) = self.route(request, true)? {
            return leader
                .client
                .list_nodes(r)
                .await
                .map_err(|e| leader.error(e));
        }
        Ok(Response::new(ListNodesResponse {
            nodes: self.index.list_nodes(Instant::now()),
        }))
    }

    async fn get_node(
        &self,
        request: Request<GetNodeRequest>,
    ) -> Result<Response<NodeDetail>, Status> {
        self.authorize(&request).await?;
        let request = match self.route(request, true)? {
            Route::Here(r) => r,
            Route::Leader(mut leader, r) => {
                return leader.client.get_node(r).await.map_err(|e| leader.error(e));
            }
        };
        let r = request.into_inner();
        let name = require("name", &r.name)?;
        self.index
            .get_node(name, Instant::now())
            .map(Response::new)
            .ok_or_else(|| Status::not_found(format!("no agent has reported for node {name}")))
    }

    async fn list_mirrors(
        &self,
        request: Request<ListMirrorsRequest>,
    ) -> Result<Response<ListMirrorsResponse>, Status> {
        self.authorize(&request).await?;
        self.require(Controller::Mirror)?;
        let request = match self.route(request, true)? {
            Route::Here(r) => r,
            Route::Leader(mut leader, r) => {
                return leader
                    .client
                    .list_mirrors(r)
                    .await
                    .map_err(|e| leader.error(e));
            }
        };
        let r = request.into_inner();
        if !r.namespace.is_empty() {
            require_label("namespace", &r.namespace)?;
        }
        if !r.kind.is_empty() {
            require_kind(&r.kind)?;
        }
        let (sources, kinds) = self.mirror.list(&r.namespace, &r.kind);
        Ok(Response::new(ListMirrorsResponse { sources, kinds }))
    }

    async fn list_routes(
        &self,
        request: Request<ListRoutesRequest>,
    ) -> Result<Response<ListRoutesResponse>, Status> {
        self.authorize(&request).await?;
        self.require(Controller::Routing)?;
        // Every replica watches and plans: answered here.
        let r = request.into_inner();
        if !r.namespace.is_empty() {
            require_label("namespace", &r.namespace)?;
        }
        if !r.service.is_empty() {
            require_label("service", &r.service)?;
        }
        let (configs, services, api_version) = self.routing.list(&r.namespace, &r.service);
        Ok(Response::new(ListRoutesResponse {
            configs,
            services,
            api_version,
        }))
    }

    async fn list_integrations(
        &self,
        request: Request<ListIntegrationsRequest>,
    ) -> Result<Response<ListIntegrationsResponse>, Status> {
        self.authorize(&request).await?;
        self.require(Controller::Integrations)?;
        // Only the leader contacts targets: a standby forwards.
        let request = match self.route(request, true)? {
            Route::Here(r) => r,
            Route::Leader(mut leader, r) => {
                return leader
                    .client
                    .list_integrations(r)
                    .await
                    .map_err(|e| leader.error(e));
            }
        };
        let r = request.into_inner();
        if !r.namespace.is_empty() {
            require_label("namespace", &r.namespace)?;
        }
        Ok(Response::new(ListIntegrationsResponse {
            integrations: self.integrations.list(&r.namespace),
        }))
    }

    async fn get_integration(
        &self,
        request: Request<GetIntegrationRequest>,
    ) -> Result<Response<IntegrationDetail>, Status> {
        self.authorize(&request).await?;
        self.require(Controller::Integrations)?;
        let request = match self.route(request, true)? {
            Route::Here(r) => r,
            Route::Leader(mut leader, r) => {
                return leader
                    .client
                    .get_integration(r)
                    .await
                    .map_err(|e| leader.error(e));
            }
        };
        let r = request.into_inner();
        let namespace = require_label("namespace", &r.namespace)?;
        let name = require("name", &r.name)?;
        fleetmirror_core::naming::validate_dns1123_subdomain(name)
            .map_err(|e| Status::invalid_argument(format!("name {name:?} {e}")))?;
        self.integrations
            .get(namespace, name)
            .map(Response::new)
            .ok_or_else(|| {
                Status::not_found(format!("no Integration {name} in namespace {namespace}"))
            })
    }

    async fn get_mirror(
        &self,
        request: Request<GetMirrorRequest>,
    ) -> Result<Response<MirrorSource>, Status> {
        self.authorize(&request).await?;
        self.require(Controller::Mirror)?;
        let request = match self.route(request, true)? {
            Route::Here(r) => r,
            Route::Leader(mut leader, r) => {
                return leader
                    .client
                    .get_mirror(r)
                    .await
                    .map_err(|e| leader.error(e));
            }
        };
        let r = request.into_inner();
        let kind = require_kind(&r.kind)?;
        let namespace = require_label("namespace", &r.namespace)?;
        let name = require("name", &r.name)?;
        fleetmirror_core::naming::validate_dns1123_subdomain(name)
            .map_err(|e| Status::invalid_argument(format!("name {name:?} {e}")))?;
        let groups = self.mirror.groups_of(kind);
        let group = if !r.group.is_empty() || groups.iter().any(String::is_empty) {
            r.group.clone()
        } else {
            match groups.as_slice() {
                [one] => one.clone(),
                [] => String::new(),
                many => {
                    return Err(Status::invalid_argument(format!(
                        "kind {kind} is ambiguous: set group to one of {}",
                        many.join(", ")
                    )));
                }
            }
        };
        self.mirror
            .get(&group, kind, namespace, name)
            .map(Response::new)
            .ok_or_else(|| {
                let what = if group.is_empty() {
                    kind.to_owned()
                } else {
                    format!("{kind}.{group}")
                };
                Status::not_found(format!("{what} {namespace}/{name} is not a mirror source"))
            })
    }
}

/// A kind name: `Secret`, `Middleware` (an identifier of at most 63 characters).
fn require_kind(kind: &str) -> Result<&str, Status> {
    require("kind", kind)?;
    if kind.len() > 63
        || !kind.starts_with(|c: char| c.is_ascii_alphabetic())
        || !kind.chars().all(|c| c.is_ascii_alphanumeric())
    {
        return Err(Status::invalid_argument(format!(
            "kind {kind:?} is not a kind name (e.g. Secret, ConfigMap)"
        )));
    }
    Ok(kind)
}

/// The AgentService: one Report stream per agent.
#[derive(Debug, Clone)]
pub struct AgentReportService {
    auth: Authenticator,
    index: Arc<FleetIndex>,
    leadership: Leadership,
    holder: watch::Receiver<Option<Holder>>,
    metrics: Metrics,
    shutdown: CancellationToken,
}

type AckStream = Pin<Box<dyn Stream<Item = Result<ReportAck, Status>> + Send>>;

#[tonic::async_trait]
impl AgentService for AgentReportService {
    type ReportStream = AckStream;

    async fn report(
        &self,
        request: Request<Streaming<NodeReport>>,
    ) -> Result<Response<AckStream>, Status> {
        let Some(term) = self.leadership.term() else {
            self.metrics.reject("not_leader");
            // Tell the agent where the leader is, so its next attempt goes straight there.
            let mut metadata = tonic::metadata::MetadataMap::new();
            let address = self.holder.borrow().as_ref().and_then(|h| h.address);
            if let Some(a) = address
                && let Ok(v) = a.to_string().parse()
            {
                metadata.insert(LEADER_ADDRESS, v);
            }
            return Err(Status::with_metadata(
                tonic::Code::Unavailable,
                "this aggregator replica is not the leader; reconnect",
                metadata,
            ));
        };
        let identity = match self.auth.authenticate(request.metadata()).await {
            Ok(identity) => identity,
            Err(e) => {
                self.metrics.reject(e.category());
                tracing::warn!(peer = ?request.remote_addr(), reason = %e, "agent stream refused");
                return Err(e.into());
            }
        };
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let this = self.clone();
        tokio::spawn(async move {
            let session = this.index.open_session();
            this.metrics.agent_streams.inc();
            let end = loop {
                tokio::select! {
                    msg = inbound.message() => match msg {
                        Ok(Some(report)) => {
                            if let Err(status) = this.handle(session, &identity, report, &tx).await {
                                break Some(status);
                            }
                        }
                        Ok(None) => break None,
                        Err(status) => {
                            tracing::debug!(%status, "agent stream broke");
                            break None;
                        }
                    },
                    _ = term.lost() => {
                        break Some(Status::unavailable("this aggregator replica lost leadership; reconnect"));
                    }
                    _ = this.shutdown.cancelled() => {
                        break Some(Status::unavailable("the aggregator is shutting down; reconnect"));
                    }
                }
            };
            if let Some(node) = this.index.session_node(session) {
                tracing::info!(node, "agent stream ended");
            }
            if let Some(status) = end {
                let _ = tx.send(Err(status)).await;
            }
            this.index.close_session(session);
            this.metrics.agent_streams.dec();
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

impl AgentReportService {
    /// Applies one report and acks it. `Err` ends the stream with that status.
    async fn handle(
        &self,
        session: crate::index::SessionId,
        identity: &AgentIdentity,
        report: NodeReport,
        tx: &mpsc::Sender<Result<ReportAck, Status>>,
    ) -> Result<(), Status> {
        if report.node_name != identity.node {
            self.metrics.reject("denied_node");
            let msg = format!(
                "agent pod {} runs on node {}; it may not report for node {:?}",
                identity.pod, identity.node, report.node_name
            );
            tracing::warn!(reason = %msg, "agent report refused");
            return Err(Status::permission_denied(msg));
        }
        let sequence = report.sequence;
        let node = report.node_name.clone();
        let kind = match report.body {
            Some(Body::Snapshot(_)) => "snapshot",
            _ => "delta",
        };
        let ack = match self.index.apply(session, report, Instant::now()) {
            Ok(()) => {
                self.metrics
                    .reports
                    .get_or_create(&KindLabel { kind })
                    .inc();
                if kind == "snapshot" {
                    tracing::info!(node, sequence, "agent snapshot applied");
                }
                ReportAck {
                    sequence,
                    ..Default::default()
                }
            }
            Err(e) if e.needs_resync() => {
                self.metrics.resyncs.inc();
                tracing::info!(node, sequence, reason = %e, "asking agent for a snapshot");
                ReportAck {
                    sequence,
                    resync_required: true,
                    message: e.to_string(),
                }
            }
            Err(e) => {
                self.metrics.reject(e.category());
                tracing::warn!(node, sequence, reason = %e, "agent report refused; ending its stream");
                return Err(match e {
                    crate::index::ApplyError::Superseded { .. } => Status::aborted(e.to_string()),
                    _ => Status::invalid_argument(e.to_string()),
                });
            }
        };
        tx.send(Ok(ack))
            .await
            .map_err(|_| Status::cancelled("agent went away"))
    }
}

/// Everything the gRPC server needs.
#[derive(Debug)]
pub struct GrpcServer {
    /// Validates agent tokens.
    pub auth: Authenticator,
    /// Listen address.
    pub addr: SocketAddr,
    /// The shared index.
    pub index: Arc<FleetIndex>,
    /// Whether this replica leads.
    pub leadership: Leadership,
    /// Who else leads (where a standby forwards Diagnostics).
    pub holder: watch::Receiver<Option<Holder>>,
    /// Where pod facts come from (what a standby can answer).
    pub pod_source: PodSource,
    /// The controllers running here (`--controllers`).
    pub controllers: BTreeSet<Controller>,
    /// `--diagnostics-auth=token`: who may call Diagnostics.
    pub diagnostics_auth: Option<DiagnosticsAuth>,
    /// Serve TLS with this identity (`--grpc-tls-cert`/`--grpc-tls-key`), and reach the leader
    /// with this client configuration.
    pub tls: Option<(
        tonic::transport::Identity,
        tonic::transport::ClientTlsConfig,
    )>,
    /// Metrics.
    pub metrics: Metrics,
    /// Marked ready once the port is bound.
    pub ready: ReadyFlag,
    /// The mirror controller's view (empty unless it runs).
    pub mirror: Arc<MirrorView>,
    /// The routing controller's view (empty unless it runs).
    pub routing: Arc<RoutingView>,
    /// The integrations controller's view (the leader's; empty unless it runs).
    pub integrations: Arc<IntegrationsView>,
}

impl GrpcServer {
    /// Serves until `shutdown` is cancelled.
    pub async fn serve(
        self,
        shutdown: CancellationToken,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let (health, health_service) = tonic_health::server::health_reporter();
        health
            .set_serving::<DiagnosticsServer<DiagnosticsService>>()
            .await;
        health
            .set_serving::<AgentServiceServer<AgentReportService>>()
            .await;
        let reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(fleetmirror_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()?;
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(fleetmirror_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()?;

        let listener = tokio::net::TcpListener::bind(self.addr).await?;
        tracing::info!(addr = %listener.local_addr()?, "gRPC server listening");
        self.ready.set(true);
        let diagnostics = DiagnosticsService::new(
            self.index.clone(),
            self.leadership.clone(),
            self.holder.clone(),
            self.pod_source,
            self.controllers,
            self.diagnostics_auth,
            self.tls.as_ref().map(|(_, client)| client.clone()),
            self.mirror.clone(),
            self.routing.clone(),
            self.integrations.clone(),
        );
        let agents = AgentReportService {
            auth: self.auth,
            index: self.index,
            leadership: self.leadership,
            holder: self.holder,
            metrics: self.metrics,
            shutdown: shutdown.clone(),
        };
        let mut builder = tonic::transport::Server::builder();
        if let Some((identity, _)) = self.tls {
            builder =
                builder.tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))?;
        }
        let result = builder
            .http2_keepalive_interval(Some(std::time::Duration::from_secs(20)))
            .http2_keepalive_timeout(Some(std::time::Duration::from_secs(10)))
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(DiagnosticsServer::new(diagnostics))
            .add_service(AgentServiceServer::new(agents))
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), {
                let health = health.clone();
                async move {
                    shutdown.cancelled().await;
                    health
                        .set_not_serving::<DiagnosticsServer<DiagnosticsService>>()
                        .await;
                }
            })
            .await;
        result.map_err(Into::into)
    }
}
