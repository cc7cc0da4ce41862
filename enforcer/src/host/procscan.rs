//! The node's processes and where each runs: for every process, its
//! [`Placement`] (pod UID, container id, runtime) and, for container
//! processes, the `(device, inode)` of the file it runs, so the daemon
//! attaches once per binary.
//!
//! A scan lists the proc root once and, per process, stats one link
//! (`PID/exe`), relative to a descriptor of the proc root opened once. It
//! reads a process's `PID/cgroup` (the costly part: the kernel prints every
//! hierarchy's path) only when it has not seen that process run that
//! executable before: a new pid, a pid given to a new process (the kernel
//! makes its `/proc` directory anew, with a new inode), or a process that
//! has called `execve` since (how runtimes start a container's processes:
//! join the cgroup, then exec). A process moved to another cgroup without
//! an exec — which the kubelet and the runtimes never do to a container's
//! process — is seen at the next full read; every
//! [`ProcScanner::with_reread_every`]th scan reads every process in full.
//!
//! Processes that exit mid-scan, zombies and kernel threads are counted,
//! not reported: only errors that mean something is wrong (no permission
//! to read a process's files) become [`ScanIssue`]s.
//!
//! The proc root is configurable for an agent that runs in a container
//! with the host's `/proc` mounted elsewhere (`hostPID`, or a bind mount
//! such as `/host/proc`); it must be a procfs mount of the host's PID
//! namespace.

mod files;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use files::{Exe, ProcDir};
use nix::errno::Errno;

use crate::host::cgroup::{self, Placement};

/// The root every node agent reads unless told otherwise.
pub const DEFAULT_PROC_ROOT: &str = "/proc";

/// `(device, inode)` of a file: what the kernel's uprobes are keyed by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
}

impl From<FileId> for (u64, u64) {
    fn from(f: FileId) -> (u64, u64) {
        (f.dev, f.ino)
    }
}

impl From<(u64, u64)> for FileId {
    fn from((dev, ino): (u64, u64)) -> FileId {
        FileId { dev, ino }
    }
}

/// Which processes' executables a scan reports (it stats every process's
/// to notice an exec either way).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ExeFor {
    /// Container and unplaceable processes: what the daemon attaches to,
    /// or logs. A read error of another process's `exe` is no issue.
    #[default]
    Containers,
    /// Every process, host processes too.
    All,
}

/// One live process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    pub pid: u32,
    pub placement: Placement,
    /// The file it runs; `None` when not asked for ([`ExeFor`]), for
    /// kernel threads, or when it could not be read (then a [`ScanIssue`]
    /// says why).
    pub exe: Option<FileId>,
}

impl Process {
    /// The path to attach probes through: the kernel resolves it to the
    /// process's executable whatever mount namespace it lives in.
    pub fn exe_path(&self, proc_root: &Path) -> PathBuf {
        proc_root.join(self.pid.to_string()).join("exe")
    }
}

/// The result of one scan.
#[derive(Debug, Default)]
pub struct Scan {
    /// Live processes, by increasing pid.
    pub processes: Vec<Process>,
    /// What could not be read for reasons other than the process exiting.
    pub issues: Vec<ScanIssue>,
    pub stats: ScanStats,
}

impl Scan {
    /// The processes placed in a container.
    pub fn containers(&self) -> impl Iterator<Item = (&Process, &cgroup::Container)> {
        self.processes
            .iter()
            .filter_map(|p| Some((p, p.placement.container()?)))
    }

    /// The processes in the kubelet's hierarchy that could not be placed.
    pub fn unplaceable(&self) -> impl Iterator<Item = (&Process, &cgroup::Unplaceable)> {
        self.processes.iter().filter_map(|p| match &p.placement {
            Placement::Unplaceable(u) => Some((p, u)),
            _ => None,
        })
    }
}

/// Counts of one scan.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScanStats {
    /// Process entries the proc root listed.
    pub listed: usize,
    /// Processes that exited between the listing and reading their files.
    pub vanished: usize,
    /// Zombies and exiting processes left out (in a pod's hierarchy but
    /// with no executable any more).
    pub exited: usize,
    /// Processes whose cgroup file was read (the rest were known).
    pub read: usize,
    pub elapsed: Duration,
}

/// A process file that could not be read although the process exists.
#[derive(Debug, thiserror::Error)]
#[error("cannot read {path}: {source}")]
pub struct ScanIssue {
    pub pid: u32,
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// Why the proc root cannot be scanned at all.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("cannot open proc root {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a procfs mount")]
    NotProcfs { path: PathBuf },
    #[error("cannot list {path}: {source}")]
    List {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// How many scans share one full read, unless told otherwise.
pub const DEFAULT_REREAD_EVERY: u32 = 10;

/// Scans a proc root, again and again, remembering each process it has
/// read.
#[derive(Debug)]
pub struct ProcScanner {
    root: PathBuf,
    dir: ProcDir,
    exe_for: ExeFor,
    reread_every: u32,
    scans: u64,
    known: HashMap<u32, Known>,
}

/// A process read in full before.
#[derive(Debug)]
struct Known {
    /// The inode of its `/proc` directory: the same process.
    dir_inode: u64,
    /// What its `exe` was: no exec since.
    exe: Exe,
    placement: Placement,
    /// The scan that last listed it.
    seen: u64,
}

/// What reading one process gave.
enum Read {
    Live(Process),
    Vanished,
    Exited,
    /// Its cgroup file could not be read (an issue says why).
    Unreadable,
}

impl ProcScanner {
    /// Opens `proc_root` (a procfs mount: `/proc`, or the host's mounted
    /// elsewhere).
    pub fn new(proc_root: impl Into<PathBuf>) -> Result<ProcScanner, ScanError> {
        let root = proc_root.into();
        let dir = ProcDir::open(&root).map_err(|e| match e {
            Some(e) => ScanError::Open {
                path: root.clone(),
                source: e.into(),
            },
            None => ScanError::NotProcfs { path: root.clone() },
        })?;
        Ok(ProcScanner {
            root,
            dir,
            exe_for: ExeFor::default(),
            reread_every: DEFAULT_REREAD_EVERY,
            scans: 0,
            known: HashMap::new(),
        })
    }

    pub fn with_exe_for(mut self, exe_for: ExeFor) -> ProcScanner {
        self.exe_for = exe_for;
        self
    }

    /// Reads every process in full every `scans`th scan (the first is
    /// always full); `1` reads every process every time.
    pub fn with_reread_every(mut self, scans: u32) -> ProcScanner {
        self.reread_every = scans.max(1);
        self
    }

    pub fn proc_root(&self) -> &Path {
        &self.root
    }

    /// Every live process with its placement.
    pub fn scan(&mut self) -> Result<Scan, ScanError> {
        let start = Instant::now();
        let listing = ProcDir::list(&self.root).map_err(|source| ScanError::List {
            path: self.root.clone(),
            source,
        })?;
        let full = self.scans.is_multiple_of(u64::from(self.reread_every));
        self.scans += 1;

        let mut scan = Scan {
            processes: Vec::with_capacity(listing.len()),
            ..Scan::default()
        };
        scan.stats.listed = listing.len();
        for (pid, dir_inode) in listing {
            let read = match self.known.get(&pid) {
                Some(k) if !full && k.dir_inode == dir_inode => self.recheck(pid),
                _ => None,
            };
            let read = read.unwrap_or_else(|| {
                scan.stats.read += 1;
                self.read_fully(pid, dir_inode, &mut scan.issues)
            });
            match read {
                Read::Live(p) => scan.processes.push(p),
                Read::Vanished => scan.stats.vanished += 1,
                Read::Exited => scan.stats.exited += 1,
                Read::Unreadable => {}
            }
        }
        let now = self.scans;
        self.known.retain(|_, k| k.seen == now);
        scan.stats.elapsed = start.elapsed();
        Ok(scan)
    }

    /// One process read in full, as a scan would list it (for a process
    /// the daemon has just seen start): `None` if it is gone, a zombie in
    /// a pod, or its cgroup file could not be read (then `issues` says
    /// why).
    pub fn process(&mut self, pid: u32, issues: &mut Vec<ScanIssue>) -> Option<Process> {
        let Ok(dir_inode) = self.dir.dir_inode(pid) else {
            return None;
        };
        match self.read_fully(pid, dir_inode, issues) {
            Read::Live(p) => Some(p),
            Read::Vanished | Read::Exited | Read::Unreadable => None,
        }
    }

    /// Whether this process shares the cgroup namespace of the host (that
    /// of the root PID namespace's init, or of `kthreadd` where init's
    /// files are closed to it); `None` if neither can be read. In another
    /// cgroup namespace, pods of the cgroupfs driver cannot be placed.
    pub fn in_host_cgroup_namespace(&mut self) -> Option<bool> {
        let own = self.dir.cgroup_namespace("self")?;
        let host = self
            .dir
            .cgroup_namespace("1")
            .or_else(|| self.dir.cgroup_namespace("2"))?;
        Some(own == host)
    }

    /// A known process, if it still runs what it ran when it was read;
    /// `None` when it must be read again.
    fn recheck(&mut self, pid: u32) -> Option<Read> {
        let Ok(exe) = self.dir.exe(pid) else {
            self.known.remove(&pid);
            return Some(Read::Vanished);
        };
        let known = self.known.get_mut(&pid)?;
        if known.exe != exe {
            return None;
        }
        known.seen = self.scans;
        let placement = known.placement.clone();
        Some(Read::Live(self.listed(pid, placement, exe)))
    }

    fn read_fully(&mut self, pid: u32, dir_inode: u64, issues: &mut Vec<ScanIssue>) -> Read {
        let placement = match self.dir.cgroup(pid) {
            Ok(text) => cgroup::placement(&text),
            Err(Errno::ENOENT | Errno::ESRCH) => return Read::Vanished,
            Err(e) => {
                issues.push(self.issue(pid, "cgroup", e));
                return Read::Unreadable;
            }
        };
        let Ok(exe) = self.dir.exe(pid) else {
            return Read::Vanished;
        };
        let in_pod = matches!(
            placement,
            Placement::Container(_) | Placement::Unplaceable(_)
        );
        if in_pod && exe == Exe::Missing {
            return Read::Exited;
        }
        if let Exe::Unreadable(e) = exe
            && self.wants_exe(&placement)
        {
            issues.push(self.issue(pid, "exe", e));
        }
        self.known.insert(
            pid,
            Known {
                dir_inode,
                exe,
                placement: placement.clone(),
                seen: self.scans,
            },
        );
        Read::Live(self.listed(pid, placement, exe))
    }

    fn wants_exe(&self, placement: &Placement) -> bool {
        self.exe_for == ExeFor::All
            || matches!(
                placement,
                Placement::Container(_) | Placement::Unplaceable(_)
            )
    }

    fn listed(&self, pid: u32, placement: Placement, exe: Exe) -> Process {
        let exe = if self.wants_exe(&placement) {
            exe.file()
        } else {
            None
        };
        Process {
            pid,
            placement,
            exe,
        }
    }

    fn issue(&self, pid: u32, file: &str, e: Errno) -> ScanIssue {
        ScanIssue {
            pid,
            path: self.root.join(pid.to_string()).join(file),
            source: e.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_listed_with_its_placement_and_executable() {
        let mut scanner = ProcScanner::new(DEFAULT_PROC_ROOT)
            .expect("/proc")
            .with_exe_for(ExeFor::All);
        let scan = scanner.scan().expect("scan /proc");
        let me = std::process::id();
        let own = scan
            .processes
            .iter()
            .find(|p| p.pid == me)
            .expect("this process is listed");
        let text = std::fs::read_to_string("/proc/self/cgroup").expect("own cgroup");
        assert_eq!(own.placement, cgroup::placement(&text));
        let exe = crate::host::procfs::file_id(Path::new("/proc/self/exe")).expect("own exe");
        assert_eq!(own.exe.map(<(u64, u64)>::from), Some(exe));
        assert!(
            scan.processes.windows(2).all(|w| w[0].pid < w[1].pid),
            "by increasing pid"
        );
        assert!(scan.stats.listed >= scan.processes.len());
    }

    #[test]
    fn kernel_threads_are_listed_without_an_executable_or_an_issue() {
        let mut scanner = ProcScanner::new(DEFAULT_PROC_ROOT)
            .expect("/proc")
            .with_exe_for(ExeFor::All);
        let mut issues = Vec::new();
        // kthreadd is pid 2 in the root PID namespace.
        let kthreadd = scanner.process(2, &mut issues).expect("kthreadd");
        assert_eq!(kthreadd.placement, Placement::Outside);
        assert_eq!(kthreadd.exe, None);
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            assert!(issues.is_empty(), "{issues:?}");
        } else {
            // Other users' executables are closed to a user: a real issue.
            assert!(
                issues
                    .iter()
                    .all(|i| i.source.kind() == std::io::ErrorKind::PermissionDenied),
                "{issues:?}"
            );
        }
    }

    #[test]
    fn a_process_that_is_gone_is_no_issue() {
        let mut child = std::process::Command::new("true")
            .spawn()
            .expect("spawn true");
        let pid = child.id();
        child.wait().expect("reap true");
        let mut scanner = ProcScanner::new(DEFAULT_PROC_ROOT).expect("/proc");
        let mut issues = Vec::new();
        assert_eq!(scanner.process(pid, &mut issues), None);
        assert!(issues.is_empty(), "{issues:?}");
    }

    #[test]
    fn the_root_must_be_a_procfs_mount() {
        let err = ProcScanner::new("/sys").expect_err("sysfs is no proc root");
        assert!(matches!(err, ScanError::NotProcfs { .. }), "{err}");
        let err = ProcScanner::new("/nonexistent-proc-root").expect_err("missing");
        assert!(matches!(err, ScanError::Open { .. }), "{err}");
        assert!(err.to_string().contains("/nonexistent-proc-root"), "{err}");
    }

    #[test]
    fn the_cgroup_namespace_check_answers_here() {
        let mut scanner = ProcScanner::new(DEFAULT_PROC_ROOT).expect("/proc");
        let own = std::fs::metadata("/proc/self/ns/cgroup").map(|m| {
            use std::os::unix::fs::MetadataExt as _;
            (m.dev(), m.ino())
        });
        let kthreadd = std::fs::metadata("/proc/2/ns/cgroup").map(|m| {
            use std::os::unix::fs::MetadataExt as _;
            (m.dev(), m.ino())
        });
        match (own, kthreadd) {
            (Ok(own), Ok(host)) => {
                assert_eq!(scanner.in_host_cgroup_namespace(), Some(own == host))
            }
            // Not root: the namespace files of other processes are closed.
            _ => assert_eq!(scanner.in_host_cgroup_namespace(), None),
        }
    }
}
