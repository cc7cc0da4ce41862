//! Kubernetes identity of a process, from its cgroups.
//!
//! `/proc/PID/cgroup` is parsed once, at the border, into a [`Placement`]:
//! a container of a pod (pod UID, QoS class, container id, runtime,
//! cgroup driver), a runtime's monitor of a container (CRI-O's conmon),
//! outside every pod (host processes, kernel threads), or
//! [`Placement::Unplaceable`] with the [`Reason`] — a path that only
//! half-matches the kubelet's layout or names an unknown runtime is
//! never guessed at, and the daemon never signals such a process.
//!
//! - [`ids`]: the validated values (pod UID, container id, QoS, driver).
//! - [`runtime`]: the one table of how runtimes name container cgroups.
//! - [`path`]: one path against the kubelet's systemd and cgroupfs layouts.
//! - [`procfile`]: the whole file, cgroup v1, v2 and hybrid.
//!
//! Namespace and pod name need the API server, so [`PodInfo`] leaves them
//! `None` on the node agent's own.

pub mod ids;
mod path;
pub mod placement;
pub mod procfile;
pub mod runtime;
pub mod unified;

#[cfg(test)]
mod tests;

use std::path::Path;

pub use ids::{ContainerId, Driver, PodUid, QosClass};
pub use placement::{Container, Placement, Reason, Unplaceable};
pub use procfile::placement;
pub use runtime::Runtime;

/// Reads and places one process from `<proc_root>/<pid>/cgroup`.
pub fn placement_of_pid(proc_root: &Path, pid: u32) -> std::io::Result<Placement> {
    let text = std::fs::read_to_string(proc_root.join(pid.to_string()).join("cgroup"))?;
    Ok(placement(&text))
}

/// What is known about a process's pod (all `None` outside Kubernetes),
/// as violation reports carry it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodInfo {
    pub namespace: Option<String>,
    pub pod: Option<String>,
    pub pod_uid: Option<String>,
    pub container: Option<String>,
}

impl PodInfo {
    /// Reads `/proc/PID/cgroup`; a vanished process gives the default.
    pub fn of_pid(pid: u32) -> PodInfo {
        placement_of_pid(Path::new("/proc"), pid)
            .map(|p| PodInfo::from_placement(&p))
            .unwrap_or_default()
    }

    /// Parses the contents of a `/proc/PID/cgroup` file.
    pub fn from_cgroup(text: &str) -> PodInfo {
        PodInfo::from_placement(&placement(text))
    }

    /// The pod and container of a placement; a monitor's pod without a
    /// container; nothing for the rest.
    pub fn from_placement(placement: &Placement) -> PodInfo {
        match placement {
            Placement::Container(c) => PodInfo {
                pod_uid: Some(c.pod_uid.to_string()),
                container: Some(c.id.to_string()),
                ..PodInfo::default()
            },
            Placement::Monitor(c) => PodInfo {
                pod_uid: Some(c.pod_uid.to_string()),
                ..PodInfo::default()
            },
            Placement::Outside | Placement::Unplaceable(_) => PodInfo::default(),
        }
    }
}
