//! Loads the BPF program, fills its configuration maps and attaches probe
//! sets to binaries: as one uprobe_multi link per set ([`multi`], Linux
//! 6.6+: one syscall to attach, one kernel grace period to remove them
//! all), or, on older kernels, one perf-event uprobe per probe.
//!
//! A probe set is some of a binary's planned probes ([`Probes`]) for one
//! process or for every process running the binary ([`Scope`]); a set can
//! be switched off and on (sampled coverage) and counts its hits. The
//! probes of one process fire only in that process (the kernel does not
//! even place their breakpoints in other processes); shared probes fire in
//! every process of the binary and the BPF program looks the process up
//! in [`MAP_PROCS`]. All links belong to the [`Enforcer`]: dropping it
//! detaches every probe, on success and error paths alike.

pub mod btf;
mod exec;
mod multi;
mod sets;
mod stops;

pub use exec::{ExecHook, take_pinned_holds};
pub use multi::{MultiError, MultiLink, MultiProgram};
pub use sets::{ProbeSetId, Probes, Scope};
pub use stops::{StopTable, take_pinned_stops};

use sets::{IdPool, ProbeSet};

use std::{num::NonZeroU32, path::PathBuf};

use aya::{
    Ebpf,
    maps::{Array, HashMap, MapData, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{
        UProbe,
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLink, UProbeScope},
    },
};
use mapguard_api::mode::Mode;
use mapguard_common::{
    CgroupDrops, EventLimit, FatalMessage, LatencyKey, MAP_CGROUP_DROPS, MAP_DELETE_LATENCY,
    MAP_EVENT_LIMIT, MAP_EVENTS, MAP_FATAL_MESSAGES, MAP_HITS, MAP_PROBES, MAP_PROCS, MAP_STATS,
    MAP_TASK_CONFIG, MAX_PROBES, NS_PER_CLOCK_TICK, PROG_BARE, PROG_MAP_OP, ProbeConfig,
    ProcConfig, TaskConfig, op, stat,
};

use crate::binary::target::BinaryTarget;

/// The BPF object built by `build.rs`.
static BPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/mapguard-ebpf"));

/// Which BPF program the probes run (benchmark hook).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ProbeProgram {
    /// The enforcing program.
    #[default]
    Enforce,
    /// A program that returns at once: the cost of the uprobe hit alone.
    Bare,
}

/// How probes are attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum AttachKind {
    /// uprobe_multi links where the kernel has them (6.6+), else perf events.
    #[default]
    Auto,
    /// One uprobe_multi link per binary (fails on kernels without them).
    Multi,
    /// One perf-event uprobe per probe (every kernel with uprobes; each
    /// costs a kernel grace period, ~0.08 s, to remove).
    Perf,
}

/// Where in each function the probes sit (benchmark hook).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ProbeAt {
    /// The planned instruction (the emulated `push %rbp`).
    #[default]
    Planned,
    /// The function's first instruction (single-stepped by the kernel).
    Entry,
}

/// Why the enforcer could not load or attach.
#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    #[error(
        "mapguard needs root (CAP_BPF and CAP_PERFMON) to load BPF programs; running as uid {uid}"
    )]
    NotRoot { uid: u32 },
    #[error("cannot load the BPF object: {0}")]
    Load(#[source] Box<aya::EbpfError>),
    #[error("BPF program {name} missing from the object")]
    MissingProgram { name: &'static str },
    #[error("BPF map {name} missing from the object")]
    MissingMap { name: &'static str },
    #[error("BPF program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("BPF map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: Box<aya::maps::MapError>,
    },
    #[error("cannot attach uprobe to {symbol} (file offset {file_offset:#x}) in {path}: {source}")]
    Attach {
        path: PathBuf,
        symbol: String,
        file_offset: u64,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("too many probes: at most {MAX_PROBES} across all binaries and processes")]
    TooManyProbes,
    #[error(transparent)]
    Multi(#[from] MultiError),
    #[error("cannot count the possible CPUs for the per-CPU hit counters: {0}")]
    Cpus(#[source] std::io::Error),
    #[error("the exec hook needs the kernel's struct offsets: {0}")]
    Btf(#[from] btf::BtfError),
    #[error("cannot pin the table of held processes at {path} (a bpffs mount, writable): {reason}")]
    Pin { path: PathBuf, reason: String },
}

/// Loaded BPF state: programs, configuration maps and attached probes.
pub struct Enforcer {
    ebpf: Ebpf,
    program: &'static str,
    /// The program loaded for uprobe_multi links; `None`: perf events.
    multi: Option<MultiProgram>,
    probe_at: ProbeAt,
    ids: IdPool,
    probes: Array<MapData, ProbeConfig>,
    hits: PerCpuArray<MapData, u64>,
    procs: HashMap<MapData, u32, ProcConfig>,
    events: Option<RingBuf<MapData>>,
    stats: PerCpuArray<MapData, u64>,
    fatal_messages: HashMap<MapData, FatalMessage, u8>,
    delete_latency: PerCpuHashMap<MapData, LatencyKey, u64>,
    event_limit: Array<MapData, EventLimit>,
    cgroup_drops: PerCpuHashMap<MapData, u64, CgroupDrops>,
    sets: Vec<Option<ProbeSet>>,
}

/// Attached probes (held for their `Drop`, which detaches them).
#[allow(dead_code)]
pub(crate) enum Link {
    /// A binary's probes, all in one link.
    Multi(MultiLink),
    /// One probe.
    Perf(UProbeLink),
}

impl Enforcer {
    /// Loads the BPF object and the chosen program, for the attach kind
    /// asked for (`Auto`: uprobe_multi links where the kernel loads such a
    /// program).
    pub fn load(
        program: ProbeProgram,
        probe_at: ProbeAt,
        attach: AttachKind,
    ) -> Result<Enforcer, LoaderError> {
        let uid = nix::unistd::geteuid().as_raw();
        if uid != 0 {
            return Err(LoaderError::NotRoot { uid });
        }
        let mut ebpf = Ebpf::load(BPF_OBJECT).map_err(|e| LoaderError::Load(Box::new(e)))?;
        configure_task_offsets(&mut ebpf)?;
        let name = match program {
            ProbeProgram::Enforce => PROG_MAP_OP,
            ProbeProgram::Bare => PROG_BARE,
        };
        let multi = match attach {
            AttachKind::Perf => None,
            AttachKind::Multi => Some(MultiProgram::load(BPF_OBJECT, name, &map_fds(&ebpf))?),
            AttachKind::Auto => match MultiProgram::load(BPF_OBJECT, name, &map_fds(&ebpf)) {
                Ok(p) => Some(p),
                Err(e) => {
                    tracing::warn!(error = %e, "no uprobe_multi links (Linux 6.6+): one perf-event uprobe per probe instead");
                    None
                }
            },
        };
        if multi.is_none() {
            uprobe(&mut ebpf, name)?
                .load()
                .map_err(|e| program_error(name, e))?;
        }
        let probes = take_map(&mut ebpf, MAP_PROBES)?;
        let probes = Array::try_from(probes).map_err(|e| map_error(MAP_PROBES, e))?;
        let hits = take_map(&mut ebpf, MAP_HITS)?;
        let hits = PerCpuArray::try_from(hits).map_err(|e| map_error(MAP_HITS, e))?;
        let procs = take_map(&mut ebpf, MAP_PROCS)?;
        let procs = HashMap::try_from(procs).map_err(|e| map_error(MAP_PROCS, e))?;
        let events = take_map(&mut ebpf, MAP_EVENTS)?;
        let events = RingBuf::try_from(events).map_err(|e| map_error(MAP_EVENTS, e))?;
        let stats = take_map(&mut ebpf, MAP_STATS)?;
        let stats = PerCpuArray::try_from(stats).map_err(|e| map_error(MAP_STATS, e))?;
        let fatal_messages = take_map(&mut ebpf, MAP_FATAL_MESSAGES)?;
        let fatal_messages =
            HashMap::try_from(fatal_messages).map_err(|e| map_error(MAP_FATAL_MESSAGES, e))?;
        let delete_latency = take_map(&mut ebpf, MAP_DELETE_LATENCY)?;
        let delete_latency = PerCpuHashMap::try_from(delete_latency)
            .map_err(|e| map_error(MAP_DELETE_LATENCY, e))?;
        let event_limit = take_map(&mut ebpf, MAP_EVENT_LIMIT)?;
        let event_limit =
            Array::try_from(event_limit).map_err(|e| map_error(MAP_EVENT_LIMIT, e))?;
        let cgroup_drops = take_map(&mut ebpf, MAP_CGROUP_DROPS)?;
        // A per-CPU LRU hash in the kernel: aya's PerCpuHashMap reads it.
        let cgroup_drops =
            PerCpuHashMap::try_from(cgroup_drops).map_err(|e| map_error(MAP_CGROUP_DROPS, e))?;
        Ok(Enforcer {
            ebpf,
            program: name,
            multi,
            probe_at,
            ids: IdPool::new(MAX_PROBES),
            probes,
            hits,
            procs,
            events: Some(events),
            stats,
            fatal_messages,
            delete_latency,
            event_limit,
            cgroup_drops,
            sets: Vec::new(),
        })
    }

    /// Configures and attaches a probe set: `which` of `target`'s probes
    /// for `scope`, through the descriptor of the file analysed (never a
    /// path, which may name another file by now). The set starts
    /// switched on.
    pub fn add_probes(
        &mut self,
        target: &BinaryTarget,
        which: Probes,
        scope: Scope,
    ) -> Result<ProbeSetId, LoaderError> {
        self.configure(target, which, scope, true)
    }

    /// [`Enforcer::add_probes`] leaving the set switched off (not
    /// attached until [`Enforcer::set_enabled`]).
    pub fn add_probes_off(
        &mut self,
        target: &BinaryTarget,
        which: Probes,
        scope: Scope,
    ) -> Result<ProbeSetId, LoaderError> {
        self.configure(target, which, scope, false)
    }

    fn configure(
        &mut self,
        target: &BinaryTarget,
        which: Probes,
        scope: Scope,
        attach: bool,
    ) -> Result<ProbeSetId, LoaderError> {
        let points: Vec<(u32, &crate::binary::target::AttachPoint)> = target
            .points
            .iter()
            .enumerate()
            .filter(|(_, p)| which.includes(p))
            .map(|(i, p)| (i as u32, p))
            .collect();
        if which == Probes::Backstops {
            for (key, class) in &target.fatal_messages {
                let key = FatalMessage {
                    binary_id: target.id,
                    ..*key
                };
                if let Err(e) = self.fatal_messages.insert(key, class, 0) {
                    // The probe on the crash path then reads the message instead.
                    tracing::warn!(error = %e, "cannot record a runtime message location");
                }
            }
        }
        let count = u32::try_from(points.len()).map_err(|_| LoaderError::TooManyProbes)?;
        let ids = self.ids.take(count).ok_or(LoaderError::TooManyProbes)?;
        let mut offsets = Vec::with_capacity(points.len());
        let configured = points
            .iter()
            .zip(ids.clone())
            .try_for_each(|((index, point), id)| {
                let mut cfg = point.cfg;
                cfg.binary_id = target.id;
                cfg.point = *index;
                cfg.mode = scope.kernel_mode();
                offsets.push(match self.probe_at {
                    ProbeAt::Planned => point.file_offset,
                    ProbeAt::Entry => point.entry_file_offset,
                });
                self.probes
                    .set(id, cfg, 0)
                    .map_err(|e| map_error(MAP_PROBES, e))?;
                self.reset_hits(id)
            });
        if let Err(e) = configured {
            self.ids.give_back(ids);
            return Err(e);
        }
        let mut set = ProbeSet {
            file: target.file.clone(),
            name: target.name.clone(),
            symbols: points.iter().map(|(_, p)| p.symbol.clone()).collect(),
            ops: points.iter().map(|(_, p)| p.cfg.op).collect(),
            ids,
            offsets,
            pid: scope.pid(),
            links: Vec::new(),
        };
        if attach && let Err(e) = self.link(&mut set) {
            self.ids.give_back(set.ids);
            return Err(e);
        }
        tracing::debug!(path = %set.name.display(), probes = count, ?scope, ?which, "probes attached");
        let slot = self.sets.iter().position(Option::is_none);
        let id = match slot {
            Some(i) => {
                self.sets[i] = Some(set);
                i
            }
            None => {
                self.sets.push(Some(set));
                self.sets.len() - 1
            }
        };
        Ok(ProbeSetId(id))
    }

    /// Attaches a configured set's probes.
    fn link(&mut self, set: &mut ProbeSet) -> Result<(), LoaderError> {
        let path = set.file.attach_path();
        match &self.multi {
            Some(program) => {
                let cookies: Vec<u64> = set.ids.clone().map(u64::from).collect();
                let link = program.attach(&path, &set.offsets, &cookies, set.pid)?;
                set.links.push(Link::Multi(link));
            }
            None => {
                let scope = match set.pid.and_then(NonZeroU32::new) {
                    Some(pid) => UProbeScope::OneProcess(pid),
                    None => UProbeScope::AllProcesses,
                };
                let mut links = Vec::with_capacity(set.offsets.len());
                for ((offset, id), symbol) in
                    set.offsets.iter().zip(set.ids.clone()).zip(&set.symbols)
                {
                    let attach_point = UProbeAttachPoint {
                        location: UProbeAttachLocation::AbsoluteOffset(*offset),
                        cookie: Some(u64::from(id)),
                    };
                    let program = uprobe(&mut self.ebpf, self.program)?;
                    let link = program
                        .attach(attach_point, &path, scope)
                        .and_then(|id| program.take_link(id))
                        .map_err(|e| LoaderError::Attach {
                            path: set.name.clone(),
                            symbol: symbol.clone(),
                            file_offset: *offset,
                            source: Box::new(e),
                        })?;
                    links.push(Link::Perf(link));
                }
                set.links = links;
            }
        }
        Ok(())
    }

    /// Switches a set's probes on (attaching them again) or off (detaching
    /// them: the process runs untrapped). Detaching waits for a kernel
    /// grace period, which a background thread does; the probes act on
    /// nothing new meanwhile only in the sense that they still report.
    pub fn set_enabled(&mut self, id: ProbeSetId, on: bool) -> Result<(), LoaderError> {
        let Some(mut set) = self.sets.get_mut(id.0).and_then(Option::take) else {
            return Ok(());
        };
        let result = match (on, set.links.is_empty()) {
            (true, true) => self.link(&mut set),
            (false, false) => {
                let links = std::mem::take(&mut set.links);
                std::thread::spawn(move || drop(links));
                Ok(())
            }
            _ => Ok(()),
        };
        self.sets[id.0] = Some(set);
        result
    }

    /// Probe ids a set holds.
    pub fn probe_count(&self, id: ProbeSetId) -> usize {
        self.sets
            .get(id.0)
            .and_then(Option::as_ref)
            .map_or(0, |s| s.ids.len())
    }

    /// Whether a set's probes are attached now.
    pub fn is_enabled(&self, id: ProbeSetId) -> bool {
        self.sets
            .get(id.0)
            .and_then(Option::as_ref)
            .is_some_and(|s| !s.links.is_empty())
    }

    /// Detaches a set for good and frees its probe ids.
    pub fn remove_probes(&mut self, id: ProbeSetId) {
        if let Some(set) = self.sets.get_mut(id.0).and_then(Option::take) {
            for probe in set.ids.clone() {
                let _ = self.probes.set(probe, ProbeConfig::default(), 0);
            }
            self.ids.give_back(set.ids);
            std::thread::spawn(move || drop(set.links));
        }
    }

    /// Removes `target`'s rows of the runtime's crash messages (its
    /// crash-path probes removed: no process runs it any more).
    pub fn forget_fatal_messages(&mut self, target: &BinaryTarget) {
        for (key, _) in &target.fatal_messages {
            let _ = self.fatal_messages.remove(&FatalMessage {
                binary_id: target.id,
                ..*key
            });
        }
    }

    /// How often a set's probes fired since it was added (summed over CPUs).
    pub fn hits(&self, id: ProbeSetId) -> u64 {
        self.hits_by_function(id).iter().map(|(_, n)| n).sum()
    }

    /// How often each of a set's probes fired, by probed function.
    pub fn hits_by_function(&self, id: ProbeSetId) -> Vec<(&str, u64)> {
        let Some(set) = self.sets.get(id.0).and_then(Option::as_ref) else {
            return Vec::new();
        };
        set.ids
            .clone()
            .zip(&set.symbols)
            .map(|(probe, symbol)| {
                let hits = self
                    .hits
                    .get(&probe, 0)
                    .map_or(0, |per_cpu| per_cpu.iter().sum::<u64>());
                (symbol.as_str(), hits)
            })
            .collect()
    }

    /// How often a set's probes fired, summed by operation
    /// (`mapguard_common::op`; each operation once, in first-probe order).
    pub fn hits_by_op(&self, id: ProbeSetId) -> Vec<(u8, u64)> {
        let Some(set) = self.sets.get(id.0).and_then(Option::as_ref) else {
            return Vec::new();
        };
        let mut by_op: Vec<(u8, u64)> = Vec::new();
        for (probe, op) in set.ids.clone().zip(&set.ops) {
            let hits = self
                .hits
                .get(&probe, 0)
                .map_or(0, |per_cpu| per_cpu.iter().sum::<u64>());
            match by_op.iter_mut().find(|(o, _)| o == op) {
                Some((_, n)) => *n += hits,
                None => by_op.push((*op, hits)),
            }
        }
        by_op
    }

    /// Switches the timing of a set's delete probes (`ProbeConfig::timed`):
    /// on, each delete's entry records when it started, for the RET probes
    /// of [`Probes::DeleteReturns`].
    pub fn set_timed(&mut self, id: ProbeSetId, on: bool) -> Result<(), LoaderError> {
        let Some(set) = self.sets.get(id.0).and_then(Option::as_ref) else {
            return Ok(());
        };
        for (probe, op) in set.ids.clone().zip(&set.ops) {
            if *op != op::DELETE {
                continue;
            }
            let mut cfg = self
                .probes
                .get(&probe, 0)
                .map_err(|e| map_error(MAP_PROBES, e))?;
            cfg.timed = u8::from(on);
            self.probes
                .set(probe, cfg, 0)
                .map_err(|e| map_error(MAP_PROBES, e))?;
        }
        Ok(())
    }

    /// The timed deletes of every process so far, by process and duration
    /// bucket (`mapguard_common::LatencyKey::bucket`), summed over CPUs
    /// (one pass over the map).
    pub fn delete_latency(&self) -> std::collections::HashMap<u32, Vec<(u32, u64)>> {
        let mut by_pid: std::collections::HashMap<u32, Vec<(u32, u64)>> =
            std::collections::HashMap::new();
        for (key, per_cpu) in self.delete_latency.iter().filter_map(Result::ok) {
            by_pid
                .entry(key.pid)
                .or_default()
                .push((key.bucket, per_cpu.iter().sum()));
        }
        by_pid
    }

    /// Drops process `pid`'s delete durations.
    pub fn forget_delete_latency(&mut self, pid: u32) {
        let keys: Vec<LatencyKey> = self
            .delete_latency
            .keys()
            .filter_map(Result::ok)
            .filter(|key| key.pid == pid)
            .collect();
        for key in keys {
            let _ = self.delete_latency.remove(&key);
        }
    }

    /// Limits the violation reports of each cgroup (Pod) to `per_second`
    /// on average and `burst` at once; the rest are dropped in the kernel
    /// and counted ([`Enforcer::cgroup_drops`]). `per_second` 0: no limit.
    pub fn set_event_limit(&mut self, per_second: u32, burst: u32) -> Result<(), LoaderError> {
        let limit = match per_second {
            0 => EventLimit::default(),
            n => {
                let interval_ns = (1_000_000_000 / u64::from(n)).max(1);
                EventLimit {
                    interval_ns,
                    burst_ns: interval_ns * u64::from(burst.max(1)),
                }
            }
        };
        self.event_limit
            .set(0, limit, 0)
            .map_err(|e| map_error(MAP_EVENT_LIMIT, e))
    }

    /// The reports each cgroup dropped to the limit and lost to a full
    /// ring buffer so far (summed over CPUs), by cgroup (v2) id: a Pod's
    /// cgroup for a Pod the exec hook knows, else a process's own.
    pub fn cgroup_drops(&self) -> Vec<(u64, CgroupDrops)> {
        self.cgroup_drops
            .iter()
            .filter_map(Result::ok)
            .map(|(id, per_cpu)| {
                let sum = per_cpu
                    .iter()
                    .fold(CgroupDrops::default(), |a, c| CgroupDrops {
                        limited: a.limited + c.limited,
                        lost: a.lost + c.lost,
                    });
                (id, sum)
            })
            .collect()
    }

    /// Zeroes a probe id's hit counters (ids are reused).
    fn reset_hits(&mut self, id: u32) -> Result<(), LoaderError> {
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| LoaderError::Cpus(e))?;
        let zeros =
            aya::maps::PerCpuValues::try_from(vec![0u64; cpus]).map_err(LoaderError::Cpus)?;
        self.hits
            .set(id, zeros, 0)
            .map_err(|e| map_error(MAP_HITS, e))
    }

    /// Whether probes are attached as uprobe_multi links.
    pub fn uses_multi_links(&self) -> bool {
        self.multi.is_some()
    }

    /// Puts process `pid` under enforcement with `mode` (one of
    /// `mapguard_common::action`); probes shared by every process of its
    /// binary check `shared_ops` of its map operations
    /// (`mapguard_common::shared_ops`; the crash paths always). The entry
    /// carries the process's start time: a later process given the same
    /// pid is not acted on.
    pub fn register(
        &mut self,
        pid: u32,
        binary_id: u32,
        mode: Mode,
        shared_ops: u8,
    ) -> Result<(), LoaderError> {
        let cfg = ProcConfig {
            mode: mode.kernel(),
            shared_ops,
            _pad: [0; 2],
            binary_id,
            start: start_ticks(pid),
        };
        self.procs
            .insert(pid, cfg, 0)
            .map_err(|e| map_error(MAP_PROCS, e))
    }

    /// Every process in the process table.
    pub fn registered_pids(&self) -> Vec<u32> {
        self.procs.keys().filter_map(Result::ok).collect()
    }

    /// Process `pid`'s entry in the process table, if it has one.
    pub fn registered(&self, pid: u32) -> Option<ProcConfig> {
        self.procs.get(&pid, 0).ok()
    }

    /// Takes process `pid` out of enforcement (shared probes then ignore it).
    pub fn unregister(&mut self, pid: u32) {
        let _ = self.procs.remove(&pid);
    }

    /// Detaches every probe without making the caller wait: removing a
    /// uprobe costs a kernel grace period (~0.1 s each here, serialized
    /// kernel-wide), so a forked helper process holding copies of the
    /// descriptors does it while the caller goes on (and exits). The probes
    /// are disarmed first, so they act on nothing in the meantime.
    pub fn release(mut self) {
        self.disarm();
        self.log_incomplete_checks();
        // SAFETY: the enforcer is single-threaded here; the child only
        // closes descriptors and exits.
        match unsafe { nix::unistd::fork() } {
            Ok(nix::unistd::ForkResult::Child) => {
                // Do not hold the caller's output pipes open.
                if let Ok(null) = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open("/dev/null")
                {
                    for fd in 0..=2 {
                        // SAFETY: dup2 onto the standard descriptors.
                        unsafe { libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), fd) };
                    }
                }
                drop(self);
                // SAFETY: leave the forked child without running the
                // parent's exit handlers.
                unsafe { libc::_exit(0) };
            }
            Ok(nix::unistd::ForkResult::Parent { .. }) => {
                // The descriptors close when this process exits; the child
                // holds the last references.
                std::mem::forget(self);
            }
            Err(e) => {
                tracing::debug!(error = %e, "cannot fork a detacher; detaching in place");
                drop(self);
            }
        }
    }

    /// Makes every probe a no-op: no process is registered any more and no
    /// probe carries a mode of its own, so nothing is reported or signalled
    /// while the probes are being removed.
    fn disarm(&mut self) {
        let pids: Vec<u32> = self.procs.keys().filter_map(Result::ok).collect();
        for pid in pids {
            let _ = self.procs.remove(&pid);
        }
        let ids: Vec<u32> = self
            .sets
            .iter()
            .flatten()
            .flat_map(|s| s.ids.clone())
            .collect();
        for id in ids {
            if let Ok(mut cfg) = self.probes.get(&id, 0)
                && cfg.mode != 0
            {
                cfg.mode = 0;
                let _ = self.probes.set(id, cfg, 0);
            }
        }
    }

    /// Checks the probes could not complete, by `mapguard_common::stat`
    /// name (summed over CPUs; zero entries left out).
    pub fn incomplete_checks(&self) -> Vec<(&'static str, u64)> {
        (0..stat::COUNT)
            .filter_map(|i| {
                let total: u64 = self.stats.get(&i, 0).ok()?.iter().sum();
                (total > 0).then(|| (stat::NAMES[i as usize], total))
            })
            .collect()
    }

    /// Warns about checks the probes could not complete: each is a race
    /// that may have gone unreported.
    fn log_incomplete_checks(&self) {
        let checks = self.incomplete_checks();
        if !checks.is_empty() {
            let list: Vec<String> = checks.iter().map(|(n, c)| format!("{n}={c}")).collect();
            tracing::warn!(
                checks = %list.join(","),
                "some probe checks could not be completed; a race may have gone unreported"
            );
        }
    }

    /// Takes the event ring buffer (once).
    pub fn take_events(&mut self) -> Option<RingBuf<MapData>> {
        self.events.take()
    }
}

impl Drop for Enforcer {
    /// Detaches every probe. Each link's removal waits for a kernel grace
    /// period (~0.1 s here); removing them from parallel threads lets those
    /// waits overlap where the kernel allows.
    fn drop(&mut self) {
        let links: Vec<Link> = self
            .sets
            .iter_mut()
            .flatten()
            .flat_map(|s| std::mem::take(&mut s.links))
            .collect();
        let started = std::time::Instant::now();
        let count = links.len();
        std::thread::scope(|scope| {
            for link in links {
                scope.spawn(move || drop(link));
            }
        });
        tracing::debug!(count, elapsed = ?started.elapsed(), "probes detached");
    }
}

/// Process `pid`'s start time as its process-table entry carries it
/// (`ProcConfig::start`): 0 (not checked) where `/proc` counts in other
/// ticks than the probes; gone already, an entry no process matches.
fn start_ticks(pid: u32) -> u64 {
    if crate::host::procfs::ticks_per_second() != Some(1_000_000_000 / NS_PER_CLOCK_TICK) {
        return 0;
    }
    crate::host::procfs::start_time(pid).unwrap_or(u64::MAX)
}

/// Hands the probes the `task_struct` offsets of a process's start time
/// (from the kernel's BTF). Without BTF, start times are not checked: a
/// pid reused before the next scan can get its predecessor's action.
fn configure_task_offsets(ebpf: &mut Ebpf) -> Result<(), LoaderError> {
    let offsets = match btf::task_config(std::path::Path::new(btf::VMLINUX_BTF)) {
        Ok(offsets) => offsets,
        Err(e) => {
            tracing::warn!(error = %e, "process start times are not checked (a reused pid may get the action of the process that had it until the next scan)");
            return Ok(());
        }
    };
    update_task_config(ebpf, |cfg| {
        cfg.group_leader = offsets.group_leader;
        cfg.start_boottime = offsets.start_boottime;
    })
}

/// Changes the probes' [`TaskConfig`] in place.
fn update_task_config(
    ebpf: &mut Ebpf,
    change: impl FnOnce(&mut TaskConfig),
) -> Result<(), LoaderError> {
    let map = ebpf
        .map_mut(MAP_TASK_CONFIG)
        .ok_or(LoaderError::MissingMap {
            name: MAP_TASK_CONFIG,
        })?;
    let mut config: Array<&mut MapData, TaskConfig> =
        Array::try_from(map).map_err(|e| map_error(MAP_TASK_CONFIG, e))?;
    let mut cfg = config
        .get(&0, 0)
        .map_err(|e| map_error(MAP_TASK_CONFIG, e))?;
    change(&mut cfg);
    config
        .set(0, cfg, 0)
        .map_err(|e| map_error(MAP_TASK_CONFIG, e))
}

fn uprobe<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut UProbe, LoaderError> {
    ebpf.program_mut(name)
        .ok_or(LoaderError::MissingProgram { name })?
        .try_into()
        .map_err(|e| program_error(name, e))
}

/// Descriptors of the object's maps by name, for the uprobe_multi program
/// (linked against the same maps). Only the map types the object uses.
fn map_fds(ebpf: &Ebpf) -> Vec<(String, std::os::fd::RawFd)> {
    use aya::maps::Map;
    use std::os::fd::{AsFd as _, AsRawFd as _};
    ebpf.maps()
        .filter_map(|(name, map)| {
            let data = match map {
                Map::Array(d)
                | Map::HashMap(d)
                | Map::LruHashMap(d)
                | Map::PerCpuArray(d)
                | Map::PerCpuHashMap(d)
                | Map::PerCpuLruHashMap(d)
                | Map::RingBuf(d) => d,
                _ => return None,
            };
            Some((name.to_string(), data.fd().as_fd().as_raw_fd()))
        })
        .collect()
}

fn take_map(ebpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map, LoaderError> {
    ebpf.take_map(name).ok_or(LoaderError::MissingMap { name })
}

fn program_error(name: &'static str, e: aya::programs::ProgramError) -> LoaderError {
    LoaderError::Program {
        name,
        source: Box::new(e),
    }
}

fn map_error(name: &'static str, e: aya::maps::MapError) -> LoaderError {
    LoaderError::Map {
        name,
        source: Box::new(e),
    }
}
