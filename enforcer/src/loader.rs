//! Loads the BPF program, fills its configuration maps and attaches a
//! binary's planned probes to its inode: as one uprobe_multi link
//! ([`multi`], Linux 6.6+: one syscall to attach, one kernel grace period
//! to remove them all), or, on older kernels, one perf-event uprobe each.
//!
//! Probes are attached for all processes (a Go process's threads are
//! separate tasks and processes started later must be covered too); the
//! BPF program filters by tgid through [`MAP_PROCS`] or, for `watch --exe`,
//! applies the probe's own all-processes mode. All links belong to the
//! [`Enforcer`]: dropping it detaches every probe, on success and error
//! paths alike.

mod multi;

pub use multi::{MultiError, MultiLink, MultiProgram};

use std::path::PathBuf;

use aya::{
    Ebpf,
    maps::{Array, HashMap, MapData, PerCpuArray, RingBuf},
    programs::{
        UProbe,
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLink, UProbeScope},
    },
};
use mapguard_common::{
    FatalMessage, MAP_EVENTS, MAP_FATAL_MESSAGES, MAP_PROBES, MAP_PROCS, MAP_STATS, MAX_PROBES,
    PROG_BARE, PROG_MAP_OP, ProbeConfig, ProcConfig, stat,
};

use crate::target::BinaryTarget;

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
    #[error("too many probes: at most {MAX_PROBES} across all binaries")]
    TooManyProbes,
    #[error(transparent)]
    Multi(#[from] MultiError),
}

/// Loaded BPF state: programs, configuration maps and attached probes.
pub struct Enforcer {
    ebpf: Ebpf,
    program: &'static str,
    /// The program loaded for uprobe_multi links; `None`: perf events.
    multi: Option<MultiProgram>,
    probe_at: ProbeAt,
    next_probe_id: u32,
    probes: Array<MapData, ProbeConfig>,
    procs: HashMap<MapData, u32, ProcConfig>,
    events: Option<RingBuf<MapData>>,
    stats: PerCpuArray<MapData, u64>,
    fatal_messages: HashMap<MapData, FatalMessage, u8>,
    links: Vec<Link>,
}

/// Attached probes (held for their `Drop`, which detaches them).
#[allow(dead_code)]
enum Link {
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
        let procs = take_map(&mut ebpf, MAP_PROCS)?;
        let procs = HashMap::try_from(procs).map_err(|e| map_error(MAP_PROCS, e))?;
        let events = take_map(&mut ebpf, MAP_EVENTS)?;
        let events = RingBuf::try_from(events).map_err(|e| map_error(MAP_EVENTS, e))?;
        let stats = take_map(&mut ebpf, MAP_STATS)?;
        let stats = PerCpuArray::try_from(stats).map_err(|e| map_error(MAP_STATS, e))?;
        let fatal_messages = take_map(&mut ebpf, MAP_FATAL_MESSAGES)?;
        let fatal_messages =
            HashMap::try_from(fatal_messages).map_err(|e| map_error(MAP_FATAL_MESSAGES, e))?;
        Ok(Enforcer {
            ebpf,
            program: name,
            multi,
            probe_at,
            next_probe_id: 0,
            probes,
            procs,
            events: Some(events),
            stats,
            fatal_messages,
            links: Vec::new(),
        })
    }

    /// Attaches every planned probe of `target` to its binary's inode, for
    /// all processes. `all_processes_mode` (one of `mapguard_common::action`,
    /// or 0) makes every process running the binary enforced without
    /// registration (`watch --exe`). Returns how many probes were attached.
    pub fn attach(
        &mut self,
        target: &mut BinaryTarget,
        all_processes_mode: u8,
    ) -> Result<usize, LoaderError> {
        for (key, class) in &target.fatal_messages {
            let key = FatalMessage {
                binary_id: target.id,
                ..*key
            };
            if let Err(e) = self.fatal_messages.insert(key, class, 0) {
                // The probe on runtime.fatal then reads the message instead.
                tracing::warn!(error = %e, "cannot record a runtime message location");
            }
        }
        let mut attached = Vec::with_capacity(target.points.len());
        for point in &target.points {
            let probe_id = self.next_probe_id;
            if probe_id >= MAX_PROBES {
                return Err(LoaderError::TooManyProbes);
            }
            let mut cfg = point.cfg;
            cfg.binary_id = target.id;
            cfg.all_processes_mode = all_processes_mode;
            self.probes
                .set(probe_id, cfg, 0)
                .map_err(|e| map_error(MAP_PROBES, e))?;
            self.next_probe_id += 1;
            let file_offset = match self.probe_at {
                ProbeAt::Planned => point.file_offset,
                ProbeAt::Entry => point.entry_file_offset,
            };
            attached.push((probe_id, file_offset));
        }
        match &self.multi {
            Some(program) => {
                let (offsets, cookies): (Vec<u64>, Vec<u64>) = attached
                    .iter()
                    .map(|(id, offset)| (*offset, u64::from(*id)))
                    .unzip();
                let link = program.attach(&target.path, &offsets, &cookies, None)?;
                self.links.push(Link::Multi(link));
                tracing::debug!(path = %target.path.display(), probes = offsets.len(), "attached as one uprobe_multi link");
            }
            None => {
                for (point, (probe_id, file_offset)) in target.points.iter().zip(&attached) {
                    let attach_point = UProbeAttachPoint {
                        location: UProbeAttachLocation::AbsoluteOffset(*file_offset),
                        cookie: Some(u64::from(*probe_id)),
                    };
                    let program = uprobe(&mut self.ebpf, self.program)?;
                    let link = program
                        .attach(attach_point, &target.path, UProbeScope::AllProcesses)
                        .and_then(|id| program.take_link(id))
                        .map_err(|e| LoaderError::Attach {
                            path: target.path.clone(),
                            symbol: point.symbol.clone(),
                            file_offset: *file_offset,
                            source: Box::new(e),
                        })?;
                    self.links.push(Link::Perf(link));
                    tracing::debug!(symbol = %point.symbol, file_offset, probe_id, "attached");
                }
            }
        }
        target.attached.extend(attached);
        Ok(target.points.len())
    }

    /// Whether probes are attached as uprobe_multi links.
    pub fn uses_multi_links(&self) -> bool {
        self.multi.is_some()
    }

    /// Puts process `pid` under enforcement with `mode` (one of
    /// `mapguard_common::action`).
    pub fn register(&mut self, pid: u32, binary_id: u32, mode: u8) -> Result<(), LoaderError> {
        let cfg = ProcConfig {
            mode,
            _pad: [0; 3],
            binary_id,
        };
        self.procs
            .insert(pid, cfg, 0)
            .map_err(|e| map_error(MAP_PROCS, e))
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
    /// probe applies to all processes, so nothing is reported or signalled
    /// while the probes are being removed.
    fn disarm(&mut self) {
        let pids: Vec<u32> = self.procs.keys().filter_map(Result::ok).collect();
        for pid in pids {
            let _ = self.procs.remove(&pid);
        }
        for id in 0..self.next_probe_id {
            if let Ok(mut cfg) = self.probes.get(&id, 0)
                && cfg.all_processes_mode != 0
            {
                cfg.all_processes_mode = 0;
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
        let links = std::mem::take(&mut self.links);
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
