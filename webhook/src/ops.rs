//! The plain-HTTP operations endpoints: `/healthz`, `/readyz`, `/metrics`.

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::state::AppState;

/// Router of the operations port (never TLS, never admission traffic).
pub fn ops_app(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// Liveness: the process serves HTTP.
async fn healthz() -> &'static str {
    "ok\n"
}

/// Readiness: policies and certificate loaded, HTTPS serving, namespace
/// cache synced, and with `--gatekeeper-crs` the cluster's templates and
/// constraints listed and compiled in.
async fn readyz(State(state): State<AppState>) -> Response {
    let reasons = state.not_ready_reasons();
    if reasons.is_empty() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", reasons.join("; ")),
        )
            .into_response()
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics().encode(),
    )
        .into_response()
}
