//! Judging whole AdmissionReviews with the default policies and small
//! purpose-built policy sets.

use std::collections::BTreeMap;
use std::time::Duration;

use mapguard_policy::{
    Action, EngineConfig, EvalError, LoadError, NamespaceData, PolicySet, Review, ReviewError,
};
use serde_json::{Value, json};

fn review(kind: &str, namespace: &str, object: Value) -> Review {
    Review::new(review_json(kind, namespace, object)).expect("a review")
}

fn review_json(kind: &str, namespace: &str, object: Value) -> Value {
    let group = match kind {
        "Pod" => "",
        "Job" | "CronJob" => "batch",
        _ => "apps",
    };
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
        "kind": {"group": group, "version": "v1", "kind": kind},
        "resource": {"group": group, "version": "v1", "resource": format!("{}s", kind.to_lowercase())},
        "namespace": namespace,
        "operation": "CREATE",
        "userInfo": {"username": "admin"},
        "object": object,
        "dryRun": false,
    }})
}

fn pod_spec(privileged: bool) -> Value {
    json!({"containers": [{"name": "app", "image": "shop:1",
        "securityContext": {"privileged": privileged}}]})
}

fn pod(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec})
}

/// A controller of `kind` named `name` with a pod template of `spec`.
fn controller(kind: &str, name: &str, template_meta: Value, spec: Value) -> Value {
    let template = json!({"metadata": template_meta, "spec": spec});
    let spec = match kind {
        "CronJob" => json!({"schedule": "@daily", "jobTemplate": {"spec": {"template": template}}}),
        _ => json!({"selector": {"matchLabels": {"app": name}}, "template": template}),
    };
    json!({"apiVersion": "apps/v1", "kind": kind, "metadata": {"name": name}, "spec": spec})
}

fn enforced(mode: &str) -> NamespaceData {
    NamespaceData::from_objects([
        json!({"apiVersion": "v1", "kind": "Namespace",
               "metadata": {"name": "shop", "labels": {"mapguard.io/mode": mode}}}),
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "plain"}}),
    ])
    .expect("valid namespaces")
}

const CONTROLLERS: [(&str, &str); 6] = [
    ("Deployment", "/spec/template"),
    ("StatefulSet", "/spec/template"),
    ("DaemonSet", "/spec/template"),
    ("ReplicaSet", "/spec/template"),
    ("Job", "/spec/template"),
    ("CronJob", "/spec/jobTemplate/spec/template"),
];

#[test]
fn privileged_pod_is_denied_and_clean_pod_allowed() {
    let set = PolicySet::embedded(&EngineConfig::default());
    let ns = NamespaceData::new();
    let denied = set
        .evaluate(&review("Pod", "plain", pod("bad", pod_spec(true))), &ns)
        .expect("evaluates");
    assert!(!denied.allowed);
    assert_eq!(denied.denials.len(), 1, "{denied:?}");
    assert_eq!(denied.denials[0].policy, "mapguard.privileged");
    assert_eq!(denied.denials[0].message, "container \"app\" is privileged");
    assert_eq!(denied.subject.display(), "Pod plain/bad");

    let clean = set
        .evaluate(&review("Pod", "plain", pod("good", pod_spec(false))), &ns)
        .expect("evaluates");
    assert!(clean.allowed, "{clean:?}");
    assert!(clean.denials.is_empty() && clean.warnings.is_empty() && clean.patch.is_empty());
}

#[test]
fn every_controller_kind_is_judged_through_its_template() {
    let set = PolicySet::embedded(&EngineConfig::default());
    let ns = NamespaceData::new();
    for (kind, _) in CONTROLLERS {
        let object = controller(
            kind,
            "web",
            json!({"labels": {"app": "web"}}),
            pod_spec(true),
        );
        let decision = set
            .evaluate(&review(kind, "plain", object), &ns)
            .unwrap_or_else(|e| panic!("{kind} must evaluate: {e}"));
        assert!(
            !decision.allowed,
            "{kind} with a privileged template must be denied"
        );
        assert_eq!(
            decision.denials[0].message,
            format!("{kind} plain/web: container \"app\" is privileged"),
        );
        assert_eq!(decision.subject.kind, kind);

        let object = controller(kind, "web", json!({}), pod_spec(false));
        let decision = set
            .evaluate(&review(kind, "plain", object), &ns)
            .expect("evaluates");
        assert!(
            decision.allowed,
            "{kind} with a clean template must be allowed: {decision:?}"
        );
    }
}

#[test]
fn mode_patch_is_rerooted_onto_each_template() {
    let set = PolicySet::embedded(&EngineConfig::default());
    let ns = enforced("stop");
    for (kind, root) in CONTROLLERS {
        // Template without annotations: the whole object is added.
        let object = controller(
            kind,
            "web",
            json!({"labels": {"app": "web"}}),
            pod_spec(false),
        );
        let decision = set
            .evaluate(&review(kind, "shop", object), &ns)
            .expect("evaluates");
        assert!(decision.allowed, "{decision:?}");
        assert_eq!(
            decision.patch,
            vec![
                json!({"op": "add", "path": format!("{root}/metadata/annotations"),
                        "value": {"mapguard.io/mode": "stop"}})
            ],
            "{kind}"
        );
        // Template with other annotations: only the member is added, escaped.
        let object = controller(
            kind,
            "web",
            json!({"annotations": {"team": "a"}}),
            pod_spec(false),
        );
        let decision = set
            .evaluate(&review(kind, "shop", object), &ns)
            .expect("evaluates");
        assert_eq!(
            decision.patch,
            vec![
                json!({"op": "add", "path": format!("{root}/metadata/annotations/mapguard.io~1mode"),
                        "value": "stop"})
            ],
            "{kind}"
        );
    }
}

#[test]
fn pod_patch_applies_to_the_pod_and_produces_the_annotation() {
    let set = PolicySet::embedded(&EngineConfig::default());
    let object = pod("p", pod_spec(false));
    let decision = set
        .evaluate(&review("Pod", "shop", object.clone()), &enforced("kill"))
        .expect("evaluates");
    let ops: json_patch::Patch =
        serde_json::from_value(Value::Array(decision.patch.clone())).expect("valid RFC 6902 patch");
    let mut patched = object;
    json_patch::patch(&mut patched, &ops).expect("patch applies to the pod");
    assert_eq!(
        patched["metadata"]["annotations"]["mapguard.io/mode"],
        "kill"
    );
}

#[test]
fn opt_out_is_denied_in_enforced_namespace() {
    let set = PolicySet::embedded(&EngineConfig::default());
    let mut object = pod("p", pod_spec(false));
    object["metadata"]["annotations"] = json!({"mapguard.io/mode": "off"});
    let decision = set
        .evaluate(&review("Pod", "shop", object.clone()), &enforced("kill"))
        .expect("evaluates");
    assert!(!decision.allowed);
    assert_eq!(decision.denials[0].policy, "mapguard.mode");
    let decision = set
        .evaluate(&review("Pod", "plain", object), &enforced("kill"))
        .expect("evaluates");
    assert!(
        decision.allowed,
        "off outside an enforced namespace is allowed"
    );
}

#[test]
fn exempt_namespaces_skip_evaluation() {
    let set = PolicySet::embedded(&EngineConfig::default());
    let ns = NamespaceData::new();
    let decision = set
        .evaluate(&review("Pod", "kube-system", pod("p", pod_spec(true))), &ns)
        .expect("evaluates");
    assert!(decision.allowed && decision.exempt && decision.denials.is_empty());

    let config = EngineConfig {
        exempt_namespaces: vec!["plain".into()],
        ..EngineConfig::default()
    };
    let set = PolicySet::embedded(&config);
    assert!(
        set.evaluate(&review("Pod", "plain", pod("p", pod_spec(true))), &ns)
            .expect("evaluates")
            .exempt
    );
    let decision = set
        .evaluate(&review("Pod", "kube-system", pod("p", pod_spec(true))), &ns)
        .expect("evaluates");
    assert!(!decision.allowed, "kube-system is no longer exempt");
}

#[test]
fn dry_run_override_records_but_allows() {
    let config = EngineConfig {
        enforcement_overrides: BTreeMap::from([(
            "mapguard.privileged".to_string(),
            Action::DryRun,
        )]),
        ..EngineConfig::default()
    };
    let set = PolicySet::embedded(&config);
    let decision = set
        .evaluate(
            &review("Pod", "plain", pod("p", pod_spec(true))),
            &NamespaceData::new(),
        )
        .expect("evaluates");
    assert!(decision.allowed, "{decision:?}");
    assert_eq!(decision.dry_run.len(), 1);
    assert_eq!(decision.dry_run[0].action, Action::DryRun);
    assert_eq!(decision.dry_run[0].policy, "mapguard.privileged");
}

const WARN_POLICY: &str = r#"package test.warned

enforcement := "warn"

deny contains "always" if input.request.object
"#;

const DRY_RUN_PATCH: &str = r#"package test.dry

enforcement := "dry-run"

deny contains {"msg": "gatekeeper style"} if input.request.object

patch contains {"op": "add", "path": "/metadata/labels/x", "value": "y"} if input.request.object
"#;

#[test]
fn enforcement_rule_in_the_package_routes_findings() {
    let set = PolicySet::from_sources(
        vec![
            ("warn.rego".into(), WARN_POLICY.into()),
            ("dry.rego".into(), DRY_RUN_PATCH.into()),
        ],
        &EngineConfig::default(),
    )
    .expect("compiles");
    let decision = set
        .evaluate(
            &review("Pod", "plain", pod("p", pod_spec(false))),
            &NamespaceData::new(),
        )
        .expect("evaluates");
    assert!(decision.allowed);
    assert_eq!(decision.warnings.len(), 1);
    assert_eq!(decision.warnings[0].message, "always");
    assert_eq!(decision.warnings[0].action, Action::Warn);
    assert!(decision.patch.is_empty(), "dry-run patches are not applied");
    let messages: Vec<&str> = decision
        .dry_run
        .iter()
        .map(|f| f.message.as_str())
        .collect();
    assert!(messages.contains(&"gatekeeper style"), "{messages:?}");
    assert!(
        messages.iter().any(|m| m.starts_with("would patch:")),
        "{messages:?}"
    );
}

#[test]
fn broken_rego_names_its_file_and_line() {
    let err = PolicySet::from_sources(
        vec![
            ("good.rego".into(), WARN_POLICY.into()),
            (
                "policies/broken.rego".into(),
                "package broken\n\ndeny contains msg if {\n  msg := \n}\n".into(),
            ),
        ],
        &EngineConfig::default(),
    )
    .expect_err("broken policy must be rejected");
    let text = err.to_string();
    match &err {
        LoadError::Parse { path, line, .. } => {
            assert_eq!(path, "policies/broken.rego");
            assert_eq!(*line, Some(4), "{text}");
        }
        other => panic!("expected a parse error, got {other:?}"),
    }
    assert!(text.contains("policies/broken.rego:4:"), "{text}");
    assert!(!text.contains('\n'), "one line: {text}");
}

#[test]
fn bad_enforcement_value_is_a_load_error() {
    let err = PolicySet::from_sources(
        vec![(
            "e.rego".into(),
            "package e\n\nenforcement := \"block\"\n\ndeny contains 1 if false\n".into(),
        )],
        &EngineConfig::default(),
    )
    .expect_err("unknown action must be rejected");
    assert!(err.to_string().contains("\"block\""), "{err}");
}

#[test]
fn load_dir_reads_recursively_and_rejects_empty_dirs() {
    let dir = std::env::temp_dir().join(format!("mapguard-load-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("nested")).expect("create dirs");
    assert!(matches!(
        PolicySet::load_dir(&dir, &EngineConfig::default()),
        Err(LoadError::Empty(_))
    ));
    std::fs::write(dir.join("nested/w.rego"), WARN_POLICY).expect("write policy");
    let set = PolicySet::load_dir(&dir, &EngineConfig::default()).expect("loads");
    assert_eq!(set.policies()[0].package, "test.warned");
    assert!(set.policies()[0].path.ends_with("nested/w.rego"));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn evaluation_errors_are_typed_not_allows() {
    let compile = |name: &str, rego: &str| {
        PolicySet::from_sources(vec![(name.into(), rego.into())], &EngineConfig::default())
            .expect("compiles")
    };
    let mut object = pod("p", pod_spec(false));
    object["zero"] = json!(0);
    let r = review("Pod", "plain", object);
    let set = compile(
        "bad.rego",
        "package bad\n\ndeny contains msg if {\n  msg := 1 / input.request.object.zero\n}\n",
    );
    match set.evaluate(&r, &NamespaceData::new()) {
        Err(EvalError::Rego {
            policy, message, ..
        }) => {
            assert_eq!(policy, "bad");
            assert!(message.starts_with("bad.rego:4:"), "{message}");
        }
        other => panic!("expected a Rego error, got {other:?}"),
    }
    let set = compile("notset.rego", "package notset\n\nwarn := \"oops\"\n");
    let result = set.evaluate(&r, &NamespaceData::new());
    assert!(
        matches!(result, Err(EvalError::BadDecision { .. })),
        "{result:?}"
    );
    let result = Review::new(json!({"kind": "AdmissionReview"}));
    assert!(matches!(result, Err(ReviewError::NoRequest)), "{result:?}");
}

#[test]
fn runaway_policy_hits_the_deadline() {
    let set = PolicySet::from_sources(
        vec![(
            "slow.rego".into(),
            "package slow\n\ndeny contains msg if {\n  n := numbers.range(1, 3000)\n  some a in n\n  some b in n\n  a * b == 8999999\n  msg := \"never\"\n}\n".into(),
        )],
        &EngineConfig::default(),
    )
    .expect("compiles");
    let r = review("Pod", "plain", pod("p", pod_spec(false)));
    let result =
        set.evaluate_with_timeout(&r, &NamespaceData::new(), Some(Duration::from_millis(20)));
    assert!(
        matches!(result, Err(EvalError::Timeout { .. })),
        "{result:?}"
    );
}

#[test]
fn namespace_data_changes_are_seen_by_cached_engines() {
    let set = PolicySet::embedded(&EngineConfig::default());
    let r = review("Pod", "shop", pod("p", pod_spec(false)));
    let mut ns = enforced("audit");
    let first = set.evaluate(&r, &ns).expect("evaluates");
    assert_eq!(
        first.patch[0]["value"],
        json!({"mapguard.io/mode": "audit"})
    );
    ns.upsert(&json!({"kind": "Namespace", "metadata": {"name": "shop", "labels": {"mapguard.io/mode": "kill"}}}))
        .expect("valid namespace");
    let second = set.evaluate(&r, &ns).expect("evaluates");
    assert_eq!(
        second.patch[0]["value"],
        json!({"mapguard.io/mode": "kill"})
    );
    ns.remove("shop");
    assert!(set.evaluate(&r, &ns).expect("evaluates").patch.is_empty());
}

#[test]
fn delete_and_other_kinds_are_allowed_without_findings() {
    let set = PolicySet::embedded(&EngineConfig::default());
    let mut r = review_json("Pod", "shop", Value::Null);
    r["request"]["operation"] = json!("DELETE");
    r["request"]["oldObject"] = pod("p", pod_spec(true));
    r["request"]["name"] = json!("p");
    let r = Review::new(r).expect("a review");
    let decision = set.evaluate(&r, &enforced("kill")).expect("evaluates");
    assert!(decision.allowed && decision.denials.is_empty() && decision.patch.is_empty());
    assert_eq!(decision.subject.name, "p");
    let cm = review(
        "ConfigMap",
        "shop",
        json!({"kind": "ConfigMap", "metadata": {"name": "c"}, "data": {}}),
    );
    let decision = set.evaluate(&cm, &enforced("kill")).expect("evaluates");
    assert!(decision.allowed && decision.patch.is_empty() && decision.warnings.is_empty());
}
