//! What the kernel side knows of a process beyond its pid: when it
//! started (pids are reused: a process-table entry is for the process
//! that started then) and whether a probe stopped it; both are settled
//! when a probe reports ([`acting_mode`]).

use aya_ebpf::{
    helpers::{bpf_ktime_get_boot_ns, bpf_probe_read_kernel, generated::bpf_get_current_task},
    macros::map,
    maps::{Array, HashMap},
};
use mapguard_common::{MAX_STOPPED, NS_PER_CLOCK_TICK, Stop, TaskConfig, action, stat};

use crate::program::{Hit, PROCS, count};

#[map(name = "MG_TASK_CONFIG")]
static TASK_CONFIG: Array<TaskConfig> = Array::with_max_entries(1, 0);

#[map(name = "MG_STOPPED")]
static STOPPED: HashMap<u32, Stop> = HashMap::with_max_entries(MAX_STOPPED, 0);

/// When the current process started, in clock ticks since boot (its
/// thread group leader's `start_boottime`, as `/proc/PID/stat` gives it);
/// `None` when user space gave no offsets or the task is unreadable.
pub(crate) fn current_start() -> Option<u64> {
    let cfg = TASK_CONFIG.get(0)?;
    if cfg.start_boottime == 0 {
        return None;
    }
    // SAFETY: no arguments.
    let task = unsafe { bpf_get_current_task() };
    let leader = read_kernel(task + u64::from(cfg.group_leader))?;
    let started = read_kernel(leader + u64::from(cfg.start_boottime))?;
    Some(started / NS_PER_CLOCK_TICK)
}

/// The action a report of `hit` takes: `None` when its mode came from a
/// process-table entry (a probe shared by every process of a binary)
/// written for another process that had the same pid (not known until
/// user space registers it: no report). A stop is recorded here before
/// it is made, or not made (the action is then `audit`). Only for reports: the hot path pays nothing. Not inlined: a
/// report's call chain (map_op → on_crash → copy_other → walk_stack)
/// comes close to the BPF stack's 512 bytes, and this function's frame
/// sits beside it, not on top of it.
#[inline(never)]
pub(crate) fn acting_mode(hit: &Hit) -> Option<u8> {
    let (pid, mode) = (hit.pid, hit.mode);
    if hit.cfg.mode == 0 {
        // SAFETY: plain data.
        let own = unsafe { PROCS.get(&pid) }?;
        if !is_current(own.start) {
            return None;
        }
    }
    if mode == action::STOP && !record_stop(pid) {
        count(stat::SIGNAL_FAILED);
        return Some(action::AUDIT);
    }
    Some(mode)
}

/// Whether the current process is the one a process-table entry with
/// start time `start` was written for (0: not recorded; no offsets or an
/// unreadable task: taken as it, as before start times were kept).
#[inline(always)]
fn is_current(start: u64) -> bool {
    start == 0 || current_start().is_none_or(|now| now == start)
}

/// Records that process `pid` is being stopped now, where user space
/// applies deadlines to stops; false when the table is full (the stop
/// must then not be made: nobody could find it to apply its deadline).
#[inline(always)]
fn record_stop(pid: u32) -> bool {
    if TASK_CONFIG.get(0).is_none_or(|cfg| cfg.record_stops == 0) {
        return true;
    }
    // SAFETY: no arguments.
    let stop = Stop {
        boot_ns: unsafe { bpf_ktime_get_boot_ns() },
    };
    STOPPED.insert(&pid, &stop, 0).is_ok()
}

/// Inlined: a report's calls already come close to the BPF stack's 512
/// bytes (the frames of a call chain add up).
#[inline(always)]
fn read_kernel(addr: u64) -> Option<u64> {
    // SAFETY: bpf_probe_read_kernel faults safely on bad addresses.
    unsafe { bpf_probe_read_kernel(addr as *const u64) }.ok()
}
