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
use std::time::Duration;

use tokio::sync::watch;

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

/// Polls `fingerprint` every `interval` and calls `apply` once per change,
/// after the new fingerprint was seen twice in a row. Returns when
/// `shutdown` flips to `true` or its sender is gone.
pub async fn poll_changes<F, A>(
    what: &'static str,
    interval: Duration,
    fingerprint: F,
    mut apply: A,
    mut shutdown: watch::Receiver<bool>,
) where
    F: Fn() -> Fingerprint + Send + Sync + Clone + 'static,
    A: FnMut() + Send,
{
    let mut applied = match run_blocking(fingerprint.clone()).await {
        Some(fp) => fp,
        None => return,
    };
    let mut pending: Option<Fingerprint> = None;
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
        let Some(now) = run_blocking(fingerprint.clone()).await else {
            return;
        };
        if now == applied {
            pending = None;
        } else if pending == Some(now) {
            tracing::debug!(what, "change detected; reloading");
            apply();
            applied = now;
            pending = None;
        } else {
            pending = Some(now);
        }
    }
}

async fn run_blocking<F>(f: F) -> Option<Fingerprint>
where
    F: Fn() -> Fingerprint + Send + 'static,
{
    tokio::task::spawn_blocking(f).await.ok()
}

#[cfg(test)]
mod tests {
    use super::*;

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
