//! Violation records in the API server: one `MapViolation` object per
//! call-site pair and namespace, and a Warning Event on the Pod for each
//! violation, written by a [`RecordWriter`] task that the enforcer's loop
//! feeds without ever waiting on the API server.
//!
//! ```text
//! enforcer loop ──submit()──▶ bounded queue ──▶ writer task ──▶ MapViolation (create / count++ / repair)
//!   (never waits)            (repeats merge,       (backoff     └▶ Event on the Pod (series)
//!                             drops counted)        retries)
//! ```
//!
//! Bounds: per namespace, at most `max_records_per_namespace` records
//! (violations at new pairs beyond it are counted, not written); at most
//! `queue_capacity` records with writes pending while the API server is
//! slow or away, `queue_per_namespace` of them of one namespace, the
//! namespaces served in turn (below it nothing is lost: repeats merge into
//! their entry's count). RBAC the agent needs: `manifests/enforcer/rbac-records.yaml`;
//! the CRD: `manifests/crd/mapviolations.yaml`.
//!
//! ```no_run
//! # async fn wire(client: kube::Client, report: mapguard_enforcer::report::events::ViolationRecord) {
//! use mapguard_agent::records::{Origin, PodRef, RecordWriter, RecordsConfig};
//!
//! // On the agent's tokio runtime, once; the registry is the one /metrics serves.
//! let mut registry = prometheus_client::registry::Registry::default();
//! let writer = RecordWriter::spawn(client, RecordsConfig::new("node-a"), &mut registry);
//! // For every violation, from any thread; never waits.
//! let pod = PodRef {
//!     namespace: "shop".into(),
//!     name: "cart-7d9f".into(),
//!     uid: "6f1c…".into(),
//! };
//! writer.submit(
//!     &report,
//!     Origin { pod: &pod, container: Some("app"), go_version: Some("go1.24.4") },
//! );
//! // On SIGTERM: drain what the grace period allows.
//! writer.shutdown(std::time::Duration::from_secs(5)).await;
//! # }
//! ```

mod error;
mod metrics;
mod pod_events;
mod queue;
mod store;
mod writer;

pub use error::RecordError;
pub use mapguard_api::pair::CallSitePair;
pub use metrics::{DropReason, FailureReason, RecordMetrics, Target, WriteOperation};
pub use pod_events::{REASON as EVENT_REASON, REPORTING_CONTROLLER, message as event_message};
pub use queue::{Admission, PodRef};
pub use store::MANAGED_BY;
pub use writer::{FlushTimeout, Origin, RecordWriter, RecordsConfig};
