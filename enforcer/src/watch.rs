//! `watch`: enforce on already running processes (`--pid`) or on every
//! process of some binaries, including ones started later (`--exe`), until
//! interrupted (or, for `--pid`, until all of them have exited).

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use mapguard_api::mode::{Coverage, Mode};

use crate::{
    bpf::session::{Session, SessionError},
    config::WatchArgs,
    host::procfs::alive,
    host::signals,
};

/// Why `watch` could not start.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("no such process: {pid}")]
    NoProcess { pid: u32 },
    #[error("none of the processes is left to watch")]
    AllGone,
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error("cannot install signal handlers: {0}")]
    Signals(#[source] nix::Error),
}

/// Runs until interrupted; returns the exit status (0, or 128+N after
/// signal N).
pub fn run(args: &WatchArgs) -> Result<i32, WatchError> {
    signals::install().map_err(WatchError::Signals)?;
    // Fail fast (before loading anything) when no given process exists.
    if !args.pid.is_empty()
        && let Some(first) = args.pid.first()
        && !args.pid.iter().any(|pid| alive(*pid))
    {
        return Err(if args.pid.len() == 1 {
            WatchError::NoProcess { pid: *first }
        } else {
            WatchError::AllGone
        });
    }
    let mode = args.policy.mode;
    let coverage = args.policy.coverage;
    let mut session = Session::start(&args.enforce)?;

    for exe in &args.exe {
        let target = session.binary(exe, Some(mode))?;
        session.guard_binary(&target, mode, coverage)?;
        tracing::info!(exe = %exe.display(), "watching every process of this binary");
    }

    let mut pids = Vec::new();
    for &pid in &args.pid {
        match watch_pid(pid, &mut session, mode, coverage) {
            Ok(()) => pids.push(pid),
            Err(WatchError::NoProcess { pid }) if args.pid.len() > 1 => {
                tracing::warn!(pid, "process is gone; not watching it");
            }
            Err(e) => return Err(e),
        }
    }
    if !args.pid.is_empty() && pids.is_empty() {
        return Err(WatchError::AllGone);
    }

    let status = loop {
        session.poll(Duration::from_millis(100));
        if let Some(signal) = signals::take_pending() {
            break 128 + signal;
        }
        if args.exe.is_empty() {
            let (live, gone): (Vec<u32>, Vec<u32>) = pids.iter().partition(|pid| alive(**pid));
            for pid in gone {
                session.forget_process(pid);
            }
            pids = live;
            if pids.is_empty() {
                tracing::info!("every watched process has exited");
                break 0;
            }
        }
    };
    session.finish();
    Ok(status)
}

/// Analyses `pid`'s binary (once per file) and puts the process under
/// enforcement.
fn watch_pid(
    pid: u32,
    session: &mut Session,
    mode: Mode,
    coverage: Coverage,
) -> Result<(), WatchError> {
    // /proc/PID/exe reaches the inode even if the file was replaced.
    let exe = PathBuf::from(format!("/proc/{pid}/exe"));
    if !alive(pid) {
        return Err(WatchError::NoProcess { pid });
    }
    // A failure once the process has exited is the process being gone
    // (attaching through /proc/PID/exe fails then), not a fault.
    let gone_or = |e: SessionError| {
        if alive(pid) {
            WatchError::Session(e)
        } else {
            WatchError::NoProcess { pid }
        }
    };
    // Keyed by the file the kernel probes: processes of one image in
    // several containers share one analysis.
    let opened = crate::host::procfs::open_exe(Path::new("/proc"), pid)
        .ok_or(WatchError::NoProcess { pid })?;
    let target = session
        .binary_opened(&exe, opened.file, opened.id, None)
        .map_err(|e| match e {
            SessionError::Target { .. } if alive(pid) => WatchError::Session(e),
            e => gone_or(e),
        })?;
    session
        .guard_process(pid, &target, mode, coverage)
        .map_err(gone_or)?;
    if !alive(pid) {
        return Err(WatchError::NoProcess { pid });
    }
    tracing::info!(pid, "watching");
    Ok(())
}
