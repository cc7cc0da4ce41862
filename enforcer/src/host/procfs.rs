//! What `/proc` says about a process: whether it is alive, its CPU time,
//! the file it runs (and, through overlayfs, the file the kernel probes).

mod real_file;

pub use real_file::{OpenedExe, open_exe, real_file_id};

use std::{os::unix::fs::MetadataExt as _, time::Duration};

/// Fields of `/proc/PID/stat` after the command name (`state` is field 0).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// Whether `pid` still exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    stat_fields(pid)
        .and_then(|f| f.first().cloned())
        .is_some_and(|state| state != "Z" && state != "X")
}

/// The state letter of `pid` (`R`, `S`, `T` stopped, `Z`...).
pub fn state(pid: u32) -> Option<char> {
    stat_fields(pid)?.first()?.chars().next()
}

/// User plus system CPU time `pid` has used (all its threads).
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let fields = stat_fields(pid)?;
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12
    // after the state.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let per_second = u64::try_from(per_second).ok().filter(|t| *t > 0)?;
    Some(Duration::from_nanos(ticks * 1_000_000_000 / per_second))
}

/// Clock ticks per second of `/proc`'s times (`USER_HZ`).
pub fn ticks_per_second() -> Option<u64> {
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(per_second).ok().filter(|t| *t > 0)
}

/// When `pid` started, in clock ticks since boot (field 22 of its stat):
/// with the pid, a process's identity.
pub fn start_time(pid: u32) -> Option<u64> {
    stat_fields(pid)?.get(19)?.parse().ok()
}

/// Whether `pid` is a live process that started no later than `boot_ns`
/// (`CLOCK_BOOTTIME` nanoseconds): the process seen then, not a later one
/// given the same pid. Its start time is kept in clock ticks, rounded
/// down, so the process seen then always passes.
pub fn started_by(pid: u32, boot_ns: u64) -> bool {
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let Some(per_second) = u64::try_from(per_second).ok().filter(|t| *t > 0) else {
        return false;
    };
    alive(pid)
        && start_time(pid).is_some_and(|ticks| ticks * (1_000_000_000 / per_second) <= boot_ns)
}

/// `CLOCK_BOOTTIME` now, in nanoseconds (the clock of
/// `bpf_ktime_get_boot_ns` and of processes' start times).
pub fn boot_ns() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes one timespec we own.
    if unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut t) } != 0 {
        return 0;
    }
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// `(device, inode)` of the file a process runs, or of a path.
pub fn file_id(path: &std::path::Path) -> Option<(u64, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.dev(), meta.ino()))
}

/// `(device, inode)` of the file `path` (relative to `dir`) names, from
/// what the kernel holds in memory (`statx` with `AT_STATX_DONT_SYNC`): a
/// filesystem that does not answer — a dead network mount, a FUSE server
/// that never replies — is not asked. A magic link (`PID/exe`) leads
/// straight to the file, without a lookup on its filesystem.
pub fn cached_file_id(
    dir: std::os::fd::BorrowedFd<'_>,
    path: &std::ffi::CStr,
) -> Result<(u64, u64), nix::errno::Errno> {
    use std::os::fd::AsRawFd as _;
    let mut stx = std::mem::MaybeUninit::<libc::statx>::zeroed();
    // SAFETY: a NUL-terminated path and a statx buffer of our own.
    let rc = unsafe {
        libc::statx(
            dir.as_raw_fd(),
            path.as_ptr(),
            libc::AT_STATX_DONT_SYNC,
            libc::STATX_INO,
            stx.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return Err(nix::errno::Errno::last());
    }
    // SAFETY: filled by a successful statx.
    let stx = unsafe { stx.assume_init() };
    Ok((
        libc::makedev(stx.stx_dev_major, stx.stx_dev_minor),
        stx.stx_ino,
    ))
}

/// [`cached_file_id`] of `PID/exe` under `proc_root`.
pub fn cached_exe_id(proc_root: &std::path::Path, pid: u32) -> Option<(u64, u64)> {
    let path = std::ffi::CString::new(format!("{}/{pid}/exe", proc_root.display())).ok()?;
    // SAFETY: AT_FDCWD is valid for the whole call.
    let cwd = unsafe { std::os::fd::BorrowedFd::borrow_raw(libc::AT_FDCWD) };
    cached_file_id(cwd, &path).ok()
}

/// Every live process running the file `(device, inode)`.
pub fn pids_running(file: (u64, u64)) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| file_id(std::path::Path::new(&format!("/proc/{pid}/exe"))) == Some(file))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_uses_cpu() {
        let me = std::process::id();
        assert!(alive(me));
        // The main thread's state: running, or waiting for the test's.
        assert!(matches!(state(me), Some('R' | 'S')), "{:?}", state(me));
        let spent = cpu_time(me).expect("own CPU time");
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < Duration::from_millis(100) {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        assert!(cpu_time(me).expect("again") > spent, "CPU time grows");
        assert!(start_time(me).is_some_and(|t| t > 0));
        assert!(started_by(me, boot_ns()), "started before now");
        assert!(!started_by(me, 1), "not before boot");
        let exe = file_id(std::path::Path::new("/proc/self/exe")).expect("own exe");
        assert!(pids_running(exe).contains(&me));
    }
}
