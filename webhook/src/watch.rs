//! Change detection for mounted files: the policy directory, the serving
//! certificate and key, and the namespaces file.
//!
//! We poll and compare content fingerprints instead of using inotify
//! (`notify`). A ConfigMap or Secret volume is updated by the kubelet
//! writing a new hidden timestamped directory and atomically swapping the
//! `..data` symlink; the visible files are symlinks through `..data`, so
//! their own inodes never change and inotify watches on them see nothing
//! (watches on the directory see events on hidden entries only). Reading a
//! few kilobytes every couple of seconds is cheap, behaves the same on every
//! filesystem (tmpfs, overlay, NFS), catches any kind of replacement, and
//! the kubelet itself only refreshes volumes about once a minute, so polling
//! adds no meaningful delay. A change is applied once the fingerprint has
//! been stable for one interval (debounce: an editor or `kubectl cp` that
//! writes files one by one is not picked up half-way).

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::metrics::ReloadResult;

/// A hash over names and contents; equal fingerprints mean "no change".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint(u64);

fn hash_file(hasher: &mut DefaultHasher, path: &Path) {
    path.hash(hasher);
    match std::fs::read(path) {
        Ok(bytes) => {
            1u8.hash(hasher);
            bytes.hash(hasher);
        }
        Err(e) => {
            0u8.hash(hasher);
            e.kind().hash(hasher);
        }
    }
}

/// Fingerprint of a list of files (missing files count as a state too).
pub fn fingerprint_files(paths: &[PathBuf]) -> Fingerprint {
    let mut hasher = DefaultHasher::new();
    for path in paths {
        hash_file(&mut hasher, path);
    }
    Fingerprint(hasher.finish())
}

/// Fingerprint of every visible file below `dir` (recursively, following
/// symlinks). Hidden entries (`..data`, `..2024_…`) are skipped: the visible
/// names reach their content through the symlinks.
pub fn fingerprint_dir(dir: &Path) -> Fingerprint {
    let mut files = Vec::new();
    collect(dir, &mut files, 0);
    files.sort();
    fingerprint_files(&files)
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>, depth: usize) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        out.push(dir.to_owned());
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        if path.is_dir() && depth < 8 {
            collect(&path, out, depth + 1);
        } else {
            out.push(path);
        }
    }
}

/// A watched source: how to fingerprint it and what to do once it changed.
pub struct Watched {
    what: &'static str,
    fingerprint: FingerprintFn,
    apply: Box<dyn FnMut() + Send>,
}

impl Watched {
    /// `what` names the source in logs.
    pub fn new(
        what: &'static str,
        fingerprint: impl Fn() -> Fingerprint + Send + Sync + 'static,
        apply: impl FnMut() + Send + 'static,
    ) -> Self {
        Self {
            what,
            fingerprint: Arc::new(fingerprint),
            apply: Box::new(apply),
        }
    }
}

impl std::fmt::Debug for Watched {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watched")
            .field("what", &self.what)
            .finish_non_exhaustive()
    }
}

/// The one reload loop: every `interval`, fingerprints every source (off
/// the runtime's threads) and applies each once per change, after its new
/// fingerprint was seen twice in a row. Returns when `shutdown` flips to
/// `true` or its sender is gone.
pub async fn poll_changes(
    interval: Duration,
    mut sources: Vec<Watched>,
    mut shutdown: watch::Receiver<bool>,
) {
    let fingerprints: Vec<_> = sources.iter().map(|s| s.fingerprint.clone()).collect();
    let Some(mut applied) = run_blocking(&fingerprints).await else {
        return;
    };
    let mut pending: Vec<Option<Fingerprint>> = vec![None; sources.len()];
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    return;
                }
                continue;
            }
        }
        let Some(now) = run_blocking(&fingerprints).await else {
            return;
        };
        for (i, source) in sources.iter_mut().enumerate() {
            if now[i] == applied[i] {
                pending[i] = None;
            } else if pending[i] == Some(now[i]) {
                tracing::debug!(what = source.what, "change detected; reloading");
                (source.apply)();
                applied[i] = now[i];
                pending[i] = None;
            } else {
                pending[i] = Some(now[i]);
            }
        }
    }
}

type FingerprintFn = Arc<dyn Fn() -> Fingerprint + Send + Sync>;

async fn run_blocking(fingerprints: &[FingerprintFn]) -> Option<Vec<Fingerprint>> {
    let fingerprints = fingerprints.to_vec();
    tokio::task::spawn_blocking(move || fingerprints.iter().map(|f| f()).collect())
        .await
        .ok()
}

/// Counts a reload's `result` with `count`; logs a rejected one with
/// `kept` (what keeps serving). The loaded value, if it loaded.
pub fn reloaded<T, E: std::fmt::Display>(
    result: Result<T, E>,
    count: impl Fn(ReloadResult),
    kept: &str,
) -> Option<T> {
    match result {
        Ok(value) => {
            count(ReloadResult::success);
            Some(value)
        }
        Err(error) => {
            count(ReloadResult::failure);
            tracing::error!(%error, "{kept}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two sources in the one loop: a change to one applies it alone, once,
    /// after it was seen stable.
    #[tokio::test]
    async fn one_loop_applies_each_source_on_its_own_change() {
        use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
        let states: Arc<[AtomicU64; 2]> = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
        let applied: Arc<[AtomicUsize; 2]> = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
        let sources = (0..2)
            .map(|i| {
                let (states, applied) = (states.clone(), applied.clone());
                Watched::new(
                    "test",
                    move || Fingerprint(states[i].load(Ordering::SeqCst)),
                    move || {
                        applied[i].fetch_add(1, Ordering::SeqCst);
                    },
                )
            })
            .collect();
        let (stop, rx) = watch::channel(false);
        let task = tokio::spawn(poll_changes(Duration::from_millis(10), sources, rx));
        tokio::time::sleep(Duration::from_millis(50)).await;
        states[1].store(7, Ordering::SeqCst);
        let waited = std::time::Instant::now();
        while applied[1].load(Ordering::SeqCst) == 0 {
            assert!(
                waited.elapsed() < Duration::from_secs(10),
                "change never applied"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(applied[1].load(Ordering::SeqCst), 1, "applied once");
        assert_eq!(
            applied[0].load(Ordering::SeqCst),
            0,
            "unchanged source untouched"
        );
        stop.send(true).expect("loop listening");
        task.await.expect("loop ends on shutdown");
    }

    #[test]
    fn dir_fingerprint_sees_content_and_ignores_hidden() {
        let dir = std::env::temp_dir().join(format!("mapguard-fp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("..data")).expect("mkdir");
        std::fs::write(dir.join("a.rego"), "package a").expect("write");
        let first = fingerprint_dir(&dir);
        std::fs::write(dir.join("..data/x"), "hidden").expect("write");
        assert_eq!(
            first,
            fingerprint_dir(&dir),
            "hidden entries must not count"
        );
        std::fs::write(dir.join("a.rego"), "package b").expect("write");
        assert_ne!(first, fingerprint_dir(&dir), "content change must count");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
