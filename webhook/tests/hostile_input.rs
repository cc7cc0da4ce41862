//! Hostile input on the admission port, against the real binary: any Pod
//! of the cluster can reach the webhook's Service, so bodies the API server
//! never sends (a Pod object holding a 3 MiB array of empty objects) must
//! neither grow the process beyond its memory limit nor keep a genuine
//! review from being judged within the webhook configurations' timeout.
//!
//! Peak memory is the spawned process' `VmHWM` (peak resident set) from
//! `/proc/PID/status`: what the kernel's memory limit counts.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use mapguard_certs_gen::{CertRequest, generate, write_dir};
use rustls::version::TLS13;
use serde::Deserialize;
use serde_json::Value;
use support::*;

/// The Deployment's memory limit (manifests/webhook/deployment.yaml).
const MEMORY_LIMIT_KIB: u64 = 256 * 1024;
/// Requests of the attack sent at once, each on its own connection.
const PARALLEL: usize = 8;
/// The API server's own limit on a request body, and the webhook's default.
const BODY_BYTES: usize = 3 * 1024 * 1024;

/// `mapguard-webhook` spawned with JSON logs written to a file.
struct Binary {
    child: Child,
    log: PathBuf,
    addr: SocketAddr,
    metrics_addr: SocketAddr,
}

impl Binary {
    fn start(dir: &Path, args: &[String]) -> Binary {
        let log = dir.join("webhook.log");
        let file = std::fs::File::create(&log).expect("create the log file");
        let child = Command::new(env!("CARGO_BIN_EXE_mapguard-webhook"))
            .args([
                "--listen=127.0.0.1:0".to_owned(),
                "--metrics-listen=127.0.0.1:0".to_owned(),
                "--log-format=json".to_owned(),
                format!("--tls-cert={}", dir.join("tls.crt").display()),
                format!("--tls-key={}", dir.join("tls.key").display()),
                format!("--namespaces-file={}", namespaces_file().display()),
            ])
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("start mapguard-webhook");
        let mut binary = Binary {
            child,
            log,
            addr: "0.0.0.0:0".parse().expect("address"),
            metrics_addr: "0.0.0.0:0".parse().expect("address"),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        let line = loop {
            let text = std::fs::read_to_string(&binary.log).expect("read the log");
            if let Some(line) = text
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find(|l| l["message"] == "serving")
            {
                break line;
            }
            if let Ok(Some(status)) = binary.child.try_wait() {
                panic!("mapguard-webhook exited ({status}) before serving:\n{text}");
            }
            assert!(Instant::now() < deadline, "not serving after 20 s:\n{text}");
            std::thread::sleep(Duration::from_millis(50));
        };
        let addr = |field: &str| {
            line[field]
                .as_str()
                .and_then(|a| a.parse().ok())
                .unwrap_or_else(|| panic!("no {field} in {line}"))
        };
        binary.addr = addr("addr");
        binary.metrics_addr = addr("metrics_addr");
        binary
    }

    /// A field of `/proc/PID/status` in KiB (`VmHWM`, `VmRSS`).
    fn status_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("read /proc/PID/status of the webhook");
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {field} in:\n{status}"))
    }

    fn assert_alive(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            panic!("mapguard-webhook died ({status}):\n{log}");
        }
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `timeoutSeconds` of the validating webhooks: how long the API server
/// waits for an answer.
fn webhook_timeout() -> Duration {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../manifests/webhook/validatingwebhookconfiguration.yaml");
    let text = std::fs::read_to_string(&path).expect("read the validating configuration");
    let conf = Value::deserialize(yaml_serde::Deserializer::from_str(&text))
        .expect("the validating configuration is YAML");
    let seconds = conf["webhooks"]
        .as_array()
        .expect("webhooks")
        .iter()
        .map(|w| w["timeoutSeconds"].as_u64().expect("timeoutSeconds"))
        .min()
        .expect("at least one webhook");
    Duration::from_secs(seconds)
}

/// An AdmissionReview of a Pod (the envelope of `pod-plain-create`, uid
/// `uid`) whose object is `object`, serialized around `object_json`.
fn review_with_object(uid: &str, object_json: &str) -> Vec<u8> {
    const MARK: &str = "\"@object@\"";
    let mut review = fixture_json("pod-plain-create");
    review["request"]["uid"] = Value::from(uid);
    review["request"]["object"] = Value::from("@object@");
    let text = serde_json::to_string(&review).expect("serialize");
    text.replacen(MARK, object_json, 1).into_bytes()
}

/// The attack: a Pod object `{"spec": {"x": [{}, {}, …]}}` filling the
/// body up to `BODY_BYTES`.
fn empty_objects_review(uid: &str) -> Vec<u8> {
    let envelope = review_with_object(uid, "").len();
    let room = BODY_BYTES - envelope - r#"{"spec":{"x":[{}]}}"#.len();
    let mut object = String::with_capacity(BODY_BYTES);
    object.push_str(r#"{"spec":{"x":[{}"#);
    for _ in 0..room / 3 {
        object.push_str(",{}");
    }
    object.push_str("]}}");
    let body = review_with_object(uid, &object);
    assert!(body.len() <= BODY_BYTES, "{} bytes", body.len());
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_3_mib_reviews_of_empty_objects_stay_within_the_memory_limit() {
    let dir = temp_dir("hostile-empty-objects");
    let certs = generate(&CertRequest::new("wh", "ns")).expect("certs");
    write_dir(&certs, &dir, false).expect("write certs");
    let mut server = Binary::start(&dir, &[]);
    let connector = tls_connector(&certs.ca_cert_pem, &[&TLS13]);
    let timeout = webhook_timeout();
    let idle_kib = server.status_kib("VmRSS");

    let attack: Vec<_> = (0..PARALLEL)
        .map(|i| {
            let body = empty_objects_review(&format!("attack-{i}"));
            let connector = connector.clone();
            let addr = server.addr;
            tokio::spawn(async move { post_once(&connector, addr, body).await })
        })
        .collect();
    // A genuine review while the attack's bodies are read and parsed.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let sent = Instant::now();
    let genuine = tokio::time::timeout(
        timeout,
        post_once(&connector, server.addr, fixture("pod-plain-create")),
    )
    .await;
    let took = sent.elapsed();
    let mut answers = Vec::new();
    for (i, task) in attack.into_iter().enumerate() {
        let answer = tokio::time::timeout(timeout * 3, task)
            .await
            .unwrap_or_else(|_| panic!("attack request {i} unanswered"))
            .expect("attack task");
        answers.push(answer.unwrap_or_else(|e| panic!("attack request {i} got no answer: {e}")));
    }
    let peak_kib = server.status_kib("VmHWM");
    eprintln!(
        "{PARALLEL} x {BODY_BYTES} B reviews of empty objects: RSS {} MiB idle, peak {} MiB; genuine review answered in {took:?}",
        idle_kib / 1024,
        peak_kib / 1024
    );
    server.assert_alive();
    assert!(
        peak_kib <= MEMORY_LIMIT_KIB,
        "peak RSS {} MiB above the Deployment's limit of {} MiB",
        peak_kib / 1024,
        MEMORY_LIMIT_KIB / 1024
    );
    let (status, review) = genuine
        .unwrap_or_else(|_| panic!("genuine review unanswered within {timeout:?}"))
        .unwrap_or_else(|e| panic!("genuine review got no answer: {e}"));
    assert_eq!(status, StatusCode::OK, "{review}");
    assert!(
        allowed(&review) && !message(&review).contains("could not judge"),
        "the genuine review is judged, not refused: {review}"
    );
    for (i, (status, review)) in answers.iter().enumerate() {
        assert!(
            !allowed(review),
            "attack request {i} must be refused ({status}): {review}"
        );
    }

    // Still serving after the attack.
    let (status, review) = post_once(&connector, server.addr, fixture("pod-plain-create"))
        .await
        .unwrap_or_else(|e| panic!("review after the attack: {e}"));
    assert_eq!(status, StatusCode::OK, "{review}");
    assert!(allowed(&review), "{review}");
    let _ = server.metrics_addr;
    drop(server);
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

/// Bodies within every limit but as costly as the limits allow: a
/// Deployment whose template holds 20 000 objects of one member (the
/// costliest shape per byte once unpacked into a Pod: about 43 MB
/// allocated each, tests/memory_estimate.rs), eight at once. The memory
/// budget lets two be judged at a time; the others are answered as
/// overloaded by the failure policy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_costly_reviews_within_the_limits_stay_within_the_memory_limit() {
    let dir = temp_dir("hostile-costly");
    let certs = generate(&CertRequest::new("wh", "ns")).expect("certs");
    write_dir(&certs, &dir, false).expect("write certs");
    let mut server = Binary::start(&dir, &[]);
    let connector = tls_connector(&certs.ca_cert_pem, &[&TLS13]);
    let timeout = webhook_timeout();
    let idle_kib = server.status_kib("VmRSS");

    let objects = format!("[{}]", vec!["{\"a\":0}"; 20_000].join(","));
    let mut review = fixture_json("deployment-kill-namespace-create");
    review["request"]["object"]["spec"]["template"]["spec"]["x"] = Value::from("@objects@");
    let text = serde_json::to_string(&review).expect("serialize");
    let attack: Vec<_> = (0..PARALLEL)
        .map(|i| {
            let body = text
                .replacen("\"@objects@\"", &objects, 1)
                .replacen(
                    review["request"]["uid"].as_str().expect("uid"),
                    &format!("costly-{i}"),
                    1,
                )
                .into_bytes();
            let connector = connector.clone();
            let addr = server.addr;
            tokio::spawn(async move { post_once(&connector, addr, body).await })
        })
        .collect();
    let mut answers = Vec::new();
    for (i, task) in attack.into_iter().enumerate() {
        let answer = tokio::time::timeout(timeout * 3, task)
            .await
            .unwrap_or_else(|_| panic!("costly request {i} unanswered"))
            .expect("costly task");
        answers.push(answer.unwrap_or_else(|e| panic!("costly request {i} got no answer: {e}")));
    }
    let peak_kib = server.status_kib("VmHWM");
    eprintln!(
        "{PARALLEL} costly reviews within the limits: RSS {} MiB idle, peak {} MiB; answers: {:?}",
        idle_kib / 1024,
        peak_kib / 1024,
        answers
            .iter()
            .map(|(status, review)| format!(
                "{status} {}",
                message(review).chars().take(60).collect::<String>()
            ))
            .collect::<Vec<_>>()
    );
    server.assert_alive();
    assert!(
        peak_kib <= MEMORY_LIMIT_KIB,
        "peak RSS {} MiB above the Deployment's limit of {} MiB",
        peak_kib / 1024,
        MEMORY_LIMIT_KIB / 1024
    );
    for (status, review) in &answers {
        assert_eq!(*status, StatusCode::OK, "a review answer: {review}");
    }
    let (status, review) = post_once(&connector, server.addr, fixture("pod-plain-create"))
        .await
        .unwrap_or_else(|e| panic!("review after the costly ones: {e}"));
    assert_eq!(status, StatusCode::OK, "{review}");
    assert!(allowed(&review), "{review}");
    drop(server);
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

/// The same attack multiplexed on one HTTP/2 connection, 40 streams (more
/// than the 32 a connection may have in flight): every stream answered,
/// memory bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forty_3_mib_streams_on_one_http2_connection_stay_within_the_memory_limit() {
    let dir = temp_dir("hostile-h2");
    let certs = generate(&CertRequest::new("wh", "ns")).expect("certs");
    write_dir(&certs, &dir, false).expect("write certs");
    let mut server = Binary::start(&dir, &[]);
    let connector = tls_connector(&certs.ca_cert_pem, &[&TLS13]);
    let tls = tls_connect(&connector, server.addr).await;
    let (sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .expect("HTTP/2 handshake (prior knowledge)");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let streams: Vec<_> = (0..40)
        .map(|i| {
            let mut sender = sender.clone();
            let body = empty_objects_review(&format!("h2-{i}"));
            tokio::spawn(async move {
                let request = Request::post("/validate")
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(Body::from(body))
                    .expect("request builds");
                sender.ready().await.map_err(|e| e.to_string())?;
                let response = sender
                    .send_request(request)
                    .await
                    .map_err(|e| e.to_string())?;
                let status = response.status();
                let bytes = axum::body::to_bytes(Body::new(response.into_body()), 1 << 20)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok::<_, String>((status, bytes))
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for (i, stream) in streams.into_iter().enumerate() {
        let (status, bytes) = tokio::time::timeout(webhook_timeout() * 3, stream)
            .await
            .unwrap_or_else(|_| panic!("stream {i} unanswered"))
            .expect("stream task")
            .unwrap_or_else(|e| panic!("stream {i} failed: {e}"));
        let review: Value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("stream {i}: {status}: not JSON ({e})"));
        assert!(!allowed(&review), "stream {i} must be refused: {review}");
        statuses.push(status.as_u16());
    }
    let peak_kib = server.status_kib("VmHWM");
    eprintln!(
        "40 x {BODY_BYTES} B streams on one HTTP/2 connection: peak {} MiB; statuses {statuses:?}",
        peak_kib / 1024
    );
    server.assert_alive();
    assert!(
        peak_kib <= MEMORY_LIMIT_KIB,
        "peak RSS {} MiB above the Deployment's limit of {} MiB",
        peak_kib / 1024,
        MEMORY_LIMIT_KIB / 1024
    );
    drop(server);
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

/// `--max-connections`: a client beyond the limit is not served until an
/// open connection closes, then it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_beyond_the_limit_waits_for_one_to_close() {
    let dir = temp_dir("hostile-connections");
    let certs = generate(&CertRequest::new("wh", "ns")).expect("certs");
    write_dir(&certs, &dir, false).expect("write certs");
    let server = Binary::start(&dir, &["--max-connections=4".to_owned()]);
    let connector = tls_connector(&certs.ca_cert_pem, &[&TLS13]);
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(tls_connect(&connector, server.addr).await);
    }
    let (_, metrics) = ops_get(server.metrics_addr, "/metrics").await;
    assert!(metrics.contains("mapguard_connections_open 4"), "{metrics}");
    let fifth = tokio::spawn({
        let connector = connector.clone();
        let addr = server.addr;
        async move { post_once(&connector, addr, fixture("pod-plain-create")).await }
    });
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(
        !fifth.is_finished(),
        "the fifth connection was served while four were open"
    );
    drop(held.pop());
    let (status, review) = tokio::time::timeout(Duration::from_secs(5), fifth)
        .await
        .expect("the fifth connection is served once one closed")
        .expect("task")
        .unwrap_or_else(|e| panic!("fifth connection: {e}"));
    assert_eq!(status, StatusCode::OK, "{review}");
    assert!(allowed(&review), "{review}");
    drop(held);
    drop(server);
    std::fs::remove_dir_all(&dir).expect("cleanup");
}
