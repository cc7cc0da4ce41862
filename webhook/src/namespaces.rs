//! Namespace metadata (labels, annotations) that policies read as
//! `data.kubernetes.namespaces`.
//!
//! The admission handler only sees the [`NamespaceSource`] trait: a snapshot
//! of the current data and whether it is complete. Three sources exist:
//! [`NamespaceCache`] (in memory, filled by tests or by the others),
//! [`FileNamespaces`] (offline: a YAML/JSON file, reloaded when it changes)
//! and [`kube::watch`] (in a cluster: the toolkit's reflector on Namespaces
//! through the API server).

pub mod kube;

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use mapguard_kube::Connection;
use mapguard_policy::{NamespaceData, NamespaceError};

/// Where the webhook gets namespace metadata from.
pub trait NamespaceSource: Send + Sync + std::fmt::Debug + 'static {
    /// The current data (cheap: an `Arc` clone).
    fn snapshot(&self) -> Arc<NamespaceData>;
    /// Whether the data is complete (initial list done); `/readyz` waits for it.
    fn is_synced(&self) -> bool;
    /// Since when the data may be out of date (its source is failing), if
    /// it may be: requests judged meanwhile say so in a warning.
    fn stale_since(&self) -> Option<std::time::SystemTime> {
        None
    }
}

/// In-memory namespace data, swapped as a whole, with the state of its
/// source (synced, stale since when).
#[derive(Debug)]
pub struct NamespaceCache {
    data: RwLock<Arc<NamespaceData>>,
    connection: Arc<Connection>,
}

impl NamespaceCache {
    /// A cache holding `data`, already synced.
    pub fn new(data: NamespaceData) -> Self {
        Self {
            data: RwLock::new(Arc::new(data)),
            connection: Arc::new(Connection::synced()),
        }
    }

    /// An empty cache whose state is `connection`'s: a reflector's (see
    /// [`kube::watch`]), which marks it synced once the first list is
    /// published here.
    pub fn following(connection: Arc<Connection>) -> Self {
        Self {
            data: RwLock::default(),
            connection,
        }
    }

    /// The source is failing: from now on the data may be out of date
    /// (the first failure's time is kept).
    pub fn mark_stale(&self) {
        self.connection
            .mark_failing("the namespace source is failing");
    }

    /// The source is back.
    pub fn mark_fresh(&self) {
        self.connection.mark_connected();
    }

    /// An empty cache that reports not synced until [`Self::replace`].
    pub fn unsynced() -> Self {
        Self::following(Arc::default())
    }

    /// Replaces the data and marks the cache synced.
    pub fn replace(&self, data: NamespaceData) {
        *self.data.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(data);
        self.connection.mark_synced();
    }

    /// Applies `change` to a copy of the data and publishes the copy.
    pub fn update(&self, change: impl FnOnce(&mut NamespaceData)) {
        let mut guard = self.data.write().unwrap_or_else(|e| e.into_inner());
        let mut copy = NamespaceData::clone(&guard);
        change(&mut copy);
        *guard = Arc::new(copy);
    }
}

impl NamespaceSource for NamespaceCache {
    fn snapshot(&self) -> Arc<NamespaceData> {
        self.data.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn is_synced(&self) -> bool {
        self.connection.is_synced()
    }

    fn stale_since(&self) -> Option<std::time::SystemTime> {
        self.connection.stale_since()
    }
}

/// Namespace metadata read from a file (`kubectl get ns -o yaml` output or
/// hand-written Namespace objects).
#[derive(Debug)]
pub struct FileNamespaces {
    path: PathBuf,
    cache: NamespaceCache,
}

impl FileNamespaces {
    /// Reads `path`; fails if it cannot be read or parsed.
    pub fn load(path: &Path) -> Result<Self, NamespaceError> {
        let data = NamespaceData::from_file(path)?;
        Ok(Self {
            path: path.to_owned(),
            cache: NamespaceCache::new(data),
        })
    }

    /// The file watched for changes.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Re-reads the file; on failure the previous data stays. Returns the
    /// number of namespaces now known.
    pub fn reload(&self) -> Result<usize, NamespaceError> {
        let data = NamespaceData::from_file(&self.path)?;
        let n = data.len();
        self.cache.replace(data);
        Ok(n)
    }
}

impl NamespaceSource for FileNamespaces {
    fn snapshot(&self) -> Arc<NamespaceData> {
        self.cache.snapshot()
    }

    fn is_synced(&self) -> bool {
        true
    }
}
