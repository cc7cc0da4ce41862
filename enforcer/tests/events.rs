//! Event decoding, symbolization, audit-mode deduplication and the stderr
//! summary, on kernel-format records built against a real Go binary (no BPF
//! needed).

mod support;

use std::{
    io::Write,
    sync::{Arc, Mutex},
};

use mapguard_common::{MAX_FRAMES, Violation, action, detector, kind, op};
use mapguard_enforcer::{
    binary::goelf::GoBinary,
    binary::target::BinaryTarget,
    report::events::{Reporter, decode, summary},
};
use support::program;

/// A `Write` the test can read back.
#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("sink lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn bytes_of(v: &Violation) -> Vec<u8> {
    // SAFETY: `Violation` is plain `repr(C)` data without padding.
    unsafe {
        std::slice::from_raw_parts((v as *const Violation).cast::<u8>(), size_of::<Violation>())
    }
    .to_vec()
}

/// A PC inside `function` (its entry + 1, a return-address-like PC).
fn pc_in(binary: &GoBinary, function: &str) -> u64 {
    binary
        .symbolizer()
        .function(function)
        .unwrap_or_else(|| panic!("{function} not in the test binary"))
        .entry
        + 1
}

fn violation(binary: &GoBinary, action: u8) -> Violation {
    let mut stack = [0u64; MAX_FRAMES];
    stack[0] = pc_in(binary, "runtime.mapdelete_fast64");
    stack[1] = pc_in(binary, "main.deleter");
    let mut conflicting_stack = [0u64; MAX_FRAMES];
    conflicting_stack[0] = pc_in(binary, "runtime.mapassign_fast64");
    conflicting_stack[1] = pc_in(binary, "main.assigner");
    Violation {
        kind: kind::CONCURRENT_WRITE,
        action,
        detected_by: detector::WRITING_FLAG,
        op: op::DELETE,
        conflicting_op: op::ASSIGN,
        depth: 2,
        conflicting_depth: 2,
        message: 0,
        pid: std::process::id(),
        tid: 1,
        binary_id: 0,
        point: 0,
        ts: 0,
        map: 0x00c0_0001_2000,
        g: 0x00c0_0000_7000,
        goid: 7,
        conflicting_g: 0x00c0_0000_8000,
        conflicting_goid: 6,
        stack,
        conflicting_stack,
    }
}

#[test]
fn records_are_symbolized_deduplicated_and_summarized() {
    let path = program("go1.23", "racy", "delete_assign");
    let binary = GoBinary::open(&path).expect("open test binary");
    let target = BinaryTarget::analyse(&path, 0, Default::default()).expect("analyse test binary");
    let sink = Sink::default();
    let mut reporter = Reporter::new(Box::new(sink.clone()));
    reporter.add_binary(std::sync::Arc::new(target));

    let record = bytes_of(&violation(&binary, action::AUDIT));
    assert!(
        decode(&record[..10]).is_err(),
        "a truncated record must be refused"
    );
    let first = reporter.handle(&record).expect("handle");
    assert!(!first.repeat, "the first is reported");
    assert!(
        first
            .go_version
            .as_deref()
            .is_some_and(|v| v.starts_with("go1."))
    );
    assert_eq!(first.kind.as_str(), "concurrent_write");
    assert_eq!(
        (first.op.as_str(), first.conflicting_op.as_str()),
        ("delete", "assign")
    );
    assert_eq!((first.goroutine, first.conflicting_goroutine), (7, 6));
    assert_eq!(first.map.as_deref(), Some("0xc000012000"));
    let text = |stack: &[mapguard_api::frame::Frame]| -> Vec<String> {
        stack.iter().map(ToString::to_string).collect()
    };
    let (stack, conflicting_stack) = (text(&first.stack), text(&first.conflicting_stack));
    assert!(
        stack[0].starts_with("runtime.mapdelete_fast64 "),
        "{stack:?}"
    );
    assert!(stack[1].starts_with("main.deleter ") && stack[1].contains("main.go:"));
    assert!(conflicting_stack[1].starts_with("main.assigner "));
    let line = summary(&first);
    assert!(
        line.starts_with("mapguard: concurrent_write on map 0xc000012000 in pid ")
            && line.contains("goroutine 7 delete at main.deleter main.go:")
            && line.contains("while goroutine 6 assign at main.assigner main.go:")
            && line.ends_with("— audit"),
        "{line}"
    );
    // Identical audit violations are counted, not repeated (but handed
    // back, marked, for counting).
    for _ in 0..5 {
        assert!(reporter.handle(&record).expect("handle").repeat);
    }
    // Stop/kill violations are always reported.
    let stopped = bytes_of(&violation(&binary, action::STOP));
    assert_eq!(
        reporter.handle(&stopped).expect("handle").action.as_str(),
        "stopped"
    );
    reporter.finish().expect("finish");

    let text = String::from_utf8(sink.0.lock().expect("sink lock").clone()).expect("utf-8");
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert_eq!(lines.len(), 3, "two violations and a summary: {text}");
    assert_eq!(lines[0]["event"], "violation");
    assert_eq!(lines[0]["pod"], serde_json::Value::Null);
    let summary = &lines[2];
    assert_eq!(summary["event"], "summary");
    assert_eq!(summary["violations"], 7);
    assert_eq!(summary["repeated"][0]["count"], 7, "{summary}");
}
