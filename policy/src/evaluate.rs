//! Judging one AdmissionReview: unpack, evaluate each policy's decision
//! rules, route findings by enforcement action, prepare patches.

use std::cell::RefCell;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use regorus::Engine;
use regorus::utils::limits::{ExecutionTimerConfig, LimitError};
use serde::Serialize;
use serde_json::Value as Json;

use crate::diagnostic::one_line;
use crate::subject::{self, ReviewError, Subject};
use crate::{
    Action, Inventory, NamespaceData, PolicyInfo, PolicySet, Review, gatekeeper, input, patch,
};

/// One message of one policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Package of the policy (`mapguard.host_access`).
    pub policy: String,
    pub message: String,
    /// The action in effect for this finding (a `warn` rule gives `Warn`).
    pub action: Action,
}

/// The verdict on one review.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    /// False iff any finding has [`Action::Deny`].
    pub allowed: bool,
    pub denials: Vec<Finding>,
    pub warnings: Vec<Finding>,
    /// Findings (and would-be patches) of dry-run policies: recorded only.
    pub dry_run: Vec<Finding>,
    /// RFC 6902 operations rooted at the reviewed object (the Pod, or the
    /// controller with paths under its pod template).
    pub patch: Vec<Json>,
    pub subject: Subject,
    /// The namespace is exempt: nothing was evaluated.
    pub exempt: bool,
}

/// Why a review could not be judged. Never an implicit allow: the caller
/// decides whether to fail open or closed.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("invalid AdmissionReview: {0}")]
    InvalidReview(#[from] ReviewError),
    #[error("policy {policy}: evaluating {rule} failed: {message}")]
    Rego {
        policy: String,
        rule: String,
        message: String,
    },
    #[error("policy evaluation exceeded its {limit:?} budget (in {policy})")]
    Timeout { policy: String, limit: Duration },
    #[error("policy {policy}: {rule} must be a set, found {found}")]
    BadDecision {
        policy: String,
        rule: String,
        found: String,
    },
    #[error("policy {policy}: {source}")]
    InvalidPatch {
        policy: String,
        source: patch::PatchError,
    },
    /// A Gatekeeper constraint could not tell whether it applies.
    #[error("constraint {constraint}: {message}")]
    Constraint { constraint: String, message: String },
    #[error("the policy engine failed internally: {0}")]
    Internal(String),
    #[error("namespace data cannot be loaded into the engine: {0}")]
    Data(String),
}

/// Per-thread engines: a clone of a set's compiled engine holding the
/// namespace data it was prepared with (regorus re-analyses the policies
/// whenever data changes, so data is swapped only when it changes).
struct Cached {
    set_id: u64,
    ns_version: u64,
    engine: Engine,
    /// One engine per Gatekeeper template of the set, holding the
    /// inventory of `inventory_version`.
    templates: Vec<Engine>,
    inventory_version: u64,
}

const CACHED_ENGINES_PER_THREAD: usize = 4;

thread_local! {
    static ENGINES: RefCell<Vec<Cached>> = const { RefCell::new(Vec::new()) };
}

impl PolicySet {
    /// Judges a whole AdmissionReview, read once into a [`Review`], with
    /// the configured `eval_timeout`.
    pub fn evaluate(&self, review: &Review, ns: &NamespaceData) -> Result<Decision, EvalError> {
        self.evaluate_with_timeout(review, ns, self.inner.config.eval_timeout)
    }

    /// As [`PolicySet::evaluate`] with an explicit budget for this one
    /// evaluation (`None`: unbounded). The budget is enforced inside regorus
    /// by its execution timer, across all rules evaluated.
    pub fn evaluate_with_timeout(
        &self,
        review: &Review,
        ns: &NamespaceData,
        timeout: Option<Duration>,
    ) -> Result<Decision, EvalError> {
        self.evaluate_with(review, ns, &Inventory::default(), timeout)
    }

    /// As [`PolicySet::evaluate_with_timeout`], with `inventory` as
    /// `data.inventory` for the Gatekeeper templates.
    pub fn evaluate_with(
        &self,
        review: &Review,
        ns: &NamespaceData,
        inventory: &Inventory,
        timeout: Option<Duration>,
    ) -> Result<Decision, EvalError> {
        let unpacked = subject::unpack(review)?;
        let mut decision = Decision {
            allowed: true,
            denials: Vec::new(),
            warnings: Vec::new(),
            dry_run: Vec::new(),
            patch: Vec::new(),
            subject: review.subject().clone(),
            exempt: false,
        };
        if self.inner.config.is_exempt(&decision.subject.namespace) {
            decision.exempt = true;
            return Ok(decision);
        }
        let deadline = timeout.map(|t| (Instant::now() + t, t));
        // Gatekeeper constraints judge the request as sent (not the Pod of
        // a controller's template).
        let constraints = !self.inner.gatekeeper.constraints.is_empty()
            && review.object().or_else(|| review.old_object()).is_some();
        let inputs = input::inputs(review, &unpacked, constraints)?;
        let input = inputs.policies;
        let gatekeeper_review = inputs
            .gatekeeper
            .and_then(|request| gatekeeper::Review::new(review, request));
        let template_pointer = unpacked.controller.map(|c| c.pointer);
        let mut collector = Collector {
            label: template_pointer.map(|_| decision.subject.display()),
            root: template_pointer.unwrap_or(""),
            patch_target: unpacked.patch_target,
            patch_doc: None,
            decision: &mut decision,
        };

        let judged = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.with_engine(
                ns,
                inventory,
                |engine, templates| -> Result<(), EvalError> {
                    engine.set_input(input);
                    let judged = (|| -> Result<(), EvalError> {
                        for policy in &self.inner.policies {
                            for (rule, rule_path) in &policy.rules {
                                set_budget(engine, deadline, &policy.package)?;
                                let value = engine.eval_rule(rule_path.clone()).map_err(|e| {
                                    let timed_out = matches!(
                                        e.downcast_ref::<LimitError>(),
                                        Some(LimitError::TimeLimitExceeded { .. })
                                    );
                                    rule_error(&e, timed_out, &policy.package, rule_path, deadline)
                                })?;
                                let items = set_items(&value, &policy.package, rule_path)?;
                                collector.record(policy, rule, items)?;
                            }
                        }
                        if let Some(review) = &gatekeeper_review {
                            self.judge_constraints(
                                templates,
                                review,
                                ns,
                                deadline,
                                &mut *collector.decision,
                            )?;
                        }
                        Ok(())
                    })();
                    // The thread keeps its engines for the next evaluation:
                    // drop this review's input now, not then, so that a
                    // large review costs memory only while it is judged.
                    engine.set_input(regorus::Value::Undefined);
                    for template in templates.iter_mut() {
                        template.set_input(regorus::Value::Undefined);
                    }
                    judged
                },
            )
        }));
        match judged {
            Ok(result) => result??,
            Err(panic) => {
                // The thread's engines may be half-way through an evaluation.
                ENGINES.with(|cell| cell.borrow_mut().clear());
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".to_string());
                return Err(EvalError::Internal(message));
            }
        }
        decision.allowed = decision.denials.is_empty();
        Ok(decision)
    }

    /// Every Gatekeeper constraint that selects the review, on its
    /// template's engine; findings are named `Kind name`.
    fn judge_constraints(
        &self,
        templates: &mut [Engine],
        review: &gatekeeper::Review,
        ns: &NamespaceData,
        deadline: Option<(Instant, Duration)>,
        decision: &mut Decision,
    ) -> Result<(), EvalError> {
        let gatekeeper = &self.inner.gatekeeper;
        for constraint in &gatekeeper.constraints {
            let label = constraint.info.label();
            let selected =
                constraint
                    .selects(review, ns)
                    .map_err(|message| EvalError::Constraint {
                        constraint: label.clone(),
                        message,
                    })?;
            if !selected {
                continue;
            }
            let rule = &gatekeeper.templates[constraint.template].rule;
            let engine = &mut templates[constraint.template];
            set_budget(engine, deadline, &label)?;
            engine.set_input(constraint.input(review));
            let value = engine.eval_rule(rule.clone()).map_err(|e| {
                let timed_out = matches!(
                    e.downcast_ref::<LimitError>(),
                    Some(LimitError::TimeLimitExceeded { .. })
                );
                rule_error(&e, timed_out, &label, rule, deadline)
            })?;
            for item in set_items(&value, &label, rule)? {
                let finding = Finding {
                    policy: label.clone(),
                    message: message_of(&item),
                    action: constraint.info.action,
                };
                match constraint.info.action {
                    Action::Deny => decision.denials.push(finding),
                    Action::Warn => decision.warnings.push(finding),
                    Action::DryRun => decision.dry_run.push(finding),
                }
            }
        }
        Ok(())
    }

    /// Runs `f` on this thread's engine for this set and namespace data.
    fn with_engine<R>(
        &self,
        ns: &NamespaceData,
        inventory: &Inventory,
        f: impl FnOnce(&mut Engine, &mut [Engine]) -> R,
    ) -> Result<R, EvalError> {
        ENGINES.with(|cell| {
            let mut engines = cell.borrow_mut();
            let index = match engines.iter().position(|c| c.set_id == self.inner.id) {
                Some(i) => i,
                None => {
                    if engines.len() >= CACHED_ENGINES_PER_THREAD {
                        engines.remove(0);
                    }
                    engines.push(Cached {
                        set_id: self.inner.id,
                        ns_version: 0,
                        engine: self.inner.engine.clone(),
                        templates: self
                            .inner
                            .gatekeeper
                            .engines(&Inventory::default())
                            .map_err(EvalError::Data)?,
                        inventory_version: 0,
                    });
                    engines.len() - 1
                }
            };
            let cached = &mut engines[index];
            if cached.ns_version != ns.version() {
                let mut engine = self.inner.engine.clone();
                if !ns.is_empty() {
                    engine
                        .add_data(regorus::Value::from(ns.to_data_json()))
                        .map_err(|e| EvalError::Data(format!("{e:#}")))?;
                }
                cached.engine = engine;
                cached.ns_version = ns.version();
            }
            if cached.inventory_version != inventory.version() {
                cached.templates = self
                    .inner
                    .gatekeeper
                    .engines(inventory)
                    .map_err(EvalError::Data)?;
                cached.inventory_version = inventory.version();
            }
            Ok(f(&mut cached.engine, &mut cached.templates))
        })
    }
}

/// Routes one decision set's items into the decision by enforcement action.
struct Collector<'a> {
    /// `Kind namespace/name` of a controller, prefixed to its findings.
    label: Option<String>,
    /// Where patches land (the template pointer, or `""`).
    root: &'static str,
    patch_target: Option<&'a Json>,
    /// The patch target as modified by the patches so far (copied lazily).
    patch_doc: Option<Json>,
    decision: &'a mut Decision,
}

impl Collector<'_> {
    fn finding(&self, policy: &PolicyInfo, message: String, action: Action) -> Finding {
        Finding {
            policy: policy.package.clone(),
            message: match &self.label {
                Some(label) => format!("{label}: {message}"),
                None => message,
            },
            action,
        }
    }

    fn record(
        &mut self,
        policy: &PolicyInfo,
        rule: &str,
        items: Vec<regorus::Value>,
    ) -> Result<(), EvalError> {
        if items.is_empty() {
            return Ok(());
        }
        match (rule, policy.action) {
            ("patch", Action::DryRun) => {
                for op in items {
                    let finding = self.finding(
                        policy,
                        format!("would patch: {}", to_json(&op)),
                        Action::DryRun,
                    );
                    self.decision.dry_run.push(finding);
                }
            }
            ("patch", _) => {
                let ops = items.iter().map(to_json).collect();
                let target = self.patch_target;
                let doc = self.patch_doc.get_or_insert_with(|| {
                    target.cloned().unwrap_or_else(|| serde_json::json!({}))
                });
                let ops = patch::prepare(ops, doc, self.root).map_err(|source| {
                    EvalError::InvalidPatch {
                        policy: policy.package.clone(),
                        source,
                    }
                })?;
                self.decision.patch.extend(ops);
            }
            (kind, action) => {
                for item in items {
                    let message = message_of(&item);
                    match (kind, action) {
                        (_, Action::DryRun) => {
                            let finding = self.finding(policy, message, Action::DryRun);
                            self.decision.dry_run.push(finding);
                        }
                        ("deny", Action::Deny) => {
                            let finding = self.finding(policy, message, Action::Deny);
                            self.decision.denials.push(finding);
                        }
                        _ => {
                            let finding = self.finding(policy, message, Action::Warn);
                            self.decision.warnings.push(finding);
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// A regorus error while evaluating `rule_path`: a timeout, or a Rego error.
fn rule_error(
    error: &dyn std::fmt::Display,
    timed_out: bool,
    policy: &str,
    rule_path: &str,
    deadline: Option<(Instant, Duration)>,
) -> EvalError {
    match deadline {
        Some((_, limit)) if timed_out => EvalError::Timeout {
            policy: policy.to_string(),
            limit,
        },
        _ => EvalError::Rego {
            policy: policy.to_string(),
            rule: rule_path.to_string(),
            message: one_line(&format!("{error:#}")),
        },
    }
}

/// Gives regorus what is left of the evaluation's budget.
fn set_budget(
    engine: &mut Engine,
    deadline: Option<(Instant, Duration)>,
    policy: &str,
) -> Result<(), EvalError> {
    match deadline {
        None => engine.clear_execution_timer_config(),
        Some((at, limit)) => {
            let left = at.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(EvalError::Timeout {
                    policy: policy.to_string(),
                    limit,
                });
            }
            engine.set_execution_timer_config(ExecutionTimerConfig {
                limit: left,
                check_interval: NonZeroU32::new(16).expect("16 is not zero"),
            });
        }
    }
    Ok(())
}

/// Elements of a decision set (undefined: none).
fn set_items(
    value: &regorus::Value,
    policy: &str,
    rule: &str,
) -> Result<Vec<regorus::Value>, EvalError> {
    match value {
        regorus::Value::Undefined | regorus::Value::Null => Ok(Vec::new()),
        regorus::Value::Set(items) => Ok(items.iter_sorted().cloned().collect()),
        regorus::Value::Array(items) => Ok(items.iter().cloned().collect()),
        other => Err(EvalError::BadDecision {
            policy: policy.to_string(),
            rule: rule.to_string(),
            found: other.to_json_str().unwrap_or_else(|_| "?".into()),
        }),
    }
}

fn to_json(value: &regorus::Value) -> Json {
    serde_json::to_value(value).unwrap_or(Json::Null)
}

/// A message is a string, or an object with `msg` (Gatekeeper style).
fn message_of(value: &regorus::Value) -> String {
    if let Ok(s) = value.as_string() {
        return s.to_string();
    }
    let json = to_json(value);
    match json.get("msg").and_then(Json::as_str) {
        Some(msg) => msg.to_string(),
        None => json.to_string(),
    }
}
