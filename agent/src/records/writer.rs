//! The record writer: `submit` from the enforcer's loop (never waits), one
//! tokio task writing records and Events (namespaces in turn, each in the
//! order they came), retrying with backoff while the API server is away.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use mapguard_kube::Backoff;
use prometheus_client::registry::Registry;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn};

use super::error::RecordError;
use super::metrics::{DropReason, RecordMetrics, Target, WriteOperation};
use super::pod_events::PodEvents;
use super::queue::{Admission, Observation, Pending, PodRef, Queue, RecordKey};
use super::store::{Store, Written};
use mapguard_enforcer::report::events::ViolationRecord;

/// Settings of the writer (the daemon's configuration owns their flags).
#[derive(Debug, Clone)]
pub struct RecordsConfig {
    /// This node's name (`spec.nodeName`), written into records and Events.
    pub node: String,
    /// Records (call-site pairs) one namespace may hold; violations at new
    /// pairs beyond it are dropped and counted.
    pub max_records_per_namespace: usize,
    /// Records with writes pending (repeats of a pending pair merge into
    /// its entry); new pairs beyond it are dropped and counted.
    pub queue_capacity: usize,
    /// Of `queue_capacity`, the most one namespace may hold (namespaces
    /// are served in turn); new pairs beyond it are dropped and counted.
    pub queue_per_namespace: usize,
    /// Publish a Warning Event on the Pod for each violation.
    pub events: bool,
    /// First retry delay after a failed write; doubles up to `max_backoff`.
    pub min_backoff: Duration,
    /// Longest retry delay.
    pub max_backoff: Duration,
    /// Longest wait for one record or Event write (all its requests); a
    /// write that takes longer is retried. Bounds what a hung API server
    /// (accepting connections, never answering) costs.
    pub write_timeout: Duration,
}

impl RecordsConfig {
    /// Defaults for the agent on `node`.
    pub fn new(node: impl Into<String>) -> Self {
        RecordsConfig {
            node: node.into(),
            max_records_per_namespace: 100,
            queue_capacity: 1000,
            queue_per_namespace: 100,
            events: true,
            min_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(30),
            write_timeout: Duration::from_secs(30),
        }
    }
}

/// The Kubernetes identity of a violating process, as the daemon knows it
/// from the Pod it attached to.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    /// The Pod (namespace, name, uid).
    pub pod: &'a PodRef,
    /// The container's name, if known.
    pub container: Option<&'a str>,
    /// The Go release of the binary (e.g. `go1.24.4`), if known.
    pub go_version: Option<&'a str>,
}

/// State shared by the handle and the task.
struct Shared {
    queue: Queue,
    wake: Notify,
    length: watch::Sender<usize>,
    metrics: RecordMetrics,
    events: bool,
}

/// Handle of the writer task; dropping it stops the task (pending writes
/// are lost: call [`RecordWriter::shutdown`] first to drain).
pub struct RecordWriter {
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

/// The queue was not empty when a wait ended.
#[derive(Debug, thiserror::Error)]
#[error("{pending} record writes still pending after {waited:?}")]
pub struct FlushTimeout {
    pub pending: usize,
    pub waited: Duration,
}

impl RecordWriter {
    /// Starts the writer task on the current tokio runtime, its metrics
    /// registered in `registry`. `client` needs the rules of
    /// `manifests/enforcer/rbac-records.yaml`.
    pub fn spawn(client: kube::Client, config: RecordsConfig, registry: &mut Registry) -> Self {
        let metrics = RecordMetrics::register(registry);
        let length = watch::Sender::new(0);
        let observer = {
            let (length, metrics) = (length.clone(), metrics.clone());
            Box::new(move |n: usize| {
                metrics.set_queue_length(n);
                length.send_replace(n);
            })
        };
        let shared = Arc::new(Shared {
            queue: Queue::new(
                config.queue_capacity.max(1),
                config.queue_per_namespace.max(1),
                observer,
            ),
            wake: Notify::new(),
            length,
            metrics,
            events: config.events,
        });
        let worker = Worker {
            shared: shared.clone(),
            store: Store::new(
                client.clone(),
                config.node.clone(),
                config.max_records_per_namespace,
            ),
            events: config
                .events
                .then(|| PodEvents::new(client, config.node.clone())),
            backoff: Backoff::new(config.min_backoff, config.max_backoff),
            write_timeout: config.write_timeout,
            failing_since: None,
        };
        let task = tokio::spawn(worker.run());
        RecordWriter { shared, task }
    }

    /// Queues `violation` (from the Pod of `origin`) for its record and
    /// Event. Never waits: takes a short lock and returns what became of it.
    /// Callable from any thread.
    pub fn submit(&self, violation: &ViolationRecord, origin: Origin<'_>) -> Admission {
        let pair = violation.pair.clone();
        let key = RecordKey {
            namespace: origin.pod.namespace.clone(),
            name: pair.object_name(),
        };
        let observation = Observation {
            // The report's own time (when the kernel saw it), not when it
            // reaches the API server.
            at: Timestamp::try_from(violation.timestamp).unwrap_or_else(|_| Timestamp::now()),
            action: violation.action,
            detected_by: violation.detected_by,
            pod: origin.pod.clone(),
            container: origin.container.map(str::to_owned),
            binary: violation.binary.clone(),
            go_version: origin.go_version.map(str::to_owned),
            stack: violation.stack.clone(),
            conflicting_stack: violation.conflicting_stack.clone(),
        };
        let (admission, events_lost, _) = self
            .shared
            .queue
            .push(key.clone(), Pending::new(pair, observation));
        let metrics = &self.shared.metrics;
        let events_lost = events_lost + u64::from(admission == Admission::Dropped);
        if self.shared.events {
            metrics.dropped(Target::event, DropReason::queue_full, events_lost);
        }
        match admission {
            Admission::Dropped => {
                metrics.dropped(Target::record, DropReason::queue_full, 1);
                // Debug only: the counter tells, and a log line per dropped
                // violation is what the bound is there to prevent.
                debug!(namespace = %key.namespace, record = %key.name, "record queue full: violation dropped");
            }
            Admission::Queued | Admission::Merged => {}
        }
        self.shared.wake.notify_one();
        admission
    }

    /// Records with writes pending, including the one being written.
    pub fn pending(&self) -> usize {
        self.shared.queue.len()
    }

    /// The writer's metrics.
    pub fn metrics(&self) -> &RecordMetrics {
        &self.shared.metrics
    }

    /// Waits until every pending write is done (or given up), at most
    /// `timeout`.
    pub async fn flush(&self, timeout: Duration) -> Result<(), FlushTimeout> {
        let mut length = self.shared.length.subscribe();
        match tokio::time::timeout(timeout, length.wait_for(|n| *n == 0)).await {
            Ok(_) => Ok(()),
            Err(_) => Err(FlushTimeout {
                pending: self.pending(),
                waited: timeout,
            }),
        }
    }

    /// Drains the queue for at most `grace`, then stops the task. Returns
    /// how many records still had writes pending (logged as lost).
    pub async fn shutdown(self, grace: Duration) -> usize {
        let left = match self.flush(grace).await {
            Ok(()) => 0,
            Err(timeout) => {
                warn!(
                    pending = timeout.pending,
                    "stopping with {} violation records not written", timeout.pending
                );
                timeout.pending
            }
        };
        self.task.abort();
        left
    }
}

impl Drop for RecordWriter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The task's state.
struct Worker {
    shared: Arc<Shared>,
    store: Store,
    events: Option<PodEvents>,
    backoff: Backoff,
    write_timeout: Duration,
    /// Set while writes keep failing with retryable errors.
    failing_since: Option<std::time::Instant>,
}

impl Worker {
    async fn run(mut self) {
        loop {
            let Some((key, mut pending)) = self.shared.queue.pop() else {
                self.shared.wake.notified().await;
                continue;
            };
            match self.process(&key, &mut pending).await {
                Ok(()) => {
                    if let Some(since) = self.failing_since.take() {
                        info!(
                            pending = self.shared.queue.len(),
                            "API server reachable again after {:.1?}; writing queued violation records",
                            since.elapsed()
                        );
                    }
                    self.backoff.reset();
                    self.shared.queue.done();
                }
                Err(e) => {
                    let (lost, length) = self.shared.queue.requeue(key, pending);
                    self.shared
                        .metrics
                        .dropped(Target::event, DropReason::queue_full, lost);
                    let delay = self.backoff.next();
                    if self.failing_since.is_none() {
                        self.failing_since = Some(std::time::Instant::now());
                        warn!(
                            pending = length,
                            "{e}; {length} violation records queued, retrying with backoff"
                        );
                    } else {
                        debug!(pending = length, ?delay, "{e}; retrying");
                    }
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// Writes what `pending` holds; on a retryable failure returns it with
    /// `pending` reduced to what is left to do. Other failures are logged,
    /// counted and given up.
    async fn process(&mut self, key: &RecordKey, pending: &mut Pending) -> Result<(), RecordError> {
        let metrics = self.shared.metrics.clone();
        if pending.unrecorded > 0 {
            let write = self.store.write(key, pending);
            // A write cut off here is tried again whole; if its last request
            // had reached etcd, that occurrence is counted twice.
            let timed = tokio::time::timeout(self.write_timeout, write).await;
            let what = || format!("MapViolation {}/{}", key.namespace, key.name);
            match timed.unwrap_or_else(|_| Err(timed_out("write", what(), self.write_timeout))) {
                Ok(written) => match written {
                    Written::Created => metrics.written(WriteOperation::created),
                    Written::Updated => metrics.written(WriteOperation::updated),
                    Written::Repaired => metrics.written(WriteOperation::repaired),
                    Written::OverBound => {
                        pending.over_bound = true;
                        metrics.dropped(
                            Target::record,
                            DropReason::namespace_bound,
                            pending.unrecorded,
                        );
                    }
                },
                Err(e) => {
                    metrics.failed(Target::record, e.reason());
                    if e.is_retryable() {
                        return Err(e);
                    }
                    error!(namespace = %key.namespace, record = %key.name, reason = ?e.reason(), "{e}");
                }
            }
            pending.unrecorded = 0;
        }
        let Some(events) = self.events.as_mut() else {
            pending.events.clear();
            return Ok(());
        };
        while let Some(event) = pending.events.first() {
            let publish = events.publish(key, &pending.pair, event, !pending.over_bound);
            let what = || format!("Event on Pod {}/{}", event.pod.namespace, event.pod.name);
            let timed = tokio::time::timeout(self.write_timeout, publish).await;
            match timed.unwrap_or_else(|_| Err(timed_out("create", what(), self.write_timeout))) {
                Ok(()) => metrics.event_published(),
                Err(e) => {
                    metrics.failed(Target::event, e.reason());
                    if e.is_retryable() {
                        return Err(e);
                    }
                    error!(namespace = %key.namespace, pod = %event.pod.name, reason = ?e.reason(), "{e}");
                }
            }
            pending.events.remove(0);
        }
        Ok(())
    }
}

/// A write that got no answer in time (retried like an unreachable server).
fn timed_out(verb: &'static str, what: String, limit: Duration) -> RecordError {
    RecordError::Unavailable {
        verb,
        what,
        message: format!("no answer within {limit:?}"),
    }
}
