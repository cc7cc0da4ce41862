//! Reads struct member offsets from a Go binary's DWARF (`.debug_info`,
//! zlib-compressed by the Go linker) for the runtime layout.

use std::borrow::Cow;
use std::collections::HashMap;

use gimli::{AttributeValue, EndianSlice, LittleEndian};
use object::{Object, ObjectSection};

/// DWARF could not be read (the caller then falls back to the layout table).
#[derive(Debug, thiserror::Error)]
pub enum DwarfError {
    #[error("cannot decompress DWARF section {section}: {source}")]
    Section {
        section: &'static str,
        source: object::Error,
    },
    #[error("DWARF sections of {0} bytes (decompressed), over the {1}-byte read limit")]
    TooLarge(u64, u64),
    #[error("malformed DWARF: {0}")]
    Gimli(#[from] gimli::Error),
}

/// The sections read: entries, their names, and the line programs that
/// `gimli` parses with each unit (not ranges, locations or frames).
const NEEDED: [gimli::SectionId; 7] = [
    gimli::SectionId::DebugLine,
    gimli::SectionId::DebugAddr,
    gimli::SectionId::DebugInfo,
    gimli::SectionId::DebugAbbrev,
    gimli::SectionId::DebugStr,
    gimli::SectionId::DebugLineStr,
    gimli::SectionId::DebugStrOffsets,
];

/// Member offsets (`name -> offset`) of the named struct types, for those
/// present. Returns an empty map when the binary has no DWARF. The sections
/// read may total `max_bytes` once decompressed.
pub fn struct_members<'d, R: object::ReadRef<'d>>(
    file: &object::File<'d, R>,
    wanted: &[&str],
    max_bytes: u64,
) -> Result<HashMap<String, HashMap<String, u64>>, DwarfError> {
    let mut out: HashMap<String, HashMap<String, u64>> = HashMap::new();
    if file.section_by_name(".debug_info").is_none() {
        return Ok(out);
    }
    let total: u64 = NEEDED
        .iter()
        .filter_map(|id| file.section_by_name(id.name()))
        .map(|s| {
            s.compressed_file_range()
                .map_or(u64::MAX, |r| r.uncompressed_size.max(r.compressed_size))
        })
        .fold(0, u64::saturating_add);
    if total > max_bytes {
        return Err(DwarfError::TooLarge(total, max_bytes));
    }
    let load = |id: gimli::SectionId| -> Result<Cow<'_, [u8]>, DwarfError> {
        if !NEEDED.contains(&id) {
            return Ok(Cow::Borrowed(&[][..]));
        }
        match file.section_by_name(id.name()) {
            Some(s) => s.uncompressed_data().map_err(|source| DwarfError::Section {
                section: id.name(),
                source,
            }),
            None => Ok(Cow::Borrowed(&[][..])),
        }
    };
    let owned = gimli::DwarfSections::load(load)?;
    let dwarf = owned.borrow(|s| EndianSlice::new(s, LittleEndian));

    let mut units = dwarf.units();
    while let Some(header) = units.next()? {
        let unit = dwarf.unit(header)?;
        let mut entries = unit.entries();
        // Depth of the struct whose members are being collected, if any.
        let mut current: Option<(String, isize)> = None;
        let mut depth = 0isize;
        while let Some((delta, entry)) = entries.next_dfs()? {
            depth += delta;
            if current.as_ref().is_some_and(|(_, d)| depth <= *d) {
                current = None;
            }
            let name = match entry.attr_value(gimli::DW_AT_name)? {
                Some(v) => dwarf.attr_string(&unit, v)?.to_string_lossy().into_owned(),
                None => continue,
            };
            if entry.tag() == gimli::DW_TAG_structure_type {
                // A type may appear more than once; the first definition with members wins.
                if wanted.contains(&name.as_str()) && !out.contains_key(&name) {
                    current = Some((name, depth));
                }
                continue;
            }
            if entry.tag() != gimli::DW_TAG_member {
                continue;
            }
            let Some((ty, d)) = &current else { continue };
            if depth != d + 1 {
                continue;
            }
            let offset = match entry.attr_value(gimli::DW_AT_data_member_location)? {
                Some(AttributeValue::Udata(v)) => Some(v),
                Some(AttributeValue::Data1(v)) => Some(u64::from(v)),
                Some(AttributeValue::Data2(v)) => Some(u64::from(v)),
                Some(AttributeValue::Data4(v)) => Some(u64::from(v)),
                Some(AttributeValue::Data8(v)) => Some(v),
                Some(AttributeValue::Sdata(v)) => u64::try_from(v).ok(),
                _ => None,
            };
            if let Some(offset) = offset {
                out.entry(ty.clone()).or_default().insert(name, offset);
            }
        }
    }
    Ok(out)
}
