//! The one duration grammar of mapguard's flags and environment variables,
//! shared by every binary (webhook, node agent, certs-gen, kubectl plugin).
//!
//! A duration is `0`, or one or more numbers each followed by a unit, largest
//! unit first, optionally separated by spaces: `250ms`, `10s`, `1m30s`,
//! `1h`, `1.5s`, `2h 30m`, `30d`, `1d12h`, `2w`. Units: `ns`, `us` (or
//! `µs`), `ms`, `s`, `m`, `h`, `d` (24 hours), `w` (7 days), and their
//! long spellings (`minutes`, `hours`, ...). Only the last (smallest) unit
//! may have a fraction, and only from hours down (`1.5h`, not `1.5d`).
//! Rejected: a number without a unit other than `0` (is `5` seconds or
//! milliseconds?), negative durations, months and years (not a fixed
//! length). The parsing is jiff's "friendly" format; this crate only adds
//! `0`, turns days and weeks into 24-hour days, and refuses what a flag
//! cannot mean.
//!
//! Flags use [`parse`] as their clap `value_parser`, or [`parse_positive`]
//! where zero has no meaning (an interval, a period).

use std::time::Duration;

use jiff::fmt::friendly::SpanParser;
use jiff::{SignedDuration, SpanRelativeTo};

static PARSER: SpanParser = SpanParser::new();

/// What the error messages show as examples.
const EXAMPLES: &str = "e.g. 0, 250ms, 10s, 1m30s, 1h or 30d";

/// Parses a duration of the grammar above (zero allowed).
pub fn parse(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err(format!(
            "{text:?} has no unit: write {t}s, {t}ms or another unit ({EXAMPLES})"
        ));
    }
    let span = PARSER
        .parse_span(t)
        .map_err(|e| format!("{text:?} is not a duration ({EXAMPLES}): {e}"))?;
    if span.is_negative() {
        return Err(format!("{text:?} is negative"));
    }
    let signed: SignedDuration = span
        .to_duration(SpanRelativeTo::days_are_24_hours())
        .map_err(|e| format!("{text:?} is not a fixed length ({EXAMPLES}): {e}"))?;
    Duration::try_from(signed).map_err(|e| format!("{text:?} is out of range: {e}"))
}

/// As [`parse`], but zero is refused (for intervals, periods and
/// estimates that must be positive).
pub fn parse_positive(text: &str) -> Result<Duration, String> {
    let d = parse(text)?;
    if d.is_zero() {
        return Err(format!("{text:?} must be longer than zero"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;
    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn accepted() {
        let table: &[(&str, Duration)] = &[
            ("0", Duration::ZERO),
            ("0s", Duration::ZERO),
            ("0ms", Duration::ZERO),
            (" 2s ", S(2)),
            ("1ns", Duration::from_nanos(1)),
            ("1us", Duration::from_micros(1)),
            ("1µs", Duration::from_micros(1)),
            ("100ms", MS(100)),
            ("250ms", MS(250)),
            ("300ms", MS(300)),
            ("600ms", MS(600)),
            ("1s", S(1)),
            ("1.5s", MS(1500)),
            ("10s", S(10)),
            ("1m", S(60)),
            ("1.5m", S(90)),
            ("1m30s", S(90)),
            ("1m 30s", S(90)),
            ("2m", S(120)),
            ("5m", S(300)),
            ("10m", S(600)),
            ("90m", S(5_400)),
            ("1h", S(3_600)),
            ("2.5h", S(9_000)),
            ("12h", S(43_200)),
            ("1d12h", S(129_600)),
            ("30d", S(30 * 86_400)),
            ("400d", S(400 * 86_400)),
            ("2w", S(14 * 86_400)),
            ("1w4d", S(11 * 86_400)),
            ("3 hours", S(10_800)),
            ("1h30m15s250ms", Duration::new(5_415, 250_000_000)),
        ];
        for &(text, want) in table {
            assert_eq!(parse(text), Ok(want), "parse({text:?})");
        }
    }

    #[test]
    fn rejected() {
        for text in [
            "",
            " ",
            "5",
            "45",
            "1.5",
            "-1s",
            "1s ago",
            "s",
            "d",
            "fast",
            "1x",
            "1h-",
            "1.5d",
            "1mo",
            "1y",
            "2s3h",
            "1s1s",
            "PT1H",
            "99999999999999999999s",
        ] {
            let err = parse(text).expect_err(text);
            assert!(err.contains(&format!("{:?}", text)), "{text:?}: {err}");
        }
    }

    #[test]
    fn positive_refuses_only_zero() {
        assert_eq!(parse_positive("1us"), Ok(Duration::from_micros(1)));
        for text in ["0", "0s", "0ms"] {
            let err = parse_positive(text).expect_err(text);
            assert!(err.contains("longer than zero"), "{err}");
        }
        assert!(parse_positive("-1s").is_err());
    }

    #[test]
    fn a_bare_number_suggests_units() {
        let err = parse("5").expect_err("bare number");
        assert!(err.contains("5s, 5ms or another unit"), "{err}");
    }
}
