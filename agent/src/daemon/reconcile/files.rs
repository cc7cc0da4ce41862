//! The file operations of enforcement, off the enforcement loop. Opening
//! a process's executable, finding the file the kernel probes for it and
//! analysing that file are operations on files tenants control: on a dead
//! network mount, or a FUSE filesystem that never answers, they block for
//! ever; a forged executable makes them slow. Each runs on a thread of
//! its own, at most [`MAX_RUNNING`] at once; the loop only hands work out
//! and collects what is done, and never waits.
//!
//! An operation past `--file-timeout` is given up: its process is left
//! unenforced (counted as `timeout`), and while its thread is still
//! blocked, no other executable of the same filesystem is tried — one
//! blocked thread per unresponsive filesystem, at most — so enforcement
//! goes on for every other process of the node.

use std::{
    collections::{HashMap, HashSet},
    fs::File,
    path::{Path, PathBuf},
    sync::mpsc,
    time::{Duration, Instant},
};

use mapguard_enforcer::{
    binary::goelf::ReadLimits,
    binary::target::{BinaryTarget, TargetError},
    host::procfs::{self, OpenedExe},
};

/// Operations running at once (not counting those given up).
pub(super) const MAX_RUNNING: usize = 4;

/// A process image: its pid and start time (pids are reused) and its
/// executable's `(device, inode)` as `PID/exe` stats, which an exec
/// changes and the pid and start time do not (a shell or `runc init`
/// that execs a Go program: what was opened for the image before is not
/// this one's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct ProcessKey {
    pub pid: u32,
    pub start: u64,
    pub exe: Option<(u64, u64)>,
}

impl ProcessKey {
    /// The filesystem of its executable.
    fn dev(&self) -> Option<u64> {
        self.exe.map(|(dev, _)| dev)
    }
}
/// A file: `(device, inode)` as the kernel keys uprobes.
pub(super) type FileKey = (u64, u64);

/// What an operation came back with.
enum Done {
    Opened {
        process: ProcessKey,
        dev: Option<u64>,
        exe: Option<OpenedExe>,
    },
    Analysed {
        file: FileKey,
        dev: Option<u64>,
        result: Box<Result<BinaryTarget, TargetError>>,
    },
}

/// An operation under way.
struct Running {
    since: Instant,
    /// The filesystem of the executable (as the scan saw it).
    dev: Option<u64>,
}

/// Where the file work of one process stands, once its executable is
/// opened (or could not be).
pub(super) enum Progress {
    /// Its executable is opened and identified: `file`. `opened` is the
    /// descriptor, until an analysis takes it.
    Opened { file: FileKey, opened: Option<File> },
    /// Could not be done: the process exited, or an operation timed out.
    Failed {
        reason: &'static str,
        message: String,
    },
}

/// A finished analysis, for the loop to take on.
pub(super) struct Analysis {
    pub file: FileKey,
    pub result: Result<BinaryTarget, TargetError>,
}

/// The file work handed out by the enforcement loop.
pub struct FileWork {
    proc_root: PathBuf,
    limits: ReadLimits,
    timeout: Duration,
    tx: mpsc::Sender<Done>,
    rx: mpsc::Receiver<Done>,
    opening: HashMap<ProcessKey, Running>,
    analysing: HashMap<FileKey, Running>,
    /// Processes whose executable is open (or whose work failed).
    progress: HashMap<ProcessKey, Progress>,
    /// Files whose analysis timed out (never tried again while its thread
    /// is blocked).
    timed_out: HashSet<FileKey>,
    /// Operations given up but still blocked, by filesystem.
    stuck: HashMap<Option<u64>, usize>,
}

impl FileWork {
    pub fn new(proc_root: &Path, limits: ReadLimits, timeout: Duration) -> FileWork {
        let (tx, rx) = mpsc::channel();
        FileWork {
            proc_root: proc_root.to_path_buf(),
            limits,
            timeout,
            tx,
            rx,
            opening: HashMap::new(),
            analysing: HashMap::new(),
            progress: HashMap::new(),
            timed_out: HashSet::new(),
            stuck: HashMap::new(),
        }
    }

    fn running(&self) -> usize {
        self.opening.len() + self.analysing.len()
    }

    /// Operations given up whose threads are still blocked.
    pub fn stuck(&self) -> usize {
        self.stuck.values().sum()
    }

    fn unresponsive(&self, dev: Option<u64>) -> bool {
        dev.is_some() && self.stuck.get(&dev).is_some_and(|n| *n > 0)
    }

    /// Where process image `process` stands: `None` while its executable
    /// is being opened (opening starts here, when nothing is under way and
    /// fewer than [`MAX_RUNNING`] operations run).
    pub(super) fn process(&mut self, process: ProcessKey) -> Option<&mut Progress> {
        let dev = process.dev();
        if !self.progress.contains_key(&process) && !self.opening.contains_key(&process) {
            if self.unresponsive(dev) {
                self.progress.insert(
                    process,
                    Progress::Failed {
                        reason: "timeout",
                        message: "an operation on another executable of its filesystem has not returned; not tried".into(),
                    },
                );
            } else if self.running() < MAX_RUNNING {
                self.open(process, dev);
            }
        }
        self.progress.get_mut(&process)
    }

    fn open(&mut self, process: ProcessKey, dev: Option<u64>) {
        let tx = self.tx.clone();
        let root = self.proc_root.clone();
        let spawned = std::thread::Builder::new()
            .name("open-exe".into())
            .spawn(move || {
                let exe = procfs::open_exe(&root, process.pid);
                let _ = tx.send(Done::Opened { process, dev, exe });
            });
        if spawned.is_ok() {
            self.opening.insert(
                process,
                Running {
                    since: Instant::now(),
                    dev,
                },
            );
        }
    }

    /// Whether file `file` is being analysed.
    pub(super) fn analysing(&self, file: FileKey) -> bool {
        self.analysing.contains_key(&file)
    }

    /// Whether the analysis of file `file` was given up, its thread still
    /// blocked.
    pub(super) fn gave_up(&self, file: FileKey) -> bool {
        self.timed_out.contains(&file)
    }

    /// Starts analysing `opened` (file `file`, on filesystem `dev`) under
    /// binary id `id`; gives the file back if too much runs already, or
    /// the file is being analysed (try again later).
    pub(super) fn analyse(
        &mut self,
        process: ProcessKey,
        file: FileKey,
        opened: File,
        id: u32,
    ) -> Result<(), File> {
        let dev = process.dev();
        if self.running() >= MAX_RUNNING || self.analysing(file) || self.gave_up(file) {
            return Err(opened);
        }
        let tx = self.tx.clone();
        let limits = self.limits;
        // The name it was opened through, for messages.
        let path = self.proc_root.join(format!("{}/exe", process.pid));
        let spawned = std::thread::Builder::new()
            .name("analyse".into())
            .spawn(move || {
                let result = Box::new(BinaryTarget::analyse_file(opened, &path, id, limits));
                let _ = tx.send(Done::Analysed { file, dev, result });
            });
        if spawned.is_ok() {
            self.analysing.insert(
                file,
                Running {
                    since: Instant::now(),
                    dev,
                },
            );
        }
        Ok(())
    }

    /// Collects what finished and gives up what ran too long. Returns the
    /// analyses finished, and whether anything changed.
    pub(super) fn collect(&mut self) -> (Vec<Analysis>, bool) {
        let mut analyses = Vec::new();
        let mut changed = false;
        while let Ok(done) = self.rx.try_recv() {
            changed = true;
            match done {
                Done::Opened { process, dev, exe } => {
                    if self.opening.remove(&process).is_none() {
                        // Given up on: its thread is free again.
                        self.unstick(dev);
                        continue;
                    }
                    let progress = match exe {
                        Some(exe) => Progress::Opened {
                            file: exe.id,
                            opened: Some(exe.file),
                        },
                        None => Progress::Failed {
                            reason: "exited",
                            message: "the process exited".into(),
                        },
                    };
                    self.progress.insert(process, progress);
                }
                Done::Analysed { file, dev, result } => {
                    if self.analysing.remove(&file).is_none() {
                        self.unstick(dev);
                        self.timed_out.remove(&file);
                        continue;
                    }
                    analyses.push(Analysis {
                        file,
                        result: *result,
                    });
                }
            }
        }
        let timeout = self.timeout;
        let late: Vec<ProcessKey> = self
            .opening
            .iter()
            .filter(|(_, r)| r.since.elapsed() > timeout)
            .map(|(p, _)| *p)
            .collect();
        for process in late {
            changed = true;
            let running = self.opening.remove(&process).expect("listed");
            *self.stuck.entry(running.dev).or_default() += 1;
            tracing::warn!(
                pid = process.pid,
                timeout = ?timeout,
                "*** opening a process's executable did not return within --file-timeout: the process is left unenforced, its filesystem not tried again until the operation returns ***"
            );
            self.progress.insert(
                process,
                Progress::Failed {
                    reason: "timeout",
                    message: format!("opening its executable took longer than {timeout:?}"),
                },
            );
        }
        let late: Vec<FileKey> = self
            .analysing
            .iter()
            .filter(|(_, r)| r.since.elapsed() > timeout)
            .map(|(f, _)| *f)
            .collect();
        for file in late {
            changed = true;
            let running = self.analysing.remove(&file).expect("listed");
            *self.stuck.entry(running.dev).or_default() += 1;
            self.timed_out.insert(file);
            tracing::warn!(
                ?file,
                timeout = ?timeout,
                "*** analysing an executable did not finish within --file-timeout: its processes are left unenforced ***"
            );
            for progress in self.progress.values_mut() {
                if matches!(progress, Progress::Opened { file: f, .. } if *f == file) {
                    *progress = Progress::Failed {
                        reason: "timeout",
                        message: format!("analysing its executable took longer than {timeout:?}"),
                    };
                }
            }
        }
        (analyses, changed)
    }

    fn unstick(&mut self, dev: Option<u64>) {
        if let Some(n) = self.stuck.get_mut(&dev) {
            *n -= 1;
            if *n == 0 {
                self.stuck.remove(&dev);
            }
        }
    }

    /// Forgets the processes not in `live` (gone, or enforced).
    pub(super) fn retain(&mut self, live: impl Fn(&ProcessKey) -> bool) {
        self.progress.retain(|p, _| live(p));
    }

    /// Forgets what was done for `process` (enforced now, or to be tried
    /// again).
    pub(super) fn forget(&mut self, process: ProcessKey) {
        self.progress.remove(&process);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// More processes than operations may run at once: every one is
    /// opened in turn, none left waiting for good.
    #[test]
    fn more_processes_than_threads_are_all_opened() {
        let mut children: Vec<std::process::Child> = (0..MAX_RUNNING * 2)
            .map(|_| {
                std::process::Command::new("sleep")
                    .arg("30")
                    .spawn()
                    .expect("spawn sleep")
            })
            .collect();
        let mut work = FileWork::new(
            Path::new("/proc"),
            ReadLimits::default(),
            Duration::from_secs(10),
        );
        let keys: Vec<ProcessKey> = children
            .iter()
            .map(|c| ProcessKey {
                pid: c.id(),
                start: 0,
                exe: None,
            })
            .collect();
        let sleep = mapguard_enforcer::host::procfs::real_file_id(Path::new("/proc"), keys[0].pid)
            .expect("sleep's file");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            work.collect();
            let opened = keys
                .iter()
                .filter(|k| {
                    matches!(work.process(**k), Some(Progress::Opened { file, .. }) if *file == sleep)
                })
                .count();
            if opened == keys.len() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{opened} of {} processes opened",
                keys.len()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        for c in &mut children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
