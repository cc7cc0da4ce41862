//! The serving policy set and its hot reload.
//!
//! Requests clone the current [`PolicySet`] (an `Arc` inside) under a short
//! read lock; a reload compiles the whole directory first and swaps only a
//! set that compiled, so a broken ConfigMap never replaces the last good
//! policies.
//!
//! The cluster's Gatekeeper objects (`--gatekeeper-crs`) are compiled in
//! one by one: a template or constraint that does not compile or fit is
//! left out alone (its last admitted version, if any, keeps serving) and
//! listed in [`PolicyStore::rejections`]; the rest serves.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use mapguard_policy::{Admitted, Candidate, EngineConfig, LoadError, PolicySet};
use serde_json::Value as Json;
use tokio::sync::watch;

/// A cluster object whose current version is not serving.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The object's label, as given to [`PolicyStore::set_cluster_documents`].
    pub label: String,
    /// Why, without the label.
    pub message: String,
    /// Whether its previously admitted version serves instead.
    pub previous_serving: bool,
}

/// Where policies come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicySource {
    /// The default policies compiled into the binary (never reloaded).
    Embedded,
    /// A directory of `.rego` (and data) files.
    Dir(PathBuf),
}

/// The policy set serving requests.
pub struct PolicyStore {
    source: PolicySource,
    config: EngineConfig,
    current: RwLock<PolicySet>,
    /// Gatekeeper ConstraintTemplates and Constraints applied to the
    /// cluster as objects, by label, compiled in with the source's policies.
    cluster_documents: RwLock<Vec<(String, Json)>>,
    /// The version of each cluster object admitted last, by label.
    admitted: Mutex<BTreeMap<String, Json>>,
    /// The cluster objects left out by the last compilation.
    rejections: watch::Sender<Arc<Vec<Rejection>>>,
    /// One compilation at a time: a directory reload and a cluster update
    /// must not swap in sets built from each other's stale inputs.
    compiling: Mutex<()>,
}

impl std::fmt::Debug for PolicyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyStore")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl PolicyStore {
    /// Loads from `source`; fails if a directory does not compile.
    pub fn load(source: PolicySource, config: EngineConfig) -> Result<Self, LoadError> {
        let set = match &source {
            PolicySource::Embedded => PolicySet::embedded(&config),
            PolicySource::Dir(dir) => PolicySet::load_dir(dir, &config)?,
        };
        Ok(Self {
            source,
            config,
            current: RwLock::new(set),
            cluster_documents: RwLock::new(Vec::new()),
            admitted: Mutex::new(BTreeMap::new()),
            rejections: watch::Sender::new(Arc::default()),
            compiling: Mutex::new(()),
        })
    }

    /// Serves an already compiled set (tests, benchmarks) with the
    /// configuration it was compiled with; never reloaded.
    pub fn fixed(set: PolicySet) -> Self {
        Self {
            source: PolicySource::Embedded,
            config: set.config().clone(),
            current: RwLock::new(set),
            cluster_documents: RwLock::new(Vec::new()),
            admitted: Mutex::new(BTreeMap::new()),
            rejections: watch::Sender::new(Arc::default()),
            compiling: Mutex::new(()),
        }
    }

    /// The directory to watch, if any.
    pub fn dir(&self) -> Option<&Path> {
        match &self.source {
            PolicySource::Dir(dir) => Some(dir),
            PolicySource::Embedded => None,
        }
    }

    /// The engine configuration the sets are compiled with.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// The set serving now.
    pub fn current(&self) -> PolicySet {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Recompiles the directory (and the cluster's Gatekeeper objects);
    /// swaps it in only if it compiled. Returns the number of policies now
    /// serving.
    pub fn reload(&self) -> Result<usize, LoadError> {
        let _one = self.compiling.lock().unwrap_or_else(|e| e.into_inner());
        let documents = self.cluster();
        if matches!(self.source, PolicySource::Embedded) && documents.is_empty() {
            return Ok(self.current().policies().len());
        }
        self.compile_with(&documents)
    }

    /// Replaces the cluster's Gatekeeper objects (`(label, document)`,
    /// labels unique) and recompiles; each object is admitted on its own
    /// (see [`PolicyStore::rejections`]). On an error (the source's own
    /// files) the previous set and objects keep serving.
    pub fn set_cluster_documents(
        &self,
        documents: Vec<(String, Json)>,
    ) -> Result<usize, LoadError> {
        let _one = self.compiling.lock().unwrap_or_else(|e| e.into_inner());
        let n = self.compile_with(&documents)?;
        *self
            .cluster_documents
            .write()
            .unwrap_or_else(|e| e.into_inner()) = documents;
        Ok(n)
    }

    /// The cluster objects the last compilation left out, updated after
    /// each compilation that succeeded.
    pub fn rejections(&self) -> watch::Receiver<Arc<Vec<Rejection>>> {
        self.rejections.subscribe()
    }

    fn cluster(&self) -> Vec<(String, Json)> {
        self.cluster_documents
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn compile_with(&self, documents: &[(String, Json)]) -> Result<usize, LoadError> {
        let mut admitted = self.admitted.lock().unwrap_or_else(|e| e.into_inner());
        let candidates: Vec<Candidate> = documents
            .iter()
            .map(|(label, document)| Candidate {
                path: label.clone(),
                document: document.clone(),
                previous: admitted.get(label).filter(|p| *p != document).cloned(),
            })
            .collect();
        let (set, outcome) = match &self.source {
            PolicySource::Dir(dir) => PolicySet::load_dir_with(dir, &candidates, &self.config)?,
            PolicySource::Embedded => PolicySet::embedded_with(&candidates, &self.config)?,
        };
        let n = set.policies().len() + set.constraints().count();
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = set;
        let mut rejections = Vec::new();
        admitted.clear();
        for (candidate, outcome) in candidates.into_iter().zip(outcome) {
            let serving = match &outcome {
                Admitted::Current => Some(candidate.document),
                Admitted::Previous(_) => candidate.previous,
                Admitted::Rejected(_) => None,
            };
            if let Some(error) = outcome.error() {
                let text = error.to_string();
                let prefix = format!("{}: ", candidate.path);
                rejections.push(Rejection {
                    message: text.strip_prefix(&prefix).unwrap_or(&text).to_owned(),
                    label: candidate.path.clone(),
                    previous_serving: serving.is_some(),
                });
            }
            if let Some(document) = serving {
                admitted.insert(candidate.path, document);
            }
        }
        self.rejections.send_replace(Arc::new(rejections));
        Ok(n)
    }
}
