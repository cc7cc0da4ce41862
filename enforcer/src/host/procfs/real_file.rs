//! The real file a process runs: what the kernel keys uprobes on.
//!
//! A container's root is an overlayfs mount of its own, with a device
//! number of its own: `stat` of `/proc/PID/exe` gives the overlay's
//! `(device, inode)`, different for every container of one image. The
//! kernel resolves an overlay file to the layer's file that holds its data
//! (`d_real_inode`) when it places a uprobe, so every container of the
//! image shares one set of breakpoints. `/proc/PID/maps` does not help:
//! on Linux 6.18 it shows the overlay's device there too (measured with
//! two overlay mounts of one lower folder: `00:28` and `00:2a`, while the
//! lower file's is `fe:00`). So the layer's file is found as the kernel
//! finds it: the mount of the exe (its `mnt_id`, from the fdinfo of the
//! exe opened) in the process's mountinfo gives the overlay's
//! upper and lower folders; the first of them, upper first, that holds
//! the exe's path within the mount is the file.
//!
//! The layer folders are paths of the mount namespace that mounted the
//! overlay (containerd's, not the container's): they are looked up under
//! the process's own `/proc/PID/root` (an overlay mounted where the
//! process runs), then under `/proc/ANCESTOR/root` of each ancestor in
//! another mount namespace, nearest first (the runtime's shim). The path
//! within a layer is looked up as overlayfs does, following no symlink
//! (a tenant writes its upper folder, and a symlink there must not lead
//! the agent to another tenant's file). The file found must have the
//! exe's size, mode and bytes at both ends, else the overlay's own
//! `(device, inode)` is kept.
//!
//! Everything is read from the exe's descriptor, opened once: the
//! identity found is that of the file then analysed and probed through
//! the same descriptor, whatever the process runs by then.

use std::{
    ffi::OsStr,
    fs::File,
    os::{
        fd::{AsFd, AsRawFd as _, OwnedFd},
        unix::{
            ffi::OsStrExt as _,
            fs::{FileExt as _, MetadataExt as _},
        },
    },
    path::{Path, PathBuf},
};

use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};

/// `OVERLAYFS_SUPER_MAGIC`.
const OVERLAYFS_MAGIC: i64 = 0x794c_7630;
/// Parents followed looking for the mount namespace of the overlay's
/// mounter.
const MAX_ANCESTORS: usize = 64;
/// Bytes compared at each end of a layer's file and the executable (the
/// ELF headers and Go's build-id note lie in the first).
const COMPARED: usize = 4096;

/// A process's executable, opened once through `/proc/PID/exe`: the file
/// analysed and probed, and the `(device, inode)` the kernel keys its
/// uprobes on, found from this descriptor (never from the path again: the
/// process may run another file by then).
#[derive(Debug)]
pub struct OpenedExe {
    pub file: File,
    pub id: (u64, u64),
}

/// Opens the executable of `pid` (`proc_root` is where the host's `/proc`
/// is mounted) and finds the file the kernel probes for it.
pub fn open_exe(proc_root: &Path, pid: u32) -> Option<OpenedExe> {
    let file = File::open(proc_root.join(format!("{pid}/exe"))).ok()?;
    let id = real_file_id_of(proc_root, pid, &file)?;
    Some(OpenedExe { file, id })
}

/// `(device, inode)` of the file process `pid` runs, as the kernel keys
/// its uprobes: the layer's file for an overlay file, else `stat` of
/// `/proc/PID/exe` (also when the layer's file cannot be found).
/// `proc_root` is where the host's `/proc` is mounted.
pub fn real_file_id(proc_root: &Path, pid: u32) -> Option<(u64, u64)> {
    open_exe(proc_root, pid).map(|e| e.id)
}

/// [`real_file_id`] of `exe`, the executable of `pid` opened.
fn real_file_id_of(proc_root: &Path, pid: u32, exe: &File) -> Option<(u64, u64)> {
    let stat = exe.metadata().ok()?;
    let own = (stat.dev(), stat.ino());
    if !is_overlay(exe) {
        return Some(own);
    }
    match layer_file(proc_root, pid, exe) {
        Some(file) => match file.metadata() {
            // The same file: a layer's copy has the exe's size, mode and
            // bytes at both ends.
            Ok(m) if m.len() == stat.len() && m.mode() == stat.mode() && same_ends(exe, &file) => {
                Some((m.dev(), m.ino()))
            }
            _ => {
                tracing::debug!(
                    pid,
                    "a layer's file at the executable's path is another file; keyed by the overlay's inode"
                );
                Some(own)
            }
        },
        None => {
            tracing::debug!(
                pid,
                "the layer of an overlay executable not found; keyed by the overlay's inode"
            );
            Some(own)
        }
    }
}

fn is_overlay(file: &File) -> bool {
    nix::sys::statfs::fstatfs(file).is_ok_and(|s| s.filesystem_type().0 == OVERLAYFS_MAGIC)
}

/// Whether `a` and `b` (of one size) hold the same bytes at both ends.
fn same_ends(a: &File, b: &File) -> bool {
    let Ok(len) = a.metadata().map(|m| m.len()) else {
        return false;
    };
    let n = COMPARED.min(len as usize);
    [0, len - n as u64].into_iter().all(|offset| {
        let (mut x, mut y) = (vec![0; n], vec![0; n]);
        a.read_exact_at(&mut x, offset).is_ok() && b.read_exact_at(&mut y, offset).is_ok() && x == y
    })
}

/// The file of an overlay's layers that `exe` (the executable of `pid`,
/// opened) is, opened for reading.
///
/// The layer folders are named by the mount (the runtime's paths, or a
/// tenant's own in a user namespace): each is resolved inside the root
/// it is named in, as that namespace would (`RESOLVE_IN_ROOT`). The
/// path within a layer is the tenant's: overlayfs never follows a
/// symlink of a layer to find a file, so neither does this lookup
/// (`RESOLVE_NO_SYMLINKS`, `RESOLVE_BENEATH`, `RESOLVE_NO_XDEV`) — a
/// symlink planted in an upper folder must not lead to another tenant's
/// file, or the host's.
fn layer_file(proc_root: &Path, pid: u32, exe: &File) -> Option<File> {
    let own = PathBuf::from(format!("/proc/self/fd/{}", exe.as_raw_fd()));
    let mnt_id = mount_id(exe)?;
    let mountinfo = std::fs::read_to_string(proc_root.join(format!("{pid}/mountinfo"))).ok()?;
    let mount = mountinfo
        .lines()
        .filter_map(Mount::parse)
        .find(|m| m.id == mnt_id && m.fs_type == "overlay")?;
    // The exe's path as the process's namespace names it (the kernel
    // names a file of another namespace from that namespace's root).
    let target = std::fs::read_link(&own).ok()?;
    if target.as_os_str().as_bytes().ends_with(b" (deleted)") {
        return None;
    }
    let within = target.strip_prefix(&mount.point).ok()?;
    let within = Path::new(&mount.root)
        .join(within)
        .strip_prefix("/")
        .ok()?
        .to_path_buf();
    let layers = mount.layers();
    roots(proc_root, pid).into_iter().find_map(|root| {
        let root = open_path(&root)?;
        layers.iter().find_map(|layer| {
            let layer = resolve(
                &root,
                layer.strip_prefix("/").unwrap_or(layer),
                OFlag::O_DIRECTORY,
                ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS,
            )?;
            let found = resolve(
                &layer,
                &within,
                OFlag::empty(),
                ResolveFlag::RESOLVE_BENEATH
                    | ResolveFlag::RESOLVE_NO_SYMLINKS
                    | ResolveFlag::RESOLVE_NO_XDEV,
            )?;
            // A whiteout, a FIFO, a folder: no file of the exe's.
            let meta = File::from(found.try_clone().ok()?).metadata().ok()?;
            if !meta.is_file() {
                return None;
            }
            File::open(format!("/proc/self/fd/{}", found.as_raw_fd())).ok()
        })
    })
}

/// `path` opened `O_PATH` (following it: `/proc/PID/root` is meant).
fn open_path(path: &Path) -> Option<OwnedFd> {
    nix::fcntl::open(
        path,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .ok()
}

/// `path` below `dir`, opened `O_PATH` (nothing of the file runs or
/// blocks on an open: a FIFO, a device) under `resolve`.
fn resolve(dir: &impl AsFd, path: &Path, flags: OFlag, resolve: ResolveFlag) -> Option<OwnedFd> {
    let how = OpenHow::new()
        .flags(flags | OFlag::O_PATH | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW)
        .resolve(resolve);
    openat2(dir, path, how).ok()
}

/// The `mnt_id` of the mount `file` is on.
fn mount_id(file: &File) -> Option<u64> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", file.as_raw_fd())).ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("mnt_id:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Where the overlay's layer folders may be named, most likely first: the
/// process's own root (an overlay mounted in its own namespace), then the
/// roots of its ancestors in other mount namespaces, nearest first (a
/// container runtime's shim, in the namespace that mounted the
/// container's root), then the host's.
fn roots(proc_root: &Path, pid: u32) -> Vec<PathBuf> {
    let ns = |p: u32| std::fs::read_link(proc_root.join(format!("{p}/ns/mnt"))).ok();
    let mut seen = vec![ns(pid)];
    let mut roots = vec![proc_root.join(format!("{pid}/root"))];
    let mut current = pid;
    for _ in 0..MAX_ANCESTORS {
        let Some(parent) = parent_of(proc_root, current).filter(|p| *p != 0) else {
            break;
        };
        let parent_ns = ns(parent);
        if !seen.contains(&parent_ns) {
            seen.push(parent_ns);
            roots.push(proc_root.join(format!("{parent}/root")));
        }
        current = parent;
    }
    roots
}

fn parent_of(proc_root: &Path, pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(proc_root.join(format!("{pid}/status"))).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))
        .and_then(|v| v.trim().parse().ok())
}

/// One line of `/proc/PID/mountinfo`, the fields used here.
#[derive(Debug, PartialEq, Eq)]
struct Mount {
    id: u64,
    /// The folder of the filesystem mounted (`/` for a whole overlay).
    root: PathBuf,
    /// Where it is mounted, in the process's namespace.
    point: PathBuf,
    fs_type: String,
    /// Superblock options (`upperdir=...,lowerdir=...`), escapes kept.
    options: String,
}

impl Mount {
    fn parse(line: &str) -> Option<Mount> {
        let (before, after) = line.split_once(" - ")?;
        let fields: Vec<&str> = before.split(' ').collect();
        let mut after = after.split(' ');
        let fs_type = after.next()?.to_string();
        let _source = after.next()?;
        Some(Mount {
            id: fields.first()?.parse().ok()?,
            root: unescape(fields.get(3)?),
            point: unescape(fields.get(4)?),
            fs_type,
            options: after.next()?.to_string(),
        })
    }

    /// The overlay's layers, the one the kernel looks in first first:
    /// the upper folder, then the lower ones in order (data-only layers
    /// too: they hold no names of their own, so a lookup there finds
    /// nothing).
    fn layers(&self) -> Vec<PathBuf> {
        let mut upper = Vec::new();
        let mut lower = Vec::new();
        for option in split_unescaped(&self.options, b',') {
            if let Some(dir) = option.strip_prefix("upperdir=") {
                upper.push(unescape(dir));
            } else if let Some(dirs) = option.strip_prefix("lowerdir=") {
                lower.extend(
                    split_unescaped(dirs, b':')
                        .into_iter()
                        .filter(|d| !d.is_empty())
                        .map(unescape),
                );
            } else if let Some(dir) = option.strip_prefix("lowerdir+=") {
                lower.push(unescape(dir));
            }
        }
        upper.extend(lower);
        upper
    }
}

/// `text` split at each `sep` not escaped by a backslash.
fn split_unescaped(text: &str, sep: u8) -> Vec<&str> {
    let bytes = text.as_bytes();
    let mut parts = Vec::new();
    let (mut start, mut i) = (0, 0);
    while i < bytes.len() {
        if bytes[i] == b'\\' {
            i += 2;
            continue;
        }
        if bytes[i] == sep {
            parts.push(&text[start..i]);
            start = i + 1;
        }
        i += 1;
    }
    parts.push(&text[start.min(text.len())..]);
    parts
}

/// A path as mountinfo prints it: octal escapes (`\040` for a space) and
/// backslash-escaped separators undone.
fn unescape(text: &str) -> PathBuf {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (bytes[i], octal) {
            (b'\\', Some(digits)) => {
                out.push(
                    digits
                        .iter()
                        .fold(0u8, |n, d| n.wrapping_mul(8) + (d - b'0')),
                );
                i += 4;
            }
            (b'\\', None) if i + 1 < bytes.len() => {
                out.push(bytes[i + 1]);
                i += 2;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    PathBuf::from(OsStr::from_bytes(&out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_overlay_line_gives_its_layers_upper_first() {
        let line = "1234 1200 0:42 / /run/containerd/io.containerd.runtime.v2.task/k8s.io/abc/rootfs rw,relatime - overlay overlay rw,lowerdir=/var/lib/snap/3/fs:/var/lib/snap/2/fs::/data\\072x,upperdir=/var/lib/snap/4/fs,workdir=/var/lib/snap/4/work";
        let m = Mount::parse(line).expect("parsed");
        assert_eq!(m.id, 1234);
        assert_eq!(m.fs_type, "overlay");
        assert_eq!(m.root, Path::new("/"));
        assert_eq!(
            m.layers(),
            [
                "/var/lib/snap/4/fs",
                "/var/lib/snap/3/fs",
                "/var/lib/snap/2/fs",
                "/data:x"
            ]
            .map(PathBuf::from)
        );
    }

    #[test]
    fn escaped_mount_points_and_new_api_layers() {
        let line = "7 1 0:50 /sub /mnt/a\\040b rw - overlay none rw,lowerdir+=/l1,lowerdir+=/l\\0542,upperdir=/u";
        let m = Mount::parse(line).expect("parsed");
        assert_eq!(m.point, Path::new("/mnt/a b"));
        assert_eq!(m.root, Path::new("/sub"));
        assert_eq!(m.layers(), ["/u", "/l1", "/l,2"].map(PathBuf::from));
    }

    #[test]
    fn a_plain_file_is_its_own_stat() {
        let me = std::process::id();
        if is_overlay(&File::open("/proc/self/exe").expect("own exe")) {
            return;
        }
        let stat = std::fs::metadata("/proc/self/exe").expect("own exe");
        assert_eq!(
            real_file_id(Path::new("/proc"), me),
            Some((stat.dev(), stat.ino()))
        );
    }
}
