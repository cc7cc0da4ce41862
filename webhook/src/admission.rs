//! `POST /validate` and `POST /mutate`: AdmissionReview v1 in, AdmissionReview
//! v1 out.
//!
//! * A policy deny is a 200 review with `allowed: false` and a status message
//!   listing every denial; `warn` findings become `warnings`; `dry-run`
//!   findings are only logged and counted.
//! * `/mutate` answers with the policies' JSON patch (`patchType: JSONPatch`)
//!   and allows, unless `mutate_enforce` is set; denying is `/validate`'s job.
//! * Exempt namespaces are allowed without evaluation.
//! * A request that cannot be judged (overload, timeout, engine error) is
//!   answered by the failure policy: fail-closed denies and says why,
//!   fail-open allows with a warning saying why. Never a silent allow.
//! * A malformed request gets a review-shaped `allowed: false` answer: HTTP
//!   400 when its uid is unknown, 413 when too large.
//! * A body is received and looked at within bounds before anything is built
//!   from it ([`intake`]); its tree is built only once the request holds the
//!   memory that judging it may take and an evaluation slot
//!   ([`crate::evaluator::Evaluator::admit`]), and exists once: it is
//!   parsed into the policy engine's [`mapguard_policy::Review`], which the
//!   evaluation takes and drops.
//! * `dryRun: true` requests are judged the same way but only the labelled
//!   request counter records them (no findings counters, no info logs).
//! * Findings are counted once per request: by `/validate`, or by `/mutate`
//!   when it denies (the request then never reaches `/validate`).

pub mod intake;
pub mod review;
pub mod scan;

use std::time::Instant;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{Request, StatusCode};
use axum::response::{IntoResponse, Response};
use kube::core::admission::AdmissionResponse;
use kube::core::response::StatusSummary;
use mapguard_policy::{Decision, Finding};
use serde_json::Value;
use tracing::Instrument;

use crate::config::FailurePolicy;
use crate::evaluator::EvalFailure;
use crate::metrics::{DecisionLabel, Endpoint};
use crate::state::AppState;
use intake::{Received, receive};
use review::{invalid_answer, invalid_response, parse, response_for, to_json};

/// `POST /validate`.
pub async fn validate(State(state): State<AppState>, request: Request<Body>) -> Response {
    handle(state, Endpoint::validate, request).await
}

/// `POST /mutate`.
pub async fn mutate(State(state): State<AppState>, request: Request<Body>) -> Response {
    handle(state, Endpoint::mutate, request).await
}

async fn handle(state: AppState, endpoint: Endpoint, request: Request<Body>) -> Response {
    let arrived = Instant::now();
    let received = match receive(&state, request, arrived).await {
        Ok(received) => received,
        Err(refused) => {
            let invalid = refused.invalid;
            tracing::warn!(?endpoint, uid = %invalid.uid, status = %invalid.code, error = %invalid.message, "invalid admission request");
            if let Some(reason) = refused.reason {
                state.metrics().refused(reason);
            }
            state.metrics().observe_request(
                endpoint,
                DecisionLabel::invalid,
                false,
                arrived.elapsed(),
            );
            return (invalid.status, Json(invalid_response(&invalid))).into_response();
        }
    };
    let span = tracing::info_span!(
        "admission",
        ?endpoint,
        uid = %received.uid,
        kind = tracing::field::Empty,
        namespace = %received.namespace,
        name = tracing::field::Empty,
        operation = tracing::field::Empty,
        dry_run = received.dry_run,
        allowed = tracing::field::Empty,
    );
    let dry_run = received.dry_run;
    let (status, response, label) = judge(&state, endpoint, received)
        .instrument(span.clone())
        .await;
    span.record("allowed", response.allowed);
    state
        .metrics()
        .observe_request(endpoint, label, dry_run, arrived.elapsed());
    (status, Json(to_json(response))).into_response()
}

async fn judge(
    state: &AppState,
    endpoint: Endpoint,
    received: Received,
) -> (StatusCode, AdmissionResponse, DecisionLabel) {
    if !received.namespace.is_empty() && state.is_exempt(&received.namespace) {
        tracing::debug!("namespace exempt; allowed without evaluation");
        return (
            StatusCode::OK,
            response_for(&received.uid),
            DecisionLabel::exempt,
        );
    }
    let evaluator = state.evaluator();
    let admission = match evaluator
        .admit(
            received.shape.memory_estimate(),
            Instant::now(),
            state.metrics(),
        )
        .await
    {
        Ok(admission) => admission,
        Err(failure) => {
            let (response, label) = failed(state, response_for(&received.uid), &failure);
            return (StatusCode::OK, response, label);
        }
    };
    let Received {
        bytes,
        reservation,
        uid,
        dry_run,
        ..
    } = received;
    let parsed = parse(&bytes, &uid);
    // The tree now holds what the body held; the admission's reservation
    // covers it.
    drop(bytes);
    drop(reservation);
    // What the answer needs, read at the border (the review itself goes to
    // the evaluation and is dropped there, before its memory is released).
    let answering = Answering { uid, dry_run };
    let review = match parsed {
        Ok(review) => review,
        Err(invalid) => {
            tracing::warn!(?endpoint, uid = %invalid.uid, status = %invalid.code, error = %invalid.message, "invalid admission request");
            return (
                invalid.status,
                invalid_answer(&invalid),
                DecisionLabel::invalid,
            );
        }
    };
    let span = tracing::Span::current();
    span.record("kind", review.kind().kind.as_str());
    span.record("name", review.name());
    if let Some(operation) = review.operation() {
        span.record("operation", tracing::field::debug(operation));
    }
    let outcome = evaluator
        .evaluate(
            admission,
            state.policies().current(),
            review,
            state.namespaces().snapshot(),
            state.inventory(),
            state.metrics().clone(),
        )
        .await;
    let (response, label) = match outcome {
        Ok(decision) => match respond(state, endpoint, &answering, &decision) {
            Ok(answer) => answer,
            Err(failure) => failed(state, response_for(&answering.uid), &failure),
        },
        Err(failure) => failed(state, response_for(&answering.uid), &failure),
    };
    (StatusCode::OK, response, label)
}

/// What answering a judged request needs from it.
struct Answering {
    /// `request.uid`.
    uid: String,
    /// `request.dryRun`.
    dry_run: bool,
}

fn respond(
    state: &AppState,
    endpoint: Endpoint,
    request: &Answering,
    decision: &Decision,
) -> Result<(AdmissionResponse, DecisionLabel), EvalFailure> {
    let mut response = response_for(&request.uid);
    if decision.exempt {
        return Ok((response, DecisionLabel::exempt));
    }
    let enforce = endpoint == Endpoint::validate || state.settings().mutate_enforce;
    let denied = enforce && !decision.allowed;
    // The API server sends each request to both webhooks: /validate counts
    // the findings, /mutate only those of a request it denies itself
    // (--mutate-enforce), which /validate then never sees.
    if endpoint == Endpoint::validate || denied {
        record_findings(state, request.dry_run, decision);
    }
    if denied {
        let message = denial_message(decision);
        tracing::info!(%message, "denied");
        response = response.deny(message);
        response.result.status = Some(StatusSummary::Failure);
        response.result.code = StatusCode::FORBIDDEN.as_u16();
        response.result.reason = "Forbidden".to_owned();
        return Ok((response, DecisionLabel::denied));
    }
    let mut label = DecisionLabel::allowed;
    if endpoint == Endpoint::validate && !decision.warnings.is_empty() {
        response.warnings = Some(decision.warnings.iter().map(finding_text).collect());
        label = DecisionLabel::warned;
    }
    if endpoint == Endpoint::validate
        && let Some(since) = state.namespaces().stale_since()
    {
        let secs = since.elapsed().map_or(0, |d| d.as_secs());
        response.warnings.get_or_insert_with(Vec::new).push(format!(
            "mapguard judged this request with namespace labels that may be stale: its watch on the API server has been failing for {secs} s"
        ));
    }
    if endpoint == Endpoint::mutate && !decision.patch.is_empty() {
        let patch: json_patch::Patch = serde_json::from_value(Value::Array(decision.patch.clone()))
            .map_err(|e| {
                EvalFailure::Engine(format!("policies produced an invalid JSON patch: {e}"))
            })?;
        response = response
            .with_patch(patch)
            .map_err(|e| EvalFailure::Engine(e.to_string()))?;
        label = DecisionLabel::patched;
    }
    Ok((response, label))
}

/// The answer for a request that could not be judged, from its
/// undecided `response`.
fn failed(
    state: &AppState,
    response: AdmissionResponse,
    failure: &EvalFailure,
) -> (AdmissionResponse, DecisionLabel) {
    let policy = state.settings().failure_policy;
    match policy {
        FailurePolicy::FailClosed => {
            tracing::warn!(error = %failure, "request not judged; denied (fail-closed)");
            let mut response = response.deny(format!(
                "mapguard could not judge this request ({failure}); denied by failure policy fail-closed"
            ));
            response.result.status = Some(StatusSummary::Failure);
            response.result.code = StatusCode::SERVICE_UNAVAILABLE.as_u16();
            response.result.reason = "ServiceUnavailable".to_owned();
            (response, DecisionLabel::failed_closed)
        }
        FailurePolicy::FailOpen => {
            tracing::warn!(error = %failure, "request not judged; allowed (fail-open)");
            let mut response = response;
            response.warnings = Some(vec![format!(
                "mapguard could not judge this request ({failure}); allowed by failure policy fail-open"
            )]);
            (response, DecisionLabel::failed_open)
        }
    }
}

fn record_findings(state: &AppState, dry_run_request: bool, decision: &Decision) {
    if dry_run_request {
        return;
    }
    let metrics = state.metrics();
    for finding in decision
        .denials
        .iter()
        .chain(&decision.warnings)
        .chain(&decision.dry_run)
    {
        metrics.finding(&finding.policy, finding.action.as_str());
    }
    for finding in &decision.dry_run {
        tracing::info!(policy = %finding.policy, message = %finding.message, subject = %decision.subject, "dry-run finding");
    }
}

fn finding_text(finding: &Finding) -> String {
    format!("[{}] {}", finding.policy, finding.message)
}

/// `mapguard denied SUBJECT: [policy] reason; ...`, the subject named once:
/// findings on a controller start with it (so that warnings, shown alone,
/// say what they are about); here it is taken off.
fn denial_message(decision: &Decision) -> String {
    let prefix = format!("{}: ", decision.subject);
    let reasons: Vec<String> = decision
        .denials
        .iter()
        .map(|f| {
            let message = f.message.strip_prefix(&prefix).unwrap_or(&f.message);
            format!("[{}] {message}", f.policy)
        })
        .collect();
    if reasons.is_empty() {
        format!("mapguard denied {}", decision.subject)
    } else {
        format!(
            "mapguard denied {}: {}",
            decision.subject,
            reasons.join("; ")
        )
    }
}
