//! Serving the admission router over TLS (tokio-rustls + hyper) and the
//! operations router over plain HTTP, both with graceful shutdown.
//!
//! Each accepted TCP connection gets a TLS handshake bounded by the client
//! timeout, then hyper (HTTP/1.1 or HTTP/2 by ALPN) with a header read
//! timeout; body read timeouts live in the router. On shutdown every
//! connection is told to finish its in-flight requests and close; the server
//! waits for them up to the grace period.
//!
//! What one connection may hold is bounded: HTTP/1.1 buffers at most
//! [`H1_MAX_BUF`] of a request head, HTTP/2 at most [`H2_WINDOW`] of request
//! bodies not yet read (flow control) and a limited number of streams; and
//! at most `max_connections` are open at once (further clients wait in the
//! listen backlog). Bodies themselves are read by the handlers within the
//! request memory budget.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use prometheus_client::metrics::gauge::Gauge;
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::metrics::Metrics;
use crate::telemetry::RateLimited;

/// At most one warning per this interval for failed TLS handshakes, and
/// for the connection limit being reached.
const HANDSHAKE_WARNING_INTERVAL: Duration = Duration::from_secs(60);

/// Bytes of a request head an HTTP/1.1 connection buffers at most (the API
/// server's heads are a few hundred bytes).
pub const H1_MAX_BUF: usize = 64 * 1024;

/// HTTP/2 flow-control window of a connection and of each stream: request
/// body bytes a connection buffers before the handlers read them.
pub const H2_WINDOW: u32 = 256 * 1024;

/// `--client-timeout`'s default, also the body timeout of a router built
/// without flags ([`crate::Settings::default`]).
pub const DEFAULT_CLIENT_TIMEOUT: &str = "5s";

/// Bounds on the connections of the admission port: flags of
/// [`crate::config::Config`], read here and by the router (the body timeout).
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct ConnectionLimits {
    /// Time allowed for a TLS handshake, for reading request headers and for
    /// reading a request body (slow clients are cut off after it).
    #[arg(long, env = "MAPGUARD_CLIENT_TIMEOUT", value_parser = mapguard_duration::parse, default_value = DEFAULT_CLIENT_TIMEOUT)]
    pub client_timeout: Duration,
    /// Connections open at once on the HTTPS port; further ones wait in
    /// the listen backlog until one closes.
    #[arg(long, env = "MAPGUARD_MAX_CONNECTIONS", default_value_t = 64)]
    pub max_connections: usize,
    /// Requests in flight at once on one HTTP/2 connection.
    #[arg(long, env = "MAPGUARD_MAX_CONCURRENT_STREAMS", default_value_t = 32)]
    pub max_concurrent_streams: u32,
}

/// An open connection: its place under the limit, counted in the gauge.
struct Open {
    _slot: OwnedSemaphorePermit,
    gauge: Gauge,
}

impl Open {
    fn new(slot: OwnedSemaphorePermit, gauge: &Gauge) -> Self {
        gauge.inc();
        Open {
            _slot: slot,
            gauge: gauge.clone(),
        }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// Serves `app` over TLS on `listener` until `shutdown` turns `true`.
pub async fn serve_tls(
    listener: TcpListener,
    app: Router,
    tls: Arc<ServerConfig>,
    metrics: Arc<Metrics>,
    limits: ConnectionLimits,
    grace: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let client_timeout = limits.client_timeout;
    let acceptor = TlsAcceptor::from(tls);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(client_timeout)
        .max_buf_size(H1_MAX_BUF)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .initial_connection_window_size(H2_WINDOW)
        .initial_stream_window_size(H2_WINDOW)
        .keep_alive_interval(Duration::from_secs(30));
    let builder = Arc::new(builder);
    let handshake_warning = Arc::new(RateLimited::new(HANDSHAKE_WARNING_INTERVAL));
    let full_warning = RateLimited::new(HANDSHAKE_WARNING_INTERVAL);
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut connections = JoinSet::new();
    loop {
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                if let Some(held_back) = full_warning.check() {
                    tracing::warn!(
                        limit = limits.max_connections,
                        held_back,
                        "connection limit reached; new clients wait until a connection closes (--max-connections)"
                    );
                }
                tokio::select! {
                    slot = slots.clone().acquire_owned() => match slot {
                        Ok(slot) => slot,
                        Err(_) => break, // closed: never happens
                    },
                    _ = wait_for(&mut shutdown) => break,
                }
            }
        };
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(error) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = wait_for(&mut shutdown) => break,
        };
        while connections.try_join_next().is_some() {}
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let app = app.clone();
        let builder = builder.clone();
        let metrics = metrics.clone();
        let handshake_warning = handshake_warning.clone();
        let mut conn_shutdown = shutdown.clone();
        let open = Open::new(slot, metrics.connections());
        connections.spawn(async move {
            let _open = open;
            let tls = match tokio::time::timeout(client_timeout, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(error)) => {
                    handshake_failed(&metrics, &handshake_warning, peer, &error);
                    return;
                }
                Err(_) => {
                    handshake_failed(&metrics, &handshake_warning, peer, &"timed out");
                    return;
                }
            };
            let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                app.clone().oneshot(req.map(Body::new))
            });
            let conn = builder.serve_connection(TokioIo::new(tls), service);
            tokio::pin!(conn);
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(error) = result {
                        tracing::debug!(%peer, %error, "connection ended with an error");
                    }
                }
                _ = wait_for(&mut conn_shutdown) => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
    drop(listener);
    tracing::info!(
        open = connections.len(),
        "HTTPS listener closed; draining connections"
    );
    if tokio::time::timeout(grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        tracing::warn!(
            left = connections.len(),
            "grace period over; closing connections"
        );
        connections.abort_all();
    }
}

/// Counts a failed handshake; logs a warning at most once per interval
/// (a scanner or a misconfigured client can fail thousands a minute), the
/// others at debug level.
fn handshake_failed(
    metrics: &Metrics,
    warning: &RateLimited,
    peer: SocketAddr,
    error: &dyn std::fmt::Display,
) {
    metrics.handshake_failed();
    match warning.check() {
        Some(held_back) => tracing::warn!(
            %peer,
            %error,
            held_back,
            "TLS handshake failed; more failures within {}s are logged at debug level only (all are counted in mapguard_tls_handshake_failures_total)",
            HANDSHAKE_WARNING_INTERVAL.as_secs()
        ),
        None => tracing::debug!(%peer, %error, "TLS handshake failed"),
    }
}

/// Serves `app` over plain HTTP on `listener` until `shutdown` turns `true`.
pub async fn serve_plain(listener: TcpListener, app: Router, mut shutdown: watch::Receiver<bool>) {
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async move { wait_for(&mut shutdown).await })
        .await;
    if let Err(error) = result {
        tracing::error!(%error, "operations server failed");
    }
}

/// Resolves once `rx` holds `true` or its sender is gone.
pub async fn wait_for(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}
