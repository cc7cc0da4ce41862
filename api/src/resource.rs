//! The `MapViolation` custom resource (`mapguard.io/v1alpha1`, namespaced,
//! short name `mv`): one object per call-site pair in a namespace.
//!
//! `spec` is the pair's identity and the stacks that show it; `status` is
//! what was observed of it (how often, when, where last, what was done), kept
//! through the status subresource so that users with `edit` on records
//! cannot fake observations. `manifests/crd/mapviolations.yaml` is
//! [`crd_yaml`] (a test checks it; `mapguard-crd` prints it).
//!
//! The words of `kind`, `op`, `action` and `detectedBy` are those of
//! [`crate::vocab`]; they are strings here so that a record of a newer
//! vocabulary still reads.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, CustomResourceExt as _};
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

/// API group of the records (the `group` of the derive below; a test
/// checks that they agree).
pub const GROUP: &str = "mapguard.io";
/// Their version.
pub const VERSION: &str = "v1alpha1";
/// Kind of a record.
pub const KIND: &str = "MapViolation";
/// Resource name (`kubectl get mapviolations`).
pub const PLURAL: &str = "mapviolations";

/// A Go map race seen in this namespace: one call-site pair.
// Each `printcolumn(...)` repeats `type_ = ...`; clippy reads those as
// duplicated attributes of the item.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "mapguard.io",
    version = "v1alpha1",
    kind = "MapViolation",
    plural = "mapviolations",
    shortname = "mv",
    category = "mapguard",
    namespaced,
    status = "MapViolationStatus",
    doc = "A Go map race that mapguard saw in this namespace: one object per call-site pair \
           (kind, both operations, both call sites), counted across Pods and restarts.",
    printcolumn(name = "Kind", type_ = "string", json_path = ".spec.kind"),
    printcolumn(name = "Action", type_ = "string", json_path = ".status.action"),
    printcolumn(name = "Pod", type_ = "string", json_path = ".status.pod"),
    printcolumn(name = "Count", type_ = "integer", json_path = ".status.count"),
    printcolumn(name = "Last Seen", type_ = "date", json_path = ".status.lastSeen"),
    printcolumn(name = "Call site", type_ = "string", json_path = ".spec.site"),
    printcolumn(
        name = "Conflicting site",
        type_ = "string",
        json_path = ".spec.conflictingSite",
        priority = 1
    ),
    printcolumn(
        name = "Node",
        type_ = "string",
        json_path = ".status.node",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct MapViolationSpec {
    /// Kind of race: concurrent_write, delete_during_read, delete_during_iteration,
    /// released_bucket_write, write_during_read or write_during_iteration.
    pub kind: String,
    /// Map operation of the goroutine that was caught (delete, assign, clear, read, iterate, grow).
    pub op: String,
    /// Map operation of the other goroutine.
    pub conflicting_op: String,
    /// First user frame of the caught goroutine's stack, short (`function file.go:line`).
    pub site: String,
    /// First user frame of the other goroutine's stack, short; absent when the other side is not on record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conflicting_site: Option<String>,
    /// The caught goroutine's stack, innermost first (`function /path/file.go:line`).
    pub stack: Vec<String>,
    /// The other goroutine's stack, innermost first; empty when not on record.
    #[serde(default)]
    pub conflicting_stack: Vec<String>,
}

/// What was observed of the pair.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MapViolationStatus {
    /// Violations of this pair recorded (across Pods, containers and restarts).
    #[schemars(range(min = 1))]
    pub count: i64,
    /// When the first recorded one happened.
    #[schemars(schema_with = "date_time")]
    pub first_seen: Time,
    /// When the latest one happened.
    #[schemars(schema_with = "date_time")]
    pub last_seen: Time,
    /// What was done to the process the last time: audit, stopped or killed.
    pub action: String,
    /// How the latest one was found: writing_flag, runtime_fatal or runtime_throw.
    pub detected_by: String,
    /// Node whose agent recorded the latest one.
    pub node: String,
    /// Pod of the latest one.
    pub pod: String,
    /// UID of that Pod.
    pub pod_uid: String,
    /// Container of the latest one, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// Path of the Go binary (as the node saw it) of the latest one.
    pub binary: String,
    /// Go release that built the binary (e.g. go1.24.4), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub go_version: Option<String>,
}

/// RFC 3339 timestamps, as `metav1.Time` is written (`date` printer columns
/// show them as ages).
fn date_time(_: &mut SchemaGenerator) -> Schema {
    json_schema!({"type": "string", "format": "date-time"})
}

/// The CustomResourceDefinition.
pub fn crd() -> CustomResourceDefinition {
    MapViolation::crd()
}

/// The CRD as the YAML committed in `manifests/crd/mapviolations.yaml`.
pub fn crd_yaml() -> String {
    let body = yaml_serde::to_string(&crd()).expect("a CRD serializes to YAML");
    format!(
        "# Generated from api/src/resource.rs: \
         cargo run -p mapguard-api --bin mapguard-crd > manifests/crd/mapviolations.yaml\n\
         {body}"
    )
}

#[cfg(test)]
mod tests {
    use kube::Resource as _;

    use super::*;

    #[test]
    fn the_names_are_the_resources() {
        assert_eq!(MapViolation::group(&()), GROUP);
        assert_eq!(MapViolation::version(&()), VERSION);
        assert_eq!(MapViolation::kind(&()), KIND);
        assert_eq!(MapViolation::plural(&()), PLURAL);
        assert_eq!(MapViolation::api_version(&()), "mapguard.io/v1alpha1");
    }

    #[test]
    fn the_crd_yaml_is_the_committed_manifest() {
        let committed = include_str!("../../manifests/crd/mapviolations.yaml");
        assert!(
            committed == crd_yaml(),
            "manifests/crd/mapviolations.yaml differs from the CRD of api/src/resource.rs; \
             regenerate it: cargo run -p mapguard-api --bin mapguard-crd > manifests/crd/mapviolations.yaml"
        );
    }
}
