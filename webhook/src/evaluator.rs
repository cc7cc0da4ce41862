//! Bounded policy evaluation: a fixed number of evaluations at once, each
//! with a time limit, on tokio's blocking pool.
//!
//! A request first waits (at most `queue_timeout`) for a slot of the
//! semaphore; the slot travels into the blocking task and is released only
//! when the evaluation really ends, so a runaway evaluation keeps occupying
//! its slot and the number of busy threads never exceeds the limit. The
//! engine enforces the time limit itself (regorus' execution timer); the
//! async side stops waiting at the same limit as a backstop.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mapguard_policy::{Decision, EvalError, Inventory, NamespaceData, PolicySet};
use serde_json::Value;
use tokio::sync::Semaphore;

use crate::metrics::{Metrics, RejectReason};

/// Why no decision was produced.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EvalFailure {
    /// No slot became free in time.
    #[error(
        "webhook overloaded: no evaluation slot free within {waited:?} ({limit} evaluations running)"
    )]
    Overloaded {
        /// How long the request waited.
        waited: Duration,
        /// The configured limit.
        limit: usize,
    },
    /// The evaluation exceeded its time limit.
    #[error("policy evaluation exceeded its time limit of {limit:?}")]
    TimedOut {
        /// The configured limit.
        limit: Duration,
    },
    /// The engine returned an error.
    #[error("policy evaluation failed: {0}")]
    Engine(String),
    /// The evaluation thread panicked.
    #[error("policy evaluation crashed: {0}")]
    Panicked(String),
}

impl EvalFailure {
    /// The metric label of this failure.
    pub fn reason(&self) -> RejectReason {
        match self {
            EvalFailure::Overloaded { .. } => RejectReason::overload,
            EvalFailure::TimedOut { .. } => RejectReason::timeout,
            EvalFailure::Engine(_) | EvalFailure::Panicked(_) => RejectReason::error,
        }
    }
}

/// Runs evaluations within the configured bounds.
#[derive(Debug, Clone)]
pub struct Evaluator {
    slots: Arc<Semaphore>,
    limit: usize,
    queue_timeout: Duration,
    eval_timeout: Duration,
}

impl Evaluator {
    /// `limit` evaluations at once (at least one), waiting at most
    /// `queue_timeout` for a slot, each limited to `eval_timeout`.
    pub fn new(limit: usize, queue_timeout: Duration, eval_timeout: Duration) -> Self {
        let limit = limit.max(1);
        Self {
            slots: Arc::new(Semaphore::new(limit)),
            limit,
            queue_timeout,
            eval_timeout,
        }
    }

    /// The per-evaluation time limit.
    pub fn eval_timeout(&self) -> Duration {
        self.eval_timeout
    }

    /// Evaluates `review` with `set`; counts and times it in `metrics`.
    pub async fn evaluate(
        &self,
        set: PolicySet,
        review: Arc<Value>,
        namespaces: Arc<NamespaceData>,
        inventory: Arc<Inventory>,
        metrics: Arc<Metrics>,
    ) -> Result<Decision, EvalFailure> {
        let queued = Instant::now();
        let permit = match tokio::time::timeout(
            self.queue_timeout,
            self.slots.clone().acquire_owned(),
        )
        .await
        {
            Ok(Ok(permit)) => permit,
            // Timed out, or the semaphore was closed (never happens).
            Ok(Err(_)) | Err(_) => {
                return Err(self.fail(
                    &metrics,
                    EvalFailure::Overloaded {
                        waited: queued.elapsed(),
                        limit: self.limit,
                    },
                ));
            }
        };
        let task_metrics = metrics.clone();
        let task = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            task_metrics.in_flight().inc();
            let started = Instant::now();
            let timeout = set.config().eval_timeout;
            let result = set.evaluate_with(&review, &namespaces, &inventory, timeout);
            task_metrics.in_flight().dec();
            task_metrics.observe_evaluation(started.elapsed());
            result
        });
        let limit = self.eval_timeout;
        match tokio::time::timeout(limit, task).await {
            Ok(Ok(Ok(decision))) => Ok(decision),
            Ok(Ok(Err(error))) => {
                let failure = match error {
                    EvalError::Timeout { .. } => EvalFailure::TimedOut { limit },
                    other => EvalFailure::Engine(other.to_string()),
                };
                Err(self.fail(&metrics, failure))
            }
            Ok(Err(join)) => Err(self.fail(&metrics, EvalFailure::Panicked(join.to_string()))),
            Err(_) => Err(self.fail(&metrics, EvalFailure::TimedOut { limit })),
        }
    }

    fn fail(&self, metrics: &Metrics, failure: EvalFailure) -> EvalFailure {
        metrics.evaluation_rejected(failure.reason());
        failure
    }
}
