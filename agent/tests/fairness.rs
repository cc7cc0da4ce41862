//! Fairness between Pods on one node, for real: a real kube-apiserver and
//! etcd (mapguard-testenv), the node agent for a Node object, Pods bound
//! to it, and Go programs started in their kubelet-shaped cgroups.
//!
//! A hostile Pod floods violation reports (`corrupt/writing_flag_flood`:
//! every map read it makes is a report, and the Go runtime never aborts
//! it); another Pod's program races once (a `kill` Pod: one report). The flooder's reports over its
//! Pod's `--event-rate` are dropped in the kernel and counted for its
//! workload, so the node's one ring buffer keeps room and the other Pod's
//! race is reported. A third Pod starts more processes than
//! `--max-processes-per-pod`: the ones over the bound are not enforced and
//! are counted, the other Pods' processes are; likewise a process of a Pod
//! whose processes hold `--max-probes-per-pod` probe ids.

#[path = "support/agent.rs"]
mod agent;
#[path = "../../enforcer/tests/support/kube_cgroup.rs"]
mod kube_cgroup;
#[path = "support/pod_process.rs"]
mod pod_process;
#[path = "../../enforcer/tests/support/mod.rs"]
mod support;

use std::{
    process::Child,
    time::{Duration, Instant},
};

use agent::{Agent, NodeTest, wait_violation};
use pod_process::{container_of, create_pod, start_in, wait};

const NODE: &str = "mapguard-fair-node";
/// The processes one Pod may have enforced in this test.
const MAX_PROCESSES: usize = 2;

/// A child killed and reaped on drop (a flooder must not outlive a
/// failing test).
struct Kid(Child);

impl Drop for Kid {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_pod_cannot_hide_another_pods_race_or_take_every_slot() {
    let test = "a_flooding_pod_cannot_hide_another_pods_race_or_take_every_slot";
    let Some(NodeTest { env, client, go }) = NodeTest::start(test, NODE).await else {
        return;
    };
    let flood = support::program(go, "corrupt", "writing_flag_flood");
    let racy = support::program(go, "racy", "delete_assign");

    let audit_full = [
        ("mapguard.io/mode", "audit"),
        ("mapguard.io/coverage", "full"),
    ];
    let flooder_pod = create_pod(&client, NODE, "flooder", &audit_full).await;
    // Killed at its first race: one report, the single race of the finding.
    let quiet_pod = create_pod(
        &client,
        NODE,
        "quiet",
        &[
            ("mapguard.io/mode", "kill"),
            ("mapguard.io/coverage", "full"),
        ],
    )
    .await;
    let crowd_pod = create_pod(
        &client,
        NODE,
        "crowd",
        &[
            ("mapguard.io/mode", "audit"),
            ("mapguard.io/coverage", "light"),
        ],
    )
    .await;
    let flooder_cg = container_of(&client, &flooder_pod).await;
    let quiet_cg = container_of(&client, &quiet_pod).await;
    let crowd_cg = container_of(&client, &crowd_pod).await;

    let dir = support::test_dir("fairness");
    let events = dir.join("events.jsonl");
    let bpffs = support::BpfFs::in_dir(&dir);
    let mut agent = Agent::start(
        NODE,
        env.kubeconfig(),
        &events,
        dir.join("agent.log"),
        &[
            &bpffs.flag(),
            "--exec-hold-timeout=10s",
            "--event-rate=50",
            "--event-burst=50",
            &format!("--max-processes-per-pod={MAX_PROCESSES}"),
            // One process with probes of its own per Pod: its first.
            "--max-probes-per-pod=1",
        ],
    );
    agent.wait_ready().await;

    // 1. The flooder and the program that will race once, both waiting
    //    for their signal until they are enforced.
    let flooder = Kid(start_in(
        &flooder_cg,
        &flood,
        &["-duration", "120s", "-wait-signal", "-readers", "2"],
    ));
    let mut quiet = start_in(&quiet_cg, &racy, &["-duration", "30s", "-wait-signal"]);
    let quiet_pid = quiet.id();
    agent.wait_enforced(2).await;
    let flood_started = Instant::now();
    signal(&flooder.0, libc::SIGUSR1);
    let limited = |reason: &str| {
        format!(
            "mapguard_dropped_events_total{{namespace=\"default\",workload=\"flooder\",workload_kind=\"Pod\",reason=\"{reason}\"}}"
        )
    };
    // The flood is on, and its excess is counted for its own workload.
    agent.wait_metric(&limited("rate_limited"), 10_000.0).await;
    println!(
        "\n==> the flooder's reports over --event-rate: {} dropped in the kernel {:?} after its start",
        agent.metric(&limited("rate_limited")),
        flood_started.elapsed()
    );

    // 2. In the middle of the flood, the other Pod's program races: its
    //    report gets through.
    signal(&quiet, libc::SIGUSR1);
    let report = wait_violation(&events, quiet_pid).await;
    println!(
        "\n==> the quiet Pod's race reported during the flood: {} ({})",
        report["kind"], report["pod"]
    );
    assert_eq!(report["pod"], "quiet", "{report}");
    assert!(
        report["stack"]
            .to_string()
            .contains("delete_assign/main.go:"),
        "{report}"
    );
    assert_eq!(report["action"], "killed", "{report}");
    let (status, _) = wait(&mut quiet, Duration::from_secs(60));
    assert_eq!(status, None, "killed at its first race");
    let metrics = agent.text("/metrics");
    assert!(
        !metrics
            .lines()
            .any(|l| l.starts_with("mapguard_dropped_events_total{")
                && l.contains("workload=\"quiet\"")),
        "nothing of the quiet Pod dropped:\n{metrics}"
    );
    // The flooder still runs (the runtime never aborts it) and still floods.
    let before = agent.metric(&limited("rate_limited"));
    agent
        .wait_metric(&limited("rate_limited"), before + 1.0)
        .await;
    drop(flooder);
    let log = agent.log();
    assert!(
        log.contains("violation reports of this Pod dropped") && log.contains("default/flooder"),
        "the flooding Pod is named once in the log:\n{log}"
    );

    // 3. A Pod starting more processes than its bound: the ones over it
    //    are not enforced, counted for its workload.
    agent.wait_enforced(0).await;
    let crowd: Vec<Kid> = (0..MAX_PROCESSES + 1)
        .map(|_| {
            Kid(start_in(
                &crowd_cg,
                &racy,
                &["-duration", "60s", "-wait-signal"],
            ))
        })
        .collect();
    let refusals = "mapguard_pod_limit_refusals_total{namespace=\"default\",workload=\"crowd\",workload_kind=\"Pod\",limit=\"processes\"}";
    agent.wait_metric(refusals, 1.0).await;
    agent.wait_enforced(MAX_PROCESSES).await;
    // Another Pod is not affected by the crowd's bound.
    let other = Kid(start_in(
        &quiet_cg,
        &racy,
        &["-duration", "60s", "-wait-signal"],
    ));
    agent.wait_enforced(MAX_PROCESSES + 1).await;
    // Settled: the crowd's third process stays refused, counted once.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(agent.metric(refusals), 1.0, "{}", agent.text("/metrics"));
    assert_eq!(
        agent.metric("mapguard_enforced_processes"),
        (MAX_PROCESSES + 1) as f64
    );
    println!(
        "\n==> {} processes of one Pod started, {MAX_PROCESSES} enforced, 1 refused; another Pod's process enforced",
        crowd.len()
    );

    // 4. A second process in the Pod whose first holds probe ids (full
    //    coverage): over --max-probes-per-pod, not enforced, counted.
    let probes = "mapguard_pod_limit_refusals_total{namespace=\"default\",workload=\"quiet\",workload_kind=\"Pod\",limit=\"probes\"}";
    //    The exec hook, told the Pod is at its bound, does not register it
    //    in the kernel's process table either (it would have: the Pod's
    //    binary is probed for all its processes since stage 1).
    let hook_enforced = agent.metric("mapguard_exec_enforced_total");
    let second = Kid(start_in(
        &quiet_cg,
        &racy,
        &["-duration", "60s", "-wait-signal"],
    ));
    agent.wait_metric(probes, 1.0).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(agent.metric(probes), 1.0, "{}", agent.text("/metrics"));
    assert_eq!(
        agent.metric("mapguard_exec_enforced_total"),
        hook_enforced,
        "the hook registered a process of a Pod at its bound:\n{}",
        agent.log()
    );
    assert_eq!(
        agent.metric("mapguard_enforced_processes"),
        (MAX_PROCESSES + 1) as f64
    );
    println!("\n==> a second process of a Pod at its probe bound: refused, counted");
    drop(second);
    drop(other);
    drop(crowd);
    agent.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: signals the test's own child.
    unsafe { libc::kill(child.id() as i32, sig) };
}
