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

use iced_x86::{Decoder, DecoderOptions, FlowControl};
use mapguard_enforcer::goelf::{
    ArgLoc, GoBinary, GoElfError, GoReg, LayoutSource, MapImpl, MapOp, StepHandling,
};
use mapguard_enforcer::scan::ScanReport;

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

fn check_symbolizer(v: &str, bin: &GoBinary) {
    let sym = bin.symbolizer();
    let src = "racy/delete_assign/main.go";
    let deleter = sym
        .function("main.deleter")
        .unwrap_or_else(|| panic!("{v}: main.deleter in pclntab"));
    let at_entry = sym.frame(deleter.entry).expect("frame at entry");
    assert_eq!(at_entry.function, "main.deleter");
    assert!(at_entry.file.ends_with(src), "{v}: file {}", at_entry.file);
    assert_eq!(
        at_entry.line,
        source_line(src, "func deleter("),
        "{v}: line of func deleter"
    );
    assert_eq!(deleter.start_line, at_entry.line, "{v}: start line");

    // The call to runtime.mapdelete_fast64 is on the `delete(m, ...)` line,
    // and so is its return address minus one (what a stack walk sees).
    let target = sym
        .function("runtime.mapdelete_fast64")
        .expect("mapdelete_fast64")
        .entry;
    let code = bin.function_code(deleter).expect("deleter code");
    let call = Decoder::with_ip(64, code, deleter.entry, DecoderOptions::NONE)
        .into_iter()
        .find(|i| i.flow_control() == FlowControl::Call && i.near_branch_target() == target)
        .unwrap_or_else(|| panic!("{v}: deleter calls mapdelete_fast64"));
    let want = source_line(src, "LINE:delete");
    assert_eq!(
        sym.frame(call.ip()).expect("frame").line,
        want,
        "{v}: call site line"
    );
    let stack = sym.stack(&[target + 6, call.next_ip()]);
    let inner = stack[0].as_ref().expect("inner frame");
    assert_eq!(inner.function, "runtime.mapdelete_fast64");
    assert!(
        inner.file.ends_with(".go"),
        "{v}: runtime file {}",
        inner.file
    );
    let outer = stack[1].as_ref().expect("outer frame");
    assert_eq!(
        (outer.function.as_str(), outer.line),
        ("main.deleter", want),
        "{v}: caller frame"
    );
    assert_eq!(
        outer.to_string(),
        format!("main.deleter {}:{want}", outer.file)
    );
    assert!(sym.frame(0x10).is_none(), "{v}: address outside text");
}

#[test]
fn symbolizer_maps_pcs_to_function_file_and_line() {
    for v in VERSIONS {
        check_symbolizer(v, &open(v, "racy/delete_assign"));
    }
}

#[test]
fn stripped_and_pie_binaries_work() {
    for v in VERSIONS {
        let plain = open(v, "racy/delete_assign");
        let plain_plan = plain.probe_plan().expect("plan");
        for variant in ["stripped/delete_assign", "pie/delete_assign"] {
            let bin = open(v, variant);
            assert_eq!(bin.go_version(), plain.go_version(), "{v} {variant}");
            assert_eq!(bin.is_pie(), variant.starts_with("pie"), "{v} {variant}");
            assert_eq!(
                bin.is_stripped(),
                variant.starts_with("stripped"),
                "{v} {variant}"
            );
            check_symbolizer(v, &bin);
            let plan = bin.probe_plan().expect("plan");
            let data = std::fs::read(bin.path()).expect("read");
            let syms = |p: &mapguard_enforcer::goelf::ProbePlan| {
                p.probes
                    .iter()
                    .map(|p| p.symbol.clone())
                    .collect::<Vec<_>>()
            };
            assert_eq!(
                syms(&plan),
                syms(&plain_plan),
                "{v} {variant}: same functions planned"
            );
            for p in &plan.probes {
                assert_eq!(
                    p.handling,
                    StepHandling::Emulated,
                    "{v} {variant} {}",
                    p.symbol
                );
                assert_eq!(
                    data[p.file_offset as usize], 0x55,
                    "{v} {variant} {}",
                    p.symbol
                );
            }
        }
    }
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
fn non_go_non_elf_and_foreign_binaries_are_refused_clearly() {
    let err = GoBinary::open(Path::new("/bin/true")).expect_err("/bin/true is not Go");
    assert!(matches!(err, GoElfError::NotGo { .. }), "{err}");
    assert!(err.to_string().contains("not a Go binary"), "{err}");

    let text = repo_root().join("tests/go/go.mod");
    let err = GoBinary::open(&text).expect_err("text file");
    assert!(matches!(err, GoElfError::NotElf { .. }), "{err}");
    assert!(err.to_string().contains("not an ELF file"), "{err}");

    for v in VERSIONS {
        let err = GoBinary::open(&prog(v, "arm64/delete_assign")).expect_err("arm64 build");
        assert!(matches!(err, GoElfError::NotX86_64 { .. }), "{v}: {err}");
        assert!(err.to_string().contains("only x86-64"), "{err}");
    }

    let err = GoBinary::open(Path::new("/nonexistent/mapguard")).expect_err("missing file");
    assert!(matches!(err, GoElfError::Io { .. }), "{err}");

    // A truncated Go binary: still ELF magic, but the parser gives up cleanly.
    let data = std::fs::read(prog("go1.23", "racy/delete_assign")).expect("read");
    let err =
        GoBinary::from_bytes(Path::new("truncated"), data[..200].to_vec()).expect_err("truncated");
    assert!(
        matches!(err, GoElfError::BadElf { .. } | GoElfError::NotGo { .. }),
        "{err}"
    );
}

#[test]
fn unsupported_go_versions_are_refused_not_guessed() {
    for (v, fake) in [("go1.23", "go1.22"), ("go1.24", "go1.25")] {
        let mut data = std::fs::read(prog(v, "racy/delete_assign")).expect("read");
        let real = toolchain_version(v);
        // Rewrite the version in the build info, keeping its length.
        let fake_version = format!("{fake}{}", &real[fake.len()..]);
        // The inline version string follows the 32-byte header and a one-byte length.
        let magic = b"\xff Go buildinf:";
        let at = data
            .windows(magic.len())
            .position(|w| w == magic)
            .expect("build info in binary")
            + 33;
        assert_eq!(
            &data[at..at + real.len()],
            real.as_bytes(),
            "version string in the build info"
        );
        data[at..at + real.len()].copy_from_slice(fake_version.as_bytes());
        let err = GoBinary::from_bytes(Path::new("faked"), data).expect_err("faked version");
        match &err {
            GoElfError::UnsupportedGoVersion {
                found, supported, ..
            } => {
                assert_eq!(found, &fake_version);
                assert!(supported.starts_with("1.23.x, 1.24.x"), "{supported}");
            }
            other => panic!("{v}: expected UnsupportedGoVersion, got {other}"),
        }
        assert!(
            err.to_string()
                .contains("supported Go releases: 1.23.x, 1.24.x"),
            "{err}"
        );
    }
}

/// Removes the section header table reference from an ELF64 header
/// (`e_shoff`, `e_shnum`, `e_shstrndx`), as some packers and sstrip do.
fn drop_section_headers(data: &mut [u8]) {
    data[0x28..0x30].fill(0);
    data[0x3c..0x40].fill(0);
}

#[test]
fn binaries_without_section_headers_are_found_by_magic() {
    for v in VERSIONS {
        let mut data = std::fs::read(prog(v, "stripped/delete_assign")).expect("read");
        drop_section_headers(&mut data);
        let bin = GoBinary::from_bytes(Path::new("no-sections"), data.clone())
            .expect("analysable without sections");
        assert_eq!(bin.go_version().raw, toolchain_version(v));
        let plan = bin.probe_plan().expect("plan");
        let del = plan
            .get("runtime.mapdelete_fast64")
            .expect("mapdelete_fast64 planned");
        assert_eq!(data[del.file_offset as usize], 0x55, "{v}");
        assert!(bin.symbolizer().function("main.deleter").is_some(), "{v}");
    }
}

#[test]
fn missing_pclntab_is_reported() {
    let mut data = std::fs::read(prog("go1.23", "stripped/delete_assign")).expect("read");
    drop_section_headers(&mut data);
    // Destroy every copy of the pclntab header.
    let magic = [0xf1, 0xff, 0xff, 0xff, 0, 0, 1, 8];
    while let Some(at) = data.windows(8).position(|w| w == magic) {
        data[at] = 0;
    }
    let err = GoBinary::from_bytes(Path::new("no-pclntab"), data).expect_err("no pclntab");
    assert!(matches!(err, GoElfError::NoPclntab { .. }), "{err}");
    assert!(
        err.to_string().contains("without a usable pclntab"),
        "{err}"
    );
}

#[test]
fn pie_load_bias_maps_elf_addresses_to_the_running_process() {
    for v in VERSIONS {
        let path = prog(v, "pie/mutex");
        let bin = GoBinary::open(&path).expect("open PIE");
        assert!(bin.is_pie());
        assert_eq!(
            bin.link_base(),
            0x400000,
            "{v}: Go links PIE executables at 0x400000"
        );
        let mut child = Command::new(&path)
            .args(["-duration", "3s"])
            .spawn()
            .expect("start PIE program");
        std::thread::sleep(std::time::Duration::from_millis(200));
        let bias = bin
            .load_bias_of(child.id(), &path)
            .expect("PIE mapping in /proc/PID/maps");
        assert_ne!(bias, 0, "{v}: ASLR moved the PIE executable");
        // The running code at vaddr + bias is the code in the file.
        let plan = bin.probe_plan().expect("plan");
        let del = plan.get("runtime.mapdelete_fast64").expect("planned");
        let mut buf = [0u8; 16];
        let read = {
            use std::os::unix::fs::FileExt;
            File::open(format!("/proc/{}/mem", child.id()))
                .and_then(|f| f.read_exact_at(&mut buf, del.func_vaddr + bias))
        };
        child.kill().expect("kill");
        child.wait().expect("wait");
        read.expect("read the child's code from /proc/PID/mem");
        let file = std::fs::read(&path).expect("read");
        let at = (del.file_offset - del.insn_offset) as usize;
        assert_eq!(
            &buf[..],
            &file[at..at + 16],
            "{v}: code at vaddr+bias matches the file"
        );
    }
}

#[test]
fn inlined_calls_symbolize_to_the_inlined_function_and_its_call_site() {
    let src = "clean/channel_handoff/main.go";
    for v in VERSIONS {
        for variant in ["clean/channel_handoff", "stripped/channel_handoff"] {
            let bin = open(v, variant);
            let sym = bin.symbolizer();
            assert!(sym.has_inline_info(), "{v} {variant}: go:func.* located");
            assert!(
                sym.function("main.put").is_none(),
                "{v} {variant}: main.put is inlined, not a function"
            );
            let stage = sym.function("main.stage").expect("main.stage");
            let target = sym
                .function("runtime.mapassign_fast64")
                .expect("mapassign_fast64")
                .entry;
            let code = bin.function_code(stage).expect("code");
            let call = Decoder::with_ip(64, code, stage.entry, DecoderOptions::NONE)
                .into_iter()
                .find(|i| i.flow_control() == FlowControl::Call && i.near_branch_target() == target)
                .unwrap_or_else(|| panic!("{v} {variant}: main.stage calls mapassign_fast64"));
            let frames = sym.frames(call.ip());
            let got: Vec<(&str, u32)> = frames
                .iter()
                .map(|f| (f.function.as_str(), f.line))
                .collect();
            assert_eq!(
                got,
                vec![
                    ("main.put", source_line(src, "LINE:put")),
                    ("main.stage", source_line(src, "LINE:call-put"))
                ],
                "{v} {variant}: inline-expanded frames"
            );
            assert!(
                frames.iter().all(|f| f.file.ends_with(src)),
                "{v} {variant}: {frames:?}"
            );
            assert_eq!(
                sym.frame(call.ip()).expect("frame").function,
                "main.put",
                "{v}: innermost frame"
            );
            // A stack walk: the return address into main.stage expands the same way.
            let stack = sym.stack(&[target, call.next_ip(), 0x10]);
            assert_eq!(stack.len(), 4, "{v} {variant}: {stack:?}");
            assert_eq!(
                stack[1].as_ref().expect("inlined frame").function,
                "main.put"
            );
            assert_eq!(
                stack[2].as_ref().expect("caller frame").function,
                "main.stage"
            );
            assert_eq!(stack[3], Err(0x10), "unknown PC kept, not dropped");
        }
    }
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
fn version_contradicting_the_linked_runtime_is_refused() {
    // A noswissmap build whose recorded experiment is garbled: the version
    // now implies swiss maps, but the runtime has the classic functions.
    let mut data = std::fs::read(prog("go1.24", "noswiss/delete_assign")).expect("read");
    let (real, fake) = (b"X:noswissmap", b"X:noswissmaq");
    let info = data
        .windows(14)
        .position(|w| w == b"\xff Go buildinf:")
        .expect("build info");
    let at = info
        + data[info..]
            .windows(real.len())
            .position(|w| w == real)
            .expect("experiment in build info");
    data[at..at + real.len()].copy_from_slice(fake);
    let err = GoBinary::from_bytes(Path::new("garbled"), data).expect_err("mismatch");
    match &err {
        GoElfError::MapImplMismatch {
            expected, found, ..
        } => {
            assert_eq!((*expected, *found), (MapImpl::Swiss, MapImpl::Classic));
        }
        other => panic!("expected MapImplMismatch, got {other}"),
    }
    assert!(err.to_string().contains("refusing to guess"), "{err}");
}
