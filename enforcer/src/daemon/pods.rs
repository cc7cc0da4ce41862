//! The Pods bound to this node as the node agent enforces them: each Pod's
//! action and coverage from its annotations (the node's defaults where it
//! says nothing, or something invalid), kept current by a watch on the API
//! server with a field selector on `spec.nodeName`.
//!
//! The initial list is published at once (never a half-listed node); a
//! re-list after a watch error replaces everything. While the API server is
//! unreachable the last known Pods stay in force (their processes stay
//! enforced) and the table says it is disconnected.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
};

use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api,
    runtime::{
        WatchStreamExt as _,
        watcher::{self, Event},
    },
};

use super::workload::Workload;
use crate::{config::Mode, coverage::Coverage};

/// Annotation naming a Pod's action: `audit`, `stop`, `kill` or `off`.
pub const MODE_ANNOTATION: &str = "mapguard.io/mode";
/// Annotation naming a Pod's coverage: `full`, `writes`, `sampled`, `light`.
pub const COVERAGE_ANNOTATION: &str = "mapguard.io/coverage";

/// What the node does with Pods that say nothing (or something invalid).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeDefaults {
    /// `None`: not enforced.
    pub mode: Option<Mode>,
    pub coverage: Coverage,
}

/// One Pod of this node as enforced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodPolicy {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// The controller the Pod's metrics are counted under.
    pub workload: Workload,
    /// `None`: `off` (never probed on the hot path, never signalled).
    pub mode: Option<Mode>,
    pub coverage: Coverage,
    /// Container id (without the `containerd://` prefix) → container name.
    pub containers: HashMap<String, String>,
    /// The name of the Pod's container when its spec has exactly one (no
    /// init or ephemeral ones): the name of a container whose id the
    /// status does not list yet (the kubelet reports a restarted
    /// container's new id after it started, and the agent has enforced it
    /// at exec before that).
    pub sole_container: Option<String>,
    /// What was wrong with the Pod's annotations (defaults used instead).
    pub warnings: Vec<String>,
}

impl PodPolicy {
    /// The policy of `pod` given the node's defaults; `None` for a Pod
    /// without a UID (never seen from the API server).
    pub fn of(pod: &Pod, defaults: NodeDefaults) -> Option<PodPolicy> {
        let meta = &pod.metadata;
        let uid = meta.uid.clone()?;
        let annotations = meta.annotations.as_ref();
        let get = |key: &str| annotations.and_then(|a| a.get(key)).map(String::as_str);
        let mut warnings = Vec::new();
        let mode = match get(MODE_ANNOTATION) {
            None => defaults.mode,
            Some("off") => None,
            Some(value) => match value.parse::<ModeWord>() {
                Ok(ModeWord(mode)) => Some(mode),
                Err(()) => {
                    warnings.push(format!(
                        "{MODE_ANNOTATION}={value:?} is not audit, stop, kill or off; using the node's default"
                    ));
                    defaults.mode
                }
            },
        };
        let coverage = match get(COVERAGE_ANNOTATION) {
            None => defaults.coverage,
            Some(value) => Coverage::parse(value).unwrap_or_else(|| {
                warnings.push(format!(
                    "{COVERAGE_ANNOTATION}={value:?} is not full, writes, sampled or light; using the node's default"
                ));
                defaults.coverage
            }),
        };
        let containers = pod
            .status
            .iter()
            .flat_map(|s| {
                let lists = [
                    s.container_statuses.as_ref(),
                    s.init_container_statuses.as_ref(),
                    s.ephemeral_container_statuses.as_ref(),
                ];
                lists.into_iter().flatten().flatten()
            })
            .filter_map(|c| {
                let id = c.container_id.as_deref()?;
                let id = id.split_once("://").map_or(id, |(_, id)| id);
                Some((id.to_string(), c.name.clone()))
            })
            .collect();
        let sole_container = pod.spec.as_ref().and_then(|spec| {
            let others = spec.init_containers.as_ref().is_some_and(|c| !c.is_empty())
                || spec
                    .ephemeral_containers
                    .as_ref()
                    .is_some_and(|c| !c.is_empty());
            match spec.containers.as_slice() {
                [only] if !others => Some(only.name.clone()),
                _ => None,
            }
        });
        Some(PodPolicy {
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone().unwrap_or_default(),
            uid,
            workload: Workload::of(pod),
            mode,
            coverage,
            containers,
            sole_container,
            warnings,
        })
    }

    /// `namespace/name`.
    pub fn full_name(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// `audit|stop|kill` as annotation words.
struct ModeWord(Mode);

impl std::str::FromStr for ModeWord {
    type Err = ();
    fn from_str(s: &str) -> Result<ModeWord, ()> {
        <Mode as clap::ValueEnum>::from_str(s, false)
            .map(ModeWord)
            .map_err(|_| ())
    }
}

/// Pods by UID.
pub type PodMap = HashMap<String, PodPolicy>;

#[derive(Debug, Default)]
struct State {
    pods: Arc<PodMap>,
    synced: bool,
    connected: bool,
    last_error: Option<String>,
    buffer: Option<PodMap>,
}

/// The node's Pods, shared by the watch (writer) and the enforcement loop.
#[derive(Debug)]
pub struct PodTable {
    defaults: NodeDefaults,
    state: RwLock<State>,
}

impl PodTable {
    pub fn new(defaults: NodeDefaults) -> PodTable {
        PodTable {
            defaults,
            state: RwLock::new(State::default()),
        }
    }

    /// The Pods as last known.
    pub fn snapshot(&self) -> Arc<PodMap> {
        Arc::clone(&self.read().pods)
    }

    /// Whether the first full list has arrived.
    pub fn is_synced(&self) -> bool {
        self.read().synced
    }

    /// Whether the watch is up now (`None` reason when it is).
    pub fn connection(&self) -> Result<(), String> {
        let state = self.read();
        match (state.connected, &state.last_error) {
            (true, _) => Ok(()),
            (false, Some(e)) => Err(e.clone()),
            (false, None) => Err("not connected to the API server yet".into()),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies one watcher event. The initial list (`Init` … `InitDone`)
    /// is collected and published at once.
    pub fn apply(&self, event: Event<Pod>) {
        let policy = |pod: &Pod| PodPolicy::of(pod, self.defaults);
        let mut state = self.write();
        state.connected = true;
        state.last_error = None;
        match event {
            Event::Init => state.buffer = Some(PodMap::new()),
            Event::InitApply(pod) => {
                if let Some(p) = policy(&pod) {
                    log_warnings(&p);
                    if let Some(buffer) = state.buffer.as_mut() {
                        buffer.insert(p.uid.clone(), p);
                    }
                }
            }
            Event::InitDone => {
                let pods = state.buffer.take().unwrap_or_default();
                tracing::info!(pods = pods.len(), "pods of this node synced");
                state.pods = Arc::new(pods);
                state.synced = true;
            }
            Event::Apply(pod) => {
                if let Some(p) = policy(&pod) {
                    if state.pods.get(&p.uid).map(|old| &old.warnings) != Some(&p.warnings) {
                        log_warnings(&p);
                    }
                    Arc::make_mut(&mut state.pods).insert(p.uid.clone(), p);
                }
            }
            Event::Delete(pod) => {
                if let Some(uid) = pod.metadata.uid {
                    Arc::make_mut(&mut state.pods).remove(&uid);
                }
            }
        }
    }

    /// Records a watch failure (the last known Pods stay in force).
    pub fn failed(&self, error: String) {
        let mut state = self.write();
        state.connected = false;
        state.last_error = Some(error);
    }
}

fn log_warnings(p: &PodPolicy) {
    for w in &p.warnings {
        tracing::warn!(pod = %p.full_name(), "{w}");
    }
}

/// Watches the Pods bound to `node` until the task is dropped (errors are
/// retried with backoff; each one marks the table disconnected).
pub async fn watch(client: kube::Client, node: String, table: Arc<PodTable>) {
    let api: Api<Pod> = Api::all(client);
    let config = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let stream = watcher::watcher(api, config).default_backoff();
    futures_util::pin_mut!(stream);
    while let Some(event) = stream.next().await {
        match event {
            Ok(event) => table.apply(event),
            Err(error) => {
                tracing::warn!(%error, "pod watch failed; enforcing the pods last known, retrying");
                table.failed(error.to_string());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::core::v1::{Container, ContainerStatus, PodSpec, PodStatus};

    use super::*;

    const DEFAULTS: NodeDefaults = NodeDefaults {
        mode: None,
        coverage: Coverage::Sampled,
    };

    fn pod(uid: &str, annotations: &[(&str, &str)]) -> Pod {
        let mut p = Pod::default();
        p.metadata.name = Some(format!("pod-{uid}"));
        p.metadata.namespace = Some("shop".into());
        p.metadata.uid = Some(uid.into());
        p.metadata.annotations = Some(
            annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
        );
        p
    }

    #[test]
    fn annotations_decide_mode_and_coverage_with_node_defaults() {
        let p = PodPolicy::of(
            &pod(
                "u1",
                &[(MODE_ANNOTATION, "kill"), (COVERAGE_ANNOTATION, "writes")],
            ),
            DEFAULTS,
        )
        .expect("policy");
        assert_eq!((p.mode, p.coverage), (Some(Mode::Kill), Coverage::Writes));
        assert!(p.warnings.is_empty());

        let p = PodPolicy::of(&pod("u2", &[]), DEFAULTS).expect("policy");
        assert_eq!((p.mode, p.coverage), (None, Coverage::Sampled), "defaults");

        let p = PodPolicy::of(&pod("u3", &[(MODE_ANNOTATION, "off")]), DEFAULTS).expect("p");
        assert_eq!(p.mode, None);

        let node = NodeDefaults {
            mode: Some(Mode::Audit),
            coverage: Coverage::Light,
        };
        let p = PodPolicy::of(
            &pod(
                "u4",
                &[(MODE_ANNOTATION, "explode"), (COVERAGE_ANNOTATION, "all")],
            ),
            node,
        )
        .expect("policy");
        assert_eq!((p.mode, p.coverage), (Some(Mode::Audit), Coverage::Light));
        assert_eq!(p.warnings.len(), 2, "{:?}", p.warnings);
        assert!(p.warnings[0].contains("explode"));
    }

    #[test]
    fn container_ids_lose_their_runtime_prefix() {
        let mut p = pod("u5", &[]);
        p.status = Some(PodStatus {
            container_statuses: Some(vec![ContainerStatus {
                name: "app".into(),
                container_id: Some("containerd://abc123".into()),
                ..ContainerStatus::default()
            }]),
            ..PodStatus::default()
        });
        let policy = PodPolicy::of(&p, DEFAULTS).expect("policy");
        assert_eq!(
            policy.containers.get("abc123").map(String::as_str),
            Some("app")
        );
    }

    #[test]
    fn a_pod_of_one_container_names_it_for_ids_not_listed_yet() {
        let with = |names: &[&str]| {
            let mut p = pod("u6", &[]);
            p.spec = Some(PodSpec {
                containers: names
                    .iter()
                    .map(|n| Container {
                        name: n.to_string(),
                        ..Container::default()
                    })
                    .collect(),
                ..PodSpec::default()
            });
            PodPolicy::of(&p, DEFAULTS).expect("policy").sole_container
        };
        assert_eq!(with(&["racer"]).as_deref(), Some("racer"));
        assert_eq!(with(&["app", "sidecar"]), None, "ambiguous: the id is kept");
    }

    #[test]
    fn the_initial_list_is_published_at_once_and_failures_keep_the_pods() {
        let table = PodTable::new(DEFAULTS);
        assert!(table.connection().is_err());
        table.apply(Event::Init);
        table.apply(Event::InitApply(pod("a", &[(MODE_ANNOTATION, "kill")])));
        assert!(table.snapshot().is_empty() && !table.is_synced());
        table.apply(Event::InitDone);
        assert!(table.is_synced() && table.connection().is_ok());
        assert_eq!(table.snapshot().len(), 1);
        table.failed("connection refused".into());
        assert_eq!(table.connection(), Err("connection refused".to_string()));
        assert_eq!(table.snapshot().len(), 1, "last known pods stay in force");
        table.apply(Event::Delete(pod("a", &[])));
        assert!(table.snapshot().is_empty());
        assert!(
            table.connection().is_ok(),
            "an event means the watch is back"
        );
    }
}
