//! Command-line and environment configuration of `mapguard-webhook`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use mapguard_duration as duration;
use mapguard_policy::Action;

use crate::server::ConnectionLimits;

/// What the webhook answers when it cannot judge a request (evaluation
/// overloaded, timed out or failed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum FailurePolicy {
    /// Allow the request, with a warning saying why it was not judged.
    FailOpen,
    /// Deny the request with a message saying why it was not judged (the
    /// default).
    #[default]
    FailClosed,
}

impl FailurePolicy {
    /// The spelling used on the command line and in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            FailurePolicy::FailOpen => "fail-open",
            FailurePolicy::FailClosed => "fail-closed",
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// `PACKAGE=ACTION`: overrides the enforcement action of one policy package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnforcementOverride {
    /// Package name without `data.` (e.g. `mapguard.privileged`).
    pub package: String,
    /// The action its findings get.
    pub action: Action,
}

impl FromStr for EnforcementOverride {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (package, action) = mapguard_policy::parse_enforcement_override(s)?;
        Ok(Self { package, action })
    }
}

/// Parses a JSON nesting depth between 2 and 100 (serde_json itself stops
/// at 128 levels).
fn parse_depth(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(depth) if (2..=100).contains(&depth) => Ok(depth),
        _ => Err(format!("{s:?} is not a depth between 2 and 100")),
    }
}

/// The webhook's configuration: every flag is also an environment variable.
#[derive(Debug, Clone, Parser)]
#[command(name = "mapguard-webhook", version, about)]
pub struct Config {
    /// HTTPS address serving /validate and /mutate.
    #[arg(long, env = "MAPGUARD_LISTEN", default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,
    /// PEM serving certificate (chain); reloaded when it changes.
    #[arg(
        long,
        env = "MAPGUARD_TLS_CERT",
        default_value = "/etc/mapguard/tls/tls.crt"
    )]
    pub tls_cert: PathBuf,
    /// PEM private key of the serving certificate; reloaded when it changes.
    #[arg(
        long,
        env = "MAPGUARD_TLS_KEY",
        default_value = "/etc/mapguard/tls/tls.key"
    )]
    pub tls_key: PathBuf,
    /// Directory of Rego policies (e.g. a mounted ConfigMap); reloaded when it
    /// changes. Default: the policies compiled into the binary.
    #[arg(long, env = "MAPGUARD_POLICIES")]
    pub policies: Option<PathBuf>,
    /// Plain-HTTP address serving /healthz, /readyz and /metrics.
    #[arg(long, env = "MAPGUARD_METRICS_LISTEN", default_value = "0.0.0.0:9090")]
    pub metrics_listen: SocketAddr,
    /// YAML/JSON file of namespace metadata (offline mode, reloaded when it
    /// changes). Without it, namespaces are watched through the API server.
    #[arg(long, env = "MAPGUARD_NAMESPACES_FILE")]
    pub namespaces_file: Option<PathBuf>,
    /// Kubeconfig file for the namespace watch (its current context). Default:
    /// the in-cluster service account, else `KUBECONFIG` or `~/.kube/config`.
    #[arg(long, env = "MAPGUARD_KUBECONFIG", conflicts_with = "namespaces_file")]
    pub kubeconfig: Option<PathBuf>,
    /// Namespace whose requests are allowed without evaluation; repeatable.
    #[arg(
        long = "exempt-namespace",
        env = "MAPGUARD_EXEMPT_NAMESPACES",
        value_delimiter = ',',
        default_values_t = mapguard_policy::DEFAULT_EXEMPT_NAMESPACES.map(String::from)
    )]
    pub exempt_namespaces: Vec<String>,
    /// Group whose members may change the `mapguard.io/` labels of a
    /// Namespace (policy mapguard.namespace_labels); repeatable.
    #[arg(
        long = "label-admin-group",
        env = "MAPGUARD_LABEL_ADMIN_GROUPS",
        value_delimiter = ',',
        default_values_t = mapguard_policy::DEFAULT_LABEL_ADMIN_GROUPS.map(String::from)
    )]
    pub label_admin_groups: Vec<String>,
    /// User (e.g. `system:serviceaccount:gitops:deployer`) who may change
    /// the `mapguard.io/` labels of a Namespace; repeatable.
    #[arg(
        long = "label-admin-user",
        env = "MAPGUARD_LABEL_ADMIN_USERS",
        value_delimiter = ','
    )]
    pub label_admin_users: Vec<String>,
    /// Enforcement override `PACKAGE=deny|warn|dry-run`; repeatable.
    #[arg(
        long = "enforcement",
        env = "MAPGUARD_ENFORCEMENT",
        value_delimiter = ','
    )]
    pub enforcement: Vec<EnforcementOverride>,
    /// Decision when a request cannot be judged (overload, timeout, error).
    #[arg(long, env = "MAPGUARD_FAILURE_POLICY", value_enum, default_value_t)]
    pub failure_policy: FailurePolicy,
    /// Time limit of one policy evaluation (below the webhook's 10s timeout).
    #[arg(long, env = "MAPGUARD_EVAL_TIMEOUT", value_parser = duration::parse, default_value = "2s")]
    pub eval_timeout: Duration,
    /// Evaluations running at once; further requests wait for a slot.
    #[arg(long, env = "MAPGUARD_MAX_CONCURRENT_EVALUATIONS", default_value_t = default_concurrency())]
    pub max_concurrent_evaluations: usize,
    /// How long a request waits for an evaluation slot before it is judged
    /// by the failure policy as overloaded.
    #[arg(long, env = "MAPGUARD_QUEUE_TIMEOUT", value_parser = duration::parse, default_value = "250ms")]
    pub queue_timeout: Duration,
    /// Largest accepted request body (the API server's own limit is 3 MiB).
    #[arg(long, env = "MAPGUARD_MAX_BODY_BYTES", default_value_t = crate::state::DEFAULT_MAX_BODY_BYTES)]
    pub max_body_bytes: usize,
    /// Most JSON values (objects, arrays, strings, numbers...) a request
    /// body may hold; counted before anything is built from it.
    #[arg(long, env = "MAPGUARD_MAX_JSON_VALUES", default_value_t = crate::state::DEFAULT_MAX_JSON_VALUES)]
    pub max_json_values: usize,
    /// Deepest nesting of JSON a request body may hold.
    #[arg(
        long,
        env = "MAPGUARD_MAX_JSON_DEPTH",
        default_value_t = crate::state::DEFAULT_MAX_JSON_DEPTH,
        value_parser = parse_depth
    )]
    pub max_json_depth: usize,
    /// Memory (bytes) that admission requests may hold at once: bodies
    /// being received, and the estimated trees of requests being judged.
    /// One request may use half of it. Keep it well below the container's
    /// memory limit.
    #[arg(long, env = "MAPGUARD_MAX_REQUEST_MEMORY", default_value_t = crate::evaluator::DEFAULT_MEMORY_BUDGET)]
    pub max_request_memory: usize,
    /// `--client-timeout`, `--max-connections`, `--max-concurrent-streams`.
    #[command(flatten)]
    pub connections: ConnectionLimits,
    /// PEM bundle of the CAs whose client certificates may connect to the
    /// HTTPS port (the API server's, see docs/webhook.md); re-read when it changes
    /// (every --reload-interval). Without it any TLS client may connect.
    #[arg(long, env = "MAPGUARD_CLIENT_CA")]
    pub client_ca: Option<PathBuf>,
    /// A name the client certificate must carry (as subject common name or
    /// DNS subject alternative name); repeatable. Without it any
    /// certificate from --client-ca is accepted.
    #[arg(
        long = "client-name",
        env = "MAPGUARD_CLIENT_NAMES",
        value_delimiter = ',',
        requires = "client_ca"
    )]
    pub client_names: Vec<String>,
    /// Interval of the change checks on the policy directory, the TLS files,
    /// the --client-ca bundle and the namespaces file.
    #[arg(long, env = "MAPGUARD_RELOAD_INTERVAL", value_parser = duration::parse_positive, default_value = "2s")]
    pub reload_interval: Duration,
    /// Also serve Gatekeeper ConstraintTemplates and Constraints applied to
    /// the cluster as objects: watch them, create each template's
    /// constraint CRD, recompile on change (needs the ConstraintTemplate
    /// CRD and the RBAC of manifests/gatekeeper/).
    #[arg(long, env = "MAPGUARD_GATEKEEPER_CRS")]
    pub gatekeeper_crs: bool,
    /// Kinds kept as Gatekeeper's `data.inventory` for referential
    /// templates, as GROUP/VERSION/KIND (`v1/Service`,
    /// `networking.k8s.io/v1/Ingress`); watched through the API server.
    #[arg(long, env = "MAPGUARD_INVENTORY", value_delimiter = ',')]
    pub inventory: Vec<String>,
    /// At most this many objects in the inventory; more are left out and
    /// counted (`mapguard_inventory_dropped_total`).
    #[arg(long, env = "MAPGUARD_INVENTORY_MAX_OBJECTS", default_value_t = 20_000)]
    pub inventory_max_objects: usize,
    /// Let /mutate deny requests that policies deny (by default only
    /// /validate denies; /mutate only patches).
    #[arg(long, env = "MAPGUARD_MUTATE_ENFORCE")]
    pub mutate_enforce: bool,
    /// How long in-flight requests may finish after SIGTERM.
    #[arg(long, env = "MAPGUARD_SHUTDOWN_GRACE", value_parser = duration::parse, default_value = "10s")]
    pub shutdown_grace: Duration,
    /// Log format; `RUST_LOG` sets the filter (default `info`).
    #[arg(long, env = "MAPGUARD_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

fn default_concurrency() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get() * 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 22: the webhook's own grammar stopped at minutes, so the
    /// `1h` every other binary accepted was refused here.
    #[test]
    fn durations_use_the_shared_grammar() {
        let config = Config::try_parse_from([
            "mapguard-webhook",
            "--eval-timeout",
            "1h",
            "--queue-timeout=1m30s",
            "--shutdown-grace=0",
        ])
        .expect("durations of the shared grammar parse");
        assert_eq!(config.eval_timeout, Duration::from_secs(3600));
        assert_eq!(config.queue_timeout, Duration::from_secs(90));
        assert_eq!(config.shutdown_grace, Duration::ZERO);
        assert!(Config::try_parse_from(["x", "--eval-timeout=fast"]).is_err());
        assert!(Config::try_parse_from(["x", "--eval-timeout=-1s"]).is_err());
        assert!(
            Config::try_parse_from(["x", "--reload-interval=0"]).is_err(),
            "a zero polling interval would spin"
        );
    }

    #[test]
    fn defaults_match_the_documentation() {
        let config = Config::try_parse_from(["mapguard-webhook"]).expect("defaults parse");
        assert_eq!(config.listen.to_string(), "0.0.0.0:8443");
        assert_eq!(config.metrics_listen.to_string(), "0.0.0.0:9090");
        assert_eq!(config.failure_policy, FailurePolicy::FailClosed);
        assert_eq!(config.eval_timeout, Duration::from_secs(2));
        assert_eq!(config.max_body_bytes, 3 * 1024 * 1024);
        assert_eq!(config.max_json_values, 200_000);
        assert_eq!(config.max_json_depth, 64);
        assert_eq!(config.max_request_memory, 128 << 20);
        assert_eq!(config.connections.max_connections, 64);
        assert_eq!(config.connections.client_timeout, Duration::from_secs(5));
        assert_eq!(
            crate::Settings::default().body_timeout,
            config.connections.client_timeout,
            "a router built without flags reads bodies as long as the flag's default"
        );
        assert!(config.client_ca.is_none() && config.client_names.is_empty());
        assert_eq!(config.exempt_namespaces, ["mapguard-system", "kube-system"]);
        assert!(config.policies.is_none());
        assert!(config.kubeconfig.is_none());
        assert_eq!(config.label_admin_groups, ["system:masters"]);
        assert!(config.label_admin_users.is_empty());
    }

    #[test]
    fn overrides_parse() {
        let config = Config::try_parse_from([
            "mapguard-webhook",
            "--enforcement",
            "mapguard.privileged=warn",
            "--exempt-namespace",
            "a",
            "--exempt-namespace",
            "b",
            "--failure-policy",
            "fail-open",
        ])
        .expect("flags parse");
        assert_eq!(config.enforcement[0].package, "mapguard.privileged");
        assert_eq!(config.enforcement[0].action, Action::Warn);
        assert_eq!(config.exempt_namespaces, ["a", "b"]);
        assert_eq!(config.failure_policy, FailurePolicy::FailOpen);
        assert!(Config::try_parse_from(["x", "--enforcement", "p=block"]).is_err());
        assert!(
            Config::try_parse_from(["x", "--kubeconfig=k", "--namespaces-file=n"]).is_err(),
            "a kubeconfig is useless in offline mode"
        );
        assert!(
            Config::try_parse_from(["x", "--client-name=kube-apiserver"]).is_err(),
            "names are checked on certificates of --client-ca"
        );
        let config = Config::try_parse_from([
            "x",
            "--client-ca=/ca.pem",
            "--client-name=a,b",
            "--max-json-depth=20",
        ])
        .expect("client flags parse");
        assert_eq!(config.client_names, ["a", "b"]);
        assert_eq!(config.max_json_depth, 20);
        assert!(
            Config::try_parse_from(["x", "--max-json-depth=129"]).is_err(),
            "serde_json stops at 128 levels anyway"
        );
    }
}
