//! Command line and environment configuration of `mapguard-enforcer`.

use std::{ffi::OsString, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};
use mapguard_api::mode::{Coverage, Mode, PodMode};
use mapguard_duration as duration;

use crate::{
    coverage::{SampleSettings, parse_budget},
    goelf::ReadLimits,
    loader::{AttachKind, ProbeAt, ProbeProgram},
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
    /// The node agent: enforce on the Go processes of this node's Pods as
    /// their `mapguard.io/mode` and `mapguard.io/coverage` annotations say.
    Daemon(Box<DaemonArgs>),
    /// The opt-in responder (one in the cluster, an identity of its own):
    /// evicts the Pod or cordons the node of a workload whose violations
    /// and crashes, as the node agents' records count them, pass a
    /// threshold.
    Respond(RespondArgs),
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

/// What the node agent does to a process stopped past `--stop-deadline`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum AfterStop {
    /// SIGCONT: it runs on.
    Resume,
    /// SIGKILL.
    Kill,
}

impl AfterStop {
    /// Label value of `mapguard_stop_deadline_total`.
    pub fn label(self) -> &'static str {
        match self {
            AfterStop::Resume => "resume",
            AfterStop::Kill => "kill",
        }
    }
}

/// Options of every enforcing command (`exec`, `watch`, `daemon`).
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
/// `daemon` and `scan`).
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

#[derive(Debug, Args)]
pub struct RespondArgs {
    /// A kubeconfig file; without it, `KUBECONFIG` or the in-cluster
    /// service account.
    #[arg(long, env = "MAPGUARD_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Address of the ops port (`/metrics`, `/healthz`, `/readyz`), plain
    /// HTTP.
    #[arg(long, env = "MAPGUARD_OPS_LISTEN", default_value = "0.0.0.0:9092")]
    pub ops_listen: std::net::SocketAddr,
    /// The responder's own namespace, where it keeps its cluster budget
    /// (the ConfigMap `mapguard-responder-budget`, which only it may write).
    #[arg(long, env = "MAPGUARD_NAMESPACE", default_value = "mapguard-system")]
    pub namespace: String,
    /// What to do when a workload passes the threshold: evict the Pod
    /// (Eviction API; PodDisruptionBudgets honoured) or cordon its node.
    #[arg(long, env = "MAPGUARD_RESPOND", value_enum, default_value = "evict")]
    pub action: crate::responder::ResponseAction,
    /// Violations and crashes of one workload that trigger the responder.
    #[arg(long, env = "MAPGUARD_RESPOND_THRESHOLD", default_value_t = 3)]
    pub threshold: u32,
    /// Window the threshold counts in.
    #[arg(long, env = "MAPGUARD_RESPOND_WINDOW", default_value = "10m", value_parser = duration::parse_positive)]
    pub window: Duration,
    /// At most one action per workload per this long.
    #[arg(long, env = "MAPGUARD_RESPOND_WORKLOAD_INTERVAL", default_value = "1h", value_parser = duration::parse_positive)]
    pub workload_interval: Duration,
    /// At most this many actions per hour in the whole cluster (kept in
    /// the budget ConfigMap).
    #[arg(long, env = "MAPGUARD_RESPOND_CLUSTER_PER_HOUR", default_value_t = 3)]
    pub cluster_per_hour: u32,
    /// Decide and record (Events, metric) but change nothing.
    #[arg(long, env = "MAPGUARD_RESPOND_DRY_RUN")]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// This node's name (set from the downward API `spec.nodeName` in the
    /// DaemonSet): only Pods bound to it are watched.
    #[arg(long, env = "MAPGUARD_NODE_NAME")]
    pub node: String,
    /// A kubeconfig file; without it, `KUBECONFIG` or the in-cluster
    /// service account.
    #[arg(long, env = "MAPGUARD_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Address of the ops port (`/metrics`, `/healthz`, `/readyz`), plain
    /// HTTP.
    #[arg(long, env = "MAPGUARD_OPS_LISTEN", default_value = "0.0.0.0:9091")]
    pub ops_listen: std::net::SocketAddr,
    /// The Unix socket that serves `/events` (every JSON line the agent
    /// writes, all tenants' stacks and Pods), mode 0600: never the ops
    /// port. A socket left there is replaced; anything else is refused.
    #[arg(
        long,
        env = "MAPGUARD_EVENTS_SOCKET",
        default_value = "/run/mapguard/events.sock"
    )]
    pub events_socket: PathBuf,
    /// Action for Pods without a valid `mapguard.io/mode` annotation.
    #[arg(long, value_enum, env = "MAPGUARD_DEFAULT_MODE", default_value_t = PodMode::OFF)]
    pub default_mode: PodMode,
    /// Coverage for Pods without a valid `mapguard.io/coverage` annotation.
    #[arg(long, value_enum, env = "MAPGUARD_DEFAULT_COVERAGE", default_value_t = Coverage::Sampled)]
    pub default_coverage: Coverage,
    /// How often the node's processes are placed in their Pods.
    #[arg(long, env = "MAPGUARD_SCAN_INTERVAL", default_value = "500ms", value_parser = duration::parse_positive)]
    pub scan_interval: Duration,
    /// How long an analysed Go binary is kept once no process runs it:
    /// past it, its analysis, crash-path probes and shared probes are
    /// dropped (an image's next container is analysed again). Kept a
    /// while so that a crash-looping container is not analysed at every
    /// restart.
    #[arg(long, env = "MAPGUARD_EVICT_BINARIES_AFTER", default_value = "5m", value_parser = duration::parse_positive)]
    pub evict_binaries_after: Duration,
    /// Longest a process's executable may take to be opened, identified
    /// and analysed (off the enforcement loop, on a thread of its own):
    /// past it the process is left unenforced (counted as `timeout`), and
    /// while that operation is still blocked the other executables of its
    /// filesystem are not tried.
    #[arg(long, env = "MAPGUARD_FILE_TIMEOUT", default_value = "30s", value_parser = duration::parse_positive)]
    pub file_timeout: Duration,
    /// `/healthz` fails once the enforcement loop has made no progress
    /// for this long (the kubelet then restarts the agent).
    #[arg(long, env = "MAPGUARD_HEALTHZ_STALL_AFTER", default_value = "30s", value_parser = duration::parse_positive)]
    pub healthz_stall_after: Duration,
    /// Where the host's /proc is (the agent may see it mounted elsewhere).
    #[arg(long, env = "MAPGUARD_PROC_ROOT", default_value = "/proc")]
    pub proc_root: PathBuf,
    /// MapViolation records kept per namespace (call-site pairs); more are
    /// dropped and counted, so a crash-looping Pod cannot flood etcd.
    #[arg(
        long,
        env = "MAPGUARD_MAX_RECORDS_PER_NAMESPACE",
        default_value_t = 100
    )]
    pub max_records_per_namespace: usize,
    /// Violation records waiting for the API server (kept while it is
    /// unreachable); more are dropped and counted.
    #[arg(long, env = "MAPGUARD_RECORD_QUEUE", default_value_t = 1000)]
    pub record_queue: usize,
    /// Of --record-queue, the most one namespace may hold: its further
    /// new call-site pairs are dropped and counted
    /// (`mapguard_dropped_events_total{reason="record_queue_full"}`), and
    /// the writer serves the namespaces in turn, so a namespace racing at
    /// many call sites cannot delay or crowd out another's records.
    #[arg(
        long,
        env = "MAPGUARD_RECORD_QUEUE_PER_NAMESPACE",
        default_value_t = 100
    )]
    pub record_queue_per_namespace: usize,
    /// Violation reports each Pod may send from the kernel per second, on
    /// average (its containers together once the exec hook knows the
    /// Pod's cgroup, with --exec-hold; otherwise each process's own cgroup,
    /// a container). Reports beyond it and --event-burst are dropped in
    /// the kernel, before the node's shared ring buffer, and counted per
    /// workload (`mapguard_dropped_events_total{reason="rate_limited"}`);
    /// the action (stop, kill) is still taken. A Pod racing in a tight loop
    /// then cannot fill the ring buffer and hide another Pod's race.
    /// 0: no limit.
    #[arg(long, env = "MAPGUARD_EVENT_RATE", default_value_t = 100)]
    pub event_rate: u32,
    /// The most reports a Pod may send at once (the bucket --event-rate
    /// refills).
    #[arg(long, env = "MAPGUARD_EVENT_BURST", default_value_t = 200)]
    pub event_burst: u32,
    /// Processes of one Pod put under enforcement at most (slots of the
    /// node's process table, 4096 in all); the Pod's further processes are
    /// not enforced, counted in
    /// `mapguard_pod_limit_refusals_total{limit="processes"}`.
    #[arg(long, env = "MAPGUARD_MAX_PROCESSES_PER_POD", default_value_t = 512)]
    pub max_processes_per_pod: usize,
    /// Probe ids one Pod's processes may hold (of 16384 on the node; about
    /// 25 to 50 a process under `full`, `writes` or `sampled`): a process of
    /// a Pod at the bound is not enforced, counted in
    /// `mapguard_pod_limit_refusals_total{limit="probes"}`.
    #[arg(long, env = "MAPGUARD_MAX_PROBES_PER_POD", default_value_t = 4096)]
    pub max_probes_per_pod: usize,
    /// Publish a Warning Event on the Pod for each race.
    #[arg(long, env = "MAPGUARD_POD_EVENTS", default_value_t = true, action = clap::ArgAction::Set)]
    pub pod_events: bool,
    /// Hold new processes of enforced Pods at exec (SIGSTOP from the
    /// kernel) until their probes are in place; `false`: the /proc scan
    /// alone finds them (a race in their first moments is missed).
    #[arg(long, env = "MAPGUARD_EXEC_HOLD", default_value_t = true, action = clap::ArgAction::Set)]
    pub exec_hold: bool,
    /// Longest a process is held at exec: past it, it is released
    /// unenforced (logged, counted as `timeout`) and the /proc scan takes
    /// over.
    #[arg(long, env = "MAPGUARD_EXEC_HOLD_TIMEOUT", default_value = "2s", value_parser = duration::parse_positive)]
    pub exec_hold_timeout: Duration,
    /// Longest a process stays stopped by mapguard (`stop` mode): past
    /// it, it is resumed or killed (--after-stop-deadline). Kept across
    /// agent restarts (the table of stops is pinned in --bpf-pin-dir).
    #[arg(long, env = "MAPGUARD_STOP_DEADLINE", default_value = "10m", value_parser = duration::parse_positive)]
    pub stop_deadline: Duration,
    /// What happens to a stopped process at --stop-deadline: `kill`
    /// (SIGKILL: its container restarts; a process that raced once races
    /// again when resumed, and its maps may be corrupt) or `resume`
    /// (SIGCONT).
    #[arg(long, value_enum, env = "MAPGUARD_AFTER_STOP_DEADLINE", default_value_t = AfterStop::Kill)]
    pub after_stop_deadline: AfterStop,
    /// bpffs folder where the tables of held and stopped processes are
    /// pinned, so an agent started after one that died releases what it
    /// held and applies the deadline of what it stopped. Without a
    /// writable bpffs there, nothing is held (an error says so).
    #[arg(
        long,
        env = "MAPGUARD_BPF_PIN_DIR",
        default_value = "/sys/fs/bpf/mapguard"
    )]
    pub bpf_pin_dir: PathBuf,
    /// Time to write pending records on SIGTERM.
    #[arg(long, env = "MAPGUARD_SHUTDOWN_GRACE", default_value = "10s", value_parser = duration::parse_positive)]
    pub shutdown_grace: Duration,
    #[command(flatten)]
    pub enforce: EnforceArgs,
}

/// When delete durations are measured: a window of `on` in every `period`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LatencyWindows {
    pub on: Duration,
    pub period: Duration,
}

/// The node agent's default `--delete-latency-on`: 1% of the time with
/// the default 10 s period.
pub const DAEMON_DELETE_LATENCY_ON: Duration = Duration::from_millis(100);

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
