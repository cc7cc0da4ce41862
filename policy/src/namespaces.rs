//! Namespace metadata handed to policies as `data.kubernetes.namespaces`.
//!
//! The CI command fills it from a file (`kubectl get ns -o yaml` output, a
//! single `Namespace`, a `List`, or multi-document YAML/JSON); the webhook
//! fills the same structure from the API server with
//! [`NamespaceData::upsert`]/[`NamespaceData::remove`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Deserialize;
use serde_json::{Value as Json, json};

/// Every mutation takes a fresh number so engines prepared with older data
/// notice the change (clones share the number of the data they copy).
static NEXT_VERSION: AtomicU64 = AtomicU64::new(1);

fn next_version() -> u64 {
    NEXT_VERSION.fetch_add(1, Ordering::Relaxed)
}

/// Labels and annotations of one namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NamespaceMeta {
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

/// Name → metadata of the cluster's namespaces.
#[derive(Debug, Clone, Default)]
pub struct NamespaceData {
    namespaces: BTreeMap<String, NamespaceMeta>,
    version: u64,
}

#[derive(Deserialize)]
struct Metadata {
    name: Option<String>,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    annotations: Option<BTreeMap<String, String>>,
}

impl NamespaceData {
    /// No namespaces known.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads `Namespace` objects from a YAML or JSON file: one object, a
    /// `List`/`NamespaceList`, or several YAML documents. Other kinds are
    /// skipped.
    pub fn from_file(path: &Path) -> Result<Self, NamespaceError> {
        let text = std::fs::read_to_string(path).map_err(|source| NamespaceError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut objects = Vec::new();
        for (index, document) in yaml_serde::Deserializer::from_str(&text).enumerate() {
            let value = Json::deserialize(document).map_err(|source| NamespaceError::Parse {
                path: path.to_path_buf(),
                document: index,
                source,
            })?;
            unpack_lists(value, &mut objects);
        }
        Self::from_objects(objects).map_err(|e| NamespaceError::Invalid {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }

    /// Builds the data from `Namespace` objects (as the API server returns
    /// them); objects of other kinds are skipped.
    pub fn from_objects<I>(objects: I) -> Result<Self, NamespaceError>
    where
        I: IntoIterator<Item = Json>,
    {
        let mut data = Self::new();
        for object in objects {
            if object.get("kind").and_then(Json::as_str) == Some("Namespace") {
                data.upsert(&object)?;
            }
        }
        Ok(data)
    }

    /// Adds or replaces one namespace from its `Namespace` object.
    pub fn upsert(&mut self, namespace: &Json) -> Result<(), NamespaceError> {
        let invalid = |reason: String| NamespaceError::Object { reason };
        let metadata = namespace
            .get("metadata")
            .cloned()
            .ok_or_else(|| invalid("no metadata".to_string()))?;
        let metadata: Metadata = serde_json::from_value(metadata)
            .map_err(|e| invalid(format!("invalid metadata: {e}")))?;
        let name = metadata
            .name
            .filter(|n| !n.is_empty())
            .ok_or_else(|| invalid("no metadata.name".to_string()))?;
        self.insert(
            name,
            NamespaceMeta {
                labels: metadata.labels.unwrap_or_default(),
                annotations: metadata.annotations.unwrap_or_default(),
            },
        );
        Ok(())
    }

    /// Adds or replaces one namespace.
    pub fn insert(&mut self, name: String, meta: NamespaceMeta) {
        self.namespaces.insert(name, meta);
        self.version = next_version();
    }

    /// Forgets a namespace; returns whether it was known.
    pub fn remove(&mut self, name: &str) -> bool {
        let known = self.namespaces.remove(name).is_some();
        if known {
            self.version = next_version();
        }
        known
    }

    /// Metadata of one namespace.
    pub fn get(&self, name: &str) -> Option<&NamespaceMeta> {
        self.namespaces.get(name)
    }

    pub fn len(&self) -> usize {
        self.namespaces.len()
    }

    pub fn is_empty(&self) -> bool {
        self.namespaces.is_empty()
    }

    /// Identifies this content: equal versions mean equal data.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The data document the policies see:
    /// `{"kubernetes": {"namespaces": {NAME: {"metadata": {"name", "labels", "annotations"}}}}}`.
    pub fn to_data_json(&self) -> Json {
        let namespaces: serde_json::Map<String, Json> = self
            .namespaces
            .iter()
            .map(|(name, meta)| {
                (
                    name.clone(),
                    json!({"metadata": {
                        "name": name,
                        "labels": meta.labels,
                        "annotations": meta.annotations,
                    }}),
                )
            })
            .collect();
        json!({"kubernetes": {"namespaces": namespaces}})
    }
}

impl NamespaceData {
    /// The namespaces as `v1` Namespace objects (name, labels,
    /// annotations), for Gatekeeper's `data.inventory`.
    pub fn objects(&self) -> Vec<Json> {
        self.namespaces
            .iter()
            .map(|(name, meta)| {
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {
                    "name": name, "labels": meta.labels, "annotations": meta.annotations}})
            })
            .collect()
    }
}

/// Appends the Kubernetes objects in `value` to `out`: `List` kinds
/// (`kind` ending in `List`, with `items`) are unpacked recursively, `null`
/// (an empty YAML document) is skipped. Shared with the CI command, which
/// reads manifests the same way.
pub fn unpack_lists(value: Json, out: &mut Vec<Json>) {
    match value {
        Json::Null => {}
        Json::Object(mut map)
            if map
                .get("kind")
                .and_then(Json::as_str)
                .is_some_and(|k| k.ends_with("List"))
                && map.get("items").is_some_and(Json::is_array) =>
        {
            if let Some(Json::Array(items)) = map.remove("items") {
                for item in items {
                    unpack_lists(item, out);
                }
            }
        }
        other => out.push(other),
    }
}

/// A namespace data file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum NamespaceError {
    #[error("cannot read namespace data {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid YAML in namespace data {path}, document {document}: {source}")]
    Parse {
        path: PathBuf,
        document: usize,
        source: yaml_serde::Error,
    },
    #[error("invalid namespace data {path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("invalid Namespace object: {reason}")]
    Object { reason: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_lists_and_multi_documents_and_skips_other_kinds() {
        let dir = std::env::temp_dir().join(format!("mapguard-ns-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        let path = dir.join("ns.yaml");
        std::fs::write(
            &path,
            "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Namespace\n  metadata:\n    name: shop\n    labels: {mapguard.io/mode: stop}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: plain}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n",
        )
        .expect("write sample");
        let data = NamespaceData::from_file(&path).expect("sample must load");
        assert_eq!(data.len(), 2);
        assert_eq!(
            data.get("shop")
                .and_then(|m| m.labels.get("mapguard.io/mode"))
                .map(String::as_str),
            Some("stop")
        );
        let json = data.to_data_json();
        assert_eq!(
            json["kubernetes"]["namespaces"]["plain"]["metadata"]["name"],
            "plain"
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn mutations_change_the_version() {
        let mut data = NamespaceData::new();
        let v0 = data.version();
        data.upsert(&json!({"kind": "Namespace", "metadata": {"name": "a"}}))
            .expect("valid namespace");
        let v1 = data.version();
        assert_ne!(v0, v1);
        assert_eq!(data.clone().version(), v1);
        assert!(data.remove("a"));
        assert_ne!(data.version(), v1);
        assert!(
            data.upsert(&json!({"kind": "Namespace", "metadata": {}}))
                .is_err()
        );
    }
}
