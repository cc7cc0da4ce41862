//! The scanner remembers the processes it has read and, between full
//! reads, reads a process's cgroup again only when it is a new process or
//! has called `execve`. These tests make each of those happen for real.

use std::io::{BufRead as _, BufReader, Write as _};

use super::*;

/// A scanner that never rereads everything on its own in these tests.
fn remembering(root: &Path) -> ProcScanner {
    ProcScanner::new(root)
        .expect("proc root")
        .with_reread_every(1_000_000)
}

fn placement_now(scanner: &mut ProcScanner, pid: u32) -> (Placement, usize) {
    let scan = scanner.scan().expect("scan");
    assert!(scan.issues.iter().all(|i| i.pid == 1), "{:?}", scan.issues);
    (placement_in(&scan, pid), scan.stats.read)
}

/// A shell that waits for a line on stdin, then runs `then`.
fn waiting_shell(then: &str) -> Command {
    let mut cmd = Command::new("sh");
    cmd.args(["-c", &format!("read _; {then}")])
        .stdin(Stdio::piped());
    cmd
}

fn go_on(kid: &mut Kid) {
    let stdin = kid.0.stdin.as_mut().expect("piped stdin");
    stdin.write_all(b"\n").expect("write to the shell");
    stdin.flush().expect("flush");
}

#[test]
fn a_process_that_joins_a_container_then_execs_is_read_again() {
    if !kube_cgroup::require("a_process_that_joins_a_container_then_execs_is_read_again") {
        return;
    }
    // As a runtime starts a container's process: created outside, moved
    // into the container's cgroup, then exec'ing the container's program.
    let cg = KubeCgroup::create(Spec::new(Driver::Systemd, Qos::Burstable, Name::Containerd));
    let mut kid = Kid::spawn(&mut waiting_shell("exec sleep 600"));
    let mut scanner = remembering(Path::new(DEFAULT_PROC_ROOT));
    let (before, _) = placement_now(&mut scanner, kid.pid());
    assert!(
        before.container().is_none(),
        "not in a container yet: {before:?}"
    );
    cg.add(kid.pid());
    go_on(&mut kid);
    let deadline = Instant::now() + Duration::from_secs(10);
    while procfs::file_id(&PathBuf::from(format!("/proc/{}/exe", kid.pid())))
        != Some(sleep_binary().into())
    {
        assert!(Instant::now() < deadline, "the shell never exec'd sleep");
        std::thread::sleep(Duration::from_millis(5));
    }
    let scan = scanner.scan().expect("scan");
    assert!(
        scan.stats.read < scan.stats.listed,
        "known processes were not read again: {:?}",
        scan.stats
    );
    assert_placed(
        &scan,
        kid.pid(),
        &cg,
        Runtime::Containerd,
        QosClass::Burstable,
    );
}

#[test]
fn a_move_without_exec_is_seen_at_the_next_full_read() {
    if !kube_cgroup::require("a_move_without_exec_is_seen_at_the_next_full_read") {
        return;
    }
    let cg = KubeCgroup::create(Spec::new(Driver::Cgroupfs, Qos::BestEffort, Name::CriO));
    let kid = Kid::spawn(&mut sleep_cmd());
    let mut scanner = ProcScanner::new(DEFAULT_PROC_ROOT)
        .expect("/proc")
        .with_reread_every(3);
    let (first, read) = placement_now(&mut scanner, kid.pid());
    assert!(first.container().is_none(), "{first:?}");
    assert!(read > 0, "the first scan reads everything");
    cg.add(kid.pid());
    for scan in 2..=3 {
        let (p, _) = placement_now(&mut scanner, kid.pid());
        assert!(
            p.container().is_none(),
            "scan {scan} remembered the process (no exec, same process): {p:?}"
        );
    }
    let scan = scanner.scan().expect("fourth scan: a full read");
    assert_eq!(
        scan.stats.read, scan.stats.listed,
        "a full read reads every process"
    );
    assert_placed(&scan, kid.pid(), &cg, Runtime::CriO, QosClass::BestEffort);
}

#[test]
fn a_container_process_that_exits_is_left_out_at_once() {
    if !kube_cgroup::require("a_container_process_that_exits_is_left_out_at_once") {
        return;
    }
    let cg = KubeCgroup::create(Spec::new(Driver::Systemd, Qos::BestEffort, Name::Docker));
    let mut kid = Kid::spawn(cg.command(&mut waiting_shell("exit 0")));
    let mut scanner = remembering(Path::new(DEFAULT_PROC_ROOT));
    let (p, _) = placement_now(&mut scanner, kid.pid());
    assert!(p.container().is_some(), "{p:?}");
    go_on(&mut kid);
    // Not reaped: it stays a zombie until this test waits for it.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let scan = scanner.scan().expect("scan");
        if scan.processes.iter().all(|p| p.pid != kid.pid()) {
            assert!(
                Path::new(&format!("/proc/{}", kid.pid())).exists(),
                "left out while still a zombie"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the exited shell is still listed"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A PID namespace of its own where the same pid is handed out twice on
/// purpose (`ns_last_pid`), to two `sleep`s in two containers: the second
/// runs the same file under the same pid, and only the new `/proc`
/// directory tells them apart.
#[test]
fn a_pid_given_to_a_new_process_is_read_again() {
    if !kube_cgroup::require("a_pid_given_to_a_new_process_is_read_again") {
        return;
    }
    let a = KubeCgroup::create(Spec::new(Driver::Systemd, Qos::Burstable, Name::Containerd));
    let b = KubeCgroup::create(Spec::new(Driver::Systemd, Qos::Burstable, Name::CriO));
    let unified = kube_cgroup::mount_point(Hierarchy::Unified).expect("v2");
    let procs = |cg: &KubeCgroup| {
        unified
            .join(cg.path().trim_start_matches('/'))
            .join("cgroup.procs")
    };
    let mount = MountPoint::new("pidns");
    // Runs as pid 1 of the new namespace; pids it prints are that namespace's.
    let script = r#"
        mount -t proc proc "$1" || exit 1
        sleep 600 & first=$!
        echo "$first" > "$2"; echo "$first"
        read _
        kill "$first"; wait "$first" 2>/dev/null
        echo $((first - 1)) > "$1/sys/kernel/ns_last_pid"
        sleep 600 & second=$!
        echo "$second" > "$3"; echo "$second"
        read _
        kill "$second"; wait "$second" 2>/dev/null
    "#;
    let mut kid = Kid::spawn(
        Command::new("unshare")
            .args(["--pid", "--fork", "--kill-child", "sh", "-c", script, "sh"])
            .arg(&mount.0)
            .arg(procs(&a))
            .arg(procs(&b))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped()),
    );
    let mut lines = BufReader::new(kid.0.stdout.take().expect("piped stdout")).lines();
    let mut next_pid = || -> u32 {
        let line = lines
            .next()
            .expect("the namespace's shell printed a pid")
            .expect("read its output");
        line.trim()
            .parse()
            .unwrap_or_else(|e| panic!("{line:?}: {e}"))
    };
    let first = next_pid();
    let mut scanner = remembering(&mount.0);
    let (p, _) = placement_now(&mut scanner, first);
    assert_eq!(
        p.container().map(|c| c.id.as_str()),
        Some(a.spec().container_id.as_str())
    );

    go_on(&mut kid);
    let second = next_pid();
    assert_eq!(second, first, "ns_last_pid handed the pid out again");
    let (p, read) = placement_now(&mut scanner, second);
    assert!(read >= 1, "the new process was read");
    assert_eq!(
        p.container().map(|c| c.id.as_str()),
        Some(b.spec().container_id.as_str()),
        "the new process with the old pid is in the other container"
    );
    go_on(&mut kid);
    drop(kid);
}

/// An empty folder to mount a file system on, unmounted and removed on drop.
pub struct MountPoint(pub PathBuf);

impl MountPoint {
    pub fn new(what: &str) -> MountPoint {
        let dir = std::env::temp_dir().join(format!("mapguard-{what}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mount point");
        MountPoint(dir)
    }
}

impl Drop for MountPoint {
    fn drop(&mut self) {
        // Lazily: a child forked by a parallel test holds this process's
        // descriptors (the scanner's, of the mount) until it executes.
        // Mounted by a process that may be gone: unmount whatever is there.
        while Command::new("umount")
            .arg("--lazy")
            .arg(&self.0)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        {}
        let _ = std::fs::remove_dir(&self.0);
    }
}
