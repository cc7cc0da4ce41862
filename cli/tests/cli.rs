//! Runs the built `mapguard` binary against the sample manifests and policies.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("cli/ has a parent")
        .to_path_buf()
}

fn mapguard(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mapguard"))
        .args(args)
        .current_dir(root())
        .env_remove("RUST_LOG")
        .output()
        .expect("mapguard binary runs")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A fresh folder for one test, removed when the test ends.
fn temp_dir(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("mapguard-cli-test-{name}-"))
        .tempdir()
        .expect("create temp dir")
}

const NS: &str = "tests/data/namespaces.yaml";

#[test]
fn default_policies_pass_their_own_tests() {
    let out = mapguard(&["policy", "test", "policies/"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}{}", stderr(&out));
    let last = text.lines().last().expect("a closing line");
    let (passed, failed) = last
        .split_once(" passed, ")
        .expect("closing line `N passed, N failed`");
    assert_eq!(failed, "0 failed");
    assert!(passed.parse::<usize>().expect("a count") >= 30, "{last}");
    assert!(text.contains("PASS mapguard.mode_test.test_mode_injected_from_namespace_label (policies/mode_test.rego)"), "{text}");
}

#[test]
fn a_failing_test_rule_fails_the_run() {
    let dir = temp_dir("failing");
    for entry in std::fs::read_dir(root().join("policies")).expect("policies/ exists") {
        let path = entry.expect("dir entry").path();
        if path.extension().is_some_and(|e| e == "rego") {
            std::fs::copy(&path, dir.path().join(path.file_name().expect("file name")))
                .expect("copy policy");
        }
    }
    std::fs::write(
        dir.path().join("extra_test.rego"),
        "package mapguard.extra_test\n\nimport data.mapguard.privileged\n\ntest_clean_pod_is_denied if {\n\tcount(privileged.deny) == 1 with input as {\"request\": {\"kind\": {\"kind\": \"Pod\"}, \"object\": {\"spec\": {\"containers\": [{\"name\": \"a\"}]}}}}\n}\n",
    )
    .expect("write failing test");
    let out = mapguard(&["policy", "test", dir.path().to_str().expect("utf-8 path")]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("FAIL mapguard.extra_test.test_clean_pod_is_denied ("),
        "{text}"
    );
    assert!(text.contains("extra_test.rego)"), "{text}");
    assert!(text.trim_end().ends_with(" passed, 1 failed"), "{text}");
}

#[test]
fn broken_rego_is_rejected_with_its_file_name() {
    let dir = temp_dir("broken-rego");
    std::fs::write(
        dir.path().join("broken.rego"),
        "package broken\n\ndeny contains msg if {\n  msg := \n}\n",
    )
    .expect("write broken policy");
    let out = mapguard(&["policy", "test", dir.path().to_str().expect("utf-8 path")]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("broken.rego:4:"), "{err}");
    let out = mapguard(&[
        "check",
        "-f",
        "tests/manifests/allowed",
        "--policies",
        dir.path().to_str().expect("utf-8"),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("broken.rego"), "{}", stderr(&out));
}

#[test]
fn privileged_pod_is_denied_naming_file_kind_name_and_policy() {
    let out = mapguard(&["check", "-f", "tests/manifests/denied/privileged-pod.yaml"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("DENY   tests/manifests/denied/privileged-pod.yaml[0] Pod default/debug-shell (mapguard.privileged): container \"shell\" is privileged"),
        "{text}"
    );
}

#[test]
fn allowed_samples_pass_with_patches_and_warnings() {
    let out = mapguard(&[
        "check",
        "-f",
        "tests/manifests/allowed",
        "--namespaces",
        NS,
        "-o",
        "json",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON output");
    let results = report["results"].as_array().expect("results array");
    let find = |kind: &str, name: &str| {
        results
            .iter()
            .find(|r| r["subject"]["kind"] == kind && r["subject"]["name"] == name)
            .unwrap_or_else(|| panic!("{kind} {name} judged"))
    };
    let deployment = find("Deployment", "checkout");
    assert_eq!(deployment["allowed"], true);
    assert_eq!(
        deployment["patch"],
        serde_json::json!([{"op": "add", "path": "/spec/template/metadata/annotations",
                            "value": {"mapguard.io/mode": "stop"}}])
    );
    assert!(
        deployment["file"]
            .as_str()
            .expect("file")
            .ends_with("shop-deployment.yaml")
    );
    let clean = find("Pod", "clean");
    assert_eq!(clean["allowed"], true);
    assert_eq!(clean["patch"], serde_json::json!([]));
    assert_eq!(clean["warnings"], serde_json::json!([]));
    assert_eq!(
        find("CronJob", "cleanup")["patch"],
        serde_json::json!([{"op": "add", "path": "/spec/jobTemplate/spec/template/metadata/annotations",
                            "value": {"mapguard.io/mode": "stop"}}])
    );
    assert_eq!(
        find("ReplicaSet", "search-5d8f")["patch"],
        serde_json::json!([{"op": "add", "path": "/spec/template/metadata/annotations/mapguard.io~1mode",
                            "value": "stop"}])
    );
    assert_eq!(
        find("Job", "migrate")["patch"],
        serde_json::json!([{"op": "add", "path": "/spec/template/metadata",
                            "value": {"annotations": {"mapguard.io/mode": "kill"}}}])
    );
    assert_eq!(
        find("StatefulSet", "cart-db")["patch"],
        serde_json::json!([]),
        "sets its own mode"
    );
    let cron = find("CronJob", "nightly-report");
    assert_eq!(cron["allowed"], true, "payments allows opting out");
    let quiet = find("Deployment", "quiet");
    assert_eq!(quiet["warnings"][0]["policy"], "mapguard.gotraceback");
    // Every controller kind of the samples was judged as its own kind.
    for kind in [
        "StatefulSet",
        "DaemonSet",
        "ReplicaSet",
        "Job",
        "CronJob",
        "Service",
        "ConfigMap",
    ] {
        assert!(
            results.iter().any(|r| r["subject"]["kind"] == kind),
            "{kind} missing"
        );
    }
    assert_eq!(report["summary"]["denied"], 0);
}

#[test]
fn namespaces_file_makes_the_opt_out_a_deny() {
    let with = mapguard(&[
        "check",
        "-f",
        "tests/manifests/denied/opt-out.yaml",
        "--namespaces",
        NS,
    ]);
    assert_eq!(with.status.code(), Some(1), "{}", stdout(&with));
    assert!(
        stdout(&with).contains(
            "(mapguard.mode): namespace shop demands mapguard mode stop (label mapguard.io/mode): annotation mapguard.io/mode=off asks for less"
        ),
        "{}",
        stdout(&with)
    );
    // Without namespace data shop demands nothing: allowed, and the Pod's
    // own annotation is what the node agent follows there.
    let without = mapguard(&["check", "-f", "tests/manifests/denied/opt-out.yaml"]);
    assert_eq!(without.status.code(), Some(0), "{}", stdout(&without));
    assert!(
        !stdout(&without).contains("mapguard.mode"),
        "{}",
        stdout(&without)
    );
}

#[test]
fn broken_yaml_is_a_clear_error() {
    let out = mapguard(&["check", "-f", "tests/manifests/"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("tests/manifests/broken/unclosed.yaml, document 1"),
        "{err}"
    );
    assert!(
        stdout(&out).is_empty(),
        "no verdicts when input is unusable"
    );
}

#[test]
fn engine_config_exempts_and_switches_to_dry_run() {
    let dir = temp_dir("engine-config");
    let config = dir.path().join("engine.yaml");
    std::fs::write(
        &config,
        "enforcement:\n  mapguard.privileged: dry-run\n  mapguard.tamper: warn\n",
    )
    .expect("write config");
    let out = mapguard(&[
        "check",
        "-f",
        "tests/manifests/denied/privileged-pod.yaml",
        "tests/manifests/denied/ptrace-daemonset.yaml",
        "--engine-config",
        config.to_str().expect("utf-8"),
    ]);
    let text = stdout(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "dry-run and warn never deny: {text}"
    );
    assert!(text.contains("DRYRUN tests/manifests/denied/privileged-pod.yaml[0] Pod default/debug-shell (mapguard.privileged)"), "{text}");
    assert!(text.contains("WARN   tests/manifests/denied/ptrace-daemonset.yaml[0] DaemonSet default/profiler (mapguard.tamper)"), "{text}");

    std::fs::write(&config, "exemptNamespaces: [default]\n").expect("write config");
    let out = mapguard(&[
        "check",
        "-f",
        "tests/manifests/denied/privileged-pod.yaml",
        "--engine-config",
        config.to_str().expect("utf-8"),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert!(stdout(&out).contains("SKIP   tests/manifests/denied/privileged-pod.yaml[0] Pod default/debug-shell: namespace exempt"));
}

#[test]
fn namespace_flag_and_env_var_apply_to_objects_without_namespace() {
    let dir = temp_dir("ns-flag");
    let file = dir.path().join("pod.yaml");
    std::fs::write(&file, "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  hostNetwork: true\n  containers: [{name: a, image: b}]\n")
        .expect("write pod");
    let out = mapguard(&[
        "check",
        "-f",
        file.to_str().expect("utf-8"),
        "-n",
        "kube-system",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "kube-system is exempt: {}",
        stdout(&out)
    );
    let out = Command::new(env!("CARGO_BIN_EXE_mapguard"))
        .args(["check", "-f", file.to_str().expect("utf-8")])
        .env("MAPGUARD_NAMESPACE", "team-a")
        .output()
        .expect("mapguard runs");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("Pod team-a/p (mapguard.privileged): hostNetwork is not allowed"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn missing_file_is_an_error() {
    let out = mapguard(&["check", "-f", "tests/manifests/nope.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("tests/manifests/nope.yaml"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn enforcement_and_exemption_flags_override() {
    let out = mapguard(&[
        "check",
        "-f",
        "tests/manifests/denied/privileged-pod.yaml",
        "--enforcement",
        "mapguard.privileged=warn",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert!(stdout(&out).contains("WARN   tests/manifests/denied/privileged-pod.yaml[0] Pod default/debug-shell (mapguard.privileged): container \"shell\" is privileged"));
    let out = mapguard(&[
        "check",
        "-f",
        "tests/manifests/denied/privileged-pod.yaml",
        "--exempt-namespace",
        "default",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert!(stdout(&out).contains("SKIP"), "{}", stdout(&out));
}

#[test]
fn gatekeeper_constraints_judge_manifests_with_the_manifests_as_inventory() {
    let dir = temp_dir("gatekeeper");
    std::fs::write(
        dir.path().join("ingresses.yaml"),
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: web\n  namespace: shop\nspec:\n  rules:\n    - host: a.example.com\n---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: api\nspec:\n  rules:\n    - host: a.example.com\n---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: other\n  namespace: shop\nspec:\n  rules:\n    - host: b.example.com\n",
    )
    .expect("write");
    let manifests = dir.path().join("ingresses.yaml");
    let out = mapguard(&[
        "check",
        "--policies",
        "policy/tests/fixtures/gator/unique-host",
        "-f",
        manifests.to_str().expect("utf-8"),
    ]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    let text = stdout(&out);
    let at = manifests.display();
    assert!(
        text.contains(&format!(
            "DENY   {at}[0] Ingress shop/web (K8sUniqueIngressHostDemo unique-hosts): host a.example.com is already served by default/api\n"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "DENY   {at}[1] Ingress default/api (K8sUniqueIngressHostDemo unique-hosts): host a.example.com is already served by shop/web\n"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!("OK     {at}[2] Ingress shop/other")),
        "{text}"
    );
}

#[test]
fn policy_test_runs_gator_suites() {
    let out = mapguard(&["policy", "test", "policy/tests/fixtures/gator"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(
        stdout(&out).ends_with("7 passed, 0 failed, 2 skipped\n"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn the_namespaces_file_is_in_the_inventory_too() {
    let dir = temp_dir("gatekeeper-namespaces");
    let policies = dir.path().join("policies");
    std::fs::create_dir_all(&policies).expect("mkdir");
    std::fs::write(
        policies.join("template.yaml"),
        r#"apiVersion: templates.gatekeeper.sh/v1
kind: ConstraintTemplate
metadata:
  name: k8senforcednamespacedemo
spec:
  crd:
    spec:
      names:
        kind: K8sEnforcedNamespaceDemo
  targets:
    - target: admission.k8s.gatekeeper.sh
      rego: |
        package k8senforcednamespacedemo
        violation[{"msg": msg}] {
          ns := input.review.object.metadata.namespace
          not data.inventory.cluster["v1"]["Namespace"][ns].metadata.labels["mapguard.io/mode"]
          msg := sprintf("namespace %v has no mapguard.io/mode label", [ns])
        }
---
apiVersion: constraints.gatekeeper.sh/v1beta1
kind: K8sEnforcedNamespaceDemo
metadata:
  name: enforced
spec:
  match:
    kinds: [{apiGroups: [""], kinds: ["Pod"]}]
"#,
    )
    .expect("write");
    let pods = dir.path().join("pods.yaml");
    std::fs::write(
        &pods,
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: a\n  namespace: shop\nspec:\n  containers: [{name: c, image: i}]\n---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: b\n  namespace: default\nspec:\n  containers: [{name: c, image: i}]\n",
    )
    .expect("write");
    let out = mapguard(&[
        "check",
        "--policies",
        policies.to_str().expect("utf-8"),
        "--namespaces",
        NS,
        "-f",
        pods.to_str().expect("utf-8"),
    ]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}{}", stderr(&out));
    assert!(
        text.contains("Pod default/b (K8sEnforcedNamespaceDemo enforced): namespace default has no mapguard.io/mode label"),
        "{text}"
    );
    assert!(
        !text.contains("Pod shop/a (K8sEnforcedNamespaceDemo"),
        "shop is labelled: {text}"
    );
}
