//! The node agent's Prometheus metrics (`/metrics` on the ops port). Labels
//! are bounded: kind, action, reason, check — never a Pod, process or call
//! site.

use std::sync::Mutex;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::events::ViolationRecord;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ViolationLabels {
    kind: &'static str,
    action: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CheckLabels {
    check: &'static str,
}

/// Every metric of one node agent, with their registry.
pub struct Metrics {
    registry: Mutex<Registry>,
    violations: Family<ViolationLabels, Counter>,
    processes: Gauge,
    binaries: Gauge,
    attach_failures: Family<ReasonLabels, Counter>,
    unplaced: Counter,
    incomplete_checks: Family<CheckLabels, Gauge>,
    api_connected: Gauge,
    api_disconnects: Counter,
    pods: Gauge,
    enforced_pods: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Metrics {
        // Unprefixed: every name is written out (violation records register
        // theirs, `mapguard_...` too, into the same registry).
        let mut r = Registry::default();
        let violations = Family::<ViolationLabels, Counter>::default();
        r.register(
            "mapguard_violations",
            "Map races reported, by kind and action taken",
            violations.clone(),
        );
        let processes = Gauge::default();
        r.register(
            "mapguard_enforced_processes",
            "Processes under enforcement on this node",
            processes.clone(),
        );
        let binaries = Gauge::default();
        r.register(
            "mapguard_enforced_binaries",
            "Go binaries analysed and probed on this node",
            binaries.clone(),
        );
        let attach_failures = Family::<ReasonLabels, Counter>::default();
        r.register(
            "mapguard_attach_failures",
            "Processes of enforced Pods that could not be put under enforcement, by reason",
            attach_failures.clone(),
        );
        let unplaced = Counter::default();
        r.register(
            "mapguard_unplaced_processes",
            "Processes in a Pod-shaped cgroup that could not be placed in a known Pod (never signalled)",
            unplaced.clone(),
        );
        let incomplete_checks = Family::<CheckLabels, Gauge>::default();
        r.register(
            "mapguard_probe_incomplete_checks",
            "Checks the probes could not complete, by check (a race may have gone unreported)",
            incomplete_checks.clone(),
        );
        let api_connected = Gauge::default();
        r.register(
            "mapguard_api_server_connected",
            "1 while the Pod watch on the API server is up",
            api_connected.clone(),
        );
        let api_disconnects = Counter::default();
        r.register(
            "mapguard_api_server_disconnects",
            "Times the Pod watch lost the API server",
            api_disconnects.clone(),
        );
        let pods = Gauge::default();
        r.register("mapguard_pods", "Pods bound to this node", pods.clone());
        let enforced_pods = Gauge::default();
        r.register(
            "mapguard_enforced_pods",
            "Pods of this node with an enforcing mode",
            enforced_pods.clone(),
        );
        Metrics {
            registry: Mutex::new(r),
            violations,
            processes,
            binaries,
            attach_failures,
            unplaced,
            incomplete_checks,
            api_connected,
            api_disconnects,
            pods,
            enforced_pods,
        }
    }

    pub fn violation(&self, v: &ViolationRecord) {
        self.violations
            .get_or_create(&ViolationLabels {
                kind: v.kind.as_str(),
                action: v.action.as_str(),
            })
            .inc();
    }

    pub fn set_enforced(&self, processes: usize, binaries: usize) {
        self.processes.set(processes as i64);
        self.binaries.set(binaries as i64);
    }

    pub fn attach_failed(&self, reason: &'static str) {
        self.attach_failures
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    pub fn unplaced(&self) {
        self.unplaced.inc();
    }

    pub fn set_incomplete_checks(&self, checks: &[(&'static str, u64)]) {
        for (check, n) in checks {
            self.incomplete_checks
                .get_or_create(&CheckLabels { check })
                .set(*n as i64);
        }
    }

    /// Records the watch's state; counts each loss of the API server.
    pub fn set_api_connected(&self, up: bool) {
        let was = self.api_connected.set(i64::from(up));
        if was == 1 && !up {
            self.api_disconnects.inc();
        }
    }

    pub fn set_pods(&self, pods: usize, enforced: usize) {
        self.pods.set(pods as i64);
        self.enforced_pods.set(enforced as i64);
    }

    /// Lets another part of the agent register its metrics (full names).
    pub fn register(&self, f: impl FnOnce(&mut Registry)) {
        f(&mut self.registry.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// Renders every metric in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}
