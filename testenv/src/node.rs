//! A real one-node cluster for end-to-end tests: `scripts/cluster.sh up`
//! (etcd, the control plane, a kubelet, containerd with runc and CNI, in a
//! network namespace of its own; see the script's header), held by a
//! [`NodeCluster`] that runs `scripts/cluster.sh down` when dropped.
//!
//! ```no_run
//! # async fn demo() {
//! let Some(cluster) = mapguard_testenv::NodeCluster::up_or_skip("my_test").await else {
//!     return;
//! };
//! let client = cluster.client(); // admin (group system:masters)
//! # }
//! ```
//!
//! The cluster is machine-wide (one network namespace, one state folder, the
//! host's 127.0.0.1:6443): hold one per test binary. If one already runs
//! (`make cluster-up`), it is used and left running. A start costs about
//! 15 s here (node Ready in about 12 s, `down` about 10 s). Without root
//! the test is skipped loudly; without the installed binaries
//! (`MAPGUARD_KUBE_BIN` names another folder) too, except under `CI=true`,
//! where it fails.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use crate::TestEnvError;
use crate::binaries::{install_dir, is_executable, kube_version};
use crate::files::load_kubeconfig;

/// The script that starts and stops the cluster.
pub fn cluster_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/cluster.sh")
}

/// The network namespace the node runs in (`scripts/cluster.sh`'s `NETNS`).
pub const NODE_NETNS: &str = "mapguard-node";

/// The Node's name.
pub const NODE_NAME: &str = "mapguard-node";

/// A running one-node cluster; stopped on drop if this value started it.
#[derive(Debug)]
pub struct NodeCluster {
    kubeconfig: PathBuf,
    containerd_address: PathBuf,
    config: kube::Config,
    started_here: bool,
}

impl NodeCluster {
    /// Starts the cluster (or finds it running) for test `test`, or returns
    /// `None` after a loud `*** SKIPPED ***` line when not root or when the
    /// binaries are not installed (panics instead of the latter under
    /// `CI=true`). Panics with the script's output if the start fails.
    pub async fn up_or_skip(test: &str) -> Option<Self> {
        if !nix::unistd::geteuid().is_root() {
            skip(
                test,
                "not root (the one-node cluster needs namespaces, mounts and cgroups)",
            );
            return None;
        }
        if let Err(why) = check_installed() {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("{test}: {why}; CI=true, where the cluster tests must run");
            }
            skip(test, &why.to_string());
            return None;
        }
        let started = Instant::now();
        match Self::up().await {
            Ok(cluster) => {
                eprintln!(
                    "{test}: one-node Kubernetes {} {} in {:.1?} (KUBECONFIG={})",
                    kube_version(),
                    if cluster.started_here {
                        "started"
                    } else {
                        "already running"
                    },
                    started.elapsed(),
                    cluster.kubeconfig.display()
                );
                Some(cluster)
            }
            Err(e) => panic!("{test}: {e}"),
        }
    }

    /// Finds the cluster running (`scripts/cluster.sh status`) or starts it
    /// (`scripts/cluster.sh up`), and loads its admin kubeconfig.
    pub async fn up() -> Result<Self, TestEnvError> {
        let status = run_script(&["status"])?;
        let (output, started_here) = if status.status.success() {
            (status, false)
        } else {
            let up = run_script(&["up"])?;
            if !up.status.success() {
                return Err(script_failed("up", &up));
            }
            (up, true)
        };
        let stdout = String::from_utf8_lossy(&output.stdout);
        let kubeconfig = exported(&stdout, "KUBECONFIG")
            .ok_or_else(|| script_failed("up (no `export KUBECONFIG=` line)", &output))?;
        let containerd_address = exported(&stdout, "MAPGUARD_CONTAINERD_ADDRESS")
            .ok_or_else(|| script_failed("up (no containerd address)", &output))?;
        let cluster = Self {
            config: load_kubeconfig(&kubeconfig).await?,
            kubeconfig,
            containerd_address,
            started_here,
        };
        Ok(cluster)
    }

    /// A new client for the admin. Call it on the runtime that uses it.
    pub fn client(&self) -> kube::Client {
        kube::Client::try_from(self.config.clone()).expect("a client from the cluster's kubeconfig")
    }

    /// The admin's kubeconfig (what `cluster-up` prints).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// containerd's socket (images for Pods go into its `k8s.io` namespace).
    pub fn containerd_address(&self) -> &Path {
        &self.containerd_address
    }

    /// The cluster's state folder (logs in `logs/`); removed by `down`.
    pub fn state_dir(&self) -> &Path {
        self.kubeconfig
            .parent()
            .expect("the kubeconfig is in the state folder")
    }

    /// Whether this value started the cluster (and so stops it on drop).
    pub fn started_here(&self) -> bool {
        self.started_here
    }

    /// Imports an OCI or docker archive into containerd's `k8s.io` namespace,
    /// where the kubelet finds it (use `imagePullPolicy: Never`).
    pub fn import_image(&self, archive: &Path) -> Result<(), TestEnvError> {
        let output = Command::new(cluster_script())
            .arg("import")
            .arg(archive)
            .output()
            .map_err(|source| TestEnvError::Spawn {
                program: cluster_script(),
                source,
            })?;
        if output.status.success() {
            Ok(())
        } else {
            Err(script_failed("import", &output))
        }
    }

    /// `kubectl --kubeconfig KUBECONFIG`.
    pub fn kubectl(&self) -> Command {
        let mut command = Command::new(install_dir().join("kubectl"));
        command.arg("--kubeconfig").arg(&self.kubeconfig);
        command
    }
}

impl Drop for NodeCluster {
    fn drop(&mut self) {
        if !self.started_here {
            return;
        }
        // Called from Drop, maybe while unwinding: report, never panic.
        match run_script(&["down"]) {
            Ok(output) if output.status.success() => {}
            Ok(output) => eprintln!("{}", script_failed("down", &output)),
            Err(e) => eprintln!("scripts/cluster.sh down: {e}"),
        }
    }
}

/// Everything `scripts/cluster.sh up` needs, or the first thing missing.
fn check_installed() -> Result<(), TestEnvError> {
    // The script reads the same variable.
    let bin = std::env::var_os("MAPGUARD_KUBE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(install_dir);
    let mut needed: Vec<PathBuf> = [
        "etcd",
        "kube-apiserver",
        "kubectl",
        "kube-controller-manager",
        "kube-scheduler",
        "kube-proxy",
        "kubelet",
    ]
    .iter()
    .map(|b| bin.join(b))
    .collect();
    needed.extend(
        ["containerd", "runc", "ctr", "socat", "buildah"]
            .iter()
            .map(|b| Path::new("/usr/bin").join(b)),
    );
    needed.push(Path::new("/usr/lib/cni/bridge").to_owned());
    for path in needed {
        // runc is in /usr/sbin on Debian.
        let found = is_executable(&path)
            || path
                .file_name()
                .is_some_and(|name| is_executable(&Path::new("/usr/sbin").join(name)));
        if !found {
            return Err(TestEnvError::NodeNotInstalled { path });
        }
    }
    let pause = install_dir().with_file_name("images").join("pause.oci.tar");
    if !pause.is_file() {
        return Err(TestEnvError::NodeNotInstalled { path: pause });
    }
    Ok(())
}

fn skip(test: &str, why: &str) {
    // Written to the process's stderr directly: the test harness captures
    // `eprintln!` of passing tests, which would hide the skip.
    let _ = writeln!(std::io::stderr(), "\n*** SKIPPED {test}: {why} ***\n");
}

fn run_script(args: &[&str]) -> Result<Output, TestEnvError> {
    Command::new("bash")
        .arg(cluster_script())
        .args(args)
        .output()
        .map_err(|source| TestEnvError::Spawn {
            program: cluster_script(),
            source,
        })
}

fn script_failed(what: &str, output: &Output) -> TestEnvError {
    TestEnvError::Script {
        command: format!("scripts/cluster.sh {what}"),
        status: output.status,
        output: format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    }
}

/// VALUE of the last `export NAME=VALUE` line.
fn exported(stdout: &str, name: &str) -> Option<PathBuf> {
    let prefix = format!("export {name}=");
    stdout
        .lines()
        .rev()
        .find_map(|line| line.strip_prefix(&prefix))
        .map(PathBuf::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_export_line_wins() {
        let out = "export MAPGUARD_CONTAINERD_ADDRESS=/s/c.sock\nexport KUBECONFIG=/s/kubeconfig\n";
        assert_eq!(
            exported(out, "KUBECONFIG").as_deref(),
            Some(Path::new("/s/kubeconfig"))
        );
        assert_eq!(
            exported(out, "MAPGUARD_CONTAINERD_ADDRESS").as_deref(),
            Some(Path::new("/s/c.sock"))
        );
        assert_eq!(exported(out, "PATH"), None);
    }

    #[test]
    fn the_script_is_in_the_repository() {
        assert!(cluster_script().is_file(), "{}", cluster_script().display());
    }
}
