//! The annotation and label keys mapguard reads and writes. The Rego
//! policies (policies/) name the same keys in their own language.

/// Pod annotation: the Pod's action, `audit`, `stop`, `kill` or `off`
/// ([`crate::mode::PodMode`]); the webhook injects its namespace's.
pub const MODE_ANNOTATION: &str = "mapguard.io/mode";
/// Pod annotation: the Pod's coverage, `full`, `writes`, `sampled` or
/// `light` ([`crate::mode::Coverage`]).
pub const COVERAGE_ANNOTATION: &str = "mapguard.io/coverage";

/// Namespace label: the least mode the namespace's Pods get (the same key
/// as the Pods' annotation).
pub const NAMESPACE_MODE_LABEL: &str = "mapguard.io/mode";
/// Namespace label: the least coverage the namespace's Pods get.
pub const NAMESPACE_MIN_COVERAGE_LABEL: &str = "mapguard.io/min-coverage";
/// Namespace label: `"true"` lets the namespace's Pods ask for less.
pub const NAMESPACE_OPT_OUT_LABEL: &str = "mapguard.io/allow-opt-out";

/// `MapViolation` label: the record's kind (`concurrent_write`, ...), for
/// selection (`kubectl mapguard audit -l mapguard.io/kind=concurrent_write`).
pub const KIND_LABEL: &str = "mapguard.io/kind";
/// Annotation the kubectl plugin adds to the records it prints with
/// `-o json|yaml`: the kubeconfig context a record was read from.
pub const CONTEXT_ANNOTATION: &str = "mapguard.io/context";
