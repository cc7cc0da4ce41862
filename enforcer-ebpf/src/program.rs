//! The uprobe programs, their maps and the detection logic.
//!
//! Cost model, measured here with `kernel.bpf_stats_enabled` (program run
//! time per hit; `enforcer/benches/probe_cost.rs` gives the end-to-end
//! figure): each `bpf_probe_read_user` costs ~80 ns whatever its size up to
//! a KiB, `bpf_ktime_get_ns` ~45 ns, a map lookup 15–50 ns. So every hit
//! does one user read (the writing flag) and updates its goroutine's entry
//! in place; a write adds one bulk copy of the top of the stack (the
//! frame-pointer walk reads from it) and one lookup of the map's recent
//! writers. Time and goroutine ids are read only when reporting.
//!
//! The runtime's crash paths (`runtime.fatal`, and `runtime.throw` where a
//! release's maps throw on corruption) are probed at their entry as the
//! backstop for races the entry check misses.

use aya_ebpf::{
    EbpfContext as _,
    bindings::{BPF_NOEXIST, pt_regs},
    helpers::{
        bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user,
        generated::bpf_get_attach_cookie,
    },
    macros::{map, uprobe},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap},
    programs::ProbeContext,
};
use mapguard_common::{
    FatalMessage, Goroutine, LATENCY_BUCKETS, LatencyKey, MAX_FATAL_MESSAGES, MAX_GOROUTINES,
    MAX_LATENCY_KEYS, MAX_MAPS, MAX_PROBES, MAX_PROCS, ProbeConfig, ProcAddr, ProcConfig,
    RECENT_WRITERS, RecentWriters, Writer, arg, detector, kind, message, op, shared_ops, stat,
};

use crate::{
    regs::{read_u64, register},
    report::report,
    stack::walk_stack,
};

#[map(name = "MG_PROBES")]
static PROBES: Array<ProbeConfig> = Array::with_max_entries(MAX_PROBES, 0);

/// Hits per probe (per CPU: no shared cache line on the hot path).
#[map(name = "MG_HITS")]
static HITS: PerCpuArray<u64> = PerCpuArray::with_max_entries(MAX_PROBES, 0);

#[map(name = "MG_PROCS")]
pub(crate) static PROCS: HashMap<u32, ProcConfig> = HashMap::with_max_entries(MAX_PROCS, 0);

#[map(name = "MG_RECENT")]
static RECENT: LruHashMap<ProcAddr, RecentWriters> = LruHashMap::with_max_entries(MAX_MAPS, 0);

#[map(name = "MG_GOROUTINES")]
static GOROUTINES: LruHashMap<ProcAddr, Goroutine> =
    LruHashMap::with_max_entries(MAX_GOROUTINES, 0);

#[map(name = "MG_FATAL_MESSAGES")]
static FATAL_MESSAGES: HashMap<FatalMessage, u8> = HashMap::with_max_entries(MAX_FATAL_MESSAGES, 0);

/// Timed deletes by process and duration bucket.
#[map(name = "MG_DELETE_LATENCY")]
static DELETE_LATENCY: PerCpuHashMap<LatencyKey, u64> =
    PerCpuHashMap::with_max_entries(MAX_LATENCY_KEYS, 0);

/// Checks that could not be completed, by `mapguard_common::stat` index.
#[map(name = "MG_STATS")]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stat::COUNT, 0);

pub(crate) fn count(which: u32) {
    if let Some(counter) = STATS.get_ptr_mut(which) {
        // SAFETY: per-CPU value pointer, valid for this program run.
        unsafe { *counter += 1 };
    }
}

/// The map operation each thread entered last: what the crash path needs
/// to know (which map, which operation) when the runtime aborts inside that
/// operation. A goroutine stays on its thread from the map function's
/// entry to its `fatal` (runtime code is not preempted), so the thread's
/// slot names it. Slots are indexed by thread id modulo their number (an
/// array lookup, no hash: readers keep no per-goroutine record at all); a
/// slot another thread took over is recognised by its ids.
#[repr(C)]
#[derive(Clone, Copy)]
struct Entered {
    g: u64,
    map: u64,
    pid: u32,
    tid: u32,
    op: u8,
    _pad: [u8; 7],
    /// When a timed delete started (`bpf_ktime_get_ns`); 0 otherwise.
    ts: u64,
}

/// Slots of [`ENTERED`] (a power of two).
const THREAD_SLOTS: u32 = 65536;

#[map(name = "MG_ENTERED")]
static ENTERED: Array<Entered> = Array::with_max_entries(THREAD_SLOTS, 0);

/// A zeroed goroutine used as the initial value of new [`GOROUTINES`]
/// entries (kept off the BPF stack). Never written.
#[map(name = "MG_ZERO")]
static ZERO: PerCpuArray<Goroutine> = PerCpuArray::with_max_entries(1, 0);

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
pub(crate) struct Hit {
    pub(crate) regs: *const pt_regs,
    pub(crate) cfg: ProbeConfig,
    pub(crate) mode: u8,
    pub(crate) pid: u32,
    pub(crate) tid: u32,
    pub(crate) g: u64,
}

fn key(pid: u32, addr: u64) -> ProcAddr {
    ProcAddr { pid, _pad: 0, addr }
}

fn try_map_op(ctx: &ProbeContext) -> Option<()> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let pid = (pid_tgid >> 32) as u32;
    // SAFETY: the helper only reads the perf link's cookie.
    let probe_id = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) } as u32;
    let cfg = *PROBES.get(probe_id)?;
    if let Some(hits) = HITS.get_ptr_mut(probe_id) {
        // SAFETY: per-CPU value pointer, valid for this program run.
        unsafe { *hits += 1 };
    }
    let mode = match cfg.mode {
        // A probe shared by every process of its binary: the process's own
        // entry says whether it is enforced, and for which operations.
        0 => {
            // SAFETY: PROCS values are plain data; a concurrent update can
            // at worst give a stale mode.
            let own = unsafe { PROCS.get(pid) }?;
            if own.binary_id != cfg.binary_id || !shared_covers(own.shared_ops, cfg.op) {
                return None;
            }
            own.mode
        }
        mode => mode,
    };
    let regs = ctx.regs as *const pt_regs;
    // SAFETY: `regs` is the probe context; the verifier checks the offsets.
    let g = unsafe { (*regs).r14 };
    let hit = Hit {
        regs,
        cfg,
        mode,
        pid,
        tid: pid_tgid as u32,
        g,
    };
    match cfg.op {
        op::FATAL => return on_crash(&hit, detector::RUNTIME_FATAL),
        op::THROW => return on_crash(&hit, detector::RUNTIME_THROW),
        op::DELETE_RETURN => return on_delete_return(&hit),
        _ => {}
    }
    let Some(map) = map_pointer(&hit) else {
        count(stat::UNREADABLE);
        return None;
    };
    if map == 0 {
        return None;
    }
    if cfg.op == op::GROW {
        // Part of the write this goroutine is inside: its entry keeps
        // naming that write.
        if let Some(own) = GOROUTINES.get_ptr_mut(key(hit.pid, hit.g)) {
            // SAFETY: map value pointer, valid for this program run; only
            // this goroutine writes its own entry.
            let own = unsafe { &mut *own };
            if own.write_map == map {
                own.write.growing = 1;
            }
        }
        return Some(());
    }
    // SAFETY: bpf_probe_read_user faults safely on bad addresses.
    let Ok(flag) = (unsafe { bpf_probe_read_user((map + cfg.writing_offset as u64) as *const u8) })
    else {
        count(stat::UNREADABLE);
        return None;
    };
    let writing = flag & cfg.writing_mask != 0;
    if let Some(entered) = ENTERED.get_ptr_mut(hit.tid & (THREAD_SLOTS - 1)) {
        // SAFETY: array value pointer, valid for this program run; a thread
        // sharing the slot can at worst leave it naming itself.
        unsafe {
            (*entered).g = hit.g;
            (*entered).map = map;
            (*entered).pid = hit.pid;
            (*entered).tid = hit.tid;
            (*entered).op = cfg.op;
            // SAFETY: no arguments.
            (*entered).ts = if cfg.timed != 0 {
                bpf_ktime_get_ns()
            } else {
                0
            };
        }
    }
    let write = op::is_write(cfg.op);
    // Only writers keep a per-goroutine record (the other side of a later
    // report). The check below does not depend on it: a failed insert must
    // not hide a race.
    let own = if write {
        let own = enter(hit.pid, hit.g, map, cfg.op);
        if own.is_none() {
            count(stat::UNTRACKED);
        }
        own
    } else {
        None
    };
    if writing {
        match conflicting(hit.pid, map, hit.g) {
            Some(other) => {
                report(
                    &hit,
                    map,
                    cfg.op,
                    (detector::WRITING_FLAG, 0),
                    Some(other),
                    |other| match other {
                        Some(o) if write && o.growing => kind::RELEASED_BUCKET_WRITE,
                        _ if write => kind::CONCURRENT_WRITE,
                        _ => reader_kind(cfg.op, other.map_or(0, |o| o.op)),
                    },
                );
            }
            None => count(stat::WRITER_UNKNOWN),
        }
    }
    if let Some(own) = own {
        record_writer(&hit, map, own);
    }
    Some(())
}

/// Whether a probe shared by every process of a binary checks operation
/// `op` of a process registered with `shared` ([`shared_ops`]). The crash
/// paths are always checked.
fn shared_covers(shared: u8, op: u8) -> bool {
    match op {
        op::FATAL | op::THROW | op::DELETE_RETURN => true,
        _ => match shared {
            shared_ops::ALL => true,
            shared_ops::WRITES => op::is_write(op) || op == op::GROW,
            _ => false,
        },
    }
}

/// A compiler barrier: no load or store moves across it (an empty asm
/// statement that may touch all memory; BPF has no fence instruction, and
/// its backend cannot select `compiler_fence`). The CPU keeps the order of
/// stores as seen from another CPU on x86-64.
#[inline(always)]
pub(crate) fn barrier() {
    core::hint::black_box(&raw const ZERO);
}

/// Remember that goroutine `g` entered write `op` on `map` and return its
/// entry, updated in place; the (costly) LRU insert happens only for a
/// goroutine seen writing for the first time.
fn enter(pid: u32, g: u64, map: u64, op: u8) -> Option<&'static mut Goroutine> {
    let key = key(pid, g);
    let own = match GOROUTINES.get_ptr_mut(key) {
        Some(own) => own,
        None => {
            let zero = ZERO.get_ptr(0)?;
            // SAFETY: per-CPU value pointer, valid for this program run.
            // Passed by reference: by value, the entry would be copied onto
            // the BPF stack first.
            #[allow(clippy::needless_borrows_for_generic_args)]
            GOROUTINES.insert(key, unsafe { &*zero }, 0).ok()?;
            GOROUTINES.get_ptr_mut(key)?
        }
    };
    // SAFETY: map value pointer, valid for this program run; only goroutine
    // `g` writes its own entry (it runs on one CPU at a time).
    let own = unsafe { &mut *own };
    own.map = map;
    own.op = op;
    Some(own)
}

/// `runtime.fatal(s string)` / `runtime.throw(s string)`: if `s` is one
/// of the runtime's map-race messages, report the race with the map
/// operation this goroutine entered last, and act before the runtime
/// prints.
fn on_crash(hit: &Hit, detected_by: u8) -> Option<()> {
    // SAFETY: context reads.
    let (ptr, len, ip) = unsafe { ((*hit.regs).rax, (*hit.regs).rbx, (*hit.regs).rip) };
    // Recognise the message by where it lies relative to this probe (the
    // uprobe sets RIP to the probed instruction, the function's entry);
    // its bytes may sit in a page the process has not touched yet, which
    // bpf_probe_read_user cannot fault in.
    let known = FatalMessage {
        binary_id: hit.cfg.binary_id,
        len: len as u32,
        delta: ptr.wrapping_sub(ip) as i64,
    };
    // SAFETY: plain data.
    let class = match unsafe { FATAL_MESSAGES.get(&known) } {
        Some(class) => *class,
        None => read_message_class(ptr, len)?,
    };
    // From here on always report (and act): the runtime is about to abort.
    // The operation this goroutine is in: the one its thread entered last
    // (unless another thread took the slot since), else its write on
    // record.
    // SAFETY: plain data.
    let (map, entered_op) = match ENTERED.get(hit.tid & (THREAD_SLOTS - 1)) {
        Some(e) if e.g == hit.g && e.pid == hit.pid && e.tid == hit.tid => (e.map, e.op),
        _ => unsafe { GOROUTINES.get(key(hit.pid, hit.g)) }.map_or((0, 0), |e| (e.map, e.op)),
    };
    let other = conflicting(hit.pid, map, hit.g);
    report(hit, map, entered_op, (detected_by, class), other, |other| {
        let growing = other.is_some_and(|o| o.growing);
        let other_op = other.map_or(0, |o| o.op);
        match class {
            message::RELEASED_BUCKET => kind::RELEASED_BUCKET_WRITE,
            message::WRITES | message::CORRUPTED if growing => kind::RELEASED_BUCKET_WRITE,
            message::WRITES | message::CORRUPTED => kind::CONCURRENT_WRITE,
            _ if op::is_write(entered_op) => kind::CONCURRENT_WRITE,
            message::ITERATION => reader_kind(op::ITER_NEXT, other_op),
            _ => reader_kind(op::READ, other_op),
        }
    });
    Some(())
}

/// A RET of a map delete function: if this thread's slot names a timed
/// delete of this goroutine, count its duration in its process's
/// histogram (the slot is cleared: each delete counts once).
fn on_delete_return(hit: &Hit) -> Option<()> {
    let entered = ENTERED.get_ptr_mut(hit.tid & (THREAD_SLOTS - 1))?;
    // SAFETY: array value pointer, valid for this program run.
    let entered = unsafe { &mut *entered };
    if entered.ts == 0
        || entered.op != op::DELETE
        || entered.g != hit.g
        || entered.pid != hit.pid
        || entered.tid != hit.tid
    {
        return None;
    }
    // SAFETY: no arguments.
    let took = unsafe { bpf_ktime_get_ns() }.saturating_sub(entered.ts);
    entered.ts = 0;
    let key = LatencyKey {
        pid: hit.pid,
        bucket: (64 - took.leading_zeros()).min(LATENCY_BUCKETS - 1),
    };
    match DELETE_LATENCY.get_ptr_mut(&key) {
        // SAFETY: per-CPU value pointer, valid for this program run.
        Some(n) => unsafe { *n += 1 },
        None => {
            let _ = DELETE_LATENCY.insert(&key, &1, 0);
        }
    }
    Some(())
}

/// The class of a message that was not located beforehand, read from user
/// memory: `concurrent map ...` (its 16th byte) or `bad map state`; `None`
/// for any other message (not a map race) or an unreadable one.
fn read_message_class(ptr: u64, len: u64) -> Option<u8> {
    const BAD_MAP_STATE: &[u8; 13] = b"bad map state";
    if len == BAD_MAP_STATE.len() as u64 {
        // SAFETY: bpf_probe_read_user faults safely on bad addresses.
        let Ok(text) = (unsafe { bpf_probe_read_user(ptr as *const [u8; 13]) }) else {
            count(stat::FATAL_UNREADABLE);
            return None;
        };
        return (&text == BAD_MAP_STATE).then_some(message::RELEASED_BUCKET);
    }
    if len < 16 {
        return None;
    }
    // SAFETY: as above.
    let Ok(text) = (unsafe { bpf_probe_read_user(ptr as *const [u8; 16]) }) else {
        count(stat::FATAL_UNREADABLE);
        return None;
    };
    (&text[..15] == b"concurrent map ").then_some(text[15])
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

/// The most recent writer of `map` that is not goroutine `g`: the newest
/// slot of the map's ring naming another goroutine whose latest write is
/// into `map` (the ring gains a slot whenever the writer changes, so the
/// newest other slot is the latest other writer). A pointer, not a
/// reference: that goroutine may be rewriting its record right now (a
/// report copies it with [`Writer::seq`]).
fn conflicting(pid: u32, map: u64, g: u64) -> Option<*const Writer> {
    // SAFETY: plain data; a racing update can at worst give a stale slot.
    let recent = unsafe { RECENT.get(key(pid, map)) }?;
    for back in 1..=RECENT_WRITERS {
        let other = recent.g[(recent.next.wrapping_sub(back as u32) as usize) % RECENT_WRITERS];
        if other == 0 || other == g {
            continue;
        }
        // SAFETY: plain data, written only by goroutine `other`.
        if let Some(state) = unsafe { GOROUTINES.get(key(pid, other)) }
            && state.write_map == map
        {
            return Some(&raw const state.write);
        }
    }
    None
}

/// Record `hit` as goroutine `g`'s latest write (into `map`) and remember
/// `g` among the map's recent writers. The stack is walked only once the
/// map is shared: a map only one goroutine touches cannot race, and the
/// first write after a second goroutine appears already records it (a
/// report on a write in flight before that walks the writer's stack from
/// its saved registers instead).
fn record_writer(hit: &Hit, map: u64, own: &mut Goroutine) -> Option<()> {
    let map_key = key(hit.pid, map);
    let recent = match RECENT.get_ptr_mut(map_key) {
        Some(recent) => recent,
        None => {
            // Only if still absent: two goroutines writing a new map at once
            // both get here, and replacing the first one's ring would lose
            // it (the other one's next report would find no other writer).
            let _ = RECENT.insert(map_key, RecentWriters::default(), u64::from(BPF_NOEXIST));
            RECENT.get_ptr_mut(map_key)?
        }
    };
    // SAFETY: map value pointer. Unsynchronized: two goroutines adding
    // themselves at once may lose one slot, never corrupt a goroutine's
    // entry.
    let recent = unsafe { &mut *recent };
    let last = (recent.next.wrapping_sub(1) as usize) % RECENT_WRITERS;
    if recent.g[last] != hit.g {
        let slot = (recent.next as usize) % RECENT_WRITERS;
        recent.g[slot] = hit.g;
        recent.next = recent.next.wrapping_add(1);
    }
    let shared = mark_shared(recent, hit.g);

    own.write_map = map;
    let write = &mut own.write;
    // Odd while rewriting (see `Writer`); the barriers keep the compiler
    // from moving the record's stores across the count's.
    let seq = write.seq;
    // SAFETY: a field of this goroutine's own entry.
    unsafe { core::ptr::write_volatile(&raw mut write.seq, seq | 1) };
    barrier();
    write.g = hit.g;
    write.tid = hit.tid;
    write.op = hit.cfg.op;
    write.growing = 0;
    // SAFETY: context reads at constant offsets.
    let (ip, sp, fp) = unsafe { ((*hit.regs).rip, (*hit.regs).rsp, (*hit.regs).rbp) };
    write.sp = sp;
    write.fp = fp;
    write.depth = if shared {
        walk_stack(ip, sp, fp, &mut write.stack)
    } else {
        write.stack[0] = ip;
        1
    };
    barrier();
    // SAFETY: as above.
    unsafe { core::ptr::write_volatile(&raw mut write.seq, (seq | 1).wrapping_add(1)) };
    Some(())
}

/// Whether `recent`'s map is shared, setting the mark when the ring names
/// a goroutine other than `g`.
fn mark_shared(recent: &mut RecentWriters, g: u64) -> bool {
    if recent.shared != 0 {
        return true;
    }
    if recent.g.iter().any(|&other| other != 0 && other != g) {
        recent.shared = 1;
        return true;
    }
    false
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

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
