//! `mapguard-certs-gen`: a private CA and the webhook's serving certificate
//! signed by it, written as files or kept in the cluster.
//!
//! Run with:
//! ```text
//! # files: ca.crt, tls.crt, tls.key (for a webhook run by hand or in tests)
//! mapguard-certs-gen --out-dir ./certs --service mapguard-webhook --namespace mapguard-system
//! # in the cluster, as the Job of manifests/certs-gen/ does: the Secret
//! # mapguard-webhook-tls and the caBundle of the configurations "mapguard"
//! mapguard-certs-gen --in-cluster [--kubeconfig PATH] [--rotate-before 30d]
//! ```

use std::process::ExitCode;

use clap::Parser;
use mapguard_certs_gen::cluster::{self, SecretOutcome};
use mapguard_certs_gen::config::Config;
use mapguard_certs_gen::{generate, write_dir};
use mapguard_kube::telemetry::{Telemetry, error_chain};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let config = Config::parse();
    Telemetry::new("info").init();
    let result = match &config.out_dir {
        Some(_) => files(&config),
        None => in_cluster(&config).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("mapguard-certs-gen: {}", error_chain(&*error));
            ExitCode::FAILURE
        }
    }
}

fn files(config: &Config) -> anyhow::Result<()> {
    let dir = config.out_dir.as_deref().unwrap_or(".".as_ref());
    let request = config.cert_request();
    let certs = generate(&request)?;
    let files = write_dir(&certs, dir, config.force)?;
    tracing::info!(
        ca = %files.ca_cert.display(),
        cert = %files.cert.display(),
        key = %files.key.display(),
        sans = ?request.subject_alt_names(),
        "wrote CA and serving certificate"
    );
    Ok(())
}

async fn in_cluster(config: &Config) -> anyhow::Result<()> {
    let request = config.cluster_request();
    let client = cluster::client(config.kubeconfig.as_deref()).await?;
    let report = cluster::reconcile(&client, &request).await?;
    let secret = request.secret_object();
    let (not_after, rotate_after) = (report.not_after, report.rotate_after);
    match &report.secret {
        SecretOutcome::Created => {
            tracing::info!(%not_after, "created the Secret {secret} with a new CA and certificate");
        }
        SecretOutcome::Kept => {
            tracing::info!(%not_after, %rotate_after, "kept the Secret {secret}: its certificate is valid");
        }
        SecretOutcome::Replaced(reason) => {
            tracing::info!(%not_after, "rotated the Secret {secret} to a new CA and certificate: {reason}");
        }
    }
    for (kind, name) in &report.patched {
        tracing::info!("set the caBundle of {} {name:?}", kind.kind());
    }
    for (kind, name) in &report.current {
        tracing::info!(
            "the caBundle of {} {name:?} was already current",
            kind.kind()
        );
    }
    Ok(())
}
