//! Kubelet-shaped cgroups for tests: a pod's container cgroup named as the
//! kubelet and a runtime name it, created in the machine's real cgroup
//! hierarchies (v2, or v1 controllers such as `pids`), with processes moved
//! into it, and removed again when the value drops — also when a test
//! panics. Tests that run the node agent against a "pod" use it to give a
//! real process a real pod UID and container id.
//!
//! Include it with `#[path = "support/kube_cgroup.rs"] mod kube_cgroup;`
//! (from `enforcer/tests/*.rs`), `#[path = "../tests/support/kube_cgroup.rs"]`
//! (from `enforcer/examples/`) or
//! `#[path = "../../enforcer/tests/support/kube_cgroup.rs"]` (from
//! `agent/tests/*.rs`). It uses only `std` and `libc`.
//!
//! Names are written here, independently of the enforcer's parser, as the
//! kubelet and the runtimes write them, so tests check one against the
//! other. Each cgroup lives under a root of its own,
//! `mapguard-test-<pid>-<n>/`, in front of the kubelet's levels (as a
//! kubelet `--cgroup-root`, or a node running in a container, puts them):
//! tests running in parallel, in one process or many, never share a
//! directory, and a test process killed outright leaves nothing the next
//! one does not sweep away.
//!
//! ```ignore
//! let cg = KubeCgroup::create(Spec::new(Driver::Systemd, Qos::Burstable, Name::Containerd));
//! let child = cg.command(&mut Command::new("sleep")).arg("60").spawn().unwrap(); // in the pod from its first instruction
//! cg.add(other_pid);                                  // or move a running process in
//! assert_eq!(placement.pod_uid.as_str(), cg.spec().pod_uid);
//! // drop: leftover processes go back to this process's cgroups, every
//! // directory created is removed
//! ```

#![allow(dead_code)]

use std::{
    ffi::CString,
    hash::{BuildHasher as _, Hasher as _},
    io::Write as _,
    os::unix::{ffi::OsStrExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

/// The kubelet's cgroup driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    Systemd,
    Cgroupfs,
}

/// The pod's QoS class: where the kubelet puts the pod's cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qos {
    Guaranteed,
    Burstable,
    BestEffort,
}

/// Who named the container's cgroup, and so how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Name {
    /// `cri-containerd-<id>.scope` (systemd) or `<id>` (cgroupfs).
    Containerd,
    /// `crio-<id>.scope` or `crio-<id>`.
    CriO,
    /// CRI-O's monitor: `crio-conmon-<id>.scope` or `crio-conmon-<id>`.
    CriOConmon,
    /// `docker-<id>.scope` or `<id>`.
    Docker,
    /// Exactly this name, in place of a runtime's (an unknown runtime).
    Other(String),
}

/// A cgroup hierarchy of this machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hierarchy {
    /// The cgroup v2 hierarchy (`/sys/fs/cgroup`, or
    /// `/sys/fs/cgroup/unified` on a hybrid machine).
    Unified,
    /// The cgroup v1 hierarchy of one controller (`"pids"`, `"cpu"`, ...).
    V1(&'static str),
}

/// What to create.
#[derive(Debug, Clone)]
pub struct Spec {
    /// With dashes, as the API server reports it.
    pub pod_uid: String,
    /// 64 lowercase hex digits.
    pub container_id: String,
    pub qos: Qos,
    pub driver: Driver,
    pub name: Name,
    /// A cgroup inside the container's own that processes go to
    /// (`"init.scope"`: systemd running in the container).
    pub nested: Option<String>,
    pub hierarchies: Vec<Hierarchy>,
}

impl Spec {
    /// A fresh random pod UID and container id, in the v2 hierarchy.
    pub fn new(driver: Driver, qos: Qos, name: Name) -> Spec {
        let r = random_hex(64);
        Spec {
            pod_uid: format!(
                "{}-{}-4{}-8{}-{}",
                &r[0..8],
                &r[8..12],
                &r[12..15],
                &r[15..18],
                &r[18..30]
            ),
            container_id: random_hex(64),
            qos,
            driver,
            name,
            nested: None,
            hierarchies: vec![Hierarchy::Unified],
        }
    }

    /// A given pod UID (the one the API server gave a test's Pod).
    pub fn pod_uid(mut self, uid: &str) -> Spec {
        self.pod_uid = uid.to_string();
        self
    }

    /// A given container id (the one a test writes into the Pod's status).
    pub fn container_id(mut self, id: &str) -> Spec {
        self.container_id = id.to_string();
        self
    }

    pub fn nested(mut self, inside: &str) -> Spec {
        self.nested = Some(inside.to_string());
        self
    }

    pub fn hierarchies(mut self, hierarchies: &[Hierarchy]) -> Spec {
        self.hierarchies = hierarchies.to_vec();
        self
    }

    /// The levels below the test root, as the kubelet and the runtime
    /// name them.
    fn levels(&self) -> Vec<String> {
        let id = &self.container_id;
        let qos = match self.qos {
            Qos::Guaranteed => None,
            Qos::Burstable => Some("burstable"),
            Qos::BestEffort => Some("besteffort"),
        };
        let mut levels = Vec::new();
        match self.driver {
            Driver::Systemd => {
                // Each slice's name spells out its parents; `-` in a UID
                // would be a level, so the kubelet writes `_`.
                let mut stem = "kubepods".to_string();
                levels.push(format!("{stem}.slice"));
                if let Some(qos) = qos {
                    stem = format!("{stem}-{qos}");
                    levels.push(format!("{stem}.slice"));
                }
                levels.push(format!(
                    "{stem}-pod{}.slice",
                    self.pod_uid.replace('-', "_")
                ));
                levels.push(match &self.name {
                    Name::Containerd => format!("cri-containerd-{id}.scope"),
                    Name::CriO => format!("crio-{id}.scope"),
                    Name::CriOConmon => format!("crio-conmon-{id}.scope"),
                    Name::Docker => format!("docker-{id}.scope"),
                    Name::Other(name) => name.clone(),
                });
            }
            Driver::Cgroupfs => {
                levels.push("kubepods".to_string());
                levels.extend(qos.map(str::to_string));
                levels.push(format!("pod{}", self.pod_uid));
                levels.push(match &self.name {
                    Name::Containerd | Name::Docker => id.clone(),
                    Name::CriO => format!("crio-{id}"),
                    Name::CriOConmon => format!("crio-conmon-{id}"),
                    Name::Other(name) => name.clone(),
                });
            }
        }
        levels.extend(self.nested.clone());
        levels
    }
}

/// One hierarchy's part of a [`KubeCgroup`].
#[derive(Debug)]
struct Branch {
    /// `<mount>/mapguard-test-<pid>-<n>`: removed whole.
    root: PathBuf,
    /// Where processes go.
    leaf: PathBuf,
    /// This process's own cgroup there, where leftover processes return.
    home: PathBuf,
}

/// A container's cgroup, created in every hierarchy of its spec; removed
/// on drop.
#[derive(Debug)]
pub struct KubeCgroup {
    spec: Spec,
    path: String,
    branches: Vec<Branch>,
}

impl KubeCgroup {
    /// Creates the cgroup (panics with the reason if it cannot).
    pub fn create(spec: Spec) -> KubeCgroup {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let me = std::process::id();
        let top = format!(
            "mapguard-test-{me}-{}",
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let path = format!("/{top}/{}", spec.levels().join("/"));
        let mut cg = KubeCgroup {
            spec,
            path,
            branches: Vec::new(),
        };
        for &h in &cg.spec.hierarchies.clone() {
            let mount = mount_point(h).unwrap_or_else(|| panic!("no {h:?} hierarchy mounted"));
            sweep_stale(&mount);
            let root = mount.join(&top);
            let leaf = mount.join(cg.path.trim_start_matches('/'));
            // Registered before creating, so a failure half-way is undone.
            cg.branches.push(Branch {
                root: root.clone(),
                leaf: leaf.clone(),
                home: mount.join(own_cgroup(h).trim_start_matches('/')),
            });
            if let Err(e) = std::fs::create_dir(&root) {
                // Left by an earlier process that had this pid.
                assert_eq!(
                    e.kind(),
                    std::io::ErrorKind::AlreadyExists,
                    "mkdir {}: {e}",
                    root.display()
                );
                remove_tree(&root).unwrap_or_else(|e| panic!("stale {}: {e}", root.display()));
                std::fs::create_dir(&root)
                    .unwrap_or_else(|e| panic!("mkdir {}: {e}", root.display()));
            }
            std::fs::create_dir_all(&leaf)
                .unwrap_or_else(|e| panic!("mkdir -p {}: {e}", leaf.display()));
        }
        cg
    }

    pub fn spec(&self) -> &Spec {
        &self.spec
    }

    /// The path `/proc/PID/cgroup` shows for a process in it.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Moves a running process in, in every hierarchy.
    pub fn add(&self, pid: u32) {
        for b in &self.branches {
            write_procs(&b.leaf, pid)
                .unwrap_or_else(|e| panic!("move {pid} into {}: {e}", b.leaf.display()));
        }
    }

    /// Makes `cmd`'s process join the cgroup before it executes its
    /// program, so it runs in the pod from its first instruction.
    pub fn command<'c>(&self, cmd: &'c mut Command) -> &'c mut Command {
        let files: Vec<CString> = self
            .branches
            .iter()
            .map(|b| {
                CString::new(b.leaf.join("cgroup.procs").as_os_str().as_bytes())
                    .expect("no NUL in a cgroup path")
            })
            .collect();
        // SAFETY: the closure only calls open, write and close (async-signal
        // safe) on strings built before the fork.
        unsafe {
            cmd.pre_exec(move || {
                for file in &files {
                    let fd = libc::open(file.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                    if fd < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    // "0" is the writing process itself.
                    let written = libc::write(fd, b"0".as_ptr().cast(), 1);
                    let error = std::io::Error::last_os_error();
                    libc::close(fd);
                    if written != 1 {
                        return Err(error);
                    }
                }
                Ok(())
            })
        }
    }

    /// The processes in it (in its first hierarchy).
    pub fn pids(&self) -> Vec<u32> {
        self.branches
            .first()
            .map(|b| pids_in(&b.leaf))
            .unwrap_or_default()
    }
}

impl Drop for KubeCgroup {
    fn drop(&mut self) {
        for b in &self.branches {
            for pid in pids_in(&b.leaf) {
                // A process that exited meanwhile cannot be moved; that is fine.
                let _ = write_procs(&b.home, pid);
            }
            if let Err(e) = remove_tree(&b.root) {
                // Never panic in drop (it may run during a panic); say it loudly.
                let _ = writeln!(
                    std::io::stderr(),
                    "*** kube_cgroup: could not remove {}: {e} ***",
                    b.root.display()
                );
            }
        }
    }
}

/// Why cgroup tests cannot run here, if they cannot.
pub fn unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not running as root".into());
    }
    let Some(unified) = mount_point(Hierarchy::Unified) else {
        return Some("no cgroup v2 hierarchy mounted".into());
    };
    // One probe per call: tests of one process check at the same time.
    static PROBES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = PROBES.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let probe = unified.join(format!("mapguard-test-{}-probe-{n}", std::process::id()));
    if let Err(e) = std::fs::create_dir(&probe) {
        return Some(format!(
            "cannot create cgroups in {}: {e}",
            unified.display()
        ));
    }
    let _ = std::fs::remove_dir(&probe);
    None
}

/// `true` if the test may run; otherwise prints a loud SKIPPED line (and
/// fails under `CI=true`, where cgroup tests must run).
pub fn require(test: &str) -> bool {
    match unavailable() {
        None => true,
        Some(why) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("{test}: {why}; CI=true, where cgroup tests must run (root, cgroup v2)")
        }
        Some(why) => {
            let _ = writeln!(
                std::io::stderr(),
                "\n*** SKIPPED {test}: {why}; cgroup tests need root ***\n"
            );
            false
        }
    }
}

/// Whether `hierarchy` is mounted here.
pub fn mounted(hierarchy: Hierarchy) -> bool {
    mount_point(hierarchy).is_some()
}

/// Where `hierarchy` is mounted, from `/proc/self/mounts`.
pub fn mount_point(hierarchy: Hierarchy) -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (dir, fstype, options) = (f.get(1)?, f.get(2)?, f.get(3)?);
        let found = match hierarchy {
            Hierarchy::Unified => *fstype == "cgroup2",
            Hierarchy::V1(controller) => {
                *fstype == "cgroup" && options.split(',').any(|o| o == controller)
            }
        };
        found.then(|| PathBuf::from(dir))
    })
}

/// This process's cgroup path in `hierarchy`.
fn own_cgroup(hierarchy: Hierarchy) -> String {
    let text = std::fs::read_to_string("/proc/self/cgroup").expect("/proc/self/cgroup");
    text.lines()
        .find_map(|line| {
            let mut f = line.splitn(3, ':');
            let (id, controllers, path) = (f.next()?, f.next()?, f.next()?);
            let mine = match hierarchy {
                Hierarchy::Unified => id == "0" && controllers.is_empty(),
                Hierarchy::V1(c) => controllers.split(',').any(|x| x == c),
            };
            mine.then(|| path.to_string())
        })
        .unwrap_or_else(|| panic!("this process is in no {hierarchy:?} cgroup"))
}

fn write_procs(cgroup: &Path, pid: u32) -> std::io::Result<()> {
    std::fs::write(cgroup.join("cgroup.procs"), pid.to_string())
}

fn pids_in(cgroup: &Path) -> Vec<u32> {
    std::fs::read_to_string(cgroup.join("cgroup.procs"))
        .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// Removes a tree of cgroups, deepest first. A cgroup whose last process
/// has just exited can stay busy for a moment, so it retries a little.
fn remove_tree(root: &Path) -> std::io::Result<()> {
    if !root.exists() {
        return Ok(());
    }
    let mut dirs = vec![root.to_path_buf()];
    let mut i = 0;
    while i < dirs.len() {
        if let Ok(entries) = std::fs::read_dir(&dirs[i]) {
            dirs.extend(
                entries
                    .filter_map(Result::ok)
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
        i += 1;
    }
    for dir in dirs.iter().rev() {
        for tries in 0.. {
            match std::fs::remove_dir(dir) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                Err(e) if tries == 50 => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
    Ok(())
}

/// Removes test roots left by test processes that no longer exist (killed
/// before their guards could run).
fn sweep_stale(mount: &Path) {
    let Ok(entries) = std::fs::read_dir(mount) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix("mapguard-test-")) else {
            continue;
        };
        let owner = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
        if owner.is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists()) {
            let _ = remove_tree(&entry.path());
        }
    }
}

/// `len` random lowercase hex digits (std's randomly keyed hasher).
fn random_hex(len: usize) -> String {
    let mut out = String::new();
    let mut n = 0u64;
    while out.len() < len {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(n);
        h.write_u32(std::process::id());
        out.push_str(&format!("{:016x}", h.finish()));
        n += 1;
    }
    out.truncate(len);
    out
}
