//! mapguard-enforcer: attaches uprobes to the Go runtime map functions.

pub mod cgroup;
pub mod config;
pub mod events;
pub mod exec;
pub mod goelf;
pub mod loader;
pub mod monitor;
pub mod output;
pub mod scan;
pub mod signals;
pub mod target;
pub mod watch;
