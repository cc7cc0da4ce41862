//! Turning `(path, rego)` sources into an analysed regorus engine, and
//! finding the files and `test_` rules a set is made of.

use std::path::{Path, PathBuf};

use regorus::Engine;

use super::LoadError;
use crate::diagnostic::{line_of, one_line};

/// Whether `path` holds tests only (`*_test.rego`, OPA's convention).
pub(super) fn is_test_file(path: &str) -> bool {
    path.ends_with("_test.rego")
}

/// Parses and analyses `sources`; returns the engine and each file's
/// `(path, rule path prefix)`.
pub(super) fn compile(
    sources: &[(String, String)],
) -> Result<(Engine, Vec<(String, String)>), LoadError> {
    let mut engine = Engine::new();
    for (path, rego) in sources {
        engine.add_policy(path.clone(), rego.clone()).map_err(|e| {
            let message = one_line(&format!("{e:#}"));
            LoadError::Parse {
                line: line_of(&message, path),
                path: path.clone(),
                message,
            }
        })?;
    }
    let compile_error = |e: &dyn std::fmt::Display| LoadError::Compile {
        message: one_line(&format!("{e:#}")),
    };
    let packages = engine
        .get_policy_package_components()
        .map_err(|e| compile_error(&e))?
        .into_iter()
        .map(|c| (c.source_file, rule_prefix(&c.components)))
        .collect();
    // Analyse once now so that errors surface at load time, not per request.
    engine
        .eval_query("true".to_string(), false)
        .map_err(|e| compile_error(&e))?;
    Ok((engine, packages))
}

/// `data.a.b` or `data.a["x-y"]` for package components.
fn rule_prefix(components: &[String]) -> String {
    let mut prefix = String::from("data");
    for c in components {
        let ident = !c.is_empty()
            && c.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
            && !c.starts_with(|ch: char| ch.is_ascii_digit());
        if ident {
            prefix.push('.');
            prefix.push_str(c);
        } else {
            prefix.push_str(&format!("[{c:?}]"));
        }
    }
    prefix
}

/// Candidate `test_` rule names: every identifier starting with `test_`,
/// in order of first appearance. regorus exposes no rule listing, so the
/// caller keeps only those the parsed module declares as rule heads.
pub(super) fn test_rule_names(rego: &str) -> Vec<String> {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut names: Vec<String> = Vec::new();
    let mut previous = ' ';
    for (at, c) in rego.char_indices() {
        if c == 't' && !is_ident(previous) && previous != '.' && rego[at..].starts_with("test_") {
            let name: String = rego[at..].chars().take_while(|c| is_ident(*c)).collect();
            if !names.contains(&name) {
                names.push(name);
            }
        }
        previous = c;
    }
    names
}

/// Every `*.rego`, `*.yaml` and `*.yml` file under `dir`, hidden ones left out.
pub(super) fn collect_sources(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), LoadError> {
    let entries = std::fs::read_dir(dir).map_err(|source| LoadError::ReadDir {
        path: dir.to_path_buf(),
        source,
    })?;
    for entry in entries {
        let entry = entry.map_err(|source| LoadError::ReadDir {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = entry.path();
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        if path.is_dir() {
            collect_sources(&path, out)?;
        } else if path
            .extension()
            .is_some_and(|e| e == "rego" || e == "yaml" || e == "yml")
        {
            out.push(path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_prefixes_quote_non_identifiers() {
        assert_eq!(rule_prefix(&["a".into(), "b_c".into()]), "data.a.b_c");
        assert_eq!(rule_prefix(&["a".into(), "x-y".into()]), "data.a[\"x-y\"]");
    }

    #[test]
    fn test_name_candidates_are_identifiers_in_order() {
        let names = test_rule_names(
            "package p\ntest_a if true\n  test_indented if x.test_ref\ntest_a if false\nmytest_no := 1\n",
        );
        assert_eq!(
            names,
            vec!["test_a".to_string(), "test_indented".to_string()]
        );
    }
}
