//! `kubectl-mapguard`, the kubectl plugin of mapguard: what platform teams
//! use day to day to see the Go map races that mapguard's node agents
//! record, and to check manifests before deploying them.
//!
//! * `trace` — each race as it happens ([`trace`]), from the `MapViolation`
//!   records' counts.
//! * `watch` — the records as they appear and change ([`watch`]), like
//!   `kubectl get -w`.
//! * `audit` — the records, least recently seen first ([`audit`]);
//!   `delete-audit --older-than D` deletes the stale ones
//!   ([`delete_audit`]), all or nothing under RBAC.
//! * `check -f PATH...` — `mapguard check` itself (crate `mapguard-cli`
//!   over the webhook's engine `mapguard-policy`).
//!
//! Clusters are chosen as kubectl chooses them ([`clusters`]), several
//! contexts at once if asked; every row then names its context.
//!
//! Exit codes: 0 success; 1 a deny (`check`), a refusal or an unreadable
//! cluster; 2 bad input (flags, kubeconfig, manifests).

pub mod age;
pub mod audit;
pub mod clusters;
pub mod config;
pub mod delete_audit;
pub mod error;
pub mod follow;
pub mod records;
pub mod table;
pub mod trace;
pub mod watch;

use std::io::Write;

use config::Command;
pub use config::Config;
pub use error::PluginError;

/// How the command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    Ok = 0,
    /// A deny, a refusal, a cluster that could not be read.
    Failed = 1,
    /// Unusable input.
    BadInput = 2,
}

/// Runs the command; errors are printed to `err`.
pub async fn run(config: Config, out: &mut dyn Write, err: &mut dyn Write) -> ExitStatus {
    let result = match config.command {
        Command::Check(args) => {
            let check = mapguard_cli::Config {
                command: mapguard_cli::config::Command::Check(args),
            };
            return match mapguard_cli::run(&check, out, err) {
                mapguard_cli::ExitStatus::Ok => ExitStatus::Ok,
                mapguard_cli::ExitStatus::Failed => ExitStatus::Failed,
                mapguard_cli::ExitStatus::Error => ExitStatus::BadInput,
            };
        }
        Command::Audit(args) => match clusters::targets(&args.cluster).await {
            Ok(targets) => audit::run(&args, &targets, out, err).await,
            Err(e) => Err(e),
        },
        Command::DeleteAudit(args) => match clusters::targets(&args.cluster).await {
            Ok(targets) => delete_audit::run(&args, &targets, out, err).await,
            Err(e) => Err(e),
        },
        Command::Watch(args) => match clusters::targets(&args.cluster).await {
            Ok(targets) => watch::run(&args, &targets, out, err).await,
            Err(e) => Err(e),
        },
        Command::Trace(args) => match clusters::targets(&args.cluster).await {
            Ok(targets) => trace::run(&args, &targets, out, err).await,
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(true) => ExitStatus::Ok,
        Ok(false) => ExitStatus::Failed,
        // The reader went away (`| head`): nothing more to say to anyone.
        Err(PluginError::Io(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitStatus::Ok,
        Err(e) => {
            // Nothing more useful can be done if stderr is gone.
            let _ = writeln!(err, "error: {e}");
            if e.is_bad_input() {
                ExitStatus::BadInput
            } else {
                ExitStatus::Failed
            }
        }
    }
}
