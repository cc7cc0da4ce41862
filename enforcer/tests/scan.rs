//! Go binary analysis against real binaries built from `tests/go` by both
//! toolchains (Go 1.23: classic maps, Go 1.24: swiss maps).
//!
//! The programs are built once per test binary by `tests/go/build.sh` into
//! `$MAPGUARD_GO_PROGS` or `target/go-progs` (incremental; a file lock
//! serializes concurrent test binaries).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use mapguard_enforcer::goelf::{
    ArgLoc, GoBinary, GoReg, LayoutSource, MapImpl, MapOp, StepHandling,
};
use mapguard_enforcer::scan::ScanReport;

#[path = "scan/errors.rs"]
mod errors;
#[path = "scan/symbolize.rs"]
mod symbolize;

const VERSIONS: [&str; 2] = ["go1.23", "go1.24"];

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// Builds the Go programs (once per test binary) and returns their root.
fn go_progs() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        // `make` exports MAPGUARD_GO_PROGS; plain `cargo test` uses target/go-progs.
        let out = std::env::var_os("MAPGUARD_GO_PROGS")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo_root().join("target/go-progs"));
        std::fs::create_dir_all(&out).expect("create target/go-progs");
        let lock = File::create(out.join(".build.lock")).expect("create build lock file");
        lock.lock().expect("lock target/go-progs/.build.lock");
        let status = Command::new(repo_root().join("tests/go/build.sh"))
            .arg(&out)
            .status()
            .expect("run tests/go/build.sh");
        assert!(status.success(), "tests/go/build.sh failed: {status}");
        out
    })
}

fn prog(version: &str, rel: &str) -> PathBuf {
    let p = go_progs().join(version).join(rel);
    assert!(p.exists(), "{} was not built", p.display());
    p
}

fn open(version: &str, rel: &str) -> GoBinary {
    let p = prog(version, rel);
    GoBinary::open(&p).unwrap_or_else(|e| panic!("open {}: {e}", p.display()))
}

/// 1-based line of the first source line containing `needle`.
fn source_line(rel_source: &str, needle: &str) -> u32 {
    let path = repo_root().join("tests/go").join(rel_source);
    let text = std::fs::read_to_string(&path).expect("read Go source");
    let idx = text
        .lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle:?} in {rel_source}"));
    u32::try_from(idx + 1).expect("line fits u32")
}

fn toolchain_version(version: &str) -> String {
    let go = match version {
        "go1.23" => std::env::var("GO123").unwrap_or_else(|_| "/usr/lib/go-1.23/bin/go".into()),
        _ => std::env::var("GO124")
            .unwrap_or_else(|_| "/opt/mapguard/go-1.24/usr/lib/go-1.24/bin/go".into()),
    };
    let out = Command::new(go)
        .args(["env", "GOVERSION"])
        .env("GOTOOLCHAIN", "local")
        .output()
        .expect("go env");
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_string()
}

#[test]
fn version_and_map_impl_are_detected() {
    for v in VERSIONS {
        let bin = open(v, "racy/delete_assign");
        assert_eq!(
            bin.go_version().raw,
            toolchain_version(v),
            "version of the {v} build"
        );
        let want = if v == "go1.23" {
            MapImpl::Classic
        } else {
            MapImpl::Swiss
        };
        assert_eq!(bin.map_impl(), want, "{v}");
        assert!(
            !bin.is_pie() && !bin.is_stripped(),
            "{v}: plain build is neither PIE nor stripped"
        );
    }
}

#[test]
fn every_op_class_is_planned_on_an_emulated_push_rbp() {
    for v in VERSIONS {
        // clean/mutex assigns, deletes, reads, ranges, clears and grows its map.
        let bin = open(v, "clean/mutex");
        let plan = bin.probe_plan().expect("probe plan");
        let data = std::fs::read(bin.path()).expect("read binary");
        for op in MapOp::ALL {
            assert!(
                plan.probes_for(op).next().is_some(),
                "{v}: no probe for {op}"
            );
        }
        for p in &plan.probes {
            assert_eq!(
                p.handling,
                StepHandling::Emulated,
                "{v} {}: {}",
                p.symbol,
                p.insn_text
            );
            assert_eq!(
                data[p.file_offset as usize], 0x55,
                "{v} {}: byte at file offset is push rbp",
                p.symbol
            );
            assert_eq!(p.insn_text, "push rbp", "{v} {}", p.symbol);
            assert!(
                p.note.is_none(),
                "{v} {}: unexpected fallback {:?}",
                p.symbol,
                p.note
            );
            assert!(!p.ret_offsets.is_empty(), "{v} {}: RET offsets", p.symbol);
            for r in &p.ret_offsets {
                assert_eq!(
                    data[(p.file_offset - p.insn_offset + r) as usize],
                    0xc3,
                    "{v} {} ret at {r:#x}",
                    p.symbol
                );
            }
        }
        let del = plan
            .get("runtime.mapdelete_fast64")
            .expect("mapdelete_fast64 planned");
        let want_offset = if v == "go1.23" { 0xa } else { 0x6 };
        assert_eq!(
            del.insn_offset, want_offset,
            "{v}: push rbp offset in mapdelete_fast64"
        );
        assert_eq!(
            del.map_arg,
            ArgLoc::Reg { reg: GoReg::Rbx },
            "{v}: map in RBX"
        );
        let next = plan.probes_for(MapOp::IterNext).next().expect("iter next");
        assert_eq!(
            next.map_arg,
            ArgLoc::ViaIterator {
                reg: GoReg::Rax,
                offset: bin.layout().iter_map
            },
            "{v}"
        );
    }
}

#[test]
fn plan_names_the_functions_each_map_implementation_uses() {
    let classic = open("go1.23", "clean/mutex").probe_plan().expect("plan");
    for sym in [
        "runtime.mapiterinit",
        "runtime.mapiternext",
        "runtime.hashGrow",
        "runtime.mapclear",
    ] {
        assert!(classic.get(sym).is_some(), "go1.23: {sym} planned");
    }
    assert!(
        classic.get("runtime.mapIterStart").is_none(),
        "go1.23 has no mapIterStart"
    );
    let swiss = open("go1.24", "clean/mutex").probe_plan().expect("plan");
    for sym in [
        "runtime.mapIterStart",
        "runtime.mapIterNext",
        "internal/runtime/maps.(*table).grow",
        "runtime.mapclear",
    ] {
        assert!(swiss.get(sym).is_some(), "go1.24: {sym} planned");
    }
    assert!(
        swiss.get("runtime.hashGrow").is_none(),
        "go1.24 has no hashGrow"
    );
    let grow = swiss
        .get("internal/runtime/maps.(*table).grow")
        .expect("grow");
    assert_eq!(
        grow.map_arg,
        ArgLoc::Reg { reg: GoReg::Rcx },
        "(*table).grow(t, typ, m, cap): map in RCX"
    );
}

#[test]
fn layout_from_dwarf_matches_the_verified_table() {
    for v in VERSIONS {
        let full = open(v, "clean/mutex");
        assert_eq!(
            full.layout().source,
            LayoutSource::Dwarf,
            "{v}: every field found in DWARF"
        );
        assert!(
            full.layout_corrections().is_empty(),
            "{v}: DWARF disagrees: {:?}",
            full.layout_corrections()
        );
        let stripped = open(v, "stripped/delete_assign");
        assert_eq!(
            stripped.layout().source,
            LayoutSource::Table,
            "{v}: stripped uses the table"
        );
        let mut table = *stripped.layout();
        table.source = LayoutSource::Dwarf;
        assert_eq!(table, *full.layout(), "{v}: table and DWARF layouts");
    }
    let (flag, mask) = open("go1.23", "clean/mutex").layout().map.writing_flag();
    assert_eq!((flag, mask), (8, 4), "hmap.flags & hashWriting");
    let (flag, mask) = open("go1.24", "clean/mutex").layout().map.writing_flag();
    assert_eq!((flag, mask), (34, 1), "maps.Map.writing");
}

#[test]
fn scan_report_renders_text_and_json() {
    let bin = open("go1.24", "racy/delete_assign");
    let report = ScanReport::new(&bin).expect("report");
    let text = report.to_string();
    assert!(text.contains("swiss maps"), "{text}");
    assert!(text.contains("runtime.mapdelete_fast64"), "{text}");
    assert!(text.contains("emulated"), "{text}");
    let json: serde_json::Value = serde_json::from_str(&report.to_json()).expect("valid JSON");
    assert_eq!(json["map_impl"], "swiss");
    assert_eq!(json["go_version"], bin.go_version().raw.as_str());
    let probes = json["probes"].as_array().expect("probes array");
    assert_eq!(probes.len(), report.summary.probes);
    let del = probes
        .iter()
        .find(|p| p["symbol"] == "runtime.mapdelete_fast64")
        .expect("delete probe");
    assert_eq!(del["handling"], "emulated");
    assert_eq!(del["map_arg"]["reg"], "rbx");
    assert_eq!(report.summary.single_stepped + report.summary.rejected, 0);
}

#[test]
fn go124_with_noswissmap_is_classic() {
    let bin = open("go1.24", "noswiss/delete_assign");
    assert!(
        bin.go_version().raw.contains("X:noswissmap"),
        "{}",
        bin.go_version()
    );
    assert_eq!(bin.map_impl(), MapImpl::Classic);
    assert_eq!(bin.layout().source, LayoutSource::Dwarf);
    assert!(
        bin.layout_corrections().is_empty(),
        "DWARF equals the classic table: {:?}",
        bin.layout_corrections()
    );
    assert_eq!(
        bin.layout().map.writing_flag(),
        (8, 4),
        "hmap.flags & hashWriting"
    );
    let plan = bin.probe_plan().expect("plan");
    assert!(
        plan.get("runtime.hashGrow").is_some(),
        "classic growth functions planned"
    );
    assert!(plan.get("internal/runtime/maps.(*table).grow").is_none());
    let del = plan.get("runtime.mapdelete_fast64").expect("planned");
    assert_eq!(
        (del.handling, del.insn_text.as_str()),
        (StepHandling::Emulated, "push rbp")
    );
}

#[test]
fn scan_command_prints_the_table_json_and_clear_errors() {
    let exe = env!("CARGO_BIN_EXE_mapguard-enforcer");
    let bin = prog("go1.23", "stripped/delete_assign");
    let out = Command::new(exe)
        .arg("scan")
        .arg(&bin)
        .output()
        .expect("run scan");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "scan failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("classic maps") && text.contains("stripped"),
        "{text}"
    );
    assert!(
        text.contains("runtime.mapdelete_fast64") && text.contains("emulated"),
        "{text}"
    );

    let out = Command::new(exe)
        .args(["scan", "--json"])
        .arg(&bin)
        .output()
        .expect("run scan --json");
    assert!(out.status.success());
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("scan --json is JSON");
    assert_eq!(json["map_impl"], "classic");
    assert_eq!(json["stripped"], true);

    let out = Command::new(exe)
        .args(["scan", "/bin/true"])
        .output()
        .expect("run scan /bin/true");
    assert!(!out.status.success(), "scanning a non-Go binary fails");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a Go binary"), "{err}");
}

#[test]
fn reflect_entry_points_are_planned_only_where_they_bypass_the_runtime_ones() {
    // Go 1.24's reflect inlines runtime.mapdelete/mapclear and iterates
    // with maps.Iter itself: those reflect functions need their own probes.
    let swiss = open("go1.24", "clean/reflect_maps")
        .probe_plan()
        .expect("plan");
    for sym in [
        "reflect.mapdelete",
        "reflect.mapclear",
        "reflect.mapIterStart",
        "reflect.mapIterNext",
    ] {
        let p = swiss
            .get(sym)
            .unwrap_or_else(|| panic!("go1.24: {sym} planned"));
        assert_eq!(p.handling, StepHandling::Emulated, "{sym}");
    }
    // reflect.mapassign0 calls runtime.mapassign: probing both would count twice.
    assert!(swiss.get("runtime.mapassign").is_some());
    assert!(
        swiss.get("reflect.mapassign0").is_none(),
        "go1.24: no double count"
    );
    // Go 1.23's reflect wrappers all call the runtime entry points.
    let classic = open("go1.23", "clean/reflect_maps")
        .probe_plan()
        .expect("plan");
    let reflect: Vec<&str> = classic
        .probes
        .iter()
        .map(|p| p.symbol.as_str())
        .filter(|s| s.starts_with("reflect."))
        .collect();
    assert!(
        reflect.is_empty(),
        "go1.23: reflect wrappers double count: {reflect:?}"
    );
    assert!(
        classic.get("runtime.mapdelete").is_some() && classic.get("runtime.mapclear").is_some()
    );
}

/// The runtime's three `concurrent map ...` messages are found in every
/// build (plain, PIE, stripped), at addresses whose bytes are the message.
#[test]
fn runtime_map_race_messages_are_located() {
    for version in VERSIONS {
        for rel in [
            "racy/delete_assign",
            "pie/delete_assign",
            "stripped/delete_assign",
        ] {
            let bin = open(version, rel);
            let found = bin.map_race_messages();
            let mut classes: Vec<u8> = found.iter().map(|(_, _, class)| *class).collect();
            classes.sort_unstable();
            classes.dedup();
            assert_eq!(classes, b"irw", "{version}/{rel}: {found:x?}");
            let data = std::fs::read(prog(version, rel)).expect("read the binary");
            for (vaddr, len, class) in found {
                let offset = bin.file_offset(vaddr).expect("message in file data") as usize;
                let text = &data[offset..offset + len];
                assert!(text.starts_with(b"concurrent map "), "{version}/{rel}");
                assert_eq!(text[15], class, "{version}/{rel}");
            }
        }
    }
}
