//! The whole flow on one node, for real: a real kube-apiserver and etcd
//! (mapguard-testenv), the admission webhook registered with it, the node
//! agent (`mapguard-agent daemon`) for a Node object, Pods created
//! through the API server (mutated with `mapguard.io/mode` from their
//! namespace's label) and bound to that Node, and real Go programs started
//! in kubelet-shaped cgroups of those Pods.
//!
//! One API server serves every stage (a start costs seconds), in order:
//! a racing program in a `kill` Pod is killed before the Go runtime's fatal
//! error, a MapViolation record names both call sites, `kubectl get
//! mapviolations` lists it and the Pod has the Warning Event; the same
//! program in a Pod without the annotation and in an `off` Pod is left
//! alone; a Pod asking for audit in a namespace labelled kill after it was
//! admitted is killed (the namespace's minimum); with the API server stopped the agent keeps enforcing the Pods it
//! knows, says so on `/readyz`, and writes the records it queued once the
//! API server is back.

#[path = "support/agent.rs"]
mod agent;
#[path = "../../enforcer/tests/support/kube_cgroup.rs"]
mod kube_cgroup;
#[path = "support/pod_process.rs"]
mod pod_process;
#[path = "../../enforcer/tests/support/mod.rs"]
mod support;

use std::{
    os::unix::fs::{FileTypeExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    process::Child,
    time::{Duration, Instant},
};

use agent::Agent;
use k8s_openapi::api::{
    admissionregistration::v1::{MutatingWebhookConfiguration, ValidatingWebhookConfiguration},
    core::v1::{Namespace, Pod},
    events::v1::Event,
};
use kube::{
    Api, Client,
    api::{ListParams, PostParams},
};
use kube_cgroup::KubeCgroup;
use mapguard_api::resource::MapViolation;
use mapguard_testenv::{BoundPod, TestEnv};
use pod_process::{container_of, start_in, wait};
use serde_json::json;

const NODE: &str = "mapguard-node-1";
const MODE: &str = "mapguard.io/mode";
const COVERAGE: &str = "mapguard.io/coverage";
/// How long the API server, the watches and the agent may take to follow.
const PROPAGATION: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_agent_enforces_the_pods_of_its_node_end_to_end() {
    let test = "the_node_agent_enforces_the_pods_of_its_node_end_to_end";
    if !support::require_bpf(test) || !kube_cgroup::require(test) {
        return;
    }
    let Some(mut env) = TestEnv::start_or_skip(test).await else {
        return;
    };
    let client = env.client();
    say(&format!(
        "a real kube-apiserver and etcd on 127.0.0.1 ({}); a Node {NODE}",
        env.url()
    ));
    env.create_node(NODE).await.expect("create the Node");
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(client.clone());
    crds.create(&PostParams::default(), &mapguard_api::resource::crd())
        .await
        .expect("install the MapViolation CRD");
    namespace(&client, "payments", Some("kill")).await;
    namespace(&client, "shop", None).await;
    namespace(&client, "ledger", None).await;

    say(
        "Namespaces payments (labelled mapguard.io/mode=kill) and shop; the admission webhook registered from manifests/webhook/",
    );
    let dir = temp_dir();
    let webhook = start_webhook(&env, &dir).await;
    let go = support::versions().last().copied().expect("a Go release");
    let racy = support::program(go, "racy", "delete_assign");

    // A Pod in the kill namespace, mutated with the annotation, bound to the node.
    // A Pod of the Deployment checkout (its ReplicaSet's Pod): its metrics
    // are the Deployment's.
    let killed = create_pod(
        &client,
        "payments",
        "checkout",
        &[],
        Some(("checkout-7d9f8b6c5d", "7d9f8b6c5d")),
    )
    .await;
    assert_eq!(
        annotation(&killed).as_deref(),
        Some("kill"),
        "the webhook annotated the Pod"
    );
    // A Pod that says nothing and one that opts out: never signalled.
    let plain = create_pod(&client, "shop", "catalog", &[], None).await;
    assert_eq!(annotation(&plain), None);
    let off = create_pod(&client, "shop", "opted-out", &[(MODE, "off")], None).await;
    // Audited with light coverage: only the runtime's crash paths probed.
    let light = create_pod(
        &client,
        "shop",
        "inventory",
        &[(MODE, "audit"), (COVERAGE, "light")],
        None,
    )
    .await;
    say(
        "Pods created through the API server, bound to the node: payments/checkout (mutated: mapguard.io/mode=kill), shop/catalog (no annotation), shop/opted-out (mode off)",
    );
    // Audited while its namespace demands nothing yet (stage 2c labels it).
    let legacy = create_pod(&client, "ledger", "legacy", &[(MODE, "audit")], None).await;
    let kill_cg = container_of(&client, &killed).await;
    let legacy_cg = container_of(&client, &legacy).await;
    let plain_cg = container_of(&client, &plain).await;
    let off_cg = container_of(&client, &off).await;
    let light_cg = container_of(&client, &light).await;

    let events_file = dir.join("events.jsonl");
    say(&format!(
        "mapguard-agent daemon --node {NODE} (ops port: /readyz, /metrics; /events on a Unix socket)"
    ));
    // A socket a previous agent left at the events socket's path: replaced.
    drop(
        std::os::unix::net::UnixListener::bind(events_file.with_extension("sock"))
            .expect("a stale socket"),
    );
    let mut agent = Agent::start(
        NODE,
        env.kubeconfig(),
        &events_file,
        events_file.with_extension("log"),
        &[],
    );
    // The responder (a process of its own, as its Deployment is) in dry
    // run, at the first violation the agent's records count.
    let responder = Responder::start(env.kubeconfig(), &dir.join("responder.log"));
    agent.wait_ready().await;
    responder.wait_ready().await;
    // The event stream (every tenant's stacks and Pods) is not on the ops
    // port, which any Pod may reach; only on the socket, the agent's only.
    let (status, _) = agent::http_get(agent.ops, "/events").expect("the ops port answers");
    assert_eq!(status, 404, "/events on the ops port");
    let (status, _) = agent::http_get(agent.ops, "/metrics").expect("the ops port answers");
    assert_eq!(status, 200, "/metrics on the ops port");
    let socket = std::fs::symlink_metadata(&agent.events_socket).expect("the events socket");
    assert!(socket.file_type().is_socket(), "{socket:?}");
    assert_eq!(socket.permissions().mode() & 0o777, 0o600, "its mode");
    let mut stream = agent.events();
    say(&format!(
        "the ops port answers 404 for /events; {} (mode 0600) streams it",
        agent.events_socket.display()
    ));

    // 1. The racing program in the kill Pod is killed before the runtime
    //    reports, with a record and an Event.
    say(&format!(
        "a racing Go program ({go} delete_assign) started in checkout's container cgroup {}",
        kill_cg.path()
    ));
    let mut program = start_racer(&kill_cg, &racy);
    agent.wait_enforced_at_least(1).await;
    signal(&program, libc::SIGUSR1);
    let out = wait(&mut program, Duration::from_secs(30));
    say(&format!(
        "it raced and was killed by SIGKILL before the Go runtime printed anything: {}",
        agent
            .log()
            .lines()
            .rfind(|l| l.starts_with("mapguard: "))
            .unwrap_or("")
    ));
    assert_eq!(
        out.0, None,
        "the racing program was not killed (status {:?}): {}",
        out.0, out.1
    );
    assert!(
        !out.1.contains("fatal error"),
        "the runtime reported before mapguard acted: {}",
        out.1
    );
    let record = wait_for_record(&client, "payments", 1).await;
    let spec = &record.spec;
    assert!(
        spec.stack
            .iter()
            .any(|f| f.contains("delete_assign/main.go:")),
        "{spec:?}"
    );
    assert!(
        spec.conflicting_stack
            .iter()
            .any(|f| f.contains("delete_assign/main.go:")),
        "both call sites: {spec:?}"
    );
    let status = record.status.as_ref().expect("record status");
    assert_eq!(status.node, NODE, "{status:?}");
    assert_eq!(status.pod, "checkout", "{status:?}");
    assert_eq!(status.action, "killed", "{status:?}");
    assert!(
        status
            .go_version
            .as_deref()
            .is_some_and(|v| v.starts_with("go1.")),
        "{status:?}"
    );
    let listed = kubectl(&env, &["get", "mapviolations", "-n", "payments"]);
    say(&format!("kubectl get mapviolations -n payments\n{listed}"));
    assert!(
        listed.contains("concurrent") || listed.contains("released"),
        "kubectl get mapviolations:\n{listed}"
    );
    // The agent's series name the Deployment, never the Pod.
    let metrics = agent.text("/metrics");
    let checkout = r#"namespace="payments",workload="checkout",workload_kind="Deployment""#;
    assert!(
        metrics.lines().any(|l| l
            .starts_with(&format!("mapguard_violations_total{{{checkout},kind="))
            && l.contains(r#"action="killed"}"#)),
        "/metrics counts the violation under its workload:\n{metrics}"
    );
    assert!(
        agent.metric(&format!(
            "mapguard_map_operations_observed_total{{{checkout},"
        )) > 0.0,
        "/metrics counts the map operations the probes saw:\n{metrics}"
    );
    assert!(
        agent
            .metric(&format!("mapguard_violation_records_total{{namespace=\"payments\",workload=\"checkout\",record=\"{}\",", record.metadata.name.as_deref().unwrap_or("?")))
            >= 1.0,
        "/metrics counts the violation under its record's call-site pair:\n{metrics}"
    );
    // Killed at the writing-flag check, usually before any thread reaches
    // the runtime's crash path; when one gets there before the kill lands
    // it is counted as a crash too, of this workload and this message.
    for line in metrics
        .lines()
        .filter(|l| l.starts_with("mapguard_map_crashes_total{"))
    {
        assert!(
            line.contains(checkout) && line.contains("message_class=\"concurrent_map_writes\""),
            "a crash counted here is the killed race's:\n{metrics}"
        );
    }
    wait_for_event(&client, "payments", "checkout").await;
    say("the Pod payments/checkout has a Warning Event (reason MapRace)");
    wait_for_reason(
        &client,
        "payments",
        "checkout",
        mapguard_agent::responder::REASON_DRY_RUN,
    )
    .await;
    responder
        .wait_metric(r#"mapguard_responder_actions_total{action="evict",outcome="dry_run"} 1"#)
        .await;
    say(
        "the responder (evict, dry run) recorded what it would do: a MapguardResponseDryRun Event on the Pod",
    );
    let line = std::fs::read_to_string(&events_file).unwrap_or_default();
    assert!(
        line.contains("\"pod\":\"checkout\"") && line.contains("\"namespace\":\"payments\""),
        "the report names the Pod: {line}"
    );
    let streamed = stream.line_with("\"event\":\"violation\"");
    assert!(
        streamed.contains("\"pod\":\"checkout\"")
            && streamed.contains("\"namespace\":\"payments\"")
            && streamed.contains("delete_assign/main.go:"),
        "the socket streams the violation: {streamed}"
    );
    say("the violation line was streamed on the events socket");

    // 2. The same program in Pods that are not enforced: the agent leaves
    //    them alone (the Go runtime aborts them itself).
    say(
        "the same program in shop/catalog (no annotation) and shop/opted-out (off): left alone; the Go runtime aborts them itself",
    );
    for (cg, what) in [(&plain_cg, "unannotated"), (&off_cg, "off")] {
        let mut p = start_racer(cg, &racy);
        std::thread::sleep(Duration::from_secs(2));
        signal(&p, libc::SIGUSR1);
        let (status, stderr) = wait(&mut p, Duration::from_secs(30));
        assert_ne!(
            status, None,
            "the {what} Pod's process was signalled: {stderr}"
        );
    }
    assert_eq!(
        count_records(&client, "shop").await,
        0,
        "no record for Pods that are not enforced"
    );
    assert_eq!(agent.metric("mapguard_enforced_processes"), 0.0);

    // 2b. Light coverage in audit mode: no map function probed, so no
    //     violation before the Go runtime's own check; its crash is still
    //     reported from the crash path and counted as a map crash of the
    //     Pod (a Pod of no controller is its own workload).
    say(
        "the same program in shop/inventory (audit, light coverage): the Go runtime's crash is counted",
    );
    let mut p = start_racer(&light_cg, &racy);
    agent.wait_enforced_at_least(1).await;
    signal(&p, libc::SIGUSR1);
    let (status, stderr) = wait(&mut p, Duration::from_secs(30));
    assert_eq!(
        status,
        Some(2),
        "audit leaves the crash to the runtime: {stderr}"
    );
    assert!(stderr.contains("fatal error: concurrent map"), "{stderr}");
    let inventory = r#"namespace="shop",workload="inventory",workload_kind="Pod""#;
    let crashes = format!(
        "mapguard_map_crashes_total{{{inventory},message_class=\"concurrent_map_writes\"}}"
    );
    let deadline = Instant::now() + PROPAGATION;
    while agent.metric(&crashes) < 1.0 {
        assert!(
            Instant::now() < deadline,
            "no {crashes}:\n{}",
            agent.text("/metrics")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let metrics = agent.text("/metrics");
    assert!(
        metrics.contains(&format!(
            "mapguard_violations_total{{{inventory},kind=\"concurrent_write\",action=\"audit\"}}"
        )),
        "the crash-path report is the violation:\n{metrics}"
    );
    assert!(
        !metrics.contains(&format!(
            "mapguard_map_operations_observed_total{{{inventory}"
        )),
        "light coverage probes no map function:\n{metrics}"
    );
    // Forgotten before the next stage counts on what is enforced.
    let deadline = Instant::now() + PROPAGATION;
    while agent.metric("mapguard_enforced_processes") > 0.0 {
        assert!(
            Instant::now() < deadline,
            "the crashed process stays enforced"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // 2c. A Pod asking for less than its namespace demands: ledger is
    //     labelled mapguard.io/mode=kill after legacy was admitted asking
    //     for audit; the agent enforces the namespace's kill.
    say("namespace ledger labelled mapguard.io/mode=kill; its Pod legacy still says audit");
    Api::<Namespace>::all(client.clone())
        .patch(
            "ledger",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"metadata": {"labels": {MODE: "kill"}}})),
        )
        .await
        .expect("label namespace ledger");
    let deadline = Instant::now() + PROPAGATION;
    while !agent.log().lines().any(|l| {
        l.contains("ledger/legacy") && l.contains("namespace demand changed") && l.contains("kill")
    }) {
        assert!(
            Instant::now() < deadline,
            "the agent did not raise ledger/legacy to kill:\n{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut p = start_racer(&legacy_cg, &racy);
    agent.wait_enforced_at_least(1).await;
    signal(&p, libc::SIGUSR1);
    let (status, stderr) = wait(&mut p, Duration::from_secs(30));
    assert_eq!(
        status, None,
        "the Pod asking for audit in a kill namespace was not killed: {stderr}"
    );
    let record = wait_for_record(&client, "ledger", 1).await;
    let status = record.status.as_ref().expect("record status");
    assert_eq!(
        (status.pod.as_str(), status.action.as_str()),
        ("legacy", "killed"),
        "{status:?}"
    );
    say("its racing program was killed: the namespace's mode, not the Pod's audit");
    let deadline = Instant::now() + PROPAGATION;
    while agent.metric("mapguard_enforced_processes") > 0.0 {
        assert!(
            Instant::now() < deadline,
            "the killed process stays enforced"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // 3. The API server goes away: readiness says so, enforcement goes on,
    //    the record is queued and written once it is back.
    say("the API server stops: /readyz says so; the agent keeps enforcing the Pods it knows");
    env.stop_apiserver();
    agent.wait_unready().await;
    let mut program = start_racer(&kill_cg, &racy);
    agent.wait_enforced_at_least(1).await;
    signal(&program, libc::SIGUSR1);
    let (status, stderr) = wait(&mut program, Duration::from_secs(30));
    assert_eq!(
        status, None,
        "killed while the API server is away: {stderr}"
    );
    say("killed again while the API server was away; the API server comes back");
    env.restart_apiserver()
        .await
        .expect("restart the API server");
    agent.wait_ready().await;
    let deadline = Instant::now() + PROPAGATION;
    loop {
        let records = list_records(&client, "payments").await;
        let count: i64 = records
            .iter()
            .filter_map(|r| r.status.as_ref())
            .map(|s| s.count)
            .sum();
        if count >= 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the violation of the outage was not written after it: {records:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(agent.metric("mapguard_api_server_disconnects_total") >= 1.0);
    say("the record queued during the outage is written: its count is 2");

    agent.stop();
    drop(responder);
    webhook.shutdown().await;
    drop(env);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `mapguard-agent respond` against the API server of `kubeconfig`:
/// evict in dry run at the first violation; killed when dropped.
struct Responder {
    child: Child,
    ops: std::net::SocketAddr,
    log: PathBuf,
}

impl Responder {
    fn start(kubeconfig: &Path, log: &Path) -> Responder {
        let ops = agent::free_port();
        let child = std::process::Command::new(agent::binary())
            .args([
                "respond",
                "--action=evict",
                "--dry-run",
                "--threshold=1",
                "--namespace=default",
            ])
            .arg(format!("--kubeconfig={}", kubeconfig.display()))
            .arg(format!("--ops-listen={ops}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(log).expect("responder log"))
            .spawn()
            .expect("start mapguard-agent respond");
        Responder {
            child,
            ops,
            log: log.to_owned(),
        }
    }

    /// Until `/readyz` answers 200 (the records are listed).
    async fn wait_ready(&self) {
        let deadline = Instant::now() + PROPAGATION;
        while agent::http_get(self.ops, "/readyz").map(|(s, _)| s) != Some(200) {
            assert!(
                Instant::now() < deadline,
                "the responder is not ready: {}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Until its `/metrics` has `line`.
    async fn wait_metric(&self, line: &str) {
        let deadline = Instant::now() + PROPAGATION;
        loop {
            let metrics = agent::http_get(self.ops, "/metrics")
                .map(|(_, body)| body)
                .unwrap_or_default();
            if metrics.lines().any(|l| l == line) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the responder's /metrics lacks {line}:\n{metrics}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Something other than a socket at `--events-socket` (a file, a folder):
/// the agent refuses to start and says why, and leaves it as it was.
#[test]
fn the_agent_refuses_an_events_socket_path_that_is_not_a_socket() {
    let dir = std::env::temp_dir().join(format!(
        "mapguard-daemon-socket-test-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("folder")).expect("create the test folder");
    let file = dir.join("file");
    std::fs::write(&file, "keep me\n").expect("a regular file");
    for (path, kind) in [
        (&file, "a regular file"),
        (&dir.join("folder"), "a directory"),
    ] {
        let out = std::process::Command::new(agent::binary())
            .args(["daemon", "--node", NODE, "--ops-listen", "127.0.0.1:0"])
            .arg(format!(
                "--kubeconfig={}",
                dir.join("no-kubeconfig").display()
            ))
            .arg(format!("--events-socket={}", path.display()))
            .output()
            .expect("run mapguard-agent daemon");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains(&format!(
                "{} exists and is not a socket ({kind}); refusing to replace it",
                path.display()
            )),
            "{stderr}"
        );
    }
    assert_eq!(std::fs::read_to_string(&file).expect("kept"), "keep me\n");
    assert!(dir.join("folder").is_dir());
    let _ = std::fs::remove_dir_all(&dir);
}

fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mapguard-daemon-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the test folder");
    dir
}

async fn namespace(client: &Client, name: &str, mode: Option<&str>) {
    let labels = mode.map(|m| json!({ MODE: m })).unwrap_or(json!({}));
    let ns: Namespace =
        serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}}))
            .expect("Namespace");
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap_or_else(|e| panic!("create namespace {name}: {e}"));
}

/// Creates a Pod bound to the node (retrying while the webhook's watch
/// catches up with the namespaces) and returns it as stored.
/// With `replicaset`, a Pod of Deployment `DEPLOYMENT` as its ReplicaSet
/// `(DEPLOYMENT-HASH, HASH)` makes them (owner and `pod-template-hash`).
async fn create_pod(
    client: &Client,
    ns: &str,
    name: &str,
    annotations: &[(&str, &str)],
    replicaset: Option<(&str, &str)>,
) -> Pod {
    let mut pod = BoundPod::new(ns, name, NODE).annotations(annotations);
    if let Some((rs, hash)) = replicaset {
        pod = pod
            .labels(&[("pod-template-hash", hash)])
            .controlled_by_replicaset(rs, "0b7c4f9e-0000-4000-8000-000000000001");
    }
    let deadline = Instant::now() + PROPAGATION;
    loop {
        match pod.create(client).await {
            Ok(created) => return created,
            Err(e) if Instant::now() < deadline => {
                eprintln!("{e}; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
}

/// A line of the narration `make demo-cluster` shows (`--nocapture`).
fn say(line: &str) {
    println!("\n==> {line}");
}

fn annotation(pod: &Pod) -> Option<String> {
    pod.metadata.annotations.as_ref()?.get(MODE).cloned()
}

/// Starts `program` (waiting for SIGUSR1 to race) inside `cgroup` from its
/// first instruction.
fn start_racer(cgroup: &KubeCgroup, program: &Path) -> Child {
    start_in(cgroup, program, &["-duration", "30s", "-wait-signal"])
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: signals the test's own child.
    unsafe { libc::kill(child.id() as i32, sig) };
}

async fn list_records(client: &Client, ns: &str) -> Vec<MapViolation> {
    Api::<MapViolation>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
}

async fn count_records(client: &Client, ns: &str) -> usize {
    list_records(client, ns).await.len()
}

async fn wait_for_record(client: &Client, ns: &str, at_least: i64) -> MapViolation {
    let deadline = Instant::now() + PROPAGATION;
    loop {
        if let Some(r) = list_records(client, ns)
            .await
            .into_iter()
            .find(|r| r.status.as_ref().is_some_and(|s| s.count >= at_least))
        {
            return r;
        }
        assert!(Instant::now() < deadline, "no MapViolation record in {ns}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn wait_for_event(client: &Client, ns: &str, pod: &str) {
    wait_for_reason(client, ns, pod, mapguard_agent::records::EVENT_REASON).await;
}

async fn wait_for_reason(client: &Client, ns: &str, pod: &str, reason: &str) {
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    let deadline = Instant::now() + PROPAGATION;
    loop {
        let found = events
            .list(&ListParams::default())
            .await
            .map(|l| {
                l.items.into_iter().any(|e| {
                    e.type_.as_deref() == Some("Warning")
                        && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(pod)
                        && e.reason.as_deref() == Some(reason)
                })
            })
            .unwrap_or(false);
        if found {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no Warning Event {reason} on {ns}/{pod}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn kubectl(env: &TestEnv, args: &[&str]) -> String {
    let Some(mut cmd) = env.kubectl() else {
        panic!("kubectl is not installed (.ci/install-cluster.sh installs it)");
    };
    let out = cmd.args(args).output().expect("run kubectl");
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The webhook, in process, watching Namespaces through the API server and
/// registered from the project's manifests (only `clientConfig` changed).
async fn start_webhook(env: &TestEnv, dir: &Path) -> mapguard_webhook::startup::Running {
    use clap::Parser as _;
    let certs = mapguard_certs_gen::generate(&mapguard_certs_gen::CertRequest::new(
        "mapguard-webhook",
        "mapguard-system",
    ))
    .expect("generate the webhook's certificates");
    let cert_dir = dir.join("certs");
    mapguard_certs_gen::write_dir(&certs, &cert_dir, false).expect("write the certificates");
    let config = mapguard_webhook::config::Config::try_parse_from([
        "mapguard-webhook".to_string(),
        "--listen=127.0.0.1:0".into(),
        "--metrics-listen=127.0.0.1:0".into(),
        format!("--tls-cert={}", cert_dir.join("tls.crt").display()),
        format!("--tls-key={}", cert_dir.join("tls.key").display()),
        format!("--kubeconfig={}", env.kubeconfig().display()),
    ])
    .expect("webhook config");
    let running = mapguard_webhook::startup::Webhook::build(&config)
        .await
        .expect("webhook builds")
        .start(&config)
        .await
        .expect("webhook starts");
    let manifests = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/webhook");
    // register_*_webhook sets clientConfig (the URL and this CA).
    let read = |name: &str| {
        std::fs::read_to_string(manifests.join(name)).expect("read a webhook manifest")
    };
    let validating: ValidatingWebhookConfiguration =
        yaml_serde::from_str(&read("validatingwebhookconfiguration.yaml")).expect("validating");
    let mutating: MutatingWebhookConfiguration =
        yaml_serde::from_str(&read("mutatingwebhookconfiguration.yaml")).expect("mutating");
    let url = format!("https://{}", running.addr);
    env.register_validating_webhook(&validating, &url, &certs.ca_cert_pem)
        .await
        .expect("register the validating webhook");
    env.register_mutating_webhook(&mutating, &url, &certs.ca_cert_pem)
        .await
        .expect("register the mutating webhook");
    running
}
