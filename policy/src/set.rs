//! Loading and compiling a set of Rego policies.

mod compile;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use regorus::Engine;

use crate::diagnostic::one_line;
use crate::gatekeeper::{
    self, Admitted, Candidate, ConstraintInfo, Gatekeeper, GatekeeperError, Unsupported,
};
use crate::{Action, EngineConfig};
use compile::{collect_sources, compile, is_test_file, test_rule_names};

/// The decision rules a policy package may declare.
pub(crate) const DECISION_RULES: [&str; 3] = ["deny", "warn", "patch"];

/// The default policies, compiled into the binary.
const EMBEDDED: [(&str, &str); 10] = [
    (
        "policies/privileged.rego",
        include_str!("../../policies/privileged.rego"),
    ),
    (
        "policies/privileged_test.rego",
        include_str!("../../policies/privileged_test.rego"),
    ),
    (
        "policies/mode.rego",
        include_str!("../../policies/mode.rego"),
    ),
    (
        "policies/mode_test.rego",
        include_str!("../../policies/mode_test.rego"),
    ),
    (
        "policies/gotraceback.rego",
        include_str!("../../policies/gotraceback.rego"),
    ),
    (
        "policies/gotraceback_test.rego",
        include_str!("../../policies/gotraceback_test.rego"),
    ),
    (
        "policies/tamper.rego",
        include_str!("../../policies/tamper.rego"),
    ),
    (
        "policies/tamper_test.rego",
        include_str!("../../policies/tamper_test.rego"),
    ),
    (
        "policies/namespace_labels.rego",
        include_str!("../../policies/namespace_labels.rego"),
    ),
    (
        "policies/namespace_labels_test.rego",
        include_str!("../../policies/namespace_labels_test.rego"),
    ),
];

static NEXT_SET_ID: AtomicU64 = AtomicU64::new(1);

/// One policy package: a package declaring `deny`, `warn` or `patch`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyInfo {
    /// Package name without `data.` (`mapguard.host_access`).
    pub package: String,
    /// The file declaring its decision rules.
    pub path: String,
    /// Enforcement action in effect (config override, else the package's
    /// `enforcement` rule, else deny).
    pub action: Action,
    /// `data.…` rule paths of the decision rules it declares, by name.
    pub(crate) rules: Vec<(&'static str, String)>,
}

impl PolicyInfo {
    /// The actions its findings can carry, as [`crate::Finding::action`]
    /// will: a dry-run policy's are all dry-run; otherwise `deny` rules give
    /// the policy's action and `warn` rules a warning.
    pub fn finding_actions(&self) -> Vec<Action> {
        let has = |name: &str| self.rules.iter().any(|(rule, _)| *rule == name);
        let mut actions = Vec::new();
        match self.action {
            Action::DryRun => {
                if has("deny") || has("warn") || has("patch") {
                    actions.push(Action::DryRun);
                }
            }
            action => {
                if has("deny") {
                    actions.push(action);
                }
                if has("warn") && !actions.contains(&Action::Warn) {
                    actions.push(Action::Warn);
                }
            }
        }
        actions
    }
}

/// One `test_` rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TestCase {
    pub name: String,
    pub path: String,
    pub rule_path: String,
}

pub(crate) struct Inner {
    pub id: u64,
    /// Policies only (no `*_test.rego`): what requests are judged with.
    pub engine: Engine,
    /// Every file: what `run_tests` uses.
    pub test_engine: Engine,
    pub policies: Vec<PolicyInfo>,
    pub tests: Vec<TestCase>,
    pub config: EngineConfig,
    /// ConstraintTemplates and Constraints.
    pub gatekeeper: Gatekeeper,
}

/// A compiled, immutable set of policies; cloning is cheap.
#[derive(Clone)]
pub struct PolicySet {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for PolicySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicySet")
            .field("policies", &self.inner.policies)
            .field("tests", &self.inner.tests.len())
            .finish()
    }
}

/// Why a policy set could not be built. The caller keeps its last good set.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read policy directory {path}: {source}")]
    ReadDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read policy file {path}: {source}")]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no *.rego files or Gatekeeper ConstraintTemplates found in {0}")]
    Empty(PathBuf),
    #[error("invalid YAML in {path}: {message}")]
    Yaml { path: String, message: String },
    #[error(transparent)]
    Gatekeeper(#[from] GatekeeperError),
    /// `message` is one line, starting with `path:line:col:` when regorus
    /// gives a location.
    #[error("invalid policy file {path}: {message}")]
    Parse {
        path: String,
        line: Option<u32>,
        message: String,
    },
    #[error("policies do not compile: {message}")]
    Compile { message: String },
    #[error(
        "policy {package} ({path}): enforcement must be \"deny\", \"warn\" or \"dry-run\", found {found}"
    )]
    BadEnforcement {
        package: String,
        path: String,
        found: String,
    },
}

impl PolicySet {
    /// Compiles every `*.rego` file under `dir` (recursively, in path order)
    /// and the Gatekeeper ConstraintTemplates and Constraints of its
    /// `*.yaml`/`*.yml` files (other YAML documents are ignored).
    pub fn load_dir(dir: &Path, config: &EngineConfig) -> Result<PolicySet, LoadError> {
        let (sources, documents) = read_dir(dir)?;
        if sources.is_empty() && documents.is_empty() {
            return Err(LoadError::Empty(dir.to_path_buf()));
        }
        Self::from_parts(sources, &documents, config)
    }

    /// As [`PolicySet::load_dir`], with Gatekeeper templates and constraints
    /// from elsewhere (the cluster's objects), each admitted on its own: a
    /// bad one is left out (or its previous version kept) and the rest of
    /// the set still compiles. Returns what became of each candidate.
    pub fn load_dir_with(
        dir: &Path,
        candidates: &[Candidate],
        config: &EngineConfig,
    ) -> Result<(PolicySet, Vec<Admitted>), LoadError> {
        let (sources, documents) = read_dir(dir)?;
        if sources.is_empty() && documents.is_empty() && candidates.is_empty() {
            return Err(LoadError::Empty(dir.to_path_buf()));
        }
        Self::with_candidates(sources, &documents, candidates, config)
    }

    /// Compiles only the `*.rego` files under `dir` (what `policy test` runs
    /// the `test_` rules of); `None` when there are none.
    pub fn load_rego_dir(
        dir: &Path,
        config: &EngineConfig,
    ) -> Result<Option<PolicySet>, LoadError> {
        let mut files = Vec::new();
        collect_sources(dir, &mut files)?;
        files.retain(|f| f.extension().is_some_and(|e| e == "rego"));
        files.sort();
        if files.is_empty() {
            return Ok(None);
        }
        let mut sources = Vec::with_capacity(files.len());
        for file in files {
            let text = std::fs::read_to_string(&file).map_err(|source| LoadError::ReadFile {
                path: file.clone(),
                source,
            })?;
            sources.push((file.display().to_string(), text));
        }
        Self::from_sources(sources, config).map(Some)
    }

    /// The default policies (`policies/*.rego` of this repository, tests included).
    pub fn embedded(config: &EngineConfig) -> PolicySet {
        // The embedded sources are compiled and tested by this crate's tests.
        Self::from_parts(embedded_sources(), &[], config)
            .expect("embedded default policies must compile")
    }

    /// The default policies and Gatekeeper candidates from elsewhere, as
    /// [`PolicySet::load_dir_with`].
    pub fn embedded_with(
        candidates: &[Candidate],
        config: &EngineConfig,
    ) -> Result<(PolicySet, Vec<Admitted>), LoadError> {
        Self::with_candidates(embedded_sources(), &[], candidates, config)
    }

    fn with_candidates(
        sources: Vec<(String, String)>,
        documents: &[(String, serde_json::Value)],
        candidates: &[Candidate],
        config: &EngineConfig,
    ) -> Result<(PolicySet, Vec<Admitted>), LoadError> {
        let (gatekeeper, admitted) = Gatekeeper::with_candidates(documents, candidates)?;
        Ok((Self::compile_with(sources, gatekeeper, config)?, admitted))
    }

    /// Compiles `(path, rego)` pairs.
    pub fn from_sources(
        sources: Vec<(String, String)>,
        config: &EngineConfig,
    ) -> Result<PolicySet, LoadError> {
        Self::from_parts(sources, &[], config)
    }

    /// Compiles `(path, rego)` pairs and Gatekeeper `(path, document)` pairs.
    pub fn from_parts(
        sources: Vec<(String, String)>,
        gatekeeper_documents: &[(String, serde_json::Value)],
        config: &EngineConfig,
    ) -> Result<PolicySet, LoadError> {
        let gatekeeper = Gatekeeper::from_documents(gatekeeper_documents)?;
        Self::compile_with(sources, gatekeeper, config)
    }

    /// Compiles `(path, rego)` pairs beside compiled Gatekeeper objects.
    fn compile_with(
        sources: Vec<(String, String)>,
        gatekeeper: Gatekeeper,
        config: &EngineConfig,
    ) -> Result<PolicySet, LoadError> {
        // Everything, for the test runner; errors name their file.
        let (mut test_engine, packages) = compile(&sources)?;
        // Test files stay out of the evaluation engine: with regorus every
        // `data.` reference costs time proportional to the rules loaded.
        let (mut engine, _) = if sources.iter().any(|(p, _)| is_test_file(p)) {
            let policies: Vec<(String, String)> = sources
                .iter()
                .filter(|(p, _)| !is_test_file(p))
                .cloned()
                .collect();
            compile(&policies)?
        } else {
            (test_engine.clone(), Vec::new())
        };

        // The settings policies read (data.mapguard_config), in both.
        for e in [&mut test_engine, &mut engine] {
            e.add_data(regorus::Value::from(config.to_data_json()))
                .map_err(|e| LoadError::Compile {
                    message: format!("cannot load the engine settings: {e:#}"),
                })?;
        }

        let mut policies: Vec<PolicyInfo> = Vec::new();
        let mut tests = Vec::new();
        let mut seen_tests = BTreeSet::new();
        for (path, prefix) in &packages {
            let package = prefix.trim_start_matches("data.").to_string();
            let declares = |rule: &str| {
                test_engine
                    .has_declared_rule_rooted_at(path, rule)
                    .unwrap_or(false)
            };
            let rules: Vec<(&'static str, String)> = DECISION_RULES
                .iter()
                .filter(|r| !is_test_file(path) && declares(r))
                .map(|r| (*r, format!("{prefix}.{r}")))
                .collect();
            if !rules.is_empty() {
                match policies.iter_mut().find(|p| p.package == package) {
                    Some(existing) => {
                        for rule in rules {
                            if !existing.rules.contains(&rule) {
                                existing.rules.push(rule);
                            }
                        }
                    }
                    None => policies.push(PolicyInfo {
                        package: package.clone(),
                        path: path.clone(),
                        action: Action::Deny,
                        rules,
                    }),
                }
            }
            let rego = sources
                .iter()
                .find(|(p, _)| p == path)
                .map(|(_, r)| r.as_str())
                .unwrap_or_default();
            for name in test_rule_names(rego) {
                if declares(&name) && seen_tests.insert(format!("{prefix}.{name}")) {
                    tests.push(TestCase {
                        name: format!("{package}.{name}"),
                        path: path.clone(),
                        rule_path: format!("{prefix}.{name}"),
                    });
                }
            }
        }

        for policy in &mut policies {
            policy.action = match config.enforcement_overrides.get(&policy.package) {
                Some(action) => *action,
                None => declared_enforcement(&mut engine, &packages, policy)?,
            };
        }
        for package in config.enforcement_overrides.keys() {
            if !policies.iter().any(|p| &p.package == package) {
                tracing::warn!(%package, "enforcement override names no loaded policy package");
            }
        }
        tracing::debug!(
            policies = policies.len(),
            tests = tests.len(),
            "policy set compiled"
        );
        Ok(PolicySet {
            inner: Arc::new(Inner {
                id: NEXT_SET_ID.fetch_add(1, Ordering::Relaxed),
                engine,
                test_engine,
                policies,
                tests,
                config: config.clone(),
                gatekeeper,
            }),
        })
    }

    /// The policy packages, in load order.
    pub fn policies(&self) -> &[PolicyInfo] {
        &self.inner.policies
    }

    /// The Gatekeeper constraints, in load order.
    pub fn constraints(&self) -> impl Iterator<Item = &ConstraintInfo> {
        self.inner.gatekeeper.constraints.iter().map(|c| &c.info)
    }

    /// ConstraintTemplates read but not run (CEL only).
    pub fn unsupported_templates(&self) -> &[Unsupported] {
        &self.inner.gatekeeper.unsupported
    }

    /// The configuration the set was built with.
    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    /// Number of `test_` rules found.
    pub fn test_count(&self) -> usize {
        self.inner.tests.len()
    }
}

/// The `(path, rego)` pairs and Gatekeeper `(path, document)` pairs of
/// every file under `dir`, in path order.
#[allow(clippy::type_complexity)]
fn read_dir(
    dir: &Path,
) -> Result<(Vec<(String, String)>, Vec<(String, serde_json::Value)>), LoadError> {
    let mut files = Vec::new();
    collect_sources(dir, &mut files)?;
    files.sort();
    let mut sources = Vec::new();
    let mut documents = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).map_err(|source| LoadError::ReadFile {
            path: file.clone(),
            source,
        })?;
        let path = file.display().to_string();
        if file.extension().is_some_and(|e| e == "rego") {
            sources.push((path, text));
        } else {
            documents.extend(gatekeeper_documents(&path, &text)?);
        }
    }
    Ok((sources, documents))
}

fn embedded_sources() -> Vec<(String, String)> {
    EMBEDDED
        .iter()
        .map(|(path, rego)| (path.to_string(), rego.to_string()))
        .collect()
}

/// The Gatekeeper documents of one YAML file (every other document is
/// ignored: a policies folder may hold other YAML).
fn gatekeeper_documents(
    path: &str,
    text: &str,
) -> Result<Vec<(String, serde_json::Value)>, LoadError> {
    let mut out = Vec::new();
    for document in yaml_serde::Deserializer::from_str(text) {
        let value =
            <serde_json::Value as serde::Deserialize>::deserialize(document).map_err(|e| {
                LoadError::Yaml {
                    path: path.to_string(),
                    message: e.to_string(),
                }
            })?;
        if gatekeeper::is_gatekeeper(&value) {
            out.push((path.to_string(), value));
        }
    }
    Ok(out)
}

/// The `enforcement` rule of a package, if it declares one.
fn declared_enforcement(
    engine: &mut Engine,
    packages: &[(String, String)],
    policy: &PolicyInfo,
) -> Result<Action, LoadError> {
    let prefix = format!("data.{}", policy.package);
    let declared = packages.iter().any(|(path, p)| {
        *p == prefix
            && engine
                .has_declared_rule_rooted_at(path, "enforcement")
                .unwrap_or(false)
    });
    if !declared {
        return Ok(Action::Deny);
    }
    let bad = |found: String| LoadError::BadEnforcement {
        package: policy.package.clone(),
        path: policy.path.clone(),
        found,
    };
    engine.set_input(regorus::Value::new_object());
    let value = engine
        .eval_rule(format!("{prefix}.enforcement"))
        .map_err(|e| bad(format!("an error: {}", one_line(&format!("{e:#}")))))?;
    match value.as_string() {
        Ok(s) => s.parse().map_err(|_| bad(format!("{s:?}"))),
        Err(_) => Err(bad(value.to_json_str().unwrap_or_else(|_| "?".into()))),
    }
}
