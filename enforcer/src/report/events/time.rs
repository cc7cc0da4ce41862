//! Timestamps: kernel monotonic nanoseconds to wall clock, RFC 3339 text.

use std::time::{Duration, SystemTime};

/// Converts a `bpf_ktime_get_ns` value (CLOCK_MONOTONIC) to wall-clock time.
pub fn from_ktime(ktime_ns: u64) -> SystemTime {
    let now_wall = SystemTime::now();
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer; CLOCK_MONOTONIC is what bpf_ktime_get_ns reads.
    let now_mono = if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) } == 0 {
        ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
    } else {
        ktime_ns
    };
    now_wall - Duration::from_nanos(now_mono.saturating_sub(ktime_ns))
}

/// `2026-11-24T20:16:12.123456Z`: RFC 3339 in UTC with microseconds.
pub fn rfc3339(t: SystemTime) -> String {
    const FORMAT: &[time::format_description::BorrowedFormatItem<'_>] = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
    );
    time::OffsetDateTime::from(t)
        .format(FORMAT)
        .unwrap_or_else(|_| String::from("1970-01-01T00:00:00.000000Z"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn formats_known_instants() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000000Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_709_210_096) + Duration::from_micros(7);
        assert_eq!(rfc3339(t), "2024-02-29T12:34:56.000007Z");
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(t), "2000-02-29T00:00:00.000000Z");
    }
}
