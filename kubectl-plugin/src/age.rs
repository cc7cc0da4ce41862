//! Ages as tables show them (`5m`, `3d4h`: kubectl's style, coarser as
//! they grow). Durations typed on the command line (`--older-than 30d`)
//! are read by `mapguard_duration`, the grammar of every mapguard binary.

use std::time::Duration;

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
