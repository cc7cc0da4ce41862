//! The Go releases mapguard supports: one row per release in [`RELEASES`],
//! and everything a row names — the map implementation(s) its runtime can
//! be built with, the runtime struct offsets the kernel reads, the map
//! functions to probe, and the crash paths (`runtime.fatal`,
//! `runtime.throw`) with the map-race messages they print.
//!
//! Supporting a new Go release is one row here (plus its toolchain in
//! `tests/go/toolchains` and `.ci/install-deps.sh`). Every value was read
//! from the release's runtime source (`golang-1.2x-src`) and checked against
//! the DWARF of binaries it built (`enforcer/tests/scan.rs` compares the
//! table with DWARF for every release in the table). A binary of a release
//! not listed is refused, never guessed at.

use std::fmt::Write as _;

use super::MapImpl;
use super::layout::{ClassicMapLayout, MapLayout, SwissMapLayout};
use mapguard_api::vocab::{CrashMessage, Detector, Op};

use super::plan::MapArg;
use super::version::GoVersion;

/// One supported Go release (every patch release and release candidate of
/// `go{major}.{minor}`).
#[derive(Debug)]
pub struct Release {
    pub major: u32,
    pub minor: u32,
    /// The maps the runtime has without a `GOEXPERIMENT`.
    pub maps: &'static MapRuntime,
    /// Map experiments the toolchain accepts: with `Some`, the build uses
    /// those maps instead; with `None`, such a build is refused (its maps
    /// were an unfinished prototype).
    pub map_experiments: &'static [(&'static str, Option<&'static MapRuntime>)],
    /// `runtime.g` and `runtime.m` offsets.
    pub goroutine: GoroutineLayout,
    /// `runtime.moduledata` offsets (symbolization of stripped binaries).
    pub moduledata: ModuledataLayout,
}

/// Where `runtime.moduledata` keeps what symbolization needs when a binary
/// has no symbols: the text start (which the pclntab header stopped
/// recording in Go 1.26) and `go:func.*` (inline trees).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModuledataLayout {
    /// `moduledata.text`.
    pub text: u64,
    /// `moduledata.gofunc`.
    pub gofunc: u64,
}

/// Where the kernel finds a goroutine's id and thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GoroutineLayout {
    /// `runtime.g.goid`.
    pub g_goid: u64,
    /// `runtime.g.m`.
    pub g_m: u64,
    /// `runtime.m.procid` (the OS thread id).
    pub m_procid: u64,
    /// `runtime.m.id`.
    pub m_id: u64,
}

/// One map implementation as some releases ship it.
#[derive(Debug)]
pub struct MapRuntime {
    pub imp: MapImpl,
    pub layout: MapLayout,
    /// Offset of the map pointer in the iterator (`hiter.h` / `maps.Iter.m`).
    pub iter_map: u64,
    /// Prefixes of function names only this implementation links in (to
    /// check the version's claim against the code).
    pub signature: &'static [&'static str],
    /// Entry points the compiler calls for map operations.
    pub candidates: &'static [Candidate],
    /// reflect's linknamed entry points (probed only where they do not call
    /// a probed runtime function, so nothing is counted twice).
    pub reflect: &'static [Candidate],
    /// The runtime's crash paths and the map-race messages they print.
    pub backstops: &'static [Backstop],
}

/// A function worth probing if the binary has it.
#[derive(Debug)]
pub struct Candidate {
    pub symbol: &'static str,
    pub op: Op,
    pub arg: MapArg,
}

/// A runtime function that aborts the process with a message (never
/// returns; costs nothing until the process is about to die). Probed at its
/// entry: a message of `messages` is a race the entry checks missed.
#[derive(Debug)]
pub struct Backstop {
    pub symbol: &'static str,
    /// Which crash path: [`Detector::RuntimeFatal`] (the runtime's own race
    /// checks) or [`Detector::RuntimeThrow`] (an internal invariant broken,
    /// here by a race); the detector its reports name.
    pub via: Detector,
    pub messages: &'static [RaceMessage],
}

/// A message the runtime prints when it finds a map race, and what it means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RaceMessage {
    pub text: &'static str,
    pub class: CrashMessage,
}

const fn c(symbol: &'static str, op: Op, arg: MapArg) -> Candidate {
    Candidate { symbol, op, arg }
}

const fn msg(text: &'static str, class: CrashMessage) -> RaceMessage {
    RaceMessage { text, class }
}

use super::plan::GoReg::{Rax, Rbx, Rcx};
use MapArg::{Reg, ViaIter};
use Op::{Assign, Clear, Delete, Grow, IterNext, IterStart, Read};

/// Every release in the table, oldest first.
pub const RELEASES: &[Release] = &[
    Release {
        major: 1,
        minor: 23,
        maps: &CLASSIC,
        map_experiments: &[("swissmap", None)],
        goroutine: G_1_23,
        moduledata: MD_1_20,
    },
    Release {
        major: 1,
        minor: 24,
        maps: &SWISS,
        map_experiments: &[("noswissmap", Some(&CLASSIC))],
        goroutine: G_1_23,
        moduledata: MD_1_20,
    },
    Release {
        major: 1,
        minor: 25,
        maps: &SWISS,
        map_experiments: &[("noswissmap", Some(&CLASSIC))],
        goroutine: G_1_25,
        moduledata: MD_1_20,
    },
    Release {
        major: 1,
        minor: 26,
        maps: &SWISS,
        map_experiments: &[],
        goroutine: G_1_26,
        moduledata: MD_1_20,
    },
    Release {
        major: 1,
        minor: 27,
        maps: &SWISS,
        map_experiments: &[],
        goroutine: G_1_26,
        moduledata: MD_1_27,
    },
];

/// Go 1.23 and 1.24 (`g` and `m` the same in both).
const G_1_23: GoroutineLayout = GoroutineLayout {
    g_goid: 160,
    g_m: 48,
    m_procid: 72,
    m_id: 232,
};
/// Go 1.25: `g.goid` and `m.procid` moved up by 8 bytes, `m.id` by 8.
const G_1_25: GoroutineLayout = GoroutineLayout {
    g_goid: 152,
    g_m: 48,
    m_procid: 64,
    m_id: 224,
};
/// Go 1.26 and 1.27: `m.id` back at 232.
const G_1_26: GoroutineLayout = GoroutineLayout {
    m_id: 232,
    ..G_1_25
};

/// Go 1.20 to 1.26 (1.26 adds `epclntab` after `gofunc`).
const MD_1_20: ModuledataLayout = ModuledataLayout {
    text: 176,
    gofunc: 320,
};
/// Go 1.27: `typedesclen`, `itaboffset` and `itabsize` before `gofunc`.
const MD_1_27: ModuledataLayout = ModuledataLayout {
    text: 176,
    gofunc: 344,
};

/// Entry points with the same names and `(type, map, key...)` signature
/// (map in RBX) in both implementations and every release here; since Go
/// 1.25 the swiss ones are defined in `internal/runtime/maps` and
/// linknamed to these `runtime.` names.
///
/// Some are wrappers of others, and then only the function doing the work
/// is probed (one hit per operation; the plan finds them by disassembly,
/// see `plan::PlannedWrapper`): `mapaccess1_fat` and `mapaccess2_fat` call
/// `mapaccess1` (Go 1.23–1.26) or `mapaccess2` (1.27) in every release, and
/// from Go 1.27 on `mapaccess1`, `mapaccess1_fast32`, `_fast64` and
/// `_faststr` only call their `mapaccess2` counterpart. (So do classic
/// maps' `growWork*` with `evacuate*`, below.)
const COMMON: &[Candidate] = &[
    c("runtime.mapdelete", Delete, Reg(Rbx)),
    c("runtime.mapdelete_fast32", Delete, Reg(Rbx)),
    c("runtime.mapdelete_fast64", Delete, Reg(Rbx)),
    c("runtime.mapdelete_faststr", Delete, Reg(Rbx)),
    c("runtime.mapassign", Assign, Reg(Rbx)),
    c("runtime.mapassign_fast32", Assign, Reg(Rbx)),
    c("runtime.mapassign_fast32ptr", Assign, Reg(Rbx)),
    c("runtime.mapassign_fast64", Assign, Reg(Rbx)),
    c("runtime.mapassign_fast64ptr", Assign, Reg(Rbx)),
    c("runtime.mapassign_faststr", Assign, Reg(Rbx)),
    c("runtime.mapclear", Clear, Reg(Rbx)),
    c("runtime.mapaccess1", Read, Reg(Rbx)),
    c("runtime.mapaccess1_fast32", Read, Reg(Rbx)),
    c("runtime.mapaccess1_fast64", Read, Reg(Rbx)),
    c("runtime.mapaccess1_faststr", Read, Reg(Rbx)),
    c("runtime.mapaccess1_fat", Read, Reg(Rbx)),
    c("runtime.mapaccess2", Read, Reg(Rbx)),
    c("runtime.mapaccess2_fast32", Read, Reg(Rbx)),
    c("runtime.mapaccess2_fast64", Read, Reg(Rbx)),
    c("runtime.mapaccess2_faststr", Read, Reg(Rbx)),
    c("runtime.mapaccess2_fat", Read, Reg(Rbx)),
];

/// The runtime's fatal errors for map races, from `runtime.fatal` (the
/// classic runtime's own checks; swiss maps' `internal/runtime/maps.fatal`
/// calls it too). A message a binary lacks (the `clone` one before
/// `maps.Clone` was used) is simply not found in it.
const RACE_MESSAGES: [RaceMessage; 4] = [
    msg("concurrent map writes", CrashMessage::Writes),
    msg("concurrent map read and map write", CrashMessage::Read),
    msg(
        "concurrent map iteration and map write",
        CrashMessage::Iteration,
    ),
    msg("concurrent map clone and map write", CrashMessage::Clone),
];

/// Swiss maps add a corruption check of their own, also a `fatal`.
const SWISS_FATAL_MESSAGES: [RaceMessage; 5] = [
    RACE_MESSAGES[0],
    RACE_MESSAGES[1],
    RACE_MESSAGES[2],
    RACE_MESSAGES[3],
    msg(
        "small map with no empty slot (concurrent map writes?)",
        CrashMessage::Corrupted,
    ),
];

/// Classic maps: Go 1.23, and Go 1.24–1.25 built with
/// `GOEXPERIMENT=noswissmap` (`runtime/map.go`, `map_noswiss.go`).
pub const CLASSIC: MapRuntime = MapRuntime {
    imp: MapImpl::Classic,
    layout: MapLayout::Classic(ClassicMapLayout {
        count: 0,
        flags: 8,
        hash_writing: 4,
        b: 9,
        buckets: 16,
        oldbuckets: 24,
    }),
    iter_map: 24,
    signature: &[
        "runtime.hashGrow",
        "runtime.mapiterinit",
        "runtime.evacuate",
    ],
    candidates: &[
        // Called by mapiternext alone (for a key in a bucket not yet
        // evacuated): a step of the iteration, so a race seen there is one
        // with the iteration, not with a read.
        c("runtime.mapaccessK", IterNext, Reg(Rbx)),
        c("runtime.mapiterinit", IterStart, Reg(Rbx)),
        c("runtime.mapiternext", IterNext, ViaIter(Rax)),
        c("runtime.hashGrow", Grow, Reg(Rbx)),
        c("runtime.growWork", Grow, Reg(Rbx)),
        c("runtime.growWork_fast32", Grow, Reg(Rbx)),
        c("runtime.growWork_fast64", Grow, Reg(Rbx)),
        c("runtime.growWork_faststr", Grow, Reg(Rbx)),
        c("runtime.evacuate", Grow, Reg(Rbx)),
        c("runtime.evacuate_fast32", Grow, Reg(Rbx)),
        c("runtime.evacuate_fast64", Grow, Reg(Rbx)),
        c("runtime.evacuate_faststr", Grow, Reg(Rbx)),
    ],
    reflect: &[c("reflect.mapiternext", IterNext, ViaIter(Rax))],
    backstops: &[
        Backstop {
            symbol: "runtime.fatal",
            via: Detector::RuntimeFatal,
            messages: &RACE_MESSAGES,
        },
        // evacuate*: a bucket entry written after the grow evacuated it.
        Backstop {
            symbol: "runtime.throw",
            via: Detector::RuntimeThrow,
            messages: &[msg("bad map state", CrashMessage::BadMapState)],
        },
    ],
};

/// Swiss tables: Go 1.24 on (`internal/runtime/maps`). `(*table)` methods
/// take `(t, typ, m, ...)`: the map is the third argument. Nothing in them
/// throws on corruption; their corruption check is a `fatal` message.
pub const SWISS: MapRuntime = MapRuntime {
    imp: MapImpl::Swiss,
    layout: MapLayout::Swiss(SwissMapLayout {
        used: 0,
        dir_ptr: 16,
        dir_len: 24,
        writing: 34,
        clear_seq: 40,
    }),
    iter_map: 24,
    signature: &[
        "internal/runtime/maps.(*Map).",
        "internal/runtime/maps.(*table).",
    ],
    candidates: &[
        c("runtime.mapIterStart", IterStart, Reg(Rbx)),
        c("runtime.mapIterNext", IterNext, ViaIter(Rax)),
        c("internal/runtime/maps.(*table).rehash", Grow, Reg(Rcx)),
        c("internal/runtime/maps.(*table).grow", Grow, Reg(Rcx)),
        c("internal/runtime/maps.(*table).split", Grow, Reg(Rcx)),
        c("internal/runtime/maps.(*Map).growToSmall", Grow, Reg(Rax)),
        c("internal/runtime/maps.(*Map).growToTable", Grow, Reg(Rax)),
        c(
            "internal/runtime/maps.(*Map).installTableSplit",
            Grow,
            Reg(Rax),
        ),
    ],
    // Go 1.24's reflect.mapiternext takes a linkname-compatibility iterator
    // of another layout: left out.
    reflect: &[
        c("reflect.mapIterStart", IterStart, Reg(Rbx)),
        c("reflect.mapIterNext", IterNext, ViaIter(Rax)),
    ],
    backstops: &[Backstop {
        symbol: "runtime.fatal",
        via: Detector::RuntimeFatal,
        messages: &SWISS_FATAL_MESSAGES,
    }],
};

/// reflect's entry points common to both implementations (`SetMapIndex`,
/// `MapRange`, `Clear`, and so fmt and encoding/json on maps). Some call
/// the runtime entry points above, some inline them (Go 1.24's
/// `reflect.mapdelete` calls `(*Map).Delete` directly).
pub const REFLECT_COMMON: &[Candidate] = &[
    c("reflect.mapdelete", Delete, Reg(Rbx)),
    c("reflect.mapdelete_faststr", Delete, Reg(Rbx)),
    c("reflect.mapassign0", Assign, Reg(Rbx)),
    c("reflect.mapassign_faststr0", Assign, Reg(Rbx)),
    c("reflect.mapclear", Clear, Reg(Rbx)),
    c("reflect.mapaccess", Read, Reg(Rbx)),
    c("reflect.mapaccess_faststr", Read, Reg(Rbx)),
    c("reflect.mapiterinit", IterStart, Reg(Rbx)),
];

/// Map functions to probe for `maps`: the common entry points first.
pub fn candidates(maps: &MapRuntime) -> impl Iterator<Item = &'static Candidate> + '_ {
    COMMON.iter().chain(maps.candidates.iter())
}

/// Why a version has no row to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unsupported {
    /// The release is not in the table.
    Release,
    /// The release is, but its build used a refused map experiment.
    Experiment(&'static str),
}

impl Release {
    /// `1.25`.
    pub fn name(&self) -> String {
        format!("{}.{}", self.major, self.minor)
    }

    /// The row of `v`'s release.
    pub fn of(v: &GoVersion) -> Option<&'static Release> {
        RELEASES
            .iter()
            .find(|r| (r.major, r.minor) == (v.major, v.minor))
    }

    /// The maps a build of this release uses, given the experiments it
    /// records.
    pub fn maps_for(&self, v: &GoVersion) -> Result<&'static MapRuntime, Unsupported> {
        for (name, maps) in self.map_experiments {
            if v.experiments().any(|e| e == *name) {
                return maps.ok_or(Unsupported::Experiment(name));
            }
        }
        Ok(self.maps)
    }

    /// One line per release: `1.24.x: swiss maps (classic with
    /// GOEXPERIMENT=noswissmap)`.
    pub fn describe(&self) -> String {
        let mut line = format!("{}.x: {} maps", self.name(), self.maps.imp);
        for (name, maps) in self.map_experiments {
            match maps {
                Some(m) => write!(line, " ({} with GOEXPERIMENT={name})", m.imp),
                None => write!(line, " (GOEXPERIMENT={name} refused)"),
            }
            .expect("writing to a String");
        }
        line
    }
}

/// The map implementation and runtime of `v`, or why it has none.
pub fn lookup(v: &GoVersion) -> Result<(&'static Release, &'static MapRuntime), Unsupported> {
    let release = Release::of(v).ok_or(Unsupported::Release)?;
    Ok((release, release.maps_for(v)?))
}

/// `1.23.x, 1.24.x, ...`: the releases in the table.
pub fn supported_list() -> String {
    RELEASES
        .iter()
        .map(|r| format!("{}.x", r.name()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The tables of supported releases and of their map runtimes in
/// `docs/enforcer.md`, generated from [`RELEASES`] (a test checks that the
/// page has them verbatim).
pub fn markdown_table() -> String {
    let mut out = String::from(
        "| Go release | maps | with `GOEXPERIMENT` | `g.goid` | `moduledata.gofunc` |\n|---|---|---|---|---|\n",
    );
    let mut runtimes: Vec<&MapRuntime> = Vec::new();
    for r in RELEASES {
        let experiments: Vec<String> = r
            .map_experiments
            .iter()
            .map(|(name, m)| match m {
                Some(m) => format!("`{name}`: {}", m.imp),
                None => format!("`{name}`: refused"),
            })
            .collect();
        writeln!(
            out,
            "| {}.x | {} | {} | {} | {} |",
            r.name(),
            r.maps.imp,
            if experiments.is_empty() {
                "—".to_string()
            } else {
                experiments.join(", ")
            },
            r.goroutine.g_goid,
            r.moduledata.gofunc,
        )
        .expect("writing to a String");
        let used = std::iter::once(r.maps).chain(r.map_experiments.iter().filter_map(|(_, m)| *m));
        for m in used {
            if !runtimes.iter().any(|seen| std::ptr::eq(*seen, m)) {
                runtimes.push(m);
            }
        }
    }
    out.push_str("\n| maps | writing flag | crash paths probed, with the messages they recognise |\n|---|---|---|\n");
    for m in runtimes {
        let (flag, mask) = m.layout.writing_flag();
        let paths: Vec<String> = m
            .backstops
            .iter()
            .map(|b| {
                let texts: Vec<String> =
                    b.messages.iter().map(|x| format!("`{}`", x.text)).collect();
                format!("`{}` ({})", b.symbol, texts.join(", "))
            })
            .collect();
        writeln!(
            out,
            "| {} | byte {flag} of the map, mask {mask:#x} | {} |",
            m.imp,
            paths.join("; ")
        )
        .expect("writing to a String");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(raw: &str) -> GoVersion {
        GoVersion::parse(raw).expect("parses")
    }

    #[test]
    fn every_release_and_experiment_resolves() {
        let imp = |raw: &str| lookup(&v(raw)).map(|(_, m)| m.imp);
        assert_eq!(imp("go1.23.5"), Ok(MapImpl::Classic));
        assert_eq!(
            imp("go1.23.5 X:swissmap"),
            Err(Unsupported::Experiment("swissmap"))
        );
        assert_eq!(imp("go1.24.4"), Ok(MapImpl::Swiss));
        assert_eq!(
            imp("go1.24.4 X:noswissmap,boringcrypto"),
            Ok(MapImpl::Classic)
        );
        assert_eq!(imp("go1.25.12 X:noswissmap"), Ok(MapImpl::Classic));
        assert_eq!(imp("go1.26.11"), Ok(MapImpl::Swiss));
        assert_eq!(imp("go1.27rc1"), Ok(MapImpl::Swiss));
        for raw in ["go1.22.12", "go1.28.0", "go1.17", "go2.0"] {
            assert_eq!(imp(raw), Err(Unsupported::Release), "{raw}");
        }
    }

    /// What `target` turns into kernel numbers: every operation, crash
    /// message and crash path the table names has one (so the user side
    /// never sends the kernel an unknown value).
    #[test]
    fn every_table_value_has_a_kernel_number() {
        for release in RELEASES {
            let maps = release.maps;
            for c in candidates(maps).chain(maps.reflect) {
                assert!(c.op.kernel().is_some(), "{}: {:?}", c.symbol, c.op);
            }
            for b in maps.backstops {
                assert!(b.via.is_crash_path(), "{}: {:?}", b.symbol, b.via);
                for m in b.messages {
                    assert!(m.class.kernel().is_some(), "{}: {:?}", m.text, m.class);
                }
            }
        }
    }

    #[test]
    fn releases_are_unique_and_in_order() {
        for pair in RELEASES.windows(2) {
            assert!(
                (pair[0].major, pair[0].minor) < (pair[1].major, pair[1].minor),
                "{} before {}",
                pair[0].name(),
                pair[1].name()
            );
        }
        assert_eq!(supported_list(), "1.23.x, 1.24.x, 1.25.x, 1.26.x, 1.27.x");
    }

    #[test]
    fn every_map_runtime_names_a_fatal_backstop_with_the_write_race_message() {
        for r in RELEASES {
            let mut all = vec![r.maps];
            all.extend(r.map_experiments.iter().filter_map(|(_, m)| *m));
            for m in all {
                let fatal = m
                    .backstops
                    .iter()
                    .find(|b| b.via == Detector::RuntimeFatal)
                    .unwrap_or_else(|| panic!("{}: no fatal backstop", r.name()));
                assert!(
                    fatal
                        .messages
                        .iter()
                        .any(|x| x.text == "concurrent map writes"),
                    "{}",
                    r.name()
                );
                assert!(!m.signature.is_empty() && !m.candidates.is_empty());
            }
        }
    }

    #[test]
    fn the_markdown_table_has_a_row_per_release() {
        let table = markdown_table();
        assert_eq!(
            table.lines().count(),
            2 + RELEASES.len() + 1 + 2 + 2,
            "{table}"
        );
        assert!(
            table.contains("| 1.24.x | swiss | `noswissmap`: classic | 160 | 320 |"),
            "{table}"
        );
        assert!(
            table.contains("`runtime.throw` (`bad map state`)"),
            "{table}"
        );
    }
}
