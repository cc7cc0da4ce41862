//! The Kubernetes plumbing every mapguard binary shares, written once:
//!
//! - [`client`]: a client from `--kubeconfig`, else kube's inference
//!   (`KUBECONFIG`, `~/.kube/config`, the in-cluster service account);
//! - [`cache`]: kube-runtime's reflector [`Store`](kube::runtime::reflector::Store)
//!   behind a [`Cache`](cache::Cache) that also says whether the initial
//!   list is done and since when the watch has been failing;
//! - [`errors`]: a failed request sorted into what the caller does next
//!   (handle it, retry it, or report a refusal such as RBAC's);
//! - [`backoff`]: the exponential back-off with jitter of every retry loop;
//! - [`telemetry`]: the `tracing` subscriber of every binary;
//! - [`ops`] (feature `ops`): the ops port's `/metrics`, `/healthz` and
//!   `/readyz`, answered alike by the webhook, the agent and the responder.
//!
//! Without the default `kube` feature only [`backoff`] and [`telemetry`]
//! are built (the offline `mapguard` CLI takes that).

pub mod backoff;
#[cfg(feature = "kube")]
pub mod cache;
#[cfg(feature = "kube")]
pub mod client;
#[cfg(feature = "kube")]
pub mod errors;
#[cfg(feature = "ops")]
pub mod ops;
pub mod telemetry;

pub use backoff::Backoff;
#[cfg(feature = "kube")]
pub use cache::{Cache, Connection, Reflector, Update};
#[cfg(feature = "kube")]
pub use client::{ClientError, client, config};
#[cfg(feature = "kube")]
pub use errors::{ApiErrorClass, classify};
