//! Command line and environment configuration of `mapguard-agent`: the
//! node agent (`daemon`) and the responder (`respond`). The enforcing
//! options the agent shares with `mapguard-enforcer exec` and `watch`
//! ([`EnforceArgs`]) are the engine's.

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};
use mapguard_api::mode::{Coverage, PodMode};
use mapguard_duration as duration;
use mapguard_enforcer::config::EnforceArgs;

/// mapguard-agent: the node agent that enforces on the Go processes of
/// this node's Pods, and the cluster's opt-in responder.
#[derive(Debug, Parser)]
#[command(name = "mapguard-agent", version, about, long_about = None)]
pub struct Config {
    /// Log filter (tracing `EnvFilter` syntax); `RUST_LOG` overrides it.
    #[arg(long, global = true, env = "MAPGUARD_LOG", default_value = "info")]
    pub log: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The node agent: enforce on the Go processes of this node's Pods as
    /// their `mapguard.io/mode` and `mapguard.io/coverage` annotations say.
    Daemon(Box<DaemonArgs>),
    /// The opt-in responder (one in the cluster, an identity of its own):
    /// evicts the Pod or cordons the node of a workload whose violations
    /// and crashes, as the node agents' records count them, pass a
    /// threshold.
    Respond(RespondArgs),
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

/// The node agent's default `--delete-latency-on`: 1% of the time with
/// the default 10 s period.
pub const DAEMON_DELETE_LATENCY_ON: Duration = Duration::from_millis(100);

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
    pub action: ResponseAction,
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

/// What the responder does when a workload passes the threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ResponseAction {
    Off,
    /// Evict the Pod (Eviction API: PodDisruptionBudgets are honoured).
    Evict,
    /// Cordon the node (no new Pods are scheduled on it).
    Cordon,
}
