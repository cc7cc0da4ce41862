//! `kubectl mapguard check` is `mapguard check`: the built plugin is run on
//! the sample manifests and its output and exit code compared with what
//! the CI command's library prints for the same flags.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use clap::Parser as _;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("kubectl-plugin/ has a parent")
        .to_path_buf()
}

fn plugin(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kubectl-mapguard"))
        .args(args)
        .current_dir(root())
        .env_remove("RUST_LOG")
        .output()
        .expect("the plugin runs")
}

/// What `mapguard ARGS` prints: (exit code, stdout, stderr).
fn mapguard(args: &[&str]) -> (i32, String, String) {
    let config = mapguard_cli::Config::try_parse_from(
        std::iter::once("mapguard").chain(args.iter().copied()),
    )
    .expect("valid mapguard flags");
    // The library resolves paths from the working directory, as the binary does.
    std::env::set_current_dir(root()).expect("cd to the repository");
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let status = mapguard_cli::run(&config, &mut out, &mut err);
    (
        status as i32,
        String::from_utf8(out).expect("UTF-8"),
        String::from_utf8(err).expect("UTF-8"),
    )
}

fn same_as_mapguard(args: &[&str], expected_code: i32) -> String {
    let out = plugin(args);
    let (code, stdout, stderr) = mapguard(args);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        out.status.code(),
        Some(expected_code),
        "kubectl mapguard {args:?}: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(code, expected_code, "mapguard {args:?}: {stdout}{stderr}");
    assert_eq!(
        text, stdout,
        "kubectl mapguard {args:?} and mapguard print the same"
    );
    assert_eq!(String::from_utf8_lossy(&out.stderr), stderr);
    text
}

// One test: the library's `run` reads paths relative to the working
// directory, which is per process.
#[test]
fn check_is_the_ci_command_with_its_exit_codes() {
    let denied = same_as_mapguard(
        &["check", "-f", "tests/manifests/denied/privileged-pod.yaml"],
        1,
    );
    assert!(
        denied.contains("DENY   tests/manifests/denied/privileged-pod.yaml[0] Pod default/debug-shell (mapguard.privileged)"),
        "{denied}"
    );

    let allowed = same_as_mapguard(
        &[
            "check",
            "-f",
            "tests/manifests/allowed",
            "--namespaces",
            "tests/data/namespaces.yaml",
            "-o",
            "json",
        ],
        0,
    );
    let report: serde_json::Value = serde_json::from_str(&allowed).expect("check -o json is JSON");
    assert_eq!(report["summary"]["denied"], 0, "{allowed}");
    assert!(
        report["summary"]["objects"].as_u64().expect("a count") >= 5,
        "{allowed}"
    );

    let broken = plugin(&["check", "-f", "tests/manifests/broken/unclosed.yaml"]);
    assert_eq!(broken.status.code(), Some(2), "bad input exits 2");
    let err = String::from_utf8_lossy(&broken.stderr);
    assert!(
        err.contains("tests/manifests/broken/unclosed.yaml, document 1"),
        "{err}"
    );
    same_as_mapguard(&["check", "-f", "tests/manifests/broken/unclosed.yaml"], 2);

    let missing = plugin(&["check"]);
    assert_eq!(missing.status.code(), Some(2), "-f is required");
}
