//! Command line and environment configuration of `mapguard-enforcer`.

use std::{ffi::OsString, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};
use mapguard_api::mode::{Coverage, Mode};
use mapguard_duration as duration;

use crate::{
    binary::goelf::ReadLimits,
    bpf::coverage::{SampleSettings, parse_budget},
    bpf::loader::{AttachKind, ProbeAt, ProbeProgram},
};

/// mapguard-enforcer: halts Go processes at the moment they race on a map.
#[derive(Debug, Parser)]
#[command(name = "mapguard-enforcer", version, about, long_about = None)]
pub struct Config {
    /// Log filter (tracing `EnvFilter` syntax); `RUST_LOG` overrides it.
    #[arg(long, global = true, env = "MAPGUARD_LOG", default_value = "info")]
    pub log: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a Go program under enforcement from its first instruction and exit
    /// with its status (128+N when signal N ended it; 147 when mapguard left
    /// it stopped in `stop` mode).
    Exec(ExecArgs),
    /// Enforce on already running processes until interrupted.
    Watch(WatchArgs),
    /// Print what mapguard would probe in a Go binary.
    Scan(ScanArgs),
}

/// What `exec` and `watch` do to the processes they enforce on.
#[derive(Debug, Args)]
pub struct PolicyArgs {
    /// Action on a violation.
    #[arg(long, value_enum, env = "MAPGUARD_MODE", default_value_t = Mode::Audit)]
    pub mode: Mode,
    /// What is probed: `full` (every map operation; ~1 µs per map call),
    /// `writes` (map writes only: concurrent writes with both call sites;
    /// a fraction of full's cost), `sampled` (every map operation during
    /// on-windows sized to --cost-budget; catches a recurring race within
    /// one period), `light` (only the runtime's crash paths; no cost;
    /// catches the races the Go runtime itself detects, before it aborts).
    #[arg(long, value_enum, env = "MAPGUARD_COVERAGE", default_value_t = Coverage::Full)]
    pub coverage: Coverage,
}

/// Options of every enforcing command (`exec`, `watch`, and the node
/// agent's `mapguard-agent daemon`).
#[derive(Debug, Args)]
pub struct EnforceArgs {
    /// `sampled`: what the probes may cost, as a share of the process's CPU
    /// time (e.g. 2% or 0.02).
    #[arg(long, env = "MAPGUARD_COST_BUDGET", default_value = "2%", value_parser = parse_budget)]
    pub cost_budget: f64,
    /// `sampled`: length of each on-window (a race recurring at least this
    /// often is caught in every window).
    #[arg(long, env = "MAPGUARD_SAMPLE_ON", default_value = "1s", value_parser = duration::parse_positive)]
    pub sample_on: Duration,
    /// `sampled`: a fixed period (window start to window start) instead of
    /// one derived from --cost-budget.
    #[arg(long, env = "MAPGUARD_SAMPLE_PERIOD", value_parser = duration::parse_positive)]
    pub sample_period: Option<Duration>,
    /// `sampled`: the estimated cost of one probe hit (`make bench-enforcer`
    /// measures it).
    #[arg(long, env = "MAPGUARD_HIT_COST", default_value = "1us", value_parser = duration::parse_positive)]
    pub hit_cost: Duration,
    /// Delete durations: length of each window in which the RET
    /// instructions of the map delete functions are probed, timing every
    /// delete that starts in it (`mapguard_map_delete_duration_seconds` of
    /// the node agent). Those probes are single-stepped (~10 µs a hit), so
    /// only a window in every --delete-latency-period is measured. 0: never.
    /// Default: 100ms for `daemon`, 0 (off) for `exec` and `watch`.
    #[arg(long, env = "MAPGUARD_DELETE_LATENCY_ON", value_parser = duration::parse)]
    pub delete_latency_on: Option<Duration>,
    /// Delete durations: window start to window start (the share of deletes
    /// timed is --delete-latency-on / this).
    #[arg(long, env = "MAPGUARD_DELETE_LATENCY_PERIOD", default_value = "10s", value_parser = duration::parse_positive)]
    pub delete_latency_period: Duration,
    /// Where violation events go, one JSON object per line: a file path
    /// (appended to) or `-` for stdout.
    #[arg(long, env = "MAPGUARD_EVENTS", default_value = "-")]
    pub events: String,
    /// How probes are attached: one uprobe_multi link per binary (Linux
    /// 6.6+; quick to attach and remove), one perf-event uprobe per probe,
    /// or the first of these the kernel supports.
    #[arg(long, value_enum, env = "MAPGUARD_ATTACH", default_value_t = AttachKind::Auto)]
    pub attach: AttachKind,
    #[command(flatten)]
    pub read: ReadArgs,
    /// Benchmark hook: which BPF program the probes run.
    #[arg(long, value_enum, hide = true, env = "MAPGUARD_PROBE_PROGRAM", default_value_t = ProbeProgram::Enforce)]
    pub probe_program: ProbeProgram,
    /// Benchmark hook: probe the planned instruction or the function entry.
    #[arg(long, value_enum, hide = true, env = "MAPGUARD_PROBE_AT", default_value_t = ProbeAt::Planned)]
    pub probe_at: ProbeAt,
}

impl EnforceArgs {
    /// The delete-duration windows: `--delete-latency-on` (else
    /// `default_on`) and the period; `None` when off.
    pub fn delete_latency(&self, default_on: Duration) -> Option<LatencyWindows> {
        let on = self.delete_latency_on.unwrap_or(default_on);
        (!on.is_zero()).then(|| LatencyWindows {
            on,
            period: self.delete_latency_period.max(on),
        })
    }

    /// The `sampled` coverage settings.
    pub fn sample_settings(&self) -> SampleSettings {
        SampleSettings {
            on: self.sample_on,
            budget: self.cost_budget,
            period: self.sample_period,
            hit_cost: self.hit_cost,
        }
    }
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    #[command(flatten)]
    pub policy: PolicyArgs,
    #[command(flatten)]
    pub enforce: EnforceArgs,
    /// The Go program (looked up in PATH when it has no `/`).
    #[arg(required = true)]
    pub program: OsString,
    /// Its arguments.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<OsString>,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("targets").required(true).args(["pid", "exe"])))]
pub struct WatchArgs {
    #[command(flatten)]
    pub policy: PolicyArgs,
    #[command(flatten)]
    pub enforce: EnforceArgs,
    /// Process ids to enforce on (ends when all have exited).
    #[arg(long, num_args = 1.., value_delimiter = ',', env = "MAPGUARD_WATCH_PIDS")]
    pub pid: Vec<u32>,
    /// Binaries: every process running one, now or started later.
    #[arg(long, num_args = 1.., value_delimiter = ',', env = "MAPGUARD_WATCH_EXES")]
    pub exe: Vec<PathBuf>,
}

/// How much of an executable the analysis may read (`exec`, `watch`,
/// `scan` and the node agent).
#[derive(Debug, Clone, Copy, Args)]
pub struct ReadArgs {
    /// Executables larger than this are refused without being read (e.g.
    /// `1GiB`, `300MiB`, `500M`, or bytes); the biggest real Go services
    /// are a few hundred MB.
    #[arg(long, env = "MAPGUARD_MAX_BINARY_SIZE", default_value = "1GiB", value_parser = parse_size)]
    pub max_binary_size: u64,
}

impl ReadArgs {
    pub fn limits(&self) -> ReadLimits {
        ReadLimits::with_max_file(self.max_binary_size)
    }
}

/// A byte count: a number with an optional unit `K`, `M`, `G` (powers of
/// 1024, also written `KiB`, `MiB`, `GiB`; a trailing `B` is allowed).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 1GiB, 300MiB, 500M)"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        other => return Err(format!("unknown size unit {other:?} in {s:?} (K, M, G)")),
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("{s:?} is too large"))
}

#[derive(Debug, Args)]
pub struct ScanArgs {
    /// The Go binary to analyse.
    pub binary: PathBuf,
    #[command(flatten)]
    pub read: ReadArgs,
    /// Print JSON instead of a table.
    #[arg(long, env = "MAPGUARD_SCAN_JSON")]
    pub json: bool,
}

/// When delete durations are measured: a window of `on` in every `period`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LatencyWindows {
    pub on: Duration,
    pub period: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec_with(flags: &[&str]) -> Result<ExecArgs, clap::Error> {
        let argv = ["mapguard-enforcer", "exec"]
            .iter()
            .chain(flags)
            .chain(&["/bin/true"]);
        Config::try_parse_from(argv).map(|config| match config.command {
            Command::Exec(args) => args,
            other => panic!("exec expected, got {other:?}"),
        })
    }

    /// Issue 22: the README's `--delete-latency-on 0` (off) was refused by
    /// the enforcer's own parser, which took no zero at all.
    #[test]
    fn delete_latency_on_zero_turns_the_windows_off() {
        let args = exec_with(&["--delete-latency-on", "0"]).expect("0 is documented");
        assert_eq!(args.enforce.delete_latency_on, Some(Duration::ZERO));
        assert!(
            args.enforce
                .delete_latency(Duration::from_millis(100))
                .is_none()
        );
        let args = exec_with(&[
            "--delete-latency-on",
            "300ms",
            "--delete-latency-period",
            "1s",
        ])
        .expect("the README's example parses");
        let windows = args
            .enforce
            .delete_latency(Duration::ZERO)
            .expect("windows on");
        assert_eq!(
            (windows.on, windows.period),
            (Duration::from_millis(300), Duration::from_secs(1))
        );
    }

    #[test]
    fn periods_and_costs_stay_positive() {
        let args = exec_with(&["--hit-cost", "1us", "--sample-period=1m30s"]).expect("parses");
        assert_eq!(args.enforce.hit_cost, Duration::from_micros(1));
        assert_eq!(args.enforce.sample_period, Some(Duration::from_secs(90)));
        for flag in [
            "--sample-on=0",
            "--sample-period=0s",
            "--delete-latency-period=0",
        ] {
            assert!(exec_with(&[flag]).is_err(), "{flag} must be refused");
        }
    }
}
