//! Enforcer benchmark: what a probed Go map call costs.
//!
//! Runs `tests/go/bench/mapheavy` (one goroutine; every iteration is one
//! `mapassign_fast64`, one `mapaccess2_fast64` and one `mapdelete_fast64`,
//! so 3 probe hits; the program times its own loop) built by every Go
//! release of the release table, in one run:
//!
//! - plain, and built with `-race` (the usual alternative),
//! - under `mapguard-enforcer exec --probe-program bare` (a BPF program that
//!   returns at once) at the planned `push rbp` (as a uprobe_multi link, and
//!   as perf-event uprobes) and at the function entry,
//! - under `mapguard-enforcer exec --mode audit` (the real detector), on
//!   the goroutine-private map and, with `-shared`, on a map a second
//!   goroutine wrote first (then every write records its stack too);
//! - the same with every delete timed (`--delete-latency-on`: the RET
//!   instructions of the delete functions probed, single-stepped), which
//!   gives the cost of one timed delete and so of the node agent's sampled
//!   delete durations (a window of 100 ms in every 10 s by default).
//!
//! - a loop of reads `m[k]` alone (`mapheavy -reads`: one
//!   `mapaccess1_fast64` per iteration, which Go 1.27 made a wrapper of
//!   `mapaccess2_fast64`), plain and under `--mode audit`: what one read
//!   costs. A read is one probe hit on every release, so the releases'
//!   per-read costs must agree (each within 10 % of their median).
//!
//! Per-hit cost = (ns/iteration under probes − plain ns/iteration) / 3.
//! Target: the enforcer adds at most 50% to the bare hit cost at the same
//! offset. Two measures of what it adds, both printed:
//!
//! - end to end: audit per-hit cost minus bare per-hit cost;
//! - in the kernel: the detector program's own run time per hit, from the
//!   kernel's BPF run-time statistics (enabled for one extra audit run
//!   only, as they cost two clock reads per hit), which the noise of two
//!   whole-process timings does not blur.
//!
//! The configurations are measured round-robin (one run of each, then the
//! next round), so a change in machine load shifts them all alike. Needs
//! root (BPF). Run with:
//!
//! ```text
//! make bench-enforcer                       # or:
//! cargo bench -p mapguard-enforcer --bench probe_cost
//! MAPGUARD_BENCH_RUNS=5 MAPGUARD_BENCH_GO=go1.24,go1.27 cargo bench -p mapguard-enforcer --bench probe_cost
//! ```

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use mapguard_common::PROG_MAP_OP;

#[path = "../tests/support/mod.rs"]
mod support;

/// Probed map calls per mapheavy iteration.
const CALLS_PER_ITER: f64 = 3.0;
/// Relative overhead of the enforcer over a bare probe it should stay under.
const TARGET_OVERHEAD: f64 = 0.5;
/// How far a release's cost per map read may be from the median over the
/// releases (a read is one probe hit on every release).
const TARGET_READ_SPREAD: f64 = 0.10;
/// Share of the time the node agent times deletes by default
/// (`--delete-latency-on 100ms`, `--delete-latency-period 10s`).
const DAEMON_TIMED_SHARE: f64 = 0.01;

/// One configuration to measure.
struct Setup {
    name: &'static str,
    /// Binary variant under the Go version's directory.
    binary: &'static str,
    /// `None`: run directly; `Some(args)`: under `mapguard-enforcer exec args --`.
    enforcer: Option<&'static [&'static str]>,
    /// mapheavy's own flags besides `-n`.
    program_args: &'static [&'static str],
    iterations: u64,
}

const SETUPS: &[Setup] = &[
    Setup {
        name: "plain",
        binary: "bench/mapheavy",
        enforcer: None,
        program_args: &[],
        iterations: 5_000_000,
    },
    Setup {
        name: "go -race",
        binary: "race/mapheavy",
        enforcer: None,
        program_args: &[],
        iterations: 2_000_000,
    },
    Setup {
        name: "bare probe @ push rbp",
        binary: "bench/mapheavy",
        enforcer: Some(&["--probe-program", "bare", "--probe-at", "planned"]),
        program_args: &[],
        iterations: 300_000,
    },
    Setup {
        name: "bare probe @ push rbp, perf",
        binary: "bench/mapheavy",
        enforcer: Some(&[
            "--probe-program",
            "bare",
            "--probe-at",
            "planned",
            "--attach",
            "perf",
        ]),
        program_args: &[],
        iterations: 300_000,
    },
    Setup {
        name: "bare probe @ entry",
        binary: "bench/mapheavy",
        enforcer: Some(&["--probe-program", "bare", "--probe-at", "entry"]),
        program_args: &[],
        iterations: 50_000,
    },
    Setup {
        name: "mapguard audit @ push rbp",
        binary: "bench/mapheavy",
        enforcer: Some(&["--mode", "audit"]),
        program_args: &[],
        iterations: 300_000,
    },
    Setup {
        name: "mapguard audit @ entry",
        binary: "bench/mapheavy",
        enforcer: Some(&["--mode", "audit", "--probe-at", "entry"]),
        program_args: &[],
        iterations: 50_000,
    },
    // Every delete timed: the RET probes of the delete functions attached
    // for the whole run (the node agent attaches them 100 ms in every 10 s).
    Setup {
        name: "mapguard audit, deletes timed",
        binary: "bench/mapheavy",
        enforcer: Some(&[
            "--mode",
            "audit",
            "--delete-latency-on",
            "60m",
            "--delete-latency-period",
            "60m",
        ]),
        program_args: &[],
        iterations: 100_000,
    },
    Setup {
        name: "mapguard audit, shared map",
        binary: "bench/mapheavy",
        enforcer: Some(&["--mode", "audit"]),
        program_args: &["-shared"],
        iterations: 300_000,
    },
    // One read `m[k]` per iteration (mapaccess1_fast64; in Go 1.27 a
    // wrapper of mapaccess2_fast64, whose probe alone counts it).
    Setup {
        name: "plain, reads m[k]",
        binary: "bench/mapheavy",
        enforcer: None,
        program_args: &["-reads"],
        iterations: 5_000_000,
    },
    Setup {
        name: "mapguard audit, reads m[k]",
        binary: "bench/mapheavy",
        enforcer: Some(&["--mode", "audit"]),
        program_args: &["-reads"],
        iterations: 300_000,
    },
];

/// Runs one configuration once; returns mapheavy's ns per iteration.
fn run_once(progs: &Path, go: &str, setup: &Setup, events: &Path) -> Result<f64> {
    run_watched(progs, go, setup, events, || {})
}

/// [`run_once`], calling `watch` every 20 ms while the run lasts.
fn run_watched(
    progs: &Path,
    go: &str,
    setup: &Setup,
    events: &Path,
    mut watch: impl FnMut(),
) -> Result<f64> {
    // A previous run's probes are removed in the background after `exec`
    // returns; until then they still trap on the same binary and would
    // slow this run.
    if support::wait_no_mapguard_programs(Duration::from_secs(60)) != 0 {
        bail!("mapguard probes still attached after 60 s");
    }
    let program = progs.join(go).join(setup.binary);
    let n = setup.iterations.to_string();
    let mut cmd = match setup.enforcer {
        None => Command::new(&program),
        Some(args) => {
            let mut c = Command::new(env!("CARGO_BIN_EXE_mapguard-enforcer"));
            c.arg("exec")
                .args(args)
                .arg("--events")
                .arg(events)
                .arg("--")
                .arg(&program);
            c.env("MAPGUARD_LOG", "warn");
            c
        }
    };
    let mut child = cmd
        .args(["-n", &n])
        .args(setup.program_args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("run {}", program.display()))?;
    while child.try_wait()?.is_none() {
        watch();
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "{} ({go}) failed with {}: {}",
            setup.name,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.contains("\"ns_per_iter\""))
        .with_context(|| format!("{}: no result line in {stdout:?}", setup.name))?;
    let v: serde_json::Value = serde_json::from_str(line).context("parse mapheavy output")?;
    v["ns_per_iter"].as_f64().context("ns_per_iter is a number")
}

/// One audit run with the kernel's BPF run-time statistics on; returns the
/// detector program's run time per hit in ns, sampled while the run lasts
/// (the program is unloaded soon after `exec` returns; the run starts with
/// no mapguard program loaded, so the one seen is this run's).
fn kernel_ns_per_hit(progs: &Path, go: &str, setup: &Setup, events: &Path) -> Result<f64> {
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)
        .context("enable the kernel's BPF run-time statistics")?;
    let mut last = (Duration::ZERO, 0u64);
    run_watched(progs, go, setup, events, || {
        if let Some(info) = aya::programs::loaded_programs()
            .filter_map(Result::ok)
            .find(|p| p.name_as_str() == Some(PROG_MAP_OP))
            && info.run_count() > 0
        {
            last = (info.run_time(), info.run_count());
        }
    })?;
    let (time, hits) = last;
    if hits == 0 {
        bail!("the detector program was not seen running");
    }
    Ok(time.as_nanos() as f64 / hits as f64)
}

/// One release's figures, for the closing table.
struct Figures {
    go: String,
    bare: f64,
    enforce: f64,
    kernel: f64,
    /// What timing one delete adds (ns).
    timed_delete: f64,
    /// What mapguard adds to one read `m[k]` (ns).
    read: f64,
    met: bool,
}

fn bench_version(progs: &Path, go: &str, runs: usize) -> Result<Figures> {
    let events = std::env::temp_dir().join(format!(
        "mapguard-bench-events-{}.jsonl",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&events);
    let setups: Vec<&Setup> = SETUPS
        .iter()
        .filter(|setup| {
            let built = progs.join(go).join(setup.binary).exists();
            if !built {
                println!(
                    "  {go}: {} skipped, {} was not built",
                    setup.name, setup.binary
                );
            }
            built
        })
        .collect();
    let detector = SETUPS
        .iter()
        .find(|s| s.name == "mapguard audit @ push rbp")
        .expect("the audit setup exists");
    let mut samples = vec![Vec::new(); setups.len()];
    let mut kernel_samples = Vec::new();
    for _ in 0..runs {
        for (setup, samples) in setups.iter().zip(&mut samples) {
            samples.push(run_once(progs, go, setup, &events)?);
        }
        kernel_samples.push(kernel_ns_per_hit(progs, go, detector, &events)?);
    }
    let results: Vec<(&Setup, f64)> = setups
        .into_iter()
        .zip(samples.into_iter().map(support::median))
        .collect();
    let kernel = support::median(kernel_samples);
    let violations = std::fs::read_to_string(&events)
        .map(|s| s.lines().count())
        .unwrap_or(0);
    let _ = std::fs::remove_file(&events);

    let ns = |name: &str| {
        results
            .iter()
            .find(|(s, _)| s.name == name)
            .map(|(_, v)| *v)
            .expect("measured")
    };
    let plain = ns("plain");
    let hit = |name: &str| (ns(name) - plain) / CALLS_PER_ITER;
    let is_read = |s: &Setup| s.program_args.contains(&"-reads");
    println!(
        "\n{go}: mapheavy, {CALLS_PER_ITER} probed map calls per iteration, median of {runs} runs"
    );
    println!(
        "  {:<28} {:>12} {:>14} {:>10}",
        "configuration", "ns/iter", "ns/probe hit", "vs plain"
    );
    for (setup, v) in &results {
        // The read loop against its own plain run, one call per iteration.
        let (base, calls) = if is_read(setup) {
            (ns("plain, reads m[k]"), 1.0)
        } else {
            (plain, CALLS_PER_ITER)
        };
        let per_hit = if setup.enforcer.is_some() {
            format!("{:.0}", (v - base) / calls)
        } else {
            "-".into()
        };
        println!(
            "  {:<28} {:>12.1} {:>14} {:>9.1}x",
            setup.name,
            v,
            per_hit,
            v / base
        );
    }
    let read = ns("mapguard audit, reads m[k]") - ns("plain, reads m[k]");
    println!("  one map read m[k] under mapguard (full coverage): {read:+.0} ns");
    let (bare, bare_entry) = (hit("bare probe @ push rbp"), hit("bare probe @ entry"));
    println!(
        "  uprobe_multi link vs perf event, bare hit at push rbp: {:.0} vs {:.0} ns",
        bare,
        hit("bare probe @ push rbp, perf")
    );
    let (enforce, enforce_entry) = (
        hit("mapguard audit @ push rbp"),
        hit("mapguard audit @ entry"),
    );
    let overhead = enforce / bare - 1.0;
    let kernel_overhead = kernel / bare;
    let met = overhead <= TARGET_OVERHEAD && kernel_overhead <= TARGET_OVERHEAD;
    println!(
        "  push rbp (emulated) vs entry (single-stepped), bare hit: {:.1}x cheaper",
        bare_entry / bare
    );
    println!(
        "  mapguard at push rbp vs at entry: {:.1}x cheaper per hit",
        enforce_entry / enforce
    );
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    println!(
        "  enforcer over a bare probe at push rbp, end to end: {:+.0} ns/hit ({:+.0}%), target <= +{:.0}%: {}",
        enforce - bare,
        overhead * 100.0,
        TARGET_OVERHEAD * 100.0,
        verdict(overhead <= TARGET_OVERHEAD)
    );
    println!(
        "  enforcer over a bare probe at push rbp, in the kernel: {kernel:.0} ns/hit of BPF run time ({:+.0}% of the bare hit), target <= +{:.0}%: {}",
        kernel_overhead * 100.0,
        TARGET_OVERHEAD * 100.0,
        verdict(kernel_overhead <= TARGET_OVERHEAD)
    );
    let shared = hit("mapguard audit, shared map");
    println!(
        "  a map two goroutines have written (each write also records its stack): {:+.0} ns/hit over a bare probe ({:+.0}%)",
        shared - bare,
        (shared / bare - 1.0) * 100.0
    );
    // One delete per iteration: the difference is what timing it costs.
    let timed_delete = ns("mapguard audit, deletes timed") - ns("mapguard audit @ push rbp");
    println!(
        "  timing a delete (RET probes, single-stepped, and two clock reads): {timed_delete:+.0} ns; sampled at the node agent's default 1% of the time: {:+.1} ns per delete on average",
        timed_delete * DAEMON_TIMED_SHARE
    );
    let race = results
        .iter()
        .find(|(s, _)| s.name == "go -race")
        .map_or("n/a (not built)".to_string(), |(_, v)| {
            format!("{:.1}x", v / plain)
        });
    println!(
        "  slowdown of this map-bound loop: mapguard {:.1}x, go -race {race}",
        ns("mapguard audit @ push rbp") / plain,
    );
    println!("  violations reported (must be 0, the program has no races): {violations}");
    if violations != 0 {
        bail!("{go}: the enforcer reported {violations} violations on a race-free program");
    }
    Ok(Figures {
        go: go.to_string(),
        bare,
        enforce,
        kernel,
        timed_delete,
        read,
        met,
    })
}

fn main() -> Result<()> {
    // `cargo bench` passes `--bench`; there is nothing to filter.
    let runs: usize = std::env::var("MAPGUARD_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
        .max(1);
    let versions =
        std::env::var("MAPGUARD_BENCH_GO").unwrap_or_else(|_| support::versions().join(","));
    let progs = support::go_progs();
    let mut figures = Vec::new();
    for go in versions.split(',').map(str::trim).filter(|v| !v.is_empty()) {
        figures.push(bench_version(progs, go, runs)?);
    }
    println!("\nper probe hit, every release (median of {runs} runs):");
    println!(
        "  {:<8} {:>10} {:>20} {:>22} {:>8} {:>26}",
        "release",
        "bare hit",
        "mapguard end to end",
        "mapguard BPF run time",
        "target",
        "timed delete (1% sampled)"
    );
    for f in &figures {
        println!(
            "  {:<8} {:>7.0} ns {:>10.0} ns ({:+3.0}%) {:>12.0} ns ({:3.0}%) {:>8} {:>10.0} ns ({:+.1} ns)",
            f.go,
            f.bare,
            f.enforce,
            (f.enforce / f.bare - 1.0) * 100.0,
            f.kernel,
            f.kernel / f.bare * 100.0,
            if f.met { "met" } else { "MISSED" },
            f.timed_delete,
            f.timed_delete * DAEMON_TIMED_SHARE
        );
    }
    let reads = support::median(figures.iter().map(|f| f.read).collect());
    println!(
        "\nper map read m[k] under mapguard (one probe hit on every release), median of {runs} runs:"
    );
    let mut reads_met = true;
    for f in &figures {
        let off = f.read / reads - 1.0;
        reads_met &= off.abs() <= TARGET_READ_SPREAD;
        println!(
            "  {:<8} {:>7.0} ns ({:+.0}% from the median over the releases)",
            f.go,
            f.read,
            off * 100.0
        );
    }
    for pair in figures.windows(2) {
        println!(
            "  {} / {}: {:.2}",
            pair[1].go,
            pair[0].go,
            pair[1].read / pair[0].read
        );
    }
    println!(
        "probe_cost: a read costs the same on every release (each within {:.0}% of the median) {}",
        TARGET_READ_SPREAD * 100.0,
        if reads_met { "met" } else { "MISSED" }
    );
    let all_met = figures.iter().all(|f| f.met);
    println!(
        "\nprobe_cost: enforcer overhead target (<= +{:.0}% over a bare probe, every release) {}",
        TARGET_OVERHEAD * 100.0,
        if all_met { "met" } else { "MISSED" }
    );
    Ok(())
}
