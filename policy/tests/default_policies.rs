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
        ]
    );
}
