//! Helpers of the record tests (`tests/records.rs`): violation reports as
//! the enforcer makes them, Pods, Events, a ServiceAccount's client, the
//! writer's metrics and log lines.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client};
use mapguard_agent::records::{Origin, PodRef, RecordWriter, RecordsConfig};
use mapguard_api::frame::Frame;
use mapguard_api::pair::CallSitePair;
use mapguard_api::vocab::{Action, Detector, Kind, Op};
use mapguard_enforcer::report::events::ViolationRecord;
use mapguard_testenv::{BoundPod, TestEnv, ensure_namespace};
use prometheus_client::registry::Registry;
use serde::Deserialize as _;
use serde_json::json;

/// The Node the test Pods are bound to and the writers report as theirs.
pub const NODE: &str = "node-a";
/// Per-namespace record bound of the writers here.
pub const BOUND: usize = 3;
/// How long a write may take to show (a flush, a CRD becoming served).
pub const PATIENCE: Duration = Duration::from_secs(30);

pub fn config(queue_capacity: usize) -> RecordsConfig {
    RecordsConfig {
        max_records_per_namespace: BOUND,
        queue_capacity,
        min_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(500),
        ..RecordsConfig::new(NODE)
    }
}

pub fn origin(pod: &PodRef) -> Origin<'_> {
    Origin {
        pod,
        container: Some("app"),
        go_version: Some("go1.24.4"),
    }
}

pub async fn flush(writer: &RecordWriter) {
    writer
        .flush(PATIENCE)
        .await
        .unwrap_or_else(|e| panic!("the writer did not finish: {e}"));
}

/// A report as the enforcer's `Reporter` makes it.
pub fn violation(
    kind: Kind,
    op: Op,
    conflicting_op: Op,
    site: &str,
    conflicting_site: Option<&str>,
    timestamp: &str,
) -> ViolationRecord {
    let runtime = |op: Op| {
        Frame::source(
            format!("runtime.map{op}_fast64"),
            "/usr/lib/go/src/runtime/map_fast64.go",
            93,
        )
    };
    let stack = vec![
        runtime(op),
        frame(site),
        Frame::source("main.main", "/src/main.go", 50),
    ];
    let conflicting_stack = conflicting_site
        .map(|s| vec![runtime(conflicting_op), frame(s)])
        .unwrap_or_default();
    ViolationRecord {
        pair: CallSitePair::new(kind, op, conflicting_op, &stack, &conflicting_stack),
        event: "violation",
        kind,
        timestamp: timestamp
            .parse::<Timestamp>()
            .unwrap_or_else(|e| panic!("{timestamp}: {e}"))
            .into(),
        pid: 4242,
        tid: 4243,
        binary: "/app/cart".to_owned(),
        map: Some("0xc00007a3f0".to_owned()),
        op,
        conflicting_op,
        goroutine: 7,
        conflicting_goroutine: 6,
        stack,
        conflicting_stack,
        action: Action::Killed,
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

/// A frame from its text (`function /path/file.go:line`).
pub fn frame(text: &str) -> Frame {
    text.parse().unwrap_or_else(|e| panic!("{e}"))
}

/// A stack as a record's spec writes it.
pub fn text(stack: &[Frame]) -> Vec<String> {
    stack.iter().map(Frame::to_string).collect()
}

/// Creates `namespace` if needed and a Pod `name` bound to the test Node.
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

/// Events (events.k8s.io/v1) regarding Pod `namespace/name`.
pub async fn pod_events(client: &Client, namespace: &str, name: &str) -> Vec<Event> {
    Api::<Event>::namespaced(client.clone(), namespace)
        .list(&ListParams::default())
        .await
        .expect("list Events")
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .collect()
}

/// The first document of `kind` in a multi-document YAML file.
pub fn first_of_kind<T: serde::de::DeserializeOwned>(path: &str, kind: &str) -> T {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    for document in yaml_serde::Deserializer::from_str(&text) {
        let value = yaml_serde::Value::deserialize(document).expect("a YAML document");
        if value.get("kind").and_then(|k| k.as_str()) == Some(kind) {
            return yaml_serde::from_value(value)
                .unwrap_or_else(|e| panic!("{kind} in {path}: {e}"));
        }
    }
    panic!("no {kind} in {path}");
}

/// A client authenticated as ServiceAccount `mapguard-system/name`, bound
/// to ClusterRole `role`, through a token from the TokenRequest API.
pub async fn service_account_client(
    env: &TestEnv,
    client: &Client,
    name: &str,
    role: &str,
) -> Client {
    ensure_namespace(client, "mapguard-system")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let account: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": name}}))
        .expect("a ServiceAccount literal");
    Api::<ServiceAccount>::namespaced(client.clone(), "mapguard-system")
        .create(&PostParams::default(), &account)
        .await
        .expect("create the ServiceAccount");
    let binding: ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": {"name": format!("{name}-{role}")},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": "mapguard-system"}],
    }))
    .expect("a ClusterRoleBinding literal");
    Api::<ClusterRoleBinding>::all(client.clone())
        .create(&PostParams::default(), &binding)
        .await
        .expect("bind the ClusterRole");
    let path = env
        .service_account_kubeconfig("mapguard-system", name)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let kubeconfig = Kubeconfig::read_from(&path).expect("a token kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("load the token kubeconfig");
    Client::try_from(config).expect("a client for the ServiceAccount")
}

pub async fn wait_until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + PATIENCE;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn encode(registry: &Registry) -> String {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).expect("encode metrics");
    text
}

/// The value of the sample `series` (name and labels as written), 0 if absent.
pub fn metric(registry: &Registry, series: &str) -> f64 {
    let text = encode(registry);
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |v| {
            v.trim()
                .parse()
                .unwrap_or_else(|e| panic!("{series}: {v}: {e}"))
        })
}

/// Log lines of the whole test binary (the writer's task logs from worker
/// threads), echoed to stderr.
pub struct Logs(Mutex<Vec<u8>>);

impl Logs {
    /// Panics unless some line so far contains `text`.
    pub fn expect(&self, text: &str) {
        let all = String::from_utf8_lossy(&self.0.lock().expect("log lock")).into_owned();
        assert!(
            all.contains(text),
            "no log line contains {text:?}; the log:\n{all}"
        );
    }
}

pub fn capture_logs() -> &'static Logs {
    static LOGS: OnceLock<Arc<Logs>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Arc::new(Logs(Mutex::new(Vec::new())));
        let sink = logs.clone();
        tracing_subscriber::fmt()
            .with_ansi(false)
            .with_env_filter("mapguard_agent=debug")
            .with_writer(move || LogWriter(sink.clone()))
            .init();
        logs
    })
}

pub struct LogWriter(Arc<Logs>);

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.0.lock().expect("log lock").extend_from_slice(buf);
        let _ = std::io::stderr().write_all(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
