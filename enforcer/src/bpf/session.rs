//! One enforcement session, shared by `exec` and `watch`: the loaded BPF
//! program, the binaries analysed (each once per file), what is under
//! enforcement — single processes, or every process of a binary — with
//! its action and coverage, and the loop that turns kernel records into
//! reports and moves sampled coverage's windows.
//!
//! Per binary, the crash paths are probed once for all its processes (a
//! healthy process never reaches them). The map functions are probed per
//! process (the kernel places those breakpoints in that process only), so
//! each process pays for its own coverage and no other's: nothing for
//! `light`, part of the time for `sampled`.

use std::{collections::HashMap, path::Path, sync::Arc, time::Duration, time::Instant};

use mapguard_api::{
    mode::{Coverage, Mode},
    vocab::Op,
};

use crate::{
    binary::goelf::ReadLimits,
    binary::target::{BinaryTarget, TargetError},
    bpf::coverage::SampleSettings,
    bpf::loader::{Enforcer, LoaderError, ProbeSetId, Probes, Scope},
    bpf::monitor::Monitor,
    bpf::sampler::{Estimate, Sampled, Sampler},
    config::{EnforceArgs, LatencyWindows},
    host::procfs,
    report::events::{Reporter, ViolationRecord},
    report::output,
};

/// Why a session could not start or take on a target.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Loader(#[from] LoaderError),
    #[error(transparent)]
    Output(#[from] output::OutputError),
    /// The binary at `path` cannot be enforced on (the error names it).
    #[error("{error}")]
    Target {
        path: std::path::PathBuf,
        error: TargetError,
    },
}

/// Whose CPU time a sampled set is measured against.
#[derive(Debug, Clone, Copy)]
enum Cpu {
    Process(u32),
    /// Every process running this file.
    Binary((u64, u64)),
}

impl Cpu {
    fn time(self) -> Option<Duration> {
        match self {
            Cpu::Process(pid) => procfs::cpu_time(pid),
            Cpu::Binary(file) => procfs::pids_running(file)
                .into_iter()
                .filter_map(procfs::cpu_time)
                .reduce(|a, b| a + b),
        }
    }
}

/// One enforced process, or every process of a binary.
struct Guarded {
    /// `pid 123` or the binary's path, for logs and sampling events.
    label: String,
    pid: Option<u32>,
    map_ops: Option<ProbeSetId>,
    sampler: Option<Sampler>,
    cpu: Cpu,
    /// Duty cycle last reported (sampling events are written on change).
    reported_duty: Option<f64>,
    coverage: Coverage,
    /// The RET probes of the delete functions and their windows.
    latency: Option<Timing>,
}

/// A guarded target's delete-duration windows.
struct Timing {
    returns: ProbeSetId,
    on: bool,
    /// When the current window (or pause) ends.
    next: Instant,
}

/// What the probes of one enforced process have seen so far.
#[derive(Debug, Clone, PartialEq)]
pub struct ObservedOps {
    pub pid: u32,
    pub coverage: Coverage,
    /// Share of the process's map operations the probes see: 1 for `full`
    /// (and for the writes under `writes`), the share of time the probes
    /// were on for `sampled`.
    pub fraction: f64,
    /// Probe hits since the process was put under enforcement, by
    /// operation (`mapguard_common::op`).
    pub hits: Vec<(u8, u64)>,
    /// Timed deletes so far, by duration bucket
    /// (`mapguard_common::LatencyKey::bucket`).
    pub delete_latency: Vec<(u32, u64)>,
}

/// A set seen by its sampler.
struct SampledSet<'a> {
    enforcer: &'a mut Enforcer,
    id: ProbeSetId,
    cpu: Cpu,
}

impl Sampled for SampledSet<'_> {
    type Error = LoaderError;
    fn set_enabled(&mut self, on: bool) -> Result<(), LoaderError> {
        self.enforcer.set_enabled(self.id, on)
    }
    fn hits(&self) -> u64 {
        self.enforcer.hits(self.id)
    }
    fn cpu_time(&self) -> Option<Duration> {
        self.cpu.time()
    }
}

/// The enforcer, the reports and everything under enforcement.
pub struct Session {
    enforcer: Enforcer,
    monitor: Monitor,
    settings: SampleSettings,
    /// Analysed binaries by the `(device, inode)` the kernel places their
    /// uprobes on (an overlay file's layer file), with their crash-path
    /// probes.
    binaries: HashMap<(u64, u64), (Arc<BinaryTarget>, ProbeSetId)>,
    guarded: Vec<Guarded>,
    latency: Option<LatencyWindows>,
    /// Map-function probes for every process of a binary, by binary id
    /// (the node agent's exec hook enforces new processes with them).
    shared_map_ops: HashMap<u32, ProbeSetId>,
    /// The id the next binary analysed gets (ids are never reused: a late
    /// report of a binary dropped is not taken for another's).
    next_binary_id: u32,
    /// How much of an executable an analysis may read.
    read_limits: ReadLimits,
}

impl Session {
    /// Loads the BPF program and opens the event output.
    pub fn start(args: &EnforceArgs) -> Result<Session, SessionError> {
        Session::start_with_output(args, output::open(&args.events)?)
    }

    /// [`Session::start`] writing events to `out`.
    pub fn start_with_output(
        args: &EnforceArgs,
        out: Box<dyn std::io::Write + Send>,
    ) -> Result<Session, SessionError> {
        let mut enforcer = Enforcer::load(args.probe_program, args.probe_at, args.attach)?;
        let ring = enforcer
            .take_events()
            .expect("a freshly loaded enforcer has its ring buffer");
        let reporter = Reporter::new(out);
        Ok(Session {
            enforcer,
            monitor: Monitor::new(ring, reporter),
            settings: args.sample_settings(),
            binaries: HashMap::new(),
            guarded: Vec::new(),
            latency: args.delete_latency(Duration::ZERO),
            shared_map_ops: HashMap::new(),
            next_binary_id: 0,
            read_limits: args.read.limits(),
        })
    }

    /// Measures the durations of map deletes of the targets guarded from
    /// now on in `windows` (`None`: never).
    pub fn set_delete_latency(&mut self, windows: Option<LatencyWindows>) {
        self.latency = windows;
    }

    /// Analyses the binary at `path` (once per file) and probes its crash
    /// paths for every process running it: all with `mode`, or (`None`)
    /// each with its own mode from the process table.
    pub fn binary(
        &mut self,
        path: &Path,
        mode: Option<Mode>,
    ) -> Result<Arc<BinaryTarget>, SessionError> {
        let file = procfs::file_id(path).ok_or_else(|| SessionError::Target {
            path: path.to_path_buf(),
            error: TargetError::GoElf(crate::binary::goelf::GoElfError::Io {
                path: path.to_path_buf(),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            }),
        })?;
        self.binary_file(path, file, mode)
    }

    /// [`Session::binary`] for the file `file` (`(device, inode)` as the
    /// kernel keys uprobes: [`procfs::real_file_id`]), read through
    /// `path`: every overlay mount of one image's file shares its
    /// analysis, its id and its crash-path probes.
    pub fn binary_file(
        &mut self,
        path: &Path,
        file: (u64, u64),
        mode: Option<Mode>,
    ) -> Result<Arc<BinaryTarget>, SessionError> {
        if let Some(target) = self.known_binary(file) {
            return Ok(target);
        }
        let opened = std::fs::File::open(path).map_err(|source| SessionError::Target {
            path: path.to_path_buf(),
            error: TargetError::GoElf(crate::binary::goelf::GoElfError::Io {
                path: path.to_path_buf(),
                source,
            }),
        })?;
        self.binary_opened(path, opened, file, mode)
    }

    /// [`Session::binary_file`] of `opened`, a file opened through `path`
    /// whose identity `file` was read from that very descriptor
    /// ([`procfs::open_exe`]): analysed, and later probed, through it.
    pub fn binary_opened(
        &mut self,
        path: &Path,
        opened: std::fs::File,
        file: (u64, u64),
        mode: Option<Mode>,
    ) -> Result<Arc<BinaryTarget>, SessionError> {
        if let Some(target) = self.known_binary(file) {
            return Ok(target);
        }
        let id = self.reserve_binary_id();
        let target =
            BinaryTarget::analyse_file(opened, path, id, self.read_limits).map_err(|error| {
                SessionError::Target {
                    path: path.to_path_buf(),
                    error,
                }
            })?;
        self.add_binary(file, target, mode)
    }

    /// The analysis of file `file`, if it has one.
    pub fn known_binary(&self, file: (u64, u64)) -> Option<Arc<BinaryTarget>> {
        self.binaries.get(&file).map(|(t, _)| Arc::clone(t))
    }

    /// The id for a binary about to be analysed (ids are never reused).
    pub fn reserve_binary_id(&mut self) -> u32 {
        let id = self.next_binary_id;
        self.next_binary_id += 1;
        id
    }

    /// How much of an executable an analysis may read.
    pub fn read_limits(&self) -> ReadLimits {
        self.read_limits
    }

    /// Takes on `target`, analysed (under an id of
    /// [`Session::reserve_binary_id`]) from file `file`: its crash paths
    /// are probed for every process of the file, all with `mode`, or
    /// (`None`) each with its own mode from the process table. A file
    /// analysed meanwhile keeps its first analysis.
    pub fn add_binary(
        &mut self,
        file: (u64, u64),
        target: BinaryTarget,
        mode: Option<Mode>,
    ) -> Result<Arc<BinaryTarget>, SessionError> {
        if let Some(known) = self.known_binary(file) {
            return Ok(known);
        }
        let target = Arc::new(target);
        // None: no action of the probes' own (the process table's).
        let backstops =
            self.enforcer
                .add_probes(&target, Probes::Backstops, Scope::AllProcesses { mode })?;
        self.monitor.reporter.add_binary(Arc::clone(&target));
        self.binaries.insert(file, (Arc::clone(&target), backstops));
        Ok(target)
    }

    /// Puts process `pid` (running `binary`) under enforcement with `mode`
    /// and `coverage`. Its probes attach
    /// through the descriptor of the file `binary` was analysed from: a
    /// process that runs another file by now (it has exec'd) gets no
    /// breakpoint of this one.
    pub fn guard_process(
        &mut self,
        pid: u32,
        binary: &BinaryTarget,
        mode: Mode,
        coverage: Coverage,
    ) -> Result<(), SessionError> {
        use mapguard_common::shared_ops;
        self.monitor.reporter.remember_pod(pid);
        // A process the exec hook registered is checked by its binary's
        // shared probes until its own are attached: only then are they
        // told to leave it (never a moment with neither).
        let shared = self
            .enforcer
            .registered(pid)
            .filter(|e| e.binary_id == binary.id)
            .map_or(shared_ops::NONE, |e| e.shared_ops);
        self.enforcer.register(pid, binary.id, mode, shared)?;
        self.guard(binary, Scope::Process { pid, mode }, coverage)?;
        if shared != shared_ops::NONE {
            self.enforcer
                .register(pid, binary.id, mode, shared_ops::NONE)?;
        }
        Ok(())
    }

    /// Puts every process running `binary`, now or later, under
    /// enforcement with `mode` and `coverage` (sampled as one).
    pub fn guard_binary(
        &mut self,
        binary: &BinaryTarget,
        mode: Mode,
        coverage: Coverage,
    ) -> Result<(), SessionError> {
        self.guard(binary, Scope::AllProcesses { mode: Some(mode) }, coverage)
    }

    fn guard(
        &mut self,
        binary: &BinaryTarget,
        scope: Scope,
        coverage: Coverage,
    ) -> Result<(), SessionError> {
        let (label, pid, cpu) = match scope {
            Scope::Process { pid, .. } => (format!("pid {pid}"), Some(pid), Cpu::Process(pid)),
            Scope::AllProcesses { .. } => (
                binary.name.display().to_string(),
                None,
                Cpu::Binary(procfs::file_id(&binary.path).unwrap_or_default()),
            ),
        };
        let map_ops = match crate::bpf::coverage::map_probes(coverage) {
            Some(which) => Some(self.enforcer.add_probes(binary, which, scope)?),
            None => None,
        };
        let sampler = match (coverage, map_ops) {
            (Coverage::Sampled, Some(id)) => {
                let set = SampledSet {
                    enforcer: &mut self.enforcer,
                    id,
                    cpu,
                };
                Some(Sampler::new(self.settings, Instant::now(), &set))
            }
            _ => None,
        };
        let latency = match (self.latency, map_ops) {
            (Some(windows), Some(_)) if binary.points.iter().any(|p| p.is_return()) => {
                let returns = self
                    .enforcer
                    .add_probes_off(binary, Probes::DeleteReturns, scope)?;
                Some(Timing {
                    returns,
                    on: false,
                    next: Instant::now() + windows.period - windows.on,
                })
            }
            _ => None,
        };
        tracing::info!(target = %label, %coverage, "enforcing");
        self.guarded.push(Guarded {
            label,
            pid,
            map_ops,
            sampler,
            cpu,
            reported_duty: None,
            coverage,
            latency,
        });
        Ok(())
    }

    /// Probes `binary`'s map functions for every process of the file,
    /// now or later (through the descriptor analysed), acting on the
    /// processes registered with shared operations
    /// (`mapguard_common::shared_ops`), once per binary: the breakpoints
    /// are in a new process's image at exec, so the exec hook can enforce
    /// it without waiting for user space. Every process of the file takes
    /// the breakpoints' trap (about a microsecond per map operation); the
    /// program returns at once for the others.
    pub fn share_map_ops(&mut self, binary: &BinaryTarget) -> Result<(), SessionError> {
        if self.shared_map_ops.contains_key(&binary.id) {
            return Ok(());
        }
        let id =
            self.enforcer
                .add_probes(binary, Probes::MapOps, Scope::AllProcesses { mode: None })?;
        tracing::info!(binary = %binary.name.display(), "map functions probed for every process of the binary");
        self.shared_map_ops.insert(binary.id, id);
        Ok(())
    }

    /// Whether `binary`'s map functions are probed for every process.
    pub fn has_shared_map_ops(&self, binary_id: u32) -> bool {
        self.shared_map_ops.contains_key(&binary_id)
    }

    /// The kernel's table of processes the probes stopped (node agent).
    pub fn stop_table(&mut self) -> Result<crate::bpf::loader::StopTable, SessionError> {
        Ok(self.enforcer.stop_table()?)
    }

    /// Loads and attaches the node agent's exec hook.
    pub fn exec_hook(
        &mut self,
        pin: Option<&Path>,
    ) -> Result<crate::bpf::loader::ExecHook, SessionError> {
        Ok(self.enforcer.exec_hook(pin)?)
    }

    /// Names the Pod of process `pid` in its reports (the node agent knows
    /// more than the process's cgroup says).
    pub fn set_pod(&mut self, pid: u32, pod: crate::host::cgroup::PodInfo) {
        self.monitor.reporter.set_pod(pid, pod);
    }

    /// Binaries analysed and probed (and not dropped).
    pub fn binary_count(&self) -> usize {
        self.binaries.len()
    }

    /// The ids of the binaries analysed and probed.
    pub fn binary_ids(&self) -> Vec<u32> {
        self.binaries.values().map(|(t, _)| t.id).collect()
    }

    /// The binaries of the processes in the process table (whoever
    /// registered them: user space or the exec hook).
    pub fn binaries_in_use(&self) -> std::collections::HashSet<u32> {
        self.enforcer
            .registered_pids()
            .into_iter()
            .filter_map(|pid| self.enforcer.registered(pid))
            .map(|entry| entry.binary_id)
            .collect()
    }

    /// Drops binary `id` (no process runs it): its crash-path probes, its
    /// shared map-function probes, its rows of the crash messages and its
    /// analysis. A process of the file later is analysed again, under a
    /// new id. The exec hook must not name the id any more (the caller
    /// sees to that first).
    pub fn drop_binary(&mut self, id: u32) {
        let Some(file) = self
            .binaries
            .iter()
            .find(|(_, (t, _))| t.id == id)
            .map(|(file, _)| *file)
        else {
            return;
        };
        let Some((target, backstops)) = self.binaries.remove(&file) else {
            return;
        };
        self.enforcer.remove_probes(backstops);
        if let Some(shared) = self.shared_map_ops.remove(&id) {
            self.enforcer.remove_probes(shared);
        }
        self.enforcer.forget_fatal_messages(&target);
        self.monitor.reporter.remove_binary(id);
        tracing::info!(binary = %target.name.display(), binary_id = id, "no process runs the binary any more: its analysis and probes dropped");
    }

    /// Limits each cgroup's (Pod's) violation reports in the kernel
    /// ([`Enforcer::set_event_limit`]).
    pub fn set_event_limit(&mut self, per_second: u32, burst: u32) -> Result<(), SessionError> {
        Ok(self.enforcer.set_event_limit(per_second, burst)?)
    }

    /// Reports each cgroup dropped and lost so far
    /// ([`Enforcer::cgroup_drops`]).
    pub fn cgroup_drops(&self) -> Vec<(u64, mapguard_common::CgroupDrops)> {
        self.enforcer.cgroup_drops()
    }

    /// Probe ids process `pid`'s own probe sets hold.
    pub fn probe_ids_of(&self, pid: u32) -> usize {
        self.guarded
            .iter()
            .filter(|g| g.pid == Some(pid))
            .map(|g| {
                g.map_ops.map_or(0, |id| self.enforcer.probe_count(id))
                    + g.latency
                        .as_ref()
                        .map_or(0, |t| self.enforcer.probe_count(t.returns))
            })
            .sum()
    }

    /// Checks the probes could not complete so far (see
    /// `mapguard_common::stat`).
    pub fn incomplete_checks(&self) -> Vec<(&'static str, u64)> {
        self.enforcer.incomplete_checks()
    }

    /// The map operations the probes of each enforced process (`pid`
    /// scope; not `watch --exe`) have counted, with the share of them they
    /// see. A `light` process has no map-function probes (no entry).
    pub fn observed_ops(&self) -> Vec<ObservedOps> {
        let now = Instant::now();
        let mut latency = if self.guarded.iter().any(|g| g.latency.is_some()) {
            self.enforcer.delete_latency()
        } else {
            HashMap::new()
        };
        self.guarded
            .iter()
            .filter_map(|g| {
                let (pid, id) = (g.pid?, g.map_ops?);
                Some(ObservedOps {
                    pid,
                    coverage: g.coverage,
                    fraction: g.sampler.as_ref().map_or(1.0, |s| s.observed_fraction(now)),
                    hits: self.enforcer.hits_by_op(id),
                    delete_latency: latency.remove(&pid).unwrap_or_default(),
                })
            })
            .collect()
    }

    /// Stops enforcing on process `pid` (gone, or no longer enforced): it
    /// leaves the process table, its map-function probes are freed, and
    /// its Pod identity goes once its last reports are in.
    pub fn forget_process(&mut self, pid: u32) {
        self.enforcer.unregister(pid);
        self.drop_guards(pid);
        self.monitor.reporter.forget_pod(pid);
    }

    /// The processes in the process table.
    pub fn registered_pids(&self) -> Vec<u32> {
        self.enforcer.registered_pids()
    }

    /// Frees process `pid`'s own probes, leaving its process-table entry
    /// (a process that exec'd another binary: the exec hook wrote its new
    /// entry already).
    pub fn drop_guards(&mut self, pid: u32) {
        let (gone, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.guarded)
            .into_iter()
            .partition(|g| g.pid == Some(pid));
        self.guarded = kept;
        for g in gone {
            if let Some(id) = g.map_ops {
                self.enforcer.remove_probes(id);
            }
            if let Some(t) = g.latency {
                self.enforcer.remove_probes(t.returns);
                self.enforcer.forget_delete_latency(pid);
            }
        }
    }

    /// Waits up to `timeout` for kernel records and reports them, then
    /// moves the sampled sets' windows.
    pub fn poll(&mut self, timeout: Duration) -> Vec<ViolationRecord> {
        self.poll_also(timeout, None)
    }

    /// [`Session::poll`], returning early too when `other` is readable.
    pub fn poll_also(
        &mut self,
        timeout: Duration,
        other: Option<std::os::fd::RawFd>,
    ) -> Vec<ViolationRecord> {
        let records = self.monitor.wait_also(timeout, other);
        self.tick_samplers();
        self.tick_latency();
        records
    }

    /// Opens and closes the delete-duration windows: the RET probes are
    /// attached first and the entries timed, then the reverse.
    fn tick_latency(&mut self) {
        let Some(windows) = self.latency else {
            return;
        };
        let now = Instant::now();
        for g in &mut self.guarded {
            let (Some(t), Some(entries)) = (g.latency.as_mut(), g.map_ops) else {
                continue;
            };
            if now < t.next {
                continue;
            }
            let switched = if t.on {
                self.enforcer
                    .set_timed(entries, false)
                    .and_then(|()| self.enforcer.set_enabled(t.returns, false))
            } else {
                self.enforcer
                    .set_enabled(t.returns, true)
                    .and_then(|()| self.enforcer.set_timed(entries, true))
            };
            if let Err(e) = switched {
                tracing::error!(target = %g.label, error = %e, "cannot switch the delete-duration probes");
            }
            t.on = !t.on;
            t.next = now
                + if t.on {
                    windows.on
                } else {
                    windows.period - windows.on
                };
        }
    }

    /// Reports the records already waiting.
    pub fn drain(&mut self) -> Vec<ViolationRecord> {
        self.monitor.drain()
    }

    fn tick_samplers(&mut self) {
        let now = Instant::now();
        for g in &mut self.guarded {
            let (Some(sampler), Some(id)) = (g.sampler.as_mut(), g.map_ops) else {
                continue;
            };
            let mut set = SampledSet {
                enforcer: &mut self.enforcer,
                id,
                cpu: g.cpu,
            };
            match sampler.tick(now, &mut set) {
                Ok(Some(estimate)) => {
                    let changed = g.reported_duty.is_none_or(|d| {
                        (estimate.duty_cycle - d).abs() > 0.2 * d.max(estimate.duty_cycle)
                    });
                    if changed {
                        g.reported_duty = Some(estimate.duty_cycle);
                        log_estimate(&g.label, &estimate, self.settings.budget);
                        if let Err(e) = self.monitor.reporter.sampling(
                            &g.label,
                            g.pid,
                            &estimate,
                            self.settings.budget,
                        ) {
                            tracing::error!(error = %e, "cannot write a sampling event");
                        }
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(target = %g.label, error = %e, "cannot switch sampled probes")
                }
            }
        }
    }

    /// Reports what is left, detaches every probe (in the background) and
    /// writes the summary.
    pub fn finish(mut self) {
        let now = Instant::now();
        for g in &self.guarded {
            if let Some(id) = g.map_ops {
                let mut hits = self.enforcer.hits_by_function(id);
                hits.retain(|(_, n)| *n > 0);
                hits.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
                let top: Vec<String> = hits
                    .iter()
                    .take(8)
                    .map(|(f, n)| format!("{f}={n}"))
                    .collect();
                // By operation too (all of them, where the functions are
                // the top eight): one read is one hit.
                let by_op: Vec<String> = self
                    .enforcer
                    .hits_by_op(id)
                    .iter()
                    .filter(|(_, n)| *n > 0)
                    .map(|(op, n)| format!("{}={n}", Op::from_kernel(*op)))
                    .collect();
                tracing::info!(
                    target = %g.label,
                    by_op = %by_op.join(" "),
                    hits = %top.join(" "),
                    "probe hits by map function"
                );
            }
            if let Some(s) = &g.sampler {
                tracing::info!(
                    target = %g.label,
                    windows = s.windows(),
                    duty = format!("{:.1}%", s.measured_duty(now) * 100.0),
                    "sampled coverage"
                );
            }
        }
        self.monitor.drain();
        self.enforcer.release();
        if let Err(e) = self.monitor.reporter.finish() {
            tracing::error!(error = %e, "cannot write the summary");
        }
    }
}

fn log_estimate(label: &str, e: &Estimate, budget: f64) {
    tracing::info!(
        target = %label,
        hits_per_second = format!("{:.0}", e.hits_per_second),
        cost_while_on = format!("{:.1}%", e.cost_while_on * 100.0),
        duty_cycle = format!("{:.1}%", e.duty_cycle * 100.0),
        on = ?e.on,
        period = ?e.period,
        budget = format!("{:.1}%", budget * 100.0),
        "sampling: a race recurring within every on-window is caught within one period"
    );
}
