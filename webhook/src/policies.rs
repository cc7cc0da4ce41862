//! The serving policy set and its hot reload.
//!
//! Requests clone the current [`PolicySet`] (an `Arc` inside) under a short
//! read lock; a reload compiles the whole directory first and swaps only a
//! set that compiled, so a broken ConfigMap never replaces the last good
//! policies.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};

use mapguard_policy::{EngineConfig, LoadError, PolicySet};

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
    /// cluster as objects, compiled in with the source's policies.
    cluster_documents: RwLock<Vec<(String, serde_json::Value)>>,
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
            compiling: Mutex::new(()),
        })
    }

    /// Serves an already compiled set (tests, benchmarks); never reloaded.
    pub fn fixed(set: PolicySet, config: EngineConfig) -> Self {
        Self {
            source: PolicySource::Embedded,
            config,
            current: RwLock::new(set),
            cluster_documents: RwLock::new(Vec::new()),
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

    /// Replaces the cluster's Gatekeeper objects and recompiles; on an error
    /// the previous set (and objects) keep serving.
    pub fn set_cluster_documents(
        &self,
        documents: Vec<(String, serde_json::Value)>,
    ) -> Result<usize, LoadError> {
        let _one = self.compiling.lock().unwrap_or_else(|e| e.into_inner());
        let n = self.compile_with(&documents)?;
        *self
            .cluster_documents
            .write()
            .unwrap_or_else(|e| e.into_inner()) = documents;
        Ok(n)
    }

    fn cluster(&self) -> Vec<(String, serde_json::Value)> {
        self.cluster_documents
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn compile_with(&self, documents: &[(String, serde_json::Value)]) -> Result<usize, LoadError> {
        let set = match &self.source {
            PolicySource::Dir(dir) => PolicySet::load_dir_with(dir, documents, &self.config)?,
            PolicySource::Embedded => PolicySet::embedded_with(documents, &self.config)?,
        };
        let n = set.policies().len() + set.constraints().count();
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = set;
        Ok(n)
    }
}
