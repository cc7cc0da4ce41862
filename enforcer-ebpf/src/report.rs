//! Emitting a violation and applying the process's action.

use core::ptr::read_volatile;

use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, generated::bpf_send_signal},
    macros::map,
    maps::{PerCpuArray, RingBuf},
};
use mapguard_common::{Violation, WRITER_FRAMES, Writer, action, stat};

use crate::{
    process::acting_mode,
    program::{Hit, barrier, count},
    regs::read_u64,
    stack::walk_stack,
};

const SIGKILL: u32 = 9;
const SIGSTOP: u32 = 19;

#[map(name = "MG_EVENTS")]
static EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

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

/// Emit a violation of the kind `kind` gives for the other goroutine's
/// write (`None`: none on record) and apply the process's action.
/// The tuple is the detector and, for a crash path, the message class.
/// Always inlined: BPF functions take at most five arguments.
#[inline(always)]
pub(crate) fn report(
    hit: &Hit,
    map: u64,
    op: u8,
    (detected_by, message): (u8, u8),
    other: Option<*const Writer>,
    kind: impl FnOnce(Option<Other>) -> u8,
) -> Option<()> {
    let event = SCRATCH.get_ptr_mut(0)?;
    // SAFETY: per-CPU value pointer, valid for this program run.
    let event = unsafe { &mut *event };
    let other = other.map(|other| copy_other(event, other, hit.cfg.goid_offset));
    // The kind before the zeroing below: in the other order LLVM 22 read
    // R1 after the `memset` call it made of the zeroing, and the verifier
    // refused the program.
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
    // last, so that nothing is kept across the calls above (the stack of
    // the deepest chain is near its bound).
    let mode = acting_mode(hit)?;
    event.action = mode;
    if EVENTS.output::<Violation>(&*event, 0).is_err() {
        count(stat::EVENT_LOST);
    }
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
