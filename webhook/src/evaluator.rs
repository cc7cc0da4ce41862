//! Bounded policy evaluation: a fixed number of evaluations at once, each
//! with a time limit and a memory reservation, on tokio's blocking pool.
//!
//! A request is first admitted ([`Evaluator::admit`]): within `queue_timeout`
//! (counted from when its body has been received and looked at) it must
//! reserve the memory its evaluation may take from the [`MemoryBudget`] and
//! take a slot of the semaphore. Only then is its
//! body parsed. Reservation and slot travel into the blocking task and are
//! released only when the evaluation really ends, so a runaway evaluation
//! keeps occupying both, and neither the number of busy threads nor the
//! memory held by trees ever exceeds its limit. The engine enforces the time
//! limit itself (regorus' execution timer); the async side stops waiting at
//! the same limit as a backstop.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mapguard_policy::{Decision, EvalError, Inventory, NamespaceData, PolicySet, Review};
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::budget::{MemoryBudget, Reservation};
use crate::metrics::{Metrics, RejectReason};

/// The request memory budget when none is configured: what fits the
/// Deployment's 256 MiB limit beside the process itself and its connections.
pub const DEFAULT_MEMORY_BUDGET: usize = 128 * 1024 * 1024;

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
    /// The memory the evaluation may take did not become free in time.
    #[error(
        "webhook overloaded: the {needed} bytes its evaluation may take were not free within {waited:?} (--max-request-memory {budget})"
    )]
    OutOfMemory {
        /// How long the request waited.
        waited: Duration,
        /// The estimate of the request.
        needed: usize,
        /// The whole budget.
        budget: usize,
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
            EvalFailure::Overloaded { .. } | EvalFailure::OutOfMemory { .. } => {
                RejectReason::overload
            }
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
    memory: MemoryBudget,
}

/// A request allowed to build its trees and be evaluated: its memory
/// reservation and its evaluation slot.
#[derive(Debug)]
pub struct Admission {
    _memory: Reservation,
    _slot: OwnedSemaphorePermit,
}

impl Evaluator {
    /// `limit` evaluations at once (at least one), waiting at most
    /// `queue_timeout` for a slot, each limited to the `eval_timeout` of its
    /// policy set's configuration; request memory limited to
    /// [`DEFAULT_MEMORY_BUDGET`] (see [`Evaluator::with_memory_budget`]).
    pub fn new(limit: usize, queue_timeout: Duration) -> Self {
        let limit = limit.max(1);
        Self {
            slots: Arc::new(Semaphore::new(limit)),
            limit,
            queue_timeout,
            memory: MemoryBudget::new(DEFAULT_MEMORY_BUDGET, Default::default()),
        }
    }

    /// The same evaluator with a request memory budget of `bytes`.
    pub fn with_memory_budget(mut self, bytes: usize) -> Self {
        self.memory = MemoryBudget::new(bytes, Default::default());
        self
    }

    /// The same evaluator, its memory budget reporting to `gauge` (before
    /// any request reserved from it).
    pub(crate) fn with_memory_gauge(mut self, gauge: Gauge) -> Self {
        self.memory = MemoryBudget::new(self.memory.total(), gauge);
        self
    }

    /// The request memory budget (bodies reserve from it too).
    pub fn memory(&self) -> &MemoryBudget {
        &self.memory
    }

    /// How long a request that arrived at `arrived` may still wait for
    /// memory and a slot.
    pub fn queue_deadline(&self, arrived: Instant) -> Instant {
        arrived + self.queue_timeout
    }

    /// Reserves `memory` bytes, then an evaluation slot, both within the
    /// queue timeout from `arrived` (the handler passes the moment the body
    /// was received and looked at).
    pub async fn admit(
        &self,
        memory: usize,
        arrived: Instant,
        metrics: &Metrics,
    ) -> Result<Admission, EvalFailure> {
        let deadline = self.queue_deadline(arrived);
        let reservation = self.memory.reserve(memory, deadline).await.map_err(|e| {
            self.fail(
                metrics,
                EvalFailure::OutOfMemory {
                    waited: arrived.elapsed(),
                    needed: e.needed,
                    budget: e.total,
                },
            )
        })?;
        let acquire = self.slots.clone().acquire_owned();
        match tokio::time::timeout_at(deadline.into(), acquire).await {
            Ok(Ok(slot)) => Ok(Admission {
                _memory: reservation,
                _slot: slot,
            }),
            // Timed out, or the semaphore was closed (never happens).
            Ok(Err(_)) | Err(_) => Err(self.fail(
                metrics,
                EvalFailure::Overloaded {
                    waited: arrived.elapsed(),
                    limit: self.limit,
                },
            )),
        }
    }

    /// Evaluates `review` with `set` within `admission`; counts and times
    /// it in `metrics`.
    pub async fn evaluate(
        &self,
        admission: Admission,
        set: PolicySet,
        review: Review,
        namespaces: Arc<NamespaceData>,
        inventory: Arc<Inventory>,
        metrics: Arc<Metrics>,
    ) -> Result<Decision, EvalFailure> {
        // Enforced inside the engine; the same limit here bounds a task
        // that never reaches the engine's timer. `None`: unbounded.
        let timeout = set.config().eval_timeout;
        let task_metrics = metrics.clone();
        let task = tokio::task::spawn_blocking(move || {
            task_metrics.in_flight().inc();
            let started = Instant::now();
            let result = set.evaluate_with(&review, &namespaces, &inventory, timeout);
            task_metrics.in_flight().dec();
            task_metrics.observe_evaluation(started.elapsed());
            // The review's tree goes first, then its memory and slot.
            drop(review);
            drop(admission);
            result
        });
        let limit = timeout.unwrap_or(Duration::MAX);
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
