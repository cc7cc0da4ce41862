//! What a process scan costs: starts `MAPGUARD_SCAN_PROCS` (default 2000)
//! `sleep` processes, every third in one of 20 kubelet-shaped container
//! cgroups, then times `MAPGUARD_SCAN_ROUNDS` (default 50) scans of the
//! whole node and prints the distribution, per scan and per process: only
//! listing `/proc`, reading every process in full each time, and the
//! default (processes read before are only checked for an exec). Needs
//! root.
//!
//! Run with:
//!
//! ```sh
//! cargo run --release -p mapguard-enforcer --example scan_cost
//! ```

#[path = "../tests/support/kube_cgroup.rs"]
mod kube_cgroup;

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use kube_cgroup::{Driver, KubeCgroup, Name, Qos, Spec};
use mapguard_enforcer::host::procscan::{
    DEFAULT_PROC_ROOT, DEFAULT_REREAD_EVERY, ExeFor, ProcScanner,
};

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Kids(Vec<Child>);

impl Drop for Kids {
    fn drop(&mut self) {
        for kid in &mut self.0 {
            let _ = kid.kill();
        }
        for kid in &mut self.0 {
            let _ = kid.wait();
        }
    }
}

fn summary(label: &str, mut times: Vec<Duration>, processes: usize) {
    times.sort();
    let at = |q: f64| times[((times.len() - 1) as f64 * q) as usize];
    let per = |d: Duration| d.as_nanos() as f64 / processes as f64 / 1000.0;
    println!(
        "{label:<34} p50 {:>9.2?}  p90 {:>9.2?}  max {:>9.2?}   p50 {:>5.2} µs/process",
        at(0.5),
        at(0.9),
        at(1.0),
        per(at(0.5)),
    );
}

fn main() {
    if let Some(why) = kube_cgroup::unavailable() {
        eprintln!("scan_cost: {why}; it needs root and cgroup v2");
        std::process::exit(2);
    }
    let count = setting("MAPGUARD_SCAN_PROCS", 2000);
    let rounds = setting("MAPGUARD_SCAN_ROUNDS", 50);

    let containers: Vec<KubeCgroup> = (0..20)
        .map(|i| {
            let name = [Name::Containerd, Name::CriO, Name::Docker][i % 3].clone();
            KubeCgroup::create(Spec::new(Driver::Systemd, Qos::Burstable, name))
        })
        .collect();
    let mut kids = Kids(Vec::with_capacity(count));
    for i in 0..count {
        let mut cmd = Command::new("sleep");
        cmd.arg("3600").stdin(Stdio::null());
        if i % 3 == 0 {
            containers[i % containers.len()].command(&mut cmd);
        }
        kids.0.push(cmd.spawn().expect("spawn sleep"));
    }

    let mut scanner = ProcScanner::new(DEFAULT_PROC_ROOT).expect("/proc");
    let first = scanner.scan().expect("scan");
    let listed = first.stats.listed;
    println!(
        "{listed} processes on this machine, {} in containers, {} rounds each",
        first.containers().count(),
        rounds
    );

    let time = |f: &mut dyn FnMut()| {
        (0..rounds)
            .map(|_| {
                let start = Instant::now();
                f();
                start.elapsed()
            })
            .collect::<Vec<_>>()
    };
    let list_only = time(&mut || {
        let n = std::fs::read_dir(DEFAULT_PROC_ROOT)
            .expect("list /proc")
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .count();
        std::hint::black_box(n);
    });
    summary("listing /proc only", list_only, listed);
    let mut every_time = ProcScanner::new(DEFAULT_PROC_ROOT)
        .expect("/proc")
        .with_reread_every(1);
    let full = time(&mut || {
        std::hint::black_box(every_time.scan().expect("scan"));
    });
    summary("full read every scan", full, listed);
    let default = time(&mut || {
        std::hint::black_box(scanner.scan().expect("scan"));
    });
    summary(
        &format!("default (full read every {DEFAULT_REREAD_EVERY}th)"),
        default,
        listed,
    );
    let mut all = ProcScanner::new(DEFAULT_PROC_ROOT)
        .expect("/proc")
        .with_exe_for(ExeFor::All);
    let all_exes = time(&mut || {
        std::hint::black_box(all.scan().expect("scan"));
    });
    summary("default, exe of every process", all_exes, listed);
    drop(kids);
    drop(containers);
}
