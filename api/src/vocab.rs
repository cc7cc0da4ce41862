//! The kernel's vocabulary on the user side: map operations, violation
//! kinds, actions, detectors and crash messages as typed values, each next
//! to the number the BPF program uses (`mapguard_common`) and the word
//! reports, records and metrics use. One table per vocabulary; nothing
//! else compares names.

use mapguard_common::{action, detector, kind, message, op};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Defines an enum whose variants map one-to-one onto kernel numbers and
/// words; an unknown number reads as the `$unknown` variant, which has no
/// number. Where two numbers share a word (`iterate`), the word parses as
/// the first.
macro_rules! vocabulary {
    (
        $(#[$meta:meta])*
        $name:ident ($vocabulary:literal), unknown: $unknown:ident => $unknown_word:literal,
        $( $(#[$vmeta:meta])* $variant:ident = $number:path => $word:literal ),+ $(,)?
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )+
            /// A number the kernel side does not define (never sent by it).
            $unknown,
        }

        impl $name {
            /// Every value with a kernel number, in the table's order.
            pub const KNOWN: &'static [$name] = &[ $( $name::$variant, )+ ];

            /// The value of a kernel number.
            pub fn from_kernel(n: u8) -> $name {
                match n {
                    $( $number => $name::$variant, )+
                    _ => $name::$unknown,
                }
            }

            /// The kernel's number; `None` for the unknown value.
            pub fn kernel(self) -> Option<u8> {
                match self {
                    $( $name::$variant => Some($number), )+
                    $name::$unknown => None,
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

        words!($name, $vocabulary, $name::KNOWN.iter().copied().chain([$name::$unknown]));

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<$name, D::Error> {
                let word = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                word.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

vocabulary! {
    /// What a map operation does (`op` and `conflicting_op` of a report).
    Op("map operation"), unknown: Unknown => "unknown",
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
    Kind("violation kind"), unknown: Unknown => "unknown",
    ConcurrentWrite = kind::CONCURRENT_WRITE => "concurrent_write",
    DeleteDuringRead = kind::DELETE_DURING_READ => "delete_during_read",
    DeleteDuringIteration = kind::DELETE_DURING_ITERATION => "delete_during_iteration",
    ReleasedBucketWrite = kind::RELEASED_BUCKET_WRITE => "released_bucket_write",
    WriteDuringRead = kind::WRITE_DURING_READ => "write_during_read",
    WriteDuringIteration = kind::WRITE_DURING_ITERATION => "write_during_iteration",
}

vocabulary! {
    /// What was done to the process (`action` of a report and of a
    /// record's status): the past tense of a [`crate::mode::Mode`].
    Action("action"), unknown: Unknown => "unknown",
    Audit = action::AUDIT => "audit",
    Stopped = action::STOP => "stopped",
    Killed = action::KILL => "killed",
}

vocabulary! {
    /// How a race was found (`detected_by` of a report).
    Detector("detector"), unknown: Unknown => "unknown",
    WritingFlag = detector::WRITING_FLAG => "writing_flag",
    RuntimeFatal = detector::RUNTIME_FATAL => "runtime_fatal",
    RuntimeThrow = detector::RUNTIME_THROW => "runtime_throw",
}

vocabulary! {
    /// What the Go runtime was about to print when its crash path was hit
    /// (`crash_message` of a crash-path report; the `message_class` label
    /// of `mapguard_map_crashes_total`).
    CrashMessage("crash message"), unknown: Unknown => "unknown",
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
    use std::{fmt, str::FromStr};

    use super::*;

    /// Every known value: its number reads back as itself, its word parses
    /// back as itself (or, for a shared word, as the value the word's first
    /// number has) and is what serde writes and reads.
    fn round_trips<T>(known: &[T], unknown: T)
    where
        T: Copy + PartialEq + fmt::Debug + fmt::Display + FromStr + Serialize,
        T: for<'de> Deserialize<'de>,
        T: VocabularyTable,
    {
        for &v in known {
            let n = v.number().unwrap_or_else(|| panic!("{v:?} has a number"));
            assert_eq!(T::from_number(n), v, "number {n} of {v:?}");
            let word = v.to_string();
            let parsed: T = word.parse().unwrap_or_else(|_| panic!("{word:?} parses"));
            let first = *known
                .iter()
                .find(|k| k.to_string() == word)
                .expect("its word is in the table");
            assert_eq!(parsed, first, "word {word:?}");
            let json = serde_json::to_string(&v).expect("serializes");
            assert_eq!(json, format!("\"{word}\""));
            let back: T = serde_json::from_str(&json).expect("deserializes");
            assert_eq!(back, first);
        }
        assert_eq!(unknown.number(), None);
        assert_eq!(T::from_number(0), unknown, "0 is no kernel number");
        assert_eq!(T::from_number(u8::MAX), unknown);
        assert!("no-such-word".parse::<T>().is_err());
        assert!(serde_json::from_str::<T>("\"no-such-word\"").is_err());
    }

    /// The macro's inherent functions, for the generic test.
    trait VocabularyTable: Sized {
        fn number(self) -> Option<u8>;
        fn from_number(n: u8) -> Self;
    }

    macro_rules! table {
        ($($t:ident),*) => {$(
            impl VocabularyTable for $t {
                fn number(self) -> Option<u8> { self.kernel() }
                fn from_number(n: u8) -> $t { $t::from_kernel(n) }
            }
        )*};
    }
    table!(Op, Kind, Action, Detector, CrashMessage);

    #[test]
    fn every_vocabulary_round_trips_through_numbers_and_words() {
        round_trips(Op::KNOWN, Op::Unknown);
        round_trips(Kind::KNOWN, Kind::Unknown);
        round_trips(Action::KNOWN, Action::Unknown);
        round_trips(Detector::KNOWN, Detector::Unknown);
        round_trips(CrashMessage::KNOWN, CrashMessage::Unknown);
    }

    #[test]
    fn kernel_numbers_map_to_report_words() {
        assert_eq!(Op::from_kernel(op::DELETE).as_str(), "delete");
        assert_eq!(Op::from_kernel(op::ITER_NEXT), Op::IterNext);
        assert_eq!("iterate".parse::<Op>(), Ok(Op::IterStart));
        assert_eq!(Op::from_kernel(0), Op::Unknown);
        assert_eq!(
            Kind::from_kernel(kind::RELEASED_BUCKET_WRITE).to_string(),
            "released_bucket_write"
        );
        assert_eq!(Action::from_kernel(action::STOP), Action::Stopped);
        assert_eq!(Action::Killed.kernel(), Some(action::KILL));
        assert_eq!(
            serde_json::to_string(&Detector::from_kernel(detector::RUNTIME_THROW)).expect("json"),
            "\"runtime_throw\""
        );
        assert_eq!(
            CrashMessage::from_kernel(b'b').as_str(),
            "bad_map_state",
            "the kernel's released-bucket class byte"
        );
        assert!(Detector::RuntimeFatal.is_crash_path() && !Detector::WritingFlag.is_crash_path());
        assert_eq!(
            "stopped".parse::<Kind>().map_err(|e| e.to_string()),
            Err("\"stopped\" is not a violation kind".to_owned())
        );
    }
}
