//! Child processes of the control plane: started with their output in a log
//! file, stopped with SIGTERM and, after a bound, SIGKILL.
//!
//! Each child gets `PR_SET_PDEATHSIG=SIGKILL`, so a test process that dies
//! without unwinding (aborted, killed) does not leave an API server behind.
//! The kernel sends that signal when the *thread* that forked the child
//! exits, not the process; so every child is forked by one spawner thread
//! that lives as long as the test process, never by a test's own thread
//! (the harness ends those after each test, and a tokio runtime ends its
//! blocking threads when idle).

use std::ffi::OsString;
use std::fs::File;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::TestEnvError;

type SpawnRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

/// Forks `command` on the spawner thread.
fn spawn_on_spawner(command: Command) -> std::io::Result<Child> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("testenv-spawner".to_owned())
            .spawn(move || {
                for (mut command, reply) in rx {
                    let _ = reply.send(command.spawn());
                }
            })
            .expect("start the testenv spawner thread");
        Mutex::new(tx)
    });
    let (reply, answer) = mpsc::channel();
    spawner
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((command, reply))
        .map_err(|_| std::io::Error::other("testenv spawner thread is gone"))?;
    answer
        .recv()
        .map_err(|_| std::io::Error::other("testenv spawner thread is gone"))?
}

/// A running child whose stdout and stderr go to a log file.
#[derive(Debug)]
pub struct Process {
    name: &'static str,
    child: Child,
    log: PathBuf,
    status: Option<ExitStatus>,
}

impl Process {
    /// Starts `program` with `args`, output appended to `log`.
    pub fn spawn(
        name: &'static str,
        program: &Path,
        args: &[OsString],
        log: &Path,
    ) -> Result<Self, TestEnvError> {
        let io = |source| TestEnvError::Io {
            what: "create the log file",
            path: log.to_owned(),
            source,
        };
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .map_err(io)?;
        let err = out.try_clone().map_err(io)?;
        let mut command = Command::new(program);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        // SAFETY: prctl is async-signal-safe and touches no memory of ours.
        unsafe {
            command.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)
            });
        }
        let child = spawn_on_spawner(command).map_err(|source| TestEnvError::Spawn {
            program: program.to_owned(),
            source,
        })?;
        Ok(Self {
            name,
            child,
            log: log.to_owned(),
            status: None,
        })
    }

    /// Short name (`etcd`, `kube-apiserver`).
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The log file.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// The exit status if the process has ended (reaps it).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }

    /// SIGTERM, then SIGKILL if still running after `grace`; waits for the
    /// exit (`None` only if waiting itself failed). Signals only a child not
    /// yet reaped, so never a reused pid.
    pub fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        if let Some(status) = self.exited() {
            return Some(status);
        }
        let pid = Pid::from_raw(self.child.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(status) = self.exited() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = kill(pid, Signal::SIGKILL);
        // Called from Drop, maybe while unwinding: no panic here.
        self.status = self.child.wait().ok();
        self.status
    }
}

impl Drop for Process {
    /// Stops the child if nobody did (a start that failed half-way).
    fn drop(&mut self) {
        self.stop(DROP_GRACE);
    }
}

/// Grace period of a child stopped by drop.
const DROP_GRACE: Duration = Duration::from_secs(5);

/// The last `lines` lines of the file at `path` (reads at most its last 64 KiB).
pub fn tail(path: &Path, lines: usize) -> String {
    let Ok(mut file) = File::open(path) else {
        return format!("(no log at {})", path.display());
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
    let mut bytes = Vec::new();
    let _ = file.read_to_end(&mut bytes);
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A port on 127.0.0.1 that was free a moment ago. Another process may take
/// it before the child binds it; the caller retries when the child reports
/// the address in use.
pub fn free_port() -> Result<u16, TestEnvError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|source| TestEnvError::Io {
            what: "find a free port",
            path: PathBuf::from("127.0.0.1:0"),
            source,
        })
}
