//! ELF address bookkeeping for a Go executable: loadable segments (virtual
//! address ↔ file offset, which is what uprobes attach to), the link base
//! and load bias of PIE executables, and the raw `e_machine`.

use std::path::Path;

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
    pub fn of(file: &object::File<'_>) -> Segments {
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

    /// `len` bytes at `vaddr`, if they are all in one segment's file data.
    pub fn read<'a>(&self, data: &'a [u8], vaddr: u64, len: usize) -> Option<&'a [u8]> {
        let seg = self.containing(vaddr)?;
        let start = usize::try_from(vaddr - seg.vaddr + seg.file_offset).ok()?;
        let seg_end = usize::try_from(seg.file_offset + seg.file_size).ok()?;
        let end = start.checked_add(len).filter(|e| *e <= seg_end)?;
        data.get(start..end)
    }

    /// The bytes from `vaddr` to the end of its segment's file data.
    pub fn tail<'a>(&self, data: &'a [u8], vaddr: u64) -> Option<&'a [u8]> {
        let seg = self.containing(vaddr)?;
        self.read(
            data,
            vaddr,
            usize::try_from(seg.vaddr + seg.file_size - vaddr).ok()?,
        )
    }

    /// Each segment's file bytes.
    pub fn contents<'a>(&'a self, data: &'a [u8]) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.0.iter().filter_map(move |s| {
            let start = usize::try_from(s.file_offset).ok()?;
            data.get(start..start.checked_add(usize::try_from(s.file_size).ok()?)?)
        })
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
