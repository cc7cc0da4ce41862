//! The few proc files a scan touches, read relative to one descriptor of
//! the proc root with reused buffers: the listing (pid and the inode of
//! its directory), `PID/cgroup` and `PID/exe`.

use std::{
    fmt::Write as _,
    os::{
        fd::{AsFd as _, OwnedFd},
        unix::fs::DirEntryExt as _,
    },
    path::Path,
};

use nix::{
    errno::Errno,
    fcntl::{AtFlags, OFlag, open, openat},
    sys::{
        stat::{Mode, fstatat},
        statfs::{PROC_SUPER_MAGIC, fstatfs},
    },
    unistd::read,
};

use super::FileId;

/// What `PID/exe` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Exe {
    File(FileId),
    /// No memory map: a kernel thread, a zombie, a process exiting.
    Missing,
    /// Could not be read (no permission, ...).
    Unreadable(Errno),
}

impl Exe {
    pub(super) fn file(self) -> Option<FileId> {
        match self {
            Exe::File(f) => Some(f),
            Exe::Missing | Exe::Unreadable(_) => None,
        }
    }
}

/// The process is gone.
#[derive(Debug)]
pub(super) struct Gone;

#[derive(Debug)]
pub(super) struct ProcDir {
    dir: OwnedFd,
    /// The cgroup file's bytes.
    buf: Vec<u8>,
    /// `PID/<file>`.
    name: String,
}

impl ProcDir {
    /// Opens a procfs mount; `Err(None)` if it is no procfs.
    pub(super) fn open(root: &Path) -> Result<ProcDir, Option<Errno>> {
        let dir = open(
            root,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(Some)?;
        if fstatfs(&dir).map_err(Some)?.filesystem_type() != PROC_SUPER_MAGIC {
            return Err(None);
        }
        Ok(ProcDir {
            dir,
            buf: Vec::with_capacity(4096),
            name: String::with_capacity(32),
        })
    }

    /// Every process directory: pid and the inode of its directory, which
    /// the kernel makes anew for each process a pid number is given to.
    pub(super) fn list(root: &Path) -> std::io::Result<Vec<(u32, u64)>> {
        let mut pids: Vec<(u32, u64)> = std::fs::read_dir(root)?
            .filter_map(|entry| {
                let entry = entry.ok()?;
                Some((entry.file_name().to_str()?.parse().ok()?, entry.ino()))
            })
            .collect();
        pids.sort_unstable();
        Ok(pids)
    }

    fn relative(&mut self, pid: u32, file: &str) {
        self.name.clear();
        let _ = write!(self.name, "{pid}{file}");
    }

    /// The inode of `PID`'s directory, as [`ProcDir::list`] gives it.
    pub(super) fn dir_inode(&mut self, pid: u32) -> Result<u64, Errno> {
        self.relative(pid, "");
        fstatat(&self.dir, self.name.as_str(), AtFlags::empty()).map(|st| st.st_ino)
    }

    /// Reads `PID/cgroup`. The kernel prints cgroup names as they were
    /// created; one that is not UTF-8 is no name of the kubelet's or a
    /// runtime's and, in a pod, stays unplaceable.
    pub(super) fn cgroup(&mut self, pid: u32) -> Result<std::borrow::Cow<'_, str>, Errno> {
        self.relative(pid, "/cgroup");
        let fd = openat(
            &self.dir,
            self.name.as_str(),
            OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        self.buf.clear();
        let mut chunk = [0u8; 4096];
        loop {
            match read(&fd, &mut chunk) {
                Ok(0) => break,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(String::from_utf8_lossy(&self.buf))
    }

    /// Stats the file `PID/exe` links to, as the kernel knows it already:
    /// a tenant's executable on a filesystem that does not answer (a dead
    /// network mount, a FUSE server) must not block the scan.
    pub(super) fn exe(&mut self, pid: u32) -> Result<Exe, Gone> {
        self.relative(pid, "/exe");
        let Ok(name) = std::ffi::CString::new(self.name.as_str()) else {
            return Err(Gone);
        };
        match crate::host::procfs::cached_file_id(self.dir.as_fd(), &name) {
            Ok((dev, ino)) => Ok(Exe::File(FileId { dev, ino })),
            Err(Errno::ESRCH) => Err(Gone),
            Err(Errno::ENOENT) => Ok(Exe::Missing),
            Err(e) => Ok(Exe::Unreadable(e)),
        }
    }

    /// `(device, inode)` of `PID/ns/cgroup`.
    pub(super) fn cgroup_namespace(&mut self, pid: &str) -> Option<(u64, u64)> {
        self.name.clear();
        let _ = write!(self.name, "{pid}/ns/cgroup");
        fstatat(&self.dir, self.name.as_str(), AtFlags::empty())
            .ok()
            .map(|st| (st.st_dev, st.st_ino))
    }
}
