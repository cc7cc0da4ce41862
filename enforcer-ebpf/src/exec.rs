//! The exec hook (`sched_process_exec` raw tracepoint, loaded by the node
//! agent only): a process that starts in a Pod's cgroup is put under
//! enforcement before its first instruction.
//!
//! Runs in the exec'ing task once the new image is in place. The process's
//! cgroup (v2 id) and its ancestors are looked up in [`CGROUPS`], deepest
//! first wins:
//! - a resolved Pod with a mode and below its per-Pod bounds, running a
//!   file user space knows as a Go binary whose probes are in place for
//!   every process of the file: the
//!   hook writes the process-table entry itself ([`PROCS`]) and tells user
//!   space (the breakpoints of inode-wide probes are in the new image
//!   already);
//! - a file known not to be Go (`/pause`, shells): nothing;
//! - anything else in a Pod with a mode, or below a `kubepods` root in a
//!   Pod not resolved yet: the process is held, `bpf_send_signal(SIGSTOP)`
//!   (delivered on its return to user space from execve, so before its
//!   first instruction), recorded in [`HELD`] and announced through
//!   [`EXECS`]; user space analyses, attaches, registers and sends SIGCONT.
//!
//! The file is named by its inode number and its superblock's device,
//! read through the `linux_binprm` at the struct offsets user space took
//! from the kernel's BTF ([`EXEC_CONFIG`]).

use aya_ebpf::{
    helpers::{
        bpf_get_current_ancestor_cgroup_id, bpf_get_current_pid_tgid, bpf_ktime_get_boot_ns,
        bpf_probe_read_kernel, bpf_send_signal,
    },
    macros::{map, raw_tracepoint},
    maps::{Array, HashMap, LruHashMap, RingBuf},
    programs::RawTracePointContext,
};
use mapguard_common::{
    CgroupPolicy, ExecConfig, ExecEvent, FileKey, Hold, KnownFile, MAX_CGROUP_LEVELS, MAX_CGROUPS,
    MAX_FILES, MAX_HELD, ProcConfig, cgroup_kind, exec_what, file_kind, shared_ops,
};

use crate::{process::current_start, program::PROCS};

#[map(name = "MG_CGROUPS")]
pub(crate) static CGROUPS: HashMap<u64, CgroupPolicy> = HashMap::with_max_entries(MAX_CGROUPS, 0);

/// Least recently used entries go first: every container start names its
/// file by an overlay inode of its own, so the table would otherwise only
/// grow; an evicted file costs its next process one hold.
#[map(name = "MG_FILES")]
static FILES: LruHashMap<FileKey, KnownFile> = LruHashMap::with_max_entries(MAX_FILES, 0);

#[map(name = "MG_HELD")]
static HELD: HashMap<u32, Hold> = HashMap::with_max_entries(MAX_HELD, 0);

#[map(name = "MG_EXECS")]
static EXECS: RingBuf = RingBuf::with_byte_size(64 * 1024, 0);

#[map(name = "MG_EXEC_CONFIG")]
static EXEC_CONFIG: Array<ExecConfig> = Array::with_max_entries(1, 0);

/// SIGSTOP on Linux.
const SIGSTOP: u32 = 19;

#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn mapguard_exec(ctx: RawTracePointContext) -> i32 {
    let _ = try_exec(&ctx);
    0
}

fn try_exec(ctx: &RawTracePointContext) -> Option<()> {
    let cfg = *EXEC_CONFIG.get(0)?;
    if cfg.enabled == 0 {
        return None;
    }
    let (cgroup, policy) = watched_cgroup()?;
    let pid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // The entry of the image this process ran before (if any) goes with it.
    let _ = PROCS.remove(&pid);
    if policy.kind == cgroup_kind::POD && policy.mode == 0 {
        return Some(());
    }
    // TP_PROTO(struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
    let bprm: u64 = ctx.arg(2);
    // Unreadable: a zero key, which user space never marks known (held).
    let file = file_key(bprm, &cfg).unwrap_or_default();
    // SAFETY: no arguments.
    let boot_ns = unsafe { bpf_ktime_get_boot_ns() };
    let mut event = ExecEvent {
        pid,
        boot_ns,
        cgroup,
        file,
        ..ExecEvent::default()
    };
    // SAFETY: plain data.
    let known = unsafe { FILES.get(&file) }.copied();
    if let Some(known) = known {
        if known.kind == file_kind::NOT_ENFORCEABLE {
            if policy.kind == cgroup_kind::KUBEPODS {
                event.what = exec_what::UNRESOLVED;
                let _ = EXECS.output::<ExecEvent>(&event, 0);
            }
            return Some(());
        }
        let covered = policy.shared_ops == shared_ops::NONE || known.shared_map_ops != 0;
        if known.kind == file_kind::GO
            && policy.kind == cgroup_kind::POD
            && policy.at_limit == 0
            && covered
        {
            let entry = ProcConfig {
                mode: policy.mode,
                shared_ops: policy.shared_ops,
                _pad: [0; 2],
                binary_id: known.binary_id,
                // The exec'ing task leads its process once exec is done.
                start: current_start().unwrap_or(0),
            };
            if PROCS.insert(&pid, &entry, 0).is_ok() {
                event.what = exec_what::ENFORCED;
                event.mode = policy.mode;
                event.binary_id = known.binary_id;
                let _ = EXECS.output::<ExecEvent>(&event, 0);
                return Some(());
            }
        }
    }
    hold(event)
}

/// Stops the exec'ing process and records it.
fn hold(mut event: ExecEvent) -> Option<()> {
    let record = Hold {
        boot_ns: event.boot_ns,
        cgroup: event.cgroup,
        file: event.file,
    };
    // Recorded first: a hold is never made that a restarted agent could
    // not find. A full table holds nothing.
    event.what = if HELD.insert(&event.pid, &record, 0).is_err() {
        exec_what::HOLD_FAILED
    } else {
        // SAFETY: signals the current task's process.
        if unsafe { bpf_send_signal(SIGSTOP) } == 0 {
            exec_what::HELD
        } else {
            let _ = HELD.remove(&event.pid);
            exec_what::HOLD_FAILED
        }
    };
    // Lost (ring full): user space also sweeps the table of holds.
    let _ = EXECS.output::<ExecEvent>(&event, 0);
    Some(())
}

/// The deepest of the current task's cgroups (v2) that [`CGROUPS`] names.
fn watched_cgroup() -> Option<(u64, CgroupPolicy)> {
    let mut found = None;
    let mut level = 0;
    while level < MAX_CGROUP_LEVELS {
        // SAFETY: the helper only reads the current task's cgroup.
        let id = unsafe { bpf_get_current_ancestor_cgroup_id(level as i32) };
        if id == 0 {
            break;
        }
        // SAFETY: plain data.
        if let Some(policy) = unsafe { CGROUPS.get(&id) } {
            found = Some((id, *policy));
        }
        level += 1;
    }
    found
}

/// `bprm->file->f_inode`'s inode number and `->i_sb->s_dev`.
fn file_key(bprm: u64, cfg: &ExecConfig) -> Option<FileKey> {
    let file = read_u64(bprm + cfg.bprm_file as u64)?;
    let inode = read_u64(file + cfg.file_inode as u64)?;
    let ino = read_u64(inode + cfg.inode_ino as u64)?;
    let sb = read_u64(inode + cfg.inode_sb as u64)?;
    // SAFETY: bpf_probe_read_kernel faults safely on bad addresses.
    let dev = unsafe { bpf_probe_read_kernel((sb + cfg.sb_dev as u64) as *const u32) }.ok()?;
    Some(FileKey { ino, dev, _pad: 0 })
}

fn read_u64(addr: u64) -> Option<u64> {
    // SAFETY: bpf_probe_read_kernel faults safely on bad addresses.
    unsafe { bpf_probe_read_kernel(addr as *const u64) }.ok()
}
