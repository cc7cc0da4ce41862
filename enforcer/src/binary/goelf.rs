//! Go binary analysis: Go version, map implementation, runtime struct
//! layouts, the uprobe plan for the runtime's map functions, and PC
//! symbolization from `.gopclntab`.
//!
//! Everything here works on stripped binaries: the Go version comes from
//! `.go.buildinfo` and functions, files and lines from the pclntab, both of
//! which survive `strip` and `-ldflags=-s -w`. DWARF is used only to read
//! struct offsets, with a verified per-release table as the fallback.
//!
//! Supported: x86-64 ELF binaries built by the Go releases in the release
//! table ([`release::RELEASES`]), whose layouts were verified here. Others
//! are refused rather than guessed at.

mod analysis;
pub mod disasm;
pub mod dwarf;
mod elf;
pub mod layout;
pub mod pclntab;
pub mod plan;
pub mod release;
pub mod version;

mod source;

use std::{
    borrow::Cow,
    path::{Path, PathBuf},
};

use serde::Serialize;

use analysis::{Parts, read_error};
use elf::Segments;
use source::{Image, OpenError};

pub use disasm::StepHandling;
pub use layout::{LayoutSource, MapLayout, RuntimeLayout};
pub use pclntab::{Frame, FuncInfo, PclntabError, Symbolizer};
pub use plan::{
    ArgLoc, GoReg, LocatedMessage, PlannedBackstop, PlannedProbe, PlannedWrapper, ProbePlan,
};
pub use release::{MapRuntime, Release};
pub use source::{DEFAULT_MAX_BINARY_SIZE, MAX_PIECE, ReadLimits, Size};
pub use version::GoVersion;

/// Why a binary cannot be analysed.
#[derive(Debug, thiserror::Error)]
pub enum GoElfError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {size} executable, over the --max-binary-size limit of {limit}")]
    TooLarge {
        path: PathBuf,
        size: Size,
        limit: Size,
    },
    #[error("{path}: {what} is {size}, over the {limit} limit on one read")]
    PieceTooLarge {
        path: PathBuf,
        what: String,
        size: Size,
        limit: Size,
    },
    #[error("{path}: {what} lies outside the file")]
    OutsideFile { path: PathBuf, what: String },
    #[error("{path} is not a regular file")]
    NotRegular { path: PathBuf },
    #[error("{path} is not an ELF file")]
    NotElf { path: PathBuf },
    #[error("{path} is a malformed ELF file: {source}")]
    BadElf {
        path: PathBuf,
        source: object::Error,
    },
    #[error("{path} is an ELF file for {arch}, only x86-64 is supported")]
    NotX86_64 { path: PathBuf, arch: String },
    #[error("{path} is not a Go binary (no Go build info and no Go pclntab)")]
    NotGo { path: PathBuf },
    #[error(
        "{path} was built by {found}, a Go release mapguard has no verified runtime layout for; \
         supported Go releases: {supported}. Rebuild it with one of them, or use a mapguard \
         version that lists this release (`mapguard-enforcer scan` tells what a binary needs)"
    )]
    UnsupportedGoVersion {
        path: PathBuf,
        found: String,
        supported: String,
    },
    #[error(
        "{path} was built by {found} with GOEXPERIMENT={experiment}, whose maps mapguard does \
         not support; rebuild it without that experiment"
    )]
    UnsupportedExperiment {
        path: PathBuf,
        found: String,
        experiment: &'static str,
    },
    #[error("{path}: {symbol} not found; cannot guard the runtime's own race reports")]
    NoBackstop { path: PathBuf, symbol: &'static str },
    #[error(
        "{path}: {version} should use {expected} maps but its runtime has {found} map functions; refusing to guess layouts"
    )]
    MapImplMismatch {
        path: PathBuf,
        version: String,
        expected: MapImpl,
        found: MapImpl,
    },
    #[error("{path}: cannot read the Go version: {source}")]
    Version {
        path: PathBuf,
        source: version::VersionError,
    },
    #[error(
        "{path} is a Go binary without a usable pclntab (no .gopclntab section and no pclntab magic in the file; was it post-processed?)"
    )]
    NoPclntab { path: PathBuf },
    #[error("{path}: bad pclntab: {source}")]
    Pclntab { path: PathBuf, source: PclntabError },
    #[error("{path}: {symbol} at {vaddr:#x} is outside every loadable segment")]
    Unmapped {
        path: PathBuf,
        symbol: String,
        vaddr: u64,
    },
}

/// Which Go map implementation the runtime uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MapImpl {
    /// Bucket-array hash maps, Go ≤ 1.23 (`runtime/map.go`).
    Classic,
    /// Swiss tables, Go ≥ 1.24 (`internal/runtime/maps`).
    Swiss,
}

impl std::fmt::Display for MapImpl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MapImpl::Classic => "classic",
            MapImpl::Swiss => "swiss",
        })
    }
}

/// An analysed Go executable.
pub struct GoBinary {
    path: PathBuf,
    /// The file, read on demand (function code, data) until [`Self::close`].
    image: Image,
    max_piece: u64,
    segments: Segments,
    version: GoVersion,
    release: &'static Release,
    maps: &'static MapRuntime,
    pie: bool,
    stripped: bool,
    layout: RuntimeLayout,
    layout_corrections: Vec<String>,
    symbolizer: Symbolizer,
}

impl GoBinary {
    /// Reads and analyses `path` within the default [`ReadLimits`].
    pub fn open(path: &Path) -> Result<GoBinary, GoElfError> {
        Self::open_limited(path, path, ReadLimits::default())
    }

    /// Reads and analyses the executable at `path` (which may be
    /// `/proc/PID/exe`), named `name` in messages: opened once, refused
    /// before reading when over `limits.max_file`, then read a piece at a
    /// time (headers, the sections and ranges the analysis uses).
    pub fn open_limited(
        path: &Path,
        name: &Path,
        limits: ReadLimits,
    ) -> Result<GoBinary, GoElfError> {
        Self::open_in(Image::open(path, limits), name, limits)
    }

    /// [`Self::open_limited`] of a file already opened (`name` for
    /// messages): what the caller keeps of it ([`Self::take_file`]) is the
    /// very file analysed.
    pub fn of_file(
        file: std::fs::File,
        name: &Path,
        limits: ReadLimits,
    ) -> Result<GoBinary, GoElfError> {
        Self::open_in(Image::of_file(file, limits), name, limits)
    }

    fn open_in(
        image: Result<Image, OpenError>,
        name: &Path,
        limits: ReadLimits,
    ) -> Result<GoBinary, GoElfError> {
        let image = image.map_err(|e| match e {
            OpenError::Io(source) => GoElfError::Io {
                path: name.into(),
                source,
            },
            OpenError::NotRegular => GoElfError::NotRegular { path: name.into() },
            OpenError::TooLarge(size) => GoElfError::TooLarge {
                path: name.into(),
                size: Size(size),
                limit: Size(limits.max_file),
            },
        })?;
        Self::analyse(name, image, limits)
    }

    /// Analyses an executable already in memory (`path` is for messages).
    pub fn from_bytes(path: &Path, data: Vec<u8>) -> Result<GoBinary, GoElfError> {
        Self::analyse(
            path,
            Image::Bytes(data),
            ReadLimits::with_max_file(u64::MAX),
        )
    }

    fn analyse(path: &Path, image: Image, limits: ReadLimits) -> Result<GoBinary, GoElfError> {
        let head = image
            .read(0, image.len().min(64), 64)
            .map_err(|e| read_error(path, "the ELF header", e, limits))?;
        if !head.starts_with(b"\x7fELF") {
            return Err(GoElfError::NotElf { path: path.into() });
        }
        let machine = elf::elf_machine(&head);
        drop(head);
        let parts = match &image {
            Image::Bytes(data) => Parts::read(path, &image, &data[..], machine, limits)?,
            Image::File { file, .. } => {
                // object reads headers and symbols through this cache; the
                // big sections are read by `image` (pread on the same file).
                let cache = object::ReadCache::new(file);
                Parts::read(path, &image, &cache, machine, limits)?
            }
            Image::Closed => unreachable!("a fresh image is open"),
        };
        Ok(GoBinary {
            path: path.to_path_buf(),
            image,
            segments: parts.segments,
            version: parts.version,
            release: parts.release,
            maps: parts.maps,
            pie: parts.pie,
            stripped: parts.stripped,
            layout: parts.layout,
            layout_corrections: parts.layout_corrections,
            symbolizer: parts.symbolizer,
            max_piece: limits.max_piece,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The toolchain that built the binary, e.g. `go1.23.5`.
    pub fn go_version(&self) -> &GoVersion {
        &self.version
    }

    pub fn map_impl(&self) -> MapImpl {
        self.maps.imp
    }

    /// The binary's row in the release table.
    pub fn release(&self) -> &'static Release {
        self.release
    }

    /// Its map runtime: layout, probe candidates, crash paths.
    pub fn maps(&self) -> &'static MapRuntime {
        self.maps
    }

    /// ET_DYN: at run time, address = ELF vaddr + load bias (from `/proc/PID/maps`).
    pub fn is_pie(&self) -> bool {
        self.pie
    }

    /// No DWARF (`-ldflags=-s -w` or `strip`).
    pub fn is_stripped(&self) -> bool {
        self.stripped
    }

    pub fn layout(&self) -> &RuntimeLayout {
        &self.layout
    }

    /// Fields where this binary's DWARF disagreed with the verified table
    /// (the DWARF value is used). Empty for the releases verified here.
    pub fn layout_corrections(&self) -> &[String] {
        &self.layout_corrections
    }

    pub fn symbolizer(&self) -> &Symbolizer {
        &self.symbolizer
    }

    /// Link-time virtual address of the segment that starts at file offset 0
    /// (0x400000 for Go executables, PIE included).
    pub fn link_base(&self) -> u64 {
        self.segments.link_base()
    }

    /// Load bias of a running instance: `mapping_start` is the start of the
    /// executable's mapping at file offset 0 in `/proc/PID/maps`. Runtime
    /// address = ELF vaddr + bias. Zero for non-PIE executables.
    pub fn load_bias(&self, mapping_start: u64) -> u64 {
        if self.pie {
            mapping_start.wrapping_sub(self.link_base())
        } else {
            0
        }
    }

    /// Load bias of process `pid` running this binary, from `/proc/PID/maps`
    /// (the first mapping of `exe` at file offset 0). `None` if not mapped.
    pub fn load_bias_of(&self, pid: u32, exe: &Path) -> Option<u64> {
        if !self.pie {
            return Some(0);
        }
        elf::mapping_start(pid, exe).map(|start| self.load_bias(start))
    }

    /// File offset of a virtual address (what a uprobe attaches to).
    pub fn file_offset(&self, vaddr: u64) -> Option<u64> {
        self.segments.file_offset(vaddr)
    }

    /// Virtual addresses of every copy of `bytes` in the binary's loaded
    /// data (at most 64; read a chunk at a time).
    pub fn find_data(&self, bytes: &[u8]) -> Vec<u64> {
        self.segments
            .file_ranges()
            .flat_map(|range| self.image.find(range, bytes, 1, 64))
            .filter_map(|offset| self.segments.vaddr_of(offset))
            .collect()
    }

    /// Virtual address of a file offset inside a loadable segment.
    pub fn vaddr_of(&self, offset: u64) -> Option<u64> {
        self.segments.vaddr_of(offset)
    }

    /// The machine code of a function, read from the file (`None` after
    /// [`Self::close`], or for a function outside the file's segments or
    /// larger than the read limit).
    pub fn function_code(&self, f: &FuncInfo) -> Option<Cow<'_, [u8]>> {
        let range = self.segments.range(f.entry, f.end.checked_sub(f.entry)?)?;
        self.image
            .read(range.start, range.end - range.start, self.max_piece)
            .ok()
    }

    /// Lets the file go: what stays is what symbolization and reports use.
    /// [`Self::function_code`] and [`Self::find_data`] find nothing after.
    pub fn close(&mut self) {
        self.image = Image::Closed;
    }

    /// [`Self::close`], handing the opened file over (`None` for an
    /// analysis of bytes in memory).
    pub fn take_file(&mut self) -> Option<std::fs::File> {
        self.image.take_file()
    }

    /// Disassembles every map function the binary has and plans its probe.
    pub fn probe_plan(&self) -> Result<ProbePlan, GoElfError> {
        plan::build(self)
    }
}

impl std::fmt::Debug for GoBinary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GoBinary")
            .field("path", &self.path)
            .field("version", &self.version.raw)
            .field("map_impl", &self.maps.imp)
            .field("pie", &self.pie)
            .field("stripped", &self.stripped)
            .field("functions", &self.symbolizer.functions().len())
            .finish_non_exhaustive()
    }
}

/// Checks the map implementation implied by the version against the
/// runtime functions actually linked in: a mismatch is only when the other
/// implementation's signature functions are there and the expected one's
/// are not. `Err` carries what the functions indicate.
fn check_map_impl(sym: &Symbolizer, expected: &MapRuntime) -> Result<(), MapImpl> {
    let has = |maps: &MapRuntime| {
        sym.functions()
            .iter()
            .any(|f| maps.signature.iter().any(|p| f.name.starts_with(p)))
    };
    let other = match expected.imp {
        MapImpl::Classic => &release::SWISS,
        MapImpl::Swiss => &release::CLASSIC,
    };
    if !has(expected) && has(other) {
        return Err(other.imp);
    }
    Ok(())
}
