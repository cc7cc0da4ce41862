//! The detection matrix: every racy test program of every Go release under
//! each coverage setting (`full`, `sampled`, `light`) in kill mode, and
//! every clean program silent under each; docs/enforcer.md's matrix is rendered
//! from [`MATRIX`] and checked here. Plus sampled coverage's two promises:
//! a race that starts while the probes are off is caught within one
//! period, and the duty cycle chosen keeps the estimated cost within the
//! budget.

mod support;

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use support::{CLEAN, RACY, exec_with, parallel_limited, program, require_bpf, versions};

/// What each coverage setting gives for a racy program, in the words of docs/enforcer.md.
const FULL: &str = "caught, both call sites";
const SAMPLED: &str = "caught; both call sites in a window, one between";
const LIGHT: &str = "caught by the runtime's check, one call site";

/// The expected detection matrix: program, what it does, then the cell for
/// each of [`COVERAGES`]. Under `writes` a read racing a write is seen by
/// the runtime's check only, as under `light`.
const MATRIX: &[(&str, &str, [&str; 4])] = &[
    (
        "clear_writes",
        "clear vs assign",
        [FULL, FULL, SAMPLED, LIGHT],
    ),
    (
        "delete_assign",
        "delete vs assign",
        [FULL, FULL, SAMPLED, LIGHT],
    ),
    (
        "delete_delete",
        "delete vs delete",
        [FULL, FULL, SAMPLED, LIGHT],
    ),
    (
        "delete_grow",
        "delete vs a growing map",
        [FULL, FULL, SAMPLED, LIGHT],
    ),
    (
        "delete_range",
        "delete during range",
        [FULL, LIGHT, SAMPLED, LIGHT],
    ),
    (
        "delete_read",
        "delete during reads",
        [FULL, LIGHT, SAMPLED, LIGHT],
    ),
    (
        "int32_keys",
        "delete vs assign, int32 keys",
        [FULL, FULL, SAMPLED, LIGHT],
    ),
    (
        "string_keys",
        "delete vs assign, string keys",
        [FULL, FULL, SAMPLED, LIGHT],
    ),
    (
        "struct_keys",
        "delete vs assign, struct keys",
        [FULL, FULL, SAMPLED, LIGHT],
    ),
];

const COVERAGES: [&str; 4] = ["full", "writes", "sampled", "light"];

/// The detection matrix of docs/enforcer.md.
fn markdown() -> String {
    let mut out = String::from("| racy program | what races |");
    for c in COVERAGES {
        out.push_str(&format!(" `{c}` |"));
    }
    out.push_str("\n|---|---|");
    out.push_str(&"---|".repeat(COVERAGES.len()));
    out.push('\n');
    for (name, what, cells) in MATRIX {
        out.push_str(&format!("| `{name}` | {what} | {} |\n", cells.join(" | ")));
    }
    out.push_str(&format!(
        "| every clean program ({}) | nothing |{}\n",
        CLEAN.len(),
        " silent |".repeat(COVERAGES.len())
    ));
    out
}

fn has_frame(stack: &Value, needle: &str) -> bool {
    stack.as_array().is_some_and(|s| {
        s.iter()
            .any(|f| f.as_str().is_some_and(|f| f.contains(needle)))
    })
}

/// Checks one kill-mode run against its matrix cell.
fn check_cell(run: &support::Run, version: &str, name: &str, cell: &str) {
    let stderr = run.stderr();
    let ctx = format!("{version}/{name} ({cell}): status {}\n{stderr}", run.code());
    assert_eq!(run.code(), 137, "not killed: {ctx}");
    assert!(
        !stderr.contains("fatal error"),
        "the runtime printed first: {ctx}"
    );
    let violations = run.violations();
    let v = violations
        .first()
        .unwrap_or_else(|| panic!("no report: {ctx}"));
    assert_eq!(v["action"], "killed", "{ctx}");
    let file = format!("/racy/{name}/main.go:");
    assert!(has_frame(&v["stack"], &file), "own call site: {v}\n{ctx}");
    let crash_path =
        ["runtime_fatal", "runtime_throw"].contains(&v["detected_by"].as_str().unwrap_or(""));
    let one_sided = v["conflicting_stack"].as_array().is_some_and(Vec::is_empty);
    match cell {
        // Only the crash path saw it (under `light`, between `sampled`'s
        // windows, or a read under `writes`): the runtime found the race.
        LIGHT | SAMPLED if crash_path && one_sided => {
            // Under `light` no probe saw the map; under `sampled` the
            // reporting side's operation may have entered in a window
            // (then its map is known) while the other side's fell between.
            if cell == LIGHT {
                assert!(v["map"].is_null(), "the map is not known: {v}");
            }
            assert_ne!(
                v["op"], "unknown",
                "the operation is named from the stack: {v}"
            );
        }
        LIGHT => panic!("light coverage can only report from the crash path: {ctx}"),
        _ => {
            assert!(
                has_frame(&v["conflicting_stack"], &file),
                "the other call site: {v}\n{ctx}"
            );
            assert_ne!(v["goroutine"], v["conflicting_goroutine"], "{v}");
        }
    }
}

#[test]
fn docs_enforcer_md_has_the_detection_matrix() {
    let page = std::fs::read_to_string(support::workspace().join("docs/enforcer.md"))
        .expect("docs/enforcer.md");
    let table = markdown();
    assert!(
        page.contains(&table),
        "docs/enforcer.md's detection matrix differs from enforcer/tests/coverage.rs; replace it with:\n{table}"
    );
    let listed: Vec<&str> = MATRIX.iter().map(|(n, _, _)| *n).collect();
    assert_eq!(listed, RACY, "the matrix has a row per racy program");
}

#[test]
fn every_racy_program_is_caught_under_each_coverage_as_the_matrix_says() {
    if !require_bpf("every_racy_program_is_caught_under_each_coverage_as_the_matrix_says") {
        return;
    }
    let cases: Vec<(&str, usize, usize)> = versions()
        .iter()
        .flat_map(|v| {
            (0..MATRIX.len()).flat_map(move |row| (0..COVERAGES.len()).map(move |c| (*v, row, c)))
        })
        .collect();
    let run = |(version, row, c): &(&str, usize, usize)| {
        exec_with(
            "kill",
            &["--coverage", COVERAGES[*c]],
            &program(version, "racy", MATRIX[*row].0),
            &["-duration", "20s"],
        )
    };
    let mut runs = parallel_limited(&cases, 12, run);
    // The known blind spot of the entry check (docs/enforcer.md): a run the enforcer
    // did not see at all is run once more, loudly.
    for (case, r) in cases.iter().zip(runs.iter_mut()) {
        if r.code() != 137 && r.violations().is_empty() {
            eprintln!("{case:?}: not seen (status {}), running it again", r.code());
            *r = run(case);
        }
    }
    for ((version, row, c), r) in cases.iter().zip(&runs) {
        check_cell(r, version, MATRIX[*row].0, MATRIX[*row].2[*c]);
    }
}

#[test]
fn clean_programs_are_silent_under_every_coverage() {
    if !require_bpf("clean_programs_are_silent_under_every_coverage") {
        return;
    }
    let cases: Vec<(&str, &str, &str)> = versions()
        .iter()
        .flat_map(|v| {
            CLEAN
                .iter()
                .flat_map(move |n| COVERAGES.iter().map(move |c| (*v, *n, *c)))
        })
        .collect();
    let runs = parallel_limited(&cases, 16, |(version, name, coverage)| {
        exec_with(
            "kill",
            &[
                "--coverage",
                coverage,
                "--sample-on",
                "100ms",
                "--sample-period",
                "300ms",
            ],
            &program(version, "clean", name),
            &["-duration", "1s"],
        )
    });
    for ((version, name, coverage), r) in cases.iter().zip(&runs) {
        assert_eq!(
            r.code(),
            0,
            "{version}/{name} under {coverage}: status; stderr:\n{}",
            r.stderr()
        );
        assert!(
            r.violations().is_empty(),
            "{version}/{name} under {coverage}: false positive: {:?}",
            r.violations()
        );
    }
}

/// A race that starts while the probes are off is caught within one
/// period: by the next on-window's probes (both call sites), or sooner by
/// the crash-path probe, which stays on, when the Go runtime's own check
/// notices it first. `delete_assign -wait-signal` races only once told to;
/// it is told during an off time.
#[test]
fn sampled_coverage_catches_a_race_that_starts_while_off_within_one_period() {
    if !require_bpf("sampled_coverage_catches_a_race_that_starts_while_off_within_one_period") {
        return;
    }
    let period = Duration::from_secs(3);
    let runs = parallel_limited(versions(), 8, |version| {
        let events = std::env::temp_dir().join(format!(
            "mapguard-sampled-{}-{version}.jsonl",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&events);
        let exec = Command::new(support::enforcer())
            .args(["exec", "--mode", "kill", "--coverage", "sampled"])
            .args(["--sample-on", "300ms", "--sample-period", "3s", "--events"])
            .arg(&events)
            .arg("--")
            .arg(program(version, "racy", "delete_assign"))
            .args(["-duration", "30s", "-wait-signal"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start exec");
        // Once the first window (its first 300 ms) has closed, its sampling
        // event is written and the probes are off until 3 s.
        let deadline = Instant::now() + Duration::from_secs(60);
        while !std::fs::read_to_string(&events).is_ok_and(|t| t.contains("\"sampling\"")) {
            assert!(Instant::now() < deadline, "{version}: no sampling event");
            std::thread::sleep(Duration::from_millis(10));
        }
        let pid = support::children_of(exec.id())
            .first()
            .copied()
            .expect("the program");
        let told = Instant::now();
        // SAFETY: signals the test's own grandchild: start racing.
        unsafe { libc::kill(pid as i32, libc::SIGUSR1) };
        let out = exec.wait_with_output().expect("wait exec");
        let caught_after = told.elapsed();
        let text = std::fs::read_to_string(&events).unwrap_or_default();
        let _ = std::fs::remove_file(&events);
        (out, caught_after, text)
    });
    for (version, (out, caught_after, text)) in versions().iter().zip(&runs) {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(137), "{version}: {stderr}");
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("JSON line"))
            .collect();
        let sampling = lines
            .iter()
            .find(|e| e["event"] == "sampling")
            .unwrap_or_else(|| panic!("{version}: no sampling event: {text}"));
        assert_eq!(sampling["period_seconds"], 3.0, "{sampling}");
        assert!((sampling["duty_cycle"].as_f64().expect("duty") - 0.1).abs() < 1e-9);
        let v = lines
            .iter()
            .find(|e| e["event"] == "violation")
            .unwrap_or_else(|| panic!("{version}: no violation: {text}"));
        if v["detected_by"] == "writing_flag" {
            assert!(
                has_frame(&v["conflicting_stack"], "/racy/delete_assign/main.go:"),
                "{v}"
            );
        } else {
            assert_eq!(v["detected_by"], "runtime_fatal", "{v}");
        }
        // Told just after the first window closed (0.3 s), the next one
        // opens at 3 s: caught then, within one period of being told.
        assert!(
            *caught_after <= period,
            "{version}: caught {caught_after:?} after the race started (period {period:?})"
        );
    }
}

/// Under the cost budget, a busy program's probes are on only the share
/// of the time the budget allows, and the estimate is written as an event.
#[test]
fn sampled_coverage_sizes_its_windows_to_the_cost_budget() {
    if !require_bpf("sampled_coverage_sizes_its_windows_to_the_cost_budget") {
        return;
    }
    let version = *versions().last().expect("a release");
    let run = exec_with(
        "audit",
        &[
            "--coverage",
            "sampled",
            "--cost-budget",
            "2%",
            "--sample-on",
            "300ms",
        ],
        &program(version, "bench", "mapheavy"),
        &["-n", "40000000"],
    );
    assert_eq!(run.code(), 0, "{}", run.stderr());
    let sampling: Vec<&Value> = run
        .events
        .iter()
        .filter(|e| e["event"] == "sampling")
        .collect();
    // The latest estimate (a first window on a crowded machine may close
    // before the program has started its loop).
    let last = sampling
        .last()
        .unwrap_or_else(|| panic!("no sampling event: {}", run.stderr()));
    let cost = last["cost_while_on"].as_f64().expect("cost");
    let duty = last["duty_cycle"].as_f64().expect("duty");
    // mapheavy does nothing but map calls: the probes are most of its time.
    assert!(cost > 0.3, "{last}");
    assert!(
        (duty - 0.02 / cost).abs() < 1e-6,
        "duty = budget / cost: {last}"
    );
    assert!(
        last["estimated_cost"].as_f64().expect("estimate") <= 0.0200001,
        "{last}"
    );
    assert!(run.violations().is_empty(), "{:?}", run.violations());
}
