//! Prometheus metrics of the webhook (prometheus-client, prefix `mapguard_`).
//!
//! Every label has a small fixed set of values: endpoint, decision, result,
//! reason, and the policy package name (bounded by the loaded policy set).
//! Pod names, namespaces and users never become labels.

use std::sync::Mutex;
use std::time::Duration;

use mapguard_policy::PolicyInfo;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Which admission endpoint served a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Endpoint {
    /// `POST /validate`.
    validate,
    /// `POST /mutate`.
    mutate,
}

impl Endpoint {
    const ALL: [Endpoint; 2] = [Endpoint::validate, Endpoint::mutate];
}

/// The outcome of one admission request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum DecisionLabel {
    /// Allowed without findings that change anything.
    allowed,
    /// Allowed with warnings.
    warned,
    /// Allowed with a JSON patch.
    patched,
    /// Denied by a policy.
    denied,
    /// Namespace exempted: allowed without evaluation.
    exempt,
    /// Malformed request (400/413).
    invalid,
    /// Not judged; allowed by the fail-open policy.
    failed_open,
    /// Not judged; denied by the fail-closed policy.
    failed_closed,
}

impl DecisionLabel {
    const ALL: [DecisionLabel; 8] = [
        DecisionLabel::allowed,
        DecisionLabel::warned,
        DecisionLabel::patched,
        DecisionLabel::denied,
        DecisionLabel::exempt,
        DecisionLabel::invalid,
        DecisionLabel::failed_open,
        DecisionLabel::failed_closed,
    ];
}

/// Success or failure of a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum ReloadResult {
    /// The new content is serving.
    success,
    /// The new content was rejected; the previous one keeps serving.
    failure,
}

impl ReloadResult {
    const ALL: [ReloadResult; 2] = [ReloadResult::success, ReloadResult::failure];
}

/// Why an evaluation did not produce a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum RejectReason {
    /// No evaluation slot became free within the queue timeout.
    overload,
    /// The evaluation exceeded its time limit.
    timeout,
    /// The engine returned an error (or the evaluation panicked).
    error,
}

impl RejectReason {
    const ALL: [RejectReason; 3] = [
        RejectReason::overload,
        RejectReason::timeout,
        RejectReason::error,
    ];
}

/// Why a request was refused before its body was parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum RefuseReason {
    /// The body is larger than `--max-body-bytes`.
    body_too_large,
    /// The body holds more JSON values than `--max-json-values`.
    too_many_values,
    /// The body nests deeper than `--max-json-depth`.
    too_deep,
    /// Judging the body would take more memory than one request may use.
    too_much_memory,
    /// No request memory was free to receive the body in time.
    memory_busy,
}

impl RefuseReason {
    const ALL: [RefuseReason; 5] = [
        RefuseReason::body_too_large,
        RefuseReason::too_many_values,
        RefuseReason::too_deep,
        RefuseReason::too_much_memory,
        RefuseReason::memory_busy,
    ];
}

/// The kinds of Gatekeeper objects of the cluster (`--gatekeeper-crs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
pub enum GatekeeperKind {
    /// A `templates.gatekeeper.sh` ConstraintTemplate.
    ConstraintTemplate,
    /// A constraint of any `constraints.gatekeeper.sh` kind.
    Constraint,
}

impl GatekeeperKind {
    const ALL: [GatekeeperKind; 2] = [
        GatekeeperKind::ConstraintTemplate,
        GatekeeperKind::Constraint,
    ];
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct GatekeeperLabels {
    kind: GatekeeperKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RefuseLabels {
    reason: RefuseReason,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabels {
    endpoint: Endpoint,
    decision: DecisionLabel,
    dry_run: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct EndpointLabels {
    endpoint: Endpoint,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ResultLabels {
    result: ReloadResult,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReasonLabels {
    reason: RejectReason,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct FindingLabels {
    policy: String,
    action: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    Histogram::new([
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        5.0, 10.0,
    ])
}

/// All metrics of one webhook process, with their registry.
pub struct Metrics {
    registry: Mutex<Registry>,
    requests: Family<RequestLabels, Counter>,
    admission_duration: HistogramFamily<EndpointLabels>,
    evaluation_duration: Histogram,
    policy_reloads: Family<ResultLabels, Counter>,
    rejected: Family<ReasonLabels, Counter>,
    tls_reloads: Family<ResultLabels, Counter>,
    client_ca_reloads: Family<ResultLabels, Counter>,
    namespace_reloads: Family<ResultLabels, Counter>,
    findings: Family<FindingLabels, Counter>,
    policies_loaded: Gauge,
    in_flight: Gauge,
    handshake_failures: Counter,
    inventory_objects: Gauge,
    inventory_dropped: Counter,
    refused: Family<RefuseLabels, Counter>,
    request_memory: Gauge,
    request_memory_budget: Gauge,
    connections: Gauge,
    gatekeeper_rejected: Family<GatekeeperLabels, Gauge>,
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
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("mapguard");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "admission_requests",
            "Admission requests by endpoint, decision and dryRun",
            requests.clone(),
        );
        let admission_duration: HistogramFamily<EndpointLabels> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "admission_duration_seconds",
            "Time from request body received to response, by endpoint",
            admission_duration.clone(),
        );
        let evaluation_duration = latency_histogram();
        registry.register(
            "policy_evaluation_duration_seconds",
            "Time spent evaluating the policy set for one request",
            evaluation_duration.clone(),
        );
        let policy_reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "policy_reloads",
            "Policy directory reloads by result",
            policy_reloads.clone(),
        );
        let rejected = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "policy_evaluations_rejected",
            "Evaluations that produced no decision, by reason",
            rejected.clone(),
        );
        let tls_reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "tls_reloads",
            "Serving certificate reloads by result",
            tls_reloads.clone(),
        );
        let client_ca_reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "client_ca_reloads",
            "Client CA bundle (--client-ca) reloads by result",
            client_ca_reloads.clone(),
        );
        let namespace_reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "namespace_reloads",
            "Namespace metadata reloads (the file, or the watch on the API server) by result",
            namespace_reloads.clone(),
        );
        let findings = Family::<FindingLabels, Counter>::default();
        registry.register(
            "policy_findings",
            "Policy findings by policy package and action (dry-run requests excluded)",
            findings.clone(),
        );
        let policies_loaded = Gauge::default();
        registry.register(
            "policies_loaded",
            "Policies in the serving policy set",
            policies_loaded.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "policy_evaluations_in_flight",
            "Evaluations running now",
            in_flight.clone(),
        );
        let handshake_failures = Counter::default();
        registry.register(
            "tls_handshake_failures",
            "TLS handshakes that failed or timed out",
            handshake_failures.clone(),
        );
        let inventory_objects = Gauge::default();
        registry.register(
            "inventory_objects",
            "Cluster objects held for Gatekeeper templates' data.inventory (--inventory)",
            inventory_objects.clone(),
        );
        let inventory_dropped = Counter::default();
        registry.register(
            "inventory_dropped",
            "Objects left out of the inventory because --inventory-max-objects was reached",
            inventory_dropped.clone(),
        );
        let refused = Family::<RefuseLabels, Counter>::default();
        registry.register(
            "admission_refused",
            "Admission requests refused before their body was parsed, by reason",
            refused.clone(),
        );
        let request_memory = Gauge::default();
        registry.register(
            "request_memory_reserved_bytes",
            "Memory reserved by admission requests now: bodies being received, and the trees of requests being judged (estimated)",
            request_memory.clone(),
        );
        let request_memory_budget = Gauge::default();
        registry.register(
            "request_memory_budget_bytes",
            "Memory admission requests may reserve at once (--max-request-memory)",
            request_memory_budget.clone(),
        );
        let connections = Gauge::default();
        registry.register(
            "connections_open",
            "Connections open on the HTTPS admission port (at most --max-connections)",
            connections.clone(),
        );
        let gatekeeper_rejected = Family::<GatekeeperLabels, Gauge>::default();
        registry.register(
            "gatekeeper_rejected_objects",
            "Gatekeeper objects of the cluster (--gatekeeper-crs) whose current version is not serving: it does not compile or fit its template (an Event on the object says why)",
            gatekeeper_rejected.clone(),
        );
        // Every series with a fixed label set exists from the start, at 0:
        // an alert on a rate or a dashboard sees 0 before the first event,
        // not "no data" (prometheus-client leaves out empty families, HELP
        // and TYPE included).
        for endpoint in Endpoint::ALL {
            drop(admission_duration.get_or_create(&EndpointLabels { endpoint }));
            for decision in DecisionLabel::ALL {
                for dry_run in [false, true] {
                    drop(requests.get_or_create(&RequestLabels {
                        endpoint,
                        decision,
                        dry_run,
                    }));
                }
            }
        }
        for result in ReloadResult::ALL {
            for family in [
                &policy_reloads,
                &tls_reloads,
                &client_ca_reloads,
                &namespace_reloads,
            ] {
                drop(family.get_or_create(&ResultLabels { result }));
            }
        }
        for reason in RejectReason::ALL {
            drop(rejected.get_or_create(&ReasonLabels { reason }));
        }
        for reason in RefuseReason::ALL {
            drop(refused.get_or_create(&RefuseLabels { reason }));
        }
        for kind in GatekeeperKind::ALL {
            drop(gatekeeper_rejected.get_or_create(&GatekeeperLabels { kind }));
        }
        Self {
            registry: Mutex::new(registry),
            requests,
            admission_duration,
            evaluation_duration,
            policy_reloads,
            rejected,
            tls_reloads,
            client_ca_reloads,
            namespace_reloads,
            findings,
            policies_loaded,
            in_flight,
            handshake_failures,
            inventory_objects,
            inventory_dropped,
            refused,
            request_memory,
            request_memory_budget,
            connections,
            gatekeeper_rejected,
        }
    }

    /// Records how many Gatekeeper objects of `kind` are rejected now.
    pub fn set_gatekeeper_rejected(&self, kind: GatekeeperKind, n: usize) {
        self.gatekeeper_rejected
            .get_or_create(&GatekeeperLabels { kind })
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Counts a request refused before its body was parsed.
    pub fn refused(&self, reason: RefuseReason) {
        self.refused.get_or_create(&RefuseLabels { reason }).inc();
    }

    /// The gauge of reserved request memory (the budget keeps it current).
    pub fn request_memory(&self) -> &Gauge {
        &self.request_memory
    }

    /// Records the size of the request memory budget.
    pub fn set_request_memory_budget(&self, bytes: usize) {
        self.request_memory_budget
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// The gauge of open connections on the admission port.
    pub fn connections(&self) -> &Gauge {
        &self.connections
    }

    /// Objects now in the inventory.
    pub fn set_inventory_objects(&self, n: usize) {
        self.inventory_objects
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Counts one object left out of the full inventory.
    pub fn inventory_dropped(&self) {
        self.inventory_dropped.inc();
    }

    /// Counts one admission request and records its latency.
    pub fn observe_request(
        &self,
        endpoint: Endpoint,
        decision: DecisionLabel,
        dry_run: bool,
        elapsed: Duration,
    ) {
        self.requests
            .get_or_create(&RequestLabels {
                endpoint,
                decision,
                dry_run,
            })
            .inc();
        self.admission_duration
            .get_or_create(&EndpointLabels { endpoint })
            .observe(elapsed.as_secs_f64());
    }

    /// Records the duration of one evaluation.
    pub fn observe_evaluation(&self, elapsed: Duration) {
        self.evaluation_duration.observe(elapsed.as_secs_f64());
    }

    /// Counts a policy reload.
    pub fn policy_reload(&self, result: ReloadResult) {
        self.policy_reloads
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    /// Counts an evaluation that produced no decision.
    pub fn evaluation_rejected(&self, reason: RejectReason) {
        self.rejected.get_or_create(&ReasonLabels { reason }).inc();
    }

    /// Counts a serving certificate reload.
    pub fn tls_reload(&self, result: ReloadResult) {
        self.tls_reloads
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    /// Counts a client CA bundle reload.
    pub fn client_ca_reload(&self, result: ReloadResult) {
        self.client_ca_reloads
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    /// Counts a namespaces file reload.
    pub fn namespace_reload(&self, result: ReloadResult) {
        self.namespace_reloads
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    /// Counts one finding of `policy` with `action` (`deny`, `warn`, `dry-run`).
    pub fn finding(&self, policy: &str, action: &str) {
        self.findings
            .get_or_create(&FindingLabels {
                policy: policy.to_owned(),
                action: action.to_owned(),
            })
            .inc();
    }

    /// Records the policy set now serving: its size, and a zero series of
    /// `mapguard_policy_findings_total` for each action its policies'
    /// findings can carry (series of replaced policies stay).
    pub fn set_policies(&self, policies: &[PolicyInfo]) {
        self.policies_loaded
            .set(i64::try_from(policies.len()).unwrap_or(i64::MAX));
        for policy in policies {
            for action in policy.finding_actions() {
                drop(self.findings.get_or_create(&FindingLabels {
                    policy: policy.package.clone(),
                    action: action.as_str().to_owned(),
                }));
            }
        }
    }

    /// The in-flight evaluations gauge.
    pub fn in_flight(&self) -> &Gauge {
        &self.in_flight
    }

    /// Counts a failed or timed-out TLS handshake.
    pub fn handshake_failed(&self) {
        self.handshake_failures.inc();
    }

    /// Renders every metric in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        mapguard_kube::ops::encode(&self.registry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_prefixed_and_labels_encoded() {
        let m = Metrics::new();
        m.observe_request(
            Endpoint::validate,
            DecisionLabel::denied,
            false,
            Duration::from_millis(2),
        );
        m.policy_reload(ReloadResult::failure);
        m.evaluation_rejected(RejectReason::overload);
        let text = m.encode();
        assert!(
            text.contains(
                r#"mapguard_admission_requests_total{endpoint="validate",decision="denied",dry_run="false"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"mapguard_policy_reloads_total{result="failure"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"mapguard_policy_evaluations_rejected_total{reason="overload"} 1"#),
            "{text}"
        );
        assert!(
            text.contains("mapguard_admission_duration_seconds_bucket"),
            "{text}"
        );
    }
}
