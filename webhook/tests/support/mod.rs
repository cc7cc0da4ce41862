//! Helpers shared by the webhook's integration tests: fixtures, state
//! construction, in-process requests, and a real rustls/hyper HTTPS client.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use base64::Engine as _;
use clap::Parser as _;
use mapguard_policy::{EngineConfig, NamespaceData, PolicySet};
use mapguard_webhook::config::Config;
use mapguard_webhook::evaluator::Evaluator;
use mapguard_webhook::metrics::Metrics;
use mapguard_webhook::namespaces::NamespaceCache;
use mapguard_webhook::policies::PolicyStore;
use mapguard_webhook::startup::{Running, Webhook};
use mapguard_webhook::{AppState, Settings};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tower::ServiceExt;

/// `tests/data/admission` of the repository.
pub fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/admission")
}

/// The namespaces file used by tests and the demo.
pub fn namespaces_file() -> PathBuf {
    data_dir().join("namespaces.yaml")
}

/// The raw bytes of fixture `name` (without `.json`).
pub fn fixture(name: &str) -> Vec<u8> {
    let path = data_dir().join(format!("{name}.json"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("reading fixture {}: {e}", path.display()))
}

/// Fixture `name` parsed.
pub fn fixture_json(name: &str) -> Value {
    serde_json::from_slice(&fixture(name))
        .unwrap_or_else(|e| panic!("fixture {name} is not JSON: {e}"))
}

/// Namespace data of `namespaces.yaml`.
pub fn namespace_data() -> NamespaceData {
    NamespaceData::from_file(&namespaces_file())
        .expect("tests/data/admission/namespaces.yaml loads")
}

/// A state serving `set` with `settings`, namespaces from the test file.
pub fn state_with(set: PolicySet, settings: Settings, evaluator: Evaluator) -> AppState {
    let state = AppState::new(
        Arc::new(PolicyStore::fixed(set)),
        Arc::new(NamespaceCache::new(namespace_data())),
        evaluator,
        Arc::new(Metrics::new()),
        settings,
    );
    state.set_tls_ready(true);
    state
}

/// The default (embedded) policies with default settings.
pub fn default_state() -> AppState {
    state_with(
        PolicySet::embedded(&EngineConfig::default()),
        Settings::default(),
        Evaluator::new(4, Duration::from_millis(250)),
    )
}

/// Sends `body` to `path` through `app` without a socket.
pub async fn post(app: Router, path: &str, body: impl Into<Body>) -> (StatusCode, Value) {
    let request = Request::post(path)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body.into())
        .expect("request builds");
    let response = app.oneshot(request).await.expect("router is infallible");
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 16 << 20)
        .await
        .expect("response body reads");
    let json = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        panic!(
            "response is not JSON ({e}): {}",
            String::from_utf8_lossy(&bytes)
        )
    });
    (status, json)
}

/// `response.allowed` of a review answer.
pub fn allowed(review: &Value) -> bool {
    review
        .pointer("/response/allowed")
        .and_then(Value::as_bool)
        .unwrap_or_else(|| panic!("no response.allowed in {review}"))
}

/// `response.status.message` (empty if none).
pub fn message(review: &Value) -> String {
    review
        .pointer("/response/status/message")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

/// `response.warnings` (empty if none).
pub fn warnings(review: &Value) -> Vec<String> {
    review
        .pointer("/response/warnings")
        .and_then(Value::as_array)
        .map(|w| {
            w.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The decoded JSON patch of a review answer, if any.
pub fn patch(review: &Value) -> Option<Value> {
    let text = review
        .pointer("/response/patch")?
        .as_str()
        .expect("patch must be a base64 string");
    assert_eq!(
        review
            .pointer("/response/patchType")
            .and_then(Value::as_str),
        Some("JSONPatch"),
        "patch without patchType JSONPatch"
    );
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .expect("patch is valid base64");
    Some(serde_json::from_slice(&bytes).expect("decoded patch is JSON"))
}

/// A rustls client trusting `ca_pem`, limited to `versions`.
pub fn tls_connector(
    ca_pem: &str,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> TlsConnector {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots
            .add(cert.expect("CA PEM parses"))
            .expect("CA is a valid trust anchor");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(versions)
    .expect("protocol versions supported")
    .with_root_certificates(roots)
    .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

/// Opens a TLS connection to `addr` for server name `localhost`.
pub async fn tls_connect(connector: &TlsConnector, addr: SocketAddr) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.expect("TCP connect");
    let name = rustls_pki_types::ServerName::try_from("localhost").expect("server name");
    connector.connect(name, tcp).await.expect("TLS handshake")
}

/// An HTTP/1.1 client connection over `stream`.
pub async fn http1(stream: TlsStream<TcpStream>) -> hyper::client::conn::http1::SendRequest<Body> {
    let (sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .expect("HTTP/1.1 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender
}

/// POSTs `body` to `path` on an open HTTP/1.1 connection.
pub async fn send(
    sender: &mut hyper::client::conn::http1::SendRequest<Body>,
    path: &str,
    body: Vec<u8>,
) -> (StatusCode, Value) {
    sender.ready().await.expect("connection ready");
    let request = Request::post(path)
        .header(header::HOST, "localhost")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body))
        .expect("request builds");
    let response = sender.send_request(request).await.expect("request sent");
    let status = response.status();
    let bytes = axum::body::to_bytes(Body::new(response.into_body()), 16 << 20)
        .await
        .expect("body reads");
    let json = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        panic!(
            "response is not JSON ({e}): {}",
            String::from_utf8_lossy(&bytes)
        )
    });
    (status, json)
}

/// GETs `path` from the plain-HTTP operations port.
pub async fn ops_get(addr: SocketAddr, path: &str) -> (StatusCode, String) {
    let tcp = TcpStream::connect(addr).await.expect("connect to ops port");
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .expect("HTTP/1.1 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let request = Request::get(path)
        .header(header::HOST, "localhost")
        .body(Body::empty())
        .expect("request builds");
    let response = sender.send_request(request).await.expect("request sent");
    let status = response.status();
    let bytes = axum::body::to_bytes(Body::new(response.into_body()), 16 << 20)
        .await
        .expect("body reads");
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

/// A fresh temporary directory for one test.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mapguard-webhook-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

/// Starts the real webhook on 127.0.0.1 (ports chosen by the OS) with the
/// certificate pair in `cert_dir`, `flags`, and the test namespaces file
/// unless `flags` name another or a `--kubeconfig` to watch.
pub async fn start_webhook(cert_dir: &Path, flags: &[String]) -> Running {
    let mut args = vec![
        "mapguard-webhook".to_owned(),
        "--listen=127.0.0.1:0".to_owned(),
        "--metrics-listen=127.0.0.1:0".to_owned(),
        format!("--tls-cert={}", cert_dir.join("tls.crt").display()),
        format!("--tls-key={}", cert_dir.join("tls.key").display()),
    ];
    if !flags
        .iter()
        .any(|f| f.starts_with("--namespaces-file") || f.starts_with("--kubeconfig"))
    {
        args.push(format!("--namespaces-file={}", namespaces_file().display()));
    }
    args.extend(flags.iter().cloned());
    let config = Config::try_parse_from(args).expect("test config parses");
    Webhook::build(&config)
        .await
        .expect("webhook builds")
        .start(&config)
        .await
        .expect("webhook starts")
}

/// A Gatekeeper ConstraintTemplate (v0 Rego) denying objects whose name is
/// in `parameters.names`: kind `K8sReservedNames`.
pub const RESERVED_NAMES_TEMPLATE: &str = r#"apiVersion: templates.gatekeeper.sh/v1
kind: ConstraintTemplate
metadata:
  name: k8sreservednames
spec:
  crd:
    spec:
      names:
        kind: K8sReservedNames
      validation:
        openAPIV3Schema:
          type: object
          properties:
            names:
              type: array
              items: {type: string}
  targets:
    - target: admission.k8s.gatekeeper.sh
      rego: |
        package k8sreservednames
        violation[{"msg": msg}] {
          name := input.review.object.metadata.name
          name == input.parameters.names[_]
          msg := sprintf("the name %v is reserved", [name])
        }
"#;

/// Publishes `files` the way the kubelet updates a ConfigMap volume: a new
/// hidden directory, then an atomic swap of the `..data` symlink, and a
/// visible symlink per file.
pub fn publish_configmap(dir: &Path, version: u32, files: &[(&str, &str)]) {
    use std::os::unix::fs::symlink;
    let data = dir.join(format!("..v{version}"));
    std::fs::create_dir_all(&data).expect("mkdir version dir");
    for (name, text) in files {
        std::fs::write(data.join(name), text).expect("write");
    }
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    symlink(format!("..v{version}"), &tmp).expect("symlink");
    std::fs::rename(&tmp, dir.join("..data")).expect("swap ..data");
    for (name, _) in files {
        let visible = dir.join(name);
        if visible.symlink_metadata().is_err() {
            symlink(format!("..data/{name}"), &visible).expect("visible symlink");
        }
    }
}

/// Waits (10 s at most) until the webhook's `/metrics` contains `needle`.
pub async fn wait_for_metric(metrics_addr: SocketAddr, needle: &str, what: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, metrics) = ops_get(metrics_addr, "/metrics").await;
        if metrics.contains(needle) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{what}: {metrics}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One POST of `body` to `/validate` on a new TLS connection (HTTP/1.1):
/// the status and the JSON answer, or what failed (TCP, TLS handshake,
/// request, body).
pub async fn post_once(
    connector: &TlsConnector,
    addr: SocketAddr,
    body: Vec<u8>,
) -> Result<(StatusCode, Value), String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("TCP connect: {e}"))?;
    let name = rustls_pki_types::ServerName::try_from("localhost").expect("server name");
    let tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS handshake: {e}"))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .map_err(|e| format!("HTTP/1.1 handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let request = Request::post("/validate")
        .header(header::HOST, "localhost")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body))
        .expect("request builds");
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("request: {e}"))?;
    let status = response.status();
    let bytes = axum::body::to_bytes(Body::new(response.into_body()), 1 << 20)
        .await
        .map_err(|e| format!("response body: {e}"))?;
    let json = serde_json::from_slice(&bytes).map_err(|e| {
        format!(
            "{status}: response is not JSON ({e}): {}",
            String::from_utf8_lossy(&bytes)
        )
    })?;
    Ok((status, json))
}
