//! The exec hook's metrics: how each hold ended and how long it lasted,
//! the processes the kernel enforced at exec by itself, the holds and
//! watched cgroups now.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

/// How a hold ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Its probes are in place and its entry written.
    Attached,
    /// Not a Go binary (or a release mapguard refuses).
    NotGo,
    /// Its Pod is not enforced (`off`), or it is in no container.
    NotEnforced,
    /// Released at the bound, unenforced.
    Timeout,
    /// Gone before it was settled.
    Exited,
    /// Its probes could not be attached.
    Failed,
    /// The agent stopped while it was held.
    ReleasedOnShutdown,
}

impl Outcome {
    pub const ALL: [Outcome; 7] = [
        Outcome::Attached,
        Outcome::NotGo,
        Outcome::NotEnforced,
        Outcome::Timeout,
        Outcome::Exited,
        Outcome::Failed,
        Outcome::ReleasedOnShutdown,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Outcome::Attached => "attached",
            Outcome::NotGo => "not_go",
            Outcome::NotEnforced => "not_enforced",
            Outcome::Timeout => "timeout",
            Outcome::Exited => "exited",
            Outcome::Failed => "failed",
            Outcome::ReleasedOnShutdown => "released_on_shutdown",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct OutcomeLabels {
    pub(super) outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct KindLabels {
    pub(super) kind: &'static str,
}

/// The exec hook's metrics.
pub struct ExecMetrics {
    pub(super) holds: Family<OutcomeLabels, Counter>,
    pub(super) seconds: Histogram,
    pub(super) enforced: Counter,
    pub(super) held: Gauge,
    pub(super) cgroups: Family<KindLabels, Gauge>,
}

impl ExecMetrics {
    pub fn new(r: &mut Registry) -> ExecMetrics {
        let holds = Family::<OutcomeLabels, Counter>::default();
        for outcome in Outcome::ALL {
            let _ = holds.get_or_create(&OutcomeLabels {
                outcome: outcome.label(),
            });
        }
        r.register(
            "mapguard_exec_holds",
            "Processes held at exec (stopped before their first instruction) until their probes were in place, by how the hold ended",
            holds.clone(),
        );
        // 1 ms to ~8 s.
        let seconds = Histogram::new((0..14).map(|b| 0.001 * 2f64.powi(b)));
        r.register(
            "mapguard_exec_hold_seconds",
            "How long processes were held at exec (from the exec to their release)",
            seconds.clone(),
        );
        let enforced = Counter::default();
        r.register(
            "mapguard_exec_enforced",
            "Processes the kernel put under enforcement at exec by itself (a binary whose probes were in place for every process of the file; no hold)",
            enforced.clone(),
        );
        let held = Gauge::default();
        r.register(
            "mapguard_exec_held_processes",
            "Processes held at exec now",
            held.clone(),
        );
        let cgroups = Family::<KindLabels, Gauge>::default();
        for kind in ["pod", "kubepods_root"] {
            let _ = cgroups.get_or_create(&KindLabels { kind });
        }
        r.register(
            "mapguard_exec_watched_cgroups",
            "Cgroups the exec hook acts on: resolved Pods' cgroups and the kubelet's kubepods roots",
            cgroups.clone(),
        );
        ExecMetrics {
            holds,
            seconds,
            enforced,
            held,
            cgroups,
        }
    }
}
