//! Enforcement actions a policy can carry: deny, warn or dry-run.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// What happens to the `deny` findings of one policy package.
///
/// * `Deny` — the admission request is rejected (the default).
/// * `Warn` — the messages are returned as AdmissionResponse warnings.
/// * `DryRun` — everything the policy says (deny, warn and patch) is recorded
///   in [`crate::Decision::dry_run`] and nothing reaches the user.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    #[default]
    Deny,
    Warn,
    #[serde(alias = "dryrun", alias = "dry_run")]
    DryRun,
}

impl Action {
    /// The spelling used in Rego (`enforcement := "dry-run"`) and config files.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Deny => "deny",
            Action::Warn => "warn",
            Action::DryRun => "dry-run",
        }
    }
}

/// Parses a `PACKAGE=ACTION` enforcement override, as the webhook and the
/// CLI take it on their command lines: `mapguard.tamper=warn` →
/// (`mapguard.tamper`, [`Action::Warn`]).
pub fn parse_enforcement_override(text: &str) -> Result<(String, Action), String> {
    let (package, action) = text
        .split_once('=')
        .ok_or_else(|| format!("expected PACKAGE=ACTION, got {text:?}"))?;
    let action = action.parse::<Action>().map_err(|e| e.to_string())?;
    let package = package.trim();
    if package.is_empty() {
        return Err(format!("empty package name in {text:?}"));
    }
    Ok((package.to_owned(), action))
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An enforcement action spelled in none of the accepted ways.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown enforcement action {0:?} (expected deny, warn or dry-run)")]
pub struct ParseActionError(pub String);

impl FromStr for Action {
    type Err = ParseActionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "deny" => Ok(Action::Deny),
            "warn" => Ok(Action::Warn),
            "dry-run" | "dryrun" | "dry_run" => Ok(Action::DryRun),
            _ => Err(ParseActionError(s.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_spelling_and_rejects_others() {
        assert_eq!("deny".parse::<Action>(), Ok(Action::Deny));
        assert_eq!("Warn".parse::<Action>(), Ok(Action::Warn));
        assert_eq!("dry-run".parse::<Action>(), Ok(Action::DryRun));
        assert_eq!("dryrun".parse::<Action>(), Ok(Action::DryRun));
        assert!("block".parse::<Action>().is_err());
        assert_eq!(Action::DryRun.to_string(), "dry-run");
    }
}
