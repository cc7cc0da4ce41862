//! mapguard's admission webhook: validates and mutates Pods and their
//! controllers with Rego policies (crate `mapguard-policy`) over HTTPS.
//!
//! * [`app`] — the admission router (`POST /validate`, `POST /mutate`),
//!   callable without a socket (`app(state).oneshot(req)` in tests).
//! * [`ops_app`] — `/healthz`, `/readyz`, `/metrics` on a separate
//!   plain-HTTP port.
//! * [`startup::Webhook`] — loads everything from a [`config::Config`] and
//!   serves both routers: rustls (TLS 1.2/1.3) with a hot-swappable
//!   certificate ([`tls`]), policy, certificate and namespaces-file hot
//!   reload by polling ([`watch`]), namespace metadata from a file or the
//!   API server ([`namespaces`]), bounded evaluation ([`evaluator`]) with a
//!   fail-open/fail-closed policy, and Prometheus metrics ([`metrics`]).

pub mod admission;
pub mod budget;
pub mod config;
pub mod evaluator;
pub mod gatekeeper;
pub mod inventory;
pub mod metrics;
pub mod namespaces;
pub mod ops;
pub mod policies;
pub mod server;
pub mod startup;
pub mod state;
pub mod telemetry;
pub mod tls;
pub mod watch;

use axum::Router;
use axum::routing::post;
use tower_http::timeout::RequestBodyTimeoutLayer;

pub use config::{Config, FailurePolicy};
pub use ops::ops_app;
pub use state::{AppState, Settings};

/// The admission router: `POST /validate` and `POST /mutate`, with the body
/// read timeout of `state`'s settings; the handlers read bodies themselves,
/// within the size and memory bounds ([`admission::intake`]).
pub fn app(state: AppState) -> Router {
    let body_timeout = state.settings().body_timeout;
    Router::new()
        .route("/validate", post(admission::validate))
        .route("/mutate", post(admission::mutate))
        .layer(RequestBodyTimeoutLayer::new(body_timeout))
        .with_state(state)
}
