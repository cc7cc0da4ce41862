//! The node agent stays alive for everyone while a tenant's file does not
//! answer, and says so when it does not, for real: a real kube-apiserver
//! and etcd (mapguard-testenv), the agent with real BPF and its exec hook,
//! a Pod bound to its node, real Go programs in its kubelet-shaped cgroup.
//!
//! - A process whose executable lives on a filesystem that never answers
//!   the agent (a FUSE server of the test's own that leaves every request
//!   of the agent's unanswered, as a dead network mount does) must not
//!   stop the enforcement of a racing program started after it; the
//!   blocked operation is given up after `--file-timeout`, counted.
//! - `/healthz` fails once the enforcement loop stops going round (its
//!   thread stopped, alone, with ptrace) and recovers when it goes on.

#[path = "support/agent.rs"]
mod agent;
#[path = "support/fuse.rs"]
mod fuse;
#[path = "../../enforcer/tests/support/kube_cgroup.rs"]
mod kube_cgroup;
#[path = "support/pod_process.rs"]
mod pod_process;
#[path = "../../enforcer/tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use agent::{Agent, NodeTest, http_get};
use mapguard_testenv::TestEnv;
use pod_process::{container_of, create_pod, start_in};

const PATIENCE: Duration = Duration::from_secs(30);

/// One test at a time: each runs an API server and an agent.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_never_answers_does_not_stop_enforcement() {
    let test = "a_file_that_never_answers";
    let _serial = SERIAL.lock().await;
    const NODE: &str = "mapguard-dead-fs-node";
    let Some(NodeTest { env, client, go }) = NodeTest::start(test, NODE).await else {
        return;
    };
    let racy = support::program(go, "racy", "delete_assign");

    let dir = support::test_dir("dead-fs");
    let pod = create_pod(
        &client,
        NODE,
        "dead-fs",
        &[
            ("mapguard.io/mode", "kill"),
            ("mapguard.io/coverage", "full"),
        ],
    )
    .await;
    let cg = container_of(&client, &pod).await;
    let events = dir.join("events.jsonl");
    let bpffs = support::BpfFs::in_dir(&dir);
    let file_timeout = Duration::from_secs(3);
    let mut agent = Agent::start(
        NODE,
        env.kubeconfig(),
        &events,
        dir.join("agent.log"),
        &[
            &bpffs.flag(),
            &format!("--file-timeout={}s", file_timeout.as_secs()),
            "--healthz-stall-after=2s",
        ],
    );
    agent.wait_ready().await;
    agent
        .wait_metric("mapguard_exec_watched_cgroups{kind=\"kubepods_root\"}", 1.0)
        .await;

    // Mounted after the agent started, so unmounted before it stops (a
    // thread blocked on a request already read is not even killable).
    let fuse = fuse::Fuse::mount(
        &dir.join("fuse"),
        vec![(
            "app".into(),
            std::fs::read(&racy).expect("read the program"),
        )],
    );
    // From now on the filesystem answers nothing the agent asks.
    let agent_pid = agent.pid();
    fuse.hold(move |r| r.tgid() == Some(agent_pid));
    let mut stuck = start_in(
        &cg,
        &fuse.path("app"),
        &["-wait-signal", "-duration", "60s"],
    );
    fuse.wait_held(PATIENCE, |_| true)
        .unwrap_or_else(|| panic!("the agent never touched the file:\n{}", agent.log()));

    // A racing program started after it is enforced on: killed at its
    // race by mapguard, not by the Go runtime's fatal error.
    let mut racer = start_in(&cg, &racy, &["-duration", "20s"]);
    let racer_pid = racer.id();
    agent
        .expect_killed(
            &mut racer,
            "the racer, while another executable's file did not answer,",
        )
        .await;

    // The blocked operation is given up, counted; the loop goes round.
    agent
        .wait_metric("mapguard_attach_failures_total{reason=\"timeout\"}", 1.0)
        .await;
    assert!(
        agent.metric("mapguard_stuck_file_operations") >= 1.0,
        "{}",
        agent.text("/metrics")
    );
    let (status, body) = http_get(agent.ops, "/healthz").expect("/healthz answers");
    println!(
        "\n==> a file that never answers the agent: the racer started after it killed (pid {racer_pid}); timeouts {}, stuck operations {}, /healthz {status}",
        agent.metric("mapguard_attach_failures_total{reason=\"timeout\"}"),
        agent.metric("mapguard_stuck_file_operations")
    );
    assert_eq!(status, 200, "/healthz: {body}");

    let _ = stuck.kill();
    let _ = stuck.wait();
    drop(fuse);
    agent.stop();
    drop(bpffs);
    drop(cg);
    drop(env);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_fails_while_the_enforcement_loop_is_stopped() {
    let test = "health_fails_while_the_enforcement_loop_is_stopped";
    let _serial = SERIAL.lock().await;
    if !support::require_bpf(test) {
        return;
    }
    let Some(env) = TestEnv::start_or_skip(test).await else {
        return;
    };
    const NODE: &str = "mapguard-stall-node";
    env.create_node(NODE).await.expect("create the Node");
    let dir = support::test_dir("stall");
    let mut agent = Agent::start(
        NODE,
        env.kubeconfig(),
        &dir.join("events.jsonl"),
        dir.join("agent.log"),
        &["--healthz-stall-after=1s", "--exec-hold=false"],
    );
    agent.wait_ready().await;
    let health = || http_get(agent.ops, "/healthz").expect("/healthz answers");
    assert_eq!(health().0, 200, "a loop going round is healthy");

    // Only the enforcement thread stops; the ops port's threads go on.
    let tid = thread_named(agent.pid(), "enforce").expect("the agent's enforce thread");
    let (stopped_tx, stopped_rx) = std::sync::mpsc::channel();
    let (resume_tx, resume_rx) = std::sync::mpsc::channel::<()>();
    // ptrace requests come from the thread that attached.
    let tracer = std::thread::spawn(move || {
        let tid = tid as libc::pid_t;
        let null = std::ptr::null_mut::<libc::c_void>();
        // SAFETY: ptrace requests on a thread of the agent this test
        // started; no memory is passed.
        unsafe {
            assert_eq!(
                libc::ptrace(libc::PTRACE_SEIZE, tid, null, null),
                0,
                "PTRACE_SEIZE: {}",
                std::io::Error::last_os_error()
            );
            assert_eq!(
                libc::ptrace(libc::PTRACE_INTERRUPT, tid, null, null),
                0,
                "PTRACE_INTERRUPT"
            );
            let mut status = 0;
            assert_eq!(
                libc::waitpid(tid, &mut status, libc::__WALL),
                tid,
                "waitpid"
            );
        }
        stopped_tx.send(()).expect("tell");
        let _ = resume_rx.recv();
        // SAFETY: as above.
        unsafe { libc::ptrace(libc::PTRACE_DETACH, tid, null, null) };
    });
    stopped_rx
        .recv_timeout(PATIENCE)
        .expect("the enforce thread stopped");
    let stopped = Instant::now();
    let (status, body) = loop {
        let (status, body) = health();
        if status != 200 {
            break (status, body);
        }
        assert!(
            stopped.elapsed() < PATIENCE,
            "/healthz still answers {status} {body:?} {:?} after the enforcement loop stopped",
            stopped.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!(
        "\n==> enforcement loop stopped: /healthz {status} after {:.1?}: {}",
        stopped.elapsed(),
        body.trim()
    );
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("enforcement loop stalled"), "{body}");

    resume_tx.send(()).expect("resume");
    tracer.join().expect("the tracer");
    let resumed = Instant::now();
    while health().0 != 200 {
        assert!(
            resumed.elapsed() < PATIENCE,
            "/healthz never recovered once the loop went on"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "==> loop going on: /healthz 200 again after {:.1?}",
        resumed.elapsed()
    );

    agent.stop();
    drop(env);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The thread of process `pid` named `name`.
fn thread_named(pid: u32, name: &str) -> Option<u32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|t| t.file_name().to_str()?.parse::<u32>().ok())
        .find(|tid| {
            std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm"))
                .is_ok_and(|c| c.trim() == name)
        })
}
