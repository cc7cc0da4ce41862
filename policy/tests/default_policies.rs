//! The embedded default policies compile and pass their own `test_` rules.

use mapguard_policy::{Action, EngineConfig, PolicySet};

#[test]
fn policy_set_is_send_sync_and_cheap_to_clone() {
    fn assert_send_sync<T: Send + Sync + Clone>() {}
    assert_send_sync::<PolicySet>();
}

#[test]
fn default_policies_pass_their_tests() {
    let set = PolicySet::embedded(&EngineConfig::default());
    let report = set.run_tests();
    for result in &report.results {
        if !result.passed {
            eprintln!(
                "FAIL {} ({}): {:?}",
                result.name, result.path, result.failure
            );
        }
    }
    assert!(
        report.results.len() >= 30,
        "expected the default tests, found {}",
        report.results.len()
    );
    assert_eq!(report.failed(), 0, "default policy tests failed");
}

#[test]
fn default_policies_and_their_actions() {
    let set = PolicySet::embedded(&EngineConfig::default());
    let actions: Vec<(String, Action)> = set
        .policies()
        .iter()
        .map(|p| (p.package.clone(), p.action))
        .collect();
    assert_eq!(
        actions,
        vec![
            ("mapguard.privileged".to_string(), Action::Deny),
            ("mapguard.mode".to_string(), Action::Deny),
            ("mapguard.gotraceback".to_string(), Action::Warn),
            ("mapguard.tamper".to_string(), Action::Deny),
            ("mapguard.namespace_labels".to_string(), Action::Deny),
        ]
    );
}

#[test]
fn failing_and_erroring_test_rules_are_reported() {
    let set = PolicySet::from_sources(
        vec![(
            "t_test.rego".into(),
            "package t_test\n\ntest_true if true\n\ntest_false if false\n\ntest_value := 3\n\ntest_error if {\n  x := 1 / count([])\n  x > 0\n}\n"
                .into(),
        )],
        &EngineConfig::default(),
    )
    .expect("compiles");
    let report = set.run_tests();
    let outcome: Vec<(&str, bool)> = report
        .results
        .iter()
        .map(|r| (r.name.as_str(), r.passed))
        .collect();
    assert_eq!(
        outcome,
        vec![
            ("t_test.test_true", true),
            ("t_test.test_false", false),
            ("t_test.test_value", false),
            ("t_test.test_error", false),
        ]
    );
    assert_eq!((report.passed(), report.failed()), (1, 3));
    assert!(!report.success());
    let error = report.results[3].failure.as_deref().unwrap_or_default();
    assert!(error.starts_with("error: t_test.rego:10:"), "{error}");
}

#[test]
fn only_declared_test_rules_run_even_when_indented() {
    let set = PolicySet::from_sources(
        vec![(
            "i_test.rego".into(),
            "package i_test\n\n  test_indented if true\n\nhelper := \"test_not_a_rule\"\n\n# test_in_comment\n".into(),
        )],
        &EngineConfig::default(),
    )
    .expect("compiles");
    let names: Vec<String> = set
        .run_tests()
        .results
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(names, vec!["i_test.test_indented".to_string()]);
}
