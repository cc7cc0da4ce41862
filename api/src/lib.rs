//! What mapguard's parts share, with no BPF, no async runtime and no
//! Kubernetes client: the node agent, the kubectl plugin, the webhook and
//! the tests all read these definitions rather than their own copies.
//!
//! * [`resource`] — the `MapViolation` custom resource (`mapguard.io/v1alpha1`)
//!   and its status; [`resource::crd_yaml`] is `manifests/crd/mapviolations.yaml`.
//! * [`vocab`] — the one vocabulary shared with the kernel (operations,
//!   kinds, actions, detectors, crash messages), each word next to its
//!   number in `mapguard_common`.
//! * [`mode`] — what is done to a process (`audit`, `stop`, `kill`, or
//!   `off` for a Pod) and what is probed in it (`full`, `writes`,
//!   `sampled`, `light`).
//! * [`frame`] — one frame of a symbolized stack (function, file, line, or
//!   a bare program counter), written as today's `function file:line` text.
//! * [`pair`] — a violation's call-site pair, computed once per violation,
//!   and the record name it gives.
//! * [`keys`] — the annotation and label keys.
//!
//! The feature `clap` derives `clap::ValueEnum` for the words command
//! lines take.

/// `Display` and `FromStr` of a vocabulary's enum by its `as_str`: a word
/// parses as the first of `$values` (an iterable of the enum) that writes it.
macro_rules! words {
    ($name:ident, $vocabulary:literal, $values:expr) => {
        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = $crate::UnknownWord;
            fn from_str(s: &str) -> Result<$name, $crate::UnknownWord> {
                $values
                    .into_iter()
                    .find(|v| v.as_str() == s)
                    .ok_or_else(|| $crate::UnknownWord {
                        vocabulary: $vocabulary,
                        word: s.to_owned(),
                    })
            }
        }
    };
}

pub mod frame;
pub mod keys;
pub mod mode;
pub mod pair;
pub mod resource;
pub mod vocab;

/// A word that is not one of a vocabulary's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownWord {
    /// Which vocabulary (`mode`, `coverage`, `kind`, ...).
    pub vocabulary: &'static str,
    pub word: String,
}

impl std::fmt::Display for UnknownWord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?} is not a {}", self.word, self.vocabulary)
    }
}

impl std::error::Error for UnknownWord {}
