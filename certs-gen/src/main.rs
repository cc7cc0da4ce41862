//! `mapguard-certs-gen`: writes a private CA and the webhook's serving
//! certificate signed by it (`ca.crt`, `tls.crt`, `tls.key`).
//!
//! Run with:
//! ```text
//! mapguard-certs-gen --out-dir ./certs --service mapguard-webhook --namespace mapguard-system
//! kubectl -n mapguard-system create secret tls mapguard-webhook-tls \
//!     --cert=certs/tls.crt --key=certs/tls.key
//! # caBundle for the webhook configurations:
//! base64 -w0 certs/ca.crt
//! ```

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use mapguard_certs_gen::{CertRequest, generate, write_dir};

/// Generates a CA and a serving certificate for the mapguard webhook.
#[derive(Debug, Parser)]
#[command(name = "mapguard-certs-gen", version, about)]
struct Config {
    /// Directory to write ca.crt, tls.crt and tls.key into (created if missing).
    #[arg(long, env = "MAPGUARD_CERTS_OUT_DIR")]
    out_dir: PathBuf,
    /// Name of the webhook's Service.
    #[arg(
        long,
        env = "MAPGUARD_CERTS_SERVICE",
        default_value = "mapguard-webhook"
    )]
    service: String,
    /// Namespace of the webhook's Service.
    #[arg(
        long,
        env = "MAPGUARD_CERTS_NAMESPACE",
        default_value = "mapguard-system"
    )]
    namespace: String,
    /// Extra subject alternative name (DNS name or IP address); repeatable.
    #[arg(long = "san", env = "MAPGUARD_CERTS_SANS", value_delimiter = ',')]
    sans: Vec<String>,
    /// Validity of the serving certificate in days (the CA: ten times as long).
    #[arg(long, env = "MAPGUARD_CERTS_VALIDITY_DAYS", default_value_t = 365)]
    validity_days: u32,
    /// Overwrite existing files.
    #[arg(long, env = "MAPGUARD_CERTS_FORCE")]
    force: bool,
}

fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let mut request = CertRequest::new(&config.service, &config.namespace);
    request.extra_sans = config.sans;
    request.validity_days = config.validity_days;
    let certs = generate(&request).context("generating certificates")?;
    let files = write_dir(&certs, &config.out_dir, config.force)?;
    tracing::info!(
        ca = %files.ca_cert.display(),
        cert = %files.cert.display(),
        key = %files.key.display(),
        sans = ?request.subject_alt_names(),
        "wrote CA and serving certificate"
    );
    Ok(())
}
