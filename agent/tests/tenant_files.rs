//! Files a tenant controls, against the node agent, for real: a real
//! kube-apiserver and etcd (mapguard-testenv), the agent with real BPF,
//! Pods bound to its node, real Go programs in kubelet-shaped cgroups,
//! a FUSE filesystem served by the test, overlayfs mounts.
//!
//! - A process that execs another file while the agent opens its first:
//!   each file gets only the probes its own analysis plans (the kernel's
//!   own list of uprobe links says which, at which offsets), and the
//!   process is enforced as the file it runs now.
//! - A symlink planted in an overlay's upper folder, on the path of a
//!   process's executable, pointing at another tenant's program: the
//!   agent must not take the process's file for that program (whose
//!   processes would then get the wrong analysis: no enforcement, or
//!   breakpoints in the middle of instructions).

#[path = "support/agent.rs"]
mod agent;
#[path = "support/fuse.rs"]
mod fuse;
#[path = "../../enforcer/tests/support/kube_cgroup.rs"]
mod kube_cgroup;
#[path = "support/links.rs"]
mod links;
#[path = "support/pod_process.rs"]
mod pod_process;
#[path = "../../enforcer/tests/support/mod.rs"]
mod support;

use std::{
    io::{BufRead as _, BufReader},
    os::unix::fs::PermissionsExt as _,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use agent::{Agent, NodeTest};
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
};
use mapguard_enforcer::{binary::goelf::ReadLimits, binary::target::BinaryTarget};
use pod_process::{container_of, create_pod, start_in, wait};
use serde_json::json;

const PATIENCE: Duration = Duration::from_secs(30);

/// One test at a time: each runs an API server and an agent.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn pod(client: &Client, name: &str, node: &str, mode: &str) -> Pod {
    let annotations = [("mapguard.io/mode", mode), ("mapguard.io/coverage", "full")];
    create_pod(client, node, name, &annotations).await
}

/// Waits until the agent has put a process under enforcement or failed
/// to.
async fn wait_attach_outcome(agent: &Agent) {
    let deadline = Instant::now() + PATIENCE;
    while agent.metric("mapguard_enforced_processes") < 1.0
        && agent.metric("mapguard_attach_failures_total") < 1.0
    {
        assert!(
            Instant::now() < deadline,
            "the agent neither enforced nor failed:\n{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_go_to_the_file_analysed_not_to_one_execd_since() {
    let test = "probes_go_to_the_file_analysed";
    let _serial = SERIAL.lock().await;
    const NODE: &str = "mapguard-exec-between-node";
    let Some(NodeTest { env, client, go }) = NodeTest::start(test, NODE).await else {
        return;
    };
    // A: analysed; B: what the process runs once its probes attach.
    let a = support::program(go, "clean", "exec_on_signal");
    let b = std::fs::canonicalize(support::program(go, "clean", "private_maps")).expect("B");

    let dir = support::test_dir("exec-between");
    let pod = pod(&client, "exec-between", NODE, "audit").await;
    let cg = container_of(&client, &pod).await;
    let events = dir.join("events.jsonl");
    // Without holds at exec: a held process could not exec in between.
    let mut agent = Agent::start(
        NODE,
        env.kubeconfig(),
        &events,
        dir.join("agent.log"),
        &["--exec-hold=false"],
    );
    agent.wait_ready().await;
    // Mounted after the agent started, so unmounted before it stops (a
    // thread blocked on a request already read is not even killable).
    let fuse = fuse::Fuse::mount(
        &dir.join("fuse"),
        vec![("a".into(), std::fs::read(&a).expect("read A"))],
    );

    // The agent's open of the executable waits until the process runs B.
    let agent_pid = agent.pid();
    fuse.hold(move |r| r.is_open() && r.tgid() == Some(agent_pid));
    let mut cmd = Command::new(fuse.path("a"));
    cmd.arg(&b)
        .args(["-duration", "3s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut process = cg.command(&mut cmd).spawn().expect("start A");
    let pid = process.id();
    let mut ready = String::new();
    // Kept open to the end: B writes to it too.
    let mut stdout = BufReader::new(process.stdout.take().expect("stdout"));
    stdout.read_line(&mut ready).expect("A's first line");
    assert_eq!(ready.trim(), "ready", "A starts");
    fuse.wait_held(PATIENCE, fuse::Request::is_open)
        .unwrap_or_else(|| panic!("the agent never opened A:\n{}", agent.log()));
    // SAFETY: signals the test's own child.
    unsafe { libc::kill(pid as i32, libc::SIGUSR1) };
    let deadline = Instant::now() + PATIENCE;
    while std::fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .as_deref()
        != Some(b.as_path())
    {
        assert!(Instant::now() < deadline, "A never exec'd B");
        std::thread::sleep(Duration::from_millis(10));
    }
    fuse.release();
    wait_attach_outcome(&agent).await;

    // Where each file's probes may go: the offsets its own analysis plans.
    let planned = |path: &Path| -> std::collections::BTreeSet<u64> {
        let target = BinaryTarget::analyse(path, 0, ReadLimits::default()).expect("analyse");
        target
            .points
            .iter()
            .flat_map(|p| [p.file_offset, p.entry_file_offset])
            .collect()
    };
    let (planned_a, planned_b) = (planned(&a), planned(&b));
    assert!(
        !planned_a.is_subset(&planned_b),
        "A's offsets are B's too: the test could not tell them apart"
    );
    let links = links::uprobe_multi_links();
    let on = |path: &Path| -> Vec<&links::UprobeLink> {
        links.iter().filter(|l| l.path == path).collect()
    };
    println!(
        "\n==> pid {pid} exec'd {} while the agent opened {}: uprobe links on A {}, on B {}",
        b.display(),
        fuse.path("a").display(),
        on(&fuse.path("a")).len(),
        on(&b).len()
    );
    for (file, planned) in [(fuse.path("a"), &planned_a), (b.clone(), &planned_b)] {
        for link in on(&file) {
            assert!(
                link.offsets.iter().all(|o| planned.contains(o)),
                "a probe on {} at offsets its analysis does not plan (another file's probes): {link:?}\n{}",
                file.display(),
                agent.log()
            );
        }
    }
    assert_eq!(
        agent.metric("mapguard_attach_failures_total"),
        0.0,
        "attaching failed (A's probes tried on B?):\n{}",
        agent.log()
    );
    // The image it runs now is analysed as itself and enforced.
    assert!(
        on(&b).iter().any(|l| l.pid == pid),
        "the process running B is not probed as B:\n{links:?}\n{}",
        agent.log()
    );
    let (status, stderr) = wait(&mut process, PATIENCE);
    assert_eq!(status, Some(0), "B did not run to its end: {stderr}");
    drop(stdout);

    drop(fuse);
    agent.stop();
    drop(cg);
    drop(env);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symlink_in_an_upper_folder_does_not_name_another_tenants_file() {
    let test = "a_symlink_in_an_upper_folder";
    let _serial = SERIAL.lock().await;
    const NODE: &str = "mapguard-symlink-node";
    let Some(NodeTest { env, client, go }) = NodeTest::start(test, NODE).await else {
        return;
    };
    let dir = support::test_dir("upper-symlink");

    // The attacker's program in its image's layer, and the victim's, a
    // different program of the same size and mode elsewhere on the node.
    let mut attacker = std::fs::read(support::program(go, "racy", "delete_assign")).expect("read");
    let mut victim = std::fs::read(support::program(go, "racy", "delete_delete")).expect("read");
    let size = attacker.len().max(victim.len());
    attacker.resize(size, 0);
    victim.resize(size, 0);
    let (lower, upper, work, rootfs, victim_dir) = (
        dir.join("lower"),
        dir.join("upper"),
        dir.join("work"),
        dir.join("rootfs"),
        dir.join("victim"),
    );
    for d in [&lower.join("bin"), &upper, &work, &rootfs, &victim_dir] {
        std::fs::create_dir_all(d).expect("folder");
    }
    for (path, bytes) in [
        (lower.join("bin/app"), &attacker),
        (victim_dir.join("app"), &victim),
    ] {
        std::fs::write(&path, bytes).expect("write a program");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let overlay = support::Overlay::mount(&lower, &upper, &work, &rootfs);

    let attacker_pod = pod(&client, "attacker", NODE, "off").await;
    let attacker_cg = container_of(&client, &attacker_pod).await;
    let victim_pod = pod(&client, "victim", NODE, "kill").await;
    let victim_cg = container_of(&client, &victim_pod).await;
    let events = dir.join("events.jsonl");
    let bpffs = support::BpfFs::in_dir(&dir);
    let mut agent = Agent::start(
        NODE,
        env.kubeconfig(),
        &events,
        dir.join("agent.log"),
        &[&bpffs.flag()],
    );
    agent.wait_ready().await;

    // The attacker runs its program, then plants a symlink in its upper
    // folder where the program's folder is, to the victim's folder, and
    // asks for enforcement.
    let mut attacker_process = start_in(
        &attacker_cg,
        &rootfs.join("bin/app"),
        &["-wait-signal", "-duration", "60s"],
    );
    std::thread::sleep(Duration::from_millis(300));
    std::os::unix::fs::symlink(&victim_dir, upper.join("bin")).expect("plant the symlink");
    Api::<Pod>::namespaced(client.clone(), "default")
        .patch(
            "attacker",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"mapguard.io/mode": "audit"}}})),
        )
        .await
        .expect("annotate the attacker");
    agent.wait_enforced_at_least(1).await;

    // The victim's program races at once: it must be enforced on as
    // itself (killed by mapguard at its race, not crashed, not left to
    // the Go runtime's fatal error).
    let mut victim_process = start_in(&victim_cg, &victim_dir.join("app"), &["-duration", "20s"]);
    let victim_pid = victim_process.id();
    let report = agent
        .expect_killed(&mut victim_process, "the victim, at its race,")
        .await;
    println!(
        "\n==> the victim's program (pid {victim_pid}) after the attacker's symlink: killed by mapguard"
    );
    assert_eq!(report["pod"], "victim", "{report}");

    let _ = attacker_process.kill();
    let _ = attacker_process.wait();
    agent.stop();
    drop(bpffs);
    drop(overlay);
    drop(attacker_cg);
    drop(victim_cg);
    drop(env);
    let _ = std::fs::remove_dir_all(&dir);
}
