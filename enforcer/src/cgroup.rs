//! Kubernetes identity of a process, from its cgroup path.
//!
//! The kubelet names pod cgroups after the pod UID
//! (`kubepods-burstable-pod<uid>.slice` with systemd, `pod<uid>` with
//! cgroupfs) and runtimes name the container's cgroup after its id
//! (`cri-containerd-<id>.scope`, `crio-<id>.scope`, `docker-<id>.scope`,
//! or the bare id). Namespace and pod name need the API server, so they
//! stay `None` on the node agent's own.

/// What is known about a process's pod (all `None` outside Kubernetes).
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
        std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .map(|text| PodInfo::from_cgroup(&text))
            .unwrap_or_default()
    }

    /// Parses the contents of a `/proc/PID/cgroup` file.
    pub fn from_cgroup(text: &str) -> PodInfo {
        let Some(path) = text
            .lines()
            .filter_map(|l| l.splitn(3, ':').nth(2))
            .find(|p| p.contains("kubepods"))
        else {
            return PodInfo::default();
        };
        let mut info = PodInfo::default();
        for part in path.split('/') {
            let name = part.trim_end_matches(".slice").trim_end_matches(".scope");
            if let Some(uid) = pod_uid(name) {
                info.pod_uid = Some(uid);
            } else if info.pod_uid.is_some() {
                let id = name.rsplit_once('-').map_or(name, |(_, id)| id);
                if id.len() >= 12 && id.chars().all(|c| c.is_ascii_hexdigit()) {
                    info.container = Some(id.to_string());
                }
            }
        }
        info
    }
}

/// `kubepods-burstable-pod1234_abcd.slice` or `pod1234-abcd` → the UID.
fn pod_uid(name: &str) -> Option<String> {
    let uid = if name.starts_with("kubepods") {
        &name[name.rfind("-pod")? + 4..]
    } else {
        name.strip_prefix("pod")?
    };
    (uid.len() >= 32
        && uid
            .chars()
            .all(|c| c.is_ascii_hexdigit() || c == '-' || c == '_'))
    .then(|| uid.replace('_', "-"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn systemd_driver_path() {
        let text = "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0f1e2d3c_4b5a_6978_8796_a5b4c3d2e1f0.slice/cri-containerd-9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b.scope\n";
        let info = PodInfo::from_cgroup(text);
        assert_eq!(
            info.pod_uid.as_deref(),
            Some("0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0")
        );
        assert_eq!(
            info.container.as_deref(),
            Some("9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b")
        );
        assert_eq!(info.pod, None);
    }

    #[test]
    fn cgroupfs_driver_path() {
        let text = "0::/kubepods/besteffort/pod0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0/0123456789abcdef0123\n";
        let info = PodInfo::from_cgroup(text);
        assert_eq!(
            info.pod_uid.as_deref(),
            Some("0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0")
        );
        assert_eq!(info.container.as_deref(), Some("0123456789abcdef0123"));
    }

    #[test]
    fn outside_kubernetes_everything_is_none() {
        let info = PodInfo::from_cgroup("0::/user.slice/user-0.slice/session-3.scope\n");
        assert_eq!(info, PodInfo::default());
    }
}
