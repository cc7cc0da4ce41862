//! The project's Rego test runner: every `test_` rule queried on its own.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::PolicySet;

/// Outcome of one `test_` rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TestResult {
    /// `package.test_name`.
    pub name: String,
    /// File declaring the rule.
    pub path: String,
    pub passed: bool,
    /// Why it failed: `false`/undefined result, or an evaluation error.
    pub failure: Option<String>,
    #[serde(skip)]
    pub duration: Duration,
}

/// All test outcomes, in load order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TestReport {
    pub results: Vec<TestResult>,
}

impl TestReport {
    pub fn passed(&self) -> usize {
        self.results.iter().filter(|r| r.passed).count()
    }

    pub fn failed(&self) -> usize {
        self.results.len() - self.passed()
    }

    /// True when at least one test ran and none failed.
    pub fn success(&self) -> bool {
        self.failed() == 0
    }
}

impl PolicySet {
    /// Evaluates every `test_` rule on a fresh copy of the compiled engine
    /// (empty input and data; tests bring theirs with `with`). A rule passes
    /// when it is `true`.
    pub fn run_tests(&self) -> TestReport {
        let mut results = Vec::with_capacity(self.inner.tests.len());
        for test in &self.inner.tests {
            let started = Instant::now();
            let mut engine = self.inner.test_engine.clone();
            engine.set_input(regorus::Value::new_object());
            let failure = match engine.eval_rule(test.rule_path.clone()) {
                Ok(regorus::Value::Bool(true)) => None,
                Ok(regorus::Value::Undefined) => Some("result is undefined".to_string()),
                Ok(other) => Some(format!(
                    "result is {}",
                    other.to_json_str().unwrap_or_else(|_| "?".into())
                )),
                Err(e) => Some(format!(
                    "error: {}",
                    crate::diagnostic::one_line(&format!("{e:#}"))
                )),
            };
            results.push(TestResult {
                name: test.name.clone(),
                path: test.path.clone(),
                passed: failure.is_none(),
                failure,
                duration: started.elapsed(),
            });
        }
        TestReport { results }
    }
}
