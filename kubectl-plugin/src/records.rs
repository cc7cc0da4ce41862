//! The `MapViolation` records (`mapguard.io/v1alpha1`) as the plugin
//! reads them: the objects exactly as the API server sent them (what
//! `-o json|yaml` prints), and a lenient view of the fields the tables and
//! traces show.
//!
//! The schema belongs to the node agent (`enforcer/src/records/crd.rs`);
//! the plugin does not link the agent (that needs the BPF toolchain to
//! build), so it names the fields it reads here, and a test checks them
//! against the agent's CRD and records. The view is lenient on purpose: a
//! record's status is written just after the record is created, and an old
//! plugin must still list records of a newer agent.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use serde::Deserialize;

use crate::clusters::{Scope, Target};

/// API group of the records.
pub const GROUP: &str = "mapguard.io";
/// Its version.
pub const VERSION: &str = "v1alpha1";
/// Kind of a record.
pub const KIND: &str = "MapViolation";
/// Resource name.
pub const PLURAL: &str = "mapviolations";
/// Annotation naming the kubeconfig context a record was read from, added
/// to the objects printed by `-o json|yaml` (kubectl's output has no other
/// place for it).
pub const CONTEXT_ANNOTATION: &str = "mapguard.io/context";

/// The records' API resource.
pub fn api_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(GROUP, VERSION, KIND), PLURAL)
}

/// The records of `target`'s scope (a namespace, or all).
pub fn api(target: &Target) -> Api<kube::api::DynamicObject> {
    let resource = api_resource();
    match &target.scope {
        Scope::Namespace(ns) => Api::namespaced_with(target.client.clone(), ns, &resource),
        Scope::All => Api::all_with(target.client.clone(), &resource),
    }
}

/// `spec` of a record: the call-site pair.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Spec {
    pub kind: String,
    pub op: String,
    pub conflicting_op: String,
    pub site: String,
    pub conflicting_site: Option<String>,
}

/// `status` of a record: what was observed of the pair.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Status {
    pub count: i64,
    pub first_seen: Option<Time>,
    pub last_seen: Option<Time>,
    pub action: String,
    pub detected_by: String,
    pub node: String,
    pub pod: String,
    pub container: Option<String>,
    pub binary: String,
    pub go_version: Option<String>,
}

/// One record read from one context.
#[derive(Debug, Clone)]
pub struct Record {
    /// The kubeconfig context it came from.
    pub context: String,
    /// The object as the API server sent it.
    pub object: DynamicObject,
    pub spec: Spec,
    /// `None` until the agent's first status write.
    pub status: Option<Status>,
}

impl Record {
    /// Reads the view of `object`; fields that do not parse read as empty.
    pub fn new(context: &str, object: DynamicObject) -> Self {
        let field = |name: &str| object.data.get(name).cloned();
        let spec = field("spec")
            .and_then(|v| serde_json::from_value(v).ok())
            .unwrap_or_default();
        let status = field("status").and_then(|v| serde_json::from_value(v).ok());
        Record {
            context: context.to_owned(),
            object,
            spec,
            status,
        }
    }

    pub fn name(&self) -> &str {
        self.object.metadata.name.as_deref().unwrap_or("")
    }

    pub fn namespace(&self) -> &str {
        self.object.metadata.namespace.as_deref().unwrap_or("")
    }

    /// Occurrences recorded (0 before the first status write).
    pub fn count(&self) -> i64 {
        self.status.as_ref().map_or(0, |s| s.count)
    }

    /// When it was last seen; a record without one yet counts from its
    /// creation.
    pub fn last_seen(&self) -> Option<Timestamp> {
        self.status
            .as_ref()
            .and_then(|s| s.last_seen.as_ref())
            .map(|t| t.0)
            .or_else(|| self.created())
    }

    pub fn created(&self) -> Option<Timestamp> {
        self.object
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0)
    }

    /// Identity across contexts: (context, namespace, name).
    pub fn key(&self) -> (String, String, String) {
        (
            self.context.clone(),
            self.namespace().to_owned(),
            self.name().to_owned(),
        )
    }

    /// The object for `-o json|yaml`: as sent, with its `apiVersion` and
    /// `kind` (lists may leave them out) and the context annotation.
    pub fn printable(&self) -> DynamicObject {
        let mut object = self.object.clone();
        object.types = Some(kube::api::TypeMeta {
            api_version: format!("{GROUP}/{VERSION}"),
            kind: KIND.to_owned(),
        });
        object
            .metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(CONTEXT_ANNOTATION.to_owned(), self.context.clone());
        object
    }

    /// Orders least recently seen first (then by context, namespace, name):
    /// the order of `audit`.
    pub fn by_last_seen(a: &Record, b: &Record) -> std::cmp::Ordering {
        a.last_seen()
            .cmp(&b.last_seen())
            .then_with(|| a.key().cmp(&b.key()))
    }
}

/// `namespace "shop"` or `all namespaces`, for messages.
pub fn where_(scope: &Scope) -> String {
    match scope {
        Scope::Namespace(ns) => format!("in namespace {ns:?}"),
        Scope::All => "in all namespaces".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(value: serde_json::Value) -> DynamicObject {
        serde_json::from_value(value).expect("a DynamicObject")
    }

    #[test]
    fn a_record_without_status_is_seen_at_its_creation() {
        let r = Record::new(
            "east",
            object(json!({
                "apiVersion": "mapguard.io/v1alpha1", "kind": "MapViolation",
                "metadata": {"name": "concurrent-write-1", "namespace": "shop",
                             "creationTimestamp": "2026-11-20T10:00:00Z"},
                "spec": {"kind": "concurrent_write", "op": "assign", "conflictingOp": "delete",
                         "site": "main.a a.go:1", "stack": []},
            })),
        );
        assert_eq!(r.count(), 0);
        assert_eq!(r.spec.site, "main.a a.go:1");
        assert_eq!(r.spec.conflicting_site, None);
        assert_eq!(
            r.last_seen(),
            Some("2026-11-20T10:00:00Z".parse().expect("a time"))
        );
    }

    #[test]
    fn fields_that_do_not_parse_read_as_empty_and_printing_names_the_context() {
        let r = Record::new(
            "west",
            object(json!({
                "metadata": {"name": "x", "namespace": "pay"},
                "spec": {"kind": 7},
                "status": {"count": 3, "lastSeen": "2026-11-21T10:00:00Z", "pod": "p",
                           "futureField": true},
            })),
        );
        assert_eq!(r.spec, Spec::default());
        assert_eq!(r.count(), 3);
        let printed = serde_json::to_value(r.printable()).expect("serializes");
        assert_eq!(printed["apiVersion"], "mapguard.io/v1alpha1");
        assert_eq!(printed["kind"], "MapViolation");
        assert_eq!(
            printed["metadata"]["annotations"][CONTEXT_ANNOTATION],
            "west"
        );
        assert_eq!(
            printed["status"]["futureField"], true,
            "unknown fields are printed as sent"
        );
    }
}
