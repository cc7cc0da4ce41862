//! Bounded evaluation: a policy that runs too long or a saturated pool gives
//! a clear decision according to the failure policy, never a silent allow.

mod support;

use std::time::{Duration, Instant};

use mapguard_policy::{EngineConfig, PolicySet};
use mapguard_webhook::evaluator::Evaluator;
use mapguard_webhook::{AppState, FailurePolicy, Settings, app};
use support::*;

/// 25 million iterations: seconds of work, far beyond any test limit.
const SLOW: &str = r#"package mapguard.slow

deny contains "found a needle" if {
	some i in numbers.range(1, 5000)
	some j in numbers.range(1, 5000)
	i * j == -1
}
"#;

fn slow_state(failure_policy: FailurePolicy, slots: usize, eval_timeout: Duration) -> AppState {
    let config = EngineConfig {
        eval_timeout: Some(eval_timeout),
        ..EngineConfig::default()
    };
    let set = PolicySet::from_sources(vec![("slow.rego".into(), SLOW.into())], &config)
        .expect("slow policy compiles");
    let settings = Settings {
        failure_policy,
        ..Settings::default()
    };
    state_with(
        set,
        settings,
        Evaluator::new(slots, Duration::from_millis(20)),
    )
}

#[tokio::test]
async fn timeout_fail_closed_denies_with_reason() {
    let state = slow_state(FailurePolicy::FailClosed, 2, Duration::from_millis(200));
    let started = Instant::now();
    let (_, review) = post(app(state.clone()), "/validate", fixture("pod-plain-create")).await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "evaluation not bounded: {:?}",
        started.elapsed()
    );
    assert!(!allowed(&review), "{review}");
    let msg = message(&review);
    assert!(
        msg.contains("time limit") && msg.contains("fail-closed"),
        "{msg}"
    );
    let metrics = state.metrics().encode();
    assert!(
        metrics.contains(r#"mapguard_policy_evaluations_rejected_total{reason="timeout"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"decision="failed_closed""#), "{metrics}");
}

#[tokio::test]
async fn timeout_fail_open_allows_with_warning() {
    let state = slow_state(FailurePolicy::FailOpen, 2, Duration::from_millis(200));
    let (_, review) = post(app(state.clone()), "/validate", fixture("pod-plain-create")).await;
    assert!(allowed(&review), "{review}");
    let w = warnings(&review);
    assert!(
        w.iter()
            .any(|w| w.contains("time limit") && w.contains("fail-open")),
        "{w:?}"
    );
    // /mutate follows the same failure policy.
    let (_, review) = post(app(state), "/mutate", fixture("pod-plain-create")).await;
    assert!(allowed(&review), "{review}");
    assert!(!warnings(&review).is_empty(), "{review}");
}

#[tokio::test]
async fn saturated_pool_rejects_as_overloaded() {
    let state = slow_state(FailurePolicy::FailClosed, 1, Duration::from_millis(800));
    let first = tokio::spawn(post(
        app(state.clone()),
        "/validate",
        fixture("pod-plain-create"),
    ));
    // Let the first request take the only slot.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let (_, review) = post(app(state.clone()), "/validate", fixture("pod-plain-create")).await;
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "overload must answer fast: {:?}",
        started.elapsed()
    );
    assert!(!allowed(&review), "{review}");
    assert!(message(&review).contains("overloaded"), "{review}");
    let (_, review) = first.await.expect("first request");
    assert!(
        !allowed(&review),
        "first request timed out, fail-closed: {review}"
    );
    let metrics = state.metrics().encode();
    assert!(
        metrics.contains(r#"mapguard_policy_evaluations_rejected_total{reason="overload"} 1"#),
        "{metrics}"
    );

    // Once the slot is free again, requests are judged again.
    let (_, review) = post(
        app(state),
        "/validate",
        fixture("pod-exempt-privileged-create"),
    )
    .await;
    assert!(allowed(&review), "{review}");
}

#[tokio::test]
async fn shutdown_lets_in_flight_requests_finish() {
    use mapguard_certs_gen::{CertRequest, generate, write_dir};

    let base = temp_dir("graceful");
    let certs = generate(&CertRequest::new("wh", "ns")).expect("certs");
    write_dir(&certs, &base, false).expect("write certs");
    let policies = base.join("policies");
    std::fs::create_dir_all(&policies).expect("mkdir");
    std::fs::write(policies.join("slow.rego"), SLOW).expect("write policy");
    let server = start_webhook(
        &base,
        &[
            format!("--policies={}", policies.display()),
            "--eval-timeout=600ms".to_owned(),
            "--shutdown-grace=5s".to_owned(),
        ],
    )
    .await;
    let addr = server.addr;
    let connector = tls_connector(&certs.ca_cert_pem, &[&rustls::version::TLS13]);
    let mut client = http1(tls_connect(&connector, addr).await).await;
    let in_flight =
        tokio::spawn(
            async move { send(&mut client, "/validate", fixture("pod-plain-create")).await },
        );
    tokio::time::sleep(Duration::from_millis(150)).await;
    let started = Instant::now();
    server.shutdown().await;
    let (status, review) = in_flight.await.expect("in-flight request task");
    assert_eq!(
        status,
        axum::http::StatusCode::OK,
        "in-flight request answered: {review}"
    );
    assert!(
        message(&review).contains("time limit"),
        "the slow evaluation ran to its limit before shutdown completed: {review}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "shutdown took {:?}",
        started.elapsed()
    );
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "listener must be closed after shutdown"
    );
    std::fs::remove_dir_all(&base).expect("cleanup");
}
