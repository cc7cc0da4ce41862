//! Bad input gets a clear error (status 2), never a panic, and never leaves
//! probes behind.

mod support;

use std::{
    os::unix::process::{CommandExt as _, ExitStatusExt as _},
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Output},
    time::Duration,
};

use mapguard_enforcer::binary::goelf::pclntab::HEADER_MAGIC;

use support::{enforcer, program, require_bpf, wait_no_mapguard_programs};

fn run(args: &[&str]) -> Output {
    Command::new(enforcer())
        .args(args)
        .output()
        .expect("run mapguard-enforcer")
}

fn assert_clear_error(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "status {:?}; stderr:\n{stderr}",
        out.status
    );
    assert!(!stderr.contains("panicked"), "panic:\n{stderr}");
    assert!(stderr.contains(needle), "expected {needle:?} in:\n{stderr}");
}

/// A pid that does not exist: one of a child that has been reaped.
fn dead_pid() -> u32 {
    let mut child = Command::new("true").spawn().expect("spawn true");
    let pid = child.id();
    child.wait().expect("wait true");
    pid
}

#[test]
fn bad_input_is_refused_clearly_without_leaking_probes() {
    if !require_bpf("bad_input_is_refused_clearly_without_leaking_probes") {
        return;
    }
    let go = program("go1.23", "clean", "mutex");
    let go = go.to_str().expect("utf-8 path");

    // Not a Go binary.
    assert_clear_error(&run(&["exec", "--", "/bin/true"]), "is not a Go binary");
    // Not an x86-64 binary.
    let arm = program("go1.24", "arm64", "delete_assign");
    let out = run(&["exec", "--", arm.to_str().expect("utf-8 path")]);
    assert_clear_error(&out, "only x86-64 is supported");
    // No such program.
    assert_clear_error(&run(&["exec", "--", "/nonexistent/program"]), "not found");
    // No such process.
    let pid = dead_pid().to_string();
    assert_clear_error(&run(&["watch", "--pid", &pid]), "no such process");
    // A process that exits while (or right after) the probes are attached:
    // either a clear error or a clean end once it has gone.
    for delay_ms in [0u64, 50, 150] {
        let mut child = Command::new(go)
            .args(["-duration", "200ms"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("spawn Go program");
        std::thread::sleep(Duration::from_millis(delay_ms));
        let out = run(&["watch", "--pid", &child.id().to_string()]);
        child.wait().expect("wait Go program");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "panic:\n{stderr}");
        match out.status.code() {
            Some(0) => assert!(
                stderr.contains("every watched process has exited"),
                "{stderr}"
            ),
            Some(2) => assert!(
                stderr.contains("no such process") || stderr.contains("none of the processes"),
                "{stderr}"
            ),
            other => panic!("status {other:?}:\n{stderr}"),
        }
    }
    // Not root: the same run as an unprivileged user.
    let out = Command::new(enforcer())
        .args(["exec", "--", go])
        .uid(65534)
        .gid(65534)
        .output()
        .expect("run mapguard-enforcer as nobody");
    assert_clear_error(&out, "needs root");

    let left = wait_no_mapguard_programs(Duration::from_secs(120));
    assert_eq!(
        left, 0,
        "mapguard BPF programs still loaded (leaked probes)"
    );
}

#[test]
fn usage_errors_are_reported_by_the_parser() {
    // No BPF needed: argument validation happens first.
    let out = run(&["watch"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--pid"));
    let out = run(&["exec", "--mode", "explode", "--", "/bin/true"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid value 'explode'"));
}

/// What a measured run of `mapguard-enforcer` cost.
struct Cost {
    /// Peak resident set in KiB: `ru_maxrss` from `wait4` on this very
    /// child, the value its `VmHWM` in `/proc/PID/status` had at exit.
    peak_kib: i64,
    cpu: Duration,
}

/// Runs `mapguard-enforcer ARGS` and reaps it with `wait4`, which reports
/// that child's own peak memory and CPU time.
#[allow(clippy::zombie_processes)] // reaped by wait4, which std does not offer
fn run_measured(args: &[&str], dir: &Path) -> (Output, Cost) {
    let (out_path, err_path) = (dir.join("stdout"), dir.join("stderr"));
    let child = Command::new(enforcer())
        .args(args)
        .stdout(std::fs::File::create(&out_path).expect("stdout file"))
        .stderr(std::fs::File::create(&err_path).expect("stderr file"))
        .spawn()
        .expect("run mapguard-enforcer");
    let mut status = 0;
    // SAFETY: rusage is plain data, zero is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child, writing into the two locals.
    let reaped = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert_eq!(
        reaped,
        child.id() as i32,
        "wait4: {}",
        std::io::Error::last_os_error()
    );
    let time = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    let cost = Cost {
        peak_kib: usage.ru_maxrss,
        cpu: time(usage.ru_utime) + time(usage.ru_stime),
    };
    let out = Output {
        status: ExitStatus::from_raw(status),
        stdout: std::fs::read(&out_path).expect("read stdout"),
        stderr: std::fs::read(&err_path).expect("read stderr"),
    };
    (out, cost)
}

/// A scratch folder with a copy of a real Go test binary in it.
fn scratch_copy(name: &str) -> (PathBuf, PathBuf) {
    let dir =
        std::env::temp_dir().join(format!("mapguard-bad-input-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let exe = dir.join("program");
    std::fs::copy(program("go1.23", "clean", "mutex"), &exe).expect("copy the Go test binary");
    (dir, exe)
}

/// Peak memory allowed for analysing (or refusing) a small Go binary,
/// whatever the file's size: the enforcer's own code and heap.
const PEAK_KIB: i64 = 64 << 10;

#[test]
fn a_huge_executable_is_refused_without_being_read() {
    let (dir, exe) = scratch_copy("huge");
    // A real Go binary extended to 4 GiB (sparse: no disk used).
    std::fs::OpenOptions::new()
        .write(true)
        .open(&exe)
        .and_then(|f| f.set_len(4 << 30))
        .expect("extend to 4 GiB");
    let exe_arg = exe.to_str().expect("utf-8 path");

    let (out, cost) = run_measured(&["scan", exe_arg], &dir);
    eprintln!("refused: peak {} KiB, CPU {:?}", cost.peak_kib, cost.cpu);
    assert_clear_error(
        &out,
        "4 GiB executable, over the --max-binary-size limit of 1 GiB",
    );
    assert!(
        cost.peak_kib < PEAK_KIB,
        "peak {} KiB refusing a 4 GiB file",
        cost.peak_kib
    );

    // Admitted under a larger cap, it is analysed reading only the parts
    // the analysis uses: memory stays that of a small binary.
    let (out, cost) = run_measured(&["scan", "--max-binary-size", "8GiB", exe_arg], &dir);
    eprintln!("analysed: peak {} KiB, CPU {:?}", cost.peak_kib, cost.cpu);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{:?}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("runtime.mapassign"), "{stdout}");
    assert!(
        cost.peak_kib < PEAK_KIB,
        "peak {} KiB analysing a 4 GiB file",
        cost.peak_kib
    );
    std::fs::remove_dir_all(&dir).expect("remove scratch dir");
}

#[test]
fn a_forged_pclntab_function_count_is_refused_quickly() {
    let (dir, exe) = scratch_copy("forged");
    let mut data = std::fs::read(&exe).expect("read the copy");
    let at = memchr::memmem::find_iter(&data, &HEADER_MAGIC)
        .find(|at| at % 8 == 0)
        .expect("the pclntab header");
    // nfunc, the header's first word: four billion functions.
    data[at + 8..at + 16].copy_from_slice(&u64::from(u32::MAX).to_le_bytes());
    std::fs::write(&exe, &data).expect("write the forged binary");

    let (out, cost) = run_measured(&["scan", exe.to_str().expect("utf-8 path")], &dir);
    eprintln!(
        "forged pclntab: peak {} KiB, CPU {:?}",
        cost.peak_kib, cost.cpu
    );
    assert_clear_error(
        &out,
        "pclntab header claims 4294967295 functions, more than its",
    );
    assert!(cost.peak_kib < PEAK_KIB, "peak {} KiB", cost.peak_kib);
    std::fs::remove_dir_all(&dir).expect("remove scratch dir");
}
