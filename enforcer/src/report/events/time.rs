//! Timestamps: kernel monotonic nanoseconds to wall clock, RFC 3339 text.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Converts a `bpf_ktime_get_ns` value (CLOCK_MONOTONIC) to wall-clock
/// time, to the microsecond: what the JSON line says is what every other
/// sink of the record reads.
pub fn from_ktime(ktime_ns: u64) -> SystemTime {
    to_micros(wall_of_ktime(ktime_ns))
}

fn wall_of_ktime(ktime_ns: u64) -> SystemTime {
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

/// `t` without its fraction of a microsecond.
fn to_micros(t: SystemTime) -> SystemTime {
    match t.duration_since(UNIX_EPOCH) {
        Ok(since) => t - Duration::from_nanos(u64::from(since.subsec_nanos() % 1000)),
        Err(_) => t,
    }
}

/// Writes `t` as [`rfc3339`] text (the JSON lines' `timestamp`).
pub fn serialize<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&rfc3339(*t))
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

    #[test]
    fn formats_known_instants() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000000Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_709_210_096) + Duration::from_micros(7);
        assert_eq!(rfc3339(t), "2024-02-29T12:34:56.000007Z");
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(t), "2000-02-29T00:00:00.000000Z");
    }

    #[test]
    fn kernel_times_are_kept_to_the_microsecond() {
        let t = UNIX_EPOCH + Duration::from_nanos(1_709_210_096_000_007_999);
        assert_eq!(
            to_micros(t),
            UNIX_EPOCH + Duration::from_nanos(1_709_210_096_000_007_000)
        );
        assert_eq!(rfc3339(to_micros(t)), rfc3339(t));
        let since_boot = from_ktime(1_500)
            .duration_since(UNIX_EPOCH)
            .expect("after the epoch");
        assert_eq!(since_boot.subsec_nanos() % 1000, 0);
    }
}
