//! Reports: each violation decoded from the kernel's record, symbolized,
//! and written to its sinks.

pub mod events;
pub mod output;
