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

pub mod disasm;
pub mod dwarf;
mod elf;
pub mod layout;
pub mod pclntab;
pub mod plan;
pub mod release;
pub mod version;

use std::path::{Path, PathBuf};

use object::{Object, ObjectSection, ObjectSymbol};
use serde::Serialize;

use elf::Segments;

pub use disasm::StepHandling;
pub use layout::{LayoutSource, MapLayout, RuntimeLayout};
pub use pclntab::{Frame, FuncInfo, PclntabError, Symbolizer};
pub use plan::{ArgLoc, GoReg, LocatedMessage, MapOp, PlannedBackstop, PlannedProbe, ProbePlan};
pub use release::{BackstopVia, MapRuntime, MessageClass, Release};
pub use version::GoVersion;

/// Why a binary cannot be analysed.
#[derive(Debug, thiserror::Error)]
pub enum GoElfError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
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
    data: Vec<u8>,
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
    /// Reads and analyses `path`.
    pub fn open(path: &Path) -> Result<GoBinary, GoElfError> {
        let data = std::fs::read(path).map_err(|source| GoElfError::Io {
            path: path.into(),
            source,
        })?;
        Self::from_bytes(path, data)
    }

    /// Analyses an executable already in memory (`path` is for messages).
    pub fn from_bytes(path: &Path, data: Vec<u8>) -> Result<GoBinary, GoElfError> {
        let path_buf = || path.to_path_buf();
        if !data.starts_with(b"\x7fELF") {
            return Err(GoElfError::NotElf { path: path_buf() });
        }
        let file = object::File::parse(&*data).map_err(|source| {
            // object refuses ELF files of machines it cannot describe; report the machine.
            match elf::elf_machine(&data) {
                Some(m) if m != object::elf::EM_X86_64 => GoElfError::NotX86_64 {
                    path: path_buf(),
                    arch: format!("e_machine {m}"),
                },
                _ => GoElfError::BadElf {
                    path: path_buf(),
                    source,
                },
            }
        })?;
        if file.architecture() != object::Architecture::X86_64 {
            return Err(GoElfError::NotX86_64 {
                path: path_buf(),
                arch: format!("{:?}", file.architecture()),
            });
        }
        let segments = Segments::of(&file);
        let read_vaddr =
            |vaddr: u64, len: usize| segments.read(&data, vaddr, len).map(<[u8]>::to_vec);

        // Version (works stripped: the section, else the magic).
        let buildinfo_section = file
            .section_by_name(".go.buildinfo")
            .and_then(|s| s.data().ok());
        let pcln_section = [".gopclntab", ".data.rel.ro.gopclntab"]
            .iter()
            .find_map(|n| file.section_by_name(n))
            .and_then(|s| s.data().ok());
        let pcln = pcln_section.or_else(|| pclntab::find_by_magic(&data).map(|at| &data[at..]));
        let Some(blob) = version::find_buildinfo(buildinfo_section, &data) else {
            return Err(match pcln {
                // A pclntab without build info: a Go binary too old to say its version.
                Some(_) => GoElfError::Version {
                    path: path_buf(),
                    source: version::VersionError::NoBuildInfo,
                },
                None => GoElfError::NotGo { path: path_buf() },
            });
        };
        let raw =
            version::read_version(blob, read_vaddr).map_err(|source| GoElfError::Version {
                path: path_buf(),
                source,
            })?;
        let version = GoVersion::parse(&raw).map_err(|source| GoElfError::Version {
            path: path_buf(),
            source,
        })?;
        let (release, maps) = release::lookup(&version).map_err(|why| match why {
            release::Unsupported::Release => GoElfError::UnsupportedGoVersion {
                path: path_buf(),
                found: version.raw.clone(),
                supported: release::supported_list(),
            },
            release::Unsupported::Experiment(experiment) => GoElfError::UnsupportedExperiment {
                path: path_buf(),
                found: version.raw.clone(),
                experiment,
            },
        })?;
        let mut layout = RuntimeLayout::from_table(release, maps);
        // DWARF is optional: a stripped binary uses the table alone.
        let stripped = file.section_by_name(".debug_info").is_none();
        let layout_corrections = match dwarf::struct_members(&file, layout::DWARF_STRUCTS) {
            Ok(structs) => layout.apply_dwarf(&structs),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "unreadable DWARF, using the layout table");
                Vec::new()
            }
        };
        for c in &layout_corrections {
            tracing::warn!(path = %path.display(), correction = %c, "DWARF layout differs from the verified table");
        }

        let pcln = pcln.ok_or_else(|| GoElfError::NoPclntab { path: path_buf() })?;
        let pclntab_error = |source| GoElfError::Pclntab {
            path: path_buf(),
            source,
        };
        let text_hint = file.section_by_name(".text").map(|s| s.address());
        let mut symbolizer = Symbolizer::parse(pcln, text_hint).map_err(pclntab_error)?;
        let pcln_file_offset = (pcln.as_ptr() as usize).wrapping_sub(data.as_ptr() as usize) as u64;
        let moduledata = segments
            .vaddr_of(pcln_file_offset)
            .and_then(|vaddr| symbolizer.find_moduledata(vaddr, segments.contents(&data)));
        let md_word = |offset: u64| {
            let offset = usize::try_from(offset).ok()?;
            let bytes = moduledata?.get(offset..offset + 8)?;
            Some(u64::from_le_bytes(bytes.try_into().ok()?))
        };
        if symbolizer.text_start() == 0 {
            // No textStart in the pclntab header and no section headers:
            // the text start is the module data's.
            let text = md_word(layout.moduledata_text).ok_or_else(|| GoElfError::Pclntab {
                path: path_buf(),
                source: PclntabError::Corrupt("no text start (no .text section, no module data)"),
            })?;
            symbolizer = Symbolizer::parse(pcln, Some(text)).map_err(pclntab_error)?;
        }
        check_map_impl(&symbolizer, maps).map_err(|found| GoElfError::MapImplMismatch {
            path: path_buf(),
            version: version.raw.clone(),
            expected: maps.imp,
            found,
        })?;
        // Inline trees live in go:func.*: from the symbol table, else via moduledata.
        let gofunc = file
            .symbols()
            .find(|s| s.name() == Ok("go:func.*"))
            .map(|s| s.address())
            .or_else(|| md_word(layout.moduledata_gofunc));
        match gofunc.and_then(|g| Some((g, segments.tail(&data, g)?))) {
            Some((vaddr, bytes)) => symbolizer.set_gofunc(vaddr, bytes.to_vec()),
            None => {
                tracing::warn!(path = %path.display(), "go:func.* not found: inlined calls are not expanded")
            }
        }

        let pie = file.kind() == object::ObjectKind::Dynamic;
        drop(file);
        Ok(GoBinary {
            path: path.to_path_buf(),
            data,
            segments,
            version,
            release,
            maps,
            pie,
            stripped,
            layout,
            layout_corrections,
            symbolizer,
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
    /// data.
    pub fn find_data(&self, bytes: &[u8]) -> Vec<u64> {
        memchr::memmem::find_iter(&self.data, bytes)
            .filter_map(|offset| self.segments.vaddr_of(offset as u64))
            .collect()
    }

    /// Virtual address of a file offset inside a loadable segment.
    pub fn vaddr_of(&self, offset: u64) -> Option<u64> {
        self.segments.vaddr_of(offset)
    }

    /// The machine code of a function, from the file.
    pub fn function_code(&self, f: &FuncInfo) -> Option<&[u8]> {
        self.segments
            .read(&self.data, f.entry, usize::try_from(f.end - f.entry).ok()?)
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
