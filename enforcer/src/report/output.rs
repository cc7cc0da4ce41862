//! Where violation events go: a file (appended to) or stdout.

use std::{fs::OpenOptions, io::Write, path::PathBuf};

#[derive(Debug, thiserror::Error)]
#[error("cannot open events file {path}: {source}")]
pub struct OutputError {
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

/// `-` is stdout; anything else a file, created if needed and appended to.
pub fn open(spec: &str) -> Result<Box<dyn Write + Send>, OutputError> {
    if spec == "-" {
        return Ok(Box::new(std::io::stdout()));
    }
    let path = PathBuf::from(spec);
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|source| OutputError { path, source })?;
    Ok(Box::new(file))
}
