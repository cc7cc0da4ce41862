//! The node agent (`mapguard-agent daemon`) as a process of its own, for
//! the tests that run it against the real API server: its ops port over
//! plain HTTP, its event stream on its Unix socket, readiness and enforcement waits, and a stop that never
//! leaves it running (its probes would stay), also when a test panics.
//!
//! Include it with `#[path = "support/agent.rs"] mod agent;` next to
//! `mod support;`, `mod kube_cgroup;` and `mod pod_process;`.

#![allow(dead_code)]

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mapguard_testenv::TestEnv;
use serde_json::Value;

/// The `mapguard-agent` binary (`daemon`, `respond`).
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_mapguard-agent")
}

/// How long the agent may take to see a change.
const PATIENCE: Duration = Duration::from_secs(30);

/// A free port on 127.0.0.1.
pub fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    l.local_addr().expect("its address")
}

/// `GET path` over HTTP/1.0: status and body.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((status, body))
}

/// What each agent test on a node starts from: BPF and the kubepods
/// cgroups available, a real API server with the test's Node, and the
/// newest Go release the test programs are built with.
pub struct NodeTest {
    pub env: TestEnv,
    pub client: kube::Client,
    /// `go1.27`: a folder of the Go test programs.
    pub go: &'static str,
}

impl NodeTest {
    /// `None` after a loud skip where BPF, the kubepods cgroups or the
    /// API server's binaries are missing (each check says what it does
    /// under `CI=true`).
    pub async fn start(test: &str, node: &str) -> Option<NodeTest> {
        if !crate::support::require_bpf(test) || !crate::kube_cgroup::require(test) {
            return None;
        }
        let env = TestEnv::start_or_skip(test).await?;
        env.create_node(node).await.expect("create the Node");
        Some(NodeTest {
            client: env.client(),
            env,
            go: crate::support::versions()
                .last()
                .copied()
                .expect("a Go release"),
        })
    }
}

/// A running node agent.
pub struct Agent {
    child: Child,
    pub ops: SocketAddr,
    /// `--events-socket`: next to the events file.
    pub events_socket: PathBuf,
    /// `--events`: its JSON lines.
    events_file: PathBuf,
    log: PathBuf,
}

/// The agent's `/events` stream, read from its Unix socket.
pub struct EventStream {
    reader: BufReader<UnixStream>,
}

impl EventStream {
    /// The next line that contains `needle` (within the patience).
    pub fn line_with(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + PATIENCE;
        // A read that times out keeps what it read: a line is cleared only
        // once whole.
        let mut line = String::new();
        loop {
            match self.reader.read_line(&mut line) {
                Ok(0) => panic!("the event stream ended before a line with {needle}"),
                Ok(_) if line.contains(needle) => return line,
                Ok(_) => line.clear(),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => panic!("reading the event stream: {e}"),
            }
            assert!(
                Instant::now() < deadline,
                "no line with {needle} on the event stream"
            );
        }
    }
}

impl Agent {
    /// Starts the agent of `node` against the API server of `kubeconfig`,
    /// its reports to `events`, its log to `log`, with `flags` added.
    pub fn start(
        node: &str,
        kubeconfig: &Path,
        events: &Path,
        log: PathBuf,
        flags: &[&str],
    ) -> Agent {
        let ops = free_port();
        let events_socket = events.with_extension("sock");
        let child = Command::new(binary())
            .args(["daemon", "--node", node, "--scan-interval", "200ms"])
            .args(flags)
            .arg(format!("--kubeconfig={}", kubeconfig.display()))
            .arg(format!("--ops-listen={ops}"))
            .arg(format!("--events={}", events.display()))
            .arg(format!("--events-socket={}", events_socket.display()))
            .env("MAPGUARD_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("agent log"))
            .spawn()
            .expect("start mapguard-agent daemon");
        Agent {
            child,
            ops,
            events_socket,
            events_file: events.to_path_buf(),
            log,
        }
    }

    /// Subscribes to `/events` on the agent's Unix socket (HTTP/1.0: the
    /// body is the lines themselves, until the agent closes it).
    pub fn events(&self) -> EventStream {
        let mut stream = UnixStream::connect(&self.events_socket).unwrap_or_else(|e| {
            panic!(
                "connect to the events socket {}: {e}",
                self.events_socket.display()
            )
        });
        stream
            .set_read_timeout(Some(Duration::from_millis(500)))
            .expect("read timeout");
        write!(stream, "GET /events HTTP/1.0\r\nHost: agent\r\n\r\n").expect("request");
        let mut reader = BufReader::new(stream);
        let mut status = String::new();
        reader.read_line(&mut status).expect("status line");
        assert!(status.contains(" 200 "), "/events on the socket: {status}");
        loop {
            let mut header = String::new();
            reader.read_line(&mut header).expect("header");
            if header.trim().is_empty() {
                break;
            }
        }
        EventStream { reader }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for `racer` to end and checks that this agent killed it at
    /// its race: ended by a signal before the Go runtime printed its fatal
    /// error, and reported as `killed`. `what` names the racer in
    /// failures. Returns the report.
    pub async fn expect_killed(&self, racer: &mut Child, what: &str) -> Value {
        let pid = racer.id();
        let (status, stderr) = crate::pod_process::wait(racer, PATIENCE);
        assert_eq!(
            status,
            None,
            "{what} was not killed by mapguard: {stderr}\n{}",
            self.log()
        );
        assert!(
            !stderr.contains("fatal error: concurrent map"),
            "the Go runtime reported before mapguard acted ({what}): {stderr}"
        );
        let report = wait_violation(&self.events_file, pid).await;
        assert_eq!(report["action"], "killed", "{report}");
        report
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The body of `GET path` on the ops port.
    pub fn text(&self, path: &str) -> String {
        http_get(self.ops, path)
            .unwrap_or_else(|| panic!("{path} answers"))
            .1
    }

    /// The sum of the series of `/metrics` whose line starts with `name`.
    pub fn metric(&self, name: &str) -> f64 {
        self.text("/metrics")
            .lines()
            .filter(|l| l.starts_with(name) && !l.starts_with('#'))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Waits until the metric `name` is at least `at_least`.
    pub async fn wait_metric(&self, name: &str, at_least: f64) {
        let deadline = Instant::now() + PATIENCE;
        while self.metric(name) < at_least {
            assert!(
                Instant::now() < deadline,
                "{name} never reached {at_least}:\n{}\n{}",
                self.text("/metrics"),
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn wait_ready(&mut self) {
        self.wait_readiness(200, "ready").await;
    }

    pub async fn wait_unready(&mut self) {
        self.wait_readiness(503, "API server unreachable").await;
    }

    async fn wait_readiness(&mut self, want: u16, text: &str) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some((status, body)) = http_get(self.ops, "/readyz")
                && status == want
                && body.contains(text)
            {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("the agent exited ({status}):\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "/readyz never answered {want} ({text}):\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until at least `processes` processes are enforced.
    pub async fn wait_enforced_at_least(&self, processes: usize) {
        self.wait_enforced_until(processes, |n| n >= processes as f64)
            .await;
    }

    /// Waits until exactly `processes` processes are enforced.
    pub async fn wait_enforced(&self, processes: usize) {
        self.wait_enforced_until(processes, |n| n == processes as f64)
            .await;
    }

    async fn wait_enforced_until(&self, processes: usize, done: impl Fn(f64) -> bool) {
        let deadline = Instant::now() + PATIENCE;
        while !done(self.metric("mapguard_enforced_processes")) {
            assert!(
                Instant::now() < deadline,
                "the agent never enforced {processes} process(es):\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the agent with SIGTERM (bounded).
    pub fn stop(mut self) {
        self.terminate();
    }

    /// Kills the agent outright (SIGKILL): nothing of its own shutdown runs.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn terminate(&mut self) {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        // SAFETY: signals the test's own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.child.try_wait().expect("wait agent").is_none() {
            assert!(
                Instant::now() < deadline,
                "the agent did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A failing test must not leave its agent running (its probes would stay).
impl Drop for Agent {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        } else {
            self.terminate();
        }
    }
}

/// The violation reported for `pid` in the agent's events.
pub async fn wait_violation(events: &Path, pid: u32) -> Value {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let text = std::fs::read_to_string(events).unwrap_or_default();
        if let Some(v) = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["event"] == "violation" && v["pid"] == pid)
        {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "no violation reported for pid {pid}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
