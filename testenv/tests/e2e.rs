//! mapguard end to end on a real node (`NodeCluster`: a kubelet, containerd,
//! runc and CNI), from the images built here (`make images`):
//!
//! 1. `kubectl apply -k manifests/`, unchanged: the certs-gen Job completes,
//!    the webhook Deployment (2 replicas) and the agent DaemonSet are ready.
//! 2. A Deployment of a Go program that races at start-up, in a namespace
//!    labelled `mapguard.io/mode=kill`: the agent kills its container
//!    (exit 137, no `fatal error: concurrent map` in its log), a MapViolation
//!    names both call sites, the Pod has the Warning Event, and
//!    `kubectl mapguard audit` lists the record.
//! 3. The same Deployment in an unlabelled namespace: untouched, the Go
//!    runtime aborts it itself (exit 2, its fatal error in the log), no record.
//! 4. (Run last: steps 5 and 6 need the webhook for labelled namespaces.)
//!    The webhook scaled to 0: Pods are still created in `kube-system`,
//!    `mapguard-system` and an unlabelled namespace, and refused in a
//!    `mapguard.io/mode=kill` namespace.
//! 5. The killed container's restarts (20, a second apart) are each
//!    killed again, and the agent keeps one analysis of the image's file:
//!    `mapguard_enforced_binaries` does not grow, nor its memory by more
//!    than 20 MiB.
//! 6. A `stop` Pod's process stays stopped while the agent's Pod is
//!    replaced; the new agent enforces it again and, resumed, stops it again.
//!
//! Then everything the test created is deleted (the cluster helper stops the
//! node if it started it). Skipped loudly without root, the cluster's
//! binaries or the images; under `CI=true` the last two fail instead.
//! `make demo-cluster` runs it with `--nocapture` and narrates each step.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::PostParams;
use mapguard_testenv::NodeCluster;
use serde_json::{Value, json};

/// When the test program starts racing after its container starts: at
/// once. The agent holds a new process of an enforced Pod at exec until its
/// probes are in place (docs/agent.md: "From the first instruction"), so a race in
/// the container's first milliseconds is caught like any other.
const RACE_START_DELAY: Duration = Duration::ZERO;

const SYSTEM: &str = "mapguard-system";
const RACY_IMAGE: &str = "localhost/mapguard/racy:test";
/// The three images the manifests name, as `make images` writes them.
const IMAGES: [&str; 3] = ["webhook", "agent", "certs-gen"];
/// How long a rollout, a Job or a container restart may take here.
const ROLLOUT: Duration = Duration::from_secs(180);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mapguard_installs_and_kills_a_racing_pod_on_a_real_node() {
    let test = "mapguard_installs_and_kills_a_racing_pod_on_a_real_node";
    let started = Instant::now();
    let Some(archives) = image_archives(test) else {
        return;
    };
    let Some(cluster) = NodeCluster::up_or_skip(test).await else {
        return;
    };
    say(&format!(
        "a one-node cluster (kubelet, containerd, runc, CNI); KUBECONFIG={}",
        cluster.kubeconfig().display()
    ));
    let e2e = E2e::new(&cluster);

    for archive in &archives {
        cluster
            .import_image(archive)
            .unwrap_or_else(|e| panic!("import {}: {e}", archive.display()));
    }
    import_racy_image(&cluster);
    say(&format!(
        "images imported into the node's containerd: the three mapguard images from {} and {RACY_IMAGE}",
        archives[0].parent().expect("a folder").display()
    ));

    e2e.install();
    say(&format!("installed in {:.0?}", started.elapsed()));
    let first = e2e.racing_pods_are_killed_where_asked_and_left_alone_elsewhere();
    // Step 5 before step 6 replaces the agent (one agent's figures), both
    // before step 4 takes the webhook away (labelled namespaces need it).
    e2e.restarts_keep_the_agent_steady(first);
    e2e.ok(&["delete", "deployment", "racer", "-n", &e2e.kill_ns]);
    e2e.a_new_agent_takes_over_a_stopped_pod();
    e2e.without_a_webhook_only_opted_in_namespaces_refuse_pods(&cluster)
        .await;
    say(&format!(
        "done in {:.0?}; deleting what the test created",
        started.elapsed()
    ));
    drop(e2e);
    drop(cluster);
}

/// `target/images/mapguard-{webhook,agent,certs-gen}.tar`
/// (`MAPGUARD_IMAGES_DIR` names another folder), or `None` after a loud skip
/// line (a panic under `CI=true`) when one is missing.
fn image_archives(test: &str) -> Option<Vec<PathBuf>> {
    let dir = std::env::var_os("MAPGUARD_IMAGES_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/images"));
    let archives: Vec<PathBuf> = IMAGES
        .iter()
        .map(|name| dir.join(format!("mapguard-{name}.tar")))
        .collect();
    if let Some(missing) = archives.iter().find(|a| !a.is_file()) {
        let why = format!("{} is missing (make images)", missing.display());
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{test}: {why}; CI=true, where the end-to-end test must run");
        }
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), "\n*** SKIPPED {test}: {why} ***\n");
        return None;
    }
    Some(archives)
}

/// Builds the racing program's image (`tests/cluster/node/racy-image.sh`)
/// and imports it.
fn import_racy_image(cluster: &NodeCluster) {
    let archive = std::env::temp_dir().join(format!("mapguard-racy-{}.tar", std::process::id()));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/cluster/node/racy-image.sh");
    let built = Command::new("bash")
        .arg(&script)
        .arg(&archive)
        .env("MAPGUARD_RACY_IMAGE", RACY_IMAGE)
        .output()
        .expect("run racy-image.sh");
    assert!(
        built.status.success(),
        "racy-image.sh: {}",
        String::from_utf8_lossy(&built.stderr)
    );
    cluster
        .import_image(&archive)
        .expect("import the racing image");
    let _ = std::fs::remove_file(&archive);
}

/// What the test installs and creates, removed on drop (also when a step
/// panics).
struct E2e {
    kubeconfig: PathBuf,
    kubectl: PathBuf,
    /// Namespaces: enforced (kill), plain (no label).
    kill_ns: String,
    plain_ns: String,
    /// Labelled mapguard.io/mode=stop (step 6).
    stop_ns: String,
}

impl E2e {
    fn new(cluster: &NodeCluster) -> Self {
        let kubectl = PathBuf::from(cluster.kubectl().get_program());
        let id = std::process::id();
        Self {
            kubeconfig: cluster.kubeconfig().to_owned(),
            kubectl,
            kill_ns: format!("e2e-kill-{id}"),
            plain_ns: format!("e2e-plain-{id}"),
            stop_ns: format!("e2e-stop-{id}"),
        }
    }

    fn kubectl(&self, args: &[&str]) -> Output {
        Command::new(&self.kubectl)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("run kubectl {}: {e}", args.join(" ")))
    }

    /// kubectl `args`, which must succeed; its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut args = args.to_vec();
        args.extend(["-o", "json"]);
        let out = self.ok(&args);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("kubectl {args:?}: {e}: {out}"))
    }

    /// The node agent's whole log, for a failure message.
    fn agent_log(&self) -> String {
        let out = self.kubectl(&["logs", "-n", SYSTEM, "daemonset/mapguard-enforcer"]);
        format!(
            "the agent's log:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// What the Pods of `namespace` look like, for a failure message.
    fn describe(&self, namespace: &str) -> String {
        let out = self.kubectl(&["describe", "pods", "-n", namespace]);
        let logs = self.kubectl(&[
            "logs",
            "-n",
            namespace,
            "--all-containers",
            "--prefix",
            "--tail=20",
            "-l",
            "app.kubernetes.io/part-of=mapguard",
        ]);
        format!(
            "{}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&logs.stdout)
        )
    }

    /// Polls `check` every second until it gives a value (bounded by `limit`).
    fn wait_for<T>(&self, what: &str, limit: Duration, mut check: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(v) = check() {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not after {limit:?}\n{}",
                self.describe(SYSTEM)
            );
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    /// Step 1: the manifests as they are, then the README's waits (docs/install.md).
    fn install(&self) {
        let manifests = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests");
        let manifests = manifests.to_str().expect("a UTF-8 path");
        say("kubectl apply -k manifests/");
        self.ok(&["apply", "-k", manifests]);
        self.wait_for("job/mapguard-certs-gen complete", ROLLOUT, || {
            let job = self.json(&["get", "-n", SYSTEM, "job/mapguard-certs-gen"]);
            (job["status"]["succeeded"].as_i64() == Some(1)).then_some(())
        });
        say(
            "job/mapguard-certs-gen complete: Secret mapguard-webhook-tls and both caBundles written",
        );
        let secret = self.json(&["get", "-n", SYSTEM, "secret/mapguard-webhook-tls"]);
        assert!(secret["data"]["tls.crt"].is_string(), "{secret}");
        for kind in [
            "validatingwebhookconfiguration",
            "mutatingwebhookconfiguration",
        ] {
            let config = self.json(&["get", kind, "mapguard"]);
            for webhook in config["webhooks"].as_array().expect("webhooks") {
                assert!(
                    webhook["clientConfig"]["caBundle"]
                        .as_str()
                        .is_some_and(|b| !b.is_empty()),
                    "{kind} without a caBundle: {webhook}"
                );
            }
        }
        self.wait_for(
            "deployment/mapguard-webhook: 2 ready replicas",
            ROLLOUT,
            || {
                let d = self.json(&["get", "-n", SYSTEM, "deployment/mapguard-webhook"]);
                (d["status"]["readyReplicas"].as_i64() == Some(2)
                    && d["status"]["updatedReplicas"].as_i64() == Some(2))
                .then_some(())
            },
        );
        say("deployment/mapguard-webhook: 2 of 2 replicas ready");
        self.wait_for("daemonset/mapguard-enforcer ready", ROLLOUT, || {
            let ds = self.json(&["get", "-n", SYSTEM, "daemonset/mapguard-enforcer"]);
            let status = &ds["status"];
            (status["desiredNumberScheduled"].as_i64() == Some(1)
                && status["numberReady"].as_i64() == Some(1))
            .then_some(())
        });
        say("daemonset/mapguard-enforcer: 1 of 1 agents ready");
        for name in IMAGES {
            let image = format!("ghcr.io/mapguard/mapguard-{name}:0.1.0");
            let pods = self.ok(&[
                "get",
                "pods",
                "-n",
                SYSTEM,
                "-o",
                "jsonpath={range .items[*]}{.status.containerStatuses[*].image}{\"\\n\"}{end}",
            ]);
            assert!(
                pods.lines().any(|l| l.contains(&image)),
                "no Pod ran {image}:\n{pods}"
            );
        }
    }

    /// Steps 2 and 3, at once: the same Deployment in both namespaces.
    /// Returns the agent as it was after the first kill.
    fn racing_pods_are_killed_where_asked_and_left_alone_elsewhere(&self) -> AgentSample {
        self.ok(&["create", "namespace", &self.kill_ns]);
        // min-coverage=full: the agent raises the Pod (no coverage
        // annotation: the node's default, sampled) to full, so the first
        // race is caught by the map functions' probes with both call sites
        // whether or not a sampling window of the (shared) binary is open.
        self.ok(&[
            "label",
            "namespace",
            &self.kill_ns,
            "mapguard.io/mode=kill",
            "mapguard.io/min-coverage=full",
        ]);
        self.ok(&["create", "namespace", &self.plain_ns]);
        let delay = format!("{}ms", RACE_START_DELAY.as_millis());
        say(&format!(
            "Deployment racer (delete_assign -start-delay {delay}: it races {delay} after it starts) in {} (mapguard.io/mode=kill) and in {} (no label)",
            self.kill_ns, self.plain_ns
        ));
        for ns in [&self.kill_ns, &self.plain_ns] {
            self.racer(ns);
        }

        // 2. Killed by the agent.
        let (pod, terminated) = self.first_termination(&self.kill_ns);
        let annotations = &pod["metadata"]["annotations"];
        assert_eq!(
            annotations["mapguard.io/mode"].as_str(),
            Some("kill"),
            "the webhook marked the Pod: {annotations}"
        );
        let name = pod["metadata"]["name"]
            .as_str()
            .expect("a Pod name")
            .to_owned();
        let log = self.container_log(&self.kill_ns, &name);
        say(&format!(
            "{}/{name} (annotated mapguard.io/mode=kill by the webhook): its container ended with exit code {} (128 + SIGKILL; reason {}); its whole log:\n{}",
            self.kill_ns,
            terminated["exitCode"],
            terminated["reason"].as_str().unwrap_or("?"),
            indent(&log)
        ));
        assert_eq!(
            terminated["exitCode"].as_i64(),
            Some(137),
            "not SIGKILLed: {terminated}\n{log}\n{}\n{}",
            self.describe(&self.kill_ns),
            self.agent_log()
        );
        // With a start delay the program says when it will race; at once,
        // the record below is what shows it got to its race.
        assert!(
            RACE_START_DELAY.is_zero() || log.contains("racing in"),
            "the program did not get to its race: {log}"
        );
        assert!(
            !log.contains("fatal error: concurrent map"),
            "the Go runtime reported before mapguard acted:\n{log}"
        );

        let record = self.wait_for("a MapViolation in the kill namespace", ROLLOUT, || {
            let list = self.json(&["get", "mapviolations", "-n", &self.kill_ns]);
            list["items"].as_array()?.first().cloned()
        });
        let spec = &record["spec"];
        let status = &record["status"];
        let frames = |key: &str| -> Vec<String> {
            spec[key]
                .as_array()
                .unwrap_or_else(|| panic!("spec.{key}: {record}"))
                .iter()
                .filter_map(|f| f.as_str().map(str::to_owned))
                .collect()
        };
        let (stack, conflicting) = (frames("stack"), frames("conflictingStack"));
        let site = |frames: &[String], function: &str| {
            frames
                .iter()
                .find(|f| f.starts_with(function) && f.contains("delete_assign/main.go:"))
                .cloned()
        };
        let (deleter, assigner) = (
            site(&stack, "main.deleter").or_else(|| site(&conflicting, "main.deleter")),
            site(&stack, "main.assigner").or_else(|| site(&conflicting, "main.assigner")),
        );
        say(&format!(
            "MapViolation {}: {} in Pod {}, action {}, call sites: {} / {}",
            record["metadata"]["name"].as_str().unwrap_or("?"),
            spec["kind"].as_str().unwrap_or("?"),
            status["pod"].as_str().unwrap_or("?"),
            status["action"].as_str().unwrap_or("?"),
            deleter.as_deref().unwrap_or("-"),
            assigner.as_deref().unwrap_or("-"),
        ));
        assert!(
            deleter.is_some() && assigner.is_some(),
            "the record names both call sites (main.deleter and main.assigner): {record}"
        );
        assert_eq!(status["action"].as_str(), Some("killed"), "{record}");
        assert_eq!(status["pod"].as_str(), Some(name.as_str()), "{record}");

        let event = self.wait_for("the Pod's Warning Event MapRace", ROLLOUT, || {
            let list = self.json(&["get", "events.events.k8s.io", "-n", &self.kill_ns]);
            list["items"]
                .as_array()?
                .iter()
                .find(|e| {
                    e["type"] == "Warning"
                        && e["reason"] == "MapRace"
                        && e["regarding"]["name"] == name.as_str()
                })
                .cloned()
        });
        say(&format!(
            "Warning Event on the Pod: MapRace: {}",
            event["note"].as_str().unwrap_or("")
        ));

        let first = self.agent_sample();
        say(&format!("the agent after the first kill: {first}"));

        let audit = self.plugin(&["audit", "-n", &self.kill_ns]);
        say(&format!(
            "kubectl mapguard audit -n {}\n{}",
            self.kill_ns,
            indent(&audit)
        ));
        let record_name = record["metadata"]["name"].as_str().expect("a record name");
        assert!(
            audit.contains(record_name) && audit.contains(&name),
            "kubectl mapguard audit does not list {record_name} of {name}:\n{audit}"
        );

        // 3. Left alone.
        let (pod, terminated) = self.first_termination(&self.plain_ns);
        let name = pod["metadata"]["name"]
            .as_str()
            .expect("a Pod name")
            .to_owned();
        let log = self.container_log(&self.plain_ns, &name);
        let fatal = log
            .lines()
            .find(|l| l.starts_with("fatal error"))
            .unwrap_or("-");
        say(&format!(
            "{}/{name} (no annotation): left alone, exit code {}, the Go runtime's own crash: {fatal}",
            self.plain_ns, terminated["exitCode"]
        ));
        assert_eq!(
            pod["metadata"]["annotations"]["mapguard.io/mode"],
            Value::Null,
            "an unlabelled namespace's Pod is not marked"
        );
        assert_eq!(
            terminated["exitCode"].as_i64(),
            Some(2),
            "the runtime's fatal error exits 2: {terminated}\n{log}"
        );
        assert!(log.contains("fatal error: concurrent map"), "{log}");
        let records = self.json(&["get", "mapviolations", "-n", &self.plain_ns]);
        assert_eq!(
            records["items"].as_array().map(Vec::len),
            Some(0),
            "no record in an unlabelled namespace: {records}"
        );
        say(&format!("no MapViolation in {}", self.plain_ns));
        first
    }

    /// Step 5: the killed Deployment's container restarts (the node's
    /// kubelet restarts a crashed container after at most 1 s:
    /// `crashLoopBackOff.maxContainerRestartPeriod` in scripts/cluster.sh)
    /// while the steps above run; every new container of the same image is
    /// killed again, up to [`KILLS`] restarts. Each container's root is an
    /// overlay mount of its own (a device of its own), but the image's
    /// file is one: the agent keeps one analysis of it (one binary id, one
    /// set of crash-path probes), so `mapguard_enforced_binaries` stays
    /// where it was after the first kill and the agent's memory stays
    /// about the same.
    fn restarts_keep_the_agent_steady(&self, first: AgentSample) {
        let limit = Duration::from_secs(300);
        // Every ended container seen (by id) and how it ended: the status
        // shows the last one only, so it is polled often.
        let mut ended: std::collections::BTreeMap<String, Value> = Default::default();
        let (restarts, terminated) =
            self.wait_for(&format!("{KILLS} kills of the racer"), limit, || {
                let pods = self.json(&["get", "pods", "-n", &self.kill_ns, "-l", "app=racer"]);
                let status = &pods["items"][0]["status"]["containerStatuses"][0];
                for state in ["lastState", "state"] {
                    let t = &status[state]["terminated"];
                    if let Some(id) = t["containerID"].as_str() {
                        ended.insert(id.to_owned(), t["exitCode"].clone());
                    }
                }
                let restarts = status["restartCount"].as_i64()?;
                (restarts >= KILLS).then(|| (restarts, status["lastState"]["terminated"].clone()))
            });
        let count = self.violations(&self.kill_ns);
        let after = self.agent_sample();
        let codes: Vec<String> = ended.values().map(Value::to_string).collect();
        say(&format!(
            "after {restarts} restarts of the racer's container ({} ended containers seen, exit codes {}; the records count {count} violations): {after} (after the first kill: {first}); VmRSS grew {} KiB",
            ended.len(),
            codes.join(" "),
            after.rss_kib as i64 - first.rss_kib as i64
        ));
        assert_eq!(
            terminated["exitCode"].as_i64(),
            Some(137),
            "the restarted container was killed too: {terminated}"
        );
        assert!(
            ended.values().all(|code| code.as_i64() == Some(137)),
            "every restart is killed by the agent (exit 137), none ends on its own: {ended:?}"
        );
        assert!(
            count >= KILLS,
            "each kill is counted in the records: {count} after {restarts} restarts"
        );
        assert!(
            after.binaries <= first.binaries,
            "one analysis of the image's file however many containers run it: {after} after {restarts} restarts, {first} after the first kill"
        );
        assert!(
            after.rss_kib < first.rss_kib + RSS_GROWTH_KIB,
            "the agent's memory grew by more than {RSS_GROWTH_KIB} KiB over {restarts} restarts: {after} (after the first kill: {first})"
        );
    }

    /// The agent's gauges (its ops port through the API server's Pod proxy)
    /// and resident memory (`VmRSS` of its process, seen from the host).
    fn agent_sample(&self) -> AgentSample {
        let pods = self.agent_pods();
        let pod = &pods["items"][0];
        let name = pod["metadata"]["name"].as_str().expect("the agent's Pod");
        let metrics = self.ok(&[
            "get",
            "--raw",
            &format!("/api/v1/namespaces/{SYSTEM}/pods/{name}:9091/proxy/metrics"),
        ]);
        let gauge = |name: &str| {
            metrics
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
                .unwrap_or_else(|| panic!("{name} missing from the agent's /metrics"))
        };
        let container = pod["status"]["containerStatuses"][0]["containerID"]
            .as_str()
            .and_then(|id| id.strip_prefix("containerd://"))
            .expect("the agent's container id")
            .to_owned();
        AgentSample {
            binaries: gauge("mapguard_enforced_binaries"),
            processes: gauge("mapguard_enforced_processes"),
            rss_kib: rss_of_container(&container),
        }
    }

    /// The racing Deployment `racer` in `namespace`.
    fn racer(&self, namespace: &str) {
        let delay = format!("{}ms", RACE_START_DELAY.as_millis());
        let deployment = json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "racer", "namespace": namespace},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": "racer"}},
                "template": {
                    "metadata": {"labels": {"app": "racer"}},
                    "spec": {
                        "terminationGracePeriodSeconds": 1,
                        "containers": [{
                            "name": "racer",
                            "image": RACY_IMAGE,
                            "imagePullPolicy": "Never",
                            "args": ["-start-delay", &delay, "-duration", "60s"],
                        }],
                    },
                },
            },
        });
        self.apply(&deployment);
    }

    /// Step 6: a `stop` Pod's process is stopped (SIGSTOP); the agent's Pod
    /// is deleted and the DaemonSet's new one finds the stopped process and
    /// enforces it again, reporting nothing twice: resumed (SIGCONT), it
    /// races on and is stopped again, counted in the same record.
    fn a_new_agent_takes_over_a_stopped_pod(&self) {
        self.ok(&["create", "namespace", &self.stop_ns]);
        self.ok(&["label", "namespace", &self.stop_ns, "mapguard.io/mode=stop"]);
        self.racer(&self.stop_ns);
        let record = self.wait_for("a MapViolation in the stop namespace", ROLLOUT, || {
            let list = self.json(&["get", "mapviolations", "-n", &self.stop_ns]);
            list["items"].as_array()?.first().cloned()
        });
        assert_eq!(
            record["status"]["action"].as_str(),
            Some("stopped"),
            "{record}"
        );
        let pods = self.json(&["get", "pods", "-n", &self.stop_ns, "-l", "app=racer"]);
        let uid = pods["items"][0]["metadata"]["uid"]
            .as_str()
            .expect("the racer's Pod uid")
            .to_owned();
        let pid = self.wait_for("the stop Pod's stopped process", ROLLOUT, || {
            stopped_process_of_pod(&uid)
        });
        say(&format!(
            "{}/racer (mapguard.io/mode=stop): its process {pid} is stopped (state T), record action {}",
            self.stop_ns, record["status"]["action"]
        ));

        let before = self.violations(&self.stop_ns);
        let old = self.agent_pod();
        self.ok(&["delete", "pod", "-n", SYSTEM, &old]);
        let new = self.wait_for("a new agent Pod, ready", ROLLOUT, || {
            let ds = self.json(&["get", "-n", SYSTEM, "daemonset/mapguard-enforcer"]);
            let name = self.agent_pod();
            (name != old && ds["status"]["numberReady"].as_i64() == Some(1)).then_some(name)
        });
        assert_eq!(
            process_state(pid),
            Some('T'),
            "the process stays stopped while the agent is replaced"
        );
        let pattern = format!("pid={pid} ");
        let line = self.wait_for(
            "the new agent enforcing the stopped process",
            ROLLOUT,
            || {
                let out = self.kubectl(&["logs", "-n", SYSTEM, &new]);
                let log = String::from_utf8_lossy(&out.stdout);
                assert!(
                    !log.contains('\u{1b}'),
                    "terminal escape sequences in the agent's log:\n{log}"
                );
                log.lines()
                    .find(|l| l.contains("enforcing") && l.contains(&pattern))
                    .map(str::to_owned)
            },
        );
        say(&format!(
            "agent Pod {old} deleted; the DaemonSet's new {new} enforces the stopped process (still state T):\n    {}",
            line.trim()
        ));
        // Nothing is reported twice: the new agent found the process
        // stopped and reports nothing of the race its predecessor reported.
        assert_eq!(
            self.violations(&self.stop_ns),
            before,
            "the new agent reported the stopped process's race again"
        );
        let resumed = Command::new("kill")
            .args(["-CONT", &pid.to_string()])
            .status()
            .expect("run kill -CONT");
        assert!(resumed.success(), "kill -CONT {pid}");
        // Resumed, it races on: the new agent reports the race (the
        // record's count goes up) and stops it again, unless the runtime's
        // own crash path, reached by the same race, ends the process before
        // the stop lands (seen here: count 2, process gone).
        let state = self.wait_for(
            "the new agent's report of the resumed race",
            ROLLOUT,
            || {
                let state = process_state(pid);
                match state {
                    Some('T') | None if self.violations(&self.stop_ns) >= 2 => Some(state),
                    _ => None,
                }
            },
        );
        let records = self.ok(&["get", "mapviolations", "-n", &self.stop_ns]);
        let out = self.kubectl(&["logs", "-n", SYSTEM, &new]);
        let log = String::from_utf8_lossy(&out.stdout);
        let about: Vec<&str> = log
            .lines()
            .filter(|l| l.contains(&pid.to_string()))
            .collect();
        say(&format!(
            "kill -CONT {pid}: now {}; records:\n{}\nthe new agent's lines about it:\n{}",
            match state {
                Some(s) => format!("state {s}"),
                None => "gone".to_owned(),
            },
            indent(&records),
            indent(&about.join("\n"))
        ));
        assert!(
            self.violations(&self.stop_ns) >= 2,
            "the resumed process raced on and the new agent reported it (state {state:?})"
        );
        self.ok(&["delete", "deployment", "racer", "-n", &self.stop_ns]);
    }

    /// The violations the records of `namespace` count (one record per
    /// kind and call-site pair: one race can be caught as several kinds).
    fn violations(&self, namespace: &str) -> i64 {
        let list = self.json(&["get", "mapviolations", "-n", namespace]);
        list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| r["status"]["count"].as_i64().unwrap_or(0))
            .sum()
    }

    /// The agent's Pods (a List).
    fn agent_pods(&self) -> Value {
        self.json(&[
            "get",
            "pods",
            "-n",
            SYSTEM,
            "-l",
            "app.kubernetes.io/name=mapguard-enforcer",
        ])
    }

    /// The name of the agent's Pod.
    fn agent_pod(&self) -> String {
        let pods = self.agent_pods();
        pods["items"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["metadata"]["deletionTimestamp"].is_null())
            .and_then(|p| p["metadata"]["name"].as_str())
            .unwrap_or_default()
            .to_owned()
    }

    /// Step 4: with no webhook Pod, Pods are refused exactly where
    /// enforcement was asked for.
    async fn without_a_webhook_only_opted_in_namespaces_refuse_pods(&self, cluster: &NodeCluster) {
        self.ok(&[
            "delete",
            "deployment",
            "racer",
            "-n",
            &self.plain_ns,
            "--wait=false",
        ]);
        self.ok(&[
            "scale",
            "-n",
            SYSTEM,
            "deployment/mapguard-webhook",
            "--replicas=0",
        ]);
        self.wait_for("no webhook Pod left", ROLLOUT, || {
            let pods = self.json(&[
                "get",
                "pods",
                "-n",
                SYSTEM,
                "-l",
                "app.kubernetes.io/name=mapguard-webhook",
            ]);
            pods["items"].as_array()?.is_empty().then_some(())
        });
        say("deployment/mapguard-webhook scaled to 0: no webhook Pod left");

        let client = cluster.client();
        let create = |namespace: String| {
            let pods = Api::<Pod>::namespaced(client.clone(), &namespace);
            let pod: Pod = serde_json::from_value(json!({
                "metadata": {"name": "no-webhook"},
                "spec": {"containers": [{
                    "name": "app", "image": RACY_IMAGE, "imagePullPolicy": "Never",
                    "args": ["-start-delay", "1h"],
                }]},
            }))
            .expect("a Pod literal deserializes");
            async move { pods.create(&PostParams::default(), &pod).await }
        };
        for ns in ["kube-system", SYSTEM, &self.plain_ns] {
            create(ns.to_owned())
                .await
                .unwrap_or_else(|e| panic!("a Pod in {ns} must be created without a webhook: {e}"));
            self.ok(&["delete", "pod", "no-webhook", "-n", ns, "--wait=false"]);
            say(&format!("a Pod in {ns}: created"));
        }
        let refusal = create(self.kill_ns.clone())
            .await
            .expect_err("a Pod in a kill namespace must be refused without a webhook");
        let message = match &refusal {
            kube::Error::Api(status) => status.message.clone(),
            other => other.to_string(),
        };
        say(&format!(
            "a Pod in {} (mapguard.io/mode=kill): refused: {message}",
            self.kill_ns
        ));
        assert!(
            message.contains("failed calling webhook \"mutate.mapguard.io\""),
            "refused for another reason: {refusal}"
        );
    }

    /// The first Pod of `namespace` whose container has ended once, and how
    /// it ended (`lastState.terminated`, or `state.terminated`).
    fn first_termination(&self, namespace: &str) -> (Value, Value) {
        let limit = ROLLOUT + RACE_START_DELAY;
        let deadline = Instant::now() + limit;
        loop {
            let pods = self.json(&["get", "pods", "-n", namespace]);
            for pod in pods["items"].as_array().into_iter().flatten() {
                let status = &pod["status"]["containerStatuses"][0];
                for state in ["lastState", "state"] {
                    let terminated = &status[state]["terminated"];
                    if terminated.is_object() {
                        return (pod.clone(), terminated.clone());
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "no container of {namespace} ended after {limit:?}\n{}",
                self.describe(namespace)
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// The log of the Pod's container run that ended: `--previous` once it
    /// restarted, else the current one.
    ///
    /// A container that ends within milliseconds is restarted again and
    /// again, and the kubelet removes the older ones: kubectl may then
    /// print `unable to retrieve container logs for ...` (and succeed) for a
    /// container that is gone. Such an answer is no log; the next attempt
    /// reads the container that replaced it.
    fn container_log(&self, namespace: &str, pod: &str) -> String {
        const GONE: &str = "unable to retrieve container logs";
        self.wait_for(&format!("the log of {namespace}/{pod}"), ROLLOUT, || {
            for args in [
                &["logs", "-n", namespace, pod, "--previous"][..],
                &["logs", "-n", namespace, pod][..],
            ] {
                let out = self.kubectl(args);
                let text = String::from_utf8_lossy(&out.stdout).into_owned();
                if out.status.success() && !text.starts_with(GONE) {
                    return Some(text);
                }
            }
            None
        })
    }

    fn apply(&self, object: &Value) {
        let file = std::env::temp_dir().join(format!("mapguard-e2e-{}.json", std::process::id()));
        std::fs::write(&file, object.to_string()).expect("write a manifest");
        self.ok(&["apply", "-f", file.to_str().expect("a UTF-8 path")]);
        let _ = std::fs::remove_file(&file);
    }

    /// `kubectl mapguard ARGS` with the plugin built by cargo on `PATH`.
    fn plugin(&self, args: &[&str]) -> String {
        let dir = plugin_dir();
        let path = std::env::join_paths(std::iter::once(dir).chain(std::env::split_paths(
            &std::env::var_os("PATH").unwrap_or_default(),
        )))
        .expect("a PATH");
        let out = Command::new(&self.kubectl)
            .arg("mapguard")
            .args(args)
            .env("PATH", path)
            .env("KUBECONFIG", &self.kubeconfig)
            .output()
            .expect("run kubectl mapguard");
        assert!(
            out.status.success(),
            "kubectl mapguard {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for E2e {
    fn drop(&mut self) {
        // Called from Drop, maybe while unwinding: report, never panic.
        let manifests = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests");
        let manifests = manifests.to_string_lossy().into_owned();
        let steps: [Vec<&str>; 3] = [
            vec![
                "delete",
                "namespace",
                &self.kill_ns,
                &self.plain_ns,
                &self.stop_ns,
                "--ignore-not-found",
                "--wait=false",
            ],
            // docs/install.md's uninstall: the configurations first.
            vec![
                "delete",
                "validatingwebhookconfiguration,mutatingwebhookconfiguration",
                "mapguard",
                "--ignore-not-found",
            ],
            vec![
                "delete",
                "-k",
                &manifests,
                "--ignore-not-found",
                "--timeout=120s",
            ],
        ];
        for args in steps {
            let out = self.kubectl(&args);
            if !out.status.success() {
                eprintln!(
                    "kubectl {}: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
    }
}

/// The folder of `kubectl-mapguard`, built by cargo into this test's
/// target folder: `cargo test` of the workspace (`make test`) builds it with
/// every binary; a test binary cannot run cargo itself (the build lock).
fn plugin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    // target/<profile>/deps/e2e-HASH
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test runs from target/<profile>/deps");
    let plugin = profile_dir.join("kubectl-mapguard");
    assert!(
        plugin.is_file(),
        "{} is missing: cargo build -p kubectl-mapguard (cargo test of the workspace builds it)",
        plugin.display()
    );
    profile_dir.to_owned()
}

/// How many restarts of the racer's container step 5 waits for (each
/// killed).
const KILLS: i64 = 20;
/// How much the agent's resident memory may grow over those restarts.
const RSS_GROWTH_KIB: u64 = 20 * 1024;

/// What the agent holds at one moment.
#[derive(Debug, Clone, Copy)]
struct AgentSample {
    binaries: f64,
    processes: f64,
    rss_kib: u64,
}

impl std::fmt::Display for AgentSample {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "mapguard_enforced_binaries {}, mapguard_enforced_processes {}, agent VmRSS {} KiB",
            self.binaries, self.processes, self.rss_kib
        )
    }
}

/// `VmRSS` of the process of container `id` (the kubelet's cgroupfs paths
/// end in the container id), from the host's /proc.
fn rss_of_container(id: &str) -> u64 {
    let pids = std::fs::read_dir("/proc")
        .expect("read /proc")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok());
    for pid in pids {
        let in_container = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .is_ok_and(|c| c.lines().any(|l| l.ends_with(id)));
        if !in_container {
            continue;
        }
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        if let Some(kib) = status.lines().find_map(|l| {
            l.strip_prefix("VmRSS:")?
                .trim()
                .strip_suffix(" kB")?
                .parse()
                .ok()
        }) {
            return kib;
        }
    }
    panic!("no process of container {id} on the host")
}

/// The host pid of the stopped `delete_assign` of the Pod with `uid`
/// (the kubelet's cgroupfs paths hold `pod<uid>`).
fn stopped_process_of_pod(uid: &str) -> Option<u32> {
    let needle = format!("pod{uid}/");
    std::fs::read_dir("/proc")
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "delete_assign")
                && std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
                    .is_ok_and(|c| c.contains(&needle))
                && process_state(*pid) == Some('T')
        })
}

/// The state letter of `/proc/PID/stat` (after the command's closing paren).
fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.chars().next()
}

/// A line of the narration `make demo-cluster` shows (`--nocapture`).
fn say(line: &str) {
    println!("\n==> {line}");
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}
