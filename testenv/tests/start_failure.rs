//! A start that fails (the API server exits, or is not ready in time)
//! reports the API server's log and leaves no process and no folder behind. (A test binary of its own: it counts this
//! process's children, which a parallel test would disturb.)

use std::path::PathBuf;
use std::time::Duration;

use mapguard_testenv::{Options, TestEnv, TestEnvError, require_control_plane};

#[tokio::test]
async fn a_failed_start_reports_the_log_and_cleans_up() {
    let test = "a_failed_start_reports_the_log_and_cleans_up";
    let Some(binaries) = require_control_plane(test) else {
        return;
    };
    let before = folders();
    let options = Options {
        apiserver_args: vec!["--no-such-flag=1".to_owned()],
        ..Options::default()
    };
    let error = TestEnv::start_with(binaries.clone(), options)
        .await
        .expect_err("an unknown flag must stop the start");
    match &error {
        TestEnvError::Exited { name, log, .. } => {
            assert_eq!(*name, "kube-apiserver");
            assert!(log.contains("unknown flag: --no-such-flag"), "{error}");
        }
        other => panic!("expected Exited, got {other}"),
    }
    assert_eq!(children(), Vec::<String>::new(), "etcd must be stopped");
    assert_eq!(folders(), before, "the folder must be removed");

    // Not ready in time: both processes are running and must be stopped.
    let options = Options {
        ready_timeout: Duration::from_millis(1),
        ..Options::default()
    };
    let error = TestEnv::start_with(binaries, options)
        .await
        .expect_err("1 ms is too short to get ready");
    assert!(
        matches!(error, TestEnvError::NotReady { .. }),
        "expected NotReady, got {error}"
    );
    assert!(error.to_string().contains("kube-apiserver.log"), "{error}");
    assert_eq!(children(), Vec::<String>::new(), "both must be stopped");
    assert_eq!(folders(), before, "the folder must be removed");
}

/// `PID COMMAND` of every process whose parent is this one.
fn children() -> Vec<String> {
    let me = std::process::id().to_string();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("read /proc").flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ...; comm may contain spaces, so split after ')'.
        let Some((head, tail)) = stat.rsplit_once(')') else {
            continue;
        };
        if tail.split_whitespace().nth(1) == Some(me.as_str()) {
            found.push(head.replace(" (", " "));
        }
    }
    found
}

/// This process's test folders in the temporary directory.
fn folders() -> Vec<PathBuf> {
    let prefix = format!("mapguard-testenv-{}-", std::process::id());
    let mut found: Vec<PathBuf> = std::fs::read_dir(std::env::temp_dir())
        .expect("read the temporary directory")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect();
    found.sort();
    found
}
