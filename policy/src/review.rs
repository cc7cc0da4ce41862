//! The AdmissionReview the engine judges ([`Review`]), read once where it
//! enters: from the bytes the API server sent (the webhook), or from a tree
//! built here for a manifest object ([`create_review`], the CI command).

use kube_core::admission::{AdmissionRequest, AdmissionReview, Operation};
use kube_core::{DynamicObject, GroupVersionKind};
use serde::Deserialize;
use serde_json::{Value as Json, json};

use crate::subject::{ReviewError, Subject};

/// An AdmissionReview read once: its tree as sent (what the policies see)
/// and the fields of its request that the engine and its callers use,
/// typed. Built by [`Review::parse`] from a body, or [`Review::new`] from a
/// tree; nothing reads them from the tree again.
#[derive(Debug, Clone)]
pub struct Review {
    json: Json,
    uid: String,
    kind: GroupVersionKind,
    name: String,
    operation: Option<Operation>,
    subject: Subject,
}

impl Review {
    /// Parses `body`, an AdmissionReview as the API server sends it: one
    /// tree, and the request checked and read with kube's types with its
    /// objects set aside (so nothing large is copied).
    pub fn parse(body: &[u8]) -> Result<Review, ReviewError> {
        let mut json: Json =
            serde_json::from_slice(body).map_err(|e| ReviewError::Malformed(e.to_string()))?;
        let request = json
            .get_mut("request")
            .and_then(Json::as_object_mut)
            .ok_or(ReviewError::NoRequest)?;
        let objects: Vec<(String, Json)> = ["object", "oldObject"]
            .into_iter()
            .filter_map(|key| Some((key.to_owned(), request.remove(key)?)))
            .collect();
        let typed = AdmissionReview::<DynamicObject>::deserialize(&json);
        if let Some(request) = json.get_mut("request").and_then(Json::as_object_mut) {
            request.extend(objects);
        }
        let request: AdmissionRequest<DynamicObject> = typed
            .map_err(|e| ReviewError::Request(e.to_string()))?
            .try_into()
            .map_err(|_| ReviewError::NoRequest)?;
        let members = json
            .get("request")
            .and_then(Json::as_object)
            .ok_or(ReviewError::NoRequest)?;
        let subject = Subject::of(
            members,
            request.kind.kind.clone(),
            request.namespace.as_deref(),
            &request.name,
            request.sub_resource.as_deref(),
        );
        Ok(Review {
            json,
            uid: request.uid,
            kind: request.kind,
            name: request.name,
            operation: Some(request.operation),
            subject,
        })
    }

    /// Reads a review built elsewhere (a manifest's, a test's): it needs a
    /// request object with a `kind.kind`; other fields are read when they
    /// have the expected type and left empty otherwise.
    pub fn new(json: Json) -> Result<Review, ReviewError> {
        let request = json
            .get("request")
            .and_then(Json::as_object)
            .ok_or(ReviewError::NoRequest)?;
        fn text(value: Option<&Json>) -> &str {
            value.and_then(Json::as_str).unwrap_or_default()
        }
        let field = |name: &str| text(request.get(name));
        let kind_of = request.get("kind");
        let kind = GroupVersionKind {
            group: text(kind_of.and_then(|k| k.get("group"))).to_owned(),
            version: text(kind_of.and_then(|k| k.get("version"))).to_owned(),
            kind: kind_of
                .and_then(|k| k.get("kind"))
                .and_then(Json::as_str)
                .ok_or(ReviewError::NoKind)?
                .to_owned(),
        };
        let subject = Subject::of(
            request,
            kind.kind.clone(),
            Some(field("namespace")),
            field("name"),
            Some(field("subResource")),
        );
        let operation = request
            .get("operation")
            .and_then(|o| Operation::deserialize(o).ok());
        Ok(Review {
            uid: field("uid").to_owned(),
            name: field("name").to_owned(),
            operation,
            kind,
            subject,
            json,
        })
    }

    /// The whole review as sent.
    pub fn json(&self) -> &Json {
        &self.json
    }

    /// `request` (an object: both constructors check it).
    pub(crate) fn request(&self) -> Option<&serde_json::Map<String, Json>> {
        self.json.get("request").and_then(Json::as_object)
    }

    /// `request.object` when it is an object.
    pub fn object(&self) -> Option<&Json> {
        self.request()?.get("object").filter(|o| o.is_object())
    }

    /// `request.oldObject` when it is an object.
    pub fn old_object(&self) -> Option<&Json> {
        self.request()?.get("oldObject").filter(|o| o.is_object())
    }

    /// `request.uid`.
    pub fn uid(&self) -> &str {
        &self.uid
    }

    /// `request.kind`.
    pub fn kind(&self) -> &GroupVersionKind {
        &self.kind
    }

    /// `request.name` as sent (empty when absent; see [`Review::subject`]
    /// for the name findings use).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `request.operation`, when it is one of kube's.
    pub fn operation(&self) -> Option<&Operation> {
        self.operation.as_ref()
    }

    /// What findings name.
    pub fn subject(&self) -> &Subject {
        &self.subject
    }
}

/// Kinds that live outside namespaces (no `request.namespace`).
const CLUSTER_SCOPED: [&str; 16] = [
    "Namespace",
    "Node",
    "PersistentVolume",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "StorageClass",
    "PriorityClass",
    "RuntimeClass",
    "IngressClass",
    "CSIDriver",
    "CSINode",
    "APIService",
    "ValidatingWebhookConfiguration",
    "MutatingWebhookConfiguration",
    "ValidatingAdmissionPolicy",
];

/// `apps/v1` → (`apps`, `v1`); `v1` → (``, `v1`).
fn group_version(api_version: &str) -> (&str, &str) {
    match api_version.split_once('/') {
        Some((group, version)) => (group, version),
        None => ("", api_version),
    }
}

/// The resource name the API server would use (lower-case plural).
pub fn plural(kind: &str) -> String {
    let lower = kind.to_ascii_lowercase();
    if lower.ends_with("ss")
        || lower.ends_with('x')
        || lower.ends_with("ch")
        || lower.ends_with("sh")
    {
        format!("{lower}es")
    } else if lower.ends_with('y') && !lower.ends_with("ay") && !lower.ends_with("ey") {
        format!("{}ies", &lower[..lower.len() - 1])
    } else if lower.ends_with('s') {
        lower
    } else {
        format!("{lower}s")
    }
}

/// A CREATE AdmissionReview (admission.k8s.io/v1) for `object`; namespaced
/// objects naming no namespace land in `default_namespace`, as with kubectl.
pub fn create_review(object: &Json, default_namespace: &str, uid: &str) -> Json {
    let kind = object
        .get("kind")
        .and_then(Json::as_str)
        .unwrap_or_default();
    let api_version = object
        .get("apiVersion")
        .and_then(Json::as_str)
        .unwrap_or("v1");
    let (group, version) = group_version(api_version);
    let metadata = object.get("metadata");
    let name = metadata
        .and_then(|m| m.get("name"))
        .and_then(Json::as_str)
        .unwrap_or_default();
    let mut object = object.clone();
    let namespace = if CLUSTER_SCOPED.contains(&kind) {
        String::new()
    } else {
        let ns = metadata
            .and_then(|m| m.get("namespace"))
            .and_then(Json::as_str)
            .filter(|n| !n.is_empty())
            .unwrap_or(default_namespace)
            .to_string();
        // The API server fills in the namespace before admission.
        if let Some(meta) = object.get_mut("metadata").and_then(Json::as_object_mut) {
            meta.insert("namespace".into(), json!(ns));
        }
        ns
    };
    let gvk = json!({"group": group, "version": version, "kind": kind});
    let gvr = json!({"group": group, "version": version, "resource": plural(kind)});
    let mut request = json!({
        "uid": uid,
        "kind": gvk,
        "resource": gvr,
        "requestKind": gvk,
        "requestResource": gvr,
        "name": name,
        "operation": "CREATE",
        "userInfo": {"username": "mapguard-ci", "groups": ["system:authenticated"]},
        "object": object,
        "oldObject": null,
        "dryRun": false,
        "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
    });
    if !namespace.is_empty() {
        request["namespace"] = json!(namespace);
    }
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deployment_review_carries_gvk_gvr_and_default_namespace() {
        let object =
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}});
        let review = create_review(&object, "default", "u1");
        let request = &review["request"];
        assert_eq!(
            request["kind"],
            json!({"group": "apps", "version": "v1", "kind": "Deployment"})
        );
        assert_eq!(request["resource"]["resource"], "deployments");
        assert_eq!(request["namespace"], "default");
        assert_eq!(request["object"]["metadata"]["namespace"], "default");
        assert_eq!(request["operation"], "CREATE");
        assert_eq!(request["name"], "web");
    }

    #[test]
    fn cluster_scoped_objects_have_no_namespace() {
        let object = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}});
        let review = create_review(&object, "default", "u2");
        assert!(review["request"].get("namespace").is_none());
        assert_eq!(review["request"]["resource"]["resource"], "namespaces");
    }

    #[test]
    fn plurals() {
        assert_eq!(plural("Pod"), "pods");
        assert_eq!(plural("Ingress"), "ingresses");
        assert_eq!(plural("NetworkPolicy"), "networkpolicies");
        assert_eq!(plural("Gateway"), "gateways");
    }
}
