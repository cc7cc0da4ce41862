//! The Go services the benchmark drives: where `.ci/install-bench.sh` put
//! them, how one is started on 127.0.0.1 (directly or under
//! `mapguard-enforcer exec`), when it is ready, what load it gets, a check
//! after the load that it did the work, and how it is stopped.

use std::ffi::OsString;
use std::fs::File;
use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::wrk::Load;

/// What Caddy answers every request with.
const CADDY_BODY: &str = "mapguard benchmark: a fixed response from Caddy\n";
/// base64 of `mapguard-bench/` and of `mapguard-bench0`: the range holding
/// every key `tests/bench/etcd.lua` writes (`mapguard-bench/%08d`).
const ETCD_KEYS_FROM: &str = "bWFwZ3VhcmQtYmVuY2gv";
const ETCD_KEYS_TO: &str = "bWFwZ3VhcmQtYmVuY2gw";
/// How long a service may take to answer its readiness request, and to
/// exit after SIGTERM.
const START_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Etcd,
    Caddy,
}

/// A service of `tests/bench/<name>/go.mod`.
pub struct Service {
    pub name: &'static str,
    /// The module whose required version names the install folder.
    module: &'static str,
    binary: &'static str,
    kind: Kind,
}

pub const SERVICES: &[Service] = &[
    Service {
        name: "etcd",
        module: "go.etcd.io/etcd/server/v3",
        binary: "etcd",
        kind: Kind::Etcd,
    },
    Service {
        name: "caddy",
        module: "github.com/caddyserver/caddy/v2",
        binary: "caddy",
        kind: Kind::Caddy,
    },
];

/// A service's binaries as `.ci/install-bench.sh` installed them.
pub struct Installed {
    pub version: String,
    pub plain: PathBuf,
    pub race: PathBuf,
}

/// The Go toolchain recorded in a binary's build info (`go1.26.8`).
pub fn go_version(binary: &Path) -> Result<String> {
    use mapguard_enforcer::binary::goelf::version::{find_buildinfo, read_version};
    let data = std::fs::read(binary).with_context(|| format!("read {}", binary.display()))?;
    let blob = find_buildinfo(None, &data)
        .with_context(|| format!("{}: no Go build info", binary.display()))?;
    read_version(blob, |_, _| None).with_context(|| format!("{}", binary.display()))
}

impl Service {
    /// The version `tests/bench/<name>/go.mod` requires and the binaries
    /// built from it under `root`.
    pub fn installed(&self, workspace: &Path, root: &Path) -> Result<Installed> {
        let go_mod = workspace.join("tests/bench").join(self.name).join("go.mod");
        let text = std::fs::read_to_string(&go_mod)
            .with_context(|| format!("read {}", go_mod.display()))?;
        let version = text
            .lines()
            .map(|l| l.trim().trim_start_matches("require").split_whitespace())
            .find_map(|mut words| {
                (words.next() == Some(self.module))
                    .then(|| words.next())
                    .flatten()
                    .and_then(|v| v.strip_prefix('v'))
            })
            .with_context(|| format!("{}: no requirement of {}", go_mod.display(), self.module))?
            .to_string();
        let bin = root.join(format!("{}-{version}", self.name)).join("bin");
        let installed = Installed {
            plain: bin.join(self.binary),
            race: bin.join(format!("{}-race", self.binary)),
            version,
        };
        for path in [&installed.plain, &installed.race] {
            if !path.exists() {
                bail!(
                    "{} is missing: install the benchmark's services with `make bench-deps` (.ci/install-bench.sh)",
                    path.display()
                );
            }
        }
        Ok(installed)
    }

    /// The load at a fixed offered rate: the same requests, each connection
    /// waiting `interval_ms` on average before each (`tests/bench/pace.lua`).
    pub fn paced_load(
        &self,
        workspace: &Path,
        port: u16,
        etcd_keys: u32,
        interval_ms: f64,
    ) -> Load {
        let mut load = self.load(workspace, port, etcd_keys);
        if load.script.is_none() {
            load.script = Some(workspace.join("tests/bench/get.lua"));
        }
        load.script_args.push(format!("{interval_ms:.3}"));
        load
    }

    /// The load `wrk` sends to a service listening on `port`.
    pub fn load(&self, workspace: &Path, port: u16, etcd_keys: u32) -> Load {
        match self.kind {
            Kind::Etcd => Load {
                url: format!("http://127.0.0.1:{port}"),
                script: Some(workspace.join("tests/bench/etcd.lua")),
                script_args: vec![etcd_keys.to_string()],
            },
            Kind::Caddy => Load {
                url: format!("http://127.0.0.1:{port}/"),
                script: None,
                script_args: Vec::new(),
            },
        }
    }

    fn args(&self, ports: (u16, u16), scratch: &Path) -> Vec<OsString> {
        let (port, peer) = ports;
        let client = format!("http://127.0.0.1:{port}");
        let peer = format!("http://127.0.0.1:{peer}");
        let args: Vec<OsString> = match self.kind {
            // A single-member cluster with a fresh data folder each run.
            Kind::Etcd => vec![
                "--name".into(),
                "bench".into(),
                "--data-dir".into(),
                scratch.join("data").into(),
                "--listen-client-urls".into(),
                client.clone().into(),
                "--advertise-client-urls".into(),
                client.into(),
                "--listen-peer-urls".into(),
                peer.clone().into(),
                "--initial-advertise-peer-urls".into(),
                peer.clone().into(),
                "--initial-cluster".into(),
                format!("bench={peer}").into(),
                "--log-level".into(),
                "error".into(),
            ],
            // `caddy respond`: an HTTP server with one fixed response, its
            // admin endpoint off.
            Kind::Caddy => vec![
                "respond".into(),
                "--listen".into(),
                format!("127.0.0.1:{port}").into(),
                "--body".into(),
                CADDY_BODY.into(),
            ],
        };
        args
    }

    /// Whether the service on `port` answers as it should.
    fn ready(&self, port: u16) -> bool {
        match self.kind {
            Kind::Etcd => http(port, "GET", "/health", "")
                .is_ok_and(|(status, body)| status == 200 && body.contains(r#""health":"true""#)),
            Kind::Caddy => http(port, "GET", "/", "")
                .is_ok_and(|(status, body)| status == 200 && body == CADDY_BODY),
        }
    }

    /// After a load: evidence that the service did the work, as one phrase.
    pub fn check(&self, port: u16) -> Result<String> {
        match self.kind {
            Kind::Etcd => {
                let query = format!(
                    r#"{{"key":"{ETCD_KEYS_FROM}","range_end":"{ETCD_KEYS_TO}","count_only":true}}"#
                );
                let (status, body) = http(port, "POST", "/v3/kv/range", &query)?;
                let v: serde_json::Value = serde_json::from_str(&body)
                    .with_context(|| format!("range answer {body:?}"))?;
                let count: u64 = v["count"]
                    .as_str()
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(0);
                let revision = v["header"]["revision"].as_str().unwrap_or("?");
                if status != 200 || count == 0 {
                    bail!("etcd holds no benchmark key after the load: {status} {body}");
                }
                Ok(format!("{count} keys, revision {revision}"))
            }
            Kind::Caddy => {
                if !self.ready(port) {
                    bail!("caddy does not answer with its fixed response after the load");
                }
                Ok("fixed response intact".into())
            }
        }
    }
}

/// One started service: the process (the service itself or the enforcer
/// running it), in a process group of its own, with its output in files.
pub struct Instance {
    child: Option<Child>,
    /// The service's own binary (the child is the enforcer when enforced).
    binary: PathBuf,
    enforced: bool,
    pub port: u16,
    pub scratch: PathBuf,
}

impl Instance {
    /// Starts `service` from `binary`, under `mapguard-enforcer exec ARGS
    /// --events scratch/events.jsonl --` when `enforcer` is given, and waits
    /// until it is ready.
    pub fn start(
        service: &Service,
        binary: &Path,
        enforcer: Option<&[String]>,
        scratch: PathBuf,
    ) -> Result<Instance> {
        std::fs::create_dir_all(&scratch)?;
        let ports = (free_port()?, free_port()?);
        let mut cmd = match enforcer {
            None => Command::new(binary),
            Some(args) => {
                let mut c = Command::new(env!("CARGO_BIN_EXE_mapguard-enforcer"));
                // Every exec flag also reads a MAPGUARD_* variable: none
                // leaks in from the benchmark's environment.
                for (key, _) in std::env::vars_os() {
                    if key.to_string_lossy().starts_with("MAPGUARD_") {
                        c.env_remove(key);
                    }
                }
                c.arg("exec")
                    .args(args)
                    .arg("--events")
                    .arg(scratch.join("events.jsonl"))
                    .arg("--")
                    .arg(binary);
                c.env("MAPGUARD_LOG", "warn");
                c
            }
        };
        cmd.args(service.args(ports, &scratch))
            // Caddy keeps its state under the user's data folder.
            .env("HOME", &scratch)
            .env("XDG_DATA_HOME", scratch.join("data"))
            .env("XDG_CONFIG_HOME", scratch.join("config"))
            .stdin(Stdio::null())
            .stdout(File::create(scratch.join("stdout"))?)
            .stderr(File::create(scratch.join("stderr"))?)
            .process_group(0);
        let child = cmd
            .spawn()
            .with_context(|| format!("start {}", binary.display()))?;
        let mut instance = Instance {
            child: Some(child),
            binary: binary.to_path_buf(),
            enforced: enforcer.is_some(),
            port: ports.0,
            scratch,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        while !service.ready(instance.port) {
            if let Some(status) = instance.child_mut().try_wait()? {
                bail!(
                    "exited before {} was ready ({status}): {}",
                    service.name,
                    instance.stderr_tail()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "{} not ready after {START_TIMEOUT:?}: {}",
                    service.name,
                    instance.stderr_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(instance)
    }

    /// The service's process: the child, or under the enforcer the
    /// enforcer's child running the service's binary.
    pub fn service_pid(&self) -> Result<u32> {
        let child = self.child.as_ref().expect("the instance is running").id();
        if !self.enforced {
            return Ok(child);
        }
        let binary = self.binary.canonicalize()?;
        super::support::children_of(child)
            .into_iter()
            .find(|pid| {
                std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| exe == binary)
            })
            .with_context(|| format!("no child of the enforcer runs {}", binary.display()))
    }

    /// The enforcer's process, when enforced.
    pub fn enforcer_pid(&self) -> Option<u32> {
        self.enforced
            .then(|| self.child.as_ref().expect("the instance is running").id())
    }

    fn child_mut(&mut self) -> &mut Child {
        self.child.as_mut().expect("the instance is running")
    }

    /// Sends SIGTERM (the enforcer forwards it to the service) and waits for
    /// the exit; a service that dies of anything else, or exits with an
    /// error, fails the run.
    pub fn stop(mut self) -> Result<()> {
        let pid = self.child_mut().id() as libc::pid_t;
        // SAFETY: kill has no memory preconditions; pid is our child's.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_TIMEOUT;
        let status = loop {
            if let Some(status) = self.child_mut().try_wait()? {
                break status;
            }
            if Instant::now() > deadline {
                bail!("did not exit within {STOP_TIMEOUT:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        self.child = None;
        if !stopped_cleanly(status) {
            bail!("exited with {status} after SIGTERM: {}", self.stderr_tail());
        }
        Ok(())
    }

    /// The last lines the process wrote to stderr.
    pub fn stderr_tail(&self) -> String {
        let text = std::fs::read_to_string(self.scratch.join("stderr")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Instance {
    /// A run that failed half-way leaves no process behind.
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: as in `stop`; the negative pid is the child's own group.
            unsafe { libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL) };
            let _ = child.wait();
        }
    }
}

/// Exit 0, or the SIGTERM ending as a Go service reports it (killed by the
/// signal, or 128+15 passed on by the enforcer or re-raised by etcd).
fn stopped_cleanly(status: ExitStatus) -> bool {
    use std::os::unix::process::ExitStatusExt as _;
    status.success()
        || status.code() == Some(128 + libc::SIGTERM)
        || status.signal() == Some(libc::SIGTERM)
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// One HTTP/1.1 request to 127.0.0.1:`port`: (status, body).
fn http(port: u16, method: &str, path: &str, body: &str) -> Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .with_context(|| format!("no end of headers in {answer:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no status in {head:?}"))?;
    if head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    }) {
        bail!("chunked answer to {method} {path}");
    }
    Ok((status, body.to_string()))
}
