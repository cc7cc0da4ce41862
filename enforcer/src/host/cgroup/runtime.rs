//! How each container runtime names a container's cgroup inside a pod's
//! cgroup: one table, one row per name the runtimes produce. A name no row
//! matches is an unknown runtime, never a guess.
//!
//! Where the rows come from (each runtime's own source):
//! - containerd's CRI plugin asks runc/crun for `<pod slice>:cri-containerd:<id>`
//!   under the systemd driver, which becomes the transient unit
//!   `cri-containerd-<id>.scope`; under cgroupfs it uses `<pod cgroup>/<id>`.
//! - CRI-O uses the prefix `crio`: `crio-<id>.scope` (systemd) or
//!   `crio-<id>` (cgroupfs), and puts each container's monitor `conmon` in
//!   `crio-conmon-<id>.scope` / `crio-conmon-<id>` next to it. conmon is
//!   not the container: it is never enforced.
//! - Docker (through cri-dockerd) runs containers as `docker-<id>.scope`
//!   under systemd and `<pod cgroup>/<id>` under cgroupfs.
//!
//! The bare id of the cgroupfs driver does not say which runtime made it
//! (containerd or Docker): such containers are placed with
//! [`Runtime::Unnamed`].

use std::fmt;

use super::ids::{ContainerId, Driver};

/// The container runtime a container's cgroup name comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Runtime {
    Containerd,
    CriO,
    Docker,
    /// A bare `<id>` under the cgroupfs driver: containerd or Docker; the
    /// container is certain, the runtime is not named.
    Unnamed,
}

impl Runtime {
    /// The scheme of `containerStatuses[].containerID` (`containerd://<id>`),
    /// when the name says which runtime it is.
    pub fn scheme(self) -> Option<&'static str> {
        match self {
            Runtime::Containerd => Some("containerd"),
            Runtime::CriO => Some("cri-o"),
            Runtime::Docker => Some("docker"),
            Runtime::Unnamed => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Runtime::Containerd => "containerd",
            Runtime::CriO => "cri-o",
            Runtime::Docker => "docker",
            Runtime::Unnamed => "unnamed",
        }
    }
}

impl fmt::Display for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a process in a runtime's cgroup is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The container's own processes.
    Container,
    /// The runtime's monitor of the container (CRI-O's conmon): in the
    /// pod's cgroup, not in the container.
    Monitor,
}

/// One name a runtime gives a cgroup in a pod's cgroup:
/// `<prefix><id><suffix>`.
struct Row {
    driver: Driver,
    prefix: &'static str,
    suffix: &'static str,
    runtime: Runtime,
    role: Role,
}

/// Longer prefixes first: `crio-conmon-` must be tried before `crio-`.
const NAMES: &[Row] = &[
    Row {
        driver: Driver::Systemd,
        prefix: "cri-containerd-",
        suffix: ".scope",
        runtime: Runtime::Containerd,
        role: Role::Container,
    },
    Row {
        driver: Driver::Systemd,
        prefix: "crio-conmon-",
        suffix: ".scope",
        runtime: Runtime::CriO,
        role: Role::Monitor,
    },
    Row {
        driver: Driver::Systemd,
        prefix: "crio-",
        suffix: ".scope",
        runtime: Runtime::CriO,
        role: Role::Container,
    },
    Row {
        driver: Driver::Systemd,
        prefix: "docker-",
        suffix: ".scope",
        runtime: Runtime::Docker,
        role: Role::Container,
    },
    Row {
        driver: Driver::Cgroupfs,
        prefix: "crio-conmon-",
        suffix: "",
        runtime: Runtime::CriO,
        role: Role::Monitor,
    },
    Row {
        driver: Driver::Cgroupfs,
        prefix: "crio-",
        suffix: "",
        runtime: Runtime::CriO,
        role: Role::Container,
    },
    Row {
        driver: Driver::Cgroupfs,
        prefix: "",
        suffix: "",
        runtime: Runtime::Unnamed,
        role: Role::Container,
    },
];

/// A runtime's cgroup recognised by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeCgroup {
    pub runtime: Runtime,
    pub role: Role,
    pub id: ContainerId,
}

/// Why a name in a pod's cgroup is not a runtime's cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameError {
    /// No runtime of the table names cgroups this way.
    UnknownRuntime,
    /// A runtime's prefix, but what follows is no container id.
    BadContainerId,
}

/// Recognises the cgroup named `name` directly in a pod's cgroup.
pub fn recognise(driver: Driver, name: &str) -> Result<RuntimeCgroup, NameError> {
    for row in NAMES.iter().filter(|r| r.driver == driver) {
        let Some(rest) = name
            .strip_prefix(row.prefix)
            .and_then(|r| r.strip_suffix(row.suffix))
        else {
            continue;
        };
        match ContainerId::parse(rest) {
            Some(id) => {
                return Ok(RuntimeCgroup {
                    runtime: row.runtime,
                    role: row.role,
                    id,
                });
            }
            // The first (longest) prefix that matches decides:
            // `crio-conmon-<bad>` is conmon with a bad id, not a container
            // called `conmon-<bad>`.
            None if !row.prefix.is_empty() => return Err(NameError::BadContainerId),
            // The bare-id row has no prefix: only an id matches it.
            None => {}
        }
    }
    Err(NameError::UnknownRuntime)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4f3c2b1a09e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2918f7e6d5c4b3a291807";

    fn ok(driver: Driver, name: &str) -> (Runtime, Role) {
        let got = recognise(driver, name).unwrap_or_else(|e| panic!("{name}: {e:?}"));
        assert_eq!(got.id.as_str(), ID, "{name}");
        (got.runtime, got.role)
    }

    #[test]
    fn every_runtime_name_under_systemd() {
        use Role::*;
        use Runtime::*;
        let s = Driver::Systemd;
        assert_eq!(
            ok(s, &format!("cri-containerd-{ID}.scope")),
            (Containerd, Container)
        );
        assert_eq!(ok(s, &format!("crio-{ID}.scope")), (CriO, Container));
        assert_eq!(ok(s, &format!("crio-conmon-{ID}.scope")), (CriO, Monitor));
        assert_eq!(ok(s, &format!("docker-{ID}.scope")), (Docker, Container));
    }

    #[test]
    fn every_runtime_name_under_cgroupfs() {
        use Role::*;
        use Runtime::*;
        let c = Driver::Cgroupfs;
        assert_eq!(ok(c, ID), (Unnamed, Container));
        assert_eq!(ok(c, &format!("crio-{ID}")), (CriO, Container));
        assert_eq!(ok(c, &format!("crio-conmon-{ID}")), (CriO, Monitor));
    }

    #[test]
    fn unknown_runtimes_and_bad_ids_are_told_apart() {
        let s = Driver::Systemd;
        let c = Driver::Cgroupfs;
        for (driver, name, want) in [
            (s, format!("kata-{ID}.scope"), NameError::UnknownRuntime),
            (s, format!("libpod-{ID}.scope"), NameError::UnknownRuntime),
            (s, format!("{ID}.scope"), NameError::UnknownRuntime),
            (s, ID.to_string(), NameError::UnknownRuntime),
            // a systemd driver's name under cgroupfs and the reverse
            (
                c,
                format!("cri-containerd-{ID}.scope"),
                NameError::UnknownRuntime,
            ),
            (c, format!("docker-{ID}"), NameError::UnknownRuntime),
            (s, format!("crio-{ID}"), NameError::UnknownRuntime),
            (
                s,
                format!("cri-containerd-{}.scope", &ID[..12]),
                NameError::BadContainerId,
            ),
            (
                s,
                "crio-conmon-xyz.scope".to_string(),
                NameError::BadContainerId,
            ),
            (
                c,
                format!("crio-{}", ID.to_uppercase()),
                NameError::BadContainerId,
            ),
            (c, ID[..63].to_string(), NameError::UnknownRuntime),
        ] {
            assert_eq!(recognise(driver, &name), Err(want), "{driver}: {name}");
        }
    }
}
