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
//! * `dryRun: true` requests are judged the same way but only the labelled
//!   request counter records them (no findings counters, no info logs).
//! * Findings are counted once per request: by `/validate`, or by `/mutate`
//!   when it denies (the request then never reaches `/validate`).

pub mod review;

use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse};
use kube::core::response::StatusSummary;
use mapguard_policy::{Decision, Finding};
use serde_json::Value;
use tracing::Instrument;

use crate::config::FailurePolicy;
use crate::evaluator::EvalFailure;
use crate::metrics::{DecisionLabel, Endpoint};
use crate::state::AppState;
use review::{Incoming, invalid_response, parse, to_json};

/// `POST /validate`.
pub async fn validate(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    handle(state, Endpoint::validate, body).await
}

/// `POST /mutate`.
pub async fn mutate(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    handle(state, Endpoint::mutate, body).await
}

async fn handle(
    state: AppState,
    endpoint: Endpoint,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let started = Instant::now();
    let incoming = match parse(body, state.settings().max_body_bytes) {
        Ok(incoming) => incoming,
        Err(invalid) => {
            tracing::warn!(?endpoint, uid = %invalid.uid, status = %invalid.status, error = %invalid.message, "invalid admission request");
            state.metrics().observe_request(
                endpoint,
                DecisionLabel::invalid,
                false,
                started.elapsed(),
            );
            return (invalid.status, Json(invalid_response(&invalid))).into_response();
        }
    };
    let request = &incoming.request;
    let span = tracing::info_span!(
        "admission",
        ?endpoint,
        uid = %request.uid,
        kind = %request.kind.kind,
        namespace = request.namespace.as_deref().unwrap_or(""),
        name = %request.name,
        operation = ?request.operation,
        dry_run = request.dry_run,
        allowed = tracing::field::Empty,
    );
    let dry_run = request.dry_run;
    let (response, label) = judge(&state, endpoint, incoming)
        .instrument(span.clone())
        .await;
    span.record("allowed", response.allowed);
    state
        .metrics()
        .observe_request(endpoint, label, dry_run, started.elapsed());
    (StatusCode::OK, Json(to_json(response))).into_response()
}

async fn judge(
    state: &AppState,
    endpoint: Endpoint,
    incoming: Incoming,
) -> (AdmissionResponse, DecisionLabel) {
    let Incoming { json, request } = incoming;
    let namespace = request.namespace.clone().unwrap_or_default();
    if !namespace.is_empty() && state.is_exempt(&namespace) {
        tracing::debug!("namespace exempt; allowed without evaluation");
        return (AdmissionResponse::from(&request), DecisionLabel::exempt);
    }
    let outcome = state
        .evaluator()
        .evaluate(
            state.policies().current(),
            Arc::new(json),
            state.namespaces().snapshot(),
            state.inventory(),
            state.metrics().clone(),
        )
        .await;
    match outcome {
        Ok(decision) => match respond(state, endpoint, &request, &decision) {
            Ok(answer) => answer,
            Err(failure) => failed(state, &request, &failure),
        },
        Err(failure) => failed(state, &request, &failure),
    }
}

fn respond(
    state: &AppState,
    endpoint: Endpoint,
    request: &AdmissionRequest<DynamicObject>,
    decision: &Decision,
) -> Result<(AdmissionResponse, DecisionLabel), EvalFailure> {
    let mut response = AdmissionResponse::from(request);
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

/// The answer for a request that could not be judged.
fn failed(
    state: &AppState,
    request: &AdmissionRequest<DynamicObject>,
    failure: &EvalFailure,
) -> (AdmissionResponse, DecisionLabel) {
    let policy = state.settings().failure_policy;
    let response = AdmissionResponse::from(request);
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
