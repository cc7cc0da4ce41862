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
    ProcConfig, Violation, Writer, WriterRecord, action, arg, detector, kind, op, reg,
};

const SIGKILL: u32 = 9;
const SIGSTOP: u32 = 19;

#[map(name = "MG_EVENTS")]
static EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

#[map(name = "MG_PROBES")]
static PROBES: Array<ProbeConfig> = Array::with_max_entries(MAX_PROBES, 0);

#[map(name = "MG_PROCS")]
static PROCS: HashMap<u32, ProcConfig> = HashMap::with_max_entries(MAX_PROCS, 0);

#[map(name = "MG_WRITERS")]
static WRITERS: LruHashMap<u64, WriterRecord> = LruHashMap::with_max_entries(MAX_MAPS, 0);

#[map(name = "MG_GOROUTINES")]
static GOROUTINES: LruHashMap<u64, GoroutineOp> = LruHashMap::with_max_entries(MAX_GOROUTINES, 0);

/// Index 0: the violation being assembled. Never larger than one entry.
#[map(name = "MG_SCRATCH")]
static SCRATCH: PerCpuArray<Violation> = PerCpuArray::with_max_entries(1, 0);

/// A zeroed record used as the initial value of new [`WRITERS`] entries
/// (too large for the BPF stack). Never written.
#[map(name = "MG_ZERO")]
static ZERO: PerCpuArray<WriterRecord> = PerCpuArray::with_max_entries(1, 0);

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
    goid: u64,
    ts: u64,
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
        goid: read_u64(g.wrapping_add(cfg.goid_offset as u64)).unwrap_or(0),
        ts: unsafe { bpf_ktime_get_ns() },
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
    let _ = GOROUTINES.insert(
        &hit.g,
        &GoroutineOp {
            map,
            ts: hit.ts,
            op: cfg.op,
            _pad: [0; 7],
        },
        0,
    );
    if op::is_write(cfg.op) {
        if writing {
            if let Some(record) = WRITERS.get_ptr(&map) {
                // SAFETY: map value pointer, valid for this program run.
                let other = conflicting(unsafe { &*record }, hit.g);
                if other.g != 0 {
                    let kind = if other.growing != 0 {
                        kind::RELEASED_BUCKET_WRITE
                    } else {
                        kind::CONCURRENT_WRITE
                    };
                    report(&hit, map, kind, cfg.op, detector::WRITING_FLAG, other);
                }
            }
        }
        record_writer(&hit, map);
    } else if cfg.op == op::GROW {
        if let Some(record) = WRITERS.get_ptr_mut(&map) {
            // SAFETY: map value pointer, valid for this program run.
            let record = unsafe { &mut *record };
            if record.last.g == hit.g {
                record.last.growing = 1;
            }
        }
    } else if writing {
        let record = WRITERS.get_ptr(&map)?;
        // SAFETY: map value pointer, valid for this program run.
        let other = conflicting(unsafe { &*record }, hit.g);
        if other.g != 0 {
            let kind = reader_kind(cfg.op, other.op);
            report(&hit, map, kind, cfg.op, detector::WRITING_FLAG, other);
        }
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
    // SAFETY: plain data.
    let entered = *unsafe { GOROUTINES.get(&hit.g) }?;
    let record = WRITERS.get_ptr(&entered.map)?;
    // SAFETY: map value pointer, valid for this program run.
    let other = conflicting(unsafe { &*record }, hit.g);
    let kind = match msg[15] {
        b'w' if other.growing != 0 => kind::RELEASED_BUCKET_WRITE,
        b'w' => kind::CONCURRENT_WRITE,
        _ if op::is_write(entered.op) => kind::CONCURRENT_WRITE,
        b'i' => reader_kind(op::ITER_NEXT, other.op),
        _ => reader_kind(op::READ, other.op),
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

fn reader_kind(reader_op: u8, writer_op: u8) -> u8 {
    let iterating = reader_op == op::ITER_START || reader_op == op::ITER_NEXT;
    match (iterating, writer_op == op::DELETE) {
        (true, true) => kind::DELETE_DURING_ITERATION,
        (true, false) => kind::WRITE_DURING_ITERATION,
        (false, true) => kind::DELETE_DURING_READ,
        (false, false) => kind::WRITE_DURING_READ,
    }
}

/// The most recent writer of the map that is not goroutine `g`.
fn conflicting(record: &WriterRecord, g: u64) -> &Writer {
    if record.last.g != g {
        &record.last
    } else {
        &record.prev
    }
}

/// Make `hit` the last writer of `map`, keeping the previous writer if it
/// was another goroutine.
fn record_writer(hit: &Hit, map: u64) -> Option<()> {
    let record = match WRITERS.get_ptr_mut(&map) {
        Some(record) => record,
        None => {
            let zero = ZERO.get_ptr(0)?;
            // SAFETY: per-CPU value pointer, valid for this program run.
            WRITERS.insert(&map, unsafe { &*zero }, 0).ok()?;
            WRITERS.get_ptr_mut(&map)?
        }
    };
    // SAFETY: map value pointer, valid for this program run. Concurrent
    // updates of the same map's record from another CPU may interleave
    // (the record is best-effort context, the flag check is the detector).
    let record = unsafe { &mut *record };
    if record.last.g != hit.g {
        record.prev = record.last;
    }
    let last = &mut record.last;
    last.g = hit.g;
    last.goid = hit.goid;
    last.ts = hit.ts;
    last.tid = hit.tid;
    last.op = hit.cfg.op;
    last.growing = 0;
    last.depth = walk_stack(hit.regs, &mut last.stack);
    Some(())
}

/// Emit a violation and apply the process's action.
fn report(hit: &Hit, map: u64, kind: u8, op: u8, detected_by: u8, other: &Writer) -> Option<()> {
    let event = SCRATCH.get_ptr_mut(0)?;
    // SAFETY: per-CPU value pointer, valid for this program run.
    let event = unsafe { &mut *event };
    event.kind = kind;
    event.action = hit.mode;
    event.detected_by = detected_by;
    event.op = op;
    event.conflicting_op = other.op;
    event.pid = hit.pid;
    event.tid = hit.tid;
    event.binary_id = hit.cfg.binary_id;
    event.probe_id = hit.probe_id;
    event.ts = hit.ts;
    event.map = map;
    event.g = hit.g;
    event.goid = hit.goid;
    event.conflicting_g = other.g;
    event.conflicting_goid = other.goid;
    event.conflicting_ts = other.ts;
    event.conflicting_stack = other.stack;
    event.conflicting_depth = other.depth;
    event.depth = walk_stack(hit.regs, &mut event.stack);
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
/// at [fp+8]. Returns the number of PCs written.
fn walk_stack(regs: *const pt_regs, out: &mut [u64; MAX_FRAMES]) -> u8 {
    // SAFETY: context reads at constant offsets.
    let (ip, sp, mut fp) = unsafe { ((*regs).rip, (*regs).rsp, (*regs).rbp) };
    out[0] = ip;
    let Some(ret) = read_u64(sp) else {
        return 1;
    };
    out[1] = ret;
    let mut depth = 2u8;
    for slot in out.iter_mut().skip(2) {
        if fp == 0 {
            break;
        }
        let Some(ret) = read_u64(fp + 8) else { break };
        if ret == 0 {
            break;
        }
        *slot = ret;
        depth += 1;
        let Some(next) = read_u64(fp) else { break };
        fp = next;
    }
    depth
}

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
