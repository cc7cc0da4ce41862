//! The enforcer against real Go programs built by every Go release of the
//! release table, loading BPF for real: every racy program is reported in
//! audit mode (plain build), killed before the runtime's own `fatal error`
//! in kill mode (stripped build) and left stopped in stop mode (PIE build);
//! every clean program runs to completion with no report.

mod support;

use std::io::Write as _;

use serde_json::Value;
use support::{
    CLEAN, RACY, exec, markers, markers_of, parallel, proc_state, program, require_bpf, versions,
};

/// Kinds a racy program may legitimately be reported with: a write racing a
/// write may be classified as racing a grow, and a reader may be caught
/// during the writer's delete or its refill.
fn accepted_kinds(name: &str) -> &'static [&'static str] {
    match name {
        "delete_read" => &["delete_during_read", "write_during_read"],
        "delete_range" => &["delete_during_iteration", "write_during_iteration"],
        _ => &["concurrent_write", "released_bucket_write"],
    }
}

fn racy_cases() -> Vec<(&'static str, &'static str)> {
    versions()
        .iter()
        .flat_map(|v| RACY.iter().map(move |n| (*v, *n)))
        .collect()
}

fn has_frame(stack: &Value, needle: &str) -> bool {
    stack
        .as_array()
        .expect("stack is an array")
        .iter()
        .any(|f| f.as_str().is_some_and(|f| f.contains(needle)))
}

/// Both sides of the conflict are present, distinct and symbolized down to
/// the program's own `main.go:LINE` call sites.
fn check_report(v: &Value, version: &str, name: &str, action: &str) {
    let ctx = format!("{version}/{name}: {v}");
    let kind = v["kind"].as_str().expect("kind");
    assert!(
        accepted_kinds(name).contains(&kind),
        "unexpected kind in {ctx}"
    );
    assert_eq!(v["action"], action, "{ctx}");
    // The kind and the other side come from one version of the other
    // goroutine's record, even while it moves on to its next write.
    let other_op = v["conflicting_op"].as_str().expect("conflicting_op");
    let other_ops: &[&str] = if kind.starts_with("delete_during") {
        &["delete"]
    } else if kind.starts_with("write_during") {
        &["assign", "clear"]
    } else {
        &["delete", "assign", "clear"]
    };
    assert!(
        other_ops.contains(&other_op),
        "{kind} against a {other_op}: {ctx}"
    );
    let (g, cg) = (v["goroutine"].as_u64(), v["conflicting_goroutine"].as_u64());
    assert!(
        g.is_some_and(|g| g > 0) && cg.is_some_and(|g| g > 0),
        "goroutines missing in {ctx}"
    );
    assert_ne!(g, cg, "a goroutine cannot race with itself: {ctx}");
    assert!(
        v["map"]
            .as_str()
            .is_some_and(|m| m.starts_with("0x") && m != "0x0"),
        "{ctx}"
    );
    assert!(
        v["timestamp"]
            .as_str()
            .is_some_and(|t| t.starts_with("20") && t.ends_with('Z')),
        "{ctx}"
    );
    assert!(
        v["binary"].as_str().is_some_and(|b| b.ends_with(name)),
        "{ctx}"
    );
    assert!(v["pid"].as_u64().is_some_and(|p| p > 0), "{ctx}");
    assert!(
        v["pod"].is_null() && v["namespace"].is_null(),
        "outside Kubernetes: {ctx}"
    );

    let file = format!("/racy/{name}/main.go:");
    let marks = markers(name);
    let line_of = |tag: &str| marks.iter().find(|(t, _)| t == tag).map(|(_, l)| *l);
    // The detecting goroutine is at one of the marked operations.
    assert!(
        marks
            .iter()
            .any(|(_, line)| has_frame(&v["stack"], &format!("{file}{line}"))),
        "stack lacks a marked main.go line {marks:?}: {ctx}"
    );
    // The other goroutine is inside the program too.
    assert!(
        has_frame(&v["conflicting_stack"], &file),
        "conflicting stack lacks {file}: {ctx}"
    );
    if kind.starts_with("delete_during") {
        let line = line_of("delete").expect("program marks its delete");
        assert!(
            has_frame(&v["conflicting_stack"], &format!("{file}{line}")),
            "delete site missing: {ctx}"
        );
    }
    if let Some(line) = line_of("read").or(line_of("range")) {
        assert!(
            has_frame(&v["stack"], &format!("{file}{line}")),
            "reader site missing: {ctx}"
        );
    }
}

/// Runs that did not end as `expected` and reported nothing are reported
/// loudly and their program is run once more; that run must succeed, so a
/// program mapguard cannot catch at all still fails the test. Two causes:
/// - the known blind spot (docs/enforcer.md): both goroutines pass the entry check
///   and the runtime then aborts on a map the race corrupted ("bad map
///   state", a throw, not the probed `concurrent map` fatal). Seen once in
///   about 430 stop-mode runs here;
/// - the race never happened: with every program of every release running
///   at once on two cores, a program's two goroutines may never be on CPU
///   together before its time limit (it then exits 0, "survived", and the
///   runtime's own check saw nothing either; seen once in a CI run, with
///   190,000 clears and assigns of one go1.23 program in 5 s).
fn retry_unseen(
    cases: &[(&str, &str)],
    runs: &mut [support::Run],
    expected: i32,
    again: impl Fn(&str, &str) -> support::Run,
) {
    for ((version, name), run) in cases.iter().zip(runs.iter_mut()) {
        if run.code() != expected && run.violations().is_empty() {
            let _ = writeln!(
                std::io::stderr(),
                "{version}/{name}: race not seen (status {}); running it again:\n{}",
                run.code(),
                run.stderr()
            );
            *run = again(version, name);
        }
    }
}

#[test]
fn racy_programs_are_killed_before_the_runtime_reports() {
    if !require_bpf("racy_programs_are_killed_before_the_runtime_reports") {
        return;
    }
    let cases = racy_cases();
    let kill = |version: &str, name: &str| {
        exec(
            "kill",
            &program(version, "stripped", name),
            &["-duration", "20s"],
        )
    };
    let mut runs = parallel(&cases, |(version, name)| kill(version, name));
    retry_unseen(&cases, &mut runs, 137, kill);
    for ((version, name), run) in cases.iter().zip(&runs) {
        let stderr = run.stderr();
        assert_eq!(
            run.code(),
            137,
            "{version}/{name} not killed; stderr:\n{stderr}"
        );
        assert!(
            !stderr.contains("fatal error: concurrent map"),
            "{version}/{name}: the runtime reported the race before mapguard acted:\n{stderr}"
        );
        let violations = run.violations();
        assert!(
            !violations.is_empty(),
            "{version}/{name}: no violation event; stderr:\n{stderr}"
        );
        check_report(violations[0], version, name, "killed");
        assert!(
            stderr.contains("mapguard: ") && stderr.contains("— killed"),
            "{stderr}"
        );
    }
}

#[test]
fn racy_programs_are_reported_in_audit_mode() {
    if !require_bpf("racy_programs_are_reported_in_audit_mode") {
        return;
    }
    let cases = racy_cases();
    let audit = |version: &str, name: &str| {
        exec(
            "audit",
            &program(version, "racy", name),
            &["-duration", "5s"],
        )
    };
    let mut runs = parallel(&cases, |(version, name)| audit(version, name));
    // Audit lets the runtime abort (status 2) once the race happens; a run
    // that reported nothing and still ended 2 is a miss and fails below.
    retry_unseen(&cases, &mut runs, 2, audit);
    for ((version, name), run) in cases.iter().zip(&runs) {
        let violations = run.violations();
        assert!(
            !violations.is_empty(),
            "{version}/{name}: no violation in audit mode; stderr:\n{}",
            run.stderr()
        );
        // Audit never acts: the program ends on its own (the Go runtime's
        // abort, status 2, or its time limit, status 0).
        assert!(
            matches!(run.code(), 0 | 2),
            "{version}/{name}: status {}",
            run.code()
        );
        for v in &violations {
            check_report(v, version, name, "audit");
        }
        // Repeats are counted, not repeated: every reported line is distinct.
        let summary = run
            .events
            .iter()
            .find(|e| e["event"] == "summary")
            .expect("summary line");
        assert_eq!(
            summary["distinct"].as_u64(),
            Some(violations.len() as u64),
            "{summary}"
        );
    }
}

#[test]
fn racy_programs_are_left_stopped_in_stop_mode() {
    if !require_bpf("racy_programs_are_left_stopped_in_stop_mode") {
        return;
    }
    let cases = racy_cases();
    let stop = |version: &str, name: &str| {
        exec(
            "stop",
            &program(version, "pie", name),
            &["-duration", "20s"],
        )
    };
    let mut runs = parallel(&cases, |(version, name)| stop(version, name));
    retry_unseen(&cases, &mut runs, 147, stop);
    // Read every program's state, then end them all, before asserting: a
    // failed assertion must not leave stopped processes behind.
    let states: Vec<_> = runs
        .iter()
        .map(|run| {
            let pid = run.violations().first().and_then(|v| v["pid"].as_u64())? as u32;
            let state = proc_state(pid);
            // SAFETY: ends the stopped test program (kill(2) has no memory effects).
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            Some((pid, state))
        })
        .collect();
    for (((version, name), run), state) in cases.iter().zip(&runs).zip(states) {
        let stderr = run.stderr();
        assert_eq!(
            run.code(),
            147,
            "{version}/{name}: exec status; stderr:\n{stderr}\nevents: {:?}",
            run.events
        );
        let violations = run.violations();
        let (pid, state) =
            state.unwrap_or_else(|| panic!("{version}/{name}: no event; stderr:\n{stderr}"));
        check_report(violations[0], version, name, "stopped");
        assert_eq!(state, Some('T'), "{version}/{name}: pid {pid} not stopped");
        assert!(
            stderr.contains(&format!("kill -CONT {pid}")),
            "no resume hint:\n{stderr}"
        );
        assert!(!stderr.contains("fatal error: concurrent map"), "{stderr}");
    }
}

#[test]
fn clean_programs_run_to_completion_without_reports() {
    if !require_bpf("clean_programs_run_to_completion_without_reports") {
        return;
    }
    let cases: Vec<_> = versions()
        .iter()
        .flat_map(|v| CLEAN.iter().map(move |n| (*v, *n)))
        .collect();
    let runs = parallel(&cases, |(version, name)| {
        exec(
            "audit",
            &program(version, "clean", name),
            &["-duration", "1s"],
        )
    });
    for ((version, name), run) in cases.iter().zip(&runs) {
        assert_eq!(
            run.code(),
            0,
            "{version}/{name}: status; stderr:\n{}",
            run.stderr()
        );
        assert!(
            run.violations().is_empty(),
            "{version}/{name}: false positive: {:?}",
            run.violations()
        );
    }
}

#[test]
fn pie_programs_killed_are_reported_with_symbolized_stacks() {
    if !require_bpf("pie_programs_killed_are_reported_with_symbolized_stacks") {
        return;
    }
    // A PIE program is loaded at a random address and, in kill mode, is
    // gone before its report is written: the load bias must come from the
    // event, not from /proc/PID/maps.
    let runs = parallel(versions(), |version| {
        exec(
            "kill",
            &program(version, "pie", "delete_assign"),
            &["-duration", "20s"],
        )
    });
    for (version, run) in versions().iter().zip(&runs) {
        assert_eq!(run.code(), 137, "{version}: stderr:\n{}", run.stderr());
        let violations = run.violations();
        assert!(!violations.is_empty(), "{version}: {}", run.stderr());
        check_report(violations[0], version, "delete_assign", "killed");
    }
}

/// Every classic-map build of `corrupt/bad_map_state`: the releases whose
/// default maps are classic, and the `GOEXPERIMENT=noswissmap` builds.
fn classic_corruption_builds() -> Vec<(String, std::path::PathBuf)> {
    use mapguard_enforcer::binary::goelf::{MapImpl, release::RELEASES};
    let mut builds: Vec<_> = RELEASES
        .iter()
        .filter(|r| r.maps.imp == MapImpl::Classic)
        .map(|r| {
            let tag = format!("go{}", r.name());
            let path = program(&tag, "corrupt", "bad_map_state");
            (tag, path)
        })
        .collect();
    for t in support::toolchains() {
        if t.extra.as_deref() == Some("noswiss") {
            let path = program(&t.tag, "noswiss", "bad_map_state");
            builds.push((format!("{} noswissmap", t.tag), path));
        }
    }
    builds
}

/// The race the writing-flag check cannot see — both writers passed the
/// runtime's check, and the damage is found later by a grow — ends in
/// `runtime.throw("bad map state")`. The program leaves that damage
/// deterministically; mapguard's probe on runtime.throw reports it and
/// kills (or stops) the process before the runtime prints anything.
#[test]
fn a_corrupted_classic_map_is_caught_on_the_runtime_throw_path() {
    if !require_bpf("a_corrupted_classic_map_is_caught_on_the_runtime_throw_path") {
        return;
    }
    let builds = classic_corruption_builds();
    assert!(builds.len() >= 2, "classic builds: {builds:?}");
    let modes = ["kill", "stop", "audit"];
    let cases: Vec<(&(String, std::path::PathBuf), &str)> = builds
        .iter()
        .flat_map(|b| modes.iter().map(move |m| (b, *m)))
        .collect();
    let runs = parallel(&cases, |((_, path), mode)| exec(mode, path, &[]));
    // End stopped programs before asserting.
    for run in &runs {
        if let Some(pid) = run.violations().first().and_then(|v| v["pid"].as_u64())
            && proc_state(pid as u32) == Some('T')
        {
            // SAFETY: ends the stopped test program.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
    for (((build, _), mode), run) in cases.iter().zip(&runs) {
        let stderr = run.stderr();
        let ctx = format!("{build} {mode}: status {}; stderr:\n{stderr}", run.code());
        let violations = run.violations();
        assert_eq!(violations.len(), 1, "{ctx}");
        let v = violations[0];
        assert_eq!(v["detected_by"], "runtime_throw", "{ctx}");
        assert_eq!(v["kind"], "released_bucket_write", "{ctx}");
        assert_eq!(v["op"], "assign", "{ctx}");
        assert!(has_frame(&v["stack"], "runtime.throw "), "{ctx}");
        assert!(has_frame(&v["stack"], "runtime.evacuate"), "{ctx}");
        let marks = markers_of("corrupt", "bad_map_state");
        let grow = marks.iter().find(|(t, _)| t == "grow").expect("marked").1;
        assert!(
            has_frame(&v["stack"], &format!("bad_map_state/main.go:{grow}")),
            "{ctx}"
        );
        assert!(
            stderr.contains("the other writer is not on record"),
            "{ctx}"
        );
        match *mode {
            "kill" => {
                assert_eq!(run.code(), 137, "{ctx}");
                assert!(!stderr.contains("fatal error"), "{ctx}");
                assert_eq!(v["action"], "killed");
            }
            "stop" => {
                assert_eq!(run.code(), 147, "{ctx}");
                assert!(!stderr.contains("fatal error"), "{ctx}");
                assert_eq!(v["action"], "stopped");
            }
            _ => {
                // Audit only reports: the runtime then aborts as it would.
                assert_eq!(run.code(), 2, "{ctx}");
                assert!(stderr.contains("fatal error: bad map state"), "{ctx}");
                assert_eq!(v["action"], "audit");
            }
        }
    }
}

/// Kernels without uprobe_multi links (before 6.6) get one perf-event
/// uprobe per probe: the same detection, slower to attach and remove.
#[test]
fn perf_event_uprobes_catch_the_races_too() {
    if !require_bpf("perf_event_uprobes_catch_the_races_too") {
        return;
    }
    let runs = parallel(versions(), |version| {
        support::exec_with(
            "kill",
            &["--attach", "perf"],
            &program(version, "racy", "delete_assign"),
            &["-duration", "20s"],
        )
    });
    for (version, run) in versions().iter().zip(&runs) {
        assert_eq!(run.code(), 137, "{version}: stderr:\n{}", run.stderr());
        let violations = run.violations();
        assert!(!violations.is_empty(), "{version}: {}", run.stderr());
        check_report(violations[0], version, "delete_assign", "killed");
    }
}

/// On this kernel (6.18) the default attaches each binary's probes as one
/// uprobe_multi link, and `--attach multi` insists on it.
#[test]
fn probes_are_attached_as_one_uprobe_multi_link_by_default() {
    if !require_bpf("probes_are_attached_as_one_uprobe_multi_link_by_default") {
        return;
    }
    use mapguard_enforcer::bpf::loader::{
        AttachKind, Enforcer, ProbeAt, ProbeProgram, Probes, Scope,
    };
    let auto = Enforcer::load(ProbeProgram::Enforce, ProbeAt::Planned, AttachKind::Auto)
        .expect("load the enforcer");
    assert!(auto.uses_multi_links(), "uprobe_multi links on Linux 6.18");
    drop(auto);
    let mut perf = Enforcer::load(ProbeProgram::Enforce, ProbeAt::Planned, AttachKind::Perf)
        .expect("load for perf events");
    assert!(!perf.uses_multi_links());
    let target = mapguard_enforcer::binary::target::BinaryTarget::analyse(
        &program(versions()[0], "clean", "mutex"),
        0,
        Default::default(),
    )
    .expect("analyse");
    let set = perf
        .add_probes(&target, Probes::MapOps, Scope::AllProcesses { mode: None })
        .expect("attach perf events");
    assert!(perf.is_enabled(set));
    perf.set_enabled(set, false).expect("switch off");
    assert!(!perf.is_enabled(set));
    perf.set_enabled(set, true).expect("switch on again");
    assert!(perf.is_enabled(set));
}
