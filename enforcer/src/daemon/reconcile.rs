//! The node agent's enforcement loop: places each process of the node in
//! its Pod (through its cgroup), puts the processes of enforced Pods under
//! enforcement with their Pod's action and coverage, follows Pods and
//! processes as they come, change and go, and reports what the probes find.
//!
//! A process is enforced only when its cgroup names the UID of a Pod bound
//! to this node whose mode is not `off`: a process the agent cannot place
//! is never probed on the hot path and never signalled.

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use crate::{
    cgroup::PodInfo,
    config::Mode,
    coverage::Coverage,
    events::ViolationRecord,
    procfs,
    session::{Session, SessionError},
    target::TargetError,
};

use super::{
    metrics::Metrics,
    pods::{PodMap, PodTable},
};

/// A process of the node as placed by its cgroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    pub pid: u32,
    /// Start time in clock ticks since boot: with the pid, the process's
    /// identity (pids are reused).
    pub start: u64,
    pub pod_uid: String,
    pub container: Option<String>,
}

/// Every process on the node whose cgroup is a Pod's.
pub fn scan(proc_root: &std::path::Path) -> Vec<Placed> {
    let Ok(dir) = std::fs::read_dir(proc_root) else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let cgroup = std::fs::read_to_string(proc_root.join(format!("{pid}/cgroup"))).ok()?;
            let info = PodInfo::from_cgroup(&cgroup);
            Some(Placed {
                pid,
                start: procfs::start_time(pid)?,
                pod_uid: info.pod_uid?,
                container: info.container,
            })
        })
        .collect()
}

/// How one process is enforced now.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Enforced {
    start: u64,
    pod_uid: String,
    mode: Mode,
    coverage: Coverage,
}

/// The loop's state: the session, and what is enforced.
pub struct Enforcement {
    session: Session,
    pods: Arc<PodTable>,
    metrics: Arc<Metrics>,
    proc_root: PathBuf,
    enforced: HashMap<u32, Enforced>,
    /// Files that cannot be enforced (not Go, unsupported release), by
    /// `(device, inode)`, so they are analysed once.
    refused: HashMap<(u64, u64), String>,
    /// Processes already counted as failed, so each counts once.
    failed: HashSet<(u32, u64)>,
}

impl Enforcement {
    pub fn new(
        session: Session,
        pods: Arc<PodTable>,
        metrics: Arc<Metrics>,
        proc_root: PathBuf,
    ) -> Enforcement {
        Enforcement {
            session,
            pods,
            metrics,
            proc_root,
            enforced: HashMap::new(),
            refused: HashMap::new(),
            failed: HashSet::new(),
        }
    }

    /// Runs until `stop` returns true: reports what the probes find as it
    /// comes (each record also goes to `on_record`) and re-places the
    /// node's processes every `interval`.
    pub fn run(
        mut self,
        interval: Duration,
        stop: impl Fn() -> bool,
        mut on_record: impl FnMut(&ViolationRecord),
    ) {
        let mut last = Instant::now() - interval;
        while !stop() {
            for record in self.session.poll(Duration::from_millis(50)) {
                self.metrics.violation(&record);
                on_record(&record);
            }
            if last.elapsed() >= interval {
                last = Instant::now();
                self.reconcile();
            }
        }
        self.session.finish();
    }

    /// Brings enforcement in line with the node's Pods and processes.
    pub fn reconcile(&mut self) {
        let pods = self.pods.snapshot();
        let placed = scan(&self.proc_root);
        self.metrics
            .set_api_connected(self.pods.connection().is_ok());
        self.metrics.set_pods(
            pods.len(),
            pods.values().filter(|p| p.mode.is_some()).count(),
        );
        let live: HashMap<u32, &Placed> = placed.iter().map(|p| (p.pid, p)).collect();

        // Processes gone, reused pids, Pods gone or changed.
        let stale: Vec<u32> = self
            .enforced
            .iter()
            .filter(|(pid, e)| wanted(&pods, live.get(pid).copied()) != Some((**e).clone()))
            .map(|(pid, _)| *pid)
            .collect();
        for pid in stale {
            self.session.forget_process(pid);
            self.enforced.remove(&pid);
            tracing::info!(pid, "no longer enforced");
        }

        for p in &placed {
            if self.enforced.contains_key(&p.pid) {
                continue;
            }
            let Some(want) = wanted(&pods, Some(p)) else {
                continue;
            };
            if let Err(e) = self.enforce(p, &pods, &want) {
                if self.failed.insert((p.pid, p.start)) {
                    self.metrics.attach_failed(e.reason());
                    tracing::warn!(pid = p.pid, error = %e.message, "cannot enforce");
                }
                continue;
            }
            self.enforced.insert(p.pid, want);
        }
        self.failed.retain(|(pid, _)| live.contains_key(pid));
        self.metrics
            .set_enforced(self.enforced.len(), self.session.binary_count());
        self.metrics
            .set_incomplete_checks(&self.session.incomplete_checks());
    }

    fn enforce(&mut self, p: &Placed, pods: &PodMap, want: &Enforced) -> Result<(), Failure> {
        let exe = self.proc_root.join(format!("{}/exe", p.pid));
        let file = procfs::file_id(&exe).ok_or(Failure::gone())?;
        if let Some(reason) = self.refused.get(&file) {
            return Err(Failure {
                reason: "not_enforceable",
                message: reason.clone(),
            });
        }
        let target = match self.session.binary(&exe, 0) {
            Ok(t) => t,
            Err(SessionError::Target { source, .. }) if procfs::alive(p.pid) => {
                let binary = std::fs::read_link(&exe).unwrap_or(exe);
                let message = format!("{}: {source}", binary.display());
                self.refused.insert(file, message.clone());
                return Err(Failure {
                    reason: match source {
                        TargetError::GoElf(crate::goelf::GoElfError::NotGo { .. }) => "not_go",
                        TargetError::GoElf(crate::goelf::GoElfError::UnsupportedGoVersion {
                            ..
                        }) => "unsupported_go",
                        _ => "not_enforceable",
                    },
                    message,
                });
            }
            Err(e) if procfs::alive(p.pid) => {
                return Err(Failure {
                    reason: "attach",
                    message: e.to_string(),
                });
            }
            Err(_) => return Err(Failure::gone()),
        };
        let pod = &pods[&p.pod_uid];
        let container = p.container.as_ref().map(|id| {
            pod.containers
                .get(id)
                .cloned()
                .unwrap_or_else(|| id.clone())
        });
        self.session.set_pod(
            p.pid,
            PodInfo {
                namespace: Some(pod.namespace.clone()),
                pod: Some(pod.name.clone()),
                pod_uid: Some(pod.uid.clone()),
                container,
            },
        );
        self.session
            .guard_process(p.pid, &target, want.mode.action(), want.coverage)
            .map_err(|e| {
                if procfs::alive(p.pid) {
                    Failure {
                        reason: "attach",
                        message: e.to_string(),
                    }
                } else {
                    Failure::gone()
                }
            })?;
        tracing::info!(
            pid = p.pid,
            pod = %pod.full_name(),
            mode = ?want.mode,
            coverage = %want.coverage,
            "enforcing"
        );
        Ok(())
    }
}

/// How process `p` should be enforced now, if at all.
fn wanted(pods: &PodMap, p: Option<&Placed>) -> Option<Enforced> {
    let p = p?;
    let pod = pods.get(&p.pod_uid)?;
    Some(Enforced {
        start: p.start,
        pod_uid: p.pod_uid.clone(),
        mode: pod.mode?,
        coverage: pod.coverage,
    })
}

/// Why a process could not be put under enforcement.
struct Failure {
    reason: &'static str,
    message: String,
}

impl Failure {
    fn gone() -> Failure {
        Failure {
            reason: "exited",
            message: "the process exited".into(),
        }
    }

    fn reason(&self) -> &'static str {
        self.reason
    }
}
