//! What is being judged: a Pod directly, or the pod template of a controller.
//!
//! Policies are written against a Pod. For Deployments, StatefulSets,
//! DaemonSets, ReplicaSets, ReplicationControllers, Jobs and CronJobs the
//! engine synthesizes the Pod their template would create and evaluates that;
//! patches are re-rooted onto the template ([`template_pointer`]).

use std::borrow::Cow;

use serde::Serialize;
use serde_json::{Map, Value as Json, json};

/// The object named in findings: kind, namespace and name, and the
/// subresource written when the request is not for the object itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Subject {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    /// `ephemeralcontainers` when `kubectl debug` adds a container to a
    /// running Pod (the review's object is then the whole Pod); empty for
    /// the object itself.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub subresource: String,
}

impl Subject {
    /// `Kind namespace/name` (or `Kind name` when cluster-scoped), then the
    /// subresource if any: `Pod shop/web (ephemeral containers)`.
    pub fn display(&self) -> String {
        let object = match (self.namespace.is_empty(), self.name.is_empty()) {
            (true, _) => format!("{} {}", self.kind, self.name),
            (false, true) => format!("{} {}/<unnamed>", self.kind, self.namespace),
            (false, false) => format!("{} {}/{}", self.kind, self.namespace, self.name),
        };
        match self.subresource.as_str() {
            "" => object,
            "ephemeralcontainers" => format!("{object} (ephemeral containers)"),
            other => format!("{object} (subresource {other})"),
        }
    }
}

impl std::fmt::Display for Subject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.display())
    }
}

/// JSON pointer of the pod template inside a controller of `kind`, if it is
/// one of the controllers the engine unpacks.
pub fn template_pointer(kind: &str) -> Option<&'static str> {
    match kind {
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "ReplicationController"
        | "Job" => Some("/spec/template"),
        "CronJob" => Some("/spec/jobTemplate/spec/template"),
        _ => None,
    }
}

/// A review made ready for the policies.
#[derive(Debug)]
pub(crate) struct Unpacked<'a> {
    pub subject: Subject,
    /// The AdmissionReview the policies see (`input`): the original one, or
    /// one whose object is the Pod synthesized from a controller's template.
    pub input: Cow<'a, Json>,
    /// Where policy patches land in the reviewed object: `None` for a Pod or
    /// any other kind (patches apply as written), the template pointer for a
    /// controller.
    pub template_pointer: Option<&'static str>,
    /// The object patches are checked against (the Pod, or the template).
    pub patch_target: Option<&'a Json>,
}

/// Why a review cannot be judged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReviewError {
    #[error("AdmissionReview has no request object")]
    NoRequest,
    #[error("AdmissionReview request has no kind.kind")]
    NoKind,
    #[error("AdmissionReview cannot be handed to the policies: {0}")]
    NotJson(String),
    #[error("{kind} {name}: field {pointer} is not an object")]
    BadTemplate {
        kind: String,
        name: String,
        pointer: String,
    },
}

/// Extracts the subject and builds the policy input from a whole review.
pub(crate) fn unpack(review: &Json) -> Result<Unpacked<'_>, ReviewError> {
    let request = review
        .get("request")
        .and_then(Json::as_object)
        .ok_or(ReviewError::NoRequest)?;
    let kind = request
        .get("kind")
        .and_then(|k| k.get("kind"))
        .and_then(Json::as_str)
        .ok_or(ReviewError::NoKind)?
        .to_string();
    let object = request.get("object").filter(|o| o.is_object());
    let old_object = request.get("oldObject").filter(|o| o.is_object());
    let meta_of = |o: Option<&Json>, field: &str| {
        o.and_then(|o| o.get("metadata"))
            .and_then(|m| m.get(field))
            .and_then(Json::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    let str_field = |field: &str| {
        request
            .get(field)
            .and_then(Json::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    let subject = Subject {
        namespace: str_field("namespace")
            .or_else(|| meta_of(object.or(old_object), "namespace"))
            .unwrap_or_default(),
        name: str_field("name")
            .or_else(|| meta_of(object.or(old_object), "name"))
            .or_else(|| meta_of(object, "generateName"))
            .unwrap_or_default(),
        kind,
        subresource: str_field("subResource").unwrap_or_default(),
    };

    let pointer = template_pointer(&subject.kind);
    let (Some(pointer), Some(object)) = (pointer, object) else {
        // A Pod, another kind, or a DELETE (no object): policies see the review as sent.
        return Ok(Unpacked {
            patch_target: object,
            input: Cow::Borrowed(review),
            template_pointer: None,
            subject,
        });
    };

    let template = template_of(object, pointer, &subject)?;
    let pod = synthesize_pod(object, template, &subject);
    let old_pod = match old_object {
        Some(old) => template_of(old, pointer, &subject)
            .map(|t| synthesize_pod(old, t, &subject))
            .unwrap_or(Json::Null),
        None => Json::Null,
    };
    // Everything of the request but its objects: the controller is not
    // copied only to be replaced by its Pod.
    let mut request: Map<String, Json> = request
        .iter()
        .filter(|(key, value)| {
            !(matches!(key.as_str(), "object" | "oldObject") && value.is_object())
        })
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect();
    let pod_kind = json!({"group": "", "version": "v1", "kind": "Pod"});
    let pod_resource = json!({"group": "", "version": "v1", "resource": "pods"});
    request.insert("kind".into(), pod_kind.clone());
    request.insert("resource".into(), pod_resource.clone());
    request.insert("requestKind".into(), pod_kind);
    request.insert("requestResource".into(), pod_resource);
    request.insert("object".into(), pod);
    if old_object.is_some() {
        request.insert("oldObject".into(), old_pod);
    }
    let mut input = Map::new();
    for key in ["apiVersion", "kind"] {
        if let Some(v) = review.get(key) {
            input.insert(key.into(), v.clone());
        }
    }
    input.insert("request".into(), Json::Object(request));
    Ok(Unpacked {
        subject,
        input: Cow::Owned(Json::Object(input)),
        template_pointer: Some(pointer),
        patch_target: template,
    })
}

/// The template of a controller; `None` when it has none (an empty pod is judged).
fn template_of<'a>(
    object: &'a Json,
    pointer: &str,
    subject: &Subject,
) -> Result<Option<&'a Json>, ReviewError> {
    match object.pointer(pointer) {
        Some(t) if t.is_object() => Ok(Some(t)),
        None | Some(Json::Null) => Ok(None),
        Some(_) => Err(ReviewError::BadTemplate {
            kind: subject.kind.clone(),
            name: subject.name.clone(),
            pointer: pointer.to_string(),
        }),
    }
}

/// The Pod a controller's template would create: template metadata (labels,
/// annotations) and spec, the owner's name and namespace, an owner reference.
fn synthesize_pod(owner: &Json, template: Option<&Json>, subject: &Subject) -> Json {
    let mut metadata = template
        .and_then(|t| t.get("metadata"))
        .and_then(Json::as_object)
        .cloned()
        .unwrap_or_default();
    if !metadata.contains_key("namespace") && !subject.namespace.is_empty() {
        metadata.insert("namespace".into(), json!(subject.namespace));
    }
    if !metadata.contains_key("name") && !subject.name.is_empty() {
        metadata.insert("name".into(), json!(subject.name));
    }
    metadata.insert(
        "ownerReferences".into(),
        json!([{
            "apiVersion": owner.get("apiVersion").cloned().unwrap_or(Json::Null),
            "kind": subject.kind,
            "name": subject.name,
            "controller": true,
        }]),
    );
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": template
            .and_then(|t| t.get("spec"))
            .cloned()
            .unwrap_or_else(|| json!({})),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn review(kind: &str, object: Json) -> Json {
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
            "uid": "1", "operation": "CREATE", "namespace": "shop",
            "kind": {"group": "apps", "version": "v1", "kind": kind},
            "object": object,
        }})
    }

    #[test]
    fn cronjob_template_becomes_a_pod_named_after_the_owner() {
        let object = json!({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "nightly"},
            "spec": {"jobTemplate": {"spec": {"template": {
                "metadata": {"labels": {"app": "n"}},
                "spec": {"containers": [{"name": "c", "image": "i"}]}}}}}});
        let review = review("CronJob", object);
        let unpacked = unpack(&review).expect("valid review");
        assert_eq!(
            unpacked.template_pointer,
            Some("/spec/jobTemplate/spec/template")
        );
        let pod = &unpacked.input["request"]["object"];
        assert_eq!(pod["kind"], "Pod");
        assert_eq!(pod["metadata"]["name"], "nightly");
        assert_eq!(pod["metadata"]["namespace"], "shop");
        assert_eq!(pod["metadata"]["labels"]["app"], "n");
        assert_eq!(pod["spec"]["containers"][0]["name"], "c");
        assert_eq!(unpacked.input["request"]["kind"]["kind"], "Pod");
        assert_eq!(unpacked.subject.display(), "CronJob shop/nightly");
    }

    #[test]
    fn pods_and_other_kinds_pass_through() {
        let r = review("ConfigMap", json!({"metadata": {"name": "cm"}}));
        let unpacked = unpack(&r).expect("valid review");
        assert_eq!(*unpacked.input, r);
        assert_eq!(unpacked.template_pointer, None);
        assert_eq!(
            unpack(&json!({"kind": "AdmissionReview"})).unwrap_err(),
            ReviewError::NoRequest
        );
    }

    #[test]
    fn an_ephemeral_container_update_is_judged_as_its_pod_and_named_so() {
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web"},
            "spec": {"containers": [{"name": "app", "image": "i"}],
                "ephemeralContainers": [{"name": "debugger-x", "image": "d"}]}});
        let mut r = review("Pod", pod);
        r["request"]["operation"] = json!("UPDATE");
        r["request"]["name"] = json!("web");
        r["request"]["subResource"] = json!("ephemeralcontainers");
        let unpacked = unpack(&r).expect("valid review");
        assert_eq!(*unpacked.input, r, "policies see the Pod as sent");
        assert_eq!(
            unpacked.subject.display(),
            "Pod shop/web (ephemeral containers)"
        );
    }

    #[test]
    fn a_template_that_is_not_an_object_is_an_error() {
        let r = review(
            "Deployment",
            json!({"metadata": {"name": "d"}, "spec": {"template": 3}}),
        );
        assert!(matches!(unpack(&r), Err(ReviewError::BadTemplate { .. })));
    }
}
