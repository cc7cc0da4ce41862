//! Durations as users type them (`--older-than 30d`) and ages as tables
//! show them (`5m`, `3d4h`: kubectl's style, coarser as they grow).

use std::time::Duration;

/// Seconds of each unit `--older-than` accepts.
const UNITS: [(char, u64); 5] = [
    ('w', 7 * 86_400),
    ('d', 86_400),
    ('h', 3_600),
    ('m', 60),
    ('s', 1),
];

/// Parses `90s`, `45m`, `12h`, `30d`, `2w` and sums such as `1d12h`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty; expected e.g. 30d, 12h or 1d12h".to_owned());
    }
    let mut total: u64 = 0;
    let mut digits = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let Some(&(_, seconds)) = UNITS.iter().find(|(unit, _)| *unit == c) else {
            return Err(format!(
                "unknown unit {c:?} in {text:?}; units: w, d, h, m, s"
            ));
        };
        if digits.is_empty() {
            return Err(format!("no number before {c:?} in {text:?}"));
        }
        let n: u64 = digits
            .parse()
            .map_err(|_| format!("{digits} is too large in {text:?}"))?;
        total = n
            .checked_mul(seconds)
            .and_then(|s| total.checked_add(s))
            .ok_or_else(|| format!("{text:?} is too long"))?;
        digits.clear();
    }
    if !digits.is_empty() {
        return Err(format!(
            "{text:?} ends without a unit; write e.g. {digits}d or {digits}h"
        ));
    }
    Ok(Duration::from_secs(total))
}

/// An age like kubectl's: `42s`, `5m30s`, `47m`, `3h12m`, `20h`, `3d4h`,
/// `45d`, `2y31d`; `<future>` for a time ahead of the clock (skew).
pub fn human(age: Duration) -> String {
    let s = age.as_secs();
    let (m, h, d) = (s / 60, s / 3_600, s / 86_400);
    match () {
        () if s < 120 => format!("{s}s"),
        () if m < 10 => with_rest(m, 'm', s % 60, 's'),
        () if h < 3 => format!("{m}m"),
        () if h < 8 => with_rest(h, 'h', m % 60, 'm'),
        () if h < 48 => format!("{h}h"),
        () if d < 8 => with_rest(d, 'd', h % 24, 'h'),
        () if d < 2 * 365 => format!("{d}d"),
        () if d < 8 * 365 => with_rest(d / 365, 'y', d % 365, 'd'),
        () => format!("{}y", d / 365),
    }
}

fn with_rest(big: u64, big_unit: char, rest: u64, rest_unit: char) -> String {
    if rest == 0 {
        format!("{big}{big_unit}")
    } else {
        format!("{big}{big_unit}{rest}{rest_unit}")
    }
}

/// The age of `then` at `now`, as [`human`] writes it.
pub fn since(then: k8s_openapi::jiff::Timestamp, now: k8s_openapi::jiff::Timestamp) -> String {
    match Duration::try_from(now.duration_since(then)) {
        Ok(age) => human(age),
        Err(_) => "<future>".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_every_unit_and_in_sums() {
        for (text, secs) in [
            ("90s", 90),
            ("45m", 2_700),
            ("12h", 43_200),
            ("30d", 2_592_000),
            ("2w", 1_209_600),
            ("1d12h", 129_600),
            ("1h30m15s", 5_415),
            (" 7d ", 604_800),
        ] {
            assert_eq!(
                parse_duration(text),
                Ok(Duration::from_secs(secs)),
                "{text}"
            );
        }
        for (text, says) in [
            ("", "empty"),
            ("30", "ends without a unit"),
            ("1d3", "ends without a unit"),
            ("3y", "unknown unit 'y'"),
            ("d", "no number"),
            ("-1d", "unknown unit '-'"),
            ("99999999999999999999d", "too large"),
            ("9999999999999999w", "too long"),
        ] {
            let err = parse_duration(text).expect_err(text);
            assert!(err.contains(says), "{text}: {err}");
        }
    }

    #[test]
    fn ages_grow_coarser_like_kubectls() {
        let d = |s: u64| human(Duration::from_secs(s));
        assert_eq!(d(0), "0s");
        assert_eq!(d(119), "119s");
        assert_eq!(d(330), "5m30s");
        assert_eq!(d(300), "5m");
        assert_eq!(d(47 * 60 + 59), "47m");
        assert_eq!(d(3 * 3600 + 12 * 60), "3h12m");
        assert_eq!(d(20 * 3600 + 59), "20h");
        assert_eq!(d(3 * 86_400 + 4 * 3600), "3d4h");
        assert_eq!(d(45 * 86_400), "45d");
        assert_eq!(d(2 * 365 * 86_400 + 31 * 86_400), "2y31d");
        assert_eq!(d(9 * 365 * 86_400), "9y");
        let now = k8s_openapi::jiff::Timestamp::from_second(1_000_000).expect("a time");
        let later = k8s_openapi::jiff::Timestamp::from_second(1_000_090).expect("a time");
        assert_eq!(since(now, later), "90s");
        assert_eq!(since(later, now), "<future>");
    }
}
