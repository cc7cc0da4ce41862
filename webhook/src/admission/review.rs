//! Reading AdmissionReview requests and writing AdmissionReview responses
//! with kube's `admission` types.

use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use base64::Engine as _;
use bytes::Bytes;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use serde_json::Value;

/// The only review version accepted (the webhook configurations ask for v1).
pub const API_VERSION: &str = "admission.k8s.io/v1";
/// The kind of a review.
pub const KIND: &str = "AdmissionReview";

/// A request the webhook cannot judge because it is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct InvalidReview {
    /// HTTP status: 400 (malformed) or 413 (too large); 200 when the uid is
    /// known, so the API server reads the AdmissionReview answer.
    pub status: StatusCode,
    /// The request uid when it could be read, else empty.
    pub uid: String,
    /// What is wrong.
    pub message: String,
}

impl InvalidReview {
    fn new(uid: &str, message: String) -> Self {
        let status = if uid.is_empty() {
            StatusCode::BAD_REQUEST
        } else {
            StatusCode::OK
        };
        Self {
            status,
            uid: uid.to_owned(),
            message,
        }
    }
}

/// A well-formed review: the raw JSON (what policies see) and kube's typed
/// view of its request.
#[derive(Debug)]
pub struct Incoming {
    /// The whole AdmissionReview as sent.
    pub json: Value,
    /// The typed request.
    pub request: AdmissionRequest<DynamicObject>,
}

/// Reads the body into an [`Incoming`] review or says what is wrong with it.
pub fn parse(
    body: Result<Bytes, BytesRejection>,
    max_bytes: usize,
) -> Result<Incoming, InvalidReview> {
    let bytes = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            InvalidReview {
                status: StatusCode::PAYLOAD_TOO_LARGE,
                uid: String::new(),
                message: format!("request body larger than the limit of {max_bytes} bytes"),
            }
        } else {
            InvalidReview::new(
                "",
                format!("cannot read request body: {}", rejection.body_text()),
            )
        }
    })?;
    let json: Value = serde_json::from_slice(&bytes)
        .map_err(|e| InvalidReview::new("", format!("request body is not valid JSON: {e}")))?;
    let uid = json
        .pointer("/request/uid")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let api_version = json.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    let kind = json.get("kind").and_then(Value::as_str).unwrap_or("");
    if api_version != API_VERSION || kind != KIND {
        return Err(InvalidReview::new(
            &uid,
            format!(
                "expected apiVersion {API_VERSION:?} and kind {KIND:?}, got apiVersion {api_version:?} and kind {kind:?}"
            ),
        ));
    }
    if json.get("request").is_none_or(Value::is_null) {
        return Err(InvalidReview::new(
            "",
            "AdmissionReview has no request".to_owned(),
        ));
    }
    if uid.is_empty() {
        return Err(InvalidReview::new(
            "",
            "AdmissionReview request has no uid".to_owned(),
        ));
    }
    let review: AdmissionReview<DynamicObject> = serde_json::from_value(json.clone())
        .map_err(|e| InvalidReview::new(&uid, format!("invalid AdmissionReview request: {e}")))?;
    let request: AdmissionRequest<DynamicObject> = review
        .try_into()
        .map_err(|_| InvalidReview::new("", "AdmissionReview has no request".to_owned()))?;
    Ok(Incoming { json, request })
}

/// The response body for a malformed request.
pub fn invalid_response(invalid: &InvalidReview) -> Value {
    let mut response = AdmissionResponse::invalid(format!("mapguard: {}", invalid.message));
    response.uid = invalid.uid.clone();
    response.result.code = if invalid.status == StatusCode::OK {
        StatusCode::BAD_REQUEST.as_u16()
    } else {
        invalid.status.as_u16()
    };
    to_json(response)
}

/// Serializes a response as an AdmissionReview; the JSON patch is written
/// base64-encoded (Go's encoding of `[]byte`, what the API server documents)
/// rather than as serde's array of numbers.
pub fn to_json(response: AdmissionResponse) -> Value {
    let patch = response.patch.clone();
    let mut json = serde_json::to_value(response.into_review()).unwrap_or_else(|e| {
        // Only maps with non-string keys fail to serialize; none exist here.
        serde_json::json!({"apiVersion": API_VERSION, "kind": KIND,
            "response": {"uid": "", "allowed": false,
                "status": {"message": format!("mapguard: cannot encode response: {e}"), "code": 500}}})
    });
    if let (Some(bytes), Some(slot)) = (patch, json.pointer_mut("/response/patch")) {
        *slot = Value::String(base64::engine::general_purpose::STANDARD.encode(bytes));
    }
    json
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(s: &str) -> Result<Bytes, BytesRejection> {
        Ok(Bytes::from(s.to_owned()))
    }

    #[test]
    fn rejects_wrong_kind_and_missing_request() {
        let err = parse(body(r#"{"apiVersion":"v1","kind":"Pod"}"#), 10).expect_err("wrong kind");
        assert_eq!(err.status, StatusCode::BAD_REQUEST);
        assert!(err.message.contains("AdmissionReview"), "{}", err.message);
        let err = parse(
            body(r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#),
            10,
        )
        .expect_err("no request");
        assert_eq!(err.message, "AdmissionReview has no request");
        let err = parse(body("{not json"), 10).expect_err("malformed");
        assert!(err.message.contains("not valid JSON"), "{}", err.message);
    }

    #[test]
    fn patch_is_base64() {
        let patch: json_patch::Patch = serde_json::from_value(serde_json::json!([
            {"op": "add", "path": "/metadata/annotations", "value": {"a": "b"}}
        ]))
        .expect("patch parses");
        let response = AdmissionResponse::invalid("x")
            .with_patch(patch)
            .expect("patch serializes");
        let json = to_json(response);
        let text = json
            .pointer("/response/patch")
            .and_then(Value::as_str)
            .expect("patch string");
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(text)
            .expect("base64");
        let ops: Value = serde_json::from_slice(&decoded).expect("patch JSON");
        assert_eq!(ops[0]["op"], "add");
        assert_eq!(
            json.pointer("/response/patchType"),
            Some(&Value::from("JSONPatch"))
        );
    }
}
