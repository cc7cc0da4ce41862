//! What is being judged: a Pod directly, or the pod template of a controller.
//!
//! Policies are written against a Pod. For Deployments, StatefulSets,
//! DaemonSets, ReplicaSets, ReplicationControllers, Jobs and CronJobs the
//! engine synthesizes the Pod their template would create and evaluates that;
//! patches are re-rooted onto the template ([`template_pointer`]).

use serde::Serialize;
use serde_json::{Map, Value as Json, json};

use crate::Review;

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

impl Subject {
    /// The subject of a request for `kind` whose `request` holds its
    /// objects: the request's namespace and name, else the object's (the
    /// old object's for a DELETE; `generateName` when it has no name yet).
    pub(crate) fn of(
        request: &Map<String, Json>,
        kind: String,
        namespace: Option<&str>,
        name: &str,
        subresource: Option<&str>,
    ) -> Subject {
        let object = request.get("object").filter(|o| o.is_object());
        let old_object = request.get("oldObject").filter(|o| o.is_object());
        let meta_of = |o: Option<&Json>, field: &str| {
            o.and_then(|o| o.get("metadata"))
                .and_then(|m| m.get(field))
                .and_then(Json::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        };
        let given = |s: Option<&str>| s.filter(|s| !s.is_empty()).map(str::to_string);
        Subject {
            namespace: given(namespace)
                .or_else(|| meta_of(object.or(old_object), "namespace"))
                .unwrap_or_default(),
            name: given(Some(name))
                .or_else(|| meta_of(object.or(old_object), "name"))
                .or_else(|| meta_of(object, "generateName"))
                .unwrap_or_default(),
            kind,
            subresource: given(subresource).unwrap_or_default(),
        }
    }
}

/// A controller whose template the policies judge as a Pod.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Controller<'a> {
    /// Where its template is, and where policy patches land.
    pub pointer: &'static str,
    /// The controller (`request.object`).
    pub owner: &'a Json,
    /// Its template; `None` when it has none (an empty Pod is judged).
    pub template: Option<&'a Json>,
}

/// Where the policies look in a review: at its object as sent, or at the
/// Pod a controller's template would create.
#[derive(Debug)]
pub(crate) struct Unpacked<'a> {
    /// The controller; `None` for a Pod, any other kind, or a request
    /// without an object (policies see the review as sent).
    pub controller: Option<Controller<'a>>,
    /// The object patches are checked against (the Pod, or the template).
    pub patch_target: Option<&'a Json>,
}

/// Why a review cannot be judged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReviewError {
    #[error("request body is not valid JSON: {0}")]
    Malformed(String),
    #[error("AdmissionReview has no request object")]
    NoRequest,
    #[error("invalid AdmissionReview request: {0}")]
    Request(String),
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

/// Finds what the policies judge in `review`.
pub(crate) fn unpack(review: &Review) -> Result<Unpacked<'_>, ReviewError> {
    let object = review.object();
    let subject = review.subject();
    let (Some(pointer), Some(owner)) = (template_pointer(&subject.kind), object) else {
        return Ok(Unpacked {
            controller: None,
            patch_target: object,
        });
    };
    let template = template_of(owner, pointer, subject)?;
    Ok(Unpacked {
        controller: Some(Controller {
            pointer,
            owner,
            template,
        }),
        patch_target: template,
    })
}

/// The template of a controller; `None` when it has none (an empty pod is judged).
pub(crate) fn template_of<'a>(
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

/// The metadata of the Pod a controller's template would create: the
/// template's (labels, annotations), the owner's name and namespace, an
/// owner reference. Its spec is the template's.
pub(crate) fn pod_metadata(
    owner: &Json,
    template: Option<&Json>,
    subject: &Subject,
) -> Map<String, Json> {
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
    metadata
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
    fn an_ephemeral_container_update_is_named_so() {
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web"},
            "spec": {"containers": [{"name": "app", "image": "i"}],
                "ephemeralContainers": [{"name": "debugger-x", "image": "d"}]}});
        let mut r = review("Pod", pod);
        r["request"]["operation"] = json!("UPDATE");
        r["request"]["name"] = json!("web");
        r["request"]["subResource"] = json!("ephemeralcontainers");
        let review = Review::new(r).expect("valid review");
        assert_eq!(
            review.subject().display(),
            "Pod shop/web (ephemeral containers)"
        );
        let unpacked = unpack(&review).expect("unpacks");
        assert!(unpacked.controller.is_none(), "judged as the Pod sent");
    }

    #[test]
    fn a_template_that_is_not_an_object_is_an_error() {
        let r = review(
            "Deployment",
            json!({"metadata": {"name": "d"}, "spec": {"template": 3}}),
        );
        let review = Review::new(r).expect("valid review");
        assert!(matches!(
            unpack(&review),
            Err(ReviewError::BadTemplate { .. })
        ));
    }
}
