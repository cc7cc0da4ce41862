//! ELF address bookkeeping for a Go executable: loadable segments (virtual
//! address ↔ file offset, which is what uprobes attach to), the link base
//! and load bias of PIE executables, and the raw `e_machine`.

use std::{ops::Range, path::Path};

use object::{Object, ObjectSegment};

/// A loadable segment: maps virtual addresses to file offsets.
#[derive(Debug, Clone, Copy)]
struct Segment {
    vaddr: u64,
    file_offset: u64,
    file_size: u64,
}

/// The `PT_LOAD` segments of an executable.
#[derive(Debug, Clone)]
pub(super) struct Segments(Vec<Segment>);

impl Segments {
    pub fn of<'d, R: object::ReadRef<'d>>(file: &object::File<'d, R>) -> Segments {
        Segments(
            file.segments()
                .map(|s| {
                    let (file_offset, file_size) = s.file_range();
                    Segment {
                        vaddr: s.address(),
                        file_offset,
                        file_size,
                    }
                })
                .collect(),
        )
    }

    fn containing(&self, vaddr: u64) -> Option<&Segment> {
        self.0
            .iter()
            .find(|s| vaddr >= s.vaddr && vaddr - s.vaddr < s.file_size)
    }

    /// File offset of a virtual address backed by file data.
    pub fn file_offset(&self, vaddr: u64) -> Option<u64> {
        self.containing(vaddr)
            .map(|s| vaddr - s.vaddr + s.file_offset)
    }

    /// Virtual address of a file offset inside a loadable segment.
    pub fn vaddr_of(&self, offset: u64) -> Option<u64> {
        self.0
            .iter()
            .find(|s| offset >= s.file_offset && offset - s.file_offset < s.file_size)
            .map(|s| offset - s.file_offset + s.vaddr)
    }

    /// File range of the `len` bytes at `vaddr`, if they are all in one
    /// segment's file data.
    pub fn range(&self, vaddr: u64, len: u64) -> Option<Range<u64>> {
        let seg = self.containing(vaddr)?;
        let start = vaddr - seg.vaddr + seg.file_offset;
        let end = start
            .checked_add(len)
            .filter(|e| *e <= seg.file_offset + seg.file_size)?;
        Some(start..end)
    }

    /// File range from `vaddr` to the end of its segment's file data.
    pub fn tail(&self, vaddr: u64) -> Option<Range<u64>> {
        let seg = self.containing(vaddr)?;
        self.range(vaddr, seg.vaddr + seg.file_size - vaddr)
    }

    /// File range from file offset `offset` to the end of its segment.
    pub fn tail_of_offset(&self, offset: u64) -> Option<Range<u64>> {
        self.tail(self.vaddr_of(offset)?)
    }

    /// Each segment's file range.
    pub fn file_ranges(&self) -> impl Iterator<Item = Range<u64>> + '_ {
        self.0
            .iter()
            .map(|s| s.file_offset..s.file_offset.saturating_add(s.file_size))
    }

    /// Link-time address of the segment at file offset 0 (0x400000 for Go
    /// executables, PIE included).
    pub fn link_base(&self) -> u64 {
        self.0
            .iter()
            .filter(|s| s.file_offset == 0)
            .map(|s| s.vaddr)
            .min()
            .unwrap_or(0)
    }
}

/// Start of `exe`'s mapping at file offset 0 in `/proc/PID/maps`.
pub(super) fn mapping_start(pid: u32, exe: &Path) -> Option<u64> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
    let exe = std::fs::canonicalize(exe).ok()?;
    maps.lines().find_map(|line| {
        let mut f = line.split_whitespace();
        let range = f.next()?;
        let offset = f.nth(1)?;
        let file = f.nth(2)?;
        (Path::new(file) == exe && u64::from_str_radix(offset, 16).ok()? == 0)
            .then(|| u64::from_str_radix(range.split('-').next()?, 16).ok())
            .flatten()
    })
}

/// `e_machine` of an ELF header, read by hand so that files of machines the
/// parser does not know still get a precise error.
pub(super) fn elf_machine(data: &[u8]) -> Option<u16> {
    let b = data.get(18..20)?;
    Some(if data.get(5) == Some(&2) {
        u16::from_be_bytes([b[0], b[1]])
    } else {
        u16::from_le_bytes([b[0], b[1]])
    })
}

/// Checks, before `object` parses the file (which reads the section and
/// program header tables and the symbol tables whole), that those are of a
/// sane size: a forged header must not make the parser read a gigabyte.
/// `Err` names what is too large and its size.
pub(super) fn preflight<'d, R: object::ReadRef<'d>>(
    data: R,
    max_piece: u64,
) -> Result<(), (&'static str, u64)> {
    use object::elf::{FileHeader32, FileHeader64};
    match data
        .read_bytes_at(4, 1)
        .ok()
        .and_then(|b| b.first().copied())
    {
        Some(object::elf::ELFCLASS64) => {
            preflight_class::<FileHeader64<object::Endianness>, R>(data, max_piece)
        }
        Some(object::elf::ELFCLASS32) => {
            preflight_class::<FileHeader32<object::Endianness>, R>(data, max_piece)
        }
        _ => Ok(()), // object reports it
    }
}

/// At most this many section or program headers (ELF's own limit without
/// extended numbering is 65280).
const MAX_HEADERS: u64 = 1 << 16;

fn preflight_class<'d, Elf, R>(data: R, max_piece: u64) -> Result<(), (&'static str, u64)>
where
    Elf: object::read::elf::FileHeader<Endian = object::Endianness>,
    R: object::ReadRef<'d>,
{
    use object::read::elf::SectionHeader;
    let Ok(header) = Elf::parse(data) else {
        return Ok(()); // object reports it
    };
    let Ok(endian) = header.endian() else {
        return Ok(());
    };
    let phnum = header.phnum(endian, data).map_or(0, |n| n as u64);
    if phnum > MAX_HEADERS {
        return Err((
            "program header table",
            phnum * u64::from(header.e_phentsize(endian)),
        ));
    }
    let shnum = header.shnum(endian, data).map_or(0, |n| n as u64);
    if shnum > MAX_HEADERS {
        return Err((
            "section header table",
            shnum * u64::from(header.e_shentsize(endian)),
        ));
    }
    let Ok(sections) = header.sections(endian, data) else {
        return Ok(());
    };
    for s in sections.iter() {
        let kind = s.sh_type(endian);
        let size: u64 = s.sh_size(endian).into();
        if matches!(kind, object::elf::SHT_SYMTAB | object::elf::SHT_DYNSYM) && size > max_piece {
            return Err(("symbol table", size));
        }
    }
    Ok(())
}
