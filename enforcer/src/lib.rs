//! mapguard-enforcer, the engine: everything between a Go binary and a
//! halted racer, shared by the commands here (`exec`, `watch`, `scan`) and
//! the node agent (`mapguard-agent`).
//!
//! - [`binary`]: analysis of a Go executable (release, map implementation,
//!   runtime layout, the probe plan, the symbolizer).
//! - [`host`]: facts about this host's processes (`/proc`, cgroups, which
//!   Pod and container each runs in) and its own signals.
//! - [`bpf`]: the BPF engine (loading, probe sets and links, the session
//!   that enforces, coverage and sampling, the ring buffer loop).
//! - [`report`]: violations from the kernel's records to their sinks
//!   (symbolized stacks, JSON lines, the summary).

pub mod binary;
pub mod bpf;
pub mod config;
pub mod exec;
pub mod host;
pub mod report;
pub mod scan;
pub mod watch;
