//! The responder's decisions: when a workload's map violations and
//! crashes pass a threshold within a window, act on the cluster — evict
//! the offending Pod through the Eviction API (which honours its
//! PodDisruptionBudgets) or cordon its node.
//!
//! Rate-limited twice: one action per workload per `workload_interval`,
//! and at most `cluster_per_hour` actions in the whole cluster, claimed
//! from the [`Budget`] that only the responder writes. `dry_run` decides
//! and records everything but changes nothing. Every decision that acts,
//! would act or is refused is an Event (reporting controller
//! `mapguard.io/responder`) on the Pod or the Node, and a count in
//! `mapguard_responder_actions_total`.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, ObjectReference, Pod};
use kube::api::EvictParams;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use super::budget::{Budget, Claim};

/// `reportingController` of the responder's Events.
pub const REPORTING_CONTROLLER: &str = "mapguard.io/responder";
/// Event reasons.
pub const REASON_EVICTED: &str = "MapguardEvicted";
pub const REASON_EVICTION_BLOCKED: &str = "MapguardEvictionBlocked";
pub const REASON_CORDONED: &str = "MapguardCordoned";
pub const REASON_DRY_RUN: &str = "MapguardResponseDryRun";

pub use crate::config::ResponseAction;

impl ResponseAction {
    fn as_str(self) -> &'static str {
        match self {
            ResponseAction::Off => "off",
            ResponseAction::Evict => "evict",
            ResponseAction::Cordon => "cordon",
        }
    }
}

/// The responder's settings (flags of `mapguard-agent respond`).
#[derive(Debug, Clone)]
pub struct ResponderConfig {
    pub action: ResponseAction,
    /// Violations and crashes of one workload within `window` that trigger.
    pub threshold: u32,
    pub window: Duration,
    /// At most one action per workload per this long.
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
    /// The node the Pod runs on (the one a cordon acts on).
    pub node: String,
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

/// Decides and acts; one in the cluster (the `mapguard-responder`
/// Deployment).
pub struct Responder {
    client: Client,
    config: ResponderConfig,
    budget: Budget,
    recorder: Recorder,
    state: Mutex<State>,
    actions: Family<ActionLabels, Counter>,
}

impl std::fmt::Debug for Responder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Responder")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Responder {
    /// A responder whose cluster budget is kept in `namespace` (its own),
    /// with a client of its own made from `kube`: kube's default retry of
    /// 429 answers is off for it, since an eviction a disruption budget
    /// refuses (429) must be reported now, not retried for minutes.
    pub fn new(
        kube: &kube::Config,
        namespace: &str,
        config: ResponderConfig,
    ) -> Result<Responder, kube::Error> {
        let mut kube = kube.clone();
        kube.default_retry = false;
        let client = Client::try_from(kube)?;
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: REPORTING_CONTROLLER.to_owned(),
                instance: Some("mapguard-responder".to_owned()),
            },
        );
        Ok(Responder {
            budget: Budget::new(client.clone(), namespace, config.cluster_per_hour),
            client,
            config,
            recorder,
            state: Mutex::new(State::default()),
            actions: Family::default(),
        })
    }

    /// The settings it runs with.
    pub fn config(&self) -> &ResponderConfig {
        &self.config
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
        let target = match self.config.action {
            ResponseAction::Cordon => format!("node {}", trigger.node),
            _ => format!("pod {}/{}", trigger.namespace, trigger.pod),
        };
        let claim = match self
            .budget
            .claim(&format!("{} {target}", self.config.action.as_str()))
            .await
        {
            Ok(Claim::Granted(claim)) => claim,
            Ok(Claim::Exhausted { in_last_hour }) => {
                return Outcome::ClusterRateLimited { in_last_hour };
            }
            // Without a budget to claim from, no action.
            Err(why) => return Outcome::Failed(why),
        };
        let outcome = match self.config.action {
            ResponseAction::Off => Outcome::Off,
            ResponseAction::Evict => self.evict(trigger, &why).await,
            ResponseAction::Cordon => self.cordon(trigger, &why).await,
        };
        if !matches!(outcome, Outcome::Evicted | Outcome::Cordoned)
            && let Err(why) = self.budget.release(&claim).await
        {
            tracing::warn!(%why, "cannot give back an unused claim on the cluster budget");
        }
        outcome
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

    async fn cordon(&self, trigger: &Trigger, why: &str) -> Outcome {
        let nodes: Api<Node> = Api::all(self.client.clone());
        match nodes.cordon(&trigger.node).await {
            Ok(_) => {
                let reference = ObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Node".into()),
                    name: Some(trigger.node.clone()),
                    ..ObjectReference::default()
                };
                self.publish(REASON_CORDONED, &format!("cordoned: {why}"), &reference)
                    .await;
                Outcome::Cordoned
            }
            Err(e) => Outcome::Failed(format!("cordon node {}: {e}", trigger.node)),
        }
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
