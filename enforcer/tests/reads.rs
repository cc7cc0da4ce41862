//! A map read is one probe hit on every Go release, and a report names the
//! reader's own line, also where the compiler's entry point only calls
//! the function doing the work (Go 1.27's `mapaccess1*` call
//! `mapaccess2*`; every release's `mapaccess*_fat` call `mapaccess1` or
//! `mapaccess2`). Real Go programs of every release, real BPF.

mod support;

use std::io::Write as _;

use support::{exec, exec_with, markers, parallel, program, require_bpf, versions};

/// Reads `clean/value_reads` does through each of its ten entry points.
const READS_EACH: u64 = 20_000;
const ENTRY_POINTS: u64 = 10;

/// The `read=N` count of the session's closing "probe hits by map
/// function" log line (`by_op=read=N assign=M ...`).
fn read_hits(stderr: &str) -> Option<u64> {
    let line = stderr
        .lines()
        .find(|l| l.contains("probe hits by map function"))?;
    let by_op = line.split("by_op=").nth(1)?.split(" hits=").next()?;
    by_op
        .split_whitespace()
        .find_map(|op| op.strip_prefix("read=")?.parse().ok())
}

#[test]
fn a_read_is_one_probe_hit_on_every_release() {
    if !require_bpf("a_read_is_one_probe_hit_on_every_release") {
        return;
    }
    let n = READS_EACH.to_string();
    let runs = parallel(versions(), |version| {
        exec_with(
            "audit",
            &["--log", "info"],
            &program(version, "clean", "value_reads"),
            &["-n", &n],
        )
    });
    let reads = READS_EACH * ENTRY_POINTS;
    for (version, run) in versions().iter().zip(&runs) {
        let stderr = run.stderr();
        assert_eq!(run.code(), 0, "{version}: status; stderr:\n{stderr}");
        let stdout = String::from_utf8_lossy(&run.output.stdout);
        assert!(
            stdout.contains(&format!("\"reads\":{reads}")),
            "{version}: {stdout}"
        );
        let hits = read_hits(&stderr)
            .unwrap_or_else(|| panic!("{version}: no read hits logged; stderr:\n{stderr}"));
        // The program's own reads, plus the few the runtime and the flag
        // package do; a wrapper probed beside its worker would add up to
        // `reads` more (the _fat entry points alone 2 × READS_EACH).
        assert!(
            (reads..reads + READS_EACH / 4).contains(&hits),
            "{version}: {hits} read hits for {reads} reads; stderr:\n{stderr}"
        );
        assert!(run.violations().is_empty(), "{version}: {:?}", run.events);
    }
}

#[test]
fn a_read_through_a_wrapper_is_reported_at_the_readers_line() {
    if !require_bpf("a_read_through_a_wrapper_is_reported_at_the_readers_line") {
        return;
    }
    let name = "delete_value_read";
    let audit = |version: &str| {
        exec(
            "audit",
            &program(version, "racy", name),
            &["-duration", "5s"],
        )
    };
    let mut runs = parallel(versions(), |version| audit(version));
    // A run where the two goroutines never overlapped (two shared cores) is
    // run once more; that run must see the race.
    for (version, run) in versions().iter().zip(runs.iter_mut()) {
        if run.violations().is_empty() {
            let _ = writeln!(
                std::io::stderr(),
                "{version}/{name}: race not seen (status {}); running it again",
                run.code()
            );
            *run = audit(version);
        }
    }
    let marks = markers(name);
    let line = |tag: &str| {
        marks
            .iter()
            .find(|(t, _)| t == tag)
            .map(|(_, l)| *l)
            .unwrap_or_else(|| panic!("{name} marks its {tag}"))
    };
    let (read, delete) = (line("read"), line("delete"));
    for (version, run) in versions().iter().zip(&runs) {
        let stderr = run.stderr();
        let violations = run.violations();
        assert!(
            !violations.is_empty(),
            "{version}: no violation; stderr:\n{stderr}"
        );
        for v in &violations {
            let ctx = format!("{version}: {v}");
            assert_eq!(v["op"], "read", "{ctx}");
            let frames: Vec<&str> = v["stack"]
                .as_array()
                .expect("stack")
                .iter()
                .filter_map(|f| f.as_str())
                .collect();
            assert!(
                frames.iter().any(|f| f.starts_with("main.reader ")
                    && f.ends_with(&format!("/racy/{name}/main.go:{read}"))),
                "the reader's line: {ctx}"
            );
            if *version == "go1.27" && v["detected_by"] == "writing_flag" {
                // Caught by the worker's probe, one frame below the
                // wrapper the program called.
                assert!(
                    frames[0].starts_with("runtime.mapaccess2_fast64 ")
                        && frames[1].starts_with("runtime.mapaccess1_fast64 "),
                    "worker, then wrapper: {ctx}"
                );
            }
            let conflicting = v["conflicting_stack"].to_string();
            if v["kind"] == "delete_during_read" {
                assert!(
                    conflicting.contains(&format!("main.go:{delete}")),
                    "the delete's line: {ctx}"
                );
            }
        }
        // The call site the summary names (what records and metrics use):
        // the reader's line, not a runtime frame.
        assert!(
            stderr.contains(&format!("read at main.reader main.go:{read}")),
            "{version}: call site in the summary; stderr:\n{stderr}"
        );
    }
}
