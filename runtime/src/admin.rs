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

/// A readiness check computed when `/readyz` is asked: `Err` says why it is not ready.
pub type CheckFn = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

#[derive(Clone)]
enum Check {
    Flag(bool),
    /// Ready, with a detail for the verbose report.
    Note(String),
    Computed(CheckFn),
}

impl std::fmt::Debug for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Check::Flag(b) => write!(f, "Flag({b})"),
            Check::Note(n) => write!(f, "Note({n})"),
            Check::Computed(_) => f.write_str("Computed"),
        }
    }
}

impl Check {
    fn result(&self) -> Result<(), String> {
        match self {
            Check::Flag(true) | Check::Note(_) => Ok(()),
            Check::Flag(false) => Err("not ready".into()),
            Check::Computed(f) => f(),
        }
    }
}

type Checks = Arc<Mutex<BTreeMap<String, Check>>>;

/// Named readiness checks; the process is ready when all of them are.
#[derive(Clone, Default)]
pub struct Readiness {
    checks: Checks,
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readiness")
            .field("checks", &lock(&self.checks).keys().collect::<Vec<_>>())
            .finish()
    }
}

/// One readiness check, registered not ready.
#[derive(Debug, Clone)]
pub struct ReadyFlag {
    name: String,
    checks: Checks,
}

impl Readiness {
    /// Registers a check named `name` (shown by `/readyz?verbose`), initially not ready.
    pub fn register(&self, name: &str) -> ReadyFlag {
        lock(&self.checks).insert(name.to_owned(), Check::Flag(false));
        ReadyFlag {
            name: name.to_owned(),
            checks: self.checks.clone(),
        }
    }

    /// Registers a check computed on every `/readyz` (e.g. "this watch has not failed for
    /// longer than its grace period").
    pub fn register_fn(&self, name: &str, check: CheckFn) {
        lock(&self.checks).insert(name.to_owned(), Check::Computed(check));
    }

    /// Removes the check named `name` (a watch that was stopped on purpose).
    pub fn unregister(&self, name: &str) {
        lock(&self.checks).remove(name);
    }

    /// True when every registered check is ready.
    pub fn is_ready(&self) -> bool {
        self.results().iter().all(|(_, r)| r.is_ok())
    }

    fn results(&self) -> Vec<(String, Result<(), String>)> {
        let checks: Vec<(String, Check)> = lock(&self.checks)
            .iter()
            .map(|(k, c)| (k.clone(), c.clone()))
            .collect();
        checks.into_iter().map(|(k, c)| (k, c.result())).collect()
    }

    fn report(&self) -> String {
        self.results()
            .iter()
            .map(
                |(name, result)| match (result, checks_note(&self.checks, name)) {
                    (Ok(()), Some(note)) => format!("[+]{name} ok: {note}\n"),
                    (Ok(()), None) => format!("[+]{name} ok\n"),
                    (Err(why), _) => format!("[-]{name} {why}\n"),
                },
            )
            .collect()
    }
}

impl ReadyFlag {
    /// Marks the check ready or not ready.
    pub fn set(&self, ready: bool) {
        lock(&self.checks).insert(self.name.clone(), Check::Flag(ready));
    }

    /// Marks the check ready with a detail `/readyz?verbose` shows (e.g. what it waits for
    /// that must not make the process unready).
    pub fn set_note(&self, note: &str) {
        lock(&self.checks).insert(self.name.clone(), Check::Note(note.to_owned()));
    }
}

fn checks_note(checks: &Checks, name: &str) -> Option<String> {
    match lock(checks).get(name) {
        Some(Check::Note(n)) => Some(n.clone()),
        _ => None,
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
    let report = state.readiness.report();
    let ready = !report.contains("[-]");
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
        (code, format!("{report}{verdict}\n"))
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
        a.set(true);
        let failing = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let f = failing.clone();
        r.register_fn(
            "watch-services",
            Arc::new(move || {
                if f.load(std::sync::atomic::Ordering::SeqCst) {
                    Err("failing for 31s: 403 Forbidden".into())
                } else {
                    Ok(())
                }
            }),
        );
        assert!(!r.is_ready());
        assert!(
            r.report()
                .contains("[-]watch-services failing for 31s: 403 Forbidden\n")
        );
        failing.store(false, std::sync::atomic::Ordering::SeqCst);
        assert!(r.is_ready());
    }
}
