//! The plain-HTTP operations endpoints: `/healthz`, `/readyz`, `/metrics`
//! (`mapguard_kube::ops`, as the node agent and the responder serve them).

use axum::Router;
use mapguard_kube::ops::Ops;

use crate::state::AppState;

/// Router of the operations port (never TLS, never admission traffic).
pub fn ops_app(state: AppState) -> Router {
    mapguard_kube::ops::router(state)
}

/// Liveness: the process serves HTTP. Readiness: policies and certificate
/// loaded, HTTPS serving, namespace cache synced, and with
/// `--gatekeeper-crs` the cluster's templates and constraints listed and
/// compiled in.
impl Ops for AppState {
    fn metrics(&self) -> String {
        AppState::metrics(self).encode()
    }

    fn not_ready(&self) -> Vec<String> {
        self.not_ready_reasons()
            .into_iter()
            .map(str::to_owned)
            .collect()
    }
}
