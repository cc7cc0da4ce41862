//! Host facts: the processes of this host, where each runs (cgroup, Pod,
//! container, the file it executes), and this process's own signals.

pub mod cgroup;
pub mod procfs;
pub mod procscan;
pub mod signals;
