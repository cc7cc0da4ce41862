//! Emitting a violation and applying the process's action.

use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, generated::bpf_send_signal},
    macros::map,
    maps::{PerCpuArray, RingBuf},
};
use mapguard_common::{Violation, Writer, action, stat};

use crate::{
    program::{Hit, count},
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

/// Emit a violation and apply the process's action. Always inlined: BPF
/// functions take at most five arguments.
#[inline(always)]
pub(crate) fn report(
    hit: &Hit,
    map: u64,
    kind: u8,
    op: u8,
    detected_by: u8,
    message: u8,
    other: Option<&Writer>,
) -> Option<()> {
    let event = SCRATCH.get_ptr_mut(0)?;
    // SAFETY: per-CPU value pointer, valid for this program run.
    let event = unsafe { &mut *event };
    event.kind = kind;
    event.action = hit.mode;
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
    match other {
        Some(other) => {
            event.conflicting_op = other.op;
            event.conflicting_g = other.g;
            // The other goroutine is inside (or just left) its write, so its
            // `runtime.g` still describes it.
            event.conflicting_goid = goid(other.g, hit.cfg.goid_offset);
            if other.depth > 1 {
                for (to, from) in event.conflicting_stack.iter_mut().zip(other.stack) {
                    *to = from;
                }
                event.conflicting_depth = other.depth;
            } else {
                // Not recorded (the map was not shared yet): the other
                // goroutine is inside (or just left) that write, so the
                // frames above it are still in place.
                event.conflicting_depth = walk_stack(
                    other.stack[0],
                    other.sp,
                    other.fp,
                    &mut event.conflicting_stack,
                );
            }
        }
        None => {
            event.conflicting_op = 0;
            event.conflicting_g = 0;
            event.conflicting_goid = 0;
            event.conflicting_depth = 0;
        }
    }
    // SAFETY: context reads at constant offsets.
    let (ip, sp, fp) = unsafe { ((*hit.regs).rip, (*hit.regs).rsp, (*hit.regs).rbp) };
    event.depth = walk_stack(ip, sp, fp, &mut event.stack);
    if EVENTS.output::<Violation>(&*event, 0).is_err() {
        count(stat::EVENT_LOST);
    }
    let signal = match hit.mode {
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
