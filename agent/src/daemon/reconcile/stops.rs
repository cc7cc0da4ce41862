//! Deadlines of stops. A process of a `stop` Pod is stopped by the
//! kernel (SIGSTOP) at its race and left for inspection, but not for
//! ever: past `--stop-deadline` it is resumed or killed
//! (`--after-stop-deadline`).
//!
//! The kernel records each stop, with its time, before it makes it, in a
//! table the agent pins (`loader::StopTable`): only the processes named
//! there are ever resumed or killed here, never one stopped by anyone
//! else (a debugger, an operator). A process found running again (its
//! stop ended by someone else), gone, or replaced by a later process with
//! the same pid (its start time says so) is forgotten. An agent that
//! starts finds the stops its predecessor left and applies what remains
//! of their deadline: the deadline runs from the stop, not from the agent.

use std::time::Duration;

use mapguard_common::Stop;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use mapguard_enforcer::{bpf::loader::StopTable, host::procfs};

use crate::config::AfterStop;

/// How long after its stop a process may be seen running before its
/// record is dropped: the kernel records a stop just before the SIGSTOP
/// takes effect (on the process's way back to user space).
const SETTLE: Duration = Duration::from_secs(1);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabels {
    action: &'static str,
}

/// The stops' metrics.
pub struct StopMetrics {
    stopped: Gauge,
    deadlines: Family<ActionLabels, Counter>,
}

impl StopMetrics {
    pub fn new(r: &mut Registry) -> StopMetrics {
        let stopped = Gauge::default();
        let deadlines = Family::<ActionLabels, Counter>::default();
        for action in [AfterStop::Resume, AfterStop::Kill] {
            let _ = deadlines.get_or_create(&ActionLabels {
                action: action.label(),
            });
        }
        r.register(
            "mapguard_stopped_processes",
            "Processes stopped by mapguard now (stop mode), waiting for their deadline",
            stopped.clone(),
        );
        r.register(
            "mapguard_stop_deadline",
            "Stopped processes resumed or killed at --stop-deadline, by action",
            deadlines.clone(),
        );
        StopMetrics { stopped, deadlines }
    }
}

/// The stops and what to do with them at their deadline.
pub struct StopState {
    table: StopTable,
    deadline: Duration,
    after: AfterStop,
    metrics: StopMetrics,
}

impl StopState {
    /// `adopted`: stops an agent that is gone left (from its pinned
    /// table), written into this agent's table (those of processes still
    /// there), so that they outlive this agent too.
    pub fn new(
        mut table: StopTable,
        deadline: Duration,
        after: AfterStop,
        metrics: StopMetrics,
        adopted: Vec<(u32, Stop)>,
    ) -> StopState {
        let adopted: Vec<(u32, Stop)> = adopted
            .into_iter()
            .filter(|(pid, stop)| procfs::started_by(*pid, stop.boot_ns))
            .collect();
        if !adopted.is_empty() {
            tracing::warn!(
                count = adopted.len(),
                ?deadline,
                "processes stopped by an agent that is gone: their deadline runs from their stop"
            );
        }
        for (pid, stop) in adopted {
            if let Err(e) = table.insert(pid, stop) {
                tracing::error!(pid, error = %e, "*** cannot keep a stop left by an agent that is gone; applying its deadline action now ***");
                act(pid, after);
            }
        }
        StopState {
            table,
            deadline,
            after,
            metrics,
        }
    }

    /// Applies the deadlines that have passed and forgets the stops that
    /// ended otherwise.
    pub fn step(&mut self) {
        let now = procfs::boot_ns();
        let stops = self.table.stops();
        let mut waiting = 0;
        for (pid, stop) in stops {
            let since = Duration::from_nanos(now.saturating_sub(stop.boot_ns));
            if !procfs::started_by(pid, stop.boot_ns) {
                // Gone (or its pid is another process's now).
                self.table.forget(pid, stop);
                continue;
            }
            if procfs::state(pid) != Some('T') {
                if since >= SETTLE {
                    tracing::info!(
                        pid,
                        "a process mapguard stopped runs again (resumed by someone else)"
                    );
                    self.table.forget(pid, stop);
                } else {
                    waiting += 1;
                }
                continue;
            }
            if since < self.deadline {
                waiting += 1;
                continue;
            }
            tracing::warn!(
                pid,
                stopped = ?since,
                action = self.after.label(),
                "a process mapguard stopped reached --stop-deadline"
            );
            act(pid, self.after);
            self.metrics
                .deadlines
                .get_or_create(&ActionLabels {
                    action: self.after.label(),
                })
                .inc();
            // Forgotten once signalled: an agent that dies in between
            // leaves a record its successor acts on again (harmless).
            self.table.forget(pid, stop);
        }
        self.metrics.stopped.set(waiting);
    }
}

/// Resumes or kills `pid` (just checked to be the process stopped).
fn act(pid: u32, after: AfterStop) {
    let signal = match after {
        AfterStop::Resume => libc::SIGCONT,
        AfterStop::Kill => libc::SIGKILL,
    };
    // SAFETY: kill has no memory preconditions.
    if unsafe { libc::kill(pid as i32, signal) } != 0 {
        tracing::error!(pid, error = %std::io::Error::last_os_error(), "*** cannot end the stop of a process at its deadline ***");
    }
}
