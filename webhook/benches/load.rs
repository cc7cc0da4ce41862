//! `make bench-webhook`: sustained HTTPS load against the real server on
//! 127.0.0.1, default policies vs an allow-all policy set, in the same run.
//!
//! Run with:
//! ```text
//! cargo bench -p mapguard-webhook --bench load
//! MAPGUARD_BENCH_SECS=10 MAPGUARD_BENCH_RATE=500 MAPGUARD_BENCH_CONNECTIONS=16 \
//!     MAPGUARD_BENCH_STRICT=1 cargo bench -p mapguard-webhook --bench load
//! ```
//!
//! For each policy set it measures:
//! * open loop: requests scheduled at a fixed rate (default 500/s) for
//!   `MAPGUARD_BENCH_SECS` (default 10) over keep-alive TLS 1.3 connections;
//!   latency counts from the scheduled send time, so queueing is included;
//! * closed loop: `MAPGUARD_BENCH_CONNECTIONS` (default 16) connections each
//!   sending back-to-back for the same duration: maximum throughput;
//! * policy evaluation alone (`PolicySet::evaluate` on the Pod fixture);
//! * hostile input: the `mapguard-webhook` binary spawned, eight parallel
//!   3 MiB AdmissionReviews whose Pod object holds an array of empty
//!   objects, and the process' peak resident set (`VmHWM`) against the
//!   Deployment's 256 MiB memory limit.
//!
//! The server runs on its own 2-thread runtime, the client on another.
//! With `MAPGUARD_BENCH_STRICT=1` a missed target exits with status 1.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, header};
use clap::Parser;
use hyper::client::conn::http1::SendRequest;
use mapguard_certs_gen::{CertRequest, generate, write_dir};
use mapguard_policy::{EngineConfig, NamespaceData, PolicySet, Review};
use mapguard_webhook::config::Config;
use mapguard_webhook::startup::{Running, Webhook};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::TlsConnector;

const ALLOW_ALL: &str = r#"package mapguard.allow_all

deny contains msg if {
	input.request.object.metadata.name == "never-matches-anything"
	msg := "never"
}
"#;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/admission")
}

struct Stats {
    sorted: Vec<Duration>,
}

impl Stats {
    fn new(mut samples: Vec<Duration>) -> Self {
        samples.sort();
        Self { sorted: samples }
    }
    fn pct(&self, p: f64) -> Duration {
        if self.sorted.is_empty() {
            return Duration::ZERO;
        }
        let idx = ((self.sorted.len() as f64 - 1.0) * p).round() as usize;
        self.sorted[idx]
    }
    fn max(&self) -> Duration {
        self.sorted.last().copied().unwrap_or_default()
    }
}

struct Figures {
    open: Stats,
    open_errors: usize,
    open_sent: usize,
    open_lag: Duration,
    closed_rps: f64,
    closed: Stats,
    eval: Stats,
}

fn connector(ca_pem: &str) -> TlsConnector {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.expect("CA PEM")).expect("trust anchor");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .expect("TLS 1.3")
    .with_root_certificates(roots)
    .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

async fn connect(tls: &TlsConnector, addr: std::net::SocketAddr) -> SendRequest<Body> {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.set_nodelay(true).expect("nodelay");
    let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
    let stream = tls.connect(name, tcp).await.expect("TLS handshake");
    let (sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .expect("HTTP/1.1 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender
}

/// One request; `true` if the answer was a 200 AdmissionReview.
async fn call(sender: &mut SendRequest<Body>, body: &bytes::Bytes) -> bool {
    if sender.ready().await.is_err() {
        return false;
    }
    let request = Request::post("/validate")
        .header(header::HOST, "localhost")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.clone()))
        .expect("request");
    match sender.send_request(request).await {
        Ok(response) => {
            let ok = response.status().is_success();
            let bytes = axum::body::to_bytes(Body::new(response.into_body()), 1 << 20).await;
            ok && bytes.is_ok_and(|b| b.starts_with(b"{"))
        }
        Err(_) => false,
    }
}

async fn open_loop(
    tls: &TlsConnector,
    addr: std::net::SocketAddr,
    body: bytes::Bytes,
    rate: u64,
    secs: u64,
    conns: usize,
) -> (Stats, usize, usize, Duration) {
    let total = (rate * secs) as usize;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(Duration, bool)>();
    let mut lanes = Vec::new();
    for _ in 0..conns {
        let (tx, mut rx) = mpsc::unbounded_channel::<Instant>();
        let mut sender = connect(tls, addr).await;
        let body = body.clone();
        let done = done_tx.clone();
        tokio::spawn(async move {
            while let Some(scheduled) = rx.recv().await {
                let ok = call(&mut sender, &body).await;
                let _ = done.send((scheduled.elapsed(), ok));
            }
        });
        lanes.push(tx);
    }
    drop(done_tx);
    let start = Instant::now() + Duration::from_millis(20);
    let mut max_lag = Duration::ZERO;
    for i in 0..total {
        let at = start + interval * i as u32;
        tokio::time::sleep_until(at.into()).await;
        // Latency counts from the actual send: queueing behind a busy
        // connection is included, the timer's wake-up lag is not (tokio's
        // timer has millisecond resolution); the lag is reported apart.
        let now = Instant::now();
        max_lag = max_lag.max(now - at);
        let _ = lanes[i % conns].send(now);
    }
    drop(lanes);
    let mut samples = Vec::with_capacity(total);
    let mut errors = 0;
    while let Some((latency, ok)) = done_rx.recv().await {
        samples.push(latency);
        errors += usize::from(!ok);
    }
    (Stats::new(samples), errors, total, max_lag)
}

async fn closed_loop(
    tls: &TlsConnector,
    addr: std::net::SocketAddr,
    body: bytes::Bytes,
    secs: u64,
    conns: usize,
) -> (f64, Stats) {
    let mut senders = Vec::new();
    for _ in 0..conns {
        senders.push(connect(tls, addr).await);
    }
    let start = Instant::now();
    let end = start + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for mut sender in senders {
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            while Instant::now() < end {
                let t = Instant::now();
                if call(&mut sender, &body).await {
                    samples.push(t.elapsed());
                }
            }
            samples
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.expect("client task"));
    }
    let rps = all.len() as f64 / start.elapsed().as_secs_f64();
    (rps, Stats::new(all))
}

fn eval_stats(set: &PolicySet, review: &Review, namespaces: &NamespaceData) -> Stats {
    for _ in 0..200 {
        set.evaluate(review, namespaces).expect("evaluates");
    }
    let samples = (0..3000)
        .map(|_| {
            let t = Instant::now();
            let decision = set.evaluate(review, namespaces).expect("evaluates");
            std::hint::black_box(decision);
            t.elapsed()
        })
        .collect();
    Stats::new(samples)
}

fn start_server(
    server_rt: &tokio::runtime::Runtime,
    certs: &Path,
    policies: Option<&Path>,
) -> Running {
    let mut args = vec![
        "mapguard-webhook".to_owned(),
        "--listen=127.0.0.1:0".to_owned(),
        "--metrics-listen=127.0.0.1:0".to_owned(),
        format!("--tls-cert={}", certs.join("tls.crt").display()),
        format!("--tls-key={}", certs.join("tls.key").display()),
        format!(
            "--namespaces-file={}",
            data_dir().join("namespaces.yaml").display()
        ),
    ];
    if let Some(dir) = policies {
        args.push(format!("--policies={}", dir.display()));
    }
    let config = Config::try_parse_from(args).expect("config");
    server_rt.block_on(async {
        Webhook::build(&config)
            .await
            .expect("webhook builds")
            .start(&config)
            .await
            .expect("webhook starts")
    })
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

fn us(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}x", a / b)
    } else {
        "-".into()
    }
}

/// The hostile-input phase: the binary spawned with the certificates in
/// `cert_dir`, eight 3 MiB reviews of empty objects at once; returns the
/// process' idle and peak RSS in KiB and how many requests got an answer.
fn hostile_input_peak(
    rt: &tokio::runtime::Runtime,
    tls: &TlsConnector,
    cert_dir: &Path,
) -> (u64, u64, usize) {
    const BODY: usize = 3 * 1024 * 1024;
    let free_port = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
    };
    let (addr, metrics_addr) = (free_port(), free_port());
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_mapguard-webhook"))
        .arg(format!("--listen={addr}"))
        .arg(format!("--metrics-listen={metrics_addr}"))
        .arg(format!("--tls-cert={}", cert_dir.join("tls.crt").display()))
        .arg(format!("--tls-key={}", cert_dir.join("tls.key").display()))
        .arg(format!(
            "--namespaces-file={}",
            data_dir().join("namespaces.yaml").display()
        ))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start mapguard-webhook");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "mapguard-webhook not listening");
        std::thread::sleep(Duration::from_millis(50));
    }
    let status_kib = |field: &str| -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", child.id()))
            .expect("/proc/PID/status")
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("a status field")
    };
    let idle = status_kib("VmRSS");
    let mut review: Value = serde_json::from_slice(
        &std::fs::read(data_dir().join("pod-plain-create.json")).expect("fixture"),
    )
    .expect("fixture JSON");
    review["request"]["object"] = Value::from("@object@");
    let envelope = serde_json::to_string(&review).expect("serialize");
    let room = BODY - envelope.len() - 32;
    let object = format!("{{\"spec\":{{\"x\":[{{}}{}]}}}}", ",{}".repeat(room / 3));
    let body = bytes::Bytes::from(envelope.replacen("\"@object@\"", &object, 1));
    let answered = rt.block_on(async {
        let calls: Vec<_> = (0..8)
            .map(|_| {
                let (tls, body) = (tls.clone(), body.clone());
                tokio::spawn(async move {
                    let mut sender = connect(&tls, addr).await;
                    call(&mut sender, &body).await
                })
            })
            .collect();
        let mut answered = 0;
        for call in calls {
            answered += usize::from(call.await.unwrap_or(false));
        }
        answered
    });
    let peak = status_kib("VmHWM");
    let _ = child.kill();
    let _ = child.wait();
    (idle, peak, answered)
}

fn main() {
    let secs = env_u64("MAPGUARD_BENCH_SECS", 10).clamp(1, 120);
    let rate = env_u64("MAPGUARD_BENCH_RATE", 500).clamp(1, 20_000);
    let conns = env_u64("MAPGUARD_BENCH_CONNECTIONS", 16).clamp(1, 256) as usize;
    let strict = std::env::var("MAPGUARD_BENCH_STRICT").is_ok_and(|v| v == "1");

    let base = std::env::temp_dir().join(format!("mapguard-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let certs = generate(&CertRequest::new("mapguard-webhook", "mapguard-system")).expect("certs");
    write_dir(&certs, &base.join("certs"), false).expect("write certs");
    let allow_dir = base.join("allow-all");
    std::fs::create_dir_all(&allow_dir).expect("mkdir");
    std::fs::write(allow_dir.join("allow_all.rego"), ALLOW_ALL).expect("write policy");

    let body = bytes::Bytes::from(
        std::fs::read(data_dir().join("pod-plain-create.json")).expect("fixture"),
    );
    let review = Review::parse(&body).expect("fixture review");
    let namespaces =
        NamespaceData::from_file(&data_dir().join("namespaces.yaml")).expect("namespaces");

    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("server")
        .enable_all()
        .build()
        .expect("server runtime");
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("client")
        .enable_all()
        .build()
        .expect("client runtime");
    let tls = connector(&certs.ca_cert_pem);

    // With a time limit, as the webhook evaluates (its value does not
    // change the cost of the engine's timer).
    let engine = EngineConfig {
        eval_timeout: Some(Duration::from_secs(2)),
        ..EngineConfig::default()
    };
    let sets: [(&str, Option<&Path>, PolicySet); 2] = [
        ("default", None, PolicySet::embedded(&engine)),
        (
            "allow-all",
            Some(allow_dir.as_path()),
            PolicySet::load_dir(&allow_dir, &engine).expect("allow-all compiles"),
        ),
    ];
    println!(
        "mapguard webhook load: HTTPS (TLS 1.3, HTTP/1.1 keep-alive) on 127.0.0.1, Pod fixture pod-plain-create, \
         {secs}s per phase, open loop {rate} req/s over {conns} connections, closed loop {conns} connections"
    );
    let mut results = Vec::new();
    for (name, dir, set) in &sets {
        let server = start_server(&server_rt, &base.join("certs"), *dir);
        let addr = server.addr;
        let figures = client_rt.block_on(async {
            // Warm-up: connections, thread-local engines, allocator.
            let _ = closed_loop(&tls, addr, body.clone(), 1, conns).await;
            let (open, open_errors, open_sent, open_lag) =
                open_loop(&tls, addr, body.clone(), rate, secs, conns).await;
            let (closed_rps, closed) = closed_loop(&tls, addr, body.clone(), secs, conns).await;
            Figures {
                open,
                open_errors,
                open_sent,
                open_lag,
                closed_rps,
                closed,
                eval: Stats::new(Vec::new()),
            }
        });
        let figures = Figures {
            eval: eval_stats(set, &review, &namespaces),
            ..figures
        };
        server_rt.block_on(server.shutdown());
        eprintln!("  {name}: done");
        results.push((*name, figures));
    }
    let (idle_kib, peak_kib, answered) = hostile_input_peak(&client_rt, &tls, &base.join("certs"));
    eprintln!("  hostile input: done");
    let (d, a) = (&results[0].1, &results[1].1);
    println!();
    println!(
        "{:<38} {:>14} {:>14} {:>10}",
        "metric", "default", "allow-all", "ratio"
    );
    let row = |label: &str, x: Duration, y: Duration, fmt: fn(Duration) -> String| {
        println!(
            "{:<38} {:>14} {:>14} {:>10}",
            label,
            fmt(x),
            fmt(y),
            ratio(x.as_secs_f64(), y.as_secs_f64())
        );
    };
    row(
        &format!("open loop {rate}/s p50"),
        d.open.pct(0.5),
        a.open.pct(0.5),
        ms,
    );
    row(
        &format!("open loop {rate}/s p99"),
        d.open.pct(0.99),
        a.open.pct(0.99),
        ms,
    );
    row(
        &format!("open loop {rate}/s p99.9"),
        d.open.pct(0.999),
        a.open.pct(0.999),
        ms,
    );
    row(
        &format!("open loop {rate}/s max"),
        d.open.max(),
        a.open.max(),
        ms,
    );
    println!(
        "{:<38} {:>14} {:>14}",
        "open loop sent / errors",
        format!("{}/{}", d.open_sent, d.open_errors),
        format!("{}/{}", a.open_sent, a.open_errors)
    );
    row("open loop max scheduler lag", d.open_lag, a.open_lag, ms);
    println!(
        "{:<38} {:>14.0} {:>14.0} {:>10}",
        format!("closed loop throughput ({conns} conns) req/s"),
        d.closed_rps,
        a.closed_rps,
        ratio(d.closed_rps, a.closed_rps)
    );
    row("closed loop p50", d.closed.pct(0.5), a.closed.pct(0.5), ms);
    row(
        "closed loop p99",
        d.closed.pct(0.99),
        a.closed.pct(0.99),
        ms,
    );
    row(
        "policy evaluation p50 (Pod)",
        d.eval.pct(0.5),
        a.eval.pct(0.5),
        us,
    );
    row(
        "policy evaluation p99 (Pod)",
        d.eval.pct(0.99),
        a.eval.pct(0.99),
        us,
    );
    println!(
        "{:<38} {:>14}",
        "hostile input: RSS idle / peak",
        format!("{} / {} MiB", idle_kib / 1024, peak_kib / 1024)
    );
    println!(
        "  (8 parallel 3 MiB reviews of empty objects to the spawned binary; {answered}/8 answered)"
    );

    let checks = [
        (
            format!("default p99 at {rate} req/s < 5 ms"),
            d.open.pct(0.99) < Duration::from_millis(5),
        ),
        (
            "default throughput >= 2000 req/s".to_owned(),
            d.closed_rps >= 2000.0,
        ),
        (
            "default evaluation p50 < 100 µs per Pod".to_owned(),
            d.eval.pct(0.5) < Duration::from_micros(100),
        ),
        (
            "no failed requests".to_owned(),
            d.open_errors + a.open_errors == 0,
        ),
        (
            "hostile input: peak RSS <= 256 MiB, all answered".to_owned(),
            peak_kib <= 256 * 1024 && answered == 8,
        ),
    ];
    println!();
    let mut missed = false;
    for (label, ok) in &checks {
        println!("target {label:<44} {}", if *ok { "met" } else { "MISSED" });
        missed |= !ok;
    }
    let lag = d.open_lag.max(a.open_lag);
    if lag > Duration::from_millis(2) {
        println!(
            "note: the load generator itself woke up to {} late: the machine is busy \
             (other processes), so latency tails include CPU contention",
            ms(lag)
        );
    }
    let _ = std::fs::remove_dir_all(&base);
    if strict && missed {
        std::process::exit(1);
    }
}
