//! The kernel's vocabulary on the user side: map operations, violation
//! kinds, actions and detectors as typed values, each next to the number
//! the BPF program uses (`mapguard_common`) and the word reports use. One
//! table per vocabulary; nothing else compares names.

use serde::Serialize;

use mapguard_common::{action, detector, kind, message, op};

/// Defines an enum whose variants map one-to-one onto kernel numbers and
/// report words; an unknown number reads as the `$unknown` variant.
macro_rules! vocabulary {
    (
        $(#[$meta:meta])*
        $name:ident, unknown: $unknown:ident => $unknown_word:literal,
        $( $variant:ident = $number:path => $word:literal ),+ $(,)?
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $( $variant, )+
            $unknown,
        }

        impl $name {
            /// The value of a kernel number.
            pub fn from_kernel(n: u8) -> $name {
                match n {
                    $( $number => $name::$variant, )+
                    _ => $name::$unknown,
                }
            }

            /// The word reports use.
            pub fn as_str(self) -> &'static str {
                match self {
                    $( $name::$variant => $word, )+
                    $name::$unknown => $unknown_word,
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }
    };
}

vocabulary! {
    /// What a map operation does (`op` and `conflicting_op` of a report).
    Op, unknown: Unknown => "unknown",
    Delete = op::DELETE => "delete",
    Assign = op::ASSIGN => "assign",
    Clear = op::CLEAR => "clear",
    Read = op::READ => "read",
    IterStart = op::ITER_START => "iterate",
    IterNext = op::ITER_NEXT => "iterate",
    Grow = op::GROW => "grow",
}

vocabulary! {
    /// What kind of race a report is.
    Kind, unknown: Unknown => "unknown",
    ConcurrentWrite = kind::CONCURRENT_WRITE => "concurrent_write",
    DeleteDuringRead = kind::DELETE_DURING_READ => "delete_during_read",
    DeleteDuringIteration = kind::DELETE_DURING_ITERATION => "delete_during_iteration",
    ReleasedBucketWrite = kind::RELEASED_BUCKET_WRITE => "released_bucket_write",
    WriteDuringRead = kind::WRITE_DURING_READ => "write_during_read",
    WriteDuringIteration = kind::WRITE_DURING_ITERATION => "write_during_iteration",
}

vocabulary! {
    /// What was done to the process (`action` of a report).
    Action, unknown: Unknown => "unknown",
    Audit = action::AUDIT => "audit",
    Stopped = action::STOP => "stopped",
    Killed = action::KILL => "killed",
}

vocabulary! {
    /// How a race was found (`detected_by` of a report).
    Detector, unknown: Unknown => "unknown",
    WritingFlag = detector::WRITING_FLAG => "writing_flag",
    RuntimeFatal = detector::RUNTIME_FATAL => "runtime_fatal",
    RuntimeThrow = detector::RUNTIME_THROW => "runtime_throw",
}

vocabulary! {
    /// What the Go runtime was about to print when its crash path was hit
    /// (`crash_message` of a crash-path report; the `message_class` label
    /// of `mapguard_map_crashes_total`).
    CrashMessage, unknown: Unknown => "unknown",
    Writes = message::WRITES => "concurrent_map_writes",
    Read = message::READ => "concurrent_map_read_and_map_write",
    Iteration = message::ITERATION => "concurrent_map_iteration_and_map_write",
    Clone = message::CLONE => "concurrent_map_clone_and_map_write",
    Corrupted = message::CORRUPTED => "map_corrupted",
    BadMapState = message::RELEASED_BUCKET => "bad_map_state",
}

impl Detector {
    /// Found on the runtime's crash path (the other side may be unknown).
    pub fn is_crash_path(self) -> bool {
        matches!(self, Detector::RuntimeFatal | Detector::RuntimeThrow)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_numbers_map_to_report_words_and_back() {
        assert_eq!(Op::from_kernel(op::DELETE).as_str(), "delete");
        assert_eq!(Op::from_kernel(op::ITER_NEXT), Op::IterNext);
        assert_eq!(Op::from_kernel(0), Op::Unknown);
        assert_eq!(
            Kind::from_kernel(kind::RELEASED_BUCKET_WRITE).to_string(),
            "released_bucket_write"
        );
        assert_eq!(Action::from_kernel(action::STOP), Action::Stopped);
        assert_eq!(
            serde_json::to_string(&Detector::from_kernel(detector::RUNTIME_THROW)).expect("json"),
            "\"runtime_throw\""
        );
        assert!(Detector::RuntimeFatal.is_crash_path() && !Detector::WritingFlag.is_crash_path());
    }
}
