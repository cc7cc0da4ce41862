//! `mapguard-webhook`: the validating and mutating admission webhook.
//!
//! Run with:
//! ```text
//! mapguard-certs-gen --out-dir /tmp/mg-certs --service mapguard-webhook --namespace mapguard-system
//! mapguard-webhook --listen 127.0.0.1:8443 --metrics-listen 127.0.0.1:9090 \
//!     --tls-cert /tmp/mg-certs/tls.crt --tls-key /tmp/mg-certs/tls.key \
//!     --namespaces-file tests/data/namespaces.yaml
//! curl --cacert /tmp/mg-certs/ca.crt -H 'Content-Type: application/json' \
//!     --data @tests/data/admission/pod-privileged-create.json https://localhost:8443/validate
//! ```
//! Without `--namespaces-file` it watches Namespaces through the API server
//! (`--kubeconfig`, else in-cluster config or `KUBECONFIG`); without `--policies` it serves the
//! policies compiled in. `--help` lists every flag and its `MAPGUARD_*`
//! environment variable.

use anyhow::Context;
use clap::Parser;
use mapguard_webhook::config::Config;
use mapguard_webhook::startup::Webhook;
use mapguard_webhook::telemetry;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    rustls::crypto::ring::default_provider()
        .install_default()
        .map_err(|_| anyhow::anyhow!("a rustls crypto provider was already installed"))?;
    let config = Config::parse();
    telemetry::init(config.log_format);
    let webhook = Webhook::build(&config)
        .await
        .context("starting mapguard-webhook")?;
    let running = webhook
        .start(&config)
        .await
        .context("starting mapguard-webhook")?;
    running.run_until(shutdown_signal()).await;
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        },
        Err(error) => {
            tracing::warn!(%error, "cannot watch SIGTERM; stopping on ctrl-c only");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
