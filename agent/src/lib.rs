//! mapguard-agent: the node agent and the responder, over the engine
//! (`mapguard-enforcer`: binary analysis, host facts, the BPF engine).
//!
//! - [`daemon`]: the node agent of the DaemonSet: watches this node's
//!   Pods, places every process in its Pod, and enforces on the Go
//!   processes of the Pods that ask for it.
//! - [`records`]: what it reports to the API server (`MapViolation`
//!   records, Events on the Pod).
//! - [`responder`]: the opt-in controller that evicts or cordons on what
//!   the records count.

pub mod config;
pub mod daemon;
pub mod records;
pub mod responder;
