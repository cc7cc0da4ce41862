//! Gatekeeper policies, unchanged: ConstraintTemplates and their
//! Constraints read from YAML in the policies folder, next to mapguard's
//! own `*.rego`.
//!
//! Each template is compiled into an engine of its own ([`template`]), in
//! the Rego version it is written in. Each constraint names its template by
//! kind, carries parameters checked against the template's schema, a
//! `spec.match` ([`matching`]) and an `enforcementAction`. A review is
//! judged by every constraint whose match selects the reviewed object:
//! `data.<package>.violation` is evaluated with
//! `input = {"review": <AdmissionRequest>, "parameters": ...}`, and each
//! element's `msg` is a finding named `<Kind> <constraint name>`.

mod compat;
mod inventory;
mod matching;
pub mod suite;
mod template;

use std::collections::BTreeMap;

use regorus::Engine;
use serde_json::Value as Json;

use crate::Action;
use crate::NamespaceData;
pub use inventory::Inventory;
use matching::{Match, MatchSpec, Target};
pub use template::Syntax;
use template::{Loaded, Template, TemplateError};

const TEMPLATES_GROUP: &str = "templates.gatekeeper.sh/";
const CONSTRAINTS_GROUP: &str = "constraints.gatekeeper.sh/";

/// One constraint, as listed to users.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConstraintInfo {
    /// Its kind, the template's (`K8sPSPPrivilegedContainer`).
    pub kind: String,
    pub name: String,
    /// File it came from.
    pub path: String,
    pub action: Action,
}

impl ConstraintInfo {
    /// How findings name it: `K8sPSPPrivilegedContainer psp-privileged`.
    pub fn label(&self) -> String {
        format!("{} {}", self.kind, self.name)
    }
}

/// A template that was read but cannot run here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsupported {
    pub path: String,
    pub kind: String,
    pub reason: String,
}

#[derive(Debug, Clone)]
pub(crate) struct Constraint {
    pub info: ConstraintInfo,
    /// Index of its template.
    pub template: usize,
    matcher: Match,
    parameters: regorus::Value,
}

/// Why the Gatekeeper documents of a folder cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatekeeperError {
    #[error("{path}: {source}")]
    Template {
        path: String,
        #[source]
        source: TemplateErrorText,
    },
    #[error("{path}: {kind} {name}: {message}")]
    Constraint {
        path: String,
        kind: String,
        name: String,
        message: String,
    },
    #[error("{path}: ConstraintTemplates {first_path} and {path} both define kind {kind}")]
    DuplicateKind {
        path: String,
        first_path: String,
        kind: String,
    },
}

/// A template's error, as text (the compiled parts are not kept).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TemplateErrorText(String);

impl From<TemplateError> for TemplateErrorText {
    fn from(e: TemplateError) -> Self {
        TemplateErrorText(e.to_string())
    }
}

/// Whether a YAML document is a gator `Suite`.
pub(crate) fn is_suite(doc: &Json) -> bool {
    doc.get("kind").and_then(Json::as_str) == Some("Suite")
        && doc
            .get("apiVersion")
            .and_then(Json::as_str)
            .is_some_and(|v| v.starts_with("test.gatekeeper.sh/"))
}

/// Whether a YAML document is Gatekeeper's, by its `apiVersion`.
pub(crate) fn is_gatekeeper(doc: &Json) -> bool {
    is_template(doc) || is_constraint(doc)
}

fn api_version_starts(doc: &Json, group: &str) -> bool {
    doc.get("apiVersion")
        .and_then(Json::as_str)
        .is_some_and(|v| v.starts_with(group))
}

fn is_template(doc: &Json) -> bool {
    api_version_starts(doc, TEMPLATES_GROUP)
}

fn is_constraint(doc: &Json) -> bool {
    api_version_starts(doc, CONSTRAINTS_GROUP)
}

/// A Gatekeeper document from outside the policy files (an object of the
/// cluster), admitted to a set on its own: a bad one is left out alone.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// How errors name it (`cluster: K8sRequiredLabels owner`).
    pub path: String,
    /// The template or constraint.
    pub document: Json,
    /// The version admitted last time, served while this one is rejected.
    pub previous: Option<Json>,
}

/// What became of one [`Candidate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admitted {
    /// In the set.
    Current,
    /// Rejected; its previous version is in the set instead.
    Previous(GatekeeperError),
    /// Rejected; not in the set.
    Rejected(GatekeeperError),
}

impl Admitted {
    /// Why the candidate's own version is not in the set.
    pub fn error(&self) -> Option<&GatekeeperError> {
        match self {
            Admitted::Current => None,
            Admitted::Previous(e) | Admitted::Rejected(e) => Some(e),
        }
    }
}

/// The templates and constraints of one policy set.
#[derive(Debug, Clone, Default)]
pub(crate) struct Gatekeeper {
    pub templates: Vec<Template>,
    pub constraints: Vec<Constraint>,
    pub unsupported: Vec<Unsupported>,
}

impl Gatekeeper {
    /// Builds the set from `(path, document)` pairs; templates first, then
    /// the constraints that name them.
    pub(crate) fn from_documents(docs: &[(String, Json)]) -> Result<Gatekeeper, GatekeeperError> {
        let mut set = Gatekeeper::default();
        for (path, doc) in docs.iter().filter(|(_, d)| is_template(d)) {
            set.add_template(path, doc)?;
        }
        for (path, doc) in docs.iter().filter(|(_, d)| is_constraint(d)) {
            set.add_constraint(path, doc)?;
        }
        Ok(set)
    }

    /// Builds the set from `fixed` documents (any error fails the whole
    /// set) and `candidates`, each admitted on its own: a candidate
    /// template that does not compile, or defines a kind already defined,
    /// and a candidate constraint that does not fit its template are left
    /// out; when a rejected candidate has a previous version, that version
    /// is tried in its place. Returns what became of each candidate, in
    /// order.
    pub(crate) fn with_candidates(
        fixed: &[(String, Json)],
        candidates: &[Candidate],
    ) -> Result<(Gatekeeper, Vec<Admitted>), GatekeeperError> {
        let current: Vec<(&str, &Json)> = candidates
            .iter()
            .map(|c| (c.path.as_str(), &c.document))
            .collect();
        let (set, first) = Self::screened(fixed, &current)?;
        fn previous<'a>(
            (c, result): (&'a Candidate, &Result<(), GatekeeperError>),
        ) -> Option<&'a Json> {
            result.as_ref().err().and(c.previous.as_ref())
        }
        if candidates.iter().zip(&first).all(|r| previous(r).is_none()) {
            let admitted = first
                .into_iter()
                .map(|r| r.map_or_else(Admitted::Rejected, |()| Admitted::Current))
                .collect();
            return Ok((set, admitted));
        }
        // Again, with the previous versions of the rejected ones.
        let chosen: Vec<(&str, &Json, bool)> = candidates
            .iter()
            .zip(&first)
            .map(|r| match previous(r) {
                Some(p) => (r.0.path.as_str(), p, true),
                None => (r.0.path.as_str(), &r.0.document, false),
            })
            .collect();
        let documents: Vec<(&str, &Json)> = chosen.iter().map(|(p, d, _)| (*p, *d)).collect();
        let (set, second) = Self::screened(fixed, &documents)?;
        let admitted = first
            .into_iter()
            .zip(second)
            .zip(&chosen)
            .map(
                |((first, second), (_, _, previous))| match (first, second, previous) {
                    (Err(e), Ok(()), true) => Admitted::Previous(e),
                    (Err(e), Err(_), true) => Admitted::Rejected(e),
                    (_, Ok(()), _) => Admitted::Current,
                    (_, Err(e), _) => Admitted::Rejected(e),
                },
            )
            .collect();
        Ok((set, admitted))
    }

    /// One pass of [`Gatekeeper::with_candidates`].
    #[allow(clippy::type_complexity)]
    fn screened(
        fixed: &[(String, Json)],
        candidates: &[(&str, &Json)],
    ) -> Result<(Gatekeeper, Vec<Result<(), GatekeeperError>>), GatekeeperError> {
        let mut set = Gatekeeper::default();
        let mut results = vec![Ok(()); candidates.len()];
        for (path, doc) in fixed.iter().filter(|(_, d)| is_template(d)) {
            set.add_template(path, doc)?;
        }
        // Kinds whose only template was rejected, and that template's path.
        let mut rejected_kinds: BTreeMap<&str, &str> = BTreeMap::new();
        for (i, (path, doc)) in candidates.iter().enumerate() {
            if is_template(doc)
                && let Err(e) = set.add_template(path, doc)
            {
                if let Some(kind) = doc
                    .pointer("/spec/crd/spec/names/kind")
                    .and_then(Json::as_str)
                {
                    rejected_kinds.entry(kind).or_insert(path);
                }
                results[i] = Err(e);
            }
        }
        for (path, doc) in fixed.iter().filter(|(_, d)| is_constraint(d)) {
            set.add_constraint(path, doc)?;
        }
        for (i, (path, doc)) in candidates.iter().enumerate() {
            if !is_constraint(doc) {
                continue;
            }
            let kind = doc.get("kind").and_then(Json::as_str).unwrap_or("");
            let defined = set.templates.iter().any(|t| t.kind == kind)
                || set.unsupported.iter().any(|u| u.kind == kind);
            results[i] = match rejected_kinds.get(kind) {
                Some(template) if !defined => Err(GatekeeperError::Constraint {
                    path: path.to_string(),
                    kind: kind.to_string(),
                    name: doc
                        .pointer("/metadata/name")
                        .and_then(Json::as_str)
                        .unwrap_or("<unnamed>")
                        .to_string(),
                    message: format!("its ConstraintTemplate ({template}) is rejected"),
                }),
                _ => set.add_constraint(path, doc),
            };
        }
        Ok((set, results))
    }

    /// Compiles one template into the set.
    fn add_template(&mut self, path: &str, doc: &Json) -> Result<(), GatekeeperError> {
        let loaded = template::load(path, doc).map_err(|e| GatekeeperError::Template {
            path: path.to_string(),
            source: e.into(),
        })?;
        let kind = match &loaded {
            Loaded::Template(t) => &t.kind,
            Loaded::Unsupported { kind, .. } => kind,
        };
        let first = self
            .templates
            .iter()
            .find(|t| &t.kind == kind)
            .map(|t| t.path.clone())
            .or_else(|| {
                self.unsupported
                    .iter()
                    .find(|u| &u.kind == kind)
                    .map(|u| u.path.clone())
            });
        if let Some(first_path) = first {
            return Err(GatekeeperError::DuplicateKind {
                path: path.to_string(),
                first_path,
                kind: kind.clone(),
            });
        }
        match loaded {
            Loaded::Template(t) => self.templates.push(*t),
            Loaded::Unsupported { kind, reason } => {
                tracing::warn!(%path, %kind, %reason, "ConstraintTemplate skipped");
                self.unsupported.push(Unsupported {
                    path: path.to_string(),
                    kind,
                    reason,
                });
            }
        }
        Ok(())
    }

    /// Checks one constraint and adds it to the set.
    fn add_constraint(&mut self, path: &str, doc: &Json) -> Result<(), GatekeeperError> {
        if let Some(constraint) = self.constraint(path, doc)? {
            self.constraints.push(constraint);
        }
        Ok(())
    }

    /// Reads one constraint; `None` for a constraint of a skipped template.
    fn constraint(&self, path: &str, doc: &Json) -> Result<Option<Constraint>, GatekeeperError> {
        let kind = doc.get("kind").and_then(Json::as_str).unwrap_or("");
        let name = doc
            .pointer("/metadata/name")
            .and_then(Json::as_str)
            .unwrap_or("<unnamed>");
        let err = |message: String| GatekeeperError::Constraint {
            path: path.to_string(),
            kind: kind.to_string(),
            name: name.to_string(),
            message,
        };
        if self.unsupported.iter().any(|u| u.kind == kind) {
            tracing::warn!(%path, %kind, %name, "constraint skipped: its template is not supported");
            return Ok(None);
        }
        let Some(template) = self.templates.iter().position(|t| t.kind == kind) else {
            let known: Vec<&str> = self.templates.iter().map(|t| t.kind.as_str()).collect();
            return Err(err(format!(
                "no ConstraintTemplate defines kind {kind:?} (templates loaded: {})",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            )));
        };
        let action = match doc
            .pointer("/spec/enforcementAction")
            .and_then(Json::as_str)
        {
            None | Some("") | Some("deny") => Action::Deny,
            Some("dryrun") => Action::DryRun,
            Some("warn") => Action::Warn,
            Some("scoped") => {
                return Err(err(
                    "enforcementAction \"scoped\" (per enforcement point) is not supported; use deny, dryrun or warn".into(),
                ));
            }
            Some(other) => {
                return Err(err(format!(
                    "enforcementAction must be deny, dryrun or warn, found {other:?}"
                )));
            }
        };
        let spec: MatchSpec = match doc.pointer("/spec/match") {
            None | Some(Json::Null) => MatchSpec::default(),
            Some(m) => {
                serde_json::from_value(m.clone()).map_err(|e| err(format!("spec.match: {e}")))?
            }
        };
        let matcher = Match::new(spec).map_err(|e| err(format!("spec.match: {e}")))?;
        // Without `spec.parameters`, Gatekeeper's input has `{}`.
        let parameters = doc
            .pointer("/spec/parameters")
            .filter(|p| !p.is_null())
            .cloned()
            .unwrap_or_else(|| Json::Object(Default::default()));
        if let Some(schema) = &self.templates[template].schema {
            let problems: Vec<String> = schema
                .iter_errors(&parameters)
                .map(|e| {
                    let at = e.instance_path().to_string();
                    if at.is_empty() {
                        e.to_string()
                    } else {
                        format!("{at}: {e}")
                    }
                })
                .collect();
            if !problems.is_empty() {
                return Err(err(format!(
                    "spec.parameters do not match the template's schema: {}",
                    problems.join("; ")
                )));
            }
        }
        let parameters = <regorus::Value as serde::Deserialize>::deserialize(&parameters)
            .map_err(|e| err(format!("spec.parameters: {e}")))?;
        Ok(Some(Constraint {
            info: ConstraintInfo {
                kind: kind.to_string(),
                name: name.to_string(),
                path: path.to_string(),
                action,
            },
            template,
            matcher,
            parameters,
        }))
    }

    /// Fresh engines for one thread: one per template, with `inventory`
    /// as `data.inventory` when there is one.
    pub(crate) fn engines(&self, inventory: &Inventory) -> Result<Vec<Engine>, String> {
        let data = (!inventory.is_empty()).then(|| regorus::Value::from(inventory.to_data()));
        self.templates
            .iter()
            .map(|t| {
                let mut engine = t.engine.clone();
                if let Some(data) = &data {
                    engine
                        .add_data(data.clone())
                        .map_err(|e| format!("{}: {e:#}", t.kind))?;
                }
                Ok(engine)
            })
            .collect()
    }
}

/// What the constraints are judged against, from one AdmissionRequest.
pub(crate) struct Review<'a> {
    group: &'a str,
    kind: &'a str,
    object: &'a Json,
    namespace: &'a str,
    /// `request` for the engines ([`crate::input`]).
    input: regorus::Value,
}

impl<'a> Review<'a> {
    /// The constraints' view of `review` with its `request` converted for
    /// the engines; `None` when the request carries no object to match
    /// (nothing to judge).
    pub(crate) fn new(review: &'a crate::Review, input: regorus::Value) -> Option<Review<'a>> {
        Some(Review {
            group: &review.kind().group,
            kind: &review.kind().kind,
            object: review.object().or_else(|| review.old_object())?,
            // The request's, else the object's.
            namespace: &review.subject().namespace,
            input,
        })
    }
}

impl Constraint {
    /// Whether this constraint selects the review.
    pub(crate) fn selects(&self, review: &Review, ns: &NamespaceData) -> Result<bool, String> {
        let target = Target {
            group: review.group,
            kind: review.kind,
            object: review.object,
            namespace: review.namespace,
        };
        self.matcher.matches(&target, ns).map_err(|e| e.to_string())
    }

    /// Gatekeeper's input: `{"review": <request>, "parameters": ...}`.
    pub(crate) fn input(&self, review: &Review) -> regorus::Value {
        let mut input = BTreeMap::new();
        input.insert(regorus::Value::from("review"), review.input.clone());
        input.insert(regorus::Value::from("parameters"), self.parameters.clone());
        regorus::Value::from(input)
    }
}
