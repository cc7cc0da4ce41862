//! The plain-HTTP ops port of every long-running mapguard binary: the
//! same three endpoints with the same answers, so that a kubelet probe or
//! a Prometheus job reads the webhook, the node agent and the responder
//! alike. Each binary says what its metrics are, what makes it unhealthy
//! and what keeps it from ready ([`Ops`]); [`router`] serves that.
//!
//! | path | 200 | 503 |
//! |---|---|---|
//! | `/metrics` | the OpenMetrics text | — |
//! | `/healthz` | `ok` | the reason to restart the process |
//! | `/readyz` | `ready` | `not ready: ` and every reason, `; `-separated |

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

/// The content type of `/metrics` (prometheus-client writes OpenMetrics).
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What a binary's ops port reports.
pub trait Ops: Send + Sync + 'static {
    /// The OpenMetrics text of `/metrics`.
    fn metrics(&self) -> String;

    /// `/healthz`: `Err(why)` once the process should be restarted (the
    /// kubelet's liveness probe then does). Healthy by default: the
    /// process answers HTTP.
    fn health(&self) -> Result<(), String> {
        Ok(())
    }

    /// `/readyz`: what keeps the process from doing its work; empty when
    /// ready.
    fn not_ready(&self) -> Vec<String>;
}

impl<T: Ops> Ops for Arc<T> {
    fn metrics(&self) -> String {
        T::metrics(self)
    }

    fn health(&self) -> Result<(), String> {
        T::health(self)
    }

    fn not_ready(&self) -> Vec<String> {
        T::not_ready(self)
    }
}

/// The router of `/metrics`, `/healthz` and `/readyz` over `ops`.
pub fn router<O: Ops + Clone>(ops: O) -> Router {
    Router::new()
        .route("/metrics", get(metrics::<O>))
        .route("/healthz", get(healthz::<O>))
        .route("/readyz", get(readyz::<O>))
        .with_state(ops)
}

async fn metrics<O: Ops>(State(ops): State<O>) -> Response {
    ([(header::CONTENT_TYPE, OPENMETRICS)], ops.metrics()).into_response()
}

async fn healthz<O: Ops>(State(ops): State<O>) -> Response {
    match ops.health() {
        Ok(()) => (StatusCode::OK, "ok\n").into_response(),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response(),
    }
}

async fn readyz<O: Ops>(State(ops): State<O>) -> Response {
    let reasons = ops.not_ready();
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

/// The OpenMetrics text of `registry` (the body of `/metrics`).
pub fn encode(registry: &Mutex<Registry>) -> String {
    let mut out = String::new();
    let registry = registry.lock().unwrap_or_else(|e| e.into_inner());
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
    out
}

/// The ops port could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} for the ops port: {source}")]
pub struct ListenError {
    pub addr: SocketAddr,
    #[source]
    pub source: std::io::Error,
}

/// Binds the ops port.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ListenError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ListenError { addr, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An ops state the test changes between requests.
    #[derive(Default)]
    struct Switch {
        stalled: Mutex<Option<String>>,
        waiting: Mutex<Vec<String>>,
    }

    impl Ops for Switch {
        fn metrics(&self) -> String {
            "# EOF\n".into()
        }

        fn health(&self) -> Result<(), String> {
            self.stalled.lock().unwrap().clone().map_or(Ok(()), Err)
        }

        fn not_ready(&self) -> Vec<String> {
            self.waiting.lock().unwrap().clone()
        }
    }

    /// GET `path` over a real connection: status, content type, body.
    async fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
            .await
            .expect("request");
        let mut raw = String::new();
        s.read_to_string(&mut raw).await.expect("response");
        let (head, body) = raw.split_once("\r\n\r\n").expect("head and body");
        let status = head[9..12].parse().expect("status code");
        let content_type = head
            .lines()
            .find_map(|l| l.strip_prefix("content-type: "))
            .unwrap_or_default()
            .to_string();
        (status, content_type, body.to_string())
    }

    #[tokio::test]
    async fn the_three_endpoints_answer_what_the_state_says() {
        let state = Arc::new(Switch::default());
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.expect("bind");
        let addr = listener.local_addr().expect("address");
        tokio::spawn(axum::serve(listener, router(Arc::clone(&state))).into_future());

        let (status, content_type, body) = get(addr, "/metrics").await;
        assert_eq!(
            (status, content_type.as_str(), body.as_str()),
            (200, OPENMETRICS, "# EOF\n")
        );
        assert_eq!(get(addr, "/healthz").await.0, 200);
        assert_eq!(get(addr, "/readyz").await.2, "ready\n");

        *state.stalled.lock().unwrap() = Some("loop stalled".into());
        *state.waiting.lock().unwrap() = vec!["pods not listed".into(), "BPF not loaded".into()];
        let (status, _, body) = get(addr, "/healthz").await;
        assert_eq!((status, body.as_str()), (503, "loop stalled\n"));
        let (status, _, body) = get(addr, "/readyz").await;
        assert_eq!(
            (status, body.as_str()),
            (503, "not ready: pods not listed; BPF not loaded\n")
        );
    }

    #[tokio::test]
    async fn a_port_in_use_is_a_clear_error() {
        let taken = bind("127.0.0.1:0".parse().unwrap()).await.expect("bind");
        let addr = taken.local_addr().expect("address");
        let error = bind(addr).await.expect_err("the port is taken");
        assert!(
            error
                .to_string()
                .starts_with(&format!("cannot listen on {addr} for the ops port")),
            "{error}"
        );
    }
}
