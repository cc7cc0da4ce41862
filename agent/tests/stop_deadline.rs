//! Stops have a deadline, and a reused pid is not its predecessor, for
//! real: a real kube-apiserver and etcd (mapguard-testenv), the node agent
//! for a Node object, a Pod bound to it (`mode: stop`, `coverage: full`)
//! and racing Go programs started in its kubelet-shaped cgroup.
//!
//! One API server serves every stage, in order: a process mapguard
//! stopped is resumed at `--stop-deadline` (`--after-stop-deadline
//! resume`: it runs, races again and is stopped again, which its parent
//! sees as a second stop), while a process of the same Pod stopped by
//! someone else stays stopped; a process stopped by an agent that is then
//! killed outright is killed by the next agent at its deadline (`kill`);
//! and a process given the pid of an enforced process that exited (the
//! agent frozen meanwhile, so its table still names the pid) is not
//! treated with that entry: it races, and the Go runtime, not mapguard,
//! ends it.

#[path = "support/agent.rs"]
mod agent;
#[path = "../../enforcer/tests/support/kube_cgroup.rs"]
mod kube_cgroup;
#[path = "support/pod_process.rs"]
mod pod_process;
#[path = "../../enforcer/tests/support/mod.rs"]
mod support;

use std::{
    ffi::CString,
    os::unix::ffi::OsStrExt as _,
    path::Path,
    time::{Duration, Instant},
};

use agent::{Agent, NodeTest, wait_violation};
use pod_process::{container_of, create_pod, start_in, wait};
use serde_json::Value;

const NODE: &str = "mapguard-stop-node";
const PATIENCE: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stops_end_at_their_deadline_and_reused_pids_are_not_their_predecessors() {
    let test = "stops_end_at_their_deadline_and_reused_pids_are_not_their_predecessors";
    let Some(NodeTest { env, client, go }) = NodeTest::start(test, NODE).await else {
        return;
    };
    let racy = support::program(go, "racy", "delete_assign");
    let clean = support::program(go, "clean", "mutex");
    let pod = create_pod(
        &client,
        NODE,
        "stopper",
        &[
            ("mapguard.io/mode", "stop"),
            ("mapguard.io/coverage", "full"),
        ],
    )
    .await;
    let cg = container_of(&client, &pod).await;

    let dir = support::test_dir("stop-deadline");
    let events = dir.join("events.jsonl");
    // A bpffs of the test's own for the pinned tables.
    let bpffs = support::BpfFs::in_dir(&dir);
    let pin_flag = bpffs.flag();

    // 1. Resumed at the deadline; a stop that is not mapguard's is kept.
    let mut agent = Agent::start(
        NODE,
        env.kubeconfig(),
        &events,
        dir.join("resume.log"),
        &[
            &pin_flag,
            "--stop-deadline=3s",
            "--after-stop-deadline=resume",
        ],
    );
    agent.wait_ready().await;
    let mut theirs = start_in(&cg, &clean, &["-duration", "120s"]);
    let mut racer = start_in(&cg, &racy, &["-wait-signal", "-duration", "120s"]);
    agent.wait_enforced(2).await;
    signal(theirs.id(), libc::SIGSTOP);
    signal(racer.id(), libc::SIGUSR1);
    let first = wait_stopped(racer.id(), "mapguard stopped the racer");
    let report = wait_violation(&events, racer.id()).await;
    assert_eq!(report["action"], "stopped", "{report}");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        support::proc_state(racer.id()),
        Some('T'),
        "stopped until its deadline"
    );
    // Resumed, it either races again (and is stopped again) or, stopped
    // on the runtime's crash path, goes on into the runtime's abort.
    let next = wait_end_or_stop(racer.id(), PATIENCE);
    let apart = first.elapsed();
    match next {
        Ended::Stopped => println!(
            "\n==> stopped, resumed at the 3 s deadline, raced and was stopped again {apart:?} later"
        ),
        Ended::Exited(code) => println!(
            "\n==> stopped, resumed at the 3 s deadline, went on into the runtime's abort (exit {code}) {apart:?} later"
        ),
        Ended::Signalled(signal) => panic!("the racer was ended by signal {signal}"),
        Ended::Running => panic!(
            "the racer was never resumed at its deadline (state {:?}):\n{}",
            support::proc_state(racer.id()),
            agent.log()
        ),
    }
    assert!(
        apart >= Duration::from_secs(2),
        "resumed {apart:?} after its stop, before the 3 s deadline"
    );
    assert!(
        agent.metric("mapguard_stop_deadline_total{action=\"resume\"}") >= 1.0,
        "{}",
        agent.text("/metrics")
    );
    assert_eq!(
        support::proc_state(theirs.id()),
        Some('T'),
        "a process stopped by someone else was resumed by mapguard:\n{}",
        agent.log()
    );
    signal(theirs.id(), libc::SIGCONT);
    end(&mut theirs);
    end(&mut racer);
    agent.stop();

    // 2. Stopped by an agent killed outright; killed by the next one.
    let mut doomed = Agent::start(
        NODE,
        env.kubeconfig(),
        &events,
        dir.join("doomed.log"),
        &[&pin_flag, "--stop-deadline=1h"],
    );
    doomed.wait_ready().await;
    let mut racer = start_in(&cg, &racy, &["-wait-signal", "-duration", "120s"]);
    doomed.wait_enforced(1).await;
    signal(racer.id(), libc::SIGUSR1);
    wait_stopped(racer.id(), "mapguard stopped the racer");
    doomed.kill();
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        support::proc_state(racer.id()),
        Some('T'),
        "stopped by the agent that was killed"
    );
    let mut next = Agent::start(
        NODE,
        env.kubeconfig(),
        &events,
        dir.join("next.log"),
        &[
            &pin_flag,
            "--stop-deadline=2s",
            "--after-stop-deadline=kill",
        ],
    );
    next.wait_ready().await;
    let (status, stderr) = wait(&mut racer, PATIENCE);
    assert_eq!(
        status,
        None,
        "not killed at its deadline by the next agent: {stderr}\n{}",
        next.log()
    );
    assert!(
        next.metric("mapguard_stop_deadline_total{action=\"kill\"}") >= 1.0,
        "{}",
        next.text("/metrics")
    );
    assert!(
        next.log().contains("stopped by an agent that is gone"),
        "{}",
        next.log()
    );
    println!(
        "\n==> a stop left by an agent killed outright ended at its deadline under the next agent"
    );

    // 3. A pid reused while the agent still names it: not its predecessor.
    next.wait_enforced(0).await;
    let mut first = start_in(&cg, &racy, &["-wait-signal", "-duration", "120s"]);
    let pid = first.id();
    next.wait_enforced(1).await;
    // Frozen, the agent cannot notice the exit and drop the entry.
    signal(next.pid(), libc::SIGSTOP);
    let _ = first.kill();
    let _ = first.wait();
    let stderr_path = dir.join("reused.stderr");
    let reused = spawn_with_pid(pid, &racy, &["-duration", "10s"], &stderr_path);
    let outcome = wait_end_or_stop(reused, PATIENCE);
    signal(next.pid(), libc::SIGCONT);
    let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    match outcome {
        Ended::Stopped => {
            signal(reused, libc::SIGKILL);
            let _ = wait_end_or_stop(reused, PATIENCE);
            panic!("the process given pid {pid} was stopped with its predecessor's entry");
        }
        Ended::Exited(code) => {
            println!("\n==> pid {pid} reused: the new process ran unenforced (exit {code})");
            assert!(
                code == 0 || stderr.contains("concurrent map"),
                "exit {code}: {stderr}"
            );
        }
        Ended::Signalled(signal) => {
            panic!("the process given pid {pid} was ended by signal {signal}: {stderr}")
        }
        Ended::Running => panic!("the process given pid {pid} ran past 10 s"),
    }
    assert!(
        std::fs::read_to_string(&events)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .all(|v| !(v["pid"] == pid && v["event"] == "violation")),
        "a violation of the process given pid {pid} was reported"
    );
    next.stop();

    drop(bpffs);
    drop(cg);
    drop(env);
    let _ = std::fs::remove_dir_all(&dir);
}

fn signal(pid: u32, signal: i32) {
    // SAFETY: kill has no memory preconditions.
    let rc = unsafe { libc::kill(pid as i32, signal) };
    assert_eq!(rc, 0, "kill({pid}, {signal})");
}

fn end(child: &mut std::process::Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Waits until the test's child `pid` is stopped (its parent is told of
/// each stop once): when that was seen.
fn wait_stopped(pid: u32, what: &str) -> Instant {
    match wait_end_or_stop(pid, PATIENCE) {
        Ended::Stopped => Instant::now(),
        Ended::Exited(code) => panic!("{what}: it exited ({code}) instead"),
        Ended::Signalled(signal) => panic!("{what}: signal {signal} ended it instead"),
        Ended::Running => panic!("{what}: it was never stopped"),
    }
}

enum Ended {
    Exited(i32),
    Signalled(i32),
    /// Stopped (a stop its parent had not been told of).
    Stopped,
    /// None of those within the wait.
    Running,
}

/// Waits until the test's child `pid` ends or stops.
fn wait_end_or_stop(pid: u32, timeout: Duration) -> Ended {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let mut status = 0;
        // SAFETY: waits for our own child, status into a local.
        let rc = unsafe { libc::waitpid(pid as i32, &mut status, libc::WUNTRACED | libc::WNOHANG) };
        if rc == pid as i32 {
            if libc::WIFSTOPPED(status) {
                return Ended::Stopped;
            }
            if libc::WIFEXITED(status) {
                return Ended::Exited(libc::WEXITSTATUS(status));
            }
            if libc::WIFSIGNALED(status) {
                return Ended::Signalled(libc::WTERMSIG(status));
            }
        }
        assert!(rc == 0 || rc == pid as i32, "waitpid({pid}): {rc}");
        std::thread::sleep(Duration::from_millis(10));
    }
    Ended::Running
}

/// `struct clone_args` up to `set_tid_size` (`CLONE_ARGS_SIZE_VER1`).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
}

/// Starts `program` as the test's child with pid `pid` (clone3 with
/// `set_tid`: root in the initial pid namespace), in the test's own
/// cgroup (no Pod's), its stderr into `stderr`.
fn spawn_with_pid(pid: u32, program: &Path, args: &[&str], stderr: &Path) -> u32 {
    let path = CString::new(program.as_os_str().as_bytes()).expect("path");
    let argv: Vec<CString> = std::iter::once(path.clone())
        .chain(args.iter().map(|a| CString::new(*a).expect("arg")))
        .collect();
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let envp: [*const libc::c_char; 1] = [std::ptr::null()];
    let err = std::fs::File::create(stderr).expect("stderr file");
    let err_fd = std::os::fd::AsRawFd::as_raw_fd(&err);
    let tid = [pid as libc::pid_t];
    let args = CloneArgs {
        exit_signal: libc::SIGCHLD as u64,
        set_tid: tid.as_ptr() as u64,
        set_tid_size: 1,
        ..CloneArgs::default()
    };
    // SAFETY: clone3 without CLONE_VM is a fork; the child only calls
    // dup2 and execve (async-signal-safe) on memory prepared before.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if rc == 0 {
        // SAFETY: in the child: see above.
        unsafe {
            libc::dup2(err_fd, 2);
            libc::execve(path.as_ptr(), argv_ptrs.as_ptr(), envp.as_ptr());
            libc::_exit(127);
        }
    }
    assert!(
        rc > 0,
        "clone3 with pid {pid}: {}",
        std::io::Error::last_os_error()
    );
    assert_eq!(rc as u32, pid, "clone3 gave another pid");
    rc as u32
}
