//! The `MapViolation` records (`mapguard.io/v1alpha1`) as the plugin
//! reads them: the objects exactly as the API server sent them (what
//! `-o json|yaml` prints), and their `spec` and `status` read as the
//! resource of `mapguard-api` (the schema the node agent writes).
//!
//! A record's status is written just after the record is created: until
//! then it reads as `None`. A field that does not parse leaves the spec
//! empty or the status unread (the API server validates both against the
//! CRD's schema, so only a record of another schema version can); a newer
//! agent's extra fields are ignored.

use k8s_openapi::jiff::Timestamp;
use kube::api::{ApiResource, DynamicObject};
use kube::{Api, Resource as _};
use mapguard_api::keys::CONTEXT_ANNOTATION;
use mapguard_api::resource::{KIND, MapViolation, MapViolationSpec, MapViolationStatus};

use crate::clusters::{Scope, Target};

/// The records' API resource.
pub fn api_resource() -> ApiResource {
    ApiResource::erase::<MapViolation>(&())
}

/// The records of `target`'s scope (a namespace, or all).
pub fn api(target: &Target) -> Api<kube::api::DynamicObject> {
    let resource = api_resource();
    match &target.scope {
        Scope::Namespace(ns) => Api::namespaced_with(target.client.clone(), ns, &resource),
        Scope::All => Api::all_with(target.client.clone(), &resource),
    }
}

/// One record read from one context.
#[derive(Debug, Clone)]
pub struct Record {
    /// The kubeconfig context it came from.
    pub context: String,
    /// The object as the API server sent it.
    pub object: DynamicObject,
    pub spec: MapViolationSpec,
    /// `None` until the agent's first status write.
    pub status: Option<MapViolationStatus>,
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
            .map(|s| s.last_seen.0)
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
            api_version: MapViolation::api_version(&()).into_owned(),
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

/// For unit tests: a record as the agent writes it, `fields` (`metadata`,
/// and fields of `spec` and `status`) over a complete spec and status.
#[cfg(test)]
pub(crate) fn sample(fields: serde_json::Value) -> DynamicObject {
    let mut object = serde_json::json!({
        "apiVersion": "mapguard.io/v1alpha1", "kind": "MapViolation",
        "spec": {"kind": "concurrent_write", "op": "assign", "conflictingOp": "delete",
                 "site": "main.a a.go:1", "stack": []},
        "status": {"count": 1, "firstSeen": "2026-11-20T10:00:00Z",
                   "lastSeen": "2026-11-20T10:00:00Z", "action": "audit",
                   "detectedBy": "writing_flag", "node": "node-a", "pod": "p", "podUid": "u",
                   "binary": "/app"},
    });
    for (part, value) in fields.as_object().expect("fields are an object") {
        match (object.get_mut(part), value) {
            (Some(serde_json::Value::Object(base)), serde_json::Value::Object(set)) => {
                base.extend(set.clone());
            }
            _ => {
                object[part] = value.clone();
            }
        }
    }
    serde_json::from_value(object).expect("a DynamicObject")
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
        assert_eq!(r.spec, MapViolationSpec::default());
        assert_eq!(
            r.status, None,
            "a status without its required fields is not read"
        );
        assert_eq!(r.count(), 0);
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

    #[test]
    fn a_newer_agents_extra_fields_are_passed_over() {
        let r = Record::new(
            "east",
            object(json!({
                "metadata": {"name": "x", "namespace": "pay"},
                "spec": {"kind": "concurrent_write", "op": "assign", "conflictingOp": "delete",
                         "site": "main.a a.go:1", "stack": [], "futureField": 1},
                "status": {"count": 3, "firstSeen": "2026-11-21T09:00:00Z",
                           "lastSeen": "2026-11-21T10:00:00Z", "action": "killed",
                           "detectedBy": "writing_flag", "node": "n", "pod": "p", "podUid": "u",
                           "binary": "/app", "futureField": true},
            })),
        );
        assert_eq!(r.spec.kind, "concurrent_write");
        assert_eq!(r.count(), 3);
        assert_eq!(
            r.last_seen(),
            Some("2026-11-21T10:00:00Z".parse().expect("a time"))
        );
    }
}
