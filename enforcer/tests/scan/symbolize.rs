//! Symbolization: pclntab functions, files and lines (plain, stripped, PIE,
//! inlined calls) and the PIE load bias against a running process.

use std::fs::File;
use std::process::Command;

use iced_x86::{Decoder, DecoderOptions, FlowControl};
use mapguard_enforcer::binary::goelf::{GoBinary, ProbePlan, StepHandling};

use super::{open, prog, source_line, versions};

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
    let call = Decoder::with_ip(64, &code, deleter.entry, DecoderOptions::NONE)
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
    for &v in versions() {
        check_symbolizer(v, &open(v, "racy/delete_assign"));
    }
}

#[test]
fn stripped_and_pie_binaries_work() {
    for &v in versions() {
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
            let syms = |p: &ProbePlan| {
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
fn pie_load_bias_maps_elf_addresses_to_the_running_process() {
    for &v in versions() {
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
    for &v in versions() {
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
            let call = Decoder::with_ip(64, &code, stage.entry, DecoderOptions::NONE)
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
