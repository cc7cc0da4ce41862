//! Gatekeeper's `gator verify` suites, run by mapguard's engine: a
//! `Suite` (`test.gatekeeper.sh/v1alpha1`) lists tests, each a template and
//! a constraint (paths relative to the suite file) with cases: an object to
//! review (or a whole AdmissionReview), the inventory it needs, and
//! assertions on the violations (`violations: yes | no | N`, `message`: a
//! regular expression the counted violations must match). A test marked
//! `invalid: true` expects its constraint to be refused.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::Value as Json;

use super::is_suite;
use crate::review::create_review;
use crate::{EngineConfig, Inventory, NamespaceData, PolicySet};

#[derive(Debug, Deserialize)]
struct Suite {
    #[serde(default)]
    metadata: Option<Metadata>,
    #[serde(default)]
    tests: Vec<Test>,
    #[serde(default)]
    skip: bool,
}

#[derive(Debug, Deserialize)]
struct Metadata {
    #[serde(default)]
    name: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Test {
    #[serde(default)]
    name: String,
    template: String,
    #[serde(default)]
    constraint: Option<String>,
    #[serde(default)]
    expansion: Option<String>,
    #[serde(default)]
    cases: Vec<Case>,
    #[serde(default)]
    invalid: bool,
    #[serde(default)]
    skip: bool,
}

#[derive(Debug, Deserialize)]
struct Case {
    #[serde(default)]
    name: String,
    object: String,
    #[serde(default)]
    inventory: Vec<String>,
    #[serde(default)]
    assertions: Vec<Assertion>,
    #[serde(default)]
    skip: bool,
}

#[derive(Debug, Deserialize)]
struct Assertion {
    #[serde(default)]
    violations: Option<Violations>,
    #[serde(default)]
    message: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Violations {
    Count(i64),
    Word(String),
}

/// How one case (or a whole test, when it could not run) ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Pass,
    Fail(String),
    /// Skipped by the suite (`skip: true`) or not runnable here (a CEL-only
    /// template, an expansion), with why.
    Skip(String),
}

/// One line of a suite's report.
#[derive(Debug, Clone)]
pub struct CaseResult {
    /// `suite/test/case`.
    pub name: String,
    pub outcome: Outcome,
    pub duration: Duration,
}

/// Why a suite file cannot be run at all.
#[derive(Debug, thiserror::Error)]
pub enum SuiteError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a Suite: {message}")]
    Shape { path: PathBuf, message: String },
}

/// The `suite.yaml` files (kind `Suite`) under `dir`, in path order.
pub fn find_suites(dir: &Path) -> Result<Vec<PathBuf>, SuiteError> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let read_err = |source| SuiteError::Read {
            path: dir.clone(),
            source,
        };
        for entry in std::fs::read_dir(&dir).map_err(read_err)? {
            let path = entry.map_err(read_err)?.path();
            let hidden = path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'));
            if hidden {
                continue;
            }
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml")
                && read_documents(&path)
                    .ok()
                    .is_some_and(|docs| docs.first().is_some_and(is_suite))
            {
                found.push(path);
            }
        }
    }
    found.sort();
    Ok(found)
}

fn read_documents(path: &Path) -> Result<Vec<Json>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    yaml_serde::Deserializer::from_str(&text)
        .map(|d| <Json as Deserialize>::deserialize(d).map_err(|e| e.to_string()))
        .filter(|d| !matches!(d, Ok(Json::Null)))
        .collect()
}

/// Runs every test of the suite at `path`.
pub fn run_suite(path: &Path) -> Result<Vec<CaseResult>, SuiteError> {
    let shape = |message: String| SuiteError::Shape {
        path: path.to_path_buf(),
        message,
    };
    let docs = read_documents(path).map_err(shape)?;
    let doc = docs
        .into_iter()
        .next()
        .ok_or_else(|| shape("empty file".into()))?;
    let suite: Suite = serde_json::from_value(doc).map_err(|e| shape(e.to_string()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let suite_name = suite
        .metadata
        .and_then(|m| m.name)
        .unwrap_or_else(|| path.display().to_string());
    let mut results = Vec::new();
    for test in &suite.tests {
        let prefix = format!("{suite_name}/{}", test.name);
        if suite.skip || test.skip {
            results.push(CaseResult {
                name: prefix,
                outcome: Outcome::Skip("skip: true".into()),
                duration: Duration::ZERO,
            });
            continue;
        }
        run_test(base, &prefix, test, &mut results);
    }
    Ok(results)
}

/// An engine configuration for suites: no namespace is exempt (gator
/// judges every namespace), a generous time limit.
fn suite_config() -> EngineConfig {
    EngineConfig {
        exempt_namespaces: Vec::new(),
        eval_timeout: Some(Duration::from_secs(10)),
        ..EngineConfig::default()
    }
}

fn run_test(base: &Path, prefix: &str, test: &Test, results: &mut Vec<CaseResult>) {
    let started = Instant::now();
    let mut whole = |outcome: Outcome| {
        results.push(CaseResult {
            name: prefix.to_string(),
            outcome,
            duration: started.elapsed(),
        })
    };
    if test.expansion.as_deref().is_some_and(|e| !e.is_empty()) {
        return whole(Outcome::Skip(
            "expansion templates are not supported".into(),
        ));
    }
    let mut documents = Vec::new();
    let mut files = vec![&test.template];
    files.extend(test.constraint.as_ref());
    for file in files {
        let path = base.join(file);
        match read_documents(&path) {
            Ok(docs) => documents.extend(docs.into_iter().map(|d| (path.display().to_string(), d))),
            Err(e) => return whole(Outcome::Fail(format!("{}: {e}", path.display()))),
        }
    }
    let set = PolicySet::from_parts(Vec::new(), &documents, &suite_config());
    let set = match (set, test.invalid) {
        (Err(_), true) => return whole(Outcome::Pass),
        (Ok(_), true) => {
            return whole(Outcome::Fail(
                "the constraint was accepted, but the test expects it to be invalid".into(),
            ));
        }
        (Err(e), false) => return whole(Outcome::Fail(e.to_string())),
        (Ok(set), false) => set,
    };
    if let Some(u) = set.unsupported_templates().first() {
        return whole(Outcome::Skip(format!("{}: {}", u.kind, u.reason)));
    }
    for case in &test.cases {
        let started = Instant::now();
        let outcome = if case.skip {
            Outcome::Skip("skip: true".into())
        } else {
            match run_case(base, &set, case) {
                Ok(()) => Outcome::Pass,
                Err(why) => Outcome::Fail(why),
            }
        };
        results.push(CaseResult {
            name: format!("{prefix}/{}", case.name),
            outcome,
            duration: started.elapsed(),
        });
    }
}

fn run_case(base: &Path, set: &PolicySet, case: &Case) -> Result<(), String> {
    let object_path = base.join(&case.object);
    let object = read_documents(&object_path)
        .map_err(|e| format!("{}: {e}", object_path.display()))?
        .into_iter()
        .next()
        .ok_or_else(|| format!("{}: no object", object_path.display()))?;
    let mut inventory_objects = Vec::new();
    for file in &case.inventory {
        let path = base.join(file);
        let docs = read_documents(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        for doc in docs {
            crate::unpack_lists(doc, &mut inventory_objects);
        }
    }
    let inventory = Inventory::from_objects(&inventory_objects);
    let namespaces = NamespaceData::from_objects(
        inventory_objects
            .iter()
            .filter(|o| o.get("kind").and_then(Json::as_str) == Some("Namespace"))
            .cloned(),
    )
    .map_err(|e| e.to_string())?;
    let is_review = object.get("kind").and_then(Json::as_str) == Some("AdmissionReview");
    let review = if is_review {
        complete_review(object)
    } else {
        create_review(&object, "", "gator-case")
    };
    let review = crate::Review::new(review).map_err(|e| crate::EvalError::from(e).to_string())?;
    let decision = set
        .evaluate_with(&review, &namespaces, &inventory, set.config().eval_timeout)
        .map_err(|e| e.to_string())?;
    let messages: Vec<&str> = decision
        .denials
        .iter()
        .chain(&decision.warnings)
        .chain(&decision.dry_run)
        .map(|f| f.message.as_str())
        .collect();
    if case.assertions.is_empty() {
        return check(
            &Assertion {
                violations: Some(Violations::Word("no".into())),
                message: None,
            },
            &messages,
        );
    }
    for assertion in &case.assertions {
        check(assertion, &messages)?;
    }
    Ok(())
}

/// gator's completion of a hand-written AdmissionReview: a request without
/// `kind` (or name, namespace) takes them from its object.
fn complete_review(mut review: Json) -> Json {
    let Some(request) = review.get_mut("request").and_then(Json::as_object_mut) else {
        return review;
    };
    let object = request
        .get("object")
        .filter(|o| o.is_object())
        .or_else(|| request.get("oldObject").filter(|o| o.is_object()))
        .cloned()
        .unwrap_or(Json::Null);
    let field = |p: &str| object.pointer(p).and_then(Json::as_str).map(str::to_string);
    if !request.contains_key("kind") {
        let api_version = field("/apiVersion").unwrap_or_default();
        let (group, version) = api_version.split_once('/').unwrap_or(("", &api_version));
        request.insert(
            "kind".into(),
            serde_json::json!({"group": group, "version": version, "kind": field("/kind")}),
        );
    }
    for (key, pointer) in [
        ("name", "/metadata/name"),
        ("namespace", "/metadata/namespace"),
    ] {
        if !request.contains_key(key)
            && let Some(value) = field(pointer)
        {
            request.insert(key.into(), Json::String(value));
        }
    }
    review
}

fn check(assertion: &Assertion, messages: &[&str]) -> Result<(), String> {
    let matching = match &assertion.message {
        None => messages.len(),
        Some(pattern) => {
            let re = regex::Regex::new(pattern)
                .map_err(|e| format!("message {pattern:?} is not a regular expression: {e}"))?;
            messages.iter().filter(|m| re.is_match(m)).count()
        }
    };
    let containing = assertion
        .message
        .as_ref()
        .map(|m| format!(" matching {m:?}"))
        .unwrap_or_default();
    let ok = match assertion
        .violations
        .as_ref()
        .unwrap_or(&Violations::Word("yes".into()))
    {
        Violations::Word(w) if w == "yes" => matching > 0,
        Violations::Word(w) if w == "no" => matching == 0,
        Violations::Count(n) if *n >= 0 => matching as i64 == *n,
        other => {
            return Err(format!(
                "violations must be a non-negative integer, \"yes\" or \"no\", found {other:?}"
            ));
        }
    };
    if ok {
        Ok(())
    } else {
        let want = match assertion.violations.as_ref() {
            None => "at least 1".to_string(),
            Some(Violations::Word(w)) if w == "yes" => "at least 1".to_string(),
            Some(Violations::Word(_)) => "none".to_string(),
            Some(Violations::Count(n)) => format!("exactly {n}"),
        };
        Err(format!(
            "got {matching} violations{containing} but want {want}; messages: {messages:?}"
        ))
    }
}
