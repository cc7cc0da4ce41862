//! `watch`: enforcing on processes that already run (`--pid`) and on every
//! process of a binary, including ones started later (`--exe`).

mod support;

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use support::{enforcer, parallel, program, require_bpf, versions};

/// Waits until `path` contains `needle` `times` times (the watcher logs
/// each binary or process it is ready for).
fn wait_for(path: &std::path::Path, needle: &str, times: usize, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if std::fs::read_to_string(path).is_ok_and(|t| t.matches(needle).count() >= times) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// The first violation of `text`'s JSON lines for process `pid`.
fn violation_of(text: &str, pid: u32) -> Option<serde_json::Value> {
    text.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("JSON line"))
        .find(|v| v["event"] == "violation" && v["pid"] == pid)
}

/// A delete racing an assign is a write-write race; when the assigner is
/// growing the map at that moment it is reported as the more specific
/// released_bucket_write (as in enforce.rs).
fn assert_write_race(v: &serde_json::Value, ctx: &str) {
    assert_eq!(v["action"], "killed", "{ctx}: {v}");
    assert!(
        ["concurrent_write", "released_bucket_write"]
            .contains(&v["kind"].as_str().unwrap_or_default()),
        "{ctx}: {v}"
    );
    assert_ne!(v["goroutine"], v["conflicting_goroutine"], "{ctx}: {v}");
}

/// One watcher covers the racy program of every release (one binary per
/// release, each with its own layout); each is started after the watcher
/// is ready and killed before the runtime reports.
#[test]
fn watch_exe_kills_racy_processes_of_every_release_started_later() {
    if !require_bpf("watch_exe_kills_racy_processes_of_every_release_started_later") {
        return;
    }
    let racy: Vec<_> = versions()
        .iter()
        .map(|v| program(v, "racy", "delete_assign"))
        .collect();
    let dir = std::env::temp_dir();
    let events = dir.join(format!("mapguard-watch-exe-{}.jsonl", std::process::id()));
    let log = dir.join(format!("mapguard-watch-exe-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&events);
    let exes: Vec<String> = racy.iter().map(|p| p.display().to_string()).collect();
    let mut watcher = Command::new(enforcer())
        .args(["watch", "--mode", "kill", "--exe"])
        .arg(exes.join(","))
        .arg("--events")
        .arg(&events)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("start watcher");
    assert!(
        wait_for(
            &log,
            "watching every process",
            racy.len(),
            Duration::from_secs(60)
        ),
        "watcher not ready: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let outs = parallel(&racy, |path| {
        let child = Command::new(path)
            .args(["-duration", "20s"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run racy program");
        let pid = child.id();
        (pid, child.wait_with_output().expect("wait racy program"))
    });
    // SAFETY: signals our own child.
    unsafe { libc::kill(watcher.id() as i32, libc::SIGINT) };
    let status = watcher.wait().expect("wait watcher");
    let text = std::fs::read_to_string(&events).unwrap_or_default();
    let _ = std::fs::remove_file(&events);
    let _ = std::fs::remove_file(&log);
    assert_eq!(status.code(), Some(128 + libc::SIGINT), "watcher status");
    for (version, (pid, out)) in versions().iter().zip(&outs) {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            None,
            "{version}: racy program was not killed: {:?}\n{stderr}",
            out.status
        );
        assert!(!stderr.contains("fatal error: concurrent map"), "{stderr}");
        let v = violation_of(&text, *pid)
            .unwrap_or_else(|| panic!("{version}: no violation for pid {pid} in {text:?}"));
        assert_write_race(&v, version);
        assert!(
            v["binary"].as_str().is_some_and(|b| b.contains(version)),
            "{version}: {v}"
        );
    }
}

/// Racy processes of every release that already run are killed by one
/// `watch --pid` (attached after they started; they race only once told
/// to, after the watcher is ready), which then ends on its own.
#[test]
fn watch_pid_kills_running_racy_processes_of_every_release() {
    if !require_bpf("watch_pid_kills_running_racy_processes_of_every_release") {
        return;
    }
    let children: Vec<_> = versions()
        .iter()
        .map(|v| {
            Command::new(program(v, "racy", "delete_assign"))
                .args(["-duration", "30s", "-wait-signal"])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start racy program")
        })
        .collect();
    let pids: Vec<String> = children.iter().map(|c| c.id().to_string()).collect();
    let log = std::env::temp_dir().join(format!("mapguard-watch-pid-{}.log", std::process::id()));
    let watcher = Command::new(enforcer())
        .args(["watch", "--mode", "kill", "--events", "-", "--pid"])
        .arg(pids.join(","))
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("start watcher");
    let ready = wait_for(&log, "watching", pids.len(), Duration::from_secs(60));
    for child in &children {
        // SAFETY: signals our own child: start racing.
        unsafe { libc::kill(child.id() as i32, libc::SIGUSR1) };
    }
    let outs: Vec<_> = children
        .into_iter()
        .map(|c| c.wait_with_output().expect("wait racy program"))
        .collect();
    let out = watcher.wait_with_output().expect("wait watcher");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    assert!(ready, "watcher not ready:\n{stderr}");
    assert_eq!(
        out.status.code(),
        Some(0),
        "watch status; stderr:\n{stderr}"
    );
    assert!(
        stderr.contains("every watched process has exited"),
        "{stderr}"
    );
    for ((version, pid), child) in versions().iter().zip(&pids).zip(&outs) {
        let child_err = String::from_utf8_lossy(&child.stderr);
        assert_eq!(
            child.status.code(),
            None,
            "{version}: not killed: {:?}\n{child_err}\nwatcher:\n{stderr}",
            child.status
        );
        assert!(!child_err.contains("fatal error"), "{version}: {child_err}");
        let pid: u32 = pid.parse().expect("pid");
        let v = violation_of(&stdout, pid)
            .unwrap_or_else(|| panic!("{version}: no violation for pid {pid}: {stdout}"));
        assert_write_race(&v, version);
    }
}

#[test]
fn watch_pid_follows_a_clean_process_until_it_exits() {
    if !require_bpf("watch_pid_follows_a_clean_process_until_it_exits") {
        return;
    }
    let clean = program("go1.23", "clean", "rwmutex");
    let mut child = Command::new(&clean)
        .args(["-duration", "3s"])
        .stdout(Stdio::null())
        .spawn()
        .expect("start clean program");
    let started = Instant::now();
    let out = Command::new(enforcer())
        .args(["watch", "--mode", "kill", "--events", "-", "--pid"])
        .arg(child.id().to_string())
        .output()
        .expect("run watcher");
    let child_status = child.wait().expect("wait clean program");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        child_status.success(),
        "clean program disturbed: {child_status:?}"
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "watch status; stderr:\n{stderr}"
    );
    assert!(stderr.contains("watching"), "{stderr}");
    assert!(
        stderr.contains("every watched process has exited"),
        "{stderr}"
    );
    assert!(
        !stdout.contains("\"violation\""),
        "false positive: {stdout}"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "watch ended early"
    );
}
