//! The Unix socket that serves `/events`, the live stream of every JSON
//! line the agent writes: every tenant's stacks, Pod names and namespaces.
//! It is not on the ops port, which any Pod that reaches the agent can
//! read; the socket is owned by the agent's user (root) with mode 0600, so
//! only root on the node or an admin who can `kubectl exec` into the
//! agent's Pod reads it (`curl --unix-socket PATH http://agent/events`).

use std::{
    io,
    os::unix::{
        fs::{DirBuilderExt as _, FileTypeExt as _, PermissionsExt as _},
        net::UnixListener,
    },
    path::{Path, PathBuf},
};

/// The socket's mode: its owner (the agent's user) only.
pub const MODE: u32 = 0o600;

/// Why the events socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum EventsSocketError {
    #[error(
        "{path} exists and is not a socket ({kind}); refusing to replace it: remove it or choose another --events-socket"
    )]
    NotASocket { path: PathBuf, kind: &'static str },
    #[error("cannot create the events socket {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Binds the events socket at `path` with mode 0600, creating its folder
/// (mode 0700) if needed. A socket already there is one a previous agent
/// left (an agent that stops removes its own) and is replaced; anything
/// else there is refused. Call it before other threads create files: the
/// umask is narrowed around the bind so that the socket is never open to
/// others, even for a moment.
pub fn bind(path: &Path) -> Result<UnixListener, EventsSocketError> {
    let io = |source| EventsSocketError::Io {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path).map_err(io)?,
        Ok(meta) => {
            let kind = if meta.is_dir() {
                "a directory"
            } else if meta.file_type().is_symlink() {
                "a symbolic link"
            } else if meta.is_file() {
                "a regular file"
            } else {
                "a special file"
            };
            return Err(EventsSocketError::NotASocket {
                path: path.to_path_buf(),
                kind,
            });
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io)?;
    }
    // SAFETY: umask has no memory preconditions; it is restored below.
    let old = unsafe { libc::umask(0o177) };
    let bound = UnixListener::bind(path);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let listener = bound.map_err(io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(MODE)).map_err(io)?;
    listener.set_nonblocking(true).map_err(io)?;
    Ok(listener)
}

/// Removes the socket at `path` if it is still one (at stop).
pub fn remove(path: &Path) {
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
        let _ = std::fs::remove_file(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "mapguard-events-socket-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("test folder");
        dir
    }

    #[test]
    fn the_socket_is_its_owners_only_and_a_stale_one_is_replaced() {
        let dir = dir("stale");
        let path = dir.join("sub").join("events.sock");
        let first = bind(&path).expect("bind");
        drop(first);
        let meta = std::fs::symlink_metadata(&path).expect("the socket stays");
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, MODE);
        let parent = std::fs::metadata(dir.join("sub")).expect("folder");
        assert_eq!(parent.permissions().mode() & 0o777, 0o700);
        // A stale socket (its listener gone) is replaced by a live one.
        let _second = bind(&path).expect("a stale socket is replaced");
        std::os::unix::net::UnixStream::connect(&path).expect("the new socket accepts");
        remove(&path);
        assert!(!path.exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn anything_else_at_the_path_is_refused() {
        let dir = dir("other");
        let file = dir.join("file");
        std::fs::write(&file, "keep me").expect("file");
        let e = bind(&file).expect_err("a regular file is not replaced");
        assert!(
            e.to_string().contains("is not a socket (a regular file)"),
            "{e}"
        );
        assert_eq!(std::fs::read_to_string(&file).expect("kept"), "keep me");
        let sub = dir.join("sub");
        std::fs::create_dir(&sub).expect("dir");
        let e = bind(&sub).expect_err("a directory is not replaced");
        assert!(e.to_string().contains("(a directory)"), "{e}");
        assert!(sub.is_dir());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
