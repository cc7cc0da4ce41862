//! The BPF engine: the kernel program loaded and fed, probes attached per
//! binary and process, and the session that enforces.

pub mod coverage;
pub mod loader;
pub mod monitor;
pub mod sampler;
pub mod session;
