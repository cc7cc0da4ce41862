//! mapguard-enforcer: attaches uprobes to the Go runtime map functions.
