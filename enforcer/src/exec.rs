//! `exec`: run a Go program under enforcement from its first instruction.
//!
//! The probes are attached to the binary's inode before the program exists;
//! a forked child waits on a pipe until its pid is registered in the
//! kernel's process table, then `execve`s (the pid survives exec), so no
//! instruction of the program runs unprobed.
//!
//! Exit status: the program's own, 128+N when signal N ended it, and
//! [`STOPPED_EXIT_STATUS`] when mapguard stopped it (`--mode stop`): the
//! process is then left stopped for inspection and the probes are removed.
//!
//! In stop mode the program runs in a session of its own. Otherwise, when
//! `exec` exits, the kernel finds a stopped process in a process group that
//! has just lost its last link to the shell (an orphaned group, as a job
//! started from an interactive shell becomes) and sends it SIGHUP and
//! SIGCONT: the Go program would resume and die instead of staying halted.
//! SIGINT, SIGTERM, SIGHUP and SIGQUIT sent to `exec` are forwarded to it.

use std::{
    ffi::{CString, OsStr, OsString},
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
    time::Duration,
};

use nix::{
    sys::wait::{WaitPidFlag, WaitStatus, waitpid},
    unistd::{ForkResult, Pid, fork, pipe, read, write},
};

use mapguard_api::{mode::Mode, vocab::Action};

use crate::{
    bpf::session::{Session, SessionError},
    config::ExecArgs,
    host::signals,
};

/// Exit status of `exec` when the program was stopped by mapguard.
pub const STOPPED_EXIT_STATUS: i32 = 128 + libc::SIGSTOP;

/// Why `exec` could not run the program.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("{program}: not found in PATH")]
    NotFound { program: String },
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error("argument contains a NUL byte: {arg:?}")]
    NulInArgument { arg: OsString },
    #[error("cannot {what}: {source}")]
    Sys {
        what: &'static str,
        #[source]
        source: nix::Error,
    },
}

fn sys(what: &'static str) -> impl FnOnce(nix::Error) -> ExecError {
    move |source| ExecError::Sys { what, source }
}

/// Runs the program and returns the exit status `exec` should exit with.
pub fn run(args: &ExecArgs) -> Result<i32, ExecError> {
    let path = resolve(&args.program)?;
    let mut session = Session::start(&args.enforce)?;
    let target = session.binary(&path, None)?;
    tracing::info!(program = %path.display(), go = target.go_version(), "analysed");

    let (exe, argv) = c_args(&path, &args.program, &args.args)?;
    signals::install().map_err(sys("install signal handlers"))?;
    let (ready_rx, ready_tx) = pipe().map_err(sys("create a pipe"))?;
    let own_session = args.policy.mode == Mode::Stop;
    // SAFETY: the child only calls async-signal-safe functions (setsid,
    // read, execv, _exit) before exec.
    let child = match unsafe { fork() }.map_err(sys("fork"))? {
        ForkResult::Child => {
            drop(ready_tx);
            // Cannot fail: a freshly forked child leads no process group.
            if own_session {
                let _ = nix::unistd::setsid();
            }
            let mut byte = [0u8; 1];
            if !matches!(read(&ready_rx, &mut byte), Ok(1)) {
                // SAFETY: leaving the forked child without running destructors.
                unsafe { libc::_exit(127) };
            }
            let _ = nix::unistd::execv(&exe, &argv);
            // SAFETY: as above; exec failed.
            unsafe { libc::_exit(127) };
        }
        ForkResult::Parent { child } => child,
    };
    drop(ready_rx);
    signals::forward_to(child.as_raw());
    let pid = child.as_raw() as u32;
    let guarded = session.guard_process(pid, &target, args.policy.mode, args.policy.coverage);
    if let Err(e) = guarded {
        // Never let the program run unenforced.
        let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
        let _ = waitpid(child, None);
        return Err(e.into());
    }
    write(&ready_tx, &[1]).map_err(sys("release the child"))?;
    drop(ready_tx);

    let status = wait_child(child, args.policy.mode, &mut session)?;
    session.finish();
    Ok(status)
}

/// Waits for the child to exit (or to be stopped by mapguard in stop mode),
/// reporting events as they come.
fn wait_child(child: Pid, mode: Mode, session: &mut Session) -> Result<i32, ExecError> {
    let mut stopped_by_us = false;
    // waitpid reports a stop once: remember it until the child continues,
    // in case mapguard's event is read after the stop is.
    let mut stopped = false;
    loop {
        for record in session.poll(Duration::from_millis(20)) {
            stopped_by_us |= record.action == Action::Stopped;
        }
        signals::take_pending();
        let flags = WaitPidFlag::WNOHANG | WaitPidFlag::WUNTRACED | WaitPidFlag::WCONTINUED;
        match waitpid(child, Some(flags)) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(code),
            Ok(WaitStatus::Signaled(_, signal, _)) => return Ok(128 + signal as i32),
            Ok(WaitStatus::Stopped(_, signal)) => {
                stopped = true;
                for record in session.drain() {
                    stopped_by_us |= record.action == Action::Stopped;
                }
                if !(mode == Mode::Stop && stopped_by_us) {
                    tracing::info!(
                        pid = child.as_raw(),
                        ?signal,
                        "program stopped (not by mapguard); waiting"
                    );
                }
            }
            Ok(WaitStatus::Continued(_)) => stopped = false,
            Ok(_) => {}
            Err(nix::Error::EINTR) => {}
            Err(e) => return Err(sys("wait for the program")(e)),
        }
        if stopped && mode == Mode::Stop && stopped_by_us {
            eprintln!(
                "mapguard: pid {child} is stopped (state T) for inspection; \
                 mapguard's probes are removed. Inspect it with \
                 `cat /proc/{child}/status`, `gdb -p {child}` or `dlv attach {child}`; \
                 resume it with `kill -CONT {child}` or end it with `kill -KILL {child}`."
            );
            return Ok(STOPPED_EXIT_STATUS);
        }
    }
}

/// `PROGRAM` as given if it contains a `/`, else the first executable match
/// in `PATH`.
fn resolve(program: &OsStr) -> Result<PathBuf, ExecError> {
    let not_found = || ExecError::NotFound {
        program: program.to_string_lossy().into_owned(),
    };
    if program.as_bytes().contains(&b'/') {
        let path = PathBuf::from(program);
        return if path.is_file() {
            Ok(path.canonicalize().unwrap_or(path))
        } else {
            Err(not_found())
        };
    }
    let search = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&search)
        .map(|dir| dir.join(program))
        .find(|p| is_executable(p))
        .ok_or_else(not_found)
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The path to exec and its argv (argv[0] as the user gave it).
fn c_args(
    path: &Path,
    program: &OsStr,
    args: &[OsString],
) -> Result<(CString, Vec<CString>), ExecError> {
    let c = |s: &OsStr| {
        CString::new(s.as_bytes()).map_err(|_| ExecError::NulInArgument { arg: s.into() })
    };
    let mut argv = vec![c(program)?];
    for a in args {
        argv.push(c(a)?);
    }
    Ok((c(path.as_os_str())?, argv))
}
