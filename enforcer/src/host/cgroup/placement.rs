//! Where a process is: the typed result of reading its cgroups, and the
//! reasons a process cannot be placed.

use std::fmt;

use super::{
    ids::{ContainerId, Driver, PodUid, QosClass},
    runtime::Runtime,
};

/// Where a process runs, as its cgroups say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// Not in any pod's cgroup: a host process, a kernel thread, the
    /// kubelet, the runtime itself.
    Outside,
    /// A process of a container of a pod.
    Container(Container),
    /// A runtime's monitor of a container (CRI-O's conmon): in the pod's
    /// cgroup but not in the container. Never enforced.
    Monitor(Container),
    /// In the kubelet's hierarchy but not placeable with certainty. The
    /// daemon logs it and never signals the process.
    Unplaceable(Unplaceable),
}

impl Placement {
    /// The container, only when the process certainly runs in one.
    pub fn container(&self) -> Option<&Container> {
        match self {
            Placement::Container(c) => Some(c),
            _ => None,
        }
    }

    /// A short word for logs and bounded metric labels.
    pub fn label(&self) -> &'static str {
        match self {
            Placement::Outside => "outside",
            Placement::Container(_) => "container",
            Placement::Monitor(_) => "monitor",
            Placement::Unplaceable(_) => "unplaceable",
        }
    }
}

/// A container of a pod, as named by its cgroup.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Container {
    pub pod_uid: PodUid,
    pub qos: QosClass,
    pub id: ContainerId,
    pub runtime: Runtime,
    pub driver: Driver,
    /// The process is in a cgroup the container made inside its own
    /// (systemd running in the container, crun's `container` child): it
    /// is still the container's.
    pub nested: bool,
}

/// A process the kubelet's hierarchy holds but that cannot be placed, with
/// the cgroup path that says so.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot place process in cgroup {path:?}: {reason}")]
pub struct Unplaceable {
    pub reason: Reason,
    pub path: String,
}

/// Why a process cannot be placed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// A cgroup in a pod's cgroup that no known runtime names this way.
    UnknownRuntime { name: String },
    /// A known runtime's name without a valid container id.
    BadContainerId { name: String },
    /// A pod level whose UID is neither a UUID nor a static pod's hash.
    BadPodUid { name: String },
    /// In the kubelet's hierarchy (the root, a QoS level or a pod's own
    /// cgroup) but in no container.
    NotInContainer,
    /// A level the kubelet does not create (`/kubepods/foo/...`).
    UnexpectedLevel { name: String },
    /// systemd slices that do not nest as their names say
    /// (`kubepods.slice/other-burstable.slice`).
    BrokenSliceChain { name: String },
    /// The path leaves the reader's cgroup namespace (`/../..`) and what
    /// remains names a pod without the kubelet's root: run the agent in
    /// the host's cgroup namespace.
    OutsideCgroupNamespace,
    /// Two hierarchies (cgroup v1 controllers, v2) place the process
    /// differently; `other` is the second path.
    HierarchiesDisagree { other: String },
    /// The cgroup was removed (`(deleted)`): an exited process.
    Deleted,
    /// A line of `/proc/PID/cgroup` that is not `ID:CONTROLLERS:PATH`.
    Malformed,
}

impl Reason {
    /// A short fixed word per reason, for bounded metric labels.
    pub fn label(&self) -> &'static str {
        match self {
            Reason::UnknownRuntime { .. } => "unknown_runtime",
            Reason::BadContainerId { .. } => "bad_container_id",
            Reason::BadPodUid { .. } => "bad_pod_uid",
            Reason::NotInContainer => "not_in_container",
            Reason::UnexpectedLevel { .. } => "unexpected_level",
            Reason::BrokenSliceChain { .. } => "broken_slice_chain",
            Reason::OutsideCgroupNamespace => "outside_cgroup_namespace",
            Reason::HierarchiesDisagree { .. } => "hierarchies_disagree",
            Reason::Deleted => "deleted",
            Reason::Malformed => "malformed",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::UnknownRuntime { name } => {
                write!(
                    f,
                    "{name:?} in a pod's cgroup is no known runtime's container"
                )
            }
            Reason::BadContainerId { name } => {
                write!(
                    f,
                    "{name:?} has a runtime's prefix but no 64-digit container id"
                )
            }
            Reason::BadPodUid { name } => write!(f, "{name:?} holds no valid pod UID"),
            Reason::NotInContainer => {
                f.write_str("in the kubelet's hierarchy but in no container's cgroup")
            }
            Reason::UnexpectedLevel { name } => {
                write!(f, "{name:?} is no level the kubelet creates")
            }
            Reason::BrokenSliceChain { name } => {
                write!(
                    f,
                    "systemd slice {name:?} does not extend its parent's name"
                )
            }
            Reason::OutsideCgroupNamespace => f.write_str(
                "the path leaves this reader's cgroup namespace and hides the kubelet's root; \
                 run the agent in the host cgroup namespace",
            ),
            Reason::HierarchiesDisagree { other } => {
                write!(f, "another hierarchy places it elsewhere ({other:?})")
            }
            Reason::Deleted => f.write_str("the cgroup has been removed"),
            Reason::Malformed => f.write_str("not a line of /proc/PID/cgroup"),
        }
    }
}
