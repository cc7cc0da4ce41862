//! The node agent's Prometheus metrics (`/metrics` on the ops port). Labels
//! are bounded: namespace and workload (the owning controller, never the
//! Pod), kind, action, operation, message class, reason, check — never a
//! Pod or process. Call sites appear on one family only,
//! `mapguard_violation_records_total`: one series per MapViolation record,
//! bounded per namespace like the records themselves.
//!
//! The per-workload series are what the SLO rules of
//! `manifests/monitoring/` are built on:
//! `mapguard_violations_total` (races reported),
//! `mapguard_map_crashes_total` (the Go runtime reached its map crash
//! path: every coverage, `light` included, whether or not a race was
//! reported before), `mapguard_map_operations_observed_total` (probe hits,
//! what the coverage sees), `mapguard_map_operations_estimated_total`
//! (the same scaled by the share of operations the coverage sees) and
//! `mapguard_map_delete_duration_seconds` (deletes timed in windows).

use std::{
    collections::{HashMap, HashSet},
    sync::{Mutex, atomic::AtomicU64},
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

use mapguard_enforcer::report::events::ViolationRecord;

/// The `record` label of the call-site pairs over a namespace's bound.
pub const OTHER_PAIRS: &str = "_other";

/// Where a series comes from: a workload of a namespace.
#[derive(Clone, Debug, Hash, PartialEq, Eq, Default)]
pub struct WorkloadLabels {
    pub namespace: String,
    pub workload: String,
    /// `Deployment`, `StatefulSet`, ..., `Pod` for a Pod without a controller.
    pub workload_kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ViolationLabels {
    namespace: String,
    workload: String,
    workload_kind: String,
    kind: &'static str,
    action: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CrashLabels {
    namespace: String,
    workload: String,
    workload_kind: String,
    message_class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ObservedLabels {
    namespace: String,
    workload: String,
    workload_kind: String,
    op: &'static str,
    coverage: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkloadSet {
    namespace: String,
    workload: String,
    workload_kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EstimatedLabels {
    namespace: String,
    workload: String,
    workload_kind: String,
    op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PairLabels {
    namespace: String,
    workload: String,
    /// The MapViolation record's name (`kubectl get mapviolation NAME`).
    record: String,
    site: String,
    conflicting_site: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DroppedLabels {
    namespace: String,
    workload: String,
    workload_kind: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabels {
    namespace: String,
    workload: String,
    workload_kind: String,
    limit: &'static str,
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
    crashes: Family<CrashLabels, Counter>,
    observed: Family<ObservedLabels, Counter>,
    estimated: Family<EstimatedLabels, Counter<f64, AtomicU64>>,
    pairs: Family<PairLabels, Counter>,
    delete_duration: Family<WorkloadSet, Histogram>,
    dropped_events: Family<DroppedLabels, Counter>,
    limit_refusals: Family<LimitLabels, Counter>,
    /// Call-site pairs with a series of their own, by namespace (at most
    /// `pair_bound` each, as the records are).
    pairs_seen: Mutex<HashMap<String, HashSet<String>>>,
    pair_bound: usize,
    processes: Gauge,
    binaries: Gauge,
    evicted_binaries: Counter,
    stuck_file_operations: Gauge,
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
    /// [`Metrics::new`] with at most `bound` call-site pairs a namespace
    /// in `mapguard_violation_records_total` (the records' own bound).
    pub fn with_pair_bound(bound: usize) -> Metrics {
        Metrics {
            pair_bound: bound,
            ..Metrics::new()
        }
    }

    /// Creates and registers every metric.
    pub fn new() -> Metrics {
        // Unprefixed: every name is written out (violation records register
        // theirs, `mapguard_...` too, into the same registry).
        let mut r = Registry::default();
        let violations = Family::<ViolationLabels, Counter>::default();
        r.register(
            "mapguard_violations",
            "Map races reported, by workload, kind and action taken",
            violations.clone(),
        );
        let crashes = Family::<CrashLabels, Counter>::default();
        r.register(
            "mapguard_map_crashes",
            "Go runtime map crashes (the runtime reached its map crash path), by workload and the message it was about to print; counted in every coverage, whether or not a race was reported first",
            crashes.clone(),
        );
        let observed = Family::<ObservedLabels, Counter>::default();
        r.register(
            "mapguard_map_operations_observed",
            "Map operations the probes saw (probe hits), by workload, operation and coverage: all of them under full, the writes under writes, those in on-windows under sampled, none under light",
            observed.clone(),
        );
        let estimated = Family::<EstimatedLabels, Counter<f64, AtomicU64>>::default();
        r.register(
            "mapguard_map_operations_estimated",
            "Map operations estimated from the observed ones, scaled by the share the coverage sees (1 under full and writes, the probes' duty cycle under sampled)",
            estimated.clone(),
        );
        let pairs = Family::<PairLabels, Counter>::default();
        r.register(
            "mapguard_violation_records",
            "Violations by call-site pair, one series per MapViolation record (at most --max-records-per-namespace a namespace, like the records; the rest under record=\"_other\")",
            pairs.clone(),
        );
        let delete_duration = Family::<WorkloadSet, Histogram>::new_with_constructor(
            delete_duration_histogram as fn() -> Histogram,
        );
        r.register(
            "mapguard_map_delete_duration_seconds",
            "Duration of map deletes, by workload, from the deletes timed in the sampling windows (--delete-latency-on in every --delete-latency-period; each counts at the middle of its power-of-two bucket; includes about a microsecond of the probes' own time)",
            delete_duration.clone(),
        );
        let dropped_events = Family::<DroppedLabels, Counter>::default();
        r.register(
            "mapguard_dropped_events",
            "Violation reports dropped, by workload and reason: rate_limited (over the Pod's --event-rate, in the kernel), ring_full (the node's ring buffer was full), record_queue_full (the namespace's share of the record queue was full: no MapViolation written); workload empty: a process of no known Pod",
            dropped_events.clone(),
        );
        let limit_refusals = Family::<LimitLabels, Counter>::default();
        r.register(
            "mapguard_pod_limit_refusals",
            "Processes not put under enforcement because their Pod was at a bound, by workload and limit (processes: --max-processes-per-pod, probes: --max-probes-per-pod)",
            limit_refusals.clone(),
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
        let evicted_binaries = Counter::default();
        r.register(
            "mapguard_evicted_binaries",
            "Analyses of Go binaries dropped (with their probes) once no process ran them for --evict-binaries-after",
            evicted_binaries.clone(),
        );
        let stuck_file_operations = Gauge::default();
        r.register(
            "mapguard_stuck_file_operations",
            "Operations on executables given up after --file-timeout whose threads are still blocked (a filesystem that does not answer)",
            stuck_file_operations.clone(),
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
        // Every check at zero from the start: an alert on `> 0` and a
        // dashboard see the series before anything goes wrong.
        for check in mapguard_common::stat::NAMES {
            let _ = incomplete_checks.get_or_create(&CheckLabels { check });
        }
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
            crashes,
            observed,
            estimated,
            pairs,
            delete_duration,
            dropped_events,
            limit_refusals,
            pairs_seen: Mutex::new(HashMap::new()),
            pair_bound: usize::MAX,
            processes,
            binaries,
            evicted_binaries,
            stuck_file_operations,
            attach_failures,
            unplaced,
            incomplete_checks,
            api_connected,
            api_disconnects,
            pods,
            enforced_pods,
        }
    }

    /// Counts a report of workload `w`; one from the runtime's crash path
    /// is also a map crash.
    pub fn violation(&self, v: &ViolationRecord, w: &WorkloadLabels) {
        self.violations
            .get_or_create(&ViolationLabels {
                namespace: w.namespace.clone(),
                workload: w.workload.clone(),
                workload_kind: w.workload_kind.clone(),
                kind: v.kind.as_str(),
                action: v.action.as_str(),
            })
            .inc();
        self.count_pair(v, w);
        if let Some(message) = v.crash_message {
            self.crashes
                .get_or_create(&CrashLabels {
                    namespace: w.namespace.clone(),
                    workload: w.workload.clone(),
                    workload_kind: w.workload_kind.clone(),
                    message_class: message.as_str(),
                })
                .inc();
        }
    }

    /// Adds `count` new timed deletes of workload `w` that took
    /// `[2^(bucket-1), 2^bucket)` ns (`mapguard_common::LatencyKey`).
    pub fn delete_durations(&self, w: &WorkloadLabels, bucket: u32, count: u64) {
        let histogram = self.delete_duration.get_or_create(&WorkloadSet {
            namespace: w.namespace.clone(),
            workload: w.workload.clone(),
            workload_kind: w.workload_kind.clone(),
        });
        let seconds = 0.75 * 2f64.powi(bucket as i32) * 1e-9;
        for _ in 0..count {
            histogram.observe(seconds);
        }
    }

    fn count_pair(&self, v: &ViolationRecord, w: &WorkloadLabels) {
        let pair = &v.pair;
        let record = pair.object_name();
        let own_series = {
            let mut seen = self.pairs_seen.lock().unwrap_or_else(|e| e.into_inner());
            let names = seen.entry(w.namespace.clone()).or_default();
            names.contains(&record)
                || (names.len() < self.pair_bound && names.insert(record.clone()))
        };
        let labels = if own_series {
            PairLabels {
                namespace: w.namespace.clone(),
                workload: w.workload.clone(),
                record,
                site: pair.site(),
                conflicting_site: pair.conflicting_site().unwrap_or_default(),
            }
        } else {
            PairLabels {
                namespace: w.namespace.clone(),
                workload: w.workload.clone(),
                record: OTHER_PAIRS.into(),
                site: String::new(),
                conflicting_site: String::new(),
            }
        };
        self.pairs.get_or_create(&labels).inc();
    }

    /// Adds `hits` new probe hits on operation `op` of workload `w` under
    /// `coverage`, which sees `fraction` of its operations.
    pub fn operations(
        &self,
        w: &WorkloadLabels,
        op: &'static str,
        coverage: &'static str,
        hits: u64,
        fraction: f64,
    ) {
        self.observed
            .get_or_create(&ObservedLabels {
                namespace: w.namespace.clone(),
                workload: w.workload.clone(),
                workload_kind: w.workload_kind.clone(),
                op,
                coverage,
            })
            .inc_by(hits);
        if fraction > 0.0 {
            self.estimated
                .get_or_create(&EstimatedLabels {
                    namespace: w.namespace.clone(),
                    workload: w.workload.clone(),
                    workload_kind: w.workload_kind.clone(),
                    op,
                })
                .inc_by(hits as f64 / fraction.min(1.0));
        }
    }

    /// Adds `count` violation reports of workload `w` dropped for `reason`.
    pub fn dropped_events(&self, w: &WorkloadLabels, reason: &'static str, count: u64) {
        if count == 0 {
            return;
        }
        self.dropped_events
            .get_or_create(&DroppedLabels {
                namespace: w.namespace.clone(),
                workload: w.workload.clone(),
                workload_kind: w.workload_kind.clone(),
                reason,
            })
            .inc_by(count);
    }

    /// Counts a process of workload `w` not enforced: its Pod is at `limit`.
    pub fn pod_limit_refused(&self, w: &WorkloadLabels, limit: &'static str) {
        self.limit_refusals
            .get_or_create(&LimitLabels {
                namespace: w.namespace.clone(),
                workload: w.workload.clone(),
                workload_kind: w.workload_kind.clone(),
                limit,
            })
            .inc();
    }

    pub fn set_enforced(&self, processes: usize, binaries: usize) {
        self.processes.set(processes as i64);
        self.binaries.set(binaries as i64);
    }

    pub fn set_stuck_file_operations(&self, n: usize) {
        self.stuck_file_operations.set(n as i64);
    }

    pub fn attach_failed(&self, reason: &'static str) {
        self.attach_failures
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    pub fn binary_evicted(&self) {
        self.evicted_binaries.inc();
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
        mapguard_kube::ops::encode(&self.registry)
    }
}

/// Buckets of `mapguard_map_delete_duration_seconds`: the kernel's
/// power-of-two nanosecond buckets from 128 ns to 64 ms.
fn delete_duration_histogram() -> Histogram {
    Histogram::new((7..=26).map(|b| 2f64.powi(b) * 1e-9))
}

#[cfg(test)]
mod tests {
    use super::*;
    use mapguard_api::pair::CallSitePair;
    use mapguard_api::vocab::{Action, CrashMessage, Detector, Kind, Op};

    fn report(site: &str, crash: Option<CrashMessage>) -> ViolationRecord {
        let frame = |text: String| text.parse().unwrap_or_else(|e| panic!("{e}"));
        let stack = vec![frame(format!("main.deleter /src/{site}"))];
        let conflicting_stack = vec![frame("main.assigner /src/main.go:40".to_owned())];
        ViolationRecord {
            pair: CallSitePair::new(
                Kind::ConcurrentWrite,
                Op::Delete,
                Op::Assign,
                &stack,
                &conflicting_stack,
            ),
            event: "violation",
            kind: Kind::ConcurrentWrite,
            // 2026-11-25T12:00:00Z
            timestamp: std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_795_608_000),
            pid: 42,
            tid: 43,
            binary: "/app/cart".into(),
            map: None,
            op: Op::Delete,
            conflicting_op: Op::Assign,
            goroutine: 7,
            conflicting_goroutine: 6,
            stack,
            conflicting_stack,
            action: Action::Audit,
            detected_by: if crash.is_some() {
                Detector::RuntimeFatal
            } else {
                Detector::WritingFlag
            },
            crash_message: crash,
            namespace: Some("shop".into()),
            pod: Some("cart-0".into()),
            pod_uid: Some("u".into()),
            container: None,
            go_version: None,
            repeat: false,
        }
    }

    fn cart() -> WorkloadLabels {
        WorkloadLabels {
            namespace: "shop".into(),
            workload: "cart".into(),
            workload_kind: "StatefulSet".into(),
        }
    }

    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
    }

    #[test]
    fn a_crash_path_report_is_a_violation_and_a_map_crash_of_its_workload() {
        let m = Metrics::new();
        m.violation(&report("main.go:30", None), &cart());
        m.violation(&report("main.go:30", Some(CrashMessage::Writes)), &cart());
        let text = m.encode();
        let labels = r#"namespace="shop",workload="cart",workload_kind="StatefulSet""#;
        assert_eq!(
            value(
                &text,
                &format!(
                    r#"mapguard_violations_total{{{labels},kind="concurrent_write",action="audit"}}"#
                )
            ),
            Some(2.0),
            "{text}"
        );
        assert_eq!(
            value(
                &text,
                &format!(
                    r#"mapguard_map_crashes_total{{{labels},message_class="concurrent_map_writes"}}"#
                )
            ),
            Some(1.0),
            "only the crash-path report is a crash: {text}"
        );
    }

    #[test]
    fn operations_are_counted_as_seen_and_scaled_by_the_share_seen() {
        let m = Metrics::new();
        m.operations(&cart(), "delete", "sampled", 100, 0.25);
        m.operations(&cart(), "delete", "sampled", 0, 0.25);
        let text = m.encode();
        let labels = r#"namespace="shop",workload="cart",workload_kind="StatefulSet",op="delete""#;
        assert_eq!(
            value(
                &text,
                &format!(
                    r#"mapguard_map_operations_observed_total{{{labels},coverage="sampled"}}"#
                )
            ),
            Some(100.0),
            "{text}"
        );
        assert_eq!(
            value(
                &text,
                &format!(r#"mapguard_map_operations_estimated_total{{{labels}}}"#)
            ),
            Some(400.0),
            "{text}"
        );
    }

    #[test]
    fn timed_deletes_fill_the_histogram_at_their_bucket_middle() {
        let m = Metrics::new();
        // Bucket 10: [512, 1024) ns, counted at 768 ns.
        m.delete_durations(&cart(), 10, 3);
        let text = m.encode();
        let labels = r#"namespace="shop",workload="cart",workload_kind="StatefulSet""#;
        let series = |suffix: &str| {
            value(
                &text,
                &format!("mapguard_map_delete_duration_seconds_{suffix}{{{labels}}}"),
            )
        };
        assert_eq!(series("count"), Some(3.0), "{text}");
        let sum = series("sum").expect("sum");
        assert!((sum - 3.0 * 768e-9).abs() < 1e-12, "{text}");
        let bucket = |le: f64| {
            text.lines()
                .filter(|l| l.starts_with("mapguard_map_delete_duration_seconds_bucket{"))
                .find(|l| {
                    l.split("le=\"")
                        .nth(1)
                        .and_then(|v| v.split('"').next()?.parse::<f64>().ok())
                        .is_some_and(|v| (v - le).abs() < 1e-15)
                })
                .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        };
        assert_eq!(bucket(512e-9), Some(0.0), "{text}");
        assert_eq!(bucket(1024e-9), Some(3.0), "{text}");
    }

    #[test]
    fn call_site_pairs_over_the_bound_share_one_series() {
        let m = Metrics::with_pair_bound(2);
        for line in ["main.go:30", "main.go:31", "main.go:32", "main.go:33"] {
            m.violation(&report(line, None), &cart());
        }
        m.violation(&report("main.go:30", None), &cart());
        let text = m.encode();
        let pairs: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("mapguard_violation_records_total{"))
            .collect();
        assert_eq!(pairs.len(), 3, "two pairs and the rest: {text}");
        assert!(
            pairs.iter().any(|l| l.contains(
                r#"site="main.deleter main.go:30",conflicting_site="main.assigner main.go:40""#
            ) && l.ends_with(" 2")),
            "{text}"
        );
        assert!(
            pairs
                .iter()
                .any(|l| l.contains(r#"record="_other""#) && l.ends_with(" 2")),
            "{text}"
        );
    }
}
