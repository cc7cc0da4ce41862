//! Command line of `mapguard` (every flag also an environment variable).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

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
