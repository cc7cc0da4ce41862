//! mapguard CI command: judges manifests and runs policy tests.
