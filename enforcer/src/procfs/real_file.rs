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
//! exe opened `O_PATH`) in the process's mountinfo gives the overlay's
//! upper and lower folders; the first of them, upper first, that holds
//! the exe's path within the mount is the file.
//!
//! The layer folders are paths of the mount namespace that mounted the
//! overlay (containerd's, not the container's): they are looked up under
//! the process's own `/proc/PID/root` (an overlay mounted where the
//! process runs), then under `/proc/ANCESTOR/root` of each ancestor in
//! another mount namespace, nearest first (the runtime's shim). The file
//! found must have the exe's size and mode, else the overlay's own
//! `(device, inode)` is kept.

use std::{
    ffi::OsStr,
    os::unix::{ffi::OsStrExt as _, fs::MetadataExt as _},
    path::{Path, PathBuf},
};

/// `OVERLAYFS_SUPER_MAGIC`.
const OVERLAYFS_MAGIC: i64 = 0x794c_7630;
/// Parents followed looking for the mount namespace of the overlay's
/// mounter.
const MAX_ANCESTORS: usize = 64;

/// `(device, inode)` of the file process `pid` runs, as the kernel keys
/// its uprobes: the layer's file for an overlay file, else `stat` of
/// `/proc/PID/exe` (also when the layer's file cannot be found).
/// `proc_root` is where the host's `/proc` is mounted.
pub fn real_file_id(proc_root: &Path, pid: u32) -> Option<(u64, u64)> {
    let exe = proc_root.join(format!("{pid}/exe"));
    let stat = std::fs::metadata(&exe).ok()?;
    let own = (stat.dev(), stat.ino());
    if !is_overlay(&exe) {
        return Some(own);
    }
    match layer_file(proc_root, pid, &exe) {
        Some(file) => {
            let meta = std::fs::metadata(&file).ok();
            // The same file: a layer's copy has the exe's size and mode.
            match meta.filter(|m| m.len() == stat.len() && m.mode() == stat.mode()) {
                Some(m) => Some((m.dev(), m.ino())),
                None => Some(own),
            }
        }
        None => {
            tracing::debug!(
                pid,
                "the layer of an overlay executable not found; keyed by the overlay's inode"
            );
            Some(own)
        }
    }
}

fn is_overlay(path: &Path) -> bool {
    nix::sys::statfs::statfs(path).is_ok_and(|s| s.filesystem_type().0 == OVERLAYFS_MAGIC)
}

/// The file of an overlay's layers that `exe` (`/proc/PID/exe`) is.
fn layer_file(proc_root: &Path, pid: u32, exe: &Path) -> Option<PathBuf> {
    let mnt_id = mount_id(exe)?;
    let mountinfo = std::fs::read_to_string(proc_root.join(format!("{pid}/mountinfo"))).ok()?;
    let mount = mountinfo
        .lines()
        .filter_map(Mount::parse)
        .find(|m| m.id == mnt_id && m.fs_type == "overlay")?;
    // The exe's path as the process's namespace names it (the kernel
    // names a file of another namespace from that namespace's root).
    let target = std::fs::read_link(exe).ok()?;
    let within = target.strip_prefix(&mount.point).ok()?;
    let within = Path::new(&mount.root)
        .join(within)
        .strip_prefix("/")
        .ok()?
        .to_path_buf();
    let layers = mount.layers();
    roots(proc_root, pid).into_iter().find_map(|root| {
        layers
            .iter()
            .map(|layer| {
                root.join(layer.strip_prefix("/").unwrap_or(layer))
                    .join(&within)
            })
            .find(|candidate| std::fs::symlink_metadata(candidate).is_ok_and(|m| m.is_file()))
    })
}

/// The `mnt_id` of the mount `path` is on.
fn mount_id(path: &Path) -> Option<u64> {
    use std::os::{fd::AsRawFd as _, unix::fs::OpenOptionsExt as _};
    // O_PATH: no read access to the file is needed.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH)
        .open(path)
        .ok()?;
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
        if is_overlay(Path::new("/proc/self/exe")) {
            return;
        }
        let stat = std::fs::metadata("/proc/self/exe").expect("own exe");
        assert_eq!(
            real_file_id(Path::new("/proc"), me),
            Some((stat.dev(), stat.ino()))
        );
    }
}
