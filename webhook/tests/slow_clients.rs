//! Slow or silent clients are cut off by the handshake, header and body
//! timeouts instead of holding connections forever.

mod support;

use std::time::{Duration, Instant};

use mapguard_certs_gen::{CertRequest, generate, write_dir};
use mapguard_webhook::startup::Running;
use rustls::version::TLS13;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn start(name: &str) -> (Running, String, std::path::PathBuf) {
    let dir = temp_dir(name);
    let certs = generate(&CertRequest::new("wh", "ns")).expect("certs");
    write_dir(&certs, &dir, false).expect("write certs");
    let running = start_webhook(&dir, &["--client-timeout=300ms".to_owned()]).await;
    (running, certs.ca_cert_pem, dir)
}

/// Reads until EOF (or 5 s); returns what was read and how long it took.
async fn read_until_closed<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> (Vec<u8>, Duration) {
    let started = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => panic!("connection still open after 5 s"),
        }
    }
    (out, started.elapsed())
}

#[tokio::test]
async fn silent_tcp_client_is_dropped_after_the_handshake_timeout() {
    let (server, _, dir) = start("slow-handshake").await;
    let mut tcp = TcpStream::connect(server.addr).await.expect("connect");
    let (_, took) = read_until_closed(&mut tcp).await;
    assert!(took < Duration::from_secs(3), "closed after {took:?}");
    let (_, metrics) = ops_get(server.metrics_addr, "/metrics").await;
    assert!(
        metrics.contains("mapguard_tls_handshake_failures_total 1"),
        "{metrics}"
    );
    server.shutdown().await;
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

#[tokio::test]
async fn client_without_headers_is_dropped_after_the_header_timeout() {
    let (server, ca, dir) = start("slow-headers").await;
    let connector = tls_connector(&ca, &[&TLS13]);
    let mut tls = tls_connect(&connector, server.addr).await;
    tls.write_all(b"POST /validate HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .expect("partial head");
    let (answer, took) = read_until_closed(&mut tls).await;
    assert!(took < Duration::from_secs(3), "closed after {took:?}");
    let text = String::from_utf8_lossy(&answer);
    assert!(!text.contains("\"allowed\":true"), "never an allow: {text}");
    server.shutdown().await;
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

#[tokio::test]
async fn stalled_body_gets_an_error_not_an_allow() {
    let (server, ca, dir) = start("slow-body").await;
    let connector = tls_connector(&ca, &[&TLS13]);
    let mut tls = tls_connect(&connector, server.addr).await;
    let body = fixture("pod-plain-create");
    let head = format!(
        "POST /validate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    tls.write_all(head.as_bytes()).await.expect("head");
    tls.write_all(&body[..body.len() / 2])
        .await
        .expect("half the body");
    tls.flush().await.expect("flush");
    let (answer, took) = read_until_closed(&mut tls).await;
    assert!(took < Duration::from_secs(3), "answered after {took:?}");
    let text = String::from_utf8_lossy(&answer);
    assert!(
        text.starts_with("HTTP/1.1 400") || text.starts_with("HTTP/1.1 408"),
        "expected an error status: {text}"
    );
    assert!(
        text.contains("\"allowed\":false"),
        "review-shaped denial: {text}"
    );
    server.shutdown().await;
    std::fs::remove_dir_all(&dir).expect("cleanup");
}
