//! gator verify suites (`fixtures/gator/suite.yaml`) run by mapguard's
//! engine: each outcome, and suites whose expectations are wrong fail with
//! what was seen.

use std::path::{Path, PathBuf};

use mapguard_policy::gatekeeper::suite::{Outcome, find_suites, run_suite};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gator")
}

fn outcomes(path: &Path) -> Vec<(String, Outcome)> {
    run_suite(path)
        .expect("the suite runs")
        .into_iter()
        .map(|r| (r.name, r.outcome))
        .collect()
}

#[test]
fn the_fixture_suite_passes_case_by_case() {
    let suites = find_suites(&fixtures()).expect("finds");
    assert_eq!(suites, [fixtures().join("suite.yaml")]);
    let got = outcomes(&suites[0]);
    let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "mapguard-fixtures/unique-ingress-host/host-free",
            "mapguard-fixtures/unique-ingress-host/host-taken",
            "mapguard-fixtures/unique-ingress-host/no-inventory-no-conflict",
            "mapguard-fixtures/max-containers/one-is-fine",
            "mapguard-fixtures/max-containers/two-is-too-many",
            "mapguard-fixtures/max-containers/an-admission-review-as-is",
            "mapguard-fixtures/max-containers-wrong-parameters",
            "mapguard-fixtures/cel-only",
            "mapguard-fixtures/skipped",
        ]
    );
    for (name, outcome) in &got[..7] {
        assert_eq!(outcome, &Outcome::Pass, "{name}");
    }
    assert!(
        matches!(&got[7].1, Outcome::Skip(why) if why.contains("CEL validation is not supported")),
        "{got:?}"
    );
    assert_eq!(got[8].1, Outcome::Skip("skip: true".into()));
}

/// The fixture suite with its text edited, in a copy of the fixtures (the
/// folder, removed when dropped, and the suite's path in it).
fn edited(name: &str, edit: impl Fn(String) -> String) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::Builder::new()
        .prefix(&format!("mapguard-gator-{name}-"))
        .tempdir()
        .expect("temp dir");
    copy_dir(&fixtures(), dir.path());
    let suite = dir.path().join("suite.yaml");
    let text = std::fs::read_to_string(&suite).expect("read");
    std::fs::write(&suite, edit(text)).expect("write");
    (dir, suite)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let path = entry.expect("entry").path();
        let target = to.join(path.file_name().expect("a name"));
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            std::fs::copy(&path, &target).expect("copy");
        }
    }
}

fn failure(outcomes: &[(String, Outcome)], name: &str) -> String {
    match outcomes.iter().find(|(n, _)| n == name) {
        Some((_, Outcome::Fail(why))) => why.clone(),
        other => panic!("{name} did not fail: {other:?}"),
    }
}

#[test]
fn wrong_expectations_fail_with_what_was_seen() {
    let (_dir, suite) = edited("wrong", |text| {
        text.replacen(
            "      - name: host-free\n        object: unique-host/ingress-b.yaml\n        inventory: [unique-host/inventory.yaml]\n        assertions:\n          - violations: no",
            "      - name: host-free\n        object: unique-host/ingress-b.yaml\n        inventory: [unique-host/inventory.yaml]\n        assertions:\n          - violations: yes",
            1,
        )
        .replacen("          - violations: 1\n            message: \"^Pod two", "          - violations: 2\n            message: \"^Pod two", 1)
        .replacen("    invalid: true\n", "    invalid: false\n", 1)
    });
    let got = outcomes(&suite);
    assert_eq!(
        failure(&got, "mapguard-fixtures/unique-ingress-host/host-free"),
        "got 0 violations but want at least 1; messages: []"
    );
    let two = failure(&got, "mapguard-fixtures/max-containers/two-is-too-many");
    assert!(
        two.starts_with("got 1 violations matching \"^Pod two has 2 containers\" but want exactly 2; messages: [\"Pod two has 2 containers (at most 1; operation CREATE)\"]"),
        "{two}"
    );
    let invalid = failure(&got, "mapguard-fixtures/max-containers-wrong-parameters");
    assert!(
        invalid.contains("\"one\" is not of type \"integer\""),
        "{invalid}"
    );
    let passed = got.iter().filter(|(_, o)| *o == Outcome::Pass).count();
    assert_eq!(passed, 4, "{got:?}");
}

#[test]
fn a_valid_constraint_marked_invalid_and_a_missing_object_fail() {
    let (_dir, suite) = edited("invalid", |text| {
        text.replacen(
            "constraint: max-containers/constraint-invalid.yaml",
            "constraint: max-containers/constraint.yaml",
            1,
        )
        .replacen(
            "object: max-containers/pod-one.yaml",
            "object: max-containers/nowhere.yaml",
            1,
        )
    });
    let got = outcomes(&suite);
    assert_eq!(
        failure(&got, "mapguard-fixtures/max-containers-wrong-parameters"),
        "the constraint was accepted, but the test expects it to be invalid"
    );
    let missing = failure(&got, "mapguard-fixtures/max-containers/one-is-fine");
    assert!(missing.contains("nowhere.yaml"), "{missing}");
}

#[test]
fn rego_that_regorus_reads_differently_from_opa_gets_opas_verdicts() {
    let suite =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gator-compat/suite.yaml");
    let got = outcomes(&suite);
    assert_eq!(got.len(), 9, "{got:?}");
    for (name, outcome) in &got {
        assert_eq!(outcome, &Outcome::Pass, "{name}");
    }
}
