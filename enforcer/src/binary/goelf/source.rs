//! Reading an executable with bounded memory and time: one opened
//! descriptor (opened once, `fstat`ed, read with `pread`), a cap on the file
//! size checked before anything is read, a cap on every piece read (a
//! section, a function's code), and magic searches done in fixed-size chunks
//! over the loadable segments only.
//!
//! The node agent analyses whatever executables tenants run: a 4 GiB sparse
//! file must cost a `fstat`, not 4 GiB of memory.

use std::{borrow::Cow, fmt, fs::File, io, os::unix::fs::FileExt, path::Path};

/// Default `--max-binary-size`: the biggest real Go services are a few
/// hundred MB (kube-apiserver 1.37 is 114 MiB stripped; with DWARF ~150).
pub const DEFAULT_MAX_BINARY_SIZE: u64 = 1 << 30;
/// The largest single piece read or decompressed (a section, a function's
/// code): kube-apiserver's biggest one read, `.gopclntab`, is 45 MiB.
pub const MAX_PIECE: u64 = 256 << 20;
/// Bytes read at a time when searching for a magic.
const CHUNK: usize = 4 << 20;

/// How much of an executable the analysis may read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadLimits {
    /// Larger files are refused without being read.
    pub max_file: u64,
    /// Larger sections (or function bodies) are refused.
    pub max_piece: u64,
}

impl Default for ReadLimits {
    fn default() -> ReadLimits {
        ReadLimits {
            max_file: DEFAULT_MAX_BINARY_SIZE,
            max_piece: MAX_PIECE,
        }
    }
}

impl ReadLimits {
    /// The default piece cap under a file cap of `max_file` bytes.
    pub fn with_max_file(max_file: u64) -> ReadLimits {
        ReadLimits {
            max_file,
            ..ReadLimits::default()
        }
    }
}

/// A byte count for messages: `4.0 GiB`, `512 MiB`, `300 bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub u64);

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(&str, u64); 3] = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
        match UNITS.iter().find(|(_, n)| self.0 >= *n) {
            Some((unit, n)) if self.0.is_multiple_of(*n) => write!(f, "{} {unit}", self.0 / n),
            Some((unit, n)) => write!(f, "{:.1} {unit}", self.0 as f64 / *n as f64),
            None => write!(f, "{} bytes", self.0),
        }
    }
}

/// The bytes of an executable: an opened file, or (tests, benchmarks) a
/// copy in memory; `Closed` once the analysis no longer needs them.
#[derive(Debug)]
pub(super) enum Image {
    Bytes(Vec<u8>),
    File { file: File, len: u64 },
    Closed,
}

/// Why a piece of the file could not be read.
#[derive(Debug)]
pub(super) enum ReadError {
    /// Past the end of the file, or of a segment.
    Range,
    /// Over [`ReadLimits::max_piece`].
    TooLarge(u64),
    Io(io::Error),
}

impl Image {
    /// Opens `path` once and checks its size against the cap before reading
    /// anything. Errors: (what went wrong, the size if over the cap).
    pub fn open(path: &Path, limits: ReadLimits) -> Result<Image, OpenError> {
        Image::of_file(File::open(path).map_err(OpenError::Io)?, limits)
    }

    /// [`Image::open`] of a file already opened.
    pub fn of_file(file: File, limits: ReadLimits) -> Result<Image, OpenError> {
        let meta = file.metadata().map_err(OpenError::Io)?;
        if !meta.is_file() {
            return Err(OpenError::NotRegular);
        }
        if meta.len() > limits.max_file {
            return Err(OpenError::TooLarge(meta.len()));
        }
        Ok(Image::File {
            file,
            len: meta.len(),
        })
    }

    /// The opened file, if any; the image is closed after.
    pub fn take_file(&mut self) -> Option<File> {
        match std::mem::replace(self, Image::Closed) {
            Image::File { file, .. } => Some(file),
            _ => None,
        }
    }

    pub fn len(&self) -> u64 {
        match self {
            Image::Bytes(b) => b.len() as u64,
            Image::File { len, .. } => *len,
            Image::Closed => 0,
        }
    }

    /// `len` bytes at `offset`, at most `max` of them.
    pub fn read(&self, offset: u64, len: u64, max: u64) -> Result<Cow<'_, [u8]>, ReadError> {
        if len > max {
            return Err(ReadError::TooLarge(len));
        }
        let end = offset.checked_add(len).ok_or(ReadError::Range)?;
        if end > self.len() {
            return Err(ReadError::Range);
        }
        match self {
            Image::Bytes(b) => Ok(Cow::Borrowed(&b[offset as usize..end as usize])),
            Image::File { file, .. } => {
                let mut buf = vec![0; usize::try_from(len).map_err(|_| ReadError::Range)?];
                file.read_exact_at(&mut buf, offset)
                    .map_err(ReadError::Io)?;
                Ok(Cow::Owned(buf))
            }
            Image::Closed => Err(ReadError::Range),
        }
    }

    /// File offsets of every copy of `pattern` in `start..end` (a chunk at a
    /// time: memory is one chunk, time is linear in the range) that are
    /// multiples of `align`; stops after `limit` matches.
    pub fn find(
        &self,
        range: std::ops::Range<u64>,
        pattern: &[u8],
        align: u64,
        limit: usize,
    ) -> Vec<u64> {
        let mut found = Vec::new();
        let end = range.end.min(self.len());
        let finder = memchr::memmem::Finder::new(pattern);
        let mut at = range.start;
        while at < end && found.len() < limit {
            let len = (end - at).min(CHUNK as u64);
            let Ok(chunk) = self.read(at, len, CHUNK as u64) else {
                break;
            };
            for i in finder.find_iter(&chunk) {
                let offset = at + i as u64;
                if offset.is_multiple_of(align) && found.len() < limit {
                    found.push(offset);
                }
            }
            if at + len >= end {
                break;
            }
            // Overlap so that a match across two chunks is seen once.
            at += len - (pattern.len() as u64 - 1).min(len - 1);
        }
        found
    }
}

/// Why an executable could not be opened for analysis.
#[derive(Debug)]
pub(super) enum OpenError {
    Io(io::Error),
    NotRegular,
    /// Its size, over the cap.
    TooLarge(u64),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_well() {
        assert_eq!(Size(4 << 30).to_string(), "4 GiB");
        assert_eq!(Size((4 << 30) + (1 << 29)).to_string(), "4.5 GiB");
        assert_eq!(Size(512 << 20).to_string(), "512 MiB");
        assert_eq!(Size(300).to_string(), "300 bytes");
    }

    #[test]
    fn find_sees_matches_across_chunks_once() {
        let mut data = vec![0u8; 2 * CHUNK + 64];
        for at in [8, CHUNK - 4, 2 * CHUNK + 8] {
            data[at..at + 8].copy_from_slice(b"MAGIC123");
        }
        let image = Image::Bytes(data);
        assert_eq!(
            image.find(0..image.len(), b"MAGIC123", 4, 10),
            vec![8, CHUNK as u64 - 4, 2 * CHUNK as u64 + 8]
        );
        assert_eq!(
            image.find(0..image.len(), b"MAGIC123", 8, 10),
            vec![8, 2 * CHUNK as u64 + 8]
        );
        assert_eq!(image.find(0..image.len(), b"MAGIC123", 4, 1), vec![8]);
    }
}
