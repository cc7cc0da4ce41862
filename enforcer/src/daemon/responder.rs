//! The opt-in responder: when a workload's map violations and crashes on
//! this node pass a threshold within a window, act on the cluster — evict
//! the offending Pod through the Eviction API (which honours its
//! PodDisruptionBudgets) or cordon the node.
//!
//! Off by default. Rate-limited twice: one action per workload per
//! `workload_interval` (on this node), and at most `cluster_per_hour`
//! actions in the whole cluster, counted from the responder's own Events
//! (every node agent sees the same count). `dry_run` decides and records
//! everything but changes nothing. Every decision that acts, would act or
//! is refused is an Event (reporting controller `mapguard.io/responder`) on
//! the Pod or the Node, and a count in `mapguard_responder_actions_total`.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Event as CoreEvent, Node, ObjectReference, Pod};
use kube::api::{EvictParams, ListParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// `reportingController` of the responder's Events.
pub const REPORTING_CONTROLLER: &str = "mapguard.io/responder";
/// Event reasons.
pub const REASON_EVICTED: &str = "MapguardEvicted";
pub const REASON_EVICTION_BLOCKED: &str = "MapguardEvictionBlocked";
pub const REASON_CORDONED: &str = "MapguardCordoned";
pub const REASON_DRY_RUN: &str = "MapguardResponseDryRun";

/// What the responder does when a workload passes the threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ResponseAction {
    Off,
    /// Evict the Pod (Eviction API: PodDisruptionBudgets are honoured).
    Evict,
    /// Cordon the node (no new Pods are scheduled on it).
    Cordon,
}

impl ResponseAction {
    fn as_str(self) -> &'static str {
        match self {
            ResponseAction::Off => "off",
            ResponseAction::Evict => "evict",
            ResponseAction::Cordon => "cordon",
        }
    }
}

/// The responder's settings (`--respond*` flags of the daemon).
#[derive(Debug, Clone)]
pub struct ResponderConfig {
    pub action: ResponseAction,
    /// Violations and crashes of one workload within `window` that trigger.
    pub threshold: u32,
    pub window: Duration,
    /// At most one action per workload per this long (on this node).
    pub workload_interval: Duration,
    /// At most this many actions per hour in the whole cluster.
    pub cluster_per_hour: u32,
    pub dry_run: bool,
}

/// What triggered: a violation seen by the probes, or a runtime map crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    Violation,
    Crash,
}

/// One violation or crash of a Pod's process.
#[derive(Debug, Clone)]
pub struct Trigger {
    pub namespace: String,
    pub pod: String,
    /// The owning controller (`Deployment/shop`), or the Pod itself.
    pub workload: String,
    pub cause: Cause,
}

/// What the responder did with one trigger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Off,
    /// Counted; the threshold is not reached.
    BelowThreshold {
        seen: u32,
    },
    /// This workload was acted on less than `workload_interval` ago.
    WorkloadRateLimited,
    /// The cluster had `cluster_per_hour` actions in the last hour.
    ClusterRateLimited {
        in_last_hour: u32,
    },
    /// Dry run: what would have been done.
    DryRun(ResponseAction),
    Evicted,
    /// The Eviction API refused: a PodDisruptionBudget allows no disruption.
    EvictionBlocked(String),
    Cordoned,
    /// The API server refused or failed.
    Failed(String),
}

impl Outcome {
    fn label(&self) -> &'static str {
        match self {
            Outcome::Off => "off",
            Outcome::BelowThreshold { .. } => "below_threshold",
            Outcome::WorkloadRateLimited => "workload_rate_limited",
            Outcome::ClusterRateLimited { .. } => "cluster_rate_limited",
            Outcome::DryRun(_) => "dry_run",
            Outcome::Evicted => "evicted",
            Outcome::EvictionBlocked(_) => "eviction_blocked",
            Outcome::Cordoned => "cordoned",
            Outcome::Failed(_) => "failed",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabels {
    action: &'static str,
    outcome: &'static str,
}

#[derive(Debug, Default)]
struct State {
    /// Trigger times per (namespace, workload), within the window.
    seen: BTreeMap<(String, String), VecDeque<Instant>>,
    /// Last action per (namespace, workload).
    acted: BTreeMap<(String, String), Instant>,
}

/// Decides and acts; one per node agent.
pub struct Responder {
    client: Client,
    node: String,
    config: ResponderConfig,
    recorder: Recorder,
    state: Mutex<State>,
    actions: Family<ActionLabels, Counter>,
}

impl std::fmt::Debug for Responder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Responder")
            .field("node", &self.node)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Responder {
    /// A responder on `node`, with a client of its own made from `kube`:
    /// kube's default retry of 429 answers is off for it, since an
    /// eviction a disruption budget refuses (429) must be reported now, not
    /// retried for minutes.
    pub fn new(
        kube: &kube::Config,
        node: String,
        config: ResponderConfig,
    ) -> Result<Responder, kube::Error> {
        let mut kube = kube.clone();
        kube.default_retry = false;
        let client = Client::try_from(kube)?;
        Ok(Self::with_client(client, node, config))
    }

    fn with_client(client: Client, node: String, config: ResponderConfig) -> Responder {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: REPORTING_CONTROLLER.to_owned(),
                instance: Some(format!("mapguard-enforcer-{node}")),
            },
        );
        Responder {
            client,
            node,
            config,
            recorder,
            state: Mutex::new(State::default()),
            actions: Family::default(),
        }
    }

    /// Registers `mapguard_responder_actions_total{action,outcome}`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "mapguard_responder_actions",
            "Responder decisions by configured action and outcome",
            self.actions.clone(),
        );
    }

    /// Counts `trigger` and acts if its workload passed the threshold.
    pub async fn observe(&self, trigger: &Trigger) -> Outcome {
        let outcome = self.decide_and_act(trigger).await;
        self.actions
            .get_or_create(&ActionLabels {
                action: self.config.action.as_str(),
                outcome: outcome.label(),
            })
            .inc();
        match &outcome {
            Outcome::Off | Outcome::BelowThreshold { .. } => {}
            Outcome::Failed(why) => {
                tracing::warn!(pod = %trigger.pod, namespace = %trigger.namespace, %why, "responder action failed")
            }
            other => {
                tracing::info!(pod = %trigger.pod, namespace = %trigger.namespace, workload = %trigger.workload, outcome = ?other, "responder")
            }
        }
        outcome
    }

    async fn decide_and_act(&self, trigger: &Trigger) -> Outcome {
        if self.config.action == ResponseAction::Off {
            return Outcome::Off;
        }
        let key = (trigger.namespace.clone(), trigger.workload.clone());
        let now = Instant::now();
        {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            let seen = state.seen.entry(key.clone()).or_default();
            seen.push_back(now);
            while seen
                .front()
                .is_some_and(|t| now.duration_since(*t) > self.config.window)
            {
                seen.pop_front();
            }
            let count = u32::try_from(seen.len()).unwrap_or(u32::MAX);
            if count < self.config.threshold {
                return Outcome::BelowThreshold { seen: count };
            }
            if state
                .acted
                .get(&key)
                .is_some_and(|t| now.duration_since(*t) < self.config.workload_interval)
            {
                return Outcome::WorkloadRateLimited;
            }
            // Claimed now, so that a burst acts once.
            state.acted.insert(key.clone(), now);
            state.seen.remove(&key);
        }
        let in_last_hour = match self.actions_in_last_hour().await {
            Ok(n) => n,
            Err(why) => return Outcome::Failed(why),
        };
        if in_last_hour >= self.config.cluster_per_hour {
            return Outcome::ClusterRateLimited { in_last_hour };
        }
        let what = match trigger.cause {
            Cause::Violation => "map violations",
            Cause::Crash => "map crashes",
        };
        let why = format!(
            "{} of {} in {:?} passed the threshold {} for workload {}",
            what, trigger.pod, self.config.window, self.config.threshold, trigger.workload
        );
        if self.config.dry_run {
            let note = format!("dry run: would {} ({why})", self.config.action.as_str());
            self.event(trigger, REASON_DRY_RUN, &note).await;
            return Outcome::DryRun(self.config.action);
        }
        match self.config.action {
            ResponseAction::Off => Outcome::Off,
            ResponseAction::Evict => self.evict(trigger, &why).await,
            ResponseAction::Cordon => self.cordon(&why).await,
        }
    }

    async fn evict(&self, trigger: &Trigger, why: &str) -> Outcome {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &trigger.namespace);
        match pods.evict(&trigger.pod, &EvictParams::default()).await {
            Ok(_) => {
                self.event(trigger, REASON_EVICTED, &format!("evicted: {why}"))
                    .await;
                Outcome::Evicted
            }
            // 429: a PodDisruptionBudget allows no disruption now.
            Err(kube::Error::Api(status)) if status.code == 429 => {
                let message = status.message.clone();
                self.event(
                    trigger,
                    REASON_EVICTION_BLOCKED,
                    &format!("eviction refused ({message}): {why}"),
                )
                .await;
                // Not an action: the workload may be tried again later.
                self.state
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .acted
                    .remove(&(trigger.namespace.clone(), trigger.workload.clone()));
                Outcome::EvictionBlocked(message)
            }
            Err(e) => Outcome::Failed(format!(
                "evict pod {}/{}: {e}",
                trigger.namespace, trigger.pod
            )),
        }
    }

    async fn cordon(&self, why: &str) -> Outcome {
        let nodes: Api<Node> = Api::all(self.client.clone());
        match nodes.cordon(&self.node).await {
            Ok(_) => {
                let reference = ObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Node".into()),
                    name: Some(self.node.clone()),
                    ..ObjectReference::default()
                };
                self.publish(REASON_CORDONED, &format!("cordoned: {why}"), &reference)
                    .await;
                Outcome::Cordoned
            }
            Err(e) => Outcome::Failed(format!("cordon node {}: {e}", self.node)),
        }
    }

    /// The responder's actions (evictions, cordons) in the cluster in the
    /// last hour, from its Events.
    async fn actions_in_last_hour(&self) -> Result<u32, String> {
        let events: Api<CoreEvent> = Api::all(self.client.clone());
        let list = events
            .list(
                &ListParams::default()
                    .fields(&format!("reportingComponent={REPORTING_CONTROLLER}")),
            )
            .await
            .map_err(|e| format!("list the responder's Events: {e}"))?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or_default();
        let hour_ago = now - 3600;
        let count = list
            .items
            .iter()
            .filter(|e| matches!(e.reason.as_deref(), Some(REASON_EVICTED | REASON_CORDONED)))
            .filter(|e| {
                let last = e
                    .series
                    .as_ref()
                    .and_then(|s| s.last_observed_time.as_ref().map(|t| t.0))
                    .or(e.event_time.as_ref().map(|t| t.0))
                    .or(e.last_timestamp.as_ref().map(|t| t.0));
                last.is_some_and(|t| t.as_second() > hour_ago)
            })
            .map(|e| e.series.as_ref().and_then(|s| s.count).unwrap_or(1).max(1) as u32)
            .sum();
        Ok(count)
    }

    async fn event(&self, trigger: &Trigger, reason: &str, note: &str) {
        let reference = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            namespace: Some(trigger.namespace.clone()),
            name: Some(trigger.pod.clone()),
            ..ObjectReference::default()
        };
        self.publish(reason, note, &reference).await;
    }

    async fn publish(&self, reason: &str, note: &str, regarding: &ObjectReference) {
        let event = Event {
            type_: EventType::Warning,
            reason: reason.to_owned(),
            note: Some(note.chars().take(1000).collect()),
            action: match self.config.action {
                ResponseAction::Cordon => "Cordon".into(),
                _ => "Evict".into(),
            },
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, regarding).await {
            tracing::warn!(%reason, error = %e, "cannot publish the responder's Event");
        }
    }
}
