//! `daemon`: the node agent. Runs on every node (a DaemonSet), watches the
//! Pods bound to its node, places every process of the node in its Pod
//! through its cgroup, and enforces on the Go processes of Pods annotated
//! `mapguard.io/mode` with the Pod's action and `mapguard.io/coverage`,
//! raised to what the Pod's namespace demands (`pods`).
//! Its ops port serves `/metrics`, `/healthz` and `/readyz`; `/events`,
//! the live stream of its JSON lines, is served on a Unix socket only
//! (`events_socket`), since any Pod may reach the ops port.
//!
//! Two halves: the Kubernetes side (Pod watch, ops server) on a tokio
//! runtime, and the enforcement loop (BPF, process placement, reports) on
//! a thread of its own, which never waits on the API server: while it is
//! unreachable, the Pods last known stay enforced and `/readyz` says so.

pub mod events_socket;
pub mod metrics;
pub mod ops;
pub mod pods;
pub mod reconcile;
pub mod workload;

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use mapguard_enforcer::{
    bpf::session::{Session, SessionError},
    host::procscan::ProcScanner,
    host::signals,
    report::events::ViolationRecord,
    report::output,
};

use crate::{
    config::DaemonArgs,
    records::{Admission, Origin, PodRef, RecordWriter, RecordsConfig},
};

use metrics::Metrics;
use ops::{Broadcast, Heartbeat, OpsState, Tee};
use pods::{NodeDefaults, PodTable};
use reconcile::Enforcement;

/// Why the node agent could not run.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot configure access to the API server: {0}")]
    Kubeconfig(String),
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error(transparent)]
    Listen(#[from] mapguard_kube::ops::ListenError),
    #[error(transparent)]
    EventsSocket(#[from] events_socket::EventsSocketError),
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error(transparent)]
    Output(#[from] output::OutputError),
    #[error("cannot install signal handlers: {0}")]
    Signals(#[source] nix::Error),
    #[error("the enforcement thread failed: {0}")]
    Thread(String),
    #[error("cannot read the node's processes: {0}")]
    Scan(#[source] mapguard_enforcer::host::procscan::ScanError),
}

/// Runs until SIGTERM or SIGINT; returns the exit status (128+N).
pub fn run(args: &DaemonArgs) -> Result<i32, DaemonError> {
    signals::install().map_err(DaemonError::Signals)?;
    // Before any other thread exists (the bind narrows the umask).
    let events_listener = events_socket::bind(&args.events_socket)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(DaemonError::Runtime)?;
    let defaults = NodeDefaults {
        mode: args.default_mode.mode(),
        coverage: args.default_coverage,
    };
    let pods = Arc::new(PodTable::new(defaults));
    let metrics = Arc::new(Metrics::with_pair_bound(args.max_records_per_namespace));
    let (events, _) = tokio::sync::broadcast::channel(1024);
    let ops = Arc::new(OpsState {
        metrics: Arc::clone(&metrics),
        pods: Arc::clone(&pods),
        events: events.clone(),
        bpf_ready: AtomicBool::new(false),
        heartbeat: Arc::new(Heartbeat::default()),
        stall_after: args.healthz_stall_after,
    });

    // Inside the runtime: the client's buffer task runs there.
    let client = runtime
        .block_on(mapguard_kube::client(args.kubeconfig.as_deref()))
        .map_err(|e| DaemonError::Kubeconfig(e.to_string()))?;
    let records = {
        let _runtime = runtime.enter();
        let config = RecordsConfig {
            max_records_per_namespace: args.max_records_per_namespace,
            queue_capacity: args.record_queue,
            queue_per_namespace: args.record_queue_per_namespace,
            events: args.pod_events,
            ..RecordsConfig::new(args.node.clone())
        };
        let mut writer = None;
        metrics.register(|r| writer = Some(RecordWriter::spawn(client.clone(), config, r)));
        Arc::new(writer.expect("registered"))
    };
    let listener = runtime.block_on(mapguard_kube::ops::bind(args.ops_listen))?;
    let events_listener = {
        let _runtime = runtime.enter();
        tokio::net::UnixListener::from_std(events_listener).map_err(|source| {
            events_socket::EventsSocketError::Io {
                path: args.events_socket.clone(),
                source,
            }
        })?
    };
    tracing::info!(
        node = %args.node,
        ops = %args.ops_listen,
        events_socket = %args.events_socket.display(),
        "node agent starting"
    );
    runtime.spawn(pods::watch_namespaces(client.clone(), Arc::clone(&pods)));
    runtime.spawn(pods::watch(client, args.node.clone(), Arc::clone(&pods)));
    let app = ops::app(Arc::clone(&ops));
    runtime.spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "ops server failed");
        }
    });
    let events_app = ops::events_app(Arc::clone(&ops));
    runtime.spawn(async move {
        if let Err(e) = axum::serve(events_listener, events_app).await {
            tracing::error!(error = %e, "events socket server failed");
        }
    });

    // The enforcement loop on a thread of its own.
    let out = Box::new(Tee(
        output::open(&args.enforce.events)?,
        Broadcast::new(events),
    ));
    let mut session = Session::start_with_output(&args.enforce, out)?;
    session.set_delete_latency(
        args.enforce
            .delete_latency(crate::config::DAEMON_DELETE_LATENCY_ON),
    );
    session.set_event_limit(args.event_rate, args.event_burst)?;
    // Before anything can be stopped (the exec hook registers processes).
    let stops = stop_state(&mut session, args, &metrics);
    // Holds an agent that died left: its hook went with it, the
    // processes are still stopped.
    let pin = args.bpf_pin_dir.join("held");
    let adopted = if args.exec_hold {
        mapguard_enforcer::bpf::loader::take_pinned_holds(&pin).unwrap_or_default()
    } else {
        Vec::new()
    };
    let hook = if args.exec_hold && !can_resume_any_process() {
        tracing::error!(
            "no holds at exec: the agent lacks CAP_KILL, without which it could not resume (SIGCONT) a held process of another user; new processes are found by the /proc scan only"
        );
        None
    } else if args.exec_hold {
        let _ = std::fs::create_dir_all(&args.bpf_pin_dir);
        match session.exec_hook(Some(&pin)) {
            Ok(hook) => Some(hook),
            Err(e) => {
                tracing::error!(error = %e, "no holds at exec: new processes are found by the /proc scan only (a race in their first moments is missed)");
                None
            }
        }
    } else {
        None
    };
    if hook.is_none() {
        for (pid, hold) in &adopted {
            if mapguard_enforcer::host::procfs::started_by(*pid, hold.boot_ns) {
                tracing::warn!(
                    pid,
                    "releasing a process an agent that stopped held at exec"
                );
                // SAFETY: kill has no memory preconditions; the pid was
                // just checked to be the process held.
                unsafe { libc::kill(*pid as i32, libc::SIGCONT) };
            }
        }
    }
    let session_with_hook = (session, hook);
    ops.bpf_ready.store(true, Ordering::SeqCst);
    tracing::info!("BPF program loaded; enforcing");
    let stop = Arc::new(AtomicBool::new(false));
    let scanner = ProcScanner::new(&args.proc_root).map_err(DaemonError::Scan)?;
    let mut enforcement = Enforcement::new(
        session_with_hook.0,
        Arc::clone(&pods),
        Arc::clone(&metrics),
        scanner,
    )
    .evicting_binaries_after(args.evict_binaries_after)
    .with_pod_limits(reconcile::PodLimits {
        processes: args.max_processes_per_pod,
        probes: args.max_probes_per_pod,
    })
    .with_file_timeout(args.file_timeout)
    .with_heartbeat(Arc::clone(&ops.heartbeat));
    if let Some(hook) = session_with_hook.1 {
        let mut exec_metrics = None;
        metrics.register(|r| exec_metrics = Some(reconcile::ExecMetrics::new(r)));
        let exec = reconcile::ExecState::new(
            hook,
            args.exec_hold_timeout,
            exec_metrics.expect("registered"),
            adopted,
        );
        enforcement = enforcement.with_exec(exec);
    }
    if let Some(stops) = stops {
        enforcement = enforcement.with_stops(stops);
    }
    let interval = args.scan_interval;
    let thread_stop = Arc::clone(&stop);
    let thread_records = Arc::clone(&records);
    let thread_metrics = Arc::clone(&metrics);
    let thread = std::thread::Builder::new()
        .name("enforce".into())
        .spawn(move || {
            enforcement.run(
                interval,
                || thread_stop.load(Ordering::SeqCst),
                |record, workload| {
                    if submit(&thread_records, record) == Some(Admission::Dropped) {
                        thread_metrics.dropped_events(workload, "record_queue_full", 1);
                    }
                },
            )
        })
        .map_err(|e| DaemonError::Thread(e.to_string()))?;

    let status = loop {
        std::thread::sleep(std::time::Duration::from_millis(100));
        if let Some(signal) = signals::take_pending() {
            tracing::info!(signal, "stopping");
            break 128 + signal;
        }
        if thread.is_finished() {
            break 1;
        }
    };
    stop.store(true, Ordering::SeqCst);
    thread
        .join()
        .map_err(|_| DaemonError::Thread("it panicked".into()))?;
    if let Ok(records) = Arc::try_unwrap(records) {
        let left = runtime.block_on(records.shutdown(args.shutdown_grace));
        if left > 0 {
            tracing::warn!(left, "violation records not written before stopping");
        }
    }
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    events_socket::remove(&args.events_socket);
    Ok(status)
}

/// The deadlines of stops: the kernel's table of stopped processes,
/// pinned (after the stops a previous agent left there are taken) so that
/// the next agent finds this one's. Unpinned (an error logged), deadlines
/// hold while this agent runs.
fn stop_state(
    session: &mut Session,
    args: &DaemonArgs,
    metrics: &Metrics,
) -> Option<reconcile::StopState> {
    let pin = args.bpf_pin_dir.join("stopped");
    let adopted = mapguard_enforcer::bpf::loader::take_pinned_stops(&pin).unwrap_or_default();
    let _ = std::fs::create_dir_all(&args.bpf_pin_dir);
    let table = match session.stop_table() {
        Ok(table) => table,
        Err(e) => {
            tracing::error!(error = %e, "no deadline for stops: a process stopped by mapguard stays stopped");
            return None;
        }
    };
    if let Err(e) = table.pin(&pin) {
        tracing::error!(error = %e, "stops are not kept across agent restarts: a process stopped when this agent dies stays stopped");
    }
    let mut stop_metrics = None;
    metrics.register(|r| stop_metrics = Some(reconcile::StopMetrics::new(r)));
    Some(reconcile::StopState::new(
        table,
        args.stop_deadline,
        args.after_stop_deadline,
        stop_metrics.expect("registered"),
        adopted,
    ))
}

/// Whether this process may signal any process (`CAP_KILL` effective):
/// what releasing a held process of another user takes.
fn can_resume_any_process() -> bool {
    const CAP_KILL: u32 = 5;
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
            u64::from_str_radix(hex.trim(), 16).ok()
        })
        .is_some_and(|caps| caps & (1 << CAP_KILL) != 0)
}

/// Hands a violation of a placed process to the records writer (every
/// occurrence: repeats count); `None` for a process of no known Pod.
fn submit(records: &RecordWriter, record: &ViolationRecord) -> Option<Admission> {
    let (Some(namespace), Some(name), Some(uid)) =
        (&record.namespace, &record.pod, &record.pod_uid)
    else {
        return None;
    };
    let pod = PodRef {
        namespace: namespace.clone(),
        name: name.clone(),
        uid: uid.clone(),
    };
    Some(records.submit(
        record,
        Origin {
            pod: &pod,
            container: record.container.as_deref(),
            go_version: record.go_version.as_deref(),
        },
    ))
}
