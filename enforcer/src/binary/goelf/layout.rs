//! Go runtime struct layouts the kernel side reads: the map header (where
//! the "a writer is inside" flag lives), the iterator (where its map pointer
//! is) and the goroutine (`g.goid`, the id users see in panics).
//!
//! Offsets come from the binary's DWARF (`runtime.hmap`, `runtime.hiter`,
//! `internal/runtime/maps.Map`, `internal/runtime/maps.Iter`, `runtime.g`,
//! `runtime.m`) when present; otherwise from the release table
//! ([`super::release`]), which was read from the DWARF of binaries each
//! release built here (tests cross-check the two).

use std::collections::HashMap;

use serde::Serialize;

use super::release::{MapRuntime, Release};

/// Where the offsets in a [`RuntimeLayout`] came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LayoutSource {
    /// Every field read from the binary's DWARF.
    Dwarf,
    /// Some fields from DWARF, the rest (types the program never uses) from the table.
    DwarfAndTable,
    /// No DWARF (stripped): the verified per-release table.
    Table,
}

impl std::fmt::Display for LayoutSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LayoutSource::Dwarf => "DWARF",
            LayoutSource::DwarfAndTable => "DWARF and the verified table",
            LayoutSource::Table => "the verified table (no DWARF)",
        })
    }
}

/// Go ≤ 1.23 `runtime.hmap` (and `runtime.hiter`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ClassicMapLayout {
    pub count: u64,
    pub flags: u64,
    /// `hashWriting`: set in `flags` while a writer is inside the map.
    pub hash_writing: u8,
    pub b: u64,
    pub buckets: u64,
    pub oldbuckets: u64,
}

/// Go ≥ 1.24 `internal/runtime/maps.Map` (swiss tables).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SwissMapLayout {
    pub used: u64,
    pub dir_ptr: u64,
    pub dir_len: u64,
    /// `writing` is toggled with `^= 1` by every writer.
    pub writing: u64,
    pub clear_seq: u64,
}

/// Map header layout by implementation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "impl", rename_all = "snake_case")]
pub enum MapLayout {
    Classic(ClassicMapLayout),
    Swiss(SwissMapLayout),
}

impl MapLayout {
    /// `(offset, mask)` of the byte whose masked bits are non-zero while a
    /// writer is inside the map (classic: `flags & hashWriting`; swiss:
    /// `writing`, toggled so its low bit is odd while one writer is in).
    pub fn writing_flag(&self) -> (u64, u8) {
        match self {
            MapLayout::Classic(c) => (c.flags, c.hash_writing),
            MapLayout::Swiss(s) => (s.writing, 1),
        }
    }

    /// Offset of the element count (`hmap.count` / `Map.used`).
    pub fn count_offset(&self) -> u64 {
        match self {
            MapLayout::Classic(c) => c.count,
            MapLayout::Swiss(s) => s.used,
        }
    }
}

/// All runtime offsets of one binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RuntimeLayout {
    pub source: LayoutSource,
    /// `runtime.g.goid`.
    pub g_goid: u64,
    /// `runtime.g.m`.
    pub g_m: u64,
    /// `runtime.m.procid` (the OS thread id).
    pub m_procid: u64,
    /// `runtime.m.id`.
    pub m_id: u64,
    pub map: MapLayout,
    /// Offset of the map pointer in the iterator (`hiter.h` / `Iter.m`).
    pub iter_map: u64,
    /// `runtime.moduledata.text` (user space only: the text start of a
    /// binary without section headers).
    pub moduledata_text: u64,
    /// `runtime.moduledata.gofunc` (user space only: inline trees of a
    /// binary without symbols).
    pub moduledata_gofunc: u64,
}

impl RuntimeLayout {
    /// The verified table's offsets for a build of `release` with `maps`.
    pub fn from_table(release: &Release, maps: &MapRuntime) -> RuntimeLayout {
        let g = release.goroutine;
        RuntimeLayout {
            source: LayoutSource::Table,
            g_goid: g.g_goid,
            g_m: g.g_m,
            m_procid: g.m_procid,
            m_id: g.m_id,
            map: maps.layout,
            iter_map: maps.iter_map,
            moduledata_text: release.moduledata.text,
            moduledata_gofunc: release.moduledata.gofunc,
        }
    }

    /// Replaces table values with those found in DWARF (`structs` maps a Go
    /// type name to its member offsets). Returns the fields that disagreed
    /// with the table, as `type.field: table -> dwarf`.
    pub fn apply_dwarf(&mut self, structs: &HashMap<String, HashMap<String, u64>>) -> Vec<String> {
        let mut found = 0;
        let mut missing = 0;
        let mut changed = Vec::new();
        let mut set = |ty: &str, field: &str, slot: &mut u64| match structs
            .get(ty)
            .and_then(|m| m.get(field))
        {
            Some(v) => {
                found += 1;
                if *v != *slot {
                    changed.push(format!("{ty}.{field}: {} -> {v}", *slot));
                    *slot = *v;
                }
            }
            None => missing += 1,
        };
        set("runtime.g", "goid", &mut self.g_goid);
        set("runtime.g", "m", &mut self.g_m);
        set("runtime.m", "procid", &mut self.m_procid);
        set("runtime.m", "id", &mut self.m_id);
        set("runtime.moduledata", "text", &mut self.moduledata_text);
        set("runtime.moduledata", "gofunc", &mut self.moduledata_gofunc);
        match &mut self.map {
            MapLayout::Classic(c) => {
                set("runtime.hmap", "count", &mut c.count);
                set("runtime.hmap", "flags", &mut c.flags);
                set("runtime.hmap", "B", &mut c.b);
                set("runtime.hmap", "buckets", &mut c.buckets);
                set("runtime.hmap", "oldbuckets", &mut c.oldbuckets);
                set("runtime.hiter", "h", &mut self.iter_map);
            }
            MapLayout::Swiss(s) => {
                let m = "internal/runtime/maps.Map";
                set(m, "used", &mut s.used);
                set(m, "dirPtr", &mut s.dir_ptr);
                set(m, "dirLen", &mut s.dir_len);
                set(m, "writing", &mut s.writing);
                set(m, "clearSeq", &mut s.clear_seq);
                set("internal/runtime/maps.Iter", "m", &mut self.iter_map);
            }
        }
        self.source = match (found, missing) {
            (0, _) => LayoutSource::Table,
            (_, 0) => LayoutSource::Dwarf,
            _ => LayoutSource::DwarfAndTable,
        };
        changed
    }
}

/// Go type names whose member offsets [`RuntimeLayout::apply_dwarf`] uses.
pub const DWARF_STRUCTS: &[&str] = &[
    "runtime.g",
    "runtime.m",
    "runtime.moduledata",
    "runtime.hmap",
    "runtime.hiter",
    "internal/runtime/maps.Map",
    "internal/runtime/maps.Iter",
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::binary::goelf::release;
    use crate::binary::goelf::version::GoVersion;

    fn table(raw: &str) -> RuntimeLayout {
        let (r, m) = release::lookup(&GoVersion::parse(raw).expect("v")).expect("supported");
        RuntimeLayout::from_table(r, m)
    }

    #[test]
    fn table_gives_each_release_its_offsets() {
        assert_eq!(table("go1.23.5").map.writing_flag(), (8, 4));
        assert_eq!(table("go1.24.4").map.writing_flag(), (34, 1));
        assert_eq!(table("go1.25.1 X:noswissmap").map.writing_flag(), (8, 4));
        assert_eq!(table("go1.24.4").g_goid, 160);
        assert_eq!(table("go1.27.4").g_goid, 152);
    }

    #[test]
    fn dwarf_values_override_and_are_reported() {
        let mut l = table("go1.23.1");
        let mut g = HashMap::new();
        g.insert("goid".to_string(), 152u64);
        let structs = HashMap::from([("runtime.g".to_string(), g)]);
        let changed = l.apply_dwarf(&structs);
        assert_eq!(changed, vec!["runtime.g.goid: 160 -> 152".to_string()]);
        assert_eq!((l.g_goid, l.source), (152, LayoutSource::DwarfAndTable));
    }
}
