//! Command-line and environment configuration of `mapguard-certs-gen`:
//! every flag is also an environment variable.

use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgGroup, Parser};
use mapguard_duration as duration;

use crate::CertRequest;
use crate::cluster::ClusterRequest;

/// Generates a CA and a serving certificate for the mapguard webhook: as
/// files (`--out-dir`), or into a Secret with the webhook configurations'
/// caBundle (`--in-cluster`, for a Job).
#[derive(Debug, Clone, Parser)]
#[command(name = "mapguard-certs-gen", version, about)]
#[command(group(ArgGroup::new("mode").required(true).args(["out_dir", "in_cluster"])))]
pub struct Config {
    /// Write ca.crt, tls.crt and tls.key into this directory (created if missing).
    #[arg(long, env = "MAPGUARD_CERTS_OUT_DIR")]
    pub out_dir: Option<PathBuf>,
    /// With --out-dir: overwrite existing files.
    #[arg(long, env = "MAPGUARD_CERTS_FORCE", conflicts_with = "in_cluster")]
    pub force: bool,
    /// Keep the certificate in a Secret of --namespace and its CA in the
    /// webhook configurations' caBundle, through the API server (in-cluster
    /// service account, or --kubeconfig); idempotent, rotates before expiry.
    #[arg(long, env = "MAPGUARD_CERTS_IN_CLUSTER")]
    pub in_cluster: bool,
    /// Name of the webhook's Service.
    #[arg(
        long,
        env = "MAPGUARD_CERTS_SERVICE",
        default_value = "mapguard-webhook"
    )]
    pub service: String,
    /// Namespace of the webhook's Service (and of the Secret).
    #[arg(
        long,
        env = "MAPGUARD_CERTS_NAMESPACE",
        default_value = "mapguard-system"
    )]
    pub namespace: String,
    /// Extra subject alternative name (DNS name or IP address); repeatable.
    #[arg(long = "san", env = "MAPGUARD_CERTS_SANS", value_delimiter = ',')]
    pub sans: Vec<String>,
    /// Validity of the serving certificate in days (the CA: ten times as long).
    #[arg(long, env = "MAPGUARD_CERTS_VALIDITY_DAYS", default_value_t = 365)]
    pub validity_days: u32,
    /// With --in-cluster: the Secret (type kubernetes.io/tls, plus ca.crt).
    #[arg(
        long,
        env = "MAPGUARD_CERTS_SECRET",
        default_value = "mapguard-webhook-tls"
    )]
    pub secret: String,
    /// With --in-cluster: ValidatingWebhookConfiguration to give the CA
    /// bundle to; repeatable, empty for none.
    #[arg(
        long = "validating-webhook",
        env = "MAPGUARD_CERTS_VALIDATING_WEBHOOKS",
        value_delimiter = ',',
        default_value = "mapguard"
    )]
    pub validating_webhooks: Vec<String>,
    /// With --in-cluster: MutatingWebhookConfiguration to give the CA bundle
    /// to; repeatable, empty for none.
    #[arg(
        long = "mutating-webhook",
        env = "MAPGUARD_CERTS_MUTATING_WEBHOOKS",
        value_delimiter = ',',
        default_value = "mapguard"
    )]
    pub mutating_webhooks: Vec<String>,
    /// With --in-cluster: replace a certificate (or CA) that expires within
    /// this window (30d, 12h, ...); shorter than the validity.
    #[arg(long, env = "MAPGUARD_CERTS_ROTATE_BEFORE", value_parser = duration::parse, default_value = "30d")]
    pub rotate_before: Duration,
    /// With --in-cluster: how long to wait for the webhook configurations to
    /// exist (a Job can start before kubectl has created them).
    #[arg(long, env = "MAPGUARD_CERTS_WAIT", value_parser = duration::parse, default_value = "2m")]
    pub wait: Duration,
    /// With --in-cluster: kubeconfig file (its current context). Default:
    /// the in-cluster service account, else KUBECONFIG or ~/.kube/config.
    #[arg(long, env = "MAPGUARD_KUBECONFIG", conflicts_with = "out_dir")]
    pub kubeconfig: Option<PathBuf>,
}

impl Config {
    /// The serving certificate asked for.
    pub fn cert_request(&self) -> CertRequest {
        CertRequest {
            service: self.service.clone(),
            namespace: self.namespace.clone(),
            extra_sans: self.sans.clone(),
            validity_days: self.validity_days,
        }
    }

    /// What `--in-cluster` keeps.
    pub fn cluster_request(&self) -> ClusterRequest {
        ClusterRequest {
            cert: self.cert_request(),
            secret: self.secret.clone(),
            validating_webhooks: self.validating_webhooks.clone(),
            mutating_webhooks: self.mutating_webhooks.clone(),
            rotate_before: self.rotate_before,
            wait: self.wait,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_mode_is_required_and_the_defaults_match_the_manifests() {
        assert!(
            Config::try_parse_from(["mapguard-certs-gen"]).is_err(),
            "no mode"
        );
        assert!(
            Config::try_parse_from(["x", "--out-dir=d", "--in-cluster"]).is_err(),
            "both modes"
        );
        assert!(
            Config::try_parse_from(["x", "--in-cluster", "--force"]).is_err(),
            "--force belongs to files"
        );
        assert!(
            Config::try_parse_from(["x", "--out-dir=d", "--kubeconfig=k"]).is_err(),
            "--kubeconfig belongs to the cluster"
        );
        let config = Config::try_parse_from(["x", "--in-cluster"]).expect("in-cluster parses");
        let request = config.cluster_request();
        assert_eq!(request.secret, "mapguard-webhook-tls");
        assert_eq!(request.validating_webhooks, ["mapguard"]);
        assert_eq!(request.mutating_webhooks, ["mapguard"]);
        assert_eq!(request.rotate_before, Duration::from_secs(30 * 86_400));
        assert_eq!(request.cert.service, "mapguard-webhook");
        assert_eq!(request.cert.namespace, "mapguard-system");
        assert!(request.validate().is_ok());
    }
}
