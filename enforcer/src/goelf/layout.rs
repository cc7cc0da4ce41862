//! Go runtime struct layouts the kernel side reads: the map header (where
//! the "a writer is inside" flag lives), the iterator (where its map pointer
//! is) and the goroutine (`g.goid`, the id users see in panics).
//!
//! Offsets come from the binary's DWARF (`runtime.hmap`, `runtime.hiter`,
//! `internal/runtime/maps.Map`, `internal/runtime/maps.Iter`, `runtime.g`,
//! `runtime.m`) when present; otherwise from the per-release table below,
//! which was read from the DWARF of go1.23.5 and go1.24.4 binaries built
//! here (tests cross-check the two).

use std::collections::HashMap;

use serde::Serialize;

use super::MapImpl;
use super::version::GoVersion;

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
}

impl RuntimeLayout {
    /// The verified table for a supported build; `None` for others. Classic
    /// `hmap` is the same in 1.23 and in 1.24 with `GOEXPERIMENT=noswissmap`
    /// (checked in the DWARF of both); `g` and `m` are the same in both.
    pub fn for_version(v: &GoVersion) -> Option<RuntimeLayout> {
        let map = match v.map_impl()? {
            MapImpl::Classic => MapLayout::Classic(ClassicMapLayout {
                count: 0,
                flags: 8,
                hash_writing: 4,
                b: 9,
                buckets: 16,
                oldbuckets: 24,
            }),
            MapImpl::Swiss => MapLayout::Swiss(SwissMapLayout {
                used: 0,
                dir_ptr: 16,
                dir_len: 24,
                writing: 34,
                clear_seq: 40,
            }),
        };
        Some(RuntimeLayout {
            source: LayoutSource::Table,
            g_goid: 160,
            g_m: 48,
            m_procid: 72,
            m_id: 232,
            map,
            iter_map: 24,
        })
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
    "runtime.hmap",
    "runtime.hiter",
    "internal/runtime/maps.Map",
    "internal/runtime/maps.Iter",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_covers_supported_versions_only() {
        let l23 = RuntimeLayout::for_version(&GoVersion::parse("go1.23.5").expect("v"))
            .expect("1.23 table");
        assert_eq!(l23.map.writing_flag(), (8, 4));
        let l24 = RuntimeLayout::for_version(&GoVersion::parse("go1.24.4").expect("v"))
            .expect("1.24 table");
        assert_eq!(l24.map.writing_flag(), (34, 1));
        assert!(RuntimeLayout::for_version(&GoVersion::parse("go1.25.0").expect("v")).is_none());
    }

    #[test]
    fn dwarf_values_override_and_are_reported() {
        let mut l =
            RuntimeLayout::for_version(&GoVersion::parse("go1.23.1").expect("v")).expect("table");
        let mut g = HashMap::new();
        g.insert("goid".to_string(), 152u64);
        let structs = HashMap::from([("runtime.g".to_string(), g)]);
        let changed = l.apply_dwarf(&structs);
        assert_eq!(changed, vec!["runtime.g.goid: 160 -> 152".to_string()]);
        assert_eq!((l.g_goid, l.source), (152, LayoutSource::DwarfAndTable));
    }
}
