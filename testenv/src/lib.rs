//! A real Kubernetes control plane for tests: etcd and kube-apiserver on
//! 127.0.0.1, started the way controller-runtime's envtest starts them.
//!
//! [`TestEnv::start`] picks free ports, makes a temporary folder with fresh
//! certificates (a CA, the API server's serving certificate, an admin client
//! certificate in group `system:masters`, a service-account signing key), a
//! kubeconfig for that admin, starts etcd and kube-apiserver and waits for
//! `/readyz` and the `default` namespace. Dropping the [`TestEnv`] stops
//! exactly those two processes (SIGTERM, then SIGKILL after a bound: open
//! watches can delay the API server's exit) and removes the folder.
//!
//! There is no controller-manager, scheduler or kubelet: Pods stay Pending
//! (bind one with `spec.nodeName` to a Node made by
//! [`TestEnv::create_node`]), no ServiceAccount is injected (that admission
//! plugin is off), no Endpoints are reconciled. Admission webhooks are
//! called over `clientConfig.url` (see [`TestEnv::register_validating_webhook`]).
//! [`BoundPod`] makes the bound Pods the node agent's, the responder's and
//! the plugin's tests watch.
//!
//! The binaries come from `.ci/install-cluster.sh` (see [`binaries`]); a
//! test without them is skipped loudly, or fails under `CI=true`:
//!
//! ```no_run
//! # async fn demo() {
//! let Some(env) = mapguard_testenv::TestEnv::start_or_skip("my_test").await else {
//!     return;
//! };
//! let client = env.client();
//! # }
//! ```
//!
//! A start costs 2–6 s and about 320 MB: share one per test binary.
//!
//! For Pods that really run, [`NodeCluster`] holds a one-node cluster
//! (kubelet, containerd, runc, CNI) started by `scripts/cluster.sh`.

pub mod binaries;
mod certs;
mod error;
mod files;
mod node;
mod objects;
mod pods;
mod process;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use kube::Api;

pub use binaries::{Binaries, install_dir, kube_version, require_control_plane};
pub use certs::{ADMIN_GROUP, ADMIN_USER};
pub use error::TestEnvError;
pub use node::{NODE_NAME, NODE_NETNS, NodeCluster, cluster_script};
pub use objects::url_client_config;
pub use pods::{BoundPod, POD_IMAGE, ensure_namespace};

use certs::ControlPlaneCerts;
use files::{CertFiles, make_dir, write_kubeconfig};
use process::{Process, free_port};

/// Settings of a start.
#[derive(Debug, Clone)]
pub struct Options {
    /// Extra kube-apiserver flags, after the defaults (a later flag wins).
    pub apiserver_args: Vec<String>,
    /// How long to wait for `/readyz` (2–6 s is usual here).
    pub ready_timeout: Duration,
    /// How long each process may take to exit after SIGTERM before SIGKILL.
    pub stop_grace: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            apiserver_args: Vec::new(),
            ready_timeout: Duration::from_secs(60),
            stop_grace: Duration::from_secs(5),
        }
    }
}

/// Bound of one request while waiting for readiness.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Starts with free ports are retried this many times when a port was taken
/// in between.
const START_ATTEMPTS: u32 = 3;

/// A running etcd and kube-apiserver, stopped and removed on drop.
#[derive(Debug)]
pub struct TestEnv {
    // Stopped in this order by `Drop`: the API server before its storage.
    apiserver: Process,
    etcd: Process,
    dir: PathBuf,
    url: String,
    kubeconfig: PathBuf,
    config: kube::Config,
    ca_cert: String,
    binaries: Binaries,
    stop_grace: Duration,
    /// What restarts the API server on the same port ([`TestEnv::restart_apiserver`]).
    apiserver_args: Vec<OsString>,
    ready_timeout: Duration,
}

impl TestEnv {
    /// Starts a control plane with the installed binaries and default
    /// options.
    pub async fn start() -> Result<Self, TestEnvError> {
        Self::start_with(Binaries::find()?, Options::default()).await
    }

    /// Starts one for test `test`, or returns `None` after a loud
    /// `*** SKIPPED ***` line if the binaries are not installed (panics
    /// instead under `CI=true`; see [`require_control_plane`]). Panics with
    /// the API server's log if it does not start.
    pub async fn start_or_skip(test: &str) -> Option<Self> {
        let binaries = require_control_plane(test)?;
        let started = Instant::now();
        match Self::start_with(binaries, Options::default()).await {
            Ok(env) => {
                eprintln!(
                    "{test}: kube-apiserver {} ready at {} in {:.1?}",
                    kube_version(),
                    env.url,
                    started.elapsed()
                );
                Some(env)
            }
            Err(e) => panic!("{test}: {e}"),
        }
    }

    /// Starts a control plane with `binaries` and `options`.
    pub async fn start_with(binaries: Binaries, options: Options) -> Result<Self, TestEnvError> {
        let dir = make_dir()?;
        let result = Self::start_in(&dir, binaries, &options).await;
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&dir);
        }
        result
    }

    async fn start_in(
        dir: &Path,
        binaries: Binaries,
        options: &Options,
    ) -> Result<Self, TestEnvError> {
        let certs = ControlPlaneCerts::generate()?;
        let files = CertFiles::write(dir, &certs)?;
        let mut attempt = 1;
        loop {
            match Self::launch(dir, &binaries, options, &certs, &files).await {
                Err(e) if e.is_port_conflict() && attempt < START_ATTEMPTS => attempt += 1,
                result => return result,
            }
        }
    }

    /// One attempt with fresh ports and an empty etcd.
    async fn launch(
        dir: &Path,
        binaries: &Binaries,
        options: &Options,
        certs: &ControlPlaneCerts,
        files: &CertFiles,
    ) -> Result<Self, TestEnvError> {
        let data = dir.join("etcd-data");
        let _ = std::fs::remove_dir_all(&data);
        let (client_port, peer_port, secure_port) = (free_port()?, free_port()?, free_port()?);
        let etcd_url = format!("http://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let etcd_args: Vec<OsString> = [
            "--name=testenv".to_owned(),
            format!("--data-dir={}", data.display()),
            format!("--listen-client-urls={etcd_url}"),
            format!("--advertise-client-urls={etcd_url}"),
            format!("--listen-peer-urls={peer_url}"),
            format!("--initial-advertise-peer-urls={peer_url}"),
            format!("--initial-cluster=testenv={peer_url}"),
            // Test data need not survive a crash; fsync dominates on shared disks.
            "--unsafe-no-fsync=true".to_owned(),
        ]
        .into_iter()
        .map(OsString::from)
        .collect();
        let mut etcd = Process::spawn("etcd", &binaries.etcd, &etcd_args, &dir.join("etcd.log"))?;

        let apiserver_args: Vec<OsString> = [
            format!("--etcd-servers={etcd_url}"),
            "--bind-address=127.0.0.1".to_owned(),
            "--advertise-address=127.0.0.1".to_owned(),
            format!("--secure-port={secure_port}"),
            format!("--cert-dir={}", files.dir.display()),
            format!("--tls-cert-file={}", files.serving_cert.display()),
            format!("--tls-private-key-file={}", files.serving_key.display()),
            format!("--client-ca-file={}", files.ca_cert.display()),
            "--authorization-mode=RBAC".to_owned(),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".to_owned(),
            format!(
                "--service-account-key-file={}",
                files.service_account_public_key.display()
            ),
            format!(
                "--service-account-signing-key-file={}",
                files.service_account_key.display()
            ),
            "--service-cluster-ip-range=10.0.0.0/24".to_owned(),
            // No controller-manager: nothing would create the tokens this
            // plugin demands of every Pod.
            "--disable-admission-plugins=ServiceAccount".to_owned(),
            // Only one API server, and no Endpoints to keep for it.
            "--endpoint-reconciler-type=none".to_owned(),
            // As kubeadm and every managed cluster: policies, not the API
            // server, decide on privileged Pods.
            "--allow-privileged=true".to_owned(),
        ]
        .into_iter()
        .chain(options.apiserver_args.iter().cloned())
        .map(OsString::from)
        .collect();
        let mut apiserver = Process::spawn(
            "kube-apiserver",
            &binaries.kube_apiserver,
            &apiserver_args,
            &dir.join("kube-apiserver.log"),
        )?;

        let url = format!("https://127.0.0.1:{secure_port}");
        let kubeconfig = dir.join("kubeconfig");
        let config = write_kubeconfig(&kubeconfig, &url, certs).await?;
        let client = new_client(&config)?;
        wait_ready(&client, &mut apiserver, &mut etcd, options).await?;
        Ok(Self {
            apiserver,
            etcd,
            dir: dir.to_owned(),
            url,
            kubeconfig,
            config,
            ca_cert: certs.ca_cert.clone(),
            binaries: binaries.clone(),
            stop_grace: options.stop_grace,
            apiserver_args,
            ready_timeout: options.ready_timeout,
        })
    }

    /// Stops kube-apiserver (SIGTERM, SIGKILL after the grace period) and
    /// keeps etcd with its data: clients get "connection refused" until
    /// [`TestEnv::restart_apiserver`]. For tests of what a client does
    /// while the API server is away.
    pub fn stop_apiserver(&mut self) {
        self.apiserver.stop(self.stop_grace);
    }

    /// Starts kube-apiserver again with the same flags, port and
    /// certificates over the same etcd, and waits for `/readyz`. Clients
    /// made before reconnect by themselves.
    pub async fn restart_apiserver(&mut self) -> Result<(), TestEnvError> {
        self.stop_apiserver();
        let log = self.apiserver.log().to_owned();
        self.apiserver = Process::spawn(
            "kube-apiserver",
            &self.binaries.kube_apiserver,
            &self.apiserver_args,
            &log,
        )?;
        let client = new_client(&self.config)?;
        let options = Options {
            apiserver_args: Vec::new(),
            ready_timeout: self.ready_timeout,
            stop_grace: self.stop_grace,
        };
        wait_ready(&client, &mut self.apiserver, &mut self.etcd, &options).await
    }

    /// A new client for the admin. Call it on the runtime that uses it: a
    /// `kube::Client` runs a task on the runtime that created it.
    pub fn client(&self) -> kube::Client {
        new_client(&self.config).expect("a client from the config that reached /readyz")
    }

    /// The admin's kubeconfig file (for kubectl, or `--kubeconfig` flags).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// `https://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// PEM of the CA that signed the API server's serving certificate.
    pub fn ca_cert_pem(&self) -> &str {
        &self.ca_cert
    }

    /// The temporary folder (logs, certificates, etcd data); removed on drop.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The API server's log file.
    pub fn apiserver_log(&self) -> &Path {
        self.apiserver.log()
    }

    /// The last `lines` lines of the API server's log (for failure messages).
    pub fn apiserver_log_tail(&self, lines: usize) -> String {
        self.apiserver.log_tail(lines)
    }

    /// Process ids of the API server and etcd.
    pub fn pids(&self) -> (u32, u32) {
        (self.apiserver.pid(), self.etcd.pid())
    }

    /// `kubectl --kubeconfig KUBECONFIG`, if kubectl is installed.
    pub fn kubectl(&self) -> Option<Command> {
        let mut command = Command::new(self.binaries.kubectl.as_ref()?);
        command.arg("--kubeconfig").arg(&self.kubeconfig);
        Some(command)
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        self.apiserver.stop(self.stop_grace);
        self.etcd.stop(self.stop_grace);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Polls `/readyz` (bounded), failing early with the log of a process that
/// ended. Also waits for the `default` namespace, which the API server
/// creates shortly after it reports ready.
async fn wait_ready(
    client: &kube::Client,
    apiserver: &mut Process,
    etcd: &mut Process,
    options: &Options,
) -> Result<(), TestEnvError> {
    let started = Instant::now();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    loop {
        for process in [&mut *etcd, &mut *apiserver] {
            if let Some(status) = process.exited() {
                return Err(TestEnvError::Exited {
                    name: process.name(),
                    status,
                    log_path: process.log().to_owned(),
                    log: process.log_tail(40),
                });
            }
        }
        let readyz = http::Request::get("/readyz")
            .body(Vec::new())
            .expect("a GET request builds");
        // Each request bounded too: a server that accepts and never answers
        // would otherwise hold the loop for the client's read timeout.
        let answer = tokio::time::timeout(REQUEST_TIMEOUT, async {
            match client.request_text(readyz).await {
                Ok(text) if text.trim() == "ok" => match namespaces.get_opt("default").await {
                    Ok(Some(_)) => Ok(()),
                    Ok(None) => Err("ready, no default namespace yet".to_owned()),
                    Err(e) => Err(format!("GET namespace default: {e}")),
                },
                Ok(text) => Err(text),
                Err(e) => Err(e.to_string()),
            }
        })
        .await;
        let last = match answer {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(last)) => last,
            Err(_) => format!("no answer within {REQUEST_TIMEOUT:?}"),
        };
        if started.elapsed() > options.ready_timeout {
            return Err(TestEnvError::NotReady {
                waited: options.ready_timeout,
                last,
                log_path: apiserver.log().to_owned(),
                log: apiserver.log_tail(40),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn new_client(config: &kube::Config) -> Result<kube::Client, TestEnvError> {
    kube::Client::try_from(config.clone()).map_err(|source| TestEnvError::Kube {
        what: "build a client".to_owned(),
        source,
    })
}
