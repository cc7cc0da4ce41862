//! Emitting a violation and applying the process's action. Reports are
//! limited per cgroup (a Pod's, where the exec hook knows it) before they
//! reach the node's one ring buffer, so that one Pod racing in a tight
//! loop cannot fill it and hide another Pod's race; what each cgroup
//! dropped and lost is counted for user space ([`CGROUP_DROPS`]).

use core::ptr::read_volatile;

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{
        bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id, bpf_ktime_get_ns,
        generated::bpf_send_signal,
    },
    macros::map,
    maps::{Array, LruHashMap, LruPerCpuHashMap, PerCpuArray, RingBuf},
};
use mapguard_common::{
    CgroupDrops, EventLimit, MAX_CGROUP_LEVELS, MAX_EVENT_CGROUPS, Violation, WRITER_FRAMES,
    Writer, action, cgroup_kind, stat,
};

use crate::{
    exec::CGROUPS,
    process::acting_mode,
    program::{Hit, barrier, count},
    regs::read_u64,
    stack::walk_stack,
};

const SIGKILL: u32 = 9;
const SIGSTOP: u32 = 19;

#[map(name = "MG_EVENTS")]
static EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

#[map(name = "MG_EVENT_LIMIT")]
static EVENT_LIMIT: Array<EventLimit> = Array::with_max_entries(1, 0);

/// Each cgroup's token bucket: when it is full again.
#[map(name = "MG_EVENT_BUCKETS")]
static EVENT_BUCKETS: LruHashMap<u64, u64> = LruHashMap::with_max_entries(MAX_EVENT_CGROUPS, 0);

/// Per CPU: no lost count between CPUs counting at once.
#[map(name = "MG_CGROUP_DROPS")]
static CGROUP_DROPS: LruPerCpuHashMap<u64, CgroupDrops> =
    LruPerCpuHashMap::with_max_entries(MAX_EVENT_CGROUPS, 0);

/// Index 0: the violation being assembled. Never larger than one entry.
#[map(name = "MG_SCRATCH")]
static SCRATCH: PerCpuArray<Violation> = PerCpuArray::with_max_entries(1, 0);

/// Goroutine id of the `runtime.g` at `g` (one user-memory read: only for
/// reports).
fn goid(g: u64, goid_offset: u32) -> u64 {
    read_u64(g.wrapping_add(u64::from(goid_offset))).unwrap_or(0)
}

/// What a report's kind depends on of the other goroutine's write, taken
/// from the same copy as the rest of its side of the report.
#[derive(Clone, Copy)]
pub(crate) struct Other {
    pub(crate) op: u8,
    pub(crate) growing: bool,
}

/// Attempts at a consistent copy of another goroutine's record: it is
/// rewritten once per write (about a microsecond apart under probes), the
/// copy takes tens of nanoseconds.
const COPY_TRIES: usize = 3;

/// Copy the other goroutine's latest write into `event` (its goroutine,
/// operation and stack) as one consistent version of the record: its
/// goroutine may be rewriting it for its next write right now, and a kind
/// taken from one write with the stack of the next would contradict
/// itself. The last copy is kept if every try met a rewrite.
fn copy_other(event: &mut Violation, other: *const Writer, goid_offset: u32) -> Other {
    let mut taken = Other {
        op: 0,
        growing: false,
    };
    let (mut depth, mut sp, mut fp) = (0, 0, 0);
    for _ in 0..COPY_TRIES {
        // SAFETY: `other` points into a map value, valid for this program
        // run; volatile: another CPU may be writing it.
        unsafe {
            let before = read_volatile(&raw const (*other).seq);
            barrier();
            taken = Other {
                op: read_volatile(&raw const (*other).op),
                growing: read_volatile(&raw const (*other).growing) != 0,
            };
            event.conflicting_g = read_volatile(&raw const (*other).g);
            depth = read_volatile(&raw const (*other).depth);
            sp = read_volatile(&raw const (*other).sp);
            fp = read_volatile(&raw const (*other).fp);
            for (i, to) in event.conflicting_stack.iter_mut().enumerate() {
                if i < WRITER_FRAMES {
                    *to = read_volatile(&raw const (*other).stack[i]);
                }
            }
            barrier();
            let after = read_volatile(&raw const (*other).seq);
            if before == after && before & 1 == 0 {
                break;
            }
        }
    }
    event.conflicting_op = taken.op;
    // The other goroutine is inside (or just left) its write, so its
    // `runtime.g` still describes it.
    event.conflicting_goid = goid(event.conflicting_g, goid_offset);
    event.conflicting_depth = if depth > 1 {
        depth
    } else {
        // Not recorded (the map was not shared yet): the other goroutine
        // is inside (or just left) that write, so the frames above it are
        // still in place.
        walk_stack(
            event.conflicting_stack[0],
            sp,
            fp,
            &mut event.conflicting_stack,
        )
    };
    taken
}

/// The cgroup a report counts against: its Pod's cgroup where
/// [`CGROUPS`] names one among the current task's ancestors (the deepest),
/// else the task's own cgroup.
#[inline(never)]
fn reporting_cgroup() -> u64 {
    // SAFETY: the helpers only read the current task's cgroup.
    let mut key = unsafe { bpf_get_current_cgroup_id() };
    let mut level = 0;
    while level < MAX_CGROUP_LEVELS {
        // SAFETY: as above.
        let id = unsafe { bpf_get_current_ancestor_cgroup_id(level as i32) };
        if id == 0 {
            break;
        }
        // SAFETY: plain data.
        if unsafe { CGROUPS.get(&id) }.is_some_and(|p| p.kind == cgroup_kind::POD) {
            key = id;
        }
        level += 1;
    }
    key
}

/// Whether `cgroup` may report at `now` under a limit of one report per
/// `interval` ns on average, `burst / interval` of them at once (see
/// `EventLimit`). Unsynchronized: reports
/// of one cgroup on several CPUs at once may let a few more through, never
/// fewer. Never inlined (nor the other helpers here): their stack must not
/// add to the deepest call chain's, which the verifier bounds to 512 bytes.
#[inline(never)]
fn admit(cgroup: u64, now: u64, interval: u64, burst: u64) -> bool {
    let bucket = match EVENT_BUCKETS.get_ptr_mut(&cgroup) {
        Some(bucket) => bucket,
        None => {
            let _ = EVENT_BUCKETS.insert(&cgroup, &0, u64::from(BPF_NOEXIST));
            match EVENT_BUCKETS.get_ptr_mut(&cgroup) {
                Some(bucket) => bucket,
                None => return true,
            }
        }
    };
    // SAFETY: map value pointer, valid for this program run.
    unsafe {
        let tat = read_volatile(bucket).max(now) + interval;
        if tat - now > burst {
            return false;
        }
        *bucket = tat;
    }
    true
}

/// Whether the current task's cgroup may report now; counts a refusal.
/// Takes and keeps nothing: no value of its own stays live across the
/// report's assembly (the deepest call chain's stack is at its bound).
#[inline(never)]
fn admitted() -> bool {
    let Some(limit) = EVENT_LIMIT.get(0) else {
        return true;
    };
    let (interval, burst) = (limit.interval_ns, limit.burst_ns);
    if interval == 0 {
        return true;
    }
    let cgroup = reporting_cgroup();
    // SAFETY: no arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    if admit(cgroup, now, interval, burst) {
        return true;
    }
    count_drop(cgroup, true);
    false
}

/// Counts a report of `cgroup` dropped by the limit or lost to a full ring
/// buffer.
#[inline(never)]
fn count_drop(cgroup: u64, limited: bool) {
    let counts = match CGROUP_DROPS.get_ptr_mut(&cgroup) {
        Some(counts) => counts,
        None => {
            let _ = CGROUP_DROPS.insert(&cgroup, &CgroupDrops::default(), u64::from(BPF_NOEXIST));
            match CGROUP_DROPS.get_ptr_mut(&cgroup) {
                Some(counts) => counts,
                None => return,
            }
        }
    };
    // SAFETY: per-CPU value pointer, valid for this program run.
    unsafe {
        if limited {
            (*counts).limited += 1;
        } else {
            (*counts).lost += 1;
        }
    }
}

/// Emit a violation of the kind `kind` gives for the other goroutine's
/// write (`None`: none on record), unless its cgroup is over its limit
/// ([`EVENT_LIMIT`]), and apply the process's action. The tuple is the
/// detector and, for a crash path, the message class. Always inlined: BPF
/// functions take at most five arguments.
#[inline(always)]
pub(crate) fn report(
    hit: &Hit,
    map: u64,
    op: u8,
    (detected_by, message): (u8, u8),
    other: Option<*const Writer>,
    kind: impl FnOnce(Option<Other>) -> u8,
) -> Option<()> {
    // Over its cgroup's limit, the report is dropped before it is put
    // together (the stack walks are most of its cost); the action is taken
    // all the same.
    let mode = if admitted() {
        let event = SCRATCH.get_ptr_mut(0)?;
        // SAFETY: per-CPU value pointer, valid for this program run.
        let event = unsafe { &mut *event };
        let other = other.map(|other| copy_other(event, other, hit.cfg.goid_offset));
        // The kind before the zeroing below: in the other order LLVM 22
        // read R1 after the `memset` call it made of the zeroing, and the
        // verifier refused the program.
        event.kind = kind(other);
        if other.is_none() {
            event.conflicting_op = 0;
            event.conflicting_g = 0;
            event.conflicting_goid = 0;
            event.conflicting_depth = 0;
        }
        event.detected_by = detected_by;
        event.message = message;
        event.op = op;
        event.pid = hit.pid;
        event.tid = hit.tid;
        event.binary_id = hit.cfg.binary_id;
        event.point = hit.cfg.point;
        // SAFETY: no arguments.
        event.ts = unsafe { bpf_ktime_get_ns() };
        event.map = map;
        event.g = hit.g;
        event.goid = goid(hit.g, hit.cfg.goid_offset);
        // SAFETY: context reads at constant offsets.
        let (ip, sp, fp) = unsafe { ((*hit.regs).rip, (*hit.regs).rsp, (*hit.regs).rbp) };
        event.depth = walk_stack(ip, sp, fp, &mut event.stack);
        // None: the entry of a process gone, whose pid this one got. Asked
        // last, so that nothing is kept across the calls above (the stack
        // of the deepest chain is near its bound).
        let mode = acting_mode(hit)?;
        event.action = mode;
        if EVENTS.output::<Violation>(&*event, 0).is_err() {
            count(stat::EVENT_LOST);
            count_drop(reporting_cgroup(), false);
        }
        mode
    } else {
        acting_mode(hit)?
    };
    let signal = match mode {
        action::STOP => SIGSTOP,
        action::KILL => SIGKILL,
        _ => return Some(()),
    };
    // SAFETY: signals the current process (all threads), delivered before
    // the probed instruction runs in user space.
    if unsafe { bpf_send_signal(signal) } != 0 {
        count(stat::SIGNAL_FAILED);
    }
    Some(())
}
