//! `respond`: the opt-in responder, one Deployment replica in the cluster
//! (`manifests/responder/`), with an identity of its own. It reads what
//! the node agents report — the `status` of their `MapViolation` records,
//! which only the agents' ServiceAccount may write ([`input`]) — and when a
//! workload's violations and crashes pass a threshold, evicts its Pod or
//! cordons its node ([`decide`]), within a cluster-wide budget that only
//! it writes ([`budget`]). The node agents hold no eviction or Node rights.
//!
//! Its ops port serves `/metrics`, `/healthz` and `/readyz` (ready once
//! the records are listed).
//!
//! ```text
//! node agents ──status.count++──▶ MapViolation ──watch──▶ responder ──▶ Eviction / cordon
//!   (only they write status)                              (budget: ConfigMap only it writes)
//! ```

pub mod budget;
pub mod decide;
pub mod input;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use prometheus_client::registry::Registry;

use crate::config::RespondArgs;
pub use decide::{
    Cause, Outcome, REASON_CORDONED, REASON_DRY_RUN, REASON_EVICTED, REASON_EVICTION_BLOCKED,
    REPORTING_CONTROLLER, Responder, ResponderConfig, ResponseAction, Trigger,
};

/// Why the responder could not run.
#[derive(Debug, thiserror::Error)]
pub enum RespondError {
    #[error("cannot configure access to the API server: {0}")]
    Kubeconfig(String),
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("cannot listen on {addr} for the ops port: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// What the ops port reads.
struct Ops {
    registry: Mutex<Registry>,
    synced: Arc<AtomicBool>,
}

/// Runs until SIGTERM or SIGINT; returns the exit status.
pub fn run(args: &RespondArgs) -> Result<i32, RespondError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(RespondError::Runtime)?;
    runtime.block_on(serve(args))
}

async fn serve(args: &RespondArgs) -> Result<i32, RespondError> {
    let kube = mapguard_kube::config(args.kubeconfig.as_deref())
        .await
        .map_err(|e| RespondError::Kubeconfig(e.to_string()))?;
    let client = kube::Client::try_from(kube.clone())
        .map_err(|e| RespondError::Kubeconfig(e.to_string()))?;
    let config = ResponderConfig {
        action: args.action,
        threshold: args.threshold,
        window: args.window,
        workload_interval: args.workload_interval,
        cluster_per_hour: args.cluster_per_hour,
        dry_run: args.dry_run,
    };
    let responder = Responder::new(&kube, &args.namespace, config.clone())
        .map_err(|e| RespondError::Kubeconfig(e.to_string()))?;
    let mut registry = Registry::default();
    responder.register(&mut registry);
    let synced = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(Ops {
        registry: Mutex::new(registry),
        synced: Arc::clone(&synced),
    });
    let listener = tokio::net::TcpListener::bind(args.ops_listen)
        .await
        .map_err(|source| RespondError::Listen {
            addr: args.ops_listen,
            source,
        })?;
    tracing::info!(?config, namespace = %args.namespace, ops = %args.ops_listen, "responder starting");
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app(ops)).await {
            tracing::error!(error = %e, "ops server failed");
        }
    });
    let watch = tokio::spawn(input::run(client, Arc::new(responder), synced));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(RespondError::Runtime)?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
        _ = watch => {}
    }
    tracing::info!("responder stopping");
    Ok(0)
}

fn app(ops: Arc<Ops>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(ops)
}

async fn metrics(State(ops): State<Arc<Ops>>) -> Response {
    let mut out = String::new();
    {
        let registry = ops.registry.lock().unwrap_or_else(|e| e.into_inner());
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        out,
    )
        .into_response()
}

async fn readyz(State(ops): State<Arc<Ops>>) -> Response {
    if ops.synced.load(Ordering::SeqCst) {
        "ok\n".into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "MapViolation records not listed yet\n",
        )
            .into_response()
    }
}
