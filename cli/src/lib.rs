//! mapguard CI command: judges manifests and runs policy tests.
//!
//! * `mapguard check -f PATH...` wraps every object of the manifests in the
//!   CREATE AdmissionReview the API server would send ([`review`]) and judges
//!   it with the webhook's engine ([`mapguard_policy`]): exit 1 on any deny.
//! * `mapguard policy test [DIR]` runs each `test_` rule on its own.
//!
//! Exit codes: 0 success, 1 a deny or a failed test, 2 unusable input
//! (unreadable or invalid YAML, a broken policy, bad flags).

pub mod check;
pub mod config;
pub mod manifests;
pub mod policy_test;
pub use mapguard_policy::review;

use std::io::Write;
use std::path::PathBuf;

pub use config::Config;
use config::{Command, PolicyCommand};

/// How the command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// Everything allowed / every test passed.
    Ok = 0,
    /// A deny, or a failed test.
    Failed = 1,
    /// Unusable input.
    Error = 2,
}

/// Why a command could not do its job (exit 2).
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Manifest(#[from] manifests::ManifestError),
    #[error(transparent)]
    Policies(#[from] mapguard_policy::LoadError),
    #[error(transparent)]
    Namespaces(#[from] mapguard_policy::NamespaceError),
    #[error(transparent)]
    EngineConfig(#[from] mapguard_policy::ConfigError),
    #[error("{file}, document {document}: {source}")]
    Eval {
        file: PathBuf,
        document: usize,
        source: mapguard_policy::EvalError,
    },
    #[error("cannot write output: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Suite(String),
}

/// Runs the command; errors are printed to `err` and give exit status 2.
pub fn run(config: &Config, out: &mut dyn Write, err: &mut dyn Write) -> ExitStatus {
    let result = match &config.command {
        Command::Check(args) => check::run(args, out),
        Command::Policy(PolicyCommand::Test(args)) => policy_test::run(args, out),
    };
    match result {
        Ok(status) => status,
        Err(e) => {
            // Nothing more useful can be done if stderr is gone.
            let _ = writeln!(err, "error: {e}");
            ExitStatus::Error
        }
    }
}
