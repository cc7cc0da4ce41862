//! `/proc/PID/cgroup` read whole: one line per hierarchy the kernel has
//! mounted, `ID:CONTROLLERS:PATH`.
//!
//! - cgroup v2 alone: one line, `0::/path`.
//! - cgroup v1: one line per hierarchy (`7:pids:/path`,
//!   `2:cpu,cpuacct:/path`, `1:name=systemd:/path`).
//! - hybrid: the v1 lines plus `0::/path` for the v2 hierarchy that
//!   systemd keeps beside them.
//!
//! The kubelet and the runtime put a container's processes in the same
//! path in every hierarchy they manage, but not every hierarchy is
//! theirs: on a hybrid node the v2 line may still show the runtime's
//! service (`0::/system.slice/containerd.service`) with the cgroupfs
//! driver, and a controller nobody manages shows `/`. So a hierarchy that
//! places the process nowhere is no evidence either way; the process is
//! placed when at least one hierarchy places it and all that do agree. A
//! hierarchy that half-matches, or two that disagree, make it unplaceable.

use super::{
    path::{PathClass, classify},
    placement::{Container, Placement, Reason, Unplaceable},
    runtime::{Role, Runtime},
};

/// Places a process from the text of its `/proc/PID/cgroup`.
pub fn placement(text: &str) -> Placement {
    let lines = text.lines().filter(|l| !l.is_empty());
    if !text.contains("kubepods") && !text.contains("/..") {
        // Most processes of a node: no line can place them.
        return match lines.clone().find(|l| path_of(l).is_none()) {
            Some(line) => unplaceable(Reason::Malformed, line),
            None => Placement::Outside,
        };
    }
    // The v2 line first: where it places the process, it speaks for the
    // unified hierarchy every current node uses.
    let v2 = lines.clone().filter(|l| l.starts_with("0::"));
    let v1 = lines.filter(|l| !l.starts_with("0::"));

    let mut found: Option<(Role, Container, &str)> = None;
    for line in v2.chain(v1) {
        let Some(path) = path_of(line) else {
            return unplaceable(Reason::Malformed, line);
        };
        let (role, here) = match classify(path) {
            PathClass::Outside => continue,
            PathClass::Unplaceable(reason) => return unplaceable(reason, path),
            PathClass::Container(c) => (Role::Container, c),
            PathClass::Monitor(c) => (Role::Monitor, c),
        };
        found = match found {
            None => Some((role, here, path)),
            Some((first_role, first, first_path)) => {
                match same_container(first, here).filter(|_| first_role == role) {
                    Some(merged) => Some((role, merged, first_path)),
                    None => {
                        let other = path.to_string();
                        return unplaceable(Reason::HierarchiesDisagree { other }, first_path);
                    }
                }
            }
        };
    }
    match found {
        None => Placement::Outside,
        Some((Role::Container, c, _)) => Placement::Container(c),
        Some((Role::Monitor, c, _)) => Placement::Monitor(c),
    }
}

/// The path of an `ID:CONTROLLERS:PATH` line.
fn path_of(line: &str) -> Option<&str> {
    let (id, rest) = line.split_once(':')?;
    let (_controllers, path) = rest.split_once(':')?;
    (!id.is_empty() && id.bytes().all(|b| b.is_ascii_digit())).then_some(path)
}

fn unplaceable(reason: Reason, path: &str) -> Placement {
    Placement::Unplaceable(Unplaceable {
        reason,
        path: path.to_string(),
    })
}

/// The same pod and container in two hierarchies; a runtime that one
/// names and the other's bare cgroupfs id does not is that runtime.
fn same_container(a: Container, b: Container) -> Option<Container> {
    if (&a.pod_uid, a.qos, &a.id) != (&b.pod_uid, b.qos, &b.id) {
        return None;
    }
    let runtime = match (a.runtime, b.runtime) {
        (x, y) if x == y => x,
        (Runtime::Unnamed, named) | (named, Runtime::Unnamed) => named,
        _ => return None,
    };
    Some(Container {
        runtime,
        nested: a.nested || b.nested,
        ..a
    })
}
