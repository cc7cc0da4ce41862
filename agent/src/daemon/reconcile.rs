//! The node agent's enforcement loop: places each process of the node in
//! its Pod (through its cgroup), puts the processes of enforced Pods under
//! enforcement with their Pod's action and coverage, follows Pods and
//! processes as they come, change and go, and reports what the probes find.
//!
//! A process is enforced only when its cgroup names the UID of a Pod bound
//! to this node whose mode is not `off`: a process the agent cannot place
//! is never probed on the hot path and never signalled.

mod fairness;
mod files;
mod holds;
mod stops;

pub use fairness::PodLimits;
pub use files::FileWork;
pub use holds::{ExecMetrics, ExecState, Outcome};
pub use stops::{StopMetrics, StopState};

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::{Duration, Instant},
};

use mapguard_api::{
    mode::{Coverage, Mode},
    vocab::Op,
};

use mapguard_enforcer::{
    binary::target::BinaryTarget, bpf::session::Session, host::cgroup::PodInfo, host::procfs,
    host::procscan::ProcScanner, report::events::ViolationRecord,
};

use super::{
    metrics::{Metrics, WorkloadLabels},
    ops::Heartbeat,
    pods::{PodMap, PodPolicy, PodTable},
};
use files::Progress;

/// A process of an enforced Pod, as placed by its cgroup.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Placed {
    pid: u32,
    /// Start time in clock ticks since boot: with the pid, the process's
    /// identity (pids are reused).
    start: u64,
    pod_uid: String,
    container: String,
    /// Its executable's `(device, inode)`, as the kernel knows them
    /// already (no operation on the file's filesystem): whose filesystem
    /// it is on, and which image this is (an exec changes it).
    exe: Option<(u64, u64)>,
}

impl Placed {
    /// The process image whose executable is opened and analysed.
    fn image(&self) -> files::ProcessKey {
        files::ProcessKey {
            pid: self.pid,
            start: self.start,
            exe: self.exe,
        }
    }
}

/// How one process is enforced now.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Enforced {
    start: u64,
    pod_uid: String,
    mode: Mode,
    coverage: Coverage,
}

/// The loop's state: the session, and what is enforced.
pub struct Enforcement {
    session: Session,
    pods: Arc<PodTable>,
    metrics: Arc<Metrics>,
    scanner: ProcScanner,
    /// Unplaceable cgroups already logged (each is logged once).
    unplaced_logged: HashSet<String>,
    enforced: HashMap<u32, Enforced>,
    /// Files that cannot be enforced (not Go, unsupported release), by
    /// the `(device, inode)` of their real file (one for every container
    /// of an image: `procfs::real_file_id`), so they are analysed once:
    /// the reason label and the message.
    refused: HashMap<(u64, u64), (&'static str, String)>,
    /// Opening and analysing executables, off the loop.
    files: FileWork,
    /// Beaten at every turn of the loop (`/healthz`).
    heartbeat: Arc<Heartbeat>,
    /// Processes already counted as failed, so each counts once.
    failed: HashSet<(u32, u64)>,
    /// The workload of each enforced process (its metrics' labels).
    workloads: HashMap<u32, WorkloadLabels>,
    /// Probe hits of each enforced process already counted, by operation.
    counted_hits: HashMap<u32, HashMap<u8, u64>>,
    /// Timed deletes of each enforced process already counted, by bucket.
    counted_deletes: HashMap<u32, HashMap<u32, u64>>,
    /// The exec hook, when new processes are held at exec.
    exec: Option<ExecState>,
    /// The deadlines of the processes the probes stopped.
    stops: Option<StopState>,
    /// Process-table entries the last reconcile found unaccounted for.
    unexplained: HashSet<u32>,
    /// How long a binary no process runs is kept (`None`: for ever).
    evict_after: Option<Duration>,
    /// Binaries no process runs, since when.
    idle: HashMap<u32, Instant>,
    /// What one Pod may hold of the process table and the probe ids.
    limits: PodLimits,
    /// Reports dropped in the kernel, by cgroup, and whose they are.
    drops: fairness::Drops,
    /// Where the v2 cgroup hierarchy is mounted.
    unified: Option<std::path::PathBuf>,
}

impl Enforcement {
    pub fn new(
        session: Session,
        pods: Arc<PodTable>,
        metrics: Arc<Metrics>,
        mut scanner: ProcScanner,
    ) -> Enforcement {
        if scanner.in_host_cgroup_namespace() == Some(false) {
            tracing::warn!(
                "the agent runs in a cgroup namespace of its own: processes of cgroupfs-driver pods cannot be placed; run it in the host's (hostPID and the host cgroup namespace)"
            );
        }
        let files = FileWork::new(
            scanner.proc_root(),
            session.read_limits(),
            DEFAULT_FILE_TIMEOUT,
        );
        Enforcement {
            session,
            files,
            heartbeat: Arc::new(Heartbeat::default()),
            pods,
            metrics,
            scanner,
            unplaced_logged: HashSet::new(),
            enforced: HashMap::new(),
            refused: HashMap::new(),
            failed: HashSet::new(),
            workloads: HashMap::new(),
            counted_hits: HashMap::new(),
            counted_deletes: HashMap::new(),
            exec: None,
            stops: None,
            unexplained: HashSet::new(),
            evict_after: None,
            idle: HashMap::new(),
            limits: PodLimits::default(),
            drops: fairness::Drops::default(),
            unified: mapguard_enforcer::host::cgroup::unified::mount_point(),
        }
    }

    /// Bounds what one Pod's processes may hold.
    pub fn with_pod_limits(mut self, limits: PodLimits) -> Enforcement {
        self.limits = limits;
        self
    }

    /// Drops the analysis of a binary (and its probes) once no process has
    /// run it for `after`.
    pub fn evicting_binaries_after(mut self, after: Duration) -> Enforcement {
        self.evict_after = Some(after);
        self
    }

    /// Applies stop deadlines (every scan interval).
    pub fn with_stops(mut self, stops: StopState) -> Enforcement {
        self.stops = Some(stops);
        self
    }

    /// Gives up an operation on an executable (opening, identifying,
    /// analysing it) after `timeout`.
    pub fn with_file_timeout(mut self, timeout: Duration) -> Enforcement {
        self.files = FileWork::new(
            self.scanner.proc_root(),
            self.session.read_limits(),
            timeout,
        );
        self
    }

    /// Beats `heartbeat` at every turn of the loop.
    pub fn with_heartbeat(mut self, heartbeat: Arc<Heartbeat>) -> Enforcement {
        self.heartbeat = heartbeat;
        self
    }

    /// Runs until `stop` returns true: reports what the probes find as it
    /// comes (each record also goes to `on_record`) and re-places the
    /// node's processes every `interval`.
    pub fn run(
        mut self,
        interval: Duration,
        stop: impl Fn() -> bool,
        mut on_record: impl FnMut(&ViolationRecord, &WorkloadLabels),
    ) {
        let mut last = Instant::now() - interval;
        while !stop() {
            self.heartbeat.beat();
            let exec_fd = self.exec.as_ref().map(ExecState::fd);
            for record in self.session.poll_also(Duration::from_millis(50), exec_fd) {
                let workload = self.workload_of(&record);
                self.metrics.violation(&record, &workload);
                on_record(&record, &workload);
            }
            let files_done = self.collect_file_work();
            self.exec_step();
            if last.elapsed() >= interval || files_done {
                last = Instant::now();
                self.reconcile();
                if let Some(stops) = &mut self.stops {
                    stops.step();
                }
            }
        }
        self.shutdown_exec();
        self.session.finish();
    }

    /// Brings enforcement in line with the node's Pods and processes.
    pub fn reconcile(&mut self) {
        let pods = self.pods.snapshot();
        let placed = self.place(&pods);
        self.metrics
            .set_api_connected(self.pods.connection().is_ok());
        self.metrics.set_pods(
            pods.len(),
            pods.values().filter(|p| p.mode.is_some()).count(),
        );
        let live: HashMap<u32, &Placed> = placed.iter().map(|p| (p.pid, p)).collect();

        // Processes gone, reused pids, Pods gone or changed.
        let stale: Vec<u32> = self
            .enforced
            .iter()
            .filter(|(pid, e)| wanted(&pods, live.get(pid).copied()) != Some((**e).clone()))
            .map(|(pid, _)| *pid)
            .collect();
        // Count what the probes saw, before the probes of processes gone go.
        self.count_operations();
        for pid in stale {
            self.session.forget_process(pid);
            self.enforced.remove(&pid);
            self.workloads.remove(&pid);
            self.counted_hits.remove(&pid);
            self.counted_deletes.remove(&pid);
            tracing::info!(pid, "no longer enforced");
        }
        // Named at exec but gone before their own probes came. Only the
        // exited: a live one may not be placed by this scan yet (its new
        // container not listed), and its process-table entry, the hook's,
        // is what enforces it meanwhile.
        let named_only: Vec<u32> = self
            .workloads
            .keys()
            .filter(|pid| {
                !self.enforced.contains_key(pid) && !live.contains_key(pid) && !procfs::alive(**pid)
            })
            .copied()
            .collect();
        for pid in named_only {
            self.session.forget_process(pid);
            self.workloads.remove(&pid);
        }

        self.sync_exec(&pods);
        for p in &placed {
            if let Some(pod) = pods.get(&p.pod_uid) {
                self.note_pod_cgroup(p.pid, pod);
            }
            // Held at exec: settled by the hold, not here.
            if self.exec.as_ref().is_some_and(|e| e.is_pending(p.pid)) {
                continue;
            }
            if self.enforced.contains_key(&p.pid) {
                continue;
            }
            let Some(want) = wanted(&pods, Some(p)) else {
                continue;
            };
            if let Err(e) = self.enforce(p, &pods, &want) {
                if e.reason == PENDING {
                    continue;
                }
                if self.failed.insert((p.pid, p.start)) {
                    self.metrics.attach_failed(e.reason());
                    tracing::warn!(pid = p.pid, error = %e.message, "cannot enforce");
                }
                continue;
            }
            self.workloads
                .insert(p.pid, workload_labels(&pods[&p.pod_uid]));
            self.enforced.insert(p.pid, want);
        }
        self.failed.retain(|(pid, _)| live.contains_key(pid));
        let exec = self.exec.as_ref();
        self.files.retain(|image| {
            live.get(&image.pid).is_some_and(|p| p.image() == *image)
                || exec.is_some_and(|e| e.is_pending(image.pid))
        });
        self.sweep_process_table();
        self.count_dropped_events(&pods);
        self.evict_idle_binaries();
        self.metrics
            .set_enforced(self.enforced.len(), self.session.binary_count());
        self.metrics
            .set_incomplete_checks(&self.session.incomplete_checks());
    }

    /// Removes process-table entries nothing accounts for: the exec hook
    /// writes entries itself, and one whose process user space never
    /// placed (it exited at once, its Pod went) would otherwise stay, and
    /// act on a later process given the same pid. An entry is removed at
    /// the second reconcile that finds it unexplained (its exec event may
    /// be on its way at the first).
    fn sweep_process_table(&mut self) {
        let unexplained: HashSet<u32> = self
            .session
            .registered_pids()
            .into_iter()
            .filter(|pid| !self.enforced.contains_key(pid))
            .filter(|pid| !self.exec.as_ref().is_some_and(|e| e.is_pending(*pid)))
            .collect();
        for pid in unexplained.intersection(&self.unexplained) {
            tracing::debug!(pid, "process-table entry of no enforced process removed");
            self.session.forget_process(*pid);
        }
        self.unexplained = unexplained;
    }

    /// Drops the binaries no process has run for `evict_after`: the exec
    /// hook first stops naming them (no new process is registered with
    /// them by the kernel), then, for those still unused (the hook may
    /// have registered one just before), their analyses and probes go.
    fn evict_idle_binaries(&mut self) {
        let Some(after) = self.evict_after else {
            return;
        };
        let in_use = self.session.binaries_in_use();
        let analysed = self.session.binary_ids();
        let now = Instant::now();
        self.idle
            .retain(|id, _| analysed.contains(id) && !in_use.contains(id));
        for id in analysed.iter().filter(|id| !in_use.contains(id)) {
            self.idle.entry(*id).or_insert(now);
        }
        let due: Vec<u32> = self
            .idle
            .iter()
            .filter(|(_, since)| now.duration_since(**since) >= after)
            .map(|(id, _)| *id)
            .collect();
        if due.is_empty() {
            return;
        }
        if let Some(exec) = self.exec.as_mut() {
            exec.forget_binaries(&due);
        }
        let in_use = self.session.binaries_in_use();
        for id in due {
            // Registered meanwhile: kept (its file is held again next time).
            if in_use.contains(&id) {
                continue;
            }
            self.idle.remove(&id);
            self.session.drop_binary(id);
            self.metrics.binary_evicted();
        }
    }

    /// The workload a report is counted under: its process's, else (a
    /// process no longer enforced) its Pod's name as a Pod of its own.
    fn workload_of(&self, record: &ViolationRecord) -> WorkloadLabels {
        if let Some(w) = self.workloads.get(&record.pid) {
            return w.clone();
        }
        WorkloadLabels {
            namespace: record.namespace.clone().unwrap_or_default(),
            workload: record.pod.clone().unwrap_or_default(),
            workload_kind: "Pod".into(),
        }
    }

    /// Adds the probe hits of every enforced process since the last count
    /// to its workload's operation counters.
    fn count_operations(&mut self) {
        for observed in self.session.observed_ops() {
            let Some(workload) = self.workloads.get(&observed.pid) else {
                continue;
            };
            let counted = self.counted_hits.entry(observed.pid).or_default();
            for (op, hits) in observed.hits {
                let before = counted.insert(op, hits).unwrap_or(0);
                // Fewer than before: the counters were reset (a new set).
                let new = if hits >= before { hits - before } else { hits };
                self.metrics.operations(
                    workload,
                    Op::from_kernel(op).as_str(),
                    observed.coverage.as_str(),
                    new,
                    observed.fraction,
                );
            }
            let counted = self.counted_deletes.entry(observed.pid).or_default();
            for (bucket, count) in observed.delete_latency {
                let before = counted.insert(bucket, count).unwrap_or(0);
                self.metrics
                    .delete_durations(workload, bucket, count.saturating_sub(before));
            }
        }
    }

    /// The processes of the node's known Pods, placed by their cgroups;
    /// unplaceable ones are counted and logged once, never enforced.
    fn place(&mut self, pods: &PodMap) -> Vec<Placed> {
        let scan = match self.scanner.scan() {
            Ok(scan) => scan,
            Err(e) => {
                tracing::error!(error = %e, "cannot list the node's processes");
                return Vec::new();
            }
        };
        for issue in &scan.issues {
            tracing::debug!(?issue, "process scan");
        }
        for (process, unplaceable) in scan.unplaceable() {
            if self.unplaced_logged.insert(unplaceable.path.clone()) {
                self.metrics.unplaced();
                tracing::warn!(
                    pid = process.pid,
                    reason = unplaceable.reason.label(),
                    "{unplaceable}; never enforced"
                );
            }
        }
        scan.containers()
            .filter(|(_, c)| pods.contains_key(c.pod_uid.as_str()))
            .filter_map(|(process, c)| {
                Some(Placed {
                    pid: process.pid,
                    start: procfs::start_time(process.pid)?,
                    pod_uid: c.pod_uid.as_str().to_string(),
                    container: c.id.as_str().to_string(),
                    exe: process.exe.map(Into::into),
                })
            })
            .collect()
    }

    /// Takes on the analyses finished off the loop; whether any work
    /// finished (processes may be enforced now).
    fn collect_file_work(&mut self) -> bool {
        let (analyses, changed) = self.files.collect();
        for analysis in analyses {
            match analysis.result {
                Ok(target) => {
                    if let Err(e) = self.session.add_binary(analysis.file, target, None) {
                        tracing::warn!(error = %e, "cannot probe the crash paths of an analysed binary");
                    }
                }
                Err(error) => {
                    self.refused
                        .insert(analysis.file, (error.reason(), error.to_string()));
                }
            }
        }
        self.metrics.set_stuck_file_operations(self.files.stuck());
        changed
    }

    /// The analysed binary of process `process` (its executable on
    /// filesystem `dev`), as far as the work off the loop has got: a
    /// [`PENDING`] failure until it is done.
    fn binary_of(&mut self, process: files::ProcessKey) -> Result<Arc<BinaryTarget>, Failure> {
        let file = match self.files.process(process) {
            None => return Err(Failure::pending()),
            Some(Progress::Failed { reason, message }) => {
                return Err(Failure {
                    reason,
                    message: message.clone(),
                });
            }
            Some(Progress::Opened { file, .. }) => *file,
        };
        if let Some((reason, message)) = self.refused.get(&file) {
            return Err(Failure {
                reason,
                message: message.clone(),
            });
        }
        if let Some(target) = self.session.known_binary(file) {
            return Ok(target);
        }
        if self.files.gave_up(file) {
            return Err(Failure {
                reason: "timeout",
                message: "analysing its executable took longer than --file-timeout".into(),
            });
        }
        if self.files.analysing(file) {
            return Err(Failure::pending());
        }
        let opened = match self.files.process(process) {
            Some(Progress::Opened { opened, .. }) => opened.take(),
            _ => None,
        };
        let Some(opened) = opened else {
            // Its descriptor went to an analysis that came to nothing
            // (its probes could not be attached): opened again next time.
            self.files.forget(process);
            return Err(Failure::pending());
        };
        let id = self.session.reserve_binary_id();
        if let Err(opened) = self.files.analyse(process, file, opened, id)
            && let Some(Progress::Opened { opened: slot, .. }) = self.files.process(process)
        {
            *slot = Some(opened);
        }
        Err(Failure::pending())
    }

    fn enforce(
        &mut self,
        p: &Placed,
        pods: &PodMap,
        want: &Enforced,
    ) -> Result<Arc<BinaryTarget>, Failure> {
        if let Some(message) = self.pod_at_limit(p, pods) {
            return Err(Failure {
                reason: fairness::POD_LIMIT,
                message,
            });
        }
        let target = self.binary_of(p.image())?;
        self.name_process(p, pods);
        let pod = &pods[&p.pod_uid];
        self.session
            .guard_process(p.pid, &target, want.mode, want.coverage)
            .map_err(|e| {
                if procfs::alive(p.pid) {
                    Failure {
                        reason: "attach",
                        message: e.to_string(),
                    }
                } else {
                    Failure::gone()
                }
            })?;
        self.note_process_cgroup(p.pid, workload_labels(pod), pod.full_name());
        tracing::info!(
            pid = p.pid,
            pod = %pod.full_name(),
            mode = ?want.mode,
            coverage = %want.coverage,
            "enforcing"
        );
        // Its descriptor, if it kept one, is no longer needed.
        self.files.forget(p.image());
        Ok(target)
    }
}

impl Enforcement {
    /// Names process `p`'s Pod and container in its reports.
    fn name_process(&mut self, p: &Placed, pods: &PodMap) {
        let pod = &pods[&p.pod_uid];
        let container = Some(
            pod.containers
                .get(&p.container)
                .or(pod.sole_container.as_ref())
                .cloned()
                .unwrap_or_else(|| p.container.clone()),
        );
        self.session.set_pod(
            p.pid,
            PodInfo {
                namespace: Some(pod.namespace.clone()),
                pod: Some(pod.name.clone()),
                pod_uid: Some(pod.uid.clone()),
                container,
            },
        );
    }
}

fn workload_labels(pod: &PodPolicy) -> WorkloadLabels {
    WorkloadLabels {
        namespace: pod.namespace.clone(),
        workload: pod.workload.name.clone(),
        workload_kind: pod.workload.kind.clone(),
    }
}

/// How process `p` should be enforced now, if at all.
fn wanted(pods: &PodMap, p: Option<&Placed>) -> Option<Enforced> {
    let p = p?;
    let pod = pods.get(&p.pod_uid)?;
    Some(Enforced {
        start: p.start,
        pod_uid: p.pod_uid.clone(),
        mode: pod.mode?,
        coverage: pod.coverage,
    })
}

/// Default `--file-timeout`.
const DEFAULT_FILE_TIMEOUT: Duration = Duration::from_secs(30);
/// The reason of a [`Failure`] that is none yet: work off the loop is
/// under way.
const PENDING: &str = "pending";

/// Why a process could not be put under enforcement.
struct Failure {
    reason: &'static str,
    message: String,
}

impl Failure {
    fn gone() -> Failure {
        Failure {
            reason: "exited",
            message: "the process exited".into(),
        }
    }

    fn pending() -> Failure {
        Failure {
            reason: PENDING,
            message: "its executable is being opened or analysed".into(),
        }
    }

    fn reason(&self) -> &'static str {
        self.reason
    }
}
