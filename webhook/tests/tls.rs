//! The real server on 127.0.0.1 over TLS: protocol versions, refusal of
//! plain HTTP and TLS 1.1, certificate rotation without dropping connections.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use mapguard_certs_gen::{Ca, CertRequest, GeneratedCerts, write_dir};
use mapguard_webhook::startup::Running;
use rustls::version::{TLS12, TLS13};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn issue(ca: &Ca) -> GeneratedCerts {
    ca.issue(&CertRequest::new("mapguard-webhook", "mapguard-system"))
        .expect("issue serving certificate")
}

async fn start(cert_dir: &Path, extra: &[&str]) -> Running {
    let mut flags = vec![
        "--reload-interval=100ms".to_owned(),
        "--shutdown-grace=2s".to_owned(),
    ];
    flags.extend(extra.iter().map(|s| s.to_string()));
    start_webhook(cert_dir, &flags).await
}

fn peer_cert(stream: &tokio_rustls::client::TlsStream<TcpStream>) -> Vec<u8> {
    stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .expect("server sent a certificate")
        .as_ref()
        .to_vec()
}

fn der_of(pem: &str) -> Vec<u8> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes())
        .expect("PEM parses")
        .as_ref()
        .to_vec()
}

#[tokio::test]
async fn tls12_and_tls13_clients_are_served_and_ready() {
    let dir = temp_dir("tls-versions");
    let ca = Ca::generate("test CA", 30).expect("CA");
    let certs = issue(&ca);
    write_dir(&certs, &dir, false).expect("write certs");
    let server = start(&dir, &[]).await;

    for (version, want) in [
        (&TLS12, rustls::ProtocolVersion::TLSv1_2),
        (&TLS13, rustls::ProtocolVersion::TLSv1_3),
    ] {
        let connector = tls_connector(&certs.ca_cert_pem, &[version]);
        let stream = tls_connect(&connector, server.addr).await;
        assert_eq!(stream.get_ref().1.protocol_version(), Some(want));
        let mut sender = http1(stream).await;
        let (status, review) =
            send(&mut sender, "/validate", fixture("pod-privileged-create")).await;
        assert_eq!(status, StatusCode::OK);
        assert!(!allowed(&review), "{review}");
        let (status, review) = send(&mut sender, "/validate", fixture("pod-plain-create")).await;
        assert_eq!(status, StatusCode::OK);
        assert!(allowed(&review), "{review}");
    }

    let (status, body) = ops_get(server.metrics_addr, "/readyz").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = ops_get(server.metrics_addr, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        body.contains(r#"mapguard_admission_requests_total{endpoint="validate",decision="denied",dry_run="false"} 2"#),
        "{body}"
    );
    server.shutdown().await;
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

#[tokio::test]
async fn plain_http_and_tls11_clients_are_refused() {
    let dir = temp_dir("tls-refuse");
    let ca = Ca::generate("test CA", 30).expect("CA");
    write_dir(&issue(&ca), &dir, false).expect("write certs");
    let server = start(&dir, &[]).await;

    // Plain HTTP on the TLS port: no HTTP answer, the connection is closed.
    let mut tcp = TcpStream::connect(server.addr).await.expect("connect");
    let body = fixture("pod-plain-create");
    let head = format!(
        "POST /validate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    tcp.write_all(head.as_bytes()).await.expect("write head");
    let _ = tcp.write_all(&body).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer)).await;
    assert!(
        !answer.starts_with(b"HTTP/"),
        "plain HTTP must not be served: {:?}",
        String::from_utf8_lossy(&answer)
    );

    // rustls clients cannot speak TLS 1.1, so send a TLS 1.1 ClientHello by hand.
    let mut tcp = TcpStream::connect(server.addr).await.expect("connect");
    tcp.write_all(&tls11_client_hello())
        .await
        .expect("write hello");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer)).await;
    assert_eq!(
        answer.first(),
        Some(&0x15),
        "expected a TLS alert record, got {answer:02x?}"
    );
    // A fatal alert: protocol_version (70) or handshake_failure (40).
    assert!(
        matches!(answer.get(5..7), Some([2, 70]) | Some([2, 40])),
        "expected a fatal protocol_version/handshake_failure alert: {answer:02x?}"
    );

    let (_, metrics) = ops_get(server.metrics_addr, "/metrics").await;
    assert!(
        metrics.contains("mapguard_tls_handshake_failures_total 2"),
        "{metrics}"
    );
    server.shutdown().await;
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

/// A ClientHello offering only TLS 1.1 (legacy version 0x0302, no
/// supported_versions extension) with two TLS 1.1 cipher suites.
fn tls11_client_hello() -> Vec<u8> {
    let mut body = vec![0x03, 0x02];
    body.extend([0x42; 32]); // random
    body.push(0); // session id
    body.extend([0x00, 0x04, 0xc0, 0x13, 0x00, 0x2f]); // cipher suites
    body.extend([0x01, 0x00]); // compression: null
    let mut handshake = vec![0x01, 0x00, (body.len() >> 8) as u8, body.len() as u8];
    handshake.extend(body);
    let mut record = vec![
        0x16,
        0x03,
        0x01,
        (handshake.len() >> 8) as u8,
        handshake.len() as u8,
    ];
    record.extend(handshake);
    record
}

#[tokio::test]
async fn certificate_rotation_serves_new_cert_and_keeps_old_connections() {
    let dir = temp_dir("tls-rotate");
    let ca = Ca::generate("test CA", 30).expect("CA");
    let first = issue(&ca);
    write_dir(&first, &dir, false).expect("write certs");
    let server = start(&dir, &[]).await;
    let connector = tls_connector(&first.ca_cert_pem, &[&TLS13, &TLS12]);

    let old_stream = tls_connect(&connector, server.addr).await;
    assert_eq!(peer_cert(&old_stream), der_of(&first.cert_pem));
    let mut old = http1(old_stream).await;
    let (status, _) = send(&mut old, "/validate", fixture("pod-plain-create")).await;
    assert_eq!(status, StatusCode::OK);

    let second = issue(&ca);
    write_dir(&second, &dir, true).expect("rotate certs");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stream = tls_connect(&connector, server.addr).await;
        if peer_cert(&stream) == der_of(&second.cert_pem) {
            let mut fresh = http1(stream).await;
            let (status, review) = send(&mut fresh, "/validate", fixture("pod-plain-create")).await;
            assert_eq!(status, StatusCode::OK);
            assert!(allowed(&review));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "new certificate not served within 10s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The connection opened before the rotation still works.
    let (status, review) = send(&mut old, "/validate", fixture("pod-privileged-create")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(!allowed(&review));

    // A key that does not match the certificate is rejected and counted;
    // the second certificate keeps serving.
    let third = issue(&ca);
    std::fs::write(dir.join("tls.key"), &third.key_pem).expect("write mismatched key");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, metrics) = ops_get(server.metrics_addr, "/metrics").await;
        if metrics.contains(r#"mapguard_tls_reloads_total{result="failure"} 1"#) {
            assert!(
                metrics.contains(r#"mapguard_tls_reloads_total{result="success"} 1"#),
                "{metrics}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "failed reload not counted: {metrics}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stream = tls_connect(&connector, server.addr).await;
    assert_eq!(
        peer_cert(&stream),
        der_of(&second.cert_pem),
        "last good certificate keeps serving"
    );

    server.shutdown().await;
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

#[tokio::test]
async fn http2_clients_are_served_via_alpn() {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let dir = temp_dir("tls-h2");
    let ca = Ca::generate("test CA", 30).expect("CA");
    let certs = issue(&ca);
    write_dir(&certs, &dir, false).expect("write certs");
    let server = start(&dir, &[]).await;

    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(certs.ca_cert_pem.as_bytes()).expect("CA PEM"))
        .expect("trust anchor");
    let mut config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let stream = tls_connect(&connector, server.addr).await;
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .expect("HTTP/2 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let request = axum::http::Request::post("https://localhost/validate")
        .header("content-type", "application/json")
        .body(axum::body::Body::from(fixture("pod-privileged-create")))
        .expect("request");
    let response = sender.send_request(request).await.expect("HTTP/2 request");
    assert_eq!(response.version(), axum::http::Version::HTTP_2);
    let bytes = axum::body::to_bytes(axum::body::Body::new(response.into_body()), 1 << 20)
        .await
        .expect("body");
    let review: serde_json::Value = serde_json::from_slice(&bytes).expect("JSON");
    assert!(!allowed(&review), "{review}");
    server.shutdown().await;
    std::fs::remove_dir_all(&dir).expect("cleanup");
}
