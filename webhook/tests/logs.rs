//! The webhook binary's log, as an operator reads it from a file or a log
//! collector: no terminal colour codes, one line for many bad TLS
//! handshakes (each still counted), and the real cause when the namespace
//! watch on the API server fails.

mod support;

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mapguard_certs_gen::{CertRequest, generate, write_dir};
use mapguard_testenv::TestEnv;
use serde_json::Value;
use support::{namespaces_file, temp_dir};

/// How long the binary may take to log what a test waits for.
const WAIT: Duration = Duration::from_secs(20);

/// `mapguard-webhook` started with its stderr written to a file.
struct Binary {
    child: Child,
    log: PathBuf,
}

impl Binary {
    fn start(dir: &Path, args: &[String]) -> Binary {
        let certs = dir.join("certs");
        if !certs.exists() {
            let generated = generate(&CertRequest::new("mapguard-webhook", "mapguard-system"))
                .expect("generate certificates");
            write_dir(&generated, &certs, false).expect("write certificates");
        }
        let log = dir.join(format!("webhook-{}.log", args.len()));
        let file = std::fs::File::create(&log).expect("create the log file");
        let child = Command::new(env!("CARGO_BIN_EXE_mapguard-webhook"))
            .args([
                "--listen=127.0.0.1:0",
                "--metrics-listen=127.0.0.1:0",
                &format!("--tls-cert={}", certs.join("tls.crt").display()),
                &format!("--tls-key={}", certs.join("tls.key").display()),
            ])
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("start mapguard-webhook");
        Binary { child, log }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).expect("read the log file")
    }

    /// Waits until the log holds a line containing `needle`; returns the log.
    fn wait_for(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let text = self.log_text();
            if text.contains(needle) {
                return text;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("mapguard-webhook exited ({status}) before logging {needle:?}:\n{text}");
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in the log within {WAIT:?}:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// JSON log lines (`--log-format=json`).
    fn json_lines(&self) -> Vec<Value> {
        self.log_text()
            .lines()
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("log line {l:?} is not JSON: {e}"))
            })
            .collect()
    }

    /// The addresses of the `serving` line (JSON logs).
    fn addresses(&mut self) -> (SocketAddr, SocketAddr) {
        self.wait_for("\"serving\"");
        let line = self
            .json_lines()
            .into_iter()
            .find(|l| l["message"] == "serving")
            .expect("a serving line");
        let addr = |field: &str| {
            line[field]
                .as_str()
                .and_then(|a| a.parse().ok())
                .unwrap_or_else(|| panic!("no {field} in {line}"))
        };
        (addr("addr"), addr("metrics_addr"))
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn text_logs_written_to_a_file_carry_no_colour_codes() {
    let dir = temp_dir("logs-ansi");
    let mut webhook = Binary::start(
        &dir,
        &[format!("--namespaces-file={}", namespaces_file().display())],
    );
    let text = webhook.wait_for("serving");
    assert!(
        !text.contains('\x1b'),
        "ANSI escape codes in a log file:\n{}",
        text.escape_debug()
    );
    assert!(text.contains(" INFO "), "{text}");
    drop(webhook);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A ClientHello naming an IP address as SNI (RFC 6066 forbids it; some
/// clients and scanners do it): rustls logs a WARN for each one it parses.
fn client_hello_with_ip_sni() -> Vec<u8> {
    fn with_len16(body: &[u8]) -> Vec<u8> {
        let mut out = u16::try_from(body.len())
            .expect("short")
            .to_be_bytes()
            .to_vec();
        out.extend_from_slice(body);
        out
    }
    fn extension(kind: u16, body: &[u8]) -> Vec<u8> {
        let mut out = kind.to_be_bytes().to_vec();
        out.extend(with_len16(body));
        out
    }
    let name = b"127.0.0.1";
    let mut sni = vec![0u8]; // host_name
    sni.extend(with_len16(name));
    let mut key_share = vec![0x00, 0x1d]; // x25519
    let mut base_point = [0u8; 32];
    base_point[0] = 9;
    key_share.extend(with_len16(&base_point));
    let mut extensions = Vec::new();
    extensions.extend(extension(0x0000, &with_len16(&sni)));
    extensions.extend(extension(0x002b, &[2, 0x03, 0x04])); // TLS 1.3
    extensions.extend(extension(0x000a, &with_len16(&[0x00, 0x1d])));
    extensions.extend(extension(0x000d, &with_len16(&[0x04, 0x03, 0x08, 0x04])));
    extensions.extend(extension(0x0033, &with_len16(&key_share)));
    let mut hello = vec![0x03, 0x03];
    hello.extend([7u8; 32]); // random
    hello.push(0); // no session id
    hello.extend(with_len16(&[0x13, 0x01])); // TLS_AES_128_GCM_SHA256
    hello.extend([1, 0]); // null compression
    hello.extend(with_len16(&extensions));
    let mut handshake = vec![1u8]; // client_hello
    let len = u32::try_from(hello.len()).expect("short").to_be_bytes();
    handshake.extend(&len[1..]);
    handshake.extend(hello);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend(with_len16(&handshake));
    record
}

/// Sends a ClientHello with an IP address as SNI and hangs up.
fn bad_sni_handshake(addr: SocketAddr) {
    let mut tcp = TcpStream::connect(addr).expect("connect");
    tcp.write_all(&client_hello_with_ip_sni())
        .expect("send ClientHello");
    tcp.set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    let mut buf = [0u8; 4096];
    let _ = tcp.read(&mut buf); // the server's answer, or its alert
}

/// A client that trusts no CA: it refuses the server's certificate.
fn untrusting_handshake(addr: SocketAddr) {
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth();
    let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).expect("client");
    let mut tcp = TcpStream::connect(addr).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let error = conn
        .complete_io(&mut tcp)
        .expect_err("an untrusted certificate must fail the handshake");
    assert!(
        error.to_string().contains("UnknownIssuer"),
        "unexpected client error: {error}"
    );
}

fn metric(addr: SocketAddr, series: &str) -> f64 {
    let mut tcp = TcpStream::connect(addr).expect("connect to the metrics port");
    tcp.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .expect("send");
    let mut text = String::new();
    tcp.read_to_string(&mut text).expect("read /metrics");
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in {text}"))
}

#[test]
fn many_bad_handshakes_make_one_warning_and_are_all_counted() {
    const EACH: usize = 50;
    let dir = temp_dir("logs-handshakes");
    let mut webhook = Binary::start(
        &dir,
        &[
            format!("--namespaces-file={}", namespaces_file().display()),
            "--log-format=json".to_owned(),
        ],
    );
    let (addr, metrics_addr) = webhook.addresses();
    for _ in 0..EACH {
        bad_sni_handshake(addr);
        untrusting_handshake(addr);
    }
    let series = "mapguard_tls_handshake_failures_total";
    let deadline = Instant::now() + WAIT;
    while metric(metrics_addr, series) < (2 * EACH) as f64 {
        assert!(
            Instant::now() < deadline,
            "{series} = {} after {} bad handshakes",
            metric(metrics_addr, series),
            2 * EACH
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(metric(metrics_addr, series), (2 * EACH) as f64);

    let lines = webhook.json_lines();
    let warnings: Vec<&Value> = lines.iter().filter(|l| l["level"] == "WARN").collect();
    assert!(
        warnings.len() <= 2,
        "{} WARN lines for {} bad handshakes: {warnings:#?}",
        warnings.len(),
        2 * EACH
    );
    let from_rustls: Vec<&Value> = lines
        .iter()
        .filter(|l| {
            l["target"]
                .as_str()
                .is_some_and(|t| t.starts_with("rustls"))
        })
        .collect();
    assert!(from_rustls.is_empty(), "rustls lines: {from_rustls:#?}");
    assert!(
        warnings.iter().any(|w| w
            .to_string()
            .contains("mapguard_tls_handshake_failures_total")),
        "one line says where the rest are counted: {warnings:#?}"
    );
    drop(webhook);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The namespace watch through a kubeconfig that does not trust the API
/// server's certificate: the log line names the TLS cause, not only
/// `client error (Connect)`, and the failures are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_namespace_watch_logs_its_tls_cause() {
    let test = "a_failing_namespace_watch_logs_its_tls_cause";
    let Some(env) = TestEnv::start_or_skip(test).await else {
        return;
    };
    let dir = temp_dir("logs-watch");
    let other_ca = generate(&CertRequest::new("x", "y")).expect("another CA");
    let text = std::fs::read_to_string(env.kubeconfig()).expect("read the kubeconfig");
    let mut kubeconfig: yaml_serde::Value = yaml_serde::from_str(&text).expect("kubeconfig YAML");
    use base64::Engine as _;
    let untrusted = base64::engine::general_purpose::STANDARD.encode(&other_ca.ca_cert_pem);
    kubeconfig["clusters"][0]["cluster"]["certificate-authority-data"] =
        yaml_serde::Value::String(untrusted);
    let path = dir.join("untrusting-kubeconfig");
    std::fs::write(&path, yaml_serde::to_string(&kubeconfig).expect("YAML")).expect("write");

    let mut webhook = Binary::start(
        &dir,
        &[
            format!("--kubeconfig={}", path.display()),
            "--log-format=json".to_owned(),
        ],
    );
    let (_, metrics_addr) = webhook.addresses();
    webhook.wait_for("namespace watch failed");
    let line = webhook
        .json_lines()
        .into_iter()
        .find(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("namespace watch failed"))
        })
        .expect("the failure line");
    let error = line["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("invalid peer certificate") && error.contains("UnknownIssuer"),
        "the TLS cause is missing from the logged error: {line}"
    );
    assert!(
        metric(
            metrics_addr,
            r#"mapguard_namespace_reloads_total{result="failure"}"#
        ) >= 1.0,
        "failures are counted"
    );
    drop(webhook);
    drop(env);
    let _ = std::fs::remove_dir_all(&dir);
}
