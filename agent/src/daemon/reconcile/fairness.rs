//! What one Pod may take of the node's shared enforcement resources, and
//! what it lost: the process-table slots and probe ids its processes hold
//! (bounded per Pod, so that a Pod starting thousands of Go processes
//! cannot leave none to the others), and its violation reports the kernel
//! dropped over its rate limit or lost to a full ring buffer, counted per
//! workload from the kernel's per-cgroup counters.

use std::collections::{HashMap, HashSet};

use mapguard_enforcer::host::cgroup::unified;

use super::{Enforcement, Placed, workload_labels};
use crate::daemon::{metrics::WorkloadLabels, pods::PodMap};

/// Per-Pod bounds (the daemon's `--max-processes-per-pod` and
/// `--max-probes-per-pod`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodLimits {
    pub processes: usize,
    pub probes: usize,
}

impl Default for PodLimits {
    fn default() -> Self {
        PodLimits {
            processes: usize::MAX,
            probes: usize::MAX,
        }
    }
}

/// The failure reason (`mapguard_attach_failures_total{reason}`) of a
/// process refused because its Pod is at a bound.
pub(super) const POD_LIMIT: &str = "pod_limit";

/// The drop counters of the kernel's cgroups, and whose they are.
#[derive(Debug, Default)]
pub(super) struct Drops {
    /// The v2 cgroup of each enforced process.
    pid_cgroups: HashMap<u32, u64>,
    /// The workload (and Pod, for logs) of each cgroup a report may be
    /// counted under: enforced processes' own cgroups.
    cgroups: HashMap<u64, (WorkloadLabels, String)>,
    /// Counts already added to the metrics: cgroup → (limited, lost).
    counted: HashMap<u64, (u64, u64)>,
    /// Pods whose drops were logged (once each).
    logged: HashSet<String>,
    /// Processes refused for a bound, counted once each.
    refused: HashSet<(u32, u64)>,
}

impl Enforcement {
    /// What the enforced processes of each Pod hold: uid → (processes,
    /// probe ids), leaving out process `except`.
    fn holdings(&self, except: Option<u32>) -> HashMap<&str, (usize, usize)> {
        let mut held: HashMap<&str, (usize, usize)> = HashMap::new();
        for (pid, e) in &self.enforced {
            if Some(*pid) == except {
                continue;
            }
            let entry = held.entry(e.pod_uid.as_str()).or_default();
            entry.0 += 1;
            entry.1 += self.session.probe_ids_of(*pid);
        }
        held
    }

    /// The bound a Pod holding `processes` and `probes` is at, if any.
    fn limit_reached(&self, (processes, probes): (usize, usize)) -> Option<&'static str> {
        if processes >= self.limits.processes {
            Some("processes")
        } else if probes >= self.limits.probes {
            Some("probes")
        } else {
            None
        }
    }

    /// The Pods at a bound (the exec hook registers none of their new
    /// processes).
    pub(super) fn pods_at_limit(&self) -> HashSet<String> {
        self.holdings(None)
            .into_iter()
            .filter(|(_, held)| self.limit_reached(*held).is_some())
            .map(|(uid, _)| uid.to_string())
            .collect()
    }

    /// The bound Pod `p.pod_uid` is at, if any: how many of its processes
    /// are enforced, and the probe ids they hold. A process refused is
    /// counted once; the exec hook is told at once.
    pub(super) fn pod_at_limit(&mut self, p: &Placed, pods: &PodMap) -> Option<String> {
        let held = self
            .holdings(Some(p.pid))
            .get(p.pod_uid.as_str())
            .copied()
            .unwrap_or_default();
        let limit = self.limit_reached(held)?;
        let (processes, probes) = held;
        if let Some(exec) = self.exec.as_mut() {
            exec.set_at_limit(&p.pod_uid);
        }
        let pod = pods.get(&p.pod_uid)?;
        if self.drops.refused.insert((p.pid, p.start)) {
            self.metrics.pod_limit_refused(&workload_labels(pod), limit);
        }
        Some(format!(
            "Pod {} is at its bound of {limit} ({processes} processes enforced holding {probes} probe ids; --max-processes-per-pod {}, --max-probes-per-pod {}): not enforced",
            pod.full_name(),
            self.limits.processes,
            self.limits.probes
        ))
    }

    /// Remembers the v2 cgroup of enforced process `pid` of `pod`, under
    /// which the kernel counts its reports when its Pod's cgroup is not
    /// known to the exec hook.
    pub(super) fn note_process_cgroup(&mut self, pid: u32, labels: WorkloadLabels, pod: String) {
        let Some(mount) = &self.unified else {
            return;
        };
        let Some(id) = unified::path_of_pid(self.scanner.proc_root(), pid)
            .and_then(|path| unified::id(mount, &path))
        else {
            return;
        };
        self.drops.pid_cgroups.insert(pid, id);
        self.drops.cgroups.insert(id, (labels, pod));
    }

    /// Adds what the kernel dropped and lost since the last count to each
    /// workload's `mapguard_dropped_events_total`, and forgets processes
    /// gone.
    pub(super) fn count_dropped_events(&mut self, pods: &PodMap) {
        let enforced = &self.enforced;
        self.drops
            .pid_cgroups
            .retain(|pid, _| enforced.contains_key(pid));
        self.drops
            .refused
            .retain(|(pid, _)| mapguard_enforcer::host::procfs::alive(*pid));
        let mut owners: HashMap<u64, (WorkloadLabels, String)> = HashMap::new();
        if let Some(exec) = &self.exec {
            for (uid, id) in exec.pod_cgroups() {
                if let Some(pod) = pods.get(uid) {
                    owners.insert(id, (workload_labels(pod), pod.full_name()));
                }
            }
        }
        let events = self.session.cgroup_drops();
        for (id, counts) in &events {
            let before = self
                .drops
                .counted
                .insert(*id, (counts.limited, counts.lost));
            let (limited_before, lost_before) = before.unwrap_or((0, 0));
            let limited = counts.limited.saturating_sub(limited_before);
            let lost = counts.lost.saturating_sub(lost_before);
            if limited == 0 && lost == 0 {
                continue;
            }
            let (labels, pod) = owners
                .get(id)
                .or_else(|| self.drops.cgroups.get(id))
                .cloned()
                .unwrap_or_default();
            self.metrics
                .dropped_events(&labels, "rate_limited", limited);
            self.metrics.dropped_events(&labels, "ring_full", lost);
            if self.drops.logged.insert(pod.clone()) {
                tracing::warn!(
                    pod = %pod,
                    cgroup = id,
                    rate_limited = limited,
                    ring_full = lost,
                    "violation reports of this Pod dropped (counted in mapguard_dropped_events_total; logged once per Pod)"
                );
            }
        }
        // Bounded by the kernel's table and the enforced processes.
        let present: HashSet<u64> = events.iter().map(|(id, _)| *id).collect();
        self.drops.counted.retain(|id, _| present.contains(id));
        let live: HashSet<u64> = self.drops.pid_cgroups.values().copied().collect();
        self.drops
            .cgroups
            .retain(|id, _| present.contains(id) || live.contains(id));
        self.drops
            .logged
            .retain(|pod| pods.values().any(|p| p.full_name() == *pod));
    }
}
