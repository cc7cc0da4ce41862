//! Start-up in dependency order: policies, namespace source, certificate,
//! state, listeners, reload pollers. `main.rs` calls [`Webhook::build`] and
//! [`Webhook::start`]; tests do the same with `127.0.0.1:0` addresses.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Namespace;
use mapguard_kube::{ClientError, Reflector};
use mapguard_policy::{EngineConfig, LoadError, NamespaceError};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::evaluator::Evaluator;
use crate::metrics::Metrics;
use crate::namespaces::{self, FileNamespaces, NamespaceCache, NamespaceSource};
use crate::policies::{PolicySource, PolicyStore};
use crate::server::{serve_plain, serve_tls};
use crate::state::{AppState, Settings};
use crate::tls::{self, ReloadableCert, ReloadableClientCa, TlsError};
use crate::watch::{Watched, fingerprint_dir, fingerprint_files, poll_changes, reloaded};
use crate::{app, ops_app};

/// Why the webhook could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// An `--inventory` kind is not GROUP/VERSION/KIND.
    #[error(transparent)]
    InventoryKind(#[from] crate::inventory::KindError),
    /// The policies do not compile.
    #[error("cannot load policies: {0}")]
    Policies(#[from] LoadError),
    /// The namespaces file is unusable.
    #[error("cannot load namespaces: {0}")]
    Namespaces(#[from] NamespaceError),
    /// The serving certificate is unusable.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// No namespaces file and no cluster to watch.
    #[error("no --namespaces-file given and no Kubernetes API reachable: {0}")]
    Kube(#[source] ClientError),
    /// The `--kubeconfig` file is unusable.
    #[error(transparent)]
    Kubeconfig(ClientError),
    /// The configured limits contradict each other.
    #[error("{0}")]
    Limits(String),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// A configured webhook, not yet serving.
pub struct Webhook {
    state: AppState,
    cert: Arc<ReloadableCert>,
    /// Client certificate checks (`--client-ca`).
    clients: Option<Arc<ReloadableClientCa>>,
    namespaces_file: Option<Arc<FileNamespaces>>,
    kube: Option<(kube::Client, Reflector<Namespace>, Arc<NamespaceCache>)>,
    /// A client for the Gatekeeper objects' watch (`--gatekeeper-crs`).
    gatekeeper: Option<kube::Client>,
    /// The `--inventory` kinds and a client to watch them.
    inventory: Option<(kube::Client, Vec<kube::api::GroupVersionKind>)>,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("state", &self.state)
            .field("namespaces_file", &self.namespaces_file)
            .field("kube", &self.kube.is_some())
            .finish_non_exhaustive()
    }
}

/// A serving webhook.
#[derive(Debug)]
pub struct Running {
    /// Address of the HTTPS admission listener.
    pub addr: SocketAddr,
    /// Address of the plain-HTTP operations listener.
    pub metrics_addr: SocketAddr,
    /// The shared state (tests inspect metrics and readiness through it).
    pub state: AppState,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Webhook {
    /// Loads policies, namespaces and the certificate as configured.
    pub async fn build(config: &Config) -> Result<Self, StartupError> {
        let mut engine = EngineConfig {
            exempt_namespaces: config.exempt_namespaces.clone(),
            eval_timeout: Some(config.eval_timeout),
            label_admin_groups: config.label_admin_groups.clone(),
            label_admin_users: config.label_admin_users.clone(),
            ..EngineConfig::default()
        };
        for o in &config.enforcement {
            engine
                .enforcement_overrides
                .insert(o.package.clone(), o.action);
        }
        let source = match &config.policies {
            Some(dir) => PolicySource::Dir(dir.clone()),
            None => PolicySource::Embedded,
        };
        let policies = Arc::new(PolicyStore::load(source, engine)?);
        tracing::info!(
            policies = policies.current().policies().len(),
            dir = ?policies.dir(),
            "policies loaded"
        );

        let (source, namespaces_file, kube): (Arc<dyn NamespaceSource>, _, _) = match &config
            .namespaces_file
        {
            Some(path) => {
                let file = Arc::new(FileNamespaces::load(path)?);
                tracing::info!(path = %path.display(), namespaces = file.snapshot().len(), "namespaces file loaded");
                (file.clone(), Some(file), None)
            }
            None => {
                let client = kube_client(config.kubeconfig.as_deref()).await?;
                let (reflector, cache) = namespaces::kube::cache();
                (cache.clone(), None, Some((client, reflector, cache)))
            }
        };

        let gatekeeper = match (&kube, config.gatekeeper_crs) {
            (_, false) => None,
            (Some((client, _, _)), true) => Some(client.clone()),
            (None, true) => Some(kube_client(config.kubeconfig.as_deref()).await?),
        };

        let inventory = if config.inventory.is_empty() {
            None
        } else {
            let kinds = config
                .inventory
                .iter()
                .map(|k| crate::inventory::parse_kind(k))
                .collect::<Result<Vec<_>, _>>()?;
            let client = match (&kube, &gatekeeper) {
                (Some((client, _, _)), _) | (None, Some(client)) => client.clone(),
                (None, None) => kube_client(config.kubeconfig.as_deref()).await?,
            };
            Some((client, kinds))
        };

        let provider = tls::provider();
        let cert = Arc::new(ReloadableCert::load(
            &config.tls_cert,
            &config.tls_key,
            provider,
        )?);
        let clients = match &config.client_ca {
            Some(path) => {
                let verifier = Arc::new(ReloadableClientCa::load(
                    path,
                    &config.client_names,
                    tls::provider(),
                )?);
                tracing::info!(client_ca = %path.display(), names = ?config.client_names, "client certificates required");
                Some(verifier)
            }
            None => None,
        };
        if config.max_request_memory / 2 < config.max_body_bytes {
            return Err(StartupError::Limits(format!(
                "--max-request-memory ({}) must be at least twice --max-body-bytes ({}): one request may use half of it",
                config.max_request_memory, config.max_body_bytes
            )));
        }
        let settings = Settings {
            failure_policy: config.failure_policy,
            mutate_enforce: config.mutate_enforce,
            max_body_bytes: config.max_body_bytes,
            max_json_values: config.max_json_values,
            max_json_depth: config.max_json_depth,
            body_timeout: config.connections.client_timeout,
        };
        let evaluator = Evaluator::new(config.max_concurrent_evaluations, config.queue_timeout)
            .with_memory_budget(config.max_request_memory);
        let state = AppState::new(
            policies,
            source,
            evaluator,
            Arc::new(Metrics::new()),
            settings,
        );
        if gatekeeper.is_some() {
            state.set_gatekeeper_synced(false);
        }
        Ok(Self {
            state,
            cert,
            clients,
            namespaces_file,
            kube,
            gatekeeper,
            inventory,
        })
    }

    /// Binds both listeners and starts serving and watching.
    pub async fn start(self, config: &Config) -> Result<Running, StartupError> {
        let bind = |addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| StartupError::Bind { addr, source })
        };
        let https = bind(config.listen).await?;
        let ops = bind(config.metrics_listen).await?;
        let local = |l: &TcpListener, fallback| l.local_addr().unwrap_or(fallback);
        let addr = local(&https, config.listen);
        let metrics_addr = local(&ops, config.metrics_listen);
        let (shutdown, rx) = watch::channel(false);
        let state = self.state.clone();
        let metrics = state.metrics().clone();
        let verifier = self
            .clients
            .clone()
            .map(|c| c as Arc<dyn rustls::server::danger::ClientCertVerifier>);
        let tls_config = tls::server_config(self.cert.clone(), tls::provider(), verifier)?;
        let mut tasks = Vec::new();

        tasks.push(tokio::spawn(serve_tls(
            https,
            app(state.clone()),
            tls_config,
            metrics.clone(),
            config.connections,
            config.shutdown_grace,
            rx.clone(),
        )));
        tasks.push(tokio::spawn(serve_plain(
            ops,
            ops_app(state.clone()),
            rx.clone(),
        )));
        state.set_tls_ready(true);
        tracing::info!(%addr, %metrics_addr, "serving");

        // The mounted files, re-read in one loop every --reload-interval.
        let mut sources = Vec::new();
        if let Some(dir) = state.policies().dir().map(PathBuf::from) {
            let store = state.policies().clone();
            let metrics = metrics.clone();
            sources.push(Watched::new(
                "policies",
                move || fingerprint_dir(&dir),
                move || {
                    let count = |r| metrics.policy_reload(r);
                    let kept = "policy reload rejected; the previous policies keep serving";
                    if let Some(n) = reloaded(store.reload(), count, kept) {
                        metrics.set_policies(store.current().policies());
                        tracing::info!(policies = n, "policies reloaded");
                    }
                },
            ));
        }
        {
            let cert = self.cert.clone();
            let files: Vec<PathBuf> = cert.paths().iter().map(|p| p.to_path_buf()).collect();
            let metrics = metrics.clone();
            sources.push(Watched::new(
                "tls",
                move || fingerprint_files(&files),
                move || {
                    let count = |r| metrics.tls_reload(r);
                    let kept =
                        "certificate reload rejected; the previous certificate keeps serving";
                    if reloaded(cert.reload(), count, kept).is_some() {
                        tracing::info!("serving certificate reloaded");
                    }
                },
            ));
        }
        if let Some(clients) = self.clients {
            let files = vec![clients.path().to_path_buf()];
            let metrics = metrics.clone();
            sources.push(Watched::new(
                "client-ca",
                move || fingerprint_files(&files),
                move || {
                    let count = |r| metrics.client_ca_reload(r);
                    let kept = "client CA bundle reload rejected; the previous CAs stay trusted";
                    if reloaded(clients.reload(), count, kept).is_some() {
                        tracing::info!("client CA bundle reloaded");
                    }
                },
            ));
        }
        if let Some(file) = self.namespaces_file {
            let files = vec![file.path().to_path_buf()];
            let metrics = metrics.clone();
            sources.push(Watched::new(
                "namespaces",
                move || fingerprint_files(&files),
                move || {
                    let count = |r| metrics.namespace_reload(r);
                    let kept = "namespaces file reload rejected; the previous data stays";
                    if let Some(n) = reloaded(file.reload(), count, kept) {
                        tracing::info!(namespaces = n, "namespaces file reloaded");
                    }
                },
            ));
        }
        tasks.push(tokio::spawn(poll_changes(
            config.reload_interval,
            sources,
            rx.clone(),
        )));
        if let Some((client, reflector, cache)) = self.kube {
            let mut stop = rx.clone();
            let metrics = state.metrics().clone();
            tasks.push(tokio::spawn(async move {
                tokio::select! {
                    _ = namespaces::kube::watch(client, reflector, cache, metrics) => {}
                    _ = crate::server::wait_for(&mut stop) => {}
                }
            }));
        }
        if let Some((client, kinds)) = self.inventory {
            let mut stop = rx.clone();
            let max = config.inventory_max_objects;
            let state = state.clone();
            tasks.push(tokio::spawn(async move {
                tokio::select! {
                    _ = crate::inventory::run(client, kinds, max, state) => {}
                    _ = crate::server::wait_for(&mut stop) => {}
                }
            }));
        }
        if let Some(client) = self.gatekeeper {
            let mut stop = rx.clone();
            let state = state.clone();
            tasks.push(tokio::spawn(async move {
                tokio::select! {
                    _ = crate::gatekeeper::run(client, state) => {}
                    _ = crate::server::wait_for(&mut stop) => {}
                }
            }));
        }
        Ok(Running {
            addr,
            metrics_addr,
            state,
            shutdown,
            tasks,
        })
    }
}

/// A client from `--kubeconfig`, or kube's inference (the toolkit's).
async fn kube_client(kubeconfig: Option<&Path>) -> Result<kube::Client, StartupError> {
    mapguard_kube::client(kubeconfig)
        .await
        .map_err(|e| match e {
            e if e.is_kubeconfig() => StartupError::Kubeconfig(e),
            e => StartupError::Kube(e),
        })
}

impl Running {
    /// Stops accepting, lets in-flight requests finish (up to the grace
    /// period) and waits for every task.
    pub async fn shutdown(self) {
        self.state.set_tls_ready(false);
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }

    /// Serves until `signal` resolves, then shuts down.
    pub async fn run_until(self, signal: impl std::future::Future<Output = ()>) {
        signal.await;
        tracing::info!("shutting down");
        self.shutdown().await;
    }
}
