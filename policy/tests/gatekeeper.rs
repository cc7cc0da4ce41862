//! Gatekeeper ConstraintTemplates and Constraints, loaded from a policies
//! folder beside mapguard's own Rego, judging whole AdmissionReviews.
//! The templates under `fixtures/gatekeeper/` are written for these tests in
//! the shapes the Gatekeeper library uses (v0 with libs, v1 `code`, CEL).

use std::path::{Path, PathBuf};

use mapguard_policy::{
    Action, Admitted, Candidate, EngineConfig, LoadError, NamespaceData, PolicySet, Review,
};
use serde_json::{Value, json};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gatekeeper")
}

fn review(group: &str, kind: &str, namespace: &str, object: Value) -> Review {
    Review::new(review_json(group, kind, namespace, object)).expect("a review")
}

fn review_json(group: &str, kind: &str, namespace: &str, object: Value) -> Value {
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": "1",
        "kind": {"group": group, "version": "v1", "kind": kind},
        "namespace": namespace,
        "operation": "CREATE",
        "userInfo": {"username": "admin"},
        "object": object,
    }})
}

fn pod(name: &str, image: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"containers": [{"name": "app", "image": image}],
                 "initContainers": [{"name": "init", "image": "registry.example.com/init:1"}]}})
}

fn namespaces() -> NamespaceData {
    NamespaceData::from_objects([
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop", "labels": {"tier": "prod"}}}),
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "pay-eu"}}),
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "pay-test"}}),
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}}),
    ])
    .expect("namespaces")
}

fn set() -> PolicySet {
    PolicySet::load_dir(&fixtures(), &EngineConfig::default()).expect("the fixtures load")
}

/// `(policy, action, message)` of every finding.
fn findings(set: &PolicySet, review: &Review) -> Vec<(String, Action, String)> {
    let d = set.evaluate(review, &namespaces()).expect("evaluates");
    assert_eq!(d.allowed, d.denials.is_empty());
    d.denials
        .iter()
        .chain(&d.warnings)
        .chain(&d.dry_run)
        .map(|f| (f.policy.clone(), f.action, f.message.clone()))
        .collect()
}

#[test]
fn templates_and_constraints_load_and_cel_only_ones_are_reported() {
    let set = set();
    let constraints: Vec<(String, Action)> =
        set.constraints().map(|c| (c.label(), c.action)).collect();
    assert_eq!(
        constraints,
        [
            (
                "K8sAllowedRegistries shop-registries".to_string(),
                Action::Deny
            ),
            (
                "K8sAllowedRegistries debug-pods-audit".to_string(),
                Action::DryRun
            ),
            ("K8sRequiredAnnotations web-owner".to_string(), Action::Warn),
        ]
    );
    let unsupported = set.unsupported_templates();
    assert_eq!(unsupported.len(), 1);
    assert_eq!(unsupported[0].kind, "K8sReplicaLimit");
    assert!(
        unsupported[0].reason.contains("CEL"),
        "{:?}",
        unsupported[0]
    );
    assert!(set.policies().is_empty(), "no mapguard Rego in the folder");
}

#[test]
fn a_v0_template_with_a_library_denies_in_the_namespaces_it_matches() {
    let set = set();
    let bad = pod("web", "docker.io/nginx:1");
    let expected = vec![(
        "K8sAllowedRegistries shop-registries".to_string(),
        Action::Deny,
        "container <app> uses image <docker.io/nginx:1> from a registry not in [\"registry.example.com/\"]"
            .to_string(),
    )];
    assert_eq!(
        findings(&set, &review("", "Pod", "shop", bad.clone())),
        expected
    );
    // `pay-*` is matched, `pay-test` excluded, `default` not listed.
    assert_eq!(
        findings(&set, &review("", "Pod", "pay-eu", bad.clone())),
        expected
    );
    assert_eq!(
        findings(&set, &review("", "Pod", "pay-test", bad.clone())),
        []
    );
    assert_eq!(findings(&set, &review("", "Pod", "default", bad)), []);
    // The library sees init containers too; this one is allowed.
    let good = pod("web", "registry.example.com/web:2");
    assert_eq!(findings(&set, &review("", "Pod", "shop", good)), []);
    // Another kind is not matched.
    let svc =
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"}, "spec": {}});
    assert_eq!(findings(&set, &review("", "Service", "shop", svc)), []);
}

#[test]
fn dry_run_constraints_match_by_name_and_scope_and_deny_nothing() {
    let set = set();
    let debug = pod("debug-7", "registry.example.com/tools:1");
    let d = set
        .evaluate(&review("", "Pod", "default", debug), &namespaces())
        .expect("evaluates");
    assert!(d.allowed, "{d:?}");
    // Both containers (the library's init containers too).
    assert_eq!(d.dry_run.len(), 2, "{d:?}");
    assert!(
        d.dry_run
            .iter()
            .all(|f| f.policy == "K8sAllowedRegistries debug-pods-audit"),
        "{d:?}"
    );
    assert_eq!(
        findings(&set, &review("", "Pod", "default", pod("web", "x/y:1"))),
        [],
        "another name"
    );
}

#[test]
fn a_v1_template_warns_on_selected_deployments_in_selected_namespaces() {
    let set = set();
    let deployment = |labels: Value, annotations: Value| {
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "labels": labels, "annotations": annotations},
            "spec": {"template": {"spec": {"containers": [{"name": "app", "image": "registry.example.com/web:1"}]}}}})
    };
    let warned = findings(
        &set,
        &review(
            "apps",
            "Deployment",
            "shop",
            deployment(json!({"app": "web"}), json!({})),
        ),
    );
    assert_eq!(
        warned,
        [(
            "K8sRequiredAnnotations web-owner".to_string(),
            Action::Warn,
            "Deployment web must carry the annotation owner".to_string()
        )]
    );
    let annotated = deployment(json!({"app": "web"}), json!({"owner": "team-a"}));
    assert_eq!(
        findings(&set, &review("apps", "Deployment", "shop", annotated)),
        []
    );
    let other_app = deployment(json!({"app": "db"}), json!({}));
    assert_eq!(
        findings(&set, &review("apps", "Deployment", "shop", other_app)),
        []
    );
    // pay-eu has no `tier: prod` label.
    let web = deployment(json!({"app": "web"}), json!({}));
    assert_eq!(
        findings(&set, &review("apps", "Deployment", "pay-eu", web)),
        []
    );
}

#[test]
fn a_deleted_object_is_matched_and_judged_as_its_old_object() {
    let set = set();
    let mut r = review_json("", "Pod", "shop", Value::Null);
    r["request"]["operation"] = json!("DELETE");
    r["request"]["oldObject"] = pod("web", "docker.io/nginx:1");
    let r = Review::new(r).expect("a review");
    assert_eq!(findings(&set, &r).len(), 1);
}

#[test]
fn gatekeeper_constraints_run_beside_mapguards_own_policies() {
    let dir = tempdir("mixed");
    let file = "allowed-registries.yaml";
    std::fs::copy(fixtures().join(file), dir.path().join(file)).expect("copy");
    std::fs::write(
        dir.path().join("own.rego"),
        "package mapguard.own\n\ndeny contains msg if {\n  input.request.object.spec.hostPID\n  msg := \"hostPID is not allowed\"\n}\n",
    )
    .expect("write");
    let set = PolicySet::load_dir(dir.path(), &EngineConfig::default()).expect("loads");
    let mut p = pod("web", "docker.io/nginx:1");
    p["spec"]["hostPID"] = json!(true);
    let policies: Vec<String> = findings(&set, &review("", "Pod", "shop", p))
        .into_iter()
        .map(|(policy, _, _)| policy)
        .collect();
    assert_eq!(
        policies,
        ["mapguard.own", "K8sAllowedRegistries shop-registries"]
    );
}

/// A fresh folder for one test, removed when the test ends.
fn tempdir(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("mapguard-gk-{name}-"))
        .tempdir()
        .expect("temp dir")
}

/// Loads `documents` (YAML) written to a folder of their own.
fn load(name: &str, documents: &str) -> Result<PolicySet, LoadError> {
    let dir = tempdir(name);
    std::fs::write(dir.path().join("policy.yaml"), documents).expect("write");
    PolicySet::load_dir(dir.path(), &EngineConfig::default())
}

const TEMPLATE: &str = r#"apiVersion: templates.gatekeeper.sh/v1beta1
kind: ConstraintTemplate
metadata:
  name: k8smaxcontainers
spec:
  crd:
    spec:
      names:
        kind: K8sMaxContainers
      validation:
        openAPIV3Schema:
          type: object
          properties:
            max:
              type: integer
  targets:
    - target: admission.k8s.gatekeeper.sh
      rego: |
        package k8smaxcontainers
        violation[{"msg": "too many containers"}] {
          count(input.review.object.spec.containers) > input.parameters.max
        }
"#;

#[test]
fn bad_templates_and_constraints_are_clear_errors() {
    let wrong_type = format!(
        "{TEMPLATE}---\napiVersion: constraints.gatekeeper.sh/v1beta1\nkind: K8sMaxContainers\nmetadata:\n  name: two\nspec:\n  parameters:\n    max: \"two\"\n"
    );
    let e = load("wrong-type", &wrong_type).unwrap_err().to_string();
    assert!(
        e.ends_with("policy.yaml: K8sMaxContainers two: spec.parameters do not match the template's schema: /max: \"two\" is not of type \"integer\""),
        "{e}"
    );

    let unknown_kind =
        "apiVersion: constraints.gatekeeper.sh/v1beta1\nkind: K8sNowhere\nmetadata:\n  name: x\n";
    let e = load("unknown-kind", unknown_kind).unwrap_err().to_string();
    assert!(
        e.ends_with("policy.yaml: K8sNowhere x: no ConstraintTemplate defines kind \"K8sNowhere\" (templates loaded: none)"),
        "{e}"
    );

    let broken = TEMPLATE.replace("> input.parameters.max", "> undefined_var");
    let e = load("broken", &broken).unwrap_err().to_string();
    assert!(
        e.contains("ConstraintTemplate k8smaxcontainers: its Rego does not compile:"),
        "{e}"
    );

    let scoped = format!(
        "{TEMPLATE}---\napiVersion: constraints.gatekeeper.sh/v1beta1\nkind: K8sMaxContainers\nmetadata:\n  name: s\nspec:\n  enforcementAction: scoped\n"
    );
    let e = load("scoped", &scoped).unwrap_err().to_string();
    assert!(e.contains("enforcementAction \"scoped\""), "{e}");

    let twice = format!("{TEMPLATE}---\n{TEMPLATE}");
    let e = load("twice", &twice).unwrap_err().to_string();
    assert!(e.contains("both define kind K8sMaxContainers"), "{e}");

    let e = load("yaml", "apiVersion: [\n").unwrap_err().to_string();
    assert!(e.starts_with("invalid YAML in "), "{e}");
}

fn yaml(text: &str) -> Value {
    yaml_serde::from_str(text).expect("YAML")
}

fn max_containers(name: &str, max: &str) -> Value {
    yaml(&format!(
        "apiVersion: constraints.gatekeeper.sh/v1beta1\nkind: K8sMaxContainers\nmetadata:\n  name: {name}\nspec:\n  parameters:\n    max: {max}\n"
    ))
}

fn candidate(path: &str, document: Value, previous: Option<Value>) -> Candidate {
    Candidate {
        path: path.to_owned(),
        document,
        previous,
    }
}

fn constraint_labels(set: &PolicySet) -> Vec<String> {
    set.constraints().map(|c| c.label()).collect()
}

#[test]
fn candidates_are_admitted_one_by_one() {
    let config = EngineConfig::default();
    let candidates = [
        candidate("t", yaml(TEMPLATE), None),
        candidate("a", max_containers("a", "1"), None),
        candidate("bad", max_containers("bad", "\"two\""), None),
        candidate("b", max_containers("b", "3"), None),
    ];
    let (set, admitted) = PolicySet::embedded_with(&candidates, &config).expect("the set compiles");
    assert_eq!(
        constraint_labels(&set),
        ["K8sMaxContainers a", "K8sMaxContainers b"]
    );
    assert_eq!(admitted[..2], [Admitted::Current, Admitted::Current]);
    assert_eq!(admitted[3], Admitted::Current);
    let e = admitted[2].error().expect("rejected").to_string();
    assert!(
        e.ends_with("bad: K8sMaxContainers bad: spec.parameters do not match the template's schema: /max: \"two\" is not of type \"integer\""),
        "{e}"
    );
    assert!(matches!(admitted[2], Admitted::Rejected(_)));
    // The constraints admitted still judge.
    let three = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "a", "image": "a"}, {"name": "b", "image": "b"}]}});
    let found = findings(&set, &review("", "Pod", "default", three));
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].0, "K8sMaxContainers a");

    // A template that does not compile: rejected with its constraints; a
    // second template of the same kind: rejected, the first one serves.
    let broken = yaml(&TEMPLATE.replace("> input.parameters.max", "> undefined_var"));
    let (set, admitted) = PolicySet::embedded_with(
        &[
            candidate("t", broken.clone(), None),
            candidate("a", max_containers("a", "1"), None),
        ],
        &config,
    )
    .expect("the set compiles");
    assert_eq!(constraint_labels(&set), Vec::<String>::new());
    let e = admitted[1].error().expect("rejected").to_string();
    assert_eq!(
        e,
        "a: K8sMaxContainers a: its ConstraintTemplate (t) is rejected"
    );
    let (_, admitted) = PolicySet::embedded_with(
        &[
            candidate("t", yaml(TEMPLATE), None),
            candidate("t2", yaml(TEMPLATE), None),
        ],
        &config,
    )
    .expect("the set compiles");
    assert_eq!(admitted[0], Admitted::Current);
    assert!(
        admitted[1]
            .error()
            .expect("rejected")
            .to_string()
            .contains("both define kind"),
        "{admitted:?}"
    );

    // With its previous version: that one serves, and its constraints.
    let (set, admitted) = PolicySet::embedded_with(
        &[
            candidate("t", broken, Some(yaml(TEMPLATE))),
            candidate("a", max_containers("a", "1"), None),
        ],
        &config,
    )
    .expect("the set compiles");
    assert!(matches!(admitted[0], Admitted::Previous(_)), "{admitted:?}");
    assert_eq!(admitted[1], Admitted::Current);
    assert_eq!(constraint_labels(&set), ["K8sMaxContainers a"]);
}

#[test]
fn a_namespace_selector_needs_the_namespace() {
    let set = set();
    let web = json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "labels": {"app": "web"}}, "spec": {}});
    let e = set
        .evaluate(
            &review("apps", "Deployment", "unknown-ns", web),
            &namespaces(),
        )
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("constraint K8sRequiredAnnotations web-owner: namespaceSelector needs the labels of namespace \"unknown-ns\""),
        "{e}"
    );
}
