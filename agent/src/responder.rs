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

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

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
    #[error(transparent)]
    Listen(#[from] mapguard_kube::ops::ListenError),
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
    let listener = mapguard_kube::ops::bind(args.ops_listen).await?;
    tracing::info!(?config, namespace = %args.namespace, ops = %args.ops_listen, "responder starting");
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, mapguard_kube::ops::router(ops)).await {
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

impl mapguard_kube::ops::Ops for Ops {
    fn metrics(&self) -> String {
        mapguard_kube::ops::encode(&self.registry)
    }

    /// Ready once the records are listed.
    fn not_ready(&self) -> Vec<String> {
        if self.synced.load(Ordering::SeqCst) {
            Vec::new()
        } else {
            vec!["MapViolation records not listed yet".to_string()]
        }
    }
}
