//! One image, many containers: the node agent analyses an image's Go
//! binary once, however many containers run it, for real — a real
//! kube-apiserver and etcd (mapguard-testenv), the node agent with its
//! exec hook, a Pod bound to its node (`mode: kill`, `coverage: full`),
//! and the same racing Go program started from three overlayfs mounts of
//! one lower folder, as a container runtime mounts one image for each
//! container (each mount a device of its own).
//!
//! Each start is held at exec (the hook names the file by its overlay
//! inode, new for every mount), enforced and killed at its race; the agent
//! keeps ONE analysed binary: the kernel places uprobes on the layer's
//! file, shared by the mounts, and so does the agent's key. Once no
//! process runs it, the analysis and its probes are dropped
//! (`--evict-binaries-after`), and the next start is held and analysed
//! again.

#[path = "support/agent.rs"]
mod agent;
#[path = "../../enforcer/tests/support/kube_cgroup.rs"]
mod kube_cgroup;
#[path = "support/pod_process.rs"]
mod pod_process;
#[path = "../../enforcer/tests/support/mod.rs"]
mod support;

use std::{
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use agent::{Agent, NodeTest};
use pod_process::{container_of, create_pod, start_in};

const NODE: &str = "mapguard-overlay-node";
const PATIENCE: Duration = Duration::from_secs(30);
/// Overlay mounts of the one lower folder (containers of one image).
const CONTAINERS: usize = 3;
/// `--evict-binaries-after`: longer than the test takes between two
/// processes of the image, so one analysis serves them all.
const EVICT_AFTER: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_of_one_image_share_one_analysis() {
    let test = "containers_of_one_image_share_one_analysis";
    let Some(NodeTest { env, client, go }) = NodeTest::start(test, NODE).await else {
        return;
    };
    let racy = support::program(go, "racy", "delete_assign");

    let dir = support::test_dir("overlay");
    let image = Image::mount(&dir, &racy, CONTAINERS);
    let devices: std::collections::BTreeSet<u64> = image
        .programs
        .iter()
        .map(|p| std::fs::metadata(p).expect("the program in a mount").dev())
        .collect();
    assert_eq!(
        devices.len(),
        CONTAINERS,
        "each overlay mount is a device of its own (what made every container a new binary)"
    );

    let pod = create_pod(
        &client,
        NODE,
        "image",
        &[
            ("mapguard.io/mode", "kill"),
            ("mapguard.io/coverage", "full"),
        ],
    )
    .await;
    let cg = container_of(&client, &pod).await;

    let events = dir.join("events.jsonl");
    // A bpffs of the test's own for the pinned table of holds.
    let bpffs = support::BpfFs::in_dir(&dir);
    let mut agent = Agent::start(
        NODE,
        env.kubeconfig(),
        &events,
        dir.join("agent.log"),
        &[
            &bpffs.flag(),
            &format!("--evict-binaries-after={}s", EVICT_AFTER.as_secs()),
        ],
    );
    agent.wait_ready().await;
    agent
        .wait_metric("mapguard_exec_watched_cgroups{kind=\"kubepods_root\"}", 1.0)
        .await;

    for (n, program) in image.programs.iter().enumerate() {
        let attached = agent.metric("mapguard_exec_holds_total{outcome=\"attached\"}");
        let mut racer = start_in(&cg, program, &["-duration", "20s"]);
        let pid = racer.id();
        agent
            .expect_killed(&mut racer, &format!("the racer of mount {n}"))
            .await;
        // Held at exec (a new overlay inode to the hook), then settled.
        agent
            .wait_metric(
                "mapguard_exec_holds_total{outcome=\"attached\"}",
                attached + 1.0,
            )
            .await;
        // Counted at the next reconcile (every 200 ms).
        std::thread::sleep(Duration::from_millis(600));
        let binaries = agent.metric("mapguard_enforced_binaries");
        println!(
            "\n==> {} (mount {n} of {CONTAINERS}): killed, pid {pid}; mapguard_enforced_binaries {binaries}",
            program.display()
        );
        assert_eq!(
            binaries,
            1.0,
            "one analysis of the image's file, however many mounts run it:\n{}",
            agent.text("/metrics")
        );
        assert_eq!(
            agent.metric("mapguard_evicted_binaries_total"),
            0.0,
            "dropped in between (the loop took longer than {EVICT_AFTER:?}): one binary proves nothing"
        );
    }

    // No process runs the image any more: its analysis goes, counted.
    let started = Instant::now();
    while agent.metric("mapguard_enforced_binaries") > 0.0 {
        assert!(
            started.elapsed() < EVICT_AFTER + PATIENCE,
            "the analysis of a binary no process runs was kept:\n{}",
            agent.text("/metrics")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(agent.metric("mapguard_evicted_binaries_total"), 1.0);
    println!(
        "\n==> no process of the image left: its analysis dropped after {:.1?} (bound {EVICT_AFTER:?}); mapguard_enforced_binaries 0",
        started.elapsed()
    );
    // The image again, from a mount the exec hook knew: held again (the
    // hook forgot the dropped binary), analysed again, killed.
    let attached = agent.metric("mapguard_exec_holds_total{outcome=\"attached\"}");
    let mut racer = start_in(&cg, &image.programs[0], &["-duration", "20s"]);
    agent
        .expect_killed(&mut racer, "the racer after the eviction")
        .await;
    assert_eq!(
        agent.metric("mapguard_exec_holds_total{outcome=\"attached\"}"),
        attached + 1.0,
        "held again at exec after its binary was dropped"
    );
    agent.wait_metric("mapguard_enforced_binaries", 1.0).await;
    println!("\n==> the image again: held, analysed again, killed; mapguard_enforced_binaries 1");

    agent.stop();
    drop(bpffs);
    drop(image);
    drop(cg);
    drop(env);
    let _ = std::fs::remove_dir_all(&dir);
}

/// One lower folder holding a program and `n` overlay mounts of it, each
/// with its own upper folder; unmounted on drop.
struct Image {
    /// Unmounted on drop.
    mounts: Vec<support::Overlay>,
    /// The program's path in each mount.
    programs: Vec<PathBuf>,
}

impl Image {
    fn mount(dir: &Path, program: &Path, n: usize) -> Image {
        let lower = dir.join("lower");
        std::fs::create_dir_all(&lower).expect("lower folder");
        let name = program.file_name().expect("a program name");
        std::fs::copy(program, lower.join(name)).expect("copy the program into the layer");
        let mut image = Image {
            mounts: Vec::new(),
            programs: Vec::new(),
        };
        for i in 0..n {
            let (upper, work, point) = (
                dir.join(format!("upper{i}")),
                dir.join(format!("work{i}")),
                dir.join(format!("rootfs{i}")),
            );
            for d in [&upper, &work, &point] {
                std::fs::create_dir_all(d).expect("overlay folder");
            }
            image
                .mounts
                .push(support::Overlay::mount(&lower, &upper, &work, &point));
            image.programs.push(point.join(name));
        }
        image
    }
}
