//! Rego policy engine shared by the admission webhook and the CI command.
//!
//! A [`PolicySet`] compiles `*.rego` files with [regorus] and judges whole
//! AdmissionReviews, each read once into a [`Review`] where it enters (the
//! webhook's request body, the CI command's manifest):
//!
//! * Policies are written against a **Pod** (`input.request.object`). Pods
//!   are judged directly; Deployments, StatefulSets, DaemonSets, ReplicaSets,
//!   ReplicationControllers, Jobs and CronJobs through the Pod their template
//!   would create ([`subject`]); findings name the controller and patches are
//!   re-rooted onto the template ([`patch`]).
//! * Each package may declare the sets `deny`, `warn` and `patch`, and
//!   `enforcement := "deny" | "warn" | "dry-run"` ([`Action`]), which the
//!   engine configuration can override per package ([`EngineConfig`]).
//! * Namespace labels/annotations are `data.kubernetes.namespaces[ns]`
//!   ([`NamespaceData`]); exempt namespaces skip evaluation entirely.
//! * Evaluation is bounded by regorus's execution timer; every failure is an
//!   [`EvalError`], never an implicit allow.
//! * [`PolicySet::run_tests`] runs each `test_` rule on its own.
//!
//! ```
//! use mapguard_policy::{EngineConfig, NamespaceData, PolicySet, Review};
//! let set = PolicySet::embedded(&EngineConfig::default());
//! let review = Review::new(serde_json::json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
//!     "request": {"uid": "1", "operation": "CREATE", "namespace": "default",
//!         "kind": {"group": "", "version": "v1", "kind": "Pod"},
//!         "object": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
//!             "spec": {"hostPID": true, "containers": [{"name": "c", "image": "busybox"}]}}}}))
//!     .expect("a request with a kind");
//! let decision = set.evaluate(&review, &NamespaceData::new()).expect("evaluates");
//! assert!(!decision.allowed);
//! ```

mod action;
mod config;
mod diagnostic;
mod evaluate;
pub mod gatekeeper;
mod input;
mod namespaces;
pub mod patch;
pub mod review;
mod set;
pub mod subject;
mod testing;

pub use action::{Action, ParseActionError, parse_enforcement_override};
pub use config::{
    ConfigError, DEFAULT_EXEMPT_NAMESPACES, DEFAULT_LABEL_ADMIN_GROUPS, EngineConfig,
};
pub use evaluate::{Decision, EvalError, Finding};
pub use gatekeeper::{
    Admitted, Candidate, ConstraintInfo, GatekeeperError, Inventory, Syntax, Unsupported,
};
pub use namespaces::{NamespaceData, NamespaceError, NamespaceMeta, unpack_lists};
pub use review::Review;
pub use set::{LoadError, PolicyInfo, PolicySet};
pub use subject::{ReviewError, Subject};
pub use testing::{TestReport, TestResult};
