//! The unified (v2) cgroup hierarchy as the exec hook sees it: a cgroup's
//! id is the inode number of its directory (what
//! `bpf_get_current_cgroup_id()` returns), the kubelet's `kubepods` roots
//! found in it, and the Pod level of a container's path.
//!
//! On a hybrid node (v1 controllers, `/sys/fs/cgroup/unified` without
//! controllers) runc still places a container at the same path in the v2
//! hierarchy, so these ids name Pods there too.

use std::{
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use super::ids::PodUid;

/// How deep below the mount a `kubepods` root is looked for: the
/// kubelet's `--cgroup-root` (`kubelet.slice/kubelet-kubepods.slice` on
/// kind nodes), a node in a container, a test's own root.
const ROOT_DEPTH: usize = 3;

/// Where the v2 hierarchy is mounted (`cgroup2` in `/proc/self/mounts`).
pub fn mount_point() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let dir = f.get(1)?;
        (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(dir))
    })
}

/// The id of the cgroup at `path` (under the mount).
pub fn id(mount: &Path, path: &str) -> Option<u64> {
    std::fs::metadata(mount.join(path.trim_start_matches('/')))
        .ok()
        .map(|m| m.ino())
}

/// `kubepods` (cgroupfs) or a slice naming it as a part
/// (`kubepods.slice`, `kubelet-kubepods.slice`).
fn is_root_name(name: &str) -> bool {
    name == "kubepods"
        || name
            .strip_suffix(".slice")
            .is_some_and(|stem| stem.split('-').any(|part| part == "kubepods"))
}

/// The kubelet's roots in the hierarchy: path (from the mount) and id.
/// The topmost only (`kubepods-burstable.slice` inside `kubepods.slice`
/// is no root of its own).
pub fn kubepods_roots(mount: &Path) -> Vec<(String, u64)> {
    let mut found = Vec::new();
    let mut level = vec![(String::new(), mount.to_path_buf())];
    for _ in 0..ROOT_DEPTH {
        let mut next = Vec::new();
        for (rel, dir) in level {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.filter_map(Result::ok) {
                let Ok(meta) = entry.metadata() else { continue };
                if !meta.is_dir() {
                    continue;
                }
                let name = entry.file_name().to_string_lossy().into_owned();
                let path = format!("{rel}/{name}");
                if is_root_name(&name) {
                    found.push((path, meta.ino()));
                } else {
                    next.push((path, entry.path()));
                }
            }
        }
        level = next;
    }
    found
}

/// The path (`0::` line) of a process's v2 cgroup.
pub fn path_of_pid(proc_root: &Path, pid: u32) -> Option<String> {
    let text = std::fs::read_to_string(proc_root.join(pid.to_string()).join("cgroup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_string)
}

/// The Pod's own level of a container's path: the prefix up to the level
/// that names `uid` (`pod<uid>` under cgroupfs,
/// `kubepods-<qos>-pod<uid with _>.slice` under systemd).
pub fn pod_level(path: &str, uid: &PodUid) -> Option<String> {
    let cgroupfs = format!("pod{}", uid.as_str());
    let systemd = format!("pod{}.slice", uid.as_str().replace('-', "_"));
    let mut prefix = String::new();
    for level in path.split('/').filter(|l| !l.is_empty()) {
        prefix.push('/');
        prefix.push_str(level);
        if level == cgroupfs || level.ends_with(&format!("-{systemd}")) {
            return Some(prefix);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pod_level_of_both_drivers() {
        let uid = PodUid::parse("0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0").expect("uid");
        assert_eq!(
            pod_level(
                "/kubepods/besteffort/pod0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0/abc",
                &uid
            )
            .as_deref(),
            Some("/kubepods/besteffort/pod0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0")
        );
        assert_eq!(
            pod_level(
                "/t/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0f1e2d3c_4b5a_6978_8796_a5b4c3d2e1f0.slice/cri-containerd-abc.scope",
                &uid
            )
            .as_deref(),
            Some(
                "/t/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0f1e2d3c_4b5a_6978_8796_a5b4c3d2e1f0.slice"
            )
        );
        assert_eq!(pod_level("/kubepods/besteffort/podother/abc", &uid), None);
    }

    #[test]
    fn roots_are_the_kubelets_names() {
        assert!(is_root_name("kubepods"));
        assert!(is_root_name("kubepods.slice"));
        assert!(is_root_name("kubelet-kubepods.slice"));
        assert!(!is_root_name("kubepods-burstable"));
        assert!(!is_root_name("system.slice"));
    }
}
