//! Wrapping a manifest object in the CREATE AdmissionReview the API server
//! would send the webhook for it.

use serde_json::{Value as Json, json};

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
