//! Validating and mutating admission webhook evaluating Rego policies.
