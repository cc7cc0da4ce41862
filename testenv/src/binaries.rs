//! Where the control-plane binaries are, and what a test does without them.
//!
//! `.ci/install-cluster.sh` installs them into
//! `/opt/mapguard/kube/<version>/bin`, `<version>` being the
//! `k8s.io/kubernetes` release required by `tests/cluster/apiserver/go.mod`;
//! this module reads the same line (compiled in), so the two cannot drift.
//! `MAPGUARD_KUBE_APISERVER`, `MAPGUARD_ETCD` and `MAPGUARD_KUBECTL` name
//! other binaries.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::TestEnvError;

/// The Go module that pins the Kubernetes release.
const GO_MOD: &str = include_str!("../../tests/cluster/apiserver/go.mod");

/// Root of the installed releases.
pub const INSTALL_ROOT: &str = "/opt/mapguard/kube";

/// The Kubernetes release the tests run (e.g. `1.37.2`), from the Go module.
pub fn kube_version() -> &'static str {
    static VERSION: OnceLock<String> = OnceLock::new();
    VERSION.get_or_init(|| {
        parse_kube_version(GO_MOD)
            .expect("tests/cluster/apiserver/go.mod requires k8s.io/kubernetes vX.Y.Z")
    })
}

/// `X.Y.Z` of the `k8s.io/kubernetes vX.Y.Z` requirement in a go.mod.
fn parse_kube_version(go_mod: &str) -> Option<String> {
    go_mod.lines().find_map(|line| {
        let line = line.trim_start().strip_prefix("require").unwrap_or(line);
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("k8s.io/kubernetes"), Some(v)) => v
                .strip_prefix('v')
                .filter(|v| v.starts_with(|c: char| c.is_ascii_digit()))
                .map(str::to_owned),
            _ => None,
        }
    })
}

/// The folder `.ci/install-cluster.sh` installs this release's binaries into.
pub fn install_dir() -> PathBuf {
    Path::new(INSTALL_ROOT).join(kube_version()).join("bin")
}

/// Paths of the control-plane binaries.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// `kube-apiserver`.
    pub kube_apiserver: PathBuf,
    /// `etcd`.
    pub etcd: PathBuf,
    /// `kubectl`, if installed (the API server does not need it).
    pub kubectl: Option<PathBuf>,
}

impl Binaries {
    /// Finds the binaries: each from its environment variable if set, else
    /// from [`install_dir`]. Fails naming the first one missing.
    pub fn find() -> Result<Self, TestEnvError> {
        let locate = |var: &'static str, name: &str| {
            std::env::var_os(var)
                .map(PathBuf::from)
                .unwrap_or_else(|| install_dir().join(name))
        };
        let required = |var: &'static str, name: &str| {
            let path = locate(var, name);
            if is_executable(&path) {
                Ok(path)
            } else {
                Err(TestEnvError::MissingBinary { path, var })
            }
        };
        let kubectl = locate("MAPGUARD_KUBECTL", "kubectl");
        Ok(Self {
            kube_apiserver: required("MAPGUARD_KUBE_APISERVER", "kube-apiserver")?,
            etcd: required("MAPGUARD_ETCD", "etcd")?,
            kubectl: is_executable(&kubectl).then_some(kubectl),
        })
    }
}

pub(crate) fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The binaries if installed; otherwise prints a loud `*** SKIPPED ... ***`
/// line naming `test` and returns `None` — except under `CI=true`, where the
/// control plane must be installed and a skip would hide a broken set-up, so
/// it panics.
pub fn require_control_plane(test: &str) -> Option<Binaries> {
    match Binaries::find() {
        Ok(binaries) => Some(binaries),
        Err(why) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("{test}: {why}; CI=true, where the cluster tests must run")
        }
        Err(why) => {
            // Written to the process's stderr directly: the test harness
            // captures `eprintln!` of passing tests, which would hide the skip.
            let _ = writeln!(
                std::io::stderr(),
                "\n*** SKIPPED {test}: {why}; cluster tests need kube-apiserver and etcd ***\n"
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_comes_from_the_go_module() {
        let v = kube_version();
        let parts: Vec<&str> = v.split('.').collect();
        assert_eq!(parts.len(), 3, "{v}");
        assert!(
            parts.iter().all(|p| p.parse::<u32>().is_ok()),
            "not X.Y.Z: {v}"
        );
        assert_eq!(
            install_dir(),
            Path::new(&format!("/opt/mapguard/kube/{v}/bin"))
        );
    }

    #[test]
    fn requirement_lines_parse_in_both_forms() {
        assert_eq!(
            parse_kube_version("module x\n\nrequire k8s.io/kubernetes v1.36.3\n").as_deref(),
            Some("1.36.3")
        );
        let block = "// k8s.io/kubernetes module\nrequire (\n\tk8s.io/api v0.37.2\n\tk8s.io/kubernetes v1.37.2 // indirect\n)\n";
        assert_eq!(parse_kube_version(block).as_deref(), Some("1.37.2"));
        assert_eq!(
            parse_kube_version("replace k8s.io/api => k8s.io/api v0.37.2\n"),
            None
        );
    }
}
