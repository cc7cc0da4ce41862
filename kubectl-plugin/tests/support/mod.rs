//! Helpers of the cluster tests: records written the way the node agent
//! writes them, kubeconfigs with several contexts or a ServiceAccount's
//! token, and the plugin run to completion or followed line by line.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::PostParams;
use kube::{Api, Client};
use mapguard_agent::records::{Origin, PodRef, RecordWriter};
use mapguard_api::frame::Frame;
use mapguard_api::pair::CallSitePair;
use mapguard_api::vocab::{Action, Detector, Kind, Op};
use mapguard_enforcer::report::events::ViolationRecord;
use mapguard_testenv::{BoundPod, TestEnv, ensure_namespace};
use serde_json::json;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::sync::mpsc;

/// The Node the Pods are bound to and the writer reports as its own.
pub const NODE: &str = "node-a";
/// How long anything may take to show.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// A race as the enforcer reports it, `ago` before now.
pub struct Race {
    pub kind: Kind,
    pub op: Op,
    pub conflicting_op: Op,
    pub site: &'static str,
    pub conflicting_site: Option<&'static str>,
    pub action: Action,
}

impl Race {
    pub fn report(&self, ago: Duration) -> ViolationRecord {
        let at = Timestamp::now()
            .checked_sub(SignedDuration::try_from(ago).expect("a small duration"))
            .expect("a time after the epoch");
        let runtime = |op: Op| {
            Frame::source(
                format!("runtime.map{op}_fast64"),
                "/usr/lib/go/src/runtime/map_fast64.go",
                93,
            )
        };
        let frame = |text: &str| -> Frame { text.parse().unwrap_or_else(|e| panic!("{e}")) };
        let stack = vec![
            runtime(self.op),
            frame(self.site),
            Frame::source("main.main", "/src/main.go", 50),
        ];
        let conflicting_stack = self
            .conflicting_site
            .map(|s| vec![runtime(self.conflicting_op), frame(s)])
            .unwrap_or_default();
        ViolationRecord {
            pair: CallSitePair::new(
                self.kind,
                self.op,
                self.conflicting_op,
                &stack,
                &conflicting_stack,
            ),
            event: "violation",
            kind: self.kind,
            timestamp: at.into(),
            pid: 4242,
            tid: 4243,
            binary: "/app/server".to_owned(),
            map: Some("0xc00007a3f0".to_owned()),
            op: self.op,
            conflicting_op: self.conflicting_op,
            goroutine: 7,
            conflicting_goroutine: 6,
            stack,
            conflicting_stack,
            action: self.action,
            detected_by: Detector::WritingFlag,
            crash_message: None,
            namespace: None,
            pod: None,
            pod_uid: None,
            container: None,
            go_version: Some("go1.26.11".to_owned()),
            repeat: false,
        }
    }

    /// The name of its record.
    pub fn record(&self) -> String {
        self.report(Duration::ZERO).pair.object_name()
    }
}

/// Submits `race` in `pod`, as it happened `ago`, and waits until written.
pub async fn happen(writer: &RecordWriter, pod: &PodRef, race: &Race, ago: Duration) {
    let origin = Origin {
        pod,
        container: Some("app"),
        go_version: Some("go1.26.11"),
    };
    writer.submit(&race.report(ago), origin);
    writer
        .flush(PATIENCE)
        .await
        .unwrap_or_else(|e| panic!("the record writer did not finish: {e}"));
}

pub async fn create_namespace(client: &Client, name: &str) {
    ensure_namespace(client, name)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
}

/// Creates `namespace` if needed and a Pod `name` bound to [`NODE`].
pub async fn create_pod(client: &Client, namespace: &str, name: &str) -> PodRef {
    let pod = BoundPod::new(namespace, name, NODE)
        .create(client)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    PodRef {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        uid: pod.metadata.uid.expect("a stored Pod has a uid"),
    }
}

/// Writes a kubeconfig into the test folder with the admin's cluster and
/// user under each of `contexts` (name, namespace), the first current.
pub fn kubeconfig_with_contexts(env: &TestEnv, file: &str, contexts: &[(&str, &str)]) -> PathBuf {
    let text = std::fs::read_to_string(env.kubeconfig()).expect("read the admin kubeconfig");
    let mut doc: serde_json::Value = yaml_serde::from_str(&text).expect("the kubeconfig parses");
    let cluster = doc["clusters"][0]["name"].clone();
    let user = doc["users"][0]["name"].clone();
    doc["contexts"] = contexts
        .iter()
        .map(|(name, ns)| {
            json!({"name": name, "context": {"cluster": cluster, "user": user, "namespace": ns}})
        })
        .collect();
    doc["current-context"] = json!(contexts[0].0);
    let path = env.dir().join(file);
    std::fs::write(&path, yaml_serde::to_string(&doc).expect("YAML")).expect("write kubeconfig");
    path
}

/// A kubeconfig (context `as-NAME`, namespace `namespace`) authenticated
/// as ServiceAccount `namespace/name` by a TokenRequest token.
pub async fn service_account_kubeconfig(
    env: &TestEnv,
    client: &Client,
    namespace: &str,
    name: &str,
) -> PathBuf {
    create_namespace(client, namespace).await;
    let account: ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": name}})).expect("a ServiceAccount");
    Api::<ServiceAccount>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &account)
        .await
        .expect("create the ServiceAccount");
    env.service_account_kubeconfig(namespace, name)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

pub fn plugin_command(kubeconfig: &Path, args: &[&str]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_kubectl-mapguard"));
    command
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env_remove("RUST_LOG")
        .kill_on_drop(true);
    command
}

/// Runs `kubectl-mapguard ARGS` with `KUBECONFIG=kubeconfig` to its end.
pub async fn run(kubeconfig: &Path, args: &[&str]) -> Output {
    let output = plugin_command(kubeconfig, args).output();
    tokio::time::timeout(PATIENCE, output)
        .await
        .unwrap_or_else(|_| panic!("kubectl mapguard {args:?} did not finish in {PATIENCE:?}"))
        .expect("the plugin runs")
}

/// Runs it and panics unless it exits `code`; returns stdout.
pub async fn run_ok(kubeconfig: &Path, args: &[&str], code: i32) -> String {
    let out = run(kubeconfig, args).await;
    let (stdout, stderr) = texts(&out);
    assert_eq!(
        out.status.code(),
        Some(code),
        "kubectl mapguard {args:?}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    stdout
}

pub fn texts(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The cells of a table's data rows (header left out), split on runs of
/// three or more spaces (cells themselves hold single spaces).
pub fn rows(table: &str) -> Vec<Vec<String>> {
    table
        .lines()
        .skip(1)
        .map(|line| {
            line.split("   ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .collect()
}

/// Which line a stream said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pipe {
    Out,
    Err,
}

/// A plugin process followed line by line (`watch`, `trace`); killed on drop.
pub struct Running {
    pub args: Vec<String>,
    child: tokio::process::Child,
    lines: mpsc::UnboundedReceiver<(Pipe, String)>,
    /// Everything said so far, for failure messages.
    pub seen: Vec<(Pipe, String)>,
}

impl Running {
    pub fn start(kubeconfig: &Path, args: &[&str]) -> Running {
        let mut child = plugin_command(kubeconfig, args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the plugin");
        let (tx, lines) = mpsc::unbounded_channel();
        let out = child.stdout.take().expect("piped stdout");
        let err = child.stderr.take().expect("piped stderr");
        let forward = |pipe: Pipe, tx: mpsc::UnboundedSender<(Pipe, String)>| {
            move |line: String| {
                let _ = tx.send((pipe, line));
            }
        };
        let send_out = forward(Pipe::Out, tx.clone());
        tokio::spawn(async move {
            let mut r = BufReader::new(out).lines();
            while let Ok(Some(line)) = r.next_line().await {
                send_out(line);
            }
        });
        let send_err = forward(Pipe::Err, tx);
        tokio::spawn(async move {
            let mut r = BufReader::new(err).lines();
            while let Ok(Some(line)) = r.next_line().await {
                send_err(line);
            }
        });
        Running {
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Returns the first line of `pipe` so far that `matches`, waiting
    /// (bounded) for one if none has come yet.
    pub async fn expect(
        &mut self,
        pipe: Pipe,
        what: &str,
        matches: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + PATIENCE;
        let mut checked = 0;
        loop {
            if let Some(line) = self.seen[checked..]
                .iter()
                .filter(|(p, _)| *p == pipe)
                .map(|(_, l)| l)
                .find(|l| matches(l))
            {
                return line.clone();
            }
            checked = self.seen.len();
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.lines.recv()).await {
                Ok(Some(line)) => self.seen.push(line),
                Ok(None) => panic!(
                    "kubectl mapguard {:?} ended before {what}; it said:\n{}",
                    self.args,
                    self.transcript()
                ),
                Err(_) => panic!(
                    "kubectl mapguard {:?}: no {what} within {PATIENCE:?}; it said:\n{}",
                    self.args,
                    self.transcript()
                ),
            }
        }
    }

    /// Reads what is said within `quiet` of the last line.
    pub async fn drain(&mut self, quiet: Duration) {
        while let Ok(Some(line)) = tokio::time::timeout(quiet, self.lines.recv()).await {
            self.seen.push(line);
        }
    }

    /// Lines of `pipe` so far.
    pub fn lines_of(&self, pipe: Pipe) -> Vec<String> {
        self.seen
            .iter()
            .filter(|(p, _)| *p == pipe)
            .map(|(_, l)| l.clone())
            .collect()
    }

    pub fn transcript(&self) -> String {
        self.seen
            .iter()
            .map(|(p, l)| format!("{}: {l}\n", if *p == Pipe::Out { "out" } else { "err" }))
            .collect()
    }

    /// Sends SIGINT (Ctrl-C) and returns the exit code (bounded).
    pub async fn interrupt(mut self) -> Option<i32> {
        let pid = self.child.id().expect("running") as i32;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGINT,
        )
        .expect("send SIGINT");
        let status = tokio::time::timeout(PATIENCE, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("kubectl mapguard {:?} ignored Ctrl-C", self.args))
            .expect("wait for the plugin");
        status.code()
    }
}
