//! `watch`: enforce on already running processes (`--pid`) or on every
//! process of some binaries, including ones started later (`--exe`), until
//! interrupted (or, for `--pid`, until all of them have exited).

use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::Duration,
};

use crate::{
    config::WatchArgs,
    events::Reporter,
    loader::{Enforcer, LoaderError},
    monitor::Monitor,
    output, signals,
    target::{BinaryTarget, TargetError},
};

/// Why `watch` could not start.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("no such process: {pid}")]
    NoProcess { pid: u32 },
    #[error("none of the processes is left to watch")]
    AllGone,
    #[error("{path}: {source}")]
    Target {
        path: PathBuf,
        #[source]
        source: TargetError,
    },
    #[error(transparent)]
    Loader(#[from] LoaderError),
    #[error(transparent)]
    Output(#[from] output::OutputError),
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
    let mode = args.enforce.mode.action();
    let mut enforcer = Enforcer::load(
        args.enforce.probe_program,
        args.enforce.probe_at,
        args.enforce.attach,
    )?;
    let ring = enforcer
        .take_events()
        .expect("a freshly loaded enforcer has its ring buffer");
    let mut reporter = Reporter::new(output::open(&args.enforce.events)?);
    let mut next_id = 0u32;

    for exe in &args.exe {
        let mut target =
            BinaryTarget::analyse(exe, next_id).map_err(|source| WatchError::Target {
                path: exe.clone(),
                source,
            })?;
        enforcer.attach(&mut target, mode)?;
        tracing::info!(exe = %exe.display(), "watching every process of this binary");
        reporter.add_binary(target);
        next_id += 1;
    }

    let mut pids = Vec::new();
    // Binaries by (device, inode): one set of probes per file.
    let mut by_inode: HashMap<(u64, u64), u32> = HashMap::new();
    for &pid in &args.pid {
        match watch_pid(
            pid,
            &mut enforcer,
            &mut reporter,
            &mut by_inode,
            &mut next_id,
            mode,
        ) {
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

    let mut monitor = Monitor::new(ring, reporter);
    let status = loop {
        monitor.wait(Duration::from_millis(100));
        if let Some(signal) = signals::take_pending() {
            break 128 + signal;
        }
        if args.exe.is_empty() {
            pids.retain(|pid| alive(*pid));
            if pids.is_empty() {
                tracing::info!("every watched process has exited");
                break 0;
            }
        }
    };
    monitor.drain();
    enforcer.release();
    if let Err(e) = monitor.reporter.finish() {
        tracing::error!(error = %e, "cannot write the summary");
    }
    Ok(status)
}

/// Attaches to `pid`'s binary (once per inode) and registers the process.
fn watch_pid(
    pid: u32,
    enforcer: &mut Enforcer,
    reporter: &mut Reporter,
    by_inode: &mut HashMap<(u64, u64), u32>,
    next_id: &mut u32,
    mode: u8,
) -> Result<(), WatchError> {
    // /proc/PID/exe reaches the inode even if the file was replaced.
    let exe = PathBuf::from(format!("/proc/{pid}/exe"));
    let meta = exe.metadata().map_err(|_| WatchError::NoProcess { pid })?;
    let key = (meta.dev(), meta.ino());
    let id = match by_inode.get(&key) {
        Some(id) => *id,
        None => {
            let mut target = BinaryTarget::analyse(&exe, *next_id).map_err(|source| {
                if alive(pid) {
                    WatchError::Target {
                        path: exe_name(pid, &exe),
                        source,
                    }
                } else {
                    WatchError::NoProcess { pid }
                }
            })?;
            // Attaching through /proc/PID/exe fails once the process has
            // exited: that is the process being gone, not a loader fault.
            enforcer.attach(&mut target, 0).map_err(|e| {
                if alive(pid) {
                    WatchError::Loader(e)
                } else {
                    WatchError::NoProcess { pid }
                }
            })?;
            reporter.add_binary(target);
            by_inode.insert(key, *next_id);
            *next_id += 1;
            *next_id - 1
        }
    };
    reporter.remember_pod(pid);
    enforcer.register(pid, id, mode)?;
    if !alive(pid) {
        return Err(WatchError::NoProcess { pid });
    }
    tracing::info!(pid, "watching");
    Ok(())
}

/// The binary's real path for messages.
fn exe_name(pid: u32, exe: &Path) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_else(|_| exe.to_path_buf())
}

/// Whether `pid` still exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    })
}
