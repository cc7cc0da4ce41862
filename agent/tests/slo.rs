//! The SLO rules, alerts and dashboard of `manifests/monitoring/`, checked by
//! the real tools:
//!
//! - `promtool check rules` and `promtool test rules` (the unit tests of
//!   `tests.yaml`: each alert firing and not firing on input series);
//! - the PrometheusRule has the same groups as the plain rules file;
//! - a real Prometheus server (Debian's, `.ci/install-prometheus.sh`)
//!   scrapes a real node agent (`mapguard-agent daemon` against a real
//!   API server from mapguard-testenv) that enforces, in `audit` mode with
//!   `full` coverage, a Deployment's Pod running a racing Go program
//!   (started again and again: each run races, is reported and crashes in
//!   the Go runtime) and another Deployment's Pod running a clean one; every
//!   recording rule, every alert expression and every dashboard query is
//!   evaluated through Prometheus's HTTP API and must return the series
//!   expected: the racing workload's, never the clean one's (and delete
//!   durations of the clean one, whose deletes never stop).
//!
//! Without promtool or Prometheus the tests are skipped loudly, except
//! under `CI=true`, where that fails them.

#[path = "support/agent.rs"]
mod agent;
#[path = "../../enforcer/tests/support/kube_cgroup.rs"]
mod kube_cgroup;
#[path = "support/pod_process.rs"]
mod pod_process;
#[path = "../../enforcer/tests/support/mod.rs"]
mod support;

use std::{
    collections::BTreeSet,
    io::Write as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use agent::{Agent, free_port, http_get};
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, Client, api::PostParams};
use mapguard_testenv::{BoundPod, TestEnv};
use pod_process::{container_of, start_in, wait};
use serde_json::{Value, json};

const NODE: &str = "mapguard-slo-node";
/// How long the API server, the agent and Prometheus may take to follow.
const PROPAGATION: Duration = Duration::from_secs(30);
/// Runs of the racing program: each is one map crash; the crash alerts'
/// 6-hour window needs more than 6 of them to burn 6x (one is the
/// series' first sample, which `rate` cannot count).
const RACY_RUNS: usize = 9;

/// The series of docs/agent.md's picture of a run: (panel title, query).
const CHART_SERIES: [(&str, &str); 4] = [
    (
        "violations per second",
        "sum by (workload) (rate(mapguard_violations_total[5s]))",
    ),
    (
        "map crashes (total)",
        "sum by (workload) (mapguard_map_crashes_total)",
    ),
    (
        "map deletes per second (estimated)",
        "sum by (workload) (rate(mapguard_map_operations_estimated_total{op=\"delete\"}[5s]))",
    ),
    (
        "delete duration p99, seconds",
        "histogram_quantile(0.99, sum by (le, workload) (rate(mapguard_map_delete_duration_seconds_bucket[5s])))",
    ),
];

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs_f64()
}

/// The series docs/agent.md shows from a run.
const MAIN_SERIES: [(&str, &str); 7] = [
    (
        "violations/s (5m)",
        "namespace_workload:mapguard_violations:rate5m",
    ),
    (
        "deletes/s (5m, estimated)",
        "namespace_workload:mapguard_map_deletes:rate5m",
    ),
    (
        "illegal-delete ratio (5m)",
        "namespace_workload:mapguard_illegal_deletes:ratio_rate5m",
    ),
    (
        "map crashes/s (1h)",
        "namespace_workload:mapguard_map_crashes:rate1h",
    ),
    (
        "delete duration p50 (s)",
        "histogram_quantile(0.5, sum by (le, workload) (rate(mapguard_map_delete_duration_seconds_bucket[5m])))",
    ),
    (
        "delete duration p99 (s)",
        "histogram_quantile(0.99, sum by (le, workload) (rate(mapguard_map_delete_duration_seconds_bucket[5m])))",
    ),
    (
        "deletes timed",
        "sum by (workload) (mapguard_map_delete_duration_seconds_count)",
    ),
];

fn monitoring() -> PathBuf {
    support::workspace().join("manifests/monitoring")
}

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// A binary of Debian's prometheus packages (`$MAPGUARD_PROMETHEUS_BIN`
/// folder, else where `.ci/install-prometheus.sh` unpacks them, else PATH);
/// `None` after a loud skip line, a panic under `CI=true`.
fn prometheus_tool(name: &str, test: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("MAPGUARD_PROMETHEUS_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/mapguard/prometheus/usr/bin"));
    let found = Some(dir.join(name)).filter(|p| p.is_file()).or_else(|| {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(name))
                .find(|p| p.is_file())
        })
    });
    if found.is_none() {
        let why = format!(
            "{name} is not installed ({} or PATH; .ci/install-prometheus.sh installs it)",
            dir.display()
        );
        assert!(!ci(), "{test}: {why}; CI=true, where it must run");
        let _ = writeln!(std::io::stderr(), "\n*** SKIPPED {test}: {why} ***\n");
    }
    found
}

#[test]
fn promtool_checks_the_rules_and_runs_their_unit_tests() {
    let test = "promtool_checks_the_rules_and_runs_their_unit_tests";
    let Some(promtool) = prometheus_tool("promtool", test) else {
        return;
    };
    for args in [
        ["check", "rules", "rules.yaml"],
        ["test", "rules", "tests.yaml"],
    ] {
        let out = Command::new(&promtool)
            .args(args)
            .current_dir(monitoring())
            .output()
            .expect("run promtool");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && text.contains("SUCCESS"),
            "promtool {}: {}\n{text}",
            args.join(" "),
            out.status
        );
    }
}

fn yaml(name: &str) -> yaml_serde::Value {
    let path = monitoring().join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    yaml_serde::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn the_prometheusrule_has_the_same_groups_as_the_rules_file() {
    let rules = yaml("rules.yaml");
    let resource = yaml("prometheusrule.yaml");
    assert_eq!(resource["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(resource["kind"], "PrometheusRule");
    assert!(
        rules["groups"].as_sequence().is_some_and(|g| !g.is_empty()),
        "rules.yaml has no groups"
    );
    assert_eq!(
        resource["spec"]["groups"], rules["groups"],
        "prometheusrule.yaml and rules.yaml must hold the same groups"
    );
}

/// One rule of `rules.yaml`.
struct Rule {
    /// The recorded series or the alert's name.
    name: String,
    alert: bool,
    severity: Option<String>,
    expr: String,
}

fn rules() -> Vec<Rule> {
    let rules = yaml("rules.yaml");
    let groups = rules["groups"].as_sequence().expect("groups");
    groups
        .iter()
        .flat_map(|g| g["rules"].as_sequence().expect("rules").iter())
        .map(|r| {
            let alert = r["alert"].as_str();
            Rule {
                name: alert
                    .or(r["record"].as_str())
                    .expect("record or alert")
                    .to_string(),
                alert: alert.is_some(),
                severity: r["labels"]["severity"].as_str().map(str::to_string),
                expr: r["expr"].as_str().expect("expr").to_string(),
            }
        })
        .collect()
}

/// Every query of the dashboard's panels, with Grafana's variables given
/// values a query can run with.
fn dashboard_queries() -> Vec<(String, String)> {
    let path = monitoring().join("dashboard.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let dashboard: Value = serde_json::from_str(&text).expect("dashboard.json is JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(!panels.is_empty(), "the dashboard has no panels");
    panels
        .iter()
        .flat_map(|p| {
            let title = p["title"].as_str().unwrap_or("?").to_string();
            p["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .map(move |t| (title.clone(), t["expr"].as_str().unwrap_or("").to_string()))
        })
        .map(|(title, expr)| {
            let expr = expr
                .replace("$__rate_interval", "10m")
                .replace("$__range", "10m")
                .replace("$namespace", ".*")
                .replace("$workload", ".*");
            (title, expr)
        })
        .collect()
}

/// Which workloads a rule's or panel's query must return (and no other),
/// for this test's two workloads: `checkout` races and crashes, `catalog`
/// is clean; `None`: it must return nothing (health alerts of a healthy
/// agent) or needs no workload label (checked for being non-empty).
fn expected_workloads(name: &str) -> Expected {
    let racy = Expected::Workloads(&["checkout"]);
    if name.contains("delete_duration") {
        // The racing runs last milliseconds: a timing window may miss them.
        Expected::Includes(&["catalog"])
    } else if name.contains("map_deletes") || name.contains("operations") {
        Expected::Workloads(&["catalog", "checkout"])
    } else if name.contains("violation")
        || name.contains("illegal_deletes")
        || name.contains("crashes")
        || name.starts_with("MapguardIllegalDeletes")
        || name.starts_with("MapguardMapCrash")
    {
        racy
    } else if name.starts_with("MapguardProbeChecksIncomplete") {
        // The racing program in audit mode reports a race on most
        // iterations: on a loaded machine the ring buffer can overflow,
        // and the alert rightly says so. Nothing else may be incomplete.
        Expected::NothingBut("check", &["event_lost"])
    } else if name.starts_with("Mapguard") {
        Expected::Nothing
    } else {
        Expected::Something
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Expected {
    Workloads(&'static [&'static str]),
    /// These workloads with a value above zero, maybe others.
    Includes(&'static [&'static str]),
    Nothing,
    /// Nothing, or only series whose label `.0` is one of `.1`.
    NothingBut(&'static str, &'static [&'static str]),
    Something,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_evaluates_every_rule_and_panel_on_a_real_node_agent() {
    let test = "a_real_prometheus_evaluates_every_rule_and_panel_on_a_real_node_agent";
    if !support::require_bpf(test) || !kube_cgroup::require(test) {
        return;
    }
    let Some(prometheus_bin) = prometheus_tool("prometheus", test) else {
        return;
    };
    let Some(env) = TestEnv::start_or_skip(test).await else {
        return;
    };
    let client = env.client();
    env.create_node(NODE).await.expect("create the Node");
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(client.clone());
    crds.create(&PostParams::default(), &mapguard_api::resource::crd())
        .await
        .expect("install the MapViolation CRD");
    let dir = temp_dir();

    // Two Deployments' Pods (owned by their ReplicaSets, as the Deployment
    // controller makes them), audited with full coverage.
    let checkout = create_pod(&client, "payments", "checkout", "7d9f8b6c5d").await;
    let catalog = create_pod(&client, "shop", "catalog", "5c6b7d8f9a").await;
    let checkout_cg = container_of(&client, &checkout).await;
    let catalog_cg = container_of(&client, &catalog).await;

    // Delete durations timed 30% of the time (100 ms in 10 s by default).
    let mut agent = Agent::start(
        NODE,
        env.kubeconfig(),
        &dir.join("events.jsonl"),
        dir.join("agent.log"),
        &[
            "--delete-latency-on",
            "300ms",
            "--delete-latency-period",
            "1s",
        ],
    );
    agent.wait_ready().await;
    let prometheus = Prometheus::start(&prometheus_bin, &dir, agent.ops);
    prometheus.wait_ready().await;
    prometheus.wait_scraped().await;
    let started = unix_now();

    let go = support::versions().last().copied().expect("a Go release");
    let clean = support::program(go, "clean", "mutex");
    let racy = support::program(go, "racy", "delete_assign");
    let mut clean_run = start_in(&catalog_cg, &clean, &["-duration", "300s"]);
    agent.wait_enforced(1).await;
    for run in 0..RACY_RUNS {
        let mut p = start_in(&checkout_cg, &racy, &["-duration", "20s", "-wait-signal"]);
        agent.wait_enforced(2).await;
        // SAFETY: signals the test's own child.
        unsafe { libc::kill(p.id() as i32, libc::SIGUSR1) };
        let (code, stderr) = wait(&mut p, Duration::from_secs(30));
        assert_eq!(
            code,
            Some(2),
            "run {run}: in audit mode the Go runtime itself ends the racing program: {stderr}"
        );
        assert!(
            stderr.contains("fatal error: concurrent map"),
            "run {run}: {stderr}"
        );
        // Each crash in a scrape of its own (1 s scrapes).
        agent.wait_enforced(1).await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }

    // The agent's own series first, with their labels.
    let metrics = agent.text("/metrics");
    for want in [
        r#"mapguard_violations_total{namespace="payments",workload="checkout",workload_kind="Deployment",kind="#,
        r#"mapguard_map_crashes_total{namespace="payments",workload="checkout",workload_kind="Deployment",message_class="concurrent_map_writes"}"#,
        r#"mapguard_map_operations_observed_total{namespace="shop",workload="catalog",workload_kind="Deployment",op="delete",coverage="full"}"#,
        r#"mapguard_map_operations_estimated_total{namespace="payments",workload="checkout",workload_kind="Deployment",op="delete"}"#,
        r#"mapguard_map_delete_duration_seconds_count{namespace="shop",workload="catalog",workload_kind="Deployment"}"#,
    ] {
        assert!(metrics.contains(want), "/metrics lacks {want}:\n{metrics}");
    }
    assert!(
        !metrics
            .lines()
            .any(|l| l.starts_with("mapguard_violations_total") && l.contains("catalog")),
        "the clean program has violations:\n{metrics}"
    );

    // Every recording rule and alert expression, then every panel query,
    // until each returns what it should (the recording group runs every
    // 30 s; the first evaluation may precede the last crash).
    let mut queries: Vec<(String, String, Expected)> = rules()
        .into_iter()
        .map(|r| {
            let what = match (&r.severity, r.alert) {
                (Some(s), true) => format!("alert {} ({s})", r.name),
                _ => format!("recording rule {}", r.name),
            };
            let expected = expected_workloads(&r.name);
            (what, r.expr, expected)
        })
        .collect();
    for (title, expr) in dashboard_queries() {
        let expected = expected_workloads(&expr);
        queries.push((format!("panel {title:?}"), expr, expected));
    }
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut pending = queries;
    loop {
        let mut failures = Vec::new();
        for (what, expr, expected) in &pending {
            let result = prometheus.query(expr);
            if let Err(why) = check(&result, *expected) {
                failures.push((what.clone(), expr.clone(), *expected, why));
            }
        }
        if failures.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            let text: Vec<String> = failures
                .iter()
                .map(|(what, expr, expected, why)| {
                    format!("{what}: {expr}\n  expected {expected:?}: {why}")
                })
                .collect();
            let context: Vec<String> = [
                "namespace_workload:mapguard_illegal_deletes:ratio_rate5m",
                "namespace_workload:mapguard_violations:rate5m",
                "namespace_workload:mapguard_map_deletes:rate5m",
                "namespace_workload:mapguard_map_crashes:rate1h",
            ]
            .iter()
            .map(|q| format!("{q} = {:?}", prometheus.query(q)))
            .collect();
            panic!(
                "queries through Prometheus's HTTP API did not return the expected series:\n{}\n\nfor reference:\n{}",
                text.join("\n"),
                context.join("\n")
            );
        }
        pending = failures
            .into_iter()
            .map(|(what, expr, expected, _)| (what, expr, expected))
            .collect();
        tokio::time::sleep(Duration::from_secs(2)).await;
    }

    // The main series over the run, for docs/agent.md's picture
    // (scripts/slo-chart.py draws them).
    if let Some(out) = std::env::var_os("MAPGUARD_SLO_SERIES_OUT") {
        let end = unix_now();
        let panels: Vec<Value> = CHART_SERIES
            .iter()
            .map(|(title, expr)| {
                let series = prometheus
                    .query_range(expr, started, end)
                    .unwrap_or_else(|e| panic!("{expr}: {e}"));
                json!({"title": title, "series": series})
            })
            .collect();
        std::fs::write(&out, Value::Array(panels).to_string()).expect("write the series");
    }

    // What the main series say (shown with --nocapture).
    for (what, expr) in MAIN_SERIES {
        let values: Vec<String> = prometheus
            .query(expr)
            .unwrap_or_default()
            .iter()
            .map(|s| {
                format!(
                    "{}={}",
                    s["metric"]["workload"].as_str().unwrap_or("?"),
                    s["value"][1].as_str().unwrap_or("?")
                )
            })
            .collect();
        println!("{what:<32} {}", values.join("  "));
    }

    let _ = clean_run.kill();
    let _ = clean_run.wait();
    drop(prometheus);
    agent.stop();
    drop(env);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Whether a query's result vector matches what is expected: for
/// `Workloads`, the workloads with a value above zero are exactly those
/// (a series at zero, such as a rate of an operation not seen lately, is
/// no sign either way).
fn check(result: &Result<Vec<Value>, String>, expected: Expected) -> Result<(), String> {
    let series = result.as_ref().map_err(Clone::clone)?;
    let got = || format!("got {}", Value::Array(series.clone()));
    match expected {
        Expected::Nothing if series.is_empty() => Ok(()),
        Expected::NothingBut(label, allowed)
            if series.iter().all(|s| {
                s["metric"][label]
                    .as_str()
                    .is_some_and(|v| allowed.contains(&v))
            }) =>
        {
            Ok(())
        }
        Expected::Something if !series.is_empty() => Ok(()),
        Expected::Workloads(want) | Expected::Includes(want) => {
            let positive: BTreeSet<&str> = series
                .iter()
                .filter(|s| {
                    s["value"][1]
                        .as_str()
                        .and_then(|v| v.parse::<f64>().ok())
                        .is_some_and(|v| v > 0.0)
                })
                .filter_map(|s| s["metric"]["workload"].as_str())
                .collect();
            let want: BTreeSet<&str> = want.iter().copied().collect();
            let matches = match expected {
                Expected::Includes(_) => positive.is_superset(&want),
                _ => positive == want,
            };
            if matches { Ok(()) } else { Err(got()) }
        }
        _ => Err(got()),
    }
}

fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mapguard-slo-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the test folder");
    dir
}

/// Creates namespace `ns` (if needed) and a Pod of Deployment `name`, as
/// its ReplicaSet `name-hash` would, bound to the node, audited with full
/// coverage.
async fn create_pod(client: &Client, ns: &str, name: &str, hash: &str) -> Pod {
    BoundPod::new(ns, &format!("{name}-{hash}-x7k2p"), NODE)
        .labels(&[("app", name), ("pod-template-hash", hash)])
        .annotations(&[
            ("mapguard.io/mode", "audit"),
            ("mapguard.io/coverage", "full"),
        ])
        .controlled_by_replicaset(
            &format!("{name}-{hash}"),
            "6f1b6a34-0000-4000-8000-000000000001",
        )
        .create(client)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// A Prometheus server on 127.0.0.1 scraping the agent every second, with
/// `rules.yaml` loaded; killed when dropped.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl Prometheus {
    fn start(binary: &Path, dir: &Path, target: SocketAddr) -> Prometheus {
        let addr = free_port();
        let config = dir.join("prometheus.yml");
        let rules = monitoring().join("rules.yaml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {}\n\
                 scrape_configs:\n  - job_name: mapguard-enforcer\n    static_configs:\n      - targets: ['{target}']\n",
                rules.display()
            ),
        )
        .expect("write prometheus.yml");
        let log = dir.join("prometheus.log");
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("prometheus log"))
            .spawn()
            .expect("start prometheus");
        Prometheus { child, addr, log }
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + PROPAGATION;
        while http_get(self.addr, "/-/ready").is_none_or(|(status, _)| status != 200) {
            assert!(
                Instant::now() < deadline,
                "Prometheus never became ready:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits for the first scrape of the agent (`up` 1).
    async fn wait_scraped(&self) {
        let deadline = Instant::now() + PROPAGATION;
        loop {
            let up = self.query(r#"up{job="mapguard-enforcer"} == 1"#);
            if up.as_ref().is_ok_and(|v| !v.is_empty()) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "Prometheus never scraped the agent: {up:?}\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// An instant query's result vector (`/api/v1/query`).
    fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        self.api(&format!("/api/v1/query?query={}", percent_encode(expr)))
    }

    /// A range query's result matrix, one point a second
    /// (`/api/v1/query_range`).
    fn query_range(&self, expr: &str, start: f64, end: f64) -> Result<Vec<Value>, String> {
        self.api(&format!(
            "/api/v1/query_range?query={}&start={start:.3}&end={end:.3}&step=1",
            percent_encode(expr)
        ))
    }

    fn api(&self, path: &str) -> Result<Vec<Value>, String> {
        let (status, body) = http_get(self.addr, path).ok_or("no answer")?;
        let answer: Value =
            serde_json::from_str(&body).map_err(|e| format!("HTTP {status}: {e}: {body}"))?;
        if answer["status"] != "success" {
            return Err(format!("HTTP {status}: {body}"));
        }
        answer["data"]["result"]
            .as_array()
            .cloned()
            .ok_or_else(|| format!("no result: {body}"))
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
