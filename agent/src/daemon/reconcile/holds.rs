//! New processes of the node's Pods, learnt of from the kernel at exec
//! (the exec hook, `enforcer-ebpf/src/exec.rs`) rather than by the next
//! `/proc` scan, so that a process of an enforced Pod runs no map code
//! before its probes are in place.
//!
//! The hook acts on the cgroups this module gives it: each resolved Pod's
//! own cgroup with the Pod's mode (`off` too: nothing is held there), and
//! the kubelet's `kubepods` roots, below which an exec in a Pod not
//! resolved yet is held until its Pod is. The kubelet creates a Pod's
//! cgroup only once it has the Pod from the API server, the same source
//! the agent watches, so the wait is usually one event away; it is bounded
//! all the same.
//!
//! A held process is settled here: its binary is analysed (a file that is
//! not Go is released at once and remembered by its kernel identity, so it
//! is never held again), its Pod resolved, its probes attached and its
//! process-table entry written; then SIGCONT. Past `--exec-hold-timeout`
//! it is released anyway (logged loudly, counted as `timeout`), and the
//! `/proc` scan takes over. Every signal goes to a pid only after its
//! start time says it is the process the kernel held.

mod cgroups;
mod metrics;

pub use metrics::{ExecMetrics, Outcome};

use std::{collections::HashMap, path::PathBuf, time::Duration};

use mapguard_common::{
    CgroupPolicy, ExecEvent, FileKey, Hold, KnownFile, exec_what, file_kind, shared_ops,
};

use super::{Enforcement, Placed, files::ProcessKey, wanted, workload_labels};
use mapguard_enforcer::{
    bpf::loader::ExecHook,
    host::cgroup::{self, unified},
    host::procfs,
};

use crate::daemon::pods::{PodMap, PodPolicy};

/// Failure reasons that mean the file is no Go binary mapguard can
/// enforce on (`TargetError::reason`).
const REFUSALS: [&str; 4] = ["not_go", "unsupported_go", "too_large", "not_enforceable"];
use metrics::{KindLabels, OutcomeLabels};

/// The exec hook and what the agent told it.
pub struct ExecState {
    hook: ExecHook,
    timeout: Duration,
    /// Where the v2 hierarchy is mounted (`None`: no Pod cgroup can be
    /// named to the hook; nothing is held).
    unified: Option<PathBuf>,
    /// Held processes not settled yet.
    pending: HashMap<u32, Hold>,
    /// Pods whose cgroup the hook knows: uid → (cgroup id, policy).
    pods: HashMap<String, (u64, CgroupPolicy)>,
    /// kubepods roots: id → path.
    roots: HashMap<u64, String>,
    metrics: ExecMetrics,
}

impl ExecState {
    /// `adopted`: holds an agent that died left (from its pinned table).
    pub fn new(
        hook: ExecHook,
        timeout: Duration,
        metrics: ExecMetrics,
        adopted: Vec<(u32, Hold)>,
    ) -> ExecState {
        let unified = unified::mount_point();
        if unified.is_none() {
            tracing::warn!(
                "no cgroup v2 hierarchy mounted: new processes cannot be held at exec; the /proc scan alone finds them"
            );
        }
        if !adopted.is_empty() {
            tracing::warn!(
                count = adopted.len(),
                "processes held by an agent that stopped: settling them now"
            );
        }
        ExecState {
            hook,
            timeout,
            unified,
            pending: adopted.into_iter().collect(),
            pods: HashMap::new(),
            roots: HashMap::new(),
            metrics,
        }
    }

    /// The Pods whose cgroup the hook knows: (uid, cgroup id).
    pub(super) fn pod_cgroups(&self) -> impl Iterator<Item = (&str, u64)> {
        self.pods.iter().map(|(uid, (id, _))| (uid.as_str(), *id))
    }

    /// Tells the hook that Pod `uid` is at a per-Pod bound: it registers
    /// none of its new processes.
    pub(super) fn set_at_limit(&mut self, uid: &str) {
        let Some((id, policy)) = self.pods.get_mut(uid) else {
            return;
        };
        let limited = CgroupPolicy {
            at_limit: 1,
            ..*policy
        };
        if *policy != limited && self.hook.set_cgroup(*id, limited).is_ok() {
            *policy = limited;
        }
    }

    pub(super) fn fd(&self) -> std::os::fd::RawFd {
        self.hook.fd()
    }

    pub(super) fn is_pending(&self, pid: u32) -> bool {
        self.pending.contains_key(&pid)
    }

    /// Tells the hook what the file of `key` is (a zero key: unreadable
    /// by the hook, never named).
    fn mark_file(&mut self, key: FileKey, file: KnownFile) {
        if key == FileKey::default() || self.hook.file(&key) == Some(file) {
            return;
        }
        if let Err(e) = self.hook.set_file(key, file) {
            tracing::warn!(error = %e, "cannot tell the exec hook about a file; its processes will be held again");
        }
    }

    /// Stops naming the Go `binaries` to the hook (their analyses are
    /// about to be dropped).
    pub(super) fn forget_binaries(&mut self, binaries: &[u32]) {
        self.hook.forget_binaries(binaries);
    }

    /// Releases a held process (if it is still the one held).
    fn release(&mut self, pid: u32, hold: &Hold, outcome: Outcome) {
        // Counted first: whoever sees the process run on sees it counted.
        let held = Duration::from_nanos(procfs::boot_ns().saturating_sub(hold.boot_ns));
        self.metrics
            .holds
            .get_or_create(&OutcomeLabels {
                outcome: outcome.label(),
            })
            .inc();
        self.metrics.seconds.observe(held.as_secs_f64());
        if procfs::started_by(pid, hold.boot_ns) {
            // SAFETY: kill has no memory preconditions; the pid was just
            // checked to be the process the kernel held.
            if unsafe { libc::kill(pid as i32, libc::SIGCONT) } != 0 {
                tracing::error!(pid, error = %std::io::Error::last_os_error(), "*** cannot resume a process held at exec; it stays stopped ***");
            }
        }
        // Forgotten once released: an agent that dies in between leaves a
        // record its successor releases again (harmless), never a process
        // stopped for good.
        self.hook.forget_hold(pid);
        self.pending.remove(&pid);
        match outcome {
            Outcome::Timeout => tracing::warn!(
                pid,
                held = ?held,
                bound = ?self.timeout,
                "*** a process held at exec was released UNENFORCED: its Pod or probes were not ready within --exec-hold-timeout; the /proc scan takes over (a race in its first moments is not caught) ***"
            ),
            Outcome::Failed => {
                tracing::warn!(pid, held = ?held, "a process held at exec was released unenforced: its probes could not be attached")
            }
            _ => tracing::debug!(pid, held = ?held, outcome = outcome.label(), "released at exec"),
        }
    }
}

impl Enforcement {
    /// Takes on the exec hook (the node agent's, when `--exec-hold`).
    pub fn with_exec(mut self, exec: ExecState) -> Enforcement {
        self.exec = Some(exec);
        self
    }

    /// Handles what the hook reported since the last call and settles the
    /// processes it holds.
    pub(super) fn exec_step(&mut self) {
        if self.exec.is_none() {
            return;
        }
        let pods = self.pods.snapshot();
        while let Some(event) = self.exec.as_mut().and_then(|e| e.hook.next_event()) {
            self.on_exec(&event, &pods);
        }
        self.settle_holds(&pods);
    }

    fn on_exec(&mut self, event: &ExecEvent, pods: &PodMap) {
        let Some(exec) = self.exec.as_mut() else {
            return;
        };
        match event.what {
            exec_what::HELD => {
                exec.pending.insert(
                    event.pid,
                    Hold {
                        boot_ns: event.boot_ns,
                        cgroup: event.cgroup,
                        file: event.file,
                    },
                );
            }
            exec_what::HOLD_FAILED => {
                self.metrics.attach_failed("hold_failed");
                tracing::warn!(
                    pid = event.pid,
                    "the exec hook could not hold a new process (table full or signal refused); the /proc scan takes over"
                );
            }
            exec_what::ENFORCED => {
                exec.metrics.enforced.inc();
                self.enforced_at_exec(event, pods);
            }
            exec_what::UNRESOLVED => {
                if let Some(pod) = self.pod_of(event.pid, pods) {
                    self.note_pod_cgroup(event.pid, &pod);
                }
            }
            _ => {}
        }
    }

    /// A process the kernel registered at exec: its reports name its Pod,
    /// and it gets its own probes as the Pod's coverage says (until then
    /// the binary's shared probes check it).
    fn enforced_at_exec(&mut self, event: &ExecEvent, pods: &PodMap) {
        let pid = event.pid;
        if !procfs::started_by(pid, event.boot_ns) {
            return;
        }
        let Some(placed) = self.placed(pid, pods) else {
            return;
        };
        self.drop_old_image(pid);
        let Some(want) = wanted(pods, Some(&placed)) else {
            self.session.forget_process(pid);
            return;
        };
        // The kernel checks it already (the binary's shared probes): its
        // reports name its Pod from now on, even if it races and is
        // stopped before its own probes wait out the file work.
        self.name_process(&placed, pods);
        self.workloads
            .insert(pid, workload_labels(&pods[&placed.pod_uid]));
        match self.enforce(&placed, pods, &want) {
            Ok(_) => {
                self.enforced.insert(pid, want);
            }
            // Opened or analysed off the loop first: the scan's turn
            // attaches them.
            Err(e) if e.reason == super::PENDING => {}
            Err(e) => {
                tracing::warn!(pid, error = %e.message, "enforced at exec, but its own probes could not be attached")
            }
        }
    }

    /// Forgets what was enforced for the image process `pid` ran before
    /// an exec (its entry in the process table is the hook's now).
    fn drop_old_image(&mut self, pid: u32) {
        if self.enforced.remove(&pid).is_some() {
            self.session.drop_guards(pid);
            self.workloads.remove(&pid);
            self.counted_hits.remove(&pid);
            self.counted_deletes.remove(&pid);
        }
    }

    /// Process `pid` placed in a known Pod's container.
    fn placed(&self, pid: u32, pods: &PodMap) -> Option<Placed> {
        let placement = cgroup::placement_of_pid(self.scanner.proc_root(), pid).ok()?;
        let c = placement.container()?;
        pods.contains_key(c.pod_uid.as_str()).then(|| Placed {
            pid,
            start: procfs::start_time(pid).unwrap_or_default(),
            pod_uid: c.pod_uid.as_str().to_string(),
            container: c.id.as_str().to_string(),
            exe: procfs::cached_exe_id(self.scanner.proc_root(), pid),
        })
    }

    fn pod_of(&self, pid: u32, pods: &PodMap) -> Option<PodPolicy> {
        let placed = self.placed(pid, pods)?;
        pods.get(&placed.pod_uid).cloned()
    }

    /// Settles every held process it can; releases those past the bound.
    fn settle_holds(&mut self, pods: &PodMap) {
        let Some(exec) = self.exec.as_ref() else {
            return;
        };
        let timeout = exec.timeout;
        let mut pending: Vec<(u32, Hold)> = exec.pending.iter().map(|(p, h)| (*p, *h)).collect();
        pending.sort_by_key(|(_, h)| h.boot_ns);
        for (pid, hold) in pending {
            let outcome = self.settle(pid, &hold, pods).or_else(|| {
                let held = procfs::boot_ns().saturating_sub(hold.boot_ns);
                (held >= timeout.as_nanos() as u64).then_some(Outcome::Timeout)
            });
            if let (Some(outcome), Some(exec)) = (outcome, self.exec.as_mut()) {
                exec.release(pid, &hold, outcome);
            }
        }
        if let Some(exec) = self.exec.as_ref() {
            exec.metrics.held.set(exec.pending.len() as i64);
        }
    }

    /// What to do with held process `pid` now: `None` while its Pod is
    /// not known.
    fn settle(&mut self, pid: u32, hold: &Hold, pods: &PodMap) -> Option<Outcome> {
        if !procfs::started_by(pid, hold.boot_ns) {
            return Some(Outcome::Exited);
        }
        let start = procfs::start_time(pid)?;
        let exe = procfs::cached_exe_id(self.scanner.proc_root(), pid);
        // The binary first: a file that is not Go is released whatever
        // its Pod, and never held again. Opened and analysed off the
        // loop: not settled until then (or until the hold's bound).
        let not_go = KnownFile {
            kind: file_kind::NOT_ENFORCEABLE,
            ..KnownFile::default()
        };
        let target = match self.binary_of(ProcessKey { pid, start, exe }) {
            Ok(target) => target,
            Err(e) if e.reason == super::PENDING => return None,
            Err(e) if e.reason == "exited" || !procfs::alive(pid) => {
                return Some(Outcome::Exited);
            }
            Err(e) if REFUSALS.contains(&e.reason) => {
                self.exec.as_mut()?.mark_file(hold.file, not_go);
                return Some(Outcome::NotGo);
            }
            Err(e) => {
                self.metrics.attach_failed(e.reason);
                tracing::warn!(pid, error = %e.message, "cannot probe a held process's binary");
                return Some(Outcome::Failed);
            }
        };
        let known = |shared: bool| KnownFile {
            kind: file_kind::GO,
            shared_map_ops: u8::from(shared),
            _pad: [0; 2],
            binary_id: target.id,
        };
        let shared = self.session.has_shared_map_ops(target.id);
        self.exec.as_mut()?.mark_file(hold.file, known(shared));
        // Then its Pod.
        let placement = match cgroup::placement_of_pid(self.scanner.proc_root(), pid) {
            Ok(p) => p,
            Err(_) => return Some(Outcome::Exited),
        };
        let Some(container) = placement.container() else {
            return Some(Outcome::NotEnforced);
        };
        let pod = pods.get(container.pod_uid.as_str())?.clone();
        self.note_pod_cgroup(pid, &pod);
        let placed = Placed {
            pid,
            start,
            pod_uid: pod.uid.clone(),
            container: container.id.as_str().to_string(),
            exe,
        };
        let Some(want) = wanted(pods, Some(&placed)) else {
            return Some(Outcome::NotEnforced);
        };
        self.drop_old_image(pid);
        match self.enforce(&placed, pods, &want) {
            Ok(_) => {}
            Err(e) if e.reason == super::PENDING => return None,
            Err(e) if e.reason == "exited" => return Some(Outcome::Exited),
            Err(e) => {
                self.metrics.attach_failed(e.reason);
                tracing::warn!(pid, error = %e.message, "cannot enforce a held process");
                return Some(Outcome::Failed);
            }
        }
        self.workloads.insert(pid, workload_labels(&pod));
        let coverage = want.coverage;
        self.enforced.insert(pid, want);
        if coverage.shared_ops() != shared_ops::NONE && !shared {
            // The next process of this file in such a Pod needs no hold.
            match self.session.share_map_ops(&target) {
                Ok(()) => self.exec.as_mut()?.mark_file(hold.file, known(true)),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot probe a binary for all its processes; its next processes will be held too")
                }
            }
        }
        Some(Outcome::Attached)
    }

    /// Stops holding anything: the hook is detached, then every process
    /// still held is released.
    pub(super) fn shutdown_exec(&mut self) {
        let Some(exec) = self.exec.as_mut() else {
            return;
        };
        exec.hook.detach();
        for (pid, hold) in exec.hook.holds() {
            exec.pending.entry(pid).or_insert(hold);
        }
        let pending: Vec<(u32, Hold)> = exec.pending.iter().map(|(p, h)| (*p, *h)).collect();
        if !pending.is_empty() {
            tracing::warn!(
                count = pending.len(),
                "stopping: releasing the processes held at exec, unenforced"
            );
        }
        for (pid, hold) in pending {
            exec.release(pid, &hold, Outcome::ReleasedOnShutdown);
        }
    }
}
