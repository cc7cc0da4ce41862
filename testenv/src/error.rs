//! The crate's error type.

use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

/// Why a control plane could not be started or used.
#[derive(Debug, thiserror::Error)]
pub enum TestEnvError {
    /// A binary is not installed.
    #[error("no executable {path} (install with `sudo bash .ci/install-cluster.sh`, or set {var})")]
    MissingBinary {
        /// Where it was looked for.
        path: PathBuf,
        /// The environment variable that names another one.
        var: &'static str,
    },
    /// Something the one-node cluster needs is not installed.
    #[error("no {path} (install with `sudo bash .ci/install-node.sh` or `make cluster-install`)")]
    NodeNotInstalled {
        /// What was looked for.
        path: PathBuf,
    },
    /// `scripts/cluster.sh` failed.
    #[error("{command} failed ({status}):\n{output}")]
    Script {
        /// The command and what was expected of it.
        command: String,
        /// Its exit status.
        status: ExitStatus,
        /// Its standard output and error.
        output: String,
    },
    /// A file-system or socket operation failed.
    #[error("cannot {what} ({path}): {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file, folder or address.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// rcgen failed.
    #[error("cannot generate the {what}: {source}")]
    Certs {
        /// Which certificate or key.
        what: &'static str,
        /// The rcgen error.
        #[source]
        source: rcgen::Error,
    },
    /// A process could not be started.
    #[error("cannot start {program}: {source}")]
    Spawn {
        /// The binary.
        program: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A process ended before the API server was ready.
    #[error("{name} exited ({status}) before the API server was ready; end of {log_path}:\n{log}")]
    Exited {
        /// `etcd` or `kube-apiserver`.
        name: &'static str,
        /// Its exit status.
        status: ExitStatus,
        /// Its log file (removed with the folder).
        log_path: PathBuf,
        /// The last lines of its log.
        log: String,
    },
    /// `/readyz` did not answer `ok` in time.
    #[error(
        "the API server was not ready after {waited:?} (last answer: {last}); end of {log_path}:\n{log}"
    )]
    NotReady {
        /// How long it was given.
        waited: Duration,
        /// The last error or answer.
        last: String,
        /// Its log file (removed with the folder).
        log_path: PathBuf,
        /// The last lines of its log.
        log: String,
    },
    /// The kubeconfig written for the admin does not load.
    #[error("the kubeconfig {path} does not load: {source}")]
    Kubeconfig {
        /// The file.
        path: PathBuf,
        /// kube's error.
        #[source]
        source: kube::config::KubeconfigError,
    },
    /// An API request failed.
    #[error("cannot {what}: {source}")]
    Kube {
        /// What was being done.
        what: String,
        /// kube's error.
        #[source]
        source: kube::Error,
    },
}

impl TestEnvError {
    /// A child could not bind its port: another process took it between
    /// finding the free port and the bind.
    pub(crate) fn is_port_conflict(&self) -> bool {
        matches!(self, TestEnvError::Exited { log, .. } if log.contains("address already in use"))
    }
}
