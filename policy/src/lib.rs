//! Rego policy engine shared by the admission webhook and the CI command.
