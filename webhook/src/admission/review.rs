//! Reading AdmissionReview requests and writing AdmissionReview responses
//! with kube's `admission` types.

use axum::http::StatusCode;
use base64::Engine as _;
use kube::core::admission::AdmissionResponse;
use mapguard_policy::{Review, ReviewError};
use serde_json::Value;

use super::scan::Head;

/// The only review version accepted (the webhook configurations ask for v1).
pub const API_VERSION: &str = "admission.k8s.io/v1";
/// The kind of a review.
pub const KIND: &str = "AdmissionReview";

/// A request the webhook cannot judge because it is malformed, too large
/// or arrived while the webhook had no room for it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct InvalidReview {
    /// HTTP status: `code`, or 200 when the uid is known, so that the API
    /// server reads the AdmissionReview answer.
    pub status: StatusCode,
    /// The status code inside the answer: 400 (malformed), 413 (too large),
    /// 503 (no room).
    pub code: StatusCode,
    /// The request uid when it could be read, else empty.
    pub uid: String,
    /// What is wrong.
    pub message: String,
}

impl InvalidReview {
    /// A malformed request (400).
    pub fn new(uid: &str, message: String) -> Self {
        Self::with_code(uid, StatusCode::BAD_REQUEST, message)
    }

    /// A request refused with `code`.
    pub fn with_code(uid: &str, code: StatusCode, message: String) -> Self {
        let status = if uid.is_empty() { code } else { StatusCode::OK };
        Self {
            status,
            code,
            uid: uid.to_owned(),
            message,
        }
    }
}

/// Checks the fields that name a review: the version and kind, and a
/// request with a uid.
pub fn check_head(head: &Head<'_>) -> Result<(), InvalidReview> {
    let uid = head.uid();
    let api_version = head.api_version.as_str();
    let kind = head.kind.as_str();
    if api_version != API_VERSION || kind != KIND {
        return Err(InvalidReview::new(
            uid,
            format!(
                "expected apiVersion {API_VERSION:?} and kind {KIND:?}, got apiVersion {api_version:?} and kind {kind:?}"
            ),
        ));
    }
    if head.request.0.is_none() {
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
    Ok(())
}

/// Parses `body`, a review whose head passed [`check_head`] with `uid`,
/// into the value the policy engine judges ([`Review::parse`]).
pub fn parse(body: &[u8], uid: &str) -> Result<Review, InvalidReview> {
    Review::parse(body).map_err(|e| match e {
        ReviewError::NoRequest => {
            InvalidReview::new("", "AdmissionReview has no request".to_owned())
        }
        other => InvalidReview::new(uid, other.to_string()),
    })
}

/// The answer to request `uid` before any decision: allowed, nothing else
/// (what `AdmissionResponse::from(&request)` gives for kube's typed
/// request).
pub fn response_for(uid: &str) -> AdmissionResponse {
    let mut response = AdmissionResponse::invalid("");
    response.uid = uid.to_owned();
    response.allowed = true;
    response.result = Default::default();
    response
}

/// The answer to a malformed request.
pub fn invalid_answer(invalid: &InvalidReview) -> AdmissionResponse {
    let mut response = AdmissionResponse::invalid(format!("mapguard: {}", invalid.message));
    response.uid = invalid.uid.clone();
    response.result.code = invalid.code.as_u16();
    response
}

/// The response body for a malformed request.
pub fn invalid_response(invalid: &InvalidReview) -> Value {
    to_json(invalid_answer(invalid))
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

    fn head_check(body: &str) -> Result<(), InvalidReview> {
        check_head(&Head::read(body.as_bytes()).expect("head reads"))
    }

    #[test]
    fn rejects_wrong_kind_and_missing_request() {
        let err = head_check(r#"{"apiVersion":"v1","kind":"Pod"}"#).expect_err("wrong kind");
        assert_eq!(err.status, StatusCode::BAD_REQUEST);
        assert!(err.message.contains("AdmissionReview"), "{}", err.message);
        let err = head_check(r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#)
            .expect_err("no request");
        assert_eq!(err.message, "AdmissionReview has no request");
        let err = head_check(
            r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{}}"#,
        )
        .expect_err("no uid");
        assert_eq!(err.message, "AdmissionReview request has no uid");
        head_check(
            r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u"}}"#,
        )
        .expect("a request with a uid passes");
    }

    #[test]
    fn parse_keeps_the_objects_in_the_tree() {
        let body = br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{
            "uid":"u-1","kind":{"group":"","version":"v1","kind":"Pod"},
            "resource":{"group":"","version":"v1","resource":"pods"},
            "operation":"UPDATE","userInfo":{},"namespace":"shop",
            "object":{"metadata":{"name":"a"}},"oldObject":{"metadata":{"name":"b"}}}}"#;
        let review = parse(body, "u-1").expect("parses");
        assert_eq!(review.uid(), "u-1");
        assert_eq!(review.subject().namespace, "shop");
        assert_eq!(review.json()["request"]["object"]["metadata"]["name"], "a");
        assert_eq!(
            review.json()["request"]["oldObject"]["metadata"]["name"],
            "b"
        );
        let err = parse(&body[..40], "u-1").expect_err("cut short");
        assert!(err.message.contains("not valid JSON"), "{}", err.message);
        assert_eq!(err.status, StatusCode::OK, "uid known: a review answer");
    }

    #[test]
    fn a_response_for_a_uid_is_what_kube_builds_from_a_request() {
        use kube::core::DynamicObject;
        use kube::core::admission::{AdmissionRequest, AdmissionReview};
        let review: AdmissionReview<DynamicObject> = serde_json::from_str(
            r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{
            "uid":"u-2","kind":{"group":"","version":"v1","kind":"Pod"},
            "resource":{"group":"","version":"v1","resource":"pods"},
            "operation":"CREATE","userInfo":{}}}"#,
        )
        .expect("parses");
        let request: AdmissionRequest<DynamicObject> = review.try_into().expect("a request");
        assert_eq!(
            to_json(response_for("u-2")),
            to_json(AdmissionResponse::from(&request))
        );
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
