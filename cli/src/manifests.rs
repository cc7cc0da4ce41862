//! Reading manifests: files and folders, multi-document YAML or JSON,
//! `List` kinds unpacked.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value as Json;

/// One Kubernetes object and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    pub file: PathBuf,
    /// Index of the YAML document in the file (0-based).
    pub document: usize,
    pub object: Json,
}

/// Why manifests cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid YAML in {path}, document {document}: {source}")]
    Yaml {
        path: PathBuf,
        document: usize,
        source: yaml_serde::Error,
    },
    #[error("{path}, document {document}: {reason}")]
    NotAnObject {
        path: PathBuf,
        document: usize,
        reason: String,
    },
}

fn is_manifest(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
}

/// The manifest files named by `paths` (folders searched recursively, in
/// path order).
pub fn expand(paths: &[PathBuf]) -> Result<Vec<PathBuf>, ManifestError> {
    let mut files = Vec::new();
    for path in paths {
        let meta = std::fs::metadata(path).map_err(|source| ManifestError::Read {
            path: path.clone(),
            source,
        })?;
        if meta.is_dir() {
            let mut found = Vec::new();
            walk(path, &mut found)?;
            found.sort();
            files.extend(found);
        } else {
            files.push(path.clone());
        }
    }
    Ok(files)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), ManifestError> {
    let read_err = |source| ManifestError::Read {
        path: dir.to_path_buf(),
        source,
    };
    for entry in std::fs::read_dir(dir).map_err(read_err)? {
        let path = entry.map_err(read_err)?.path();
        if path.is_dir() {
            walk(&path, out)?;
        } else if is_manifest(&path) {
            out.push(path);
        }
    }
    Ok(())
}

/// Every object in `file`: empty documents skipped, `List` kinds unpacked.
pub fn read_file(file: &Path) -> Result<Vec<Manifest>, ManifestError> {
    let text = std::fs::read_to_string(file).map_err(|source| ManifestError::Read {
        path: file.to_path_buf(),
        source,
    })?;
    let mut manifests = Vec::new();
    for (document, de) in yaml_serde::Deserializer::from_str(&text).enumerate() {
        let value = Json::deserialize(de).map_err(|source| ManifestError::Yaml {
            path: file.to_path_buf(),
            document,
            source,
        })?;
        let mut objects = Vec::new();
        mapguard_policy::unpack_lists(value, &mut objects);
        for object in objects {
            if !object.is_object() || object.get("kind").and_then(Json::as_str).is_none() {
                return Err(ManifestError::NotAnObject {
                    path: file.to_path_buf(),
                    document,
                    reason: "not a Kubernetes object (no kind)".to_string(),
                });
            }
            manifests.push(Manifest {
                file: file.to_path_buf(),
                document,
                object,
            });
        }
    }
    Ok(manifests)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `text` in a file named `name`, removed when dropped.
    fn temp(name: &str, text: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::Builder::new()
            .prefix("mapguard-cli-")
            .suffix(&format!("-{name}"))
            .tempfile()
            .expect("create temp file");
        std::io::Write::write_all(&mut file, text.as_bytes()).expect("write sample");
        file
    }

    #[test]
    fn multi_documents_and_lists_are_unpacked() {
        let path = temp(
            "multi.yaml",
            "---\nkind: Pod\nmetadata: {name: a}\n---\n---\nkind: List\nitems:\n- {kind: Pod, metadata: {name: b}}\n- {kind: Service, metadata: {name: c}}\n",
        );
        let manifests = read_file(path.path()).expect("valid file");
        let names: Vec<(usize, &str)> = manifests
            .iter()
            .map(|m| {
                (
                    m.document,
                    m.object["metadata"]["name"].as_str().unwrap_or("?"),
                )
            })
            .collect();
        assert_eq!(names, vec![(0, "a"), (2, "b"), (2, "c")]);
    }

    #[test]
    fn bad_yaml_names_file_and_document() {
        let path = temp("bad.yaml", "kind: Pod\n---\nkind: [unclosed\n");
        let err = read_file(path.path()).expect_err("broken YAML must fail");
        let text = err.to_string();
        assert!(
            matches!(err, ManifestError::Yaml { document: 1, .. }),
            "{text}"
        );
        assert!(
            text.contains("bad.yaml") && text.contains("document 1"),
            "{text}"
        );
    }

    #[test]
    fn scalars_are_not_objects() {
        let path = temp("scalar.yaml", "just a string\n");
        assert!(matches!(
            read_file(path.path()),
            Err(ManifestError::NotAnObject { .. })
        ));
    }
}
