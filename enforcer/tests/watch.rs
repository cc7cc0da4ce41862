//! `watch`: enforcing on processes that already run (`--pid`) and on every
//! process of a binary, including ones started later (`--exe`).

mod support;

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use support::{enforcer, program, require_bpf};

/// Waits until `path` contains `needle` (the watcher logs when it is ready).
fn wait_for(path: &std::path::Path, needle: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if std::fs::read_to_string(path).is_ok_and(|t| t.contains(needle)) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn watch_exe_kills_a_racy_process_started_later() {
    if !require_bpf("watch_exe_kills_a_racy_process_started_later") {
        return;
    }
    let racy = program("go1.24", "racy", "delete_assign");
    let dir = std::env::temp_dir();
    let events = dir.join(format!("mapguard-watch-exe-{}.jsonl", std::process::id()));
    let log = dir.join(format!("mapguard-watch-exe-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&events);
    let mut watcher = Command::new(enforcer())
        .args(["watch", "--mode", "kill", "--exe"])
        .arg(&racy)
        .arg("--events")
        .arg(&events)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("start watcher");
    assert!(
        wait_for(&log, "watching every process", Duration::from_secs(30)),
        "watcher not ready: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let out = Command::new(&racy)
        .args(["-duration", "20s"])
        .output()
        .expect("run racy program");
    // SAFETY: signals our own child.
    unsafe { libc::kill(watcher.id() as i32, libc::SIGINT) };
    let status = watcher.wait().expect("wait watcher");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let text = std::fs::read_to_string(&events).unwrap_or_default();
    let _ = std::fs::remove_file(&events);
    let _ = std::fs::remove_file(&log);
    assert_eq!(
        out.status.code(),
        None,
        "racy program was not killed: {:?}",
        out.status
    );
    assert!(!stderr.contains("fatal error: concurrent map"), "{stderr}");
    assert_eq!(status.code(), Some(128 + libc::SIGINT), "watcher status");
    let violation: serde_json::Value = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .find(|v: &serde_json::Value| v["event"] == "violation")
        .unwrap_or_else(|| panic!("no violation event in {text:?}"));
    assert_eq!(violation["action"], "killed");
    // A delete racing an assign is a write-write race; when the assigner is
    // growing the map at that moment it is reported as the more specific
    // released_bucket_write (as in enforce.rs).
    assert!(
        ["concurrent_write", "released_bucket_write"]
            .contains(&violation["kind"].as_str().unwrap_or_default()),
        "{violation}"
    );
    assert_ne!(violation["goroutine"], violation["conflicting_goroutine"]);
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
