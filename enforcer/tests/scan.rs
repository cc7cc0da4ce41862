//! Go binary analysis against real binaries built from `tests/go` by both
//! toolchains (Go 1.23: classic maps, Go 1.24: swiss maps).
//!
//! The programs are built once per test binary by `tests/go/build.sh` into
//! `$MAPGUARD_GO_PROGS` or `target/go-progs` (incremental; a file lock
//! serializes concurrent test binaries).

use std::path::PathBuf;
use std::process::Command;

use mapguard_api::vocab::{CrashMessage, Detector, Op};
use mapguard_enforcer::binary::goelf::{
    ArgLoc, GoBinary, GoReg, LayoutSource, MapImpl, StepHandling, release,
};
use mapguard_enforcer::scan::ScanReport;

#[path = "scan/errors.rs"]
mod errors;
mod support;
#[path = "scan/symbolize.rs"]
mod symbolize;

use support::{go_progs, toolchain_version, versions, workspace as repo_root};

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

/// The release table's default maps for a toolchain tag.
fn default_maps(version: &str) -> MapImpl {
    release::RELEASES
        .iter()
        .find(|r| format!("go{}", r.name()) == version)
        .unwrap_or_else(|| panic!("{version} not in the release table"))
        .maps
        .imp
}

/// Tags whose toolchain builds a `GOEXPERIMENT=noswissmap` variant.
fn noswiss_versions() -> Vec<String> {
    support::toolchains()
        .into_iter()
        .filter(|t| t.extra.as_deref() == Some("noswiss"))
        .map(|t| t.tag)
        .collect()
}

#[test]
fn the_toolchains_are_the_release_table() {
    let tested: Vec<String> = support::toolchains()
        .into_iter()
        .filter(|t| t.extra.as_deref() != Some("refused"))
        .map(|t| t.tag)
        .collect();
    assert_eq!(
        tested,
        versions(),
        "tests/go/toolchains must name one toolchain per release of enforcer/src/binary/goelf/release.rs"
    );
    // Every release whose maps can be switched has that build tested.
    for r in release::RELEASES {
        let tag = format!("go{}", r.name());
        let switches = r.map_experiments.iter().any(|(_, m)| m.is_some());
        assert_eq!(
            switches,
            noswiss_versions().contains(&tag),
            "{tag}: noswiss variant in tests/go/toolchains"
        );
    }
}

#[test]
fn docs_enforcer_md_lists_the_release_table() {
    let page =
        std::fs::read_to_string(repo_root().join("docs/enforcer.md")).expect("docs/enforcer.md");
    let table = release::markdown_table();
    assert!(
        page.contains(&table),
        "docs/enforcer.md's supported-releases table differs from the release table; replace it with:\n{table}"
    );
}

#[test]
fn version_and_map_impl_are_detected() {
    for &v in versions() {
        let bin = open(v, "racy/delete_assign");
        assert_eq!(
            bin.go_version().raw,
            toolchain_version(v),
            "version of the {v} build"
        );
        assert_eq!(bin.map_impl(), default_maps(v), "{v}");
        assert_eq!(format!("go{}", bin.release().name()), v);
        assert!(
            !bin.is_pie() && !bin.is_stripped(),
            "{v}: plain build is neither PIE nor stripped"
        );
        assert!(open(v, "pie/delete_assign").is_pie(), "{v}");
        assert!(open(v, "stripped/delete_assign").is_stripped(), "{v}");
    }
}

#[test]
fn every_op_class_is_planned_on_an_emulated_push_rbp() {
    for &v in versions() {
        // clean/mutex assigns, deletes, reads, ranges, clears and grows its map.
        let bin = open(v, "clean/mutex");
        let plan = bin.probe_plan().expect("probe plan");
        let data = std::fs::read(bin.path()).expect("read binary");
        for op in Op::KNOWN.iter().copied() {
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
        // Classic: the frame is set up after a longer prologue; swiss
        // wrappers push rbp right after the stack check.
        let want_offset = match bin.map_impl() {
            MapImpl::Classic => 0xa,
            MapImpl::Swiss => 0x6,
        };
        assert_eq!(
            del.insn_offset, want_offset,
            "{v}: push rbp offset in mapdelete_fast64"
        );
        assert_eq!(
            del.map_arg,
            ArgLoc::Reg { reg: GoReg::Rbx },
            "{v}: map in RBX"
        );
        let iter_next = match bin.map_impl() {
            MapImpl::Classic => "runtime.mapiternext",
            MapImpl::Swiss => "runtime.mapIterNext",
        };
        let next = plan.get(iter_next).expect("iter next planned");
        assert_eq!(next.op, Op::IterNext, "{v}");
        assert_eq!(
            next.map_arg,
            ArgLoc::ViaIterator {
                reg: GoReg::Rax,
                offset: bin.layout().iter_map
            },
            "{v}"
        );
        // Classic maps' mapiternext looks a key up again with mapaccessK
        // (its only caller) while the map grows: a race seen there is one
        // with the iteration, and is reported as such, never as a read.
        if bin.map_impl() == MapImpl::Classic {
            let k = plan.get("runtime.mapaccessK").expect("mapaccessK planned");
            assert_eq!(k.op, Op::IterNext, "{v}: mapaccessK is an iteration step");
            assert_eq!(k.map_arg, ArgLoc::Reg { reg: GoReg::Rbx }, "{v}");
        }
    }
}

#[test]
fn plan_names_the_functions_each_map_implementation_uses() {
    for &v in versions() {
        let plan = open(v, "clean/mutex").probe_plan().expect("plan");
        let (present, absent): (&[&str], &[&str]) = match default_maps(v) {
            MapImpl::Classic => (
                &[
                    "runtime.mapiterinit",
                    "runtime.mapiternext",
                    "runtime.hashGrow",
                    "runtime.mapclear",
                ],
                &["runtime.mapIterStart"],
            ),
            MapImpl::Swiss => (
                &[
                    "runtime.mapIterStart",
                    "runtime.mapIterNext",
                    "internal/runtime/maps.(*table).grow",
                    "runtime.mapclear",
                ],
                &["runtime.hashGrow"],
            ),
        };
        for sym in present {
            assert!(plan.get(sym).is_some(), "{v}: {sym} planned");
        }
        for sym in absent {
            assert!(plan.get(sym).is_none(), "{v}: {sym} must not be planned");
        }
        if let Some(grow) = plan.get("internal/runtime/maps.(*table).grow") {
            assert_eq!(
                grow.map_arg,
                ArgLoc::Reg { reg: GoReg::Rcx },
                "{v}: (*table).grow(t, typ, m, cap): map in RCX"
            );
        }
    }
}

#[test]
fn layout_from_dwarf_matches_the_verified_table() {
    for &v in versions() {
        let full = open(v, "clean/mutex");
        assert_eq!(
            full.layout().source,
            LayoutSource::Dwarf,
            "{v}: every field found in DWARF"
        );
        assert!(
            full.layout_corrections().is_empty(),
            "{v}: DWARF disagrees with the release table: {:?}",
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
        let want = match default_maps(v) {
            MapImpl::Classic => (8, 4),
            MapImpl::Swiss => (34, 1),
        };
        assert_eq!(full.layout().map.writing_flag(), want, "{v}: writing flag");
    }
}

#[test]
fn scan_report_renders_text_and_json() {
    for &v in versions() {
        let bin = open(v, "racy/delete_assign");
        let report = ScanReport::new(&bin).expect("report");
        let text = report.to_string();
        assert!(text.contains(&format!("{} maps", bin.map_impl())), "{text}");
        assert!(text.contains("runtime.mapdelete_fast64"), "{text}");
        assert!(text.contains("emulated"), "{text}");
        assert!(
            text.contains("runtime.fatal"),
            "{v}: backstop shown: {text}"
        );
        let json: serde_json::Value = serde_json::from_str(&report.to_json()).expect("valid JSON");
        assert_eq!(json["map_impl"], bin.map_impl().to_string());
        assert_eq!(json["go_version"], bin.go_version().raw.as_str());
        assert_eq!(json["release"], bin.release().name());
        let probes = json["probes"].as_array().expect("probes array");
        assert_eq!(probes.len(), report.summary.probes);
        let del = probes
            .iter()
            .find(|p| p["symbol"] == "runtime.mapdelete_fast64")
            .expect("delete probe");
        assert_eq!(del["handling"], "emulated");
        assert_eq!(del["map_arg"]["reg"], "rbx");
        assert_eq!(report.summary.single_stepped + report.summary.rejected, 0);
        let backstops = json["backstops"].as_array().expect("backstops");
        assert!(
            backstops.iter().any(|b| b["symbol"] == "runtime.fatal"),
            "{v}: {backstops:?}"
        );
    }
}

#[test]
fn noswissmap_builds_are_classic() {
    let tags = noswiss_versions();
    assert!(
        !tags.is_empty(),
        "no noswiss toolchain in tests/go/toolchains"
    );
    for v in &tags {
        let bin = open(v, "noswiss/delete_assign");
        assert!(
            bin.go_version().raw.contains("X:noswissmap"),
            "{}",
            bin.go_version()
        );
        assert_eq!(bin.map_impl(), MapImpl::Classic, "{v}");
        assert_eq!(bin.layout().source, LayoutSource::Dwarf, "{v}");
        assert!(
            bin.layout_corrections().is_empty(),
            "{v}: DWARF equals the classic table: {:?}",
            bin.layout_corrections()
        );
        assert_eq!(
            bin.layout().map.writing_flag(),
            (8, 4),
            "{v}: hmap.flags & hashWriting"
        );
        let plan = bin.probe_plan().expect("plan");
        assert!(
            plan.get("runtime.hashGrow").is_some(),
            "{v}: classic growth functions planned"
        );
        assert!(plan.get("internal/runtime/maps.(*table).grow").is_none());
        let del = plan.get("runtime.mapdelete_fast64").expect("planned");
        assert_eq!(
            (del.handling, del.insn_text.as_str()),
            (StepHandling::Emulated, "push rbp"),
            "{v}"
        );
        assert!(
            plan.backstops
                .iter()
                .any(|b| b.via == Detector::RuntimeThrow),
            "{v}: classic maps' throw path probed"
        );
    }
}

#[test]
fn scan_command_prints_the_table_json_and_clear_errors() {
    let exe = env!("CARGO_BIN_EXE_mapguard-enforcer");
    for &v in versions() {
        let bin = prog(v, "stripped/delete_assign");
        let out = Command::new(exe)
            .arg("scan")
            .arg(&bin)
            .output()
            .expect("run scan");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{v}: scan failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            text.contains(&format!("{} maps", default_maps(v))) && text.contains("stripped"),
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
        let json: serde_json::Value =
            serde_json::from_slice(&out.stdout).expect("scan --json is JSON");
        assert_eq!(json["map_impl"], default_maps(v).to_string());
        assert_eq!(json["stripped"], true);
    }

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
    for &v in versions() {
        let plan = open(v, "clean/reflect_maps").probe_plan().expect("plan");
        let reflect: Vec<&str> = plan
            .probes
            .iter()
            .map(|p| p.symbol.as_str())
            .filter(|s| s.starts_with("reflect."))
            .collect();
        match default_maps(v) {
            // Swiss reflect inlines runtime.mapdelete/mapclear and iterates
            // with maps.Iter itself: those reflect functions need their own
            // probes.
            MapImpl::Swiss => {
                for sym in [
                    "reflect.mapdelete",
                    "reflect.mapclear",
                    "reflect.mapIterStart",
                    "reflect.mapIterNext",
                ] {
                    let p = plan
                        .get(sym)
                        .unwrap_or_else(|| panic!("{v}: {sym} planned; reflect: {reflect:?}"));
                    assert_eq!(p.handling, StepHandling::Emulated, "{v} {sym}");
                }
                // reflect.mapassign0 calls runtime.mapassign: probing both
                // would count twice.
                assert!(plan.get("runtime.mapassign").is_some(), "{v}");
                assert!(
                    plan.get("reflect.mapassign0").is_none(),
                    "{v}: no double count"
                );
            }
            // Go 1.23's reflect wrappers all call the runtime entry points.
            MapImpl::Classic => {
                assert!(
                    reflect.is_empty(),
                    "{v}: reflect wrappers double count: {reflect:?}"
                );
                assert!(
                    plan.get("runtime.mapdelete").is_some()
                        && plan.get("runtime.mapclear").is_some()
                );
            }
        }
    }
}

/// The runtime's map-race messages are found in every build (plain, PIE,
/// stripped), at addresses whose bytes are the message, beside the crash
/// path that prints them.
#[test]
fn runtime_map_race_messages_are_located() {
    let mut builds: Vec<(String, &str)> = Vec::new();
    for &v in versions() {
        for rel in [
            "racy/delete_assign",
            "pie/delete_assign",
            "stripped/delete_assign",
        ] {
            builds.push((v.to_string(), rel));
        }
    }
    for v in noswiss_versions() {
        builds.push((v, "noswiss/delete_assign"));
    }
    for (version, rel) in builds {
        let bin = open(&version, rel);
        let plan = bin.probe_plan().expect("plan");
        let data = std::fs::read(prog(&version, rel)).expect("read the binary");
        let fatal = plan
            .backstops
            .iter()
            .find(|b| b.via == Detector::RuntimeFatal)
            .expect("runtime.fatal probed");
        assert_eq!(fatal.symbol, "runtime.fatal");
        let mut classes: Vec<CrashMessage> = fatal.messages.iter().map(|m| m.class).collect();
        classes.dedup();
        for want in [
            CrashMessage::Writes,
            CrashMessage::Read,
            CrashMessage::Iteration,
        ] {
            assert!(
                classes.contains(&want),
                "{version}/{rel}: no {want:?} message located: {:?}",
                fatal.messages
            );
        }
        for b in &plan.backstops {
            for m in &b.messages {
                let offset = bin.file_offset(m.vaddr).expect("message in file data") as usize;
                assert_eq!(
                    &data[offset..offset + m.text.len()],
                    m.text.as_bytes(),
                    "{version}/{rel}"
                );
            }
        }
        // Classic maps throw "bad map state" when a grow finds a bucket
        // written after its evacuation: that path is probed too.
        if bin.map_impl() == MapImpl::Classic {
            let throw = plan
                .backstops
                .iter()
                .find(|b| b.via == Detector::RuntimeThrow)
                .unwrap_or_else(|| panic!("{version}/{rel}: runtime.throw probed"));
            assert!(
                throw
                    .messages
                    .iter()
                    .any(|m| m.class == CrashMessage::BadMapState),
                "{version}/{rel}: bad map state located: {:?}",
                throw.messages
            );
        }
    }
}

/// A read is one probe hit: an entry point that only calls another read
/// entry point is left unprobed and names that one as its worker — the
/// `_fat` ones in every release, and from Go 1.27 on `mapaccess1*`, which
/// only call their `mapaccess2*` counterpart.
#[test]
fn read_wrappers_are_not_probed_beside_their_worker() {
    for &v in versions() {
        let plan = open(v, "clean/value_reads").probe_plan().expect("plan");
        let go127 = v == "go1.27";
        let fat_worker = if go127 {
            "runtime.mapaccess2"
        } else {
            "runtime.mapaccess1"
        };
        let mut expected = vec![
            ("runtime.mapaccess1_fat", fat_worker),
            ("runtime.mapaccess2_fat", fat_worker),
        ];
        for suffix in ["", "_fast32", "_fast64", "_faststr"] {
            let (value, comma) = (
                format!("runtime.mapaccess1{suffix}"),
                format!("runtime.mapaccess2{suffix}"),
            );
            assert!(plan.get(&comma).is_some(), "{v}: {comma} probed");
            if go127 {
                expected.push((value.leak(), comma.leak()));
            } else {
                assert!(plan.get(&value).is_some(), "{v}: {value} probed");
            }
        }
        // (Classic maps' growWork* only call evacuate*: grow wrappers.)
        let mut found: Vec<(&str, &str)> = plan
            .wrappers
            .iter()
            .filter(|w| w.op == Op::Read)
            .map(|w| (w.symbol.as_str(), w.worker.as_str()))
            .collect();
        found.sort();
        expected.sort();
        assert_eq!(found, expected, "{v}: wrappers and their workers");
        for w in &plan.wrappers {
            assert!(plan.get(&w.symbol).is_none(), "{v}: {} probed", w.symbol);
            assert!(
                plan.get(&w.worker).is_some(),
                "{v}: {} not probed",
                w.worker
            );
        }
    }
    // The scan report lists them.
    let out = Command::new(env!("CARGO_BIN_EXE_mapguard-enforcer"))
        .arg("scan")
        .arg(prog("go1.27", "clean/value_reads"))
        .output()
        .expect("run scan");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("wrapper:     runtime.mapaccess1_fast64 ")
            && text.contains("only calls runtime.mapaccess2_fast64 (probed)"),
        "{text}"
    );
}
