//! Shared helpers of the engine's integration tests and the node agent's
//! (`agent/tests` include this file by path): the Go test programs,
//! running `mapguard-enforcer`, reading its JSON events, and the root/BPF
//! capability check (tests that need BPF are skipped loudly, never passed
//! silently, where it is unavailable).

#![allow(dead_code)]

use std::{
    io::Write as _,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::OnceLock,
    time::{Duration, Instant},
};

use serde_json::Value;

/// `go1.23`, `go1.24`, ...: one tag per release of the enforcer's release
/// table, the folders `tests/go/build.sh` builds into.
pub fn versions() -> &'static [&'static str] {
    static TAGS: OnceLock<Vec<&'static str>> = OnceLock::new();
    TAGS.get_or_init(|| {
        mapguard_enforcer::binary::goelf::release::RELEASES
            .iter()
            .map(|r| &*format!("go{}", r.name()).leak())
            .collect()
    })
}

/// A toolchain of `tests/go/toolchains`.
pub struct Toolchain {
    pub tag: String,
    pub go: PathBuf,
    /// Extra builds (`noswiss`), or `refused`: a release the enforcer must refuse.
    pub extra: Option<String>,
}

/// The toolchains the Go test programs are built with
/// (`$MAPGUARD_GO_TOOLCHAINS` or `tests/go/toolchains`).
pub fn toolchains() -> Vec<Toolchain> {
    let path = std::env::var_os("MAPGUARD_GO_TOOLCHAINS")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("tests/go/toolchains"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let mut words = l.split_whitespace();
            let mut next = || words.next().map(str::to_string);
            let (tag, go) = (next().expect("tag"), next().expect("go command"));
            Toolchain {
                tag,
                go: go.into(),
                extra: next(),
            }
        })
        .collect()
}

/// `go env GOVERSION` of the toolchain tagged `tag`.
pub fn toolchain_version(tag: &str) -> String {
    let chain = toolchains()
        .into_iter()
        .find(|t| t.tag == tag)
        .unwrap_or_else(|| panic!("{tag} is not in tests/go/toolchains"));
    let out = Command::new(&chain.go)
        .args(["env", "GOVERSION"])
        .env("GOTOOLCHAIN", "local")
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", chain.go.display()));
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_string()
}

pub const RACY: [&str; 9] = [
    "clear_writes",
    "delete_assign",
    "delete_delete",
    "delete_grow",
    "delete_range",
    "delete_read",
    "int32_keys",
    "string_keys",
    "struct_keys",
];

pub const CLEAN: [&str; 7] = [
    "channel_handoff",
    "cow_atomic",
    "mutex",
    "private_maps",
    "readonly_shared",
    "rwmutex",
    "syncmap",
];

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("a crate folder of the workspace")
        .to_path_buf()
}

/// The `mapguard-enforcer` binary (`exec`, `watch`, `scan`): Cargo builds
/// it for the engine's own tests and benchmarks only; the agent's tests,
/// which include this file too, never run it.
#[allow(clippy::option_env_unwrap)]
pub fn enforcer() -> &'static str {
    option_env!("CARGO_BIN_EXE_mapguard-enforcer")
        .expect("mapguard-enforcer is built for the tests of mapguard-enforcer")
}

/// Why BPF tests cannot run here, if they cannot.
pub fn bpf_unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not running as root".into());
    }
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        return Some("kernel without BTF (/sys/kernel/btf/vmlinux)".into());
    }
    if !Path::new("/sys/bus/event_source/devices/uprobe").exists() {
        return Some("kernel without uprobe perf events".into());
    }
    None
}

/// `true` if the test may run; otherwise prints a loud SKIPPED line.
pub fn require_bpf(test: &str) -> bool {
    match bpf_unavailable() {
        None => true,
        // CI runs as root on a kernel with BPF: there a skip would hide a
        // broken set-up, so it fails instead.
        Some(why) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("{test}: {why}; CI=true, where BPF tests must run (root, BTF, uprobes)")
        }
        Some(why) => {
            // Written to the process's stderr directly: the test harness
            // captures `eprintln!` of passing tests, which would hide the skip.
            let _ = writeln!(
                std::io::stderr(),
                "\n*** SKIPPED {test}: {why}; BPF tests need root with BTF and uprobes ***\n"
            );
            false
        }
    }
}

/// The Go test programs, built by `tests/go/build.sh` if needed (into
/// `$MAPGUARD_GO_PROGS`, default `target/go-progs`; incremental, and a file
/// lock serializes test binaries that start it at once).
pub fn go_progs() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::var_os("MAPGUARD_GO_PROGS")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace().join("target/go-progs"));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let lock = std::fs::File::create(dir.join(".build.lock")).expect("create the build lock");
        lock.lock().expect("lock the Go programs' build");
        let status = Command::new("bash")
            .arg(workspace().join("tests/go/build.sh"))
            .arg(&dir)
            .status()
            .expect("run tests/go/build.sh");
        assert!(status.success(), "tests/go/build.sh failed: {status}");
        dir
    })
}

pub fn program(version: &str, class: &str, name: &str) -> PathBuf {
    go_progs().join(version).join(class).join(name)
}

/// `// LINE:<tag>` markers of a racy program's source: (tag, line).
pub fn markers(name: &str) -> Vec<(String, u32)> {
    markers_of("racy", name)
}

/// `// LINE:<tag>` markers of `tests/go/CLASS/NAME/main.go`: (tag, line).
pub fn markers_of(class: &str, name: &str) -> Vec<(String, u32)> {
    let src = workspace()
        .join("tests/go")
        .join(class)
        .join(name)
        .join("main.go");
    let text = std::fs::read_to_string(&src).unwrap_or_else(|e| panic!("{}: {e}", src.display()));
    text.lines()
        .enumerate()
        .filter_map(|(i, l)| {
            let tag = l.split("// LINE:").nth(1)?;
            Some((tag.trim().to_string(), i as u32 + 1))
        })
        .collect()
}

/// A run of `mapguard-enforcer exec`: its output and the events it wrote.
pub struct Run {
    pub output: Output,
    pub events: Vec<Value>,
    pub elapsed: Duration,
}

impl Run {
    pub fn code(&self) -> i32 {
        self.output.status.code().unwrap_or(-1)
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }

    pub fn violations(&self) -> Vec<&Value> {
        self.events
            .iter()
            .filter(|e| e["event"] == "violation")
            .collect()
    }
}

/// Runs `mapguard-enforcer exec --mode MODE --events FILE -- PROGRAM ARGS`.
pub fn exec(mode: &str, program: &Path, args: &[&str]) -> Run {
    exec_with(mode, &[], program, args)
}

/// [`exec`] with more `exec` options (`--attach perf`).
pub fn exec_with(mode: &str, options: &[&str], program: &Path, args: &[&str]) -> Run {
    let tag = program
        .iter()
        .rev()
        .take(3)
        .map(|c| c.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("-");
    let events = std::env::temp_dir().join(format!(
        "mapguard-test-{}-{mode}{}-{tag}.jsonl",
        std::process::id(),
        options.join("")
    ));
    let _ = std::fs::remove_file(&events);
    // Output goes to files, not pipes: a program left stopped (stop mode)
    // keeps its inherited descriptors open after the enforcer exits.
    let out_path = events.with_extension("out");
    let err_path = events.with_extension("err");
    let file =
        |p: &Path| std::fs::File::create(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let started = Instant::now();
    // `process_group(0)`: like a job of an interactive shell, the enforcer
    // leads its own process group, which is orphaned when it exits: the
    // case where the kernel resumes stopped members (stop mode must survive
    // it).
    let status = Command::new(enforcer())
        .process_group(0)
        .args(["exec", "--mode", mode])
        .args(options)
        .arg("--events")
        .arg(&events)
        .arg("--")
        .arg(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(file(&out_path))
        .stderr(file(&err_path))
        .status()
        .expect("run mapguard-enforcer");
    let output = Output {
        status,
        stdout: std::fs::read(&out_path).unwrap_or_default(),
        stderr: std::fs::read(&err_path).unwrap_or_default(),
    };
    let _ = std::fs::remove_file(&out_path);
    let _ = std::fs::remove_file(&err_path);
    let elapsed = started.elapsed();
    let text = std::fs::read_to_string(&events).unwrap_or_default();
    let _ = std::fs::remove_file(&events);
    let events = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad event line {l:?}: {e}")))
        .collect();
    Run {
        output,
        events,
        elapsed,
    }
}

/// Runs `f` for every item on its own thread and returns the results in
/// order (the enforcer runs are mostly waiting on the kernel and the Go
/// programs, so they overlap well).
pub fn parallel<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    std::thread::scope(|s| {
        let handles: Vec<_> = items.iter().map(|i| s.spawn(|| f(i))).collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("test thread panicked"))
            .collect()
    })
}

/// [`parallel`] with at most `limit` items running at a time (so that
/// hundreds of runs do not start at once on two cores).
pub fn parallel_limited<T: Sync, R: Send>(
    items: &[T],
    limit: usize,
    f: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: Vec<std::sync::Mutex<Option<R>>> =
        items.iter().map(|_| std::sync::Mutex::new(None)).collect();
    std::thread::scope(|s| {
        for _ in 0..limit.max(1) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let Some(item) = items.get(i) else { break };
                    let r = f(item);
                    *results[i].lock().expect("result slot") = Some(r);
                }
            });
        }
    });
    results
        .into_iter()
        .map(|m| {
            m.into_inner()
                .expect("result slot")
                .expect("every item ran")
        })
        .collect()
}

/// Children of process `pid` (from every process's parent in /proc).
pub fn children_of(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| {
            std::fs::read_to_string(format!("/proc/{child}/stat")).is_ok_and(|stat| {
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok())
                    == Some(pid)
            })
        })
        .collect()
}

/// Process state letter from `/proc/PID/stat` (`None` if gone).
pub fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// BPF programs named like mapguard's currently loaded in the kernel.
pub fn loaded_mapguard_programs() -> usize {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| p.name_as_str().is_some_and(|n| n.starts_with("mapguard_")))
        .count()
}

/// Waits (up to `timeout`) until no mapguard BPF program is loaded: probes
/// are removed by a background helper, ~0.1 s per probe kernel-wide.
pub fn wait_no_mapguard_programs(timeout: Duration) -> usize {
    let deadline = Instant::now() + timeout;
    loop {
        let n = loaded_mapguard_programs();
        if n == 0 || Instant::now() > deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The median of the benchmarks' figures: the middle one, or the mean of
/// the two middle ones of an even count (the upper one alone would favour
/// the faster half).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len().is_multiple_of(2) {
        (v[mid - 1] + v[mid]) / 2.0
    } else {
        v[mid]
    }
}

/// A fresh folder of the test's own, `$TMPDIR/mapguard-NAME-PID`, emptied
/// first.
pub fn test_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mapguard-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("test folder");
    dir
}

/// A bpffs mounted for the test's pinned maps; unmounted on drop.
pub struct BpfFs(std::ffi::CString);

impl BpfFs {
    /// Mounts one at `dir/pin` (created), for an agent's pinned tables.
    pub fn in_dir(dir: &Path) -> BpfFs {
        let pin = dir.join("pin");
        std::fs::create_dir_all(&pin).expect("pin folder");
        BpfFs::mount(&pin)
    }

    /// The agent's `--bpf-pin-dir` flag for this mount.
    pub fn flag(&self) -> String {
        format!("--bpf-pin-dir={}", self.0.to_string_lossy())
    }

    pub fn mount(dir: &Path) -> BpfFs {
        use std::os::unix::ffi::OsStrExt as _;
        let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).expect("path");
        // SAFETY: NUL-terminated strings that outlive the call.
        let rc = unsafe {
            libc::mount(
                c"bpf".as_ptr(),
                path.as_ptr(),
                c"bpf".as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        assert_eq!(
            rc,
            0,
            "mount bpffs on {}: {}",
            dir.display(),
            std::io::Error::last_os_error()
        );
        BpfFs(path)
    }
}

impl Drop for BpfFs {
    fn drop(&mut self) {
        // SAFETY: a NUL-terminated path.
        unsafe { libc::umount2(self.0.as_ptr(), libc::MNT_DETACH) };
    }
}

/// An overlayfs mount; unmounted (lazily) on drop.
pub struct Overlay(PathBuf);

impl Overlay {
    pub fn mount(lower: &Path, upper: &Path, work: &Path, point: &Path) -> Overlay {
        let options = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.display(),
            upper.display(),
            work.display()
        );
        let c = |p: &Path| std::ffi::CString::new(p.to_str().expect("UTF-8")).expect("path");
        let (target, data) = (c(point), c(Path::new(&options)));
        // SAFETY: NUL-terminated strings that outlive the call.
        let rc = unsafe {
            libc::mount(
                c"overlay".as_ptr(),
                target.as_ptr(),
                c"overlay".as_ptr(),
                0,
                data.as_ptr().cast(),
            )
        };
        assert_eq!(
            rc,
            0,
            "mount -t overlay -o {options} {}: {}",
            point.display(),
            std::io::Error::last_os_error()
        );
        Overlay(point.to_path_buf())
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        if let Ok(path) = std::ffi::CString::new(self.0.to_str().unwrap_or_default()) {
            // SAFETY: a NUL-terminated path.
            unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
        }
    }
}
