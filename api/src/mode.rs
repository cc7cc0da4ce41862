//! What is done to an enforced process ([`Mode`]; for a Pod, [`PodMode`],
//! which may also be `off`) and what is probed in it ([`Coverage`]): the
//! words of the `mapguard.io/mode` and `mapguard.io/coverage` annotations,
//! the namespaces' minimums and the command lines, with the kernel's
//! numbers.

use std::{fmt, str::FromStr};

use mapguard_common::{action, shared_ops};
use serde::{Deserialize, Serialize};

use crate::{UnknownWord, vocab::Action};

/// What happens to a process when a violation is detected. Ordered by
/// strength: `audit` < `stop` < `kill`.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Report only (repeated identical violations are counted, not repeated).
    #[default]
    Audit,
    /// SIGSTOP the process, leaving it stopped for inspection.
    Stop,
    /// SIGKILL the process before the racing operation proceeds.
    Kill,
}

impl Mode {
    pub const ALL: [Mode; 3] = [Mode::Audit, Mode::Stop, Mode::Kill];

    /// The word (`audit`, `stop`, `kill`).
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Audit => "audit",
            Mode::Stop => "stop",
            Mode::Kill => "kill",
        }
    }

    /// The kernel's action number (`mapguard_common::action`).
    pub fn kernel(self) -> u8 {
        match self {
            Mode::Audit => action::AUDIT,
            Mode::Stop => action::STOP,
            Mode::Kill => action::KILL,
        }
    }

    /// The mode of a kernel action number; `None` for any other number
    /// (0: no mode of its own).
    pub fn from_kernel(n: u8) -> Option<Mode> {
        Mode::ALL.into_iter().find(|m| m.kernel() == n)
    }

    /// What a report says was done under this mode.
    pub fn action(self) -> Action {
        Action::from_kernel(self.kernel())
    }
}

words!(Mode, "mode", Mode::ALL);

/// A Pod's mode as the node agent knows it: a [`Mode`], or `None` for
/// `off` (not enforced: never probed on the hot path, never signalled).
/// Ordered by strength: `off` < `audit` < `stop` < `kill`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct PodMode(pub Option<Mode>);

impl PodMode {
    pub const OFF: PodMode = PodMode(None);
    pub const ALL: [PodMode; 4] = [
        PodMode::OFF,
        PodMode(Some(Mode::Audit)),
        PodMode(Some(Mode::Stop)),
        PodMode(Some(Mode::Kill)),
    ];

    /// The mode, or `None` for `off`.
    pub fn mode(self) -> Option<Mode> {
        self.0
    }

    /// The word (`off`, `audit`, `stop`, `kill`).
    pub fn as_str(self) -> &'static str {
        self.0.map_or("off", Mode::as_str)
    }
}

impl From<Option<Mode>> for PodMode {
    fn from(mode: Option<Mode>) -> PodMode {
        PodMode(mode)
    }
}

impl fmt::Display for PodMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for PodMode {
    type Err = UnknownWord;
    fn from_str(s: &str) -> Result<PodMode, UnknownWord> {
        match s {
            "off" => Ok(PodMode::OFF),
            _ => s.parse().map(|m| PodMode(Some(m))),
        }
    }
}

impl Serialize for PodMode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for PodMode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<PodMode, D::Error> {
        let word = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        word.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(feature = "clap")]
impl clap::ValueEnum for PodMode {
    fn value_variants<'a>() -> &'a [PodMode] {
        &PodMode::ALL
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        let value = clap::builder::PossibleValue::new(self.as_str());
        Some(match self.0 {
            None => value.help("Not enforced: never probed on the hot path, never signalled"),
            Some(_) => value,
        })
    }
}

/// What is probed in a process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum Coverage {
    /// Every map operation, all the time: catches every kind at the moment
    /// the conflicting operation starts, with both call sites; costs about
    /// a microsecond per map call.
    #[default]
    Full,
    /// Map writes only (assign, delete, clear, grow), all the time: catches
    /// concurrent writes at the moment the second one starts, with both
    /// call sites, at a fraction of `full`'s cost (real services read maps
    /// far more than they write them); a read or iteration racing a write
    /// is caught only as the runtime detects it, with the reader's call
    /// site.
    Writes,
    /// Every map operation during on-windows sized to a cost budget:
    /// catches a race that recurs at least once per window within one
    /// sampling period; misses a one-off race outside the windows.
    Sampled,
    /// Only the runtime's crash paths: no cost; catches the races the Go
    /// runtime itself detects, just before it would abort, with the call
    /// site of the goroutine that detected it but not the other one;
    /// misses the rest.
    Light,
}

impl Coverage {
    pub const ALL: [Coverage; 4] = [
        Coverage::Full,
        Coverage::Writes,
        Coverage::Sampled,
        Coverage::Light,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Coverage::Full => "full",
            Coverage::Writes => "writes",
            Coverage::Sampled => "sampled",
            Coverage::Light => "light",
        }
    }

    /// How much is probed, for "at least" comparisons (a namespace's
    /// `mapguard.io/min-coverage`): `light` < `sampled` < `writes` <
    /// `full`. `writes` ranks above `sampled` because it watches the writes
    /// (what the runtime aborts on, and what names both writers) all the
    /// time, where `sampled` sees every operation only in its windows; the
    /// policies (policies/mode.rego) use the same order.
    pub fn strength(self) -> u8 {
        match self {
            Coverage::Light => 0,
            Coverage::Sampled => 1,
            Coverage::Writes => 2,
            Coverage::Full => 3,
        }
    }

    /// Parses an annotation value (`mapguard.io/coverage`).
    pub fn parse(value: &str) -> Option<Coverage> {
        value.parse().ok()
    }

    /// What a binary's shared map-function probes check for a process of
    /// this coverage (`mapguard_common::shared_ops`): the operations
    /// `full` and `writes` probe all the time; none for the others.
    pub fn shared_ops(self) -> u8 {
        match self {
            Coverage::Full => shared_ops::ALL,
            Coverage::Writes => shared_ops::WRITES,
            Coverage::Sampled | Coverage::Light => shared_ops::NONE,
        }
    }
}

words!(Coverage, "coverage", Coverage::ALL);

#[cfg(test)]
mod tests {
    use super::*;

    fn words<T>(values: &[T], expected: &[&str])
    where
        T: FromStr + fmt::Display + Serialize + PartialEq + fmt::Debug + Copy,
        T: for<'de> Deserialize<'de>,
    {
        let written: Vec<String> = values.iter().map(T::to_string).collect();
        assert_eq!(written, expected);
        for &v in values {
            let word = v.to_string();
            assert_eq!(word.parse::<T>().ok(), Some(v), "{word:?} parses back");
            let json = serde_json::to_string(&v).expect("serializes");
            assert_eq!(json, format!("\"{word}\""));
            assert_eq!(serde_json::from_str::<T>(&json).ok(), Some(v));
        }
        assert!("Kill".parse::<T>().is_err(), "words are lower case");
        assert!("".parse::<T>().is_err());
    }

    #[test]
    fn modes_round_trip_through_words_and_kernel_numbers() {
        words(&Mode::ALL, &["audit", "stop", "kill"]);
        words(&PodMode::ALL, &["off", "audit", "stop", "kill"]);
        assert_eq!(
            Mode::ALL.map(Mode::kernel),
            [action::AUDIT, action::STOP, action::KILL]
        );
        for m in Mode::ALL {
            assert_eq!(Mode::from_kernel(m.kernel()), Some(m));
        }
        assert_eq!(Mode::from_kernel(0), None, "0: no mode of its own");
        assert_eq!(
            Mode::ALL.map(|m| m.action().as_str()),
            ["audit", "stopped", "killed"]
        );
        assert_eq!(
            "on".parse::<PodMode>().map_err(|e| e.to_string()),
            Err("\"on\" is not a mode".to_owned())
        );
    }

    #[test]
    fn pod_modes_order_by_strength() {
        let mut shuffled = [
            PodMode::ALL[2],
            PodMode::ALL[0],
            PodMode::ALL[3],
            PodMode::ALL[1],
        ];
        shuffled.sort();
        assert_eq!(shuffled, PodMode::ALL, "off < audit < stop < kill");
    }

    #[test]
    fn coverages_round_trip_and_rank() {
        words(&Coverage::ALL, &["full", "writes", "sampled", "light"]);
        assert_eq!(Coverage::parse("everything"), None);
        let mut by_strength = Coverage::ALL;
        by_strength.sort_by_key(|c| c.strength());
        assert_eq!(
            by_strength,
            [
                Coverage::Light,
                Coverage::Sampled,
                Coverage::Writes,
                Coverage::Full
            ]
        );
        assert_eq!(
            Coverage::ALL.map(Coverage::shared_ops),
            [
                shared_ops::ALL,
                shared_ops::WRITES,
                shared_ops::NONE,
                shared_ops::NONE
            ]
        );
    }
}
