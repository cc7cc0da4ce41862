//! The Pods bound to this node as the node agent enforces them: each Pod's
//! action and coverage from its annotations (the node's defaults where it
//! says nothing, or something invalid), raised to the minimum its
//! namespace demands, kept current by a watch on the API server with a
//! field selector on `spec.nodeName` and a watch on the Namespaces.
//!
//! A namespace demands a minimum with its labels `mapguard.io/mode`
//! (`off` < `audit` < `stop` < `kill`) and `mapguard.io/min-coverage`
//! ([`Coverage::strength`]); a Pod there gets the stronger of its own
//! annotation and the namespace's demand, unless the namespace is labelled
//! `mapguard.io/allow-opt-out: "true"` (then the Pod's annotation wins).
//! The admission policies (policies/mode.rego) deny a Pod that asks for
//! less; the agent applies the same rule itself, so a Pod admitted while
//! the webhook was away, or before its namespace demanded more, gets the
//! minimum too. Until the Namespaces are listed (or while they cannot be
//! read) the Pods' annotations alone decide, and `/readyz` says so.
//!
//! Both watches go through the toolkit's reflector ([`mapguard_kube::cache`]):
//! the initial list is published at once (never a half-listed node); a
//! re-list after a watch error replaces everything. While the API server is
//! unreachable the last known Pods stay in force (their processes stay
//! enforced) and the table says it is disconnected.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, RwLock},
};

use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::{
    Api,
    runtime::watcher::{self, Event},
};
use mapguard_kube::{Cache, Reflector, Update};

use mapguard_api::{
    keys::{
        COVERAGE_ANNOTATION, MODE_ANNOTATION, NAMESPACE_MIN_COVERAGE_LABEL, NAMESPACE_MODE_LABEL,
        NAMESPACE_OPT_OUT_LABEL,
    },
    mode::{Coverage, Mode, PodMode},
};

use super::workload::Workload;

/// What the node does with Pods that say nothing (or something invalid).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeDefaults {
    /// `None`: not enforced.
    pub mode: Option<Mode>,
    pub coverage: Coverage,
}

/// What a namespace demands of its Pods, from its labels (an invalid
/// value demands nothing).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NamespaceDemand {
    /// The least mode; `None`: none (no label, `off`, or invalid).
    pub mode: Option<Mode>,
    /// The least coverage; `None`: none.
    pub min_coverage: Option<Coverage>,
    /// `mapguard.io/allow-opt-out: "true"`: the Pods' annotations win.
    pub opt_out: bool,
}

impl NamespaceDemand {
    /// The demand of `namespace` from its labels.
    pub fn of(namespace: &Namespace) -> NamespaceDemand {
        let labels = namespace.metadata.labels.as_ref();
        let get = |key: &str| labels.and_then(|l| l.get(key)).map(String::as_str);
        NamespaceDemand {
            mode: get(NAMESPACE_MODE_LABEL)
                .and_then(|v| v.parse::<PodMode>().ok())
                .and_then(PodMode::mode),
            min_coverage: get(NAMESPACE_MIN_COVERAGE_LABEL).and_then(Coverage::parse),
            opt_out: get(NAMESPACE_OPT_OUT_LABEL) == Some("true"),
        }
    }
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
    /// What was wrong with the Pod's annotations (defaults used instead),
    /// and where its namespace raised them.
    pub warnings: Vec<String>,
    /// The annotations as the Pod sets them (mode, coverage).
    asked: (Option<String>, Option<String>),
}

impl PodPolicy {
    /// The policy of `pod` given the node's defaults and what its
    /// namespace demands (`None`: not known); `None` for a Pod without a
    /// UID (never seen from the API server).
    pub fn of(
        pod: &Pod,
        defaults: NodeDefaults,
        demand: Option<&NamespaceDemand>,
    ) -> Option<PodPolicy> {
        let meta = &pod.metadata;
        let uid = meta.uid.clone()?;
        let annotations = meta.annotations.as_ref();
        let get = |key: &str| annotations.and_then(|a| a.get(key)).cloned();
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
        let mut policy = PodPolicy {
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone().unwrap_or_default(),
            uid,
            workload: Workload::of(pod),
            mode: None,
            coverage: defaults.coverage,
            containers,
            sole_container,
            warnings: Vec::new(),
            asked: (get(MODE_ANNOTATION), get(COVERAGE_ANNOTATION)),
        };
        policy.settle(defaults, demand);
        Some(policy)
    }

    /// Sets `mode`, `coverage` and `warnings` from the Pod's annotations,
    /// the node's defaults and its namespace's demand.
    ///
    /// A Pod without a (valid) mode annotation gets its namespace's mode,
    /// as the webhook would have injected it, else the node's default.
    /// Then, unless the namespace allows opting out, the mode and coverage
    /// are raised to the namespace's minimum.
    fn settle(&mut self, defaults: NodeDefaults, demand: Option<&NamespaceDemand>) {
        let demand = demand.copied().unwrap_or_default();
        let mut warnings = Vec::new();
        let unset = demand.mode.or(defaults.mode);
        let mut mode = match self.asked.0.as_deref() {
            None => unset,
            Some(value) => match value.parse::<PodMode>() {
                Ok(mode) => mode.mode(),
                Err(_) => {
                    warnings.push(format!(
                        "{MODE_ANNOTATION}={value:?} is not audit, stop, kill or off; using the namespace's mode or the node's default"
                    ));
                    unset
                }
            },
        };
        let mut coverage = match self.asked.1.as_deref() {
            None => defaults.coverage,
            Some(value) => Coverage::parse(value).unwrap_or_else(|| {
                warnings.push(format!(
                    "{COVERAGE_ANNOTATION}={value:?} is not full, writes, sampled or light; using the node's default"
                ));
                defaults.coverage
            }),
        };
        if !demand.opt_out {
            if PodMode(mode) < PodMode(demand.mode) {
                warnings.push(format!(
                    "mode {} is weaker than namespace {}'s {NAMESPACE_MODE_LABEL}={} (no {NAMESPACE_OPT_OUT_LABEL}=\"true\"); enforcing {}",
                    PodMode(mode),
                    self.namespace,
                    PodMode(demand.mode),
                    PodMode(demand.mode),
                ));
                mode = demand.mode;
            }
            if let Some(min) = demand.min_coverage
                && coverage.strength() < min.strength()
            {
                warnings.push(format!(
                    "coverage {coverage} is below namespace {}'s {NAMESPACE_MIN_COVERAGE_LABEL}={min} (no {NAMESPACE_OPT_OUT_LABEL}=\"true\"); enforcing {min}",
                    self.namespace,
                ));
                coverage = min;
            }
        }
        self.mode = mode;
        self.coverage = coverage;
        self.warnings = warnings;
    }

    /// `namespace/name`.
    pub fn full_name(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// Pods by UID.
pub type PodMap = HashMap<String, PodPolicy>;

#[derive(Debug, Default)]
struct State {
    pods: Arc<PodMap>,
    namespaces: HashMap<String, NamespaceDemand>,
}

/// The node's Pods, shared by the watches (writers) and the enforcement
/// loop. The Pods and the Namespaces are kept by the toolkit's reflectors
/// (their stores and connection states); the table holds what the Pods
/// become under their namespaces' demands.
#[derive(Debug)]
pub struct PodTable {
    defaults: NodeDefaults,
    state: RwLock<State>,
    pods: Mutex<Reflector<Pod>>,
    pods_listed: Cache<Pod>,
    namespaces: Mutex<Reflector<Namespace>>,
    namespaces_listed: Cache<Namespace>,
}

impl PodTable {
    pub fn new(defaults: NodeDefaults) -> PodTable {
        let pods = Reflector::default();
        let namespaces = Reflector::default();
        PodTable {
            defaults,
            state: RwLock::new(State::default()),
            pods_listed: pods.cache(),
            pods: Mutex::new(pods),
            namespaces_listed: namespaces.cache(),
            namespaces: Mutex::new(namespaces),
        }
    }

    /// The Pods as last known.
    pub fn snapshot(&self) -> Arc<PodMap> {
        Arc::clone(&self.read().pods)
    }

    /// Whether the first full list has arrived.
    pub fn is_synced(&self) -> bool {
        self.pods_listed.connection().is_synced()
    }

    /// Whether the watch is up now (`None` reason when it is).
    pub fn connection(&self) -> Result<(), String> {
        self.pods_listed.connection().state()
    }

    /// Whether the namespaces' demands are in force: listed, and the watch
    /// not failing since (the reason when not).
    pub fn namespaces(&self) -> Result<(), String> {
        let connection = self.namespaces_listed.connection();
        match (connection.error(), connection.is_synced()) {
            (Some(e), _) => Err(format!("cannot read namespaces: {e}")),
            (None, false) => Err("namespaces not listed yet".into()),
            (None, true) => Ok(()),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies one event of the Pod watch. The initial list (`Init` …
    /// `InitDone`) is published at once; a failure keeps the Pods last
    /// known in force and marks the table disconnected.
    pub fn apply(&self, event: Result<Event<Pod>, watcher::Error>) {
        let mut reflector = self.pods.lock().unwrap_or_else(|p| p.into_inner());
        reflector.apply(event, |update| {
            let mut state = self.write();
            let state = &mut *state;
            let policy = |pod: &Pod| {
                let demand = pod
                    .metadata
                    .namespace
                    .as_ref()
                    .and_then(|ns| state.namespaces.get(ns));
                PodPolicy::of(pod, self.defaults, demand)
            };
            match update {
                Update::Listed => {
                    let mut pods = PodMap::new();
                    for p in self.pods_listed.state().iter().filter_map(|p| policy(p)) {
                        log_warnings(&p);
                        pods.insert(p.uid.clone(), p);
                    }
                    tracing::info!(pods = pods.len(), "pods of this node synced");
                    state.pods = Arc::new(pods);
                }
                Update::Applied(pod) => {
                    if let Some(p) = policy(&pod) {
                        if state.pods.get(&p.uid).map(|old| &old.warnings) != Some(&p.warnings) {
                            log_warnings(&p);
                        }
                        Arc::make_mut(&mut state.pods).insert(p.uid.clone(), p);
                    }
                }
                Update::Deleted(pod) => {
                    if let Some(uid) = pod.metadata.uid {
                        Arc::make_mut(&mut state.pods).remove(&uid);
                    }
                }
                Update::Failed(error) => {
                    let error = mapguard_kube::telemetry::error_chain(&error);
                    tracing::warn!(%error, "pod watch failed; enforcing the pods last known, retrying");
                }
            }
        });
    }

    /// Applies one event of the Namespace watch: the Pods of a namespace
    /// whose demand changed are settled again at once. A failure keeps the
    /// demands last known in force (none, if the Namespaces were never
    /// listed), logged as an error once per outage.
    pub fn apply_namespace(&self, event: Result<Event<Namespace>, watcher::Error>) {
        let mut reflector = self.namespaces.lock().unwrap_or_else(|p| p.into_inner());
        let was_failing = reflector.connection().error().is_some();
        let name = |ns: &Namespace| ns.metadata.name.clone().unwrap_or_default();
        reflector.apply(event, |update| {
            let mut state = self.write();
            let state = &mut *state;
            match update {
                Update::Listed => {
                    let namespaces: HashMap<String, NamespaceDemand> = self
                        .namespaces_listed
                        .state()
                        .iter()
                        .map(|ns| (name(ns), NamespaceDemand::of(ns)))
                        .collect();
                    let demanding = namespaces
                        .values()
                        .filter(|d| d.mode.is_some() || d.min_coverage.is_some())
                        .count();
                    tracing::info!(
                        namespaces = namespaces.len(),
                        demanding,
                        "namespaces synced; their demands are in force"
                    );
                    state.namespaces = namespaces;
                    self.settle_all(state);
                }
                Update::Applied(ns) => {
                    let demand = NamespaceDemand::of(&ns);
                    if state.namespaces.insert(name(&ns), demand) != Some(demand) {
                        self.settle_all(state);
                    }
                }
                Update::Deleted(ns) => {
                    if state.namespaces.remove(&name(&ns)).is_some() {
                        self.settle_all(state);
                    }
                }
                Update::Failed(error) => {
                    if !was_failing {
                        let error = mapguard_kube::telemetry::error_chain(&error);
                        tracing::error!(%error, "cannot read namespaces: their mapguard.io/mode and mapguard.io/min-coverage minimums are not applied (the demands last read stay in force; none if never read); retrying");
                    }
                }
            }
        });
    }

    /// Settles every Pod again with the current namespace demands.
    fn settle_all(&self, state: &mut State) {
        let changed: Vec<PodPolicy> = state
            .pods
            .values()
            .filter_map(|p| {
                let mut settled = p.clone();
                settled.settle(self.defaults, state.namespaces.get(&p.namespace));
                (settled != *p).then_some(settled)
            })
            .collect();
        if changed.is_empty() {
            return;
        }
        let pods = Arc::make_mut(&mut state.pods);
        for p in changed {
            tracing::info!(pod = %p.full_name(), mode = PodMode(p.mode).as_str(), coverage = %p.coverage, "namespace demand changed the pod's enforcement");
            log_warnings(&p);
            pods.insert(p.uid.clone(), p);
        }
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
    let stream = mapguard_kube::cache::events(api, config);
    futures_util::pin_mut!(stream);
    while let Some(event) = stream.next().await {
        table.apply(event);
    }
}

/// Watches the Namespaces (their labels) until the task is dropped; errors
/// are retried with backoff. Failing to read them (RBAC: the agent needs
/// `list` and `watch` on `namespaces`) is logged as an error once per
/// outage: the Pods' annotations alone decide until they are read.
pub async fn watch_namespaces(client: kube::Client, table: Arc<PodTable>) {
    let api: Api<Namespace> = Api::all(client);
    let stream = mapguard_kube::cache::events(api, watcher::Config::default());
    futures_util::pin_mut!(stream);
    while let Some(event) = stream.next().await {
        table.apply_namespace(event);
    }
}

/// A watch failure whose text is `text` (tests).
#[cfg(test)]
pub(crate) fn watch_error(text: &str) -> watcher::Error {
    watcher::Error::WatchFailed(kube::Error::Service(text.into()))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::core::v1::{Container, ContainerStatus, PodSpec, PodStatus};
    use kube::api::ObjectMeta;

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
            None,
        )
        .expect("policy");
        assert_eq!((p.mode, p.coverage), (Some(Mode::Kill), Coverage::Writes));
        assert!(p.warnings.is_empty());

        let p = PodPolicy::of(&pod("u2", &[]), DEFAULTS, None).expect("policy");
        assert_eq!((p.mode, p.coverage), (None, Coverage::Sampled), "defaults");

        let p = PodPolicy::of(&pod("u3", &[(MODE_ANNOTATION, "off")]), DEFAULTS, None).expect("p");
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
            None,
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
        let policy = PodPolicy::of(&p, DEFAULTS, None).expect("policy");
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
            PodPolicy::of(&p, DEFAULTS, None)
                .expect("policy")
                .sole_container
        };
        assert_eq!(with(&["racer"]).as_deref(), Some("racer"));
        assert_eq!(with(&["app", "sidecar"]), None, "ambiguous: the id is kept");
    }

    #[test]
    fn the_initial_list_is_published_at_once_and_failures_keep_the_pods() {
        let table = PodTable::new(DEFAULTS);
        assert!(table.connection().is_err());
        table.apply(Ok(Event::Init));
        table.apply(Ok(Event::InitApply(pod("a", &[(MODE_ANNOTATION, "kill")]))));
        assert!(table.snapshot().is_empty() && !table.is_synced());
        table.apply(Ok(Event::InitDone));
        assert!(table.is_synced() && table.connection().is_ok());
        assert_eq!(table.snapshot().len(), 1);
        table.apply(Err(watch_error("connection refused")));
        assert!(
            table
                .connection()
                .is_err_and(|e| e.contains("connection refused")),
            "{:?}",
            table.connection()
        );
        assert_eq!(table.snapshot().len(), 1, "last known pods stay in force");
        table.apply(Ok(Event::Delete(pod("a", &[]))));
        assert!(table.snapshot().is_empty());
        assert!(
            table.connection().is_ok(),
            "an event means the watch is back"
        );
    }

    fn namespace(name: &str, labels: &[(&str, &str)]) -> Namespace {
        Namespace {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        }
    }

    fn demand(labels: &[(&str, &str)]) -> NamespaceDemand {
        NamespaceDemand::of(&namespace("shop", labels))
    }

    fn settled(annotations: &[(&str, &str)], labels: &[(&str, &str)]) -> PodPolicy {
        PodPolicy::of(&pod("u", annotations), DEFAULTS, Some(&demand(labels))).expect("policy")
    }

    #[test]
    fn namespace_labels_parse_into_a_demand() {
        assert_eq!(demand(&[]), NamespaceDemand::default());
        assert_eq!(
            demand(&[
                (NAMESPACE_MODE_LABEL, "kill"),
                (NAMESPACE_MIN_COVERAGE_LABEL, "writes"),
                (NAMESPACE_OPT_OUT_LABEL, "true"),
            ]),
            NamespaceDemand {
                mode: Some(Mode::Kill),
                min_coverage: Some(Coverage::Writes),
                opt_out: true,
            }
        );
        let invalid = demand(&[
            (NAMESPACE_MODE_LABEL, "loud"),
            (NAMESPACE_MIN_COVERAGE_LABEL, "most"),
            (NAMESPACE_OPT_OUT_LABEL, "yes"),
        ]);
        assert_eq!(
            invalid,
            NamespaceDemand::default(),
            "invalid demands nothing"
        );
        assert_eq!(demand(&[(NAMESPACE_MODE_LABEL, "off")]).mode, None);
    }

    #[test]
    fn a_pod_asking_for_less_gets_its_namespaces_minimum() {
        let kill = [
            (NAMESPACE_MODE_LABEL, "kill"),
            (NAMESPACE_MIN_COVERAGE_LABEL, "full"),
        ];
        let p = settled(
            &[(MODE_ANNOTATION, "audit"), (COVERAGE_ANNOTATION, "light")],
            &kill,
        );
        assert_eq!((p.mode, p.coverage), (Some(Mode::Kill), Coverage::Full));
        assert_eq!(p.warnings.len(), 2, "{:?}", p.warnings);
        assert!(
            p.warnings[0]
                .contains("mode audit is weaker than namespace shop's mapguard.io/mode=kill"),
            "{:?}",
            p.warnings
        );
        let p = settled(&[(MODE_ANNOTATION, "off")], &kill);
        assert_eq!(p.mode, Some(Mode::Kill), "off is the weakest mode");
        let p = settled(&[], &kill);
        assert_eq!(
            (p.mode, p.coverage),
            (Some(Mode::Kill), Coverage::Full),
            "no annotation: the namespace's mode, the node's coverage raised"
        );
        let p = settled(
            &[(MODE_ANNOTATION, "explode")],
            &[(NAMESPACE_MODE_LABEL, "stop")],
        );
        assert_eq!(
            p.mode,
            Some(Mode::Stop),
            "an invalid annotation asks nothing"
        );
    }

    #[test]
    fn every_weaker_mode_and_coverage_is_raised_stronger_ones_kept() {
        let modes = [None, Some(Mode::Audit), Some(Mode::Stop), Some(Mode::Kill)];
        for namespace_mode in modes {
            for asked in modes {
                let labels = [(NAMESPACE_MODE_LABEL, PodMode(namespace_mode).as_str())];
                let p = settled(&[(MODE_ANNOTATION, PodMode(asked).as_str())], &labels);
                let expected = if PodMode(asked) < PodMode(namespace_mode) {
                    namespace_mode
                } else {
                    asked
                };
                assert_eq!(
                    p.mode, expected,
                    "namespace {namespace_mode:?}, pod {asked:?}"
                );
            }
        }
        let coverages = [
            Coverage::Light,
            Coverage::Sampled,
            Coverage::Writes,
            Coverage::Full,
        ];
        for min in coverages {
            for asked in coverages {
                let p = settled(
                    &[(COVERAGE_ANNOTATION, asked.as_str())],
                    &[(NAMESPACE_MIN_COVERAGE_LABEL, min.as_str())],
                );
                let expected = if asked.strength() < min.strength() {
                    min
                } else {
                    asked
                };
                assert_eq!(p.coverage, expected, "min {min}, pod {asked}");
            }
        }
    }

    #[test]
    fn opting_out_lets_the_pods_annotations_win() {
        let labels = [
            (NAMESPACE_MODE_LABEL, "kill"),
            (NAMESPACE_MIN_COVERAGE_LABEL, "full"),
            (NAMESPACE_OPT_OUT_LABEL, "true"),
        ];
        let p = settled(
            &[(MODE_ANNOTATION, "audit"), (COVERAGE_ANNOTATION, "light")],
            &labels,
        );
        assert_eq!((p.mode, p.coverage), (Some(Mode::Audit), Coverage::Light));
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
        let p = settled(&[(MODE_ANNOTATION, "off")], &labels);
        assert_eq!(p.mode, None);
        let p = settled(&[], &labels);
        assert_eq!(
            p.mode,
            Some(Mode::Kill),
            "no annotation: the namespace's mode"
        );
    }

    #[test]
    fn namespace_changes_settle_the_pods_again() {
        let table = PodTable::new(DEFAULTS);
        table.apply(Ok(Event::Init));
        table.apply(Ok(Event::InitApply(pod(
            "a",
            &[(MODE_ANNOTATION, "audit")],
        ))));
        table.apply(Ok(Event::InitDone));
        let mode = |table: &PodTable| table.snapshot().get("a").expect("pod a").mode;
        assert_eq!(mode(&table), Some(Mode::Audit), "no namespace known yet");
        assert!(table.namespaces().is_err(), "not listed yet");

        table.apply_namespace(Ok(Event::Init));
        table.apply_namespace(Ok(Event::InitApply(namespace(
            "shop",
            &[(NAMESPACE_MODE_LABEL, "kill")],
        ))));
        assert_eq!(mode(&table), Some(Mode::Audit), "published at InitDone");
        table.apply_namespace(Ok(Event::InitDone));
        assert!(table.namespaces().is_ok());
        assert_eq!(mode(&table), Some(Mode::Kill), "raised to the namespace's");

        table.apply(Ok(Event::Apply(pod("a", &[(MODE_ANNOTATION, "off")]))));
        assert_eq!(mode(&table), Some(Mode::Kill), "a Pod changed later too");

        table.apply_namespace(Ok(Event::Apply(namespace(
            "shop",
            &[
                (NAMESPACE_MODE_LABEL, "kill"),
                (NAMESPACE_OPT_OUT_LABEL, "true"),
            ],
        ))));
        assert_eq!(
            mode(&table),
            None,
            "opting out allowed: the annotation's off"
        );

        table.apply_namespace(Err(watch_error("forbidden")));
        assert!(
            table.namespaces().is_err_and(
                |e| e.starts_with("cannot read namespaces: ") && e.contains("forbidden")
            ),
            "{:?}",
            table.namespaces()
        );
        assert_eq!(mode(&table), None, "the demands last known stay in force");

        table.apply_namespace(Ok(Event::Delete(namespace("shop", &[]))));
        table.apply(Ok(Event::Apply(pod("a", &[(MODE_ANNOTATION, "stop")]))));
        assert_eq!(mode(&table), Some(Mode::Stop));
        assert!(
            table.namespaces().is_ok(),
            "an event means the watch is back"
        );
    }
}
