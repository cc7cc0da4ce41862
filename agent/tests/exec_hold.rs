//! Processes of enforced Pods are enforced from their first instruction,
//! for real: a real kube-apiserver and etcd (mapguard-testenv), the node
//! agent for a Node object, a Pod bound to it (`mode: kill`, `coverage:
//! full`), and Go programs started in the Pod's kubelet-shaped cgroup the
//! way runc starts them (join the cgroup, then exec).
//!
//! One API server serves every stage, in order: a program that races at
//! once, in its first milliseconds (`delete_assign` without
//! `-wait-signal`), is held at exec until its probes are in place and
//! killed by mapguard before the Go runtime's own fatal error, with a
//! report naming both call sites; a binary that is not Go is released at
//! once and never held again; a shell that execs a racer is held, then
//! its racer held again and killed; the same racing binary started again is
//! enforced by the kernel at exec, without a hold; a process held in a Pod
//! the agent cannot resolve is released when the agent stops; one held by
//! an agent that is killed outright is released by the next agent, which
//! finds it in the table its predecessor pinned.

#[path = "support/agent.rs"]
mod agent;
#[path = "../../enforcer/tests/support/kube_cgroup.rs"]
mod kube_cgroup;
#[path = "support/pod_process.rs"]
mod pod_process;
#[path = "../../enforcer/tests/support/mod.rs"]
mod support;

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use agent::{Agent, NodeTest, wait_violation};
use kube_cgroup::{Driver, KubeCgroup, Name, Qos, Spec};
use pod_process::{container_of, create_pod, start_in, wait};
use serde_json::Value;

const NODE: &str = "mapguard-exec-node";
const PATIENCE: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_of_enforced_pods_are_enforced_from_their_first_instruction() {
    let test = "processes_of_enforced_pods_are_enforced_from_their_first_instruction";
    let Some(NodeTest { env, client, go }) = NodeTest::start(test, NODE).await else {
        return;
    };
    let racy = support::program(go, "racy", "delete_assign");
    let clean = support::program(go, "clean", "mutex");

    let pod = create_pod(
        &client,
        NODE,
        "starter",
        &[
            ("mapguard.io/mode", "kill"),
            ("mapguard.io/coverage", "full"),
        ],
    )
    .await;
    // The container's cgroup (and with it a kubepods root) exists before
    // the agent starts, as the kubelet's root does on a node.
    let cg = container_of(&client, &pod).await;

    let dir = support::test_dir("exec-hold");
    let events = dir.join("events.jsonl");
    // A bpffs of the test's own for the pinned table of holds.
    let bpffs = support::BpfFs::in_dir(&dir);
    let mut agent = Agent::start(
        NODE,
        env.kubeconfig(),
        &events,
        dir.join("agent.log"),
        // A bound the last stage (a hold that lasts until the agent
        // stops) stays well within on a loaded machine.
        &[&bpffs.flag(), "--exec-hold-timeout=10s"],
    );
    agent.wait_ready().await;
    agent
        .wait_metric("mapguard_exec_watched_cgroups{kind=\"kubepods_root\"}", 1.0)
        .await;

    // 1. A program that races in its first milliseconds: held at exec,
    //    probed, released, killed at its first race.
    let holds_before = holds(&agent, "attached");
    let started = Instant::now();
    let mut racer = start_in(&cg, &racy, &["-duration", "20s"]);
    let report = agent
        .expect_killed(&mut racer, "the program that races at once")
        .await;
    println!(
        "\n==> racing at start (held, then probed): killed after {:?}",
        started.elapsed()
    );
    agent
        .wait_metric(
            "mapguard_exec_holds_total{outcome=\"attached\"}",
            holds_before + 1.0,
        )
        .await;
    assert_both_call_sites(&report);
    let cold = hold_seconds(&agent);
    println!(
        "\n==> held {:.1} ms (a Go binary never seen: analysed, probed, registered)",
        cold.0 * 1e3
    );

    // 2. A binary that is not Go: released at once, never held again.
    let not_go = holds(&agent, "not_go");
    for run in 0..2 {
        let mut cmd = Command::new("/bin/true");
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
        let status = cg
            .command(&mut cmd)
            .spawn()
            .expect("start /bin/true")
            .wait()
            .expect("wait /bin/true");
        assert!(
            status.success(),
            "/bin/true in the Pod (run {run}): {status}"
        );
    }
    assert_eq!(
        holds(&agent, "not_go"),
        not_go + 1.0,
        "a file that is not Go is held once, then known"
    );
    let after = hold_seconds(&agent);
    println!(
        "\n==> /bin/true held {:.1} ms once (not Go), then never again",
        (after.0 - cold.0) * 1e3
    );
    // What the hook costs every exec of the node (it looks the cgroup
    // up, and the file for a watched one), where the kernel counts.
    if let Some((ns, runs)) = hook_run_time(agent.pid()) {
        println!(
            "\n==> the exec hook ran {runs} times, {:.0} ns a run (kernel.bpf_stats_enabled)",
            ns as f64 / runs as f64
        );
    }

    // 2b. An entrypoint that execs the service (`exec "$@"`, as runc init
    //     execs a container's entrypoint): the pid and its start time stay,
    //     the image changes. The shell is held (not Go) and released; the
    //     Go program it becomes (a copy of the racer: a file never seen) is
    //     held again, analysed as itself, probed and killed at its race.
    let via_shell = dir.join("racer-exec-by-shell");
    std::fs::copy(&racy, &via_shell).expect("copy the racer");
    let not_go = holds(&agent, "not_go");
    let attached = holds(&agent, "attached");
    let mut racer = start_in(
        &cg,
        std::path::Path::new("/bin/sh"),
        &[
            "-c",
            "exec \"$0\" \"$@\"",
            via_shell.to_str().expect("a UTF-8 path"),
            "-duration",
            "20s",
        ],
    );
    let report = agent
        .expect_killed(&mut racer, "the Go program a shell exec'd")
        .await;
    assert_both_call_sites(&report);
    assert_eq!(holds(&agent, "not_go"), not_go + 1.0, "the shell's hold");
    assert_eq!(
        holds(&agent, "attached"),
        attached + 1.0,
        "the Go program's hold"
    );
    println!("\n==> a shell that execs the racer: both images held in turn, the racer killed");

    // 3. The same racing binary again: the kernel enforces it at exec,
    //    with no hold.
    let all_holds = total_holds(&agent);
    let at_exec = agent.metric("mapguard_exec_enforced_total");
    let mut racer = start_in(&cg, &racy, &["-duration", "20s"]);
    let pid = racer.id();
    let (status, stderr) = wait(&mut racer, PATIENCE);
    assert_eq!(status, None, "not killed the second time: {stderr}");
    assert!(!stderr.contains("fatal error: concurrent map"), "{stderr}");
    let report = wait_violation(&events, pid).await;
    assert_both_call_sites(&report);
    assert_eq!(
        total_holds(&agent),
        all_holds,
        "the second start was held:\n{}",
        agent.text("/metrics")
    );
    assert_eq!(
        agent.metric("mapguard_exec_enforced_total"),
        at_exec + 1.0,
        "the kernel did not enforce the second start at exec"
    );
    println!("\n==> the same binary again: enforced by the kernel at exec, no hold, killed");

    // 3b. What a hold costs for a binary analysed already: a clean
    //     program first in a `sampled` Pod (analysed, held cold), then in
    //     the `full` Pod (only probed: held briefly), then there again
    //     (enforced at exec, no hold).
    let roots = agent.metric("mapguard_exec_watched_cgroups{kind=\"kubepods_root\"}");
    let sampled = create_pod(
        &client,
        NODE,
        "sampled",
        &[
            ("mapguard.io/mode", "audit"),
            ("mapguard.io/coverage", "sampled"),
        ],
    )
    .await;
    let sampled_cg = container_of(&client, &sampled).await;
    agent
        .wait_metric(
            "mapguard_exec_watched_cgroups{kind=\"kubepods_root\"}",
            roots + 1.0,
        )
        .await;
    let mut held_for = Vec::new();
    for (cgroup, held) in [(&sampled_cg, true), (&cg, true), (&cg, false)] {
        let before = hold_seconds(&agent);
        let mut p = start_in(cgroup, &clean, &["-duration", "100ms"]);
        let (status, stderr) = wait(&mut p, PATIENCE);
        assert_eq!(status, Some(0), "{stderr}");
        let deadline = Instant::now() + PATIENCE;
        while held && hold_seconds(&agent).1 < before.1 + 1.0 {
            assert!(Instant::now() < deadline, "the hold was not counted");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let after = hold_seconds(&agent);
        assert_eq!(after.1 - before.1, f64::from(u8::from(held)), "holds");
        held_for.push((after.0 - before.0) * 1e3);
    }
    println!(
        "\n==> clean Go program: held {:.1} ms cold (sampled Pod), {:.1} ms analysed already (full Pod: probes attached, shared), then not held",
        held_for[0], held_for[1]
    );

    // 4. A Go process in a Pod the agent cannot resolve (no such Pod on
    //    its node) stays held, bounded; stopping the agent releases it.
    let roots = agent.metric("mapguard_exec_watched_cgroups{kind=\"kubepods_root\"}");
    let unknown = KubeCgroup::create(Spec::new(
        Driver::Cgroupfs,
        Qos::BestEffort,
        Name::Containerd,
    ));
    agent
        .wait_metric(
            "mapguard_exec_watched_cgroups{kind=\"kubepods_root\"}",
            roots + 1.0,
        )
        .await;
    let mut held = start_in(&unknown, &clean, &["-duration", "200ms"]);
    let deadline = Instant::now() + PATIENCE;
    while state(held.id()) != Some('T') {
        assert!(
            Instant::now() < deadline,
            "the process was never held (state {:?})",
            state(held.id())
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        state(held.id()),
        Some('T'),
        "still held while its Pod is unknown"
    );
    assert!(agent.metric("mapguard_exec_held_processes") >= 1.0);
    let log = dir.join("agent.log");
    agent.stop();
    let (status, stderr) = wait(&mut held, PATIENCE);
    assert_eq!(
        status,
        Some(0),
        "the held process did not run on once the agent stopped: {stderr}"
    );
    let log = std::fs::read_to_string(log).unwrap_or_default();
    assert!(
        log.contains("releasing the processes held at exec"),
        "the agent did not say it released its holds:\n{log}"
    );
    println!("\n==> a process held in an unresolved Pod ran on when the agent stopped");

    // 5. An agent killed outright leaves its hold; the next one releases
    //    it (past its bound: it cannot resolve the Pod either).
    let flags = [bpffs.flag(), "--exec-hold-timeout=1s".to_string()];
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let mut doomed = Agent::start(
        NODE,
        env.kubeconfig(),
        &events,
        dir.join("doomed.log"),
        &flags,
    );
    doomed.wait_ready().await;
    doomed
        .wait_metric("mapguard_exec_watched_cgroups{kind=\"kubepods_root\"}", 2.0)
        .await;
    let mut orphan = start_in(&unknown, &clean, &["-duration", "200ms"]);
    doomed
        .wait_metric("mapguard_exec_held_processes", 1.0)
        .await;
    doomed.kill();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        state(orphan.id()),
        Some('T'),
        "held by the agent that was killed"
    );
    let mut next = Agent::start(
        NODE,
        env.kubeconfig(),
        &events,
        dir.join("next.log"),
        &flags,
    );
    next.wait_ready().await;
    let (status, stderr) = wait(&mut orphan, PATIENCE);
    assert_eq!(
        status,
        Some(0),
        "the next agent did not release the hold of the one killed: {stderr}\n{}",
        next.log()
    );
    assert!(
        holds(&next, "timeout") >= 1.0,
        "released at its bound:\n{}",
        next.text("/metrics")
    );
    assert!(
        next.log()
            .contains("processes held by an agent that stopped"),
        "{}",
        next.log()
    );
    next.stop();
    println!("\n==> a hold left by an agent killed outright was released by the next agent");

    drop(bpffs);
    drop(unknown);
    drop(cg);
    drop(env);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `holds_total{outcome}`.
fn holds(agent: &Agent, outcome: &str) -> f64 {
    agent.metric(&format!(
        "mapguard_exec_holds_total{{outcome=\"{outcome}\"}}"
    ))
}

/// `mapguard_exec_hold_seconds`: (sum, count).
fn hold_seconds(agent: &Agent) -> (f64, f64) {
    (
        agent.metric("mapguard_exec_hold_seconds_sum"),
        agent.metric("mapguard_exec_hold_seconds_count"),
    )
}

/// Run time and run count of the agent's raw-tracepoint program (the exec
/// hook), from its descriptor's fdinfo; `None` unless the kernel counts
/// (`kernel.bpf_stats_enabled`).
fn hook_run_time(agent: u32) -> Option<(u64, u64)> {
    let dir = std::fs::read_dir(format!("/proc/{agent}/fdinfo")).ok()?;
    dir.filter_map(Result::ok).find_map(|e| {
        let text = std::fs::read_to_string(e.path()).ok()?;
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        // BPF_PROG_TYPE_RAW_TRACEPOINT
        (field("prog_type:")? == 17).then_some(())?;
        let runs = field("run_cnt:").filter(|n| *n > 0)?;
        Some((field("run_time_ns:")?, runs))
    })
}

fn total_holds(agent: &Agent) -> f64 {
    agent.metric("mapguard_exec_holds_total")
}

fn assert_both_call_sites(report: &Value) {
    for side in ["stack", "conflicting_stack"] {
        assert!(
            report[side].as_array().is_some_and(|s| s.iter().any(|f| f
                .as_str()
                .is_some_and(|f| f.contains("delete_assign/main.go:")))),
            "{side} names no call site of the program: {report}"
        );
    }
}

/// The state letter of `/proc/PID/stat` (`T`: stopped).
fn state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}
