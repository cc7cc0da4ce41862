//! Admission endpoints through `app(state).oneshot(..)` with the fixtures of
//! `tests/data/admission` and the default (embedded) policies.

mod support;

use std::time::Duration;

use axum::http::StatusCode;
use mapguard_policy::{EngineConfig, PolicySet};
use mapguard_webhook::evaluator::Evaluator;
use mapguard_webhook::{Settings, app};
use serde_json::{Value, json};
use support::*;

async fn validate(name: &str) -> Value {
    let (status, review) = post(app(default_state()), "/validate", fixture(name)).await;
    assert_eq!(status, StatusCode::OK, "{name}: {review}");
    let want_uid = fixture_json(name)["request"]["uid"].clone();
    assert_eq!(
        review["response"]["uid"], want_uid,
        "{name}: uid must be echoed"
    );
    assert_eq!(review["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(review["kind"], "AdmissionReview");
    review
}

async fn mutate(name: &str) -> Value {
    let (status, review) = post(app(default_state()), "/mutate", fixture(name)).await;
    assert_eq!(status, StatusCode::OK, "{name}: {review}");
    review
}

#[tokio::test]
async fn plain_pod_is_allowed_without_patch_or_warnings() {
    let review = validate("pod-plain-create").await;
    assert!(allowed(&review), "{review}");
    assert!(warnings(&review).is_empty(), "{review}");
    let review = mutate("pod-plain-create").await;
    assert!(allowed(&review), "{review}");
    assert_eq!(
        patch(&review),
        None,
        "default namespace has no mode: no patch"
    );
}

#[tokio::test]
async fn privileged_pod_is_denied_with_every_reason() {
    let review = validate("pod-privileged-create").await;
    assert!(!allowed(&review), "{review}");
    let msg = message(&review);
    assert!(msg.contains("Pod default/debug-shell"), "{msg}");
    assert!(msg.contains("[mapguard.privileged]"), "{msg}");
    assert!(msg.contains("hostPID"), "{msg}");
    assert!(msg.contains("privileged"), "{msg}");
    assert_eq!(review["response"]["status"]["code"], 403);
    // /mutate does not deny on its own.
    let review = mutate("pod-privileged-create").await;
    assert!(
        allowed(&review),
        "/mutate must not deny by default: {review}"
    );
}

#[tokio::test]
async fn mutate_enforce_makes_mutate_deny() {
    let settings = Settings {
        mutate_enforce: true,
        ..Settings::default()
    };
    let state = state_with(
        PolicySet::embedded(&EngineConfig::default()),
        settings,
        Evaluator::new(2, Duration::from_millis(250)),
    );
    let (_, review) = post(
        app(state.clone()),
        "/mutate",
        fixture("pod-privileged-create"),
    )
    .await;
    assert!(!allowed(&review), "{review}");
    // Denied here, the request never reaches /validate: /mutate counts it.
    let series = r#"mapguard_policy_findings_total{policy="mapguard.privileged",action="deny"} "#;
    let text = state.metrics().encode();
    assert!(
        text.lines()
            .any(|l| l.starts_with(series) && !l.ends_with(" 0")),
        "{text}"
    );
}

#[tokio::test]
async fn warn_policy_becomes_warnings() {
    let review = validate("pod-gotraceback-create").await;
    assert!(allowed(&review), "{review}");
    let w = warnings(&review);
    assert!(
        w.iter()
            .any(|w| w.contains("[mapguard.gotraceback]") && w.contains("GOTRACEBACK=none")),
        "{w:?}"
    );
    let review = validate("job-godebug-create").await;
    assert!(allowed(&review), "{review}");
    assert!(
        warnings(&review).iter().any(|w| w.contains("invalidptr=0")),
        "{review}"
    );
}

#[tokio::test]
async fn pod_in_kill_namespace_gets_mode_annotation_patch() {
    let review = mutate("pod-kill-namespace-create").await;
    assert!(allowed(&review), "{review}");
    let ops = patch(&review).expect("a patch for a pod in a mode=kill namespace");
    assert!(ops.to_string().contains("\"kill\""), "{ops}");
    // The patch applies to the object as sent.
    let mut pod = fixture_json("pod-kill-namespace-create")["request"]["object"].clone();
    let p: json_patch::Patch = serde_json::from_value(ops).expect("valid RFC 6902");
    json_patch::patch(&mut pod, &p).expect("patch applies to the pod");
    assert_eq!(pod["metadata"]["annotations"]["mapguard.io/mode"], "kill");
}

#[tokio::test]
async fn controllers_are_judged_through_their_pod_template() {
    let review = mutate("deployment-kill-namespace-create").await;
    let ops = patch(&review).expect("a patch for a Deployment in a mode=kill namespace");
    let mut dep = fixture_json("deployment-kill-namespace-create")["request"]["object"].clone();
    let p: json_patch::Patch = serde_json::from_value(ops.clone()).expect("valid RFC 6902");
    json_patch::patch(&mut dep, &p).expect("patch applies to the deployment");
    assert_eq!(
        dep["spec"]["template"]["metadata"]["annotations"]["mapguard.io/mode"], "kill",
        "patch must land on the pod template: {ops}"
    );

    let review = mutate("cronjob-audit-namespace-create").await;
    let ops = patch(&review).expect("a patch for a CronJob in a mode=audit namespace");
    assert!(
        ops.to_string().contains("/spec/jobTemplate/spec/template"),
        "{ops}"
    );

    let review = mutate("replicaset-kill-namespace-create").await;
    assert!(patch(&review).is_some(), "{review}");

    for (name, needle) in [
        ("deployment-privileged-update", "privileged"),
        ("daemonset-tamper-update", "SYS_PTRACE"),
        ("replicationcontroller-hostnetwork-create", "hostNetwork"),
    ] {
        let review = validate(name).await;
        assert!(!allowed(&review), "{name}: {review}");
        assert!(
            message(&review).contains(needle),
            "{name}: {}",
            message(&review)
        );
    }
    let review = validate("statefulset-create").await;
    assert!(allowed(&review), "{review}");
}

#[tokio::test]
async fn deletes_are_allowed_and_never_patched() {
    for name in ["pod-delete", "deployment-delete"] {
        let review = validate(name).await;
        assert!(allowed(&review), "{name}: {review}");
        let review = mutate(name).await;
        assert!(allowed(&review), "{name}: {review}");
        assert_eq!(patch(&review), None, "{name}: no patch on DELETE");
    }
}

#[tokio::test]
async fn update_carries_old_object_and_is_judged_on_the_new_one() {
    let body = fixture_json("pod-update");
    assert!(
        body["request"]["oldObject"].is_object(),
        "fixture must carry oldObject"
    );
    let review = validate("pod-update").await;
    assert!(allowed(&review), "{review}");
}

#[tokio::test]
async fn exempt_namespace_is_allowed_without_evaluation() {
    let state = default_state();
    let (_, review) = post(
        app(state.clone()),
        "/validate",
        fixture("pod-exempt-privileged-create"),
    )
    .await;
    assert!(allowed(&review), "kube-system is exempt: {review}");
    let metrics = state.metrics().encode();
    assert!(
        metrics.contains(r#"mapguard_admission_requests_total{endpoint="validate",decision="exempt",dry_run="false"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains("mapguard_policy_evaluation_duration_seconds_count 0"),
        "exempt request must not be evaluated: {metrics}"
    );
}

#[tokio::test]
async fn dry_run_request_is_judged_and_only_counted_with_its_label() {
    let state = default_state();
    let (_, review) = post(
        app(state.clone()),
        "/validate",
        fixture("pod-privileged-dryrun-create"),
    )
    .await;
    assert!(
        !allowed(&review),
        "dry-run requests are judged like others: {review}"
    );
    let metrics = state.metrics().encode();
    assert!(
        metrics.contains(r#"mapguard_admission_requests_total{endpoint="validate",decision="denied",dry_run="true"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics
            .lines()
            .filter(|l| l.starts_with("mapguard_policy_findings_total{"))
            .all(|l| l.ends_with(" 0")),
        "dry-run request must not count findings: {metrics}"
    );
    // The same request without dryRun does count findings.
    let (_, _) = post(
        app(state.clone()),
        "/validate",
        fixture("pod-privileged-create"),
    )
    .await;
    let metrics = state.metrics().encode();
    assert!(
        metrics.contains(
            r#"mapguard_policy_findings_total{policy="mapguard.privileged",action="deny"}"#
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn malformed_bodies_get_400_review_shaped_answers() {
    for (body, needle) in [
        (b"{not json".to_vec(), "not valid JSON"),
        (b"".to_vec(), "not valid JSON"),
        (fixture("invalid-wrong-kind"), "expected apiVersion"),
        (fixture("invalid-no-request"), "no request"),
        (
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":null}"#
                .to_vec(),
            "no request",
        ),
        (br#"[1,2,3]"#.to_vec(), "expected apiVersion"),
    ] {
        let (status, review) = post(app(default_state()), "/validate", body.clone()).await;
        assert_eq!(
            status,
            StatusCode::BAD_REQUEST,
            "{}: {review}",
            String::from_utf8_lossy(&body)
        );
        assert!(!allowed(&review), "{review}");
        assert_eq!(review["kind"], "AdmissionReview");
        assert!(message(&review).contains(needle), "{needle}: {review}");
    }
}

#[tokio::test]
async fn known_uid_with_bad_content_is_denied_not_allowed() {
    // Wrong review version but a readable uid: answered 200 so the API
    // server shows the reason; never an allow.
    let (status, review) = post(
        app(default_state()),
        "/validate",
        fixture("invalid-v1beta1"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{review}");
    assert!(!allowed(&review), "{review}");
    assert_eq!(
        review["response"]["uid"],
        fixture_json("invalid-v1beta1")["request"]["uid"]
    );

    // A request whose object is not an object at all.
    let mut body = fixture_json("pod-plain-create");
    body["request"]["operation"] = json!("EXPLODE");
    let (status, review) = post(app(default_state()), "/validate", body.to_string()).await;
    assert_eq!(status, StatusCode::OK, "{review}");
    assert!(!allowed(&review), "{review}");
    assert!(
        message(&review).contains("invalid AdmissionReview"),
        "{review}"
    );
}

#[tokio::test]
async fn oversized_body_gets_413() {
    let settings = Settings {
        max_body_bytes: 4096,
        ..Settings::default()
    };
    let state = state_with(
        PolicySet::embedded(&EngineConfig::default()),
        settings,
        Evaluator::new(2, Duration::from_millis(250)),
    );
    let mut body = fixture_json("pod-plain-create");
    body["request"]["object"]["metadata"]["annotations"] = json!({"big": "x".repeat(10_000)});
    let (status, review) = post(app(state.clone()), "/validate", body.to_string()).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{review}");
    assert!(!allowed(&review), "{review}");
    assert!(message(&review).contains("4096"), "{review}");
    // Just below the limit is fine.
    let (status, review) = post(app(state), "/validate", fixture("pod-plain-create")).await;
    assert_eq!(status, StatusCode::OK, "{review}");
}

#[tokio::test]
async fn default_limit_is_three_mebibytes() {
    let mut body = fixture_json("pod-plain-create");
    body["request"]["object"]["metadata"]["annotations"] =
        json!({"big": "x".repeat(3 * 1024 * 1024)});
    let (status, _) = post(app(default_state()), "/validate", body.to_string()).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn ops_endpoints_report_health_readiness_and_metrics() {
    use mapguard_webhook::ops_app;
    use tower::ServiceExt;
    let state = default_state();
    let _ = post(
        app(state.clone()),
        "/validate",
        fixture("pod-privileged-create"),
    )
    .await;
    let get = |path: &'static str| {
        let router = ops_app(state.clone());
        async move {
            let response = router
                .oneshot(
                    axum::http::Request::get(path)
                        .body(axum::body::Body::empty())
                        .expect("request"),
                )
                .await
                .expect("infallible");
            let status = response.status();
            let body = axum::body::to_bytes(response.into_body(), 1 << 20)
                .await
                .expect("body");
            (status, String::from_utf8_lossy(&body).into_owned())
        }
    };
    assert_eq!(get("/healthz").await.0, StatusCode::OK);
    assert_eq!(get("/readyz").await.0, StatusCode::OK);
    let (status, text) = get("/metrics").await;
    assert_eq!(status, StatusCode::OK);
    for name in [
        "mapguard_admission_requests_total",
        "mapguard_admission_duration_seconds",
        "mapguard_policy_evaluation_duration_seconds",
        "mapguard_policies_loaded",
    ] {
        assert!(text.contains(name), "{name} missing: {text}");
    }
    assert!(
        !text.contains("debug-shell"),
        "pod names must never be labels: {text}"
    );
    state.set_tls_ready(false);
    let (status, text) = get("/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(text.contains("TLS"), "{text}");
}

/// While the namespace watch fails, requests are still judged (with the
/// labels last seen) but never silently: the answer says the labels may be
/// stale; once the watch is back the warning goes.
#[tokio::test]
async fn requests_judged_with_stale_namespace_labels_say_so() {
    use std::sync::Arc;

    use mapguard_webhook::metrics::Metrics;
    use mapguard_webhook::namespaces::NamespaceCache;
    use mapguard_webhook::policies::PolicyStore;

    let cache = Arc::new(NamespaceCache::new(namespace_data()));
    let state = mapguard_webhook::AppState::new(
        Arc::new(PolicyStore::fixed(PolicySet::embedded(
            &EngineConfig::default(),
        ))),
        cache.clone(),
        Evaluator::new(2, Duration::from_millis(250)),
        Arc::new(Metrics::new()),
        Settings::default(),
    );
    state.set_tls_ready(true);
    let stale = |review: &Value| {
        warnings(review)
            .iter()
            .any(|w| w.contains("namespace labels that may be stale"))
    };

    let (_, review) = post(app(state.clone()), "/validate", fixture("pod-plain-create")).await;
    assert!(allowed(&review) && !stale(&review), "{review}");
    cache.mark_stale();
    let (_, review) = post(app(state.clone()), "/validate", fixture("pod-plain-create")).await;
    assert!(allowed(&review), "still judged: {review}");
    assert!(stale(&review), "the answer says so: {review}");
    cache.mark_fresh();
    let (_, review) = post(app(state), "/validate", fixture("pod-plain-create")).await;
    assert!(!stale(&review), "{review}");
}

/// The value of the metric line starting with `series` (name and labels).
fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| {
            v.parse()
                .unwrap_or_else(|e| panic!("{series}: value {v:?}: {e}"))
        })
}

/// The API server sends every Pod to both webhooks. Each finding is
/// counted once, by `/validate`; `/mutate`, which denies nothing (without
/// --mutate-enforce), counts none.
#[tokio::test]
async fn findings_are_counted_once_although_both_endpoints_judge() {
    let state = default_state();
    let (_, mutated) = post(
        app(state.clone()),
        "/mutate",
        fixture("pod-privileged-create"),
    )
    .await;
    assert!(allowed(&mutated), "/mutate denies nothing: {mutated}");
    let (_, validated) = post(
        app(state.clone()),
        "/validate",
        fixture("pod-privileged-create"),
    )
    .await;
    let denials = message(&validated).matches("[mapguard.privileged]").count();
    assert!(denials > 0, "{validated}");
    let text = state.metrics().encode();
    let series = r#"mapguard_policy_findings_total{policy="mapguard.privileged",action="deny"}"#;
    assert_eq!(
        metric_value(&text, series),
        Some(denials as f64),
        "one count per finding of the one request: {text}"
    );

    // /mutate alone (a request the validating webhook never sees) counts nothing.
    let state = default_state();
    let _ = post(
        app(state.clone()),
        "/mutate",
        fixture("pod-privileged-create"),
    )
    .await;
    assert_eq!(
        metric_value(&state.metrics().encode(), series),
        Some(0.0),
        "deny findings on /mutate must not be counted"
    );
}

/// A denied controller is named once: "mapguard denied Deployment ns/x:
/// [policy] container ...", not again in each reason.
#[tokio::test]
async fn a_denied_controller_is_named_once() {
    let review = validate("deployment-privileged-update").await;
    let text = message(&review);
    let subject = "Deployment default/shop-api";
    assert!(
        text.starts_with(&format!("mapguard denied {subject}: [mapguard.")),
        "{text}"
    );
    assert_eq!(text.matches(subject).count(), 1, "{text}");
    // Warnings carry no subject of their own: there the prefix stays.
    let review = validate("job-godebug-create").await;
    assert!(
        warnings(&review)
            .iter()
            .all(|w| w.contains("Job default/nightly-report: ")),
        "{review}"
    );
}

/// Every metric is listed (HELP, TYPE and zero series) before it first
/// fires, so dashboards and alerts see 0 rather than no data.
#[tokio::test]
async fn every_metric_is_listed_before_it_fires() {
    let text = default_state().metrics().encode();
    for (name, kind) in [
        ("mapguard_admission_requests", "counter"),
        ("mapguard_admission_duration_seconds", "histogram"),
        ("mapguard_policy_evaluation_duration_seconds", "histogram"),
        ("mapguard_policy_reloads", "counter"),
        ("mapguard_policy_evaluations_rejected", "counter"),
        ("mapguard_tls_reloads", "counter"),
        ("mapguard_namespace_reloads", "counter"),
        ("mapguard_policy_findings", "counter"),
        ("mapguard_policies_loaded", "gauge"),
        ("mapguard_policy_evaluations_in_flight", "gauge"),
        ("mapguard_tls_handshake_failures", "counter"),
    ] {
        assert!(
            text.contains(&format!("# HELP {name} ")),
            "no HELP for {name}: {text}"
        );
        assert!(
            text.contains(&format!("# TYPE {name} {kind}\n")),
            "no TYPE for {name}: {text}"
        );
    }
    for series in [
        "mapguard_tls_handshake_failures_total",
        r#"mapguard_namespace_reloads_total{result="failure"}"#,
        r#"mapguard_policy_reloads_total{result="failure"}"#,
        r#"mapguard_tls_reloads_total{result="failure"}"#,
        r#"mapguard_policy_evaluations_rejected_total{reason="timeout"}"#,
        r#"mapguard_admission_requests_total{endpoint="validate",decision="failed_closed",dry_run="false"}"#,
        r#"mapguard_policy_findings_total{policy="mapguard.privileged",action="deny"}"#,
        r#"mapguard_policy_findings_total{policy="mapguard.gotraceback",action="warn"}"#,
    ] {
        assert_eq!(metric_value(&text, series), Some(0.0), "{series}: {text}");
    }
}
