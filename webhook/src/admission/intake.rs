//! Receiving a request body within bounds, before anything is built from it:
//!
//! 1. a declared length above `--max-body-bytes` is refused at once (413);
//! 2. the body's length (declared, else the limit) is reserved from the
//!    request memory budget before a byte is read (503 when none is free by
//!    the queue deadline);
//! 3. the body is read, at most the limit (413 beyond it);
//! 4. its JSON values are counted and its depth measured without building
//!    anything ([`scan`]; 413 above `--max-json-values` or
//!    `--max-json-depth`, 400 when it is not JSON);
//! 5. the fields that name the review are read without copying and checked
//!    ([`Head`]; 400);
//! 6. the memory that judging it would take is estimated from what was
//!    counted; more than one request may use (half the budget) is refused
//!    (413).
//!
//! Refusals carry the request's uid when it could be read, so that the API
//! server gets an AdmissionReview answer (HTTP 200, the code inside).

use std::time::Instant;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};

use super::review::{InvalidReview, check_head};
use super::scan::{Head, Shape, ShapeError, ShapeLimits, scan};
use crate::budget::Reservation;
use crate::metrics::RefuseReason;
use crate::state::AppState;

/// A body received within bounds, not parsed yet.
#[derive(Debug)]
pub struct Received {
    /// The body.
    pub bytes: Bytes,
    /// What it holds.
    pub shape: Shape,
    /// `request.uid`.
    pub uid: String,
    /// `request.namespace` (empty when cluster-scoped or absent).
    pub namespace: String,
    /// `request.dryRun`.
    pub dry_run: bool,
    /// The body's share of the memory budget, until it is parsed.
    pub reservation: Reservation,
}

/// A request refused on the way in, and the metric reason when it is one
/// of the bounds (not a plain malformed request).
#[derive(Debug)]
pub struct Refused {
    /// The answer.
    pub invalid: InvalidReview,
    /// Which bound refused it.
    pub reason: Option<RefuseReason>,
}

impl From<InvalidReview> for Refused {
    fn from(invalid: InvalidReview) -> Self {
        Refused {
            invalid,
            reason: None,
        }
    }
}

fn refused(reason: RefuseReason, uid: &str, code: StatusCode, message: String) -> Refused {
    Refused {
        invalid: InvalidReview::with_code(uid, code, message),
        reason: Some(reason),
    }
}

/// Steps 1–6 of the module documentation for a request that arrived at
/// `arrived`.
pub async fn receive(
    state: &AppState,
    request: Request<Body>,
    arrived: Instant,
) -> Result<Received, Refused> {
    let settings = state.settings();
    let max = settings.max_body_bytes;
    let too_large = || {
        refused(
            RefuseReason::body_too_large,
            "",
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body larger than the limit of {max} bytes (--max-body-bytes)"),
        )
    };
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > max) {
        return Err(too_large());
    }
    let evaluator = state.evaluator();
    let memory = evaluator.memory();
    let expected = declared.unwrap_or(max);
    let reservation = memory
        .reserve(expected, evaluator.queue_deadline(arrived))
        .await
        .map_err(|e| {
            refused(
                RefuseReason::memory_busy,
                "",
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "webhook overloaded: no room to receive a body of {expected} bytes within {:?} (--max-request-memory {})",
                    arrived.elapsed(),
                    e.total
                ),
            )
        })?;

    let bytes = match Limited::new(request.into_body(), max).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) if error.downcast_ref::<LengthLimitError>().is_some() => {
            return Err(too_large());
        }
        Err(error) => {
            return Err(
                InvalidReview::new("", format!("cannot read request body: {error}")).into(),
            );
        }
    };

    let limits = ShapeLimits {
        max_values: settings.max_json_values,
        max_depth: settings.max_json_depth,
    };
    let shape = scan(&bytes, limits).map_err(|error| {
        let uid = Head::read(&bytes).map(|h| h.uid().to_owned());
        let uid = uid.as_deref().unwrap_or("");
        match error {
            ShapeError::NotJson(_) => InvalidReview::new(uid, error.to_string()).into(),
            ShapeError::TooManyValues { .. } => refused(
                RefuseReason::too_many_values,
                uid,
                StatusCode::PAYLOAD_TOO_LARGE,
                error.to_string(),
            ),
            ShapeError::TooDeep { .. } => refused(
                RefuseReason::too_deep,
                uid,
                StatusCode::PAYLOAD_TOO_LARGE,
                error.to_string(),
            ),
        }
    })?;

    let head = Head::read(&bytes)
        .map_err(|e| InvalidReview::new("", format!("cannot read the AdmissionReview: {e}")))?;
    check_head(&head)?;
    let uid = head.uid().to_owned();
    let namespace = head.namespace().to_owned();
    let dry_run = head.dry_run();
    drop(head);

    let estimate = shape.memory_estimate();
    let per_request = memory.total() / 2;
    if estimate > per_request {
        return Err(refused(
            RefuseReason::too_much_memory,
            &uid,
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "judging this request would take up to {} MiB of memory, more than the {} MiB one request may use (half of --max-request-memory)",
                estimate.div_ceil(1 << 20),
                per_request >> 20
            ),
        ));
    }
    Ok(Received {
        bytes,
        shape,
        uid,
        namespace,
        dry_run,
        reservation,
    })
}
