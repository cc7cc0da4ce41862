//! Go toolchain version, read from `.go.buildinfo` (whether mapguard knows
//! the release is the release table's business: [`super::release`]).
//!
//! `.go.buildinfo` survives `strip` and `-ldflags=-s -w`; when the section
//! headers are gone too, the 16-byte-aligned magic is searched in the file.

use std::fmt;

use serde::Serialize;

/// Magic at the start of the build-info blob (14 bytes, then pointer size and flags).
pub const BUILDINFO_MAGIC: &[u8] = b"\xff Go buildinf:";
/// Size of the build-info header before the inline strings start.
const BUILDINFO_HEADER_LEN: usize = 32;
/// Flag bit: version and module strings are stored inline (Go 1.18+).
const FLAG_INLINE_STRINGS: u8 = 0x2;

/// Why a version could not be read or is not supported.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VersionError {
    #[error(
        "no Go build info found (no .go.buildinfo section and no build-info magic in the file)"
    )]
    NoBuildInfo,
    #[error("Go build info is malformed: {0}")]
    Malformed(&'static str),
    #[error("cannot parse Go version string {0:?}")]
    Unparsable(String),
}

/// A Go toolchain version such as `go1.23.5` (the raw string is kept, e.g.
/// `go1.24.4 X:nocoverageredesign`, or `devel ...`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GoVersion {
    pub raw: String,
    pub major: u32,
    pub minor: u32,
    /// 0 for a `.0`-less release such as `go1.24` or a release candidate.
    pub patch: u32,
}

impl GoVersion {
    /// Parses `go1.23.5`, `go1.24`, `go1.24rc1`, `go1.23.5 X:boringcrypto`.
    pub fn parse(raw: &str) -> Result<GoVersion, VersionError> {
        let unparsable = || VersionError::Unparsable(raw.to_string());
        let word = raw.split_whitespace().next().ok_or_else(unparsable)?;
        let rest = word.strip_prefix("go").ok_or_else(unparsable)?;
        // Cut a pre-release suffix (rc1, beta2) off the last numeric component.
        let numeric: String = rest
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.')
            .collect();
        let mut parts = numeric.split('.');
        let mut next = |required: bool| -> Result<u32, VersionError> {
            match parts.next() {
                Some(p) if !p.is_empty() => p.parse().map_err(|_| unparsable()),
                None if !required => Ok(0),
                _ => Err(unparsable()),
            }
        };
        let major = next(true)?;
        let minor = next(true)?;
        let patch = next(false)?;
        Ok(GoVersion {
            raw: raw.to_string(),
            major,
            minor,
            patch,
        })
    }

    /// `GOEXPERIMENT`s the toolchain records after ` X:` (e.g. `noswissmap`).
    pub fn experiments(&self) -> impl Iterator<Item = &str> {
        self.raw
            .split_whitespace()
            .filter_map(|w| w.strip_prefix("X:"))
            .flat_map(|list| list.split(','))
    }
}

impl fmt::Display for GoVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

/// Locates the build-info blob: in `section` when given, else by magic in `file`.
pub fn find_buildinfo<'a>(section: Option<&'a [u8]>, file: &'a [u8]) -> Option<&'a [u8]> {
    if let Some(s) = section.filter(|s| s.starts_with(BUILDINFO_MAGIC)) {
        return Some(s);
    }
    let mut at = 0;
    while at + BUILDINFO_HEADER_LEN <= file.len() {
        if file[at..].starts_with(BUILDINFO_MAGIC) {
            return Some(&file[at..]);
        }
        at += 16;
    }
    None
}

/// Reads the Go version string from a build-info blob. `read_vaddr` resolves
/// pointers for the pre-1.18 layout (string headers stored by address).
pub fn read_version(
    blob: &[u8],
    read_vaddr: impl Fn(u64, usize) -> Option<Vec<u8>>,
) -> Result<String, VersionError> {
    if blob.len() < BUILDINFO_HEADER_LEN || !blob.starts_with(BUILDINFO_MAGIC) {
        return Err(VersionError::NoBuildInfo);
    }
    let ptr_size = blob[14] as usize;
    let flags = blob[15];
    if flags & FLAG_INLINE_STRINGS != 0 {
        let (len, n) = read_uvarint(&blob[BUILDINFO_HEADER_LEN..])
            .ok_or(VersionError::Malformed("bad version length varint"))?;
        let start = BUILDINFO_HEADER_LEN + n;
        let end = start
            .checked_add(usize::try_from(len).map_err(|_| VersionError::Malformed("huge length"))?)
            .filter(|e| *e <= blob.len())
            .ok_or(VersionError::Malformed(
                "version string past end of build info",
            ))?;
        return String::from_utf8(blob[start..end].to_vec())
            .map_err(|_| VersionError::Malformed("version string is not UTF-8"));
    }
    // Pre-1.18: two pointers to Go string headers {ptr, len} follow the magic.
    if ptr_size != 8 {
        return Err(VersionError::Malformed("pointer size is not 8"));
    }
    let le = |b: &[u8]| u64::from_le_bytes(b[..8].try_into().expect("8 bytes"));
    let hdr_ptr = le(&blob[16..24]);
    let hdr = read_vaddr(hdr_ptr, 16).ok_or(VersionError::Malformed("version header pointer"))?;
    let (ptr, len) = (le(&hdr[0..8]), le(&hdr[8..16]));
    let len = usize::try_from(len).ok().filter(|l| *l < 4096);
    let bytes = len
        .and_then(|l| read_vaddr(ptr, l))
        .ok_or(VersionError::Malformed("version string pointer"))?;
    String::from_utf8(bytes).map_err(|_| VersionError::Malformed("version string is not UTF-8"))
}

/// Decodes an unsigned LEB128 varint; returns the value and bytes consumed.
pub fn read_uvarint(b: &[u8]) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for (i, byte) in b.iter().enumerate().take(10) {
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_release_versions() {
        let v = GoVersion::parse("go1.23.5").expect("go1.23.5 parses");
        assert_eq!((v.major, v.minor, v.patch), (1, 23, 5));
        let v = GoVersion::parse("go1.24.4 X:nocoverageredesign").expect("with experiments");
        assert_eq!((v.major, v.minor, v.patch), (1, 24, 4));
        assert_eq!(
            v.experiments().collect::<Vec<_>>(),
            vec!["nocoverageredesign"]
        );
        let v = GoVersion::parse("go1.24.4 X:noswissmap,boringcrypto").expect("noswissmap");
        assert_eq!(
            v.experiments().collect::<Vec<_>>(),
            vec!["noswissmap", "boringcrypto"]
        );
        let v = GoVersion::parse("go1.24rc1").expect("release candidate");
        assert_eq!((v.major, v.minor, v.patch), (1, 24, 0));
    }

    #[test]
    fn garbage_is_rejected() {
        for raw in ["", "devel +abc", "go", "go1", "gox.y"] {
            assert!(
                matches!(GoVersion::parse(raw), Err(VersionError::Unparsable(_))),
                "{raw:?} must not parse"
            );
        }
    }

    #[test]
    fn reads_inline_buildinfo() {
        let mut blob = BUILDINFO_MAGIC.to_vec();
        blob.extend([8, FLAG_INLINE_STRINGS]);
        blob.resize(BUILDINFO_HEADER_LEN, 0);
        blob.push(8);
        blob.extend(b"go1.23.5");
        blob.push(0);
        assert_eq!(read_version(&blob, |_, _| None).expect("reads"), "go1.23.5");
        blob.truncate(BUILDINFO_HEADER_LEN + 4);
        assert!(matches!(
            read_version(&blob, |_, _| None),
            Err(VersionError::Malformed(_))
        ));
        assert_eq!(
            read_version(b"not build info at all, no magic", |_, _| None),
            Err(VersionError::NoBuildInfo)
        );
    }
}
