//! One cgroup path read against the kubelet's layouts.
//!
//! The kubelet puts every pod under a `kubepods` root, one level per QoS
//! class except Guaranteed, one level per pod, and the runtime adds one per
//! container:
//!
//! | driver | path |
//! |---|---|
//! | systemd | `kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid, _ for ->.slice/<runtime>-<id>.scope` |
//! | systemd, Guaranteed | `kubepods.slice/kubepods-pod<uid>.slice/<runtime>-<id>.scope` |
//! | cgroupfs | `kubepods/burstable/pod<uid>/<id>` (`besteffort`, or no level for Guaranteed) |
//!
//! The root can sit below other levels: the kubelet's `--cgroup-root`
//! (`kubelet.slice/kubelet-kubepods.slice/...` on kind nodes), a node
//! running in a container, or a reader in another cgroup namespace, which
//! sees `/../..` in front. So the first `kubepods` level anchors the
//! layout; everything after it must match exactly, up to the container's
//! own cgroup, below which a container may make cgroups of its own.
//! systemd slice names spell out their whole ancestry
//! (`kubepods-burstable-pod<uid>.slice` lives in `kubepods-burstable.slice`
//! in `kubepods.slice`), so a reader that sees only the pod's slice still
//! knows where it is; the cgroupfs names do not, and without their root
//! they are refused. A path that names `kubepods` in no level of the
//! kubelet's making is refused too, never taken for a host process.

use super::{
    ids::{Driver, PodUid, QosClass},
    placement::{Container, Reason},
    runtime::{self, NameError, Role},
};

/// What one path says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum PathClass {
    Outside,
    Container(Container),
    Monitor(Container),
    Unplaceable(Reason),
}

/// The kubelet's name of its root: a level of its own under cgroupfs, a
/// dash-separated part of every slice name under systemd.
const KUBEPODS: &str = "kubepods";
const SLICE: &str = ".slice";
const DELETED: &str = " (deleted)";

/// Reads one cgroup path (as `/proc/PID/cgroup` shows it).
pub(super) fn classify(path: &str) -> PathClass {
    if let Some(live) = path.strip_suffix(DELETED) {
        return match classify(live) {
            PathClass::Outside => PathClass::Outside,
            _ => PathClass::Unplaceable(Reason::Deleted),
        };
    }
    let mut levels = path.split('/').filter(|l| !l.is_empty());
    if !path.contains(KUBEPODS) {
        // Most processes of a node: no anchor, nothing to allocate.
        let leaves_namespace = levels.next() == Some("..");
        return if leaves_namespace && levels.any(cgroupfs_pod_level) {
            PathClass::Unplaceable(Reason::OutsideCgroupNamespace)
        } else {
            PathClass::Outside
        };
    }
    let levels: Vec<&str> = levels.collect();
    let Some(anchor) = levels
        .iter()
        .position(|l| *l == KUBEPODS || is_kubepods_slice(l))
    else {
        // Named after the kubelet's root but no level of it (a runtime
        // told the systemd driver's parent while using cgroupfs writes
        // `kubepods-burstable-pod<uid>.slice:cri-containerd:<id>`).
        let name = levels.iter().find(|l| l.contains(KUBEPODS)).unwrap_or(&"");
        return PathClass::Unplaceable(Reason::UnexpectedLevel {
            name: name.to_string(),
        });
    };
    let result = if levels[anchor] == KUBEPODS {
        cgroupfs(&levels[anchor + 1..])
    } else {
        systemd(&levels[anchor..])
    };
    result.unwrap_or_else(PathClass::Unplaceable)
}

/// `kubepods.slice`, `kubepods-burstable.slice`, `kubelet-kubepods.slice`, ...
fn is_kubepods_slice(level: &str) -> bool {
    level
        .strip_suffix(SLICE)
        .is_some_and(|stem| stem.split('-').any(|part| part == KUBEPODS))
}

/// `pod<uid>` as the cgroupfs driver names a pod.
fn cgroupfs_pod_level(level: &str) -> bool {
    level
        .strip_prefix("pod")
        .is_some_and(|uid| PodUid::parse(uid).is_some())
}

/// `levels` are what follows `kubepods`.
fn cgroupfs(levels: &[&str]) -> Result<PathClass, Reason> {
    let (qos, rest) = match levels.first().and_then(|l| QosClass::from_level(l)) {
        Some(qos) => (qos, &levels[1..]),
        None => (QosClass::Guaranteed, levels),
    };
    let [pod, rest @ ..] = rest else {
        return Err(Reason::NotInContainer);
    };
    let pod_uid = match pod.strip_prefix("pod") {
        Some(uid) => PodUid::parse(uid).ok_or_else(|| Reason::BadPodUid {
            name: pod.to_string(),
        })?,
        None => {
            return Err(Reason::UnexpectedLevel {
                name: pod.to_string(),
            });
        }
    };
    container(Driver::Cgroupfs, pod_uid, qos, rest)
}

/// `levels` start at the first kubepods slice.
fn systemd(levels: &[&str]) -> Result<PathClass, Reason> {
    let slices = levels.iter().take_while(|l| l.ends_with(SLICE)).count();
    let stems: Vec<&str> = levels[..slices]
        .iter()
        .map(|l| l.strip_suffix(SLICE).unwrap_or(l))
        .collect();
    for pair in stems.windows(2) {
        let extends = pair[1]
            .strip_prefix(pair[0])
            .and_then(|rest| rest.strip_prefix('-'))
            .is_some_and(|part| !part.is_empty() && !part.contains('-'));
        if !extends {
            return Err(Reason::BrokenSliceChain {
                name: format!("{}{SLICE}", pair[1]),
            });
        }
    }
    let last = stems[slices - 1];
    let unexpected = || Reason::UnexpectedLevel {
        name: format!("{last}{SLICE}"),
    };
    let parts: Vec<&str> = last.split('-').collect();
    // Always found: the anchor names kubepods and each later slice
    // extends the one before.
    let root = parts
        .iter()
        .position(|p| *p == KUBEPODS)
        .ok_or_else(unexpected)?;
    let (qos, pod) = match parts[root + 1..] {
        [] => return Err(Reason::NotInContainer),
        [level] => match QosClass::from_level(level) {
            Some(_) => return Err(Reason::NotInContainer),
            None => (QosClass::Guaranteed, level),
        },
        [level, pod] => (QosClass::from_level(level).ok_or_else(unexpected)?, pod),
        _ => return Err(unexpected()),
    };
    let Some(uid) = pod.strip_prefix("pod") else {
        return Err(unexpected());
    };
    let pod_uid = PodUid::parse_systemd(uid).ok_or_else(|| Reason::BadPodUid {
        name: format!("{last}{SLICE}"),
    })?;
    container(Driver::Systemd, pod_uid, qos, &levels[slices..])
}

/// `levels` follow the pod's own level: the runtime's cgroup, then any
/// the container made inside it.
fn container(
    driver: Driver,
    pod_uid: PodUid,
    qos: QosClass,
    levels: &[&str],
) -> Result<PathClass, Reason> {
    let [name, inside @ ..] = levels else {
        return Err(Reason::NotInContainer);
    };
    let found = runtime::recognise(driver, name).map_err(|e| match e {
        NameError::UnknownRuntime => Reason::UnknownRuntime {
            name: name.to_string(),
        },
        NameError::BadContainerId => Reason::BadContainerId {
            name: name.to_string(),
        },
    })?;
    let placed = Container {
        pod_uid,
        qos,
        id: found.id,
        runtime: found.runtime,
        driver,
        nested: !inside.is_empty(),
    };
    Ok(match found.role {
        Role::Container => PathClass::Container(placed),
        Role::Monitor => PathClass::Monitor(placed),
    })
}
