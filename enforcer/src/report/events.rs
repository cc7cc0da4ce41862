//! Violation events: decoding the kernel's records, symbolizing both stacks,
//! the JSON line contract, the stderr summary and audit-mode deduplication.

use std::{
    collections::HashMap,
    io::Write,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use mapguard_common::{MAX_FRAMES, Violation, action};
use serde::Serialize;

use mapguard_api::frame::Frame;
use mapguard_api::pair::CallSitePair;
use mapguard_api::vocab::{Action, CrashMessage, Detector, Kind, Op};

use crate::{binary::target::BinaryTarget, bpf::sampler::Estimate, host::cgroup::PodInfo};

mod time;

/// Why an event could not be handled.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("kernel record of {len} bytes, expected {expected}")]
    Truncated { len: usize, expected: usize },
    #[error("cannot write event: {0}")]
    Write(#[source] std::io::Error),
}

/// Decodes one ring-buffer record.
pub fn decode(bytes: &[u8]) -> Result<Violation, EventError> {
    let expected = size_of::<Violation>();
    if bytes.len() < expected {
        return Err(EventError::Truncated {
            len: bytes.len(),
            expected,
        });
    }
    // SAFETY: `Violation` is `repr(C)`, valid for any bit pattern, and the
    // slice holds at least `size_of::<Violation>()` bytes.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<Violation>()) })
}

/// One violation as written to the events stream (the JSON line contract).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ViolationRecord {
    pub event: &'static str,
    pub kind: Kind,
    /// When the kernel saw it, to the microsecond (RFC 3339 text in the line).
    #[serde(serialize_with = "time::serialize")]
    pub timestamp: SystemTime,
    pub pid: u32,
    pub tid: u32,
    pub binary: String,
    /// Address of the map; `None` when the probes did not see which map (a
    /// crash-path report under `light` coverage).
    pub map: Option<String>,
    pub op: Op,
    pub conflicting_op: Op,
    pub goroutine: u64,
    pub conflicting_goroutine: u64,
    pub stack: Vec<Frame>,
    pub conflicting_stack: Vec<Frame>,
    pub action: Action,
    pub detected_by: Detector,
    /// For a report from the runtime's crash path: the message the runtime
    /// was about to print (it was about to abort the process).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crash_message: Option<CrashMessage>,
    pub namespace: Option<String>,
    pub pod: Option<String>,
    pub pod_uid: Option<String>,
    pub container: Option<String>,
    /// The Go release that built the binary (`go1.26.11`).
    pub go_version: Option<String>,
    /// An audit-mode repeat of a violation already reported: counted, not
    /// written again.
    #[serde(skip)]
    pub repeat: bool,
    /// Kind, operations and user call sites, computed once from the
    /// stacks: what deduplication, records, Events and metrics key on.
    #[serde(skip)]
    pub pair: CallSitePair,
}

/// Turns kernel records into JSON lines and stderr summaries.
pub struct Reporter {
    /// By id (`BinaryTarget::id`, the `binary_id` the probes carry).
    binaries: HashMap<u32, Arc<BinaryTarget>>,
    out: Box<dyn Write + Send>,
    pods: HashMap<u32, Known>,
    /// How long a forgotten process's identity is kept: its last reports
    /// (a kill's, say) can still be in the ring when it is forgotten.
    keep_forgotten: Duration,
    /// Processes forgotten since identities were last pruned.
    forgotten: usize,
    seen: HashMap<DedupKey, u64>,
    total: u64,
}

/// A process's Kubernetes identity, and when the session forgot the
/// process (`None` while it is enforced).
#[derive(Debug, Clone)]
struct Known {
    pod: PodInfo,
    forgotten_at: Option<Instant>,
}

impl Known {
    fn new(pod: PodInfo) -> Known {
        Known {
            pod,
            forgotten_at: None,
        }
    }
}

/// Forgotten processes between two prunings of their identities.
const PRUNE_EVERY: usize = 64;

/// Identical violations: same process and call-site pair.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct DedupKey {
    pid: u32,
    pair: CallSitePair,
}

impl Reporter {
    pub fn new(out: Box<dyn Write + Send>) -> Reporter {
        Reporter {
            binaries: HashMap::new(),
            out,
            pods: HashMap::new(),
            keep_forgotten: Duration::from_secs(60),
            forgotten: 0,
            seen: HashMap::new(),
            total: 0,
        }
    }

    /// Adds a binary, under its id (the `binary_id` the probes carry).
    pub fn add_binary(&mut self, target: Arc<BinaryTarget>) {
        self.binaries.insert(target.id, target);
    }

    /// Forgets binary `id` (no process runs it any more).
    pub fn remove_binary(&mut self, id: u32) {
        self.binaries.remove(&id);
    }

    /// Writes a `sampling` line: the duty cycle sampled coverage chose for
    /// a process (or binary), and the detection bound it gives.
    pub fn sampling(
        &mut self,
        target: &str,
        pid: Option<u32>,
        estimate: &Estimate,
        budget: f64,
    ) -> Result<(), EventError> {
        let line = serde_json::json!({
            "event": "sampling",
            "timestamp": time::rfc3339(SystemTime::now()),
            "target": target,
            "pid": pid,
            "budget": budget,
            "hits_per_second": estimate.hits_per_second,
            "cost_while_on": estimate.cost_while_on,
            "duty_cycle": estimate.duty_cycle,
            "on_seconds": estimate.on.as_secs_f64(),
            "period_seconds": estimate.period.as_secs_f64(),
            "estimated_cost": estimate.estimated_cost,
        });
        writeln!(self.out, "{line}").map_err(EventError::Write)?;
        self.out.flush().map_err(EventError::Write)
    }

    /// Remembers the Kubernetes identity of a process being guarded,
    /// while it exists (read again for an id a forgotten process had).
    pub fn remember_pod(&mut self, pid: u32) {
        let stale = self.pods.get(&pid).is_none_or(|k| k.forgotten_at.is_some());
        if stale {
            self.pods.insert(pid, Known::new(PodInfo::of_pid(pid)));
        }
    }

    /// The session no longer enforces on process `pid`: its identity is
    /// kept a while for the reports still in flight, then dropped (the
    /// table would otherwise grow with every process the node ever ran).
    pub fn forget_pod(&mut self, pid: u32) {
        let now = Instant::now();
        if let Some(known) = self.pods.get_mut(&pid) {
            known.forgotten_at.get_or_insert(now);
        }
        self.forgotten += 1;
        if self.forgotten >= PRUNE_EVERY {
            self.forgotten = 0;
            let keep = self.keep_forgotten;
            self.pods.retain(|_, k| {
                k.forgotten_at
                    .is_none_or(|at| now.duration_since(at) < keep)
            });
        }
    }

    /// Names a process's Kubernetes identity (what the caller knows beats
    /// what its cgroup says).
    pub fn set_pod(&mut self, pid: u32, pod: PodInfo) {
        self.pods.insert(pid, Known::new(pod));
    }

    /// Violations seen so far (including suppressed repeats).
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Handles one kernel record: writes the JSON line and the stderr
    /// summary, unless it repeats an audit-mode violation already reported
    /// (then the record comes back marked `repeat`, for counting).
    pub fn handle(&mut self, bytes: &[u8]) -> Result<ViolationRecord, EventError> {
        let v = decode(bytes)?;
        self.total += 1;
        // A process never guarded (registered by the exec hook alone):
        // named from its cgroup now; a forgotten one keeps its identity.
        if let std::collections::hash_map::Entry::Vacant(e) = self.pods.entry(v.pid) {
            e.insert(Known::new(PodInfo::of_pid(v.pid)));
        }
        let mut record = self.record(&v);
        let key = DedupKey {
            pid: record.pid,
            pair: record.pair.clone(),
        };
        let count = self.seen.entry(key).or_insert(0);
        *count += 1;
        if *count > 1 && v.action == action::AUDIT {
            record.repeat = true;
            return Ok(record);
        }
        let mut line = serde_json::to_vec(&record).map_err(|e| EventError::Write(e.into()))?;
        line.push(b'\n');
        self.out.write_all(&line).map_err(EventError::Write)?;
        self.out.flush().map_err(EventError::Write)?;
        eprintln!("{}", summary(&record));
        Ok(record)
    }

    /// Writes a final `summary` line with the repeat counts.
    pub fn finish(&mut self) -> Result<(), EventError> {
        let repeated: Vec<_> = self
            .seen
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(k, n)| {
                let p = &k.pair;
                let text =
                    |f: &Option<Frame>| f.as_ref().map_or_else(|| "?".to_owned(), Frame::to_string);
                serde_json::json!({
                    "pid": k.pid, "kind": p.kind, "op": p.op,
                    "conflicting_op": p.conflicting_op, "site": text(&p.frame),
                    "conflicting_site": text(&p.conflicting_frame),
                    "count": n,
                })
            })
            .collect();
        if self.total == 0 {
            return Ok(());
        }
        for r in &repeated {
            eprintln!(
                "mapguard: {} ({} vs {}) in pid {} seen {} times",
                r["kind"].as_str().unwrap_or("?"),
                r["op"].as_str().unwrap_or("?"),
                r["conflicting_op"].as_str().unwrap_or("?"),
                r["pid"],
                r["count"]
            );
        }
        let line = serde_json::json!({
            "event": "summary",
            "timestamp": time::rfc3339(SystemTime::now()),
            "violations": self.total,
            "distinct": self.seen.len(),
            "repeated": repeated,
        });
        writeln!(self.out, "{line}").map_err(EventError::Write)?;
        self.out.flush().map_err(EventError::Write)
    }

    fn record(&self, v: &Violation) -> ViolationRecord {
        let binary = self.binaries.get(&v.binary_id);
        let bias = binary.map_or(0, |b| b.load_bias(v.pid, v.point, v.stack[0]));
        let symbolize = |stack: &[u64; MAX_FRAMES], depth: u8| -> Vec<Frame> {
            let depth = usize::from(depth).min(MAX_FRAMES);
            stack[..depth]
                .iter()
                .enumerate()
                .map(|(i, pc)| match binary {
                    // Return addresses point after the call: look up pc-1.
                    Some(b) => b.describe_pc(bias, if i == 0 { *pc } else { pc - 1 }),
                    None => Frame::Address(*pc),
                })
                .collect()
        };
        let pod = self
            .pods
            .get(&v.pid)
            .map(|k| k.pod.clone())
            .unwrap_or_default();
        let stack = symbolize(&v.stack, v.depth);
        let conflicting_stack = symbolize(&v.conflicting_stack, v.conflicting_depth);
        let kind = Kind::from_kernel(v.kind);
        let op = match Op::from_kernel(v.op) {
            // No map operation on record (light coverage): the one the
            // reporting goroutine's stack is in.
            Op::Unknown => binary.map_or(Op::Unknown, |b| op_in_stack(b, &stack)),
            op => op,
        };
        let conflicting_op = Op::from_kernel(v.conflicting_op);
        ViolationRecord {
            event: "violation",
            kind,
            timestamp: time::from_ktime(v.ts),
            pid: v.pid,
            tid: v.tid,
            binary: binary
                .map(|b| b.name.display().to_string())
                .unwrap_or_default(),
            map: (v.map != 0).then(|| format!("{:#x}", v.map)),
            op,
            conflicting_op,
            goroutine: v.goid,
            conflicting_goroutine: v.conflicting_goid,
            pair: CallSitePair::new(kind, op, conflicting_op, &stack, &conflicting_stack),
            stack,
            conflicting_stack,
            action: Action::from_kernel(v.action),
            detected_by: Detector::from_kernel(v.detected_by),
            crash_message: Detector::from_kernel(v.detected_by)
                .is_crash_path()
                .then(|| CrashMessage::from_kernel(v.message)),
            namespace: pod.namespace,
            pod: pod.pod,
            pod_uid: pod.pod_uid,
            container: pod.container,
            go_version: binary.map(|b| b.go_version().to_string()),
            repeat: false,
        }
    }
}

/// The operation of the innermost probed map function in a symbolized
/// stack, or `Unknown`.
fn op_in_stack(binary: &BinaryTarget, stack: &[Frame]) -> Op {
    stack
        .iter()
        .filter_map(Frame::function)
        .find_map(|function| {
            binary
                .points
                .iter()
                .find(|p| !p.is_backstop() && !p.is_return() && p.symbol == function)
        })
        .map_or(Op::Unknown, |p| Op::from_kernel(p.cfg.op))
}

/// `mapguard: concurrent_write on map 0xc000.. in pid 123: goroutine 7
/// delete at main.worker main.go:31 while goroutine 6 assign at main.main.func1
/// main.go:22 — killed`
pub fn summary(r: &ViolationRecord) -> String {
    // A crash-path report where no other writer of the map is on record
    // (the runtime noticed the damage after the fact) has one side only.
    let other = if r.conflicting_stack.is_empty() {
        "the other writer is not on record".to_string()
    } else {
        format!(
            "while goroutine {} {} at {}",
            r.conflicting_goroutine,
            r.conflicting_op,
            r.pair.conflicting_site().unwrap_or_else(|| "?".to_owned())
        )
    };
    let map = match &r.map {
        Some(address) => format!("map {address}"),
        None => "a map".to_string(),
    };
    format!(
        "mapguard: {} on {map} in pid {}: goroutine {} {} at {} {other} — {}",
        r.kind,
        r.pid,
        r.goroutine,
        r.op,
        r.pair.site(),
        r.action
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use mapguard_common::{detector, kind, op};
    use std::time::UNIX_EPOCH;

    fn frames(text: &[&str]) -> Vec<Frame> {
        text.iter()
            .map(|f| f.parse().unwrap_or_else(|e| panic!("{e}")))
            .collect()
    }

    /// A kernel record made into a report (the other side's binary not
    /// known: its frames stay addresses), the reporting side then as a
    /// binary describes it, at a known time.
    fn record() -> ViolationRecord {
        let mut v = of_pid(42);
        (v.kind, v.action, v.detected_by) =
            (kind::CONCURRENT_WRITE, action::KILL, detector::WRITING_FLAG);
        (v.op, v.conflicting_op) = (op::DELETE, op::ASSIGN);
        (v.tid, v.map) = (43, 0x00c0_0001_2000);
        (v.goid, v.conflicting_goid) = (7, 6);
        v.conflicting_stack[..2].copy_from_slice(&[0x4a_1b2c, 0x4a_0000]);
        v.conflicting_depth = 2;
        let mut r = Reporter::new(Box::new(std::io::sink())).record(&v);
        r.stack = frames(&[
            "runtime.mapdelete_fast64 /usr/lib/go/src/runtime/map_fast64.go:301",
            "main.deleter /src/app/main.go:26",
        ]);
        r.pair = CallSitePair::new(
            r.kind,
            r.op,
            r.conflicting_op,
            &r.stack,
            &r.conflicting_stack,
        );
        r.timestamp = UNIX_EPOCH + Duration::from_micros(1_709_210_096_000_007);
        r
    }

    #[test]
    fn the_line_and_the_summary_are_pinned() {
        // The JSON line contract, byte for byte (pinned from the string
        // frames and time before they were typed).
        let line = serde_json::to_string(&record()).expect("serializable");
        assert_eq!(
            line,
            concat!(
                r#"{"event":"violation","kind":"concurrent_write","#,
                r#""timestamp":"2024-02-29T12:34:56.000007Z","pid":42,"tid":43,"#,
                r#""binary":"","map":"0xc000012000","op":"delete","#,
                r#""conflicting_op":"assign","goroutine":7,"conflicting_goroutine":6,"#,
                r#""stack":["runtime.mapdelete_fast64 /usr/lib/go/src/runtime/map_fast64.go:301","#,
                r#""main.deleter /src/app/main.go:26"],"#,
                r#""conflicting_stack":["0x4a1b2c","0x4a0000"],"#,
                r#""action":"killed","detected_by":"writing_flag","namespace":null,"#,
                r#""pod":null,"pod_uid":null,"container":null,"go_version":null}"#,
            )
        );
        assert_eq!(
            summary(&record()),
            "mapguard: concurrent_write on map 0xc000012000 in pid 42: goroutine 7 delete \
             at main.deleter main.go:26 while goroutine 6 assign at 0x4a1b2c — killed"
        );
    }

    /// A kernel record of process `pid` with nothing else set.
    fn of_pid(pid: u32) -> Violation {
        let mut v = decode(&[0; size_of::<Violation>()]).expect("a whole record");
        v.pid = pid;
        v
    }

    fn named(namespace: &str) -> PodInfo {
        PodInfo {
            namespace: Some(namespace.to_owned()),
            pod: Some("p".to_owned()),
            ..PodInfo::default()
        }
    }

    #[test]
    fn a_forgotten_process_keeps_its_pod_for_its_last_reports_then_loses_it() {
        let mut r = Reporter::new(Box::new(std::io::sink()));
        // Pids no process here has: a read of /proc finds no Pod.
        let (gone, kept) = (u32::MAX - 1, u32::MAX - 2);
        r.set_pod(gone, named("shop"));
        r.set_pod(kept, named("pay"));
        r.forget_pod(gone);
        let namespace = |r: &Reporter, pid| r.record(&of_pid(pid)).namespace;
        assert_eq!(namespace(&r, gone).as_deref(), Some("shop"), "kept a while");
        // A report handled after the forget still names the Pod.
        let handled = r.handle(&bytes_of(&of_pid(gone))).expect("handled");
        assert_eq!(handled.namespace.as_deref(), Some("shop"));

        r.keep_forgotten = Duration::ZERO;
        for _ in 0..PRUNE_EVERY {
            r.forget_pod(gone);
        }
        assert_eq!(namespace(&r, gone), None, "pruned");
        assert_eq!(
            namespace(&r, kept).as_deref(),
            Some("pay"),
            "an enforced process is never pruned"
        );
    }

    #[test]
    fn a_reused_process_id_is_named_again() {
        let mut r = Reporter::new(Box::new(std::io::sink()));
        let pid = u32::MAX - 3;
        r.set_pod(pid, named("old"));
        r.remember_pod(pid);
        assert_eq!(
            r.record(&of_pid(pid)).namespace.as_deref(),
            Some("old"),
            "a process still enforced keeps what the agent named"
        );
        r.forget_pod(pid);
        // A new process got the id and is guarded: read again (no Pod).
        r.remember_pod(pid);
        assert_eq!(r.record(&of_pid(pid)).namespace, None);
    }

    fn bytes_of(v: &Violation) -> Vec<u8> {
        // SAFETY: `Violation` is plain `repr(C)` data.
        unsafe {
            std::slice::from_raw_parts((v as *const Violation).cast::<u8>(), size_of::<Violation>())
        }
        .to_vec()
    }
}
