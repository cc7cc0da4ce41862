//! Layout shared by the mapguard BPF program (`enforcer-ebpf`) and its
//! user-space loader (`enforcer`): events, per-probe and per-process
//! configuration and the names of BPF maps and programs.
//!
//! Everything here is `#[repr(C)]`, `Copy` and has a compile-time size
//! assertion, so the kernel and user side cannot drift apart. User space
//! compiles policy (which process gets which action, where the runtime keeps
//! its "writing" flag) into these fixed-size entries; the kernel only looks
//! them up.
#![no_std]

/// Ring buffer carrying [`Violation`] records to user space.
pub const MAP_EVENTS: &str = "MG_EVENTS";
/// `Array<ProbeConfig>` indexed by the attach cookie of each uprobe.
pub const MAP_PROBES: &str = "MG_PROBES";
/// `HashMap<u32 tgid, ProcConfig>`: processes under enforcement.
pub const MAP_PROCS: &str = "MG_PROCS";
/// `LruHashMap<ProcAddr of a map, RecentWriters>`: which goroutines wrote a
/// map recently.
pub const MAP_RECENT: &str = "MG_RECENT";
/// `LruHashMap<ProcAddr of a runtime.g, Goroutine>`: per goroutine that
/// writes maps, the write it entered last and its latest write record
/// (only ever written by that goroutine, so never torn by a racing one).
/// Goroutines that only read have no entry: the hot path of a read does no
/// hash lookup.
pub const MAP_GOROUTINES: &str = "MG_GOROUTINES";
/// Per-CPU scratch space for records too large for the BPF stack.
pub const MAP_SCRATCH: &str = "MG_SCRATCH";

/// The runtime's map-race messages of each binary, by where they lie
/// relative to the crash path that prints them ([`FatalMessage`] → one of
/// [`message`]).
pub const MAP_FATAL_MESSAGES: &str = "MG_FATAL_MESSAGES";
/// Capacity of [`MAP_FATAL_MESSAGES`] (a Go binary has 3 to 8 such strings).
pub const MAX_FATAL_MESSAGES: u32 = 1024;
/// Per-CPU counters of checks the probes could not complete ([`stat`]).
pub const MAP_STATS: &str = "MG_STATS";
/// `PerCpuHashMap<LatencyKey, u64>`: how many timed map deletes of each
/// process took how long (log2 buckets of nanoseconds).
pub const MAP_DELETE_LATENCY: &str = "MG_DELETE_LATENCY";
/// Capacity of [`MAP_DELETE_LATENCY`].
pub const MAX_LATENCY_KEYS: u32 = 65536;
/// Buckets of [`LatencyKey::bucket`]: bucket `b` counts deletes that took
/// `[2^(b-1), 2^b)` ns (bucket 0: under 1 ns); the last one everything longer.
pub const LATENCY_BUCKETS: u32 = 40;
/// The enforcing uprobe program.
pub const PROG_MAP_OP: &str = "mapguard_map_op";
/// A uprobe program that does nothing (benchmark baseline).
pub const PROG_BARE: &str = "mapguard_bare";

/// Capacity of [`MAP_PROBES`] and [`MAP_HITS`]: attached probes across
/// all binaries and processes (a process probed on its own has its own
/// probe ids; a binary has about 25 probes).
pub const MAX_PROBES: u32 = 16384;
/// `PerCpuArray<u64>` indexed like [`MAP_PROBES`]: how often each probe
/// fired (what sampled coverage budgets by).
pub const MAP_HITS: &str = "MG_HITS";
/// Capacity of [`MAP_PROCS`].
pub const MAX_PROCS: u32 = 4096;
/// Capacity of [`MAP_RECENT`].
pub const MAX_MAPS: u32 = 16384;
/// Goroutines remembered per map in [`RecentWriters`].
pub const RECENT_WRITERS: usize = 4;
/// Capacity of [`MAP_GOROUTINES`].
pub const MAX_GOROUTINES: u32 = 16384;
/// Frames recorded per stack (frame-pointer walk depth).
pub const MAX_FRAMES: usize = 16;
/// Frames recorded for every write ([`Writer::stack`]): the map function,
/// its call site and six callers. A report walks the reporting goroutine's
/// own stack to [`MAX_FRAMES`].
pub const WRITER_FRAMES: usize = 8;
const _: () = assert!(WRITER_FRAMES <= MAX_FRAMES);

/// Map operation a probe sits on (`ProbeConfig::op`, `Violation::op`).
pub mod op {
    pub const DELETE: u8 = 1;
    pub const ASSIGN: u8 = 2;
    pub const CLEAR: u8 = 3;
    pub const READ: u8 = 4;
    pub const ITER_START: u8 = 5;
    pub const ITER_NEXT: u8 = 6;
    pub const GROW: u8 = 7;
    /// `runtime.fatal`: the runtime found a race the entry checks missed.
    pub const FATAL: u8 = 8;
    /// `runtime.throw`: the runtime found a map a race had corrupted.
    pub const THROW: u8 = 9;
    /// A RET instruction of a map delete function: the end of a delete
    /// whose duration is measured ([`super::MAP_DELETE_LATENCY`]). Its
    /// probes are single-stepped (~10 µs a hit), so they are attached only
    /// in short windows ([`super::ProbeConfig::timed`]).
    pub const DELETE_RETURN: u8 = 10;

    /// Whether `op` changes the map (and so holds the runtime's writing flag).
    pub const fn is_write(op: u8) -> bool {
        matches!(op, DELETE | ASSIGN | CLEAR)
    }
}

/// Violation kinds (`Violation::kind`).
pub mod kind {
    /// A write (delete, assign, clear) started while another goroutine was
    /// inside a write of the same map.
    pub const CONCURRENT_WRITE: u8 = 1;
    /// A read started while another goroutine was inside a delete.
    pub const DELETE_DURING_READ: u8 = 2;
    /// An iteration step started while another goroutine was inside a delete.
    pub const DELETE_DURING_ITERATION: u8 = 3;
    /// A write started while another goroutine was growing the map (moving
    /// entries out of the buckets/tables it is about to release).
    pub const RELEASED_BUCKET_WRITE: u8 = 4;
    /// A read started while another goroutine was inside an assign/clear.
    pub const WRITE_DURING_READ: u8 = 5;
    /// An iteration step started while another goroutine was inside an
    /// assign/clear.
    pub const WRITE_DURING_ITERATION: u8 = 6;
}

/// Actions (`ProcConfig::mode`, `Violation::action`).
pub mod action {
    pub const AUDIT: u8 = 1;
    pub const STOP: u8 = 2;
    pub const KILL: u8 = 3;
}

/// What the map-function probes shared by every process of a binary
/// (`ProbeConfig::mode` 0, attached when a Pod with `full` or `writes`
/// coverage runs the binary) check for one process ([`ProcConfig::shared_ops`]).
/// A process with map-function probes of its own has [`shared_ops::NONE`]:
/// its own probes check it, once.
pub mod shared_ops {
    pub const NONE: u8 = 0;
    /// Writes and grows only (`writes` coverage).
    pub const WRITES: u8 = 1;
    /// Every map operation (`full` coverage).
    pub const ALL: u8 = 2;
}

/// Indexes of the `MG_STATS` counters: checks a probe could not complete.
/// They stay at zero in normal operation; a non-zero one means a race may
/// have gone unreported.
pub mod stat {
    /// User memory a check needs (the map's writing flag, an iterator's map
    /// pointer) could not be read.
    pub const UNREADABLE: u32 = 0;
    /// The writing flag was set but no other writer of the map is on record.
    pub const WRITER_UNKNOWN: u32 = 1;
    /// The message passed to `runtime.fatal` or `runtime.throw` (not
    /// located beforehand) could not be read.
    pub const FATAL_UNREADABLE: u32 = 2;
    /// A violation did not fit in the event ring buffer.
    pub const EVENT_LOST: u32 = 3;
    /// `bpf_send_signal` failed, or a stop was not made because the
    /// table of stopped processes ([`super::MAP_STOPPED`]) is full.
    pub const SIGNAL_FAILED: u32 = 4;
    /// A goroutine's entry could not be created (its operations go
    /// unrecorded: a race with it cannot name it).
    pub const UNTRACKED: u32 = 5;
    pub const COUNT: u32 = 6;
    /// Names, by index, for logs and metrics.
    pub const NAMES: [&str; COUNT as usize] = [
        "unreadable",
        "writer_unknown",
        "fatal_unreadable",
        "event_lost",
        "signal_failed",
        "untracked",
    ];
}

/// How a violation was detected (`Violation::detected_by`).
pub mod detector {
    /// The runtime's writing flag was set when the operation started.
    pub const WRITING_FLAG: u8 = 1;
    /// The runtime called `fatal("concurrent map ...")`; caught on entry to
    /// `runtime.fatal`, before it prints anything.
    pub const RUNTIME_FATAL: u8 = 2;
    /// The runtime called `throw` on a map a race corrupted (`bad map
    /// state`); caught on entry to `runtime.throw`, before it prints.
    pub const RUNTIME_THROW: u8 = 3;
}

/// What a runtime crash message says (values of [`MAP_FATAL_MESSAGES`]).
/// The `concurrent map ...` ones are the message's 16th byte, which the
/// probe reads when a message was not located beforehand.
pub mod message {
    /// `concurrent map writes`.
    pub const WRITES: u8 = b'w';
    /// `concurrent map read and map write`.
    pub const READ: u8 = b'r';
    /// `concurrent map iteration and map write`.
    pub const ITERATION: u8 = b'i';
    /// `concurrent map clone and map write`.
    pub const CLONE: u8 = b'c';
    /// The map's structure was found corrupted by concurrent writers
    /// (`small map with no empty slot (concurrent map writes?)`).
    pub const CORRUPTED: u8 = b's';
    /// A grow found an entry written into a bucket it had already
    /// evacuated (`bad map state`).
    pub const RELEASED_BUCKET: u8 = b'b';
}

/// Where a probe finds the map pointer (`ProbeConfig::arg_kind`).
pub mod arg {
    /// The map pointer is in register `arg_reg`.
    pub const REGISTER: u8 = 1;
    /// Register `arg_reg` points at a struct (an iterator) that holds the map
    /// pointer at byte offset `arg_offset`.
    pub const INDIRECT: u8 = 2;
    /// No map argument (`runtime.fatal`).
    pub const NONE: u8 = 3;
}

/// Register numbers of Go's ABIInternal integer argument sequence on amd64
/// (`ProbeConfig::arg_reg`).
pub mod reg {
    pub const RAX: u8 = 0;
    pub const RBX: u8 = 1;
    pub const RCX: u8 = 2;
    pub const RDI: u8 = 3;
    pub const RSI: u8 = 4;
    pub const R8: u8 = 5;
    pub const R9: u8 = 6;
    pub const R10: u8 = 7;
    pub const R11: u8 = 8;
}

/// Per-probe configuration, indexed by the probe's attach cookie.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProbeConfig {
    /// One of [`op`].
    pub op: u8,
    /// One of [`arg`].
    pub arg_kind: u8,
    /// One of [`reg`].
    pub arg_reg: u8,
    /// Mask applied to the byte at `writing_offset` (classic
    /// `hashWriting` = 4; swiss `writing` != 0 → 0xff).
    pub writing_mask: u8,
    /// One of [`action`] for every hit of this probe (the probes of one
    /// process, or of every process of a binary for `watch --exe`); 0: the
    /// process's own mode from [`MAP_PROCS`] (probes shared by the
    /// processes of a binary), and no action for a process not there.
    pub mode: u8,
    /// Non-zero on a delete probe while its function's returns are probed
    /// ([`op::DELETE_RETURN`]): the entry then records when the delete
    /// started. User space switches it with the return probes' windows.
    pub timed: u8,
    pub _pad: [u8; 2],
    /// Byte offset of the map pointer inside the struct `arg_reg` points at.
    pub arg_offset: u32,
    /// Byte offset of the writing flag inside the map header.
    pub writing_offset: u32,
    /// Byte offset of `goid` inside `runtime.g`.
    pub goid_offset: u32,
    /// Binary this probe belongs to (index into user space's binary table).
    pub binary_id: u32,
    /// Index of this probe in its binary's probe list (reports carry it:
    /// the probed instruction's address gives a PIE's load bias).
    pub point: u32,
    pub _pad2: u32,
}
const _: () = assert!(core::mem::size_of::<ProbeConfig>() == 32);

/// Key of [`MAP_FATAL_MESSAGES`]: a map-race message of binary
/// `binary_id`, `len` bytes long, at `delta` bytes from the entry of the
/// crash path that prints it (`runtime.fatal`, `runtime.throw`). The delta
/// does not depend on where the binary is loaded, so the probe recognises
/// its message from the string header alone, without reading the string
/// (its page may not be mapped yet).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FatalMessage {
    pub binary_id: u32,
    pub len: u32,
    pub delta: i64,
}
const _: () = assert!(core::mem::size_of::<FatalMessage>() == 16);

/// A process under enforcement.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcConfig {
    /// One of [`action`].
    pub mode: u8,
    /// Which map operations the probes shared by every process of its
    /// binary check for it (one of [`shared_ops`]); the crash paths are
    /// always checked.
    pub shared_ops: u8,
    pub _pad: [u8; 2],
    /// The binary it runs: probes shared by every process of a file act
    /// only on processes registered with that file's binary.
    pub binary_id: u32,
    /// When the process started, in clock ticks since boot (field 22 of
    /// `/proc/PID/stat`, [`NS_PER_CLOCK_TICK`]): with the pid, its
    /// identity. A shared probe acts on the entry only for the process that
    /// started then, never for a later one given the same pid. 0: not
    /// known, not checked.
    pub start: u64,
}
const _: () = assert!(core::mem::size_of::<ProcConfig>() == 16);

/// Nanoseconds in a clock tick of `/proc/PID/stat`'s start times (the
/// kernel's `USER_HZ`, 100 on every architecture Linux exports it for).
pub const NS_PER_CLOCK_TICK: u64 = 10_000_000;

/// `Array<TaskConfig>` of one entry: where a process's start time lies in
/// the kernel's `task_struct`.
pub const MAP_TASK_CONFIG: &str = "MG_TASK_CONFIG";

/// What the probes know how to learn of the current process
/// ([`MAP_TASK_CONFIG`]). All zero: start times are not checked, stops
/// not recorded.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TaskConfig {
    /// Byte offset of `task_struct.group_leader`, from the running
    /// kernel's BTF.
    pub group_leader: u32,
    /// Byte offset of `task_struct.start_boottime` (`CLOCK_BOOTTIME` ns);
    /// 0: not known, start times are not checked.
    pub start_boottime: u32,
    /// Non-zero when user space applies deadlines to stops (the node
    /// agent): each stop is then recorded in [`MAP_STOPPED`] first.
    pub record_stops: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<TaskConfig>() == 16);

/// `HashMap<u32 tgid, Stop>`: processes the probes stopped (`stop` mode)
/// that user space has not released yet, where it applies deadlines to
/// stops ([`TaskConfig::record_stops`], the node agent). Written before
/// the SIGSTOP is sent, and pinned, so that a stop always has a deadline:
/// a restarted agent finds the stops of one that died.
pub const MAP_STOPPED: &str = "MG_STOPPED";
/// Capacity of [`MAP_STOPPED`]; with it full, a violation of a `stop`
/// process is reported but not stopped (counted as `signal_failed`).
pub const MAX_STOPPED: u32 = 4096;

/// A process a probe stopped ([`MAP_STOPPED`] value).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stop {
    /// `bpf_ktime_get_boot_ns` at the (latest) stop: the process started
    /// before it, a later process given the same pid after it.
    pub boot_ns: u64,
}
const _: () = assert!(core::mem::size_of::<Stop>() == 8);

/// One goroutine's write into a map: who, what, where from. Neither its
/// time nor its goroutine id is recorded (each costs a helper call on every
/// write): a report takes the other goroutine's id from its `runtime.g`,
/// which the runtime reuses only after that goroutine has exited. Its
/// stack is recorded only once the map is shared ([`RecentWriters::shared`]).
///
/// Only its goroutine writes it, but another goroutine's report copies it
/// while it may be rewritten for the writer's next write: `seq` is odd
/// while a rewrite is under way, and a copy is consistent when it read the
/// same even `seq` before and after.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Writer {
    /// Address of the `runtime.g`.
    pub g: u64,
    pub tid: u32,
    /// One of [`op`].
    pub op: u8,
    /// Set when the same goroutine entered a grow function for this map
    /// after this write started.
    pub growing: u8,
    /// Valid entries in `stack`: 1 (the probe address only) while the map
    /// was not shared; a report then walks the stack from `sp` and `fp`.
    pub depth: u8,
    pub _pad: u8,
    /// Rewrite count, odd during a rewrite (see above).
    pub seq: u32,
    pub _pad2: u32,
    /// RSP and RBP at the probe.
    pub sp: u64,
    pub fp: u64,
    /// Program counters, innermost first (probe address, then return
    /// addresses).
    pub stack: [u64; WRITER_FRAMES],
}
const _: () = assert!(core::mem::size_of::<Writer>() == 40 + 8 * WRITER_FRAMES);

impl Writer {
    pub const EMPTY: Writer = Writer {
        g: 0,
        tid: 0,
        op: 0,
        growing: 0,
        depth: 0,
        _pad: 0,
        seq: 0,
        _pad2: 0,
        sp: 0,
        fp: 0,
        stack: [0; WRITER_FRAMES],
    };
}

/// Key of [`MAP_GOROUTINES`] and [`MAP_RECENT`]: an address in one process
/// (replicas of one binary on a node often use the same addresses).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcAddr {
    /// Process (tgid).
    pub pid: u32,
    pub _pad: u32,
    pub addr: u64,
}
const _: () = assert!(core::mem::size_of::<ProcAddr>() == 16);

/// Goroutines that wrote one map recently, a ring of
/// [`RECENT_WRITERS`] slots (`next` counts insertions).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecentWriters {
    pub next: u32,
    /// Set (and never cleared) once a second goroutine wrote the map: from
    /// then on every write records its stack. (Before that, a report walks
    /// the writer's stack from its saved registers: the writer is still
    /// inside its write while its flag is set, so those frames are intact.)
    pub shared: u32,
    pub g: [u64; RECENT_WRITERS],
}
const _: () = assert!(core::mem::size_of::<RecentWriters>() == 8 + 8 * RECENT_WRITERS);

/// One writing goroutine's state ([`MAP_GOROUTINES`] value): the write it
/// entered last (used when the runtime itself detects a race and the
/// goroutine has moved CPUs since) and its latest write (the other side of
/// a later report).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Goroutine {
    /// Map of the write entered last.
    pub map: u64,
    /// Map of `write` (0: no write recorded yet).
    pub write_map: u64,
    /// One of [`op`]: the write entered last.
    pub op: u8,
    pub _pad: [u8; 7],
    pub write: Writer,
}
const _: () = assert!(core::mem::size_of::<Goroutine>() == 24 + core::mem::size_of::<Writer>());

impl Goroutine {
    pub const EMPTY: Goroutine = Goroutine {
        map: 0,
        write_map: 0,
        op: 0,
        _pad: [0; 7],
        write: Writer::EMPTY,
    };
}

/// A detected violation, as sent through [`MAP_EVENTS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Violation {
    /// One of [`kind`].
    pub kind: u8,
    /// One of [`action`].
    pub action: u8,
    /// One of [`detector`].
    pub detected_by: u8,
    /// One of [`op`]: the operation that was starting.
    pub op: u8,
    pub conflicting_op: u8,
    pub depth: u8,
    pub conflicting_depth: u8,
    /// One of [`message`]: what the runtime was about to print, for a
    /// report from its crash path ([`detector::RUNTIME_FATAL`],
    /// [`detector::RUNTIME_THROW`]); 0 for any other report.
    pub message: u8,
    pub pid: u32,
    pub tid: u32,
    pub binary_id: u32,
    /// [`ProbeConfig::point`] of the probe that reported.
    pub point: u32,
    /// `bpf_ktime_get_ns`.
    pub ts: u64,
    /// Address of the map header.
    pub map: u64,
    pub g: u64,
    pub goid: u64,
    pub conflicting_g: u64,
    pub conflicting_goid: u64,
    pub stack: [u64; MAX_FRAMES],
    pub conflicting_stack: [u64; MAX_FRAMES],
}
const _: () = assert!(core::mem::size_of::<Violation>() == 72 + 16 * MAX_FRAMES);

/// Key of [`MAP_DELETE_LATENCY`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LatencyKey {
    /// Process (tgid).
    pub pid: u32,
    /// `[0, LATENCY_BUCKETS)`.
    pub bucket: u32,
}
const _: () = assert!(core::mem::size_of::<LatencyKey>() == 8);

/// `Array<EventLimit>` of one entry: how many violation reports each Pod
/// (cgroup) may put into [`MAP_EVENTS`] (set by the node agent).
pub const MAP_EVENT_LIMIT: &str = "MG_EVENT_LIMIT";
/// `LruHashMap<u64 cgroup v2 id, u64>`: each reporting cgroup's token
/// bucket, as the time it is full again (see [`EventLimit`]). The key is
/// the Pod's cgroup where [`MAP_CGROUPS`] names it (every container of a
/// Pod shares one budget), else the reporting task's own cgroup.
pub const MAP_EVENT_BUCKETS: &str = "MG_EVENT_BUCKETS";
/// `LruPerCpuHashMap<u64 cgroup v2 id, CgroupDrops>`: the reports each
/// cgroup (keyed as in [`MAP_EVENT_BUCKETS`]) dropped and lost.
pub const MAP_CGROUP_DROPS: &str = "MG_CGROUP_DROPS";
/// Capacity of [`MAP_EVENT_BUCKETS`] and [`MAP_CGROUP_DROPS`] (least
/// recently reporting evicted).
pub const MAX_EVENT_CGROUPS: u32 = 8192;

/// The per-cgroup limit on reports ([`MAP_EVENT_LIMIT`]), a token bucket
/// kept as a theoretical arrival time (GCRA): a cgroup may report once per
/// `interval_ns` on average and `burst_ns / interval_ns` times at once.
/// `interval_ns` 0: no limit.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventLimit {
    pub interval_ns: u64,
    pub burst_ns: u64,
}
const _: () = assert!(core::mem::size_of::<EventLimit>() == 16);

/// One cgroup's lost reports on one CPU ([`MAP_CGROUP_DROPS`] value).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CgroupDrops {
    /// Reports dropped by the limit.
    pub limited: u64,
    /// Reports that did not fit in the ring buffer.
    pub lost: u64,
}
const _: () = assert!(core::mem::size_of::<CgroupDrops>() == 16);

/// The exec hook (`sched_process_exec`, node agent only): where new
/// processes of the kubelet's Pods are put under enforcement before their
/// first instruction, or held (SIGSTOP) until user space has attached.
pub const PROG_EXEC: &str = "mapguard_exec";
/// `HashMap<u64 cgroup v2 id, CgroupPolicy>`: the cgroups whose processes
/// the exec hook looks at (Pods' cgroups, the kubelet's `kubepods` roots).
pub const MAP_CGROUPS: &str = "MG_CGROUPS";
/// Capacity of [`MAP_CGROUPS`].
pub const MAX_CGROUPS: u32 = 8192;
/// `LruHashMap<FileKey, KnownFile>`: executables user space has classified,
/// by the key the exec hook reads (an overlay file's own inode: one per
/// container start), least recently used evicted first so it never fills.
pub const MAP_FILES: &str = "MG_FILES";
/// Capacity of [`MAP_FILES`].
pub const MAX_FILES: u32 = 8192;
/// `HashMap<u32 tgid, Hold>`: processes the exec hook stopped and user
/// space has not released yet (pinned, so a restarted agent finds the
/// holds of one that died).
pub const MAP_HELD: &str = "MG_HELD";
/// Capacity of [`MAP_HELD`].
pub const MAX_HELD: u32 = 4096;
/// Ring buffer of [`ExecEvent`]s.
pub const MAP_EXECS: &str = "MG_EXECS";
/// `Array<ExecConfig>` of one entry: kernel struct offsets from BTF.
pub const MAP_EXEC_CONFIG: &str = "MG_EXEC_CONFIG";
/// Cgroup levels the exec hook looks up (from the root down).
pub const MAX_CGROUP_LEVELS: u32 = 16;

/// What a cgroup of [`MAP_CGROUPS`] is.
pub mod cgroup_kind {
    /// A Pod's cgroup whose Pod user space has resolved: its processes
    /// get the Pod's mode (none when `mode` is 0, `off`).
    pub const POD: u8 = 1;
    /// The kubelet's `kubepods` root: a process below it in no resolved
    /// Pod's cgroup is held until user space has resolved its Pod.
    pub const KUBEPODS: u8 = 2;
}

/// A cgroup the exec hook acts on ([`MAP_CGROUPS`] value).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CgroupPolicy {
    /// One of [`cgroup_kind`].
    pub kind: u8,
    /// One of [`action`], or 0 (`off`).
    pub mode: u8,
    /// [`shared_ops`] a process of this Pod is checked for by shared probes.
    pub shared_ops: u8,
    /// Non-zero while the Pod is at a per-Pod bound of user space (its
    /// processes, their probe ids): the hook registers none of its new
    /// processes (they are held, and user space refuses them), so that the
    /// Pod takes no further slot of [`MAP_PROCS`].
    pub at_limit: u8,
    pub _pad: [u8; 4],
}
const _: () = assert!(core::mem::size_of::<CgroupPolicy>() == 8);

/// An executable as the kernel names it: its inode number and its
/// superblock's device (the kernel's `dev_t` encoding). User space learns
/// a file's key from the exec events, never computes it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FileKey {
    pub ino: u64,
    pub dev: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<FileKey>() == 16);

/// What user space knows of an executable ([`MAP_FILES`] value).
pub mod file_kind {
    /// Not a Go program (or one mapguard cannot enforce): never held.
    pub const NOT_ENFORCEABLE: u8 = 1;
    /// A Go program analysed, its crash paths probed for every process.
    pub const GO: u8 = 2;
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KnownFile {
    /// One of [`file_kind`].
    pub kind: u8,
    /// Its map functions are probed for every process of the file (an
    /// exec of a Pod with `full`/`writes` coverage needs no hold).
    pub shared_map_ops: u8,
    pub _pad: [u8; 2],
    pub binary_id: u32,
}
const _: () = assert!(core::mem::size_of::<KnownFile>() == 8);

/// A process stopped at exec ([`MAP_HELD`] value).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Hold {
    /// `bpf_ktime_get_boot_ns` at the exec: the process started before
    /// it, a later process given the same pid after it.
    pub boot_ns: u64,
    pub cgroup: u64,
    pub file: FileKey,
}
const _: () = assert!(core::mem::size_of::<Hold>() == 32);

/// What the exec hook did ([`ExecEvent::what`]).
pub mod exec_what {
    /// Stopped (SIGSTOP) until user space releases it.
    pub const HELD: u8 = 1;
    /// Put under enforcement by the hook itself (a known binary, a
    /// resolved Pod): written into the process table.
    pub const ENFORCED: u8 = 2;
    /// An exec below a `kubepods` root in no resolved Pod, of a file not
    /// to hold: user space may resolve its Pod.
    pub const UNRESOLVED: u8 = 3;
    /// SIGSTOP could not be sent: the process runs unheld.
    pub const HOLD_FAILED: u8 = 4;
}

/// One exec the hook acted on, as sent through [`MAP_EXECS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExecEvent {
    /// One of [`exec_what`].
    pub what: u8,
    /// The mode written ([`exec_what::ENFORCED`]).
    pub mode: u8,
    pub _pad: [u8; 2],
    pub pid: u32,
    pub boot_ns: u64,
    /// The cgroup (v2 id) the process execs in.
    pub cgroup: u64,
    pub file: FileKey,
    /// [`KnownFile::binary_id`] for [`exec_what::ENFORCED`].
    pub binary_id: u32,
    pub _pad2: u32,
}
const _: () = assert!(core::mem::size_of::<ExecEvent>() == 48);

/// Byte offsets of the kernel struct fields the exec hook reads, taken
/// from the running kernel's BTF by user space ([`MAP_EXEC_CONFIG`]).
/// All zero: not configured, the hook does nothing.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExecConfig {
    /// `struct linux_binprm`: `file`.
    pub bprm_file: u32,
    /// `struct file`: `f_inode`.
    pub file_inode: u32,
    /// `struct inode`: `i_ino`.
    pub inode_ino: u32,
    /// `struct inode`: `i_sb`.
    pub inode_sb: u32,
    /// `struct super_block`: `s_dev`.
    pub sb_dev: u32,
    /// Non-zero once configured.
    pub enabled: u32,
}
const _: () = assert!(core::mem::size_of::<ExecConfig>() == 24);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all are `#[repr(C)]`, `Copy`, without implicit padding (the
    // size assertions above pin the layout) and valid for any bit pattern.
    unsafe impl aya::Pod for super::ProbeConfig {}
    unsafe impl aya::Pod for super::ProcConfig {}
    unsafe impl aya::Pod for super::Writer {}
    unsafe impl aya::Pod for super::RecentWriters {}
    unsafe impl aya::Pod for super::Goroutine {}
    unsafe impl aya::Pod for super::ProcAddr {}
    unsafe impl aya::Pod for super::Violation {}
    unsafe impl aya::Pod for super::FatalMessage {}
    unsafe impl aya::Pod for super::LatencyKey {}
    unsafe impl aya::Pod for super::CgroupPolicy {}
    unsafe impl aya::Pod for super::FileKey {}
    unsafe impl aya::Pod for super::KnownFile {}
    unsafe impl aya::Pod for super::Hold {}
    unsafe impl aya::Pod for super::ExecEvent {}
    unsafe impl aya::Pod for super::ExecConfig {}
    unsafe impl aya::Pod for super::EventLimit {}
    unsafe impl aya::Pod for super::CgroupDrops {}
    unsafe impl aya::Pod for super::TaskConfig {}
    unsafe impl aya::Pod for super::Stop {}
}
