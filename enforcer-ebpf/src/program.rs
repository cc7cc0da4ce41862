//! The uprobe programs, their maps and the detection logic.

use core::ptr::read_volatile;

use aya_ebpf::{
    EbpfContext as _,
    bindings::pt_regs,
    helpers::{
        bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user,
        generated::{bpf_get_attach_cookie, bpf_send_signal},
    },
    macros::{map, uprobe},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::ProbeContext,
};
use mapguard_common::{
    GoroutineOp, MAX_FRAMES, MAX_GOROUTINES, MAX_MAPS, MAX_PROBES, MAX_PROCS, ProbeConfig,
    ProcConfig, RECENT_WRITERS, RecentWriters, Violation, Writer, WriterKey, action, arg, detector,
    kind, op, reg,
};

const SIGKILL: u32 = 9;
const SIGSTOP: u32 = 19;

/// Frames recorded for every write (the other side of a later report):
/// the map function, its call site and six callers. A report walks the
/// reporting goroutine's own stack to the full [`MAX_FRAMES`].
const WRITER_FRAMES: usize = 8;

#[map(name = "MG_EVENTS")]
static EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

#[map(name = "MG_PROBES")]
static PROBES: Array<ProbeConfig> = Array::with_max_entries(MAX_PROBES, 0);

#[map(name = "MG_PROCS")]
static PROCS: HashMap<u32, ProcConfig> = HashMap::with_max_entries(MAX_PROCS, 0);

#[map(name = "MG_WRITERS")]
static WRITERS: LruHashMap<WriterKey, Writer> = LruHashMap::with_max_entries(MAX_MAPS, 0);

#[map(name = "MG_RECENT")]
static RECENT: LruHashMap<u64, RecentWriters> = LruHashMap::with_max_entries(MAX_MAPS, 0);

#[map(name = "MG_GOROUTINES")]
static GOROUTINES: LruHashMap<u64, GoroutineOp> = LruHashMap::with_max_entries(MAX_GOROUTINES, 0);

/// Index 0: the violation being assembled. Never larger than one entry.
#[map(name = "MG_SCRATCH")]
static SCRATCH: PerCpuArray<Violation> = PerCpuArray::with_max_entries(1, 0);

/// A zeroed writer used as the initial value of new [`WRITERS`] entries
/// (kept off the BPF stack). Never written.
#[map(name = "MG_ZERO")]
static ZERO: PerCpuArray<Writer> = PerCpuArray::with_max_entries(1, 0);

/// Benchmark baseline: the cost of a uprobe hit alone.
#[uprobe]
pub fn mapguard_bare(_ctx: ProbeContext) -> u32 {
    0
}

#[uprobe]
pub fn mapguard_map_op(ctx: ProbeContext) -> u32 {
    let _ = try_map_op(&ctx);
    0
}

/// Everything one probe hit needs to know, gathered once.
struct Hit {
    regs: *const pt_regs,
    cfg: ProbeConfig,
    probe_id: u32,
    mode: u8,
    pid: u32,
    tid: u32,
    g: u64,
}

impl Hit {
    /// The goroutine's id, read from its `runtime.g` (only when recorded or
    /// reported: one user-memory read).
    fn goid(&self) -> u64 {
        read_u64(self.g.wrapping_add(self.cfg.goid_offset as u64)).unwrap_or(0)
    }
}

fn now() -> u64 {
    // SAFETY: no arguments.
    unsafe { bpf_ktime_get_ns() }
}

fn try_map_op(ctx: &ProbeContext) -> Option<()> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let pid = (pid_tgid >> 32) as u32;
    // SAFETY: the helper only reads the perf link's cookie.
    let probe_id = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) } as u32;
    let cfg = *PROBES.get(probe_id)?;
    // SAFETY: PROCS values are plain data; a concurrent update can at worst
    // give a stale mode.
    let mode = match unsafe { PROCS.get(&pid) } {
        Some(proc) => proc.mode,
        None if cfg.all_processes_mode != 0 => cfg.all_processes_mode,
        None => return None,
    };
    let regs = ctx.regs as *const pt_regs;
    // SAFETY: `regs` is the probe context; the verifier checks the offsets.
    let g = unsafe { (*regs).r14 };
    let hit = Hit {
        regs,
        cfg,
        probe_id,
        mode,
        pid,
        tid: pid_tgid as u32,
        g,
    };
    if cfg.op == op::FATAL {
        return on_fatal(&hit);
    }
    let map = map_pointer(&hit)?;
    if map == 0 {
        return None;
    }
    let flag: u8 =
        unsafe { bpf_probe_read_user((map + cfg.writing_offset as u64) as *const u8) }.ok()?;
    let writing = flag & cfg.writing_mask != 0;
    enter(hit.g, map, cfg.op);
    if op::is_write(cfg.op) {
        if writing && let Some(other) = conflicting(map, hit.g) {
            let kind = if other.growing != 0 {
                kind::RELEASED_BUCKET_WRITE
            } else {
                kind::CONCURRENT_WRITE
            };
            report(&hit, map, kind, cfg.op, detector::WRITING_FLAG, Some(other));
        }
        record_writer(&hit, map);
    } else if cfg.op == op::GROW {
        let key = WriterKey { map, g: hit.g };
        if let Some(own) = WRITERS.get_ptr_mut(&key) {
            // SAFETY: map value pointer, valid for this program run; only
            // this goroutine writes its own entry.
            unsafe { (*own).growing = 1 };
        }
    } else if writing && let Some(other) = conflicting(map, hit.g) {
        let kind = reader_kind(cfg.op, other.op);
        report(&hit, map, kind, cfg.op, detector::WRITING_FLAG, Some(other));
    }
    Some(())
}

/// `runtime.fatal(s string)`: if `s` is one of the runtime's
/// `concurrent map ...` messages, report the race with the map operation
/// this goroutine entered last, and act before the runtime prints.
fn on_fatal(hit: &Hit) -> Option<()> {
    // SAFETY: context reads.
    let (ptr, len) = unsafe { ((*hit.regs).rax, (*hit.regs).rbx) };
    if len < 16 {
        return None;
    }
    let msg: [u8; 16] = unsafe { bpf_probe_read_user(ptr as *const [u8; 16]) }.ok()?;
    if &msg[..15] != b"concurrent map " {
        return None;
    }
    // From here on always report (and act): the runtime is about to abort.
    // SAFETY: plain data.
    let entered = unsafe { GOROUTINES.get(&hit.g) }
        .copied()
        .unwrap_or_default();
    let other = conflicting(entered.map, hit.g);
    let growing = other.is_some_and(|o| o.growing != 0);
    let other_op = other.map_or(0, |o| o.op);
    let kind = match msg[15] {
        b'w' if growing => kind::RELEASED_BUCKET_WRITE,
        b'w' => kind::CONCURRENT_WRITE,
        _ if op::is_write(entered.op) => kind::CONCURRENT_WRITE,
        b'i' => reader_kind(op::ITER_NEXT, other_op),
        _ => reader_kind(op::READ, other_op),
    };
    report(
        hit,
        entered.map,
        kind,
        entered.op,
        detector::RUNTIME_FATAL,
        other,
    );
    Some(())
}

/// Remember that goroutine `g` entered `op` on `map` (for the
/// `runtime.fatal` backstop). Updates the goroutine's entry in place; the
/// (costly) LRU insert happens only for a goroutine seen for the first time.
fn enter(g: u64, map: u64, op: u8) {
    match GOROUTINES.get_ptr_mut(&g) {
        // SAFETY: map value pointer, valid for this program run; only
        // goroutine `g` writes its own entry.
        Some(entered) => unsafe {
            (*entered).map = map;
            (*entered).op = op;
        },
        None => {
            let _ = GOROUTINES.insert(
                &g,
                &GoroutineOp {
                    map,
                    ts: 0,
                    op,
                    _pad: [0; 7],
                },
                0,
            );
        }
    }
}

fn reader_kind(reader_op: u8, writer_op: u8) -> u8 {
    let iterating = reader_op == op::ITER_START || reader_op == op::ITER_NEXT;
    match (iterating, writer_op == op::DELETE) {
        (true, true) => kind::DELETE_DURING_ITERATION,
        (true, false) => kind::WRITE_DURING_ITERATION,
        (false, true) => kind::DELETE_DURING_READ,
        (false, false) => kind::WRITE_DURING_READ,
    }
}

/// The most recent writer of `map` that is not goroutine `g`.
fn conflicting(map: u64, g: u64) -> Option<&'static Writer> {
    // SAFETY: plain data; a racing update can at worst give a stale slot.
    let recent = unsafe { RECENT.get(&map) }?;
    let mut best: Option<&'static Writer> = None;
    for other in recent.g {
        if other == 0 || other == g {
            continue;
        }
        // SAFETY: plain data, written only by goroutine `other`.
        if let Some(w) = unsafe { WRITERS.get(&WriterKey { map, g: other }) }
            && best.is_none_or(|b| w.ts > b.ts)
        {
            best = Some(w);
        }
    }
    best
}

/// Record `hit` as goroutine `g`'s latest write into `map` and remember
/// `g` among the map's recent writers.
fn record_writer(hit: &Hit, map: u64) -> Option<()> {
    let key = WriterKey { map, g: hit.g };
    let own = match WRITERS.get_ptr_mut(&key) {
        Some(own) => own,
        None => {
            let zero = ZERO.get_ptr(0)?;
            // SAFETY: per-CPU value pointer, valid for this program run.
            WRITERS.insert(&key, unsafe { &*zero }, 0).ok()?;
            WRITERS.get_ptr_mut(&key)?
        }
    };
    // SAFETY: map value pointer, valid for this program run; only this
    // goroutine writes its own entry (it runs on one CPU at a time).
    let own = unsafe { &mut *own };
    own.g = hit.g;
    own.goid = hit.goid();
    own.ts = now();
    own.tid = hit.tid;
    own.op = hit.cfg.op;
    own.growing = 0;
    own.depth = walk_stack::<WRITER_FRAMES>(hit.regs, &mut own.stack);

    let recent = match RECENT.get_ptr_mut(&map) {
        Some(recent) => recent,
        None => {
            RECENT.insert(&map, &RecentWriters::default(), 0).ok()?;
            RECENT.get_ptr_mut(&map)?
        }
    };
    // SAFETY: map value pointer. Unsynchronized: two goroutines adding
    // themselves at once may lose one slot, never corrupt a writer entry.
    let recent = unsafe { &mut *recent };
    let last = (recent.next.wrapping_sub(1) as usize) % RECENT_WRITERS;
    if recent.g[last] != hit.g {
        let slot = (recent.next as usize) % RECENT_WRITERS;
        recent.g[slot] = hit.g;
        recent.next = recent.next.wrapping_add(1);
    }
    Some(())
}

/// Emit a violation and apply the process's action. Always inlined: BPF
/// functions take at most five arguments.
#[inline(always)]
fn report(
    hit: &Hit,
    map: u64,
    kind: u8,
    op: u8,
    detected_by: u8,
    other: Option<&Writer>,
) -> Option<()> {
    let event = SCRATCH.get_ptr_mut(0)?;
    // SAFETY: per-CPU value pointer, valid for this program run.
    let event = unsafe { &mut *event };
    event.kind = kind;
    event.action = hit.mode;
    event.detected_by = detected_by;
    event.op = op;
    event.pid = hit.pid;
    event.tid = hit.tid;
    event.binary_id = hit.cfg.binary_id;
    event.probe_id = hit.probe_id;
    event.ts = now();
    event.map = map;
    event.g = hit.g;
    event.goid = hit.goid();
    match other {
        Some(other) => {
            event.conflicting_op = other.op;
            event.conflicting_g = other.g;
            event.conflicting_goid = other.goid;
            event.conflicting_ts = other.ts;
            event.conflicting_stack = other.stack;
            event.conflicting_depth = other.depth;
        }
        None => {
            event.conflicting_op = 0;
            event.conflicting_g = 0;
            event.conflicting_goid = 0;
            event.conflicting_ts = 0;
            event.conflicting_depth = 0;
        }
    }
    event.depth = walk_stack::<MAX_FRAMES>(hit.regs, &mut event.stack);
    let _ = EVENTS.output::<Violation>(&*event, 0);
    let signal = match hit.mode {
        action::STOP => SIGSTOP,
        action::KILL => SIGKILL,
        _ => return Some(()),
    };
    // SAFETY: signals the current process (all threads), delivered before
    // the probed instruction runs in user space.
    unsafe { bpf_send_signal(signal) };
    Some(())
}

/// The map pointer this probe's function received.
fn map_pointer(hit: &Hit) -> Option<u64> {
    let value = register(hit.regs, hit.cfg.arg_reg)?;
    match hit.cfg.arg_kind {
        arg::REGISTER => Some(value),
        arg::INDIRECT => read_u64(value.wrapping_add(hit.cfg.arg_offset as u64)),
        _ => None,
    }
}

/// `values` below is indexed by `mapguard_common::reg` numbers.
const _: () = assert!(
    reg::RAX == 0
        && reg::RBX == 1
        && reg::RCX == 2
        && reg::RDI == 3
        && reg::RSI == 4
        && reg::R8 == 5
        && reg::R9 == 6
        && reg::R10 == 7
        && reg::R11 == 8
);

fn register(regs: *const pt_regs, which: u8) -> Option<u64> {
    // Load every candidate with its own constant offset first: the verifier
    // rejects context reads at computed offsets, which a plain `match` on
    // the fields compiles to.
    // SAFETY: context reads at constant offsets.
    let values = unsafe {
        let r = &*regs;
        [
            read_volatile(&r.rax),
            read_volatile(&r.rbx),
            read_volatile(&r.rcx),
            read_volatile(&r.rdi),
            read_volatile(&r.rsi),
            read_volatile(&r.r8),
            read_volatile(&r.r9),
            read_volatile(&r.r10),
            read_volatile(&r.r11),
        ]
    };
    values.get(usize::from(which)).copied()
}

fn read_u64(addr: u64) -> Option<u64> {
    // SAFETY: bpf_probe_read_user faults safely on bad addresses.
    unsafe { bpf_probe_read_user(addr as *const u64) }.ok()
}

/// Walk the frame-pointer chain from a probe on a function's first
/// instructions (before `push %rbp`): the return address is at [RSP], then
/// each frame holds the caller's frame pointer at [fp] and return address
/// at [fp+8], read together in one 16-byte copy. Writes at most `N` PCs
/// (`N <= MAX_FRAMES`) and returns how many it wrote.
fn walk_stack<const N: usize>(regs: *const pt_regs, out: &mut [u64; MAX_FRAMES]) -> u8 {
    // SAFETY: context reads at constant offsets.
    let (ip, sp, mut fp) = unsafe { ((*regs).rip, (*regs).rsp, (*regs).rbp) };
    out[0] = ip;
    let Some(ret) = read_u64(sp) else {
        return 1;
    };
    out[1] = ret;
    let mut depth = 2u8;
    for slot in out.iter_mut().take(N).skip(2) {
        if fp == 0 {
            break;
        }
        // SAFETY: bpf_probe_read_user faults safely on bad addresses.
        let Ok([next, ret]) = (unsafe { bpf_probe_read_user(fp as *const [u64; 2]) }) else {
            break;
        };
        if ret == 0 {
            break;
        }
        *slot = ret;
        depth += 1;
        fp = next;
    }
    depth
}

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
