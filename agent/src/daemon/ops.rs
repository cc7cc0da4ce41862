//! The node agent's ops port (plain HTTP): `/metrics`, `/healthz` (fails
//! once the enforcement loop has stopped going round: [`Heartbeat`]) and
//! `/readyz`; and, on a Unix socket of its own (`events_socket`), never on
//! the ops port, `/events`: a live stream of the JSON lines the agent
//! writes (violations, sampling choices), every tenant's stacks and Pods.

use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::State,
    http::header,
    response::{IntoResponse, Response},
    routing::get,
};
use mapguard_kube::ops::Ops;
use tokio::sync::broadcast;

use super::{metrics::Metrics, pods::PodTable};

/// What the ops endpoints read.
pub struct OpsState {
    pub metrics: Arc<Metrics>,
    pub pods: Arc<PodTable>,
    /// JSON lines as the agent writes them.
    pub events: broadcast::Sender<Bytes>,
    /// Set once the BPF program is loaded.
    pub bpf_ready: AtomicBool,
    /// The enforcement loop's.
    pub heartbeat: Arc<Heartbeat>,
    /// `/healthz` fails once the loop has not gone round for this long.
    pub stall_after: Duration,
}

/// When the enforcement loop last went round: it beats at every turn (a
/// turn waits 50 ms at most for kernel records), and `/healthz` fails
/// when the beats stop — a loop blocked in a system call or a lock is
/// otherwise invisible from outside, since the ops port answers from
/// threads of its own.
#[derive(Debug)]
pub struct Heartbeat {
    epoch: Instant,
    /// Milliseconds from `epoch` to the last beat, plus one (0: none yet).
    last: AtomicU64,
}

impl Default for Heartbeat {
    fn default() -> Heartbeat {
        Heartbeat {
            epoch: Instant::now(),
            last: AtomicU64::new(0),
        }
    }
}

impl Heartbeat {
    pub fn beat(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64 + 1;
        self.last.store(ms, Ordering::Relaxed);
    }

    /// Time since the last beat (`None` before the first: starting up).
    pub fn since_last(&self) -> Option<Duration> {
        let last = self.last.load(Ordering::Relaxed).checked_sub(1)?;
        Some(
            self.epoch
                .elapsed()
                .saturating_sub(Duration::from_millis(last)),
        )
    }
}

/// The ops port's router: what Prometheus and the kubelet read. No
/// `/events`: any Pod that reaches the agent reaches this port.
pub fn app(state: Arc<OpsState>) -> Router {
    mapguard_kube::ops::router(state)
}

/// The events socket's router: `/events` only.
pub fn events_app(state: Arc<OpsState>) -> Router {
    Router::new()
        .route("/events", get(events))
        .with_state(state)
}

impl Ops for OpsState {
    fn metrics(&self) -> String {
        self.metrics.encode()
    }

    /// Healthy while the enforcement loop goes round (or has not started).
    fn health(&self) -> Result<(), String> {
        match self.heartbeat.since_last() {
            Some(since) if since > self.stall_after => Err(format!(
                "enforcement loop stalled: no progress for {:.1}s (--healthz-stall-after {:?})",
                since.as_secs_f64(),
                self.stall_after
            )),
            _ => Ok(()),
        }
    }

    /// Ready once the BPF program is loaded and the node's Pods and the
    /// Namespaces are listed; unready (with the reason) while the API
    /// server is unreachable or the Namespaces cannot be read — the agent
    /// still enforces the Pods it knows then.
    fn not_ready(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if !self.bpf_ready.load(Ordering::SeqCst) {
            problems.push("BPF program not loaded".to_string());
        }
        if !self.pods.is_synced() {
            problems.push("pods of this node not listed yet".to_string());
        }
        if let Err(e) = self.pods.connection() {
            problems.push(format!(
                "API server unreachable ({e}); enforcing the pods last known"
            ));
        }
        if let Err(e) = self.pods.namespaces() {
            problems.push(format!(
                "{e}; the namespaces' minimum modes and coverages are not applied (the Pods' annotations decide)"
            ));
        }
        problems
    }
}

/// Streams every JSON line from now on; a client too slow to keep up
/// misses lines rather than holding the agent back.
async fn events(State(s): State<Arc<OpsState>>) -> Response {
    let rx = s.events.subscribe();
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        let line = match rx.recv().await {
            Ok(line) => line,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                Bytes::from(format!("{{\"event\":\"lagged\",\"missed\":{n}}}\n"))
            }
            Err(broadcast::error::RecvError::Closed) => return None,
        };
        Some((Ok::<Bytes, Infallible>(line), rx))
    });
    (
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response()
}

/// A `Write` that publishes each complete line to the `/events` stream.
pub struct Broadcast {
    tx: broadcast::Sender<Bytes>,
    partial: Vec<u8>,
}

impl Broadcast {
    pub fn new(tx: broadcast::Sender<Bytes>) -> Broadcast {
        Broadcast {
            tx,
            partial: Vec::new(),
        }
    }
}

impl std::io::Write for Broadcast {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.partial.extend_from_slice(buf);
        while let Some(end) = self.partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=end).collect();
            // No subscriber is not an error.
            let _ = self.tx.send(Bytes::from(line));
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Writes to two sinks (the configured events output and the stream).
pub struct Tee<A, B>(pub A, pub B);

impl<A: std::io::Write, B: std::io::Write> std::io::Write for Tee<A, B> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write_all(buf)?;
        self.1.write_all(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()?;
        self.1.flush()
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use axum::http::{Request, StatusCode};
    use tower::ServiceExt as _;

    use super::*;
    use mapguard_api::mode::Coverage;

    use crate::daemon::pods::NodeDefaults;

    fn state() -> Arc<OpsState> {
        Arc::new(OpsState {
            metrics: Arc::new(Metrics::new()),
            pods: Arc::new(PodTable::new(NodeDefaults {
                mode: None,
                coverage: Coverage::Light,
            })),
            events: broadcast::channel(16).0,
            bpf_ready: AtomicBool::new(false),
            heartbeat: Arc::new(Heartbeat::default()),
            stall_after: Duration::from_millis(200),
        })
    }

    #[tokio::test]
    async fn health_follows_the_enforcement_loop() {
        let s = state();
        let (status, _) = get_text(app(Arc::clone(&s)), "/healthz").await;
        assert_eq!(status, StatusCode::OK, "starting: no beat yet");
        s.heartbeat.beat();
        let (status, _) = get_text(app(Arc::clone(&s)), "/healthz").await;
        assert_eq!(status, StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (status, text) = get_text(app(Arc::clone(&s)), "/healthz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(text.contains("enforcement loop stalled"), "{text}");
        s.heartbeat.beat();
        let (status, _) = get_text(app(s), "/healthz").await;
        assert_eq!(status, StatusCode::OK, "going round again");
    }

    async fn get_text(app: Router, path: &str) -> (StatusCode, String) {
        let resp = app
            .oneshot(Request::get(path).body(Body::empty()).expect("request"))
            .await
            .expect("response");
        let status = resp.status();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .expect("body");
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn readiness_names_what_is_missing() {
        let s = state();
        let (status, text) = get_text(app(Arc::clone(&s)), "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            text.contains("BPF program not loaded") && text.contains("not listed"),
            "{text}"
        );
        s.bpf_ready.store(true, Ordering::SeqCst);
        s.pods.apply(Ok(kube::runtime::watcher::Event::Init));
        s.pods.apply(Ok(kube::runtime::watcher::Event::InitDone));
        let (status, text) = get_text(app(Arc::clone(&s)), "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            text.contains("namespaces not listed yet; the namespaces' minimum modes"),
            "{text}"
        );
        s.pods
            .apply_namespace(Ok(kube::runtime::watcher::Event::Init));
        s.pods
            .apply_namespace(Ok(kube::runtime::watcher::Event::InitDone));
        let (status, _) = get_text(app(Arc::clone(&s)), "/readyz").await;
        assert_eq!(status, StatusCode::OK);
        s.pods
            .apply_namespace(Err(super::super::pods::watch_error("forbidden")));
        let (status, text) = get_text(app(Arc::clone(&s)), "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            text.contains("cannot read namespaces: ") && text.contains("forbidden"),
            "{text}"
        );
        s.pods
            .apply_namespace(Ok(kube::runtime::watcher::Event::Init));
        let (status, _) = get_text(app(Arc::clone(&s)), "/readyz").await;
        assert_eq!(status, StatusCode::OK, "an event means the watch is back");
        s.pods
            .apply(Err(super::super::pods::watch_error("connection refused")));
        let (status, text) = get_text(app(Arc::clone(&s)), "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            text.contains("API server unreachable (") && text.contains("connection refused)"),
            "{text}"
        );
        let (status, text) = get_text(app(s), "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(text.contains("mapguard_api_server_connected"), "{text}");
    }

    #[tokio::test]
    async fn the_event_stream_is_not_on_the_ops_port() {
        let s = state();
        let (status, _) = get_text(app(Arc::clone(&s)), "/events").await;
        assert_eq!(status, StatusCode::NOT_FOUND, "/events on the ops port");
        let (status, _) = get_text(app(Arc::clone(&s)), "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        let (status, _) = get_text(events_app(Arc::clone(&s)), "/metrics").await;
        assert_eq!(
            status,
            StatusCode::NOT_FOUND,
            "the socket serves events only"
        );
        let resp = events_app(Arc::clone(&s))
            .oneshot(
                Request::get("/events")
                    .body(Body::empty())
                    .expect("request"),
            )
            .await
            .expect("response");
        assert_eq!(resp.status(), StatusCode::OK);
        Broadcast::new(s.events.clone())
            .write_all(b"{\"pod\":\"checkout\"}\n")
            .expect("write");
        let mut body = resp.into_body().into_data_stream();
        let line = futures_util::StreamExt::next(&mut body)
            .await
            .expect("a line")
            .expect("bytes");
        assert_eq!(line, Bytes::from("{\"pod\":\"checkout\"}\n"));
    }

    #[test]
    fn the_broadcast_writer_publishes_whole_lines() {
        let (tx, mut rx) = broadcast::channel(4);
        let mut w = Broadcast::new(tx);
        w.write_all(b"{\"a\":1}\n{\"b\"").expect("write");
        assert_eq!(rx.try_recv().expect("one line"), Bytes::from("{\"a\":1}\n"));
        assert!(rx.try_recv().is_err(), "half a line is held back");
        w.write_all(b":2}\n").expect("write");
        assert_eq!(rx.try_recv().expect("the rest"), Bytes::from("{\"b\":2}\n"));
    }
}
