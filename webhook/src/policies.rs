//! The serving policy set and its hot reload.
//!
//! Requests clone the current [`PolicySet`] (an `Arc` inside) under a short
//! read lock; a reload compiles the whole directory first and swaps only a
//! set that compiled, so a broken ConfigMap never replaces the last good
//! policies.

use std::path::{Path, PathBuf};
use std::sync::RwLock;

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
        })
    }

    /// Serves an already compiled set (tests, benchmarks); never reloaded.
    pub fn fixed(set: PolicySet, config: EngineConfig) -> Self {
        Self {
            source: PolicySource::Embedded,
            config,
            current: RwLock::new(set),
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

    /// Recompiles the directory; swaps it in only if it compiled. Returns
    /// the number of policies now serving.
    pub fn reload(&self) -> Result<usize, LoadError> {
        let PolicySource::Dir(dir) = &self.source else {
            return Ok(self.current().policies().len());
        };
        let set = PolicySet::load_dir(dir, &self.config)?;
        let n = set.policies().len();
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = set;
        Ok(n)
    }
}
