//! The analysis of one executable, reading only what it uses: the ELF
//! headers and symbol table (through `object`), then `.go.buildinfo`,
//! `.gopclntab`, the module data record, `go:func.*` and the DWARF struct
//! descriptions, each one bounded read; when section headers are gone, the
//! magics are searched a chunk at a time in the loadable segments.

use std::{borrow::Cow, path::Path};

use object::{Object, ObjectSection, ObjectSymbol, ReadRef};

use super::{
    GoElfError, MapRuntime, PclntabError, Release, RuntimeLayout, Symbolizer, check_map_impl,
    dwarf,
    elf::{self, Segments},
    layout, pclntab, release,
    source::{Image, ReadError, ReadLimits, Size},
    version::{self, GoVersion},
};

/// Bytes read from the module data record (its fields used are in the
/// first few hundred).
const MODULEDATA_READ: u64 = 4096;
/// Bytes read from the build-info blob (header, then the version string).
const BUILDINFO_READ: u64 = 64 << 10;

/// A section's file offset and bytes.
type Located<'a> = (u64, Cow<'a, [u8]>);

/// What the analysis keeps.
pub(super) struct Parts {
    pub segments: Segments,
    pub version: GoVersion,
    pub release: &'static Release,
    pub maps: &'static MapRuntime,
    pub pie: bool,
    pub stripped: bool,
    pub layout: RuntimeLayout,
    pub layout_corrections: Vec<String>,
    pub symbolizer: Symbolizer,
}

/// A failed read of `what` as the error the caller reports.
pub(super) fn read_error(path: &Path, what: &str, e: ReadError, limits: ReadLimits) -> GoElfError {
    match e {
        ReadError::TooLarge(size) => GoElfError::PieceTooLarge {
            path: path.into(),
            what: what.into(),
            size: Size(size),
            limit: Size(limits.max_piece),
        },
        ReadError::Range => GoElfError::OutsideFile {
            path: path.into(),
            what: what.into(),
        },
        ReadError::Io(source) => GoElfError::Io {
            path: path.into(),
            source,
        },
    }
}

/// File offset of the first `align`ed copy of `magic` in a loadable segment.
fn find_in_segments(image: &Image, segments: &Segments, magic: &[u8], align: u64) -> Option<u64> {
    segments
        .file_ranges()
        .find_map(|range| image.find(range, magic, align, 1).first().copied())
}

impl Parts {
    /// Analyses the executable `image` (`data`: the same bytes as `object`
    /// reads them; `machine`: its raw `e_machine`).
    pub fn read<'d, R: ReadRef<'d>>(
        path: &Path,
        image: &Image,
        data: R,
        machine: Option<u16>,
        limits: ReadLimits,
    ) -> Result<Parts, GoElfError> {
        let path_buf = || path.to_path_buf();
        elf::preflight(data, limits.max_piece).map_err(|(what, size)| {
            GoElfError::PieceTooLarge {
                path: path_buf(),
                what: what.into(),
                size: Size(size),
                limit: Size(limits.max_piece),
            }
        })?;
        let file = object::File::parse(data).map_err(|source| {
            // object refuses ELF files of machines it cannot describe; report the machine.
            match machine {
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
        let read = |what: &str, offset: u64, len: u64| {
            image
                .read(offset, len, limits.max_piece)
                .map_err(|e| read_error(path, what, e, limits))
        };
        // A named section's file offset and bytes; none if absent or
        // outside the file (the magic search then looks for it).
        let section = |names: &[&str]| -> Result<Option<Located<'_>>, GoElfError> {
            let Some((name, (offset, size))) = names
                .iter()
                .find_map(|n| Some((*n, file.section_by_name(n)?.file_range()?)))
            else {
                return Ok(None);
            };
            match image.read(offset, size, limits.max_piece) {
                Ok(bytes) => Ok(Some((offset, bytes))),
                Err(ReadError::Range) => Ok(None),
                Err(e) => Err(read_error(path, &format!("section {name}"), e, limits)),
            }
        };

        // Version (works stripped: the section, else the magic).
        let buildinfo = match section(&[".go.buildinfo"])? {
            Some((_, bytes)) if bytes.starts_with(version::BUILDINFO_MAGIC) => Some(bytes),
            _ => match find_in_segments(image, &segments, version::BUILDINFO_MAGIC, 16) {
                Some(at) => {
                    let tail = segments.tail_of_offset(at).unwrap_or(at..at);
                    Some(read(
                        "the Go build info",
                        at,
                        (tail.end - at).min(BUILDINFO_READ),
                    )?)
                }
                None => None,
            },
        };
        let pcln = match section(&[".gopclntab", ".data.rel.ro.gopclntab"])? {
            Some(found) => Some(found),
            None => match find_in_segments(image, &segments, &pclntab::HEADER_MAGIC, 8) {
                Some(at) => {
                    let tail = segments.tail_of_offset(at).unwrap_or(at..at);
                    Some((
                        at,
                        read("the pclntab (found by its magic)", at, tail.end - at)?,
                    ))
                }
                None => None,
            },
        };
        let Some(blob) = buildinfo else {
            return Err(match pcln {
                // A pclntab without build info: a Go binary too old to say its version.
                Some(_) => GoElfError::Version {
                    path: path_buf(),
                    source: version::VersionError::NoBuildInfo,
                },
                None => GoElfError::NotGo { path: path_buf() },
            });
        };
        let read_vaddr = |vaddr: u64, len: usize| {
            let range = segments.range(vaddr, len as u64)?;
            let bytes = image.read(range.start, len as u64, BUILDINFO_READ).ok()?;
            Some(bytes.into_owned())
        };
        let raw =
            version::read_version(&blob, read_vaddr).map_err(|source| GoElfError::Version {
                path: path_buf(),
                source,
            })?;
        drop(blob);
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
        let layout_corrections = match dwarf::struct_members(
            &file,
            layout::DWARF_STRUCTS,
            limits.max_piece,
        ) {
            Ok(structs) => layout.apply_dwarf(&structs),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "unreadable DWARF, using the layout table");
                Vec::new()
            }
        };
        for c in &layout_corrections {
            tracing::warn!(path = %path.display(), correction = %c, "DWARF layout differs from the verified table");
        }

        let (pcln_offset, pcln) = pcln.ok_or_else(|| GoElfError::NoPclntab { path: path_buf() })?;
        let pclntab_error = |source| GoElfError::Pclntab {
            path: path_buf(),
            source,
        };
        let text_hint = file.section_by_name(".text").map(|s| s.address());
        let mut symbolizer = Symbolizer::parse(pcln, text_hint).map_err(pclntab_error)?;
        let moduledata = segments.vaddr_of(pcln_offset).and_then(|vaddr| {
            let magic = symbolizer.moduledata_magic(vaddr);
            let at = find_in_segments(image, &segments, &magic, 8)?;
            let tail = segments.tail_of_offset(at)?;
            image
                .read(at, (tail.end - at).min(MODULEDATA_READ), MODULEDATA_READ)
                .ok()
        });
        let md_word = |offset: u64| {
            let offset = usize::try_from(offset).ok()?;
            let bytes = moduledata.as_ref()?.get(offset..offset + 8)?;
            Some(u64::from_le_bytes(bytes.try_into().ok()?))
        };
        if symbolizer.text_start() == 0 {
            // No textStart in the pclntab header and no section headers:
            // the text start is the module data's.
            let text = md_word(layout.moduledata_text).ok_or_else(|| GoElfError::Pclntab {
                path: path_buf(),
                source: PclntabError::Corrupt("no text start (no .text section, no module data)"),
            })?;
            symbolizer = symbolizer.with_text_start(text).map_err(pclntab_error)?;
        }
        check_map_impl(&symbolizer, maps).map_err(|found| GoElfError::MapImplMismatch {
            path: path_buf(),
            version: version.raw.clone(),
            expected: maps.imp,
            found,
        })?;
        // Inline trees live in go:func.*: from the symbol table, else via
        // moduledata. Its bytes run to the end of its segment, or to the
        // pclntab when that follows it in the segment.
        let gofunc = file
            .symbols()
            .find(|s| s.name() == Ok("go:func.*"))
            .map(|s| s.address())
            .or_else(|| md_word(layout.moduledata_gofunc));
        let gofunc_bytes = gofunc.and_then(|vaddr| {
            let mut range = segments.tail(vaddr)?;
            if range.contains(&pcln_offset) && pcln_offset > range.start {
                range.end = pcln_offset;
            }
            match image.read(range.start, range.end - range.start, limits.max_piece) {
                Ok(bytes) => Some((vaddr, bytes.into_owned())),
                Err(e) => {
                    let e = read_error(path, "go:func.*", e, limits);
                    tracing::warn!(error = %e, "go:func.* unreadable");
                    None
                }
            }
        });
        match gofunc_bytes {
            Some((vaddr, bytes)) => symbolizer.set_gofunc(vaddr, bytes),
            None => {
                tracing::warn!(path = %path.display(), "go:func.* not found: inlined calls are not expanded")
            }
        }

        let pie = file.kind() == object::ObjectKind::Dynamic;
        Ok(Parts {
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
}
