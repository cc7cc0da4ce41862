//! ConstraintTemplates (`templates.gatekeeper.sh/v1` and `v1beta1`): the
//! Rego of `spec.targets[0]` (`rego` and `libs`, or a `code[]` entry with
//! `engine: Rego`), compiled into an engine of their own so that library
//! packages (`package lib.x`) are shared within the template only, as
//! Gatekeeper does; and the schema of their constraints' parameters.

use std::sync::Arc;

use regorus::Engine;
use serde_json::Value as Json;

use crate::diagnostic::one_line;

/// Gatekeeper's only admission target.
const TARGET: &str = "admission.k8s.gatekeeper.sh";

/// A compiled ConstraintTemplate.
#[derive(Clone)]
pub(crate) struct Template {
    /// The constraint kind it defines (`K8sRequiredLabels`).
    pub kind: String,
    /// File it came from.
    pub path: String,
    /// `data.<package>.violation`.
    pub rule: String,
    /// Rego syntax it was compiled with.
    pub syntax: Syntax,
    pub engine: Engine,
    /// `spec.crd.spec.validation.openAPIV3Schema` of `spec.parameters`.
    pub schema: Option<Arc<jsonschema::Validator>>,
}

impl std::fmt::Debug for Template {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Template")
            .field("kind", &self.kind)
            .field("path", &self.path)
            .field("rule", &self.rule)
            .field("syntax", &self.syntax)
            .finish_non_exhaustive()
    }
}

/// The Rego version a template is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Syntax {
    /// Gatekeeper's default (`targets[].rego`, every library template).
    V0,
    /// `code[].source.version: "v1"`.
    V1,
}

/// What loading one template document gave.
#[derive(Debug)]
pub(crate) enum Loaded {
    Template(Box<Template>),
    /// Valid, but nothing mapguard can run (a CEL-only template).
    Unsupported {
        kind: String,
        reason: String,
    },
}

/// Why a template cannot be used; the message names what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("ConstraintTemplate {name}: {message}")]
pub(crate) struct TemplateError {
    pub name: String,
    pub message: String,
}

fn str_at<'a>(doc: &'a Json, pointer: &str) -> Option<&'a str> {
    doc.pointer(pointer)
        .and_then(Json::as_str)
        .filter(|s| !s.is_empty())
}

fn libs_at(doc: &Json, pointer: &str) -> Result<Vec<String>, String> {
    match doc.pointer(pointer) {
        None | Some(Json::Null) => Ok(Vec::new()),
        Some(Json::Array(libs)) => libs
            .iter()
            .map(|l| {
                l.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| format!("{pointer}: every lib must be a string of Rego"))
            })
            .collect(),
        Some(_) => Err(format!("{pointer} must be a list of Rego strings")),
    }
}

/// Compiles one ConstraintTemplate document read from `path`.
pub(crate) fn load(path: &str, doc: &Json) -> Result<Loaded, TemplateError> {
    let name = str_at(doc, "/metadata/name")
        .unwrap_or("<unnamed>")
        .to_string();
    let err = |message: String| TemplateError {
        name: name.clone(),
        message,
    };
    let kind = str_at(doc, "/spec/crd/spec/names/kind")
        .ok_or_else(|| err("spec.crd.spec.names.kind is missing".into()))?
        .to_string();
    let targets = doc
        .pointer("/spec/targets")
        .and_then(Json::as_array)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| err("spec.targets is missing or empty".into()))?;
    if targets.len() > 1 {
        return Err(err(format!(
            "{} targets; Gatekeeper allows exactly one",
            targets.len()
        )));
    }
    let target = &targets[0];
    if let Some(other) = str_at(target, "/target").filter(|t| *t != TARGET) {
        return Err(err(format!("target {other:?} is not {TARGET:?}")));
    }

    // `code[]` (engine Rego) first, as Gatekeeper prefers it; else `rego`.
    let code = target.get("code").and_then(Json::as_array);
    let rego_code = code.and_then(|c| {
        c.iter()
            .find(|e| e.get("engine").and_then(Json::as_str) == Some("Rego"))
    });
    let (rego, libs, syntax) = match (rego_code, str_at(target, "/rego")) {
        (Some(entry), _) => {
            let rego = str_at(entry, "/source/rego")
                .ok_or_else(|| err("code[engine=Rego].source.rego is missing".into()))?;
            let syntax = match str_at(entry, "/source/version") {
                None | Some("v0") => Syntax::V0,
                Some("v1") => Syntax::V1,
                Some(other) => {
                    return Err(err(format!(
                        "code[engine=Rego].source.version must be \"v0\" or \"v1\", found {other:?}"
                    )));
                }
            };
            let libs = libs_at(entry, "/source/libs").map_err(err)?;
            (rego.to_string(), libs, syntax)
        }
        (None, Some(rego)) => {
            let libs = libs_at(target, "/libs").map_err(err)?;
            (rego.to_string(), libs, Syntax::V0)
        }
        (None, None) => {
            let engines: Vec<&str> = code
                .into_iter()
                .flatten()
                .filter_map(|e| e.get("engine").and_then(Json::as_str))
                .collect();
            if engines.is_empty() {
                return Err(err("spec.targets[0] has neither rego nor code".into()));
            }
            return Ok(Loaded::Unsupported {
                kind,
                reason: format!(
                    "only {} code, and mapguard runs Rego only (CEL validation is not supported)",
                    engines.join(", ")
                ),
            });
        }
    };

    let mut engine = Engine::new();
    engine.set_rego_v0(syntax == Syntax::V0);
    // As OPA (and so Gatekeeper) by default: a built-in function given
    // arguments of the wrong type is undefined, not an error.
    engine.set_strict_builtin_errors(false);
    let source = format!("{path}#{kind}");
    // Where regorus reads v0 Rego differently from OPA, the text is
    // rewritten to what OPA means (`compat`).
    let (rego, libs) = match syntax {
        Syntax::V0 => (
            super::compat::rewrite(&rego),
            libs.iter().map(|l| super::compat::rewrite(l)).collect(),
        ),
        Syntax::V1 => (rego, libs),
    };
    let main = engine.add_policy(source.clone(), rego).map_err(|e| {
        err(format!(
            "its Rego does not parse: {}",
            one_line(&format!("{e:#}"))
        ))
    })?;
    for (i, lib) in libs.into_iter().enumerate() {
        engine
            .add_policy(format!("{source}/libs[{i}]"), lib)
            .map_err(|e| {
                err(format!(
                    "libs[{i}] does not parse: {}",
                    one_line(&format!("{e:#}"))
                ))
            })?;
    }
    let package = main.trim_start_matches("data.").to_string();
    if !engine
        .has_declared_rule_rooted_at(&source, "violation")
        .unwrap_or(false)
    {
        return Err(err(format!(
            "package {package} declares no `violation` rule"
        )));
    }
    // Analyse now, so that errors surface when loading, not per request.
    engine.eval_query("true".to_string(), false).map_err(|e| {
        err(format!(
            "its Rego does not compile: {}",
            one_line(&format!("{e:#}"))
        ))
    })?;

    let schema = match doc.pointer("/spec/crd/spec/validation/openAPIV3Schema") {
        None | Some(Json::Null) => None,
        Some(schema) => {
            Some(Arc::new(parameters_validator(schema).map_err(|e| {
                err(format!("openAPIV3Schema is not a usable schema: {e}"))
            })?))
        }
    };
    Ok(Loaded::Template(Box::new(Template {
        kind,
        path: path.to_string(),
        rule: format!("{main}.violation"),
        syntax,
        engine,
        schema,
    })))
}

/// A validator of parameters from an OpenAPI v3 schema: the JSON Schema
/// keywords it shares are checked (`type`, `properties`, `items`, `enum`,
/// `required`, ...); Kubernetes extensions (`x-kubernetes-*`) are ignored,
/// and `nullable: true` admits null.
fn parameters_validator(schema: &Json) -> Result<jsonschema::Validator, String> {
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft4)
        .build(&nullable_to_json_schema(schema))
        .map_err(|e| e.to_string())
}

/// OpenAPI's `nullable: true` is JSON Schema's `type: [T, "null"]`.
fn nullable_to_json_schema(schema: &Json) -> Json {
    match schema {
        Json::Object(map) => {
            let mut out: serde_json::Map<String, Json> = map
                .iter()
                .filter(|(k, _)| k.as_str() != "nullable")
                .map(|(k, v)| (k.clone(), nullable_to_json_schema(v)))
                .collect();
            if map.get("nullable") == Some(&Json::Bool(true))
                && let Some(Json::String(t)) = out.get("type").cloned()
            {
                out.insert("type".into(), serde_json::json!([t, "null"]));
            }
            Json::Object(out)
        }
        Json::Array(items) => Json::Array(items.iter().map(nullable_to_json_schema).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn template(target: Json) -> Json {
        json!({"apiVersion": "templates.gatekeeper.sh/v1", "kind": "ConstraintTemplate",
            "metadata": {"name": "k8sdemo"},
            "spec": {"crd": {"spec": {"names": {"kind": "K8sDemo"},
                "validation": {"openAPIV3Schema": {"type": "object",
                    "properties": {"max": {"type": "integer"}, "note": {"type": "string", "nullable": true}}}}}},
                "targets": [target]}})
    }

    fn compiled(doc: &Json) -> Template {
        match load("t.yaml", doc).expect("loads") {
            Loaded::Template(t) => *t,
            other => panic!("not a template: {other:?}"),
        }
    }

    #[test]
    fn v0_rego_with_a_library_compiles_in_its_own_engine() {
        let t = compiled(&template(json!({"target": TARGET,
            "rego": "package k8sdemo\nimport data.lib.helpers\nviolation[{\"msg\": msg}] {\n  helpers.too_many(input.review.object, input.parameters.max)\n  msg := \"too many\"\n}\n",
            "libs": ["package lib.helpers\ntoo_many(o, max) { count(o.spec.containers) > max }\n"]})));
        assert_eq!(t.kind, "K8sDemo");
        assert_eq!(t.rule, "data.k8sdemo.violation");
        assert_eq!(t.syntax, Syntax::V0);
        assert!(t.schema.is_some());
    }

    #[test]
    fn code_entries_choose_the_rego_version() {
        let t = compiled(&template(json!({"target": TARGET, "code": [
            {"engine": "K8sNativeValidation", "source": {"validations": []}},
            {"engine": "Rego", "source": {"version": "v1",
                "rego": "package k8sdemo\nviolation contains {\"msg\": \"x\"} if input.review.object.spec.hostPID\n"}}]})));
        assert_eq!(t.syntax, Syntax::V1);
        // v0 text in a v1 code entry: refused, as OPA refuses it.
        let e = load("t.yaml", &template(json!({"target": TARGET, "code": [
            {"engine": "Rego", "source": {"version": "v1",
                "rego": "package k8sdemo\nviolation[{\"msg\": \"x\"}] { input.review.object.spec.hostPID }\n"}}]})))
            .unwrap_err();
        assert!(
            e.message
                .starts_with("its Rego does not parse: t.yaml#K8sDemo:"),
            "{e}"
        );
    }

    #[test]
    fn cel_only_templates_are_unsupported_not_errors() {
        let loaded = load(
            "t.yaml",
            &template(json!({"target": TARGET, "code": [
            {"engine": "K8sNativeValidation", "source": {"validations": []}}]})),
        )
        .expect("loads");
        match loaded {
            Loaded::Unsupported { kind, reason } => {
                assert_eq!(kind, "K8sDemo");
                assert!(reason.contains("K8sNativeValidation"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn broken_templates_say_what_is_wrong() {
        let no_violation = load(
            "t.yaml",
            &template(json!({"target": TARGET,
            "rego": "package k8sdemo\ndeny[msg] { msg := \"x\" }\n"})),
        )
        .unwrap_err();
        assert_eq!(
            no_violation.to_string(),
            "ConstraintTemplate k8sdemo: package k8sdemo declares no `violation` rule"
        );
        let undefined = load(
            "t.yaml",
            &template(json!({"target": TARGET,
            "rego": "package k8sdemo\nviolation[{\"msg\": \"x\"}] { y > 1 }\n"})),
        )
        .unwrap_err();
        assert!(
            undefined.message.starts_with("its Rego does not compile"),
            "{undefined}"
        );
        let mut no_kind = template(json!({"target": TARGET, "rego": "package k8sdemo\n"}));
        no_kind["spec"]["crd"]["spec"]["names"] = json!({});
        assert_eq!(
            load("t.yaml", &no_kind).unwrap_err().message,
            "spec.crd.spec.names.kind is missing"
        );
    }

    #[test]
    fn the_schema_checks_types_and_admits_nullable() {
        let t = compiled(&template(json!({"target": TARGET,
            "rego": "package k8sdemo\nviolation[{\"msg\": \"x\"}] { false }\n"})));
        let schema = t.schema.expect("a schema");
        assert!(schema.is_valid(&json!({"max": 3, "note": null})));
        assert!(!schema.is_valid(&json!({"max": "three"})));
    }
}
