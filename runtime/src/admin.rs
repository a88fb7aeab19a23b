//! The admin HTTP server (aggregator `:8080`, agent `:8081`): `/metrics` in OpenMetrics text
//! format, `/livez` (the process serves HTTP) and `/readyz` (every registered readiness check
//! passes). `/readyz?verbose` lists the checks, like kube-apiserver's.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

/// Named readiness checks; the process is ready when all of them are.
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    checks: Arc<Mutex<BTreeMap<&'static str, bool>>>,
}

/// One readiness check, registered not ready.
#[derive(Debug, Clone)]
pub struct ReadyFlag {
    name: &'static str,
    checks: Arc<Mutex<BTreeMap<&'static str, bool>>>,
}

impl Readiness {
    /// Registers a check named `name` (shown by `/readyz?verbose`), initially not ready.
    pub fn register(&self, name: &'static str) -> ReadyFlag {
        lock(&self.checks).insert(name, false);
        ReadyFlag {
            name,
            checks: self.checks.clone(),
        }
    }

    /// True when every registered check is ready.
    pub fn is_ready(&self) -> bool {
        lock(&self.checks).values().all(|ready| *ready)
    }

    fn report(&self) -> String {
        lock(&self.checks)
            .iter()
            .map(|(name, ready)| {
                format!(
                    "[{}]{name} {}\n",
                    if *ready { '+' } else { '-' },
                    if *ready { "ok" } else { "not ready" }
                )
            })
            .collect()
    }
}

impl ReadyFlag {
    /// Marks the check ready or not ready.
    pub fn set(&self, ready: bool) {
        lock(&self.checks).insert(self.name, ready);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding this lock cannot leave the map inconsistent (single inserts).
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Labels of `fleetmirror_build_info`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct BuildLabels {
    component: &'static str,
    version: &'static str,
}

/// Registers `fleetmirror_build_info{component, version} 1`.
pub fn register_build_info(
    registry: &mut Registry,
    component: &'static str,
    version: &'static str,
) {
    let family = prometheus_client::metrics::family::Family::<
        BuildLabels,
        prometheus_client::metrics::gauge::Gauge,
    >::default();
    family
        .get_or_create(&BuildLabels { component, version })
        .set(1);
    registry.register(
        "fleetmirror_build_info",
        "Build information; always 1",
        family,
    );
}

#[derive(Clone)]
struct AdminState {
    registry: Arc<Registry>,
    readiness: Readiness,
}

/// Serves the admin endpoints on `addr` until `shutdown` is cancelled.
pub async fn serve(
    addr: SocketAddr,
    registry: Registry,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "admin server listening (/metrics, /livez, /readyz)");
    let state = AdminState {
        registry: Arc::new(registry),
        readiness,
    };
    let app = axum::Router::new()
        .route("/metrics", get(metrics))
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(state);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &state.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        ),
        Err(error) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("encoding metrics: {error}\n"),
        ),
    }
}

async fn readyz(
    State(state): State<AdminState>,
    Query(query): Query<BTreeMap<String, String>>,
) -> impl IntoResponse {
    let ready = state.readiness.is_ready();
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    if query.contains_key("verbose") || !ready {
        let verdict = if ready {
            "readyz check passed"
        } else {
            "readyz check failed"
        };
        (code, format!("{}{verdict}\n", state.readiness.report()))
    } else {
        (code, "ok".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_every_check_is() {
        let r = Readiness::default();
        assert!(r.is_ready(), "no checks: ready");
        let a = r.register("grpc");
        let b = r.register("leader-election");
        assert!(!r.is_ready());
        a.set(true);
        assert!(!r.is_ready());
        b.set(true);
        assert!(r.is_ready());
        a.set(false);
        assert!(!r.is_ready());
        assert_eq!(r.report(), "[-]grpc not ready\n[+]leader-election ok\n");
    }
}
