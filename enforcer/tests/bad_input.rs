//! Bad input gets a clear error (status 2), never a panic, and never leaves
//! probes behind.

mod support;

use std::{
    os::unix::process::CommandExt as _,
    process::{Command, Output},
    time::Duration,
};

use support::{enforcer, program, require_bpf, wait_no_mapguard_programs};

fn run(args: &[&str]) -> Output {
    Command::new(enforcer())
        .args(args)
        .output()
        .expect("run mapguard-enforcer")
}

fn assert_clear_error(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "status {:?}; stderr:\n{stderr}",
        out.status
    );
    assert!(!stderr.contains("panicked"), "panic:\n{stderr}");
    assert!(stderr.contains(needle), "expected {needle:?} in:\n{stderr}");
}

/// A pid that does not exist: one of a child that has been reaped.
fn dead_pid() -> u32 {
    let mut child = Command::new("true").spawn().expect("spawn true");
    let pid = child.id();
    child.wait().expect("wait true");
    pid
}

#[test]
fn bad_input_is_refused_clearly_without_leaking_probes() {
    if !require_bpf("bad_input_is_refused_clearly_without_leaking_probes") {
        return;
    }
    let go = program("go1.23", "clean", "mutex");
    let go = go.to_str().expect("utf-8 path");

    // Not a Go binary.
    assert_clear_error(&run(&["exec", "--", "/bin/true"]), "is not a Go binary");
    // Not an x86-64 binary.
    let arm = program("go1.24", "arm64", "delete_assign");
    let out = run(&["exec", "--", arm.to_str().expect("utf-8 path")]);
    assert_clear_error(&out, "only x86-64 is supported");
    // No such program.
    assert_clear_error(&run(&["exec", "--", "/nonexistent/program"]), "not found");
    // No such process.
    let pid = dead_pid().to_string();
    assert_clear_error(&run(&["watch", "--pid", &pid]), "no such process");
    // A process that exits while (or right after) the probes are attached:
    // either a clear error or a clean end once it has gone.
    for delay_ms in [0u64, 50, 150] {
        let mut child = Command::new(go)
            .args(["-duration", "200ms"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("spawn Go program");
        std::thread::sleep(Duration::from_millis(delay_ms));
        let out = run(&["watch", "--pid", &child.id().to_string()]);
        child.wait().expect("wait Go program");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "panic:\n{stderr}");
        match out.status.code() {
            Some(0) => assert!(
                stderr.contains("every watched process has exited"),
                "{stderr}"
            ),
            Some(2) => assert!(
                stderr.contains("no such process") || stderr.contains("none of the processes"),
                "{stderr}"
            ),
            other => panic!("status {other:?}:\n{stderr}"),
        }
    }
    // Not root: the same run as an unprivileged user.
    let out = Command::new(enforcer())
        .args(["exec", "--", go])
        .uid(65534)
        .gid(65534)
        .output()
        .expect("run mapguard-enforcer as nobody");
    assert_clear_error(&out, "needs root");

    let left = wait_no_mapguard_programs(Duration::from_secs(120));
    assert_eq!(
        left, 0,
        "mapguard BPF programs still loaded (leaked probes)"
    );
}

#[test]
fn usage_errors_are_reported_by_the_parser() {
    // No BPF needed: argument validation happens first.
    let out = run(&["watch"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--pid"));
    let out = run(&["exec", "--mode", "explode", "--", "/bin/true"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid value 'explode'"));
}
