//! Command line of `kubectl-mapguard` (every flag also an environment
//! variable). The cluster flags mean what kubectl's do; `check` takes
//! exactly `mapguard check`'s flags and variables.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use mapguard_cli::config::CheckArgs;
use mapguard_duration as duration;

/// kubectl plugin of mapguard: the Go map races its node agents record
/// (MapViolation records), live and audited, across clusters; and the
/// pre-deploy check of manifests.
#[derive(Debug, Parser)]
#[command(
    name = "kubectl-mapguard",
    bin_name = "kubectl mapguard",
    version,
    about
)]
pub struct Config {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print each Go map race as it happens (namespace/pod, kind, both call
    /// sites, action), until interrupted.
    Trace(TraceArgs),
    /// Watch MapViolation records as they appear and change, like
    /// `kubectl get -w`.
    Watch(WatchArgs),
    /// List MapViolation records, least recently seen first.
    Audit(AuditArgs),
    /// Delete the records last seen longer ago than --older-than.
    DeleteAudit(DeleteAuditArgs),
    /// Judge manifests as the admission webhook would (exit 1 on any deny,
    /// 2 on bad input): `mapguard check`.
    Check(CheckArgs),
}

/// Which clusters, namespaces and records: kubectl's flags.
#[derive(Debug, Clone, Default, Args)]
pub struct ClusterArgs {
    /// Path of the kubeconfig file (default: $KUBECONFIG, merged as kubectl
    /// merges it, else ~/.kube/config).
    #[arg(long, env = "KUBECTL_MAPGUARD_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,

    /// Kubeconfig context(s) to read, comma-separated or repeated (default:
    /// the current context). Each output row names its context when more
    /// than one is read.
    #[arg(long, env = "KUBECTL_MAPGUARD_CONTEXT", value_delimiter = ',')]
    pub context: Vec<String>,

    /// Read every context of the kubeconfig (overrides --context).
    #[arg(long, env = "KUBECTL_MAPGUARD_ALL_CONTEXTS")]
    pub all_contexts: bool,

    /// Kubeconfig cluster to use instead of each context's.
    #[arg(long, env = "KUBECTL_MAPGUARD_CLUSTER")]
    pub cluster: Option<String>,

    /// Kubeconfig user to use instead of each context's.
    #[arg(long, env = "KUBECTL_MAPGUARD_USER")]
    pub user: Option<String>,

    /// Namespace (default: each context's namespace, else `default`).
    #[arg(short = 'n', long, env = "KUBECTL_MAPGUARD_NAMESPACE")]
    pub namespace: Option<String>,

    /// Every namespace (overrides --namespace).
    #[arg(short = 'A', long, env = "KUBECTL_MAPGUARD_ALL_NAMESPACES")]
    pub all_namespaces: bool,

    /// Label selector of the records (e.g. `mapguard.io/kind=concurrent_write`).
    #[arg(short = 'l', long, env = "KUBECTL_MAPGUARD_SELECTOR")]
    pub selector: Option<String>,
}

/// `-o` of record listings; none: a table like `kubectl get`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RecordOutput {
    /// The table with more columns (operations, container, node, Go release, age).
    Wide,
    /// The objects as JSON (`audit`: a List; `watch`: one object a line).
    Json,
    /// The objects as YAML (`audit`: a List; `watch`: one document a change).
    Yaml,
}

/// `-o` of `trace`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TraceOutput {
    /// One line a race, as a sentence.
    Text,
    /// One JSON object a line.
    Json,
}

#[derive(Debug, Args)]
pub struct TraceArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,

    /// Output format.
    #[arg(
        short = 'o',
        long,
        env = "KUBECTL_MAPGUARD_TRACE_OUTPUT",
        value_enum,
        default_value = "text"
    )]
    pub output: TraceOutput,
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,

    /// Output format (default: a table).
    #[arg(short = 'o', long, env = "KUBECTL_MAPGUARD_OUTPUT", value_enum)]
    pub output: Option<RecordOutput>,

    /// Name each change ADDED, MODIFIED or DELETED (a column, or
    /// `{"type": ..., "object": ...}` with -o json|yaml).
    #[arg(long, env = "KUBECTL_MAPGUARD_OUTPUT_WATCH_EVENTS")]
    pub output_watch_events: bool,

    /// Print only changes, not the records that exist when it starts.
    #[arg(long, env = "KUBECTL_MAPGUARD_WATCH_ONLY")]
    pub watch_only: bool,
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,

    /// Output format (default: a table).
    #[arg(short = 'o', long, env = "KUBECTL_MAPGUARD_OUTPUT", value_enum)]
    pub output: Option<RecordOutput>,
}

#[derive(Debug, Args)]
pub struct DeleteAuditArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,

    /// Delete records last seen longer ago than this (`90s`, `45m`, `12h`,
    /// `30d`, `2w`, or combined: `1d12h`).
    #[arg(long, env = "KUBECTL_MAPGUARD_OLDER_THAN", value_parser = duration::parse)]
    pub older_than: std::time::Duration,

    /// Ask the API server to check every delete (RBAC, admission) without
    /// deleting anything (server-side dry run).
    #[arg(long, env = "KUBECTL_MAPGUARD_DRY_RUN")]
    pub dry_run: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn parse(args: &[&str]) -> Result<Config, clap::Error> {
        Config::try_parse_from(std::iter::once("kubectl-mapguard").chain(args.iter().copied()))
    }

    #[test]
    fn cluster_flags_parse_like_kubectl() {
        let Command::Audit(audit) = parse(&[
            "audit",
            "--context",
            "east,west",
            "--context",
            "north",
            "-A",
            "-l",
            "mapguard.io/kind=concurrent_write",
            "-o",
            "wide",
        ])
        .expect("valid flags")
        .command
        else {
            panic!("audit expected");
        };
        assert_eq!(audit.cluster.context, ["east", "west", "north"]);
        assert!(audit.cluster.all_namespaces);
        assert_eq!(
            audit.cluster.selector.as_deref(),
            Some("mapguard.io/kind=concurrent_write")
        );
        assert_eq!(audit.output, Some(RecordOutput::Wide));
        assert!(parse(&["audit", "-o", "table"]).is_err(), "no such format");
    }

    #[test]
    fn delete_audit_needs_a_duration_and_parses_it() {
        assert!(
            parse(&["delete-audit"]).is_err(),
            "--older-than is required"
        );
        assert!(
            parse(&["delete-audit", "--older-than", "30"]).is_err(),
            "a unit is required"
        );
        let Command::DeleteAudit(args) =
            parse(&["delete-audit", "--older-than", "1d12h", "--dry-run"])
                .expect("valid flags")
                .command
        else {
            panic!("delete-audit expected");
        };
        assert_eq!(args.older_than, Duration::from_secs(36 * 3600));
        assert!(args.dry_run);
    }

    #[test]
    fn check_takes_the_ci_commands_flags() {
        let Command::Check(args) = parse(&["check", "-f", "a.yaml", "b/", "-o", "json"])
            .expect("valid flags")
            .command
        else {
            panic!("check expected");
        };
        assert_eq!(args.files.len(), 2);
        assert_eq!(args.output, mapguard_cli::config::Output::Json);
    }
}
