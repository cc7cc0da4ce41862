//! The cgroups the exec hook acts on: each resolved Pod's own cgroup with
//! the Pod's policy (named from the v2 path of a process of the Pod), and
//! the kubelet's `kubepods` roots present in the v2 hierarchy.

use mapguard_api::mode::Mode;
use mapguard_common::{CgroupPolicy, cgroup_kind};

use super::KindLabels;
use mapguard_enforcer::host::cgroup::{self, unified};

use crate::daemon::{
    pods::{PodMap, PodPolicy},
    reconcile::Enforcement,
};

/// What the hook should do with the processes of `pod`.
pub(super) fn policy_of(pod: &PodPolicy) -> CgroupPolicy {
    CgroupPolicy {
        kind: cgroup_kind::POD,
        mode: pod.mode.map_or(0, Mode::kernel),
        // What the binary's shared probes check until the process's own
        // are in place (the probes of `sampled` and `light` are its own, or none).
        shared_ops: pod.coverage.shared_ops(),
        at_limit: 0,
        _pad: [0; 4],
    }
}

impl Enforcement {
    /// Names `pod`'s cgroup (where process `pid` runs) to the hook.
    pub(in crate::daemon::reconcile) fn note_pod_cgroup(&mut self, pid: u32, pod: &PodPolicy) {
        let proc_root = self.scanner.proc_root().to_path_buf();
        let Some(exec) = self.exec.as_mut() else {
            return;
        };
        if exec.pods.contains_key(&pod.uid) {
            return;
        }
        let Some(mount) = exec.unified.clone() else {
            return;
        };
        let Some(uid) = cgroup::PodUid::parse(&pod.uid) else {
            return;
        };
        let Some(level) =
            unified::path_of_pid(&proc_root, pid).and_then(|p| unified::pod_level(&p, &uid))
        else {
            return;
        };
        let Some(id) = unified::id(&mount, &level) else {
            return;
        };
        let policy = policy_of(pod);
        match exec.hook.set_cgroup(id, policy) {
            Ok(()) => {
                tracing::debug!(pod = %pod.full_name(), cgroup = %level, id, "pod cgroup named to the exec hook");
                exec.pods.insert(pod.uid.clone(), (id, policy));
            }
            Err(e) => {
                tracing::warn!(pod = %pod.full_name(), error = %e, "cannot name a pod's cgroup to the exec hook")
            }
        }
    }

    /// Brings the hook's cgroups in line with the node's Pods and the
    /// kubepods roots present; adopts holds the ring buffer did not carry.
    pub(in crate::daemon::reconcile) fn sync_exec(&mut self, pods: &PodMap) {
        let at_limit = self.pods_at_limit();
        let Some(exec) = self.exec.as_mut() else {
            return;
        };
        if let Some(mount) = exec.unified.clone() {
            let roots = unified::kubepods_roots(&mount);
            for (path, id) in &roots {
                if exec.roots.contains_key(id) {
                    continue;
                }
                let policy = CgroupPolicy {
                    kind: cgroup_kind::KUBEPODS,
                    ..CgroupPolicy::default()
                };
                match exec.hook.set_cgroup(*id, policy) {
                    Ok(()) => {
                        tracing::info!(cgroup = %path, "new processes under this kubepods root are held until their Pod is resolved and their probes are in place");
                        exec.roots.insert(*id, path.clone());
                    }
                    Err(e) => {
                        tracing::warn!(cgroup = %path, error = %e, "cannot name a kubepods root to the exec hook")
                    }
                }
            }
            let hook = &mut exec.hook;
            exec.roots.retain(|id, _| {
                let present = roots.iter().any(|(_, r)| r == id);
                if !present {
                    hook.remove_cgroup(*id);
                }
                present
            });
        }
        let hook = &mut exec.hook;
        exec.pods.retain(|uid, (id, policy)| match pods.get(uid) {
            None => {
                hook.remove_cgroup(*id);
                false
            }
            Some(pod) => {
                let now = CgroupPolicy {
                    at_limit: u8::from(at_limit.contains(uid)),
                    ..policy_of(pod)
                };
                if now != *policy && hook.set_cgroup(*id, now).is_ok() {
                    *policy = now;
                }
                true
            }
        });
        for (pid, hold) in exec.hook.holds() {
            exec.pending.entry(pid).or_insert(hold);
        }
        exec.metrics
            .cgroups
            .get_or_create(&KindLabels { kind: "pod" })
            .set(exec.pods.len() as i64);
        exec.metrics
            .cgroups
            .get_or_create(&KindLabels {
                kind: "kubepods_root",
            })
            .set(exec.roots.len() as i64);
    }
}
