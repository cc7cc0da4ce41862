//! mapguard-enforcer: attaches uprobes to the Go runtime map functions.

pub mod goelf;
pub mod scan;
