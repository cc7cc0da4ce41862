//! What the record writer counts, for the agent's `/metrics`. Labels take
//! a handful of fixed values each (never namespace, Pod or record names).

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// A successful write of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum WriteOperation {
    /// A new call-site pair: the object was created.
    created,
    /// A repeat: count, last seen and last Pod updated.
    updated,
    /// The stored object was invalid or edited by hand and was overwritten.
    repaired,
}

/// Why a violation was not recorded (or its Event not published).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum DropReason {
    /// The namespace already holds the maximum number of records.
    namespace_bound,
    /// The queue of pending writes was full (the API server was slow or away).
    queue_full,
}

/// What a dropped or failed write was for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Target {
    /// The MapViolation object.
    record,
    /// The Warning Event on the Pod.
    event,
}

/// Why a write failed (see [`super::RecordError::reason`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum FailureReason {
    /// RBAC forbids the verb (not retried).
    forbidden,
    /// The credentials were not accepted (not retried).
    unauthorized,
    /// The MapViolation CRD is not installed (not retried).
    not_installed,
    /// The API server refused the object (not retried).
    rejected,
    /// The API server was unreachable or overloaded (retried).
    unavailable,
    /// Other writers kept changing the object (retried).
    contended,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OperationLabels {
    operation: WriteOperation,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DropLabels {
    target: Target,
    reason: DropReason,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct FailureLabels {
    target: Target,
    reason: FailureReason,
}

/// The writer's metrics (cheap to clone: every field is shared).
#[derive(Debug, Clone, Default)]
pub struct RecordMetrics {
    writes: Family<OperationLabels, Counter>,
    dropped: Family<DropLabels, Counter>,
    failures: Family<FailureLabels, Counter>,
    queue_length: Gauge,
    events: Counter,
}

impl RecordMetrics {
    /// Creates the metrics and registers them in `registry` under their
    /// full `mapguard_` names (pass a registry without a prefix of its own):
    ///
    /// - `mapguard_violation_record_writes_total{operation}`
    /// - `mapguard_violations_dropped_total{target,reason}` (violations, not requests)
    /// - `mapguard_violation_write_failures_total{target,reason}` (failed requests)
    /// - `mapguard_violation_record_queue_length` (record/event writes pending)
    /// - `mapguard_violation_events_total` (Events published on Pods)
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "mapguard_violation_record_writes",
            "MapViolation records written, by operation (created, updated, repaired)",
            metrics.writes.clone(),
        );
        registry.register(
            "mapguard_violations_dropped",
            "Violations not recorded as a MapViolation (target=record) or Event (target=event), by reason",
            metrics.dropped.clone(),
        );
        registry.register(
            "mapguard_violation_write_failures",
            "Failed writes of records and Events, by reason (unavailable and contended are retried)",
            metrics.failures.clone(),
        );
        registry.register(
            "mapguard_violation_record_queue_length",
            "Call-site pairs with record or Event writes pending (including the one in flight)",
            metrics.queue_length.clone(),
        );
        registry.register(
            "mapguard_violation_events",
            "Warning Events published on Pods (new Events and repeats of a series)",
            metrics.events.clone(),
        );
        metrics
    }

    pub(crate) fn written(&self, operation: WriteOperation) {
        self.writes
            .get_or_create(&OperationLabels { operation })
            .inc();
    }

    pub(crate) fn dropped(&self, target: Target, reason: DropReason, violations: u64) {
        self.dropped
            .get_or_create(&DropLabels { target, reason })
            .inc_by(violations);
    }

    pub(crate) fn failed(&self, target: Target, reason: FailureReason) {
        self.failures
            .get_or_create(&FailureLabels { target, reason })
            .inc();
    }

    pub(crate) fn set_queue_length(&self, length: usize) {
        self.queue_length
            .set(i64::try_from(length).unwrap_or(i64::MAX));
    }

    pub(crate) fn event_published(&self) {
        self.events.inc();
    }
}
