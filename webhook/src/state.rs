//! Shared state of the admission handlers.

use std::sync::{Arc, RwLock};

use mapguard_policy::Inventory;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::config::FailurePolicy;
use crate::evaluator::Evaluator;
use crate::metrics::Metrics;
use crate::namespaces::NamespaceSource;
use crate::policies::PolicyStore;

/// Default of `--max-body-bytes`: the API server's own limit.
pub const DEFAULT_MAX_BODY_BYTES: usize = 3 * 1024 * 1024;
/// Default of `--max-json-values`: far above any Pod or controller the API
/// server stores (an object in etcd is at most 1.5 MiB), far below what a
/// 3 MiB body of empty objects holds (a million).
pub const DEFAULT_MAX_JSON_VALUES: usize = 200_000;
/// Default of `--max-json-depth`: Kubernetes objects nest a few tens of
/// levels at most (managed fields included); serde_json stops at 128.
pub const DEFAULT_MAX_JSON_DEPTH: usize = 64;

/// Behaviour switches of the admission handlers.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Answer when a request cannot be judged.
    pub failure_policy: FailurePolicy,
    /// Whether `/mutate` also denies what policies deny.
    pub mutate_enforce: bool,
    /// Largest accepted body; larger ones get 413.
    pub max_body_bytes: usize,
    /// Most JSON values a body may hold; more get 413.
    pub max_json_values: usize,
    /// Deepest nesting a body may hold; deeper gets 413.
    pub max_json_depth: usize,
    /// Time allowed to read a request body.
    pub body_timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            failure_policy: FailurePolicy::default(),
            mutate_enforce: false,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_json_values: DEFAULT_MAX_JSON_VALUES,
            max_json_depth: DEFAULT_MAX_JSON_DEPTH,
            body_timeout: mapguard_duration::parse(crate::server::DEFAULT_CLIENT_TIMEOUT)
                .expect("the default parses"),
        }
    }
}

/// Everything a request needs; cheap to clone.
#[derive(Debug, Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    policies: Arc<PolicyStore>,
    namespaces: Arc<dyn NamespaceSource>,
    evaluator: Evaluator,
    metrics: Arc<Metrics>,
    settings: Settings,
    tls_ready: AtomicBool,
    /// Whether the cluster's Gatekeeper objects were listed and compiled in
    /// (true when `--gatekeeper-crs` is off).
    gatekeeper_synced: AtomicBool,
    /// `data.inventory` for Gatekeeper templates (`--inventory`).
    inventory: RwLock<Arc<Inventory>>,
}

impl AppState {
    /// Assembles the state. The TLS listener marks itself ready with
    /// [`AppState::set_tls_ready`]; tests without a socket may do so too.
    pub fn new(
        policies: Arc<PolicyStore>,
        namespaces: Arc<dyn NamespaceSource>,
        evaluator: Evaluator,
        metrics: Arc<Metrics>,
        settings: Settings,
    ) -> Self {
        metrics.set_policies(policies.current().policies());
        metrics.set_request_memory_budget(evaluator.memory().total());
        let evaluator = evaluator.with_memory_gauge(metrics.request_memory().clone());
        Self {
            inner: Arc::new(Inner {
                policies,
                namespaces,
                evaluator,
                metrics,
                settings,
                tls_ready: AtomicBool::new(false),
                gatekeeper_synced: AtomicBool::new(true),
                inventory: RwLock::new(Arc::new(Inventory::default())),
            }),
        }
    }

    /// The serving policy set and its reload.
    pub fn policies(&self) -> &Arc<PolicyStore> {
        &self.inner.policies
    }

    /// Namespace metadata.
    pub fn namespaces(&self) -> &Arc<dyn NamespaceSource> {
        &self.inner.namespaces
    }

    /// The bounded evaluation pool.
    pub fn evaluator(&self) -> &Evaluator {
        &self.inner.evaluator
    }

    /// Prometheus metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// The cluster objects Gatekeeper templates see as `data.inventory`.
    pub fn inventory(&self) -> Arc<Inventory> {
        self.inner
            .inventory
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces the inventory (the `--inventory` watch does).
    pub fn set_inventory(&self, inventory: Inventory) {
        *self
            .inner
            .inventory
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Arc::new(inventory);
    }

    /// Handler settings.
    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    /// Whether requests in `namespace` skip evaluation (the engine
    /// configuration owns the list).
    pub fn is_exempt(&self, namespace: &str) -> bool {
        self.inner.policies.config().is_exempt(namespace)
    }

    /// Marks the HTTPS listener as serving with a loaded certificate.
    pub fn set_tls_ready(&self, ready: bool) {
        self.inner.tls_ready.store(ready, Ordering::Release);
    }

    /// Marks whether the cluster's Gatekeeper objects are compiled in
    /// (`--gatekeeper-crs` sets false at start, its first sync true).
    pub fn set_gatekeeper_synced(&self, synced: bool) {
        self.inner
            .gatekeeper_synced
            .store(synced, Ordering::Release);
    }

    /// Reasons the webhook is not ready yet (empty when ready).
    pub fn not_ready_reasons(&self) -> Vec<&'static str> {
        let mut reasons = Vec::new();
        if !self.inner.tls_ready.load(Ordering::Acquire) {
            reasons.push("TLS listener not serving yet");
        }
        if !self.inner.namespaces.is_synced() {
            reasons.push("namespace cache not synced yet");
        }
        if !self.inner.gatekeeper_synced.load(Ordering::Acquire) {
            reasons.push("Gatekeeper templates and constraints not synced yet");
        }
        reasons
    }
}
