//! Command line of `mapguard` (every flag also an environment variable).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use mapguard_policy::Action;

/// mapguard CI command: judge Kubernetes manifests with the admission
/// webhook's Rego policies, and run the policies' own tests.
#[derive(Debug, Parser)]
#[command(name = "mapguard", version, about)]
pub struct Config {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Judge manifests as the admission webhook would (exit 1 on any deny).
    Check(CheckArgs),
    /// Work with Rego policies.
    #[command(subcommand)]
    Policy(PolicyCommand),
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Run every `test_` rule on its own (exit 1 on any failure).
    Test(TestArgs),
}

/// Output format of `check`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Manifest files or folders (folders: *.yaml, *.yml, *.json recursively).
    #[arg(short = 'f', long = "filename", env = "MAPGUARD_FILES", value_delimiter = ',', required = true, num_args = 1..)]
    pub files: Vec<PathBuf>,

    /// Folder of *.rego policies (default: the policies built into mapguard).
    #[arg(long, env = "MAPGUARD_POLICIES")]
    pub policies: Option<PathBuf>,

    /// Namespace objects (kubectl get ns -o yaml) giving policies
    /// data.kubernetes.namespaces; Namespace objects among the manifests are
    /// added too.
    #[arg(long, env = "MAPGUARD_NAMESPACES")]
    pub namespaces: Option<PathBuf>,

    /// Namespace for namespaced objects that name none (kubectl's default).
    #[arg(
        short = 'n',
        long = "namespace",
        env = "MAPGUARD_NAMESPACE",
        default_value = "default"
    )]
    pub namespace: String,

    /// Engine configuration (exemptNamespaces, enforcement, evalTimeoutMs).
    #[arg(long = "engine-config", env = "MAPGUARD_ENGINE_CONFIG")]
    pub engine_config: Option<PathBuf>,

    /// Namespace exempted from evaluation (repeatable; replaces the default
    /// mapguard-system and kube-system, and the engine config's list).
    #[arg(
        long = "exempt-namespace",
        env = "MAPGUARD_EXEMPT_NAMESPACES",
        value_delimiter = ','
    )]
    pub exempt_namespaces: Vec<String>,

    /// PACKAGE=ACTION (deny, warn or dry-run): overrides a policy package's
    /// enforcement action (repeatable).
    #[arg(long = "enforcement", env = "MAPGUARD_ENFORCEMENT", value_delimiter = ',', value_parser = mapguard_policy::parse_enforcement_override)]
    pub enforcement: Vec<(String, Action)>,

    /// Time limit of one object's evaluation, in milliseconds (0: none).
    /// It guards against runaway policies, not latency: CI runners are often
    /// loaded, so the default is far above the webhook's. Overrides the
    /// engine config's evalTimeoutMs.
    #[arg(long = "eval-timeout-ms", env = "MAPGUARD_EVAL_TIMEOUT_MS")]
    pub eval_timeout_ms: Option<u64>,

    /// Output format.
    #[arg(
        short = 'o',
        long = "output",
        env = "MAPGUARD_OUTPUT",
        value_enum,
        default_value = "text"
    )]
    pub output: Output,
}

#[derive(Debug, Args)]
pub struct TestArgs {
    /// Folder of *.rego policies and their *_test.rego files.
    #[arg(env = "MAPGUARD_POLICIES", default_value = "policies/")]
    pub dir: PathBuf,

    /// Also list passing tests' durations.
    #[arg(short, long, env = "MAPGUARD_VERBOSE")]
    pub verbose: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_flags_parse() {
        let config = Config::try_parse_from([
            "mapguard",
            "check",
            "-f",
            "a.yaml",
            "b/",
            "--enforcement",
            "p.q=dry-run",
            "--exempt-namespace",
            "x,y",
            "-o",
            "json",
        ])
        .expect("valid flags");
        let Command::Check(args) = config.command else {
            panic!("check subcommand expected");
        };
        assert_eq!(args.files.len(), 2);
        assert_eq!(args.enforcement, vec![("p.q".to_string(), Action::DryRun)]);
        assert_eq!(args.exempt_namespaces, vec!["x", "y"]);
        assert_eq!(args.output, Output::Json);
        assert!(
            Config::try_parse_from(["mapguard", "check", "-f", "a", "--enforcement", "p=block"])
                .is_err()
        );
        assert!(
            Config::try_parse_from(["mapguard", "check"]).is_err(),
            "-f is required"
        );
    }
}
