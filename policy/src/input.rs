//! The review as the engines' values (regorus), each part of its tree
//! converted once: the policies' `input` (the review as sent, or, for a
//! controller, the review with the Pod its template would create in place
//! of its objects) and the `request` Gatekeeper's constraints see (as
//! sent), sharing the request's other members.

use std::collections::BTreeMap;

use kube_core::admission::Operation;
use regorus::Value;
use serde::Deserialize;
use serde_json::{Value as Json, json};

use crate::Review;
use crate::subject::{Controller, ReviewError, Subject, Unpacked, pod_metadata, template_of};

/// The engines' values of one review.
pub(crate) struct Inputs {
    /// The policies' `input`.
    pub policies: Value,
    /// The request for Gatekeeper's constraints, when asked for.
    pub gatekeeper: Option<Value>,
}

fn convert(json: &Json) -> Result<Value, ReviewError> {
    Value::deserialize(json).map_err(|e| ReviewError::NotJson(e.to_string()))
}

fn with(mut members: BTreeMap<Value, Value>, entries: [(&str, Option<Value>); 2]) -> Value {
    for (name, value) in entries {
        if let Some(value) = value {
            members.insert(Value::from(name), value);
        }
    }
    Value::from(members)
}

/// The policies' input for `review` as `unpacked`, and Gatekeeper's
/// request when `gatekeeper` (the review has an object or old object).
pub(crate) fn inputs(
    review: &Review,
    unpacked: &Unpacked<'_>,
    gatekeeper: bool,
) -> Result<Inputs, ReviewError> {
    let request = review.request().ok_or(ReviewError::NoRequest)?;
    let whole = review.json().as_object().ok_or(ReviewError::NoRequest)?;
    // The request's members but its objects: shared by both inputs.
    let mut rest = BTreeMap::new();
    for (name, value) in request {
        if name != "object" && name != "oldObject" {
            rest.insert(Value::from(name.as_str()), convert(value)?);
        }
    }
    let as_sent = |name: &str| request.get(name).map(convert).transpose();
    let (object, old_object) = if unpacked.controller.is_none() || gatekeeper {
        (as_sent("object")?, as_sent("oldObject")?)
    } else {
        (None, None)
    };
    // As Gatekeeper does: a DELETE's constraints see the deleted object
    // (the API server sends it as `oldObject`) as `object` too.
    let deleted = review.operation() == Some(&Operation::Delete) && review.object().is_none();
    let gatekeeper_object = if deleted { &old_object } else { &object };
    let as_sent = |rest, object: &Option<Value>| {
        with(
            rest,
            [
                ("object", object.clone()),
                ("oldObject", old_object.clone()),
            ],
        )
    };
    let (policies_request, top_names): (Value, &[&str]) = match unpacked.controller {
        None => (as_sent(rest.clone(), &object), &[]),
        Some(controller) => (
            controller_request(
                rest.clone(),
                controller,
                review.subject(),
                request.get("oldObject"),
            )?,
            &["apiVersion", "kind"],
        ),
    };
    let gatekeeper = match gatekeeper {
        false => None,
        // The policies see the request as sent: the same value.
        true if unpacked.controller.is_none() && !deleted => Some(policies_request.clone()),
        true => Some(as_sent(rest, gatekeeper_object)),
    };
    // The review's other members: all of them when the policies see it as
    // sent, its apiVersion and kind around a controller's Pod.
    let mut top = BTreeMap::new();
    for (name, value) in whole {
        let wanted = match unpacked.controller {
            None => name != "request",
            Some(_) => top_names.contains(&name.as_str()),
        };
        if wanted {
            top.insert(Value::from(name.as_str()), convert(value)?);
        }
    }
    top.insert(Value::from("request"), policies_request);
    Ok(Inputs {
        policies: Value::from(top),
        gatekeeper,
    })
}

/// A controller's request as the policies see it: about the Pod its
/// template would create (and the old Pod of an update).
fn controller_request(
    mut members: BTreeMap<Value, Value>,
    controller: Controller<'_>,
    subject: &Subject,
    old_object: Option<&Json>,
) -> Result<Value, ReviewError> {
    let pod_kind = convert(&json!({"group": "", "version": "v1", "kind": "Pod"}))?;
    let pod_resource = convert(&json!({"group": "", "version": "v1", "resource": "pods"}))?;
    members.insert(Value::from("kind"), pod_kind.clone());
    members.insert(Value::from("resource"), pod_resource.clone());
    members.insert(Value::from("requestKind"), pod_kind);
    members.insert(Value::from("requestResource"), pod_resource);
    members.insert(
        Value::from("object"),
        pod(controller.owner, controller.template, subject)?,
    );
    match old_object {
        Some(old) if old.is_object() => {
            let old_pod = match template_of(old, controller.pointer, subject) {
                Ok(template) => pod(old, template, subject)?,
                Err(_) => Value::Null,
            };
            members.insert(Value::from("oldObject"), old_pod);
        }
        // Not an object (null): as sent.
        Some(other) => {
            members.insert(Value::from("oldObject"), convert(other)?);
        }
        None => {}
    }
    Ok(Value::from(members))
}

/// The Pod a controller's template would create ([`pod_metadata`], and the
/// template's spec), converted from the template without a copy of it.
fn pod(owner: &Json, template: Option<&Json>, subject: &Subject) -> Result<Value, ReviewError> {
    let metadata = Json::Object(pod_metadata(owner, template, subject));
    let spec = match template.and_then(|t| t.get("spec")) {
        Some(spec) => convert(spec)?,
        None => Value::new_object(),
    };
    let mut pod = BTreeMap::new();
    pod.insert(Value::from("apiVersion"), Value::from("v1"));
    pod.insert(Value::from("kind"), Value::from("Pod"));
    pod.insert(Value::from("metadata"), convert(&metadata)?);
    pod.insert(Value::from("spec"), spec);
    Ok(Value::from(pod))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::subject::unpack;

    fn review(kind: &str, object: Json) -> Review {
        Review::new(
            json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
                "uid": "1", "operation": "CREATE", "namespace": "shop",
                "kind": {"group": "apps", "version": "v1", "kind": kind},
                "object": object,
            }}),
        )
        .expect("valid review")
    }

    fn inputs_of(review: &Review, gatekeeper: bool) -> Inputs {
        let unpacked = unpack(review).expect("unpacks");
        inputs(review, &unpacked, gatekeeper).expect("converts")
    }

    #[test]
    fn cronjob_template_becomes_a_pod_named_after_the_owner() {
        let object = json!({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "nightly"},
            "spec": {"jobTemplate": {"spec": {"template": {
                "metadata": {"labels": {"app": "n"}},
                "spec": {"containers": [{"name": "c", "image": "i"}]}}}}}});
        let review = review("CronJob", object);
        let inputs = inputs_of(&review, true);
        let pod = &inputs.policies["request"]["object"];
        assert_eq!(pod["kind"], Value::from("Pod"));
        assert_eq!(pod["metadata"]["name"], Value::from("nightly"));
        assert_eq!(pod["metadata"]["namespace"], Value::from("shop"));
        assert_eq!(pod["metadata"]["labels"]["app"], Value::from("n"));
        assert_eq!(pod["spec"]["containers"][0]["name"], Value::from("c"));
        assert_eq!(
            inputs.policies["request"]["kind"]["kind"],
            Value::from("Pod")
        );
        assert_eq!(review.subject().display(), "CronJob shop/nightly");
        let sent = convert(&review.json()["request"]).expect("converts");
        assert_eq!(inputs.gatekeeper, Some(sent), "constraints see the CronJob");
    }

    #[test]
    fn pods_and_other_kinds_pass_through() {
        let r = review("ConfigMap", json!({"metadata": {"name": "cm"}}));
        let inputs = inputs_of(&r, true);
        assert_eq!(inputs.policies, convert(r.json()).expect("converts"));
        assert_eq!(
            inputs.gatekeeper.as_ref(),
            Some(&inputs.policies["request"])
        );
    }
}
