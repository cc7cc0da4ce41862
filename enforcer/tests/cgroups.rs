//! Real processes in real kubelet-shaped cgroups on this machine, placed by
//! the process scanner: systemd and cgroupfs names, in the v2 hierarchy
//! and in a v1 controller (`pids`), both at once (hybrid), an unknown
//! runtime, CRI-O's conmon, a container's own nested cgroup, a zombie, a
//! proc root mounted elsewhere, processes exiting while scans run, and
//! what a scan costs. Needs root (skipped loudly otherwise; fails under
//! `CI=true`).

#[path = "cgroups/cache.rs"]
mod cache;
#[path = "support/kube_cgroup.rs"]
mod kube_cgroup;

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use kube_cgroup::{Driver, Hierarchy, KubeCgroup, Name, Qos, Spec};
use mapguard_enforcer::{
    host::cgroup::{self, Container, Placement, QosClass, Reason, Runtime},
    host::procfs,
    host::procscan::{DEFAULT_PROC_ROOT, ExeFor, FileId, ProcScanner, Scan},
};

/// A child process killed and reaped on drop (declare it after the cgroup
/// it runs in, so it is gone before the cgroup is removed).
struct Kid(Child);

impl Kid {
    fn spawn(cmd: &mut Command) -> Kid {
        Kid(cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}")))
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Kid {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn sleep_cmd() -> Command {
    let mut cmd = Command::new("sleep");
    cmd.arg("600").stdin(Stdio::null());
    cmd
}

fn scan() -> Scan {
    let mut scanner = ProcScanner::new(DEFAULT_PROC_ROOT).expect("/proc");
    let scan = scanner.scan().expect("scan /proc");
    assert!(
        scan.issues.is_empty(),
        "no issues as root: {:?}",
        scan.issues
    );
    scan
}

fn placement_in(scan: &Scan, pid: u32) -> Placement {
    scan.processes
        .iter()
        .find(|p| p.pid == pid)
        .unwrap_or_else(|| panic!("pid {pid} is not listed"))
        .placement
        .clone()
}

fn sleep_binary() -> FileId {
    let path = which("sleep");
    procfs::file_id(&path)
        .map(FileId::from)
        .unwrap_or_else(|| panic!("stat {}", path.display()))
}

fn which(program: &str) -> PathBuf {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{program} not on PATH"))
}

/// Asserts that `scan` places `pid` in the container `cg` describes.
fn assert_placed(
    scan: &Scan,
    pid: u32,
    cg: &KubeCgroup,
    runtime: Runtime,
    qos: QosClass,
) -> Container {
    let Placement::Container(c) = placement_in(scan, pid) else {
        panic!(
            "pid {pid} in {} is not placed: {:?}",
            cg.path(),
            placement_in(scan, pid)
        );
    };
    assert_eq!(
        c.pod_uid.as_str(),
        cg.spec().pod_uid,
        "pod UID of {}",
        cg.path()
    );
    assert_eq!(
        c.id.as_str(),
        cg.spec().container_id,
        "container of {}",
        cg.path()
    );
    assert_eq!((c.runtime, c.qos), (runtime, qos), "{}", cg.path());
    let process = scan
        .processes
        .iter()
        .find(|p| p.pid == pid)
        .expect("listed");
    assert_eq!(process.exe, Some(sleep_binary()), "the executable of {pid}");
    c
}

/// The kernel shows the path the helper says (so the names tested are the
/// names created).
fn assert_kernel_shows(pid: u32, cg: &KubeCgroup) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("cgroup file");
    assert!(
        text.lines()
            .any(|l| l.ends_with(&format!(":{}", cg.path()))),
        "{} not in\n{text}",
        cg.path()
    );
}

#[test]
fn systemd_names_in_the_v2_hierarchy() {
    if !kube_cgroup::require("systemd_names_in_the_v2_hierarchy") {
        return;
    }
    for (name, runtime, qos, want_qos) in [
        (
            Name::Containerd,
            Runtime::Containerd,
            Qos::Burstable,
            QosClass::Burstable,
        ),
        (
            Name::CriO,
            Runtime::CriO,
            Qos::Guaranteed,
            QosClass::Guaranteed,
        ),
        (
            Name::Docker,
            Runtime::Docker,
            Qos::BestEffort,
            QosClass::BestEffort,
        ),
    ] {
        let cg = KubeCgroup::create(Spec::new(Driver::Systemd, qos, name));
        let kid = Kid::spawn(cg.command(&mut sleep_cmd()));
        assert_kernel_shows(kid.pid(), &cg);
        let c = assert_placed(&scan(), kid.pid(), &cg, runtime, want_qos);
        assert_eq!((c.driver, c.nested), (cgroup::Driver::Systemd, false));
    }
}

#[test]
fn cgroupfs_names_in_a_v1_controller() {
    if !kube_cgroup::require("cgroupfs_names_in_a_v1_controller") {
        return;
    }
    let pids = Hierarchy::V1("pids");
    assert!(
        kube_cgroup::mounted(pids),
        "this machine kind mounts the v1 pids controller"
    );
    for (name, runtime, qos, want_qos) in [
        (
            Name::Containerd,
            Runtime::Unnamed,
            Qos::Guaranteed,
            QosClass::Guaranteed,
        ),
        (
            Name::CriO,
            Runtime::CriO,
            Qos::BestEffort,
            QosClass::BestEffort,
        ),
    ] {
        let cg = KubeCgroup::create(Spec::new(Driver::Cgroupfs, qos, name).hierarchies(&[pids]));
        // A process already running, moved in as a runtime moves its init.
        let kid = Kid::spawn(&mut sleep_cmd());
        cg.add(kid.pid());
        assert_eq!(cg.pids(), vec![kid.pid()]);
        assert_kernel_shows(kid.pid(), &cg);
        let c = assert_placed(&scan(), kid.pid(), &cg, runtime, want_qos);
        assert_eq!(c.driver, cgroup::Driver::Cgroupfs);
    }
}

#[test]
fn hybrid_v1_and_v2_together() {
    if !kube_cgroup::require("hybrid_v1_and_v2_together") {
        return;
    }
    let both = [Hierarchy::V1("pids"), Hierarchy::Unified];
    let cg = KubeCgroup::create(
        Spec::new(Driver::Systemd, Qos::Burstable, Name::Containerd).hierarchies(&both),
    );
    let kid = Kid::spawn(cg.command(&mut sleep_cmd()));
    assert_placed(
        &scan(),
        kid.pid(),
        &cg,
        Runtime::Containerd,
        QosClass::Burstable,
    );

    // The same process in another container's cgroup in the v1 hierarchy:
    // never a guess between the two.
    let other = KubeCgroup::create(
        Spec::new(Driver::Systemd, Qos::Burstable, Name::Containerd)
            .pod_uid(&cg.spec().pod_uid)
            .hierarchies(&[Hierarchy::V1("pids")]),
    );
    other.add(kid.pid());
    let Placement::Unplaceable(u) = placement_in(&scan(), kid.pid()) else {
        panic!("a process in two containers must not be placed");
    };
    assert_eq!(u.path, cg.path(), "the v2 path comes first");
    assert_eq!(
        u.reason,
        Reason::HierarchiesDisagree {
            other: other.path().to_string()
        }
    );
}

#[test]
fn an_unknown_runtime_is_unplaceable() {
    if !kube_cgroup::require("an_unknown_runtime_is_unplaceable") {
        return;
    }
    for (driver, hierarchy) in [
        (Driver::Systemd, Hierarchy::Unified),
        (Driver::Cgroupfs, Hierarchy::V1("pids")),
    ] {
        let spec = Spec::new(driver, Qos::BestEffort, Name::Containerd);
        let name = format!("kata-{}.scope", spec.container_id);
        let spec = Spec {
            name: Name::Other(name.clone()),
            ..spec
        };
        let cg = KubeCgroup::create(spec.hierarchies(&[hierarchy]));
        let kid = Kid::spawn(cg.command(&mut sleep_cmd()));
        let scan = scan();
        match placement_in(&scan, kid.pid()) {
            Placement::Unplaceable(u) => {
                assert_eq!(u.reason, Reason::UnknownRuntime { name: name.clone() });
                assert_eq!(u.path, cg.path());
                assert!(u.to_string().contains(&name), "{u}");
            }
            other => panic!("{driver:?}: {other:?}"),
        }
        assert!(
            scan.containers().all(|(p, _)| p.pid != kid.pid()),
            "never among the containers"
        );
        assert!(scan.unplaceable().any(|(p, _)| p.pid == kid.pid()));
    }
}

#[test]
fn crio_conmon_is_a_monitor_not_the_container() {
    if !kube_cgroup::require("crio_conmon_is_a_monitor_not_the_container") {
        return;
    }
    let cg = KubeCgroup::create(Spec::new(Driver::Systemd, Qos::Burstable, Name::CriOConmon));
    let kid = Kid::spawn(cg.command(&mut sleep_cmd()));
    match placement_in(&scan(), kid.pid()) {
        Placement::Monitor(c) => {
            assert_eq!(c.id.as_str(), cg.spec().container_id);
            assert_eq!(c.runtime, Runtime::CriO);
        }
        other => panic!("conmon placed as {other:?}"),
    }
}

#[test]
fn a_containers_own_nested_cgroup() {
    if !kube_cgroup::require("a_containers_own_nested_cgroup") {
        return;
    }
    let cg = KubeCgroup::create(
        Spec::new(Driver::Systemd, Qos::BestEffort, Name::Containerd).nested("init.scope"),
    );
    let kid = Kid::spawn(cg.command(&mut sleep_cmd()));
    assert!(cg.path().ends_with(".scope/init.scope"), "{}", cg.path());
    let c = assert_placed(
        &scan(),
        kid.pid(),
        &cg,
        Runtime::Containerd,
        QosClass::BestEffort,
    );
    assert!(c.nested);
}

#[test]
fn a_zombie_in_a_pod_is_left_out_quietly() {
    if !kube_cgroup::require("a_zombie_in_a_pod_is_left_out_quietly") {
        return;
    }
    let cg = KubeCgroup::create(Spec::new(Driver::Systemd, Qos::Burstable, Name::Containerd));
    let mut zombie = cg
        .command(&mut Command::new("true"))
        .spawn()
        .expect("spawn true");
    let pid = zombie.id();
    // Not reaped: wait until it has exited and is a zombie.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z'))
    }) {
        assert!(Instant::now() < deadline, "{pid} never became a zombie");
        std::thread::sleep(Duration::from_millis(5));
    }
    let cgroup_text =
        std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("zombie's cgroup");
    let scan = scan();
    assert!(
        scan.processes.iter().all(|p| p.pid != pid),
        "zombie {pid} listed; its cgroup file says\n{cgroup_text}"
    );
    assert!(scan.stats.exited >= 1, "{:?}", scan.stats);
    zombie.wait().expect("reap");
}

#[test]
fn a_proc_root_mounted_elsewhere() {
    if !kube_cgroup::require("a_proc_root_mounted_elsewhere") {
        return;
    }
    let cg = KubeCgroup::create(Spec::new(Driver::Cgroupfs, Qos::Burstable, Name::Docker));
    let kid = Kid::spawn(cg.command(&mut sleep_cmd()));
    let host_proc = ProcMount::new();
    let mut scanner = ProcScanner::new(&host_proc.0.0).expect("the other proc root");
    assert_eq!(scanner.proc_root(), host_proc.0.0);
    let there = scanner.scan().expect("scan the other root");
    assert!(there.issues.is_empty(), "{:?}", there.issues);
    assert_placed(
        &there,
        kid.pid(),
        &cg,
        Runtime::Unnamed,
        QosClass::Burstable,
    );
    let process = there
        .processes
        .iter()
        .find(|p| p.pid == kid.pid())
        .expect("listed");
    assert_eq!(
        procfs::file_id(&process.exe_path(scanner.proc_root())).map(FileId::from),
        Some(sleep_binary()),
        "the attach path resolves to the binary"
    );
    assert!(
        ProcScanner::new(std::env::temp_dir()).is_err(),
        "a folder that is not procfs is refused"
    );
}

/// A second procfs mount of this PID namespace, as an agent in a container
/// sees the host's `/proc` at `/host/proc`; unmounted on drop.
struct ProcMount(cache::MountPoint);

impl ProcMount {
    fn new() -> ProcMount {
        let mount = cache::MountPoint::new("proc");
        let status = Command::new("mount")
            .args(["-t", "proc", "proc"])
            .arg(&mount.0)
            .status()
            .expect("run mount");
        assert!(status.success(), "mount -t proc: {status}");
        ProcMount(mount)
    }
}

#[test]
fn processes_exiting_while_scans_run_are_no_issues() {
    if !kube_cgroup::require("processes_exiting_while_scans_run_are_no_issues") {
        return;
    }
    let cg = KubeCgroup::create(Spec::new(Driver::Systemd, Qos::BestEffort, Name::CriO));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let churn = {
        let stop = stop.clone();
        let procs = cg.path().to_string();
        std::thread::spawn(move || {
            let unified = kube_cgroup::mount_point(Hierarchy::Unified).expect("v2");
            let leaf = unified
                .join(procs.trim_start_matches('/'))
                .join("cgroup.procs");
            let mut started = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let mut kid = Command::new("true").spawn().expect("spawn true");
                let _ = std::fs::write(&leaf, kid.id().to_string());
                let _ = kid.wait();
                started += 1;
            }
            started
        })
    };
    let mut scanner = ProcScanner::new(DEFAULT_PROC_ROOT)
        .expect("/proc")
        .with_exe_for(ExeFor::All);
    let mut gone = 0;
    for _ in 0..100 {
        let scan = scanner.scan().expect("scan");
        let unexpected: Vec<_> = scan
            .issues
            .iter()
            .filter(|i| i.pid != 1) // pid 1 of this machine kind hides its exe even from root
            .collect();
        assert!(unexpected.is_empty(), "{unexpected:?}");
        gone += scan.stats.vanished + scan.stats.exited;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let started = churn.join().expect("churn thread");
    assert!(started > 0, "processes were started and exited meanwhile");
    eprintln!("{started} processes came and went; scans saw {gone} of them go mid-scan");
}

/// The daemon scans every few hundred milliseconds: on a node with a
/// thousand processes, a few hundred of them in containers, a scan reads
/// the cgroup files of the processes it has not seen before only, and
/// takes a small part of that period.
#[test]
fn a_scan_of_a_thousand_processes_is_cheap() {
    if !kube_cgroup::require("a_scan_of_a_thousand_processes_is_cheap") {
        return;
    }
    let containers: Vec<KubeCgroup> = (0..10)
        .map(|i| {
            let name = [Name::Containerd, Name::CriO][i % 2].clone();
            KubeCgroup::create(Spec::new(Driver::Systemd, Qos::Burstable, name))
        })
        .collect();
    let mut kids = Vec::new();
    for i in 0..1000 {
        let mut cmd = sleep_cmd();
        if i % 3 == 0 {
            containers[i % containers.len()].command(&mut cmd);
        }
        kids.push(Kid::spawn(&mut cmd));
    }
    let ours: std::collections::HashSet<u32> = kids.iter().map(Kid::pid).collect();
    let mut scanner = ProcScanner::new(DEFAULT_PROC_ROOT).expect("/proc");
    let mut per_process = Vec::new();
    for round in 0..20 {
        let scan = scanner.scan().expect("scan");
        per_process.push(scan.stats.elapsed / scan.stats.listed as u32);
        let placed = scan
            .containers()
            .filter(|(p, _)| ours.contains(&p.pid))
            .count();
        assert_eq!(placed, 334, "round {round}: every container process placed");
        if round % 10 != 0 {
            // Others' processes come and go; ours are known.
            assert!(
                scan.stats.read < scan.stats.listed - ours.len(),
                "round {round} read {} of {} processes again",
                scan.stats.read,
                scan.stats.listed
            );
        }
    }
    per_process.sort();
    let median = per_process[per_process.len() / 2];
    eprintln!(
        "scan of {} processes: median {median:?} per process, slowest round {:?}",
        kids.len(),
        per_process[per_process.len() - 1]
    );
    // Release builds take ~3 µs; this bound only catches a scan that
    // reads far more than it should.
    assert!(
        median < Duration::from_micros(50),
        "{median:?} per process: too slow to repeat every few hundred ms"
    );
    drop(kids);
    drop(containers);
}

#[test]
fn the_helper_removes_what_it_created() {
    if !kube_cgroup::require("the_helper_removes_what_it_created") {
        return;
    }
    let unified = kube_cgroup::mount_point(Hierarchy::Unified).expect("v2");
    let pids = kube_cgroup::mount_point(Hierarchy::V1("pids")).expect("pids");
    let both = [Hierarchy::Unified, Hierarchy::V1("pids")];
    let cg = KubeCgroup::create(
        Spec::new(Driver::Cgroupfs, Qos::Burstable, Name::CriO).hierarchies(&both),
    );
    let top = cg.path().split('/').nth(1).expect("test root").to_string();
    let kid = Kid::spawn(cg.command(&mut sleep_cmd()));
    assert!(unified.join(&top).is_dir() && pids.join(&top).is_dir());
    // A panicking test drops its cgroups with the process still inside.
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        let _cg = cg;
        panic!("a failing test");
    }));
    assert!(result.is_err());
    assert!(
        !unified.join(&top).exists(),
        "{top} left in the v2 hierarchy"
    );
    assert!(
        !pids.join(&top).exists(),
        "{top} left in the pids hierarchy"
    );
    let own = std::fs::read_to_string("/proc/self/cgroup").expect("own cgroup");
    let now = std::fs::read_to_string(format!("/proc/{}/cgroup", kid.pid())).expect("kid's cgroup");
    assert_eq!(now, own, "the process went back where this test runs");
    assert!(
        Path::new(&format!("/proc/{}", kid.pid())).exists(),
        "and still runs"
    );
}
