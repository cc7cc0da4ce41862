//! mapguard-enforcer: attaches uprobes to the Go runtime map functions.

pub mod cgroup;
pub mod config;
pub mod coverage;
pub mod events;
pub mod exec;
pub mod goelf;
pub mod loader;
pub mod monitor;
pub mod output;
pub mod procfs;
pub mod procscan;
pub mod sampler;
pub mod scan;
pub mod session;
pub mod signals;
pub mod target;
pub mod watch;
